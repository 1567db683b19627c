"""Review 59 (mut59e): the rest of review 59's mutation testing of the printer's payload
and configuration, and the signs CP866 lacks.

What mut59c left unrun of `printer/payload.py` (the times turned into the store's zone,
the payload's field bounds) and `printer/config.py` (the `[printer]`, `[display]` and
`[scanner]` tables' bounds and defaults, the models' flags, the module's bounds), run on
the suite's tests and on `tests/test_review59_mut59c.py`; what survived both is pinned
here. And the fault mut59c saw and left: "½" printed "1?2" and "€" "?" on CP866 (no
look-alike in `printer/text.py`). Each test says what the customer reads on the coupon
(python-escpos' own Dummy printer, read back with `printer/decode.py`, through mut59c's
`paper`) or on the pole display (the bytes for it), or what the till's configuration
answers (the models the CLI builds, real files through `tillpoint config check`), and
what the example configuration and docs/PRINTING.md say of it; each fails on a mutant
or a fault named in docs/DECISIONS.md, review 59 (mut59e).
"""

from __future__ import annotations

import pytest
from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import message_bytes
from tillpoint.printer.text import _LOOKALIKES, degrade, encode

from .test_review59_mut59c import paper

# --- the signs CP866 lacks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sign", "printed"),
    [
        ("½", "1/2"),
        ("¼", "1/4"),
        ("¾", "3/4"),
        ("⅓", "1/3"),
        ("€", "EUR"),
        ("£", "GBP"),
        ("₴", "грн"),
        ("₸", "тг"),
        ("©", "(c)"),
        ("®", "(R)"),
        ("±", "+/-"),
        ("÷", ":"),
        ("≤", "<="),
        ("≥", ">="),
        ("≈", "~"),
        ("′", "'"),
        ("″", '"'),
        ("‹", "<"),
        ("›", ">"),
        ("→", "->"),
        ("←", "<-"),
        ("✓", "√"),  # CP866 has the root sign
        ("●", "*"),
        ("★", "*"),
    ],
)
def test_a_sign_cp866_lacks_prints_as_its_look_alike(sign: str, printed: str) -> None:
    """mut59c saw "½" print "1?2" (NFKD's fraction slash U+2044 had no look-alike) and
    "€" "?", and left them: a coupon "Скидка ½ цены" read "Скидка 1?2 цены". Each common
    sign CP866 lacks has its look-alike now (the fault: each case fails before)."""
    assert degrade(sign, "cp866") == printed
    assert encode(sign, "cp866") == printed.encode("cp866")


def test_the_coupon_prints_half_price_and_euros_readably() -> None:
    """The coupon as the customer gets it: the offer's words on a CP866 printer."""
    lines = paper(
        {
            "receiptId": "r1",
            "offers": [{"id": "o-1", "text": "Скидка ½ цены на второй кофе, 2 € © Кофейня"}],
        }
    )
    assert lines[3:5] == ["Скидка 1/2 цены на второй кофе, 2 EUR (c)", "Кофейня"]
    assert not any("?" in line for line in lines)


def test_the_pole_display_shows_half_and_euro_within_its_row() -> None:
    """The display degrades a row before it fits it: "EUR" is three columns where "€"
    was one, and the row is still cut to the display's 20."""
    shown = message_bytes(["Кофе ½ цены", "Итого 2 € ≈ 200 ₽ ✓"], DisplayConfig())
    assert "Кофе 1/2 цены".encode("cp866") in shown
    assert "Итого 2 EUR ~ 200 Р.".encode("cp866") in shown  # 20 columns, cut with a dot
    assert b"?" not in shown


@pytest.mark.parametrize("codec", ["cp1251", "cp437", "cp1252"])
def test_a_page_that_has_the_sign_prints_it_as_itself(codec: str) -> None:
    """A look-alike only where the page lacks the sign: CP1251 and CP1252 have €, ©, ±;
    CP437 has ½, ¼, ±, ÷, ≤, ≥, ≈."""
    for sign in "€©®±½¼÷≤≥≈£":
        if _can_encode(sign, codec):
            assert degrade(sign, codec) == sign, (sign, codec)
        else:
            assert "?" not in degrade(sign, codec), (sign, codec)


def _can_encode(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def test_every_look_alike_is_text_a_printer_prints() -> None:
    """Each look-alike is printable: no control character (no look-alike can carry a
    printer command), and the last one of each is in CP866 or ASCII, so no sign of the
    table degrades to "?" on a Russian till's page."""
    for sign, candidates in _LOOKALIKES.items():
        assert candidates, sign
        for candidate in candidates:
            assert candidate == " " or (candidate.isprintable() and candidate.strip() == candidate)
        assert any(_can_encode(c, "cp866") for c in candidates), sign
        assert "?" not in degrade(sign, "ascii"), sign
