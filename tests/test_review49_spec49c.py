"""Review 49 (spec49c): §17 (explain), §7 (offers printed on the receipt) and §13's coupon
verdicts, read black-box, sentence by sentence, at each sentence's edges.

Every expectation below was worked out by hand from the contract's words (and
docs/CONTRACT.md's decisions where the contract is silent) before the product was run;
the arithmetic is written beside each figure. Driven through the CLI in this process on
real snapshot and receipt files (`main(argv)`), one receipt as a real `tillpoint`
process, and the same receipt through a real HTTP interface, to show the doors agree.
docs/DECISIONS.md, "Review 49 (spec49c)", says what was found.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_review35_shape35 import clean_env
from .test_review45_spec45 import Till

__all__ = ["clean_env"]  # the fixture, used by name below

ANNA = "2770000000017"  # c-1, gold 10 %, 1000 points, in control group camp-cg
BOB = "2770000000024"  # c-2, base 3 %, 5 points
BLOCKED = "2770000000031"
STRANGER = "2770000000055"  # a valid number no snapshot knows
AT = "2026-12-15T12:00:00+03:00"  # a Tuesday in Moscow
DEC = {"validFrom": "2026-12-01T00:00:00+03:00", "validTo": "2026-12-31T23:59:59+03:00"}

SNAPSHOT: dict[str, Any] = {
    "version": 1,
    "baseVersion": 0,
    "issuedAt": "2026-11-23T03:00:00Z",
    "program": {
        "timezone": "Europe/Moscow",
        "offlineRedeemLimitPoints": 500,
        "tiers": [
            {"code": "base", "accrualPercent": "3"},
            {"code": "gold", "accrualPercent": "10"},
        ],
    },
    "categories": [
        {"code": "food", "name": "Продукты"},
        {"code": "dairy", "parent": "food", "name": "Молочные"},
        {"code": "milk", "parent": "dairy", "name": "Молоко"},
        {"code": "drinks", "name": "Напитки"},
    ],
    "products": [
        {"sku": "milk", "name": "Молоко", "category": "milk"},
        {"sku": "bread", "name": "Хлеб", "category": "food"},
        {"sku": "cigs", "name": "Сигареты", "category": "milk", "excludedFromLoyalty": True},
        {"sku": "cheese", "name": "Сыр", "category": "dairy"},
        {"sku": "juice", "name": "Сок", "category": "drinks"},
        {"sku": "water", "name": "Вода", "category": "drinks"},
    ],
    "customers": [
        {
            "id": "c-1",
            "firstName": "Анна",
            "tier": "gold",
            "balancePoints": 1000,
            "segment": "ACTIVE",
            "controlGroups": ["camp-cg"],
        },
        {"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 5, "segment": "NEW"},
    ],
    "cards": [
        {"number": ANNA, "customerId": "c-1", "status": "ACTIVE"},
        {"number": BOB, "customerId": "c-2", "status": "ACTIVE"},
        {"number": BLOCKED, "customerId": "c-1", "status": "BLOCKED"},
    ],
    "offers": [],
}


def snapshot(
    offers: list[dict[str, Any]] | None = None,
    coupons: list[dict[str, Any]] | None = None,
    **program: Any,
) -> dict[str, Any]:
    snap = copy.deepcopy(SNAPSHOT)
    snap["offers"] = offers or []
    if coupons:
        snap["coupons"] = coupons
    snap["program"].update(program)
    return snap


def offer(
    oid: str, kind: str, value: str, *, skus: Any = (), cats: Any = (), **kw: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": oid, "campaignId": f"camp-{oid}", "kind": kind, "value": value}
    body |= {"skus": list(skus), "categories": list(cats), "priority": 10, **DEC}
    return body | kw


def receipt(rid: str, *lines: tuple[str, str, int], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": AT,
        "card": ANNA,
        "lines": [{"sku": s, "qty": q, "priceMinor": p} for s, q, p in lines]
        or [{"sku": "water", "qty": "1", "priceMinor": 10000}],
        "redeemPoints": 0,
    }
    body.update(kw)
    return body


@pytest.fixture
def make(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    made: list[Till] = []

    def build(snap: dict[str, Any]) -> Till:
        root = tmp_path / f"till{len(made)}"
        root.mkdir()
        till = Till(root, capsys)
        till.load(snap)
        made.append(till)
        return till

    yield build


def rows(trace_line: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A trace line's offers by id, without the repeated id and kind."""
    return {
        o["offerId"]: {k: v for k, v in o.items() if k not in ("offerId", "kind")}
        for o in trace_line["offers"]
    }


# ---------------------------------------------------------------- §17: one basket, every outcome

