"""Review 27 (deal27): coupons (docs/CONTRACT.md §13) and basket deals (§15) with their
arithmetic in §5, through the CLI with `--json` as a POS or support engineer uses it."""

from __future__ import annotations

import copy
from typing import Any

from .conftest import CLI, PROGRAM, receipt, snapshot

MILK, BREAD, CHEESE = "4601234000017", "4601234000024", "4601234000055"
# a day outside Анна's birthday window (25 November): her multiplier is 1
DECEMBER = "2026-12-23T10:15:00+03:00"


def verdicts(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(v["code"], v["status"], v["reason"]) for v in result["coupons"]]


def line_trace(result: dict[str, Any], index: int) -> dict[str, str]:
    return {e["offerId"]: e["outcome"] for e in result["trace"]["lines"][index]["offers"]}


def test_a_points_coupon_on_a_line_that_pays_nothing_is_not_used_up(cli: CLI) -> None:
    """docs/CONTRACT.md §13: a code whose offer gave the receipt nothing is NOT_APPLICABLE
    and is not used up. A ×5 points coupon on milk the customer gets free (a FIXED_PRICE of
    0) multiplies no points: it was APPLIED, and used up for nothing."""
    offers = [
        {"id": "free-milk", "kind": "FIXED_PRICE", "skus": [MILK], "value": "0", "minQty": "2"},
        {
            "id": "x5",
            "kind": "BONUS_MULTIPLIER",
            "skus": [MILK],
            "value": "5",
            "couponRequired": True,
        },
    ]
    coupons = [{"code": "X5-MILK", "offerId": "x5"}]
    assert cli("snapshot", "load", snapshot(offers=offers, coupons=coupons)).code == 0

    free = receipt("r1", at=DECEMBER, coupons=["x5 milk"], explain=True)
    quoted = cli("quote", free, "--json").json()
    assert quoted["lines"][0]["discountMinor"] == 17980 and quoted["earnedPoints"] == 0
    assert verdicts(quoted) == [("X5MILK", "REJECTED", "NOT_APPLICABLE")]
    # why: the multiplier had nothing to multiply
    assert line_trace(quoted, 0) == {"free-milk": "APPLIED", "x5": "ZERO_DISCOUNT"}
    sold = cli("checkout", free, "--json").json()
    assert verdicts(sold) == [("X5MILK", "REJECTED", "NOT_APPLICABLE")]

    # the code is still good on the next visit, where milk is paid for
    paid = receipt(
        "r2", at=DECEMBER, coupons=["X5MILK"], lines=[{"sku": MILK, "qty": "1", "priceMinor": 8990}]
    )
    again = cli("checkout", paid, "--json").json()
    assert verdicts(again) == [("X5MILK", "APPLIED", "")]
    assert again["earnedPoints"] == 33  # 89.90 × 7.5 % × 5 = 33.71


def test_a_points_coupon_of_a_tier_that_earns_nothing_is_not_used_up(cli: CLI) -> None:
    """docs/CONTRACT.md §13: a tier with accrualPercent 0 earns no points, multiplied or
    not: the ×3 code gave the receipt nothing."""
    program = copy.deepcopy(PROGRAM)
    program["tiers"].append({"code": "staff", "accrualPercent": "0"})
    snap = snapshot(
        program=program,
        offers=[
            {
                "id": "x3",
                "kind": "BONUS_MULTIPLIER",
                "skus": [MILK],
                "value": "3",
                "couponRequired": True,
            }
        ],
        coupons=[{"code": "X3", "offerId": "x3"}],
    )
    snap["customers"][0]["tier"] = "staff"
    assert cli("snapshot", "load", snap).code == 0
    sold = cli("checkout", receipt("r1", at=DECEMBER, coupons=["X3"]), "--json").json()
    assert sold["earnedPoints"] == 0
    assert verdicts(sold) == [("X3", "REJECTED", "NOT_APPLICABLE")]


