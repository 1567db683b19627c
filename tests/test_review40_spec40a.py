"""Review 40, spec40a: CONTRACT §14 (when an offer is valid), §15 (basket deals), §7 (offers
printed) and §8 (customer display), checked black-box against an independent model built from
the contract's words alone (docs/CONTRACT.md §2–§8, §14, §15; the
product's pricing code was not read).

Seeded stories: a snapshot in a store zone with or without daylight saving (Moscow, Berlin,
New York), around a clock change of that zone, with offers of every money kind, both basket
deals (`QUANTITY_PRICE` tiers, `MULTIBUY` mix and match), multipliers, receipt offers,
weekday and hour windows (night windows across midnight, `24:00`, windows on the hour the
change repeats or skips), favourite weekdays (none, 0, 1..7), control groups, printable
personal offers with ranks, starting dates within and beyond 7 days and a print cooldown.
Each receipt of a story is quoted and then committed through two real doors — the CLI's
`--json` (in-process `main`) and HTTP on the in-process server over its own Agent and data
dir — and every figure (lines, totals, redemption, accrual, balance, `heldOut`,
`printedOffers`) must be the model's; both doors must give the same document; the display
lines must fit 2 × 20, never show more than the first word of the first name, and carry the
figures §8 asks for (running total and savings on a quote, points earned and balance after
a commit, a birthday line in the birthday window).

The default run walks a few seeds (a few seconds); the long random run is `slow`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import CLI, ean13
from .conftest import post_to as post

# ------------------------------------------------------------------ arithmetic (§2)


def rhu(value: Fraction) -> int:
    """round_half_up of a non-negative Fraction."""
    return int((value * 2 + 1) // 2)


def floor(value: Fraction) -> int:
    return int(value // 1)


def qty_of(text: str) -> Fraction:
    return Fraction(text)


def largest_remainder(total: int, weights: list[Fraction]) -> list[int]:
    whole = sum(weights, Fraction(0))
    if total == 0 or whole == 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    shares = [floor(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def local_days_later(at: datetime, zone: ZoneInfo, days: int) -> datetime:
    """The same local clock time `days` store days later (§5 step 6, §7's decisions)."""
    wall = at.astimezone(zone).replace(tzinfo=None) + timedelta(days=days)
    return wall.replace(tzinfo=zone)


# ------------------------------------------------------------------ the story's world

ZONES = {
    # zone: days with a clock change in 2026 (or an ordinary day)
    "Europe/Moscow": [date(2026, 11, 23)],
    "Europe/Berlin": [date(2026, 3, 29), date(2026, 10, 25)],
    "America/New_York": [date(2026, 3, 8), date(2026, 11, 1)],
}
SKUS = {"A": "dairy", "B": "dairy", "C": "bakery", "D": "food", "X": "tobacco"}
PARENT = {"dairy": "food", "bakery": "food"}
K1 = ean13("277000000001")  # c-1
K2 = ean13("277000000002")  # c-2
K3 = ean13("277000000003")  # c-1's second card: the cooldown is the customer's
KU = ean13("277000000009")  # not in the cache: UNKNOWN
BOUNDS = ["00:00", "02:00", "02:30", "03:00", "08:00", "11:00", "22:00", "23:59"]
IDS = ["o-1", "o-2", "o-9", "o-10", "o-11", "p-3", "q-1", "q-2", "m-1", "m-2", "r-1", "x-1"]


def secs(hhmm: str) -> int:
    h, m = hhmm.split(":")[:2]
    s = int(hhmm.split(":")[2]) if hhmm.count(":") == 2 else 0
    return int(h) * 3600 + int(m) * 60 + s


def pick_window(rng: random.Random) -> dict[str, Any]:
    while True:
        frm = rng.choice(BOUNDS)
        to = rng.choice([*BOUNDS[1:], "24:00"])
        if frm != to:
            return {"from": frm, "to": to}


def make_offer(rng: random.Random, oid: str, kind: str, start: datetime) -> dict[str, Any]:
    offer: dict[str, Any] = {"id": oid, "kind": kind, "priority": rng.choice([5, 10, 10])}
    if rng.random() < 0.8:
        offer["campaignId"] = rng.choice(["camp-a", "camp-b", "camp-c"])
    who = rng.random()
    if who < 0.55:
        offer["customerId"] = "c-1"
    elif who < 0.65:
        offer["customerId"] = "c-2"
    # validity: mostly the whole story, sometimes starting or ending inside it
    frm = start - timedelta(days=30)
    to = start + timedelta(days=60)
    r = rng.random()
    if r < 0.2:
        frm = start + timedelta(hours=rng.choice([1, 20, 49, 24 * 7 + 2, 24 * 9]))
    elif r < 0.3:
        to = start + timedelta(hours=rng.choice([3, 30, 50]), seconds=-1)
    zone_fmt = rng.choice(["Z", "+03:00", "-05:00"])
    offer["validFrom"] = fmt(frm, zone_fmt)
    offer["validTo"] = fmt(to, zone_fmt)
    if kind not in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS"):
        if rng.random() < 0.6:
            offer["skus"] = rng.sample(sorted(SKUS), rng.randint(1, 3))
        else:
            offer["categories"] = [rng.choice(["dairy", "food", "bakery", "tobacco"])]
        offer["minQty"] = rng.choice(["0", "0", "1", "2", "1.5"])
    if kind == "PERCENT_OFF":
        offer["value"] = rng.choice(["10", "15", "33.3", "50"])
    elif kind == "AMOUNT_OFF":
        offer["value"] = rng.choice(["150", "1000", "333"])
    elif kind == "FIXED_PRICE":
        offer["value"] = rng.choice(["500", "1500", "0"])
    elif kind == "BONUS_MULTIPLIER":
        offer["value"] = rng.choice(["2", "3", "7"])
    elif kind == "QUANTITY_PRICE":
        mins = rng.sample(["1", "2", "3", "1.5", "4"], rng.randint(1, 2))
        offer["tiers"] = [
            {"minQty": m, "unitPriceMinor": rng.choice([300, 800, 1200, 2500])} for m in mins
        ]
    elif kind == "MULTIBUY":
        offer["buyQty"] = rng.choice(["1", "2", "3"])
        offer["freeQty"] = rng.choice(["1", "1", "2"])
    elif kind == "RECEIPT_PERCENT_OFF":
        offer["value"] = rng.choice(["5", "10"])
        offer["minTotalMinor"] = rng.choice([0, 5000, 20000])
    elif kind == "EXTRA_POINTS":
        offer["value"] = rng.choice(["50", "7"])
        offer["minTotalMinor"] = rng.choice([0, 5000, 20000])
    # §14 windows
    if rng.random() < 0.35:
        offer["weekdays"] = sorted(rng.sample(range(1, 8), rng.randint(1, 4)))
    if rng.random() < 0.45:
        offer["hours"] = [pick_window(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.2:
        offer["onFavoriteWeekday"] = True
    # §7
    if rng.random() < 0.6:
        offer["printable"] = True
        offer["printText"] = f"Предложение {oid}"
    if rng.random() < 0.8:
        offer["rank"] = rng.choice([1, 2, 2, 3])
    return offer


def fmt(at: datetime, how: str) -> str:
    """`at` written with the offset `how` ("Z", "+03:00", "-05:00"): the same instant."""
    if how == "Z":
        return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    sign = 1 if how[0] == "+" else -1
    return at.astimezone(timezone(timedelta(hours=sign * int(how[1:3])))).isoformat()


KINDS = [
    "PERCENT_OFF",
    "AMOUNT_OFF",
    "FIXED_PRICE",
    "QUANTITY_PRICE",
    "QUANTITY_PRICE",
    "MULTIBUY",
    "MULTIBUY",
    "MULTIBUY",
    "BONUS_MULTIPLIER",
    "RECEIPT_PERCENT_OFF",
    "EXTRA_POINTS",
]


def make_snapshot(rng: random.Random, zone: str, start: datetime) -> dict[str, Any]:
    ids = rng.sample(IDS, rng.randint(5, 10))
    offers = [make_offer(rng, oid, rng.choice(KINDS), start) for oid in ids]
    local_start = start.astimezone(ZoneInfo(zone)).date()
    c1: dict[str, Any] = {
        "id": "c-1",
        "firstName": rng.choice(["Анна", "Анна Мария", "Ольга-Мария", "Zoë"]),
        "tier": rng.choice(["base", "gold"]),
        "balancePoints": rng.choice([0, 120, 1500]),
        "phone": "+79161234567",
    }
    groups = rng.sample(["camp-a", "camp-b", "camp-c"], rng.randint(0, 2))
    if groups:
        c1["controlGroups"] = groups
    fav = rng.choice([None, 0, 1, 2, 3, 4, 5, 6, 7])
    if fav is not None:
        c1["favoriteWeekday"] = fav
    if rng.random() < 0.6:
        bd = local_start + timedelta(days=rng.randint(-2, 9))
        c1["birthday"] = f"1990-{bd.month:02d}-{bd.day:02d}"
    return {
        "version": 1,
        "baseVersion": 0,
        "issuedAt": fmt(start - timedelta(days=40), "Z"),
        "program": {
            "currency": "RUB",
            "timezone": zone,
            "pointValueMinor": rng.choice([100, 100, 50]),
            "maxRedeemPercent": rng.choice([30, 100]),
            "activationDelayDays": 0,
            "offlineRedeemLimitPoints": rng.choice([500, 30]),
            "birthdayMultiplier": rng.choice([5, 2]),
            "birthdayWindowDays": rng.choice([7, 0, 3]),
            "maxOffersPrinted": rng.choice([0, 1, 2, 5]),
            "offerPrintCooldownDays": rng.choice([0, 1, 2, 7]),
            "tiers": [
                {"code": "base", "accrualPercent": rng.choice(["3", "4.25"])},
                {"code": "gold", "accrualPercent": "7.5"},
            ],
        },
        "categories": [
            {"code": "food", "name": "Еда"},
            {"code": "dairy", "parent": "food", "name": "Молочные"},
            {"code": "bakery", "parent": "food", "name": "Хлеб"},
            {"code": "tobacco", "name": "Табак"},
        ],
        "products": [
            {
                "sku": s,
                "name": f"Товар {s}",
                "category": c,
                **({"excludedFromLoyalty": True} if s == "X" else {}),
            }
            for s, c in SKUS.items()
        ],
        "customers": [
            c1,
            {"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 40},
        ],
        "cards": [
            {"number": K1, "customerId": "c-1", "status": "ACTIVE"},
            {"number": K2, "customerId": "c-2", "status": "ACTIVE"},
            {"number": K3, "customerId": "c-1", "status": "ACTIVE"},
        ],
        "offers": offers,
    }


# ------------------------------------------------------------------ the model


def ancestors(cat: str) -> set[str]:
    out = {cat}
    while cat in PARENT:
        cat = PARENT[cat]
        out.add(cat)
    return out


def targets(offer: dict[str, Any], sku: str) -> bool:
    if sku in offer.get("skus", []):
        return True
    cat = SKUS.get(sku)
    return cat is not None and bool(ancestors(cat) & set(offer.get("categories", [])))


def in_window(offer: dict[str, Any], local: datetime, fav: int | None) -> bool:
    """§14: weekdays, hours (from inclusive, to exclusive, night windows belong to the day
    they start), onFavoriteWeekday; all on the store's local clock."""
    weekdays = offer.get("weekdays") or []
    hours = offer.get("hours") or []

    def day_ok(day: date) -> bool:
        if weekdays and day.isoweekday() not in weekdays:
            return False
        return not (offer.get("onFavoriteWeekday") and (not fav or day.isoweekday() != fav))

    clock = local.hour * 3600 + local.minute * 60 + local.second
    today = local.date()
    if not hours:
        return day_ok(today)
    for h in hours:
        frm, to = secs(h["from"]), secs(h["to"])
        if frm < to:
            if frm <= clock < to and day_ok(today):
                return True
        else:
            if clock >= frm and day_ok(today):
                return True
            if clock < to and day_ok(today - timedelta(days=1)):
                return True
    return False


def valid_at(offer: dict[str, Any], at: datetime) -> bool:
    return (
        datetime.fromisoformat(offer["validFrom"]) <= at <= datetime.fromisoformat(offer["validTo"])
    )


def birthday_on(snap: dict[str, Any], cust: dict[str, Any], local_day: date) -> bool:
    if "birthday" not in cust:
        return False
    _, m, d = (int(x) for x in cust["birthday"].split("-"))

    def in_year(y: int) -> date:
        if m == 2 and d == 29:
            try:
                return date(y, 2, 29)
            except ValueError:
                return date(y, 2, 28)
        return date(y, m, d)

    nxt = in_year(local_day.year)
    if nxt < local_day:
        nxt = in_year(local_day.year + 1)
    return (nxt - local_day).days <= snap["program"]["birthdayWindowDays"]


@dataclass
class Book:
    """What the model remembers between receipts of a story (one door's till)."""

    balance: dict[str, int] = field(default_factory=dict)
    offline_used: dict[tuple[str, date], int] = field(default_factory=dict)
    prints: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)


def line_discount(offer: dict[str, Any], amount: int, qty: Fraction, sku_total: Fraction) -> int:
    kind = offer["kind"]
    if kind == "PERCENT_OFF":
        d = floor(amount * Fraction(offer["value"]) / 100)
    elif kind == "AMOUNT_OFF":
        d = min(amount, rhu(Fraction(offer["value"]) * qty))
    elif kind == "FIXED_PRICE":
        d = max(0, amount - rhu(Fraction(offer["value"]) * qty))
    elif kind == "QUANTITY_PRICE":
        reached = [t for t in offer["tiers"] if Fraction(t["minQty"]) <= sku_total]
        if not reached:
            return 0
        tier = max(reached, key=lambda t: Fraction(t["minQty"]))
        d = max(0, amount - rhu(tier["unitPriceMinor"] * qty))
    else:
        raise AssertionError(kind)
    return min(d, amount)


LINE_KINDS = {"PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE"}


def price_offers(
    snap: dict[str, Any],
    lines: list[dict[str, Any]],
    offers: list[dict[str, Any]],
    birthday: bool,
) -> dict[str, Any]:
    """Steps 2, 3 and the multipliers of step 5, §15 first: which offer each line gets."""
    n = len(lines)
    elig = [ln["eligible"] for ln in lines]
    disc = [0] * n
    oid: list[str | None] = [None] * n
    used: set[str] = set()
    sku_total: dict[str, Fraction] = {}
    for ln in lines:
        if ln["eligible"]:
            sku_total[ln["sku"]] = sku_total.get(ln["sku"], Fraction(0)) + ln["qty"]

    def fits(o: dict[str, Any], i: int) -> bool:
        ln = lines[i]
        return elig[i] and targets(o, ln["sku"]) and ln["qty"] >= Fraction(o.get("minQty", "0"))

    def best_line(i: int) -> tuple[int, str | None]:
        cands = []
        for o in offers:
            if o["kind"] in LINE_KINDS and fits(o, i):
                d = line_discount(
                    o, lines[i]["amount"], lines[i]["qty"], sku_total[lines[i]["sku"]]
                )
                if d > 0:
                    cands.append((-d, o["priority"], o["id"]))
        if not cands:
            return 0, None
        c = min(cands)
        return -c[0], c[2]

    taken = [False] * n
    for o in sorted(
        (o for o in offers if o["kind"] == "MULTIBUY"), key=lambda o: (o["priority"], o["id"])
    ):
        part = [
            i for i in range(n) if not taken[i] and fits(o, i) and lines[i]["qty"].denominator == 1
        ]
        units: list[tuple[Fraction, int, int]] = []  # (-unit price, line order, line)
        for i in part:
            unit = Fraction(lines[i]["amount"]) / lines[i]["qty"]
            units += [(-unit, i, i)] * int(lines[i]["qty"])
        units.sort(key=lambda u: (u[0], u[1]))
        size = int(o["buyQty"]) + int(o["freeQty"])
        free = dict.fromkeys(part, 0)
        in_group: set[int] = set()
        for g in range(len(units) // size):
            group = units[g * size : (g + 1) * size]
            for u in group:
                in_group.add(u[2])
            for u in group[size - int(o["freeQty"]) :]:
                free[u[2]] += 1
        deal_lines = sorted(in_group)
        dd = {
            i: floor(lines[i]["amount"] * Fraction(free[i]) / lines[i]["qty"]) for i in deal_lines
        }
        if not deal_lines:
            continue
        if sum(dd.values()) > sum(best_line(i)[0] for i in deal_lines):
            for i in deal_lines:
                taken[i] = True
                disc[i] = dd[i]
                oid[i] = o["id"]
            used.add(o["id"])
    for i in range(n):
        if elig[i] and not taken[i]:
            d, o_id = best_line(i)
            if o_id is not None:
                disc[i], oid[i] = d, o_id
                used.add(o_id)
    # step 3: receipt offers
    after2 = sum(lines[i]["amount"] - disc[i] for i in range(n) if elig[i])
    best: tuple[int, int, str] | None = None
    best_per: list[int] = []
    for o in offers:
        if o["kind"] != "RECEIPT_PERCENT_OFF" or after2 < o.get("minTotalMinor", 0):
            continue
        per = [
            floor(lines[i]["amount"] * Fraction(o["value"]) / 100)
            if elig[i] and oid[i] is None
            else 0
            for i in range(n)
        ]
        key = (-sum(per), o["priority"], o["id"])
        if best is None or key < best:
            best, best_per = key, per
    if best is not None and -best[0] > 0:
        for i in range(n):
            if best_per[i] > 0:
                disc[i] = best_per[i]
                oid[i] = best[2]
        used.add(best[2])
    extra = 0
    for o in offers:
        if o["kind"] == "EXTRA_POINTS" and after2 >= o.get("minTotalMinor", 0):
            extra += int(o["value"])
            used.add(o["id"])
    # multipliers
    bmult = Fraction(snap["program"]["birthdayMultiplier"]) if birthday else Fraction(1)
    mult = [Fraction(1)] * n
    for i in range(n):
        cands = [
            (-Fraction(o["value"]), o["priority"], o["id"])
            for o in offers
            if o["kind"] == "BONUS_MULTIPLIER" and fits(o, i)
        ]
        own = min(cands) if cands else None
        m = max(Fraction(1), bmult, -own[0] if own else Fraction(1))
        mult[i] = m
        if own is not None and -own[0] > max(Fraction(1), bmult):
            used.add(own[2])
    return {"disc": disc, "oid": oid, "extra": extra, "mult": mult, "used": used}


def model(
    snap: dict[str, Any], book: Book, receipt: dict[str, Any], commit: bool
) -> dict[str, Any]:
    prog = snap["program"]
    zone = ZoneInfo(prog["timezone"])
    pv = prog["pointValueMinor"]
    at = datetime.fromisoformat(receipt["at"])
    local = at.astimezone(zone)
    card = next((c for c in snap["cards"] if c["number"] == receipt["card"]), None)
    cust = next((c for c in snap["customers"] if card and c["id"] == card["customerId"]), None)
    found = cust is not None
    products = {p["sku"]: p for p in snap["products"]}
    lines = []
    for ln in receipt["lines"]:
        qty = qty_of(ln["qty"])
        amount = ln.get("amountMinor", rhu(ln["priceMinor"] * qty))
        p = products.get(ln["sku"])
        lines.append(
            {
                "sku": ln["sku"],
                "qty": qty,
                "amount": amount,
                "eligible": p is not None and not p.get("excludedFromLoyalty", False),
            }
        )
    n = len(lines)
    fav = cust.get("favoriteWeekday") if cust else None
    groups = set(cust.get("controlGroups", [])) if cust else set()

    def usable(ignore_groups: bool) -> list[dict[str, Any]]:
        if not found:
            return []
        out = []
        for o in snap["offers"]:
            if o.get("customerId") not in (None, cust["id"]):
                continue
            if not valid_at(o, at) or not in_window(o, local, fav):
                continue
            if not ignore_groups and o.get("campaignId") in groups:
                continue
            out.append(o)
        return out

    bday = found and birthday_on(snap, cust, local.date())
    res = price_offers(snap, lines, usable(False), bday)
    held = []
    if found and groups:
        alt = price_offers(snap, lines, usable(True), bday)
        held = sorted(
            o["id"]
            for o in usable(True)
            if o.get("campaignId") in groups and o["id"] in alt["used"]
        )
    disc = res["disc"]
    # step 4: redemption
    caps = [
        floor(Fraction(lines[i]["amount"] - disc[i], pv)) if lines[i]["eligible"] else 0
        for i in range(n)
    ]
    redeemed = 0
    key = (receipt["card"], local.date())
    if found:
        req = receipt.get("redeemPoints", 0)
        avail = max(0, book.balance.setdefault(cust["id"], cust["balancePoints"]))
        elig_after = sum(lines[i]["amount"] - disc[i] for i in range(n) if lines[i]["eligible"])
        allowed = min(
            avail,
            floor(Fraction(elig_after * prog["maxRedeemPercent"], 100 * pv)),
            sum(caps),
            prog["offlineRedeemLimitPoints"] - book.offline_used.get(key, 0),
        )
        if req >= 0:
            allowed = min(allowed, req)
        redeemed = max(0, allowed)
    shares = largest_remainder(redeemed, [Fraction(c) for c in caps])
    # step 5: accrual
    tier = cust["tier"] if found else prog["tiers"][0]["code"]
    rate = Fraction(next(t for t in prog["tiers"] if t["code"] == tier)["accrualPercent"])
    exact = [
        Fraction(lines[i]["amount"] - disc[i] - shares[i] * pv)
        * rate
        * (res["mult"][i] if found else 1)
        / (100 * pv)
        if lines[i]["eligible"]
        else Fraction(0)
        for i in range(n)
    ]
    whole = floor(sum(exact, Fraction(0)))
    earned_lines = [floor(e) for e in exact]
    order = sorted(range(n), key=lambda i: (-(exact[i] - earned_lines[i]), i))
    for i in order[: whole - sum(earned_lines)]:
        earned_lines[i] += 1
    earned = whole + (res["extra"] if found else 0)
    total = sum(ln["amount"] for ln in lines)
    discount = sum(disc)
    balance = None
    if found:
        balance = book.balance[cust["id"]] - redeemed + earned
    printed: list[str] = []
    if commit and found:
        printed = pick_prints(snap, book, cust, at, fav, groups)
        book.balance[cust["id"]] = balance  # type: ignore[assignment]
        book.offline_used[key] = book.offline_used.get(key, 0) + redeemed
        for o in printed:
            book.prints.setdefault((cust["id"], o), []).append(at)
    return {
        "status": "FOUND" if found else "UNKNOWN",
        "lines": [
            {
                "sku": lines[i]["sku"],
                "amountMinor": lines[i]["amount"],
                "discountMinor": disc[i],
                "offerId": res["oid"][i],
                "redeemedMinor": shares[i] * pv,
                "earnedPoints": earned_lines[i],
            }
            for i in range(n)
        ],
        "totalMinor": total,
        "discountMinor": discount,
        "redeemedPoints": redeemed,
        "payableMinor": total - discount - redeemed * pv,
        "earnedPoints": earned,
        "availablePoints": balance,
        "heldOut": held,
        "printedOffers": printed,
        "birthday": bool(bday),
    }


def pick_prints(
    snap: dict[str, Any],
    book: Book,
    cust: dict[str, Any],
    at: datetime,
    fav: int | None,
    groups: set[str],
) -> list[str]:
    """§7 with §14: personal printable offers of this customer valid at `at` (inside their
    window) or starting within 7 store days, outside the control group, not printed within
    the cooldown; by rank then id; at most maxOffersPrinted."""
    prog = snap["program"]
    zone = ZoneInfo(prog["timezone"])
    local = at.astimezone(zone)
    within7 = local_days_later(at, zone, 7)
    picked = []
    for o in snap["offers"]:
        if o.get("customerId") != cust["id"] or not o.get("printable"):
            continue
        if o.get("campaignId") in groups:
            continue
        start = datetime.fromisoformat(o["validFrom"])
        now_ok = valid_at(o, at) and in_window(o, local, fav)
        soon = at < start <= within7
        if not (now_ok or soon):
            continue
        cool = prog["offerPrintCooldownDays"]
        if any(
            at < local_days_later(p, zone, cool) for p in book.prints.get((cust["id"], o["id"]), [])
        ):
            continue
        picked.append(o)
    picked.sort(key=lambda o: (o.get("rank", 0), o["id"]))
    return [o["id"] for o in picked[: min(prog["maxOffersPrinted"], 50)]]


# ------------------------------------------------------------------ the receipts


def make_times(
    rng: random.Random, zone: str, day: date, offers: list[dict[str, Any]]
) -> list[datetime]:
    """Increasing instants around `day` (a clock change in DST zones): window bounds and a
    second before them; the change's own night hours (both folds of a repeated hour) on the
    change day and 1, 2 or 7 days before it, so a print cooldown's and §7's "same clock time
    N days later" also lands on a skipped or a repeated hour (the first occurrence of a
    repeated time, a skipped time read on the clock before the change: CONTRACT §16's
    decisions, which §7's decisions count days by); exactly 1, 2 or 7 store days after an
    earlier receipt; ordinary steps otherwise."""
    z = ZoneInfo(zone)
    bounds = sorted(
        {secs(h[k]) % 86400 for o in offers for h in o.get("hours", []) for k in ("from", "to")}
    )
    night = [
        3600 + 59 * 60 + 59,
        2 * 3600,
        2 * 3600 + 1800,
        2 * 3600 + 3599,
        3 * 3600,
        3 * 3600 + 1800,
    ]
    out: list[datetime] = []
    first = day - timedelta(days=rng.choice([1, 2, 3, 8]))
    cur = datetime.combine(first, datetime.min.time(), z).replace(hour=9).astimezone(UTC)
    for _ in range(rng.randint(5, 8)):
        step = rng.random()
        if step < 0.4 and bounds:
            base_day = cur.astimezone(z).date() + timedelta(days=rng.choice([0, 0, 1]))
            s = (rng.choice(bounds) - rng.choice([0, 1])) % 86400
            cand = datetime.combine(base_day, datetime.min.time()) + timedelta(seconds=s)
            nxt = cand.replace(tzinfo=z, fold=rng.choice([0, 1])).astimezone(UTC)
        elif step < 0.6:
            base_day = day - timedelta(days=rng.choice([0, 0, 1, 2, 7]))
            cand = datetime.combine(base_day, datetime.min.time()) + timedelta(
                seconds=rng.choice(night)
            )
            nxt = cand.replace(tzinfo=z, fold=rng.choice([0, 1])).astimezone(UTC)
        elif step < 0.8 and out:
            # exactly N store days after an earlier receipt (a print cooldown's end)
            nxt = local_days_later(rng.choice(out), z, rng.choice([1, 2, 7])).astimezone(UTC)
            nxt += timedelta(seconds=rng.choice([0, 0, -1]))
        else:
            nxt = cur + rng.choice(
                [
                    timedelta(seconds=1),
                    timedelta(hours=1),
                    timedelta(hours=6),
                    timedelta(hours=23),
                    timedelta(days=1),
                    timedelta(days=2),
                ]
            )
        if nxt <= cur:
            nxt = cur + timedelta(hours=rng.choice([1, 5, 23, 24]))
        out.append(nxt)
        cur = nxt
    return out


def sharpen(rng: random.Random, snap: dict[str, Any], zone: str, times: list[datetime]) -> None:
    """Put some offers' bounds on the receipts' own instants: valid from or to exactly a
    receipt's `at` (inclusive bounds), or starting exactly 7 store days after it, or a
    second later (§7's "starting within 7 days")."""
    z = ZoneInfo(zone)
    for o in snap["offers"]:
        r = rng.random()
        at = rng.choice(times)
        if r < 0.15:
            o["validFrom"] = fmt(at + timedelta(seconds=rng.choice([0, 1])), "Z")
        elif r < 0.25:
            o["validTo"] = fmt(at - timedelta(seconds=rng.choice([0, 1])), "+03:00")
        elif r < 0.4:
            later = local_days_later(at, z, 7) + timedelta(seconds=rng.choice([0, 0, 1]))
            o["validFrom"] = fmt(later, "Z")
        elif r < 0.45:
            o["weekdays"] = []
            o["hours"] = []
        if datetime.fromisoformat(o["validFrom"]) > datetime.fromisoformat(o["validTo"]):
            o["validTo"] = fmt(datetime.fromisoformat(o["validFrom"]) + timedelta(days=20), "Z")


def make_receipt(rng: random.Random, rid: str, at: datetime) -> dict[str, Any]:
    lines = []
    for _ in range(rng.randint(1, 5)):
        ln: dict[str, Any] = {
            "sku": rng.choice(["A", "A", "B", "C", "D", "X", "U"]),
            "qty": rng.choice(["1", "2", "3", "4", "0.5", "1.25", "2.000", "3.0", "1.500"]),
            "priceMinor": rng.choice([333, 990, 1999, 4590, 12000]),
        }
        if rng.random() < 0.15:
            ln["amountMinor"] = rhu(ln["priceMinor"] * Fraction(ln["qty"])) - rng.choice([0, 7])
        lines.append(ln)
    return {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": fmt(at, rng.choice(["Z", "+03:00", "-05:00"])),
        "card": rng.choice([K1, K1, K1, K3, K2, KU]),
        "lines": lines,
        "redeemPoints": rng.choice([0, 0, 50, -1]),
    }


# ------------------------------------------------------------------ the doors


@pytest.fixture
def http_door(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], int]]:
    """A function that starts an Agent on a fresh data dir with a snapshot, served over HTTP."""
    made: list[tuple[Agent, HttpServer]] = []

    def start(snap: dict[str, Any]) -> int:
        agent = Agent(tmp_path / f"http-{len(made)}", "till-1")
        agent.load_snapshot(snap)
        srv = HttpServer(agent, "127.0.0.1:0")
        srv.start()
        made.append((agent, srv))
        return srv.port

    yield start
    for agent, srv in made:
        srv.stop()
        agent.close()


def figures(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": result["card"]["status"],
        "lines": [
            {
                k: ln.get(k)
                for k in (
                    "sku",
                    "amountMinor",
                    "discountMinor",
                    "offerId",
                    "redeemedMinor",
                    "earnedPoints",
                )
            }
            for ln in result["lines"]
        ],
        "totalMinor": int(result["totalMinor"]),
        "discountMinor": int(result["discountMinor"]),
        "redeemedPoints": int(result["redeemedPoints"]),
        "payableMinor": int(result["payableMinor"]),
        "earnedPoints": int(result["earnedPoints"]),
        "availablePoints": (
            int(result["balance"]["availablePoints"])
            if result["card"]["status"] == "FOUND"
            else None
        ),
        "heldOut": result.get("heldOut", []),
        "printedOffers": result.get("printedOffers", []),
    }


def money(minor: int) -> str:
    return f"{minor // 100},{minor % 100:02d}"


def check_display(
    result: dict[str, Any], want: dict[str, Any], snap: dict[str, Any], committed: bool
) -> list[str]:
    """§8: 2 lines × 20 characters, at most the first name's first word, the figures asked for."""
    errs = []
    disp = result.get("display", [])
    if len(disp) > 2 or any(len(line) > 20 for line in disp):
        errs.append(f"display does not fit 2 × 20: {disp}")
    text = " ".join(disp)
    flat = text.replace(" ", "").replace("\u00a0", "")
    for cust in snap["customers"]:
        words = cust["firstName"].replace("-", " ").split()
        if len(cust["firstName"].split()) > 1 and cust["firstName"] in text:
            errs.append(f"display shows more than the first name: {disp}")
        for w in words[1:]:
            if w in text and w not in cust["firstName"].split()[0]:
                errs.append(f"display shows {w!r} beyond the first name: {disp}")
        if "phone" in cust and cust["phone"][-7:] in flat:
            errs.append(f"display shows the phone: {disp}")
    if committed:
        if f"+{want['earnedPoints']}" not in flat:
            errs.append(f"display lacks the points earned +{want['earnedPoints']}: {disp}")
        if want["status"] == "FOUND":
            if str(want["availablePoints"]) not in flat:
                errs.append(f"display lacks the balance {want['availablePoints']}: {disp}")
            if want["birthday"] and "рожд" not in text.lower() and "ДР" not in text:
                errs.append(f"display lacks the birthday line in the window: {disp}")
    else:
        if money(want["totalMinor"]).replace(" ", "") not in flat:
            errs.append(
                f"quote display lacks the running total {money(want['totalMinor'])}: {disp}"
            )
        saving = want["totalMinor"] - want["payableMinor"]
        if saving and money(saving) not in flat:
            errs.append(f"quote display lacks the savings {money(saving)}: {disp}")
    return errs


def without_expiry(result: dict[str, Any]) -> dict[str, Any]:
    """A hold's `holdExpiresAt` is read on each door's own clock: everything else is equal."""
    return {k: v for k, v in result.items() if k != "holdExpiresAt"}


def diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    keys = [k for k in got if got[k] != want.get(k)]
    return "; ".join(f"{k}: product {got[k]!r}, model {want.get(k)!r}" for k in keys)


def story(seed: int, cli: CLI, http_door: Callable[[dict[str, Any]], int]) -> list[str]:
    rng = random.Random(seed)
    zone = rng.choice(sorted(ZONES))
    day = rng.choice(ZONES[zone])
    start = datetime.combine(day - timedelta(days=3), datetime.min.time(), ZoneInfo(zone))
    snap = make_snapshot(rng, zone, start)
    times = make_times(rng, zone, day, snap["offers"])
    sharpen(rng, snap, zone, times)
    r = cli("snapshot", "load", snap)
    assert r.code == 0, r.err
    port = http_door(snap)
    book = Book()
    errs: list[str] = []
    for k, at in enumerate(times):
        receipt = make_receipt(rng, f"s{seed}-r{k}", at)
        where = (
            f"seed {seed} {zone} receipt {k} at {receipt['at']} ({at.astimezone(ZoneInfo(zone))})"
        )
        life = rng.choice(["checkout", "checkout", "checkout", "hold-confirm", "hold-cancel"])
        calls = {
            "checkout": [("quote", False), ("checkout", True)],
            "hold-confirm": [("quote", False), ("hold", False), ("confirm", True)],
            "hold-cancel": [("quote", False), ("hold", False), ("cancel", False)],
        }[life]
        for call, commit in calls:
            want = model(snap, book, receipt, commit)
            body = (
                receipt
                if call in ("quote", "hold", "checkout")
                else {"receiptId": receipt["receiptId"]}
            )
            if body is receipt:
                r = cli(call, receipt, "--json")
            else:
                r = cli(call, receipt["receiptId"], "--json")
            if r.code != 0:
                errs.append(f"{where} {call}: exit {r.code}: {r.err}")
                return errs
            got = r.json()
            code, via_http = post(port, f"/v1/{call}", body)
            if code != 200 or without_expiry(via_http) != without_expiry(got):
                errs.append(f"{where} {call}: HTTP {code} differs from the CLI: {via_http}")
            d = diff(figures(got), {k: v for k, v in want.items() if k != "birthday"})
            if d:
                errs.append(f"{where} {call}: {d}")
            if call != "cancel":
                errs += [f"{where} {call}: {e}" for e in check_display(got, want, snap, commit)]
            if errs:
                return errs
    return errs


@pytest.mark.parametrize("seed", range(3))
def test_windows_deals_prints_and_display_agree_with_the_model(
    seed: int, cli: CLI, http_door: Callable[[dict[str, Any]], int]
) -> None:
    errs = story(seed, cli, http_door)
    assert not errs, "\n".join(errs)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 203))
