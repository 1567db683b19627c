"""A known card's quote on first sight against an unknown card's, in process (issue 11/15).

    python -m bench.known_card [--calls 400] [--profile] [--ab REV] [--rounds 2]

Quick-scale data (`bench.generate`), 50-line receipts of the bench's mix
(`bench.run.mixed_receipt`): known cards each of a customer this agent has not seen
before (no two receipts share one, so the personal-offer memo never hits), unknown
cards, and the quick bench's own mix (half known, half unknown, the customers drawn at
random). Each receipt is quoted once, the kinds (and the agents, with `--ab`) in a fresh
random order per group; reported are the calling thread's CPU time (mean, p50, p99) and
the wall time (p50, p99), in ms.

`--profile`: cProfile self time by area (`bench.profile`) of the known cards' quotes,
then of the unknown cards'.

`--ab REV`: the `agent/` of git revision REV, imported under another name beside this
tree's, each agent on its own copy of the same data; every receipt is quoted by both in a
fresh random order, and both answers are compared equal (their proto3 JSON).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from bench.generate import Scale, write_full
from bench.profile import by_area, report
from bench.run import REPO, mixed_receipt, stats


def receipts(scale: Scale, n: int, seed: int = 15) -> tuple[list[Any], list[Any]]:
    """`n` known-card receipts, each of a customer not used before, and `n` unknown ones.
    (The bench's mix, half and half, is `mixed_receipt`'s own: `main` adds it.)"""
    rng = random.Random(seed)
    known: list[Any] = []
    seen: set[str] = set()
    while len(known) < n:
        body = mixed_receipt(f"k-{len(known)}", rng, scale, 50, known=True)
        if body["card"] not in seen:
            seen.add(body["card"])
            known.append(body)
    unknown = [mixed_receipt(f"u-{i}", rng, scale, 50, known=False) for i in range(n)]
    return known, unknown


def cpu_and_wall(call: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    call()
    return time.thread_time() - cpu, time.perf_counter() - wall


def summary(name: str, cpu: list[float], wall: list[float]) -> None:
    c, w = stats(cpu), stats(wall)
    print(
        f"  {name:32s} cpu mean {statistics.fmean(cpu) * 1000:.3f}"
        f" p50 {c['p50_ms']:.3f} p99 {c['p99_ms']:.3f} ms"
        f"   wall p50 {w['p50_ms']:.3f} p99 {w['p99_ms']:.3f} ms"
    )


def load(work: Path, name: str, snap: Path, agent_type: type[Any] = Agent) -> Any:
    agent = agent_type(work / name, "bench-till")
    with snap.open("rb") as lines:
        agent.load_snapshot_lines(lines)
    return agent


def old_agent_dir(rev: str, work: Path) -> Path:
    """A directory holding the `agent/` of `rev` as the package `tillpoint_ab_old` (it
    shares `tillpoint.printer` and `tillpoint.v1` with this tree)."""
    root = work / "old"
    root.mkdir()
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "agent"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=tar, check=True)
    (root / "agent").rename(root / "tillpoint_ab_old")
    return root


def old_package(rev: str, work: Path) -> tuple[type[Any], Callable[[Any], Any]]:
    """The `agent/` of `rev` as the package `tillpoint_ab_old` (`old_agent_dir`): (its
    Agent, its receipt_from_json)."""
    sys.path.insert(0, str(old_agent_dir(rev, work)))
    service = importlib.import_module("tillpoint_ab_old.service")
    results = importlib.import_module("tillpoint_ab_old.results")
    return service.Agent, results.receipt_from_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--ab", metavar="REV")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    scale = Scale.named("quick")
    work = Path(tempfile.mkdtemp(prefix="tillpoint-known-"))
    try:
        snap = write_full(work / "full.jsonl", scale)
        known, unknown = receipts(scale, args.calls * args.rounds + 40)
        mix = random.Random(16)
        mixed = [mixed_receipt(f"m-{i}", mix, scale, 50) for i in range(args.calls * args.rounds)]
        warm, check, known = known[:20], known[20:40], known[40:]
        agent = load(work, "new", snap)
        for body in warm + unknown[:20]:
            agent.quote(receipt_from_json(body))
        if args.profile:
            calls = [receipt_from_json(b) for b in known[: args.calls]]
            profile = cProfile.Profile()
            profile.enable()
            for receipt in calls:
                agent.quote(receipt)
            profile.disable()
            areas = by_area(profile)
            report("known card, first sight", areas, sum(areas.values()), len(calls))
            calls = [receipt_from_json(b) for b in unknown[: args.calls]]
            profile = cProfile.Profile()
            profile.enable()
            for receipt in calls:
                agent.quote(receipt)
            profile.disable()
            areas = by_area(profile)
            report("unknown card", areas, sum(areas.values()), len(calls))
            return 0
        quoters: dict[str, Callable[[Any], Any]] = {
            "new": lambda b: agent.quote(receipt_from_json(b)),
        }
        if args.ab:
            old_agent_type, old_receipt = old_package(args.ab, work)
            old = load(work, "old", snap, old_agent_type)
            for body in warm + unknown[:20]:
                old.quote(old_receipt(body))
            quoters["old"] = lambda b: old.quote(old_receipt(b))
            for body in check + unknown[:20]:  # the same answers, byte for byte
                a, b = (quoters[k](body).to_json() for k in ("new", "old"))
                assert a == b, body["receiptId"]
        rng = random.Random(7)
        for r in range(args.rounds):
            print(f"round {r + 1}: {args.calls} receipts a kind, quick scale, 50 lines")
            cpu: dict[str, list[float]] = {}
            wall: dict[str, list[float]] = {}
            todo = [
                (f"{q} {kind}", q, body)
                for i in range(args.calls)
                for q in quoters
                for kind, body in (
                    ("known first sight", known[r * args.calls + i]),
                    ("unknown", unknown[i]),
                    ("mixed (the quick bench's)", mixed[r * args.calls + i]),
                )
            ]
            for i in range(0, len(todo), 3 * len(quoters)):
                group = todo[i : i + 3 * len(quoters)]
                rng.shuffle(group)
                for name, q, body in group:
                    c, w = cpu_and_wall(lambda q=q, body=body: quoters[q](body))
                    cpu.setdefault(name, []).append(c)
                    wall.setdefault(name, []).append(w)
            for name in sorted(cpu):
                summary(name, cpu[name], wall[name])
            if args.ab:
                for kind in ("known first sight", "unknown", "mixed (the quick bench's)"):
                    n, o = stats(cpu[f"new {kind}"]), stats(cpu[f"old {kind}"])
                    mean = statistics.fmean(cpu[f"new {kind}"]) / statistics.fmean(
                        cpu[f"old {kind}"]
                    )
                    print(
                        f"  new/old cpu {kind}: mean {mean:.3f} p50 {n['p50_ms'] / o['p50_ms']:.3f}"
                        f"  p99 {n['p99_ms'] / o['p99_ms']:.3f}"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
