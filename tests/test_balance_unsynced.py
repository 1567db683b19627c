"""A balance reads only the point rows the snapshot has not counted (the contract §3).

Rows are never deleted from a till's ledger, so a balance that read the customer's whole
history made every sale of a busy card (a store's house card, offline or not) slower than
the one before. These tests hold the balance to the plain replay over a real ledger, and
count SQLite's steps to show the synced history is not read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent import ledger
from tillpoint.agent.expiry import Tally, utc_text
from tillpoint.agent.models import Customer, PendingPoints, Program

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DEVICES = ("till-a", "till-b", "till-c")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = ledger.open_ledger(tmp_path)
    yield c
    c.close()


def _insert(
    conn: sqlite3.Connection, rows: list[tuple[str, int, str, int, int | None, bool]]
) -> None:
    conn.execute("BEGIN")
    conn.execute("DELETE FROM points")
    conn.executemany(
        "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
        " activates_at, expires_at) VALUES (?, ?, 'c1', ?, ?, ?, ?, ?)",
        [
            (
                device,
                seq,
                f"r{device}{seq}",
                kind,
                points,
                None if hours is None else utc_text(AT + timedelta(hours=hours)),
                utc_text(AT + timedelta(days=30)) if expires else None,
            )
            for device, seq, kind, points, hours, expires in rows
        ],
    )
    conn.execute("COMMIT")


def _replay(
    conn: sqlite3.Connection, customer: Customer, applied: dict[str, int]
) -> tuple[int, int]:
    """The plain rule: every unsynced row of the customer through one Tally."""
    tally = Tally(AT, customer.balance_points)
    for entry in customer.pending:
        tally.add("earn", entry.points, entry.activates_at)
    for device, seq, kind, points, activates in conn.execute(
        "SELECT device_id, seq, kind, points, activates_at FROM points WHERE customer_id = 'c1'"
    ):
        if seq > applied.get(device, 0):
            tally.add(kind, points, activates)
    return tally.available, tally.pending


def _active_take_back(
    r: tuple[str, int, str, int, int | None, bool],
) -> tuple[str, int, str, int, int | None, bool]:
    """A negative earn (a refund's take-back while its sale's points are pending) still
    pending at AT is no plain sum: it comes off the snapshot's pending entry, else off
    the batch a snapshot shows its points in (review 50; the test below and
    tests/test_review50_ref50.py). Here it is made one that activated before AT."""
    device, seq, kind, points, hours, expires = r
    if kind == "earn" and points < 0 and hours is not None and hours > 0:
        hours = -hours
    return (device, seq, kind, points, hours, expires)


row = st.tuples(
    st.sampled_from(DEVICES),
    st.integers(1, 40),
    st.sampled_from(["spend", "earn"]),
    st.integers(-500, 500),
    st.one_of(st.none(), st.integers(-48, 48)),
    st.just(False),
).map(_active_take_back)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(row, max_size=30),
    applied=st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 40), max_size=3),
    base=st.integers(0, 10_000),
    pending=st.lists(st.tuples(st.integers(1, 100), st.integers(-48, 48)), max_size=2),
)
def test_the_balance_is_the_replay_of_the_unsynced_rows(
    conn: sqlite3.Connection,
    rows: list[tuple[str, int, str, int, int | None, bool]],
    applied: dict[str, int],
    base: int,
    pending: list[tuple[int, int]],
) -> None:
    _insert(conn, rows)
    customer = Customer(
        id="c1",
        balance_points=base,
        pending=tuple(
            PendingPoints(points=p, activates_at=AT + timedelta(hours=h)) for p, h in pending
        ),
    )
    for program in (None, Program()):
        points = ledger.balance(conn, customer, applied, AT, program)
        assert (points.available, points.pending) == _replay(conn, customer, applied)


def test_a_take_back_still_pending_is_replayed_batch_by_batch(conn: sqlite3.Connection) -> None:
    """A sale earned 30 pending until AT + 72 h; its refund took them back while pending
    (an earn of -30 with the same activation, seq 2). Points never expire. Whatever the
    snapshot counted, Boris has 80 at AT and nothing pending: the sale uncounted (80 +
    30 - 30 pending); counted with its points pending (80, a `pending` entry of 30); or
    counted by a snapshot published after they activated (110, no entry: the take-back
    comes off the balance; the sum said 110 available and -30 pending, review 50)."""
    later = AT + timedelta(hours=72)
    _insert(conn, [("till-a", 1, "earn", 30, 72, False), ("till-a", 2, "earn", -30, 72, False)])
    entry = (PendingPoints(points=30, activates_at=later),)
    for base, pending, applied in [
        (80, (), {}),
        (80, entry, {"till-a": 1}),
        (110, (), {"till-a": 1}),
    ]:
        customer = Customer(id="c1", balance_points=base, pending=pending)
        points = ledger.balance(conn, customer, applied, AT, Program())
        assert (points.available, points.pending) == (80, 0), (base, pending, applied)
        points = ledger.balance(conn, customer, applied, later, Program())
        assert (points.available, points.pending) == (80, 0), (base, pending, applied)


def test_rows_that_expire_are_replayed_batch_by_batch(conn: sqlite3.Connection) -> None:
    # An earned batch with an expiry sends the balance to the wallet; only unsynced rows.
    _insert(
        conn,
        [
            ("till-a", 1, "earn", 100, -10, True),  # counted by the snapshot
            ("till-a", 2, "earn", 40, -5, True),
            ("till-a", 3, "spend", -15, None, False),
        ],
    )
    customer = Customer(id="c1", balance_points=100)
    points = ledger.balance(conn, customer, {"till-a": 1}, AT, Program())
    assert (points.available, points.pending) == (125, 0)
    assert points.expiring and sum(p for p, _ in points.expiring) <= 140


def _steps(conn: sqlite3.Connection, customer: Customer, applied: dict[str, int]) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 10)
    try:
        ledger.balance(conn, customer, applied, AT, Program())
    finally:
        conn.set_progress_handler(None, 0)
    return steps


def test_the_synced_history_is_not_read(conn: sqlite3.Connection) -> None:
    customer = Customer(id="c1")
    recent = [("till-b", s, "earn", 5, -1, False) for s in range(1, 11)]
    _insert(conn, recent)
    without_history = _steps(conn, customer, {"till-a": 5_000})
    history = [("till-a", s, "earn", 5, -1, False) for s in range(1, 5_001)]
    _insert(conn, history + recent)
    with_history = _steps(conn, customer, {"till-a": 5_000})
    assert ledger.balance(conn, customer, {"till-a": 5_000}, AT).available == 50
    # 5,000 rows read would be tens of thousands of steps; an index seek is a handful.
    assert with_history < without_history + 50, (without_history, with_history)
    all_unsynced = _steps(conn, customer, {})
    assert all_unsynced > with_history * 20
