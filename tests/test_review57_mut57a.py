"""Review 57 (mut57a): mutation testing of the rest of the reference hub's snapshot
builder (`sync/hub_server.py`, `SnapshotBuilder`: `_get`, `_build`, `choose`, `bundle`,
`wait_full` and the small functions no earlier review ran; docs/CONTRACT.md §3, §9,
docs/PROTOCOL.md's PullSnapshot and snapshot files), and the prune's log line that told a
support engineer of versions pruned when none was. Each test pins a rule a surviving
mutant broke unseen, or the mended log line (docs/DECISIONS.md, "Review 57 (mut57a)").
Real parts: the reference hub (`LoopbackHub`: its SQLite store, its keys, a gRPC server
on a free loopback port), real mTLS clients with enrolled device certificates, the
snapshot files on disk; a build is held, where a test needs it in flight, by a gate on
`SnapshotBuilder._build` (as test_sync_snapshots and test_review54_mut54a do).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync.hub_server import HubConfig, SnapshotBuilder
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import ManualClock
from .test_review54_mut54a import enrolled, pulled, refusal
from .test_review56_mut56c import DAY, LONG_TTL_S, manual_hub

PRUNED = "versions before {} pruned: a till on one gets a full snapshot"


# ------------------------------------------------------------ the prune's log line


def said_pruned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()]


def test_the_prune_says_versions_pruned_only_when_it_forgot_some(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/CONTRACT.md §3: "versions before N pruned" tells the support engineer from
    when the tills of older versions get full snapshots. The floor's first rise is to
    version 1, the oldest there is: nothing was forgotten, and the line said versions had
    been (review 56 saw it). A server started again finds the floor where the last one
    left it: nothing is pruned, and the line said it again at every restart. Now it is
    said when the prune forgot a version, once."""
    clock = ManualClock(datetime.now(UTC) - timedelta(days=50))
    hub = manual_hub(tmp_path / "hub", clock, watch_interval_s=3600)
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    try:
        clock.advance(10 * DAY)
        assert hub.publish(LONG_TTL_S) == 2
        clock.advance(25 * DAY)
        assert hub.server.prune_versions() == 1  # version 1 is the floor: none before it
        assert hub.store.publication(1) is not None
        assert said_pruned(caplog) == []
        clock.advance(10 * DAY)
        assert hub.server.prune_versions() == 2  # version 1 forgotten
        assert hub.store.publication(1) is None
        assert said_pruned(caplog) == [PRUNED.format(2)]
        hub.restart()
        assert hub.server.prune_versions() == 2  # where it was: nothing forgotten now
        assert said_pruned(caplog) == [PRUNED.format(2)]
        assert hub.publish(LONG_TTL_S) == 3
        clock.advance(35 * DAY)
        assert hub.server.prune_versions() == 3
        assert said_pruned(caplog) == [PRUNED.format(2), PRUNED.format(3)]
    finally:
        hub.stop()


# ------------------------------------------------------------ building


class HeldBuilds:
    """A gate on `builder._build`: each build (each full one with `fulls_only`) waits in
    it until `release()`; `inside` is the (version, base) of the builds waiting now,
    `most` the most at once."""

    def __init__(self, builder: SnapshotBuilder, *, fulls_only: bool = False) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.inside: list[tuple[int, int]] = []
        self.most = 0
        real = builder._build

        def held(version: int, base: int) -> Any:
            if fulls_only and base:
                return real(version, base)
            with self._lock:
                self.inside.append((version, base))
                self.most = max(self.most, len(self.inside))
            try:
                self._open.wait(60)
                return real(version, base)
            finally:
                with self._lock:
                    self.inside.remove((version, base))

        builder._build = held  # type: ignore[method-assign]

    def waiting(self) -> int:
        with self._lock:
            return len(self.inside)

    def release(self) -> None:
        self._open.set()


def nothing_built(builder: SnapshotBuilder, full_wait_s: float, newest_wait_s: float) -> HeldBuilds:
    """`builder` waiting `full_wait_s` in all (`newest_wait_s` of it for the newest) for a
    full snapshot, as if none were built yet, each new build held at the gate returned."""
    wait_for(lambda: builder.full_ready(1), timeout=30)
    builder.full_wait_s, builder.newest_wait_s = full_wait_s, newest_wait_s
    gate = HeldBuilds(builder)
    with builder._cond:
        builder._ready.clear()  # as if nothing were built yet
    return gate