BASKET_OFFERS = [
    # milk (milk → dairy → food), bread (food), cheese (dairy), cigs (excluded, milk)
    offer("mass-food", "PERCENT_OFF", "10", cats=["food"]),  # an ancestor of every line
    offer("pers-milk", "PERCENT_OFF", "20", skus=["milk"], customerId="c-1"),
    offer("other-milk", "PERCENT_OFF", "90", skus=["milk"], customerId="c-2"),  # not listed
    offer("old-dairy", "PERCENT_OFF", "30", cats=["dairy"], validTo="2026-12-15T11:59:59+03:00"),
    offer("minq-milk", "PERCENT_OFF", "50", skus=["milk"], minQty="1.001"),
    offer("cg-milk", "PERCENT_OFF", "25", skus=["milk"], campaignId="camp-cg"),
    offer("cg-small", "PERCENT_OFF", "5", skus=["milk"], campaignId="camp-cg"),
    offer("coup-milk", "PERCENT_OFF", "40", skus=["milk"], couponRequired=True),
    # bread: a tie at 1,000 with mass-food (same priority): the smaller id wins
    offer("edge-from", "AMOUNT_OFF", "500", skus=["bread"], validFrom=AT),
    offer("monday", "PERCENT_OFF", "90", skus=["bread"], weekdays=[1]),
    offer("morning", "PERCENT_OFF", "90", skus=["bread"], hours=[{"from": "08:00", "to": "12:00"}]),
    # cheese 3 × 10,00: a tie at 300 three ways; the lower priority wins over the smaller id
    offer("edge-to", "FIXED_PRICE", "900", skus=["cheese"], validTo=AT, minQty="3", priority=5),
    offer("a-cheese", "FIXED_PRICE", "900", skus=["cheese"], priority=20),
    offer("x2-cheese", "BONUS_MULTIPLIER", "2", skus=["cheese"]),
    # juice 1.5 × 20,00 = 30,00
    offer("tiny-juice", "PERCENT_OFF", "0.01", skus=["juice"]),  # floor(0.3) = 0
    offer("amt-juice", "AMOUNT_OFF", "333", skus=["juice"]),  # round_half_up(499.5) = 500
    # receipt offers; the basket after step 2 is 80 + 90 + 27 + 25 + 40 = 262,00
    offer("rp-5", "RECEIPT_PERCENT_OFF", "5", minTotalMinor=26200),  # met exactly
    offer("rp-7", "RECEIPT_PERCENT_OFF", "7", minTotalMinor=26201),  # 0,01 short
    offer("rp-3", "RECEIPT_PERCENT_OFF", "3", minTotalMinor=0),  # 120 < 200
    offer("ep-10", "EXTRA_POINTS", "10", minTotalMinor=26200),
    offer("ep-50", "EXTRA_POINTS", "50", minTotalMinor=30000),
]
BASKET_LINES = [
    ("milk", "1", 10000),
    ("bread", "2", 5000),
    ("cigs", "1", 3000),
    ("cheese", "3", 1000),
    ("juice", "1.5", 2000),
    ("water", "1", 4000),
]


