"""The standard gRPC health service (grpc.health.v1) of the till's and the hub's servers.

`ReadinessHealth` answers for its service names (`""` and the server's own) from one
`ready(wait_s)` function: `Check` reads it when asked; `Watch` streams SERVING or
NOT_SERVING as it changes, read every `every_s` while at least one Watch stream is open
(a thread of its own then, none while nobody watches). grpcio's `HealthServicer` alone
streams only what `set` was last told: the hub's `Watch` said SERVING while `Check` said
NOT_SERVING (its database stopped), and a load balancer or `grpc_health_probe -watch`
kept sending calls to a server that could answer none. Other names are grpcio's (NOT_FOUND
to a Check, SERVICE_UNKNOWN to a Watch); from `enter_graceful_shutdown` on, every name is
NOT_SERVING for good.

No lock of the servicer is held while an answer is sent (review 41): grpcio's own
`HealthServicer` sends a Watch's answers under its lock and waits there until the
server's completion-queue thread has taken the send, while that thread, closing another
Watch stream, waits for the same lock (grpc/grpc#43403): a Watch opened while another
closed froze the whole server (no call answered, `stop` never ended). Each Watch stream's
answers go out one at a time under a lock of its own, which that thread never takes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

log = logging.getLogger("tillpoint.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCH_EVERY_S = 1.0  # how often an open Watch re-reads the readiness
WATCH_READ_S = 2.0  # the longest one reading may wait (a store that does not answer)

# `ready(wait_s)`: True when the server can serve; `wait_s` is how long the reading may
# take (None: as long as it likes). It must not raise: a failure to tell is "not ready".
Ready = Callable[[float | None], bool]


class ReadinessHealth(health.HealthServicer):
    def __init__(
        self,
        names: Iterable[str],
        ready: Ready,
        *,
        every_s: float = WATCH_EVERY_S,
        read_s: float = WATCH_READ_S,
        thread_name: str = "health-watch",
    ) -> None:
        super().__init__()
        self._names = frozenset({"", *names})
        self._ready = ready
        self._every_s = every_s
        self._read_s = read_s
        self._thread_name = thread_name
        self._guard = threading.Lock()
        self._watchers = 0
        self._follower: threading.Thread | None = None
        self._stopping = False
        self._wake = threading.Event()
        self._setting = threading.Lock()  # one `set_ready` at a time (never taken by gRPC)
        self._shut = False  # NOT_SERVING for good (under grpcio's `_lock`, as its statuses)

    # ------------------------------------------------------------ readiness

    def ready(self, wait_s: float | None = None) -> bool:
        try:
            return bool(self._ready(wait_s))
        except Exception:  # a reading that failed: not serving (logged, never raised)
            log.warning("health: readiness unavailable", exc_info=True)
            return False

    def set_ready(self, ready: bool) -> None:
        """Record the readiness: a Watch stream hears it if it changed (ignored once
        shutdown has started)."""
        status = SERVING if ready else NOT_SERVING
        with self._setting:  # every name gets one reading's status, not two mixed
            for name in sorted(self._names):
                with self._lock:
                    changed = self._server_status.get(name) != status
                if changed:
                    self.set(name, status)

    def set(self, service: str, status: Any) -> None:
        """grpcio's `set`, its Watch streams told after its lock is let go."""
        with self._lock:
            if self._shut:
                return
            self._server_status[service] = status
            watchers = list(self._send_response_callbacks.get(service, ()))
        for watcher in watchers:
            _tell(watcher, status)

    def enter_graceful_shutdown(self) -> None:
        with self._guard:
            self._stopping = True
        self._wake.set()
        with self._lock:
            if self._shut:
                return
            for service in self._server_status:
                self._server_status[service] = NOT_SERVING
            self._shut = True
            watchers = [w for ws in self._send_response_callbacks.values() for w in ws]
        for watcher in watchers:
            _tell(watcher, NOT_SERVING)

    def stop_following(self, timeout_s: float = WATCH_READ_S + 1.0) -> bool:
        """`enter_graceful_shutdown`, then wait (up to `timeout_s`) for the follower of the
        open Watch streams to end: its reading (`Agent.status` on a till) is over when
        this returns True, so what it reads may be closed next (review 42: a test that
        stopped its server and closed its agent had the follower read the closed agent)."""
        self.enter_graceful_shutdown()
        with self._guard:
            follower = self._follower
        if follower is None:
            return True
        follower.join(timeout_s)
        return not follower.is_alive()

    def _status_of(self, service: str) -> Any:
        with self._lock:
            return self._server_status.get(service, SERVICE_UNKNOWN)

    # ------------------------------------------------------------ the service

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._names or self._stopping:
            return super().Check(request, context)
        ready = self.ready(context.time_remaining())
        self.set_ready(ready)  # a Watch stream hears it at once
        return health_pb2.HealthCheckResponse(status=SERVING if ready else NOT_SERVING)

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None] | None = None,
    ) -> Any:
        if request.service in self._names and not self._stopping:
            # the first answer is read now, not what the last reading said (bounded: a
            # non-blocking Watch still runs this part in a worker thread)
            self.set_ready(self.ready(_least(context.time_remaining(), self._read_s)))
            with self._guard:
                self._watchers += 1
                if self._follower is None:
                    self._follower = threading.Thread(
                        target=self._follow, name=self._thread_name, daemon=True
                    )
                    self._follower.start()
            if not context.add_callback(self._unwatched):  # the stream has ended already
                self._unwatched()
        if send_response_callback is None:  # a blocking Watch: its answers wait for nobody
            return super().Watch(request, context, None)
        watcher = _Watcher(partial(self._status_of, request.service), send_response_callback)
        with self._lock:
            self._send_response_callbacks.setdefault(request.service, set()).add(watcher)
        if not context.add_callback(partial(self._closed, request.service, watcher)):
            self._closed(request.service, watcher)
        watcher.tell()  # the first answer: the status now
        return None

    def _closed(self, service: str, watcher: _Watcher) -> None:
        """A Watch stream ended (gRPC's completion-queue thread: it must never wait)."""
        with self._lock:  # held by nobody for longer than a look at the table
            self._send_response_callbacks.get(service, set()).discard(watcher)
        watcher.close()

    def _unwatched(self) -> None:
        with self._guard:
            self._watchers -= 1
        self._wake.set()

    def _follow(self) -> None:
        """While a Watch stream of ours is open: read the readiness every `every_s`, and
        stream a change. Ends when the last stream closes (a new one starts it again)."""
        while True:
            self._wake.wait(self._every_s)
            self._wake.clear()
            with self._guard:
                if self._watchers <= 0 or self._stopping:
                    self._follower = None
                    return
            self.set_ready(self.ready(self._read_s))


class _Watcher:
    """One open Watch stream: told the service's status whenever it may have changed,
    it sends it if it differs from what it last sent, one answer at a time (its own lock:
    a send waits for gRPC's completion-queue thread, which never takes this lock)."""

    def __init__(self, status: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        self._status = status
        self._send = send
        self._sending = threading.Lock()
        self._sent: Any = None
        self._open = True

    def tell(self) -> None:
        with self._sending:
            if not self._open:
                return
            status = self._status()  # read here: the last of two racing changes is sent last
            if status != self._sent:
                self._sent = status
                self._send(health_pb2.HealthCheckResponse(status=status))

    def close(self) -> None:
        self._open = False  # not under `_sending`: a send in progress sees its call ended
        self._send(None)  # as grpcio's: the end of a stream that was not cancelled


def _tell(watcher: Any, status: Any) -> None:
    """Tell one Watch stream: ours (`_Watcher`) reads the status itself; a blocking Watch
    (grpcio's own, registered by `super().Watch`: none of the agent's doors make one) is
    given the answer, as grpcio's `set` does."""
    if isinstance(watcher, _Watcher):
        watcher.tell()
    else:
        watcher(health_pb2.HealthCheckResponse(status=status))


def _least(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
