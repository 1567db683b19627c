"""Review 42 (ledger42): the till's SQLite connections and the threads that use them.

Session 40's CI lost a pytest worker to a segmentation fault: a `sqlite3.Connection`
closed by one thread while another thread was inside a statement on it is freed under
that thread (a crash in C, not a Python exception). Session 41 made `Agent.close` wait
for the agent's lock. This file checks the other users of a till's connections that a
stop closes, each raced for real in a child `python` (a crash is the child's exit status,
never the pytest worker's death), with the stop's waits lowered in the child so that a
stop meets the thread mid-statement:

- `SyncService.stop` waits `STOP_WAIT_S` (10 s) for the sync thread, then closed the
  pusher's ledger connection whether or not the thread had ended (and wrote the sync
  state on it from the stopping thread too): a sync thread still on a hub call or a busy
  ledger past the wait then met its connection freed under it. The child starts and
  stops a sync service with no wait at all, its thread looping on the pusher's
  connection (`push_check_s = 0`), 20 times (400 in `make test-all`); before the fix
  it died of SIGSEGV within 2-3 s in each of four runs.
- The hub's SQLite store (`SqliteHubStore`, one connection a thread) closed every
  thread's connection at `close`, whichever thread was inside a statement on it: `hub
  serve` stopped while its snapshot builder built (a chain-scale build takes minutes,
  the stop waits `BUILD_STOP_WAIT_S`, 10 s) freed the builder's connection under it. The
  default part races a thread reading the store with `close` (200 rounds, reliably
  SIGSEGV before the fix); `make test-all` stops real hubs while their builder builds,
  with no wait for it (300 rounds; crashed in one of two runs of 60 before the fix).
- The suite's gRPC fixtures stopped the server and closed the agent with a health
  `Watch`'s follower thread still reading `Agent.status` (session 41 saw it read the
  closed agent). `ReadinessHealth.stop_following` ends it first, as `run` does; pinned
  here over a real server and real Watch streams.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import snapshot

# A stop with no wait for the sync thread, raced with that thread's loop on the
# pusher's connection: the thread is inside a statement at most stops.
SYNC_CHILD = r"""
import faulthandler, random, sys, time
from dataclasses import replace
from pathlib import Path
from tillpoint.sync import service as sync_service
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import FAST, LoopbackHub, sample_master_data
from tillpoint.sync.service import SyncService

faulthandler.enable()
faulthandler.dump_traceback_later(150, exit=True)  # a stop that never ends: exit 1
base, rounds, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sync_service.STOP_WAIT_S = 0.0  # the wait a busy hub or ledger outlasts, made nothing
hub = LoopbackHub(base / "hub", data=sample_master_data())
till = hub.till("till-1", base / "till", start=False)
spin = replace(FAST, push_check_s=0.0)  # the sync loop reads the outbox without a pause
rng = random.Random(seed)
left_open = 0
for n in range(rounds):
    enrollment = till.link.enrollment
    service = SyncService(till.agent, HubLink(hub.address, enrollment), enrollment, spin)
    service.start()
    time.sleep(rng.uniform(0.0, 0.02))
    service.stop()
    for thread in service._threads:
        thread.join(60)  # a loaded machine (load 14) may hold a thread seconds
        assert not thread.is_alive(), "a sync thread did not end after its stop"
    # the thread that outlived the stop closed its own connection when it ended
    left_open += service.pusher._conn is not None
assert left_open == 0, f"{left_open} pusher connection(s) left open"
till.link.close()
till.authoriser.close()
till.agent.close()
hub.stop()
print("rounds done")
"""


# A thread reading the hub's store while the main thread closes it.
STORE_CHILD = r"""
import faulthandler, sys, threading, time
from pathlib import Path
from tillpoint.sync.hub_server import HubDir
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

faulthandler.enable()
faulthandler.dump_traceback_later(150, exit=True)
base, rounds = Path(sys.argv[1]), int(sys.argv[2])
LoopbackHub(base / "hub", data=sample_master_data(), start=False).server.store.close()
hub_dir = HubDir(base / "hub")
for n in range(rounds):
    store = hub_dir.open_store()
    stop, reading = threading.Event(), threading.Event()

    def reader() -> None:
        while not stop.is_set():
            assert store.latest() is not None
            store.delta_floor()
            reading.set()
        store.close()  # what the reading thread opened after the close: its own to close

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    reading.wait()
    time.sleep(0.0005 * (n % 5))
    store.close()
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
print("rounds done")
"""

# `hub serve`'s stop while the snapshot builder builds, with no wait for the build.
HUB_STOP_CHILD = r"""
import faulthandler, sys, time
from pathlib import Path
from tillpoint.sync import hub_server
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

faulthandler.enable()
faulthandler.dump_traceback_later(600, exit=True)
base, rounds = Path(sys.argv[1]), int(sys.argv[2])
hub_server.BUILD_STOP_WAIT_S = 0.0
LoopbackHub(base / "hub", data=sample_master_data(), start=False).server.store.close()
for n in range(rounds):
    hub = LoopbackHub(base / "hub", publish=False)
    hub.server.builder.request_full(hub.publish())  # a new version, built now
    time.sleep(0.001 * (n % 20))
    hub.stop()
print("rounds done")
"""


def _child(code: str, *args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sync_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    done = _child(SYNC_CHILD, str(tmp_path), str(rounds), str(seed))
    assert done.returncode == 0, (done.returncode, done.stderr[-4000:])
    assert "rounds done" in done.stdout


def test_a_sync_stop_that_outwaits_its_thread_never_closes_the_ledger_under_it(
    tmp_path: Path,
) -> None:
    _sync_rounds(tmp_path, 20, seed=42)


@pytest.mark.slow
def test_a_sync_stop_that_outwaits_its_thread_never_closes_the_ledger_under_it_long(
    tmp_path: Path,
) -> None:
    _sync_rounds(tmp_path, 400, seed=4242)


def test_a_hub_store_closed_while_another_thread_reads_it_never_crashes(tmp_path: Path) -> None:
    done = _child(STORE_CHILD, str(tmp_path), "200")
    assert done.returncode == 0, (done.returncode, done.stderr[-4000:])
    assert "rounds done" in done.stdout


@pytest.mark.slow
def test_a_hub_stopped_while_its_builder_builds_never_crashes(tmp_path: Path) -> None:
    done = _child(HUB_STOP_CHILD, str(tmp_path), "300", timeout=650)
    assert done.returncode == 0, (done.returncode, done.stderr[-4000:])
    assert "rounds done" in done.stdout


def test_the_health_follower_has_ended_when_stop_following_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tillpoint.agent.server import build_server
    from tillpoint.agent.service import Agent

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    before = set(threading.enumerate())
    server, port, health = build_server(agent, "127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    streams = [
        health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        for _ in range(3)
    ]
    try:
        for stream in streams:
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        followers = [t for t in set(threading.enumerate()) - before if t.name == "health-watch"]
        assert followers, "an open Watch has a follower reading the agent"
        with caplog.at_level(logging.WARNING, logger="tillpoint"):
            assert health.stop_following()
            assert not any(t.is_alive() for t in followers)
            agent.close()  # nothing reads it any more
            assert next(streams[0]).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()
        server.stop(0).wait()
        agent.close()
    assert "readiness unavailable" not in caplog.text
