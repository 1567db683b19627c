"""Review 36 (rev36c): doc36's and rev36b's changes read again (CONTRACT §1, §2, §10,
§12). Each test here that names a fault failed before the fix beside it; the others pin
what was tried and found right. Real parts: an `Agent` on a temporary data directory,
its gRPC server and its HTTP interface on free loopback ports, real sockets.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.client import ClientError, PosAgentClient

from .conftest import receipt

# ---------------------------------------- 1. a request's int64 at every door


@pytest.fixture
def doors(agent: Agent) -> Iterator[tuple[int, str]]:
    """The same till's HTTP interface (its port) and gRPC server (its address)."""
    http_server = HttpServer(agent, "127.0.0.1:0")
    http_server.start()
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        yield http_server.port, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        http_server.stop()


def _http(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        raw = json.dumps(body, ensure_ascii=False).encode()
        conn.request("POST", path, raw, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def _line(price: Any) -> list[dict[str, Any]]:
    return [{"sku": "4601234000017", "qty": "2", "priceMinor": price}]


# What the HTTP door (and the CLI, the same reading) refuses in an int64, and how.
REFUSED_INT64 = {
    "٣": "lines[0].priceMinor must be a whole number",  # Arabic-Indic three
    "８９９０": "lines[0].priceMinor must be a whole number",  # full-width digits
    "+8990": "lines[0].priceMinor must be a whole number",
    "8_990": "lines[0].priceMinor must be a whole number",
    "8990\n": "lines[0].priceMinor must be a whole number",
    "8990.0": "lines[0].priceMinor must be a whole number",
    "8.99e3": "lines[0].priceMinor must be a whole number",
    8990.0: "lines[0].priceMinor: the number 8990.0 has a decimal point",
}


def test_the_python_client_refuses_the_int64_the_http_door_refuses(
    doors: tuple[int, str],
) -> None:
    """CONTRACT §1 (`tillpoint.client` takes "these JSON dicts", the CLI's and HTTP's
    shapes), §2 ("JSON numbers with a fraction are refused anywhere"; an int64 is a JSON
    number or a string of digits), §10 (one request, one answer, whichever door). The
    client read a dict's int64 with protobuf's `ParseDict`, Python's `int()`: "٣" was
    the price 3, full-width "８９９０" 8990, "+8990", "8_990", "8990\\n", "8990.0",
    "8.99e3" and the float 8990.0 the price 8990, where HTTP and the CLI answer 400 (exit
    2) naming the field: a receipt priced by a text the rest of the till refuses. Now
    the client refuses each, `INVALID_ARGUMENT` in the agent's words, before any call;
    the digit strings the agent reads (leading zeros, "-0", int64's largest) are taken
    as the same number at both doors."""
    http_port, address = doors
    with PosAgentClient(address, timeout=5) as till:
        for price, words in REFUSED_INT64.items():
            body = receipt("r-bad", lines=_line(price))
            status, answer = _http(http_port, "/v1/quote", body)
            assert status == 400 and words in answer["error"]["message"], (price, answer)
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, price
            assert words in refused.value.message, (price, refused.value.message)
            assert refused.value.attempts == 1
        points = receipt("r-bad", redeemPoints="٣")
        with pytest.raises(ClientError) as refused:
            till.quote(points)
        assert "redeemPoints must be a whole number" in refused.value.message
        for price in ("08990", "0008990", 8990):
            body = receipt("r-ok", lines=_line(price))
            status, answer = _http(http_port, "/v1/quote", body)
            assert status == 200, (price, answer)
            quoted = till.quote(body)
            assert quoted["totalMinor"] == answer["totalMinor"] == 17980, price
        free = till.quote(receipt("r-free", lines=_line("-0")))
        assert free["totalMinor"] == 0
        assert _http(http_port, "/v1/quote", receipt("r-free", lines=_line("-0")))[0] == 200
        assert till.quote(receipt("r-all", redeemPoints="-1"))["redeemedPoints"] > 0
        largest = receipt("r-big", lines=_line(str(2**63 - 1)))
        assert _http(http_port, "/v1/quote", largest)[0] == 400  # its total does not fit
        with pytest.raises(ClientError) as big:
            till.quote(largest)
        assert big.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert till.retries == 0
