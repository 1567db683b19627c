"""Property-based tests of the arithmetic's invariants (hypothesis).

- no discount above a line's amount, nothing negative, payable never below zero;
- redemption within every cap of the contract §5 step 4;
- quote equals checkout for the same state;
- returning everything, in any split, restores the balance exactly;
- a refused input leaves the cache and the ledger unchanged, row for row.
"""

from __future__ import annotations

import math
import tempfile
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.errors import TillpointError
from tillpoint.agent.models import Customer, Offer, Product, Program, Receipt, ReceiptLine
from tillpoint.agent.pricing import PricingContext, price
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import snapshot

SKUS = ["4601234000017", "4601234000024", "4601234000031", "4601234000055", "0000000000000"]
CATEGORIES = {"4601234000017": "dairy", "4601234000024": "bakery", "4601234000055": "dairy"}

qty = st.builds(
    lambda whole, frac_part, places: Decimal(whole) + Decimal(frac_part) / Decimal(10**places),
    st.integers(0, 20),
    st.integers(0, 999),
    st.sampled_from([1, 2, 3]),
).filter(lambda q: q > 0)
qty = qty.map(lambda q: q.quantize(Decimal("0.001")).normalize())


@st.composite
def lines(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        line: dict[str, Any] = {
            "sku": draw(st.sampled_from(SKUS)),
            "qty": format(draw(qty), "f"),
        }
        if draw(st.booleans()):
            line["priceMinor"] = draw(st.integers(0, 5_000_000))
        else:
            line["amountMinor"] = draw(st.integers(0, 50_000_000))
        out.append(line)
    return out


@st.composite
def offers(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(
            st.sampled_from(
                [
                    "PERCENT_OFF",
                    "AMOUNT_OFF",
                    "FIXED_PRICE",
                    "BONUS_MULTIPLIER",
                    "RECEIPT_PERCENT_OFF",
                    "EXTRA_POINTS",
                ]
            )
        )
        if kind in ("PERCENT_OFF", "RECEIPT_PERCENT_OFF"):
            value = str(draw(st.integers(0, 100)))
        elif kind == "BONUS_MULTIPLIER":
            value = str(draw(st.integers(1, 10)))
        else:
            value = str(draw(st.integers(0, 200_000)))
        out.append(
            {
                "id": f"o-{i}",
                "campaignId": draw(st.sampled_from(["camp-1", "camp-2", "camp-held"])),
                "customerId": draw(st.sampled_from([None, "c-a", "c-b"])),
                "kind": kind,
                "skus": draw(st.lists(st.sampled_from(SKUS), max_size=2)),
                "categories": draw(st.lists(st.sampled_from(["dairy", "food"]), max_size=1)),
                "value": value,
                "minQty": str(draw(st.integers(0, 3))),
                "minTotalMinor": draw(st.integers(0, 100_000)),
                "priority": draw(st.integers(0, 3)),
                "rank": draw(st.integers(0, 3)),
                "printable": draw(st.booleans()),
                "printText": "offer",
            }
        )
    return [{k: v for k, v in o.items() if v is not None} for o in out]


def pricing_context(
    offer_rows: list[dict[str, Any]],
    balance: int,
    cap: int | None,
    tier: str,
    favorite_weekday: int | None = None,
) -> PricingContext:
    """The pure core's input: customer c-a (in the control group of camp-held) with
    `balance` points, the SKUS and CATEGORIES catalogue, these offers."""
    customer = Customer(
        id="c-a",
        first_name="Анна",
        tier=tier,
        balance_points=balance,
        control_groups=("camp-held",),
        favorite_weekday=favorite_weekday,
    )
    products = {
        sku: Product(
            sku=sku,
            category=CATEGORIES.get(sku, "tobacco"),
            excluded_from_loyalty=sku == "4601234000031",
        )
        for sku in SKUS[:4]
    }
    parents = {"dairy": "food", "bakery": "food"}

    def categories_of(sku: str) -> frozenset[str]:
        cat = CATEGORIES.get(sku)
        return frozenset({cat, parents[cat]}) if cat else frozenset()

    return PricingContext(
        program=Program(),
        products=products,
        categories_of=categories_of,
        customer=customer,
        offers=[Offer.model_validate(o) for o in offer_rows],
        available_points=balance,
        redeem_cap=cap,
    )


@settings(max_examples=300, deadline=None)
@given(
    line_rows=lines(),
    offer_rows=offers(),
    balance=st.integers(-500, 100_000),
    requested=st.integers(-1, 100_000),
    cap=st.none() | st.integers(0, 1000),
    tier=st.sampled_from(["base", "gold", "platinum"]),
)
def test_discounts_and_redemption_stay_within_every_cap(
    line_rows: list[dict[str, Any]],
    offer_rows: list[dict[str, Any]],
    balance: int,
    requested: int,
    cap: int | None,
    tier: str,
) -> None:
    receipt = Receipt(
        receipt_id="r",
        at="2026-11-23T10:15:00+03:00",  # type: ignore[arg-type]
        card="x",
        lines=tuple(ReceiptLine.model_validate(line) for line in line_rows),
        redeem_points=requested,
    )
    ctx = pricing_context(offer_rows, balance, cap, tier)
    priced = price(receipt, ctx)
    pv = ctx.program.point_value_minor

    for line in priced.lines:
        assert 0 <= line.discount <= line.amount
        assert 0 <= line.redeemed_points * pv <= line.amount - line.discount
        assert line.earned_points >= 0
        if not line.eligible:
            assert line.discount == line.redeemed_points == line.earned_points == 0
    assert priced.payable >= 0
    assert priced.payable == priced.total - priced.discount - priced.redeemed_points * pv

    redeemed = priced.redeemed_points
    after_discounts = sum(x.amount - x.discount for x in priced.lines if x.eligible)
    assert redeemed <= max(0, balance)
    assert redeemed <= math.floor(Fraction(after_discounts) * 30 / 100 / pv)
    if requested != -1:
        assert redeemed <= requested
    if cap is not None:
        assert redeemed <= cap
    held = {o["id"] for o in offer_rows}
    assert set(priced.held_out) <= held


# ---------------------------------------------------------------- through the real agent


def _fresh_agent(offer_rows: list[dict[str, Any]]) -> tuple[Agent, Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="tp-prop-"))
    agent = Agent(data_dir, "till-1")
    agent.load_snapshot(snapshot(offers=offer_rows))
    return agent, data_dir


_agent_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_agent_settings
@given(line_rows=lines(), offer_rows=offers(), requested=st.integers(-1, 2000))
def test_quote_equals_checkout(
    line_rows: list[dict[str, Any]], offer_rows: list[dict[str, Any]], requested: int
) -> None:
    agent, _ = _fresh_agent(offer_rows)
    try:
        data = {
            "receiptId": "r1",
            "at": "2026-11-23T10:15:00+03:00",
            "card": "2770000000017",
            "lines": line_rows,
            "redeemPoints": requested,
        }
        quoted = agent.quote(receipt_from_json(data)).to_json()
        committed = agent.checkout(receipt_from_json(data)).to_json()
        assert committed.pop("state") == "CONFIRMED"  # a quote has no state (§11)
        for key in ("printedOffers", "display"):
            quoted.pop(key)
            committed.pop(key)
        # Where the sale went in the ledger: the checkout's alone (a quote takes no seq).
        assert (committed.pop("deviceId"), committed.pop("seq")) == ("till-1", 1)
        assert quoted == committed
    finally:
        agent.close()


@_agent_settings
@given(
    line_rows=lines(),
    offer_rows=offers(),
    requested=st.integers(-1, 2000),
    splits=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    data=st.data(),
)
def test_returning_everything_in_any_split_restores_the_balance(
    line_rows: list[dict[str, Any]],
    offer_rows: list[dict[str, Any]],
    requested: int,
    splits: list[int],
    data: st.DataObject,
) -> None:
    agent, _ = _fresh_agent(offer_rows)
    try:
        before = agent.balance("2770000000017")
        result = agent.checkout(
            receipt_from_json(
                {
                    "receiptId": "r1",
                    "at": "2026-11-23T10:15:00+03:00",
                    "card": "2770000000017",
                    "lines": line_rows,
                    "redeemPoints": requested,
                }
            )
        )
        # Return every (sku, qty) in random pieces, over several refunds.
        pieces: list[tuple[str, Decimal]] = []
        for line in line_rows:
            left = Decimal(line["qty"])
            while left > 0:
                part = min(left, data.draw(qty))
                pieces.append((line["sku"], part))
                left -= part
        pieces = data.draw(st.permutations(pieces))
        returned = taken = 0
        for n, start in enumerate(range(0, len(pieces), splits[0])):
            chunk = pieces[start : start + splits[0]]
            r = agent.refund(
                refund_from_json(
                    {
                        "refundId": f"f{n}",
                        "receiptId": "r1",
                        "at": "2026-11-24T10:00:00+03:00",
                        "lines": [{"sku": s, "qty": format(q, "f")} for s, q in chunk],
                    }
                )
            )
            returned += r.returned_points
            taken += r.taken_back_points
        assert returned == result.redeemed_points
        assert taken == result.earned_points
        assert agent.balance("2770000000017") == before
    finally:
        agent.close()


def _state(agent: Agent) -> tuple[Any, ...]:
    ledger = agent._ledger
    tables = ("receipts", "receipt_lines", "refunds", "journal", "outbox", "points", "device")
    rows = tuple(tuple(ledger.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()) for t in tables)
    return (cache_mod.dump(agent._cache), rows)


bad_values = st.one_of(
    st.just("0"),
    st.just("-1"),
    st.just("1.2345"),
    st.just("abc"),
    st.just(""),
    st.just(1.5),
    st.just(None),
    st.just(True),
    st.just(-5),
    st.just(2**63),
    st.just([]),
    st.just({}),
)


@_agent_settings
@given(
    field=st.sampled_from(["qty", "priceMinor", "amountMinor", "sku", "extra"]),
    top=st.sampled_from(["lines", "at", "receiptId", "redeemPoints", "card", "bogus"]),
    value=bad_values,
    where=st.sampled_from(["line", "top"]),
)
def test_a_refused_input_changes_nothing(field: str, top: str, value: Any, where: str) -> None:
    agent, _ = _fresh_agent([])
    try:
        agent.checkout(
            receipt_from_json(
                {
                    "receiptId": "ok",
                    "at": "2026-11-23T10:15:00+03:00",
                    "card": "2770000000017",
                    "lines": [{"sku": "4601234000017", "qty": "1", "priceMinor": 100}],
                }
            )
        )
        before = _state(agent)
        bad: dict[str, Any] = {
            "receiptId": "bad",
            "at": "2026-11-23T10:15:00+03:00",
            "card": "2770000000017",
            "lines": [{"sku": "4601234000017", "qty": "1", "priceMinor": 100}],
        }
        if where == "line":
            bad["lines"][0][field] = value
        else:
            bad[top] = value

        def checkout(doc: dict[str, Any]) -> object:
            return agent.checkout(receipt_from_json(doc))

        def refund(doc: dict[str, Any]) -> object:
            return agent.refund(refund_from_json(doc))

        for call in (checkout, refund, agent.load_snapshot):
            try:
                call(bad)
            except TillpointError:
                pass
            else:  # some mutations are still valid receipts (e.g. redeemPoints -5 is not)
                assert call == checkout
                return
        assert _state(agent) == before
    finally:
        agent.close()


@settings(max_examples=2000, deadline=None)
@given(
    price_minor=st.integers(0, 10**15),
    whole=st.integers(0, 10**6),
    thousandths=st.integers(0, 999),
)
def test_line_amount_is_price_times_qty_rounded_half_up(
    price_minor: int, whole: int, thousandths: int
) -> None:
    """The integer line amount equals Decimal's ROUND_HALF_UP of price × qty (the contract §2)."""
    from decimal import ROUND_HALF_UP, localcontext

    from tillpoint.agent.money import line_amount

    qty = Decimal(f"{whole}.{thousandths:03d}")
    with localcontext() as ctx:
        ctx.prec = 60
        expected = int((Decimal(price_minor) * qty).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert line_amount(price_minor, qty) == expected


@settings(max_examples=3000, deadline=None)
@given(text=st.text(alphabet="0123456789.-+ e", max_size=9))
def test_a_quantity_is_accepted_natively_exactly_when_the_rule_accepts_it(text: str) -> None:
    """The native pattern for `qty` takes what `_qty` (the rule, §5) takes, as the same value."""
    from pydantic import ValidationError
    from tillpoint.agent.models import _qty

    try:
        expected: Decimal | None = _qty(text)
    except ValueError:
        expected = None
    try:
        got: Decimal | None = ReceiptLine(sku="s", qty=text, amount_minor=1).qty
    except ValidationError:
        got = None
    assert got == expected and type(got) is type(expected)
