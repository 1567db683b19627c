"""Customer pole display driver (2 × 20 VFD/LCD on a serial port), written on pyserial.

Two command sets, chosen with ``command_set`` in ``[display]``:

============== ============ ============ =============== ================= ===============
command set    init         clear        cursor (x, y)   brightness n      characters
============== ============ ============ =============== ================= ===============
epson          ``1B 40``    ``0C``       ``1F 24 x y``   ``1F 58 n``       ``1B 74 n``
cd5220         ``1B 40``    ``0C``       ``1B 6C x y``   ``1B 2A n``       ``1B 66 52``
============== ============ ============ =============== ================= ===============

plus overwrite mode (``1F 01`` / ``1B 11``) so that writing the last cell never scrolls. ``x``
is 1-20 and ``y`` 1-2; brightness 1-4. The code table (``codepage_table``, Epson ``ESC t``) or
international set (``cd5220_charset``, CD5220 ``ESC f``) and the Python codec of the text
(``codepage``, default CP866) are configurable, since they differ between display vendors.

A message is written as: character set, overwrite mode, then for each row the cursor address
and the row padded to the full width. Rows are absolute, so a message fully replaces the last
one without a flickering clear, and re-sending it is harmless. Text the code page lacks is
degraded readably (``text.degrade``) and every row is cut to the width: nothing can wrap into
the next row.

Nothing here blocks the caller: :meth:`CustomerDisplay.show` stores the message and returns;
a thread writes it with a write timeout. If the port is missing or vanishes (USB-serial
unplugged), the display is marked OFFLINE and the thread reopens it every ``reconnect_s``;
once back it is initialised and shown the current message. Every ``refresh_s`` the current
message is written again, which notices an unplugged display and repaints one that was power
cycled.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict

from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.errors import TransportError
from tillpoint.printer.messages import fit_lines
from tillpoint.printer.text import degrade
from tillpoint.printer.transport import open_serial

__all__ = [
    "CD5220Commands",
    "CommandSet",
    "CustomerDisplay",
    "DisplayStatus",
    "EpsonCommands",
    "command_set",
    "init_bytes",
    "message_bytes",
]

log = logging.getLogger("tillpoint.display")

# Bytes a message may find still waiting in the port's queue (where the port tells: a
# real serial port, pyserial's loop://) and be written behind: a reset and a message or
# two (about 0.25 s at 9600 baud). More, and the driver waits for the display to take them
# (`write_timeout_s`, then OFFLINE, the queue dropped) instead of queueing a backlog.
QUEUED_MAX = 256


class _Commands:
    """What the two command sets share: reset (``1B 40``) and clear (``0C``), and the
    shape of the others; a set gives the prefixes of its overwrite, cursor and brightness
    commands (the table above) and its character set command."""

    name: str
    overwrite_bytes: bytes
    cursor_prefix: bytes
    brightness_prefix: bytes

    def __init__(self, config: DisplayConfig) -> None:
        self.config = config

    def init(self) -> bytes:
        return b"\x1b\x40"

    def clear(self) -> bytes:
        return b"\x0c"

    def overwrite(self) -> bytes:
        return self.overwrite_bytes

    def cursor(self, col: int, row: int) -> bytes:
        return self.cursor_prefix + bytes([col, row])

    def brightness(self, level: int) -> bytes:
        return self.brightness_prefix + bytes([level])


class EpsonCommands(_Commands):
    """Epson ESC/POS customer display commands (DM-D series and compatibles)."""

    name = "epson"
    overwrite_bytes = b"\x1f\x01"
    cursor_prefix = b"\x1f\x24"
    brightness_prefix = b"\x1f\x58"

    def charset(self) -> bytes:
        return b"\x1b\x74" + bytes([self.config.codepage_table])


class CD5220Commands(_Commands):
    """CD5220 command set (most unbranded pole displays)."""

    name = "cd5220"
    overwrite_bytes = b"\x1b\x11"
    cursor_prefix = b"\x1b\x6c"
    brightness_prefix = b"\x1b\x2a"

    def charset(self) -> bytes:
        return b"\x1b\x66" + self.config.cd5220_charset.encode("ascii")


CommandSet = EpsonCommands | CD5220Commands


def command_set(config: DisplayConfig) -> CommandSet:
    return EpsonCommands(config) if config.command_set == "epson" else CD5220Commands(config)


def init_bytes(config: DisplayConfig, brightness: int | None = None) -> bytes:
    """Initialise: reset, overwrite mode, character set, brightness, clear."""
    c = command_set(config)
    level = config.brightness if brightness is None else brightness
    return c.init() + c.overwrite() + c.charset() + c.brightness(level) + c.clear()


def _unshowable(text: str, codec: str) -> bool:
    """True when the code page shows `text` with a "?" it lacks (no look-alike for it)."""
    return degrade(text, codec).count("?") > text.count("?")


def showable(lines: Sequence[str], codec: str) -> list[str]:
    """`lines` in the code page, a greeting's name it cannot show left out (§8): "王小明,
    добрый день!" showed "???, добрый день!"; it shows "Добрый день!", as a greeting does
    a name too long for the display. The long-name form ("Добрый день," over "Name!")
    becomes "Добрый день!" over an empty row."""
    out = list(lines)
    for i, line in enumerate(out):
        name, comma, rest = line.partition(", ")
        if comma and rest and " " not in name and _unshowable(name, codec):
            out[i] = rest[0].upper() + rest[1:]
        # the name at a row's end ("С днём рождения, Ρ!", `birthday_line`): the wish
        # without it (it showed "С днём рождения, ?!"; review 40, rev40d)
        head, comma, name = out[i].rpartition(", ")
        if comma and name.endswith("!") and " " not in name and _unshowable(name, codec):
            out[i] = head + "!"
        # a name alone on its row ("Добрый день," over it, or `birthday_lines`' "Ρ!"
        # under the wish, which showed "?!"): the row left empty
        word = out[i].strip()
        if word.endswith("!") and " " not in word and _unshowable(word, codec):
            if i > 0 and out[i - 1].endswith(","):
                out[i - 1] = out[i - 1][:-1] + "!"
            out[i] = ""
    return [degrade(line, codec) for line in out]


def message_bytes(lines: Sequence[str], config: DisplayConfig) -> bytes:
    """The bytes that show ``lines`` (one per row; missing rows are blanked)."""
    c = command_set(config)
    codec = config.codepage
    rows = fit_lines(showable(lines, codec), config.columns, config.rows)
    out = bytearray(c.charset() + c.overwrite())
    for y, text in enumerate(rows, start=1):
        out += c.cursor(1, y) + text.ljust(config.columns).encode(codec)
    return bytes(out)


class DisplayStatus(TypedDict):
    state: Literal["OK", "OFFLINE", "DISABLED"]
    device: str
    last_error: str | None
    lines: list[str]


class CustomerDisplay:
    """A pole display that never blocks a checkout. ``start()`` it once; ``show()`` anytime."""

    def __init__(
        self,
        config: DisplayConfig,
        port_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.disabled = config.kind == "none"
        self._factory = port_factory or self._open_port
        self._cmds = command_set(config)
        self._cond = threading.Condition()
        self._lines: list[str] | None = None  # None: cleared
        self._brightness = config.brightness
        self._dirty = False
        self._brightness_dirty = False
        self._gen = 0  # bumps with every change
        self._written = 0  # the generation last written
        self._port: Any = None
        self._line_free_at = 0.0  # monotonic: when the line has carried the last write
        self._stop = False
        self._thread: threading.Thread | None = None
        self._state: Literal["OK", "OFFLINE", "DISABLED"] = (
            "DISABLED" if self.disabled else "OFFLINE"
        )
        self._last_error: str | None = None

    def _open_port(self) -> Any:
        c = self.config
        assert c.device is not None
        return open_serial(
            c.device,
            baudrate=c.baudrate,
            parity=c.parity,
            stopbits=c.stopbits,
            write_timeout_s=c.write_timeout_s,
        )

    # ------------------------------------------------------------------ the caller's side
    def show(self, lines: Sequence[str]) -> None:
        """Show these lines (see ``messages``); returns at once."""
        if self.disabled:
            return
        with self._cond:
            self._lines = list(lines)
            self._dirty = True
            self._gen += 1
            self._cond.notify_all()

    def clear(self) -> None:
        if self.disabled:
            return
        with self._cond:
            self._lines = None
            self._dirty = True
            self._gen += 1
            self._cond.notify_all()

    def set_brightness(self, level: int) -> None:
        if not 1 <= level <= 4:
            raise ValueError("display brightness is 1 to 4")
        if self.disabled:
            return
        with self._cond:
            self._brightness = level
            self._brightness_dirty = True
            self._gen += 1
            self._cond.notify_all()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until everything shown so far has been written (False: not in time)."""
        with self._cond:
            target = self._gen
            return self._cond.wait_for(lambda: self._written >= target, timeout_s)

    def status(self) -> DisplayStatus:
        with self._cond:
            return DisplayStatus(
                state=self._state,
                device=self.config.device or "none",
                last_error=self._last_error,
                lines=list(self._lines or []),
            )

    def start(self) -> None:
        if self.disabled or self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tillpoint-display", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._close(drop=True)

    # ------------------------------------------------------------------ the thread
    def _close(self, *, drop: bool = False) -> None:
        """Close the port; with `drop`, what the line still queues is thrown away first: a
        message replaces the last one whole, so the stale ones are of no use to the
        display when it reads again (it replayed every one: a backlog of stale totals), and
        a real serial port's close waits up to 30 s (closing_wait) for them to go out."""
        port, self._port = self._port, None
        if port is not None:
            if drop:
                with contextlib.suppress(Exception):
                    port.reset_output_buffer()
            with contextlib.suppress(Exception):
                port.close()

    def _content(self) -> bytes:
        if self._lines is None:
            return self._cmds.clear()
        return message_bytes(self._lines, self.config)

    def _offline(self, message: str, *, drop: bool = False) -> None:
        self._close(drop=drop)
        with self._cond:
            if self._state != "OFFLINE" or self._last_error != message:
                log.warning("customer display offline: %s", message)
            self._state = "OFFLINE"
            self._last_error = message

    def _write(self, data: bytes) -> bool:
        import serial

        try:
            self._port.write(data)
        except (serial.SerialException, OSError, TransportError) as exc:
            self._offline(f"{self.config.device}: {exc}")
            return False
        except Exception as exc:  # any port's fault: the display's, never the thread's end
            # (pyserial's loop:// raised queue.Full: the thread died, the display stayed
            # "OK" and was never written again)
            log.warning("customer display write failed", exc_info=True)
            self._offline(f"{self.config.device}: {type(exc).__name__} {exc}".rstrip())
            return False
        # the line carries it in this long at the configured speed (start, 8 bits, stop)
        self._line_free_at = time.monotonic() + len(data) * 10 / self.config.baudrate
        return True

    def _ready(self) -> None:
        """The display takes data: OK (logged when it was not)."""
        with self._cond:
            if self._port is None or self._state == "OK":
                return
            self._state, self._last_error = "OK", None
        log.info("customer display on %s ready", self.config.device)

    def _line_waiting(self) -> int:
        """Bytes the port has not sent yet (0 when it cannot tell: a pseudo-terminal)."""
        try:
            return int(self._port.out_waiting or 0)
        except Exception:
            return 0

    def _wait_for_line(self, *, most: int = 0, until_new: bool = False) -> bool | None:
        """Wait until the line has carried what was written (its line time at the
        configured speed, and the port's queue down to `most` bytes where the port tells:
        a pseudo-terminal does not), so that messages coming faster than the display
        takes them replace each other here instead of queueing in the line (a display that
        read slowly or not at all was then shown every stale total in turn). Messages
        shown meanwhile are taken after the wait.

        True: the line is free (or the driver stops); a queue seen empty makes the display
        OK (it took what was written). False: the queue did not empty
        within `write_timeout_s`: the display takes no data; what waits is dropped, the
        display is OFFLINE and reconnected. None (with `until_new`): a newer message
        came first."""
        cfg = self.config

        def woken() -> bool:
            return self._stop or (until_new and (self._dirty or self._brightness_dirty))

        with self._cond:
            self._cond.wait_for(woken, max(0.0, self._line_free_at - time.monotonic()))
            if self._stop:
                return True
        deadline = time.monotonic() + cfg.write_timeout_s
        while (waiting := self._line_waiting()) > most:
            with self._cond:
                if self._stop:
                    return True
                if woken():
                    return None
            if time.monotonic() >= deadline:
                self._offline(
                    f"{cfg.device}: the display takes no data ({waiting} bytes still waiting "
                    f"after {cfg.write_timeout_s:g} s: write timeout)",
                    drop=True,
                )
                return False
            with self._cond:
                self._cond.wait_for(woken, 0.02)
        if waiting == 0:  # what was written went out: the display takes data
            self._ready()
        return True

    def _run(self) -> None:
        cfg = self.config
        while True:
            with self._cond:
                if self._stop:
                    return
            if self._port is None:
                try:
                    self._port = self._factory()
                except (TransportError, OSError, ValueError) as exc:
                    self._offline(str(exc))
                    with self._cond:
                        self._cond.wait_for(lambda: self._stop, cfg.reconnect_s)
                    continue
                with self._cond:
                    gen = self._gen
                    data = init_bytes(cfg, self._brightness)
                    if self._lines is not None:
                        data += self._content()
                    self._dirty = self._brightness_dirty = False
                if self._write(data):
                    with self._cond:
                        self._written = max(self._written, gen)
                        self._cond.notify_all()
                    # OK once the display took it, where the port tells: one that reads
                    # nothing was "OK" again after each reconnect (its port had queued
                    # the bytes). A newer message first: its write decides.
                    if self._wait_for_line(until_new=True):
                        self._ready()
                continue
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop or self._dirty or self._brightness_dirty, cfg.refresh_s
                )
                if self._stop:
                    return
            # at most a few messages behind (QUEUED_MAX bytes waiting), never a backlog
            if not self._wait_for_line(most=QUEUED_MAX):
                continue
            with self._cond:
                if self._stop:
                    return
                gen = self._gen
                data = b""
                if self._brightness_dirty:
                    data += self._cmds.brightness(self._brightness)
                data += self._content()  # a refresh when nothing changed
                self._dirty = self._brightness_dirty = False
            if self._write(data):
                with self._cond:
                    self._written = max(self._written, gen)
                    self._cond.notify_all()
                    ok = self._state == "OK"
                # not OK yet (a newer message came while a reconnect's first bytes
                # waited): OK once the display took them, where the port tells, as after a
                # reconnect. It was OK at once: a display that read nothing, fed a quote
                # every 50 ms, flapped OK/OFFLINE about once a second (review 32, rev32b)
                if not ok and self._wait_for_line(until_new=True):
                    self._ready()
