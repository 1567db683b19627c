"""A plain reference model of how a receipt is priced (review 28, orc28).

Written from docs/CONTRACT.md §2, §3, §5, §13, §14, §15, §16 and the decisions beside
them only, without reading the product's pricing code: a test helper that the
differential test (tests/test_review28_orc28.py) compares the product's quote with.
Integers and Fractions only. It prices one receipt on a freshly loaded till (no ledger
of its own: nothing spent on this store-day, no coupon used yet), OFFLINE (no hub).

Scope: FOUND and UNKNOWN cards (BLOCKED and INVALID are refused before pricing).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

MONEY_KINDS = ("PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE")

# §3: program defaults (absent program fields take the defaults shown)
PROGRAM_DEFAULTS: dict[str, Any] = {
    "currency": "RUB",
    "timezone": "Europe/Moscow",
    "pointValueMinor": 100,
    "maxRedeemPercent": 30,
    "activationDelayDays": 0,
    "offlineRedeemLimitPoints": 500,
    "birthdayMultiplier": 5,
    "birthdayWindowDays": 7,
    "pointsLifetimeDays": 0,
    "tiers": [{"code": "base", "accrualPercent": "3"}, {"code": "gold", "accrualPercent": "7"}],
}


def frac(text: Any) -> Fraction:
    """A decimal string (or int) as an exact Fraction (§2: quantities, rates, values)."""
    return Fraction(str(text))


def rhu(value: Fraction) -> int:
    """§2 round_half_up; CONTRACT §2 decision: halves away from zero."""
    if value >= 0:
        return math.floor(value + Fraction(1, 2))
    return -math.floor(-value + Fraction(1, 2))


def ts(text: str) -> datetime:
    """§2: RFC 3339 with an offset."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def end_of(text: str) -> datetime:
    """An inclusive end (`validTo`, `expiresAt`) as the last moment it counts: written in
    whole seconds it holds through that second (CONTRACT §2's decisions, review 30)."""
    return through(ts(text))


def through(end: datetime) -> datetime:
    return end if end.microsecond else end.replace(microsecond=999_999)


def normal_code(text: str) -> str:
    """§13: scanned codes: blanks and dashes dropped, letters upper-cased."""
    drop = set(" \t\r\n-\u2010\u2011\u2012\u2013\u2014\u2212")
    return "".join(ch for ch in text if ch not in drop).upper()


def _clock(text: str) -> int:
    """A `HH:MM[:SS]` clock time in seconds of the day (`24:00` is the end of the day)."""
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.append(0)
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def largest_remainder(total: int, weights: list[Fraction]) -> list[int]:
    """`total` spread over `weights` by largest remainder, ties to the earlier entry
    (§5 step 4 and step 5 use the same rule)."""
    whole = sum(weights)
    if whole == 0 or total == 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    shares = [math.floor(e) for e in exact]
    rest = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:rest]:
        shares[i] += 1
    return shares


def days_later(moment: datetime, days: int, tz: ZoneInfo) -> datetime:
    """§5 step 6 / §16: `days` later at the same local clock time (CONTRACT §16: a time
    the spring change skips is the moment it would be on the clock before the change; a
    time the autumn change repeats is its first occurrence)."""
    loc = moment.astimezone(tz)
    wall = datetime.combine(loc.date() + timedelta(days=days), loc.time())
    first = wall.replace(tzinfo=tz, fold=0)
    # a skipped wall time: fold=0 reads it with the offset before the change
    return first


@dataclass
class Batch:
    points: int
    activates: datetime | None  # None: spendable from the start
    expires: datetime | None  # None: never (the last moment it counts, inclusive)

    def spendable(self, at: datetime) -> bool:
        return (self.activates is None or self.activates <= at) and (
            self.expires is None or at <= through(self.expires)
        )


