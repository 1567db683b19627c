"""The local `PosAgent` gRPC server (localhost) and `tillpoint run`.

Each RPC turns its request into the proto3 JSON dict and calls the same `Agent` method as
the CLI, so the rules for bad input are the same: a refused input is `INVALID_ARGUMENT`
(or `FAILED_PRECONDITION` / `NOT_FOUND` for valid input the rules refuse) with a
readable message, and nothing is stored.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .config import Settings
from .errors import TillpointError
from .service import Agent

log = logging.getLogger("tillpoint.server")

SERVICE_NAME = "tillpoint.v1.PosAgent"
M = TypeVar("M", bound=Message)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


def to_message(data: dict[str, Any], message: M, *, ignore_unknown: bool = False) -> M:
    json_format.ParseDict(data, message, ignore_unknown_fields=ignore_unknown)
    return message


class PosAgentServicer(pb_grpc.PosAgentServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], M]) -> M:
        try:
            return fn()
        except TillpointError as exc:
            context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
        except Exception as exc:  # one readable line to the POS, details to the log
            log.exception("PosAgent call failed")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    def Identify(
        self, request: pb.IdentifyRequest, context: grpc.ServicerContext
    ) -> pb.CardOutcome:
        return self._call(
            context, lambda: to_message(self.agent.identify(request.text), pb.CardOutcome())
        )

    def Quote(self, request: pb.Receipt, context: grpc.ServicerContext) -> pb.CheckoutResult:
        return self._call(
            context,
            lambda: to_message(self.agent.quote(to_dict(request)), pb.CheckoutResult()),
        )

    def Checkout(self, request: pb.Receipt, context: grpc.ServicerContext) -> pb.CheckoutResult:
        return self._call(
            context,
            lambda: to_message(self.agent.checkout(to_dict(request)), pb.CheckoutResult()),
        )

    def Refund(self, request: pb.Refund, context: grpc.ServicerContext) -> pb.RefundResult:
        return self._call(
            context,
            lambda: to_message(self.agent.refund(to_dict(request)), pb.RefundResult()),
        )

    def Balance(self, request: pb.BalanceRequest, context: grpc.ServicerContext) -> pb.Balance:
        def run() -> pb.Balance:
            from .cli import parse_time

            at = parse_time(request.at) if request.HasField("at") else None
            return to_message(self.agent.balance(request.card, at), pb.Balance())

        return self._call(context, run)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.Status:
        return self._call(
            context,
            lambda: to_message(self.agent.status(), pb.Status(), ignore_unknown=True),
        )


def build_server(
    agent: Agent, address: str, max_workers: int = 8
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-ready server (not yet started) bound to `address`; returns the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    pb_grpc.add_PosAgentServicer_to_server(PosAgentServicer(agent), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise TillpointError(f"cannot listen on {address}")
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


# Background services (hub sync, print worker, display) register here; each is started
# with the agent and the settings and returns a stop function.
BackgroundStarter = Callable[[Agent, Settings], Callable[[], None]]
background_starters: list[BackgroundStarter] = []


def serve_forever(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    agent = Agent(settings.data_dir, settings.device_id)
    server, _port, health_servicer = build_server(
        agent, settings.server.listen, settings.server.max_workers
    )
    stops = [start(agent, settings) for start in background_starters]
    server.start()
    log.info("PosAgent serving on %s (device %s)", settings.server.listen, settings.device_id)
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=5).wait()
    for stop_background in reversed(stops):
        stop_background()
    agent.close()
    log.info("stopped")
    return 0
