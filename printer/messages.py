"""The customer display's messages (the contract §8), as pure functions.

Each function returns the display's rows (default 2 × 20), each at most ``width`` characters,
never more than the customer's first name, and shortened sensibly when something does not fit:
a longer wording is swapped for a shorter one, a name that does not fit is left out rather
than cut, and only as the last resort is a line cut at a word and marked with ".".
The agent puts these lines in ``CheckoutResult.display``::

    greeting("Анна", 1192)        == ["Анна, добрый день!", "Бонусы: 1192"]
    quote_lines(1234567, 2697)    == ["Итого: 12 345,67", "Скидка: 26,97"]
    after_commit_lines(37, 1192)  == ["Начислено: +37", "Бонусы: 1192"]
    birthday_line("Анна")         == "С днём рождения!"       (the name does not fit in 20)
    birthday_lines("Анна", 5)     == ["С днём рождения!", "Анна, бонусы x5"]

Money is integer minor units shown as roubles with a comma ("12 345,67"); points are whole
numbers.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Sequence

from tillpoint.printer.text import MARKS, clean, fit, format_money

__all__ = [
    "REFUSED_CARD",
    "WIDTH",
    "after_commit_lines",
    "birthday_earned_line",
    "birthday_line",
    "birthday_lines",
    "first_name_only",
    "fit_lines",
    "format_money",
    "greeting",
    "greeting_line",
    "quote_lines",
]

WIDTH = 20
# what the display says to a card that is not accepted (BLOCKED, INVALID), §4
REFUSED_CARD = "Карта не принята"


# A zero-width space parts words it shows no gap between (U+200B; U+180E was a space until
# Unicode 6.3): "Анна\u200bМария" is two names, and `clean` drops it, which glued them
# as "АннаМария" on the display and the receipt (review 38). The word joiner U+2060 and
# the zero-width no-break U+FEFF join, and go with `clean`'s other format characters.
# The Hangul fillers show a blank (the "blank" name is typed with them): they part words
# too; `clean` drops them otherwise (review 38, rev38e).
_ZERO_WIDTH_BREAKS = str.maketrans(dict.fromkeys("\u200b\u180e\u115f\u1160\u3164\uffa0", " "))

# The emoji's skin tones (modifier symbols): with the other symbols (So: an emoji, a flag's
# regional indicators, a heart) they are no letter of a name, and no code page has them.
_SKIN_TONES = frozenset(map(chr, range(0x1F3FB, 0x1F400)))


# A keycap emoji (#️⃣, 1️⃣): a digit, # or *, the emoji's variation selector, the combining
# enclosing keycap. Only the mark was dropped, its digit glued to the name ("Анна1"; review
# 40, rev40e).
_KEYCAPS = re.compile("[0-9#*]\ufe0f?\u20e3")


def _pictographs_apart(name: str) -> str:
    """A pictograph in a first name parts words, as a blank does: "Анна😀" is "Анна",
    "Анна💕Мария" two names. The whole name was left out as unshowable though its letters
    were all there ("Добрый день!"; review 40, rev40d)."""
    name = _KEYCAPS.sub(" ", name)
    return "".join(
        " " if ch in _SKIN_TONES or unicodedata.category(ch) == "So" else ch for ch in name
    )


def first_name_only(name: str | None) -> str:
    """The first word of a first name; "" when there is none. "Анна Петровна" → "Анна",
    "Анна\u200bМария" → "Анна", "Ната\u0301ша" → "Наташа"; control and format characters
    never reach a display or the paper."""
    if not name:
        return ""
    words = clean(_pictographs_apart(name.translate(_ZERO_WIDTH_BREAKS))).split()
    # Without the combining marks left after NFC (a stress mark over "а́", which has no
    # composed letter): the display and the paper drop them (`printer.text`, rule 3), and
    # counted as a column each the mark cost "Ната́ша, добрый день!" its name, 20 columns
    # on the display; a word of marks only is no name (it showed ", добрый день!").
    # Every line stays at most its width in characters, the answer's too (review 38, rev38g).
    for word in words:
        letters = "".join(ch for ch in word if unicodedata.category(ch) not in MARKS)
        if letters:
            return letters
    return ""


def _first_fitting(candidates: Sequence[str], width: int) -> str:
    for text in candidates:
        if len(text) <= width:
            return text
    return fit(candidates[-1], width) if candidates else ""


def _points(n: int) -> str:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("points are whole numbers")
    return str(n)


def _labelled(labels: Sequence[str], value: str, width: int) -> str:
    """ "Итого: 12 345,67"; a shorter label, then the bare value, then the value without spaces."""
    candidates = [f"{label}: {value}" for label in labels] + [value, value.replace(" ", "")]
    return _first_fitting(candidates, width)


def greeting_line(first_name: str | None, width: int = WIDTH) -> str:
    """ "Анна, добрый день!", or "Добрый день!" when there is no name or it does not fit."""
    name = first_name_only(first_name)
    candidates = [f"{name}, добрый день!", f"{name}, здравствуйте!"] if name else []
    return _first_fitting([*candidates, "Добрый день!", "Здравствуйте!"], width)


def greeting(
    first_name: str | None, balance_points: int | None = None, width: int = WIDTH
) -> list[str]:
    """Two lines: the greeting and, when given, the points balance.

    ``greeting("Анна", 1192) == ["Анна, добрый день!", "Бонусы: 1192"]`` (contract §5).
    Without a balance a long name moves to the second line: ``["Добрый день,", "Александра!"]``.
    Narrower than 20 columns it is what the display driver shows (`fit_lines`), never a
    word cut: ``greeting("Анна", width=8) == ["Добрый", "день!"]``, ``greeting("Анна",
    1192, 10) == ["Анна!", "1192"]``. (Until review 29 a narrow width cut it: "Добрый." over
    "Анна!", "Здравст." over "Б: 1192"; through the driver "Анна." over "1192".)
    """
    line1 = greeting_line(first_name)
    name = first_name_only(first_name)
    if balance_points is not None:
        lines = [line1, _labelled(["Бонусы", "Б"], _points(balance_points), WIDTH)]
    elif name and name not in line1 and len(name) + 1 <= WIDTH:
        lines = [_first_fitting(["Добрый день,"], WIDTH), f"{name}!"]
    else:
        lines = [line1, ""]
    return lines if width >= WIDTH else fit_lines(lines, width)


def quote_lines(
    total_minor: int, savings_minor: int, width: int = WIDTH, points_minor: int = 0
) -> list[str]:
    """The running total and the savings while the basket is priced.

    ``quote_lines(1234567, 2697) == ["Итого: 12 345,67", "Скидка: 26,97"]``; without savings
    the second line is empty. The points the customer pays with (`points_minor`, their
    money) count in the second line, so the total less it is what the customer pays:
    ``quote_lines(17980, 0, points_minor=5300) == ["Итого: 179,80", "Бонусами: 53,00"]``,
    with a discount too "Выгода: 71,97".
    """
    total = _labelled(["Итого", "Сумма"], format_money(total_minor), width)
    points = max(points_minor, 0)
    if savings_minor <= 0 and points == 0:
        return [total, ""]
    if points == 0:
        labels = ["Скидка", "Выгода"]
    elif savings_minor <= 0:
        labels = ["Бонусами", "Выгода"]
    else:  # the discount and the points together
        labels = ["Выгода"]
    value = format_money(max(savings_minor, 0) + points)
    return [total, _labelled(labels, value, width)]


def after_commit_lines(earned: int, balance: int, width: int = WIDTH) -> list[str]:
    """Points earned by this receipt and the balance after it.

    ``after_commit_lines(37, 1192) == ["Начислено: +37", "Бонусы: 1192"]``.
    """
    sign = "+" if earned >= 0 else ""
    return [
        _labelled(["Начислено", "Начисл."], f"{sign}{_points(earned)}", width),
        _labelled(["Бонусы", "Б"], _points(balance), width),
    ]


def birthday_line(first_name: str | None, width: int = WIDTH) -> str:
    """ "С днём рождения, Оля!" when it fits, else "С днём рождения!" (the name is never cut)."""
    name = first_name_only(first_name)
    candidates = [f"С днём рождения, {name}!"] if name else []
    return _first_fitting([*candidates, "С днём рождения!", "С днём рожд.!"], width)


def birthday_earned_line(earned: int, width: int = WIDTH) -> str:
    """The birthday wish with the points this receipt earned, for after a commit (§8 asks
    for both, and the balance, on two lines): ``birthday_earned_line(37) == "С днём
    рождения! +37"``, shorter wordings for larger figures."""
    sign = "+" if earned >= 0 else ""
    value = f"{sign}{_points(earned)}"
    return _first_fitting(
        [f"С днём рождения! {value}", f"С днём рожд.! {value}", f"С ДР! {value}", value],
        width,
    )


