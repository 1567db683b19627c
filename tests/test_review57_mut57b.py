"""Review 57 (mut57b): what review 55 (mut55a) left unrun of the till's trust in its hub
(`sync/pki.py`'s renewal, the hub's keys, the certificates issued, the bundle and the
marker; `sync/client.py`'s channel options), then the SQLite hub store's plumbing
(`sync/hub_sqlite.py`: its connections' pragmas, its connections per thread, its reads
and writes). Each test pins a rule that a surviving mutant broke and no test held.
Real parts: keys made by `hub init`, bundles by `hub enroll`, installed by `sync
install`, the reference hub over mTLS on loopback, real SQLite files and a second real
connection holding the file's write lock. docs/DECISIONS.md, "Review 57 (mut57b)",
lists the mutants."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from tillpoint.sync.hub_sqlite import BUSY_TIMEOUT_MS, SqliteHubStore

LONG_S = 60.0  # a wait on a loaded machine's thread: generous, never the verdict


# ---------------------------------------------------------------- the SQLite hub store


def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
    """(journal mode, synchronous, busy timeout) of a connection."""
    return (
        conn.execute("PRAGMA journal_mode").fetchone()[0],
        conn.execute("PRAGMA synchronous").fetchone()[0],
        conn.execute("PRAGMA busy_timeout").fetchone()[0],
    )


def in_a_thread(store: SqliteHubStore) -> tuple[str, int, int]:
    """The pragmas of the connection another thread of the hub opens (a gRPC worker's)."""
    seen: list[tuple[str, int, int]] = []
    worker = threading.Thread(target=lambda: seen.append(pragmas(store._conn())))
    worker.start()
    worker.join(LONG_S)
    return seen[0]


def test_every_connection_of_the_sqlite_hub_store_is_wal_full_and_waits_30_s(
    tmp_path: Path,
) -> None:
    """A receipt the hub acknowledged is on the disk (synchronous = FULL: 2; NORMAL, 1,
    loses the last commits of a WAL file at a power cut, and the till, told "stored",
    never sends them again); readers do not block the writer (WAL); a writer waits 30 s
    for another (busy_timeout) rather than answering a till "database is locked". Each
    thread has its own connection, set up the same way, and so does the store opened
    again on the file."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        assert BUSY_TIMEOUT_MS == 30_000
        assert pragmas(store._conn()) == ("wal", 2, 30_000)
        assert in_a_thread(store) == ("wal", 2, 30_000)
        assert store.durability_notes() == []
    finally:
        store.close()
    again = SqliteHubStore(tmp_path / "hub.db")
    try:
        assert pragmas(again._conn()) == ("wal", 2, 30_000)
    finally:
        again.close()


def test_a_hub_write_waits_for_another_writer_of_its_file_rather_than_failing(
    tmp_path: Path,
) -> None:
    """Another process writing the hub's file (`hub import`, `hub publish` beside `hub
    serve`) holds its write lock: the store's write waits for it and then succeeds,
    never "database is locked" at once. Whether the write is still waiting after a
    second is looked at only while the lock is held, so a slow machine cannot fail it."""
    path = tmp_path / "hub.db"
    store = SqliteHubStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    outcome: list[object] = []

    def publish() -> None:
        try:
            outcome.append(store.publish(datetime.now(UTC), 60.0))
        except Exception as exc:  # the verdict is read below
            outcome.append(exc)

    try:
        other.execute("BEGIN IMMEDIATE")
        worker = threading.Thread(target=publish)
        worker.start()
        worker.join(1.0)
        assert outcome == [], outcome  # still waiting (a refusal would be here by now)
        other.execute("COMMIT")
        worker.join(LONG_S)
        assert len(outcome) == 1 and getattr(outcome[0], "version", None) == 1, outcome
    finally:
        other.close()
        store.close()
