"""The agent's connection to its hub: one mTLS channel, deadlines, and the online state.

Trust is the enrolment bundle's: the channel presents the device certificate and
accepts only a server certificate from the hub's own CA, checked against the name
``tillpoint-hub`` whatever address is dialled (so a hub can move without new
certificates). Every call is made with an explicit deadline by its caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .pki import HUB_TLS_NAME, Enrollment, ca_identity

log = logging.getLogger("tillpoint.sync")

UNREACHABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
# gRPC's words when the till does not trust the server's certificate (BoringSSL's), or
# when the certificate, of the hub's CA, does not name `tillpoint-hub` (gRPC's own check
# of the name: it was "the hub is unreachable" until review 55, mut55a)
HANDSHAKE_FAILED = (
    "CERTIFICATE_VERIFY_FAILED",
    "Tls handshake failed",
    "CERTIFICATE_VERI",
    "Hostname Verification Check failed",
)


def describe(exc: grpc.RpcError) -> str:
    """One line for status and logs."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the hub did not answer in time"
    if code == grpc.StatusCode.UNAVAILABLE:
        first = (details or "").splitlines()[0] if details else ""
        if any(sign in first for sign in HANDSHAKE_FAILED):
            # the hub answered, but the two sides do not trust each other: not a network
            # problem, and no retry mends it
            return (
                "the TLS handshake with the hub failed: its certificate expired, is not"
                f" from this till's hub or does not name {HUB_TLS_NAME!r} (on the hub:"
                " 'tillpoint hub serve' says which), or the address is another server's"
                f" ({first[-120:]})"
            )
        return f"the hub is unreachable ({first[:200]})"
    if code in REFUSED:
        return f"the hub refused this till: {details}"
    name = code.name if code is not None else "error"
    return f"hub call failed: {name}: {details}"


# The till pings the hub when it has read nothing from it for 20 s, so a dead link is
# noticed within 80 s; the hub must accept pings that often
# (hub_server.MIN_PING_INTERVAL_MS).
KEEPALIVE_MS = 20_000
# A ping the hub has not answered in a minute ends the connection (the channel then
# connects again). Given as `grpc.keepalive_timeout_ms` and as gRPC's own ping timeout
# (`grpc.http2.ping_timeout_ms`): grpcio 1.85 times a quiet link's keepalive ping by the
# latter (review 57, mut57b). A minute, gRPC's default, and not less: the timeout holds
# for every ping, and a ping's answer comes behind what is already under way. Review 57
# made it 10 s (a silent link noticed within 30 s, not 80 s), and on a slow line (a store
# on a backup link) a push of 800 KB at 20 KB/s was cut "ping timeout" every time, as was
# a pull at 100 KB/s (session 58).
KEEPALIVE_TIMEOUT_MS = 60_000
# gRPC's bandwidth probe (BDP) pings while a download runs, and its answer comes behind
# all the hub has sent: on a slow line past the timeout, and a pull never finished, not
# even its first chunk. So no probe: a download keeps the link busy, and the keep-alive
# pings only a quiet one. The stream's window is fixed instead, at 1 MiB. The window is
# also what the hub may have under way to a till, and the hub's own pings (session 58)
# wait behind it: their answer must come within a minute (hub_server.
# KEEPALIVE_TIMEOUT_MS), so the window, and a chunk more (gRPC grows the window to take a
# whole message), must pass in well under that on the slowest line a pull is made for
# (pull.SLOWEST_LINK, 32 KB/s): 1.25 MiB in 40 s. Session 58's 4 MiB (and 1 MiB chunks:
# 160 s) had a pull of over ~3 MB at 32 KB/s cut "Socket closed" by the hub after 90 s,
# every time, behind a forwarder or a TCP proxy that holds what the hub sends (session
# 59). The window bounds a download to window / RTT: measured 8.4 MB/s at 100 ms (was
# 22-25 MB/s), 67 Mbit/s, above a store's line.
WINDOW_BYTES = 1 << 20
# A channel that failed to connect tries again after 0.3 s, growing to 3 s (gRPC's
# default: 1 s to 120 s). Each connection attempt is given 3 s for its TCP connect, TLS
# and the hub's HTTP/2 SETTINGS frame (gRPC core: max(`grpc.min_reconnect_backoff_ms`,
# the backoff)): that option was 300 ms, and a hub answering a new connection later (a
# slow uplink, a busy hub) failed a fresh link's call of 5 s UNAVAILABLE after 0.33 s:
# `sync now` said the hub was unreachable (review 41, grpc41). 3 s is what an attempt
# got before once an outage had lasted a few attempts (its backoff then at the 3 s cap),
# so a link whose handshake hung recovers no later than before; a refused connection
# (the hub down) still fails at once.
RECONNECT_MIN_MS, RECONNECT_MAX_MS = 300, 3_000
CONNECT_WINDOW_MS = RECONNECT_MAX_MS