def test_one_basket_reaches_every_line_outcome_receipt_threshold_and_cap(make: Any) -> None:
    till = make(snapshot(BASKET_OFFERS))
    body = receipt("r1", *BASKET_LINES, redeemPoints=100, explain=True)
    result = till.doc("quote", body)
    trace = result["trace"]
    milk, bread, cigs, cheese, juice, water = (rows(line) for line in trace["lines"])
    assert [line["index"] for line in trace["lines"]] == [0, 1, 2, 3, 4, 5]
    assert milk == {
        "mass-food": {
            "outcome": "BEATEN",
            "discountMinor": 1000,
            "beatenBy": "pers-milk",
            "beatenByDiscountMinor": 2000,
        },
        "pers-milk": {"outcome": "APPLIED", "discountMinor": 2000},
        "old-dairy": {"outcome": "OUTSIDE_WINDOW"},
        "minq-milk": {"outcome": "BELOW_MIN_QTY"},
        "cg-milk": {"outcome": "CONTROL_GROUP", "discountMinor": 2500},
        "cg-small": {"outcome": "CONTROL_GROUP", "discountMinor": 500},
        "coup-milk": {"outcome": "COUPON_MISSING"},
    }
    assert bread == {
        "mass-food": {
            "outcome": "BEATEN",
            "discountMinor": 1000,
            "beatenBy": "edge-from",
            "beatenByDiscountMinor": 1000,
        },
        "edge-from": {"outcome": "APPLIED", "discountMinor": 1000},
        "monday": {"outcome": "OUTSIDE_WINDOW"},
        "morning": {"outcome": "OUTSIDE_WINDOW"},
    }
    assert cigs == {
        "mass-food": {"outcome": "EXCLUDED_PRODUCT"},
        "old-dairy": {"outcome": "EXCLUDED_PRODUCT"},
    }
    assert {k: v["outcome"] for k, v in cheese.items()} == {
        "mass-food": "BEATEN",
        "old-dairy": "OUTSIDE_WINDOW",
        "edge-to": "APPLIED",
        "a-cheese": "BEATEN",
        "x2-cheese": "APPLIED",
    }
    assert cheese["a-cheese"] == {
        "outcome": "BEATEN",
        "discountMinor": 300,
        "beatenBy": "edge-to",
        "beatenByDiscountMinor": 300,
    }
    assert cheese["mass-food"]["beatenBy"] == "edge-to"
    assert juice == {
        "tiny-juice": {"outcome": "ZERO_DISCOUNT", "discountMinor": 0},
        "amt-juice": {"outcome": "APPLIED", "discountMinor": 500},
    }
    assert water == {}
    receipt_rows = {r["offerId"]: r for r in trace["receiptOffers"]}
    assert receipt_rows["rp-5"] | {} == {
        "offerId": "rp-5",
        "kind": "RECEIPT_PERCENT_OFF",
        "outcome": "APPLIED",
        "percent": "5",
        "minTotalMinor": 26200,
        "basketMinor": 26200,
        "missingMinor": 0,
        "discountMinor": 200,
    }
    assert receipt_rows["rp-7"]["outcome"] == "BELOW_MIN_TOTAL"
    assert receipt_rows["rp-7"]["missingMinor"] == 1
    assert "discountMinor" not in receipt_rows["rp-7"]
    assert receipt_rows["rp-3"]["outcome"] == "BEATEN"
    assert receipt_rows["rp-3"]["discountMinor"] == 120  # 3 % of water's 40,00
    assert receipt_rows["rp-3"]["beatenBy"] == "rp-5"
    assert receipt_rows["rp-3"]["beatenByDiscountMinor"] == 200
    assert receipt_rows["ep-10"]["outcome"] == "APPLIED"
    assert receipt_rows["ep-10"]["points"] == 10
    assert receipt_rows["ep-50"]["outcome"] == "BELOW_MIN_TOTAL"
    assert receipt_rows["ep-50"]["missingMinor"] == 30000 - 26200
    assert receipt_rows["ep-50"]["points"] == 50
    # redemption: 100 asked; 30 % of 260,00 is 78; capacities 80 + 90 + 27 + 25 + 38 = 260
    red = trace["redemption"]
    assert red["requestedPoints"] == 100
    assert {c["name"]: c["points"] for c in red["caps"]} == {
        "REQUESTED": 100,
        "BALANCE": 1000,
        "PERCENT": 78,
        "CAPACITY": 260,
        "OFFLINE_LIMIT": 500,
    }
    assert (red["allowedPoints"], red["boundBy"]) == (78, "PERCENT")
    # the figures: 78 spread 24, 27, 8.1, 7.5, 11.4 -> juice's .5 takes the last point
    assert [line["discountMinor"] for line in result["lines"]] == [2000, 1000, 0, 300, 500, 200]
    assert [line["offerId"] for line in result["lines"]] == [
        "pers-milk",
        "edge-from",
        None,
        "edge-to",
        "amt-juice",
        "rp-5",
    ]
    assert [line["redeemedMinor"] for line in result["lines"]] == [2400, 2700, 0, 800, 800, 1100]
    # paid 56,00 63,00 19,00(×2) 17,00 27,00 at 10 %: 5.6 6.3 3.8 1.7 2.7 = 20.1 -> 20, +10
    assert [line["earnedPoints"] for line in result["lines"]] == [5, 6, 0, 4, 2, 3]
    assert (result["totalMinor"], result["discountMinor"], result["redeemedPoints"]) == (
        33000,
        4000,
        78,
    )
    assert (result["payableMinor"], result["earnedPoints"]) == (21200, 30)
    assert result["balance"] == {"availablePoints": 1000 - 78 + 30, "pendingPoints": 0}
    assert result["heldOut"] == ["cg-milk"]
    # the trace never changes a figure: quote, hold and checkout, with and without it
    plain = till.doc("quote", receipt("r1", *BASKET_LINES, redeemPoints=100))
    assert "trace" not in plain
    assert {**result, "trace": None} == {**plain, "trace": None}


def test_hold_and_checkout_with_and_without_the_trace_give_the_same_figures(make: Any) -> None:
    till = make(snapshot(BASKET_OFFERS))
    lines = BASKET_LINES
    quoted = till.doc("quote", receipt("q", *lines, redeemPoints=100, explain=True))
    held = till.doc("hold", receipt("h", *lines, redeemPoints=100, explain=True))
    assert held["state"] == "HELD" and held["trace"] == quoted["trace"]
    code, out, err = till.run("cancel", "h", "--json")
    assert code == 0 and json.loads(out)["state"] == "CANCELLED", err
    sold = till.doc("checkout", receipt("c", *lines, redeemPoints=100, explain=True))
    again = till.doc("checkout", receipt("c", *lines, redeemPoints=100))  # the stored answer
    assert sold["trace"] == quoted["trace"]
    skip = (
        "receiptId",
        "trace",
        "printedOffers",
        "state",
        "deviceId",
        "seq",
        "holdExpiresAt",
        "display",
        "balance",
    )
    same = {k: v for k, v in quoted.items() if k not in skip}
    assert {k: v for k, v in sold.items() if k not in skip} == same
    assert {k: v for k, v in held.items() if k not in skip} == same
    assert sold["balance"] == quoted["balance"] == held["balance"]
    assert {**again, "trace": None} == {**sold, "trace": None}


