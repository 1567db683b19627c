"""Review 53 (mut53c): mutation testing of the gRPC door's mapping and decoding
(`agent/wire.py`, `agent/grpc_decode.py`; the contract §2, §11, §12). Each test here
pins a rule a surviving mutant broke unseen (docs/DECISIONS.md, "Review 53 (mut53c)").
Real parts: an `Agent` on a temporary data directory, its gRPC server (`build_server`,
as `tillpoint run` builds it) and its HTTP interface on free loopback ports, the Python
client over a real channel, raw bytes on a real channel, and a real hub server.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.agent.wire import checkout_of, message_of, status_json
from tillpoint.client import ClientError, PosAgentClient
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import post_json, receipt

TIMEOUT = 10


@pytest.fixture
def doors(agent: Agent) -> Iterator[tuple[HttpServer, int]]:
    """The same till's HTTP interface and gRPC server (its port)."""
    http_server = HttpServer(agent, "127.0.0.1:0")
    http_server.start()
    server, port, health = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        yield http_server, port
    finally:
        health.stop_following()
        server.stop(0).wait()
        http_server.stop()


def _line(**fields: Any) -> list[dict[str, Any]]:
    return [{"sku": "4601234000017", "qty": "1", **fields}]


# ---------------------------------------------------------------- wire.py: the client's int64


