"""Review 24 (spec24): findings of the combination scenarios in tests/scenarios/review24/,
each with the test that failed before its fix."""

from __future__ import annotations

from typing import Any

from .conftest import CLI, snapshot

EXPIRES = "2026-12-15T23:59:59+03:00"


def _zoya() -> dict[str, Any]:
    """c-b with 100 points, all of them expiring on 15 December."""
    snap = snapshot()
    for customer in snap["customers"]:
        if customer["id"] == "c-b":
            customer["balancePoints"] = 100
            customer["expiring"] = [{"points": 100, "expiresAt": EXPIRES}]
    return snap


def _receipt(receipt_id: str, at: str, redeem: int) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": at,
        "card": "2770000000024",
        "lines": [{"sku": "4601234000055", "qty": "1", "priceMinor": 100000}],
        "redeemPoints": redeem,
    }


def test_an_open_hold_takes_its_points_out_of_the_expiring_batches_too(cli: CLI) -> None:
    """§16 × §11: another receipt priced while a hold is open counted the hold's points out
    of `availablePoints` but left them in `expiring` (59 available, 90 listed to expire on
    15 December, and the display warned of 90): the batch holds 100 - 60 held - 10 spent."""
    assert cli("snapshot", "load", _zoya(), "--json").code == 0
    held = cli("hold", _receipt("r1", "2026-12-10T10:00:00+03:00", 60), "--json").json()
    assert held["redeemedPoints"] == 60
    # 100000 - 1000 redeemed: 99000 * 3 / 10000 = 29.7 -> 29 earned, never expiring
    sale = cli("checkout", _receipt("r2", "2026-12-10T10:05:00+03:00", 10), "--json").json()
    assert sale["redeemedPoints"] == 10 and sale["earnedPoints"] == 29
    assert sale["balance"] == {
        "availablePoints": 59,
        "pendingPoints": 0,
        "expiring": [{"points": 30, "expiresAt": EXPIRES}],
    }
    # a quote beside the hold: 59 may be spent (percent cap 300), the 30 expiring first
    quote = cli("quote", _receipt("q1", "2026-12-10T10:06:00+03:00", 20), "--json").json()
    assert quote["balance"]["availablePoints"] == 59 - 20 + 29
    assert quote["balance"]["expiring"] == [{"points": 10, "expiresAt": EXPIRES}]
    # and once the hold is confirmed the ledger says the same as the results did
    confirmed = cli("confirm", "r1", "--json").json()
    assert confirmed["state"] == "CONFIRMED"
    after = cli("balance", "2770000000024", "--at", "2026-12-10T10:07:00+03:00", "--json").json()
    assert after == {
        "availablePoints": 30 + 28 + 29,
        "pendingPoints": 0,
        "expiring": [{"points": 30, "expiresAt": EXPIRES}],
    }