# ---------------------------------------------------------------- §17: each cap binds in turn


def caps_of(result: dict[str, Any]) -> tuple[dict[str, int], int, str]:
    red = result["trace"]["redemption"]
    return {c["name"]: int(c["points"]) for c in red["caps"]}, red["allowedPoints"], red["boundBy"]


def test_each_redemption_cap_binds_in_turn(make: Any) -> None:
    till = make(snapshot(offlineRedeemLimitPoints=20))
    water = ("water", "1", 10000)
    # REQUESTED: 10 of 1000, 30, 100, 20
    caps, allowed, bound = caps_of(
        till.doc("quote", receipt("a", water, redeemPoints=10, explain=True))
    )
    assert (allowed, bound) == (10, "REQUESTED")
    assert caps == {
        "REQUESTED": 10,
        "BALANCE": 1000,
        "PERCENT": 30,
        "CAPACITY": 100,
        "OFFLINE_LIMIT": 20,
    }
    # BALANCE: Boris holds 5
    _, allowed, bound = caps_of(
        till.doc("quote", receipt("b", water, card=BOB, redeemPoints=-1, explain=True))
    )
    assert (allowed, bound) == (5, "BALANCE")
    # PERCENT equal to what is asked: REQUESTED comes first
    _, allowed, bound = caps_of(
        till.doc("quote", receipt("c", water, redeemPoints=20, explain=True))
    )
    assert (allowed, bound) == (20, "REQUESTED")
    # OFFLINE_LIMIT: 20 a store-day; a sale of 15 leaves 5 until local midnight
    _, allowed, bound = caps_of(
        till.doc("quote", receipt("d", water, redeemPoints=-1, explain=True))
    )
    assert (allowed, bound) == (20, "OFFLINE_LIMIT")
    assert till.doc("checkout", receipt("e", water, redeemPoints=15))["redeemedPoints"] == 15
    late = receipt("f", water, redeemPoints=-1, explain=True, at="2026-12-15T23:59:59+03:00")
    caps, allowed, bound = caps_of(till.doc("quote", late))
    assert (caps["OFFLINE_LIMIT"], allowed, bound) == (5, 5, "OFFLINE_LIMIT")
    next_day = receipt("g", water, redeemPoints=-1, explain=True, at="2026-12-15T21:00:00Z")
    assert caps_of(till.doc("quote", next_day))[1:] == (20, "OFFLINE_LIMIT")
    # nothing asked: 0, bound by the request; an unknown card: UNKNOWN_CARD
    assert caps_of(till.doc("quote", receipt("h", water, explain=True)))[1:] == (0, "REQUESTED")
    stranger = till.doc("quote", receipt("i", water, card=STRANGER, redeemPoints=-1, explain=True))
    assert stranger["trace"]["redemption"]["boundBy"] == "UNKNOWN_CARD"
    assert stranger["redeemedPoints"] == 0


def test_the_capacity_cap_binds_below_the_percent_one(make: Any) -> None:
    till = make(snapshot(maxRedeemPercent=100, offlineRedeemLimitPoints=500))
    # two lines of 1,50: 100 % of 3,00 is 3 points; each line holds floor(150 / 100) = 1
    body = receipt("a", ("water", "1", 150), ("juice", "1", 150), redeemPoints=-1, explain=True)
    result = till.doc("quote", body)
    caps, allowed, bound = caps_of(result)
    assert (caps["PERCENT"], caps["CAPACITY"], allowed, bound) == (3, 2, 2, "CAPACITY")
    assert [line["redeemedMinor"] for line in result["lines"]] == [100, 100]


# ---------------------------------------------------------------- §13: every verdict on purpose

COUPON_OFFERS = [
    offer("coup-milk", "PERCENT_OFF", "40", skus=["milk"], couponRequired=True),
    offer("coup-bread", "PERCENT_OFF", "30", skus=["bread"], couponRequired=True),
    offer("coup-cheese", "PERCENT_OFF", "30", skus=["cheese"], couponRequired=True),
    offer("coup-juice", "PERCENT_OFF", "30", skus=["juice"], couponRequired=True),
    offer("mass-water", "PERCENT_OFF", "10", skus=["water"]),
    offer("coup-water", "PERCENT_OFF", "1", skus=["water"], couponRequired=True),  # beaten
    offer("coup-rp", "RECEIPT_PERCENT_OFF", "5", couponRequired=True, minTotalMinor=10**7),
    offer(
        "coup-cg", "PERCENT_OFF", "50", skus=["water"], couponRequired=True, campaignId="camp-cg"
    ),
]


def coupon(code: str, offer_id: str, **kw: Any) -> dict[str, Any]:
    return {"code": code, "offerId": offer_id, "customerId": "c-1", **DEC} | kw


