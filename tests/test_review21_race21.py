"""Review 21 (race21): races of concurrent calls on one till, with a real hub on 127.0.0.1.

- A receipt's hold at the hub is placed one call at a time (agent/hub_turns.py): two
  calls under one receiptId sent at once used to ask the hub each, and the later request
  replaced the hold the till stored with the other one's figures (docs/CONTRACT.md §11).
- `tillpoint run` stopping: a call still running when the 5 s grace ends is answered
  UNAVAILABLE (HTTP: the JSON 503, not a plain 500) and ends whole before the agent closes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import Conflict
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import HubGrant
from tillpoint.sync.loopback import LoopbackHub, Till, receipt, sample_master_data, wait_for

from .conftest import PassThroughHub, answered, enrolled_till
from .test_coupons import SORRY

CARD = "2770000000017"  # Anna, 1200 points
DEVICE = "till-1"


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    data = sample_master_data() | {
        "offers": [SORRY],
        "coupons": [{"code": "ONCE1", "offerId": "o-sorry"}],
    }
    hub = LoopbackHub(tmp_path / "hub", data=data)
    yield hub
    hub.stop()


@pytest.fixture()
def till(hub: LoopbackHub, tmp_path: Path) -> Iterator[Till]:
    till = enrolled_till(
        hub, tmp_path / "till", DEVICE, timings=answered()
    )  # the hub answers in time (flake44)
    yield till
    till.stop()


class Interleave(PassThroughHub):
    """The till's real hub authoriser, whose first authorisation waits (up to `wait_s`)
    until a second one has started: the order two calls at once may take on a busy till
    (the first's request answered, the second's sent before the first commits)."""

    def __init__(self, inner: Any, wait_s: float = 1.5) -> None:
        super().__init__(inner)
        self.calls = 0
        self.second = threading.Event()
        self.wait_s = wait_s
        self._lock = threading.Lock()

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
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if not first:
            self.second.set()
        grant: HubGrant = self.inner.authorise(
            customer_id,
            receipt_id,
            points,
            at,
            hold_ttl_s,
            coupon_codes,
            offline_limit=offline_limit,
        )
        if first:
            self.second.wait(self.wait_s)
        return grant


def hub_holds(hub: LoopbackHub, receipt_id: str) -> tuple[int, list[str]]:
    conn = sqlite3.connect(hub.root / "hub.db")
    try:
        points = conn.execute(
            "SELECT coalesce(sum(points), 0) FROM holds"
            " WHERE device_id = ? AND receipt_id = ? AND state = 'ACTIVE'",
            (DEVICE, receipt_id),
        ).fetchone()[0]
        codes = [
            c
            for (c,) in conn.execute(
                "SELECT code FROM coupon_holds WHERE device_id = ? AND receipt_id = ?"
                " ORDER BY code",
                (DEVICE, receipt_id),
            )
        ]
    finally:
        conn.close()
    return int(points), codes


def race(gate: Interleave, first: Any, second: Any) -> list[Any]:
    """Run `first`, and `second` once the first has sent its hub request; each one's
    result or the exception it raised."""
    out: list[Any] = [None, None]

    def run(i: int, call: Any) -> None:
        try:
            out[i] = call()
        except Exception as exc:  # the conflict is an answer here
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    threads[0].start()
    wait_for(lambda: gate.calls >= 1, 10)
    threads[1].start()
    for t in threads:
        t.join(30)
    return out


@pytest.mark.parametrize("big_first", [True, False], ids=["big-first", "small-first"])
@pytest.mark.parametrize("what", ["hold", "checkout"])
def test_a_conflicting_call_at_once_leaves_the_hub_hold_as_the_till_stored_it(
    hub: LoopbackHub, till: Till, what: str, big_first: bool
) -> None:
    """Two bodies under one receiptId at once: one is stored, the other is a conflict, and
    the hub holds exactly what the stored one reserved (points and coupon codes): the
    conflict's request never replaced it (before, the hub held the loser's 10 points for a
    receipt that spends 300, so another till could spend them again; or the loser's 300
    points and its coupon code, which no other receipt could then use, for a receipt that
    spends 10)."""
    agent = till.agent
    gate = Interleave(agent.hub)
    agent.hub = gate
    big = receipt(
        "r-conflict",
        CARD,
        redeem=300,
        lines=[{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}],
    )
    big["coupons"] = ["ONCE1"]
    small = receipt("r-conflict", CARD, redeem=10)
    call = getattr(agent, what)
    bodies = (big, small) if big_first else (small, big)
    first, second = race(
        gate, lambda: call(receipt_from_json(bodies[0])), lambda: call(receipt_from_json(bodies[1]))
    )
    assert not isinstance(first, Exception), first
    assert isinstance(second, Conflict), second
    codes = [v.code for v in first.coupons if v.status == "APPLIED"]
    assert (first.redeemed_points, codes) == ((300, ["ONCE1"]) if big_first else (10, []))
    # a checkout too: its transaction is not pushed here (no sync running), so the hub
    # holds its points and code until it arrives
    assert hub_holds(hub, "r-conflict") == (first.redeemed_points, codes)


def test_a_call_still_running_when_the_http_grace_ends_is_a_json_503_and_keeps_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tillpoint run` stopping (SIGTERM) gives in-flight HTTP calls GRACE_S; a checkout
    still running then (its ledger write waiting here for another writer) went on in the
    pool and committed, while the POS got uvicorn's plain-text "Internal Server Error",
    which says "a bug" (§12). Now: the JSON 503 UNAVAILABLE, retry with the same
    receiptId, and the retry answers what was stored (the call still finishes whole)."""
    from tillpoint.agent import http_api
    from tillpoint.agent.service import Agent

    from .conftest import receipt as local_receipt
    from .conftest import snapshot
    from .test_http_api import Client, error_of

    monkeypatch.setattr(http_api, "GRACE_S", 0.5)
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    srv = http_api.HttpServer(agent, "127.0.0.1:0")
    srv.start()
    other = sqlite3.connect(tmp_path / "data" / "ledger.db", isolation_level=None)
    answers: list[Any] = []
    client = Client(srv.port)
    # The server's call has begun (the HTTP layer looks the agent's method up at each call).
    # A fixed 0.3 s for it to get there could end, on a busy machine, before the request
    # had reached the server: the stop then refused the connection and there was no answer.
    in_pool = threading.Event()
    checkout = agent.checkout

    def entered(request: Any) -> Any:
        in_pool.set()
        return checkout(request)

    agent.checkout = entered  # type: ignore[method-assign]
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer: the checkout's write waits
        sale = local_receipt("r-grace")
        sender = threading.Thread(target=lambda: answers.append(client.post("/v1/checkout", sale)))
        sender.start()
        assert in_pool.wait(10)  # the call is in the pool, about to wait for the ledger
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        sender.join(10)  # the grace ends first
        time.sleep(0.5)
        other.execute("COMMIT")  # the checkout goes on
        stopper.join(10)
        assert not stopper.is_alive() and answers
        status, code, message = error_of(answers[0])
        assert (status, code) == (503, "UNAVAILABLE")
        assert "retry with the same receiptId" in message
        # the call went on to its end: stored whole, and a retry answers what was stored
        again = agent.checkout(receipt_from_json(sale))
        assert again.state == "CONFIRMED" and again.seq == 1
    finally:
        client.close()
        other.close()
        agent.close()


