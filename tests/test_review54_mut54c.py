"""Review 54 (mut54c): mutation testing of the hub's store in SQL (`sync/hub_sql.py`,
`sync/hub_sqlite.py`, `sync/hub_postgres.py`). Each test pins a rule of the store that a
surviving mutant broke and no test held: a real SQLite file and a real PostgreSQL
database each (`hub_store_factory`), figures worked out by hand in the comments.
docs/DECISIONS.md, "Review 54 (mut54c)", lists the mutants."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tillpoint.agent.ledger import utc_text
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_import import read_file
from tillpoint.sync.hub_store import ImportRefused, TxIn, Unsynced
from tillpoint.sync.loopback import LoopbackHub, import_doc, receipt, sample_master_data
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher

from .conftest import enrolled_till
from .test_coupons import COUPONS, SORRY

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WEEK = 7 * 86400.0
CARD_1 = "2770000000017"  # c-1's, 1200 points (the sample's)


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    """A hub store with the sample's master data published as version 1 (c-1: 1200
    points, c-2: 300), once on SQLite and once on PostgreSQL."""
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    return store


def sale(
    device: str,
    seq: int,
    customer: str,
    available: int,
    *,
    receipt: str = "",
    card: str = "",
    kind: str = "CHECKOUT",
    refunds: str = "",
    result: dict[str, Any] | None = None,
    at: datetime = NOW,
) -> TxIn:
    """A pushed transaction: a sale of `receipt` (default `device-seq`), or with `kind`
    REFUND and `refunds` the receipt a refund `receipt` takes back."""
    request: dict[str, Any] = {"receiptId": receipt or f"{device}-{seq}"}
    if kind == "REFUND":
        request = {"refundId": receipt or f"{device}-{seq}", "receiptId": refunds}
    return TxIn(
        device,
        seq,
        kind,
        at.isoformat(),
        customer,
        card,
        json.dumps(request),
        json.dumps(result or {}),
        available,
        0,
        "",
    )


def authorise(
    store: Any,
    receipt: str,
    points: int,
    now: datetime,
    unsynced: list[Unsynced] | None = None,
    *,
    device: str = "till-a",
    ttl_s: float = 600.0,
    at: datetime = NOW,
    customer: str = "c-1",
) -> Any:
    return store.authorise(device, receipt, customer, points, at, unsynced or [], now, ttl_s)


# ---------------------------------------------------------------- holds (§9, §11)


def test_a_hold_is_gone_at_the_instant_it_expires(store: Any) -> None:
    """`expire_holds` (`expires_at <= now`) and `holds_outstanding` (`expires_at > now`):
    a hold placed at T0 for 600 s holds its points through T0+599.999999 s and not at
    T0+600 s, for the next authorisation and for `hub status` alike."""
    t0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert authorise(store, "r-1", 300, t0).authorised == 300
    end = t0 + timedelta(seconds=600)
    assert store.holds_outstanding(end - timedelta(microseconds=1)) == (1, 300)
    assert store.holds_outstanding(end) == (0, 0)
    # at its expiry r-1's 300 are free again: r-2 gets all 1200 (not 900), r-2 dated
    # before r-1 (so r-1's hold is not replayed at its time: the claim's own count)
    got = authorise(store, "r-2", 1200, end, at=NOW - timedelta(hours=1))
    assert got.authorised == 1200


def test_a_seq_of_another_device_is_not_this_tills_received_movement(store: Any) -> None:
    """`stored_receipt(device, seq)`: an unsynced movement the hub already stored (this
    device's seq) is not counted a second time; the same seq stored by another device
    is not this till's, and counts. c-1: 1200; till-b's seq 1 spent 100 (stored)."""
    store.ingest("till-b", "", [sale("till-b", 1, "c-1", -100)], NOW)
    now = datetime.now(UTC)  # holds live in real time
    # till-a's seq 1 (spent 100, its receipt id one the hub refused: sent as "") is not
    # stored: 1200 - 100 (till-b's) - 100 (till-a's, held as seq:1) = 1000
    got = authorise(store, "r-9", 1, now, [Unsynced(1, "", -100)])
    assert (got.authorised, got.live_balance) == (1, 1000)
    # till-b's own seq 1, stored already: not counted again. Held for others: till-a's
    # seq:1 (100) and r-9 (1): 1200 - 100 - 100 - 1 = 999 (899 had it counted twice)
    got = authorise(store, "r-8", 1, now, [Unsynced(1, "till-b-1", -100)], device="till-b")
    assert got.live_balance == 999


def test_a_settled_hold_is_not_outstanding(store: Any) -> None:
    """`holds_outstanding` counts ACTIVE holds only: r-1's hold (300) is settled by its
    sale's transaction, r-2's (200) is still held."""
    now = datetime.now(UTC)
    assert authorise(store, "r-1", 300, now).authorised == 300
    assert authorise(store, "r-2", 200, now).authorised == 200
    assert store.holds_outstanding(now) == (2, 500)
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", -300, receipt="r-1")], now)
    assert store.holds_outstanding(now) == (1, 200)
    assert store.balance("c-1", now).held == 200


def test_a_receipt_id_of_another_device_is_another_receipts_hold(store: Any) -> None:
    """A hold is the device's receipt's (`delete_hold`, the claim's other holds): till-b
    holds 300 for its "r-1"; till-a's "r-1" (its own receipt, the same id) is held
    beside it, replacing nothing of till-b's: 1200 - 300 = 900 live for till-a."""
    now = datetime.now(UTC)
    assert authorise(store, "r-1", 300, now, device="till-b").authorised == 300
    got = authorise(store, "r-1", 200, now)
    assert (got.authorised, got.live_balance) == (200, 900)
    assert store.holds_outstanding(now) == (2, 500)
    # till-a asks again for its r-1: its own hold replaced, till-b's still taken off
    got = authorise(store, "r-1", 1200, now)
    assert (got.authorised, got.live_balance) == (900, 900)
    assert store.holds_outstanding(now) == (2, 1200)


def test_the_newest_hold_of_a_receipt_is_its_newest_active_one(store: Any) -> None:
    """`newest_hold_at` (a release's or shrink's `placed_by` when the hold is stamped
    after the hub's clock): the later of the receipt's ACTIVE points hold and its
    coupon holds; once the sale settles them, none."""
    t1 = datetime.now(UTC)
    t2 = t1 + timedelta(seconds=5)
    assert authorise(store, "r-1", 300, t1).authorised == 300
    assert store.newest_hold_at("till-a", "r-1") == t1
    assert store.hold_coupons("till-a", "r-1", "c-1", ["K-1"], t2, 600.0) == []
    assert store.newest_hold_at("till-a", "r-1") == t2  # the coupon's, the later
    assert store.newest_hold_at("till-b", "r-1") is None
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", -300, receipt="r-1")], t2)
    assert store.newest_hold_at("till-a", "r-1") is None  # settled: nothing to release


def test_a_shrink_takes_the_holds_placed_at_its_own_instant(store: Any) -> None:
    """`shrink_hold` and `keep_coupon_holds` touch the holds placed at or before
    `placed_by` (the instant included: a release sent at once carries the hold's own
    stamp), and a shrink to what is held already is no shrink (False)."""
    t = datetime.now(UTC)
    assert authorise(store, "r-1", 300, t).authorised == 300
    assert store.hold_coupons("till-a", "r-1", "c-1", ["K-1", "K-2"], t, 600.0) == []
    assert not store.shrink("till-a", "r-1", 300, ["K-1", "K-2"], placed_by=t)
    assert store.shrink("till-a", "r-1", 300, ["K-1"], placed_by=t)  # K-2 let go
    assert store.holds_outstanding(t) == (1, 300)
    assert store.shrink("till-a", "r-1", 100, ["K-1"], placed_by=t)
    assert store.holds_outstanding(t) == (1, 100)
    assert store.shrink("till-a", "r-1", 1, ["K-1"], placed_by=t)  # 1 point is a hold
    assert store.holds_outstanding(t) == (1, 1)
    later = t + timedelta(seconds=1)
    # K-2 was let go: another receipt holds it; K-1 is still r-1's
    assert store.hold_coupons("till-a", "r-2", "c-1", ["K-1", "K-2"], later, 600.0) == ["K-1"]
    assert store.release("till-a", "r-1", placed_by=t)
    assert store.holds_outstanding(t) == (0, 0)
    assert store.hold_coupons("till-a", "r-3", "c-1", ["K-1"], later, 600.0) == []


def test_a_coupon_hold_is_gone_at_the_instant_it_expires(store: Any) -> None:
    """`clear_coupon_holds` (`expires_at <= now`): r-1 holds K-1 from T0 for 600 s; r-2
    is refused it at T0+599.999999 s and holds it at T0+600 s."""
    t0 = datetime.now(UTC)
    end = t0 + timedelta(seconds=600)
    assert store.hold_coupons("till-a", "r-1", "c-1", ["K-1"], t0, 600.0) == []
    early = end - timedelta(microseconds=1)
    assert store.hold_coupons("till-b", "r-2", "c-1", ["K-1"], early, 600.0) == ["K-1"]
    assert store.hold_coupons("till-b", "r-2", "c-1", ["K-1"], end, 600.0) == []


# ---------------------------------------------------------------- exactly once (§9)


def test_a_refund_named_as_its_receipt_is_a_refund_not_the_sale_again(store: Any) -> None:
    """`booked(device, kind, receipt, ref)`: a receipt or refund the device stored under
    another seq is found by its kind too. A refund whose refundId is its receipt's id
    ("r-1" of "r-1") is stored, not set aside as the sale sent again; the same refund
    sent again under a new seq is a DUPLICATE, counted once (c-1: 1200 - 100 + 40)."""
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", -100, receipt="r-1")], NOW)
    refund = sale("till-a", 2, "c-1", 40, kind="REFUND", receipt="r-1", refunds="r-1")
    got = store.ingest("till-a", "", [refund], NOW)
    assert [(r.seq, r.outcome) for r in got.results] == [(2, "STORED")]
    again = sale("till-a", 3, "c-1", 40, kind="REFUND", receipt="r-1", refunds="r-1")
    got = store.ingest("till-a", "", [again], NOW)
    assert [(r.seq, r.outcome, r.stored_as) for r in got.results] == [(3, "DUPLICATE", 2)]
    assert store.balance("c-1", NOW).available == 1200 - 100 + 40


def test_another_devices_set_aside_seq_fills_no_hole_of_this_device(store: Any) -> None:
    """`seqs_after(device, seq)`: the seqs the hub decided for this device (stored or set
    aside). till-b's seq 2 is set aside (REJECTED); till-a's seq 2 is a hole: till-a is
    acknowledged through 1, not 3."""
    bad = sale("till-b", 2, "c-1", 0)
    bad = TxIn(*[*bad.__dict__.values()][:6], "not json", *[*bad.__dict__.values()][7:])
    got = store.ingest("till-b", "", [sale("till-b", 1, "c-1", 0), bad], NOW)
    assert ([r.outcome for r in got.results], got.acked_through) == (["STORED", "REJECTED"], 2)
    got = store.ingest(
        "till-a", "", [sale("till-a", 1, "c-1", 0), sale("till-a", 3, "c-1", 0)], NOW
    )
    assert got.acked_through == 1 and store.applied_through("till-a") == 1


def test_a_batchs_answer_is_the_devices_own(store: Any) -> None:
    """`batch_answer(device, batch)`: a batch id another device used is not this device's
    batch (two empty batches "b-0" have the same content): till-b is answered its own
    ackedThrough (0), not till-a's (1)."""
    store.ingest("till-a", "b-1", [sale("till-a", 1, "c-1", 0)], NOW)
    assert store.ingest("till-a", "b-0", [], NOW).acked_through == 1
    got = store.ingest("till-b", "b-0", [], NOW)
    assert (got.acked_through, got.replayed) == (0, False)


def test_a_cards_sales_to_its_former_customer_stay_theirs(store: Any) -> None:
    """The moves of a customer (`_customer_or_cards`): their own transactions, and those
    of their cards sold as UNKNOWN. c-1 spent 100 with card 2770000000017; the card is
    then c-2's: c-1 keeps 1100, c-2 keeps 300 (the sale is not c-2's too)."""
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", -100, card=CARD_1)], NOW)
    import_doc(store, {"cards": [{"number": CARD_1, "customerId": "c-2", "status": "ACTIVE"}]})
    store.publish(NOW, WEEK)
    assert store.balance("c-1", NOW).available == 1100
    assert store.balance("c-2", NOW).available == 300
    got = store.authorise("till-b", "r-1", "c-2", 1000, NOW, [], datetime.now(UTC), 600.0)
    assert (got.authorised, got.live_balance) == (300, 300)


def test_a_receipt_held_again_after_its_hold_expired_is_a_new_hold(store: Any) -> None:
    """`delete_hold(...)` before the new hold is written: r-1's hold
    (placed at T0 for 60 s) has expired and been marked so; r-1 held again at T0+120 s
    is a hold placed then (its stamp, for a release's `placed_by`), not the old row
    made active again with its old stamp."""
    t0 = datetime.now(UTC)
    assert authorise(store, "r-1", 300, t0, ttl_s=60).authorised == 300
    assert authorise(store, "r-2", 100, t0 + timedelta(seconds=61)).authorised == 100
    t2 = t0 + timedelta(seconds=120)
    assert authorise(store, "r-1", 200, t2, ttl_s=60).authorised == 200
    assert store.newest_hold_at("till-a", "r-1") == t2
    # a release that came at T0+119 s (before the new hold was placed) leaves it
    assert not store.release("till-a", "r-1", placed_by=t2 - timedelta(seconds=1))
    assert store.holds_outstanding(t2) == (2, 300)


def test_a_seq_taken_entry_keeps_the_time_it_was_resolved(store: Any) -> None:
    """`open_seq_taken` reads the entries not resolved yet: till-a's r-2, sent under the
    seq r-1 holds, is set aside (seq taken), then stored as seq 2 at T1 (resolved then);
    the same seq 2 sent again at T2 is a duplicate and leaves the entry as it was."""
    t1, t2 = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, receipt="r-1")], NOW)
    got = store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, receipt="r-2")], NOW)
    assert [(r.outcome, r.seq_taken) for r in got.results] == [("CONFLICT", True)]
    store.ingest("till-a", "", [sale("till-a", 2, "c-1", 0, receipt="r-2")], t1)
    [entry] = store.set_aside_transactions("till-a")
    assert (entry["resolved"], entry["storedAsSeq"]) == (True, 2)
    resolved_at = entry["resolvedAt"]
    assert resolved_at == utc_text(t1)
    got = store.ingest("till-a", "", [sale("till-a", 2, "c-1", 0, receipt="r-2")], t2)
    assert [r.outcome for r in got.results] == ["DUPLICATE"]
    assert store.set_aside_transactions("till-a") == [entry]


