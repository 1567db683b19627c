"""The one mapper between the agent's typed results and models and the `tillpoint.v1`
messages (gRPC) or their JSON (CLI `--json`, HTTP).

- Requests: a proto `Receipt`/`Refund` becomes the `models.Receipt`/`Refund` the agent
  takes (`receipt_of`, `refund_of`); the JSON edges parse theirs with `receipt_from_json`,
  `refund_from_json` (the same one-line refusals).
- Results: `message_of(result)` builds the proto message field by field (the Quote and
  Checkout hot path: a fraction of json_format's cost for a 50-line receipt), and
  `json_of(result)` is the JSON document the CLI and HTTP print (`result.to_json()`,
  the document the ledger stores too). The JSON half is written in `agent/results.py`
  (pure) and re-exported here, so that the CLI prints it without importing protobuf
  (about 20 ms of every command's start). A Hypothesis test holds them together:
  `ParseDict(json_of(r)) == message_of(r)` for any result.
- Generic proto3 JSON: `message_json` (what `--json` prints of a message: every field,
  int64 as numbers; `status`, sync's and the printer's commands), `reply_json` (what the
  gRPC client `agent/client.py` returns), `message_from_json` (the client's requests),
  `status_message`/`status_json`.
- Replies read back as typed results: `checkout_of`, `refund_of_message` (tests, tools).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tillpoint.v1 import tillpoint_pb2 as pb

from .advice import whole_number_advice
from .limits import INT64_MAX, INT64_MIN, TEXT_MAX
from .results import (
    Balance,
    Card,
    CheckoutResult,
    CouponVerdict,
    ExpiringBatch,
    RefundResult,
    ResultLine,
    TillStatus,
    json_of,
    receipt_from_json,
    refund_from_json,
)

if TYPE_CHECKING:
    from .models import Receipt, Refund

M = TypeVar("M", bound=Message)
_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


# ---------------------------------------------------------------- generic proto3 JSON


def to_dict(message: Message) -> dict[str, Any]:
    """A message as proto3 JSON (lowerCamelCase, unset fields left out)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


def to_message(data: dict[str, Any], message: M, *, ignore_unknown: bool = False) -> M:
    json_format.ParseDict(data, message, ignore_unknown_fields=ignore_unknown)
    return message


def message_from_json(descriptor: Descriptor, data: Mapping[str, Any]) -> Message:
    """A request message of any RPC from its proto3 JSON (json_format.ParseError if bad),
    its whole numbers read and its fields named as the agent reads them (`_whole_numbers`)."""
    _whole_numbers(descriptor, data, "")
    message = message_factory.GetMessageClass(descriptor)()
    json_format.ParseDict(_without_nulls(data), message)
    return message


