"""The agent's connection to its hub: one mTLS channel, deadlines, and the online state.

Trust is the enrolment bundle's: the channel presents the device certificate and
accepts only a server certificate from the hub's own CA, checked against the name
``tillpoint-hub`` whatever address is dialled (so a hub can move without new
certificates). Every call is made with an explicit deadline by its caller.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import grpc
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .pki import HUB_TLS_NAME, Enrollment

UNREACHABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


def describe(exc: grpc.RpcError) -> str:
    """One line for status and logs."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the hub did not answer in time"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the hub is unreachable ({(details or '').splitlines()[0][:200]})"
    if code in REFUSED:
        return f"the hub refused this till: {details}"
    name = code.name if code is not None else "error"
    return f"hub call failed: {name}: {details}"


class HubLink:
    """The channel and what the last exchanges with the hub say about it."""

    def __init__(self, address: str, enrollment: Enrollment) -> None:
        self.address = address
        self.enrollment = enrollment
        ca, key, cert = enrollment.channel_material()
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self.channel = grpc.secure_channel(
            address,
            creds,
            options=[
                ("grpc.ssl_target_name_override", HUB_TLS_NAME),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.initial_reconnect_backoff_ms", 300),
                ("grpc.min_reconnect_backoff_ms", 300),
                ("grpc.max_reconnect_backoff_ms", 3_000),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.enable_retries", 0),
            ],
        )
        self.stub = pb_grpc.HubStub(self.channel)
        self._lock = threading.Lock()
        self.online = False
        self.last_contact: datetime | None = None
        self.last_failure: str | None = None
        self.changed = threading.Event()  # set whenever `online` flips

    def ok(self) -> None:
        with self._lock:
            flipped = not self.online
            self.online = True
            self.last_contact = datetime.now(UTC)
            self.last_failure = None
        if flipped:
            self.changed.set()

    def failed(self, exc: grpc.RpcError) -> str:
        message = describe(exc)
        code = exc.code() if isinstance(exc, grpc.Call) else None
        with self._lock:
            flipped = self.online
            if code in UNREACHABLE or code in REFUSED:
                self.online = False
            else:
                # the hub answered (with an error): it is there
                self.last_contact = datetime.now(UTC)
                flipped = False
            self.last_failure = message
        if flipped:
            self.changed.set()
        return message

    def close(self) -> None:
        self.channel.close()
