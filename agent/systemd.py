"""sd_notify without a dependency: READY, STOPPING, STATUS and the watchdog (Type=notify);
and the signals a long-running service (`tillpoint run`, `hub serve`) answers."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable


def notify(message: str) -> bool:
    """Send `message` to systemd; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def start_watchdog(stop: threading.Event) -> threading.Thread | None:
    """Ping WATCHDOG=1 at half the interval systemd asked for, until `stop` is set.

    It tells systemd the process runs and the interpreter schedules its threads (a hung
    interpreter, a native deadlock under the GIL, a stopped process get it restarted); it
    does not ask the agent's parts, since a call may rightly wait behind a chain's
    snapshot apply for longer than the interval. `status`, `/healthz` and the metrics
    tell how the parts are."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    interval = int(usec) / 2_000_000

    def run() -> None:
        while not stop.wait(interval):
            notify("WATCHDOG=1")

    thread = threading.Thread(target=run, name="sd-watchdog", daemon=True)
    thread.start()
    return thread


def on_signals(stop: Callable[[], None], log: logging.Logger) -> None:
    """SIGTERM and SIGINT call `stop`; SIGHUP is logged and ignored. Its default ends the
    process with no drain, and systemd counts that a clean exit (no restart under
    `Restart=on-failure`): a logrotate script or a habit of "HUP to reload" left a till
    without loyalty. Nothing is reloaded; the configuration is read at start.

    The handler only writes the signal's number to a pipe; a thread of its own reads it
    and calls `stop` (or logs). Python runs a handler in the main thread between two of
    its steps, wherever that thread is: `stop` (`Event.set`) run there while the main
    thread was inside `Event.wait` of the same event, holding its lock, waited for that
    lock for ever, and `tillpoint run` or `hub serve` hung at SIGTERM until systemd's
    SIGKILL (one stop in ~25 on a loaded machine; review 43)."""
    _relay.aim(stop, log)
    signal.signal(signal.SIGTERM, _relay.handler)
    signal.signal(signal.SIGINT, _relay.handler)
    signal.signal(signal.SIGHUP, _relay.handler)


class _Relay:
    """The signals' way out of the handler (`on_signals`): one pipe and one daemon thread
    a process (started at the first `on_signals`, again in a forked child), aimed at the
    latest `stop`."""

    def __init__(self) -> None:
        self._stop: Callable[[], None] = lambda: None
        self._log = logging.getLogger("tillpoint")
        self._pid = 0
        self._write = -1
        self._guard = threading.Lock()

    def aim(self, stop: Callable[[], None], log: logging.Logger) -> None:
        with self._guard:
            self._stop, self._log = stop, log
            if self._pid == os.getpid():
                return
            read, write = os.pipe()
            os.set_blocking(write, False)  # a handler never blocks: a full pipe drops one
            thread = threading.Thread(target=self._run, args=(read,), name="signals", daemon=True)
            thread.start()
            self._write, self._pid = write, os.getpid()

    def handler(self, signum: int, frame: object) -> None:
        # a full pipe (~64 KiB of signals unread) drops this one: a stop is owed already
        with contextlib.suppress(OSError):
            os.write(self._write, bytes([signum]))

    def _run(self, read: int) -> None:
        while True:
            try:
                got = os.read(read, 64)
            except InterruptedError:  # pragma: no cover - PEP 475 retries it
                continue
            if not got:  # pragma: no cover - the write end is never closed
                return
            for signum in got:
                if signum == signal.SIGHUP:
                    self._log.warning(
                        "SIGHUP ignored: the configuration is read at start; restart to change it"
                    )
                else:
                    self._stop()


_relay = _Relay()


def wait_for_stop(done: threading.Event) -> None:
    """Wait in the main thread until `done` is set (by `on_signals`' handler), waking twice
    a second. Python runs a signal's handler in the main thread, but the kernel gives a
    process's SIGTERM to any thread that takes it (gRPC's, uvicorn's, the sync's): one
    taken by another thread did not wake a main thread blocked in `Event.wait()` with no
    timeout, and `systemctl stop` waited for a second signal or its SIGKILL (review 31)."""
    while not done.wait(0.5):
        pass
