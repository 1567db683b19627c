"""Text for single-byte code pages: cleaning, readable degradation, wrapping and fitting.

Printers and pole displays speak one 8-bit code page at a time (CP866 for Russian). Text from
the hub is Unicode and may hold characters that page lacks: the Unicode minus in "−15%",
typographic quotes, the rouble sign, Ukrainian Ґ and І (CP866 has Є Ї Ў but not these), or
plain Latin with accents. :func:`degrade` replaces each such character by the closest thing the
code page has, so the result stays readable and :func:`encode` never fails:

1. a table of look-alikes ("−" → "-", "«" → '"', "₽" → "Р", "І" → "I", "Ґ" → "Г", "€" → "EUR",
   the fraction slash of "½" → "/", ...);
2. Cyrillic transliterated to Latin when the page has no Cyrillic at all;
3. accents dropped (NFKD without combining marks: "é" → "e"; an accent the page lacks that
   stays apart after NFC, a stress mark over a Cyrillic vowel "а́", goes too);
4. "?" as the last resort.

Control characters are removed first: an offer text can never smuggle printer commands
(a cash-drawer kick, a cut, a code-page switch) onto the paper.
"""

from __future__ import annotations

import contextlib
import textwrap
import unicodedata
from decimal import Decimal
from functools import lru_cache
from typing import Any

__all__ = [
    "clean",
    "degrade",
    "encode",
    "fit",
    "format_money",
    "wrap",
]

# Look-alikes, in order of preference; the first one the code page can encode wins.
_LOOKALIKES: dict[str, tuple[str, ...]] = {
    "\u2212": ("-",),  # minus sign
    "\u2010": ("-",),
    "\u2011": ("-",),
    "\u2012": ("-",),
    "\u2013": ("-",),  # en dash
    "\u2014": ("-",),  # em dash
    "\u2015": ("-",),
    "\u00ab": ('"',),  # «
    "\u00bb": ('"',),  # »
    "\u201c": ('"',),
    "\u201d": ('"',),
    "\u201e": ('"',),
    "\u2018": ("'",),
    "\u2019": ("'",),
    "\u201a": ("'",),
    "\u2026": ("...",),
    "\u00a0": (" ",),
    "\u2007": (" ",),
    "\u2009": (" ",),
    "\u200a": (" ",),
    "\u202f": (" ",),
    "\u20bd": ("Р", "R"),  # rouble sign: a Cyrillic Er, as on price tags
    "\u2116": ("N",),  # № where the page lacks it
    "\u00d7": ("x",),  # ×
    "\u00b7": (".",),
    "\u2022": ("*",),
    # Signs a coupon's text uses that CP866 lacks, and that NFKD leaves or breaks: "½" was
    # "1?2" (its decomposition's fraction slash had no look-alike) and "€" "?" (review 59,
    # mut59e). A page that has the sign (CP1251's €, ©, ±) prints it as itself.
    "\u2044": ("/",),  # fraction slash: ½ ¼ ¾ ⅓ … decompose to 1⁄2, now "1/2"
    "\u2215": ("/",),  # division slash
    "\u20ac": ("EUR",),  # €
    "\u00a3": ("GBP",),  # £
    "\u20b4": ("грн", "UAH"),  # ₴ (hryvnia), as a Ukrainian price tag writes it
    "\u20b8": ("тг", "KZT"),  # ₸ (tenge)
    "\u00a9": ("(c)",),  # ©
    "\u00ae": ("(R)",),  # ®
    "\u00b1": ("+/-",),  # ±
    "\u00f7": (":",),  # ÷
    "\u2264": ("<=",),  # ≤
    "\u2265": (">=",),  # ≥
    "\u2248": ("~",),  # ≈
    "\u2032": ("'",),  # ′ (minutes, feet)
    "\u2033": ('"',),  # ″ (seconds, inches)
    "\u2039": ("<",),  # ‹
    "\u203a": (">",),  # ›
    "\u2192": ("->",),  # →
    "\u2190": ("<-",),  # ←
    "\u2713": ("\u221a", "v"),  # ✓: CP866's √
    "\u2714": ("\u221a", "v"),  # ✔
    "\u25cf": ("*",),  # ●
    "\u2605": ("*",),  # ★
    "\u2606": ("*",),  # ☆
    "\u0490": ("Г", "G"),  # Ґ
    "\u0491": ("г", "g"),  # ґ
    "\u0406": ("I",),  # І (Ukrainian/Belarusian)
    "\u0456": ("i",),  # і
    "\u0407": ("Ї", "I"),  # Ї
    "\u0457": ("ї", "i"),  # ї
    "\u0404": ("Є", "Э", "E"),  # Є
    "\u0454": ("є", "э", "e"),  # є
    "\u040e": ("Ў", "У", "U"),  # Ў
    "\u045e": ("ў", "у", "u"),  # ў
    "\u0401": ("Ё", "Е", "E"),  # Ё
    "\u0451": ("ё", "е", "e"),  # ё
    # Cyrillic letters of the other languages of Russia and its neighbours (Kazakh, Tatar,
    # Bashkir, Kyrgyz, Yakut, Tajik, Uzbek) that no code page of a Russian till has and
    # that do not decompose (rule 3 leaves them): the plain letter under the descender,
    # the bar or the hook, as a Russian writes such a name ("Айгүл" as "Айгул"). A name
    # of them was left out as unshowable (review 40, rev40d).
    "\u04d8": ("А", "A"),  # Ә
    "\u04d9": ("а", "a"),
    "\u0492": ("Г", "G"),  # Ғ
    "\u0493": ("г", "g"),
    "\u0494": ("Г", "G"),  # Ҕ
    "\u0495": ("г", "g"),
    "\u0496": ("Ж", "Zh"),  # Җ
    "\u0497": ("ж", "zh"),
    "\u0498": ("З", "Z"),  # Ҙ
    "\u0499": ("з", "z"),
    "\u049a": ("К", "K"),  # Қ
    "\u049b": ("к", "k"),
    "\u04a0": ("К", "K"),  # Ҡ
    "\u04a1": ("к", "k"),
    "\u04a2": ("Н", "N"),  # Ң
    "\u04a3": ("н", "n"),
    "\u04a4": ("Н", "N"),  # Ҥ
    "\u04a5": ("н", "n"),
    "\u04aa": ("С", "S"),  # Ҫ
    "\u04ab": ("с", "s"),
    "\u04ae": ("У", "U"),  # Ү
    "\u04af": ("у", "u"),
    "\u04b0": ("У", "U"),  # Ұ
    "\u04b1": ("у", "u"),
    "\u04b2": ("Х", "Kh"),  # Ҳ
    "\u04b3": ("х", "kh"),
    "\u04b6": ("Ч", "Ch"),  # Ҷ
    "\u04b7": ("ч", "ch"),
    "\u04ba": ("Х", "Kh"),  # Һ
    "\u04bb": ("х", "kh"),
    "\u04e8": ("О", "O"),  # Ө
    "\u04e9": ("о", "o"),
}