def test_an_unsent_spend_held_again_after_its_hold_expired_is_held(store: Any) -> None:
    """`upsert_hold` makes the row ACTIVE again: till-a's unsent seq 1 (spent 100) is
    held for the other tills (seq:1); that hold expires (60 s) and is marked so by
    till-b's call; till-a asking again with seq 1 still unsent holds its 100 again."""
    t0 = datetime.now(UTC)
    unsent = [Unsynced(1, "", -100)]
    assert authorise(store, "r-9", 1, t0, unsent, ttl_s=60).authorised == 1
    assert store.holds_outstanding(t0) == (2, 101)
    later = t0 + timedelta(seconds=61)
    assert authorise(store, "r-x", 1, later, device="till-b").authorised == 1
    assert store.holds_outstanding(later) == (1, 1)  # till-a's two expired
    t2 = t0 + timedelta(seconds=120)
    assert authorise(store, "r-9", 1, t2, unsent, ttl_s=60).authorised == 1
    assert store.holds_outstanding(t2) == (3, 102)


def test_moves_at_one_time_count_in_the_order_the_hub_stored_them(store: Any) -> None:
    """§16: at the same `at`, the order stored (`MOVE_ORDER`, ingest_id; not the seq,
    which is each device's own). c-1 holds 1200 that never expire; lifetime 30 days.
    till-b's spend of 100 (its seq 5) is stored first, then till-a's sale earning 50
    (its seq 1), both at T: the spend takes 100 of the 1200, the 50 earned expire at
    T + 30 days: 1150 until then, 1100 after (earned first, the spend would have taken
    the 50 first, soonest-expiring, and left 1150 for good)."""
    program = sample_master_data()["program"] | {"pointsLifetimeDays": 30}
    import_doc(store, {"program": program})
    store.publish(NOW, WEEK)
    store.ingest("till-b", "", [sale("till-b", 5, "c-1", -100)], NOW)
    earn = sale("till-a", 1, "c-1", 50, result={"earnedPoints": 50})
    store.ingest("till-a", "", [earn], NOW)
    assert store.balance("c-1", NOW + timedelta(days=29)).available == 1150
    assert store.balance("c-1", NOW + timedelta(days=31)).available == 1100
    # an online redemption dated after the expiry is held against the same figure
    later = NOW + timedelta(days=31)
    got = store.authorise("till-c", "r-1", "c-1", 2000, later, [], datetime.now(UTC), 600.0)
    assert (got.authorised, got.live_balance) == (1100, 1100)


