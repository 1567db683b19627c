"""When a hub started as a process is ready: its own gRPC health service says SERVING.

A hub's port accepts TCP connections from its bind, before the hub serves anything (its
store opened, its snapshot builder started: `HubServer.start`), and another program's
listener on the port accepts them too (review 43, "a port that accepts a connection is
not an agent that answers"). So a harness that starts `tillpoint hub serve` (or a hub
child of a benchmark) waits for what the hub's checkers use: `grpc.health.v1` `Check`
answered SERVING, asked as an enrolled device over the hub's mTLS port (review 44,
flake44). SERVING also says the hub's store answers (`hub_health`).
"""

from __future__ import annotations

import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.sync.client import HubLink
from tillpoint.sync.pki import Enrollment

CHECK_TIMEOUT_S = 5.0  # one Check's deadline (a loaded machine's hub answers well within)


def hub_health(link: HubLink, timeout: float = CHECK_TIMEOUT_S) -> str:
    """The hub's health as `link`'s device asks it: "SERVING", "NOT_SERVING", or the
    call's status's name ("UNAVAILABLE": nothing answered; "DEADLINE_EXCEEDED")."""
    stub = health_pb2_grpc.HealthStub(link.channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_hub_serving(
    address: str,
    enrollment: Enrollment,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Whether the hub at `address` said SERVING within `timeout` seconds; False at once
    when `proc`, the hub's process, has exited (its port taken, say: then whatever
    answers there is not it)."""
    link = HubLink(address, enrollment)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                return False
            if hub_health(link, min(CHECK_TIMEOUT_S, max(0.1, deadline - time.monotonic()))) == (
                "SERVING"
            ):
                return proc is None or proc.poll() is None
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    finally:
        link.close()
