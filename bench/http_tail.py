"""Where an HTTP quote's time goes, client and server, request by request (issue 11).

    python -m bench.http_tail [--data DIR --scale chain] [--calls 3000] [--pause-ms 1]

The agent's HTTP server and the bench's echo run in a child process, as in `bench.run`'s
HTTP figure; this process sends each 50-line receipt of the bench's mix to both, in a
random order per receipt. The child times every request inside: its wall time and its
thread's CPU from the ASGI call to the answer sent, and within it `Agent.quote`, the
receipt's parse (`receipt_of_body`) and the answer's text (`json_text`). Clocks are
`CLOCK_MONOTONIC`, shared by both processes, so the time outside the server's request
(the client's send, the kernel, h11's parse, the loop's wake-up; the answer's way back) is
the client's time minus the server's.

`--pause-ms`: then, in this process, the same quote with and without a pause of that
many milliseconds before it (each receipt drawn to one or the other), CPU of the calling
thread: what waiting for the next request costs the next quote (caches gone cold).

`--data DIR`: an agent's data directory with a snapshot loaded (`python -m bench.run
--keep` leaves one in its work directory) and `--scale` its scale; by default quick-scale
data is generated in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tillpoint.agent.app import settle_collector
from tillpoint.agent.http_api import receipt_of_body
from tillpoint.agent.results import json_text
from tillpoint.agent.service import Agent

from bench.generate import Scale, write_full
from bench.run import REPO, http_connect, mixed_receipt, stats

# The child: the agent's HTTP server and the echo, each request timed inside.
_CHILD = """
import json, sys, time
from pathlib import Path
from bench.run import _http_echo_app, serve_quote_and_echo
from tillpoint.agent import http_api
from tillpoint.agent.http_api import Api
from tillpoint.agent.service import Agent

agent = Agent(Path(sys.argv[1]), "bench-till")
seen = {"request": [], "quote": [], "parse": [], "text": [], "echo": []}

def timed(name, fn):
    def run(*args):
        cpu = time.thread_time()
        try:
            return fn(*args)
        finally:
            seen[name].append(time.thread_time() - cpu)
    return run

agent.quote = timed("quote", agent.quote)
http_api.receipt_of_body = timed("parse", http_api.receipt_of_body)
http_api.json_text = timed("text", http_api.json_text)
call = Api.__call__

async def request(self, scope, receive, send):
    wall, cpu = time.perf_counter(), time.thread_time()
    await call(self, scope, receive, send)
    seen["request"].append((wall, time.perf_counter(), time.thread_time() - cpu))

Api.__call__ = request
echo_app = _http_echo_app()

async def echo(scope, receive, send):
    wall, cpu = time.perf_counter(), time.thread_time()
    await echo_app(scope, receive, send)
    if scope["type"] == "http":
        seen["echo"].append((wall, time.perf_counter(), time.thread_time() - cpu))

serve_quote_and_echo(agent, echo)  # the servers of bench.run's HTTP figures
print(json.dumps(seen), flush=True)
"""

WARM = 20


def _post(conn: Any, path: str, body: bytes) -> tuple[float, float, float, float]:
    """(start, body sent, answer's head read, answer read) on the monotonic clock."""
    start = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    sent = time.perf_counter()
    response = conn.getresponse()
    head = time.perf_counter()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {answer[:200]!r}")
    return start, sent, head, time.perf_counter()


def _row(name: str, seconds: list[float]) -> None:
    s = stats(seconds)
    print(f"  {name:<46} p50 {s['p50_ms']:7.3f}   p99 {s['p99_ms']:7.3f}   max {s['max_ms']:7.3f}")


def over_http(data: Path, scale: Scale, calls: int, rng: random.Random) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        ports = json.loads(child.stdout.readline() or b"{}")
        if "quote" not in ports:
            raise RuntimeError("the HTTP servers did not start")
        bodies = [
            json.dumps(mixed_receipt(f"t-{i}", rng, scale, 50)).encode()
            for i in range(calls + WARM)
        ]
        quote_conn, echo_conn = http_connect(ports["quote"]), http_connect(ports["echo"])
        client: dict[str, list[tuple[float, float, float, float]]] = {"quote": [], "echo": []}
        order = [("quote", quote_conn, "/v1/quote"), ("echo", echo_conn, "/echo")]
        for body in bodies:
            rng.shuffle(order)
            for name, conn, path in order:
                client[name].append(_post(conn, path, body))
        quote_conn.close()
        echo_conn.close()
        child.stdin.close()
        seen = json.loads(child.stdout.readline())
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)

    ms = f"{calls} 50-line receipts, ms"
    print(f"over HTTP ({ms}; the server's rows are inside its request, CPU of its thread)")
    for name, inside in (("quote", seen["request"]), ("echo", seen["echo"])):
        outer = client[name][WARM:]
        server = inside[WARM:]
        _row(f"{name}: the client's call", [c[3] - c[0] for c in outer])
        _row(f"{name}: the server's request, wall", [s[1] - s[0] for s in server])
        _row(f"{name}: the server's request, CPU", [s[2] for s in server])
        _row(
            f"{name}: outside it (send, kernel, h11, answer back)",
            [(c[3] - c[0]) - (s[1] - s[0]) for c, s in zip(outer, server, strict=True)],
        )
        _row(
            f"{name}: client to server (body sent, loop woken)",
            [s[0] - c[0] for c, s in zip(outer, server, strict=True)],
        )
    for name, label in (
        ("quote", "Agent.quote"),
        ("parse", "the receipt from the body"),
        ("text", "the answer's text"),
    ):
        _row(f"inside the quote's request: {label}, CPU", seen[name][WARM:])


def pauses(data: Path, scale: Scale, calls: int, pause_ms: float, rng: random.Random) -> None:
    agent = Agent(data, "bench-till")
    settle_collector()
    out: dict[bool, list[float]] = {False: [], True: []}
    bodies = [
        json.dumps(mixed_receipt(f"p-{i}", rng, scale, 50)).encode() for i in range(calls + WARM)
    ]
    try:
        for i, body in enumerate(bodies):
            paused = rng.random() < 0.5
            if paused:
                time.sleep(pause_ms / 1000)
            cpu = time.thread_time()
            json_text(agent.quote(receipt_of_body(body)))
            if i >= WARM:
                out[paused].append(time.thread_time() - cpu)
    finally:
        agent.close()
    print(f"in process ({calls} receipts, the body's parse + quote + text, CPU, ms)")
    _row("right after the previous quote", out[False])
    _row(f"after a pause of {pause_ms:g} ms", out[True])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, help="an agent data dir with a snapshot loaded")
    parser.add_argument("--scale", default="quick", choices=["chain", "store", "quick", "tiny"])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pause-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    scale = Scale.named(args.scale)
    rng = random.Random(args.seed)
    work = None
    data = args.data
    if data is None:
        work = Path(tempfile.mkdtemp(prefix="tillpoint-http-tail-"))
        data = work / "data"
        agent = Agent(data, "bench-till")
        with write_full(work / "full.jsonl", scale).open("rb") as lines:
            agent.load_snapshot_lines(lines)
        agent.close()
    try:
        over_http(data, scale, args.calls, rng)
        if args.pause_ms:
            pauses(data, scale, args.calls, args.pause_ms, rng)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
