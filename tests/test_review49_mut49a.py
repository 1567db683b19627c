"""Review 49 (mut49a): the rules of the explain trace, the offer index, control groups
and the results' documents that a mutation run found untested.

Each test pins a rule of the contract (docs/CONTRACT.md §5, §8, §17) with figures worked
out by hand from the rule's words, not from running the code; its docstring names the
mutant of `agent/pricing.py` or `agent/results.py` that survived the tests chosen for
the run (docs/DECISIONS.md, "Review 49 (mut49a)", lists every survivor).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import json_document
from tillpoint.agent.results import (
    Card,
    CheckoutResult,
    RefundResult,
    ResultLine,
    json_text,
    receipt_from_json,
)
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

MILK = "4601234000017"  # dairy (food)
BREAD = "4601234000024"  # bakery (food)
ANNA = "2770000000017"  # c-a, gold (7.5 %), 1,200 points, birthday 25 November


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
    explain: bool = False,
    **snap: Any,
) -> CheckoutResult:
    till.load_snapshot(snapshot(offers=list(offers), **snap))
    doc = receipt("q-1", card=card, at=at, lines=lines)
    if explain:
        doc["explain"] = True
    return till.quote(receipt_from_json(doc))


BREAD_100 = [{"sku": BREAD, "qty": "1", "priceMinor": 10000}]


# ---------------------------------------------------------------- §5 step 3: the bounds


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "at", "applies"),
    [
        # an end in whole seconds holds through that second
        (None, "2026-12-10T23:59:59+03:00", "2026-12-10T23:59:59.999999+03:00", True),
        (None, "2026-12-10T23:59:59+03:00", "2026-12-11T00:00:00+03:00", False),
        # an end with a fraction of a second is that very moment
        (None, "2026-12-10T10:15:00.250+03:00", "2026-12-10T10:15:00.250+03:00", True),
        (None, "2026-12-10T10:15:00.250+03:00", "2026-12-10T10:15:00.250001+03:00", False),
        # a start is the moment it says
        ("2026-12-10T10:15:00+03:00", None, "2026-12-10T10:15:00+03:00", True),
        ("2026-12-10T10:15:00+03:00", None, "2026-12-10T10:14:59.999999+03:00", False),
    ],
)
def test_a_receipt_offers_bounds_are_inclusive_to_the_microsecond(
    till: Agent, valid_from: str | None, valid_to: str | None, at: str, applies: bool
) -> None:
    """§5's decision "receipt offers use the same filters as line offers (valid at `at`
    ...)", with step 2's "inclusive bounds" read by §2's decisions. Review 48 pinned the
    line offers' bounds; the receipt offers' are a filter of their own
    (`pricing._Usable.__call__`), whose `validFrom <= at` → `<` and `at <= validTo's
    last instant` → `<` both survived.

    One bread at 100.00, Анна (gold, 7.5 %), 10 December (not her birthday window):
    5 % off the receipt is 5.00; 50 extra points on top of floor(100.00 × 7.5 % / 1.00)
    = 7 (7.5) earned. Outside the bounds: no discount, 7 points."""
    bounds: dict[str, str] = {}
    if valid_from is not None:
        bounds["validFrom"] = valid_from
    if valid_to is not None:
        bounds["validTo"] = valid_to
    offers = [
        {"id": "rp-5", "kind": "RECEIPT_PERCENT_OFF", "value": "5", "minTotalMinor": 0, **bounds},
        {"id": "xp-50", "kind": "EXTRA_POINTS", "value": "50", "minTotalMinor": 0, **bounds},
    ]
    result = _quote(till, BREAD_100, offers, at=at)
    assert result.discount_minor == (500 if applies else 0)
    assert result.lines[0].offer_id == ("rp-5" if applies else None)
    assert result.payable_minor == (9500 if applies else 10000)
    # 95.00 × 7.5 % = 7.125 → 7 when it applies; 100.00 × 7.5 % = 7.5 → 7 when not
    assert result.earned_points == (57 if applies else 7)


# ---------------------------------------------------------------- §17: the trace's rows


def test_an_extra_points_offer_of_0_points_says_0_whatever_its_outcome(till: Agent) -> None:
    """§17's decisions: a receipt offer always carries its terms, an `EXTRA_POINTS` its
    `points`, "what it adds once the basket reaches its threshold"; an offer that adds 0
    (a value of "0" loads: whole points, 0 or more) says 0, met (`ZERO_DISCOUNT`: it gives
    nothing) or not (`BELOW_MIN_TOTAL`). (Mutant: `_receipt_terms`' `max(0, points)` →
    `max(1, points)` survived: no test traced an offer of 0 points.)

    One bread at 100.00 for Анна on 10 December: the basket is 10000; xp-0a's threshold
    0 is met (missing 0), xp-0b's 200.00 is 100.00 short. She earns floor(7.5) = 7 and
    nothing more."""
    offers = [
        {"id": "xp-0a", "kind": "EXTRA_POINTS", "value": "0", "minTotalMinor": 0},
        {"id": "xp-0b", "kind": "EXTRA_POINTS", "value": "0", "minTotalMinor": 20000},
    ]
    result = _quote(till, BREAD_100, offers, at="2026-12-10T12:00:00+03:00", explain=True)
    assert result.earned_points == 7
    assert result.trace is not None
    assert result.trace["receiptOffers"] == [
        {
            "offerId": "xp-0a",
            "kind": "EXTRA_POINTS",
            "outcome": "ZERO_DISCOUNT",
            "minTotalMinor": 0,
            "basketMinor": 10000,
            "missingMinor": 0,
            "points": 0,
        },
        {
            "offerId": "xp-0b",
            "kind": "EXTRA_POINTS",
            "outcome": "BELOW_MIN_TOTAL",
            "minTotalMinor": 20000,
            "basketMinor": 10000,
            "missingMinor": 10000,
            "points": 0,
        },
    ]


CHEESE = "4601234000055"  # dairy (food)


def test_a_deal_beaten_on_a_line_with_no_offer_names_the_smaller_id_of_a_tie(
    till: Agent,
) -> None:
    """§17's decision on a `MULTIBUY` `BEATEN` by line offers: on a line with no line offer
    of its own, the line offer "that gave the group the most (ties: the smaller id) and what
    it gave there". (Mutant: `_group_winner`'s key `(-given, id)` → `(-given, given)`, which
    leaves a tie to the order of the lines, survived: no test had two line offers giving
    the group the same.)

    Milk 100.00, bread 100.00, cheese 50.00, one each, for Анна on 10 December. The deal
    (buy 2, get 1; all three SKUs): the three units make one complete group, the cheapest
    (the cheese) free: 50.00, over all three lines. The line offers: o-b takes 60.00 off
    the milk, o-a 60.00 off the bread, 120.00 in all: the deal (50.00) is beaten. Milk and
    bread are beaten by their own offers; the cheese, with none, by o-a (60.00, a tie with
    o-b, the smaller id), though o-b's line comes first. The cheese then pays 50.00."""
    offers = [
        {"id": "o-b", "kind": "AMOUNT_OFF", "skus": [MILK], "value": "6000"},
        {"id": "o-a", "kind": "AMOUNT_OFF", "skus": [BREAD], "value": "6000"},
        {"id": "m-3for2", "kind": "MULTIBUY", "skus": [MILK, BREAD, CHEESE],
         "buyQty": "2", "freeQty": "1"},
    ]  # fmt: skip
    lines = [
        {"sku": MILK, "qty": "1", "priceMinor": 10000},
        {"sku": BREAD, "qty": "1", "priceMinor": 10000},
        {"sku": CHEESE, "qty": "1", "priceMinor": 5000},
    ]
    result = _quote(till, lines, offers, at="2026-12-10T12:00:00+03:00", explain=True)
    assert [(line.offer_id, line.discount_minor) for line in result.lines] == [
        ("o-b", 6000),
        ("o-a", 6000),
        (None, 0),
    ]
    assert result.trace is not None
    deal_rows = [
        [row for row in line["offers"] if row["offerId"] == "m-3for2"]
        for line in result.trace["lines"]
    ]
    beaten = {"offerId": "m-3for2", "kind": "MULTIBUY", "outcome": "BEATEN"}
    assert deal_rows == [
        [{**beaten, "discountMinor": 0, "beatenBy": "o-b", "beatenByDiscountMinor": 6000}],
        [{**beaten, "discountMinor": 0, "beatenBy": "o-a", "beatenByDiscountMinor": 6000}],
        [{**beaten, "discountMinor": 5000, "beatenBy": "o-a", "beatenByDiscountMinor": 6000}],
    ]
    assert result.trace["deals"] == [
        {
            "offerId": "m-3for2",
            "outcome": "BEATEN",
            "discountMinor": 5000,
            "lineOffersMinor": 12000,
            "lines": [0, 1, 2],
        }
    ]


