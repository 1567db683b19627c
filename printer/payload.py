"""The print job payload: what the agent stores in ``print_jobs.payload`` after a commit.

::

    {"receiptId": "s1-t1-000123", "at": "2026-11-23T10:15:00+03:00", "firstName": "Анна",
     "offers": [{"id": "o-1", "text": "−15% на молоко",
                 "validFrom": "2026-11-01T00:00:00+03:00",
                 "validTo": "2026-11-30T23:59:59+03:00", "code": "TP1-o-1"}]}

``firstName``, ``validFrom``, ``validTo`` and ``code`` may be absent or "" (``code`` then
defaults to :func:`tillpoint.printer.codes.offer_code` of the id). Unknown keys are ignored so
that a newer agent can add fields without breaking an older printer module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from tillpoint.agent.errors import InputError
from tillpoint.printer.codes import offer_code
from tillpoint.printer.text import format_decimal, format_money

__all__ = [
    "OfferNow",
    "PrintOffer",
    "PrintPayload",
    "default_text",
    "offer_text",
    "parse_payload",
    "payload_for_checkout",
    "payload_source_for_checkout",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


# What a payload holds at most; the agent cuts longer words to fit (`_payload_data`): a
# coupon with its text cut prints, and one job's offers never fail for one long text.
TEXT_MAX = 1000
FIRST_NAME_MAX = 100
OFFERS_MAX = 50  # the agent prints no more on one receipt (pricing.OFFERS_PRINTED_MAX)


class PrintOffer(_Model):
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=TEXT_MAX)
    valid_from: AwareDatetime | None = Field(None, alias="validFrom")
    valid_to: AwareDatetime | None = Field(None, alias="validTo")
    # TP1- and an id of 200 characters, each percent-encoded as up to 4 UTF-8 bytes
    code: str | None = Field(None, min_length=1, max_length=2404)

    @field_validator("valid_from", "valid_to", "code", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value  # the agent writes "" for an open-ended offer

    @field_validator("code")
    @classmethod
    def _ascii_code(cls, value: str | None) -> str | None:
        if value is not None and not all(0x20 <= ord(c) <= 0x7E for c in value):
            raise ValueError("code must be printable ASCII")
        return value

    @property
    def scan_code(self) -> str:
        """What the QR code or barcode encodes."""
        return self.code or offer_code(self.id)


class PrintPayload(_Model):
    receipt_id: str = Field(alias="receiptId", min_length=1, max_length=200)
    at: AwareDatetime | None = None
    first_name: str | None = Field(None, alias="firstName", max_length=FIRST_NAME_MAX)
    offers: list[PrintOffer] = Field(default_factory=list, max_length=OFFERS_MAX)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
    return f"{where}: {err.get('msg', 'invalid')}"


def parse_payload(raw: str | bytes | Mapping[str, Any]) -> PrintPayload:
    """Parse and check a payload (JSON text or a dict); raise InputError with one line."""
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    except (ValueError, TypeError) as exc:
        raise InputError(f"print job payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("print job payload must be a JSON object")
    try:
        return PrintPayload.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"bad print job payload: {_one_line(exc)}") from None


class OfferNow(NamedTuple):
    """What the snapshot offers now of an offer a queued coupon holds (the print worker
    asks before it prints, §7): its end (None: none) and its words (`offer_text`)."""

    valid_to: datetime | None
    text: str


def offer_text(offer: Mapping[str, Any]) -> str:
    """The words a snapshot offer prints with: its ``printText``, else what it gives
    (`default_text`), cut to ``TEXT_MAX``: what a sale's payload holds for it."""
    text = _offer_dict(offer)["text"]
    return text if isinstance(text, str) else ""


def _offer_dict(offer: Mapping[str, Any]) -> dict[str, Any]:
    """Accept a snapshot offer (``printText``) or a payload offer (``text``). A snapshot
    offer marked printable without a ``printText`` prints what it gives (`default_text`)
    rather than a coupon with no words on it."""
    out: dict[str, Any] = {"id": offer.get("id")}
    text = offer.get("text", offer.get("printText"))
    if (text is None or (isinstance(text, str) and not text.strip())) and "kind" in offer:
        try:
            text = default_text(offer)
        except Exception:  # words for a coupon never cost a sale (the offers are validated)
            text = ANY_OFFER
    if text is None:
        text = ""
    out["text"] = text[:TEXT_MAX] if isinstance(text, str) else text  # a cut text still prints
    for key in ("validFrom", "validTo", "code"):
        if offer.get(key) is not None:
            out[key] = offer[key]
    if "code" not in out and isinstance(out["id"], str):
        with contextlib.suppress(ValueError):  # validation below reports a bad id
            out["code"] = offer_code(out["id"])
    return out