def birthday_lines(
    first_name: str | None, multiplier: int | None = None, width: int = WIDTH
) -> list[str]:
    """Two lines for the birthday window: the wish, then the name and the points multiplier."""
    name = first_name_only(first_name)
    line1 = birthday_line(first_name, width)
    shown = bool(name) and name in line1
    second: list[str] = []
    if multiplier is not None and multiplier > 1:
        if name and not shown:
            second.append(f"{name}, бонусы x{multiplier}")
        second += [f"Бонусы x{multiplier}!", f"x{multiplier}"]
    elif name and not shown:
        second.append(f"{name}!")
    return [line1, _first_fitting(second, width) if second else ""]


def fit_lines(lines: Sequence[str], width: int = WIDTH, rows: int = 2) -> list[str]:
    """Exactly ``rows`` lines of at most ``width`` characters (the driver's last resort, for
    a display narrower than the 20 columns the messages are made for).

    A row is reworded (`_reworded`); one that no wording fits is wrapped into the row
    below when that row is empty or only a name that would be left out ("Добрый" over
    "день!", "Карта не" over "принята" on 8 columns); only then cut at a word."""
    given = [clean(line) for line in list(lines)[:rows]]
    given += [""] * (rows - len(given))
    out = [_reworded(line, width) for line in given]
    for i, line in enumerate(given):
        if out[i] is not None:
            continue
        below = given[i + 1] if i + 1 < rows else None
        free = below is not None and (not below.strip() or out[i + 1] == "")
        pair = _two_rows(line, below, width) if free else None
        if pair is not None:
            out[i], out[i + 1] = pair
            continue
        if below is not None and out[i + 1] == "" and line.endswith(","):
            line = line[:-1] + "!"  # "Добрый день," over a name left out
        out[i] = _reworded(line, width)
        if out[i] is None:
            out[i] = _greeting_in_one_row(line, width)
        if out[i] is None:  # the last resort
            out[i] = _cut(line, width)
    return [line or "" for line in out]


