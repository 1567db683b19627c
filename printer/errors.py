"""Errors of the printer, display and scanner part, rooted in :mod:`tillpoint.agent.errors`.

    TillpointError
    ├── InputError
    │   └── PrinterConfigError   a [printer]/[display]/[scanner] table that cannot work (exit 2)
    └── PrinterError             the printer could not be reached or did not take a job (exit 1)
        └── TransportError       a connection problem (refused, timed out, port vanished)
            └── ConnectionLost   the connection broke after it was open (EOF, reset, EIO)

Messages are one line a cashier or a support engineer can act on.
"""

from __future__ import annotations

from tillpoint.agent.errors import InputError, TillpointError


class PrinterConfigError(InputError):
    """The device configuration cannot work (unknown profile, code page, missing host, ...)."""


class PrinterError(TillpointError):
    """The printer could not be reached or did not take a job."""

    grpc_code = "UNAVAILABLE"


class TransportError(PrinterError):
    """Opening, writing to or reading from a device failed."""


class ConnectionLost(TransportError):
    """The device went away after the connection was open (closed, reset, unplugged)."""
