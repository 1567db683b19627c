"""Review 37 (rev37e): this session's hold/release changes read again, adversarially
(CONTRACT §9, §11): a receipt's hub turns across the processes of one data directory
(`hub_turns.lock`), a call's lowest offline limit told the hub, and a step of the wall
clock moving the owed releases' times. Each test marked "failed before the fix" did; the
others pin what was checked and found right. Real parts: the reference hub on 127.0.0.1
with its own gRPC handlers, real SQLite files, `tillpoint` processes on one data
directory.

Checked and found right (no test of their own): a process killed (SIGKILL) holding a
receipt's byte frees it at once (the kernel's); the fd is O_CLOEXEC and a forked child's
close frees no lock of its parent (POSIX locks are the process's); 20,000 receipts' turns
leave no per-byte count and no fd behind; no lock order closes a cycle (a process waits
on a byte holding neither the agent's lock nor SQLite's write lock; a release only tries
its byte, never waits); a quote takes no turn; `reset` and `snapshot load` never remove
`hub_turns.lock`; a call's lowest offline limit told the hub caps only a committing
OFFLINE pricing (not a quote, not a retry answered from storage); a turn costs a Hold
about 8 microseconds and a Confirm or Cancel about 5 (measured, not timed here).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, receipt

from .conftest import CLI, SteppingClock, enrolled_till
from .test_review35_left35 import ANNA
from .test_review37_left37 import EXE

# ---------------------------------------- 1. a Cancel beside another process's Hold


def _slow_grants(
    monkeypatch: pytest.MonkeyPatch, hub: LoopbackHub, seconds: float
) -> threading.Event:
    """The hub grants each redemption `seconds` after it was asked (within the till's
    deadline); the event is set when the first request reached it."""
    asked = threading.Event()
    authorise = HubServicer.AuthorizeRedemption

    def slow(self: Any, request: Any, context: Any) -> Any:
        asked.set()
        time.sleep(seconds)
        return authorise(self, request, context)

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", slow)
    hub.restart()
    return asked


@pytest.mark.parametrize("command", ["cancel", "confirm"])
def test_a_cancel_or_confirm_beside_another_processs_hold_waits_for_it(
    tmp_path: Path,
    hub: LoopbackHub,
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    procs: list[subprocess.Popen[bytes]],
    command: str,
) -> None:
    """CONTRACT §11 (Cancel releases a hold; Confirm commits exactly the held figures). A
    POS driving the till by its command line (one-shot commands, run locally: no `run`,
    or an HTTP interface with a token) sends `tillpoint hold`; the hub is slow and the
    POS gives up waiting and sends `tillpoint cancel` (or, the customer paying, `confirm`)
    of the same receiptId from another process. A Confirm or Cancel of a receipt whose
    Hold is still asking the hub waits for it (review 34, `HubTurns.hold_ended`) in one
    process only: across processes it answered "not held at this till" (exit 2), and the
    Hold stored a moment later kept the customer's 10 points reserved, here and at the
    hub, until it expired (or the paid sale went unrecorded). Failed before the fix."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    asked = _slow_grants(monkeypatch, hub, 2.0)
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
    done = cli(command, "r-1", "--json")
    out, err = hold.communicate(timeout=30)
    assert hold.returncode == 0, err
    held = json.loads(out)
    assert (held["state"], held["mode"], held["redeemedPoints"]) == ("HELD", "ONLINE", 10)
    assert done.code == 0, done.err
    answer = json.loads(done.out)
    expected = "CANCELLED" if command == "cancel" else "CONFIRMED"
    assert (answer["state"], answer["redeemedPoints"]) == (expected, 10), answer
    if command == "cancel":  # released at the hub too
        assert hub.store.balance("c-1", datetime.now(UTC)).held == 0


# ---------------------------------------- 2. one step of the wall clock, two processes


def _times(data: Path) -> dict[str, tuple[str, str | None, str]]:
    conn = sqlite3.connect(data / "ledger.db", isolation_level=None)
    try:
        rows = conn.execute("SELECT receipt_id, expires_at, closed_at, state FROM receipt_life")
        return {rid: (at, closed, state) for rid, at, closed, state in rows}
    finally:
        conn.close()


