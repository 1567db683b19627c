"""Review 44 (stress44): the suite run as CI runs it, loaded, in a shuffled order, to find
the next rare failure before CI does.

`make test`'s exact options (.ci/run) over the 313 test files in a shuffled order beside
two CPU hogs (load 9-14 with the other helpers): 1 failed, 4,381 passed, in 2,072 s.
The one failure, `test_review43_tidy43.py::test_a_hub_stopped_before_its_builder_reached_
the_store_leaves_nothing_open`, assumed which of two threads runs first: it asked the
hub's snapshot builder for a build and stopped the hub, taking for granted that the
builder thread had woken and reached the builders' lock (held by the test) before the
stop. On a loaded machine the stop came first; the builder, woken with `_stopping`
already set, returned without building, and "the builder outlived the stop" was false.
The product was right either way (a hub stopped before its builder woke builds nothing);
the test now waits until the builder has reached the lock before it stops the hub.

Checked here, on a real hub (gRPC on 127.0.0.1, a SQLite store, the real flock):

- the other order, made certain: a hub stopped before its builder woke for a request
  builds nothing after the stop, leaves no file, no temporary file, no descriptor of
  hub.db and says no error (the promise nobody pinned; the order tidy43's test met).
  tidy43's own order (the builder at the lock when the stop comes) is its test's, which
  now waits for that moment.

Read afterwards for the same patterns, in the tests of reviews 42-44: review42's run
that never serves read the pid its fake wrote to a file, within a 1.5 s wait that stops
the fake (now the pid of its `Popen`; shown here with a fake started 3 s late); waits
of 10 s for a thread or a killed process (ledger42, left42, lead43) raised to 30-60 s.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest

from .test_review43_tidy43 import open_descriptors


def test_a_hub_stopped_before_its_builder_woke_builds_nothing_and_leaves_nothing_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full snapshot asked for and the hub stopped before the builder thread woke for
    it (a loaded machine's scheduler, made certain by holding the builder's condition
    over the request and the stop): the stop's wait for the builder runs out, the store
    closes, then the builder wakes, sees the stop and ends without building. Nothing is
    built or left half-built, no hub.db descriptor stays open, nothing is said at ERROR."""
    from tillpoint.sync import hub_server
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    monkeypatch.setattr(hub_server, "BUILD_STOP_WAIT_S", 0.2)
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), publish=False)
    snapshots = hub.server.dir.snapshots
    builder = hub.server.builder
    with builder._cond:  # the builder cannot wake until the stop has said "stopping"
        builder.request_full(hub.publish())
        thread = builder._thread
        assert thread is not None and thread.is_alive()
        hub.stop()  # its wait for the builder (0.2 s) runs out; the store is closed
        assert thread.is_alive()  # still waiting to wake
    thread.join(30)
    assert not thread.is_alive(), "the builder did not end after the stop"
    assert list(snapshots.glob("*.tmp")) == []
    assert list(snapshots.glob("*.snap")) == []  # nothing built after the stop
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tillpoint.hub"]
    assert not [m for level, m in said if level >= logging.ERROR], said
    gc.collect()
    assert open_descriptors(hub.server.dir.root / "hub.db") == []


def test_review42s_never_serving_run_is_judged_when_its_fake_starts_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review42's `test_a_till_run_that_never_serves_is_stopped_when_its_wait_fails` read
    the pid its fake `tillpoint` wrote to a file once started; its wait was 1.5 s, and the
    wait's stop ended a fake that a loaded machine had not started by then, before it
    wrote the file (FileNotFoundError: the pattern "a file another process writes"). Its
    fake started 3 s late here; it failed so before the test took the pid from `Popen`."""
    from . import test_review42_review42 as review42

    def slow_fake(where: Path, body: str) -> str:
        exe = where / "slow-fake-tillpoint"
        exe.write_text(f'#!/bin/sh\nsleep 3\necho $$ > "{where}/pid"\n{body}\n', encoding="ascii")
        exe.chmod(0o755)
        return str(exe)

    monkeypatch.setattr(review42, "_fake_run", slow_fake)
    review42.test_a_till_run_that_never_serves_is_stopped_when_its_wait_fails(tmp_path, monkeypatch)
