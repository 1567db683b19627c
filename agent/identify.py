"""Card identification (the contract §4): normalise the scanned text, then card number, then phone.

Pure: the look-ups are passed in, so the rules are tested without a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

from .models import DROPPED, CardRecord, Customer

Outcome = Literal["FOUND", "BLOCKED", "UNKNOWN", "INVALID"]


def _char_class(chars: frozenset[str]) -> str:
    """`chars` as a regular expression's character class body, runs written as ranges
    (the tag characters one by one made every normalisation four times slower)."""
    points = sorted(map(ord, chars))
    out: list[str] = []
    start = 0
    for i, point in enumerate(points):
        if i + 1 < len(points) and points[i + 1] == point + 1:
            continue
        first, last = chr(points[start]), chr(point)
        out.append(re.escape(first) if first == last else f"{re.escape(first)}-{re.escape(last)}")
        start = i + 1
    return "".join(out)


# blanks (the zero-width ones too), dashes of every kind, invisible format characters
_DROP = re.compile(f"[\\s{_char_class(DROPPED)}]")


class CardLookup(Protocol):
    def card(self, number: str) -> CardRecord | None: ...
    def customer(self, customer_id: str) -> Customer | None: ...
    def customer_by_phone(self, phone: str) -> Customer | None: ...
    def cards_of(self, customer_id: str) -> list[CardRecord]: ...


@dataclass(frozen=True)
class Identification:
    status: Outcome
    customer: Customer | None = None
    card_number: str | None = None
    reason: str = ""


def normalise(text: str) -> str:
    return _DROP.sub("", text)


def ascii_digits(text: str) -> bool:
    """ASCII decimal digits only: "²" is a digit but no number's (isdigit() lets it through
    to int()), and full-width or Arabic-Indic digits are decimal (isdecimal()) but no card's:
    they made an UNKNOWN card "８９１６…" whose points no hub could settle (§4: INVALID)."""
    return text.isascii() and text.isdecimal()


def ean13_ok(digits: str) -> bool:
    if len(digits) != 13 or not ascii_digits(digits):
        return False
    # weights 1, 3, 1, 3, … over the first 12 digits (two C-level sums, no loop in Python)
    total = sum(map(int, digits[0:12:2])) + 3 * sum(map(int, digits[1:12:2]))
    return (10 - total % 10) % 10 == int(digits[12])


def phone_key(text: str) -> str | None:
    """The canonical +7XXXXXXXXXX form of a Russian phone, or None if `text` is not one."""
    digits = text[1:] if text.startswith("+") else text
    if not ascii_digits(digits):
        return None
    if text.startswith("+"):
        return f"+{digits}" if len(digits) == 11 and digits.startswith("7") else None
    if len(digits) == 11 and digits[0] in "78":
        return f"+7{digits[1:]}"
    if len(digits) == 10:
        return f"+7{digits}"
    return None


# `+7 (916) 123-45-67`: blanks and dashes are dropped, brackets are not (§4: INVALID)
_DIGITS_ONLY = "a card number or phone has digits only (no brackets, letters or other signs)"


def identify(text: str, lookup: CardLookup) -> Identification:
    scanned = normalise(text)
    if not scanned:
        return Identification("INVALID", reason="nothing was scanned")
    if scanned.startswith("+"):
        phone = phone_key(scanned)
        if phone is None:
            if not ascii_digits(scanned[1:]):
                return Identification("INVALID", reason=_DIGITS_ONLY)
            return Identification("INVALID", reason="not a Russian phone number (+7 and 10 digits)")
        return _by_phone(phone, lookup)
    if not ascii_digits(scanned):
        return Identification("INVALID", reason=_DIGITS_ONLY)
    if len(scanned) == 13 and not ean13_ok(scanned):
        return Identification("INVALID", reason="the card number's check digit is wrong")
    card = lookup.card(scanned)
    if card is not None:
        return _by_card(card, lookup)
    phone = phone_key(scanned)
    if phone is not None:
        found = _by_phone(phone, lookup)
        if found.status != "UNKNOWN":
            return found
    else:
        found = Identification("UNKNOWN", card_number=scanned)
    if _read_twice(scanned, lookup):
        return Identification("INVALID", reason=READ_TWICE)
    return found


READ_TWICE = "the card was read twice in one scan; scan it once"


def _read_twice(digits: str, lookup: CardLookup) -> bool:
    """Whether `digits`, which identify no one, are one card number twice: a scanner that
    sent its read twice in one text (its Enter between them is white space). Two copies of
    a valid EAN-13 or of a card in the cache are malformed input (§4: INVALID, with the
    reason), not an UNKNOWN card whose points no hub could settle (review 38)."""
    half, odd = divmod(len(digits), 2)
    first = digits[:half]
    if odd or not half or first != digits[half:]:
        return False
    return ean13_ok(first) or lookup.card(first) is not None


def _by_card(card: CardRecord, lookup: CardLookup) -> Identification:
    if card.status != "ACTIVE":
        return Identification(
            "BLOCKED", card_number=card.number, reason=f"the card is {card.status.lower()}"
        )
    customer = lookup.customer(card.customer_id)
    if customer is None:
        return Identification("UNKNOWN", card_number=card.number)
    return Identification("FOUND", customer=customer, card_number=card.number)


def _by_phone(phone: str, lookup: CardLookup) -> Identification:
    customer = lookup.customer_by_phone(phone)
    if customer is None:
        return Identification("UNKNOWN")
    active = sorted(c.number for c in lookup.cards_of(customer.id) if c.status == "ACTIVE")
    if not active:
        return Identification("BLOCKED", reason="the customer has no active card")
    return Identification("FOUND", customer=customer, card_number=active[0])
