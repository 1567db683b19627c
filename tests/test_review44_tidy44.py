"""Review 44 (tidy44): the leftovers of sessions 42-43 in the hub and sync code.

What is checked, and why:

1.-2. A `HubServer` object started again after its stop (`LoopbackHub.stop` then
   `.start`, which many tests do to take the hub away and back) serves as a new one
   would, on SQLite and on PostgreSQL: its watcher sees versions another process
   publishes, its snapshot builder builds their full snapshots, its health answers
   SERVING, and a new till's first pull takes the newest version. Before review 44 the
   stop's flags were never reset (the builder's `_stopping`, the watcher's event, the
   notifier's and the health's), and a PostgreSQL store closed by the stop was used again
   (its pool closed): a restarted hub answered, but built and watched nothing.
3. A thread that outlives several closes of a SQLite hub store holds one connection of
   it, not one a close.
4. What a stop's cancel leaves in a till's log and state (nothing), and what a real
   failure leaves (one line, one error), pinned before the `link.closing` checks were
   looked at.
5. `verify_file`'s first-line read: a JSON Lines header longer than the bound is refused
   in the rows' words; a plain JSON document on one long line is read whole.

Real parts throughout: gRPC servers on 127.0.0.1, SQLite files, the suite's PostgreSQL
cluster (skipped with the reason when PostgreSQL is not installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for

# ---------------------------------------------------------------- 1.-2. a restart


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The hub's store: "" (hub.db in its directory) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture()
def hub(tmp_path: Path, store_url: str) -> Iterator[LoopbackHub]:
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.05, publish_every_s=0, full_wait_s=5)
    the_hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), store=store_url)
    try:
        yield the_hub
    finally:
        the_hub.stop()


def _health(channel: Any) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service="tillpoint.v1.Hub"), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@pytest.mark.parametrize("restarts", [1, 2])
def test_a_hub_server_started_again_after_its_stop_serves_as_a_new_one(
    hub: LoopbackHub, tmp_path: Path, restarts: int
) -> None:
    server = hub.server
    wait_for(lambda: server.builder.full_ready(1) is not None, timeout=30)
    for _ in range(restarts):
        hub.stop()
        hub.start()
    assert hub.server is server  # the same object (LoopbackHub.start after its stop)
    # a version another process publishes (`tillpoint hub publish`): the hub's watcher
    # sees it and its builder builds its full snapshot for every till
    other = hub.dir.open_store()
    try:
        version = other.publish(datetime.now(UTC), 7 * 86400.0).version
    finally:
        other.close()
    assert version == 2
    wait_for(lambda: getattr(server.notifier.latest, "version", 0) == 2, timeout=30)
    wait_for(lambda: server.builder.full_ready(2) is not None, timeout=30)
    till = hub.till("till-1", tmp_path / "till-1")
    try:
        assert _health(till.link.channel) == "SERVING"
        wait_for(lambda: till.agent.status().cache_version == 2, timeout=30)
    finally:
        till.stop()