COUPONS = [
    coupon("SORRY-7K2Q9", "coup-milk"),
    coupon("FROMNOW", "coup-bread", validFrom=AT),  # valid from this very second
    coupon("ENDNOW", "coup-cheese", validTo=AT),  # valid through this very second
    {"code": "ANY1", "offerId": "coup-juice", **DEC},  # any identified customer
    coupon("FUTURE1", "coup-juice", validFrom="2026-12-15T12:00:01+03:00"),
    coupon("ENDED1", "coup-juice", validTo="2026-12-15T11:59:59+03:00"),
    coupon("BOBS1", "coup-juice", customerId="c-2"),
    coupon("WATER1", "coup-water"),
    coupon("RPBIG1", "coup-rp"),
    coupon("CGCODE1", "coup-cg"),
]
COUPON_LINES = [
    ("milk", "1", 10000),
    ("bread", "1", 10000),
    ("cheese", "1", 10000),
    ("juice", "1", 10000),
    ("water", "1", 10000),
]
SCANNED = [
    "sorry-7k2q9",  # upper-cased, the dash dropped: SORRY7K2Q9
    " SORRY 7K2Q9 ",  # the same code again
    "from–now",  # an en dash
    "endnow",
    "any1",
    "FUTURE1",
    "ENDED1",
    "BOBS1",
    "NOPE",
    "WATER1",
    "RPBIG1",
    "CGCODE1",
]
VERDICTS = [
    ("SORRY7K2Q9", "APPLIED", ""),
    ("SORRY7K2Q9", "REJECTED", "DUPLICATE"),
    ("FROMNOW", "APPLIED", ""),
    ("ENDNOW", "APPLIED", ""),
    ("ANY1", "APPLIED", ""),
    ("FUTURE1", "REJECTED", "NOT_YET_VALID"),
    ("ENDED1", "REJECTED", "EXPIRED"),
    ("BOBS1", "REJECTED", "OTHER_CUSTOMER"),
    ("NOPE", "REJECTED", "UNKNOWN"),
    ("WATER1", "REJECTED", "NOT_APPLICABLE"),  # beaten on its only line
    ("RPBIG1", "REJECTED", "NOT_APPLICABLE"),  # its threshold not met
    ("CGCODE1", "REJECTED", "NOT_APPLICABLE"),  # a control-group customer
]


def verdicts(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["code"], c["status"], c.get("reason", "")) for c in result["coupons"]]


def test_every_coupon_verdict_reached_on_purpose(make: Any) -> None:
    till = make(snapshot(COUPON_OFFERS, COUPONS))
    body = receipt("r1", *COUPON_LINES, coupons=SCANNED, explain=True)
    quoted = till.doc("quote", body)
    assert verdicts(quoted) == VERDICTS
    assert [line["offerId"] for line in quoted["lines"]] == [
        "coup-milk",
        "coup-bread",
        "coup-cheese",
        "coup-juice",
        "mass-water",
    ]
    assert [line["discountMinor"] for line in quoted["lines"]] == [4000, 3000, 3000, 3000, 1000]
    assert quoted["heldOut"] == ["coup-cg"]  # it would have applied: 50 % > 10 %
    water = rows(quoted["trace"]["lines"][4])
    assert water["coup-water"]["outcome"] == "BEATEN"
    assert water["coup-cg"]["outcome"] == "CONTROL_GROUP"
    rp = {r["offerId"]: r for r in quoted["trace"]["receiptOffers"]}["coup-rp"]
    assert (rp["outcome"], rp["missingMinor"]) == (
        "BELOW_MIN_TOTAL",
        10**7 - 36000,
    )  # 60 + 70 + 70 + 70 + 90
    sold = till.doc("checkout", {**body, "receiptId": "r2"})
    assert verdicts(sold) == VERDICTS
    # used: the applied codes; the rejected ones are not used up
    again = till.doc(
        "quote",
        receipt("r3", *COUPON_LINES, coupons=["SORRY7K2Q9", "FROMNOW", "ENDNOW", "ANY1", "WATER1"]),
    )
    assert verdicts(again) == [
        ("SORRY7K2Q9", "REJECTED", "ALREADY_USED"),
        ("FROMNOW", "REJECTED", "ALREADY_USED"),
        ("ENDNOW", "REJECTED", "ALREADY_USED"),
        ("ANY1", "REJECTED", "ALREADY_USED"),
        ("WATER1", "REJECTED", "NOT_APPLICABLE"),
    ]
    # a second later ENDNOW has ended: EXPIRED is checked before ALREADY_USED
    later = receipt("r4", *COUPON_LINES, coupons=["ENDNOW"], at="2026-12-15T12:00:01+03:00")
    assert verdicts(till.doc("quote", later)) == [("ENDNOW", "REJECTED", "EXPIRED")]


