"""Connections to a receipt printer, each with explicit timeouts on every operation.

=========== =================================================================================
kind        how
=========== =================================================================================
network     raw TCP (port 9100): ``socket.create_connection`` with a connect timeout; every
            ``sendall`` and ``recv`` has its own timeout.
serial      ``serial.serial_for_url`` (so ``loop://``, ``socket://`` and ``rfc2217://`` URLs
            work as well as ``/dev/ttyS0``) with a read and a write timeout, ``dsrdtr`` off
            unless configured: python-escpos' ``Serial`` cannot open URLs and defaults to
            DSR/DTR flow control, which hangs on three-wire cables.
file        a file or a device node (``/dev/usb/lp0``) opened non-blocking; writes wait with
            ``select`` up to the write timeout. Paths under ``/dev`` are never created, so an
            unplugged printer is an error and not a regular file in ``/dev``.
usb         python-escpos' ``Usb`` (``pyusb``, a dependency, and the system's libusb-1.0):
            it finds the device and detaches the kernel driver; reads and writes go straight
            to the endpoints with a timeout in milliseconds. On Linux, ``file`` with the
            kernel's ``/dev/usb/lp0`` is the simpler choice.
=========== =================================================================================

A transport is opened per job and closed after it, so a printer shared with the POS software
is held only while a coupon prints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any, Protocol

from tillpoint.printer import _escpos
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.errors import ConnectionLost, PrinterConfigError, TransportError

__all__ = [
    "FileTransport",
    "NetworkTransport",
    "SerialTransport",
    "Transport",
    "UsbTransport",
    "make_transport",
    "open_serial",
]


class Transport(Protocol):
    """What the print worker needs from a connection."""

    description: str
    readable: bool  # can the printer answer status requests over it?

    def open(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Up to ``max_bytes``; ``b""`` when nothing arrives in time; ConnectionLost on EOF."""
        ...

    def discard_input(self) -> None: ...

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, termios.error) and exc.args and isinstance(exc.args[0], int):
        return os.strerror(exc.args[0]).lower()  # (22, 'Invalid argument'): no OSError
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror).lower()
    return str(exc) or type(exc).__name__


