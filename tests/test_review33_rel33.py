"""Review 33 (rel33): a late `ReleaseRedemption` never drops a hold placed since (CONTRACT §11).

The hub keeps one hold a (till, receiptId) and a release names only the receipt. A
release the till gave up on (its deadline passed while the call was held up at a busy
hub: the till counts it as not sent, owed) could still reach the hub's store later,
after the POS held the receipt again ONLINE, and drop that new hold: the till's new
Hold redeems points the hub no longer holds, and another till can spend them. The hub
now guards releases as it guards shrinks (rev33b): worked on only while the till still
waits, and only on holds placed before the call came.

Real parts: the reference hub on 127.0.0.1 (SQLite, and PostgreSQL in the slow pass),
tills with their hub links; the hub's own ReleaseRedemption, held back in the server
before it runs, as a hub whose store is busy does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent.errors import HubUnavailable
from tillpoint.sync.loopback import LoopbackHub, receipt

from .conftest import ManualClock, enrolled_till
from .test_review32_rev32d import CARD, NEW, Chain, chains, old_release
from .test_review33_hold33 import (
    BIG,
    TTL_S,
    a_receipt,
    coupon_holds,
    first_at,
    held_at_hub,
    hold33_hub,
    life,
)
from .test_review33_rev33b import Stall, stalled_hub_call

__all__ = ["chains", "old_release"]  # the fixtures, shared with rev32d


# a set-up's ONLINE hold waits this long for the hub (review 40, flake40b)
SURE_S = 3.0


def tried_until(call: Callable[[], bool], tries: int = 20) -> bool:
    """Whether `call` says True at one of `tries` tries (a short deadline missed on a
    loaded machine is tried again; a refusal by rule is refused at every try)."""
    return any(call() for _ in range(tries))


@pytest.fixture
def stall(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stall]:
    """The hub's ReleaseRedemption held back while `stall.on` is set."""
    yield from stalled_hub_call(monkeypatch, "ReleaseRedemption")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(request: pytest.FixtureRequest, tmp_path: Path, stall: Stall) -> Iterator[LoopbackHub]:
    """The reference hub (SQLite or PostgreSQL) with a coupon offer and a 600 s hold TTL;
    its ReleaseRedemption is held back while `stall.on` is set (the servicer's methods
    are taken when it starts)."""
    h = hold33_hub(request, tmp_path)
    yield h
    h.stop()


def test_a_release_the_till_gave_up_on_never_drops_the_next_hold_of_the_receipt(
    hub: LoopbackHub, tmp_path: Path, stall: Stall
) -> None:
    """CONTRACT §11: hold H1 of receipt R (ONLINE, 1200 points held at the hub) expires;
    its release is held up at the hub past the till's deadline (the till counts it as
    not sent: owed). R is held again ONLINE (H2: 1200 points held at the hub). The old
    release then reaches the hub's store: it must leave H2's hold whole (before the fix
    it dropped it, and another till's receipt got the 1200 points H2 redeems)."""
    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(hub, tmp_path / "a", "a", clock=clock)
    b = enrolled_till(hub, tmp_path / "b", "b")
    # ONLINE for sure (review 40, flake40b): the shipped 300 ms was missed on a loaded
    # machine (PostgreSQL); the stalled release still times out at the till (3.1 s)
    a.authoriser.timeout_s = b.authoriser.timeout_s = SURE_S
    try:
        first = a.agent.hold(a_receipt("rel-r", at=clock()))
        assert (first.state, first.mode, first.redeemed_points) == ("HELD", "ONLINE", 1200)
        stall.on.set()
        clock.advance(TTL_S + 1)
        a.agent.sweep_holds()  # H1 expired; its release times out at the till
        assert life(a, "rel-r")[3] == 1  # still owed
        stall.on.clear()
        again = a.agent.hold(a_receipt("rel-r", at=first_at(first)))
        assert (again.state, again.mode, again.redeemed_points) == ("HELD", "ONLINE", 1200)
        assert held_at_hub(hub) == 1200
        stall.go.set()  # H1's release reaches the hub's store now
        assert stall.done.wait(10)
        assert held_at_hub(hub) == 1200  # H2's hold, whole
        assert b.agent.checkout(a_receipt("b-r")).redeemed_points == 0
    finally:
        a.stop()
        b.stop()


def test_a_release_touches_only_holds_placed_before_it_came(hub: LoopbackHub) -> None:
    """CONTRACT §11, §13: the hub releases only the hold and coupon holds of the receipt
    placed before the release came (`placed_by`), the second of the two guards it shares
    with the shrink. A hold placed again under the receiptId after that is left whole,
    points and codes; nothing at all when the till stopped waiting."""
    rules = hub.store
    t0 = datetime.now(UTC)
    rules.authorise("a", "r-1", "c-1", 1000, t0, [], t0, 600)  # H1
    release_came = t0 + timedelta(seconds=1)
    t2 = t0 + timedelta(seconds=2)
    rules.authorise("a", "r-1", "c-1", 900, t2, [], t2, 600)  # H2, the same row replaced
    assert rules.hold_coupons("a", "r-1", "c-1", ["APP555"], t2, 600) == []
    assert rules.release("a", "r-1", placed_by=release_came) is False
    assert held_at_hub(hub) == 900
    assert coupon_holds(hub) == [("APP555", "r-1")]
    from tillpoint.sync.hub_rules import CallerGone

    with pytest.raises(CallerGone):
        rules.release("a", "r-1", placed_by=t2, still_wanted=lambda: False)
    assert held_at_hub(hub) == 900 and coupon_holds(hub) == [("APP555", "r-1")]
    # one placed before it came is released, its coupon holds with it
    assert rules.release("a", "r-1", placed_by=t2) is True
    assert held_at_hub(hub) == 0 and coupon_holds(hub) == []


