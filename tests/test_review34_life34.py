"""Review 34 (life34): the expiry of points a till earned is the one its commit fixed, at
the hub as on the till (CONTRACT §16: "the expiry of earned points is fixed at commit";
§5 step 6: the rules "in force when the receipt was committed").

The hub rebuilt every customer's batches with the `pointsLifetimeDays` of the program it
held when it answered: a lifetime published later dated the points tills had earned
before it. Points earned while nothing expired got an expiry (and could be gone at once),
points earned under 30 days kept for 90 days or for ever, at the hub (`hub balance`, the
live balance of an online redemption) and, from its next snapshot (`balancePoints`,
`expiring`), on every till. A till's pushed transaction now says when the batch its
commit earned expires (`Transaction.earned_expires_at`, "never" when it does not); the
hub dates the batch with it, and with the lifetime it holds only for a transaction of an
older till that does not say.

A real reference hub (gRPC over mTLS on a loopback port; its SQLite store, or a
PostgreSQL database of the tests' throwaway cluster) and two enrolled tills driven
through `tillpoint`'s command line (`tests/test_review34_spec34c.py`'s `Chain`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data

from tests.test_review34_spec34c import BIG, BORIS, Chain

EARNED = 269  # Boris (base, 3 %) on BIG: 899,000 minor × 3 % / 100 = 269.7


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The hub's store: its SQLite file, or a fresh database of the tests' cluster."""
    if request.param == "postgresql":
        from tillpoint.sync.hub_postgres import migrate

        url = request.getfixturevalue("pg_cluster").new_database()
        migrate(url)  # as `tillpoint hub migrate` does before a hub starts
        monkeypatch.setenv("TILLPOINT_HUB_STORE", url)
    return str(request.param)


@contextmanager
def chain_of(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, lifetime: int
) -> Iterator[Chain]:
    """A hub whose program says `pointsLifetimeDays` `lifetime`, and its two tills."""
    data = sample_master_data()
    data["program"].update(holdTtlSeconds=1, pointsLifetimeDays=lifetime)
    hub = LoopbackHub(tmp / "hub", data=data)
    c = Chain(tmp, hub, monkeypatch)
    c.capsys = capsys
    try:
        for till in ("till-1", "till-2"):
            hub.enroll(till, tmp / till)
            assert c.ok(till, "sync", "now")["pull"]["status"] == "APPLIED"
        yield c
    finally:
        hub.stop()


def publish_lifetime(c: Chain, days: int) -> None:
    program = sample_master_data()["program"]
    program.update(holdTtlSeconds=1, pointsLifetimeDays=days)
    c.ok(None, "hub", "import", {"program": program}, "--publish")


def figures(c: Chain, till: str, at: datetime) -> tuple[int, list[Any], int, list[Any]]:
    """(available, expiring) at `at` on `till` and at the hub."""
    when = at.isoformat()
    mine = c.ok(till, "balance", BORIS, "--at", when)
    hubs = c.ok(None, "hub", "balance", "c-2", "--at", when)
    return (
        int(mine["availablePoints"]),
        [(int(e["points"]), e["expiresAt"]) for e in mine.get("expiring", [])],
        int(hubs["availablePoints"]),
        [(int(e["points"]), e["expiresAt"]) for e in hubs.get("expiring", [])],
    )


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.mark.parametrize("new_lifetime", [0, 90])
def test_points_earned_under_30_days_keep_that_expiry_when_the_lifetime_changes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: str,
    new_lifetime: int,
) -> None:
    """CONTRACT §16: a sale committed under `pointsLifetimeDays` 30 earns a batch that
    expires 30 days after it, whatever lifetime the hub publishes later (0: nothing
    earned from then on expires; 90). The till, the hub's balance, its next snapshot
    (what the other till counts) and the live balance an online redemption is granted
    from all say so. The hub dated the old batch with the new lifetime: with 0 it never
    expired there (and on every till after the next pull), with 90 it lasted 90 days."""
    assert store
    with chain_of(tmp_path, monkeypatch, capsys, lifetime=30) as c:
        now = datetime.now(UTC)
        assert (
            c.ok("till-1", "checkout", receipt("r-1", BORIS, lines=BIG))["earnedPoints"] == EARNED
        )
        assert c.ok("till-1", "sync", "now")["pushed"] == 1
        publish_lifetime(c, new_lifetime)
        c.ok("till-1", "sync", "now")
        assert (
            c.ok("till-1", "checkout", receipt("r-2", BORIS, lines=BIG))["earnedPoints"] == EARNED
        )
        assert c.ok("till-1", "sync", "now")["pushed"] == 1
        c.ok(None, "hub", "publish")
        for till in ("till-1", "till-2"):  # both count the hub's snapshot now
            c.ok(till, "sync", "now")

        soon = now + timedelta(days=20)
        till, listed, hub, hub_listed = figures(c, "till-1", soon)
        assert till == hub == 300 + 2 * EARNED
        first = [e for e in listed if e[0] == EARNED]
        assert first and now + timedelta(days=29) < instant(first[0][1]) < now + timedelta(days=31)
        assert [(p, instant(e)) for p, e in hub_listed] == [(p, instant(e)) for p, e in listed]
        assert figures(c, "till-2", soon)[0] == till  # from the snapshot alone

        later = now + timedelta(days=40)  # r-1's batch is gone; r-2's is not
        for name in ("till-1", "till-2"):
            till, _, hub, _ = figures(c, name, later)
            assert till == hub == 300 + EARNED, name
        if new_lifetime == 90:
            assert figures(c, "till-1", now + timedelta(days=100))[2] == 300

        # the live balance an online redemption is granted from, 40 days on
        sold = c.ok("till-2", "checkout", receipt("r-3", BORIS, at=later, redeem=-1, lines=BIG))
        assert (sold["mode"], sold["redeemedPoints"]) == ("ONLINE", 300 + EARNED)


def test_points_earned_while_nothing_expired_never_expire_at_a_postgresql_hub_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """CONTRACT §16 (the other direction, on both stores): points earned while
    `pointsLifetimeDays` is 0 never expire when the hub publishes 30 days later; the
    points earned after it do, 30 days after their sale."""
    assert store
    with chain_of(tmp_path, monkeypatch, capsys, lifetime=0) as c:
        now = datetime.now(UTC)
        c.ok("till-1", "checkout", receipt("r-1", BORIS, lines=BIG))
        c.ok("till-1", "sync", "now")
        publish_lifetime(c, 30)
        c.ok("till-1", "sync", "now")
        c.ok("till-1", "checkout", receipt("r-2", BORIS, lines=BIG))
        c.ok("till-1", "sync", "now")
        c.ok(None, "hub", "publish")
        c.ok("till-2", "sync", "now")
        for name in ("till-1", "till-2"):
            till, _, hub, _ = figures(c, name, now + timedelta(days=40))
            assert till == hub == 300 + EARNED, name
            till, listed, hub, hub_listed = figures(c, name, now + timedelta(days=1))
            assert till == hub == 300 + 2 * EARNED
            assert [p for p, _ in listed] == [p for p, _ in hub_listed] == [EARNED]