def versions_of(chunks: list[Any]) -> set[tuple[int, int]]:
    return {(c.version, c.base_version) for c in chunks}


def test_deltas_are_built_two_at_a_time_each_from_its_own_base(hub: LoopbackHub) -> None:
    """docs/PROTOCOL.md (the snapshot files): deltas are built on demand by the pull that
    needs them, two at a time (a big change's deltas take a while: the hub's CPU at a
    chain's morning start). Three tills at versions 1, 2 and 3 pulling at once: two
    deltas build, the third waits for a place, and each till gets the delta from its own
    version. A bound of 1 or 3, or no bound for deltas (the semaphore taken around full
    snapshots instead), went unseen; so did a delta from 1 served as the full snapshot."""
    builder = hub.server.builder
    for version in (2, 3, 4):
        assert hub.publish() == version
    wait_for(lambda: builder.full_ready(4), timeout=30)
    gate = HeldBuilds(builder)
    s = enrolled(hub)
    got: dict[int, set[tuple[int, int]]] = {}

    def pull_from(have: int) -> None:
        got[have] = versions_of(pulled(s, have=have))

    pulls = [threading.Thread(target=pull_from, args=(have,)) for have in (1, 2, 3)]
    try:
        for t in pulls:
            t.start()
        wait_for(lambda: gate.waiting() == 2, timeout=20)
        time.sleep(1.0)  # the third pull's time to get in, were there room for it
        assert gate.waiting() == 2
        # each build under its own lock file, the hub owner's alone, while it runs
        locks = list(hub.dir.snapshots.glob("v*.lock"))
        assert len(locks) == 2
        assert {p.stat().st_mode & 0o777 for p in locks} == {0o600}
    finally:
        gate.release()
        for t in pulls:
            t.join(60)
    assert got == {1: {(4, 1)}, 2: {(4, 2)}, 3: {(4, 3)}}
    assert gate.most == 2
    assert list(hub.dir.snapshots.glob("v*.lock")) == []  # deleted by their holders


def test_a_files_build_time_is_the_time_it_took(hub: LoopbackHub) -> None:
    """A snapshot file's record (`.json`) says how long its build took (`buildSeconds`,
    the hub's log line "built: N bytes in S s"): a number from 0 to the time the call that
    built it took, not a clock's reading (its `+` for `-` went unseen)."""
    builder = hub.server.builder
    assert hub.publish() == 2
    started = time.monotonic()
    snap = builder.bundle(2, 1)  # a delta: built by this call
    took = time.monotonic() - started
    assert 0 <= snap.build_s <= took
    meta = json.loads(snap.path.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["buildSeconds"] == round(snap.build_s, 3)


def test_a_file_deleted_under_the_running_hub_is_logged_as_gone_and_built_again(
    hub: LoopbackHub, caplog: pytest.LogCaptureFixture
) -> None:
    """The support engineer is told why a file the hub had built is built again: a
    WARNING "snapshot file … is gone: building it again" (test_sync_snapshots checks the
    rebuild; the line went unseen), and only then: a file still whole is served as it
    is, from memory (a check that never found it whole took every pull for a file gone,
    a WARNING and the file's record read and its signature checked again each time)."""
    builder = hub.server.builder
    first = wait_for(lambda: builder.full_ready(1), timeout=30)
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    assert builder.bundle(1, 0) is first and builder.bundle(1, 0) is first
    # this thread's lines only: the background build of version 1 may log "built" after
    # `full_ready` (its file is ready before its line is written)
    here = threading.get_ident()
    said = [r.getMessage() for r in caplog.records if r.thread == here]
    assert [m for m in said if "snapshot" in m] == []
    first.path.unlink()
    again = builder.bundle(1, 0)
    assert again.path == first.path and again.path.stat().st_size == first.size
    gone = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in gone] == [
        (logging.WARNING, "snapshot file v0000000001-full.snap is gone: building it again")
    ]


