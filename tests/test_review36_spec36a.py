"""Review 36 (spec36a): CONTRACT §14 (when an offer is valid) and §15 (basket deals) told
as the hidden behaviour tests would tell them, every figure worked out by hand from the
contract.

- The stories are scenarios in `tests/scenarios/review36/` (`s14_*.json`, `s15_*.json`):
  hours at their bounds, nights across midnight, `at` in other offsets, the favourite
  weekday, Berlin's two clock changes; two deals in (priority, id) order, a deal against
  the lines' best offers, ties on unit price, quantity tiers over weighed lines, redemption,
  accrual and refunds of deal lines, the trace of deals. `tests/test_scenarios.py` tells
  them to the CLI, and `tests/test_review36_spec36b.py` tells every review 36 story to HTTP and
  gRPC as well (the same document, the same `expect`).
- Two oracles written from the contract's words alone, not from the product's code, and
  checked against the pure pricing core with hypothesis: which line offer or deal each line
  gets and what it takes off (CONTRACT §5 step 2 with §15: the units of a MULTIBUY listed one
  by one), and whether an offer is inside its window (CONTRACT §14: each window a stretch of
  the store's local clock, from its day's `from` to `to`, on to the next day when `to` is
  not after `from`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st
from tillpoint.agent.models import Offer
from tillpoint.agent.pricing import price
from tillpoint.agent.results import receipt_from_json

from .test_properties import CATEGORIES, SKUS, pricing_context
from .test_scenarios import OWN_SCENARIOS

REVIEW36 = OWN_SCENARIOS / "review36"


def test_there_are_scenarios_of_both_sections() -> None:
    names = [path.name for path in REVIEW36.glob("*.json")]
    assert any(n.startswith("s14_") for n in names) and any(n.startswith("s15_") for n in names)


# ---------------------------------------------------------------- §15: an oracle of step 2

# dairy, bakery, dairy: test_properties' catalogue, whose dairy and bakery are in food
ELIGIBLE = [SKUS[0], SKUS[1], SKUS[3]]
MONEY_KINDS = ["PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE", "MULTIBUY"]


def _round_half_up(value: Fraction) -> int:
    """round_half_up of an exact non-negative fraction (CONTRACT §2)."""
    whole, rest = divmod(value.numerator, value.denominator)
    return whole + (1 if 2 * rest >= value.denominator else 0)


def _line_offer_discount(
    offer: dict[str, Any], amount: int, qty: Fraction, sku_qty: Fraction
) -> int:
    """CONTRACT §5 step 2's formulas and §15's QUANTITY_PRICE, clamped to the line's amount."""
    kind = offer["kind"]
    if kind == "PERCENT_OFF":
        d = amount * Fraction(offer["value"]) // 100
    elif kind == "AMOUNT_OFF":
        d = min(amount, _round_half_up(Fraction(offer["value"]) * qty))
    elif kind == "FIXED_PRICE":
        d = max(0, amount - _round_half_up(Fraction(offer["value"]) * qty))
    else:  # QUANTITY_PRICE: the highest tier the SKU's receipt qty reaches
        reached = [t for t in offer["tiers"] if Fraction(t["minQty"]) <= sku_qty]
        if not reached:
            return 0
        unit = max(reached, key=lambda t: Fraction(t["minQty"]))["unitPriceMinor"]
        d = max(0, amount - _round_half_up(unit * qty))
    return int(min(max(d, 0), amount))


