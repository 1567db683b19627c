"""Review 41, seg41: the hunt for a pytest worker that died in CI with "Fatal Python error:
Segmentation fault" while an idle server-reflection stream waited in a thread of the
agent's gRPC server (its dump: `_RequestIterator._next` under `grpc_decode._checked`).

Stress rounds of the agent's real gRPC server on 127.0.0.1 (idle reflection and health
Watch streams; stops, channel closes, new streams and garbage collection in varying
orders and threads) did not crash it; they froze it. What is checked here, each in a child
`python` so that a frozen server or a crash is the child's exit status and never hangs
or kills the pytest worker:

1. A health `Watch` stream opened while another one closed froze the whole gRPC server:
   grpcio's `HealthServicer` sends a Watch's first answer under its lock and waits there
   for the server's completion-queue thread to take the send, while that thread, running
   the closed stream's callback, waits for the same lock (grpc/grpc#43403). No call was
   answered any more and `server.stop()` never ended: a POS with client-side health
   checking (one Watch a channel) or a load balancer's probes froze a till's agent, and a
   hub's server. The idle reflection thread of the CI dump is what such a frozen server
   shows. `ReadinessHealth` now sends with no lock of the servicer held.
2. A readiness flipping while Watch streams open and close, then the graceful shutdown:
   each stream's last answer is the last status (SERVING, then NOT_SERVING for good),
   the server answers throughout and stops.
3. A generated stub made on a closed channel kills the process (grpcio 1.85.1 registers
   its methods on the closed channel's freed core channel: SIGSEGV): `PosAgentClient`
   given a closed channel now refuses it with a ValueError, and a call on a client whose
   channel was closed since is a ClientError (CANCELLED, as gRPC says of the calls a
   close ends), not a ValueError's traceback.
4. `tillpoint run` stopped by SIGTERM while a POS's health checker opens and closes Watch
   streams (and cancels its own at NOT_SERVING) exits 0 in its time: with grpcio's
   servicer the stop hung (3 rounds of 4), its graceful shutdown's NOT_SERVING sent
   under the lock a closing stream's callback waited for; systemd would have killed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from .conftest import REPO, free_port, snapshot

CHILD_TIMEOUT_S = 150  # a frozen server is caught by the child's own watchdog first

# The child: the agent's real gRPC server (`build_server`, as `tillpoint run` builds it).
# Its watchdog dumps the threads and exits 9 if anything waits for more than 60 s.
_WATCHES = r"""
import faulthandler, json, os, sys, threading, time
from pathlib import Path
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent

faulthandler.dump_traceback_later(60, exit=True)
data, snap, mode, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
agent = Agent(data, "till-1")
agent.load_snapshot(json.loads(Path(snap).read_text()))
server, port, health = build_server(agent, "127.0.0.1:0", max_workers=8)
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
stub = health_pb2_grpc.HealthStub(channel)
ASK = health_pb2.HealthCheckRequest()
done = threading.Event()


def answered(round_):
    try:
        stub.Check(health_pb2.HealthCheckRequest(service="nobody"), timeout=20)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            print(f"round {round_}: the server answered no call ({exc.code()})", flush=True)
            faulthandler.dump_traceback()
            os._exit(3)


def flip():
    ready = True
    while not done.is_set():
        ready = not ready
        health.set_ready(ready)


if mode == "flip":
    flipper = threading.Thread(target=flip)
    flipper.start()
for round_ in range(rounds):
    watches = [stub.Watch(ASK, timeout=30) for _ in range(4)]
    for watch in watches:
        try:
            next(watch)
        except grpc.RpcError:
            pass
    for watch in watches:
        watch.cancel()
    answered(round_)
if mode == "flip":
    done.set()
    flipper.join()
    health.set_ready(True)
    kept = [stub.Watch(ASK, timeout=30) for _ in range(3)]
    for watch in kept:  # the last status, whatever came before it
        while next(watch).status != health_pb2.HealthCheckResponse.SERVING:
            pass
    closing = [stub.Watch(ASK, timeout=30) for _ in range(3)]
    for watch in closing:
        next(watch)
    ending = threading.Thread(target=lambda: [w.cancel() for w in closing])
    ending.start()
    health.enter_graceful_shutdown()
    ending.join()
    for watch in kept:  # then NOT_SERVING for good
        while next(watch).status != health_pb2.HealthCheckResponse.NOT_SERVING:
            pass
    answered(rounds)
    health.set_ready(True)  # ignored from now on
    assert stub.Check(ASK, timeout=20).status == health_pb2.HealthCheckResponse.NOT_SERVING
channel.close()
server.stop(0).wait()
agent.close()
print("ok", flush=True)
"""


def _child(tmp_path: Path, mode: str, rounds: int) -> subprocess.CompletedProcess[str]:
    snap = tmp_path / "snapshot.json"
    snap.write_text(json.dumps(snapshot()))
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    command = [sys.executable, "-c", _WATCHES, str(tmp_path / "data"), str(snap), mode]
    return subprocess.run(
        [*command, str(rounds)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env=env,
    )


def test_watch_streams_opening_while_others_close_never_freeze_the_server(
    tmp_path: Path,
) -> None:
    """Four Watch streams opened, read and cancelled, 200 times over, each round followed
    by a call that must be answered: grpcio's servicer froze the server within a few
    rounds (a Check waited out its 20 s deadline; every thread was waiting)."""
    done = _child(tmp_path, "watch", 200)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-6000:]


def test_a_flipping_readiness_reaches_every_watch_last_and_the_shutdown_ends_them(
    tmp_path: Path,
) -> None:
    """The readiness flipped as fast as a thread can while streams open and close: the
    server answers throughout; once it stays SERVING every open stream's last answer is
    SERVING (two sends racing never leave an older one last), and after the graceful
    shutdown, with streams closing meanwhile, NOT_SERVING, for good."""
    done = _child(tmp_path, "flip", 40)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-6000:]


# ---------------------------------------------------------------- a stub on a closed channel

_CLOSED_STUB = r"""
import sys
import grpc
from tillpoint.agent.client import ClientError, PosAgentClient

