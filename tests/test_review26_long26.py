"""Review 26 (long26): a till's long-lived agent answers like a fresh one.

A POS calls one agent thousands of times a day, through snapshot deltas, hold expiries and
the clock crossing hours and midnights (docs/CONTRACT.md §5, §9, §11, §13, §14, §16). The
differential below drives ONE agent, behind its HTTP and gRPC servers (`HttpServer`,
`build_server`, as `tillpoint run` serves it; a quarter of the calls over gRPC), with its
clock moved by the test, through a seeded random sequence; before each call the data
directory is copied and a FRESH agent on the copy, with the same clock, answers the same
call: the two answers must be equal, every field of them. At one moment, with nothing
between them, a quote must also equal the Hold, Checkout or Confirm made right after it
(§5, §11), and a commit's `balance` the `Balance` at its `at` (§5 step 6).

What it varies that `bench/difflong.py` (review 21) does not: deltas that change a
customer's tier, birthday, favourite weekday, control groups, expiring and pending points,
phone and name, that block, lose, move or remove a card, remove a customer, move a product
to another category or a category under another parent, change the program (tiers, the
birthday multiplier, the TTL, the activation delay, the lifetime), and raise
`appliedThrough`; receipts quoted again under the same receiptId after such a delta, with
their `at` moved, with `explain` and then without; Hold, delta, Confirm; a receiptId
reused after a cancel or an expiry; the codes the till printed scanned back; snapshots
applied by the agent, from a JSON Lines file (a hub pull) or by another process; and the
agent's clock crossing hold TTLs, hours and midnights (deterministic: both agents read the
same moved clock, `holdExpiresAt` included).

`python -m tests.test_review26_long26 SEED STEPS` runs one sequence and prints its counts
and mismatches (`LONG26_TRACE=1`: every call and delta).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from tillpoint.agent.coupons import issued_code
from tillpoint.agent.service import Agent

from bench import difflong as dl

DEVICE = dl.DEVICE
ZONE = dl.ZONE
TTL = 600
START = datetime.fromisoformat("2026-11-23T09:40:00+03:00")


class Clock:
    """The agents' wall clock, moved by the test."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def _program(**changes: Any) -> dict[str, Any]:
    p = copy.deepcopy(dl.PROGRAM)
    p["holdTtlSeconds"] = TTL
    p.update(changes)
    return p


def _first_snapshot() -> dict[str, Any]:
    snap = copy.deepcopy(dl.SNAPSHOT)
    snap["program"] = _program()
    snap["categories"].append({"code": "sweets", "parent": "food", "name": "Сладкое"})
    snap["offers"].append(
        {"id": "m-sweets", "kind": "PERCENT_OFF", "categories": ["sweets"], "value": "20"}
    )
    snap["offers"].append(
        {
            "id": "m-gold",
            "kind": "BONUS_MULTIPLIER",
            "categories": ["dairy"],
            "value": "3",
            "campaignId": "camp-2",
            "validTo": "2026-11-24T00:00:00+03:00",
        }
    )
    return snap


NOT_FIGURES = (
    "printedOffers",
    "display",
    "state",
    "holdExpiresAt",
    "deviceId",
    "seq",
    "fiscalDocument",
)

ANSWERED = (
    "quote",
    "hold",
    "checkout",
    "confirm",
    "cancel",
    "refund",
    "identify",
    "balance",
)


def fresh_answer(
    copy_dir: Path, clock: datetime, call: str, body: Any, via: str = "http"
) -> tuple[str, Any]:
    """The call answered by a new agent on `copy_dir` whose clock reads `clock`."""
    from datetime import datetime as dt

    dl.clear_module_caches()
    agent = Agent(copy_dir, DEVICE, clock=lambda: clock)
    try:
        if call == "status":  # the document `tillpoint status --json` prints
            from tillpoint.agent.wire import status_json

            return "ok", status_json(agent.status())
        if call == "balance" and "at" not in body:
            from tillpoint.agent.errors import TillpointError, edge_of

            try:
                result = agent.balance(body["card"])
                if via == "grpc":
                    from tillpoint.agent import wire

                    return "ok", wire.reply_json(wire.message_of(result))
                return "ok", result.to_json()
            except TillpointError as exc:
                edge = edge_of(exc)
                return "error", (edge.code, edge.message)
        if call == "balance":
            body = {**body, "at": dt.fromisoformat(body["at"]).isoformat()}
        return dl.answer_of(agent, call, body, via)
    finally:
        agent.close()


