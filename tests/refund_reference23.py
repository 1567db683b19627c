"""A clean-room reference of one customer's points over a history of calls (review 23).

Written from the contract's rules (docs/CONTRACT.md §2, §3, §5, §6, §11, §16, and its
decisions where the rules are silent, named at each place) before reading the
product's refund, ledger or expiry code. It models one till, one customer per history,
offline: checkouts with redemption, holds confirmed, cancelled or left open, partial
refunds over several calls of lines that share a SKU, pending points
(`activationDelayDays`), expiring batches (`pointsLifetimeDays`, snapshot `expiring` and
`pending`), receipt-level `EXTRA_POINTS`, debts (`negativeBalance`), idempotent
`refundId`, and `balance --at`.

Pricing is deliberately narrow (one mass `PERCENT_OFF`, one `EXTRA_POINTS`, no birthday,
no deals, no coupons): single-receipt arithmetic is checked by tests/test_review22_ref22.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

MSK = timezone(timedelta(hours=3))
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=MSK)
INF = 1 << 62

SKU_A = "4601234000017"  # dairy, the percent-off offer's target
SKU_B = "4601234000024"  # bakery
SKU_X = "4601234000031"  # tobacco: excluded from loyalty
SKU_U = "4600000000000"  # not in the catalogue: no points, no redemption
CATALOGUE = {SKU_A: False, SKU_B: False, SKU_X: True}  # sku -> excludedFromLoyalty
RATE = Fraction("7.5")  # the customer's tier ("gold")


def ts(t: datetime) -> str:
    return t.isoformat()


def floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def rhu(x: Fraction) -> int:
    return floor(x + Fraction(1, 2))


def ean13(body12: str) -> str:
    s = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body12))
    return body12 + str((10 - s % 10) % 10)


def largest_remainder(total: int, weights: list[int]) -> list[int]:
    wsum = sum(weights)
    if total == 0 or wsum == 0:
        return [0] * len(weights)
    exact = [Fraction(w * total, wsum) for w in weights]
    shares = [floor(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


# ------------------------------------------------------------------ the world (shared)


@dataclass(frozen=True)
class World:
    """What the histories of one snapshot share: the program and the offers."""

    pv: int = 100
    max_pct: int = 30
    delay: int = 0
    lifetime: int = 0
    offline_limit: int = 500
    pct_off: int = 0  # mass PERCENT_OFF on SKU_A, 0 = none
    extra: int = 0  # mass EXTRA_POINTS value, 0 = none
    extra_min: int = 0

    def program(self) -> dict[str, Any]:
        return {
            "currency": "RUB",
            "timezone": "Europe/Moscow",
            "pointValueMinor": self.pv,
            "maxRedeemPercent": self.max_pct,
            "activationDelayDays": self.delay,
            "offlineRedeemLimitPoints": self.offline_limit,
            "pointsLifetimeDays": self.lifetime,
            "tiers": [
                {"code": "base", "accrualPercent": "3"},
                {"code": "gold", "accrualPercent": "7.5"},
            ],
        }

    def offers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        window = {"validFrom": "2026-01-01T00:00:00+03:00", "validTo": "2027-12-31T23:59:59+03:00"}
        if self.pct_off:
            out.append(
                {
                    "id": "o-pct",
                    "campaignId": "camp-pct",
                    "kind": "PERCENT_OFF",
                    "skus": [SKU_A],
                    "categories": [],
                    "value": str(self.pct_off),
                    "priority": 1,
                    "rank": 1,
                    **window,
                }
            )
        if self.extra:
            out.append(
                {
                    "id": "o-extra",
                    "campaignId": "camp-extra",
                    "kind": "EXTRA_POINTS",
                    "skus": [],
                    "categories": [],
                    "value": str(self.extra),
                    "minTotalMinor": self.extra_min,
                    "priority": 1,
                    "rank": 2,
                    **window,
                }
            )
        return out


@dataclass
class Customer:
    cid: str
    card: str
    balance: int
    pending: list[tuple[int, datetime]] = field(default_factory=list)
    expiring: list[tuple[int, datetime]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.cid,
            "firstName": "Анна",
            "tier": "gold",
            "balancePoints": self.balance,
            "segment": "ACTIVE",
        }
        if self.pending:
            row["pending"] = [{"points": p, "activatesAt": ts(a)} for p, a in self.pending]
        if self.expiring:
            row["expiring"] = [{"points": p, "expiresAt": ts(e)} for p, e in self.expiring]
        return row


def snapshot(world: World, customers: list[Customer], version: int = 1) -> dict[str, Any]:
    return {
        "version": version,
        "baseVersion": 0,
        "issuedAt": "2026-11-20T03:00:00Z",
        "program": world.program(),
        "categories": [
            {"code": "food", "name": "Еда"},
            {"code": "dairy", "parent": "food", "name": "М"},
            {"code": "bakery", "parent": "food", "name": "Х"},
            {"code": "tobacco", "name": "Т"},
        ],
        "products": [
            {"sku": SKU_A, "name": "Молоко", "category": "dairy"},
            {"sku": SKU_B, "name": "Хлеб", "category": "bakery"},
            {"sku": SKU_X, "name": "Сигареты", "category": "tobacco", "excludedFromLoyalty": True},
        ],
        "customers": [c.row() for c in customers],
        "cards": [{"number": c.card, "customerId": c.cid, "status": "ACTIVE"} for c in customers],
        "offers": world.offers(),
    }


# ------------------------------------------------------------------ the points ledger


@dataclass
class Take:
    batch: Batch | None  # None: a debt
    points: int


@dataclass
class Batch:
    n: int  # creation order: "the older batch on a tie"
    points: int
    activates: datetime | None  # None: spendable from the start
    expires: datetime | None  # None: never; inclusive bound (CONTRACT §16 decision)
    pend: int = 0  # its points as pending points (earned less taken back while pending)
    owed: list[list[Take]] = field(default_factory=list)  # take-back spends it remembers

    def spendable(self, t: datetime) -> bool:
        return (self.activates is None or self.activates <= t) and (
            self.expires is None or t <= self.expires
        )


@dataclass
class Debt:
    owner: list[Take]
    points: int  # still owed
    paid_by: list[tuple[Batch, int]] = field(default_factory=list)


@dataclass
class Sale:
    rid: str
    at: datetime
    lines: list[dict[str, Any]]  # sku, qty (Fraction), p, e, returned (Fraction)
    extra: int
    extra_taken: bool
    earned_batch: Batch | None
    takes: list[Take]
    request: dict[str, Any]
    result: dict[str, Any]
    unknown: bool = False  # an UNKNOWN card: earned for the hub, nothing in this ledger
    # The same sale in the ledger with open holds (`RefTill.held`): its takes and batch there.
    htakes: list[Take] = field(default_factory=list)
    hbatch: Batch | None = None


class Ledger:
    """One customer's points (§3, §5.6, §6, §16) as events arrive in time order."""

    def __init__(self, world: World, cust: Customer) -> None:
        self.world = world
        self.batches: list[Batch] = []
        self.debts: list[Debt] = []
        self.clock = T0 - timedelta(days=30)
        expiring_total = sum(p for p, _ in cust.expiring)
        for p, e in cust.expiring:
            self._new(p, None, e)
        self._new(cust.balance - expiring_total, None, None)
        for p, a in cust.pending:
            self._new(p, a, a + timedelta(days=world.lifetime) if world.lifetime else None)

    def _new(self, points: int, activates: datetime | None, expires: datetime | None) -> Batch:
        b = Batch(len(self.batches), points, activates, expires, points)
        self.batches.append(b)
        return b

    # -- time passes: activations pay debts (CONTRACT §16: "as they do")
    def advance(self, t: datetime) -> None:
        while True:
            due = sorted(
                (
                    b
                    for b in self.batches
                    if b.activates is not None and self.clock < b.activates <= t
                ),
                key=lambda b: (b.activates, b.n),
            )
            if not due:
                break
            first = due[0].activates
            assert first is not None
            self.clock = first
            self._pay_debts(first)
        self.clock = max(self.clock, t)

    def _pay_debts(self, t: datetime) -> None:
        for d in self.debts:
            while d.points > 0:
                src = self._spend_order(t)
                if not src:
                    return
                b = src[0]
                k = min(b.points, d.points)
                b.points -= k
                d.points -= k
                d.paid_by.append((b, k))

    def _spend_order(self, t: datetime) -> list[Batch]:
        live = [b for b in self.batches if b.points > 0 and b.spendable(t)]
        return sorted(live, key=lambda b: (b.expires is None, b.expires or t, b.n))

    def debt(self) -> int:
        return sum(d.points for d in self.debts)

    def spend(self, points: int, t: datetime) -> list[Take]:
        takes: list[Take] = []
        for b in self._spend_order(t):
            if points == 0:
                break
            k = min(b.points, points)
            b.points -= k
            points -= k
            takes.append(Take(b, k))
        if points:
            takes.append(Take(None, points))
            self.debts.append(Debt(takes, points))
        return takes

    def give_back(self, takes: list[Take], points: int, t: datetime) -> None:
        """§16: points given back return to the batches they came from, last taken first."""
        for take in reversed(takes):
            if points == 0:
                break
            k = min(take.points, points)
            if k == 0:
                continue
            take.points -= k
            points -= k
            if take.batch is None:
                debt = next(d for d in self.debts if d.owner is takes)
                owed = min(k, debt.points)
                debt.points -= owed
                rest = k - owed  # paid already: back into the batches that paid it
                while rest and debt.paid_by:
                    b, m = debt.paid_by[-1]
                    j = min(m, rest)
                    self._into(b, j, t)
                    rest -= j
                    if j == m:
                        debt.paid_by.pop()
                    else:
                        debt.paid_by[-1] = (b, m - j)
            else:
                self._into(take.batch, k, t)
        assert points == 0
        # CONTRACT §16: points a refund gives back pay a debt as they come back
        self._pay_debts(t)

    def _into(self, b: Batch, k: int, t: datetime) -> None:
        b.points += k  # into an expired batch: they stay expired (§16)
        if b.owed and b.spendable(t):
            # §16 decision: points back in a batch whose points a take-back spent
            # elsewhere pay that spend back first
            for takes in reversed(b.owed):
                j = min(sum(x.points for x in takes), k)
                if j:
                    b.points -= j
                    k -= j
                    self.give_back(takes, j, t)

    def take_back(self, b: Batch | None, points: int, t: datetime) -> int:
        """§6: taken back off the receipt's own pending points first (`b`, the sale's
        earned batch); returns the part taken from the pending batch."""
        from_pending = 0
        if b is not None and b.activates is not None and t < b.activates:
            # pending at the refund's `at`. A refund dated back (in a world where nothing
            # expires) may find the batch spent since it activated by a later sale: replayed
            # in time order (§16) that sale found the points gone and ran into a debt, which
            # counts at once; taken here as a spend at `at` the batch remembers.
            from_pending = min(points, b.pend)
            k = min(from_pending, max(b.points, 0))
            b.points -= k
            points -= from_pending
            if from_pending > k:
                b.owed.append(self.spend(from_pending - k, t))
        elif b is not None and b.spendable(t):
            k = min(points, b.points)
            b.points -= k
            points -= k
            if points:
                b.owed.append(self.spend(points, t))
                points = 0
        if points:
            self.spend(points, t)
        if from_pending and b is not None:
            b.pend -= from_pending
        return from_pending

    def balance(self, t: datetime) -> dict[str, Any]:
        if t < self.clock:
            # a time before the last movement (CONTRACT §5's decision: every movement
            # committed counts, whatever its `at`; only asked in worlds where nothing
            # expires): what is left of the batches (§16), read at T. A spend dated after
            # T that took a batch still pending at T leaves the pending points, not the
            # available ones (until review 28: the available ones, -67 where 0 is left).
            avail = sum(b.points for b in self.batches if b.spendable(t)) - self.debt()
            pending = sum(
                b.points for b in self.batches if b.activates is not None and t < b.activates
            )
            return {"availablePoints": avail, "pendingPoints": pending}
        self.advance(t)
        avail = sum(b.points for b in self.batches if b.spendable(t)) - self.debt()
        pending = sum(b.points for b in self.batches if b.activates is not None and t < b.activates)
        out: dict[str, Any] = {"availablePoints": avail, "pendingPoints": pending}
        if self.debt() == 0:
            groups: dict[datetime, int] = {}
            for b in self.batches:
                if b.expires is not None and b.points > 0 and b.spendable(t):
                    groups[b.expires] = groups.get(b.expires, 0) + b.points
            exp = [{"points": groups[e], "expiresAt": e} for e in sorted(groups)][:3]
            if exp:
                out["expiring"] = exp
        return out


