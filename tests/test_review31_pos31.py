"""Review 31 (pos31): a POS integrator's afternoon with only docs/INTEGRATION.md, the
agent's own `GET /openapi.json` and gRPC server reflection (issue 11's "done when": a POS
written against those alone can price, hold, confirm, cancel and refund over HTTP, and
the same over gRPC with no `.proto`).

Everything here talks to a real `tillpoint run` (a process, its ports random on
127.0.0.1) seeded with the walkthrough's snapshot (`examples/snapshot.json`), as the
guide's own setup block does. Every HTTP answer, success and error alike, HEAD too, is
validated with a JSON Schema validator (jsonschema, Draft 2020-12, OpenAPI 3.1's
dialect) against the schema the served document declares for its path, method and
status (CONTRACT §12: openapi.json describes every call)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .conftest import REPO, free_port

TIMEOUT = 5.0
TILLPOINT = str(Path(sys.executable).parent / "tillpoint")
CARD, UNKNOWN_CARD, BLOCKED_CARD = "2770000000017", "2770000000093", "2770000000031"
MILK, BREAD, CIGARETTES, CHEESE = (
    "4601234000017",
    "4601234000024",
    "4601234000031",
    "4601234000055",
)


# ---------------------------------------------------------------- a real `tillpoint run`


@dataclass
class Till:
    http: int
    grpc: int
    token: str = ""


@contextlib.contextmanager
def tillpoint_run(data_dir: Path, *, snapshot: bool = True, token: str = "") -> Iterator[Till]:
    """`tillpoint run` as a process on free loopback ports, as the guide's setup block
    starts it (its snapshot loaded by `tillpoint snapshot load` first, when asked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(data_dir), TILLPOINT_METRICS__ENABLED="false")
    if snapshot:
        subprocess.run(
            [TILLPOINT, "snapshot", "load", str(REPO / "examples" / "snapshot.json")],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
    till = Till(free_port(), free_port(), token)
    env.update(
        TILLPOINT_HTTP__LISTEN=f"127.0.0.1:{till.http}",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{till.grpc}",
    )
    if token:
        env.update(TILLPOINT_HTTP__TOKEN=token, TILLPOINT_SERVER__TOKEN=token)
    log = (data_dir.parent / f"run-{till.http}.log").open("wb")
    process = subprocess.Popen(
        [TILLPOINT, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # serving: /healthz answers (200 with a snapshot, 503 without)
            assert process.poll() is None, (data_dir.parent / log.name).read_text()
            try:
                with socket.create_connection(("127.0.0.1", till.http), timeout=1):
                    pass
                with grpc.insecure_channel(f"127.0.0.1:{till.grpc}") as channel:
                    grpc.channel_ready_future(channel).result(timeout=1)
                break
            except (OSError, grpc.FutureTimeoutError):
                assert time.monotonic() < deadline, "tillpoint run did not start in 60 s"
                time.sleep(0.1)
        yield till
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def till(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Till]:
    with tillpoint_run(tmp_path_factory.mktemp("till") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def bare_till(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Till]:
    """A till beyond loopback would need a token; this one has a token and no snapshot."""
    with tillpoint_run(
        tmp_path_factory.mktemp("bare") / "data", snapshot=False, token="s3cret"
    ) as running:
        yield running


# ---------------------------------------------------------------- HTTP, as a POS speaks it


@dataclass
class Answer:
    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes
    why: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    till: Till,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    token: bool = True,
    why: str = "",
) -> Answer:
    """One request on its own connection, with a timeout (the guide: "give every call a
    timeout")."""
    conn = http.client.HTTPConnection("127.0.0.1", till.http, timeout=TIMEOUT)
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    if till.token and token:
        sent["Authorization"] = f"Bearer {till.token}"
    sent.update(headers or {})
    try:
        conn.request(method, path, data, sent)
        response = conn.getresponse()
        return Answer(
            method,
            path,
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
            why,
        )
    finally:
        conn.close()


def raw_request(till: Till, request: bytes, method: str, path: str, why: str) -> Answer:
    """Bytes on a socket, for what http.client will not send (no Host, HTTP/2.0 in clear
    text, a garbage request line): the agent answers and closes the connection."""
    with socket.create_connection(("127.0.0.1", till.http), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return Answer(method, path, int(lines[0].split()[1]), headers, body, why)


class OpenApi:
    """The served document, each answer checked against what it declares."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
        self.wrong: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, answer: Answer) -> Answer:
        said = (
            f"{answer.method} {answer.path} ({answer.why}) {answer.status}: {answer.body[:160]!r}"
        )
        operation = self.doc["paths"].get(answer.path, {}).get(answer.method.lower())
        if operation is None:
            self.wrong.append(f"{said}: no such operation in openapi.json")
            return answer
        declared = operation["responses"].get(str(answer.status))
        if declared is None:
            self.wrong.append(f"{said}: status not declared")
            return answer
        self.seen.add((answer.method, answer.path, answer.status))
        if answer.method == "HEAD":
            if answer.body or "content" in declared:
                self.wrong.append(f"{said}: a HEAD answer has no body, nor does its description")
            return answer
        for name in declared.get("headers", {}):  # a preflight's CORS headers (review 32)
            if name.lower() not in answer.headers:
                self.wrong.append(f"{said}: no {name} header")
        if "text/plain" in declared.get("content", {}):  # a preflight's "OK"
            schema = declared["content"]["text/plain"]["schema"]
            if not answer.headers.get("content-type", "").startswith("text/plain"):
                self.wrong.append(f"{said}: not text/plain")
            for error in Draft202012Validator(schema).iter_errors(answer.body.decode()):
                self.wrong.append(f"{said}: {error.message[:200]}")
            return answer
        if not answer.headers.get("content-type", "").startswith("application/json"):
            self.wrong.append(f"{said}: not application/json")
            return answer
        pointer = "/".join(
            p.replace("~", "~0").replace("/", "~1")
            for p in ("paths", answer.path, answer.method.lower(), "responses", str(answer.status))
        )
        schema = {"$ref": f"urn:openapi#/{pointer}/content/application~1json/schema"}
        validator = Draft202012Validator(schema, registry=self.registry)
        for error in validator.iter_errors(answer.json()):
            self.wrong.append(f"{said}: {list(error.absolute_path)} {error.message[:200]}")
        return answer


def receipt(receipt_id: str, card: str = CARD, **changes: Any) -> dict[str, Any]:
    """The guide's receipt."""
    body: dict[str, Any] = {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": "2026-11-23T10:15:00+03:00",
        "card": card,
        "lines": [
            {"sku": MILK, "qty": "2", "priceMinor": 8990},
            {"sku": BREAD, "qty": "1", "priceMinor": 5990},
        ],
        "redeemPoints": -1,
    }
    body.update(changes)
    return body


def refund(refund_id: str, receipt_id: str, qty: str = "1", sku: str = MILK) -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": sku, "qty": qty}],
    }


# ---------------------------------------------------------------- 1. every answer, validated


def test_every_answer_of_every_route_holds_to_the_served_openapi(
    till: Till, bare_till: Till
) -> None:
    """CONTRACT §12: every real answer (success and each error status, every route, HEAD
    too) is one its operation declares, with a body the declared schema accepts. A bad
    HTTP request (no Host, two Content-Length, a garbage request line) is 400 on every
    path and HTTP/2.0 in clear text 505: `/healthz` declared neither and `/v1/status` no
    400; `GET /openapi.json` and the HEAD the agent serves for each GET path (200, RFC
    9110: a server supports HEAD where it supports GET) were no operation at all."""
    api = OpenApi(call(till, "GET", "/openapi.json").json())
    check = api.check

    def post(path: str, body: Any, why: str = "", **kw: Any) -> Answer:
        return check(call(till, "POST", path, body, why=why, **kw))

    for text in (CARD, UNKNOWN_CARD, BLOCKED_CARD, "SORRY-7K2Q9", "", "+79161234567"):
        assert post("/v1/identify", {"text": text}, text).status == 200
    assert post("/v1/quote", receipt("v-q1"), "quote").status == 200
    assert post("/v1/quote", receipt("v-q1", explain=True), "explain").status == 200
    assert post("/v1/quote", receipt("v-q1", coupons=["SORRY-1"]), "coupon").status == 200
    assert post("/v1/hold", receipt("v-h1"), "hold").json()["state"] == "HELD"
    assert post("/v1/hold", receipt("v-h1"), "again").json()["state"] == "HELD"
    assert post("/v1/hold", receipt("v-h1", redeemPoints=0), "another body").status == 409
    assert post("/v1/confirm", {"receiptId": "v-h1", "fiscalDocument": "F1"}).status == 200
    assert post("/v1/confirm", {"receiptId": "v-h1"}, "again").status == 200
    assert post("/v1/cancel", {"receiptId": "v-h1"}, "confirmed").status == 412
    assert post("/v1/confirm", {"receiptId": "v-none"}, "unknown").status == 404
    assert post("/v1/cancel", {"receiptId": "v-none"}, "unknown").status == 404
    assert post("/v1/hold", receipt("v-h2"), "to cancel").status == 200
    assert post("/v1/cancel", {"receiptId": "v-h2"}).json()["state"] == "CANCELLED"
    assert post("/v1/confirm", {"receiptId": "v-h2"}, "cancelled").status == 412
    assert post("/v1/hold", receipt("v-h2"), "cancelled").json()["state"] == "CANCELLED"
    assert post("/v1/checkout", receipt("v-c1"), "found").status == 200
    assert post("/v1/checkout", receipt("v-c2", UNKNOWN_CARD), "unknown card").status == 200
    assert post("/v1/checkout", receipt("v-c3", BLOCKED_CARD), "blocked card").status == 412
    assert post("/v1/checkout", receipt("v-c4", ""), "no card").status == 400  # inv34: bad input
    assert post("/v1/refund", refund("v-r1", "v-c1")).status == 200
    assert post("/v1/refund", refund("v-r1", "v-c1"), "again").status == 200
    assert post("/v1/refund", refund("v-r1", "v-c1", "2"), "another body").status == 409
    assert post("/v1/refund", refund("v-r2", "v-c1", "5"), "more than sold").status == 412
    assert post("/v1/refund", refund("v-r3", "v-c2"), "unknown card").status == 200
    assert post("/v1/refund", refund("v-r4", "v-none"), "never sold").status == 404
    assert post("/v1/balance", {"card": CARD}).status == 200
    assert post("/v1/balance", {"card": CARD, "at": "2026-11-24T12:00:00+03:00"}).status == 200
    assert post("/v1/balance", {"card": UNKNOWN_CARD}, "unknown").status == 404
    assert post("/v1/balance", {"card": BLOCKED_CARD}, "blocked").status == 412
    assert post("/v1/balance", {"card": "2770000000018"}, "invalid").status == 400  # inv34
    # bad bodies, and what the guide's error table lists beside them
    assert post("/v1/quote", None, "bad JSON", raw=b"{").status == 400
    assert post("/v1/quote", {"receiptId": "x", "colour": 1}, "unknown field").status == 400
    assert post("/v1/quote", receipt("v-x", redeemPoints=1.5), "fraction").status == 400
    assert post("/v1/identify", None, "no body", raw=b"").status == 400
    gzip = {"Content-Encoding": "gzip"}
    assert post("/v1/quote", receipt("v-x"), "gzip", headers=gzip).status == 415
    other = {"X-Tillpoint-Instance": "another"}
    assert post("/v1/quote", receipt("v-x"), "another agent", headers=other).status == 421

    gets = [path for path, ops in api.doc["paths"].items() if "get" in ops]
    gets += [path for path in ("/openapi.json",) if path not in gets]  # served, described?
    for path in api.doc["paths"]:
        method = "GET" if path in gets else "POST"
        page = {"Origin": "http://shop.example"}
        assert check(call(till, method, path, {}, headers=page, why="Origin")).status == 403
        for why, request, status in (
            ("no Host", f"{method} {path} HTTP/1.1\r\n\r\n", 400),
            (
                "two lengths",
                f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                "Content-Length: 2\r\n\r\n",
                400,
            ),
            ("HTTP/2.0", f"{method} {path} HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ):
            answer = raw_request(till, request.encode(), method, path, why)
            assert check(answer).status == status, (path, why)
    for path in gets:
        assert check(call(till, "GET", path, why="GET")).status == 200
        assert check(call(till, "HEAD", path, why="HEAD")).status == 200
        assert check(call(till, "HEAD", path, headers=other, why="HEAD 421")).status == 421

    # a till with a token and no snapshot yet: 401 without the token, 503 /healthz, 412
    bare = OpenApi(call(bare_till, "GET", "/openapi.json").json())
    for path in bare.doc["paths"]:
        method = "GET" if path in gets else "POST"
        body = None if method == "GET" else {}
        answer = call(bare_till, method, path, body, token=False, why="no token")
        assert bare.check(answer).status == 401, path
    assert bare.check(call(bare_till, "GET", "/healthz", why="no snapshot")).status == 503
    assert bare.check(call(bare_till, "HEAD", "/healthz", why="no snapshot")).status == 503
    no_snapshot = call(bare_till, "POST", "/v1/quote", receipt("b-q"), why="no snapshot")
    assert bare.check(no_snapshot).status == 412
    unknown = call(bare_till, "POST", "/v1/balance", {"card": CARD}, why="no snapshot")
    assert bare.check(unknown).status == 404
    assert bare.check(call(bare_till, "GET", "/v1/status", why="no snapshot")).status == 200

    assert not api.wrong + bare.wrong, "\n".join(api.wrong + bare.wrong)


def test_a_405_of_a_get_path_allows_head_too(till: Till) -> None:
    """RFC 9110 §15.5.6: a 405's `Allow` lists the methods the path supports, and every
    GET path answers HEAD (200): `Allow: GET` left it out. The guide's 405 row says so."""
    doc = call(till, "GET", "/openapi.json").json()
    for path, operations in doc["paths"].items():
        allowed = {method.upper() for method in operations}
        wrong = "POST" if "GET" in allowed else "GET"
        answer = call(till, wrong, path, {} if wrong == "POST" else None)
        assert answer.status == 405, path
        assert set(answer.headers["allow"].split(", ")) == allowed, (path, answer.headers)
        assert "405" in next(iter(operations.values()))["responses"], path
    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    row = next(line for line in guide.splitlines() if line.startswith("| 405 |"))
    assert "HEAD" in row, row


# ---------------------------------------------------------------- 2. a POS from the guide


def lost_answer(till: Till, path: str, body: dict[str, Any]) -> None:
    """The request goes out whole and the POS never reads its answer (a timeout, a cable
    pulled): the guide says to send the same body again."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", till.http), timeout=TIMEOUT) as sock:
        sock.sendall(head + data)
        sock.shutdown(socket.SHUT_WR)  # then gone, unread
    time.sleep(0.2)  # the agent ran it (or not): the POS cannot know


def shown(answer: dict[str, Any]) -> list[str]:
    """The guide: `display` is fitted to a 2 x 20 pole display, shown as it is."""
    display = answer["display"]
    assert isinstance(display, list) and len(display) <= 2, display
    assert all(isinstance(line, str) and len(line) <= 20 for line in display), display
    return list(display)


def test_a_pos_written_from_the_guide_alone_prices_holds_confirms_cancels_and_refunds(
    till: Till,
) -> None:
    """Issue 11's "done when", over HTTP: the life of a sale as docs/INTEGRATION.md tells
    it (CONTRACT §11, §12), each answer validated against openapi.json, each lost answer
    retried with the same body and answered as the first, nothing charged or earned
    twice."""
    api = OpenApi(call(till, "GET", "/openapi.json").json())

    def post(path: str, body: dict[str, Any]) -> Answer:
        return api.check(call(till, "POST", path, body))

    def ok(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = post(path, body)
        assert answer.status == 200, answer
        return dict(answer.json())

    assert api.check(call(till, "GET", "/healthz")).status == 200  # before the first sale
    card = ok("/v1/identify", {"text": CARD})
    assert card["status"] == "FOUND" and card["firstName"] and "display" not in card
    before = ok("/v1/balance", {"card": CARD})

    # scanning: a quote of the whole basket after each scan; it stores nothing
    sale = receipt("p-000001", lines=[], redeemPoints=0)
    for sku, qty, price in ((MILK, "2", 8990), (BREAD, "1", 5990), (CHEESE, "0.350", 69000)):
        sale["lines"].append({"sku": sku, "qty": qty, "priceMinor": price})
        quote = ok("/v1/quote", sale)
        assert "state" not in quote and "seq" not in quote and shown(quote)
    assert ok("/v1/balance", {"card": CARD}) == before

    # before payment: hold with points; the answer is lost, sent again: the same hold
    sale["redeemPoints"] = -1
    lost_answer(till, "/v1/hold", sale)
    held = ok("/v1/hold", sale)
    assert held["state"] == "HELD" and held["holdExpiresAt"] and held["redeemedPoints"] > 0
    assert ok("/v1/hold", sale) == held  # "its holdExpiresAt unchanged"
    assert held["payableMinor"] == held["totalMinor"] - held["discountMinor"] - sum(
        line["redeemedMinor"] for line in held["lines"]
    )
    # paid, fiscal receipt printed: confirm; its answer lost too
    lost_answer(till, "/v1/confirm", {"receiptId": "p-000001", "fiscalDocument": "FD-1"})
    done = ok("/v1/confirm", {"receiptId": "p-000001", "fiscalDocument": "FD-1"})
    assert done["state"] == "CONFIRMED" and shown(done)
    assert ok("/v1/confirm", {"receiptId": "p-000001", "fiscalDocument": "FD-other"}) == done
    for figure in ("totalMinor", "discountMinor", "payableMinor", "redeemedPoints"):
        assert done[figure] == held[figure], figure  # what the hold said is what is charged
    after = ok("/v1/balance", {"card": CARD})
    assert after["availablePoints"] == done["balance"]["availablePoints"]
    spent = before["availablePoints"] + before["pendingPoints"]
    assert after["availablePoints"] + after["pendingPoints"] == (
        spent - done["redeemedPoints"] + done["earnedPoints"]
    )  # once, for the three holds and the three confirms
    assert ok("/v1/hold", sale)["state"] == "CONFIRMED"  # a resumed POS: do not charge
    assert post("/v1/cancel", {"receiptId": "p-000001"}).status == 412  # use a refund

    # another basket whose payment fails: cancel (lost, then again); the id is spent
    basket = receipt("p-000002")
    ok("/v1/hold", basket)
    lost_answer(till, "/v1/cancel", {"receiptId": "p-000002"})
    cancelled = ok("/v1/cancel", {"receiptId": "p-000002"})
    assert cancelled["state"] == "CANCELLED" and cancelled["display"] == ["Чек отменён", ""]
    assert ok("/v1/hold", basket)["state"] == "CANCELLED"  # sell under a new receiptId
    assert post("/v1/confirm", {"receiptId": "p-000002"}).status == 412
    assert post("/v1/hold", receipt("p-000002", redeemPoints=0)).status == 409
    assert ok("/v1/balance", {"card": CARD}) == after  # nothing happened

    # the basket changed after the hold: cancel it, hold the new one under a new id
    ok("/v1/hold", receipt("p-000003"))
    changed = receipt("p-000003", lines=[*receipt("x")["lines"], {"sku": MILK, "qty": "1"}])
    changed["lines"][-1]["priceMinor"] = 8990
    conflict = post("/v1/hold", changed)
    assert conflict.status == 409 and conflict.json()["error"]["code"] == "ALREADY_EXISTS"
    ok("/v1/cancel", {"receiptId": "p-000003"})
    assert ok("/v1/hold", {**changed, "receiptId": "p-000004"})["state"] == "HELD"
    ok("/v1/cancel", {"receiptId": "p-000004"})

    # checkout (hold and confirm in one call), its answer lost: one sale
    unknown = ok("/v1/identify", {"text": UNKNOWN_CARD})
    assert unknown == {"status": "UNKNOWN"}  # base-tier points, settled by the hub
    one = receipt("p-000005", UNKNOWN_CARD)
    lost_answer(till, "/v1/checkout", one)
    sold = ok("/v1/checkout", one)
    assert sold["state"] == "CONFIRMED" and sold["balance"] is None and sold["earnedPoints"] > 0
    assert ok("/v1/checkout", one) == sold
    # a blocked card: no call for that sale; were it sent, 412 with a reason
    blocked = ok("/v1/identify", {"text": BLOCKED_CARD})
    assert blocked["status"] == "BLOCKED" and blocked["reason"]
    assert post("/v1/checkout", receipt("p-000006", BLOCKED_CARD)).status == 412

    # the next day, one bottle of milk comes back: a refund, its answer lost
    back = refund("p-r-0001", "p-000001")
    lost_answer(till, "/v1/refund", back)
    returned = ok("/v1/refund", back)
    assert ok("/v1/refund", back) == returned
    assert "display" not in returned and returned["negativeBalance"] is False
    now = ok("/v1/balance", {"card": CARD})
    assert returned["balance"]["availablePoints"] == now["availablePoints"]
    assert now["availablePoints"] == (
        after["availablePoints"] + returned["returnedPoints"] - returned["takenBackPoints"]
    )
    assert post("/v1/refund", refund("p-r-0001", "p-000001", "2")).status == 409
    assert post("/v1/refund", refund("p-r-0002", "p-000002")).status == 404  # cancelled
    assert post("/v1/refund", refund("p-r-0003", "p-000001", "9")).status == 412
    assert not api.wrong, "\n".join(api.wrong)


# ---------------------------------------------------------------- 3. gRPC, reflection only


class Reflected:
    """A gRPC client that knows nothing but the server's reflection: no tillpoint_pb2."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = DescriptorPool(self.database)

    def method(self, service: str, name: str) -> Any:
        return self.pool.FindServiceByName(service).methods_by_name[name]

    def raw(self, service: str, name: str, request: bytes) -> Any:
        method = self.method(service, name)
        answer_cls = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=lambda data: data,
            response_deserializer=answer_cls.FromString,
        )
        return call(request, timeout=TIMEOUT)

    def __call__(
        self, name: str, body: dict[str, Any], service: str = "tillpoint.v1.PosAgent"
    ) -> dict[str, Any]:
        method = self.method(service, name)
        request = json_format.Parse(
            json.dumps(body), message_factory.GetMessageClass(method.input_type)()
        )
        answer = self.raw(service, name, request.SerializeToString())
        return dict(json_format.MessageToDict(answer))

    def refused(self, name: str, body: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            self(name, body)
        error: Any = caught.value
        details = str(error.details())
        assert details and "\n" not in details and len(details) <= 1000, details
        return error.code(), details


def test_a_pos_over_grpc_knows_only_reflection(till: Till) -> None:
    """Issue 11's "done when", over gRPC: a client with the server's reflection and no
    `.proto` calls every PosAgent method and the health service; the errors are the
    codes the guide and CONTRACT §11/§12 name (INVALID_ARGUMENT with a readable message,
    ALREADY_EXISTS for a reused id, FAILED_PRECONDITION for what the rules refuse,
    NOT_FOUND for a receipt or card this till does not know)."""
    with grpc.insecure_channel(f"127.0.0.1:{till.grpc}") as channel:
        pos = Reflected(channel)
        services = set(pos.database.get_services())
        assert {"tillpoint.v1.PosAgent", "grpc.health.v1.Health"} <= services
        agent = pos.pool.FindServiceByName("tillpoint.v1.PosAgent")
        called = {m.name for m in agent.methods}
        # every method is called below: one the agent gains is a test to add here
        assert called == {
            "Identify",
            "Quote",
            "Hold",
            "Confirm",
            "Cancel",
            "Checkout",
            "Refund",
            "Balance",
            "Status",
        }
        assert pos("Check", {}, "grpc.health.v1.Health") == {"status": "SERVING"}
        health = {"service": "tillpoint.v1.PosAgent"}
        assert pos("Check", health, "grpc.health.v1.Health") == {"status": "SERVING"}
        watch = pos.method("grpc.health.v1.Health", "Watch")
        watched = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=lambda data: data,
            response_deserializer=message_factory.GetMessageClass(watch.output_type).FromString,
        )(b"", timeout=TIMEOUT)  # client-side health checking's one Watch a channel
        first = json_format.MessageToDict(next(watched))
        watched.cancel()
        assert first == {"status": "SERVING"}
        assert pos("Status", {})["cacheVersion"] == "7"  # proto3 JSON: int64 as a string

        assert pos("Identify", {"text": CARD})["status"] == "FOUND"
        assert pos("Identify", {"text": "SORRY-7K2Q9"})["status"] == "INVALID"
        quote = pos("Quote", receipt("g-000001"))
        assert "state" not in quote and quote["display"]
        held = pos("Hold", receipt("g-000001"))
        assert held["state"] == "HELD" and pos("Hold", receipt("g-000001")) == held
        code, _ = pos.refused("Hold", receipt("g-000001", redeemPoints=0))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        done = pos("Confirm", {"receiptId": "g-000001", "fiscalDocument": "FD-1"})
        assert done["state"] == "CONFIRMED" and pos("Confirm", {"receiptId": "g-000001"}) == done
        assert pos.refused("Cancel", {"receiptId": "g-000001"})[0] == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        assert pos.refused("Confirm", {"receiptId": "g-none"})[0] == grpc.StatusCode.NOT_FOUND
        assert pos.refused("Cancel", {"receiptId": "g-none"})[0] == grpc.StatusCode.NOT_FOUND
        pos("Hold", receipt("g-000002"))
        assert pos("Cancel", {"receiptId": "g-000002"})["state"] == "CANCELLED"
        code, details = pos.refused("Confirm", {"receiptId": "g-000002"})
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "new receiptId" in details
        sold = pos("Checkout", receipt("g-000003"))
        assert sold["state"] == "CONFIRMED" and pos("Checkout", receipt("g-000003")) == sold
        code, details = pos.refused("Checkout", receipt("g-000004", BLOCKED_CARD))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "blocked" in details
        back = pos("Refund", refund("g-r-1", "g-000003"))
        assert back["refundId"] == "g-r-1" and pos("Refund", refund("g-r-1", "g-000003")) == back
        code, _ = pos.refused("Refund", refund("g-r-1", "g-000003", "2"))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert pos.refused("Refund", refund("g-r-2", "g-none"))[0] == grpc.StatusCode.NOT_FOUND
        code, _ = pos.refused("Refund", refund("g-r-3", "g-000003", "9"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert int(pos("Balance", {"card": CARD})["availablePoints"]) > 0
        assert pos.refused("Balance", {"card": UNKNOWN_CARD})[0] == grpc.StatusCode.NOT_FOUND
        code, _ = pos.refused("Balance", {"card": BLOCKED_CARD})
        assert code == grpc.StatusCode.FAILED_PRECONDITION

        # bad input: INVALID_ARGUMENT, one readable line naming what is wrong
        for body, said in (
            (receipt("g-bad", lines=[]), "lines"),
            (receipt("g-bad", lines=[{"sku": MILK, "qty": "0", "priceMinor": 1}]), "qty"),
            (receipt("g-bad", at="yesterday"), "RFC 3339"),
            (receipt("g-bad", redeemPoints=-2), "redeemPoints"),
        ):
            code, details = pos.refused("Quote", body)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and said in details, details
        # a field of a newer contract (number 100): refused, as the guide says
        request = json_format.Parse(
            json.dumps(receipt("g-new")),
            message_factory.GetMessageClass(
                pos.method("tillpoint.v1.PosAgent", "Quote").input_type
            )(),
        ).SerializeToString() + bytes([0xA0, 0x06, 0x01])  # field 100, varint 1
        with pytest.raises(grpc.RpcError) as caught:
            pos.raw("tillpoint.v1.PosAgent", "Quote", request)
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "field number 100 is not a field of Receipt" in error.details()


# ---------------------------------------------------------------- 4. the guide itself

GUIDE = REPO / "docs" / "INTEGRATION.md"


def test_the_guide_names_every_field_a_sale_call_sends_or_answers(till: Till) -> None:
    """A POS written from the guide alone meets every field of the bodies and answers of
    the sale calls (CONTRACT §12); the guide says what each is for or what to do with it.
    It never named `mode` nor `heldOut` (offers this customer was held out of for a
    control group: never to be shown), nor the fields of a balance's `expiring`, and a
    refund's body was only in the examples. `explain`'s trace is CONTRACT §17's."""
    doc = call(till, "GET", "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    text = GUIDE.read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w.]+)`", text)) | set(re.findall(r'"(\w+)":', text))
    named |= {part for name in named for part in name.split(".")}
    missing: list[str] = []
    seen: set[str] = set()

    def walk(schema: Any) -> None:
        for ref in re.findall(r"#/components/schemas/(\w+)", json.dumps(schema)):
            if ref in seen or ref.startswith("Trace") or ref == "Error":
                continue
            seen.add(ref)
            for key, value in schemas[ref].get("properties", {}).items():
                if key not in named:
                    missing.append(f"{ref}.{key}")
                walk(value)

    for path, operations in doc["paths"].items():
        if path.startswith("/v1/") and path != "/v1/status":
            for operation in operations.values():
                walk(operation["responses"]["200"])
                walk(operation.get("requestBody", {}))
    assert {"Receipt", "CheckoutResult", "Refund", "RefundResult", "Balance"} <= seen
    assert not missing, missing
    # a refund's body is given as a receipt's is, before the life of a sale
    assert re.search(r"A refund:\n\n```json\n\{\"refundId\"", text), "no refund body block"


def test_the_paths_the_guide_names_on_a_packaged_till_are_in_the_package() -> None:
    """The guide said the programs' files are in /opt/tillpoint/examples/ on a till with
    the Debian package: it ships the JSON examples there (packaging/build-deb.sh) and the
    guide in /opt/tillpoint/docs, never till.sh, till.py or TillExample.java, which are on
    the page only. Each /opt/tillpoint path the guide names is one the package installs."""
    text = GUIDE.read_text(encoding="utf-8")
    build = (REPO / "packaging" / "build-deb.sh").read_text(encoding="utf-8")
    assert 'install -m 0644 examples/*.json "$STAGE/opt/tillpoint/examples/"' in build
    assert 'install -m 0644 docs/*.md "$STAGE/opt/tillpoint/docs/"' in build
    named = re.findall(r"/opt/tillpoint/(examples|docs)/([\w.-]*)", text)
    assert ("examples", "snapshot.json") in named and ("docs", "INTEGRATION.md") in named
    for folder, name in named:
        assert name, f"the guide points at the folder /opt/tillpoint/{folder}/ for its files"
        suffix = ".json" if folder == "examples" else ".md"
        assert name.endswith(suffix) and (REPO / folder / name).is_file(), (folder, name)


def test_an_answer_stored_by_an_earlier_release_is_why_no_answer_field_is_required(
    tmp_path: Path,
) -> None:
    """A decision (docs/DECISIONS.md, CONTRACT §12's openapi.json): the answers' schemas
    list no `required`. A retry of a receipt the oldest release in tests/fixtures/upgrade
    committed is answered as it was stored, without `coupons` (added since): a schema
    that required every field written today would fail it; the served one holds."""
    import tarfile

    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.service import Agent

    fixture = sorted((REPO / "tests" / "fixtures" / "upgrade").glob("2026-11-30-*.tar.gz"))[0]
    with tarfile.open(fixture) as tar:
        tar.extractall(tmp_path, filter="tar")
    agent = Agent(tmp_path / "till", "till-1")
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        old = Till(server.port, 0)
        api = OpenApi(call(old, "GET", "/openapi.json").json())
        sent = json.loads((tmp_path / "work" / "r1.json").read_text(encoding="utf-8"))
        answer = api.check(call(old, "POST", "/v1/checkout", sent))
        assert answer.status == 200 and answer.json()["state"] == "CONFIRMED"
        assert "coupons" not in answer.json() and not api.wrong, api.wrong
        assert "required" not in api.doc["components"]["schemas"]["CheckoutResult"]
    finally:
        server.stop()
        agent.close()


# ---------------------------------------------------------------- a kiosk's web page


def test_a_refused_preflight_is_the_403_the_guide_promises(tmp_path: Path) -> None:
    """docs/INTEGRATION.md (CONTRACT §12's decision on `Origin`): with `[http]
    allowed_origins` set, a request from another page is 403 PERMISSION_DENIED, as JSON
    like every error. Its browser's preflight (OPTIONS) was answered by Starlette's CORS
    layer as 400 text/plain "Disallowed CORS origin": not the guide's status, code, nor
    even JSON; so was a preflight of the kiosk's own page for a method or header the agent
    does not take. Both are now the JSON 403; the listed page's preflight stays 200."""
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.service import Agent

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(json.loads((REPO / "examples" / "snapshot.json").read_text("utf-8")))
    server = HttpServer(agent, "127.0.0.1:0", allowed_origins=["http://localhost:3000"])
    server.start()
    try:
        kiosk = Till(server.port, 0)
        api = OpenApi(call(kiosk, "GET", "/openapi.json").json())
        error = Draft202012Validator(
            {"$ref": "urn:openapi#/components/schemas/Error"}, registry=api.registry
        )

        def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> Answer:
            asked = {
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            }
            # each answer as /openapi.json declares it (review 32: OPTIONS was no operation)
            return api.check(call(kiosk, "OPTIONS", "/v1/quote", headers=asked))

        listed = preflight("http://localhost:3000")
        assert listed.status == 200
        assert listed.headers["access-control-allow-origin"] == "http://localhost:3000"
        for answer, said in (
            (preflight("http://evil.example"), "allowed_origins"),
            (preflight("http://localhost:3000", "DELETE"), "DELETE"),
            (preflight("http://localhost:3000", headers="x-till"), "x-till"),
        ):
            assert answer.status == 403, (answer.status, answer.body)
            assert answer.headers["content-type"] == "application/json", answer.headers
            body = answer.json()
            error.validate(body)
            assert body["error"]["code"] == "PERMISSION_DENIED" and said in body["error"]["message"]
        page = call(
            kiosk, "POST", "/v1/quote", receipt("k-1"), headers={"Origin": "http://x.example"}
        )
        assert page.status == 403 and api.check(page).json()["error"]["code"] == "PERMISSION_DENIED"
        assert not api.wrong, api.wrong
    finally:
        server.stop()
        agent.close()
