"""Review 45 (ask45): the release of a hub ask never stored stays owed while a later
request of its Hold may still land a grant (CONTRACT §11, §9, §13).

Review 44 (rev44h) showed `Agent._release_unstored` take a release that dropped a hold as
final: a Hold whose early pricing was granted, whose pricing again inside its write
transaction sent a second request the hub held up, and whose commit then failed (or whose
till was killed) left its ask; the next round's release dropped the first grant ("released:
true"), the ask was forgotten, and the second grant landed afterwards and was kept for a
receipt no till holds, from every other till, for `holdTtlSeconds` + 60 s. The till cannot
know how many requests an unstored ask made (the count went with the process or with the
failed transaction), so such a release now stays owed, whatever the hub answers, until
`LATE_GRANT_S` after the ask's LAST request (plus the hub's deadline: a request made inside
a killed write transaction lost its note). rev44h's strict xfail now passes
(`tests/test_review44_rev44h.py`).

Pinned here, with a real hub on 127.0.0.1 (SQLite store) and real tills with their ledgers:

- the window counts from the ask's last request: a Hold retried 50 s after a first one
  whose commit failed asks again, and the ask's release 15 s after that retry stays owed
  (from the first request it would have been final); done once 60 s have passed since;
- the note of a request made inside a write transaction that then failed is written again
  on its own (it went with the rollback, and the ledger kept only the early pricing's);
- life26's shape: a till killed after the hub's grant, restarted, its ask's release kept
  owed; the POS then checks the receipt out under the same id: the ask goes with that
  commit, and nothing is counted owed (before, an ask row could be left beside a stored
  receipt, skipped as stored by every round, until the day's cutoff and past it);
- an ask row left beside a committed receipt (noted by a call that then answered the stored
  receipt) is forgotten at the next round, not kept forever;
- hold44's "asked again" note (a Hold priced OFFLINE after asking the hub more than once:
  its release stays owed for `LATE_GRANT_S` whatever the hub answers) is kept in the ledger
  as the hold's ask row, not only in the Hold's process: another agent on the data
  directory (a restart, a one-shot command) and a SIGKILLed and restarted `tillpoint run`
  (slow, real processes; out of CI's pass, its in-process twin stays) keep the release
  owed until the second grant lands and release it.

Default part: about 20 s on two workers (the SIGKILL walk, slow, ~10-30 s more).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent import ledger
from tillpoint.agent.app import till_agent
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import LATE_GRANT_S, Agent
from tillpoint.sync.loopback import LoopbackHub, receipt, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import ManualClock, PassThroughHub, enrolled_till, free_port
from .test_review26_life26 import (
    BIG,
    CARD,
    DEVICE,
    Crash,
    DiesAfterTheGrant,
    enrolled,
    run_config,
    start_run,
)
from .test_review26_life26 import held_at_hub as held
from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, held_at_hub
from .test_review44_hold44 import TIMINGS, SecondHeldBack, held_twice, second_held_hub
from .test_review44_hold44 import second as second  # the fixture


def asks(data_dir: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        rows = conn.execute("SELECT receipt_id, asked_at FROM hub_asks").fetchall()
        return [(str(r), str(a)) for r, a in rows]
    finally:
        conn.close()


def failing_commit(*args: Any, **kwargs: Any) -> None:
    raise sqlite3.OperationalError("disk I/O error")


def lost_hold(till: Any, rid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hold of `rid` (100 points) whose commit fails after the hub granted it."""
    with monkeypatch.context() as m:
        m.setattr(ledger, "insert_life", failing_commit)
        with pytest.raises(Exception):  # noqa: B017  (whatever the failed commit says)
            till.agent.hold(receipt_from_json(receipt(rid, CARD, redeem=100, lines=BIG)))