def test_any_customer_code_and_codes_on_cards_that_are_not_found(make: Any) -> None:
    till = make(snapshot(COUPON_OFFERS, COUPONS))
    juice = ("juice", "1", 10000)
    boris = till.doc("quote", receipt("b", juice, card=BOB, coupons=["ANY1", "SORRY7K2Q9"]))
    assert verdicts(boris) == [
        ("ANY1", "APPLIED", ""),
        ("SORRY7K2Q9", "REJECTED", "OTHER_CUSTOMER"),
    ]
    stranger = till.doc(
        "checkout", receipt("u", juice, card=STRANGER, coupons=["ANY1", "NOPE", "any-1"])
    )
    assert verdicts(stranger) == [
        ("ANY1", "REJECTED", "NOT_APPLICABLE"),
        ("NOPE", "REJECTED", "UNKNOWN"),
        ("ANY1", "REJECTED", "DUPLICATE"),
    ]
    assert stranger["lines"][0]["discountMinor"] == 0
    # a later scan of a code is DUPLICATE whatever the first scan's verdict
    twice = till.doc("quote", receipt("t", juice, coupons=["NOPE", "nope", "ENDED1", "ended-1"]))
    assert verdicts(twice) == [
        ("NOPE", "REJECTED", "UNKNOWN"),
        ("NOPE", "REJECTED", "DUPLICATE"),
        ("ENDED1", "REJECTED", "EXPIRED"),
        ("ENDED1", "REJECTED", "DUPLICATE"),
    ]
    # the unknown card used nothing: Boris still may
    assert verdicts(till.doc("quote", receipt("b2", juice, card=BOB, coupons=["ANY1"]))) == [
        ("ANY1", "APPLIED", ""),
    ]
    code, out, err = till.run(
        "checkout", till.file(receipt("x", juice, card=BLOCKED, coupons=["ANY1"])), "--json"
    )
    assert code == 2 and out == "" and "Traceback" not in err


# ---------------------------------------------------------------- §7: what a commit prints


def personal(oid: str, rank: int | None, **kw: Any) -> dict[str, Any]:
    body = offer(oid, "PERCENT_OFF", "1", skus=["bread"], customerId="c-1", printable=True)
    body["printText"] = oid
    if rank is not None:
        body["rank"] = rank
    return body | kw


PRINT_OFFERS = [
    personal("r0", None),  # no rank: 0, first
    personal("b", 1),
    personal("a", 1),  # rank then id
    personal("ends-now", 2, validTo=AT),  # valid at `at`: its last second
    personal("ended", 0, validTo="2026-12-15T11:59:59+03:00"),
    personal("o-9", 3),
    personal("o-10", 3),  # ids as text: o-10 before o-9
    personal("in7-utc", 4, validFrom="2026-12-22T09:00:00Z"),  # 7 days ahead to the second
    personal("past7-utc", 4, validFrom="2026-12-22T09:00:01Z"),
    personal("cg", 0, campaignId="camp-cg"),
    personal("np", 0, printable=False),
    personal("boris", 0, customerId="c-2"),
    personal("coupon-only", 5, couponRequired=True),  # printed all the same
    {k: v for k, v in personal("mass", 0).items() if k != "customerId"},  # not personal
]
PRINTED = ["r0", "a", "b", "ends-now", "o-10", "o-9", "in7-utc", "coupon-only"]


def test_the_offers_a_commit_prints_at_each_edge(make: Any) -> None:
    till = make(snapshot(PRINT_OFFERS, maxOffersPrinted=10, offerPrintCooldownDays=0))
    assert till.doc("quote", receipt("q"))["printedOffers"] == []
    held = till.doc("hold", receipt("h"))
    assert held["printedOffers"] == []
    code, out, err = till.run("confirm", "h", "--json")
    assert code == 0, err
    assert json.loads(out)["printedOffers"] == PRINTED
    # a cooldown of 0 days: printed exactly 0 days ago, so printed again
    assert till.doc("checkout", receipt("c"))["printedOffers"] == PRINTED
    assert till.doc("checkout", receipt("u", card=STRANGER))["printedOffers"] == []
    three = make(snapshot(PRINT_OFFERS, maxOffersPrinted=3))
    assert three.doc("checkout", receipt("c"))["printedOffers"] == ["r0", "a", "b"]
    # the default cooldown of 7 days: a second later none of those three again; ends-now ended
    later = three.doc("checkout", receipt("d", at="2026-12-15T12:00:01+03:00"))
    assert later["printedOffers"] == ["o-10", "o-9", "in7-utc"]
    issued = personal("iss", 0, issueCoupon=True, couponRequired=True)
    none = make(snapshot([*PRINT_OFFERS, issued], maxOffersPrinted=0))
    assert none.doc("checkout", receipt("c"))["printedOffers"] == []
    unprinted = none.doc("quote", receipt("q", ("bread", "1", 1000), coupons=["TP5TILL11"]))
    assert verdicts(unprinted) == [("TP5TILL11", "REJECTED", "UNKNOWN")]  # no code issued


