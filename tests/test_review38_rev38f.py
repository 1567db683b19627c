"""Review 38 (rev38f): rev38b's changes read again — `sync now`'s busy wait cut to its
`--timeout` (`db.writes_until`), a one-shot's answer written whole (`cli._write_whole`),
its stderr lines (`logs.setup_one_shot`), a one-shot `hold`'s late-grant shrink after its
answer (CONTRACT §10, §11). Each test here that names a fault failed before the fix beside
it; the others pin what was tried and found right. Real parts: real SQLite files, the
reference hub on 127.0.0.1, real `tillpoint` processes and pipes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from tillpoint.agent.db import connect, write_transaction, writes_until
from tillpoint.agent.errors import StorageError
from tillpoint.sync.loopback import LoopbackHub

from .conftest import CLI, enrolled_till, receipt

# ---------------------------------------- 1. sync now's cut busy wait: its own, per connection


def _busy_ms(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


def test_sync_nows_cut_leaves_each_connection_its_own_busy_wait(tmp_path: Path) -> None:
    """CONTRACT §10 (`sync now --timeout S`: its ledger writes wait no later than it).
    rev38b cut SQLite's busy wait at each write's BEGIN by setting the connection's
    `busy_timeout` and never set it back: a connection that wrote inside `sync now`'s
    window kept the cut (0 ms once the deadline had passed) for every write after it, and
    one that waits less on purpose (the cache build's cleanup, 100 ms) was raised to 5 s.
    Failed before the fix: the cut is only ever lower, and only for that BEGIN."""
    path = tmp_path / "x.db"
    plain = connect(path)
    short = connect(path)
    short.execute("PRAGMA busy_timeout = 100")
    try:
        with writes_until(time.monotonic() + 60):
            with write_transaction(short, "x"):
                pass
            assert _busy_ms(short) == 100  # never raised by the cut
        with writes_until(time.monotonic() - 1):  # its deadline passed: BEGIN waits not
            with write_transaction(plain, "x"):
                pass
        assert _busy_ms(plain) == 5000  # its own again after the window
    finally:
        plain.close()
        short.close()


def test_sync_nows_cut_is_not_another_threads(tmp_path: Path) -> None:
    """CONTRACT §10, §11. The cut was a process-wide setting: during `sync now`'s window
    every thread's write took it, a hub or a till agent in the same process (the loopback
    hub of tests and of a program embedding one) included: past the deadline another
    thread's write beside a writer finishing in 300 ms failed at once "database is
    locked" instead of waiting its own busy timeout. Failed before the fix: the deadline
    is the thread's (the command's) that set it."""
    path = tmp_path / "x.db"
    holder = connect(path)
    other = connect(path)
    errors: list[BaseException] = []
    try:
        holder.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.3, lambda: holder.execute("ROLLBACK"))

        def write_there() -> None:
            try:
                with write_transaction(other, "x"):
                    pass
            except StorageError as exc:
                errors.append(exc)

        with writes_until(time.monotonic() - 1):
            thread = threading.Thread(target=write_there)
            timer.start()
            thread.start()
            thread.join(30)
        timer.join(30)
        assert not thread.is_alive()
        assert errors == []
    finally:
        holder.close()
        other.close()


def test_a_hub_in_the_same_process_keeps_its_busy_wait_after_sync_now(
    tmp_path: Path, hub: LoopbackHub, cli: CLI
) -> None:
    """CONTRACT §10, §11. `sync now` run in a process that serves the hub too (the
    loopback hub, as the tests and a program embedding both run them): the hub's writes
    during the command (the push) took the command's cut and kept it, a hub store that
    waits 30 s for another writer waiting 5 s (or none) from then on. Failed before the
    fix: every hub connection keeps its 30 s."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    sold = cli("checkout", receipt("s-1"), "--json")
    assert sold.code == 0, sold.err
    done = cli("sync", "now", "--timeout", "30", "--json")
    assert done.code == 0, done.err
    conns = list(hub.store._all)
    assert conns
    assert {_busy_ms(conn) for conn in conns} == {30_000}