def _cut(line: str, width: int) -> str:
    """`fit`'s cut at a word, but never inside a figure: a row that would show part of one
    ("Итого: 1." for "Итого: 1 234 567,89" on 9 columns, another total) stays empty."""
    text = fit(line, width)
    whole = " ".join(line.split())
    body = text if whole.startswith(text) else text[:-1]
    for part in _FIGURE.finditer(body):
        full = _FIGURE.match(whole, part.start())
        if full is None or full.group() != part.group():
            return ""
    return text


# a greeting as `greeting_line` words it, with or without the name
_GREETING = re.compile(r"(?:(\S+), )?(?:[Дд]обрый день|[Зз]дравствуйте)!")


def _greeting_in_one_row(line: str, width: int) -> str | None:
    """A greeting that must keep to its row (the row below is taken, by the balance): "Добрый
    день" (11 columns), else the name alone ("Анна!"), else nothing; never "Анна." or
    "Добрый.". None for a line that is not a greeting."""
    found = _GREETING.fullmatch(line)
    if found is None:
        return None
    candidates = ["Добрый день"] + ([f"{found[1]}!"] if found[1] else [])
    return next((text for text in candidates if len(text) <= width), "")


def _two_rows(line: str, below: str | None, width: int) -> tuple[str, str] | None:
    """`line` over two rows of `width` (the row below it empty, or a name on its own that
    does not fit), whole words only; None when it takes more.

    A greeting keeps the name while it fits ("Добрый день" over "Анна!" on 11 columns),
    else goes without it ("Добрый" over "день!")."""
    forms: list[tuple[str, ...]] = []
    name, comma, rest = line.partition(", ")
    if comma and rest and " " not in name:  # "Анна, добрый день!"
        greeting = rest[0].upper() + rest[1:]
        forms += [(greeting.rstrip("!"), f"{name}!"), tuple(_wrap(greeting, width))]
    elif line.endswith(",") and below is not None and below.strip():  # over "Александра!"
        forms += [(line[:-1], below.strip()), tuple(_wrap(line[:-1] + "!", width))]
    forms.append(tuple(_wrap(line, width)))
    for form in forms:
        if len(form) == 2 and form[0][-1:].isdigit() and form[1][:1].isdigit():
            continue  # a figure over two rows ("123 456" over "789,01") reads as two
        if len(form) <= 2 and all(len(row) <= width for row in form):
            padded = (*form, "", "")
            return padded[0], padded[1]
    return None


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


