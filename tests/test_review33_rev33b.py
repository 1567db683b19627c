"""Review 33 (rev33b): the hub's `ShrinkRedemption` of a late grant (CONTRACT §11, §13).

hold33 made a till that priced a Hold OFFLINE after the hub's grant came past its
deadline ask the hub to shrink that grant to what the OFFLINE hold uses. The hub keeps
one hold a (till, receiptId) and the shrink names only the receipt, so a shrink that
reaches the hub's store after the till gave up on it (its 300 ms deadline) could shrink
a hold placed since under the same receiptId: the till, its call timed out, takes the
receipt's next turn (the old hold expired, the POS holds the receipt again, ONLINE) and
the hub's hold of the new Hold is then cut to the old one's points and codes, so another
till can spend the points the new Hold redeems.

Real parts: the reference hub on 127.0.0.1 (SQLite, and PostgreSQL in the slow pass),
tills with their hub links; the hub's own ShrinkRedemption, held back in the server
before it runs, as a hub whose store is busy does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.authoriser import HubUnavailable
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub

from .conftest import ManualClock
from .test_review33_hold33 import (
    OFFLINE_LIMIT,
    SURE_S,
    TTL_S,
    a_receipt,
    coupon_holds,
    first_at,
    held_at_hub,
    hold33_hub,
    hold33_till,
    late,
    life,
)

__all__ = ["late", "stalled_hub_call"]  # shared with hold33 and rel33


class Stall:
    """While `on` is set, the hub's stalled call (`stalled_hub_call`) waits for `go` before
    it runs (the server thread has the call; the store has not seen it), as a busy hub's
    does."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.entered = threading.Event()  # a call is held back
        self.go = threading.Event()
        self.done = threading.Event()


def stalled_hub_call(monkeypatch: pytest.MonkeyPatch, method: str) -> Iterator[Stall]:
    """`HubServicer.<method>` held back while the yielded Stall's `on` is set (a fixture's
    body: rel33 stalls ReleaseRedemption as this file stalls ShrinkRedemption)."""
    s = Stall()
    call = getattr(HubServicer, method)

    def stalled(self: Any, request: Any, context: Any) -> Any:
        held_back = s.on.is_set()
        try:
            if held_back:
                s.entered.set()
                assert s.go.wait(10)
            return call(self, request, context)
        finally:
            if held_back:
                s.done.set()

    monkeypatch.setattr(HubServicer, method, stalled)
    yield s
    s.go.set()


@pytest.fixture
def stall(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stall]:
    yield from stalled_hub_call(monkeypatch, "ShrinkRedemption")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(
    request: pytest.FixtureRequest, tmp_path: Path, late: threading.Event, stall: Stall
) -> Iterator[LoopbackHub]:
    """hold33's hub (a coupon offer, a 600 s hold TTL, an offline limit of 200 points a
    day): AuthorizeRedemption answers late while `late` is set, ShrinkRedemption is held
    back while `stall.on` is (the servicer's methods are taken when it starts)."""
    h = hold33_hub(request, tmp_path)
    yield h
    h.stop()


