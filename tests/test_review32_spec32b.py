"""Review 32 (spec32b): every sentence of CONTRACT §10-§17 that states behaviour is pinned by
a test that would fail if the agent broke it (the table: docs/TRACEABILITY.md, "§10-§17").

Most sentences were pinned already; this file holds the ones no test pinned, through the
real doors: the CLI (in-process, as the scenarios run it), HTTP/JSON to a real server on a
random loopback port, gRPC to a real server on 127.0.0.1, and a real hub over gRPC with
mTLS. The scenario of this review (hand arithmetic in its `why`) is in
tests/scenarios/review32/ and runs with tests/test_scenarios.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.loopback import receipt as hub_receipt
from tillpoint.sync.push import Pusher
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, ManualClock, enrolled_till, grpc_served, posagent_stub, receipt, snapshot
from .test_http_api import Client, error_of

TIMEOUT = 10


# ---------------------------------------------------------------- CONTRACT §10


@pytest.fixture
def empty_till(tmp_path: Path) -> Iterator[tuple[Client, Any]]:
    """A till with no snapshot loaded, on the `cli` fixture's data directory, served over
    HTTP and gRPC at once (as `tillpoint run` serves one `Agent`)."""
    agent = Agent(tmp_path / "data", "till-1")
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    http = Client(server.port)
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield http, pb_grpc.PosAgentStub(channel)
    finally:
        http.close()
        server.stop()
        agent.close()


def test_no_snapshot_refuses_quote_hold_and_checkout_at_every_door(
    empty_till: tuple[Client, Any], cli: CLI
) -> None:
    """CONTRACT §10: "A till with no snapshot loaded refuses quote, hold and checkout with
    "no snapshot loaded" (exit 2; gRPC FAILED_PRECONDITION; HTTP 412)". Before this review
    the gRPC door was pinned for Quote and Checkout only (tests/test_no_snapshot.py) and
    HTTP for hold and quote: here all three calls at all three doors, and nothing stored."""
    http, stub = empty_till
    for call in ("quote", "hold", "checkout"):
        body = receipt(f"{call}-1")
        run = cli(call, body, "--json")
        assert (run.code, run.out) == (2, ""), (call, run.out)
        assert run.err.startswith("tillpoint: no snapshot loaded"), (call, run.err)
        assert run.err.count("\n") == 1 and "Traceback" not in run.err

        method = getattr(stub, call.capitalize())
        with pytest.raises(grpc.RpcError) as info:
            method(json_format.ParseDict(body, pb.Receipt()), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, call
        assert (info.value.details() or "").startswith("no snapshot loaded"), call

        status, code, message = error_of(http.post(f"/v1/{call}", body))
        assert (status, code) == (412, "FAILED_PRECONDITION"), (call, message)
        assert message.startswith("no snapshot loaded"), (call, message)

    # Nothing was stored: no hold to confirm or cancel, no receipt, nothing to push.
    for call in ("hold", "checkout"):
        assert error_of(http.post("/v1/confirm", {"receiptId": f"{call}-1"}))[:2] == (
            404,
            "NOT_FOUND",
        )
        assert error_of(http.post("/v1/cancel", {"receiptId": f"{call}-1"}))[:2] == (
            404,
            "NOT_FOUND",
        )
    status_doc = cli("status", "--json").json()
    assert (status_doc["cacheVersion"], status_doc["lastSeq"], status_doc["outboxDepth"]) == (
        0,
        0,
        0,
    )
    # Once a snapshot is loaded, the very receipt the till refused holds.
    assert cli("snapshot", "load", snapshot()).code == 0
    assert http.post("/v1/hold", receipt("hold-1")).json()["state"] == "HELD"


# ---------------------------------------------------------------- CONTRACT §11


def test_a_hold_lives_1800_seconds_when_the_program_does_not_say(
    tmp_path: Path, clock: ManualClock
) -> None:
    """CONTRACT §11: "A hold expires holdTtlSeconds after it was placed (program, default
    1800)". Every other test of the TTL sets holdTtlSeconds itself; the default was only
    checked as "gone after 1800 s" (tests/test_review26_life26.py). Through gRPC on a
    program with no holdTtlSeconds: held at 07:15:00Z, holdExpiresAt 07:45:00Z (7:15 +
    1800 s = 30 min); 1799 s later its Confirm commits, 1800 s later another hold's
    Confirm is refused FAILED_PRECONDITION "hold expired: price the receipt again"."""
    program = snapshot()["program"]
    assert "holdTtlSeconds" not in program  # the default is what this test is about
    agent = Agent(tmp_path / "data", "till-1", clock=clock)
    agent.load_snapshot(snapshot())
    try:
        with posagent_stub(agent) as stub:
            first = stub.Hold(json_format.ParseDict(receipt("h-1"), pb.Receipt()), timeout=TIMEOUT)
            second = stub.Hold(json_format.ParseDict(receipt("h-2"), pb.Receipt()), timeout=TIMEOUT)
            for held in (first, second):
                assert held.state == pb.HELD
                expires = datetime.fromisoformat(held.hold_expires_at)
                assert expires == datetime(2026, 11, 23, 7, 45, tzinfo=UTC)
            clock.advance(1799)
            done = stub.Confirm(pb.ConfirmRequest(receipt_id="h-1"), timeout=TIMEOUT)
            assert done.state == pb.CONFIRMED
            clock.advance(1)
            with pytest.raises(grpc.RpcError) as info:
                stub.Confirm(pb.ConfirmRequest(receipt_id="h-2"), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "hold expired: price the receipt again" in (info.value.details() or "")
    finally:
        agent.close()


def test_the_cli_hold_says_when_its_default_ttl_ends(cli: CLI) -> None:
    """CONTRACT §11 (default 1800) and §10 (`hold FILE --json` prints the held result):
    the CLI's hold runs on the wall clock, so its `holdExpiresAt` is 1800 s after a moment
    between the call's start and end."""
    assert cli("snapshot", "load", snapshot()).code == 0
    before = datetime.now(UTC)
    held = cli("hold", receipt("h-cli"), "--json")
    after = datetime.now(UTC)
    assert held.code == 0, held.err
    doc = held.json()
    assert doc["state"] == "HELD"
    expires = datetime.fromisoformat(doc["holdExpiresAt"])
    ttl = timedelta(seconds=1800)
    assert before + ttl <= expires <= after + ttl, (before, expires, after)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    yield hub
    hub.stop()