channel = grpc.insecure_channel("127.0.0.1:9")
channel.close()
try:
    PosAgentClient(channel=channel)
except ValueError as exc:
    print("refused:", exc, flush=True)
open_one = grpc.insecure_channel("127.0.0.1:9")
client = PosAgentClient(channel=open_one, attempts=1, timeout=0.5)
open_one.close()  # its owner closed it under the client
try:
    client.status()
except ClientError as exc:
    print("call:", exc.code.name, exc, flush=True)
print("alive", flush=True)
"""


def test_a_client_given_a_closed_channel_refuses_it_instead_of_killing_the_process() -> None:
    """grpcio's generated stub registers each method on its channel's core channel, which
    a closed channel has freed: the process died with SIGSEGV, no traceback (the agent's
    own clients make their stub on the channel they just opened)."""
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _CLOSED_STUB],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "refused: the gRPC channel is closed", lines
    assert lines[1] == "call: CANCELLED CANCELLED: the gRPC channel is closed", lines
    assert lines[-1] == "alive"


def test_the_closed_channel_check_leaves_an_open_channel_alone() -> None:
    """`PosAgentClient`'s check asks an open channel its state without connecting, and
    closing the client leaves a channel it was given open. (The closed case runs in a
    child above: a regression would kill the pytest worker.)"""
    from tillpoint.agent.client import PosAgentClient

    channel = grpc.insecure_channel("127.0.0.1:9")
    try:
        client = PosAgentClient(channel=channel)
        client.close()  # not its own: left open
        assert channel._channel.check_connectivity_state(False) is not None
    finally:
        channel.close()


def test_in_this_suite_a_stub_on_a_closed_channel_fails_its_test_not_the_worker() -> None:
    """conftest's guard: the mistake a test can make (a reflection client or a stub on a
    channel it closed already) is that test's ValueError, not a dead pytest worker."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel("127.0.0.1:9")
    channel.close()
    with pytest.raises(ValueError, match="ServerReflectionInfo made on a closed gRPC channel"):
        ProtoReflectionDescriptorDatabase(channel)


# ---------------------------------------------------------------- `tillpoint run` at SIGTERM

TILLPOINT = str(Path(sys.executable).parent / "tillpoint")


def _run_stopped_amid_watches(data: Path) -> int | None:
    """One `tillpoint run` on free loopback ports, Watch streams opening and closing on it,
    then SIGTERM: its exit status, or None when it had not ended 40 s later (killed)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    grpc_port = free_port()
    env.update(
        GRPC_VERBOSITY="ERROR",
        TILLPOINT_DATA_DIR=str(data),
        TILLPOINT_METRICS__ENABLED="false",
        TILLPOINT_HTTP__LISTEN="127.0.0.1:0",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{grpc_port}",
    )
    if not data.exists():
        load = [TILLPOINT, "snapshot", "load", str(REPO / "examples" / "snapshot.json")]
        subprocess.run(load, env=env, check=True, capture_output=True, timeout=60)
    log = (data.parent / "run.log").open("ab")
    process = subprocess.Popen(
        [TILLPOINT, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    ask = health_pb2.HealthCheckRequest()
    stopping = threading.Event()
    threads: list[threading.Thread] = []
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = health_pb2_grpc.HealthStub(channel)

            def checker() -> None:  # a POS's: its Watch ended at NOT_SERVING
                with contextlib.suppress(grpc.RpcError):
                    watch = stub.Watch(ask, timeout=60)
                    while next(watch).status != health_pb2.HealthCheckResponse.NOT_SERVING:
                        pass
                    watch.cancel()

            def churn() -> None:  # channels coming and going, one Watch each
                while not stopping.is_set():
                    with contextlib.suppress(grpc.RpcError):
                        watch = stub.Watch(ask, timeout=5)
                        next(watch)
                        watch.cancel()

            threads += [threading.Thread(target=checker) for _ in range(3)]
            threads += [threading.Thread(target=churn) for _ in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                return process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                return None
        finally:
            stopping.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            log.close()
            for thread in threads:  # their calls end with the process, before the close
                thread.join(timeout=30)


def _stops(tmp_path: Path, rounds: int) -> None:
    for round_ in range(rounds):
        status = _run_stopped_amid_watches(tmp_path / "data")
        assert status == 0, (round_, status, (tmp_path / "run.log").read_text()[-3000:])


def test_tillpoint_run_stops_at_sigterm_while_watch_streams_open_and_close(
    tmp_path: Path,
) -> None:
    """One round (grpcio's servicer hung 3 of 4); its slow twin runs twenty."""
    _stops(tmp_path, 1)


@pytest.mark.slow
def test_tillpoint_run_stops_at_sigterm_while_watch_streams_open_and_close_many_times(
    tmp_path: Path,
) -> None:
    """Twenty rounds (~50 s): `make test-all`, not CI."""
    _stops(tmp_path, 20)
