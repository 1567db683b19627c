"""The pricing engine (the contract §5): plain functions over frozen models, no I/O.

Everything the rules need is passed in a `PricingContext`; storage, clock and the hub
stay at the edges. Amounts are integers; quantities, rates and shares are exact
`Fraction`s inside a calculation and never leave it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from itertools import chain
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo

from .expiry import days_later, last_instant
from .models import LINE_KINDS, LINE_MONEY_KINDS, Customer, Offer, Program, Receipt, micros
from .money import frac, round_half_up_ratio, split_integer

# ---------------------------------------------------------------- inputs and outputs


class ProductInfo(Protocol):
    """What pricing reads of a product (a snapshot `Product` or a cache row)."""

    @property
    def excluded_from_loyalty(self) -> bool: ...


class OfferIndex:
    """Offers by what they target, so a line sees only its candidates.

    The mass offers of a snapshot are indexed once per snapshot version and shared by every
    receipt; a receipt's few personal offers are indexed on the spot and looked up beside
    them (`OfferIndex(personal, also=mass_index)`).
    """

    __slots__ = (
        "_categories",
        "_lineages",
        "_lines",
        "also",
        "by_category",
        "by_sku",
        "receipt_level",
    )

    def __init__(self, offers: Iterable[Offer], also: OfferIndex | None = None) -> None:
        self.by_sku: dict[str, list[Offer]] = {}
        self.by_category: dict[str, list[Offer]] = {}
        self.receipt_level: list[Offer] = []
        self.also = also
        # a category and its ancestors -> their offers (lines of one category share it)
        self._lineages: dict[frozenset[str], list[Offer]] = {}
        # a line's categories (or its sku and categories, when an offer names the sku) ->
        # this part's candidates, each once: the compiled table of the snapshot's mass
        # index, filled as lines that have some are seen, at most `CANDIDATES_KEPT` of them
        # (a line with none is told by two set lookups)
        self._lines: dict[tuple[str, frozenset[str]] | frozenset[str], tuple[Offer, ...]] = {}
        for o in offers:
            if o.kind in _LINE_KINDS:
                for sku in set(o.skus):
                    self.by_sku.setdefault(sku, []).append(o)
                for category in set(o.categories):
                    self.by_category.setdefault(category, []).append(o)
            else:
                self.receipt_level.append(o)
        self._categories = frozenset(self.by_category)

    def candidates(self, sku: str, categories: frozenset[str]) -> Sequence[Offer]:
        """Every offer targeting the sku or one of the categories, each once (this part's
        first, then those of `also`)."""
        own = self._part(sku, categories)
        also = self.also
        if also is None:
            return own
        more = (  # a receipt's personal offers, then the mass index: its part directly
            also._part(sku, categories) if also.also is None else also.candidates(sku, categories)
        )
        if not own:
            return more
        if not more:
            return own
        return tuple({o.id: o for o in (*own, *more)}.values())

    def _part(self, sku: str, categories: frozenset[str]) -> Sequence[Offer]:
        """This part's candidates for a line, each once, kept in `_lines`: by the line's
        categories alone when no offer names its SKU (lines of one category share them, so
        the table stays as small as the category tree), else by both. Most lines have
        none, told by two set lookups."""
        key: tuple[str, frozenset[str]] | frozenset[str]
        if sku in self.by_sku:
            key = (sku, categories)
        elif categories.isdisjoint(self._categories):
            return ()
        else:
            key = categories
        found = self._lines.get(key)
        if found is None:
            listed = [*self.by_sku.get(sku, ()), *self._of_categories(categories)]
            found = tuple({o.id: o for o in listed}.values()) if len(listed) > 1 else tuple(listed)
            if len(self._lines) >= CANDIDATES_KEPT:
                self._lines.clear()
            self._lines[key] = found
        return found

    def _of_categories(self, categories: frozenset[str]) -> list[Offer]:
        found = self._lineages.get(categories)
        if found is None:
            by_category = self.by_category
            found = [o for c in categories for o in by_category.get(c, ())]
            self._lineages[categories] = found
        return found

    def receipt_offers(self) -> list[Offer]:
        found: list[Offer] = []
        part: OfferIndex | None = self
        while part is not None:
            found.extend(part.receipt_level)
            part = part.also
        return found


# Lines whose candidates an index keeps (`OfferIndex._part`); beyond, it starts again.
CANDIDATES_KEPT = 20_000
_LINE_KINDS = LINE_KINDS
_DEAL_KINDS = frozenset({"QUANTITY_PRICE", "MULTIBUY"})
_ONE = Fraction(1)


@dataclass(frozen=True)
class PricingContext:
    program: Program
    products: Mapping[str, ProductInfo]
    # sku -> the product's category and all its ancestors
    categories_of: Callable[[str], frozenset[str]]
    customer: Customer | None  # None: the card is UNKNOWN
    # personal offers of the customer and mass offers (a list, or already indexed)
    offers: Sequence[Offer] | OfferIndex
    available_points: int = 0  # spendable balance at `at`, before this receipt
    # Extra cap on redemption: what is left of the offline limit, or what the hub authorised.
    redeem_cap: int | None = None
    redeem_cap_source: str = "OFFLINE_LIMIT"  # or "HUB_GRANT": how the trace names the cap
    # ids of the offers unlocked by the receipt's accepted coupons (§13)
    coupon_offers: frozenset[str] = frozenset()


class PricedLine(NamedTuple):
    sku: str
    qty: Fraction
    amount: int
    eligible: bool
    discount: int = 0
    offer_id: str | None = None
    redeemed_points: int = 0
    earned_points: int = 0
    multiplier: Fraction = _ONE


# A PricedLine from its fields with no Python call (the NamedTuple's `__new__` is one).
_line = tuple.__new__


@dataclass(frozen=True)
class Priced:
    lines: tuple[PricedLine, ...]
    point_value: int
    extra_points: int
    held_out: tuple[str, ...]
    redeem_allowed_without_cap: int  # what steps 4's caps allow before the offline/hub cap
    trace: dict[str, Any] | None = None  # the contract §17, only when the receipt asks to explain
    # the offers that gave this receipt something: a line's money offer or basket deal, a
    # line's largest multiplier, an EXTRA_POINTS offer (for the coupon verdicts, §13)
    applied_offers: frozenset[str] = frozenset()
    # The nearest receipt discount not reached yet, for the display while the basket is
    # priced (§17's "Ещё 520 ₽ до скидки 5%"): (minor units missing, offer id, percent).
    # Worked out with or without a trace, so `explain` never changes the display.
    reach: tuple[int, str, str] | None = None

    def __post_init__(self) -> None:
        # The sums below, worked out in one pass and kept in the instance (the first access
        # of a cached_property takes a lock on Python 3.11, ≈ 2 µs each).
        total = discount = redeemed = earned = 0
        for line in self.lines:
            total += line.amount
            discount += line.discount
            redeemed += line.redeemed_points
            earned += line.earned_points
        vars(self).update(
            total=total,
            discount=discount,
            redeemed_points=redeemed,
            payable=total - discount - redeemed * self.point_value,
            earned_points=earned + self.extra_points,
        )

    @cached_property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)

    @cached_property
    def discount(self) -> int:
        return sum(line.discount for line in self.lines)

    @cached_property
    def redeemed_points(self) -> int:
        return sum(line.redeemed_points for line in self.lines)

    @cached_property
    def payable(self) -> int:
        return self.total - self.discount - self.redeemed_points * self.point_value

    @cached_property
    def earned_points(self) -> int:
        return sum(line.earned_points for line in self.lines) + self.extra_points


class _Work:
    """Mutable per-line state while the steps run; frozen into PricedLine at the end.

    A plain class with its own `__init__` of the five given fields: a slots dataclass's
    generated one, with the defaults as parameters, took 2.4 × as long (one a line)."""

    __slots__ = (
        "amount",
        "categories",
        "deal",
        "discount",
        "earned",
        "eligible",
        "multiplier",
        "multiplier_offer",
        "offer_id",
        "qty",
        "redeemed",
        "sku",
    )

    def __init__(
        self, sku: str, qty: Decimal, amount: int, eligible: bool, categories: frozenset[str]
    ) -> None:
        self.sku = sku
        self.qty = qty
        self.amount = amount
        self.eligible = eligible
        self.categories = categories
        self.discount = 0
        self.offer_id: str | None = None
        self.deal: str | None = None  # the basket deal (MULTIBUY) that took this line
        self.multiplier = _ONE
        self.multiplier_offer: str | None = None  # the BONUS_MULTIPLIER that set `multiplier`
        self.redeemed = 0
        self.earned = 0


# ---------------------------------------------------------------- the steps


def price(receipt: Receipt, ctx: PricingContext) -> Priced:
    if ctx.customer is None and not receipt.explain:
        return _price_unknown(receipt, ctx)
    program = ctx.program
    pv = program.point_value_minor
    customer = ctx.customer
    held: set[str] = set()  # control-group offers that would give something (`_held_out`)
    at = receipt.at

    # 1. Eligible lines.
    work: list[_Work] = []
    products = ctx.products
    categories_of = ctx.categories_of
    no_categories: frozenset[str] = frozenset()
    offered = customer is not None  # an UNKNOWN card gets no offers: no categories needed
    for line in receipt.lines:
        sku = line.sku
        product = products.get(sku)
        if product is not None and not product.excluded_from_loyalty:
            categories = categories_of(sku) if offered else no_categories
            work.append(_Work(sku, line.qty, line.amount, True, categories))
        else:
            work.append(_Work(sku, line.qty, line.amount, False, no_categories))

    index = ctx.offers if isinstance(ctx.offers, OfferIndex) else OfferIndex(ctx.offers)
    tr = _Trace(len(work)) if receipt.explain else None
    usable = _Usable(at, program, customer, ctx.coupon_offers)

    # The offers each eligible line may get: offered to this customer, valid at `at`,
    # inside its window (§14), unlocked by a coupon when it needs one (§13).
    found: list[list[Offer]] = [[] for _ in work]
    deal_kinds = False  # any QUANTITY_PRICE or MULTIBUY among them
    if customer is not None and tr is None:
        candidates = index.candidates
        opened = usable.opened
        now = usable.at_us  # `valid_at(at)` as integers (`Offer.valid_span`)
        for i, w in enumerate(work):
            if w.eligible:
                targeting = candidates(w.sku, w.categories)
                if targeting:  # most lines have none
                    usable_here = [
                        o
                        for o in targeting
                        if (o.customer_id is None or o.customer_id == customer.id)
                        and (span := o.valid_span)[0] <= now <= span[1]
                        and (not o.gated or opened(o))
                    ]
                    if usable_here:
                        found[i] = usable_here
                        deal_kinds = deal_kinds or any(o.kind in _DEAL_KINDS for o in usable_here)
    elif customer is not None and tr is not None:
        for i, w in enumerate(work):
            if w.eligible:
                found[i] = tr.usable(i, index.candidates(w.sku, w.categories), usable)
                deal_kinds = True
            else:
                tr.excluded(i, index.candidates(w.sku, categories_of(w.sku)), usable)
    # The receipt's eligible qty of each SKU, for the SKUs of lines with offers (only they
    # read it: a quantity price's tier, a multibuy's lines).
    sku_qty: dict[str, Fraction] = {}
    if deal_kinds:
        with_offers = {w.sku for w, offers in zip(work, found, strict=True) if offers}
        for w in work:
            if w.eligible and w.sku in with_offers:
                before = sku_qty.get(w.sku)
                sku_qty[w.sku] = frac(w.qty) if before is None else before + frac(w.qty)

    # Basket deals (§15): after step 1, before step 2, in (priority, id) order.
    if deal_kinds and customer is not None:
        deals: dict[str, Offer] = {}
        deal_lines: dict[str, list[int]] = {}  # a deal -> the lines it may take, in order
        for i, offers in enumerate(found):
            for o in offers:
                if o.kind == "MULTIBUY":
                    deals[o.id] = o
                    lines_of = deal_lines.setdefault(o.id, [])
                    if not lines_of or lines_of[-1] != i:
                        lines_of.append(i)
        for deal in sorted(deals.values(), key=lambda o: (o.priority, o.id)):
            _multibuy(deal, deal_lines[deal.id], work, found, customer, held, sku_qty, tr)

    # 2. Line offers.
    if customer is not None:
        for i, w in enumerate(work):
            if w.eligible and found[i]:
                _line_offers(w, found[i], customer, held, sku_qty, tr.line(i) if tr else None)

    # 3. Receipt offers.
    extra_points = 0
    extra_offers: list[str] = []  # the EXTRA_POINTS offers that added their points
    reach: list[tuple[int, str, str]] = []  # the receipt discounts not reached yet
    receipt_level: list[Offer] = []
    if customer is not None:
        targeting = index.receipt_offers()
        if tr is None:
            receipt_level = [o for o in targeting if usable(o)]
        else:
            receipt_level = tr.usable_receipt_offers(targeting, usable)
            tr.receipt_basket(sum(w.amount - w.discount for w in work if w.eligible))
        if receipt_level:
            extra_points = _receipt_offers(
                work, receipt_level, customer, held, tr, extra_offers, reach
            )

    # 4. Redemption.
    allowed_uncapped = 0
    if customer is not None:
        allowed_uncapped = _redeem_allowed(work, receipt.redeem_points, ctx, tr)
        allowed = allowed_uncapped
        if ctx.redeem_cap is not None:
            allowed = min(allowed, max(0, ctx.redeem_cap))
        _spread_redemption(work, allowed, pv)
    if tr is not None:
        tr.redemption_done(receipt.redeem_points, ctx, allowed_uncapped, customer is not None)

    # 5. Accrual: paid × rate × multiplier / (100 × pointValue) per line, as integer
    # numerators over one common denominator, split by the largest remainder.
    tier = program.tier(customer.tier if customer else None)
    birthday = customer is not None and in_birthday_window(
        customer.birthday, at.astimezone(program.zone).date(), program.birthday_window_days
    )
    base_multiplier = frac(program.birthday_multiplier) if birthday else _ONE
    if base_multiplier is not _ONE and base_multiplier < _ONE:
        base_multiplier = _ONE
    rate = frac(tier.accrual_percent)
    if base_multiplier is not _ONE:
        for i, w in enumerate(work):
            if w.eligible and w.multiplier <= base_multiplier:
                if w.multiplier_offer is not None:  # the birthday's is as large: the offer
                    if tr is not None:  # gave nothing (§5 step 5; a coupon's verdict, §13)
                        tr.beaten_by_birthday(i, w.multiplier_offer)
                    w.multiplier_offer = None
                w.multiplier = base_multiplier
    # A multiplier on a line that earns on nothing (paid in full by its discounts and the
    # points it redeems, or a tier whose rate is 0) gave the receipt nothing: its code is
    # not used up (§13). A smaller hub grant may turn such a code round (the points pay
    # less of the line): the agent asks the hub about it then (`Agent._price`). The trace
    # says so of every multiplier offer of such a line: the one the birthday's beat and a
    # control-group one too (neither would have given it anything).
    for i, w in enumerate(work):
        if w.eligible and (w.amount - w.discount - w.redeemed * pv <= 0 or not rate):
            if tr is not None:
                tr.multiplied_nothing(i)
            w.multiplier_offer = None
    # Most lines keep the shared 1 (compared by identity: Fraction comparisons are slow).
    lcm = math.lcm(*{w.multiplier.denominator for w in work if w.multiplier is not _ONE})
    denominator = 100 * pv * rate.denominator * lcm
    numerators = [
        0
        if not w.eligible
        else (w.amount - w.discount - w.redeemed * pv) * rate.numerator * lcm
        if w.multiplier is _ONE
        else (w.amount - w.discount - w.redeemed * pv)
        * rate.numerator
        * w.multiplier.numerator
        * (lcm // w.multiplier.denominator)
        for w in work
    ]
    total = sum(numerators) // denominator
    for w, share in zip(work, split_integer(numerators, denominator, total), strict=True):
        w.earned = share

    return Priced(
        lines=tuple(
            [
                _line(
                    PricedLine,
                    (
                        w.sku,
                        frac(w.qty),
                        w.amount,
                        w.eligible,
                        w.discount,
                        w.offer_id,
                        w.redeemed,
                        w.earned,
                        w.multiplier,
                    ),
                )
                for w in work
            ]
        ),
        point_value=pv,
        extra_points=extra_points,
        held_out=(
            _held_out(receipt, ctx, [*chain.from_iterable(found), *receipt_level]) if held else ()
        ),
        redeem_allowed_without_cap=allowed_uncapped,
        trace=tr.as_json(work) if tr is not None else None,
        applied_offers=frozenset(
            [w.offer_id for w in work if w.offer_id]
            + [w.multiplier_offer for w in work if w.multiplier_offer]
            + extra_offers
        ),
        reach=min(reach, key=_nearest) if reach else None,
    )


def _price_unknown(receipt: Receipt, ctx: PricingContext) -> Priced:
    """`price` for an UNKNOWN card without a trace, in one pass over the lines: no offers,
    no redemption, no birthday; each eligible line earns its share of
    paid × rate / (100 × pointValue), split by the largest remainder (step 5)."""
    program = ctx.program
    pv = program.point_value_minor
    rate = frac(program.tier(None).accrual_percent)
    products = ctx.products
    eligible: list[bool] = []
    numerators: list[int] = []
    for line in receipt.lines:
        product = products.get(line.sku)
        ok = product is not None and not product.excluded_from_loyalty
        eligible.append(ok)
        numerators.append(line.amount * rate.numerator if ok else 0)
    denominator = 100 * pv * rate.denominator
    shares = split_integer(numerators, denominator, sum(numerators) // denominator)
    return Priced(
        lines=tuple(
            [
                _line(
                    PricedLine,
                    (line.sku, frac(line.qty), line.amount, ok, 0, None, 0, earned, _ONE),
                )
                for line, ok, earned in zip(receipt.lines, eligible, shares, strict=True)
            ]
        ),
        point_value=pv,
        extra_points=0,
        held_out=(),
        redeem_allowed_without_cap=0,
        applied_offers=frozenset(),
    )


def _held_out(
    receipt: Receipt, ctx: PricingContext, candidates: Iterable[Offer]
) -> tuple[str, ...]:
    """§5 step 7: the offers that would have applied but for the control group — of the
    customer's control-group offers among the receipt's candidates, those the same receipt
    applies when priced for the customer outside every control group. Priced again, so it
    says what the target group got: not an offer a better one beat, nor one a basket deal
    took the line from, and one that beat a deal is. Run only when a control-group offer
    would have given something as the steps ran (`held`): until one did, the receipt
    priced again is this one; after it, deals may take lines otherwise, so any of the
    candidates may apply there (a deal another took the line from, a threshold met)."""
    customer = ctx.customer
    assert customer is not None
    ids = {o.id for o in candidates if in_control_group(o, customer)}
    twin = price(
        receipt.model_copy(update={"explain": False}) if receipt.explain else receipt,
        replace(ctx, customer=customer.model_copy(update={"control_groups": ()})),
    )
    return tuple(sorted(ids & twin.applied_offers))


def in_control_group(offer: Offer, customer: Customer) -> bool:
    """Whether `customer` is in the control group of `offer`'s campaign (§5.7, §7)."""
    return bool(offer.campaign_id) and offer.campaign_id in customer.control_groups


