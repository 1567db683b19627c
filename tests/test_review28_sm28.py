"""Review 28 (sm28): a model of the ledger's life across calls, against the real till.

A till runs one long-lived agent for days: sales, holds, confirms, cancels, holds that
expire, refunds (whole and partial, split, in any order), points that activate and expire,
snapshot deltas that change a customer's balance or the program, restarts. The model below
is written from docs/CONTRACT.md §2, §5 (redemption and accrual, no offers), §6, §11 and
§16 alone: each customer's batches (what the snapshot gives, what each sale earns and
spends, what each refund gives back and takes back), each receipt's state, and what each
call must answer (codes; a call sent again with the same body answers what it answered
first, byte for byte; another body under a known id is a conflict). A hypothesis state
machine drives a real `Agent` on a real data directory with a clock the test moves, a
sample of calls over its real HTTP server and `balance --at --json` through the CLI, and
after each step compares every figure the till answers with the model. At random steps a
FRESH agent, opened on a copy of the data directory, answers the same call: the answers
must be equal (memos, caches and timers must not change an answer).

Where the contract leaves the model unsure it compares the till with itself only: after a
refund of a sale a snapshot has counted (until the next full snapshot), and at a time
before movements dated later (a backdated sale, a hold confirmed late, `balance --at` in
the past: which later points pay a debt "by" then, and whether points a later spend or
take-back touched count as pending or available then, the contract does not say); there
a committed receipt's `balance` must still be what `Balance` at its `at` says next.

Found: a sale in the minute of a refund answered another balance than the till's next
`Balance` (`agent/ledger.py` `Points.after`). For a longer exploration raise `SHORT`'s
max_examples and stateful_step_count, derandomize=False; `SEEN` counts what a run went
through (debts, take-backs beyond a sale's own batch, expired holds confirmed, fresh agents
compared).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tillpoint.agent.errors import TillpointError, edge_of
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from bench import difflong as dl

from .conftest import CLI, PROGRAM, receipt, snapshot

DEVICE = "till-sm28"
MSK = timezone(timedelta(hours=3))
PV = 100  # pointValueMinor
CARDS = {"2770000000017": "c-a", "2770000000024": "c-b"}
UNKNOWN_CARD = "2770000000307"
PRICES = {"4601234000017": 4990, "4601234000024": 12345, "4601234000055": 30000}
TIERS = [{"code": "base", "accrualPercent": "10"}, {"code": "gold", "accrualPercent": "7.5"}]
TIER_OF = {"c-a": "gold", "c-b": "base"}  # the first snapshot's; deltas change them
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 412,
}


SEEN: collections.Counter[str] = collections.Counter()  # what the runs went through


def _start() -> datetime:
    """Ahead of the real clock (a CLI process reading the system clock must find every hold
    placed in its future: it expires none), at a whole minute, in Moscow."""
    now = datetime.now(MSK).replace(second=0, microsecond=0) + timedelta(days=2)
    return now.replace(hour=9, minute=0)


def iso(t: datetime) -> str:
    return t.astimezone(MSK).isoformat()


def rate_of(tier: str) -> Fraction:
    return Fraction(Decimal(next(t["accrualPercent"] for t in TIERS if t["code"] == tier)))


def half_up(x: Fraction) -> int:
    return int(Decimal(x.numerator / Decimal(x.denominator)).quantize(0, ROUND_HALF_UP))


def shares(total: int, weights: list[Fraction]) -> list[int]:
    """floor shares plus one for the largest remainders, ties to the earlier line."""
    s = sum(weights, Fraction(0))
    if total == 0 or s == 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    out = [x.numerator // x.denominator for x in exact]
    left = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:left]:
        out[i] += 1
    return out


# ------------------------------------------------------------------------ the model


@dataclass
class Batch:
    pts: int
    act: datetime | None  # None: spendable from the start
    exp: datetime | None  # None: never expires
    order: int
    remember: list[tuple[Batch | None, int]] = field(default_factory=list)
    live: bool = False
    spent: int = 0  # what spends took from it (at a time before it activates: still owed)

    def spendable(self, t: datetime) -> bool:
        return (self.act is None or self.act <= t) and (self.exp is None or t <= self.exp)


@dataclass
class Program:
    delay: int = 0
    lifetime: int = 0
    pct: int = 50
    ttl: int = 600
    limit: int = 400

    def json(self) -> dict[str, Any]:
        return {
            "currency": "RUB",
            "timezone": "Europe/Moscow",
            "pointValueMinor": PV,
            "maxRedeemPercent": self.pct,
            "activationDelayDays": self.delay,
            "offlineRedeemLimitPoints": self.limit,
            "pointsLifetimeDays": self.lifetime,
            "holdTtlSeconds": self.ttl,
            "tiers": TIERS,
        }


@dataclass
class Base:
    balance: int
    expiring: list[tuple[int, datetime]]
    pending: list[tuple[int, datetime]]


@dataclass
class Sale:
    rid: str
    cust: str | None
    card: str
    at: datetime
    lines: list[dict[str, Any]]  # sku, qty (Fraction), red, earned
    redeemed: int
    earned: int
    act: datetime | None = None  # fixed at commit
    exp: datetime | None = None
    written: int = 0
    seq: int = 0
    returned: list[Fraction] = field(default_factory=list)
    given: int = 0  # returned points so far
    taken: int = 0


@dataclass
class RefundEv:
    sale: Sale
    at: datetime
    give: int
    take: int
    written: int
    seq: int


@dataclass
class Receipt:
    rid: str
    body: dict[str, Any]
    state: str  # HELD, CONFIRMED, CANCELLED
    sale: Sale
    placed: datetime | None = None
    expires: datetime | None = None
    first: dict[str, Any] | None = None  # the stored answer (hold's, then the confirmed one)
    cancelled: dict[str, Any] | None = None


class Wallet:
    """A customer's batches replayed at a moment (docs/CONTRACT.md §16)."""

    def __init__(self, base: Base, program: Program, horizon: datetime) -> None:
        self.horizon = horizon  # the time asked: what pays a debt by then
        self.debt_seen = False
        self.n = 0
        self.batches: list[Batch] = []
        self.debt = 0
        self.debt_paid: list[tuple[Batch, int]] = []  # what paid debts, in the order it did
        for pts, exp in base.expiring:
            self.add(pts, None, exp, live=True)
        rest = base.balance - sum(p for p, _ in base.expiring)
        if rest >= 0:
            self.add(rest, None, None, live=True)
        else:
            self.debt = -rest
        for pts, act in base.pending:
            exp = act + timedelta(days=program.lifetime) if program.lifetime else None
            self.add(pts, act, exp)

    def add(
        self, pts: int, act: datetime | None, exp: datetime | None, live: bool = False
    ) -> Batch:
        self.n += 1
        b = Batch(pts, act, exp, self.n, live=live)
        self.batches.append(b)
        return b

    def advance(self, t: datetime) -> None:
        """Batches that become spendable by `t` pay a debt as they do, soonest-expiring first."""
        t = min(t, self.horizon)  # points not spendable yet at the time asked pay nothing
        coming = [b for b in self.batches if not b.live and b.act is not None and b.act <= t]
        coming.sort(key=lambda b: (b.act, b.exp is None, b.exp or t, b.order))
        for b in coming:
            b.live = True
            if self.debt and b.spendable(b.act or t):
                paid = min(self.debt, b.pts)
                b.pts -= paid
                self.debt -= paid
                self.debt_paid.append((b, paid))

    def spend(self, t: datetime, n: int) -> list[tuple[Batch | None, int]]:
        self.advance(t)
        took: list[tuple[Batch | None, int]] = []
        live = [b for b in self.batches if b.spendable(t) and b.pts > 0]
        live.sort(key=lambda b: (b.exp is None, b.exp or t, b.order))
        for b in live:
            if n <= 0:
                break
            k = min(n, b.pts)
            b.pts -= k
            b.spent += k
            n -= k
            took.append((b, k))
        if n > 0:
            SEEN["debt"] += 1
            self.debt += n
            self.debt_seen = True
            took.append((None, n))
        return took

    def give(
        self, t: datetime, took: list[tuple[Batch | None, int]], back: dict[int, int], n: int
    ) -> None:
        """`n` points back to the batches `took` took them from, the last taken first."""
        for i in reversed(range(len(took))):
            if n <= 0:
                break
            b, k = took[i]
            y = min(n, k - back.get(i, 0))
            if y <= 0:
                continue
            back[i] = back.get(i, 0) + y
            n -= y
            self.put(t, b, y)

    def put(self, t: datetime, b: Batch | None, y: int) -> None:
        if b is None:  # a debt that spend made: what is still owed first, then into the
            paid = min(self.debt, y)  # batches that paid it, the last first (§16)
            self.debt -= paid
            y -= paid
            while y and self.debt_paid:
                pb, k = self.debt_paid.pop()
                z = min(k, y)
                if z < k:
                    self.debt_paid.append((pb, k - z))
                pb.pts += z
                y -= z
            if y:
                self.add(y, None, None, live=True)
            return
        if b.remember and b.spendable(t):  # pays back what a take-back spent for it
            SEEN["give-back repays a take-back's spend"] += 1
            while b.remember and y:
                ob, k = b.remember.pop()
                z = min(k, y)
                if z < k:
                    b.remember.append((ob, k - z))
                y -= z
                self.put(t, ob, z)
        b.pts += y
        b.spent -= min(b.spent, y)
        if self.debt and b.live and b.spendable(t) and t <= self.horizon:
            paid = min(self.debt, b.pts)
            b.pts -= paid
            self.debt -= paid
            self.debt_paid.append((b, paid))

    def figures(self, t: datetime) -> tuple[int, int, list[tuple[int, datetime]]]:
        self.advance(t)
        # spending counts at once (docs/CONTRACT.md §5): points a later spend took from a
        # batch not spendable yet at `t` are owed at `t`, the batch pending whole
        ahead = [b for b in self.batches if b.act is not None and b.act > t]
        avail = sum(b.pts for b in self.batches if b.spendable(t)) - self.debt
        avail -= sum(b.spent for b in ahead)
        pending = sum(b.pts + b.spent for b in ahead)
        merged: dict[datetime, int] = {}
        for b in self.batches:
            if b.spendable(t) and b.exp is not None and b.pts > 0:
                merged[b.exp] = merged.get(b.exp, 0) + b.pts
        exp = sorted(merged.items())
        owed = self.debt
        listed = []
        for when, pts in exp:
            cut = min(owed, pts)
            owed -= cut
            if pts - cut > 0:
                listed.append((pts - cut, when))
        return avail, pending, listed[:3]


