"""An A/B of `tillpoint run`'s serving settings (the collector), at quick scale.

    python -m bench.serving_ab [--calls N] [--variants none,shipped] [--keep DIR]

Each variant is a real `tillpoint run` in its own process on its own copy of the same
quick-scale data directory, serving gRPC and HTTP; beside them a bare HTTP echo of the same
stack (`bench.run._http_echo_app`) and the do-nothing gRPC stub (`bench.stub`). One client
(this process) sends every 50-line mixed receipt (`bench.run.mixed_receipt`) to every
server, over gRPC and HTTP, in a fresh random order per receipt (`bench.run.interleave`):
the variants and the floors share every moment of the machine. Each server records its
collector's pauses (`gc.callbacks`) and reports them when it stops, with its RSS.

A variant is a function applied in place of `tillpoint.agent.app.settle_collector`
("shipped" keeps the code's own): "none" leaves the collector as Python sets it. Tokens
after it, joined by "+": "pool" (every HTTP call in the pool, as before), "noarena"
(glibc's own malloc arena limit), "arenaN" (at most N arenas), "trace" (`Agent.quote`
timed inside the server), "garbage" (the cyclic garbage's types), "loop", "swN".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from bench.generate import Scale, write_full
from bench.ports import free_port
from bench.run import EXE, REPO, http_connect, http_post, interleave, mixed_receipt, rss_mb, stats
from bench.stub import write_replies

# The serving process: `tillpoint run` with its collector's pauses recorded, and the
# variant's collector settings instead of the shipped ones.
LAUNCHER = r"""
import atexit, gc, json, sys, time
out, variant = sys.argv[1], sys.argv[2]
if "+arena" in variant:  # glibc's malloc arenas, at most N (M_ARENA_MAX)
    import ctypes
    ctypes.CDLL("libc.so.6").mallopt(-8, int(variant.partition("+arena")[2][:1]))
pauses = []
started = [0.0]
def record(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    elif serving:
        pauses.append((info["generation"], time.perf_counter() - started[0], info["collected"]))
gc.callbacks.append(record)
serving = []
import tillpoint.agent.app as app
import tillpoint.agent.systemd as systemd
notify = systemd.notify
def notified(state):
    if state == "READY=1":
        serving.append(1)
        if "garbage" in variant:
            gc.set_debug(gc.DEBUG_SAVEALL)
    return notify(state)
systemd.notify = notified
tokens = variant.split("+")
variant = tokens[0]
timings = []
if "trace" in tokens:
    from tillpoint.agent.service import Agent
    quote = Agent.quote
    def traced(self, *a, **k):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return quote(self, *a, **k)
        finally:
            timings.append((time.perf_counter() - wall, time.thread_time() - cpu))
    Agent.quote = traced
if "loop" in tokens:
    from tillpoint.agent import http_api
    async def on_loop(self, fn):
        return fn()
    http_api.Api._in_pool = on_loop
if "pool" in tokens:  # every HTTP call in the pool, as before the reads moved to the loop
    from tillpoint.agent import http_api
    http_api.ON_LOOP_MAX_BYTES = -1
for token in tokens:
    if token.startswith("sw"):
        sys.setswitchinterval(int(token[2:]) / 10000)
from bench.serving_ab import VARIANTS
if variant != "shipped":
    app.settle_collector = VARIANTS[variant]
def dump():
    by_gen, freed = {}, {}
    for gen, seconds, collected in pauses:
        by_gen.setdefault(gen, []).append(seconds)
        freed[gen] = freed.get(gen, 0) + collected
    kinds = {}
    if gc.get_debug():
        gc.collect()
        for obj in gc.garbage:
            name = type(obj).__qualname__
            kinds[name] = kinds.get(name, 0) + 1
        kinds = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:25])
    traced = {}
    if timings:
        timings.sort()
        n = len(timings)
        walls = sorted(w for w, _ in timings)
        cpus = sorted(c for _, c in timings)
        slow = timings[int(n * 0.99):]
        traced = {"n": n, "wall_p50_ms": round(walls[n // 2] * 1000, 3),
                  "wall_p99_ms": round(walls[int(n * 0.99)] * 1000, 3),
                  "cpu_p50_ms": round(cpus[n // 2] * 1000, 3),
                  "cpu_p99_ms": round(cpus[int(n * 0.99)] * 1000, 3),
                  "slowest_1pc_wall_ms": round(sum(w for w, _ in slow) / len(slow) * 1000, 3),
                  "slowest_1pc_cpu_ms": round(sum(c for _, c in slow) / len(slow) * 1000, 3)}
    start = time.perf_counter()
    gc.collect()
    full_ms = round((time.perf_counter() - start) * 1000, 2)
    rss = 0.0
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    summary = {
        str(gen): {
            "n": len(s),
            "total_ms": round(sum(s) * 1000, 2),
            "max_ms": round(max(s) * 1000, 3),
            "mean_ms": round(sum(s) / len(s) * 1000, 3),
            "collected": freed[gen],
        }
        for gen, s in sorted(by_gen.items())
    }
    with open(out, "w") as f:
        json.dump({"gc": summary, "threshold": gc.get_threshold(),
                   "frozen": gc.get_freeze_count(), "rss_mb": rss, "garbage": kinds,
                   "quote": traced, "full_collection_ms": full_ms,
                   "tracked": len(gc.get_objects())}, f)
atexit.register(dump)
from tillpoint.agent.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _none() -> None:
    """Python's defaults: (700, 10, 10), nothing frozen."""


def _freeze() -> None:
    gc.collect()
    gc.freeze()


def _threshold() -> None:
    gc.set_threshold(50_000, 20, 100)


def _both() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _t10k() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


VARIANTS = {
    "none": _none,
    "freeze": _freeze,
    "threshold": _threshold,
    "both": _both,
    "t10k": _t10k,
}


class Serving:
    """One `tillpoint run` of a variant."""

    def __init__(self, work: Path, data: Path, variant: str) -> None:
        self.name = variant
        self.grpc_port, self.http_port = free_port(), free_port()
        conf = work / f"run-{variant}.toml"
        conf.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.grpc_port}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n[metrics]\nenabled = false\n'
        )
        self.notify = work / f"notify-{variant}.sock"
        self.notify.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.notify))
        sock.settimeout(60)
        self.report = work / f"gc-{variant}.json"
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-c", LAUNCHER, str(self.report), variant),
                *("--config", str(conf), "--data-dir", str(data), "run"),
            ],
            env={
                **os.environ,
                # "+noarena": glibc's own arena limit (8 a CPU) instead of the shipped 2
                **(
                    {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}
                    if "+noarena" in variant
                    else {}
                ),
                "NOTIFY_SOCKET": str(self.notify),
                "TILLPOINT_DEVICE_ID": "bench-till",
            },
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        sock.recv(64)
        sock.close()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = pb_grpc.PosAgentStub(self.channel)
        self.http = http_connect(self.http_port)

    def stop(self) -> dict[str, Any]:
        rss = rss_mb(self.proc.pid)
        self.channel.close()
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        found: dict[str, Any] = json.loads(self.report.read_text())
        found["rss_before_stop_mb"] = round(rss, 1)
        return found