def test_a_receipt_id_another_device_sold_is_not_this_devices_sale(store: Any) -> None:
    """`receipt_settled(device, receipt)` (and the claim's check on PostgreSQL): till-b
    held and sold its "r-1"; till-a's own "r-1" is held as any receipt (not answered 0
    as a receipt already committed). 1200 - 100 = 1100 live."""
    now = datetime.now(UTC)
    assert authorise(store, "r-1", 100, now, device="till-b").authorised == 100
    store.ingest("till-b", "", [sale("till-b", 1, "c-1", -100, receipt="r-1")], now)
    got = authorise(store, "r-1", 300, now)
    assert (got.authorised, got.live_balance) == (300, 1100)


def test_a_coupon_hold_placed_as_the_call_came_does_not_supersede_it(store: Any) -> None:
    """Superseded is a hold placed after the call came (`created_at > now`), not at that
    instant: r-1's coupon hold stamped T, then a points step for r-1 that came at T, is
    granted on both stores."""
    t = datetime.now(UTC)
    assert store.hold_coupons("till-a", "r-1", "c-1", ["K-1"], t, 600.0) == []
    assert authorise(store, "r-1", 300, t).authorised == 300


def test_the_latest_versions_customer_row_is_the_live_balances_base(store: Any) -> None:
    """The live balance starts from the customer's row of the latest version: c-1
    imported again with 1500 in version 2 is 1500 live."""
    doc = sample_master_data()
    import_doc(store, {"customers": [doc["customers"][0] | {"balancePoints": 1500}]})
    assert store.publish(NOW, WEEK).version == 2
    got = authorise(store, "r-1", 2000, datetime.now(UTC))
    assert (got.authorised, got.live_balance) == (1500, 1500)
    assert store.balance("c-1", NOW).available == 1500


