"""The fast pricing path (issue 15) gives what the reference engine gives, figure for figure.

`tests/pricing_reference.py` is `agent/pricing.py` as it was before its fast path; on
random baskets, offers (mass and personal, deals, windows, coupons, validity) and
programs, `price` must return the same `Priced` (lines, points, held-out offers, caps,
trace) as the reference, with the offers as a list or as a per-snapshot mass index
shared by receipts and kept warm between them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tillpoint.agent.models import Customer, Offer, Product, Program, Receipt, ReceiptLine
from tillpoint.agent.pricing import OfferIndex, PricingContext, price

from . import pricing_reference as reference
from .test_deals_properties import TIMES, deal_offers
from .test_properties import CATEGORIES, SKUS, lines


@st.composite
def offer_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The deal strategy's offers, some for another customer, some needing a coupon,
    some valid only part of the time."""
    rows = draw(deal_offers())
    for row in rows:
        who = draw(st.integers(0, 3))
        if who == 0:
            row["customerId"] = "c-b"
        if draw(st.integers(0, 4)) == 0:
            row["couponRequired"] = True
        valid = draw(st.integers(0, 7))
        if valid == 0:
            row["validTo"] = "2026-11-25T00:00:00+03:00"
        elif valid == 1:
            row["validFrom"] = "2026-11-26T00:00:00+03:00"
    return rows


def _products() -> dict[str, Product]:
    return {
        sku: Product(
            sku=sku,
            category=CATEGORIES.get(sku, "tobacco"),
            excluded_from_loyalty=sku == "4601234000031",
        )
        for sku in SKUS[:4]
    }


def _categories_of(sku: str) -> frozenset[str]:
    parents = {"dairy": "food", "bakery": "food"}
    cat = CATEGORIES.get(sku)
    return frozenset({cat, parents[cat]}) if cat else frozenset()


_X2 = {"kind": "BONUS_MULTIPLIER", "skus": ["4601234000017"], "value": "2"}
_TIED_MULTIPLIERS = [  # equal multipliers whose priorities run against their ids
    {"id": "o-0", **_X2, "priority": 3},
    {"id": "o-1", **_X2, "priority": 0},
]
_MILK = [[{"sku": "4601234000017", "qty": "1", "priceMinor": 10000}]]


