"""Review 55 (mut55b): the printer's and the kiosk scanner's connections, pinned after
mutation testing of `printer/transport.py` and `printer/scanner.py` (docs/PRINTING.md,
"Connections" and "Card scanner"; the contract §4 input, §12 printing).

Real parts only: pyserial `loop://` ports, the kernel's pseudo-terminals (`os.openpty`,
socat's pairs), TCP listeners on 127.0.0.1, regular files and FIFOs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import socket
import stat
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from tillpoint.printer.config import PrinterConfig, ScannerConfig
from tillpoint.printer.errors import ConnectionLost, PrinterConfigError, TransportError
from tillpoint.printer.scanner import ScannerReader, ScanSplitter
from tillpoint.printer.transport import FileTransport, NetworkTransport, make_transport
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


@contextlib.contextmanager
def writing(t: Any, data: bytes) -> Iterator[tuple[threading.Thread, list[BaseException]]]:
    """`t.write(data)` on a thread of its own, and what it raised; on the way out the
    transport is aborted and the thread joined (a test that failed first leaves no write
    blocked behind it)."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            t.write(data)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield writer, errors
    finally:
        t.abort()
        writer.join(DEADLINE_S)


# --- the splitting ---------------------------------------------------------------------


def test_lf_alone_ends_a_scan_as_cr_does() -> None:
    s = ScanSplitter()
    assert s.feed(b"2770000000017\n4601234000017\n") == ["2770000000017", "4601234000017"]
    assert s.feed(b"TP1-o-1\tx\r") == ["TP1-o-1x"]  # a tab ends nothing (dropped as control)
    assert s.feed(b"12\x0b34\r") == ["1234"]  # nor a vertical tab


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
    reader, _port = loop_reader(lambda text: None, read_timeout_s=0.2)
    reader.start()
    try:
        assert wait_for(lambda: reader.status()["state"] == "OK")
        cpu = time.process_time()
        time.sleep(2.0)
        assert time.process_time() - cpu < 0.3  # a loop of empty reads: most of a core
    finally:
        reader.stop()


# --- the port: missing at the start, logged once, stop and start again ---------------------


@needs_socat
def test_a_scanner_missing_at_the_start_is_offline_then_read_when_plugged_in(
    tmp_path: Path,
) -> None:
    pair = PtyPair(tmp_path / "pty")
    got: queue.Queue[str] = queue.Queue()
    reader = ScannerReader(str(pair.device), got.put, read_timeout_s=0.05, reconnect_s=0.05)
    reader.start()
    peer: Any = None
    try:
        assert wait_for(lambda: reader.status()["last_error"] is not None)
        status = reader.status()
        assert status["state"] == "OFFLINE"
        assert "no such file or directory" in str(status["last_error"])
        time.sleep(0.3)  # several tries, each failed
        pair.start()
        assert wait_for(lambda: reader.status()["state"] == "OK")
        assert reader.status()["last_error"] is None
        peer = serial.serial_for_url(str(pair.peer), timeout=0.05)
        peer.write(b"2770000000017\r")
        assert got.get(timeout=DEADLINE_S) == "2770000000017"
    finally:
        reader.stop()
        if peer is not None:
            peer.close()
        pair.stop()


def test_a_missing_port_is_logged_once_not_at_every_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tillpoint.scanner")
    device = tmp_path / "ttyACM7"
    reader = ScannerReader(str(device), lambda text: None, reconnect_s=0.02)
    reader.start()
    try:
        assert wait_for(lambda: reader.status()["last_error"] is not None)
        time.sleep(0.5)  # about 25 tries
        offline = [r for r in caplog.records if "scanner offline" in r.getMessage()]
        assert len(offline) == 1, [r.getMessage() for r in offline]
        assert str(device) in offline[0].getMessage()
        assert reader.status()["state"] == "OFFLINE"
    finally:
        reader.stop()