def test_the_last_program_line_of_an_import_counts(store: Any, tmp_path: Any) -> None:
    """An import of JSON lines with two program rows keeps the last (into a draft not
    empty: PostgreSQL's staged path; SQLite's replace)."""
    import_doc(store, {"products": [{"sku": "4601234000048", "name": "Хлеб"}]})
    program = sample_master_data()["program"]
    rows = [
        {"program": program | {"offlineRedeemLimitPoints": 100}},
        {"program": program | {"offlineRedeemLimitPoints": 200}},
    ]
    path = tmp_path / "two.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    store.import_rows(read_file(path))
    store.publish(NOW, WEEK)
    assert store.offline_limit() == 200


def test_a_card_of_a_customer_the_same_import_removes_is_refused(store: Any) -> None:
    """A card must point at a customer the next version holds: c-2 removed by the same
    import is not (the draft's removal counts, not the published row)."""
    doc = {
        "cards": [{"number": UNKNOWN, "customerId": "c-2", "status": "ACTIVE"}],
        "removed": {"customers": ["c-2"]},
    }
    with pytest.raises(ImportRefused, match="belongs to customer 'c-2', who is not known"):
        import_doc(store, doc)


# ---------------------------------------------------------------- an UNKNOWN card's refund


UNKNOWN = "2770000000048"  # a card the hub does not know: it settles the points itself


