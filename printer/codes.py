"""The code printed under each offer, which the till scans back to identify the offer.

Scheme ``TP1-<offerId>``: ``TP1`` names the scheme (tillpoint coupon, version 1), the rest is
the offer id as in the snapshot, its characters outside printable ASCII (Cyrillic ids, say)
and ``%`` percent-encoded as UTF-8, so every code is printable ASCII: QR codes carry it in
byte mode, the CODE128 fallback in code set B. An ASCII id without ``%`` is written as it is.

The contract §4 normalises scanned *card* text by dropping dashes and spaces, which would turn
``TP1-o-1`` into ``TP1o1``: the agent must test :func:`parse_offer_code` on the raw scan
before it normalises it as a card number.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

__all__ = ["CODE_PREFIX", "offer_code", "parse_offer_code"]

CODE_PREFIX = "TP1-"
_MAX_ID = 200
# What stays as it is in a code: printable ASCII but the escape character itself.
_AS_IS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def _valid_id(offer_id: str) -> bool:
    return 0 < len(offer_id) <= _MAX_ID  # any snapshot id: the code escapes what it must


def offer_code(offer_id: str) -> str:
    """The code for an offer id: ``offer_code("o-1") == "TP1-o-1"``,
    ``offer_code("Оффер") == "TP1-%D0%9E%D1%84%D1%84%D0%B5%D1%80"``."""
    if not _valid_id(offer_id):
        raise ValueError(f"offer id {offer_id!r} is not 1-200 characters")
    return CODE_PREFIX + quote(offer_id, safe=_AS_IS)


def parse_offer_code(scanned: str) -> str | None:
    """The offer id in a scanned code, or None when the text is not a tillpoint offer code."""
    text = scanned.strip()
    if text[: len(CODE_PREFIX)].upper() != CODE_PREFIX:
        return None
    try:
        offer_id = unquote(text[len(CODE_PREFIX) :], errors="strict")
    except UnicodeDecodeError:
        return None
    return offer_id if _valid_id(offer_id) else None
