"""Review 26 (money26): the arithmetic at its edges, through the public doors.

docs/CONTRACT.md §2 (money, quantities), §5 (pricing), §6 (refunds), §16 (expiring points).
"""

from __future__ import annotations

from typing import Any

from .conftest import CLI, receipt, snapshot

CARD = "2770000000017"
MILK, BREAD = "4601234000017", "4601234000024"


def _refund(refund_id: str, *lines: tuple[str, str], at: str = "2026-11-24T10:00:00+03:00") -> Any:
    return {
        "refundId": refund_id,
        "receiptId": "r1",
        "at": at,
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
    }


# ---------------------------------------------------------------- §2 × §6: long quantities


def test_a_quantity_of_many_digits_is_returned_to_the_last_thousandth(cli: CLI) -> None:
    """docs/CONTRACT.md §2: a quantity is a decimal string with at most 3 decimals, of any
    length a text field may have; §6: returning all of it, in parts, returns exactly it.
    The POS sends the amount, so the line's amount fits whatever the quantity says.
    (The returned quantity was kept to 28 significant digits: after returning all but
    0.001 the till said the whole line had gone back and then some, "-987.655 left".)"""
    bought = "12345678901234567890123456789012.345"
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = receipt(
        lines=[
            {"sku": MILK, "qty": bought, "amountMinor": 500},
            {"sku": BREAD, "qty": "1", "priceMinor": 10000},
        ]
    )
    assert cli("checkout", sale, "--json").code == 0
    first = cli("refund", _refund("f1", (MILK, "12345678901234567890123456789012.344")), "--json")
    assert first.code == 0, first.err
    last = cli("refund", _refund("f2", (MILK, "0.001")), "--json")
    assert last.code == 0, last.err
    more = cli("refund", _refund("f3", (MILK, "0.001")), "--json")
    assert more.code == 2
    assert more.err == (
        f"tillpoint: receipt r1: returning more of sku {MILK} than was bought"
        f" ({bought} bought, {bought} returned before, 0 left to return;"
        " this refund asks 0.001)\n"
    )


# ---------------------------------------------------------------- §2 × §3: int64 balances

I64 = 2**63 - 1


def test_a_balance_that_fits_is_answered_whatever_its_movements_add_up_to(cli: CLI) -> None:
    """docs/CONTRACT.md §2 and §3: points are whole numbers, int64 in the contract; the
    local balance is `balancePoints` plus this till's movements. A customer at the int64
    floor (a hub's correction) who earns 3.46e18 points three times has 1.15e18: the sum
    of the movements alone passes int64, the balance does not. (The till summed the
    movements in SQLite, which said "integer overflow": the fourth checkout and every
    `balance` of the customer were "internal error", exit 1.)"""
    snap = snapshot()
    snap["program"]["pointValueMinor"] = 1
    snap["customers"][0]["balancePoints"] = -I64 - 1
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": MILK, "qty": "1", "priceMinor": I64}
    earned = I64 * 75 * 5 // 1000  # 7.5 % × the birthday's 5 of I64 minor units, 1 each
    for k in range(4):
        run = cli("checkout", receipt(f"r{k}", lines=[line]), "--json")
        assert run.code == 0, run.err
        assert run.json()["earnedPoints"] == earned
        assert run.json()["balance"]["availablePoints"] == -I64 - 1 + (k + 1) * earned
    balance = cli("balance", CARD, "--at", "2026-11-23T12:00:00+03:00", "--json")
    assert balance.code == 0, balance.err
    assert balance.json() == {"availablePoints": -I64 - 1 + 4 * earned, "pendingPoints": 0}
