"""gRPC server reflection: a client with no .proto lists the services and calls PosAgent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

TIMEOUT = 5


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[grpc.Channel]:
    """A channel to `build_server`'s server, over an agent with the test snapshot."""
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            yield channel
    finally:
        server.stop(0).wait()
        agent.close()


def test_reflection_lists_posagent_and_health_and_serves_their_messages(
    channel: grpc.Channel,
) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"tillpoint.v1.PosAgent", "grpc.health.v1.Health"} <= services
    # Everything a client needs comes from the server: no tillpoint_pb2 below.
    pool = DescriptorPool(database)
    service = pool.FindServiceByName("tillpoint.v1.PosAgent")
    quote = service.methods_by_name["Quote"]
    request_cls = message_factory.GetMessageClass(quote.input_type)
    answer_cls = message_factory.GetMessageClass(quote.output_type)
    call = channel.unary_unary(
        "/tillpoint.v1.PosAgent/Quote",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=answer_cls.FromString,
    )
    request = json_format.Parse(json.dumps(receipt("q1")), request_cls())
    answer = json_format.MessageToDict(call(request, timeout=TIMEOUT))
    assert answer["receiptId"] == "q1" and answer["card"]["status"] == "FOUND"
    assert answer["totalMinor"] == "17980"  # proto3 JSON: int64 as a string


def test_reflection_answers_under_v1_too(channel: grpc.Channel) -> None:
    """grpcio's Python package serves reflection as v1alpha only; a client speaking v1
    alone (newer grpcurl, Postman, Java's and .NET's tools) got UNIMPLEMENTED."""
    info = channel.stream_stream(  # v1's messages are v1alpha's, field for field
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    asked = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tillpoint.v1.PosAgent"),
    ]
    listed, found = list(info(iter(asked), timeout=TIMEOUT))
    names = {s.name for s in listed.list_services_response.service}
    assert {"tillpoint.v1.PosAgent", "grpc.health.v1.Health"} <= names
    assert found.file_descriptor_response.file_descriptor_proto
