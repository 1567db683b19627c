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

import json
import queue
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import serial
from pydantic import BaseModel, ValidationError
from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
from tillpoint.printer.display import message_bytes
from tillpoint.printer.scanner import ScannerReader
from tillpoint.printer.text import _LOOKALIKES, degrade, encode

from .conftest import REPO
from .test_review44_review44 import _can
from .test_review59_mut59c import paper, run_tillpoint, write_config

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
        if _can(sign, codec):
            assert degrade(sign, codec) == sign, (sign, codec)
        else:
            assert "?" not in degrade(sign, codec), (sign, codec)


def test_every_look_alike_is_text_a_printer_prints() -> None:
    """Each look-alike is printable: no control character (no look-alike can carry a
    printer command), and the last one of each is in CP866 or ASCII, so no sign of the
    table degrades to "?" on a Russian till's page."""
    for sign, candidates in _LOOKALIKES.items():
        assert candidates, sign
        for candidate in candidates:
            assert candidate == " " or (candidate.isprintable() and candidate.strip() == candidate)
        assert any(_can(c, "cp866") for c in candidates), sign
        assert "?" not in degrade(sign, "ascii"), sign


# --- the configuration: what the example and the printing guide state ------------------

EXAMPLE = REPO / "packaging" / "tillpoint.example.toml"
GUIDE = REPO / "docs" / "PRINTING.md"
MODELS: dict[str, type[BaseModel]] = {
    "printer": PrinterConfig,
    "display": DisplayConfig,
    "scanner": ScannerConfig,
}
# a device's choice of connection, not a setting with a default (the guide's example sets
# a network printer, a serial display and a serial scanner)
CHOSEN = {"kind", "host", "device"}
KEY_LINE = re.compile(r"^(#\s?)?(\w+)\s*=\s*(.*?)(?:\s+#\s*(.*))?$")
CONTINUED = re.compile(r"^#\s{5,}#")  # the guide's comment continued under a key's


def device_keys(text: str) -> list[tuple[str, str, str, bool, str]]:
    """(table, key, value as written, set or commented out, its comment) of each key line
    of the device tables in a TOML text."""
    out, table = [], ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            table = m.group(1)
        elif table in MODELS and (m := KEY_LINE.match(line)):
            key = m.group(2)
            if key in MODELS[table].model_fields:
                out.append((table, key, m.group(3), m.group(1) is None, m.group(4) or ""))
    return out


def guide_toml() -> str:
    """docs/PRINTING.md's example of the three tables (its first TOML block)."""
    text = GUIDE.read_text(encoding="utf-8")
    return text.split("```toml\n", 1)[1].split("```", 1)[0]


def bounds(table: str, key: str) -> dict[str, Any]:
    """A field's bounds as the model checks them: ge, gt, le, max_length."""
    found: dict[str, Any] = {}
    for rule in MODELS[table].model_fields[key].metadata:
        for name in ("ge", "gt", "le", "max_length"):
            if getattr(rule, name, None) is not None:
                found[name] = getattr(rule, name)
    return found


