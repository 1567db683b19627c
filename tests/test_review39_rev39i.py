"""Review 39 (rev39i): flake39 (a release answered "nothing held" kept owed while a late
grant may come) and rev39e (steps before a boot's first line) read again with fresh eyes
(CONTRACT §11). Each test marked "failed before the fix" did; the others pin what was
checked and found right.

Real parts: the reference hub on 127.0.0.1 (SQLite; PostgreSQL in the slow pass), a till
with its hub link and a wall clock the test steps beside a steady one, as NTP does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import db, ledger
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import LATE_GRANT_S, Agent
from tillpoint.sync.authoriser import HubAuthoriser
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import LoopbackHub, wait_for
from tillpoint.sync.pull import Puller, cache_version

from . import test_review39_flake39 as flake39
from . import test_review39_rev39e as rev39e
from .conftest import SteppingClock
from .test_review31_long31 import _sale
from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, coupon_holds, held_at_hub
from .test_review38_rev38h import _hold, _lived
from .test_review39_flake39 import HeldBack
from .test_review39_rev39c import _started_while_busy

# flake39's fixtures: its hub (hold33's, SQLite; PostgreSQL in the slow pass) whose store
# holds an authorisation back while `held_back.on` is set
held_back = flake39.held_back
hub = flake39.hub


# Review 41 (flake41): the till's calls to the hub wait 10 s (`SURE_S`), a Hold whose
# grant the test makes late 1 s (`late_hold`), not the shipped 300 ms for both. On a
# loaded machine 300 ms was missed by what the set-up needs in time: the request of a
# held-back grant reached the hub past its deadline (the hub rightly placed nothing:
# "held_back.entered" unset), a hold meant ONLINE was priced OFFLINE, a release meant to
# reach the hub was left owed. A grant the hub must not place (`past_the_deadline`) is held
# past the Hold's whole deadline, not 0.5 s.
LATE_S, SURE_S = 1.0, 10.0


@contextmanager
def stepping_till(the_hub: LoopbackHub, data: Path, clock: SteppingClock) -> Iterator[Agent]:
    """A till of `the_hub` (its redemption deadline `SURE_S`; `late_hold`'s, `LATE_S`) on
    `clock` and its steady clock, that has pulled the hub's snapshot; its hold timer's
    round made once (the clock's mark)."""
    enrollment = the_hub.enroll("a", data)
    link = HubLink(the_hub.address, enrollment)
    authoriser = HubAuthoriser(link, data, "a", SURE_S)
    agent = Agent(data, "a", clock=clock, monotonic=clock.steady, hub=authoriser)
    try:
        Puller(agent, link, enrollment, call_timeout_s=2).pull()
        wait_for(lambda: cache_version(data) == 1)
        agent.sweep_holds()
        yield agent
    finally:
        agent.close()
        authoriser.close()
        link.close()


def late_hold(agent: Agent, receipt: Any) -> Any:
    """`agent`'s Hold of `receipt` whose grant the test holds back (or the hub places past
    its deadline): its call to the hub waits `LATE_S`; the till's other calls `SURE_S`."""
    authoriser = agent.hub
    assert isinstance(authoriser, HubAuthoriser)
    authoriser.timeout_s = LATE_S
    try:
        return agent.hold(receipt)
    finally:
        authoriser.timeout_s = SURE_S


def past_the_deadline(where: str) -> None:
    """The hub's failpoint: an authorisation reaches its deadline check past the whole
    deadline of a `late_hold` (the hub places nothing)."""
    if where == "authorize":
        time.sleep(LATE_S + 0.2)


def owed(agent: Agent) -> int:
    return agent.hub_calls_owed()["release"]


# ------------------------- 1. a step of the wall clock inside a late grant's 60 seconds


def test_a_step_forward_after_the_cancel_keeps_the_release_owed_while_its_grant_may_come(
    hub: LoopbackHub, tmp_path: Path, held_back: HeldBack
) -> None:
    """CONTRACT §11 (a hold's reservation at the hub is released at Cancel; a hold lives
    time that passes, whatever the wall clock is set to). A Hold's grant is held up on its
    way to the hub's store: priced OFFLINE, cancelled at once, its release answered
    "nothing held" and kept owed (flake39). NTP then sets the till's clock an hour
    forward; the hold timer's round follows the step and sends the release again while
    the grant is still on its way: nothing held yet. Two seconds have passed since the
    hold: the grant may still come, the release stays owed, and the next round releases
    the grant once it has landed. Failed before the fix: the hold's `held_at` was left on
    the clock of before the step (only its expiry and `closed_at` moved), so the round
    took it for an hour old, marked the release done, and the late grant (200 points and
    APP555) stayed held at the hub from every till for `holdTtlSeconds` + 60 s."""
    clock = SteppingClock(datetime.now(UTC))
    with stepping_till(hub, tmp_path / "a", clock) as agent:
        held_back.on.set()
        held = late_hold(agent, a_receipt("gone-1", "APP555", at=clock()))
        assert (held.state, held.mode, held.redeemed_points) == ("HELD", "OFFLINE", OFFLINE_LIMIT)
        assert held_back.entered.is_set()
        agent.cancel("gone-1")  # nothing held at the hub yet: owed still
        assert owed(agent) == 1
        clock.passes(2)
        clock.stepped(3600.0)  # NTP
        agent.sweep_holds()  # the round follows the step...
        agent.retry_hub_releases()  # ...and sends the release again: nothing held yet
        assert owed(agent) == 1, "the release was taken as final an hour forward"
        held_back.go.set()  # the grant lands
        assert held_back.done.wait(10)
        held_back.on.clear()
        assert held_at_hub(hub) == OFFLINE_LIMIT
        agent.retry_hub_releases()  # the next round
        assert held_at_hub(hub) == 0
        assert coupon_holds(hub) == []
        assert owed(agent) == 0


def test_a_step_back_after_the_cancel_ends_the_release_owed_after_60_s_of_time(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §10 (`tillpoint_hub_calls_owed`), §11. A Hold priced OFFLINE whose hub
    placed nothing (it took the request past the deadline) is cancelled: its release,
    answered "nothing held", is owed for `LATE_GRANT_S` of time that passes. NTP sets the
    clock an hour back meanwhile; 61 s after the hold the next round's answer is final
    and nothing is owed. Failed before the fix: `held_at` stayed an hour ahead of the
    stepped clock, so the release was sent every 15 s for an hour and the gauge (and
    `sync now`'s `hubCallsOwed`) said one release owed all that time."""
    clock = SteppingClock(datetime.now(UTC))
    with stepping_till(hub, tmp_path / "a", clock) as agent:
        hub.server.servicer.failpoint = past_the_deadline
        held = late_hold(agent, a_receipt("away-1", at=clock()))
        hub.server.servicer.failpoint = None
        assert (held.mode, held.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
        agent.cancel("away-1")
        assert owed(agent) == 1
        clock.passes(5)
        clock.stepped(-3600.0)  # NTP
        agent.sweep_holds()  # followed
        agent.retry_hub_releases()
        assert owed(agent) == 1  # 5 s after the hold: its grant may come
        clock.passes(LATE_GRANT_S - 4)
        agent.retry_hub_releases()
        assert owed(agent) == 0, "still owed an hour after a step back"
        assert held_at_hub(hub) == 0


def test_an_open_offline_hold_stepped_back_then_cancelled_after_60_s_owes_nothing(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11, as above for a step made while the hold is open: the hold priced
    OFFLINE (the hub placed nothing), NTP sets the clock an hour back, the hold is
    cancelled 2 minutes of time later: its release's "nothing held" is final at once (no
    grant can come 2 minutes on). Failed before the fix: owed for an hour."""
    clock = SteppingClock(datetime.now(UTC))
    with stepping_till(hub, tmp_path / "a", clock) as agent:
        hub.server.servicer.failpoint = past_the_deadline
        held = late_hold(agent, a_receipt("away-2", at=clock()))
        hub.server.servicer.failpoint = None
        assert held.mode == "OFFLINE"
        clock.passes(10)
        clock.stepped(-3600.0)
        agent.sweep_holds()  # followed: the open hold keeps its time left
        clock.passes(110)
        assert agent.cancel("away-2").state == "CANCELLED"
        assert owed(agent) == 0, "owed for an hour after a step back"


def test_a_till_restarted_within_the_60_s_keeps_the_release_owed_then_ends_it(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11. A hold priced OFFLINE (the hub placed nothing) and cancelled; the
    till restarts 20 s later (a new agent on the ledger, the hub link kept): the release
    is still owed and sent again while a grant may come, final 61 s after the hold, and
    nothing is owed then. Checked, found right (the hold's time is the ledger's)."""
    clock = SteppingClock(datetime.now(UTC))
    with stepping_till(hub, tmp_path / "a", clock) as agent:
        hub.server.servicer.failpoint = past_the_deadline
        held = late_hold(agent, a_receipt("away-3", at=clock()))
        hub.server.servicer.failpoint = None
        assert held.mode == "OFFLINE"
        agent.cancel("away-3")
        authoriser = agent.hub
        agent.close()
        clock.passes(20)
        again = Agent(tmp_path / "a", "a", clock=clock, monotonic=clock.steady, hub=authoriser)
        try:
            again.retry_hub_releases()
            assert owed(again) == 1
            clock.passes(41)
            again.retry_hub_releases()
            assert owed(again) == 0
        finally:
            again.close()


# ------------------------- 2. rev39e: a step followed in the boot's first write transaction


def test_a_step_followed_by_the_hold_that_writes_the_boots_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11. The till restarts with h-1 of the boot before open; `run` starts
    while another process writes the ledger (no line of this boot) and reads the clock (a
    quote). NTP sets the clock ten minutes forward, and the POS's Hold of h-2 is the
    first write: its transaction writes the boot's first line (listing h-1), follows the
    step and stores h-2 on the stepped clock. h-1 keeps its stored expiry (the boot
    before's), h-2 its 30 minutes; a later step back moves h-2 alone. Checked, found
    right."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 120_000)
    made1, data = rev39e._boot_before(tmp_path / "till")
    boot2 = SteppingClock(made1 + timedelta(minutes=2))
    run = _started_while_busy(data, boot2)
    try:
        assert rev39e._device(data, ledger.CLOCK_LINE) is not None
        run.quote(receipt_from_json(_sale("q-1", boot2(), redeemPoints=0)))  # run's reading
        boot2.passes(5)
        boot2.stepped(600.0)
        made2 = _hold(run, "h-2", boot2)
        listed = json.loads(rev39e._device(data, ledger.CLOCK_LINE_BEFORE) or "{}")
        assert [rid for rid, _ in listed["holds"]] == ["h-1"]
        assert _lived(data, "h-1", made1)[:2] == ("HELD", 1800.0)
        assert _lived(data, "h-2", made2)[:2] == ("HELD", 1800.0)
        boot2.passes(5)
        boot2.stepped(-300.0)
        run.sweep_holds()
        assert _lived(data, "h-1", made1)[:2] == ("HELD", 1800.0)
        assert _lived(data, "h-2", made2)[:2] == ("HELD", 1800.0 - 300.0)
        for rid in ("h-1", "h-2"):
            assert run.confirm(rid).state == "CONFIRMED"
    finally:
        run.close()


# ------------------------- 3. a late grant landing after its receipt was held again (left)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_a_late_grant_landing_after_the_expired_receipt_was_held_again_online(
    tmp_path: Path,
    held_back: HeldBack,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    """CONTRACT §11 (a hold reserves its points at the hub for every other till). A
    program with a 30 s hold TTL. A Hold's grant is held up on its way to the hub's store
    (priced OFFLINE, 200 points); the hold expires 31 s later, its release answered
    "nothing held" and kept owed (flake39), and the POS holds the receipt again: ONLINE,
    1200 points held at the hub. The first grant then lands, and the hub's store replaces
    the newer hold with it (cut to the offline limit, 200): the till's hold redeems 1200
    points while the hub holds 200 for it, and another till may spend the other 1000.
    The owed release was right not to be sent (the receipt is held again). Failed before
    grant39's fix (left as a strict xfail by rev39i): now a grant whose call came before
    the receipt's ACTIVE hold was placed writes nothing (both stores, the PostgreSQL
    claim too). docs/DECISIONS.md (review 39, rev39i and grant39)."""
    from tillpoint.sync.loopback import sample_master_data

    from .test_review33_hold33 import COUPONS, SORRY

    data = sample_master_data() | {"offers": [SORRY], "coupons": COUPONS}
    data["program"]["holdTtlSeconds"] = 30
    data["program"]["offlineRedeemLimitPoints"] = OFFLINE_LIMIT
    url = request.getfixturevalue("pg_url") if store == "postgresql" else None
    the_hub = LoopbackHub(tmp_path / "hub", data=data, store=url)
    authorise = the_hub.store.authorise

    def first_on_its_way(*args: Any, **kwargs: Any) -> Any:
        if held_back.on.is_set():  # the first authorisation only
            held_back.on.clear()
            held_back.entered.set()
            assert held_back.go.wait(10)
        return authorise(*args, **kwargs)

    monkeypatch.setattr(the_hub.store, "authorise", first_on_its_way)
    clock = SteppingClock(datetime.now(UTC))
    try:
        with stepping_till(the_hub, tmp_path / "a", clock) as agent:
            at = clock()
            held_back.on.set()
            held = late_hold(agent, a_receipt("gone-1", "APP555", at=at))
            assert (held.mode, held.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
            clock.passes(31)
            agent.sweep_holds()  # expired: its release finds nothing, owed still
            assert owed(agent) == 1
            again = agent.hold(a_receipt("gone-1", "APP555", at=at))
            assert (again.state, again.mode, again.redeemed_points) == ("HELD", "ONLINE", 1200)
            assert held_at_hub(the_hub) == 1200
            held_back.go.set()  # the first grant lands
            assert held_back.done.wait(10)
            agent.retry_hub_releases()
            assert held_at_hub(the_hub) == 1200, "the hub holds less than the till redeems"
    finally:
        held_back.go.set()
        the_hub.stop()
