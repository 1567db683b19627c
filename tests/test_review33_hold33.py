"""Review 33 (hold33): a Hold priced OFFLINE after the hub granted it too late (CONTRACT
§11, §9, §13).

The till asks the hub to hold a Hold's redemption and coupon codes; the hub places the
hold and answers after the till's deadline (300 ms), so the till prices the Hold OFFLINE
under the day's offline limit and stores it. Review 32 left the hub holding all it
granted (1200 points here) until the receipt's transaction settled it or the hub's hold
expired (~31 min): the customer's receipts at other tills got that much less. Releasing
it at once was wrong (the OFFLINE hold redeems points and applies a one-time coupon that
another till could then take). Now the till asks the hub to SHRINK the hold to what the
OFFLINE hold uses (`ShrinkRedemption`): its redeemed points and the codes it applied; a
Cancel or an expiry of the OFFLINE hold releases the rest at once, as an online one's
does. A hub before review 33 answers UNIMPLEMENTED and keeps the whole grant, as before.

Real parts: a reference hub on 127.0.0.1 (SQLite, and PostgreSQL in the slow pass), its
tills with their hub links; the hub's own AuthorizeRedemption, answering late (since
review 41 its DEADLINE_EXCEEDED at once, the tills waiting 10 s: `late`; an answer really
past the till's deadline is pinned beside it in tests/test_review41_flake41.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.server import start_hold_sweeper
from tillpoint.sync.hub_server import HubServicer, system_clock
from tillpoint.sync.loopback import FAST, LoopbackHub, Till, sample_master_data, wait_for
from tillpoint.sync.loopback import receipt as loopback_receipt
from tillpoint.sync.service import SyncService
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import ManualClock, enrolled_till
from .test_coupons import COUPONS, SORRY
from .test_review32_rev32d import NEW, Chain, chains, old_release

__all__ = ["chains", "old_release"]  # the fixtures, shared with rev32d

ANNA = "2770000000017"  # c-1: 1200 points at the hub
BIG = [{"sku": "4601234000017", "qty": "1", "priceMinor": 1_000_000}]  # wants all 1200
OFFLINE_LIMIT = 200
TTL_S = 600


def a_receipt(rid: str, *codes: str, at: datetime | None = None) -> Any:
    return receipt_from_json(
        {
            "receiptId": rid,
            "at": (at or datetime.now(UTC)).isoformat(),
            "card": ANNA,
            "lines": BIG,
            "coupons": list(codes),
            "redeemPoints": -1,
        }
    )


@pytest.fixture
def late(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set: the hub places the hold (its own deadline checks and all) and its answer comes
    past the till's deadline, as over a slow link: the till's client gets
    DEADLINE_EXCEEDED, whatever deadline the till has.

    Review 41 (flake41): the answer was 0.6 s late against the shipped 300 ms deadline,
    so the grant itself had to be placed within 300 ms of the request's sending. On a
    loaded machine (a PostgreSQL hub's store above all) it was not: the hub's own checks
    then rightly placed nothing (the request came past its deadline) or cut the grant to
    the offline limit (the store took longer), and the test failed on its set-up ("the
    hub held 200, not 1200"). The tills of hold33 and rev33b now wait 10 s (`SURE`): the
    grant is placed whole, and the answer is made late here, at once."""
    granted = HubServicer.AuthorizeRedemption
    event = threading.Event()

    def answers_late(self: Any, request: Any, context: Any) -> Any:
        reply = granted(self, request, context)
        if event.is_set():
            # what a till's gRPC client reports of an answer that comes after its deadline
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "answered past the deadline")
        return reply

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", answers_late)
    return event


# A till of these tests waits up to 10 s for the hub's answers (grants, shrinks, releases,
# holds meant ONLINE), not the shipped 300 ms that a loaded machine can miss (review 41,
# flake41; `late` makes a grant's answer late whatever the deadline). Those of rev33b
# that need a call given up on give it the shipped deadline themselves.
SURE_S = 10.0
SURE = replace(FAST, redeem_timeout_s=SURE_S)


def hold33_till(hub: LoopbackHub, data_dir: Path, name: str, **kw: Any) -> Till:
    return enrolled_till(hub, data_dir, name, timings=SURE, **kw)


