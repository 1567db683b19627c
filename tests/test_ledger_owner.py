"""ledger.db has one owner: one schema module, one opener, and old ledgers upgrade in place."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import REPO, receipt

# Dumped from a ledger written by the code before the ledger had one owner (commit
# 637409d): a checkout, an open hold, a sync_state row, the print worker's schema.
OLD_LEDGER = Path(__file__).parent / "data" / "ledger-before-arch12.sql"
CREATE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?(\w+)", re.IGNORECASE)


def _ledger_tables(tmp_path: Path) -> set[str]:
    conn = ledger.open_ledger(tmp_path)
    try:
        names = {
            str(n) for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    finally:
        conn.close()
    return names - {"sqlite_sequence", "_sqlite_migrations"}


def test_every_ledger_table_is_created_in_agent_ledger_only(tmp_path: Path) -> None:
    tables = _ledger_tables(tmp_path)
    assert {"receipts", "outbox", "print_jobs", "sync_state", "sync_set_aside"} <= tables
    where: dict[str, set[str]] = {}
    for folder in ("agent", "sync", "printer"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name.startswith("hub_"):  # the hub's own database, not a till's ledger
                continue
            for name in CREATE.findall(path.read_text(encoding="utf-8")):
                where.setdefault(name, set()).add(path.relative_to(REPO).as_posix())
    for table in tables:
        assert where.get(table) == {"agent/ledger.py"}, (table, where.get(table))


def test_one_opener() -> None:
    """No other module defines an `open_ledger` (two once behaved differently)."""
    defined = [
        path.relative_to(REPO).as_posix()
        for folder in ("agent", "sync", "printer")
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"^def open_ledger\(", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert defined == ["agent/ledger.py"]


def test_a_ledger_written_by_the_old_code_upgrades_in_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "ledger.db")
    old.executescript(OLD_LEDGER.read_text(encoding="utf-8"))
    old.close()
    before = {"tillpoint.ledger", "tillpoint.sync"}
    conn = ledger.open_ledger(data)
    try:
        applied = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        assert {s for s, _ in applied} == before
        # Nothing re-ran: each migration recorded once, under its old name (m008-m016 new,
        # and the sync set's m002-m004).
        assert len(applied) == len(set(applied)) == 20
        # the commit's appended tables are clustered on their keys, their rows kept
        for table in ("receipt_lines", "journal", "outbox"):
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,))
            assert sql.fetchone()[0].endswith("WITHOUT ROWID")
        assert conn.execute("SELECT * FROM receipt_lines").fetchall() == [
            ("r1", 0, "4601234000017", "2", 0, 67, "0")
        ]
        assert conn.execute("SELECT value FROM sync_state WHERE key = 'last_pull_at'").fetchone()
        assert conn.execute(
            "SELECT state FROM receipt_life WHERE receipt_id = 'r2'"
        ).fetchone() == ("HELD",)
    finally:
        conn.close()
    # The cache is not part of the ledger: a new one, then the sale goes on from seq 2.
    from .conftest import snapshot

    clock = datetime.fromisoformat("2026-11-23T10:25:00+03:00")
    agent = Agent(data, "till-1", clock=lambda: clock)
    try:
        agent.load_snapshot(snapshot())
        done = agent.confirm("r2")
        assert done.state == "CONFIRMED"
        assert agent.checkout(receipt_from_json(receipt("r3"))).state == "CONFIRMED"
        seqs = [s for (s,) in agent._ledger.execute("SELECT seq FROM journal ORDER BY seq")]
        assert seqs == [1, 2, 3]
        # The old outbox row goes whole, as written; the new ones refer to their receipt's
        # texts (stored once) and go with them put back.
        texts = agent._ledger.execute("SELECT seq, texts FROM outbox ORDER BY seq").fetchall()
        assert texts == [(1, None), (2, "receipt"), (3, "receipt")]
        sent = [json.loads(r.payload) for r in ledger.outbox_batch(agent._ledger, "till-1", 10)]
        stored = agent._ledger.execute(
            "SELECT r.request, r.result FROM receipts r JOIN journal j ON j.ref_id = r.receipt_id"
            " ORDER BY j.seq"
        ).fetchall()
        assert [(p["requestJson"], p["resultJson"]) for p in sent] == stored
        assert [p["seq"] for p in sent] == [1, 2, 3]
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("which", "migration_set"),
    [
        ("ledger", "tillpoint.ledger"),
        ("ledger", "tillpoint.sync"),
        ("ledger", "tillpoint.outbox2"),  # a set a later release adds to the file
        ("cache", "tillpoint.cache"),
    ],
)
def test_data_a_later_release_migrated_is_refused_not_misread(
    tmp_path: Path, which: str, migration_set: str
) -> None:
    """A rollback: a later release migrated the data directory, then this one started on
    it. A release that ignored the steps it did not know took seqs the later one had
    used (every sale failed), refused refunds of its receipts, and pushed its outbox rows
    without their texts, which the hub set aside: a receipt lost at the hub (found by
    running an earlier release on data this one had migrated). Refused at open, with
    what to do, and nothing in the files changes."""
    from tillpoint.agent.db import open_cache
    from tillpoint.agent.errors import StorageError

    data = tmp_path / "data"
    Agent(data, "till-1").close()  # both files at this release's schema
    path = data / ("ledger.db" if which == "ledger" else "cache.db")
    later = sqlite3.connect(path)
    later.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES (?, 'm099_from_the_future', '2027-01-01')",
        (migration_set,),
    )
    later.commit()
    later.close()
    before = path.read_bytes()
    opener = ledger.open_ledger if which == "ledger" else open_cache
    step = f"m099_from_the_future \\({migration_set}\\) are unknown to this one"
    with pytest.raises(StorageError, match=f"the {which} was written by .*{step}"):
        opener(data)
    assert path.read_bytes() == before
