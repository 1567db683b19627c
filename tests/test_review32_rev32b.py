"""Review 32 (rev32b): the printer and display changes of review 32 (dev32), on the normal
path and at its edges, with real parts.

A printer that is merely slow is not one that dropped the job; a healthy printer over a long
day gets each coupon once, whole, with no extra cut or blank strip and no reset connection;
a customer display fed faster than its line carries ends on the latest message (CONTRACT
§7, §8). Real parts: a raw port-9100 listener on 127.0.0.1 with a small receive buffer
(reading at a few KB/s, or at full speed), pyserial `loop://` and socat pseudo-terminals
for serial lines, the project's ESC/POS decoder on what the printer took, one decoder per
printer (its paper: a torn part and the next job meet on it).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.service import Agent
from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.decode import Decoder, Document, Image, QRCode
from tillpoint.printer.display import CustomerDisplay
from tillpoint.printer.transport import open_serial
from tillpoint.printer.virtual_display import PtyPair

from .conftest import PROGRAM, receipt, snapshot
from .test_review31_dev31 import (
    LONG_OFFERS,
    _prime,
    _printer,
    _sale,
    _until,
    needs_socat,
    till,
)
from .test_review32_dev32 import (
    LoopDisplay,
    RunTill,
    SerialLine,
    _job_rows,
    _long_snapshot,
    _receipts_of,
    _serial_printer,
    _totals,
)

# ----------------------------------------------------------------- a port-9100 printer's paper


class PaperPrinter:
    """A port-9100 printer on 127.0.0.1 that takes one connection at a time onto one roll
    of paper (one decoder for all of them, as a printer prints: a torn part and the next
    job meet on it). It reads `rate` bytes a second at most (0: as fast as it can), with a
    small receive buffer so that a sender's data really waits for it, and answers
    `DLE EOT` (on line, paper fine) and `GS r` (printed) in the order it reads them. It
    notes how each connection ended: "eof" (a graceful close) or "reset"."""

    def __init__(self, rate: int = 0) -> None:
        self.rate = rate
        self.decoder = Decoder()
        self.endings: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.2)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        chunk = 256 if self.rate else 4096
        ending = "eof"
        while True:
            try:
                data = conn.recv(chunk)
            except ConnectionResetError:
                ending = "reset"
                break
            except OSError:
                ending = "error"
                break
            if not data:
                break
            with self._lock:
                requests = self.decoder.feed(data)
            try:
                for req in requests:
                    conn.sendall(b"\x00" if req.command == "GS r" else b"\x12")
            except OSError:
                ending = "reset"
                break
            if self.rate:
                time.sleep(len(data) / self.rate)
        with self._lock:
            self.endings.append(ending)

    def documents(self) -> list[Document]:
        with self._lock:
            return list(self.decoder.documents)

    def blank_cuts(self) -> int:
        with self._lock:
            return self.decoder.blank_cuts

    def coupons(self) -> list[str]:
        return _receipts_of(self.documents())

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self.sock.close()


def _offers_snapshot(n: int) -> dict[str, Any]:
    """`n` long offers (about 1 KB of coupon each), every sale printing them."""
    return snapshot(
        program={**PROGRAM, "offerPrintCooldownDays": 0, "maxOffersPrinted": n},
        offers=LONG_OFFERS[:n],
    )


def _seed(data: Path, offers: int) -> None:
    agent = Agent(data, "till-1")
    agent.load_snapshot(_offers_snapshot(offers))
    agent.close()


# ----------------------------------------------------------------- a slow network printer


@pytest.mark.slow
def test_a_slow_network_printer_prints_a_long_coupon_once_whole_without_a_cut_before_it(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: a printer that reads a coupon slowly (4 KB/s: an old mechanism, a busy
    print server) but steadily is not one that stopped taking the job's bytes: a coupon
    that takes it three times `write_timeout_s` and `confirm_timeout_s` to read is sent
    once, printed once, whole, with no cut before it, and the connection is closed, not
    reset. (`write_timeout_s` was the limit of the whole write, and the confirmation was
    awaited `confirm_timeout_s` from its end: the printer still reading, the attempt was
    declared unacknowledged, the connection reset under the job's tail, and the coupon
    sent again behind a cut.)"""
    _seed(tmp_path, 12)
    printer = PaperPrinter(rate=4096)
    try:
        config = _printer(printer.port, confirm_timeout_s=2.0, retry_base_s=0.5, retry_max_s=1.0)
        with till(tmp_path, config) as (agent, _):
            assert len(_sale(agent, 0).printed_offers) == 12
            assert _until(lambda: _job_rows(tmp_path)[0][1] in ("DONE", "FAILED"), 60)
            time.sleep(1.0)
            rows = _job_rows(tmp_path)
        assert [(r, s, a) for r, s, a, _ in rows] == [("r-000", "DONE", 1)], rows
        docs = printer.documents()
        assert printer.coupons() == ["r-000"]
        assert [d.complete for d in docs] == [True], [d.text[:80] for d in docs]
        assert docs[0].codes == [f"TP1-o-{n:02d}" for n in range(12)]
        assert printer.blank_cuts() == 0
        assert printer.endings == ["eof"] * len(printer.endings)
    finally:
        printer.close()