def hold33_hub(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Callable[[], datetime] = system_clock
) -> LoopbackHub:
    """The reference hub of the fixture's param (SQLite or PostgreSQL) with a coupon offer,
    a 600 s hold TTL and an offline limit of 200 points a day, started on `clock`; the
    hub fixtures of hold33 and of the reviews that followed it (rev33b, rel33, rev34)."""
    store = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    data = sample_master_data() | {"offers": [SORRY], "coupons": COUPONS}
    data["program"]["holdTtlSeconds"] = TTL_S
    data["program"]["offlineRedeemLimitPoints"] = OFFLINE_LIMIT
    return LoopbackHub(tmp_path / "hub", data=data, store=store, clock=clock)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(
    request: pytest.FixtureRequest, tmp_path: Path, late: threading.Event
) -> Iterator[LoopbackHub]:
    """The reference hub (SQLite or PostgreSQL) with a coupon offer, a 600 s hold TTL and
    an offline limit of 200 points a day; its AuthorizeRedemption answers late while
    `late` is set (its servicer's methods are taken when it starts)."""
    h = hold33_hub(request, tmp_path)
    h.server.servicer.failpoint = refusing
    yield h
    h.stop()


# Set: the hub answers ShrinkRedemption UNAVAILABLE (its store busy), as a hub away does.
REFUSED = threading.Event()


def refusing(where: str) -> None:
    if where == "shrink" and REFUSED.is_set():
        from tillpoint.agent.errors import StorageError

        raise StorageError("the hub's store is busy")


@pytest.fixture
def refused() -> Iterator[threading.Event]:
    REFUSED.clear()
    yield REFUSED
    REFUSED.clear()


def held_at_hub(hub: LoopbackHub) -> int:
    return int(hub.store.balance("c-1", datetime.now(UTC)).held)


def coupon_holds(hub: LoopbackHub) -> list[tuple[str, str]]:
    """(code, receipt) of the hub's coupon holds, through its store's own connection."""
    with hub.store.read_tx() as tx:
        rows = tx.execute("SELECT code, receipt_id FROM coupon_holds ORDER BY code").fetchall()
    return [(str(c), str(r)) for c, r in rows]


def life(till: Till, rid: str) -> tuple[Any, ...]:
    conn = sqlite3.connect(till.data_dir / "ledger.db")
    try:
        row = conn.execute(
            "SELECT state, mode, redeemed_points, hub_hold FROM receipt_life WHERE receipt_id = ?",
            (rid,),
        ).fetchone()
        return tuple(row) if row else ()
    finally:
        conn.close()


def offline_after_late_grant(till: Till, late: threading.Event, rid: str, *codes: str) -> Any:
    late.set()
    try:
        held = till.agent.hold(a_receipt(rid, *codes))
    finally:
        late.clear()
    assert (held.state, held.mode, held.redeemed_points) == ("HELD", "OFFLINE", OFFLINE_LIMIT)
    return held


def test_the_late_grant_is_shrunk_to_what_the_offline_hold_uses(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event, refused: threading.Event
) -> None:
    """CONTRACT §11: the hub granted 1200 points past the deadline; the OFFLINE hold
    redeems 200 (the offline limit). The hub's hold is shrunk to 200: another till's
    receipt of the customer redeems the other 1000 at once (until review 33 it got
    nothing for up to 31 minutes). The 200 stay held. A hub that cannot take the shrink
    keeps the whole grant held (never released) until the hold timer's round gets it."""
    a = hold33_till(hub, tmp_path / "a", "a")
    b = hold33_till(hub, tmp_path / "b", "b")
    try:
        refused.set()
        offline_after_late_grant(a, late, "late-1")
        assert held_at_hub(hub) == 1200  # the late grant, placed at the hub, kept whole
        assert life(a, "late-1") == ("HELD", "OFFLINE", OFFLINE_LIMIT, 2)  # shrink owed
        a.agent.retry_hub_releases()  # the hold timer's round: refused again, still owed
        assert held_at_hub(hub) == 1200 and life(a, "late-1")[3] == 2
        refused.clear()
        a.agent.retry_hub_releases()  # the round after the hub is back
        assert held_at_hub(hub) == OFFLINE_LIMIT
        assert life(a, "late-1") == ("HELD", "OFFLINE", OFFLINE_LIMIT, 1)  # shrunk, still held
        other = b.agent.hold(a_receipt("b-1"))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 1200 - OFFLINE_LIMIT)
        assert held_at_hub(hub) == 1200
        # never the same points twice: nothing more for a third receipt
        assert b.agent.hold(a_receipt("b-2")).redeemed_points == 0
        # a shrink sent again changes nothing (it never grows a hold)
        assert a.authoriser.shrink("late-1", 5000, []) is False
        assert held_at_hub(hub) == 1200
    finally:
        a.stop()
        b.stop()


