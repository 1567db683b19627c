"""A serial barcode/card scanner for self-service kiosks (pyserial).

:class:`ScannerReader` reads from a serial port or pyserial URL in its own thread, splits the
input into scans at CR, LF or CR LF, and calls ``on_scan(text)`` once per scan with the text
stripped of surrounding blanks (empty scans are dropped). Reads time out every
``read_timeout_s`` so the thread notices :meth:`ScannerReader.stop`; a port that is missing or
vanishes (USB unplugged) is reopened every ``reconnect_s``. A scan longer than ``max_length``
(noise on the line, a wrong baud rate) is dropped whole rather than passed on in pieces.
Scanners set up without a suffix can use ``idle_flush_s``: a pause that long ends a scan
(the bytes after the pause begin the next one).

``on_scan`` runs on the reader's thread; an exception in it is logged and the reader goes on.
The agent passes the text to identification (the contract §4); offer codes scanned back from a
coupon start with ``TP1-`` (see ``codes.parse_offer_code``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypedDict

from tillpoint.printer.config import ScannerConfig
from tillpoint.printer.errors import PrinterConfigError, TransportError
from tillpoint.printer.transport import open_serial

__all__ = ["ScanSplitter", "ScannerReader", "ScannerStatus"]

log = logging.getLogger("tillpoint.scanner")


class ScanSplitter:
    """Bytes in, complete scans out; CR, LF and CR LF all end a scan."""

    def __init__(self, encoding: str = "utf-8", max_length: int = 128) -> None:
        self.encoding = encoding
        self.max_length = max_length
        self._buf = bytearray()
        self._overflow = False

    @property
    def pending(self) -> bool:
        return bool(self._buf) or self._overflow

    def feed(self, data: bytes) -> list[str]:
        scans: list[str] = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                scans.extend(self._end())
            elif self._overflow:
                continue
            elif len(self._buf) >= self.max_length:
                log.warning("scanner: input longer than %d bytes dropped", self.max_length)
                self._buf.clear()
                self._overflow = True
            else:
                self._buf.append(byte)
        return scans

    def reset(self) -> None:
        """Forget a scan in progress (the port went away mid-scan)."""
        self._buf.clear()
        self._overflow = False

    def flush(self) -> list[str]:
        """End the scan in progress (used after an idle pause)."""
        return self._end()

    def _end(self) -> list[str]:
        raw, overflow = bytes(self._buf), self._overflow
        self._buf.clear()
        self._overflow = False
        if overflow:
            return []
        text = raw.decode(self.encoding, errors="replace")
        text = "".join(ch for ch in text if ch.isprintable()).strip()
        return [text] if text else []


class ScannerStatus(TypedDict):
    state: Literal["OK", "OFFLINE", "DISABLED"]
    device: str
    scans: int
    last_error: str | None


class ScannerReader:
    """Reads scans from ``url`` and calls ``on_scan(text)`` for each one."""

    def __init__(
        self,
        url: str,
        on_scan: Callable[[str], None],
        *,
        baudrate: int = 9600,
        encoding: str = "utf-8",
        read_timeout_s: float = 0.2,
        reconnect_s: float = 2.0,
        max_length: int = 128,
        idle_flush_s: float | None = None,
        port_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.url = url
        self.on_scan = on_scan
        self.baudrate = baudrate
        self.read_timeout_s = read_timeout_s
        self.reconnect_s = reconnect_s
        self.idle_flush_s = idle_flush_s
        self._splitter = ScanSplitter(encoding, max_length)
        self._factory = port_factory or self._open_port
        self._port: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: Literal["OK", "OFFLINE", "DISABLED"] = "OFFLINE"
        self._last_error: str | None = None
        self._scans = 0

    @classmethod
    def from_config(cls, config: ScannerConfig, on_scan: Callable[[str], None]) -> ScannerReader:
        if config.kind == "none" or config.device is None:
            raise PrinterConfigError('no scanner configured (scanner kind = "none")')
        return cls(
            config.device,
            on_scan,
            baudrate=config.baudrate,
            encoding=config.encoding,
            read_timeout_s=config.read_timeout_s,
            reconnect_s=config.reconnect_s,
            max_length=config.max_length,
            idle_flush_s=config.idle_flush_s,
        )

    def _open_port(self) -> Any:
        return open_serial(
            self.url,
            baudrate=self.baudrate,
            read_timeout_s=self.read_timeout_s,
            write_timeout_s=1.0,
        )

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tillpoint-scanner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._close()

    def status(self) -> ScannerStatus:
        return ScannerStatus(
            state=self._state, device=self.url, scans=self._scans, last_error=self._last_error
        )

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def _deliver(self, scans: list[str]) -> None:
        for text in scans:
            self._scans += 1
            try:
                self.on_scan(text)
            except Exception:
                log.exception("scanner: on_scan failed for a scan")

    def _offline(self, message: str) -> None:
        self._close()
        if self._state != "OFFLINE" or self._last_error != message:
            log.warning("scanner offline: %s", message)
        self._state, self._last_error = "OFFLINE", message

    def _run(self) -> None:
        import serial

        last_byte = time.monotonic()
        while not self._stop.is_set():
            if self._port is None:
                try:
                    self._port = self._factory()
                except (TransportError, OSError, ValueError) as exc:
                    self._offline(str(exc))
                    self._stop.wait(self.reconnect_s)
                    continue
                self._state, self._last_error = "OK", None
                log.info("scanner on %s ready", self.url)
            try:
                waiting = self._port.in_waiting
                data: bytes = self._port.read(max(1, min(waiting, 4096)))
            except (serial.SerialException, OSError, TypeError) as exc:
                self._splitter.reset()
                self._offline(f"{self.url}: {exc}")
                continue
            # A pause of `idle_flush_s` ends the scan in progress, whether the read that ends
            # it comes back empty or with the next scan's first bytes: a read waits up to
            # `read_timeout_s`, and the next scan's bytes inside that wait were glued to the
            # scan before (idle_flush_s 0.1, read_timeout_s 0.2: two scans 0.15 s apart
            # went out as one, review 55, mut55b). The pause is counted from the end of the
            # last delivery (an `on_scan` that took longer than the pause, bytes waiting,
            # is no pause).
            if (
                self.idle_flush_s is not None
                and self._splitter.pending
                and time.monotonic() - last_byte >= self.idle_flush_s
            ):
                self._deliver(self._splitter.flush())
            if data:
                self._deliver(self._splitter.feed(data))
                last_byte = time.monotonic()
        self._close()
