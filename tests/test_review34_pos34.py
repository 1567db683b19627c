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

import contextlib
import json
import queue
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.service import Agent
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import LoopbackHub, wait_for
from tillpoint.sync.pull import Puller
from tillpoint.v1 import tillpoint_pb2 as pb

from .test_review32_conc32 import (
    ANNA,
    BIG,
    BORIS,
    DEVICE,
    DOCUMENTED,
    GRPC_REQUEST,
    PROGRAM,
    Answer,
    Till,
    at_once,
    documented,
    hub_holds,
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


def exchange(
    port: int, data: bytes, *, timeout: float = TIMEOUT, half_close: bool = False
) -> bytes:
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


def test_a_body_that_trickles_is_408_after_the_body_timeout_while_other_calls_go_on(
    till: Till,
) -> None:
    """CONTRACT §12's decision (408: a body slower than 10 s): a POS whose body stops
    half-way and trickles a byte now and then (slowloris) is answered 408 once the body
    timeout passes, with `Connection: close`, and the connection is closed (RFC 9110
    §15.5.9); meanwhile the other tills' calls on other connections are answered as
    ever; nothing is stored for the trickled receipt. Until review 34 the connection
    stayed open after the 408, waiting for the rest of the body and then 75 s of
    keep-alive: a trickling client held one of the 256 connections 85 s, not 10 s."""
    body = body_of("trickle-1")
    head = request("POST", "/v1/hold", b"", {"Content-Length": str(len(body))})
    with socket.create_connection(("127.0.0.1", till.http_port), timeout=TIMEOUT) as slow:
        slow.sendall(head + body[:10])
        sent = 10
        others = 0
        deadline = time.monotonic() + BODY_TIMEOUT_S + 10
        slow.setblocking(False)
        got = b""
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                got += slow.recv(65536)
            if got:
                break
            if sent < len(body) - 1:  # never the last byte
                slow.sendall(body[sent : sent + 1])
                sent += 1
            # another till's checkout, answered while the slow body is still under way
            rid = f"trickle-other-{others}"
            status, _, doc = one_answer(
                till.http_port, request("POST", "/v1/checkout", body_of(rid), CLOSE)
            )
            assert (status, doc["state"]) == (200, "CONFIRMED"), doc
            others += 1
            time.sleep(0.5)
        # the client goes on trickling: the agent has closed the connection all the same
        slow.settimeout(5.0)
        try:
            while chunk := slow.recv(65536):
                got += chunk
                slow.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            pass
    ((status, headers, raw),) = answers_of(got)
    assert status == 408 and json.loads(raw)["error"]["code"] == "REQUEST_TIMEOUT"
    assert headers.get("connection") == "close"
    assert others >= 3  # (about two a second) went on while it trickled
    assert stored(till, "trickle-1") == (0, 0)
    assert till.count("journal", "ref_id LIKE 'trickle-other-%'") == others


def test_pipelined_calls_on_one_connection_are_answered_in_order_and_committed_once(
    till: Till,
) -> None:
    """A POS that pipelines (RFC 9112 §9.3.2: requests sent before the answers) gets its
    answers in order on the connection: a Hold, the same Hold again (idempotent, §11),
    its Confirm, a Quote, then the connection closes as the last one asked."""
    confirm = json.dumps({"receiptId": "pipe-1", "fiscalDocument": "FD-1"}).encode()
    data = (
        request("POST", "/v1/hold", body_of("pipe-1"))
        + request("POST", "/v1/hold", body_of("pipe-1"))
        + request("POST", "/v1/confirm", confirm)
        + request("POST", "/v1/quote", body_of("pipe-2"), CLOSE)
    )
    answers = answers_of(exchange(till.http_port, data))
    assert [status for status, _, _ in answers] == [200] * 4
    docs = [json.loads(body) for _, _, body in answers]
    assert [(d["receiptId"], d.get("state")) for d in docs] == [
        ("pipe-1", "HELD"),
        ("pipe-1", "HELD"),
        ("pipe-1", "CONFIRMED"),
        ("pipe-2", None),
    ]
    assert docs[0] == docs[1]
    assert answers[-1][1].get("connection") == "close"
    assert stored(till, "pipe-1") == (1, 1) and stored(till, "pipe-2") == (0, 0)


def test_expect_100_continue_is_answered_continue_then_the_call(till: Till) -> None:
    """A client that asks `Expect: 100-continue` (curl for bodies over 1 KiB, .NET's
    HttpWebRequest, Java's when set) hears `100 Continue` before it sends its body, then
    the call's answer; a client that waits for it and then leaves without a body stores
    nothing (the cut body of the test above)."""
    body = body_of("cont-1")
    head = request("POST", "/v1/checkout", b"", {"Expect": "100-continue", **CLOSE})
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    with socket.create_connection(("127.0.0.1", till.http_port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 "), first
        sock.sendall(body)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    ((status, _, raw),) = answers_of(first.partition(b"\r\n\r\n")[2] + got)
    assert (status, json.loads(raw)["state"]) == (200, "CONFIRMED")
    assert stored(till, "cont-1") == (0, 1)  # a Checkout leaves no hold row (§11)


def test_a_chunked_checkout_is_committed_once_and_its_retry_is_the_same_answer(
    till: Till,
) -> None:
    """A body streamed in chunks (Transfer-Encoding: chunked, no Content-Length: Java's
    and Go's clients for a body they stream) is the same receipt as sent whole: the retry
    with a Content-Length answers the same bytes, committed once."""
    body = body_of("chunk-1")
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 17]), body[i : i + 17]) for i in range(0, len(body), 17)
    )
    head = request("POST", "/v1/checkout", b"", {"Transfer-Encoding": "chunked", **CLOSE})
    head = head.replace(b"Content-Length: 0\r\n", b"")
    first = answers_of(exchange(till.http_port, head + chunks + b"0\r\n\r\n"))
    again = answers_of(exchange(till.http_port, request("POST", "/v1/checkout", body, CLOSE)))
    assert first[0][0] == again[0][0] == 200
    assert first[0][2] == again[0][2]
    assert stored(till, "chunk-1") == (0, 1)