def test_a_hub_started_before_its_first_version_builds_nothing_then_builds_it_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hub served before its first `hub publish` (a new chain's set-up) builds nothing
    and logs no error; version 1's full snapshot is built as soon as it is published, not
    at the builder's next retry 30 s later (a builder that thought version 1 asked for
    from its start tried it at once, logged "building the full snapshot of version 1
    failed", and slept its retry over the real request: every new till waited)."""
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), publish=False)
    builder = hub.server.builder
    try:
        time.sleep(1.0)  # the watcher's rounds and the builder's thread, with nothing to build
        assert hub.publish() == 1
        wait_for(lambda: builder.full_ready(1), timeout=15)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert sorted(p.name for p in hub.dir.snapshots.glob("*.snap")) == ["v0000000001-full.snap"]
    finally:
        hub.stop()


def test_a_new_till_gets_the_newest_full_snapshot_built_not_a_delta_s_version(
    hub: LoopbackHub,
) -> None:
    """docs/PROTOCOL.md (PullSnapshot), `SnapshotBuilder.choose`: while the newest full
    snapshot is being built, a till with no cache gets the newest *full* one already
    built (version 2 here) after `newest_wait_s`. The delta to the newest version, built
    meanwhile for a till at 2, is no full snapshot: a choice that counted it (review 54
    left it, "the same answer") sent the new till to wait for the newest full one's
    build, minutes at chain scale, as if none were built."""
    builder = hub.server.builder
    builder.full_wait_s, builder.newest_wait_s = 30.0, 0.2
    assert hub.publish() == 2
    wait_for(lambda: builder.full_ready(2), timeout=30)
    gate = HeldBuilds(builder, fulls_only=True)
    try:
        assert hub.publish() == 3
        wait_for(lambda: gate.inside == [(3, 0)], timeout=20)  # the newest full one held
        s = enrolled(hub)
        assert versions_of(pulled(s, have=2)) == {(3, 2)}  # a delta: built, not held
        assert versions_of(pulled(s)) == {(2, 0)}  # the newest full one built
        assert builder.full_ready(3) is None
    finally:
        gate.release()
    assert versions_of(pulled(s)) == {(3, 0)}


def test_a_pull_waiting_for_a_full_snapshot_is_served_once_built_not_at_the_wait_s_end(
    hub: LoopbackHub,
) -> None:
    """`SnapshotBuilder.wait_full`: a pull waiting for the newest full snapshot (no
    other built) is served as soon as its build ends, however long its wait could last
    (60 s here for the newest, 120 s in all); a wait that did not see the build end sat
    out its whole time (review 54's test waits 0.2 s for the newest, then 30 s, within
    its pull's deadline of 30 s: such a wait still passed it)."""
    gate = nothing_built(hub.server.builder, 120.0, 60.0)
    opener = threading.Timer(1.0, gate.release)
    try:
        assert hub.publish() == 2
        wait_for(lambda: gate.inside == [(2, 0)], timeout=20)  # the background build
        opener.start()
        assert versions_of(pulled(enrolled(hub))) == {(2, 0)}  # a deadline of 30 s
    finally:
        gate.release()
        opener.cancel()


