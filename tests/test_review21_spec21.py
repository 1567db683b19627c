"""Review 21 (spec21): conformance findings outside the pricing arithmetic."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from tillpoint.agent.http_api import MAX_BODY_BYTES, HttpServer

TIMEOUT = 20


def _post_urllib(port: int, path: str, data: bytes) -> tuple[int, Any]:
    """A POST as Python's urllib sends it: `Connection: close`, the whole body written
    before the answer is read (as most simple HTTP clients do)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES])
def test_a_body_over_4_mib_from_a_closing_client_gets_its_400(
    server: HttpServer, size: int
) -> None:
    """§10/§12: a request larger than 4 MiB is bad input, answered 400. A client that says
    `Connection: close` and writes its whole body before reading (urllib, many POS
    scripts) used to get a connection reset instead: the server closed with the body
    unread, and the kernel's RST cut the client's write before it read the answer."""
    status, doc = _post_urllib(server.port, "/v1/quote", b" " * size)
    assert status == 400
    assert doc["error"]["code"] == "INVALID_ARGUMENT"
    assert "larger than 4 MiB" in doc["error"]["message"]


def test_a_streamed_body_over_4_mib_from_a_closing_client_gets_its_400(
    server: HttpServer,
) -> None:
    """The same for a chunked body (no Content-Length), refused once it passes 4 MiB: the
    client that goes on writing the rest still reads the 400."""
    chunk = b" " * 65536
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(
            b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
        answer = b""
        while part := s.recv(65536):
            answer += part
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert b"larger than 4 MiB" in answer
