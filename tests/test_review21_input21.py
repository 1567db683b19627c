"""Review 21 (input21): bad input at every entry point gets one clear line and changes
nothing. What the attack on the CLI, the configuration and gRPC found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from .conftest import CLI, grpc_served, receipt, snapshot


def _tillpoint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "tillpoint"
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_a_config_that_never_ends_is_refused_not_read_until_memory_runs_out(
    tmp_path: Path,
) -> None:
    """`--config /dev/zero` (or TILLPOINT_CONFIG pointing at a device, a log file...)
    was read whole: the command hung, its memory growing without bound. A configuration
    is a few KiB; past 1 MiB it is refused with one line, exit 2, on the local path and
    on the forwarding path (which reads the file's data_dir) alike."""
    data = tmp_path / "data"
    run = _tillpoint("--data-dir", str(data), "--config", "/dev/zero", "config", "check")
    assert run.returncode == 2, run
    assert (
        run.stderr == "tillpoint: config /dev/zero: larger than 1 MiB: not a configuration file\n"
    )
    assert run.stdout == ""
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1024 * 1024) + "\n", encoding="utf-8")
    run = _tillpoint("status", "--json", env={"TILLPOINT_CONFIG": str(big)})
    assert run.returncode == 2, run
    assert run.stderr.count("\n") == 1 and "larger than 1 MiB" in run.stderr
    assert not data.exists()