# Russian → Latin for code pages without Cyrillic (simplified ICAO / passport style).
_TRANSLIT = dict(
    zip(
        "абвгдежзийклмнопрстуфхцчшщъыьэюя",
        [
            "a", "b", "v", "g", "d", "e", "zh", "z", "i", "i", "k", "l", "m", "n", "o", "p",
            "r", "s", "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "iu",
            "ia",
        ],
        strict=True,
    )
)  # fmt: skip


# Unicode's default-ignorable code points that are no format character (those go as Cf
# below): they show nothing on a screen, and a code page lacks them, so a display or a
# printer showed "?" for them, and a first name with one was left out as unshowable:
# "Добрый день!" to "Анна\ufe0f" (review 38, rev38e).
IGNORABLE = (
    frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0")
    | frozenset(map(chr, range(0xFE00, 0xFE10)))  # variation selectors 1-16
    | frozenset(map(chr, range(0xE0100, 0xE01F0)))  # variation selectors 17-256
)


# Combining and enclosing marks (Unicode Mn, Me): rule 3 drops them where the page lacks
# them; a first name is counted without them (`printer.messages.first_name_only`).
MARKS = ("Mn", "Me")


def clean(text: str) -> str:
    """NFC-normalise; tabs and line breaks become spaces; other control characters go, as
    do the other characters that show nothing (`IGNORABLE`)."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in "\t\n\r\v\f\u2028\u2029\x85":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in IGNORABLE:
            continue  # ESC, NUL, C1 controls, soft hyphen, zero-width joiners, unassigned
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=64)
def _can(codec: str, text: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _translit(ch: str) -> str | None:
    low = ch.lower()
    if low not in _TRANSLIT:
        return None
    latin = _TRANSLIT[low]
    if ch != low and latin:
        return latin[0].upper() + latin[1:]
    return latin


def _degrade_char(ch: str, codec: str) -> str:
    if _can(codec, ch):
        return ch
    for candidate in _LOOKALIKES.get(ch, ()):
        if _can(codec, candidate):
            return candidate
    latin = _translit(ch)
    if latin is not None and _can(codec, latin):
        return latin
    stripped = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    if stripped and stripped != ch and all(_can(codec, c) for c in stripped):
        return stripped
    if stripped and stripped != ch:
        return "".join(_degrade_char(c, codec) for c in stripped)
    if unicodedata.category(ch) in MARKS:
        # an accent on its own (a stress mark over a Cyrillic vowel, which has no precomposed
        # form: "моло́ко"), dropped as rule 3 drops the accents of precomposed letters
        return ""
    return "?"


def degrade(text: str, codec: str) -> str:
    """Clean ``text`` and replace what ``codec`` cannot encode by readable look-alikes.

    A capital whose Latin takes two letters or more is written in capitals in a word in
    capitals ("ЯБЛОКИ" → "IABLOKI", "ЩИ" → "SHCHI", as a passport writes them), title-case
    otherwise ("Яблоки" → "Iabloki", "Я" alone → "Ia"): "IaBLOKI" read as a misprint."""
    cleaned = clean(text)
    out: list[str] = []
    for i, ch in enumerate(cleaned):
        piece = _degrade_char(ch, codec)
        if (
            len(piece) > 1
            and ch.isupper()
            and piece[1:].islower()
            and _in_capitals(cleaned, i)
            and _can(codec, piece.upper())
        ):
            piece = piece.upper()
        out.append(piece)
    return "".join(out)


def _in_capitals(text: str, i: int) -> bool:
    """Whether the capital at `i` stands in a word in capitals: the letter after it is a
    capital, or, at the word's end, the letter before it is. The marks between (a stress
    mark over a vowel, "Я́БЛОКИ", which rule 3 drops) are looked past: they part no word
    (review 44, review44: "Я́БЛОКИ" printed "IaBLOKI")."""
    j = i + 1
    while j < len(text) and unicodedata.category(text[j]) in MARKS:
        j += 1
    after = text[j] if j < len(text) else ""
    if after.isalpha():
        return after.isupper()
    k = i - 1
    while k >= 0 and unicodedata.category(text[k]) in MARKS:
        k -= 1
    before = text[k] if k >= 0 else ""
    return before.isalpha() and before.isupper()


def encode(text: str, codec: str) -> bytes:
    """Encode ``text`` for a single-byte code page; never raises for unencodable characters."""
    return degrade(text, codec).encode(codec)


def wrap(text: str, width: int) -> list[str]:
    """Word-wrap a paragraph to ``width`` columns; an empty paragraph is one empty line."""
    lines = textwrap.wrap(
        text,
        width=width,
        break_long_words=True,
        break_on_hyphens=True,
        drop_whitespace=True,
    )
    return lines or [""]


def fit(text: str, width: int) -> str:
    """Shorten one line to ``width`` columns, sensibly: cut at a word and mark it with ".".

    The cut is at the last word within the row when that keeps at least half of it
    ("Молоко, кефир и сметана" at 12 → "Молоко."), else mid-word ("Молоко
    ультрапастеризованное" at 20 → "Молоко ультрапастер.": "Молоко." would leave most of
    the row empty; this docstring said "Молоко." until review 59); a single long word is
    cut and ends in ".". Never returns more than ``width`` characters.
    """
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = text[: width - 1]
    if " " in head and text[width - 1] != " ":
        cut = head.rsplit(" ", 1)[0]
        if len(cut) >= width // 2:
            head = cut
    head = head.rstrip(" ,.;:-–—")
    return head + "."


def format_decimal(value: Any) -> str:
    """A decimal text as a person writes it: "15", "1.50" → "1,5", "1E-7" → "0,0000001"."""
    text = str(value)
    with contextlib.suppress(ArithmeticError, ValueError):
        number = Decimal(text)
        if number.is_finite():
            text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.replace(".", ",")


def format_money(minor: int) -> str:
    """Roubles with a comma and spaces between thousands: 1234567 → "12 345,67"."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError("money is an integer number of minor units")
    sign = "-" if minor < 0 else ""
    rub, kop = divmod(abs(minor), 100)
    return f"{sign}{rub:,}".replace(",", " ") + f",{kop:02d}"
