"""Review 35 (rev35): a second pair of eyes on review 34's product changes.

Each test is a doubt about one of review 34's changes made concrete over real parts (the
agent on real SQLite files, its HTTP door on a real server, a real hub on gRPC):

- the clock-step rule (CONTRACT §11): a step is taken only under the agent's lock, by
  the call that moves the open holds. A Confirm (or a Hold sent again) that waited for
  the lock while NTP stepped the clock read the stepped clock against the unmoved holds.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import SteppingClock, snapshot
from .test_review30_memo30 import ANNA, MILK, sale


def _waiting_at(thread: threading.Thread, function: str, line: int) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code.co_name == function and frame.f_lineno == line


def _lock_line(method: Any) -> int:
    lines, first = inspect.getsourcelines(method)
    return first + next(i for i, text in enumerate(lines) if "with self._lock" in text)


def _stepped_while_waiting_for_the_lock(
    agent: Any, clock: SteppingClock, method: str, call: Any, step_s: float
) -> list[Any]:
    """Run `call` in a thread while the test holds the agent's lock (another call's
    commit in progress); once the call waits for the lock at `method`'s `with
    self._lock`, the wall clock is stepped by `step_s` and the lock let go. What the call
    answered (or raised) is returned."""
    from tillpoint.agent.service import Agent

    line = _lock_line(getattr(Agent, method))
    answers: list[Any] = []

    def run() -> None:
        try:
            answers.append(call())
        except Exception as exc:  # the answer the POS would get
            answers.append(exc)

    swept, locked = threading.Event(), threading.Event()
    sweep = agent.sweep_holds

    def swept_then_another_commit() -> int:
        found = sweep()  # the call follows what it finds before the lock
        if threading.current_thread() is thread:
            swept.set()  # another call's commit takes the agent's lock now
            assert locked.wait(30)
        return found

    agent.sweep_holds = swept_then_another_commit
    thread = threading.Thread(target=run)
    thread.start()
    assert swept.wait(30)
    with agent._lock:
        locked.set()
        deadline = time.monotonic() + 30
        while not _waiting_at(thread, method, line):
            assert time.monotonic() < deadline and thread.is_alive(), f"{method} never waited"
            threading.Event().wait(0.01)
        clock.stepped(step_s)  # NTP, while the call waits for the lock
    thread.join(timeout=30)
    assert not thread.is_alive()
    agent.sweep_holds = sweep
    return answers


@pytest.mark.parametrize("step_s", [3600, -3600])
def test_a_confirm_waiting_for_the_lock_while_the_clock_is_stepped_confirms_its_hold(
    tmp_path: Path, step_s: int
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes; a step of the
    till's wall clock moves the open holds by the step. A Confirm follows a step it
    finds before it takes the agent's lock (`sweep_holds`), then waits for the lock
    behind another call's commit; NTP steps the clock an hour forward meanwhile. The
    Confirm compared the hold's unmoved expiry with the stepped clock: "hold expired"
    for a hold with 9 of its 10 minutes left, the payment taken. An hour back, a hold
    past its time would be confirmed (not here: it has time left either way). The step
    is followed inside the Confirm's own transaction, as a Hold's is."""
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    try:
        program = {**snapshot()["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
        body = sale("c-1", clock(), card=ANNA, lines=[{"sku": MILK, "qty": "1", "priceMinor": 100}])
        held = agent.hold(receipt_from_json(body))
        assert held.state == "HELD"
        clock.passes(60)  # the POS takes the payment
        agent.sweep_holds()  # the hold timer's round: the clock's mark made
        answers = _stepped_while_waiting_for_the_lock(
            agent, clock, "confirm", lambda: agent.confirm("c-1"), step_s
        )
        assert not isinstance(answers[0], Exception), answers[0]
        assert answers[0].state == "CONFIRMED"
    finally:
        agent.close()


def test_a_hold_sent_again_while_the_clock_is_stepped_answers_its_stored_hold(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: the same body under the same receiptId returns what is stored. A
    Hold sent again (a POS's retry) waits for the agent's lock while NTP steps the clock
    an hour forward: it read the unmoved hold as expired, forgot it and priced the
    receipt afresh (a new hold, new times) instead of answering the stored one."""
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    try:
        program = {**snapshot()["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
        body = sale("r-1", clock(), card=ANNA, lines=[{"sku": MILK, "qty": "1", "priceMinor": 100}])
        first = agent.hold(receipt_from_json(body)).to_json()
        clock.passes(60)
        agent.sweep_holds()
        answers = _stepped_while_waiting_for_the_lock(
            agent, clock, "hold", lambda: agent.hold(receipt_from_json(body)).to_json(), 3600
        )
        assert not isinstance(answers[0], Exception), answers[0]
        again = answers[0]
        assert again["state"] == "HELD"
        # its time left kept: the stored expiry moved by the step, not a new hold's
        assert datetime.fromisoformat(again["holdExpiresAt"]) == datetime.fromisoformat(
            first["holdExpiresAt"]
        ) + timedelta(seconds=3600)
        assert agent.confirm("r-1").state == "CONFIRMED"
    finally:
        agent.close()