def test_a_till_issued_code_is_the_customers_from_at_to_the_offers_end(make: Any) -> None:
    issued = offer(
        "iss",
        "PERCENT_OFF",
        "30",
        skus=["bread"],
        customerId="c-1",
        couponRequired=True,
        issueCoupon=True,
        printable=True,
        printText="−30 %",
        validTo="2026-12-20T23:59:59+03:00",
    )
    till = make(snapshot([issued]))
    bread = ("bread", "1", 10000)
    code = "TP5TILL11"  # TP, the length of TILL1, TILL1, the till's first coupon number
    assert till.doc("hold", receipt("h", bread))["printedOffers"] == []
    assert verdicts(till.doc("quote", receipt("q", bread, coupons=[code]))) == [
        (code, "REJECTED", "UNKNOWN"),  # a hold prints nothing, so issues nothing
    ]
    status, out, err = till.run("confirm", "h", "--json")
    assert status == 0 and json.loads(out)["printedOffers"] == ["iss"], err
    for at, verdict in [
        ("2026-12-15T11:59:59+03:00", ("REJECTED", "NOT_YET_VALID")),
        (AT, ("APPLIED", "")),
        ("2026-12-20T23:59:59+03:00", ("APPLIED", "")),
        ("2026-12-21T00:00:00+03:00", ("REJECTED", "EXPIRED")),
    ]:
        scanned = till.doc("quote", receipt("q", bread, coupons=["tp5-till11"], at=at))
        assert verdicts(scanned) == [(code, *verdict)], at
    assert verdicts(till.doc("quote", receipt("b", bread, card=BOB, coupons=[code]))) == [
        (code, "REJECTED", "OTHER_CUSTOMER"),
    ]
    used = till.doc("checkout", receipt("c", bread, coupons=[code]))
    assert (verdicts(used), used["discountMinor"]) == ([(code, "APPLIED", "")], 3000)
    assert verdicts(till.doc("quote", receipt("d", bread, coupons=[code]))) == [
        (code, "REJECTED", "ALREADY_USED"),
    ]


# ---------------------------------------------------------------- the doors agree

EXE = Path(sys.executable).parent / "tillpoint"


