"""Review 39 (flake39): a late grant that reaches the hub's store after the Cancel's release
(CONTRACT §11, §9, §13).

Review 33's store soak (three tills on one PostgreSQL hub) once found a hold left ACTIVE
at the hub after the tills had drained, under heavy load. The race: a Hold's request to
the hub is taken by the hub before the till's 300 ms deadline, then held up on the way
to the hub's store (a busy hub: the process descheduled, the store's connection slow);
the till prices the Hold OFFLINE, answers the POS, and the POS cancels at once. The
Cancel's release reaches the hub first and finds nothing held (answered `released:
false`), and the till took that as done. The grant then reaches the store, and the hub
keeps a grant made past the deadline for the OFFLINE hold (at most the offline limit,
and its coupon codes, review 34/36): no one released it, so the customer's points and
codes stayed held from every other till for the hold's whole time, `holdTtlSeconds` + 60
s (31 minutes). Now a release the hub answers "nothing held" for a hold priced OFFLINE
after asking it stays owed, and is sent again at the hold timer's rounds, while its grant
may still come (`LATE_GRANT_S` after the hold was placed).

Real parts: the reference hub on 127.0.0.1 (SQLite, and PostgreSQL in the slow pass),
tills with their hub links; the hub's store held back on the grant's way to it, as a busy
hub's is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub

from .conftest import ANSWERED_S, ManualClock, answered, enrolled_till, held_back_timings
from .test_review33_hold33 import (
    OFFLINE_LIMIT,
    a_receipt,
    coupon_holds,
    held_at_hub,
    hold33_hub,
    life,
)


class HeldBack:
    """While `on` is set, the hub's store takes an authorisation only once `go` is set
    (the hub's gRPC thread has the call, past its deadline check; the store has not seen
    it); `done` once it has placed it."""

    DEADLINE_WAIT_S = 20.0  # how long `past_its_deadline` waits at most

    def __init__(self) -> None:
        self.on = threading.Event()
        self.entered = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()
        self._calls: dict[int, Any] = {}  # the hub's thread: its call's gRPC context

    def past_its_deadline(self) -> None:
        """In the hub's thread of a held-back call: wait (up to `DEADLINE_WAIT_S`) until that call's
        deadline at the hub has passed. The hub counts it from the request's arrival, so it
        may end after the till stopped waiting (by the time the request took to reach the
        hub's gRPC thread: on a loaded machine, more than the test's steps take)."""
        context = self._calls.get(threading.get_ident())
        if context is None:
            return
        end = time.monotonic() + self.DEADLINE_WAIT_S
        while (context.time_remaining() or 0) > 0:
            assert time.monotonic() < end, "the held-back call's deadline never passed"
            time.sleep(0.01)


@pytest.fixture
def held_back(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldBack]:
    """The hub's AuthorizeRedemption says when it has ended (`done`) while `on` is set
    (the servicer's methods are taken when it starts: before the hub)."""
    h = HeldBack()
    answer = HubServicer.AuthorizeRedemption

    def answered(self: Any, request: Any, context: Any) -> Any:
        on = h.on.is_set()
        h._calls[threading.get_ident()] = context
        try:
            return answer(self, request, context)
        finally:
            h._calls.pop(threading.get_ident(), None)
            if on:
                h.done.set()

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", answered)
    yield h
    h.go.set()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    held_back: HeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LoopbackHub]:
    """hold33's hub (a coupon offer, a 600 s hold TTL, an offline limit of 200 points);
    while `held_back.on` is set its store takes an authorisation only once `go` is set."""
    h = hold33_hub(request, tmp_path)
    authorise = h.store.authorise

    def on_its_way(*args: Any, **kwargs: Any) -> Any:
        if held_back.on.is_set():
            held_back.entered.set()
            assert held_back.go.wait(10)
            held_back.past_its_deadline()  # the grant lands late, as the tests mean
        return authorise(*args, **kwargs)

    monkeypatch.setattr(h.store, "authorise", on_its_way)
    yield h
    held_back.go.set()
    h.stop()


