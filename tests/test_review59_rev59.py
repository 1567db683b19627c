"""Review 59 (rev59): a second reading of session 59's changes; the two faults it found.

1. The HTTP door's 503 of a call the agent did not answer in time (or did not finish as it
   stopped) named the id to keep per call since session 59 (a refund: `refundId`), but
   told identify, balance and status, which carry no id, to "retry with the same
   receiptId" — what `/openapi.json` says of their 503 ("asks for no id") disagreed.
   Real parts: the agent, its HTTP door on a loopback port, the agent's own locks held
   by the test as a long snapshot switch or commit holds them.
2. The till's chunk watchdog (`pull._Watchdog`) gave the next chunk exactly the time
   `SLOWEST_LINK` (32 KiB/s) needs for the last one's data: 8 s for the hub's 256 KiB
   chunks since session 59. A line of 256 kbit/s (32,000 bytes a second, less after TCP,
   TLS, HTTP/2 and gRPC's framing) needs 8.2-8.7 s: the line session 59 shrank the
   window and the chunks for had its pull cancelled as stalled every few chunks (its
   slow test gave the watchdog a minute to pass). The rule is pinned on the watchdog
   itself, a verdict no clock decides: its limit after a chunk against the time such a
   line needs for that chunk. The call it would cancel is a stand-in that is never
   cancelled (the watchdog is read right after a chunk, and stopped).

docs/DECISIONS.md, "Review 59 (rev59)".
"""

from __future__ import annotations

import json

import pytest
from tillpoint.agent import http_api
from tillpoint.agent.http_api import HttpServer, openapi
from tillpoint.agent.service import Agent

from .conftest import receipt
from .test_http_api import Client, error_of

# ---------------------------------------------------------------- 1. the HTTP door's 503


def openapi_503(path: str, method: str = "post") -> str:
    return str(openapi()["paths"][path][method]["responses"]["503"]["description"])


def test_a_timed_out_call_without_an_id_is_not_told_to_keep_a_receipt_id(
    agent: Agent, server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status waits for the agent's lock, an identify too large to run on the loop for
    its one read: both past the door's call timeout answer 503 "retry", no id; a
    checkout's still names its receiptId, as `/openapi.json` says of each. Fails before:
    status and identify said "retry with the same receiptId"."""
    monkeypatch.setattr(http_api, "CALL_TIMEOUT_S", 0.5)
    client = Client(server.port)
    # whitespace makes it larger than what runs on the event loop: it runs in the pool
    padded = json.dumps({"text": "4601234567890"}).encode() + b" " * (
        http_api.ON_LOOP_MAX_BYTES + 1
    )
    try:
        with agent._lock:  # a commit or a snapshot switch holds it
            status = error_of(client.get("/v1/status"))
            checkout = error_of(client.post("/v1/checkout", receipt("r1")))
        with agent._one_read:  # another read is running
            identify = error_of(client.post("/v1/identify", raw=padded))
        for said in (status, identify):
            assert said[:2] == (503, "UNAVAILABLE"), said
            assert said[2].startswith("the agent did not answer within "), said
            assert said[2].endswith(" s: retry"), said
        assert checkout[2].endswith("retry with the same receiptId"), checkout
        assert "receiptId" not in openapi_503("/v1/status", "get")
        assert "receiptId" not in openapi_503("/v1/identify")
        assert openapi_503("/v1/checkout").endswith("retry with the same body and receiptId")
        # served again once the agent is free
        assert client.get("/v1/status").status == 200
        assert client.post("/v1/identify", raw=padded).status == 200
    finally:
        client.close()


def test_the_door_and_its_document_name_the_same_id_for_every_call() -> None:
    """The 503's words (`_retry`) and `/openapi.json`'s description of each call's 503
    come from one table: an id in one is the id in the other, and a call without one in
    the document has none in its answer."""
    for call in http_api.CALLS:
        said = http_api._retry(call)
        described = openapi_503(call.path, call.method.lower())
        if said == "retry":
            assert "Id" not in described, (call.path, described)
        else:
            assert said.removeprefix("retry with the same ") in described, (call.path, said)
    assert http_api._retry(next(c for c in http_api.CALLS if c.rpc == "Refund")) == (
        "retry with the same refundId"
    )
