"""`tillpoint reset` keeps the till's numbering; a transaction the hub sets aside is an error."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.errors import TillpointError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher
from tillpoint.sync.state import sync_status

from .conftest import CLI, snapshot
from .conftest import receipt as plain_receipt

CARD = "2770000000017"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip() and "--json" in argv else out
    return code, doc, err


def count(data_dir: Path, sql: str) -> int:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_after_a_reset_the_next_sale_continues_the_numbering_at_the_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till"
    till = hub.till("till-1", data, start=False)
    enrollment = till.link.enrollment
    try:
        Puller(till.agent, till.link, enrollment, call_timeout_s=2).pull()
        till.agent.checkout(receipt_from_json(receipt("r-1", CARD)))
        assert Pusher(data, "till-1", till.link, call_timeout_s=2).drain() == 1
        till.stop()

        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        code, _, err = run(capsys, "reset", "--data-dir", str(data))
        assert code == 2 and err.strip() == (
            "tillpoint: reset forgets the cache and the ledger: add --yes to confirm"
        )
        code, doc, err = run(capsys, "reset", "--yes", "--data-dir", str(data), "--json")
        assert code == 0, err
        assert doc == {
            "reset": True,
            "discardedTransactions": 0,
            "hubHoldsReleased": 0,
            "hubHoldsLeft": 0,
            "hubReleasesOwed": 0,  # none a late grant may overtake (review 46)
            "hubReleasesOwedUntil": "",
        }
        assert count(data, "SELECT count(*) FROM journal") == 0

        # the hub's snapshot still says appliedThrough 0 for till-1 (not republished)
        agent = Agent(data, "till-1")
        link = HubLink(hub.address, enrollment)
        try:
            Puller(agent, link, enrollment, call_timeout_s=2).pull()
            agent.checkout(receipt_from_json(receipt("r-2", CARD)))
            assert count(data, "SELECT seq FROM journal") == 2
            pusher = Pusher(data, "till-1", link, call_timeout_s=2)
            assert pusher.drain() == 1
            pusher.close()
            assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-1")] == [
                (1, "r-1"),
                (2, "r-2"),
            ]
            assert count(data, "SELECT count(*) FROM sync_set_aside") == 0
        finally:
            link.close()
            agent.close()
    finally:
        hub.stop()


def test_reset_force_discards_the_unsent_transactions_and_says_how_many(cli: CLI) -> None:
    cli("snapshot", "load", snapshot())
    assert cli("checkout", plain_receipt()).code == 0
    refused = cli("reset", "--yes")
    assert refused.code == 2 and "add --force to discard them" in refused.err
    done = cli("reset", "--yes", "--force")
    assert done.code == 0 and "1 unsent transaction(s) discarded" in done.out
    assert cli("status", "--json").json()["outboxDepth"] == 0
    cli("snapshot", "load", snapshot())
    assert cli("checkout", plain_receipt("r2")).code == 0
    assert cli("status", "--json").json()["lastSeq"] == 2


def test_reset_keeps_the_numbering_above_the_journal(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    agent.checkout(receipt_from_json(plain_receipt()))
    assert agent.reset(force=True).discarded == 1
    agent.load_snapshot(snapshot())
    assert agent.checkout(receipt_from_json(plain_receipt("r2"))).receipt_id == "r2"
    conn = sqlite3.connect(tmp_path / "ledger.db")
    assert conn.execute("SELECT seq FROM journal").fetchall() == [(2,)]
    conn.close()
    agent.close()


def test_a_transaction_the_hub_sets_aside_fails_sync_now_status_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import grpc
    from tillpoint.agent.metrics import Registry
    from tillpoint.agent.server import build_server, register_gauges
    from tillpoint.sync.hub_store import TxIn
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till"
    till = hub.till("till-1", data, start=False)
    till.stop()
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    try:
        assert run(capsys, "sync", "now", "--data-dir", str(data))[0] == 0
        # then the hub gets till-1's receipt r-1 with another request (after the till
        # learnt the hub's mark, say a restored old disk's sale). A seq the hub holds with
        # another transaction is numbered again since review 32 (test_review32_hub32.py):
        # the receipt id decides
        now = datetime.now(UTC)
        old = TxIn(
            "till-1",
            5,
            "CHECKOUT",
            now.isoformat(),
            "c-2",
            "",
            '{"receiptId": "r-1"}',
            "{}",
            1,
            0,
            "",
        )
        hub.store.ingest("till-1", "", [old], now)
        agent = Agent(data, "till-1")
        agent.checkout(receipt_from_json(receipt("r-1", CARD)))
        agent.close()

        code, out, err = run(capsys, "sync", "now", "--data-dir", str(data))
        assert code == 1
        assert "pushed 0 transaction(s), 1 SET ASIDE by the hub" in out
        assert err.startswith("tillpoint: the hub set aside 1 transaction(s) and did not store")
        assert "seq 1 CONFLICT" in err and len(err.strip().splitlines()) == 1
        code, doc, _ = run(capsys, "sync", "now", "--data-dir", str(data), "--json")
        assert doc["setAside"] == 0 and doc["setAsideTransactions"] == 1
        assert code == 0  # nothing new was set aside: a warning only

        code, doc, _ = run(capsys, "status", "--data-dir", str(data), "--json")
        assert doc["setAside"] == 1 and doc["syncError"].startswith("1 transaction(s) set aside")
        # the hub's operator sees it too
        hub_dir = ["--hub-dir", str(tmp_path / "hub")]
        code, doc, _ = run(capsys, "hub", "set-aside", *hub_dir, "--json")
        assert code == 0 and [(r["deviceId"], r["seq"], r["outcome"]) for r in doc["setAside"]] == [
            ("till-1", 1, "CONFLICT")
        ]
        code, out, _ = run(capsys, "hub", "set-aside", *hub_dir, "--device", "till-1")
        assert code == 0 and out.startswith("till-1 seq 1: CONFLICT receipt r-1 is already")

        agent = Agent(data, "till-1", status_sources=(sync_status,))  # as agent/app.py wires it
        server, port, _ = build_server(agent, "127.0.0.1:0")
        server.start()
        registry = Registry()
        register_gauges(registry, agent)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                status = pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=5)
            assert status.set_aside == 1 and "seq 1 CONFLICT" in status.sync_error
            assert "tillpoint_sync_set_aside 1" in registry.render()
        finally:
            server.stop(grace=0)
            agent.close()
    finally:
        hub.stop()


def test_reset_asks_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("tillpoint"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = "till-1"
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    agent.close()

    def answer(text: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [exe, "--data-dir", str(tmp_path), "reset"],
                stdin=slave,
                stderr=slave,
                stdout=subprocess.PIPE,
                env=env,
            )
            os.write(master, text.encode())
            out, _ = proc.communicate(timeout=60)
            return proc.returncode, out.decode()
        finally:
            os.close(slave)
            os.close(master)

    def version() -> int:
        agent = Agent(tmp_path, "till-1")
        try:
            return int(agent.status().cache_version)
        finally:
            agent.close()

    assert answer("n\n") == (2, "") and version() == 1
    code, out = answer("y\n")
    assert code == 0 and "numbering continues" in out and version() == 0


def test_a_reimaged_till_numbers_above_what_the_hub_stored_before_it_republished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract §9: a seq is never reused. A till re-imaged (a new data directory, the
    same device) before the hub published its last sales again gets a snapshot whose
    appliedThrough is behind; its next sales used to take seq 1, 2 … again, which the hub
    set aside as conflicts (the sales never reached its ledger). `sync now` now learns
    the hub's mark first, and numbering continues above it."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())  # version 1, published
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-c")
    try:
        old = tmp_path / "old"
        hub.enroll("till-c", old)
        assert run(capsys, "sync", "now", "--data-dir", str(old), "--json")[0] == 0
        agent = Agent(old, "till-c")
        for n in range(3):
            agent.checkout(receipt_from_json(receipt(f"old-{n}", CARD)))
        agent.close()
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(old), "--json")
        assert (code, doc["pushed"]) == (0, 3), err

        new = tmp_path / "new"  # re-imaged: nothing of the old one
        hub.enroll("till-c", new)
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(new), "--json")
        assert code == 0, err
        assert doc["pull"]["version"] == 1  # its appliedThrough knows nothing of till-c
        agent = Agent(new, "till-c")
        sold = agent.checkout(receipt_from_json(receipt("new-1", CARD)))
        agent.close()
        assert count(new, "SELECT max(seq) FROM journal") == 4
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(new), "--json")
        assert (code, doc["pushed"], doc["outboxDepth"]) == (0, 1, 0), err
        stored = [(e.seq, e.ref_id) for e in hub.store.ledger("till-c")]
        assert stored == [(1, "old-0"), (2, "old-1"), (3, "old-2"), (4, "new-1")]
        assert sold.receipt_id == "new-1"
    finally:
        hub.stop()


def test_a_set_aside_transaction_does_not_stop_the_devices_progress(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    """A transaction the hub sets aside (REJECTED, CONFLICT) is never stored. Its seq used
    to be a hole for good: the device's contiguous mark stopped below it, and with it
    appliedThrough, so no later sale of the device was ever counted in a snapshot (other
    tills never saw those points). The hub's decision fills the seq."""
    from dataclasses import replace

    from tillpoint.sync.loopback import import_doc

    from .test_coupons import NOW, outbox

    hub = hub_store_factory()
    import_doc(hub, sample_master_data())
    hub.publish(NOW, 7 * 86400.0)
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(hub.snapshot_doc(1, 0))
        for n in range(3):
            agent.checkout(receipt_from_json(receipt(f"r{n}", CARD)))
    finally:
        agent.close()
    txs = outbox(tmp_path / "till")
    txs[1] = replace(txs[1], kind="BOGUS")  # the hub refuses it
    result = hub.ingest("till-1", "", txs, NOW)
    assert [r.outcome for r in result.results] == ["STORED", "REJECTED", "STORED"]
    assert result.acked_through == 3
    hub.publish(NOW.replace(hour=7), 7 * 86400.0)
    assert hub.snapshot_doc(2, 1)["appliedThrough"] == {"till-1": 3}


