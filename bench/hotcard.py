"""Where the hot card's closed loop spends its time (issue 14): two real hub servers over
one durable throwaway cluster, 100 tills in 4 client processes calling AuthorizeRedemption
on one card, each call right after the answer to its previous one.

    python -m bench.hotcard [--calls 20] [--reps 2] [--sync-off]

Prints, for each run: calls a second, p50/p99, the CPU seconds of the two servers, of
PostgreSQL's backends and of the client processes (read from /proc, Linux only), per
call, and how many backends were in a statement and how many waited on a lock (sampled
every 5 ms). `--sync-off` alternates runs with `synchronous_commit = off` (an
experiment only: a hold must survive a crash) to tell whether the commit's flush under
the customer's lock is the limit.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import hub as bh
from bench.generate import Scale, write_full
from bench.pgcluster import Cluster

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def main() -> int:
    import psycopg
    from tillpoint.sync import hub_import
    from tillpoint.sync.hub_postgres import PostgresHubStore

    from bench import hubclients

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--sync-off", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tillpoint-hotcard-"))
    cluster = Cluster(durable=True)
    try:
        db = cluster.new_database("bench")
        snap = write_full(work / "quick.jsonl", Scale.named("quick"))
        store = PostgresHubStore(db, migrate_schema=True, pool_size=24)
        with snap.open("rb") as f:
            store.import_rows(hub_import.read_jsonl(f, 0, None))
        store.publish(datetime.now(UTC), 7 * 86400.0)
        with bh._servers(work, db) as (hub, addresses), psycopg.connect(db, autocommit=True) as mon:
            servers = [
                int(d[6:])
                for d in glob.glob("/proc/[0-9]*")
                if " serve " in cmdline(int(d[6:])) and str(hub.root) in cmdline(int(d[6:]))
            ]
            devices = [f"till-r{n:03d}" for n in range(100)]
            numbered = list(enumerate(bh._enroll(store, hub, devices, addresses, work)))
            shares = [numbered[k :: bh.CLIENT_PROCESSES] for k in range(bh.CLIENT_PROCESSES)]
            seen = {"lock": 0, "active": 0, "n": 0}
            stop = threading.Event()
            activity = (
                "SELECT state, wait_event_type FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

            def sample() -> None:
                while not stop.is_set():
                    rows = mon.execute(activity).fetchall()
                    seen["n"] += 1
                    seen["lock"] += sum(1 for _, wait in rows if wait == "Lock")
                    seen["active"] += sum(1 for state, _ in rows if state == "active")
                    time.sleep(0.005)

            backends_sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            for rep in range(args.reps):
                sync = "off" if args.sync_off and rep % 2 else "on"
                mon.execute(f"ALTER SYSTEM SET synchronous_commit = {sync}")
                mon.execute("SELECT pg_reload_conf()")
                with bh._clients() as pool:
                    list(pool.map(time.sleep, [0.0] * bh.CLIENT_PROCESSES))
                    clients = [p.pid for p in pool._processes.values()]
                    start_at = time.time() + 3.0
                    jobs = [
                        pool.submit(hubclients.redeem, (s, "c0", 1, args.calls, start_at, 0.0))
                        for s in shares
                    ]
                    backends = [int(r[0]) for r in mon.execute(backends_sql).fetchall()]
                    groups = (servers, backends, clients)
                    while time.time() < start_at:
                        time.sleep(0.001)
                    before = [sum(cpu(p) for p in g) for g in groups]
                    seen.update(lock=0, active=0, n=0)
                    stop.clear()
                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    done = [j.result() for j in jobs]
                    wall = time.time() - start_at
                    stop.set()
                    sampler.join()
                    # backends the pools opened during the run count whole (they were new)
                    backends += [int(r[0]) for r in mon.execute(backends_sql).fetchall()]
                    groups = (servers, sorted(set(backends)), clients)
                    used = [sum(cpu(p) for p in g) - b for g, b in zip(groups, before, strict=True)]
                lat = sorted(x for d in done for x in d["samples"])
                n = len(lat)
                per = ", ".join(
                    f"{name} {u:.2f} s ({u / n * 1e3:.2f} ms a call)"
                    for name, u in zip(("servers", "PostgreSQL", "clients"), used, strict=True)
                )
                print(
                    f"synchronous_commit={sync}: {n} calls in {wall:.2f} s = {n / wall:.0f}/s,"
                    f" p50 {lat[n // 2] * 1e3:.0f} ms, p99 {lat[int(n * 0.99)] * 1e3:.0f} ms;"
                    f" CPU {per}; backends in a statement {seen['active'] / seen['n']:.1f},"
                    f" waiting on a lock {seen['lock'] / seen['n']:.1f};"
                    f" load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        store.close()
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
