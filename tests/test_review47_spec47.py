"""Review 47 (spec47): the contract read again, black box, on the paths earlier reviews
covered least: §16's expiring points and the balance's `expiring` list, §17's trace, §14's
windows at their edges, §15's basket deals with coupons, tiers and control groups, §6's
refunds of receipts with redemption, deals and receipt-level points, §11's hold life, §10's
commands and exit codes, and §12's HTTP errors. Each expectation below was written from
the contract's words (and docs/CONTRACT.md's recorded decisions where the contract
is silent) before the product was run; every one found the product right (docs/DECISIONS.md,
"Review 47 (spec47)"). They are kept because no earlier test held these promises in this
form. Driven through the CLI in this process on real files (`main(argv)`), and through a
real HTTP interface (`HttpServer` on 127.0.0.1, an ephemeral port) over the same data
directory.

- §16: `Balance.expiring` lists at most the next 3 batches that still hold points, soonest
  first; a batch counts through its `expiresAt` and is gone the second after; spending takes
  the soonest-expiring batch first (an emptied batch leaves the list); a refund gives the
  points back to the batch they came from; points a till earns expire `pointsLifetimeDays`
  after they become spendable at the same local clock time, also across Berlin's spring
  change with an activation delay; a snapshot `pending` entry's points expire a lifetime
  after `activatesAt`; a quote after a batch expired caps redemption by what is left.
- §17: the trace never changes a figure (quote with and without `explain`); deals in
  `trace.deals`, `TAKEN_BY_DEAL` naming the deal, a receipt offer's `missingMinor`, the
  redemption's caps and `boundBy`; an UNKNOWN card's redemption `boundBy` UNKNOWN_CARD.
- §14: hours `from` inclusive and `to` exclusive to the second, `24:00`, an `at` written in
  UTC read on the store's clock for hours and weekdays; an out-of-window control-group offer
  is not held out.
- §15: a MULTIBUY's units by unit price dearest first (an `amountMinor` line's unit price is
  amount / qty), floor per line; lines with a fractional qty take no part; a deal equal to
  its lines' best offers does not take them; a later deal sees only the lines left; a
  control-group deal that would have won is held out and the lines get their line offers;
  QUANTITY_PRICE counts a SKU over its lines and needs its coupon (NOT_APPLICABLE when
  beaten, APPLIED when it wins).
- §5: a RECEIPT_PERCENT_OFF's best (largest total) wins on lines with no line offer, the
  redemption spread by largest remainder over capacities, the accrual split with two
  multipliers; every EXTRA_POINTS whose threshold is met adds its points; the birthday
  window's both edges; the activation delay in force at commit.
- §6: a receipt with a deal, redemption and EXTRA_POINTS returned in three refunds: each
  gives floor(p × r / q) and takes floor(e × r / q), the EXTRA_POINTS only with the last; a
  refund retried is the stored answer; a refundId reused with another body, more than was
  bought, a refund dated before the sale and an unknown SKU are refused (exit 2).
- §7: the printed offers of a commit: personal printable ones, rank then id, one starting in
  exactly 7 days, not a control group's, not out of its §14 window, not a mass offer, the
  cooldown; none for a quote or an UNKNOWN card.
- §11: an open hold takes its coupon and offline-limit points from other receipts' quotes;
  Cancel gives them back, so does expiry; Confirm of a cancelled or expired hold is refused
  "hold expired"; Checkout of a cancelled receipt is refused.
- §3/§9: a delta on the wrong base is refused and asks for a full snapshot; a delta's
  `program` replaces the program (absent fields take the defaults); `appliedThrough` counts
  the till's own sales once, and a higher one moves numbering above it.
- §12: 404 for a Confirm, Cancel or Refund of an unknown receipt, 409 for a Hold of another
  body, 412 for a blocked or lost card, a Cancel of a confirmed receipt and no snapshot, 400
  for an invalid card, unknown fields, 65-character fiscal documents, a body over 4 MiB;
  405 for the wrong method; `/openapi.json` lists every call.
"""

from __future__ import annotations

import copy
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.app import till_agent
from tillpoint.agent.http_api import HttpServer

from .test_review35_shape35 import clean_env
from .test_review45_spec45 import Till

__all__ = ["clean_env"]  # the fixture, used by name below

ANNA = "2770000000017"  # c-1, gold 10 %, 1000 points (350 of them expire, in four batches)
BOB = "2770000000024"  # c-2, base 3 %, no points
BLOCKED = "2770000000031"
LOST = "2770000000048"
STRANGER = "2770000000055"  # a valid number no snapshot knows
MILK, BREAD, CIGS = "4601234000017", "4601234000024", "4601234000055"
AT = "2026-12-15T12:00:00+03:00"  # a Tuesday in Moscow
DEC = {"validFrom": "2026-12-01T00:00:00+03:00", "validTo": "2026-12-31T23:59:59+03:00"}

