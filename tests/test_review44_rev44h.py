"""Review 44 (rev44h): a second reading of hold44's fix (CONTRACT §11, §9).

hold44 kept the release of a Hold priced OFFLINE after asking the hub more than once owed
for `LATE_GRANT_S` whatever the hub answers: the release may have dropped the first
request's grant while a later request of the same Hold was still on its way to the hub's
store. It left the same race for `_release_unstored`, the release of an ask the till never
stored (the till killed mid-Hold, or the Hold's commit failed after the hub was asked):
that release still took "released" as done. A Hold whose early pricing was granted and
whose pricing again inside the write transaction sent a second request that the hub held
up, then failed to commit, left the ask; the next round's release dropped the first grant,
was taken as done, and the second grant landed afterwards and was kept (up to the offline
limit) for a receipt no till holds, from every other till, for `holdTtlSeconds` + 60 s.
Shown here (a strict xfail until review 45) and fixed by review 45 (ask45): an unstored
ask's release stays owed for `LATE_GRANT_S` after the ask's last request whatever the hub
answers; review 26's rev26, review 34's left34 and review 40's rev40b now read a released
unstored ask as owed until then (docs/DECISIONS.md, "Review 45 (ask45)").

Also pinned: a Checkout (Hold and Confirm in one call) that asked twice leaves no note of a
release to keep owed, and a Hold that asked once is not noted (hold44's note is for the
Holds whose release it must keep owed only).

Real parts: the reference hub on 127.0.0.1 (SQLite), tills with their hub links; the
second request held back at the hub's store as hold44's tests hold it (`SecondHeldBack`),
the early pricing taken as stale as a delta applied between the two pricings makes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub

from .conftest import enrolled_till
from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, held_at_hub
from .test_review44_hold44 import (
    TIMINGS,
    SecondHeldBack,
    owed_then_released_for_another_till,
    second_held_hub,
)
from .test_review44_hold44 import second as second  # the fixture


@pytest.fixture(params=["sqlite"])
def hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LoopbackHub]:
    """hold44's hub: a receipt's second authorisation held back at the store until `go`
    and past its deadline."""
    yield from second_held_hub(request, tmp_path, second, monkeypatch)


def asks(till: Any) -> list[str]:
    conn = sqlite3.connect(till.data_dir / "ledger.db")
    try:
        return [r[0] for r in conn.execute("SELECT receipt_id FROM hub_asks")]
    finally:
        conn.close()


def test_an_unstored_asks_release_that_dropped_the_first_grant_stays_owed(
    hub: LoopbackHub,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CONTRACT §11: a Hold whose early pricing was granted (1200 held at the hub), priced
    again in the write transaction (a delta came) with its second request held up at the
    hub, then not stored (its commit failed: disk I/O), leaves its ask. The next round's
    release drops the first grant (`released: true`); the second grant then lands and is
    kept for the offline limit (200). The ask stays owed while a grant may come: the next
    round releases it, and another till gets all 1200 ONLINE. Before the fix the first
    answer was taken as done and the 200 stayed held at the hub for a receipt no till
    holds (the owed count was 0 with the 200 held; fixed in review 45, ask45)."""
    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS)
    b = enrolled_till(hub, tmp_path / "b", "b", timings=TIMINGS)
    try:

        def fails(*args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        with monkeypatch.context() as m:
            m.setattr(Agent, "_still", lambda self, early, view: False)
            m.setattr(ledger, "insert_life", fails)
            with pytest.raises(Exception):  # noqa: B017  (whatever the failed commit says)
                a.agent.hold(a_receipt("lost-1"))
        assert second.calls.get("lost-1") == 2 and second.entered.is_set()
        assert asks(a) == ["lost-1"]  # the early pricing's note, committed on its own
        assert held_at_hub(hub) == 1200  # the first grant
        a.agent.retry_hub_releases()  # drops the first grant: answered true
        assert held_at_hub(hub) == 0
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(hub) == OFFLINE_LIMIT  # the second grant, kept past the deadline
        owed_then_released_for_another_till(hub, a, b)
    finally:
        a.stop()
        b.stop()


def test_only_an_offline_hold_that_asked_twice_is_noted_and_a_checkout_never(
    hub: LoopbackHub,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hold44's note (`Agent._asked_again`: the Holds whose release stays owed whatever the
    hub answers) counts every request of one Hold or Checkout, the early pricing's and the
    one again in the write transaction, from 0 at each call (thread-local, `_Asks`):
    a Hold that asked twice and was priced OFFLINE is noted; a Checkout that asked twice
    the same way (committed at once: its transaction settles the hub's hold, nothing to
    release) is not, nor is a Hold that asked once; and the count of one call does not
    leak into the next (a Hold asking once after a Checkout that asked twice)."""
    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS)
    try:
        with monkeypatch.context() as m:
            m.setattr(Agent, "_still", lambda self, early, view: False)
            sold = a.agent.checkout(a_receipt("co-1"))
        assert second.calls.get("co-1") == 2
        assert (sold.state, sold.mode, sold.redeemed_points) == (
            "CONFIRMED",
            "OFFLINE",
            OFFLINE_LIMIT,
        )
        assert a.agent._asked_again == {}  # a Checkout owes no release
        second.go.set()
        assert second.done.wait(30)
        once = a.agent.hold(a_receipt("once-1", at=datetime.now(UTC)))
        assert second.calls.get("once-1") == 1 and once.state == "HELD"
        assert a.agent._asked_again == {}  # asked once (ONLINE): review 39's rule
        a.agent.cancel("once-1")
        # a Hold that asked twice, OFFLINE: noted; the count back at 0 after the call
        second.go.clear()
        second.entered.clear()
        second.done.clear()
        second.held.clear()
        with monkeypatch.context() as m:
            m.setattr(Agent, "_still", lambda self, early, view: False)
            held = a.agent.hold(a_receipt("twice-1"))
        assert second.calls.get("twice-1") == 2 and held.mode == "OFFLINE"
        assert list(a.agent._asked_again) == ["twice-1"]
        assert a.agent._asks.count == 0 and not a.agent._asks.active
    finally:
        second.go.set()
        a.stop()
