"""Review 28 (orc28): the product's pricing against an independent reference model.

tests/oracle28.py prices a receipt from docs/CONTRACT.md §2, §3, §5, §13–§16 alone; here
seeded random snapshots (programs, tiers, offers with windows, deals, coupons, expiring and
pending points) and baskets (weighed lines, amounts sent by the POS, excluded and unknown
goods, repeated SKUs, coupons scanned in any spelling) are priced by both, and every
figure of the result is compared: each line's amount, discount, offer, redemption and
points; the totals; the balance after; `heldOut`; each coupon's verdict. A quote must also
equal the checkout of the same receipt and the figures `quote --explain` carries.
"""

from __future__ import annotations

import copy
import json
import random
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import ean13
from .oracle28 import Oracle

BASE_AT = datetime(2026, 11, 23, 7, 15, tzinfo=UTC)
ZONES = ["Europe/Moscow", "Europe/Berlin", "Asia/Vladivostok", "America/New_York"]
OFFSETS = [UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-5, minutes=-30))]
SKUS = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]
CATEGORIES = [
    {"code": "food", "name": "Food"},
    {"code": "dairy", "parent": "food", "name": "Dairy"},
    {"code": "cheese", "parent": "dairy", "name": "Cheese"},
    {"code": "bakery", "parent": "food", "name": "Bakery"},
    {"code": "drinks", "name": "Drinks"},
    {"code": "tobacco", "name": "Tobacco"},
    # a ring a hub would refuse, given to a till as a plain file: the walk up stops
    {"code": "ring-a", "parent": "ring-b", "name": "Ring A"},
    {"code": "ring-b", "parent": "ring-a", "name": "Ring B"},
    {"code": "orphan", "parent": "nowhere", "name": "Orphan"},
]
SKU_CATEGORY = {
    "p1": "dairy",
    "p2": "cheese",
    "p3": "bakery",
    "p4": "drinks",
    "p5": "food",
    "p6": "cheese",
    "p7": "ring-a",
    "p8": "orphan",
}
CAMPAIGNS = ["k1", "k2", "k3"]


CARDS = [ean13(f"277000000{n:03d}") for n in range(1, 4)]
SECOND_CARD = ean13("277000000000")  # c1's second card, before CARDS[0] by number
PHONES = ["+79161234567", "+79035550001", "+79995550002"]


def card_text(rng: random.Random, number: str) -> str:
    """A card or a phone as a cashier or a scanner may send it (§4)."""
    if number in CARDS and rng.random() < 0.3:
        phone = PHONES[CARDS.index(number)]
        return rng.choice(
            [
                *[
                    phone,
                    "8" + phone[2:],
                    phone[1:],
                    phone[2:],
                    f"+7 ({phone[2:5]}) {phone[5:8]}-{phone[8:]}",
                ][:4],
                f"+7 {phone[2:5]} {phone[5:8]} {phone[8:]}",
            ]
        )
    if rng.random() < 0.2:
        return rng.choice(
            [
                f" {number} ",
                f"{number[:4]}-{number[4:8]}-{number[8:]}",
                f"{number[:6]} {number[6:]}",
                f"{number[:6]}\u2013{number[6:]}",
            ]
        )
    return number


UNKNOWN_CARD = ean13("277000000999")


def rfc(moment: datetime) -> str:
    return moment.isoformat()


# business days the cases centre on: an ordinary week, a new year, a 29 February (2028),
# the spring and autumn clock changes of Europe (2026-03-29, 2026-10-25) and the US
BASES = [
    BASE_AT,
    datetime(2026, 12, 30, 21, 0, tzinfo=UTC),
    datetime(2028, 2, 27, 12, 0, tzinfo=UTC),
    datetime(2027, 2, 27, 12, 0, tzinfo=UTC),
    datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
]
CENTRE = [BASE_AT]


def _time_near(rng: random.Random, span_hours: int = 24 * 10) -> datetime:
    if rng.random() < 0.3:  # near the centre, to the second: bounds, windows, clock changes
        span_hours = 3
    return CENTRE[0] + timedelta(seconds=rng.randint(-span_hours * 3600, span_hours * 3600))


def _decimal(rng: random.Random, choices: list[str]) -> str:
    return rng.choice(choices)