def test_the_client_takes_int64_to_its_edges_and_refuses_one_past_them_itself(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §2 (money is a signed 64-bit integer), §12 (the doors read a request
    alike): the Python client sends 2^63 − 1 and −2^63 and the till answers them as HTTP
    does (a price of 2^63 − 1 priced, −2^63 refused by the till in its words, "receipt:
    …"); 2^63 and −2^63 − 1 are refused by the client before any call ("Receipt: …
    does not fit in a signed 64-bit integer"); a digit string of 128 characters, the
    longest taken, is the number at both doors. Mutants of the bounds (2^62, 2^64, 2^63 − 2,
    2^63 + 1, −1, −3^63) survived."""
    web, grpc_port = doors
    with PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT, attempts=1) as till:
        top = receipt("r-top", lines=_line(priceMinor=2**63 - 1))
        status, answer = post_json(web, "/v1/quote", top)
        assert status == 200 and answer["totalMinor"] == 2**63 - 1, answer
        assert till.quote(top)["totalMinor"] == 2**63 - 1
        longest = receipt("r-long", lines=_line(priceMinor="0" * 124 + "8990"))  # 128 characters
        assert post_json(web, "/v1/quote", longest)[1]["totalMinor"] == 8990
        assert till.quote(longest)["totalMinor"] == 8990
        for body, words in (
            (receipt("r-low", redeemPoints=-(2**63)), "redeemPoints must be 0 or more"),
            (receipt("r-low", lines=_line(priceMinor=-(2**63))), "priceMinor must not be negative"),
        ):
            status, answer = post_json(web, "/v1/quote", body)
            assert status == 400 and words in answer["error"]["message"], answer
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            # the till's words (its "receipt: " prefix), the request having been sent
            assert refused.value.message == answer["error"]["message"], refused.value.message
        for body, place in (
            (receipt("r-past", lines=_line(priceMinor=2**63)), "lines[0].priceMinor"),
            (receipt("r-past", lines=_line(amountMinor=str(2**63))), "lines[0].amountMinor"),
            (receipt("r-past", redeemPoints=-(2**63) - 1), "redeemPoints"),
            (receipt("r-past", redeemPoints=2**63), "redeemPoints"),
        ):
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.message == (
                f"Receipt: {place} does not fit in a signed 64-bit integer"
            ), refused.value.message


def test_the_client_names_a_plain_field_without_an_index_and_says_which_number_form(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §2 (money in minor units, whole numbers), §12: the client's refusal of
    an int64 it cannot send names the field as HTTP does — `lines[0].priceMinor`, not
    `lines[0].priceMinor[0]` (mutants put the list's index on a field that is no list, or
    read a list sent for it as the list's numbers) — and says an exponent (1e+20) and a
    decimal point (8990.5) apart (a mutant said each as the other)."""
    web, grpc_port = doors
    advice = "write money in minor units (whole numbers) and quantities as decimal strings"
    cases = (
        (1e20, "lines[0].priceMinor: the number 1e+20 is written with an exponent: " + advice),
        (8990.5, "lines[0].priceMinor: the number 8990.5 has a decimal point: " + advice),
        ("1" * 129, "lines[0].priceMinor is too long (at most 128 characters)"),
        ([8990], "lines[0].priceMinor must be a whole number"),
    )
    with PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT, attempts=1) as till:
        for price, words in cases:
            body = receipt("r-bad", lines=_line(priceMinor=price))
            status, answer = post_json(web, "/v1/quote", body)
            assert status == 400 and answer["error"]["message"].endswith(words), answer
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert refused.value.message == f"Receipt: {words}", refused.value.message


# ---------------------------------------------------------------- wire.py: replies read back


def test_a_reply_read_back_is_the_figures_http_answers_for_the_same_receipt(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §12 (the same figures at both doors), §17 (explain): gRPC's answer is
    HTTP's document parsed as proto3 JSON, and `checkout_of` reads it back as the typed
    result whole: the explained quote's trace kept, a plain quote's `trace` None (HTTP
    leaves it out), a hold's state and end (mutants dropped the trace, or read an empty
    one from a reply that has none)."""
    web, grpc_port = doors
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        for body, call in (
            (receipt("r-explained", explain=True), "Quote"),
            (receipt("r-plain"), "Quote"),
            (receipt("r-held"), "Hold"),
        ):
            reply = getattr(stub, call)(json_format.ParseDict(body, pb.Receipt()), timeout=TIMEOUT)
            status, answer = post_json(web, f"/v1/{call.lower()}", body)  # a hold's retry
            assert status == 200, answer
            assert json_format.ParseDict(answer, pb.CheckoutResult()) == reply, call
            back = checkout_of(reply)
            assert message_of(back) == reply, call
            assert (back.trace is None) == ("trace" not in answer) == (not body.get("explain"))
        assert back.state == answer["state"] == "HELD"
        assert back.hold_expires_at == answer["holdExpiresAt"] != ""


def test_the_client_refuses_a_field_named_twice_naming_where_it_is(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §12 (a field under both its names is refused): the client names the
    field as HTTP does, at the top (`receiptId`) and inside a line (`lines[0].priceMinor`;
    a mutant wrote the line's field without its place)."""
    web, grpc_port = doors
    twice_top = {**receipt("r-twice"), "receipt_id": "r-other"}
    twice_line = receipt("r-twice", lines=_line(priceMinor=100, price_minor=100))
    with PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT, attempts=1) as till:
        for body, words in (
            (twice_top, "receiptId is given twice (receipt_id and receiptId)"),
            (twice_line, "lines[0].priceMinor is given twice (price_minor and priceMinor)"),
        ):
            status, answer = post_json(web, "/v1/quote", body)
            assert status == 400 and words in answer["error"]["message"], answer
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert refused.value.message == f"Receipt: {words}", refused.value.message