def test_the_coupon_the_offline_hold_applied_stays_one_time(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event
) -> None:
    """CONTRACT §11, §13: the OFFLINE hold applied APP555, which the hub held with the late
    grant. Shrunk, the hub keeps the code held for it: another till's receipt gets
    ALREADY_USED, while the points the hold does not use go to that receipt."""
    a = hold33_till(hub, tmp_path / "a", "a")
    b = hold33_till(hub, tmp_path / "b", "b")
    try:
        held = offline_after_late_grant(a, late, "late-c", "APP555")
        assert [(v.code, v.status) for v in held.coupons] == [("APP555", "APPLIED")]
        # no hold timer in this process: the Hold's call sent the shrink itself
        assert held_at_hub(hub) == OFFLINE_LIMIT
        assert coupon_holds(hub) == [("APP555", "late-c")]
        other = b.agent.checkout(a_receipt("b-c", "APP555"))
        assert [(v.code, v.status, v.reason) for v in other.coupons] == [
            ("APP555", "REJECTED", "ALREADY_USED")
        ]
        assert other.redeemed_points == 1200 - OFFLINE_LIMIT
    finally:
        a.stop()
        b.stop()


def test_a_code_the_offline_hold_does_not_apply_is_let_go(hub: LoopbackHub) -> None:
    """CONTRACT §11, §13: the shrink keeps only the codes it names: a code the hub held for
    the receipt that the OFFLINE pricing did not apply is free for other receipts."""
    rules = hub.store
    now = datetime.now(UTC)
    rules.authorise("a", "r-1", "c-1", 1000, now, [], now, 600)
    assert rules.hold_coupons("a", "r-1", "c-1", ["APP555", "SORRY-7K2Q9"], now, 600) == []
    assert rules.shrink("a", "r-1", 300, ["SORRY-7K2Q9"]) is True
    assert coupon_holds(hub) == [("SORRY-7K2Q9", "r-1")]
    assert held_at_hub(hub) == 300
    assert rules.hold_coupons("a", "r-2", "c-1", ["APP555"], now, 600) == []  # free now
    # an absent hold is no error; a shrink never grows one
    assert rules.shrink("a", "r-none", 0, []) is False
    assert rules.shrink("a", "r-1", 900, ["SORRY-7K2Q9", "APP555"]) is False
    assert held_at_hub(hub) == 300


def test_cancel_of_the_offline_hold_frees_the_hub_at_once(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event, refused: threading.Event
) -> None:
    """CONTRACT §11: a Cancel of an OFFLINE hold whose receipt the hub holds releases it as
    an online one's does: at once, the points and the code, shrunk or not yet."""
    a = hold33_till(hub, tmp_path / "a", "a")
    b = hold33_till(hub, tmp_path / "b", "b")
    try:
        refused.set()
        offline_after_late_grant(a, late, "late-x", "APP555")
        assert held_at_hub(hub) == 1200
        a.agent.cancel("late-x")  # before the shrink: the whole grant goes
        assert held_at_hub(hub) == 0 and coupon_holds(hub) == []
        assert life(a, "late-x") == ("CANCELLED", "OFFLINE", OFFLINE_LIMIT, 0)
        refused.clear()
        offline_after_late_grant(a, late, "late-y", "APP555")
        assert held_at_hub(hub) == OFFLINE_LIMIT
        a.agent.cancel("late-y")  # after it: what is left goes
        assert held_at_hub(hub) == 0 and coupon_holds(hub) == []
        assert life(a, "late-y") == ("CANCELLED", "OFFLINE", OFFLINE_LIMIT, 0)
        other = b.agent.checkout(a_receipt("b-x", "APP555"))
        assert other.redeemed_points == 1200
        assert [v.status for v in other.coupons] == ["APPLIED"]
    finally:
        a.stop()
        b.stop()


