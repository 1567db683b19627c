"""An A/B of the HTTP interface's own code (issue 11), at quick scale.

    python -m bench.http_ab [--calls N] [--rounds R] [--base REV] [--agent] [--data DIR]

Three servers, each in a process of its own on its own copy of the same quick-scale data
directory, each an `Agent` behind uvicorn as `tillpoint run` serves it, the collector
settled as `run` does (`app.settle_collector`): "old", `agent/http_api.py` as it was at
git revision REV (loaded from `git show`, over today's agent; with `--agent`, the whole
`agent/` of REV, imported as the package `tillpoint_ab_old` as `bench.known_card --ab`
does, so a change anywhere on the quote's path is compared), "new", the code here, and
the bare echo of `bench.run._http_echo_app`. One client (this process) sends every
50-line mixed receipt (`bench.run.mixed_receipt`) to the three, in a fresh random order
per receipt (`bench.run.interleave`), over a keep-alive connection each; every answer of
old and new is checked to be the same bytes. Printed per round: p50/p99 wall time of each,
and each server's CPU per request (from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.generate import Scale, write_full
from bench.http_split import _proc_cpu
from bench.known_card import old_agent_dir
from bench.run import EXE, REPO, http_connect, interleave, mixed_receipt, stats

SERVER = """
import importlib.util, json, sys, time
from pathlib import Path
from bench.run import _http_echo_app
from tillpoint.agent.app import settle_collector
from tillpoint.agent.service import Agent
kind, data, old_source = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "echo":
    from tillpoint.agent.http_api import AsgiThread
    server = AsgiThread(_http_echo_app(), "127.0.0.1", 0)
else:
    if kind == "old" and Path(old_source).is_dir():  # --agent: the whole agent/ of REV
        sys.path.insert(0, old_source)
        import tillpoint_ab_old.http_api as module
        from tillpoint_ab_old.service import Agent
    elif kind == "old":
        spec = importlib.util.spec_from_file_location("tillpoint.agent._http_api_old", old_source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        from tillpoint.agent import http_api as module
    agent = Agent(Path(data), "bench-till")
    server = module.HttpServer(agent, "127.0.0.1:0")
# Each request timed inside the server, from the ASGI call to its answer sent: wall and
# the loop thread's CPU (the one connection's request is all the loop does meanwhile).
timings = []
app = server.server.config.app if kind == "echo" else server.api
served = type(app).__call__
async def timed(self, scope, receive, send):
    wall, cpu = time.perf_counter(), time.thread_time()
    await served(self, scope, receive, send)
    timings.append((time.perf_counter() - wall, time.thread_time() - cpu))
type(app).__call__ = timed
server.start()
settle_collector()
print(server.port, flush=True)
for _ in sys.stdin:  # a line: this round's figures, then a fresh round
    out = {}
    for name, k in (("wall", 0), ("cpu", 1)):
        ordered = sorted(t[k] for t in timings)
        n = len(ordered)
        out[name] = [round(ordered[n // 2] * 1000, 3), round(ordered[int(n * 0.99)] * 1000, 3)]
    print(json.dumps(out), flush=True)
    timings.clear()
server.stop()
"""


def _post(conn: Any, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer: bytes = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {answer[:200]!r}")
    return answer


def _inside(proc: subprocess.Popen[bytes]) -> dict[str, list[float]]:
    """The server's own timings of the requests since the last ask (ms: p50, p99)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"\n")
    proc.stdin.flush()
    found: dict[str, list[float]] = json.loads(proc.stdout.readline())
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="50-line receipts a round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base", default="d9e4ee2", help="git revision of the old code")
    parser.add_argument("--agent", action="store_true", help="old: the whole agent/ of --base")
    parser.add_argument("--data", type=Path, help="a quick-scale data directory to reuse")
    args = parser.parse_args()
    scale = Scale.named("quick")
    work = Path(tempfile.mkdtemp(prefix="tillpoint-http-ab-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        base = args.data
        if base is None or not base.exists():
            base = base or work / "data"
            snap = write_full(work / "full.jsonl", scale)
            subprocess.run(
                [EXE, "--data-dir", base, "snapshot", "load", snap],
                check=True,
                env={**os.environ, "TILLPOINT_DEVICE_ID": "bench-till"},
                stdout=subprocess.DEVNULL,
            )
        old_source = old_agent_dir(args.base, work) if args.agent else work / "http_api_old.py"
        if not args.agent:
            old_source.write_bytes(
                subprocess.run(
                    ["git", "show", f"{args.base}:agent/http_api.py"],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                ).stdout
            )
        conns = {}
        for kind in ("old", "new", "echo"):
            data = work / f"data-{kind}"
            shutil.copytree(base, data, symlinks=True)
            procs[kind] = subprocess.Popen(
                [sys.executable, "-c", SERVER, kind, str(data), str(old_source)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            out = procs[kind].stdout
            assert out is not None
            conns[kind] = http_connect(int(out.readline()))
        rng = random.Random(11)
        paths = {"old": "/v1/quote", "new": "/v1/quote", "echo": "/echo"}
        for round_no in range(args.rounds):
            bodies = [
                json.dumps(mixed_receipt(f"ab{round_no}-{i}", rng, scale, 50)).encode()
                for i in range(args.calls + 20)
            ]
            for body in bodies[:20]:  # warm each connection and server
                old, new = (_post(conns[k], paths[k], body) for k in ("old", "new"))
                assert old == new, (old[:200], new[:200])
                _post(conns["echo"], "/echo", body)
            kinds = list(conns)
            calls = [lambda body, k=k: _post(conns[k], paths[k], body) for k in kinds]
            for kind in kinds:  # the warm-up's timings out
                _inside(procs[kind])
            cpu_before = {k: _proc_cpu(procs[k].pid) for k in kinds}
            samples = interleave(calls, bodies[20:], rng)
            inside = {k: _inside(procs[k]) for k in kinds}
            cpu = {
                k: round((_proc_cpu(procs[k].pid) - cpu_before[k]) / args.calls * 1000, 3)
                for k in kinds
            }
            # the same answers, byte for byte, on a sample of this round's bodies (untimed)
            for body in bodies[20::50]:
                assert _post(conns["old"], "/v1/quote", body) == _post(
                    conns["new"], "/v1/quote", body
                )
            print(f"round {round_no + 1}: {args.calls} 50-line quotes, interleaved")
            for kind, s in zip(kinds, samples, strict=True):
                print(
                    f"  {kind:<5} {json.dumps(stats(s))}  server CPU/request {cpu[kind]} ms;"
                    f" inside the server p50/p99: wall {inside[kind]['wall']},"
                    f" loop CPU {inside[kind]['cpu']}"
                )
            figures = dict(zip(kinds, (stats(s) for s in samples), strict=True))
            for kind in ("old", "new"):
                print(
                    f"  {kind}: p99 - echo p99 = "
                    f"{figures[kind]['p99_ms'] - figures['echo']['p99_ms']:.3f} ms,"
                    f" p50 - echo p50 = {figures[kind]['p50_ms'] - figures['echo']['p50_ms']:.3f}"
                )
        for conn in conns.values():
            conn.close()
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
