"""A refund judges the sold receipt's pending points by the activation time fixed at commit.

The activation delay in force when the receipt was committed decides when its earned
points become spendable; a program changed later by a delta does not move them.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations
from tillpoint.agent import ledger as ledger_db
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import PROGRAM, receipt, snapshot

BORIS = "2770000000024"  # c-b: base tier (3 %), 80 points


def _program(delay: int) -> dict[str, Any]:
    return {**PROGRAM, "activationDelayDays": delay}


def _sale() -> dict[str, Any]:
    # 450.00 at 3 %: 13.5 -> 13 points earned
    return receipt(
        "r-1",
        card=BORIS,
        at="2026-11-23T10:15:00+03:00",
        lines=[{"sku": "4601234000055", "qty": "1", "priceMinor": 45000}],
    )


def _refund() -> dict[str, Any]:
    return {
        "refundId": "rf-1",
        "receiptId": "r-1",
        "at": "2026-11-24T10:00:00+03:00",  # the next day
        "lines": [{"sku": "4601234000055", "qty": "1"}],
    }


@pytest.mark.parametrize(
    ("delay_at_sale", "delay_at_refund", "after_sale"),
    [
        (0, 7, {"availablePoints": 93, "pendingPoints": 0}),
        (7, 0, {"availablePoints": 80, "pendingPoints": 13}),
    ],
)
def test_refund_uses_the_delay_in_force_at_commit(
    tmp_path: Path, delay_at_sale: int, delay_at_refund: int, after_sale: dict[str, int]
) -> None:
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot(program=_program(delay_at_sale)))
        sold = agent.checkout(receipt_from_json(_sale()))
        assert sold.earned_points == 13
        assert sold.to_json()["balance"] == after_sale
        agent.load_snapshot({"version": 2, "baseVersion": 1, "program": _program(delay_at_refund)})
        refunded = agent.refund(refund_from_json(_refund()))
        assert refunded.taken_back_points == 13
        assert refunded.to_json()["balance"] == {"availablePoints": 80, "pendingPoints": 0}
        assert refunded.negative_balance is False
        for moment in ("2026-11-24T10:00:00+03:00", "2026-12-31T10:00:00+03:00"):
            at = datetime.fromisoformat(moment)
            assert agent.balance(BORIS, at).to_json() == {"availablePoints": 80, "pendingPoints": 0}
    finally:
        agent.close()


def test_the_migration_fills_the_activation_time_of_older_receipts(tmp_path: Path) -> None:
    """A ledger written before the column existed: each receipt gets its earn row's
    activation time, or its sale time when it earned nothing."""
    data = tmp_path / "data"
    data.mkdir()
    old = Migrations("tillpoint.ledger")
    old()(ledger_db.m001_ledger)
    old()(ledger_db.m002_print_jobs_open)
    conn = sqlite3.connect(data / "ledger.db")
    old.apply(Database(conn))
    for receipt_id, seq in (("r-earned", 1), ("r-nothing", 2)):
        conn.execute(
            "INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                receipt_id,
                "till-1",
                seq,
                "2026-11-23T10:15:00+03:00",
                "2026-11-23",
                BORIS,
                "c-b",
                "OFFLINE",
                0,
                0,
                "{}",
                "{}",
                "2026-11-23T07:15:00.000000Z",
            ),
        )
    conn.execute(
        "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
        " activates_at) VALUES ('till-1', 1, 'c-b', 'r-earned', 'earn', 13,"
        " '2026-11-30T07:15:00.000000Z')"
    )
    conn.commit()
    conn.close()

    ledger = ledger_db.open_ledger(data)
    try:
        got = dict(ledger.execute("SELECT receipt_id, activates_at FROM receipts").fetchall())
    finally:
        ledger.close()
    assert got == {
        "r-earned": "2026-11-30T07:15:00.000000Z",
        "r-nothing": "2026-11-23T10:15:00+03:00",
    }
