"""Review 37, spec37c: a black-box walk of CONTRACT §12 (the local HTTP/JSON interface),
§13 (coupons) and §17 (explain), from the contract, docs/INTEGRATION.md and a real
server's /openapi.json alone, with a POS client written on the standard library.

What it found, each shown here by a real HTTP interface on a loopback port (raw sockets,
as a POS's HTTP stack writes the bytes):

- A request with both `Transfer-Encoding: chunked` and `Content-Length` was answered and
  its connection kept for the next request. RFC 9112 §6.1: such a message "might indicate
  an attempt to perform request smuggling", and "regardless, the server MUST close the
  connection after responding to such a request". It is now answered (Transfer-Encoding
  wins, as before), with `Connection: close`, and the connection ends there.
- A request with two `Authorization` fields was judged by the last one: the token then a
  wrong one was refused, a wrong one then the token served. Authorization is no list field
  (RFC 9110 §11.6.2: one credential); two are now the 401 whatever their order. The gRPC
  server's token (`[server] token`, CONTRACT §12's decision) read the first of two
  `authorization` metadata values, the opposite order: two are UNAUTHENTICATED there too.

And what it found right, kept as stories (tests/scenarios/review37/, run through the CLI
by tests/test_scenarios.py, their `why` the hand arithmetic), told here again at the three
doors at once (review 35's `said_at_every_door`: the CLI, HTTP/JSON and gRPC, each on its
own till, the HTTP body byte for byte the CLI's document): every coupon verdict on one
receipt, a hold that reserves its codes, a cancel that gives them back, a refund that does
not (§13); a trace whose figures add up to the answer (§17).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import grpc_served
from .test_review35_shape35 import clean_env, said_at_every_door

__all__ = ["clean_env"]  # the fixture, used by name below

TIMEOUT = 10.0
IDENTIFY = json.dumps({"text": "2770000000017"}).encode()


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection; read until the agent closes it (or TIMEOUT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def answers_of(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `data` (status, headers, body), in order."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        size = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return out


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


# ---------------------------------------------------------------- CONTRACT §12: framing


def test_a_request_with_transfer_encoding_and_content_length_is_answered_then_closed(
    server: HttpServer,
) -> None:
    """RFC 9112 §6.1: Transfer-Encoding overrides Content-Length, and the server MUST close
    the connection after answering such a request (a proxy in front could read the body
    by the other header: the bytes after it are no request the agent should serve). Until
    review 37 the agent answered it and served the next request on the same connection."""
    head = (
        b"POST /v1/identify HTTP/1.1\r\nHost: till\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n"
    )
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: till\r\n\r\n"
    answers = answers_of(exchange(server.port, head + chunked(IDENTIFY) + pipelined))
    assert [a[0] for a in answers] == [200], answers  # the identify, and nothing after it
    _, headers, body = answers[0]
    assert headers.get("connection") == "close"
    assert json.loads(body)["status"] == "FOUND"  # the chunked body was read (TE wins)


def test_a_chunked_request_alone_still_keeps_its_connection(server: HttpServer) -> None:
    """The close is for the two framings together only: a chunked body without a
    Content-Length (Java's and Go's clients streaming a body) keeps the connection."""
    head = b"POST /v1/identify HTTP/1.1\r\nHost: till\r\nTransfer-Encoding: chunked\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: till\r\nConnection: close\r\n\r\n"
    answers = answers_of(exchange(server.port, head + chunked(IDENTIFY) + last))
    assert [a[0] for a in answers] == [200, 200], answers
    assert "connection" not in answers[0][1]


# ---------------------------------------------------------------- CONTRACT §12: the token


@pytest.fixture
def guarded(agent: Agent) -> Iterator[HttpServer]:
    """The HTTP interface with a token (as it must have beyond loopback)."""
    srv = HttpServer(agent, "127.0.0.1:0", token="s3cret-token")
    srv.start()
    yield srv
    srv.stop()


def identify_with(port: int, *authorization: str) -> tuple[int, dict[str, str], Any]:
    fields = "".join(f"Authorization: {a}\r\n" for a in authorization)
    data = (
        f"POST /v1/identify HTTP/1.1\r\nHost: till\r\n{fields}Connection: close\r\n"
        f"Content-Length: {len(IDENTIFY)}\r\n\r\n"
    ).encode() + IDENTIFY
    ((status, headers, body),) = answers_of(exchange(port, data))
    return status, headers, json.loads(body)


@pytest.mark.parametrize(
    "fields",
    [("Bearer s3cret-token", "Bearer wrong"), ("Bearer wrong", "Bearer s3cret-token")],
    ids=["token-then-wrong", "wrong-then-token"],
)
def test_two_authorization_fields_are_refused_whatever_their_order(
    guarded: HttpServer, fields: tuple[str, str]
) -> None:
    """One credential a request (RFC 9110 §11.6.2); until review 37 the last field was
    read, so the order of two decided whether the request ran."""
    status, headers, doc = identify_with(guarded.port, *fields)
    assert (status, doc["error"]["code"]) == (401, "UNAUTHENTICATED")
    assert headers.get("www-authenticate") == "Bearer"


def test_one_authorization_field_with_the_token_is_served(guarded: HttpServer) -> None:
    assert identify_with(guarded.port, "Bearer s3cret-token")[0] == 200
    assert identify_with(guarded.port, "bearer  s3cret-token ")[0] == 200
    assert identify_with(guarded.port, "Bearer wrong")[0] == 401
    assert identify_with(guarded.port)[0] == 401


@pytest.mark.parametrize(
    "values",
    [
        (),
        ("Bearer wrong",),
        ("Bearer s3cret-token", "Bearer wrong"),
        ("Bearer wrong", "Bearer s3cret-token"),
    ],
    ids=["none", "wrong", "token-then-wrong", "wrong-then-token"],
)
def test_grpc_refuses_no_token_a_wrong_one_or_two_whatever_their_order(
    agent: Agent, values: tuple[str, ...]
) -> None:
    """The gRPC door's token as the HTTP door's: until review 37 the first of two
    `authorization` values counted (HTTP read the last)."""
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    metadata = [("authorization", v) for v in values]
    with (
        grpc_served(agent, token="s3cret-token") as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.PosAgentStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Identify(pb.IdentifyRequest(text="2770000000017"), metadata=metadata, timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        answer = stub.Identify(
            pb.IdentifyRequest(text="2770000000017"),
            metadata=[("authorization", "Bearer s3cret-token")],
            timeout=5,
        )
        assert answer.status == pb.FOUND


# ---------------------------------------------------------------- §13 and §17 at every door

STORIES = sorted((Path(__file__).resolve().parent / "scenarios" / "review37").glob("*.json"))


@pytest.mark.parametrize("file", STORIES, ids=[path.stem for path in STORIES])
def test_each_story_is_the_same_at_every_door(
    file: Path, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §12: the same calls and documents as the CLI's, at every door."""
    problems = said_at_every_door(file, tmp_path, monkeypatch)
    assert not problems, "\n".join(problems)


