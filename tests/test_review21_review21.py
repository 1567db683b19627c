"""Review 21 (review21): findings of the code review of the day's merged work."""

from __future__ import annotations

import http.client
import json

import pytest
from tillpoint.agent.http_api import MAX_BODY_BYTES, HttpServer

TIMEOUT = 20


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES])
def test_a_body_over_4_mib_from_a_keep_alive_client_gets_its_400(
    server: HttpServer, size: int
) -> None:
    """§10/§12: a request over 4 MiB is answered 400. A keep-alive client (http.client,
    requests, a POS's pooled connection) that writes its whole body before reading must
    read that answer too, not a connection reset."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request(
            "POST", "/v1/quote", body=b" " * size, headers={"Content-Type": "application/json"}
        )
        answer = conn.getresponse()
        doc = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 400
    assert doc["error"]["code"] == "INVALID_ARGUMENT"