def test_a_sale_over_grpc_is_stored_as_sent_and_its_retry_over_http_is_the_same_sale(
    agent: Agent, doors: tuple[HttpServer, int]
) -> None:
    """The contract §5 (`storeId` and `tillId` are kept with the receipt and sent to the
    hub with it), §11 (a retry with the same `receiptId` and body answers the sale
    stored): a checkout over gRPC stores the receipt with every field it was sent, and the
    same body sent again over HTTP is that sale (200, the same figures, one seq), not a
    conflict (a mutant of the hot path's reader dropped `tillId`: stored without it, and
    the HTTP retry was 409 "another body")."""
    web, grpc_port = doors
    body = receipt(
        "r-both",
        storeId="s7",
        tillId="t7",
        lines=[
            {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
            {"sku": "4601234000024", "qty": "1", "priceMinor": 5990, "amountMinor": 5000},
        ],
        redeemPoints=100,
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        sold = pb_grpc.PosAgentStub(channel).Checkout(
            json_format.ParseDict(body, pb.Receipt()), timeout=TIMEOUT
        )
    assert sold.seq == 1 and sold.total_minor == 17980 + 5000
    with sqlite3.connect(f"file:{agent.data_dir / 'ledger.db'}?mode=ro", uri=True) as ledger:
        (request,) = ledger.execute(
            "SELECT request FROM receipts WHERE receipt_id = 'r-both'"
        ).fetchone()
    stored = json.loads(request)
    assert (stored["storeId"], stored["tillId"], stored["redeemPoints"]) == ("s7", "t7", 100)
    assert [line.get("amountMinor") for line in stored["lines"]] == [None, 5000]
    status, answer = post_json(web, "/v1/checkout", body)
    assert status == 200, answer
    assert json_format.ParseDict(answer, pb.CheckoutResult()) == sold


def test_the_client_reads_a_null_as_a_field_left_out(doors: tuple[HttpServer, int]) -> None:
    """The contract §12 (a field set to `null` is the field left out): the client sends
    `{"priceMinor": 8990, "price_minor": null}` as the price, as HTTP reads it, not as a
    line whose price was cleared (a mutant passed the nulls on to protobuf's reader); a
    field after a null is still checked ("٣" is no number: a mutant stopped at the null
    and sent it as 3)."""
    web, grpc_port = doors
    line = {**_line(priceMinor=8990)[0], "price_minor": None}
    body = receipt("r-null", lines=[line], coupons=None)
    status, answer = post_json(web, "/v1/quote", body)
    assert status == 200 and answer["totalMinor"] == 8990, answer
    with PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT, attempts=1) as till:
        quoted = till.quote(body)
    assert quoted["totalMinor"] == 8990 and quoted["card"]["status"] == answer["card"]["status"]
    after_a_null = {"coupons": None, **receipt("r-bad", redeemPoints="٣")}  # Arabic-Indic 3
    status, answer = post_json(web, "/v1/quote", after_a_null)
    words = "redeemPoints must be a whole number"
    assert status == 400 and answer["error"]["message"] == f"receipt: {words}", answer
    with (
        PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT, attempts=1) as till,
        pytest.raises(ClientError) as refused,
    ):
        till.quote(after_a_null)
    assert refused.value.message == f"Receipt: {words}", refused.value.message


def test_status_names_every_field_in_the_protos_order_an_unset_part_as_null(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §12 (`/v1/status` is the proto `Status` mapping, as `status --json`,
    with its `null`s): a fresh till's status at HTTP has every field of the proto in its
    order, the parts never set (`lastRefusedSnapshot`, `lastRenumbered`) as null, as
    gRPC's `Status` leaves them unset (mutants of `message_json` left the unset parts out,
    or stopped at the first one)."""
    web, grpc_port = doors
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/v1/status")
        answer = conn.getresponse()
        status = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 200, status
    assert list(status) == [field.json_name for field in pb.Status.DESCRIPTOR.fields]
    assert status["lastRefusedSnapshot"] is None and status["lastRenumbered"] is None
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        served = pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=TIMEOUT)
    assert not served.HasField("last_renumbered")
    assert json_format.ParseDict(status, pb.Status()).cache_version == served.cache_version == 1


def test_a_set_part_of_the_status_has_its_int64_as_numbers_and_its_fields_in_order(
    agent: Agent,
) -> None:
    """The contract §12 (`status --json`, `/v1/status` and gRPC's `Status` say the same
    thing, 64-bit integers as JSON numbers): a refused snapshot's and a renumbered
    transaction's parts, once set, are shaped as the whole is — `version`, `oldSeq` and
    `newSeq` numbers, not proto3 JSON's strings, every field in the proto's order (a
    mutant left a set part as json_format wrote it). A real till's status, those parts as
    the ledger's sync state gives them."""
    doc = agent.status().to_json()
    doc["lastRefusedSnapshot"] = {"version": 2, "reason": "bad signature", "at": "2026-12-07"}
    doc["lastRenumbered"] = {"oldSeq": 7, "newSeq": 9, "at": "2026-12-07", "receiptId": "r7"}
    shown = status_json(doc)
    assert shown["lastRefusedSnapshot"] == {
        "version": 2,
        "sha256": "",
        "reason": "bad signature",
        "at": "2026-12-07",
    }
    assert list(shown["lastRenumbered"].items()) == [
        ("oldSeq", 7),
        ("newSeq", 9),
        ("at", "2026-12-07"),
        ("receiptId", "r7"),
        ("refundId", ""),
    ]