def test_an_unknown_cards_refund_takes_back_from_its_own_sales_pending_points(
    store: Any,
) -> None:
    """`checkout_pending(device, receipt)`: a refund of an UNKNOWN card's sale dated before
    the sale's points activate takes back what it can off that sale's pending points (the
    pending sum of the receipt on this device), the rest off the available ones. Two
    devices sold a receipt "r-1" (ids are a device's own): till-a's earned 20, pending;
    till-b's 100. till-a's refund takes back 50: 20 off till-a's pending, 30 available
    (not 50 off the pending of both, nor 50 available)."""
    program = sample_master_data()["program"] | {"activationDelayDays": 14}
    import_doc(store, {"program": program})
    store.publish(NOW, WEEK)
    store.ingest(
        "till-b",
        "",
        [sale("till-b", 1, "", 0, receipt="r-1", card=UNKNOWN, result={"earnedPoints": 100})],
        NOW,
    )
    store.ingest(
        "till-a",
        "",
        [sale("till-a", 1, "", 0, receipt="r-1", card=UNKNOWN, result={"earnedPoints": 20})],
        NOW,
    )
    refund = sale(
        "till-a",
        2,
        "",
        0,
        kind="REFUND",
        receipt="f-1",
        refunds="r-1",
        card=UNKNOWN,
        result={"takenBackPoints": 50, "returnedPoints": 0},
        at=NOW + timedelta(days=1),
    )
    assert store.ingest("till-a", "", [refund], NOW).acked_through == 2
    rows = {(e.device_id, e.seq): (e.delta_available, e.delta_pending) for e in store.ledger()}
    assert rows == {
        ("till-b", 1): (0, 100),
        ("till-a", 1): (0, 20),
        ("till-a", 2): (-30, -20),
    }


