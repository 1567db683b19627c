"""What `Agent`'s calls return: frozen typed results (pure: no protobuf, no SQLite).

Each result has one JSON document, `to_json()`: the document the CLI prints with
`--json`, the HTTP interface answers, and the ledger stores (a receipt's and a refund's
`result`, a hold's `held_result`); `from_json` reads a stored one back, so an idempotent
replay answers with the same document. The proto messages of the gRPC edge are built
from these results in one place, `agent/wire.py`, never from the JSON.

The JSON keeps the shapes of the contract's messages in lowerCamelCase: an optional
field that is unset is `null` where the agent always said so (`offerId`, `tier`,
`balance`), and left out where it always was (a quote has no `state`, `deviceId`, `seq`;
`trace` only when asked; an empty `expiring`). Code reads the attributes; a result is
not a mapping (`to_json()` is its document). Two results of one type are equal when they
answer the same document: an idempotent replay equals the first answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # the gRPC client maps replies without importing pydantic
    from .models import Receipt, Refund


class _Result:
    """A result: equal to a result of its type that answers the same document (a stored
    result read back equals the answer it was stored from); never equal to a dict."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.to_json() == other.to_json()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class Card(_Result):
    """`CardOutcome`: FOUND with the customer, or the status (and why, INVALID/BLOCKED)."""

    status: str
    customer_id: str | None = None
    tier: str | None = None
    first_name: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.status != "FOUND" or self.customer_id is None:
            if self.reason:
                return {"status": self.status, "reason": self.reason}
            return {"status": self.status}
        return {
            "status": "FOUND",
            "customerId": self.customer_id,
            "tier": self.tier,
            "firstName": self.first_name,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Card:
        return cls(
            str(doc["status"]),
            doc.get("customerId"),
            doc.get("tier"),
            doc.get("firstName"),
            doc.get("reason"),
        )


class ExpiringBatch(NamedTuple):
    points: int
    expires_at: str  # RFC 3339 with offset


@dataclass(frozen=True, slots=True, eq=False)
class Balance(_Result):
    """Available and pending points, and the next batches that expire (soonest first)."""

    available_points: int
    pending_points: int
    expiring: tuple[ExpiringBatch, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "availablePoints": self.available_points,
            "pendingPoints": self.pending_points,
        }
        if self.expiring:  # proto3 JSON leaves an empty list out
            out["expiring"] = [
                {"points": b.points, "expiresAt": b.expires_at} for b in self.expiring
            ]
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Balance:
        return cls(
            int(doc["availablePoints"]),
            int(doc["pendingPoints"]),
            tuple(
                ExpiringBatch(int(b["points"]), str(b["expiresAt"]))
                for b in doc.get("expiring", ())
            ),
        )


# The rows of a result are named tuples: 50 of them are built for each 50-line quote,
# and a tuple is built at a fraction of a frozen dataclass's cost.
class ResultLine(NamedTuple):
    sku: str
    amount_minor: int
    discount_minor: int
    offer_id: str | None
    redeemed_minor: int
    earned_points: int


class CouponVerdict(NamedTuple):
    code: str
    status: str  # APPLIED or REJECTED
    reason: str  # "" when APPLIED


@dataclass(frozen=True, slots=True, eq=False)
class CheckoutResult(_Result):
    """A quote, a hold, a confirmed or cancelled receipt (`CheckoutResult`).

    `state`, `hold_expires_at`, `device_id`/`seq`, `trace`: None when the call has none
    (a quote has no state; only a HELD receipt an expiry; only a committed one a seq).
    `coupons` and `display` are None only in a result stored by an older agent."""

    receipt_id: str
    card: Card
    mode: str  # ONLINE or OFFLINE
    lines: tuple[ResultLine, ...]
    total_minor: int
    discount_minor: int
    redeemed_points: int
    payable_minor: int
    earned_points: int
    balance: Balance | None
    held_out: tuple[str, ...]
    printed_offers: tuple[str, ...]
    trace: Mapping[str, Any] | None = None  # the contract §17's document, as priced
    coupons: tuple[CouponVerdict, ...] | None = ()
    display: tuple[str, ...] | None = ()
    state: str | None = None  # HELD, CONFIRMED, CANCELLED
    hold_expires_at: str | None = None
    device_id: str | None = None
    seq: int | None = None
    # Read back from the ledger (`from_json`): the document as stored, which `to_json`
    # answers with, so a replay repeats the stored bytes whatever release stored them.
    stored: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def applied_codes(self) -> list[str]:
        """The coupon codes the receipt used, in its order."""
        return [v.code for v in self.coupons or () if v.status == "APPLIED"]

    def to_json(self) -> dict[str, Any]:
        if self.stored is not None:
            return dict(self.stored)
        return self.document(
            [
                {
                    "sku": sku,
                    "amountMinor": amount,
                    "discountMinor": discount,
                    "offerId": offer_id,
                    "redeemedMinor": redeemed,
                    "earnedPoints": earned,
                }
                for sku, amount, discount, offer_id, redeemed, earned in self.lines
            ]
        )

    def document(self, lines: list[Any]) -> dict[str, Any]:
        """A fresh result's document with `lines` as its lines (`json_text` writes the
        lines' text itself and asks for the rest with none)."""
        out: dict[str, Any] = {
            "receiptId": self.receipt_id,
            "card": self.card.to_json(),
            "mode": self.mode,
            "lines": lines,
            "totalMinor": self.total_minor,
            "discountMinor": self.discount_minor,
            "redeemedPoints": self.redeemed_points,
            "payableMinor": self.payable_minor,
            "earnedPoints": self.earned_points,
            "balance": self.balance.to_json() if self.balance is not None else None,
            "heldOut": list(self.held_out),
            "printedOffers": list(self.printed_offers),
        }
        if self.trace is not None:
            out["trace"] = self.trace
        if self.coupons is not None:
            out["coupons"] = [
                {"code": v.code, "status": v.status, "reason": v.reason} for v in self.coupons
            ]
        if self.display is not None:
            out["display"] = list(self.display)
        if self.state is not None:
            out["state"] = self.state
        if self.hold_expires_at is not None:
            out["holdExpiresAt"] = self.hold_expires_at
        if self.device_id is not None:
            out["deviceId"] = self.device_id
        if self.seq is not None:
            out["seq"] = self.seq
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CheckoutResult:
        """A stored result (the ledger's, any release's: a field it lacks is its default)."""
        balance = doc.get("balance")
        coupons = doc.get("coupons")
        display = doc.get("display")
        seq = doc.get("seq")
        card = doc.get("card")
        return cls(
            receipt_id=str(doc.get("receiptId", "")),
            card=Card.from_json(card) if card is not None else Card("UNKNOWN"),
            mode=str(doc.get("mode", "OFFLINE")),
            lines=tuple(
                ResultLine(
                    line.get("sku", ""),
                    line.get("amountMinor", 0),
                    line.get("discountMinor", 0),
                    line.get("offerId"),
                    line.get("redeemedMinor", 0),
                    line.get("earnedPoints", 0),
                )
                for line in doc.get("lines", ())
            ),
            total_minor=doc.get("totalMinor", 0),
            discount_minor=doc.get("discountMinor", 0),
            redeemed_points=doc.get("redeemedPoints", 0),
            payable_minor=doc.get("payableMinor", 0),
            earned_points=doc.get("earnedPoints", 0),
            balance=Balance.from_json(balance) if balance is not None else None,
            held_out=tuple(doc.get("heldOut", ())),
            printed_offers=tuple(doc.get("printedOffers", ())),
            trace=doc.get("trace"),
            coupons=None
            if coupons is None
            else tuple(CouponVerdict(v["code"], v["status"], v["reason"]) for v in coupons),
            display=None if display is None else tuple(display),
            state=doc.get("state"),
            hold_expires_at=doc.get("holdExpiresAt"),
            device_id=doc.get("deviceId"),
            seq=None if seq is None else int(seq),
            stored=doc,
        )


@dataclass(frozen=True, slots=True, eq=False)
class RefundResult(_Result):
    refund_id: str
    receipt_id: str
    returned_points: int
    taken_back_points: int
    balance: Balance | None
    negative_balance: bool
    device_id: str
    seq: int
    stored: Mapping[str, Any] | None = field(default=None, repr=False)  # as CheckoutResult's

    def to_json(self) -> dict[str, Any]:
        if self.stored is not None:
            return dict(self.stored)
        return {
            "refundId": self.refund_id,
            "receiptId": self.receipt_id,
            "returnedPoints": self.returned_points,
            "takenBackPoints": self.taken_back_points,
            "balance": self.balance.to_json() if self.balance is not None else None,
            "negativeBalance": self.negative_balance,
            "deviceId": self.device_id,
            "seq": self.seq,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RefundResult:
        """A stored refund's result (any release's: a field it lacks is its default)."""
        balance = doc.get("balance")
        return cls(
            str(doc.get("refundId", "")),
            str(doc.get("receiptId", "")),
            int(doc.get("returnedPoints", 0)),
            int(doc.get("takenBackPoints", 0)),
            Balance.from_json(balance) if balance is not None else None,
            bool(doc.get("negativeBalance", False)),
            str(doc.get("deviceId", "")),
            int(doc.get("seq", 0)),
            stored=doc,
        )


@dataclass(frozen=True, slots=True, eq=False)
class ScanResult(_Result):
    """A scanned text routed (the contract §13): a COUPON this till knows (code, offer)
    or a CARD (identify's answer)."""

    kind: str  # COUPON, OFFER (a printed offer's TP1- code) or CARD
    code: str | None = None
    offer_id: str | None = None
    card: Card | None = None

    def to_json(self) -> dict[str, Any]:
        if self.card is not None:
            return {"kind": self.kind, "card": self.card.to_json()}
        return {"kind": self.kind, "code": self.code, "offerId": self.offer_id}


@dataclass(frozen=True, slots=True, eq=False)
class TillStatus(_Result):
    """`Status`: the agent's own figures and device states, typed, and the fields the
    other parts of the till add (`parts`: the hub sync's `lastPullAt`, `lastError`,
    `setAside` ...), as those parts word them. A part that restates one of the agent's
    fields (the sync's `mode`, from its last exchange with the hub) is the value here."""

    device_id: str
    cache_version: int
    cache_issued_at: str
    last_seq: int
    outbox_depth: int
    mode: str
    print_queue_depth: int
    printer_last_error: str
    printer_state: str
    display_state: str
    scanner_state: str
    parts: Mapping[str, Any] = field(default_factory=dict)

    _OWN = (
        ("deviceId", "device_id"),
        ("cacheVersion", "cache_version"),
        ("cacheIssuedAt", "cache_issued_at"),
        ("lastSeq", "last_seq"),
        ("outboxDepth", "outbox_depth"),
        ("mode", "mode"),
        ("printQueueDepth", "print_queue_depth"),
        ("printerLastError", "printer_last_error"),
    )
    _DEVICES = (
        ("printerState", "printer_state"),
        ("displayState", "display_state"),
        ("scannerState", "scanner_state"),
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, name) for key, name in self._OWN}
        out.update(self.parts)
        out.update((key, getattr(self, name)) for key, name in self._DEVICES)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TillStatus:
        known = dict(cls._OWN + cls._DEVICES)
        return cls(
            **{name: doc[key] for key, name in known.items()},
            parts={k: v for k, v in doc.items() if k not in known},
        )


# ---------------------------------------------------------------- the JSON edges
# (the CLI imports these without protobuf; agent/wire.py re-exports them beside the proto
# mapping for the HTTP interface)


def json_of(
    result: Card | Balance | CheckoutResult | RefundResult | ScanResult | TillStatus,
) -> dict[str, Any]:
    """The JSON document of a result: what the CLI `--json` and HTTP print."""
    return result.to_json()


# `json.dumps(doc, ensure_ascii=False)`, the encoder `cli.json_document` writes with.
_DUMPS = json.JSONEncoder(ensure_ascii=False).encode
_QUOTED = json.encoder.encode_basestring  # a str as a JSON string, ensure_ascii=False


def json_text(
    result: Card | Balance | CheckoutResult | RefundResult | ScanResult | TillStatus,
) -> str:
    """`cli.json_document(json_of(result))`, byte for byte (a test holds them together):
    what HTTP answers. A fresh result's lines are written straight from its rows, not
    through a dict each (50 of them for a 50-line quote, then encoded one by one)."""
    if type(result) is not CheckoutResult or result.stored is not None or not result.lines:
        return _DUMPS(result.to_json()) + "\n"
    quoted = _QUOTED
    lines = ", ".join(  # an f-string each: 30 % less than a % format (ints, as to_json's)
        [
            f'{{"sku": {quoted(sku)}, "amountMinor": {amount}, "discountMinor": {discount},'
            f' "offerId": {"null" if offer is None else quoted(offer)},'
            f' "redeemedMinor": {redeemed}, "earnedPoints": {earned}}}'
            for sku, amount, discount, offer, redeemed, earned in result.lines
        ]
    )
    # The key "lines" is the first `"lines": []` of the text: in a JSON string every `"` is
    # escaped, so an unescaped `"lines": [` can only be a key; receiptId, card, mode come first.
    text = _DUMPS(result.document([]))  # the rest, not a copy of the result without lines
    return text.replace('"lines": []', f'"lines": [{lines}]', 1) + "\n"


def receipt_from_json(data: Any) -> Receipt:
    """A receipt the CLI or HTTP read (a JSON document): validated, or one InputError line."""
    models = _models()
    receipt: Receipt = models.parse(models.Receipt, data, "receipt", request=True)
    return receipt


def refund_from_json(data: Any) -> Refund:
    models = _models()
    refund: Refund = models.parse(models.Refund, data, "refund", request=True)
    return refund


def _models() -> Any:
    """agent/models.py, imported at the first request (the gRPC client, which maps its
    replies here, never imports pydantic), then kept: an import statement per request
    costs a few µs."""
    global _MODELS
    if _MODELS is None:
        from . import models

        _MODELS = models
    return _MODELS


_MODELS: Any = None


__all__ = [
    "Balance",
    "Card",
    "CheckoutResult",
    "CouponVerdict",
    "ExpiringBatch",
    "RefundResult",
    "ResultLine",
    "ScanResult",
    "TillStatus",
    "json_of",
    "json_text",
    "receipt_from_json",
    "refund_from_json",
]