def test_a_till_with_a_short_hub_deadline_still_releases(hub: LoopbackHub, tmp_path: Path) -> None:
    """CONTRACT §11: with `hub.redeem_timeout_ms` under the hub's 100 ms margin (80 ms
    here) the release still reaches a hub that answers at once: the till gives the call
    its deadline plus that margin."""
    a = enrolled_till(hub, tmp_path / "a", "a")
    try:
        now = datetime.now(UTC)
        hub.store.authorise(a.authoriser.device_id, "r-f", "c-1", 1000, now, [], now, 600)
        a.authoriser.timeout_s = 0.08

        # a loaded machine may miss even 180 ms: the fault (a call refused for its
        # deadline under the margin) refuses every try (review 40, flake40b)
        def released() -> bool:
            try:
                return a.authoriser.release("r-f") or held_at_hub(hub) == 0
            except HubUnavailable:  # 180 ms missed: again (a late answer's effect counts)
                return held_at_hub(hub) == 0

        assert tried_until(released), "refused at every try"
        assert held_at_hub(hub) == 0
    finally:
        a.stop()


def test_a_release_of_a_till_before_is_guarded_without_the_margin(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11: a till before rel33 sends ReleaseRedemption without `with_margin`,
    with its bare `hub.redeem_timeout_ms` (80 ms here): the hub works on it while that
    till waits at all, so it releases as before (the 100 ms margin would refuse every
    release of such a till, its hold then held at the hub up to its expiry). A call that
    says it carries the margin and has less than 100 ms left is refused
    DEADLINE_EXCEEDED, nothing changed (the till counts it as not sent, and retries)."""
    import grpc
    from tillpoint.v1 import tillpoint_pb2 as pb

    a = enrolled_till(hub, tmp_path / "a", "a")
    try:
        device = a.authoriser.device_id
        now = datetime.now(UTC)
        hub.store.authorise(device, "r-o", "c-1", 1000, now, [], now, 600)
        stub = a.authoriser.link.stub
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReleaseRedemption(
                pb.ReleaseRedemptionRequest(device_id=device, receipt_id="r-o", with_margin=True),
                timeout=0.08,
            )
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert held_at_hub(hub) == 1000

        def released_bare() -> bool:
            try:
                old = stub.ReleaseRedemption(
                    pb.ReleaseRedemptionRequest(device_id=device, receipt_id="r-o"), timeout=0.08
                )
            except grpc.RpcError as exc:  # 80 ms missed on a loaded machine: again
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
                return held_at_hub(hub) == 0  # (a late answer's effect counts)
            return bool(old.released)

        # the fault (the margin asked of a call without it) refuses every try
        assert tried_until(released_bare), "refused at every try"
        assert held_at_hub(hub) == 0
    finally:
        a.stop()


@pytest.mark.slow
def test_a_till_of_the_release_before_releases_through_this_hub(
    old_release: list[str], tmp_path: Path, chains: list[Chain]
) -> None:
    """CONTRACT §11 across releases: a till of the release before (4362ba0, processes)
    holds a receipt ONLINE through a hub of this release and cancels it: the hub drops
    the hold (its release carries no margin), and the points are spendable at once."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    chain = Chain(tmp_path, NEW)
    chains.append(chain)
    chain.serve()
    till = tmp_path / "old-till"
    chain.enrol(old_release, till)
    body = tmp_path / "r-old.json"
    body.write_text(json.dumps(receipt("r-old", CARD, redeem=100, lines=BIG)), encoding="utf-8")
    held = chain.till(old_release, till, "hold", str(body), "--json")
    assert (held["state"], held["mode"]) == ("HELD", "ONLINE")

    def held_there() -> int:
        store = SqliteHubStore(chain.hub_dir / "hub.db")
        try:
            return int(store.balance("c-1", datetime.now(UTC)).held)
        finally:
            store.close()

    assert held_there() == 100
    chain.till(old_release, till, "cancel", "r-old", "--json")
    assert held_there() == 0


def test_the_stop_budget_counts_the_release_margin() -> None:
    """CONTRACT §11 (`tillpoint run`'s stop, told to systemd with EXTEND_TIMEOUT_USEC): a
    Hold in flight at the stop may wait for a release of its receipt in flight first,
    which now takes `hub.redeem_timeout_ms` plus the hub's 100 ms margin, then for its
    own authorisation and the ledger: the calls' part counts that margin too."""
    from tillpoint.agent.app import STOP_HUB_SIDE_S, STOP_MARGIN_S, stop_time_s
    from tillpoint.agent.db import BUSY_TIMEOUT_MS
    from tillpoint.sync.hub_store import SHRINK_MARGIN_S

    calls = 60.0 + (60.0 + SHRINK_MARGIN_S) + BUSY_TIMEOUT_MS / 1000
    assert stop_time_s(object(), 60.0) >= calls + STOP_HUB_SIDE_S + STOP_MARGIN_S
