"""Review 46 (reset46): two late-grant gaps left by reviews 44-45 (CONTRACT §11, §9).

A. `tillpoint reset` forgot the ledger (hold44's "asked again" note among it, the
   `hub_asks` row ask45 keeps beside such a hold) BEFORE it sent its releases, and sent
   them with `forgotten=True`: the first answer was final. A hold whose grant may still
   land at the hub (a Hold priced OFFLINE within `LATE_GRANT_S`: its one request held up
   at a busy hub, flake39's race, or a second request of a Hold that asked twice,
   hold44's) was released once by the reset ("nothing held", or the first grant dropped);
   the late grant then landed and was kept (up to the offline limit) for a receipt no
   till holds, from every other till, for `holdTtlSeconds` + 60 s, with nothing owed
   anywhere. Now `reset` keeps, through the reset, an ask row (`hub_asks`) for each hold
   or ask whose grant may still land, so the release stays owed as an unstored ask's:
   `tillpoint run` (at its start and each round) or `tillpoint sync now` sends it again
   until the window closes and once after; the reset itself waits for nothing, and says
   how many releases stay owed and until when (`hubReleasesOwed`,
   `hubReleasesOwedUntil`).
B. The shrink of an open OFFLINE hold whose Hold asked the hub twice: the Hold's shrink
   cut the first grant to what the hold uses and was marked done; the second request's
   grant then landed and was kept up to the offline limit the Hold told the hub, more
   than the hold uses when the card's store-day offline limit was partly spent here. The
   excess was held from every other till for the hold's life (up to `holdTtlSeconds`),
   the very outcome review 40 (rev40b) fixed for a Hold that asked once. Now such a
   hold's shrink stays owed while a grant may come, whatever the hub answers, as its
   release does (hold44).

Real parts: the reference hub on 127.0.0.1 (SQLite; PostgreSQL in the slow pass where
the fixture has it), tills with their hub links and ledgers, `tillpoint reset` through the
CLI's `main`. Forced: the grant's way to the hub's store held up (flake39's `HeldBack`,
hold44's `SecondHeldBack`), the early pricing taken as stale (`Agent._still`).

Default part: seven tests, about 38 s of calls in all at a load average of 20 on the
2-core machine (about 20 s on two workers; the 3 s redemption deadline each late grant
waits out is most of it); the slow pass adds the PostgreSQL twins of flake39's hub.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.app import till_agent
from tillpoint.agent.cli import main
from tillpoint.agent.errors import HubUnavailable, StorageError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import LATE_GRANT_S, Agent
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.sync.pull import Puller

from .conftest import ManualClock, PassThroughHub, enrolled_till
from .test_review33_hold33 import ANNA, BIG, OFFLINE_LIMIT, a_receipt, held_at_hub
from .test_review39_flake39 import HeldBack
from .test_review39_flake39 import held_back as held_back  # the fixture
from .test_review39_flake39 import hub as hub  # the fixture: flake39's hub, held_back's
from .test_review44_hold44 import TIMINGS, SecondHeldBack, held_twice
from .test_review44_hold44 import second as second  # the fixture
from .test_review45_ask45 import asks, failing_commit
from .test_review45_ask45 import late_hub as late_hub  # the fixture: hold44's hub, SQLite


def cli_reset(
    data_dir: Path, device: str, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, str, str]:
    """`tillpoint reset --yes --force` on the data directory, in this process (its hub link
    is its own, made from the data directory's enrollment, as `run`'s). Its releases wait
    for the hub as the tests' tills do (`TIMINGS`' 3 s as `hub.redeem_timeout_ms`; the
    shipped 300 ms otherwise; the owed window it says counts that deadline): the
    tests judge what the reset does with the hub's answers, not that deadline; a release
    answered late (a loaded machine, `-p tests.latehub --late-hub-rpc ReleaseRedemption`)
    stays owed, and the reset's counts differ (review 47, late47)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", str(round(TIMINGS.redeem_timeout_s * 1000)))
        code = main(["reset", "--yes", "--force", "--data-dir", str(data_dir), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def other_till_gets_all(b: Any) -> None:
    other = b.agent.hold(a_receipt("b-1"))
    assert (other.mode, other.redeemed_points) == ("ONLINE", 1200)


class Away(PassThroughHub):
    """The till's hub link as a hub away: every request refused before it is sent."""

    def asking(self) -> None:
        raise HubUnavailable("the hub is not answering")


# ----------------------------------------------------------- A. reset's releases


def test_a_reset_keeps_the_release_of_a_hold_that_asked_twice_owed(
    late_hub: LoopbackHub,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CONTRACT §11, §9: a Hold that asked the hub twice is priced OFFLINE (its second
    request held up at the hub); the support engineer stops the till and runs `tillpoint
    reset` within the minute. The reset's release drops the first grant (answered
    "released"); the second grant then lands (the offline limit, 200). The release stays
    owed through the reset: `--json` says so, and the next agent on the data directory
    (`tillpoint run` started again) releases the late grant at its first round; another
    till then gets all 1200 ONLINE. Before: the reset forgot the note with the ledger,
    took the first answer as final, and the 200 stayed held at the hub for
    `holdTtlSeconds` + 60 s."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "a")
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS)
    b = enrolled_till(late_hub, tmp_path / "b", "b", timings=TIMINGS)
    real = a.agent.hub
    again: Agent | None = None
    try:
        before = datetime.now(UTC)
        held_twice(a, second, monkeypatch, "twice-r", before)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the first grant, shrunk
        a.agent.close()  # `reset` is refused while `run` serves: stopped first
        code, out, err = cli_reset(a.data_dir, "a", capsys, "--json")
        assert code == 0, err
        reset_at = datetime.now(UTC)
        assert held_at_hub(late_hub) == 0  # the first grant dropped
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the second grant, past the deadline
        again = till_agent(a.data_dir, "a", hub=real)
        assert again.hub_calls_owed()["release"] == 1
        again.retry_hub_releases()  # `run`'s hold timer, at its start
        assert held_at_hub(late_hub) == 0
        other_till_gets_all(b)
        # what the reset said: one release still owed, until a minute after the hold
        doc = json.loads(out)
        assert (doc["hubHoldsReleased"], doc["hubHoldsLeft"], doc["hubReleasesOwed"]) == (1, 0, 1)
        until = datetime.fromisoformat(doc["hubReleasesOwedUntil"])
        assert before + timedelta(seconds=LATE_GRANT_S) <= until
        assert until <= reset_at + timedelta(seconds=LATE_GRANT_S + TIMINGS.redeem_timeout_s)
    finally:
        second.go.set()
        if again is not None:
            again.close()
        a.agent.close()
        a.link.close()
        a.authoriser.close()
        b.stop()


def test_a_reset_keeps_the_release_of_an_offline_hold_whose_grant_is_late_owed(
    hub: LoopbackHub,
    tmp_path: Path,
    held_back: HeldBack,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CONTRACT §11: flake39's race through a reset. A Hold asks the hub once; the hub
    takes the request and is slow to store it, so the Hold is priced OFFLINE. `tillpoint
    reset` then releases it: "nothing held" (the grant is not there yet). The grant lands
    and is kept for the OFFLINE hold (the offline limit); the release stayed owed through
    the reset, and the next agent's round releases it. The reset's text says the release
    is still owed, until when, and how to finish it. Before: taken as done, and the 200
    held at the hub for `holdTtlSeconds` + 60 s."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "a")
    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS)
    b = enrolled_till(hub, tmp_path / "b", "b", timings=TIMINGS)
    real = a.agent.hub
    again: Agent | None = None
    try:
        held_back.on.set()
        held = a.agent.hold(a_receipt("late-r"))
        assert (held.mode, held.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
        assert held_back.entered.is_set()
        a.agent.close()
        code, out, err = cli_reset(a.data_dir, "a", capsys)
        assert code == 0, err
        assert held_at_hub(hub) == 0
        held_back.go.set()
        assert held_back.done.wait(30)
        held_back.on.clear()
        assert held_at_hub(hub) == OFFLINE_LIMIT  # the late grant, kept for the OFFLINE hold
        again = till_agent(a.data_dir, "a", hub=real)
        again.retry_hub_releases()
        assert held_at_hub(hub) == 0
        other_till_gets_all(b)
        # what the reset said: released, still owed until when, and how to finish
        assert "1 hold(s) released at the hub" in out
        assert "1 release(s) still owed to the hub until " in out
        assert "tillpoint run" in out and "tillpoint sync now" in out
    finally:
        held_back.go.set()
        if again is not None:
            again.close()
        a.agent.close()
        a.link.close()
        a.authoriser.close()
        b.stop()


def test_a_reset_keeps_no_release_owed_for_an_online_hold_or_one_past_the_window(
    late_hub: LoopbackHub, tmp_path: Path
) -> None:
    """Only a release a grant may still overtake is kept: an ONLINE hold's (its grant was
    answered in time: the first answer is final, review 39) and an OFFLINE hold's placed
    more than `LATE_GRANT_S` and the hub's deadline before the reset (its grant has landed
    by then, or never will) leave no row, and the reset says 0 owed, as before; an OFFLINE
    hold within the window is kept (the hub away for its request: nothing granted, and
    the till cannot know that)."""
    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS, clock=clock)
    real = a.agent.hub
    try:
        online = a.agent.hold(a_receipt("on-1", at=clock()))
        assert online.mode == "ONLINE"
        result = a.agent.reset(force=True)
        assert (result.hub_holds_released, result.hub_releases_owed) == (1, 0)
        assert result.hub_releases_owed_until == ""
        assert asks(a.data_dir) == [] and held_at_hub(late_hub) == 0

        Puller(a.agent, a.link, a.link.enrollment, call_timeout_s=5).pull()  # sell again
        a.agent.hub = Away(real)
        assert a.agent.hold(a_receipt("off-old", at=clock())).mode == "OFFLINE"
        clock.advance(LATE_GRANT_S + TIMINGS.redeem_timeout_s + 1)
        assert a.agent.hold(a_receipt("off-new", at=clock())).mode == "OFFLINE"
        a.agent.hub = real
        result = a.agent.reset(force=True)
        assert (result.hub_holds_released, result.hub_holds_left) == (2, 0)
        assert result.hub_releases_owed == 1
        assert [r for r, _ in asks(a.data_dir)] == ["off-new"]
        end = datetime.fromisoformat(result.hub_releases_owed_until)
        assert end == clock() + timedelta(seconds=LATE_GRANT_S + TIMINGS.redeem_timeout_s)
    finally:
        a.stop()


def test_a_reset_keeps_the_release_of_an_ask_never_stored_within_its_window_owed(
    hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ask45's shape through a reset: a Hold granted by the hub whose commit failed leaves
    its ask (the receipt never stored); a second request of it may still be on its way.
    The reset releases the grant (the hub holds nothing after it) and keeps the ask owed
    until its window ends (`LATE_GRANT_S` and the hub's deadline after it), as the
    till's own rounds would have kept it."""
    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS)
    try:
        with monkeypatch.context() as m:
            m.setattr(ledger, "insert_life", failing_commit)
            with pytest.raises(StorageError):  # the failed commit, as the POS hears it
                a.agent.hold(a_receipt("lost-1"))
        assert held_at_hub(hub) == 1200 and [r for r, _ in asks(a.data_dir)] == ["lost-1"]
        result = a.agent.reset(force=True)
        assert (result.hub_holds_released, result.hub_releases_owed) == (1, 1)
        assert held_at_hub(hub) == 0
        assert [r for r, _ in asks(a.data_dir)] == ["lost-1"]
        assert a.agent.hub_calls_owed()["release"] == 1
    finally:
        a.stop()


def test_a_reset_kept_release_ends_after_its_window(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row kept by the reset is an unstored ask's: released at each round, counted
    owed, while a grant may land; past `LATE_GRANT_S` (and the hub's deadline) after the
    hold, the round's release is the last and the row goes."""
    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS, clock=clock)
    try:
        held_twice(a, second, monkeypatch, "twice-e", clock())
        result = a.agent.reset(force=True)
        assert (result.hub_holds_released, result.hub_releases_owed) == (1, 1)
        assert a.agent.hub_calls_owed()["release"] == 1
        a.agent.retry_hub_releases()  # nothing held now: still owed
        assert [r for r, _ in asks(a.data_dir)] == ["twice-e"]
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT
        clock.advance(10)
        a.agent.retry_hub_releases()  # drops the late grant; still in its window
        assert held_at_hub(late_hub) == 0
        assert [r for r, _ in asks(a.data_dir)] == ["twice-e"]
        clock.advance(LATE_GRANT_S + TIMINGS.redeem_timeout_s)
        assert a.agent.retry_hub_releases() == 0  # nothing held: done
        assert asks(a.data_dir) == []
        assert a.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
    finally:
        second.go.set()
        a.stop()


def test_a_receipt_held_again_after_the_reset_is_left_alone_by_the_kept_release(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The POS sends the Hold again under the same receiptId after the reset (its sale was
    under way): the new hold is stored ONLINE, the kept row goes with its commit, and the
    rounds after it release nothing of it: the hub keeps the new hold until its Confirm,
    and nothing is owed (the late grant, which came to the hub before the new hold, places
    nothing: review 39's grant39)."""
    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS, clock=clock)
    try:
        held_twice(a, second, monkeypatch, "twice-h", clock())
        assert a.agent.reset(force=True).hub_releases_owed == 1
        Puller(a.agent, a.link, a.link.enrollment, call_timeout_s=5).pull()
        clock.advance(5)
        again = a.agent.hold(a_receipt("twice-h", at=clock()))
        assert (again.mode, again.redeemed_points) == ("ONLINE", 1200)
        assert asks(a.data_dir) == []
        second.go.set()
        assert second.done.wait(30)
        a.agent.retry_hub_releases()
        clock.advance(LATE_GRANT_S + 10)
        a.agent.retry_hub_releases()
        assert held_at_hub(late_hub) == 1200  # the new hold, kept
        assert a.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
        assert a.agent.confirm("twice-h").state == "CONFIRMED"
    finally:
        second.go.set()
        a.stop()


# ------------------------------------------- B. the shrink of a hold that asked twice


def test_the_shrink_of_a_hold_that_asked_twice_stays_owed_for_the_later_grant(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11, §9: Anna redeemed 150 points OFFLINE at this till today (50 left of
    the store-day's 200). A Hold of all she has asks the hub twice (its early pricing
    granted, then taken as stale); the second request is held up, so the Hold is priced
    OFFLINE: it uses 50. Its shrink cuts the first grant to 50 ("shrunk"); the second
    request's grant then lands and is kept up to the offline limit the Hold told the hub,
    200: 150 more than the hold uses, held from every other till while the receipt is
    open (up to `holdTtlSeconds`). The shrink stays owed while a grant may come: the
    next round cuts the late grant to 50, and another till gets 1150 ONLINE. Past the
    window the shrink is done and nothing is owed."""
    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS, clock=clock)
    b = enrolled_till(late_hub, tmp_path / "b", "b", timings=TIMINGS)
    real = a.agent.hub
    try:
        a.agent.hub = Away(real)
        spent = a.agent.checkout(
            receipt_from_json(
                {
                    "receiptId": "off-1",
                    "at": clock().isoformat(),
                    "card": ANNA,
                    "lines": BIG,
                    "redeemPoints": 150,
                }
            )
        )
        assert (spent.mode, spent.redeemed_points) == ("OFFLINE", 150)
        a.agent.hub = real
        with monkeypatch.context() as m:
            m.setattr(Agent, "_still", lambda self, early, view: False)
            held = a.agent.hold(a_receipt("twice-s", at=clock()))
        assert second.calls.get("twice-s") == 2 and second.entered.is_set()
        assert (held.mode, held.redeemed_points) == ("OFFLINE", 50)
        assert held_at_hub(late_hub) == 50  # the first grant, shrunk by the Hold
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the late grant: 150 too many
        assert a.agent.hub_calls_owed()["shrink"] == 1  # still owed: a grant could come
        a.agent.retry_hub_releases()  # the hold timer's round
        assert held_at_hub(late_hub) == 50
        other = b.agent.hold(a_receipt("b-1"))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 1150)
        b.agent.cancel("b-1")
        clock.advance(LATE_GRANT_S + 1)
        a.agent.retry_hub_releases()  # none can come now: done
        assert a.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
        assert held_at_hub(late_hub) == 50
        assert a.agent.confirm("twice-s").state == "CONFIRMED"
    finally:
        second.go.set()
        a.stop()
        b.stop()