def test_windows_deals_prints_and_display_agree_with_the_model_long(
    seed: int, cli: CLI, http_door: Callable[[dict[str, Any]], int]
) -> None:
    errs = story(seed, cli, http_door)
    assert not errs, "\n".join(errs)


# ------------------------------------------------------------------ pinned by hand


def doors(
    cli: CLI, http_door: Callable[[dict[str, Any]], int], snap: dict[str, Any]
) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """Load `snap` at both doors; the function commits or quotes a receipt at both, checks
    that they answer alike, and returns the answer."""
    r = cli("snapshot", "load", snap)
    assert r.code == 0, r.err
    port = http_door(snap)

    def call(what: str, receipt: dict[str, Any]) -> dict[str, Any]:
        by_id = what in ("confirm", "cancel")
        r = cli(what, receipt["receiptId"] if by_id else receipt, "--json")
        assert r.code == 0, r.err
        code, via_http = post(port, f"/v1/{what}", receipt)
        assert code == 200, via_http
        assert without_expiry(via_http) == without_expiry(r.json())
        return dict(r.json())

    return call


BERLIN_ALL_YEAR = {
    "validFrom": "2026-01-01T00:00:00+01:00",
    "validTo": "2026-12-31T23:59:59+01:00",
    "priority": 10,
}