# ---------------------------------------------------------------- grpc_decode.py: raw bytes

RECEIPT = json_format.ParseDict(receipt("r-raw"), pb.Receipt()).SerializeToString()
OF_RECEIPT = "of Receipt is sent as"


def _raw(channel: grpc.Channel, method: str, body: bytes) -> grpc.RpcError | bytes:
    try:
        answer: bytes = channel.unary_unary(method)(body, timeout=TIMEOUT)
        return answer
    except grpc.RpcError as exc:
        return exc


NEWER = "(unknown fields are refused: is the POS built for a newer contract?)"


def _sent(number: int, name: str, wire: str, kind: str) -> str:
    return (
        f"field number {number} ({name}) of Receipt is sent as {wire}, not as the contract's {kind}"
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (b"\x08\x05", _sent(1, "receiptId", "a varint", "string")),
        (b"\x09" + bytes(8), _sent(1, "receiptId", "a 64-bit fixed value", "string")),
        (b"\x0d" + bytes(4), _sent(1, "receiptId", "a 32-bit fixed value", "string")),
        (b"\x0b\x0c", _sent(1, "receiptId", "a group", "string")),
        (b"\x3a\x01x", _sent(7, "redeemPoints", "a length-delimited value", "int64")),
        (b"\x4a\x00", _sent(9, "explain", "a length-delimited value", "bool")),
        (b"\x30\x01", _sent(6, "lines", "a varint", "repeated ReceiptLine")),
        (b"\xa0\x01\x01", f"field number 20 is not a field of Receipt {NEWER}"),
        (b"\xa0\x01\x01\xa8\x01\x01", f"field number 20 is not a field of Receipt {NEWER}"),
        (
            b"\x32\x05\x0a\x01x\x48\x01",
            f"lines[1]: field number 9 is not a field of ReceiptLine {NEWER}",
        ),
    ],
    ids=[
        "varint",
        "fixed64",
        "fixed32",
        "group",
        "int64-as-bytes",
        "bool-as-bytes",
        "lines-as-varint",
        "unknown",
        "two-unknown",
        "unknown-in-a-line",
    ],
)
def test_a_field_sent_with_another_wire_type_or_unknown_is_refused_in_words(
    doors: tuple[HttpServer, int], extra: bytes, words: str
) -> None:
    """The contract §12 (a field the contract lacks is bad input at `PosAgent`, named by
    number and place): a known field sent with another wire type names its type as sent
    and as the contract has it (mutants of the wire types' table said "a 32-bit fixed
    value" for a varint, or "another type"); an unknown field, at the top or inside a
    line, is not a field of its message, the first of two named (mutants let it through unread:
    never looked for, or at the agent not at all; or named the last)."""
    _, grpc_port = doors
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        refused = _raw(channel, "/tillpoint.v1.PosAgent/Quote", RECEIPT + extra)
        assert isinstance(refused, grpc.RpcError), words
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused
        assert refused.details() == words
        answer = _raw(channel, "/tillpoint.v1.PosAgent/Quote", RECEIPT)  # and it serves on
        assert isinstance(answer, bytes) and pb.CheckoutResult.FromString(answer).total_minor