def test_a_codes_validity_is_inclusive_to_the_second_in_any_offset(cli: CLI) -> None:
    """docs/CONTRACT.md §13 (validity as §5's: inclusive bounds): a code is good at its
    validTo to the second, whatever offset the receipt's `at` is written in, and EXPIRED
    one second later; NOT_YET_VALID one second before validFrom."""
    offers = [
        {"id": "o-c", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", "couponRequired": True}
    ]
    coupons = [
        {"code": "ENDS", "offerId": "o-c", "validTo": "2026-11-23T10:15:00+03:00"},
        {"code": "STARTS", "offerId": "o-c", "validFrom": "2026-11-23T10:15:01+03:00"},
    ]
    assert cli("snapshot", "load", snapshot(offers=offers, coupons=coupons)).code == 0
    at_the_end = [("ENDS", "APPLIED", ""), ("STARTS", "REJECTED", "NOT_YET_VALID")]
    a_second_later = [("ENDS", "REJECTED", "EXPIRED"), ("STARTS", "APPLIED", "")]
    for n, at, expected in [
        (1, "2026-11-23T07:15:00Z", at_the_end),  # 10:15:00+03:00
        (2, "2026-11-23T10:15:01+03:00", a_second_later),
    ]:
        sold = cli("checkout", receipt(f"r{n}", at=at, coupons=["ends", "starts"]), "--json")
        assert verdicts(sold.json()) == expected, at
        assert sold.json()["discountMinor"] == 1798


def test_a_till_issued_code_outlives_a_refund_of_the_receipt_that_printed_it(cli: CLI) -> None:
    """docs/CONTRACT.md §13 (decision): refunds leave coupons alone both ways. Returning
    the whole receipt that printed a one-time code does not void the code; the customer
    can still use it once."""
    offer = {
        "id": "o-next",
        "kind": "PERCENT_OFF",
        "skus": [MILK],
        "value": "10",
        "customerId": "c-a",
        "couponRequired": True,
        "issueCoupon": True,
        "printable": True,
        "printText": "−10% на молоко",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
    }
    assert cli("snapshot", "load", snapshot(offers=[offer])).code == 0
    sold = cli("checkout", receipt("r1"), "--json").json()
    assert sold["printedOffers"] == ["o-next"] and sold["discountMinor"] == 0
    code = "TP5TILL11"  # "TP", len("TILL1"), "TILL1", the till's first coupon number
    refund = {
        "refundId": "rf1",
        "receiptId": "r1",
        "at": "2026-11-23T12:00:00+03:00",
        "lines": [{"sku": MILK, "qty": "2"}],
    }
    assert cli("refund", refund, "--json").code == 0
    later = receipt("r2", at="2026-11-24T10:00:00+03:00", coupons=[code])
    used = cli("checkout", later, "--json").json()
    assert verdicts(used) == [(code, "APPLIED", "")] and used["discountMinor"] == 1798
    again = cli("quote", receipt("r3", at="2026-11-24T11:00:00+03:00", coupons=[code]), "--json")
    assert verdicts(again.json()) == [(code, "REJECTED", "ALREADY_USED")]


def test_three_for_two_at_equal_prices_frees_the_later_line_beside_a_receipt_discount(
    cli: CLI,
) -> None:
    """docs/CONTRACT.md §15 with §5: units of equal price keep the receipt's order (the
    earlier line first), so the last unit of a group, the later line's, is free; a deal
    line with no free unit still reports the deal and takes no receipt discount; deals of
    one priority go by id as text ("d-10" before "d-9"); the receipt discount's threshold
    reads the basket after the deal; redemption spreads by capacity, largest remainder."""
    offers = [
        {"id": "d-9", "kind": "MULTIBUY", "skus": [MILK, BREAD], "buyQty": "1", "freeQty": "1"},
        {"id": "d-10", "kind": "MULTIBUY", "skus": [MILK, BREAD], "buyQty": "2", "freeQty": "1"},
        {"id": "r-10", "kind": "RECEIPT_PERCENT_OFF", "value": "10", "minTotalMinor": 1000},
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    lines = [
        {"sku": BREAD, "qty": "1", "priceMinor": 555},
        {"sku": MILK, "qty": "1", "priceMinor": 300},
        {"sku": BREAD, "qty": "1", "priceMinor": 300},
        {"sku": MILK, "qty": "1", "priceMinor": 300},
        {"sku": CHEESE, "qty": "1", "priceMinor": 777},
    ]
    sold = cli(
        "checkout", receipt("r1", at=DECEMBER, lines=lines, redeemPoints=-1), "--json"
    ).json()
    got = [(x["discountMinor"], x["offerId"], x["redeemedMinor"]) for x in sold["lines"]]
    # d-10 first: 555 | 300 300 300 in receipt order -> the group 555, 300 (line 1), 300
    # (line 2, free); line 3 is left over, alone for d-9 (no group of 2): r-10 takes it.
    # Basket after the deal 19.32 >= 10.00. Redemption: 30 % of 18.25 -> 5 points over
    # capacities 5, 3, 0, 2, 7 (1.47 0.88 0 0.59 2.06 -> 1 1 0 1 2).
    assert got == [
        (0, "d-10", 100),
        (0, "d-10", 100),
        (300, "d-10", 0),
        (30, "r-10", 100),
        (77, "r-10", 200),
    ]
    assert (sold["discountMinor"], sold["redeemedPoints"], sold["payableMinor"]) == (407, 5, 1325)