@dataclass
class Wallet:
    """A customer's points (§16): batches, and the movements replayed in time order
    (CONTRACT §16: a debt is paid by the points that become spendable after it, as they
    do; spending takes the soonest-expiring first, the older batch on a tie, the points
    that never expire last; beyond them it is a debt)."""

    tz: ZoneInfo
    life: int  # program.pointsLifetimeDays
    start: list[Batch] = field(default_factory=list)  # spendable from the start
    debt: int = 0  # owed from the start
    events: list[list[Any]] = field(default_factory=list)  # [when, n, what, points, batch]

    def add(self, points: int, activates: datetime) -> None:
        """Points spendable from `activates`, expiring pointsLifetimeDays after (§16)."""
        expires = days_later(activates, self.life, self.tz) if self.life else None
        batch = Batch(points, activates, expires)
        self.events.append([activates, len(self.events), "earn", points, batch])

    def spend(self, points: int, at: datetime) -> list[Any]:
        event = [at, len(self.events), "spend", points, None]
        self.events.append(event)
        return event

    def replay(
        self, at: datetime | None
    ) -> tuple[dict[Any, Batch], int, dict[int, tuple[list[tuple[Any, int]], int]]]:
        """The movements up to `at` (all when None) in time order, then the order
        written: the batches by key, the debt owed, and what each spend took."""
        batches: dict[Any, Batch] = {
            ("s", i): Batch(b.points, b.activates, b.expires) for i, b in enumerate(self.start)
        }
        debt = self.debt
        took: dict[int, tuple[list[tuple[Any, int]], int]] = {}
        for when, n, what, points, batch in sorted(self.events, key=lambda e: (e[0], e[1])):
            if at is not None and when > at:
                continue
            if what == "earn":
                fresh = Batch(points, batch.activates, batch.expires)
                pay = min(debt, max(fresh.points, 0))
                fresh.points -= pay
                debt -= pay
                batches[("e", n)] = fresh
            else:
                order = sorted(
                    ((k, b) for k, b in batches.items() if b.spendable(when) and b.points > 0),
                    key=lambda kb: (kb[1].expires is None, kb[1].expires or when),
                )
                takes = []
                for k, b in order:
                    take = min(points, b.points)
                    if take:
                        b.points -= take
                        points -= take
                        takes.append((k, take))
                debt += points
                took[n] = (takes, points)
        return batches, debt, took

    def balance(self, at: datetime) -> tuple[int, int]:
        """(available, pending) at `at`. CONTRACT §5: spending counts at once, whatever
        the receipt's `at`; §16: available at T is what is left of the batches at T. So a
        spend dated after `at` counts at `at` off the batches it took at its own time
        (points it took from a batch still pending at `at` leave the pending points).
        Points that become spendable after `at` pay a debt only when they do."""
        batches, debt, _ = self.replay(at)
        _, _, took = self.replay(None)
        pending_taken: dict[Any, int] = {}
        for when, n, what, _points, _b in self.events:
            if what != "spend" or when <= at:
                continue
            takes, owed = took[n]
            debt += owed
            for k, pts in takes:
                if k in batches:
                    batches[k].points -= pts
                else:
                    pending_taken[k] = pending_taken.get(k, 0) + pts
        available = sum(b.points for b in batches.values() if b.spendable(at)) - debt
        pending = sum(
            p - pending_taken.get(("e", n), 0)
            for when, n, what, p, _b in self.events
            if what == "earn" and when > at
        )
        return available, pending

    def available(self, at: datetime) -> int:
        return self.balance(at)[0]

    def pending(self, at: datetime) -> int:
        return self.balance(at)[1]


@dataclass
class TillState:
    """What a till remembers between receipts: each customer's wallet, the offline
    limit used per card and store-day (§5 step 4), the coupons used (§13)."""

    wallets: dict[str, Wallet] = field(default_factory=dict)
    offline_used: dict[tuple[str, date], int] = field(default_factory=dict)
    used_codes: set[str] = field(default_factory=set)


@dataclass
class Line:
    index: int
    sku: str
    qty: Fraction
    amount: int
    eligible: bool
    category: str | None
    discount: int = 0
    offer_id: str = ""
    deal: bool = False
    multiplier_offer: str = ""
    multiplier: Fraction = Fraction(1)
    redeemed_points: int = 0
    earned: int = 0


@dataclass
class Priced:
    lines: list[Line]
    total: int
    discount: int
    redeemed: int
    payable: int
    earned: int
    available: int | None
    pending: int | None
    held_out: list[str]
    coupons: list[dict[str, str]]
    gave: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)  # what a hold reserved (§11)

    def figures(self) -> dict[str, Any]:
        """The result's figures in the shape of `CheckoutResult` JSON."""
        out: dict[str, Any] = {
            "lines": [
                {
                    "sku": ln.sku,
                    "amountMinor": ln.amount,
                    "discountMinor": ln.discount,
                    "offerId": ln.offer_id,
                    "redeemedMinor": ln.redeemed_points,  # turned into minor units below
                    "earnedPoints": ln.earned,
                }
                for ln in self.lines
            ],
            "totalMinor": self.total,
            "discountMinor": self.discount,
            "redeemedPoints": self.redeemed,
            "payableMinor": self.payable,
            "earnedPoints": self.earned,
            "heldOut": self.held_out,
            "coupons": self.coupons,
        }
        if self.available is not None:
            out["balance"] = {"availablePoints": self.available, "pendingPoints": self.pending}
        return out


