"""Review 42 (review42): a second look at session 42's change, pinned where nothing pinned it.

- `bench/ports.py` (`free_port`, the ports of servers a test or a benchmark starts as
  another process): picked below the kernel's ephemeral range, where no outgoing
  connection and no port-0 server lands, in this pytest-xdist worker's share of them, and
  never the same port twice in a row; a range that leaves no room below uses the ports
  above it, and one that leaves room nowhere falls back to the kernel's pick. Nothing
  pinned the module (a change to it would show only as a CI failure once in thousands).
- tests/test_review32_conc32.py's `Till` (a real `tillpoint run` and its three doors):
  a run that ends before it serves is told at once with its exit code and log (session
  42); a run that does not serve within the deadline was left running after the test
  failed — an orphan `tillpoint run` holding its ports and its data directory for as
  long as the CI machine lives. It is stopped now, as the early exit's channel is closed.
- `SyncService.stop` after session 42's change (ledger42: the sync thread closes the
  pusher's ledger connection when a stop ends it): a stop that sees the thread end opens
  no ledger connection of its own (no reopen through `Pusher.conn`) and leaves none open.
  And a subscribe stream opened just after a stop looked for one to cancel ran on until
  the stop's 10 s wait for it ran out: it is cancelled by its own thread now.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import ports

from .conftest import needs_ipv6

# ---------------------------------------------------------------- 1. bench/ports.py


def _range_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    table = tmp_path / "ip_local_port_range"
    table.write_text(text, encoding="ascii")
    monkeypatch.setattr(ports, "RANGE_FILE", str(table))
    monkeypatch.setattr(ports, "_cycle", None)  # drawn again from the range given


def test_free_ports_lie_below_the_ephemeral_range_in_this_worker_s_share() -> None:
    low, _ = ports.ephemeral_range()
    index, count = ports.worker_share()
    picked = [ports.free_port() for _ in range(50)]
    if low - ports.LOWEST < 1_000:
        pytest.skip(f"this machine's ephemeral range starts at {low}: no room below it")
    for port in picked:
        assert max(ports.LOWEST, low - ports.SPAN) <= port < low, (port, low)
        assert port % count == index, (port, index, count)
    assert len(set(picked)) == len(picked), "a port handed out twice"
    for port in picked[:5]:  # free when handed out: a server binds it (SO_REUSEADDR or not)
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_each_xdist_worker_draws_from_its_own_residue_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for worker, count, expected in (
        ("gw0", "2", (0, 2)),
        ("gw1", "2", (1, 2)),
        ("gw3", "4", (3, 4)),
    ):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
        assert ports.worker_share() == expected
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert ports.worker_share() == (0, 1)  # outside xdist (a benchmark, a nested run)


def test_a_port_held_below_the_range_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port a listener holds is never handed out; with the whole pool held, the pick
    falls back to the kernel's (port 0), never to a held port."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        held.listen()
        monkeypatch.setattr(ports, "candidates", lambda: [port])
        monkeypatch.setattr(ports, "_cycle", None)
        got = ports.free_port()
        assert got != port and got > 0


@needs_ipv6
def test_a_port_another_program_holds_on_ipv6_loopback_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Servers given a `free_port` listen on `localhost:PORT` (127.0.0.1 and ::1) and on
    `[::1]:PORT` (reviews 35-37's tests): a port held on ::1 alone was handed out (the
    probe bound 127.0.0.1 only), and the run refused it as another program's."""
    with socket.socket(socket.AF_INET6) as held:
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        held.bind(("::1", 0))
        port = held.getsockname()[1]
        held.listen()
        monkeypatch.setattr(ports, "candidates", lambda: [port])
        monkeypatch.setattr(ports, "_cycle", None)
        assert ports.free_port() != port


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ("32768\t60999\n", "below"),  # Linux's default
        ("15000 65000\n", "below"),  # room for 5,000 below, never under 10,000
        ("10500 60000\n", "above"),  # too little room below: the ports above it
        ("1024 65535\n", "kernel"),  # room nowhere: the kernel's pick (port 0)
        ("not a range\n", "below"),  # unreadable: Linux's default assumed
    ],
)
def test_a_machine_whose_ephemeral_range_differs_still_gets_a_free_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, where: str
) -> None:
    _range_file(tmp_path, monkeypatch, table)
    low, high = ports.ephemeral_range()
    port = ports.free_port()
    if where == "below":
        assert max(ports.LOWEST, low - ports.SPAN) <= port < low, (port, low)
    elif where == "above":
        assert high < port <= 65_535, (port, high)
    else:
        assert ports.candidates() == []
        assert 0 < port <= 65_535
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))


# ---------------------------------------------------------------- 2. conc32's `Till`


