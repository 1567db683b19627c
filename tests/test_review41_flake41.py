"""Review 41 (flake41): the premise of hold33's `late` pinned (CONTRACT §11).

Review 41 made hold33's late grant deterministic on a loaded machine: the hub places the
grant and answers DEADLINE_EXCEEDED at once (what a till's gRPC client reports of an
answer past its deadline), the tills waiting 10 s, where the answer used to come 0.6 s
late against the shipped 300 ms (a loaded hub then missed placing the grant at all).
hold33, rev33b, rev34, rev34b, rev38b and rev38f now walk that path. This file keeps the
path they left pinned beside it: a grant whose answer really comes after the till's own
deadline (the hub answers once the call's deadline has passed) leaves the till and the
hub as the hub's DEADLINE_EXCEEDED does: the Hold priced OFFLINE at the offline limit,
the grant shrunk to it by the Hold's own call, released at the Cancel. Were the till to
read the two differently, hold33's tests would no longer check what a late answer does.

Real parts: the reference hub on 127.0.0.1 (SQLite), its AuthorizeRedemption answering
late; tills with their hub links and ledgers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import FAST, LoopbackHub

from .conftest import enrolled_till
from .test_review33_hold33 import (
    OFFLINE_LIMIT,
    SURE,
    a_receipt,
    coupon_holds,
    held_at_hub,
    hold33_hub,
    late,
    life,
)

__all__ = ["late"]  # hold33's fixture

# The till whose answer really comes late waits 2 s: its request must reach the hub, and
# the grant be placed, within that on a loaded machine.
REALLY_LATE = replace(FAST, redeem_timeout_s=2.0)


@pytest.fixture
def past_its_deadline(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set: the hub places the grant, then answers only once the call's deadline at the
    hub has passed and the call has ended there (up to 20 s): the till has stopped
    waiting by then. (The deadline's passing alone was not enough on a loaded machine:
    gRPC's timers fire late there, and a reply sent just past the deadline was taken in
    time, ONLINE, both sides agreeing on the whole grant.)"""
    granted = HubServicer.AuthorizeRedemption
    event = threading.Event()

    def answers_after_it(self: Any, request: Any, context: Any) -> Any:
        reply = granted(self, request, context)
        if event.is_set():
            end = time.monotonic() + 20
            while (context.time_remaining() or 0) > 0 or context.is_active():
                assert time.monotonic() < end, "the call never ended at the hub"
                time.sleep(0.01)
        return reply

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", answers_after_it)
    return event


@pytest.fixture(params=["sqlite"])
def hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    late: threading.Event,
    past_its_deadline: threading.Event,
) -> Iterator[LoopbackHub]:
    """hold33's hub (a coupon offer, an offline limit of 200 points a day); both ways of a
    late answer wrapped around its AuthorizeRedemption before it starts."""
    h = hold33_hub(request, tmp_path)
    yield h
    h.stop()


@pytest.mark.parametrize("how", ["answered-past-the-deadline", "deadline-exceeded-at-once"])
def test_a_late_answer_and_the_hubs_deadline_exceeded_leave_the_same_hold(
    hub: LoopbackHub,
    tmp_path: Path,
    late: threading.Event,
    past_its_deadline: threading.Event,
    how: str,
) -> None:
    """CONTRACT §11: the hub grants Anna's 1200 points and APP555; the answer comes after
    the till's deadline (or is the hub's DEADLINE_EXCEEDED at once, hold33's `late`). Either
    way the Hold is priced OFFLINE at the offline limit with the code applied, the Hold's
    own call shrinks the hub's hold to 200 and the code, and the Cancel releases both."""
    really = how == "answered-past-the-deadline"
    a = enrolled_till(hub, tmp_path / "a", "a", timings=REALLY_LATE if really else SURE)
    event = past_its_deadline if really else late
    try:
        event.set()
        try:
            held = a.agent.hold(a_receipt("late-1", "APP555"))
        finally:
            event.clear()
        assert (held.state, held.mode, held.redeemed_points) == ("HELD", "OFFLINE", OFFLINE_LIMIT)
        assert [(v.code, v.status) for v in held.coupons] == [("APP555", "APPLIED")]
        assert held_at_hub(hub) == OFFLINE_LIMIT  # shrunk by the Hold's own call
        assert coupon_holds(hub) == [("APP555", "late-1")]
        assert life(a, "late-1") == ("HELD", "OFFLINE", OFFLINE_LIMIT, 1)
        a.authoriser.timeout_s = SURE.redeem_timeout_s  # the Cancel's release reaches it
        assert a.agent.cancel("late-1").state == "CANCELLED"
        assert held_at_hub(hub) == 0 and coupon_holds(hub) == []
        assert life(a, "late-1") == ("CANCELLED", "OFFLINE", OFFLINE_LIMIT, 0)
    finally:
        a.stop()