def test_a_shrink_the_till_gave_up_on_never_shrinks_the_next_hold_of_the_receipt(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event, stall: Stall
) -> None:
    """CONTRACT §11: hold H1 of receipt R is priced OFFLINE after a late grant; its shrink
    is held up at the hub past the till's deadline (the till counts it as not sent). H1
    expires, is released, and R is held again ONLINE (H2: 1200 points held at the hub).
    The old shrink then reaches the hub's store: it must leave H2's hold whole (before
    the fix it cut it to H1's 200 points, and another till's receipt got 1000 of the
    points H2 redeems)."""
    clock = ManualClock(datetime.now(UTC))
    a = hold33_till(hub, tmp_path / "a", "a", clock=clock)
    b = hold33_till(hub, tmp_path / "b", "b")
    shrink = a.authoriser.shrink

    def given_up(*args: Any) -> Any:
        # H1's shrink waits 1 s: the till gives up on it while the hub holds it back. Its
        # grant and H2's hold wait 10 s (review 41, flake41: at the shipped 300 ms a loaded
        # machine placed H1's grant cut, or priced H2 OFFLINE; and the shrink could reach
        # the hub after the test stopped holding calls back: `stall.entered`)
        a.authoriser.timeout_s = 1.0
        try:
            return shrink(*args)
        finally:
            a.authoriser.timeout_s = SURE_S

    a.authoriser.shrink = given_up  # type: ignore[method-assign]
    try:
        stall.on.set()
        late.set()
        try:
            first = a.agent.hold(a_receipt("late-r", at=clock()))
        finally:
            late.clear()
        assert (first.mode, first.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
        assert life(a, "late-r")[3] == 2  # the shrink timed out at the till: still owed
        assert stall.entered.wait(10)  # and is held back at the hub
        stall.on.clear()
        clock.advance(TTL_S + 1)
        assert a.agent.sweep_holds() == 1  # H1 expired: released at the hub
        again = a.agent.hold(a_receipt("late-r", at=first_at(first)))
        assert (again.state, again.mode, again.redeemed_points) == ("HELD", "ONLINE", 1200)
        assert held_at_hub(hub) == 1200
        stall.go.set()  # H1's shrink reaches the hub's store now
        assert stall.done.wait(10)
        assert held_at_hub(hub) == 1200  # H2's hold, whole
        assert b.agent.checkout(a_receipt("b-r")).redeemed_points == 0
    finally:
        a.stop()
        b.stop()


def test_a_shrink_touches_only_holds_placed_before_it_came(hub: LoopbackHub) -> None:
    """CONTRACT §11, §13: the hub shrinks only the hold and coupon holds of the receipt
    placed before the shrink came (`placed_by`), the second of its two guards against a
    late shrink. A hold placed again under the receiptId after that (the receipt held
    again, its hold at the hub replaced in place) is left whole, points and codes."""
    rules = hub.store
    t0 = datetime.now(UTC)
    rules.authorise("a", "r-1", "c-1", 1000, t0, [], t0, 600)  # H1
    shrink_came = t0 + timedelta(seconds=1)
    t2 = t0 + timedelta(seconds=2)
    rules.authorise("a", "r-1", "c-1", 900, t2, [], t2, 600)  # H2, the same row replaced
    assert rules.hold_coupons("a", "r-1", "c-1", ["APP555"], t2, 600) == []
    assert rules.shrink("a", "r-1", 200, [], placed_by=shrink_came) is False
    assert held_at_hub(hub) == 900
    assert coupon_holds(hub) == [("APP555", "r-1")]
    # one placed before it came is shrunk
    assert rules.shrink("a", "r-1", 200, [], placed_by=t2) is True
    assert held_at_hub(hub) == 200 and coupon_holds(hub) == []


def test_a_till_with_a_short_hub_deadline_still_shrinks(hub: LoopbackHub, tmp_path: Path) -> None:
    """CONTRACT §11: `hub.redeem_timeout_ms` may be set below the hub's 100 ms margin (80
    ms here, a hub on the same LAN): the shrink still reaches a hub that answers at once
    (the till gives the call its deadline plus that margin), rather than being refused as
    late every round while the grant stays held whole."""
    a = hold33_till(hub, tmp_path / "a", "a")
    try:
        now = datetime.now(UTC)
        hub.store.authorise(a.authoriser.device_id, "r-f", "c-1", 1000, now, [], now, 600)
        a.authoriser.timeout_s = 0.08
        # Review 41 (flake41): 180 ms for a call is missed on a loaded machine (the hub
        # then refuses it as late, rightly); tried up to 20 times. The fault (the call given
        # 80 ms, under the hub's 100 ms margin) was refused every time.
        shrunk: bool | None = None
        for _ in range(20):
            try:
                shrunk = a.authoriser.shrink("r-f", 200, [])
            except HubUnavailable:
                continue
            if shrunk is not None:
                break
        assert shrunk is True
        assert held_at_hub(hub) == 200
    finally:
        a.stop()


def test_hub_calls_still_owed_are_on_metrics(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event
) -> None:
    """CONTRACT §11: a shrink (or a release) the hub has not taken yet keeps the
    customer's points held from every till until it goes: support sees how many are
    owed on /metrics (`tillpoint_hub_calls_owed`), not only in an INFO log line."""
    from tillpoint.agent.errors import StorageError
    from tillpoint.agent.metrics import Registry
    from tillpoint.agent.server import register_gauges

    refusing = threading.Event()

    def failpoint(where: str) -> None:
        if where == "shrink" and refusing.is_set():
            raise StorageError("the hub's store is busy")

    hub.server.servicer.failpoint = failpoint
    a = hold33_till(hub, tmp_path / "a", "a")
    registry = Registry()
    register_gauges(registry, a.agent)
    try:
        assert 'tillpoint_hub_calls_owed{call="shrink"} 0' in registry.render()
        refusing.set()
        late.set()
        try:
            held = a.agent.hold(a_receipt("late-m"))
        finally:
            late.clear()
        assert (held.mode, life(a, "late-m")[3]) == ("OFFLINE", 2)
        assert a.agent.hub_calls_owed() == {"release": 0, "shrink": 1}
        assert 'tillpoint_hub_calls_owed{call="shrink"} 1' in registry.render()
        refusing.clear()
        a.agent.retry_hub_releases()
        assert a.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
        hub.stop()  # away: the Cancel's release is owed
        a.agent.cancel("late-m")
        assert a.agent.hub_calls_owed() == {"release": 1, "shrink": 0}
    finally:
        a.stop()


def test_a_shrink_that_finds_the_hold_in_its_turn_is_asked_again_when_the_turn_ends(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event
) -> None:
    """CONTRACT §11: the Hold wakes `run`'s hold timer from inside its write transaction;
    a round that gets to the shrink before the Hold's turn has ended (the Hold's thread
    has not left `HubTurns.holding` yet) finds the turn taken and sends nothing. The
    turn's end then asked for a release only (none is owed: the hold is open), so the
    shrink waited for the next round, 15 s, while the hub held the whole grant. Now the
    turn's end wakes the timer again."""
    a = hold33_till(hub, tmp_path / "a", "a")
    woken = threading.Event()
    a.agent.on_hub_call_owed(woken.set)  # as `run`'s hold timer does
    try:
        late.set()
        try:
            held = a.agent.hold(a_receipt("late-p"))
        finally:
            late.clear()
        assert held.mode == "OFFLINE" and woken.is_set()
        woken.clear()
        with a.agent._hub_turns.holding("late-p"):  # the Hold's turn, not ended yet
            assert a.agent._shrink_at_hub("late-p") is None  # the round: turn taken
        assert woken.is_set()  # asked again at once
        a.agent.retry_hub_releases()  # that round
        assert held_at_hub(hub) == OFFLINE_LIMIT
        assert life(a, "late-p")[3] == 1
    finally:
        a.stop()