def jsonl(doc: dict[str, Any]) -> str:
    """The snapshot as JSON Lines (agent/snapshot_stream.py): a header, then sections."""
    from tillpoint.agent.models import ROW_MODELS
    from tillpoint.agent.snapshot_stream import FORMAT

    header = {"format": FORMAT, **{k: v for k, v in doc.items() if k not in ROW_MODELS}}
    lines = [header]
    for section in ROW_MODELS:
        if doc.get(section):
            lines += [{"section": section}, *doc[section]]
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


class Long:
    """The long-lived agent behind its HTTP interface."""

    def __init__(self, data: Path, clock: Clock) -> None:
        from tillpoint.agent.http_api import HttpServer

        self.agent = Agent(data, DEVICE, clock=clock)
        self.server = HttpServer(self.agent, "127.0.0.1:0")
        self.server.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        from tillpoint.agent.client import PosAgentClient
        from tillpoint.agent.server import build_server

        self.grpc_server, port, _ = build_server(self.agent, "127.0.0.1:0")
        self.grpc_server.start()
        # the run's hold timer, its rounds quick (expired holds swept by the moved clock
        # between calls, as much as by the calls themselves)
        from tillpoint.agent.server import start_hold_sweeper

        self.stop_sweeper = start_hold_sweeper(self.agent, every_s=0.05)
        self.grpc = PosAgentClient(f"127.0.0.1:{port}", timeout=30, attempts=1)

    def call(self, call: str, body: Any, via: str = "http") -> tuple[str, Any]:
        if via == "grpc":
            if call == "balance":
                from tillpoint.agent.client import ClientError

                try:
                    return "ok", self.grpc.call("Balance", body)
                except ClientError as exc:
                    return "error", (exc.code.name, exc.message)
            return dl.long_answer(cast(Any, self), call, body, "grpc")  # reads `.grpc` only
        if call == "status":
            self.conn.request("GET", "/v1/status")
        else:
            raw = json.dumps(body, ensure_ascii=False).encode()
            self.conn.request("POST", f"/v1/{call}", raw, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        doc = json.loads(resp.read())
        if resp.status != 200:
            return "error", (doc["error"]["code"], doc["error"]["message"])
        return "ok", doc

    def close(self) -> None:
        self.stop_sweeper()
        self.grpc.close()
        self.grpc_server.stop(0).wait()
        self.conn.close()
        self.server.stop()
        self.agent.close()


class Sequence:
    def __init__(self, seed: int, work: Path) -> None:
        self.rng = random.Random(seed)
        self.work = work
        self.data = work / "data"
        self.clock = Clock(START)
        self.snap = _first_snapshot()
        self.version = 1
        loader = Agent(self.data, DEVICE, clock=self.clock)
        try:
            loader.load_snapshot(self.snap)
        finally:
            loader.close()
        self.long = Long(self.data, self.clock)
        self.bodies: dict[str, dict[str, Any]] = {}  # receiptId -> its last body
        self.held: set[str] = set()
        self.held_at: dict[str, tuple[int, int]] = {}  # receiptId -> (version, moves) at Hold
        self.closed: set[str] = set()  # cancelled or (maybe) expired
        self.committed: dict[str, dict[str, Any]] = {}
        self.n = 0
        self.mismatches: list[str] = []
        self.counts: dict[str, int] = {}
        self.compared = 0

    def close(self) -> None:
        self.long.close()

    # ------------------------------------------------------------ one comparison

    def door(self) -> str:
        return "grpc" if self.rng.random() < 0.25 else "http"

    def compare(self, call: str, body: Any, via: str | None = None) -> tuple[str, Any]:
        copy_dir = self.work / "copy"
        dl.copy_state(self.data, copy_dir)
        via = via or self.door()
        got = self.long.call(call, body, via)
        if os.environ.get("LONG26_TRACE"):
            print(
                "CALL",
                call,
                via,
                json.dumps(body, ensure_ascii=False),
                "->",
                json.dumps(got, ensure_ascii=False)[:600],
            )
        if call not in ("quote", "identify", "balance"):
            self.moves += 1
        want = fresh_answer(copy_dir, self.clock(), call, body, via)
        key = f"{call}/{got[0]}" + (f"/{got[1][0]}" if got[0] == "error" else "")
        self.counts[key] = self.counts.get(key, 0) + 1
        self.compared += 1
        if got[0] == "ok" and isinstance(got[1], dict):
            for c in got[1].get("coupons") or []:
                k = f"coupon/{c['status']}/{c.get('reason') or ''}" + (
                    "/issued" if c["code"].startswith("TP") else ""
                )
                self.counts[k] = self.counts.get(k, 0) + 1
        if got != want:
            self.mismatches.append(
                json.dumps(
                    {
                        "step": self.compared,
                        "call": call,
                        "via": via,
                        "clock": self.clock().isoformat(),
                        "version": self.version,
                        "diff": dl.diff(got, want),
                        "body": body,
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )
        return got

    moves = 0  # calls that changed the ledger, snapshots, clock moves

    def same_figures(self, what: str, a: tuple[str, Any], b: tuple[str, Any]) -> None:
        """Two answers at one moment with nothing between them: the same figures (a quote
        is what the hold or checkout then stores, §5 and §11), when both are answers of
        a receipt priced now (not a stored one)."""
        if a[0] != "ok" or b[0] != "ok":
            return
        if b[1].get("state") not in (None, "HELD", "CONFIRMED") or "seq" in a[1]:
            return
        left = {k: v for k, v in a[1].items() if k not in NOT_FIGURES}
        right = {k: v for k, v in b[1].items() if k not in NOT_FIGURES}
        if left != right:
            self.mismatches.append(
                json.dumps(
                    {
                        "invariant": what,
                        "clock": self.clock().isoformat(),
                        "diff": dl.diff(left, right),
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )

    def balance_after(self, body: dict[str, Any], done: tuple[str, Any], via: str) -> None:
        """§5 step 6: a commit's `balance` is the customer's balance at `at` after the
        receipt; the Balance call at that `at` says the same while no other hold of this
        till reserves points (a result leaves those out, Balance does not) and the card is
        still that customer's."""
        if self.held or done[1].get("balance") is None or via != "http":
            return
        holder = self.compare("identify", {"text": body["card"]}, via)
        if holder[0] != "ok" or holder[1].get("customerId") != done[1]["card"]["customerId"]:
            return  # the card moved to another customer since the Hold (a delta)
        got = self.compare("balance", {"card": body["card"], "at": body["at"]}, via)
        if got[0] != "ok":
            return
        shown = {k: v for k, v in done[1]["balance"].items()}
        if shown != got[1]:
            if os.environ.get("LONG26_TRACE"):
                print("INVARIANT commit then balance", body["receiptId"], shown, got[1])
            self.mismatches.append(
                json.dumps(
                    {
                        "invariant": "commit then balance",
                        "clock": self.clock().isoformat(),
                        "diff": dl.diff(shown, got[1]),
                        "body": body,
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )

    # ------------------------------------------------------------ the receipts

    def at(self) -> str:
        """A receipt's business time: mostly the clock (as a POS stamps it), sometimes
        a little before it, sometimes another day of the fortnight."""
        r, now = self.rng, self.clock().astimezone(ZONE)
        roll = r.random()
        if roll < 0.7:
            return now.isoformat()
        if roll < 0.85:
            return (now - timedelta(minutes=r.choice([1, 30, 90]))).isoformat()
        return dl.now_at(r.randint(0, 12), r.randint(6, 23), r.choice([0, 15, 59]))

    def basket(self, k: int | None = None) -> list[dict[str, Any]]:
        r = self.rng
        picks = r.sample(dl.LINES, k or r.randint(1, 4))
        return [{"sku": s, "qty": r.choice(q), "priceMinor": p} for s, q, p in picks]

    def new_body(self) -> dict[str, Any]:
        r = self.rng
        self.n += 1
        body: dict[str, Any] = {
            "receiptId": f"r-{self.n}",
            "storeId": "s1",
            "tillId": "t1",
            "at": self.at(),
            "card": r.choice(dl.CARDS[:6]) if r.random() < 0.9 else r.choice(dl.CARDS),
            "lines": self.basket(),
            "redeemPoints": r.choice([0, 0, 10, 100, -1]),
        }
        if r.random() < 0.35:  # the hub's codes, and the codes this till printed (§13)
            issued = [issued_code(DEVICE, n) for n in range(1, 4)]
            body["coupons"] = r.sample([f"CPN{i}" for i in range(12)] + ["NOPE", *issued], 1)
        if body["card"] in ("2770000000017", "+79161234567") and r.random() < 0.4:
            # Анна's printed cheese coupons (p-a-cheese issues one at each checkout), used back
            body["coupons"] = [issued_code(DEVICE, r.randint(1, 12))]
            if dl.CHEESE not in {line["sku"] for line in body["lines"]}:
                body["lines"].append({"sku": dl.CHEESE, "qty": "0.3", "priceMinor": 99000})
        if r.random() < 0.25:
            body["explain"] = True
        return body

    def changed(self, body: dict[str, Any]) -> dict[str, Any]:
        """The receipt as the POS sends it again: a line more, `at` moved, explain
        switched, another card, points asked."""
        r = self.rng
        b = copy.deepcopy(body)
        what = r.choice(["line", "at", "explain", "explain", "card", "redeem", "same"])
        if what == "line":
            have = {line["sku"] for line in b["lines"]}
            b["lines"] += [x for x in self.basket(1) if x["sku"] not in have]
        elif what == "at":
            b["at"] = self.at()
        elif what == "explain":
            if b.pop("explain", False) is False:
                b["explain"] = True
        elif what == "card":
            b["card"] = r.choice(dl.CARDS[:6])
        elif what == "redeem":
            b["redeemPoints"] = r.choice([0, 10, 100, -1])
        return b

    def pick(self, pool: Any) -> str:
        return self.rng.choice(sorted(pool))

    # The actions, and how often a random step takes each.
    WEIGHTS: tuple[tuple[str, float], ...] = (
        ("new", 0.20),
        ("again", 0.16),
        ("hold", 0.10),
        ("confirm", 0.10),
        ("cancel", 0.03),
        ("checkout", 0.06),
        ("refund", 0.04),
        ("identify", 0.04),
        ("balance", 0.04),
        ("status", 0.02),
        ("reuse", 0.04),
        ("delta", 0.09),
        ("full", 0.02),
        ("tick", 0.08),
    )

    def step(self) -> None:
        names, weights = zip(*self.WEIGHTS, strict=True)
        self.do(self.rng.choices(names, weights)[0])

    def do(self, action: str) -> None:
        r = self.rng
        if action == "new" or not self.bodies:
            body = self.new_body()
            self.bodies[body["receiptId"]] = body
            self.compare("quote", body)
        elif action == "again":  # the same receiptId quoted again, maybe changed
            rid = self.pick(self.bodies)
            if rid not in self.held and rid not in self.committed:
                self.bodies[rid] = self.changed(self.bodies[rid])
            via = self.door()
            first = self.compare("quote", self.bodies[rid], via)
            if r.random() < 0.5:  # §17: with a trace or without, the same figures
                other = copy.deepcopy(self.bodies[rid])
                if other.pop("explain", False) is False:
                    other["explain"] = True
                second = self.compare("quote", other, via)
                if first[0] == second[0] == "ok":
                    a = {k: v for k, v in first[1].items() if k != "trace"}
                    b = {k: v for k, v in second[1].items() if k != "trace"}
                    if a != b:
                        self.mismatches.append(
                            json.dumps(
                                {"invariant": "explain", "diff": dl.diff(a, b), "body": other},
                                ensure_ascii=False,
                            )
                        )
        elif action == "hold":
            rid = self.pick(self.bodies)
            known = rid in self.held or rid in self.closed or rid in self.committed
            via = self.door()  # one door for answers compared with each other
            quoted = self.compare("quote", self.bodies[rid], via)
            got = self.compare("hold", self.bodies[rid], via)
            if not known:
                self.same_figures("quote then hold", quoted, got)
            if got[0] == "ok" and got[1].get("state") == "HELD":
                self.held.add(rid)
                self.held_at[rid] = (self.version, self.moves)
                again = self.compare("quote", self.bodies[rid], via)
                if not known:  # a hold retried answers what it stored, before any delta
                    self.same_figures("hold then quote", got, again)
        elif action == "confirm" and self.held:
            rid = self.pick(self.held)
            untouched = self.held_at.get(rid) == (self.version, self.moves)
            via = self.door()
            quoted = self.compare("quote", self.bodies[rid], via)
            got = self.compare("confirm", {"receiptId": rid}, via)
            if untouched:  # nothing happened since the Hold: its quote is what it commits
                self.same_figures("quote then confirm", quoted, got)
            self.held.discard(rid)
            if got[0] == "ok":
                self.committed[rid] = self.bodies[rid]
                self.balance_after(self.bodies[rid], got, via)
        elif action == "cancel" and (self.held or self.closed):
            rid = self.pick(self.held | self.closed)
            self.compare("cancel", {"receiptId": rid})
            self.held.discard(rid)
            self.closed.add(rid)
        elif action == "checkout":
            rid = self.pick(self.bodies)
            known = rid in self.held or rid in self.closed or rid in self.committed
            via = self.door()
            quoted = self.compare("quote", self.bodies[rid], via)
            got = self.compare("checkout", self.bodies[rid], via)
            if not known:  # priced now, not a hold's figures confirmed
                self.same_figures("quote then checkout", quoted, got)
            if got[0] == "ok" and got[1].get("state") == "CONFIRMED":
                self.committed[rid] = self.bodies[rid]
                self.held.discard(rid)  # a Checkout of a held receipt confirms it
                if not known:  # committed now, not a stored answer
                    self.balance_after(self.bodies[rid], got, via)
        elif action == "refund" and self.committed:
            rid = self.pick(self.committed)
            pick = r.choice(self.committed[rid]["lines"])
            qty = pick["qty"] if r.random() < 0.5 else ("1" if "." not in pick["qty"] else "0.1")
            self.compare(
                "refund",
                {
                    "refundId": f"f-{rid}-{r.randint(0, 2)}",
                    "receiptId": rid,
                    "at": self.at(),
                    "lines": [{"sku": pick["sku"], "qty": qty}],
                },
            )
        elif action == "status":  # cache version, last seq, outbox (§9, §10)
            self.compare("status", {}, "http")
        elif action == "identify":
            self.compare("identify", {"text": r.choice(dl.CARDS)})
        elif action == "balance":
            body = {"card": r.choice(dl.CARDS[:6])}
            if r.random() < 0.5:
                body["at"] = self.at()
            self.compare("balance", body)
        elif action == "reuse" and self.closed:  # a receiptId reused after a cancel or expiry
            rid = self.pick(self.closed)
            body = self.bodies[rid] if r.random() < 0.6 else self.changed(self.bodies[rid])
            got = self.compare(r.choice(["hold", "checkout", "quote"]), body)
            if got[0] == "ok" and got[1].get("state") == "CONFIRMED":
                self.committed[rid] = body
                self.closed.discard(rid)
            if got[0] == "ok" and got[1].get("state") == "HELD":
                self.held.add(rid)
                self.held_at[rid] = (self.version, self.moves)
                self.closed.discard(rid)
        elif action == "delta":
            self.delta()
        elif action == "full":
            self.full()
        elif action == "tick":
            self.tick()
        else:  # nothing to do it to yet: a quote
            self.do("new")

    # ------------------------------------------------------------ time

    def tick(self) -> None:
        """The clock moves: seconds, past a hold's TTL, to the next hour, past midnight."""
        r, now = self.rng, self.clock().astimezone(ZONE)
        what = r.choice(["seconds", "ttl", "hour", "midnight", "days"])
        if what == "seconds":
            nxt = now + timedelta(seconds=r.randint(1, 120))
        elif what == "ttl":
            nxt = now + timedelta(seconds=TTL + r.choice([-1, 0, 1, 30]))
        elif what == "hour":
            nxt = now.replace(minute=0, second=0, microsecond=0) + timedelta(
                hours=1, seconds=r.choice([-1, 0, 1])
            )
        elif what == "midnight":
            nxt = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
                days=1, seconds=r.choice([-1, 0, 1])
            )
        else:
            nxt = now + timedelta(days=r.randint(1, 3))
        self.clock.t = nxt
        self.moves += 1
        if nxt - now >= timedelta(seconds=TTL):
            self.closed |= self.held  # expired or not: the next calls tell
            self.held = set()

    # ------------------------------------------------------------ snapshots

    def load(self, doc: dict[str, Any]) -> None:
        """A delta or full snapshot: applied by the long-lived agent (its sync pull) or
        by another process (`tillpoint snapshot load`: another Agent on the directory)."""
        roll = self.rng.random()
        if roll < 0.35:
            self.long.agent.load_snapshot(doc)
        elif roll < 0.65:  # as a hub's pull applies it: JSON Lines from a file
            path = self.work / f"snap-{doc['version']}.jsonl"
            path.write_text(jsonl(doc), encoding="utf-8")
            self.long.agent.load_snapshot_file(path)
        else:
            other = Agent(self.data, DEVICE, clock=self.clock)
            try:
                other.load_snapshot(doc)
            finally:
                other.close()
        self.version = doc["version"]
        self.counts["snapshots"] = self.counts.get("snapshots", 0) + 1

    def customer(self) -> dict[str, Any]:
        r = self.rng
        c = copy.deepcopy(r.choice(self.snap["customers"]))
        what = r.sample(
            [
                "tier",
                "birthday",
                "fav",
                "groups",
                "expiring",
                "pending",
                "balance",
                "phone",
                "name",
            ],
            r.randint(1, 3),
        )
        now = self.clock().astimezone(ZONE)
        if "tier" in what:
            c["tier"] = r.choice(["base", "silver", "gold", "platinum"])
        if "birthday" in what:
            d = now + timedelta(days=r.randint(-2, 9))
            c["birthday"] = f"19{r.randint(60, 99)}-{d.month:02d}-{d.day:02d}"
        if "fav" in what:
            c["favoriteWeekday"] = r.choice([now.isoweekday(), (now.isoweekday() % 7) + 1])
        if "groups" in what:
            c["controlGroups"] = r.sample(["camp-1", "camp-2", "camp-3"], r.randint(0, 2))
        if "expiring" in what:
            c["expiring"] = [
                {
                    "points": r.randint(10, 400),
                    "expiresAt": (now + timedelta(hours=r.randint(-2, 30))).isoformat(),
                }
            ]
        if "pending" in what:
            c["pending"] = [
                {
                    "points": r.randint(10, 90),
                    "activatesAt": (now + timedelta(hours=r.randint(-2, 30))).isoformat(),
                }
            ]
        if "balance" in what:
            c["balancePoints"] = r.randint(0, 3000)
        if "phone" in what:
            c["phone"] = r.choice(["+79161234567", "+79035550001", "+79990001122"])
        if "name" in what:
            c["firstName"] = r.choice(["Анна", "Оля", "Пётр"])
        c["balancePoints"] = max(
            c.get("balancePoints", 0), sum(e["points"] for e in c.get("expiring", []))
        )
        return c

    def delta(self) -> None:
        r = self.rng
        v = self.version + 1
        doc: dict[str, Any] = {
            "version": v,
            "baseVersion": self.version,
            "issuedAt": f"2026-11-23T03:{v % 60:02d}:{v // 60:02d}Z",
        }
        what = r.choice(
            [
                "customer",
                "customer",
                "customer",
                "card",
                "card",
                "remove",
                "product",
                "category",
                "program",
                "coupon",
                "offer",
                "applied",
            ]
        )
        if what == "customer":
            doc["customers"] = [self.customer()]
        elif what == "card":
            number = r.choice([c["number"] for c in self.snap["cards"]])
            doc["cards"] = [
                {
                    "number": number,
                    "customerId": r.choice(["c-a", "c-b", "c-c", "c-d"]),
                    "status": r.choice(["ACTIVE"] * 4 + ["BLOCKED", "LOST"]),
                }
            ]
        elif what == "remove":
            kind = r.choice(["cards", "customers", "coupons", "offers", "products"])
            key = {
                "cards": ["2770000000017", "2770000000024", "2770000000055"],
                "customers": ["c-a", "c-b", "c-d"],
                "coupons": ["CPN0", "CPN1", "CPN3", "CPN6"],
                "offers": ["m-dairy", "p-a-cheese", "m-fav", "m-cpn", "m-gold"],
                "products": [dl.MILK, dl.CHEESE, dl.BUN],
            }[kind]
            doc["removed"] = {kind: [r.choice(key)]}
        elif what == "product":
            sku = r.choice([dl.MILK, dl.BREAD, dl.CHEESE, dl.KEFIR, dl.BUN, dl.GHOST, dl.CIG])
            doc["products"] = [
                {
                    "sku": sku,
                    "name": "X",
                    "category": r.choice(["dairy", "bakery", "sweets", "tobacco"]),
                    "excludedFromLoyalty": r.random() < 0.2,
                }
            ]
        elif what == "category":
            code = r.choice(["dairy", "bakery", "sweets"])
            doc["categories"] = [
                {"code": code, "parent": r.choice(["food", "tobacco", None]), "name": code}
            ]
            if doc["categories"][0]["parent"] is None:
                del doc["categories"][0]["parent"]
        elif what == "program":
            doc["program"] = _program(
                maxRedeemPercent=r.choice([10, 30, 50]),
                offlineRedeemLimitPoints=r.choice([50, 500]),
                pointsLifetimeDays=r.choice([0, 3, 5]),
                activationDelayDays=r.choice([0, 1]),
                birthdayMultiplier=r.choice([2, 5]),
                birthdayWindowDays=r.choice([0, 7]),
                holdTtlSeconds=r.choice([60, TTL]),
                timezone=r.choice(["Europe/Moscow", "Europe/Moscow", "Asia/Yekaterinburg"]),
                tiers=r.choice(
                    [
                        dl.PROGRAM["tiers"],
                        [
                            {"code": "base", "accrualPercent": "4"},
                            {"code": "gold", "accrualPercent": "9"},
                        ],
                    ]
                ),
            )
        elif what == "coupon":
            doc["coupons"] = [
                {
                    "code": f"CPN{r.randint(0, 13)}",
                    "offerId": r.choice(["m-cpn", "m-bread"]),
                    **({"customerId": r.choice(["c-a", "c-b"])} if r.random() < 0.4 else {}),
                }
            ]
        elif what == "offer":
            o = copy.deepcopy(r.choice(self.snap["offers"]))
            now = self.clock().astimezone(ZONE)
            edge = now + timedelta(seconds=r.choice([-1, 0, 1, 60]))
            if r.random() < 0.5:
                o["validTo"] = edge.isoformat()
                o.pop("validFrom", None)
            else:
                o["validFrom"] = edge.isoformat()
                o.pop("validTo", None)
            if r.random() < 0.3:
                o["hours"] = [{"from": f"{now.hour:02d}:00", "to": f"{now.hour + 1:02d}:00"}]
            doc["offers"] = [o]
        else:
            doc["appliedThrough"] = {DEVICE: r.randint(0, 8), "till-9": 3}
        if os.environ.get("LONG26_TRACE"):
            print("DELTA", json.dumps(doc, ensure_ascii=False))
        self.load(doc)
        self.counts[f"delta/{what}"] = self.counts.get(f"delta/{what}", 0) + 1

    def full(self) -> None:
        v = self.version + 1
        doc = copy.deepcopy(self.snap)
        doc["version"] = v
        doc["issuedAt"] = f"2026-11-23T04:{v % 60:02d}:{v // 60:02d}Z"
        doc["customers"] = [
            self.customer() if self.rng.random() < 0.5 else c for c in doc["customers"]
        ]
        doc["customers"] = list({c["id"]: c for c in doc["customers"]}.values())
        doc["appliedThrough"] = {DEVICE: self.rng.randint(0, 5)}
        self.load(doc)


def run(seed: int, steps: int, work: Path) -> Sequence:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    seq = Sequence(seed, work)
    try:
        for _ in range(steps):
            seq.step()
    finally:
        seq.close()
    return seq


def _differential(tmp_path: Path, seed: int, steps: int) -> None:
    seq = run(seed, steps, tmp_path / "work")
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert seq.compared > steps // 2, seq.counts


# The brief's combinations in a row (the random choices within each step are seeded):
# quotes of one receiptId around a customer delta; Hold, delta, Confirm; a receipt
# priced with `explain` and without; a card blocked, then identified; holds run past
# their TTL and their receiptIds reused; the clock over an hour and a midnight.
SCRIPT = tuple(
    " ".join(
        [
            "new again delta again hold again delta confirm identify balance",
            "new hold cancel reuse again tick hold tick reuse confirm checkout refund delta",
            "again identify balance tick again hold delta delta confirm full again balance",
        ]
    ).split(" ")
)


@pytest.mark.parametrize("seed", [1, pytest.param(7, marks=pytest.mark.slow)])
def test_a_long_lived_till_answers_as_a_fresh_one_through_a_days_script(
    tmp_path: Path, seed: int
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    seq = Sequence(seed, work)
    try:
        for action in SCRIPT:
            seq.do(action)
    finally:
        seq.close()
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert seq.compared >= 30, seq.counts


@pytest.mark.parametrize("seed", [26, pytest.param(2026, marks=pytest.mark.slow)])
def test_a_long_lived_till_answers_as_a_fresh_one_through_deltas_and_time(
    tmp_path: Path, seed: int
) -> None:
    """docs/CONTRACT.md §5, §9, §11, §13, §14, §16: two short seeded sequences."""
    _differential(tmp_path, seed, 40)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 130))
def test_a_long_lived_till_answers_as_a_fresh_one_many_seeds(tmp_path: Path, seed: int) -> None:
    _differential(tmp_path, seed, 150)


if __name__ == "__main__":  # python -m tests.test_review26_long26 SEED STEPS
    import sys

    t0 = time.monotonic()
    s = run(int(sys.argv[1]), int(sys.argv[2]), Path("/tmp") / f"long26-{sys.argv[1]}")
    print(f"{s.compared} compared, {len(s.mismatches)} mismatches, {time.monotonic() - t0:.1f} s")
    print(json.dumps(s.counts, sort_keys=True))
    for m in s.mismatches[:10]:
        print("MISMATCH", m)
