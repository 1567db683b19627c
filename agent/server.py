"""The local `PosAgent` gRPC server (localhost); `tillpoint run` is built in agent/app.py.

Each RPC turns its request into the agent's model (`wire.receipt_of`, ...) and calls the
same `Agent` method as the CLI, and maps the typed result to its message in `agent/wire.py`,
so the rules for bad input are the same: a refused input is `INVALID_ARGUMENT`
(or `FAILED_PRECONDITION` / `NOT_FOUND` for valid input the rules refuse) with a
readable message, and nothing is stored.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .config import (
    bind_problem,
    bind_refusal,
    half_bound,
    others_listening,
    pinned_listen,
    release_unserved,
    token_problem,
)
from .errors import InputError, TillpointError, edge_of
from .grpc_auth import RequireToken
from .grpc_decode import RefuseUndecodable
from .grpc_health import ReadinessHealth
from .limits import REQUEST_MAX_BYTES
from .models import check_text
from .service import Agent
from .wire import checkout_message, message_of, receipt_of, refund_of, status_message

log = logging.getLogger("tillpoint.server")

SERVICE_NAME = "tillpoint.v1.PosAgent"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_THREADS = 2  # reflection streams served at once; more wait their turn
MIN_PING_INTERVAL_MS = 10_000  # the shortest keepalive interval a POS may ping at
# The agent pings each client's connection every 30 s when it has read nothing from it,
# and a ping not answered in a minute ends it (as the hub does its tills'; a minute, not
# less, since a ping's answer comes behind a client's upload): a client gone without a
# word (a reflection tool on a laptop that left the store's network) gives back the
# thread its stream held, and a connection beyond loopback is not kept for ever. Given as
# `grpc.keepalive_timeout_ms` and as gRPC's own ping timeout, which grpcio times a ping
# by (session 58).
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 60_000
# What gRPC reads of one request before refusing it itself (RESOURCE_EXHAUSTED): past the
# 4 MiB a request may be, so the agent refuses those as bad input (INVALID_ARGUMENT).
TRANSPORT_MAX_BYTES = 16 << 20
M = TypeVar("M", bound=Message)


class PosAgentServicer(pb_grpc.PosAgentServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], M]) -> M:
        try:
            return fn()
        except TillpointError as exc:
            edge = edge_of(exc)
            self._count_error(edge.code)
            context.abort(getattr(grpc.StatusCode, edge.code), edge.message)
        except Exception as exc:  # one readable line to the POS, details to the log
            log.exception("PosAgent call failed")
            self._count_error("INTERNAL")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    def _count_error(self, code: str) -> None:
        if self.agent.metrics is not None:
            self.agent.metrics.count_error(code)

    def Identify(
        self, request: pb.IdentifyRequest, context: grpc.ServicerContext
    ) -> pb.CardOutcome:
        return self._call(context, lambda: message_of(self.agent.identify(request.text)))

    def Quote(self, request: pb.Receipt, context: grpc.ServicerContext) -> pb.CheckoutResult:
        return self._call(
            context,
            lambda: checkout_message(self.agent.quote(receipt_of(request))),
        )

    def Checkout(self, request: pb.Receipt, context: grpc.ServicerContext) -> pb.CheckoutResult:
        started = time.perf_counter()
        try:
            return self._call(
                context,
                lambda: checkout_message(self.agent.checkout(receipt_of(request))),
            )
        finally:
            if self.agent.metrics is not None:
                self.agent.metrics.checkout_seconds.observe(time.perf_counter() - started)

    def Hold(self, request: pb.Receipt, context: grpc.ServicerContext) -> pb.CheckoutResult:
        return self._call(
            context,
            lambda: checkout_message(self.agent.hold(receipt_of(request))),
        )

    def Confirm(
        self, request: pb.ConfirmRequest, context: grpc.ServicerContext
    ) -> pb.CheckoutResult:
        fiscal = request.fiscal_document if request.HasField("fiscal_document") else None
        return self._call(
            context,
            lambda: checkout_message(self.agent.confirm(request.receipt_id, fiscal)),
        )

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.CheckoutResult:
        return self._call(
            context,
            lambda: checkout_message(self.agent.cancel(request.receipt_id)),
        )

    def Refund(self, request: pb.Refund, context: grpc.ServicerContext) -> pb.RefundResult:
        return self._call(
            context,
            lambda: message_of(self.agent.refund(refund_of(request))),
        )

    def Balance(self, request: pb.BalanceRequest, context: grpc.ServicerContext) -> pb.Balance:
        def run() -> pb.Balance:
            from .cli import parse_time

            at = None
            if request.HasField("at"):  # a too long one said as HTTP says it (§10)
                at = parse_time(check_text("balance: at", request.at), "balance: at")
            return message_of(self.agent.balance(request.card, at))

        return self._call(context, run)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.Status:
        return self._call(
            context,
            lambda: status_message(self.agent.status()),
        )


def _health(agent: Agent) -> ReadinessHealth:
    """The standard health service, NOT_SERVING while the till has no snapshot (every
    quote, hold and checkout is refused then) or cannot read it (a damaged cache), as
    `GET /healthz` answers 503: a health check must not send sales to a till that refuses
    them. `Check` reads it when asked, `Watch` streams each change (`grpc_health`)."""

    def ready(wait_s: float | None) -> bool:
        return agent.status().cache_version > 0

    return ReadinessHealth((SERVICE_NAME,), ready, thread_name="health-watch")


def _in_background(
    name: str, run: Callable[[threading.Event], None], also: threading.Event | None = None
) -> Callable[[], None]:
    """`run(stop)` in a daemon thread; returns the stop (sets the event, and `also`, the
    event `run` waits on if not `stop`; waits 5 s)."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), name=name, daemon=True)
    thread.start()

    def stop_it() -> None:
        stop.set()
        if also is not None:
            also.set()
        thread.join(timeout=5)

    return stop_it


