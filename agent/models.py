"""The contract's shapes (§3, §5, §6) as frozen, validated models.

The CLI and the gRPC server both turn their input into a plain dict in the proto3 JSON
mapping and validate it here, so there is one set of rules for bad input. The models are
frozen so the pricing core can take them as plain values.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticUseDefault, core_schema

from .errors import InputError
from .expiry import last_instant
from .limits import INT64_MAX, INT64_MIN, TEXT_MAX
from .money import line_amount, round_half_up_ratio

# An int64 written as a string (proto3 JSON): digits, a minus sign first if any, no blanks.
INT64_TEXT = r"-?[0-9]+"
# The highest `appliedThrough` a snapshot may carry: a device numbers its transactions
# and coupons on above it (§9), so it must leave room below int64's maximum (which,
# accepted, made every later sale of the till fail). 2**53 - 1 is far above any count a
# hub reaches and leaves 2**63 - 2**53 numbers above it.
SEQ_MAX = 2**53 - 1

_QTY_RE = re.compile(r"^[0-9]+(\.[0-9]{1,3})?$")
_DECIMAL_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def check_text(name: str, value: str) -> str:
    """A request's text field (identify's text, balance's card): at most `TEXT_MAX` characters."""
    if len(value) > TEXT_MAX:
        raise InputError(f"{name} is too long (at most {TEXT_MAX} characters)")
    return value


def _not_too_long(value: Any) -> None:
    """Strings parsed by our own validators: refused before parsing, never echoed."""
    if isinstance(value, str) and len(value) > TEXT_MAX:
        raise ValueError(f"is too long (at most {TEXT_MAX} characters)")


def _int64(value: Any) -> int:
    """An int64 as proto3 JSON allows it: a JSON integer or a string of one."""
    _not_too_long(value)
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(INT64_TEXT, value):  # no blanks, as protobuf
        number = int(value)
    elif isinstance(value, float):
        raise ValueError("must be a whole number (no fractions, no floats)")
    else:
        raise ValueError("must be a whole number")
    if not fits_int64(number):
        raise ValueError("does not fit in a signed 64-bit integer")
    return number


def fits_int64(number: int) -> bool:
    """Every integer of the proto is an int64: a figure outside it cannot be sent."""
    return INT64_MIN <= number <= INT64_MAX


