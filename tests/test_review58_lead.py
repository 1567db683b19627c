"""Session 58 (lead): the hub watches its tills' links, as the tills watch theirs, and
the till's own gRPC server watches its clients' links.

A till that vanishes without a word (its power cut, a cable pulled past the store's
switch, a NAT that forgot the connection) leaves its Subscribe stream open on the hub,
and that stream holds one of the hub's `max_workers` threads. Until this session the hub
sent no keep-alive pings of its own, so the thread was held until `stream_max_s` (300 s)
ended the stream: after a store's network flapped, every till of it held two threads
for five minutes, and a hub near its `--workers` made the live tills' pushes wait. The
till's gRPC server sent none either: two reflection tools that left the network held its
two reflection threads for good. Real
parts: the reference hub over mTLS on loopback, review 24's TCP forwarder gone silent
(review 57's `SilentProxy`), the till's own `HubLink`. docs/DECISIONS.md, "Session 58
(lead)"."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent import server
from tillpoint.agent.service import Agent
from tillpoint.sync import client, hub_server
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import ChannelStates
from .test_review24_hub24 import Proxy
from .test_review57_mut57b import SilentProxy

CONNECT_S = 30.0  # a loaded machine's handshake
YEARS_S = 10 * 365 * 86400.0  # a snapshot valid whatever day the test runs
# The live till's call may wait this long for the hub's one worker: the dead till's
# stream, noticed by pings 1 s apart answered within 3 s, ends well within it; held
# until `stream_max_s` (300 s), it never does.
ANSWER_S = 45.0
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
LIST_SERVICES = b"\x3a\x00"  # a ServerReflectionRequest: list_services ""


@pytest.fixture
def pinging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's pings each 1 s, 3 s for an answer (shipped: 30 s and a minute)."""
    monkeypatch.setattr(hub_server, "KEEPALIVE_MS", 1_000)
    monkeypatch.setattr(hub_server, "KEEPALIVE_TIMEOUT_MS", 3_000)


def one_worker_hub(root: Path) -> LoopbackHub:
    """A hub with a single worker thread: whoever holds it, every other call waits."""
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0, max_workers=1)
    return LoopbackHub(root, config)


def test_a_till_gone_silent_gives_back_the_hub_thread_its_stream_held(
    tmp_path: Path, pinging: None
) -> None:
    """A till's Subscribe stream holds the hub's one worker; its link goes silent (nothing
    passes either way, no end of the connection is ever seen by the hub). The hub's ping
    goes unanswered, the hub ends the connection, the stream's wait ends with it,
    and another till's call is served. Fails before the fix: the hub sent no pings, the
    stream ran on to `stream_max_s` and the live till's call ran out of its 45 s."""
    hub = one_worker_hub(tmp_path / "hub")
    proxy = SilentProxy(hub.port)
    gone = HubLink(f"127.0.0.1:{proxy.port}", hub.enroll("till-gone", tmp_path / "gone"))
    live = HubLink(hub.address, hub.enroll("till-live", tmp_path / "live"))
    try:
        stream = gone.stub.Subscribe(pb.SubscribeRequest(device_id="till-gone"), timeout=600)
        assert next(stream).heartbeat_s == 1  # the stream is open: it holds the worker
        proxy.silence()
        reply = live.stub.ListTransactions(
            pb.ListTransactionsRequest(device_id="till-live"), timeout=ANSWER_S
        )
        assert list(reply.transactions) == []
        stream.cancel()
    finally:
        gone.close()
        live.close()
        proxy.close()
        hub.stop()


def test_the_hubs_pings_never_cost_a_live_till_its_connection(
    tmp_path: Path, pinging: None
) -> None:
    """A live till answers the hub's pings, sent each second here over a link with
    nothing else on it (the stream's heartbeat is a minute): its channel stays READY and
    its stream brings the next version the hub publishes. A till that took the hub's pings
    without data between for abuse would answer GOAWAY "too_many_pings" and connect again
    and again."""
    config = HubConfig(heartbeat_s=60.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), publish=False)
    link = HubLink(hub.address, hub.enroll("till-1", tmp_path / "till"))
    states = ChannelStates(link.channel)
    try:
        assert states.wait_ready(CONNECT_S), states.states
        stream = link.stub.Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=600)
        assert next(stream).latest_version == 0
        time.sleep(6.0)  # six of the hub's pings, nothing else on the link
        version = hub.publish()
        assert next(stream).latest_version == version
        stream.cancel()
        assert states.since_ready() == [grpc.ChannelConnectivity.READY], states.states
    finally:
        states.close()
        link.close()
        hub.stop()