ECHO = """
import sys
from bench.run import _http_echo_app
from tillpoint.agent.http_api import AsgiThread
echo = AsgiThread(_http_echo_app(), "127.0.0.1", 0)
echo.start()
print(echo.port, flush=True)
sys.stdin.read()
echo.stop()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="50-line receipts")
    parser.add_argument("--variants", default="none,shipped")
    parser.add_argument("--mixed", type=int, default=0, help="mixed calls after, for RSS")
    parser.add_argument("--keep", type=Path, help="reuse/keep the data here")
    args = parser.parse_args()
    names = args.variants.split(",")
    scale = Scale.named("quick")
    work = args.keep or Path(tempfile.mkdtemp(prefix="tillpoint-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "data"
    if not base.exists():
        snap = write_full(work / "full.jsonl", scale)
        subprocess.run(
            [EXE, "--data-dir", base, "snapshot", "load", snap],
            check=True,
            env={**os.environ, "TILLPOINT_DEVICE_ID": "bench-till"},
            stdout=subprocess.DEVNULL,
        )
    servers: list[Serving] = []
    echo = stub = None
    try:
        for name in names:
            data = work / f"data-{name}"
            shutil.rmtree(data, ignore_errors=True)
            shutil.copytree(base, data, symlinks=True)
            servers.append(Serving(work, data, name))
        rng = random.Random(11)
        receipts = [mixed_receipt(f"ab-{i}", rng, scale, 50) for i in range(args.calls + 20)]
        bodies = [json.dumps(r).encode() for r in receipts]
        messages = [json_format.ParseDict(r, pb.Receipt()) for r in receipts]
        replies = [servers[0].stub.Quote(m, timeout=10).SerializeToString() for m in messages]
        write_replies(work / "replies.bin", replies)
        stub = subprocess.Popen(
            [sys.executable, "-m", "bench.stub", str(work / "replies.bin")],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert stub.stdout is not None and echo.stdout is not None
        stub_channel = grpc.insecure_channel(f"127.0.0.1:{int(stub.stdout.readline())}")
        stub_rpc = pb_grpc.PosAgentStub(stub_channel)
        echo_conn = http_connect(int(echo.stdout.readline()))
        calls: list[Any] = []
        labels: list[str] = []
        for s in servers:
            calls.append(lambda k, s=s: s.stub.Quote(messages[k], timeout=10))
            labels.append(f"grpc {s.name}")
            calls.append(lambda k, s=s: http_post(s.http, "/v1/quote", bodies[k]))
            labels.append(f"http {s.name}")
        calls.append(lambda k: stub_rpc.Quote(messages[k], timeout=10))
        labels.append("grpc stub")
        calls.append(lambda k: http_post(echo_conn, "/echo", bodies[k]))
        labels.append("http echo")
        for k in range(20):  # warm every connection
            for call in calls:
                call(k)
        samples = interleave(calls, list(range(20, len(receipts))), rng)
        print(f"{args.calls} 50-line quotes, interleaved:")
        for label, s in zip(labels, samples, strict=True):
            print(f"  {label:<16} {json.dumps(stats(s))}")
        if args.mixed:
            for k in range(args.mixed):
                r = mixed_receipt(f"m-{k}", rng, scale, rng.choice((5, 20, 50, 200)))
                message = json_format.ParseDict(r, pb.Receipt())
                for s in servers:
                    with contextlib.suppress(grpc.RpcError):  # a refusal is a call too
                        (s.stub.Checkout if k % 4 == 0 else s.stub.Quote)(message, timeout=10)
        stub_channel.close()
        echo_conn.close()
    finally:
        for s in servers:
            print(f"  {s.name}: {json.dumps(s.stop())}")
        for proc in (stub, echo):
            if proc is not None and proc.stdin is not None:
                proc.stdin.close()
                proc.wait(timeout=10)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
