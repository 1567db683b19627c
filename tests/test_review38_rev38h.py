"""Review 38 (rev38h): rev38a's ledger time line (`device.clock_line`) and its reopened
`hub_turns.lock` read again, adversarially (CONTRACT §11). Each test marked "failed before
the fix" did; the others pin what was checked and found right. Real parts: real SQLite
files, real processes on one data directory, real fcntl locks.

Checked and found right (read, no test of their own): a read-only ledger refuses the
line's write at once (SQLITE_READONLY, no busy wait; caught, the next round tries); the
line's compare-and-write keeps two processes from writing over each other's; a ledger of
the release before has the `device` table (the key needs no migration; an older release
ignores it); locks are taken mark first, then the agent's, in one order everywhere.
Left: a turn held on `hub_turns.lock` at the instant it is replaced stays on the old
file until it ends (one hub call's deadline), a process started meanwhile may take it;
(read again in review 39, rev39c: not so) after a step followed by another process,
`run`'s quotes read the clock less that step until its next round; the
holds of the boot before moved by a step on this one (the last test below: a strict
xfail until review 39, rev39c).
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


def test_a_process_start_on_a_ledger_with_this_boots_line_writes_nothing(
    tmp_path: Path,
) -> None:
    """CONTRACT §11, §10. A one-shot's start reads the time line (one row) and writes the
    ledger only when there is none of this boot or the clock drifted 0.5 s from it: on a
    ledger `run` keeps, a `quote`'s start writes nothing. Checked, found right."""
    if service.boot_id() is None:
        pytest.skip("no boot id on this system: no time line is recorded")
    data = tmp_path / "till"
    first = Agent(data, DEVICE)
    first.load_snapshot(snapshot())
    first.close()
    line = _line(data)
    for _ in range(3):
        again = Agent(data, DEVICE)
        try:
            assert again._ledger.total_changes == 0
        finally:
            again.close()
    assert _line(data) == line


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
        """This test's descriptors: those on its directory's files (a count of the whole
        process's met the closes of other threads' descriptors under load, CI review 43)."""
        mine = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed since the listing
                continue
            mine += target.startswith(str(tmp_path))
        return mine

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


# ---------------------------------------- 3. NTP's small steps, a day long


def _hold(agent: Agent, rid: str, clock: SteppingClock) -> datetime:
    made = clock()
    held = agent.hold(receipt_from_json(_sale(rid, made, redeemPoints=0)))
    assert held.state == "HELD"
    return made


def _lived(data: Path, rid: str, made: datetime) -> tuple[str, float, float | None]:
    """The hold's state, its expiry and its close, in seconds of the wall clock after its
    Hold."""
    at, closed, state = _times(data)[rid]
    return (
        state,
        (datetime.fromisoformat(at) - made).total_seconds(),
        None if closed is None else (datetime.fromisoformat(closed) - made).total_seconds(),
    )


def test_a_day_of_small_steps_under_run_moves_no_hold_and_a_late_process_agrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT §11 (a step is 2 s or more between two readings). A clock NTP sets by
    0.4 s every five minutes (ntpd steps past 128 ms; a drifting VM: 115 s a day) under
    `tillpoint run`, whose timer reads the clocks and keeps the ledger's time line every
    15 s (written again at each 0.5 s). Neither `run` nor a one-shot started at the day's
    end (its hold stored, then gone) takes the drift for a step: both holds expire
    `holdTtlSeconds` (1,800 s) of the wall clock after their Hold, closed at the round
    after (the 0.4 s steps in between counted), no hold moved, no step said. Checked,
    found right."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T06:00:00+03:00"))
    data = tmp_path / "till"
    run = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    made: dict[str, datetime] = {}
    try:
        run.load_snapshot(snapshot())

        def round_() -> None:  # `start_hold_sweeper`'s round, without its thread
            run.keep_clock_line()
            run.sweep_holds()

        round_()
        made["early"] = _hold(run, "early", clock)
        with caplog.at_level("WARNING", logger="tillpoint.agent.service"):
            for i in range(1, 5761):  # a day of rounds
                clock.passes(15)
                if i % 20 == 0:
                    clock.stepped(0.4)
                round_()
                if i == 5600:
                    late = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
                    try:
                        made["late"] = _hold(late, "late", clock)
                    finally:
                        late.close()
        assert not [r for r in caplog.records if "stepped" in r.getMessage()]
        for rid, at in made.items():
            state, expires, closed = _lived(data, rid, at)
            assert state == "EXPIRED"
            assert expires == 1800.0, rid
            assert closed is not None and 1800.0 <= closed < 1800.0 + 15 + 0.4 * 7, rid
        fresh = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)  # same boot
        try:
            made["fresh"] = _hold(fresh, "fresh", clock)
        finally:
            fresh.close()
        assert _lived(data, "fresh", made["fresh"])[:2] == ("HELD", 1800.0)
    finally:
        run.close()


