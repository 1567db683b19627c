"""Review 50 (mut50a): the rules of the pricing arithmetic that a mutation run found
untested, and a waiting coupon's offer the hub turned into a mass offer.

Each test pins a rule of the contract (docs/CONTRACT.md §5, §7, §15) with figures worked
out by hand from the rule's words, not from running the code; its docstring names the
mutant of `agent/pricing.py` that survived the tests chosen for the run
(docs/DECISIONS.md, "Review 50 (mut50a)", lists every survivor).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

CHEESE = "4601234000055"  # dairy (food)


def _next_visit(offer_id: str, rank: int) -> dict[str, Any]:
    """A personal, printable offer of c-a (Анна, card 2770000000017) for her next visit."""
    return {
        "id": offer_id,
        "campaignId": f"camp-{offer_id}",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": [CHEESE],
        "value": "20",
        "validFrom": "2026-11-20T00:00:00+03:00",
        "validTo": "2026-12-31T23:59:59+03:00",
        "rank": rank,
        "printable": True,
        "printText": f"Предложение {offer_id}",
    }


# ------------------------------------------------- §7: a waiting coupon's offer made mass


def _printed_once(agent: Agent, data: Path, now: datetime) -> list[str]:
    """r1's waiting coupon job printed once by `tillpoint run`'s worker (asking the agent
    what the snapshot still offers) on a virtual printer on 127.0.0.1: its codes; the job
    is DONE."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import PrintWorker, list_jobs
    from tillpoint.printer.virtual import VirtualPrinter

    with VirtualPrinter() as printer:
        config = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
        worker = PrintWorker(
            data / "ledger.db", config, clock=lambda: now, offers_now=agent.offers_on_paper
        )
        try:
            assert worker.run_once() == 0
            (paper,) = printer.wait_for(1)
        finally:
            worker.close()
    (job,) = list_jobs(data / "ledger.db", "r1", include_done=True)
    assert job["state"] == "DONE", job
    return list(paper.codes)


def test_a_waiting_coupons_offer_the_hub_made_a_mass_offer_is_left_off(tmp_path: Path) -> None:
    """CONTRACT §7: the coupon carries "personal printable offers of this customer" (a
    mass offer is never printed, review 30), and a job that waited for the printer prints
    what the snapshot still offers when the printer takes it. A delta that turned o-a
    into a mass offer (its `customerId` dropped) while the coupon waited: o-a is no
    longer an offer of Анна's own, so it is left off and o-b prints alone. It printed
    (`may_go_on_paper`'s `return True` for an offer with no customer, review 49's one
    survivor left), also for a customer in the control group of the offer's campaign."""
    now = datetime.fromisoformat("2026-11-23T10:20:00+03:00")
    data = tmp_path / "data"
    agent = Agent(data, "till-1", clock=lambda: now)
    offers = [_next_visit("o-a", 1), _next_visit("o-b", 2)]
    try:
        agent.load_snapshot(snapshot(offers=offers))
        sale = agent.checkout(receipt_from_json(receipt("r1"))).to_json()
        assert sale["printedOffers"] == ["o-a", "o-b"]
        mass = {k: v for k, v in offers[0].items() if k != "customerId"}
        agent.load_snapshot({"version": 2, "baseVersion": 1, "offers": [mass]})
        assert list(agent.offers_on_paper(["o-a", "o-b"]) or {}) == ["o-b"]
        assert _printed_once(agent, data, now) == ["TP1-o-b"]
        # the sale stays as it was made: both offers picked, their cooldown started
        assert agent.checkout(receipt_from_json(receipt("r1"))).to_json()["printedOffers"] == [
            "o-a",
            "o-b",
        ]
    finally:
        agent.close()


def test_a_waiting_coupons_offer_the_hub_gave_another_customer_is_left_off(
    tmp_path: Path,
) -> None:
    """CONTRACT §7, the same rule as above: a delta gave o-a to Борис (c-b) while Анна's
    coupon waited for the printer. o-a is no longer an offer of the sale's customer, so
    it is left off her coupon and o-b prints alone. It printed (mut50a's finding, fixed by
    the lead: the worker asked for the offer's customer now, not the job's; it now passes
    the job's receipt, whose customer the ledger keeps). Asked without a receipt (as
    before), the offers' own customers decide."""
    now = datetime.fromisoformat("2026-11-23T10:20:00+03:00")
    data = tmp_path / "data"
    agent = Agent(data, "till-1", clock=lambda: now)
    offers = [_next_visit("o-a", 1), _next_visit("o-b", 2)]
    try:
        agent.load_snapshot(snapshot(offers=offers))
        sale = agent.checkout(receipt_from_json(receipt("r1"))).to_json()
        assert sale["printedOffers"] == ["o-a", "o-b"]
        given = {**offers[0], "customerId": "c-b"}
        agent.load_snapshot({"version": 2, "baseVersion": 1, "offers": [given]})
        assert list(agent.offers_on_paper(["o-a", "o-b"], "r1") or {}) == ["o-b"]
        assert list(agent.offers_on_paper(["o-a", "o-b"]) or {}) == ["o-a", "o-b"]
        assert _printed_once(agent, data, now) == ["TP1-o-b"]
    finally:
        agent.close()


