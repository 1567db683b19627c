"""Review 45 (walk45): rev40b's SIGKILLed-run walk, and a hub's run-by-run stop events.

What is checked, and why:

1. A `HubServer` started again on the same object (tidy44): a watcher thread of the
   stopped run that outlived the stop's 5 s wait for it (held up in a store read) must
   do its run's work under its own run's stop event, never the new run's. Before review
   45 it read `self._stop` in `prune_versions`, which by then was the new run's event
   (not set): the old run's prune went on to its end beside the new run's watcher, and
   no stop of the old run could end it. Real parts: a real hub (gRPC on 127.0.0.1, a
   SQLite store), its real watcher threads; the store's `latest` and `prune_versions`
   are wrapped to hold the old watcher up and to see which stop a prune is given.
2. `bench/faults.py`'s agent-kill checks the agent of its recovery start as it checks
   each iteration's (review 44's `Status.hub_address`): another program's agent on its
   port there is said so, not read as an outbox that did not drain. A real foreign
   `tillpoint run` takes the port between the last kill and the recovery start.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for

from bench import faults
from bench.ports import free_port

from .test_review44_lead44 import start_foreign

# ---------------------------------------------------------------- 1. a run's own stop


def test_a_watcher_outliving_its_runs_stop_prunes_under_its_own_stop_not_the_new_runs(
    tmp_path: Path,
) -> None:
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.05, publish_every_s=0, full_wait_s=5)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    server = hub.server
    store = server.store
    old = server._watcher
    assert old is not None
    held = threading.Event()  # the old watcher is inside `latest`, held there
    go = threading.Event()
    holding = threading.Event()  # set: the old watcher's next `latest` is held up
    # (the thread that pruned, what its `stop()` said when the prune began)
    prunes: list[tuple[threading.Thread, bool | None]] = []
    real_latest = store.latest
    real_prune = store.prune_versions

    def latest() -> Any:
        if threading.current_thread() is old and holding.is_set():
            holding.clear()
            held.set()
            go.wait(60)
        return real_latest()

    def prune(before: datetime, stop: Callable[[], bool] | None = None) -> int:
        prunes.append((threading.current_thread(), None if stop is None else stop()))
        return int(real_prune(before, stop))

    store.latest = latest  # type: ignore[method-assign]
    store.prune_versions = prune  # type: ignore[method-assign]
    try:
        wait_for(lambda: any(t is old for t, _ in prunes), timeout=30)  # its first round
        holding.set()
        wait_for(held.is_set, timeout=30)
        hub.stop()  # waits 5 s for the held watcher, then goes on without it
        assert old.is_alive()
        hub.start()  # the new run: a stop event of its own, a watcher of its own
        new = server._watcher
        assert new is not None and new is not old
        # a version published since: each watcher's next round prunes once for it
        other = hub.dir.open_store()
        try:
            other.publish(datetime.now(UTC), 7 * 86400.0)
        finally:
            other.close()
        wait_for(lambda: any(t is new for t, _ in prunes[1:]), timeout=30)
        go.set()  # the old run's watcher goes on with its round
        old.join(timeout=30)
        assert not old.is_alive()  # its own run's event is set: it ends after the round
        olds = [said for t, said in prunes if t is old]
        # its first round's prune (its run not stopped), then nothing, or a prune told
        # that its run has stopped: never one the new run's stop alone could end
        assert olds[0] is False
        assert all(said is True for said in olds[1:]), olds
    finally:
        go.set()
        hub.stop()


# ---------------------------------------------------------------- 2. agent-kill's recovery


def test_agent_kill_says_another_programs_agent_answered_at_its_recovery_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Review 44 checked the agent each iteration starts (`Status.hub_address`: another
    program's agent on the same port read as twenty receipts "at the hub 0 times"); the
    recovery start, after the last kill, went unchecked: another program's agent taking
    the port there read "the outbox did not drain within 60 s after recovery" and every
    returned receipt missing, the cause unsaid. Here a real foreign `tillpoint run` takes
    the port in the moment between the last kill and the recovery start."""
    port = free_port()
    monkeypatch.setattr(faults, "free_port", lambda: port)
    starts: list[int] = []
    start_agent = faults.start_agent

    def starting(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
        starts.append(1)
        if len(starts) == 2:  # the recovery start: the port is free, and taken first
            procs.append(start_foreign(tmp_path, port, start_agent))
        proc = start_agent(cfg, log)
        procs.append(proc)
        return proc

    monkeypatch.setattr(faults, "start_agent", starting)
    work = tmp_path / "agent-kill"
    work.mkdir()
    out = faults.scenario_agent_kill(work, 1, random.Random(2))
    assert len(starts) == 2  # the iteration's start (ours: checked, sold), the recovery's
    assert not out.ok
    assert out.broken[0].startswith(f"recovery: the agent on port {port} is not ours"), out.broken
    # before: "the outbox did not drain within 60 s after recovery", the cause unsaid
    assert not any("did not drain" in b for b in out.broken), out.broken
