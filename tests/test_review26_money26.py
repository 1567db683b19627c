"""Review 26 (money26): the arithmetic at its edges, through the public doors.

docs/CONTRACT.md §2 (money, quantities), §5 (pricing), §6 (refunds), §16 (expiring points).
"""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent.models import Receipt, Refund
from tillpoint.agent.service import Agent

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


# ---------------------------------------------------------------- §6 × §16: parts of a whole

AT = datetime.fromisoformat("2026-11-23T10:15:00+03:00")
SKUS = [MILK, BREAD, "4601234000031"]  # the last is tobacco: excluded from loyalty


def _qty_text(q: Fraction) -> str:
    whole, part = divmod(q.numerator * 1000 // q.denominator, 1000)
    return f"{whole}.{part:03d}".rstrip("0").rstrip(".")


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batches=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 60)), max_size=3),
    rest=st.integers(0, 300),
    pending=st.lists(st.tuples(st.integers(1, 200), st.integers(-5, 5)), max_size=2),
    delay=st.sampled_from([0, 1, 3]),
    lifetime=st.sampled_from([0, 10, 30]),
    lines=st.lists(
        st.tuples(st.sampled_from(SKUS), st.integers(1, 3000), st.integers(1, 50_000)),
        min_size=1,
        max_size=3,
    ),
    redeem=st.sampled_from([-1, 50, 1]),
    parts=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    minutes=st.integers(0, 72),
)
def test_a_sale_returned_in_any_parts_leaves_every_batch_as_it_was(
    batches: list[tuple[int, int]],
    rest: int,
    pending: list[tuple[int, int]],
    delay: int,
    lifetime: int,
    lines: list[tuple[str, int, int]],
    redeem: int,
    parts: int,
    seed: int,
    minutes: int,
) -> None:
    """docs/CONTRACT.md §6: returning everything, in any number of refunds of weighed
    parts (to the 0.001), gives back exactly the redeemed points and takes back exactly
    the earned ones; §16: the points go back to the batches they came from, so before
    any batch expires the balance and its `expiring` batches are what they were before
    the sale, at every later moment (pending points, snapshot batches and activation
    delays included)."""
    r = random.Random(seed)
    snap = snapshot()
    snap["program"].update(
        pointsLifetimeDays=lifetime,
        activationDelayDays=delay,
        maxRedeemPercent=100,
        offlineRedeemLimitPoints=10**6,
    )
    anna = snap["customers"][0]
    anna["birthday"] = "1990-05-05"
    anna["expiring"] = [
        {"points": p, "expiresAt": (AT + timedelta(days=d)).isoformat()} for p, d in batches
    ]
    anna["balancePoints"] = sum(p for p, _ in batches) + rest
    anna["pending"] = [
        {"points": p, "activatesAt": (AT + timedelta(days=d)).isoformat()} for p, d in pending
    ]
    sold = [
        {"sku": sku, "qty": _qty_text(Fraction(q, 1000)), "priceMinor": p} for sku, q, p in lines
    ]
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Path(tmp) / "data", "till-1")
        try:
            agent.load_snapshot(snap)
            when = AT + timedelta(minutes=minutes)  # before any batch expires (a day on)
            later = [when + timedelta(hours=h) for h in (0, 3, 30, 24 * 4, 24 * 12, 24 * 70)]
            before = [agent.balance(CARD, t).to_json() for t in later]
            sale = agent.checkout(
                Receipt.model_validate(receipt(lines=sold, redeemPoints=redeem))
            ).to_json()
            left = [Fraction(line["qty"]) for line in sold]
            returned = taken = 0
            for k in range(1, 100):
                if not any(left):
                    break
                asked = []
                for i, line in enumerate(sold):
                    whole = left[i] if k >= parts else None
                    q = whole or Fraction(r.randint(0, int(left[i] * 1000)), 1000)
                    if q:
                        left[i] -= q
                        asked.append({"sku": line["sku"], "qty": _qty_text(q)})
                if asked:
                    body = {"refundId": f"f{k}", "receiptId": "r1", "at": when.isoformat()}
                    got = agent.refund(Refund.model_validate({**body, "lines": asked}))
                    returned += got.to_json()["returnedPoints"]
                    taken += got.to_json()["takenBackPoints"]
            assert (returned, taken) == (sale["redeemedPoints"], sale["earnedPoints"])
            assert [agent.balance(CARD, t).to_json() for t in later] == before
        finally:
            agent.close()
