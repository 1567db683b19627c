"""Where a POST /v1/quote's CPU goes beyond the in-process quote (issue 11), at quick scale.

    python -m bench.http_split [--calls N] [--data DIR]

In one process, for each 50-line mixed receipt (`bench.run.mixed_receipt`), in a fresh
random order per receipt: the HTTP interface's steps one by one, the long way ("parse":
`parse_json`, "validate": `receipt_from_json`, "encode": `json_document(json_of(...))`)
and the way `http_api` takes now ("read": `receipt_of_body`, the receipt validated from
the bytes; "text": `results.json_text`), `Agent.quote`, the whole call through the ASGI
application (`http_api.Api`, driven in process with no socket) and the bare echo of
`bench.run._http_echo_app` (Starlette) through the same driver. "framework" is the ASGI
call minus read, quote and text; "echo" is what the echo's ASGI call costs. Then both
servers for real (uvicorn, h11, a socket), each in a process of its own, and their CPU
per request from /proc: the part of a request no in-process timer sees.

Every figure is CPU time of the calling thread (`time.thread_time`), median and p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.generate import Scale, write_full
from bench.run import EXE, REPO, _http_echo_app, http_connect, http_post, mixed_receipt


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(ordered[len(ordered) // 2] * 1000, 4),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 4),
        "mean": round(sum(ordered) / len(ordered) * 1000, 4),
    }


def asgi_driver(app: Any, path: str) -> Callable[[bytes], bytes]:
    """A POST of `body` to `app` at `path` with no socket: the answer's body."""
    loop = asyncio.new_event_loop()

    async def call(body: bytes) -> bytes:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8061),
            "state": {},
        }
        given = False
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(scope, receive, send)
        return b"".join(chunks)

    return lambda body: loop.run_until_complete(call(body))


def _cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.thread_time()
    out = fn()
    return time.thread_time() - start, out


def in_process(data: Path, bodies: list[bytes], rng: random.Random) -> dict[str, Any]:
    from tillpoint.agent.cli import json_document, parse_json
    from tillpoint.agent.http_api import Api, receipt_of_body
    from tillpoint.agent.results import json_text
    from tillpoint.agent.service import Agent
    from tillpoint.agent.wire import json_of, receipt_from_json

    agent = Agent(data, "bench-till")
    api = Api(agent)
    quote_asgi = asgi_driver(api, "/v1/quote")
    echo_asgi = asgi_driver(_http_echo_app(), "/echo")
    parts: dict[str, list[float]] = {
        k: []
        for k in ("parse", "validate", "read", "quote", "encode", "text", "steps", "asgi", "echo")
    }

    def steps(body: bytes) -> None:
        t_parse, doc = _cpu(lambda: parse_json(body, "request body"))
        t_validate, receipt = _cpu(lambda: receipt_from_json(doc))
        t_quote, result = _cpu(lambda: agent.quote(receipt))
        t_encode, _ = _cpu(lambda: json_document(json_of(result)))
        t_read, _ = _cpu(lambda: receipt_of_body(body))
        t_text, _ = _cpu(lambda: json_text(result))
        for key, value in (
            ("parse", t_parse),
            ("validate", t_validate),
            ("read", t_read),
            ("quote", t_quote),
            ("encode", t_encode),
            ("text", t_text),
        ):
            parts[key].append(value)
        parts["steps"].append(t_read + t_quote + t_text)

    for body in bodies[:20]:  # warm: imports, the cache's memos, the loop
        steps(body)
        quote_asgi(body)
        echo_asgi(body)
    for body in bodies[20:]:
        order = [0, 1, 2]
        rng.shuffle(order)
        for k in order:
            if k == 0:
                steps(body)
            elif k == 1:
                parts["asgi"].append(_cpu(lambda b=body: quote_asgi(b))[0])
            else:
                parts["echo"].append(_cpu(lambda b=body: echo_asgi(b))[0])
    agent.close()
    out = {key: _ms(value) for key, value in parts.items()}
    out["framework (asgi - steps, means)"] = round(out["asgi"]["mean"] - out["steps"]["mean"], 4)
    out["beyond the quote (asgi - quote, means)"] = round(
        out["asgi"]["mean"] - out["quote"]["mean"], 4
    )
    return out


_SERVER = """
import sys
from pathlib import Path
from bench.run import _http_echo_app
from tillpoint.agent.app import settle_collector
from tillpoint.agent.http_api import AsgiThread, HttpServer
from tillpoint.agent.service import Agent
if sys.argv[1] == "echo":
    server = AsgiThread(_http_echo_app(), "127.0.0.1", 0)
else:
    agent = Agent(Path(sys.argv[2]), "bench-till")
    server = HttpServer(agent, "127.0.0.1:0")
server.start()
settle_collector()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def over_sockets(data: Path, bodies: list[bytes]) -> dict[str, Any]:
    """Each server's CPU per request over a keep-alive connection (uvicorn, h11, socket)."""
    out: dict[str, Any] = {}
    for kind, path in (("quote", "/v1/quote"), ("echo", "/echo")):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, kind, str(data)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None
        conn = http_connect(int(proc.stdout.readline()))
        try:
            for body in bodies[:20]:
                http_post(conn, path, body)
            before = _proc_cpu(proc.pid)
            start = time.perf_counter()
            for body in bodies[20:]:
                http_post(conn, path, body)
            wall = time.perf_counter() - start
            cpu = _proc_cpu(proc.pid) - before
        finally:
            conn.close()
            proc.stdin.close()
            proc.wait(timeout=15)
        n = len(bodies) - 20
        out[kind] = {
            "server_cpu_ms": round(cpu / n * 1000, 3),
            "wall_ms": round(wall / n * 1000, 3),
        }
    out["quote - echo, server CPU ms"] = round(
        out["quote"]["server_cpu_ms"] - out["echo"]["server_cpu_ms"], 3
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="50-line receipts")
    parser.add_argument("--data", type=Path, help="a quick-scale data directory to reuse")
    args = parser.parse_args()
    scale = Scale.named("quick")
    with tempfile.TemporaryDirectory(prefix="tillpoint-split-") as tmp:
        data = args.data
        if data is None or not data.exists():
            data = data or Path(tmp) / "data"
            snap = write_full(Path(tmp) / "full.jsonl", scale)
            subprocess.run(
                [EXE, "--data-dir", data, "snapshot", "load", snap],
                check=True,
                env={**os.environ, "TILLPOINT_DEVICE_ID": "bench-till"},
                stdout=subprocess.DEVNULL,
            )
        rng = random.Random(11)
        bodies = [
            json.dumps(mixed_receipt(f"split-{i}", rng, scale, 50)).encode()
            for i in range(args.calls + 20)
        ]
        report = {"in_process_cpu_ms": in_process(data, bodies, rng)}
        report["over_sockets"] = over_sockets(data, bodies)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
