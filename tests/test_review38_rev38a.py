"""Review 38 (rev38a): session 37's cross-process hub turns (`hub_turns.lock`) and its
record of a step of the wall clock followed once (`device.clock_followed`) read again,
adversarially, and rev37e's two left items closed (CONTRACT §9, §11). Each test marked
"failed before the fix" did; the others pin what was checked and found right. Real
parts: real SQLite files, real processes on one data directory, real fcntl locks.

Checked and found right (read, no test of their own): a step made while a turn is held
(a Hold asking a slow hub) is followed in its transaction before its times are made and
recorded once (`clock_followed`), whichever process took it; a one-shot that follows a
step while `run` sweeps waits for SQLite's write lock and then finds it followed; a
release never waits for a turn (a killed process's byte is free at once, the kernel's).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent.hub_turns import HUB_TURNS_FILE, HubTurns
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.server import start_hold_sweeper
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, receipt

from .conftest import CLI, SteppingClock, enrolled_till, snapshot
from .test_review31_long31 import DEVICE, _sale
from .test_review35_left35 import ANNA, owed_releases
from .test_review37_left37 import EXE
from .test_review37_rev37e import _slow_grants, _times

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


# ---------------------------------------- 2. a process started after a step of the clock


def _two_tills(tmp_path: Path) -> tuple[SteppingClock, Path]:
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    return clock, tmp_path / "till"


def _hold(agent: Agent, rid: str, clock: SteppingClock) -> None:
    held = agent.hold(receipt_from_json(_sale(rid, clock(), redeemPoints=0)))
    assert held.state == "HELD"


def _expiry(data: Path, rid: str) -> datetime:
    at, _, state = _times(data)[rid]
    assert state == "HELD", (rid, state)
    return datetime.fromisoformat(at)


def test_a_process_started_after_a_step_writes_its_hold_on_the_ledgers_time_line(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (a hold lives `holdTtlSeconds` of time that passes). NTP steps the
    wall clock an hour back; before `tillpoint run`'s hold timer comes round (up to 15 s)
    a one-shot `tillpoint hold` is started and stores its hold. It read the clock at its
    start as its first reading: no step for it; its hold's expiry was made on the stepped
    clock, and `run` then followed the step and moved every open hold, that one too: an
    hour back, its fifteen minutes gone, expired at `run`'s next round while the POS took
    the payment (rev37e's left item). A process now starts on the time line the ledger
    records (`device.clock_line`: the clock's offset from the steady clock its hold times
    were made on, this boot) and follows a step it finds there before it writes. Failed
    before the fix (the one-shot's hold moved an hour back)."""
    clock, data = _two_tills(tmp_path)
    run = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    try:
        run.load_snapshot(snapshot())
        run.sweep_holds()  # run's hold timer: its reading of the clocks
        _hold(run, "h-1", clock)
        first = _expiry(data, "h-1")
        clock.passes(30)
        clock.stepped(-3600.0)  # NTP: an hour back
        late = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)  # a one-shot
        try:
            _hold(late, "h-2", clock)
        finally:
            late.close()
        written = _expiry(data, "h-2")
        run.sweep_holds()  # run's timer comes round
        assert _expiry(data, "h-2") == written, "the late process's hold moved by the step"
        assert _expiry(data, "h-1") == first - timedelta(hours=1)
        clock.passes(60)
        run.sweep_holds()
        assert _expiry(data, "h-2") == written  # still held, its minutes left
    finally:
        run.close()


def test_a_step_followed_by_a_process_gone_is_followed_back_by_run(tmp_path: Path) -> None:
    """CONTRACT §11. NTP steps the clock an hour forward and takes it back again (a bad
    time source, then a good one) between two rounds of `run`'s hold timer: for `run` no
    step at all. A one-shot started between the two followed the first (the ledger's open
    holds moved an hour on) and stored its hold on that line, then exited: no process was
    left to follow the step back, and every open hold outlived the hub's copy of it by an
    hour. `run`'s timer now reads the ledger's time line each round and follows what
    separates it from its clock. Failed before the fix (held an hour too long)."""
    clock, data = _two_tills(tmp_path)
    run = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    try:
        run.load_snapshot(snapshot())
        run.sweep_holds()
        _hold(run, "h-1", clock)
        first = _expiry(data, "h-1")
        clock.passes(5)
        clock.stepped(3600.0)
        late = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
        try:
            _hold(late, "h-2", clock)
        finally:
            late.close()
        written = _expiry(data, "h-2")
        clock.passes(5)
        clock.stepped(-3600.0)
        stop = start_hold_sweeper(run, every_s=3600.0, jitter_s=0.0)  # a round at once
        try:
            for _ in range(100):
                if _expiry(data, "h-2") != written:
                    break
                threading.Event().wait(0.05)
        finally:
            stop()
        assert _expiry(data, "h-1") == first
        assert _expiry(data, "h-2") == written - timedelta(hours=1), "held an hour too long"
    finally:
        run.close()


