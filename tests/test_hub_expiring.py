"""The reference hub's own expiring points (docs/CONTRACT.md §16), on both hub stores:
its balances leave out expired batches and spend the soonest-expiring first, and its
snapshots publish each customer's `expiring` batches that still hold points."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tillpoint.agent.service import Agent
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
EXPIRES = "2026-12-01T00:00:00+03:00"  # = 2026-11-30T21:00Z
WEEK = 7 * 86400.0


def spend(seq: int, points: int, at: str, customer: str = "c-1") -> TxIn:
    return TxIn(
        "till-1",
        seq,
        "CHECKOUT",
        at,
        customer,
        "",
        json.dumps({"receiptId": f"r-{seq}"}),
        "{}",
        -points,
        0,
        "",
    )


def earn_pending(seq: int, points: int, at: str, activates: str) -> TxIn:
    return TxIn(
        "till-1",
        seq,
        "CHECKOUT",
        at,
        "c-1",
        "",
        json.dumps({"receiptId": f"r-{seq}"}),
        "{}",
        0,
        points,
        activates,
    )


def customer(hub: Any, version: int) -> dict[str, Any]:
    doc = hub.snapshot_doc(version, 0)
    return next(c for c in doc["customers"] if c["id"] == "c-1")


def with_expiring(lifetime: int = 0) -> dict[str, Any]:
    data = sample_master_data()
    data["program"]["pointsLifetimeDays"] = lifetime
    # c-1: 1200 points, of which 300 expire at midnight on 1 December (Moscow)
    data["customers"][0]["expiring"] = [{"points": 300, "expiresAt": EXPIRES}]
    return data


def test_imported_batches_expire_and_are_spent_soonest_first(hub_store_factory: Any) -> None:
    hub = hub_store_factory()  # each hub store: SQLite and PostgreSQL
    import_doc(hub, with_expiring())
    assert hub.publish(NOW, WEEK).version == 1
    first = customer(hub, 1)
    assert first["balancePoints"] == 1200
    assert [(e["points"], datetime.fromisoformat(e["expiresAt"])) for e in first["expiring"]] == [
        (300, datetime.fromisoformat(EXPIRES))
    ]
    # Spent on 25 November: taken from the batch that expires first (300 → 200).
    hub.ingest("till-1", "", [spend(1, 100, "2026-11-25T12:00:00+03:00")], NOW)
    assert hub.balance("c-1", datetime(2026, 11, 26, tzinfo=UTC)).available == 1100
    assert hub.publish(datetime(2026, 11, 26, tzinfo=UTC), WEEK).version == 2
    second = customer(hub, 2)
    assert second["balancePoints"] == 1100
    assert [e["points"] for e in second["expiring"]] == [200]
    # Through midnight on 1 December (expiresAt counts, as validTo does) the 200 left of
    # the batch count; a second later they are gone: 1100 - 200 = 900.
    at_expiry = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
    assert hub.balance("c-1", at_expiry).available == 1100
    assert hub.balance("c-1", at_expiry + timedelta(seconds=1)).available == 900
    # A spend after the expiry takes the points that never expire, not the expired batch.
    hub.ingest("till-1", "", [spend(2, 100, "2026-12-02T12:00:00+03:00")], NOW)
    assert hub.balance("c-1", datetime(2026, 12, 3, tzinfo=UTC)).available == 800
    assert hub.publish(datetime(2026, 12, 3, tzinfo=UTC), WEEK).version == 3
    third = customer(hub, 3)
    assert third["balancePoints"] == 800
    assert "expiring" not in third
    # The live balance that authorises an online redemption leaves the expired points out.
    grant = hub.authorise(
        "till-2", "r-x", "c-1", 850, datetime(2026, 12, 3, tzinfo=UTC), [], NOW, 60.0
    )
    assert grant.live_balance == 800
    assert grant.authorised == 800


def test_points_earned_at_a_till_expire_after_the_lifetime(hub_store_factory: Any) -> None:
    hub = hub_store_factory()
    import_doc(hub, with_expiring(lifetime=30))
    assert hub.publish(NOW, WEEK).version == 1
    # 50 points earned on 23 November, spendable from 24 November 10:15 Moscow time: they
    # expire 30 days later at the same local clock time.
    hub.ingest(
        "till-1",
        "",
        [earn_pending(1, 50, "2026-11-23T10:15:00+03:00", "2026-11-24T10:15:00+03:00")],
        NOW,
    )
    before = datetime(2026, 11, 24, tzinfo=UTC)
    balance = hub.balance("c-1", before)
    assert (balance.available, balance.pending) == (1200, 50)
    assert hub.publish(datetime(2026, 11, 25, tzinfo=UTC), WEEK).version == 2
    row = customer(hub, 2)
    assert row["balancePoints"] == 1250
    assert "pending" not in row
    assert [(e["points"], datetime.fromisoformat(e["expiresAt"])) for e in row["expiring"]] == [
        (300, datetime.fromisoformat(EXPIRES)),
        (50, datetime.fromisoformat("2026-12-24T10:15:00+03:00")),
    ]
    gone = datetime(2026, 12, 24, 7, 15, 1, tzinfo=UTC)
    assert hub.balance("c-1", gone).available == 900  # both batches expired


def test_a_till_that_pulls_sees_the_hubs_expiring_batches(
    tmp_path: Any, hub_store_factory: Any
) -> None:
    hub = hub_store_factory()
    import_doc(hub, with_expiring())
    hub.ingest("till-1", "", [spend(1, 100, "2026-11-22T12:00:00+03:00")], NOW)
    assert hub.publish(NOW, WEEK).version == 1
    agent = Agent(tmp_path / "till", "till-2")
    try:
        agent.load_snapshot(hub.snapshot_doc(1, 0))
        shown = agent.balance("2770000000017", datetime(2026, 11, 24, tzinfo=UTC))
        assert shown.available_points == 1100
        assert shown.to_json()["expiring"] == [{"points": 200, "expiresAt": EXPIRES}]
        # after the expiry, the till leaves the 200 out as the hub does
        later = agent.balance("2770000000017", datetime(2026, 12, 1, tzinfo=UTC))
        assert later.available_points == 900
    finally:
        agent.close()


def test_points_earned_at_once_expire_after_the_lifetime(hub_store_factory: Any) -> None:
    hub = hub_store_factory()
    import_doc(hub, with_expiring(lifetime=30))
    # A sale on 23 November 10:15 (Moscow) redeems 100 and earns 30 at once (no activation
    # delay): the till sends -70 available; the hub reads the 30 earned from its result.
    sale = TxIn(
        "till-1",
        1,
        "CHECKOUT",
        "2026-11-23T10:15:00+03:00",
        "c-1",
        "",
        json.dumps({"receiptId": "r-1"}),
        json.dumps({"redeemedPoints": 100, "earnedPoints": 30}),
        -70,
        0,
        "",
    )
    hub.ingest("till-1", "", [sale], NOW)
    assert hub.publish(datetime(2026, 11, 25, tzinfo=UTC), WEEK).version == 1
    row = customer(hub, 1)
    assert row["balancePoints"] == 1130
    # the 100 spent came off the batch expiring first; the 30 expire on 23 December 10:15
    assert [(e["points"], datetime.fromisoformat(e["expiresAt"])) for e in row["expiring"]] == [
        (200, datetime.fromisoformat(EXPIRES)),
        (30, datetime.fromisoformat("2026-12-23T10:15:00+03:00")),
    ]
    assert hub.balance("c-1", datetime(2026, 12, 2, tzinfo=UTC)).available == 930
    assert hub.balance("c-1", datetime(2026, 12, 23, 7, 15, 1, tzinfo=UTC)).available == 900