def waiting_for_news(hub: LoopbackHub) -> None:
    """Until a Subscribe stream's thread waits for a newer version (threading's own list
    of a condition's waiters): a call cancelled before (its first message still being
    sent) ends at once in gRPC itself, and would prove nothing."""
    waiters = hub.server.notifier._cond._waiters  # type: ignore[attr-defined]
    assert wait_for(lambda: len(waiters) == 1, timeout=ANSWER_S)


def test_a_stream_whose_connection_ended_gives_back_its_thread_before_its_heartbeat(
    tmp_path: Path,
) -> None:
    """A till that cancels its stream (its agent stopping) or whose connection the hub's
    pings ended: the stream's wait for a newer version ends with the call, not at the
    next heartbeat. Here a heartbeat of ten minutes and a hub of one worker: another
    till's call is answered. Fails before: the stream's thread slept out the heartbeat
    (15 s as shipped) before it saw its call gone, and the call ran out of its 45 s."""
    config = HubConfig(heartbeat_s=600.0, watch_interval_s=0.1, publish_every_s=0, max_workers=1)
    hub = LoopbackHub(tmp_path / "hub", config)
    gone = HubLink(hub.address, hub.enroll("till-gone", tmp_path / "gone"))
    live = HubLink(hub.address, hub.enroll("till-live", tmp_path / "live"))
    try:
        stream = gone.stub.Subscribe(pb.SubscribeRequest(device_id="till-gone"), timeout=900)
        assert next(stream).heartbeat_s == 600  # the stream is open: it holds the worker
        waiting_for_news(hub)
        stream.cancel()
        reply = live.stub.ListTransactions(
            pb.ListTransactionsRequest(device_id="till-live"), timeout=ANSWER_S
        )
        assert list(reply.transactions) == []
    finally:
        gone.close()
        live.close()
        hub.stop()


# ---------------------------------------------------------------- the till's own door


def held_open(first: bytes, done: threading.Event) -> Iterator[bytes]:
    """A reflection tool's requests: one, then the stream held open (a GUI tool left
    connected) until `done`."""
    yield first
    done.wait(600)