TOBACCO = "4601234000031"  # excluded from loyalty
UNKNOWN_CARD = "2770000000994"  # a valid number the snapshot does not know


def test_an_unknown_cards_excluded_line_adds_nothing_to_the_points_floor(till: Agent) -> None:
    """§5 step 1: an excluded line gets "no points"; step 5: earned = floor(sum of the
    exact line points), an unknown card at the first tier's rate. (Mutant: an `UNKNOWN`
    card's pricing gave an excluded line a numerator of 1 instead of 0, 1/10,000 of a
    point, survived: no test had the eligible lines' exact points just under a whole.)

    Milk at 33.33 and cigarettes at 100.00 for an unknown card, base tier 3 %: the milk
    earns 33.33 × 3 % / 1.00 = 0.9999 points, the cigarettes none: floor(0.9999) = 0."""
    lines = [
        {"sku": MILK, "qty": "1", "priceMinor": 3333},
        {"sku": TOBACCO, "qty": "1", "priceMinor": 10000},
    ]
    result = _quote(till, lines, card=UNKNOWN_CARD, at="2026-12-10T12:00:00+03:00")
    assert result.card.status == "UNKNOWN"
    assert result.earned_points == 0
    assert [line.earned_points for line in result.lines] == [0, 0]
    assert result.payable_minor == 13333


