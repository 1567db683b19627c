"""Review 23 (refund23): refunds and expiring points over histories of calls.

Seeded random histories of one customer (checkouts with redemption, holds confirmed,
cancelled or left open, partial refunds in several steps of lines sharing a SKU, refunds
while the sale's points are pending or after they matured, after a batch expired, of a
whole receipt with `EXTRA_POINTS`, into a debt, repeated and conflicting `refundId`s,
over-returns, unknown, held and cancelled receipts, `balance --at` at various times) are
run through the real CLI (one data directory per history) and compared, figure by figure,
with the clean-room reference of tests/refund_reference23.py. A subset also goes through
one long-lived `tillpoint run` over HTTP (many histories, one customer each, in one data
directory), whose answers must be the CLI's.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main

from .conftest import free_port
from .refund_reference23 import (
    SKU_A,
    SKU_B,
    SKU_U,
    SKU_X,
    T0,
    Customer,
    RefTill,
    World,
    ean13,
    snapshot,
    ts,
)

DEVICE = "till-1"
EXE = Path(sys.executable).parent / "tillpoint"

WORLDS = [
    World(),
    World(delay=2),
    World(lifetime=4, pct_off=10),
    World(delay=1, lifetime=3, extra=25, extra_min=1000),
    World(pv=50, max_pct=100, extra=40, extra_min=0, offline_limit=100000),
    World(max_pct=100, lifetime=2, offline_limit=100000, extra=10, extra_min=5000),
    World(delay=3, max_pct=50, pct_off=15, offline_limit=200),
    World(lifetime=1, max_pct=100, offline_limit=100000, extra=5, extra_min=0),
    World(delay=1, lifetime=1, max_pct=100, offline_limit=100000),
]


# ----------------------------------------------------------------------- histories


def qty_text(thousandths: int) -> str:
    whole, frac = divmod(thousandths, 1000)
    return str(whole) if frac == 0 else f"{whole}.{frac:03d}".rstrip("0")


def respelt(body: dict[str, Any]) -> dict[str, Any]:
    """The same request spelt otherwise: its time in UTC, quantities with 3 decimals
    (CONTRACT §11: compared by value, `at` as the moment it names)."""
    at = datetime.fromisoformat(body["at"]).astimezone(UTC).isoformat().replace("+00:00", "Z")
    lines = [
        dict(ln, qty=f"{Fraction(ln['qty']).numerator / Fraction(ln['qty']).denominator:.3f}")
        for ln in body["lines"]
    ]
    return dict(body, at=at, lines=lines)


def make_customer(rng: random.Random, idx: int) -> Customer:
    balance = rng.choice([0, 0, 40, 300, 1500])
    cust = Customer(f"c-{idx}", ean13(f"277{idx:09d}"), balance)
    if rng.random() < 0.3:
        cust.pending = [
            (rng.randint(10, 200), T0 + timedelta(days=rng.randint(1, 5), hours=rng.randint(0, 5)))
        ]
    if balance and rng.random() < 0.5:
        n = rng.randint(1, 2)
        left = balance
        for _ in range(n):
            p = rng.randint(1, left)
            left -= p
            cust.expiring.append(
                (
                    p,
                    T0
                    + timedelta(
                        days=rng.randint(0, 8),
                        hours=rng.randint(1, 20),
                        seconds=rng.choice([0, 59]),
                    ),
                )
            )
            if not left:
                break
    return cust


def make_history(
    rng: random.Random, world: World, idx: int
) -> tuple[Customer, list[dict[str, Any]]]:
    """One customer's calls, in time order; receipt and refund ids unique to `idx`."""
    cust = make_customer(rng, idx)
    now = T0 + timedelta(minutes=rng.randint(0, 600))
    steps: list[dict[str, Any]] = []
    sold: list[tuple[str, datetime, dict[str, int]]] = []  # rid, at, sku -> qty left (thousandths)
    holds_open: list[str] = []
    cancelled: list[str] = []
    refunds: list[dict[str, Any]] = []
    past_ok = world.lifetime == 0 and not cust.expiring
    late_confirm: list[dict[str, Any]] = []  # holds confirmed after later sales
    n_r = 0

    def new_receipt(unknown_ok: bool = False) -> dict[str, Any]:
        nonlocal n_r
        n_r += 1
        lines = []
        for _ in range(rng.randint(1, 4)):
            sku = rng.choice([SKU_A, SKU_A, SKU_B, SKU_B, SKU_X, SKU_U])
            q = rng.choice([1000, 1000, 2000, 3000, 500, 1250, 333, 4000])
            lines.append(
                {
                    "sku": sku,
                    "qty": qty_text(q),
                    "priceMinor": rng.choice([990, 4590, 12000, 35999, 100]),
                }
            )
        redeem = rng.choice([0, -1, -1, rng.randint(1, 80), rng.randint(100, 900)])
        card = cust.card if not unknown_ok or rng.random() > 0.08 else ean13(f"2779{idx:08d}")
        return {
            "receiptId": f"h{idx}-r{n_r}",
            "storeId": "s1",
            "tillId": "t1",
            "at": ts(now),
            "card": card,
            "lines": lines,
            "redeemPoints": redeem,
        }

    def boundaries() -> list[datetime]:
        """Moments at or after `now` where points activate or stop counting, and a second
        either side (§5.6, §16: `expiresAt` is the last moment they count)."""
        marks = [a for _, a in cust.pending] + [e for _, e in cust.expiring]
        for _, at, _ in sold:
            act = at + timedelta(days=world.delay)
            marks.append(act)
            if world.lifetime:
                marks.append(act + timedelta(days=world.lifetime))
        out = {m + timedelta(seconds=d) for m in marks for d in (-1, 0, 1)}
        return sorted(m for m in out if m >= now)

    def note_sale(r: dict[str, Any]) -> None:
        left: dict[str, int] = {}
        for ln in r["lines"]:
            left[ln["sku"]] = left.get(ln["sku"], 0) + int(Fraction(ln["qty"]) * 1000)
        sold.append((r["receiptId"], datetime.fromisoformat(r["at"]), left))

    for _ in range(rng.randint(6, 14)):
        roll = rng.random()
        if late_confirm and rng.random() < 0.3:
            r = late_confirm.pop()
            holds_open.remove(r["receiptId"])
            steps.append({"cmd": "confirm", "rid": r["receiptId"]})
            note_sale(r)
        elif roll < 0.30 or not sold:
            r = new_receipt(unknown_ok=True)
            steps.append({"cmd": "checkout", "body": r})
            note_sale(r)
            if rng.random() < 0.1:
                # a retry: the stored result (its time and quantities maybe spelt otherwise)
                steps.append({"cmd": "checkout", "body": respelt(r) if rng.random() < 0.5 else r})
            elif rng.random() < 0.05:
                other = dict(r, redeemPoints=r["redeemPoints"] + 1)
                steps.append({"cmd": "checkout", "body": other})  # another body: a conflict
        elif roll < 0.40:
            r = new_receipt()
            steps.append({"cmd": "hold", "body": r})
            fate = rng.random()
            if fate < 0.5:
                steps.append({"cmd": "confirm", "rid": r["receiptId"]})
                note_sale(r)
            elif fate < 0.75:
                steps.append({"cmd": "cancel", "rid": r["receiptId"]})
                cancelled.append(r["receiptId"])
            else:
                holds_open.append(r["receiptId"])
                if past_ok and rng.random() < 0.7:
                    late_confirm.append(r)
        elif roll < 0.78:
            rid, at, left = rng.choice(sold)
            lines = []
            skus = [s for s, q in left.items() if q > 0]
            whole = rng.random() < 0.3
            over = rng.random() < 0.06
            for sku in skus if whole else rng.sample(skus, k=min(len(skus), rng.randint(1, 2))):
                q = left[sku] if whole or rng.random() < 0.3 else rng.choice([1000, 500, 333, 1])
                if over:
                    q = left[sku] + 1000
                q = min(q, left[sku]) if not over else q
                if q <= 0:
                    continue
                lines.append({"sku": sku, "qty": qty_text(q)})
            if not lines:
                continue
            if len(lines) == 1 and rng.random() < 0.3 and not over:
                # the same SKU in two lines of one refund
                t = int(Fraction(lines[0]["qty"]) * 1000)
                if t >= 2:
                    a = rng.randint(1, t - 1)
                    lines = [
                        {"sku": lines[0]["sku"], "qty": qty_text(a)},
                        {"sku": lines[0]["sku"], "qty": qty_text(t - a)},
                    ]
            marks = boundaries()
            if marks and rng.random() < 0.3:
                now = rng.choice(marks[:6])
            refund_at = now
            if past_ok and rng.random() < 0.3:  # dated back, between later sales
                refund_at = at + (now - at) * rng.random()
                refund_at = refund_at.replace(microsecond=0)
            body = {
                "refundId": f"h{idx}-f{len(refunds) + 1}",
                "receiptId": rid,
                "at": ts(refund_at),
                "lines": lines,
            }
            if not over:
                for ln in lines:
                    left[ln["sku"]] -= int(Fraction(ln["qty"]) * 1000)
                refunds.append(body)
            steps.append({"cmd": "refund", "body": body})

        elif roll < 0.84 and refunds:
            first = rng.choice(refunds)
            if rng.random() < 0.6:
                # same body (maybe spelt otherwise): the first result
                steps.append(
                    {"cmd": "refund", "body": respelt(first) if rng.random() < 0.5 else first}
                )
            else:
                other = dict(first, lines=[{"sku": first["lines"][0]["sku"], "qty": "0.001"}])
                steps.append({"cmd": "refund", "body": other})  # another body: a conflict
        elif roll < 0.88:
            target = rng.choice([f"h{idx}-nope", *holds_open, *cancelled])
            sku = rng.choice([SKU_A, SKU_B])
            steps.append(
                {
                    "cmd": "refund",
                    "body": {
                        "refundId": f"h{idx}-f{len(refunds) + 1}-x",
                        "receiptId": target,
                        "at": ts(now),
                        "lines": [{"sku": sku, "qty": "1"}],
                    },
                }
            )
        elif roll < 0.90:
            rid, at, left = rng.choice(sold)
            skus = [s for s, q in left.items() if q > 0]
            if skus:
                steps.append(
                    {
                        "cmd": "refund",
                        "body": {
                            "refundId": f"h{idx}-early{len(steps)}",
                            "receiptId": rid,
                            "at": ts(at - timedelta(minutes=5)),
                            "lines": [{"sku": skus[0], "qty": "0.001"}],
                        },
                    }
                )
        else:
            when = now + timedelta(hours=rng.choice([0, 1, 30, 100, 200]))
            marks = boundaries()
            if marks and rng.random() < 0.5:
                when = rng.choice(marks)
            if past_ok and rng.random() < 0.4:
                when = now - timedelta(hours=rng.choice([1, 20, 50, 100]))
            steps.append({"cmd": "balance", "card": cust.card, "at": ts(when)})
        now += rng.choice(
            [
                timedelta(0),
                timedelta(minutes=7),
                timedelta(hours=5),
                timedelta(days=1),
                timedelta(days=2, hours=3),
                timedelta(days=4),
            ]
        )
    steps.append(
        {"cmd": "balance", "card": cust.card, "at": ts(now + timedelta(days=rng.randint(0, 9)))}
    )
    return cust, steps


