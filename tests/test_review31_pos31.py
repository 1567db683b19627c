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
    assert post("/v1/checkout", receipt("v-c4", ""), "no card").status == 412
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
    assert post("/v1/balance", {"card": "2770000000018"}, "invalid").status == 412
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
