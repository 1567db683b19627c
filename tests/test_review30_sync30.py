"""Review 30 (sync30): docs/CONTRACT.md §9 (sync: online redemption against the live
balance) together with §16 (points that expire), end to end: a real reference hub on
127.0.0.1 (mTLS, its SQLite store) and tills enrolled with it, each with its own ledger.
Every expected figure is worked out by hand from the contract in the comments."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.sync.hub_store import Unsynced
from tillpoint.sync.loopback import (
    LoopbackHub,
    Till,
    import_doc,
    sample_master_data,
    timings,
    wait_for,
)
from tillpoint.sync.loopback import receipt as hub_receipt
from tillpoint.sync.pull import Puller, cache_version

BORIS = "2770000000024"  # c-2, base tier (3 %)
MILK = "4601234000017"
LAST_MOMENT = "2026-11-30T23:59:59+03:00"  # the batch counts through this second (§16)
HUB_NOW = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
# A hub on a fixed day publishes for ten years, so that its tills, which verify a snapshot
# on the wall clock, take it on any day the suite runs (review 54: a week from HUB_NOW
# ended on 7 December 2026, 18:00 UTC).
HUB_TTL_S = 10 * 366 * 86400.0


def expiring_data() -> dict[str, Any]:
    """Boris has 300 points: 200 that expire at the end of 30 November, 100 that never do.
    100 % of a receipt may be paid in points, so only the balance caps a redemption."""
    data = sample_master_data()
    data["program"]["maxRedeemPercent"] = 100
    boris = data["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [{"points": 200, "expiresAt": LAST_MOMENT}]
    return data


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    # The hub publishes at 21:00 on 30 November (Moscow), when all 300 points still count.
    hub = expiring_hub(tmp_path / "hub")
    yield hub
    hub.stop()


def expiring_hub(root: Path, store: str | None = None) -> LoopbackHub:
    """A reference hub of `expiring_data` on HUB_NOW, publishing for HUB_TTL_S (the hub of
    this file and of rev30b, hub31 and rev31d)."""
    return LoopbackHub(
        root, data=expiring_data(), clock=lambda: HUB_NOW, snapshot_ttl_s=HUB_TTL_S, store=store
    )


def enrolled(hub: LoopbackHub, tmp_path: Path, name: str) -> Till:
    till = hub.till(name, tmp_path / name, start=False, timings=timings(redeem_timeout_s=3.0))
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    wait_for(lambda: cache_version(till.data_dir) == 1)
    return till


def refund_whole(receipt_id: str, at: str) -> Any:
    """The refund of `sale`'s one line, at `at`."""
    return refund_from_json(
        {
            "refundId": f"{receipt_id}-r",
            "receiptId": receipt_id,
            "at": at,
            "lines": [{"sku": MILK, "qty": "1"}],
        }
    )


def sale(receipt_id: str, at: str, redeem: int) -> Any:
    line = [{"sku": MILK, "qty": "1", "priceMinor": 30000}]  # 300,00: capacity 300 points
    body = hub_receipt(receipt_id, BORIS, redeem=redeem, lines=line)
    body["at"] = at
    return receipt_from_json(body)


