"""A till with no snapshot loaded refuses quote and checkout: pricing an empty cache is a guess."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.errors import NoSnapshot, Refused
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, receipt, snapshot

TIMEOUT = 5


def test_no_snapshot_is_a_refusal() -> None:
    assert issubclass(NoSnapshot, Refused)
    assert NoSnapshot.exit_code == 2 and NoSnapshot.grpc_code == "FAILED_PRECONDITION"


@pytest.mark.parametrize("command", ["quote", "checkout"])
def test_cli_refuses_without_a_snapshot_and_stores_nothing(cli: CLI, command: str) -> None:
    for card in ("2770000000017", "12345678"):  # known nowhere: no snapshot at all
        run = cli(command, receipt(card=card), "--json")
        assert run.code == 2, run.out
        assert run.out == ""
        assert run.err.startswith("tillpoint: no snapshot loaded")
        assert run.err.count("\n") == 1 and "Traceback" not in run.err
    status = cli("status", "--json").json()
    assert status["outboxDepth"] == 0 and status["lastSeq"] == 0
    # Once a snapshot is loaded, the same receipt goes through.
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli(command, receipt(), "--json").code == 0


def test_grpc_refuses_without_a_snapshot(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            request = json_format.ParseDict(receipt(), pb.Receipt())
            for call in (stub.Quote, stub.Checkout):
                with pytest.raises(grpc.RpcError) as info:
                    call(request, timeout=TIMEOUT)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert (info.value.details() or "").startswith("no snapshot loaded")
            status = stub.Status(pb.StatusRequest(), timeout=TIMEOUT)
            assert status.outbox_depth == 0 and status.last_seq == 0
    finally:
        server.stop(0).wait()
        agent.close()
