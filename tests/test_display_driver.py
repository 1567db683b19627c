"""Pole display driver: exact bytes of both command sets, Cyrillic, and unplugging mid-sale."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from typing import Any

import pytest
import serial
from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import CustomerDisplay, init_bytes, message_bytes
from tillpoint.printer.errors import TransportError
from tillpoint.printer.virtual_display import DisplayScreen, PtyPair

needs_socat = pytest.mark.skipif(not PtyPair.available(), reason="socat is not installed")

EPSON = DisplayConfig(kind="serial", device="loop://")
CD5220 = DisplayConfig(kind="serial", device="loop://", command_set="cd5220", brightness=2)
LINES = ["Анна, добрый день!", "Бонусы: 1192"]


def cp(text: str) -> bytes:
    return text.encode("cp866")


def test_epson_command_set_bytes() -> None:
    assert (
        init_bytes(EPSON) == b"\x1b\x40" + b"\x1f\x01" + b"\x1b\x74\x11" + b"\x1f\x58\x04" + b"\x0c"
    )
    assert message_bytes(LINES, EPSON) == (
        b"\x1b\x74\x11" + b"\x1f\x01"
        + b"\x1f\x24\x01\x01" + cp("Анна, добрый день!  ")
        + b"\x1f\x24\x01\x02" + cp("Бонусы: 1192        ")
    )  # fmt: skip


def test_cd5220_command_set_bytes() -> None:
    assert (
        init_bytes(CD5220)
        == b"\x1b\x40" + b"\x1b\x11" + b"\x1b\x66\x52" + b"\x1b\x2a\x02" + b"\x0c"
    )
    assert message_bytes(LINES, CD5220) == (
        b"\x1b\x66\x52" + b"\x1b\x11"
        + b"\x1b\x6c\x01\x01" + cp("Анна, добрый день!  ")
        + b"\x1b\x6c\x01\x02" + cp("Бонусы: 1192        ")
    )  # fmt: skip


def test_code_table_and_charset_are_configurable() -> None:
    cfg = DisplayConfig(kind="serial", device="x", codepage="cp1251", codepage_table=46)
    assert message_bytes(["Ґанок"], cfg).startswith(b"\x1b\x74\x2e")
    assert "Ґанок".encode("cp1251") in message_bytes(["Ґанок"], cfg)
    assert message_bytes(["Ґанок"], EPSON).count(cp("Ганок")) == 1  # degraded, not garbled


def test_text_that_does_not_fit_never_spills_into_the_next_row() -> None:
    data = message_bytes(["Молоко ультрапастеризованное 3,2%", "«Скидка» — 15 ₽…", "3rd"], EPSON)
    screen = DisplayScreen()
    screen.feed(init_bytes(EPSON) + data)
    assert screen.text == ["Молоко ультрапастер.", '"Скидка" - 15 Р...']


def test_display_over_pyserial_loop_gets_init_then_message() -> None:
    port = serial.serial_for_url("loop://", timeout=0.2, write_timeout=0.5)
    display = CustomerDisplay(CD5220, port_factory=lambda: port)
    display.start()
    try:
        display.show(LINES)
        assert display.flush(15.0)
        data = port.read(4096)
        assert data == init_bytes(CD5220) + message_bytes(LINES, CD5220)
        display.set_brightness(1)
        display.clear()
        assert display.flush(15.0)
        assert port.read(4096) == b"\x1b\x2a\x01" + b"\x0c"
        assert display.status()["state"] == "OK"
    finally:
        display.stop()


def test_missing_display_never_blocks_and_is_reported(tmp_path: Path) -> None:
    cfg = DisplayConfig(kind="serial", device=str(tmp_path / "ttyUSB7"), reconnect_s=0.1)
    display = CustomerDisplay(cfg)
    display.start()
    try:
        started = time.monotonic()
        for _ in range(100):
            display.show(LINES)
        # a show that waited for the thread's next open (reconnect_s) would take 10 s; the
        # bound leaves a loaded machine room (test_review28_flake28 proves it with no clock;
        # 0.5 s until review 40)
        assert time.monotonic() - started < 3.0
        assert not display.flush(0.3)
        status = display.status()
        assert status["state"] == "OFFLINE" and "no such file" in (status["last_error"] or "")
        assert status["lines"] == LINES
    finally:
        display.stop()


def test_disabled_display_is_a_no_op() -> None:
    display = CustomerDisplay(DisplayConfig())
    display.start()
    display.show(LINES)
    assert display.status()["state"] == "DISABLED"
    display.stop()


class Peer:
    """The display end of the pty pair: what the customer would see.

    Opened with os.open rather than pyserial, whose open() flushes the input: bytes the
    driver wrote a moment before must not be lost to the test.
    """

    def __init__(self, pair: PtyPair, command_set: Any = "epson") -> None:
        self.fd = os.open(pair.peer, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.screen = DisplayScreen(command_set)

    def read_until(self, lines: list[str], timeout_s: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while self.screen.text != lines and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                self.screen.feed(os.read(self.fd, 4096))
        return self.screen.text

    def close(self) -> None:
        os.close(self.fd)


@needs_socat
@pytest.mark.parametrize("command_set", ["epson", "cd5220"])
def test_unplugged_mid_sale_then_back_shows_the_current_message(
    tmp_path: Path, command_set: str
) -> None:
    pair = PtyPair(tmp_path / "pty").start()
    cfg = DisplayConfig(
        kind="serial", device=str(pair.device), command_set=command_set, reconnect_s=0.1
    )  # type: ignore[arg-type]
    display = CustomerDisplay(cfg)
    display.start()
    peer = Peer(pair, command_set)
    try:
        display.show(LINES)
        assert peer.read_until(LINES) == LINES
        assert peer.screen.brightness == 4 and peer.screen.overwrite

        peer.close()
        pair.stop()  # the USB-serial adapter is pulled out
        started = time.monotonic()
        display.show(["Итого: 179,80", "Скидка: 26,97"])
        # the checkout does not wait (for a write's 0.5 s timeout, say); 10 ms was missed on
        # a busy machine (22 ms, once in 15), and test_review28_flake28 proves the point
        # with no clock, against a write that hangs
        assert time.monotonic() - started < 0.25
        deadline = time.monotonic() + 15
        while display.status()["state"] != "OFFLINE" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert display.status()["state"] == "OFFLINE"
        display.show(["Начислено: +37", "Бонусы: 1192"])

        pair.start()  # plugged back in
        peer = Peer(pair, command_set)
        assert peer.read_until(["Начислено: +37", "Бонусы: 1192"]) == [
            "Начислено: +37",
            "Бонусы: 1192",
        ]
        assert peer.screen.inits == 1  # re-initialised after the reconnect
        # The display's thread says OK once its write returns, a moment after the peer
        # has read the bytes (asserted at once, this failed now and then on a busy machine).
        deadline = time.monotonic() + 15
        while display.status()["state"] != "OK" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert display.status()["state"] == "OK"
    finally:
        display.stop()
        peer.close()
        pair.stop()


def test_a_port_that_fails_to_open_is_retried(tmp_path: Path) -> None:
    attempts: list[int] = []
    port = serial.serial_for_url("loop://", timeout=0.2)

    def factory() -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise TransportError("serial port /dev/ttyUSB0 not available: busy")
        return port

    display = CustomerDisplay(
        DisplayConfig(kind="serial", device="/dev/ttyUSB0", reconnect_s=0.05),
        port_factory=factory,
    )
    display.start()
    try:
        display.show(LINES)
        assert display.flush(15.0)
        assert len(attempts) == 3
        assert port.read(4096).endswith(message_bytes(LINES, display.config))
    finally:
        display.stop()