class _Usable:
    """Whether an offer may apply to this receipt at all: offered to this customer, valid at
    `at`, inside its window (§14) and unlocked by a coupon when it needs one (§13)."""

    __slots__ = ("_local", "at", "at_us", "coupons", "customer_id", "favorite", "zone")

    def __init__(
        self, at: datetime, program: Program, customer: Customer | None, coupons: frozenset[str]
    ) -> None:
        self.at = at
        self.at_us = micros(at)
        self.zone = program.zone
        self._local: datetime | None = None
        self.customer_id = customer.id if customer is not None else None
        self.favorite = customer.favorite_weekday if customer is not None else None
        self.coupons = coupons

    def __call__(self, o: Offer) -> bool:
        return (
            (o.customer_id is None or o.customer_id == self.customer_id)
            and (span := o.valid_span)[0] <= self.at_us <= span[1]
            and (not o.gated or self.opened(o))
        )

    @property
    def local(self) -> datetime:
        """`at` in the store's zone, worked out when an offer has a window (rarely)."""
        if self._local is None:
            self._local = self.at.astimezone(self.zone)
        return self._local

    def opened(self, o: Offer) -> bool:
        """Inside its window and unlocked by a coupon when it needs one."""
        return (not o.has_window or o.in_window(self.local, self.favorite)) and (
            not o.coupon_required or o.id in self.coupons
        )

    def why_not(self, o: Offer) -> str | None:
        """The trace's outcome for an offer that may not apply; None when it may."""
        if self.customer_id is None or o.customer_id not in (None, self.customer_id):
            return "NOT_OFFERED"  # not this customer's: the trace leaves it out
        if not o.valid_at(self.at) or (o.has_window and not o.in_window(self.local, self.favorite)):
            return "OUTSIDE_WINDOW"
        if o.coupon_required and o.id not in self.coupons:
            return "COUPON_MISSING"
        return None


