"""What a long-running till keeps from call to call (review 46, leak46).

A till runs one `tillpoint run` for weeks and a POS calls it thousands of times a day:
whatever a call leaves behind (a memo, a dict of asks, per-connection state) adds up.
The memory tests before these held the sync pull and weighed quotes only
(tests/test_sync_long_lived.py, tests/test_long_lived_pricing.py). These hold the rest of
the agent's calls. A cycle's 13 calls each take a new receipt id, unknown card, phone,
coupon code or refund id: a known customer's points quoted, held and the hold cancelled;
a receipt quoted, held and confirmed; a checkout; a refund; identify (an unknown card, a
new phone); balance (known, unknown); a Confirm of no hold (refused). `WARM` cycles fill
what is bounded, then tracemalloc (started before the warm-up: what a bounded memo lets go
counts too) reads what each of two windows of cycles after it keeps, and the smaller
counts (`least_kept`: a bounded thing fills in one window, a leak grows in both; session
46's CI read 20.4 kB over the hub run's one window, sqlite3's statement caches and the
free lists filling, where 4-8 kB was measured here):

- the default run, `CYCLES` cycles a window: under `PER_CALL` bytes a call, so a leak of 100 bytes
  a call (or of ~520 in one of the cycle's calls) fails;
- the long runs (`slow`, `make test-all`), `LONG_CYCLES` cycles a window: under `PER_CYCLE` bytes
  a cycle, so a leak of 100 bytes in any one of the cycle's calls fails.

Measured here (load 30-45): 3-18 kB kept over 60-150 cycles, bounded things that fill
slowly (the standard library's JSON reader, sqlite3's statement caches, where the last
call's objects stood), no call keeping anything. Three doors: `Agent` itself (the CLI's
and `run`'s core); the HTTP interface (`HttpServer` on 127.0.0.1, keep-alive and a new
connection each cycle, `/healthz`, `/v1/status`, a 400 and a 404 among the calls); the
gRPC server (`build_server`, `tillpoint.client` over a real channel).

The ledger's `synchronous` is set to OFF on the agent's own connection (an fsync a commit
is disk time, no memory). The long run with a real `tillpoint run`, a hub process and
three tills is `bench/leakday.py` (docs/PERFORMANCE.md, "What a long-running till and
its hub keep").
"""

from __future__ import annotations

import http.client
import json
import tracemalloc
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import TillpointError
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import ean13, grpc_served, receipt, snapshot
from .kept_memory import least_kept, settled

WARM = 15
CYCLES = 60
PER_CALL = 40  # bytes a call may keep in the default run: 100 a call fails
LONG_CYCLES = 500
PER_CYCLE = 100  # bytes a cycle may keep in the long runs: 100 in one of its calls fails
KNOWN = ["2770000000017", "2770000000024", "+79161234567"]
REFUND_AT = "2026-11-23T11:00:00+03:00"


def cycle(n: int) -> list[tuple[str, Any]]:
    """One cycle's calls, (call, body) as the HTTP interface takes them: every id, card,
    phone and coupon code new to the cycle. A known customer's points are held and the
    hold cancelled (their ledger history stays as it was: a standalone till never pushes,
    and a history that grows is no call's memory)."""
    rid = f"r{n}"
    unknown = ean13(f"27799{n:07d}")
    known = KNOWN[n % len(KNOWN)]
    held = receipt(f"{rid}h", card=known, redeemPoints=10)
    sold = receipt(rid, card=unknown, coupons=[f"C{n}"])
    refund = {
        "refundId": f"f{n}",
        "receiptId": rid,
        "at": REFUND_AT,
        "lines": [{"sku": "4601234000017", "qty": "1"}],
    }
    return [
        ("quote", held),
        ("hold", held),
        ("cancel", {"receiptId": f"{rid}h"}),
        ("quote", sold),
        ("hold", sold),
        ("confirm", {"receiptId": rid, "fiscalDocument": f"FD-{n}"}),
        ("checkout", receipt(f"{rid}c", card=f"+7916{n:07d}")),
        ("refund", refund),
        ("identify", {"text": unknown}),
        ("identify", {"text": f"+7903{n:07d}"}),
        ("balance", {"card": known}),
        ("balance", {"card": unknown}),
        ("confirm", {"receiptId": f"none-{n}"}),  # refused: no such hold
    ]


def direct(agent: Agent, call: str, body: dict[str, Any]) -> None:
    """The call on the agent itself; its refusals are answers too."""
    try:
        if call in ("quote", "hold", "checkout"):
            getattr(agent, call)(receipt_from_json(body))
        elif call == "confirm":
            agent.confirm(body["receiptId"], body.get("fiscalDocument"))
        elif call == "cancel":
            agent.cancel(body["receiptId"])
        elif call == "refund":
            agent.refund(refund_from_json(body))
        elif call == "identify":
            agent.identify(body["text"])
        elif call == "balance":
            agent.balance(body["card"], datetime.fromisoformat(REFUND_AT))
    except TillpointError:
        pass


