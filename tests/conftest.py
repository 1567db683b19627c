"""Shared fixtures: a base snapshot, a real Agent on a temp data dir, an in-process CLI."""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.service import Agent, HubGrant

from bench.ports import free_port  # noqa: F401  (the tests import it from here)
from tests.xdist_crash import mend

if TYPE_CHECKING:
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.sync.loopback import LoopbackHub, Till

REPO = Path(__file__).resolve().parents[1]

# a worker that crashes fails its test and the run goes on to its end (tests/xdist_crash.py)
mend()

# Every `tillpoint run` a test starts serves HTTP on a free port, not on the fixed
# default: suites (and other checkouts) running side by side must not collide on 8061.
os.environ.setdefault("TILLPOINT_HTTP__LISTEN", "127.0.0.1:0")
SHARED = REPO.parent / "shared"


def _refuse_stubs_on_closed_channels() -> None:
    """A generated stub (`PosAgentStub`, `HealthStub`, `ServerReflectionStub`, so also
    `ProtoReflectionDescriptorDatabase`) made on a closed channel is a ValueError naming
    the method in this suite's processes: grpcio 1.85.1 registers the stub's methods on the
    closed channel's freed core channel, and the pytest worker died with SIGSEGV, its test
    unnamed and the xdist run hung (review 41, seg41)."""
    import grpc._channel
    from tillpoint.agent.client import _closed  # the client's own look (it refuses them)

    register = grpc._channel.Channel._get_registered_call_handle

    def checked(self: Any, method: str) -> int:
        if _closed(self):
            raise ValueError(f"a stub of {method} made on a closed gRPC channel")
        return int(register(self, method))

    grpc._channel.Channel._get_registered_call_handle = checked  # type: ignore[method-assign]


_refuse_stubs_on_closed_channels()

PROGRAM: dict[str, Any] = {
    "currency": "RUB",
    "timezone": "Europe/Moscow",
    "pointValueMinor": 100,
    "maxRedeemPercent": 30,
    "activationDelayDays": 0,
    "offlineRedeemLimitPoints": 500,
    "birthdayMultiplier": 5,
    "birthdayWindowDays": 7,
    "maxOffersPrinted": 5,
    "offerPrintCooldownDays": 7,
    "tiers": [
        {"code": "base", "accrualPercent": "3"},
        {"code": "silver", "accrualPercent": "5"},
        {"code": "gold", "accrualPercent": "7.5"},
    ],
}

BASE_SNAPSHOT: dict[str, Any] = {
    "version": 1,
    "baseVersion": 0,
    "issuedAt": "2026-11-23T03:00:00Z",
    "program": PROGRAM,
    "categories": [
        {"code": "food", "name": "Продукты"},
        {"code": "dairy", "parent": "food", "name": "Молочные"},
        {"code": "bakery", "parent": "food", "name": "Хлеб"},
        {"code": "tobacco", "name": "Табак"},
    ],
    "products": [
        {"sku": "4601234000017", "name": "Молоко 3,2% 1 л", "category": "dairy"},
        {"sku": "4601234000024", "name": "Хлеб Бородинский", "category": "bakery"},
        {
            "sku": "4601234000031",
            "name": "Сигареты",
            "category": "tobacco",
            "excludedFromLoyalty": True,
        },
        {"sku": "4601234000055", "name": "Сыр Российский", "category": "dairy"},
    ],
    "customers": [
        {
            "id": "c-a",
            "firstName": "Анна",
            "tier": "gold",
            "birthday": "1990-11-25",
            "phone": "+79161234567",
            "balancePoints": 1200,
            "segment": "ACTIVE",
        },
        {
            "id": "c-b",
            "firstName": "Борис",
            "tier": "base",
            "birthday": "1985-03-10",
            "phone": "+79035550001",
            "balancePoints": 80,
            "segment": "NEW",
        },
        {"id": "c-c", "firstName": "Вера", "tier": "silver", "balancePoints": 500},
    ],
    "cards": [
        {"number": "2770000000017", "customerId": "c-a", "status": "ACTIVE"},
        {"number": "2770000000024", "customerId": "c-b", "status": "ACTIVE"},
        {"number": "2770000000031", "customerId": "c-c", "status": "BLOCKED"},
    ],
    "offers": [],
}


