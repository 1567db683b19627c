"""Review 25 (pos25): the product as a POS integrator meets it — the CLI, the local HTTP
interface and gRPC (docs/CONTRACT.md §10–§12) — each finding with the test that failed
before its fix."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from tillpoint.agent.limits import REQUEST_MAX_BYTES
from tillpoint.agent.server import TRANSPORT_MAX_BYTES
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import grpc_served, receipt

TIMEOUT = 10


def _refusal(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call was answered")


def test_grpc_request_over_4_mib_is_bad_input_as_through_the_other_doors(agent: Agent) -> None:
    """docs/CONTRACT.md §10: a request larger than 4 MiB is bad input: exit 2 (CLI), 400
    INVALID_ARGUMENT (HTTP), and INVALID_ARGUMENT over gRPC, where gRPC itself answered
    RESOURCE_EXHAUSTED "Received message larger than max" before the agent saw it."""
    with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        big = json_format.ParseDict(receipt("big", storeId="s" * REQUEST_MAX_BYTES), pb.Receipt())
        assert big.ByteSize() > REQUEST_MAX_BYTES
        for call in (stub.Checkout, stub.Hold, stub.Quote):
            code, details = _refusal(call, big)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            assert "larger than 4 MiB" in details and "\n" not in details
        code, _ = _refusal(stub.Identify, pb.IdentifyRequest(text="7" * REQUEST_MAX_BYTES))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert agent.status().outbox_depth == 0  # nothing stored
        # exactly 4 MiB is still a request (here refused for its 4 MiB storeId: a field)
        size = big.ByteSize() - REQUEST_MAX_BYTES
        exact = json_format.ParseDict(
            receipt("big", storeId="s" * (REQUEST_MAX_BYTES - size)), pb.Receipt()
        )
        assert exact.ByteSize() == REQUEST_MAX_BYTES
        code, details = _refusal(stub.Checkout, exact)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "storeId is too long" in details
        # past what gRPC reads of a request at all (16 MiB), gRPC itself refuses it
        huge = pb.Receipt(receipt_id="huge", store_id="s" * (TRANSPORT_MAX_BYTES + 1))
        code, _ = _refusal(stub.Checkout, huge)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = stub.Quote(json_format.ParseDict(receipt("small"), pb.Receipt()), timeout=TIMEOUT)
        assert ok.card.status == pb.FOUND
