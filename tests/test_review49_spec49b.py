"""Review 49 (spec49b): docs/CONTRACT.md §2 (money, quantities, time), §5 (pricing a
receipt) and §8 (the customer display) read black-box, sentence by sentence, at their edges.

Every expected figure below was worked out by hand from the contract's words (the working
is beside each case) before the product was run; the product agreed in every one, and
with an independent reading of §5 steps 1-7 written here (`oracle`) over some 6,000
seeded random snapshots and receipts (docs/DECISIONS.md, "Review 49 (spec49b)"). They are
kept because no earlier test held these cases in one place; the few points where the
contract is silent are pinned with the decision docs/CONTRACT.md now writes beside them
(a tier's `accrualPercent` of 100 or more; a quantity's written form).

- §2: a line's amount, `round_half_up(priceMinor × qty)` at the half kopeck (halves up,
  never to even), `amountMinor` as sent; quantities with 3 decimals, leading zeros; every
  other spelling refused with one line naming the field (4 written decimals even when they
  are zeros, exponents, signs, blanks, a bare point, a JSON number).
- §5 step 2: AMOUNT_OFF and FIXED_PRICE with a fractional value on weighed lines, the clamp
  to the amount, `minQty` per line at its edge, the zero discount not applied, ties.
- §5 step 3: a receipt offer's threshold over eligible lines only; EXTRA_POINTS once.
- §5 step 4: each cap binding in turn (requested, balance, percent, capacity, the offline
  limit of the store-day, across local midnight), a point value of 50 with a percent of
  12.5, the largest-remainder spread; an UNKNOWN card redeems nothing; seeded days of
  checkouts, the limit spent receipt by receipt and the running balance.
- §5 step 5: tier rates with decimals, the first tier for an UNKNOWN card, the birthday
  window's edges in the store's zone (the days before, 29 February in 2027 and 2028, across
  the new year, Vladivostok), multipliers against the birthday's, a multiplier below 1,
  the largest-remainder split (ties to the earlier line).
- §8: the display lines of a quote, a hold, a confirm, a checkout (the birthday wish, the
  expiry warning, an UNKNOWN card, excluded goods only), each at most 20 characters.
- The doors: `tillpoint quote` and `checkout` as processes and the HTTP door answering the
  same bytes (the slow twin: `snapshot load` a process too, and a real `tillpoint run`'s
  HTTP port).
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import io
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tillpoint.agent.app import till_agent
from tillpoint.agent.cli import main
from tillpoint.agent.errors import InputError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import PROGRAM, free_port
from .conftest import http_post as _post
from .test_review35_shape35 import clean_env

__all__ = ["clean_env"]  # the fixture, used by name below

EXE = str(Path(sys.executable).with_name("tillpoint"))

ANNA = "2770000000017"  # c-a, gold 7.5 %, 1200 points, birthday 25 November
BORIS = "2770000000024"  # c-b, base 3 %, 80 points, birthday 10 March
GLEB = "2770000000048"  # c-d, silver 5 %, 3000 points, born 29 February, control group
EVA = "2770000000055"  # c-e, base 3 %, no points, birthday 3 January
STRANGER = "2770000000109"  # a valid number no snapshot knows: UNKNOWN
MILK, BREAD, CIGS, BEER = "4601234000017", "4601234000024", "4601234000031", "4601234000048"
CHEESE, APPLES, SHOES, BALL = "4601234000055", "4601234000062", "4601234000079", "4601234000086"
NOT_LISTED = "4601234999999"
AT = "2026-12-15T12:00:00+03:00"  # a Tuesday, nobody's birthday window
DECEMBER = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2027-12-31T23:59:59+03:00"}


def snapshot(**program: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "baseVersion": 0,
        "issuedAt": "2026-11-23T03:00:00Z",
        "program": copy.deepcopy(PROGRAM),
        "categories": [
            {"code": "food", "name": "Продукты"},
            {"code": "dairy", "parent": "food", "name": "Молочные"},
            {"code": "bakery", "parent": "food", "name": "Хлеб"},
            {"code": "fruit", "parent": "food", "name": "Фрукты"},
            {"code": "tobacco", "name": "Табак"},
            {"code": "alcohol", "name": "Алкоголь"},
            {"code": "sport", "name": "Спорт"},
        ],
        "products": [
            {"sku": MILK, "name": "Молоко 3,2% 1 л", "category": "dairy"},
            {"sku": BREAD, "name": "Хлеб Бородинский", "category": "bakery"},
            {"sku": CIGS, "name": "Сигареты", "category": "tobacco", "excludedFromLoyalty": True},
            {"sku": BEER, "name": "Пиво 0,5", "category": "alcohol", "excludedFromLoyalty": True},
            {"sku": CHEESE, "name": "Сыр Российский", "category": "dairy"},
            {"sku": APPLES, "name": "Яблоки, кг", "category": "fruit"},
            {"sku": SHOES, "name": "Кроссовки", "category": "sport"},
            {"sku": BALL, "name": "Мяч", "category": "sport"},
        ],
        "customers": [
            {"id": "c-a", "firstName": "Анна", "tier": "gold", "birthday": "1990-11-25",
             "phone": "+79161234567", "balancePoints": 1200, "segment": "ACTIVE"},
            {"id": "c-b", "firstName": "Борис", "tier": "base", "birthday": "1985-03-10",
             "balancePoints": 80, "segment": "NEW"},
            {"id": "c-d", "firstName": "Глеб", "tier": "silver", "birthday": "2000-02-29",
             "balancePoints": 3000, "segment": "ACTIVE", "controlGroups": ["camp-hold"]},
            {"id": "c-e", "firstName": "Ева", "tier": "base", "birthday": "1999-01-03",
             "balancePoints": 0, "segment": "NEW"},
        ],
        "cards": [
            {"number": ANNA, "customerId": "c-a", "status": "ACTIVE"},
            {"number": BORIS, "customerId": "c-b", "status": "ACTIVE"},
            {"number": GLEB, "customerId": "c-d", "status": "ACTIVE"},
            {"number": EVA, "customerId": "c-e", "status": "ACTIVE"},
        ],
        "offers": [],
    }  # fmt: skip
    doc["program"].update(program)
    return doc


def offer(oid: str, kind: str, value: str, **more: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"id": oid, "campaignId": f"camp-{oid}", "kind": kind, "value": value,
                           "skus": [], "categories": [], "minQty": "0", "priority": 10,
                           "rank": 10, **DECEMBER}  # fmt: skip
    row.update(more)
    return row


def line(sku: str, qty: str = "1", price: int | None = None, **more: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"sku": sku, "qty": qty}
    if price is not None:
        row["priceMinor"] = price
    row.update(more)
    return row


def receipt(
    lines: list[dict[str, Any]], card: str = ANNA, at: str = AT, redeem: int = 0, rid: str = "r1"
) -> dict[str, Any]:
    return {"receiptId": rid, "storeId": "s1", "tillId": "t1", "at": at, "card": card,
            "lines": lines, "redeemPoints": redeem}  # fmt: skip


class Till:
    """One in-process `Agent` over a real data directory, its snapshots loaded one after
    another (each a full one, its version one higher)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.version = 0

    def load(self, snap: dict[str, Any]) -> None:
        self.version += 1
        self.agent.load_snapshot({**snap, "version": self.version})

    def quote(self, body: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = self.agent.quote(receipt_from_json(body)).to_json()
        return doc

    def checkout(self, body: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = self.agent.checkout(receipt_from_json(body)).to_json()
        return doc

    def hold(self, body: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = self.agent.hold(receipt_from_json(body)).to_json()
        return doc


@pytest.fixture
def till(tmp_path: Path) -> Iterator[Till]:
    devices = {"printer": "none", "display": "none", "scanner": "none"}
    agent = till_agent(tmp_path / "till", "till-1", device_kinds=devices)
    one = Till(agent)
    one.load(snapshot())
    try:
        yield one
    finally:
        agent.close()


def figures(doc: dict[str, Any]) -> list[tuple[int, int, str | None, int, int]]:
    """A result's lines as (amountMinor, discountMinor, offerId, redeemedMinor, earnedPoints)."""
    return [
        (x["amountMinor"], x["discountMinor"], x["offerId"], x["redeemedMinor"], x["earnedPoints"])
        for x in doc["lines"]
    ]


# ---------------------------------------------------------------- §2


AMOUNTS = [  # (qty, priceMinor, amountMinor sent, the line's amount)
    ("2", 8990, None, 17980),
    ("0.512", 8990, None, 4603),  # 4602.88
    ("2.000", 8990, None, 17980),
    ("00002", 8990, None, 17980),  # leading zeros: the decimal 2
    ("0.5", 1, None, 1),  # 0.5: half up
    ("1.5", 1, None, 2),  # 1.5
    ("0.5", 3, None, 2),  # 1.5
    ("0.001", 5, None, 0),  # 0.005
    ("0.001", 499, None, 0),  # 0.499
    ("0.001", 500, None, 1),  # 0.5
    ("0.001", 1500, None, 2),  # 1.5
    ("0.001", 2500, None, 3),  # 2.5: half up, never to even
    ("0.333", 8990, None, 2994),  # 2993.67
    ("1", 8990, 9000, 9000),  # sent: the POS's amount as it is
    ("3", 8990, 0, 0),
    ("0.512", None, 4600, 4600),  # an amount without a price
    ("1", 2**63 - 1, None, 2**63 - 1),
]


def test_a_line_s_amount_at_the_half_kopeck(till: Till) -> None:
    """§2: amountMinor when the POS sends it, else round_half_up(priceMinor × qty)."""
    for qty, price, sent, amount in AMOUNTS:
        row = line(BREAD, qty, price)
        if sent is not None:
            row["amountMinor"] = sent
        doc = till.quote(receipt([row], card=STRANGER))
        assert doc["lines"][0]["amountMinor"] == amount, (qty, price, sent, doc)
        assert doc["totalMinor"] == doc["payableMinor"] == amount


REFUSED_QUANTITIES: list[Any] = [
    "0", "0.000", "-1", "-0.5", "1e3", "1E-3", "+2", " 2", "2 ", ".5", "5.", "0.0005",
    "1.2345", "2.0000", "1.5000", "1,5", "٢", "0x1", "1_0", "", "NaN", "Infinity", 2, 2.5,
    True,
]  # fmt: skip


def test_quantities_with_more_than_3_decimals_or_another_spelling_are_refused() -> None:
    """§2: a quantity is a decimal string with at most 3 decimals, greater than zero; 4
    written decimals are refused even when they are zeros ("2.0000", docs/CONTRACT.md §2's
    decision); every refusal is one line that names the field."""
    for qty in REFUSED_QUANTITIES:
        with pytest.raises(InputError) as caught:
            receipt_from_json(receipt([line(MILK, qty, 8990)]))
        message = str(caught.value)
        assert "lines[0].qty" in message and "\n" not in message, (qty, message)
    with pytest.raises(InputError, match="does not fit in a signed 64-bit integer"):
        receipt_from_json(receipt([line(MILK, "1.001", 2**63 - 1)]))


# ---------------------------------------------------------------- §5 step 2


def test_line_offers_by_hand(till: Till) -> None:
    """§5 step 2: each kind's formula on weighed lines and fractional values, the clamp,
    minQty per line at its edge, a zero discount not applied, ties (priority, then id)."""
    snap = snapshot()
    snap["offers"] = [
        offer("o-amt", "AMOUNT_OFF", "333.5", skus=[MILK], customerId="c-a"),
        offer("o-pct", "PERCENT_OFF", "12.5", skus=[BREAD], minQty="2", customerId="c-a"),
        offer("o-fix", "FIXED_PRICE", "4999.5", categories=["dairy"], minQty="0.5",
              skus=[], customerId="c-a"),
        offer("o-9", "PERCENT_OFF", "10", skus=[APPLES]),  # mass offers, equal terms:
        offer("o-10", "PERCENT_OFF", "10", skus=[APPLES]),  # the smaller id as text wins
        offer("b-amt", "AMOUNT_OFF", "500", skus=[BALL], priority=3),
        offer("a-pct", "PERCENT_OFF", "50", skus=[BALL], priority=4),  # 500 on 1000 too
    ]  # fmt: skip
    till.load(snap)
    cases = [
        # MILK is dairy: o-fix (4999.5 × qty) competes with o-amt (333.5 × qty) when qty ≥ 0.5
        (line(MILK, "0.001", 1000), [(1, 0, None, 0, 0)]),  # min(1, round(0.3335) = 0)
        (line(MILK, "0.003", 1000), [(3, 1, "o-amt", 0, 0)]),  # round(1.0005) = 1
        (line(MILK, "1", amountMinor=300), [(300, 300, "o-amt", 0, 0)]),  # min(300, 334)
        (line(MILK, "1.5", 10000), [(15000, 7501, "o-fix", 0, 5)]),
        # 15000 − round(7499.25) = 7501 beats round(500.25) = 500; earns 7499 × 7.5 % = 5.6
        (line(BREAD, "1.999", 5490), [(10975, 0, None, 0, 8)]),  # 10974.51; below minQty 2
        (line(BREAD, "2", 5490), [(10980, 1372, "o-pct", 0, 7)]),  # floor(1372.5); 9608 → 7.2
        (line(CHEESE, "0.499", 45900), [(22904, 0, None, 0, 17)]),  # 22904.1: below 0.5
        (line(CHEESE, "0.5", 45900), [(22950, 20450, "o-fix", 0, 1)]),  # 22950 − 2500 (2499.75)
        (line(CHEESE, "0.5", amountMinor=22951), [(22951, 20451, "o-fix", 0, 1)]),
        (line(CHEESE, "0.5", amountMinor=2000), [(2000, 0, None, 0, 1)]),  # max(0, 2000 − 2500)
        (line(APPLES, "1", 1000), [(1000, 100, "o-10", 0, 0)]),
        (line(BALL, "1", 1000), [(1000, 500, "b-amt", 0, 0)]),  # 500 each: priority 3 wins
    ]
    for row, expected in cases:
        doc = till.quote(receipt([row]))
        assert figures(doc) == expected, (row, doc)
    # minQty is the line's qty: two lines of one loaf each reach no "2 or more"
    doc = till.quote(receipt([line(BREAD, "1", 5490), line(BREAD, "1", 5490)]))
    assert [x["offerId"] for x in doc["lines"]] == [None, None], doc


# ---------------------------------------------------------------- §5 step 3


def test_receipt_offers_count_eligible_lines_only(till: Till) -> None:
    """§5 step 3: the threshold is the sum of eligible amounts after step 2 (cigarettes do
    not count toward it); the percent is floored per line; EXTRA_POINTS add once."""
    snap = snapshot()
    snap["offers"] = [
        offer("o-r5", "RECEIPT_PERCENT_OFF", "5", minTotalMinor=10000),
        offer("o-x", "EXTRA_POINTS", "25", minTotalMinor=10000),
    ]
    till.load(snap)
    below = till.quote(receipt([line(MILK, "1", 9999), line(CIGS, "1", 20000)]))
    assert figures(below) == [(9999, 0, None, 0, 7), (20000, 0, None, 0, 0)], below
    assert below["earnedPoints"] == 7  # 9999 × 7.5 % = 7.49
    met = till.quote(receipt([line(MILK, "1", 10000), line(APPLES, "0.333", 999),
                              line(CIGS, "1", 20000)]))  # fmt: skip
    # 10000 + 333 (332.667) = 10333 ≥ 10000: 5 % is 500 and floor(16.65) = 16
    assert figures(met) == [(10000, 500, "o-r5", 0, 7), (333, 16, "o-r5", 0, 0),
                            (20000, 0, None, 0, 0)], met  # fmt: skip
    # exact points 9500 × 0.075 / 100 = 7.125 and 317 × 0.075 / 100 = 0.23775: 7, then + 25
    assert met["earnedPoints"] == 32 and met["discountMinor"] == 516, met


# ---------------------------------------------------------------- §5 step 4


def test_redemption_caps_one_by_one(till: Till) -> None:
    """§5 step 4: allowed = min(requested, balance, percent cap, capacities, the offline
    limit); the points spread by capacities, largest remainder, ties to the earlier line."""
    basket = [line(MILK, "1", 8990), line(BREAD, "1", 5490), line(CIGS, "1", 20000)]
    # percent: floor(14480 × 30 % / 100) = 43 (capacities 89 + 54, balance 1200, limit 500);
    # 43 × 89/143 = 26.76, 43 × 54/143 = 16.24: 26 + 16, the one left to the first (.76)
    doc = till.quote(receipt(basket, redeem=-1))
    assert figures(doc) == [(8990, 0, None, 2700, 4), (5490, 0, None, 1600, 3),
                            (20000, 0, None, 0, 0)], doc  # fmt: skip
    # earned: 6290 × 0.075 = 4.7175 and 3890 × 0.075 = 2.9175 → 7: 4 + 2, one to the second
    assert (doc["redeemedPoints"], doc["payableMinor"], doc["earnedPoints"]) == (43, 30180, 7)
    assert doc["balance"] == {"availablePoints": 1200 - 43 + 7, "pendingPoints": 0}
    # asking for more than allowed is capped, not refused
    assert till.quote(receipt(basket, redeem=10**6))["redeemedPoints"] == 43
    # requested: 10 × 89/143 = 6.22, 10 × 54/143 = 3.78 → 6 + 3, the one left to the second
    doc = till.quote(receipt(basket, redeem=10))
    assert figures(doc)[:2] == [(8990, 0, None, 600, 6), (5490, 0, None, 400, 4)], doc
    # balance: Борис has 80 (percent cap 900, capacity 3000, limit 500)
    doc = till.quote(receipt([line(SHOES, "1", 300000)], card=BORIS, redeem=-1))
    assert (doc["redeemedPoints"], doc["earnedPoints"]) == (80, 87), doc  # 292000 × 3 % = 87.6
    # capacity: a line of 99 kopecks takes no point; 10099 × 30 % → 30, all on the second
    doc = till.quote(receipt([line(MILK, "1", 99), line(BREAD, "1", 10000)], redeem=-1))
    assert figures(doc) == [(99, 0, None, 0, 0), (10000, 0, None, 3000, 5)], doc
    # an UNKNOWN card redeems nothing and has no balance
    doc = till.quote(receipt(basket, card=STRANGER, redeem=-1))
    assert doc["redeemedPoints"] == 0 and doc["balance"] is None, doc
    assert doc["earnedPoints"] == 4  # 14480 × 3 % (the first tier) = 4.34


def test_the_offline_limit_is_the_store_day_s(till: Till) -> None:
    """§5 step 4: what is left of offlineRedeemLimitPoints for this card on the local date
    of `at` (Moscow): 450 spent on 15 December leaves 50 through 23:59:59 there."""
    big = [line(SHOES, "1", 300000)]  # percent cap 900, capacity 3000
    spent = till.checkout(receipt(big, redeem=450, rid="spend"))
    assert spent["redeemedPoints"] == 450 and spent["earnedPoints"] == 191  # 255000 × 7.5 %
    for at, left in [
        ("2026-12-15T00:00:00+03:00", 50),
        ("2026-12-14T21:00:00Z", 50),  # the same instant
        ("2026-12-15T23:59:59+03:00", 50),
        ("2026-12-15T20:59:59.999Z", 50),
        ("2026-12-15T21:00:00Z", 500),  # 16 December in Moscow
        ("2026-12-14T20:59:59Z", 500),  # 14 December
    ]:
        doc = till.quote(receipt(big, redeem=-1, at=at, rid="q"))
        assert doc["redeemedPoints"] == left, (at, doc)


def test_a_point_of_50_kopecks_and_a_percent_of_12_5(till: Till) -> None:
    """§5 step 4 with pointValueMinor 50 and maxRedeemPercent "12.5" (a till reads it as a
    decimal: docs/DECISIONS.md, review 39): floor(14480 × 12.5 % / 50) = 36 over capacities
    179 and 109: 22.375 and 13.625 → 22 + 13, the one left to the second."""
    till.load(snapshot(pointValueMinor=50, maxRedeemPercent="12.5"))
    doc = till.quote(receipt([line(MILK, "1", 8990), line(BREAD, "1", 5490)], redeem=-1))
    # earned: 7890 × 7.5 / 5000 = 11.835 and 4790 × 7.5 / 5000 = 7.185 → 19: 11 + 7, +1 first
    assert figures(doc) == [(8990, 0, None, 1100, 12), (5490, 0, None, 700, 7)], doc
    assert (doc["redeemedPoints"], doc["payableMinor"]) == (36, 14480 - 1800)
    assert doc["balance"]["availablePoints"] == 1200 - 36 + 19
    assert doc["display"] == ["Итого: 144,80", "Бонусами: 18,00"]  # 36 points of 50 kopecks


# ---------------------------------------------------------------- §5 step 5


BIRTHDAYS = [  # (card, at, points on 10000 kopecks of milk)
    # Анна, gold 7.5 %: 7 (7.5), or 37 (37.5) at ×5; birthday 25 November, window 7 days
    (ANNA, "2026-11-17T23:59:59+03:00", 7),
    (ANNA, "2026-11-18T00:00:00+03:00", 37),  # 7 days before
    (ANNA, "2026-11-17T21:00:00Z", 37),  # the same instant in UTC
    (ANNA, "2026-11-17T20:59:59Z", 7),
    (ANNA, "2026-11-25T23:59:59+03:00", 37),  # the day itself
    (ANNA, "2026-11-25T21:00:00Z", 7),  # 26 November in Moscow
    # Глеб, silver 5 %: 5, or 25 at ×5; born 29 February
    (GLEB, "2027-02-20T12:00:00+03:00", 5),
    (GLEB, "2027-02-21T12:00:00+03:00", 25),  # 2027: the birthday falls on 28 February
    (GLEB, "2027-02-28T12:00:00+03:00", 25),
    (GLEB, "2027-03-01T12:00:00+03:00", 5),
    (GLEB, "2028-02-21T12:00:00+03:00", 5),  # 2028: 29 February, 8 days ahead
    (GLEB, "2028-02-22T12:00:00+03:00", 25),
    (GLEB, "2028-02-29T12:00:00+03:00", 25),
    (GLEB, "2028-03-01T12:00:00+03:00", 5),
    # Ева, base 3 %: 3, or 15 at ×5; birthday 3 January, across the new year
    (EVA, "2026-12-26T12:00:00+03:00", 3),
    (EVA, "2026-12-27T00:00:00+03:00", 15),
    (EVA, "2026-12-31T23:59:59+03:00", 15),
    (EVA, "2027-01-03T23:59:59+03:00", 15),
    (EVA, "2027-01-04T00:00:00+03:00", 3),
]


def test_the_birthday_window_s_edges_in_the_store_s_zone(till: Till) -> None:
    """§5 step 5: the receipt's local date on the next birthday or at most
    birthdayWindowDays before it, across a new year, 29 February on 28 February in other
    years; the date is the store's (program.timezone), whatever offset `at` is written in."""
    for card, at, points in BIRTHDAYS:
        doc = till.quote(receipt([line(MILK, "1", 10000)], card=card, at=at))
        assert doc["earnedPoints"] == points, (card, at, doc)
    till.load(snapshot(timezone="Asia/Vladivostok"))  # UTC+10
    for at, points in [("2026-11-17T13:59:59Z", 7), ("2026-11-17T14:00:00Z", 37)]:
        assert till.quote(receipt([line(MILK, "1", 10000)], at=at))["earnedPoints"] == points
    till.load(snapshot(birthdayWindowDays=0))  # the day itself only
    for at, points in [("2026-11-24T23:59:59+03:00", 7), ("2026-11-25T00:00:00+03:00", 37)]:
        assert till.quote(receipt([line(MILK, "1", 10000)], at=at))["earnedPoints"] == points


def test_tier_rates_with_decimals_and_the_first_tier_for_an_unknown_card(till: Till) -> None:
    """§5 step 5: rate = the tier's accrualPercent (a decimal string); an UNKNOWN card earns
    at the first tier's rate (the first listed, not the lowest), multiplier 1."""
    basket = [line(MILK, "1", 10000)]
    till.load(snapshot(tiers=[{"code": "base", "accrualPercent": "2.5"},
                              {"code": "gold", "accrualPercent": "7.125"}]))  # fmt: skip
    assert till.quote(receipt(basket))["earnedPoints"] == 7  # 7.125
    assert till.quote(receipt(basket, at="2026-11-25T12:00:00+03:00"))["earnedPoints"] == 35
    assert till.quote(receipt(basket, card=BORIS))["earnedPoints"] == 2  # 2.5
    assert till.quote(receipt(basket, card=STRANGER))["earnedPoints"] == 2
    till.load(snapshot(tiers=[{"code": "gold", "accrualPercent": "7.5"},
                              {"code": "base", "accrualPercent": "0.001"}]))  # fmt: skip
    assert till.quote(receipt(basket, card=STRANGER))["earnedPoints"] == 7  # gold is first
    assert till.quote(receipt(basket, card=BORIS))["earnedPoints"] == 0  # 0.001
    # docs/CONTRACT.md §5's decision (review 49): a rate of 100 % or more is a rate
    till.load(snapshot(tiers=[{"code": "base", "accrualPercent": "150"}]))
    doc = till.quote(receipt(basket, card=BORIS, redeem=-1))
    # 30 points redeemed (30 % of 100 roubles), 7000 paid: 7000 × 150 % / 100 = 105 points
    assert (doc["redeemedPoints"], doc["earnedPoints"]) == (30, 105), doc


def test_multipliers_against_the_birthday_s(till: Till) -> None:
    """§5 step 5: multiplier = the largest of 1, the line's BONUS_MULTIPLIER and the
    birthday's; a multiplier below 1 (an offer's or the program's) lowers nothing; the
    split of floor(sum) by largest remainder, ties to the earlier line."""
    snap = snapshot()
    snap["offers"] = [
        offer("m-3", "BONUS_MULTIPLIER", "3", skus=[MILK]),
        offer("m-7.5", "BONUS_MULTIPLIER", "7.5", skus=[BREAD]),
        offer("m-half", "BONUS_MULTIPLIER", "0.5", skus=[CHEESE]),
    ]
    till.load(snap)
    basket = [line(MILK, "1", 10000), line(BREAD, "1", 10000), line(CHEESE, "1", 10000)]
    # 7.5 % of 100 roubles is 7.5 points: ×3 22.5, ×7.5 56.25, ×1 7.5 → 86.25 → 86:
    # 22 + 56 + 7 = 85, the one left to the first of the two .5 (the earlier line)
    doc = till.quote(receipt(basket))
    assert [x["earnedPoints"] for x in doc["lines"]] == [23, 56, 7], doc
    # on the birthday ×5: max(3, 5) 37.5, max(7.5, 5) 56.25, 37.5 → 131.25 → 131: 38, 56, 37
    doc = till.quote(receipt(basket, at="2026-11-25T12:00:00+03:00"))
    assert [x["earnedPoints"] for x in doc["lines"]] == [38, 56, 37], doc
    for below_one in ("0", "0.5"):
        till.load(snapshot(birthdayMultiplier=below_one))
        on_the_day = till.quote(receipt([line(MILK, "1", 10000)], at="2026-11-25T12:00:00+03:00"))
        assert on_the_day["earnedPoints"] == 7, (below_one, on_the_day)


# ---------------------------------------------------------------- §8


def test_the_display_lines_of_each_call(till: Till) -> None:
    """§8 with docs/CONTRACT.md §8's decisions: the running total and the savings (or the
    discount within reach) while the basket is priced, points earned and the balance after
    a commit, the birthday wish in the window, the expiry warning; 2 rows of at most 20."""
    snap = snapshot()
    snap["customers"][0]["firstName"] = "Анна-Мария Петровна"
    snap["customers"][0]["expiring"] = [{"points": 300, "expiresAt": "2026-12-20T23:59:59+03:00"}]
    snap["offers"] = [offer("o-r5", "RECEIPT_PERCENT_OFF", "5", minTotalMinor=100000)]
    till.load(snap)
    seen: list[list[str]] = []

    def display(doc: dict[str, Any]) -> list[str]:
        seen.append(doc["display"])
        return list(doc["display"])

    basket = [line(MILK, "1", 48000)]
    assert display(till.quote(receipt(basket))) == ["Итого: 480,00", "Ещё 520 ₽ до −5%"]
    assert display(till.quote(receipt(basket, redeem=10))) == ["Итого: 480,00", "Бонусами: 10,00"]
    big = [line(MILK, "1", 148000)]
    assert display(till.quote(receipt(big))) == ["Итого: 1 480,00", "Скидка: 74,00"]
    assert display(till.quote(receipt(big, redeem=-1))) == ["Итого: 1 480,00", "Выгода: 495,00"]
    # 140600 × 30 % = 421 points: 74,00 + 421,00
    assert display(till.hold(receipt(basket, rid="h1"))) == ["Итого: 480,00", "Ещё 520 ₽ до −5%"]
    confirmed = till.agent.confirm("h1").to_json()
    # 48000 × 7.5 % = 36; the batch of 300 expires within 14 days: the warning
    assert display(confirmed) == ["Сгорят 20.12: 300", "Бонусы: 1236"]
    doc = till.checkout(receipt(basket, rid="c2", at="2026-11-24T12:00:00+03:00"))
    assert display(doc) == ["С днём рожд.! +180", "Бонусы: 1380"]  # ×5: 180 on 24 November
    doc = till.checkout(receipt(basket, rid="c3", card=STRANGER))
    assert display(doc) == ["Итого: 480,00", "Начислено: +14"]  # 48000 × 3 % = 14.4
    doc = till.checkout(receipt([line(CIGS, "1", 48000)], rid="c4", card=BORIS))
    assert display(doc) == ["Начислено: +0", "Бонусы: 80"]
    for rows in seen:
        assert len(rows) == 2 and all(len(row) <= 20 for row in rows), rows
        assert not any("Петровна" in row for row in rows), rows


# ---------------------------------------------------------------- an independent reading


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _largest_remainder(values: list[Fraction], total: int) -> list[int]:
    shares = [math.floor(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: -(values[i] - shares[i]))  # stable
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _birthday_in(year: int, born: date) -> date:
    try:
        return born.replace(year=year)
    except ValueError:  # 29 February falls on 28 February in other years
        return date(year, 2, 28)


def oracle(snap: dict[str, Any], body: dict[str, Any], held_out: bool = True) -> dict[str, Any]:
    """§5 steps 1-7 as the contract words them, for a quote on a till with nothing
    committed (the whole offline limit left): line offers PERCENT_OFF, AMOUNT_OFF,
    FIXED_PRICE and BONUS_MULTIPLIER; receipt offers RECEIPT_PERCENT_OFF and EXTRA_POINTS.
    Written from the contract, not from agent/pricing.py. The recorded decisions it
    follows: a receipt percent's line reports its id; a multiplier held out only where it
    would have raised points the line earns (docs/CONTRACT.md §5 and §13's decisions)."""
    program = snap["program"]
    pv = int(program["pointValueMinor"])
    at = datetime.fromisoformat(body["at"])
    parents = {c["code"]: c.get("parent") for c in snap["categories"]}
    products = {p["sku"]: p for p in snap["products"]}
    card = next((c for c in snap["cards"] if c["number"] == body["card"]), None)
    customer = next((c for c in snap["customers"] if card and c["id"] == card["customerId"]), None)
    groups = set(customer.get("controlGroups", [])) if customer and held_out else set()
    held: set[str] = set()

    def offered(o: dict[str, Any]) -> bool:
        return (
            customer is not None
            and o.get("customerId") in (None, customer["id"])
            and datetime.fromisoformat(o["validFrom"]) <= at <= datetime.fromisoformat(o["validTo"])
        )

    def ancestors(code: str | None) -> set[str]:
        out: set[str] = set()
        while code and code not in out:
            out.add(code)
            code = parents.get(code)
        return out

    work = []
    for row in body["lines"]:
        product = products.get(row["sku"])
        qty = Fraction(Decimal(row["qty"]))
        amount = (
            int(row["amountMinor"])
            if "amountMinor" in row
            else _round_half_up(Fraction(row["priceMinor"]) * qty)
        )
        eligible = product is not None and not product.get("excludedFromLoyalty", False)
        work.append({"sku": row["sku"], "qty": qty, "amount": amount, "eligible": eligible,
                     "cats": ancestors(product["category"]) if product else set(),
                     "discount": 0, "offer": None, "mult": Fraction(1), "mult_offer": None,
                     "points": 0})  # fmt: skip
    # step 2
    for w in work:
        if not w["eligible"]:
            continue
        best: tuple[Any, ...] | None = None
        best_mult: tuple[Any, ...] | None = None
        for o in snap["offers"]:
            if o["kind"] in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS") or not offered(o):
                continue
            if w["sku"] not in o["skus"] and not set(o["categories"]) & w["cats"]:
                continue
            if w["qty"] < Fraction(Decimal(o["minQty"])):
                continue
            value, amount, qty = Fraction(Decimal(o["value"])), w["amount"], w["qty"]
            if o["kind"] == "BONUS_MULTIPLIER":
                if value > 1:
                    if o["campaignId"] in groups:
                        held.add(o["id"])
                    elif best_mult is None or (-value, o["priority"], o["id"]) < best_mult:
                        best_mult = (-value, o["priority"], o["id"])
                continue
            if o["kind"] == "PERCENT_OFF":
                discount = math.floor(amount * value / 100)
            elif o["kind"] == "AMOUNT_OFF":
                discount = min(amount, _round_half_up(value * qty))
            else:  # FIXED_PRICE
                discount = max(0, amount - _round_half_up(value * qty))
            if discount <= 0:
                continue
            if o["campaignId"] in groups:
                held.add(o["id"])
            elif best is None or (-discount, o["priority"], o["id"]) < best:
                best = (-discount, o["priority"], o["id"])
        if best is not None:
            w["discount"], w["offer"] = -best[0], best[2]
        if best_mult is not None:
            w["mult"], w["mult_offer"] = -best_mult[0], best_mult[2]
    # step 3
    extra, extras = 0, []
    eligible_total = sum(w["amount"] - w["discount"] for w in work if w["eligible"])
    open_lines = [w for w in work if w["eligible"] and w["offer"] is None]
    best_receipt: tuple[Any, ...] | None = None
    for o in snap["offers"]:
        if o["kind"] not in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS") or not offered(o):
            continue
        if eligible_total < int(o.get("minTotalMinor", 0)):
            continue
        if o["kind"] == "EXTRA_POINTS":
            if int(o["value"]) > 0:
                if o["campaignId"] in groups:
                    held.add(o["id"])
                else:
                    extra += int(o["value"])
                    extras.append(o["id"])
            continue
        value = Fraction(Decimal(o["value"]))
        total = sum(math.floor(w["amount"] * value / 100) for w in open_lines)
        if total <= 0:
            continue
        if o["campaignId"] in groups:
            held.add(o["id"])
        elif best_receipt is None or (-total, o["priority"], o["id"]) < best_receipt[0]:
            best_receipt = ((-total, o["priority"], o["id"]), value)
    if best_receipt is not None:
        for w in open_lines:
            discount = math.floor(w["amount"] * best_receipt[1] / 100)
            if discount > 0:
                w["discount"], w["offer"] = discount, best_receipt[0][2]
    # step 4
    redeemed = 0
    available = pending = 0
    if customer is not None:
        # the balance at `at`: balancePoints less its batches expired before `at` (§16; a
        # batch holds through its `expiresAt`), plus the snapshot's pending points active by
        # then; the rest of them is still pending
        expired = sum(
            e["points"]
            for e in customer.get("expiring", [])
            if datetime.fromisoformat(e["expiresAt"]) < at
        )
        activates = [(datetime.fromisoformat(p["activatesAt"]), p["points"])
                     for p in customer.get("pending", [])]  # fmt: skip
        available = customer["balancePoints"] - expired + sum(p for t, p in activates if t <= at)
        pending = sum(p for t, p in activates if t > at)
        after = sum(w["amount"] - w["discount"] for w in work if w["eligible"])
        caps = [(w["amount"] - w["discount"]) // pv if w["eligible"] else 0 for w in work]
        percent = Fraction(Decimal(str(program["maxRedeemPercent"])))
        limits = [max(0, available), math.floor(after * percent / 100 / pv),
                  sum(caps), program["offlineRedeemLimitPoints"]]  # fmt: skip
        if body["redeemPoints"] != -1:
            limits.append(body["redeemPoints"])
        redeemed = max(0, min(limits))
        if redeemed:
            shares = _largest_remainder([Fraction(redeemed * c, sum(caps)) for c in caps], redeemed)
            for w, share in zip(work, shares, strict=True):
                w["points"] = share
    # step 5
    tiers = program["tiers"]
    birthday = Fraction(1)
    if customer is not None:
        tier = next((t for t in tiers if t["code"] == customer["tier"]), tiers[0])
        today = at.astimezone(ZoneInfo(program["timezone"])).date()
        if customer.get("birthday"):
            born = date.fromisoformat(customer["birthday"])
            upcoming = _birthday_in(today.year, born)
            if upcoming < today:
                upcoming = _birthday_in(today.year + 1, born)
            if (upcoming - today).days <= int(program["birthdayWindowDays"]):
                birthday = Fraction(Decimal(str(program["birthdayMultiplier"])))
    else:
        tier = tiers[0]
    rate = Fraction(Decimal(tier["accrualPercent"]))
    exact, multipliers_applied = [], []
    for w in work:
        paid = w["amount"] - w["discount"] - w["points"] * pv
        multiplier = max(Fraction(1), w["mult"], birthday) if customer else Fraction(1)
        exact.append(paid * rate * multiplier / (100 * pv) if w["eligible"] else Fraction(0))
        if w["eligible"] and w["mult_offer"] and w["mult"] > birthday and paid > 0 and rate:
            multipliers_applied.append(w["mult_offer"])
    earned = math.floor(sum(exact))
    shares = _largest_remainder(exact, earned)
    # step 7: priced again for the customer outside every control group
    out_of_group: list[str] = []
    if held:
        twin = oracle(snap, body, held_out=False)
        applied = {x["offerId"] for x in twin["lines"]} | set(twin["_applied"])
        out_of_group = sorted(held & applied)
    total = sum(w["amount"] for w in work)
    discount = sum(w["discount"] for w in work)
    return {
        "lines": [
            {
                "sku": w["sku"],
                "amountMinor": w["amount"],
                "discountMinor": w["discount"],
                "offerId": w["offer"],
                "redeemedMinor": w["points"] * pv,
                "earnedPoints": share,
            }
            for w, share in zip(work, shares, strict=True)
        ],
        "totalMinor": total,
        "discountMinor": discount,
        "redeemedPoints": redeemed,
        "payableMinor": total - discount - redeemed * pv,
        "earnedPoints": earned + extra,
        "heldOut": out_of_group,
        # step 6: spendable at once with no activation delay, pending until then otherwise
        "balance": None
        if customer is None
        else {
            "availablePoints": available
            - redeemed
            + (earned + extra if not program["activationDelayDays"] else 0),
            "pendingPoints": pending + (earned + extra if program["activationDelayDays"] else 0),
        },
        "_applied": multipliers_applied + extras,
    }


_SKUS = [MILK, BREAD, CIGS, BEER, CHEESE, APPLES, SHOES, BALL]
_CARDS = [ANNA, BORIS, GLEB, STRANGER]
_WINDOWS = [  # every one a window (`validFrom` at or before `validTo`), some ending at AT
    ("2026-11-01T00:00:00+03:00", "2027-12-31T23:59:59+03:00"),
    ("2026-12-15T12:00:00+03:00", "2026-12-31T00:00:00+03:00"),
    ("2026-12-01T00:00:00+03:00", "2026-12-15T12:00:00+03:00"),
    ("2026-12-15T09:00:01Z", "2026-12-16T00:00:00+03:00"),
    ("2026-12-01T00:00:00+03:00", "2026-12-15T08:59:59Z"),
]


_MOMENTS = [  # pending points' activation and batches' expiry, around AT
    "2026-11-19T00:00:00+03:00",
    "2026-12-15T11:59:59+03:00",
    "2026-12-15T12:00:00+03:00",
    "2026-12-15T12:00:00.5+03:00",
    "2026-12-20T00:00:00+03:00",
]


def _decimal(rng: random.Random, top: int, places: int) -> str:
    value = rng.randint(0, top * 10**places)
    whole, part = divmod(value, 10**places)
    return f"{whole}.{part:0{places}d}" if places else str(whole)


def random_case(rng: random.Random, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    snap = snapshot(
        pointValueMinor=rng.choice([100, 100, 50, 1, 250]),
        maxRedeemPercent=rng.choice([30, 0, 100, 50, 17]),
        offlineRedeemLimitPoints=rng.choice([500, 0, 3, 100000]),
        birthdayMultiplier=rng.choice([5, 2, 1, 3]),
        birthdayWindowDays=rng.choice([7, 0, 30]),
        tiers=[{"code": "base", "accrualPercent": _decimal(rng, 10, rng.choice([0, 1, 2, 3]))},
               {"code": "silver", "accrualPercent": _decimal(rng, 10, 2)},
               {"code": "gold", "accrualPercent": _decimal(rng, 15, rng.choice([0, 1, 3]))}],
    )  # fmt: skip
    snap["program"]["activationDelayDays"] = rng.choice([0, 0, 1, 14])
    for customer in snap["customers"]:
        customer["balancePoints"] = balance = rng.choice([0, 5, 80, 1200, 100000])
        customer["controlGroups"] = rng.sample(["camp-1", "camp-2", "camp-3"], rng.randint(0, 2))
        customer["pending"] = [
            {"points": rng.randint(1, 300), "activatesAt": rng.choice(_MOMENTS)}
            for _ in range(rng.randint(0, 2))
        ]
        customer["expiring"] = []
        for _ in range(rng.randint(0, 3) if balance else 0):  # parts of balancePoints
            points = rng.randint(0, balance - sum(e["points"] for e in customer["expiring"]))
            if points:
                customer["expiring"].append({"points": points, "expiresAt": rng.choice(_MOMENTS)})
    kinds = ["PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "BONUS_MULTIPLIER",
             "RECEIPT_PERCENT_OFF", "EXTRA_POINTS"]  # fmt: skip
    values = {"PERCENT_OFF": (100, [0, 1, 2]), "AMOUNT_OFF": (5000, [0, 1]),
              "FIXED_PRICE": (9000, [0, 1]), "BONUS_MULTIPLIER": (6, [0, 1]),
              "RECEIPT_PERCENT_OFF": (20, [0, 1]), "EXTRA_POINTS": (50, [0])}  # fmt: skip
    for _ in range(rng.randint(0, 9)):
        kind = rng.choice(kinds)
        top, places = values[kind]
        start, end = rng.choice(_WINDOWS)
        row = offer(rng.choice(["o-", "a", "o-1"]) + str(rng.randint(0, 20)), kind,
                    _decimal(rng, top, rng.choice(places)), validFrom=start, validTo=end,
                    campaignId=rng.choice(["camp-1", "camp-2", "camp-3", "camp-9"]),
                    priority=rng.randint(0, 3))  # fmt: skip
        if kind in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS"):
            row["minTotalMinor"] = rng.choice([0, 5000, 20000])
        else:
            row["skus"] = rng.sample(_SKUS, rng.randint(0, 2))
            row["categories"] = rng.sample(["food", "dairy", "bakery", "sport", "tobacco"],
                                           rng.randint(0, 1))  # fmt: skip
            row["minQty"] = rng.choice(["0", "1", "2", "0.5", "1.5"])
        if rng.random() < 0.7:
            row["customerId"] = rng.choice(["c-a", "c-b", "c-d"])
        if row["id"] not in {o["id"] for o in snap["offers"]}:
            snap["offers"].append(row)
    lines = []
    for _ in range(rng.randint(1, 5)):
        row = line(rng.choice([*_SKUS, NOT_LISTED]),
                   rng.choice(["1", "2", "3", "0.5", "1.5", "0.333", "0.001", "2.75"]))  # fmt: skip
        if rng.random() < 0.2:
            row["amountMinor"] = rng.randint(0, 30000)
        else:
            row["priceMinor"] = rng.randint(0, 30000)
        lines.append(row)
    at = rng.choice([AT, "2026-11-20T12:00:00+03:00", "2027-02-22T12:00:00+03:00",
                     "2026-11-17T21:00:00Z"])  # fmt: skip
    body = receipt(lines, card=rng.choice(_CARDS), at=at, rid=f"r{n}",
                   redeem=rng.choice([0, -1, 7, 100, 10**6]))  # fmt: skip
    return snap, body


FIELDS = ["totalMinor", "discountMinor", "redeemedPoints", "payableMinor", "earnedPoints",
          "heldOut"]  # fmt: skip
BALANCE = ["availablePoints", "pendingPoints"]


def against_the_oracle(till: Till, seed: int, count: int) -> None:
    rng = random.Random(seed)
    for n in range(count):
        snap, body = random_case(rng, n)
        till.load(snap)
        got = till.quote(body)
        expected = oracle(snap, body)
        lines = [{k: x[k] for k in expected["lines"][0]} for x in got["lines"]]
        assert lines == expected["lines"], (seed, n, snap, body, got)
        assert {k: got[k] for k in FIELDS} == {k: expected[k] for k in FIELDS}, (
            seed, n, snap, body, got,
        )  # fmt: skip
        balance = got["balance"] and {k: got["balance"][k] for k in BALANCE}
        assert balance == expected["balance"], (seed, n, snap, body, got)
        assert len(got["display"]) == 2 and all(len(row) <= 20 for row in got["display"]), got


def test_quotes_agree_with_an_independent_reading_of_step_1_to_7(till: Till) -> None:
    """§5 over seeded random snapshots and receipts (rates, point values, percent caps,
    offline limits, birthdays, control groups, every line and receipt offer kind but the
    basket deals, weighed lines, sent amounts, unlisted and excluded goods, pending points
    and expiring batches around `at`, activation delays): each quote's figures and balance
    as `oracle` works them out, and a display of 2 rows of at most 20. The long run is the
    slow twin below."""
    against_the_oracle(till, 4901, 40)


@pytest.mark.slow
def test_quotes_agree_with_an_independent_reading_long(till: Till) -> None:
    against_the_oracle(till, 4902, 2000)


# ---------------------------------------------------------------- the doors, as processes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = "till-1"
    return env


def _cli(data: Path, *argv: str) -> bytes:
    done = subprocess.run([EXE, "--data-dir", str(data), *argv], env=_env(),
                          capture_output=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stderr == b"", (argv, done)
    return done.stdout


@contextlib.contextmanager
def _run(data: Path, log: Path) -> Iterator[int]:
    """`tillpoint run` on `data`, its HTTP port answering /healthz 200 (a snapshot loaded)."""
    port = free_port()
    env = _env()
    env.update({"TILLPOINT_DATA_DIR": str(data), "TILLPOINT_HTTP__LISTEN": f"127.0.0.1:{port}",
                "TILLPOINT_SERVER__LISTEN": f"127.0.0.1:{free_port()}",
                "TILLPOINT_METRICS__LISTEN": f"127.0.0.1:{free_port()}"})  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([EXE, "run"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                finally:
                    conn.close()
            assert time.monotonic() < deadline, "tillpoint run did not serve:\n" + log.read_text()
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _in_process_http(data: Path) -> Iterator[int]:
    """The HTTP door over an `Agent` of this process on `data` (what `tillpoint run` serves)."""
    devices = {"printer": "none", "display": "none", "scanner": "none"}
    agent = till_agent(data, "till-1", device_kinds=devices)
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        yield server.port
    finally:
        server.stop()
        agent.close()


def _doors_walk(tmp_path: Path, *, processes_only: bool) -> None:
    """The snapshot loaded by `tillpoint snapshot load`, a receipt priced by `tillpoint
    quote` (a process) and by the HTTP door, committed by the HTTP door and sent again to
    `tillpoint checkout` (a process): the same bytes at both doors (§12), every figure the
    one worked out by hand from §2 and §5, the display as §8's decisions say."""
    snap = snapshot()
    snap["offers"] = [offer("o-1", "PERCENT_OFF", "15", skus=[MILK], customerId="c-a")]
    data = tmp_path / "till"
    (tmp_path / "snapshot.json").write_text(json.dumps(snap, ensure_ascii=False), "utf-8")
    load = ["snapshot", "load", str(tmp_path / "snapshot.json"), "--json"]
    if processes_only:
        _cli(data, *load)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--data-dir", str(data), *load]) == 0
    body = receipt(
        [line(MILK, "2", 8990), line(APPLES, "0.512", 15990), line(CIGS, "1", 25000)],
        at="2026-11-23T10:15:00+03:00",
        redeem=-1,
    )
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(body), "utf-8")
    quoted = _cli(data, "quote", str(path), "--json")
    doc = json.loads(quoted)
    # MILK 17980, 15 % = 2697; APPLES 0.512 × 15990 = 8186.88 → 8187; cigarettes excluded.
    # Redemption: floor(23470 × 30 % / 100) = 70 over capacities 152 and 81: 45.67 and
    # 24.33 → 45 + 24, the one left to the first. 23 November is in Анна's birthday window:
    # 7.5 % × 5 on 10683 and 5787 paid = 40.06 and 21.70 → 61: 40 + 21.
    assert figures(doc) == [
        (17980, 2697, "o-1", 4600, 40),
        (8187, 0, None, 2400, 21),
        (25000, 0, None, 0, 0),
    ], doc
    assert [doc[k] for k in FIELDS] == [51167, 2697, 70, 41470, 61, []], doc
    assert doc["balance"] == {"availablePoints": 1191, "pendingPoints": 0}
    assert doc["display"] == ["Итого: 511,67", "Выгода: 96,97"]  # 26,97 + 70,00
    door = _run(data, tmp_path / "run.log") if processes_only else _in_process_http(data)
    with door as port:
        assert _post(port, "/v1/quote", body) == (200, quoted)
        status, committed = _post(port, "/v1/checkout", body)
    assert status == 200, committed
    result = json.loads(committed)
    assert figures(result) == figures(doc), result
    assert result["display"] == ["С днём рождения! +61", "Бонусы: 1191"], result
    assert _cli(data, "checkout", str(path), "--json") == committed  # the stored result


def test_the_cli_and_the_http_door_price_alike(tmp_path: Path, clean_env: None) -> None:
    """`quote` and `checkout` as processes, the HTTP door over this process's `Agent`; the
    slow twin below runs every step as a process, HTTP at a real `tillpoint run`."""
    _doors_walk(tmp_path, processes_only=False)


@pytest.mark.slow
def test_the_cli_and_a_running_till_s_http_port_price_alike(
    tmp_path: Path, clean_env: None
) -> None:
    _doors_walk(tmp_path, processes_only=True)


# ---------------------------------------------------------------- a day of checkouts


def checkouts_walk(tmp_path: Path, seed: int, walks: int) -> None:
    """§5 step 4 over a day of commits: each receipt's redemption is the least of what it
    asked, the balance it has by then (points earned before it spendable at once with
    `activationDelayDays` 0), 30 % or 100 % of the eligible amount after discounts, the
    lines' capacities and what is left of `offlineRedeemLimitPoints` for its card on the
    Moscow date of `at` (days change at 21:00 UTC); each result's balance is the running
    one. Every receipt is later than the one before."""
    rng = random.Random(seed)
    devices = {"printer": "none", "display": "none", "scanner": "none"}
    customer_of = {ANNA: "c-a", BORIS: "c-b", GLEB: "c-d", EVA: "c-e"}
    for walk in range(walks):
        agent = till_agent(tmp_path / f"walk{walk}", "till-1", device_kinds=devices)
        try:
            percent = rng.choice([30, 100])
            snap = snapshot(
                offlineRedeemLimitPoints=rng.choice([0, 50, 500, 100000]), maxRedeemPercent=percent
            )
            for customer in snap["customers"]:
                customer["balancePoints"] = rng.choice([0, 100, 1200, 5000])
            agent.load_snapshot(snap)
            balance = {c["id"]: c["balancePoints"] for c in snap["customers"]}
            spent_on: dict[tuple[str, date], int] = {}
            at = datetime(2026, 12, 14, 20, 0, tzinfo=ZoneInfo("Europe/Moscow"))
            for n in range(15):
                at += timedelta(minutes=rng.choice([1, 30, 90, 240]))
                card = rng.choice(list(customer_of))
                rows = [
                    line(rng.choice([MILK, SHOES, CIGS, BREAD]), rng.choice(["1", "2", "0.5"]),
                         rng.randint(0, 200000))
                    for _ in range(rng.randint(1, 3))
                ]  # fmt: skip
                asked = rng.choice([-1, 0, 50, 300, 10**5])
                body = receipt(rows, card=card, at=at.isoformat(), redeem=asked, rid=f"w{n}")
                # the lines' amounts after discounts, as a quote without points prices them
                unpaid = agent.quote(receipt_from_json({**body, "redeemPoints": 0})).to_json()
                eligible = [
                    r["amountMinor"] - r["discountMinor"]
                    for r, row in zip(unpaid["lines"], rows, strict=True)
                    if row["sku"] != CIGS
                ]
                limits = [
                    max(0, balance[customer_of[card]]),
                    sum(eligible) * percent // 100 // 100,
                    sum(amount // 100 for amount in eligible),
                    snap["program"]["offlineRedeemLimitPoints"]
                    - spent_on.get((card, at.date()), 0),
                ]
                if asked != -1:
                    limits.append(asked)
                doc = agent.checkout(receipt_from_json(body)).to_json()
                assert doc["redeemedPoints"] == max(0, min(limits)), (seed, walk, n, limits, doc)
                key = (card, at.date())
                spent_on[key] = spent_on.get(key, 0) + doc["redeemedPoints"]
                balance[customer_of[card]] += doc["earnedPoints"] - doc["redeemedPoints"]
                assert doc["balance"]["availablePoints"] == balance[customer_of[card]], doc
        finally:
            agent.close()


def test_a_day_of_checkouts_spends_within_every_cap(tmp_path: Path) -> None:
    checkouts_walk(tmp_path, 4903, 2)


@pytest.mark.slow
def test_a_day_of_checkouts_spends_within_every_cap_long(tmp_path: Path) -> None:
    checkouts_walk(tmp_path, 4904, 40)
