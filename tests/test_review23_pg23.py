"""Review 23 (pg23): the hub on PostgreSQL while PostgreSQL misbehaves, with real
processes only (`bench/pgfaults.py`: a throwaway cluster, a `tillpoint hub serve`, real
`tillpoint run` tills selling and refunding over HTTP)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg")

from bench import pgcluster  # noqa: E402

if pgcluster.unavailable_reason() is not None:  # pragma: no cover - no server here
    pytest.skip(str(pgcluster.unavailable_reason()), allow_module_level=True)

from bench.pgfaults import EXE, FAULTS, Rig, clean_env, run_fault, wait_for  # noqa: E402


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Rig] = []

    def make(**kwargs: Any) -> Rig:
        rig = Rig(tmp_path / f"rig{len(made)}", **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop()


def timed_probe(rig: Rig, timeout: float = 15) -> tuple[str, float]:
    t0 = time.monotonic()
    code = rig.probe(timeout=timeout)
    return code, time.monotonic() - t0


def test_the_hub_answers_unavailable_at_once_while_postgresql_is_away(rig_factory: Any) -> None:
    """PostgreSQL stopped, then every connection it allows taken by another client: each
    call is answered UNAVAILABLE within a few seconds (it waited the pool's 30 s, past
    every till's deadline, holding one of the hub's gRPC threads all along), and the
    hub serves again by itself once the database is back."""
    rig = rig_factory(tills=0, max_connections=12)
    rig.start_hub()
    assert wait_for(lambda: rig.probe() == "OK", 30)

    rig.pg_ctl("-m", "fast", "-w", "stop")
    for _ in range(3):
        code, took = timed_probe(rig)
        assert code == "UNAVAILABLE" and took < 5, (code, took)
    rig.pg_start()
    assert wait_for(lambda: rig.probe(timeout=3) == "OK", 20)

    import psycopg

    rig.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
        rig.dbname,
    )
    taken: list[Any] = []
    try:
        while len(taken) < 100:
            try:
                taken.append(psycopg.connect(rig.cluster.url, autocommit=True, connect_timeout=5))
            except psycopg.OperationalError:
                break
        code, took = timed_probe(rig)
        assert code == "UNAVAILABLE" and took < 5, (code, took)
    finally:
        for conn in taken:
            conn.close()
    assert wait_for(lambda: rig.probe(timeout=3) == "OK", 20)
    assert rig.hub_proc is not None and rig.hub_proc.poll() is None
    assert rig.log_problems() == []
