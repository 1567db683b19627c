"""Review 48 (mut48a): the rules of the pricing arithmetic a mutation run found untested.

Each test pins a rule of the contract (docs/CONTRACT.md §2, §5, §7, §13) with figures
worked out by hand from the rule's words, not from running the code; its docstring names
the mutant of `agent/money.py`, `agent/coupons.py` or `agent/pricing.py` that survived the
pricing tests (docs/DECISIONS.md, "Review 48 (mut48a)", lists every survivor).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.money import round_half_up_ratio, split_integer
from tillpoint.agent.results import CheckoutResult, receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

from .conftest import answered, enrolled_till, receipt, snapshot

MILK = "4601234000017"  # dairy
BREAD = "4601234000024"  # bakery
ANNA = "2770000000017"  # c-a, gold (7.5 %), 1,200 points, birthday 25 November
AT = "2026-11-23T10:15:00+03:00"


@pytest.fixture
def till(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path / "till", "till-1")
    yield agent
    agent.close()


def _quote(
    till: Agent,
    lines: list[dict[str, Any]],
    offers: Sequence[dict[str, Any]] = (),
    *,
    card: str = ANNA,
    at: str,
) -> CheckoutResult:
    till.load_snapshot(snapshot(offers=list(offers)))
    doc = receipt("q-1", card=card, at=at, lines=lines)
    return till.quote(receipt_from_json(doc))


# ---------------------------------------------------------------- §2: money.py


def test_round_half_up_takes_halves_away_from_zero_on_both_sides() -> None:
    """§2's decision: halves away from zero. The product only rounds values ≥ 0, but the
    function says "halves away from zero" for any sign (mutant: money.py's negative
    branch `-2n + d` → `-2n - d` survived; `round_half_up` over a Fraction, which nothing
    called, went)."""
    assert round_half_up_ratio(5, 2) == 3  # 2.5
    assert round_half_up_ratio(-5, 2) == -3  # -2.5
    assert round_half_up_ratio(-3, 2) == -2  # -1.5
    assert round_half_up_ratio(-4, 3) == -1  # -1.33…
    assert round_half_up_ratio(-5, 3) == -2  # -1.66…
    assert round_half_up_ratio(0, 7) == 0
    assert round_half_up_ratio(7, 3) == 2
    assert round_half_up_ratio(-7, 3) == -2


def test_largest_remainder_gives_the_missing_units_to_the_largest_fractions() -> None:
    """§5 steps 4 and 5: floors first, then one unit each to the largest fractional parts,
    ties to the earlier position (`split_integer`, the values over one denominator)."""
    assert split_integer([10, 10, 10], 3, 10) == [4, 3, 3]  # 3.33… each, total 10
    assert split_integer([1, 3, 8], 4, 3) == [0, 1, 2]  # 1/4, 3/4, 2
    assert split_integer([5, 1], 2, 3) == [3, 0]  # 5/2, 1/2
    assert split_integer([], 1, 0) == []


# ---------------------------------------------------------------- §2, §5: pricing.py

BREAD_100 = [{"sku": BREAD, "qty": "1", "priceMinor": 10000}]


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "at", "discount"),
    [
        # an end in whole seconds holds through that second: 10 % of 100.00 at .999999
        (None, "2026-12-10T23:59:59+03:00", "2026-12-10T23:59:59.999999+03:00", 1000),
        (None, "2026-12-10T23:59:59+03:00", "2026-12-11T00:00:00+03:00", 0),
        # an end with a fraction of a second is that very moment
        (None, "2026-12-10T10:15:00.250+03:00", "2026-12-10T10:15:00.250+03:00", 1000),
        (None, "2026-12-10T10:15:00.250+03:00", "2026-12-10T10:15:00.250001+03:00", 0),
        # a start is the moment it says
        ("2026-12-10T10:15:00+03:00", None, "2026-12-10T10:15:00+03:00", 1000),
        ("2026-12-10T10:15:00+03:00", None, "2026-12-10T10:14:59.999999+03:00", 0),
    ],
)
def test_an_offers_bounds_are_inclusive_to_the_microsecond(
    till: Agent, valid_from: str | None, valid_to: str | None, at: str, discount: int
) -> None:
    """§5 step 2 "valid at `at` (inclusive bounds)", read with §2's decisions: `validTo`
    "23:59:59" is in force at 23:59:59.999999, an end with a fraction is that moment, a
    start is the moment it says. (Mutant: the quote's `now <= validTo's last instant` → `<`
    survived every pricing test; only review 31's leap-second test, a sale at 23:59:60,
    saw it.)"""
    offer: dict[str, Any] = {"id": "o-10", "kind": "PERCENT_OFF", "skus": [BREAD], "value": "10"}
    if valid_from is not None:
        offer["validFrom"] = valid_from
    if valid_to is not None:
        offer["validTo"] = valid_to
    result = _quote(till, BREAD_100, [offer], at=at)
    assert result.discount_minor == discount
    assert result.lines[0].offer_id == ("o-10" if discount else None)


@pytest.mark.parametrize(
    ("valid_to", "at", "printed"),
    [
        ("2026-12-10T23:59:59+03:00", "2026-12-10T23:59:59.999999+03:00", ["o-print"]),
        ("2026-12-10T23:59:59+03:00", "2026-12-11T00:00:00+03:00", []),
        ("2026-12-10T10:15:00.250+03:00", "2026-12-10T10:15:00.250+03:00", ["o-print"]),
        ("2026-12-10T10:15:00.250+03:00", "2026-12-10T10:15:00.250001+03:00", []),
    ],
)
def test_an_offer_is_printed_through_the_last_instant_of_its_validity(
    till: Agent, valid_to: str, at: str, printed: list[str]
) -> None:
    """§7: a personal printable offer "valid at `at`" is printed; §2's decisions name "the
    offers §7 picks" among the ends compared by the one rule (a `validTo` in whole seconds
    holds through that second, one with a fraction is that moment). (Mutant:
    `offers_to_print`'s `last_instant(validTo) >= at` → `>` survived every pricing test,
    and review 30's and 31's tests of that rule.)"""
    offer = {
        "id": "o-print",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": [MILK],
        "value": "15",
        "validTo": valid_to,
        "printable": True,
        "printText": "−15% на молоко",
    }
    till.load_snapshot(snapshot(offers=[offer]))
    sale = receipt("p-1", card=ANNA, at=at, lines=BREAD_100)
    assert list(till.checkout(receipt_from_json(sale)).printed_offers) == printed


# ---------------------------------------------------------------- §13: coupons.py

KEFIR = "4601234000024"  # the hub's sample master data: dairy


def test_online_only_the_code_the_hub_says_is_used_is_already_used(tmp_path: Path) -> None:
    """§13: "a code the hub says is used is `ALREADY_USED`" — that code, not the receipt's
    other codes. Till a uses APP555 online; till b scans APP555 and KEF10 (another offer's
    code) on one receipt: APP555 is ALREADY_USED, KEF10 is APPLIED, 10 % off the kefir
    (50.00 → 5.00), the milk at full price: 179.80 + 50.00 − 5.00 = 224.80 to pay.
    (Mutant: `mark_used`'s `reason is None and code in used` → `or`, every accepted code
    of the receipt ALREADY_USED once the hub names one, survived; a real hub on
    127.0.0.1, two enrolled tills.)"""
    offers = [
        {
            "id": "o-sorry",
            "kind": "AMOUNT_OFF",
            "skus": [MILK],
            "value": "2000",
            "couponRequired": True,
        },
        {
            "id": "o-kef",
            "kind": "PERCENT_OFF",
            "skus": [KEFIR],
            "value": "10",
            "couponRequired": True,
        },
    ]
    codes = [{"code": "APP555", "offerId": "o-sorry"}, {"code": "KEF10", "offerId": "o-kef"}]
    hub = LoopbackHub(
        tmp_path / "hub", data=sample_master_data() | {"offers": offers, "coupons": codes}
    )
    try:
        a = enrolled_till(hub, tmp_path / "a", "a", timings=answered())
        b = enrolled_till(hub, tmp_path / "b", "b", timings=answered())
        try:
            milk = {"sku": MILK, "qty": "2", "priceMinor": 8990}
            kefir = {"sku": KEFIR, "qty": "1", "priceMinor": 5000}
            first = a.agent.checkout(
                receipt_from_json(receipt("a-1", at=AT, lines=[milk], coupons=["APP555"]))
            )
            assert first.mode == "ONLINE"
            assert [(v.code, v.status) for v in first.coupons] == [("APP555", "APPLIED")]
            second = b.agent.checkout(
                receipt_from_json(
                    receipt("b-1", at=AT, lines=[milk, kefir], coupons=["APP555", "KEF10"])
                )
            )
            assert second.mode == "ONLINE"
            assert [(v.code, v.status, v.reason) for v in second.coupons] == [
                ("APP555", "REJECTED", "ALREADY_USED"),
                ("KEF10", "APPLIED", ""),
            ]
            assert [(x.discount_minor, x.offer_id) for x in second.lines] == [
                (0, None),
                (500, "o-kef"),
            ]
            assert second.payable_minor == 22480
        finally:
            a.stop()
            b.stop()
    finally:
        hub.stop()
