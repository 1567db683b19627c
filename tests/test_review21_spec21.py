"""Review 21 (spec21): conformance findings outside the pricing arithmetic."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.http_api import MAX_BODY_BYTES, HttpServer

from .conftest import CLI, receipt, snapshot

TIMEOUT = 20


def _post_urllib(port: int, path: str, data: bytes) -> tuple[int, Any]:
    """A POST as Python's urllib sends it: `Connection: close`, the whole body written
    before the answer is read (as most simple HTTP clients do)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES])
def test_a_body_over_4_mib_from_a_closing_client_gets_its_400(
    server: HttpServer, size: int
) -> None:
    """§10/§12: a request larger than 4 MiB is bad input, answered 400. A client that says
    `Connection: close` and writes its whole body before reading (urllib, many POS
    scripts) used to get a connection reset instead: the server closed with the body
    unread, and the kernel's RST cut the client's write before it read the answer."""
    status, doc = _post_urllib(server.port, "/v1/quote", b" " * size)
    assert status == 400
    assert doc["error"]["code"] == "INVALID_ARGUMENT"
    assert "larger than 4 MiB" in doc["error"]["message"]


def test_a_streamed_body_over_4_mib_from_a_closing_client_gets_its_400(
    server: HttpServer,
) -> None:
    """The same for a chunked body (no Content-Length), refused once it passes 4 MiB: the
    client that goes on writing the rest still reads the 400."""
    chunk = b" " * 65536
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(
            b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
        answer = b""
        while part := s.recv(65536):
            answer += part
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert b"larger than 4 MiB" in answer


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    from tillpoint.agent.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() and "--json" in argv else out, err


def test_the_same_signed_bundle_loaded_twice_changes_nothing_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§3 refuses an unsigned, wrongly signed or *older* snapshot; a plain file that is
    the very snapshot the cache holds loads again as "unchanged" (a seeding script run
    twice). The same held for a signed bundle on an enrolled till only until it was
    loaded: a second `snapshot load` of the same `hub export` file was exit 2, "not newer
    ... (rollback)". A tampered copy of it is still refused, and an older one too."""
    from tillpoint.sync.loopback import sample_master_data

    hub_dir = str(tmp_path / "hub")
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    assert _cli(capsys, "hub", "import", str(catalogue), "--publish", "--hub-dir", hub_dir)[0] == 0
    enrolment, v1, v2 = tmp_path / "e.json", tmp_path / "v1.json", tmp_path / "v2.json"
    _cli(capsys, "hub", "enroll", "till-1", "--hub-dir", hub_dir, "--out", str(enrolment))
    _cli(capsys, "hub", "export", "till-1", "--hub-dir", hub_dir, "--out", str(v1))
    assert _cli(capsys, "hub", "publish", "--hub-dir", hub_dir)[0] == 0
    _cli(capsys, "hub", "export", "till-1", "--hub-dir", hub_dir, "--out", str(v2))
    till = str(tmp_path / "till")
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    assert _cli(capsys, "sync", "install", str(enrolment), "--data-dir", till)[0] == 0
    code, doc, err = _cli(capsys, "snapshot", "load", str(v2), "--data-dir", till, "--json")
    assert code == 0 and doc["version"] == 2 and "unchanged" not in doc, err
    code, doc, err = _cli(capsys, "snapshot", "load", str(v2), "--data-dir", till, "--json")
    assert code == 0 and doc["version"] == 2 and doc["unchanged"] is True, err
    code, out, err = _cli(capsys, "snapshot", "load", str(v2), "--data-dir", till)
    assert code == 0 and "loaded already: nothing changed" in out, err
    # a tampered copy of the loaded version: refused by its declared size (review 42:
    # checked before the signature, as at a till without a hub), and with its size and
    # SHA-256 written to match, by the signature, as ever
    tampered = json.loads(v2.read_text())
    payload = base64.b64decode(tampered["payload"]) + b" "  # still the same JSON
    tampered["payload"] = base64.b64encode(payload).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tampered))
    code, _, err = _cli(capsys, "snapshot", "load", str(bad), "--data-dir", till)
    assert code == 2 and "longer than declared" in err
    tampered.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    bad.write_text(json.dumps(tampered))
    code, _, err = _cli(capsys, "snapshot", "load", str(bad), "--data-dir", till)
    assert code == 2 and "signature" in err
    # an older one is still a rollback
    code, _, err = _cli(capsys, "snapshot", "load", str(v1), "--data-dir", till)
    assert code == 2 and "not newer" in err and err.count("\n") == 1


