"""sd_notify without a dependency: READY, STOPPING, STATUS and the watchdog (Type=notify);
and the signals a long-running service (`tillpoint run`, `hub serve`) answers."""

from __future__ import annotations

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
    without loyalty. Nothing is reloaded; the configuration is read at start."""

    def stopping(signum: int, frame: object) -> None:
        stop()

    def hang_up(signum: int, frame: object) -> None:
        log.warning("SIGHUP ignored: the configuration is read at start; restart to change it")

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGHUP, hang_up)


def wait_for_stop(done: threading.Event) -> None:
    """Wait in the main thread until `done` is set (by `on_signals`' handler), waking twice
    a second. Python runs a signal's handler in the main thread, but the kernel gives a
    process's SIGTERM to any thread that takes it (gRPC's, uvicorn's, the sync's): one
    taken by another thread did not wake a main thread blocked in `Event.wait()` with no
    timeout, and `systemctl stop` waited for a second signal or its SIGKILL (review 31)."""
    while not done.wait(0.5):
        pass
