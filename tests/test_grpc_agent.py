"""The local PosAgent gRPC server on a random loopback port, with a real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import receipt, snapshot

TIMEOUT = 5


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[grpc.Channel]:
    """A channel to a served agent with the test snapshot."""
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(0).wait()
        agent.close()


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.PosAgentStub:
    return pb_grpc.PosAgentStub(channel)


def test_checkout_over_grpc_matches_the_contract(stub: pb_grpc.PosAgentStub) -> None:
    request = json_format.ParseDict(receipt(redeemPoints=100), pb.Receipt())
    result = stub.Checkout(request, timeout=TIMEOUT)
    assert result.card.status == pb.FOUND
    assert result.card.first_name == "Анна"
    assert result.mode == pb.OFFLINE
    # 17980 × 30 % = 53 points cap; 100 asked → 53; birthday window ×5 at 7.5 %
    assert result.redeemed_points == 53
    assert result.total_minor == 17980
    assert result.payable_minor == 17980 - 5300
    assert result.earned_points == (17980 - 5300) * 75 * 5 // 100_000
    again = stub.Checkout(request, timeout=TIMEOUT)
    assert again == result  # idempotent on receiptId
    status = stub.Status(pb.StatusRequest(), timeout=TIMEOUT)
    assert status.outbox_depth == 1 and status.last_seq == 1


def test_quote_identify_balance_refund(stub: pb_grpc.PosAgentStub) -> None:
    card = stub.Identify(
        pb.IdentifyRequest(text="8 (916) 123-45-67".replace("(", "").replace(")", "")),
        timeout=TIMEOUT,
    )
    assert card.status == pb.FOUND and card.customer_id == "c-a"
    assert (
        stub.Identify(pb.IdentifyRequest(text="2770000000018"), timeout=TIMEOUT).status
        == pb.INVALID
    )
    request = json_format.ParseDict(receipt(), pb.Receipt())
    quoted = stub.Quote(request, timeout=TIMEOUT)
    assert list(quoted.printed_offers) == []
    balance = stub.Balance(pb.BalanceRequest(card="2770000000017"), timeout=TIMEOUT)
    assert balance.available_points == 1200
    stub.Checkout(request, timeout=TIMEOUT)
    refund = stub.Refund(
        pb.Refund(
            refund_id="f1",
            receipt_id="r1",
            at="2026-11-24T10:00:00+03:00",
            lines=[pb.RefundLine(sku="4601234000017", qty="2")],
        ),
        timeout=TIMEOUT,
    )
    assert refund.taken_back_points == quoted.earned_points
    after = stub.Balance(
        pb.BalanceRequest(card="2770000000017", at="2026-11-24T11:00:00+03:00"), timeout=TIMEOUT
    )
    assert after.available_points == 1200


def test_results_carry_the_device_and_seq_they_were_committed_under(
    stub: pb_grpc.PosAgentStub,
) -> None:
    request = json_format.ParseDict(receipt(), pb.Receipt())
    quoted = stub.Quote(request, timeout=TIMEOUT)
    assert quoted.device_id == "" and quoted.seq == 0  # a quote takes no seq
    assert "seq" not in json_format.MessageToDict(quoted)
    sold = stub.Checkout(request, timeout=TIMEOUT)
    assert (sold.device_id, sold.seq) == ("till-1", 1)
    other = json_format.ParseDict(receipt("r2"), pb.Receipt())
    assert stub.Checkout(other, timeout=TIMEOUT).seq == 2
    again = stub.Checkout(request, timeout=TIMEOUT)  # the stored result, replayed
    assert (again.device_id, again.seq) == ("till-1", 1)
    refund = pb.Refund(
        refund_id="f1",
        receipt_id="r1",
        at="2026-11-24T10:00:00+03:00",
        lines=[pb.RefundLine(sku="4601234000017", qty="1")],
    )
    returned = stub.Refund(refund, timeout=TIMEOUT)
    assert (returned.device_id, returned.seq) == ("till-1", 3)
    replayed = stub.Refund(refund, timeout=TIMEOUT)
    assert (replayed.device_id, replayed.seq) == ("till-1", 3)
    assert json_format.MessageToDict(replayed)["seq"] == "3"  # proto3 JSON: int64 as text


@pytest.mark.parametrize(
    "request_,code",
    [
        (pb.Receipt(receipt_id="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.Receipt(
                receipt_id="x",
                at="2026-11-23T10:15:00+03:00",
                card="2770000000017",
                lines=[pb.ReceiptLine(sku="4601234000017", qty="1.2345", price_minor=10)],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.Receipt(
                receipt_id="x",
                at="2026-11-23T10:15:00",
                card="2770000000017",
                lines=[pb.ReceiptLine(sku="4601234000017", qty="1", price_minor=10)],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.Receipt(
                receipt_id="x",
                at="2026-11-23T10:15:00+03:00",
                card="2770000000031",
                lines=[pb.ReceiptLine(sku="4601234000017", qty="1", price_minor=10)],
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ],
)
def test_bad_input_is_refused_with_a_readable_status(
    stub: pb_grpc.PosAgentStub, request_: pb.Receipt, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Checkout(request_, timeout=TIMEOUT)
    assert info.value.code() == code
    details = info.value.details() or ""
    assert details and "\n" not in details and "Traceback" not in details
    assert stub.Status(pb.StatusRequest(), timeout=TIMEOUT).outbox_depth == 0


def test_quote_with_explain_over_grpc_carries_the_trace(stub: pb_grpc.PosAgentStub) -> None:
    request = json_format.ParseDict(receipt(redeemPoints=100), pb.Receipt())
    plain = stub.Quote(request, timeout=TIMEOUT)
    request.explain = True
    explained = stub.Quote(request, timeout=TIMEOUT)
    assert not plain.HasField("trace") and explained.HasField("trace")
    assert explained.trace.lines[0].sku == "4601234000017"
    # 17980 × 30 % caps the 100 points asked at 53
    assert explained.trace.redemption.bound_by == "PERCENT"
    assert explained.trace.redemption.allowed_points == 53
    explained.ClearField("trace")
    assert explained == plain  # the trace changes no figure


def test_refund_of_unknown_receipt_is_not_found(stub: pb_grpc.PosAgentStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Refund(
            pb.Refund(
                refund_id="f",
                receipt_id="nope",
                at="2026-11-24T10:00:00+03:00",
                lines=[pb.RefundLine(sku="4601234000017", qty="1")],
            ),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_service_reports_serving_once_a_snapshot_is_loaded(tmp_path: Path) -> None:
    """NOT_SERVING before a snapshot (every sale is refused then), as GET /healthz's 503;
    SERVING from the moment one is loaded, by any process; NOT_SERVING when stopping.
    `Watch` streams the same: NOT_SERVING, then SERVING when the snapshot arrives."""
    agent = Agent(tmp_path, "till-1")
    server, port, servicer = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING

            def check(service: str) -> int:
                request = health_pb2.HealthCheckRequest(service=service)
                return int(health.Check(request, timeout=TIMEOUT).status)

            for service in ("", "tillpoint.v1.PosAgent"):
                assert check(service) == health_pb2.HealthCheckResponse.NOT_SERVING
            other = Agent(tmp_path, "till-1")  # say, `tillpoint snapshot load`
            other.load_snapshot(snapshot())
            other.close()
            for service in ("", "tillpoint.v1.PosAgent"):
                assert check(service) == health_pb2.HealthCheckResponse.SERVING
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            servicer.enter_graceful_shutdown()
            assert check("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        server.stop(0).wait()
        agent.close()


def test_the_fast_result_builder_equals_json_format(tmp_path: Path) -> None:
    from tillpoint.agent.wire import checkout_message, json_of, to_message

    agent = Agent(tmp_path, "till-1")
    offer = {
        "id": "o-1",
        "campaignId": "k",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": ["4601234000017"],
        "value": "10",
        "printable": True,
        "printText": "x",
    }
    agent.load_snapshot(snapshot(offers=[offer]))
    lines = [
        {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
        {"sku": "4601234000031", "qty": "1", "priceMinor": 20000},
    ]
    results = [
        agent.quote(receipt_from_json(receipt(lines=lines, redeemPoints=-1))),
        agent.quote(
            receipt_from_json(
                receipt(lines=lines, redeemPoints=-1, explain=True, coupons=["x", "X"])
            )
        ),
        agent.checkout(receipt_from_json(receipt(lines=lines, redeemPoints=-1))),
        agent.checkout(
            receipt_from_json(receipt("r2", card="2770000000994"))
        ),  # UNKNOWN: no balance
    ]
    for result in results:
        assert checkout_message(result) == to_message(json_of(result), pb.CheckoutResult())
    agent.close()


_text = st.text(alphabet="0123456789abc.+-:T ", max_size=12)
_int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def _pb_receipts(draw: st.DrawFn) -> pb.Receipt:
    message = pb.Receipt(
        receipt_id=draw(_text),
        store_id=draw(_text),
        till_id=draw(_text),
        at=draw(st.sampled_from(["", "2026-11-23T10:15:00+03:00", "2026-11-23"])),
        card=draw(_text),
        redeem_points=draw(_int64),
        explain=draw(st.booleans()),
        coupons=draw(st.lists(_text, max_size=2)),
    )
    for _ in range(draw(st.integers(0, 3))):
        line = message.lines.add(sku=draw(_text), qty=draw(st.sampled_from(["", "1", "0.5"])))
        if draw(st.booleans()):
            line.price_minor = draw(_int64)
        if draw(st.booleans()):
            line.amount_minor = draw(_int64)
    return message


@settings(max_examples=300, deadline=None)
@given(message=_pb_receipts())
def test_the_fast_receipt_reader_validates_like_json_format(message: pb.Receipt) -> None:
    """receipt_dict (the hot path) and MessageToDict give the same receipt or the same refusal,
    once the receipt's needed texts and lines that proto3 leaves out when empty are given
    as sent (review 30: one refusal's words at every door, docs/CONTRACT.md §12)."""
    from tillpoint.agent.errors import InputError
    from tillpoint.agent.models import Receipt, parse
    from tillpoint.agent.wire import receipt_dict, to_dict

    as_sent = to_dict(message)
    as_sent.setdefault("at", "")
    as_sent["lines"] = [{"sku": "", "qty": "", **line} for line in as_sent.get("lines", [])]
    outcomes = []
    for data in (receipt_dict(message), as_sent):
        try:
            outcomes.append(parse(Receipt, data, "receipt"))
        except InputError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_a_request_that_does_not_decode_is_invalid_argument_not_internal(
    channel: grpc.Channel,
) -> None:
    """Bytes that are no `Receipt` (a truncated message, a card that is not UTF-8) are the
    caller's error: INVALID_ARGUMENT with a readable message, and the agent serves on."""
    raw = channel.unary_unary("/tillpoint.v1.PosAgent/Quote")  # bytes in, bytes out
    not_utf8 = b"\x2a\x02\xff\xfe"  # field 5 (card), a string, two bytes not UTF-8
    for body in (b"\x0a\xff", not_utf8):
        with pytest.raises(grpc.RpcError) as caught:
            raw(body, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid message" in (caught.value.details() or "")
    stub = pb_grpc.PosAgentStub(channel)
    quoted = stub.Quote(json_format.ParseDict(receipt(), pb.Receipt()), timeout=TIMEOUT)
    assert quoted.total_minor > 0
    assert stub.Status(pb.StatusRequest(), timeout=TIMEOUT).outbox_depth == 0
