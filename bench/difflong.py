"""Differential test of the state a long-running agent keeps across calls (review 21).

One `tillpoint run` (a process, on a data directory of its own) gets a long random
sequence of calls over HTTP, and a quarter of them over gRPC (`tillpoint.client`):
identify, quotes of growing baskets under one receiptId (and then another basket under
the same receiptId), hold, confirm, cancel, checkout, refunds (partial and whole),
coupons, redemption, `explain`, balances at times across offer windows (weekdays, hours,
validity), expiring point batches, holds left to expire (the program's TTL is 3 s), and
deltas and full snapshots applied by another process (`tillpoint snapshot load`), also
while two clients quote at once (`burst`). Before each call the data directory is
copied (SQLite's backup API: a consistent copy), and a FRESH `Agent` on the copy (the
module-level caches of this process cleared) answers the same call: the two answers
must be equal.

Left out of the comparison, and why:
- `holdExpiresAt`: the agent's clock at the call plus the TTL; the two answers are made
  milliseconds apart by two clocks;
- a call within a second of some hold's expiry (a hold that expires between the two
  answers changes the balance and the Confirm): counted as skipped; the holds' expiries
  are read from the copy's ledger too (`held_expiries`), from the copy to the fresh
  answer: a hold the sequence made by a retry, or the fresh answer late on a loaded
  machine, is seen (review 46: a burst's 16 fresh answers, made after its quotes, met an
  open hold of the customer the long-lived agent had counted expire between them);
- the wording of INVALID_ARGUMENT over gRPC: the client's proto mapping refuses a body
  that is no `Receipt` (an unknown field, `redeemPoints: "abc"`) before sending it, and
  proto3 reads `"qty": ""` as no qty; the code is still compared.

`python -m bench.difflong SEED STEPS WORKDIR` runs one sequence and prints the
mismatches; `bench/difflong_hub.py` runs the till enrolled with a hub process (the
shipped sync settings), the hub publishing mid-run and killed for an outage;
`bench/outage_probe.py` measures what recovers how fast after an outage.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

EXE = str(Path(sys.executable).with_name("tillpoint"))
DEVICE = "till-1"

PROGRAM: dict[str, Any] = {
    "currency": "RUB",
    "timezone": "Europe/Moscow",
    "pointValueMinor": 100,
    "maxRedeemPercent": 30,
    "activationDelayDays": 1,
    "offlineRedeemLimitPoints": 500,
    "birthdayMultiplier": 5,
    "birthdayWindowDays": 7,
    "maxOffersPrinted": 3,
    "offerPrintCooldownDays": 7,
    "holdTtlSeconds": 3,
    "pointsLifetimeDays": 5,
    "tiers": [
        {"code": "base", "accrualPercent": "3"},
        {"code": "silver", "accrualPercent": "5"},
        {"code": "gold", "accrualPercent": "7.5"},
    ],
}

MILK, BREAD, CIG, CHEESE, KEFIR, BUN, GHOST = (
    "4601234000017",
    "4601234000024",
    "4601234000031",
    "4601234000055",
    "4601234000062",
    "4601234000079",
    "4601234000086",  # not in the first snapshot; a delta adds it
)

OFFERS: list[dict[str, Any]] = [
    {"id": "m-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "10"},
    {"id": "m-bread", "kind": "AMOUNT_OFF", "skus": [BREAD], "value": "500"},
    {
        "id": "m-x2",
        "kind": "BONUS_MULTIPLIER",
        "categories": ["food"],
        "value": "2",
        "weekdays": [6, 7],
    },
    {
        "id": "m-morning",
        "kind": "PERCENT_OFF",
        "skus": [MILK],
        "value": "25",
        "hours": [{"from": "08:00", "to": "11:00"}],
    },
    {"id": "m-extra", "kind": "EXTRA_POINTS", "value": "25", "minTotalMinor": 10000},
    {
        "id": "m-qp",
        "kind": "QUANTITY_PRICE",
        "skus": [KEFIR],
        "tiers": [{"minQty": "2", "unitPriceMinor": 6000}, {"minQty": "4", "unitPriceMinor": 5000}],
    },
    {"id": "m-mb", "kind": "MULTIBUY", "categories": ["bakery"], "buyQty": "2", "freeQty": "1"},
    {
        "id": "m-fav",
        "kind": "PERCENT_OFF",
        "skus": [CHEESE],
        "value": "15",
        "onFavoriteWeekday": True,
    },
    {
        "id": "m-window",
        "kind": "PERCENT_OFF",
        "categories": ["food"],
        "value": "12",
        "validFrom": "2026-11-25T00:00:00+03:00",
        "validTo": "2026-11-26T23:59:59+03:00",
    },
    {"id": "m-cpn", "kind": "AMOUNT_OFF", "skus": [MILK], "value": "3000", "couponRequired": True},
    {"id": "m-cg", "kind": "PERCENT_OFF", "skus": [BUN], "value": "40", "campaignId": "camp-1"},
    {
        "id": "p-a-cheese",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": [CHEESE],
        "value": "30",
        "printable": True,
        "printText": "-30% сыр",
        "issueCoupon": True,
        "rank": 1,
    },
    {
        "id": "p-a-next",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": [BREAD],
        "value": "5",
        "printable": True,
        "printText": "-5% хлеб",
        "rank": 2,
        "validFrom": "2026-11-27T00:00:00+03:00",
        "validTo": "2026-12-10T00:00:00+03:00",
    },
    {
        "id": "p-b-receipt",
        "customerId": "c-b",
        "kind": "RECEIPT_PERCENT_OFF",
        "value": "5",
        "minTotalMinor": 5000,
    },
    {
        "id": "p-d-print",
        "customerId": "c-d",
        "kind": "AMOUNT_OFF",
        "skus": [KEFIR],
        "value": "700",
        "printable": True,
        "printText": "kefir",
        "campaignId": "camp-1",
    },
]

SNAPSHOT: dict[str, Any] = {
    "version": 1,
    "baseVersion": 0,
    "issuedAt": "2026-11-23T03:00:00Z",
    "program": PROGRAM,
    "categories": [
        {"code": "food", "name": "Продукты"},
        {"code": "dairy", "parent": "food", "name": "Молочные"},
        {"code": "bakery", "parent": "food", "name": "Хлеб"},
        {"code": "tobacco", "name": "Табак"},
    ],
    "products": [
        {"sku": MILK, "name": "Молоко", "category": "dairy"},
        {"sku": BREAD, "name": "Хлеб", "category": "bakery"},
        {"sku": CIG, "name": "Сигареты", "category": "tobacco", "excludedFromLoyalty": True},
        {"sku": CHEESE, "name": "Сыр", "category": "dairy"},
        {"sku": KEFIR, "name": "Кефир", "category": "dairy"},
        {"sku": BUN, "name": "Булка", "category": "bakery"},
    ],
    "customers": [
        {
            "id": "c-a",
            "firstName": "Анна",
            "tier": "gold",
            "birthday": "1990-11-28",
            "phone": "+79161234567",
            "balancePoints": 1200,
            "segment": "ACTIVE",
            "favoriteWeekday": 3,
            "expiring": [
                {"points": 300, "expiresAt": "2026-11-26T12:00:00+03:00"},
                {"points": 200, "expiresAt": "2026-12-02T00:00:00+03:00"},
            ],
            "pending": [{"points": 40, "activatesAt": "2026-11-25T00:00:00+03:00"}],
        },
        {
            "id": "c-b",
            "firstName": "Борис",
            "tier": "base",
            "birthday": "1985-03-10",
            "phone": "+79035550001",
            "balancePoints": 80,
            "segment": "NEW",
        },
        {"id": "c-c", "firstName": "Вера", "tier": "silver", "balancePoints": 500},
        {
            "id": "c-d",
            "firstName": "Дина",
            "tier": "silver",
            "balancePoints": 2000,
            "controlGroups": ["camp-1"],
            "favoriteWeekday": 5,
            "expiring": [{"points": 1500, "expiresAt": "2026-11-24T00:00:00+03:00"}],
        },
    ],
    "cards": [
        {"number": "2770000000017", "customerId": "c-a", "status": "ACTIVE"},
        {"number": "2770000000024", "customerId": "c-b", "status": "ACTIVE"},
        {"number": "2770000000031", "customerId": "c-c", "status": "BLOCKED"},
        {"number": "2770000000055", "customerId": "c-d", "status": "ACTIVE"},
        {"number": "2770000000062", "customerId": "c-c", "status": "ACTIVE"},
    ],
    "offers": OFFERS,
    "coupons": [
        {
            "code": f"CPN{i}",
            "offerId": "m-cpn",
            **({"customerId": "c-a"} if i % 3 == 0 else {}),
            **({"validFrom": "2026-11-24T00:00:00+03:00"} if i % 4 == 1 else {}),
            **({"validTo": "2026-11-27T00:00:00+03:00"} if i % 5 == 2 else {}),
        }
        for i in range(12)
    ],
}

CARDS = [
    "2770000000017",
    "2770000000024",
    "2770000000031",
    "2770000000055",
    "2770000000062",
    "+79161234567",
    "8 903 555-00-01",
    "2770000000048",
    "12345678",
    "2770000000018",
    "abc",
]
LINES = [
    (MILK, ["1", "2", "3"], 8990),
    (BREAD, ["1", "2", "3"], 6500),
    (CIG, ["1"], 25000),
    (CHEESE, ["0.512", "0.3", "1.105"], 99000),
    (KEFIR, ["1", "2", "4", "5"], 7500),
    (BUN, ["1", "2", "3"], 3000),
    (GHOST, ["1"], 1000),
    ("9999999999999", ["3"], 1000),
]


def perturb(r: random.Random, body: dict[str, Any]) -> None:
    """Spellings that mean the same receipt (or a clear refusal): HTTP's fast path and
    gRPC's proto path must read them as `receipt_from_json` does."""
    what = r.choice(
        ["card", "qty", "price", "at", "coupon", "amount", "explain", "redeem", "unknown", "bad"]
    )
    line = r.choice(body["lines"])
    if what == "card":
        c = body["card"]
        body["card"] = r.choice(
            [f" {c} ", c[:4] + "-" + c[4:], c[:3] + "\u2013" + c[3:], c[:5] + "\t" + c[5:]]
        )
    elif what == "qty":
        line["qty"] = r.choice(
            [
                line["qty"] + ".0" if "." not in line["qty"] else line["qty"] + "0",
                "0" + line["qty"],
                line["qty"] + "00" if "." in line["qty"] else line["qty"],
            ]
        )
    elif what == "price":
        line["priceMinor"] = str(line["priceMinor"])
    elif what == "at":
        dt = datetime.fromisoformat(body["at"])
        body["at"] = dt.astimezone(__import__("datetime").UTC).isoformat().replace("+00:00", "Z")
    elif what == "coupon":
        body["coupons"] = [r.choice(["cpn 1", "CPN-2", " cpn3 ", "Cpn\u20144", "CPN5", "CPN5"])]
    elif what == "amount":
        line["amountMinor"] = r.choice([line["priceMinor"], 12345, 0])
    elif what == "explain":
        body["explain"] = False
    elif what == "redeem":
        body["redeemPoints"] = r.choice(["50", -2, 10**19, "abc"])
    elif what == "unknown":
        body["extraField"] = 1
    else:
        line["qty"] = r.choice(["0", "-1", "1.2345", "", "1e3", " 1", "NaN"])


