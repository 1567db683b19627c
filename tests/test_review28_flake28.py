"""Review 28 (flake hunt): the points of timing tests made without a wall clock where one
was too tight for a loaded 2-core CI machine."""

from __future__ import annotations

import threading

from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import CustomerDisplay

LINES = ["Анна, добрый день!", "Бонусы: 1192"]


class StuckPort:
    """A display whose write hangs (a USB-serial adapter wedged mid-write) until released."""

    def __init__(self) -> None:
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, data: bytes) -> int:
        self.writing.set()
        self.release.wait(30)
        return len(data)

    def close(self) -> None:
        self.release.set()


def test_show_returns_while_the_displays_write_hangs() -> None:
    """The checkout never waits for the display: every show() returns while the display's
    thread is stuck in a write that has not ended (with no wall-clock bound to miss on a
    busy machine, where a single show once took 22 ms against the old 10 ms bound)."""
    port = StuckPort()
    display = CustomerDisplay(DisplayConfig(kind="serial", device="loop://"), lambda: port)
    display.start()
    try:
        assert port.writing.wait(10)  # the thread is inside its first write, and stays there
        shown = threading.Event()

        def sell() -> None:
            for n in range(100):
                display.show(["Итого:", f"{n},00"])
            shown.set()

        threading.Thread(target=sell, daemon=True).start()
        assert shown.wait(10)  # returned, each of them, while the write still hangs
        assert not port.release.is_set()
        assert not display.flush(0.05)  # nothing shown since was written, of course
        assert display.status()["lines"] == ["Итого:", "99,00"]
    finally:
        port.release.set()
        display.stop()