def berlin_snapshot(offers: list[dict[str, Any]], cooldown: int) -> dict[str, Any]:
    snap = make_snapshot(random.Random(1), "Europe/Berlin", datetime(2026, 3, 1, tzinfo=UTC))
    snap["offers"] = offers
    snap["program"].update(maxOffersPrinted=5, offerPrintCooldownDays=cooldown)
    for key in ("controlGroups", "birthday", "favoriteWeekday"):
        snap["customers"][0].pop(key, None)
    return snap


def printable(oid: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": oid,
        "kind": "PERCENT_OFF",
        "customerId": "c-1",
        "skus": ["C"],
        "value": "10",
        "printable": True,
        "printText": f"Предложение {oid}",
        **BERLIN_ALL_YEAR,
        **changes,
    }


def sale(rid: str, at: str) -> dict[str, Any]:
    return {
        "receiptId": rid,
        "at": at,
        "card": K1,
        "lines": [{"sku": "A", "qty": "1", "priceMinor": 990}],
        "redeemPoints": 0,
    }


@pytest.mark.parametrize(
    ("printed_at", "too_early", "again"),
    [
        # Spring: 22 March 02:30 + 7 store days is 29 March 02:30, a clock time the change
        # skips: the moment it would be on the clock before the change, 03:30 CEST (01:30
        # UTC), as §5 step 6 and §16 count it (CONTRACT §16's decisions). The till printed
        # the offer again from 03:00, half an hour early (the cooldown was counted back
        # from the sale, 7 days before 03:00 being 22 March 03:00, after the print).
        ("2026-03-22T02:30:00+01:00", "2026-03-29T03:29:59+02:00", "2026-03-29T03:30:00+02:00"),
        ("2026-03-22T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"),
        # Autumn: a print in the repeated hour's second run (02:30 CET on 25 October) may
        # print again at 02:30 on 1 November; counted back from the sale, 1 November 02:30
        # less 7 days read as the first 02:30 of 25 October (CEST), before the print, and
        # the till held the offer back until 03:00.
        ("2026-10-25T02:30:00+01:00", "2026-11-01T02:29:59+01:00", "2026-11-01T02:30:00+01:00"),
        # The repeated hour's first run: 18 October 02:30 + 7 days is the first 02:30.
        ("2026-10-18T02:30:00+02:00", "2026-10-25T02:29:59+02:00", "2026-10-25T02:30:00+02:00"),
    ],
)
def test_the_print_cooldown_ends_at_the_same_local_clock_time_over_a_clock_change(
    printed_at: str,
    too_early: str,
    again: str,
    cli: CLI,
    http_door: Callable[[dict[str, Any]], int],
) -> None:
    """CONTRACT §7's decisions: "an offer printed exactly offerPrintCooldownDays ago may be
    printed again; anything more recent may not. These days [...] are the store's days,
    at the same local clock time also across a daylight-saving change, as §5 step 6
    counts them"; §16's decisions say how a skipped or repeated clock time is read."""
    call = doors(cli, http_door, berlin_snapshot([printable("o-1")], cooldown=7))
    assert call("checkout", sale("r1", printed_at))["printedOffers"] == ["o-1"]
    assert call("checkout", sale("r2", too_early))["printedOffers"] == []
    assert call("checkout", sale("r3", again))["printedOffers"] == ["o-1"]