# ------------------------------------------------- §5 step 5: accrual's common denominator

MILK = "4601234000017"  # dairy (food)
BREAD = "4601234000024"  # bakery (food)
BORIS = "2770000000024"  # c-b, base (3 %), no birthday near 23 November


def _quote(tmp_path: Path, offers: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    # a till of its own each time: a snapshot of the version a till has is not loaded again
    agent = Agent(tmp_path / f"till-{len(list(tmp_path.iterdir()))}", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=offers))
        return agent.quote(receipt_from_json(receipt("q-1", **body))).to_json()
    finally:
        agent.close()


def test_fractional_multipliers_beside_a_line_without_one_keep_every_lines_points_exact(
    tmp_path: Path,
) -> None:
    """CONTRACT §5 step 5: each line's exact points are base × rate × multiplier /
    (100 × pointValueMinor); earned = floor of their sum, a line's share its floor plus one
    for the largest fractional parts. Борис (3 %), 100.00 each: milk ×1.5 is
    10000 × 3 × 1.5 / 10000 = 4.5, cheese ×1.25 is 3.75, bread ×1 is 3; floor(11.25) = 11,
    the floors 4 + 3 + 3 = 10 and the one left to the largest fraction, the cheese's .75:
    4, 4, 3. Mutants: the numerators over the common denominator (the lcm of the
    multipliers' denominators, 4 here) `× lcm` → `// lcm` on the ×1 line, and
    `× (lcm // denominator)` → `// (…)` on a multiplier's line. No test had a multiplier
    that is not a whole number beside a line with another (or none)."""
    offers = [
        {"id": "m-1", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "1.5"},
        {"id": "m-2", "kind": "BONUS_MULTIPLIER", "skus": [CHEESE], "value": "1.25"},
    ]
    lines = [
        {"sku": MILK, "qty": "1", "priceMinor": 10000},
        {"sku": CHEESE, "qty": "1", "priceMinor": 10000},
        {"sku": BREAD, "qty": "1", "priceMinor": 10000},
    ]
    result = _quote(tmp_path, offers, card=BORIS, lines=lines)
    assert [line["earnedPoints"] for line in result["lines"]] == [4, 4, 3]
    assert result["earnedPoints"] == 11


def test_a_multiplier_on_a_line_paid_one_kopeck_in_money_applies(tmp_path: Path) -> None:
    """CONTRACT §13/§17's decisions: a multiplier "on a line that earns on nothing" (amount
    − discount − redeemedMinor is 0) gave nothing and is `ZERO_DISCOUNT`; a line paid 1
    minor unit earns on something (1 × 3 × 2 / 10000 exact points), so its ×2 is the line's,
    `APPLIED`. Mutant: the "earns on nothing" test `<= 0` → `<= 1`."""
    offers = [{"id": "m-1", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "2"}]
    lines = [{"sku": MILK, "qty": "1", "priceMinor": 1}]
    result = _quote(tmp_path, offers, card=BORIS, lines=lines, explain=True)
    (line,) = result["trace"]["lines"]
    assert [(o["offerId"], o["outcome"]) for o in line["offers"]] == [("m-1", "APPLIED")]