# The words of a printable offer whose kind says nothing printable.
ANY_OFFER = "Предложение для вас"


def default_text(offer: Mapping[str, Any]) -> str:
    """The coupon's words for a printable snapshot offer that has no ``printText``: what it
    gives, by its kind (the contract §5), in the display's language."""
    kind, value = offer.get("kind"), offer.get("value", "")
    if kind == "PERCENT_OFF":
        return f"Скидка {format_decimal(value)}% на товары акции"
    if kind == "AMOUNT_OFF":
        with contextlib.suppress(ValueError, TypeError, ArithmeticError):
            minor = Decimal(str(value))
            if minor == minor.to_integral_value():
                return f"Скидка {format_money(int(minor))} руб. за единицу товара акции"
        return "Скидка на товары акции"
    if kind == "RECEIPT_PERCENT_OFF":
        return f"Скидка {format_decimal(value)}% на покупку"
    if kind == "BONUS_MULTIPLIER":
        return f"Бонусы x{format_decimal(value)} на товары акции"
    if kind == "EXTRA_POINTS":
        return f"+{format_decimal(value)} бонусов за покупку"
    if kind == "MULTIBUY":
        buy, free = (
            format_decimal(offer.get("buyQty", "")),
            format_decimal(offer.get("freeQty", "")),
        )
        return f"{buy} + {free} в подарок на товары акции"
    if kind == "QUANTITY_PRICE":
        return "Особая цена на товары акции"
    return ANY_OFFER


def payload_for_checkout(
    receipt_id: str,
    at: str | None,
    first_name: str | None,
    offers: Sequence[Mapping[str, Any]],
    zone: tzinfo | None = None,
) -> dict[str, Any]:
    """Build the ``print_jobs.payload`` dict for a committed receipt.

    ``offers`` are snapshot offers (``id``, ``printText``, ``validFrom``, ``validTo``) in print
    order, as the agent picked them (the contract §7); each gets its ``code``. Only the first
    name is kept; times in ``zone`` when given (`payload_source_for_checkout`). Raises
    InputError when something would not print.
    """
    data = _payload_data(receipt_id, at, first_name, offers)
    if zone is not None:
        _to_zone(data, zone)
    text = parse_payload(data).to_json()
    return json.loads(text)  # type: ignore[no-any-return]


def payload_source_for_checkout(
    receipt_id: str,
    at: str | None,
    first_name: str | None,
    offers: Sequence[Mapping[str, Any]],
    zone: tzinfo | None = None,
) -> str:
    """The ``print_jobs.payload`` text the agent stores for a committed receipt: the
    payload of `payload_for_checkout`, not checked here. The print worker checks it when
    it takes the job (`parse_payload`), as every job; one that would not print fails there
    (a FAILED job with the reason), which costs the coupon, never the sale. ``zone``: the
    store's time zone (``program.timezone``), in which the paper shows the sale's time and
    each offer's validity, however the hub or the POS wrote their offsets (§2)."""
    data = _payload_data(receipt_id, at, first_name, offers)
    if zone is not None:
        _to_zone(data, zone)
    return json.dumps(data, ensure_ascii=False)


def _local_text(value: Any, zone: tzinfo) -> Any:
    """An RFC 3339 time as the same moment in ``zone``; anything else as it is (the print
    worker's check reports a time it cannot read). A moment that has no local time in
    ``zone`` (an offer "valid to" 9999-12-31T23:59:59Z is in year 10000 in Moscow) is
    printed as written: raising here failed the checkout for a coupon's date. RFC 3339's
    lowercase "t" and "z" (§2) are read as their capitals: `fromisoformat` refuses them, and
    such a time was left as written, printed in UTC (review 59, mut59c)."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.upper())
        if moment.tzinfo is None:
            return value
        return moment.astimezone(zone).isoformat()
    except (ValueError, OverflowError):
        return value


def _to_zone(data: dict[str, Any], zone: tzinfo) -> None:
    if "at" in data:
        data["at"] = _local_text(data["at"], zone)
    for offer in data["offers"]:
        for key in ("validFrom", "validTo"):
            if key in offer:
                offer[key] = _local_text(offer[key], zone)


def _payload_data(
    receipt_id: str,
    at: str | None,
    first_name: str | None,
    offers: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    data: dict[str, Any] = {"receiptId": receipt_id, "offers": [_offer_dict(o) for o in offers]}
    if at is not None:
        data["at"] = at
    if first_name:
        data["firstName"] = first_name[:FIRST_NAME_MAX]
    return data
