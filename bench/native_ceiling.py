"""How cheap could a known card's quote be in CPython? (issue 11's ceiling, 2026-12-03)

    python -m bench.native_ceiling [--scale quick] [--calls 1500] [--seed 3]

Three things priced on the same known-card first-sight 50-line receipts
(`bench.known_card.receipts`), each receipt to all three in a fresh random order, CPU of
the calling thread:

- `quote`: `Agent.quote` as it is.
- `floor`: `bench.run.ReadFloor`, the SQLite statements the agent issues for the receipt
  and no Python around them.
- `native`: a PROTOTYPE, not a pricing engine: the same reads (the floor's statements, on
  connections with the agent's 512 KiB page cache), the rows taken as `json.loads` dicts
  and tuples instead of pydantic models, and the common path of the contract §5 over
  plain tuples in one loop a line: eligibility, a line's candidates by SKU and category
  lineage (the personal offers and the snapshot's mass offers, indexed once per run),
  validity as integers, day-time windows, the best line money offer (percent, amount,
  fixed price, quantity tiers over the receipt's qty of the SKU) and the largest
  multiplier, basket deals (MULTIBUY, in priority order, when they beat the lines' best
  offers), receipt percent discounts and extra points, redemption (balance, percent,
  capacity, requested, offline limit), the birthday multiplier and accrual split by the
  largest remainder, the answer's lines as tuples; the coupons' offers unlocked as the
  bench's codes need (no issued codes, no normalising). Left out: favourite-weekday
  offers (taken as not applying), control groups (their offers taken
  as not applying: no twin pricing for `heldOut`), expiring points, the display lines, a
  result object, the trace.

It is a cost estimate, not a second engine: the share of receipts whose every line it
prices as the agent does (discount, offer, redeemed, earned) is printed beside the
times, so the work it does can be judged comparable.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tillpoint.agent.ledger import QUOTE_LOOKUP, utc_text
from tillpoint.agent.models import Receipt, micros
from tillpoint.agent.money import round_half_up_ratio, split_integer
from tillpoint.agent.pricing import in_birthday_window, multibuy_free
from tillpoint.agent.results import receipt_from_json

from bench.generate import Scale, write_full
from bench.known_card import load, receipts
from bench.run import ReadFloor, stats

_OPEN = 1 << 62
_LINE = frozenset(
    {"PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE", "BONUS_MULTIPLIER"}
)
# an offer as a tuple: the fields the common path reads
ID, KIND, SKUS, CATS, VALUE, PRIORITY, LOW, HIGH = range(8)
CUSTOMER, MIN_QTY, MIN_TOTAL, TIERS, SKIP, CAMPAIGN, WINDOW, BUY, FREE, COUPON = range(8, 18)


def offer_record(d: dict[str, Any]) -> tuple[Any, ...]:
    low = micros(datetime.fromisoformat(d["validFrom"])) if d.get("validFrom") else -_OPEN
    high = micros(datetime.fromisoformat(d["validTo"])) if d.get("validTo") else _OPEN
    gated = bool(d.get("onFavoriteWeekday"))
    days = frozenset(d.get("weekdays", ()))
    hours = tuple((_seconds(h["from"]), _seconds(h["to"])) for h in d.get("hours", ()))
    return (
        d["id"],
        d["kind"],
        tuple(d.get("skus", ())),
        tuple(d.get("categories", ())),
        Fraction(d.get("value") or 0),
        d.get("priority", 0),
        low,
        high,
        d.get("customerId"),
        Decimal(d.get("minQty") or 0),
        d.get("minTotalMinor", 0),
        tuple((Fraction(t["minQty"]), t["unitPriceMinor"]) for t in d.get("tiers", ())),
        gated,
        d.get("campaignId") or None,
        (days, hours) if days or hours else None,
        int(Decimal(d.get("buyQty") or 0)),
        int(Decimal(d.get("freeQty") or 0)),
        bool(d.get("couponRequired")),
    )


def _valid(coupon: dict[str, Any], at: datetime) -> bool:
    low, high = coupon.get("validFrom"), coupon.get("validTo")
    return (not low or datetime.fromisoformat(low) <= at) and (
        not high or at <= datetime.fromisoformat(high)
    )


def _seconds(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def _inside(window: tuple[frozenset[int], tuple[tuple[int, int], ...]], local: datetime) -> bool:
    """A day-time window (no night windows: the bench has none; a prototype)."""
    days, hours = window
    if days and local.isoweekday() not in days:
        return False
    second = local.hour * 3600 + local.minute * 60 + local.second
    return not hours or any(start <= second < end for start, end in hours)


class Native:
    """The prototype (see the module's text)."""

    def __init__(self, data: Path) -> None:
        self.cache = sqlite3.connect(data / "cache.db", isolation_level=None)
        self.ledger = sqlite3.connect(data / "ledger.db", isolation_level=None)
        for conn in (self.cache, self.ledger):
            conn.execute("PRAGMA cache_size = -512")
        c = self.cache
        self.parents: dict[str, str | None] = dict(c.execute("SELECT code, parent FROM categories"))
        self.lineage: dict[str, frozenset[str]] = {}
        self.pricing_cpu: list[float] = []
        program = json.loads(
            c.execute("SELECT value FROM meta WHERE key = 'program'").fetchone()[0]
        )
        self.pv: int = program.get("pointValueMinor", 1)
        self.rates = {t["code"]: Fraction(t["accrualPercent"]) for t in program["tiers"]}
        self.max_redeem = Fraction(program.get("maxRedeemPercent", "100"))
        self.offline_limit: int = program.get("offlineRedeemLimitPoints", 0)
        self.birthday = Fraction(program.get("birthdayMultiplier", "1"))
        self.birthday_days: int = program.get("birthdayWindowDays", 0)
        self.zone = ZoneInfo(program.get("timezone", "UTC"))
        self.mass_sku: dict[str, list[tuple[Any, ...]]] = {}
        self.mass_cat: dict[str, list[tuple[Any, ...]]] = {}
        self.mass_receipt: list[tuple[Any, ...]] = []
        for (doc,) in c.execute("SELECT doc FROM offers WHERE customer_id IS NULL ORDER BY id"):
            self._file(
                offer_record(json.loads(doc)), self.mass_sku, self.mass_cat, self.mass_receipt
            )
        self.mass_cats = frozenset(self.mass_cat)

    @staticmethod
    def _file(
        o: tuple[Any, ...],
        by_sku: dict[str, list[tuple[Any, ...]]],
        by_cat: dict[str, list[tuple[Any, ...]]],
        receipt_level: list[tuple[Any, ...]],
    ) -> None:
        if o[KIND] in _LINE or o[KIND] == "MULTIBUY":
            for s in o[SKUS]:
                by_sku.setdefault(s, []).append(o)
            for g in o[CATS]:
                by_cat.setdefault(g, []).append(o)
        else:
            receipt_level.append(o)

    def _lineage(self, category: str) -> frozenset[str]:
        found = self.lineage.get(category)
        if found is None:
            seen: list[str] = []
            code: str | None = category
            while code and code not in seen:
                seen.append(code)
                code = self.parents.get(code)
            found = self.lineage[category] = frozenset(seen)
        return found

    def __call__(self, receipt: Receipt) -> tuple[Any, ...]:
        c, led = self.cache, self.ledger
        rid = receipt.receipt_id
        c.execute("BEGIN")
        led.execute("BEGIN")
        c.execute("SELECT value FROM meta WHERE key = ?", ("version",)).fetchone()
        led.execute(QUOTE_LOOKUP, (rid, utc_text(datetime.now(UTC)))).fetchone()
        row = c.execute(
            "SELECT k.number, k.customer_id, k.status, c.doc FROM cards k"
            " LEFT JOIN customers c ON c.id = k.customer_id WHERE k.number = ?",
            (receipt.card,),
        ).fetchone()
        assert row is not None and row[2] == "ACTIVE" and row[3] is not None
        customer = json.loads(row[3])
        cid: str = row[1]
        skus = list({line.sku for line in receipt.lines})
        products = {
            r[0]: r
            for r in c.execute(
                "SELECT sku, category, excluded <> 0 FROM products INDEXED BY products_read"
                f" WHERE sku IN ({','.join('?' * len(skus))})",
                skus,
            )
        }
        dict(c.execute("SELECT * FROM applied_through").fetchall())
        unlocked: set[str] = set()  # the offers the receipt's coupons unlock (§13)
        for code in receipt.coupons:
            found = c.execute("SELECT doc FROM coupons WHERE code = ?", (code,)).fetchone()
            coupon = json.loads(found[0]) if found is not None else None
            if coupon is not None and coupon.get("customerId") in (None, cid):
                used = led.execute("SELECT 1 FROM coupon_uses WHERE code = ?", (code,)).fetchone()
                if used is None and _valid(coupon, receipt.at):
                    unlocked.add(coupon["offerId"])
        p_sku: dict[str, list[tuple[Any, ...]]] = {}
        p_cat: dict[str, list[tuple[Any, ...]]] = {}
        p_receipt: list[tuple[Any, ...]] = []
        for (doc,) in c.execute("SELECT doc FROM offers WHERE customer_id = ?", (cid,)):
            self._file(offer_record(json.loads(doc)), p_sku, p_cat, p_receipt)
        held = (
            "(SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
            " WHERE state = 'HELD' AND expires_at > ?1 AND receipt_id IS NOT ?2"
            " AND json_extract(figures, '$.customerId') = ?3)"
        )
        now_text = utc_text(datetime.now(UTC))
        held_points, offline_used = 0, 0
        if receipt.redeem_points:
            held_points, offline_used, _ = led.execute(
                f"SELECT {held}, (SELECT coalesce(sum(redeemed_points), 0) FROM receipts"
                " WHERE card = ?4 AND local_day = ?5 AND mode = 'OFFLINE'), 0",
                (now_text, rid, cid, receipt.card, receipt.at.date().isoformat()),
            ).fetchone()
        else:
            (held_points,) = led.execute(f"SELECT {held}", (now_text, rid, cid)).fetchone()
        led.execute("COMMIT")
        c.execute("COMMIT")

        # pricing: one loop a line (its CPU kept apart: the reads' share is the rest)
        started = time.thread_time()
        at = micros(receipt.at)
        pv = self.pv
        mass_sku, mass_cat, mass_cats = self.mass_sku, self.mass_cat, self.mass_cats
        p_cats = frozenset(p_cat)
        lineage = self.lineage
        groups = frozenset(customer.get("controlGroups", ()))
        local: datetime | None = None
        lines: list[list[Any]] = []  # [sku, amount, eligible, discount, offer, multiplier]
        deals: dict[str, tuple[tuple[Any, ...], list[int]]] = {}  # a deal -> its lines
        sku_qty: dict[str, Decimal] = {}  # the receipt's qty of a SKU (quantity prices)
        for line in receipt.lines:
            sku, amount = line.sku, line.amount
            product = products.get(sku)
            if product is None or product[2]:
                lines.append([sku, amount, False, 0, None, None])
                continue
            cats = lineage.get(product[1]) or self._lineage(product[1])
            cand: list[tuple[Any, ...]] = []
            if sku in p_sku:
                cand += p_sku[sku]
            if sku in mass_sku:
                cand += mass_sku[sku]
            if not cats.isdisjoint(p_cats):
                cand += [o for g in cats for o in p_cat.get(g, ())]
            if not cats.isdisjoint(mass_cats):
                cand += [o for g in cats for o in mass_cat.get(g, ())]
            if not cand:  # most lines
                lines.append([sku, amount, True, 0, None, None])
                continue
            best: tuple[int, int, str] | None = None
            mult: tuple[Fraction, int, str] | None = None
            qty = line.qty
            for o in cand:
                if o[SKIP] or not (o[LOW] <= at <= o[HIGH]) or o[CUSTOMER] not in (None, cid):
                    continue
                if o[CAMPAIGN] in groups:  # held out (its twin pricing left out)
                    continue
                if o[COUPON] and o[ID] not in unlocked:
                    continue
                if o[WINDOW] is not None:
                    if local is None:
                        local = receipt.at.astimezone(self.zone)
                    if not _inside(o[WINDOW], local):
                        continue
                if o[MIN_QTY] and qty < o[MIN_QTY]:
                    continue
                kind, value = o[KIND], o[VALUE]
                if kind == "MULTIBUY":
                    if qty == qty.to_integral_value():  # only whole quantities take part
                        deals.setdefault(o[ID], (o, []))[1].append(len(lines))
                    continue
                if kind == "BONUS_MULTIPLIER":
                    if value > 1 and (mult is None or (-value, o[PRIORITY], o[ID]) < mult):
                        mult = (-value, o[PRIORITY], o[ID])
                    continue
                n, d = qty.as_integer_ratio()
                if kind == "PERCENT_OFF":
                    discount = amount * value.numerator // (100 * value.denominator)
                elif kind == "QUANTITY_PRICE":
                    if not sku_qty:
                        for other in receipt.lines:
                            row = products.get(other.sku)
                            if row is not None and not row[2]:
                                sku_qty[other.sku] = sku_qty.get(other.sku, 0) + other.qty
                    total_qty = sku_qty[sku]
                    reach = [u for q, u in o[TIERS] if q <= total_qty]
                    if not reach:
                        continue
                    discount = amount - round_half_up_ratio(reach[-1] * n, d)
                else:
                    per = round_half_up_ratio(value.numerator * n, value.denominator * d)
                    discount = per if kind == "AMOUNT_OFF" else amount - per
                discount = max(0, min(amount, discount))
                if discount > 0 and (best is None or (-discount, o[PRIORITY], o[ID]) < best):
                    best = (-discount, o[PRIORITY], o[ID])
            lines.append(
                [
                    sku,
                    amount,
                    True,
                    -best[0] if best else 0,
                    best[2] if best else None,
                    -mult[0] if mult else None,
                ]
            )
        # basket deals (§15), in (priority, id) order, over the lines no deal took yet
        taken_by: dict[int, str] = {}
        for deal, deal_lines in sorted(deals.values(), key=lambda d: (d[0][PRIORITY], d[0][ID])):
            parts = [i for i in deal_lines if i not in taken_by]
            if not parts:
                continue
            units = [int(receipt.lines[i].qty) for i in parts]
            shares = multibuy_free(
                [(lines[i][1], u) for i, u in zip(parts, units, strict=True)],
                deal[BUY],
                deal[FREE],
            )
            won = [
                (i, lines[i][1] * free // u)
                for i, u, (free, in_group) in zip(parts, units, shares, strict=True)
                if in_group
            ]
            if sum(d for _, d in won) > sum(lines[i][3] for i, _ in won):
                for i, d in won:
                    lines[i][3], lines[i][4] = d, deal[ID]
                    taken_by[i] = deal[ID]
        basket = sum(x[1] - x[3] for x in lines if x[2])
        extra = 0
        top: tuple[int, int, str, Fraction] | None = None
        for o in (*p_receipt, *self.mass_receipt):
            if o[SKIP] or not (o[LOW] <= at <= o[HIGH]) or basket < o[MIN_TOTAL]:
                continue
            if o[CAMPAIGN] in groups or o[CUSTOMER] not in (None, cid):
                continue
            if o[COUPON] and o[ID] not in unlocked:
                continue
            if o[KIND] == "EXTRA_POINTS":
                extra += int(o[VALUE])
            elif o[KIND] == "RECEIPT_PERCENT_OFF":
                v = o[VALUE]
                total = sum(
                    x[1] * v.numerator // (100 * v.denominator) for x in lines if x[2] and not x[4]
                )
                if total > 0 and (top is None or (-total, o[PRIORITY], o[ID]) < top[:3]):
                    top = (-total, o[PRIORITY], o[ID], v)
        if top is not None:
            v = top[3]
            for x in lines:
                if x[2] and not x[4]:
                    d = min(x[1], x[1] * v.numerator // (100 * v.denominator))
                    if d > 0:
                        x[3], x[4] = d, top[2]
        caps = [(x[1] - x[3]) // pv if x[2] else 0 for x in lines]
        after = sum(x[1] - x[3] for x in lines if x[2])
        limits = [
            max(0, customer.get("balancePoints", 0) - held_points),
            after * self.max_redeem.numerator // (self.max_redeem.denominator * 100 * pv),
            sum(caps),
            max(0, self.offline_limit - offline_used),
        ]
        if receipt.redeem_points != -1:
            limits.append(receipt.redeem_points)
        allowed = max(0, min(limits))
        redeemed = (
            split_integer([allowed * x for x in caps], sum(caps), allowed)
            if allowed > 0
            else [0] * len(lines)
        )
        rate = self.rates.get(customer.get("tier", "base"), Fraction(0))
        born = customer.get("birthday")
        birthday = born is not None and in_birthday_window(
            date.fromisoformat(born), receipt.at.astimezone(self.zone).date(), self.birthday_days
        )
        base = self.birthday if birthday and self.birthday > 1 else Fraction(1)
        # the lines' multipliers: most have none (the base), told without a Fraction
        multiplied = {i: max(x[5], base) for i, x in enumerate(lines) if x[2] and x[5] is not None}
        lcm = base.denominator
        for m in multiplied.values():
            lcm = lcm * m.denominator // _gcd(lcm, m.denominator)
        denominator = 100 * pv * rate.denominator * lcm
        plain = rate.numerator * base.numerator * (lcm // base.denominator)
        numerators = [
            (x[1] - x[3] - r * pv) * plain if x[2] else 0
            for x, r in zip(lines, redeemed, strict=True)
        ]
        for i, m in multiplied.items():
            x = lines[i]
            numerators[i] = (
                (x[1] - x[3] - redeemed[i] * pv)
                * rate.numerator
                * m.numerator
                * (lcm // m.denominator)
            )
        earned = split_integer(numerators, denominator, sum(numerators) // denominator)
        out = tuple(
            (x[0], x[1], x[3], x[4], r * pv, e)
            for x, r, e in zip(lines, redeemed, earned, strict=True)
        )
        self.pricing_cpu.append(time.thread_time() - started)
        return out, sum(x[1] for x in lines), sum(earned) + extra, allowed


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="quick", choices=["tiny", "quick", "store", "chain"])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    scale = Scale.named(args.scale)
    work = Path(tempfile.mkdtemp(prefix="tillpoint-ceiling-"))
    try:
        snap = write_full(work / "full.jsonl", scale)
        known, _ = receipts(scale, args.calls + 40)
        agent = load(work, "data", snap)
        floor, native = ReadFloor(work / "data"), Native(work / "data")
        bodies = [(b, receipt_from_json(b)) for b in known]
        same = 0
        for body, receipt in bodies[:40]:  # warm
            agent.quote(receipt)
            floor(body)
            native(receipt)
        calls: dict[str, Callable[[dict[str, Any], Receipt], object]] = {
            "quote": lambda b, r: agent.quote(r),
            "floor": lambda b, r: floor(b),
            "native": lambda b, r: native(r),
        }
        cpu: dict[str, list[float]] = {k: [] for k in calls}
        rng = random.Random(args.seed)
        for body, receipt in bodies[40:]:
            order = list(calls)
            rng.shuffle(order)
            answers: dict[str, Any] = {}
            for name in order:
                t = time.thread_time()
                answers[name] = calls[name](body, receipt)
                cpu[name].append(time.thread_time() - t)
            real = tuple(tuple(line) for line in answers["quote"].lines)
            same += real == answers["native"][0]
        print(
            f"{args.scale} scale, {len(bodies) - 40} known-card first-sight 50-line receipts,"
            f" CPU of the calling thread, ms"
        )
        base = statistics.fmean(cpu["quote"])
        for name, values in cpu.items():
            s = stats(values)
            mean = statistics.fmean(values)
            print(
                f"  {name:7s} mean {mean * 1000:.3f} ({mean / base:.2f} of the quote)"
                f"  p50 {s['p50_ms']:.3f}  p99 {s['p99_ms']:.3f}"
            )
        pricing = statistics.fmean(native.pricing_cpu[40:])
        print(f"  of the prototype's mean, its pricing {pricing * 1000:.3f}, its reads the rest")
        share = same / (len(bodies) - 40)
        print(f"  the prototype priced every line as the agent did on {share:.0%} of them")
        floor.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
