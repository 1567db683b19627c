"""Review 26 (doc26): what a POS integrator and a support engineer read — README.md,
docs/INTEGRATION.md, `GET /openapi.json`, gRPC reflection, the example configuration —
held to what the agent does.

The first part walks openapi.json as a generated client would: for every path and
method it sends requests made from the schema (valid ones, and each kind of value the
schema forbids) to a real HTTP server, and checks every answer against the statuses
and response schemas the document declares (docs/CONTRACT.md §12: "describes every
call")."""

from __future__ import annotations

import copy
import http.client
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import HTTP_STATUS
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

TIMEOUT = 15
INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1


# ---------------------------------------------------------------- a JSON Schema reader

# The keywords openapi.json uses; a new one must be taught to `problems` before it counts.
KEYWORDS = {
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "anyOf",
    "not",
    "enum",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "format",
    "description",
}


def problems(
    schema: dict[str, Any], value: Any, schemas: dict[str, Any], at: str = "$"
) -> list[str]:
    """Where `value` breaks `schema` (JSON Schema 2020-12, the keywords of KEYWORDS; the
    formats int32 and int64 as their ranges), as `at: why` lines; [] when it holds."""
    unknown = set(schema) - KEYWORDS
    assert not unknown, f"{at}: keywords this reader does not know: {unknown}"
    if "$ref" in schema:
        return problems(schemas[schema["$ref"].rsplit("/", 1)[1]], value, schemas, at)
    out: list[str] = []
    if "anyOf" in schema:
        tried = [problems(s, value, schemas, at) for s in schema["anyOf"]]
        if all(tried):
            out.append(f"{at}: matches none of anyOf ({'; '.join(t[0] for t in tried)})")
    if "not" in schema and not problems(schema["not"], value, schemas, at):
        out.append(f"{at}: matches what `not` forbids")
    kinds = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    kind = schema.get("type")
    if kind is not None and not kinds[kind]:
        return [*out, f"{at}: {type(value).__name__} {value!r:.60} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in {schema['enum']}")
    if kinds["integer"]:
        low = schema.get(
            "minimum",
            {"int32": -INT32_MAX - 1, "int64": -INT64_MAX - 1}.get(schema.get("format", ""), value),
        )
        high = schema.get(
            "maximum", {"int32": INT32_MAX, "int64": INT64_MAX}.get(schema.get("format", ""), value)
        )
        if not low <= value <= high:
            out.append(f"{at}: {value} outside [{low}, {high}]")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            out.append(f"{at}: length {len(value)} outside the limits")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            out.append(f"{at}: {value!r:.60} does not match the pattern")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            out.append(f"{at}: {len(value)} items outside the limits")
        for i, item in enumerate(value):
            if "items" in schema:
                out += problems(schema["items"], item, schemas, f"{at}[{i}]")
    if isinstance(value, dict):
        out += [f"{at}: no {key}" for key in schema.get("required", []) if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in schema.get("properties", {}):
                out += problems(schema["properties"][key], item, schemas, f"{at}.{key}")
            elif extra is False:
                out.append(f"{at}: {key} is not a property")
            elif isinstance(extra, dict):
                out += problems(extra, item, schemas, f"{at}.{key}")
    return out


# ---------------------------------------------------------------- values made from a schema


def resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def unwrap(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A field's own schema: `anyOf [X, null]` (a field that may be left out) read as X."""
    schema = resolve(schema, schemas)
    options = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
    if "anyOf" in schema and len(options) == 1 and "type" not in schema:
        return resolve(options[0], schemas)
    return schema


def candidates(schema: dict[str, Any], seed: Any) -> list[Any]:
    """Values to try in a field of `schema` whose example value is `seed`: its bounds and
    one past them, each other JSON type, texts a pattern or a length refuses. Which are
    valid is left to the schema itself (`problems`)."""
    out: list[Any] = [None, True, 1.5, [], {}]
    kind = schema.get("type")
    if kind == "string":
        top = int(schema.get("maxLength", 128))
        low = int(schema.get("minLength", 0))
        out += [
            "",
            " ",
            "a",
            "\x00",
            "a\nb",
            "\u202e",
            "Молоко",
            "a" * top,
            "a" * (top + 1),
            "7" * top,
            "1.2345",
            "0",
            "-1",
            "0.001",
            "1e3",
            "2026-11-23",
            "2026-11-23T10:15:00",
            "2026-11-23T10:15+03:00",
            "2026-11-23t10:15:00z",
            "2026-11-23 10:15:00.123456789+03:00",
            "1899-12-31T23:59:59Z",
            "9001-01-01T00:00:00Z",
            7,
        ]
        if low > 1:
            out.append("a" * (low - 1))
        out += list(schema.get("enum", []))
    elif kind == "integer":
        low = schema.get("minimum", -INT64_MAX - 1)
        high = schema.get("maximum", INT64_MAX)
        out += [low, high, low - 1, high + 1, 0, 1, 8990.0, "x", "1.5"]
    elif kind == "boolean":
        out += [False, "true", 1, 0]
    elif kind == "array":
        out += [[], "x", [None], [7]]
        if isinstance(seed, list) and seed and "maxItems" in schema:
            out.append([seed[0]] * (int(schema["maxItems"]) + 1))
    elif kind == "object":
        out += ["x", 7]
    return out


@dataclass
class Variant:
    where: str  # the field changed, as a path ($.lines[0].qty)
    body: Any
    valid: bool  # what openapi.json says of it


def variants(schema: dict[str, Any], seed: Any, schemas: dict[str, Any]) -> Iterator[Variant]:
    """Bodies made from `seed` by changing one field (or the body) to each candidate, each
    with the schema's verdict; then each required field left out and an unknown one added."""

    def walk(s: dict[str, Any], value: Any, at: str, put: Any) -> Iterator[Variant]:
        own = unwrap(s, schemas)
        for candidate in candidates(own, value):
            body = put(copy.deepcopy(candidate))
            yield Variant(at, body, not problems(schema, body, schemas))
        if own.get("type") == "object" and isinstance(value, dict):
            for key, sub in own.get("properties", {}).items():
                if key in value:

                    def put_key(v: Any, key: str = key) -> Any:
                        return put({**value, key: v})

                    yield from walk(sub, value[key], f"{at}.{key}", put_key)
            for key in [*own.get("required", []), *value]:
                body = put({k: v for k, v in value.items() if k != key})
                yield Variant(f"{at} without {key}", body, not problems(schema, body, schemas))
            body = put({**value, "colour": "red"})
            yield Variant(f"{at}.colour", body, not problems(schema, body, schemas))
        if own.get("type") == "array" and isinstance(value, list) and value:

            def put_first(v: Any) -> Any:
                return put([v, *copy.deepcopy(value[1:])])

            yield from walk(own["items"], value[0], f"{at}[0]", put_first)

    yield Variant("$ as written", copy.deepcopy(seed), not problems(schema, seed, schemas))
    yield from walk(schema, seed, "$", lambda v: v)


# ---------------------------------------------------------------- the served agent


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


NO_BODY: Any = object()  # a call without a body (a JSON null is a body)


class Client:
    """One keep-alive connection, as a POS holds it; a new one after the agent closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = NO_BODY, raw: bytes | None = None) -> Answer:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            self.conn.connect()
            assert self.conn.sock is not None
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = raw if body is NO_BODY else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        answer = Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
        if answer.headers.get("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return answer

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


OFFERS = [
    {
        "id": "o-1",
        "campaignId": "camp-3",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": ["4601234000017"],
        "value": "15",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
        "priority": 10,
        "rank": 1,
        "printable": True,
        "printText": "−15% на молоко",
    }
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Client]:
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(offers=OFFERS))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    client = Client(server.port)
    try:
        yield client
    finally:
        client.close()
        server.stop()
        agent.close()


MILK, BREAD = "4601234000017", "4601234000024"


def seeds() -> dict[str, dict[str, Any]]:
    """A valid body of each request message, as the walkthrough's (explain on: the trace's
    schemas are walked too)."""
    return {
        "IdentifyRequest": {"text": "2770000000017"},
        "Receipt": receipt(
            "seed",
            lines=[
                {"sku": MILK, "qty": "2", "priceMinor": 8990},
                {"sku": BREAD, "qty": "1", "amountMinor": 5990},
            ],
            redeemPoints=-1,
            coupons=["SORRY-1"],
            explain=True,
        ),
        "ConfirmRequest": {"receiptId": "seed", "fiscalDocument": "FD-1"},
        "CancelRequest": {"receiptId": "seed"},
        "Refund": {
            "refundId": "seed",
            "receiptId": "sold-1",
            "at": "2026-11-24T12:00:00+03:00",
            "lines": [{"sku": MILK, "qty": "1"}],
        },
        "BalanceRequest": {"card": "2770000000017", "at": "2026-11-24T12:00:00+03:00"},
    }


def beyond_64_bits(body: Any) -> bool:
    """A receipt whose line amount or total does not fit in 64 bits: the schema cannot say
    so, the agent refuses it (docs/INTEGRATION.md, "what it cannot say")."""
    if not isinstance(body, dict) or not isinstance(body.get("lines"), list):
        return False
    total = 0
    for line in body["lines"]:
        try:
            amount = line.get("amountMinor")
            if amount is None:
                amount = int(line["priceMinor"] * float(line["qty"]) + 1)
            total += amount
        except (AttributeError, KeyError, TypeError, ValueError):
            return False
        if amount > INT64_MAX:
            return True
    return total > INT64_MAX


def blank_id(body: Any) -> bool:
    """An id of blanks: the schema cannot say it, the agent refuses it (the same words)."""
    return isinstance(body, dict) and any(
        isinstance(body.get(key), str) and body[key] and not body[key].strip()
        for key in ("receiptId", "refundId")
    )


class _NoCards:
    """A cache with no card: `identify` decides INVALID before it looks anything up."""

    def card(self, number: str) -> None:
        return None

    def customer(self, customer_id: str) -> None:
        return None

    def customer_by_phone(self, phone: str) -> None:
        return None

    def cards_of(self, customer_id: str) -> list[Any]:
        return []


def invalid_card(body: Any, message: str) -> bool:
    """A receipt's or a balance's card that identify calls INVALID (empty or absent, a
    wrong check digit, letters or signs): the schema's `card` is what was scanned, any
    string, and the agent refuses it as bad input (CONTRACT §4, §12; review 34, inv34:
    it was a 412 until then; docs/INTEGRATION.md, "what it cannot say")."""
    from tillpoint.agent.identify import identify

    if message not in ("Receipt", "BalanceRequest") or not isinstance(body, dict):
        return False
    card = body.get("card")
    if card is None:  # absent or null: proto3's empty card
        card = ""
    return isinstance(card, str) and identify(card, _NoCards()).status == "INVALID"


def documented_400(body: Any, message: str = "") -> bool:
    return beyond_64_bits(body) or blank_id(body) or invalid_card(body, message)


PATHS = [
    "/v1/identify",
    "/v1/quote",
    "/v1/hold",
    "/v1/confirm",
    "/v1/cancel",
    "/v1/checkout",
    "/v1/refund",
    "/v1/balance",
    "/v1/status",
    "/healthz",
    "/openapi.json",
]
# The walks that price a receipt of 10,001 lines among their bodies: 2-10 s each.
SLOW_PATHS = {"/v1/quote", "/v1/hold", "/v1/checkout"}


def test_the_walk_covers_every_path_openapi_describes() -> None:
    from tillpoint.agent.http_api import openapi

    assert sorted(openapi()["paths"]) == sorted(PATHS)


def undocumented(
    schema: dict[str, Any], value: Any, schemas: dict[str, Any], at: str = "$"
) -> list[str]:
    """The keys of an answer its schema does not name (a field a generated client drops)."""
    schema = unwrap(schema, schemas)
    out: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                out.append(f"{at}.{key}")
            else:
                out += undocumented(schema["properties"][key], item, schemas, f"{at}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += undocumented(schema["items"], item, schemas, f"{at}[{i}]")
    return out


@pytest.mark.parametrize(
    "only", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PATHS else p for p in PATHS]
)
def test_every_call_answers_what_openapi_declares_for_what_its_schema_allows_and_forbids(
    served: Client, only: str
) -> None:
    """docs/CONTRACT.md §12: openapi.json "describes every call". For every path and
    method: a body its schema accepts is not refused as bad input (400) but for what
    docs/INTEGRATION.md lists it cannot say; a body it forbids is a 400 INVALID_ARGUMENT
    with a one-line message; every answer's status is one the operation declares, a 200's
    body holds to the declared schema and an error's to `Error`, with the code of its
    status; every answer is JSON."""
    doc = served.call("GET", "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    wrong: list[str] = []
    assert (
        served.call(
            "POST",
            "/v1/checkout",
            receipt("sold-1", lines=[{"sku": MILK, "qty": "1000", "priceMinor": 8990}]),
        ).status
        == 200
    )
    counter = iter(range(10**6))
    seen: set[tuple[bool, int]] = set()  # (valid, status): the walk met both kinds

    def check(
        method: str, path: str, operation: dict[str, Any], answer: Answer, what: str, body: Any
    ) -> None:
        said = f"{method.upper()} {path} {what}: {answer.status} {answer.body[:300]!r}"
        if method == "head":  # GET's answer without its body (review 31)
            declared = operation["responses"].get(str(answer.status))
            if declared is None or "content" in declared or answer.body:
                wrong.append(f"{said}: not GET's answer without a body, as declared")
            return
        if not answer.headers.get("content-type", "").startswith("application/json"):
            wrong.append(f"{said}: not JSON ({answer.headers.get('content-type')})")
            return
        declared = operation["responses"].get(str(answer.status))
        if declared is None:
            wrong.append(f"{said}: status not declared")
            return
        schema = declared["content"]["application/json"]["schema"]
        found = problems(schema, answer.json(), schemas)
        if found:
            wrong.append(f"{said}: {found[:3]}")
        extra = undocumented(schema, answer.json(), schemas)
        if extra:
            wrong.append(f"{said}: fields openapi.json does not describe: {extra}")
        if answer.status != 200:
            error = answer.json().get("error", {})
            code = error.get("code")
            # 421 (another agent's X-Tillpoint-Instance) is FAILED_PRECONDITION's second status
            if HTTP_STATUS.get(code) != answer.status and (answer.status, code) != (
                421,
                "FAILED_PRECONDITION",
            ):
                wrong.append(f"{said}: code {code} is not that of {answer.status}")
            if "\n" in error.get("message", "\n"):
                wrong.append(f"{said}: the message is not one line")

    for path, operations in doc["paths"].items():
        if path != only:
            continue
        for method, operation in operations.items():
            if "requestBody" not in operation:
                check(method, path, operation, served.call(method.upper(), path), "", None)
                continue
            ref = operation["requestBody"]["content"]["application/json"]["schema"]
            name = ref["$ref"].rsplit("/", 1)[1]
            for variant in variants(ref, seeds()[name], schemas):
                body = variant.body
                n = next(counter)
                if isinstance(body, dict):  # each variant its own sale
                    own = "receiptId" in body and "receiptId" not in variant.where
                    if name == "Receipt" and own:
                        body["receiptId"] = f"w{n}"
                    if name in ("ConfirmRequest", "CancelRequest") and own:
                        held = served.call("POST", "/v1/hold", receipt(f"h{n}"))
                        assert held.status == 200, held.body
                        body["receiptId"] = f"h{n}"
                    if name == "Refund" and "refundId" in body and "refundId" not in variant.where:
                        body["refundId"] = f"f{n}"
                answer = served.call(method.upper(), path, body)
                seen.add((variant.valid, answer.status))
                what = f"{variant.where} = {json.dumps(body, ensure_ascii=False)[:200]}"
                check(method, path, operation, answer, what, body)
                if variant.valid and answer.status == 400 and not documented_400(body, name):
                    wrong.append(f"{path} {what}: valid by openapi.json, refused: {answer.body!r}")
                if not variant.valid and answer.status != 400:
                    wrong.append(
                        f"{path} {what}: invalid by openapi.json, answered"
                        f" {answer.status}: {answer.body[:200]!r}"
                    )
    assert not wrong, "\n".join(wrong)
    if "requestBody" in next(iter(doc["paths"][only].values())):
        assert (True, 200) in seen and (False, 400) in seen, seen


# ---------------------------------------------------------------- gRPC through reflection


def _same(http: Any, grpc_: Any, at: str, out: list[str]) -> None:
    """`http` (the HTTP answer) and `grpc_` (the gRPC answer as proto3 JSON with its
    defaults printed) say the same: each HTTP field is a field of the message with the
    same value (an int64 is a string in proto3 JSON), and a field HTTP leaves out or
    writes as null holds its default over gRPC."""
    if isinstance(http, dict) and isinstance(grpc_, dict):
        for key, value in http.items():
            if key not in grpc_:
                if value is not None:
                    out.append(f"{at}.{key}: in the HTTP answer, not a field of the gRPC one")
                continue
            _same(value, grpc_[key], f"{at}.{key}", out)
        for key, value in grpc_.items():
            if (
                http.get(key) is None
                and value not in (0, "0", "", [], {}, False, None)
                and not (isinstance(value, str) and value.endswith("_UNSPECIFIED"))
            ):
                out.append(f"{at}.{key}: {value!r} over gRPC, left out over HTTP")
    elif isinstance(http, list) and isinstance(grpc_, list) and len(http) == len(grpc_):
        for i, (a, b) in enumerate(zip(http, grpc_, strict=True)):
            _same(a, b, f"{at}[{i}]", out)
    elif isinstance(http, int) and not isinstance(http, bool) and isinstance(grpc_, str):
        if str(http) != grpc_:
            out.append(f"{at}: {http} over HTTP, {grpc_!r} over gRPC")
    elif http != grpc_:
        out.append(f"{at}: {http!r:.80} over HTTP, {grpc_!r:.80} over gRPC")


def test_grpc_reflection_names_the_calls_and_fields_of_the_http_interface(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §12: HTTP serves "the same PosAgent calls" and gRPC reflection
    describes them. With nothing but reflection (no .proto, no generated code), every
    PosAgent method is an HTTP call of openapi.json (its operationId), its request and
    answer messages have the fields of the HTTP schemas under the same JSON names, and
    the same request over gRPC and HTTP, on one agent, answers the same document."""
    import grpc
    from google.protobuf import json_format, message_factory
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from .conftest import grpc_served

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(offers=OFFERS))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    http = Client(server.port)
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            service = pool.FindServiceByName("tillpoint.v1.PosAgent")
            doc = http.call("GET", "/openapi.json").json()
            schemas = doc["components"]["schemas"]
            operations = {
                op["operationId"]: (path, method, op)
                for path, ops in doc["paths"].items()
                for method, op in ops.items()
            }
            wrong: list[str] = []

            def fields(descriptor: Any) -> set[str]:
                return {f.json_name for f in descriptor.fields}

            for method in service.methods:
                operation_id = method.name[0].lower() + method.name[1:]
                if operation_id not in operations:
                    wrong.append(f"PosAgent.{method.name} has no HTTP call in openapi.json")
                    continue
                path, verb, op = operations[operation_id]
                if path != f"/v1/{method.name.lower()}":  # the paths §12 lists
                    wrong.append(f"PosAgent.{method.name} is served at {path}")
                if verb != ("get" if method.name == "Status" else "post"):
                    wrong.append(f"PosAgent.{method.name} is a {verb.upper()}")
                answer = op["responses"]["200"]["content"]["application/json"]["schema"]
                answered = resolve(answer, schemas)
                if fields(method.output_type) != set(answered["properties"]):
                    wrong.append(
                        f"{method.name}: answer fields {sorted(fields(method.output_type))}"
                        f" over gRPC, {sorted(answered['properties'])} over HTTP"
                    )
                if "requestBody" in op:
                    request = op["requestBody"]["content"]["application/json"]["schema"]
                    asked = resolve(request, schemas)
                    if fields(method.input_type) != set(asked["properties"]):
                        wrong.append(
                            f"{method.name}: request fields {sorted(fields(method.input_type))}"
                            f" over gRPC, {sorted(asked['properties'])} over HTTP"
                        )
                elif fields(method.input_type):
                    wrong.append(f"{method.name}: a GET over HTTP, fields over gRPC")

            def both(name: str, body: dict[str, Any]) -> None:
                method = service.methods_by_name[name]
                path, verb, _ = operations[name[0].lower() + name[1:]]
                request_cls = message_factory.GetMessageClass(method.input_type)
                answer_cls = message_factory.GetMessageClass(method.output_type)
                stub = channel.unary_unary(
                    f"/tillpoint.v1.PosAgent/{name}",
                    request_serializer=request_cls.SerializeToString,
                    response_deserializer=answer_cls.FromString,
                )
                over_http = http.call(verb.upper(), path, body if verb == "post" else NO_BODY)
                assert over_http.status == 200, (name, over_http.body)
                request = json_format.Parse(json.dumps(body), request_cls())
                over_grpc = json_format.MessageToDict(
                    stub(request, timeout=TIMEOUT), always_print_fields_with_no_presence=True
                )
                _same(over_http.json(), over_grpc, name, wrong)

            sale = receipt("g-1", redeemPoints=-1, coupons=["SORRY-1"], explain=True)
            both("Identify", {"text": "2770000000017"})
            both("Identify", {"text": "2770000000093"})  # UNKNOWN: status alone
            both("Identify", {"text": "2770000000031"})  # BLOCKED, with its reason
            both("Quote", sale)
            both("Checkout", sale)  # committed over HTTP, answered again over gRPC
            both("Hold", receipt("g-2", card="2770000000093"))  # UNKNOWN: balance null
            both("Confirm", {"receiptId": "g-2", "fiscalDocument": "FD-2"})
            both("Hold", receipt("g-3"))
            both("Cancel", {"receiptId": "g-3"})
            refund = {
                "refundId": "g-r",
                "receiptId": "g-1",
                "at": "2026-11-24T12:00:00+03:00",
                "lines": [{"sku": MILK, "qty": "1"}],
            }
            both("Refund", refund)
            both("Balance", {"card": "2770000000017", "at": "2026-11-24T12:00:00+03:00"})
            both("Status", {})
            assert not wrong, "\n".join(wrong)
    finally:
        http.close()
        server.stop()
        agent.close()


