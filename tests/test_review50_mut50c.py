"""Review 50 (mut50c): mutation testing of the receipt's life at the till (the contract
§11) in `agent/service.py` and the ledger calls it makes. Each test pins a rule whose
mutant survived the receipt-life tests (docs/DECISIONS.md, "Review 50 (mut50c)")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import PROGRAM, ManualClock, receipt, snapshot

CARD = "2770000000017"


@pytest.fixture
def till(tmp_path: Path, clock: ManualClock) -> Iterator[Agent]:
    a = Agent(tmp_path / "data", "till-1", clock=clock)
    a.load_snapshot(snapshot(program={**PROGRAM, "holdTtlSeconds": 600}))
    yield a
    a.close()


def count(agent: Agent, table: str) -> int:
    return int(agent._ledger.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def outbox(agent: Agent) -> list[dict[str, Any]]:
    return [
        json.loads(row.payload)
        for row in ledger.outbox_batch(agent._ledger, agent.device_id, 1_000_000)
    ]


def test_a_checkout_of_a_held_receipt_confirms_that_hold(till: Agent) -> None:
    """§11: Checkout is Hold and Confirm; sent for a receipt still held (the same body) it
    confirms the held figures, as Confirm would: CONFIRMED, journaled once, the points
    moved. (mut50c: the `state == "HELD"` test negated, it answered the HELD result and
    committed nothing.)"""
    before = till.balance(CARD).available_points
    held = till.hold(receipt_from_json(receipt(redeemPoints=40)))
    assert held.state == "HELD" and held.redeemed_points == 40
    done = till.checkout(receipt_from_json(receipt(redeemPoints=40)))
    assert done.state == "CONFIRMED" and done.seq == 1
    assert "holdExpiresAt" not in done.to_json()
    for key in ("lines", "totalMinor", "discountMinor", "redeemedPoints", "earnedPoints"):
        assert done.to_json()[key] == held.to_json()[key]
    (tx,) = outbox(till)
    assert (tx["kind"], tx["seq"]) == ("CHECKOUT", 1)
    assert tx["pointsDeltaAvailable"] == -40 + held.earned_points
    assert till.balance(CARD).available_points == before - 40 + held.earned_points
    # and it is the commit from then on
    assert till.confirm("r1") == done
    assert count(till, "receipts") == 1


def test_a_fiscal_document_of_64_characters_is_stored_whole(till: Agent) -> None:
    """§11: `fiscalDocument` ≤ 64 characters: 64 is taken and sent to the hub as given (65 is
    refused: tests/test_receipt_life.py). (mut50c: `>` made `>=` refused 64.)"""
    till.hold(receipt_from_json(receipt()))
    document = "ФД-" + "9" * 61  # 64 characters (67 bytes of UTF-8)
    assert len(document) == 64
    done = till.confirm("r1", document)
    assert done.state == "CONFIRMED"
    (tx,) = outbox(till)
    assert tx["fiscalDocument"] == document


def test_a_sweep_told_to_stop_leaves_the_expired_holds_release_owed(tmp_path: Path) -> None:
    """§11 (expired holds release their reservations) with `tillpoint run`'s stop: once the
    hold timer's stop is set, its sweep still expires the hold (it reserves nothing at the
    till) but sends no release; it is owed (the hub keeps the points until it is sent), and
    the next round sends it. (mut50c: `hub_hold and not stopping` made `or` sent it after
    the stop, which a stop waiting on a slow hub must not do: review 35.)"""
    import threading
    from datetime import UTC, datetime

    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, timings, wait_for
    from tillpoint.sync.loopback import receipt as hub_receipt
    from tillpoint.sync.pull import Puller, cache_version

    from .test_receipt_life import hub_holds

    data = sample_master_data()
    data["program"]["holdTtlSeconds"] = 120
    hub = LoopbackHub(tmp_path / "hub", data=data)
    clock = ManualClock(datetime.now(UTC))
    till = hub.till(
        "till-1",
        tmp_path / "till",
        start=False,
        clock=clock,
        timings=timings(redeem_timeout_s=3.0),
    )
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        wait_for(lambda: cache_version(till.data_dir) == 1)
        lines = [{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}]
        sale = hub_receipt("h-1", CARD, at=clock.now, redeem=600, lines=lines)
        held = till.agent.hold(receipt_from_json(sale))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 600)
        assert hub_holds(hub)["h-1"][:2] == ("ACTIVE", 600)

        clock.advance(121)
        stop = threading.Event()
        stop.set()
        assert till.agent.sweep_holds(stop) == 1  # expired at the till ...
        assert till.agent._life("h-1").state == "EXPIRED"  # type: ignore[union-attr]
        assert hub_holds(hub)["h-1"][:2] == ("ACTIVE", 600)  # ... not released: owed
        assert till.agent.hub_calls_owed()["release"] == 1
        assert till.agent.retry_hub_releases() == 1  # the next round sends it
        assert "h-1" not in hub_holds(hub)
        assert till.agent.hub_calls_owed()["release"] == 0
    finally:
        till.stop()
        hub.stop()


def test_a_confirmed_hold_whose_digest_was_made_another_way_is_still_a_retry(
    till: Agent,
) -> None:
    """§11's decision: a receipt held and confirmed by the 2026-11-30 release (its digest made
    of its whole Receipt dump) is compared through its stored request when the digests
    differ. Once confirmed, the life row keeps no request (the receipt's row does), so the
    comparison reads the committed receipt's. A retry of the same body is answered with the
    commit, another body is the conflict. (mut50c: the stored receipt's request not read,
    the retry was a 409.)"""
    from tillpoint.agent.errors import Conflict

    till.hold(receipt_from_json(receipt(redeemPoints=40)))
    done = till.confirm("r1", "FD-1")
    # the digest as another release made it: the same body, another hash
    till._ledger.execute(
        "UPDATE receipt_life SET digest = 'made-otherwise' WHERE receipt_id = 'r1'"
    )
    assert till.checkout(receipt_from_json(receipt(redeemPoints=40))) == done
    assert till.hold(receipt_from_json(receipt(redeemPoints=40))) == done
    with pytest.raises(Conflict):
        till.hold(receipt_from_json(receipt(redeemPoints=10)))
    assert count(till, "receipts") == 1


def test_a_cancel_of_an_expired_hold_cancels_the_receipt(till: Agent, clock: ManualClock) -> None:
    """§11's decision: a Cancel of a hold that expired (swept) answers CANCELLED and the
    receipt is cancelled from then on: its Hold answers that, not a fresh hold. (mut50c:
    `close_holds` turned to touch only HELD rows at a Cancel left it EXPIRED, and the
    Hold after it priced and held it again.)"""
    held = till.hold(receipt_from_json(receipt(redeemPoints=40)))
    clock.advance(600)
    assert till.sweep_holds() == 1
    cancelled = till.cancel("r1")
    assert cancelled.state == "CANCELLED" and cancelled.redeemed_points == 40
    assert till._life("r1").state == "CANCELLED"  # type: ignore[union-attr]
    again = till.hold(receipt_from_json(receipt(redeemPoints=40)))
    assert again == cancelled and again.to_json()["totalMinor"] == held.to_json()["totalMinor"]


def test_a_till_whose_hub_is_away_counts_its_open_offline_holds_in_the_days_limit(
    tmp_path: Path,
) -> None:
    """§11: a hold reserves the offline limit. On a till with a hub that does not answer,
    the limit is read by `ledger.offline_redeemed`: an open OFFLINE hold of 300 of the
    day's 500 leaves 200 to the next receipt of the card; expired, it leaves 500 again.
    (mut50c: the open holds' sum subtracted instead of added gave the next receipt 500.)"""
    from datetime import UTC, datetime

    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, timings, wait_for
    from tillpoint.sync.loopback import receipt as hub_receipt
    from tillpoint.sync.pull import Puller, cache_version

    data = sample_master_data()
    data["program"]["holdTtlSeconds"] = 120
    assert data["program"]["offlineRedeemLimitPoints"] == 500
    hub = LoopbackHub(tmp_path / "hub", data=data)
    clock = ManualClock(datetime.now(UTC))
    till = hub.till(
        "till-1",
        tmp_path / "till",
        start=False,
        clock=clock,
        timings=timings(redeem_timeout_s=0.5),
    )
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        wait_for(lambda: cache_version(till.data_dir) == 1)
        hub.stop()  # away from here on
        lines = [{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}]

        def sale(rid: str, redeem: int) -> Any:
            return receipt_from_json(
                hub_receipt(rid, CARD, at=clock.now, redeem=redeem, lines=lines)
            )

        first = till.agent.hold(sale("h-1", 300))
        assert (first.mode, first.redeemed_points) == ("OFFLINE", 300)
        second = till.agent.hold(sale("h-2", 1000))
        assert (second.mode, second.redeemed_points) == ("OFFLINE", 200)
        till.agent.cancel("h-2")
        clock.advance(120)  # h-1 expired: it reserves nothing
        assert till.agent.hold(sale("h-3", 1000)).redeemed_points == 500
    finally:
        till.stop()