@pytest.mark.slow
def test_a_hold_before_midnight_does_not_take_points_that_expired_at_midnight(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9, §16: till A holds a sale at 23:50 on 30 November that spends
    250 of Boris's 300 points: the 200 that expire at the end of the day first, then 50 of
    the 100 that never expire. At 00:10 on 1 December till B asks for as many as allowed.
    Its own snapshot says 100 (the 200 have expired); the live balance, with A's sale in
    it, is 100 − 50 = 50, and A's hold must not take more than that from B. Until review 30
    the hub granted 0: it took all of A's 250 held points off the 100 left after midnight,
    as if A's sale could spend points that had expired. And nothing is spent twice: with A
    confirmed and B sold (neither sent to the hub yet, both still held there), till C at
    00:20 gets nothing."""
    a = enrolled(hub, tmp_path, "till-a")
    b = enrolled(hub, tmp_path, "till-b")
    c = enrolled(hub, tmp_path, "till-c")
    try:
        held = a.agent.hold(sale("a-1", "2026-11-30T23:50:00+03:00", 250))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 250)
        done = b.agent.checkout(sale("b-1", "2026-12-01T00:10:00+03:00", -1))
        assert done.mode == "ONLINE"
        assert done.redeemed_points == 50
        assert a.agent.confirm("a-1").redeemed_points == 250
        late = c.agent.checkout(sale("c-1", "2026-12-01T00:20:00+03:00", -1))
        assert (late.mode, late.redeemed_points) == ("ONLINE", 0)
    finally:
        a.stop()
        b.stop()
        c.stop()


@pytest.mark.slow
def test_points_held_by_one_till_are_not_spent_by_another_before_they_expire(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9: two tills cannot spend the same points, expiring ones too. A
    holds 250 at 23:50 (the 200 expiring ones and 50 more); B at 23:55 the same day, when
    all 300 still count, may take only the 50 left."""
    a = enrolled(hub, tmp_path, "till-a")
    b = enrolled(hub, tmp_path, "till-b")
    try:
        held = a.agent.hold(sale("a-1", "2026-11-30T23:50:00+03:00", 250))
        assert held.redeemed_points == 250
        done = b.agent.checkout(sale("b-1", "2026-11-30T23:55:00+03:00", -1))
        assert (done.mode, done.redeemed_points) == ("ONLINE", 50)
    finally:
        a.stop()
        b.stop()


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    """The hub's store alone (a real SQLite file, and a real PostgreSQL database)."""
    store = hub_store_factory()
    import_doc(store, expiring_data())
    store.publish(HUB_NOW, 7 * 86400.0)
    return store


def authorise(
    store: Any, device: str, receipt_id: str, points: int, at: str, unsent: Any = ()
) -> int:
    moment = datetime.fromisoformat(at)
    found = store.authorise(device, receipt_id, "c-2", points, moment, list(unsent), HUB_NOW, 1800)
    return int(found.authorised)


def test_the_hub_replays_another_tills_hold_at_its_receipts_time(store: Any) -> None:
    """docs/CONTRACT.md §9, §16, at the hub's store: the hold of a receipt at 23:50 on
    30 November for 250 of Boris's points takes the 200 that expire at midnight and 50 of
    the 100 that never do; a receipt at 00:10 may have the other 50 (until review 30 the
    hub said 0), and then nothing is left at any time: at 23:55 all 300 count, A takes 250
    and B's 50 are held; at 00:20 both are spent."""
    assert authorise(store, "till-a", "a-1", 250, "2026-11-30T23:50:00+03:00") == 250
    assert authorise(store, "till-b", "b-1", 100, "2026-12-01T00:10:00+03:00") == 50
    assert authorise(store, "till-c", "c-1", 300, "2026-11-30T23:55:00+03:00") == 0
    assert authorise(store, "till-c", "c-2", 100, "2026-12-01T00:20:00+03:00") == 0
    # A hold of a receipt later than the one asking is taken off as it is: its sale will
    # spend what counts at its own time. At 23:40 with A's 250 and B's 50 held: 0 left.
    assert authorise(store, "till-c", "c-3", 300, "2026-11-30T23:40:00+03:00") == 0


def test_a_tills_unsent_sale_is_replayed_at_its_time(store: Any) -> None:
    """docs/CONTRACT.md §9, §16: a till's sale at 23:50 that spent 250 points (the 200
    expiring at midnight first) and earned 1 has not reached the hub when the same till
    asks at 00:10: it sends the sale as unsent points (−249), with its time and the 250 it
    redeemed. The live balance at 00:10 is 50 + 1 = 51, as the till's own balance says;
    the hub took −249 off the 100 left after midnight and granted 0. A till that sends no
    time (an older release) is answered as before: 100 − 249, nothing."""
    sale_a1 = Unsynced(1, "a-1", -249, "2026-11-30T23:50:00+03:00", 250)
    assert authorise(store, "till-a", "a-2", 100, "2026-12-01T00:10:00+03:00", [sale_a1]) == 51
    old = Unsynced(1, "a-1", -249)
    assert authorise(store, "till-a", "a-3", 100, "2026-12-01T00:10:00+03:00", [old]) == 0
    # Another till meanwhile: a-2's hold of 51 and the unsent sale leave nothing at 00:20.
    assert authorise(store, "till-b", "b-1", 100, "2026-12-01T00:20:00+03:00") == 0


def test_a_second_sale_across_midnight_before_the_first_is_sent(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9, §16, end to end: one till, online, its outbox not yet pushed.
    A sale at 23:50 spends 250 (200 expiring at midnight, then 50 of the 100 that never
    do) and earns 1 (3 % of 50,00); at 00:10 the next sale asks for as many as allowed.
    The till's balance says 51, and so must the hub (until review 30 it granted 0 and
    the customer lost 51 points at the till for as long as the outbox took to drain)."""
    a = enrolled(hub, tmp_path, "till-a")
    try:
        one = a.agent.checkout(sale("a-1", "2026-11-30T23:50:00+03:00", 250))
        assert (one.mode, one.redeemed_points, one.earned_points) == ("ONLINE", 250, 1)
        assert (
            a.agent.balance(
                BORIS, datetime.fromisoformat("2026-12-01T00:10:00+03:00")
            ).available_points
            == 51
        )
        two = a.agent.checkout(sale("a-2", "2026-12-01T00:10:00+03:00", -1))
        assert (two.mode, two.redeemed_points) == ("ONLINE", 51)
    finally:
        a.stop()


# In the default run (review 54): the only test of the authoriser's refund rule, ~1.5 s.
def test_points_a_refund_gives_back_into_an_expired_batch_are_not_spent_at_another_till(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9, §16: points given back into a batch that has expired stay
    expired, at the hub too. Till A's sale at 23:50 spends 250 (the 200 expiring at
    midnight, then 50 of the 100 that never do) and earns 1; A refunds it at 00:10: 50
    go back to the 100, the 200 to their batch, expired, and the 1 is taken back. Till B
    at 00:12 gets the 50 left when A's sale is replayed (it knows nothing of the refund),
    which leaves 50 at 00:15 for A's next sale, as the hub will count it. Neither A's sale
    nor its refund has reached the hub: A sends them with its request, and sent the
    refund as +249 (the 200 back into the expired batch included), so the hub granted A
    100: B and A spent 150 of the 100 there were."""
    a = enrolled(hub, tmp_path, "till-a")
    b = enrolled(hub, tmp_path, "till-b")
    try:
        one = a.agent.checkout(sale("a-1", "2026-11-30T23:50:00+03:00", 250))
        assert (one.mode, one.redeemed_points, one.earned_points) == ("ONLINE", 250, 1)
        back = a.agent.refund(refund_whole("a-1", "2026-12-01T00:10:00+03:00"))
        assert (back.returned_points, back.taken_back_points) == (250, 1)
        other = b.agent.checkout(sale("b-1", "2026-12-01T00:12:00+03:00", -1))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 50)
        two = a.agent.checkout(sale("a-2", "2026-12-01T00:15:00+03:00", -1))
        assert (two.mode, two.redeemed_points) == ("ONLINE", 50)
    finally:
        a.stop()
        b.stop()