def build_server(
    agent: Agent,
    address: str,
    max_workers: int = 8,
    *,
    token: str = "",
    workers: futures.ThreadPoolExecutor | None = None,
) -> tuple[grpc.Server, int, ReadinessHealth]:
    """A started-ready server (not yet started) bound to `address`; returns the bound port.
    With a `token`, every call (PosAgent, health, reflection) must carry the metadata
    `authorization: Bearer <token>`, as every HTTP request must. `workers`: the pool the
    calls run in (default: a new one of `max_workers`); `run` passes its own, to wait for
    the calls still running when the server's grace is over before it closes the agent."""
    problem = token_problem("server", address, token)  # config asks it too; a caller may not
    if problem:
        raise InputError(problem)
    # bytes that are no request, or a field the contract lacks: INVALID_ARGUMENT
    # and a request over 4 MiB: INVALID_ARGUMENT, as the CLI's exit 2 and HTTP's 400
    interceptors: list[Any] = [
        RefuseUndecodable(exact=f"/{SERVICE_NAME}/", limit=REQUEST_MAX_BYTES)
    ]
    if token:
        interceptors.insert(0, RequireToken(token))
    # gRPC reads a request up to TRANSPORT_MAX_BYTES, so that one over 4 MiB reaches
    # RefuseUndecodable and is refused as bad input (INVALID_ARGUMENT, the contract §10)
    # like any other; only a larger one is refused by gRPC itself (RESOURCE_EXHAUSTED).
    # The text fields inside are limited by the models.
    server = grpc.server(
        workers or futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
            # a POS that keeps its channel alive with pings while the till is quiet (Java's
            # keepAliveWithoutCalls, Go's PermitWithoutStream): gRPC's server default (5
            # minutes between pings, two strikes) dropped it with GOAWAY "too_many_pings"
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.max_pings_without_data", 0),
            # one agent a port: gRPC's default SO_REUSEPORT let a second `tillpoint run`
            # bind the same port and take half the POS's calls to its own data directory
            ("grpc.so_reuseport", 0),
        ],
    )
    # asked first: grpcio's own failed bind logs a line of its own on stderr before ours
    refusal = bind_refusal(address)
    port = 0
    if refusal is None:
        try:
            # port 0 on a name of several addresses: one free port on all of them
            port = server.add_insecure_port(pinned_listen(address))
        except RuntimeError:  # grpcio's "Failed to bind": in use, or not an address here
            port = 0
    if port != 0 and (taken := others_listening(address, port, ours=True)):
        # grpcio listened on the host's other addresses alone: never half-bound (review 35)
        release_unserved(server)
        port, refusal = 0, half_bound(taken)
    if port == 0:
        raise TillpointError(
            f"cannot listen on {address} for gRPC: {refusal or bind_problem(address)}"
            " (set [server] listen)"
        )
    # the services once the port is the agent's alone (`release_unserved` serves nothing)
    pb_grpc.add_PosAgentServicer_to_server(PosAgentServicer(agent), server)
    health_servicer = _health(agent)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set_ready(health_servicer.ready())
    # Server reflection: grpcurl and Postman call PosAgent without the .proto. grpcio's
    # Python package serves v1alpha only; v1 (what newer clients ask first) has the same
    # messages field for field, so the same servicer answers it under v1's name.
    reflecting = _Reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME))
    # A reflection stream holds a thread while it is open (a GUI tool left connected):
    # its own few threads, so that open streams queue there and never take the workers
    # the POS's calls need (8 of them stopped every PosAgent call).
    pool = futures.ThreadPoolExecutor(REFLECTION_THREADS, thread_name_prefix="reflection")

    def info(requests: Any, context: grpc.ServicerContext) -> Any:
        return reflecting.ServerReflectionInfo(requests, context)

    info.experimental_thread_pool = pool  # type: ignore[attr-defined]
    handler = grpc.stream_stream_rpc_method_handler(
        info,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (reflection.SERVICE_NAME, REFLECTION_V1)
        )
    )
    return server, port, health_servicer


