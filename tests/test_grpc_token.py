"""The PosAgent gRPC server beyond loopback: a token, as the HTTP interface has.

A helper acting as a POS integrator bound `[server] listen` to a LAN address with no
token: the agent started and anyone on the network could quote, hold, confirm and
refund (only `[http]` asked for a token). Now both servers ask for one there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tillpoint.agent.errors import InputError
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.client import ClientError, PosAgentClient

from .conftest import CLI, receipt, snapshot

TIMEOUT = 5


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[int]:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    server, port, _ = build_server(agent, "127.0.0.1:0", token="s3cret")
    server.start()
    yield port
    server.stop(0).wait()
    agent.close()


def test_with_a_token_every_call_needs_it(served: int) -> None:
    address = f"127.0.0.1:{served}"
    for token in ("", "wrong"):
        with PosAgentClient(address, token=token, attempts=1) as client:
            with pytest.raises(ClientError) as err:
                client.quote(receipt("q1"))
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer <token>" in err.value.message
    with PosAgentClient(address, token="s3cret") as client:
        assert client.quote(receipt("q1"))["card"]["status"] == "FOUND"
    # the health service and reflection too: nothing about the till without the token
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "bearer s3cret"),)  # the scheme in any case
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT, metadata=good)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as listed:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert listed.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_beyond_loopback_a_token_is_required(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(tmp_path / "a", "till-1")
    try:
        with pytest.raises(InputError, match="not a loopback address: set a token"):
            build_server(agent, "0.0.0.0:0")
        server, port, _ = build_server(agent, "0.0.0.0:0", token="t")
        server.stop(0).wait()
        assert port > 0
    finally:
        agent.close()
    # The configuration refuses it: `run` never starts, `config check` says why.
    monkeypatch.setenv("TILLPOINT_SERVER__LISTEN", "0.0.0.0:50061")
    run = cli("config", "check")
    assert run.code == 2 and "[server] token" in run.err and "Traceback" not in run.err
    run = cli("run")
    assert run.code == 2 and "set a token" in run.err
    monkeypatch.setenv("TILLPOINT_SERVER__TOKEN", "s3cret")
    shown = cli("config", "check")
    assert shown.code == 0 and "s3cret" not in shown.out and '"token": "(set)"' in shown.out
    # metadata and headers carry printable ASCII: another token could never be sent
    monkeypatch.setenv("TILLPOINT_SERVER__TOKEN", "пароль")
    run = cli("config", "check")
    assert run.code == 2 and "token" in run.err and "Traceback" not in run.err