def test_the_late_grant_window_of_an_unstored_ask_counts_from_its_last_request(
    hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11: a Hold's commit fails after the hub granted it (its ask left); the POS
    sends it again 50 s later, the hub grants again, and that commit fails too. 15 s later
    the till's round releases the grant: the ask stays owed (its last request is 15 s old,
    a later grant of it could still land; counted from the first, 65 s, it was final and
    forgotten). 60 s after the last request the round finds nothing held and is done."""
    clock = ManualClock(datetime.now(UTC))
    till = enrolled(hub, tmp_path, clock=clock)
    try:
        first = ledger.utc_text(clock())
        lost_hold(till, "r-twice", monkeypatch)
        assert asks(till.data_dir) == [("r-twice", first)] and held(hub) == 100
        clock.advance(50)
        last = ledger.utc_text(clock())
        lost_hold(till, "r-twice", monkeypatch)
        assert asks(till.data_dir) == [("r-twice", last)]  # the last request's time
        clock.advance(15)
        assert till.agent.retry_hub_releases() == 1  # the hub dropped the grant
        assert held(hub) == 0
        assert [r for r, _ in asks(till.data_dir)] == ["r-twice"]  # still owed
        assert till.agent.hub_calls_owed()["release"] == 1
        # past the window (60 s and the hub's deadline, 5 s here, after the last request)
        clock.advance(LATE_GRANT_S)
        assert till.agent.retry_hub_releases() == 0  # nothing held: done, not counted
        assert asks(till.data_dir) == []
        assert till.agent.hub_calls_owed()["release"] == 0
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


def test_the_note_of_a_request_made_in_a_failed_write_transaction_is_kept(
    hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hold priced early (its request noted and committed at t), priced again inside its
    write transaction (the early pricing stale) with a second request 2 s later, whose note
    is part of that transaction; the commit fails. The ask keeps the second request's time
    (written again on its own after the rollback), so its release stays owed 60 s from the
    last request the hub may still be working on, not from the first."""
    clock = ManualClock(datetime.now(UTC))
    till = enrolled(hub, tmp_path, clock=clock)
    times: list[str] = []

    class Ticks(PassThroughHub):
        def asking(self) -> None:
            times.append(ledger.utc_text(clock()))  # the note was written at this reading
            clock.advance(2)

    till.agent.hub = Ticks(till.agent.hub)
    try:
        with monkeypatch.context() as m:
            m.setattr(Agent, "_still", lambda self, early, view: False)
            lost_hold(till, "r-again", m)
        assert len(times) == 2 and times[0] < times[1]
        assert asks(till.data_dir) == [("r-again", times[1])]
        assert held(hub) == 100
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


@pytest.mark.parametrize("what", ["hold", "checkout"])
def test_an_ask_kept_owed_is_forgotten_when_its_receipt_is_stored_after_a_restart(
    hub: LoopbackHub, tmp_path: Path, what: str
) -> None:
    """life26's shape: the till dies after the hub's grant (its ask noted, nothing stored);
    restarted, its round releases the grant and keeps the ask owed (a later request may
    still land). The POS then sends the receipt again under the same id and it is stored:
    the ask goes with that commit, nothing is counted owed, and the receipt's own rows say
    what the hub holds (a Hold: its hold, 100 points; a Checkout: settled)."""
    till = enrolled(hub, tmp_path)
    real = till.agent.hub
    till.agent.hub = DiesAfterTheGrant(real)
    body = receipt("r-back", CARD, redeem=100, lines=BIG)
    with pytest.raises(Crash):
        getattr(till.agent, what)(receipt_from_json(body))
    till.agent.close()  # what a SIGKILL leaves: the ledger as committed
    assert held(hub) == 100
    again = till_agent(till.data_dir, DEVICE, hub=real)
    try:
        assert again.retry_hub_releases() == 1
        assert held(hub) == 0
        assert [r for r, _ in asks(till.data_dir)] == ["r-back"]  # owed: a grant may come
        assert again.hub_calls_owed()["release"] == 1
        done = getattr(again, what)(receipt_from_json(body))
        assert done.redeemed_points == 100
        assert asks(till.data_dir) == []
        assert again.hub_calls_owed()["release"] == 0
        assert again.retry_hub_releases() == 0
        assert held(hub) <= 100  # the stored receipt's own grant, nothing more
    finally:
        again.close()
        till.link.close()
        till.authoriser.close()