# ---------------------------------------------------------------- results.py


def test_the_typed_client_reads_results_without_importing_pydantic() -> None:
    """`agent/results.py` says it: "the gRPC client maps replies without importing
    pydantic" (the models are imported for type checking only, and by `receipt_from_json`
    at its first call). A POS process that uses `tillpoint.client` does not pay for the
    models' import. (Mutant: `if TYPE_CHECKING:` → `if not TYPE_CHECKING:` survived every
    test, `tests/test_cli_forward.py` too: the forwarding CLI never imports results.)"""
    probe = (
        "import sys\n"
        "import tillpoint.client\n"
        "from tillpoint.agent.results import CheckoutResult\n"
        "done = CheckoutResult.from_json({'receiptId': 'r-1', 'lines': [{'sku': 'a'}]})\n"
        "assert done.lines[0].amount_minor == 0, done\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_a_control_group_multiplier_of_1_gives_nothing_and_one_above_1_is_held_out(
    till: Agent,
) -> None:
    """§17's decisions: "A control-group offer is `CONTROL_GROUP` when it would give the
    line (or the receipt) something and `ZERO_DISCOUNT` when it would give nothing"; §5
    step 5: the multiplier is the largest of 1 and the line's offers, so a ×1 gives
    nothing; step 7 and its decision: `heldOut` lists what would have applied. (Mutant:
    the trace's `multiplier > 1` → `>= 1` for a control-group multiplier survived: no test
    put a ×1 in a control group.)

    Анна is in campaign camp-1's control group. Bread 100.00 with bm-1 (×1), milk 100.00
    with bm-2 (×2), both of camp-1: neither applies; each line earns 100.00 × 7.5 % = 7.5,
    15 in all. Outside the control group bm-2 would have doubled the milk's: held out;
    bm-1 would have given nothing: not held out."""
    customers = snapshot()["customers"]
    customers[0]["controlGroups"] = ["camp-1"]
    offers = [
        {"id": "bm-1", "kind": "BONUS_MULTIPLIER", "skus": [BREAD], "value": "1",
         "campaignId": "camp-1"},
        {"id": "bm-2", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "2",
         "campaignId": "camp-1"},
    ]  # fmt: skip
    lines = [
        {"sku": BREAD, "qty": "1", "priceMinor": 10000},
        {"sku": MILK, "qty": "1", "priceMinor": 10000},
    ]
    result = _quote(
        till, lines, offers, at="2026-12-10T12:00:00+03:00", explain=True, customers=customers
    )
    assert result.earned_points == 15
    assert [line.earned_points for line in result.lines] == [8, 7]  # 7.5 each: ties to the first
    assert result.held_out == ("bm-2",)
    assert result.trace is not None
    assert [line["offers"] for line in result.trace["lines"]] == [
        [{"offerId": "bm-1", "kind": "BONUS_MULTIPLIER", "outcome": "ZERO_DISCOUNT"}],
        [{"offerId": "bm-2", "kind": "BONUS_MULTIPLIER", "outcome": "CONTROL_GROUP"}],
    ]


