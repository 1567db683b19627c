"""The code printed under each offer, which the till scans back to identify the offer.

Scheme ``TP1-<offerId>``: ``TP1`` names the scheme (tillpoint coupon, version 1), the rest is
the offer id exactly as in the snapshot (offer ids are printable ASCII). QR codes carry it in
byte mode; the CODE128 fallback carries it in code set B.

The contract §4 normalises scanned *card* text by dropping dashes and spaces, which would turn
``TP1-o-1`` into ``TP1o1``: the agent must test :func:`parse_offer_code` on the raw scan
before it normalises it as a card number.
"""

from __future__ import annotations

__all__ = ["CODE_PREFIX", "offer_code", "parse_offer_code"]

CODE_PREFIX = "TP1-"
_MAX_ID = 200


def _valid_id(offer_id: str) -> bool:
    return 0 < len(offer_id) <= _MAX_ID and all(0x21 <= ord(c) <= 0x7E for c in offer_id)


def offer_code(offer_id: str) -> str:
    """The code for an offer id: ``offer_code("o-1") == "TP1-o-1"``."""
    if not _valid_id(offer_id):
        raise ValueError(f"offer id {offer_id!r} is not 1-200 printable ASCII characters")
    return CODE_PREFIX + offer_id


def parse_offer_code(scanned: str) -> str | None:
    """The offer id in a scanned code, or None when the text is not a tillpoint offer code."""
    text = scanned.strip()
    if text[: len(CODE_PREFIX)].upper() != CODE_PREFIX:
        return None
    offer_id = text[len(CODE_PREFIX) :]
    return offer_id if _valid_id(offer_id) else None
