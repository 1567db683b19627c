"""Review 45 (review45): a second reading of ask45's change (CONTRACT §11, §9).

ask45 made an unstored ask's release stay owed until `LATE_GRANT_S` after its last request,
wrote a failed write transaction's last request again (`Agent._keep_last_ask`), forgot the
asks of committed receipts at each round (`ledger.forget_committed_hub_asks`) and kept
hold44's "asked again" note in the ledger as the hold's `hub_asks` row. What is pinned
here, with a real hub on 127.0.0.1 (SQLite store) and real tills with their ledgers:

- a normal sale adds no ledger write (the sale's hot path): an ONLINE Checkout is one
  note of its hub request and one sale transaction, a Hold the same, its Confirm one;
  counted on the ledger's own connection (`BEGIN IMMEDIATE`), as before the change;
- `_keep_last_ask` hands the caller the very exception its failed transaction raised,
  for a Hold and a Checkout, even when its own note cannot be written (the first note
  stands, the failure logged), and leaves the call's state clean;
- the hold's kept note goes with its release, once: a Hold priced OFFLINE after asking
  twice, cancelled by another agent on the data directory, is released while its later
  grant may land (the hub's two grants each dropped), then done past the window; after
  that the ask row is gone, nothing is owed and no round sends its release again (an
  ask row listed beside its life's own release would be sent and counted twice);
- `reset` of a till with such a hold lists the receipt once and releases it once;
- an unstored ask kept owed never releases the receipt stored afterwards under its id (a
  Hold or a Checkout the POS sends again): its ask goes with that commit, the hub keeps
  the new hold, nothing is owed.

Default part: about 15-20 s on two workers (all of it; nothing slow).
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.app import till_agent
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import LATE_GRANT_S, Agent
from tillpoint.sync.loopback import LoopbackHub, receipt

from .conftest import ManualClock, PassThroughHub, enrolled_till
from .test_review26_life26 import BIG, CARD, enrolled
from .test_review26_life26 import held_at_hub as held
from .test_review33_hold33 import OFFLINE_LIMIT, held_at_hub
from .test_review44_hold44 import TIMINGS, SecondHeldBack, held_twice
from .test_review44_hold44 import second as second  # the fixture
from .test_review45_ask45 import asks
from .test_review45_ask45 import late_hub as late_hub  # the fixture: hold44's hub, SQLite


class Writes:
    """The write transactions begun on an agent's ledger connection (its only writer)."""

    def __init__(self, agent: Agent) -> None:
        self.begun = 0
        agent._ledger.set_trace_callback(self._seen)

    def _seen(self, sql: str) -> None:
        if sql.strip().upper().startswith("BEGIN"):
            self.begun += 1

    def during(self, call: Any) -> int:
        before = self.begun
        call()
        return self.begun - before


# ------------------------------------------------------------ 1. a sale's writes, as before


def test_a_normal_sale_adds_no_ledger_write(hub: LoopbackHub, tmp_path: Path) -> None:
    """The hot path: ask45 wrote nothing more on a sale the hub answers in time. An ONLINE
    Checkout is the note of its hub request (committed on its own, before the request)
    and the sale's transaction; a Hold the same; a Confirm its one transaction (measured
    the same at 37a2087c, before the change). `_keep_last_ask` writes only when the
    transaction failed, and `forget_committed_hub_asks` only in the hold timer's round."""
    till = enrolled(hub, tmp_path)
    try:
        agent = till.agent
        agent.sweep_holds()  # the clock's line and the first writes of a start, done
        writes = Writes(agent)
        sale = receipt("w-1", CARD, redeem=100, lines=BIG)
        done: list[Any] = []
        assert writes.during(lambda: done.append(agent.checkout(receipt_from_json(sale)))) == 2
        assert (done[0].mode, done[0].redeemed_points) == ("ONLINE", 100)
        hold = receipt("w-2", CARD, redeem=100, lines=BIG)
        assert writes.during(lambda: done.append(agent.hold(receipt_from_json(hold)))) == 2
        assert (done[1].state, done[1].mode) == ("HELD", "ONLINE")
        assert writes.during(lambda: agent.confirm("w-2")) == 1
        assert asks(till.data_dir) == []
    finally:
        till.agent._ledger.set_trace_callback(None)
        till.agent.close()
        till.link.close()
        till.authoriser.close()