def _non_negative(value: Any) -> int:
    number = _int64(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive(value: Any) -> int:
    number = _int64(value)
    if number <= 0:
        raise ValueError("must be greater than zero")
    return number


def _qty(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        value = str(value)
    _not_too_long(value)
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "2" or "0.512"')
    if not _QTY_RE.fullmatch(value):
        raise ValueError(f'"{value}" is not a quantity: a positive decimal with at most 3 decimals')
    qty = Decimal(value)
    if qty <= 0:
        raise ValueError(f'"{value}" is not a quantity: it must be greater than zero')
    return qty


def _decimal(value: Any) -> Decimal:
    """A decimal written as a JSON string (proto) or a JSON integer (never a float)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (bool, float)):
        raise ValueError('must be a decimal string such as "7.5"')
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str) and _DECIMAL_RE.fullmatch(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:  # pragma: no cover - the pattern already rules this out
            pass
    raise ValueError('must be a decimal string such as "7.5"')


def _non_negative_decimal(value: Any) -> Decimal:
    number = _decimal(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


# RFC 3339's date-time (§5.6), a lowercase "t" and "z" and a space for the "T" allowed,
# and its seconds optional: Java's `OffsetDateTime.toString()` leaves them out when they
# are 0 (one sale a minute of a Java till). ISO 8601's other spellings ("20261123T1015",
# "2026-W48-1", an offset "+0300") and a unix time are not times of the contract (§2);
# fractions beyond microseconds are cut, as a Java `Instant`'s nanoseconds would be.
_DAY_TIME = (
    r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]"
    r"(:[0-5][0-9](\.[0-9]{1,9})?)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
RFC3339 = r"^[0-9]{4}" + _DAY_TIME
# What pydantic-core parses itself: the years 1000-9998, which are times in UTC whatever
# their offset; "9999-12-31T23:59:59-12:00" (no time in UTC) and the like go on to
# `_timestamp` (`_time_field`), which checks them.
RFC3339_NATIVE = r"^(1[0-9]{3}|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])" + _DAY_TIME
_RFC3339_RE = re.compile(RFC3339)
_NO_OFFSET_RE = re.compile(RFC3339.removesuffix("([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$") + "$")


def _time_field(value: Any, info: ValidationInfo) -> datetime:
    """`_timestamp` as a field's validator: the validation context says whether the row
    is read back from the cache (`STORED`)."""
    return _timestamp(value, stored=_stored(info))


def _timestamp(value: Any, *, stored: bool = False) -> datetime:
    """A time of the contract (§2). A row read back from the cache (`STORED`) keeps the
    wider reading of the release that stored it (ISO 8601 with an offset: a customer's
    `expiresAt` written "+0300" in a snapshot loaded before the RFC 3339 rule), so an
    upgraded till reads its cache as it stands."""
    _not_too_long(value)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and _LEAP_RE.match(value.strip()):
        return _leap_second(value, stored=stored)
    elif isinstance(value, str):
        text = value.strip()
        if _NO_OFFSET_RE.match(text):  # the user's own time, with the offset it lacks
            raise ValueError(f'"{value}" has no offset: add one, as in "{text}+03:00"')
        leap = _LEAP_NO_OFFSET_RE.match(text)  # as any time without one (review 32)
        if leap and _NO_OFFSET_RE.match(f"{leap[1]}:59{leap[3] or ''}"):
            raise ValueError(f'"{value}" has no offset: add one, as in "{_leap_example(leap)}"')
        if not stored and not _RFC3339_RE.match(text):
            raise ValueError(
                f'"{value}" is not an RFC 3339 time with an offset, '
                "such as 2026-11-23T10:15:00+03:00"
            )
        if stored and "T" not in text.upper() and " " not in text:
            raise ValueError(f'"{value}" is not a time with an offset')
        try:
            moment = datetime.fromisoformat(text.upper())
        except ValueError:  # a day the month does not have
            raise ValueError(f'"{value}" is not a day of the calendar') from None
    else:
        raise ValueError("must be an RFC 3339 time string with an offset")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f'"{value}" has no offset: write it as 2026-11-23T10:15:00+03:00')
    try:  # every time is compared and stored in UTC ("9999-12-31T23:59:59-12:00" is not one)
        moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f'"{value}" is out of range') from None
    return moment


# RFC 3339 §5.6/§5.7: a time's second is 60 in a leap second (23:59:60 in UTC)
_LEAP_RE = re.compile(
    r"^(.*[Tt ][0-9]{2}:[0-9]{2}):60((\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
)


# A leap second's time without an offset: the "has no offset" message, as for any time.
_LEAP_NO_OFFSET_RE = re.compile(r"^(.*[Tt ]([0-9]{2}):[0-9]{2}):60(\.[0-9]{1,9})?$")


def _leap_example(found: re.Match[str]) -> str:
    """The time `found` with an offset the till takes: the whole hours that make it
    23:59:60 in UTC when it is a minute's 59th ("23:59:60Z", "02:59:60+03:00",
    "18:59:60-05:00"), else "+03:00" as for any time (the leap-second rule then says
    why second 60 is refused there)."""
    text, hour = found[0], int(found[2])
    if not found[1].endswith(":59"):
        return f"{text}+03:00"
    if hour == 23:
        return f"{text}Z"
    ahead = hour + 1 if hour + 1 <= 14 else hour - 23  # UTC offsets go from -12 to +14
    return f"{text}{'+' if ahead > 0 else '-'}{abs(ahead):02d}:00"


def _leap_second(value: str, *, stored: bool) -> datetime:
    """A time in a leap second ("2016-12-31T23:59:60Z", "2017-01-01T02:59:60+03:00"): the
    last instant of second 59 (a POSIX clock, and Python's, has no second 60), so it sorts
    after every time of that second and before the next minute; an end written so holds
    through the leap second (`expiry.last_instant`). A second 60 at another minute of UTC
    is no leap second: refused saying so (review 31)."""
    found = _LEAP_RE.match(value.strip())
    assert found is not None  # the caller matched it
    moment = _timestamp(f"{found[1]}:59{found[2]}", stored=stored)
    in_utc = moment.astimezone(UTC)
    if (in_utc.hour, in_utc.minute) != (23, 59):
        raise ValueError(
            f'"{value}" has second 60, a leap second, which is 23:59:60 in UTC only'
            f" (here {in_utc.strftime('%H:%M')}:60 UTC): write a second from 00 to 59"
        )
    return moment.replace(microsecond=999_999)


def _time_of_a_sale(value: Any) -> datetime:
    """A time that dates become computed from (a receipt's or refund's `at`, balance's
    `at`, a pending batch's activation): between FIRST_YEAR and LAST_YEAR, so the dates
    worked out from it (activation, expiry, holds, cooldowns) always exist. A snapshot's
    other times (an offer's or coupon's `validTo`, an `expiresAt`) are only compared, so
    an ERP's "9999-12-31" for "never" stays valid there."""
    return _in_sale_years(_timestamp(value))


def _in_sale_years(moment: datetime) -> datetime:
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise ValueError(
            f'"{moment.isoformat()}" is not between the years {FIRST_YEAR} and {LAST_YEAR}'
        )
    return moment


FIRST_YEAR, LAST_YEAR = 1900, 9000


def _date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a date string YYYY-MM-DD")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f'"{value}" is not a date YYYY-MM-DD') from None


# Whole numbers and times come in two ways. A JSON integer, or an RFC 3339 string in
# JSON text (snapshot rows, the cache's documents: millions of them), is checked by
# pydantic-core itself, strictly, with no Python call; anything else (a proto3 int64
# string, a dict from the CLI or gRPC) goes on to the project's own validator, whose
# words `describe` reports when both refuse.
_FIRST = Field(union_mode="left_to_right")  # the first member that accepts wins

# The validation context of a row read back from the cache (`Offer.model_validate_json(doc,
# context=STORED)`): it was checked when its snapshot was applied, by the rules of the
# version that applied it. A rule added since (a `minQty` of at most 3 decimals) is a rule
# of input and must not make a till's stored offers unreadable after an upgrade.
STORED: dict[str, bool] = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    """Whether the row being validated is one read back from the cache (`STORED`)."""
    return bool((info.context or {}).get("stored"))


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


Int64 = Annotated[
    Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
    | Annotated[int, BeforeValidator(_int64)],
    _FIRST,
]
NonNegative = Annotated[
    Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
    | Annotated[int, BeforeValidator(_non_negative)],
    _FIRST,
]
Positive = Annotated[
    Annotated[int, Strict(), Field(ge=1, le=INT64_MAX)]
    | Annotated[int, BeforeValidator(_positive)],
    _FIRST,
]
# A positive decimal with at most 3 decimals, matched natively; anything else goes on to
# `_qty`, which says what is wrong with it.
_POSITIVE_QTY = (
    r"^(?:[0-9]*[1-9][0-9]*(?:\.[0-9]{1,3})?|0+\.(?:[1-9][0-9]{0,2}|0[1-9][0-9]?|00[1-9]))$"
)
if TYPE_CHECKING:  # what the union gives: a Decimal either way
    Qty = Decimal
else:
    Qty = Annotated[
        Annotated[
            str,
            Strict(),
            StringConstraints(max_length=TEXT_MAX, pattern=_POSITIVE_QTY),
            AfterValidator(Decimal),
        ]
        | Annotated[Decimal, BeforeValidator(_qty)],
        _FIRST,
    ]
Dec = Annotated[Decimal, BeforeValidator(_decimal)]
# A non-negative decimal string (an offer's value, a JSON row's usual spelling) matched
# natively and made a Decimal with no Python call; anything else goes on to
# `_non_negative_decimal`, which accepts the rest or says what is wrong.
if TYPE_CHECKING:
    NonNegativeDec = Decimal
else:
    NonNegativeDec = Annotated[
        Annotated[
            str,
            Strict(),
            StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?$"),
            AfterValidator(Decimal),
        ]
        | Annotated[Decimal, BeforeValidator(_non_negative_decimal)],
        _FIRST,
    ]
# A time in JSON text spelled as RFC3339_NATIVE says is parsed by pydantic-core (no Python call:
# millions of snapshot rows); anything else goes on to `_time_field`, which takes what the
# first one would and says what is wrong with the rest.
_RFC3339_TIME = GetPydanticSchema(
    lambda _type, _handler: core_schema.json_or_python_schema(
        json_schema=core_schema.chain_schema(
            [
                core_schema.str_schema(strict=True, pattern=RFC3339_NATIVE),
                core_schema.datetime_schema(tz_constraint="aware"),
            ]
        ),
        # from Python: an aware datetime as it is; a string goes on to `_timestamp` (the
        # receipts the CLI and gRPC read keep `datetime.timezone` offsets, as before)
        python_schema=core_schema.datetime_schema(strict=True, tz_constraint="aware"),
    )
)
Timestamp = Annotated[
    Annotated[datetime, _RFC3339_TIME] | Annotated[datetime, BeforeValidator(_time_field)],
    _FIRST,
]
# After the union: each choice stays the plain time schema the hub's bulk import reads.
# The JSON schema's word for it (/openapi.json): RFC 3339 in the years FIRST_YEAR–LAST_YEAR.
SALE_TIME_PATTERN = r"^(19[0-9]{2}|[2-8][0-9]{3}|9000)" + _DAY_TIME
SaleTime = Annotated[
    Timestamp,
    AfterValidator(_in_sale_years),
    Field(json_schema_extra={"pattern": SALE_TIME_PATTERN}),
]
Day = Annotated[date, BeforeValidator(_date)]
# Strings are checked by pydantic-core itself. Strict: a string, never a number or bytes.
Text = Annotated[str, Strict()]
Key = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=200)]
# The text fields of a request (receipt, refund): at most TEXT_MAX characters.
RequestText = Annotated[str, Strict(), StringConstraints(max_length=TEXT_MAX)]
# An id or SKU a request brings in has no control characters (a NUL, a line break, an
# escape, the Unicode line separators, a bidi override): they matched nothing anyway, and
# went on into logs, answers and printouts. Scanned coupon codes keep the wider
# `RequestKey` (a scanner's CR or tab is a blank their normal form drops, §13), and so do
# the receipt and SKUs a refund names (a sale an earlier release committed).
_NO_CONTROLS = "^[^\\x00-\\x1f\\x7f-\\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"
RequestKey = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=TEXT_MAX)]
PlainKey = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=TEXT_MAX, pattern=_NO_CONTROLS)
]
# One character `_NO_CONTROLS` refuses: what a coupon code's normal form drops and what a
# free text a till stores and pushes (Confirm's fiscalDocument) must not hold.
CONTROL_CHARACTER = re.compile("[" + _NO_CONTROLS.removeprefix("^[^").removesuffix("]*$") + "]")
CONTROLS_MESSAGE = "must not contain control characters (a line break, a tab, a NUL, ...)"