def test_a_card_the_hub_learns_brings_its_unknown_sales_to_its_customer(store: Any) -> None:
    """The snapshot's counting of an UNKNOWN card's sales (`counted_card_moves`,
    `reowned_cards`): till-a sold to the unknown card (40 points earned, settled by the
    hub); once an import gives the card to c-2, the next version's c-2 is 300 + 40 = 340,
    in the full snapshot and in the delta from the version before (c-2 changed there
    only through the card)."""
    store.ingest(
        "till-a", "", [sale("till-a", 1, "", 0, card=UNKNOWN, result={"earnedPoints": 40})], NOW
    )
    assert store.publish(NOW, WEEK).version == 2
    assert {c["id"]: c["balancePoints"] for c in store.snapshot_doc(2, 0)["customers"]} == {
        "c-1": 1200,
        "c-2": 300,
    }
    import_doc(store, {"cards": [{"number": UNKNOWN, "customerId": "c-2", "status": "ACTIVE"}]})
    assert store.publish(NOW, WEEK).version == 3
    full = {c["id"]: c["balancePoints"] for c in store.snapshot_doc(3, 0)["customers"]}
    assert full == {"c-1": 1200, "c-2": 340}
    delta = store.snapshot_doc(3, 2)
    assert [(c["id"], c["balancePoints"]) for c in delta["customers"]] == [("c-2", 340)]
    # the live balance of an online redemption counts the card as c-2's from version 3
    got = authorise(store, "r-1", 1000, datetime.now(UTC), customer="c-2")
    assert (got.authorised, got.live_balance) == (340, 340)


# ---------------------------------------------------------------- a used code (§13)


def test_a_code_a_till_used_never_comes_back_with_the_crms_list(store: Any) -> None:
    """A one-time code a till used leaves the next version, and an import of the CRM's
    coupon list with it again does not bring it back (`_PUBLISHED_DOC`)."""
    import_doc(store, {"offers": [SORRY], "coupons": COUPONS})
    store.publish(NOW, WEEK)

    def codes(version: int) -> list[str]:
        return sorted(c["code"] for c in store.snapshot_doc(version, 0).get("coupons", []))

    assert codes(2) == ["APP555", "SORRY7K2Q9"]
    used = {"coupons": [{"code": "SORRY7K2Q9", "status": "APPLIED"}]}
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, result=used)], NOW)
    assert store.publish(NOW, WEEK, include_draft=False, reason="balances").version == 3
    assert codes(3) == ["APP555"]
    import_doc(store, {"offers": [SORRY], "coupons": COUPONS})
    # a balance refresh now publishes no row of the operator's import: the code's row
    # was the till's once, until the refresh that published it
    assert store.draft_size() == 3
    assert store.publish(NOW, WEEK, include_draft=False, reason="balances").version == 4
    assert store.draft_size() == 3
    assert store.publish(NOW, WEEK).version == 5
    assert codes(5) == ["APP555"]


def test_a_delta_lists_no_customer_whose_card_did_not_change_since_its_base(store: Any) -> None:
    """`reowned_cards(base, pub)`: cards with a revision after the base only. The card
    given to c-2 in version 3 is not a change of version 4 over 3: its delta is empty."""
    store.ingest(
        "till-a", "", [sale("till-a", 1, "", 0, card=UNKNOWN, result={"earnedPoints": 40})], NOW
    )
    import_doc(store, {"cards": [{"number": UNKNOWN, "customerId": "c-2", "status": "ACTIVE"}]})
    assert store.publish(NOW, WEEK).version == 2
    import_doc(store, {"products": [{"sku": "4601234000048", "name": "Хлеб"}]})
    assert store.publish(NOW, WEEK).version == 3
    delta = store.snapshot_doc(3, 2)
    assert delta["customers"] == [] and [p["sku"] for p in delta["products"]] == ["4601234000048"]


# ---------------------------------------------------------------- pruned versions (§3)