# ---------------------------------------------------------------- /healthz


REPO = Path(__file__).resolve().parents[1]


def test_openapi_describes_every_field_integration_says_healthz_adds() -> None:
    """docs/INTEGRATION.md: "the 200's body may add `storageError` and, from 30 days
    before the till's certificate ends, `certificateExpiresAt`"; openapi.json (docs/
    CONTRACT.md §12: "describes every call") described `storageError` only, so a client
    generated from it dropped the one field a monitor reads to renew a till in time."""
    from tillpoint.agent.http_api import openapi

    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    row = next(line for line in guide.splitlines() if line.startswith("| `GET /healthz`"))
    named = set(re.findall(r"`([a-z][A-Za-z]+)`", row))
    assert named == {"storageError", "certificateExpiresAt"}, row
    answer = openapi()["paths"]["/healthz"]["get"]["responses"]["200"]
    properties = answer["content"]["application/json"]["schema"]["properties"]
    assert named <= set(properties), sorted(properties)
    assert properties["certificateExpiresAt"]["type"] == "string"


@pytest.mark.slow  # a hub, `tillpoint run` and its first pull: 3-6 s
def test_healthz_of_a_till_whose_certificate_ends_soon_holds_to_openapi(tmp_path: Path) -> None:
    """The answer itself: every field of a real `tillpoint run`'s /healthz is one its
    openapi.json describes, with the type it says."""
    import urllib.request

    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    from .test_review22_left22 import enrol_ending, serving_till

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till"
    data.mkdir()
    try:
        enrol_ending(hub, "till-h", data, days=7)
        with serving_till(data, "till-h") as (port, body, _):
            url = f"http://127.0.0.1:{port}/openapi.json"
            with urllib.request.urlopen(url, timeout=5) as r:
                doc = json.loads(r.read())
    finally:
        hub.stop()
    assert "certificateExpiresAt" in body, body
    ok = doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
    assert set(body) <= set(ok["schema"]["properties"]), body
    assert not problems(ok["schema"], body, doc["components"]["schemas"])