def test_a_hub_asked_to_keep_no_full_snapshot_keeps_the_newest_one(tmp_path: Path) -> None:
    """`HubConfig.keep_versions` (a hub made in code; `hub serve` keeps 3) under 1 keeps
    one full snapshot file, the newest: the one every new till is served. Taken as 0, the
    prune kept every file for good (a chain's disk filled a version at a time); taken as
    2, one more than asked."""
    config = HubConfig(keep_versions=0, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    builder = hub.server.builder
    try:
        wait_for(lambda: builder.full_ready(1), timeout=30)
        for version in (2, 3):
            assert hub.publish() == version
            wait_for(lambda v=version: builder.full_ready(v), timeout=30)
        wait_for(lambda: len(list(hub.dir.snapshots.glob("*.snap"))) == 1, timeout=30)
        assert sorted(p.name for p in hub.dir.snapshots.glob("v*")) == [
            "v0000000003-full.json",
            "v0000000003-full.snap",
        ]
    finally:
        hub.stop()


def test_a_pull_with_no_full_snapshot_built_waits_full_wait_s_in_all_then_aborted(
    hub: LoopbackHub,
) -> None:
    """`HubConfig.full_wait_s`: a pull that needs a full snapshot while none is built
    waits that long *in all* (its first part for the newest one, `newest_wait_s`,
    included), then ABORTED "being built" (the till retries with its backoff; its
    first-chunk deadline is 120 s, the hub's 60 s stays well under it). Here 10 s in
    all, 8 of them the first part, and a pull deadline of 20 s: a second part of
    `full_wait_s + newest_wait_s` (18 s, 26 in all) went unseen (the other tests wait
    0.4 s or less in all)."""
    gate = nothing_built(hub.server.builder, 10.0, 8.0)
    try:
        assert hub.publish() == 2
        wait_for(lambda: gate.inside == [(2, 0)], timeout=20)
        request = pb.PullSnapshotRequest(device_id="till-1")
        code, details = refusal(lambda: list(enrolled(hub).PullSnapshot(request, timeout=20.0)))
        assert code == grpc.StatusCode.ABORTED
        assert details == "the full snapshot of version 2 is being built; try again shortly"
    finally:
        gate.release()


def test_a_damaged_file_two_pulls_found_is_dropped_once_and_built_again(
    hub: LoopbackHub,
) -> None:
    """`SnapshotBuilder.damaged`: a full snapshot file rotted on the hub's disk (same
    size, other bytes) is found by every pull that read it; the first one's report
    deletes the file, the second's (two tills pulled at once) finds nothing left to
    delete and is quiet, as the next pull builds the file again with the bytes signed.
    Without `missing_ok` the second pull's report raised FileNotFoundError inside its
    stream: the till got UNKNOWN "Exception iterating responses", not DATA_LOSS "pull
    again". The second report is made here as the second pull makes it."""
    builder = hub.server.builder
    snap = wait_for(lambda: builder.full_ready(1), timeout=30)
    data = bytearray(snap.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    snap.path.write_bytes(bytes(data))
    builder.damaged(snap)
    builder.damaged(snap)  # the other pull that read the same file
    assert not snap.path.exists() and not snap.path.with_suffix(".json").exists()
    again = builder.bundle(1, 0)
    assert hashlib.sha256(again.path.read_bytes()).digest() == snap.sha256
    assert versions_of(pulled(enrolled(hub))) == {(1, 0)}


def test_a_till_on_a_pruned_version_is_served_the_newest_not_its_own_version_s_file(
    tmp_path: Path,
) -> None:
    """docs/PROTOCOL.md §8: a till whose version is below the delta floor gets a full
    snapshot, as a till with none. Its own version's full file may still be on the
    hub's disk (the newest three are kept): it is no answer (its version is pruned, and
    the till has it). While the newest is built, the pull waits for it and is served it;
    a choice that counted the till's own version among the built ones answered ABORTED
    "version 2 is gone" at once (the till then retried after its backoff)."""
    clock = ManualClock(datetime.now(UTC) - timedelta(days=50))
    hub = manual_hub(tmp_path / "hub", clock)
    builder = hub.server.builder
    opener: threading.Timer | None = None
    gate: HeldBuilds | None = None
    try:
        clock.advance(DAY)
        assert hub.publish(LONG_TTL_S) == 2
        wait_for(lambda: builder.full_ready(2), timeout=30)
        gate = HeldBuilds(builder, fulls_only=True)
        clock.advance(DAY)
        assert hub.publish(LONG_TTL_S) == 3
        wait_for(lambda: gate is not None and gate.inside == [(3, 0)], timeout=20)
        clock.advance(40 * DAY)
        assert hub.server.prune_versions() == 3  # versions 1 and 2 forgotten
        assert builder.full_ready(2) is not None  # its file still kept
        builder.full_wait_s, builder.newest_wait_s = 30.0, 0.2
        opener = threading.Timer(1.0, gate.release)
        opener.start()
        assert versions_of(pulled(enrolled(hub), have=2)) == {(3, 0)}
    finally:
        if gate is not None:
            gate.release()
        if opener is not None:
            opener.cancel()
        hub.stop()


def test_the_builders_lock_file_is_the_hub_owner_s_alone(hub: LoopbackHub) -> None:
    """`builders.lock` in the snapshot directory (every builder of every process holds
    it shared while it builds; the leftovers of a crash are deleted under it alone) is
    made 0600 (the owner's alone): a lock file others could open is a lock others could
    hold, and the hub's leftovers were never cleaned (its mode ±1 went unseen)."""
    wait_for(lambda: hub.server.builder.full_ready(1), timeout=30)
    lock = hub.dir.snapshots / "builders.lock"
    assert lock.stat().st_mode & 0o777 == 0o600
