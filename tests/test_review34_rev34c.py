"""Review 34, rev34c: a second look at life34 (CONTRACT §16, the expiry of earned points
fixed at commit, at the hub too) and inv34 (CONTRACT §4, §12, an INVALID card is bad
input), in orders of events the first tests did not take.

Real hub stores (a SQLite file; a PostgreSQL database of the tests' throwaway cluster),
driven through the hub's rules as a till's pushes reach them.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from tests.test_review34_life34 import NOW, c1, hub_of, instant, lifetime_now, sale


def refund_of(seq: int, receipt_id: str, taken: int, at: str) -> Any:
    from tillpoint.sync.hub_store import TxIn

    return TxIn(
        "till-1",
        seq,
        "REFUND",
        at,
        "c-1",
        "",
        json.dumps({"refundId": f"f-{seq}", "receiptId": receipt_id}),
        json.dumps({"refundId": f"f-{seq}", "returnedPoints": 0}),
        -taken,
        0,
        "",
    )


def test_a_refund_that_reaches_the_hub_before_its_sale_takes_back_off_the_sales_batch(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §16: the refund of r-1 (40 of its 100 points back) arrives in a push
    before the sale does (the sale numbered again, sent after). The sale then says its
    batch never expires (committed while nothing expired); the hub, holding 30 days,
    takes the refund's 40 off that batch: the 60 left never expire, in the balance and
    in the snapshot, whichever came first."""
    hub = hub_of(hub_store_factory, lifetime=30)
    back = refund_of(2, "r-1", 40, "2026-11-24T10:00:00+03:00")
    assert hub.ingest("till-1", "", [back], NOW).results[0].outcome == "STORED"
    assert hub.ingest("till-1", "", [sale(1, 100, "never")], NOW).results[0].outcome == "STORED"
    assert hub.balance("c-1", NOW + timedelta(days=3650)).available == 1260
    assert c1(hub, NOW + timedelta(days=2)) == (1260, [])


def test_batches_of_old_and_new_sales_with_refunds_after_lifetime_changes(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §16, a wallet of mixed sales: an older till's sale (no expiry said: the
    hub's rule, the lifetime it holds when it answers) and this release's (30 days said
    at commit, then "never"), each partly refunded, while the hub's lifetime goes from 30
    to 0 and to 90. Each refund takes back off its own sale's batch; only the older
    till's batch follows the lifetime the hub holds."""
    hub = hub_of(hub_store_factory, lifetime=30)
    day30 = "2026-12-23T10:15:00+03:00"
    txs = [sale(1, 100), sale(2, 50, day30), sale(3, 20, "never")]
    assert [r.outcome for r in hub.ingest("till-1", "", txs, NOW).results] == ["STORED"] * 3
    later = "2026-11-24T10:00:00+03:00"
    refunds = [refund_of(4, "r-1", 10, later), refund_of(5, "r-2", 5, later)]
    refunds.append(refund_of(6, "r-3", 2, later))
    assert [r.outcome for r in hub.ingest("till-1", "", refunds, NOW).results] == ["STORED"] * 3
    # held 30 days: r-1's 90 and r-2's 45 expire on day 30 (r-1's by the hub's rule)
    assert c1(hub, NOW + timedelta(days=2)) == (1353, [(135, instant(day30))])
    assert hub.balance("c-1", instant(day30) + timedelta(seconds=1)).available == 1218
    lifetime_now(hub, 0)  # the older till's batch never expires now; r-2's still does
    assert c1(hub, NOW + timedelta(days=3)) == (1353, [(45, instant(day30))])
    assert hub.balance("c-1", NOW + timedelta(days=3650)).available == 1308
    lifetime_now(hub, 90)
    day90 = instant("2027-02-21T10:15:00+03:00")
    assert c1(hub, NOW + timedelta(days=4)) == (1353, [(45, instant(day30)), (90, day90)])
    assert hub.balance("c-1", day90 + timedelta(seconds=1)).available == 1218


def test_a_hub_of_the_previous_release_reads_a_sale_that_says_its_expiry() -> None:
    """CONTRACT §16, PROTOCOL field 13: the previous release's `Transaction` is this one
    without `earned_expires_at`. A sale this till sends reads there field for field as
    before (the new field an unknown one it skips), and one the previous release's till
    sends reads here with the field empty: the hub's rule, as before."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from tillpoint.v1 import tillpoint_pb2 as pb

    older = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(older)
    message = next(m for m in older.message_type if m.name == "Transaction")
    kept = [f for f in message.field if f.number != 13]
    assert len(kept) == len(message.field) - 1
    del message.field[:]
    message.field.extend(kept)
    pool = descriptor_pool.DescriptorPool()
    for dependency in pb.DESCRIPTOR.dependencies:
        deps = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(deps)
        pool.Add(deps)
    pool.Add(older)
    Older = message_factory.GetMessageClass(pool.FindMessageTypeByName("tillpoint.v1.Transaction"))

    sent = pb.Transaction(
        device_id="till-1",
        seq=7,
        kind=pb.CHECKOUT,
        customer_id="c-1",
        points_delta_available=269,
        earned_expires_at="2027-01-03T07:15:00Z",
    )
    read = Older.FromString(sent.SerializeToString())
    assert (read.device_id, read.seq, read.customer_id, read.points_delta_available) == (
        "till-1",
        7,
        "c-1",
        269,
    )
    assert not hasattr(read, "earned_expires_at")
    back = pb.Transaction.FromString(
        Older(device_id="till-1", seq=8, kind=pb.CHECKOUT).SerializeToString()
    )
    assert (back.seq, back.earned_expires_at) == (8, "")
