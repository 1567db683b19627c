"""Review 32 (long32): a long-lived `tillpoint run` prices like a fresh one, through every
door.

Review 31's differential (tests/test_review31_long31.py) drives an `Agent` built in the
test's process. Here the long-lived till is the real command line: ONE `tillpoint run`
process (`bench/difflong_doors.py serve`: enrolled with a real hub over mTLS, its sync
loops, hold sweeper and backoffs as shipped, its wall clock and the seconds that pass
read from a file the test writes), driven in a seeded random order through ALL THREE
doors: HTTP, gRPC, and the `tillpoint` CLI forwarded to the running agent. The hub's data
change mid-way (deltas its sync loop pulls), the hub goes away and comes back, the clock
passes hold TTLs and is stepped, and the till is stopped with SIGTERM and started again.

Before each call the data directory is copied; after the long-lived process answered, a
FRESH process (`bench/difflong_doors.py fresh`) on the copy, at the same moment, answers
the same call as the same door gives it, its hub the long-lived process's hub answers to
that call played back. Every answer must be equal, every field (HTTP: byte for byte);
docs/CONTRACT.md §5, §6, §9, §11, §13, §16; docs/ARCHITECTURE.md, "What a long-lived agent
keeps between calls". After a step of the wall clock the long-lived process is first
given one uncompared quote (it follows the step; a fresh process, with no mark, cannot).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.difflong_doors import write_clock

from .conftest import SteppingClock
from .test_review31_long31 import DEVICE, HubSequence, _hub_master

EXE = str(Path(sys.executable).with_name("tillpoint"))
REPO = Path(__file__).resolve().parent.parent


class FileClock(SteppingClock):
    """The test's clock, written to the file the till process (and each fresh one) reads."""

    def __init__(self, t: datetime, path: Path) -> None:
        super().__init__(t)
        self.path = path
        self.write()

    def write(self) -> None:
        write_clock(self.path, self.t, self.s)

    def passes(self, seconds: float) -> None:
        super().passes(seconds)
        self.write()

    def stepped(self, seconds: float) -> None:
        super().stepped(seconds)
        self.write()