def gen_snapshot(rng: random.Random, version: int) -> dict[str, Any]:
    CENTRE[0] = rng.choice(BASES)
    tiers = [{"code": "base", "accrualPercent": rng.choice(["3", "0", "2.5", "1.125"])}]
    tiers += [{"code": "gold", "accrualPercent": rng.choice(["7", "7.5", "12.25", "10"])}]
    program = {
        "currency": "RUB",
        "timezone": rng.choice(ZONES),
        "pointValueMinor": rng.choice([100, 100, 50, 1, 10, 250, 100000]),
        "maxRedeemPercent": rng.choice([30, 30, 0, 50, 100, 7]),
        "activationDelayDays": rng.choice([0, 0, 0, 1, 3]),
        "offlineRedeemLimitPoints": rng.choice([500, 500, 0, 5, 100000]),
        "birthdayMultiplier": rng.choice([5, 1, 2, 3]),
        "birthdayWindowDays": rng.choice([7, 0, 3, 10]),
        "pointsLifetimeDays": rng.choice([0, 0, 0, 30, 2]),
        "tiers": tiers,
    }
    products = [{"sku": sku, "name": sku, "category": SKU_CATEGORY[sku]} for sku in SKUS] + [
        {"sku": "tob", "name": "Tobacco", "category": "tobacco", "excludedFromLoyalty": True}
    ]
    customers = []
    for n in range(1, 4):
        c: dict[str, Any] = {
            "id": f"c{n}",
            "firstName": f"N{n}",
            "tier": rng.choice(["base", "gold"]),
            "balancePoints": rng.choice([0, 50, 1200, rng.randint(0, 5000), -30]),
            "phone": PHONES[n - 1],
        }
        if rng.random() < 0.7:
            bd = CENTRE[0].date() + timedelta(days=rng.randint(-3, 12))
            year = rng.choice([1990, 1988]) if (bd.month, bd.day) != (2, 29) else 1988
            c["birthday"] = (
                "1988-02-29" if rng.random() < 0.1 else f"{year}-{bd.month:02d}-{bd.day:02d}"
            )
        if rng.random() < 0.5:
            c["favoriteWeekday"] = rng.randint(1, 7)
        if rng.random() < 0.4:
            c["controlGroups"] = rng.sample(CAMPAIGNS, rng.randint(1, 2))
        if rng.random() < 0.4:
            c["expiring"] = [
                {"points": rng.randint(1, 800), "expiresAt": rfc(_time_near(rng))}
                for _ in range(rng.randint(1, 3))
            ]
        if rng.random() < 0.3:
            c["pending"] = [
                {"points": rng.randint(1, 300), "activatesAt": rfc(_time_near(rng))}
                for _ in range(rng.randint(1, 2))
            ]
        customers.append(c)
    cards = [{"number": CARDS[i], "customerId": f"c{i + 1}", "status": "ACTIVE"} for i in range(3)]
    # c1 has a second card: active (the phone's card) or blocked (the phone finds CARDS[0])
    cards.append(
        {"number": SECOND_CARD, "customerId": "c1", "status": rng.choice(["ACTIVE", "BLOCKED"])}
    )
    offers = [gen_offer(rng, i) for i in range(1, rng.randint(1, 11))]
    coupons = []
    for n in range(rng.randint(0, 4)):
        cp: dict[str, Any] = {
            "code": f"CPN-{version}-{n}",
            "offerId": rng.choice([o["id"] for o in offers] + ["o-missing"]),
        }
        if rng.random() < 0.3:
            cp["customerId"] = rng.choice(["c1", "c2", "c3", ""])
        if rng.random() < 0.3:
            cp["validFrom"] = rfc(_time_near(rng))
        if rng.random() < 0.3:
            cp["validTo"] = rfc(_time_near(rng))
        if cp.get("validFrom") and cp.get("validTo") and cp["validFrom"] > cp["validTo"]:
            cp["validFrom"], cp["validTo"] = cp["validTo"], cp["validFrom"]
        coupons.append(cp)
    # the coupons must compare as times, not text: order by parsed value
    for cp in coupons:
        if cp.get("validFrom") and cp.get("validTo"):
            a, b = datetime.fromisoformat(cp["validFrom"]), datetime.fromisoformat(cp["validTo"])
            if a > b:
                cp["validFrom"], cp["validTo"] = cp["validTo"], cp["validFrom"]
    return {
        "version": version,
        "baseVersion": 0,
        "issuedAt": "2026-11-01T00:00:00Z",
        "program": program,
        "categories": CATEGORIES,
        "products": products,
        "customers": customers,
        "cards": cards,
        "offers": offers,
        "coupons": coupons,
    }


