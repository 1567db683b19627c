"""Review 26 (clock26): the till's wall clock is not steady.

NTP corrects a till that drifted, a till boots with a wrong RTC and is set right later:
the wall clock steps, backwards or forwards, while one long-lived agent keeps serving.
A hold lives `holdTtlSeconds` after it was placed (docs/CONTRACT.md §11): that is time
that passes, not a wall-clock reading, so a step of the clock neither stretches a hold
(the hub's copy of it, TTL + 60 s on the hub's clock, would have run out: two tills could
spend the same points) nor kills it at once (the payment was taken: Confirm refused).

The agent's wall clock and its steady (monotonic) clock are both injected here, as
`tillpoint run` has them from the system.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import TillpointError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from tests.conftest import receipt, snapshot

START = datetime.fromisoformat("2026-11-23T10:00:00+03:00")
TTL = 1800
B_CARD = "2770000000024"  # c-b, 80 points


class Clocks:
    """A wall clock the test steps and a steady clock that only counts time passing."""

    def __init__(self) -> None:
        self.wall = START
        self.steady = 1000.0

    def now(self) -> datetime:
        return self.wall

    def mono(self) -> float:
        return self.steady

    def passes(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.steady += seconds

    def steps(self, seconds: float) -> None:  # NTP: the wall clock alone moves
        self.wall += timedelta(seconds=seconds)


def _agent(tmp_path: Path, clocks: Clocks) -> Agent:
    a = Agent(tmp_path / "data", "till-1", clock=clocks.now, monotonic=clocks.mono)
    a.load_snapshot(snapshot(program={**snapshot()["program"], "holdTtlSeconds": TTL}))
    return a


def _held(a: Agent, rid: str, **changes: Any) -> dict[str, Any]:
    return a.hold(receipt_from_json(receipt(rid, **changes))).to_json()


def test_a_clock_stepped_forward_does_not_kill_a_fresh_hold(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11: placed, paid 5 minutes later; meanwhile NTP set the clock an
    hour forward. The hold has lived 5 of its 30 minutes: Confirm commits it."""
    clocks = Clocks()
    a = _agent(tmp_path, clocks)
    try:
        _held(a, "r-fwd")
        clocks.passes(120)
        clocks.steps(3600)
        clocks.passes(180)
        done = a.confirm("r-fwd", None).to_json()
        assert done["state"] == "CONFIRMED"
    finally:
        a.close()


