"""Review 37 (rev37b): session 36's sync and status changes read again (CONTRACT §9,
§10, §11): `sync now --timeout`, the link state after each way a call ends, `status`'s
one read, the listen addresses. Each test here that names a fault failed before the fix
beside it; the others pin what was tried and found right. Real parts: the reference hub
on 127.0.0.1 with its own gRPC handlers, real SQLite files, real sockets.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

from .conftest import CLI, enrolled_till, receipt
from .test_review35_left35 import cancelled_while_away, owed_releases
from .test_review36_rev36c import _recorded_mode

# ---------------------------------------- 1. sync now's deadline and the link state


def _slow(monkeypatch: pytest.MonkeyPatch, call: str, seconds: float) -> None:
    """The hub's handler of `call` waits `seconds` before it works (a busy hub, well
    within the till's own call deadline of 5 s)."""
    handler = getattr(HubServicer, call)
    if inspect.isgeneratorfunction(handler):

        def slowly_streamed(self: Any, request: Any, context: Any) -> Any:
            time.sleep(seconds)
            yield from handler(self, request, context)

        monkeypatch.setattr(HubServicer, call, slowly_streamed)
    else:

        def slowly(self: Any, request: Any, context: Any) -> Any:
            time.sleep(seconds)
            return handler(self, request, context)

        monkeypatch.setattr(HubServicer, call, slowly)


@pytest.mark.parametrize(
    ("call", "said"),
    [
        ("ListTransactions", "before the hub answered (nothing pushed; 1 transaction(s)"),
        ("PushTransactions", "with the hub not taking the transactions in time (pushed 0)"),
        ("PullSnapshot", "while pulling the snapshot (pushed 1;"),
    ],
)
def test_sync_now_cut_by_its_own_timeout_leaves_the_till_online(
    tmp_path: Path,
    hub: LoopbackHub,
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    said: str,
) -> None:
    """CONTRACT §10 (`sync now --timeout`: one line, exit 1; `status`'s mode: ONLINE when
    the last exchange with the hub worked), §11 (a call cut by sync now's own deadline
    says nothing of the hub: review 36's rev36c, for the owed releases). A till recorded
    ONLINE by a `sync now` that worked sells once; the hub is then 0.6 s slow at one of
    its calls (its mark, the push, the snapshot), within the till's own 5 s, and the
    operator runs `sync now --timeout 0.3`. It gives up at its deadline, as the contract
    says, but recorded the till OFFLINE, and `tillpoint status` said so until the next
    contact, though the hub was there all along (it took the push, in the last case):
    the operator's deadline was taken for a hub away."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    first = cli("sync", "now", "--timeout", "30")
    assert first.code == 0, first.err
    assert _recorded_mode(data) == "ONLINE"
    sold = cli("checkout", receipt("s-1"), "--json")
    assert sold.code == 0, sold.err
    _slow(monkeypatch, call, 0.6)
    hub.restart()  # with the slow handler
    done = cli("sync", "now", "--timeout", "0.3")
    assert done.code == 1
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith(
        f"tillpoint: sync now gave up at its deadline of 0.3 s (--timeout) {said}"
    ), lines[0]
    assert _recorded_mode(data) == "ONLINE"
    status = cli("status", "--json")
    assert status.code == 0, status.err
    assert json.loads(status.out)["mode"] == "ONLINE", status.out


@pytest.mark.parametrize("form", ["--json", "text"])
def test_sync_now_says_how_many_releases_its_deadline_left_owed(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """CONTRACT §10 (`sync now --timeout`), §11 (`sync now` sends the releases owed within
    its --timeout; those left stay owed for the next). Three holds cancelled while the hub
    was away; the hub is back but 3 s slow at releases (within the till's own 20 s), and
    `sync now --timeout 2` pushes, pulls and ends 0 with the three still owed: the hub
    holds those customers' points from every other till. It said only "pushed 0
    transaction(s), 0 waiting; snapshot 1 is the newest", as if nothing were left to
    send; it now says how many releases (and shrinks) stayed owed, in the text and in
    the JSON document (`releasesOwed`, `shrinksOwed`)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "data"
    try:
        cancelled_while_away(hub, data, 3)
        assert owed_releases(data) == 3
        _slow(monkeypatch, "ReleaseRedemption", 3.0)
        hub.restart()  # with the slow handler
        monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "20000")
        done = cli("sync", "now", "--timeout", "2", *([form] if form == "--json" else []))
        assert done.code == 0, done.err
        assert owed_releases(data) == 3
        if form == "--json":
            doc = json.loads(done.out)
            assert (doc["releasesOwed"], doc["shrinksOwed"]) == (3, 0), doc
        else:
            assert done.out.strip().endswith(
                "; 3 release(s) still owed to the hub (sent by `tillpoint run` or the next"
                " `sync now`)"
            ), done.out
    finally:
        hub.stop()