class Oracle:
    def __init__(self, snap: dict[str, Any]) -> None:
        self.program = {**PROGRAM_DEFAULTS, **snap.get("program", {})}
        if not self.program.get("tiers"):
            self.program["tiers"] = PROGRAM_DEFAULTS["tiers"]
        self.tz = ZoneInfo(self.program["timezone"] or "Europe/Moscow")
        self.pv = int(self.program["pointValueMinor"])
        self.products = {p["sku"]: p for p in snap.get("products", [])}
        self.parents = {c["code"]: c.get("parent") for c in snap.get("categories", [])}
        self.customers = {c["id"]: c for c in snap.get("customers", [])}
        self.cards = {c["number"]: c for c in snap.get("cards", [])}
        self.offers = {o["id"]: o for o in snap.get("offers", [])}
        self.coupons = {normal_code(c["code"]): c for c in snap.get("coupons", [])}

    # ----------------------------------------------------------------- helpers

    def ancestors(self, category: str | None) -> set[str]:
        """§5 step 2: the line's category and every ancestor (a ring stops the walk)."""
        seen: set[str] = set()
        while category and category not in seen:
            seen.add(category)
            category = self.parents.get(category)
        return seen

    def targets(self, offer: dict[str, Any], line: Line) -> bool:
        """§5 step 2: targets the SKU, its category or an ancestor; CONTRACT §5: an offer
        with no skus and no categories targets no line."""
        if line.sku in offer.get("skus", []):
            return True
        return bool(self.ancestors(line.category) & set(offer.get("categories", [])))

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.tz)

    def in_window(self, offer: dict[str, Any], at: datetime, customer: dict[str, Any]) -> bool:
        """§14: weekdays, hours (from inclusive, to exclusive, `24:00` the end of the day),
        favourite weekday, on the store's local time. CONTRACT §14: a `to` before `from`
        is a night window belonging to the day it starts."""
        loc = self.local(at)
        secs = loc.hour * 3600 + loc.minute * 60 + loc.second
        days = [loc.date()]
        if offer.get("hours"):
            days = []
            for h in offer["hours"]:
                start, end = _clock(h["from"]), _clock(h["to"])
                if start < end:
                    if start <= secs < end:
                        days.append(loc.date())
                elif secs >= start:  # a night window, on the day it starts
                    days.append(loc.date())
                elif secs < end:
                    days.append(loc.date() - timedelta(days=1))
        # inside any of its windows whose day is one of its weekdays (and the favourite)
        for day in days:
            weekday = day.isoweekday()
            if offer.get("weekdays") and weekday not in offer["weekdays"]:
                continue
            if offer.get("onFavoriteWeekday") and customer.get("favoriteWeekday") != weekday:
                continue
            return True
        return False

    def valid(self, offer_or_coupon: dict[str, Any], at: datetime) -> bool:
        """§5 step 2: valid at `at`, inclusive bounds."""
        vf, vt = offer_or_coupon.get("validFrom"), offer_or_coupon.get("validTo")
        if vf and at < ts(vf):
            return False
        return not (vt and at > end_of(vt))

    def birthday_in_window(self, customer: dict[str, Any], day: date) -> bool:
        """§5 step 5: the local date is on the next birthday or at most birthdayWindowDays
        before it, across a new year; 29 February falls on 28 February in other years."""
        text = customer.get("birthday")
        if not text:
            return False
        bd = date.fromisoformat(text)

        def on(year: int) -> date:
            try:
                return date(year, bd.month, bd.day)
            except ValueError:
                return date(year, 2, 28)

        nxt = on(day.year)
        if nxt < day:
            nxt = on(day.year + 1)
        return (nxt - day).days <= int(self.program["birthdayWindowDays"])

    def days_later(self, moment: datetime, days: int) -> datetime:
        return days_later(moment, days, self.tz)

    def wallet(self, customer: dict[str, Any]) -> Wallet:
        """§16 + §3: the customer's batches from the snapshot: the parts of `expiring`
        (expiresAt inclusive, CONTRACT §16), the rest of balancePoints that never
        expires, each `pending` part from its activatesAt (expiring pointsLifetimeDays
        after it). CONTRACT §16: `expiring` parts above balancePoints start as a debt
        they pay, soonest-expiring first (a balance below zero is a debt too)."""
        balance = int(customer.get("balancePoints", 0))
        parts = sorted(
            (
                Batch(int(e["points"]), None, ts(e["expiresAt"]))
                for e in customer.get("expiring", [])
            ),
            key=lambda b: b.expires or datetime.max,
        )
        rest = balance - sum(b.points for b in parts)
        debt = max(0, -rest)
        for b in parts:
            take = min(debt, b.points)
            b.points -= take
            debt -= take
        w = Wallet(self.tz, int(self.program.get("pointsLifetimeDays", 0)))
        w.start = [*parts, Batch(max(rest, 0), None, None)]
        w.debt = debt
        for p in customer.get("pending", []):
            w.add(int(p["points"]), ts(p["activatesAt"]))
        return w

    def identify(self, text: str) -> dict[str, Any] | None:
        """§4: blanks and dashes dropped; a card number, else a phone (four spellings)
        identifying the customer's first active card by number. None: UNKNOWN."""
        number = normal_code(text)
        card = self.cards.get(number)
        if card is not None:
            return card if card.get("status", "ACTIVE") == "ACTIVE" else None
        digits = number.lstrip("+")
        if len(digits) == 11 and digits[0] in "78":
            digits = digits[1:]
        if len(digits) != 10:
            return None
        for cust in self.customers.values():
            if (cust.get("phone") or "").endswith(digits) and cust.get("phone"):
                active = sorted(
                    (
                        c
                        for c in self.cards.values()
                        if c["customerId"] == cust["id"] and c.get("status", "ACTIVE") == "ACTIVE"
                    ),
                    key=lambda c: c["number"],
                )
                return active[0] if active else None
        return None

    # ----------------------------------------------------------------- pricing

    def price(
        self,
        receipt: dict[str, Any],
        *,
        control: bool = True,
        state: TillState | None = None,
        commit: bool | str = False,
    ) -> Priced:
        """Price `receipt` on a till in `state` (a fresh till when None); with `commit`,
        the state then holds the receipt (a checkout), else nothing changes (a quote)."""
        state = state or TillState()
        before = copy.deepcopy(state) if control else state
        at = ts(receipt["at"])
        day = self.local(at).date()
        card = self.identify(receipt.get("card", ""))
        customer = self.customers.get(card["customerId"]) if card else None
        found = customer is not None
        if customer is not None and not control:
            customer = {**customer, "controlGroups": []}

        # §2: a line's amount; §5 step 1: eligible lines
        lines: list[Line] = []
        for i, raw in enumerate(receipt["lines"]):
            qty = frac(raw["qty"])
            if raw.get("amountMinor") is not None:
                amount = int(raw["amountMinor"])
            else:
                amount = rhu(int(raw["priceMinor"]) * qty)
            product = self.products.get(raw["sku"])
            eligible = product is not None and not product.get("excludedFromLoyalty", False)
            lines.append(
                Line(
                    i,
                    raw["sku"],
                    qty,
                    amount,
                    eligible,
                    product.get("category") if product else None,
                )
            )
        eligible = [ln for ln in lines if ln.eligible]

        # §13: coupon verdicts (order: CONTRACT §13 decision), before pricing: an accepted
        # code unlocks its offer; whether it is APPLIED is decided once priced
        verdicts: list[dict[str, str]] = []
        accepted: dict[str, int] = {}  # offer id -> index of the verdict that unlocks it
        seen_codes: set[str] = set()
        for scanned in receipt.get("coupons", []):
            code = normal_code(scanned)
            v = {"code": code, "status": "REJECTED", "reason": ""}
            verdicts.append(v)
            coupon = self.coupons.get(code)
            if code in seen_codes:
                v["reason"] = "DUPLICATE"
            elif coupon is None:
                v["reason"] = "UNKNOWN"
            elif not found:
                v["reason"] = "NOT_APPLICABLE"
            elif coupon.get("customerId") and coupon["customerId"] != card["customerId"]:  # type: ignore[index]
                v["reason"] = "OTHER_CUSTOMER"
            elif coupon.get("validFrom") and at < ts(coupon["validFrom"]):
                v["reason"] = "NOT_YET_VALID"
            elif coupon.get("validTo") and at > end_of(coupon["validTo"]):
                v["reason"] = "EXPIRED"
            elif code in state.used_codes:
                v["reason"] = "ALREADY_USED"
            elif coupon["offerId"] in accepted or coupon["offerId"] not in self.offers:
                # CONTRACT §13: a second code for an unlocked offer; an unknown offer
                v["reason"] = "NOT_APPLICABLE"
            else:
                accepted[coupon["offerId"]] = len(verdicts) - 1
                v["reason"] = "?"
            seen_codes.add(code)

        # §5 step 2 filters (§4: an UNKNOWN card gets no offers)
        controls = set(customer.get("controlGroups", [])) if customer else set()

        def usable(offer: dict[str, Any]) -> bool:
            if customer is None:
                return False
            if offer.get("customerId") and offer["customerId"] != customer["id"]:
                return False
            if not self.valid(offer, at) or not self.in_window(offer, at, customer):
                return False
            if offer.get("couponRequired") and offer["id"] not in accepted:
                return False
            return offer.get("campaignId", "") not in controls or not offer.get("campaignId")

        offers = sorted(
            (o for o in self.offers.values() if usable(o)),
            key=lambda o: (int(o.get("priority", 0)), o["id"]),
        )

        def min_qty_ok(offer: dict[str, Any], line: Line) -> bool:
            return line.qty >= frac(offer.get("minQty") or "0")

        # §15 QUANTITY_PRICE: the receipt's total eligible qty of each SKU
        sku_qty: dict[str, Fraction] = {}
        for ln in eligible:
            sku_qty[ln.sku] = sku_qty.get(ln.sku, Fraction(0)) + ln.qty

        def line_discount(offer: dict[str, Any], ln: Line) -> int:
            """§5 step 2 / §15: the money offer's discount on the line (clamped)."""
            kind = offer["kind"]
            value = frac(offer.get("value") or "0")
            if kind == "PERCENT_OFF":
                d = math.floor(ln.amount * value / 100)
            elif kind == "AMOUNT_OFF":
                d = min(ln.amount, rhu(value * ln.qty))
            elif kind == "FIXED_PRICE":
                d = max(0, ln.amount - rhu(value * ln.qty))
            elif kind == "QUANTITY_PRICE":
                total = sku_qty[ln.sku]
                reached = [t for t in offer["tiers"] if total >= frac(t["minQty"])]
                if not reached:
                    return 0
                tier = max(reached, key=lambda t: frac(t["minQty"]))
                d = max(0, ln.amount - rhu(int(tier["unitPriceMinor"]) * ln.qty))
            else:
                return 0
            return max(0, min(d, ln.amount))  # CONTRACT §5: clamped to the amount

        def best_line_offer(ln: Line) -> tuple[dict[str, Any] | None, int]:
            """§5 step 2: the largest discount; ties: lower priority, then smaller id."""
            best: tuple[int, int, str] | None = None
            chosen = None
            for o in offers:
                if o["kind"] not in MONEY_KINDS or not self.targets(o, ln) or not min_qty_ok(o, ln):
                    continue
                d = line_discount(o, ln)
                if d <= 0:
                    continue
                key = (-d, int(o.get("priority", 0)), o["id"])
                if best is None or key < best:
                    best, chosen = key, o
            return (chosen, -best[0]) if best and chosen else (None, 0)

        gave: set[str] = set()

        # §15: MULTIBUY deals, in (priority, id) order, before step 2
        for o in offers:
            if o["kind"] != "MULTIBUY":
                continue
            buy, free = frac(o["buyQty"]), frac(o["freeQty"])
            group = int(buy + free)
            cands = [
                ln
                for ln in eligible
                if not ln.deal
                and self.targets(o, ln)
                and ln.qty.denominator == 1
                and min_qty_ok(o, ln)
            ]
            units = sorted(
                (
                    (Fraction(ln.amount, 1) / ln.qty, k, ln)
                    for k, ln in enumerate(cands)
                    for _ in range(int(ln.qty))
                ),
                key=lambda u: (-u[0], u[1]),
            )
            complete = len(units) // group
            free_units: dict[int, int] = {}
            in_group: set[int] = set()
            for g in range(complete):
                chunk = units[g * group : (g + 1) * group]
                for pos, (_, _, ln) in enumerate(chunk):
                    in_group.add(ln.index)
                    if pos >= group - int(free):
                        free_units[ln.index] = free_units.get(ln.index, 0) + 1
            deal_lines = [ln for ln in cands if ln.index in in_group]
            disc = {
                ln.index: math.floor(ln.amount * free_units.get(ln.index, 0) / ln.qty)
                for ln in deal_lines
            }
            total = sum(disc.values())
            rival = sum(best_line_offer(ln)[1] for ln in deal_lines)
            if deal_lines and total > rival:
                for ln in deal_lines:
                    ln.deal = True
                    ln.offer_id = o["id"]
                    ln.discount = min(disc[ln.index], ln.amount)
                gave.add(o["id"])

        # §5 step 2: line offers on the lines no deal took
        for ln in eligible:
            if ln.deal:
                continue
            chosen, d = best_line_offer(ln)
            if chosen is not None:
                ln.offer_id, ln.discount = chosen["id"], d
                gave.add(chosen["id"])

        # §5 step 2: BONUS_MULTIPLIER, the largest wins (CONTRACT: ties priority, id)
        for ln in eligible:
            best_m: tuple[Fraction, int, str] | None = None
            for o in offers:
                if o["kind"] == "BONUS_MULTIPLIER" and self.targets(o, ln) and min_qty_ok(o, ln):
                    key = (-frac(o["value"]), int(o.get("priority", 0)), o["id"])
                    if best_m is None or key < best_m:
                        best_m = key
            if best_m is not None:
                ln.multiplier, ln.multiplier_offer = -best_m[0], best_m[2]

        # §5 step 3: receipt offers, thresholds on the eligible total after step 2
        after2 = sum(ln.amount - ln.discount for ln in eligible)
        bare = [ln for ln in eligible if not ln.offer_id]
        best_r: tuple[int, int, str] | None = None
        best_ro = None
        for o in offers:
            if o["kind"] != "RECEIPT_PERCENT_OFF" or after2 < int(o.get("minTotalMinor", 0)):
                continue
            value = frac(o["value"])
            d = sum(math.floor(ln.amount * value / 100) for ln in bare)
            if d <= 0:
                continue
            key = (-d, int(o.get("priority", 0)), o["id"])
            if best_r is None or key < best_r:
                best_r, best_ro = key, o
        if best_ro is not None:
            value = frac(best_ro["value"])
            for ln in bare:
                d = min(ln.amount, math.floor(ln.amount * value / 100))
                if d > 0:
                    ln.discount, ln.offer_id = d, best_ro["id"]
            gave.add(best_ro["id"])
        extra = 0
        for o in offers:
            met = after2 >= int(o.get("minTotalMinor", 0))
            if o["kind"] == "EXTRA_POINTS" and met and int(frac(o["value"])) > 0:
                extra += int(frac(o["value"]))
                gave.add(o["id"])

        # §5 step 4: redemption (OFFLINE; a fresh till has the whole offline limit)
        after = sum(ln.amount - ln.discount for ln in eligible)
        caps = [(ln.amount - ln.discount) // self.pv for ln in eligible]
        available = pending = None
        allowed = 0
        wallet = None
        if customer is not None:
            if customer["id"] not in state.wallets:
                state.wallets[customer["id"]] = self.wallet(customer)
            wallet = state.wallets[customer["id"]]
            if not commit:
                wallet = copy.deepcopy(wallet)
            available, pending = wallet.available(at), wallet.pending(at)
            requested = int(receipt.get("redeemPoints", 0))
            limits = [
                max(0, available),
                after * int(self.program["maxRedeemPercent"]) // 100 // self.pv,
                sum(caps),
                int(self.program["offlineRedeemLimitPoints"])
                - state.offline_used.get((card["number"], day), 0),  # type: ignore[index]
            ]
            if requested != -1:
                limits.append(requested)
            allowed = max(0, min(limits))
        for ln, pts in zip(
            eligible, largest_remainder(allowed, [Fraction(c) for c in caps]), strict=False
        ):
            ln.redeemed_points = pts

        # §5 step 5: accrual
        if customer is not None:
            tier = next(t for t in self.program["tiers"] if t["code"] == customer.get("tier"))
            birthday = self.birthday_in_window(customer, day)
        else:
            tier = self.program["tiers"][0]
            birthday = False
        rate = frac(tier["accrualPercent"])
        bday = Fraction(int(self.program["birthdayMultiplier"])) if birthday else Fraction(1)
        exact: list[Fraction] = []
        for ln in eligible:
            base = ln.amount - ln.discount - ln.redeemed_points * self.pv
            mult = max(Fraction(1), ln.multiplier if customer else Fraction(1), bday)
            exact.append(base * rate * mult / (100 * self.pv))
            # CONTRACT §13: a multiplier gave the receipt something only when it is the
            # line's, above the birthday's (and 1), on a line that earns on something
            if (
                ln.multiplier_offer
                and ln.multiplier > max(bday, Fraction(1))
                and ln.amount - ln.discount > 0
                and rate > 0
            ):
                gave.add(ln.multiplier_offer)
        whole = math.floor(sum(exact, Fraction(0)))
        shares = [math.floor(e) for e in exact]
        rest = whole - sum(shares)
        order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - shares[i]), i))
        for i in order[:rest]:
            shares[i] += 1
        for ln, s in zip(eligible, shares, strict=False):
            ln.earned = s
        earned = whole + extra

        # §13: APPLIED when the unlocked offer gave the receipt something
        for offer_id, idx in accepted.items():
            v = verdicts[idx]
            if offer_id in gave:
                v["status"], v["reason"] = "APPLIED", ""
            else:
                v["reason"] = "NOT_APPLICABLE"

        # §5 step 6: the balance after the receipt, at `at`; spending counts at once, the
        # earned points from activationDelayDays after `at` (same local clock time)
        # A hold (§11) reserves the points, the offline limit and the codes, earns nothing
        # yet; its result shows the balance as the checkout would.
        record: dict[str, Any] = {}
        if wallet is not None:
            shown = copy.deepcopy(wallet) if commit == "hold" else wallet
            spent = shown.spend(allowed, at)
            activates = self.days_later(at, int(self.program["activationDelayDays"]))
            if earned:
                shown.add(earned, activates)
            available, pending = shown.available(at), shown.pending(at)
            if commit == "hold":
                spent = wallet.spend(allowed, at)
            record = {
                "customer": customer["id"],
                "spent": spent,
                "earned": earned,  # type: ignore[index]
                "activates": activates,
                "at": at,
            }
            if commit and allowed:
                key = (card["number"], day)  # type: ignore[index]
                state.offline_used[key] = state.offline_used.get(key, 0) + allowed
                record["offline"] = (key, allowed)
        if commit:
            codes = {v["code"] for v in verdicts if v["status"] == "APPLIED"}
            state.used_codes |= codes
            record["codes"] = codes

        total = sum(ln.amount for ln in lines)
        discount = sum(ln.discount for ln in lines)
        priced = Priced(
            lines=lines,
            total=total,
            discount=discount,
            redeemed=allowed,
            payable=total - discount - allowed * self.pv,
            earned=earned,
            available=available if found else None,
            pending=pending if found else None,
            held_out=[],
            coupons=verdicts,
            gave=gave,
            record=record,
        )
        for ln in lines:
            ln.redeemed_points *= self.pv  # the figure the result carries: redeemedMinor

        # §5 step 7: held out: priced again outside every control group (CONTRACT §5)
        if control and customer is not None and customer.get("controlGroups"):
            free = self.price(receipt, control=False, state=before)
            held = {
                oid
                for oid in free.gave
                if self.offers[oid].get("campaignId")
                and self.offers[oid]["campaignId"] in customer["controlGroups"]
            }
            priced.held_out = sorted(held)
        return priced


def confirm(state: TillState, record: dict[str, Any]) -> tuple[int, int] | None:
    """§11 Confirm: the held figures committed; the balance at the receipt's `at`, after
    it, as the ledger stands now (CONTRACT §11)."""
    if "customer" not in record:
        return None
    wallet = state.wallets[record["customer"]]
    if record["earned"]:
        wallet.add(record["earned"], record["activates"])
    return wallet.available(record["at"]), wallet.pending(record["at"])


def cancel(state: TillState, record: dict[str, Any]) -> None:
    """§11 Cancel: the hold's reservations released."""
    if "customer" in record:
        record["spent"][3] = 0
    if "offline" in record:
        key, points = record["offline"]
        state.offline_used[key] -= points
    state.used_codes -= record.get("codes", set())


def oracle_figures(snap: dict[str, Any], receipt: dict[str, Any]) -> dict[str, Any]:
    return Oracle(snap).price(receipt).figures()
