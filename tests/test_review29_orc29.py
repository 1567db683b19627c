"""Review 29 (orc29): what a receipt tells beside its figures, against a reference model.

tests/oracle29.py models, from docs/CONTRACT.md §5, §7, §8, §13–§17 and their decisions
alone, the §17 trace of a priced receipt (every offer of each line with its outcome, the
basket deals, the receipt offers with their thresholds, the redemption's caps and which
one bound); here seeded random snapshots and baskets (review 28's generators) are priced
by the product through a public door and every field of the trace is compared with the
model. The first tests pin what the model found the product telling wrong.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot
from .oracle29 import Explainer, normal_trace
from .test_review28_orc28 import gen_receipt, gen_snapshot

MILK, BREAD, CHEESE = "4601234000017", "4601234000024", "4601234000055"
ANNA, BORIS = "2770000000017", "2770000000024"  # Анна is in her birthday window on 23.11


def _offers(trace: dict[str, Any], line: int) -> dict[str, dict[str, Any]]:
    return {o["offerId"]: o for o in trace["lines"][line]["offers"]}


# ---------------------------------------------------------------- what the model found


def test_a_control_group_multiplier_on_a_line_that_earns_nothing_is_zero_discount(
    cli: CLI,
) -> None:
    """docs/CONTRACT.md §13/§17: a multiplier on a line that earns on nothing (free after
    its discounts) gives nothing, and the trace says CONTROL_GROUP only for a control-group
    offer that would give its line something: a ×3 of the customer's control campaign on a
    free line is ZERO_DISCOUNT (it said CONTROL_GROUP) and is not held out."""
    snap = snapshot()
    snap["customers"][1]["controlGroups"] = ["k1"]
    snap["offers"] = [
        {"id": "x3", "campaignId": "k1", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "3"},
        {"id": "free", "kind": "FIXED_PRICE", "skus": [MILK], "value": "0"},
    ]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=BORIS, explain=True)
    got = cli("quote", rec, "--explain", "--json").json()
    assert got["lines"][0]["discountMinor"] == 17980 and got["heldOut"] == []
    assert _offers(got["trace"], 0)["x3"]["outcome"] == "ZERO_DISCOUNT"


def test_a_multiplier_below_the_birthdays_on_a_free_line_is_zero_discount(cli: CLI) -> None:
    """docs/CONTRACT.md §13/§17: on a line that earns on nothing the birthday's ×5 gives
    nothing either, so the line's multiplier offers are ZERO_DISCOUNT, not BEATEN by
    `birthdayMultiplier` (which it said: the birthday beat nothing)."""
    snap = snapshot()
    snap["offers"] = [{"id": "x2", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "2"}]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=ANNA, lines=[{"sku": MILK, "qty": "2", "priceMinor": 0}], explain=True)
    got = cli("quote", rec, "--explain", "--json").json()
    row = _offers(got["trace"], 0)["x2"]
    assert row["outcome"] == "ZERO_DISCOUNT" and not row.get("beatenBy")


def test_an_offer_a_deal_took_the_line_from_tells_what_it_would_give(cli: CLI) -> None:
    """docs/CONTRACT.md §17 / DECISIONS "Explain": each offer of a line comes with
    `discountMinor`, what it gives or would give the line; a money offer on a line a
    MULTIBUY took is TAKEN_BY_DEAL by the deal with the deal's discount there, and its own
    would-be discount (it said 0, as if the offer gave that line nothing)."""
    snap = snapshot()
    snap["offers"] = [
        {"id": "d21", "kind": "MULTIBUY", "skus": [MILK], "buyQty": "2", "freeQty": "1"},
        {"id": "p10", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"},
    ]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=BORIS, lines=[{"sku": MILK, "qty": "3", "priceMinor": 1000}])
    got = cli("quote", {**rec, "explain": True}, "--json").json()
    assert got["lines"][0]["offerId"] == "d21" and got["lines"][0]["discountMinor"] == 1000
    row = _offers(got["trace"], 0)["p10"]
    assert row["outcome"] == "TAKEN_BY_DEAL"
    assert (row["beatenBy"], row["beatenByDiscountMinor"]) == ("d21", 1000)
    assert row["discountMinor"] == 300
    assert got["trace"]["deals"][0]["lineOffersMinor"] == 300


# ---------------------------------------------------------------- the differential run


def quote(agent: Agent, rec: dict[str, Any]) -> dict[str, Any]:
    return agent.quote(receipt_from_json(rec)).to_json()


def trace_differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Each part of the trace the product told otherwise than the model."""
    g, w = normal_trace(got), normal_trace(want)
    out = []
    for gl, wl in zip(g["lines"], w["lines"], strict=True):
        if gl != wl:
            out.append(f"line {wl['index']}: product {gl['offers']} model {wl['offers']}")
    for part in ("deals", "receiptOffers", "redemption"):
        if g[part] != w[part]:
            out.append(f"{part}: product {g[part]} model {w[part]}")
    return out


def run_traces(tmp_path: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    agent = Agent(tmp_path / f"data-{seed}", "till-1")
    problems: list[str] = []
    try:
        for n in range(count):
            snap = gen_snapshot(rng, n + 2)
            rec = {**gen_receipt(rng, snap, n), "explain": True}
            agent.load_snapshot(snap)
            got = quote(agent, rec)
            plain = quote(agent, {**rec, "explain": False})
            # §17: the trace never changes a figure; with and without it, the same otherwise
            told = copy.deepcopy(got)
            told.pop("trace")
            if told != plain:
                problems.append(f"case {n}: explain changed the result")
            diff = trace_differences(got["trace"], Explainer(snap).explain(rec).trace)
            if diff:
                problems.append(
                    json.dumps({"snapshot": snap, "receipt": rec}, ensure_ascii=False)
                    + "\n  "
                    + "\n  ".join(diff)
                )
    finally:
        agent.close()
    return problems


def test_the_trace_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §17: 200 seeded snapshots and receipts, every field of the trace."""
    problems = run_traces(tmp_path, 29, 200)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


@pytest.mark.slow
def test_the_trace_matches_the_reference_model_longer(tmp_path: Path) -> None:
    """As above, on two more seeds (about 12 s)."""
    problems: list[str] = []
    for seed in (5, 6):
        problems += run_traces(tmp_path, seed, 200)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])
