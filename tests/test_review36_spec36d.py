"""Review 36, spec36d: CONTRACT §3 (the snapshot), §4 (identifying a card) and §8 (the
customer display) read sentence by sentence and told to the CLI and to HTTP and gRPC, the
answers worked out by hand from the contract (the scenarios of tests/scenarios/review36/
tell the rest through the CLI).

Faults found (each test failed before its fix):
- a card row written `"status": ""` refused the whole snapshot, while the same row without
  `status` loads as an active card: CONTRACT §1 says the JSON shapes are proto3's JSON
  mapping, and `CardRecord.status` is a proto `string`, whose unset value a printer that
  writes every field writes `""` (CONTRACT §3's decision on fields written empty);
- the same for the snapshot's `issuedAt` (and `expiresAt`) written `""`: refused, though
  absent it loads.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI, ean13, posagent_stub, receipt, snapshot

TIMEOUT = 10.0


def _cache_files(data_dir: Path) -> dict[str, str]:
    """Every file of the data directory by its content (a symlink by its target)."""
    out: dict[str, str] = {}
    for path in sorted(data_dir.iterdir()):
        if path.is_symlink():
            out[path.name] = "-> " + str(path.readlink())
        elif path.is_file():
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- §3: fields written empty


def test_a_card_status_written_empty_is_the_status_left_out_an_active_card(cli: CLI) -> None:
    """CONTRACT §3: a row without `status` is an active card (the hub leaves defaults out);
    `"status": ""` is the same proto3 message (an unset string), so the same row."""
    snap = snapshot()
    snap["cards"][0] = {"number": "2770000000017", "customerId": "c-a", "status": ""}
    run = cli("snapshot", "load", snap, "--json")
    assert run.code == 0, run.err
    found = cli("identify", "2770000000017", "--json").json()
    assert found == {"status": "FOUND", "customerId": "c-a", "tier": "gold", "firstName": "Анна"}
    # and the same row with the field left out answers the same
    snap2 = snapshot(version=2)
    del snap2["cards"][0]["status"]
    assert cli("snapshot", "load", snap2, "--json").code == 0
    assert cli("identify", "2770000000017", "--json").json() == found


def test_a_card_status_that_is_none_of_the_three_is_still_refused(cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    for status in ("active", "CLOSED", " "):
        snap = snapshot(version=2)
        snap["cards"][0]["status"] = status
        run = cli("snapshot", "load", snap, "--json")
        assert run.code == 2 and "cards[0].status" in run.err, (status, run)


@pytest.mark.parametrize("field", ["issuedAt", "expiresAt"])
def test_a_header_time_written_empty_is_the_time_left_out(cli: CLI, field: str) -> None:
    """CONTRACT §3: `issuedAt`/`expiresAt` are proto `string`s: `""` is the field unset."""
    snap = snapshot()
    snap[field] = ""
    run = cli("snapshot", "load", snap, "--json")
    assert run.code == 0, run.err
    assert run.json()["version"] == 1
    without = snapshot(version=2)
    without.pop(field, None)
    assert cli("snapshot", "load", without, "--json").code == 0
    # what the status says of the cache is the same either way
    assert cli("status", "--json").json()["cacheVersion"] == 2


# ---------------------------------------------------------------- §3 / §10: the cache unchanged


def _bad(change: Any) -> dict[str, Any]:
    snap = snapshot(version=6)
    change(snap)
    return snap


BAD_SNAPSHOTS: dict[str, Any] = {
    "version missing": lambda s: s.pop("version"),
    "version 0": lambda s: s.__setitem__("version", 0),
    "version with a fraction": lambda s: s.__setitem__("version", 6.0),
    "older version": lambda s: s.__setitem__("version", 4),
    "same version another issuedAt": lambda s: (
        s.__setitem__("version", 5),
        s.__setitem__("issuedAt", "2026-11-24T03:00:00Z"),
    ),
    "delta on the wrong base": lambda s: s.__setitem__("baseVersion", 3),
    "baseVersion equal to version": lambda s: s.__setitem__("baseVersion", 6),
    "issuedAt without offset": lambda s: s.__setitem__("issuedAt", "2026-11-23T03:00:00"),
    "pointValueMinor 0": lambda s: s["program"].__setitem__("pointValueMinor", 0),
    "maxRedeemPercent 101": lambda s: s["program"].__setitem__("maxRedeemPercent", 101),
    "unknown time zone": lambda s: s["program"].__setitem__("timezone", "Mars/Base"),
    "negative accrual": lambda s: s["program"]["tiers"][0].__setitem__("accrualPercent", "-1"),
    "product without sku": lambda s: s["products"][0].pop("sku"),
    "boolean as a string": lambda s: s["products"][2].__setitem__("excludedFromLoyalty", "true"),
    "customer without id": lambda s: s["customers"][0].pop("id"),
    "balance with a fraction": lambda s: s["customers"][0].__setitem__("balancePoints", 1.5),
    "balance past int64": lambda s: s["customers"][0].__setitem__("balancePoints", 2**63),
    "segment not one of four": lambda s: s["customers"][0].__setitem__("segment", "VIP"),
    "birthday 30 February": lambda s: s["customers"][0].__setitem__("birthday", "1990-02-30"),
    "favoriteWeekday 8": lambda s: s["customers"][0].__setitem__("favoriteWeekday", 8),
    "pending without activatesAt": lambda s: s["customers"][0].__setitem__(
        "pending", [{"points": 40}]
    ),
    "card status lower case": lambda s: s["cards"][0].__setitem__("status", "blocked"),
    "card without customerId": lambda s: s["cards"][0].pop("customerId"),
    "a row twice": lambda s: s["cards"].append(dict(s["cards"][0])),
    "a typo of a section": lambda s: s.__setitem__("customer", []),
    "a section that is no list": lambda s: s.__setitem__("cards", {}),
    "appliedThrough negative": lambda s: s.__setitem__("appliedThrough", {"till-1": -1}),
    "removed.cards not a list": lambda s: s.__setitem__("removed", {"cards": "x"}),
}


def test_every_bad_snapshot_exits_2_in_one_line_and_leaves_the_cache_files_as_they_were(
    cli: CLI, tmp_path: Path
) -> None:
    """CONTRACT §10: bad input gets exit 2 and a clear message; the cache is left as it
    was — compared here file by file, byte for byte, before and after each refusal."""
    assert cli("snapshot", "load", snapshot(version=5), "--json").code == 0
    assert cli("checkout", receipt("r-seed"), "--json").code == 0
    data_dir = tmp_path / "data"
    before = _cache_files(data_dir)
    problems = []
    for name, change in BAD_SNAPSHOTS.items():
        run = cli("snapshot", "load", _bad(change), "--json")
        lines = run.err.strip().splitlines()
        if run.code != 2 or run.out or len(lines) != 1 or "Traceback" in run.err:
            problems.append(f"{name}: exit {run.code}, out={run.out!r}, err={run.err!r}")
        if _cache_files(data_dir) != before:
            problems.append(f"{name}: the data directory changed")
            before = _cache_files(data_dir)
    for text in ('{"version": 2,', "[]", "", "\x00"):
        path = tmp_path / "broken.json"
        path.write_text(text, encoding="utf-8")
        run = cli("snapshot", "load", str(path), "--json")
        if run.code != 2 or len(run.err.strip().splitlines()) != 1:
            problems.append(f"{text!r}: exit {run.code}, err={run.err!r}")
    assert _cache_files(data_dir) == before
    assert not problems, "\n".join(problems)
    status = cli("status", "--json").json()
    assert (status["cacheVersion"], status["cacheIssuedAt"]) == (5, "2026-11-23T03:00:00Z")


# ---------------------------------------------------------------- §4: every door


def _identify_snapshot() -> dict[str, Any]:
    snap = snapshot()
    customers = snap["customers"]
    # c-0 shares Борис's phone and has only a lost card: the phone finds Борис (CONTRACT
    # §4's decision on a shared phone); c-n has a phone and no card: BLOCKED.
    customers.append({"id": "c-0", "firstName": "Олег", "phone": "8 903 555-00-01"})
    customers.append({"id": "c-n", "firstName": "Нина", "phone": "+79990001122"})
    snap["cards"].append({"number": "2770000000048", "customerId": "c-0", "status": "LOST"})
    snap["cards"].append({"number": ean13("277000000005"), "customerId": "c-gone"})
    return snap


# (scanned text, the card object every door answers), worked out from CONTRACT §4
ANNA = {"status": "FOUND", "customerId": "c-a", "tier": "gold", "firstName": "Анна"}
BORIS = {"status": "FOUND", "customerId": "c-b", "tier": "base", "firstName": "Борис"}
IDENTIFY_CASES: list[tuple[str, dict[str, Any]]] = [
    ("2770000000017", ANNA),
    (" 2\u2013770000\u2014000017\t", ANNA),  # en and em dash, a tab
    ("+79161234567", ANNA),
    ("8 916 123-45-67", ANNA),
    ("7 916 123 45 67", ANNA),
    ("9161234567", ANNA),
    ("89035550001", BORIS),  # shared with c-0, whose only card is lost
    ("2770000000031", {"status": "BLOCKED"}),  # Вера's card is blocked
    ("2770000000048", {"status": "BLOCKED"}),  # lost
    ("+79990001122", {"status": "BLOCKED"}),  # a customer with no card
    ("2770000000055", {"status": "UNKNOWN"}),  # its customer is not in the cache
    (ean13("460000000000"), {"status": "UNKNOWN"}),  # a right check digit, no such card
    ("9035559999", {"status": "UNKNOWN"}),  # a phone of no one
    ("123", {"status": "UNKNOWN"}),
    ("2770000000010", {"status": "INVALID"}),  # wrong check digit
    ("+7 (916) 123-45-67", {"status": "INVALID"}),  # brackets
    ("+19161234567", {"status": "INVALID"}),  # a + number that is not Russian
    ("+7916123456", {"status": "INVALID"}),  # one digit short
    ("", {"status": "INVALID"}),
    ("   ", {"status": "INVALID"}),
    ("27700000000l7", {"status": "INVALID"}),  # a letter
    ("２770000000017", {"status": "INVALID"}),  # a full-width digit
]


@pytest.fixture
def id_agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "id-data", "till-1")
    a.load_snapshot(_identify_snapshot())
    yield a
    a.close()


def _same(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    return all(actual.get(k) == v for k, v in expected.items()) and (
        expected["status"] != "FOUND" or set(actual) == set(expected)
    )


def test_identify_answers_alike_at_the_cli_http_and_grpc(
    cli: CLI, id_agent: Agent, tmp_path: Path
) -> None:
    path = tmp_path / "id.json"
    path.write_text(json.dumps(_identify_snapshot(), ensure_ascii=False), encoding="utf-8")
    assert cli("snapshot", "load", str(path), "--json").code == 0
    srv = HttpServer(id_agent, "127.0.0.1:0")
    srv.start()
    problems = []
    try:
        with posagent_stub(id_agent) as stub:
            for text, expected in IDENTIFY_CASES:
                run = cli("identify", "--", text, "--json")
                if run.code != 0 or not _same(expected, run.json()):
                    problems.append(f"cli {text!r}: {run.code} {run.out!r} {run.err!r}")
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
                try:
                    body = json.dumps({"text": text}).encode()
                    conn.request("POST", "/v1/identify", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    doc = json.loads(resp.read())
                finally:
                    conn.close()
                if resp.status != 200 or not _same(expected, doc):
                    problems.append(f"http {text!r}: {resp.status} {doc!r}")
                try:
                    answer = stub.Identify(pb.IdentifyRequest(text=text), timeout=TIMEOUT)
                except grpc.RpcError as exc:
                    problems.append(f"grpc {text!r}: {exc.code()}")
                    continue
                got = json_format.MessageToDict(answer)
                if not _same(expected, got):
                    problems.append(f"grpc {text!r}: {got!r}")
                if expected["status"] in ("BLOCKED", "INVALID") and not got.get("reason"):
                    problems.append(f"grpc {text!r}: no reason for the cashier")
    finally:
        srv.stop()
    assert not problems, "\n".join(problems)


def test_a_quote_at_each_door_refuses_blocked_and_invalid_cards_and_sells_unknown_ones(
    cli: CLI, id_agent: Agent, tmp_path: Path
) -> None:
    """CONTRACT §4's table and its decision: BLOCKED is 412 / FAILED_PRECONDITION / exit
    2; INVALID is 400 / INVALID_ARGUMENT / exit 2; UNKNOWN prices with no offers and
    no redemption, and no balance."""
    path = tmp_path / "id.json"
    path.write_text(json.dumps(_identify_snapshot(), ensure_ascii=False), encoding="utf-8")
    assert cli("snapshot", "load", str(path), "--json").code == 0
    srv = HttpServer(id_agent, "127.0.0.1:0")
    srv.start()
    try:
        with posagent_stub(id_agent) as stub:
            for card, http_code, grpc_code in (
                ("+79990001122", 412, grpc.StatusCode.FAILED_PRECONDITION),
                ("2770000000048", 412, grpc.StatusCode.FAILED_PRECONDITION),
                ("2770000000010", 400, grpc.StatusCode.INVALID_ARGUMENT),
                ("+7 (916) 123-45-67", 400, grpc.StatusCode.INVALID_ARGUMENT),
                ("9035559999", 200, grpc.StatusCode.OK),
            ):
                body = receipt("q-" + card, card=card, redeemPoints=-1)
                run = cli("quote", body, "--json")
                assert run.code == (0 if http_code == 200 else 2), (card, run)
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
                try:
                    conn.request(
                        "POST",
                        "/v1/quote",
                        json.dumps(body).encode(),
                        {"Content-Type": "application/json"},
                    )
                    resp = conn.getresponse()
                    doc = json.loads(resp.read())
                finally:
                    conn.close()
                assert resp.status == http_code, (card, resp.status, doc)
                message = json_format.ParseDict(body, pb.Receipt())
                try:
                    answer = stub.Quote(message, timeout=TIMEOUT)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                assert code == grpc_code, card
                if http_code == 200:
                    # 2 × 89,90 at the first tier's 3 %: 179,80 × 3 % = 5,394 -> 5 points
                    for got in (run.json(), doc, json_format.MessageToDict(answer)):
                        assert got["card"] == {"status": "UNKNOWN"}
                        assert int(got.get("redeemedPoints", 0)) == 0
                        assert int(got["earnedPoints"]) == 5
                        assert got.get("balance") is None
    finally:
        srv.stop()


# ---------------------------------------------------------------- §8: the result's display


def test_display_never_shows_more_than_the_first_name_and_fits_two_by_twenty(cli: CLI) -> None:
    """CONTRACT §8: 2 lines × 20 characters, Cyrillic included, never more than the first
    name (its first word, the decision): a long double name, an accented Latin name, a
    name in letters the display lacks, a name too long for a row."""
    snap = snapshot()
    snap["customers"][0]["firstName"] = "Анна-Мария Викторовна"
    snap["customers"][1]["firstName"] = "Zoë Smith"
    snap["customers"][2]["firstName"] = "Константинопольская"
    snap["cards"][2]["status"] = "ACTIVE"
    assert cli("snapshot", "load", snap, "--json").code == 0
    shown = {}
    for card in ("2770000000017", "2770000000024", "2770000000031"):
        result = cli("checkout", receipt("r-" + card, card=card), "--json").json()
        display = result["display"]
        assert len(display) <= 2 and all(len(line) <= 20 for line in display), display
        text = " ".join(display)
        assert "Викторовна" not in text and "Smith" not in text, display
        shown[card] = display
    assert all("Мария" not in " ".join(d) for d in shown.values())


def test_identify_over_grpc_puts_each_outcome_on_a_real_display(tmp_path: Path) -> None:
    """CONTRACT §8 with §4: identify over gRPC shows the greeting with the first name only
    (a long double name on the row below), no name for an UNKNOWN card, "Карта не
    принята" for a BLOCKED or INVALID one; the display is a real driver on pyserial's
    `loop://`, and what reaches the wire for a Greek name leaves the name out."""
    from tillpoint.printer.service import Devices, load_configs

    from .test_review25_print25 import _shown

    snap = snapshot()
    snap["customers"][0]["firstName"] = "Анна-Мария Ивановна"
    snap["customers"][1]["firstName"] = "Κώστας"
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snap)
    p, d, s = load_configs({"kind": "none"}, {"kind": "serial", "device": "loop://"}, {})
    devices = Devices(tmp_path / "ledger-devices.db", p, d, s)
    agent.devices = devices
    try:
        with posagent_stub(agent) as stub:
            for text, lines in (
                ("2770000000017", ["Добрый день,", "Анна-Мария!"]),  # FOUND, first word
                ("2770000000024", ["Κώστας, добрый день!", ""]),  # FOUND
                ("2770000000093", ["Добрый день!", ""]),  # UNKNOWN
                ("2770000000031", ["Карта не принята", ""]),  # BLOCKED
                ("2770000000010", ["Карта не принята", ""]),  # INVALID
            ):
                stub.Identify(pb.IdentifyRequest(text=text), timeout=TIMEOUT)
                assert devices.status()["display"]["lines"] == lines, text
                assert _shown(lines, 20) == (
                    ["Добрый день!", ""] if lines[0].startswith("Κώστας") else lines
                )
    finally:
        devices.stop()
        agent.close()


def test_an_enrolled_till_refuses_unsigned_wrongly_signed_and_older_bundles_unchanged(
    cli: CLI, tmp_path: Path
) -> None:
    """CONTRACT §3: snapshots from the hub are signed (Ed25519); an agent refuses an
    unsigned, wrongly signed or older-version snapshot and keeps what it has — here
    through `snapshot load` on an enrolled till, the cache files compared byte for byte."""
    import base64

    hub_dir = str(tmp_path / "hub")
    master = tmp_path / "master.json"
    master.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    assert cli("hub", "import", str(master), "--publish", "--hub-dir", hub_dir).code == 0
    enrolment, signed = tmp_path / "enrol.json", tmp_path / "signed.json"
    assert cli("hub", "enroll", "till-1", "--hub-dir", hub_dir, "--out", str(enrolment)).code == 0
    assert cli("hub", "export", "till-1", "--hub-dir", hub_dir, "--out", str(signed)).code == 0
    assert cli("sync", "install", str(enrolment)).code == 0
    loaded = cli("snapshot", "load", str(signed), "--json")
    assert loaded.code == 0 and loaded.json()["version"] == 1, loaded.err
    assert cli("identify", "2770000000017", "--json").json()["customerId"] == "c-a"
    data_dir = tmp_path / "data"
    before = _cache_files(data_dir)
    bundle = json.loads(signed.read_text(encoding="utf-8"))

    def payload_with(change: Any) -> dict[str, Any]:
        text = base64.b64decode(bundle["payload"]).replace(b'"c-a"', b'"c-A"')
        out = dict(bundle, payload=base64.b64encode(text).decode())
        out.update(size=len(text), sha256=hashlib.sha256(text).hexdigest())
        change(out)
        return out

    sig = base64.b64decode(bundle["signature"])
    variants: dict[str, Any] = {
        "unsigned (a plain JSON file)": snapshot(version=5),
        "no signature": {k: v for k, v in bundle.items() if k != "signature"},
        "a signature byte changed": dict(
            bundle, signature=base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
        ),
        "the payload changed, its checksum written again": payload_with(lambda b: None),
    }
    problems = []
    for name, doc in variants.items():
        run = cli("snapshot", "load", doc, "--json")
        if run.code != 2 or run.out or len(run.err.strip().splitlines()) != 1:
            problems.append(f"{name}: exit {run.code} out={run.out!r} err={run.err!r}")
        if _cache_files(data_dir) != before:
            problems.append(f"{name}: the cache changed")
    assert not problems, "\n".join(problems)
    # a newer version from the hub is taken; then the older bundle is a rollback
    assert cli("hub", "publish", "--hub-dir", hub_dir).code == 0
    newer = tmp_path / "newer.json"
    assert cli("hub", "export", "till-1", "--hub-dir", hub_dir, "--out", str(newer)).code == 0
    assert cli("snapshot", "load", str(newer), "--json").json()["version"] == 2
    after = _cache_files(data_dir)
    old = cli("snapshot", "load", str(signed), "--json")
    assert old.code == 2 and "not newer" in old.err, old
    assert _cache_files(data_dir) == after
    assert cli("identify", "2770000000017", "--json").json()["customerId"] == "c-a"
