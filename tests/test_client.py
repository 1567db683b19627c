"""The Python client (`tillpoint.client`) against a real PosAgent server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.client import ClientError, PosAgentClient

from .conftest import free_port, receipt, snapshot


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "data", "till-1")
    a.load_snapshot(snapshot())
    yield a
    a.close()


@pytest.fixture
def served(agent: Agent) -> Iterator[str]:
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


class _SlowFirst(grpc.ServerInterceptor):
    """Lets the first call of `method` finish on the server only after `delay` seconds."""

    def __init__(self, method: str, delay: float) -> None:
        self.method, self.delay, self.calls = method, delay, 0

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.endswith("/" + self.method):
            return handler
        inner = handler.unary_unary

        def slow(request: Any, context: grpc.ServicerContext) -> Any:
            self.calls += 1
            answer = inner(request, context)  # the real call: it commits
            if self.calls == 1:
                time.sleep(self.delay)  # ... and its answer comes too late
            return answer

        return grpc.unary_unary_rpc_method_handler(
            slow,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_calls_return_the_proto3_json_documents(served: str) -> None:
    with PosAgentClient(served, timeout=5) as till:
        card = till.identify("+7 916 123-45-67")
        assert card == {"status": "FOUND", "customerId": "c-a", "tier": "gold", "firstName": "Анна"}
        quoted = till.quote(receipt(redeemPoints=100))
        assert quoted["printedOffers"] == [] and quoted["mode"] == "OFFLINE"
        result = till.checkout(receipt(redeemPoints=100))
        assert result["totalMinor"] == 17980 and isinstance(result["totalMinor"], int)
        assert result["redeemedPoints"] == 53
        assert result["payableMinor"] == 17980 - 5300
        assert result["heldOut"] == [] and result["lines"][0]["discountMinor"] == 0
        assert till.checkout(receipt(redeemPoints=100)) == result
        refund = till.refund(
            {
                "refundId": "f1",
                "receiptId": "r1",
                "at": "2026-11-24T10:00:00+03:00",
                "lines": [{"sku": "4601234000017", "qty": "2"}],
            }
        )
        assert refund["returnedPoints"] == 53 and refund["negativeBalance"] is False
        balance = till.balance("2770000000017", at="2026-11-24T11:00:00+03:00")
        assert balance == {"availablePoints": 1200, "pendingPoints": 0}
        status = till.status()
        assert status["lastSeq"] == 2 and status["deviceId"] == "till-1"
        assert till.retries == 0


def test_refusals_raise_client_error_without_retrying(served: str) -> None:
    with PosAgentClient(served, timeout=5) as till:
        with pytest.raises(ClientError) as refused:
            till.checkout(receipt(card="2770000000031"))
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.attempts == 1 and "\n" not in refused.value.message
        with pytest.raises(ClientError) as bad:
            till.quote(receipt(lines=[{"sku": "4601234000017", "qty": "1.2345", "priceMinor": 1}]))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ClientError) as unknown:  # refused before any call is made
            till.checkout(receipt(redeemPoint=5))
        assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert till.retries == 0
        assert till.status()["lastSeq"] == 0


def test_unavailable_is_retried_until_the_agent_listens(agent: Agent) -> None:
    port = free_port()
    started: list[grpc.Server] = []
    # attempts: room for a busy machine's slow server start (the backoff is 0.4 s at most)
    till = PosAgentClient(
        f"127.0.0.1:{port}", timeout=2, attempts=30, backoff=0.05, backoff_cap=0.4
    )

    def start_late() -> None:
        # the agent listens once the client was refused (a fixed 0.5 s from here could
        # pass, on a busy machine, before the client's first call: no retry to see)
        deadline = time.monotonic() + 30
        while till.retries < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        server, _, _ = build_server(agent, f"127.0.0.1:{port}")
        server.start()
        started.append(server)

    thread = threading.Thread(target=start_late)
    thread.start()
    try:
        with till:
            result = till.checkout(receipt())
            assert result["receiptId"] == "r1"
            assert till.retries >= 1
            assert till.status()["lastSeq"] == 1
    finally:
        thread.join()
        for server in started:
            server.stop(0).wait()


def test_a_lost_answer_is_retried_with_the_same_receipt_id(agent: Agent) -> None:
    slow = _SlowFirst("Checkout", delay=2.5)
    from concurrent import futures

    from tillpoint.agent.server import PosAgentServicer
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[slow])
    pb_grpc.add_PosAgentServicer_to_server(PosAgentServicer(agent), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with PosAgentClient(f"127.0.0.1:{port}", timeout=1.0, attempts=4, backoff=0.05) as till:
            result = till.checkout(receipt(redeemPoints=100))
            assert till.retries >= 1 and slow.calls == till.retries + 1
            # the first attempt committed; the retry got the stored result, counted once
            status = till.status()
            assert status["lastSeq"] == 1 and status["outboxDepth"] == 1
            assert result["redeemedPoints"] == 53
            assert (
                till.balance("2770000000017")["availablePoints"]
                == 1200 - 53 + (result["earnedPoints"])
            )
    finally:
        server.stop(0).wait()


def test_gives_up_after_its_attempts_with_the_last_error() -> None:
    waits: list[float] = []
    port = free_port()
    with (
        PosAgentClient(
            f"127.0.0.1:{port}", timeout=0.5, attempts=3, backoff=0.1, sleep=waits.append
        ) as till,
        pytest.raises(ClientError) as failed,
    ):
        till.status()
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE and failed.value.attempts == 3
    assert len(waits) == 2
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2  # growing, with jitter


def test_hold_confirm_cancel_when_the_agent_has_them(served: str) -> None:
    from tillpoint.v1 import tillpoint_pb2 as pb

    methods = pb.DESCRIPTOR.services_by_name["PosAgent"].methods_by_name
    with PosAgentClient(served, timeout=5) as till:
        if "Hold" not in methods:
            with pytest.raises(ClientError) as missing:
                till.hold(receipt())
            assert missing.value.code == grpc.StatusCode.UNIMPLEMENTED
            return
        held = till.hold(receipt())
        assert held["state"] == "HELD"
        confirmed = till.confirm("r1", fiscal_document="FD-1")
        assert confirmed["state"] == "CONFIRMED"
        assert till.confirm("r1", fiscal_document="FD-1") == confirmed
        till.hold(receipt("r2"))
        till.cancel("r2")
        with pytest.raises(ClientError) as expired:
            till.confirm("r2")
        assert expired.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_the_client_has_the_short_name_the_issue_gives_it() -> None:
    """`tillpoint.client` (issue 11's name) is the code of `tillpoint.agent.client`."""
    import tillpoint.client

    assert tillpoint.client.PosAgentClient is tillpoint.agent.client.PosAgentClient
    assert tillpoint.client.ClientError is tillpoint.agent.client.ClientError
    assert set(tillpoint.client.__all__) == set(tillpoint.agent.client.__all__)
