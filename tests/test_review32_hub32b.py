"""Review 32 (hub32b): what an operator sees of a sale the till numbered again
(docs/CONTRACT.md §9, §10, §11; docs/HUB.md). hub32 made a till number again a sale or
refund whose seq the hub holds with another transaction (`seqTaken`: two tills cloned
under one device id, a wiped till). Here: the till's status says so at every door (CLI
text and --json, gRPC Status, HTTP /v1/status, /metrics), the hub's set-aside entry of
such a seq reads resolved once the sale is stored under its new seq (and stays listed:
two tills may share an id), and the hub shows the fiscal document it stores with a
receipt (`hub receipts`, ListTransactions). Real parts: `tillpoint run` and the CLI as
processes, the hub's gRPC server on 127.0.0.1 over mTLS, its store on SQLite and on
PostgreSQL (a throwaway cluster).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, receipt, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from bench.pgfaults import clean_env
from tests.conftest import enrolled_till, free_port
from tests.test_review32_hub32 import both_hub, ledger_rows, outbox, push_all  # noqa: F401

EXE = str(Path(sys.executable).with_name("tillpoint"))
CARD = "2770000000017"  # c-1's card in the sample data
FISCAL = "ФД 0004 №17"


def hub_cli(hub: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`tillpoint hub ARGS` as a process over `hub`'s directory (and store)."""
    store = ["--store", hub.dir.store_url] if hub.dir.store_url else []
    return subprocess.run(
        [EXE, "hub", *args, "--hub-dir", str(hub.root), *store],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


def till_config(work: Path, device: str, address: str, ports: dict[str, int]) -> Path:
    """A till's configuration with the shipped sync settings and its three doors."""
    path = work / f"{device}.toml"
    path.write_text(
        f'device_id = "{device}"\n'
        f'data_dir = "{work / device}"\n'
        f'[hub]\naddress = "{address}"\n'
        f'[server]\nlisten = "127.0.0.1:{ports["grpc"]}"\n'
        f'[http]\nlisten = "127.0.0.1:{ports["http"]}"\n'
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{ports["metrics"]}"\n',
        encoding="utf-8",
    )
    return path


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return str(answer.read().decode("utf-8"))


def wipe_and_sell_again(hub: Any, work: Path) -> Path:
    """Till W pushed w-1..w-3 (seqs 1-3); its disk is wiped, it is enrolled again under
    the same id, and sells w-4 (a hold confirmed with a fiscal document) and w-5 from the
    hub's first snapshot, loaded from a file, before it reaches the hub: seqs 1 and 2
    again. Returns its data directory (its outbox holds the two)."""
    data_dir = work / "till-w"
    till = enrolled_till(hub, data_dir, "till-w")
    for i in (1, 2, 3):
        till.agent.checkout(receipt_from_json(receipt(f"w-{i}", CARD)))
    assert push_all(till) == 3
    till.stop()
    shutil.rmtree(data_dir)

    hub.enroll("till-w", data_dir)  # `hub enroll till-w --renew`, `sync install`
    agent = Agent(data_dir, "till-w")
    try:
        agent.load_snapshot(hub.store.snapshot_doc(1, 0))
        agent.hold(receipt_from_json(receipt("w-4", CARD)))
        agent.confirm("w-4", FISCAL)
        agent.checkout(receipt_from_json(receipt("w-5", CARD)))
    finally:
        agent.close()
    assert [r[0] for r in ledger_rows(data_dir, "SELECT seq FROM journal ORDER BY seq")] == [1, 2]
    return data_dir


# ---------------------------------------------------------------- 1, 2, 3 end to end


def test_a_wiped_till_running_says_what_it_numbered_again_at_every_door_and_the_hub_reads_it(
    both_hub: Any,  # noqa: F811
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """CONTRACT §9, §10, §11. The wiped till of hub32 starts `tillpoint run`: its sync
    numbers w-4 and w-5 again (seq 1 → 4, 2 → 5) and the hub stores them. A support
    engineer asks the till: status says 2 transactions numbered again and the last one
    (seq 2 → 5, receipt w-5, when), the same over the CLI (text and --json), gRPC Status,
    HTTP /v1/status and /metrics (it said nothing: a log line was all there was). The hub
    keeps its two set-aside entries (the sign that the id was reused) but each reads
    resolved, stored as seq 4 or 5 (they read as needing review for ever); and
    `hub receipts` and ListTransactions (`sync receipts`) show w-4's fiscal document."""
    hub = both_hub
    wipe_and_sell_again(hub, tmp_path)
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    config = till_config(tmp_path, "till-w", hub.address, ports)
    with open(tmp_path / "till-w.log", "ab") as log:
        procs.append(
            subprocess.Popen(
                [EXE, "--config", str(config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        )

    def drained() -> dict[str, Any] | None:
        try:
            doc = json.loads(http_get(ports["http"], "/v1/status"))
        except OSError:
            return None
        if doc.get("outboxDepth") == 0 and doc.get("hubAckedThroughSeq") == 5:
            return dict(doc)
        return None

    status = wait_for(drained, 90, every=0.2)
    assert sorted(e.ref_id for e in hub.store.ledger("till-w")) == [f"w-{i}" for i in range(1, 6)]
    assert status["renumberedTransactions"] == 2, status
    last = status["lastRenumbered"]
    assert {k: last[k] for k in ("oldSeq", "newSeq", "receiptId", "refundId")} == {
        "oldSeq": 2,
        "newSeq": 5,
        "receiptId": "w-5",
        "refundId": "",
    }
    when = datetime.fromisoformat(last["at"])
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)
    assert status["setAside"] == 0 and status["syncError"] == ""  # not an error: sent

    with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        answer = pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
    assert answer.renumbered_transactions == 2
    assert (answer.last_renumbered.old_seq, answer.last_renumbered.new_seq) == (2, 5)
    assert answer.last_renumbered.receipt_id == "w-5"
    assert answer.last_renumbered.at == last["at"]

    metrics = http_get(ports["metrics"], "/metrics").splitlines()
    assert "tillpoint_sync_renumbered 2.0" in metrics or "tillpoint_sync_renumbered 2" in metrics

    env = clean_env()
    said = subprocess.run(
        [EXE, "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    doc = json.loads(said.stdout)
    assert (doc["renumberedTransactions"], doc["lastRenumbered"]) == (2, last)
    text = subprocess.run(
        [EXE, "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    assert "renumberedTransactions: 2\n" in text
    assert "lastRenumbered: seq 2 → 5 (receipt w-5) at " in text, text

    # the hub: the entries stay, resolved
    aside = json.loads(hub_cli(hub, "set-aside", "--json").stdout)["setAside"]
    assert [(r["seq"], r["seqTaken"], r["resolved"], r["storedAsSeq"]) for r in aside] == [
        (1, True, True, 4),
        (2, True, True, 5),
    ]
    assert all(r["resolvedAt"] for r in aside)
    lines = hub_cli(hub, "set-aside").stdout.splitlines()
    assert len(lines) == 2 and "two tills may be running as till-w" in lines[0]
    assert " — resolved: numbered again by the till, stored as seq 4 (" in lines[0], lines
    state = hub_cli(hub, "status", "--json")
    assert state.returncode == 0, state.stderr
    counts = json.loads(state.stdout)
    assert (counts["setAside"], counts["setAsideResolved"]) == (2, 2)
    assert "2 set-aside transaction(s), 2 of them resolved" in hub_cli(hub, "status").stdout

    # the fiscal document the hub stores with w-4, where an operator looks for a receipt
    listed = json.loads(hub_cli(hub, "receipts", "--device", "till-w", "--json").stdout)
    fiscal = {t["receiptId"]: t["fiscalDocument"] for t in listed["transactions"]}
    assert fiscal == {"w-1": "", "w-2": "", "w-3": "", "w-4": FISCAL, "w-5": ""}
    one = hub_cli(hub, "receipts", "--device", "till-w", "--receipt", "w-4").stdout
    assert f"fiscal document {FISCAL}" in one.splitlines()[0], one
    asked = subprocess.run(  # ListTransactions over the till's mTLS link
        [EXE, "--config", str(config), "sync", "receipts", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    fiscal = {t["receiptId"]: t["fiscalDocument"] for t in json.loads(asked.stdout)["transactions"]}
    assert fiscal["w-4"] == FISCAL


# ---------------------------------------------------------------- 2. the hub's rules


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty hub store (the program defaults), SQLite or PostgreSQL."""
    if request.param == "sqlite":
        from tillpoint.sync.hub_sqlite import SqliteHubStore

        made: Any = SqliteHubStore(tmp_path / "hub.db")
    else:
        from tillpoint.sync.hub_postgres import PostgresHubStore

        url = request.getfixturevalue("pg_cluster").new_database()
        made = PostgresHubStore(url, migrate_schema=True)
    import_doc(made, sample_master_data())
    yield made
    made.close()


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def sale(seq: int, receipt_id: str, qty: int = 1, kind: str = "CHECKOUT") -> TxIn:
    request: dict[str, Any] = {"receiptId": receipt_id, "qty": qty}
    if kind == "REFUND":
        request = {"receiptId": "r-0", "refundId": receipt_id}
    return TxIn(
        "till-x",
        seq,
        kind,
        NOW.isoformat(),
        "c-1",
        "",
        json.dumps(request),
        json.dumps({"seq": seq}),
        1,
        0,
        "",
    )


def test_a_seq_taken_entry_reads_resolved_once_its_sale_is_stored_or_found_stored(
    store: Any,
) -> None:
    """CONTRACT §9 (review 32's decision). The hub holds seqs 1-3 of till-x. The clone's
    r-a, r-b, r-c and its refund f-1 arrive under seqs 1-4 taken or not: 1-3 are set
    aside `seqTaken`. Its till sends r-a again as seq 5 (stored: resolved as 5), r-b as 6
    (the hub had it as seq 2 already, the same request: resolved as 2), r-c as 7 with
    another request than the stored one's (CONFLICT by id: it stays to be reviewed, and
    so does its first entry). Another device's sale with r-a's id resolves nothing."""
    store.ingest("till-x", "", [sale(1, "r-0"), sale(2, "r-b"), sale(3, "r-c", qty=2)], NOW)
    taken = store.ingest("till-x", "", [sale(1, "r-a"), sale(2, "r-x"), sale(3, "r-c")], NOW)
    assert [(r.outcome, r.seq_taken) for r in taken.results] == [("CONFLICT", True)] * 3
    rows = store.set_aside_transactions("till-x")
    assert [(r["seq"], r["seqTaken"], r["resolved"], r["storedAsSeq"]) for r in rows] == [
        (1, True, False, None),
        (2, True, False, None),
        (3, True, False, None),
    ]

    other = TxIn(**{**sale(1, "r-a").__dict__, "device_id": "till-y"})
    assert store.ingest("till-y", "", [other], NOW).results[0].outcome == "STORED"
    assert not any(r["resolved"] for r in store.set_aside_transactions("till-x"))

    again = store.ingest("till-x", "", [sale(5, "r-a"), sale(6, "r-x"), sale(7, "r-c")], NOW)
    assert [r.outcome for r in again.results] == ["STORED", "STORED", "CONFLICT"]
    # r-x: its entry was seq 2's; stored now as 6
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert (rows[1]["resolved"], rows[1]["storedAsSeq"]) == (True, 5)
    assert (rows[2]["resolved"], rows[2]["storedAsSeq"]) == (True, 6)
    assert rows[1]["resolvedAt"] == rows[2]["resolvedAt"] != ""
    assert (rows[3]["resolved"], rows[3]["storedAsSeq"]) == (False, None)  # r-c: a person
    assert (rows[7]["seqTaken"], rows[7]["resolved"]) == (False, False)
    assert [r["resolved"] for r in store.set_aside_transactions("till-y")] == []

    # r-d sent again under a free seq (4): a DUPLICATE of seq 8 by its id, not seq_taken
    store.ingest("till-x", "", [sale(8, "r-d")], NOW)
    store.ingest("till-x", "", [sale(4, "r-d")], NOW)
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert rows[4]["outcome"] == "DUPLICATE" and not rows[4]["seqTaken"]
    store.ingest("till-x", "", [sale(9, "r-e")], NOW)
    assert store.ingest("till-x", "", [sale(9, "r-f")], NOW).results[0].seq_taken
    store.ingest("till-x", "", [sale(10, "r-f")], NOW)  # stored as 10
    store.ingest("till-x", "", [sale(11, "r-f")], NOW)  # sent again once more: DUPLICATE
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert (rows[9]["resolved"], rows[9]["storedAsSeq"]) == (True, 10)
    assert (rows[11]["outcome"], rows[11]["seqTaken"]) == ("DUPLICATE", False)


def test_a_renumbered_sale_found_stored_already_resolves_its_entry_with_that_seq(
    store: Any,
) -> None:
    """CONTRACT §9: a till restored from a backup sends r-1 (stored at the hub as seq 5)
    under seq 2, which another sale holds: set aside `seqTaken`. Numbered again as 7, it
    is the same request as seq 5's: DUPLICATE, and seq 2's entry reads resolved, stored
    as seq 5."""
    store.ingest("till-x", "", [sale(1, "r-0"), sale(2, "r-2"), sale(5, "r-1")], NOW)
    assert store.ingest("till-x", "", [sale(2, "r-1")], NOW).results[0].seq_taken
    answer = store.ingest("till-x", "", [sale(7, "r-1")], NOW).results[0]
    assert answer.outcome == "DUPLICATE"
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert (rows[2]["resolved"], rows[2]["storedAsSeq"]) == (True, 5)
    assert (rows[7]["outcome"], rows[7]["resolved"]) == ("DUPLICATE", False)


def test_a_refund_numbered_again_resolves_by_its_refund_id(store: Any) -> None:
    """CONTRACT §9: a refund is matched by its refundId, not the receipt it refunds."""
    store.ingest("till-x", "", [sale(1, "r-0"), sale(2, "r-9")], NOW)
    assert store.ingest("till-x", "", [sale(2, "f-1", kind="REFUND")], NOW).results[0].seq_taken
    store.ingest("till-x", "", [sale(3, "f-2", kind="REFUND")], NOW)  # another refund
    assert not store.set_aside_transactions("till-x")[0]["resolved"]
    store.ingest("till-x", "", [sale(4, "f-1", kind="REFUND")], NOW)
    row = store.set_aside_transactions("till-x")[0]
    assert (row["seq"], row["resolved"], row["storedAsSeq"]) == (2, True, 4)


# ---------------------------------------------------------------- 1. the till's ledger


def test_a_till_counts_what_it_numbered_again_across_pushes_and_restarts(
    both_hub: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """CONTRACT §10: the count of transactions numbered again is kept in the ledger (a
    restart does not zero it) and grows with each push that numbers one again; a till
    that never did says 0 and no last one (null in JSON, unset over gRPC)."""
    from tillpoint.agent.app import till_agent
    from tillpoint.agent.wire import status_json, status_message

    hub = both_hub
    fresh = enrolled_till(hub, tmp_path / "fresh", "till-f")
    try:
        doc = status_json(fresh.agent.status())
        assert (doc["renumberedTransactions"], doc["lastRenumbered"]) == (0, None)
        assert not status_message(fresh.agent.status()).HasField("last_renumbered")
    finally:
        fresh.stop()

    data_dir = wipe_and_sell_again(hub, tmp_path)
    till = hub.till("till-w", data_dir, start=False)
    try:
        push_all(till)
        push_all(till)
        assert outbox(data_dir) == 0
        first = status_json(till.agent.status())
        assert first["renumberedTransactions"] == 2
    finally:
        till.stop()
    agent = till_agent(data_dir, "till-w")  # a restart (as `run` builds it): the ledger's
    try:
        again = status_json(agent.status())
        assert (again["renumberedTransactions"], again["lastRenumbered"]) == (
            2,
            first["lastRenumbered"],
        )
    finally:
        agent.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_an_entry_set_aside_before_the_upgrade_is_known_as_a_seq_taken_and_resolves(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/HUB.md, Migrations: a hub that set seq 2 aside as taken before this release
    (its reason says so; no column did) is migrated: the entry is a seq taken, open, and
    reads resolved once the till's sale numbered again is stored."""
    import sqlite3

    if kind == "sqlite":
        from tillpoint.sync.hub_sqlite import SqliteHubStore

        path = tmp_path / "hub.db"
        old: Any = SqliteHubStore(path)
        import_doc(old, sample_master_data())
        old.close()
        with sqlite3.connect(path) as conn:  # the schema before m006, as it was
            conn.execute("DROP INDEX set_aside_open_taken")
            for column in ("seq_taken", "stored_seq", "resolved_at"):
                conn.execute(f"ALTER TABLE set_aside DROP COLUMN {column}")
            conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_set_aside_resolved'")
            conn.execute(
                "INSERT INTO set_aside (device_id, seq, outcome, reason, content_sha256,"
                " payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                old_entry(),
            )
        conn.close()
        store: Any = SqliteHubStore(path)
    else:
        import psycopg
        from tillpoint.sync import hub_postgres

        url = request.getfixturevalue("pg_cluster").new_database()
        with monkeypatch.context() as m:
            before = [step for step in hub_postgres.MIGRATIONS if step[0] < 10]
            m.setattr(hub_postgres, "MIGRATIONS", before)
            m.setattr(hub_postgres, "SCHEMA_VERSION", before[-1][0])
            old = hub_postgres.PostgresHubStore(url, migrate_schema=True)
            import_doc(old, sample_master_data())
            old.close()
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(
                "INSERT INTO set_aside (device_id, seq, outcome, reason, content_sha256,"
                " payload, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                old_entry(),
            )
        store = hub_postgres.PostgresHubStore(url, migrate_schema=True)
    try:
        row = store.set_aside_transactions("till-x")[0]
        assert (row["seq"], row["seqTaken"], row["resolved"]) == (2, True, False)
        # what the hub held (seq 2: r-1), then the sale numbered again
        store.ingest("till-x", "", [sale(1, "r-0"), sale(2, "r-1"), sale(3, "r-9")], NOW)
        row = store.set_aside_transactions("till-x")[0]
        assert (row["resolved"], row["storedAsSeq"]) == (True, 3)
    finally:
        store.close()


def old_entry() -> tuple[Any, ...]:
    """Seq 2 of till-x set aside as taken by the release before (hub32's reason)."""
    t = sale(2, "r-9")
    reason = (
        "seq 2 of till-x is already stored with other content: two tills may be running as"
        " till-x (one enrolment bundle installed on both, a cloned disk), or its ledger was"
        " restored from an old backup"
    )
    payload = json.dumps(t.__dict__, ensure_ascii=False)
    return ("till-x", 2, "CONFLICT", reason, t.content(), payload, NOW.isoformat())