def fill_json_readers() -> None:
    """Fill pydantic-core's cache of the strings it reads from JSON (jiter's: 16,384 at
    most, ~0.9 MB, set by the model's `cache_strings`, on by default) with strings made
    under tracing: a body's receipt id, card and coupon code new to the call each took a
    slot, kept until another string takes it. Filled before the window, what a call puts
    in replaces what was there (~97 % of the slots filled: 60,000 strings).

    And the standard library's JSON reader as the HTTP bodies of Confirm, Cancel,
    Identify, Balance and Refund are read (`cli.parse_json`): what it keeps levels off at
    ~14 kB after some thousands of documents (measured: +2.1 kB over the first 1,000, +0.6
    kB over 9,000 more), more than a short window allows a cycle."""
    import pydantic_core
    from tillpoint.agent.cli import parse_json

    for start in range(0, 60_000, 20_000):
        words = [f"fill-{i}" for i in range(start, start + 20_000)]
        pydantic_core.from_json(json.dumps(words).encode(), cache_strings=True)
    for n in range(5_000):
        parse_json(json.dumps({"receiptId": f"fill-{n}", "text": f"+7{n:010d}"}), "fill")


def kept_by(
    run_cycle: Callable[[int], None],
    cycles: int,
    between: Callable[[], None] = settled,
    json_bodies: bool = False,
) -> int:
    """Bytes `cycles` cycles keep after `WARM` (tracing from before the warm-up), checked
    against the bound of the default run (`CYCLES`) or of the long one."""
    calls = cycles * len(cycle(0))
    limit = calls * PER_CALL if cycles <= CYCLES else cycles * PER_CYCLE
    tracemalloc.start()
    try:
        if json_bodies:  # the calls' bodies are read from JSON (HTTP)
            fill_json_readers()
        for n in range(WARM):
            run_cycle(n)

        def window(k: int) -> None:
            for n in range(10_000 * (k + 1), 10_000 * (k + 1) + cycles):
                run_cycle(n)

        least, read = least_kept(window, between)
    finally:
        tracemalloc.stop()
    assert least.grown < limit, (
        f"{least.grown} bytes kept after {cycles} cycles, {calls} calls, over {limit}"
        f" in each of {len(read)} windows: {'; '.join(map(str, read))}"
    )
    return least.grown


