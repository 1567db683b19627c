"""Review 44 (review44): a second reading of session 44's change.

What is checked, and why:

- `printer.text.degrade`'s new rule (a capital whose Latin takes two letters is written in
  capitals in a word in capitals) looks at the letters beside the capital. A stress mark
  after it (a combining acute, which the page lacks and rule 3 drops: "Я́БЛОКИ") stood
  between the capital and the next letter, so the word printed "IaBLOKI", the misprint the
  rule was made to end. Pinned too, over every capital of Unicode and the code pages of
  `printer.decode.EPSON_CODEPAGES`: the rule changes case only, never a row's length, and
  never a page that has Cyrillic.
- `tests/stopclock.stop_seconds` (flake44) read the last "stopping" and the last
  "stopped" of a run's log on their own: a log whose last stop never ended (a crash in
  the stop) but whose earlier run's did gave a negative time, which every bound passes.
  Now the stop is the last "stopping" and the first "stopped" after it, and a stop with
  no end fails the test.
"""

from __future__ import annotations

import unicodedata

import pytest
from tillpoint.printer.decode import EPSON_CODEPAGES
from tillpoint.printer.text import clean, degrade

from .stopclock import stop_seconds

ACUTE = "\u0301"  # a stress mark: Cyrillic vowels have no precomposed form with it


# ------------------------------------------------------------------ degrade's capitals


@pytest.mark.parametrize(
    ("text", "latin"),
    [
        (f"Я{ACUTE}БЛОКИ", "IABLOKI"),  # a stressed capital at a word's start
        (f"Ю{ACUTE}ГА -20%", "IUGA -20%"),
        (f"СЕМЬЯ{ACUTE}", "SEMIA"),  # a stressed capital at a word's end
        (f"Я{ACUTE}блоки", "Iabloki"),  # a word in title case stays so
        (f"Я{ACUTE}", "Ia"),  # a capital alone stays title-case
        ("ЯБЛОКИ", "IABLOKI"),  # session 44's own examples, unchanged
        ("ЩИ", "SHCHI"),
        ("Яблоки", "Iabloki"),
    ],
)
def test_a_stress_mark_beside_a_capital_does_not_part_it_from_its_word(
    text: str, latin: str
) -> None:
    assert degrade(text, "ascii") == latin
    assert degrade(text, "cp437") == latin


def _capitals() -> list[str]:
    return [chr(cp) for cp in range(0x20, 0x30000) if chr(cp).isupper()]


def _one_by_one(text: str, codec: str) -> str:
    """Each character degraded on its own, as before session 44 (the case aside)."""
    from tillpoint.printer.text import _degrade_char

    return "".join(_degrade_char(ch, codec) for ch in clean(text))


def test_the_capitals_rule_changes_case_only_and_never_a_page_with_cyrillic() -> None:
    """Every capital of Unicode, doubled and beside a Cyrillic and a Latin capital, on
    every code page a printer's ESC t can select: the same letters as each degraded on its
    own (so a row is never longer), and on a page with Cyrillic exactly the same text."""
    capitals = _capitals()
    codecs = sorted(set(EPSON_CODEPAGES.values()) | {"ascii"})
    for codec in codecs:
        has_cyrillic = all(_can(ch, codec) for ch in "ЯЮЖХЦЧШЩ")
        for ch in capitals:
            for text in (ch + ch, ch + "Б" + ACUTE, "A" + ch + "A"):
                old, new = _one_by_one(text, codec), degrade(text, codec)
                assert len(new) == len(old) and new.lower() == old.lower(), (codec, text)
                if has_cyrillic:
                    assert new == old, (codec, text)


def _can(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def test_marks_are_the_only_characters_skipped_beside_a_capital() -> None:
    """A letter, a digit, a hyphen or a space after the capital still decides as before:
    only what shows nothing of its own (a combining mark) is looked past."""
    assert degrade("Я-ЯБЛОКО", "ascii") == "Ia-IABLOKO"
    assert degrade("Я1", "ascii") == "Ia1"
    assert degrade("ООО Я", "ascii") == "OOO Ia"
    assert unicodedata.category(ACUTE) == "Mn"


# ------------------------------------------------------------------ stopclock


def _json(ts: str, msg: str) -> str:
    return '{"ts": "%s", "level": "INFO", "msg": "%s"}' % (ts, msg)


STOPPING = "stopping: draining in-flight requests"


def test_a_stop_is_timed_from_its_own_start_to_its_own_end() -> None:
    log = "\n".join(
        [
            _json("2026-12-06T04:00:00.000+00:00", STOPPING),
            _json("2026-12-06T04:00:06.000+00:00", "stopped"),
            _json("2026-12-06T04:01:00.000+00:00", STOPPING),
            _json("2026-12-06T04:01:07.500+00:00", "stopped"),
        ]
    )
    assert stop_seconds(log) == 7.5


def test_a_last_stop_that_never_ended_is_no_negative_time() -> None:
    """An earlier run's "stopped" is not the end of the last run's stop: the last stop
    crashed (no "stopped" after its "stopping"), and its time was -54 s, under any
    bound."""
    log = "\n".join(
        [
            _json("2026-12-06T04:00:00.000+00:00", STOPPING),
            _json("2026-12-06T04:00:06.000+00:00", "stopped"),
            _json("2026-12-06T04:01:00.000+00:00", STOPPING),
            _json("2026-12-06T04:01:01.000+00:00", "Traceback: the stop crashed"),
        ]
    )
    with pytest.raises(AssertionError, match="no stop"):
        stop_seconds(log)


def test_a_text_log_s_stop_is_read_too() -> None:
    log = (
        f"2026-12-06 04:11:30,000 INFO    tillpoint.server: {STOPPING}\n"
        "2026-12-06 04:11:36,250 INFO    tillpoint.server: stopped\n"
    )
    assert stop_seconds(log) == 6.25