def test_a_known_cards_excluded_line_adds_nothing_to_the_points_floor(tmp_path: Path) -> None:
    """CONTRACT §5 step 1: an excluded line gets no points; step 5: earned is the floor of
    the eligible lines' exact points. Борис (3 %): milk at 33.33 is 3333 × 3 / 10000 =
    0.9999 points, cigarettes at 100.00 (excluded) 0: 0 points, not 1; milk at 100.00 is
    exactly 3 points beside them, not 2. Mutants: a known card's excluded line's numerator
    `0` → `1` and → `-1` (review 49 pinned the UNKNOWN card's own one-pass pricing; a known
    card is priced by the steps)."""
    lines = [
        {"sku": MILK, "qty": "1", "priceMinor": 3333},
        {"sku": "4601234000031", "qty": "1", "priceMinor": 10000},
    ]
    result = _quote(tmp_path, [], card=BORIS, lines=lines)
    assert [line["earnedPoints"] for line in result["lines"]] == [0, 0]
    assert result["earnedPoints"] == 0
    lines[0]["priceMinor"] = 10000
    result = _quote(tmp_path, [], card=BORIS, lines=lines)
    assert [line["earnedPoints"] for line in result["lines"]] == [3, 0]
    assert result["earnedPoints"] == 3


# ------------------------------------------------- §15: a deal against a 1-kopeck line offer


def test_a_line_offer_of_one_kopeck_counts_against_a_deal(tmp_path: Path) -> None:
    """CONTRACT §15: a `MULTIBUY` takes its lines only when its total discount is strictly
    larger than the sum of the best line-offer discounts (step 2's rules: an offer whose
    discount comes to 0 is not applied; 1 is). Two milks at 0.01: "1 + 1" frees one,
    floor(2 × 1 / 2) = 1; 50 % off the line is floor(2 × 50 / 100) = 1. 1 is not larger
    than 1: the deal is beaten and the line gets p-1. Mutant: `_best_line_offer` counting
    only a discount `> 1`: the deal took the line."""
    offers = [
        {"id": "d-1", "kind": "MULTIBUY", "skus": [MILK], "buyQty": "1", "freeQty": "1"},
        {"id": "p-1", "kind": "PERCENT_OFF", "skus": [MILK], "value": "50"},
    ]
    lines = [{"sku": MILK, "qty": "2", "priceMinor": 1}]
    result = _quote(tmp_path, offers, card=BORIS, lines=lines)
    (line,) = result["lines"]
    assert (line["amountMinor"], line["discountMinor"], line["offerId"]) == (2, 1, "p-1")


# ------------------------------------------------- §17: the display's receipt discount in reach


def test_a_receipt_offer_of_0_percent_is_not_the_discount_in_reach(tmp_path: Path) -> None:
    """CONTRACT §17's decision: a quote shows how much more the basket needs for "the
    nearest receipt discount the customer would get". A 0 % receipt offer gives no
    discount: at 100.00, with 0 % from 500.00 and 5 % from 1,000.00, the display says
    "Ещё 900 ₽ до −5%", never "Ещё 400 ₽ до −0%"; a 1 % from 600.00 beside them is a
    discount, the nearest: "Ещё 500 ₽ до −1%". Mutants: the reach's `value > 0` → `>= 0`
    and → `> 1`."""
    offers = [
        {"id": "r-0", "kind": "RECEIPT_PERCENT_OFF", "value": "0", "minTotalMinor": 50000},
        {"id": "r-5", "kind": "RECEIPT_PERCENT_OFF", "value": "5", "minTotalMinor": 100000},
    ]
    lines = [{"sku": MILK, "qty": "1", "priceMinor": 10000}]
    result = _quote(tmp_path, offers, card=BORIS, lines=lines)
    assert result["display"] == ["Итого: 100,00", "Ещё 900 ₽ до −5%"]
    offers.append(
        {"id": "r-1", "kind": "RECEIPT_PERCENT_OFF", "value": "1", "minTotalMinor": 60000}
    )
    result = _quote(tmp_path, offers, card=BORIS, lines=lines)
    assert result["display"] == ["Итого: 100,00", "Ещё 500 ₽ до −1%"]


def test_a_receipt_discount_of_one_kopeck_applies(tmp_path: Path) -> None:
    """CONTRACT §5 step 3: the best receipt offer takes value % off every eligible line
    with no line offer (floor per line); like a line offer, one that comes to 0 is not
    applied, and 1 is: 1 % off a milk at 1.00 is floor(100 × 1 / 100) = 1. Mutant: the
    receipt offer's `total <= 0` → `<= 1` (it was `ZERO_DISCOUNT`, nothing off)."""
    offers = [{"id": "r-1", "kind": "RECEIPT_PERCENT_OFF", "value": "1", "minTotalMinor": 0}]
    lines = [{"sku": MILK, "qty": "1", "priceMinor": 100}]
    result = _quote(tmp_path, offers, card=BORIS, lines=lines)
    (line,) = result["lines"]
    assert (line["discountMinor"], line.get("offerId")) == (1, "r-1")
    assert result["payableMinor"] == 99