@pytest.mark.slow  # a real `tillpoint run` whose hub answers after the 5 s grace: about 15 s
def test_a_grpc_call_still_running_when_run_stops_ends_whole_before_the_agent_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a gRPC checkout waits for a slow hub's grant (longer than the 5 s
    grace). gRPC cancels the call (the POS hears UNAVAILABLE and retries), but its handler
    went on after `run` had stopped the hub link and closed the agent: the sale failed
    as "the ledger is busy or unavailable: Cannot operate on a closed database" (logged
    as sales refused) and the hub kept the hold it had granted for a receipt the till
    never stored. Now `run` waits for the handler: the receipt is stored whole (receipt,
    journal, outbox), and the retry after the restart answers it."""
    import json
    import os
    import signal
    import subprocess
    import sys

    import grpc
    from google.protobuf import json_format
    from tillpoint.sync.hub_server import HubServicer
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    from .conftest import free_port

    granted = HubServicer.AuthorizeRedemption

    def slow(self: Any, request: Any, context: Any) -> Any:
        time.sleep(7)  # a hub far away: past the agent's 5 s grace
        return granted(self, request, context)

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", slow)
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till"
    hub.enroll(DEVICE, data)
    port = free_port()
    conf = tmp_path / "t.toml"
    conf.write_text(
        f'device_id = "{DEVICE}"\n[hub]\naddress = "{hub.address}"\nredeem_timeout_ms = 20000\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n[metrics]\nenabled = false\n'
        '[http]\nlisten = "127.0.0.1:0"\n'
    )
    exe = Path(sys.executable).parent / "tillpoint"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    log = tmp_path / "agent.log"
    sale = receipt("r-slow", CARD, redeem=50)
    request = json_format.ParseDict(sale, pb.Receipt())

    def start() -> tuple[subprocess.Popen[bytes], grpc.Channel, Any]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [exe, "--config", conf, "--data-dir", data, "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.PosAgentStub(channel)
        wait_for(lambda: stub.Status(pb.StatusRequest(), timeout=5).cache_version > 0, 60)
        return proc, channel, stub

    proc, channel, stub = start()
    try:
        call = stub.Checkout.future(request, timeout=30)
        time.sleep(1.0)  # the checkout waits for the hub
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as cut:
            call.result()
        assert cut.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert proc.wait(timeout=60) == 0
        channel.close()
        text = log.read_text(encoding="utf-8")
        assert "closed database" not in text and "sales are refused" not in text
        conn = sqlite3.connect(data / "ledger.db")
        try:
            found = [
                conn.execute(sql, ("r-slow",)).fetchone()[0]
                for sql in (
                    "SELECT count(*) FROM receipts WHERE receipt_id = ?",
                    "SELECT count(*) FROM journal WHERE ref_id = ?",
                    "SELECT count(*) FROM outbox o JOIN journal j USING (device_id, seq)"
                    " WHERE j.ref_id = ?",
                )
            ]
        finally:
            conn.close()
        assert found == [1, 1, 1]  # stored whole, while the hub link was still there
        monkeypatch.setattr(HubServicer, "AuthorizeRedemption", granted)
        proc, channel, stub = start()
        again = stub.Checkout(request, timeout=30)  # the POS's retry: the stored answer
        assert (again.receipt_id, again.state, again.seq) == ("r-slow", pb.CONFIRMED, 1)
        assert json.loads(json_format.MessageToJson(again))["redeemedPoints"] in ("50", 50)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        channel.close()
        hub.stop()


@pytest.mark.slow  # a real `tillpoint run`: about 8 s
def test_run_still_stops_within_the_grace_with_health_watch_streams_open(tmp_path: Path) -> None:
    """`run` now waits for its gRPC workers before closing the agent: a health `Watch`
    stream (a load balancer, a POS's health check) runs on them and must not hold the
    stop beyond the grace."""
    import os
    import signal
    import subprocess
    import sys

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tillpoint.agent.app import stop_time_s
    from tillpoint.agent.service import Agent

    from .conftest import free_port, snapshot
    from .stopclock import stop_seconds

    data = tmp_path / "data"
    seed = Agent(data, "till-1")
    seed.load_snapshot(snapshot())
    seed.close()
    port = free_port()
    conf = tmp_path / "t.toml"
    conf.write_text(
        f'device_id = "till-1"\n[server]\nlisten = "127.0.0.1:{port}"\n[metrics]\nenabled = false\n'
        '[http]\nlisten = "127.0.0.1:0"\n'
    )
    exe = Path(sys.executable).parent / "tillpoint"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    log = tmp_path / "run.log"  # the stop timed on the process's own clock
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [exe, "--config", conf, "--data-dir", data, "run"], env=env, stderr=out
        )
    ended: list[Any] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = health_pb2_grpc.HealthStub(channel)

            def watch() -> None:
                try:
                    for _ in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                        pass
                except grpc.RpcError as exc:
                    ended.append(exc.code())

            watchers = [threading.Thread(target=watch, daemon=True) for _ in range(3)]
            for w in watchers:
                w.start()
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            # the 5 s grace, then the stop: within the shipped bound, on the run's own
            # clock (a stop the streams held would never end; review 44, flake44)
            assert stop_seconds(log) < stop_time_s(None), log.read_text()[-2000:]
            for w in watchers:
                w.join(10)
        assert len(ended) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
