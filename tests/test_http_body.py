"""The HTTP interface's own reading and answering of a receipt call (issue 11's overhead):
the receipt validated straight from the body's bytes (`http_api.receipt_of_body`) is the
receipt the long way reads (`parse_json`, then `receipt_from_json`), and every body the
long way refuses is refused with its words; the POST calls answered on bare ASGI carry the
headers Starlette's Response did."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tillpoint.agent.cli import parse_json
from tillpoint.agent.errors import InputError
from tillpoint.agent.http_api import HttpServer, receipt_of_body
from tillpoint.agent.results import receipt_from_json

from .conftest import receipt
from .test_http_api import Client

AT = "2026-11-23T10:15:00+03:00"


def _long_way(raw: bytes) -> Any:
    try:
        return receipt_from_json(parse_json(raw, "request body"))
    except InputError as exc:
        return f"refused: {exc}"


def _fast_way(raw: bytes) -> Any:
    try:
        return receipt_of_body(raw)
    except InputError as exc:
        return f"refused: {exc}"


def _same(raw: bytes) -> None:
    long, fast = _long_way(raw), _fast_way(raw)
    assert fast == long, raw
    if not isinstance(long, str):  # the very values: the `at` and its offset's type too
        assert fast.model_dump() == long.model_dump()
        assert type(fast.at.tzinfo) is type(long.at.tzinfo)
        assert [vars(line)["amount"] for line in fast.lines] == [
            vars(line)["amount"] for line in long.lines
        ]


def _body(**changes: Any) -> bytes:
    return json.dumps(receipt(**changes), ensure_ascii=False).encode()


# Bodies where pydantic-core's own reading of JSON and the long way could part.
EDGES = [
    _body(),
    _body(explain=True),
    _body(at=AT.replace("T", "t")),  # pydantic-core's parser takes it, fromisoformat not
    _body(at="1700000000"),  # a Unix time to pydantic-core
    _body(at="2026-11-23T10:15:00z"),
    _body(at="2026-11-23 10:15:00+03:00"),
    _body(at=" 2026-11-23T10:15:00+03:00 "),
    _body(at="2026-11-23T10:15:00.1234567+03:00"),
    _body(at="2026-11-23T23:59:60+03:00"),
    _body(at="2026-11-23T10:15:00-00:00"),
    _body(at=1700000000),
    _body(at="2026-11-23T10:15:00\\u002b03:00"),
    _body(card='"at": "1700000000"'),
    _body(lines=[{"sku": "4601234000017", "qty": "0.512", "priceMinor": 8990}]),
    _body(lines=[{"sku": "4601234000017", "qty": "2", "priceMinor": "8990"}]),
    _body(lines=[{"sku": "4601234000017", "qty": "2", "priceMinor": True}]),
    _body(lines=[{"sku": "4601234000017", "qty": 2, "priceMinor": 8990}]),
    _body(lines=[{"sku": "4601234000017", "qty": "2", "amountMinor": 2**63}]),
    _body(lines=[{"sku": "S", "qty": "2", "priceMinor": 1}]).replace(b'"S"', b'"\\ud800"'),
    _body(redeemPoints=-2),
    _body(coupons=["C1", "C1"]),
    _body().replace(b'"redeemPoints": 0', b'"redeemPoints": 0.0'),
    _body().replace(b'"redeemPoints": 0', b'"explain": 1.0'),  # a lax bool to pydantic-core
    _body().replace(b'"redeemPoints": 0', b'"explain": 0.0'),
    _body().replace(b'"redeemPoints": 0', b'"redeemPoints": NaN'),
    _body().replace(b'"redeemPoints": 0', b'"redeemPoints": 1e2'),
    _body().replace(b'"card"', b'"at": "2026-11-24T10:15:00+03:00", "card"'),  # "at" twice
    _body().replace(b'"storeId"', b'"\\"at": "1700000000", "storeId"'),
    _body().replace(b'"lines": [', b'"lines": [{"sku": "x", "qty": "1", "at": "1"}, '),
    _body(receipt_id="b"),  # a field by its name and by its alias
    _body(redeem_points=5, redeemPoints=7),
    _body(lines=[{"sku": "4601234000017", "qty": "1", "price_minor": 1, "priceMinor": 2}]),
    _body() + b" x",
    b"\xef\xbb\xbf" + _body(),  # a UTF-8 byte order mark: json.loads reads it
    json.dumps(receipt()).encode("utf-16"),  # so is UTF-16
    b"[1, 2]",
    b"",
    b"\xff\xfe not json",
    b'{"receiptId": ',
]


@pytest.mark.parametrize("raw", EDGES, ids=range(len(EDGES)))
def test_a_body_reads_as_the_long_way_reads_it(raw: bytes) -> None:
    _same(raw)


_strings = st.text(max_size=6) | st.sampled_from(["at", '"at": "x"', "explain", "T", ""])
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | _strings
    | st.sampled_from([AT, "1700000000", "2", "0.5"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        ["receiptId", "storeId", "at", "card", "lines", "redeemPoints", "coupons", "other"]
    ),
    value=_values,
)
def test_any_field_reads_as_the_long_way_reads_it(key: str, value: Any) -> None:
    doc = receipt()
    doc[key] = value
    _same(json.dumps(doc).encode())  # ASCII: a lone surrogate is an escape


# ---------------------------------------------------------------- over HTTP


@pytest.fixture
def client(server: HttpServer) -> Iterator[Client]:
    c = Client(server.port)
    yield c
    c.close()


def test_a_post_call_is_answered_with_starlettes_headers(client: Client) -> None:
    quote = client.post("/v1/quote", receipt())
    assert quote.status == 200
    assert quote.headers["content-type"] == "application/json"
    assert int(quote.headers["content-length"]) == len(quote.body)
    assert set(quote.headers) == {"content-type", "content-length", "date"}
    refused = client.post("/v1/quote", raw=_body().replace(b"8990", b"8990.0"))
    assert refused.status == 400 and "decimal point" in refused.json()["error"]["message"]
    assert set(refused.headers) == {"content-type", "content-length", "date"}
    # GET calls are Starlette's still: the same headers.
    assert set(client.get("/v1/status").headers) == {"content-type", "content-length", "date"}


def test_a_client_that_leaves_before_its_body_arrives_is_no_error(
    server: HttpServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody reads an answer to it: no "internal error" and no trace in the log."""
    with caplog.at_level(logging.WARNING, logger="tillpoint.http"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/quote HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.2)  # the call is waiting for the rest of its body
        time.sleep(0.3)
        assert client.post("/v1/quote", receipt()).status == 200  # serving as before
    assert [r.getMessage() for r in caplog.records if r.name == "tillpoint.http"] == []