def quantity_tier(offer: Offer, sku_qty: Fraction) -> int | None:
    """QUANTITY_PRICE: the unit price of the highest tier the SKU's receipt qty reaches."""
    best: tuple[Fraction, int] | None = None
    for tier in offer.tiers:
        reach = frac(tier.min_qty)
        if reach <= sku_qty and (best is None or reach > best[0]):
            best = (reach, tier.unit_price_minor)
    return None if best is None else best[1]


def line_discount(offer: Offer, amount: int, qty: Fraction, sku_qty: Fraction | None = None) -> int:
    """A line money offer's discount on a line (§5 step 2); `sku_qty` is the receipt's
    total eligible qty of the line's SKU (for QUANTITY_PRICE, §15)."""
    if offer.kind == "QUANTITY_PRICE":
        unit = quantity_tier(offer, qty if sku_qty is None else sku_qty)
        if unit is None:
            return 0
        discount = amount - round_half_up_ratio(unit * qty.numerator, qty.denominator)
        return max(0, min(amount, discount))
    value = frac(offer.value)
    if offer.kind == "PERCENT_OFF":
        discount = amount * value.numerator // (100 * value.denominator)
    elif offer.kind in ("AMOUNT_OFF", "FIXED_PRICE"):
        per_qty = round_half_up_ratio(
            value.numerator * qty.numerator, value.denominator * qty.denominator
        )
        discount = per_qty if offer.kind == "AMOUNT_OFF" else amount - per_qty
    else:
        return 0
    return max(0, min(amount, discount))