def test_an_ask_left_beside_a_committed_receipt_is_forgotten_at_the_next_round(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """An ask row whose receipt is committed (noted by a call that then answered what was
    stored) was listed by no round (`unstored_hub_asks` skips stored receipts) and released
    by none: it stayed in the ledger forever. A committed receipt is never held again and
    its transaction settled the hub's hold: the next round forgets the row and sends nothing
    for it. An ask of a receipt not stored is untouched by that."""
    till = enrolled(hub, tmp_path)
    try:
        sold = till.agent.checkout(receipt_from_json(receipt("r-sold", CARD, redeem=10, lines=BIG)))
        assert sold.state == "CONFIRMED"
        with sqlite3.connect(till.data_dir / "ledger.db") as conn:
            ledger.note_hub_ask(conn, "r-sold", ledger.utc_text(datetime.now(UTC)), 1)
            ledger.note_hub_ask(conn, "r-open", ledger.utc_text(datetime.now(UTC)), 1)
        till.agent.retry_hub_releases()
        assert [r for r, _ in asks(till.data_dir)] == ["r-open"]  # pid 1 still runs: later
        assert till.agent.hub_calls_owed()["release"] == 0
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


# ------------------------------------------- 3. hold44's "asked again" note, kept in the ledger


@pytest.fixture(params=["sqlite"])
def late_hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    second: SecondHeldBack,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LoopbackHub]:
    """hold44's hub: a receipt's second authorisation held back at the store until `go`
    and past its deadline."""
    yield from second_held_hub(request, tmp_path, second, monkeypatch)


def test_the_asked_again_note_is_kept_in_the_ledger_for_another_process(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11, the short twin of the SIGKILL walk below: a Hold that asked the hub
    twice is priced OFFLINE (its second request held up); its process ends (a one-shot
    `tillpoint hold`, a restart) and another agent on the data directory cancels it. The
    release drops the first grant ("released"); it stays owed, the second grant lands, and
    that agent's next round releases it: another till then gets all 1200 ONLINE. Until
    review 45 the note lived in the Hold's process only (hold44): the other process took
    the first answer as final and the 200 stayed held at the hub."""
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS)
    b = enrolled_till(late_hub, tmp_path / "b", "b", timings=TIMINGS)
    real = a.agent.hub
    again: Agent | None = None
    try:
        held_twice(a, second, monkeypatch, "twice-1", datetime.now(UTC))
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the first grant, shrunk
        assert [r for r, _ in asks(a.data_dir)] == ["twice-1"]  # kept beside the hold
        assert a.agent.hub_calls_owed()["release"] == 0  # an open hold owes none
        a.agent.close()  # the Hold's process ends: what it remembered goes with it
        again = till_agent(a.data_dir, "a", hub=real)
        assert again._asked_again == {}
        assert again.cancel("twice-1").state == "CANCELLED"  # drops it: answered true
        assert held_at_hub(late_hub) == 0
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the second grant, past the deadline
        assert again.hub_calls_owed()["release"] == 1  # still owed, counted once
        again.retry_hub_releases()
        assert held_at_hub(late_hub) == 0
        other = b.agent.hold(a_receipt("b-1"))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 1200)
    finally:
        if again is not None:
            again.close()
        a.link.close()
        a.authoriser.close()
        b.stop()


@pytest.mark.slow  # two starts of `tillpoint run`: about 15 s
def test_the_asked_again_note_outlives_a_sigkilled_run(
    late_hub: LoopbackHub, tmp_path: Path, second: SecondHeldBack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11 with real `tillpoint run` processes: the Hold that asked twice (priced
    OFFLINE, its second request held up at the hub) is made by another process (this
    test's agent, then closed); `tillpoint run` on the data directory takes the POS's
    Cancel (gRPC): its release drops the first grant. `run` is SIGKILLed and started
    again; the second grant then lands, and the restarted `run`'s hold timer releases it
    (the release stayed owed in the ledger): the hub ends holding nothing."""
    data_dir = tmp_path / "till"
    a = enrolled_till(late_hub, data_dir, DEVICE, timings=TIMINGS)
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()
    cfg = run_config(tmp_path, data_dir, late_hub, port)
    log = tmp_path / "agent.log"
    try:
        held_twice(a, second, monkeypatch, "twice-1", datetime.now(UTC))
        assert held_at_hub(late_hub) == OFFLINE_LIMIT
        a.stop()
        procs.append(start_run(cfg, log))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.PosAgentStub(channel)
            done = stub.Cancel(pb.CancelRequest(receipt_id="twice-1"), timeout=30)
            assert done.state == pb.CANCELLED
        assert held_at_hub(late_hub) == 0  # the first grant dropped
        procs[0].send_signal(signal.SIGKILL)
        assert procs[0].wait(timeout=10) == -signal.SIGKILL
        procs.append(start_run(cfg, log))
        second.go.set()
        assert second.done.wait(30)
        # the second grant landed (the restarted run's round may already have released
        # it); its hold timer releases it within a round (15 s)
        wait_for(lambda: held_at_hub(late_hub) == 0, timeout=40, every=0.2)
    finally:
        second.go.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