def _unsent(sock: socket.socket) -> int | None:
    """`NetworkTransport.unsent` of `sock`: its send queue's bytes not yet acknowledged by
    the other end (a FIN sent counts one), None where the system cannot tell."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return None
    count: int = struct.unpack("i", out)[0]
    return count


# How long a graceful close of a network printer's connection waits, at most, for the
# printer to take the job's last bytes (or close its side), reading and dropping what it
# sends meanwhile (`NetworkTransport.close`).
CLOSE_DRAIN_S = 2.0
# ... looking whether it has, first after this wait for its input, then after waits that
# double up to the last (no input came: the receive queue is empty when it looks)
CLOSE_FIRST_LOOK_S = 0.001
CLOSE_LOOK_MAX_S = 0.01


class NetworkTransport:
    """Raw TCP to a network printer (JetDirect/AppSocket, port 9100)."""

    readable = True

    def __init__(
        self,
        host: str,
        port: int = 9100,
        connect_timeout_s: float = 3.0,
        write_timeout_s: float = 10.0,
        *,
        close_drain_s: float = CLOSE_DRAIN_S,
    ) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.write_timeout_s = write_timeout_s
        self.close_drain_s = close_drain_s
        self.description = f"{host}:{port}"
        self._sock: socket.socket | None = None
        self.aborted = False
        self._drop = False

    def open(self) -> None:
        self._drop = False
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise TransportError(
                f"printer {self.description} not reachable: {_reason(exc)}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._sock = sock

    def _s(self) -> socket.socket:
        if self._sock is None:
            raise TransportError(f"printer {self.description}: connection not open")
        return self._sock

    def write(self, data: bytes) -> None:
        """Every byte into the connection; `write_timeout_s` is how long the printer may
        take no byte of it (a printer that reads slowly but steadily is not one that
        stopped: `sendall`'s timeout was the limit of the whole write, review 32)."""
        sock = self._s()
        sock.settimeout(self.write_timeout_s)  # each send: room within the timeout
        view = memoryview(data)
        try:
            while view:
                view = view[sock.send(view) :]
        except TimeoutError:
            raise TransportError(
                f"printer {self.description} stopped taking data ({self.write_timeout_s:g} s)"
            ) from None
        except OSError as exc:
            raise ConnectionLost(
                f"printer {self.description} dropped the connection: {_reason(exc)}"
            ) from None

    def unsent(self) -> int | None:
        """Bytes written the printer has not taken yet (the kernel's queue for the
        connection: not yet acknowledged by the printer's end), or None where the system
        cannot tell (SIOCOUTQ is Linux's)."""
        return None if self._sock is None else _unsent(self._sock)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        sock = self._s()
        sock.settimeout(timeout_s)
        try:
            data = sock.recv(max_bytes)
        except TimeoutError:
            return b""
        except OSError as exc:
            raise ConnectionLost(
                f"printer {self.description} dropped the connection: {_reason(exc)}"
            ) from None
        if not data:
            raise ConnectionLost(f"printer {self.description} closed the connection")
        return data

    def abort(self) -> None:
        """Break off a write blocked in another thread (the print worker's stop)."""
        self.aborted = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def drop_output(self) -> None:
        """Make the close a reset: what the kernel still holds of this connection's bytes is
        thrown away instead of delivered after the close (a job the printer did not
        acknowledge is sent again in full; a graceful close let each unacknowledged copy
        reach a printer that read again, and it printed the coupon that often)."""
        self._drop = True

    def discard_input(self) -> None:
        sock = self._s()
        sock.setblocking(False)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
        finally:
            sock.settimeout(self.write_timeout_s)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._drop:  # a reset (RST): unsent bytes are discarded, not delivered
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self._drain(sock)
        sock.close()

    def _drain(self, sock: socket.socket) -> None:
        """A graceful close's first half: the FIN after the job's last byte, then what the
        printer sends read and dropped until it has taken every byte (acknowledged them;
        its ACK of the FIN is not awaited) or closed its side, `close_drain_s` at most.
        Linux turns a close with unread input into a reset (RST): the job's tail still in
        the send queue was thrown away, and the printer got an RST before it had printed
        it (review 34; a printer's status bytes the agent never read, with `confirm =
        false`). Whatever is unread at the end is read just before the close; input that
        comes after it still resets the connection, by then taken."""
        fin = 0  # the FIN counts one in the send queue until the printer acknowledges it
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            fin = 1
        deadline = time.monotonic() + self.close_drain_s
        # Done when the printer has acknowledged every byte of the job, its ACK of our FIN
        # not awaited: a printer that reads the job and keeps its side open (AppSocket
        # printers close on their own idle timeout) delays that ACK (Linux's delayed ACK,
        # 40 ms, to send it with an answer that never comes), and with the first look
        # after a 50 ms read every close, each coupon's and each health probe's, cost at
        # least 50 ms (review 36). The FIN is the kernel's to deliver after the close, as
        # any graceful close's. Looks come after 1 ms, then after waits that double up to
        # 10 ms (a late ACK of the data costs at most that much more).
        wait = CLOSE_FIRST_LOOK_S
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(min(left, wait))
                try:
                    if not sock.recv(4096):
                        return  # the printer closed its side: it read our FIN, and all before it
                except TimeoutError:
                    # (`sock`: the transport has let it go, `unsent()` no longer sees
                    # it, and every close waited its whole bound, rev34b)
                    unsent = _unsent(sock)
                    if unsent is not None and unsent <= fin:
                        return  # every byte acknowledged, nothing more sent
                    wait = min(wait * 2, CLOSE_LOOK_MAX_S)
            sock.setblocking(False)
            while sock.recv(4096):
                pass
        except OSError:  # reset, or nothing left to read (BlockingIOError)
            return


def open_serial(
    url: str,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    flow_control: str = "none",
    read_timeout_s: float = 0.2,
    write_timeout_s: float = 1.0,
) -> Any:
    """Open a serial port or pyserial URL with timeouts; DSR/DTR flow control only on request."""
    import serial

    kwargs: dict[str, Any] = {
        "baudrate": baudrate,
        "bytesize": serial.EIGHTBITS,
        "parity": parity,
        "stopbits": stopbits,
        "timeout": read_timeout_s,
        "write_timeout": write_timeout_s,
        "rtscts": flow_control == "rtscts",
        "dsrdtr": flow_control == "dsrdtr",
        "xonxoff": flow_control == "xonxoff",
    }
    if "://" not in url:
        kwargs["exclusive"] = True  # a second process cannot interleave bytes on the port
    try:
        return serial.serial_for_url(url, **kwargs)
    # termios.error is no OSError: pyserial's open lets the kernel's refusal of the
    # settings through as it is (a socat pty set up before refused parity "E", EINVAL). It
    # killed the display's and the scanner's threads for good and was a printer's
    # "unexpected error" with a traceback at every try (review 55, mut55b)
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        reason = _reason(exc)
        if "exclusively lock" in str(exc):  # (EAGAIN: "resource temporarily unavailable")
            reason = "in use by another program (it holds the port's lock)"
        raise TransportError(f"serial port {url} not available: {reason}") from None


# A job the stop meets with at most this much of it left to hand to a serial line (at
# its baud rate) is written out whole, not broken off (`SerialTransport._write_fd`).
STOP_FINISH_S = 2.0
# The least grace such a rest gets (its line time doubled), for the port to be offered it
# a few times as the line frees room: the last bytes of a job are a few ms of the line.
FINISH_MIN_S = 0.1
# What the kernel may have to carry before it takes more: a UART's buffer (4,096 bytes);
# a pseudo-terminal (socat's, a network-serial bridge's) frees room only a whole buffer
# at a time, 3.5 KB seen: 1.9 s at 19,200 baud. The grace is twice the line time of it
# and the rest, `2 × STOP_FINISH_S` at most (review 40, rev40d).
FINISH_ROOM_BYTES = 4096


class SerialTransport:
    """A serial printer (RS-232 or USB-serial), or any pyserial URL."""

    readable = True

    def __init__(self, config: PrinterConfig) -> None:
        assert config.device is not None
        self.config = config
        self.description = config.device
        self._port: Any = None
        self.aborted = False
        self._line_free_at = 0.0  # time.monotonic() when the line has carried what was written

    def line_busy_s(self) -> float:
        """How long the line still needs to carry what was written, at its baud rate: the
        kernel holds tens of KB for the line after a write has returned (a pseudo-terminal,
        a USB-serial adapter, a UART's buffer), which no port can be asked about (TIOCOUTQ
        says 0 for most), so a printer's answer to what follows cannot come sooner."""
        return max(0.0, self._line_free_at - time.monotonic())

    def abort(self) -> None:
        """Break off a write blocked in another thread (the print worker's stop): a device
        node's write (`_write_fd`) ends within 0.2 s, a URL port's by pyserial's
        `cancel_write`; `write` says it did not finish when it did not (by the count of
        bytes that went out: a write that went out whole stands)."""
        self.aborted = True
        port = self._port
        cancel = getattr(port, "cancel_write", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()

    def drop_output(self) -> None:
        """Throw away what the line still queues of this connection's bytes before the
        close (a job the printer did not acknowledge is sent again in full: the queued
        copy reached a printer that read again, and the coupon printed twice; a real
        port's close also waited up to 30 s for it)."""
        port = self._port
        if port is not None:
            with contextlib.suppress(Exception):
                port.reset_output_buffer()

    def open(self) -> None:
        c = self.config
        assert c.device is not None
        self._port = open_serial(
            c.device,
            baudrate=c.baudrate,
            parity=c.parity,
            stopbits=c.stopbits,
            flow_control=c.flow_control,
            write_timeout_s=c.write_timeout_s,
        )

    def write(self, data: bytes) -> None:
        import serial

        port = self._port
        if port is None:
            raise TransportError(f"printer {self.description}: port not open")
        # at 9600 baud a byte takes ~1 ms: allow twice the line time on top of the timeout
        timeout_s = self.config.write_timeout_s + 2 * len(data) * 10 / self.config.baudrate
        c = self.config
        bits = 1 + 8 + (c.parity != "N") + c.stopbits  # start, data, parity, stop bits
        start = time.monotonic()
        fd = getattr(port, "fd", None)  # a device node (pyserial's POSIX port), not a URL
        try:
            # pyserial sets the port up again for the new timeout: a port that hung up
            # (the printer unplugged) fails here, "Could not configure port", which went
            # out as a bug's error, the printer ERROR, not OFFLINE (review 40, rev40d)
            port.write_timeout = timeout_s
            if isinstance(fd, int):
                written = self._write_fd(fd, data, timeout_s, bits / c.baudrate)
            else:
                written = port.write(data)
        except serial.SerialTimeoutException:
            raise TransportError(
                f"printer {self.description} stopped taking data (flow control held)"
            ) from None
        except (serial.SerialException, OSError, termios.error) as exc:
            # (termios.error: the new timeout's tcsetattr refused, not wrapped by pyserial)
            raise ConnectionLost(f"printer {self.description} went away: {_reason(exc)}") from None
        if written is not None and written < len(data):
            # the stop's abort ended the write early (`cancel_write` of a URL port says so
            # only by the count): the cut never went out; what the kernel still queues of
            # this write's part is dropped, so no torn part of it prints when the line
            # moves again. Only when it took a part: a write that took nothing (`GS r`
            # after a job the abort met as it ended) leaves the queue to the job before
            # it, whose tail, the cut last, may still be in it. A write that went out
            # whole is one, whether or not an abort came (review 31, rev31b: the flag
            # alone said "broken off" of a whole job, which the next start printed again)
            if self.aborted and written > 0:
                with contextlib.suppress(Exception):
                    port.reset_output_buffer()
            raise ConnectionLost(
                f"printer {self.description}: the write was broken off "
                f"({written} of {len(data)} bytes went out)"
            )
        self._line_free_at = max(start, self._line_free_at) + len(data) * bits / c.baudrate

    def _write_fd(self, fd: int, data: bytes, timeout_s: float, byte_s: float) -> int:
        """`data` to the port's own descriptor (pyserial opens it non-blocking), counting
        what the kernel took, until all of it, the abort or the timeout: pyserial's write,
        cancelled (`cancel_write`) while it waits, counts the chunk the kernel already
        took as not written, and a cancel that found no write waiting ends the next one
        after its first chunk, saying 0 bytes (a whole coupon, cut included, went to
        the printer and was printed again at the next start; review 31, rev31b).

        The abort ends the write at once unless the line has begun taking it and what is
        left of it the line carries within `STOP_FINISH_S` at its rate (`byte_s`, a
        byte's time): then the rest is written, the cut last, for twice that time and
        `FINISH_ROOM_BYTES`' at most (`2 × STOP_FINISH_S` at most), offered to the port as
        the line frees room, not when `select` says writable (a UART's port says so only
        below 256 waiting bytes: review 39, rev39h). A printer that stopped taking bytes
        is still broken off; a write that had not begun, nothing of it on paper, is
        broken off as before. A coupon the stop met in its last second went out torn,
        its codes printed, and then whole at the next start: a coupon redeemed twice
        (review 39, rev38e)."""
        import serial

        view = memoryview(data)
        sent = 0
        deadline = time.monotonic() + timeout_s
        finish_by: float | None = None  # the abort came: the rest is written until then
        while sent < len(data):
            if self.aborted:
                now = time.monotonic()
                if finish_by is None:
                    rest_s = (len(data) - sent) * byte_s
                    # a write the line has begun taking, with little left: twice the rest's
                    # line time (the kernel takes it as the line drains what it holds)
                    finishing = sent > 0 and rest_s <= STOP_FINISH_S
                    # (twice the rest's line time alone broke a pty's rest off at 19,200
                    # baud: its room came back 1.9 s later, a whole buffer at once)
                    room_s = FINISH_ROOM_BYTES * byte_s
                    grace = min(2 * STOP_FINISH_S, max(2 * (rest_s + room_s), FINISH_MIN_S))
                    finish_by = now + grace if finishing else now
                if now >= finish_by:
                    break
                deadline = min(deadline, finish_by)
            left = deadline - time.monotonic()
            if left <= 0:
                if finish_by is not None:
                    break  # the stop's grace ran out: broken off, as before
                raise serial.SerialTimeoutException("Write timeout")
            if finish_by is not None:
                # the grace: the rest is offered to the port as the line frees room, not
                # when `select` says writable: a UART's port says so only once fewer than
                # 256 bytes wait (Linux's n_tty_poll, WAKEUP_CHARS), 3,840 bytes' line
                # time after it took its fill (4 s at 9,600 baud), and the grace ran out
                # first: the job broken off, torn (review 39, rev39h)
                try:
                    sent += os.write(fd, view[sent:])
                except (BlockingIOError, InterruptedError):
                    time.sleep(min(left, 0.01))
                continue
            _, ready, _ = select.select([], [fd], [], min(left, 0.2))  # the abort: 0.2 s
            if not ready:
                continue
            try:
                sent += os.write(fd, view[sent:])
            except (BlockingIOError, InterruptedError):
                continue
        return sent

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        import serial

        port = self._port
        if port is None:
            raise TransportError(f"printer {self.description}: port not open")
        try:
            port.timeout = timeout_s
            data: bytes = port.read(max_bytes)
        except (serial.SerialException, OSError, termios.error) as exc:
            raise ConnectionLost(f"printer {self.description} went away: {_reason(exc)}") from None
        return data

    def discard_input(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.reset_input_buffer()

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


class FileTransport:
    """A file or a device node; write-only, so no status and no confirmation."""

    readable = False

    def __init__(self, path: str, write_timeout_s: float = 10.0) -> None:
        self.path = path
        self.description = path
        self.write_timeout_s = write_timeout_s
        self._fd: int | None = None
        self.aborted = False

    def abort(self) -> None:
        """Break off a write waiting in another thread (the print worker's stop)."""
        self.aborted = True

    def open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY
        if not os.path.abspath(self.path).startswith("/dev/"):
            flags |= os.O_CREAT
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise TransportError(f"printer {self.path} not available: {_reason(exc)}") from None

    def write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise TransportError(f"printer {self.path}: not open")
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout_s
        while view:
            left = deadline - time.monotonic()
            if self.aborted:
                raise ConnectionLost(f"printer {self.path}: the write was broken off")
            if left <= 0:
                raise TransportError(f"printer {self.path} stopped taking data")
            try:
                _, ready, _ = select.select([], [fd], [], min(left, 0.2))
                if not ready:
                    continue
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise ConnectionLost(f"printer {self.path} went away: {_reason(exc)}") from None
            view = view[n:]

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        return b""

    def discard_input(self) -> None:
        pass

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class UsbTransport:
    """A USB printer through python-escpos' ``Usb`` (pyusb); timeouts in milliseconds."""

    readable = True

    def __init__(
        self, config: PrinterConfig, device_factory: Callable[[], Any] | None = None
    ) -> None:
        self.config = config
        vid, pid = config.usb_vendor_id or 0, config.usb_product_id or 0
        self.description = f"usb {vid:04x}:{pid:04x}"
        self._factory = device_factory
        self._printer: Any = None
        self._dev: Any = None

    def _default_factory(self) -> Any:
        escpos = _escpos.load()
        usb_printer = escpos.printer.Usb
        if not usb_printer.is_usable():
            raise TransportError(
                "USB printing needs the pyusb package (pip install pyusb), "
                'or use kind = "file" with the kernel device /dev/usb/lp0'
            )
        c = self.config
        return usb_printer(
            idVendor=c.usb_vendor_id,
            idProduct=c.usb_product_id,
            timeout=int(c.write_timeout_s * 1000),
            in_ep=c.usb_in_ep,
            out_ep=c.usb_out_ep,
        )

    def open(self) -> None:
        printer = (self._factory or self._default_factory)()
        try:
            printer.open()
        except Exception as exc:
            raise TransportError(
                f"printer {self.description} not available: {_reason(exc)}"
            ) from None
        self._printer, self._dev = printer, printer.device

    def write(self, data: bytes) -> None:
        if self._dev is None:
            raise TransportError(f"printer {self.description}: not open")
        try:
            self._dev.write(self.config.usb_out_ep, data, int(self.config.write_timeout_s * 1000))
        except Exception as exc:
            raise ConnectionLost(f"printer {self.description} went away: {_reason(exc)}") from None

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if self._dev is None:
            raise TransportError(f"printer {self.description}: not open")
        try:
            data = self._dev.read(self.config.usb_in_ep, max_bytes, max(1, int(timeout_s * 1000)))
        except Exception as exc:
            if "timeout" in str(exc).lower() or getattr(exc, "errno", None) == errno.ETIMEDOUT:
                return b""
            raise ConnectionLost(f"printer {self.description} went away: {_reason(exc)}") from None
        return bytes(data)

    def discard_input(self) -> None:
        pass

    def close(self) -> None:
        printer, self._printer, self._dev = self._printer, None, None
        if printer is not None:
            with contextlib.suppress(Exception):
                printer.close()


def make_transport(config: PrinterConfig) -> Transport:
    """A new, unopened transport for the configured printer."""
    if config.kind == "network":
        assert config.host is not None
        return NetworkTransport(
            config.host, config.port, config.connect_timeout_s, config.write_timeout_s
        )
    if config.kind == "serial":
        return SerialTransport(config)
    if config.kind == "file":
        assert config.device is not None
        return FileTransport(config.device, config.write_timeout_s)
    if config.kind == "usb":
        return UsbTransport(config)
    raise PrinterConfigError('no printer configured (printer kind = "none")')
