"""Scanned text of digits that are not decimal digits ("²") is refused in one line."""

from __future__ import annotations

from tillpoint.agent.identify import ean13_ok, identify
from tillpoint.agent.models import CardRecord, Customer


class _Nothing:
    def card(self, number: str) -> CardRecord | None:
        return None

    def customer(self, customer_id: str) -> Customer | None:
        return None

    def customer_by_phone(self, phone: str) -> Customer | None:
        return None

    def cards_of(self, customer_id: str) -> list[CardRecord]:
        return []


def test_superscript_digits_are_invalid_not_a_crash() -> None:
    for text in ("²" * 13, "²" * 5, "277000000001²"):
        found = identify(text, _Nothing())
        assert found.status == "INVALID", text
        assert (
            found.reason
            == "a card number or phone has digits only (no brackets, letters or other signs)"
        )
    assert not ean13_ok("²" * 13)
    assert ean13_ok("2770000000017")


def test_a_phone_with_brackets_says_brackets_are_the_trouble_not_the_number() -> None:
    """`+7 (916) 123-45-67` is INVALID (§4: other characters); its reason named the number
    ("not a Russian phone number"), which it is, and sent the cashier the wrong way."""
    for text in ("+7 (916) 123-45-67", "8 (916) 123-45-67"):
        found = identify(text, _Nothing())
        assert found.status == "INVALID"
        assert "no brackets" in found.reason, text
    assert identify("+1 212 555 0100", _Nothing()).reason == (
        "not a Russian phone number (+7 and 10 digits)"
    )
