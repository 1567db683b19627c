"""A virtual pole display: decodes Epson / CD5220 display bytes into the 2 × 20 screen.

:class:`DisplayScreen` applies the command sets of ``display.py`` (init, clear, cursor,
brightness, character set, overwrite mode) to a screen buffer, decoding text in the
display's code page, so tests and the demo can check *what the customer sees*.

:class:`PtyPair` makes a pair of connected pseudo-terminals with ``socat`` (a serial cable
without hardware): the driver opens :attr:`PtyPair.device`, the virtual display reads
:attr:`PtyPair.peer`. Stopping socat makes the device vanish (an unplugged USB-serial
adapter); starting it again brings it back under the same path.

For a demo::

    python -m tillpoint.printer.virtual_display --dir /tmp/tillpoint-display

prints the screen each time it changes; point ``[display] device`` at ``<dir>/device``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

__all__ = ["DisplayScreen", "PtyPair", "main"]


class DisplayScreen:
    """The screen of a pole display fed with its command bytes."""

    def __init__(
        self,
        command_set: Literal["epson", "cd5220"] = "epson",
        columns: int = 20,
        rows: int = 2,
        codepage: str = "cp866",
    ) -> None:
        self.command_set = command_set
        self.columns, self.rows = columns, rows
        self.codepage = codepage
        self.brightness: int | None = None
        self.charset: bytes | None = None  # the last character-set command's argument
        self.overwrite = False
        self.inits = 0
        self._buf = bytearray()
        self._clear()

    def _clear(self) -> None:
        self.cells = [[" "] * self.columns for _ in range(self.rows)]
        self.x, self.y = 0, 0

    @property
    def lines(self) -> list[str]:
        return ["".join(row) for row in self.cells]

    @property
    def text(self) -> list[str]:
        """The rows without trailing blanks."""
        return [line.rstrip() for line in self.lines]

    def _put(self, ch: str) -> None:
        self.cells[self.y][self.x] = ch
        self.x += 1
        if self.x >= self.columns:
            self.x = 0
            self.y = (self.y + 1) % self.rows

    def feed(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        i = 0
        while i < len(buf):
            n = self._step(buf, i)
            if n == 0:
                break
            i += n
        del buf[:i]

    def _step(self, buf: bytearray, i: int) -> int:
        """Consume one command or character at ``i``; 0 when it is not complete yet."""
        b = buf[i]
        rest = len(buf) - i
        if b == 0x1B:
            if rest < 2:
                return 0
            cmd = buf[i + 1]
            if cmd == 0x40:  # ESC @
                self._clear()
                self.inits += 1
                self.charset, self.overwrite = None, False
                return 2
            if cmd == 0x11:  # CD5220 overwrite mode
                self.overwrite = True
                return 2
            if cmd in (0x74, 0x66, 0x2A):  # ESC t n / ESC f n / ESC * n
                if rest < 3:
                    return 0
                if cmd == 0x2A:
                    self.brightness = buf[i + 2]
                else:
                    self.charset = bytes(buf[i + 1 : i + 3])
                return 3
            if cmd == 0x6C:  # CD5220 ESC l x y
                if rest < 4:
                    return 0
                self._move(buf[i + 2], buf[i + 3])
                return 4
            return 2
        if b == 0x1F:
            if rest < 2:
                return 0
            cmd = buf[i + 1]
            if cmd == 0x24:  # US $ x y
                if rest < 4:
                    return 0
                self._move(buf[i + 2], buf[i + 3])
                return 4
            if cmd == 0x58:  # US X n
                if rest < 3:
                    return 0
                self.brightness = buf[i + 2]
                return 3
            if cmd == 0x01:  # US MD1 overwrite mode
                self.overwrite = True
                return 2
            return 2
        if b == 0x0C:
            self._clear()
            return 1
        if b == 0x0D:
            self.x = 0
            return 1
        if b == 0x0A:
            self.y = (self.y + 1) % self.rows
            return 1
        if b < 0x20:
            return 1
        self._put(bytes([b]).decode(self.codepage, errors="replace"))
        return 1

    def _move(self, x: int, y: int) -> None:
        self.x = min(max(x, 1), self.columns) - 1
        self.y = min(max(y, 1), self.rows) - 1


class PtyPair:
    """Two connected pseudo-terminals made by socat, with stable paths."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.device = self.directory / "device"
        self.peer = self.directory / "peer"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("socat") is not None

    # A process's start and stop on a loaded machine (the suite's three workers on two
    # cores): 5 s for socat's start failed now and then (review 43, flake43).
    START_S = 20.0
    STOP_S = 20.0

    def start(self, timeout_s: float = START_S) -> PtyPair:
        if self._proc is not None:
            return self
        socat = shutil.which("socat")
        if socat is None:
            raise FileNotFoundError("socat is not installed (apt-get install socat)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                socat,
                f"pty,rawer,link={self.device}",
                f"pty,rawer,link={self.peer}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not (self.device.exists() and self.peer.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("socat did not create the pseudo-terminals")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.STOP_S)
        for link in (self.device, self.peer):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tillpoint.printer.virtual_display``: show what a pole display would."""
    from tillpoint.printer.transport import open_serial

    ap = argparse.ArgumentParser(description="A virtual 2 x 20 pole display on a pty pair.")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tillpoint-display"))
    ap.add_argument("--command-set", choices=("epson", "cd5220"), default="epson")
    ap.add_argument("--codepage", default="cp866")
    args = ap.parse_args(argv)
    pair = PtyPair(args.dir)
    try:
        pair.start()
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"cannot start the virtual display: {exc}", file=sys.stderr)
        return 1
    print(f"virtual display: point [display] device at {pair.device}", flush=True)
    screen = DisplayScreen(args.command_set, codepage=args.codepage)
    port = open_serial(str(pair.peer), read_timeout_s=0.2)
    shown: list[str] = []
    try:
        while True:
            data = port.read(256)
            if data:
                screen.feed(data)
                if screen.lines != shown:
                    shown = screen.lines
                    border = "+" + "-" * screen.columns + "+"
                    print("\n".join([border, *(f"|{line}|" for line in shown), border]), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        port.close()
        pair.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
