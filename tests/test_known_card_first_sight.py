"""A known card's first-sight quote (issue 11/15) answers exactly as a memoised one.

A customer's personal offers are read on first sight: a usual customer's few all parsed at
once, a customer with many parsed as receipts need them (`cache._Personal`). Whichever
way, and whether the customer was seen before or not, a quote is the same, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from tillpoint.agent import cache
from tillpoint.agent.models import Customer, Offer, Program
from tillpoint.agent.pricing import OfferIndex, PricingContext
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent, _with_cap

from bench.generate import HEAVY_EVERY, HEAVY_FIRST, Scale, card, write_full
from bench.run import mixed_receipt

SCALE = Scale.named("tiny")


def _agent(tmp_path: Path, name: str) -> Agent:
    agent = Agent(tmp_path / name, "till-known")
    with write_full(tmp_path / f"{name}.jsonl", SCALE).open("rb") as lines:
        agent.load_snapshot_lines(lines)
    return agent


def _receipts() -> list[dict[str, object]]:
    rng = random.Random(11)
    out = [mixed_receipt(f"k-{i}", rng, SCALE, 50, known=True) for i in range(40)]
    # the heavy customers (50 personal offers: parsed one by one as a receipt needs them)
    for n in range(HEAVY_FIRST, SCALE.customers, HEAVY_EVERY):
        body = mixed_receipt(f"h-{n}", rng, SCALE, 50, known=True)
        body["card"] = card(n)
        out.append(body)
    return out


def test_a_first_sight_quote_is_the_memoised_one(tmp_path: Path) -> None:
    fresh, seen = _agent(tmp_path, "fresh"), _agent(tmp_path, "seen")
    try:
        bodies = _receipts()
        for body in bodies:  # `seen` knows every customer's offers before it quotes
            seen.quote(receipt_from_json(body))
        for body in bodies:
            first = fresh.quote(receipt_from_json(body)).to_json()
            again = seen.quote(receipt_from_json(body)).to_json()
            assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
            assert first["card"]["status"] == "FOUND"
    finally:
        fresh.close()
        seen.close()


def test_parsed_all_at_once_or_one_by_one_the_offers_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(tmp_path, "a")
    try:
        with agent._read() as (view, _):
            rows = view.conn.execute(
                "SELECT customer_id, doc FROM offers WHERE customer_id IS NOT NULL"
            ).fetchall()
    finally:
        agent.close()
    by_customer: dict[str, list[str]] = {}
    for customer_id, doc in rows:
        by_customer.setdefault(customer_id, []).append(doc)
    assert any(len(docs) > cache.PARSE_ALL_UP_TO for docs in by_customer.values())
    skus = {sku for docs in by_customer.values() for d in docs for sku in json.loads(d)["skus"]}
    for docs in by_customer.values():
        eager = cache._Personal(docs)
        monkeypatch.setattr(cache, "PARSE_ALL_UP_TO", -1)
        lazy = cache._Personal(docs)
        monkeypatch.undo()
        if len(docs) <= cache.PARSE_ALL_UP_TO:  # parsed at once, as one by one
            assert eager.offers == [Offer.model_validate_json(d) for d in docs]
        for some in (set(), set(list(skus)[:50]), skus):
            assert eager.for_receipt(some, {"c1", "c12"}) == lazy.for_receipt(some, {"c1", "c12"})
        assert eager.all() == lazy.all()
        for aim, doc in zip(eager.targets, docs, strict=True):
            assert cache._targets(doc) in (aim, None)


def test_with_cap_keeps_every_other_field_of_the_context() -> None:
    ctx = PricingContext(
        program=Program(),
        products={},
        categories_of=lambda sku: frozenset(),
        customer=Customer(id="c1"),
        offers=OfferIndex([]),
        available_points=70,
        redeem_cap=5,
        coupon_offers=frozenset({"o1"}),
    )
    assert _with_cap(ctx, 9, "HUB_GRANT") == dataclasses.replace(
        ctx, redeem_cap=9, redeem_cap_source="HUB_GRANT"
    )
    assert {f.name for f in dataclasses.fields(PricingContext)} == {
        "program",
        "products",
        "categories_of",
        "customer",
        "offers",
        "available_points",
        "redeem_cap",
        "redeem_cap_source",
        "coupon_offers",
    }, "a new field: pass it on in `_with_cap` too"
