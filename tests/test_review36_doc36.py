"""Review 36, doc36: `GET /openapi.json` read as a new POS integrator reads it (CONTRACT
§12: "describes every call, generated from the same models, never hand-written").

1. Each call's refusals the contract gives it (400, 404, 409, 412, 503 as §12 maps the
   codes) have examples in the document, generated as its other examples are (`make
   openapi-examples`: a real agent's answers to requests made from examples/), each the
   body a real HTTP interface answers with that status. Until now the document gave the
   answers' schemas only: an integrator saw no refusal before meeting one at a till.
2. A request's int64 (`priceMinor`, `amountMinor`, `redeemPoints`) may be a string of
   digits (proto3 JSON), which the agent reads as the number: the document said only
   "integer", so a validator built from it refused what the agent takes, and a generated
   client could not send it. An answer's int64 is always a JSON integer, and the document
   says so (its examples, the real answers, are checked against it).

Real parts: an `Agent` on a temporary data directory, the HTTP interface on a free
loopback port, real sockets; the validator as PyPI ships it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from tillpoint.agent.errors import HTTP_STATUS
from tillpoint.agent.http_api import CALLS, HttpServer, openapi
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import ManualClock, receipt
from .test_review31_pos31 import OpenApi, Till, call

# The refusals CONTRACT §12 gives each call, by HTTP status, each with an example: a bad
# input (400), what is not held or sold here (404), an id reused with another body (409),
# a refused card or a receipt in the wrong state (412), a ledger that cannot be written
# (503, for the calls that write a sale or a return).
REFUSALS = {
    "/v1/identify": {"400"},
    "/v1/quote": {"400", "412"},
    "/v1/hold": {"400", "409", "412", "503"},
    "/v1/confirm": {"400", "404", "412"},
    "/v1/cancel": {"400", "404", "412"},
    "/v1/checkout": {"400", "409", "412", "503"},
    "/v1/refund": {"400", "404", "409", "412", "503"},
    "/v1/balance": {"400", "404", "412"},
    "/v1/status": set(),
}


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(openapi()))
    return doc


def _validator(doc: dict[str, Any], pointer: str) -> Draft202012Validator:
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator({"$ref": f"urn:openapi#/{pointer}"}, registry=registry)


# ---------------------------------------------------------------- 1. refusals' examples


def test_each_call_has_an_example_of_each_refusal_the_contract_gives_it() -> None:
    """CONTRACT §12: every call's own refusals have an example answer in the document,
    under the status that answers it, its `code` the one §12 maps to that status, valid
    by the `Error` schema, and described by the request that met it. The answers every
    call shares (401, 405, 421...) carry none, and no other path's do (an example added
    to one call's answer must not show under another's)."""
    assert set(REFUSALS) == {c.path for c in CALLS}
    doc = _document()
    wrong: list[str] = []
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            shown: set[str] = set()
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json", {})
                examples = content.get("examples", {})
                if status == "200" or not examples:
                    continue
                shown.add(status)
                pointer = "/".join(
                    p.replace("~", "~0").replace("/", "~1")
                    for p in ("paths", path, method, "responses", status)
                )
                validator = _validator(doc, f"{pointer}/content/application~1json/schema")
                for name, example in examples.items():
                    value = example["value"]
                    code = value["error"]["code"]
                    if str(HTTP_STATUS[code]) != status:
                        wrong.append(f"{path} {status} {name}: code {code}")
                    wrong += [
                        f"{path} {status} {name}: {e.message}" for e in validator.iter_errors(value)
                    ]
                    if not example["description"].startswith("The answer to {"):
                        wrong.append(f"{path} {status} {name}: no request in its description")
                    if not example["summary"].startswith(f"{status}: "):
                        wrong.append(f"{path} {status} {name}: summary {example['summary']!r}")
            expected = REFUSALS.get(path, set()) if method in ("get", "post") else set()
            if shown != expected:
                wrong.append(f"{method.upper()} {path}: refusals shown {sorted(shown)}")
    assert not wrong, "\n".join(wrong)


def test_every_refusal_example_is_what_a_real_http_interface_answers(tmp_path: Path) -> None:
    """The generated file's steps, sent in their order over HTTP to a real interface on a
    till that loaded examples/snapshot.json (its clock at each request's `at`, as the
    generator's), are answered with each step's status, and each refusal with its body
    as it is; then the ledger is made unable to grow (`openapi_examples.fill_ledger`, its
    fillers sent over HTTP too), and the 503 examples are what a full ledger answers:
    "retry the same request" (CONTRACT §12, §10)."""
    from tillpoint.agent.openapi_examples import EXAMPLES_DIR, fill_ledger, load

    clock = ManualClock(datetime.fromisoformat("2000-01-01T00:00:00+00:00"))
    agent = Agent(tmp_path / "data", "till-1", clock=clock)
    agent.load_snapshot(json.loads((EXAMPLES_DIR / "snapshot.json").read_text("utf-8")))
    http = HttpServer(agent, "127.0.0.1:0")
    http.start()
    try:
        till = Till(http.port, 0)
        api = OpenApi(json.loads(json.dumps(openapi())))

        def send(path: str, body: dict[str, Any] | None) -> Any:
            if body is not None and isinstance(body.get("at"), str):
                clock.now = datetime.fromisoformat(body["at"])
            return api.check(call(till, "GET" if body is None else "POST", path, body))

        steps = load()
        full = [s for s in steps if s.get("status") == 503]
        assert {s["path"] for s in full} == {p for p, s in REFUSALS.items() if "503" in s}
        wrong: list[str] = []
        for step in steps:
            if step in full:
                continue
            answer = send(step["path"], step.get("request"))
            if answer.status != step.get("status", 200):
                wrong.append(f"{step['path']} {step['name']}: {answer.status} {answer.body!r}")
            elif answer.status != 200 and answer.json() != step["answer"]:
                wrong.append(f"{step['path']} {step['name']}: {answer.body!r}")
        fill_ledger(agent, lambda path, body: send(path, body).status)
        for step in full:
            answer = send(step["path"], step["request"])
            if (answer.status, answer.json()) != (503, step["answer"]):
                wrong.append(f"{step['path']} {step['name']}: {answer.status} {answer.body!r}")
        assert not wrong + api.wrong, "\n".join(wrong + api.wrong)
    finally:
        http.stop()
        agent.close()


# ---------------------------------------------------------------- 2. int64 as a string


def _int64_fields(desc: Descriptor, seen: set[str]) -> Iterator[tuple[str, FieldDescriptor]]:
    """(message, field) of every singular int64 field a message and those it holds have."""
    if desc.name in seen:
        return
    seen.add(desc.name)
    for field in desc.fields:
        if field.message_type is not None:
            if not field.message_type.GetOptions().map_entry:
                yield from _int64_fields(field.message_type, seen)
        elif field.type == FieldDescriptor.TYPE_INT64 and not field.is_repeated:
            yield desc.name, field


def _forms(schema: dict[str, Any]) -> list[dict[str, Any]]:
    forms: list[dict[str, Any]] = schema.get("anyOf", [schema])
    return [f for f in forms if f.get("type") != "null"]


def test_a_requests_int64_is_an_integer_or_its_digit_string_an_answers_an_integer() -> None:
    """proto3 JSON lets an int64 be a number or a string of digits; the agent reads both in
    a request and writes a number in every answer (agent/wire.py). The document now says
    both of a request's int64 fields (their string form with the same floor: `priceMinor`
    and `amountMinor` no minus, `redeemPoints` "-1" the one negative) and only the integer
    of an answer's, so a client generated from it may send either and reads an int."""
    doc = _document()
    schemas = doc["components"]["schemas"]
    service = pb.DESCRIPTOR.services_by_name["PosAgent"]
    requests: list[str] = []
    for method in service.methods:
        for message, field in _int64_fields(method.input_type, set()):
            forms = _forms(schemas[message]["properties"][field.json_name])
            assert [f["type"] for f in forms] == ["integer", "string"], (message, forms)
            requests.append(f"{message}.{field.json_name}")
        seen = {m.input_type.name for m in service.methods}
        for message, field in _int64_fields(method.output_type, set()):
            if message in seen:
                continue
            forms = _forms(schemas[message]["properties"][field.json_name])
            assert [f["type"] for f in forms] == ["integer"], (message, field.json_name, forms)
    assert sorted(set(requests)) == [
        "Receipt.redeemPoints",
        "ReceiptLine.amountMinor",
        "ReceiptLine.priceMinor",
    ]
    line = _validator(doc, "components/schemas/ReceiptLine")
    base = {"sku": "4601234000017", "qty": "1"}
    for price, valid in (
        ("8990", True),
        ("0", True),
        ("08990", True),  # read as 8990, as protobuf's own reader does
        ("-1", False),
        ("+5", False),
        (" 5", False),  # ("5\n": ECMA's `$` refuses it; Python's `re`, jsonschema's, not)
        ("8990.0", False),
        ("1e3", False),
        ("", False),
        ("9" * 129, False),
    ):
        assert line.is_valid({**base, "priceMinor": price}) is valid, price
    whole = _validator(doc, "components/schemas/Receipt")
    # "-0" is 0, which the agent takes (review 38, rev38c: the pattern refused it)
    for points, valid in (("-1", True), ("0", True), ("250", True), ("-2", False), ("-0", True)):
        assert whole.is_valid(receipt("r1", redeemPoints=points)) is valid, points


