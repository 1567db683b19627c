"""How long pushes and authorisations wait while a hub's first prune runs (review 37).

`python -m bench.prune_wait [--days 365] [--tills 240] [--every-min 5] [--store pg|sqlite]`

A hub store that kept every version for `--days` (a balance refresh every `--every-min`
minutes, each with every till's `appliedThrough` row; a customer changed once an hour)
is made with bulk SQL on a throwaway PostgreSQL cluster (or a SQLite file), then pruned
to a 30-day floor as `hub serve`'s watcher does (`prune_versions`: 200 versions a write
transaction, 150 ms apart), while `--writers` threads each push one transaction and
authorise (and release) one redemption of one customer in a loop, each on its own
connection as a server's threads are (each push for a new customer: no call's own work
grows while it runs). Prints each call's latency before the prune and during it
(median, p99, max) and the prune's own length. A measurement, not a test: figures in
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tillpoint.agent.expiry import utc_text
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data

TTL_S = 400 * 86400.0


def make_store(kind: str, where: Path, cluster: Any) -> tuple[Any, Any]:
    """(the store the prune runs on, a factory of more connections to it)."""
    if kind == "sqlite":
        from tillpoint.sync.hub_sqlite import SqliteHubStore

        path = where / "hub.db"
        return SqliteHubStore(path), lambda: SqliteHubStore(path)
    from tillpoint.sync.hub_postgres import PostgresHubStore

    url = cluster.new_database()
    return PostgresHubStore(url, migrate_schema=True), lambda: PostgresHubStore(url)


def fill(store: Any, kind: str, now: datetime, days: float, tills: int, every_min: float) -> int:
    """Versions 1..N over `days` up to a day before `now`: N, made in bulk."""
    import_doc(store, sample_master_data())
    start = now - timedelta(days=days)
    store.publish(start, TTL_S)  # version 1, through the store's own code
    step = timedelta(minutes=every_min)
    n = int((days - 1) * 86400 / step.total_seconds())
    pubs = [
        (
            v,
            utc_text(start + (v - 1) * step),
            utc_text(start + (v - 1) * step + timedelta(days=400)),
        )
        for v in range(2, n + 1)
    ]
    per_hour = max(1, int(60 / every_min))
    revs = [
        ("customer", "c-9", v, json.dumps({"id": "c-9", "firstName": f"V {v}"}))
        for v in range(2, n + 1, per_hour)
    ]
    if kind == "sqlite":
        with store._writing() as tx:
            many = tx.conn.executemany
            many(
                "INSERT INTO publications (version, issued_at, expires_at, cut, reason,"
                " changed_rows) VALUES (?, ?, ?, 0, 'balances', 0)",
                pubs,
            )
            many("INSERT INTO revisions (kind, key, version, doc) VALUES (?, ?, ?, ?)", revs)
            tx.conn.execute(
                "WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i + 1 < ?)"
                " INSERT INTO publication_progress (version, device_id, through)"
                " SELECT p.version, printf('till-%03d', d.i), p.version"
                " FROM publications p, d WHERE p.version > 1",
                (tills,),
            )
        return n
    with store._writing() as tx, tx.conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO publications (version, issued_at, expires_at, cut, reason,"
            " changed_rows) VALUES (%s, %s, %s, 0, 'balances', 0)",
            pubs,
        )
        cur.executemany(
            "INSERT INTO revisions (kind, key, version, doc) VALUES (%s, %s, %s, %s)", revs
        )
        cur.execute(
            "INSERT INTO publication_progress (version, device_id, through)"
            " SELECT v, 'till-' || lpad(d::text, 3, '0'), v"
            " FROM generate_series(2, %s) v, generate_series(0, %s) d",
            (n, tills - 1),
        )
    return n


def writer(
    make: Any, name: str, stop: threading.Event, out: list[tuple[float, str, float]]
) -> None:
    store = make()
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            now = datetime.now(UTC)
            # each push a customer of its own, each authorisation Anna (c-1, whose
            # moves never grow): a call's own work stays the same all along
            tx = TxIn(name, seq, "CHECKOUT", now.isoformat(), f"{name}-{seq}", "",
                      json.dumps({"receiptId": f"{name}-{seq}"}), "{}", 1, 0, "")  # fmt: skip
            t = time.perf_counter()
            store.ingest(name, "", [tx], now)
            out.append((t, "push", time.perf_counter() - t))
            t = time.perf_counter()
            store.authorise(name, f"{name}-r{seq}", "c-1", 1, now, [], now, 60.0)
            out.append((t, "authorise", time.perf_counter() - t))
            store.release(name, f"{name}-r{seq}")
            time.sleep(0.02)
    finally:
        store.close()


def figures(values: list[float]) -> str:
    if not values:
        return "none"
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"n={len(ms)} median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=float, default=365.0)
    ap.add_argument("--tills", type=int, default=240)
    ap.add_argument("--every-min", type=float, default=5.0)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--store", choices=["pg", "sqlite"], default="pg")
    args = ap.parse_args(argv)
    cluster = None
    if args.store == "pg":
        from bench import pgcluster

        reason = pgcluster.unavailable_reason()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        cluster = pgcluster.Cluster()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kind = "sqlite" if args.store == "sqlite" else "postgresql"
            store, make = make_store(kind, Path(tmp), cluster)
            now = datetime.now(UTC)
            t = time.monotonic()
            n = fill(store, kind, now, args.days, args.tills, args.every_min)
            print(f"{kind}: {n} versions, {n * args.tills} appliedThrough rows,"
                  f" made in {time.monotonic() - t:.0f} s", flush=True)  # fmt: skip
            stop = threading.Event()
            calls: list[tuple[float, str, float]] = []
            threads = [
                threading.Thread(target=writer, args=(make, f"w{i}", stop, calls))
                for i in range(args.writers)
            ]
            for th in threads:
                th.start()
            time.sleep(5)  # calls before the prune
            began = time.perf_counter()
            floor = store.prune_versions(now - timedelta(days=30))
            ended = time.perf_counter()
            time.sleep(2)
            stop.set()
            for th in threads:
                th.join(60)
            print(f"prune to floor {floor}: {ended - began:.1f} s")
            for what in ("push", "authorise"):
                before = [d for s, w, d in calls if w == what and s + d < began]
                during = [d for s, w, d in calls if w == what and s < ended and s + d > began]
                print(f"{what:9s} before: {figures(before)}")
                print(f"{what:9s} during: {figures(during)}")
            store.close()
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
