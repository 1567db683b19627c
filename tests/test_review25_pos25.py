"""Review 25 (pos25): the product as a POS integrator meets it — the CLI, the local HTTP
interface and gRPC (docs/CONTRACT.md §10–§12) — each finding with the test that failed
before its fix."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.limits import REQUEST_MAX_BYTES
from tillpoint.agent.server import TRANSPORT_MAX_BYTES
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, grpc_served, post_json, receipt

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


def _reflect(channel: grpc.Channel, service: str, symbol: str) -> Any:
    from grpc_reflection.v1alpha import reflection_pb2

    info = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    return next(iter(info(iter([request]), timeout=TIMEOUT)))


def test_reflection_finds_the_file_of_a_method_as_grpcurl_describe_asks(agent: Agent) -> None:
    """docs/CONTRACT.md §12: reflection is on so grpcurl works without the .proto.
    `grpcurl describe tillpoint.v1.PosAgent.Hold` asks for the file containing the symbol
    `tillpoint.v1.PosAgent.Hold`: it was "not found" (the Python protobuf pool looks up
    messages, services, enums and fields, not methods), where a service, a message and a
    field were found."""
    from google.protobuf import descriptor_pb2

    with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for service in (
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ):
            for symbol in (
                "tillpoint.v1.PosAgent",
                "tillpoint.v1.PosAgent.Hold",
                "tillpoint.v1.PosAgent.Confirm",
                "grpc.health.v1.Health.Check",
                "tillpoint.v1.Receipt",
            ):
                answer = _reflect(channel, service, symbol)
                assert answer.WhichOneof("message_response") == "file_descriptor_response", (
                    service,
                    symbol,
                    answer,
                )
                files = [
                    descriptor_pb2.FileDescriptorProto.FromString(raw)
                    for raw in answer.file_descriptor_response.file_descriptor_proto
                ]
                assert any(
                    symbol.startswith(f"{f.package}.")
                    and any(
                        s.name == symbol.split(".")[len(f.package.split("."))]
                        for s in (*f.service, *f.message_type)
                    )
                    for f in files
                ), (symbol, [f.name for f in files])
            for unknown in ("tillpoint.v1.PosAgent.Nope", "tillpoint.v1.Nope.Hold", "Hold"):
                answer = _reflect(channel, service, unknown)
                assert answer.WhichOneof("message_response") == "error_response", unknown
                assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_field_under_both_its_names_is_said_so(cli: CLI, server: HttpServer) -> None:
    """docs/CONTRACT.md §10: bad input gets a clear message. A field may come under its
    proto name (`price_minor`) or its JSON name (`priceMinor`), not both: refused, but said
    as "price_minor is not a known field", which the same body without `priceMinor` shows
    false (the small bodies of confirm, cancel, ... said "is given twice" already)."""
    body = receipt("twice")
    body["lines"][0]["price_minor"] = 100
    refund = {
        "refundId": "rf-twice",
        "receipt_id": "twice",
        "receiptId": "twice",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": "4601234000017", "qty": "1"}],
    }
    for what, path, doc, expected in (
        (
            "receipt",
            "/v1/checkout",
            body,
            "lines[0].priceMinor is given twice (price_minor and priceMinor)",
        ),
        ("refund", "/v1/refund", refund, "receiptId is given twice (receipt_id and receiptId)"),
    ):
        status, answer = post_json(server, path, doc)
        assert status == 400, answer
        assert answer["error"]["message"] == f"{what}: {expected}", answer
        run = cli("checkout" if what == "receipt" else "refund", doc, "--json")
        assert run.code == 2 and run.out == ""
        assert run.err == f"tillpoint: {what}: {expected}\n", run.err
    # a proto-looking name that is no field here is still unknown (printText is an offer's)
    status, answer = post_json(server, "/v1/quote", {**receipt("other"), "print_text": "x"})
    assert answer["error"]["message"] == "receipt: print_text is not a known field", answer
    # one name alone is taken, as before
    del body["lines"][0]["priceMinor"]
    status, answer = post_json(server, "/v1/quote", body)
    assert status == 200 and answer["lines"][0]["amountMinor"] == 200, answer
