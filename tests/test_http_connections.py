"""The HTTP interface against what a web page or a greedy client can do to it: real HTTP
to a real server on a random loopback port (found by an integrator's review, issue 11)."""

from __future__ import annotations

import json
import socket
import time

import pytest
from tillpoint.agent import http_api
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import receipt
from .test_http_api import Client, error_of

TIMEOUT = 10


def test_a_web_pages_request_is_refused_and_runs_nothing(server: HttpServer) -> None:
    """A form's `text/plain` POST from any page the till's browser opens reaches
    127.0.0.1 without a CORS preflight; the browser marks it with `Origin`."""
    client = Client(server.port)
    sale = receipt("csrf-1")
    answer = client.post(
        "/v1/checkout",
        raw=json.dumps(sale).encode(),
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
    )
    status, code, message = error_of(answer)
    assert (status, code) == (403, "PERMISSION_DENIED")
    assert "allowed_origins" in message
    # nothing was committed under that receiptId: a cancel does not know it
    assert client.post("/v1/cancel", {"receiptId": "csrf-1"}).status == 404
    # the POS (no Origin) is served as before
    assert client.post("/v1/checkout", sale).status == 200
    client.close()


def test_a_rebound_pages_post_is_refused(server: HttpServer) -> None:
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 is "same origin" to the
    browser, which still marks each POST with that Origin (and its own Host)."""
    client = Client(server.port)
    answer = client.post(
        "/v1/identify",
        {"text": "2770000000017"},
        headers={
            "Host": f"evil.example:{server.port}",
            "Origin": f"http://evil.example:{server.port}",
        },
    )
    assert error_of(answer)[:2] == (403, "PERMISSION_DENIED")
    client.close()


@pytest.mark.parametrize(
    ("origin", "shown"),
    [
        ("http://localhost:3000", "(Origin: http://localhost:3000)"),
        # UTF-8 read as text, a byte that is not UTF-8 and a tab (h11 lets it in) escaped
        ("http://\xc3\xa9.example\xff\tx", "(Origin: http://é.example\\xff\\tx)"),
        ("http://" + "a" * 200, "(Origin: http://" + "a" * 93 + "…)"),
    ],
)
def test_the_refusal_names_the_origin_as_text(server: HttpServer, origin: str, shown: str) -> None:
    """Not Python's repr of its bytes (`b'http://…'`): found by an integrator's audit."""
    client = Client(server.port)  # http.client sends a header's str as Latin-1 bytes
    answer = client.post("/v1/identify", {"text": "1"}, headers={"Origin": origin})
    status, code, message = error_of(answer)
    assert (status, code) == (403, "PERMISSION_DENIED")
    assert shown in message and "b'" not in message
    client.close()


def test_an_absolute_form_request_target_is_served(server: HttpServer) -> None:
    """`POST http://host:port/v1/quote HTTP/1.1`, what a POS's HTTP client configured with
    a proxy sends: RFC 9112 §3.2.2, a server MUST accept it (it was 404 "no such call")."""
    client = Client(server.port)  # http.client sends the target as it is given
    origin = f"http://127.0.0.1:{server.port}"
    usual = client.post("/v1/quote", receipt("abs-1"))
    assert usual.status == 200
    for target in (f"{origin}/v1/quote", f"HTTP://127.0.0.1:{server.port}/v1/quote?x=1"):
        answer = client.post(target, receipt("abs-1"))
        assert (answer.status, answer.body) == (200, usual.body), target
    assert client.get(f"{origin}/v1/status").status == 200
    assert client.get(f"{origin}/healthz").status == 200
    assert client.get(f"{origin}/openapi.json").status == 200
    # no path is "/": no call, said with the path, not the whole URI
    status, code, message = error_of(client.get(origin))
    assert (status, code) == (404, "NOT_FOUND") and "GET / " in message
    status, code, message = error_of(client.post(f"{origin}/v1/nothing", {}))
    assert status == 404 and "POST /v1/nothing " in message
    # an escaped slash in the authority is no path (it routed to the call it spelled)
    status, code, message = error_of(
        client.post("http://x%2Fv1%2Fquote", receipt("abs-2"), headers={"Host": "till"})
    )
    assert (status, code) == (404, "NOT_FOUND") and "POST / " in message
    answer = client.post(f"{origin}/v1/%71uote", receipt("abs-1"))  # an escaped path: decoded
    assert (answer.status, answer.body) == (200, usual.body)
    client.close()


@pytest.mark.parametrize("host", ["127.0.0.1:8061", "localhost", "t", "till-7.store.local"])
def test_any_host_without_an_origin_is_served(server: HttpServer, host: str) -> None:
    """A POS's HTTP client sends no Origin; its Host is whatever name it dialled."""
    client = Client(server.port)
    answer = client.post("/v1/identify", {"text": "2770000000017"}, headers={"Host": host})
    assert answer.status == 200, answer.body
    client.close()


def test_with_a_token_any_host_is_served(agent: Agent) -> None:
    """Beyond loopback the token is the check (a browser does not send it on its own)."""
    srv = HttpServer(agent, "127.0.0.1:0", token="s3cret")
    srv.start()
    try:
        client = Client(srv.port, token="s3cret")
        answer = client.post("/v1/identify", {"text": "2770000000017"}, headers={"Host": "till-7"})
        assert answer.status == 200
        client.close()
    finally:
        srv.stop()