# --------------------------------------------- 2. the caller sees its transaction's own error


class Boom(Exception):
    """What the failed write transaction raised (a Conflict, a StorageError: any)."""


def refused(*args: Any, **kwargs: Any) -> None:
    raise Boom("the commit failed")


@pytest.mark.parametrize("what", ["hold", "checkout"])
def test_keep_last_ask_hands_on_the_transactions_own_error_when_its_note_fails(
    hub: LoopbackHub,
    tmp_path: Path,
    what: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Hold or Checkout priced again inside its write transaction (a second request to
    the hub, noted in that transaction) whose transaction then fails; the ledger then
    refuses `_keep_last_ask`'s note too. The POS's call gets the transaction's own
    exception, the same object (not the note's failure, not a wrapper); the early
    pricing's note stands and the hub's grant is released at the next round."""
    clock = ManualClock(datetime.now(UTC))
    till = enrolled(hub, tmp_path, clock=clock)
    boom = Boom("the sale's own failure")
    failed: list[int] = []
    note = ledger.note_hub_ask

    def refusing_note(conn: sqlite3.Connection, rid: str, at: str, pid: int) -> None:
        if failed:  # the note written again after the rollback
            raise sqlite3.OperationalError("disk I/O error")
        note(conn, rid, at, pid)

    def failing(*args: Any, **kwargs: Any) -> Any:
        failed.append(1)
        raise boom

    class Ticks(PassThroughHub):
        def asking(self) -> None:
            clock.advance(1)  # the second request a second after the first

    till.agent.hub = Ticks(till.agent.hub)
    first = ledger.utc_text(clock())
    try:
        with monkeypatch.context() as m:
            m.setattr(Agent, "_still", lambda self, early, view: False)
            m.setattr(ledger, "note_hub_ask", refusing_note)
            if what == "hold":
                m.setattr(ledger, "insert_life", failing)
            else:
                m.setattr(Agent, "_commit", failing)
            call = till.agent.hold if what == "hold" else till.agent.checkout
            with caplog.at_level(logging.WARNING), pytest.raises(Boom) as raised:
                call(receipt_from_json(receipt("k-1", CARD, redeem=100, lines=BIG)))
        assert raised.value is boom
        assert "the note of the last hub request of k-1 was not kept" in caplog.text
        assert asks(till.data_dir) == [("k-1", first)]  # the early pricing's note stands
        assert till.agent._asks.unkept is None and not till.agent._asks.active
        assert held(hub) == 100
        assert till.agent.retry_hub_releases() == 1
        assert held(hub) == 0
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


# ------------------------------------------- 3. the hold's kept note: released once, then gone


class Counted(PassThroughHub):
    """The till's hub link, its releases counted."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.releases: list[str] = []

    def release(self, receipt_id: str) -> bool:
        self.releases.append(receipt_id)
        return bool(self.inner.release(receipt_id))


def test_the_kept_note_goes_with_the_holds_release_once(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11: a Hold priced OFFLINE after asking twice (its row kept beside the
    hold), cancelled by another agent on the data directory: each round while the later
    grant may land sends the receipt's release once (the life's, never the row's beside
    it), counted owed once; past the window the release is done, the row goes with it,
    nothing is owed, and later rounds send nothing for it."""
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS)
    clock = ManualClock(datetime.now(UTC))
    again: Agent | None = None
    try:
        held_twice(a, second, monkeypatch, "twice-1", clock())
        held_at = ledger.receipt_life(a.agent._ledger, "twice-1")
        assert held_at is not None and asks(a.data_dir) == [("twice-1", held_at.held_at)]
        hub = Counted(a.agent.hub)
        a.agent.close()
        again = till_agent(a.data_dir, "a", hub=hub, clock=clock)
        assert again.cancel("twice-1").state == "CANCELLED"
        assert (hub.releases, held_at_hub(late_hub)) == (["twice-1"], 0)
        assert again.hub_calls_owed()["release"] == 1
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the later grant, landed
        assert again.retry_hub_releases() == 0  # dropped, still owed: counted when done
        assert (hub.releases, held_at_hub(late_hub)) == (["twice-1"] * 2, 0)
        assert again.hub_calls_owed()["release"] == 1  # the life's release, not the row's too
        # the window counts from the hold's time (after its last request, ~3 s in)
        clock.now = datetime.fromisoformat(held_at.held_at) + timedelta(seconds=LATE_GRANT_S + 1)
        assert again.retry_hub_releases() == 1  # nothing held, past the window: done
        assert hub.releases == ["twice-1"] * 3
        assert asks(a.data_dir) == []
        assert again.hub_calls_owed() == {"release": 0, "shrink": 0}
        assert again.retry_hub_releases() == 0
        assert hub.releases == ["twice-1"] * 3  # nothing sent again
    finally:
        if again is not None:
            again.close()
        a.link.close()
        a.authoriser.close()


def test_reset_lists_a_hold_with_its_kept_note_once(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reset` releases what the hub may hold for the till: an open OFFLINE hold that
    asked twice (its row kept beside it) is one receipt to release, released once. The
    reset keeps that one row (review 46, reset46: was "forgets the row with the rest"):
    the release stays owed while the hold's second grant may land, for the next round."""
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS)
    try:
        held_twice(a, second, monkeypatch, "twice-2", datetime.now(UTC))
        assert [r for r, _ in asks(a.data_dir)] == ["twice-2"]
        hub = Counted(a.agent.hub)
        a.agent.hub = hub
        result = a.agent.reset(force=True)
        assert (result.hub_holds_released, result.hub_holds_left) == (1, 0)
        assert hub.releases == ["twice-2"]
        assert result.hub_releases_owed == 1
        assert [r for r, _ in asks(a.data_dir)] == ["twice-2"]  # owed past the reset
        assert held_at_hub(late_hub) == 0
    finally:
        second.go.set()
        a.agent.close()
        a.link.close()
        a.authoriser.close()


# ------------------------------------ 4. an ask kept owed never releases a later hold of its id


@pytest.mark.parametrize("what", ["hold", "checkout"])
def test_an_ask_kept_owed_leaves_the_receipt_held_again_under_its_id_alone(
    hub: LoopbackHub, tmp_path: Path, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11: a Hold's commit fails after the hub granted it; the round releases the
    grant and the ask stays owed (a later request of it may still land). The POS sends the
    receipt again under the same id: it is stored ONLINE (held, or checked out), its ask
    goes with that commit, and the rounds after it release nothing of it: the hub keeps the
    new hold (a Hold) until its Confirm, and nothing is owed."""
    clock = ManualClock(datetime.now(UTC))
    till = enrolled(hub, tmp_path, clock=clock)
    body = receipt("again-1", CARD, redeem=100, lines=BIG)
    try:
        with monkeypatch.context() as m:
            m.setattr(ledger, "insert_life", refused)
            with pytest.raises(Boom):
                till.agent.hold(receipt_from_json(body))
        assert held(hub) == 100
        assert till.agent.retry_hub_releases() == 1 and held(hub) == 0
        assert [r for r, _ in asks(till.data_dir)] == ["again-1"]  # still owed
        clock.advance(5)
        call = till.agent.hold if what == "hold" else till.agent.checkout
        done = call(receipt_from_json(body))
        assert (done.mode, done.redeemed_points) == ("ONLINE", 100)
        assert asks(till.data_dir) == []  # gone with the commit
        assert till.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
        till.agent.retry_hub_releases()
        clock.advance(LATE_GRANT_S + 10)  # the old ask's window over
        till.agent.retry_hub_releases()
        if what == "hold":
            assert held(hub) == 100  # the new hold, kept
            assert till.agent.confirm("again-1").state == "CONFIRMED"
        assert till.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()
