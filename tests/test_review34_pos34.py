"""Review 34 (pos34): a POS integrator's misbehaviours, over real HTTP and real gRPC.

Real tills' POS software is not polite: it gives up mid-call and retries, pipelines,
waits for `100 Continue`, streams chunked bodies, speaks HTTP/1.0, sends a body that
stops half-way, labels its JSON any way or not at all, writes int64s as numbers or
strings, sends keys twice. Everything here talks to a real `tillpoint run` (a process,
HTTP and gRPC on random loopback ports, its ledger a real SQLite file; a real reference
hub on 127.0.0.1 where a hub is needed) and checks that nothing is lost and nothing
doubled (receipts, journal, outbox, the hub's holds and ledger after sync) and that each
answer is what CONTRACT §11 and §12 promise.

What tests/test_http_api.py, tests/test_http_connections.py, tests/test_review21_*.py,
tests/test_review31_pos31.py and tests/test_review32_conc32.py already hold (races of
one receiptId through three doors, a body over the limit, a head that never ends, a
half-closing client, 405's `Allow`, a trailing slash, a BOM on a quote) is not repeated.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_review32_conc32 import (
    PROGRAM,
    Till,
    seeded,
    snapshot,
)
from .test_review32_conc32 import (
    receipt as receipt_json,
)

pytestmark = pytest.mark.slow  # each module fixture starts a real `tillpoint run`: 2-5 s

TIMEOUT = 30.0
BODY_TIMEOUT_S = 10.0  # agent/http_api.py: a body slower than this is 408 (CONTRACT §12)


# ---------------------------------------------------------------- raw HTTP/1.x


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str | None] | None = None,
    version: str = "1.1",
) -> bytes:
    """A request's bytes as a POS's HTTP stack writes them (a `None` header is left out)."""
    fields: dict[str, str | None] = {"Host": "till"}
    if body or method == "POST":
        fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    head = f"{method} {path} HTTP/{version}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return (head + "\r\n").encode() + body


def answers_of(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `data` (status, headers, body), in order; `100 Continue` included."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        size = int(headers.get("content-length", "0")) if status >= 200 else 0
        out.append((status, headers, rest[:size]))
        data = rest[size:]
    return out


def exchange(port: int, data: bytes, *, timeout: float = TIMEOUT, half_close: bool = False) -> bytes:
    """Send `data` on a new connection and read until the agent closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def one_answer(port: int, data: bytes, **kw: Any) -> tuple[int, dict[str, str], Any]:
    """The single answer to `data` (sent with `Connection: close` by the caller), its
    body read as JSON."""
    (status, headers, body), *more = answers_of(exchange(port, data, **kw))
    assert not more, more
    return status, headers, json.loads(body) if body else None


def body_of(rid: str, **changes: Any) -> bytes:
    return json.dumps(receipt_json(rid, **changes), ensure_ascii=False).encode()


CLOSE = {"Connection": "close"}


# ---------------------------------------------------------------- one till, no hub


@pytest.fixture(scope="module")
def till(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Till]:
    """One real `tillpoint run` for the HTTP edges (each test its own receiptIds)."""
    work = tmp_path_factory.mktemp("pos34")
    program = {**PROGRAM, "holdTtlSeconds": 600, "offlineRedeemLimitPoints": 100_000}
    t = Till(work, seeded(work / "till", snapshot(program=program)))
    yield t
    t.stop()


def stored(t: Till, rid: str) -> tuple[int, int]:
    """(receipt_life rows, journal rows) of receiptId `rid`."""
    return (
        t.count("receipt_life", "receipt_id = ?", rid),
        t.count("journal", "ref_id = ?", rid),
    )


# ---------------------------------------------------------------- a body that stops


def test_a_body_cut_short_by_the_clients_end_is_408_at_once_not_after_the_body_timeout(
    till: Till,
) -> None:
    """CONTRACT §12: a body cut short by the client's end of its side (fewer bytes than
    its Content-Length) gets the 408 of a body that does not arrive. No byte can come
    after that end, yet the agent waited the whole body timeout (10 s) before answering,
    and a client that closed outright (a POS giving up on its Hold) held its request,
    and one of the 256 connections, for those 10 s; a stop waited its 5 s grace for it.
    Nothing is stored for the receipt."""
    body = body_of("cut-1")
    head = request("POST", "/v1/hold", b"", {"Content-Length": str(len(body))})
    status, _, doc = one_answer(
        till.http_port, head + body[:40], half_close=True, timeout=BODY_TIMEOUT_S / 2
    )
    assert status == 408 and doc["error"]["code"] == "REQUEST_TIMEOUT", doc
    assert "40 of its" in doc["error"]["message"], doc
    # chunked: a chunk's bytes, then the end with no last chunk
    chunk = body[:50]
    head = request("POST", "/v1/hold", b"", {"Transfer-Encoding": "chunked"})
    status, _, doc = one_answer(
        till.http_port,
        head + b"%x\r\n%s\r\n" % (len(chunk), chunk),
        half_close=True,
        timeout=BODY_TIMEOUT_S / 2,
    )
    assert status == 408 and doc["error"]["code"] == "REQUEST_TIMEOUT", doc
    assert stored(till, "cut-1") == (0, 0)
    # the whole body after all, on the next connection: held once
    status, _, doc = one_answer(till.http_port, request("POST", "/v1/hold", body, CLOSE))
    assert (status, doc["state"]) == (200, "HELD")
    assert stored(till, "cut-1") == (1, 0)
