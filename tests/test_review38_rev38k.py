"""Review 38 (rev38k): a second pair of eyes on the session's whole change, for what one
branch could not see of another (CONTRACT §10, §11). Each test marked "failed before the
fix" did. Real parts: real files, real processes on one data directory, real fcntl locks.
"""

from __future__ import annotations

import os
from pathlib import Path

from tillpoint.agent.hub_turns import HUB_TURNS_FILE, HubTurns

from .test_review38_rev38h import _other_takes

# ---------------------------------------- 1. the hub-turn lock file deleted twice


def test_the_lock_file_deleted_a_second_time_is_made_again_for_the_next_turn(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (a receipt's turn is one process's at a time). `hub_turns.lock`
    deleted while `run` runs is made again at its next turn (review 38), so the processes
    started since and `run` lock one file. Deleted a second time, it was not: the path's
    "nothing there" of the first time was remembered as a path that could not be opened
    (`_tried`, meant for a file that cannot be made), and `run` kept its turns on the
    deleted file while a process started then made a new one and took the same receipt's
    turn at once. Failed before the fix (the other process took the turn `run` held)."""
    lock = tmp_path / HUB_TURNS_FILE
    run = HubTurns(across=lock)
    try:
        for i in range(3):  # deleted, then a turn: each time the file is made again
            os.remove(lock)
            assert run.start_release(f"r-{i}")
            assert lock.exists(), f"deletion {i + 1}: the file was not made again"
            assert not _other_takes(lock, f"r-{i}"), "another process took a turn run holds"
            run.end_release(f"r-{i}")
    finally:
        run.close()