def test_a_config_file_saved_with_a_byte_order_mark_is_read(cli: CLI, tmp_path: Path) -> None:
    """Windows Notepad saves UTF-8 with a byte order mark; the TOML reader took it for a
    statement ("Invalid statement (at line 1, column 1)"), a message no one could act on.
    It is skipped, as in every JSON input (docs/CONTRACT.md)."""
    config = tmp_path / "till.toml"
    config.write_bytes("\ufeffbuild_workers = 1\n[hub]\nredeem_timeout_ms = 250\n".encode())
    run = cli("--config", config, "config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["buildWorkers"] == 1 and run.json()["hub"]["redeemTimeoutMs"] == 250
    config.write_bytes(b'device_id = "\xff"\n')
    run = cli("--config", config, "config", "check")
    assert run.code == 2
    assert (
        run.err == f"tillpoint: config {config}: not UTF-8 text (invalid start byte at byte 13)\n"
    )


@pytest.mark.parametrize("device_id", ["till 3", "a\nb", "store/till", "till\t1", "x\x00y"])
def test_a_device_id_the_hub_could_never_enrol_is_refused_by_the_configuration(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_id: str
) -> None:
    """The hub enrols no device id with blanks, slashes or control characters; the till
    took them and journalled its sales under an id no hub would ever accept (and "a\\nb"
    split its log lines). Refused where it is configured, one line, exit 2."""
    monkeypatch.delenv("TILLPOINT_DEVICE_ID")  # the file's, not the fixture's
    config = tmp_path / "till.toml"
    config.write_text(f"device_id = {json.dumps(device_id)}\n", encoding="utf-8")
    run = cli("--config", config, "config", "check")
    assert run.code == 2, run.out
    assert run.err.startswith("tillpoint: config: device_id ")
    assert run.err.endswith(  # and where it was set (review 27)
        f"no blanks, slashes or control characters (the hub enrols no other) (in {config})\n"
    )
    assert run.err.count("\n") == 1
    config.write_text('device_id = "касса-3"\n', encoding="utf-8")
    assert cli("--config", config, "config", "check").code == 0


def test_balance_at_an_empty_time_is_refused_as_over_grpc_and_http(cli: CLI) -> None:
    """`balance CARD --at ""` (a script's unset variable) answered the balance of now,
    while gRPC and HTTP refuse `"at": ""`: an empty time is not a time."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("balance", "2770000000017", "--at", "", "--json")
    assert run.code == 2 and run.out == ""
    assert run.err == (
        'tillpoint: --at: "" is not an RFC 3339 time with an offset,'
        " such as 2026-11-23T10:15:00+03:00\n"
    )
    assert cli("balance", "2770000000017", "--json").code == 0


def test_a_known_field_sent_with_another_wire_type_is_named_as_such(tmp_path: Path) -> None:
    """A POS encoding `receiptId` as a number (a hand-written encoder, a mismatched
    .proto) was told "field number 1 is not a field of Receipt (... a newer
    contract?)": false, and a wrong lead. protobuf keeps such a field as an unknown one;
    the message now names the field, the type sent and the contract's type."""
    import grpc
    from tillpoint.agent.service import Agent
    from tillpoint.v1 import tillpoint_pb2 as pb

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            quote = channel.unary_unary(
                "/tillpoint.v1.PosAgent/Quote",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.CheckoutResult.FromString,
            )
            good = json_format.Parse(json.dumps(receipt("w1")), pb.Receipt()).SerializeToString()
            cases = {
                # receiptId (field 1, a string) as the varint 5
                bytes([0x08, 0x05]) + good: (
                    "field number 1 (receiptId) of Receipt is sent as a varint,"
                    " not as the contract's string"
                ),
                # redeemPoints (field 7, an int64) as a length-delimited "abc"
                good + bytes([0x3A, 0x03]) + b"abc": (
                    "field number 7 (redeemPoints) of Receipt is sent as a length-delimited"
                    " value, not as the contract's int64"
                ),
                # lines (field 6, messages) as the varint 1
                good + bytes([0x30, 0x01]): (
                    "field number 6 (lines) of Receipt is sent as a varint, not as the"
                    " contract's repeated ReceiptLine"
                ),
                # a line's sku (field 1 of ReceiptLine) as the varint 1
                bytes([0x32, 0x02, 0x08, 0x01]) + good: (
                    "lines[0]: field number 1 (sku) of ReceiptLine is sent as a varint,"
                    " not as the contract's string"
                ),
            }
            for data, message in cases.items():
                with pytest.raises(grpc.RpcError) as refused:
                    quote(data, timeout=5)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refused.value.details() == message
            # a field the contract lacks keeps its words
            with pytest.raises(grpc.RpcError) as refused:
                quote(good + bytes([0xA0, 0x06, 0x01]), timeout=5)
            assert "field number 100 is not a field of Receipt" in str(refused.value.details())
            assert quote(good, timeout=5).receipt_id == "w1"
    finally:
        agent.close()


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_hub_import_of_json_nested_too_deeply_or_with_a_huge_number_is_bad_input(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """`hub import` of a file nested past Python's recursion limit, or with an integer of
    thousands of digits, was "internal error: RecursionError / ValueError", exit 1: a
    bug by the contract's words. It is "not valid JSON" (exit 2) as every other input
    says, and nothing is imported."""
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    deep = tmp_path / f"deep.{suffix}"
    huge = tmp_path / f"huge.{suffix}"
    if suffix == "json":
        deep.write_text('{"customers": ' + "[" * 5000 + "]" * 5000 + "}", encoding="utf-8")
        huge.write_text('{"customers": [{"id": "c-9", "balancePoints": ' + "9" * 5000 + "}]}")
        where = "import: "
    else:
        deep.write_text('{"customer": ' + "[" * 5000 + "]" * 5000 + "}\n", encoding="utf-8")
        huge.write_text('{"customer": {"id": "c-9", "balancePoints": ' + "9" * 5000 + "}}\n")
        where = "import refused, nothing was imported: line 1: "
    for path, why in ((deep, "nested too deeply"), (huge, "a number with too many digits")):
        run = cli("hub", "import", path)
        assert run.code == 2, run.err
        assert run.err == f"tillpoint: {where}not valid JSON ({why})\n"
    unknown = cli("hub", "balance", "c-9")
    assert unknown.code == 2 and "customer c-9 is not known to the hub" in unknown.err


def test_sync_install_under_an_id_the_ledger_does_not_journal_is_refused_before_writing(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle for till-9 installed on a till whose ledger journals till-1's sales (the
    configuration's device_id set to the bundle's, as install asks) was installed: then
    every command refused, under till-9 (the ledger is till-1's) and under till-1 (the
    till is enrolled as till-9), and no command undid it. Refused before anything is
    written, exit 2, one line naming both ids."""
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("checkout", receipt("r-1"), "--json", "--local").code == 0
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    bundle = tmp_path / "till-9.bundle"
    assert cli("hub", "enroll", "till-9", "--out", bundle).code == 0
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-9")
    run = cli("sync", "install", bundle)
    assert run.code == 2, run.out
    assert run.err == (
        f"tillpoint: the ledger of {tmp_path / 'data'} holds the sales of device 'till-1',"
        " none of 'till-9': install a bundle for 'till-1' (`tillpoint hub enroll till-1`),"
        " or give 'till-9' a data directory of its own\n"
    )
    assert not (tmp_path / "data" / "enrollment").exists()
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    assert cli("quote", receipt("r-2"), "--json", "--local").code == 0
    # a till with no sale yet takes the bundle of any id
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-9")
    assert cli("--data-dir", fresh, "sync", "install", bundle).code == 0


@pytest.mark.parametrize("speed", ["nan", "inf", "-1", "1e400", "abc"])
def test_demo_refuses_a_pause_that_is_no_number_of_seconds_before_starting(
    cli: CLI, speed: str
) -> None:
    """`demo --speed nan` (or -1, inf) started the hub and the tills and then failed at
    the first pause: "internal error: ValueError", exit 1. A usage error now."""
    run = cli("demo", f"--speed={speed}")
    assert run.code == 2
    assert run.err.startswith(f"tillpoint: argument --speed: '{speed}'")
    assert run.err.count("\n") == 1 and run.out == ""


def test_a_list_setting_in_the_environment_that_is_not_json_is_named_with_the_fix(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/INTEGRATION.md names TILLPOINT_HTTP__ALLOWED_ORIGINS for a kiosk's origins; set
    to a plain URL, the till said `error parsing value for field "http" from source
    "EnvSettingsSource"`: neither the variable nor that a list is JSON there."""
    monkeypatch.setenv("TILLPOINT_HTTP__ALLOWED_ORIGINS", "http://localhost:3000")
    monkeypatch.setenv("TILLPOINT_HTTP__LISTEN", "127.0.0.1:8061")  # a plain text: fine
    run = cli("config", "check")
    assert run.code == 2
    assert run.err.startswith("tillpoint: config: TILLPOINT_HTTP__ALLOWED_ORIGINS: not JSON;")
    assert '["http://localhost:3000"]' in run.err and run.err.count("\n") == 1
    monkeypatch.setenv("TILLPOINT_HTTP__ALLOWED_ORIGINS", '["http://localhost:3000"]')
    run = cli("config", "check", "--json")
    assert run.code == 0 and run.json()["http"]["allowedOrigins"] == ["http://localhost:3000"]
    monkeypatch.setenv("TILLPOINT_HUB", "hub:50070")
    run = cli("config", "check")
    assert run.code == 2 and run.err.startswith("tillpoint: config: TILLPOINT_HUB: not JSON;")


def test_a_tills_ledger_given_as_the_hubs_store_is_named_as_a_wrong_path(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub status --store /var/lib/tillpoint/ledger.db` (a till's file for the hub's) was
    "the hub database was written by another tillpoint release (schema steps m001_ledger
    ...): run that release, or restore the data directory", exit 1: a wrong lead. It is
    the wrong file: exit 2, saying what it is; the file is left as it was."""
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("checkout", receipt("r-1"), "--json", "--local").code == 0
    ledger = tmp_path / "data" / "ledger.db"
    before = ledger.read_bytes()
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "status", "--store", ledger)
    assert run.code == 2
    assert (
        run.err == f"tillpoint: {ledger} is a till's ledger, not a hub database: check the path\n"
    )
    run = cli("hub", "import", {"products": []}, "--store", tmp_path / "data" / "cache.db")
    assert run.code == 2 and "is a till's cache, not a hub database" in run.err
    assert ledger.read_bytes() == before
    assert cli("hub", "status").code == 0


def test_a_damaged_signed_bundle_is_refused_by_a_till_that_cannot_check_its_signature(
    cli: CLI, tmp_path: Path
) -> None:
    """A till not enrolled loads a signed bundle's payload unchecked (it has no hub key);
    but it also ignored the size and SHA-256 written beside the payload, so a bundle whose
    payload was damaged on its way (a changed digit in a balance, a cut) loaded as it had
    become. They are checked now, as a pull checks them: refused, the cache unchanged."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ed25519
    from tillpoint.sync import signing

    key = ed25519.Ed25519PrivateKey.generate()

    def bundle(payload: bytes, declared: bytes) -> dict[str, object]:
        return {
            "format": signing.FILE_FORMAT,
            "version": 1,
            "baseVersion": 0,
            "size": len(declared),
            "sha256": hashlib.sha256(declared).hexdigest(),
            "signature": base64.b64encode(signing.sign(key, declared)).decode(),
            "payload": base64.b64encode(payload).decode(),
        }

    whole = signing.canonical_json(snapshot())
    assert b'"balancePoints":1200' in whole
    changed = whole.replace(b'"balancePoints":1200', b'"balancePoints":9200')
    run = cli("snapshot", "load", bundle(changed, whole))
    assert run.code == 2
    assert run.err == "tillpoint: snapshot refused: its checksum does not match (corrupted)\n"
    cut = whole[: whole.rindex(b",")] + b"}"  # still JSON, its last field gone
    run = cli("snapshot", "load", bundle(cut, whole))
    assert run.code == 2
    assert run.err == (
        f"tillpoint: snapshot refused: truncated ({len(cut)} of {len(whole)} bytes)\n"
    )
    assert cli("status", "--json").json()["cacheVersion"] == 0
    assert cli("snapshot", "load", bundle(whole, whole)).code == 0
    assert cli("status", "--json").json()["cacheVersion"] == 1


def test_a_cache_link_whose_file_is_gone_says_the_way_out(cli: CLI, tmp_path: Path) -> None:
    """`cache.db` is a symlink to the current generation; with that file gone (deleted by
    hand to free space, a restore without it) every call said "cannot open the cache: it
    keeps being replaced", and nothing said what to do. It is a damaged cache: the
    message names the missing file and the way out, which works."""
    assert cli("snapshot", "load", snapshot()).code == 0
    data = tmp_path / "data"
    link = data / "cache.db"
    assert link.is_symlink()
    (data / os.readlink(link)).unlink()
    run = cli("quote", receipt("r-1"), "--json", "--local")
    assert run.code == 1 and run.out == ""
    assert f"cache.db points to {os.readlink(link)}, which is missing" in run.err
    assert f"delete {data / 'cache'}*.db*, and load a full snapshot again" in run.err
    assert run.err.count("\n") == 1
    for leftover in data.glob("cache*.db*"):
        leftover.unlink()
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("quote", receipt("r-1"), "--json", "--local").code == 0


def test_a_request_whose_client_half_closes_is_answered(server: Any, agent: Any) -> None:
    """A client that shuts its side of the connection once the request is sent (`nc -N`,
    a POS that marks the request's end so) got no answer: asyncio closed the connection
    on that end of input, after the checkout had been committed. The answer is sent,
    then the connection is closed."""
    import socket

    body = json.dumps(receipt("half-1")).encode()
    head = (
        "POST /v1/checkout HTTP/1.1\r\nHost: till\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, document = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert json.loads(document)["receiptId"] == "half-1"
    assert agent.status().last_seq == 1
    # a connection closed with no request under way closes at once, as before
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
