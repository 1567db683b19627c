"""Review 30 (spec30): the contract's sentences about its doors and data that no test
pinned, checked through the CLI, HTTP on a real server and gRPC on 127.0.0.1. The
scenarios of this review (hand arithmetic in their `why`) are in tests/scenarios/review30/
and run by tests/test_scenarios.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.client import ClientError, PosAgentClient
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import CLI, grpc_served, receipt, snapshot
from .test_http_api import Client

AT_NEXT_DAY = "2026-11-24T10:00:00+03:00"


@pytest.fixture
def doors(tmp_path: Path) -> Iterator[tuple[Agent, Client, PosAgentClient]]:
    """One agent on the `cli` fixture's data directory, served over HTTP and gRPC."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(rich_snapshot())
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    http = Client(server.port)
    try:
        with (
            grpc_served(agent) as port,
            PosAgentClient(f"127.0.0.1:{port}", timeout=10, attempts=1) as grpc_client,
        ):
            yield agent, http, grpc_client
    finally:
        http.close()
        server.stop()
        agent.close()


def rich_snapshot() -> dict[str, Any]:
    """Every kind of figure a result can carry: a line offer, a control group (heldOut), a
    coupon, a multiplier, receipt-level extra points, pending and expiring points."""
    snap = snapshot()
    snap["program"] = dict(snap["program"], pointsLifetimeDays=30)
    snap["customers"][0] = dict(
        snap["customers"][0],
        controlGroups=["camp-9"],
        expiring=[
            {"points": 300, "expiresAt": "2026-12-31T23:59:59+03:00"},
            {"points": 100, "expiresAt": "2026-11-30T23:59:59+03:00"},
        ],
        pending=[{"points": 40, "activatesAt": "2026-11-30T00:00:00+03:00"}],
    )
    window = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-11-30T23:59:59+03:00"}
    snap["offers"] = [
        {"id": "o-1", "campaignId": "camp-3", "customerId": "c-a", "kind": "PERCENT_OFF",
         "skus": ["4601234000017"], "value": "15", "priority": 10, "rank": 1,
         "printable": True, "printText": "−15% на молоко", **window},
        {"id": "o-cg", "campaignId": "camp-9", "kind": "PERCENT_OFF",
         "skus": ["4601234000055"], "value": "20", **window},
        {"id": "o-cp", "campaignId": "camp-4", "kind": "AMOUNT_OFF",
         "skus": ["4601234000024"], "value": "500", "couponRequired": True},
        {"id": "o-x", "campaignId": "camp-5", "kind": "EXTRA_POINTS", "value": "10",
         "minTotalMinor": 1000},
        {"id": "o-m", "campaignId": "camp-6", "kind": "BONUS_MULTIPLIER",
         "categories": ["bakery"], "value": "2"},
    ]  # fmt: skip
    snap["coupons"] = [{"code": "SORRY-1", "offerId": "o-cp", "customerId": "c-a"}]
    return snap