def test_bytes_that_do_not_decode_say_what_protobuf_found_and_an_unknown_method_is_unimplemented(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §12: a request that does not decode is INVALID_ARGUMENT with
    protobuf's own reason (a mutant said only "DecodeError"); a method the agent does not
    have is UNIMPLEMENTED, as grpcio says it (a mutant of the interceptor's look made it
    UNKNOWN, which sends an integrator to the till's support)."""
    _, grpc_port = doors
    reason = "the request is not a valid message of this call: Error parsing message with type"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        for body, why in (
            (b"\x0a\xff", "'tillpoint.v1.Receipt': Wire format was corrupt"),
            (b"\x2a\x02\xff\xfe", "'tillpoint.v1.Receipt': String field had bad UTF-8"),
        ):
            refused = _raw(channel, "/tillpoint.v1.PosAgent/Quote", body)
            assert isinstance(refused, grpc.RpcError)
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.details() == f"{reason} {why}"
        missing = _raw(channel, "/tillpoint.v1.PosAgent/Price", RECEIPT)
        assert isinstance(missing, grpc.RpcError)
        assert missing.code() == grpc.StatusCode.UNIMPLEMENTED, missing


def test_a_reflection_stream_whose_request_does_not_decode_is_invalid_argument(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §12 (reflection is on; bytes that do not decode are INVALID_ARGUMENT,
    never INTERNAL): a streamed request is checked as a single one is, for reflection's
    v1alpha and v1 alike (one servicer: v1alpha's messages), and a good request on the
    same channel is answered (mutants of the interceptor's choice of handler left the
    streams unchecked)."""
    _, grpc_port = doors
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        for version in ("v1alpha", "v1"):
            method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
            stream = channel.stream_stream(method)
            with pytest.raises(grpc.RpcError) as refused:
                list(stream(iter([b"\x0a\xff"]), timeout=TIMEOUT))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, version
            assert refused.value.details() == (
                "the request is not a valid message of this call: Error parsing message with"
                " type 'grpc.reflection.v1alpha.ServerReflectionRequest': Wire format was"
                " corrupt"
            )
            (answer,) = stream(iter([b"\x3a\x00"]), timeout=TIMEOUT)  # list_services: ""
            assert b"tillpoint.v1.PosAgent" in answer


def test_the_hub_takes_a_newer_tills_unknown_field_and_refuses_bytes_that_do_not_decode(
    tmp_path: Path,
) -> None:
    """The contract §12: the hub, unlike the agent, reads a request with a field it does
    not know (a till upgraded before its hub); bytes that do not decode are INVALID_ARGUMENT
    with protobuf's reason there too, and a method it lacks is UNIMPLEMENTED (mutants made
    the hub refuse unknown fields, said only "DecodeError", or answered UNKNOWN)."""
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    try:
        channel = till.link.channel
        request = pb.ListTransactionsRequest(device_id="till-1").SerializeToString()
        newer = request + b"\xa0\x06\x01"  # field 100, a varint: none this hub knows
        for body in (request, newer):
            answer = _raw(channel, "/tillpoint.v1.Hub/ListTransactions", body)
            assert isinstance(answer, bytes), answer
            assert not pb.ListTransactionsReply.FromString(answer).more
        refused = _raw(channel, "/tillpoint.v1.Hub/ListTransactions", b"\x0a\xff")
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == (
            "the request is not a valid message of this call: Error parsing message with"
            " type 'tillpoint.v1.ListTransactionsRequest': Wire format was corrupt"
        )
        missing = _raw(channel, "/tillpoint.v1.Hub/Nothing", request)
        assert isinstance(missing, grpc.RpcError)
        assert missing.code() == grpc.StatusCode.UNIMPLEMENTED, missing
    finally:
        till.agent.close()
        hub.stop()


def test_an_object_where_a_list_goes_is_refused_by_the_client_in_http_s_words(
    doors: tuple[HttpServer, int],
) -> None:
    """The contract §12 (review 53, lead; mut53c's "Left"): `"lines": {…}` (an object, not
    a list) is "lines must be a list" at HTTP and at the Python client alike; the client
    read the object as the list's one line and said "Receipt: lines.priceMinor must be a
    whole number"."""
    web, grpc_port = doors
    with PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT, attempts=1) as till:
        for lines in ({"sku": "4601234000017", "qty": "1", "priceMinor": [1]}, {"sku": "x"}):
            body = {**receipt("r-obj"), "lines": lines}
            status, answer = post_json(web, "/v1/quote", body)
            assert status == 400
            assert answer["error"]["message"].endswith("lines must be a list"), answer
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert refused.value.message == "Receipt: lines must be a list", refused.value