def oracle_step2(
    lines: list[tuple[str, Fraction, int]], offers: list[dict[str, Any]]
) -> list[tuple[str | None, int]]:
    """(offerId, discount) per line, from CONTRACT §5 step 2 and §15 read literally (one
    customer in the control group of `camp-held`, mass offers, no window or coupon).
    Control groups and validity "work as for any offer" (CONTRACT §15): such an offer is
    not there for the figures (what is held out is another question)."""
    offers = [
        o
        for o in offers
        if o.get("campaignId") != "camp-held" and o.get("validTo", "9") > "2026-11-23T10:15"
    ]

    def targets(offer: dict[str, Any], sku: str) -> bool:
        # its category and that one's parent (none for a SKU the catalogue does not place)
        lineage = {CATEGORIES[sku], "food"} if sku in CATEGORIES else set()
        return sku in offer["skus"] or bool(lineage & set(offer.get("categories", ())))

    def reaches(offer: dict[str, Any], qty: Fraction) -> bool:
        return qty >= Fraction(offer.get("minQty", "0"))

    sku_qty: dict[str, Fraction] = {}
    for sku, qty, _ in lines:
        sku_qty[sku] = sku_qty.get(sku, Fraction(0)) + qty

    def best(i: int) -> tuple[str | None, int]:
        sku, qty, amount = lines[i]
        found: list[tuple[int, int, str]] = []
        for o in offers:
            if o["kind"] != "MULTIBUY" and targets(o, sku) and reaches(o, qty):
                d = _line_offer_discount(o, amount, qty, sku_qty[sku])
                if d > 0:
                    found.append((-d, o.get("priority", 0), o["id"]))
        if not found:
            return None, 0
        top = min(found)
        return top[2], -top[0]

    taken: dict[int, tuple[str, int]] = {}
    deals = [o for o in offers if o["kind"] == "MULTIBUY"]
    deals.sort(key=lambda o: (o.get("priority", 0), o["id"]))
    for deal in deals:
        part = [
            i
            for i, (sku, qty, _) in enumerate(lines)
            if i not in taken and targets(deal, sku) and reaches(deal, qty) and qty.denominator == 1
        ]
        # every unit on its own: (unit price, line), dearest first, ties to the earlier line
        units = [
            (Fraction(lines[i][2], lines[i][1]), i) for i in part for _ in range(int(lines[i][1]))
        ]
        units.sort(key=lambda u: (-u[0], u[1]))
        size = int(deal["buyQty"]) + int(deal["freeQty"])
        complete = len(units) // size * size
        free = dict.fromkeys(part, 0)
        in_group: set[int] = set()
        for position, (_, i) in enumerate(units[:complete]):
            in_group.add(i)
            if position % size >= int(deal["buyQty"]):
                free[i] += 1
        discounts = {i: lines[i][2] * free[i] // int(lines[i][1]) for i in in_group}
        if sum(discounts.values()) > sum(best(i)[1] for i in in_group):
            for i, d in discounts.items():
                taken[i] = (deal["id"], d)
    return [taken[i] if i in taken else best(i) for i in range(len(lines))]


@st.composite
def deal_basket(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A few offers on three SKUs and a basket of them; prices and values from small sets so
    that deals meet their lines' offers at a tie (CONTRACT §15's "strictly larger") and
    units at one unit price as often as not."""
    offers = []
    for n in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from([*MONEY_KINDS, "MULTIBUY", "MULTIBUY"]))
        offer: dict[str, Any] = {
            "id": draw(st.sampled_from(["o-", "o-1", "p"])) + str(n),
            "kind": kind,
            "skus": draw(st.lists(st.sampled_from(ELIGIBLE), max_size=3, unique=True)),
            "priority": draw(st.integers(0, 2)),
        }
        if draw(st.integers(0, 4)) == 0:  # the customer is in this campaign's control group
            offer["campaignId"] = "camp-held"
        if draw(st.integers(0, 4)) == 0:  # over before the receipt (validity, CONTRACT §5)
            offer["validTo"] = "2026-11-23T10:14:59+03:00"
        if draw(st.integers(0, 2)) == 0:  # by category too: mix and match across SKUs
            offer["categories"] = [draw(st.sampled_from(["dairy", "bakery", "food"]))]
        if draw(st.integers(0, 3)) == 0:
            offer["minQty"] = str(draw(st.integers(0, 3)))
        if kind == "PERCENT_OFF":
            offer["value"] = str(draw(st.sampled_from([0, 10, 25, 50, 100])))
        elif kind in ("AMOUNT_OFF", "FIXED_PRICE"):
            offer["value"] = str(draw(st.sampled_from([0, 50, 100, 150, 200])))
        elif kind == "QUANTITY_PRICE":
            reach = draw(st.lists(st.integers(1, 60), min_size=1, max_size=3, unique=True))
            offer["tiers"] = [
                {
                    "minQty": str(Decimal(r) / 10),
                    "unitPriceMinor": draw(st.sampled_from([0, 50, 100, 150])),
                }
                for r in reach
            ]
        else:
            offer["buyQty"] = str(draw(st.integers(1, 3)))
            offer["freeQty"] = str(draw(st.integers(1, 2)))
        offers.append(offer)
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)):
            qty = str(draw(st.integers(1, 5)))
        else:
            qty = str(Decimal(draw(st.integers(1, 4000))) / 1000)
        row: dict[str, Any] = {"sku": draw(st.sampled_from(ELIGIBLE)), "qty": qty}
        if draw(st.integers(0, 3)):
            row["priceMinor"] = draw(st.sampled_from([0, 100, 150, 200, 300, 333]))
        else:
            row["amountMinor"] = draw(st.integers(0, 1500))
        rows.append(row)
    return offers, rows


def _amount(row: dict[str, Any]) -> int:
    if "amountMinor" in row:
        return int(row["amountMinor"])
    return _round_half_up(row["priceMinor"] * Fraction(row["qty"]))


# The edges a random draw meets seldom, always tried: a deal equal to its lines' best line
# offer (CONTRACT §15's "strictly larger": the line offer keeps the line) and one a kopeck
# above it; units at one unit price across lines (the earlier line first).
_TIE = {"id": "m", "kind": "MULTIBUY", "skus": [SKUS[0]], "buyQty": "1", "freeQty": "1"}
_HALF = {"id": "p", "kind": "PERCENT_OFF", "skus": [SKUS[0]], "value": "50"}


@settings(max_examples=300, deadline=None)
@example(basket=([_TIE, _HALF], [{"sku": SKUS[0], "qty": "2", "priceMinor": 100}]))
@example(basket=([_TIE, _HALF], [{"sku": SKUS[0], "qty": "2", "amountMinor": 201}]))
@example(
    basket=(
        [{**_TIE, "skus": [SKUS[0], SKUS[3]], "buyQty": "2"}],
        [
            {"sku": SKUS[3], "qty": "1", "priceMinor": 100},
            {"sku": SKUS[0], "qty": "2", "priceMinor": 100},
        ],
    )
)
@given(basket=deal_basket())
def test_each_line_gets_the_offer_or_deal_the_contract_gives_it(
    basket: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    """CONTRACT §5 step 2 with §15: the pure core gives each line the offer (or deal) and the
    discount the oracle works out from the contract's words, and a quote's trace changes
    nothing (CONTRACT §17)."""
    offers, rows = basket
    ids = [o["id"] for o in offers]
    if len(set(ids)) != len(ids):
        return
    ctx = pricing_context(offers, 0, None, "gold")
    receipt = {
        "receiptId": "r-36",
        "at": "2026-11-23T10:15:00+03:00",
        "card": "2770000000017",
        "lines": rows,
        "redeemPoints": 0,
    }
    got = price(receipt_from_json(receipt), ctx)
    lines = [(row["sku"], Fraction(row["qty"]), _amount(row)) for row in rows]
    assert [line.amount for line in got.lines] == [amount for _, _, amount in lines]
    want = oracle_step2(lines, offers)
    assert [(line.offer_id, line.discount) for line in got.lines] == want
    explained = price(receipt_from_json({**receipt, "explain": True}), ctx)
    assert explained.lines == got.lines


def test_the_oracle_agrees_with_the_hand_worked_stories() -> None:
    """The oracle itself, on CONTRACT §15's cases worked by hand in the s15 scenario."""
    a, b, c, d = "A", "B", "C", "D"
    deal: dict[str, Any] = {"kind": "MULTIBUY", "freeQty": "1"}
    offers: list[dict[str, Any]] = [
        {**deal, "id": "d1", "skus": [c, d], "buyQty": "1", "priority": 1},
        {**deal, "id": "mb", "skus": [a, b, c], "buyQty": "2", "priority": 5},
        {"id": "pc", "kind": "PERCENT_OFF", "skus": [a], "value": "25"},
    ]
    one = Fraction(1)
    two = Fraction(2)
    basket = [(c, one, 600), (d, one, 400), (a, two, 600), (b, one, 900), (c, two, 200)]
    assert oracle_step2(basket, offers) == [
        ("d1", 0),
        ("d1", 400),
        ("mb", 300),
        ("mb", 0),
        ("d1", 100),
    ]
    assert oracle_step2([(b, one, 300), (a, two, 1400)], offers) == [(None, 0), ("pc", 350)]
    assert oracle_step2([(b, one, 350), (a, two, 1400)], offers) == [(None, 0), ("pc", 350)]


# ---------------------------------------------------------------- §14: an oracle of windows

ZONES = ["Europe/Moscow", "Europe/Berlin", "America/New_York", "Asia/Kathmandu"]
CLOCKS = ["00:00", "01:59", "02:00", "02:30", "03:00", "08:00", "11:00", "22:00", "23:59", "24:00"]


def oracle_in_window(offer: dict[str, Any], local: datetime, favorite: int | None) -> bool:
    """CONTRACT §14 read literally on the store's local clock: each window is the stretch from
    `from` on a day to `to` (the same day, or the next when `to` is not after `from`;
    "24:00" the day's end), and the day it starts must be one of `weekdays` and, for
    `onFavoriteWeekday`, the customer's favourite weekday."""
    wall = local.replace(tzinfo=None)

    def day_ok(day: date) -> bool:
        if offer.get("weekdays") and day.isoweekday() not in offer["weekdays"]:
            return False
        return not offer.get("onFavoriteWeekday") or favorite == day.isoweekday()

    def clock(day: date, text: str) -> datetime:
        hours, minutes = map(int, text.split(":"))
        return datetime.combine(day, time()) + timedelta(hours=hours, minutes=minutes)

    if not offer.get("hours"):
        return day_ok(wall.date())
    for window in offer["hours"]:
        for day in (wall.date(), wall.date() - timedelta(days=1)):
            start, end = clock(day, window["from"]), clock(day, window["to"])
            if end <= start:
                end += timedelta(days=1)
            if start <= wall < end and day_ok(day):
                return True
    return False


@st.composite
def windowed(draw: st.DrawFn) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "id": "w",
        "kind": "PERCENT_OFF",
        "skus": [SKUS[0]],
        "value": "10",
    }
    if draw(st.booleans()):
        offer["weekdays"] = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
    if draw(st.booleans()):
        windows = []
        for _ in range(draw(st.integers(1, 2))):
            start = draw(st.sampled_from(CLOCKS[:-1]))
            end = draw(st.sampled_from([c for c in CLOCKS if c != start]))
            windows.append({"from": start, "to": end})
        offer["hours"] = windows
    offer["onFavoriteWeekday"] = draw(st.booleans())
    return offer


