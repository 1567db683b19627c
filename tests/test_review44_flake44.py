"""Review 44 (flake44): the suite's and the benchmarks' readiness shortcuts and timing bets.

Six CI runs in a row failed on one rare failure each, most of them a harness that took a
port, a process or a clock for granted on a loaded two-core machine. Checked here, each
with the fault made real (a port pre-taken by another program's listener, a process
paused with SIGSTOP):

- the PostgreSQL test cluster (`bench/pgcluster.py`) retries on a new port when its port
  was taken between the pick and `pg_ctl start` (before: the cluster, and with it every
  PostgreSQL test of the run, failed);
- a hub harness counts a hub ready when the hub's own gRPC health service says SERVING
  to an enrolled device (`bench/hubready.py`), not when its port accepts a TCP
  connection: a port accepts from its bind, before the hub serves, and another
  program's listener on the port accepts too.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import faults, pgcluster, ports
from bench.hubready import wait_hub_serving
from bench.ports import free_port
from tests import test_review32_hub32 as hub32
from tests.test_review44_lead44 import foreign_agent  # noqa: F401 (a fixture)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port below the ephemeral range that another program listens on (127.0.0.1)."""
    port = free_port()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen(8)
        yield port


@pytest.mark.skipif(pgcluster.unavailable_reason() is not None, reason="no PostgreSQL here")
def test_the_pg_cluster_retries_on_a_new_port_when_its_port_is_taken_before_start(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([taken_port])  # the first pick is the taken port, as if taken after it
    real = pgcluster._free_port
    monkeypatch.setattr(pgcluster, "_free_port", lambda: next(picks, None) or real())
    cluster = pgcluster.Cluster()
    try:
        assert cluster.port != taken_port
        import psycopg

        with psycopg.connect(cluster.url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop()


@pytest.mark.skipif(pgcluster.unavailable_reason() is not None, reason="no PostgreSQL here")
def test_the_pg_cluster_says_why_when_it_cannot_start_for_another_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start failure that is no port clash is not retried: it is said, once."""
    calls: list[int] = []
    real = pgcluster._free_port

    def pick() -> int:
        calls.append(1)
        return real()

    monkeypatch.setattr(pgcluster, "_free_port", pick)
    with pytest.raises(RuntimeError, match="pg_ctl failed"):
        pgcluster.Cluster(max_connections=-5)  # the server refuses this setting
    assert len(calls) == 1


# ---------------------------------------------------------------- a hub's readiness


def test_a_hub_harness_whose_port_another_program_holds_says_so(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hub32's `HubProcess` (as store33's and the benchmarks' hub harnesses) waited for its
    port to accept, and went on when it did not: another program's listener there made
    the tests' tills talk to it. Now its start waits for the hub's SERVING and says the
    hub's own words when the hub exits."""
    monkeypatch.setattr(hub32, "free_port", lambda: taken_port)
    hub = hub32.HubProcess(tmp_path, None, ["till-a"])
    try:
        assert hub.listening()  # the old readiness: the other program's port accepts
        with pytest.raises(RuntimeError, match=r"hub did not start.*cannot listen"):
            hub.serve()
    finally:
        hub.stop()


def test_a_hub_whose_port_accepts_is_not_ready_until_it_says_serving(tmp_path: Path) -> None:
    """A `tillpoint hub serve` paused (SIGSTOP) once its port accepts: the port still
    accepts (the kernel queues), the hub answers nothing; `wait_hub_serving` waits, and
    says SERVING once the hub runs again."""
    hub = hub32.HubProcess(tmp_path, None, ["till-a"])
    try:
        hub.serve()
        assert hub.proc is not None
        enrollment = hub.enrollments["till-a"]
        os.kill(hub.proc.pid, signal.SIGSTOP)
        try:
            assert hub.listening()  # what the harnesses counted as ready
            assert not wait_hub_serving(hub.address, enrollment, 2, hub.proc)
        finally:
            os.kill(hub.proc.pid, signal.SIGCONT)
        assert wait_hub_serving(hub.address, enrollment, 60, hub.proc)
    finally:
        hub.stop()


def test_a_hub_process_that_exited_is_not_ready_whatever_answers_on_its_port(
    tmp_path: Path,
) -> None:
    """A hub that exited (its port taken) is not counted ready even when a hub answers
    there: that one is another harness's."""
    hub = hub32.HubProcess(tmp_path, None, ["till-a"])
    try:
        hub.serve()
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait(timeout=30)
        assert wait_hub_serving(hub.address, hub.enrollments["till-a"], 60)
        assert not wait_hub_serving(hub.address, hub.enrollments["till-a"], 60, gone)
    finally:
        hub.stop()


# ---------------------------------------------------------------- lead44's commit, further


def test_the_malformed_scenario_says_another_program_s_agent_answered_on_its_port(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    foreign_agent: tuple[int, subprocess.Popen[bytes]],  # noqa: F811 (imported above)
) -> None:
    """lead44 made agent-kill check that the agent on its port is its own; malformed, the
    other scenario that starts a `tillpoint run` on a port and talks to it, did not: with
    another program's agent there it sent its bad inputs to that one (and its verdict on
    "the cache or the ledger changed" read this till's files, untouched). Now it says so."""
    port, _ = foreign_agent
    monkeypatch.setattr(faults, "free_port", lambda: port)
    work = tmp_path / "malformed"
    work.mkdir()
    out = faults.scenario_malformed(work, 20, 0, random.Random(1))
    assert not out.ok
    assert any(f"the agent on port {port} is not ours" in b for b in out.broken), out.broken


def test_side_by_side_children_share_only_their_parent_s_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lead44 gave each side-by-side child the share "i/N" of all the ports; started by a
    pytest-xdist worker (or by a child with a share of its own), the children drew from
    the other workers' shares too. Now a child's share is a part of its parent's."""
    monkeypatch.delenv(ports.SHARE_ENV, raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    args = argparse.Namespace(jobs=2, only=None, seed=6, hub_store="sqlite", quick=True, keep=False)
    shares = [env[ports.SHARE_ENV] for _, env in faults.side_by_side_jobs(args)]
    assert shares == ["1/6", "4/6"]
    drawn = []
    for share in shares:
        monkeypatch.setenv(ports.SHARE_ENV, share)
        monkeypatch.setattr(ports, "_cycle", None)
        drawn.append({free_port() for _ in range(40)})
    assert not drawn[0] & drawn[1]
    assert all(port % 3 == 1 for port in drawn[0] | drawn[1])  # the worker's own share
    monkeypatch.delenv("PYTEST_XDIST_WORKER")  # outside xdist: as lead44 had it
    monkeypatch.delenv(ports.SHARE_ENV)
    assert [env[ports.SHARE_ENV] for _, env in faults.side_by_side_jobs(args)] == ["0/2", "1/2"]
