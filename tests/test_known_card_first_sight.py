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
from tillpoint.agent import cache, ledger
from tillpoint.agent.cache import CacheView
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


def test_the_quote_reads_in_one_statement_are_the_reads_one_by_one(tmp_path: Path) -> None:
    """`ledger.quote_reads`: open holds of the customer, the card's offline redemption on
    the store-day (commits and holds) and whether the customer has point rows, as
    `held_points`, `offline_redeemed` and `balance`'s own look-up read them."""
    agent = _agent(tmp_path, "l")
    try:
        rng = random.Random(3)
        sold = {**mixed_receipt("sold", rng, SCALE, 5, known=True), "redeemPoints": 10}
        held = {**mixed_receipt("held", rng, SCALE, 5, known=True), "redeemPoints": 5}
        held["card"] = sold["card"]
        done = agent.checkout(receipt_from_json(sold)).to_json()
        agent.hold(receipt_from_json(held))
        assert done["redeemedPoints"] > 0
        customer_id = done["card"]["customerId"]
        other = agent.quote(receipt_from_json(mixed_receipt("o", rng, SCALE, 5, known=True)))
        conn, now = agent._ledger, agent.clock()
        with agent._read() as (view, _):
            zone = view.program().zone
        day = receipt_from_json(sold).at.astimezone(zone).date()
        for who, card_number in ((customer_id, sold["card"]), (other.card.customer_id, "x")):
            assert who is not None
            for local_day in (day.isoformat(), "2000-01-01", None):
                for but in ("held", "sold", "nothing"):
                    got = ledger.quote_reads(conn, who, card_number, local_day, now, but)
                    assert got.held == ledger.held_points(conn, who, now, but)
                    assert got.moved == bool(ledger._point_devices(conn, who))
                    assert got.offline == (
                        ledger.offline_redeemed(conn, card_number, local_day, now, but)
                        if local_day
                        else 0
                    )
        moved, held_now, offline = ledger.quote_reads(
            conn, customer_id, sold["card"], day.isoformat(), now, "x"
        )
        assert moved and held_now > 0 and offline > held_now  # every part read something
    finally:
        agent.close()


def test_the_customer_read_with_the_card_is_the_customer_read_alone(tmp_path: Path) -> None:
    agent = _agent(tmp_path, "i")
    try:
        with agent._read() as (view, _):
            rows = view.conn.execute("SELECT number, customer_id FROM cards LIMIT 20").fetchall()
            for (number, customer_id), (_, another) in zip(rows, rows[1:] + rows[:1], strict=True):
                record = view.card(number)
                assert record is not None and record.customer_id == customer_id
                alone = Customer.model_validate_json(
                    view.conn.execute(
                        "SELECT doc FROM customers WHERE id = ?", (another,)
                    ).fetchone()[0]
                )
                assert view.customer(another) == alone  # not the card's: read by its id
                assert view.customer(customer_id) == CacheView(view.conn).customer(customer_id)
            assert view.card("0000000000000") is None
            assert view.customer("no-such-customer") is None
    finally:
        agent.close()
