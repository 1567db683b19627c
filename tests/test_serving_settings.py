"""The serving process's settings for its tail latency (issues 11 and 15): the collector
frozen after start-up in a real `tillpoint run`, and the HTTP interface's small reads run
on its event loop. Not timing tests: each checks that the setting is applied."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.app import YOUNG_THRESHOLD
from tillpoint.agent.http_api import ON_LOOP_MAX_BYTES, HttpServer
from tillpoint.agent.service import Agent

from .conftest import free_port, receipt, snapshot
from .test_http_api import Client

TIMEOUT = 30


def _gauges(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key[len(name) :]] = float(value)
    return out


def test_tillpoint_run_freezes_what_start_up_built_before_ready(tmp_path: Path) -> None:
    data = tmp_path / "data"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    exe = Path(sys.executable).parent / "tillpoint"
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-7")
    env.pop("TILLPOINT_HTTP__LISTEN", None)
    subprocess.run(
        [exe, "--data-dir", data, "snapshot", "load", snap], check=True, env=env, timeout=60
    )
    metrics_port = free_port()
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
        encoding="utf-8",
    )
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(TIMEOUT)
    proc = subprocess.Popen(
        [exe, "--config", conf, "--data-dir", data, "run"],
        env=dict(env, NOTIFY_SOCKET=str(notify)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while sock.recv(256) != b"READY=1":
            pass
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            text = answer.read().decode()
    finally:
        sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Start-up's modules, classes and servers are out of the collector's generations
    # (tens of thousands of objects; a bare interpreter freezes none).
    frozen = _gauges(text, "tillpoint_gc_frozen_objects")
    assert frozen[""] > 10_000
    assert _gauges(text, "tillpoint_gc_threshold")['{generation="0"}'] == YOUNG_THRESHOLD
    collections = _gauges(text, "tillpoint_gc_collections")
    assert set(collections) == {'{generation="0"}', '{generation="1"}', '{generation="2"}'}
    assert proc.returncode == 0


@pytest.fixture
def threads_of(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """The thread each agent call ran on, by method name."""
    seen: dict[str, list[str]] = {}

    def recorded(name: str) -> Callable[..., Any]:
        method = getattr(agent, name)

        def run(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(name, []).append(threading.current_thread().name)
            return method(*args, **kwargs)

        return run

    for name in ("quote", "identify", "balance", "checkout"):
        monkeypatch.setattr(agent, name, recorded(name))
    yield seen


def test_small_reads_run_on_the_event_loop_and_the_rest_in_the_pool(
    agent: Agent, threads_of: dict[str, list[str]]
) -> None:
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    try:
        c = Client(srv.port)
        assert c.post("/v1/quote", receipt("q-1")).status == 200
        assert c.post("/v1/identify", {"text": "2770000000017"}).status == 200
        assert c.post("/v1/balance", {"card": "2770000000017"}).status == 200
        assert c.post("/v1/checkout", receipt("c-1")).status == 200
        # A large body is parsed, run and encoded in the pool, off the loop.
        padded = json.dumps(receipt("q-2")) + " " * (ON_LOOP_MAX_BYTES + 1)
        assert c.post("/v1/quote", raw=padded.encode()).status == 200
        c.close()
    finally:
        srv.stop()
    assert threads_of["quote"][0] == "http"  # uvicorn's thread, its event loop
    assert threads_of["identify"] == ["http"]
    assert threads_of["balance"] == ["http"]
    assert threads_of["checkout"][0].startswith("http-call")  # the writes: the pool
    assert threads_of["quote"][1].startswith("http-call")


_ARENAS = """
import ctypes, sys, threading
from tillpoint.agent.app import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas()
keep = []
together = threading.Barrier(8)
def work():  # each thread's first malloc gets it an arena of its own, up to the limit
    keep.append([bytes(1000) for _ in range(100)])
    together.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph each, on stderr
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_serving_process_keeps_two_malloc_arenas() -> None:
    from tillpoint.agent.app import MALLOC_ARENAS

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _ARENAS, mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        return sum(1 for line in run.stderr.splitlines() if line.startswith("Arena "))

    assert arenas("default") > MALLOC_ARENAS  # glibc's own: an arena for each thread
    assert arenas("limit") == MALLOC_ARENAS


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from tillpoint.agent.app import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