def reference(world: World, cust: Customer, steps: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    till = RefTill(world, cust)
    out: list[tuple[int, Any]] = []
    for st in steps:
        cmd = st["cmd"]
        if cmd == "checkout":
            out.append(till.checkout(st["body"]))
        elif cmd == "hold":
            out.append(till.hold(st["body"]))
        elif cmd == "confirm":
            out.append(till.confirm(st["rid"]))
        elif cmd == "cancel":
            out.append(till.cancel(st["rid"]))
        elif cmd == "refund":
            out.append(till.refund(st["body"]))
        else:
            out.append((0, till.balance(datetime.fromisoformat(st["at"]))))
    return out


# ----------------------------------------------------------------------- the product


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def cli_argv(st: dict[str, Any], tmp: Path, n: int) -> list[str]:
    cmd = st["cmd"]
    if cmd in ("checkout", "hold", "refund"):
        path = tmp / f"in-{n}.json"
        path.write_text(json.dumps(st["body"], ensure_ascii=False), encoding="utf-8")
        return [cmd, str(path), "--json"]
    if cmd in ("confirm", "cancel"):
        return [cmd, st["rid"], "--json"]
    return ["balance", st["card"], "--at", st["at"], "--json"]


def run_cli(
    snap: dict[str, Any], steps: list[dict[str, Any]], data: Path, subprocesses: bool = False
) -> list[tuple[int, Any]]:
    data.mkdir(parents=True)
    snap_path = data / "snap.json"
    snap_path.write_text(json.dumps(snap, ensure_ascii=False), encoding="utf-8")
    base = ["--data-dir", str(data / "d")]

    def call(argv: list[str]) -> tuple[int, str, str]:
        if not subprocesses:
            return cli(base + argv)
        env = dict(os.environ, TILLPOINT_DEVICE_ID=DEVICE)
        p = subprocess.run(
            [str(EXE), *base, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        return p.returncode, p.stdout, p.stderr

    code, _, err = call(["snapshot", "load", str(snap_path), "--json"])
    assert code == 0, err
    out: list[tuple[int, Any]] = []
    for n, st in enumerate(steps):
        code, stdout, err = call(cli_argv(st, data, n))
        assert "Traceback" not in err, err
        out.append((code, json.loads(stdout) if code == 0 else err.strip()))
    return out


@contextlib.contextmanager
def tillpoint_run(data: Path, snap: dict[str, Any], tmp: Path) -> Iterator[tuple[str, int]]:
    """A real `tillpoint run` serving `data` (HTTP on a free port); yields (host, port)."""
    env = dict(os.environ, TILLPOINT_DEVICE_ID=DEVICE, TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
    snap_path = tmp / "run-snap.json"
    snap_path.write_text(json.dumps(snap, ensure_ascii=False), encoding="utf-8")
    p = subprocess.run(
        [str(EXE), "--data-dir", str(data), "snapshot", "load", str(snap_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    conf = tmp / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [str(EXE), "--config", str(conf), "--data-dir", str(data), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        serving = data / "serving.json"
        while not serving.exists():
            assert proc.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)
        doc = json.loads(serving.read_text(encoding="utf-8"))
        yield doc["host"], doc["port"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_http(addr: tuple[str, int], steps: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    conn = http.client.HTTPConnection(*addr, timeout=60)
    out: list[tuple[int, Any]] = []
    try:
        for st in steps:
            cmd = st["cmd"]
            if cmd in ("checkout", "hold", "refund"):
                body: dict[str, Any] = st["body"]
            elif cmd in ("confirm", "cancel"):
                body = {"receiptId": st["rid"]}
            else:
                body = {"card": st["card"], "at": st["at"]}
            conn.request(
                "POST",
                f"/v1/{cmd}",
                json.dumps(body, ensure_ascii=False).encode(),
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            out.append((0 if resp.status == 200 else resp.status, doc))
    finally:
        conn.close()
    return out


# ----------------------------------------------------------------------- comparing


def _bal(d: Any) -> Any:
    if d is None:
        return None
    return {"availablePoints": d.get("availablePoints"), "pendingPoints": d.get("pendingPoints")}


def _expiring(d: Any) -> list[tuple[int, datetime]]:
    return [
        (
            e["points"],
            e["expiresAt"]
            if isinstance(e["expiresAt"], datetime)
            else datetime.fromisoformat(e["expiresAt"]),
        )
        for e in d.get("expiring", [])
    ]


def figures(cmd: str, code: int, doc: Any, http: bool = False) -> Any:
    """What is compared of one answer (a refusal: the CLI's exit 2, or the HTTP status)."""
    if code != 0:
        return ("refused", code if http else 2 if code in (2, 400, 404, 409, 412) else code)
    if cmd in ("checkout", "hold", "confirm"):
        return {
            "redeemedPoints": doc["redeemedPoints"],
            "earnedPoints": doc["earnedPoints"],
            "lines": [(ln["sku"], ln["redeemedMinor"], ln["earnedPoints"]) for ln in doc["lines"]],
            "balance": _bal(doc["balance"]),
        }
    if cmd == "cancel":
        return ("cancelled",)
    if cmd == "refund":
        return {
            k: doc[k]
            for k in (
                "refundId",
                "receiptId",
                "returnedPoints",
                "takenBackPoints",
                "negativeBalance",
            )
        } | {"balance": _bal(doc["balance"])}
    return {**_bal(doc), "expiring": _expiring(doc)}


def describe(st: dict[str, Any]) -> str:
    if "body" in st:
        b = st["body"]
        return f"{st['cmd']} {b.get('refundId', b.get('receiptId'))} at {b['at']}"
    return f"{st['cmd']} {st.get('rid', st.get('at'))}"


def compare(
    steps: list[dict[str, Any]],
    want: list[tuple[int, Any]],
    got: list[tuple[int, Any]],
    label: str,
    http: bool = False,
) -> tuple[int, list[str]]:
    diffs = []
    for n, (st, w, g) in enumerate(zip(steps, want, got, strict=True)):
        fw, fg = figures(st["cmd"], *w, http), figures(st["cmd"], *g, http)
        if fw != fg:
            diffs.append(
                f"{label} step {n} {describe(st)}: expected {fw}, got {fg} ({g[1] if g[0] else ''})"
            )
    return len(steps), diffs


def world_of(seed: int) -> World:
    return WORLDS[seed % len(WORLDS)]


def check_cli(seeds: range, tmp: Path, subprocesses: bool = False) -> tuple[int, list[str]]:
    compared, diffs = 0, []
    for seed in seeds:
        world = world_of(seed)
        cust, steps = make_history(random.Random(seed), world, seed)
        want = reference(world, cust, steps)
        got = run_cli(snapshot(world, [cust]), steps, tmp / f"h{seed}", subprocesses)
        n, d = compare(steps, want, got, f"seed {seed}")
        compared += n
        diffs += d
    return compared, diffs


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TILLPOINT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", DEVICE)


def test_histories_seeded_short(tmp_path: Path) -> None:
    compared, diffs = check_cli(range(14), tmp_path)
    assert compared > 100
    assert not diffs, "\n".join(diffs[:20])


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 400 histories: 3-5 minutes
def test_histories_seeded_many(tmp_path: Path) -> None:
    compared, diffs = check_cli(range(14, 414), tmp_path)
    assert compared > 3000
    assert not diffs, "\n".join(diffs[:40])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_histories_real_cli_processes(tmp_path: Path) -> None:
    """A subset through `tillpoint` processes (the installed entry point, 0.5 s a call)."""
    compared, diffs = check_cli(range(500, 512), tmp_path, subprocesses=True)
    assert compared > 80
    assert not diffs, "\n".join(diffs[:40])


VOLATILE = ("seq", "holdExpiresAt", "deviceId")


def _doc(code: int, doc: Any) -> Any:
    if code != 0:
        return ("refused", code)
    if isinstance(doc, dict):
        return {k: v for k, v in doc.items() if k not in VOLATILE}
    return doc


def check_http(seeds: list[int], tmp: Path) -> tuple[int, list[str]]:
    """The histories of `seeds` (one world) through one `tillpoint run` over HTTP, and each
    through the CLI in a data directory of its own: the same documents, the reference's
    figures."""
    world = world_of(seeds[0])
    assert all(world_of(s) == world for s in seeds)
    histories = {s: make_history(random.Random(s), world, s) for s in seeds}
    compared, diffs = 0, []
    with tillpoint_run(
        tmp / "served", snapshot(world, [c for c, _ in histories.values()]), tmp
    ) as addr:
        for seed, (cust, steps) in histories.items():
            got_http = run_http(addr, steps)
            got_cli = run_cli(snapshot(world, [cust]), steps, tmp / f"cli{seed}")
            want = reference(world, cust, steps)
            n, d = compare(steps, want, got_http, f"http seed {seed}", http=True)
            compared += n
            diffs += d
            for i, (st, h, c) in enumerate(zip(steps, got_http, got_cli, strict=True)):
                if (h[0] == 0) != (c[0] == 0) or (h[0] == 0 and _doc(*h) != _doc(*c)):
                    diffs.append(f"seed {seed} step {i} {describe(st)}: http {h} cli {c}")
    return compared, diffs


def test_histories_http_same_as_cli(tmp_path: Path) -> None:
    world_index = 3
    seeds = [s for s in range(1000, 1100) if s % len(WORLDS) == world_index][:3]
    compared, diffs = check_http(seeds, tmp_path)
    assert compared > 20
    assert not diffs, "\n".join(diffs[:20])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("world_index", range(len(WORLDS)))
def test_histories_http_same_as_cli_many(tmp_path: Path, world_index: int) -> None:
    seeds = [s for s in range(2000, 3000) if s % len(WORLDS) == world_index][:20]
    compared, diffs = check_http(seeds, tmp_path)
    assert compared > 150
    assert not diffs, "\n".join(diffs[:40])


# ----------------------------------------------------------------------- findings


def test_an_exchange_refund_then_sale_in_one_minute_keeps_the_new_sales_points(
    tmp_path: Path,
) -> None:
    """An exchange at the till: the sale that spent the customer's 100 points (a batch
    expiring 1 December) is returned and a new sale, in the same minute (a POS writes whole
    minutes), spends those 100 points again. In the order the calls happened the points went
    back to their batch and the new sale spent them from there (§16: soonest expiring
    first); its own 7 points expire 30 days after it. Replayed "a sale before a refund at
    the same time", the new sale ran into a debt its own 7 points paid, and the customer
    was left with 7 points of the 1 December batch: gone 20 days early."""
    world = World(lifetime=30, max_pct=100)
    cust = Customer(
        "c-1",
        ean13("277000000001"),
        100,
        expiring=[(100, datetime.fromisoformat("2026-12-01T23:59:59+03:00"))],
    )
    line = {"qty": "1", "priceMinor": 20000}
    steps: list[dict[str, Any]] = [
        {
            "cmd": "checkout",
            "body": {
                "receiptId": "r1",
                "at": "2026-11-20T10:00:00+03:00",
                "card": cust.card,
                "lines": [{"sku": SKU_A, **line}],
                "redeemPoints": 100,
            },
        },
        {
            "cmd": "refund",
            "body": {
                "refundId": "f1",
                "receiptId": "r1",
                "at": "2026-11-21T12:00:00+03:00",
                "lines": [{"sku": SKU_A, "qty": "1"}],
            },
        },
        {
            "cmd": "checkout",
            "body": {
                "receiptId": "r2",
                "at": "2026-11-21T12:00:00+03:00",
                "card": cust.card,
                "lines": [{"sku": SKU_B, **line}],
                "redeemPoints": 100,
            },
        },
        {"cmd": "balance", "card": cust.card, "at": "2026-11-21T12:00:00+03:00"},
        {"cmd": "balance", "card": cust.card, "at": "2026-12-02T00:00:00+03:00"},
    ]
    got = run_cli(snapshot(world, [cust]), steps, tmp_path / "cli")
    assert got[2][1]["redeemedPoints"] == 100 and got[2][1]["earnedPoints"] == 7
    assert got[3][1]["expiring"] == [{"points": 7, "expiresAt": "2026-12-21T12:00:00+03:00"}]
    assert (got[4][1]["availablePoints"], got[4][1]["pendingPoints"]) == (7, 0)
    _, d = compare(steps, reference(world, cust, steps), got, "exchange")
    assert not d, d


def test_the_hub_agrees_on_an_exchange_in_one_minute() -> None:
    """The hub replays the till's transactions in the same order (tests/test_hub_till_agree.py):
    a sale that spends points, its refund and a new sale at the refund's very time."""
    from .test_hub_till_agree import _play

    start = datetime.fromisoformat("2026-11-23T10:00:00+03:00")
    _play(
        0,
        [(300, 240)],
        3,
        0,
        [("sale", 1, 100_000, -1), ("refund", 24, 0, 0), ("sale", 0, 200_000, -1)],
        start,
        "Europe/Moscow",
    )
    _play(
        0,
        [(300, 240)],
        2,
        1,
        [
            ("sale", 1, 100_000, 300),
            ("sale", 30, 50_000, 0),
            ("refund", 24, 0, 0),
            ("sale", 0, 200_000, -1),
            ("refund", 0, 1, 0),
        ],
        start,
        "Europe/Moscow",
    )
