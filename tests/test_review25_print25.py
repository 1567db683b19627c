"""Review 25 (print25): offers printed on the receipt (docs/CONTRACT.md §7), the customer
display (§8) and till-issued coupons (§13), end to end."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

NEXT_VISIT: dict[str, Any] = {
    "id": "o-next",
    "campaignId": "camp-n",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000017"],
    "value": "20",
    "couponRequired": True,
    "issueCoupon": True,
    "printable": True,
    "printText": "−20% на молоко в следующий раз",
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2026-12-31T23:59:59+03:00",
    "rank": 1,
}


def _issued(data: Path) -> list[str]:
    conn = sqlite3.connect(data / "ledger.db")
    try:
        return [str(c) for (c,) in conn.execute("SELECT code FROM issued_coupons ORDER BY seq")]
    finally:
        conn.close()


def test_a_till_restored_from_a_backup_issues_no_code_it_issued_before(tmp_path: Path) -> None:
    """docs/CONTRACT.md §13: a till-issued code is unique in the chain, built from a
    per-device counter "never reused, like `seq`" (§9: after a snapshot whose
    appliedThrough is higher than the till's last seq, numbering continues above it).
    A till whose ledger was put back from last week's backup continued its seq above the
    snapshot's appliedThrough, but its coupon counter from the backup: it printed again
    the codes it had issued after the backup (TP5TILL12 to two customers)."""
    data, backup = tmp_path / "data", tmp_path / "backup"
    till = Agent(data, "till-1")
    till.load_snapshot(snapshot(offers=[NEXT_VISIT]))
    till.checkout(receipt_from_json(receipt("r1")))  # TP5TILL11, seq 1 and 2
    till.close()
    shutil.copytree(data, backup)
    till = Agent(data, "till-1")
    for i, day in enumerate(("2026-12-01", "2026-12-09"), 2):  # after the 7-day cooldown
        till.checkout(receipt_from_json(receipt(f"r{i}", at=f"{day}T10:00:00+03:00")))
    till.close()
    issued = _issued(data)
    assert issued == ["TP5TILL11", "TP5TILL12", "TP5TILL13"]  # seq 2, 4 and 6

    # the till's disk fails; last week's backup goes back; the hub counted through seq 6
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    till = Agent(data, "till-1")
    restored = snapshot(offers=[NEXT_VISIT], version=2, appliedThrough={"till-1": 6})
    till.load_snapshot(restored)
    done = till.checkout(receipt_from_json(receipt("r9", at="2026-12-17T10:00:00+03:00")))
    till.close()
    assert done.to_json()["seq"] == 7
    (new,) = set(_issued(data)) - {"TP5TILL11"}
    assert new not in issued