@settings(max_examples=400, deadline=None)
@example(  # the line's multiplier offer by (priority, id), not by the order offers are met
    baskets=_MILK, rows=_TIED_MULTIPLIERS, at="2026-11-23T10:15:00+03:00", known=True,
    explain=True, requested=0, cap=None, balance=0, tier="base", birthday=False, coupons=set(),
)  # fmt: skip
@example(  # on a birthday (×1.5 here) a ×1.5 offer gives nothing: BEATEN by it, not applied
    baskets=_MILK,
    rows=[{**_TIED_MULTIPLIERS[0], "value": "1.5"}],
    at="2026-11-23T10:15:00+03:00", known=True, explain=True, requested=0, cap=None,
    balance=0, tier="base", birthday=True, coupons={"o-0"},
)  # fmt: skip
@given(
    baskets=st.lists(lines(), min_size=1, max_size=3),
    rows=offer_rows(),
    at=st.sampled_from(TIMES),
    known=st.booleans(),
    explain=st.booleans(),
    requested=st.sampled_from([0, 0, 100, -1, 10_000]),
    cap=st.none() | st.integers(0, 1000),
    balance=st.integers(-100, 20_000),
    tier=st.sampled_from(["base", "silver", "gold"]),
    birthday=st.booleans(),
    coupons=st.sets(st.sampled_from([f"o-{i}" for i in range(8)])),
)
def test_the_fast_path_prices_every_receipt_as_the_reference_does(
    baskets: list[list[dict[str, Any]]],
    rows: list[dict[str, Any]],
    at: str,
    known: bool,
    explain: bool,
    requested: int,
    cap: int | None,
    balance: int,
    tier: str,
    birthday: bool,
    coupons: set[str],
) -> None:
    offers = sorted((Offer.model_validate(o) for o in rows), key=lambda o: o.id)
    customer = (
        Customer(
            id="c-a",
            first_name="Анна",
            tier=tier,
            balance_points=balance,
            control_groups=("camp-held",),
            favorite_weekday=5,
            birthday="1990-11-25" if birthday else None,
        )
        if known
        else None
    )
    program = Program.model_validate({"birthdayMultiplier": "1.5", "maxRedeemPercent": "33.3"})
    # the agent's shape: one mass index per snapshot, shared (and warmed) by every receipt
    mass = OfferIndex([o for o in offers if o.customer_id is None])
    personal = [o for o in offers if o.customer_id is not None]
    for basket in baskets:
        receipt = Receipt(
            receipt_id="r",
            at=at,
            card="x",
            lines=tuple(ReceiptLine.model_validate(line) for line in basket),
            redeem_points=requested,
            explain=explain,
        )
        ctx = PricingContext(
            program=program,
            products=_products(),
            categories_of=_categories_of,
            customer=customer,
            offers=offers,
            available_points=balance,
            redeem_cap=cap if known else None,
            coupon_offers=frozenset(coupons),
        )
        expected = reference.price(receipt, ctx)
        for given_offers in (offers, OfferIndex(personal, also=mass)):
            ctx = PricingContext(
                program=ctx.program,
                products=ctx.products,
                categories_of=ctx.categories_of,
                customer=ctx.customer,
                offers=given_offers,
                available_points=ctx.available_points,
                redeem_cap=ctx.redeem_cap,
                coupon_offers=ctx.coupon_offers,
            )
            got = price(receipt, ctx)
            assert got.lines == expected.lines
            assert [type(x) for line in got.lines for x in line] == [
                type(x) for line in expected.lines for x in line
            ]
            assert (got.point_value, got.extra_points, got.held_out) == (
                expected.point_value,
                expected.extra_points,
                expected.held_out,
            )
            assert got.redeem_allowed_without_cap == expected.redeem_allowed_without_cap
            assert got.applied_offers == expected.applied_offers
            assert got.trace == expected.trace
            assert (got.payable, got.earned_points) == (expected.payable, expected.earned_points)


def test_an_index_keeps_a_bounded_table_of_line_candidates(monkeypatch: Any) -> None:
    """The mass index's compiled table of a line's candidates starts again when full."""
    from tillpoint.agent import pricing

    monkeypatch.setattr(pricing, "CANDIDATES_KEPT", 3)
    offer = Offer.model_validate(
        {"id": "o-1", "kind": "PERCENT_OFF", "value": "10", "categories": ["food"]}
    )
    index = OfferIndex([offer])
    for n in range(10):  # ten lineages under "food": ten entries, three at a time
        assert list(index.candidates(f"sku-{n}", frozenset({f"leaf-{n}", "food"}))) == [offer]
        assert 1 <= len(index._lines) <= 3
    assert len(index._lines) == 1  # the tenth after the third clear
    assert list(index.candidates("sku-x", frozenset({"toys"}))) == []


