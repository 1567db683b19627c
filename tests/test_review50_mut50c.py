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
