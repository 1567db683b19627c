"""The pricing engine as it was before its fast path (issue 15), kept as the reference the
fast one is checked against (tests/test_pricing_fast.py). Not imported by the agent.

The pricing engine (the contract §5): plain functions over frozen models, no I/O.

Everything the rules need is passed in a `PricingContext`; storage, clock and the hub
stay at the edges. Amounts are integers; quantities, rates and shares are exact
`Fraction`s inside a calculation and never leave it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from typing import Any, NamedTuple, Protocol

from tillpoint.agent.models import LINE_MONEY_KINDS, Customer, Offer, Program, Receipt
from tillpoint.agent.money import frac, round_half_up_ratio


def split_integer(numerators: Sequence[int], denominator: int, total: int) -> list[int]:
    """money.split_integer as it was."""
    shares = [n // denominator for n in numerators]
    missing = total - sum(shares)
    if missing <= 0:
        return shares
    order = sorted(range(len(numerators)), key=lambda i: (-(numerators[i] % denominator), i))
    for i in order[:missing]:
        shares[i] += 1
    return shares


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


_LINE_KINDS = LINE_MONEY_KINDS | {"BONUS_MULTIPLIER", "MULTIBUY"}
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
    deal: str | None = None  # the basket deal (MULTIBUY) that took this line
    multiplier: Fraction = _ONE
    multiplier_offer: str | None = None  # the BONUS_MULTIPLIER that set `multiplier`
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
    tr = _Trace(len(work)) if receipt.explain else None
    usable = _Usable(at, program, customer, ctx.coupon_offers)

    # The offers each eligible line may get: offered to this customer, valid at `at`,
    # inside its window (§14), unlocked by a coupon when it needs one (§13).
    found: list[list[Offer]] = [[] for _ in work]
    deal_kinds = False  # any QUANTITY_PRICE or MULTIBUY among them
    if customer is not None:
        for i, w in enumerate(work):
            if w.eligible:
                targeting = index.candidates(w.sku, w.categories)
                if tr is None:
                    found[i] = [
                        o
                        for o in targeting
                        if _offered_to(o, customer)
                        and o.valid_at(at)
                        and (not o.gated or usable.opened(o))
                    ]
                    deal_kinds = deal_kinds or any(o.kind in _DEAL_KINDS for o in found[i])
                else:
                    found[i] = tr.usable(i, targeting, usable)
                    deal_kinds = True
            elif tr is not None:
                tr.excluded(i, index.candidates(w.sku, categories_of(w.sku)), usable)
    sku_qty: dict[str, Fraction] = {}
    if deal_kinds:
        for w in work:
            if w.eligible:
                sku_qty[w.sku] = sku_qty.get(w.sku, Fraction(0)) + frac(w.qty)

    # Basket deals (§15): after step 1, before step 2, in (priority, id) order.
    if deal_kinds and customer is not None:
        deals = {o.id: o for offers in found for o in offers if o.kind == "MULTIBUY"}
        for deal in sorted(deals.values(), key=lambda o: (o.priority, o.id)):
            _multibuy(deal, work, found, customer, held, sku_qty, tr)

    # 2. Line offers.
    if customer is not None:
        for i, w in enumerate(work):
            if w.eligible and found[i]:
                _line_offers(w, found[i], customer, held, sku_qty, tr.line(i) if tr else None)

    # 3. Receipt offers.
    extra_points = 0
    extra_offers: list[str] = []  # the EXTRA_POINTS offers that added their points
    if customer is not None:
        targeting = index.receipt_offers()
        if tr is None:
            receipt_level = [o for o in targeting if usable(o)]
        else:
            receipt_level = tr.usable_receipt_offers(targeting, usable)
            tr.receipt_basket(sum(w.amount - w.discount for w in work if w.eligible))
        if receipt_level:
            extra_points = _receipt_offers(work, receipt_level, customer, held, tr, extra_offers)

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
    if base_multiplier < _ONE:
        base_multiplier = _ONE
    rate = frac(tier.accrual_percent)
    if base_multiplier is not _ONE:
        for i, w in enumerate(work):
            if w.eligible and w.multiplier <= base_multiplier:
                if w.multiplier_offer is not None:  # the birthday's is as large: it gave nothing
                    if tr is not None:
                        for row in tr.lines[i]:
                            if row["offerId"] == w.multiplier_offer and row["outcome"] == "APPLIED":
                                row.update(
                                    outcome="BEATEN",
                                    beatenBy="birthdayMultiplier",
                                    beatenByDiscountMinor=0,
                                )
                            elif (
                                row["outcome"] == "BEATEN"
                                and row.get("beatenBy") == w.multiplier_offer
                            ):  # what that offer beat, the birthday's beat too
                                row.update(beatenBy="birthdayMultiplier", beatenByDiscountMinor=0)
                    w.multiplier_offer = None
                w.multiplier = base_multiplier
    # A line that earns on nothing (free after its discounts and the points it redeems, or
    # a rate of 0): its multiplier offers gave nothing (review 27; the points, review 29),
    # a control-group one included, which would have given nothing either (review 29).
    for i, w in enumerate(work):
        if w.eligible and (w.amount - w.discount - w.redeemed * pv <= 0 or rate == 0):
            if tr is not None:
                for row in tr.lines[i]:
                    gave = row["outcome"] in ("APPLIED", "BEATEN", "CONTROL_GROUP")
                    if row["kind"] == "BONUS_MULTIPLIER" and gave:
                        row.pop("beatenBy", None)
                        row.pop("beatenByDiscountMinor", None)
                        row["outcome"] = "ZERO_DISCOUNT"
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
        held_out=_held_out(receipt, ctx),
        redeem_allowed_without_cap=allowed_uncapped,
        trace=tr.as_json(work) if tr is not None else None,
        applied_offers=frozenset(
            [w.offer_id for w in work if w.offer_id]
            + [w.multiplier_offer for w in work if w.multiplier_offer]
            + extra_offers
        ),
    )


def _offered_to(offer: Offer, customer: Customer | None) -> bool:
    """Personal to this customer, or a mass offer; an UNKNOWN card gets no offers."""
    if customer is None:
        return False
    return offer.customer_id is None or offer.customer_id == customer.id


def _held_out(receipt: Receipt, ctx: PricingContext) -> tuple[str, ...]:
    """§5 step 7 by its words: the control-group offers that applied when the customer is
    in no control group (every offer of the context, not only the receipt's candidates)."""
    customer = ctx.customer
    if customer is None or not customer.control_groups:
        return ()
    offers = ctx.offers if isinstance(ctx.offers, OfferIndex) else OfferIndex(ctx.offers)
    ours: set[str] = set()
    part: OfferIndex | None = offers
    while part is not None:
        for group in (*part.by_sku.values(), *part.by_category.values(), part.receipt_level):
            ours.update(o.id for o in group if _in_control_group(o, customer))
        part = part.also
    twin = price(
        receipt.model_copy(update={"explain": False}),
        replace(ctx, customer=customer.model_copy(update={"control_groups": ()})),
    )
    return tuple(sorted(ours & twin.applied_offers))


def _in_control_group(offer: Offer, customer: Customer) -> bool:
    return bool(offer.campaign_id) and offer.campaign_id in customer.control_groups


class _Usable:
    """Whether an offer may apply to this receipt at all: offered to this customer, valid at
    `at`, inside its window (§14) and unlocked by a coupon when it needs one (§13)."""

    __slots__ = ("at", "coupons", "customer_id", "favorite", "local")

    def __init__(
        self, at: datetime, program: Program, customer: Customer | None, coupons: frozenset[str]
    ) -> None:
        self.at = at
        self.local = at.astimezone(program.zone)
        self.customer_id = customer.id if customer is not None else None
        self.favorite = customer.favorite_weekday if customer is not None else None
        self.coupons = coupons

    def __call__(self, o: Offer) -> bool:
        return (
            (o.customer_id is None or o.customer_id == self.customer_id)
            and o.valid_at(self.at)
            and (not o.gated or self.opened(o))
        )

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


def _best_line_discount(
    w: _Work, offers: Sequence[Offer], customer: Customer, sku_qty: Mapping[str, Fraction]
) -> int:
    """What step 2 would give the line: the largest line money offer discount."""
    best = 0
    qty = frac(w.qty)
    for offer in offers:
        if offer.kind not in LINE_MONEY_KINDS or (offer.min_qty and w.qty < offer.min_qty):
            continue
        discount = line_discount(offer, w.amount, qty, sku_qty.get(w.sku))
        if discount > best and not _in_control_group(offer, customer):
            best = discount
    return best


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
    work: list[_Work],
    found: list[list[Offer]],
    customer: Customer,
    held: set[str],
    sku_qty: Mapping[str, Fraction],
    tr: _Trace | None,
) -> None:
    """One MULTIBUY deal: takes its lines when it beats their best line offers (§15)."""
    parts: list[int] = []
    for i, w in enumerate(work):
        if not w.eligible or not any(o.id == deal.id for o in found[i]):
            continue
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
    line_offers = sum(_best_line_discount(work[i], found[i], customer, sku_qty) for i, _ in taken)
    outcome = "APPLIED" if total > line_offers else "ZERO_DISCOUNT" if total == 0 else "BEATEN"
    if outcome == "APPLIED" and _in_control_group(deal, customer):
        held.add(deal.id)
        outcome = "CONTROL_GROUP"
    if outcome == "APPLIED":
        for i, discount in taken:
            w = work[i]
            w.deal = w.offer_id = deal.id
            w.discount = discount
    if tr is not None:
        for i, discount in taken:
            tr.add(i, deal, outcome, discount=discount)
        tr.deals.append(
            {
                "offerId": deal.id,
                "outcome": outcome,
                "discountMinor": total,
                "lineOffersMinor": line_offers,
                "lines": [i for i, _ in taken],
            }
        )


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
            if _in_control_group(offer, customer):
                if multiplier > 1:
                    held.add(offer.id)
                if tr is not None:
                    tr.append(_entry(offer, "CONTROL_GROUP" if multiplier > 1 else "ZERO_DISCOUNT"))
            elif multiplier <= 1:
                if tr is not None:
                    tr.append(_entry(offer, "ZERO_DISCOUNT"))
            else:  # the largest; ties to the lower priority, then the smaller id
                mkey = (-multiplier, offer.priority, offer.id)
                if best_multiplier is None or mkey < best_multiplier:
                    best_multiplier = mkey
                if tr is not None:
                    competing.append((offer, None))
            continue
        discount = line_discount(offer, w.amount, frac(w.qty), sku_qty.get(w.sku))
        if w.deal is not None and not _in_control_group(offer, customer):
            if tr is not None:  # what it would give the line (review 29)
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
        if _in_control_group(offer, customer):
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
    if best_multiplier is not None:
        w.multiplier = -best_multiplier[0]
        w.multiplier_offer = best_multiplier[2]
    if tr is not None:
        for offer, discount in competing:
            if offer.kind == "BONUS_MULTIPLIER":
                assert best_multiplier is not None
                won_id, beaten = best_multiplier[2], 0
            else:
                assert best is not None
                won_id, beaten = best[2], -best[0]
            if offer.id == won_id:
                tr.append(_entry(offer, "APPLIED", discount=discount))
            else:
                tr.append(_entry(offer, "BEATEN", discount, beaten_by=won_id, beaten=beaten))