def test_one_step_of_the_wall_clock_moves_the_holds_once_for_two_processes(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (a hold lives `holdTtlSeconds` of time that passes; expired and
    cancelled holds release their reservations). Two processes on one data directory,
    alive across one NTP step an hour back: `tillpoint run` and a one-shot command whose
    call (a Hold asking a slow hub, a `sync now`) spans the step. Each told the step from
    its own reading of the clocks and each moved the ledger's open holds by it, and (since
    review 37's rev37a) the owed releases' `closed_at`: moved twice, the open hold with
    its ten minutes left was expired at once, its points given back while the POS took
    the payment, and the owed release judged an hour older than it is. Each time the
    ledger holds is moved by a step once: the process that finds it already followed
    (the ledger says the wall clock's offset it follows) moves nothing. Failed before the
    fix (moved by two hours)."""
    from tillpoint.agent.service import Agent

    from .test_review31_long31 import DEVICE, _sale, stepped_while_it_asks

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    with stepped_while_it_asks(tmp_path, clock, 2.0) as (run, data, _, hub):
        program = {**data["program"], "holdTtlSeconds": 600}
        run.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        other = Agent(tmp_path / "till", DEVICE, clock=clock, monotonic=clock.steady)
        try:
            run.sweep_holds()  # each process's reading of the clocks (its hold timer's,
            other.sweep_holds()  # the one-shot's at its start)
            held = run.hold(receipt_from_json(_sale("h-1", clock())))
            assert (held.state, held.mode) == ("HELD", "ONLINE")
            assert run.hold(receipt_from_json(_sale("h-2", clock()))).mode == "ONLINE"
            hub.stop()
            assert run.cancel("h-2").state == "CANCELLED"  # its release owed
            before = _times(tmp_path / "till")
            clock.passes(30)
            clock.stepped(-3600.0)  # NTP: an hour back
            run.sweep_holds()  # run's hold timer follows the step
            other.sweep_holds()  # so does the other process, at its next call
            after = _times(tmp_path / "till")
            hour = timedelta(hours=1)
            assert after["h-1"][2] == "HELD", after
            assert datetime.fromisoformat(after["h-1"][0]) == (
                datetime.fromisoformat(before["h-1"][0]) - hour
            ), (before, after)
            assert datetime.fromisoformat(str(after["h-2"][1])) == (
                datetime.fromisoformat(str(before["h-2"][1])) - hour
            ), (before, after)
            clock.passes(60)
            run.sweep_holds()
            other.sweep_holds()
            assert _times(tmp_path / "till")["h-1"][2] == "HELD"  # 8.5 minutes left
        finally:
            other.close()


def test_a_step_back_to_where_an_earlier_step_went_is_followed_again(tmp_path: Path) -> None:
    """CONTRACT §11. What the ledger records of a step followed (`clock_followed`) tells
    the same step seen by another process from a later one: here the clock is stepped an
    hour forward (followed), then set ten minutes on while no till runs (since review 38
    the next process follows that at its start, the ledger's time line of this boot),
    and NTP takes those ten minutes back while a new
    process runs, its hold made on the clock of before. The clock's offset ends where the
    first step left it; that second step is still this process's to follow, or its hold
    keeps ten minutes more than the hub's copy. Checked, found right."""
    from tillpoint.agent.service import Agent

    from .conftest import snapshot
    from .test_review31_long31 import DEVICE, _sale

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = tmp_path / "till"
    first = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    try:
        first.load_snapshot(snapshot())
        first.sweep_holds()
        clock.stepped(3600.0)
        first.sweep_holds()  # followed: recorded
    finally:
        first.close()
    clock.stepped(600.0)  # no till running (followed at the next start, review 38)
    again = Agent(data, DEVICE, clock=clock, monotonic=clock.steady)
    try:
        again.sweep_holds()
        held = again.hold(receipt_from_json(_sale("h-3", clock(), redeemPoints=0)))
        assert held.state == "HELD"
        before = _times(data)["h-3"][0]
        clock.stepped(-600.0)  # NTP: back where the first step left the clock
        again.sweep_holds()
        after = _times(data)["h-3"][0]
        assert datetime.fromisoformat(after) == datetime.fromisoformat(before) - timedelta(
            minutes=10
        )
    finally:
        again.close()


# ---------------------------------------- 3. an owed release read before the step is followed


def test_an_owed_release_is_judged_on_the_holds_time_line_before_a_step_is_followed(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (expired and cancelled holds release their reservations; a hold lives
    `holdTtlSeconds` of time that passes). Since review 37 (rev37a) a release owed since
    its hold closed is judged on the open holds' time line (its `closed_at` moves with a
    step), but it was compared with the clock as it reads, not as `Agent._now` reads it
    (less a step no call has followed yet). NTP steps the clock two days forward; before
    any call follows the step (up to the hold timer's 15 s round), `/metrics`'
    `tillpoint_hub_calls_owed` said no release owed, and the releases a one-shot command
    sends after its answer (`TillSync.send_owed`, no sweep first) found the release "run
    out at the hub" and dropped it unsent, the hub still holding the customer's points.
    Failed before the fix (0 owed; dropped)."""
    from .test_review31_long31 import _sale, stepped_while_it_asks
    from .test_review35_left35 import owed_releases

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    with stepped_while_it_asks(tmp_path, clock, 2.0) as (agent, data, _, hub):
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0})
        agent.sweep_holds()  # the clock's mark made
        held = agent.hold(receipt_from_json(_sale("h-1", clock(), redeemPoints=100)))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 100)
        hub.stop()
        assert agent.cancel("h-1").state == "CANCELLED"  # its release owed
        hub.restart()
        clock.passes(30)
        clock.stepped(timedelta(days=2).total_seconds())  # NTP; no call has followed it
        assert agent.hub_calls_owed()["release"] == 1
        for _ in range(50):  # the link's reconnection after the hub's restart (backoff)
            if agent.retry_hub_releases() or owed_releases(tmp_path / "till") == 0:
                break
            threading.Event().wait(0.2)
        assert owed_releases(tmp_path / "till") == 0
        assert hub.store.balance("c-1", datetime.now(UTC)).held == 0, "dropped unsent"