def test_the_stories_cite_the_contract() -> None:
    """Scenario text cites "CONTRACT §N" (the repository stands alone)."""
    assert len(STORIES) >= 2
    for path in STORIES:
        text = path.read_text(encoding="utf-8")
        assert "SPEC" not in text and "CONTRACT §" in text, path.name


# ---------------------------------------------------------------- §17 for an integrator

LINE_OUTCOMES = (
    "APPLIED",
    "BEATEN",
    "OUTSIDE_WINDOW",
    "BELOW_MIN_QTY",
    "CONTROL_GROUP",
    "COUPON_MISSING",
    "ZERO_DISCOUNT",
    "EXCLUDED_PRODUCT",
    "TAKEN_BY_DEAL",
)
RECEIPT_OUTCOMES = (
    "APPLIED",
    "BEATEN",
    "OUTSIDE_WINDOW",
    "COUPON_MISSING",
    "BELOW_MIN_TOTAL",
    "CONTROL_GROUP",
    "ZERO_DISCOUNT",
)
REPO = Path(__file__).resolve().parents[1]


def test_openapi_names_the_outcomes_a_trace_row_may_carry(server: HttpServer) -> None:
    """An integrator who has only /openapi.json and docs/INTEGRATION.md (docs/INTEGRATION.md
    says the document describes every field) must learn which `outcome` a trace row may
    say. Until review 37 `TraceOffer.outcome` and `TraceReceiptOffer.outcome` were "a
    string" and nothing more: the list was a .proto section comment, which describes no
    field, while a deal's outcome, a cap's name and `boundBy` were described."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: till\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    ((status, _, body),) = answers_of(got)
    assert status == 200
    schemas = json.loads(body)["components"]["schemas"]
    for name, outcomes in (("TraceOffer", LINE_OUTCOMES), ("TraceReceiptOffer", RECEIPT_OUTCOMES)):
        said = schemas[name]["properties"]["outcome"].get("description", "")
        missing = [o for o in outcomes if o not in said]
        assert not missing, (name, missing, said)


def test_the_integrators_guide_says_how_to_ask_why_and_what_each_outcome_means() -> None:
    """docs/INTEGRATION.md is the integrator's whole guide: until review 37 it named
    `explain` only as a reason for large gRPC answers, and no outcome at all."""
    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    assert '"explain": true' in guide
    missing = [o for o in (*LINE_OUTCOMES, *RECEIPT_OUTCOMES) if f"`{o}`" not in guide]
    assert not missing, missing
    for words in ("missingMinor", "boundBy", "never changes a figure"):
        assert words in guide, words


# ---------------------------------------------------------------- §12: /healthz while stopping


def test_from_the_moment_shutdown_starts_answers_say_connection_close(server: HttpServer) -> None:
    """CONTRACT §12: /healthz is 503 from the moment shutdown starts (`HttpServer.stop`
    turns `serving` off first, then stops the server). Until review 37 those answers (the
    503, a call still served in that moment) kept the connection alive, which the server
    then closed unasked: a POS's next call on it met "connection closed without
    response" (RFC 9112 §9.6: a server that will not keep the connection says `close`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: till\r\n\r\n")
        first = b""
        while not first.endswith(b"}\n"):  # the whole answer (a JSON document, a newline)
            first += sock.recv(65536)
        ((status, headers, _),) = answers_of(first)
        assert (status, headers.get("connection")) == (200, None)  # kept alive
        server.api.serving = False  # the stop's first step
        try:
            sock.sendall(
                b"POST /v1/identify HTTP/1.1\r\nHost: till\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(IDENTIFY), IDENTIFY)
            )
            got = b""
            while chunk := sock.recv(65536):  # ... until the agent closes the connection
                got += chunk
        finally:
            server.api.serving = True
    ((status, headers, body),) = answers_of(got)
    assert (status, headers.get("connection")) == (200, "close")
    assert json.loads(body)["status"] == "FOUND"  # a call in that moment is still served
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        server.api.serving = False
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: till\r\n\r\n")
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        finally:
            server.api.serving = True
    ((status, headers, body),) = answers_of(got)
    assert (status, headers.get("connection")) == (503, "close")
    assert json.loads(body)["error"]["code"] == "UNAVAILABLE"
