"""Review 44 (hold44): a Hold that asked the hub twice, cancelled between its two grants
(CONTRACT §11, §9).

Review 33's store soak (three tills, one PostgreSQL hub, deltas published every 2-4 s)
left a 5-point hold ACTIVE at the hub after the tills had drained (seeds 1093061512 and
others, under load: `holds left at the hub: [('till-b', 'till-b-r-564', 5)]`). The till's
ledger had the receipt CANCELLED, OFFLINE, its release done (`hub_hold` 0), and its log
no "nothing held at the hub yet": the Cancel's release had been answered `released:
true`. The cause: one Hold may send the hub more than one request (its early pricing,
then its pricing again inside the write transaction when a delta or a ledger change came
between them, or a request again for a coupon that comes to apply). The first request was
granted (a hold at the hub); the second, sent with the deadline's rest, was not answered
in time, so the Hold was priced OFFLINE; the Cancel's release dropped the first grant
(true: taken as done), and the second request's grant then reached the hub's store and
was kept (up to the offline limit) for the cancelled receipt, held from every other till
for `holdTtlSeconds` + 60 s. Review 39 (flake39) kept a release owed only while the hub
answered "nothing held"; a release that dropped a hold is no sign that no other request
of the Hold is still on its way. Now the release of a hold priced OFFLINE after asking
the hub stays owed for `LATE_GRANT_S` after the hold, whatever the hub answers, and is
sent again at the hold timer's rounds (so is the shrink of an open one).

Real parts: the reference hub on 127.0.0.1 (SQLite; PostgreSQL in the slow pass), tills
with their hub links. Forced: the early pricing taken as stale (`Agent._still`, as a delta
applied between the two pricings makes it), and the second request held back on its way
to the hub's store until past its deadline, as a busy hub holds it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.service import LATE_GRANT_S, Agent
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import FAST, LoopbackHub

from .conftest import ManualClock, enrolled_till
from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, held_at_hub, hold33_hub, life
from .test_review39_flake39 import HeldBack

# The first request must be answered in time on a loaded machine: a till that waits 3 s.
TIMINGS = replace(FAST, redeem_timeout_s=3.0)


class SecondHeldBack(HeldBack):
    """The hub's store takes a receipt's second authorisation only once `go` is set and the
    call's deadline at the hub has passed (`entered` once it waits, `done` once the hub has
    answered it: placed, and cut past the deadline to the offline limit); flake39's
    `HeldBack` with a count of each receipt's calls instead of its `on`."""

    DEADLINE_WAIT_S = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.held: set[int] = set()  # the hub's threads of held-back calls


@pytest.fixture
def second(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecondHeldBack]:
    h = SecondHeldBack()
    answer = HubServicer.AuthorizeRedemption

    def answered(self: Any, request: Any, context: Any) -> Any:
        h._calls[threading.get_ident()] = context
        try:
            return answer(self, request, context)
        finally:
            h._calls.pop(threading.get_ident(), None)
            if threading.get_ident() in h.held:  # answered: its cut past the deadline made
                h.done.set()

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", answered)
    yield h
    h.go.set()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LoopbackHub]:
    yield from second_held_hub(request, tmp_path, second, monkeypatch)


def second_held_hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LoopbackHub]:
    """A hub whose store holds a receipt's second authorisation back until `second.go`,
    then answers it past its deadline (review 44's rev44h uses it too)."""
    h = hold33_hub(request, tmp_path)
    authorise = h.store.authorise

    def on_its_way(device: str, receipt_id: str, *args: Any, **kwargs: Any) -> Any:
        n = second.calls[receipt_id] = second.calls.get(receipt_id, 0) + 1
        if n == 2:
            second.held.add(threading.get_ident())
            second.entered.set()
            assert second.go.wait(30)
            second.past_its_deadline()
        return authorise(device, receipt_id, *args, **kwargs)

    monkeypatch.setattr(h.store, "authorise", on_its_way)
    yield h
    second.go.set()
    h.stop()


def held_twice(
    a: Any, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch, rid: str, at: datetime
) -> None:
    """A Hold of Anna's 1200 whose early pricing is granted (1200 held at the hub) and then
    taken as stale (a delta came): priced again, its second request held back past the
    deadline, so the Hold is priced OFFLINE (the offline limit, 200; the first grant
    shrunk to that)."""
    with monkeypatch.context() as m:
        m.setattr(Agent, "_still", lambda self, early, view: False)
        held = a.agent.hold(a_receipt(rid, at=at))
    assert second.calls.get(rid) == 2 and second.entered.is_set()
    assert (held.state, held.mode, held.redeemed_points) == ("HELD", "OFFLINE", OFFLINE_LIMIT)


def owed_then_released_for_another_till(hub: LoopbackHub, a: Any, b: Any) -> None:
    """After the late grant landed: `a`'s release is still owed, its next round releases
    the grant, and another till `b` then gets all of Anna's 1200 points online."""
    assert a.agent.hub_calls_owed()["release"] == 1  # still owed: a grant may come
    a.agent.retry_hub_releases()  # the hold timer's round
    assert held_at_hub(hub) == 0
    other = b.agent.hold(a_receipt("b-1"))
    assert (other.mode, other.redeemed_points) == ("ONLINE", 1200)


def test_a_release_that_dropped_the_first_grant_stays_owed_for_the_second(
    hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11: the Cancel's release drops the first request's grant (the hub answers
    `released: true`), then the second request's grant lands and is kept for the OFFLINE
    hold (200). The till's next round releases it: another till then gets all 1200 ONLINE.
    Before the fix the till took the first answer for done, and the 200 stayed held at
    the hub for `holdTtlSeconds` + 60 s."""
    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS)
    b = enrolled_till(hub, tmp_path / "b", "b", timings=TIMINGS)
    try:
        held_twice(a, second, monkeypatch, "twice-1", datetime.now(UTC))
        # the first request's grant, shrunk to what the OFFLINE hold uses (the Hold sends
        # the shrink itself: no hold timer here)
        assert held_at_hub(hub) == OFFLINE_LIMIT
        a.agent.cancel("twice-1")  # drops it: answered true
        assert held_at_hub(hub) == 0
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(hub) == OFFLINE_LIMIT  # the second grant, kept past the deadline
        assert life(a, "twice-1")[:2] == ("CANCELLED", "OFFLINE")
        owed_then_released_for_another_till(hub, a, b)
    finally:
        a.stop()
        b.stop()


def test_an_offline_holds_release_is_done_once_no_grant_can_come(
    hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11: the release answered true stays owed while a grant may still come
    (`LATE_GRANT_S` after the hold), sent again at each round, then is done (the owed
    count back to 0); an ONLINE hold's release is done at its first answer, as before."""
    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS, clock=clock)
    try:
        held_twice(a, second, monkeypatch, "twice-2", clock())
        a.agent.cancel("twice-2")
        assert life(a, "twice-2")[3] != 0  # dropped the first grant, still owed
        a.agent.retry_hub_releases()
        assert life(a, "twice-2")[3] != 0
        second.go.set()
        assert second.done.wait(30)
        clock.advance(LATE_GRANT_S + 1)
        a.agent.retry_hub_releases()  # releases the late grant; none can come now: done
        assert life(a, "twice-2")[3] == 0
        assert a.agent.hub_calls_owed()["release"] == 0
        assert held_at_hub(hub) == 0
        online = a.agent.hold(a_receipt("on-2", at=clock()))
        assert online.mode == "ONLINE"
        a.agent.cancel("on-2")
        assert life(a, "on-2")[3] == 0 and held_at_hub(hub) == 0
    finally:
        a.stop()