# Shorter wordings of this module's messages (and `tillpoint.agent.messages`' hint), for
# a display narrower than they were made for; ASCII and Cyrillic only: the driver refits
# lines already put in its code page (`display.message_bytes`).
_SHORTER = (
    ("С днём рождения!", "С ДР!"),
    ("С днём рожд.!", "С ДР!"),  # `birthday_earned_line`'s wording for larger figures
    ("до скидки ", "до -"),
    ("Ещё ", "+"),
    ("Купон принят", "Принят"),  # over the code (`printer.service`)
)
# the expiry warning's own shorter wording (`tillpoint.agent.messages.expiry_line`)
_EXPIRING = re.compile(r"Сгорят (\d\d\.\d\d): (\d+)")
# §17's hint once shortened ("+520 ₽ до -5%", in the code page's signs)
_HINT = re.compile(r"\+([\d ]+) (\S) до (\S+%)")
# the birthday wish beside the points earned (`birthday_earned_line`): the points alone last
_WISHED = re.compile(r"С ДР! ([+-]?\d+)")
# the birthday multiplier under the wish (`birthday_lines`), with or without the name
# a figure as the messages write it ("1 234 567,89", "+37"), and the spaces inside one
_FIGURE = re.compile(r"\d[\d ,]*\d|\d")
_GROUPED = re.compile(r"(?<=\d) (?=\d)")
_MULTIPLIED = re.compile(r"(?:\S+, )?[Бб]онусы x(\d+)!?")


def _reworded(line: str, width: int) -> str | None:
    """One line made shorter by rewording: "Итого: 1 234 567,89" loses its label, then its
    spaces (a figure is never cut: a cut total reads as another total); "Анна, добрый
    день!" loses the name ("Добрый день!"). None when only a cut would fit it; "" when the
    line is rather left out (a name alone, a hint or a warning without its figure)."""
    line = " ".join(line.split())
    if len(line) <= width:
        return line
    candidates: list[str] = []
    for long, short in _SHORTER:  # the messages' own shorter wordings, one after another
        if long in line:
            line = line.replace(long, short)
            candidates.append(line)
    hint = _HINT.fullmatch(line)
    if hint:  # money without what it is for reads as money: without spaces, else nothing
        candidates.append(f"+{hint[1].replace(' ', '')}{hint[2]} до {hint[3]}")
        return next((text for text in candidates if len(text) <= width), "")
    wished = _WISHED.fullmatch(line)
    if wished:  # "+1500": the figure of the line, never "С ДР!." without it
        candidates.append(wished[1])
    expiring = _EXPIRING.fullmatch(line)
    if expiring:  # "31.12: -300": the date and the points, never one without the other
        candidates += [f"{expiring[1]}: -{expiring[2]}", f"{expiring[1]}:-{expiring[2]}"]
        return next((text for text in candidates if len(text) <= width), "")
    multiplied = _MULTIPLIED.fullmatch(line)
    if multiplied:  # "Оля, бонусы x5": "Бонусы x5", then "x5", as `birthday_lines` words it
        candidates += [f"Бонусы x{multiplied[1]}", f"x{multiplied[1]}"]
    label, colon, value = line.partition(": ")
    # a figure under a word ("Итого", "Бонусы"): not one the label dates ("Сгорят 31.12")
    if colon and any(ch.isdigit() for ch in value) and not any(ch.isdigit() for ch in label):
        candidates += [value, value.replace(" ", "")]
    despaced = _GROUPED.sub("", line)  # "123 456 789,01", the label already left out
    if despaced != line:
        candidates.append(despaced)
    name, comma, rest = line.partition(", ")
    if comma and rest and " " not in name:
        candidates.append(rest[0].upper() + rest[1:])
    if line.endswith(","):  # "Добрый день," over a name: "Добрый день"
        candidates.append(line[:-1])
    if not candidates and " " not in line and line.endswith("!"):
        return ""  # a name on its own row ("Александра!"): left out, never cut
    return next((text for text in [*candidates, line] if len(text) <= width), None)