def test_the_fiscal_document_is_stored_with_the_receipt_and_reaches_the_hub(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11: "fiscalDocument (optional, ≤ 64 characters) is stored with the receipt
    and sent to the hub". The till's side was pinned (the outbox payload,
    tests/test_receipt_life.py) and the hub's column (tests/test_hub_sql.py), each alone;
    here one confirmed receipt goes the whole way: Hold and Confirm over the till's gRPC
    door, the outbox pushed over gRPC with mTLS, the hub's stored transaction read back.
    A receipt confirmed without one (and a Checkout) reaches the hub with none."""
    till = enrolled_till(hub, tmp_path / "till", "till-1")
    fiscal = "ФД 0000012345 ФН 9960440300000001 ФП 1234567890"  # 47 characters
    assert len(fiscal) <= 64
    try:
        with posagent_stub(till.agent) as stub:
            for rid in ("f-1", "f-2"):
                body = hub_receipt(rid, "2770000000017")
                held = stub.Hold(json_format.ParseDict(body, pb.Receipt()), timeout=TIMEOUT)
                assert held.state == pb.HELD
            done = stub.Confirm(
                pb.ConfirmRequest(receipt_id="f-1", fiscal_document=fiscal), timeout=TIMEOUT
            )
            assert done.state == pb.CONFIRMED
            stub.Confirm(pb.ConfirmRequest(receipt_id="f-2"), timeout=TIMEOUT)
        till.agent.checkout(receipt_from_json(hub_receipt("f-3", "2770000000017")))
        stored = till.agent._ledger.execute(
            "SELECT receipt_id, fiscal_document FROM receipt_life ORDER BY receipt_id"
        ).fetchall()
        # (the till stores "none" as NULL; the hub as "")
        assert [(r[0], r[1] or "") for r in stored if r[0] in ("f-1", "f-2")] == [
            ("f-1", fiscal),
            ("f-2", ""),
        ]
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5)
        try:
            assert pusher.drain() == 3
        finally:
            pusher.close()
        with hub.store._reading() as tx:
            rows = tx.execute(
                "SELECT receipt_id, fiscal_document FROM transactions"
                " WHERE device_id = ? ORDER BY seq",
                ("till-1",),
            ).fetchall()
        assert [tuple(row) for row in rows] == [("f-1", fiscal), ("f-2", ""), ("f-3", "")]
    finally:
        till.stop()


# ---------------------------------------------------------------- CONTRACT §12


def test_http_listens_on_127_0_0_1_8061_unless_told_otherwise(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §12: "It listens on 127.0.0.1:8061 by default ([http] listen in the config,
    environment TILLPOINT_HTTP__LISTEN, like [server] listen for gRPC)". The file and the
    environment were pinned by serving tests; the default itself was not (every test moves
    it off 8061 so that suites side by side do not collide). Read as `tillpoint config
    check --json` shows what `run` would serve."""
    for key in [k for k in os.environ if k.startswith("TILLPOINT_")]:
        if key != "TILLPOINT_DEVICE_ID":
            monkeypatch.delenv(key)
    shown = cli("config", "check", "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["http"]["listen"] == "127.0.0.1:8061"
    assert shown.json()["server"]["listen"] == "127.0.0.1:50061"  # §12's "like [server] listen"

    conf = tmp_path / "tillpoint.toml"
    conf.write_text('[http]\nlisten = "127.0.0.1:18061"\n', encoding="utf-8")
    from_file = cli("--config", str(conf), "config", "check", "--json")
    assert from_file.code == 0, from_file.err
    assert from_file.json()["http"]["listen"] == "127.0.0.1:18061"
    monkeypatch.setenv("TILLPOINT_HTTP__LISTEN", "127.0.0.1:28061")
    from_env = cli("--config", str(conf), "config", "check", "--json")
    assert from_env.json()["http"]["listen"] == "127.0.0.1:28061"  # §10: env wins over file


# ---------------------------------------------------------------- the table itself

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- §10–§17 below -->"


def _section_10_to_17() -> str:
    text = (REPO / "docs" / "TRACEABILITY.md").read_text(encoding="utf-8")
    assert MARK in text, "docs/TRACEABILITY.md lost the line its §10–§17 part starts after"
    part = text.split(MARK, 1)[1]
    assert "\n## §10–§17\n" in part
    return part


def test_the_traceability_table_names_tests_that_exist() -> None:
    """docs/TRACEABILITY.md (§10–§17): every file it names exists, and every
    `file.py::test_name` is a test of that file; each of CONTRACT §10–§17 has its table."""
    import re

    part = _section_10_to_17()
    for n in range(10, 18):
        assert f"\n### CONTRACT §{n} " in part, f"no table for CONTRACT §{n}"
    refs = re.findall(r"`(tests/[^`\s]+)`", part)
    assert len(refs) > 150, len(refs)
    missing = []
    for ref in refs:
        path, _, name = ref.partition("::")
        file = REPO / path
        defined = rf"(?m)^(async )?def {re.escape(name)}\("
        if not file.is_file() or (
            name and not re.search(defined, file.read_text(encoding="utf-8"))
        ):
            missing.append(ref)
    assert not missing, "\n".join(missing)


def test_scenario_text_cites_the_contract_never_the_input_document() -> None:
    """House rule: scenario text cites "CONTRACT §N". The repository's own check
    (tests/test_readme.py) catches the input document's file name and "…§" only; seven
    scenarios of review 24 wrote it as a bare word with a section number in their `why`."""
    import re

    word = re.compile(r"\b" + "SP" + r"EC\b")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "tests" / "scenarios").rglob("*.json"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if word.search(line)
    ]
    assert not found, "\n".join(found)