# ---------------------------------------------------------------- the example configuration

EXAMPLE = REPO / "packaging" / "tillpoint.example.toml"


def _config_tables() -> dict[str, Any]:
    from tillpoint.agent.config import Settings
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig

    tables: dict[str, Any] = {
        "": Settings,
        "printer": PrinterConfig,
        "display": DisplayConfig,
        "scanner": ScannerConfig,
    }
    for name in ("hub", "server", "http", "log", "metrics"):
        tables[name] = Settings.model_fields[name].annotation
    return tables


def _example_blocks() -> Iterator[tuple[str, str, bool, str, str]]:
    """(table, key, set (not commented out), value as written, the block's text) of each
    key line of the example: a block is the lines since the last blank line or table."""
    table, block = "", []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            table, block = m.group(1), []
            continue
        if not line.strip():
            block = []
            continue
        block.append(line)
        if m := re.match(r"^(#\s?)?(\w+)\s*=\s*(.*?)(\s+#.*)?$", line):
            yield table, m.group(2), m.group(1) is None, m.group(3), " ".join(block)


def _choices(annotation: Any) -> list[Any]:
    import typing

    found: list[Any] = []
    for part in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(part) is typing.Literal:
            found += typing.get_args(part)
        elif typing.get_origin(part) is typing.Annotated:
            found += _choices(typing.get_args(part)[0])
    return found


