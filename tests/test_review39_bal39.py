"""Review 39 (bal39): left39's balance at T landed (CONTRACT §16, §6, §5's decision on a
balance at time T): points a refund gives back return to their batches at the refund's
time, so a balance asked for a time before a refund has not got them yet.

- review 23's reference model (`tests/refund_reference23.py`) said 80 for the 24th,
  between a sale of the 23rd (50 of 80 points redeemed, 12 earned) and its return on the
  25th: it now says what the customer had then, 42, and so does the till;
- the hub's balance at a time and its grant for a receipt of that time counted the
  refund's points a day early too (`hub balance --at`, the live grant of an online
  redemption): 80, where the till says 42 (the hub and the till count the same points);
- a refund dated back, before another refund that gives points back: its own result's
  balance is the balance at its time, without the later refund's points.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.loopback import import_doc

from .conftest import PROGRAM, receipt, snapshot
from .refund_reference23 import SKU_A, Customer, RefTill, World
from .test_hub_till_agree import pushed

BORIS = "2770000000024"  # c-b: base tier (3 %), 80 points
MILK = "4601234000055"
NOW = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
WEEK = 7 * 86400.0


def _sale(receipt_id: str, at: str, redeem: int) -> dict[str, Any]:
    return receipt(
        receipt_id,
        card=BORIS,
        at=at,
        lines=[{"sku": MILK, "qty": "1", "priceMinor": 45000}],
        redeemPoints=redeem,
    )


def _refund(refund_id: str, receipt_id: str, at: str) -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": at,
        "lines": [{"sku": MILK, "qty": "1"}],
    }


def test_the_reference_model_gives_a_refund_s_points_back_from_its_time_on() -> None:
    """CONTRACT §16 ("Points given back by a refund return to the batches they were taken
    from"; "Available at T = what is left of the batches not expired at T"): 800 points,
    a sale on the 23rd redeems 300 and earns 37 (7.5 % of 500.00), returned on the 25th.
    On the 24th the customer had 537, not the 800 the refund gave back a day later; a
    receipt of the 24th sent after the refund redeems at most those."""
    world = World(max_pct=100, offline_limit=10_000)
    ref = RefTill(world, Customer("c-a", "2770000000017", 800))
    code, sold = ref.checkout(
        {
            "receiptId": "r-1",
            "at": "2026-11-23T10:00:00+03:00",
            "card": "2770000000017",
            "lines": [{"sku": SKU_A, "qty": "1", "priceMinor": 80000}],
            "redeemPoints": 300,
        }
    )
    assert code == 0 and sold is not None
    assert (sold["redeemedPoints"], sold["earnedPoints"]) == (300, 37)
    body = {
        "refundId": "f-1",
        "receiptId": "r-1",
        "at": "2026-11-25T10:00:00+03:00",
        "lines": [{"sku": SKU_A, "qty": "1"}],
    }
    code, back = ref.refund(body)
    assert code == 0 and back is not None
    assert back["balance"] == {"availablePoints": 800, "pendingPoints": 0}
    on_24th = datetime.fromisoformat("2026-11-24T12:00:00+03:00")
    assert ref.balance(on_24th)["availablePoints"] == 537
    assert (
        ref.balance(datetime.fromisoformat("2026-11-25T10:00:00+03:00"))["availablePoints"] == 800
    )
    code, late = ref.checkout(
        {
            "receiptId": "r-2",
            "at": "2026-11-24T12:00:00+03:00",
            "card": "2770000000017",
            "lines": [{"sku": SKU_A, "qty": "1", "priceMinor": 80000}],
            "redeemPoints": 800,
        }
    )
    assert code == 0 and late is not None
    assert late["redeemedPoints"] == 537


def _hub_and_till(tmp: Path, lifetime: int) -> tuple[SqliteHubStore, Agent]:
    doc = snapshot(program={**PROGRAM, "pointsLifetimeDays": lifetime})
    for key in ("version", "baseVersion", "issuedAt"):
        doc.pop(key)
    hub = SqliteHubStore(tmp / "hub.db")
    import_doc(hub, doc)
    assert hub.publish(NOW, WEEK).version == 1
    agent = Agent(tmp / "till", "till-1")
    agent.load_snapshot(hub.snapshot_doc(1, 0))
    return hub, agent


@pytest.mark.parametrize("lifetime", [0, 365], ids=["points-never-expire", "points-expire"])
def test_the_hub_counts_a_refund_s_points_from_its_time_on_as_the_till_does(
    lifetime: int,
) -> None:
    """The hub replays the till's sale and refund: its balance at the 24th is the till's
    42 (it said 80), at the refund's time and after both say 80; and a receipt of the
    24th asking the hub for 80 points is granted the 42 the customer had then."""
    with tempfile.TemporaryDirectory() as tmp:
        hub, agent = _hub_and_till(Path(tmp), lifetime)
        try:
            agent.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
            agent.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
            result = hub.ingest("till-1", "", pushed(Path(tmp) / "till"), NOW)
            assert {r.outcome for r in result.results} == {"STORED"}, result
            for at, want in (
                ("2026-11-24T12:00:00+03:00", 42),
                ("2026-11-25T10:00:00+03:00", 80),
                ("2026-11-26T10:00:00+03:00", 80),
            ):
                moment = datetime.fromisoformat(at)
                till = agent.balance(BORIS, moment)
                there = hub.balance("c-b", moment)
                assert (
                    (there.available, there.pending)
                    == (
                        till.available_points,
                        till.pending_points,
                    )
                    == (want, 0)
                ), at
            grant = hub.authorise(
                "till-1",
                "r-2",
                "c-b",
                80,
                datetime.fromisoformat("2026-11-24T12:00:00+03:00"),
                [],
                NOW + timedelta(days=6),
                1800.0,
            )
            assert grant.authorised == 42
        finally:
            agent.close()
            hub.close()


def test_a_refund_dated_back_says_the_balance_of_its_time(tmp_path: Path) -> None:
    """CONTRACT §6: a refund's result carries the balance after it, at its `at`. r-1 (23rd)
    redeems 50 of 80 and earns 12; r-2 (23rd, later) redeems 20 and earns 12; r-1 is
    returned on the 26th (50 back, 12 taken back); then r-2 is returned dated the 24th
    (20 back, 12 taken back). On the 24th after that refund the customer had
    80 - 50 + 12 (r-1, not returned yet) = 42, and the refund says so; from the 26th on
    80. `returnedPoints` and `takenBackPoints` are §6's whatever the date."""
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot(program=PROGRAM))
        agent.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
        agent.checkout(receipt_from_json(_sale("r-2", "2026-11-23T11:00:00+03:00", 20)))
        agent.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-26T10:00:00+03:00")))
        back = agent.refund(refund_from_json(_refund("f-2", "r-2", "2026-11-24T12:00:00+03:00")))
        doc = back.to_json()
        assert (doc["returnedPoints"], doc["takenBackPoints"]) == (20, 12)
        assert doc["balance"]["availablePoints"] == 42
        at_24th = agent.balance(BORIS, datetime.fromisoformat("2026-11-24T12:00:00+03:00"))
        assert at_24th.available_points == 42
        assert (
            agent.balance(
                BORIS, datetime.fromisoformat("2026-11-26T10:00:00+03:00")
            ).available_points
            == 80
        )
    finally:
        agent.close()
