"""Review 30 (rev30): a second look at what this session changed: the doors' words for a
text over its limit, and the phone kept only in its keyed form."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, grpc_served, receipt, snapshot


def _http_error(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("length", [200])
def test_a_fiscal_document_over_64_characters_is_said_alike_by_every_door(
    cli: CLI, tmp_path: Path, length: int
) -> None:
    """docs/CONTRACT.md §10, §11, §12: a `fiscalDocument` is at most 64 characters, and one
    over that is refused in the same words by the CLI (exit 2), HTTP (400) and gRPC
    (INVALID_ARGUMENT): "confirm: fiscalDocument is too long (at most 64 characters)".
    One of 129 characters or more was said by HTTP as "(at most 128 characters)", the
    limit of the other texts, while the CLI and gRPC said 64. The hold stays HELD."""
    import grpc
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    words = "confirm: fiscalDocument is too long (at most 64 characters)"
    fiscal = "F" * length
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("hold", receipt("h-1"), "--json").code == 0
    run = cli("confirm", "h-1", "--fiscal", fiscal, "--json")
    assert (run.code, run.out, run.err) == (2, "", f"tillpoint: {words}\n")

    agent = Agent(tmp_path / "doors", "till-1")
    agent.load_snapshot(snapshot())
    agent.hold(receipt_from_json(receipt("h-1")))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        code, answer = _http_error(
            server.port, "/v1/confirm", {"receiptId": "h-1", "fiscalDocument": fiscal}
        )
        assert (code, answer) == (400, {"error": {"code": "INVALID_ARGUMENT", "message": words}})
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Confirm(
                    pb.ConfirmRequest(receipt_id="h-1", fiscal_document=fiscal), timeout=10
                )
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                words,
            )
        held = agent.hold(receipt_from_json(receipt("h-1"))).to_json()
        assert held["state"] == "HELD"
    finally:
        server.stop()
        agent.close()
    again = cli("hold", receipt("h-1"), "--json")
    assert again.code == 0 and again.json()["state"] == "HELD"