@pytest.mark.parametrize("connection", [None, "keep-alive"])
def test_http_1_0_is_answered_then_the_connection_closes(
    till: Till, connection: str | None
) -> None:
    """An HTTP/1.0 client (an old POS script, urllib of old) is answered, then the
    connection closes (`Connection: close` said), with `Connection: keep-alive` too: the
    agent keeps only HTTP/1.1 connections alive (docs/INTEGRATION.md)."""
    rid = f"h10-{connection}"
    data = request("POST", "/v1/checkout", body_of(rid), {"Connection": connection}, "1.0")
    status, headers, doc = one_answer(till.http_port, data)
    assert (status, doc["state"], headers.get("connection")) == (200, "CONFIRMED", "close")
    assert stored(till, rid) == (0, 1)


def test_any_content_type_or_none_is_read_as_utf8_json(till: Till) -> None:
    """CONTRACT §12's decision (review 34): the body is JSON read as UTF-8 whatever
    `Content-Type` says or if it says nothing (1C's HTTPRequest sends none unless told,
    curl's `-d` says application/x-www-form-urlencoded): every one answers the same
    quote. A `charset` parameter is not obeyed (RFC 8259 §11: application/json has none,
    and JSON between systems is UTF-8): a body in windows-1251 is refused as not UTF-8
    whatever it is labelled, and nothing is stored."""
    body = body_of("ct-1")
    answers = set()
    for ctype in (
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=windows-1251",
    ):
        got = answers_of(
            exchange(
                till.http_port,
                request("POST", "/v1/quote", body, {"Content-Type": ctype, **CLOSE}),
            )
        )
        assert got[0][0] == 200, (ctype, got)
        answers.add(got[0][2])
    assert len(answers) == 1
    cyrillic = json.dumps(receipt_json("ct-2", storeId="Магазин 1"), ensure_ascii=False).encode(
        "cp1251"
    )
    status, _, doc = one_answer(
        till.http_port,
        request(
            "POST",
            "/v1/hold",
            cyrillic,
            {"Content-Type": "application/json; charset=windows-1251", **CLOSE},
        ),
    )
    assert (status, doc["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert "UTF-8" in doc["error"]["message"]
    assert stored(till, "ct-2") == (0, 0)


def test_what_a_pos_may_spell_another_way_is_one_receipt_for_its_retry(till: Till) -> None:
    """CONTRACT §11: a Hold retried with the same receipt is answered, never a 409 —
    and the same receipt spelled another way is the same receipt: a UTF-8 BOM before the
    body, int64 figures as JSON numbers or as proto3 JSON's digit strings, a key given
    twice (the last counts, §12's decision: the retry without the first is the same), a
    query string on the path (not read)."""
    plain = receipt_json("spell-1", redeemPoints=10)
    as_strings = {**plain["lines"][0], "priceMinor": str(plain["lines"][0]["priceMinor"])}
    once, twice = '"redeemPoints": 10', '"redeemPoints": 0, "redeemPoints": 10'
    spellings = [
        json.dumps(plain).encode(),
        b"\xef\xbb\xbf" + json.dumps(plain).encode(),
        json.dumps({**plain, "redeemPoints": "10", "lines": [as_strings]}).encode(),
        json.dumps(plain).replace(once, twice).encode(),
    ]
    assert b'"redeemPoints": 0, "redeemPoints": 10' in spellings[-1]
    answers = []
    for n, body in enumerate(spellings):
        path = "/v1/hold" if n % 2 == 0 else "/v1/hold?receiptId=other&n=1"
        status, _, doc = one_answer(till.http_port, request("POST", path, body, CLOSE))
        assert status == 200, (n, doc)
        answers.append(doc)
    assert all(a == answers[0] for a in answers), answers
    assert answers[0]["redeemedPoints"] == 10 and answers[0]["state"] == "HELD"
    assert stored(till, "spell-1") == (1, 0)
    assert stored(till, "other") == (0, 0)
    # another body under that receiptId is the conflict, however spelled
    other = json.dumps({**plain, "redeemPoints": "11"}).encode()
    status, _, doc = one_answer(till.http_port, request("POST", "/v1/hold", other, CLOSE))
    assert (status, doc["error"]["code"]) == (409, "ALREADY_EXISTS")


def test_what_the_contract_refuses_is_a_400_that_stores_nothing(till: Till) -> None:
    """CONTRACT §10, §12: a quantity is a decimal string (a JSON number is refused, as a
    float figure is), a receiptId over 128 characters, a body of two JSON documents, a
    NUL in an id: each a one-line 400 INVALID_ARGUMENT, nothing stored."""
    line = receipt_json("bad")["lines"][0]
    cases = {
        "bad-qty": receipt_json("bad-qty", lines=[{**line, "qty": 2}]),
        "bad-float": receipt_json("bad-float", lines=[{**line, "priceMinor": 8990.5}]),
        "bad-id": receipt_json("bad-id" + "x" * 100_000),
        "bad-nul": receipt_json("bad-nul\u0000"),
    }
    for rid, doc in cases.items():
        status, _, answer = one_answer(
            till.http_port, request("POST", "/v1/checkout", json.dumps(doc).encode(), CLOSE)
        )
        assert (status, answer["error"]["code"]) == (400, "INVALID_ARGUMENT"), (rid, answer)
        assert "\n" not in answer["error"]["message"]
        assert till.count("receipt_life", "receipt_id LIKE ?", rid + "%") == 0
    two = body_of("bad-two") + body_of("bad-two")
    status, _, answer = one_answer(till.http_port, request("POST", "/v1/checkout", two, CLOSE))
    assert (status, answer["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert stored(till, "bad-two") == (0, 0)


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("HEAD", "/v1/checkout", 405, "POST"),
        ("OPTIONS", "/v1/checkout", 405, "POST"),
        ("GET", "/v1/checkout", 405, "POST"),
        ("PUT", "/v1/checkout", 405, "POST"),
        ("post", "/v1/checkout", 405, "POST"),  # methods are case-sensitive (RFC 9110 §9.1)
        ("POST", "/V1/CHECKOUT", 404, None),  # so are paths (RFC 3986 §6.2.2.1)
        ("POST", "/v1/checkout/", 404, None),
        ("POST", "//v1/checkout", 404, None),
    ],
)
def test_another_method_or_spelling_of_a_path_runs_nothing(
    till: Till, method: str, path: str, status: int, allow: str | None
) -> None:
    """CONTRACT §12's decisions: a method a path does not take is a 405 naming the one it
    does in `Allow` (a HEAD's without a body), a path spelled another way is the 404 "no
    such call"; the JSON error document either way, and the checkout is not run."""
    rid = f"verb-{method}-{len(path)}-{path.count('/')}-{path.isupper()}"
    data = request(method, path, body_of(rid), CLOSE)
    got = answers_of(exchange(till.http_port, data))
    (answer_status, headers, raw) = got[0]
    assert answer_status == status, got
    assert headers.get("allow") == allow
    if method != "HEAD":
        code = json.loads(raw)["error"]["code"]
        assert code == ("METHOD_NOT_ALLOWED" if status == 405 else "NOT_FOUND")
    assert stored(till, rid) == (0, 0)


# ---------------------------------------------------------------- a POS that gives up


def hub_till(hub: LoopbackHub, work: Path, conf: str) -> Till:
    """A real `tillpoint run` enrolled at `hub`, its first snapshot pulled."""
    data = work / "till"
    enrollment = hub.enroll(DEVICE, data)
    seed = Agent(data, DEVICE)
    Puller(seed, HubLink(hub.address, enrollment), enrollment, call_timeout_s=5).pull()
    seed.close()
    return Till(work, data, hub, conf)


def slow_hub(hub: LoopbackHub, seconds: float) -> threading.Event:
    """The hub answers each redemption `seconds` late (its store busy); the event is set
    each time a redemption reaches it (a test clears it first)."""
    asked = threading.Event()

    def failpoint(where: str) -> None:
        if where == "authorize":
            asked.set()
            time.sleep(seconds)

    hub.server.servicer.failpoint = failpoint
    return asked


def big(rid: str, points: int = 300) -> dict[str, Any]:
    return receipt_json(rid, ANNA, redeemPoints=points, lines=BIG)


def give_up_over_http(t: Till, name: str, body: dict[str, Any], after: float = 0.3) -> None:
    """A POS that sends its call and closes the connection before the answer."""
    data = request("POST", f"/v1/{name}", json.dumps(body).encode())
    with socket.create_connection(("127.0.0.1", t.http_port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        time.sleep(after)


def settled_alike(t: Till, hub: LoopbackHub) -> None:
    """Once the outbox is pushed: the hub's ledger is the till's journal, one entry each;
    the hub holds only what the till's open ONLINE holds redeem; the customer's balance
    is the same at both."""
    wait_for(lambda: t.count("outbox") == 0, TIMEOUT)
    journal = [r for (r,) in t.rows("SELECT ref_id FROM journal ORDER BY seq")]
    assert len(journal) == len(set(journal)), journal
    assert [e.ref_id for e in hub.store.ledger(DEVICE)] == journal
    open_holds = {
        rid: (mode, points)
        for rid, mode, points in t.rows(
            "SELECT receipt_id, mode, redeemed_points FROM receipt_life WHERE state = 'HELD'"
        )
    }

    def hub_agrees() -> bool:
        # every open ONLINE hold that redeems is held at the hub with its points; an OFFLINE one may
        # be too (a grant that came late, shrunk to what the hold redeems: §11's
        # decision); nothing else is held (confirmed: settled; cancelled: released)
        active = {rid: points for rid, points, state in hub_holds(hub) if state == "ACTIVE"}
        online = {rid for rid, (mode, n) in open_holds.items() if mode == "ONLINE" and n}
        return online <= set(active) and all(
            rid in open_holds and open_holds[rid][1] == points for rid, points in active.items()
        )

    try:
        wait_for(hub_agrees, TIMEOUT)
    except TimeoutError:
        raise AssertionError((open_holds, hub_holds(hub))) from None
    for card, customer in ((ANNA, "c-1"), (BORIS, "c-2")):
        assert t.balance(card) == hub.store.balance(customer, datetime.now(UTC)).available


def test_a_call_given_up_mid_way_and_retried_is_done_once(hub: LoopbackHub, tmp_path: Path) -> None:
    """CONTRACT §11: Hold and Checkout are idempotent on receiptId, and a POS retries a
    call it gave up on with the same receiptId. Here the hub answers each redemption a
    second late, and the POS gives up after 0.3 s: over HTTP it closes the connection
    after sending the body, over gRPC its deadline expires or it cancels the call. Its
    retry (once, or from two connections at once) is answered with the one receipt the
    agent stored — the same figures, ONLINE with the hub's grant — and nothing is
    doubled: one hub hold a receipt, one journal entry a sale, the hub's ledger the
    till's journal once pushed, the balance the same at both."""
    slow_hub(hub, 1.0)
    t = hub_till(hub, tmp_path, "redeem_timeout_ms = 5000\ncall_timeout_ms = 5000\n")
    try:
        # HTTP: a Hold given up, retried once (while the first still waits for the hub)
        give_up_over_http(t, "hold", big("gu-hold"))
        first = t.http("hold", big("gu-hold"))
        assert first.ok and first.doc["state"] == "HELD" and first.doc["mode"] == "ONLINE"
        assert first.figure("redeemedPoints") == 300
        # HTTP: a Checkout given up, retried from two connections at once
        give_up_over_http(t, "checkout", big("gu-checkout"))
        checkouts = at_once([lambda: t.http("checkout", big("gu-checkout"))] * 2)
        documented(checkouts)
        assert [a.doc["state"] for a in checkouts] == ["CONFIRMED"] * 2
        assert checkouts[0].doc == checkouts[1].doc
        # gRPC: a Hold whose deadline passes mid-call, then retried
        request_pb = json_format.ParseDict(big("gu-deadline"), pb.Receipt())
        with pytest.raises(grpc.RpcError) as gone:
            t.stub.Hold(request_pb, timeout=0.3)
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        held = t.grpc("hold", big("gu-deadline"))
        assert held.ok and held.doc["state"] == "HELD" and held.doc["mode"] == "ONLINE"
        # gRPC: a Checkout cancelled by the client mid-call, then retried twice at once
        future = t.stub.Checkout.future(
            json_format.ParseDict(big("gu-cancel"), pb.Receipt()), timeout=TIMEOUT
        )
        time.sleep(0.3)
        assert future.cancel()
        both = at_once([lambda: t.grpc("checkout", big("gu-cancel"))] * 2)
        documented(both)
        assert [a.doc["state"] for a in both] == ["CONFIRMED"] * 2
        # the stored receipts answer every retry alike, the hub asked nothing more
        asked = hub.store.balance("c-1", datetime.now(UTC)).held
        assert t.http("hold", big("gu-hold")).doc == first.doc
        assert t.http("checkout", big("gu-checkout")).doc == checkouts[0].doc
        again = t.grpc("checkout", big("gu-cancel"))
        assert again.doc == both[0].doc
        assert hub.store.balance("c-1", datetime.now(UTC)).held == asked
        # a Confirm given up, then retried: committed once; a Cancel of the other hold
        give_up_over_http(t, "confirm", {"receiptId": "gu-hold"}, after=0.0)
        confirmed = t.http("confirm", {"receiptId": "gu-hold"})
        assert confirmed.ok and confirmed.doc["state"] == "CONFIRMED"
        assert confirmed.figure("redeemedPoints") == 300
        assert t.grpc("cancel", {"receiptId": "gu-deadline"}).doc["state"] == "CANCELLED"
        journal = [r for (r,) in t.rows("SELECT ref_id FROM journal ORDER BY seq")]
        assert sorted(journal) == ["gu-cancel", "gu-checkout", "gu-hold"]
        assert t.count("outbox") <= 3
        settled_alike(t, hub)
    finally:
        t.stop()


def test_two_checkouts_of_one_receipt_id_with_other_bodies_racing_a_slow_hub(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11: a Checkout whose body differs from the one first stored under its
    receiptId is refused with the conflict (409, ALREADY_EXISTS), never answered with
    the other's result. Two POS doors send one receiptId with two bodies (300 and 100
    points) at once while the hub takes a second to answer: one is committed with its
    own figures, the other is the conflict; the hub settles the winner's points only."""
    slow_hub(hub, 1.0)
    t = hub_till(hub, tmp_path, "redeem_timeout_ms = 5000\ncall_timeout_ms = 5000\n")
    try:
        for n in range(3):
            rid = f"race-{n}"
            answers = at_once(
                [
                    lambda rid=rid: t.http("checkout", big(rid, 300)),
                    lambda rid=rid: t.grpc("checkout", big(rid, 100)),
                ]
            )
            documented(answers)
            assert sorted(a.kind for a in answers) == ["conflict", "ok"], answers
            (won,) = [a for a in answers if a.ok]
            points = 300 if won.door == "http" else 100
            assert won.figure("redeemedPoints") == points
            assert t.rows("SELECT redeemed_points FROM receipts WHERE receipt_id = ?", rid) == [
                (points,)
            ]
        settled_alike(t, hub)
    finally:
        t.stop()


# ---------------------------------------------------------------- many POS clients at once

FIGURES = ("totalMinor", "discountMinor", "redeemedPoints", "payableMinor", "earnedPoints")
LINE_FIGURES = ("amountMinor", "discountMinor", "redeemedMinor", "earnedPoints")


def figures(doc: dict[str, Any]) -> tuple[Any, ...]:
    """A result's figures, read alike from HTTP's JSON and gRPC's (proto3 JSON: int64s
    as strings, zeros left out)."""
    lines = tuple(
        (line["sku"], line.get("offerId") or None, *(int(line.get(k) or 0) for k in LINE_FIGURES))
        for line in doc.get("lines", [])
    )
    return (doc["mode"], *(int(doc.get(k) or 0) for k in FIGURES), lines)


@pytest.mark.parametrize("seed", [34, 3434])
def test_many_pos_clients_at_once_while_the_hub_goes_away_and_comes_back(
    hub: LoopbackHub, tmp_path: Path, seed: int
) -> None:
    """CONTRACT §9, §11, §12: eight POS clients (HTTP and gRPC) make 500 calls at once
    (a seeded mix of Hold, Checkout, Confirm, Cancel, Quote and Balance on 60
    receiptIds of two customers; one in ten a call given up mid-way: a socket closed, a
    gRPC deadline passed; one in twenty another body under a receiptId), while the hub
    goes away and comes back every second or so. Every answer is a documented one, and
    consistent with the final ledger: the answers of one receiptId all carry its stored
    figures; one answered CONFIRMED is committed once, one answered CANCELLED never; a
    conflict only for a body other than the stored one. Once the hub is back and the
    outbox pushed, the hub's ledger is the till's journal, its holds the till's open
    holds, its balances the till's."""
    rng = random.Random(seed)
    t = hub_till(hub, tmp_path, "redeem_timeout_ms = 300\ncall_timeout_ms = 1000\n")
    rids = [f"m{seed}-{n}" for n in range(60)]
    base = {
        rid: receipt_json(
            rid,
            rng.choice((ANNA, BORIS)),
            redeemPoints=rng.choice((0, 50, 100, -1)),
            lines=rng.choice((BIG, receipt_json("x")["lines"])),
        )
        for rid in rids
    }

    def other(rid: str) -> dict[str, Any]:  # another body under the same receiptId
        return {**base[rid], "redeemPoints": 7}

    plan = []
    for _ in range(500):
        rid = rng.choice(rids)
        name = rng.choices(
            ("hold", "checkout", "confirm", "cancel", "quote", "balance"), (5, 3, 4, 2, 2, 1)
        )[0]
        door = rng.choice(("http", "grpc"))
        body: dict[str, Any] = {"receiptId": rid}
        alternate = False
        if name in ("hold", "checkout", "quote"):
            alternate = rng.random() < 0.05
            body = other(rid) if alternate else base[rid]
        elif name == "balance":
            body = {"card": base[rid]["card"]}
        give_up = name != "balance" and rng.random() < 0.1
        plan.append((rid, name, door, body, alternate, give_up, rng.random() * 0.3))
    work: queue.Queue[Any] = queue.Queue()
    for step in plan:
        work.put(step)
    answers: list[tuple[str, str, bool, Answer]] = []
    lock = threading.Lock()
    done = threading.Event()

    def client() -> None:
        while True:
            try:
                rid, name, door, body, alternate, give_up, after = work.get_nowait()
            except queue.Empty:
                return
            if give_up and door == "http":
                give_up_over_http(t, name, body, after)
                continue
            if give_up:  # gRPC: a deadline that passes mid-call
                method = getattr(t.stub, name.capitalize())
                with contextlib.suppress(grpc.RpcError):
                    method(json_format.ParseDict(body, GRPC_REQUEST[name]()), timeout=after)
                continue
            answer = t.call(door, name, body)
            with lock:
                answers.append((rid, name, alternate, answer))

    def flap() -> None:
        # The hub goes away and comes back by the clients' progress, not by the clock: on
        # a quiet machine the 500 calls were all answered before a first outage of a
        # second or so began, and the run saw no OFFLINE answer at all.
        flips = random.Random(seed + 1)
        away = False
        for threshold in range(flips.randint(30, 60), len(plan), flips.randint(50, 80)):
            while len(plan) - work.qsize() < threshold:
                if done.wait(0.01):
                    hub.restart()
                    return
            if away:
                hub.restart()
            else:
                hub.stop()
            away = not away
        hub.restart()

    try:
        flapper = threading.Thread(target=flap)
        flapper.start()
        clients = [threading.Thread(target=client) for _ in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(300)
        assert not any(c.is_alive() for c in clients)
        done.set()
        flapper.join(TIMEOUT)
        hub.server.servicer.failpoint = None
        bad = [a for _, _, _, a in answers if a.kind not in DOCUMENTED]
        assert not bad, bad[:5]
        assert len(answers) == sum(1 for step in plan if not step[5])
        modes = {a.doc.get("mode") for _, n, _, a in answers if a.ok and n != "balance"}
        assert {"ONLINE", "OFFLINE"} <= modes  # the hub was there, and away

        life = {rid: state for rid, state in t.rows("SELECT receipt_id, state FROM receipt_life")}
        committed = {
            rid: json.loads(result)
            for rid, result in t.rows("SELECT receipt_id, result FROM receipts")
        }
        held = {
            rid: json.loads(figs)
            for rid, figs in t.rows("SELECT receipt_id, figures FROM receipt_life")
        }
        journal = [r for (r,) in t.rows("SELECT ref_id FROM journal ORDER BY seq")]
        assert len(journal) == len(set(journal)) == len(committed)
        for rid in rids:
            mine = [(n, alt, a) for r, n, alt, a in answers if r == rid]
            states = {a.doc.get("state") for n, _, a in mine if a.ok and n != "quote"}
            if "CONFIRMED" in states:
                assert rid in committed and life.get(rid, "CONFIRMED") == "CONFIRMED", mine
                assert "CANCELLED" not in states, mine
            if "CANCELLED" in states:
                assert rid not in committed and life[rid] == "CANCELLED", mine
            # every answer of the receipt carries its one stored set of figures
            sale = [
                figures(a.doc)
                for n, _, a in mine
                if a.ok and n in ("hold", "checkout", "confirm", "cancel")
            ]
            if sale:
                assert len(set(sale)) == 1, (rid, mine)
            stored_doc = committed.get(rid)
            if stored_doc is not None and sale:
                assert sale[0] == figures(stored_doc), (rid, stored_doc, mine)
            # a conflict only for a body other than the stored one
            for n, _, a in mine:
                if a.kind == "conflict":
                    assert n in ("hold", "checkout"), (rid, mine)
                    assert held.get(rid) is not None or rid in committed, (rid, mine)
            sold_alt = [alt for n, alt, a in mine if a.ok and n in ("hold", "checkout")]
            assert len(set(sold_alt)) <= 1, (rid, mine)  # one body wins a receiptId
        settled_alike(t, hub)
    finally:
        done.set()
        t.stop()


def test_a_grpc_client_with_no_deadline_is_answered_within_the_tills_own(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """A gRPC client that sets no deadline (grpcurl's default, many generated clients')
    while the hub is stalled is answered all the same: the till bounds its own wait for
    the hub (`redeem_timeout_ms`, CONTRACT §9) and prices the receipt OFFLINE; the grant
    that comes late is shrunk to what the hold redeems (§11's decision), and the retry
    (now with a deadline) answers the stored hold."""
    t = hub_till(hub, tmp_path, "redeem_timeout_ms = 300\ncall_timeout_ms = 1000\n")
    slow_hub(hub, 3.0)
    try:
        request_pb = json_format.ParseDict(big("nodl-1"), pb.Receipt())
        future = t.stub.Hold.future(request_pb)  # no timeout: no deadline at all
        reply = future.result(timeout=TIMEOUT)  # (the test's own bound, not the call's)
        answer = json_format.MessageToDict(reply)
        assert (answer["state"], answer["mode"]) == ("HELD", "OFFLINE")
        again = t.grpc("hold", big("nodl-1"))
        assert again.ok and figures(again.doc) == figures(answer)
        assert t.count("receipt_life", "receipt_id = 'nodl-1'") == 1
        hub.server.servicer.failpoint = None
        settled_alike(t, hub)
    finally:
        t.stop()


@pytest.mark.parametrize("door", ["http", "grpc"])
def test_a_cancel_or_confirm_sent_while_its_hold_still_asks_the_hub_waits_for_it(
    hub: LoopbackHub, tmp_path: Path, door: str
) -> None:
    """CONTRACT §11: Cancel releases a hold; Confirm commits it. A POS whose Hold timed
    out (the hub a second late) and that abandons the basket sends Cancel — while that
    Hold is still asking the hub. The Cancel was answered 404 "not held at this till",
    then the Hold was stored HELD: the customer's 300 points stayed reserved, at the hub
    too, for the hold's whole life (10 minutes here, 30 by default), though the POS had
    cancelled and been told nothing was held. A Confirm sent so (a POS that does not
    wait for the Hold's answer) was a 404 too, and the payment taken went unloyal. Now
    each waits for the Hold of its receipt to end (the turns of §11's decision), then
    answers: CANCELLED and released, CONFIRMED and committed once."""
    asked = slow_hub(hub, 1.0)
    t = hub_till(hub, tmp_path, "redeem_timeout_ms = 5000\ncall_timeout_ms = 5000\n")
    try:
        asked.clear()
        give_up_over_http(t, "hold", big("late-cancel"), after=0.1)
        assert asked.wait(TIMEOUT)  # the Hold is asking the hub
        cancelled = t.call(door, "cancel", {"receiptId": "late-cancel"})
        assert cancelled.ok and cancelled.doc["state"] == "CANCELLED", cancelled
        assert cancelled.figure("redeemedPoints") == 300
        asked.clear()
        give_up_over_http(t, "hold", big("late-confirm"), after=0.1)
        assert asked.wait(TIMEOUT)
        confirmed = t.call(door, "confirm", {"receiptId": "late-confirm"})
        assert confirmed.ok and confirmed.doc["state"] == "CONFIRMED", confirmed
        assert t.rows("SELECT receipt_id, state FROM receipt_life ORDER BY receipt_id") == [
            ("late-cancel", "CANCELLED"),
            ("late-confirm", "CONFIRMED"),
        ]
        # the retried Hold answers the cancelled receipt (§11: what is stored)
        assert t.call(door, "hold", big("late-cancel")).doc["state"] == "CANCELLED"
        hub.server.servicer.failpoint = None
        settled_alike(t, hub)
        held = {rid: state for rid, _, state in hub_holds(hub)}
        assert held.get("late-cancel") != "ACTIVE"
    finally:
        t.stop()


def test_grpc_requests_at_and_past_the_size_limit_and_with_unknown_fields_store_nothing(
    till: Till,
) -> None:
    """CONTRACT §12's decisions, over a real `tillpoint run`'s gRPC port: a request over
    4 MiB is bad input (INVALID_ARGUMENT "request larger than 4 MiB"), one over gRPC's
    own 16 MiB is RESOURCE_EXHAUSTED; a field the contract does not have is refused
    (INVALID_ARGUMENT naming its number); one just under 4 MiB is read and refused for
    what it is (a storeId over 128 characters). Nothing is stored, and the next call of
    the same client on the same channel is served."""
    raw_call = till.channel.unary_unary(
        "/tillpoint.v1.PosAgent/Checkout",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )

    def code_of(data: bytes) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as refused:
            raw_call(data, timeout=TIMEOUT)
        return refused.value.code(), refused.value.details() or ""

    def message(rid: str, store: str = "s1") -> bytes:
        doc = receipt_json(rid, storeId=store)
        return bytes(json_format.ParseDict(doc, pb.Receipt()).SerializeToString())

    size = len(message("grpc-size", ""))
    under = message("grpc-size", "s" * ((4 << 20) - size - 16))
    assert len(under) < 4 << 20
    code, details = code_of(under)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "storeId is too long" in details
    code, details = code_of(message("grpc-size", "s" * (4 << 20)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "larger than 4 MiB" in details
    code, _ = code_of(message("grpc-size", "s" * (17 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    unknown = message("grpc-size") + b"\xfa\x3f\x03abc"  # field 1023, length-delimited
    code, details = code_of(unknown)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1023" in details
    assert stored(till, "grpc-size") == (0, 0)
    sold = till.grpc("checkout", receipt_json("grpc-size"))
    assert sold.ok and sold.doc["state"] == "CONFIRMED"
    assert stored(till, "grpc-size") == (0, 1)
