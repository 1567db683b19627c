"""Review 54 (mut54b): what the customer sees, pinned where mutation testing found no test.

The printed offers block (`printer/layout.py`, through python-escpos' own Dummy printer and
decoded back with `printer/decode.py`, so each test says what is on the paper) and the
customer display (`printer/display.py`, over pyserial's `loop://`, the display's end read
back with `virtual_display.DisplayScreen`). Each test fails on the mutant it is named for in
docs/DECISIONS.md, review 54 (mut54b). Figures are worked by hand in the comments.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

import pytest
import serial
from tillpoint.printer.cli_support import preview_payload
from tillpoint.printer.config import DisplayConfig, PrinterConfig
from tillpoint.printer.decode import Barcode, Document, Image, QRCode, decode
from tillpoint.printer.display import CustomerDisplay, init_bytes, message_bytes
from tillpoint.printer.errors import TransportError
from tillpoint.printer.layout import offers_blocks, render_escpos, separator_bytes
from tillpoint.printer.messages import greeting
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.profiles import resolve_profile
from tillpoint.printer.render import render_text
from tillpoint.printer.virtual_display import DisplayScreen

LINES = ["Анна, добрый день!", "Бонусы: 1192"]


def cp866(text: str) -> bytes:
    return text.encode("cp866")


def paper(offers: list[dict[str, str]], first_name: str = "Анна", **config: Any) -> Document:
    """The coupon of these offers as the printer of `config` prints it."""
    payload = {
        "receiptId": "s1-t1-000123",
        "at": "2026-11-23T10:15:00+03:00",
        "firstName": first_name,
        "offers": offers,
    }
    profile = resolve_profile(PrinterConfig(**config))
    data = render_escpos(offers_blocks(parse_payload(payload)), profile)
    [doc] = decode(data, columns=profile.columns)
    return doc


def offer(code: str = "TP1-o-1", valid_from: str = "", valid_to: str = "") -> dict[str, str]:
    return {
        "id": code.removeprefix("TP1-"),
        "text": "Кофе",
        "validFrom": valid_from,
        "validTo": valid_to,
        "code": code,
    }


# ---------------------------------------------------------------------------- validity


def test_an_offer_from_midnight_with_no_end_prints_its_start_with_the_year() -> None:
    """mut54b validity `and` made `or` (line 106): with no end to borrow the year from, the
    start carries its own ("с 01.11.2026"); the mutant raised AttributeError (None.year)."""
    doc = paper([offer(valid_from="2026-11-01T00:00:00+03:00")])
    assert "Действует с 01.11.2026" in doc.text.splitlines()


def test_an_offer_across_new_year_prints_both_years() -> None:
    """The start says its year when the end's year differs: "с 15.12.2026 по 15.01.2027",
    never "с 15.12 по 15.01.2027" (which reads as December 2027; the same mutant)."""
    doc = paper(
        [offer(valid_from="2026-12-15T00:00:00+03:00", valid_to="2027-01-15T23:59:59+03:00")]
    )
    assert "Действует с 15.12.2026 по 15.01.2027" in doc.text.splitlines()


# ---------------------------------------------------------------------------- display


def shown_over_loop(lines: list[str], config: DisplayConfig) -> list[str]:
    """What a display on pyserial's loop:// shows after the driver's thread wrote `lines`."""
    port = serial.serial_for_url("loop://", timeout=0.2, write_timeout=0.5)
    display = CustomerDisplay(config, port_factory=lambda: port)
    display.start()
    try:
        display.show(lines)
        assert display.flush(30.0)
        screen = DisplayScreen(config.command_set, config.columns, config.rows, config.codepage)
        screen.feed(port.read(port.in_waiting))
        return screen.text
    finally:
        display.stop()


def test_a_greeting_whose_name_the_code_page_lacks_starts_with_a_capital() -> None:
    """mut54b showable `rest[0]`/`rest[1:]` (line 147, four constants): the agent's lines
    carry the name ("王小明, добрый день!"); the driver leaves it out and the rest begins
    the row capitalised: "Добрый день!" (the mutants showed "!обрый день!", "Ообрый
    день!", "Ддобрый день!")."""
    epson = DisplayConfig(kind="serial", device="loop://")
    assert shown_over_loop(["王小明, добрый день!", "Бонусы: 1192"], epson) == [
        "Добрый день!",
        "Бонусы: 1192",
    ]


# ---------------------------------------------------------------------------- codes


def test_a_code128_is_drawn_only_when_it_fits_the_paper_to_the_dot() -> None:
    """mut54b barcode_fits (line 161, `+` made `-`, the constants 11, 35, 20 and `<=`):
    CODE128 set B of 21 characters with its quiet zones is 11 × 21 + 35 (start, check, stop)
    + 20 (two quiet zones of 10) = 286 modules, 572 dots at 2 dots a module. A printer
    (TH230: barcodes and raster images, no native QR) whose printable width is 572 dots
    prints the barcode; at 571 it would be cut off, and the code is a raster QR instead.
    At 576 dots (80 mm) 21 characters fit and 22 (297 modules, 594 dots) do not."""
    code = "TP1-" + "abcdefghijklmnopq"  # 21 characters
    assert len(code) == 21

    def drawn(code: str, width_px: int) -> list[type]:
        doc = paper([offer(code)], profile="TH230", width_px=width_px)
        assert code in doc.text.splitlines()  # the letters under it, always
        return [type(i) for i in doc.items if isinstance(i, Barcode | Image | QRCode)]

    assert drawn(code, 572) == [Barcode]
    assert paper([offer(code)], profile="TH230", width_px=572).codes == [code]
    assert drawn(code, 571) == [Image]
    assert drawn(code, 576) == [Barcode]
    assert drawn(code + "r", 576) == [Image]
    # docs/PRINTING.md: "12 on 384 dots" (11 × 12 + 55 = 187 modules, 374 dots; 13: 396)
    assert drawn("TP1-abcdefgh", 384) == [Barcode]
    assert drawn("TP1-abcdefghi", 384) == [Image]


def test_a_long_name_the_code_page_lacks_leaves_the_greeting_whole_on_its_row() -> None:
    """mut54b showable lines 157-158 (`i > 0`, `i - 1`, `[:-1]`, `+ "!"`): a first name
    too long for "Name, добрый день!" is greeted "Добрый день," over "Name!"; one in letters
    the code page lacks (Greek on CP866) is left out and the comma becomes the "!" of
    "Добрый день!", over an empty row (never "Добрый день," over nothing)."""
    lines = greeting("Αλεξανδρούπολης", None)
    assert lines == ["Добрый день,", "Αλεξανδρούπολης!"]  # what the agent hands over
    epson = DisplayConfig(kind="serial", device="loop://")
    assert shown_over_loop(lines, epson) == ["Добрый день!", ""]


def wait_for(condition: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def queue_then_show(waiting: int, released: threading.Event) -> tuple[CustomerDisplay, Any]:
    """A display on loop:// that took its first message, then `waiting` bytes left unread in
    the line (the port's queue, which loop:// tells as `out_waiting`), then a new message.
    Once the driver drops the port, reopening it waits for `released` (an adapter not back
    yet), so the status keeps the reason the port was dropped for."""
    cfg = DisplayConfig(kind="serial", device="loop://", write_timeout_s=1.0, refresh_s=600)
    port = serial.serial_for_url("loop://", timeout=0.2, write_timeout=0.5)
    opened: list[int] = []

    def factory() -> Any:
        opened.append(1)
        if len(opened) > 1:
            released.wait(60.0)
            raise TransportError("serial port loop:// not available")
        return port

    display = CustomerDisplay(cfg, port_factory=factory)
    display.start()
    display.show(LINES)
    assert display.flush(30.0)
    assert port.read(port.in_waiting) == init_bytes(cfg) + message_bytes(LINES, cfg)
    assert wait_for(lambda: display.status()["state"] == "OK")
    port.write(b"\x00" * waiting)  # the display reads nothing more: bytes wait in the line
    assert port.out_waiting == waiting
    display.show(["Итого: 179,80", "Скидка: 26,97"])
    return display, port


def test_a_message_goes_out_behind_256_waiting_bytes_and_not_behind_257() -> None:
    """mut54b QUEUED_MAX 256 made 255 or 257: the contract's §8 bound, to the byte. With
    256 bytes still in the line the new message is written behind them; with 257 it is
    not: the driver waits `write_timeout_s` for the line, then the display is OFFLINE
    with the count in its reason, and what waited is dropped."""
    released = threading.Event()
    display, port = queue_then_show(256, released)
    try:
        assert display.flush(30.0)
        data = port.read(port.in_waiting)
        assert data == b"\x00" * 256 + message_bytes(
            ["Итого: 179,80", "Скидка: 26,97"], display.config
        )
    finally:
        released.set()
        display.stop()

    released = threading.Event()
    display, port = queue_then_show(257, released)
    try:
        assert wait_for(lambda: display.status()["state"] == "OFFLINE")
        reason = display.status()["last_error"] or ""
        assert "the display takes no data (257 bytes still waiting after 1 s" in reason
    finally:
        released.set()
        display.stop()


def dots(image: Image) -> list[list[int]]:
    """The raster's dots, row by row (1 = black)."""
    row_bytes = (image.width + 7) // 8
    return [
        [(image.raster[y * row_bytes + x // 8] >> (7 - x % 8)) & 1 for x in range(image.width)]
        for y in range(image.height)
    ]


def qr_dots(data: str, module: int) -> list[list[int]]:
    """The QR symbol of `data` as qrcode makes it (error correction M, a quiet zone of two
    modules), `module` dots a module: the independent picture the paper must match."""
    qrcode: Any = importlib.import_module("qrcode")
    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    return [
        [int(cell) for cell in row for _ in range(module)]
        for row in qr.get_matrix()
        for _ in range(module)
    ]


def raster_qr(code: str, **config: Any) -> Image:
    doc = paper([offer(code)], **config)
    [image] = [i for i in doc.items if isinstance(i, Image)]
    assert code in doc.text.splitlines()
    return image


def test_a_raster_qr_is_the_codes_symbol_dot_for_dot_with_its_quiet_zone() -> None:
    """mut54b `_qr_image` border 2 made 1 or 3 and the raster module `max(2, 6 // 2 + 2)`
    (line 300's constants, `+` made `-`, `max` made `min`): on a printer that draws only
    raster images (NT-5890K, 58 mm, 384 dots) "TP1-o-1" is QR version 1 (21 modules) with
    two modules of quiet zone, 25 modules at 5 dots = 125 dots square, left-aligned in
    rows of 16 bytes (128 dots, the last 3 white), every dot as qrcode draws the symbol."""
    image = raster_qr("TP1-o-1", profile="NT-5890K")
    assert (image.width, image.height) == (128, 125)
    expected = qr_dots("TP1-o-1", 5)
    assert [row[:125] for row in dots(image)] == expected
    assert all(row[125:] == [0, 0, 0] for row in dots(image))
    # `qr_module_px` 1..16 (the configured native module) makes 2..10 dots a raster
    # module: 1 → 2 (never below 2: mutant line 300 `max(2,` made `max(3,`), 16 → 10
    assert raster_qr("TP1-o-1", profile="NT-5890K", qr_module_px=1).height == 25 * 2
    assert raster_qr("TP1-o-1", profile="NT-5890K", qr_module_px=16).height == 25 * 10


def test_a_raster_qr_wider_than_the_paper_is_drawn_at_2_dots_a_module() -> None:
    """mut54b line 301 (`>` made `>=`, the test negated) and 302 (2 made 1 or 3): a code of
    20 characters is QR version 2 (25 modules + 4 of quiet zone = 29), 145 dots at 5 dots a
    module: on paper 145 dots wide it is drawn so; on 144 dots it would not fit and is
    drawn at 2 dots a module, 58 dots."""
    code = "TP1-abcdefghijklmnop"
    assert raster_qr(code, profile="NT-5890K", width_px=145).height == 145
    narrow = raster_qr(code, profile="NT-5890K", width_px=144)
    assert narrow.height == 58
    assert [row[:58] for row in dots(narrow)] == qr_dots(code, 2)


def barcode_commands(**config: Any) -> tuple[int, int]:
    """(height, module width) of the CODE128 the printer of `config` is sent: the `GS h n`
    and `GS w n` before its `GS k`."""
    profile = resolve_profile(PrinterConfig(**config))
    blocks = offers_blocks(
        parse_payload({"receiptId": "r1", "at": "2026-11-23T10:15:00+03:00", "offers": [offer()]})
    )
    data = render_escpos(blocks, profile)
    [doc] = decode(data, columns=profile.columns)
    assert [i for i in doc.items if isinstance(i, Barcode)] == [Barcode("CODE128", "TP1-o-1")]
    head = data[: data.index(b"\x1dk")]
    height = head[head.rindex(b"\x1dh") + 2]
    width = head[head.rindex(b"\x1dw") + 2]
    return height, width


def test_a_barcode_is_a_third_of_an_inch_high_at_2_dots_a_module_and_never_under_48() -> None:
    """mut54b line 291-292 (`max(48, dpi // 3)`: `max` made `min`, 48 and 3 moved; `width=2`
    moved): the bars are a third of an inch high, 67 dots at 203 dpi (TH230), 60 at 180 dpi
    (TM-T88V, a barcode forced), and never under 48 dots (SP2000, 85 dpi: 48, not 28);
    each module 2 dots wide, as `barcode_fits` counts them."""
    assert barcode_commands(profile="TH230") == (67, 2)
    assert barcode_commands(profile="TM-T88V", code="barcode") == (60, 2)
    assert barcode_commands(profile="SP2000", code="barcode") == (48, 2)


def test_a_printer_without_a_cutter_ends_the_coupon_with_six_lines_of_feed() -> None:
    """mut54b `_cut`'s `print_and_feed(6)` made 5 or 7: `cut = "none"` ends the job with
    `ESC d 6` (the coupon's last line fed past the tear bar) and sends no `GS V`."""
    profile = resolve_profile(PrinterConfig(cut="none"))
    data = render_escpos(
        offers_blocks(
            parse_payload({"receiptId": "r1", "at": "2026-11-23T10:15:00+03:00", "offers": []})
        ),
        profile,
    )
    assert data.endswith(cp866("Чек r1, 23.11.2026 10:15") + b"\n" + b"\x1bd\x06")
    assert b"\x1dV" not in data


def test_the_display_takes_brightness_1_to_4_and_refuses_0_and_5() -> None:
    """mut54b `set_brightness`' `1 <= level <= 4` (1 made 0, the second `<=` made `<`):
    the display's four levels are 1..4; level 4 goes out as CD5220's `1B 2A 04`."""
    cfg = DisplayConfig(kind="serial", device="loop://", command_set="cd5220", brightness=1)
    port = serial.serial_for_url("loop://", timeout=0.2, write_timeout=0.5)
    display = CustomerDisplay(cfg, port_factory=lambda: port)
    display.start()
    try:
        display.show(LINES)
        assert display.flush(30.0)
        port.read(port.in_waiting)
        for level in (0, 5):
            with pytest.raises(ValueError, match="display brightness is 1 to 4"):
                display.set_brightness(level)
        display.set_brightness(4)
        assert display.flush(30.0)
        assert port.read(port.in_waiting).startswith(b"\x1b\x2a\x04")
    finally:
        display.stop()


def test_the_cut_after_a_torn_attempt_begins_with_96_nuls() -> None:
    """mut54b TORN_COMMAND_MAX 96 made 95 or 97: the contract's §7 figure ("at least 96"
    NULs, then `ESC @`, the feed and the cut) for a torn job whose codes draw shorter
    commands (a native QR of "TP1-o-1" is 49 bytes, its `GS ( k` commands and a line feed)."""
    profile = resolve_profile(PrinterConfig())
    data = separator_bytes(profile, ["TP1-o-1"])
    assert data == b"\x00" * 96 + b"\x1b@" + b"\x1bd\x06" + b"\x1dV\x01"


def test_a_display_shown_nothing_has_nothing_to_flush() -> None:
    """mut54b `CustomerDisplay.__init__`'s counters (`_gen = 0` made 1, `_written = 0`
    made -1): nothing shown is nothing to wait for, so `flush` answers True at once, even
    while the port cannot be opened."""
    cfg = DisplayConfig(kind="serial", device="/dev/ttyUSB9", reconnect_s=600)

    def factory() -> Any:
        raise TransportError("serial port /dev/ttyUSB9 not available")

    display = CustomerDisplay(cfg, port_factory=factory)
    display.start()
    try:
        assert wait_for(lambda: display.status()["state"] == "OFFLINE")
        assert display.status()["device"] == "/dev/ttyUSB9"  # mutant `or` made `and`: "none"
        assert display.flush(0.5)
        display.show(LINES)
        assert not display.flush(0.2)  # shown now, and no port to write it to
    finally:
        display.stop()


# ---------------------------------------------------------------------------- the preview


def preview_of(profile: PrinterConfig | str) -> list[str]:
    payload = parse_payload(
        {
            "receiptId": "r1",
            "at": "2026-11-23T10:15:00+03:00",
            "firstName": "Анна",
            "offers": [offer()],
        }
    )
    return preview_payload(payload, profile=profile).splitlines()


def test_the_preview_for_a_printer_without_a_cutter_shows_the_coupon_whole() -> None:
    """The fault review 54 (mut54b) fixed: a coupon for a printer without a cutter
    (`cut = "none"`, or a profile with none, NT-5890K) ends with its feed by design, and
    `tillpoint print preview` drew every such coupon with the banner of a job broken off,
    "~ не отрезано: печать прервана ~" ("not cut: printing interrupted"). It shows the
    coupon, the feed's blank rows and nothing more; a cutter's coupon still shows its cut."""
    for profile in (
        PrinterConfig(kind="file", device="/tmp/unused-mut54b", cut="none"),
        "NT-5890K",
    ):
        rows = preview_of(profile)
        assert rows[-4:] == [rows[-4], "", "", ""], rows
        assert rows[-4].strip() == "Чек r1, 23.11.2026 10:15"
        assert not any("прервана" in row for row in rows), rows
    assert preview_of("generic-80mm")[-1] == " надрез ".center(48, "-")


def test_the_text_preview_places_aligns_spaces_wide_letters_and_caps_feeds_at_3_rows() -> None:
    """mut54b `render.render_text` and its helpers (`_place`'s branches, `_visible`'s
    `k + 1`, the default 48 columns, the width of a narrow letter, `min(lines, 3)`): a
    centred word sits in the middle of 48 columns (43 spare: 21 before it), a right-aligned
    one ends at column 48, double-width letters are spaced ("Ш И Р Е"; a line of one wide
    letter and three narrow ones too), a feed shows as its blank rows but 3 at most (5 → 3,
    2 → 2), and the feed before the cut is not drawn (it only moves the paper past the
    cutter)."""
    esc = b"\x1b"
    data = (
        esc + b"@" + esc + b"t\x11"
        + esc + b"a\x01" + cp866("ЦЕНТР") + b"\n"
        + esc + b"a\x02" + cp866("справа") + b"\n"
        + esc + b"a\x00" + esc + b"! " + cp866("ШИРЕ") + b"\n"
        + cp866("Ш") + esc + b"!\x00" + cp866("ире") + b"\n"
        + esc + b"d\x05" + cp866("после") + b"\n"
        + esc + b"d\x02" + cp866("конец") + b"\n"
        + esc + b"d\x06" + b"\x1dV\x01"
    )  # fmt: skip
    [doc] = decode(data)
    assert render_text(doc).split("\n") == [
        " " * 21 + "ЦЕНТР",
        " " * 42 + "справа",
        "Ш И Р Е",
        "Ш и р е",
        "",
        "",
        "",
        "после",
        "",
        "",
        "конец",
        "-" * 20 + " надрез " + "-" * 20,
        "",
    ]


def display_threads() -> int:
    return sum(t.name == "tillpoint-display" for t in threading.enumerate())


def test_a_clear_is_written_before_flush_returns_and_start_runs_one_writer() -> None:
    """mut54b `clear`'s `_gen += 1` (made `-=` or `+= 0`: `flush` returned before the clear
    went out, the last customer's total still on the display) and `start`'s `or` (made
    `and`: a second `start` ran a second writer; a disabled display's `start` ran one)."""
    before = display_threads()
    CustomerDisplay(DisplayConfig()).start()  # kind "none": nothing to run
    assert display_threads() == before
    cfg = DisplayConfig(kind="serial", device="loop://")
    port = serial.serial_for_url("loop://", timeout=0.2, write_timeout=0.5)
    display = CustomerDisplay(cfg, port_factory=lambda: port)
    display.start()
    display.start()
    try:
        assert display_threads() == before + 1
        display.show(LINES)
        assert display.flush(30.0)
        assert port.read(port.in_waiting) == init_bytes(cfg) + message_bytes(LINES, cfg)
        display.clear()
        assert display.flush(30.0)
        assert port.read(port.in_waiting) == b"\x0c"
    finally:
        display.stop()
