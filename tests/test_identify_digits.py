"""Scanned text of digits that are not decimal digits ("²") is refused in one line;
decimal digits of any script are the digits they show."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tillpoint.agent.identify import ean13_ok, identify
from tillpoint.agent.models import CardRecord, Customer
from tillpoint.sync.hub_import import _card_problem

from .conftest import CLI, receipt, snapshot


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


DIGITS_ONLY = "a card number or phone has digits only (no brackets, letters or other signs)"


def test_digits_of_other_scripts_are_invalid_not_an_unknown_card(cli: CLI, tmp_path: Path) -> None:
    """Full-width ("８９１６…") and Arabic-Indic digits are decimal to Python, and made an
    UNKNOWN card: a sale accrued to a number no hub could ever settle. They are other
    characters (§4): INVALID, refused, nothing stored; the hub's import refuses them too."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for text in (
        "８９１６１２３４５６７",
        "+７ ９１６ １２３ ４５ ６７",
        "٢٧٧٠٠٠٠٠٠٠٠١٧",
        "２７７０００００００１８",
    ):
        found = cli("identify", text, "--json").json()
        assert found == {"status": "INVALID", "reason": DIGITS_ONLY}, text
    refused = cli("checkout", receipt("r-wide", card="２７７００００００００４８"), "--json")
    assert refused.code == 2 and "digits only" in refused.err
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.db")) as conn:
        assert conn.execute("SELECT count(*) FROM journal").fetchone() == (0,)
    assert _card_problem("２７７００００００００４８") is not None
    assert _card_problem("2770000000048") is None