def has_controls(text: str) -> bool:
    """Whether `text` holds a character an id or SKU may not (`_NO_CONTROLS`)."""
    return CONTROL_CHARACTER.search(text) is not None


def _not_blank(value: str) -> str:
    if not value.strip():  # what Confirm, Cancel and Balance refuse: the same id everywhere
        raise ValueError("must not be blank")
    return value


# A receipt's or refund's id: not only white space, which Confirm and Cancel could not name.
RequestId = Annotated[PlainKey, AfterValidator(_not_blank)]


class Model(BaseModel):
    """Frozen, camelCase in JSON, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=False,
        # a model's validator is built at its first use, not at import: a one-shot CLI
        # call builds the few it needs (a quote never the snapshot's), docs/PERFORMANCE.md
        defer_build=True,
    )


def build_validators() -> None:
    """Every model's validator built now: a serving agent calls it before READY, so a
    till's first POS calls do not pay the builds `defer_build` left for first use (about
    30-80 ms in all; a one-shot CLI call still builds only those it needs)."""
    todo: list[type[BaseModel]] = [Model]
    while todo:
        for cls in todo.pop().__subclasses__():
            if not cls.__pydantic_complete__:
                cls.model_rebuild()
            todo.append(cls)


# ---------------------------------------------------------------- snapshot (§3)


class Tier(Model):
    code: Key
    accrual_percent: NonNegativeDec


def _unset_if_empty(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A snapshot field written empty is the field left out: in proto3 JSON `""` and `[]`
    are a (non-`optional`) string's and a list's unset value, and a printer that writes
    every field (protobuf's can) writes unset ones so. The field then takes its default
    (§3: absent program fields take the defaults), as an absent one does, instead of
    refusing the snapshot ("\"\" is not a known time zone")."""
    if (isinstance(value, str) and value == "") or (isinstance(value, list) and not value):
        return model.model_fields[info.field_name or ""].default
    return value


DEFAULT_TIERS = (
    Tier(code="base", accrual_percent=Decimal("3")),
    Tier(code="gold", accrual_percent=Decimal("7")),
)


# Bounds of the program's durations: a century (a hold's too: the hub keeps one a day
# at most anyway), so the dates worked out from a sale's time (≤ year 9000) exist.
MAX_PROGRAM_DAYS = 36_600
MAX_HOLD_TTL_S = MAX_PROGRAM_DAYS * 86_400