def _without_nulls(value: Any) -> Any:
    """`value` without the object fields set to `null`, at every depth (a `null` item of
    a list stays, refused): a field left out, as HTTP and the CLI read a request
    (`models.without_nulls`). ParseDict read a null as "clear the field", so
    `{"priceMinor": 8990, "price_minor": null}` sent a line with no price (review 37)."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


# An integer written as a string, as the agent reads one (`models.INT64_TEXT`): ASCII
# digits, a minus sign first if any, nothing else.
_WHOLE_TEXT = re.compile(r"-?[0-9]+")
_SIGNED64 = frozenset(
    {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
)
_INTEGERS = _INT64 | {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}


def _whole_numbers(descriptor: Descriptor, data: Any, where: str) -> None:
    """Refuse (json_format.ParseError, in the agent's words) an integer field the agent's
    JSON doors refuse (CONTRACT §2, §10): `ParseDict` reads one with Python's `int()`, so
    the Python client sent "٣" as 3, full-width digits, "+5", "1_000", "8990.0" and the
    float 8990.0 as numbers where HTTP and the CLI answer 400 (review 36, rev36c). A field
    named under both its names (`receiptId` and `receipt_id`) is refused here too, as
    HTTP and the CLI refuse it (review 37)."""
    if not isinstance(data, Mapping):
        return  # ParseDict says what is wrong with it
    fields = _fields_of(descriptor)
    named: dict[int, str] = {}  # field number -> the key that named it
    for key, value in data.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        if named.setdefault(field.number, key) != key:
            # under both names (`receiptId` and `receipt_id`): ParseDict kept the last one
            # and a sale went under the id written last, where HTTP and the CLI refuse it
            # (review 37, rev37d)
            place = f"{where}.{field.json_name}" if where else field.json_name
            raise json_format.ParseError(
                f"{place} is given twice ({field.name} and {field.json_name})"
            )
        integer = field.type in _INTEGERS
        inner = field.message_type
        if not integer and (inner is None or inner.GetOptions().map_entry):
            continue
        name = f"{where}.{field.json_name}" if where else field.json_name
        many = field.is_repeated and isinstance(value, list)
        if field.is_repeated and not many:
            # an object where a list goes: its fields were read as the list's one item
            # ("lines.priceMinor must be a whole number", where HTTP says "lines must be a
            # list"; review 53, mut53c)
            raise json_format.ParseError(f"{name} must be a list")
        for i, item in enumerate(value if many else (value,)):
            if integer:
                number = item if type(item) is int else None
                if isinstance(item, str) and len(item) > TEXT_MAX:  # before int(): 4300 digits
                    place = f"{name}[{i}]" if many else name
                    raise json_format.ParseError(
                        f"{place} is too long (at most {TEXT_MAX} characters)"
                    )
                if number is None and isinstance(item, str) and _WHOLE_TEXT.fullmatch(item):
                    number = int(item)
                if number is None:
                    _whole_number(f"{name}[{i}]" if many else name, item)
                elif field.type in _SIGNED64 and not INT64_MIN <= number <= INT64_MAX:
                    place = f"{name}[{i}]" if many else name
                    raise json_format.ParseError(f"{place} does not fit in a signed 64-bit integer")
            elif inner is not None and isinstance(item, Mapping):
                _whole_numbers(inner, item, f"{name}[{i}]" if many else name)


_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _fields_of(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by both names ParseDict reads (camelCase and the proto's)."""
    found = _FIELDS.get(descriptor.full_name)
    if found is None:
        found = {**descriptor.fields_by_name, **descriptor.fields_by_camelcase_name}
        _FIELDS[descriptor.full_name] = found
    return found


def _whole_number(place: str, value: Any) -> None:
    """Raise the refusal of `value`, an integer field's value the agent would refuse."""
    if isinstance(value, bool):
        raise json_format.ParseError(f"{place} must be a whole number, not true/false")
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        what = "is written with an exponent" if "e" in text else "has a decimal point"
        raise json_format.ParseError(
            f"{place}: the number {text} {what}: {whole_number_advice(place)}"
        )
    if not isinstance(value, int):  # an int subclass (an IntEnum) is ParseDict's to read
        raise json_format.ParseError(f"{place} must be a whole number")


def message_json(message: Message) -> dict[str, Any]:
    """The message as the CLI prints it with --json (docs/CONTRACT.md §1): proto3 JSON with
    every field present, empty ones too, so a script sees the same keys every time; keys in
    the order of the proto, 64-bit integers as JSON numbers (proto3 JSON parsers accept a
    number or a string), an unset message field as null. `tillpoint status --json` and the
    gRPC `Status` go through `message_json` and `status_message`, so both say the same
    thing field by field."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        always_print_fields_with_no_presence=True,
    )
    return _shape(message.DESCRIPTOR, data)


def _shape(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Field order, int64 as numbers, an unset message field as null (not left out)."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        name = field.json_name
        if name not in data:
            if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
                out[name] = None
            continue
        value = data[name]
        if field.type in _INT64:
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            inner: Any = field.message_type
            if inner.GetOptions().map_entry:
                pass  # a map: keys are strings, values left as json_format gives them
            elif isinstance(value, list):
                value = [_shape(inner, v) for v in value]
            elif isinstance(value, dict):
                value = _shape(inner, value)
        out[name] = value
    return out


def reply_json(message: Message) -> dict[str, Any]:
    """A reply as the gRPC client (`agent/client.py`) returns it: proto3 JSON with every
    field present and int64 values as ints; a balance with no expiring batches leaves
    `expiring` out, as the agent's JSON does (the contract §16)."""
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        always_print_fields_with_no_presence=True,
    )
    _ints(message.DESCRIPTOR, data)
    for balance in (data, data.get("balance")):
        if isinstance(balance, dict) and balance.get("expiring") == []:
            del balance["expiring"]
    return data


