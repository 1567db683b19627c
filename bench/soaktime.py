"""Differential soak of a long-lived `tillpoint run` while TIME MOVES (review 22).

`bench/difflong.py` compares one `tillpoint run` with a fresh `Agent` call by call, the
receipts' `at` scattered over two weeks while the till's clock stands at today. Here the
till's wall clock moves forward with the receipts, as at a real till left running for
weeks: the process is `bench/clocked_run.py` (the `tillpoint` command line, `run`, with
the agent's clock the real one plus an offset read from a file the harness rewrites;
libfaketime cannot do it for a Python till, see there); its monotonic timers run as
ever. Each call's receipt is stamped at the till's clock, which walks
through boundaries: an offer's hours opening and closing, midnight and the weekday, the
favourite weekday, a night window, a birthday window, expiring batches, pending points
activating, a coupon's and an offer's validity ending, a hold's TTL passing while the
till is idle (the run's sweeper expiring it), a snapshot applied while a receipt is
held (confirmed after), a year's end and a 29 February birthday (a delta), both
daylight-saving changes in the program's time zone (a full snapshot moves the program
to Europe/Berlin), a restart after holds expired while the till was down, an NTP step
back, and codes the till issued scanned again. Each answer is compared with a FRESH
`Agent` on a copy of the data directory whose clock is the same fake clock; the clock
moves while they answer, so two answers that differ with a time of the ledger between
their moments (a batch activating or expiring, a hold expiring) are counted apart, not
compared (`crossed`, review 46).

`python -m bench.soaktime WORKDIR [CALLS [SEED]]` (CALLS at each moment) prints the
counts per boundary and per call, the refusals seen and the mismatches (exit 1 when
there is one). Each hold's `holdExpiresAt` is also checked against the moved clock.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench import difflong as dl

MOSCOW = ZoneInfo("Europe/Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
TTL = 1800

NIGHT = {
    "id": "m-night",
    "kind": "PERCENT_OFF",
    "skus": [dl.BREAD],
    "value": "20",
    "weekdays": [5],
    "hours": [{"from": "22:00", "to": "02:00"}],
}
ENDING = {
    "id": "m-ending",
    "kind": "AMOUNT_OFF",
    "skus": [dl.KEFIR],
    "value": "900",
    "validTo": "2026-11-27T23:59:59+03:00",
}


NEW_YEAR_CUSTOMERS: list[dict[str, Any]] = [
    {
        "id": "c-e",
        "firstName": "Ева",
        "tier": "silver",
        "birthday": "1990-01-03",
        "balancePoints": 900,
        "expiring": [{"points": 400, "expiresAt": "2026-12-31T23:59:59+03:00"}],
        "favoriteWeekday": 5,
    },
    {
        "id": "c-f",
        "firstName": "Фёдор",
        "tier": "gold",
        "birthday": "1992-02-29",
        "balancePoints": 300,
        "pending": [{"points": 50, "activatesAt": "2027-01-01T00:00:00+03:00"}],
    },
]


def first_snapshot() -> dict[str, Any]:
    snap = copy.deepcopy(dl.SNAPSHOT)
    snap["program"] = {**snap["program"], "holdTtlSeconds": TTL}
    snap["offers"] = [*snap["offers"], NIGHT, ENDING]
    snap["issuedAt"] = "2026-11-23T04:00:00Z"
    return snap


class Clock:
    """The fake wall clock shared by the long-lived process (through the file) and the
    fresh agents (through `now`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.moment: datetime | None = None
        self.set(datetime(2026, 11, 23, 4, 0, tzinfo=UTC))

    def set(self, moment: datetime, *, back: bool = False) -> None:
        """Move the clock to `moment`: forward, or, with `back`, an NTP step back."""
        if self.moment is not None and moment < self.moment and not back:
            raise AssertionError(f"the clock only moves forward ({self.moment} to {moment})")
        self.moment = moment
        offset = round((moment - datetime.now(UTC)).total_seconds())
        self.offset = offset
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset}\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)