def _fake_run(tmp_path: Path, body: str) -> str:
    """An executable standing in for `tillpoint`: it writes its pid, then runs `body`."""
    exe = tmp_path / "fake-tillpoint"
    exe.write_text(f'#!/bin/sh\necho $$ > "{tmp_path}/pid"\n{body}\n', encoding="ascii")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_till_run_that_never_serves_is_stopped_when_its_wait_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import test_review32_conc32 as conc32

    # The run's pid from its `Popen`, not from the pid file the fake writes: on a loaded
    # machine the fake had not started within the 1.5 s wait, the wait's stop ended it
    # before it wrote the file, and the test read a missing file (review 44, stress44).
    started: list[subprocess.Popen[bytes]] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(conc32.subprocess, "Popen", Recorded)
    monkeypatch.setattr(conc32, "EXE", _fake_run(tmp_path, "exec sleep 300"))
    monkeypatch.setattr(conc32, "TIMEOUT", 1.5)
    with pytest.raises(TimeoutError):
        conc32.Till(tmp_path, tmp_path / "data")
    assert len(started) == 1, started
    pid = started[0].pid
    try:
        deadline = time.monotonic() + 30
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), "the run that never served was left running"
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_till_run_that_ends_unserved_is_told_at_once_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import test_review32_conc32 as conc32

    said = "tillpoint: cannot listen on 127.0.0.1:1 for gRPC: Address already in use"
    monkeypatch.setattr(conc32, "EXE", _fake_run(tmp_path, f"echo '{said}' >&2\nexit 1"))
    died: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(repr(args.exc_value)))
    before = set(threading.enumerate())
    started = time.monotonic()
    with pytest.raises(AssertionError) as told:
        conc32.Till(tmp_path, tmp_path / "data")
    assert time.monotonic() - started < conc32.TIMEOUT  # not the 60 s channel wait
    assert "tillpoint run ended (1) unserved" in str(told.value)
    assert said in str(told.value)
    # grpcio's thread that watched the channel for the readiness wait ends quietly (it
    # died of "Cannot monitor channel state: Channel closed!" when the channel was closed
    # under it)
    deadline = time.monotonic() + 30
    while any(t.is_alive() for t in set(threading.enumerate()) - before):
        assert time.monotonic() < deadline, "grpcio's watching thread did not end"
        time.sleep(0.05)
    assert died == [], died


# ---------------------------------------------------------------- 3. SyncService.stop


def test_a_sync_stop_that_sees_its_thread_end_opens_no_ledger_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tillpoint.sync import push
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import FAST, LoopbackHub, sample_master_data, wait_for
    from tillpoint.sync.service import SyncService

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    opened: list[str] = []
    real = push.ledger.open_ledger

    def counted(data_dir: Path) -> object:
        opened.append("open")
        return real(data_dir)

    monkeypatch.setattr(push.ledger, "open_ledger", counted)
    enrollment = till.link.enrollment
    service = SyncService(till.agent, HubLink(hub.address, enrollment), enrollment, FAST)
    try:
        service.start()
        wait_for(lambda: service.last_pull is not None, 30)
        before = len(opened)
        service.stop()
        assert not any(t.is_alive() for t in service._threads)
        assert opened[before:] == [], "the stop reopened the pusher's ledger connection"
        assert service.pusher._conn is None, "the pusher's connection was left open"
    finally:
        till.link.close()
        till.authoriser.close()
        till.agent.close()
        hub.stop()


def test_a_sync_stop_as_the_subscribe_stream_opens_ends_that_stream_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscribe thread that passed its `_stop` check just before a stop, and opened
    its stream after the stop looked for one to cancel, was not cancelled: it followed
    the hub's heartbeats until the stop's wait for it ran out (`STOP_WAIT_S`, 10 s) and
    the link's close ended the stream. Now it cancels a stream opened after a stop, and
    (left42) the stop closes the link before it waits: either way the subscribe thread
    has ended when `stop` returns."""
    import sys as _sys

    from tillpoint.sync import service as sync_service
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import FAST, LoopbackHub, sample_master_data, wait_for
    from tillpoint.sync.service import SyncService

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    enrollment = till.link.enrollment
    service = SyncService(till.agent, HubLink(hub.address, enrollment), enrollment, FAST)
    real_version = sync_service.cache_version
    at_open = threading.Event()

    def version_at_open(data_dir: Path) -> int:
        if hold.is_set() and _sys._getframe(1).f_code.co_name == "_subscribe":
            at_open.set()  # past the `_stop` check, before the stream opens
            assert service._stop.wait(30)
        return int(real_version(data_dir))

    hold = threading.Event()
    monkeypatch.setattr(sync_service, "cache_version", version_at_open)
    try:
        service.start()
        wait_for(lambda: service._subscription is not None, 30)
        hold.set()
        service._subscription.cancel()  # the stream reopens: held at its open
        assert at_open.wait(30)
        service.stop()
        alive = [t.is_alive() for t in service._threads if t.name == "tillpoint-subscribe"]
        assert alive == [False], "the stream opened after the stop ran on past the stop"
    finally:
        hold.clear()
        service._stop.set()
        till.link.close()
        till.authoriser.close()
        till.agent.close()
        hub.stop()
