"""The hub gives points a refund returns back to the batches the sale took them from, as
the till does (docs/CONTRACT.md §16): on both hub stores, a sale spends an expiring batch
at a till, the sale is refunded there, and the hub that ingested the till's transactions
says the same as the till: the points are back in the batch with its expiry (the hub's
balance, its snapshot's `balancePoints` and `expiring`), and gone after it."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import import_doc

from .conftest import receipt
from .test_hub_till_agree import CARD, SKU, WEEK, _master, pushed

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
EXPIRES = datetime.fromisoformat("2026-12-01T00:00:00+03:00")


def _customer(hub: Any, version: int) -> dict[str, Any]:
    doc = hub.snapshot_doc(version, 0)
    return next(c for c in doc["customers"] if c["id"] == "c-b")


def _batches(entries: Any) -> list[tuple[int, datetime]]:
    return [(int(e["points"]), datetime.fromisoformat(e["expiresAt"])) for e in entries]


def test_a_refund_gives_points_back_to_the_batch_at_the_hub_as_at_the_till(
    hub_store_factory: Any,
) -> None:
    hub = hub_store_factory()  # each hub store: SQLite and PostgreSQL
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Path(tmp) / "till", "till-1")
        try:
            # c-b: 100 points that never expire and 300 that expire at midnight on
            # 1 December (Moscow); points earned at a till live 30 days.
            import_doc(hub, _master(100, [(300, EXPIRES)], 30, 0))
            assert hub.publish(NOW, WEEK).version == 1
            agent.load_snapshot(hub.snapshot_doc(1, 0))
            # 25 November: a sale redeems 250 points, all from the expiring batch (→ 50).
            sale_at = datetime.fromisoformat("2026-11-25T12:00:00+03:00")
            line = {"sku": SKU, "qty": "1", "priceMinor": 100_000}
            sold = agent.checkout(
                receipt_from_json(
                    receipt("r1", card=CARD, at=sale_at.isoformat(), lines=[line], redeemPoints=250)
                )
            )
            assert sold.redeemed_points == 250
            # 27 November: the sale is refunded whole; its 250 points go back to the batch.
            back_at = datetime.fromisoformat("2026-11-27T12:00:00+03:00")
            refunded = agent.refund(
                refund_from_json(
                    {
                        "refundId": "rf1",
                        "receiptId": "r1",
                        "at": back_at.isoformat(),
                        "lines": [{"sku": SKU, "qty": "1"}],
                    }
                )
            )
            assert refunded.returned_points == 250
            result = hub.ingest("till-1", "", pushed(Path(tmp) / "till"), NOW)
            assert {r.outcome for r in result.results} == {"STORED"}, result

            before = datetime.fromisoformat("2026-11-28T12:00:00+03:00")
            after = EXPIRES + timedelta(hours=1)
            till_before = agent.balance(CARD, before)
            till_after = agent.balance(CARD, after)
            # The till: the 300 are whole again, and gone after midnight on 1 December.
            first = till_before.expiring[0]
            assert (first.points, datetime.fromisoformat(first.expires_at)) == (300, EXPIRES)
            assert till_before.available_points - till_after.available_points == 300
            for moment, till in ((before, till_before), (after, till_after)):
                there = hub.balance("c-b", moment)
                assert (there.available, there.pending) == (
                    till.available_points,
                    till.pending_points,
                ), moment
            # The live balance that authorises an online redemption (PostgreSQL reads it in
            # one statement of its own) leaves the expired batch out too.
            grant = hub.authorise("till-2", "r-x", "c-b", 10**6, after, [], NOW, 60.0)
            assert grant.live_balance == till_after.available_points
            hub.release("till-2", "r-x")
            # The hub's snapshot says the same: balancePoints and every expiring batch.
            for moment, till in ((before, till_before), (after, till_after)):
                version = hub.publish(moment, WEEK).version
                row = _customer(hub, version)
                assert row["balancePoints"] == till.available_points, moment
                assert _batches(row.get("expiring", [])) == [
                    (b.points, datetime.fromisoformat(b.expires_at)) for b in till.expiring
                ], moment
        finally:
            agent.close()
