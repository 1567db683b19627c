"""Session 45 (lead): the test servers' listeners end the thread waiting in `accept()`.

stress45 found grpc41's proxy (and four more test servers) closing its listening socket
from another thread: on Linux the thread in `accept()` stays blocked for the worker's life
and the port keeps accepting. `tests/listeners.close_listener` shuts the socket down first.
"""

from __future__ import annotations

import socket
import threading

from .listeners import close_listener


def _waiting_accept(listener: socket.socket) -> threading.Thread:
    def accept() -> None:
        try:
            while True:
                listener.accept()[0].close()
        except OSError:
            return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def test_close_listener_ends_the_thread_waiting_in_accept_and_refuses_the_port() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = _waiting_accept(listener)
    close_listener(listener)
    thread.join(timeout=10)
    assert not thread.is_alive()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        pass  # refused: nobody listens there now
    else:
        raise AssertionError("the closed listener's port still accepted a connection")
    close_listener(listener)  # a second close is harmless