class _Reflection(reflection.ReflectionServicer):
    """grpcio's reflection, which also finds the file of a method: `grpcurl describe
    tillpoint.v1.PosAgent.Hold` asks for the file containing `tillpoint.v1.PosAgent.Hold`,
    and the Python protobuf pool looks up messages, services, enums and fields, not
    methods ("not found" where a server in Go or Java answers)."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        service, _, method = fully_qualified_name.rpartition(".")
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            try:
                if method in self._pool.FindServiceByName(service).methods_by_name:
                    fully_qualified_name = service
            except KeyError:
                pass
        return super()._file_containing_symbol(request, fully_qualified_name)


def start_hold_sweeper(
    agent: Agent,
    every_s: float = 15.0,
    on_recovery: Callable[[Callable[[], None]], None] | None = None,
    jitter_s: float = 0.5,
    rng: random.Random | None = None,
) -> Callable[[], None]:
    """Expire held receipts on time even when no POS calls (the contract §11); returns the stop.

    `on_recovery` (the hub link's, `HubLink.on_recovery`): the releases the hub did not get
    while it was away are sent as soon as it answers again, not at the next round (up to
    `every_s` later, while the hub kept the customer's points held for every till), after
    a jitter of up to `jitter_s` (the sync's `backoff_base_s`, as its own retries wait
    then): a hub back from an outage is not met by every till's releases at one instant
    (review 31; the timer's own rounds are spread by when each till started)."""
    wake = threading.Event()
    draw = rng or random.Random()
    if on_recovery is not None:
        on_recovery(wake.set)  # quick, from any thread: the round runs here
    # an OFFLINE hold's late grant at the hub, to be shrunk to what it uses: the next round
    agent.on_hub_call_owed(wake.set)

    def run(stop: threading.Event) -> None:
        while True:  # at once too: holds that expired while the agent was down
            try:
                # each looks at `stop` between its calls to the hub: a stop waits for the
                # call on its way, not for all those owed to a slow hub (review 35)
                agent.keep_clock_line()  # a step another process followed (review 38)
                agent.sweep_holds(stop)
                if not stop.is_set():
                    agent.retry_hub_releases(stop)  # those the hub did not get while away
            except Exception:  # a busy or full disk: the next round tries again
                log.warning("sweeping expired holds failed", exc_info=True)
            woken = wake.wait(every_s)
            wake.clear()
            if woken and jitter_s > 0 and not stop.is_set():
                stop.wait(draw.uniform(0, jitter_s))  # the hub answers again: spread out
            if stop.is_set():
                return

    return _in_background("hold-sweeper", run, also=wake)


def register_gauges(registry: Any, agent: Agent) -> None:
    from datetime import UTC, datetime

    # One scrape reads every gauge within milliseconds: read the agent's status once
    # for all of them (a second later it is read afresh).
    last: dict[str, Any] = {"at": float("-inf"), "status": {}}

    def status() -> dict[str, Any]:
        now = time.monotonic()
        if now - last["at"] > 1.0:
            last["status"], last["at"] = agent.status().to_json(), now
        found: dict[str, Any] = last["status"]
        return found

    def snapshot() -> dict[str, float]:
        return {"": float(status()["cacheVersion"])}

    def age() -> dict[str, float]:
        issued = status()["cacheIssuedAt"]
        if not issued:
            return {}
        return {"": (datetime.now(UTC) - datetime.fromisoformat(issued)).total_seconds()}

    registry.gauge("tillpoint_snapshot_version", "Snapshot version in the cache.", snapshot)
    registry.gauge("tillpoint_snapshot_age_seconds", "Seconds since the snapshot was issued.", age)
    registry.gauge(
        "tillpoint_outbox_depth",
        "Transactions not yet acknowledged by the hub.",
        lambda: {"": float(status()["outboxDepth"])},
    )

    def state(key: str) -> Callable[[], dict[str, float]]:
        def collect() -> dict[str, float]:
            value = status().get(key)
            return {f'state="{value}"': 1.0 if value == "OK" else 0.0} if value else {}

        return collect

    registry.gauge(
        "tillpoint_printer_ok", "1 when the receipt printer is OK.", state("printerState")
    )
    registry.gauge(
        "tillpoint_display_ok", "1 when the customer display is OK.", state("displayState")
    )
    registry.gauge(
        "tillpoint_hub_online",
        "1 while the hub answers (the till prices ONLINE).",
        lambda: {"": 1.0 if status()["mode"] == "ONLINE" else 0.0},
    )
    registry.gauge(
        "tillpoint_sync_error",
        "1 while the sync with the hub has an outstanding error (see status lastError).",
        lambda: {"": 1.0 if status().get("lastError") else 0.0},
    )
    registry.gauge(
        "tillpoint_storage_error",
        "1 while the ledger cannot be written: sales are refused (see status storageError).",
        lambda: {"": 1.0 if status().get("storageError") else 0.0},
    )
    registry.gauge(
        "tillpoint_sync_set_aside",
        "Transactions the hub set aside (conflict or malformed): not in its ledger.",
        lambda: {"": float(status().get("setAside", 0))},
    )
    registry.gauge(
        "tillpoint_sync_renumbered",
        "Sales and refunds numbered again because the hub held their seq with another"
        " transaction of this device (two tills under one id?); sent again, not an error.",
        lambda: {"": float(status().get("renumberedTransactions", 0))},
    )
    registry.gauge(
        "tillpoint_hub_calls_owed",
        "Releases and shrinks of hub holds not yet taken by the hub (retried every 15 s):"
        " the customer's points stay held there for every till meanwhile.",
        lambda: {f'call="{k}"': float(n) for k, n in agent.hub_calls_owed().items()},
    )
    registry.gauge(
        "tillpoint_print_queue_depth",
        "Coupon print jobs not yet printed.",
        lambda: {"": float(status()["printQueueDepth"])},
    )