def test_a_closed_stdout_is_one_line_that_says_so_not_an_internal_error(
    tmp_path: Path,
) -> None:
    """§10: errors are one line a person understands. `tillpoint status --json | head -c 0`
    (stdout's reader gone) said "internal error: BrokenPipeError", as if tillpoint had a
    bug, and Python added "Exception ignored" lines at exit."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has left before anything is written
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from tillpoint.agent.cli import main; sys.exit(main())",
                "--data-dir",
                str(tmp_path),
                "status",
                "--json",
            ],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1, run.stderr
    assert "output was cut off" in run.stderr and "internal error" not in run.stderr


def test_program_fields_written_empty_take_the_defaults_as_absent_ones_do(cli: CLI) -> None:
    """§1: the shapes are proto3 JSON, where `"timezone": ""` and `"tiers": []` are the
    fields unset (a printer that writes every field, as protobuf's can, writes them so);
    §3: absent program fields take the defaults. They used to refuse the snapshot ("is not
    a known time zone", "at least one tier is needed")."""
    snap = snapshot()
    snap["program"].update(timezone="", currency="", tiers=[])
    assert cli("snapshot", "load", snap).code == 0
    doc = receipt("r-defaults")
    # 18 November 00:30 in Moscow (the default zone), 17 November in UTC: Анна's birthday
    # on 25 November makes the Moscow day, 7 days before it, a x5 day
    doc["at"] = "2026-11-17T21:30:00Z"
    doc["lines"] = [{"sku": "4601234000017", "qty": "1", "priceMinor": 10000}]
    result = cli("quote", doc, "--json").json()
    assert result["card"]["tier"] == "gold"
    assert result["earnedPoints"] == 35  # the default gold tier, 7 % of 100.00, x5
    # a time zone that is not empty is still checked
    snap = snapshot()
    snap["version"] = 99
    snap["program"]["timezone"] = "Mars/Olympus"
    run = cli("snapshot", "load", snap)
    assert run.code == 2 and "not a known time zone" in run.err


def test_offer_coupon_and_customer_fields_written_empty_are_unset(cli: CLI) -> None:
    """The same proto3 reading for the rows: an offer's `minQty`, `validFrom`, `validTo`,
    `buyQty`, `freeQty`, a coupon's validity and a customer's `birthday` written `""`
    are the fields left out, not a refused snapshot ("\\"\\" is not a quantity")."""
    offer = {
        "id": "o-e",
        "campaignId": "camp-e",
        "kind": "PERCENT_OFF",
        "skus": ["4601234000017"],
        "value": "10",
        "minQty": "",
        "validFrom": "",
        "validTo": "",
        "buyQty": "",
        "freeQty": "",
        "weekdays": [],
        "hours": [],
        "tiers": [],
    }
    snap = snapshot(offers=[offer])
    snap["coupons"] = [{"code": "E1", "offerId": "o-e", "validFrom": "", "validTo": ""}]
    snap["customers"].append(
        {"id": "c-e", "firstName": "", "tier": "", "birthday": "", "balancePoints": 0}
    )
    run = cli("snapshot", "load", snap)
    assert run.code == 0, run.err
    result = cli("quote", receipt("r-e"), "--json").json()
    assert result["lines"][0]["offerId"] == "o-e"  # no bounds, no minimum quantity
    # a deal's value written "" is unset too (a deal needs none) ...
    deal = {**offer, "id": "o-d", "kind": "MULTIBUY", "value": "", "buyQty": "2", "freeQty": "1"}
    assert cli("snapshot", "load", snapshot(version=98, offers=[deal])).code == 0
    doc = receipt("r-d")
    doc["lines"] = [{"sku": "4601234000017", "qty": "3", "priceMinor": 100}]
    line = cli("quote", doc, "--json").json()["lines"][0]
    assert (line["offerId"], line["discountMinor"]) == ("o-d", 100)
    # ... while a value-kind offer's value written "" is still a missing value
    offer = {**offer, "value": ""}
    run = cli("snapshot", "load", snapshot(version=99, offers=[offer]))
    assert run.code == 2


def test_a_closing_client_that_sends_no_body_still_gets_its_400_at_once(
    server: HttpServer,
) -> None:
    """The body of a closing client is read before the 400 only while it comes: a client
    that announces more than 4 MiB and waits for the answer first gets it within about a
    second (the idle limit), not after the 10 s a body may take."""
    import time

    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        started = time.monotonic()
        s.sendall(
            b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n" + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        answer = b""
        while part := s.recv(65536):
            answer += part
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert took < 5, took
