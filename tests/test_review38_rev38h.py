"""Review 38 (rev38h): rev38a's ledger time line (`device.clock_line`) and its reopened
`hub_turns.lock` read again, adversarially (CONTRACT §11). Each test marked "failed before
the fix" did; the others pin what was checked and found right. Real parts: real SQLite
files, real processes on one data directory, real fcntl locks.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent import db, service
from tillpoint.agent.hub_turns import HUB_TURNS_FILE, HubTurns
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import SteppingClock, snapshot
from .test_review31_long31 import DEVICE, _sale
from .test_review37_rev37e import _times

# ---------------------------------------- 1. a one-shot's start beside another writer


def _line(data: Path) -> str | None:
    conn = sqlite3.connect(data / "ledger.db", isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM device WHERE key = 'clock_line'").fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def test_a_process_start_does_not_wait_for_another_writer_to_record_the_time_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11 (the time line), §10 (a quote writes nothing). A one-shot started on
    a ledger without a time line of this boot (the release before review 38's, the first
    process after a reboot) records it at its start. With another process in a write
    transaction then (`run`'s Hold asking the hub in it, up to its deadline; a one-shot
    `hold` beside), a one-shot `tillpoint quote` waited SQLite's busy timeout (5 s) for
    a line it does not need before it priced anything. The line is written only when
    the ledger is free at once; the next process (or `run`'s next round) records it.
    Failed before the fix (the start waited the whole busy timeout, here raised to 120 s
    so that no machine's slowness decides the test)."""
    if service.boot_id() is None:
        pytest.skip("no boot id on this system: no time line is recorded")
    data = tmp_path / "till"
    first = Agent(data, DEVICE)
    first.load_snapshot(snapshot())
    first.close()
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 120_000)
    other = sqlite3.connect(data / "ledger.db", isolation_level=None)
    other.execute("DELETE FROM device WHERE key = 'clock_line'")  # a ledger of before
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    started: list[Agent] = []
    starting = threading.Thread(target=lambda: started.append(Agent(data, DEVICE)), daemon=True)
    try:
        starting.start()
        starting.join(30)
        waited = starting.is_alive()
    finally:
        other.execute("ROLLBACK")
        other.close()
        starting.join(150)
    try:
        assert not waited, "the process's start waited for the other writer"
        assert started
        assert _line(data) is None  # not recorded: the ledger was busy
        started[0].keep_clock_line()  # the next round: recorded now
        assert (_line(data) or "").startswith(f"{service.boot_id()} ")
    finally:
        for agent in started:
            agent.close()


# ---------------------------------------- 2. the lock file: one file, one open fd

_TAKE = """
import sys
from pathlib import Path
from tillpoint.agent.hub_turns import HubTurns
turns = HubTurns(across=Path(sys.argv[1]))
print("taken" if turns.start_release(sys.argv[2]) else "refused", flush=True)
"""


def _other_takes(lock: Path, receipt_id: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", _TAKE, str(lock), receipt_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip() == "taken"


def test_the_lock_file_put_back_while_a_turn_is_held_on_it_keeps_every_turn(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (a release never drops a hold placed again: a receipt's turn is one
    process's at a time). `hub_turns.lock` moved away (a clean-up, a restore that moves
    the data directory's files aside) while `run` holds a receipt's turn on it, a new
    file made meanwhile, then the old one put back: `run` opened the old file a second
    time for its next turn, and when the first turn ended it closed the first descriptor,
    and POSIX drops every lock the process has on a file when any descriptor of it is
    closed: the second turn, still running, was another process's to take at once.
    The file at the path is now the descriptor already open on it. Failed before the fix
    (the other process took the turn `run` held)."""
    lock = tmp_path / HUB_TURNS_FILE
    run = HubTurns(across=lock)
    try:
        assert run.start_release("r-1")  # a turn on the first file
        os.rename(lock, tmp_path / "aside")
        lock.write_bytes(b"")  # another process made the file again
        assert run.start_release("r-2")  # on the new file
        run.end_release("r-2")
        os.replace(tmp_path / "aside", lock)  # the first file put back
        assert run.start_release("r-3")  # on the first file again
        run.end_release("r-1")  # the first turn ends
        assert not _other_takes(lock, "r-3"), "another process took a turn run holds"
        run.end_release("r-3")
        assert _other_takes(lock, "r-3")
    finally:
        run.close()


def test_ten_thousand_turns_with_the_file_replaced_often_leave_no_descriptor_open(
    tmp_path: Path,
) -> None:
    """CONTRACT §11. 10,000 turns, the file replaced every 7th (`os.replace`, as a
    restore does) while another receipt's turn is held across the replacement: the
    descriptors of the files gone are closed once their last turn ends, and every one at
    `close`. Checked, found right."""
    lock = tmp_path / HUB_TURNS_FILE

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd")
    before = fds()
    turns = HubTurns(across=lock)
    opened = fds()
    try:
        for i in range(10_000):
            assert turns.start_release(f"r-{i}")
            if i % 7 == 0:
                (tmp_path / "new").write_bytes(b"")
                os.replace(tmp_path / "new", lock)
            if i % 3 == 0:
                assert turns.start_release(f"x-{i}")
                turns.end_release(f"x-{i}")
            turns.end_release(f"r-{i}")
        assert fds() == opened
    finally:
        turns.close()
    assert fds() == before