class Program(Model):
    currency: Text = "RUB"
    timezone: Text = "Europe/Moscow"
    point_value_minor: Positive = 100
    max_redeem_percent: NonNegativeDec = Decimal(30)
    activation_delay_days: NonNegative = 0
    offline_redeem_limit_points: NonNegative = 500
    birthday_multiplier: NonNegativeDec = Decimal(5)
    birthday_window_days: NonNegative = 7
    max_offers_printed: NonNegative = 5
    offer_print_cooldown_days: NonNegative = 7
    hold_ttl_seconds: Positive = 1800
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    # Points earned on a till expire this many days after they become spendable (§16);
    # 0: they never expire.
    points_lifetime_days: NonNegative = 0

    @field_validator("currency", "timezone", "tiers", mode="before")
    @classmethod
    def _proto3_default(cls, value: Any, info: ValidationInfo) -> Any:
        return _unset_if_empty(cls, value, info)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f'"{value}" is not a known time zone (e.g. Europe/Moscow)') from None
        return value

    @field_validator("max_redeem_percent")
    @classmethod
    def _percent(cls, value: Decimal) -> Decimal:
        if value > 100:
            raise ValueError("must be between 0 and 100")
        return value

    @field_validator("activation_delay_days", "offer_print_cooldown_days", "points_lifetime_days")
    @classmethod
    def _days(cls, value: int) -> int:
        # beyond, the dates worked out from a receipt's time no longer exist (a hub's typo
        # used to load, then fail every sale of a known card)
        if value > MAX_PROGRAM_DAYS:
            raise ValueError(f"at most {MAX_PROGRAM_DAYS} days")
        return value

    @field_validator("hold_ttl_seconds")
    @classmethod
    def _ttl(cls, value: int) -> int:
        if value > MAX_HOLD_TTL_S:
            raise ValueError(f"at most {MAX_HOLD_TTL_S} seconds (a century)")
        return value

    @field_validator("tiers")
    @classmethod
    def _some_tiers(cls, value: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if not value:
            raise ValueError("at least one tier is needed (the first is the base rate)")
        return value

    def repeated_tier(self) -> str | None:
        """A tier code given twice (which rate would its customers earn?): refused where a
        program comes in (a snapshot, the hub's import), not where one stored by an older
        release is read back (that would stop every sale)."""
        codes = [tier.code for tier in self.tiers]
        return next((code for code in codes if codes.count(code) > 1), None)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def tier(self, code: str | None) -> Tier:
        """The customer's tier; an unknown code earns at the first (base) tier's rate."""
        for tier in self.tiers:
            if tier.code == code:
                return tier
        return self.tiers[0]


class Product(Model):
    sku: Key
    name: Text = ""
    category: Text = ""
    excluded_from_loyalty: StrictBool = False  # true or false: "yes" or 1 is bad input


class Category(Model):
    code: Key
    parent: Text | None = None
    name: Text = ""


class PendingPoints(Model):
    points: Int64
    activates_at: SaleTime


class ExpiringPoints(Model):
    """A part of `balancePoints` that expires at `expiresAt` (§16)."""

    points: NonNegative
    expires_at: Timestamp


Segment = Literal["NEW", "ACTIVE", "AT_RISK", "CHURNED", "SEGMENT_UNSPECIFIED"]


class Customer(Model):
    id: Key
    first_name: Text = ""
    tier: Text = ""
    birthday: Day | None = None
    phone: Text | None = None
    balance_points: Int64 = 0
    segment: Segment | None = None
    control_groups: tuple[Key, ...] = ()
    favorite_weekday: Annotated[int, Field(ge=0, le=7)] | None = None
    pending: tuple[PendingPoints, ...] = ()
    expiring: tuple[ExpiringPoints, ...] = ()

    @field_validator("birthday", mode="before")
    @classmethod
    def _proto3_default(cls, value: Any, info: ValidationInfo) -> Any:
        return _unset_if_empty(cls, value, info)


CardStatus = Literal["ACTIVE", "BLOCKED", "LOST"]


class CardRecord(Model):
    number: Key
    customer_id: Key
    status: CardStatus = "ACTIVE"

    @field_validator("status", mode="before")
    @classmethod
    def _proto3_default(cls, value: Any, info: ValidationInfo) -> Any:
        # `CardRecord.status` is a proto `string`: `""` is the field unset, an active card
        # as when it is left out (review 36: it refused the whole snapshot).
        return _unset_if_empty(cls, value, info)


OfferKind = Literal[
    "PERCENT_OFF",
    "AMOUNT_OFF",
    "FIXED_PRICE",
    "BONUS_MULTIPLIER",
    "RECEIPT_PERCENT_OFF",
    "EXTRA_POINTS",
    "QUANTITY_PRICE",
    "MULTIBUY",
]
LINE_MONEY_KINDS = frozenset({"PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE"})
# Kinds that target lines (by SKU or category); the others apply to the whole receipt.
LINE_KINDS = LINE_MONEY_KINDS | {"BONUS_MULTIPLIER", "MULTIBUY"}
# Kinds whose discount comes from `value` (the basket deals carry tiers or buy/free).
VALUE_KINDS = frozenset(
    {"PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "BONUS_MULTIPLIER", "RECEIPT_PERCENT_OFF"}
    | {"EXTRA_POINTS"}
)

_CLOCK_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


def _clock(value: Any) -> str:
    if not isinstance(value, str) or not _CLOCK_RE.fullmatch(value):
        raise ValueError(f'"{value}" is not a local time HH:MM (00:00 to 24:00)')
    return value


def _weekday(value: Any) -> int:
    number = _int64(value)
    if not 1 <= number <= 7:
        raise ValueError(f"weekday {number} is not ISO (Monday 1 … Sunday 7)")
    return number


Clock = Annotated[str, BeforeValidator(_clock)]
Weekday = Annotated[int, BeforeValidator(_weekday)]


class HourWindow(Model):
    """Local hours of a day: `from` inclusive, `to` exclusive ("24:00": the end of the day).
    A `to` before `from` ("22:00"-"02:00") is a night window: from `from` to midnight and
    on until `to` the next morning, all of it the night of the day it starts."""

    from_: Clock = Field(alias="from")
    to: Clock

    @model_validator(mode="after")
    def _ordered(self) -> HourWindow:
        if self.from_ == "24:00":
            raise ValueError(
                f'hours {self.from_}-{self.to}: a window starts at "23:59" at the latest'
            )
        if self.seconds[0] == self.seconds[1]:
            raise ValueError(
                f"hours {self.from_}-{self.to}: an empty window (from must differ from to;"
                ' a whole day is "00:00"-"24:00")'
            )
        return self

    @cached_property
    def seconds(self) -> tuple[int, int]:
        """(from, to) as seconds after local midnight."""
        return _clock_seconds(self.from_), _clock_seconds(self.to)


def _clock_seconds(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


class QuantityTier(Model):
    min_qty: Qty
    unit_price_minor: NonNegative


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_OPEN_END = 1 << 62  # beyond any datetime's microseconds since the epoch (≈ 2.9e17)


def micros(moment: datetime) -> int:
    """An aware moment as whole microseconds since the epoch: exact, comparable as ints."""
    return (moment - _EPOCH) // _MICROSECOND


class Offer(Model):
    id: Key
    campaign_id: Text = ""
    customer_id: Text | None = None
    kind: OfferKind
    skus: tuple[Key, ...] = ()
    categories: tuple[Key, ...] = ()
    value: NonNegativeDec = Decimal(0)  # required for the kinds in VALUE_KINDS
    min_qty: NonNegativeDec = Decimal(0)
    min_total_minor: NonNegative = 0
    valid_from: Timestamp | None = None
    valid_to: Timestamp | None = None
    priority: Int64 = 0
    rank: Int64 = 0
    printable: StrictBool = False
    print_text: Text = ""
    coupon_required: StrictBool = False
    issue_coupon: StrictBool = False
    weekdays: tuple[Weekday, ...] = ()
    hours: tuple[HourWindow, ...] = ()
    on_favorite_weekday: StrictBool = False
    tiers: tuple[QuantityTier, ...] = ()
    buy_qty: Qty | None = None
    free_qty: Qty | None = None

    # not `value`: required for most kinds, where "" is refused as a missing value is
    @field_validator(
        "customer_id", "min_qty", "valid_from", "valid_to", "buy_qty", "free_qty", mode="before"
    )
    @classmethod
    def _proto3_default(cls, value: Any, info: ValidationInfo) -> Any:
        return _unset_if_empty(cls, value, info)

    @field_validator("value", mode="before")
    @classmethod
    def _deal_value_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """A deal's `value` written "" is the field left out (the deal kinds need none);
        for the kinds that need a value it stays a missing value, refused. A field
        validator (`kind` is validated before `value`), not a model one: a model
        validator in "before" mode makes every offer read from the cache (each quote's
        personal offers) go through a Python dict, about 30 % slower to parse."""
        if value == "" and info.data.get("kind") not in VALUE_KINDS:
            raise PydanticUseDefault()
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Offer:
        if self.min_qty and _decimals(self.min_qty) > 3 and not _stored(info):
            raise ValueError(
                f"offer {self.id}: minQty {self.min_qty} has more than 3 decimals (the contract §2)"
            )
        # an end in whole seconds holds through that second (§2): a window inside one
        # second ("10:15:00.250" to "10:15:00") is a real one, as a coupon's (review 31)
        if self.valid_from and self.valid_to and self.valid_from > last_instant(self.valid_to):
            raise ValueError(f"offer {self.id}: validFrom is after validTo")
        if self.kind in VALUE_KINDS and "value" not in self.model_fields_set:
            raise ValueError(f"offer {self.id}: value is required for {self.kind}")
        if self.kind == "QUANTITY_PRICE" and not self.tiers:
            raise ValueError(f"offer {self.id}: QUANTITY_PRICE needs tiers")
        if len(self.tiers) > 1 and not _stored(info):
            prices: dict[Decimal, int] = {}
            for tier in self.tiers:
                price = prices.setdefault(tier.min_qty, tier.unit_price_minor)
                if price != tier.unit_price_minor:
                    raise ValueError(
                        f"offer {self.id}: two tiers with minQty {tier.min_qty.normalize():f}"
                        f" and two unit prices ({price} and {tier.unit_price_minor}): which"
                        " applies would depend on their order"
                    )
        if self.kind == "MULTIBUY":
            for name, qty in (("buyQty", self.buy_qty), ("freeQty", self.free_qty)):
                if qty is None or qty != qty.to_integral_value():
                    raise ValueError(f"offer {self.id}: MULTIBUY needs a whole {name} of 1 or more")
        if self.kind in ("PERCENT_OFF", "RECEIPT_PERCENT_OFF") and self.value > 100:
            raise ValueError(f"offer {self.id}: a percentage above 100")
        if self.kind == "EXTRA_POINTS" and self.value != self.value.to_integral_value():
            raise ValueError(f"offer {self.id}: EXTRA_POINTS value must be whole points")
        return self

    def valid_at(self, moment: datetime) -> bool:
        if self.valid_from is not None and moment < self.valid_from:
            return False
        return not (self.valid_to is not None and moment > last_instant(self.valid_to))

    @cached_property
    def valid_span(self) -> tuple[int, int]:
        """`validFrom` and `validTo` in microseconds since the epoch (an open end: beyond
        any moment): pricing compares a receipt's one `micros(at)` with them, integers
        instead of aware datetimes (≈ 1 µs a comparison, 20-odd offers a receipt)."""
        low = micros(self.valid_from) if self.valid_from is not None else -_OPEN_END
        high = micros(last_instant(self.valid_to)) if self.valid_to is not None else _OPEN_END
        return low, high

    @cached_property
    def has_window(self) -> bool:
        return bool(self.weekdays or self.hours or self.on_favorite_weekday)

    @cached_property
    def gated(self) -> bool:
        """It has a time window or needs a coupon: the pricing looks closer only then."""
        return self.coupon_required or self.has_window

    def in_window(self, local: datetime, favorite_weekday: int | None) -> bool:
        """Inside its weekdays, hours and favourite weekday (the contract §14) at the store's local
        time `local`; an offer without them is always inside. The morning part of a night
        window ("22:00"-"02:00" at 01:00) counts as the day before: the night it started."""
        weekday = local.isoweekday()
        if not self.hours:
            return self._on_day(weekday, favorite_weekday)
        second = local.hour * 3600 + local.minute * 60 + local.second
        for start, end in (w.seconds for w in self.hours):
            if start < end:
                inside, day = start <= second < end, weekday
            elif second >= start:  # a night window, before midnight
                inside, day = True, weekday
            else:  # a night window after midnight: the night of the day before
                inside, day = second < end, (weekday - 2) % 7 + 1
            if inside and self._on_day(day, favorite_weekday):
                return True
        return False

    def _on_day(self, weekday: int, favorite_weekday: int | None) -> bool:
        if self.weekdays and weekday not in self.weekdays:
            return False
        return not (self.on_favorite_weekday and favorite_weekday != weekday)


def coupon_code(text: str) -> str:
    """A scanned coupon code as it is looked up: blanks, dashes and control characters
    (a scanner's GS separator \\x1d, a NUL) dropped, upper case."""
    text = CONTROL_CHARACTER.sub("", text)
    return "".join(ch for ch in text if not ch.isspace() and ch not in DROPPED).upper()


# A code's normal form may be longer than the text given ("ß" upper-cases to "SS", "ﬃ"
# to "FFI"); the hub takes codes of at most TEXT_MAX characters (the contract §13), so
# the limit holds on the code as it is looked up, at every door (review 32: "ß" × 128
# was taken, and the hub refused the receipt's whole AuthorizeRedemption).
CODE_TOO_LONG = (
    f'is too long once upper-cased (at most {TEXT_MAX} characters as it is looked up: "ß" is "SS")'
)


def _looked_up_fits(value: str) -> str:
    if len(coupon_code(value)) > TEXT_MAX:
        raise ValueError(CODE_TOO_LONG)
    return value


# A scanned code of a receipt (§13): as given, and within the limit once normalised.
ScannedCode = Annotated[RequestKey, AfterValidator(_looked_up_fits)]


# "Dashes of any kind (hyphen, en/em dash, minus sign)" (the contract §4, §13): Unicode's
# dash punctuation (category Pd: the full-width, small, Armenian, two-em... dashes), the
# minus signs (U+2212, superscript and subscript minus), the swung dash (U+2053, the one
# character of Unicode's Dash property outside those) and the soft hyphen (U+00AD: a
# hyphen that shows only at a line break, which a number copied from a web page or a
# document carries unseen). Written out, not computed from `unicodedata` at import (a
# scan of every code point costs a CLI call 0.3 s); tests/test_review14.py holds it to
# the category.
DASHES = frozenset(
    "\u002d\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a"
    "\u2e3a\u2e3b\u2e40\u2e5d\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d\U00010ead"
    "\u2212\u207b\u208b\u2053\u00ad"
)

# "White space of any kind" (the contract §4, §13) beside what `str.isspace` (and `\s`)
# call so: the zero-width spaces, U+200B and U+FEFF (ZERO WIDTH NO-BREAK SPACE, a byte
# order mark at the start of a pasted text), and U+180E (MONGOLIAN VOWEL SEPARATOR, a
# space until Unicode 6.3): invisible, so a cashier cannot see why a number is refused.
ZERO_WIDTH_SPACES = frozenset("\u200b\ufeff\u180e")

# The invisible format characters (the contract §4's decisions, review 33): Unicode's
# category Cf less those that show a sign (the Arabic, Syriac and Kaithi number and year
# signs, the interlinear annotation marks, the Egyptian hieroglyph format controls), i.e.
# the default-ignorable ones: the soft hyphen, the Arabic letter mark, the zero-width
# spaces, joiners and marks (U+200B…U+200F), the bidi embeddings and isolates a phone's
# contacts or a messenger wrap a copied number in (U+202A…U+202E, U+2066…U+2069), the
# WORD JOINER and the invisible operators (U+2060…U+2064), the deprecated format
# characters (U+206A…U+206F), U+FEFF, the shorthand and musical format controls and the
# tag characters. A number carrying one looks right to the cashier; U+FEFF was dropped
# and U+2060 (its successor as the zero-width no-break) made the number INVALID. Written
# out (tests/test_review33_left33.py holds it to the category), not computed at import.
INVISIBLE_FORMAT = frozenset(
    "\u00ad\u061c\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d"
    "\u206e\u206f\ufeff\U0001bca0\U0001bca1\U0001bca2\U0001bca3\U0001d173\U0001d174"
    "\U0001d175\U0001d176\U0001d177\U0001d178\U0001d179\U0001d17a\U000e0001"
) | frozenset(map(chr, range(0xE0020, 0xE0080)))
# What §4 and §13 drop from a scanned text besides white space (`str.isspace`).
DROPPED = DASHES | ZERO_WIDTH_SPACES | INVISIBLE_FORMAT


class Coupon(Model):
    """A one-time code that unlocks an offer (the contract §13)."""

    code: Key
    offer_id: Key
    customer_id: Text | None = None  # absent: any identified customer
    valid_from: Timestamp | None = None
    valid_to: Timestamp | None = None

    @field_validator("customer_id", "valid_from", "valid_to", mode="before")
    @classmethod
    def _proto3_default(cls, value: Any, info: ValidationInfo) -> Any:
        return _unset_if_empty(cls, value, info)

    @field_validator("code")
    @classmethod
    def _normal(cls, value: str, info: ValidationInfo) -> str:
        code = normal_coupon_code(value)
        if len(code) > TEXT_MAX and not _stored(info):  # one stored before still reads
            raise ValueError(CODE_TOO_LONG)
        return code

    @model_validator(mode="after")
    def _window(self, info: ValidationInfo) -> Coupon:
        # as an offer's (docs/CONTRACT.md §3); a coupon an earlier release stored reads back.
        # Its end holds through its last second (§2's decisions): a code a till issues at
        # 23:59:59.5 for an offer that ends 23:59:59 is valid from the sale to that end.
        reversed_ = (
            self.valid_from and self.valid_to and self.valid_from > last_instant(self.valid_to)
        )
        if reversed_ and not _stored(info):
            raise ValueError(f"coupon {self.code}: validFrom is after validTo")
        return self


def normal_coupon_code(value: str) -> str:
    """A coupon's code as the cache and the hub key it; one with no letter or digit is
    refused (it would match every code written with none)."""
    code = coupon_code(value)
    if not code:
        raise ValueError("a coupon code needs letters or digits")
    return code


class Removed(Model):
    cards: tuple[Key, ...] = ()
    customers: tuple[Key, ...] = ()
    offers: tuple[Key, ...] = ()
    products: tuple[Key, ...] = ()
    categories: tuple[Key, ...] = ()
    coupons: tuple[Key, ...] = ()

    @field_validator("coupons")
    @classmethod
    def _normal(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Rows are stored under the normal form: a code voided as it was printed
        # ("SORRY-7K2Q9") deleted nothing and stayed usable on every till.
        return tuple(normal_coupon_code(code) for code in value)


class SnapshotHeader(Model):
    """Everything of a snapshot but its rows: what a streamed (JSON Lines) snapshot starts with."""

    version: Positive
    base_version: NonNegative = 0
    issued_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    program: Program | None = None
    removed: Removed = Removed()
    applied_through: dict[str, NonNegative] = Field(default_factory=dict)

    @field_validator("issued_at", "expires_at", mode="before")
    @classmethod
    def _proto3_default(cls, value: Any, info: ValidationInfo) -> Any:
        # proto `string`s: `""` is the time left out (review 36: it refused the snapshot)
        return _unset_if_empty(cls, value, info)

    @model_validator(mode="after")
    def _tiers_once(self) -> SnapshotHeader:
        repeated = self.program.repeated_tier() if self.program is not None else None
        if repeated is not None:
            raise ValueError(f"program.tiers: tier {repeated!r} appears twice")
        return self

    @field_validator("applied_through")
    @classmethod
    def _room_above(cls, value: dict[str, int]) -> dict[str, int]:
        for device, seq in value.items():
            if seq > SEQ_MAX:
                raise ValueError(
                    f"{device}: {seq} is above {SEQ_MAX}: the device numbers its sales on"
                    " above it (§9), and they would no longer fit"
                )
        return value

    @model_validator(mode="after")
    def _versions(self) -> SnapshotHeader:
        if self.base_version >= self.version:
            raise ValueError(
                f"baseVersion {self.base_version} must be below version {self.version}"
            )
        return self

    @property
    def is_full(self) -> bool:
        return self.base_version == 0


class Snapshot(SnapshotHeader):
    products: tuple[Product, ...] = ()
    categories: tuple[Category, ...] = ()
    customers: tuple[Customer, ...] = ()
    cards: tuple[CardRecord, ...] = ()
    offers: tuple[Offer, ...] = ()
    coupons: tuple[Coupon, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Snapshot:
        for name in ROW_MODELS:
            keys = [_key(row) for row in getattr(self, name)]
            if len(keys) != len(set(keys)):
                dup = next(k for k in keys if keys.count(k) > 1)
                raise ValueError(f"{name}: {dup!r} appears twice")
        return self

    @property
    def header(self) -> SnapshotHeader:
        return SnapshotHeader.model_validate(
            {name: getattr(self, name) for name in SnapshotHeader.model_fields}
        )


# The row sections of a snapshot, in the order they are applied.
ROW_MODELS: dict[str, type[Model]] = {
    "categories": Category,
    "products": Product,
    "customers": Customer,
    "cards": CardRecord,
    "offers": Offer,
    "coupons": Coupon,
}


def _key(row: BaseModel) -> str:
    for attr in ("sku", "code", "id", "number"):
        if hasattr(row, attr):
            return str(getattr(row, attr))
    raise AssertionError(row)  # pragma: no cover


# ---------------------------------------------------------------- receipts (§5)


class ReceiptLine(Model):
    # A line needs one of these, not null (checked by `Receipt._totals_fit`; said by
    # /openapi.json, agent/http_api.py).
    NEEDS_ONE_OF: ClassVar[tuple[str, ...]] = ("priceMinor", "amountMinor")

    sku: PlainKey
    qty: Qty
    price_minor: NonNegative | None = None
    amount_minor: NonNegative | None = None

    @cached_property
    def amount(self) -> int:
        """The line's amount: `amountMinor` when the POS sent it, else price × qty (§2)."""
        if self.amount_minor is not None:
            return self.amount_minor
        return line_amount(self.price_minor or 0, self.qty)


class Receipt(Model):
    receipt_id: RequestId
    store_id: RequestText = ""
    till_id: RequestText = ""
    at: SaleTime
    card: RequestText = ""  # absent is empty (proto3): INVALID, refused like any (§4)
    lines: Annotated[tuple[ReceiptLine, ...], Field(min_length=1, max_length=10_000)]
    # -1 or more (`_redeem`), said in the JSON schema /openapi.json is generated from
    redeem_points: Annotated[Int64, Field(json_schema_extra={"minimum": -1})] = 0
    # add the calculation trace (the contract §17); never changes a figure. Strict: "yes"
    # or 1 is bad input, not a lax true
    explain: StrictBool = False
    coupons: Annotated[tuple[ScannedCode, ...], Field(max_length=100)] = ()  # scanned (§13)

    @field_validator("redeem_points")
    @classmethod
    def _redeem(cls, value: int) -> int:
        if value < -1:
            raise ValueError("must be 0 or more, or -1 for as much as allowed")
        return value

    @model_validator(mode="after")
    def _totals_fit(self) -> Receipt:
        total = 0
        for line in self.lines:
            # what `line.amount` computes and keeps, kept here directly: the first access of a
            # cached_property takes a lock on Python 3.11 (≈ 2 µs, 50 times a 50-line quote)
            amount = line.amount_minor
            if amount is None:
                if line.price_minor is None:
                    raise ValueError(f"line {line.sku}: priceMinor or amountMinor is needed")
                numerator, denominator = line.qty.as_integer_ratio()  # money.line_amount
                amount = (
                    line.price_minor * numerator
                    if denominator == 1
                    else round_half_up_ratio(line.price_minor * numerator, denominator)
                )
            vars(line)["amount"] = amount
            if amount > INT64_MAX:
                raise ValueError(
                    f"line {line.sku}: priceMinor × qty does not fit in a signed 64-bit integer"
                )
            total += amount
        if total > INT64_MAX:
            raise ValueError("the receipt total does not fit in a signed 64-bit integer")
        return self


class RefundLine(Model):
    sku: RequestKey
    qty: Qty


class Refund(Model):
    refund_id: RequestId
    receipt_id: RequestKey  # a receipt an earlier release committed under a blank id too
    at: SaleTime
    lines: Annotated[tuple[RefundLine, ...], Field(min_length=1, max_length=10_000)]


# ---------------------------------------------------------------- parsing


M = TypeVar("M", bound=Model)


def parse(model: type[M], data: Any, what: str, *, request: bool = False) -> M:
    """Validate `data` as `model`, turning the first problem into one readable line.

    In a `request` (a receipt, a refund) a field set to `null` is a field left out (proto3
    JSON: "null is accepted for every field and means its default"), so `"redeemPoints":
    null` is 0 and `"card": null` is no card; a `null` inside a list is still refused. A
    snapshot's are too (`parse_snapshot_part`, `without_nulls`)."""
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object")
    document = without_nulls(data) if request else data
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InputError(f"{what}: {describe(exc, document)}") from None


def refuse_wrapped_sections(data: Any, what: str = "snapshot") -> None:
    """A field the contract does not define is left out as a newer hub's, but not one
    whose object holds a section (`"data": {"products": [...]}`): left out, the full
    snapshot had no rows and emptied the cache. InputError naming both."""
    if not isinstance(data, dict):
        return
    known = {field.alias or name for name, field in Snapshot.model_fields.items()}
    for key, value in data.items():
        if key in known or not isinstance(value, dict):
            continue
        inside = next((name for name in ROW_MODELS if name in value), None)
        if inside is not None:
            raise InputError(
                f"{what}: {key} holds {inside}: a snapshot's sections are at its top level"
                f" (not a newer hub's field: its rows would not be loaded)"
            )


def parse_snapshot_part(model: type[M], data: Any, what: str, ignored: set[str]) -> M:
    """`parse` for a snapshot or a part of one, where a field the contract does not define
    is left out instead of refused: a hub (or a CRM export) newer than this till may send
    one, and a till must keep loading its snapshots (proto3's own rule for unknown fields).
    Each such field's path goes into `ignored` ("customers[].lastName"), for the warning
    the caller gives; nothing of it is stored. Validation runs once more only when some
    field was unknown. Receipts and refunds still refuse them (§10).

    A field set to `null` is the field left out, as in a request (proto3 JSON; review 29:
    a null was left out where the field may be null, a customer's `birthday`, and refused
    in the same row where it may not, an offer's `printText`)."""
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        if any(error.get("input", 0) is None for error in exc.errors(include_url=False)):
            data = without_nulls(data)  # copied only when a null was refused: no cost else
            try:
                return model.model_validate(data)
            except ValidationError as again:
                exc = again
        unknown = unknown_fields(exc)
        if not unknown:
            raise InputError(f"{what}: {describe(exc)}") from None
        cleaned = without_unknown(data, unknown, ignored, what)
    try:
        return model.model_validate(cleaned)
    except ValidationError as exc:
        raise InputError(f"{what}: {describe(exc)}") from None


def unknown_fields(exc: ValidationError) -> list[list[int | str]]:
    """The paths of the fields `exc` refused as unknown (none: it refused something else)."""
    return [
        [part for part in error.get("loc", ()) if not _is_member(part)]
        for error in exc.errors(include_url=False)
        if error.get("type") == "extra_forbidden"
    ]


def without_unknown(
    data: Any, unknown: list[list[int | str]], ignored: set[str], what: str, prefix: str = ""
) -> Any:
    """A copy of `data` without the `unknown` fields (`unknown_fields`; their paths added
    to `ignored`, list indexes as `[]`). A name that is a near miss of one the contract
    defines (`balancePoint`, `excludedFromLoyality`, `customer`) is a typo, not a newer
    hub's field: InputError."""
    for path in unknown:
        near = near_miss(path[-1]) if path and isinstance(path[-1], str) else None
        if near is not None:
            where = prefix.replace("[]", "") + _location(path)
            raise InputError(f"{what}: {where} is not a known field (did you mean {near}?)")
    # Only the objects and lists on the way to an unknown field are copied (the caller's
    # document is left as it is): not `deepcopy`, whose recursion a value nested some
    # hundreds deep (which the JSON reader takes) exhausted, and which copied all of a
    # large snapshot for one unknown field.
    cleaned = _shallow(data)
    copies = {id(cleaned)}
    for path in unknown:
        node = cleaned
        for part in path[:-1]:
            if not _holds(node, part):
                break
            child = node[part]
            if id(child) not in copies:
                child = node[part] = _shallow(child)
                copies.add(id(child))
            node = child
        else:
            if path and isinstance(node, dict) and path[-1] in node:
                del node[path[-1]]
                ignored.add(prefix + _location(path, any_index=True))
    return cleaned


def near_miss(name: str) -> str | None:
    """The snapshot name (a field of any snapshot model, or a section) `name` is a likely
    misspelling of: the same but for case, or a difflib ratio of at least 0.85 (a letter
    added, dropped or swapped; a plural's `s`), and not that name with a number after it
    (`phone2` is another field, not a typo); None when it is none's."""
    import difflib

    known = _snapshot_names()
    if name in known:  # a name of another model's (`points` on a customer): not a typo
        return None
    for candidate in known:
        if candidate.lower() == name.lower():
            return candidate
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    if close and not (name.startswith(close[0]) and name[len(close[0]) :].isdigit()):
        return close[0]
    return None


@functools.cache
def _snapshot_names() -> tuple[str, ...]:
    models: tuple[type[BaseModel], ...] = (
        Snapshot, Program, Tier, Product, Category, Customer, PendingPoints,
        ExpiringPoints, CardRecord, HourWindow, QuantityTier, Offer, Coupon, Removed,
    )  # fmt: skip
    names = {field.alias or name for model in models for name, field in model.model_fields.items()}
    return tuple(sorted(names | set(ROW_MODELS)))


def _shallow(node: Any) -> Any:
    if isinstance(node, dict):
        return dict(node)
    return list(node) if isinstance(node, list | tuple) else node


def _holds(node: Any, part: int | str) -> bool:
    if isinstance(node, dict):
        return isinstance(part, str) and part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def without_nulls(value: Any) -> Any:
    """`value` without the object fields set to `null` (proto3 JSON: a field left out),
    at every depth; a `null` item of a list stays (and is refused)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


# pydantic-core's own messages, said the way the rest of the refusals are.
_PLAIN = {
    "extra_forbidden": "is not a known field",
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "string_too_long": "is too long (at most 200 characters)",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
}


def describe(exc: ValidationError, data: Any = None) -> str:
    """The first problem of `exc` as one line; `data`, the document validated, lets it
    say when a field came under both its names."""
    errors = _one_per_field(exc.errors(include_url=False))
    first = errors[0]
    where = _location(first.get("loc", ()))
    message = str(first.get("msg", "is not valid"))
    message = message.removeprefix("Value error, ")
    message = _PLAIN.get(str(first.get("type")), message)
    if first.get("type") == "too_short" and not (first.get("ctx") or {}).get("actual_length"):
        message = "must not be empty"  # "lines": a receipt needs at least one line
    limit = (first.get("ctx") or {}).get("max_length")
    if first.get("type") == "too_long" and limit:  # a list: "lines", "coupons"
        message = f"has too many items (at most {limit})"
    if (first.get("ctx") or {}).get("pattern") == _NO_CONTROLS:
        message = CONTROLS_MESSAGE
    if first.get("type") == "string_too_long" and limit:
        message = f"is too long (at most {limit} characters)"
    if str(message).startswith("Input should be"):
        message = _plain_bound(first) or _plain_choice(first) or _should(message)
    if first.get("type") == "extra_forbidden":
        twin = _twin(first.get("loc", ()), data)
        if twin is not None:
            where, message = twin
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where} {message}{more}".strip() if where else f"{message}{more}"


# pydantic-core's bounds ("Input should be greater than or equal to 0"), said plainly
_BOUNDS = {
    "greater_than_equal": ("ge", "must be {} or more"),
    "greater_than": ("gt", "must be more than {}"),
    "less_than_equal": ("le", "must be {} or less"),
    "less_than": ("lt", "must be less than {}"),
}


def _plain_bound(error: Any) -> str | None:
    """A number's bound in the project's words (review 31: pydantic's own reached the
    cashier and the support engineer: "customers[0].favoriteWeekday Input should be less
    than or equal to 7")."""
    bound = _BOUNDS.get(str(error.get("type")))
    given = _not_finite(error.get("input"))
    if bound and given is not None:
        # `nan` misses every bound: it was told "must be more than 0" or "must be 3600 or
        # less", a bound it does not miss (a setting's TOML `nan`; review 42, polish42)
        return f"must be a finite number, not {given}"
    limit = (error.get("ctx") or {}).get(bound[0]) if bound else None
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)  # a decimal setting's `gt=0`: "more than 0", not pydantic's 0.0
    return None if bound is None or limit is None else bound[1].format(limit)


def _not_finite(given: Any) -> float | None:
    """`given` (a float, or the text of one: an environment variable's "NaN") if it is
    nan or an infinity, else None."""
    if isinstance(given, str) and len(given) <= 10:
        with contextlib.suppress(ValueError):
            given = float(given)
    return given if isinstance(given, float) and not math.isfinite(given) else None


def _plain_choice(error: Any) -> str | None:
    """An enum's (a literal's) refusal: the value and the choices, without pydantic's quotes
    ("cards[0].status "X" is not one of ACTIVE, BLOCKED or LOST")."""
    if error.get("type") not in ("enum", "literal_error"):
        return None
    choices = str((error.get("ctx") or {}).get("expected", "")).replace("'", "")
    if not choices:
        return None
    given = error.get("input")
    if isinstance(given, str) and len(given) <= 40 and not has_controls(given):
        return f'"{given}" is not one of {choices}'
    return f"must be one of {choices}"


def plain_message(error: Any) -> str:
    """One pydantic error's message in the project's words where it says "Input should be"
    (a bound, a choice, a type), as `describe` says it: for the tables validated on their own
    (the device tables; review 31, rev31b: they still said "Input should be greater than
    0" and "Input should be 'network', 'serial' ...")."""
    message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    if message.startswith("Input should be"):
        return _plain_bound(error) or _plain_choice(error) or _should(message)
    return message


def _should(message: str) -> str:
    """Any other "Input should be ..." as the project says it: "must be ..."."""
    return "must be" + message.removeprefix("Input should be")


def _twin(loc: Sequence[int | str], data: Any) -> tuple[str, str] | None:
    """A field "not known" under its proto name (`price_minor`) in an object of `data` that
    also has its JSON name (`priceMinor`): the field came under both its names (pydantic
    keeps the JSON name's value and refuses the other as extra). Where and what to say."""
    name = loc[-1] if loc else None
    if not isinstance(name, str) or "_" not in name:
        return None
    node = data
    for part in loc[:-1]:
        if not _holds(node, part):
            return None
        node = node[part]
    camel = to_camel(name)
    if camel == name or not isinstance(node, dict) or camel not in node:
        return None
    return _location((*loc[:-1], camel)), f"is given twice ({name} and {camel})"


def _one_per_field(errors: list[Any]) -> list[Any]:
    """A union's members each report their own error for one field: keep one per field,
    preferring the project's own validator's words (a `function-...` member)."""
    out: dict[tuple[int | str, ...], Any] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        field = tuple(part for part in loc if not _is_member(part))
        ours = any(isinstance(part, str) and part.startswith("function-before[_") for part in loc)
        if field not in out or ours:
            out[field] = {**error, "loc": field}
    found = list(out.values())
    # A list whose bad item was dropped is then also "too short": one problem, not two.
    shorter = [e for e in found if e.get("type") == "too_short" and len(found) > 1]
    return [e for e in found if e not in shorter] or found


def _is_member(part: int | str) -> bool:
    return isinstance(part, str) and (
        part.startswith(("function-", "chain[", "json-or-python["))
        or part in ("datetime", "int", "constrained-int", "str", "constrained-str")
    )


def _location(loc: Sequence[int | str] | Any, *, any_index: bool = False) -> str:
    """A field's place as a person reads it: `customers[0].phone`, or `customers[].phone`
    (`any_index`: the same field in any row, as a warning names it once)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += "[]" if any_index else f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            out += f".{part}" if out else part
    return out


_FLOAT = object()  # what `float_place` reads a number with a point or an exponent as


def float_place(text: str) -> str:
    """Where the first number with a point or an exponent of the JSON `text` is
    (`lines[0].priceMinor`), written as a validation error's place is (`_location`); ""
    when `text` does not read as JSON."""

    def walk(node: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
        if node is _FLOAT:
            return loc
        children = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, value in children:
            found = walk(value, (*loc, key))
            if found is not None:
                return found
        return None

    try:
        found = walk(json.loads(text.removeprefix("\ufeff"), parse_float=lambda _: _FLOAT), ())
    except (ValueError, RecursionError):
        return ""
    return _location(found) if found else ""


@dataclass(frozen=True)
class HubGrant:
    """The hub's answer to an online authorisation: the points it holds for the receipt,
    and the coupon codes another receipt already used or holds (the contract §9, §13).
    Shared by the till (`service.RedemptionAuthoriser`) and sync's `HubAuthoriser`."""

    points: int
    used_coupons: frozenset[str] = frozenset()