def test_the_floors_snapshot_still_counts_the_ledger_after_a_prune(store: Any) -> None:
    """`_prune_step` forgets the versions below the floor and their `appliedThrough`
    rows, not the floor's own: after a prune to version 2, its full snapshot still says
    till-a through 1 and c-1 at 1200 - 100, and the delta 3 over 2 is made."""
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", -100)], NOW)
    hour = timedelta(hours=1)
    assert store.publish(NOW + hour, WEEK).version == 2
    assert store.publish(NOW + 2 * hour, WEEK).version == 3
    assert store.prune_versions(NOW + hour) == 2
    assert store.delta_floor() == 2
    full = store.snapshot_doc(2, 0)
    assert full["appliedThrough"] == {"till-a": 1}
    assert {c["id"]: c["balancePoints"] for c in full["customers"]}["c-1"] == 1100
    assert store.snapshot_doc(3, 2)["appliedThrough"] == {"till-a": 1}


# ---------------------------------------------------------------- what a delta lists (§3)


def test_a_delta_lists_the_customers_its_new_transactions_counted(store: Any) -> None:
    """`newly_counted(base, pub)`: the customers of the transactions counted from the
    base's `appliedThrough` (excluded) to the version's (included), up to its cut
    (included). Version 2 counts till-a's seqs 1-3 (c-1, +1 each) and till-b's seq 1
    (c-2, +10, the last stored); version 3 till-b's seq 2 (c-1, +5) only."""
    store.ingest("till-a", "", [sale("till-a", n, "c-1", 1) for n in (1, 2, 3)], NOW)
    store.ingest("till-b", "", [sale("till-b", 1, "c-2", 10)], NOW)
    assert store.publish(NOW, WEEK).version == 2

    def listed(version: int, base: int) -> list[tuple[str, int]]:
        return [
            (c["id"], c["balancePoints"]) for c in store.snapshot_doc(version, base)["customers"]
        ]

    assert listed(2, 1) == [("c-1", 1203), ("c-2", 310)]
    store.ingest("till-b", "", [sale("till-b", 2, "c-1", 5)], NOW)
    assert store.publish(NOW, WEEK).version == 3
    assert listed(3, 2) == [("c-1", 1208)]


def test_a_balance_refresh_leaves_the_operators_draft_for_the_next_publish(store: Any) -> None:
    """A balance refresh (`include_draft=False`) publishes the rows tills wrote (a code's
    first use) and clears only those: a product imported and not yet published stays
    in the draft for the operator's `hub publish`."""
    import_doc(store, {"offers": [SORRY], "coupons": COUPONS})
    store.publish(NOW, WEEK)
    import_doc(store, {"products": [{"sku": "4601234000048", "name": "Хлеб"}]})
    used = {"coupons": [{"code": "SORRY7K2Q9", "status": "APPLIED"}]}
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, result=used)], NOW)
    assert store.draft_size() == 2
    assert store.publish(NOW, WEEK, include_draft=False, reason="balances").version == 3
    assert store.draft_size() == 1
    assert "4601234000048" not in [p["sku"] for p in store.snapshot_doc(3, 0)["products"]]
    assert store.publish(NOW, WEEK).version == 4
    assert [p["sku"] for p in store.snapshot_doc(4, 3)["products"]] == ["4601234000048"]


def test_a_batch_sent_again_gets_its_first_answer(store: Any) -> None:
    """`batch_answer`: the same batch again (a lost answer) is answered as the first
    time (STORED, replayed), not run again (DUPLICATE)."""
    batch = [sale("till-a", 1, "c-1", -100)]
    first = store.ingest("till-a", "b-1", batch, NOW)
    again = store.ingest("till-a", "b-1", batch, NOW)
    assert [r.outcome for r in first.results] == [r.outcome for r in again.results] == ["STORED"]
    assert (again.replayed, again.acked_through) == (True, 1)
    assert store.balance("c-1", NOW).available == 1100


def test_a_category_tree_with_a_cycle_is_refused(store: Any) -> None:
    """`category_cycles`: an import that makes dairy the parent of food (food the parent
    of dairy already) is refused, naming the cycle."""
    doc = {"categories": [{"code": "food", "name": "Продукты", "parent": "dairy"}]}
    with pytest.raises(ImportRefused, match="is its own ancestor"):
        import_doc(store, doc)


