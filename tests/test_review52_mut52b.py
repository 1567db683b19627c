"""Review 52 (mut52b): mutation testing of the local HTTP/JSON door (agent/http_api.py,
the contract §11 and §12). Each test pins a rule a mutant of the module broke with every
earlier test passing (docs/DECISIONS.md, "Review 52 (mut52b)"). Real HTTP to a real
server on a random loopback port over a real agent on real SQLite files."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Iterator
from types import FrameType

import pytest
from tillpoint.agent.cli import parse_json
from tillpoint.agent.http_api import HttpServer, receipt_of_body
from tillpoint.agent.limits import TEXT_MAX
from tillpoint.agent.models import Receipt
from tillpoint.agent.service import MAX_FISCAL_DOCUMENT, Agent

from .conftest import receipt
from .test_http_api import Client, error_of
from .test_review38_rev38c import _int64_string_patterns, _quote


@pytest.fixture
def client(server: HttpServer) -> Iterator[Client]:
    c = Client(server.port)
    yield c
    c.close()


# ---------------------------------------------------------------- the small bodies


def test_a_null_proto_name_before_the_field_names_nothing(client: Client) -> None:
    """`"receipt_id": null` is the field left out (the contract §12), wherever it stands in
    the object: one before `receiptId` is passed over and the object read on (a `break`
    for its `continue` stopped reading there: "cancel: receiptId is required")."""
    assert client.post("/v1/hold", receipt("n-1")).status == 200
    answer = client.post("/v1/cancel", raw=b'{"receipt_id": null, "receiptId": "n-1"}')
    assert answer.status == 200, answer.body
    assert answer.json()["state"] == "CANCELLED"
    # and a confirm's: the fiscal document after a null one is read too
    assert client.post("/v1/hold", receipt("n-2")).status == 200
    answer = client.post(
        "/v1/confirm",
        raw=b'{"receiptId": "n-2", "fiscal_document": null, "fiscalDocument": "FD-7"}',
    )
    assert answer.status == 200 and answer.json()["state"] == "CONFIRMED", answer.body


def test_a_balance_without_a_card_says_what_is_wrong_with_its_at(client: Client) -> None:
    """A balance body's optional fields are each read: with no card, a bad `at` is said
    as the `at`'s fault, as gRPC reads it first (agent/server.py). A `break` for the
    `continue` past the absent card left the `at` unread: "card not accepted"."""
    status, code, message = error_of(client.post("/v1/balance", {"at": "yesterday"}))
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert message.startswith('balance: at: "yesterday" is not an RFC 3339 time'), message
    status, code, message = error_of(client.post("/v1/balance", {"at": "2" * (TEXT_MAX + 1)}))
    assert (status, code, message) == (
        400,
        "INVALID_ARGUMENT",
        f"balance: at is too long (at most {TEXT_MAX} characters)",
    )


def test_a_small_body_text_exactly_at_its_limit_is_taken(client: Client) -> None:
    """The limits are "at most": 128 characters of a text, 64 of a fiscal document (the
    contract §12's decision on limits; one more is refused, tests/test_review30_left30.py).
    `>=` for `>` refused the longest allowed."""
    assert MAX_FISCAL_DOCUMENT == 64 and TEXT_MAX == 128
    answer = client.post("/v1/identify", {"text": "7" * TEXT_MAX})
    assert answer.status == 200 and answer.json()["status"] == "UNKNOWN", answer.body
    assert client.post("/v1/hold", receipt("f-64")).status == 200
    answer = client.post(
        "/v1/confirm", {"receiptId": "f-64", "fiscalDocument": "F" * MAX_FISCAL_DOCUMENT}
    )
    assert answer.status == 200 and answer.json()["state"] == "CONFIRMED", answer.body
    longest = "r" * TEXT_MAX
    status, code, message = error_of(client.post("/v1/cancel", {"receiptId": longest}))
    assert (status, code) == (404, "NOT_FOUND"), message  # read, and not held here
    # a fiscal document's own limit, not a text's: 65 is refused
    status, code, message = error_of(
        client.post("/v1/confirm", {"receiptId": "f-64", "fiscalDocument": "F" * 65})
    )
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert message == "confirm: fiscalDocument is too long (at most 64 characters)"


# ---------------------------------------------------------------- the fast path


def _long_way_calls(raw: bytes) -> tuple[Receipt, int]:
    """The receipt `receipt_of_body` reads, and how many times it took the long way
    (`cli.parse_json`, counted by a profile hook on this thread: nothing replaced)."""
    calls = 0
    code = parse_json.__code__

    def hook(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call" and frame.f_code is code:
            calls += 1

    sys.setprofile(hook)
    try:
        read = receipt_of_body(raw)
    finally:
        sys.setprofile(None)
    return read, calls


def test_a_plain_receipt_is_read_straight_from_its_bytes() -> None:
    """Issue 11's overhead (docs/PERFORMANCE.md, "The HTTP interface's own overhead"): a
    receipt with one plain `at` and no `explain` is validated straight from the body's
    bytes, never parsed into dicts first; a body with `explain`, or `"at"` twice, takes the
    long way. The same receipt either way (tests/test_http_body.py); a guard that sent
    every body the long way (the second `"at"` looked for from the first, `< -1`, the
    match's whole text for its time, `in` for `not in` of "explain") answered the same,
    slower, and no test saw it."""
    plain = json.dumps(receipt()).encode()
    read, calls = _long_way_calls(plain)
    assert calls == 0 and read.receipt_id == "r1"
    assert read.at.isoformat() == "2026-11-23T10:15:00+03:00"
    for slow in (
        json.dumps(receipt(explain=True)).encode(),
        plain.replace(b'"card"', b'"at": "2026-11-24T10:15:00+03:00", "card"'),
    ):
        assert _long_way_calls(slow)[1] == 1, slow


def test_small_reads_answer_while_every_pool_thread_waits_on_a_commit(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract §12: quote, identify and balance with a body up to 64 KiB run on the
    HTTP server's event loop, not in the pool, and are not subject to the 30 s call
    timeout; a larger body runs in the pool. With the pool's one thread stuck behind the
    agent's lock (a commit in progress), a quote of exactly 64 KiB, an identify and a
    balance are answered; a quote one byte larger waits in the pool and meets the call
    timeout (503). Each guard of that choice mutated (negated, `is None`, `<`) sent the
    small reads to the pool: no test told."""
    from tillpoint.agent import http_api

    monkeypatch.setattr(http_api, "CALL_TIMEOUT_S", 0.5)
    srv = HttpServer(agent, "127.0.0.1:0", max_workers=1)
    srv.start()
    c = Client(srv.port)
    try:
        body = json.dumps(receipt("big")).encode()
        at_limit = body + b" " * (64 * 1024 - len(body))  # the contract says 64 KiB
        with agent._lock:  # a commit in progress, as long as the test holds it
            # the pool's one thread takes a checkout, which waits for the lock
            status, code, _ = error_of(c.post("/v1/checkout", receipt("stuck")))
            assert (status, code) == (503, "UNAVAILABLE")
            answer = c.post("/v1/quote", raw=at_limit)
            assert answer.status == 200 and answer.json()["receiptId"] == "big", answer.body
            assert c.post("/v1/identify", {"text": "2770000000017"}).status == 200
            assert c.post("/v1/balance", {"card": "2770000000017"}).status == 200
            status, code, _ = error_of(c.post("/v1/quote", raw=at_limit + b" "))
            assert (status, code) == (503, "UNAVAILABLE")
        # the lock given back, the pool's thread ends the checkout and serves again
        monkeypatch.setattr(http_api, "CALL_TIMEOUT_S", 30.0)
        assert c.post("/v1/quote", raw=at_limit + b" ").status == 200
    finally:
        c.close()
        srv.stop()


# ---------------------------------------------------------------- paths


def test_the_root_path_is_no_call_said_as_json(client: Client) -> None:
    """`GET /` (a person trying the till's address in a browser, a load balancer's
    default probe) is a 404 "no such call" JSON error, as any path that is no call; the
    look for an absolute-form target (`path[0] != "/"`) read past the one character
    (`path[1]`: IndexError, uvicorn's plain-text 500) and no test asked for `/` itself."""
    for method in ("GET", "POST"):
        status, code, message = error_of(client.call(method, "/"))
        assert (status, code) == (404, "NOT_FOUND"), message
        assert message == f"no such call: {method} / (see /openapi.json)"


def _exchange(port: int, request: bytes) -> bytes:
    """Send one request on a connection of its own and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while part := s.recv(65536):
            data += part
    return data


def test_an_http_1_0_request_with_a_length_is_served(server: HttpServer, client: Client) -> None:
    """An old POS stack speaks HTTP/1.0 with a `Content-Length`: served as 1.1 is (the same
    answer), and the connection closes after it. Only a `Transfer-Encoding` in a 1.0
    request is the 400 (RFC 9112 §6.1, review 38). `!=` for `==` in the header's name
    refused every 1.0 request that carried any header other than that one."""
    body = json.dumps(receipt("old-1")).encode()
    usual = client.post("/v1/quote", raw=body)
    assert usual.status == 200
    answer = _exchange(
        server.port,
        b"POST /v1/quote HTTP/1.0\r\nHost: till\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert rest == usual.body
    answer = _exchange(
        server.port,
        b"POST /v1/quote HTTP/1.0\r\nHost: till\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"Transfer-Encoding in an HTTP/1.0 request" in answer


def _answer_then_close(s: socket.socket) -> tuple[bytes, bytes, bool]:
    """The head and body of the one answer on `s`, and whether the server closed the
    connection after it (read to its end: a kept connection would wait, and time out)."""
    data = b""
    closed = False
    try:
        while part := s.recv(65536):
            data += part
        closed = True
    except TimeoutError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, closed


def test_a_408_ends_its_connection_and_says_how_much_came(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 9110 §15.5.9 (review 34): the 408 of a body that did not arrive says
    `Connection: close` and the connection ends with it (the status compared to 407 or 409
    left it open, waiting for the rest of the body, then 75 s of keep-alive). A client that
    ends its side before its body is whole hears it at once, with how much came of how
    much it announced, or of no announced length (chunked: `int("")` was a 500)."""
    from tillpoint.agent import http_api

    monkeypatch.setattr(http_api, "BODY_TIMEOUT_S", 0.5)
    head = b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + b"Content-Length: 100\r\n\r\n{")
        top, body, closed = _answer_then_close(s)
    assert top.startswith(b"HTTP/1.1 408 ") and b"connection: close" in top.lower(), top
    assert closed
    error = json.loads(body)["error"]
    assert error["code"] == "REQUEST_TIMEOUT"
    assert error["message"].startswith("the request body did not arrive within ")
    cases = [
        (b"Content-Length: 100\r\n\r\n{", "after 1 of its 100 bytes"),
        (b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n", "after 1 bytes"),
    ]
    for rest, said in cases:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head + rest)
            s.shutdown(socket.SHUT_WR)
            top, body, closed = _answer_then_close(s)
        assert top.startswith(b"HTTP/1.1 408 "), top
        message = json.loads(body)["error"]["message"]
        assert message == (
            f"the request body ended {said}: the client closed its side of the connection"
            " before sending it whole"
        ), message


# ---------------------------------------------------------------- refused bodies


def test_a_closing_request_waiting_for_100_continue_is_refused_without_asking_its_body(
    agent: Agent,
) -> None:
    """A client that sends `Expect: 100-continue` sends no body until told to (RFC 9110
    §10.1.1): a refusal on a connection that closes after the answer is given at once, no
    `100 Continue` first (reading the body to drop it would ask for it: the client then
    uploads a body only to be refused). The expectation's test, mutated (`!=` for the
    header's name or its value), sent `100 Continue` and waited for the body."""
    srv = HttpServer(agent, "127.0.0.1:0", token="s3cret-token")
    srv.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/quote HTTP/1.1\r\nHost: till\r\nConnection: close\r\n"
                b"Authorization: Bearer wrong\r\nExpect: 100-continue\r\n"
                b"Content-Length: 4000000\r\n\r\n"
            )
            top, body, closed = _answer_then_close(s)
        assert top.startswith(b"HTTP/1.1 401 "), top[:200]
        assert b"100 Continue" not in top and closed
        assert json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    finally:
        srv.stop()