def test_a_stored_result_read_back_takes_0_for_a_figure_it_lacks() -> None:
    """`CheckoutResult.from_json` and `RefundResult.from_json` read a stored result of any
    release: "a field it lacks is its default", for a figure the contract's messages'
    default, 0 (proto3), never another number. (Mutants: the line's `amountMinor` and
    `discountMinor` read as 1 when absent survived; the other defaults were not run.)"""
    old = CheckoutResult.from_json({"receiptId": "r-old", "lines": [{"sku": "a"}]})
    assert old.lines == (ResultLine("a", 0, 0, None, 0, 0),)
    figures = (old.total_minor, old.discount_minor, old.redeemed_points, old.payable_minor)
    assert figures == (0, 0, 0, 0) and old.earned_points == 0
    assert old.card == Card("UNKNOWN") and old.mode == "OFFLINE" and old.balance is None
    assert (old.held_out, old.printed_offers, old.coupons, old.display) == ((), (), None, None)
    assert (old.state, old.seq, old.trace) == (None, None, None)
    refund = RefundResult.from_json({"refundId": "f-old", "receiptId": "r-old"})
    assert (refund.returned_points, refund.taken_back_points, refund.seq) == (0, 0, 0)
    assert refund.negative_balance is False and refund.device_id == "" and refund.balance is None


def test_a_stored_result_is_answered_as_the_bytes_it_was_stored_as() -> None:
    """§5: "the same receipt sent again returns the stored result"; `agent/results.py`:
    "a replay repeats the stored bytes whatever release stored them". A result stored by
    an older release (here one with no `heldOut`, `printedOffers`, `coupons` or `display`)
    is answered over HTTP (`json_text`) as the CLI prints that stored document, not as
    this release would write the result again. (Mutant: `json_text`'s `result.stored is
    not None` → `is None`, which writes a stored result's lines from its rows and the
    rest afresh, adding `"heldOut": []` and `"printedOffers": []`, survived.)"""
    stored = {
        "receiptId": "r-old",
        "card": {"status": "UNKNOWN"},
        "mode": "OFFLINE",
        "lines": [
            {
                "sku": "a",
                "amountMinor": 10000,
                "discountMinor": 0,
                "offerId": None,
                "redeemedMinor": 0,
                "earnedPoints": 3,
            }
        ],
        "totalMinor": 10000,
        "discountMinor": 0,
        "redeemedPoints": 0,
        "payableMinor": 10000,
        "earnedPoints": 3,
        "balance": None,
        "state": "CONFIRMED",
        "deviceId": "till-1",
        "seq": 1,
    }
    again = CheckoutResult.from_json(stored)
    assert json_text(again) == json_document(stored)
    assert json.loads(json_text(again)) == stored  # no key added, none left out
