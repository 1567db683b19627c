"""The customer display's messages (the contract §8): 2 × 20, first name only, comma decimals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tillpoint.printer.messages import (
    after_commit_lines,
    birthday_line,
    birthday_lines,
    first_name_only,
    fit_lines,
    format_money,
    greeting,
    greeting_line,
    quote_lines,
)


def test_the_spec_example() -> None:
    assert greeting("Анна", 1192) == ["Анна, добрый день!", "Бонусы: 1192"]


@pytest.mark.parametrize(
    ("minor", "text"),
    [
        (1234567, "12 345,67"),
        (0, "0,00"),
        (5, "0,05"),
        (100, "1,00"),
        (-2697, "-26,97"),
        (99999999999, "999 999 999,99"),
    ],
)
def test_money_is_roubles_with_a_comma(minor: int, text: str) -> None:
    assert format_money(minor) == text


def test_money_is_never_a_float() -> None:
    with pytest.raises(TypeError):
        format_money(12.5)  # type: ignore[arg-type]


def test_quote_and_commit_lines() -> None:
    assert quote_lines(1234567, 2697) == ["Итого: 12 345,67", "Скидка: 26,97"]
    assert quote_lines(17980, 0) == ["Итого: 179,80", ""]
    assert quote_lines(99999999999, 0) == ["999 999 999,99", ""]  # the label gives way
    assert after_commit_lines(37, 1192) == ["Начислено: +37", "Бонусы: 1192"]
    assert after_commit_lines(0, -5) == ["Начислено: +0", "Бонусы: -5"]


def test_long_names_are_left_out_not_cut() -> None:
    assert greeting_line("Александра") == "Добрый день!"
    assert greeting("Александра") == ["Добрый день,", "Александра!"]
    assert greeting(None) == ["Добрый день!", ""]
    assert greeting("Анна Петровна Иванова") == ["Анна, добрый день!", ""]  # first name only
    assert first_name_only("  Анна-Мария   Петровна ") == "Анна-Мария"


def test_birthday() -> None:
    assert birthday_line("Ян") == "С днём рождения, Ян!"
    assert birthday_line("Анна") == "С днём рождения!"
    assert birthday_lines("Анна", 5) == ["С днём рождения!", "Анна, бонусы x5"]
    assert birthday_lines("Александра", 5) == ["С днём рождения!", "Бонусы x5!"]
    assert birthday_lines("Оля") == ["С днём рождения!", "Оля!"]
    assert birthday_lines("Ян", 2) == ["С днём рождения, Ян!", "Бонусы x2!"]


money = st.integers(min_value=-(2**63), max_value=2**63 - 1)
names = st.one_of(st.none(), st.text(max_size=40))
# No deadline: Hypothesis' 200 ms an example (and its 1 s too_slow check) failed these pure
# tests when a loaded machine stopped the worker for 0.4 s (review 46, flake46).
unhurried = settings(deadline=None)


@unhurried
@given(names, money, money, st.integers(min_value=-(10**12), max_value=10**12), st.integers(1, 10))
def test_every_message_fits_the_display(
    name: str | None, total: int, savings: int, points: int, multiplier: int
) -> None:
    messages = [
        greeting(name),
        greeting(name, points),
        quote_lines(total, savings),
        after_commit_lines(points, points),
        birthday_lines(name, multiplier),
        [greeting_line(name), birthday_line(name)],
    ]
    for lines in messages:
        assert len(lines) == 2
        assert all(len(line) <= 20 for line in lines), lines


letters = st.text(alphabet="АБВГДЕЖЗИКЛМНОПРСТУФЯ", min_size=1, max_size=12)


@unhurried
@given(letters, letters, st.integers(0, 10**6))
def test_only_the_first_name_is_ever_shown(first: str, surname: str, points: int) -> None:
    surname = "Ъ" + surname  # never part of the first name or of the wording
    name = f"{first} {surname}"
    for lines in (greeting(name), greeting(name, points), birthday_lines(name, 5)):
        assert all(surname not in line for line in lines)


@unhurried
@given(st.lists(st.text(max_size=60), max_size=5))
def test_fit_lines_is_always_exactly_two_rows_of_twenty(lines: list[str]) -> None:
    rows = fit_lines(lines)
    assert len(rows) == 2 and all(len(r) <= 20 for r in rows)