def test_a_receipt_sent_again_after_the_till_lost_its_ledger_is_counted_once(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    """After a reset (or a re-imaged disk) the till no longer knows a receipt it sold; the
    POS's retry books it again under a new seq, which the (deviceId, seq) dedupe cannot
    see: the hub counted the sale twice. Now the same request under a known receiptId of
    the device is a DUPLICATE (not counted again), another request a CONFLICT."""
    from tillpoint.sync.loopback import import_doc

    from .test_coupons import NOW, outbox

    hub = hub_store_factory()
    import_doc(hub, sample_master_data())
    hub.publish(NOW, 7 * 86400.0)
    agent = Agent(tmp_path / "till", "till-1")
    sent = []
    try:
        for body in (
            receipt("r1", CARD, redeem=50),
            receipt("r1", CARD, redeem=50),  # the POS's retry, after the reset
            receipt("r1", CARD, redeem=0),  # the same id, another sale
        ):
            agent.load_snapshot(hub.snapshot_doc(1, 0))
            agent.checkout(receipt_from_json({**body, "at": "2026-11-23T10:15:00+03:00"}))
            sent += outbox(tmp_path / "till")
            agent.reset(force=True)
    finally:
        agent.close()
    assert [t.seq for t in sent] == [1, 2, 3]
    result = hub.ingest("till-1", "", sent, NOW)
    assert [r.outcome for r in result.results] == ["STORED", "DUPLICATE", "CONFLICT"]
    assert "receipt r1 is already stored as seq 1 of till-1" in result.results[1].reason
    assert result.acked_through == 3  # decided, so later sales are not held back
    assert [e.seq for e in hub.ledger("till-1")] == [1]
    listed = [(r["seq"], r["outcome"]) for r in hub.set_aside_transactions("till-1")]
    assert listed == [(2, "DUPLICATE"), (3, "CONFLICT")]  # `hub set-aside` shows them
    assert hub.set_aside_transactions("other") == []
    balance = hub.balance("c-1", NOW)  # 50 redeemed and 9 earned (pending), once
    assert (balance.available, balance.pending) == (1150, 9)


def test_a_reimaged_till_under_run_learns_the_hubs_mark_before_its_first_sale(
    tmp_path: Path,
) -> None:
    """The same under `tillpoint run`'s sync loop: a POS retrying its first sale until the
    re-imaged till has a snapshot gets a number above what the hub stored (and so does
    the first till-issued coupon). The loop pulled first and learnt the mark in its push
    step after it: a sale in between took seq 1, which the hub set aside (§9)."""
    from tillpoint.sync.loopback import FAST, wait_for
    from tillpoint.sync.service import SyncService

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        old = hub.till("till-c", tmp_path / "old", start=False)
        Puller(old.agent, old.link, old.link.enrollment, call_timeout_s=2).pull()
        for n in range(3):
            old.agent.checkout(receipt_from_json(receipt(f"old-{n}", CARD)))
        assert Pusher(old.data_dir, "till-c", old.link, call_timeout_s=2).drain() == 3
        old.stop()

        new = hub.till("till-c", tmp_path / "new", start=False)  # re-imaged
        service = SyncService(new.agent, new.link, new.link.enrollment, FAST)
        marks_at_pull: list[bool] = []
        pull = service.puller.pull

        def recorded_pull() -> Any:
            marks_at_pull.append(service.pusher.mark_known)
            return pull()

        service.puller.pull = recorded_pull  # type: ignore[method-assign]
        new.service = service
        service.start()
        try:
            sale = receipt_from_json(receipt("new-1", CARD))

            def sold() -> Any:  # the POS's retry: "no snapshot loaded" until there is one
                try:
                    return new.agent.checkout(sale)
                except TillpointError:
                    return None

            done = wait_for(sold, every=0.001)
            assert done.seq == 4 and marks_at_pull[0] is True
            kept = "SELECT value FROM device WHERE key = 'last_coupon:till-c'"
            assert count(new.data_dir, kept) == 3  # its next coupon number is 4
            wait_for(lambda: [e.seq for e in hub.store.ledger("till-c")] == [1, 2, 3, 4])
            assert hub.store.set_aside_transactions("till-c") == []
        finally:
            new.stop()
    finally:
        hub.stop()


def cache_version_of(data_dir: Path) -> int:
    from tillpoint.sync.pull import cache_version

    return cache_version(data_dir)
