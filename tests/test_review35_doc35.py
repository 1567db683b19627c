"""Review 35, doc35: `GET /openapi.json` as a POS integrator feeds it to a client generator
(CONTRACT §12: "describes every call, generated from the same models, never
hand-written"). The document is checked by a real OpenAPI validator
(openapi-spec-validator), its request and answer examples are the repository's
`examples/` files and the answers a real agent gave to them, its enums list only what an
answer can carry, and a client generated from it by a real generator
(openapi-python-client) prices, holds, confirms, cancels and refunds against a real
`tillpoint run`.

Real parts: the agent's HTTP interface on a free loopback port, `tillpoint run` as a
process, real sockets; the generator and the validator as PyPI ships them.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from tillpoint.agent.http_api import HttpServer, openapi
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import snapshot

TIMEOUT = 10.0


def served_document(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=TIMEOUT) as r:
        doc: dict[str, Any] = json.load(r)
    return doc


@pytest.fixture
def kiosk(agent: Agent) -> Iterator[HttpServer]:
    """The HTTP interface with `[http] allowed_origins` set: its document declares the
    preflights too."""
    srv = HttpServer(agent, "127.0.0.1:0", allowed_origins=["http://kiosk.local"])
    srv.start()
    yield srv
    srv.stop()


def schema_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) of components/schemas/name."""
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
    )


# ---------------------------------------------------------------- 1. a real validator


@pytest.mark.parametrize("door", ["server", "kiosk"])
def test_the_served_document_is_valid_openapi_3_1(
    door: str, request: pytest.FixtureRequest
) -> None:
    """CONTRACT §12: what `GET /openapi.json` serves, with and without `[http]
    allowed_origins` (its preflights), passes openapi-spec-validator's OpenAPI 3.1 checks
    (the schema of the document, every `$ref` resolved, operation ids unique, each path's
    parameters)."""
    served: HttpServer = request.getfixturevalue(door)
    doc = served_document(served.port)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in OpenAPIV31SpecValidator(doc).iter_errors()
    ]
    assert not errors, "\n".join(errors)
    assert doc == json.loads(json.dumps(openapi(preflights=door == "kiosk")))


# ---------------------------------------------------------------- 2. shapes a generator reads


def test_a_receipt_line_is_one_object_type_with_its_own_fields() -> None:
    """CONTRACT §12: a line needs `priceMinor` or `amountMinor` (not null). The document
    said so with an `anyOf` of two partial objects beside the line's properties, which a
    client generator reads as a union of two types: openapi-python-client made
    `ReceiptLineType0` (only `price_minor: Any`) and `ReceiptLineType1` (only
    `amount_minor`), neither with `sku` or `qty`, and `Receipt.lines` a list of either.
    The rule is now a `not` (a line whose two prices are each absent or null is refused),
    which generators leave to the server and validators check the same."""
    doc = json.loads(json.dumps(openapi()))
    line = doc["components"]["schemas"]["ReceiptLine"]
    assert not {"anyOf", "oneOf", "allOf"} & set(line), line
    assert line["required"] == ["sku", "qty"]
    validator = schema_validator(doc, "ReceiptLine")
    base = {"sku": "4601234000017", "qty": "1"}
    for body, valid in (
        ({**base, "priceMinor": 8990}, True),
        ({**base, "amountMinor": 8990}, True),
        ({**base, "priceMinor": None, "amountMinor": 0}, True),
        ({**base, "priceMinor": 1, "amountMinor": None}, True),
        (base, False),  # neither
        ({**base, "priceMinor": None}, False),
        ({**base, "priceMinor": None, "amountMinor": None}, False),
        ({**base, "priceMinor": -1}, False),
    ):
        assert validator.is_valid(body) is valid, body


# ---------------------------------------------------------------- 3. enums


def _enum_fields(desc: Descriptor, seen: set[str]) -> Iterator[tuple[str, str, list[str]]]:
    """(message, JSON field name, the proto enum's value names) of every enum field a
    message and the messages it holds have."""
    if desc.name in seen:
        return
    seen.add(desc.name)
    for field in desc.fields:
        if field.enum_type is not None:
            yield desc.name, field.json_name, [v.name for v in field.enum_type.values]
        if field.message_type is not None:
            yield from _enum_fields(field.message_type, seen)


def test_enums_list_only_the_values_an_answer_carries_and_no_request_has_one() -> None:
    """CONTRACT §12 and proto3 JSON: an enum's zero value `*_UNSPECIFIED` is "not set".
    Over HTTP no answer carries it (a quote leaves `state` out, as the CLI does; a card's
    status, a result's and the status's mode, an explained offer's kind are always set),
    yet the document listed `RECEIPT_STATE_UNSPECIFIED`, `MODE_UNSPECIFIED`,
    `IDENTIFY_STATUS_UNSPECIFIED` and `OFFER_KIND_UNSPECIFIED`, and a generated client
    made each a value a POS had to handle. No request of PosAgent has an enum field, so a
    request sends none."""
    doc = json.loads(json.dumps(openapi()))
    schemas = doc["components"]["schemas"]
    service = pb.DESCRIPTOR.services_by_name["PosAgent"]
    requests: set[str] = set()
    for method in service.methods:
        requests |= {m for m, _, _ in _enum_fields(method.input_type, set())}
    assert not requests, f"a request message has an enum field: {requests}"
    found = 0
    for method in service.methods:
        for message, name, values in _enum_fields(method.output_type, set()):
            schema = schemas[message]["properties"][name]
            listed = schema["enum"]
            assert listed == [v for v in values if not v.endswith("_UNSPECIFIED")], (
                message,
                name,
                listed,
            )
            found += 1
    assert found >= 5  # CardOutcome.status, CheckoutResult.mode and state, Status.mode, kinds
    text = json.dumps(doc)
    assert "_UNSPECIFIED" not in text
