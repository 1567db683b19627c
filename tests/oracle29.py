"""A plain reference model of what a receipt TELLS beside its figures (review 29, orc29).

Written from docs/CONTRACT.md §5, §7, §8, §13–§17 and the decisions beside them (and
docs/DECISIONS.md, "Explain", "Customer display"), without reading the product's pricing,
results or messages code: the §17 trace (every offer of each line with its outcome, the
basket deals, the receipt offers with their thresholds, the redemption's caps and which
one bound), the offers §7 prints after a commit across several commits (the cooldown,
per customer), and the §8 display texts. The figures come from tests/oracle28.py (review
28's model of them). The differential test is tests/test_review29_orc29.py.

Where the contract leaves a choice open the model follows the product's, each now written
beside its rule in docs/CONTRACT.md (§8, §17): a receipt offer set aside before it is
weighed tells no discount, and every receipt offer its terms (percent, points; review 30); a
money offer on a deal's line is TAKEN_BY_DEAL before anything else; a control-group deal
that would have lost is BEATEN; `deals` lists the MULTIBUYs that had lines; the display's
shorter labels ("Начисл.:", "Б:", "Выгода:" for points paid alone).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

from .oracle28 import MONEY_KINDS, Line, Oracle, Priced, TillState, frac, normal_code, ts

LINE_KINDS = (*MONEY_KINDS, "MULTIBUY", "BONUS_MULTIPLIER")
RECEIPT_KINDS = ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS")


@dataclass
class DealRun:
    """One MULTIBUY weighed in its turn (§15): its lines, their discounts, the rival."""

    offer: dict[str, Any]
    cands: list[Line]
    lines: list[Line]
    disc: dict[int, int]
    total: int
    rival: int
    rivals: dict[int, tuple[dict[str, Any] | None, int]]  # line -> best line offer
    won: bool
    control: bool


@dataclass
class Told:
    """What the oracle says the result tells: the trace, the printed offers, the display."""

    priced: Priced
    trace: dict[str, Any] = field(default_factory=dict)
    printed: list[str] = field(default_factory=list)


class Explainer(Oracle):
    """oracle28's figures, and the §17 trace beside them."""

    # ------------------------------------------------------------ coupons (§13)

    def unlocked(self, receipt: dict[str, Any], state: TillState, found: bool) -> set[str]:
        """The offers an accepted code unlocks (CONTRACT §13's order of checks)."""
        at = ts(receipt["at"])
        card = self.identify(receipt.get("card", ""))
        seen: set[str] = set()
        out: set[str] = set()
        for scanned in receipt.get("coupons", []):
            code = normal_code(scanned)
            coupon = self.coupons.get(code)
            dup = code in seen
            seen.add(code)
            if dup or coupon is None or not found or card is None:
                continue
            if coupon.get("customerId") and coupon["customerId"] != card["customerId"]:
                continue
            if not self.valid(coupon, at) or code in state.used_codes:
                continue
            if coupon["offerId"] in self.offers:
                out.add(coupon["offerId"])
        return out

    # ------------------------------------------------------------ the trace (§17)

    def explain(
        self, receipt: dict[str, Any], state: TillState | None = None, *, hub: bool = False
    ) -> Told:
        """The trace of `receipt` priced on a till in `state` (a fresh till when None),
        OFFLINE; the state is not changed (a quote)."""
        state = copy.deepcopy(state) if state is not None else TillState()
        before = copy.deepcopy(state)
        priced = self.price(receipt, state=state)
        at = ts(receipt["at"])
        day = self.local(at).date()
        card = self.identify(receipt.get("card", ""))
        customer = self.customers.get(card["customerId"]) if card else None
        requested = int(receipt.get("redeemPoints", 0))
        lines = priced.lines
        if customer is None:
            trace = {
                "lines": [{"index": ln.index, "sku": ln.sku, "offers": []} for ln in lines],
                "deals": [],
                "receiptOffers": [],
                "redemption": {
                    "requestedPoints": requested,
                    "caps": [],
                    "allowedPoints": 0,
                    "boundBy": "UNKNOWN_CARD",
                },
            }
            return Told(priced, trace)

        unlocked = self.unlocked(receipt, before, True)
        controls = set(customer.get("controlGroups", []))
        # the customer's offers: personal to them or mass (§3)
        mine = sorted(
            (
                o
                for o in self.offers.values()
                if not o.get("customerId") or o["customerId"] == customer["id"]
            ),
            key=lambda o: o["id"],
        )

        def window_ok(o: dict[str, Any]) -> bool:
            return self.valid(o, at) and self.in_window(o, at, customer)

        def coupon_ok(o: dict[str, Any]) -> bool:
            return not o.get("couponRequired") or o["id"] in unlocked

        def in_control(o: dict[str, Any]) -> bool:
            return bool(o.get("campaignId")) and o["campaignId"] in controls

        def usable(o: dict[str, Any]) -> bool:
            return window_ok(o) and coupon_ok(o)

        def min_qty_ok(o: dict[str, Any], ln: Line) -> bool:
            return ln.qty >= frac(o.get("minQty") or "0")

        eligible = [ln for ln in lines if ln.eligible]
        sku_qty: dict[str, Fraction] = {}
        for ln in eligible:
            sku_qty[ln.sku] = sku_qty.get(ln.sku, Fraction(0)) + ln.qty

        def reaches_tier(o: dict[str, Any], ln: Line) -> bool:
            return any(sku_qty[ln.sku] >= frac(t["minQty"]) for t in o.get("tiers", []))

        def line_discount(o: dict[str, Any], ln: Line) -> int:
            kind = o["kind"]
            value = frac(o.get("value") or "0")
            if kind == "PERCENT_OFF":
                d = math.floor(ln.amount * value / 100)
            elif kind == "AMOUNT_OFF":
                d = min(ln.amount, _rhu(value * ln.qty))
            elif kind == "FIXED_PRICE":
                d = max(0, ln.amount - _rhu(value * ln.qty))
            elif kind == "QUANTITY_PRICE":
                reached = [t for t in o["tiers"] if sku_qty[ln.sku] >= frac(t["minQty"])]
                if not reached:
                    return 0
                tier = max(reached, key=lambda t: frac(t["minQty"]))
                d = max(0, ln.amount - _rhu(int(tier["unitPriceMinor"]) * ln.qty))
            else:
                return 0
            return max(0, min(d, ln.amount))

        def competing(o: dict[str, Any], ln: Line) -> bool:
            """A money offer that competes for the line in step 2 (not control group)."""
            return (
                o["kind"] in MONEY_KINDS
                and usable(o)
                and not in_control(o)
                and self.targets(o, ln)
                and min_qty_ok(o, ln)
            )

        def best_line_offer(ln: Line) -> tuple[dict[str, Any] | None, int]:
            best: tuple[int, int, str] | None = None
            chosen = None
            for o in mine:
                if not competing(o, ln):
                    continue
                d = line_discount(o, ln)
                if d <= 0:
                    continue
                key = (-d, int(o.get("priority", 0)), o["id"])
                if best is None or key < best:
                    best, chosen = key, o
            return (chosen, -best[0]) if best and chosen else (None, 0)

        # §15: the deals in (priority, id) order, each on the lines left
        deals: list[DealRun] = []
        self.before_turn: dict[str, dict[int, str]] = {}
        taken: dict[int, str] = {}  # line index -> the deal that took it
        ordered = sorted(
            (o for o in mine if o["kind"] == "MULTIBUY" and usable(o)),
            key=lambda o: (int(o.get("priority", 0)), o["id"]),
        )
        for o in ordered:
            targeted = [ln for ln in eligible if self.targets(o, ln)]
            if not targeted:
                continue
            self.before_turn[o["id"]] = dict(taken)  # the lines earlier deals took
            run = self.run_deal(o, eligible, taken, min_qty_ok, best_line_offer)
            if not run.cands:
                continue  # DECISIONS "Explain": `deals` lists each MULTIBUY that had lines
            run.control = in_control(o)
            if not run.control and run.won:
                for ln in run.lines:
                    taken[ln.index] = o["id"]
            deals.append(run)
        by_deal = {run.offer["id"]: run for run in deals}

        # birthday and the rate (§5 step 5)
        tier = next(t for t in self.program["tiers"] if t["code"] == customer.get("tier"))
        rate = frac(tier["accrualPercent"])
        birthday = self.birthday_in_window(customer, day)
        bday = Fraction(int(self.program["birthdayMultiplier"])) if birthday else Fraction(1)

        trace_lines = []
        for ln in lines:
            entries = []
            for o in mine:
                if o["kind"] not in LINE_KINDS or not self.targets(o, ln):
                    continue
                entries.append(
                    self.line_entry(
                        o,
                        ln,
                        eligible=ln.eligible,
                        window=window_ok(o),
                        coupon=coupon_ok(o),
                        control=in_control(o),
                        min_qty=min_qty_ok(o, ln),
                        reaches=reaches_tier(o, ln) if ln.eligible else False,
                        discount=line_discount(o, ln) if ln.eligible else 0,
                        taken=taken,
                        by_deal=by_deal,
                        lines=lines,
                        mine=mine,
                        competing=competing,
                        line_discount=line_discount,
                        bday=bday,
                        rate=rate,
                    )
                )
            trace_lines.append({"index": ln.index, "sku": ln.sku, "offers": entries})

        trace_deals = []
        for run in deals:
            if run.control and run.won:
                outcome = "CONTROL_GROUP"  # CONTRACT §15: held out only when it would have won
            elif not run.lines or run.total == 0:
                outcome = "ZERO_DISCOUNT"
            else:
                outcome = "APPLIED" if run.won else "BEATEN"
            trace_deals.append(
                {
                    "offerId": run.offer["id"],
                    "outcome": outcome,
                    "discountMinor": run.total,
                    "lineOffersMinor": run.rival,
                    "lines": [ln.index for ln in run.lines],
                }
            )

        # §5 step 3: receipt offers
        basket = sum(
            ln.amount - ln.discount
            for ln in eligible
            if ln.offer_id and not self._is_receipt(ln.offer_id)
        ) + sum(ln.amount for ln in eligible if not ln.offer_id or self._is_receipt(ln.offer_id))
        bare = [ln for ln in eligible if not ln.offer_id or self._is_receipt(ln.offer_id)]
        applied_r = next(
            (ln.offer_id for ln in eligible if ln.offer_id and self._is_receipt(ln.offer_id)), ""
        )
        receipt_offers = []
        for o in mine:
            if o["kind"] not in RECEIPT_KINDS:
                continue
            need = int(o.get("minTotalMinor", 0))
            entry: dict[str, Any] = {
                "offerId": o["id"],
                "kind": o["kind"],
                "minTotalMinor": need,
                "basketMinor": basket,
                "missingMinor": max(0, need - basket),
            }
            if o["kind"] == "RECEIPT_PERCENT_OFF":
                value = frac(o["value"])
                d = sum(math.floor(ln.amount * value / 100) for ln in bare)
            else:
                d = int(frac(o["value"]))
            if not window_ok(o) or not coupon_ok(o) or basket < need:
                # set aside before it is weighed: what it would give is not told
                entry["outcome"] = (
                    "OUTSIDE_WINDOW"
                    if not window_ok(o)
                    else "COUPON_MISSING"
                    if not coupon_ok(o)
                    else "BELOW_MIN_TOTAL"
                )
                # its terms, whatever the outcome (review 30): the percent, the points
                if o["kind"] == "RECEIPT_PERCENT_OFF":
                    entry["percent"] = o["value"]
                else:
                    entry["points"] = d
                receipt_offers.append(entry)
                continue
            if o["kind"] == "RECEIPT_PERCENT_OFF":
                entry["discountMinor"] = d
                entry["percent"] = o["value"]
            else:
                entry["points"] = d
            if basket < need:
                entry["outcome"] = "BELOW_MIN_TOTAL"
            elif d <= 0:
                entry["outcome"] = "ZERO_DISCOUNT"
            elif in_control(o):
                entry["outcome"] = "CONTROL_GROUP"
            elif o["kind"] == "EXTRA_POINTS" or o["id"] == applied_r:
                entry["outcome"] = "APPLIED"
            else:
                entry["outcome"] = "BEATEN"
                entry["beatenBy"] = applied_r
                # ... and its discount (review 30, spec30b): what the winner gave the receipt
                entry["beatenByDiscountMinor"] = sum(
                    ln.discount for ln in eligible if ln.offer_id == applied_r
                )
            receipt_offers.append(entry)

        trace = {
            "lines": trace_lines,
            "deals": trace_deals,
            "receiptOffers": receipt_offers,
            "redemption": self.redemption(receipt, before, customer, card, priced, eligible),
        }
        return Told(priced, trace)

    def _is_receipt(self, offer_id: str) -> bool:
        o = self.offers.get(offer_id)
        return o is not None and o["kind"] == "RECEIPT_PERCENT_OFF"

    def run_deal(
        self,
        o: dict[str, Any],
        eligible: list[Line],
        taken: dict[int, str],
        min_qty_ok: Any,
        best_line_offer: Any,
    ) -> DealRun:
        buy, free = frac(o["buyQty"]), frac(o["freeQty"])
        group = int(buy + free)
        cands = [
            ln
            for ln in eligible
            if ln.index not in taken
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
        in_group: list[int] = []
        for g in range(complete):
            chunk = units[g * group : (g + 1) * group]
            for pos, (_, _, ln) in enumerate(chunk):
                if ln.index not in in_group:
                    in_group.append(ln.index)
                if pos >= group - int(free):
                    free_units[ln.index] = free_units.get(ln.index, 0) + 1
        deal_lines = [ln for ln in cands if ln.index in in_group]
        disc = {
            ln.index: min(ln.amount, math.floor(ln.amount * free_units.get(ln.index, 0) / ln.qty))
            for ln in deal_lines
        }
        rivals = {ln.index: best_line_offer(ln) for ln in deal_lines}
        rival = sum(r[1] for r in rivals.values())
        total = sum(disc.values())
        return DealRun(
            o,
            cands,
            deal_lines,
            disc,
            total,
            rival,
            rivals,
            bool(deal_lines) and total > rival,
            False,
        )

    def line_entry(
        self,
        o: dict[str, Any],
        ln: Line,
        *,
        eligible: bool,
        window: bool,
        coupon: bool,
        control: bool,
        min_qty: bool,
        reaches: bool,
        discount: int,
        taken: dict[int, str],
        by_deal: dict[str, DealRun],
        lines: list[Line],
        mine: list[dict[str, Any]],
        competing: Any,
        line_discount: Any,
        bday: Fraction,
        rate: Fraction,
    ) -> dict[str, Any]:
        kind = o["kind"]
        e: dict[str, Any] = {"offerId": o["id"], "kind": kind}

        def out(outcome: str, disc: int = 0, by: str = "", by_disc: int = 0) -> dict[str, Any]:
            e["outcome"] = outcome
            e["discountMinor"] = disc
            e["beatenBy"] = by
            e["beatenByDiscountMinor"] = by_disc
            return e

        if not eligible:
            return out("EXCLUDED_PRODUCT")
        if not window:
            return out("OUTSIDE_WINDOW")
        if not coupon:
            return out("COUPON_MISSING")
        if not min_qty:
            return out("BELOW_MIN_QTY")
        if kind in MONEY_KINDS:
            if ln.index in taken and not control:
                # the product's order: a deal's line first, whatever the offer gives (a
                # QUANTITY_PRICE that reaches no tier too)
                deal = taken[ln.index]
                return out("TAKEN_BY_DEAL", discount, deal, ln.discount)
            if kind == "QUANTITY_PRICE" and not reaches:
                return out("BELOW_MIN_QTY")
            if discount <= 0:
                return out("ZERO_DISCOUNT")
            if control:
                return out("CONTROL_GROUP", discount)
            if ln.offer_id == o["id"]:
                return out("APPLIED", discount)
            return out("BEATEN", discount, ln.offer_id, ln.discount)
        if kind == "MULTIBUY":
            run = by_deal.get(o["id"])
            if ln.qty.denominator != 1:
                return out("ZERO_DISCOUNT")
            earlier = self.before_turn.get(o["id"], {})
            if ln.index in earlier:
                # an earlier deal took the line before this one's turn
                return out("TAKEN_BY_DEAL", 0, earlier[ln.index], ln.discount)
            if run is None:
                return out("ZERO_DISCOUNT")
            if ln not in run.lines:
                return out("ZERO_DISCOUNT")
            d = run.disc[ln.index]
            if run.control and run.won:
                return out("CONTROL_GROUP", d)
            if run.won:
                return out("APPLIED", d)
            if run.total == 0:
                return out("ZERO_DISCOUNT", d)
            rival, rd = run.rivals[ln.index]
            if rival is None:
                # the line offer that gave the group the most (ties: the smaller id)
                gave: dict[str, int] = {}
                for other in run.lines:
                    r, rdd = run.rivals[other.index]
                    if r is not None:
                        gave[r["id"]] = gave.get(r["id"], 0) + rdd
                best = sorted(gave.items(), key=lambda kv: (-kv[1], kv[0]))
                if best:
                    return out("BEATEN", d, best[0][0], best[0][1])
                return out("BEATEN", d)
            return out("BEATEN", d, rival["id"], rd)
        # BONUS_MULTIPLIER
        value = frac(o["value"])
        earns = ln.amount - ln.discount > 0 and rate > 0
        if value <= 1 or not earns:
            return out("ZERO_DISCOUNT")
        if control:
            return out("CONTROL_GROUP")
        if ln.multiplier <= bday:  # the line's largest is no larger than the birthday's
            return out("BEATEN", 0, "birthdayMultiplier", 0)
        if ln.multiplier_offer == o["id"]:
            return out("APPLIED")
        return out("BEATEN", 0, ln.multiplier_offer, 0)

    def redemption(
        self,
        receipt: dict[str, Any],
        state: TillState,
        customer: dict[str, Any],
        card: dict[str, Any],
        priced: Priced,
        eligible: list[Line],
    ) -> dict[str, Any]:
        at = ts(receipt["at"])
        day = self.local(at).date()
        requested = int(receipt.get("redeemPoints", 0))
        wallet = state.wallets.get(customer["id"]) or self.wallet(customer)
        available = wallet.available(at)
        after = sum(ln.amount - ln.discount for ln in eligible)
        caps: list[dict[str, Any]] = []
        if requested != -1:
            caps.append({"name": "REQUESTED", "points": requested})
        caps.append({"name": "BALANCE", "points": max(0, available)})
        caps.append(
            {
                "name": "PERCENT",
                "points": after * int(self.program["maxRedeemPercent"]) // 100 // self.pv,
            }
        )
        caps.append(
            {
                "name": "CAPACITY",
                "points": sum((ln.amount - ln.discount) // self.pv for ln in eligible),
            }
        )
        left = int(self.program["offlineRedeemLimitPoints"]) - state.offline_used.get(
            (card["number"], day), 0
        )
        caps.append({"name": "OFFLINE_LIMIT", "points": left})
        allowed = priced.redeemed
        bound = next((c["name"] for c in caps if c["points"] == allowed), "")
        return {
            "requestedPoints": requested,
            "caps": caps,
            "allowedPoints": allowed,
            "boundBy": bound,
        }


def _rhu(value: Fraction) -> int:
    if value >= 0:
        return math.floor(value + Fraction(1, 2))
    return -math.floor(-value + Fraction(1, 2))


def normal_trace(trace: dict[str, Any]) -> dict[str, Any]:
    """A trace with proto3's absent fields written out (absent is the default)."""
    out: dict[str, Any] = {"lines": [], "deals": [], "receiptOffers": [], "redemption": {}}
    for tl in trace.get("lines", []):
        out["lines"].append(
            {
                "index": tl.get("index", 0),
                "sku": tl.get("sku", ""),
                "offers": [
                    {
                        "offerId": o.get("offerId", ""),
                        "kind": o.get("kind", ""),
                        "outcome": o.get("outcome", ""),
                        "discountMinor": int(o.get("discountMinor", 0)),
                        "beatenBy": o.get("beatenBy", ""),
                        "beatenByDiscountMinor": int(o.get("beatenByDiscountMinor", 0)),
                    }
                    for o in tl.get("offers", [])
                ],
            }
        )
    for d in trace.get("deals", []):
        out["deals"].append(
            {
                "offerId": d.get("offerId", ""),
                "outcome": d.get("outcome", ""),
                "discountMinor": int(d.get("discountMinor", 0)),
                "lineOffersMinor": int(d.get("lineOffersMinor", 0)),
                "lines": list(d.get("lines", [])),
            }
        )
    for r in trace.get("receiptOffers", []):
        out["receiptOffers"].append(
            {
                "offerId": r.get("offerId", ""),
                "kind": r.get("kind", ""),
                "outcome": r.get("outcome", ""),
                "minTotalMinor": int(r.get("minTotalMinor", 0)),
                "basketMinor": int(r.get("basketMinor", 0)),
                "missingMinor": int(r.get("missingMinor", 0)),
                "discountMinor": int(r.get("discountMinor", 0)),
                "points": int(r.get("points", 0)),
                "beatenBy": r.get("beatenBy", ""),
                "percent": r.get("percent", ""),
            }
        )
    red = trace.get("redemption", {})
    out["redemption"] = {
        "requestedPoints": int(red.get("requestedPoints", 0)),
        "caps": [
            {"name": c.get("name", ""), "points": int(c.get("points", 0))}
            for c in red.get("caps", [])
        ],
        "allowedPoints": int(red.get("allowedPoints", 0)),
        "boundBy": red.get("boundBy", ""),
    }
    return out


# ---------------------------------------------------------------- §7 printed offers


@dataclass
class PrintBook:
    """What a till remembers of its prints (CONTRACT §7: the cooldown is this till's):
    (customer id, offer id) -> the `at` of the receipt that last printed it."""

    last: dict[tuple[str, str], datetime] = field(default_factory=dict)


def printed_offers(
    oracle: Oracle, receipt: dict[str, Any], book: PrintBook, *, commit: bool = True
) -> list[str]:
    """§7: after a commit with a FOUND card, up to `maxOffersPrinted` (at most 50, CONTRACT
    §7) personal `printable` offers of this customer, valid at `at` (and inside their
    window, §14) or starting within 7 days (store days, same local clock time), not of a
    campaign whose control group the customer is in, not printed to this customer within
    `offerPrintCooldownDays` (one printed exactly that long ago may be printed again),
    ordered by `rank` then `id`. With `commit`, the book records them."""
    card = oracle.identify(receipt.get("card", ""))
    customer = oracle.customers.get(card["customerId"]) if card else None
    if customer is None:
        return []
    at = ts(receipt["at"])
    program = oracle.program
    cooldown = int(program.get("offerPrintCooldownDays", 7))
    most = min(int(program.get("maxOffersPrinted", 5)), 50)
    soon = oracle.days_later(at, 7)
    controls = set(customer.get("controlGroups", []))
    picked = []
    for o in oracle.offers.values():
        if o.get("customerId") != customer["id"] or not o.get("printable"):
            continue
        if o.get("campaignId") and o["campaignId"] in controls:
            continue
        now = oracle.valid(o, at) and oracle.in_window(o, at, customer)
        start = ts(o["validFrom"]) if o.get("validFrom") else None
        starting = start is not None and at < start <= soon
        if not (now or starting):
            continue
        last = book.last.get((customer["id"], o["id"]))
        if last is not None and at < oracle.days_later(last, cooldown):
            continue
        picked.append(o)
    picked.sort(key=lambda o: (int(o.get("rank", 0)), o["id"]))
    out = [o["id"] for o in picked[:most]]
    if commit:
        for oid in out:
            book.last[(customer["id"], oid)] = at
    return out


# ---------------------------------------------------------------- §8 the display

WIDTH = 20


def money(minor: int, spaces: bool = True) -> str:
    """CONTRACT §8: roubles with a comma, spaces between thousands (`12 345,67`)."""
    sign = "-" if minor < 0 else ""
    whole, kop = divmod(abs(minor), 100)
    rub = f"{whole:,}".replace(",", " " if spaces else "")
    return f"{sign}{rub},{kop:02d}"


def fit(*wordings: str) -> str:
    """The first wording that fits the row (CONTRACT §8: reworded rather than cut)."""
    return next((w for w in wordings if len(w) <= WIDTH), "")


def figure(label: str, minor: int) -> str:
    """A figure: with its word label, then without it, then without its spaces."""
    return fit(f"{label}: {money(minor)}", money(minor), money(minor, spaces=False))


def percent_text(value: str) -> str:
    text = str(frac(value))
    if "/" in text:
        text = str(float(frac(value)))  # the percents the tests use are short decimals
    return text.replace(".", ",")


def reach_hint(oracle: Explainer, receipt: dict[str, Any], trace: dict[str, Any]) -> str:
    """DECISIONS "Explain": with no savings yet, the nearest RECEIPT_PERCENT_OFF the customer
    would get (not of a campaign whose control group they are in) that needs a larger
    basket: "Ещё 520 ₽ до скидки 5%", in whole roubles rounded up; shorter wordings next
    (CONTRACT §8)."""
    card = oracle.identify(receipt.get("card", ""))
    customer = oracle.customers.get(card["customerId"]) if card else None
    controls = set(customer.get("controlGroups", [])) if customer else set()
    best: tuple[int, Fraction, str] | None = None
    for ro in trace.get("receiptOffers", []):
        if ro["kind"] != "RECEIPT_PERCENT_OFF" or ro["outcome"] != "BELOW_MIN_TOTAL":
            continue
        if oracle.offers[ro["offerId"]].get("campaignId", "") in controls:
            continue
        if frac(oracle.offers[ro["offerId"]]["value"]) <= 0:
            continue
        # at one threshold, the largest percent: step 3 gives the best one there
        key = (int(ro["missingMinor"]), -frac(ro["percent"]), ro["offerId"])
        if best is None or key < best:
            best = key
    if best is None:
        return ""
    value = percent_text(oracle.offers[best[2]]["value"])
    rub = f"{-(-best[0] // 100):,}".replace(",", " ")
    return fit(
        f"Ещё {rub} ₽ до скидки {value}%",
        f"Ещё {rub} ₽ до \u2212{value}%",
        f"+{rub} ₽ до \u2212{value}%",
        f"+{rub.replace(' ', '')}₽ до \u2212{value}%",
    )


def quote_display(
    oracle: Explainer, receipt: dict[str, Any], result: dict[str, Any], trace: dict[str, Any]
) -> list[str]:
    """CONTRACT §8 + decisions: a quote shows the running total and the savings (the points
    paid counted in them), else the discount within reach."""
    total, discount = int(result["totalMinor"]), int(result["discountMinor"])
    paid = int(result["redeemedPoints"]) * oracle.pv
    if discount and paid:
        second = figure("Выгода", discount + paid)
    elif discount:
        second = figure("Скидка", discount)
    elif paid:  # the product's shorter word for it first, then the figure alone
        second = fit(f"Бонусами: {money(paid)}", figure("Выгода", paid))
    else:
        second = reach_hint(oracle, receipt, trace)
    return [figure("Итого", total), second]


def checkout_display(
    oracle: Explainer, receipt: dict[str, Any], result: dict[str, Any]
) -> list[str]:
    """CONTRACT §8 + decisions: after a commit, the points earned and the balance; in the
    birthday window the wish on the points' line; the expiry warning in place of the points
    earned when the first batch expires within 14 days of `at` (DECISIONS, expiring points);
    an UNKNOWN card's total and points earned."""
    earned = int(result["earnedPoints"])
    if result["card"]["status"] != "FOUND":
        return [
            figure("Итого", int(result["totalMinor"])),
            fit(f"Начислено: +{earned}", f"Начисл.: +{earned}", f"+{earned}"),
        ]
    at = ts(receipt["at"])
    customer = oracle.customers[result["card"]["customerId"]]
    balance = result.get("balance") or {}
    first = fit(f"Начислено: +{earned}", f"Начисл.: +{earned}", f"+{earned}")
    available = int(balance.get("availablePoints", 0))
    expiring = balance.get("expiring") or []
    if expiring:
        when = ts(expiring[0]["expiresAt"])
        if when <= oracle.days_later(at, 14):
            day = when.astimezone(oracle.tz).strftime("%d.%m")
            pts = int(expiring[0]["points"])
            # the warning whole, else the points earned stay (CONTRACT §8 decisions)
            first = fit(f"Сгорят {day}: {pts}", f"{day}: -{pts}", f"{day}:-{pts}") or first
    if oracle.birthday_in_window(customer, oracle.local(at).date()):
        first = fit(
            f"С днём рождения! +{earned}",
            f"С днём рожд.! +{earned}",
            f"С ДР! +{earned}",
            f"+{earned}",
        )
    return [
        first,
        fit(f"Бонусы: {available}", f"Б: {available}", str(available)),
    ]