def _receipt_offers(
    work: list[_Work],
    offers: Sequence[Offer],
    customer: Customer,
    held: set[str],
    tr: _Trace | None = None,
    extra_offers: list[str] | None = None,
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
            continue
        if offer.kind == "EXTRA_POINTS":
            points = int(offer.value)
            if points <= 0:
                outcomes[offer.id] = ("ZERO_DISCOUNT", 0)
                continue
            if _in_control_group(offer, customer):
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
        if _in_control_group(offer, customer):
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
            }
            # review 30: its terms always, a discount once weighed (CONTRACT §17)
            if offer.kind == "EXTRA_POINTS":
                row["points"] = max(0, int(offer.value))
            else:
                row["percent"] = str(offer.value)
                if outcome != "BELOW_MIN_TOTAL":
                    row["discountMinor"] = figure
            if outcome == "BEATEN" and best is not None:
                row["beatenBy"] = best[2]
                row["beatenByDiscountMinor"] = -best[0]
            tr.receipt.append(row)
    return extra


def _redeem_allowed(
    work: list[_Work], requested: int, ctx: PricingContext, tr: _Trace | None = None
) -> int:
    pv = ctx.program.point_value_minor
    after_discounts = sum(w.amount - w.discount for w in work if w.eligible)
    capacity = sum((w.amount - w.discount) // pv for w in work if w.eligible)
    percent_cap = math.floor(
        Fraction(after_discounts) * frac(ctx.program.max_redeem_percent) / 100 / pv
    )
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


def _entry(
    offer: Offer,
    outcome: str,
    discount: int | None = None,
    *,
    beaten_by: str | None = None,
    beaten: int = 0,
) -> dict[str, Any]:
    row: dict[str, Any] = {"offerId": offer.id, "kind": offer.kind, "outcome": outcome}
    if discount is not None:  # weighed money offers, 0 included (review 30)
        row["discountMinor"] = discount
    if beaten_by is not None:
        row["beatenBy"] = beaten_by
        row["beatenByDiscountMinor"] = beaten
    return row


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
                        **(
                            {"points": max(0, int(offer.value))}
                            if offer.kind == "EXTRA_POINTS"
                            else {"percent": str(offer.value)}
                        ),
                    }
                )
        return out

    def receipt_basket(self, eligible_total: int) -> None:
        for row in self.receipt:
            if "basketMinor" not in row:
                row["basketMinor"] = eligible_total
                row["missingMinor"] = max(0, row["minTotalMinor"] - eligible_total)

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
    local = at.astimezone(program.zone)
    # "starting within 7 days": store days, at the same local clock time (as §5 step 6)
    horizon = (local.replace(tzinfo=None) + timedelta(days=7)).replace(tzinfo=program.zone)
    chosen = [
        o
        for o in offers
        if o.printable
        and o.customer_id == customer.id
        # an end in whole seconds holds through that second (CONTRACT §2, review 30)
        and (
            o.valid_to is None
            or o.valid_to + timedelta(microseconds=999_999) * (not o.valid_to.microsecond) >= at
        )
        and (o.valid_from is None or o.valid_from <= horizon)
        # valid now but outside its window (§14): not printed for this visit
        and not (
            o.has_window and o.valid_at(at) and not o.in_window(local, customer.favorite_weekday)
        )
        and not _in_control_group(o, customer)
        and not printed_recently(o.id)
    ]
    chosen.sort(key=lambda o: (o.rank, o.id))
    return chosen[: program.max_offers_printed]
