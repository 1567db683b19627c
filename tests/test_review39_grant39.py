"""Review 39 (grant39): a late grant must not replace a newer hold of the same receipt at
the hub (CONTRACT §11). An AuthorizeRedemption whose call came to the hub (its clock then:
the `now` the server hands the store) before the receipt's ACTIVE hold, or a coupon hold
of it, was placed writes nothing: `Superseded`, answered DEADLINE_EXCEEDED ("the till
stopped waiting", what the hub answers a call its till gave up on; the till prices such a
call OFFLINE). The till-to-hub walk is rev39i's
`test_a_late_grant_landing_after_the_expired_receipt_was_held_again_online` (a strict
xfail until this fix). Each test marked "failed before the fix" did.

Real parts: a real SQLite file and a real PostgreSQL database (`hub_store_factory`'s
param), the store's own `authorise`, `hold_coupons` and `claim_hold`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_rules import CallerGone, Superseded
from tillpoint.sync.hub_store import Unsynced
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data

from . import test_review39_flake39 as flake39
from .conftest import SteppingClock
from .test_hub_claim import NOW, tx
from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, coupon_holds, held_at_hub
from .test_review39_flake39 import HeldBack
from .test_review39_rev39i import late_hold, stepping_till

held_back = flake39.held_back  # says when the hub's AuthorizeRedemption has ended

TTL_S = 600.0


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    store = hub_store_factory()  # SQLite and PostgreSQL
    import_doc(store, sample_master_data())
    store.publish(NOW, 7 * 86400.0)
    return store


def held(store: Any) -> int:
    return int(store.balance("c-1", NOW).held)


def hold(
    store: Any, receipt: str, points: int, came: datetime, unsynced: list[Unsynced] | None = None
) -> Any:
    """An AuthorizeRedemption of till-a that came to the hub at `came`."""
    return store.authorise("till-a", receipt, "c-1", points, NOW, unsynced or [], came, TTL_S)


def test_a_grant_whose_call_came_before_the_receipts_newer_hold_writes_nothing(
    store: Any,
) -> None:
    """CONTRACT §11. The receipt's hold of 1200 points was placed by a call that came at
    t+1 s; a call of the same receipt that came at t (its store work held up) then asks
    for 200: nothing is written, the newer hold stays whole. Failed before the fix: it
    replaced the newer hold with its 200 (another till could spend the other 1000)."""
    first = datetime.now(UTC)
    newer = hold(store, "r-1", 1200, first + timedelta(seconds=1))
    assert newer.authorised == 1200
    with pytest.raises(Superseded):
        hold(store, "r-1", 200, first)
    assert held(store) == 1200
    # a Superseded call is one the till stopped waiting for (the server's mapping)
    assert issubclass(Superseded, CallerGone)


def test_a_late_grant_with_the_tills_unsent_movements_writes_nothing_either(store: Any) -> None:
    """CONTRACT §11, the authorisation under the customer's lock (the till's unsent
    movements): the same. Failed before the fix: the newer hold was replaced, and the
    unsent spend's hold written."""
    first = datetime.now(UTC)
    assert hold(store, "r-1", 1000, first + timedelta(seconds=1)).authorised == 1000
    with pytest.raises(Superseded):
        hold(store, "r-1", 100, first, [Unsynced(1, "r-0", -50)])
    assert held(store) == 1000  # nor the unsent spend's 50


def test_a_call_that_came_after_the_hold_still_replaces_it(store: Any) -> None:
    """CONTRACT §9, §11 (checked, found right): a later call of the receipt (a Checkout
    of the held receipt, a Hold again) replaces its hold as before, and one that came at
    the same instant as the hold too."""
    first = datetime.now(UTC)
    assert hold(store, "r-1", 1200, first).authorised == 1200
    assert hold(store, "r-1", 300, first).authorised == 300  # the same instant
    assert hold(store, "r-1", 500, first + timedelta(seconds=1)).authorised == 500
    assert held(store) == 500


def test_a_late_call_of_a_committed_receipt_still_answers_nothing_granted(store: Any) -> None:
    """CONTRACT §11 (checked, found right): a receipt already stored at the hub answers 0
    granted, as before, whatever the hold's stamps."""
    first = datetime.now(UTC)
    hold(store, "till-a-1", 400, first + timedelta(seconds=1))
    store.ingest("till-a", "", [tx("till-a", 1, "c-1", -400)], NOW)
    assert hold(store, "till-a-1", 200, first).authorised == 0