def _ints(descriptor: Any, data: dict[str, Any]) -> None:
    for field in descriptor.fields:
        name = field.json_name
        if name not in data:
            continue
        value = data[name]
        if field.type in _INT64:
            data[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            rows = value if isinstance(value, list) else [value]
            for row in rows:
                if isinstance(row, dict):
                    _ints(field.message_type, row)


# ---------------------------------------------------------------- status


def status_message(status: TillStatus | Mapping[str, Any]) -> pb.Status:
    """`Agent.status()` as the proto `Status` (its parts' fields are json_format's to map);
    a key the proto lacks is a bug, not dropped."""
    doc = status.to_json() if isinstance(status, TillStatus) else dict(status)
    return json_format.ParseDict(doc, pb.Status(), ignore_unknown_fields=False)


def status_json(status: TillStatus | Mapping[str, Any]) -> dict[str, Any]:
    """`tillpoint status --json`: the same document a gRPC client gets from `message_json`."""
    return message_json(status_message(status))


# ---------------------------------------------------------------- requests


def receipt_dict(message: pb.Receipt) -> dict[str, Any]:
    """The receipt as `to_dict` gives it, field by field: the Quote/Checkout hot path.

    Like proto3 JSON it leaves out empty strings and unset values, but int64 values stay
    ints rather than JSON strings: the same receipt after validation, at a fraction of
    json_format's cost for 50 lines. The fields a receipt needs (`at`, `lines`, a line's
    `sku` and `qty`) are given as sent, empty ones too: proto3 sends an empty text or list
    as none, and the same receipt was refused as "lines is required" over gRPC and "lines
    must not be empty" over HTTP and the CLI (the contract §10: one message for one
    request, whichever door).
    """
    data: dict[str, Any] = {}
    for name, value in (
        ("receiptId", message.receipt_id),
        ("storeId", message.store_id),
        ("tillId", message.till_id),
        ("card", message.card),
    ):
        if value:
            data[name] = value
    data["at"] = message.at
    lines = []
    for line in message.lines:
        row: dict[str, Any] = {"sku": line.sku, "qty": line.qty}
        if line.HasField("price_minor"):
            row["priceMinor"] = line.price_minor
        if line.HasField("amount_minor"):
            row["amountMinor"] = line.amount_minor
        lines.append(row)
    data["lines"] = lines
    if message.redeem_points:
        data["redeemPoints"] = message.redeem_points
    if message.explain:
        data["explain"] = True
    if message.coupons:
        data["coupons"] = list(message.coupons)
    return data


def receipt_of(message: pb.Receipt) -> Receipt:
    return receipt_from_json(_ids(receipt_dict(message), "receiptId"))


def refund_of(message: pb.Refund) -> Refund:
    data = _ids(to_dict(message), "refundId", "receiptId", "at")
    data["lines"] = [_ids(line, "sku", "qty") for line in data.get("lines", [])]
    return refund_from_json(data)


def _ids(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The message's ids (and a refund's other texts) as sent: proto3 sends an empty text
    as none, and the receipt was refused as "receiptId is required" over gRPC, "receiptId
    must not be empty" over HTTP and the CLI for the same empty id (the contract §10: one
    message for one request)."""
    for key in keys:
        data.setdefault(key, "")
    return data


# ---------------------------------------------------------------- results → proto


def card_message(card: Card) -> pb.CardOutcome:
    outcome = pb.CardOutcome(status=pb.IdentifyStatus.Value(card.status))
    if card.status == "FOUND" and card.customer_id is not None:
        outcome.customer_id = card.customer_id
        if card.tier is not None:
            outcome.tier = card.tier
        if card.first_name is not None:
            outcome.first_name = card.first_name
    elif card.reason:
        outcome.reason = card.reason
    return outcome


def balance_message(balance: Balance, out: pb.Balance | None = None) -> pb.Balance:
    message = pb.Balance() if out is None else out
    message.available_points = balance.available_points
    message.pending_points = balance.pending_points
    for batch in balance.expiring:
        message.expiring.add(points=batch.points, expires_at=batch.expires_at)
    return message


def checkout_message(result: CheckoutResult) -> pb.CheckoutResult:
    """A CheckoutResult built field by field: the Quote/Checkout hot path."""
    lines = []
    for line in result.lines:
        out = pb.ResultLine(
            sku=line.sku,
            amount_minor=line.amount_minor,
            discount_minor=line.discount_minor,
            redeemed_minor=line.redeemed_minor,
            earned_points=line.earned_points,
        )
        if line.offer_id is not None:
            out.offer_id = line.offer_id
        lines.append(out)
    message = pb.CheckoutResult(
        receipt_id=result.receipt_id,
        card=card_message(result.card),
        mode=pb.Mode.Value(result.mode),
        lines=lines,
        total_minor=result.total_minor,
        discount_minor=result.discount_minor,
        redeemed_points=result.redeemed_points,
        payable_minor=result.payable_minor,
        earned_points=result.earned_points,
        held_out=result.held_out,
        printed_offers=result.printed_offers,
        display=result.display or (),
    )
    if result.seq:
        message.device_id = result.device_id or ""
        message.seq = result.seq
    if result.balance is not None:
        balance_message(result.balance, message.balance)
    if result.state:
        message.state = pb.ReceiptState.Value(result.state)
    if result.hold_expires_at:
        message.hold_expires_at = result.hold_expires_at
    for verdict in result.coupons or ():
        message.coupons.add(code=verdict.code, status=verdict.status, reason=verdict.reason)
    if result.trace is not None:
        json_format.ParseDict(dict(result.trace), message.trace)
    return message


def refund_message(result: RefundResult) -> pb.RefundResult:
    message = pb.RefundResult(
        refund_id=result.refund_id,
        receipt_id=result.receipt_id,
        returned_points=result.returned_points,
        taken_back_points=result.taken_back_points,
        negative_balance=result.negative_balance,
        device_id=result.device_id,
        seq=result.seq,
    )
    if result.balance is not None:
        balance_message(result.balance, message.balance)
    return message


@overload
def message_of(result: Card) -> pb.CardOutcome: ...
@overload
def message_of(result: Balance) -> pb.Balance: ...
@overload
def message_of(result: CheckoutResult) -> pb.CheckoutResult: ...
@overload
def message_of(result: RefundResult) -> pb.RefundResult: ...
def message_of(result: Card | Balance | CheckoutResult | RefundResult) -> Message:
    """A typed result as its `tillpoint.v1` message."""
    if isinstance(result, CheckoutResult):
        return checkout_message(result)
    if isinstance(result, Card):
        return card_message(result)
    if isinstance(result, Balance):
        return balance_message(result)
    return refund_message(result)


# ---------------------------------------------------------------- proto → results (client)


def card_of(message: pb.CardOutcome) -> Card:
    has = message.HasField
    return Card(
        pb.IdentifyStatus.Name(message.status),
        message.customer_id if has("customer_id") else None,
        message.tier if has("tier") else None,
        message.first_name if has("first_name") else None,
        message.reason if has("reason") else None,
    )


def balance_of(message: pb.Balance) -> Balance:
    return Balance(
        message.available_points,
        message.pending_points,
        tuple(ExpiringBatch(b.points, b.expires_at) for b in message.expiring),
    )


def checkout_of(message: pb.CheckoutResult) -> CheckoutResult:
    return CheckoutResult(
        receipt_id=message.receipt_id,
        card=card_of(message.card),
        mode=pb.Mode.Name(message.mode),
        lines=tuple(
            ResultLine(
                line.sku,
                line.amount_minor,
                line.discount_minor,
                line.offer_id if line.HasField("offer_id") else None,
                line.redeemed_minor,
                line.earned_points,
            )
            for line in message.lines
        ),
        total_minor=message.total_minor,
        discount_minor=message.discount_minor,
        redeemed_points=message.redeemed_points,
        payable_minor=message.payable_minor,
        earned_points=message.earned_points,
        balance=balance_of(message.balance) if message.HasField("balance") else None,
        held_out=tuple(message.held_out),
        printed_offers=tuple(message.printed_offers),
        trace=to_dict(message.trace) if message.HasField("trace") else None,
        coupons=tuple(CouponVerdict(v.code, v.status, v.reason) for v in message.coupons),
        display=tuple(message.display),
        state=pb.ReceiptState.Name(message.state) if message.state else None,
        hold_expires_at=message.hold_expires_at if message.HasField("hold_expires_at") else None,
        device_id=message.device_id if message.seq else None,
        seq=message.seq if message.seq else None,
    )


def refund_of_message(message: pb.RefundResult) -> RefundResult:
    return RefundResult(
        refund_id=message.refund_id,
        receipt_id=message.receipt_id,
        returned_points=message.returned_points,
        taken_back_points=message.taken_back_points,
        balance=balance_of(message.balance) if message.HasField("balance") else None,
        negative_balance=message.negative_balance,
        device_id=message.device_id,
        seq=message.seq,
    )


__all__ = [
    "balance_message",
    "card_message",
    "checkout_message",
    "checkout_of",
    "json_of",
    "message_from_json",
    "message_json",
    "message_of",
    "receipt_dict",
    "receipt_from_json",
    "receipt_of",
    "refund_from_json",
    "refund_message",
    "refund_of",
    "reply_json",
    "status_json",
    "status_message",
    "to_dict",
    "to_message",
]
