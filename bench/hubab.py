"""An A/B of hub servers on the same data (issue 14): two `hub serve` processes of one
program, then two of another, alternated over ONE durable throwaway cluster, each run
with tills of its own (push ingestion, the hot card's closed loop and its paced figure,
as `bench/hub.py` measures them).

    python -m bench.hubab --server OLD/.venv/bin/tillpoint --server .venv/bin/tillpoint \
        [--scale quick] [--reps 2] [--profile DIR]

The runs go A B B A (then again for each further rep), so that a drift of the machine's
load over the window falls on both alike. `--profile DIR` records each server with
py-spy (when it is installed) into DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import hub as bh
from bench import hubclients
from bench.generate import Scale, write_full
from bench.hotcard import cpu
from bench.pgcluster import Cluster
from bench.run import stats


@contextmanager
def servers(
    server: str, work: Path, hub: Any, db: str, tag: str, profile: Path | None
) -> Iterator[tuple[list[str], list[int]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    procs: list[subprocess.Popen[bytes]] = []
    spies: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for name in ("a", "b"):
            port_file = work / f"{tag}-{name}.port"
            with (work / f"{tag}-{name}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            *(server, "hub", "serve", "--hub-dir", str(hub.root), "--store", db),
                            *("--listen", "127.0.0.1:0", "--port-file", str(port_file)),
                            *("--publish-every", "0", "--workers", "128"),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                if procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hub server {tag}-{name} did not start")
                time.sleep(0.1)
            ports.append(int(port_file.read_text()))
            spy = shutil.which("py-spy") or str(Path(server).with_name("py-spy"))
            if profile is not None and Path(spy).exists():
                out = profile / f"{tag}-{name}.txt"
                spies.append(
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--gil",
                            "-p",
                            str(procs[-1].pid),
                            "-f",
                            "raw",
                            "-o",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        yield [f"127.0.0.1:{port}" for port in ports], [proc.pid for proc in procs]
    finally:
        for spy_proc in spies:
            spy_proc.send_signal(2)
        for spy_proc in spies:
            try:
                spy_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def one_run(
    store: Any,
    hub: Any,
    addresses: list[str],
    pids: list[int],
    work: Path,
    tag: str,
    run: int,
    scale: Scale,
) -> dict[str, Any]:
    tills = 100
    rounds = 4
    enrolled = bh._enroll(
        store, hub, [f"{tag}{run}-{t:05d}" for t in range(tills)], addresses, work
    )
    shares = [enrolled[k :: bh.CLIENT_PROCESSES] for k in range(bh.CLIENT_PROCESSES)]
    out: dict[str, Any] = {}
    with bh._clients() as pool:
        list(pool.map(time.sleep, [0.0] * bh.CLIENT_PROCESSES))
        start_at = time.time() + 2.0
        cpu_before = sum(cpu(pid) for pid in pids)
        done = list(
            pool.map(
                hubclients.push, [(share, rounds, scale.customers, start_at, 8) for share in shares]
            )
        )
    took = max(d["ended"] for d in done) - start_at
    stored = sum(d["stored"] for d in done)
    again = sum(d["stored_again"] for d in done)
    out["push_tx_s"] = tills * rounds * bh.BATCH / took
    out["push_exact"] = stored == tills * rounds * bh.BATCH and again == 0
    # the servers' CPU for each transaction pushed (its first push and its retry)
    out["push_cpu_us_tx"] = (sum(cpu(p) for p in pids) - cpu_before) / (tills * rounds) / 50 * 1e6
    redeemers = bh._enroll(
        store, hub, [f"{tag}{run}-r{n:03d}" for n in range(100)], addresses, work
    )
    numbered = list(enumerate(redeemers))
    rshares = [numbered[k :: bh.CLIENT_PROCESSES] for k in range(bh.CLIENT_PROCESSES)]
    for name, customer, every in (
        ("closed", f"c{100 + 2 * run}", 0.0),
        ("paced", f"c{101 + 2 * run}", 1.0),
    ):
        before = store.balance(customer, datetime.now(UTC))
        balance = before.available - before.held
        with bh._clients() as pool:
            list(pool.map(time.sleep, [0.0] * bh.CLIENT_PROCESSES))
            start_at = time.time() + 3.0
            cpu_before = sum(cpu(pid) for pid in pids)
            jobs = [(share, customer, 10, 5, start_at, every) for share in rshares]
            rdone = list(pool.map(hubclients.redeem, jobs))
        samples = [x for d in rdone for x in d["samples"]]
        granted = sum(g for d in rdone for g in d["granted"])
        s = stats(samples)
        out[f"{name}_p50_ms"] = s["p50_ms"]
        out[f"{name}_p99_ms"] = s["p99_ms"]
        out[f"{name}_exact"] = granted <= max(balance, 0)
        used = sum(cpu(p) for p in pids) - cpu_before  # with each till's warm-up call
        out[f"{name}_cpu_us_call"] = used / (len(samples) + len(redeemers)) * 1e6
    return out


def _open(db: str) -> Any:
    """The bench's own store (imports, enrolments, balances) on a database of either
    program's schema: those statements are the same in both."""
    from tillpoint.sync import hub_postgres

    built_for = hub_postgres.SCHEMA_VERSION
    hub_postgres.SCHEMA_VERSION = hub_postgres.schema_version(db)
    try:
        return hub_postgres.PostgresHubStore(db, pool_size=8)
    finally:
        hub_postgres.SCHEMA_VERSION = built_for


def main() -> int:
    from tillpoint.sync import hub_import
    from tillpoint.sync.hub_server import HubDir

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", action="append", required=True, help="A, then B")
    parser.add_argument("--scale", default="quick", choices=["quick", "tiny", "store"])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    a_bin, b_bin = args.server
    work = Path(tempfile.mkdtemp(prefix="tillpoint-hubab-"))
    cluster = Cluster(durable=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    try:
        scale = Scale.named(args.scale)
        snap = write_full(work / "data.jsonl", scale)
        # Each program over a database of its own, of the schema that program migrates to
        # (a server opens only the schema it was built for; the same data in both).
        sides: dict[str, tuple[str, Any, Any]] = {}
        for tag, server in (("A", a_bin), ("B", b_bin)):
            db = cluster.new_database(f"bench_{tag.lower()}")
            subprocess.run([server, "hub", "migrate", "--store", db], check=True, env=env)
            store = _open(db)
            with snap.open("rb") as f:
                store.import_rows(hub_import.read_jsonl(f, 0, None))
            store.publish(datetime.now(UTC), 7 * 86400.0)
            hub = HubDir(work / f"hub-{tag}", db)
            hub.init()
            sides[tag] = (db, store, hub)
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        run = 0
        for _ in range(args.reps):
            for tag, server in (("A", a_bin), ("B", b_bin), ("B", b_bin), ("A", a_bin)):
                db, store, hub = sides[tag]
                with servers(server, work, hub, db, f"{tag}{run}", args.profile) as (
                    addresses,
                    pids,
                ):
                    got = one_run(store, hub, addresses, pids, work, tag.lower(), run, scale)
                shown = "  ".join(
                    f"{k} {v:,.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in got.items()
                )
                print(f"{tag} run {run}: {shown}  (load {os.getloadavg()[0]:.1f})", flush=True)
                run += 1
        for _, store, _ in sides.values():
            store.close()
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
