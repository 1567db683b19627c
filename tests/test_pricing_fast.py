"""The fast pricing path (issue 15) gives what the reference engine gives, figure for figure.

`tests/pricing_reference.py` is `agent/pricing.py` as it was before its fast path; on
random baskets, offers (mass and personal, deals, windows, coupons, validity) and
programs, `price` must return the same `Priced` (lines, points, held-out offers, caps,
trace) as the reference, with the offers as a list or as a per-snapshot mass index
shared by receipts and kept warm between them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
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


@settings(max_examples=400, deadline=None)
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
    for n in range(10):
        assert list(index.candidates(f"sku-{n}", frozenset({"food"}))) == [offer]
        assert len(index._lines) <= 3
    assert list(index.candidates("sku-x", frozenset({"toys"}))) == []
