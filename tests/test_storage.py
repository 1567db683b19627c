"""The SQLite files: pragmas, migrations, one-transaction commits, atomic snapshots, seq."""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.db import open_cache
from tillpoint.agent.errors import SnapshotRefused, StorageError, TillpointError
from tillpoint.agent.ledger import open_ledger
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot


def test_pragmas_and_idempotent_migrations(tmp_path: Path) -> None:
    for opener in (open_ledger, open_cache):
        conn = opener(tmp_path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        applied = conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0]
        conn.close()
        again = opener(tmp_path)
        assert again.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == applied
        again.close()


def test_receipt_journal_and_outbox_are_one_transaction(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    # Make the last write of a checkout (the outbox row) fail: nothing else may stay.
    agent._ledger.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(StorageError, match="disk on fire"):
        agent.checkout(receipt_from_json(receipt()))
    for table in ("receipts", "receipt_lines", "journal", "points", "outbox", "print_history"):
        assert agent._ledger.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
    agent._ledger.execute("DROP TRIGGER boom")
    assert agent.checkout(receipt_from_json(receipt())).receipt_id == "r1"
    assert agent.status().last_seq == 1  # the failed attempt gave its number back
    agent.close()


def test_sequence_continues_above_applied_through(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot(appliedThrough={"till-1": 41, "till-2": 7}))
    agent.checkout(receipt_from_json(receipt("r1")))
    seqs = [r[0] for r in agent._ledger.execute("SELECT seq FROM journal")]
    assert seqs == [42]
    agent.checkout(receipt_from_json(receipt("r2")))
    assert agent.status().last_seq == 43
    agent.close()


def test_checkout_keeps_working_while_a_snapshot_is_being_applied(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    writer = open_cache(tmp_path)
    writer.execute("BEGIN IMMEDIATE")  # a snapshot apply half-way through
    writer.execute("DELETE FROM customers")
    writer.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    result = agent.checkout(receipt_from_json(receipt()))  # sees the old, whole snapshot
    assert result.card.status == "FOUND"
    assert agent.status().cache_version == 1
    writer.execute("ROLLBACK")
    writer.close()
    agent.close()


def test_snapshot_rules(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    before = cache_mod.dump(agent._cache)
    with pytest.raises(SnapshotRefused):  # not newer: another snapshot under version 1
        agent.load_snapshot(snapshot(version=1, issuedAt="2026-11-23T07:00:00Z"))
    assert agent.load_snapshot(snapshot(version=1)).unchanged  # the same one: nothing done
    with pytest.raises(SnapshotRefused):
        agent.load_snapshot({"version": 5, "baseVersion": 3})  # wrong base
    with pytest.raises(TillpointError):
        agent.load_snapshot({"version": 5, "baseVersion": 1, "offers": [{"id": "x"}]})
    assert cache_mod.dump(agent._cache) == before

    agent.load_snapshot(
        {
            "version": 2,
            "baseVersion": 1,
            "products": [
                {
                    "sku": "4601234000017",
                    "name": "Молоко",
                    "category": "tobacco",
                    "excludedFromLoyalty": True,
                }
            ],
            "removed": {"cards": ["2770000000024"]},
            "program": {"pointValueMinor": 50},
        }
    )
    assert agent.identify("2770000000024").to_json() == {"status": "UNKNOWN"}
    result = agent.quote(receipt_from_json(receipt()))
    assert result.earned_points == 0  # the product is now excluded
    program = cache_mod.CacheView(agent._cache).program()
    assert program.point_value_minor == 50 and program.max_redeem_percent == 30  # defaults
    agent.load_snapshot(snapshot(version=3, customers=[], cards=[]))  # full: replaces all
    assert agent.identify("2770000000017").to_json() == {"status": "UNKNOWN"}
    agent.close()


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open"):
        Agent(blocker / "data", "till-1")


def test_the_checkpointer_moves_the_ledger_wal_off_the_sale_path(tmp_path: Path) -> None:
    """With SQLite's inline checkpoint off, the database file only grows when the
    Checkpointer's thread copies the WAL into it; a commit never does that itself."""
    import time

    from tillpoint.agent.db import Checkpointer, connect

    path = tmp_path / "ledger.db"
    conn = connect(path)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (x TEXT)")

    def write(n: int) -> None:
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
            conn.execute("COMMIT")

    write(300)  # well past the 1000-page default, nothing moved inline
    before = path.stat().st_size
    assert before < 100_000 and (tmp_path / "ledger.db-wal").stat().st_size > 1_000_000
    checkpoints = Checkpointer(path, every_commits=10, every_s=0.05)
    try:
        for _ in range(10):
            write(1)
            checkpoints.committed()
        deadline = time.monotonic() + 30  # an fsync behind gigabytes of writeback took 10 s
        while path.stat().st_size <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_size > 1_000_000
    finally:
        checkpoints.close()
        conn.close()
    import threading

    assert not any(t.name == "ledger-checkpoint" for t in threading.enumerate())