# ----------------------------------------------------------------- a healthy printer, a long day


@pytest.mark.slow
def test_a_healthy_network_printer_over_a_long_day_cuts_each_coupon_once_and_nothing_more(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: two hundred sales, each with a coupon, on a healthy network printer that
    is asked its status between them (`probe_interval_s`): on its one roll of paper each
    coupon is cut once, whole, in the order of the sales; no blank strip (the cut a job
    sent after a torn attempt begins with: nothing was torn), no piece without a cut, and
    every connection closed gracefully (a reset may throw away the tail of a job the
    printer has not read yet). Status says OK, nothing waits."""
    _prime(tmp_path)
    printer = PaperPrinter()
    sales = [f"r-{n:03d}" for n in range(200)]
    try:
        config = _printer(printer.port, probe_interval_s=0.05)
        with till(tmp_path, config) as (agent, devices):
            for n in range(len(sales)):
                assert len(_sale(agent, n).printed_offers) == 3
            assert _until(lambda: {s for _, s, _, _ in _job_rows(tmp_path)} == {"DONE"}, 120)
            assert _until(lambda: printer.coupons() == sales, 10), printer.coupons()[-3:]
            status = devices.worker.status()
        assert all(a == 1 and e is None for _, _, a, e in _job_rows(tmp_path))
        assert [d.complete for d in printer.documents()] == [True] * len(sales)
        assert printer.blank_cuts() == 0
        assert set(printer.endings) == {"eof"}, printer.endings.count("reset")
        assert status["state"] == "OK" and status["queue_depth"] == 0, status
    finally:
        printer.close()


@needs_socat
@pytest.mark.slow
def test_a_healthy_serial_printer_over_a_long_day_cuts_each_coupon_once_and_nothing_more(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: a hundred sales on a healthy serial printer (a socat pty pair, the
    printer's end read as it comes): each coupon cut once, whole, in order, no blank strip
    and no piece without a cut; the line's queue is never dropped under a job."""
    _prime(tmp_path)
    sales = [f"r-{n:03d}" for n in range(100)]
    with PtyPair(tmp_path / "pty") as pair:
        line = SerialLine(pair.peer, stall=False)
        try:
            config = _serial_printer(tmp_path / "pty" / "device")
            with till(tmp_path, config) as (agent, devices):
                for n in range(len(sales)):
                    assert len(_sale(agent, n).printed_offers) == 3
                assert _until(lambda: {s for _, s, _, _ in _job_rows(tmp_path)} == {"DONE"}, 120)
                status = devices.worker.status()
            assert all(a == 1 and e is None for _, _, a, e in _job_rows(tmp_path))
            docs = line.documents()
            assert _receipts_of(docs) == sales
            assert [d.complete for d in docs] == [True] * len(sales)
            assert line.decoder.blank_cuts == 0
            assert status["state"] == "OK" and status["queue_depth"] == 0, status
        finally:
            line.close()


# ----------------------------------------------------------------- the display, scanned quickly


def _scan_quickly(display: CustomerDisplay, count: int, every_s: float = 0.05) -> None:
    """A POS scanning `count` items, a quote every `every_s`: each `show` returns at once."""
    for n in range(count):
        before = time.monotonic()
        display.show([f"Итого: {n},00", ""])
        # not waiting for the line (a reconnect's, a stale backlog's seconds); 5 s is a
        # loaded machine's room, as dev32's (0.5 s until review 45, timing45)
        assert time.monotonic() - before < 5
        time.sleep(every_s)


def test_a_display_that_reads_nothing_is_never_ok_while_the_pos_scans_quickly() -> None:
    """CONTRACT §8: a pole display on pyserial's `loop://` (a port that tells what it still
    queues) that takes no data while the cashier scans, a quote every 50 ms: once it is
    OFFLINE, status never says OK again until it takes data. (A message that came while a
    reconnect's first bytes waited was written and the display called OK at once: status
    flapped OK/OFFLINE about once a second, each logged, for a display that read
    nothing.)"""
    line = LoopDisplay()
    config = DisplayConfig(
        kind="serial", device="loop://", reconnect_s=0.1, refresh_s=60, write_timeout_s=0.3
    )
    display = CustomerDisplay(config, port_factory=line.factory)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(display.status()["state"])
            time.sleep(0.005)

    display.start()
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        _scan_quickly(display, 20)  # fills the line: OFFLINE
        assert _until(lambda: display.status()["state"] == "OFFLINE", 10), display.status()
        seen.clear()
        watcher.start()
        _scan_quickly(display, 60)
        stop.set()
        watcher.join(5)
        assert "OK" not in seen, seen.count("OK")
        # it reads again: the current message, and OK
        assert _totals(line.take())[-1:] == [59]
        assert _until(lambda: display.status()["state"] == "OK", 10)
    finally:
        stop.set()
        display.stop()


class _Reader:
    """The display's end of a line, read as it comes (a display that keeps up), with when
    each total arrived."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.got = b""
        self.seen_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.port.read(4096)
            except Exception:
                time.sleep(0.01)
                continue
            if chunk:
                self.got += chunk
                for n in _totals(self.got[-600:]):
                    self.seen_at.setdefault(n, time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _scanned_quickly_and_shown_last(display: CustomerDisplay, reader: _Reader) -> None:
    states: set[str] = set()
    display.start()
    try:
        assert _until(lambda: display.status()["state"] == "OK", 10), display.status()
        for n in range(60):
            display.show([f"Итого: {n},00", ""])
            states.add(display.status()["state"])
            time.sleep(0.05)
        last = time.monotonic()
        assert _until(lambda: 59 in reader.seen_at, 5), _totals(reader.got)[-3:]
        assert reader.seen_at[59] - last < 1.0  # promptly: not behind a backlog
        time.sleep(0.3)
        assert _totals(reader.got)[-1] == 59  # ends on the latest
        assert states == {"OK"}, states
        assert display.status()["state"] == "OK"
    finally:
        display.stop()
        reader.close()


@pytest.mark.parametrize("baudrate", [9600, 115200])
def test_a_display_that_keeps_up_on_loop_ends_on_the_latest_quote_promptly(baudrate: int) -> None:
    """CONTRACT §8: a pole display on `loop://` that reads what comes, the POS quoting every
    50 ms (a cashier scanning quickly): the display stays OK, is shown the latest total
    last and within a second of it (at 9600 baud a message takes some 50 ms of line: the
    driver paces, never queues a backlog)."""
    port = open_serial("loop://", baudrate=baudrate, read_timeout_s=0.05, write_timeout_s=0.5)
    config = DisplayConfig(
        kind="serial", device="loop://", baudrate=baudrate, reconnect_s=0.1, refresh_s=60
    )
    display = CustomerDisplay(config, port_factory=lambda: port)
    _scanned_quickly_and_shown_last(display, _Reader(port))


@needs_socat
@pytest.mark.parametrize("baudrate", [9600, 115200])
def test_a_display_that_keeps_up_on_a_pty_ends_on_the_latest_quote_promptly(
    tmp_path: Path, baudrate: int
) -> None:
    """CONTRACT §8: the same on a socat pseudo-terminal pair (a port that cannot tell what
    it still queues: the driver paces by the configured line speed alone)."""
    with PtyPair(tmp_path / "pty") as pair:
        peer = open_serial(str(pair.peer), baudrate=baudrate, read_timeout_s=0.05)
        try:
            config = DisplayConfig(
                kind="serial",
                device=str(tmp_path / "pty" / "device"),
                baudrate=baudrate,
                reconnect_s=0.1,
                refresh_s=60,
            )
            _scanned_quickly_and_shown_last(CustomerDisplay(config), _Reader(peer))
        finally:
            peer.close()


# ----------------------------------------------------------------- `run` stopped, slow printer


@pytest.mark.slow
def test_run_stopped_while_a_slow_printer_still_reads_a_coupon_prints_it_once_after(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: `tillpoint run` is stopped (SIGTERM) while a slow printer (2 KB/s)
    still reads a 50 KB coupon (the worker awaits the confirmation while the printer
    still takes the job, but no longer once the agent stops): it stops well within its
    bound, the job is PENDING (the connection reset: the coupon's tail the printer had
    not taken is thrown away, never delivered after the stop). Started again with the
    printer at full speed, the coupon is printed once, whole, the torn part cut off
    above it as a piece of its own."""
    data = tmp_path / "data"
    seed = Agent(data, "till-1")
    seed.load_snapshot(_long_snapshot())
    seed.close()
    printer = PaperPrinter(rate=2048)
    master, slave = os.openpty()
    codes = [f"TP1-o-{n:02d}" for n in range(50)]
    try:
        tty = os.ttyname(slave)
        run = RunTill(tmp_path, data, printer.port, tty)
        try:
            code, sale = run.call("POST", "/v1/checkout", receipt("r-000"))
            assert code == 200 and len(sale["printedOffers"]) == 50
            time.sleep(3.0)  # the printer has read some 4 KB of it
        finally:
            took = run.terminate()
        assert took < 15, took
        assert [(r, s) for r, s, _, _ in _job_rows(data)] == [("r-000", "PENDING")]
        # the job's connection (the one after the start's status question) was reset
        assert _until(lambda: len(printer.endings) >= 2, 30), printer.endings
        assert printer.endings[1:] == ["reset"], printer.endings
        printer.rate = 0
        again = RunTill(tmp_path, data, printer.port, tty)
        try:
            assert _until(lambda: [s for _, s, _, _ in _job_rows(data)] == ["DONE"], 30)
            time.sleep(0.5)
        finally:
            again.terminate()
        docs = printer.documents()
        whole = [d for d in docs if d.complete and d.codes == codes]
        assert len(whole) == 1, [d.codes[:2] for d in docs]
        assert docs[-1] is whole[0]  # the coupon last, after the torn part's piece
        assert all(d.complete for d in docs)
        assert printer.blank_cuts() == 0  # the cut cut off the torn part: not blank
    finally:
        printer.close()
        os.close(master)
        os.close(slave)


# ----------------------------------------------------------------- the cut before a resend


def _images(doc: Document) -> list[Image]:
    return [i for i in doc.items if isinstance(i, Image)]


@pytest.mark.parametrize(
    ("code", "offer_id"),
    [("raster-qr", "o-07"), ("qr", "о" * 200)],  # a raster QR; a native QR of a 200-letter id
)
def test_the_cut_before_a_resend_ends_a_torn_code_of_any_length(code: str, offer_id: str) -> None:
    """CONTRACT §7: a torn attempt broke off inside an offer's code: a raster QR (a printer
    with no native QR and no room for CODE128: `GS v 0`, some 2 KB of dots), or a native
    QR of a long offer id (1,200 bytes once escaped; ids may have 200 characters). What
    the resend begins with must end that command, or the printer reads the cut and the
    coupon's first bytes as the code's data: the coupon after it decodes whole, its
    heading and its code. (96 NULs ended only a QR of some 60 bytes: the raster's dots
    ate the cut, the heading and most of the coupon.)"""
    from tillpoint.printer.codes import offer_code
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.layout import Code, Cut, Text, render_escpos, separator_bytes
    from tillpoint.printer.profiles import resolve_profile

    profile = resolve_profile(PrinterConfig(kind="file", device="/tmp/unused-rev32b", code=code))
    data = offer_code(offer_id)
    coupon = render_escpos([Text("Скидка 20%"), Code(data), Text("До встречи"), Cut()], profile)
    whole = Decoder()
    whole.feed(coupon)
    kind = Image if code == "raster-qr" else QRCode
    assert [type(i) for i in whole.documents[0].items if isinstance(i, Image | QRCode)] == [kind]
    start = coupon.index(b"\x1dv0" if code == "raster-qr" else b"\x1d(k")
    torn = coupon[: start + 40]  # broken off 40 bytes into the code's command
    paper = Decoder()
    paper.feed(torn + separator_bytes(profile, [data]) + coupon)
    paper.finish()
    docs = paper.documents
    assert [d.complete for d in docs] == [True, True], [d.text for d in docs]
    assert "Скидка 20%" in docs[1].text and "До встречи" in docs[1].text
    if code == "raster-qr":
        assert _images(docs[1]) == _images(whole.documents[0])
    else:
        assert docs[1].codes == [data]