def test_the_example_config_says_each_default_and_each_choice() -> None:
    """packaging/tillpoint.example.toml: "Every key is shown with its default". A key
    set in it holds the agent's real default (a till installed from the package behaves
    as one with no file), and a key with a closed set of values lists them beside it:
    `cut` showed "partial" alone, and an installer learnt `full` and `none` from a
    refusal of `config check`."""
    import tomllib

    tables = _config_tables()
    for table, key, is_set, written, block in _example_blocks():
        field = tables[table].model_fields[key]
        default = field.get_default(call_default_factory=True)
        value = tomllib.loads(f"x = {written}")["x"]
        if is_set:
            assert value == (list(default) if isinstance(default, tuple) else default), (
                f"[{table}] {key} = {written}: the default is {default!r}"
            )
        missing = [c for c in _choices(field.annotation) if str(c) not in block]
        assert not missing, f"[{table}] {key}: the example does not name {missing}"


# ---------------------------------------------------------------- what HTTP answers leave out


def test_http_answers_leave_out_what_integration_says_and_nothing_else(served: Client) -> None:
    """docs/INTEGRATION.md, "gRPC and JSON": HTTP answers write every field that has a
    value and leave out only the fields a call does not fill: `deviceId` and `seq` before
    a receipt is committed, `holdExpiresAt` outside a hold, `state` of a quote, `trace`
    unless the receipt asks to explain (it was missing from the list), all but `status`
    of an UNKNOWN card; null only for a line's `offerId` without an offer and an UNKNOWN
    card's `balance`."""
    from tillpoint.v1 import tillpoint_pb2 as pb

    result = {f.json_name for f in pb.CheckoutResult.DESCRIPTOR.fields}
    refund = {
        "refundId": "lo-f",
        "receiptId": "lo-c",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": MILK, "qty": "1"}],
    }
    calls: list[tuple[str, dict[str, Any], set[str]]] = [
        ("/v1/quote", receipt("lo-q"), {"deviceId", "seq", "holdExpiresAt", "state", "trace"}),
        ("/v1/hold", receipt("lo-h"), {"deviceId", "seq", "trace"}),
        ("/v1/confirm", {"receiptId": "lo-h"}, {"holdExpiresAt", "trace"}),
        ("/v1/checkout", receipt("lo-c"), {"holdExpiresAt", "trace"}),
        ("/v1/hold", receipt("lo-x"), {"deviceId", "seq", "trace"}),
        ("/v1/cancel", {"receiptId": "lo-x"}, {"deviceId", "seq", "holdExpiresAt", "trace"}),
        ("/v1/quote", receipt("lo-e", explain=True), {"deviceId", "seq", "holdExpiresAt", "state"}),
    ]
    for path, body, left_out in calls:
        answer = served.call("POST", path, body)
        assert answer.status == 200, (path, answer.body)
        doc = answer.json()
        assert result - set(doc) == left_out, (path, sorted(result - set(doc)))
        assert [k for k, v in doc.items() if v is None] == [], path
        assert set(doc["card"]) == {"status", "customerId", "tier", "firstName"}
        offers = [line["offerId"] for line in doc["lines"]]
        assert offers == ["o-1"], (path, offers)  # milk's 15 %, by name (null without one)
    bread = [{"sku": BREAD, "qty": "1", "priceMinor": 5990}]
    unknown = served.call(
        "POST", "/v1/checkout", receipt("lo-u", card="2770000000093", lines=bread)
    ).json()
    assert unknown["card"] == {"status": "UNKNOWN"} and unknown["balance"] is None
    assert unknown["lines"][0]["offerId"] is None
    answer = served.call("POST", "/v1/refund", refund).json()
    assert set(answer) == {f.json_name for f in pb.RefundResult.DESCRIPTOR.fields}
    balance = served.call("POST", "/v1/balance", {"card": "2770000000017"}).json()
    assert set(balance) == {"availablePoints", "pendingPoints"}  # nothing expires here


