"""Review 27 (ref27): refunds (docs/CONTRACT.md §6) where they meet pricing, deals,
coupons, expiring points and the receipt's life, through the public doors."""

from __future__ import annotations

import math
import tempfile
import time
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, PROGRAM, receipt, snapshot
from .test_deals_properties import deal_offers
from .test_properties import lines, qty

CARD = "2770000000017"
MILK, BREAD, CHEESE = "4601234000017", "4601234000024", "4601234000055"


def _refund(refund_id: str, back: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "refundId": refund_id,
        "receiptId": "r1",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": back,
    }
    body.update(changes)
    return body


# ------------------------------------------------------------ a big receipt returned line by line


def test_a_big_receipt_returned_line_by_line_is_answered_at_once(cli: CLI) -> None:
    """docs/CONTRACT.md §6, DECISIONS "A receipt or a refund is at most 10,000 lines": one
    call's work is bounded as its bytes are. A POS that sends each scan as a line of its
    own returns such a receipt line by line; each returned (sku, qty) used to look for its
    line from the receipt's first one again, and over every line of another SKU: 1,000
    lines took ~10 s, 2,000 ~40 s, 10,000 ~10 min, every call of the till waiting."""
    n = 700
    sold = [{"sku": MILK, "qty": "1", "priceMinor": 10000} for _ in range(n)]
    sold += [{"sku": BREAD if i % 2 else CHEESE, "qty": "1.5", "priceMinor": 999} for i in range(n)]
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = cli("checkout", receipt(lines=sold, redeemPoints=-1), "--json")
    assert sale.code == 0, sale.err
    back: list[dict[str, Any]] = [{"sku": MILK, "qty": "1"} for _ in range(n)]
    back += [{"sku": line["sku"], "qty": "1.5"} for line in sold[n:]]
    started = time.monotonic()
    got = cli("refund", _refund("f1", back), "--json")
    took = time.monotonic() - started
    assert got.code == 0, got.err
    # the fault's 1,400 lines took ~20 s; 3 s until review 40, which a loaded machine's
    # CPU could pass for the fixed one
    assert took < 8, f"a {2 * n}-line refund took {took:.1f} s"
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
    sold: list[dict[str, Any]] = [
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
    steps: list[tuple[list[dict[str, str]], list[Any]]] = [
        ([{"sku": MILK, "qty": "0.3"}, {"sku": MILK, "qty": "0.3"}], ["0.512", 0, "0.088", 0]),
        ([{"sku": MILK, "qty": "1.924"}, {"sku": BREAD, "qty": "0.5"}], [q[0], "0.5", 2, "0.012"]),
        ([{"sku": MILK, "qty": "1.238"}, {"sku": BREAD, "qty": "0.5"}], q),
    ]
    before = [Fraction(0)] * 4
    for n, (back, after_text) in enumerate(steps):
        after = [Fraction(str(a)) for a in after_text]
        got = cli("refund", _refund(f"f{n}", back), "--json")
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


# ------------------------------------------------------------ any split, any time, any deal


SOLD_AT = datetime.fromisoformat("2026-11-23T10:15:00+03:00")


def _split_world(
    line_rows: list[dict[str, Any]],
    offer_rows: list[dict[str, Any]],
    delay: int,
    lifetime: int,
    batches: list[tuple[int, int]],
    pending: int,
    requested: int,
    data: st.DataObject,
) -> None:
    """One sale under deals and offers, returned whole in random pieces at random times
    (before and after its points activate, after batches its redemption took expired):
    it gives back exactly what it redeemed, takes back exactly what it earned, and leaves
    every later balance (available, pending, expiring) as if it had never been sold."""
    customer: dict[str, Any] = {
        "id": "c-a",
        "firstName": "Анна",
        "tier": "gold",
        "balancePoints": 300 + sum(p for p, _ in batches),
        "controlGroups": ["camp-held"],
        "favoriteWeekday": 5,
        "expiring": [
            {"points": p, "expiresAt": (SOLD_AT + timedelta(hours=h)).isoformat()}
            for p, h in batches
        ],
    }
    if pending:
        activates = (SOLD_AT + timedelta(days=1)).isoformat()
        customer["pending"] = [{"points": pending, "activatesAt": activates}]
    program = dict(
        PROGRAM,
        activationDelayDays=delay,
        pointsLifetimeDays=lifetime,
        maxRedeemPercent=100,
        offlineRedeemLimitPoints=100_000,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="tp-ref27-"))
    agent = Agent(data_dir / "data", "till-1")
    try:
        agent.load_snapshot(snapshot(program=program, customers=[customer], offers=offer_rows))
        # Every refund is before the sale's own points would expire (then §6 takes them
        # back from the rest: docs/CONTRACT.md §16's decisions).
        moments = [SOLD_AT + timedelta(hours=h) for h in (0, 23, 24, 47, 49, 24 * 6, 24 * 40)]
        before = [agent.balance(CARD, at=m).to_json() for m in moments]
        sold = agent.checkout(
            receipt_from_json(receipt(lines=line_rows, redeemPoints=requested))
        ).to_json()
        pieces: list[tuple[str, Decimal]] = []
        for line in line_rows:
            left = Decimal(line["qty"])
            while left > 0:
                part = min(
                    left, data.draw(st.sampled_from([Decimal("0.001"), Decimal("0.3")]) | qty)
                )
                pieces.append((line["sku"], part))
                left -= part
        pieces = data.draw(st.permutations(pieces))
        size = data.draw(st.integers(1, 4))
        hours = sorted(
            data.draw(st.lists(st.integers(0, 24 * 5), min_size=len(pieces), max_size=len(pieces)))
        )
        returned = taken = 0
        for n, start in enumerate(range(0, len(pieces), size)):
            chunk = pieces[start : start + size]
            at = (SOLD_AT + timedelta(hours=hours[start])).isoformat()
            got = agent.refund(
                refund_from_json(
                    {
                        "refundId": f"f{n}",
                        "receiptId": "r1",
                        "at": at,
                        "lines": [{"sku": s, "qty": format(q, "f")} for s, q in chunk],
                    }
                )
            ).to_json()
            returned += got["returnedPoints"]
            taken += got["takenBackPoints"]
        assert (returned, taken) == (sold["redeemedPoints"], sold["earnedPoints"])
        last = SOLD_AT + timedelta(hours=hours[-1])
        for moment, was in zip(moments, before, strict=True):
            if moment >= last:
                assert agent.balance(CARD, at=moment).to_json() == was, moment
    finally:
        agent.close()


_split_args = dict(
    line_rows=lines(),
    offer_rows=deal_offers(),
    delay=st.integers(0, 2),
    lifetime=st.sampled_from([0, 0, 10, 30]),
    batches=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 24 * 8)), max_size=3),
    pending=st.sampled_from([0, 0, 40]),
    requested=st.integers(-1, 3000),
    data=st.data(),
)


@settings(
    max_examples=4, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(**_split_args)
def test_a_sale_returned_in_any_split_at_any_times_leaves_the_balance_as_it_was(
    **kwargs: Any,
) -> None:
    """docs/CONTRACT.md §6, §15, §16 (short run; the long one is slow)."""
    _split_world(**kwargs)


@pytest.mark.slow  # ~110 s: for `make test-all`
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_split_args)
def test_a_sale_returned_in_any_split_at_any_times_leaves_the_balance_as_it_was_at_length(
    **kwargs: Any,
) -> None:
    _split_world(**kwargs)