PERSONAL: list[dict[str, Any]] = [
    {"id": "m-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "10"},
    {"id": "m-deal", "kind": "MULTIBUY", "categories": ["food"], "buyQty": "1", "freeQty": "1"},
    {"id": "p-sku", "customerId": "c-a", "kind": "AMOUNT_OFF", "skus": ["4601234000024"]}
    | {"value": "700"},
    {"id": "p-cat", "customerId": "c-a", "kind": "BONUS_MULTIPLIER", "categories": ["food"]}
    | {"value": "3"},
    {"id": "p-other", "customerId": "c-a", "kind": "PERCENT_OFF", "skus": ["4601234000000"]}
    | {"value": "50"},
    {"id": "p-unknown-sku", "customerId": "c-a", "kind": "FIXED_PRICE"}
    | {"skus": ["9999999999999"], "value": "1"},
    {"id": "p-receipt", "customerId": "c-a", "kind": "RECEIPT_PERCENT_OFF", "value": "5"},
    {"id": "p-extra", "customerId": "c-a", "kind": "EXTRA_POINTS", "value": "40"},
    {"id": "p-quoted", "customerId": "c-a", "kind": "PERCENT_OFF", "skus": ["4601234000055"]}
    | {"value": "20", "printable": True, "printText": 'a "quoted" \\ text'},
    {"id": "p-tiers", "customerId": "c-a", "kind": "QUANTITY_PRICE", "skus": ["4601234000017"]}
    | {"tiers": [{"minQty": "2", "unitPriceMinor": 7000}]},
]
LINES = [
    {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
    {"sku": "4601234000024", "qty": "1", "priceMinor": 6500},
    {"sku": "4601234000031", "qty": "1", "priceMinor": 25000},
    {"sku": "4601234000055", "qty": "0.512", "priceMinor": 99000},
    {"sku": "9999999999999", "qty": "3", "priceMinor": 1000},
]


@pytest.mark.parametrize("parse_all_up_to", [-1, 12])
def test_a_quote_parsing_only_the_offers_its_lines_might_get_prices_as_with_all(
    tmp_path: Any, monkeypatch: Any, parse_all_up_to: int
) -> None:
    """A quote on a card whose offers are not kept parses only the personal offers its
    lines might get (`CacheView.personal_offers_for`); it answers as with all of them.
    With `PARSE_ALL_UP_TO` below the customer's offers, each is parsed as a receipt needs
    it, its targets read from its JSON (one it is unsure of, never left out); otherwise
    all are parsed at first sight and filed by their models' targets."""
    import random

    from tillpoint.agent import cache
    from tillpoint.agent.cache import CacheView
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent

    from .conftest import receipt, snapshot

    rng = random.Random(5)
    receipts = [
        receipt_from_json(
            receipt(
                f"r-{i}",
                lines=rng.sample(LINES, rng.randint(1, len(LINES))),
                redeemPoints=rng.choice([0, -1]),
                explain=rng.random() < 0.5,
            )
        )
        for i in range(40)
    ]
    monkeypatch.setattr(cache, "PARSE_ALL_UP_TO", parse_all_up_to)
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=PERSONAL))
        parsed: list[list[str]] = []
        real = CacheView.personal_offers_for

        def spy(view: CacheView, customer: str, skus: Any, groups: Any) -> list[Offer]:
            offers = real(view, customer, skus, groups)
            parsed.append([o.id for o in offers])
            return offers

        monkeypatch.setattr(CacheView, "personal_offers_for", spy)
        got = [agent.quote(r) for r in receipts]
        assert any(len(ids) < 8 for ids in parsed)  # some offers were left unparsed
        assert all("p-receipt" in ids for ids in parsed)
        if parse_all_up_to < len(PERSONAL):  # its text has an escape: never left out
            assert all("p-quoted" in ids for ids in parsed)
        else:  # its model targets one SKU
            assert any("p-quoted" not in ids for ids in parsed)
        monkeypatch.setattr(
            CacheView,
            "personal_offers_for",
            lambda view, customer, skus, groups: view.personal_offers(customer),
        )
        want = [agent.quote(r) for r in receipts]
        assert got == want
    finally:
        agent.close()


def _might_target(doc: str, skus: set[str], groups: set[str]) -> bool:
    from tillpoint.agent.cache import _targets

    aim = _targets(doc)
    return aim is None or bool(aim[0] & skus or aim[1] & groups)