def test_checkout_explain_as_a_process_and_over_a_running_agents_http_agree(
    make: Any, tmp_path: Path
) -> None:
    """`tillpoint checkout FILE --json --explain` as a real process on one till, the same
    receipt with `explain` posted to a real `tillpoint run`'s HTTP port on another (both
    loaded with the same snapshot): the same document, byte for byte (§12). The two
    processes start together, to keep the test short on a loaded machine."""
    env = dict(os.environ, TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
    by_cli, by_http = make(snapshot(BASKET_OFFERS)), make(snapshot(BASKET_OFFERS))
    body = receipt("r1", *BASKET_LINES, redeemPoints=100)
    sale = tmp_path / "r1.json"
    sale.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    grpc_port = socket.socket()
    grpc_port.bind(("127.0.0.1", 0))
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{grpc_port.getsockname()[1]}"\n'
        "[metrics]\nenabled = false\n",
        encoding="utf-8",
    )
    grpc_port.close()
    run = subprocess.Popen(
        [EXE, "--config", conf, "--data-dir", by_http.dir, "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        local = subprocess.Popen(
            [EXE, "--data-dir", by_cli.dir, "checkout", sale, "--json", "--explain"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = local.communicate(timeout=120)
        assert local.returncode == 0, err
        serving = by_http.dir / "serving.json"
        deadline = time.monotonic() + 60
        while not serving.exists():
            assert run.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)
        port = json.loads(serving.read_text(encoding="utf-8"))["port"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(
                "POST",
                "/v1/checkout",
                body=json.dumps({**body, "explain": True}),
                headers={"Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            status, over_http = answer.status, answer.read().decode()
        finally:
            conn.close()
        assert status == 200, over_http
        assert over_http.strip() == out.strip()
        doc = json.loads(out)
        assert (doc["payableMinor"], doc["earnedPoints"], doc["heldOut"]) == (
            21200,
            30,
            ["cg-milk"],
        )
        assert doc["trace"]["redemption"]["boundBy"] == "PERCENT"
        assert doc["printedOffers"] == [] and doc["state"] == "CONFIRMED"
    finally:
        run.terminate()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def test_multiplier_codes_beside_a_birthday_and_a_checkout_retried_with_explain(make: Any) -> None:
    """The birthday's ×5 (20 December, five days ahead: inside the 7-day window) beats a ×3
    and equals a ×5 a code unlocks: that code gave nothing (NOT_APPLICABLE), both rows
    `BEATEN` by `birthdayMultiplier` with 0; a ×6 unlocked on bread beats it and its ×2.
    The same checkout retried with `explain` answers the stored figures with a trace, the
    quote's own, and the same verdicts."""
    snap = snapshot(
        [
            offer("x3", "BONUS_MULTIPLIER", "3", skus=["milk"]),
            offer("x5", "BONUS_MULTIPLIER", "5", skus=["milk"], couponRequired=True),
            offer("x6", "BONUS_MULTIPLIER", "6", skus=["bread"], couponRequired=True),
            offer("x2b", "BONUS_MULTIPLIER", "2", skus=["bread"]),
        ],
        [coupon("X5", "x5"), coupon("X6", "x6")],
    )
    snap["customers"][0]["birthday"] = "1990-12-20"
    till = make(snap)
    body = receipt("a", ("milk", "1", 10000), ("bread", "1", 10000), coupons=["X5", "X6"])
    quoted = till.doc("quote", {**body, "explain": True})
    sold = till.doc("checkout", body)
    assert "trace" not in sold
    want = [("X5", "REJECTED", "NOT_APPLICABLE"), ("X6", "APPLIED", "")]
    assert verdicts(quoted) == verdicts(sold) == want
    # 100,00 at 10 %: ×5 is 50 points, ×6 is 60
    assert [line["earnedPoints"] for line in sold["lines"]] == [50, 60]
    retried = till.doc("checkout", {**body, "explain": True})
    assert retried["trace"] == quoted["trace"]
    assert {**retried, "trace": None} == {**sold, "trace": None}
    milk, bread = (rows(line) for line in retried["trace"]["lines"])
    assert milk == {
        "x3": {"outcome": "BEATEN", "beatenBy": "birthdayMultiplier", "beatenByDiscountMinor": 0},
        "x5": {"outcome": "BEATEN", "beatenBy": "birthdayMultiplier", "beatenByDiscountMinor": 0},
    }
    assert bread == {
        "x2b": {"outcome": "BEATEN", "beatenBy": "x6", "beatenByDiscountMinor": 0},
        "x6": {"outcome": "APPLIED"},
    }
    # X5 was not used up; X6 was
    again = till.doc("quote", receipt("b", ("bread", "1", 100), coupons=["X6", "X5"]))
    assert verdicts(again) == [
        ("X6", "REJECTED", "ALREADY_USED"),
        ("X5", "REJECTED", "NOT_APPLICABLE"),
    ]


def test_a_code_whose_offer_gives_nothing_for_any_other_cause_is_not_applicable(make: Any) -> None:
    """§13 names three causes of NOT_APPLICABLE ("beaten on every line, threshold not met,
    or a control-group customer"); its words are "its offer gave this receipt nothing", and
    the project reads every other such cause the same way (docs/DECISIONS.md, "Coupons"):
    an excluded line, an offer out of its dates or weekday, below its `minQty`, another
    customer's personal offer, a SKU not in the basket. A code beaten on one line and
    applied on another is APPLIED."""
    offers = [
        offer("two", "PERCENT_OFF", "15", skus=["milk", "bread"], couponRequired=True),
        offer("mass-milk", "PERCENT_OFF", "20", skus=["milk"]),
        offer("cig", "PERCENT_OFF", "15", skus=["cigs"], couponRequired=True),
        offer(
            "old",
            "PERCENT_OFF",
            "15",
            skus=["bread"],
            couponRequired=True,
            validTo="2026-12-10T00:00:00+03:00",
        ),
        offer("boris", "PERCENT_OFF", "15", skus=["bread"], couponRequired=True, customerId="c-2"),
        offer("minq", "PERCENT_OFF", "15", skus=["bread"], couponRequired=True, minQty="2"),
        offer("absent", "PERCENT_OFF", "15", skus=["juice"], couponRequired=True),
        offer("mon", "PERCENT_OFF", "15", skus=["bread"], couponRequired=True, weekdays=[1]),
    ]
    names = {
        "TWO": "two",
        "CIG": "cig",
        "OLD": "old",
        "BOR": "boris",
        "MINQ": "minq",
        "ABS": "absent",
        "MON": "mon",
    }
    till = make(snapshot(offers, [{"code": c, "offerId": o, **DEC} for c, o in names.items()]))
    lines = [("milk", "1", 10000), ("bread", "1", 10000), ("cigs", "1", 1000)]
    result = till.doc("quote", receipt("a", *lines, coupons=list(names)))
    assert verdicts(result) == [("TWO", "APPLIED", "")] + [
        (code, "REJECTED", "NOT_APPLICABLE") for code in list(names)[1:]
    ]
    assert [(line["offerId"], line["discountMinor"]) for line in result["lines"]] == [
        ("mass-milk", 2000),
        ("two", 1500),
        (None, 0),
    ]


def test_a_code_is_found_whichever_dash_or_blank_the_scanner_sent(make: Any) -> None:
    till = make(snapshot(COUPON_OFFERS, COUPONS))
    for scanned in [
        "SORRY\u22127K2Q9",  # a minus sign
        "SORRY\u00a07K2Q9",  # a no-break space
        "sorry\u20147k2q9",  # an em dash
        "SORRY\t7K2Q9",
        "SORRY\u20107K2Q9",  # a hyphen
        "\u017forry7k2q9",  # a long s, upper-cased S
    ]:
        result = till.doc("quote", receipt("q", ("milk", "1", 10000), coupons=[scanned]))
        assert verdicts(result) == [("SORRY7K2Q9", "APPLIED", "")], repr(scanned)
        assert result["lines"][0]["discountMinor"] == 4000
