"""Review 55 (mut55b): the printer's and the kiosk scanner's connections, pinned after
mutation testing of `printer/transport.py` and `printer/scanner.py` (docs/PRINTING.md,
"Connections" and "Card scanner"; the contract §4 input, §12 printing).

Real parts only: pyserial `loop://` ports, the kernel's pseudo-terminals (`os.openpty`,
socat's pairs), TCP listeners on 127.0.0.1, regular files and FIFOs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import serial
from tillpoint.printer.scanner import ScannerReader, ScanSplitter
from tillpoint.printer.virtual_display import PtyPair

needs_socat = pytest.mark.skipif(not PtyPair.available(), reason="socat is not installed")

DEADLINE_S = 15.0


def wait_for(cond: Callable[[], bool], timeout_s: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def loop_reader(
    on_scan: Callable[[str], None], **kwargs: Any
) -> tuple[ScannerReader, serial.SerialBase]:
    kwargs.setdefault("read_timeout_s", 0.05)
    port = serial.serial_for_url("loop://", timeout=kwargs["read_timeout_s"])
    return ScannerReader("loop://", on_scan, port_factory=lambda: port, **kwargs), port


# --- the splitting: the maximum length ---------------------------------------------------


def test_a_scan_of_max_length_bytes_is_taken_and_one_byte_more_is_dropped_whole() -> None:
    s = ScanSplitter(max_length=16)
    assert s.feed(b"1234567890123456\r") == ["1234567890123456"]
    assert s.feed(b"12345678901234567\r") == []  # 17 bytes: noise, not 16 of it
    assert not s.pending
    assert s.feed(b"TP1-o-1\n") == ["TP1-o-1"]  # the next scan is whole


def test_the_default_maximum_is_128_bytes_for_the_splitter_and_the_reader() -> None:
    s = ScanSplitter()
    assert s.feed(b"7" * 128 + b"\r") == ["7" * 128]
    assert s.feed(b"7" * 129 + b"\r2770000000017\r") == ["2770000000017"]

    got: queue.Queue[str] = queue.Queue()
    reader, port = loop_reader(got.put)
    reader.start()
    try:
        port.write(b"8" * 129 + b"\r" + b"9" * 128 + b"\r")
        assert got.get(timeout=DEADLINE_S) == "9" * 128
        assert got.empty()
        assert reader.status()["scans"] == 1
    finally:
        reader.stop()


# --- the idle flush ----------------------------------------------------------------------


def test_a_pause_inside_one_read_ends_the_scan_and_is_not_glued_to_the_next() -> None:
    """A scanner without a suffix, `idle_flush_s` 0.2, reads that wait up to 3 s: the next
    scan's first byte came inside the read's wait and the two went out as one
    ("27700000000174601234000017", an unknown card) — fixed in review 55."""
    got: queue.Queue[str] = queue.Queue()
    reader, port = loop_reader(got.put, read_timeout_s=3.0, idle_flush_s=0.2)
    reader.start()
    try:
        assert wait_for(lambda: reader.status()["state"] == "OK")
        port.write(b"2770000000017")
        time.sleep(1.0)  # five times the idle pause, a third of the read's wait
        port.write(b"4601234000017\r")  # (the CR: the test need not wait 3 s for its flush)
        assert got.get(timeout=DEADLINE_S) == "2770000000017"
        assert got.get(timeout=DEADLINE_S) == "4601234000017"
    finally:
        threading.Timer(0.2, port.write, [b"\n"]).start()  # wakes the 3 s read for the stop
        reader.stop(timeout_s=DEADLINE_S)


def test_a_pause_shorter_than_idle_flush_does_not_split_a_scan() -> None:
    got: queue.Queue[str] = queue.Queue()
    reader, port = loop_reader(got.put, idle_flush_s=2.0)
    reader.start()
    try:
        assert wait_for(lambda: reader.status()["state"] == "OK")
        port.write(b"277000")
        time.sleep(0.3)  # many empty reads of 0.05 s, a pause well under 2 s
        port.write(b"0000017")
        assert got.get(timeout=DEADLINE_S) == "2770000000017"  # by the flush, 2 s later
        assert got.empty()
    finally:
        reader.stop()


def test_a_slow_on_scan_is_no_pause_the_bytes_that_waited_meanwhile_stay_one_scan() -> None:
    """A scanner with a suffix and `idle_flush_s` set: "X" ends in a CR and its on_scan
    (identification, the display) takes longer than the idle pause; the rest of the next
    scan, which came meanwhile, is glued to its start, not flushed apart from it."""
    got: list[str] = []
    in_scan, go_on = threading.Event(), threading.Event()

    def on_scan(text: str) -> None:
        got.append(text)
        if text == "X":
            in_scan.set()
            go_on.wait(DEADLINE_S)

    reader, port = loop_reader(on_scan, idle_flush_s=0.1)
    port.write(b"X\r27700")  # waiting before the first read: read in one piece
    reader.start()
    try:
        assert in_scan.wait(DEADLINE_S)
        port.write(b"00000017\r")
        time.sleep(0.5)  # the on_scan takes five idle pauses
        go_on.set()
        assert wait_for(lambda: len(got) >= 2)
        time.sleep(0.3)
        assert got == ["X", "2770000000017"]
    finally:
        go_on.set()
        reader.stop()


# --- the reads: how much at once, how long --------------------------------------------------


def test_a_scans_last_byte_alone_is_read_at_once_not_after_the_read_timeout() -> None:
    """Reads ask for what waits, one byte when nothing does: a CR coming alone after the
    scan's digits is read when it comes, not when a read of 2 or 4096 bytes times out."""
    got: queue.Queue[tuple[str, float]] = queue.Queue()
    reader, port = loop_reader(lambda text: got.put((text, time.monotonic())), read_timeout_s=6.0)
    reader.start()
    try:
        assert wait_for(lambda: reader.status()["state"] == "OK")
        port.write(b"2770000000017")
        time.sleep(0.5)
        sent = time.monotonic()
        port.write(b"\r")
        text, at = got.get(timeout=DEADLINE_S)
        assert text == "2770000000017"
        assert at - sent < 4.0  # milliseconds; a read waiting for more: 6 s
    finally:
        threading.Timer(0.2, port.write, [b"\n"]).start()
        reader.stop(timeout_s=DEADLINE_S)


def test_an_idle_reader_waits_in_its_read_and_burns_no_cpu() -> None:
    reader, port = loop_reader(lambda text: None, read_timeout_s=0.2)
    reader.start()
    try:
        assert wait_for(lambda: reader.status()["state"] == "OK")
        cpu = time.process_time()
        time.sleep(2.0)
        assert time.process_time() - cpu < 0.3  # a loop of empty reads: most of a core
    finally:
        reader.stop()