# ---------------------------------------- 3. a lock file that cannot be the lock file


def test_a_lock_file_that_is_a_directory_is_warned_of_not_taken_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT §11. A read-only data directory gives turns in this process only, as
    before review 37 (the lead's call; logged at INFO, it sells nothing there). A
    `hub_turns.lock` that is a directory (an operator's `mkdir`, a restore gone wrong) in
    a data directory the till writes in gave the same silently: each process's turns its
    own, the release race review 37 closed open again, with one INFO line that a till
    logging at WARNING never shows. It is now a WARNING that names the file and what to
    do. Failed before the fix (INFO)."""
    lock = tmp_path / HUB_TURNS_FILE
    lock.mkdir()
    with caplog.at_level(logging.INFO, logger="tillpoint.agent.hub_turns"):
        turns = HubTurns(across=lock)
    try:
        warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert warned, [r.getMessage() for r in caplog.records]
        assert str(lock) in warned[0].getMessage()
        assert "remove it" in warned[0].getMessage()
        assert turns.start_release("r-1")  # in this process still
        turns.end_release("r-1")
    finally:
        turns.close()


def test_a_read_only_data_directory_gives_turns_in_this_process_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT §11 (the lead's call, review 37): without a lock file it may make, turns
    are this process's; said at INFO, not as a fault. Checked, found right."""
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o500)
    try:
        if os.access(data / HUB_TURNS_FILE, os.W_OK) or os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        with caplog.at_level(logging.INFO, logger="tillpoint.agent.hub_turns"):
            turns = HubTurns(across=data / HUB_TURNS_FILE)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert turns.start_release("r-1")
        turns.end_release("r-1")
        turns.close()
    finally:
        data.chmod(0o700)


def test_a_lock_file_that_is_a_symlink_gives_turns_on_its_target(tmp_path: Path) -> None:
    """CONTRACT §11. `hub_turns.lock` a symlink (a data directory laid out with links): every
    process opens its target, so the turns are shared all the same, and a dangling link's
    target is made. Checked, found right."""
    target = tmp_path / "elsewhere" / "turns"
    target.parent.mkdir()
    lock = tmp_path / HUB_TURNS_FILE
    lock.symlink_to(target)
    run = HubTurns(across=lock)
    try:
        assert target.is_file()
        with _other_process_turn(lock, "r-1"):
            assert not run.start_release("r-1")
        assert run.start_release("r-1")
        run.end_release("r-1")
    finally:
        run.close()


def test_a_lock_file_replaced_by_a_directory_while_run_runs_keeps_the_open_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT §11. Deleted and made a directory while `run` runs: the file `run` has
    open stays its turns' (warned of once, not at every turn). Checked, found right."""
    lock = tmp_path / HUB_TURNS_FILE
    run = HubTurns(across=lock)
    try:
        lock.unlink()
        lock.mkdir()
        with caplog.at_level(logging.INFO, logger="tillpoint.agent.hub_turns"):
            for _ in range(3):
                assert run.start_release("r-1")
                run.end_release("r-1")
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    finally:
        run.close()


# ---------------------------------------- 4. a process killed in its turn


@pytest.mark.slow  # ~6 s: a slow hub's grant, three tillpoint processes
def test_a_hold_killed_in_its_turn_frees_it_and_the_receipt_is_held_and_released_once(
    tmp_path: Path,
    hub: LoopbackHub,
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """CONTRACT §9, §11. A one-shot `tillpoint hold` asking a slow hub is killed
    (SIGKILL: the OOM killer, a POS's watchdog) in its receipt's turn, its request at the
    hub. The kernel drops its lock with it: the POS's retry of the same receiptId is
    held at once (ONLINE, the hub's hold replaced, not added to), and its Cancel
    releases it: the hub holds none of the customer's points, and no call is left owed.
    Checked, found right."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    asked = _slow_grants(monkeypatch, hub, 1.5)
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "10000")
    body = tmp_path / "sale.json"
    body.write_text(json.dumps(receipt("r-1", ANNA, redeem=10)), encoding="utf-8")
    env = {**os.environ, "TILLPOINT_CLI_LOCAL": "1"}
    hold = subprocess.Popen(
        [EXE, "--data-dir", str(data), "hold", str(body), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(hold)
    assert asked.wait(30.0), "the hold never asked the hub"
    hold.kill()
    hold.communicate(timeout=30)
    again = cli("hold", str(body), "--json")
    assert again.code == 0, again.err
    held = json.loads(again.out)
    assert (held["state"], held["mode"], held["redeemedPoints"]) == ("HELD", "ONLINE", 10)
    assert hub.store.balance("c-1", datetime.now(UTC)).held == 10  # one hold, not two
    done = cli("cancel", "r-1", "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["state"] == "CANCELLED"
    assert hub.store.balance("c-1", datetime.now(UTC)).held == 0
    assert owed_releases(data) == 0
