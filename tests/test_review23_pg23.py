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

from bench import pgcluster

if pgcluster.unavailable_reason() is not None:  # pragma: no cover - no server here
    pytest.skip(str(pgcluster.unavailable_reason()), allow_module_level=True)

from bench.pgfaults import EXE, FAULTS, Rig, clean_env, run_fault, wait_for


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


@pytest.mark.slow
def test_the_hub_answers_unavailable_at_once_while_postgresql_is_away(rig_factory: Any) -> None:
    """PostgreSQL stopped, then every connection it allows taken by another client: each
    call is answered UNAVAILABLE within a few seconds (it waited the pool's 30 s, past
    every till's deadline, holding one of the hub's gRPC threads all along), and the
    hub serves again by itself once the database is back."""
    rig = rig_factory(tills=0, max_connections=12)
    rig.start_hub()
    assert wait_for(lambda: rig.probe() == "OK", 30)
    assert rig.health() == "SERVING"

    rig.pg_ctl("-m", "fast", "-w", "stop")
    for _ in range(3):
        code, took = timed_probe(rig)
        assert code == "UNAVAILABLE" and took < 5, (code, took)
    assert rig.health() == "NOT_SERVING"
    rig.pg_start()
    assert wait_for(lambda: rig.probe(timeout=3) == "OK", 20)
    assert wait_for(lambda: rig.health() == "SERVING", 10)

    import psycopg

    control = psycopg.connect(rig.cluster.url, autocommit=True, connect_timeout=5)
    taken: list[Any] = [control]
    hub_sessions = "FROM pg_stat_activity WHERE datname = %s"
    try:
        for _ in range(50):  # the hub's connections dropped, their slots taken before it
            control.execute(f"SELECT pg_terminate_backend(pid) {hub_sessions}", (rig.dbname,))
            while len(taken) < 100:
                try:
                    taken.append(
                        psycopg.connect(rig.cluster.url, autocommit=True, connect_timeout=5)
                    )
                except psycopg.OperationalError:
                    break
            left = control.execute(f"SELECT count(*) {hub_sessions}", (rig.dbname,)).fetchone()
            if left == (0,):
                break
            time.sleep(0.1)
        assert left == (0,)
        code, took = timed_probe(rig)
        assert code == "UNAVAILABLE" and took < 5, (code, took)
    finally:
        for conn in taken:
            conn.close()
    assert wait_for(lambda: rig.probe(timeout=3) == "OK", 20)
    assert rig.hub_proc is not None and rig.hub_proc.poll() is None
    assert rig.log_problems() == []