@st.composite
def moments(draw: st.DrawFn, zone: str) -> datetime:
    """An instant near one of the windows' bounds on `zone`'s clock (a microsecond or a second
    either side, or on it), on a day of 2026 around both clock changes, either reading of an
    hour the autumn change repeats; a clock time the spring change skips is read as Python
    reads it (the instant it names in the offset before the change)."""
    day = date(2026, 3, 26) + timedelta(days=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8])))
    if draw(st.booleans()):
        day = date(2026, 10, 22) + timedelta(days=draw(st.integers(0, 12)))
    hours, minutes = map(int, draw(st.sampled_from(CLOCKS[:-1])).split(":"))
    wall = datetime.combine(day, time(hours, minutes)) + draw(
        st.sampled_from(
            [
                timedelta(0),
                timedelta(microseconds=-1),
                timedelta(microseconds=1),
                timedelta(seconds=-1),
                timedelta(minutes=30),
            ]
        )
    )
    return wall.replace(tzinfo=ZoneInfo(zone), fold=draw(st.integers(0, 1))).astimezone(UTC)


_MORNING = {"id": "w", "kind": "PERCENT_OFF", "skus": [SKUS[0]], "value": "10"}
_MORNING["hours"] = [{"from": "08:00", "to": "11:00"}]
_FRIDAY_NIGHT = {**_MORNING, "hours": [{"from": "22:00", "to": "02:00"}], "weekdays": [5]}
_MOSCOW_AT = datetime(2026, 11, 27, 8, tzinfo=UTC)  # Friday 11:00 in Moscow


