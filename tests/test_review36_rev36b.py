"""Review 36 (rev36b): session 35's start-up and sync changes read again (CONTRACT §10,
§11). Each test here that names a fault failed before the fix beside it; the others
pin what was tried and found right. Real parts: the reference hub on 127.0.0.1 with its
own gRPC handlers, real SQLite files, real sockets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

from .conftest import CLI
from .test_review35_left35 import cancelled_while_away, owed_releases

# ---------------------------------------- 1. sync now's round of the hold timer


def test_sync_now_gives_an_owed_release_no_longer_than_its_timeout_has_left(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`sync now --timeout`: no call to the hub is given longer than what
    is left of it), §11. The releases `sync now` sends after its push and pull (review
    35) were each given the till's `hub.redeem_timeout_ms` plus the hub's margin whatever
    was left of --timeout: with a redeem deadline of 20 s (allowed up to 60 s) and a hub
    that stops answering after the pull, `sync now --timeout 5` ran up to 25 s. Counted,
    not timed: the hub's handler reads the deadline each release came with."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    given: list[float | None] = []
    release = HubServicer.ReleaseRedemption

    def recording(self: Any, request: Any, context: Any) -> Any:
        given.append(context.time_remaining())
        return release(self, request, context)

    monkeypatch.setattr(HubServicer, "ReleaseRedemption", recording)
    data = tmp_path / "data"
    try:
        cancelled_while_away(hub, data, 2)
        assert owed_releases(data) == 2
        hub.restart()  # with the recording handler
        monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "20000")
        done = cli("sync", "now", "--timeout", "5")
        assert done.code == 0, done.err
        assert owed_releases(data) == 0
        assert len(given) == 2
        assert all(left is not None and left <= 5.0 for left in given), given
    finally:
        hub.stop()
