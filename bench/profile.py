"""Where a quote's and a checkout's time goes: cProfile self time, by area.

    python -m bench.profile [--scale quick] [--calls 1000] [--json FILE]

Builds a cache of the bench's data (the same generator and receipt mix as `bench.run`),
warms the agent, then profiles `calls` mixed 50-line quotes and as many checkouts of the
same baskets, in process. Each function's self time is put in one area by the module
that holds it (a built-in's by its callers'), so the areas add up to the call's whole
CPU time (cProfile's own overhead inflates the many small calls, so read the shares, not
the absolute times). This is how docs/PERFORMANCE.md accounts for the time left over the
floors.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from bench.generate import Scale, write_full
from bench.run import mixed_receipt

# (area, the path fragments or built-in names that belong to it), first match wins.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pricing core", ("agent/pricing", "agent/money", "agent/refunds")),
    ("coupons and expiring points", ("agent/coupons", "agent/expiry")),
    ("receipt and models (pydantic)", ("pydantic", "agent/models")),
    ("result and JSON", ("agent/results", "agent/wire", "json/", "_json")),
    ("cache reads", ("agent/cache",)),
    ("ledger reads and writes", ("agent/ledger", "agent/db")),
    ("identification", ("agent/identify",)),
    ("agent service", ("agent/service", "agent/messages", "agent/lock")),
    ("display lines and print payload", ("printer/",)),
    ("Fraction arithmetic", ("fractions.py",)),
    ("dataclasses and cached properties", ("dataclasses.py", "functools.py")),
    ("SQLite (C)", ("sqlite3.Connection", "sqlite3.Cursor")),
)


OTHER = "other (stdlib, builtins)"


def area_of(filename: str, name: str) -> str:
    where = filename.replace("\\", "/")
    for area, marks in AREAS:
        if any(m in where or m in name for m in marks):
            return area
    return OTHER


def by_area(profile: cProfile.Profile) -> dict[str, float]:
    """Self time by area; a built-in or standard-library function's time goes to the areas
    of its callers, in the proportion each caller spent in it (one level up)."""
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    for (filename, _, name), (_, _, self_s, _, callers) in stats.items():
        area = area_of(filename, name)
        if area != OTHER or not callers:
            areas[area] = areas.get(area, 0.0) + self_s
            continue
        for (caller_file, _, caller_name), (_, _, from_caller_s, _) in callers.items():
            up = area_of(caller_file, caller_name)
            areas[up] = areas.get(up, 0.0) + from_caller_s
    return areas


def profiled(calls: list[Callable[[], object]]) -> tuple[dict[str, float], float]:
    profile = cProfile.Profile()
    profile.enable()
    for call in calls:
        call()
    profile.disable()
    areas = by_area(profile)
    return areas, sum(areas.values())


def report(title: str, areas: dict[str, float], total: float, n: int) -> dict[str, Any]:
    print(f"\n{title}: {total / n * 1000:.3f} ms a call under cProfile")
    rows = sorted(areas.items(), key=lambda kv: -kv[1])
    for area, seconds in rows:
        print(f"  {seconds / total:6.1%}  {seconds / n * 1e6:8.1f} µs  {area}")
    return {
        "ms_per_call_profiled": round(total / n * 1000, 4),
        "areas": {a: {"share": round(s / total, 4), "us": round(s / n * 1e6, 1)} for a, s in rows},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", choices=["quick", "tiny", "store", "chain"], default="quick")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="write the shares here too")
    args = parser.parse_args()
    scale = Scale.named(args.scale)
    rng = random.Random(11)
    work = Path(tempfile.mkdtemp(prefix="tillpoint-profile-"))
    try:
        agent = Agent(work / "data", "profile-till")
        with write_full(work / "full.jsonl", scale).open("rb") as lines:
            agent.load_snapshot_lines(lines)
        baskets = [mixed_receipt(f"p-{i}", rng, scale, 50) for i in range(args.calls)]
        for warm in baskets[:20]:  # lazy imports and first-use memos are not a call's cost
            agent.quote(receipt_from_json(warm))
            agent.checkout(receipt_from_json({**warm, "receiptId": f"warm-{warm['receiptId']}"}))
        quotes = [lambda b=b: agent.quote(receipt_from_json(b)) for b in baskets]
        checkouts = [lambda b=b: agent.checkout(receipt_from_json(b)) for b in baskets]
        out = {
            "scale": args.scale,
            "calls": args.calls,
            "quote": report("quote, 50 lines", *profiled(quotes), args.calls),
            "checkout": report("checkout, 50 lines", *profiled(checkouts), args.calls),
        }
        agent.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