def test_a_content_encoding_is_refused_415_but_identity(client: Client) -> None:
    """A body sent with `Content-Encoding: gzip` (or any coding) is the 415 saying to send
    it uncompressed, whatever its bytes (plain JSON marked gzip was read as if unmarked);
    `identity` (no coding, RFC 9110 §8.4.1) or an empty value is the body as it is. The
    test of the value (`in` for `not in`) was held only by a slow test (review 31's
    black-box POS, a real `run`): this is its twin in the default run."""
    body = receipt("enc-1")
    usual = client.post("/v1/quote", body)
    assert usual.status == 200
    for coding in ("gzip", "GZIP", "br, gzip"):
        status, code, message = error_of(
            client.post("/v1/quote", body, headers={"Content-Encoding": coding})
        )
        assert (status, code) == (415, "UNSUPPORTED_MEDIA_TYPE"), message
        assert message == (
            f"Content-Encoding {coding} is not accepted: send the JSON body uncompressed,"
            " without Content-Encoding"
        )
    for coding in ("identity", " Identity ", ""):
        answer = client.post("/v1/quote", body, headers={"Content-Encoding": coding})
        assert (answer.status, answer.body) == (200, usual.body), coding


def _head_of(size: int, body: bytes) -> bytes:
    """A quote's request head of exactly `size` bytes, its blank line included."""
    start = b"POST /v1/quote HTTP/1.1\r\nHost: till\r\nConnection: close\r\n"
    start += b"Content-Length: %d\r\nX-Pad: " % len(body)
    head = start + b"x" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