def test_small_steps_adding_to_two_seconds_while_no_process_ran_are_a_step(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (decision written there, review 38's rev38h). A till driven by
    one-shot commands alone: a Hold stores its hold and the ledger's time line; no
    process runs while NTP sets the clock by 0.4 s five times (2 s, ten minutes). The next
    process reads the ledger's line as the last reading: 2 s between it and now is a
    step, and the open hold keeps its time left (moved 2 s), as `run` would have moved
    it had the 2 s come between two of its rounds. Checked, found as the contract says."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = tmp_path / "till"
    first = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    try:
        first.load_snapshot(snapshot())
        made = _hold(first, "h-1", clock)
    finally:
        first.close()
    for _ in range(5):
        clock.passes(120)
        clock.stepped(0.4)
    late = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    try:
        late.sweep_holds()
        assert _lived(data, "h-1", made)[:2] == ("HELD", 1802.0)
    finally:
        late.close()


# ---------------------------------------- 4. another boot, no boot id


def _set_line(data: Path, value: str) -> None:
    conn = sqlite3.connect(data / "ledger.db", isolation_level=None)
    try:
        conn.execute(
            "INSERT OR REPLACE INTO device (key, value) VALUES ('clock_line', ?)", (value,)
        )
    finally:
        conn.close()


def _expires(data: Path, rid: str) -> str:
    at, _, state = _times(data)[rid]
    assert state == "HELD"
    return at


def test_a_line_of_another_boot_moves_no_hold_and_is_written_again_for_this_one(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (across a restart of the system the stored wall-clock expiry
    applies). The ledger's line was written on another boot (the till restarted, or its
    data directory restored from a backup onto another machine), an hour off this boot's
    offset: a process started here takes nothing from it, moves no hold, and writes this
    boot's line. Real clocks, this system's boot id. Checked, found right."""
    boot = service.boot_id()
    if boot is None:
        pytest.skip("no boot id on this system")
    data = tmp_path / "till"
    first = Agent(data, DEVICE)
    try:
        first.load_snapshot(snapshot())
        first.hold(receipt_from_json(_sale("h-1", service.system_clock(), redeemPoints=0)))
    finally:
        first.close()
    at = _expires(data, "h-1")
    offset = float((_line(data) or "").rpartition(" ")[2])
    _set_line(data, f"00000000-0000-4000-8000-000000000000 {offset - 3600.0!r}")
    again = Agent(data, DEVICE)
    try:
        again.sweep_holds()
        assert _expires(data, "h-1") == at
        assert (_line(data) or "").startswith(f"{boot} ")
    finally:
        again.close()


def test_without_a_boot_id_no_line_is_kept_and_the_till_sells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11 (decision written there). No `/proc/sys/kernel/random/boot_id` (not
    Linux, a sandbox without it): the steady clock's origin cannot be told from another
    boot's, so no line is read or written, and each process starts on its own first
    reading (as before review 38); holds, confirms and steps within a process are as
    ever. Checked, found right."""
    monkeypatch.setattr(service, "boot_id", lambda: None)
    data = tmp_path / "till"
    agent = Agent(data, DEVICE)
    try:
        agent.load_snapshot(snapshot())
        agent.hold(receipt_from_json(_sale("h-1", service.system_clock(), redeemPoints=0)))
        assert agent.confirm("h-1").state == "CONFIRMED"
        agent.keep_clock_line()
    finally:
        agent.close()
    assert _line(data) is None


def test_a_hold_of_the_boot_before_is_not_moved_by_ntp_setting_a_dead_rtc_right(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (across a restart of the system the stored wall-clock expiry
    applies). A hold is open when the power goes; the till boots two minutes later with
    a dead RTC battery, its clock a day behind, `run` starts, and NTP then sets the clock
    a day forward: `run` follows that step and moves every open hold by it, the one made
    on the boot before (on a clock that was right) too: held a day at the till while
    the hub's copy ran out after `holdTtlSeconds` + 60 s. Found here (a strict xfail),
    fixed in review 39 (rev39c): the boot's first line lists the holds open then, which
    no step of this boot moves (`tests/test_review39_rev39c.py`)."""
    boot1 = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = tmp_path / "till"
    before = Agent(data, DEVICE, clock=boot1, monotonic=boot1.steady)
    try:
        before.load_snapshot(snapshot())
        made = _hold(before, "h-1", boot1)
    finally:
        before.close()
    boot2 = SteppingClock(made + timedelta(minutes=2) - timedelta(days=1))
    run = Agent(data, DEVICE, clock=boot2, monotonic=boot2.steady)  # another "boot"
    try:
        run.sweep_holds()
        boot2.passes(20)
        boot2.stepped(86_400.0)  # NTP sets the clock right
        run.keep_clock_line()
        run.sweep_holds()
        assert _lived(data, "h-1", made)[1] == 1800.0, "moved by this boot's step"
    finally:
        run.close()