def test_a_digit_string_the_schema_accepts_is_priced_as_the_number_and_one_it_refuses_is_400(
    server: HttpServer,
) -> None:
    """Over real HTTP: a receipt whose int64 fields are the document's string form is
    answered byte for byte as the same receipt with integers (its answer's figures JSON
    integers); each string form the schema refuses, the agent refuses too (400, as
    INVALID_ARGUMENT)."""
    till = Till(server.port, 0)
    api = OpenApi(json.loads(json.dumps(openapi())))
    lines = [
        {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
        {"sku": "4601234000017", "qty": "1", "amountMinor": 8990},
    ]
    as_numbers = receipt("r-int", lines=lines, redeemPoints=-1)
    as_text = receipt(
        "r-int",
        lines=[
            {"sku": "4601234000017", "qty": "2", "priceMinor": "8990"},
            {"sku": "4601234000017", "qty": "1", "amountMinor": "8990"},
        ],
        redeemPoints="-1",
    )
    one = api.check(call(till, "POST", "/v1/quote", as_numbers))
    other = api.check(call(till, "POST", "/v1/quote", as_text))
    assert one.status == other.status == 200, other.body
    assert other.body == one.body
    answer = other.json()
    assert isinstance(answer["payableMinor"], int) and answer["redeemedPoints"] > 0
    # the same body both ways: a retry with strings is the stored hold, not a conflict
    held = api.check(call(till, "POST", "/v1/hold", as_numbers))
    again = api.check(call(till, "POST", "/v1/hold", as_text))
    assert held.status == again.status == 200 and again.body == held.body
    for wrong in ("+5", " 5", "8990.0", "-1", "1e3", ""):
        bad = receipt("r-bad", lines=[{**lines[0], "priceMinor": wrong}])
        refused = api.check(call(till, "POST", "/v1/quote", bad))
        assert refused.status == 400, (wrong, refused.body)
        assert refused.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert not api.wrong, api.wrong