def test_a_head_of_exactly_16_kib_sent_with_its_body_is_served(server: HttpServer) -> None:
    """The contract §12: a request head larger than 16 KiB is answered 400, however it
    arrives (review 34, doc34: a whole head sent at once with its body). A head of exactly
    16 KiB, its blank line included, is not larger: served; one byte more is the 400.
    The bound's edge (`>=` for `>`, the blank line looked for one byte short) refused
    the head of exactly 16 KiB and no test sent one."""
    body = json.dumps(receipt("h-16")).encode()
    for size, status in ((16 << 10, 200), ((16 << 10) + 1, 400)):
        answer = _exchange(server.port, _head_of(size, body) + body)  # one write
        top = answer.split(b"\r\n", 1)[0]
        assert top.startswith(b"HTTP/1.1 %d " % status), (size, answer[:300])


# ---------------------------------------------------------------- /openapi.json


@pytest.mark.parametrize(
    "value",
    ["9000000000000000000", "9100000000000000000", "9219999999999999999", "9223372036854775799"],
)
def test_openapis_int64_pattern_takes_the_19_digit_values_within_int64(
    server: HttpServer, value: str
) -> None:
    """The contract §12 (limits in /openapi.json): a request's int64 digit string has a
    pattern of exactly the strings the agent takes. Review 38's cases reached int64's end
    and past it, none a 19-digit value below it whose second digit is under int64's: the
    pattern's digit-by-digit forms with their tails two digits long (`+` for `-`) or a
    second digit from 1 refused them while the agent takes them."""
    pattern = _int64_string_patterns()["redeemPoints"]
    assert re.search(pattern, value) is not None, (pattern, value)
    body = receipt()
    body["redeemPoints"] = value  # more than the card holds: refused, but read (not 400)
    assert _quote(server.port, body) != 400