@contextlib.contextmanager
def grpc_served(agent: Agent, **settings: Any) -> Iterator[int]:
    """`agent`'s gRPC server (`build_server`, as `tillpoint run` builds it) on a free
    loopback port, for the block; yields the port."""
    from tillpoint.agent.server import build_server

    server, port, health = build_server(agent, "127.0.0.1:0", **settings)
    server.start()
    try:
        yield port
    finally:
        # the follower of an open health Watch reads the agent: ended before its owner
        # closes it, as `run` stops it first (review 42)
        health.stop_following()
        server.stop(0).wait()


@contextlib.contextmanager
def posagent_stub(agent: Agent) -> Iterator[Any]:
    """A `PosAgent` stub on a channel to `agent`'s gRPC server (`grpc_served`), for the
    block (the agent stays open: its owner closes it)."""
    import grpc
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.PosAgentStub(channel)


class ChannelStates:
    """The connectivity states a gRPC channel goes through, from READY on: a link a
    server drops (GOAWAY) shows a state after READY."""

    def __init__(self, channel: Any) -> None:
        import threading

        import grpc

        self.channel = channel
        self.states: list[Any] = []
        self._ready_state = grpc.ChannelConnectivity.READY
        self._ready = threading.Event()
        channel.subscribe(self._seen, try_to_connect=True)

    def _seen(self, state: Any) -> None:
        self.states.append(state)
        if state is self._ready_state:
            self._ready.set()

    def wait_ready(self, timeout: float = 10) -> bool:
        return self._ready.wait(timeout)

    def since_ready(self) -> list[Any]:
        return self.states[self.states.index(self._ready_state) :]

    def close(self) -> None:
        self.channel.unsubscribe(self._seen)


def ipv6_loopback() -> bool:
    """Whether this host has an IPv6 loopback (::1 binds)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


@dataclass(frozen=True)
class TcpSocket:
    """One line of /proc/net/tcp: a socket of this network namespace, any process's."""

    state: str  # hex, as the kernel writes it: "0A" LISTEN, "01" ESTABLISHED, "08" CLOSE_WAIT
    local_port: int
    remote_port: int
    rx_queue: int  # unread bytes; for a LISTEN socket, its accept queue's length


def tcp_sockets(port: int) -> list[TcpSocket]:
    """The IPv4 sockets whose local port is `port` (a server's, whichever process it is):
    what a test waits on where a server's own count cannot be read (review 40, flake40:
    a loaded machine's server had not read what a test had sent, or accepted it, when a
    sleep assumed it had)."""
    found = []
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == port:
                found.append(
                    TcpSocket(
                        state,
                        port,
                        int(remote.rsplit(":", 1)[1], 16),
                        int(queues.split(":")[1], 16),
                    )
                )
    return found


def ean13(stem12: str) -> str:
    """`stem12` with its EAN-13 check digit (a card number or a SKU a test makes up)."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(stem12))
    return stem12 + str((10 - total % 10) % 10)


class ManualClock:
    """A wall clock the test moves (an `Agent`'s `clock`, a print worker's)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class SteppingClock:
    """A wall clock and the seconds that pass beside it (what `tillpoint run` reads: the
    system clock and CLOCK_BOOTTIME), both moved by the test: an `Agent`'s `clock` and
    `monotonic` (`clock.steady`), to step the wall clock as NTP does."""

    def __init__(self, t: datetime) -> None:
        self.t = t
        self.s = 1000.0
        # the threads that read the wall clock (a test empties it and waits for one)
        self.read_by: set[int] = set()

    def __call__(self) -> datetime:
        self.read_by.add(threading.get_ident())
        return self.t

    def steady(self) -> float:
        return self.s

    def passes(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.s += seconds

    def stepped(self, seconds: float) -> None:
        """The wall clock set (NTP, an operator) by `seconds`; no time passes."""
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    """A till's wall clock at the receipts' time (`RECEIPT_AT`), moved by the test."""
    return ManualClock(datetime(2026, 11, 23, 7, 15, tzinfo=UTC))


def snapshot(**changes: Any) -> dict[str, Any]:
    snap = copy.deepcopy(BASE_SNAPSHOT)
    snap.update(copy.deepcopy(changes))
    return snap


# When `receipt()`'s receipts are made: a test whose code reads a clock passes this one.
RECEIPT_AT = "2026-11-23T10:15:00+03:00"


def receipt_time() -> datetime:
    return datetime.fromisoformat(RECEIPT_AT)


def receipt(receipt_id: str = "r1", card: str = "2770000000017", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": RECEIPT_AT,
        "card": card,
        "lines": [{"sku": "4601234000017", "qty": "2", "priceMinor": 8990}],
        "redeemPoints": 0,
    }
    data.update(changes)
    return data


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "data", "till-1")
    a.load_snapshot(snapshot())
    yield a
    a.close()