@pytest.fixture
def till(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        agent._ledger.execute("PRAGMA synchronous = OFF")  # disk time, not memory
        yield agent
    finally:
        agent.close()


def agent_calls(agent: Agent, cycles: int) -> None:
    def run(n: int) -> None:
        for call, body in cycle(n):
            direct(agent, call, body)

    kept_by(run, cycles)


def http_calls(agent: Agent, cycles: int) -> None:
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.sync.loopback import wait_for

    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connections = server.serve.server.server_state.connections

    def ask(c: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> int:
        raw = None if body is None else json.dumps(body).encode()
        c.request(method, path, raw, {"Content-Type": "application/json"} if raw else {})
        resp = c.getresponse()
        resp.read()
        return resp.status

    def run(n: int) -> None:
        for call, body in cycle(n):
            status = ask(conn, "POST", f"/v1/{call}", body)
            assert status in (200, 404), (call, status)
        assert ask(conn, "GET", "/healthz") == 200
        assert ask(conn, "GET", "/v1/status") == 200
        assert ask(conn, "POST", "/v1/quote", {"receiptId": f"x{n}", "lines": "no"}) == 400
        assert ask(conn, "GET", f"/v1/nothing-{n}") == 404
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            assert ask(other, "POST", "/v1/identify", {"text": f"+7905{n:07d}"}) == 200
        finally:
            other.close()

    def between() -> None:
        # the connections the client closed are gone at the server (its loop saw EOF)
        wait_for(lambda: len(connections) == 1, timeout=30)
        # the standard library's memo of the last 128 URLs split (Starlette splits each
        # request's; an unknown path each cycle here), emptied at both ends of the window
        urllib.parse.urlsplit.cache_clear()
        settled()

    try:
        kept_by(run, cycles, between, json_bodies=True)
    finally:
        conn.close()
        server.stop()


def grpc_calls(agent: Agent, cycles: int) -> None:
    from tillpoint.agent.client import ClientError, PosAgentClient

    with grpc_served(agent) as port:
        client = PosAgentClient(f"127.0.0.1:{port}", timeout=30, attempts=1)

        def run(n: int) -> None:
            for call, body in cycle(n):
                try:
                    if call in ("quote", "hold", "checkout", "refund"):
                        getattr(client, call)(body)
                    elif call == "confirm":
                        client.confirm(body["receiptId"], body.get("fiscalDocument") or "")
                    elif call == "cancel":
                        client.cancel(body["receiptId"])
                    elif call == "identify":
                        client.identify(body["text"])
                    else:
                        client.call("Balance", body)
                except ClientError:
                    pass

        try:
            kept_by(run, cycles)
        finally:
            client.close()


@pytest.mark.slow  # review 51, for CI's budget: the HTTP and gRPC doors below stay
def test_the_agents_calls_keep_nothing_per_call(till: Agent) -> None:
    """Hold, cancel, confirm, checkout, refund, identify, balance and a refusal on the
    agent itself: nothing kept per receipt id, card, phone, coupon code or refund id.
    (The default run's HTTP and gRPC doors drive the same calls through the agent, under
    the same bound a call.)"""
    agent_calls(till, CYCLES)


def test_the_http_interface_keeps_nothing_per_call_or_connection(till: Agent) -> None:
    """The same calls over HTTP (keep-alive), a new connection each cycle, `/healthz`,
    `/v1/status`, a body that is no receipt (400) and an unknown path (404): the
    interface keeps nothing per call, nor per connection once it is closed."""
    http_calls(till, CYCLES)


def test_the_grpc_server_keeps_nothing_per_call(till: Agent) -> None:
    """The same calls over gRPC (`tillpoint.client` over a real channel)."""
    grpc_calls(till, CYCLES)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("door", ["agent", "http", "grpc"])
def test_a_long_run_keeps_nothing_per_call(till: Agent, door: str) -> None:
    """The long runs: `LONG_CYCLES` cycles keep under `PER_CYCLE` bytes each, so a leak
    of 100 bytes in any one of a cycle's calls fails."""
    {"agent": agent_calls, "http": http_calls, "grpc": grpc_calls}[door](till, LONG_CYCLES)


HUB_WARM = 8
HUB_CYCLES = 12
HUB_LONG_CYCLES = 120
HUB_PER_CYCLE = 1_000  # bytes a cycle (three tills' 18 calls, 3 pushes, 3 pulls) may keep
HUB_SHORT_KEPT = 20_000  # bytes the short run's 12 cycles may keep (measured: 4-8 kB)


def hub_day(tmp_path: Path, cycles: int, limit: int) -> int:
    """Three tills of one in-process hub (its store, its gRPC server, the tills' hub
    authorisers and sync): each cycle, each till holds a known customer's points at the
    hub and cancels (the release), sells to a known customer redeeming (a grant) and to
    an unknown card, on new receipt ids, then pushes its sales and pulls; what the hub's
    per-till and per-customer state and the tills' hub paths keep must be bounded."""
    from tillpoint.sync.loopback import FAST, LoopbackHub, sample_master_data, wait_for
    from tillpoint.sync.pull import cache_version
    from tillpoint.sync.service import SyncService

    from .conftest import answered

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    tills: list[Any] = []
    services: list[SyncService] = []

    def run(n: int) -> None:
        for i, (till, service) in enumerate(zip(tills, services, strict=True)):
            known = ("2770000000017", "2770000000024")[(n + i) % 2]
            rid = f"t{i}-{n}"
            held = receipt_from_json(receipt(f"{rid}h", card=known, redeemPoints=10))
            till.agent.hold(held)
            till.agent.cancel(f"{rid}h")
            till.agent.checkout(receipt_from_json(receipt(rid, card=known, redeemPoints=5)))
            unknown = ean13(f"27798{n:07d}")
            till.agent.checkout(receipt_from_json(receipt(f"{rid}u", card=unknown)))
            till.agent.identify(unknown)
            till.agent.balance(known)
            assert service._push_once()
            service._pull_once()

    try:
        for i in (1, 2, 3):
            till = hub.till(f"till-{i}", tmp_path / f"till-{i}", start=False, timings=answered())
            tills.append(till)
            services.append(SyncService(till.agent, till.link, till.link.enrollment, FAST))
            till.agent._ledger.execute("PRAGMA synchronous = OFF")  # disk time, not memory
            services[-1]._pull_once()  # the hub's first snapshot
            wait_for(lambda till=till: cache_version(till.data_dir) == 1)
        tracemalloc.start()
        for n in range(HUB_WARM):
            run(n)

        def window(k: int) -> None:
            for n in range(10_000 * (k + 1), 10_000 * (k + 1) + cycles):
                run(n)

        least, read = least_kept(window)
    finally:
        tracemalloc.stop()
        for service in services:
            service.pusher.close()
        for till in tills:
            till.stop()
        hub.stop()
    assert least.grown < limit, (
        f"{least.grown} bytes kept after {cycles} cycles in each of {len(read)} windows:"
        f" {'; '.join(map(str, read))}"
    )
    return least.grown


def test_a_hub_and_three_tills_keep_nothing_per_sale_or_push(tmp_path: Path) -> None:
    """The short run: `HUB_CYCLES` cycles under `HUB_SHORT_KEPT` bytes (a push, a hold at
    the hub or a release keeping ~600 bytes fails it)."""
    hub_day(tmp_path, HUB_CYCLES, HUB_SHORT_KEPT)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_hub_and_three_tills_keep_nothing_per_sale_or_push_longer(tmp_path: Path) -> None:
    """Long: `HUB_LONG_CYCLES` cycles under `HUB_PER_CYCLE` bytes each (measured: 23 kB
    over 120, against 120,000): a push or a hold keeping 350 bytes fails."""
    hub_day(tmp_path, HUB_LONG_CYCLES, HUB_LONG_CYCLES * HUB_PER_CYCLE)