def test_an_offer_document_read_lightly_is_kept_when_unsure() -> None:
    skus, groups = {"a"}, {"food"}
    assert _might_target('{"kind":"PERCENT_OFF","skus":["a"]}', skus, groups)
    assert _might_target('{"kind":"PERCENT_OFF","categories":["food"]}', skus, groups)
    assert not _might_target('{"kind":"PERCENT_OFF","skus":["b"]}', skus, groups)
    assert _might_target('{"kind":"EXTRA_POINTS","skus":["b"]}', skus, groups)
    # an escape, or a key given twice: parsed in full
    assert _might_target('{"kind":"PERCENT_OFF","skus":["b"],"printText":"\\u0041"}', skus, groups)
    assert _might_target('{"kind":"PERCENT_OFF","skus":["a"],"skus":["b"]}', skus, groups)


def test_the_mass_index_keeps_a_lines_candidates_by_its_categories_unless_its_sku_is_named() -> (
    None
):
    """Every line's candidates are the offers naming its SKU or one of its categories,
    each once; lines of one category share one entry of the table, so the table grows
    with the category tree and the SKUs offers name, not with the SKUs sold."""

    def offer(oid: str, **aim: list[str]) -> Offer:
        return Offer.model_validate(
            {"id": oid, "campaignId": "k", "kind": "PERCENT_OFF", "value": "5", **aim}
        )

    offers = [
        offer("leaf", categories=["dairy"]),
        offer("root", categories=["food"]),
        offer("both", categories=["dairy", "food"]),
        offer("sku", skus=["s-7"]),
        offer("sku-and-leaf", skus=["s-8"], categories=["dairy"]),
    ]
    mass = OfferIndex(offers)
    dairy = frozenset({"dairy", "food"})
    bakery = frozenset({"bakery", "food"})
    for _round in range(2):  # the second round from the table
        for n in range(1, 300):
            sku = f"s-{n}"
            for lineage in (dairy, bakery, frozenset({"tobacco"})):
                got = [o.id for o in mass.candidates(sku, lineage)]
                want = [
                    o.id for o in offers if sku in o.skus or not lineage.isdisjoint(o.categories)
                ]
                assert sorted(got) == sorted(want) and len(set(got)) == len(got), (sku, lineage)
    # dairy, bakery, and the two named SKUs with each lineage that has offers
    assert len(mass._lines) == 2 + 2 * 3
    personal = OfferIndex([offer("mine", skus=["s-1"])], also=mass)
    assert [o.id for o in personal.candidates("s-1", bakery)] == ["mine", "root", "both"]
    assert [o.id for o in personal.candidates("s-2", frozenset({"tobacco"}))] == []


@given(
    st.datetimes(min_value=datetime(2026, 10, 31, 20, 0), max_value=datetime(2027, 1, 1, 4, 0)),
    st.sampled_from([0, 3, -5, 14]),
    st.booleans(),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_an_offers_validity_as_integers_is_its_validity(
    moment: datetime, hours: int, open_from: bool, open_to: bool
) -> None:
    """`Offer.valid_span` against `micros(at)` (what pricing compares) says what
    `valid_at` says, to the microsecond, at the ends and with any UTC offsets."""
    from datetime import timedelta, timezone

    from tillpoint.agent.models import micros

    row: dict[str, Any] = {"id": "o", "campaignId": "k", "kind": "PERCENT_OFF", "value": "5"}
    if not open_from:
        row["validFrom"] = "2026-11-01T00:00:00+03:00"
    if not open_to:
        row["validTo"] = "2026-12-31T23:59:59.999999+03:00"
    offer = Offer.model_validate(row)
    at = moment.replace(tzinfo=timezone(timedelta(hours=hours)))
    low, high = offer.valid_span
    assert (low <= micros(at) <= high) == offer.valid_at(at)
    for end in (offer.valid_from, offer.valid_to):
        if end is not None:
            for step in (-1, 0, 1):
                near = end + timedelta(microseconds=step)
                assert (low <= micros(near) <= high) == offer.valid_at(near)
