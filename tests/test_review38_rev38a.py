"""Review 38 (rev38a): session 37's cross-process hub turns (`hub_turns.lock`) and its
record of a step of the wall clock followed once (`device.clock_followed`) read again,
adversarially, and rev37e's two left items closed (CONTRACT §9, §11). Each test marked
"failed before the fix" did; the others pin what was checked and found right. Real
parts: real SQLite files, real processes on one data directory, real fcntl locks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tillpoint.agent.hub_turns import HUB_TURNS_FILE, HubTurns

# ---------------------------------------- 1. the lock file deleted while `run` runs

# Another process on the data directory (a `sync now`, a one-shot beside `run`): takes a
# receipt's turn as a release does and keeps it until its stdin closes.
_OTHER = """
import sys
from pathlib import Path
from tillpoint.agent.hub_turns import HubTurns
turns = HubTurns(across=Path(sys.argv[1]))
assert turns.start_release(sys.argv[2])
print("taken", flush=True)
sys.stdin.read()
turns.end_release(sys.argv[2])
"""


@contextmanager
def _other_process_turn(lock: Path, receipt_id: str) -> Iterator[None]:
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER, str(lock), receipt_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == b"taken\n", other.stderr
        yield
    finally:
        other.communicate(timeout=30)
        assert other.returncode == 0


def test_a_lock_file_deleted_while_run_runs_still_gives_turns_across_processes(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (expired and cancelled holds release their reservations; a release
    never drops a hold placed again). `tillpoint run` opens `hub_turns.lock` once; an
    operator (or a clean-up script) deletes it while `run` runs. A one-shot or a `sync
    now` started then makes a new file, and its turns and `run`'s were on two files:
    each took the same receipt's turn at once, the release read as owed racing the hold
    placed again (the race review 37 closed), silently, until `run` restarted. Each
    turn now looks at the path and takes the file there. Failed before the fix (`run`'s
    release took the turn another process had)."""
    lock = tmp_path / HUB_TURNS_FILE
    run = HubTurns(across=lock)
    try:
        assert run.start_release("r-1")  # the file made and used
        run.end_release("r-1")
        lock.unlink()
        with _other_process_turn(lock, "r-1"):
            assert lock.exists()
            assert not run.start_release("r-1"), "took the turn another process has"
        assert run.start_release("r-1")  # given back: its turn again
        run.end_release("r-1")
    finally:
        run.close()