def _best_line_offer(
    w: _Work, offers: Sequence[Offer], customer: Customer, sku_qty: Mapping[str, Fraction]
) -> tuple[int, str]:
    """What step 2 would give the line: the largest line money offer discount, and that
    offer's id ("" when none gives anything), chosen as step 2 chooses (`_line_offers`:
    ties to the lower priority, then the smaller id), whatever order `offers` come in."""
    best: tuple[int, int, str] = (0, 0, "")  # (-discount, priority, id)
    qty = frac(w.qty)
    for offer in offers:
        if offer.kind not in LINE_MONEY_KINDS or (offer.min_qty and w.qty < offer.min_qty):
            continue
        discount = line_discount(offer, w.amount, qty, sku_qty.get(w.sku))
        if discount > 0 and not in_control_group(offer, customer):
            key = (-discount, offer.priority, offer.id)
            if not best[2] or key < best:
                best = key
    return -best[0], best[2]


def multibuy_free(lines: Sequence[tuple[int, int]], buy: int, free: int) -> list[tuple[int, bool]]:
    """MULTIBUY (§15) over lines of (amount, whole qty): per line, its free units and whether
    it put at least one unit into a complete group.

    The units are listed by unit price, dearest first (ties: the earlier line first), and cut
    into groups of buy + free; in each complete group the last `free` units are free. A
    line's units are consecutive in that list, so they are counted, not listed."""
    size = buy + free
    complete = sum(units for _, units in lines) // size * size

    def free_before(n: int) -> int:  # free units among the first n positions
        n = min(n, complete)
        return n // size * free + max(0, n % size - buy)

    order = sorted(range(len(lines)), key=lambda k: (-Fraction(lines[k][0], lines[k][1]), k))
    out = [(0, False)] * len(lines)
    position = 0
    for k in order:
        units = lines[k][1]
        out[k] = (free_before(position + units) - free_before(position), position < complete)
        position += units
    return out