def test_a_late_calls_coupon_holds_never_replace_the_newer_holds(store: Any) -> None:
    """CONTRACT §13, §11. The newer call held code NEW-1 for the receipt; the late call's
    codes (OLD-1) arrive after: nothing is written, NEW-1 stays held for the receipt.
    Failed before the fix: the receipt's coupon holds were replaced by the late call's,
    and NEW-1 was free for another receipt to use while this till's receipt used it."""
    first = datetime.now(UTC)
    later = first + timedelta(seconds=1)
    hold(store, "r-1", 300, later)
    assert store.hold_coupons("till-a", "r-1", "c-1", ["NEW-1"], later, TTL_S) == []
    with pytest.raises(Superseded):
        store.hold_coupons("till-a", "r-1", "c-1", ["OLD-1"], later, TTL_S, arrived=first)
    # another receipt finds NEW-1 held, OLD-1 free
    got = store.hold_coupons("till-b", "r-9", "c-1", ["NEW-1", "OLD-1"], later, TTL_S)
    assert got == ["NEW-1"]
    # the call's own points hold (stamped at its arrival) does not stop its codes
    assert hold(store, "r-2", 100, later).authorised == 100
    assert store.hold_coupons("till-a", "r-2", "c-1", ["TWO-1"], later, TTL_S, arrived=later) == []


# ------------------------- the grant placed, held up on its way back from the store


@pytest.mark.parametrize("codes", [(), ("APP555",)])
def test_a_grant_held_up_after_the_store_never_cuts_the_receipts_newer_hold(
    tmp_path: Path,
    held_back: HeldBack,
    monkeypatch: pytest.MonkeyPatch,
    codes: tuple[str, ...],
) -> None:
    """CONTRACT §11, rev39i's walk with the delay after the store: a Hold's grant is
    placed at the hub but its answer is held up on the way back (the till prices OFFLINE,
    200 points); the hold expires 31 s later (30 s TTL) and the POS holds the receipt
    again: ONLINE, 1200 points, replacing the first grant at the hub. The first call then
    goes on, past its deadline, and cuts what it placed to the offline limit. Failed
    before the fix (without a coupon code): the cut took every hold stamped before the
    call's LAST clock reading, the newer hold among them (1200 cut to 200). With a code,
    its coupon holds would have replaced the newer call's."""
    from tillpoint.sync.loopback import sample_master_data

    from .test_review33_hold33 import COUPONS, SORRY

    data = sample_master_data() | {"offers": [SORRY], "coupons": COUPONS}
    data["program"]["holdTtlSeconds"] = 30
    data["program"]["offlineRedeemLimitPoints"] = OFFLINE_LIMIT
    the_hub = LoopbackHub(tmp_path / "hub", data=data)
    authorise = the_hub.store.authorise

    def back_on_its_way(*args: Any, **kwargs: Any) -> Any:
        granted = authorise(*args, **kwargs)
        if held_back.on.is_set():  # the first authorisation only
            held_back.on.clear()
            held_back.entered.set()
            assert held_back.go.wait(10)
            held_back.past_its_deadline()  # it goes on past its deadline
        return granted

    monkeypatch.setattr(the_hub.store, "authorise", back_on_its_way)
    clock = SteppingClock(datetime.now(UTC))
    try:
        with stepping_till(the_hub, tmp_path / "a", clock) as agent:
            at = clock()
            held_back.on.set()
            held = late_hold(agent, a_receipt("gone-2", *codes, at=at))
            assert (held.mode, held.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
            clock.passes(31)
            agent.sweep_holds()
            again = agent.hold(a_receipt("gone-2", *codes, at=at))
            assert (again.state, again.mode, again.redeemed_points) == ("HELD", "ONLINE", 1200)
            held_back.go.set()  # the first call goes on, past its deadline
            assert held_back.done.wait(10)
            assert held_at_hub(the_hub) == 1200, "the late call cut the newer hold"
            assert coupon_holds(the_hub) == [(c, "gone-2") for c in codes]
            assert agent.confirm("gone-2").state == "CONFIRMED"
    finally:
        held_back.go.set()
        the_hub.stop()