def test_openapi_says_a_required_small_field_needs_one_character(client: Client) -> None:
    """A required text of the small bodies (`receiptId` of confirm and cancel) is "not
    empty": minLength 1 in /openapi.json, as the agent reads it (a one-character id is
    read: 404, not held here). `2` refused ids the agent takes."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for message in ("ConfirmRequest", "CancelRequest"):
        assert schemas[message]["properties"]["receiptId"]["minLength"] == 1, message
    status, code, _ = error_of(client.post("/v1/cancel", {"receiptId": "r"}))
    assert (status, code) == (404, "NOT_FOUND")


# ---------------------------------------------------------------- web pages


def test_a_refused_preflight_says_why_in_its_own_words(agent: Agent) -> None:
    """The contract §12 (`Origin`): a refused preflight is the 403 `PERMISSION_DENIED`
    JSON error. From an origin not listed it says the page's origin is refused and how to
    list it; from a listed origin asking for another method it says what it asked and what
    the agent takes. The origin's test negated swapped the two messages: only the status
    and code were checked."""
    srv = HttpServer(agent, "127.0.0.1:0", allowed_origins=["http://localhost:3000"])
    srv.start()
    c = Client(srv.port)
    try:

        def preflight(origin: str, method: str) -> tuple[int, str, str]:
            return error_of(
                c.call(
                    "OPTIONS",
                    "/v1/quote",
                    headers={"Origin": origin, "Access-Control-Request-Method": method},
                )
            )

        status, code, message = preflight("http://evil.example", "POST")
        assert (status, code) == (403, "PERMISSION_DENIED")
        assert message == (
            "requests from web pages are refused (Origin: http://evil.example):"
            " list the page's origin in [http] allowed_origins"
        )
        status, code, message = preflight("http://localhost:3000", "DELETE")
        assert (status, code) == (403, "PERMISSION_DENIED")
        assert message.startswith(
            "a web page's preflight was refused (method): it asked for DELETE"
        ), message
        assert message.endswith(
            "the agent takes GET and POST with the headers Authorization and Content-Type"
        ), message
    finally:
        c.close()
        srv.stop()
