"""The pricing engine (the contract §5): plain functions over frozen models, no I/O.

Everything the rules need is passed in a `PricingContext`; storage, clock and the hub
stay at the edges. Amounts are integers; quantities, rates and shares are exact
`Fraction`s inside a calculation and never leave it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from typing import NamedTuple, Protocol

from .models import LINE_MONEY_KINDS, Customer, Offer, Program, Receipt
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

    __slots__ = ("_lineages", "also", "by_category", "by_sku", "receipt_level")

    def __init__(self, offers: Iterable[Offer], also: OfferIndex | None = None) -> None:
        self.by_sku: dict[str, list[Offer]] = {}
        self.by_category: dict[str, list[Offer]] = {}
        self.receipt_level: list[Offer] = []
        self.also = also
        # a category and its ancestors -> their offers (lines of one category share it)
        self._lineages: dict[frozenset[str], list[Offer]] = {}
        for o in offers:
            if o.kind in _LINE_KINDS:
                for sku in set(o.skus):
                    self.by_sku.setdefault(sku, []).append(o)
                for category in set(o.categories):
                    self.by_category.setdefault(category, []).append(o)
            else:
                self.receipt_level.append(o)

    def candidates(self, sku: str, categories: frozenset[str]) -> list[Offer]:
        """Every offer targeting the sku or one of the categories, each once."""
        found: list[Offer] = []
        part: OfferIndex | None = self
        while part is not None:
            found.extend(part.by_sku.get(sku, ()))
            if part.by_category:
                found.extend(part._of_categories(categories))
            part = part.also
        if len(found) > 1:
            found = list({o.id: o for o in found}.values())
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


_LINE_KINDS = LINE_MONEY_KINDS | {"BONUS_MULTIPLIER"}
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


@dataclass(frozen=True)
class Priced:
    lines: tuple[PricedLine, ...]
    point_value: int
    extra_points: int
    held_out: tuple[str, ...]
    redeem_allowed_without_cap: int  # what steps 4's caps allow before the offline/hub cap

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


@dataclass(slots=True)
class _Work:
    """Mutable per-line state while the steps run; frozen into PricedLine at the end."""

    sku: str
    qty: Decimal
    amount: int
    eligible: bool
    categories: frozenset[str]
    discount: int = 0
    offer_id: str | None = None
    multiplier: Fraction = _ONE
    redeemed: int = 0
    earned: int = 0


# ---------------------------------------------------------------- the steps


def price(receipt: Receipt, ctx: PricingContext) -> Priced:
    program = ctx.program
    pv = program.point_value_minor
    customer = ctx.customer
    held: set[str] = set()
    at = receipt.at

    # 1. Eligible lines.
    work: list[_Work] = []
    products = ctx.products
    categories_of = ctx.categories_of
    no_categories: frozenset[str] = frozenset()
    for line in receipt.lines:
        product = products.get(line.sku)
        eligible = product is not None and not product.excluded_from_loyalty
        work.append(
            _Work(
                line.sku,
                line.qty,
                line.amount,
                eligible,
                categories_of(line.sku) if eligible else no_categories,
            )
        )

    index = ctx.offers if isinstance(ctx.offers, OfferIndex) else OfferIndex(ctx.offers)

    # 2. Line offers.
    if customer is not None:
        for w in work:
            if w.eligible:
                found = [
                    o
                    for o in index.candidates(w.sku, w.categories)
                    if _offered_to(o, customer) and o.valid_at(at)
                ]
                if found:
                    _line_offers(w, found, customer, held)

    # 3. Receipt offers.
    extra_points = 0
    if customer is not None:
        receipt_level = [
            o for o in index.receipt_offers() if _offered_to(o, customer) and o.valid_at(at)
        ]
        if receipt_level:
            extra_points = _receipt_offers(work, receipt_level, customer, held)

    # 4. Redemption.
    allowed_uncapped = 0
    if customer is not None:
        allowed_uncapped = _redeem_allowed(work, receipt.redeem_points, ctx)
        allowed = allowed_uncapped
        if ctx.redeem_cap is not None:
            allowed = min(allowed, max(0, ctx.redeem_cap))
        _spread_redemption(work, allowed, pv)

    # 5. Accrual: paid × rate × multiplier / (100 × pointValue) per line, as integer
    # numerators over one common denominator, split by the largest remainder.
    tier = program.tier(customer.tier if customer else None)
    birthday = customer is not None and in_birthday_window(
        customer.birthday, at.astimezone(program.zone).date(), program.birthday_window_days
    )
    base_multiplier = frac(program.birthday_multiplier) if birthday else _ONE
    if base_multiplier < _ONE:
        base_multiplier = _ONE
    rate = frac(tier.accrual_percent)
    if base_multiplier is not _ONE:
        for w in work:
            if w.eligible and w.multiplier < base_multiplier:
                w.multiplier = base_multiplier
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
            PricedLine(
                w.sku,
                frac(w.qty),
                w.amount,
                w.eligible,
                w.discount,
                w.offer_id,
                w.redeemed,
                w.earned,
                w.multiplier,
            )
            for w in work
        ),
        point_value=pv,
        extra_points=extra_points,
        held_out=tuple(sorted(held)),
        redeem_allowed_without_cap=allowed_uncapped,
    )


def _offered_to(offer: Offer, customer: Customer | None) -> bool:
    """Personal to this customer, or a mass offer; an UNKNOWN card gets no offers."""
    if customer is None:
        return False
    return offer.customer_id is None or offer.customer_id == customer.id


def _in_control_group(offer: Offer, customer: Customer) -> bool:
    return bool(offer.campaign_id) and offer.campaign_id in customer.control_groups


def line_discount(offer: Offer, amount: int, qty: Fraction) -> int:
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


def _line_offers(w: _Work, offers: Sequence[Offer], customer: Customer, held: set[str]) -> None:
    best: tuple[int, int, str] | None = None  # (-discount, priority, id)
    for offer in offers:  # every one targets this line's sku or one of its categories
        if offer.min_qty and w.qty < offer.min_qty:
            continue
        if offer.kind == "BONUS_MULTIPLIER":
            multiplier = frac(offer.value)
            if _in_control_group(offer, customer):
                if multiplier > 1:
                    held.add(offer.id)
            elif multiplier > w.multiplier:
                w.multiplier = multiplier
            continue
        discount = line_discount(offer, w.amount, frac(w.qty))
        if discount <= 0:
            continue
        if _in_control_group(offer, customer):
            held.add(offer.id)
            continue
        key = (-discount, offer.priority, offer.id)
        if best is None or key < best:
            best = key
    if best is not None:
        w.discount = -best[0]
        w.offer_id = best[2]


def _receipt_offers(
    work: list[_Work], offers: Sequence[Offer], customer: Customer, held: set[str]
) -> int:
    eligible_total = sum(w.amount - w.discount for w in work if w.eligible)
    open_lines = [w for w in work if w.eligible and w.offer_id is None]

    best: tuple[int, int, str] | None = None
    best_offer: Offer | None = None
    extra = 0
    for offer in offers:
        if offer.kind not in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS"):
            continue
        if eligible_total < offer.min_total_minor:
            continue
        if offer.kind == "EXTRA_POINTS":
            points = int(offer.value)
            if points <= 0:
                continue
            if _in_control_group(offer, customer):
                held.add(offer.id)
            else:
                extra += points
            continue
        value = frac(offer.value)
        total = sum(w.amount * value.numerator // (100 * value.denominator) for w in open_lines)
        if total <= 0:
            continue
        if _in_control_group(offer, customer):
            held.add(offer.id)
            continue
        key = (-total, offer.priority, offer.id)
        if best is None or key < best:
            best, best_offer = key, offer
    if best_offer is not None:
        value = frac(best_offer.value)
        for w in open_lines:
            discount = min(w.amount, w.amount * value.numerator // (100 * value.denominator))
            if discount > 0:
                w.discount = discount
                w.offer_id = best_offer.id
    return extra


def _redeem_allowed(work: list[_Work], requested: int, ctx: PricingContext) -> int:
    pv = ctx.program.point_value_minor
    after_discounts = sum(w.amount - w.discount for w in work if w.eligible)
    capacity = sum((w.amount - w.discount) // pv for w in work if w.eligible)
    percent_cap = math.floor(
        Fraction(after_discounts) * frac(ctx.program.max_redeem_percent) / 100 / pv
    )
    limits = [max(0, ctx.available_points), percent_cap, capacity]
    if requested != -1:
        limits.append(requested)
    return max(0, min(limits))


def _spread_redemption(work: list[_Work], allowed: int, pv: int) -> None:
    if allowed <= 0:
        return
    caps = [(w.amount - w.discount) // pv if w.eligible else 0 for w in work]
    total_cap = sum(caps)
    shares = split_integer([allowed * c for c in caps], total_cap, allowed)
    for w, share in zip(work, shares, strict=True):
        w.redeemed = share


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
    local = at.astimezone(program.zone)
    naive = local.replace(tzinfo=None) + timedelta(days=program.activation_delay_days)
    return naive.replace(tzinfo=program.zone)


# ---------------------------------------------------------------- offers to print (§7)


def offers_to_print(
    customer: Customer,
    offers: Sequence[Offer],
    at: datetime,
    program: Program,
    printed_recently: Callable[[str], bool],
) -> list[Offer]:
    horizon = at + timedelta(days=7)
    chosen = [
        o
        for o in offers
        if o.printable
        and o.customer_id == customer.id
        and (o.valid_to is None or o.valid_to >= at)
        and (o.valid_from is None or o.valid_from <= horizon)
        and not _in_control_group(o, customer)
        and not printed_recently(o.id)
    ]
    chosen.sort(key=lambda o: (o.rank, o.id))
    return chosen[: program.max_offers_printed]