ZONE = __import__("zoneinfo").ZoneInfo("Europe/Moscow")


def now_at(day: int, hour: int, minute: int = 0) -> str:
    base = datetime.fromisoformat("2026-11-22T00:00:00+03:00")
    return (base + timedelta(days=day, hours=hour, minutes=minute)).isoformat()


# ---------------------------------------------------------------- copies and fresh agents


def _copy_if_there(src: str, dst: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.copy2(src, dst)


def held_expiries(data: Path) -> list[datetime]:
    """When the holds open in a data directory's ledger expire (its wall clock)."""
    conn = sqlite3.connect(data / "ledger.db")
    try:
        rows = conn.execute("SELECT expires_at FROM receipt_life WHERE state = 'HELD'").fetchall()
    finally:
        conn.close()
    return [datetime.fromisoformat(str(at).replace("Z", "+00:00")) for (at,) in rows]


def expiry_within(expiries: list[datetime], start: datetime, end: datetime) -> bool:
    """Whether one of `expiries` falls between `start` and `end`, a second either side: an
    answer made before it and another after it may differ (the balance, the Confirm)."""
    margin = timedelta(seconds=1)
    return any(start - margin <= at <= end + margin for at in expiries)


def copy_state(src: Path, dst: Path) -> None:
    """A consistent copy of a data directory the long-lived agent is not writing now."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        name = entry.name
        if name.endswith(("-wal", "-shm", "-journal")) or name == "serving.json":
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst / name)
        elif entry.is_dir():
            # a file the agent's sync loop removes meanwhile (`sync/pull.json` at a pull's
            # end, right after a restart) was not part of the state by then: a copy of
            # `run`'s data failed on it (review 39's CI, long39's short walk)
            shutil.copytree(entry, dst / name, symlinks=True, copy_function=_copy_if_there)
        elif name.endswith(".db"):
            s = sqlite3.connect(f"file:{entry}?mode=ro", uri=True)
            d = sqlite3.connect(dst / name)
            try:
                s.backup(d)
            finally:
                d.close()
                s.close()
        else:
            shutil.copy2(entry, dst / name)
        with contextlib.suppress(NotImplementedError, OSError):
            os.chmod(dst / name, entry.stat().st_mode & 0o777, follow_symlinks=False)


# The agent's module-level caches (functools' lru_cache/cache wrappers), found by a walk
# of every object of this process once per set of loaded tillpoint.agent modules: the
# walk took 25 ms a call in a bare process and ~150 ms in a test worker that collected
# the whole suite (a fresh answer each call: 14 s of a 30-step run).
_CACHES: list[Any] = []
_CACHES_OF: frozenset[str] = frozenset()


def grpc_client(port: int) -> Any:
    """The comparison's gRPC client of `run` on `port`: one attempt a call (each answer
    compared as given), 10 s each, and 10 s for `run`'s HTTP/2 handshake on a new
    connection (the shipped client gives it the call's `timeout`; until review 41 it gave
    it 100 ms, and on a loaded machine `run`'s first SETTINGS frame came later: "timed out
    before receiving SETTINGS frame", UNAVAILABLE at once; this client then set its own
    window: review 40, flake40b)."""
    from tillpoint.agent.client import PosAgentClient

    return PosAgentClient(f"127.0.0.1:{port}", timeout=10, attempts=1)


def clear_module_caches() -> None:
    """What a new process would not have: the module-level caches of the harness process
    (the agent's are all made when their module is imported: decorators at module level)."""
    global _CACHES_OF
    import functools
    import gc

    from tillpoint.agent import money

    money.frac.cache_clear()
    loaded = frozenset(name for name in sys.modules if name.startswith("tillpoint.agent"))
    if loaded != _CACHES_OF:
        _CACHES[:] = [
            obj
            for obj in gc.get_objects()
            if isinstance(obj, functools._lru_cache_wrapper)
            and getattr(obj, "__module__", "").startswith("tillpoint.agent")
        ]
        _CACHES_OF = loaded
    for cache in _CACHES:
        cache.cache_clear()


# ---------------------------------------------------------------- the long-lived agent


class LongLived:
    # how long `run` may take to write serving.json: a condition waited for, so generous
    # (review 46: soak22's restart of `bench.clocked_run` beside load ~46 on two cores
    # wrote nothing in 30 s and the soak ended there)
    START_S = 120.0

    def __init__(
        self, work: Path, data: Path, extra_config: str = "", command: list[str] | None = None
    ) -> None:
        from bench.faults import free_port

        self.work, self.data = work, data
        self.grpc_port = free_port()
        self.cfg = work / "till.toml"
        self.cfg.write_text(self.config(extra_config), encoding="utf-8")
        self.log = work / "run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*(command or [EXE]), "--config", str(self.cfg), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + self.START_S
        serving = data / "serving.json"
        while not serving.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                how = (
                    f"exited {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else (f"not serving after {self.START_S:.0f} s")
                )
                if self.proc.poll() is None:  # not left running past the harness
                    self.proc.kill()
                    self.proc.wait(30)
                raise RuntimeError(f"run did not start ({how}): " + self.log.read_text()[-2000:])
            time.sleep(0.05)
        time.sleep(0.1)
        info = json.loads(serving.read_text())
        self.http_port = int(info["port"])
        self.instance = info.get("instance") or info.get("instanceId")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=40)
        self.grpc = grpc_client(self.grpc_port)

    def config(self, extra_config: str) -> str:
        """The till's settings file: its identity, its data, gRPC on `grpc_port`, HTTP on a
        port of its choosing, no metrics."""
        return (
            f'device_id = "{DEVICE}"\n'
            f'data_dir = "{self.data}"\n'
            f"{extra_config}"
            "[server]\n"
            f'listen = "127.0.0.1:{self.grpc_port}"\n'
            "[metrics]\nenabled = false\n"
            '[http]\nlisten = "127.0.0.1:0"\n'
        )

    def http(self, path: str, body: Any) -> tuple[str, Any]:
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            self.conn.request("POST", path, raw, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=40)
            self.conn.request("POST", path, raw, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
        doc = json.loads(resp.read())
        if resp.status != 200:
            return "error", (doc["error"]["code"], doc["error"]["message"])
        return "ok", doc

    def stop(self) -> None:
        self.grpc.close()
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- the fresh side


def fresh_answer(copy_dir: Path, call: str, body: Any, via: str) -> tuple[str, Any]:
    from tillpoint.agent.service import Agent

    clear_module_caches()
    agent = Agent(copy_dir, DEVICE)
    try:
        return answer_of(agent, call, body, via)
    finally:
        agent.close()


def answer_of(agent: Any, call: str, body: Any, via: str) -> tuple[str, Any]:
    """One call on `agent` as the long-lived agent's interface answers it: ("ok", its
    JSON as `via` gives it) or ("error", (code, message)). The hub variant's too."""
    from tillpoint.agent import wire
    from tillpoint.agent.errors import TillpointError, edge_of
    from tillpoint.agent.results import receipt_from_json, refund_from_json

    try:
        if call in ("quote", "hold", "checkout"):
            result: Any = getattr(agent, call)(receipt_from_json(body))
        elif call == "confirm":
            result = agent.confirm(body["receiptId"], body.get("fiscalDocument"))
        elif call == "cancel":
            result = agent.cancel(body["receiptId"])
        elif call == "refund":
            result = agent.refund(refund_from_json(body))
        elif call == "identify":
            result = agent.identify(body["text"])
        elif call == "balance":
            result = agent.balance(body["card"], datetime.fromisoformat(body["at"]))
        else:
            raise AssertionError(call)
    except TillpointError as exc:
        edge = edge_of(exc)
        return "error", (edge.code, edge.message)
    if via == "grpc":
        return "ok", wire.reply_json(wire.message_of(result))
    return "ok", result.to_json()


def long_answer(ll: LongLived, call: str, body: Any, via: str) -> tuple[str, Any]:
    from tillpoint.agent.client import ClientError

    if via == "http":
        return ll.http(f"/v1/{call}", body)
    try:
        if call in ("quote", "hold", "checkout", "refund"):
            return "ok", getattr(ll.grpc, call)(body)
        if call == "confirm":
            return "ok", ll.grpc.confirm(body["receiptId"], body.get("fiscalDocument") or "")
        if call == "cancel":
            return "ok", ll.grpc.cancel(body["receiptId"])
        if call == "identify":
            return "ok", ll.grpc.identify(body["text"])
        if call == "balance":
            return "ok", ll.grpc.call("Balance", body)
    except ClientError as exc:
        return "error", (exc.code.name, exc.message)
    raise AssertionError(call)


IGNORED = ("holdExpiresAt",)


def _grpc_quote(g: Any, body: Any) -> tuple[str, Any]:
    from tillpoint.agent.client import ClientError

    try:
        return "ok", g.quote(body)
    except ClientError as exc:
        return "error", (exc.code.name, exc.message)


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += diff(x, y, f"{path}[{i}]")
        return out
    return (
        []
        if a == b
        else [
            f"{path}: long={json.dumps(a, ensure_ascii=False)}"
            f" fresh={json.dumps(b, ensure_ascii=False)}"
        ]
    )


def normal(answer: tuple[str, Any]) -> tuple[str, Any]:
    kind, doc = answer
    if kind == "ok" and isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in IGNORED}
    return kind, doc