def _multibuy(
    deal: Offer,
    lines: list[int],
    work: list[_Work],
    found: list[list[Offer]],
    customer: Customer,
    held: set[str],
    sku_qty: Mapping[str, Fraction],
    tr: _Trace | None,
) -> None:
    """One MULTIBUY deal: takes its lines when it beats their best line offers (§15)."""
    parts: list[int] = []
    for i in lines:  # the eligible lines the deal targets, in order
        w = work[i]
        if w.deal is not None:
            if tr is not None:
                tr.add(i, deal, "TAKEN_BY_DEAL", beaten_by=w.deal, beaten=w.discount)
        elif deal.min_qty and w.qty < deal.min_qty:
            if tr is not None:
                tr.add(i, deal, "BELOW_MIN_QTY")
        elif w.qty != w.qty.to_integral_value():
            if tr is not None:
                tr.add(i, deal, "ZERO_DISCOUNT", discount=0)  # only whole quantities take part
        else:
            parts.append(i)
    if not parts:
        return
    assert deal.buy_qty is not None and deal.free_qty is not None  # the model checks MULTIBUY
    shares = multibuy_free(
        [(work[i].amount, int(work[i].qty)) for i in parts], int(deal.buy_qty), int(deal.free_qty)
    )
    taken: list[tuple[int, int]] = []
    for i, (free_units, in_group) in zip(parts, shares, strict=True):
        if in_group:
            taken.append((i, work[i].amount * free_units // int(work[i].qty)))
        elif tr is not None:
            tr.add(i, deal, "ZERO_DISCOUNT", discount=0)  # not in a complete group
    total = sum(d for _, d in taken)
    bests = [_best_line_offer(work[i], found[i], customer, sku_qty) for i, _ in taken]
    line_offers = sum(best for best, _ in bests)
    outcome = "APPLIED" if total > line_offers else "ZERO_DISCOUNT" if total == 0 else "BEATEN"
    if outcome == "APPLIED" and in_control_group(deal, customer):
        held.add(deal.id)
        outcome = "CONTROL_GROUP"
    if outcome == "APPLIED":
        for i, discount in taken:
            w = work[i]
            w.deal = w.offer_id = deal.id
            w.discount = discount
    if tr is not None:
        winner = _group_winner(bests) if outcome == "BEATEN" else None
        for (i, discount), (best, best_id) in zip(taken, bests, strict=True):
            if winner is None:
                tr.add(i, deal, outcome, discount=discount)
            else:  # §17 "by which offer": the line's own best, else the group's (B of 2A+1B)
                by, given = (best_id, best) if best_id else winner
                tr.add(i, deal, outcome, discount=discount, beaten_by=by, beaten=given)
        tr.deals.append(
            {
                "offerId": deal.id,
                "outcome": outcome,
                "discountMinor": total,
                "lineOffersMinor": line_offers,
                "lines": [i for i, _ in taken],
            }
        )


def _group_winner(bests: Sequence[tuple[int, str]]) -> tuple[str, int] | None:
    """The line offer that gave a beaten deal's group the most (ties: the smaller id), and
    what it gave over the group: what beat the deal on a line with no offer of its own."""
    given: dict[str, int] = {}
    for best, offer_id in bests:
        if offer_id:
            given[offer_id] = given.get(offer_id, 0) + best
    return min(given.items(), key=lambda item: (-item[1], item[0])) if given else None


def _line_offers(
    w: _Work,
    offers: Sequence[Offer],
    customer: Customer,
    held: set[str],
    sku_qty: Mapping[str, Fraction],
    tr: list[dict[str, Any]] | None = None,
) -> None:
    best: tuple[int, int, str] | None = None  # (-discount, priority, id)
    best_multiplier: tuple[Fraction, int, str] | None = None  # (-multiplier, priority, id)
    competing: list[tuple[Offer, int | None]] = []  # for the trace (None: a multiplier)
    for offer in offers:  # every one targets this line's sku or one of its categories
        if offer.kind == "MULTIBUY":
            continue  # decided before this step (_multibuy)
        if offer.min_qty and w.qty < offer.min_qty:
            if tr is not None:
                tr.append(_entry(offer, "BELOW_MIN_QTY"))
            continue
        if offer.kind == "BONUS_MULTIPLIER":
            multiplier = frac(offer.value)
            if in_control_group(offer, customer):
                if multiplier > 1:
                    held.add(offer.id)
                if tr is not None:
                    tr.append(_entry(offer, "CONTROL_GROUP" if multiplier > 1 else "ZERO_DISCOUNT"))
            elif multiplier <= 1:
                if tr is not None:
                    tr.append(_entry(offer, "ZERO_DISCOUNT"))
            else:
                mkey = (-multiplier, offer.priority, offer.id)
                if best_multiplier is None or mkey < best_multiplier:
                    best_multiplier = mkey
                if tr is not None:
                    competing.append((offer, None))
            continue
        discount = line_discount(offer, w.amount, frac(w.qty), sku_qty.get(w.sku))
        if w.deal is not None and not in_control_group(offer, customer):
            if tr is not None:  # what it would give the line, as a BEATEN offer tells (§17)
                tr.append(
                    _entry(offer, "TAKEN_BY_DEAL", discount, beaten_by=w.deal, beaten=w.discount)
                )
            continue
        # A control-group offer on a deal's line goes on as on any line: held out when it
        # would give something (it may have beaten the deal: the receipt priced again says).
        if discount <= 0:
            if tr is not None:
                below = offer.kind == "QUANTITY_PRICE" and (
                    quantity_tier(offer, sku_qty.get(w.sku, Fraction(0))) is None
                )
                tr.append(
                    _entry(offer, "BELOW_MIN_QTY")
                    if below
                    else _entry(offer, "ZERO_DISCOUNT", discount=0)
                )
            continue
        if in_control_group(offer, customer):
            held.add(offer.id)
            if tr is not None:
                tr.append(_entry(offer, "CONTROL_GROUP", discount=discount))
            continue
        key = (-discount, offer.priority, offer.id)
        if best is None or key < best:
            best = key
        if tr is not None:
            competing.append((offer, discount))
    if best is not None:
        w.discount = -best[0]
        w.offer_id = best[2]
    if best_multiplier is not None:  # the same choice as the money offers': by the key
        w.multiplier = -best_multiplier[0]
        w.multiplier_offer = best_multiplier[2]
    if tr is not None:
        for offer, figure in competing:
            if offer.kind == "BONUS_MULTIPLIER":
                assert best_multiplier is not None
                won_id, beaten = best_multiplier[2], 0
            else:
                assert best is not None and figure is not None
                won_id, beaten = best[2], -best[0]
            if offer.id == won_id:
                tr.append(_entry(offer, "APPLIED", discount=figure))
            else:
                tr.append(_entry(offer, "BEATEN", figure, beaten_by=won_id, beaten=beaten))


def _receipt_offers(
    work: list[_Work],
    offers: Sequence[Offer],
    customer: Customer,
    held: set[str],
    tr: _Trace | None = None,
    extra_offers: list[str] | None = None,
    reach: list[tuple[int, str, str]] | None = None,
) -> int:
    eligible_total = sum(w.amount - w.discount for w in work if w.eligible)
    open_lines = [w for w in work if w.eligible and w.offer_id is None]

    best: tuple[int, int, str] | None = None
    best_offer: Offer | None = None
    extra = 0
    outcomes: dict[str, tuple[str, int]] = {}  # for the trace: id -> (outcome, discount/points)
    for offer in offers:
        if offer.kind not in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS"):
            continue
        if eligible_total < offer.min_total_minor:
            outcomes[offer.id] = ("BELOW_MIN_TOTAL", 0)
            if (  # a discount the customer would get with a larger basket
                reach is not None
                and offer.kind == "RECEIPT_PERCENT_OFF"
                and offer.value > 0
                and not in_control_group(offer, customer)
            ):
                reach.append((offer.min_total_minor - eligible_total, offer.id, str(offer.value)))
            continue
        if offer.kind == "EXTRA_POINTS":
            points = int(offer.value)
            if points <= 0:
                outcomes[offer.id] = ("ZERO_DISCOUNT", 0)
                continue
            if in_control_group(offer, customer):
                held.add(offer.id)
                outcomes[offer.id] = ("CONTROL_GROUP", points)
            else:
                extra += points
                if extra_offers is not None:
                    extra_offers.append(offer.id)
                outcomes[offer.id] = ("APPLIED", points)
            continue
        value = frac(offer.value)
        total = sum(w.amount * value.numerator // (100 * value.denominator) for w in open_lines)
        if total <= 0:
            outcomes[offer.id] = ("ZERO_DISCOUNT", 0)
            continue
        if in_control_group(offer, customer):
            held.add(offer.id)
            outcomes[offer.id] = ("CONTROL_GROUP", total)
            continue
        outcomes[offer.id] = ("BEATEN", total)
        key = (-total, offer.priority, offer.id)
        if best is None or key < best:
            best, best_offer = key, offer
    if best_offer is not None:
        value = frac(best_offer.value)
        outcomes[best_offer.id] = ("APPLIED", outcomes[best_offer.id][1])
        for w in open_lines:
            discount = min(w.amount, w.amount * value.numerator // (100 * value.denominator))
            if discount > 0:
                w.discount = discount
                w.offer_id = best_offer.id
    if tr is not None:
        for offer in offers:
            if offer.id not in outcomes:
                continue
            outcome, figure = outcomes[offer.id]
            row: dict[str, Any] = {
                "offerId": offer.id,
                "kind": offer.kind,
                "outcome": outcome,
                "minTotalMinor": offer.min_total_minor,
                "basketMinor": eligible_total,
                "missingMinor": max(0, offer.min_total_minor - eligible_total),
                **_receipt_terms(offer),
            }
            if offer.kind == "RECEIPT_PERCENT_OFF" and outcome != "BELOW_MIN_TOTAL":
                row["discountMinor"] = figure  # weighed: what it gives, 0 included
            if outcome == "BEATEN" and best is not None:
                row["beatenBy"] = best[2]  # ... and its discount (§17), as a line's row says
                row["beatenByDiscountMinor"] = -best[0]
            tr.receipt.append(row)
    return extra


def _receipt_terms(offer: Offer) -> dict[str, Any]:
    """What a receipt offer's trace row always tells of its terms (§17's decisions): a
    percent-off its `percent`, an EXTRA_POINTS its `points` (what it adds once the basket
    reaches its threshold), whatever its outcome."""
    if offer.kind == "EXTRA_POINTS":
        return {"points": max(0, int(offer.value))}
    return {"percent": str(offer.value)}


def _redeem_allowed(
    work: list[_Work], requested: int, ctx: PricingContext, tr: _Trace | None = None
) -> int:
    pv = ctx.program.point_value_minor
    after_discounts = sum(w.amount - w.discount for w in work if w.eligible)
    capacity = sum((w.amount - w.discount) // pv for w in work if w.eligible)
    percent = frac(ctx.program.max_redeem_percent)  # floor(after × percent / 100 / pv)
    percent_cap = after_discounts * percent.numerator // (percent.denominator * 100 * pv)
    limits = [max(0, ctx.available_points), percent_cap, capacity]
    if requested != -1:
        limits.append(requested)
    if tr is not None:
        tr.caps = [("BALANCE", limits[0]), ("PERCENT", percent_cap), ("CAPACITY", capacity)]
        if requested != -1:
            tr.caps.insert(0, ("REQUESTED", requested))
    return max(0, min(limits))


def _spread_redemption(work: list[_Work], allowed: int, pv: int) -> None:
    if allowed <= 0:
        return
    caps = [(w.amount - w.discount) // pv if w.eligible else 0 for w in work]
    total_cap = sum(caps)
    shares = split_integer([allowed * c for c in caps], total_cap, allowed)
    for w, share in zip(work, shares, strict=True):
        w.redeemed = share


# ---------------------------------------------------------------- explain (§17)


def _nearest(within: tuple[int, str, str]) -> tuple[int, Fraction, str]:
    """The receipt discount the display names (`Priced.reach`): the nearest threshold, and
    at one threshold the largest percent, which step 3 would give there (§5: the best)."""
    missing, offer_id, percent = within
    return missing, -Fraction(percent), offer_id


def _entry(
    offer: Offer,
    outcome: str,
    discount: int | None = None,
    *,
    beaten_by: str | None = None,
    beaten: int = 0,
) -> dict[str, Any]:
    """A line's trace row. `discount`: what a money offer that was weighed gives (or would
    give) the line, 0 included; None for an offer set aside before it was weighed and for
    a multiplier, which gives no money (§17's decisions: one rule for every row)."""
    row: dict[str, Any] = {"offerId": offer.id, "kind": offer.kind, "outcome": outcome}
    if discount is not None:
        row["discountMinor"] = discount
    if beaten_by is not None:
        row["beatenBy"] = beaten_by
        row["beatenByDiscountMinor"] = beaten
    return row


# What a line's multiplier offer is BEATEN by when the birthday multiplier is as large.
BIRTHDAY = "birthdayMultiplier"


class _Trace:
    """What §17's trace reports, collected while the steps run; never read by them."""

    def __init__(self, lines: int) -> None:
        self.lines: list[list[dict[str, Any]]] = [[] for _ in range(lines)]
        self.deals: list[dict[str, Any]] = []
        self.receipt: list[dict[str, Any]] = []
        self.caps: list[tuple[str, int]] = []
        self.redemption: dict[str, Any] = {}

    def line(self, i: int) -> list[dict[str, Any]]:
        return self.lines[i]

    def add(self, i: int, offer: Offer, outcome: str, **more: Any) -> None:
        self.lines[i].append(_entry(offer, outcome, **more))

    def beaten_by_birthday(self, i: int, offer_id: str) -> None:
        """The line's multiplier offer, no larger than the birthday multiplier: BEATEN by
        `birthdayMultiplier` (the program's field; it is no offer), and so are the line's
        smaller multiplier offers, which that offer had beaten: the birthday's is what the
        line earns at."""
        for row in self.lines[i]:
            if row["offerId"] == offer_id and row["outcome"] == "APPLIED":
                row.update(outcome="BEATEN", beatenBy=BIRTHDAY, beatenByDiscountMinor=0)
            elif row["outcome"] == "BEATEN" and row.get("beatenBy") == offer_id:
                row.update(beatenBy=BIRTHDAY, beatenByDiscountMinor=0)

    def multiplied_nothing(self, i: int) -> None:
        """The line earns on nothing: its multiplier offers, the one it got, those that
        one or the birthday's beat and a control-group one, give nothing (ZERO_DISCOUNT, as
        a money offer whose discount is 0)."""
        for row in self.lines[i]:
            if row["kind"] == "BONUS_MULTIPLIER" and row["outcome"] in (
                "APPLIED",
                "BEATEN",
                "CONTROL_GROUP",
            ):
                row.pop("beatenBy", None)
                row.pop("beatenByDiscountMinor", None)
                row["outcome"] = "ZERO_DISCOUNT"

    def usable(self, i: int, targeting: Iterable[Offer], usable: _Usable) -> list[Offer]:
        out = []
        for offer in targeting:
            why = usable.why_not(offer)
            if why is None:
                out.append(offer)
            elif why != "NOT_OFFERED":
                self.add(i, offer, why)
        return out

    def excluded(self, i: int, targeting: Iterable[Offer], usable: _Usable) -> None:
        for offer in targeting:
            if usable.why_not(offer) != "NOT_OFFERED":
                self.add(i, offer, "EXCLUDED_PRODUCT")

    def usable_receipt_offers(self, targeting: Iterable[Offer], usable: _Usable) -> list[Offer]:
        out = []
        for offer in targeting:
            why = usable.why_not(offer)
            if why is None:
                out.append(offer)
            elif why != "NOT_OFFERED":
                self.receipt.append(
                    {
                        "offerId": offer.id,
                        "kind": offer.kind,
                        "outcome": why,
                        "minTotalMinor": offer.min_total_minor,
                        **_receipt_terms(offer),
                    }
                )
        return out

    def receipt_basket(self, eligible_total: int) -> None:
        """The basket a receipt offer set aside (outside its window, its coupon missing, ...)
        was judged against, and how much more its threshold needs: §17 asks it of every
        receipt offer (and proto3's 0 would read "met")."""
        for i, row in enumerate(self.receipt):
            if "basketMinor" not in row:
                head = {k: row.pop(k) for k in ("offerId", "kind", "outcome", "minTotalMinor")}
                self.receipt[i] = {
                    **head,
                    "basketMinor": eligible_total,
                    "missingMinor": max(0, head["minTotalMinor"] - eligible_total),
                    **row,  # its terms (`_receipt_terms`), in the order a weighed row has
                }

    def redemption_done(
        self, requested: int, ctx: PricingContext, allowed_uncapped: int, known: bool
    ) -> None:
        caps = list(self.caps) if known else []
        allowed = allowed_uncapped
        if known and ctx.redeem_cap is not None:
            caps.append((ctx.redeem_cap_source, max(0, ctx.redeem_cap)))
            allowed = min(allowed, max(0, ctx.redeem_cap))
        # the first cap (in the order listed) that is what was allowed
        bound = next((name for name, points in caps if points == allowed), "")
        if not known:
            bound = "UNKNOWN_CARD"
        self.redemption = {
            "requestedPoints": requested,
            "caps": [{"name": name, "points": points} for name, points in caps],
            "allowedPoints": allowed,
            "boundBy": bound,
        }

    def as_json(self, work: Sequence[_Work]) -> dict[str, Any]:
        lines = []
        for i, (w, entries) in enumerate(zip(work, self.lines, strict=True)):
            for row in entries:  # a deal beaten by the line offers: by the one the line got
                if row["outcome"] == "BEATEN" and "beatenBy" not in row and w.offer_id:
                    row["beatenBy"] = w.offer_id
                    row["beatenByDiscountMinor"] = w.discount
            entries.sort(key=lambda row: str(row["offerId"]))
            lines.append({"index": i, "sku": w.sku, "offers": entries})
        return {
            "lines": lines,
            "deals": self.deals,
            "receiptOffers": sorted(self.receipt, key=lambda row: str(row["offerId"])),
            "redemption": self.redemption,
        }


# ---------------------------------------------------------------- birthdays and time


def birthday_in(year: int, birthday: date) -> date:
    """The birthday's date in `year`; 29 February falls on 28 February in other years."""
    try:
        return birthday.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def in_birthday_window(birthday: date | None, today: date, window_days: int) -> bool:
    """True on the next birthday or at most `window_days` days before it (across new year)."""
    if birthday is None:
        return False
    upcoming = birthday_in(today.year, birthday)
    if upcoming < today:
        upcoming = birthday_in(today.year + 1, birthday)
    return (upcoming - today).days <= window_days


def activation_time(at: datetime, program: Program) -> datetime:
    """`activationDelayDays` later, at the same local clock time (the contract §5 step 6)."""
    return days_later(at, program.activation_delay_days, program.zone)


# ---------------------------------------------------------------- offers to print (§7)


def offers_to_print(
    customer: Customer,
    offers: Sequence[Offer],
    at: datetime,
    program: Program,
    printed_recently: Callable[[str], bool],
) -> list[Offer]:
    horizon = store_days(at, PRINT_HORIZON_DAYS, program.zone)
    local = at.astimezone(program.zone)
    chosen = [
        o
        for o in offers
        if o.customer_id == customer.id  # the customer's own offers (§7), not the mass ones
        and may_go_on_paper(o, customer)
        and (o.valid_to is None or last_instant(o.valid_to) >= at)
        and (o.valid_from is None or o.valid_from <= horizon)
        # valid now but outside its window (§14): not printed for this visit
        and not (
            o.has_window and o.valid_at(at) and not o.in_window(local, customer.favorite_weekday)
        )
        and not printed_recently(o.id)
    ]
    chosen.sort(key=lambda o: (o.rank, o.id))
    return chosen[: min(program.max_offers_printed, OFFERS_PRINTED_MAX)]


def may_go_on_paper(offer: Offer, customer: Customer | None) -> bool:
    """Whether the snapshot lets `offer` go on paper (§7), whatever the moment: it is
    `printable`, and an offer of a customer's own for `customer`, who is still in the
    cache (None: removed since, card closed or data erased, so no card brings them to a
    till and no one else may use the offer) and not in its campaign's control group. The
    one test of both `offers_to_print` (which adds the time, the window and the cooldown)
    and `Agent.offers_on_paper` (a queued coupon job, asked again before it prints). A mass
    offer (no `customer_id`: no customer's id equals it) never goes on paper: §7 prints a
    customer's own offers, and a delta may make a queued coupon's offer a mass one."""
    return (
        offer.printable
        and customer is not None
        and customer.id == offer.customer_id
        and not in_control_group(offer, customer)
    )


# "starting within 7 days" (the contract §7)
PRINT_HORIZON_DAYS = 7


def store_days(at: datetime, days: int, zone: ZoneInfo | None) -> datetime:
    """`days` store days from `at` (negative: before it) at the same local clock time in
    `zone`, as §5 step 6 counts days across a daylight-saving change: the §7 horizon and
    print cooldown. With no zone, or past the calendar's end, `days` × 24 hours."""
    if zone is not None:
        with contextlib.suppress(OverflowError):
            return days_later(at, days, zone)
    return at + timedelta(days=days)


# The most offers one receipt prints, whatever `maxOffersPrinted` says: what one print job
# holds (printer/payload.py). A job of more failed at the printer, every coupon with it.
OFFERS_PRINTED_MAX = 50
