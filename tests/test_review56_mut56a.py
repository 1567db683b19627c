"""Review 56 (mut56a): mutation testing of the till's service edges — the `PosAgent`
server's bearer token (`agent/grpc_auth.py`), the standard gRPC health service of the till
and the hub (`agent/grpc_health.py`), sd_notify, the watchdog and the signals
(`agent/systemd.py`), a root command on an installed data directory (`agent/privileges.py`)
and the words a fraction in an integer field is told (`agent/advice.py`). Each test pins a
rule a surviving mutant (or a hand-made one the tool cannot make) broke and no test held,
or one of the two faults the review fixed (a method nobody serves answered without the
token; an offer's `weekdays` told "of days"). Real parts: real gRPC servers on 127.0.0.1,
a real `NOTIFY_SOCKET` datagram socket, real signals to a child process, real `tillpoint`
commands run as root that switch to another uid, the CLI's own `snapshot load`.
docs/DECISIONS.md, "Review 56 (mut56a)", lists the mutants."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.agent import systemd
from tillpoint.agent.service import Agent

from .conftest import CLI, grpc_served, snapshot
from .test_privileges import SYSTEM_PYTHON, owners, tillpoint

TIMEOUT = 10
TOKEN = "s3cret-token"
REFUSAL = "missing or wrong token: send the metadata authorization: Bearer <token>"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# ---------------------------------------------------------------- grpc_auth: the token


@pytest.fixture
def guarded(agent: Agent) -> Iterator[grpc.Channel]:
    """A channel to `agent`'s gRPC server that asks for the token `TOKEN`."""
    with (
        grpc_served(agent, token=TOKEN) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield channel


def _refused_without_the_token(call: grpc.RpcError) -> None:
    assert call.code() is grpc.StatusCode.UNAUTHENTICATED
    assert call.details() == REFUSAL


def test_a_health_watch_without_the_token_is_refused_and_with_it_streams(
    guarded: grpc.Channel,
) -> None:
    """A `Watch` (a unary-stream call: the refusal takes the handler's own kind) without
    the token is refused before the health service answers anything: a load balancer
    with no token learns nothing of the till; with it, the stream says SERVING."""
    stub = health_pb2_grpc.HealthStub(guarded)
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        stream = stub.Watch(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as refused:
            next(stream)
        _refused_without_the_token(refused.value)
    good = (("authorization", f"Bearer {TOKEN}"),)
    stream = stub.Watch(health_pb2.HealthCheckRequest(), metadata=good, timeout=TIMEOUT)
    try:
        assert next(stream).status == SERVING
    finally:
        stream.cancel()


def test_bytes_that_are_no_request_sent_without_the_token_are_unauthenticated(
    guarded: grpc.Channel,
) -> None:
    """Bytes that are no `Receipt` (not protobuf; a field cut short) sent with no token:
    UNAUTHENTICATED, as any call without it, never INVALID_ARGUMENT, which would tell a
    caller without the token what the call expects (the refusal drops the request's
    decoder); with the token they are INVALID_ARGUMENT."""
    quote = guarded.unary_unary("/tillpoint.v1.PosAgent/Quote")
    for body in (b"\xff\xff\xff", b"\x0a" + b"\x80" * 12):
        with pytest.raises(grpc.RpcError) as refused:
            quote(body, timeout=TIMEOUT)
        _refused_without_the_token(refused.value)
    with pytest.raises(grpc.RpcError) as bad:
        quote(b"\xff\xff\xff", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=TIMEOUT)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_method_nobody_serves_is_refused_without_the_token_as_any_other(
    guarded: grpc.Channel,
) -> None:
    """CONTRACT §12 (token auth): every call without the token is UNAUTHENTICATED, one the
    till does not serve too, as the HTTP door's unknown path is 401 (review 36, spec36f).
    It was UNIMPLEMENTED "Method not found!": a caller with no token could tell the
    methods the till serves from the rest by probing, what refusing reflection without the
    token keeps from it, and a POS whose client names a method this release lacks was
    told that before its missing token. With the token it is UNIMPLEMENTED, as before.
    Failed before the fix."""
    for method in ("/tillpoint.v1.PosAgent/Nope", "/nobody.Service/Call"):
        unary = guarded.unary_unary(method)
        with pytest.raises(grpc.RpcError) as refused:
            unary(b"", timeout=TIMEOUT)
        _refused_without_the_token(refused.value)
        streaming = guarded.stream_stream(method)
        with pytest.raises(grpc.RpcError) as refused:
            wrong = (("authorization", "Bearer no"),)
            next(streaming(iter([b""]), metadata=wrong, timeout=TIMEOUT))
        _refused_without_the_token(refused.value)
        with pytest.raises(grpc.RpcError) as unknown:
            unary(b"", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=TIMEOUT)
        assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- systemd: sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """The datagram socket systemd listens on (`NOTIFY_SOCKET`), bound in tmp_path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(30)
        yield sock


def test_notify_sends_to_a_path_or_an_abstract_socket_and_says_whether_it_could(
    notify_socket: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`NOTIFY_SOCKET` is a path or, with a leading `@`, a name in the abstract namespace
    (systemd's own is `/run/systemd/notify`; a container's manager may pass `@…`): the
    message reaches either and `notify` says True; a socket nobody listens on is False,
    never an exception (`run` goes on), and no `NOTIFY_SOCKET` at all is False."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    assert systemd.notify("STATUS=path") is True
    assert notify_socket.recv(100) == b"STATUS=path"
    name = f"tillpoint-mut56a-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1") is True
        assert abstract.recv(100) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)  # closed: nobody listens any more
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify("READY=1") is False
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False


def test_the_watchdog_pings_for_its_own_pid_only_until_the_stop(
    notify_socket: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`WATCHDOG_PID` names the process systemd watches: this one is pinged for (as when
    none is named), another one's is not (a child that inherited the environment must not
    ping for the service's main process: with `NotifyAccess=main` systemd would drop its
    pings, and with `all` a hung main process would be kept alive by a healthy child).
    The pings stop when the stop event is set."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.start_watchdog(threading.Event()) is None
    monkeypatch.delenv("WATCHDOG_USEC")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.start_watchdog(threading.Event()) is None  # systemd watches nothing
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    stop = threading.Event()
    thread = systemd.start_watchdog(stop)
    try:
        assert thread is not None and thread.name == "sd-watchdog"
        # a process's exit never waits for it: one ending without the stop set would
        # hang, still pinging systemd that it is alive
        assert thread.daemon
        for _ in range(3):
            assert notify_socket.recv(100) == b"WATCHDOG=1"
    finally:
        stop.set()
    thread.join(30)
    assert not thread.is_alive()


# A process whose relay thread is stuck in its `stop` (a log line to a stderr nobody
# reads blocks the same way), then signalled 70,000 times (the pipe holds ~64 KiB):
# a handler that blocked on the full pipe would hang the main thread for good.
_SIGNALLED_OVER_AND_OVER = r"""
import faulthandler, logging, os, signal, threading
from tillpoint.agent import systemd

faulthandler.dump_traceback_later(60, exit=True)  # a hung main thread: exit 1
stuck, asked = threading.Event(), threading.Event()

def stop():
    asked.set()
    stuck.wait()

systemd.on_signals(stop, logging.getLogger("child"))
os.kill(os.getpid(), signal.SIGTERM)
assert asked.wait(30), "the first SIGTERM never reached stop"
for _ in range(70_000):
    os.kill(os.getpid(), signal.SIGINT)
print("alive", flush=True)
"""


def test_a_handler_never_blocks_on_a_full_signal_pipe() -> None:
    """The handler writes the signal's number to a pipe its relay thread reads: the
    write end is non-blocking, so once ~64 KiB of signals wait unread (the relay stuck
    in a slow `stop`) a signal is dropped (a stop is owed already) rather than the main
    thread, where Python runs the handler, waiting for ever."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_OVER_AND_OVER],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "alive"), done.stderr[-3000:]


# ---------------------------------------------------------------- grpc_health


class Readiness:
    """What a server's `ready(wait_s)` says (`value`, or raises `failure`), and each
    `wait_s` it was given."""

    def __init__(self) -> None:
        self.value = True
        self.failure: Exception | None = None
        self.waits: list[float | None] = []
        self.gate = threading.Event()  # cleared: a reading waits here (a store that hangs)
        self.gate.set()
        self.waiting = threading.Event()  # a reading waits at the gate

    def __call__(self, wait_s: float | None) -> bool:
        self.waits.append(wait_s)
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return self.value


class HealthServed:
    """A real gRPC server on 127.0.0.1 serving a `ReadinessHealth` for the name "svc",
    its follower thread named uniquely (to be found among the process's threads)."""

    def __init__(self, every_s: float = 0.05) -> None:
        from concurrent import futures

        from tillpoint.agent.grpc_health import ReadinessHealth

        self.readiness = Readiness()
        self.thread_name = f"health-mut56a-{uuid.uuid4().hex[:8]}"
        self.health = ReadinessHealth(
            ("svc",), self.readiness, every_s=every_s, thread_name=self.thread_name
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    def followers(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == self.thread_name]

    def close(self) -> None:
        self.health.stop_following()
        self.channel.close()
        self.server.stop(0).wait()


@pytest.fixture
def served_health() -> Iterator[HealthServed]:
    served = HealthServed()
    yield served
    served.close()


def _until(check: Callable[[], bool], within_s: float = 30.0) -> bool:
    """Polls `check` until it holds (a deadline a loaded machine meets)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_each_reading_is_given_the_time_it_may_take(served_health: HealthServed) -> None:
    """`ready(wait_s)`: a Check's reading may take the call's time left, a Watch's first
    reading that but at most `read_s` (2 s), a Watch with no deadline (what
    `grpc_health_probe -watch` and a POS's client-side health checking open) 2 s too,
    and the follower's 2 s. The hub's reading waits that long for its database: a Watch
    whose first answer waited without a bound held its worker as long as PostgreSQL
    hung."""
    readiness, stub = served_health.readiness, served_health.stub
    ask = health_pb2.HealthCheckRequest(service="svc")
    assert stub.Check(ask, timeout=20).status == SERVING
    (waited,) = readiness.waits
    assert waited is not None and 15.0 < waited < 25.0  # about 20 (gRPC rounds deadlines)
    for timeout in (20.0, None, 1.5):
        readiness.waits.clear()
        stream = stub.Watch(ask, timeout=timeout)
        try:
            assert next(stream).status == SERVING
            assert _until(lambda: len(readiness.waits) >= 2)  # the first, then the follower's
        finally:
            stream.cancel()
        first, *later = readiness.waits
        if timeout == 1.5:  # the call's time left (gRPC's deadline is not to the microsecond)
            assert first is not None and 0 < first < 1.9, first
        else:
            assert first == 2.0, (timeout, first)
        assert all(wait == 2.0 for wait in later), later
        # this stream's follower gone before the next stream's first reading is looked at
        assert _until(lambda: served_health.followers() == [])


def test_the_follower_runs_while_a_watch_is_open_and_streams_each_change(
    served_health: HealthServed, caplog: pytest.LogCaptureFixture
) -> None:
    """No thread reads the readiness while nobody watches; the first Watch starts one,
    which streams each change of readiness (a reading that failed is NOT_SERVING, logged)
    and ends when the last stream closes; a new Watch starts it again. A follower that
    never ended read a till's agent every second for the process's life after one probe."""
    served, readiness = served_health, served_health.readiness
    assert served.followers() == []
    for _ in range(2):
        stream = served.stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=60)
        try:
            assert next(stream).status == SERVING
            (follower,) = served.followers()
            assert follower.daemon  # a process's exit never waits for it
            readiness.value = False
            assert next(stream).status == NOT_SERVING
            readiness.value = True
            assert next(stream).status == SERVING
            readiness.failure = RuntimeError("the store went away")
            assert next(stream).status == NOT_SERVING
            readiness.failure = None
            assert next(stream).status == SERVING
        finally:
            stream.cancel()
        assert _until(lambda: served.followers() == []), "the follower outlived the last Watch"
    assert "health: readiness unavailable" in caplog.text


def test_a_watch_still_open_hears_changes_after_another_closed(
    served_health: HealthServed,
) -> None:
    """The follower counts the open streams: one of two closing leaves the other
    followed (a count taken down by more than one stream a close ended the follower with
    a load balancer's stream still open, which then never heard NOT_SERVING)."""
    served, readiness = served_health, served_health.readiness
    ask = health_pb2.HealthCheckRequest(service="svc")
    kept, closed = (served.stub.Watch(ask, timeout=60) for _ in range(2))
    try:
        assert next(kept).status == SERVING and next(closed).status == SERVING
        closed.cancel()
        # the server has run the closed stream's callback (its table of streams says so)
        table = served.health._send_response_callbacks  # type: ignore[attr-defined]
        assert _until(lambda: len(table.get("svc", ())) == 1)
        for value, status in ((False, NOT_SERVING), (True, SERVING), (False, NOT_SERVING)):
            readiness.value = value
            assert next(kept).status == status
        assert len(served.followers()) == 1
    finally:
        closed.cancel()
        kept.cancel()


def test_stop_following_with_no_follower_says_it_has_ended_at_once() -> None:
    """True: nothing reads the readiness any more (`run` closes the agent next)."""
    from tillpoint.agent.grpc_health import ReadinessHealth

    health = ReadinessHealth(("svc",), Readiness())
    assert health.stop_following() is True


def test_stop_following_says_whether_the_follower_has_ended(served_health: HealthServed) -> None:
    """`stop_following` is False while the follower is still inside a reading that outlasts
    `timeout_s` (a store that hangs), True once it has ended: what it reads may be closed
    only then (review 42)."""
    served, readiness = served_health, served_health.readiness
    stream = served.stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=60)
    try:
        assert next(stream).status == SERVING
        readiness.gate.clear()
        assert readiness.waiting.wait(30)  # the follower's next reading hangs
        assert served.health.stop_following(timeout_s=0.1) is False
        assert next(stream).status == NOT_SERVING  # the shutdown is told meanwhile
        readiness.gate.set()
        assert served.health.stop_following(timeout_s=30) is True
        assert served.followers() == []
    finally:
        readiness.gate.set()
        stream.cancel()


def test_a_watch_of_another_name_or_after_the_shutdown_reads_nothing(
    served_health: HealthServed,
) -> None:
    """A Watch of a name the server does not serve is grpcio's SERVICE_UNKNOWN, and once
    the graceful shutdown has begun every Watch is NOT_SERVING: neither reads the
    readiness nor starts a follower (a probe of a wrong name read a till's agent every
    second while its stream stayed open)."""
    served, readiness = served_health, served_health.readiness
    served.health.set_ready(True)  # as `build_server` does before it serves
    unknown = served.stub.Watch(health_pb2.HealthCheckRequest(service="nobody"), timeout=60)
    try:
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        assert readiness.waits == [] and served.followers() == []
    finally:
        unknown.cancel()
    served.health.enter_graceful_shutdown()
    for name in ("", "svc"):
        late = served.stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60)
        try:
            assert next(late).status == NOT_SERVING
            assert readiness.waits == [] and served.followers() == []
        finally:
            late.cancel()
        assert (
            served.stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=20).status
            == NOT_SERVING
        )
    assert readiness.waits == []


def test_a_watch_stream_that_ended_is_sent_nothing_more() -> None:
    """A readiness change whose `set` took the list of streams just before one of them
    closed tells it after its end: that stream sends nothing after its end (None, as
    grpcio's). The sender here stands for grpcio's callback of the stream."""
    from tillpoint.agent.grpc_health import _Watcher

    status = [SERVING]
    sent: list[object] = []
    watcher = _Watcher(lambda: status[0], sent.append)
    watcher.tell()
    watcher.tell()  # the same status: nothing new to send
    status[0] = NOT_SERVING
    watcher.tell()
    watcher.close()
    status[0] = SERVING
    watcher.tell()
    assert sent == [
        health_pb2.HealthCheckResponse(status=SERVING),
        health_pb2.HealthCheckResponse(status=NOT_SERVING),
        None,
    ]


# ---------------------------------------------------------------- privileges: root's commands


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is root's only), as
    tests/test_privileges.py's."""
    path = Path(tempfile.mkdtemp(prefix="tillpoint-mut56a-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


as_root = pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11),
    reason="needs root, /usr/bin/python3.11 and a 3.11 venv (as tests/test_privileges.py)",
)


@as_root
@pytest.mark.parametrize("owner", [1, 4242], ids=["daemon-uid-1", "a-uid-with-no-name"])
def test_root_on_a_directory_of_uid_1_or_of_a_uid_with_no_name_becomes_its_owner(
    shared_dir: Path, owner: int
) -> None:
    """Only uid 0's own directory is kept as root's: uid 1 (`daemon`) is another user.
    A uid with no name in the user database (a directory restored from another machine,
    a user since removed) has no groups to take: the command drops every group, takes the
    directory's group and its uid, and runs (an `initgroups` with no name was an internal
    error's traceback, exit 1)."""
    data = shared_dir / "data"
    data.mkdir(mode=0o750)
    os.chown(data, owner, owner)
    run = tillpoint("--data-dir", data, "status", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["deviceId"] == "till-1"
    assert {"cache.db", "ledger.db"} <= {p.name for p in data.iterdir()}
    assert owners(data) == {owner}  # nothing of root's inside


@as_root
def test_root_on_a_directory_of_a_user_takes_that_users_other_groups_too(shared_dir: Path) -> None:
    """The owner's supplementary groups come with the switch (`dialout` and `lp` reach a
    printer on an installed till): `snapshot load` as root on the data directory of
    `postgres`, a member of `ssl-cert`, reads a snapshot that only `ssl-cert` may read,
    as `postgres` itself would (with no groups but its own it was "Permission denied")."""
    try:
        user, group = pwd.getpwnam("postgres"), grp.getgrnam("ssl-cert")
    except KeyError:
        pytest.skip("needs the user postgres and the group ssl-cert")
    if "postgres" not in group.gr_mem:
        pytest.skip("needs postgres in the group ssl-cert")
    data = shared_dir / "data"
    data.mkdir(mode=0o750)
    os.chown(data, user.pw_uid, user.pw_gid)
    snap = shared_dir / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    os.chown(snap, 0, group.gr_gid)
    snap.chmod(0o640)
    run = tillpoint("--data-dir", data, "snapshot", "load", snap)
    assert run.returncode == 0, run.stderr
    assert owners(data) == {user.pw_uid}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the check is root's only)")
def test_root_on_a_data_directory_it_cannot_read_is_told_in_one_line(tmp_path: Path) -> None:
    """A data directory that is a symbolic link to itself (or any name `stat` refuses
    other than a missing one) is an input error naming it and the system's words, exit 2,
    before anything is opened."""
    from tillpoint.agent.errors import InputError
    from tillpoint.agent.privileges import check_data_dir, run_as_owner

    loop = tmp_path / "data"
    loop.symlink_to(loop)
    check_data_dir(loop)  # not a directory under a file: the opener's to say, here root's
    with pytest.raises(InputError) as refused:
        run_as_owner(loop)
    assert str(refused.value) == (
        f"cannot read the data directory {loop}: Too many levels of symbolic links"
    )
    run_as_owner(tmp_path / "new")  # a missing one: made later, root's own


# ---------------------------------------------------------------- advice: a fraction's words

WEEKDAY_OFFER = {
    "id": "o-wd",
    "campaignId": "c-1",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000017"],
    "value": "10",
    "validFrom": "2026-01-01T00:00:00Z",
    "validTo": "2027-01-01T00:00:00Z",
}


def test_a_fraction_in_an_offers_weekdays_is_told_a_whole_number_not_days(cli: CLI) -> None:
    """CONTRACT §3: an offer's `weekdays` lists ISO weekdays (Monday 1 … Sunday 7), it
    counts no days. `"weekdays": 1.5` was told "write a whole number of days" (the name
    ends like `activationDelayDays`), while `"weekdays": [1.5]` was told "write a whole
    number" (review 39, rev39h, listed `weekdays` among the plain whole numbers; the
    unit's ending was looked at first). Failed before the fix."""
    from tillpoint.agent.advice import whole_number_advice

    for place in ("offers[0].weekdays", "offers[0].weekdays[1]", "customers[0].favoriteWeekday"):
        assert whole_number_advice(place) == "write a whole number", place
    for place, unit in (("program.activationDelayDays", "days"), ("holdTtlSeconds", "seconds")):
        assert whole_number_advice(place) == f"write a whole number of {unit}"
    for weekdays in (1.5, [1, 1.5]):
        snap = snapshot(offers=[dict(WEEKDAY_OFFER, weekdays=weekdays)])
        run = cli("snapshot", "load", snap)
        where = "offers[0].weekdays" + ("" if weekdays == 1.5 else "[1]")
        assert run.code == 2 and run.err == (
            f"tillpoint: {where}: the number 1.5 has a decimal point: write a whole number\n"
        ), run.err
    assert cli("status", "--json").json()["cacheVersion"] == 0  # nothing was loaded