@pytest.fixture
def server(agent: Agent) -> Iterator[HttpServer]:
    """The HTTP interface over `agent`, on a free loopback port."""
    from tillpoint.agent.http_api import HttpServer

    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    yield srv
    srv.stop()


def http_post(port: int, path: str, body: Any, timeout: float = 60) -> tuple[int, bytes]:
    """POST `body` as JSON (its text as UTF-8, not escaped) to 127.0.0.1:`port`, on a
    connection of its own, as a POS does; the answer's status and its bytes."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST",
            path,
            json.dumps(body, ensure_ascii=False).encode(),
            {"Content-Type": "application/json"},
        )
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def post_to(port: int, path: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    """`http_post`, the answer's JSON read (an empty answer as None)."""
    status, raw = http_post(port, path, body, timeout)
    return status, json.loads(raw or b"null")


def post_json(server: HttpServer, path: str, body: Any, timeout: float = 10) -> tuple[int, Any]:
    """`post_to` the in-process `server`."""
    return post_to(server.port, path, body, timeout)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CLI = Callable[..., Run]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """Run `tillpoint --data-dir <tmp> ARGS` in-process; dict arguments become JSON files."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    data_dir = tmp_path / "data"
    counter = iter(range(10**6))

    def run(*args: Any) -> Run:
        argv = ["--data-dir", str(data_dir)]
        for arg in args:
            if hasattr(arg, "to_json"):  # a typed result (agent/results.py): its document
                arg = arg.to_json()
            if isinstance(arg, dict | list):
                path = tmp_path / f"input-{next(counter)}.json"
                path.write_text(json.dumps(arg, ensure_ascii=False), encoding="utf-8")
                argv.append(str(path))
            else:
                argv.append(str(arg))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
        return Run(code, out.getvalue(), err.getvalue())

    return run


# ---------------------------------------------------------------- a hub and its tills


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    """The reference hub with the sample master data (`sync.loopback`) on a free loopback
    port; a module that needs other data defines its own `hub`."""
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    yield hub
    hub.stop()


# A redemption deadline a loaded machine's in-process hub keeps (review 44, flake44): the
# shipped 300 ms (`sync.loopback.FAST`) is for the tests that judge the deadline; a test
# whose outcome needs the hub's answer (ONLINE, a hold placed at the hub) and is not about
# the deadline gives its tills this one: at load 14 one answer took longer than 300 ms,
# and 42 such tests failed with every hub answer made 0.6 s late.
ANSWERED_S = 5.0


def answered() -> Any:
    """`FAST` with the redemption deadline `ANSWERED_S` (the till's `timings=`)."""
    from dataclasses import replace

    from tillpoint.sync.loopback import FAST

    return replace(FAST, redeem_timeout_s=ANSWERED_S)


# The deadline of a till whose grant a test holds back at the hub (flake39's `HeldBack`:
# the hub takes the call, its store places the grant only once the call's deadline has
# passed: a late grant). The hub must take the call before the till's deadline, or it
# places nothing (its own deadline check) and the late grant never comes: with FAST's
# 300 ms a loaded machine's late answer failed the test's set-up (review 41, flake41,
# rev35's `LATE`; review 45, late45). The till waits this long for the held-back call.
HELD_BACK_S = 1.0


def held_back_timings() -> Any:
    """`FAST` with the redemption deadline `HELD_BACK_S` (the till's `timings=`)."""
    from dataclasses import replace

    from tillpoint.sync.loopback import FAST

    return replace(FAST, redeem_timeout_s=HELD_BACK_S)


def enrolled_till(hub: LoopbackHub, data_dir: Path, name: str, **kw: Any) -> Till:
    """A till of `hub` (its sync loop not started) that has pulled the hub's first
    snapshot, as `tillpoint sync now` does."""
    from tillpoint.sync.loopback import wait_for
    from tillpoint.sync.pull import Puller, cache_version

    till = hub.till(name, data_dir, start=False, **kw)
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    wait_for(lambda: cache_version(till.data_dir) == 1)
    return till


class PassThroughHub:
    """A till's hub authoriser that hands every call to `inner` (the till's real one): a
    test subclasses it to act before the hub is asked (`asking`) or once it has granted
    (`granted`), or overrides `authorise`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def authorise(
        self,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Sequence[str] = (),
        since: float | None = None,
        offline_limit: int | None = None,
    ) -> HubGrant:
        self.asking()
        grant: HubGrant = self.inner.authorise(
            customer_id,
            receipt_id,
            points,
            at,
            hold_ttl_s,
            coupon_codes,
            offline_limit=offline_limit,
        )
        self.granted(grant)
        return grant

    def asking(self) -> None:
        """Before the hub is asked."""

    def granted(self, grant: HubGrant) -> None:
        """Once the hub has answered with `grant`."""

    def release(self, receipt_id: str) -> bool:
        return bool(self.inner.release(receipt_id))

    def reachable(self) -> bool:
        return bool(self.inner.reachable())


# ---------------------------------------------------------------- PostgreSQL (the hub's)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the whole run (initdb + pg_ctl into a temp dir on
    a free port, in /dev/shm when it has room); skipped with the reason when the server is
    not installed."""
    from bench import pgcluster

    reason = pgcluster.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = pgcluster.Cluster(in_memory=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A fresh, empty database of the session's cluster."""
    return str(pg_cluster.new_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Makes hub stores of one kind (each call: a new, empty hub); closes them at the end."""
    made: list[Any] = []

    def make() -> Any:
        if request.param == "sqlite":
            from tillpoint.sync.hub_sqlite import SqliteHubStore

            store: Any = SqliteHubStore(tmp_path / f"hub-{len(made)}.db")
        else:
            from tillpoint.sync.hub_postgres import PostgresHubStore

            cluster = request.getfixturevalue("pg_cluster")
            store = PostgresHubStore(cluster.new_database(), migrate_schema=True)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hub-store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the store of every hub the tests start (`make test-pg`: postgresql, a fresh"
        " database of a throwaway cluster per test)",
    )


@pytest.fixture(autouse=True)
def _hub_store_choice(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.config.getoption("--hub-store") == "postgresql":
        from tillpoint.sync.hub_postgres import migrate

        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.new_database()
        migrate(url)  # provisioned, as `tillpoint hub migrate` does before a hub starts
        monkeypatch.setenv("TILLPOINT_HUB_STORE", url)


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes a test started (append them): each still running at the end is
    asked to stop (SIGTERM), then killed if it has not within 20 s."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ------------------------------------------- the order of the test files (review 40, ci40)
# `make test` runs on TEST_WORKERS workers (four since review 51), a test file per worker
# at a time (pytest-xdist's
# `--dist loadfile`), handing out the files in collection order (`--no-loadscope-reorder`;
# xdist's own order is by count of tests, most first, which sent the few-test files of
# real processes, 30-150 s each, last, leaving a worker idle for minutes). The files go
# longest first, by the seconds each took in CI's pass (tests/file_seconds.json, measured
# on a loaded machine; a file not listed counts FILE_SECONDS_PER_TEST a test): the longest
# start at once, the short ones fill the end. Each file's tests keep their order.
FILE_SECONDS = REPO / "tests" / "file_seconds.json"
FILE_SECONDS_PER_TEST = 0.3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds: dict[str, float] = json.loads(FILE_SECONDS.read_text(encoding="utf-8"))
    counts = collections.Counter(item.nodeid.partition("::")[0] for item in items)

    def weight(item: pytest.Item) -> tuple[float, str]:
        file = item.nodeid.partition("::")[0]
        return (-seconds.get(file, counts[file] * FILE_SECONDS_PER_TEST), file)

    items.sort(key=weight)
