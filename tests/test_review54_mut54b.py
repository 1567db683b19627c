"""Review 54 (mut54b): what the customer sees, pinned where mutation testing found no test.

The printed offers block (`printer/layout.py`, through python-escpos' own Dummy printer and
decoded back with `printer/decode.py`, so each test says what is on the paper) and the
customer display (`printer/display.py`, over pyserial's `loop://`, the display's end read
back with `virtual_display.DisplayScreen`). Each test fails on the mutant it is named for in
docs/DECISIONS.md, review 54 (mut54b). Figures are worked by hand in the comments.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import serial
from tillpoint.printer.config import DisplayConfig, PrinterConfig
from tillpoint.printer.decode import Barcode, Document, Image, QRCode, decode
from tillpoint.printer.display import CustomerDisplay, init_bytes, message_bytes
from tillpoint.printer.errors import TransportError
from tillpoint.printer.layout import offers_blocks, render_escpos
from tillpoint.printer.messages import greeting
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.profiles import resolve_profile
from tillpoint.printer.virtual_display import DisplayScreen

LINES = ["Анна, добрый день!", "Бонусы: 1192"]


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
    assert doc.complete
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