class HubLink:
    """The channel and what the last exchanges with the hub say about it.

    When the hub answers again after the link was down (a call succeeds while `online`
    is False, or the channel becomes READY again, which the channel notices by itself
    within its reconnect backoff of at most 3 s), every listener added by
    `on_recovery` is called: the sync loops then stop waiting out their backoffs.
    """

    def __init__(self, address: str, enrollment: Enrollment) -> None:
        self.address = address
        self.enrollment = enrollment
        ca, key, cert = enrollment.channel_material()
        self.certificate_pem = cert  # the one this link presents until `run` restarts
        # the hub it talks to, as long as it lives: its CA's fingerprint (`ledger.answered_by`)
        self.hub_id = ca_identity(ca)
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self.channel = grpc.secure_channel(
            address,
            creds,
            options=[
                ("grpc.ssl_target_name_override", HUB_TLS_NAME),
                ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", WINDOW_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_MIN_MS),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
                ("grpc.min_reconnect_backoff_ms", CONNECT_WINDOW_MS),  # the attempt's window
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
        # `close` began: the calls it cancels say nothing of the hub (`failed`)
        self.closing = False
        self._listeners: list[Callable[[], None]] = []
        self._connectivity: grpc.ChannelConnectivity | None = None
        # Connect now: every user of a link talks to the hub at once. gRPC's watch of the
        # channel, once started not to connect, only turns to connecting at its next poll
        # (200 ms on): `probe` waited that long before its handshake began, most of the
        # 300 ms a one-shot CLI call gives it, and a busy till priced OFFLINE.
        self.channel.subscribe(self._watch, try_to_connect=True)

    def on_recovery(self, listener: Callable[[], None]) -> None:
        """Call `listener` (quickly, from any thread) whenever the hub answers again."""
        self._listeners.append(listener)

    def _recovered(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must never break a call or the channel
                log.warning("recovery listener failed", exc_info=True)

    def _watch(self, state: grpc.ChannelConnectivity) -> None:
        """The channel's own connectivity (gRPC's polling thread)."""
        before, self._connectivity = self._connectivity, state
        if (
            state == grpc.ChannelConnectivity.READY
            and before != grpc.ChannelConnectivity.READY
            and not self.online
        ):
            self._recovered()

    def probe(self, timeout_s: float) -> bool:
        """Whether the hub answers now: the channel connected to it (TLS with this till's
        certificate) within `timeout_s`. For a process with no sync loop to say so."""
        if not self.connected(timeout_s):
            return False
        self.ok()
        return True

    def connected(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for the channel to connect (its handshake done); what
        the till says of the hub is left as it is (`probe` records the contact)."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()  # stop watching the channel before anyone closes it
            return False
        return True

    def ok(self) -> None:
        with self._lock:
            flipped = not self.online
            self.online = True
            self.last_contact = datetime.now(UTC)
            self.last_failure = None
        if flipped:
            self.changed.set()
            self._recovered()

    def describe(self, exc: grpc.RpcError) -> str:
        """`describe`, except that a call that could not connect while this till's own
        certificate is expired (or not valid yet by its clock) says so and how to renew it:
        the hub drops such a till in the handshake, which the till sees only as a closed
        socket ("the hub is unreachable")."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,  # the hub's per-call check of the dates
        ):
            problem = self.enrollment.certificate_problem()
            if problem:
                return problem
        if code == grpc.StatusCode.PERMISSION_DENIED:
            # not enrolled, revoked, a superseded certificate: the way back is a new bundle
            return f"{describe(exc)} ({self.enrollment.renew_hint()})"
        return describe(exc)

    def failed(self, exc: grpc.RpcError) -> str:
        message = self.describe(exc)
        if self.closing:  # a call the link's close cancelled: the hub is as it was
            return message
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
        """Close the channel: every call on its way ends at once, CANCELLED (`tillpoint
        run`'s stop closes it before it waits for the sync threads, review 42, left42)."""
        self.closing = True
        self._listeners.clear()
        self.channel.unsubscribe(self._watch)
        # grpcio's polling thread notices the unsubscribe only when its current 0.2 s watch
        # ends; closed under it, the channel made it die with "Cannot monitor channel
        # state: Channel closed!" and a traceback in the log. Its `polling` flag (private:
        # read if there) turns False as it leaves.
        state = getattr(self.channel, "_connectivity_state", None)
        deadline = time.monotonic() + 0.5
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.channel.close()
