"""Review 39 (rev39e): rev39c (the holds of the boot before) and rev39b (a one-shot's
stdout, gRPC's verbosity) read again with fresh eyes (CONTRACT §10, §11, §16). Each test
marked "failed before the fix" did; the others pin what was checked and found right.
Real parts: real SQLite files, this release's ledger, real processes and sockets where
the behaviour is a process's.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent import db, ledger
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import SteppingClock, snapshot
from .test_review31_long31 import DEVICE, _sale
from .test_review38_rev38h import _hold, _lived
from .test_review39_rev39c import _a_hold_made, _started_while_busy


def _device(data: Path, key: str) -> str | None:
    conn = sqlite3.connect(data / "ledger.db", isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM device WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def _boot_before(data: Path) -> tuple[datetime, Path]:
    """A ledger with a hold "h-1" of a boot before this one still open."""
    boot1 = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data.mkdir(parents=True, exist_ok=True)
    before = Agent(data, DEVICE, clock=boot1, monotonic=boot1.steady)
    try:
        before.load_snapshot(snapshot())
        made1 = _hold(before, "h-1", boot1)
    finally:
        before.close()
    return made1, data


# ---------------------------------- 1. a step between the reboot and the boot's first line


def test_a_step_before_the_first_line_another_process_wrote_is_not_followed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11 (a hold lives `holdTtlSeconds` of time that passes). The till
    restarts with a hold of the boot before open; `run` starts while another process is in
    a write transaction (its start writes no line: never waited for) and reads the clock
    (a quote). The wall clock is then set an hour back, before any line of this boot is
    written. A one-shot `hold --local` started after the step writes the boot's first line
    on the clock as it reads now and holds h-2 on it. `run`'s next call, before its timer
    takes the ledger's line again, tells the step from its own reading. h-2 keeps its 30
    minutes (the ledger's line says its holds are on the clock as it reads: nothing to
    move); h-1 keeps its stored expiry. Failed before the fix: `run` moved h-2 an hour
    back, expired at once at the till while the hub held its points for 31 minutes."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 120_000)
    made1, data = _boot_before(tmp_path / "till")
    boot2 = SteppingClock(made1 + timedelta(minutes=2))
    run = _started_while_busy(data, boot2)
    try:
        assert _device(data, ledger.CLOCK_LINE) is not None
        first = _device(data, ledger.CLOCK_LINE)
        run.quote(receipt_from_json(_sale("q-1", boot2(), redeemPoints=0)))  # run's reading
        assert _device(data, ledger.CLOCK_LINE) == first, "a quote writes no line"
        boot2.passes(5)
        boot2.stepped(-3600.0)
        one_shot = Agent(data, DEVICE, clock=boot2, monotonic=boot2.steady)
        try:
            assert _device(data, ledger.CLOCK_LINE) != first, "the one-shot wrote the line"
            made2 = _hold(one_shot, "h-2", boot2)
        finally:
            one_shot.close()
        boot2.passes(5)
        run.quote(receipt_from_json(_sale("q-2", boot2(), redeemPoints=0)))
        run.sweep_holds()
        assert _lived(data, "h-2", made2)[:2] == ("HELD", 1800.0)
        assert _lived(data, "h-1", made1)[:2] == ("HELD", 1800.0)
        retried = run.hold(receipt_from_json(_sale("h-2", made2, redeemPoints=0)))
        answered = datetime.fromisoformat(retried.to_json()["holdExpiresAt"])
        assert answered == made2 + timedelta(seconds=1800)
    finally:
        run.close()


def test_a_ledger_without_a_line_has_its_holds_moved_by_a_step_before_the_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11 (decision written there: a ledger with no time line at all, of a
    release before review 38's, has its open holds moved by the first boot's steps). A
    hold made by review 37's release (same schema, no line kept); this release's `run`
    starts on that boot while another process is in a write transaction (no line
    written), reads the clock (a quote), and the wall clock is set an hour forward: the
    step's own write transaction writes the boot's first line on the clock the holds are
    on (the step not followed yet), and moves `h-1` by it. Pins the fix above: a first
    line written there on the clock as it reads after the step says the holds are on it
    already, and `h-1` would keep its expiry of before the step (expired an hour early)."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 120_000)
    data = tmp_path / "till"
    clock, made = _a_hold_made(data)
    conn = sqlite3.connect(data / "ledger.db", isolation_level=None)
    try:  # review 37's release kept no line
        conn.execute("DELETE FROM device WHERE key LIKE 'clock_line%'")
    finally:
        conn.close()
    clock.passes(60)
    run = _started_while_busy(data, clock)
    try:
        assert _device(data, ledger.CLOCK_LINE) is None, "the busy start wrote no line"
        run.quote(receipt_from_json(_sale("q-1", clock(), redeemPoints=0)))
        clock.passes(5)
        clock.stepped(3600.0)
        run.sweep_holds()
        assert _lived(data, "h-1", made)[:2] == ("HELD", 1800.0 + 3600.0)
        assert _device(data, ledger.CLOCK_LINE_BEFORE) is None, "no boot before to list"
        assert run.confirm("h-1").state == "CONFIRMED"
    finally:
        run.close()


# ---------------------------------- 2. the list of the boot before, read against this boot's


def test_a_listed_receipt_held_again_at_the_same_instant_text_moves_with_this_boots_steps(
    tmp_path: Path,
) -> None:
    """CONTRACT §11. The boot's first line lists the holds of the boot before by
    receiptId and the time they were held. `h-1` of the boot before expires on this boot,
    the wall clock is set an hour back (to the very microsecond `h-1` was held at), and
    the POS holds `h-1` again: a hold of this boot, its `held_at` the same text as the
    listed one's. A step of this boot then moves it like any hold of this boot. Failed
    before the fix: read as the boot before's (the pair matched), it kept its wall-clock
    expiry through the step (10 minutes too long at the till after +600 s). The list now
    loses a receipt whose expired row is replaced (`ledger.forget_life`)."""
    made1, data = _boot_before(tmp_path / "till")
    boot2 = SteppingClock(made1 + timedelta(hours=1))
    run = Agent(data, DEVICE, clock=boot2, monotonic=boot2.steady)
    try:
        run.sweep_holds()
        assert _lived(data, "h-1", made1)[0] == "EXPIRED"
        listed = json.loads(_device(data, ledger.CLOCK_LINE_BEFORE) or "{}")
        assert [rid for rid, _ in listed["holds"]] == ["h-1"]
        boot2.stepped(-3600.0)
        run.sweep_holds()
        assert boot2() == made1
        assert _hold(run, "h-1", boot2) == made1
        boot2.passes(20)
        boot2.stepped(600.0)
        run.sweep_holds()
        assert _lived(data, "h-1", made1)[:2] == ("HELD", 1800.0 + 600.0)
        assert json.loads(_device(data, ledger.CLOCK_LINE_BEFORE) or "{}")["holds"] == []
    finally:
        run.close()


def test_three_boots_in_a_row_the_third_lists_the_first_and_the_seconds_holds(
    tmp_path: Path,
) -> None:
    """CONTRACT §11. A hold of boot 1 open through boot 2 (which lists it and holds h-2)
    and into boot 3: boot 3's first line lists both (the list of boot 2 replaced), a
    step of boot 3 moves neither and moves boot 3's own h-3; boot 2's list says nothing
    on boot 3. Each keeps its 30 minutes as stored, and each confirms once. Checked,
    found right."""
    made1, data = _boot_before(tmp_path / "till")
    boot2 = SteppingClock(made1 + timedelta(minutes=2))
    second = Agent(data, DEVICE, clock=boot2, monotonic=boot2.steady)
    try:
        made2 = _hold(second, "h-2", boot2)
        listed2 = json.loads(_device(data, ledger.CLOCK_LINE_BEFORE) or "{}")
        assert [rid for rid, _ in listed2["holds"]] == ["h-1"]
    finally:
        second.close()
    boot3 = SteppingClock(made2 + timedelta(minutes=3))
    third = Agent(data, DEVICE, clock=boot3, monotonic=boot3.steady)
    try:
        listed3 = json.loads(_device(data, ledger.CLOCK_LINE_BEFORE) or "{}")
        assert listed3["boot"] != listed2["boot"]
        assert [rid for rid, _ in listed3["holds"]] == ["h-1", "h-2"]
        made3 = _hold(third, "h-3", boot3)
        boot3.passes(20)
        boot3.stepped(-600.0)
        third.sweep_holds()
        assert _lived(data, "h-1", made1)[:2] == ("HELD", 1800.0)
        assert _lived(data, "h-2", made2)[:2] == ("HELD", 1800.0)
        assert _lived(data, "h-3", made3)[:2] == ("HELD", 1800.0 - 600.0)
        for rid in ("h-1", "h-2", "h-3"):
            assert third.confirm(rid).state == "CONFIRMED"
    finally:
        third.close()