def _plain(value: Any) -> bool:
    """A JSON value protobuf's JSON reader reads as the agent does: objects where messages
    are, no fraction (json_format takes 8990.0 for an int64 the agent refuses)."""
    if isinstance(value, float):
        return False
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return True


@pytest.mark.slow  # about 500 calls over each door: 5-10 s
def test_grpc_answers_each_schema_variant_with_the_code_http_answers(tmp_path: Path) -> None:
    """docs/CONTRACT.md §10 and §12: one error, one code, whichever door. Each body of the
    openapi walk that protobuf can carry, sent over HTTP and (as the message reflection
    describes) over gRPC to the same agent, gets the same outcome: 200 and OK, 400 and
    INVALID_ARGUMENT, 404 and NOT_FOUND, 412 and FAILED_PRECONDITION."""
    import grpc
    from google.protobuf import json_format, message_factory
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from .conftest import grpc_served

    codes = {
        200: "OK",
        400: "INVALID_ARGUMENT",
        404: "NOT_FOUND",
        409: "ALREADY_EXISTS",
        412: "FAILED_PRECONDITION",
    }
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(offers=OFFERS))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    http = Client(server.port)
    wrong: list[str] = []
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            service = pool.FindServiceByName("tillpoint.v1.PosAgent")
            doc = http.call("GET", "/openapi.json").json()
            schemas = doc["components"]["schemas"]
            sold = receipt("sold-1", lines=[{"sku": MILK, "qty": "1000", "priceMinor": 8990}])
            assert http.call("POST", "/v1/checkout", sold).status == 200
            # the reads and the calls that answer the same however often they are sent
            for name in ("Identify", "Quote", "Balance", "Refund", "Confirm", "Cancel"):
                method = service.methods_by_name[name]
                request_cls = message_factory.GetMessageClass(method.input_type)
                answer_cls = message_factory.GetMessageClass(method.output_type)
                stub = channel.unary_unary(
                    f"/tillpoint.v1.PosAgent/{name}",
                    request_serializer=request_cls.SerializeToString,
                    response_deserializer=answer_cls.FromString,
                )
                ref = {"$ref": f"#/components/schemas/{method.input_type.name}"}
                for variant in variants(ref, seeds()[method.input_type.name], schemas):
                    if not isinstance(variant.body, dict) or not _plain(variant.body):
                        continue
                    try:
                        request = json_format.Parse(json.dumps(variant.body), request_cls())
                    except json_format.ParseError:
                        continue  # not a message protobuf can carry
                    over_http = http.call("POST", f"/v1/{name.lower()}", variant.body)
                    try:
                        stub(request, timeout=TIMEOUT)
                        over_grpc = "OK"
                    except grpc.RpcError as exc:
                        over_grpc = exc.code().name
                    if codes.get(over_http.status) != over_grpc:
                        wrong.append(
                            f"{name} {variant.where} {json.dumps(variant.body)[:160]}:"
                            f" HTTP {over_http.status}, gRPC {over_grpc}"
                        )
    finally:
        http.close()
        server.stop()
        agent.close()
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow  # about 650 CLI runs beside as many HTTP calls: 15-25 s
def test_the_cli_answers_each_receipt_and_refund_of_the_walk_as_http_does(
    served: Client, cli: Any, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §12: "the receipt calls over HTTP accept and refuse exactly what
    the CLI's input parsing does, with the same messages", and the answers are "byte-for-
    byte the same document the CLI prints with --json". Each receipt of the openapi walk
    as `quote FILE --json` and each refund as `refund FILE --json` (on a till of its own
    with the same snapshot and sale): exit 0 and the same document for a 200, exit 2 and
    the same words for a refusal."""
    doc = served.call("GET", "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    sold = receipt("sold-1", lines=[{"sku": MILK, "qty": "1000", "priceMinor": 8990}])
    assert cli("snapshot", "load", snapshot(offers=OFFERS)).code == 0
    assert cli("checkout", sold, "--json").code == 0
    assert served.call("POST", "/v1/checkout", sold).status == 200
    wrong: list[str] = []
    counter = iter(range(10**6))
    for command, name in (("quote", "Receipt"), ("refund", "Refund")):
        ref = {"$ref": f"#/components/schemas/{name}"}
        for variant in variants(ref, seeds()[name], schemas):
            body = variant.body
            refund = command == "refund" and isinstance(body, dict) and "refundId" in body
            if refund and "refundId" not in variant.where:  # each its own, at both tills
                body["refundId"] = f"c{next(counter)}"
            path = tmp_path / f"walk-{next(counter)}.json"
            path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
            ran = cli(command, path, "--json")
            answer = served.call("POST", f"/v1/{command}", body)
            said = f"{command} {variant.where} {json.dumps(body, ensure_ascii=False)[:120]}"
            if answer.status == 200:
                if ran.code != 0 or ran.out != answer.body.decode():
                    wrong.append(f"{said}: HTTP 200, CLI exit {ran.code} {ran.err.strip()}")
                continue
            message = answer.json()["error"]["message"]
            if ran.code != 2 or ran.err != f"tillpoint: {message}\n":
                wrong.append(
                    f"{said}: HTTP {answer.status} {message!r}, CLI exit {ran.code}"
                    f" {ran.err.strip()!r}"
                )
    assert not wrong, "\n".join(wrong)


def test_each_path_answers_another_method_with_the_405_integration_describes(
    served: Client,
) -> None:
    """docs/INTEGRATION.md's 405 row said every call is a POST but `/healthz` and
    `/openapi.json`, and told a POS to "send a POST": `/v1/status` is a GET too, and a
    POST of it is the 405. Each path of openapi.json answers each other method with 405
    METHOD_NOT_ALLOWED, declared, and `Allow` naming its own method; the guide's row
    names every GET path."""
    doc = served.call("GET", "/openapi.json").json()
    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    row = next(line for line in guide.splitlines() if line.startswith("| 405 |"))
    gets = {"/openapi.json"}
    for path, operations in doc["paths"].items():
        own = next(iter(operations))  # a GET path's HEAD is its GET (review 31)
        assert set(operations) == ({"get", "head"} if own == "get" else {own}), path
        if own == "get":
            gets.add(path)
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if method.lower() in operations:
                continue
            answer = served.call(method, path, {} if method != "GET" else NO_BODY)
            assert answer.status == 405, (method, path, answer.body)
            assert answer.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
            allowed = ", ".join(sorted(m.upper() for m in operations))
            assert answer.headers["allow"] == allowed, (method, path)
            assert "405" in operations[own]["responses"], path
    assert {f"`{path}`" for path in gets} <= set(re.findall(r"`/[\w./]+`", row)), row


def test_build_workers_0_from_the_environment_is_auto_as_in_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """packaging/tillpoint.example.toml: `build_workers = 0` is "one per CPU, at most 4",
    and TILLPOINT_BUILD_WORKERS is the same key from the environment. Set there, 0 gave
    one worker (the builder read the variable itself as a count, at least 1): a chain's
    snapshot built in ~80 s on a 2-core till instead of ~52 s."""
    import os

    from tillpoint.agent import cache_build
    from tillpoint.agent.config import load

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    monkeypatch.delenv("TILLPOINT_BUILD_WORKERS", raising=False)
    auto = cache_build.default_workers()
    assert auto == 3
    monkeypatch.setenv("TILLPOINT_BUILD_WORKERS", "0")
    monkeypatch.setenv("TILLPOINT_DATA_DIR", str(tmp_path))
    assert load().build_workers == 0  # the key: auto
    assert cache_build.default_workers() == auto  # and the builder agrees
    monkeypatch.setenv("TILLPOINT_BUILD_WORKERS", "2")
    assert load().build_workers == 2 and cache_build.default_workers() == 2