# The `tillpoint` command line, except that a call it would run locally instead of
# forwarding it (agent/forward.py's `NotForwarded`) is exit 3: the CLI door is the
# running agent's, never a one-shot process of its own.
FORWARDED_ONLY = """
import sys
from tillpoint.agent import forward
from tillpoint.agent.cli import main
real = forward.forward
def forwarded_only(args):
    try:
        return real(args)
    except forward.NotForwarded:
        print("tillpoint: NOT FORWARDED", file=sys.stderr)
        raise SystemExit(3) from None
forward.forward = forwarded_only
raise SystemExit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = DEVICE
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class DoorsSequence(HubSequence):
    """Review 31's seeded sequence, its long-lived agent a `tillpoint run` process."""

    ACTIONS = HubSequence.ACTIONS + ["restart", "burst"]  # noqa: RUF005 (a list, as its base)

    # where the till's clock starts; whether the hub reads it too (else the machine's)
    START_AT = "2026-11-23T09:40:00+03:00"
    HUB_ON_TILL_CLOCK = False
    TRACE_ENV = "LONG32_TRACE"

    def __init__(self, seed: int, work: Path, store: str | None = None) -> None:
        from tillpoint.sync.hub_server import system_clock
        from tillpoint.sync.loopback import LoopbackHub, wait_for
        from tillpoint.sync.pull import cache_version

        self.rng = random.Random(seed)
        self.work = work
        self.data = work / "till"
        self.clock = FileClock(datetime.fromisoformat(self.START_AT), work / "clock")
        self.record = work / "hub-answers.jsonl"
        self.record.touch()
        self.master = _hub_master(self.TTL)
        hub_clock = self.clock if self.HUB_ON_TILL_CLOCK else system_clock
        self.hub = LoopbackHub(work / "hub", data=self.master, clock=hub_clock, store=store)
        self.hub_up = True
        self.hub.enroll(DEVICE, self.data)
        self.synced = True  # its own sync loops pull and push
        self.bodies: dict[str, dict[str, Any]] = {}
        self.held: set[str] = set()
        self.closed: set[str] = set()
        self.committed: dict[str, dict[str, Any]] = {}
        self.n = 0
        self.compared = 0
        self.counts: dict[str, int] = {}
        self.mismatches: list[str] = []
        self.trace = bool(os.environ.get(self.TRACE_ENV))
        self.stops: list[int] = []  # the exit codes of the SIGTERMs
        self.ll: Any = None
        self.start()
        wait_for(lambda: cache_version(self.data) >= 1, timeout=60)

    # ------------------------------------------------------------ the process

    def start(self) -> None:
        from bench import difflong as dl

        command = [sys.executable, "-m", "bench.difflong_doors", "serve"]
        command += [str(self.clock.path), str(self.record)]
        self.ll = dl.LongLived(self.work, self.data, command=command)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.ll.http_port, timeout=40)

    def restart(self) -> None:
        """SIGTERM, and `tillpoint run` again on the same data directory."""
        self.conn.close()
        self.ll.stop()
        self.stops.append(self.ll.proc.returncode)
        self.start()

    def close(self) -> None:
        if self.ll is not None:
            self.conn.close()
            self.ll.stop()
            self.stops.append(self.ll.proc.returncode)
        if self.hub_up:
            self.hub.stop()

    # ------------------------------------------------------------ one comparison

    def long(self, call: str, body: Any, via: str) -> tuple[str, Any]:
        from bench import difflong as dl

        if via == "grpc":
            return dl.long_answer(self.ll, call, body, via)
        if via == "cli":
            return self.cli(call, body)
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            self.conn.request("POST", f"/v1/{call}", raw, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):  # a kept connection the server closed
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.ll.http_port, timeout=40)
            self.conn.request("POST", f"/v1/{call}", raw, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
        text = resp.read().decode()
        doc = json.loads(text)
        if resp.status != 200:
            return "error", (doc["error"]["code"], doc["error"]["message"])
        self.long_text = text
        return "ok", doc

    def cli(self, call: str, body: Any) -> tuple[str, Any]:
        """The `tillpoint` command line, forwarded to the running agent (agent/forward.py)."""
        args: list[str] = [call]
        if call in ("quote", "hold", "checkout", "refund"):
            path = self.work / "body.json"
            path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
            args.append(str(path))
        elif call in ("confirm", "cancel"):
            args.append(body["receiptId"])
        elif call == "identify":
            args.append(body["text"])
        elif call == "balance":
            args.append(body["card"])  # (`--at` is run locally, not forwarded)
        done = subprocess.run(
            [sys.executable, "-c", FORWARDED_ONLY, "--data-dir", str(self.data), *args, "--json"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=90,
            check=False,
        )
        if done.returncode == 0:
            return "ok", json.loads(done.stdout)
        line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        return "error", (done.returncode, line.removeprefix("tillpoint: "))

    def fresh_process(self, call: str, body: Any, via: str, lines: list[str]) -> dict[str, Any]:
        copy_dir = self.work / "copy"
        (self.work / "fresh-body.json").write_text(
            json.dumps(body, ensure_ascii=False), encoding="utf-8"
        )
        (self.work / "fresh-hub.jsonl").write_text("".join(lines), encoding="utf-8")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.difflong_doors",
                "fresh",
                str(self.clock.path),
                str(copy_dir),
                call,
                via,
                str(self.work / "fresh-body.json"),
                str(self.work / "fresh-hub.jsonl"),
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return doc

    def compare(self, call: str, body: Any, via: str | None = None) -> tuple[str, Any]:
        from bench import difflong as dl

        if call == "status":  # its sync loops move the counts: review 31's tests have it
            return "skipped", None
        if via is None:
            roll = self.rng.random()
            via = "grpc" if roll < 0.3 else "cli" if roll < 0.5 else "http"
        if call == "balance" and via == "cli":
            body = {"card": body["card"]}
        dl.copy_state(self.data, self.work / "copy")
        mark = self.record.stat().st_size
        self.long_text = ""
        got = self.long(call, body, via)
        with open(self.record, encoding="utf-8") as f:
            f.seek(mark)
            lines = f.readlines()
        fresh = self.fresh_process(call, body, via, lines)
        answer = fresh["answer"]
        want: tuple[str, Any] = (answer[0], tuple(answer[1]) if answer[0] == "error" else answer[1])
        if via == "http" and got == want and got[0] == "ok" and self.long_text != answer[2]:
            got, want = ("bytes", self.long_text), ("bytes", answer[2])
        self.compared += 1
        key = f"{call}/{via}/{got[0]}" + (f"/{got[1][0]}" if got[0] == "error" else "")
        self.count(key)
        if self.trace:
            print("CALL", call, via, json.dumps(body, ensure_ascii=False)[:300])
            print("  ->", json.dumps(got, ensure_ascii=False)[:400])
        problems = dl.diff(got, want) if got != want else []
        if got != want and not problems:
            problems = [f"long={got} fresh={want}"]
        if fresh["unasked"]:
            problems.append(f"the fresh agent asked the hub {fresh['unasked']}, the long did not")
        if problems:
            self.mismatches.append(
                json.dumps(
                    {
                        "step": self.compared,
                        "call": call,
                        "via": via,
                        "clock": self.clock().isoformat(),
                        "hub": "up" if self.hub_up else "down",
                        "body": body,
                        "diff": problems[:6],
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )
        return got

    # ------------------------------------------------------------ the steps

    def do(self, action: str) -> None:
        if action == "restart":
            self.count("action/restart")
            self.restart()
            return
        if action == "burst":
            self.count("action/burst")
            self.burst()
            return
        if action in ("steplive", "rehold"):  # (a step inside a hub request: review 31's)
            action = "step"
        if action == "timer":  # the process's own 15 s round runs beside the calls
            action = "tick"
        super().do(action)

    def burst(self, versions: int = 5) -> None:
        """The hub publishes several versions while the till cannot reach it; when it comes
        back the till pulls them (a delta chain, or a full snapshot: a new generation of
        its cache, switched in under the running process's memos and reader connections)."""
        from tillpoint.sync.loopback import wait_for
        from tillpoint.sync.pull import cache_version

        if self.hub_up:
            self.hub.stop()
            self.hub_up = False
        generation = self.generation()

        class Unpulled:
            def pull(self) -> None:  # the till's own sync loop pulls, once the hub is back
                pass

        self.synced, self.puller = False, Unpulled()
        try:
            for _ in range(versions):
                self.delta()
        finally:
            self.synced = True
        latest = self.hub.store.latest()
        self.hub.restart()
        self.hub_up = True
        try:
            wait_for(lambda: cache_version(self.data) >= latest.version, timeout=120)
        except TimeoutError:
            self.count("pull/late")
        self.count("burst/full" if self.generation() != generation else "burst/deltas")

    def generation(self) -> str:
        """The cache file `cache.db` names now (a full snapshot switches in another)."""
        link = self.data / "cache.db"
        return os.readlink(link) if link.is_symlink() else ""

    def step_clock(self) -> None:
        """NTP sets the wall clock; one uncompared quote and the process has followed it."""
        step = self.rng.choice([-3600.0, -300.0, -5.0, 5.0, 300.0, 3600.0])
        self.clock.stepped(step)
        body = {
            "receiptId": "follow-the-step",
            "storeId": "s1",
            "tillId": "t1",
            "at": self.clock().isoformat(),
            "lines": [{"sku": "4601234000017", "qty": "1", "priceMinor": 100}],
        }
        self.ll.http("/v1/quote", body)
        self.count(f"stepped/{step:+.0f}")


def run_doors(seed: int, steps: int, work: Path, script: tuple[str, ...] = ()) -> DoorsSequence:
    work.mkdir(parents=True, exist_ok=True)
    seq = DoorsSequence(seed, work)
    try:
        for action in script:
            seq.do(action)
        for _ in range(steps):
            seq.step()
    finally:
        seq.close()
    return seq


# Every kind of event at least once, in a row (the choices within each step are seeded).
SCRIPT32 = tuple(
    " ".join(
        [
            "new hold again confirm checkout down hold tick reuse up hold step confirm",
            "delta hold restart confirm refund checkout cancel identify balance",
            "hold down restart cancel up delta checkout refund step hold confirm",
        ]
    ).split(" ")
)


@pytest.mark.timeout(600)  # about 20 s alone; a few processes a call on a busy machine
def test_a_long_lived_run_answers_as_a_fresh_process_through_every_door(tmp_path: Path) -> None:
    """CONTRACT §5, §6, §9, §11, §13, §16: the script above and a few seeded steps."""
    seq = run_doors(32, 6, tmp_path / "work", SCRIPT32)
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert seq.stops and all(code == 0 for code in seq.stops), seq.stops
    assert seq.compared >= 25, seq.counts
    doors = {key.split("/")[1] for key in seq.counts if key.count("/") >= 2}
    assert {"http", "grpc", "cli"} <= doors, seq.counts


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 1-2 minutes alone, 5-8 on a busy machine
@pytest.mark.parametrize("seed", [3201, 3202, 3203])
def test_a_long_lived_run_answers_as_a_fresh_process_through_a_long_sequence(
    tmp_path: Path, seed: int
) -> None:
    seq = run_doors(seed, 120, tmp_path / "work")
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert all(code == 0 for code in seq.stops), seq.stops


if __name__ == "__main__":  # python -m tests.test_review32_long32 SEED STEPS
    import shutil
    import time

    t0 = time.monotonic()
    where = Path("/tmp") / f"long32-{sys.argv[1]}"
    shutil.rmtree(where, ignore_errors=True)
    script = SCRIPT32 if "script" in sys.argv else ()
    s = run_doors(int(sys.argv[1]), int(sys.argv[2]), where, script)
    print(f"{s.compared} compared, {len(s.mismatches)} mismatches, {time.monotonic() - t0:.1f} s")
    print(json.dumps(s.counts, sort_keys=True), s.stops)
    for m in s.mismatches[:10]:
        print("MISMATCH", m)


# ---------------------------------------------------------------- the state table, entry by entry
#
# docs/ARCHITECTURE.md, "What a long-lived agent keeps between calls": for each entry not
# already pinned by an earlier review's test, the event that ends it, and after it the
# long-lived agent's answer compared with a fresh agent's on the same data directory.
# Already pinned: the memo through deltas and a reset (test_review30_memo30.py), a reader moved by
# another process's snapshot (test_cache_generations.py), `_clock_mark` (test_review30_memo30.py,
# test_review31_long31.py), `_storage_problem` until a sale is stored again (test_operations.py,
# test_review36_rev36a.py), `_on_display` (test_review31_pos31.py), the hub turns
# (test_review26_life26.py), the backoffs ended by the hub answering again (test_sync_recovery.py,
# test_review21_long21.py), the print queue and the worker (test_review30_memo30.py,
# test_review31_dev31.py, test_printer_queue.py), `money.frac` (test_long_lived_pricing.py); the
# sweeper, the data directory's lock and the hub link across a SIGTERM and a start again: the
# differential above. Added here: the memo's tables and the reader pairs after a full snapshot of
# another process.


def _full_from_another_process(data: Path, doc: dict[str, Any], work: Path) -> None:
    """`tillpoint snapshot load` in a process of its own: a new generation of the cache
    switched in beside the long-lived agent."""
    path = work / f"full-{doc['version']}.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run(
        [EXE, "--data-dir", str(data), "snapshot", "load", str(path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _answers(agent: Any, bodies: list[dict[str, Any]]) -> list[Any]:
    from tillpoint.agent.errors import TillpointError, edge_of
    from tillpoint.agent.results import receipt_from_json

    out: list[Any] = []
    for body in bodies:
        try:
            out.append(agent.quote(receipt_from_json(body)).to_json())
        except TillpointError as exc:
            out.append(edge_of(exc).code)
    for text in ("2770000000017", "+79161234567", "2770000000024", "2770000000031"):
        out.append(agent.identify(text).to_json())
    out.append(agent.balance("2770000000017", None).to_json())
    return out


def test_memos_and_reader_connections_follow_a_full_snapshot_another_process_switched_in(
    tmp_path: Path,
) -> None:
    """ARCHITECTURE's state table, `Agent._memo` and the cache connections (the writer's,
    the idle reader pairs): a full snapshot loaded by another process (a new generation
    of the cache, a higher version) ends them. After it the long-lived agent, whose memo
    holds the program, the category tree, the mass offers and their candidate tables,
    the personal offers and product rows of the receipts it just priced, answers every
    quote, identify and balance (and a hold) as a fresh agent on the same directory."""
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent

    from bench import difflong as dl

    from .conftest import receipt, snapshot

    milk, bread, cheese = "4601234000017", "4601234000024", "4601234000055"
    offers = [
        {"id": "m-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "10"},
        {"id": "p-bread", "customerId": "c-a", "kind": "PERCENT_OFF", "skus": [bread],
         "value": "15"},
    ]  # fmt: skip
    first = snapshot(offers=offers)
    lines = [
        {"sku": milk, "qty": "2", "priceMinor": 8990},
        {"sku": bread, "qty": "1", "priceMinor": 5490},
        {"sku": cheese, "qty": "0.350", "priceMinor": 89900},
    ]
    bodies = [
        receipt(f"q-{i}", card=card, lines=lines[: 1 + i % 3], redeemPoints=rp)
        for i, (card, rp) in enumerate(
            [("2770000000017", 0), ("2770000000024", 10), ("+79161234567", 100), ("", 0)]
        )
    ]
    for body in bodies:
        if not body["card"]:
            del body["card"]
    second = snapshot(version=2, issuedAt="2026-11-23T05:00:00Z")
    second["program"] = {**second["program"], "maxRedeemPercent": 10}
    second["categories"][2] = {"code": "bakery", "parent": "tobacco", "name": "Хлеб"}
    second["products"][3] = {**second["products"][3], "excludedFromLoyalty": True}
    second["customers"][0] = {**second["customers"][0], "tier": "base", "balancePoints": 90}
    second["cards"][2] = {**second["cards"][2], "status": "ACTIVE"}
    second["offers"] = [
        {"id": "m-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "25"},
        {"id": "p-bread", "customerId": "c-b", "kind": "PERCENT_OFF", "skus": [bread],
         "value": "5"},
        {"id": "m-bakery", "kind": "BONUS_MULTIPLIER", "categories": ["food"], "value": "3"},
    ]  # fmt: skip

    data = tmp_path / "data"
    moment = datetime.fromisoformat("2026-11-23T10:15:30+03:00")
    long = Agent(data, DEVICE, clock=lambda: moment)
    try:
        long.load_snapshot(first)
        for _ in range(2):  # the memo, the candidate tables and a reader pair all warm
            before = _answers(long, bodies)
        held = long.hold(receipt_from_json(receipt("h-1", redeemPoints=50))).to_json()
        assert held["state"] == "HELD"
        _full_from_another_process(data, second, tmp_path)
        got = _answers(long, bodies)
        copy_dir = tmp_path / "copy"
        dl.copy_state(data, copy_dir)
        hold = long.hold(receipt_from_json(receipt("h-2", redeemPoints=50))).to_json()
        assert long.status().cache_version == 2
    finally:
        long.close()
    dl.clear_module_caches()
    fresh = Agent(copy_dir, DEVICE, clock=lambda: moment)
    try:
        want = _answers(fresh, bodies)
        fresh_hold = fresh.hold(receipt_from_json(receipt("h-2", redeemPoints=50))).to_json()
    finally:
        fresh.close()
    assert got != before  # the new data reached the answers at all
    assert dl.diff(got, want) == []
    assert dl.diff(hold, fresh_hold) == []
    # the hold as a fresh agent placed it: priced from version 2 (its redemption capped
    # at 10 % of the receipt, c-a's 90 points)
    assert hold["redeemedPoints"] <= 90 and hold["redeemedPoints"] < held["redeemedPoints"]
