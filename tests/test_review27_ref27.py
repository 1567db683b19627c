"""Review 27 (ref27): refunds (docs/CONTRACT.md §6) where they meet pricing, deals,
coupons, expiring points and the receipt's life, through the public doors."""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Any

import pytest

from .conftest import CLI, receipt, snapshot

CARD = "2770000000017"
MILK, BREAD, CHEESE = "4601234000017", "4601234000024", "4601234000055"


def _refund(refund_id: str, lines: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "refundId": refund_id,
        "receiptId": "r1",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": lines,
    }
    body.update(changes)
    return body


# ------------------------------------------------------------ a big receipt returned line by line


@pytest.mark.slow  # ~2 s: a 1,400-line sale priced and committed first
def test_a_big_receipt_returned_line_by_line_is_answered_at_once(cli: CLI) -> None:
    """docs/CONTRACT.md §6, DECISIONS "A receipt or a refund is at most 10,000 lines": one
    call's work is bounded as its bytes are. A POS that sends each scan as a line of its
    own returns such a receipt line by line; each returned (sku, qty) used to look for its
    line from the receipt's first one again, and for every line of another SKU: 2,000
    lines took ~40 s (1,000: ~10 s; 10,000: ~10 min), the till's every call waiting behind the lock."""
    n = 700
    sold = [{"sku": MILK, "qty": "1", "priceMinor": 10000} for _ in range(n)]
    sold += [{"sku": BREAD if i % 2 else CHEESE, "qty": "1.5", "priceMinor": 999} for i in range(n)]
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = cli("checkout", receipt(lines=sold, redeemPoints=-1), "--json")
    assert sale.code == 0, sale.err
    back = [{"sku": MILK, "qty": "1"} for _ in range(n)]
    back += [{"sku": line["sku"], "qty": "1.5"} for line in sold[n:]]
    started = time.monotonic()
    got = cli("refund", _refund("f1", back), "--json")
    took = time.monotonic() - started
    assert got.code == 0, got.err
    assert took < 3, f"a {2 * n}-line refund took {took:.1f} s"
    result = got.json()
    assert result["returnedPoints"] == sale.json()["redeemedPoints"]
    assert result["takenBackPoints"] == sale.json()["earnedPoints"]
    assert result["balance"]["availablePoints"] == 1200


def _share(points: int, returned: Fraction, qty: Fraction) -> int:
    return math.floor(points * returned / qty)


def test_returns_of_one_sku_fill_its_lines_in_order_within_and_across_refunds(cli: CLI) -> None:
    """docs/CONTRACT.md §6: a returned (sku, qty) is taken from the receipt's first line
    with that SKU that still has qty left, then the next; several entries of one SKU in
    one refund continue where the one before stopped, a later refund too."""
    sold = [
        {"sku": MILK, "qty": "0.512", "priceMinor": 8990},
        {"sku": BREAD, "qty": "1", "priceMinor": 4500},
        {"sku": MILK, "qty": "2", "priceMinor": 8990},
        {"sku": MILK, "qty": "1.25", "priceMinor": 8990},
    ]
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = cli("checkout", receipt(lines=sold, redeemPoints=-1), "--json").json()
    q = [Fraction(line["qty"]) for line in sold]
    p = [line["redeemedMinor"] // 100 for line in sale["lines"]]
    e = [line["earnedPoints"] for line in sale["lines"]]
    assert all(p) and all(e)
    # (returned qty of each line before, after): 0.3 + 0.3 spill from line 0 into line 2;
    # then 1.924 fills line 2 and takes 0.012 of line 3; then the rest of line 3, and bread.
    steps: list[tuple[list[dict[str, str]], list[Fraction]]] = [
        ([{"sku": MILK, "qty": "0.3"}, {"sku": MILK, "qty": "0.3"}], ["0.512", 0, "0.088", 0]),
        ([{"sku": MILK, "qty": "1.924"}, {"sku": BREAD, "qty": "0.5"}], [q[0], "0.5", 2, "0.012"]),
        ([{"sku": MILK, "qty": "1.238"}, {"sku": BREAD, "qty": "0.5"}], q),
    ]
    before = [Fraction(0)] * 4
    for n, (lines, after_text) in enumerate(steps):
        after = [Fraction(str(a)) for a in after_text]
        got = cli("refund", _refund(f"f{n}", lines), "--json")
        assert got.code == 0, got.err
        want_back = sum(
            _share(p[i], after[i], q[i]) - _share(p[i], before[i], q[i]) for i in range(4)
        )
        want_taken = sum(
            _share(e[i], after[i], q[i]) - _share(e[i], before[i], q[i]) for i in range(4)
        )
        assert (got.json()["returnedPoints"], got.json()["takenBackPoints"]) == (
            want_back,
            want_taken,
        ), n
        before = after
    assert got.json()["balance"]["availablePoints"] == 1200
    over = cli("refund", _refund("f9", [{"sku": MILK, "qty": "0.001"}]), "--json")
    assert over.code == 2 and "3.762 bought, 3.762 returned before, 0 left" in over.err
