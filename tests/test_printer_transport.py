"""Printer connections: serial (pyserial loop:// and a socat pseudo-terminal), file, TCP, USB."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.decode import Decoder
from tillpoint.printer.errors import ConnectionLost, TransportError
from tillpoint.printer.queue import PrintWorker, enqueue, ensure_schema
from tillpoint.printer.transport import (
    FileTransport,
    NetworkTransport,
    SerialTransport,
    UsbTransport,
    make_transport,
    open_serial,
)
from tillpoint.printer.virtual_display import PtyPair

from .conftest import free_port

PAYLOAD = {
    "receiptId": "r-serial",
    "firstName": "Ольга",
    "offers": [{"id": "o-5", "text": "Сыр −20%", "validTo": "2099-12-31T23:59:59+03:00"}],
}

needs_socat = pytest.mark.skipif(not PtyPair.available(), reason="socat is not installed")


def ledger_with_job(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path, isolation_level=None)
    ensure_schema(conn)
    enqueue(conn, PAYLOAD)
    conn.close()
    return path


def test_serial_transport_opens_pyserial_urls_with_timeouts() -> None:
    t = SerialTransport(PrinterConfig(kind="serial", device="loop://", write_timeout_s=0.5))
    t.open()
    try:
        t.write(b"\x10\x04\x01")
        assert t.read(3, 0.5) == b"\x10\x04\x01"  # loop:// echoes
        started = time.monotonic()
        assert t.read(1, 0.2) == b""  # silence is "no answer", after the timeout
        assert 0.15 < time.monotonic() - started < 1.0
    finally:
        t.close()


def test_missing_serial_port_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="no such file or directory"):
        open_serial(str(tmp_path / "ttyUSB9"))


@pytest.fixture
def pty_printer(tmp_path: Path) -> Iterator[tuple[PtyPair, Decoder]]:
    """A serial printer on the far end of a pty pair: decodes, answers DLE EOT and GS r."""
    pair = PtyPair(tmp_path / "pty").start()
    peer = open_serial(str(pair.peer), read_timeout_s=0.05)
    decoder = Decoder()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            data = peer.read(4096)
            for req in decoder.feed(data):
                peer.write(b"\x12" if req.command == "DLE EOT" else b"\x00")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield pair, decoder
    stop.set()
    thread.join(2)
    peer.close()
    pair.stop()


@needs_socat
def test_a_serial_printer_on_a_pseudo_terminal_prints_the_coupon(
    tmp_path: Path, pty_printer: tuple[PtyPair, Decoder]
) -> None:
    pair, decoder = pty_printer
    cfg = PrinterConfig(kind="serial", device=str(pair.device), baudrate=115200)
    w = PrintWorker(ledger_with_job(tmp_path), cfg)
    w.run_once()
    assert w.job("r-serial")["state"] == "DONE"  # type: ignore[index]
    assert w.job("r-serial")["last_error"] is None  # type: ignore[index]  # confirmed by GS r
    [doc] = decoder.documents
    assert doc.complete and doc.codes == ["TP1-o-5"] and "Сыр -20%" in doc.text


@needs_socat
def test_a_serial_printer_unplugged_is_offline_not_a_hang(tmp_path: Path) -> None:
    pair = PtyPair(tmp_path / "pty")
    cfg = PrinterConfig(kind="serial", device=str(pair.device))
    w = PrintWorker(ledger_with_job(tmp_path), cfg)
    w.run_once()
    status = w.status()
    assert status["state"] == "OFFLINE" and "no such file" in (status["last_error"] or "")


def test_file_printer_appends_jobs_and_never_creates_device_nodes(tmp_path: Path) -> None:
    out = tmp_path / "printer.bin"
    w = PrintWorker(ledger_with_job(tmp_path), PrinterConfig(kind="file", device=str(out)))
    w.run_once()
    first = out.read_bytes()
    assert first.startswith(b"\x1b@\x1bt\x11") and first.endswith(b"\x1dV\x01")
    assert w.job("r-serial")["state"] == "DONE"  # type: ignore[index]
    t = FileTransport(str(out))
    t.open()
    t.write(b"more")
    t.close()
    assert out.read_bytes() == first + b"more"
    gone = FileTransport("/dev/usb/lp-tillpoint-test")
    with pytest.raises(TransportError, match="not available"):
        gone.open()
    assert not Path("/dev/usb/lp-tillpoint-test").exists()


def test_network_refused_and_write_timeouts_are_bounded() -> None:
    port = free_port()
    with pytest.raises(TransportError, match="not reachable"):
        NetworkTransport("127.0.0.1", port, connect_timeout_s=1).open()

    listener = socket.socket()
    listener.settimeout(5)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts (the kernel does) but never reads: a jammed printer
    t = NetworkTransport("127.0.0.1", listener.getsockname()[1], 1.0, write_timeout_s=0.5)
    t.open()
    started = time.monotonic()
    with pytest.raises(TransportError, match="stopped taking data"):
        t.write(b"\x00" * 32_000_000)
    assert time.monotonic() - started < 3
    t.close()
    listener.close()


def test_network_transport_reports_a_closed_connection() -> None:
    listener = socket.socket()
    listener.settimeout(5)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    t = NetworkTransport("127.0.0.1", listener.getsockname()[1])
    t.open()
    conn, _ = listener.accept()
    conn.close()
    with pytest.raises(ConnectionLost):
        t.read(1, 1.0)
    t.close()
    listener.close()


class FakeUsbDevice:
    """Stands in for a pyusb device: no USB printer can be attached to this machine."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.replies = [b"\x12", b"\x12", b"\x00"]

    def write(self, ep: int, data: bytes, timeout: int) -> int:
        assert ep == 0x01 and timeout == 10_000
        self.written += data
        return len(data)

    def read(self, ep: int, size: int, timeout: int) -> bytes:
        assert ep == 0x82 and timeout > 0
        if not self.replies:
            raise OSError(110, "Operation timed out")
        return self.replies.pop(0)


class FakeEscposUsb:
    def __init__(self) -> None:
        self.device: Any = None

    def open(self) -> None:
        self.device = FakeUsbDevice()

    def close(self) -> None:
        self.device = None


def test_usb_transport_talks_to_the_endpoints_with_timeouts(tmp_path: Path) -> None:
    cfg = PrinterConfig(kind="usb", usb_vendor_id="0x04b8", usb_product_id="0x0e15")  # type: ignore[arg-type]
    fake = FakeEscposUsb()
    usb = UsbTransport(cfg, device_factory=lambda: fake)
    w = PrintWorker(ledger_with_job(tmp_path), cfg, printer_factory=lambda: usb)
    w.run_once()
    assert w.job("r-serial")["state"] == "DONE"  # type: ignore[index]
    assert usb.description == "usb 04b8:0e15"


def test_usb_without_pyusb_says_what_to_install() -> None:
    pytest.importorskip("escpos")
    try:
        import usb  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip("pyusb is installed here")
    cfg = PrinterConfig(kind="usb", usb_vendor_id=0x04B8, usb_product_id=0x0E15)
    with pytest.raises(TransportError, match="pyusb"):
        make_transport(cfg).open()