def gen_offer(rng: random.Random, n: int) -> dict[str, Any]:
    kind = rng.choice(
        [
            "PERCENT_OFF",
            "PERCENT_OFF",
            "AMOUNT_OFF",
            "FIXED_PRICE",
            "QUANTITY_PRICE",
            "MULTIBUY",
            "MULTIBUY",
            "BONUS_MULTIPLIER",
            "RECEIPT_PERCENT_OFF",
            "EXTRA_POINTS",
        ]
    )
    o: dict[str, Any] = {"id": f"o-{n}", "kind": kind, "priority": rng.randint(0, 2)}
    if rng.random() < 0.6:
        o["campaignId"] = rng.choice([*CAMPAIGNS, ""])
    if rng.random() < 0.3:
        o["customerId"] = rng.choice(["c1", "c2", "c3", ""])
    if kind not in ("RECEIPT_PERCENT_OFF", "EXTRA_POINTS"):
        o["skus"] = rng.sample(SKUS, rng.randint(0, 3))
        o["categories"] = rng.sample(
            ["food", "dairy", "cheese", "bakery", "drinks", "ring-b", "nowhere"], rng.randint(0, 1)
        )
    if kind == "PERCENT_OFF":
        o["value"] = rng.choice(["5", "10", "15", "12.5", "33.333", "100", "50"])
    elif kind == "AMOUNT_OFF":
        o["value"] = rng.choice(["100", "250", "999", "99.5", "5000", "1"])
    elif kind == "FIXED_PRICE":
        o["value"] = rng.choice(["0", "500", "999.5", "1500", "20000"])
    elif kind == "QUANTITY_PRICE":
        tiers = [{"minQty": "2", "unitPriceMinor": rng.randint(100, 3000)}]
        if rng.random() < 0.5:
            tiers.append(
                {"minQty": rng.choice(["4", "1.5", "3"]), "unitPriceMinor": rng.randint(50, 2500)}
            )
        o["tiers"] = tiers
    elif kind == "MULTIBUY":
        o["buyQty"] = str(rng.randint(1, 3))
        o["freeQty"] = str(rng.randint(1, 2))
    elif kind == "BONUS_MULTIPLIER":
        o["value"] = rng.choice(["2", "3", "1.5", "10", "0.5", "1"])
    elif kind == "RECEIPT_PERCENT_OFF":
        o["value"] = rng.choice(["5", "10", "3.5"])
        o["minTotalMinor"] = rng.choice([0, 1000, 10000, 50000])
    elif kind == "EXTRA_POINTS":
        o["value"] = str(rng.choice([10, 50, 1]))
        o["minTotalMinor"] = rng.choice([0, 5000, 30000])
    with_min_qty = ("PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "BONUS_MULTIPLIER", "MULTIBUY")
    if kind in with_min_qty and rng.random() < 0.25:
        o["minQty"] = rng.choice(["2", "0.5", "1.5", "3"])
    if rng.random() < 0.4:
        o["validFrom"] = rfc(_time_near(rng))
    if rng.random() < 0.4:
        o["validTo"] = rfc(_time_near(rng))
    if o.get("validFrom") and o.get("validTo"):
        a, b = datetime.fromisoformat(o["validFrom"]), datetime.fromisoformat(o["validTo"])
        if a > b:
            o["validFrom"], o["validTo"] = o["validTo"], o["validFrom"]
    if rng.random() < 0.25:
        o["weekdays"] = sorted(rng.sample(range(1, 8), rng.randint(1, 4)))
    if rng.random() < 0.25:
        windows = []
        for _ in range(rng.randint(1, 2)):
            a, b = rng.sample(range(0, 25), 2)
            if rng.random() < 0.7 and a > b:
                a, b = b, a
            if a == 24:
                a, b = b, a
            windows.append({"from": f"{a:02d}:{rng.choice([0, 30]):02d}", "to": f"{b:02d}:00"})
        o["hours"] = [w for w in windows if w["from"] != w["to"] and w["from"] != "24:30"]
        if not o["hours"] or any(w["from"].startswith("24") for w in o["hours"]):
            del o["hours"]
    if rng.random() < 0.15:
        o["onFavoriteWeekday"] = True
    for name in ("validFrom", "validTo", "minQty"):
        if name not in o and rng.random() < 0.05:
            o[name] = ""  # proto3 JSON's unset (docs/CONTRACT.md §3)
    if rng.random() < 0.2:
        o["couponRequired"] = True
    return o


def gen_receipt(rng: random.Random, snap: dict[str, Any], n: int) -> dict[str, Any]:
    lines = []
    for _ in range(rng.randint(1, 5)):
        sku = rng.choice(SKUS + SKUS + ["tob", "zz-unknown"])
        if rng.random() < 0.25:
            qty = rng.choice(["0.512", "1.5", "0.001", "2.25", "1.000"])
        else:
            qty = str(rng.randint(1, 6))
        line: dict[str, Any] = {"sku": sku, "qty": qty}
        price = rng.choice([rng.randint(1, 20000), 8990, 1999, 50, 12345, 0])
        if rng.random() < 0.03:
            price = rng.randint(10**12, 10**15)
        if rng.random() < 0.2:
            line["amountMinor"] = rng.choice([rng.randint(0, 50000), rng.randint(0, 10**15)])
        else:
            line["priceMinor"] = price
        lines.append(line)
    at = _time_near(rng).astimezone(rng.choice(OFFSETS))
    if rng.random() < 0.1:
        at += timedelta(microseconds=rng.choice([1, 500000, 999999]))
    codes = [c["code"] for c in snap["coupons"]]
    scanned: list[str] = []
    for _ in range(rng.randint(0, 3)):
        if codes and rng.random() < 0.8:
            code = rng.choice(codes)
            spellings = [code, code.lower(), code.replace("-", " "), f" {code} "]
            spellings += [code.replace("-", "\u2013"), code.replace("-", "\u2212"), f"{code}\t"]
            scanned.append(rng.choice(spellings))
        else:
            scanned.append("NOPE-1")
    return {
        "receiptId": f"r-{n}",
        "storeId": "s1",
        "tillId": "t1",
        "at": rfc(at),
        "card": card_text(rng, rng.choice(CARDS + CARDS + [UNKNOWN_CARD])),
        "lines": lines,
        "redeemPoints": rng.choice([-1, 0, 100, rng.randint(0, 3000), 1, 2**63 - 1]),
        "coupons": scanned,
    }


FIGURES = (
    "totalMinor",
    "discountMinor",
    "redeemedPoints",
    "payableMinor",
    "earnedPoints",
    "heldOut",
    "coupons",
    "lines",
)


def product_figures(result: dict[str, Any], *, balance: bool) -> dict[str, Any]:
    out = {
        k: copy.deepcopy(result.get(k, [] if k in ("heldOut", "coupons") else 0)) for k in FIGURES
    }
    out["lines"] = [
        {
            "sku": ln["sku"],
            "amountMinor": ln.get("amountMinor", 0),
            "discountMinor": ln.get("discountMinor", 0),
            "offerId": ln.get("offerId") or "",
            "redeemedMinor": ln.get("redeemedMinor", 0),
            "earnedPoints": ln.get("earnedPoints", 0),
        }
        for ln in result["lines"]
    ]
    out["coupons"] = [
        {"code": c["code"], "status": c["status"], "reason": c.get("reason") or ""}
        for c in result.get("coupons", [])
    ]
    if balance and result.get("balance"):
        out["balance"] = {
            "availablePoints": int(result["balance"].get("availablePoints", 0)),
            "pendingPoints": int(result["balance"].get("pendingPoints", 0)),
        }
    return out


def expected(snap: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    want = Oracle(snap).price(rec).figures()
    if "balance" not in want:
        want.pop("balance", None)
    return want


def quote_json(agent: Agent, rec: dict[str, Any]) -> dict[str, Any]:
    return agent.quote(receipt_from_json(rec)).to_json()


def cases(seed: int, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        snap = gen_snapshot(rng, n + 2)
        out.append((snap, gen_receipt(rng, snap, n)))
    return out


def differences(where: str, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Each figure the product answered otherwise than the oracle, named `where` (the
    balance only where the oracle has one)."""
    if "balance" not in want:
        got.pop("balance", None)
    return [
        f"{where}{k}: product {got.get(k)!r} oracle {want.get(k)!r}"
        for k in want
        if got.get(k) != want.get(k)
    ]


def disagreement(snap: dict[str, Any], rec: dict[str, Any], diff: list[str]) -> str:
    """One case the product and a model disagree on: its data (to replay it) and each
    difference on a line of its own."""
    return "\n  ".join([json.dumps({"snapshot": snap, "receipt": rec}, ensure_ascii=False), *diff])


def compare(agent: Agent, snap: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """The differences between the product's quote and the oracle (empty when none)."""
    got = product_figures(quote_json(agent, rec), balance=True)
    return differences("", got, expected(snap, rec))


def jsonl(snap: dict[str, Any]) -> list[str]:
    """The snapshot in its JSON Lines form (docs/PROTOCOL.md: a header line, then a
    `{"section": ...}` line before each section's rows), as a hub's payload."""
    head = {"format": "tillpoint.snapshot/jsonl"}
    head |= {k: v for k, v in snap.items() if not isinstance(v, list)}
    out = [json.dumps(head, sort_keys=True, ensure_ascii=False)]
    for name in ("categories", "products", "customers", "cards", "offers", "coupons"):
        out.append(json.dumps({"section": name}))
        out += [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in snap.get(name, [])]
    return out


def run_seed(tmp_path: Path, seed: int, count: int) -> list[str]:
    agent = Agent(tmp_path / f"data-{seed}", "till-1")
    problems: list[str] = []
    try:
        for n, (snap, rec) in enumerate(cases(seed, count)):
            if n % 2:  # every other one as a hub's JSON Lines payload, streamed row by row
                agent.load_snapshot_lines(line.encode() + b"\n" for line in jsonl(snap))
            else:
                agent.load_snapshot(snap)
            diff = compare(agent, snap, rec)
            if diff:
                problems.append(disagreement(snap, rec, diff))
    finally:
        agent.close()
    return problems


def test_quote_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §5, §13–§16: 150 seeded snapshots and receipts, every figure."""
    problems = run_seed(tmp_path, 28, 150)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


@pytest.mark.slow
def test_quote_matches_the_reference_model_longer(tmp_path: Path) -> None:
    """As above, on more seeds (about 10 s)."""
    problems: list[str] = []
    for seed in (1, 2):
        problems += run_seed(tmp_path, seed, 120)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


def test_quote_over_http_matches_the_reference_model(tmp_path: Path) -> None:
    """The same comparison through `POST /v1/quote` of the HTTP interface `tillpoint run`
    serves (docs/CONTRACT.md §12: the same document the CLI prints)."""
    from tillpoint.agent.http_api import HttpServer

    agent = Agent(tmp_path / "data", "till-1")
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    problems: list[str] = []
    try:
        for snap, rec in cases(2028, 40):
            agent.load_snapshot(snap)
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/v1/quote",
                data=json.dumps(rec).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as reply:
                got = product_figures(json.loads(reply.read()), balance=True)
            problems += differences(f"{rec['receiptId']} ", got, expected(snap, rec))
    finally:
        server.stop()
        agent.close()
    assert not problems, problems


def sequence(seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One snapshot and a day or three of receipts, in time order, on its three cards."""
    rng = random.Random(seed)
    snap = gen_snapshot(rng, 2)
    snap["program"]["offlineRedeemLimitPoints"] = rng.choice([5, 40, 500, 100000])
    receipts = [gen_receipt(rng, snap, n) for n in range(rng.randint(3, 7))]
    times = sorted(
        CENTRE[0] + timedelta(seconds=rng.randint(-2 * 86400, 4 * 86400)) for _ in receipts
    )
    snap["cards"][-1]["status"] = "ACTIVE"  # c1's phone: its second card (§4)
    for rec, moment in zip(receipts, times, strict=False):
        rec["at"] = rfc(moment.astimezone(rng.choice(OFFSETS)))
        if rng.random() < 0.5:
            rec["redeemPoints"] = -1
        if rng.random() < 0.5:  # the same customer, often: its points and its day's limit
            rec["card"] = card_text(rng, rng.choice([CARDS[0], SECOND_CARD]))
        rec["receiptId"] = f"s{seed}-{rec['receiptId']}"
    # receipts dated before those sold already (a POS sending a sale late); not for a
    # customer who starts in debt: what a later movement settled of it counts at an
    # earlier time (CONTRACT §16, `Wallet.points_at`), which the oracle does not model
    in_debt = any(
        c["balancePoints"] < sum(e["points"] for e in c.get("expiring", []))
        for c in snap["customers"]
    )
    for n in range(0 if in_debt else rng.choice([0, 0, 1, 2])):
        late = copy.deepcopy(rng.choice(receipts))
        late["receiptId"] += f"-late{n}"
        late["at"] = rfc(datetime.fromisoformat(late["at"]) - timedelta(hours=rng.randint(1, 30)))
        receipts.append(late)
    return snap, receipts


def run_sequence(tmp_path: Path, seed: int) -> list[str]:
    """Quote, quote with explain and checkout each receipt of `sequence(seed)` on one
    till; the quote against the oracle on the till's state so far, the other two
    against the quote."""
    from .oracle28 import TillState

    snap, receipts = sequence(seed)
    oracle, state = Oracle(snap), TillState()
    agent = Agent(tmp_path / f"seq-{seed}", "till-1")
    problems: list[str] = []
    try:
        agent.load_snapshot(snap)
        for rec in receipts:
            quoted = quote_json(agent, rec)
            got = product_figures(quoted, balance=True)
            where = f"seed {seed} receipt {rec['receiptId']}"
            problems += differences(
                f"{where} quote ", got, oracle.price(rec, state=state).figures()
            )
            explained = quote_json(agent, {**rec, "explain": True})
            assert "trace" in explained
            if product_figures(explained, balance=True) != product_figures(quoted, balance=True):
                problems.append(f"{where}: quote --explain's figures differ from the quote's")
            committed = agent.checkout(receipt_from_json(rec)).to_json()
            if product_figures(committed, balance=True) != product_figures(quoted, balance=True):
                problems.append(
                    f"{where}: checkout {product_figures(committed, balance=True)}"
                    f" != quote {product_figures(quoted, balance=True)}"
                )
            oracle.price(rec, state=state, commit=True)
    finally:
        agent.close()
    return problems


def test_quote_explain_and_checkout_agree_over_a_till_day(tmp_path: Path) -> None:
    """docs/CONTRACT.md §5 (quote computes the same result as checkout), §17 (the trace
    never changes a figure), §5 step 4 (the offline limit per card and store-day), §13
    (a used code), §16 (spending the soonest-expiring first) across receipts."""
    problems: list[str] = []
    for seed in range(12):
        problems += run_sequence(tmp_path, seed)
    assert not problems, "\n".join(problems[:5])


# ------------------------------------------------------------------ what the oracle found


def test_an_offer_or_coupon_whose_customer_id_is_empty_is_for_every_customer(
    cli: Any,
) -> None:
    """docs/CONTRACT.md §3: `customerId` absent on an offer is a mass offer, on a coupon
    any identified customer's; proto3 JSON writes an unset string as `""` (a hub or a CRM
    export that writes every field), which is that field left out. Until review 28 such
    an offer applied to nobody and such a code was OTHER_CUSTOMER for everyone."""
    from .conftest import receipt, snapshot

    snap = snapshot(
        offers=[
            {
                "id": "o-m",
                "kind": "PERCENT_OFF",
                "customerId": "",
                "campaignId": "",
                "skus": ["4601234000017"],
                "value": "10",
            },
            {
                "id": "o-x",
                "kind": "EXTRA_POINTS",
                "customerId": "",
                "value": "25",
                "couponRequired": True,
            },
        ],
        coupons=[{"code": "ALL-1", "offerId": "o-x", "customerId": ""}],
    )
    assert cli("snapshot", "load", snap).code == 0
    run = cli("quote", receipt(coupons=["ALL-1"]), "--json")
    assert run.code == 0, run.err
    result = run.json()
    assert result["lines"][0]["offerId"] == "o-m"
    assert result["lines"][0]["discountMinor"] == 1798  # 10 % of 179.80
    assert result["coupons"] == [{"code": "ALL1", "status": "APPLIED", "reason": ""}]
    # 161.82 × 7.5 % = 12.13 (×5: 23 November is in Анна's birthday window) + 25
    assert result["earnedPoints"] == 60 + 25


def test_quote_over_grpc_matches_the_reference_model(tmp_path: Path) -> None:
    """The same comparison through the gRPC `PosAgent.Quote` a POS calls (the agent's
    own client, proto3 JSON in and out)."""
    from tillpoint.agent.client import PosAgentClient

    from .conftest import grpc_served

    agent = Agent(tmp_path / "data", "till-1")
    problems: list[str] = []
    try:
        with grpc_served(agent) as port, PosAgentClient(f"127.0.0.1:{port}") as client:
            for snap, rec in cases(2029, 40):
                agent.load_snapshot(snap)
                got = product_figures(client.quote(rec), balance=True)
                problems += differences(f"{rec['receiptId']} ", got, expected(snap, rec))
    finally:
        agent.close()
    assert not problems, problems


def run_holds(tmp_path: Path, seed: int) -> list[str]:
    """`sequence(seed)` sold through Hold, then Confirm or Cancel later (some holds left
    open), mixed with checkouts: each quote against the oracle on what the till holds
    and has sold, each Hold's figures against its quote, each Confirm's figures against
    its Hold's and its balance against the oracle's (docs/CONTRACT.md §11)."""
    from .oracle28 import TillState, cancel, confirm

    rng = random.Random(seed + 1000)
    snap, receipts = sequence(seed)
    oracle, state = Oracle(snap), TillState()
    agent = Agent(tmp_path / f"holds-{seed}", "till-1")
    problems: list[str] = []
    open_holds: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []

    def differ(where: str, got: dict[str, Any], want: dict[str, Any]) -> None:
        for k in want:
            if got.get(k) != want.get(k):
                problems.append(
                    f"seed {seed} {where} {k}: product {got.get(k)!r} oracle {want.get(k)!r}"
                )

    try:
        agent.load_snapshot(snap)
        for rec in receipts:
            while open_holds and rng.random() < 0.5:
                held_rec, held, record = open_holds.pop(rng.randrange(len(open_holds)))
                if rng.random() < 0.6:
                    done = agent.confirm(held_rec["receiptId"]).to_json()
                    balance = confirm(state, record)
                    want = {**held}
                    if balance is not None:
                        want["balance"] = {
                            "availablePoints": balance[0],
                            "pendingPoints": balance[1],
                        }
                    differ(
                        f"confirm {held_rec['receiptId']}",
                        product_figures(done, balance=True),
                        want,
                    )
                else:
                    agent.cancel(held_rec["receiptId"])
                    cancel(state, record)
            quoted = product_figures(quote_json(agent, rec), balance=True)
            priced = oracle.price(rec, state=state, commit=False)
            want = priced.figures()
            if "balance" not in want:
                quoted.pop("balance", None)
            differ(f"quote {rec['receiptId']}", quoted, want)
            if rng.random() < 0.5:
                held = product_figures(agent.hold(receipt_from_json(rec)).to_json(), balance=True)
                if "balance" not in want:
                    held.pop("balance", None)
                differ(f"hold {rec['receiptId']}", held, quoted)
                record = oracle.price(rec, state=state, commit="hold").record
                open_holds.append((rec, held, record))
            else:
                done = product_figures(
                    agent.checkout(receipt_from_json(rec)).to_json(), balance=True
                )
                if "balance" not in want:
                    done.pop("balance", None)
                differ(f"checkout {rec['receiptId']}", done, quoted)
                oracle.price(rec, state=state, commit=True)
    finally:
        agent.close()
    return problems


def test_holds_confirms_and_cancels_match_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11 with §5 step 4 and §13, §16: an open hold counts against the
    day's offline limit, the customer's points and its coupons for every other receipt;
    a cancel gives them back; Confirm commits the held figures."""
    problems: list[str] = []
    for seed in range(10):
        problems += run_holds(tmp_path, seed)
    assert not problems, "\n".join(problems[:5])


@pytest.mark.parametrize("lifetime", [0, 30])
def test_a_later_sale_that_spent_points_pending_at_an_earlier_time(cli: Any, lifetime: int) -> None:
    """docs/CONTRACT.md §16: available at T is what is left of the batches at T. Sale a
    (20 November) spends 100 and earns 67, pending until the 21st; sale b (22 November)
    spends those 67. Asked at 20 November 12:00 (a `balance --at`, a receipt sent late),
    a's batch is pending and b took it: 0 available, 69 pending (b's own). Whether points
    expire (pointsLifetimeDays 30, nothing expiring by then) changes no figure: until
    review 28 a till whose points never expire answered -67 available and 136 pending
    there (b's spend off the available points, a's batch as if whole), §5's decision now
    reads the batches too. The redemption allowed is the same either way (0)."""
    from .conftest import BASE_SNAPSHOT, receipt, snapshot

    program = dict(
        BASE_SNAPSHOT["program"],
        activationDelayDays=1,
        pointsLifetimeDays=lifetime,
        maxRedeemPercent=100,
        birthdayMultiplier=1,
    )
    customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
    customers[0].update(balancePoints=100, birthday=None)
    assert cli("snapshot", "load", snapshot(program=program, customers=customers)).code == 0
    line = [{"sku": "4601234000017", "qty": "1", "priceMinor": 100000}]
    a = cli(
        "checkout",
        receipt("a", at="2026-11-20T10:00:00+03:00", lines=line, redeemPoints=-1),
        "--json",
    )
    assert (a.json()["redeemedPoints"], a.json()["earnedPoints"]) == (100, 67)
    b = cli(
        "checkout",
        receipt("b", at="2026-11-22T10:00:00+03:00", lines=line, redeemPoints=-1),
        "--json",
    )
    assert (b.json()["redeemedPoints"], b.json()["earnedPoints"]) == (67, 69)
    at = "2026-11-20T12:00:00+03:00"
    asked = cli("balance", "2770000000017", "--at", at, "--json").json()
    assert (asked["availablePoints"], asked["pendingPoints"]) == (0, 69)
    late = cli("quote", receipt("late", at=at, lines=line, redeemPoints=-1), "--json").json()
    assert late["redeemedPoints"] == 0
    assert late["balance"]["availablePoints"] == 0
    assert late["balance"]["pendingPoints"] == 69 + late["earnedPoints"]


KEYS = {
    "categories": "code",
    "products": "sku",
    "customers": "id",
    "cards": "number",
    "offers": "id",
    "coupons": "code",
}


def delta(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The delta that takes a till from `old` to `new` (docs/CONTRACT.md §3: rows replace
    the whole row with their key, `removed` lists the keys that go, `program` replaces
    the program)."""
    out: dict[str, Any] = {
        "version": new["version"],
        "baseVersion": old["version"],
        "issuedAt": new["issuedAt"],
        "program": new["program"],
        "removed": {},
    }
    for section, key in KEYS.items():
        before = {row[key]: row for row in old.get(section, [])}
        after = {row[key]: row for row in new.get(section, [])}
        out[section] = [row for k, row in after.items() if before.get(k) != row]
        gone = sorted(set(before) - set(after))
        if gone:
            out["removed"][section] = gone
    return out


def test_quote_after_deltas_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §3: a till that priced on one snapshot and then applied deltas
    (offers, coupons, customers, cards, products and the program changed, added and
    removed) prices as the oracle does on the snapshot the deltas lead to."""
    rng = random.Random(2830)
    agent = Agent(tmp_path / "data", "till-1")
    problems: list[str] = []
    try:
        current = gen_snapshot(rng, 2)
        agent.load_snapshot(current)
        for n in range(80):
            rec = gen_receipt(rng, current, n)
            quote_json(agent, rec)  # priced on the old data first (whatever it keeps)
            new = gen_snapshot(rng, current["version"] + 1)
            new["issuedAt"] = f"2026-11-{n % 28 + 1:02d}T00:00:00Z"
            if rng.random() < 0.5:  # keep some rows as they were
                for section in ("offers", "coupons", "customers"):
                    new[section] = current[section][: rng.randint(0, 3)] + new[section][2:]
                    seen: set[str] = set()
                    new[section] = [
                        r
                        for r in new[section]
                        if not (r[KEYS[section]] in seen or seen.add(r[KEYS[section]]))
                    ]
            agent.load_snapshot(delta(current, new))
            current = new
            rec = gen_receipt(rng, current, n)
            got = product_figures(quote_json(agent, rec), balance=True)
            problems += differences(f"delta {n} ", got, expected(current, rec))
    finally:
        agent.close()
    assert not problems, "\n".join(problems[:5])
