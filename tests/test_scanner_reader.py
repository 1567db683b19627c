"""The kiosk's serial scanner: CR/LF framing, timeouts, unplug and reconnect."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest
import serial
from tillpoint.printer.config import ScannerConfig
from tillpoint.printer.errors import PrinterConfigError
from tillpoint.printer.scanner import ScannerReader, ScanSplitter
from tillpoint.printer.transport import open_serial
from tillpoint.printer.virtual_display import PtyPair

needs_socat = pytest.mark.skipif(not PtyPair.available(), reason="socat is not installed")


def test_cr_lf_and_crlf_each_end_one_scan_across_chunk_boundaries() -> None:
    s = ScanSplitter()
    assert s.feed(b"2770000") == []
    assert s.feed(b"000017\r") == ["2770000000017"]
    assert s.feed(b"\n+7 916 123-45-67\n\r\nTP1-o-1\r") == ["+7 916 123-45-67", "TP1-o-1"]
    assert s.feed(b"  \r\n") == []  # blank scans are dropped


def test_overlong_noise_is_dropped_whole_and_bad_bytes_do_not_crash() -> None:
    s = ScanSplitter(max_length=16)
    assert s.feed(b"x" * 40 + b"\r2770000000017\r") == ["2770000000017"]
    assert s.feed(b"\xff\xfe12\x1b34\r") == ["\ufffd\ufffd1234"]


def test_scans_over_pyserial_loop_reach_the_callback() -> None:
    port = serial.serial_for_url("loop://", timeout=0.05)
    got: queue.Queue[str] = queue.Queue()
    reader = ScannerReader("loop://", got.put, read_timeout_s=0.05, port_factory=lambda: port)
    reader.start()
    try:
        port.write(b"2770000000017\r\n")
        port.write(b"4601234")
        port.write(b"000017\r")
        assert got.get(timeout=15) == "2770000000017"
        assert got.get(timeout=15) == "4601234000017"
        assert reader.status()["scans"] == 2 and reader.status()["state"] == "OK"
    finally:
        reader.stop()


def test_a_failing_callback_does_not_stop_the_reader() -> None:
    port = serial.serial_for_url("loop://", timeout=0.05)
    got: list[str] = []

    def on_scan(text: str) -> None:
        got.append(text)
        if text == "bad":
            raise RuntimeError("boom")

    reader = ScannerReader("loop://", on_scan, read_timeout_s=0.05, port_factory=lambda: port)
    reader.start()
    try:
        port.write(b"bad\rgood\r")
        deadline = time.monotonic() + 15
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == ["bad", "good"]
    finally:
        reader.stop()


def test_idle_flush_for_scanners_without_a_suffix() -> None:
    port = serial.serial_for_url("loop://", timeout=0.05)
    got: queue.Queue[str] = queue.Queue()
    reader = ScannerReader(
        "loop://", got.put, read_timeout_s=0.05, idle_flush_s=0.2, port_factory=lambda: port
    )
    reader.start()
    try:
        port.write(b"2770000000017")
        assert got.get(timeout=15) == "2770000000017"
    finally:
        reader.stop()


def test_from_config() -> None:
    with pytest.raises(PrinterConfigError):
        ScannerReader.from_config(ScannerConfig(), print)
    cfg = ScannerConfig(kind="serial", device="/dev/ttyACM0", baudrate=115200)
    assert ScannerReader.from_config(cfg, print).baudrate == 115200


@needs_socat
def test_scanner_on_a_pty_survives_being_unplugged(tmp_path: Path) -> None:
    pair = PtyPair(tmp_path / "pty").start()
    got: queue.Queue[str] = queue.Queue()
    reader = ScannerReader(str(pair.device), got.put, read_timeout_s=0.05, reconnect_s=0.1)
    reader.start()
    peer: Any = open_serial(str(pair.peer))
    try:
        deadline = time.monotonic() + 15
        while reader.status()["state"] != "OK" and time.monotonic() < deadline:
            time.sleep(0.01)
        peer.write(b"2770000000017\r\n")
        assert got.get(timeout=15) == "2770000000017"

        peer.write(b"27700")  # a half scan, then the cable is pulled
        time.sleep(0.1)
        peer.close()
        pair.stop()
        deadline = time.monotonic() + 15
        while reader.status()["state"] != "OFFLINE" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.status()["state"] == "OFFLINE"

        pair.start()
        peer = open_serial(str(pair.peer))
        deadline = time.monotonic() + 15
        while reader.status()["state"] != "OK" and time.monotonic() < deadline:
            time.sleep(0.01)
        peer.write(b"TP1-o-1\r")
        assert got.get(timeout=15) == "TP1-o-1"  # the half scan was not glued on
        assert got.empty()
    finally:
        reader.stop()
        peer.close()
        pair.stop()
