"""Closing a test server's listening socket so the thread in its `accept()` ends.

On Linux `close()` does not wake a thread blocked in `accept()` on the same socket: the
thread waits for the worker's life and the port keeps accepting (review 45, stress45).
`shutdown(SHUT_RDWR)` first makes that `accept()` raise, and the loops return.
"""

from __future__ import annotations

import contextlib
import socket


def close_listener(sock: socket.socket) -> None:
    """Shut down and close `sock`; either step may find it closed already."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