def test_an_allowed_origin_gets_its_preflight_and_cors_headers(agent: Agent) -> None:
    srv = HttpServer(agent, "127.0.0.1:0", allowed_origins=["http://localhost:3000"])
    srv.start()
    try:
        client = Client(srv.port)
        preflight = client.call(
            "OPTIONS",
            "/v1/quote",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        answer = client.post(
            "/v1/quote", receipt("k1"), headers={"Origin": "http://localhost:3000"}
        )
        assert answer.status == 200
        assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = client.post("/v1/quote", receipt("k2"), headers={"Origin": "http://evil.example"})
        assert error_of(other)[:2] == (403, "PERMISSION_DENIED")
        client.close()
    finally:
        srv.stop()


def test_allowed_origins_in_the_config_are_origins() -> None:
    from pydantic import ValidationError
    from tillpoint.agent.config import HttpSettings

    assert HttpSettings(allowed_origins=("http://localhost:3000",)).allowed_origins
    # as a browser sends it: lower case, no default port; a kiosk shell's own scheme
    given = ("HTTP://LocalHost:80", "https://Kiosk.local:443", "app://kiosk")
    assert HttpSettings(allowed_origins=given).allowed_origins == (
        "http://localhost",
        "https://kiosk.local",
        "app://kiosk",
    )
    with pytest.raises(ValidationError, match="is not an origin: scheme://host"):
        HttpSettings(allowed_origins=("http://localhost:3000/kiosk",))


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_connection_without_a_whole_head_is_closed(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that opens connections and sends nothing, or a head a byte at a time,
    no longer holds them for ever; a POS's idle keep-alive connection stays open."""
    monkeypatch.setattr(http_api, "HEAD_TIMEOUT_S", 0.5)
    silent = _raw(server.port)
    partial = _raw(server.port)
    partial.sendall(b"POST /v1/quote HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert _closed_within(silent, 5) and _closed_within(partial, 5)
    silent.close()
    partial.close()

    pos = Client(server.port)
    assert pos.post("/v1/identify", {"text": "2770000000017"}).status == 200
    time.sleep(1.0)  # past the head's deadline, well within the keep-alive
    assert pos.post("/v1/identify", {"text": "2770000000017"}).status == 200
    pos.close()


_BODY = json.dumps(receipt("bad-1")).encode()


@pytest.mark.parametrize(
    ("request_bytes", "words"),
    [
        (b"POST /v1/quote HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s", "Host"),
        (
            b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Content-Length: 3\r\n\r\n%s",
            "Content-Length",
        ),
        (b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        # a head over h11's 16 KiB, not yet ended (all of it read by the server before it
        # closes: the answer is not lost to a reset)
        (
            b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 32768,
            "head is larger than 16 KiB",
        ),
        (b"HELLO\r\n\r\n", "request line"),
    ],
    ids=["no-host", "two-content-length", "negative-content-length", "big-head", "garbage"],
)
def test_a_request_h11_cannot_read_is_answered_with_the_json_400(
    server: HttpServer, request_bytes: bytes, words: str
) -> None:
    """uvicorn's own answer there is a plain-text `Invalid HTTP request received.`; the
    server's protocol is uvicorn's h11 one (`http_api._Protocol`; httptools is neither
    installed nor selectable)."""
    if b"%d" in request_bytes:
        request_bytes = request_bytes % (len(_BODY), _BODY)
    sock = _raw(server.port)
    sock.sendall(request_bytes)
    answer = b""
    while True:
        part = sock.recv(65536)
        if not part:
            break
        answer += part
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request", answer[:200]
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    doc = json.loads(body)
    assert doc["error"]["code"] == "INVALID_ARGUMENT"
    assert doc["error"]["message"].startswith("invalid HTTP request: ")
    assert words in doc["error"]["message"]
    # and the server goes on serving
    client = Client(server.port)
    assert client.post("/v1/identify", {"text": "2770000000017"}).status == 200
    client.close()


def test_past_the_connection_limit_the_answer_is_the_json_503(server: HttpServer) -> None:
    """uvicorn's own answer there is a plain-text 503 a POS cannot read as an error."""
    idle = [_raw(server.port) for _ in range(256)]
    try:
        # every one accepted by the server's loop and counted (waited for: it slept 0.5 s,
        # which a loaded machine's loop could take longer over; review 40)
        deadline = time.monotonic() + 60
        while len(server.serve.server.server_state.connections) < 256:
            assert time.monotonic() < deadline, len(server.serve.server.server_state.connections)
            time.sleep(0.02)
        client = Client(server.port)
        answer = client.post("/v1/identify", {"text": "2770000000017"})
        status, code, message = error_of(answer)
        assert (status, code) == (503, "UNAVAILABLE") and "retry" in message
        client.close()
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the slots free again as the server sees the closes
        client = Client(server.port)
        answer = client.post("/v1/identify", {"text": "2770000000017"})
        client.close()
        if answer.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.status == 200