def test_a_file_that_writes_out_every_default_the_example_shows_is_taken(
    tmp_path: Path,
) -> None:
    """The example's device tables with every key it shows commented out written out,
    through `tillpoint config check`: taken, and the till runs on what the example says
    (`stopbits = 1` written in a file: the stop bits' Literal [1, 2] as [2, 2] or [0, 2]
    took the default and refused the value the example shows)."""
    lines = []
    for table, key, written, _, _ in device_keys(EXAMPLE.read_text(encoding="utf-8")):
        if key in CHOSEN or (key.startswith("usb_") and key.endswith("_id")):
            continue  # the kind stays "none"; an id is no default (the example says whose)
        lines.append((table, f"{key} = {written}"))
    text = "".join(
        f"[{table}]\n" + "".join(f"{line}\n" for t, line in lines if t == table) for table in MODELS
    )
    assert "stopbits = 1" in text and "idle_flush_s = 0.1" in text
    config = write_config(tmp_path, text)
    run = run_tillpoint("--config", config, "config", "check", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    for table, line in lines:
        key, _, written = line.partition(" = ")
        camel = key.split("_")[0] + "".join(p.title() for p in key.split("_")[1:])
        value = shown[table].get(key, shown[table].get(camel))
        assert value == tomllib.loads(line)[key], (table, key, value)


def test_the_printing_guide_shows_the_defaults_the_till_runs_on() -> None:
    """docs/PRINTING.md's example of the tables: each value it sets (but the kind, the host
    and the device it chooses) is the code's default, as the till's IT team reads it; and
    each one it shows commented out is, or says that it has none."""
    checked = 0
    for table, key, written, is_set, comment in device_keys(guide_toml()):
        default = MODELS[table].model_fields[key].get_default(call_default_factory=True)
        if key in CHOSEN:
            continue
        if default is None:
            assert not is_set, (table, key)
            continue
        assert tomllib.loads(f"x = {written}")["x"] == default, (table, key, written, comment)
        checked += 1
    assert checked >= 30, checked


@pytest.mark.parametrize("source", ["example", "guide"])
def test_the_bounds_the_docs_state_are_the_tables_bounds(source: str) -> None:
    """ "columns = 20  # 8..40", "brightness = 4  # 1..4", "at most 96 characters", "at
    most a week (604800)": each range the example configuration or docs/PRINTING.md
    states beside a key is the one its table checks (a till's IT team tunes by them)."""
    text = EXAMPLE.read_text(encoding="utf-8") if source == "example" else guide_toml()
    lines = text.splitlines()
    stated = 0
    for i, line in enumerate(lines):
        m = KEY_LINE.match(line)
        table = _table_of(lines, i)
        if m is None or table not in MODELS or m.group(2) not in MODELS[table].model_fields:
            continue
        key = m.group(2)
        # its own comment, the comment line just above, and a continuation below it
        above, below = lines[i - 1], lines[i + 1] if i + 1 < len(lines) else ""
        comment = " ".join(
            [m.group(4) or ""]
            + [above] * (not KEY_LINE.match(above) and not CONTINUED.match(above))
            + [below] * bool(CONTINUED.match(below))
        )
        model = MODELS[table]
        if r := re.search(r"\b(\d+)\.\.(\d+)\b", comment):
            low, high = int(r[1]), int(r[2])
            assert bounds(table, key) == {"ge": low, "le": high}, (table, key)
            _takes(model, key, taken=(low, high), refused=(low - 1, high + 1))
            stated += 1
        if r := re.search(r"at most (\d+) characters", comment):
            most = int(r[1])
            assert bounds(table, key) == {"max_length": most}, (table, key)
            _takes(model, key, taken=("Ш" * most,), refused=("Ш" * (most + 1),))
            stated += 1
        if "a week" in comment:
            assert bounds(table, key) == {"gt": 0, "le": 604800}, (table, key)
            assert "604800" in comment
            _takes(model, key, taken=(0.5, 604800), refused=(0, 604801))
            stated += 1
    assert stated == (5 if source == "example" else 2), stated


def _takes(
    model: type[BaseModel], key: str, taken: tuple[Any, ...], refused: tuple[Any, ...]
) -> None:
    """The table takes each of `taken` for `key` and refuses each of `refused`, naming it."""
    for value in taken:
        assert getattr(model(**{key: value}), key) == value, (key, value)
    for value in refused:
        with pytest.raises(ValidationError) as caught:
            model(**{key: value})
        assert caught.value.errors()[0]["loc"] == (key,), (key, value)


def _table_of(lines: list[str], i: int) -> str:
    """The table line `i` stands in."""
    for line in reversed(lines[:i]):
        if m := re.match(r"^\[(\w+)\]", line):
            return m.group(1)
    return ""


# --- the configuration: a scanner's encoding -------------------------------------------


def test_a_utf16_scanner_read_its_first_scan_and_then_garbage_for_ever() -> None:
    """What `encoding = "utf-16"` did on the kiosk (pyserial's `loop://`, the real reader):
    the reader ends a scan at the byte CR or LF, so the scan after the first begins with
    the first one's NUL half of its LF and is read one byte out of step. Why such an
    encoding is refused now (below)."""
    port = serial.serial_for_url("loop://", timeout=0.05)
    got: queue.Queue[str] = queue.Queue()
    reader = ScannerReader(
        "loop://", got.put, encoding="utf-16", read_timeout_s=0.05, port_factory=lambda: port
    )
    reader.start()
    try:
        port.write("2770000000017\r\n4601234000017\r\n".encode("utf-16-le"))
        assert got.get(timeout=15) == "2770000000017"
        later = [got.get(timeout=15) for _ in range(2)]
        assert "4601234000017" not in later
    finally:
        reader.stop()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "cp037", "cp500", "utf-7"])
def test_a_scanner_encoding_that_reads_no_ascii_scan_is_refused(
    tmp_path: Path, encoding: str
) -> None:
    """`config check` said "valid" for a scanner `encoding` that decodes a scan without an
    error but not as the ASCII a scanner sends its barcodes, card numbers and phones in:
    "utf-16" (the first scan, then garbage), EBCDIC's "cp037" (one letter from cp437) no
    digit at all, "utf-7" a phone's "+" as the start of base64. Refused now, one line,
    exit 2 (the fault: each case passed the check before)."""
    config = write_config(
        tmp_path, f'[scanner]\nkind = "serial"\ndevice = "loop://"\nencoding = "{encoding}"\n'
    )
    run = run_tillpoint("--config", config, "config", "check", cwd=tmp_path)
    assert run.returncode == 2, run.stdout
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"scanner encoding {encoding!r} does not read a scan's digits" in run.stderr


def test_a_scanner_encoding_of_ascii_and_more_is_taken() -> None:
    """The encodings a kiosk's scanner is set to keep passing: UTF-8 (with or without its
    byte order mark), the Russian pages, Latin-1, and the CJK ones (ASCII below 0x80)."""
    for encoding in ("utf-8", "utf-8-sig", "cp1251", "cp866", "koi8_r", "latin-1", "gb18030"):
        assert ScannerConfig(encoding=encoding).encoding == encoding