def test_reflection_tools_gone_silent_give_back_the_agents_reflection_threads(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reflection streams (the agent serves `REFLECTION_THREADS`, 2, at once) from
    tools on another machine whose links then go silent (a laptop that left the store's
    Wi-Fi): the agent's pings go unanswered, it drops both connections, and a third tool
    is answered. Here pings each 1 s, 3 s for an answer (shipped: 30 s and 10 s, as the
    hub's). Fails before: the agent sent no pings, nothing ever ended the two streams,
    and reflection was refused to every tool until the till restarted."""
    monkeypatch.setattr(server, "KEEPALIVE_MS", 1_000)
    monkeypatch.setattr(server, "KEEPALIVE_TIMEOUT_MS", 3_000)
    grpc_server, port, health = server.build_server(agent, "127.0.0.1:0")
    grpc_server.start()
    done = threading.Event()
    proxies = [SilentProxy(port) for _ in range(server.REFLECTION_THREADS)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{p.port}") for p in proxies]
    streams = [
        channel.stream_stream(REFLECTION)(held_open(LIST_SERVICES, done)) for channel in channels
    ]
    try:
        for stream in streams:  # kept: a call's object collected cancels the call
            assert b"tillpoint.v1.PosAgent" in next(stream)
        for proxy in proxies:
            proxy.silence()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            (answer,) = channel.stream_stream(REFLECTION)(iter([LIST_SERVICES]), timeout=ANSWER_S)
        assert b"tillpoint.v1.PosAgent" in answer
    finally:
        done.set()
        for channel in channels:
            channel.close()
        for proxy in proxies:
            proxy.close()
        health.stop_following()
        grpc_server.stop(0).wait()


def test_the_agents_pings_never_cost_an_idle_pos_its_connection(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A POS whose channel sits idle between customers answers the agent's pings (each
    second here, no call under way): the channel stays READY, and the next sale's call
    is answered on it."""
    monkeypatch.setattr(server, "KEEPALIVE_MS", 1_000)
    monkeypatch.setattr(server, "KEEPALIVE_TIMEOUT_MS", 3_000)
    grpc_server, port, health = server.build_server(agent, "127.0.0.1:0")
    grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    states = ChannelStates(channel)
    try:
        assert states.wait_ready(CONNECT_S), states.states
        time.sleep(6.0)  # six of the agent's pings, nothing else on the link
        status = pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=ANSWER_S)
        assert status.cache_version == 1
        assert states.since_ready() == [grpc.ChannelConnectivity.READY], states.states
    finally:
        states.close()
        channel.close()
        health.stop_following()
        grpc_server.stop(0).wait()


# ---------------------------------------------------------------- a slow link's download


class SlowProxy(Proxy):
    """Review 24's TCP forwarder to the hub, passing one way at `rate` bytes a second (a
    store's slow line): what the hub sends, or with `uplink` what the till sends; the
    other way at once."""

    def __init__(self, port: int, rate: int, *, uplink: bool = False) -> None:
        self.rate = rate
        self.uplink = uplink
        super().__init__(port)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:  # type: ignore[override]
        slowed = (dst if self.uplink else src).getpeername()[1] == self.upstream
        with contextlib.suppress(OSError):
            while data := src.recv(4096 if slowed else 65536):
                dst.sendall(data)
                if slowed:
                    time.sleep(len(data) / self.rate)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def many_customers(count: int) -> dict[str, Any]:
    data = sample_master_data()
    data["customers"] += [
        {"id": f"x-{i}", "firstName": "Анна", "tier": "base", "balancePoints": i}
        for i in range(count)
    ]
    return data


def test_a_pull_over_a_slow_link_is_not_taken_for_a_dead_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A till whose link to its hub passes 100 KB a second pulls a snapshot of about
    0.75 MB (its first chunk whole took some 7 s with session 58's 1 MiB chunks): it
    finishes, with the till's ping timeout 3 s here (shipped: a minute). Fails before:
    gRPC's bandwidth probe pinged while the download ran, the answer came behind the data the
    hub had sent, after the ping timeout, and the connection was ended every time before
    the first chunk was whole ("ping timeout": the till never got the snapshot)."""
    monkeypatch.setattr(client, "KEEPALIVE_TIMEOUT_MS", 3_000)
    hub = LoopbackHub(tmp_path / "hub", data=many_customers(10_000), snapshot_ttl_s=YEARS_S)
    proxy = SlowProxy(hub.port, 100_000)
    link = HubLink(f"127.0.0.1:{proxy.port}", hub.enroll("till-1", tmp_path / "till"))
    try:
        chunks = list(
            link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id="till-1"), timeout=120)
        )
        assert sum(len(c.data) for c in chunks) == chunks[0].total_size > 600_000
    finally:
        link.close()
        proxy.close()
        hub.stop()


@pytest.mark.slow
def test_a_push_over_a_slow_line_with_the_shipped_pings_arrives(tmp_path: Path) -> None:
    """A till uploads a batch of 0.8 MB to its hub over a line passing 20 KB a second
    (40 s), with the shipped keep-alive values of both ends: the hub answers it (here it
    sets the bogus rows aside: the bytes' arrival is what is tested). Fails with review
    57's 10 s ping timeout at the till: its keep-alive ping, sent after 20 s with nothing
    read, waited behind its own upload and the connection was ended "ping timeout" at
    30 s, every time; so did the hub's at 10 s."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    proxy = SlowProxy(hub.port, 20_000, uplink=True)
    link = HubLink(f"127.0.0.1:{proxy.port}", hub.enroll("till-1", tmp_path / "till"))
    rows = [
        pb.Transaction(device_id="till-1", seq=i + 1, request_json="x" * 20_000) for i in range(40)
    ]
    try:
        ack = link.stub.PushTransactions(
            pb.TransactionBatch(device_id="till-1", transactions=rows), timeout=300
        )
        assert len(ack.results) == 40
    finally:
        link.close()
        proxy.close()
        hub.stop()