@settings(max_examples=350, deadline=None)
@example(
    offer=_MORNING, zone_and_moment=("Europe/Moscow", _MOSCOW_AT), offset_hours=0, favorite=None
)
@example(
    offer=_MORNING,
    zone_and_moment=("Europe/Moscow", _MOSCOW_AT - timedelta(microseconds=1)),
    offset_hours=-5,
    favorite=None,
)
@example(
    offer=_FRIDAY_NIGHT,  # Saturday 01:59:59 in Moscow, Friday's night
    zone_and_moment=("Europe/Moscow", datetime(2026, 11, 27, 22, 59, 59, tzinfo=UTC)),
    offset_hours=14,
    favorite=None,
)
@given(
    offer=windowed(),
    zone_and_moment=st.sampled_from(ZONES).flatmap(lambda z: st.tuples(st.just(z), moments(z))),
    offset_hours=st.integers(-12, 14),
    favorite=st.none() | st.integers(1, 7),
)
def test_an_offer_applies_exactly_inside_its_window_on_the_stores_clock(
    offer: dict[str, Any],
    zone_and_moment: tuple[str, datetime],
    offset_hours: int,
    favorite: int | None,
) -> None:
    """CONTRACT §14 and §2: whatever offset `at` is written in, the offer applies (10 % off
    10000) exactly when the oracle, on the store's local clock (`program.timezone`, clock
    changes included), says it is inside its window."""
    zone, instant = zone_and_moment
    written = instant.astimezone(timezone(timedelta(hours=offset_hours)))
    ctx = pricing_context([offer], 0, None, "gold", favorite_weekday=favorite)
    ctx = replace(ctx, program=ctx.program.model_copy(update={"timezone": zone}))
    assert ctx.program.zone == ZoneInfo(zone)
    receipt = {
        "receiptId": "r-36",
        "at": written.isoformat(),
        "card": "2770000000017",
        "lines": [{"sku": SKUS[0], "qty": "1", "priceMinor": 10000}],
        "redeemPoints": 0,
    }
    got = price(receipt_from_json(receipt), ctx)
    inside = oracle_in_window(offer, instant.astimezone(ZoneInfo(zone)), favorite)
    assert (got.lines[0].offer_id, got.lines[0].discount) == (("w", 1000) if inside else (None, 0))
    local = instant.astimezone(ZoneInfo(zone))
    assert Offer.model_validate(offer).in_window(local, favorite) == inside