def test_a_clock_stepped_back_does_not_stretch_a_hold(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11: NTP set the clock an hour back after the hold was placed; 31
    minutes later the hold has run out (as the hub's copy of it has), not 1.5 h later."""
    clocks = Clocks()
    a = _agent(tmp_path, clocks)
    try:
        _held(a, "r-back")
        clocks.passes(60)
        clocks.steps(-3600)
        clocks.passes(TTL)  # 31 minutes since the hold
        assert a.sweep_holds() == 1
        with pytest.raises(TillpointError, match="hold expired"):
            a.confirm("r-back", None)
    finally:
        a.close()


def test_time_passing_without_a_step_expires_a_hold_as_before(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11: no step, the TTL as it always was (29:59 held, 30:00 gone)."""
    clocks = Clocks()
    a = _agent(tmp_path, clocks)
    try:
        _held(a, "r-a")
        _held(a, "r-b", at="2026-11-23T10:15:01+03:00")
        clocks.passes(TTL - 1)
        assert a.confirm("r-a", None).to_json()["state"] == "CONFIRMED"
        clocks.passes(1)
        with pytest.raises(TillpointError, match="hold expired"):
            a.confirm("r-b", None)
    finally:
        a.close()


def test_last_contact_follows_a_clock_stepped_back(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9/status: `lastContactAt` is written at most every 30 s; after NTP
    set the clock an hour back it stayed at the old (now future) time for an hour, while
    the hub answered every poll: a support engineer read "no contact" for the hour."""
    from tillpoint.sync import state
    from tillpoint.sync.loopback import FAST, LoopbackHub, sample_master_data
    from tillpoint.sync.service import SyncService

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    service = SyncService(till.agent, till.link, till.link.enrollment, FAST)
    try:
        before = datetime.fromisoformat("2026-11-23T10:00:00+00:00")
        till.link.last_contact = before
        service._persist_mode()
        till.link.last_contact = before - timedelta(seconds=3600 - 60)  # stepped back 1 h
        service._persist_mode()
        written = state.sync_status(service.pusher.conn)["lastContactAt"]
        assert written == state.now_text(before - timedelta(seconds=3540))
    finally:
        service.pusher.close()
        hub.stop()


def test_a_quote_right_after_a_step_forward_still_sees_the_hold(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11: an open hold counts against the customer's points for every
    other receipt, quotes included. A quote that came first after NTP set the clock an
    hour forward saw the hold as expired (nothing had followed the step yet): it offered
    points the held receipt will spend."""
    clocks = Clocks()
    a = _agent(tmp_path, clocks)
    try:
        _held(a, "r-held", card=B_CARD, redeemPoints=50)  # of her 80 points
        clocks.passes(60)
        clocks.steps(3600)
        other = receipt("r-other", card=B_CARD, redeemPoints=50)
        quoted = a.quote(receipt_from_json(other)).to_json()
        clocks.passes(1)
        held = a.hold(receipt_from_json(other)).to_json()
        assert quoted["redeemedPoints"] == held["redeemedPoints"] == 30
    finally:
        a.close()


def test_the_hub_refreshes_balances_after_its_clock_went_back(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9: the hub publishes a balance refresh `publish_every_s` after its
    latest version. Its clock set an hour back made the latest version's `issuedAt` an
    hour ahead: no refresh for the hour (every till's offline balances stale meanwhile)."""
    from tillpoint.sync.hub_server import HubConfig
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
    from tillpoint.sync.loopback import receipt as sample_receipt

    clocks = Clocks()
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.05, publish_every_s=0.2)
    hub = LoopbackHub(tmp_path / "hub", config, clock=clocks.now, data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", clock=clocks.now)
    try:
        first = hub.store.latest().version
        wait_for(lambda: till.agent.status().cache_version == first)
        clocks.steps(-3600)
        sale = sample_receipt("r-1", "2770000000017", at=clocks.wall)
        till.agent.checkout(receipt_from_json(sale))
        wait_for(lambda: hub.store.latest().version > first, timeout=5)
    finally:
        till.stop()
        hub.stop()


def test_a_ledger_that_cannot_be_written_still_quotes_after_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §11/status: while the ledger cannot be written quotes still work;
    moving the holds after a step is a write: it is tried again at the next call."""
    from tillpoint.agent import ledger
    from tillpoint.agent.errors import StorageError

    clocks = Clocks()
    a = _agent(tmp_path, clocks)
    shift = ledger.shift_open_holds
    try:
        _held(a, "r-held", card=B_CARD, redeemPoints=50)
        clocks.passes(60)
        clocks.steps(3600)

        def full(*_: object) -> int:
            raise StorageError("database or disk is full")

        monkeypatch.setattr(ledger, "shift_open_holds", full)
        other = receipt("r-other", card=B_CARD, redeemPoints=50)
        assert a.quote(receipt_from_json(other)).to_json()["receiptId"] == "r-other"
        monkeypatch.setattr(ledger, "shift_open_holds", shift)  # the disk has room again
        clocks.passes(60)
        assert a.confirm("r-held", None).to_json()["state"] == "CONFIRMED"
    finally:
        a.close()


def test_a_hold_asked_again_after_a_step_says_when_it_now_expires(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11: `holdExpiresAt` is when the hold runs out. After NTP set the
    clock an hour back, a retried Hold still said the old time, an hour after the hold
    will have run out by the till's (and the POS's) clock."""
    clocks = Clocks()
    a = _agent(tmp_path, clocks)
    try:
        first = _held(a, "r-h")
        clocks.passes(60)
        clocks.steps(-3600)
        again = _held(a, "r-h")
        moved = datetime.fromisoformat(first["holdExpiresAt"]) - timedelta(seconds=3600)
        assert datetime.fromisoformat(again["holdExpiresAt"]) == moved
        assert {k: v for k, v in again.items() if k != "holdExpiresAt"} == {
            k: v for k, v in first.items() if k != "holdExpiresAt"
        }
    finally:
        a.close()