def test_the_seven_days_ahead_end_at_the_same_local_clock_time_over_a_clock_change(
    cli: CLI, http_door: Callable[[dict[str, Any]], int]
) -> None:
    """§7's "starting within 7 days", counted as the cooldown is (found right; pinned with
    the fix above so both ends of §7's day count stay one rule)."""
    offers = [
        printable("p-s", validFrom="2026-03-29T03:30:00+02:00"),
        printable("p-t", validFrom="2026-03-29T03:30:01+02:00"),
        printable("p-u", validFrom="2026-10-25T02:30:00+02:00"),
        printable("p-v", validFrom="2026-10-25T02:30:00+01:00"),
    ]
    call = doors(cli, http_door, berlin_snapshot(offers, cooldown=0))
    assert call("checkout", sale("r1", "2026-03-22T02:30:00+01:00"))["printedOffers"] == ["p-s"]
    got = call("checkout", sale("r2", "2026-10-18T02:30:00+02:00"))["printedOffers"]
    assert got == ["p-s", "p-t", "p-u"]


@pytest.mark.parametrize("cooldown", [0, 2])
def test_a_receipt_dated_before_a_print_does_not_print_that_offer_again(
    cooldown: int, cli: CLI, http_door: Callable[[dict[str, Any]], int]
) -> None:
    """The contract is silent on a receipt dated before an earlier print of the offer (a
    POS sending an older sale late, a hold confirmed after a later sale): the product
    reads "printed to this customer within offerPrintCooldownDays" as any print from
    `at` − cooldown on, a print dated after `at` included, so the customer who holds the
    coupon is not given it again, whatever the cooldown (0 too). Pinned as the product's
    reading (docs/DECISIONS.md, "Review 40 (spec40a)")."""
    call = doors(cli, http_door, berlin_snapshot([printable("o-1")], cooldown=cooldown))
    assert call("checkout", sale("r1", "2026-11-23T10:00:00+01:00"))["printedOffers"] == ["o-1"]
    assert call("checkout", sale("r2", "2026-11-23T09:59:59+01:00"))["printedOffers"] == []
    assert call("checkout", sale("r3", "2026-11-20T10:00:00+01:00"))["printedOffers"] == []
    later = "2026-11-23T10:00:00+01:00" if cooldown == 0 else "2026-11-25T10:00:00+01:00"
    assert call("checkout", sale("r4", later))["printedOffers"] == ["o-1"]


def test_a_hold_confirmed_over_the_spring_change_counts_the_cooldown_as_a_checkout_does(
    cli: CLI, http_door: Callable[[dict[str, Any]], int]
) -> None:
    """Confirm picks the offers to print (§11's decisions) with the same cooldown: a hold
    at 03:15 on 29 March, 7 days after a print at 02:30 on the 22nd, prints nothing (the
    cooldown runs to 03:30); one at 03:30 prints the offer."""
    call = doors(cli, http_door, berlin_snapshot([printable("o-1")], cooldown=7))
    assert call("checkout", sale("r1", "2026-03-22T02:30:00+01:00"))["printedOffers"] == ["o-1"]
    for rid, at, want in (
        ("h1", "2026-03-29T03:15:00+02:00", []),
        ("h2", "2026-03-29T03:30:00+02:00", ["o-1"]),
    ):
        assert call("hold", sale(rid, at))["printedOffers"] == []
        assert call("confirm", {"receiptId": rid})["printedOffers"] == want