# ---------------------------------------------------------------- the sequence


class Sequence:
    def __init__(self, rng: random.Random, work: Path, data: Path, ll: LongLived) -> None:
        self.rng, self.work, self.data, self.ll = rng, work, data, ll
        self.version = 1
        self.open: dict[str, list[dict[str, Any]]] = {}  # receiptId -> lines of its basket
        self.held: dict[str, float] = {}  # receiptId -> monotonic time of the hold
        self.bodies: dict[str, dict[str, Any]] = {}
        self.committed: dict[str, dict[str, Any]] = {}
        self.n = 0
        self.day = 1
        self.calls = 0
        self.compared = 0
        self.skipped = 0
        self.mismatches: list[str] = []
        self.counts: dict[str, int] = {}
        self.snapshot = copy.deepcopy(SNAPSHOT)
        self.now_only = False

    def new_id(self) -> str:
        self.n += 1
        return f"r-{self.n}"

    def at(self) -> str:
        """A receipt's business time: a random day and hour of two weeks (offer windows,
        birthdays, batches expiring), or, with `now_only`, the moment of the call (as a
        POS sends it: what the till and the hub can agree on at the end)."""
        r = self.rng
        if self.now_only:
            return datetime.now(ZONE).isoformat()
        if r.random() < 0.1:
            self.day = r.randint(0, 12)
        return now_at(self.day, r.randint(6, 23), r.choice([0, 15, 59]))

    def basket(self, k: int | None = None) -> list[dict[str, Any]]:
        r = self.rng
        picks = r.sample(LINES, k or r.randint(1, 4))
        return [{"sku": s, "qty": r.choice(q), "priceMinor": p} for s, q, p in picks]

    def receipt(
        self, rid: str, lines: list[dict[str, Any]], at: str | None = None
    ) -> dict[str, Any]:
        r = self.rng
        body: dict[str, Any] = {
            "receiptId": rid,
            "storeId": "s1",
            "tillId": "t1",
            "at": at or self.at(),
            "card": r.choice(CARDS[:6]) if r.random() < 0.85 else r.choice(CARDS),
            "lines": lines,
            "redeemPoints": r.choice([0, 0, 10, 100, -1]),
        }
        if r.random() < 0.3:
            body["coupons"] = r.sample(
                [f"CPN{i}" for i in range(12)] + ["NOPE", "cpn1"], r.randint(1, 2)
            )
        if r.random() < 0.2:
            body["explain"] = True
        if r.random() < 0.3:
            perturb(r, body)
        return body

    # one comparison
    def compare(self, call: str, body: Any, via: str | None = None) -> tuple[str, Any]:
        via = via or ("grpc" if self.rng.random() < 0.25 else "http")
        copy_dir = self.work / "copy"
        wall0 = datetime.now(UTC)
        copy_state(self.data, copy_dir)
        expiries = held_expiries(copy_dir)
        t0 = time.monotonic()
        got = long_answer(self.ll, call, body, via)
        want = fresh_answer(copy_dir, call, body, via)
        self.calls += 1
        self.counts[f"{call}/{via}/{got[0]}"] = self.counts.get(f"{call}/{via}/{got[0]}", 0) + 1
        # a hold crossing its TTL between the two answers: not comparable
        rid = body.get("receiptId") if isinstance(body, dict) else None
        if rid in self.held and call in (
            "confirm",
            "hold",
            "checkout",
            "quote",
            "balance",
            "cancel",
        ):
            expires = self.held[rid] + PROGRAM_TTL
            if abs(t0 - expires) < 1.0 or abs(time.monotonic() - expires) < 1.0:
                self.skipped += 1
                return got
        if any(abs(t0 - (h + PROGRAM_TTL)) < 1.0 for h in self.held.values()):
            # another receipt's hold expiring between the answers changes the balance
            self.skipped += 1
            return got
        if expiry_within(expiries, wall0, datetime.now(UTC)):
            self.skipped += 1  # as read from the ledger (a retry's hold; a slow answer)
            return got
        if (
            via == "grpc"
            and got[0] == want[0] == "error"
            and got[1][0] == want[1][0] == "INVALID_ARGUMENT"
        ):
            self.compared += 1  # the client's proto mapping words its own refusals
            return got
        if normal(got) != normal(want):
            self.mismatches.append(
                json.dumps(
                    {
                        "call": call,
                        "via": via,
                        "diff": diff(normal(got), normal(want)),
                        "body": body,
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )
        else:
            self.compared += 1
        return got

    def step(self) -> None:
        r = self.rng
        roll = r.random()
        if roll < 0.25 or not self.open:  # a new receipt: quote it
            rid = self.new_id()
            lines = self.basket(1)
            self.open[rid] = lines
            body = self.receipt(rid, lines)
            self.bodies[rid] = body
            self.compare("quote", body)
        elif roll < 0.45:  # grow the basket of an open receipt, quote again
            rid = r.choice(list(self.open))
            body = copy.deepcopy(self.bodies[rid])
            have = {line["sku"] for line in body["lines"]}
            more = [x for x in self.basket(2) if x["sku"] not in have]
            body["lines"] = body["lines"] + more
            if r.random() < 0.15:  # a different basket under the same receiptId
                body["lines"] = self.basket()
            self.bodies[rid] = body
            self.open[rid] = body["lines"]
            self.compare("quote", body)
        elif roll < 0.55:
            rid = r.choice(list(self.open))
            got = self.compare("hold", self.bodies[rid])
            if got[0] == "ok" and got[1].get("state") == "HELD":
                self.held.setdefault(rid, time.monotonic())
        elif roll < 0.62 and self.held:
            rid = r.choice(list(self.held))
            body = {"receiptId": rid}
            if r.random() < 0.3:
                body["fiscalDocument"] = f"FD-{rid}"
            got = self.compare("confirm", body)
            if got[0] == "ok":
                self.committed[rid] = self.bodies[rid]
                self.open.pop(rid, None)
                self.held.pop(rid, None)
        elif roll < 0.66 and self.held:
            rid = r.choice(list(self.held))
            self.compare("cancel", {"receiptId": rid})
            self.held.pop(rid, None)
            self.open.pop(rid, None)
        elif roll < 0.74:
            rid = r.choice(list(self.open))
            got = self.compare("checkout", self.bodies[rid])
            if got[0] == "ok":
                self.committed[rid] = self.bodies[rid]
                self.open.pop(rid, None)
        elif roll < 0.8 and self.committed:
            rid = r.choice(list(self.committed))
            lines = self.committed[rid]["lines"]
            pick = r.choice(lines)
            qty = pick["qty"] if r.random() < 0.5 else ("1" if "." not in pick["qty"] else "0.1")
            self.compare(
                "refund",
                {
                    "refundId": f"f-{rid}-{r.randint(0, 3)}",
                    "receiptId": rid,
                    "at": self.at(),
                    "lines": [{"sku": pick["sku"], "qty": qty}],
                },
            )
        elif roll < 0.86:
            self.compare("identify", {"text": r.choice(CARDS)})
        elif roll < 0.92:
            self.compare("balance", {"card": r.choice(CARDS[:6]), "at": self.at()})
        elif roll < 0.95:
            rid = r.choice(list(self.bodies))  # a retry of an old receipt (idempotency)
            self.compare(r.choice(["quote", "checkout", "hold"]), self.bodies[rid])
        elif roll < 0.96:
            self.burst()
        elif roll < 0.985:
            self.delta()
        else:
            self.full()
        # occasionally let holds expire
        if r.random() < 0.03:
            time.sleep(PROGRAM_TTL + 0.3)
            for rid in list(self.held):
                self.held.pop(rid)

    def burst(self) -> None:
        """Quotes from several clients at once while another process applies a delta:
        each answer is the fresh agent's before the delta or after it."""
        import threading

        bodies = []
        for _ in range(8):
            rid = (
                self.rng.choice(list(self.bodies))
                if self.bodies and self.rng.random() < 0.5
                else self.new_id()
            )
            b = copy.deepcopy(self.bodies.get(rid) or self.receipt(rid, self.basket()))
            b["receiptId"] = rid
            bodies.append(b)
        before = self.work / "copy-before"
        wall0 = datetime.now(UTC)
        copy_state(self.data, before)
        expiries = held_expiries(before)
        v = self.version + 1
        doc = {
            "version": v,
            "baseVersion": self.version,
            "issuedAt": f"2026-11-23T05:{v % 60:02d}:00Z",
            "offers": [
                o
                for o in (self.mutate_offer(),)
                if o["id"] != "m-dairy"  # one row a key in a snapshot
            ]
            + [
                {
                    "id": "m-dairy",
                    "kind": "PERCENT_OFF",
                    "categories": ["dairy"],
                    "value": str(self.rng.choice([7, 11, 13])),
                },
            ],
        }
        path = self.work / f"snap-{v}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        after = self.work / "copy-after"
        copy_state(before, after)
        from tillpoint.agent.service import Agent

        a = Agent(after, DEVICE)
        try:
            a.load_snapshot(doc)
        finally:
            a.close()
        results: list[tuple[dict[str, Any], str, tuple[str, Any]]] = []

        def client(k: int) -> None:
            via = "grpc" if k % 2 else "http"
            ll = self.ll
            conn = http.client.HTTPConnection("127.0.0.1", ll.http_port, timeout=40)
            g = grpc_client(ll.grpc_port)
            try:
                for b in bodies[k::2] + bodies[k::2]:
                    if via == "http":
                        conn.request(
                            "POST",
                            "/v1/quote",
                            json.dumps(b).encode(),
                            {"Content-Type": "application/json"},
                        )
                        resp = conn.getresponse()
                        doc = json.loads(resp.read())
                        ans = (
                            ("ok", doc)
                            if resp.status == 200
                            else ("error", (doc["error"]["code"], doc["error"]["message"]))
                        )
                    else:
                        ans = long_answer(ll, "quote", b, "grpc") if False else _grpc_quote(g, b)
                    results.append((b, via, ans))
            finally:
                conn.close()
                g.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        time.sleep(self.rng.uniform(0, 0.05))
        self.load(doc)
        for t in threads:
            t.join()
        self.version = v
        fresh = [
            (fresh_answer(before, "quote", b, via), fresh_answer(after, "quote", b, via))
            for b, via, _ in results
        ]
        if expiry_within(expiries, wall0, datetime.now(UTC)):
            # a hold open at the quotes expired before the fresh answers: not comparable
            self.skipped += len(results)
            self.counts["burst quotes"] = self.counts.get("burst quotes", 0) + len(results)
            return
        for (b, via, ans), (wa, wb) in zip(results, fresh, strict=True):
            worded = via == "grpc" and ans[0] == "error" and ans[1][0] == "INVALID_ARGUMENT"
            if normal(ans) in (normal(wa), normal(wb)) or worded:
                self.compared += 1
            else:
                self.mismatches.append(
                    json.dumps(
                        {
                            "call": "burst-quote",
                            "via": via,
                            "diff-before": diff(normal(ans), normal(wa)),
                            "diff-after": diff(normal(ans), normal(wb)),
                            "body": b,
                        },
                        ensure_ascii=False,
                        default=str,
                    )
                )
        self.counts["burst quotes"] = self.counts.get("burst quotes", 0) + len(results)

    # snapshots applied by another process (`tillpoint snapshot load`), as a hub pull would
    def load(self, doc: dict[str, Any]) -> None:
        path = self.work / f"snap-{doc['version']}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        done = subprocess.run(
            [EXE, "--data-dir", str(self.data), "snapshot", "load", str(path)],
            capture_output=True,
            text=True,
            env={**env, "TILLPOINT_DEVICE_ID": DEVICE},
        )
        if done.returncode != 0:
            raise RuntimeError(f"snapshot load {doc['version']}: {done.stderr}")
        self.counts["snapshots"] = self.counts.get("snapshots", 0) + 1

    def mutate_offer(self) -> dict[str, Any]:
        r = self.rng
        base = copy.deepcopy(r.choice(OFFERS))
        if "value" in base and base["kind"] != "MULTIBUY":
            base["value"] = (
                str(r.choice([5, 10, 20, 35]))
                if "PERCENT" in base["kind"]
                else str(r.choice([100, 500, 2000]))
            )
        if r.random() < 0.3:
            base["hours"] = [
                {"from": f"{r.randint(6, 14):02d}:00", "to": f"{r.randint(15, 23):02d}:00"}
            ]
        if r.random() < 0.3:
            base["weekdays"] = sorted(r.sample(range(1, 8), r.randint(1, 4)))
        if r.random() < 0.2:
            base["skus"] = [r.choice([MILK, BREAD, CHEESE, KEFIR, BUN, GHOST])]
        return base

    def delta(self) -> None:
        r = self.rng
        v = self.version + 1
        doc: dict[str, Any] = {
            "version": v,
            "baseVersion": self.version,
            "issuedAt": f"2026-11-23T03:{v % 60:02d}:00Z",
        }
        what = r.choice(["offer", "offer", "product", "customer", "remove", "program", "coupon"])
        if what == "offer":
            doc["offers"] = list(
                {o["id"]: o for o in (self.mutate_offer() for _ in range(r.randint(1, 3)))}.values()
            )
        elif what == "product":
            doc["products"] = [
                {
                    "sku": GHOST,
                    "name": "Призрак",
                    "category": r.choice(["dairy", "bakery", "tobacco"]),
                    "excludedFromLoyalty": r.random() < 0.3,
                },
                {
                    "sku": r.choice([MILK, BREAD, CHEESE, KEFIR, BUN]),
                    "name": "X",
                    "category": r.choice(["dairy", "bakery"]),
                },
            ]
        elif what == "customer":
            c = copy.deepcopy(r.choice(SNAPSHOT["customers"]))
            c["balancePoints"] = r.randint(0, 3000)
            c["tier"] = r.choice(["base", "silver", "gold", "platinum"])
            doc["customers"] = [c]
        elif what == "remove":
            doc["removed"] = {
                r.choice(["offers", "products", "coupons"]): [
                    r.choice(["m-dairy", "m-bread", GHOST, BUN, "CPN1", "CPN4", "p-a-cheese"])
                ]
            }
        elif what == "program":
            p = copy.deepcopy(PROGRAM)
            p["maxRedeemPercent"] = r.choice([10, 30, 50])
            p["offlineRedeemLimitPoints"] = r.choice([50, 500])
            p["pointsLifetimeDays"] = r.choice([0, 3, 5])
            doc["program"] = p
        else:
            doc["coupons"] = [
                {"code": f"CPN{r.randint(0, 15)}", "offerId": r.choice(["m-cpn", "m-bread"])}
            ]
        self.load(doc)
        self.version = v

    def full(self) -> None:
        v = self.version + 1
        doc = copy.deepcopy(SNAPSHOT)
        doc["version"] = v
        doc["issuedAt"] = f"2026-11-23T04:{v % 60:02d}:00Z"
        extra = self.mutate_offer()
        doc["offers"] = [
            o for o in doc["offers"] if self.rng.random() < 0.8 and o["id"] != extra["id"]
        ] + [extra]
        doc["appliedThrough"] = {}
        self.load(doc)
        self.version = v


PROGRAM_TTL = float(PROGRAM["holdTtlSeconds"])


def run(seed: int, steps: int, work: Path) -> Sequence:
    """`steps` random calls to one `tillpoint run` on a fresh data directory in `work`,
    each compared with a fresh agent's answer; the sequence (counts, mismatches)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    data = work / "data"
    (work / "snap-1.json").write_text(json.dumps(SNAPSHOT, ensure_ascii=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    subprocess.run(
        [EXE, "--data-dir", str(data), "snapshot", "load", str(work / "snap-1.json")],
        check=True,
        env={**env, "TILLPOINT_DEVICE_ID": DEVICE},
        capture_output=True,
    )
    ll = LongLived(work, data)
    seq = Sequence(random.Random(seed), work, data, ll)
    try:
        for _ in range(steps):
            seq.step()
    finally:
        ll.stop()
    return seq


def main(seed: int, steps: int, work: Path) -> int:
    t0 = time.monotonic()
    seq = run(seed, steps, work)
    print(
        f"seed {seed}: {seq.calls} calls, {seq.compared} equal, {seq.skipped} skipped,"
        f" {len(seq.mismatches)} mismatches, {time.monotonic() - t0:.1f} s"
    )
    print(json.dumps(seq.counts, sort_keys=True))
    for m in seq.mismatches[:10]:
        print("MISMATCH", m)
    return 1 if seq.mismatches else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