SNAPSHOT: dict[str, Any] = {
    "version": 1,
    "baseVersion": 0,
    "issuedAt": "2026-11-23T03:00:00Z",
    "program": {
        "timezone": "Europe/Moscow",
        "pointsLifetimeDays": 30,
        "tiers": [
            {"code": "base", "accrualPercent": "3"},
            {"code": "gold", "accrualPercent": "10"},
        ],
    },
    "categories": [
        {"code": "food", "name": "Продукты"},
        {"code": "dairy", "parent": "food", "name": "Молочные продукты"},
    ],
    "products": [
        {"sku": MILK, "name": "Молоко", "category": "dairy"},
        {"sku": BREAD, "name": "Хлеб", "category": "food"},
        {"sku": CIGS, "name": "Сигареты", "category": "food", "excludedFromLoyalty": True},
    ],
    "customers": [
        {
            "id": "c-1",
            "firstName": "Анна",
            "tier": "gold",
            "birthday": "1990-06-01",
            "balancePoints": 1000,
            "segment": "ACTIVE",
            "controlGroups": ["camp-cg"],
            "expiring": [
                {"points": 100, "expiresAt": "2026-12-31T23:59:59+03:00"},
                {"points": 200, "expiresAt": "2026-12-20T23:59:59+03:00"},
                {"points": 50, "expiresAt": "2027-01-10T23:59:59+03:00"},
                {"points": 60, "expiresAt": "2027-02-10T23:59:59+03:00"},
            ],
        },
        {"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 0, "segment": "NEW"},
    ],
    "cards": [
        {"number": ANNA, "customerId": "c-1", "status": "ACTIVE"},
        {"number": BOB, "customerId": "c-2", "status": "ACTIVE"},
        {"number": BLOCKED, "customerId": "c-1", "status": "BLOCKED"},
        {"number": LOST, "customerId": "c-1", "status": "LOST"},
    ],
    "offers": [],
}


def snapshot(
    offers: list[dict[str, Any]] | None = None,
    coupons: list[dict[str, Any]] | None = None,
    *,
    expiring: bool = True,
    **program: Any,
) -> dict[str, Any]:
    snap = copy.deepcopy(SNAPSHOT)
    snap["offers"] = offers or []
    if coupons:
        snap["coupons"] = coupons
    snap["program"].update(program)
    if not expiring:
        del snap["customers"][0]["expiring"]
    return snap


def receipt(rid: str = "r1", *lines: tuple[str, str, int], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": AT,
        "card": ANNA,
        "lines": [{"sku": s, "qty": q, "priceMinor": p} for s, q, p in lines]
        or [{"sku": MILK, "qty": "1", "priceMinor": 10000}],
        "redeemPoints": 0,
    }
    body.update(kw)
    return body


def refund(fid: str, rid: str, *lines: tuple[str, str], at: str = "2026-12-16T12:00:00+03:00"):
    return {
        "refundId": fid,
        "receiptId": rid,
        "at": at,
        "lines": [{"sku": s, "qty": q} for s, q in lines],
    }


@pytest.fixture
def make(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    made = []

    def build(snap: dict[str, Any]) -> Till:
        root = tmp_path / f"till{len(made)}"
        root.mkdir()
        till = Till(root, capsys)
        till.load(snap)
        made.append(till)
        return till

    yield build


def figures(result: dict[str, Any]) -> list[tuple[int, Any]]:
    return [(line["discountMinor"], line["offerId"]) for line in result["lines"]]


def batches(doc: dict[str, Any]) -> list[tuple[int, str]]:
    return [(b["points"], b["expiresAt"]) for b in doc.get("expiring", [])]


# ---------------------------------------------------------------- §16


def test_expiring_lists_the_next_three_batches_and_each_counts_through_its_instant(
    make: Any,
) -> None:
    till = make(snapshot())
    assert till.balance(ANNA, AT) == {
        "availablePoints": 1000,
        "pendingPoints": 0,
        "expiring": [
            {"points": 200, "expiresAt": "2026-12-20T23:59:59+03:00"},
            {"points": 100, "expiresAt": "2026-12-31T23:59:59+03:00"},
            {"points": 50, "expiresAt": "2027-01-10T23:59:59+03:00"},
        ],
    }
    assert till.balance(ANNA, "2026-12-20T23:59:59+03:00")["availablePoints"] == 1000
    after = till.balance(ANNA, "2026-12-21T00:00:00+03:00")
    assert after["availablePoints"] == 800
    assert batches(after) == [
        (100, "2026-12-31T23:59:59+03:00"),
        (50, "2027-01-10T23:59:59+03:00"),
        (60, "2027-02-10T23:59:59+03:00"),
    ]
    # the same instant written in UTC
    assert till.balance(ANNA, "2026-12-20T20:59:59Z")["availablePoints"] == 1000
    assert till.balance(ANNA, "2026-12-20T21:00:00Z")["availablePoints"] == 800


def test_spending_takes_the_soonest_batch_first_and_a_refund_puts_it_back(make: Any) -> None:
    till = make(snapshot())
    sale = till.doc("checkout", receipt("r1", (MILK, "10", 10000), redeemPoints=250))
    assert sale["redeemedPoints"] == 250 and sale["earnedPoints"] == 75
    # 200 from the 20.12 batch (gone from the list), 50 from the 31.12 one; the 75 earned
    # expire 30 days after the sale, at its local clock time
    assert batches(sale["balance"]) == [
        (50, "2026-12-31T23:59:59+03:00"),
        (50, "2027-01-10T23:59:59+03:00"),
        (75, "2027-01-14T12:00:00+03:00"),
    ]
    assert sale["balance"]["availablePoints"] == 825
    assert till.balance(ANNA, AT) == sale["balance"]
    back = till.doc("refund", refund("f1", "r1", (MILK, "10")))
    assert (back["returnedPoints"], back["takenBackPoints"]) == (250, 75)
    assert back["balance"] == till.balance(ANNA, "2026-12-16T12:00:00+03:00")
    assert back["balance"]["availablePoints"] == 1000
    assert batches(back["balance"]) == [
        (200, "2026-12-20T23:59:59+03:00"),
        (100, "2026-12-31T23:59:59+03:00"),
        (50, "2027-01-10T23:59:59+03:00"),
    ]


def test_a_quote_after_a_batch_expired_redeems_only_what_is_left(make: Any) -> None:
    till = make(snapshot())
    body = receipt("q1", (MILK, "1", 1_000_000), redeemPoints=-1, at="2026-12-21T00:00:00+03:00")
    quote = till.doc("quote", body, "--explain")
    caps = {cap["name"]: cap["points"] for cap in quote["trace"]["redemption"]["caps"]}
    assert caps["BALANCE"] == 800
    assert quote["redeemedPoints"] == 500  # the offline limit binds
    # 500 spent: the three batches left (210) first, then 290 of the rest; 950 earned
    assert quote["balance"] == {
        "availablePoints": 1250,
        "pendingPoints": 0,
        "expiring": [{"points": 950, "expiresAt": "2027-01-20T00:00:00+03:00"}],
    }


def test_earned_points_activate_and_expire_on_the_local_clock_across_berlins_spring_change(
    make: Any,
) -> None:
    snap = snapshot(
        expiring=False, timezone="Europe/Berlin", activationDelayDays=10, pointsLifetimeDays=30
    )
    snap["customers"][0]["balancePoints"] = 0
    snap["customers"][0]["pending"] = [{"points": 40, "activatesAt": "2026-03-25T00:00:00+01:00"}]
    till = make(snap)
    sale = till.doc("checkout", receipt("r1", (MILK, "1", 100000), at="2026-03-20T12:00:00+01:00"))
    assert sale["earnedPoints"] == 100
    assert sale["balance"] == {"availablePoints": 0, "pendingPoints": 140}
    expect = {
        "2026-03-24T23:59:59+01:00": (0, 140, []),
        "2026-03-25T00:00:00+01:00": (40, 100, [(40, "2026-04-24T00:00:00+02:00")]),
        "2026-03-30T11:59:59+02:00": (40, 100, [(40, "2026-04-24T00:00:00+02:00")]),
        "2026-03-30T12:00:00+02:00": (
            140,
            0,
            [(40, "2026-04-24T00:00:00+02:00"), (100, "2026-04-29T12:00:00+02:00")],
        ),
        "2026-04-24T00:00:01+02:00": (100, 0, [(100, "2026-04-29T12:00:00+02:00")]),
        "2026-04-29T12:00:00+02:00": (100, 0, [(100, "2026-04-29T12:00:00+02:00")]),
        "2026-04-29T12:00:01+02:00": (0, 0, []),
    }
    for at, (available, pending, listed) in expect.items():
        doc = till.balance(ANNA, at)
        assert (doc["availablePoints"], doc["pendingPoints"], batches(doc)) == (
            available,
            pending,
            listed,
        ), at
    # §6: points taken back come off the receipt's own pending points first
    back = till.doc("refund", refund("f1", "r1", (MILK, "1"), at="2026-03-21T12:00:00+01:00"))
    assert back["takenBackPoints"] == 100
    assert back["balance"] == {"availablePoints": 0, "pendingPoints": 40}
    assert back["negativeBalance"] is False


# ---------------------------------------------------------------- §17 and §15 with coupons


DEAL_OFFERS = [
    {
        "id": "mb",
        "kind": "MULTIBUY",
        "skus": [MILK, BREAD],
        "buyQty": "2",
        "freeQty": "1",
        "priority": 1,
        "couponRequired": True,
        **DEC,
    },
    {"id": "p10", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", "priority": 5, **DEC},
    {"id": "bm", "kind": "BONUS_MULTIPLIER", "skus": [BREAD], "value": "3", **DEC},
    {
        "id": "rp",
        "kind": "RECEIPT_PERCENT_OFF",
        "value": "5",
        "minTotalMinor": 20000,
        **DEC,
    },
    {"id": "xp", "kind": "EXTRA_POINTS", "value": "40", "minTotalMinor": 25000, **DEC},
]
DEAL_COUPONS = [{"code": "MB-1", "offerId": "mb", **DEC}]
DEAL_LINES = [(MILK, "2", 10000), (BREAD, "1", 5000), (CIGS, "1", 30000)]


def test_a_coupon_deal_explained_and_the_trace_changes_no_figure(make: Any) -> None:
    till = make(snapshot(DEAL_OFFERS, DEAL_COUPONS))
    without = till.doc("quote", receipt("r1", *DEAL_LINES, redeemPoints=-1))
    # no code: the deal is COUPON_MISSING, the milk gets its 10 %; the basket (23000)
    # reaches the 5 %, which the bread takes
    assert figures(without) == [(2000, "p10"), (250, "rp"), (0, None)]
    body = receipt("r1", *DEAL_LINES, redeemPoints=-1, coupons=["mb 1"])
    plain = till.doc("quote", body)
    explained = till.doc("quote", body, "--explain")
    trace = explained.pop("trace")
    assert explained == plain
    # the deal (5000) beats the lines' best offers (2000 + 0): it takes both lines
    assert figures(plain) == [(0, "mb"), (5000, "mb"), (0, None)]
    assert plain["coupons"] == [{"code": "MB1", "status": "APPLIED", "reason": ""}]
    assert trace["deals"] == [
        {
            "offerId": "mb",
            "outcome": "APPLIED",
            "discountMinor": 5000,
            "lineOffersMinor": 2000,
            "lines": [0, 1],
        }
    ]
    milk = {row["offerId"]: row for row in trace["lines"][0]["offers"]}
    assert milk["p10"]["outcome"] == "TAKEN_BY_DEAL" and milk["p10"]["beatenBy"] == "mb"
    assert trace["lines"][2]["offers"] == []  # an excluded product's line
    receipt_offers = {row["offerId"]: row for row in trace["receiptOffers"]}
    # the basket after step 2 is 20000: the 5 % is met (but every line took the deal),
    # the extra points need 5000 more
    assert receipt_offers["rp"]["basketMinor"] == 20000
    assert receipt_offers["rp"]["missingMinor"] == 0
    assert receipt_offers["xp"]["outcome"] == "BELOW_MIN_TOTAL"
    assert receipt_offers["xp"]["missingMinor"] == 5000
    assert trace["redemption"]["boundBy"] == "PERCENT"
    assert trace["redemption"]["allowedPoints"] == plain["redeemedPoints"] == 60
    # the free bread earns nothing, its ×3 gives nothing; the milk earns on 200 − 60
    assert [line["earnedPoints"] for line in plain["lines"]] == [14, 0, 0]


def test_a_deal_receipt_with_redemption_and_extra_points_returned_in_three_refunds(
    make: Any,
) -> None:
    offers = [
        *DEAL_OFFERS[:1],
        {"id": "xp", "kind": "EXTRA_POINTS", "value": "50", "minTotalMinor": 1000, **DEC},
    ]
    till = make(snapshot(offers, DEAL_COUPONS, expiring=False, pointsLifetimeDays=0))
    lines = [(MILK, "2", 10000), (BREAD, "1", 5000)]
    sale = till.doc("checkout", receipt("r1", *lines, redeemPoints=55, coupons=["MB-1"]))
    assert figures(sale) == [(0, "mb"), (5000, "mb")]
    assert [line["redeemedMinor"] for line in sale["lines"]] == [5500, 0]
    # the milk earns on 20000 − 5500 at 10 %: 14.5 → 14, then +50 once
    assert [line["earnedPoints"] for line in sale["lines"]] == [14, 0]
    assert sale["earnedPoints"] == 64
    assert sale["balance"]["availablePoints"] == 1000 - 55 + 64
    one = till.doc("refund", refund("f1", "r1", (MILK, "1")))
    assert (one["returnedPoints"], one["takenBackPoints"]) == (27, 7)
    assert till.doc("refund", refund("f1", "r1", (MILK, "1"))) == one  # retried
    two = till.doc("refund", refund("f2", "r1", (BREAD, "1")))
    assert (two["returnedPoints"], two["takenBackPoints"]) == (0, 0)
    last = till.doc("refund", refund("f3", "r1", (MILK, "1")))
    assert (last["returnedPoints"], last["takenBackPoints"]) == (28, 7 + 50)
    assert last["balance"]["availablePoints"] == 1000
    assert "more" in till.refused("refund", refund("f4", "r1", (MILK, "1")))
    assert "another body" in till.refused("refund", refund("f1", "r1", (BREAD, "1")))
    # the code stays used: refunds do not give coupons back (§13)
    again = till.doc("quote", receipt("r2", *lines, coupons=["MB1"]))
    assert again["coupons"][0]["reason"] == "ALREADY_USED"


def test_refunds_refused_before_the_sale_and_for_a_sku_it_did_not_sell(make: Any) -> None:
    till = make(snapshot())
    till.doc("checkout", receipt("r1"))
    early = refund("f1", "r1", (MILK, "1"), at="2026-12-14T12:00:00+03:00")
    assert "before the sale" in till.refused("refund", early)
    assert BREAD in till.refused("refund", refund("f2", "r1", (BREAD, "1")))
    assert "never committed" in till.refused("refund", refund("f3", "nope", (MILK, "1")))
    assert till.balance(ANNA, AT)["availablePoints"] == 1010


def test_a_refund_that_takes_back_spent_points_says_negative_balance(make: Any) -> None:
    snap = snapshot(expiring=False, pointsLifetimeDays=0)
    snap["customers"][0]["balancePoints"] = 0
    till = make(snap)
    till.doc("checkout", receipt("r1", (MILK, "1", 100000)))  # earns 100
    spent = till.doc("checkout", receipt("r2", (BREAD, "1", 100000), redeemPoints=100))
    assert spent["redeemedPoints"] == 100  # 30 % of 1000.00 is 300: the balance binds
    back = till.doc("refund", refund("f1", "r1", (MILK, "1")))
    assert back["takenBackPoints"] == 100
    assert back["balance"]["availablePoints"] == spent["earnedPoints"] - 100 < 0
    assert back["negativeBalance"] is True


# ---------------------------------------------------------------- §14 edges


@pytest.mark.parametrize(
    ("at", "discount"),
    [
        ("2026-12-15T07:59:59+03:00", 0),
        ("2026-12-15T08:00:00+03:00", 1000),
        ("2026-12-15T10:59:59+03:00", 1000),
        ("2026-12-15T11:00:00+03:00", 0),
        ("2026-12-15T23:59:59+03:00", 1000),  # "24:00" is the end of the day
        ("2026-12-15T05:00:00Z", 1000),  # 08:00 in Moscow
        ("2026-12-15T08:00:00Z", 0),  # 11:00 in Moscow
    ],
)
def test_hour_windows_at_their_edges_on_the_stores_clock(make: Any, at: str, discount: int) -> None:
    hours = [{"from": "08:00", "to": "11:00"}, {"from": "22:00", "to": "24:00"}]
    offer = {"id": "h", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", "hours": hours}
    till = make(snapshot([{**offer, **DEC}]))
    assert till.doc("quote", receipt("q", at=at))["lines"][0]["discountMinor"] == discount


@pytest.mark.parametrize(
    ("at", "discount"),
    [
        ("2026-12-15T23:59:59+03:00", 0),  # Tuesday
        ("2026-12-16T00:00:00+03:00", 1000),  # Wednesday
        ("2026-12-15T21:00:00Z", 1000),  # Wednesday 00:00 in Moscow
        ("2026-12-15T20:59:59Z", 0),
    ],
)
def test_a_weekday_is_the_stores_local_day(make: Any, at: str, discount: int) -> None:
    offer = {"id": "w", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", "weekdays": [3]}
    till = make(snapshot([{**offer, **DEC}]))
    assert till.doc("quote", receipt("q", at=at))["lines"][0]["discountMinor"] == discount


def test_a_control_group_offer_outside_its_window_is_not_held_out(make: Any) -> None:
    offers = [
        {"id": "cg", "campaignId": "camp-cg", "kind": "PERCENT_OFF", "skus": [MILK],
         "value": "10", "weekdays": [3], **DEC},
        {"id": "cg2", "campaignId": "camp-cg", "kind": "PERCENT_OFF", "skus": [BREAD],
         "value": "10", **DEC},
    ]  # fmt: skip
    till = make(snapshot(offers))
    result = till.doc("quote", receipt("q", (MILK, "1", 10000), (BREAD, "1", 10000)), "--explain")
    assert result["heldOut"] == ["cg2"]
    assert figures(result) == [(0, None), (0, None)]
    rows = [line["offers"][0]["outcome"] for line in result["trace"]["lines"]]
    assert rows == ["OUTSIDE_WINDOW", "CONTROL_GROUP"]


def test_a_favourite_weekday_offer_for_a_customer_with_none(make: Any) -> None:
    offer = {"id": "f", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"}
    offer |= {"onFavoriteWeekday": True, **DEC}
    till = make(snapshot([offer]))
    result = till.doc("quote", receipt("q"), "--explain")
    assert result["lines"][0]["discountMinor"] == 0
    assert result["trace"]["lines"][0]["offers"][0]["outcome"] == "OUTSIDE_WINDOW"
    snap = snapshot([offer])
    snap["customers"][0]["favoriteWeekday"] = 2  # Tuesday
    assert make(snap).doc("quote", receipt("q"))["lines"][0]["discountMinor"] == 1000


# ---------------------------------------------------------------- §15


MB = {"id": "mb", "kind": "MULTIBUY", "skus": [MILK, BREAD], "buyQty": "2", "freeQty": "1"}


def test_multibuy_units_dearest_first_with_an_amount_line_and_floor_per_line(make: Any) -> None:
    till = make(snapshot([{**MB, **DEC}]))
    body = receipt("q", (BREAD, "3", 1001), (BREAD, "2", 999), (BREAD, "1", 1000))
    body["lines"][1]["amountMinor"] = 1999  # a unit price of 999.5
    result = till.doc("quote", body)
    # units 1001 ×3 | 1000, 999.5, 999.5: the first group frees a unit of line 0, the
    # second one of line 1: floor(3003 / 3), floor(1999 / 2)
    assert figures(result) == [(1001, "mb"), (999, "mb"), (0, "mb")]


def test_multibuy_leaves_out_fractional_lines_and_does_not_take_a_tie(make: Any) -> None:
    amount = {"id": "a", "kind": "AMOUNT_OFF", "skus": [MILK], "value": "1000", **DEC}
    till = make(snapshot([{**MB, **DEC}, amount]))
    tie = till.doc("quote", receipt("q", (MILK, "2", 3000), (BREAD, "1", 2000)), "--explain")
    assert figures(tie) == [(2000, "a"), (0, None)]  # the deal's 2000 is not more than 2000
    assert tie["trace"]["deals"][0]["outcome"] == "BEATEN"
    won = till.doc("quote", receipt("q", (MILK, "2", 3000), (BREAD, "1", 2001)))
    assert figures(won) == [(0, "mb"), (2001, "mb")]
    lines = [(MILK, "2.5", 3000), (BREAD, "2", 2001), (BREAD, "1", 2001)]
    frac = till.doc("quote", receipt("q", *lines))
    assert figures(frac) == [(2500, "a"), (0, "mb"), (2001, "mb")]


def test_a_later_deal_sees_only_the_lines_left(make: Any) -> None:
    offers = [
        {"id": "m2", "kind": "MULTIBUY", "skus": [MILK, BREAD], "buyQty": "1", "freeQty": "1",
         "priority": 2, **DEC},
        {"id": "m1", "kind": "MULTIBUY", "skus": [MILK], "buyQty": "2", "freeQty": "1",
         "priority": 1, **DEC},
    ]  # fmt: skip
    till = make(snapshot(offers))
    lines = [(MILK, "3", 1000), (BREAD, "2", 500), (MILK, "1", 1000)]
    result = till.doc("quote", receipt("q", *lines), "--explain")
    assert figures(result) == [(1000, "m1"), (500, "m2"), (0, "m2")]
    assert [(d["offerId"], d["lines"]) for d in result["trace"]["deals"]] == [
        ("m1", [0]),
        ("m2", [1, 2]),
    ]


def test_a_control_group_deal_that_would_win_is_held_out(make: Any) -> None:
    offers = [
        {**MB, "skus": [MILK], "campaignId": "camp-cg", **DEC},
        {"id": "p", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", **DEC},
    ]
    till = make(snapshot(offers))
    result = till.doc("quote", receipt("q", (MILK, "3", 1000)))
    assert result["heldOut"] == ["mb"]
    assert figures(result) == [(300, "p")]


def test_quantity_price_counts_the_sku_over_its_lines_and_needs_its_coupon(make: Any) -> None:
    tiers = [{"minQty": "2", "unitPriceMinor": 800}]
    offers = [
        {"id": "qp", "kind": "QUANTITY_PRICE", "skus": [MILK], "tiers": tiers,
         "couponRequired": True, **DEC},
        {"id": "p", "kind": "PERCENT_OFF", "skus": [MILK], "value": "30", **DEC},
    ]  # fmt: skip
    till = make(snapshot(offers, [{"code": "Q1", "offerId": "qp", **DEC}]))
    beaten = till.doc("quote", receipt("q", (MILK, "1", 1000), (MILK, "1", 1000), coupons=["Q1"]))
    assert figures(beaten) == [(300, "p"), (300, "p")]  # 200 each from the tier < 300
    assert beaten["coupons"][0]["reason"] == "NOT_APPLICABLE"
    won = till.doc("quote", receipt("q", (MILK, "1", 1500), (MILK, "1", 1500), coupons=["Q1"]))
    assert figures(won) == [(700, "qp"), (700, "qp")]
    assert won["coupons"] == [{"code": "Q1", "status": "APPLIED", "reason": ""}]
    none = till.doc("quote", receipt("q", (MILK, "2", 1500)))
    assert figures(none) == [(900, "p")]


def test_quantity_price_picks_the_highest_tier_reached_over_lines(make: Any) -> None:
    tiers = [{"minQty": "2", "unitPriceMinor": 9000}, {"minQty": "4", "unitPriceMinor": 8000}]
    offers = [
        {"id": "cat", "kind": "PERCENT_OFF", "categories": ["food"], "value": "5",
         "minQty": "2", **DEC},
        {"id": "qp", "kind": "QUANTITY_PRICE", "skus": [MILK], "tiers": tiers, **DEC},
    ]  # fmt: skip
    till = make(snapshot(offers))
    lines = [(MILK, "1", 10000), (MILK, "3", 10000), (BREAD, "2", 1000)]
    result = till.doc("quote", receipt("q", *lines), "--explain")
    # milk's 4 reach the 80,00 tier on both lines; the bread's ancestor category gives 5 %
    assert figures(result) == [(2000, "qp"), (6000, "qp"), (100, "cat")]
    first = {row["offerId"]: row["outcome"] for row in result["trace"]["lines"][0]["offers"]}
    assert first == {"cat": "BELOW_MIN_QTY", "qp": "APPLIED"}
    short = till.doc("quote", receipt("q", (MILK, "1", 10000), (MILK, "0.5", 10000)))
    assert figures(short) == [(0, None), (0, None)]


# ---------------------------------------------------------------- §5


def test_receipt_offer_spread_and_accrual_split_by_hand(make: Any) -> None:
    offers = [
        {"id": "bm", "kind": "BONUS_MULTIPLIER", "skus": [BREAD], "value": "2", **DEC},
        {"id": "bm2", "kind": "BONUS_MULTIPLIER", "skus": [BREAD], "value": "1.5", **DEC},
        {"id": "am", "kind": "AMOUNT_OFF", "skus": [MILK], "value": "333", **DEC},
        {"id": "rpA", "kind": "RECEIPT_PERCENT_OFF", "value": "10", "minTotalMinor": 30000,
         "priority": 2, **DEC},
        {"id": "rpC", "kind": "RECEIPT_PERCENT_OFF", "value": "50", "minTotalMinor": 30001,
         "priority": 9, **DEC},
    ]  # fmt: skip
    till = make(snapshot(offers, expiring=False, pointsLifetimeDays=0))
    body = receipt("q", (MILK, "1.5", 10000), (BREAD, "1", 10001), (CIGS, "1", 50000))
    body["lines"].append({"sku": BREAD, "qty": "3", "priceMinor": 1, "amountMinor": 15001})
    body["redeemPoints"] = -1
    result = till.doc("quote", body)
    # milk: 333 × 1.5 = 499.5 → 500 off; the basket after step 2 is 14500 + 10001 + 15001;
    # rpC's 50 % on the two bread lines (floor each); 30 % of 27002 caps at 81 points,
    # spread over capacities 145, 50, 75 (43.5, 15, 22.5: the tie to the earlier line);
    # points at 10 %, the bread ×2: 10.1 + 7.002 + 10.602 → 27, shares 10, 7, 10
    assert [
        (line["amountMinor"], line["discountMinor"], line["offerId"], line["redeemedMinor"],
         line["earnedPoints"])
        for line in result["lines"]
    ] == [
        (15000, 500, "am", 4400, 10),
        (10001, 5000, "rpC", 1500, 7),
        (50000, 0, None, 0, 0),
        (15001, 7500, "rpC", 2200, 10),
    ]  # fmt: skip
    assert (result["totalMinor"], result["discountMinor"], result["redeemedPoints"]) == (
        90002,
        13000,
        81,
    )
    assert (result["payableMinor"], result["earnedPoints"]) == (68902, 27)


def test_every_extra_points_offer_met_adds_once_and_control_groups_are_held_out(
    make: Any,
) -> None:
    offers = [
        {"id": "rp", "campaignId": "camp-cg", "kind": "RECEIPT_PERCENT_OFF", "value": "5",
         "minTotalMinor": 1000, **DEC},
        {"id": "xp", "campaignId": "camp-cg", "kind": "EXTRA_POINTS", "value": "50",
         "minTotalMinor": 1000, **DEC},
        {"id": "xq", "kind": "EXTRA_POINTS", "value": "7", "minTotalMinor": 1000, **DEC},
        {"id": "xr", "kind": "EXTRA_POINTS", "value": "9", "minTotalMinor": 1000, **DEC},
    ]  # fmt: skip
    till = make(snapshot(offers))
    result = till.doc("quote", receipt("q", (MILK, "1", 1000)))
    assert figures(result) == [(0, None)]
    assert sorted(result["heldOut"]) == ["rp", "xp"]
    assert result["earnedPoints"] == 1 + 7 + 9


@pytest.mark.parametrize(
    ("at", "earned"),
    [
        ("2026-12-14T23:59:59+03:00", [3, 7, 0]),
        ("2026-12-15T00:00:00+03:00", [5, 7, 0]),
        ("2026-12-22T23:59:59+03:00", [5, 7, 0]),
        ("2026-12-23T00:00:00+03:00", [3, 7, 0]),
    ],
)
def test_the_birthday_window_edges_beside_multiplier_offers(
    make: Any, at: str, earned: list[int]
) -> None:
    offers = [
        {"id": "b3", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "3", **DEC},
        {"id": "b7", "kind": "BONUS_MULTIPLIER", "skus": [BREAD], "value": "7", **DEC},
    ]
    snap = snapshot(offers, expiring=False, birthdayMultiplier=5, birthdayWindowDays=7)
    snap["customers"][0]["birthday"] = "1990-12-22"
    till = make(snap)
    lines = [(MILK, "1", 1000), (BREAD, "1", 1000), (CIGS, "1", 1000)]
    result = till.doc("quote", receipt("q", *lines, at=at))
    assert [line["earnedPoints"] for line in result["lines"]] == earned


def test_the_activation_delay_in_force_at_commit_holds_after_a_new_program(make: Any) -> None:
    snap = snapshot(expiring=False, activationDelayDays=3, pointsLifetimeDays=0)
    till = make(snap)
    sale = till.doc("checkout", receipt("r1"))
    assert sale["balance"] == {"availablePoints": 1000, "pendingPoints": 10}
    newer = copy.deepcopy(snap)
    newer["version"] = 2
    newer["program"]["activationDelayDays"] = 0
    till.load(newer)
    assert till.balance(ANNA, "2026-12-18T11:59:59+03:00") == sale["balance"]
    assert till.balance(ANNA, "2026-12-18T12:00:00+03:00") == {
        "availablePoints": 1010,
        "pendingPoints": 0,
    }


def test_the_offline_limit_is_per_store_day_and_a_quote_spends_none(make: Any) -> None:
    till = make(snapshot(expiring=False, offlineRedeemLimitPoints=100, maxRedeemPercent=100))
    line = (MILK, "1", 100000)
    assert till.doc("quote", receipt("a", line, redeemPoints=80))["redeemedPoints"] == 80
    assert till.doc("checkout", receipt("a", line, redeemPoints=80))["redeemedPoints"] == 80
    second = till.doc("quote", receipt("b", line, redeemPoints=-1), "--explain")
    assert second["redeemedPoints"] == 20
    assert second["trace"]["redemption"]["boundBy"] == "OFFLINE_LIMIT"
    assert till.doc("checkout", receipt("b", line, redeemPoints=-1))["redeemedPoints"] == 20
    midnight = receipt("c", line, redeemPoints=-1, at="2026-12-16T00:00:00+03:00")
    assert till.doc("checkout", midnight)["redeemedPoints"] == 100


# ---------------------------------------------------------------- §7


def test_the_offers_a_commit_prints(make: Any) -> None:
    def personal(oid: str, rank: int, **kw: Any) -> dict[str, Any]:
        offer = {"id": oid, "customerId": "c-1", "kind": "PERCENT_OFF", "skus": [BREAD]}
        offer |= {"value": "1", "rank": rank, "printable": True, "printText": oid, **DEC}
        return offer | kw

    offers = [
        personal("p1", 3),
        personal("p2", 1),
        personal("p3", 2),
        personal("p0", 2),
        personal("cg", 0, campaignId="camp-cg"),
        personal("np", 0, printable=False),
        personal("in7", 5, validFrom="2026-12-22T12:00:00+03:00"),
        personal("past7", 5, validFrom="2026-12-22T12:00:01+03:00"),
        personal("ended", 0, validTo="2026-12-15T11:59:59+03:00"),
        personal("wed", 0, weekdays=[3]),
    ]
    mass = personal("mass", 0)
    del mass["customerId"]
    till = make(snapshot([*offers, mass], maxOffersPrinted=10))
    assert till.doc("checkout", receipt("r1"))["printedOffers"] == ["p2", "p0", "p3", "p1", "in7"]
    cooled = till.doc("checkout", receipt("r2", at="2026-12-22T11:59:59+03:00"))
    assert cooled["printedOffers"] == ["past7"]
    over = till.doc("checkout", receipt("r3", at="2026-12-22T12:00:00+03:00"))
    assert over["printedOffers"] == ["p2", "p0", "p3", "p1", "in7"]
    two = make(snapshot([*offers, mass], maxOffersPrinted=2))
    assert two.doc("quote", receipt("q"))["printedOffers"] == []
    assert two.doc("checkout", receipt("u", card=STRANGER))["printedOffers"] == []
    assert two.doc("checkout", receipt("r1"))["printedOffers"] == ["p2", "p0"]


# ---------------------------------------------------------------- §11


def test_an_open_hold_reserves_its_coupon_and_offline_points_until_cancel_or_expiry(
    make: Any,
) -> None:
    offer = {"id": "c1", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10",
             "couponRequired": True, **DEC}  # fmt: skip
    snap = snapshot(
        [offer],
        [{"code": "K1", "offerId": "c1", **DEC}],
        expiring=False,
        offlineRedeemLimitPoints=100,
        maxRedeemPercent=100,
        holdTtlSeconds=2,
    )
    till = make(snap)
    line = (MILK, "1", 100000)
    held = till.doc("hold", receipt("A", line, redeemPoints=80, coupons=["K1"]))
    assert held["state"] == "HELD" and "holdExpiresAt" in held
    assert held["redeemedPoints"] == 80 and held["coupons"][0]["status"] == "APPLIED"
    other = till.doc("hold", receipt("B", line, redeemPoints=-1, coupons=["K1"]))
    assert other["redeemedPoints"] == 20
    assert other["coupons"][0]["reason"] == "ALREADY_USED"
    code, out, err = till.run("cancel", "A", "--json")
    assert code == 0 and json.loads(out)["state"] == "CANCELLED", err
    code, out, err = till.run("confirm", "A", "--json")
    assert (code, out) == (2, "") and "hold expired" in err
    cancelled = receipt("A", line, redeemPoints=80, coupons=["K1"])
    assert "cancelled" in till.refused("checkout", cancelled)
    after = till.doc("quote", receipt("C", line, redeemPoints=-1, coupons=["K1"]))
    assert after["redeemedPoints"] == 80  # B still holds 20
    assert after["coupons"][0]["status"] == "APPLIED"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # B's hold runs out (2 s after it was placed)
        later = till.doc("quote", receipt("C", line, redeemPoints=-1, coupons=["K1"]))
        if later["redeemedPoints"] == 100:
            break
        time.sleep(0.2)
    assert later["redeemedPoints"] == 100
    code, out, err = till.run("confirm", "B", "--json")
    assert (code, out) == (2, "") and "hold expired" in err


# ---------------------------------------------------------------- §3, §9


def refused_load(till: Till, snap: dict[str, Any]) -> str:
    code, out, err = till.run("snapshot", "load", till.file(snap), "--json")
    assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1, (code, out, err)
    return err


def test_deltas_program_defaults_and_applied_through(make: Any) -> None:
    offer = {"id": "o1", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", **DEC}
    snap = snapshot([offer], expiring=False, maxRedeemPercent=50, pointValueMinor=50)
    till = make(snap)
    assert till.doc("quote", receipt("q", redeemPoints=-1))["redeemedPoints"] == 90
    wrong = {"version": 3, "baseVersion": 2, "issuedAt": "2026-11-24T03:00:00Z"}
    assert "full snapshot" in refused_load(till, wrong)
    delta = {
        "version": 2,
        "baseVersion": 1,
        "issuedAt": "2026-11-24T03:00:00Z",
        "program": {"tiers": SNAPSHOT["program"]["tiers"]},
        "removed": {"offers": ["o1"]},
    }
    till.load(delta)
    after = till.doc("quote", receipt("q", redeemPoints=-1))
    assert figures(after) == [(0, None)]
    assert after["redeemedPoints"] == 30  # 30 % and 100 per point: the defaults
    assert "not newer" in refused_load(till, {**snap, "version": 2})

    fresh = make(snap)
    first = fresh.doc("checkout", receipt("a", (BREAD, "1", 10000)))
    second = fresh.doc("checkout", receipt("b", (BREAD, "1", 10000)))
    assert (first["seq"], second["seq"], second["earnedPoints"]) == (1, 2, 20)
    counted = copy.deepcopy(snap)
    counted |= {"version": 5, "appliedThrough": {"till-1": 1}}
    counted["customers"][0]["balancePoints"] = 1020  # the hub counted sale a
    fresh.load(counted)
    assert fresh.balance(ANNA, AT)["availablePoints"] == 1040
    reimaged = copy.deepcopy(snap)
    reimaged |= {"version": 6, "appliedThrough": {"till-1": 41}}
    reimaged["customers"][0]["balancePoints"] = 1040
    fresh.load(reimaged)
    third = fresh.doc("checkout", receipt("c", (BREAD, "1", 10000)))
    assert third["seq"] == 42 and third["balance"]["availablePoints"] == 1060


# ---------------------------------------------------------------- §10


def test_cli_commands_exit_codes_and_their_one_line_errors(make: Any) -> None:
    till = make(snapshot())
    code, out, err = till.run("--version")
    assert code == 0 and "tillpoint.v1" in out
    code, out, _ = till.run("identify", " 2770–0000–00017 ", "--json")
    assert json.loads(out) == {"status": "FOUND", "customerId": "c-1", "tier": "gold",
                               "firstName": "Анна"}  # fmt: skip
    code, out, _ = till.run("identify", BLOCKED, "--json")
    assert code == 0 and json.loads(out)["status"] == "BLOCKED"
    code, out, _ = till.run("identify", "+1 202 555 0100", "--json")
    assert code == 0 and json.loads(out)["status"] == "INVALID"
    for argv in (
        ["balance", ANNA, "--at", "yesterday", "--json"],
        ["balance", ANNA, "--at", "2026-12-15T12:00:00", "--json"],
        ["balance", "2770000000018", "--json"],
        ["confirm", "nope", "--json"],
        ["cancel", "nope", "--json"],
        ["confirm", "nope", "--fiscal", "F" * 65, "--json"],
        ["quote", "/nonexistent/receipt.json", "--json"],
    ):
        code, out, err = till.run(*argv)
        assert code == 2 and out == "", argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    for card in (BLOCKED, LOST, "2770000000018", ""):
        assert till.refused("checkout", receipt("x", card=card))
    assert till.balance(ANNA, AT)["availablePoints"] == 1000
    assert till.refused("refund", {**refund("f", "x", (MILK, "1")), "extra": 1})
    assert till.refused("refund", refund("f", "x"))  # no lines
    till.doc("checkout", receipt("k1"))
    code, out, err = till.run("cancel", "k1", "--json")
    assert (code, out) == (2, "") and "use a refund" in err
    code, out, err = till.run("status", "--json")
    status = json.loads(out)
    assert (status["cacheVersion"], status["lastSeq"], status["outboxDepth"]) == (1, 1, 1)


def test_no_snapshot_refuses_quote_hold_and_checkout(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    till = Till(tmp_path, capsys)
    for command in ("quote", "hold", "checkout"):
        assert "no snapshot loaded" in till.refused(command, receipt("r1"))


# ---------------------------------------------------------------- §12


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read() or b"null")
        finally:
            conn.close()

    def post(self, call: str, body: Any) -> tuple[int, Any]:
        return self.call("POST", f"/v1/{call}", body)


@pytest.fixture
def http_till(make: Any, tmp_path: Path) -> Iterator[Http]:
    till = make(snapshot())
    agent = till_agent(till.dir, "till-1", device_kinds={"printer": "none", "display": "none",
                                                        "scanner": "none"})  # fmt: skip
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        yield Http(server.port)
    finally:
        server.stop()
        agent.close()


def error_of(answer: tuple[int, Any]) -> tuple[int, str]:
    status, doc = answer
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["message"]
    return status, doc["error"]["code"]


def test_http_errors_by_kind(http_till: Http) -> None:
    door = http_till
    assert door.call("GET", "/healthz")[0] == 200
    assert error_of(door.post("confirm", {"receiptId": "nope"})) == (404, "NOT_FOUND")
    assert error_of(door.post("cancel", {"receiptId": "nope"})) == (404, "NOT_FOUND")
    assert error_of(door.post("refund", refund("f", "nope", (MILK, "1"))))[0] == 404
    status, held = door.post("hold", receipt("h1"))
    assert status == 200 and held["state"] == "HELD"
    other = receipt("h1", (MILK, "1", 10001))
    assert error_of(door.post("hold", other)) == (409, "ALREADY_EXISTS")
    assert error_of(door.post("checkout", other)) == (409, "ALREADY_EXISTS")
    assert error_of(door.post("refund", refund("f", "h1", (MILK, "1"))))[0] == 404
    long = {"receiptId": "h1", "fiscalDocument": "F" * 65}
    assert error_of(door.post("confirm", long)) == (400, "INVALID_ARGUMENT")
    status, confirmed = door.post("confirm", {"receiptId": "h1", "fiscalDocument": "FD-1"})
    assert status == 200 and confirmed["state"] == "CONFIRMED"
    assert error_of(door.post("cancel", {"receiptId": "h1"})) == (412, "FAILED_PRECONDITION")
    for card in (BLOCKED, LOST):
        for call in ("quote", "hold", "checkout"):
            answer = door.post(call, receipt("b1", card=card))
            assert error_of(answer) == (412, "FAILED_PRECONDITION"), (card, call)
    for card in ("2770000000018", "abc", ""):
        assert error_of(door.post("quote", receipt("b1", card=card)))[0] == 400, card
    assert error_of(door.post("balance", {"card": ANNA, "extra": 1}))[0] == 400
    assert error_of(door.post("balance", {"card": ANNA, "at": "2026-12-15T12:00:00"}))[0] == 400
    assert error_of(door.post("balance", {"card": STRANGER}))[0] == 404
    assert error_of(door.post("identify", {"text": ANNA, "x": 1}))[0] == 400
    assert error_of(door.call("POST", "/v1/quote", raw=b"{bad json"))[0] == 400
    big = b'{"receiptId": "' + b"x" * (4 * 1024 * 1024 + 1) + b'"}'
    assert error_of(door.call("POST", "/v1/quote", raw=big))[0] == 400
    assert error_of(door.call("GET", "/v1/quote"))[0] == 405
    assert error_of(door.call("POST", "/v1/status", {}))[0] == 405
    assert error_of(door.call("GET", "/v1/nothing"))[0] == 404
    status, spec = door.call("GET", "/openapi.json")
    calls = ["identify", "quote", "hold", "confirm", "cancel", "checkout", "refund", "balance"]
    assert status == 200 and {f"/v1/{c}" for c in [*calls, "status"]} <= set(spec["paths"])


# ---------------------------------------------------------------- §6, §5.4, §13, §12 more


def test_a_refund_takes_a_sku_from_its_first_line_with_qty_left_then_the_next(make: Any) -> None:
    till = make(snapshot(expiring=False, pointsLifetimeDays=0))
    lines = [(MILK, "1", 10000), (BREAD, "1", 3333), (MILK, "3", 20000)]
    sale = till.doc("checkout", receipt("r1", *lines, redeemPoints=-1))
    # 219 points over capacities 100, 33, 600: 29.9, 9.9, 179.3 → 30, 10, 179;
    # earned on 7000, 2333, 42100 at 10 %: 7, 2.333, 42.1 → 7, 2, 42
    assert [(ln["redeemedMinor"], ln["earnedPoints"]) for ln in sale["lines"]] == [
        (3000, 7),
        (1000, 2),
        (17900, 42),
    ]
    # milk 1 + 1: line 0 whole (30, 7), then a third of line 2 (59, 14)
    first = till.doc("refund", refund("a", "r1", (MILK, "1"), (MILK, "1")))
    assert (first["returnedPoints"], first["takenBackPoints"]) == (89, 21)
    # 2.5 of line 2's 3 returned now: floor(179 × 2.5 / 3) − 59, floor(42 × 2.5 / 3) − 14
    second = till.doc("refund", refund("b", "r1", (MILK, "1.5")))
    assert (second["returnedPoints"], second["takenBackPoints"]) == (90, 21)
    last = till.doc("refund", refund("c", "r1", (MILK, "0.5"), (BREAD, "1")))
    assert (last["returnedPoints"], last["takenBackPoints"]) == (30 + 10, 7 + 2)
    assert last["balance"] == {"availablePoints": 1000, "pendingPoints": 0}


def test_the_offline_limit_is_the_cards_whichever_way_it_was_scanned(make: Any) -> None:
    snap = snapshot(expiring=False, offlineRedeemLimitPoints=100, maxRedeemPercent=100)
    snap["customers"][0]["phone"] = "+79161234567"
    snap["cards"].append({"number": "2770000000062", "customerId": "c-1", "status": "ACTIVE"})
    till = make(snap)
    line = (MILK, "1", 100000)
    by_phone = receipt("a", line, card="8 916 123-45-67", redeemPoints=80)
    assert till.doc("checkout", by_phone)["redeemedPoints"] == 80
    for card in (ANNA, "2770 0000 00017", "9161234567"):
        assert (
            till.doc("quote", receipt("b", line, card=card, redeemPoints=-1))["redeemedPoints"]
            == 20
        ), card
    # "for this card": the customer's other card has its own day
    other = receipt("b", line, card="2770000000062", redeemPoints=-1)
    assert till.doc("quote", other)["redeemedPoints"] == 100


def test_scanned_codes_are_upper_cased_in_any_script_and_lose_their_dashes(make: Any) -> None:
    offer = {"id": "c1", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"}
    offer |= {"couponRequired": True, **DEC}
    till = make(snapshot([offer], [{"code": "ПРОМО-ЁЖ", "offerId": "c1", **DEC}]))
    for scanned in ("промо ёж", "ПРОМО–ЁЖ", "Промо\u2011ёж"):
        result = till.doc("quote", receipt("q", coupons=[scanned]))
        assert result["coupons"] == [{"code": "ПРОМОЁЖ", "status": "APPLIED", "reason": ""}]
        assert figures(result) == [(1000, "c1")]


def test_text_fields_past_128_characters_are_bad_input(make: Any) -> None:
    till = make(snapshot())
    for field in ("receiptId", "storeId", "tillId"):
        assert "128" in till.refused("quote", receipt("q", **{field: "x" * 129}))
    assert "128" in till.refused("quote", receipt("q", coupons=["A" * 129]))
    long_sku = receipt("q")
    long_sku["lines"][0]["sku"] = "4" * 129
    assert "128" in till.refused("quote", long_sku)
    for argv in (["identify", "1" * 129, "--json"], ["balance", "1" * 129, "--json"]):
        code, out, err = till.run(*argv)
        assert (code, out) == (2, "") and "128" in err, argv
    assert till.doc("quote", receipt("x" * 128))["receiptId"] == "x" * 128


def test_only_a_found_card_uses_a_code_and_an_unknown_cards_leaves_it_unused(make: Any) -> None:
    offer = {"id": "c1", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"}
    offer |= {"couponRequired": True, **DEC}
    till = make(snapshot([offer], [{"code": "K1", "offerId": "c1", **DEC}]))
    stranger = till.doc("checkout", receipt("u1", card=STRANGER, coupons=["K1"]))
    assert stranger["card"] == {"status": "UNKNOWN"}
    assert stranger["coupons"][0]["status"] == "REJECTED"
    assert figures(stranger) == [(0, None)] and stranger["earnedPoints"] == 3
    anna = till.doc("checkout", receipt("a1", coupons=["K1"]))
    assert anna["coupons"] == [{"code": "K1", "status": "APPLIED", "reason": ""}]
    assert figures(anna) == [(1000, "c1")]


def test_a_category_cycle_loads_and_its_members_are_each_others_ancestors(make: Any) -> None:
    """§5 step 2's "any ancestor category" over a snapshot whose parents loop (the contract
    is silent; docs/CONTRACT.md §3's decision: the hub's import refuses a ring, a till stops
    its walk up one it is given): pricing ends and an offer on any member reaches the others."""
    offers = [
        {"id": "oy", "kind": "PERCENT_OFF", "categories": ["y"], "value": "10", **DEC},
        {"id": "oz", "kind": "PERCENT_OFF", "categories": ["z"], "value": "20", **DEC},
        {"id": "of", "kind": "PERCENT_OFF", "categories": ["food"], "value": "1", **DEC},
    ]
    snap = snapshot(offers)
    snap["categories"] += [
        {"code": "x", "parent": "y", "name": "X"},
        {"code": "y", "parent": "x", "name": "Y"},
        {"code": "z", "parent": "z", "name": "Z"},
    ]
    snap["products"] += [
        {"sku": "4601234000079", "name": "X", "category": "x"},
        {"sku": "4601234000086", "name": "Z", "category": "z"},
    ]
    till = make(snap)
    result = till.doc(
        "quote", receipt("q", ("4601234000079", "1", 1000), ("4601234000086", "1", 1000))
    )
    assert figures(result) == [(100, "oy"), (200, "oz")]


def test_every_offer_on_an_excluded_or_unlisted_line_is_excluded_product(make: Any) -> None:
    offers = [
        {"id": "of", "kind": "PERCENT_OFF", "categories": ["food"], "value": "10", **DEC},
        {"id": "ox", "kind": "PERCENT_OFF", "skus": [CIGS, "999"], "value": "10", **DEC},
        {"id": "mb", "kind": "MULTIBUY", "skus": [CIGS], "buyQty": "1", "freeQty": "1", **DEC},
        {"id": "bm", "kind": "BONUS_MULTIPLIER", "skus": [CIGS], "value": "2", **DEC},
    ]
    till = make(snapshot(offers))
    result = till.doc("quote", receipt("q", (CIGS, "2", 1000), ("999", "1", 1000)), "--explain")
    assert figures(result) == [(0, None), (0, None)] and result["earnedPoints"] == 0
    rows = [
        {row["offerId"]: row["outcome"] for row in line["offers"]}
        for line in result["trace"]["lines"]
    ]
    assert rows == [
        dict.fromkeys(["bm", "mb", "of", "ox"], "EXCLUDED_PRODUCT"),
        {"ox": "EXCLUDED_PRODUCT"},
    ]
    assert result["trace"]["deals"] == []
