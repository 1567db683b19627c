"""A/B of the hub's counted moves: this checkout's hub code against an older checkout's,
alternated call by call in one process over the same store (docs/PERFORMANCE.md).

    python -m bench.moves_ab --base DIR [--store sqlite|postgresql] [--customers N]

DIR is the root of the other checkout (`git archive <commit> | tar -x -C DIR`); its
`sync/` is loaded as the package `tillpoint.sync_base` (the agent's code is this
checkout's). Both versions must read the same schema. The data: N customers with 300
points that expire and the rest not, 6 sales each at a till (points earned pending a
day, some redeemed) and every tenth sale refunded. Figures, each the median of the
rounds, old and new alternated, with their ratio (and the CPU time of this process, which
holds all of SQLite's work but not PostgreSQL's backend):

- a full snapshot's customer rows (`snapshot_stream(version, 0)` read to the end: what a
  publication builds, `counted_customer_moves` for every customer);
- `authorise` of an online redemption for one customer (its live balance: `live_moves`,
  or PostgreSQL's one-statement `live_inputs`), each call a customer of its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
WEEK = 7 * 86400.0
SALES = 6


def _base_sync(root: Path) -> ModuleType:
    """The other checkout's `sync/` as the package `tillpoint.sync_base`."""
    name = "tillpoint.sync_base"
    spec = importlib.util.spec_from_file_location(
        name, root / "sync" / "__init__.py", submodule_search_locations=[str(root / "sync")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _store(package: str, kind: str, where: str) -> Any:
    if kind == "sqlite":
        module = importlib.import_module(f"{package}.hub_sqlite")
        return module.SqliteHubStore(Path(where))
    module = importlib.import_module(f"{package}.hub_postgres")
    return module.PostgresHubStore(where, migrate_schema=package == "tillpoint.sync")


def _master(customers: int) -> dict[str, Any]:
    from tillpoint.sync.loopback import sample_master_data

    from bench.generate import card

    doc = sample_master_data()
    doc["program"].update(pointsLifetimeDays=30, activationDelayDays=1, maxRedeemPercent=100)
    expires = (NOW + timedelta(days=20)).isoformat()
    doc["customers"] = [
        {
            "id": f"c{n:07d}",
            "tier": "base",
            "balancePoints": 1000,
            "expiring": [{"points": 300, "expiresAt": expires}],
        }
        for n in range(customers)
    ]
    doc["cards"] = [
        {"number": card(n), "customerId": f"c{n:07d}", "status": "ACTIVE"} for n in range(customers)
    ]
    return doc


def _history(customers: int) -> list[Any]:
    """Sales (and every tenth refunded) of every customer, as one till pushes them."""
    from tillpoint.sync.hub_store import TxIn

    txs: list[Any] = []
    seq = 0
    for n in range(customers):
        customer = f"c{n:07d}"
        for k in range(SALES):
            at = NOW + timedelta(days=k, minutes=n % 1440)
            redeemed = 40 if k % 2 else 0
            earned = 30
            receipt = f"r-{n}-{k}"
            seq += 1
            txs.append(
                TxIn(
                    "till-1",
                    seq,
                    "CHECKOUT",
                    at.isoformat(),
                    customer,
                    "",
                    json.dumps({"receiptId": receipt}),
                    json.dumps({"earnedPoints": earned, "redeemedPoints": redeemed}),
                    -redeemed,
                    earned,
                    (at + timedelta(days=1)).isoformat(),
                )
            )
            if (n + k) % 10 == 0:
                seq += 1
                back = at + timedelta(hours=2)
                txs.append(
                    TxIn(
                        "till-1",
                        seq,
                        "REFUND",
                        back.isoformat(),
                        customer,
                        "",
                        json.dumps({"receiptId": receipt, "refundId": f"rf-{n}-{k}"}),
                        json.dumps({"returnedPoints": redeemed, "takenBackPoints": earned}),
                        redeemed,
                        -earned,
                        (at + timedelta(days=1)).isoformat(),
                    )
                )
    return txs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    from tillpoint.sync.loopback import import_doc

    _base_sync(args.base)
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.store == "sqlite":
            where = str(Path(tmp) / "hub.db")
        else:
            from bench.pgcluster import Cluster

            cluster = Cluster()
            where = cluster.new_database("moves")
        new = _store("tillpoint.sync", args.store, where)
        old = _store("tillpoint.sync_base", args.store, where)
        try:
            import_doc(new, _master(args.customers))
            new.publish(NOW, WEEK)
            history = _history(args.customers)
            for start in range(0, len(history), 500):
                new.ingest("till-1", f"b{start}", history[start : start + 500], NOW)
            issued = NOW + timedelta(days=SALES + 1)
            version = new.publish(issued, WEEK).version
            print(f"{args.store}: {args.customers} customers, {len(history)} transactions")
            build: dict[str, list[float]] = {"old": [], "new": []}
            auth: dict[str, list[float]] = {"old": [], "new": []}
            build_cpu: dict[str, list[float]] = {"old": [], "new": []}
            auth_cpu: dict[str, list[float]] = {"old": [], "new": []}
            rows: dict[str, list[str]] = {}
            n = 0
            for _ in range(args.rounds):
                for name, store in (("old", old), ("new", new)):
                    started, cpu = time.perf_counter(), time.process_time()
                    rows[name] = [text for section, text in store.snapshot_stream(version, 0)]
                    build[name].append(time.perf_counter() - started)
                    build_cpu[name].append(time.process_time() - cpu)
                for _ in range(args.calls):
                    n += 1
                    customer = f"c{n % args.customers:07d}"
                    for name, store in (("old", old), ("new", new)):
                        started, cpu = time.perf_counter(), time.process_time()
                        store.authorise(
                            "till-2", f"{name}-{n}", customer, 10, issued, [], issued, 60.0
                        )
                        auth[name].append(time.perf_counter() - started)
                        auth_cpu[name].append(time.process_time() - cpu)
            changed = sum(a != b for a, b in zip(rows["old"], rows["new"], strict=True))
            for label, figures, unit, scale in (
                ("full snapshot build", build, "s", 1.0),
                ("  its CPU in this process", build_cpu, "s", 1.0),
                ("authorise (one customer)", auth, "ms", 1000.0),
                ("  its CPU in this process", auth_cpu, "ms", 1000.0),
            ):
                o = statistics.median(figures["old"]) * scale
                w = statistics.median(figures["new"]) * scale
                print(
                    f"  {label:<28} old {o:9.3f} {unit}  new {w:9.3f} {unit}  new/old {w / o:.3f}"
                )
            print(f"  snapshot rows that differ (refunds routed to their batches): {changed}")
        finally:
            new.close()
            old.close()
            if cluster is not None:
                cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
