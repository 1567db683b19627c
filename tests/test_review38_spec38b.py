"""Review 38, spec38b: a black-box look at CONTRACT §3, §4, §7, §8 and §9.

Faults found, each shown here before its fix:

- CONTRACT §7/§8: a stress mark (U+0301, a combining acute over a Cyrillic vowel, which has
  no precomposed form) printed as "?" in the middle of an offer's text ("моло?ко") and made
  a first name "unshowable": the coupon and the customer display left "Ната́лья" out
  entirely ("Ждём вас снова!", "Добрый день!"), though the code page has every letter of
  it. An accent the code page lacks is dropped, as "Zoë" shows "Zoe".
"""

from __future__ import annotations

import unicodedata
from typing import Any

from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import message_bytes, showable
from tillpoint.printer.text import degrade

from .conftest import CLI, snapshot

STRESSED_NAME = "Ната\u0301лья"  # "Ната́лья": а + COMBINING ACUTE ACCENT, no precomposed form
STRESSED_TEXT = "Скидка 15% на моло\u0301ко"


def _preview(cli: CLI, tmp_path: Any, first_name: str, print_text: str) -> str:
    offer = {
        "id": "o-1",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": ["4601234000017"],
        "value": "15",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
        "rank": 1,
        "printable": True,
        "printText": print_text,
    }
    snap = snapshot(offers=[offer])
    result = {
        "receiptId": "r1",
        "mode": "OFFLINE",
        "card": {"status": "FOUND", "customerId": "c-a", "tier": "gold", "firstName": first_name},
        "lines": [],
        "printedOffers": ["o-1"],
    }
    run = cli("print", "preview", result, "--offers", snap, "--json")
    assert run.code == 0, run.err
    text: str = run.json()["text"]
    return text


def test_s7_a_stress_mark_in_an_offer_text_is_dropped_not_printed_as_a_question_mark(
    cli: CLI, tmp_path: Any
) -> None:
    """CONTRACT §7: "printed with its text"; an accent cp866 lacks is dropped, never "?"."""
    text = _preview(cli, tmp_path, "Анна", STRESSED_TEXT)
    assert "Скидка 15% на молоко" in text
    assert "?" not in text


def test_s7_a_first_name_with_a_stress_mark_is_greeted_on_the_coupon(
    cli: CLI, tmp_path: Any
) -> None:
    """CONTRACT §7 decisions: the coupon greets by the first name; only a name in letters
    the code page lacks is left out, and cp866 has every letter of "Наталья"."""
    text = _preview(cli, tmp_path, STRESSED_NAME, "Скидка")
    assert "Наталья, ждём вас снова!" in text


def test_s8_the_display_greets_a_name_with_a_stress_mark_by_its_letters() -> None:
    """CONTRACT §8: the greeting's name is left out only when the display cannot show it."""
    assert showable([f"{STRESSED_NAME}, добрый день!", ""], "cp866") == [
        "Наталья, добрый день!",
        "",
    ]
    shown = message_bytes(["Ю\u0301лия, добрый день!", "Бонусы: 1192"], DisplayConfig())
    assert "Юлия, добрый день!".encode("cp866") in shown
    assert b"?" not in shown


def test_s8_lone_combining_marks_go_other_unshowable_letters_still_show_a_question_mark() -> None:
    """The rule is the accent's, not a licence to drop letters: a letter the code page lacks
    and has no look-alike for is still "?" (and a name made of it is left out)."""
    assert degrade("Zoe\u0308", "cp866") == "Zoe"  # the same as NFC "Zoë"
    assert degrade("\u0301моло\u0301ко", "cp866") == "молоко"
    assert degrade("王", "cp866") == "?"
    assert showable(["王小明, добрый день!", ""], "cp866") == ["Добрый день!", ""]
    # NFC first: a letter and its accent that compose are one letter ("й", "ё" kept)
    assert degrade(unicodedata.normalize("NFD", "Алёна Андрей"), "cp866") == "Алёна Андрей"