def cancelled_before_its_grant(hub: LoopbackHub, a: Any, held_back: HeldBack, rid: str) -> None:
    """A Hold of c-1's card with APP555, its grant held back on its way to the hub's
    store; priced OFFLINE at the deadline; cancelled at once; then the grant lands."""
    held_back.on.set()
    held = a.agent.hold(a_receipt(rid, "APP555"))
    assert (held.state, held.mode, held.redeemed_points) == ("HELD", "OFFLINE", OFFLINE_LIMIT)
    assert held_back.entered.is_set()
    a.agent.cancel(rid)  # its release reaches the hub first: nothing held there yet
    assert held_at_hub(hub) == 0
    held_back.go.set()
    assert held_back.done.wait(10)
    held_back.on.clear()


def past_the_deadline(where: str) -> None:
    if where == "authorize":
        time.sleep(0.5)  # the till's deadline is 300 ms: the hub places nothing


def test_a_grant_that_lands_after_the_cancels_release_is_released_at_the_next_round(
    hub: LoopbackHub, tmp_path: Path, held_back: HeldBack
) -> None:
    """CONTRACT §11: the hold is cancelled before its late grant reaches the hub's store.
    The hub then holds what it keeps of a late grant (the offline limit, 200 points, and
    APP555) for this cancelled receipt. The till's next round releases it: another till's
    receipt of the customer gets all 1200 points and the code (before the fix the till
    took the first release for done, and both stayed held for ~31 minutes)."""
    # a's call must reach the hub's store (`HELD_BACK_S`); b's hold needs the answer
    a = enrolled_till(hub, tmp_path / "a", "a", timings=held_back_timings())
    b = enrolled_till(hub, tmp_path / "b", "b", timings=answered())
    try:
        cancelled_before_its_grant(hub, a, held_back, "gone-1")
        assert held_at_hub(hub) == OFFLINE_LIMIT  # the late grant, kept for the offline hold
        assert coupon_holds(hub) == [("APP555", "gone-1")]
        assert life(a, "gone-1")[:2] == ("CANCELLED", "OFFLINE")
        assert a.agent.hub_calls_owed()["release"] == 1  # still owed: its grant may come
        a.agent.retry_hub_releases()  # the hold timer's round
        assert held_at_hub(hub) == 0
        assert coupon_holds(hub) == []
        assert life(a, "gone-1")[3] == 0  # released: nothing more to send
        assert a.agent.hub_calls_owed()["release"] == 0
        other = b.agent.hold(a_receipt("b-1", "APP555"))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 1200)
        assert [c["status"] for c in other.to_json()["coupons"]] == ["APPLIED"]
    finally:
        a.stop()
        b.stop()


def test_a_release_answered_nothing_held_is_sent_again_only_while_a_grant_may_come(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11: a Hold priced OFFLINE after asking the hub (the hub took the request
    only past the deadline, so it placed nothing: no grant ever comes) and cancelled: its
    release, answered "nothing held", stays owed while a late grant could still reach the
    hub's store (`LATE_GRANT_S` after the hold), sent again at each round, then is done.
    An ONLINE hold's release is done at its first answer."""
    from tillpoint.agent.service import LATE_GRANT_S

    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(hub, tmp_path / "a", "a", clock=clock)
    try:
        # the hub takes the request only past the till's deadline: it places nothing
        hub.server.servicer.failpoint = past_the_deadline
        held = a.agent.hold(a_receipt("away-1", at=clock()))
        hub.server.servicer.failpoint = None
        assert (held.mode, held.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
        # the releases need the hub's answers, not the 300 ms deadline (`ANSWERED_S`): a
        # release answered late stays owed whatever the window (review 47, late47)
        a.authoriser.timeout_s = ANSWERED_S
        a.agent.cancel("away-1")  # the hub answers: nothing held, but a grant may still come
        assert life(a, "away-1")[3] != 0
        a.agent.retry_hub_releases()  # sent again: the same answer, still owed
        assert life(a, "away-1")[3] != 0
        clock.advance(LATE_GRANT_S + 1)
        a.agent.retry_hub_releases()  # no grant can come now: done
        assert life(a, "away-1")[3] == 0
        assert a.agent.hub_calls_owed()["release"] == 0
        # ONLINE: the grant was placed before the hold was stored; one release is enough
        # (this hold needs the hub's answer, not the 300 ms deadline: `ANSWERED_S`)
        online = a.agent.hold(a_receipt("on-1", at=clock()))
        assert online.mode == "ONLINE"
        a.agent.cancel("on-1")
        assert life(a, "on-1")[3] == 0 and held_at_hub(hub) == 0
    finally:
        a.stop()