# ------------------------------------------------------------------ the till


class RefTill:
    """Answers (code, document): code 0, or the HTTP status of the refusal (the CLI's exit 2)."""

    def __init__(self, world: World, cust: Customer) -> None:
        self.world = world
        self.cust = cust
        self.ledger = Ledger(world, cust)
        # The same movements with the spending of the open holds in their time's place
        # (CONTRACT §11: each hold's points leave the batches at the hold's own `at`, from
        # the batches spendable then): what a receipt may redeem and the balance its result
        # shows, other open holds left out. A cancelled hold gives its points back.
        self.held = Ledger(world, cust)
        self.sales: dict[str, Sale] = {}
        self.holds: dict[str, Sale] = {}  # open holds
        self.cancelled: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.offline_used: dict[str, int] = {}  # store-day -> points (holds included)
        self.last_at = T0 - timedelta(days=30)

    # §5 for this narrow world
    def price(
        self, receipt: dict[str, Any], at: datetime
    ) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        w = self.world
        unknown = receipt["card"] != self.cust.card  # §4: no offers, no redemption, base rate
        rate = Fraction(3) if unknown else RATE
        lines = []
        for ln in receipt["lines"]:
            qty = Fraction(ln["qty"])
            amount = rhu(ln["priceMinor"] * qty)
            eligible = ln["sku"] in CATALOGUE and not CATALOGUE[ln["sku"]]
            disc = (
                floor(Fraction(amount * w.pct_off, 100))
                if eligible and ln["sku"] == SKU_A and not unknown
                else 0
            )
            lines.append(
                {
                    "sku": ln["sku"],
                    "qty": qty,
                    "amount": amount,
                    "eligible": eligible,
                    "discount": disc,
                }
            )
        elig_total = sum(x["amount"] - x["discount"] for x in lines if x["eligible"])
        extra = w.extra if w.extra and elig_total >= w.extra_min and not unknown else 0
        caps = [(x["amount"] - x["discount"]) // w.pv if x["eligible"] else 0 for x in lines]
        req = receipt.get("redeemPoints", 0)
        req = INF if req == -1 else req
        avail = self._now(at)["availablePoints"]
        day = at.date().isoformat()
        offline_left = max(0, w.offline_limit - self.offline_used.get(day, 0))
        if unknown:
            req = 0
        allowed = max(
            0,
            min(
                req,
                avail,
                floor(Fraction(elig_total * w.max_pct, 100 * w.pv)),
                sum(caps),
                offline_left,
            ),
        )
        shares = largest_remainder(allowed, caps)
        exact = [
            Fraction((x["amount"] - x["discount"] - s * w.pv) * rate, 100 * w.pv)
            if x["eligible"]
            else Fraction(0)
            for x, s in zip(lines, shares, strict=True)
        ]
        total_exact = floor(sum(exact, Fraction(0)))
        earned = [floor(e) for e in exact]
        order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - earned[i]), i))
        for i in order[: total_exact - sum(earned)]:
            earned[i] += 1
        out_lines = [
            {
                "sku": x["sku"],
                "amountMinor": x["amount"],
                "discountMinor": x["discount"],
                "redeemedMinor": s * w.pv,
                "earnedPoints": e,
            }
            for x, s, e in zip(lines, shares, earned, strict=True)
        ]
        result = {
            "redeemedPoints": allowed,
            "earnedPoints": total_exact + extra,
            "lines": out_lines,
        }
        model_lines = [
            {"sku": x["sku"], "qty": x["qty"], "p": s, "e": e, "returned": Fraction(0)}
            for x, s, e in zip(lines, shares, earned, strict=True)
        ]
        return result, model_lines, extra

    def _commit(
        self,
        receipt: dict[str, Any],
        at: datetime,
        result: dict[str, Any],
        mlines: list[dict[str, Any]],
        extra: int,
        htakes: list[Take] | None = None,
    ) -> Sale:
        """`htakes`: what its hold took in `self.held` (None: not held, spent now)."""
        takes, batch = self._book(self.ledger, at, result)
        hspent, hbatch = self._book(self.held, at, result, htakes is None)
        sale = Sale(receipt["receiptId"], at, mlines, extra, False, batch, takes, receipt, result)
        sale.htakes = hspent if htakes is None else htakes
        sale.hbatch = hbatch
        self.sales[sale.rid] = sale
        return sale

    def _book(
        self, ledger: Ledger, at: datetime, result: dict[str, Any], spend: bool = True
    ) -> tuple[list[Take], Batch | None]:
        w = self.world
        takes = ledger.spend(result["redeemedPoints"], at) if spend else []
        earned = result["earnedPoints"]
        batch = None
        if earned:
            act = at + timedelta(days=w.delay)
            batch = ledger._new(
                earned,
                act if w.delay else at,
                act + timedelta(days=w.lifetime) if w.lifetime else None,
            )
            if not w.delay:
                ledger._pay_debts(at)
        return takes, batch

    def _now(self, at: datetime) -> dict[str, Any]:
        """Time passes to `at` (activations pay debts, §16) in both ledgers; the balance at
        `at` with the open holds' spending in it."""
        self.ledger.advance(at)
        return self.held.balance(at)

    def _view(self, result: dict[str, Any], at: datetime) -> dict[str, Any]:
        """A receipt's result: the balance at its `at` after it, the points other open
        holds reserve left out (CONTRACT §11), each from the batches of its own `at`."""
        bal = self._now(at)
        return {
            **result,
            "balance": {
                "availablePoints": bal["availablePoints"],
                "pendingPoints": bal["pendingPoints"],
            },
        }

    def checkout(self, receipt: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        rid = receipt["receiptId"]
        if rid in self.sales:
            s = self.sales[rid]
            return (0, s.result) if _norm(s.request) == _norm(receipt) else (409, None)
        if rid in self.holds or rid in self.cancelled:
            return 409, None  # another body; the generator sends no cancelled one
        at = datetime.fromisoformat(receipt["at"])
        result, mlines, extra = self.price(receipt, at)
        if receipt["card"] != self.cust.card:
            sale = Sale(
                rid,
                at,
                mlines,
                extra,
                False,
                None,
                [],
                receipt,
                {**result, "balance": None},
                unknown=True,
            )
            self.sales[rid] = sale
            return 0, sale.result
        self._use_offline(at, result["redeemedPoints"])
        sale = self._commit(receipt, at, result, mlines, extra)
        sale.result = self._view(result, at)
        return 0, sale.result

    def _use_offline(self, at: datetime, points: int) -> None:
        day = at.date().isoformat()
        self.offline_used[day] = self.offline_used.get(day, 0) + points

    def hold(self, receipt: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        at = datetime.fromisoformat(receipt["at"])
        result, mlines, extra = self.price(receipt, at)
        self._use_offline(at, result["redeemedPoints"])
        # the held result's balance: after the receipt, as if committed (its own spend
        # and earn), other holds left out
        view = self._held_view(receipt, at, result, mlines, extra)
        s = Sale(receipt["receiptId"], at, mlines, extra, False, None, [], receipt, view)
        s.htakes = self.held.spend(result["redeemedPoints"], at)  # reserved from here on
        self.holds[s.rid] = s
        return 0, view

    def _held_view(
        self,
        receipt: dict[str, Any],
        at: datetime,
        result: dict[str, Any],
        mlines: list[dict[str, Any]],
        extra: int,
    ) -> dict[str, Any]:
        shadow = copy.deepcopy(self)
        shadow._commit(receipt, at, result, mlines, extra)
        return shadow._view(result, at)

    def confirm(self, rid: str) -> tuple[int, dict[str, Any] | None]:
        if rid in self.sales:
            return 0, self.sales[rid].result
        if rid not in self.holds:
            return 404, None
        h = self.holds.pop(rid)
        sale = self._commit(
            h.request,
            h.at,
            {k: h.result[k] for k in ("redeemedPoints", "earnedPoints", "lines")},
            h.lines,
            h.extra,
            htakes=h.htakes,
        )
        sale.result = self._view(sale.result, h.at)
        return 0, sale.result

    def cancel(self, rid: str) -> tuple[int, dict[str, Any] | None]:
        if rid in self.cancelled:
            return 0, self.cancelled[rid]
        if rid not in self.holds:
            return 404, None
        h = self.holds.pop(rid)
        self.held.give_back(h.htakes, h.result["redeemedPoints"], self.held.clock)
        day = h.at.date().isoformat()
        self.offline_used[day] -= h.result["redeemedPoints"]
        self.cancelled[rid] = h.result
        return 0, h.result

    def refund(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        fid = body["refundId"]
        if fid in self.refunds:
            first, res = self.refunds[fid]
            return (0, res) if _same_refund(first, body) else (409, None)
        sale = self.sales.get(body["receiptId"])
        if sale is None:
            return 404, None  # never committed here
        at = datetime.fromisoformat(body["at"])
        if at < sale.at:
            return 400, None  # dated before its sale (CONTRACT §6 decision)
        # §6: take each (sku, qty) from the first line with that SKU and qty left
        plan = [Fraction(0)] * len(sale.lines)
        for ln in body["lines"]:
            want = Fraction(ln["qty"])
            for i, sl in enumerate(sale.lines):
                if sl["sku"] != ln["sku"] or want == 0:
                    continue
                left = sl["qty"] - sl["returned"] - plan[i]
                k = min(left, want)
                plan[i] += k
                want -= k
            if want > 0:
                # more than was bought: a precondition (docs/INTEGRATION.md's error table)
                return 412, None
        returned = taken = 0
        for i, sl in enumerate(sale.lines):
            if plan[i] == 0:
                continue
            q, r0, r1 = sl["qty"], sl["returned"], sl["returned"] + plan[i]
            returned += floor(sl["p"] * r1 / q) - floor(sl["p"] * r0 / q)
            taken += floor(sl["e"] * r1 / q) - floor(sl["e"] * r0 / q)
            sl["returned"] = r1
        if (
            sale.extra
            and not sale.extra_taken
            and all(sl["returned"] == sl["qty"] for sl in sale.lines)
        ):
            taken += sale.extra
            sale.extra_taken = True
        if sale.unknown:  # CONTRACT §6: the till does not know that customer's balance
            res = {
                "refundId": fid,
                "receiptId": sale.rid,
                "returnedPoints": returned,
                "takenBackPoints": taken,
                "balance": None,
                "negativeBalance": False,
            }
            self.refunds[fid] = (body, res)
            return 0, res
        for ledger, takes, batch in (
            (self.ledger, sale.takes, sale.earned_batch),
            (self.held, sale.htakes, sale.hbatch),
        ):
            ledger.advance(at)
            ledger.give_back(takes, returned, at)
            ledger.take_back(batch, taken, at)
        bal = self.ledger.balance(at)
        res = {
            "refundId": fid,
            "receiptId": sale.rid,
            "returnedPoints": returned,
            "takenBackPoints": taken,
            "balance": {
                "availablePoints": bal["availablePoints"],
                "pendingPoints": bal["pendingPoints"],
            },
            "negativeBalance": bal["availablePoints"] < 0,
        }
        self.refunds[fid] = (body, res)
        return 0, res

    def balance(self, at: datetime) -> dict[str, Any]:
        shadow = copy.deepcopy(self.ledger)  # asking changes nothing
        return shadow.balance(at)


def _norm(d: dict[str, Any]) -> Any:
    """A request as CONTRACT §11 compares it: `at` as the moment it names, quantities by value."""
    lines = [{**ln, "qty": Fraction(ln["qty"])} for ln in d["lines"]]
    return {**d, "at": datetime.fromisoformat(d["at"].replace("Z", "+00:00")), "lines": lines}


def _same_refund(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def norm(d: dict[str, Any]) -> Any:
        return (
            d["receiptId"],
            datetime.fromisoformat(d["at"]),
            [(ln["sku"], Fraction(ln["qty"])) for ln in d["lines"]],
        )

    return bool(norm(a) == norm(b))
