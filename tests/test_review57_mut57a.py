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

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.sync.loopback import LoopbackHub

from .conftest import ManualClock
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