class Soak:
    def __init__(self, work: Path, seed: int) -> None:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        self.work, self.data = work, work / "data"
        self.rng = random.Random(seed)
        self.clock = Clock(work / "faketime")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        self.snapshot = first_snapshot()
        self.load(self.snapshot)
        self.ll = self.start()
        self.label = "start"
        self.zone = MOSCOW
        self.ttl = TTL
        self.cards = list(dl.CARDS[:7])  # the cards receipts and balances pick from
        self.by_call: dict[str, int] = {}  # "call/ok" or "call/ERROR_CODE" -> count
        self.errors: set[str] = set()  # the refusals seen (kinds, for the report)
        self.issued_scanned = 0  # receipts that carried a code the till issued
        self.swept = 0  # idle holds the run's own sweeper expired (with `idle_wait`)
        self.clock_checked = 0  # holds whose holdExpiresAt was checked against the clock
        # answers that differed with a time of the ledger between them (`crossed`)
        self.straddled = 0
        self.counts: dict[str, int] = {}
        self.mismatches: list[str] = []
        self.n = 0
        self.held: dict[str, dict[str, Any]] = {}
        self.committed: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ plumbing
    def load(self, doc: dict[str, Any]) -> None:
        path = self.work / f"snap-{doc['version']}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        done = subprocess.run(
            [dl.EXE, "--data-dir", str(self.data), "snapshot", "load", str(path)],
            capture_output=True,
            text=True,
            env={**self.env, "TILLPOINT_DEVICE_ID": dl.DEVICE},
        )
        if done.returncode != 0:
            raise RuntimeError(f"snapshot load {doc['version']}: {done.stderr}")

    @staticmethod
    def _plain(make: Callable[[], Any], via: str) -> tuple[str, Any]:
        from tillpoint.agent import wire
        from tillpoint.agent.errors import TillpointError, edge_of

        try:
            result = make()
        except TillpointError as exc:
            edge = edge_of(exc)
            return "error", (edge.code, edge.message)
        if via == "grpc":
            return "ok", wire.reply_json(wire.message_of(result))
        return "ok", result.to_json()

    def long(self, call: str, body: Any, via: str) -> tuple[str, Any]:
        if call == "balance" and via == "grpc":
            from tillpoint.agent.client import ClientError

            try:
                return "ok", self.ll.grpc.call("Balance", body)
            except ClientError as exc:
                return "error", (exc.code.name, exc.message)
        return dl.long_answer(self.ll, call, body, via)

    def compare(self, call: str, body: Any) -> tuple[str, Any]:
        via = "grpc" if self.rng.random() < 0.25 else "http"
        # the copy first: the fresh agent answers on the state the long one answered on
        copy_dir = self.work / "copy"
        before = self.clock.now()
        dl.copy_state(self.data, copy_dir)
        got = self.long(call, body, via)
        want = self.fresh_on_copy(call, body, via)
        after = self.clock.now()
        key = f"{self.label}"
        self.counts[key] = self.counts.get(key, 0) + 1
        outcome = f"{call}/{got[0] if got[0] == 'ok' else got[1][0]}"
        self.by_call[outcome] = self.by_call.get(outcome, 0) + 1
        if got[0] == "error":
            self.errors.add(f"{call}: {got[1][0]} {got[1][1][:90]}")
        if call == "hold" and got[0] == "ok" and got[1].get("state") == "HELD":
            # the long-lived till's clock is the harness's: its hold runs out TTL from now
            expires = datetime.fromisoformat(got[1]["holdExpiresAt"])
            off = (expires - self.clock.now()).total_seconds() - self.ttl
            self.clock_checked += 1
            if abs(off) > 5:
                self.mismatches.append(f"holdExpiresAt {expires} is {off:.0f} s off the clock")
        if dl.normal(got) != dl.normal(want) and crossed(copy_dir, before, after):
            # The two answers were made at two moments of the moving clock, with a time of
            # the ledger between them (a batch activating or expiring, a hold expiring):
            # not comparable (review 46: a balance at 00:00:01, a batch earned at 00:00:01
            # the day before activating between the till's answer and the fresh one's).
            self.straddled += 1
        elif dl.normal(got) != dl.normal(want):
            self.mismatches.append(
                json.dumps(
                    {
                        "at": self.label,
                        "clock": self.clock.now().isoformat(),
                        "call": call,
                        "via": via,
                        "diff": dl.diff(dl.normal(got), dl.normal(want)),
                        "body": body,
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )
        return got

    def fresh_on_copy(self, call: str, body: Any, via: str) -> tuple[str, Any]:
        from tillpoint.agent.service import Agent

        dl.clear_module_caches()
        agent = Agent(self.work / "copy", dl.DEVICE, clock=self.clock.now)
        try:
            if call == "balance" and "at" not in body:
                return self._plain(lambda: agent.balance(body["card"]), via)
            return dl.answer_of(agent, call, body, via)
        finally:
            agent.close()

    # ------------------------------------------------------------------ calls
    def at(self) -> str:
        return self.clock.now().astimezone(self.zone).isoformat(timespec="seconds")

    def receipt(self, card: str | None = None, lines: int | None = None) -> dict[str, Any]:
        r = self.rng
        self.n += 1
        body: dict[str, Any] = {
            "receiptId": f"s-{self.n}",
            "storeId": "s1",
            "tillId": "t1",
            "at": self.at(),
            "card": card or r.choice(self.cards),
            "lines": self.basket(lines),
            "redeemPoints": r.choice([0, 10, 100, -1, -1]),
        }
        if r.random() < 0.35:
            body["coupons"] = r.sample([f"CPN{i}" for i in range(12)], r.randint(1, 2))
        if r.random() < 0.3 and (issued := self.issued_codes()):
            # a code this till printed on an earlier receipt (§13: usable here at once)
            body["coupons"] = [*body.get("coupons", []), r.choice(issued)]
            self.issued_scanned += 1
        if r.random() < 0.2:
            body["explain"] = True
        return body

    def basket(self, k: int | None = None) -> list[dict[str, Any]]:
        r = self.rng
        picks = r.sample(dl.LINES[:6], k or r.randint(1, 4))
        return [{"sku": s, "qty": r.choice(q), "priceMinor": p} for s, q, p in picks]

    def round(self, calls: int = 6) -> None:
        """A few calls at the clock's moment: quotes, a checkout, a hold and its confirm,
        balances with and without `at`, an identify."""
        r = self.rng
        for _ in range(calls):
            pick = r.random()
            if pick < 0.3:
                self.compare("quote", self.receipt())
            elif pick < 0.45:
                body = self.receipt()
                got = self.compare("checkout", body)
                if got[0] == "ok":
                    self.committed.append(body)
            elif pick < 0.6:
                body = self.receipt()
                got = self.compare("hold", body)
                if got[0] == "ok":
                    self.held[body["receiptId"]] = body
            elif pick < 0.7 and self.held:
                rid = r.choice(sorted(self.held))
                got = self.compare("confirm", {"receiptId": rid, "fiscalDocument": f"F{rid}"})
                if got[0] == "ok":
                    self.committed.append(self.held[rid])
                self.held.pop(rid, None)
            elif pick < 0.75 and self.held:
                rid = r.choice(sorted(self.held))
                self.compare("cancel", {"receiptId": rid})
                self.held.pop(rid, None)
            elif pick < 0.8 and self.committed:
                self.refund(r.choice(self.committed))
            elif pick < 0.87:
                self.compare("balance", {"card": r.choice(self.cards)})
            elif pick < 0.93:
                self.compare("balance", {"card": r.choice(self.cards), "at": self.at()})
            else:
                self.compare("identify", {"text": r.choice(dl.CARDS)})

    def issued_codes(self) -> list[str]:
        """The codes the long-lived till has issued so far (read from its ledger)."""
        conn = sqlite3.connect(f"file:{self.data / 'ledger.db'}?mode=ro", uri=True)
        try:
            return [str(c) for (c,) in conn.execute("SELECT code FROM issued_coupons ORDER BY 1")]
        finally:
            conn.close()

    def states(self, receipt_ids: list[str]) -> list[str]:
        """The long-lived till's `receipt_life` states of these receipts, read from its ledger."""
        conn = sqlite3.connect(f"file:{self.data / 'ledger.db'}?mode=ro", uri=True)
        try:
            return [
                str(row[0])
                for rid in receipt_ids
                for row in conn.execute(
                    "SELECT state FROM receipt_life WHERE receipt_id = ?", (rid,)
                )
            ]
        finally:
            conn.close()

    def refund(self, sale: dict[str, Any]) -> None:
        """A return of a sale made earlier (its points activated or expired since, maybe):
        one unit of a line, or the whole receipt."""
        r = self.rng
        self.n += 1
        if r.random() < 0.4:
            lines = [{"sku": ln["sku"], "qty": ln["qty"]} for ln in sale["lines"]]
        else:
            line = r.choice(sale["lines"])
            qty = "1" if "." not in line["qty"] else line["qty"]
            lines = [{"sku": line["sku"], "qty": qty}]
        body = {
            "refundId": f"f-{self.n}",
            "receiptId": sale["receiptId"],
            "at": self.at(),
            "lines": lines,
        }
        self.compare("refund", body)

    def at_moments(self, label: str, moments: list[datetime], calls: int = 6) -> None:
        self.label = label
        for moment in moments:
            self.clock.set(moment)
            self.round(calls)

    def start(self) -> dl.LongLived:
        clocked = [sys.executable, "-m", "bench.clocked_run", str(self.clock.path)]
        return dl.LongLived(self.work, self.data, command=clocked)

    def restart(self) -> None:
        self.ll.stop()
        (self.data / "serving.json").unlink(missing_ok=True)
        self.ll = self.start()

    def stop(self) -> None:
        self.ll.stop()


def crossed(data: Path, start: datetime, end: datetime) -> bool:
    """Whether a time the ledger of `data` keeps (a batch of points activating or
    expiring, an open hold expiring) falls between `start` and `end`, a second either
    side: two answers made at either end may differ by it."""
    conn = sqlite3.connect(data / "ledger.db")
    try:
        rows = conn.execute(
            "SELECT activates_at FROM points UNION SELECT expires_at FROM points"
            " UNION SELECT expires_at FROM receipt_life WHERE state = 'HELD'"
        ).fetchall()
    finally:
        conn.close()
    times = [datetime.fromisoformat(str(t).replace("Z", "+00:00")) for (t,) in rows if t]
    return dl.expiry_within(times, start, end)


def local(zone: ZoneInfo, text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def around(zone: ZoneInfo, text: str, *seconds: int) -> list[datetime]:
    base = local(zone, text)
    return [base + timedelta(seconds=s) for s in seconds]


def run(work: Path, seed: int = 22, calls: int = 6, *, idle_wait: bool = True) -> Soak:
    s = Soak(work, seed)
    try:
        m = MOSCOW
        s.at_moments("morning-window-opens", around(m, "2026-11-23T08:00:00", -70, -5, 2), calls)
        s.at_moments("morning-window-closes", around(m, "2026-11-23T11:00:00", -5, 2), calls)
        # holds left while the till is idle past their TTL: the run's sweeper expires them
        # (with `idle_wait`; else the next call sweeps); Confirm refused, the same Hold
        # again (a POS retrying) priced and held afresh, a Checkout of it confirmed
        s.label = "hold-ttl-idle"
        s.clock.set(local(m, "2026-11-23T12:00:00"))
        idle = []
        past = local(m, "2026-11-23T12:30:01")
        for card in (dl.CARDS[0], dl.CARDS[1], dl.CARDS[3]):
            body = s.receipt(card=card, lines=2)
            body["redeemPoints"] = -1
            body.pop("coupons", None)
            got = s.compare("hold", body)
            if got[0] == "ok":
                idle.append(body)
                # past every one of them (review 46: the third Hold, made seconds after
                # 12:00 on a loaded machine, was still open at 12:30:01 and expired
                # between the long-lived till's answer and the fresh one's); the clock
                # file holds whole seconds, hence 2 s
                if got[1].get("holdExpiresAt"):
                    ends = datetime.fromisoformat(got[1]["holdExpiresAt"])
                    past = max(past, ends + timedelta(seconds=2))
        s.clock.set(past)
        if idle_wait:
            time.sleep(16)  # the sweeper's round (15 s)
            s.swept = s.states([b["receiptId"] for b in idle]).count("EXPIRED")
        s.round(calls)
        for i, body in enumerate(idle):
            s.held.pop(body["receiptId"], None)
            s.compare("confirm", {"receiptId": body["receiptId"]})
            s.compare("hold" if i % 2 else "checkout", body)
        s.round(calls)
        s.at_moments("midnight-mon-tue", around(m, "2026-11-24T00:00:00", -30, 1), calls)
        # a hold of the day's offline limit just before midnight, confirmed after it; the
        # next day's receipts have their own limit
        s.label = "hold-across-midnight"
        s.clock.set(local(m, "2026-11-24T23:59:50"))
        late = []
        for card in (dl.CARDS[0], dl.CARDS[3]):
            body = s.receipt(card=card, lines=3)
            body["redeemPoints"] = -1
            if s.compare("hold", body)[0] == "ok":
                late.append(body)
        s.clock.set(local(m, "2026-11-25T00:00:05"))
        for body in late:
            s.compare("quote", {**body, "receiptId": body["receiptId"] + "-q", "at": s.at()})
            s.compare("confirm", {"receiptId": body["receiptId"]})
        s.round(calls)
        s.at_moments("fav-weekday-wed", around(m, "2026-11-25T00:00:10", 5), calls)
        s.at_moments("batch-expiry", around(m, "2026-11-26T12:00:00", -3, 3), calls)
        s.at_moments("offer-window-ends", around(m, "2026-11-26T23:59:59", -2, 3), calls)
        s.at_moments("coupon-ends", around(m, "2026-11-27T00:00:00", 4), calls)
        s.at_moments("night-fri-sat", around(m, "2026-11-27T22:00:00", 5), calls)
        s.at_moments("offer-validto", around(m, "2026-11-27T23:59:59", -1, 2), calls)
        s.at_moments("night-after-midnight", around(m, "2026-11-28T01:59:00", 0, 65), calls)
        s.at_moments("birthday-end", around(m, "2026-11-28T23:59:59", -2, 2), calls)
        s.at_moments("weekend-monday", around(m, "2026-11-30T00:00:00", -1, 1), calls)
        s.at_moments("expiring-dec-2", around(m, "2026-12-02T00:00:00", -1, 1), calls)
        # a snapshot applied while a receipt is held, its confirm after
        s.label = "snapshot-while-held"
        s.clock.set(local(m, "2026-12-02T10:00:00"))
        held = []
        for card in dl.CARDS[:2]:
            body = s.receipt(card=card, lines=3)
            body["redeemPoints"] = -1
            if s.compare("hold", body)[0] == "ok":
                held.append(body)
        doc = copy.deepcopy(s.snapshot)
        doc.update(version=2, baseVersion=0, issuedAt="2026-12-02T07:00:00Z")
        doc["program"] = {**doc["program"], "pointValueMinor": 50, "holdTtlSeconds": 600}
        doc["offers"] = [o for o in doc["offers"] if o["id"] != "m-dairy"]
        for c in doc["customers"]:
            c["balancePoints"] = c.get("balancePoints", 0) + 7
        s.load(doc)
        s.snapshot = doc
        s.ttl = 600
        for body in held:
            s.compare("quote", {**body, "receiptId": body["receiptId"]})
            s.compare("confirm", {"receiptId": body["receiptId"], "fiscalDocument": "F"})
        s.round(calls)
        # new customers whose birthday windows cross the new year and a 29 February, a
        # batch expiring at the year's last second, then the clock walks through them
        s.label = "year-end-delta"
        doc = {
            "version": 3,
            "baseVersion": 2,
            "issuedAt": "2026-12-20T07:00:00Z",
            "customers": NEW_YEAR_CUSTOMERS,
            "cards": [
                {"number": "2770000000079", "customerId": "c-e", "status": "ACTIVE"},
                {"number": "2770000000086", "customerId": "c-f", "status": "ACTIVE"},
            ],
        }
        s.clock.set(local(m, "2026-12-20T10:00:00"))
        s.load(doc)
        s.snapshot["customers"] = [*s.snapshot["customers"], *NEW_YEAR_CUSTOMERS]
        s.snapshot["cards"] = [*s.snapshot["cards"], *doc["cards"]]
        s.snapshot["version"] = 3
        s.cards = [*s.cards, "2770000000079", "2770000000086", "2770000000079"]
        s.round(calls)
        s.at_moments("birthday-window-new-year", around(m, "2026-12-27T00:00:00", -1, 1), calls)
        s.at_moments("year-end", around(m, "2026-12-31T23:59:59", -1, 0, 2), calls)
        s.at_moments("birthday-jan-3-ends", around(m, "2027-01-03T23:59:59", 0, 2), calls)
        s.at_moments("birthday-29-feb-window", around(m, "2027-02-21T00:00:00", -1, 1), calls)
        s.at_moments("birthday-29-feb-on-28", around(m, "2027-02-28T23:59:59", 0, 2), calls)
        # the program moves to a zone with daylight saving, the clock to its spring change
        s.label = "dst-spring"
        doc = copy.deepcopy(s.snapshot)
        doc.update(version=4, baseVersion=0, issuedAt="2027-03-27T06:00:00Z")
        doc["program"] = {**doc["program"], "timezone": "Europe/Berlin", "holdTtlSeconds": TTL}
        doc["offers"] = [
            {**o, "validFrom": None, "validTo": None} if "validTo" in o else o
            for o in doc["offers"]
        ]
        for o in doc["offers"]:
            for k in ("validFrom", "validTo"):
                if o.get(k) is None:
                    o.pop(k, None)
        doc["offers"].append(
            {
                "id": "m-fold",
                "kind": "PERCENT_OFF",
                "skus": [dl.CHEESE],
                "value": "35",
                "hours": [{"from": "02:00", "to": "03:00"}],
            }
        )
        doc["customers"][0]["expiring"] = [
            {"points": 100, "expiresAt": "2027-03-28T02:30:00+01:00"},
            {"points": 100, "expiresAt": "2027-03-28T12:00:00+02:00"},
        ]
        doc["customers"][0]["pending"] = [
            {"points": 30, "activatesAt": "2027-03-28T03:00:00+02:00"}
        ]
        s.clock.set(local(BERLIN, "2027-03-27T10:00:00"))
        s.load(doc)
        s.snapshot = doc
        s.zone, s.ttl = BERLIN, TTL
        s.round(calls)  # receipts whose points activate a day later, across the change
        s.at_moments(
            "dst-spring",
            [
                datetime(2027, 3, 28, 0, 59, 50, tzinfo=UTC),  # 01:59:50 CET
                datetime(2027, 3, 28, 1, 0, 5, tzinfo=UTC),  # 03:00:05 CEST
                datetime(2027, 3, 28, 10, 0, 30, tzinfo=UTC),  # 12:00:30 CEST
            ],
            calls,
        )
        s.at_moments("dst-next-day", around(BERLIN, "2027-03-28T10:00:00", 86_400 - 3590), calls)
        # the autumn change: 02:00-03:00 twice (an offer's hours inside it), receipts of the
        # day before whose points activate a day later in the repeated hour
        s.at_moments(
            "dst-autumn",
            [
                datetime(2027, 10, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST, the day before
                datetime(2027, 10, 31, 0, 29, 50, tzinfo=UTC),  # 02:29:50 CEST
                datetime(2027, 10, 31, 0, 59, 55, tzinfo=UTC),  # 02:59:55 CEST
                datetime(2027, 10, 31, 1, 0, 5, tzinfo=UTC),  # 02:00:05 CET
                datetime(2027, 10, 31, 1, 30, 1, tzinfo=UTC),  # 02:30:01 CET
                datetime(2027, 10, 31, 2, 0, 1, tzinfo=UTC),  # 03:00:01 CET
            ],
            calls,
        )
        # the till switched off over lunch with receipts held: they expired while it was
        # down, and the run started again sweeps them at once
        s.label = "restart-after-downtime"
        down = []
        for card in (dl.CARDS[0], dl.CARDS[3]):
            body = s.receipt(card=card, lines=2)
            body["redeemPoints"] = -1
            if s.compare("hold", body)[0] == "ok":
                down.append(body)
        s.ll.stop()
        s.clock.set(s.clock.now() + timedelta(minutes=45))
        s.restart()
        if idle_wait:
            time.sleep(1)
            s.swept += s.states([b["receiptId"] for b in down]).count("EXPIRED")
        s.round(calls)
        for body in down:
            s.held.pop(body["receiptId"], None)
            s.compare("confirm", {"receiptId": body["receiptId"]})
        # an NTP step back of two hours while holds are open, then forward again past them
        s.label = "clock-step-back"
        s.round(calls)
        s.clock.set(s.clock.now() - timedelta(hours=2), back=True)
        s.round(calls)
        s.clock.set(s.clock.now() + timedelta(hours=2, minutes=31))
        s.round(calls)
    finally:
        s.stop()
    return s


def main(work: Path, calls: int, seed: int = 22) -> int:
    t0 = time.monotonic()
    s = run(work, seed=seed, calls=calls)
    total = sum(s.counts.values())
    print(
        f"{total} calls compared, {len(s.mismatches)} mismatches,"
        f" {s.clock_checked} holds' expiry checked against the clock,"
        f" {s.swept} idle holds expired by the run's sweeper,"
        f" {s.issued_scanned} receipts with a till-issued code,"
        f" {s.straddled} unalike across a time of the ledger (not compared),"
        f" {time.monotonic() - t0:.1f} s"
    )
    print(json.dumps(s.counts, indent=1))
    print(json.dumps(s.by_call, sort_keys=True))
    for e in sorted(s.errors):
        print("REFUSED", e)
    for m in s.mismatches[:20]:
        print("MISMATCH", m)
    return 1 if s.mismatches else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    calls = int(args[1]) if len(args) > 1 else 6
    sys.exit(main(Path(args[0]), calls, int(args[2]) if len(args) > 2 else 22))