def test_hub_serve_with_the_database_down_exits_1_with_one_line(tmp_path: Path) -> None:
    """`hub serve` started while PostgreSQL cannot be reached exits at once, 1 with one
    line, and systemd starts it again (tillpoint-hub.service: Restart=always, no start
    limit); a wrong URL of another kind is exit 2, which the unit does not restart."""
    from tillpoint.sync.hub_server import HubDir

    url = f"postgresql://postgres@127.0.0.1:{pgcluster._free_port()}/hub"
    HubDir(tmp_path / "hub", url).init()
    started = time.monotonic()
    done = subprocess.run(
        [EXE, "hub", "serve", "--hub-dir", str(tmp_path / "hub"), "--store", url],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("tillpoint: cannot open the hub database postgresql://")
    assert time.monotonic() - started < 30
    unit = (Path(__file__).parents[1] / "packaging" / "tillpoint-hub.service").read_text()
    assert "Restart=always" in unit and "StartLimitIntervalSec=0" in unit


def test_one_fast_restart_while_two_tills_sell_loses_and_doubles_nothing(
    rig_factory: Any,
) -> None:
    """The short default-run case: `pg_ctl restart -m fast` while two `tillpoint run`
    tills sell and refund; every committed receipt and refund reaches the hub once, the
    outboxes drain with no process restarted, the tills follow the hub's snapshots."""
    rig = rig_factory(tills=2)
    rig.start_hub()
    rig.start_tills()
    found = run_fault(rig, "restart-fast", warm_s=1.0)
    check(found)
    # Then PostgreSQL stopped: the hub says so at once (it waited the pool's 30 s, past
    # every till's deadline, holding a gRPC thread), its health too; back by itself.
    rig.pg_ctl("-m", "fast", "-w", "stop")
    code, took = timed_probe(rig)
    assert code == "UNAVAILABLE" and took < 5, (code, took)
    assert rig.health() == "NOT_SERVING"
    rig.pg_start()
    assert wait_for(lambda: rig.probe(timeout=3) == "OK", 20)
    assert rig.health() == "SERVING" and rig.log_problems() == []


def check(found: dict[str, Any]) -> None:
    assert found["recovered_s"] is not None and found["recovered_s"] < 15, found
    assert found["drained"] and found["hub_equals_journals"], found
    assert found["duplicates"] == 0 and found["committed_missing"] == 0, found
    assert found["committed"] > 0 and found["hub_rows"] >= found["committed"], found
    assert found["tills_followed"] and found["hub_alive"], found
    assert found["log_problems"] == [] and found["till_errors"] == [], found
    assert found["till_log_problems"] == [], found  # no snapshot refused, no error
    # the pool's 8 and the open lock's one (review 31, docs/HUB.md): none leaked
    assert found["hub_connections"][1] <= 9, found
    assert set(found.get("probe_codes_while_down", {})) <= {"UNAVAILABLE"}, found
    if "probe_codes_while_full" in found:  # every slot taken, none left to the hub
        assert found["hub_connections_while_full"] == 0, found
        assert set(found["probe_codes_while_full"]) == {"UNAVAILABLE"}, found
    assert set(found.get("probe_codes_while_held", {})) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_postgresql_fault_while_two_tills_sell(rig_factory: Any, fault: str) -> None:
    """Each fault of `bench.pgfaults.FAULTS` (restarts fast and immediate, a 45 s stop,
    pg_terminate_backend of the hub's connections, a table lock held 45 s, every
    connection taken 20 s) under the two tills' sales: the same promises."""
    rig = rig_factory(tills=2)
    rig.start_hub()
    rig.start_tills()
    check(run_fault(rig, fault))


def test_hub_serve_warns_when_postgresql_can_lose_what_it_acknowledged(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With synchronous_commit off (the tests' own cluster), an immediate restart lost 15
    of 207 pushes the hub had acknowledged (the tills, told "stored", never sent them
    again): `hub serve` says so in its log at start."""
    import logging

    from tillpoint.sync.hub_server import HubDir, HubServer

    hub = HubDir(tmp_path / "hub", pg_url)
    hub.init()
    hub.open_store(migrate=True).close()
    with caplog.at_level(logging.WARNING, logger="tillpoint.hub"):
        server = HubServer(hub)
        try:
            server.start()
        finally:
            server.stop(grace=0)
    said = [r.getMessage() for r in caplog.records if r.name == "tillpoint.hub"]
    assert any("synchronous_commit = off" in m and "acknowledged" in m for m in said), said


@pytest.mark.slow
def test_calls_given_up_by_their_tills_do_not_hold_hub_threads_behind_a_lock(
    rig_factory: Any,
) -> None:
    """Another session holds `devices` (every call reads it) in ACCESS EXCLUSIVE mode:
    the pool's 8 connections wait on the lock (lock_timeout 30 s); the calls behind
    them waited for a connection the pool's 30 s, each holding a gRPC thread long after
    its till gave up (a call every 0.2 s with a 1 s deadline: ~40 threads after 8 s).
    Now they stop waiting at their deadline."""
    import psycopg

    rig = rig_factory(tills=0)
    rig.start_hub()
    assert wait_for(lambda: rig.probe() == "OK", 30)
    before = rig.hub_threads()
    with psycopg.connect(rig.url, connect_timeout=5) as conn:
        conn.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        import threading

        calls = [
            threading.Thread(target=rig.probe, kwargs={"timeout": 1.0}, daemon=True)
            for _ in range(40)
        ]
        for call in calls:
            call.start()
            time.sleep(0.2)
        grown = rig.hub_threads() - before
        conn.rollback()
    assert grown < 20, grown
    assert wait_for(lambda: rig.probe(timeout=3) == "OK", 10)
    assert rig.log_problems() == []


def test_a_hub_command_whose_connection_is_lost_says_one_line_and_writes_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    """`hub import` whose connection PostgreSQL drops mid-way (a restart, a failover;
    here pg_terminate_backend while it waits on a lock): exit 1 with one line on stderr
    (the pool's own warning, "discarding closed connection …", came first), nothing of
    the import in the draft."""
    import json
    from datetime import UTC, datetime

    import psycopg
    from tillpoint.sync.hub_server import HubDir
    from tillpoint.sync.loopback import import_doc, sample_master_data

    hub = HubDir(tmp_path / "hub", pg_url)
    hub.init()
    store = hub.open_store(migrate=True)
    import_doc(store, sample_master_data())
    store.publish(datetime.now(UTC), 3600)
    store.close()
    catalogue = tmp_path / "c.json"
    catalogue.write_text(
        json.dumps({"offers": [{"id": "m-1", "kind": "PERCENT_OFF", "skus": ["1"], "value": "3"}]}),
        encoding="utf-8",
    )
    watcher = psycopg.connect(pg_url, autocommit=True, connect_timeout=5)
    with watcher, psycopg.connect(pg_url, connect_timeout=5) as locker:
        locker.execute("LOCK TABLE draft IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [EXE, "hub", "import", str(catalogue), "--hub-dir", str(hub.root), "--store", pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        try:
            waiting = wait_for(
                lambda: watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                ).fetchall(),
                30,
                0.1,
            )
            assert waiting
            for (pid,) in waiting:
                watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        locker.rollback()
    assert proc.returncode == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("tillpoint: "), err
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM draft").fetchone() == (0,)