def test_a_stopped_reader_reads_nothing_more_and_starts_again() -> None:
    """On a real pseudo-terminal (the reader opens the port itself): `stop` returns with
    the thread ended and the port closed; `start` reads again."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    got: queue.Queue[str] = queue.Queue()
    reader = ScannerReader(name, got.put, read_timeout_s=0.05)
    try:
        reader.start()
        assert wait_for(lambda: reader.status()["state"] == "OK")
        assert termios.tcgetattr(master)[4:6] == [termios.B9600, termios.B9600]  # the default
        os.write(master, b"2770000000017\r")
        assert got.get(timeout=DEADLINE_S) == "2770000000017"
        threads = [t for t in threading.enumerate() if t.name == "tillpoint-scanner"]
        reader.stop()
        assert threads and not any(t.is_alive() for t in threads)
        with pytest.raises(OSError) as gone:  # the port closed: the pty has no other end
            os.read(master, 1)
        assert gone.value.errno == errno.EIO

        os.write(master, b"4601234000017\r")  # nobody reads it (pyserial's open drops it)
        time.sleep(0.3)
        assert got.empty()

        reader.start()  # (its status still says OK from before: written until read)
        deadline = time.monotonic() + DEADLINE_S
        while got.empty() and time.monotonic() < deadline:
            os.write(master, b"TP1-o-1\r")
            time.sleep(0.2)
        assert got.get(timeout=1) == "TP1-o-1"
        assert reader.status()["scans"] >= 2
    finally:
        reader.stop()
        os.close(master)


def test_a_scanner_set_to_none_is_not_read_even_with_a_device_left_in_its_table() -> None:
    """`kind = "none"` turns the scanner off; a `device` left in the table (commented
    back in, a template's) does not turn it on again."""
    with pytest.raises(PrinterConfigError, match='scanner kind = "none"'):
        ScannerReader.from_config(ScannerConfig(kind="none", device="/dev/ttyACM0"), print)


def test_the_configured_baud_rate_is_the_ports() -> None:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    reader = ScannerReader.from_config(
        ScannerConfig(kind="serial", device=name, baudrate=115200), lambda text: None
    )
    try:
        reader.start()
        assert wait_for(lambda: reader.status()["state"] == "OK")
        assert termios.tcgetattr(master)[4:6] == [termios.B115200, termios.B115200]
    finally:
        reader.stop()
        os.close(slave)
        os.close(master)


# --- the network printer (raw TCP, port 9100) ----------------------------------------------


class Listener:
    """A network printer's port on 127.0.0.1: accepts one connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(DEADLINE_S)
        self.port: int = self.sock.getsockname()[1]

    def accept(self) -> socket.socket:
        conn, _ = self.sock.accept()
        conn.settimeout(DEADLINE_S)
        return conn

    def close(self) -> None:
        self.sock.close()


def test_a_network_printer_is_port_9100_unless_configured() -> None:
    assert NetworkTransport("192.0.2.7").description == "192.0.2.7:9100"
    t = make_transport(PrinterConfig(kind="network", host="192.0.2.7"))
    assert t.description == "192.0.2.7:9100"


def test_each_kind_of_printer_gets_its_connection_and_none_gets_none() -> None:
    from tillpoint.printer.transport import SerialTransport, UsbTransport

    kinds = {
        "network": (PrinterConfig(kind="network", host="192.0.2.7", port=9101), NetworkTransport),
        "serial": (PrinterConfig(kind="serial", device="loop://"), SerialTransport),
        "file": (PrinterConfig(kind="file", device="/tmp/coupons.bin"), FileTransport),
        "usb": (
            PrinterConfig(kind="usb", usb_vendor_id=0x04B8, usb_product_id=0x0E15),
            UsbTransport,
        ),
    }
    for kind, (config, cls) in kinds.items():
        assert type(make_transport(config)) is cls, kind
    with pytest.raises(
        PrinterConfigError, match=r'no printer configured \(printer kind = "none"\)'
    ):
        make_transport(PrinterConfig())


def test_a_printer_that_never_answers_the_connect_is_given_up_after_the_connect_timeout() -> None:
    """A printer whose port takes no more connections (its backlog full: the SYN dropped,
    as a printer busy with another host's job): "not reachable: timed out" after
    `connect_timeout_s`, not the system's two minutes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(4):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        queued.append(client)
    try:
        time.sleep(0.2)
        t = NetworkTransport("127.0.0.1", port, connect_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(TransportError) as refused:
            t.open()
        assert 0.45 <= time.monotonic() - started < 5.0
        assert str(refused.value) == f"printer 127.0.0.1:{port} not reachable: timed out"
    finally:
        for client in queued:
            client.close()
        listener.close()


def test_the_connection_sends_small_writes_at_once_and_keeps_alive() -> None:
    """TCP_NODELAY (a status request, 3 bytes, is not held back for the ACK of the job
    before it) and SO_KEEPALIVE (a printer gone without a word is found out)."""
    listener = Listener()
    t = NetworkTransport("127.0.0.1", listener.port, 2.0, 2.0)
    try:
        t.open()
        sock = t._sock
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    finally:
        t.close()
        listener.close()


def test_discard_input_drops_what_the_printer_sent_unasked_and_reads_go_on() -> None:
    """Before a status request the worker drops what the printer sent by itself (an ASB
    status, a late answer): it must not be read as the answer to the request."""
    listener = Listener()
    t = NetworkTransport("127.0.0.1", listener.port, 2.0, 2.0)
    t.open()
    conn = listener.accept()
    try:
        conn.sendall(b"\x14\x00\x00\x0f" * 3000)  # 12,000 bytes: more than one recv
        sock = t._sock
        assert sock is not None
        assert wait_for(lambda: bool(select.select([sock], [], [], 0)[0]))
        time.sleep(0.2)  # (all of it in)
        t.discard_input()
        assert t.read(16, 0.3) == b""  # nothing left: silence
        conn.sendall(b"\x12")
        assert t.read(16, DEADLINE_S) == b"\x12"
        t.write(b"\x10\x04\x01")  # the socket blocks again, with its write timeout
        assert conn.recv(16) == b"\x10\x04\x01"
    finally:
        t.close()
        conn.close()
        listener.close()


def test_a_close_lets_the_connection_go_at_once_and_the_printer_sees_its_end() -> None:
    listener = Listener()
    t = NetworkTransport("127.0.0.1", listener.port, 2.0, 2.0)
    t.open()
    conn = listener.accept()
    try:
        t.write(b"\x1b@coupon\x1dV\x01")
        sock = t._sock
        assert sock is not None
        t.close()
        assert sock.fileno() == -1  # closed, not left to the garbage collector
        assert t._sock is None
        got = bytearray()
        while chunk := conn.recv(4096):
            got += chunk
        assert bytes(got) == b"\x1b@coupon\x1dV\x01"  # then a FIN
        t.close()  # twice: nothing
        with pytest.raises(TransportError, match="not open"):
            t.write(b"x")
    finally:
        conn.close()
        listener.close()


@pytest.mark.parametrize("drain_s", [30.0, 0.9])
def test_status_the_printer_sends_while_it_still_reads_the_tail_is_drained_not_a_reset(
    drain_s: float,
) -> None:
    """The close's drain (docs/PRINTING.md, "Connections"): a printer that reports its
    status mid-job (an ASB when it has 64 KiB of a 1 MiB coupon, 4 KiB a millisecond)
    while most of the job still waits in the agent's send queue. The close reads and drops
    it until the printer has taken every byte: a close that did not wait let the status
    reach a closed socket, whose kernel answered with a reset and threw the coupon's
    tail away (its codes and cut never printed)."""
    job = bytes(range(256)) * 4096
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(DEADLINE_S)
    got = bytearray()
    ended: list[str] = []

    def printer() -> None:
        conn, _ = listener.accept()
        conn.settimeout(30.0)
        sent = False
        with conn:
            try:
                while chunk := conn.recv(4096):
                    got.extend(chunk)
                    if not sent and len(got) >= 65536:
                        conn.sendall(b"\x14\x00\x00\x0f")  # ASB, mid-job
                        sent = True
                    time.sleep(0.001)
                ended.append("EOF")
            except ConnectionResetError:
                ended.append("RST")

    at_printer = threading.Thread(target=printer, daemon=True)
    at_printer.start()
    try:
        t = NetworkTransport(
            "127.0.0.1", listener.getsockname()[1], 2.0, 30.0, close_drain_s=drain_s
        )
        t.open()
        t.write(job)
        t.close()
        at_printer.join(60.0)
        assert not at_printer.is_alive()
        assert ended == ["EOF"]
        assert len(got) == len(job) and bytes(got) == job
    finally:
        listener.close()


def test_a_dropped_job_is_a_reset_and_its_unsent_bytes_never_reach_the_printer() -> None:
    """`drop_output` then `close`: the printer that was not reading gets an RST, and what
    the kernel held of the job is thrown away (a graceful close delivered it: printed
    twice with the resend)."""
    listener = Listener()
    t = NetworkTransport("127.0.0.1", listener.port, 2.0, 0.5)
    t.open()
    conn = listener.accept()
    try:
        with pytest.raises(TransportError, match="stopped taking data"):
            t.write(b"\x00" * 32_000_000)  # the printer reads nothing: the queues fill
        t.drop_output()
        started = time.monotonic()
        t.close()
        assert time.monotonic() - started < 0.75  # no drain of 2 s, no linger of 1 s
        got = 0
        with pytest.raises(ConnectionResetError):
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
        assert got < 32_000_000
    finally:
        conn.close()
        listener.close()


# --- the file / device-node printer ---------------------------------------------------------


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "lp0"
    os.mkfifo(path)
    assert stat.S_ISFIFO(path.stat().st_mode)
    return path


def test_a_device_nobody_reads_is_not_available_at_once(tmp_path: Path) -> None:
    """A FIFO with no reader stands for a device node whose printer is gone: the open,
    non-blocking, fails at once (ENXIO), not a hang."""
    path = fifo(tmp_path)
    t = FileTransport(str(path), write_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(TransportError, match="not available: no such device or address"):
        t.open()
    assert time.monotonic() - started < 5
    assert os.strerror(errno.ENXIO).lower() == "no such device or address"


def test_a_device_that_stops_reading_is_given_up_after_the_write_timeout(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the printer: reads nothing
    t = FileTransport(str(path), write_timeout_s=0.5)
    t.open()
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="stopped taking data"):
            t.write(b"\x00" * 1_000_000)  # the pipe takes 64 KiB
        took = time.monotonic() - started
        assert 0.45 <= took < 5.0
    finally:
        t.close()
        os.close(reader)


def test_a_device_that_reads_slowly_gets_every_byte_in_order(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    job = bytes(range(256)) * 1024  # 256 KiB: four pipe buffers
    got = bytearray()
    done = threading.Event()

    def printer() -> None:
        while len(got) < len(job):
            select.select([reader], [], [], 0.5)
            with contextlib.suppress(BlockingIOError):
                got.extend(os.read(reader, 4096))
            time.sleep(0.001)
        done.set()

    threading.Thread(target=printer, daemon=True).start()
    t = FileTransport(str(path), write_timeout_s=DEADLINE_S)
    t.open()
    try:
        t.write(job)
        assert done.wait(DEADLINE_S)
        assert bytes(got) == job
    finally:
        t.close()
        os.close(reader)


def test_a_stop_breaks_off_a_write_waiting_on_a_full_device(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    t = FileTransport(str(path), write_timeout_s=60.0)
    t.open()
    try:
        with writing(t, b"\x00" * 1_000_000) as (writer, errors):
            time.sleep(0.5)  # the pipe is full, the write waits
            assert writer.is_alive()
            t.abort()
            writer.join(DEADLINE_S)
            assert not writer.is_alive()  # within 0.2 s of the abort, not the 60 s timeout
            assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
            assert "broken off" in str(errors[0])
    finally:
        t.close()
        os.close(reader)


def test_a_device_whose_reader_went_away_is_a_lost_connection(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    t = FileTransport(str(path), write_timeout_s=2.0)
    t.open()
    try:
        os.close(reader)  # the printer unplugged: EPIPE
        with pytest.raises(ConnectionLost, match="went away: broken pipe"):
            t.write(b"coupon")
    finally:
        t.close()
    assert t.read(16, 0.1) == b""  # write-only: no status
    closed = FileTransport(str(path))
    with pytest.raises(TransportError, match="not open"):
        closed.write(b"x")


# --- the serial port's settings ---------------------------------------------------------------


def test_a_serial_port_opens_exclusive_with_timeouts_and_only_the_flow_control_asked(
    tmp_path: Path,
) -> None:
    """On a real pseudo-terminal (its termios read on the other end): no flow control
    unless configured (DSR/DTR, python-escpos' default, hangs on three-wire cables), each
    kind alone when configured; the read and write timeouts set; the port locked against
    a second opener (whose bytes would interleave with a coupon's)."""
    from tillpoint.printer.transport import open_serial

    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        expected = {
            "none": (False, False, False, False),
            "rtscts": (True, False, True, False),
            "xonxoff": (False, True, False, False),
            "dsrdtr": (False, False, False, True),
        }
        for flow, (crtscts, ixon, rtscts, dsrdtr) in expected.items():
            port = open_serial(name, flow_control=flow, read_timeout_s=0.3, write_timeout_s=0.7)
            try:
                attrs = termios.tcgetattr(master)
                assert bool(attrs[2] & termios.CRTSCTS) is crtscts, flow
                assert bool(attrs[0] & termios.IXON) is ixon, flow
                assert attrs[4:6] == [termios.B9600, termios.B9600]  # the default speed
                assert attrs[2] & termios.CSIZE == termios.CS8  # 8N1 unless configured
                assert not attrs[2] & (termios.CSTOPB | termios.PARENB)
                assert (port.rtscts, port.dsrdtr, port.xonxoff) == (rtscts, dsrdtr, ixon), flow
                assert (port.timeout, port.write_timeout) == (0.3, 0.7)
                assert port.exclusive
                with pytest.raises(TransportError) as busy:
                    open_serial(name)
                assert str(busy.value) == (
                    f"serial port {name} not available: "
                    "in use by another program (it holds the port's lock)"
                )
            finally:
                port.close()
        url = open_serial("loop://")  # a URL is no device to lock
        assert not url.exclusive
        url.close()
    finally:
        os.close(slave)
        os.close(master)


def test_a_serial_printer_that_takes_nothing_is_given_up_after_the_timeout_and_line_time(
    tmp_path: Path,
) -> None:
    """The write's bound is `write_timeout_s` plus twice the job's line time at 10 bits a
    byte: 0.3 s + 2 × 40,000 × 10 / 921,600 = 1.168 s; a printer holding the line (the
    pty's other end reads nothing) is given up then, not sooner, not never."""
    from tillpoint.printer.transport import SerialTransport

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    cfg = PrinterConfig(kind="serial", device=name, baudrate=921600, write_timeout_s=0.3)
    t = SerialTransport(cfg)
    t.open()
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="stopped taking data"):
            t.write(b"\x00" * 40_000)  # the pty takes about 18 KB
        took = time.monotonic() - started
        assert 0.3 + 2 * 40_000 * 10 / 921_600 <= took < 6.0
    finally:
        t.close()
        os.close(master)


@pytest.mark.parametrize(("parity", "stopbits", "bits"), [("N", 1, 10), ("E", 1, 11), ("O", 2, 12)])
def test_the_line_time_of_a_write_counts_start_data_parity_and_stop_bits(
    parity: str, stopbits: int, bits: int
) -> None:
    """What a printer's answer waits for (`line_busy_s`): 1,200 bytes at 1,200 baud are
    `bits` seconds of the line, and a second write queues behind the first. (On `loop://`:
    this machine's kernel refuses parity on a pty set up before, see below.)"""
    from tillpoint.printer.transport import SerialTransport

    cfg = PrinterConfig(
        kind="serial",
        device="loop://",
        baudrate=1200,
        parity=parity,  # type: ignore[arg-type]
        stopbits=stopbits,  # type: ignore[arg-type]
    )
    t = SerialTransport(cfg)
    assert t.line_busy_s() == 0.0
    t.open()
    try:
        t.write(b"\x00" * 1200)
        busy = t.line_busy_s()
        assert bits - 0.9 < busy <= bits
        t.write(b"\x00" * 1200)
        busy = t.line_busy_s()
        assert 2 * bits - 0.9 < busy <= 2 * bits
    finally:
        t.close()


# --- the kernel refuses a port's settings: a one-line error, never a thread's end -------------


def refused_pty() -> tuple[int, str]:
    """A pty that a first open set up with parity "E": Linux (6.x here) refuses the next
    tcsetattr with parity, EINVAL, as a network-serial bridge's pty did. pyserial lets
    that `termios.error` through as it is, and it is no OSError."""
    from tillpoint.printer.transport import open_serial

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    open_serial(name, parity="E").close()
    return master, name


def test_a_display_whose_port_refuses_its_settings_says_so_and_tries_again() -> None:
    """Before review 55 the display's thread died on the `termios.error` (its state
    OFFLINE with no error, never opened again, nothing shown for the rest of the day)."""
    from tillpoint.printer.config import DisplayConfig
    from tillpoint.printer.display import CustomerDisplay

    master, name = refused_pty()
    display = CustomerDisplay(
        DisplayConfig(kind="serial", device=name, parity="E", reconnect_s=0.05)
    )
    display.start()
    try:
        assert wait_for(
            lambda: display.status()["state"] == "OK" or display.status()["last_error"] is not None
        )
        time.sleep(0.3)  # several tries
        assert any(t.name == "tillpoint-display" and t.is_alive() for t in threading.enumerate())
        status = display.status()
        if status["state"] != "OK":  # (a kernel that takes the settings: shown)
            assert status["last_error"] == f"serial port {name} not available: invalid argument"
    finally:
        display.stop()
        os.close(master)


def test_a_printer_whose_port_refuses_its_settings_is_offline_with_a_one_line_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not "unexpected error printing r-1" with a traceback at every try and
    `last_error` "(22, 'Invalid argument')" naming no port: the open's refusal is the
    port not available; the write's (the new timeout set up on the port) is the printer
    gone; the job waits for the next try, unprinted, not torn."""
    import sqlite3

    from tillpoint.printer.queue import PrintWorker, enqueue, ensure_schema
    from tillpoint.printer.transport import SerialTransport

    master, name = refused_pty()
    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger, isolation_level=None)
    ensure_schema(conn)
    enqueue(conn, {"receiptId": "r-1", "offers": [{"id": "o-5", "text": "Сыр −20%"}]})
    conn.close()
    try:
        worker = PrintWorker(ledger, PrinterConfig(kind="serial", device=name, parity="E"))
        worker.run_once()
        status = worker.status()
        job = worker.job("r-1")
        assert job is not None
        if status["state"] != "OK":  # (a kernel that takes the settings: printed)
            assert status["state"] == "OFFLINE"
            assert status["last_error"] == f"serial port {name} not available: invalid argument"
            assert job["state"] == "PENDING"
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        fresh_master, fresh_slave = os.openpty()  # opened once: the write's set-up refused
        fresh = os.ttyname(fresh_slave)
        os.close(fresh_slave)
        t = SerialTransport(PrinterConfig(kind="serial", device=fresh, parity="E"))
        try:
            t.open()
            try:
                t.write(b"\x1b@")
            except ConnectionLost as exc:
                assert str(exc) == f"printer {fresh} went away: invalid argument"
            try:
                t.read(1, 0.05)
            except ConnectionLost as exc:
                assert str(exc) == f"printer {fresh} went away: invalid argument"
        finally:
            t.close()
            os.close(fresh_master)
    finally:
        os.close(master)


def test_a_stop_mid_job_drops_what_the_line_still_queues_of_the_part_that_went_out() -> None:
    """The stop's abort meets a long job (40 KB at 9,600 baud: 40 s of line, far more
    than the 2 s a job's rest may take to finish) the kernel has taken part of: the write
    is broken off and what the line still queues of that part is dropped, so no torn
    coupon prints when the printer reads again; the job goes again whole. Only the
    far end's own buffer (4 KB of a pty, a UART's FIFO) is past reach."""
    import re

    from tillpoint.printer.transport import SerialTransport

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    t = SerialTransport(
        PrinterConfig(kind="serial", device=name, baudrate=9600, write_timeout_s=60.0)
    )
    t.open()
    try:
        with writing(t, b"\x1b@" + b"x" * 40_000 + b"\x1dV\x00") as (writer, errors):
            assert select.select([master], [], [], DEADLINE_S)[0]  # the line took a part
            time.sleep(0.3)  # the pty full: the write waits for room
            t.abort()
            writer.join(DEADLINE_S)
            assert not writer.is_alive()
            [error] = errors
            assert isinstance(error, ConnectionLost)
            went = re.search(r"broken off \((\d+) of 40005 bytes went out\)", str(error))
            assert went is not None, str(error)
            went_out = int(went.group(1))
            assert went_out > 8192
            os.set_blocking(master, False)
            readable = 0
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(master, 65536):
                    readable += len(chunk)
            assert readable <= 4096 < went_out  # the rest of the part dropped, not printed
    finally:
        t.close()
        os.close(master)


def test_a_write_the_stop_met_before_its_first_byte_leaves_the_job_before_it_queued() -> None:
    """The stop's abort came as a job's write returned, and the status request after it
    (`GS r`) took no byte: that write is broken off, but what the line still queues of
    the job before it, its cut last, is left to go out (dropping it tore a coupon the
    agent had counted whole)."""
    from tillpoint.printer.transport import SerialTransport

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    job = b"\x1b@" + bytes(range(32, 127)) * 100 + b"\x1dV\x00"  # 9,505 bytes
    t = SerialTransport(
        PrinterConfig(kind="serial", device=name, baudrate=9600, write_timeout_s=5.0)
    )
    t.open()
    try:
        t.write(job)  # the pty holds it all, the printer has read nothing yet
        t.abort()
        with pytest.raises(ConnectionLost, match=r"broken off \(0 of 3 bytes went out\)"):
            t.write(b"\x1dr\x01")
        os.set_blocking(master, False)
        got = bytearray()
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < len(job) and time.monotonic() < deadline:
            try:
                got += os.read(master, 65536)
            except BlockingIOError:
                time.sleep(0.01)
        assert bytes(got) == job
    finally:
        t.close()
        os.close(master)


def test_a_printer_that_closed_its_side_ends_the_close_at_once() -> None:
    """The printer read the job and closed its side (its EOF waits unread): the close's
    drain ends there, not at `close_drain_s`."""
    listener = Listener()
    t = NetworkTransport("127.0.0.1", listener.port, 2.0, 2.0, close_drain_s=30.0)
    t.open()
    conn = listener.accept()
    try:
        t.write(b"\x1b@coupon\x1dV\x01")
        assert conn.recv(64) == b"\x1b@coupon\x1dV\x01"
        conn.close()
        sock = t._sock
        assert sock is not None
        assert wait_for(lambda: bool(select.select([sock], [], [], 0)[0]))  # the EOF is in
        started = time.monotonic()
        t.close()
        assert time.monotonic() - started < 10.0  # milliseconds; 30 s if not
    finally:
        listener.close()


def test_drop_output_throws_away_what_the_serial_line_still_queues() -> None:
    """A job the printer did not acknowledge goes again in full: what the line still
    queues of it is thrown away before the close (delivered, it printed twice)."""
    from tillpoint.printer.transport import SerialTransport

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    job = b"\x1b@" + bytes(range(32, 127)) * 100 + b"\x1dV\x00"  # 9,505 bytes
    t = SerialTransport(PrinterConfig(kind="serial", device=name, write_timeout_s=5.0))
    t.open()
    try:
        t.write(job)  # the printer has read nothing yet
        t.drop_output()
        t.close()
        t.drop_output()  # closed: nothing
        os.set_blocking(master, False)
        readable = 0
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(master, 65536):
                readable += len(chunk)
        assert readable <= 4096  # the far end's own buffer only
    finally:
        t.close()
        os.close(master)


def test_a_stop_breaks_off_a_network_write_the_printer_does_not_take() -> None:
    """The print worker's stop (`abort`) ends a write blocked on a printer that reads
    nothing at once, not at the 60 s write timeout."""
    listener = Listener()
    t = NetworkTransport("127.0.0.1", listener.port, 2.0, 60.0)
    t.open()
    conn = listener.accept()
    try:
        with writing(t, b"\x00" * 64_000_000) as (writer, errors):
            time.sleep(0.5)  # the queues full: the write waits
            assert writer.is_alive()
            t.abort()
            writer.join(DEADLINE_S)
            assert not writer.is_alive()
            [error] = errors
            assert isinstance(error, ConnectionLost) and "dropped the connection" in str(error)
            assert t.aborted
    finally:
        conn.close()
        t.close()
        listener.close()


def test_a_file_printer_creates_its_file_rw_r_r(tmp_path: Path) -> None:
    """A coupon file the agent creates is readable by the other programs of the till
    (a spooler, a support engineer), written only by the agent's user: 0644."""
    out = tmp_path / "coupons.bin"
    old = os.umask(0)
    try:
        t = FileTransport(str(out))
        t.open()
        t.write(b"\x1b@coupon\x1dV\x01")
        t.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert out.read_bytes() == b"\x1b@coupon\x1dV\x01"


def test_a_serial_discard_input_drops_what_the_printer_sent_unasked() -> None:
    from tillpoint.printer.transport import SerialTransport

    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    t = SerialTransport(PrinterConfig(kind="serial", device=name))
    t.open()
    try:
        os.write(master, b"\x14\x00\x00\x0f")  # an ASB the agent never asked for
        time.sleep(0.2)
        t.discard_input()
        assert t.read(16, 0.3) == b""
        os.write(master, b"\x12")
        assert t.read(1, DEADLINE_S) == b"\x12"
    finally:
        t.close()
        t.discard_input()  # closed: nothing
        os.close(master)