class Model:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.program = Program()
        self.bases: dict[str, Base] = {}
        self.tiers = dict(TIER_OF)
        self.counted_through = 0
        self.unsure: set[str] = set()  # customers whose balance the model cannot tell
        self.receipts: dict[str, Receipt] = {}
        self.refunds: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.events: list[Sale | RefundEv] = []
        self.written = 0
        self.seq = 0
        self.version = 0
        self.floor = start  # no receipt is dated before this (the last full count)

    # ---- holds and balances

    def open_holds(self, cust: str | None = None, but: str | None = None) -> list[Receipt]:
        return [
            r
            for r in self.receipts.values()
            if r.state == "HELD"
            and r.expires is not None
            and self.now < r.expires
            and r.rid != but
            and (cust is None or r.sale.cust == cust)
        ]

    def reserved(self, cust: str, but: str | None = None) -> list[Sale]:
        """What the other open holds of the customer reserve: their redemption, spent at their
        `at` (they earn nothing until confirmed)."""
        return [
            Sale(r.rid, cust, r.sale.card, r.sale.at, [], r.sale.redeemed, 0)
            for r in self.open_holds(cust, but=but)
        ]

    def wallet(self, cust: str, t: datetime, extra: list[Sale] = ()) -> Wallet:  # type: ignore[assignment]
        w = Wallet(self.bases[cust], self.program, t)
        evs: list[tuple[datetime, int, Any]] = []
        for e in self.events:
            sale = e if isinstance(e, Sale) else e.sale
            if sale.cust != cust or e.seq <= self.counted_through:
                continue
            evs.append((e.at, e.written, e))
        for i, s in enumerate(extra):
            evs.append((s.at, 10**9 + i, s))
        evs.sort(key=lambda x: (x[0], x[1]))
        took: dict[int, list[tuple[Batch | None, int]]] = {}
        own: dict[int, Batch | None] = {}
        back: dict[int, dict[int, int]] = {}
        for at, _, e in evs:
            if isinstance(e, Sale):
                took[id(e)] = w.spend(at, e.redeemed)
                back[id(e)] = {}
                own[id(e)] = None
                if e.earned:
                    b = w.add(e.earned, e.act, e.exp)
                    own[id(e)] = b
                    w.advance(at)
            else:
                w.advance(at)
                s = e.sale
                if id(s) not in took:  # a sale the snapshot counted: handled by `unsure`
                    continue
                w.give(at, took[id(s)], back[id(s)], e.give)
                if e.take:
                    ob = own[id(s)]
                    if ob is not None and (ob.exp is None or at <= ob.exp):
                        x = min(e.take, ob.pts)
                        ob.pts -= x
                        rest = e.take - x
                        if rest:
                            SEEN["take-back beyond its own batch"] += 1
                            ob.remember += w.spend(at, rest)
                    else:
                        SEEN["take-back after its own batch expired"] += 1
                        w.spend(at, e.take)
        w.advance(t)
        return w

    def tellable(self, cust: str | None, t: datetime) -> bool:
        """Whether the model can tell the customer's points at `t`. Not after a refund of a
        sale a snapshot counted; nor at a time before movements dated later (counted at
        once: a backdated sale, a hold confirmed late, `balance --at` in the past): which
        later points pay a debt "by" `t`, and whether points a later spend took from a
        batch not spendable yet at `t` count as pending or as spent at `t`, the contract
        does not say. (The till's own answers must still agree: `committed_balance`.)"""
        if cust is None:
            return True
        if cust in self.unsure:
            return False
        later = any(
            (e if isinstance(e, Sale) else e.sale).cust == cust and e.at > t
            for e in self.events
            if e.seq > self.counted_through
        ) or any(r.sale.at > t for r in self.open_holds(cust))
        return not later

    def balance(self, cust: str, t: datetime, extra: list[Sale] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        avail, pending, exp = self.wallet(cust, t, extra).figures(t)
        out: dict[str, Any] = {"availablePoints": avail, "pendingPoints": pending}
        if exp:
            out["expiring"] = [{"points": p, "expiresAt": iso(e)} for p, e in exp]
        return out

    # ---- pricing (§5 without offers, offline)

    def offline_used(self, card: str, day: Any, but: str | None = None) -> int:
        used = 0
        for r in self.receipts.values():
            live = r.state == "CONFIRMED" or (r.state == "HELD" and r in self.open_holds())
            if r.rid == but or not live or r.sale.card != card:
                continue
            if r.sale.at.astimezone(MSK).date() == day:
                used += r.sale.redeemed
        return used

    def price(self, body: dict[str, Any]) -> tuple[Sale, dict[str, Any]]:
        at = datetime.fromisoformat(body["at"])
        card = body["card"]
        cust = CARDS.get(card)
        lines = []
        for ln in body["lines"]:
            qty = Fraction(Decimal(ln["qty"]))
            lines.append({"sku": ln["sku"], "qty": qty, "amount": half_up(ln["priceMinor"] * qty)})
        total = sum(ln["amount"] for ln in lines)
        caps = [ln["amount"] // PV for ln in lines]
        red = 0
        holds = self.reserved(cust, but=body["receiptId"]) if cust else []
        if cust is not None:
            asked = body.get("redeemPoints", 0)
            avail = self.wallet(cust, at, holds).figures(at)[0]
            left = self.program.limit - self.offline_used(
                card, at.astimezone(MSK).date(), body["receiptId"]
            )
            allowed = [
                max(avail, 0),
                total * self.program.pct // (100 * PV),
                sum(caps),
                max(left, 0),
            ]
            if asked != -1:
                allowed.append(asked)
            red = min(allowed)
        reds = shares(red, [Fraction(c) for c in caps])
        rate = rate_of(self.tiers[cust]) if cust else rate_of(TIERS[0]["code"])
        exact = [
            (ln["amount"] - r * PV) * rate / (100 * PV) for ln, r in zip(lines, reds, strict=True)
        ]
        s = sum(exact, Fraction(0))
        earned = s.numerator // s.denominator
        floors = [x.numerator // x.denominator for x in exact]
        extra = earned - sum(floors)
        order = sorted(range(len(lines)), key=lambda i: (-(exact[i] - floors[i]), i))
        for i in order[:extra]:
            floors[i] += 1
        for ln, r, e in zip(lines, reds, floors, strict=True):
            ln["red"], ln["earned"] = r, e
        sale = Sale(body["receiptId"], cust, card, at, lines, red, earned)
        self.date(sale)
        fig: dict[str, Any] = {
            "lines": [
                {
                    "sku": ln["sku"],
                    "amountMinor": ln["amount"],
                    "redeemedMinor": ln["red"] * PV,
                    "earnedPoints": ln["earned"],
                }
                for ln in lines
            ],
            "totalMinor": total,
            "redeemedPoints": red,
            "payableMinor": total - red * PV,
            "earnedPoints": earned,
            "balance": self.balance(cust, at, [*holds, sale]) if cust else None,
        }
        return sale, fig

    def date(self, sale: Sale) -> None:
        """The earned points' activation and expiry, by the program in force now."""
        sale.act = sale.at + timedelta(days=self.program.delay)
        sale.exp = (
            sale.act + timedelta(days=self.program.lifetime) if self.program.lifetime else None
        )

    def commit(self, sale: Sale, seq: int) -> None:
        self.written += 1
        sale.written = self.written
        sale.seq = seq
        sale.returned = [Fraction(0)] * len(sale.lines)
        self.events.append(sale)


def adopt(sale: Sale, got: dict[str, Any]) -> None:
    """The till's figures for the sale, once compared (or where the model could not tell
    what it might redeem): what its refunds give and take back is worked out from them."""
    for ln, doc in zip(sale.lines, got["lines"], strict=True):
        ln["red"], ln["earned"] = doc["redeemedMinor"] // PV, doc["earnedPoints"]
    sale.redeemed, sale.earned = got["redeemedPoints"], got["earnedPoints"]


# ------------------------------------------------------------------------ the doors


class Doors:
    """The long-lived agent (in process and behind its HTTP server) and fresh ones."""

    def __init__(self, data: Path, clock: list[datetime]) -> None:
        self.data = data
        self.clock = clock
        self.open()

    def open(self) -> None:
        self.agent = Agent(self.data, DEVICE, clock=lambda: self.clock[0])
        self.http: Any = None  # its HTTP server, started at the first call over HTTP

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        self.agent.close()

    def call(
        self, call: str, body: Any, door: str = "agent", agent: Agent | None = None
    ) -> tuple[str, Any]:
        if door == "http":
            return self.over_http(call, body)
        a = agent or self.agent
        try:
            if call in ("quote", "hold", "checkout"):
                result: Any = getattr(a, call)(receipt_from_json(body))
            elif call == "confirm":
                result = a.confirm(body["receiptId"], body.get("fiscalDocument"))
            elif call == "cancel":
                result = a.cancel(body["receiptId"])
            elif call == "refund":
                result = a.refund(refund_from_json(body))
            elif call == "balance":
                result = a.balance(body["card"], datetime.fromisoformat(body["at"]))
            else:
                raise AssertionError(call)
        except TillpointError as exc:
            edge = edge_of(exc)
            return "error", (edge.code, edge.message)
        return "ok", result.to_json()

    def over_http(self, call: str, body: Any) -> tuple[str, Any]:
        if self.http is None:
            from tillpoint.agent.http_api import HttpServer

            self.http = HttpServer(self.agent, "127.0.0.1:0")
            self.http.start()
        raw = json.dumps(body, ensure_ascii=False).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http.port}/v1/{call}",
            raw,
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return "ok", json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            doc = json.loads(exc.read())
            code = doc["error"]["code"]
            assert exc.code == HTTP_STATUS.get(code, -1), (call, exc.code, doc)
            return "error", (code, doc["error"]["message"])

    def fresh(self, copy_dir: Path, call: str, body: Any) -> tuple[str, Any]:
        dl.clear_module_caches()
        a = Agent(copy_dir, DEVICE, clock=lambda: self.clock[0])
        try:
            return self.call(call, body, agent=a)
        finally:
            a.close()

    def cli_balance(self, card: str, at: str) -> dict[str, Any]:
        from tillpoint.agent.cli import main

        out, err = io.StringIO(), io.StringIO()
        with (
            pytest.MonkeyPatch.context() as mp,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            mp.setenv("TILLPOINT_DEVICE_ID", DEVICE)
            code = main(["--data-dir", str(self.data), "balance", card, "--at", at, "--json"])
        assert code == 0, err.getvalue()
        doc: dict[str, Any] = json.loads(out.getvalue())
        return doc


# ------------------------------------------------------------------------ the machine

SKU = st.sampled_from(sorted(PRICES))
QTY = st.sampled_from(["1", "2", "3", "0.5", "1.5"])
STEPS = st.sampled_from([0, 0, 17, 420, 667, 7213, 86413, 2 * 86400 + 29])


class TillLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix="sm28-"))
        self.data = self.work / "data"
        self.start = _start()
        self.m = Model(self.start)
        self.clock = [self.start]
        self.doors: Doors | None = None
        self.n = 0
        self.twin = False
        self.log: list[str] = []

    def teardown(self) -> None:
        if self.doors is not None:
            self.doors.close()
        shutil.rmtree(self.work, ignore_errors=True)

    # ---- helpers

    @property
    def d(self) -> Doors:
        assert self.doors is not None
        return self.doors

    def new_id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.n}"

    def call(self, call: str, body: Any, door: str) -> tuple[str, Any]:
        """The call on the long-lived till; with `twin` set, a fresh agent on a copy of the
        data directory made just before answers it too, the same."""
        self.log.append(
            f"{iso(self.clock[0])} {door} {call} {json.dumps(body, ensure_ascii=False)}"
        )
        copy_dir = None
        if self.twin:
            copy_dir = self.work / "copy"
            dl.copy_state(self.data, copy_dir)
        got = self.d.call(call, body, door)
        self.log.append(f"  -> {json.dumps(got, ensure_ascii=False)[:600]}")
        if copy_dir is not None:
            twin = self.d.fresh(copy_dir, call, body)
            assert twin == got, f"fresh agent answered otherwise:\n{twin}\nlong-lived:\n{got}"
            self.twin = False
            SEEN["fresh agent compared"] += 1
        return got

    def same(self, what: str, got: Any, want: Any) -> None:
        assert got == want, f"{what}: till {got!r}, model {want!r}\n" + "\n".join(self.log[-40:])

    def check_figures(
        self, got: dict[str, Any], fig: dict[str, Any], cust: str | None, at: datetime
    ) -> None:
        if not self.m.tellable(cust, at):  # what it may redeem is a balance the model cannot tell
            self.same("totalMinor", got["totalMinor"], fig["totalMinor"])
            return
        lines = [
            {k: ln[k] for k in ("sku", "amountMinor", "redeemedMinor", "earnedPoints")}
            for ln in got["lines"]
        ]
        self.same("lines", lines, fig["lines"])
        for k in ("totalMinor", "redeemedPoints", "payableMinor", "earnedPoints"):
            self.same(k, got[k], fig[k])
        self.same("balance", got["balance"], fig["balance"])

    def snapshot(
        self, full: bool, customers: list[str], program: bool, through: int | None = None
    ) -> None:
        m = self.m
        doc: dict[str, Any] = {
            "version": m.version + 1,
            "baseVersion": 0 if full else m.version,
            "issuedAt": iso(self.clock[0]),
        }
        if full or program:
            doc["program"] = m.program.json()
        if full:
            doc["categories"] = [{"code": "food", "name": "Продукты"}]
            doc["products"] = [
                {"sku": s, "name": f"товар {s[-3:]}", "category": "food"} for s in PRICES
            ]
            doc["cards"] = [
                {"number": n, "customerId": c, "status": "ACTIVE"} for n, c in CARDS.items()
            ]
            doc["offers"] = []
        if customers or full:
            doc["customers"] = []
            for cid in sorted(CARDS.values()) if full else customers:
                b = m.bases[cid]
                row: dict[str, Any] = {
                    "id": cid,
                    "firstName": "Имя",
                    "tier": m.tiers[cid],
                    "balancePoints": b.balance,
                    "segment": "ACTIVE",
                }
                if b.expiring:
                    row["expiring"] = [{"points": p, "expiresAt": iso(e)} for p, e in b.expiring]
                if b.pending:
                    row["pending"] = [{"points": p, "activatesAt": iso(a)} for p, a in b.pending]
                doc["customers"].append(row)
        if through is not None:
            doc["appliedThrough"] = {DEVICE: through}
        self.log.append(f"snapshot {json.dumps(doc, ensure_ascii=False)}")
        self.d.agent.load_snapshot(doc)
        m.version += 1

    def body(
        self, card: str, lines: list[tuple[str, str]], redeem: int, back: int = 0
    ) -> dict[str, Any]:
        # a POS that sends a sale late dates it when it was rung up, never before the
        # hub's last full count (the model does not replay sales before counted ones)
        at = max(self.clock[0] - timedelta(seconds=back), self.m.floor)
        return {
            "receiptId": self.new_id("r"),
            "storeId": "s1",
            "tillId": "t1",
            "at": iso(at),
            "card": card,
            "lines": [{"sku": s, "qty": q, "priceMinor": PRICES[s]} for s, q in lines],
            "redeemPoints": redeem,
        }

    # ---- rules

    @initialize(
        a=st.integers(0, 3000),
        b=st.integers(0, 300),
        exp_days=st.lists(st.integers(0, 4), max_size=2),
        delay=st.sampled_from([0, 0, 1]),
        lifetime=st.sampled_from([0, 1, 3]),
    )
    def seed(self, a: int, b: int, exp_days: list[int], delay: int, lifetime: int) -> None:
        m = self.m
        m.program = Program(delay=delay, lifetime=lifetime)
        expiring = []
        left = a
        for i, dd in enumerate(sorted(exp_days)):
            part = left // 3
            left -= part
            expiring.append((part, self.start + timedelta(days=dd, hours=3 + i, seconds=59)))
        m.bases = {
            "c-a": Base(a, expiring, []),
            "c-b": Base(b, [], [(40, self.start + timedelta(hours=20))]),
        }
        self.doors = Doors(self.data, self.clock)
        self.snapshot(True, [], True)

    @rule(
        card=st.sampled_from([*CARDS, *CARDS, UNKNOWN_CARD]),
        lines=st.lists(st.tuples(SKU, QTY), min_size=1, max_size=3),
        redeem=st.sampled_from([0, -1, 5, 40, 100000]),
        how=st.sampled_from(["checkout", "hold", "quote"]),
        door=st.sampled_from(["agent", "agent", "http"]),
        back=st.sampled_from([0, 0, 0, 300, 5 * 3600]),
        wait=STEPS,
    )
    def sell(
        self,
        card: str,
        lines: list[tuple[str, str]],
        redeem: int,
        how: str,
        door: str,
        back: int,
        wait: int,
    ) -> None:
        self.time_passes(wait)
        self.sale(card, lines, redeem, how, door, back)

    @rule(
        card=st.sampled_from(sorted(CARDS)),
        lines=st.lists(st.tuples(SKU, QTY), min_size=1, max_size=2),
        redeem=st.sampled_from([-1, 40]),
        how=st.sampled_from(["checkout", "checkout", "hold"]),
    )
    def spend(self, card: str, lines: list[tuple[str, str]], redeem: int, how: str) -> None:
        """A known customer spends points (what makes refunds meet spent batches)."""
        self.sale(card, lines, redeem, how, "agent", 0)

    def sale(
        self, card: str, lines: list[tuple[str, str]], redeem: int, how: str, door: str, back: int
    ) -> None:
        m = self.m
        body = self.body(card, lines, redeem, back)
        sale, fig = m.price(body)
        kind, got = self.call(how, body, door)
        self.same(f"{how} answered", kind, "ok")
        self.check_figures(got, fig, sale.cust, sale.at)
        adopt(sale, got)
        if how == "quote":
            self.same("quote state", got.get("state"), None)
            return
        if how == "hold":
            self.same("state", got["state"], "HELD")
            placed = self.clock[0]
            expires = placed + timedelta(seconds=m.program.ttl)
            self.same("holdExpiresAt", datetime.fromisoformat(got["holdExpiresAt"]), expires)
            m.receipts[body["receiptId"]] = Receipt(
                body["receiptId"], body, "HELD", sale, placed, expires, got
            )
            return
        self.same("state", got["state"], "CONFIRMED")
        self.same("seq", got["seq"], m.seq + 1)
        m.seq += 1
        m.commit(sale, m.seq)
        self.committed_balance(sale, got)
        m.receipts[body["receiptId"]] = Receipt(
            body["receiptId"], body, "CONFIRMED", sale, first=got
        )

    def committed_balance(self, sale: Sale, got: dict[str, Any]) -> None:
        """§5 step 6: a committed receipt's `balance` is the customer's balance at its `at`
        after it: what `Balance` at that `at` says at once (when no other hold of the
        customer is open: a result leaves out what they reserve, `Balance` does not)."""
        if sale.cust is None or self.m.open_holds(sale.cust):
            return
        card = sale.card
        answer = self.d.call("balance", {"card": card, "at": iso(sale.at)})
        self.same("Balance at the receipt's at, right after it", ("ok", got["balance"]), answer)

    def held(self) -> list[str]:
        return sorted(r for r, x in self.m.receipts.items() if x.state == "HELD")

    def near_expiry(self, r: Receipt) -> bool:
        return r.expires is not None and abs((self.clock[0] - r.expires).total_seconds()) < 2

    @precondition(lambda self: self.held())
    @rule(data=st.data(), door=st.sampled_from(["agent", "http"]), fiscal=st.booleans())
    def confirm(self, data: st.DataObject, door: str, fiscal: bool) -> None:
        m = self.m
        rid = data.draw(st.sampled_from(self.held()))
        r = m.receipts[rid]
        if self.near_expiry(r):
            self.clock[0] += timedelta(seconds=3)
            m.now = self.clock[0]
        body: dict[str, Any] = {"receiptId": rid}
        if fiscal:
            body["fiscalDocument"] = f"FD-{rid}"
        kind, got = self.call("confirm", body, door)
        assert r.expires is not None
        if self.clock[0] >= r.expires:
            self.same("confirm of an expired hold", kind, "error")
            self.same("code", got[0], "FAILED_PRECONDITION")
            assert "hold expired: price the receipt again" in got[1], got
            r.state = "EXPIRED"
            SEEN["confirm of an expired hold"] += 1
            return
        self.same("confirm answered", kind, "ok")
        self.same("state", got["state"], "CONFIRMED")
        self.same("seq", got["seq"], m.seq + 1)
        m.seq += 1
        m.date(r.sale)  # §11: dated at Confirm with the program then
        if any(e.at > r.sale.at for e in m.events):
            SEEN["confirm after later movements"] += 1
        m.commit(r.sale, m.seq)
        r.state = "CONFIRMED"
        held = r.first
        assert held is not None
        for k in ("lines", "totalMinor", "redeemedPoints", "payableMinor", "earnedPoints"):
            self.same(f"confirmed {k} as held", got[k], held[k])
        if r.sale.cust is not None and m.tellable(r.sale.cust, r.sale.at):
            others = m.reserved(r.sale.cust, but=rid)
            self.same("confirm balance", got["balance"], m.balance(r.sale.cust, r.sale.at, others))
        r.first = got
        self.committed_balance(r.sale, got)

    @precondition(lambda self: self.held())
    @rule(data=st.data(), door=st.sampled_from(["agent", "http"]))
    def cancel(self, data: st.DataObject, door: str) -> None:
        m = self.m
        rid = data.draw(st.sampled_from(self.held()))
        r = m.receipts[rid]
        kind, got = self.call("cancel", {"receiptId": rid}, door)
        self.same("cancel answered", kind, "ok")
        self.same("state", got["state"], "CANCELLED")
        r.state = "CANCELLED"
        r.cancelled = got

    def committed(self) -> list[str]:
        return sorted(r for r, x in self.m.receipts.items() if x.state == "CONFIRMED")

    @precondition(lambda self: self.m.receipts)
    @rule(data=st.data(), door=st.sampled_from(["agent", "http"]), change=st.booleans())
    def send_again(self, data: st.DataObject, door: str, change: bool) -> None:
        """A POS retries a receipt it sent: the same body answers what the first did; another
        body under its receiptId is a conflict (§11)."""
        m = self.m
        rid = data.draw(st.sampled_from(sorted(m.receipts)))
        r = m.receipts[rid]
        if self.near_expiry(r):
            self.clock[0] += timedelta(seconds=3)
            m.now = self.clock[0]
        expired = r.state == "EXPIRED" or (
            r.state == "HELD" and r.expires is not None and self.clock[0] >= r.expires
        )
        state = "EXPIRED" if expired else r.state
        if change and state != "EXPIRED":
            body = {**r.body, "redeemPoints": r.body["redeemPoints"] + 1}
            how = data.draw(st.sampled_from(["hold", "checkout"]))
            kind, got = self.call(how, body, door)
            self.same(
                "another body",
                (kind, got[0] if kind == "error" else got),
                ("error", "ALREADY_EXISTS"),
            )
            return
        if state == "CONFIRMED":
            how = data.draw(st.sampled_from(["hold", "checkout", "confirm", "quote"]))
            if how == "quote":  # its committed figures, as a quote (docs/CONTRACT.md §11)
                kind, got = self.call(how, r.body, door)
                assert r.first is not None
                self.same("quote of a committed receipt", kind, "ok")
                keys = (
                    "lines",
                    "totalMinor",
                    "redeemedPoints",
                    "payableMinor",
                    "earnedPoints",
                    "balance",
                )
                self.same(
                    "quote of a committed receipt",
                    {k: got[k] for k in keys},
                    {k: r.first[k] for k in keys},
                )
                self.same("its state", (got.get("state"), got["printedOffers"]), (None, []))
                return
            body = {"receiptId": rid} if how == "confirm" else r.body
            kind, got = self.call(how, body, door)
            self.same(f"{how} again", (kind, got), ("ok", r.first))
            self.same(
                f"{how} again, byte for byte",
                json.dumps(got, ensure_ascii=False),
                json.dumps(r.first, ensure_ascii=False),
            )
        elif state == "CANCELLED":
            how = data.draw(st.sampled_from(["hold", "cancel", "checkout", "confirm"]))
            body = r.body if how in ("hold", "checkout") else {"receiptId": rid}
            kind, got = self.call(how, body, door)
            if how in ("hold", "cancel"):
                self.same(f"{how} of a cancelled receipt", (kind, got), ("ok", r.cancelled))
            else:
                self.same(
                    f"{how} of a cancelled receipt",
                    (kind, got[0]),
                    ("error", "FAILED_PRECONDITION"),
                )
        elif state == "HELD":
            kind, got = self.call("hold", r.body, door)
            self.same("hold again", (kind, got), ("ok", r.first))
        else:  # an expired hold: priced and held afresh under the same id
            r.state = "EXPIRED"
            how = data.draw(st.sampled_from(["hold", "checkout", "confirm", "cancel"]))
            if how == "confirm":
                kind, got = self.call(how, {"receiptId": rid}, door)
                self.same(
                    f"{how} of an expired hold", (kind, got[0]), ("error", "FAILED_PRECONDITION")
                )
                return
            if how == "cancel":  # the POS gives up on it: cancelled (it reserved nothing)
                kind, got = self.call(how, {"receiptId": rid}, door)
                self.same(
                    "cancel of an expired hold", (kind, got.get("state")), ("ok", "CANCELLED")
                )
                r.state, r.cancelled = "CANCELLED", got
                return
            body = {**r.body}
            sale, fig = m.price(body)
            kind, got = self.call(how, body, door)
            self.same(f"{how} of an expired hold", kind, "ok")
            self.check_figures(got, fig, sale.cust, sale.at)
            adopt(sale, got)
            if how == "hold":
                placed = self.clock[0]
                expires = placed + timedelta(seconds=m.program.ttl)
                m.receipts[rid] = Receipt(rid, body, "HELD", sale, placed, expires, got)
            else:
                m.seq += 1
                self.same("seq", got["seq"], m.seq)
                m.commit(sale, m.seq)
                m.receipts[rid] = Receipt(rid, body, "CONFIRMED", sale, first=got)
                self.committed_balance(sale, got)

    @precondition(lambda self: self.committed())
    @rule(
        data=st.data(),
        door=st.sampled_from(["agent", "http"]),
        part=st.sampled_from(["all", "line", "half", "half", "more"]),
        wait=STEPS,
    )
    def refund(self, data: st.DataObject, door: str, part: str, wait: int) -> None:
        self.time_passes(wait)
        m = self.m
        rid = data.draw(st.sampled_from(self.committed()))
        sale = m.receipts[rid].sale
        left: dict[str, Fraction] = {}
        for ln, r in zip(sale.lines, sale.returned, strict=True):
            left[ln["sku"]] = left.get(ln["sku"], Fraction(0)) + ln["qty"] - r
        skus = sorted(s for s, q in left.items() if q > 0)
        if not skus and part != "more":
            return
        back: dict[str, Fraction]
        if part == "all":
            back = {s: left[s] for s in skus}
        elif part == "line":
            s = data.draw(st.sampled_from(skus))
            back = {s: left[s]}
        elif part == "half":
            s = data.draw(st.sampled_from(skus))
            half = Fraction(int(left[s] * 500), 1000)  # to the last 0.001 (§2)
            back = {s: half} if half > 0 else {s: left[s]}
        else:
            s = data.draw(st.sampled_from(sorted(left)))
            back = {s: left[s] + 1}
        body = {
            "refundId": self.new_id("f"),
            "receiptId": rid,
            "at": iso(self.clock[0]),
            "lines": [
                {"sku": s, "qty": str(Decimal(q.numerator) / Decimal(q.denominator))}
                for s, q in back.items()
            ],
        }
        kind, got = self.call("refund", body, door)
        if part == "more":
            self.same(
                "returning more than was bought", (kind, got[0]), ("error", "FAILED_PRECONDITION")
            )
            return
        self.same("refund answered", kind, "ok")
        # §6: each returned qty from the first line of its sku with qty left; per line the
        # customer has got back floor(p × r / q) and lost floor(e × r / q) so far.
        give = take = 0
        for s, q in back.items():
            for i, ln in enumerate(sale.lines):
                if ln["sku"] != s or q <= 0:
                    continue
                room = ln["qty"] - sale.returned[i]
                k = min(room, q)
                if k <= 0:
                    continue
                before = sale.returned[i]
                sale.returned[i] += k
                q -= k
                fl = lambda x: x.numerator // x.denominator  # noqa: E731
                give += fl(ln["red"] * sale.returned[i] / ln["qty"]) - fl(
                    ln["red"] * before / ln["qty"]
                )
                take += fl(ln["earned"] * sale.returned[i] / ln["qty"]) - fl(
                    ln["earned"] * before / ln["qty"]
                )
        self.same("returnedPoints", got["returnedPoints"], give)
        self.same("takenBackPoints", got["takenBackPoints"], take)
        m.seq += 1
        self.same("refund seq", got["seq"], m.seq)
        m.written += 1
        m.events.append(RefundEv(sale, self.clock[0], give, take, m.written, m.seq))
        if sale.seq <= m.counted_through and sale.cust is not None:
            m.unsure.add(sale.cust)
        m.refunds[body["refundId"]] = (body, got)
        if sale.cust is None:
            self.same("unknown card's refund balance", got["balance"], None)
        elif m.tellable(sale.cust, self.clock[0]):
            want = m.balance(sale.cust, self.clock[0])
            self.same("refund balance", got["balance"], want)
            self.same("negativeBalance", got["negativeBalance"], want["availablePoints"] < 0)

    @precondition(lambda self: self.m.refunds)
    @rule(data=st.data(), door=st.sampled_from(["agent", "http"]), change=st.booleans())
    def refund_again(self, data: st.DataObject, door: str, change: bool) -> None:
        fid = data.draw(st.sampled_from(sorted(self.m.refunds)))
        body, first = self.m.refunds[fid]
        if change:
            body = {**body, "lines": [{**body["lines"][0], "qty": "0.001"}]}
            kind, got = self.call("refund", body, door)
            self.same(
                "another refund body",
                (kind, got[0] if kind == "error" else got),
                ("error", "ALREADY_EXISTS"),
            )
            return
        kind, got = self.call("refund", body, door)
        self.same("refund again", (kind, got), ("ok", first))

    @rule(step=STEPS)
    def time_passes(self, step: int) -> None:
        self.clock[0] += timedelta(seconds=step)
        self.m.now = self.clock[0]

    @rule(
        card=st.sampled_from(sorted(CARDS)),
        ahead=st.sampled_from([0, 0, 3600, 86400, 3 * 86400 + 7, -3600]),
        door=st.sampled_from(["agent", "agent", "http", "cli"]),
    )
    def balance(self, card: str, ahead: int, door: str) -> None:
        cust = CARDS[card]
        t = self.clock[0] + timedelta(seconds=ahead)
        body = {"card": card, "at": iso(t)}
        if door == "cli":
            got: Any = self.d.cli_balance(card, iso(t))
        else:
            kind, got = self.call("balance", body, door)
            self.same("balance answered", kind, "ok")
        if self.m.tellable(cust, t):
            self.same(f"balance at {iso(t)}", got, self.m.balance(cust, t))

    @rule(fresh=st.sampled_from([False, True, True]))
    def restart_or_fresh(self, fresh: bool) -> None:
        """The till restarts (closed and opened on the same data directory), or the next
        call is answered by a fresh agent on a copy too."""
        if fresh:
            self.twin = True
            return
        self.log.append("restart")
        self.d.close()
        dl.clear_module_caches()
        self.d.open()

    @rule(
        kind=st.sampled_from(["customer", "customer", "program", "program", "full"]),
        cust=st.sampled_from(sorted(CARDS.values())),
        balance=st.integers(0, 2000),
        exp_in=st.sampled_from([None, 3600, 86400 + 1, 4 * 86400]),
        pend_in=st.sampled_from([None, 600, 86400 * 2]),
        tier=st.sampled_from(["base", "gold"]),
        delay=st.sampled_from([0, 1, 2]),
        lifetime=st.sampled_from([0, 1, 3]),
        pct=st.sampled_from([30, 50, 100]),
        ttl=st.sampled_from([600, 1800]),
        limit=st.sampled_from([0, 400, 100000]),
    )
    def delta(
        self,
        kind: str,
        cust: str,
        balance: int,
        exp_in: int | None,
        pend_in: int | None,
        tier: str,
        delay: int,
        lifetime: int,
        pct: int,
        ttl: int,
        limit: int,
    ) -> None:
        if kind == "customer":
            self.customer_delta(cust, balance, exp_in, pend_in, tier)
        elif kind == "program":
            self.m.program = Program(delay, lifetime, pct, ttl, limit)
            self.snapshot(False, [], True)
        else:
            self.hub_counts_all(balance)

    def customer_delta(
        self, cust: str, balance: int, exp_in: int | None, pend_in: int | None, tier: str
    ) -> None:
        """The hub's balance of a customer moves (a sale at another till): the till's own
        movements the snapshot has not counted still count on top (§3)."""
        now = self.clock[0]
        expiring = [(balance // 2, now + timedelta(seconds=exp_in))] if exp_in else []
        pending = [(30, now + timedelta(seconds=pend_in))] if pend_in else []
        self.m.bases[cust] = Base(balance, expiring, pending)
        self.m.tiers[cust] = tier
        self.snapshot(False, [cust], False)

    def hub_counts_all(self, balance: int) -> None:
        """A full snapshot that has counted every transaction of this till: its figures
        are the hub's, the till's rows below appliedThrough no longer count (§3)."""
        m = self.m
        for cust in sorted(CARDS.values()):
            m.bases[cust] = Base(balance, [], [])
        m.counted_through = m.seq
        m.floor = self.clock[0]
        m.unsure.clear()
        self.snapshot(True, [], True, through=m.seq)


SHORT = settings(
    max_examples=10,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=[Phase.explicit, Phase.generate],  # a failing run is printed, not shrunk (minutes)
    print_blob=False,
)


def test_a_tills_ledger_follows_the_model_across_calls() -> None:
    """docs/CONTRACT.md §5, §6, §11, §16: the model above, a short derandomized run
    (~15 s on one worker)."""
    run_state_machine_as_test(TillLife, settings=SHORT)


@pytest.mark.slow
def test_a_tills_ledger_follows_the_model_across_calls_longer() -> None:
    """The same, longer days (~15 s)."""
    run_state_machine_as_test(
        TillLife,
        settings=settings(SHORT, max_examples=4, stateful_step_count=80),
    )


# ------------------------------------------------------------------------ what the model found

ANNA = "2770000000017"
BREAD = "4601234000024"


def test_a_sale_after_a_refund_in_the_same_minute_answers_the_balance_the_till_has_next(
    cli: CLI,
) -> None:
    """docs/CONTRACT.md §5 step 6 (the result's `balance` is the customer's balance at `at`,
    after this receipt) and §16 (at one time the movements count in the order written):
    a refund whose taken-back points came off the batch that expires on 31.12 (the sale's
    own had expired), then, in the same minute, a sale that earns 20 points expiring the
    next day. The sale's result said 10 expire on 24.11 and all 128 on 31.12: its points
    were put before the refund written before it, which took its 10 from them; the
    `balance` asked a moment later said 20 and 118 (the display warned of the wrong
    figure). Now both say 20 and 118."""
    program = {**PROGRAM, "offlineRedeemLimitPoints": 100000, "pointsLifetimeDays": 1}
    customers = [
        {
            "id": "c-a",
            "firstName": "Анна",
            "tier": "base",
            "balancePoints": 256,
            "expiring": [{"points": 128, "expiresAt": "2026-12-31T23:59:59+03:00"}],
        }
    ]
    assert cli("snapshot", "load", snapshot(program=program, customers=customers)).code == 0
    lines = [{"sku": BREAD, "qty": "3", "priceMinor": 10000}]
    sold = cli(
        "checkout", receipt("r1", ANNA, at="2026-11-20T10:00:00+03:00", lines=lines), "--json"
    )
    assert sold.json()["earnedPoints"] == 9  # 300,00 × 3 %: expire on 21.11 at 10:00
    at = "2026-11-23T10:15:00+03:00"
    back = {"refundId": "f1", "receiptId": "r1", "at": at, "lines": [{"sku": BREAD, "qty": "3"}]}
    refunded = cli("refund", back, "--json").json()
    assert refunded["takenBackPoints"] == 9  # its own batch expired: off the 31.12 one
    assert refunded["balance"]["expiring"] == [
        {"points": 119, "expiresAt": "2026-12-31T23:59:59+03:00"}
    ]
    lines = [{"sku": BREAD, "qty": "7", "priceMinor": 10000}]
    new = cli("checkout", receipt("r2", ANNA, at=at, lines=lines), "--json").json()
    assert new["earnedPoints"] == 21
    after = cli("balance", ANNA, "--at", at, "--json").json()
    assert after == {
        "availablePoints": 268,
        "pendingPoints": 0,
        "expiring": [
            {"points": 21, "expiresAt": "2026-11-24T10:15:00+03:00"},
            {"points": 119, "expiresAt": "2026-12-31T23:59:59+03:00"},
        ],
    }
    assert new["balance"] == after


def test_a_cancel_of_a_hold_that_ran_out_cancels_the_receipt(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11 (Decisions): a POS that gives up on a basket whose hold ran
    out is answered CANCELLED; from then on the receipt is a cancelled one, over HTTP as
    in process: a Hold of its body answers that result, a Checkout is refused."""
    from tillpoint.agent.http_api import HttpServer

    clock = [datetime.fromisoformat("2026-11-23T10:15:00+03:00")]
    agent = Agent(tmp_path / "data", "till-1", clock=lambda: clock[0])
    agent.load_snapshot(snapshot(program={**PROGRAM, "holdTtlSeconds": 600}))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        doors = Doors.__new__(Doors)
        doors.agent, doors.http = agent, server
        body = receipt("r1", ANNA, redeemPoints=40)
        kind, held = doors.call("hold", body, "http")
        assert (kind, held["state"], held["redeemedPoints"]) == ("ok", "HELD", 40)
        clock[0] += timedelta(seconds=601)
        kind, cancelled = doors.call("cancel", {"receiptId": "r1"}, "http")
        assert (kind, cancelled["state"], cancelled["redeemedPoints"]) == ("ok", "CANCELLED", 40)
        assert doors.call("hold", body, "http") == ("ok", cancelled)
        kind, refused = doors.call("checkout", body, "http")
        assert (kind, refused[0]) == ("error", "FAILED_PRECONDITION")
        assert "price it under a new receiptId" in refused[1]
        assert doors.call("balance", {"card": ANNA, "at": body["at"]}, "http") == (
            "ok",
            {"availablePoints": 1200, "pendingPoints": 0},
        )
    finally:
        server.stop()
        agent.close()