def rich_receipt(receipt_id: str, **changes: Any) -> dict[str, Any]:
    lines = [
        {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
        {"sku": "4601234000024", "qty": "1.5", "priceMinor": 4999},
        {"sku": "4601234000055", "qty": "1", "priceMinor": 30000},
        {"sku": "4601234000031", "qty": "1", "priceMinor": 20000},
        {"sku": "999", "qty": "1", "priceMinor": 100},
    ]
    coupons = ["sorry 1", "nope", "SORRY-1"]
    return receipt(receipt_id, lines=lines, coupons=coupons, redeemPoints=-1, **changes)


def proto3(value: Any) -> Any:
    """A document with proto3's defaults left out (null, empty, 0, false, an enum's
    UNSPECIFIED): what a gRPC answer and the CLI's document must agree on field by field."""
    if isinstance(value, dict):
        return {
            k: proto3(v)
            for k, v in value.items()
            if v not in (None, [], {}, "", 0, False) and not str(v).endswith("_UNSPECIFIED")
        }
    if isinstance(value, list):
        return [proto3(v) for v in value]
    return value


REFUND = {
    "refundId": "f",
    "receiptId": "c",
    "at": AT_NEXT_DAY,
    "lines": [{"sku": "4601234000017", "qty": "1"}],
}


# the whole of an UNKNOWN card's sale back: its result's balance is null (§4: settled by the hub)
UNKNOWN_REFUND = {
    "refundId": "fu",
    "receiptId": "u",
    "at": AT_NEXT_DAY,
    "lines": [
        {"sku": sku, "qty": qty}
        for sku, qty in (("4601234000017", "2"), ("4601234000024", "1.5"), ("4601234000055", "1"))
    ],
}


@pytest.mark.parametrize("explain", [False, True], ids=["plain", "explain"])
def test_one_receipts_life_answers_alike_through_the_cli_http_and_grpc(
    doors: tuple[Agent, Client, PosAgentClient], cli: CLI, explain: bool
) -> None:
    """docs/CONTRACT.md §12: the HTTP answer is byte for byte the CLI's `--json` document,
    and the gRPC answer carries the same figures (§1: one proto3 message), for every call
    of one receipt's life: a quote, a hold and its confirm, a checkout, a hold cancelled,
    a refund, an UNKNOWN card's sale and its refund (balance null), a balance with
    expiring points, and identify's four outcomes."""
    _, http, grpc_client = doors
    extra = {"explain": True} if explain else {}
    calls: list[tuple[str, Callable[[], Any], tuple[str, Any], tuple[Any, ...]]] = [
        ("quote", lambda: grpc_client.quote(rich_receipt("q", **extra)),
         ("/v1/quote", rich_receipt("q", **extra)), ("quote", rich_receipt("q", **extra))),
        ("hold", lambda: grpc_client.hold(rich_receipt("h", **extra)),
         ("/v1/hold", rich_receipt("h", **extra)), ("hold", rich_receipt("h", **extra))),
        ("confirm", lambda: grpc_client.confirm("h", "FD-1"),
         ("/v1/confirm", {"receiptId": "h", "fiscalDocument": "FD-1"}),
         ("confirm", "h", "--fiscal", "FD-1")),
        ("checkout", lambda: grpc_client.checkout(rich_receipt("c", **extra)),
         ("/v1/checkout", rich_receipt("c", **extra)), ("checkout", rich_receipt("c", **extra))),
        ("hold again", lambda: grpc_client.hold(rich_receipt("h2")),
         ("/v1/hold", rich_receipt("h2")), ("hold", rich_receipt("h2"))),
        ("cancel", lambda: grpc_client.cancel("h2"),
         ("/v1/cancel", {"receiptId": "h2"}), ("cancel", "h2")),
        ("refund", lambda: grpc_client.refund(REFUND), ("/v1/refund", REFUND), ("refund", REFUND)),
        ("unknown card", lambda: grpc_client.checkout(rich_receipt("u", card="2770000000093")),
         ("/v1/checkout", rich_receipt("u", card="2770000000093")),
         ("checkout", rich_receipt("u", card="2770000000093"))),
        ("its refund", lambda: grpc_client.refund(UNKNOWN_REFUND), ("/v1/refund", UNKNOWN_REFUND),
         ("refund", UNKNOWN_REFUND)),
        ("balance", lambda: grpc_client.balance("2770000000017", AT_NEXT_DAY),
         ("/v1/balance", {"card": "2770000000017", "at": AT_NEXT_DAY}),
         ("balance", "2770000000017", "--at", AT_NEXT_DAY)),
    ] + [
        (f"identify {text}", lambda text=text: grpc_client.identify(text),  # type: ignore[misc]
         ("/v1/identify", {"text": text}), ("identify", text))
        for text in ("+7 916 123 45 67", "2770000000031", "4600000000008", "2770000000018")
    ]  # fmt: skip
    for name, by_grpc, (path, body), argv in calls:
        from_grpc = by_grpc()
        from_http = http.post(path, body)
        from_cli = cli(*argv, "--json")
        assert (from_http.status, from_cli.code) == (200, 0), (name, from_http.body, from_cli.err)
        assert from_http.headers["content-type"] == "application/json", name
        assert from_http.body == from_cli.out.encode(), name
        assert proto3(from_grpc) == proto3(json.loads(from_cli.out)), name
        # and each answers the same again (idempotent on receiptId / refundId)
        assert http.post(path, body).body == from_http.body, name
        assert proto3(by_grpc()) == proto3(from_grpc), name


def _with(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`body` with the field at `path` ("at", "lines", "lines.0.sku") set to `value`."""
    out = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return out


EMPTY_FIELDS = [
    ("quote", receipt("e"), "lines", []),
    ("checkout", receipt("e"), "at", ""),
    ("hold", receipt("e"), "lines.0.sku", ""),
    ("quote", receipt("e"), "lines.0.qty", ""),
    ("refund", REFUND, "lines", []),
    ("refund", REFUND, "at", ""),
    ("refund", REFUND, "lines.0.sku", ""),
    ("refund", REFUND, "lines.0.qty", ""),
]


@pytest.mark.parametrize(
    ("call", "body", "field", "empty"),
    EMPTY_FIELDS,
    ids=[f"{c}-{f}" for c, _, f, _ in EMPTY_FIELDS],
)
def test_an_empty_field_is_refused_in_the_same_words_by_every_door(
    doors: tuple[Agent, Client, PosAgentClient],
    cli: CLI,
    call: str,
    body: dict[str, Any],
    field: str,
    empty: Any,
) -> None:
    """docs/CONTRACT.md §10 and §12: a receipt with no lines (a refund too), an empty `at`,
    SKU or quantity is bad input, and one request is refused in one sentence whichever door
    it came through. proto3 sends an empty text or list as none, and gRPC said "receipt:
    lines is required" where HTTP and the CLI said "receipt: lines must not be empty" for
    the same receipt (and "at is required" for `at "" is not an RFC 3339 time ...`)."""
    _, http, grpc_client = doors
    sent = _with(body, field, empty)
    by_cli = cli(call, sent, "--json")
    assert by_cli.code == 2 and by_cli.out == ""
    words = by_cli.err.strip().removeprefix("tillpoint: ")
    answer = http.post(f"/v1/{call}", sent)
    assert (answer.status, answer.json()) == (
        400,
        {"error": {"code": "INVALID_ARGUMENT", "message": words}},
    )
    with pytest.raises(ClientError) as refused:
        getattr(grpc_client, call)(sent)
    assert refused.value.code.name == "INVALID_ARGUMENT"
    assert refused.value.message == words


LONG = "1" * 129
TOO_LONG = [
    ("identify", {"text": LONG}, ("identify", LONG), "identify: text is too long"),
    ("balance", {"card": LONG}, ("balance", LONG), "balance: card is too long"),
    ("balance", {"card": "2770000000017", "at": LONG}, None, "balance: at is too long"),
]


@pytest.mark.parametrize(("call", "body", "argv", "words"), TOO_LONG, ids=["text", "card", "at"])
def test_a_text_over_128_characters_is_said_alike_by_every_door(
    doors: tuple[Agent, Client, PosAgentClient],
    cli: CLI,
    call: str,
    body: dict[str, str],
    argv: tuple[str, ...] | None,
    words: str,
) -> None:
    """docs/CONTRACT.md §10: a text field longer than 128 characters is bad input, said in
    one sentence whichever door it came through. identify's text and balance's card were
    "text is too long" and "card is too long" over gRPC and the CLI but "identify: text
    is too long" and "balance: card is too long" over HTTP; a too long `at` was "balance:
    at: is too long" over gRPC. (The CLI names its own option: `--at: ...`.)"""
    _, http, grpc_client = doors
    expected = f"{words} (at most 128 characters)"
    answer = http.post(f"/v1/{call}", body)
    assert (answer.status, answer.json()["error"]) == (
        400,
        {"code": "INVALID_ARGUMENT", "message": expected},
    )
    with pytest.raises(ClientError) as refused:
        if call == "identify":
            grpc_client.identify(body["text"])
        else:
            grpc_client.balance(body["card"], body.get("at"))
    assert (refused.value.code.name, refused.value.message) == ("INVALID_ARGUMENT", expected)
    if argv is not None:
        run = cli(*argv, "--json")
        assert (run.code, run.out, run.err) == (2, "", f"tillpoint: {expected}\n")