def test_a_snapshot_counts_each_device_through_its_own_contiguous_seq(store: Any) -> None:
    """`COUNTED`: a device's transactions up to its own `appliedThrough`. till-a sent
    seqs 1-3 (c-1, +1 each); till-b seqs 1 and 3 (c-2, +10 and +20: seq 2 not yet
    there): version 2 counts till-b through 1 only, c-2 at 310 (not 330)."""
    store.ingest("till-a", "", [sale("till-a", n, "c-1", 1) for n in (1, 2, 3)], NOW)
    store.ingest("till-b", "", [sale("till-b", 1, "c-2", 10), sale("till-b", 3, "c-2", 20)], NOW)
    assert store.publish(NOW, WEEK).version == 2
    doc = store.snapshot_doc(2, 0)
    assert doc["appliedThrough"] == {"till-a": 3, "till-b": 1}
    assert {c["id"]: c["balancePoints"] for c in doc["customers"]} == {"c-1": 1203, "c-2": 310}


def test_another_receipts_hold_is_replayed_at_its_receipts_time(store: Any) -> None:
    """§16 at the hub (review 30): a hold of a receipt dated at or before the asking
    receipt is replayed as that receipt's spend at its time (`active_holds_at`'s
    `receipt_at`). c-1: 1200 never expiring + 100 earned at T, expiring at T+30 days.
    r-1 dated T+1 day holds 100 (the 100 that expire, soonest first); r-2 dated T+31
    days: those had expired by then, so r-1's hold takes nothing more: 1200 live (1100
    were the hold taken off as it is)."""
    program = sample_master_data()["program"] | {"pointsLifetimeDays": 30}
    import_doc(store, {"program": program})
    store.publish(NOW, WEEK)
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 100, result={"earnedPoints": 100})], NOW)
    now = datetime.now(UTC)
    assert authorise(store, "r-1", 100, now, at=NOW + timedelta(days=1)).authorised == 100
    got = authorise(store, "r-2", 2000, now, device="till-b", at=NOW + timedelta(days=31))
    assert (got.authorised, got.live_balance) == (1200, 1200)


# ---------------------------------------------------------------- the operator's reads


def test_the_operators_reads_of_uploads_refreshes_and_revocations(store: Any) -> None:
    """`last_uploads` is the newest seq's arrival; `ingested_since(cut)` counts what came
    after a version's cut (none: no balance refresh is due); `revoke` of a device already
    revoked changes nothing and says so; enrolling it again lifts the revocation."""
    t1, t2 = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0)], t1)
    store.ingest("till-a", "", [sale("till-a", 2, "c-1", 0)], t2)
    assert store.last_uploads(["till-a", "till-b"]) == {"till-a": utc_text(t2)}
    cut = store.publish(NOW, WEEK).cut
    assert store.ingested_since(cut) == 0
    store.ingest("till-a", "", [sale("till-a", 3, "c-1", 0)], t2)
    assert store.ingested_since(cut) == 1
    store.enroll("till-a", "fp", NOW)
    assert store.revoke("till-a", t1)
    assert not store.revoke("till-a", t2)
    assert store.device("till-a").revoked_at == utc_text(t1)
    store.enroll("till-a", "fp-2", t2)  # enrolled again: no longer revoked
    assert store.device("till-a").revoked_at is None


# ---------------------------------------------------------------- the same, seen by a till


def test_a_till_pulling_the_delta_sees_the_sale_another_till_pushed(tmp_path: Any) -> None:
    """What `newly_counted` lists reaches a till over gRPC: till-b sells to c-2's card
    and pushes; the hub publishes version 2; till-a, at version 1, pulls the delta and
    says c-2's balance as the hub does (300 and the points earned). The store is the
    run's (`--hub-store`)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    tills: list[Any] = []
    try:
        a = enrolled_till(hub, tmp_path / "a", "till-a")
        b = enrolled_till(hub, tmp_path / "b", "till-b")
        tills = [a, b]
        b.agent.checkout(receipt_from_json(receipt("r-1", "2770000000024")))
        Pusher(b.data_dir, b.device_id, b.link, call_timeout_s=5).drain()
        assert hub.publish() == 2
        Puller(a.agent, a.link, a.link.enrollment, call_timeout_s=5).pull()
        at_hub = hub.store.balance("c-2", datetime.now(UTC)).available
        assert at_hub > 300
        assert a.agent.balance("2770000000024").available_points == at_hub
    finally:
        for till in tills:
            till.stop()
        hub.stop()
