"""Review 31 (spec31a): the contract's arithmetic, read again from its words alone.

The scenarios in tests/scenarios/review31/ work receipts out by hand (CONTRACT §2, §3, §5,
§6, §16). This file checks the same rules over seeded random baskets against a plain reading
of CONTRACT §2, §5 steps 1-6 and §6, written for this review without the product's pricing
code nor the earlier models (tests/oracle28.py): line offers of every money kind and
multipliers (minQty, SKU or ancestor category, personal or mass, validity to the second,
`at` in any offset with a fraction), receipt percent-offs and EXTRA_POINTS at their
thresholds, every redemption cap at once (balance, percent, capacity, offline limit) and the
largest-remainder spread, accrual with tiers, multipliers, the birthday window (29 February
too) and any point value; then refunds in random parts, the balance at each receipt's `at`
with an activation delay, and refunds in parts of sales whose points are still pending.
Every receipt goes through the CLI on a real cache and ledger. Nothing here found a fault:
the product and the reading agree on every basket.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tillpoint.agent.money import decimal_text

from .conftest import CLI, ean13

SKUS = [
    "4601234000017",  # cheese (dairy < food)
    "4601234000024",  # bakery
    "4601234000031",  # tobacco: excluded from loyalty
    "4601234000048",  # dairy
    "4601234000062",  # food
    "4601234000079",  # not in the catalogue
]
PARENT: dict[str, str | None] = {
    "food": None,
    "dairy": "food",
    "cheese": "dairy",
    "bakery": "food",
    "tobacco": None,
}
PRODUCT_CATEGORY = {
    SKUS[0]: "cheese",
    SKUS[1]: "bakery",
    SKUS[2]: "tobacco",
    SKUS[3]: "dairy",
    SKUS[4]: "food",
}
LINE_KINDS = ("PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "BONUS_MULTIPLIER")
RECEIPT_KINDS = ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS")
CUSTOMER = "c-31"


def round_half_up(x: Fraction) -> int:
    """CONTRACT §2 (every value rounded here is 0 or more)."""
    return math.floor(x + Fraction(1, 2))


def ancestors(category: str | None) -> list[str]:
    out: list[str] = []
    while category is not None:
        out.append(category)
        category = PARENT[category]
    return out


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------- random snapshots and baskets


def gen_snapshot(rng: random.Random, version: int, card: str) -> dict[str, Any]:
    """A snapshot for one customer of its own (`c-31-<version>`): a till's own transactions
    count towards its customer's balance (§3), so each round's start from the snapshot."""
    customer = f"{CUSTOMER}-{version}"
    pv = rng.choice([100, 100, 50, 1, 7, 250])
    program = {
        "currency": "RUB",
        "timezone": rng.choice(["Europe/Moscow", "Asia/Vladivostok", "Europe/Berlin"]),
        "pointValueMinor": pv,
        "maxRedeemPercent": rng.choice([30, 0, 100, 45, 15]),
        "activationDelayDays": 0,
        "offlineRedeemLimitPoints": rng.choice([500, 10**9, 3]),
        "birthdayMultiplier": rng.choice([5, 2, 1]),
        "birthdayWindowDays": rng.choice([7, 0, 3]),
        "tiers": [
            {"code": "base", "accrualPercent": rng.choice(["3", "2.5", "0.125"])},
            {"code": "gold", "accrualPercent": rng.choice(["7", "12.35", "0"])},
        ],
    }
    offers = []
    for k in range(rng.randint(0, 9)):
        kind = rng.choice([*LINE_KINDS, *RECEIPT_KINDS, "PERCENT_OFF"])
        offer: dict[str, Any] = {
            "id": f"o-{rng.randint(1, 30)}-{k}",  # ids that sort as text: "o-10-1" < "o-9-0"
            "kind": kind,
            "priority": rng.choice([1, 5, 10]),
            "validFrom": rng.choice(
                [
                    "2026-11-01T00:00:00+03:00",
                    "2026-12-04T12:00:00+03:00",
                    "2026-12-04T12:00:01+03:00",
                ]
            ),
            "validTo": rng.choice(
                [
                    "2026-12-31T23:59:59+03:00",
                    "2026-12-04T12:00:00+03:00",
                    "2026-12-04T11:59:59+03:00",
                ]
            ),
        }
        if when(offer["validTo"]) < when(offer["validFrom"]):
            offer["validTo"] = "2026-12-31T23:59:59+03:00"
        if rng.random() < 0.3:
            offer["customerId"] = rng.choice([customer, "c-other"])
        if kind in RECEIPT_KINDS:
            offer["minTotalMinor"] = rng.choice([0, 1000, 5000, 20000])
            offer["value"] = rng.choice(
                ["5", "10", "7.5", "100"] if kind == "RECEIPT_PERCENT_OFF" else ["10", "0", "25"]
            )
        else:
            if rng.random() < 0.5:
                offer["skus"] = rng.sample(SKUS, rng.randint(1, 2))
            else:
                offer["categories"] = rng.sample(sorted(PARENT), 1)
            if rng.random() < 0.4:
                offer["minQty"] = rng.choice(["1", "2", "0.5", "1.5"])
            offer["value"] = rng.choice(
                {
                    "PERCENT_OFF": ["15", "12.5", "33.337", "100", "1"],
                    "AMOUNT_OFF": ["150", "2000", "12.5", "99999"],
                    "FIXED_PRICE": ["0", "4590", "12345", "99"],
                    "BONUS_MULTIPLIER": ["2", "1.5", "10", "0.5", "5"],
                }[kind]
            )
        offers.append(offer)
    return {
        "version": version,
        "baseVersion": 0,
        "issuedAt": f"2026-12-01T00:00:{version % 60:02d}Z",
        "program": program,
        "categories": [
            {"code": c, "parent": p} if p else {"code": c} for c, p in sorted(PARENT.items())
        ],
        "products": [
            {"sku": sku, "category": c, "excludedFromLoyalty": c == "tobacco"}
            for sku, c in PRODUCT_CATEGORY.items()
        ],
        "customers": [
            {
                "id": customer,
                "firstName": "Вера",
                "tier": rng.choice(["base", "gold"]),
                "birthday": rng.choice(["1990-12-05", "1990-12-11", "1990-06-01", "1992-02-29"]),
                "balancePoints": rng.choice([0, 50, 1200, 100000, 7]),
            }
        ],
        "cards": [{"number": card, "customerId": customer, "status": "ACTIVE"}],
        "offers": offers,
    }


def gen_receipt(rng: random.Random, receipt_id: str, card: str) -> dict[str, Any]:
    lines = []
    for _ in range(rng.randint(1, 5)):
        line: dict[str, Any] = {
            "sku": rng.choice(SKUS),
            "qty": rng.choice(["1", "2", "3", "0.5", "0.347", "1.5", "0.001", "2.000"]),
        }
        if rng.random() < 0.2:
            line["amountMinor"] = rng.choice([0, 1, 999, 12345, 100000])
        else:
            line["priceMinor"] = rng.choice([0, 1, 99, 4590, 8990, 12345, 45999, 100000])
        lines.append(line)
    return {
        "receiptId": receipt_id,
        "at": rng.choice(
            [
                "2026-12-04T12:00:00+03:00",
                "2026-12-04T09:00:00Z",
                "2026-12-04T11:59:59.5+03:00",
                "2026-12-04T23:30:00+00:00",
            ]
        ),
        "card": card,
        "lines": lines,
        "redeemPoints": rng.choice([-1, 0, 5, 100, 10**6]),
    }


# ---------------------------------------------------------------- the reading


@dataclass
class _Line:
    sku: str
    qty: Fraction
    amount: int
    eligible: bool
    categories: list[str]
    discount: int = 0
    offer_id: str | None = None
    multiplier: Fraction = field(default_factory=lambda: Fraction(1))


def _birthday_on(year: int, birthday: date) -> date:
    try:
        return date(year, birthday.month, birthday.day)
    except ValueError:  # 29 February in another year
        return date(year, 2, 28)


def _largest_remainder(exact: list[Fraction], total: int) -> list[int]:
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def reading(snap: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """CONTRACT §2 and §5 steps 1-5, as the words say, for one quote (nothing used before)."""
    program = snap["program"]
    pv = program["pointValueMinor"]
    customer = snap["customers"][0]
    at = when(rec["at"])
    local_day = at.astimezone(ZoneInfo(program["timezone"])).date()
    # 1. eligible lines; §2 amounts
    lines = []
    for given in rec["lines"]:
        qty = Fraction(given["qty"])
        amount = (
            given["amountMinor"]
            if "amountMinor" in given
            else round_half_up(given["priceMinor"] * qty)
        )
        category = PRODUCT_CATEGORY.get(given["sku"])
        eligible = category is not None and category != "tobacco"
        lines.append(_Line(given["sku"], qty, amount, eligible, ancestors(category)))

    def valid(offer: dict[str, Any]) -> bool:  # inclusive bounds; an end in whole seconds holds
        start, end = when(offer["validFrom"]), when(offer["validTo"])
        return start <= at < end + timedelta(seconds=1) and offer.get("customerId") in (
            None,
            customer["id"],
        )

    offers = [o for o in snap["offers"] if valid(o)]
    # 2. line offers
    for w in [w for w in lines if w.eligible]:
        best: tuple[int, int, str] | None = None
        for o in offers:
            if o["kind"] not in LINE_KINDS:
                continue
            if w.sku not in o.get("skus", []) and not set(o.get("categories", [])) & set(
                w.categories
            ):
                continue
            if "minQty" in o and w.qty < Fraction(o["minQty"]):
                continue
            value = Fraction(o["value"])
            if o["kind"] == "BONUS_MULTIPLIER":
                w.multiplier = max(w.multiplier, value)
                continue
            if o["kind"] == "PERCENT_OFF":
                discount = math.floor(w.amount * value / 100)
            elif o["kind"] == "AMOUNT_OFF":
                discount = min(w.amount, round_half_up(value * w.qty))
            else:
                discount = max(0, w.amount - round_half_up(value * w.qty))
            if discount > 0:
                key = (-discount, o["priority"], o["id"])
                best = key if best is None or key < best else best
        if best is not None:
            w.discount, w.offer_id = -best[0], best[2]
    # 3. receipt offers
    after_line_offers = sum(w.amount - w.discount for w in lines if w.eligible)
    open_lines = [w for w in lines if w.eligible and w.offer_id is None]
    extra = 0
    best_receipt: tuple[tuple[int, int, str], Fraction] | None = None
    for o in offers:
        if o["kind"] not in RECEIPT_KINDS or after_line_offers < o["minTotalMinor"]:
            continue
        if o["kind"] == "EXTRA_POINTS":
            extra += int(o["value"])
            continue
        value = Fraction(o["value"])
        total = sum(math.floor(w.amount * value / 100) for w in open_lines)
        key = (-total, o["priority"], o["id"])
        if total > 0 and (best_receipt is None or key < best_receipt[0]):
            best_receipt = (key, value)
    if best_receipt is not None:
        for w in open_lines:
            discount = math.floor(w.amount * best_receipt[1] / 100)
            if discount > 0:
                w.discount, w.offer_id = discount, best_receipt[0][2]
    # 4. redemption
    after = sum(w.amount - w.discount for w in lines if w.eligible)
    capacities = [(w.amount - w.discount) // pv if w.eligible else 0 for w in lines]
    caps = [
        max(0, customer["balancePoints"]),
        math.floor(Fraction(after * program["maxRedeemPercent"], 100) / pv),
        sum(capacities),
        program["offlineRedeemLimitPoints"],
    ]
    if rec["redeemPoints"] != -1:
        caps.append(rec["redeemPoints"])
    allowed = max(0, min(caps))
    redeemed = (
        _largest_remainder([Fraction(allowed * c, sum(capacities)) for c in capacities], allowed)
        if allowed
        else [0] * len(lines)
    )
    # 5. accrual
    birthday = date.fromisoformat(customer["birthday"])
    upcoming = _birthday_on(local_day.year, birthday)
    if upcoming < local_day:
        upcoming = _birthday_on(local_day.year + 1, birthday)
    in_window = (upcoming - local_day).days <= program["birthdayWindowDays"]
    tiers = {t["code"]: t for t in program["tiers"]}
    rate = Fraction(tiers.get(customer["tier"], program["tiers"][0])["accrualPercent"])
    exact = [
        Fraction(w.amount - w.discount - r * pv)
        * rate
        * max(
            Fraction(1), w.multiplier, Fraction(program["birthdayMultiplier"] if in_window else 1)
        )
        / (100 * pv)
        if w.eligible
        else Fraction(0)
        for w, r in zip(lines, redeemed, strict=True)
    ]
    total_points = math.floor(sum(exact))
    earned = _largest_remainder(exact, total_points)
    return {
        "lines": [
            {
                "sku": w.sku,
                "amountMinor": w.amount,
                "discountMinor": w.discount,
                "offerId": w.offer_id,
                "redeemedMinor": r * pv,
                "earnedPoints": e,
            }
            for w, r, e in zip(lines, redeemed, earned, strict=True)
        ],
        "redeemedPoints": allowed,
        "earnedPoints": total_points + extra,
    }


def figures(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("sku", "amountMinor", "discountMinor", "offerId", "redeemedMinor", "earnedPoints")
    return {
        "lines": [{k: line[k] for k in keys} for line in result["lines"]],
        "redeemedPoints": result["redeemedPoints"],
        "earnedPoints": result["earnedPoints"],
    }


# ---------------------------------------------------------------- the runs


def _load(cli: CLI, snap: dict[str, Any]) -> None:
    run = cli("snapshot", "load", snap, "--json")
    assert run.code == 0, run.err


def _quotes(cli: CLI, seed: int, rounds: int, per_round: int) -> None:
    rng = random.Random(seed)
    problems: list[str] = []
    for k in range(rounds):
        card = ean13(f"27731{seed % 1000:03d}{k:04d}")  # a card of its own: its offline limit
        snap = gen_snapshot(rng, k + 1, card)
        _load(cli, snap)
        for i in range(per_round):
            rec = gen_receipt(rng, f"q-{k}-{i}", card)
            run = cli("quote", rec, "--json")
            assert run.code == 0, run.err
            got, want = figures(run.json()), reading(snap, rec)
            if got != want:
                problems.append(f"{json.dumps(snap)}\n{json.dumps(rec)}\ngot  {got}\nwant {want}")
    assert not problems, f"{len(problems)} disagreements; the first:\n{problems[0]}"


def test_quotes_agree_with_the_contracts_words(cli: CLI) -> None:
    _quotes(cli, seed=31, rounds=6, per_round=8)


@pytest.mark.slow
def test_quotes_agree_with_the_contracts_words_longer(cli: CLI) -> None:
    _quotes(cli, seed=3101, rounds=30, per_round=25)


def _refunds(cli: CLI, seed: int, rounds: int) -> None:
    """§6 over random parts: each refund gives back floor(p r/q) and takes back floor(e r/q)
    minus what the refunds before gave and took (EXTRA_POINTS with the whole receipt); the
    whole receipt returned leaves the balance as it was before the sale."""
    rng = random.Random(seed)
    for k in range(rounds):
        card = ean13(f"27732{seed % 1000:03d}{k:04d}")
        snap = gen_snapshot(rng, k + 1, card)
        start = snap["customers"][0]["balancePoints"]
        _load(cli, snap)
        rec = gen_receipt(rng, f"s-{seed}-{k}", card)
        rec["at"] = "2026-12-04T12:00:00+03:00"
        sale = cli("checkout", rec, "--json")
        assert sale.code == 0, sale.err
        result = sale.json()
        pv = snap["program"]["pointValueMinor"]
        sold = [
            (line["sku"], Fraction(given["qty"]), line["redeemedMinor"] // pv, line["earnedPoints"])
            for line, given in zip(result["lines"], rec["lines"], strict=True)
        ]
        extra = result["earnedPoints"] - sum(e for *_, e in sold)
        balance = start - result["redeemedPoints"] + result["earnedPoints"]
        assert result["balance"]["availablePoints"] == balance
        left: dict[str, Fraction] = {}
        for sku, qty, _, _ in sold:
            left[sku] = left.get(sku, Fraction(0)) + qty
        returned = [Fraction(0)] * len(sold)
        n = 0
        while any(left.values()):
            parts: list[tuple[str, Fraction]] = []
            for sku in left:
                if left[sku] and rng.random() < 0.6:
                    part = min(left[sku], Fraction(rng.choice([1, 347, 500, 1000, 1500]), 1000))
                    part = left[sku] if rng.random() < 0.3 else part
                    parts.append((sku, part))
                    left[sku] -= part
            if not parts:
                continue
            before = list(returned)
            for sku, part in parts:  # the first line of the SKU with qty left, then the next
                for i, (s, qty, _, _) in enumerate(sold):
                    take = min(part, qty - returned[i]) if s == sku else 0
                    returned[i] += take
                    part -= take
            back = sum(
                math.floor(p * returned[i] / q) - math.floor(p * before[i] / q)
                for i, (_, q, p, _) in enumerate(sold)
            )
            lost = sum(
                math.floor(e * returned[i] / q) - math.floor(e * before[i] / q)
                for i, (_, q, _, e) in enumerate(sold)
            )
            if all(r == q for r, (_, q, _, _) in zip(returned, sold, strict=True)):
                lost += extra
            balance += back - lost
            n += 1
            refund = {
                "refundId": f"{rec['receiptId']}-f{n}",
                "receiptId": rec["receiptId"],
                "at": f"2026-12-05T10:{n:02d}:00+03:00",
                "lines": [{"sku": s, "qty": decimal_text(q)} for s, q in parts],
            }
            run = cli("refund", refund, "--json")
            assert run.code == 0, run.err
            got = run.json()
            assert (got["returnedPoints"], got["takenBackPoints"]) == (back, lost), refund
            assert got["balance"] == {"availablePoints": balance, "pendingPoints": 0}
            assert got["negativeBalance"] is (balance < 0)
        assert balance == start  # all of it returned: exactly p back, exactly e taken


def test_refunds_in_random_parts_return_exactly_p_and_e(cli: CLI) -> None:
    _refunds(cli, seed=31, rounds=8)


@pytest.mark.slow
def test_refunds_in_random_parts_return_exactly_p_and_e_longer(cli: CLI) -> None:
    _refunds(cli, seed=3102, rounds=60)


def _at(
    start: int, spent: int, earned: list[tuple[datetime, int]], moment: datetime
) -> tuple[int, int]:
    """(available, pending) at `moment`: every spend at once, each earning from its time."""
    available = start - spent + sum(p for a, p in earned if a <= moment)
    return available, sum(p for a, p in earned if a > moment)


def _pending(cli: CLI, seed: int, rounds: int) -> None:
    """§5 steps 4 and 6: receipts one after another with an activation delay: what each
    may redeem (what is available at its `at`), its balance at `at` after it, and the
    balance asked for later (a spend counts at once, earned points a delay after `at`)."""
    rng = random.Random(seed)
    for k in range(rounds):
        card = ean13(f"27733{seed % 1000:03d}{k:04d}")
        snap = gen_snapshot(rng, k + 1, card)
        program = snap["program"]
        program["timezone"] = "Europe/Moscow"  # no clock change: days are 24 hours here
        delay = rng.choice([0, 1, 2])
        program["activationDelayDays"] = delay
        start = snap["customers"][0]["balancePoints"]
        _load(cli, snap)
        t = when("2026-12-04T09:00:00+03:00")
        earned: list[tuple[datetime, int]] = []  # (spendable from, points)
        spent = 0

        for i in range(6):
            t += timedelta(hours=rng.choice([1, 5, 20, 30]))
            rec = gen_receipt(rng, f"p-{seed}-{k}-{i}", card)
            rec["at"] = t.isoformat()
            run = cli("checkout", rec, "--json")
            assert run.code == 0, run.err
            result = run.json()
            assert result["redeemedPoints"] <= max(0, _at(start, spent, earned, t)[0])
            spent += result["redeemedPoints"]
            earned.append((t + timedelta(days=delay), result["earnedPoints"]))
            balance = result["balance"]
            assert (balance["availablePoints"], balance["pendingPoints"]) == _at(
                start, spent, earned, t
            )
            later = t + timedelta(hours=rng.choice([1, 23, 24, 25, 48]))
            asked = cli("balance", card, "--at", later.isoformat(), "--json")
            assert asked.code == 0, asked.err
            got = asked.json()
            assert (got["availablePoints"], got["pendingPoints"]) == _at(
                start, spent, earned, later
            )


def test_balance_at_each_receipts_at_with_an_activation_delay(cli: CLI) -> None:
    _pending(cli, seed=31, rounds=4)


@pytest.mark.slow
def test_balance_at_each_receipts_at_with_an_activation_delay_longer(cli: CLI) -> None:
    _pending(cli, seed=3103, rounds=25)


@dataclass
class _Sale:
    receipt_id: str
    activates: datetime
    pending: int  # what is left of its own earned points while they are pending
    extra: int
    # per line: sku, qty, redeemed points, earned points, returned so far
    lines: list[tuple[str, Fraction, int, int, Fraction]]


def _refund_points(sale: _Sale, sku: str, part: Fraction) -> tuple[int, int]:
    """§6 for one returned (sku, qty): the points given back and taken back."""
    back = lost = 0
    after = []
    for s, q, p, e, r in sale.lines:
        take = min(part, q - r) if s == sku else Fraction(0)
        part -= take
        back += math.floor(p * (r + take) / q) - math.floor(p * r / q)
        lost += math.floor(e * (r + take) / q) - math.floor(e * r / q)
        after.append((s, q, p, e, r + take))
    if all(r == q for _, q, _, _, r in after) and not all(r == q for _, q, _, _, r in sale.lines):
        lost += sale.extra
    sale.lines = after
    return back, lost


def _now(start: int, moved: int, sales: list[_Sale], moment: datetime) -> tuple[int, int]:
    """(available, pending) at `moment` after the sales and refunds so far."""
    available = start + moved + sum(s.pending for s in sales if s.activates <= moment)
    return available, sum(s.pending for s in sales if s.activates > moment)


def _pending_refunds(cli: CLI, seed: int, rounds: int) -> None:
    """§5 step 6 and §6 together: sales with an activation delay and refunds of them in
    parts, in time order: points taken back come off the sale's own pending points while
    they are pending (the rest, and everything after the activation, off the available
    balance, which may go below zero), points given back are available at once."""
    rng = random.Random(seed)
    for k in range(rounds):
        card = ean13(f"27734{seed % 1000:03d}{k:04d}")
        snap = gen_snapshot(rng, k + 1, card)
        program = snap["program"]
        program.update(
            timezone="Europe/Moscow",
            activationDelayDays=rng.choice([1, 2]),
            offlineRedeemLimitPoints=10**9,
        )
        pv = program["pointValueMinor"]
        start = snap["customers"][0]["balancePoints"]
        _load(cli, snap)
        t = when("2026-12-04T09:00:00+03:00")
        sales: list[_Sale] = []
        moved = 0  # spends, points given back and taken back off the available balance

        for i in range(10):
            t += timedelta(hours=rng.choice([1, 5, 20, 30]))
            open_sales = [s for s in sales if any(r < q for _, q, _, _, r in s.lines)]
            if open_sales and rng.random() < 0.5:
                sale = rng.choice(open_sales)
                sku, q, _, _, r = rng.choice([x for x in sale.lines if x[4] < x[1]])
                part = min(q - r, Fraction(rng.choice([1, 500, 1000, 2000]), 1000))
                back, lost = _refund_points(sale, sku, part)
                refund = {
                    "refundId": f"{sale.receipt_id}-f{i}",
                    "receiptId": sale.receipt_id,
                    "at": t.isoformat(),
                    "lines": [{"sku": sku, "qty": decimal_text(part)}],
                }
                run = cli("refund", refund, "--json")
                assert run.code == 0, run.err
                got = run.json()
                moved += back
                off_pending = min(lost, sale.pending) if sale.activates > t else 0
                sale.pending -= off_pending
                moved -= lost - off_pending
                assert (got["returnedPoints"], got["takenBackPoints"]) == (back, lost), refund
                balance = got["balance"]
                assert (balance["availablePoints"], balance["pendingPoints"]) == _now(
                    start, moved, sales, t
                ), refund
                continue
            rec = gen_receipt(rng, f"pr-{seed}-{k}-{i}", card)
            rec["at"] = t.isoformat()
            run = cli("checkout", rec, "--json")
            assert run.code == 0, run.err
            result = run.json()
            assert result["redeemedPoints"] <= max(0, _now(start, moved, sales, t)[0])
            moved -= result["redeemedPoints"]
            activates = t + timedelta(days=program["activationDelayDays"])
            lines = [
                (line["sku"], Fraction(given["qty"]), line["redeemedMinor"] // pv)
                for line, given in zip(result["lines"], rec["lines"], strict=True)
            ]
            earned = [line["earnedPoints"] for line in result["lines"]]
            sales.append(
                _Sale(
                    rec["receiptId"],
                    activates,
                    result["earnedPoints"],
                    result["earnedPoints"] - sum(earned),
                    [(s, q, p, e, Fraction(0)) for (s, q, p), e in zip(lines, earned, strict=True)],
                )
            )
            balance = result["balance"]
            assert (balance["availablePoints"], balance["pendingPoints"]) == _now(
                start, moved, sales, t
            )


def test_refunds_of_pending_points_in_parts(cli: CLI) -> None:
    _pending_refunds(cli, seed=31, rounds=4)


@pytest.mark.slow
def test_refunds_of_pending_points_in_parts_longer(cli: CLI) -> None:
    _pending_refunds(cli, seed=3104, rounds=30)
