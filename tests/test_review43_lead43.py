"""Review 43 (lead): session 42's CI failures at the harness.

- `tillpoint run` wrote ``serving.json`` (the CLI's way to it, agent/forward.py) after its
  HTTP interface had started: a POS that waited for /healthz and then ran a CLI checkout
  could have it run in a process of its own, without this run's printer
  (test_review25_print25's run-forwarded checkout said "no coupon printer configured").
  The file is now written before the interface answers, and removed if it fails to start.
- rev35c's other program held [::1]:PORT on the kernel's pick, and the hub's 0.0.0.0:PORT
  was refused as in use by an outgoing connection's end: its ports now come from
  `free_port` (tests/test_review35_rev35b.py).
Real parts: `tillpoint run` in-process on real sockets and a real data directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import forward
from tillpoint.agent.errors import TillpointError
from tillpoint.agent.http_api import HttpServer

from .conftest import CLI


def test_serving_json_is_written_before_the_http_interface_answers(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (the CLI forwards to the serving run): when the HTTP interface starts
    answering, ``serving.json`` names it already; an interface that fails to start leaves
    no file behind (the run exits 1, one line)."""
    seen: list[Any] = []

    def start(self: HttpServer) -> None:
        path = tmp_path / "data" / forward.SERVING
        seen.append(path.exists() and forward._serving(path.parent)["port"] == self.port)
        self.serve.stop_unstarted()
        raise TillpointError("the HTTP interface did not start on 127.0.0.1 (test)")

    monkeypatch.setattr(HttpServer, "start", start)
    for key in ("SERVER", "HTTP"):
        monkeypatch.setenv(f"TILLPOINT_{key}__LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("TILLPOINT_METRICS__ENABLED", "false")
    run = cli("run")
    assert run.code == 1 and "Traceback" not in run.err, run.err
    assert "the HTTP interface did not start" in run.err
    assert seen == [True]  # published before the interface could answer
    assert not (tmp_path / "data" / forward.SERVING).exists()  # and withdrawn


def test_a_connection_made_before_the_http_interface_starts_is_answered_once_it_does(
    tmp_path: Path,
) -> None:
    """CONTRACT §12: `run` starts gRPC first, then publishes ``serving.json``, then the HTTP
    interface; its port listens from the moment it is bound, so a POS (or the CLI) that
    connects in between waits in the kernel's backlog and is answered once the interface
    starts; it was refused (ECONNREFUSED) and a CLI call ran in a process of its own."""
    import http.client

    from tillpoint.agent.service import Agent

    agent = Agent(tmp_path / "data", "till-1")
    server = HttpServer(agent, "127.0.0.1:0")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.connect()  # refused before
        conn.request("GET", "/healthz")
        server.start()
        answer = conn.getresponse()
        assert answer.status == 503  # no snapshot yet: answered, not refused
        answer.read()
        conn.close()
    finally:
        server.stop() if server.serve.thread.is_alive() else server.serve.stop_unstarted()
        agent.close()


def test_a_run_whose_http_interface_fails_to_start_stops_what_it_started(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: `run` whose HTTP interface does not start exits 1 in one line, and
    stops what it had started: its gRPC port is free again, the data directory's lock
    is let go (another `run` could take it), no thread of its own is left (called in a
    process that goes on, it left gRPC serving on an open agent)."""
    import socket
    import threading

    from .conftest import free_port

    grpc_port = free_port()
    before = {t.ident for t in threading.enumerate()}

    def start(self: HttpServer) -> None:
        raise TillpointError("the HTTP interface did not start on 127.0.0.1 (test)")

    monkeypatch.setattr(HttpServer, "start", start)
    monkeypatch.setenv("TILLPOINT_SERVER__LISTEN", f"127.0.0.1:{grpc_port}")
    monkeypatch.setenv("TILLPOINT_HTTP__LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("TILLPOINT_METRICS__ENABLED", "false")
    run = cli("run")
    assert run.code == 1 and "the HTTP interface did not start" in run.err, run.err
    with socket.socket() as probe:  # gRPC's port let go
        probe.bind(("127.0.0.1", grpc_port))
    from tillpoint.agent.lock import DataDirLock

    DataDirLock(tmp_path / "data").acquire().release()  # the lock let go
    # the signals' relay (agent/systemd.py) is one a process, for the process's life
    mine = [t for t in threading.enumerate() if t.ident not in before and t.name != "signals"]
    left = [t for t in mine if t.is_alive()]
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [t for t in left if t.is_alive()]
    assert not left, left


def test_a_sigterm_taken_while_the_main_thread_waits_on_the_stop_event_stops_it() -> None:
    """CONTRACT §10 (`run` and `hub serve` stop at SIGTERM). Python runs a signal's handler
    in the main thread wherever it is: inside `Event.wait` of the stop event, holding that
    event's lock. The handler called `Event.set`, which took the same lock: the process
    hung for good (`hub serve` in one stop of ~25 under load, CI review 43; `run` waits
    the same way). The handler now only writes to a pipe that a thread of its own reads."""
    import logging
    import signal
    import threading

    from tillpoint.agent import systemd

    done = threading.Event()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    systemd.on_signals(done.set, logging.getLogger("test"))
    try:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)

        def inside_wait() -> None:
            with done._cond:  # type: ignore[attr-defined]  # as `done.wait` holds it
                handler(signal.SIGTERM, None)

        # in a thread of its own: before the fix it waits for ever, and the test says so
        waiter = threading.Thread(target=inside_wait, daemon=True)
        waiter.start()
        waiter.join(30)
        assert not waiter.is_alive(), "the handler waited for the lock its own thread held"
        assert done.wait(30)  # and the stop was asked for
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