def test_expiry_of_the_offline_hold_releases_it_and_a_later_hold_is_not_shrunk(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event, refused: threading.Event
) -> None:
    """CONTRACT §11: an OFFLINE hold whose shrink did not reach the hub (refused as
    unavailable) expires: its release frees the hub. Held again under the same receiptId
    (ONLINE, 1200 granted), the shrink the old hold owed is never sent for the new one:
    the hub keeps holding all the new hold redeems."""
    clock = ManualClock(datetime.now(UTC))
    a = hold33_till(hub, tmp_path / "a", "a", clock=clock)
    try:
        refused.set()
        late.set()
        try:
            first = a.agent.hold(a_receipt("late-e", at=clock()))
        finally:
            late.clear()
        assert (first.mode, first.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
        a.agent.retry_hub_releases()  # the shrink refused: owed still, the grant held whole
        assert held_at_hub(hub) == 1200
        assert life(a, "late-e")[3] == 2
        clock.advance(TTL_S + 1)
        assert a.agent.sweep_holds() == 1  # expired: released at the hub
        assert held_at_hub(hub) == 0
        refused.clear()
        again = a.agent.hold(a_receipt("late-e", at=first_at(first)))
        assert (again.state, again.mode, again.redeemed_points) == ("HELD", "ONLINE", 1200)
        a.agent.retry_hub_releases()
        assert held_at_hub(hub) == 1200  # the new hold's, not shrunk
        assert life(a, "late-e") == ("HELD", "ONLINE", 1200, 1)
    finally:
        a.stop()


def first_at(result: Any) -> datetime:
    return datetime.fromisoformat(str(result.to_json()["holdExpiresAt"])) - timedelta(seconds=TTL_S)


def test_the_confirmed_offline_hold_is_settled_by_its_transaction_as_before(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event
) -> None:
    """CONTRACT §9, §11: shrunk, then confirmed and pushed: the transaction settles the
    hold (the hub holds nothing), the code is used for good, and the hub's balance is the
    till's."""
    a = hold33_till(hub, tmp_path / "a", "a")
    b = hold33_till(hub, tmp_path / "b", "b")
    try:
        offline_after_late_grant(a, late, "late-s", "APP555")
        assert held_at_hub(hub) == OFFLINE_LIMIT  # shrunk
        done = a.agent.confirm("late-s")
        assert (done.state, done.redeemed_points) == ("CONFIRMED", OFFLINE_LIMIT)
        a.service = SyncService(a.agent, a.link, a.link.enrollment, timings_fast())
        a.service.start()
        wait_for(lambda: held_at_hub(hub) == 0 and not coupon_holds(hub), 20)
        hub_available = int(hub.store.balance("c-1", datetime.now(UTC)).available)
        assert hub_available == 1200 - OFFLINE_LIMIT + done.earned_points
        other = b.agent.checkout(a_receipt("b-s", "APP555"))
        assert [(v.status, v.reason) for v in other.coupons] == [("REJECTED", "ALREADY_USED")]
        # all of b's snapshot balance (1200): the hub's 1684 live points cover it
        assert other.redeemed_points == 1200 <= hub_available
    finally:
        a.stop()
        b.stop()


def timings_fast() -> Any:
    from tillpoint.sync.loopback import FAST

    return FAST


def test_an_old_hub_without_the_call_keeps_the_grant_as_before(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11, §9: a hub before review 33 has no ShrinkRedemption (UNIMPLEMENTED, as
    the generated servicer answers a call it does not implement): the till leaves the
    whole grant held, as before (never released while the hold is open), asks once (not
    every round), and a Cancel still releases it at once."""
    monkeypatch.delattr(HubServicer, "ShrinkRedemption")
    hub.restart()  # served without it
    a = hold33_till(hub, tmp_path / "a", "a")
    try:
        offline_after_late_grant(a, late, "late-o", "APP555")
        with pytest.raises(grpc.RpcError) as err:
            a.link.stub.ShrinkRedemption(
                pb.ShrinkRedemptionRequest(device_id="a", receipt_id="late-o"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert a.authoriser.shrink("late-o", 0, []) is None  # taken as "keep it whole"
        a.agent.retry_hub_releases()  # the Hold's own call asked once: not again
        assert held_at_hub(hub) == 1200 and coupon_holds(hub) == [("APP555", "late-o")]
        assert life(a, "late-o") == ("HELD", "OFFLINE", OFFLINE_LIMIT, 1)  # not asked again
        a.agent.cancel("late-o")
        assert held_at_hub(hub) == 0 and coupon_holds(hub) == []
    finally:
        a.stop()


def test_the_hold_timer_of_run_shrinks_at_once(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event
) -> None:
    """CONTRACT §11: `tillpoint run`'s hold timer (15 s rounds) is woken by the OFFLINE
    hold: the hub's hold is shrunk within a second, not at the next round."""
    a = hold33_till(hub, tmp_path / "a", "a")
    stop = start_hold_sweeper(a.agent, every_s=15.0, jitter_s=0)
    try:
        time.sleep(0.2)  # its first round done
        offline_after_late_grant(a, late, "late-t")
        wait_for(lambda: held_at_hub(hub) == OFFLINE_LIMIT, 10.0)  # the round: 15 s
    finally:
        stop()
        a.stop()


def test_the_hub_refuses_a_bad_shrink(hub: LoopbackHub, tmp_path: Path) -> None:
    """CONTRACT §9: a shrink with negative points, no receiptId or an empty code is
    INVALID_ARGUMENT; nothing changes."""
    a = hold33_till(hub, tmp_path / "a", "a")
    try:
        stub = a.link.stub
        for bad in (
            pb.ShrinkRedemptionRequest(device_id="a", receipt_id="r", points=-1),
            pb.ShrinkRedemptionRequest(device_id="a", receipt_id="", points=0),
            pb.ShrinkRedemptionRequest(device_id="a", receipt_id="r", coupon_codes=[""]),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.ShrinkRedemption(bad, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        a.stop()


@pytest.mark.slow
def test_a_hub_of_the_release_before_answers_unimplemented_and_keeps_the_hold(
    old_release: list[str],  # the fixtures imported above (`__all__`)
    chains: list[Chain],
    tmp_path: Path,
) -> None:
    """CONTRACT §9, §11: the hub process of the release before (built from git, as
    tests/test_review32_rev32d.py does), a till of this release: the till's hold is placed
    there (ONLINE); a shrink asked of that hub is UNIMPLEMENTED, which the till's
    authoriser reads as "keep it whole" (None: not retried), and the hub's hold is as it
    was."""
    from tillpoint.sync.authoriser import HubAuthoriser
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.pki import load_enrollment

    chain = Chain(tmp_path, old_release)
    chains.append(chain)
    chain.serve()
    till = tmp_path / "till"
    chain.enrol(NEW, till)
    path = tmp_path / "h-1.json"
    path.write_text(json.dumps(loopback_receipt("h-1", ANNA, redeem=-1)), encoding="utf-8")
    held = chain.till(NEW, till, "hold", str(path), "--json")
    assert (held["state"], held["mode"]) == ("HELD", "ONLINE"), held
    points = int(held["redeemedPoints"])
    assert points > 0

    def holds() -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(chain.hub_dir / "hub.db")
        try:
            return conn.execute("SELECT receipt_id, points, state FROM holds").fetchall()
        finally:
            conn.close()

    assert holds() == [("h-1", points, "ACTIVE")]
    enrollment = load_enrollment(till)
    assert enrollment is not None
    link = HubLink(f"127.0.0.1:{chain.port}", enrollment)
    asking = HubAuthoriser(link, till, "till-w", 5.0)
    try:
        assert asking.shrink("h-1", 0, []) is None
    finally:
        asking.close()
        link.close()
    assert holds() == [("h-1", points, "ACTIVE")]


def test_a_late_grant_shrunk_to_nothing_holds_nothing_at_the_hub(
    hub: LoopbackHub, tmp_path: Path, late: threading.Event
) -> None:
    """CONTRACT §11: a shrink to 0 points (what an OFFLINE hold that redeems nothing
    sends) leaves the receipt's hold at the hub with none: the customer's whole balance is
    another till's again. Review 54 (the authoriser's mutation run): a shrink sent as at
    least 1 point kept 1 held, and no test said otherwise."""
    a = hold33_till(hub, tmp_path / "a", "a")
    try:
        offline_after_late_grant(a, late, "late-0")
        assert held_at_hub(hub) == OFFLINE_LIMIT  # shrunk by the Hold's own call
        assert a.authoriser.shrink("late-0", 0, []) is True
        assert held_at_hub(hub) == 0
    finally:
        a.stop()
