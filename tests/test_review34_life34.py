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

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data

from tests.test_review34_spec34c import BIG, BORIS, Chain

EARNED = 269  # Boris (base, 3 %) on BIG: 899,000 minor × 3 % / 100 = 269.7


@pytest.fixture(params=["sqlite", "postgresql"])
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


def figures(c: Chain, till: str, at: datetime) -> tuple[int, list[Any], int]:
    """(available, expiring) at `at` on `till`, and available at the hub."""
    when = at.isoformat()
    mine = c.ok(till, "balance", BORIS, "--at", when)
    hub = c.ok(None, "hub", "balance", "c-2", "--at", when)["availablePoints"]
    listed = [(int(e["points"]), instant(e["expiresAt"])) for e in mine.get("expiring", [])]
    return int(mine["availablePoints"]), listed, int(hub)


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
        till, listed, hub = figures(c, "till-1", soon)
        assert till == hub == 300 + 2 * EARNED
        expected = [30] + ([90] if new_lifetime == 90 else [])
        assert [p for p, _ in listed] == [EARNED] * len(expected)
        for (_, moment), days in zip(listed, expected, strict=True):
            assert now + timedelta(days=days) <= moment <= now + timedelta(days=days, hours=1)
        assert figures(c, "till-2", soon) == (till, listed, hub)  # the snapshot's alone

        later = now + timedelta(days=40)  # r-1's batch is gone; r-2's is not
        for name in ("till-1", "till-2"):
            till, _, hub = figures(c, name, later)
            assert till == hub == 300 + EARNED, name
        if new_lifetime == 90:
            assert figures(c, "till-2", now + timedelta(days=100))[::2] == (300, 300)

        # the live balance an online redemption is granted from, 40 days on
        sold = c.ok("till-2", "checkout", receipt("r-3", BORIS, at=later, redeem=-1, lines=BIG))
        assert (sold["mode"], sold["redeemedPoints"]) == ("ONLINE", 300 + EARNED)


def test_points_earned_while_nothing_expired_never_expire_on_either_hub_store(
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
        listed_at = []
        for name in ("till-1", "till-2"):
            till, _, hub = figures(c, name, now + timedelta(days=40))
            assert till == hub == 300 + EARNED, name
            till, listed, hub = figures(c, name, now + timedelta(days=1))
            assert till == hub == 300 + 2 * EARNED
            listed_at.append(listed)
        assert listed_at[0] == listed_at[1]  # r-2's batch alone, on both tills
        assert [p for p, _ in listed_at[0]] == [EARNED]


def test_points_pending_at_their_sale_keep_the_expiry_their_commit_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CONTRACT §16 with `activationDelayDays` 1: two sales dated two days ago (spendable
    since yesterday), the first while nothing expired, the second under 30 days. Both
    reach the hub as pending points (`pendingActivatesAt`); the hub dates the first
    "never" and the second 30 days after it became spendable, as the till did, in its
    balance and in the snapshot the other till counts."""
    with chain_of(tmp_path, monkeypatch, capsys, lifetime=0) as c:
        program = sample_master_data()["program"]
        program.update(holdTtlSeconds=1, activationDelayDays=1)
        c.ok(None, "hub", "import", {"program": program}, "--publish")
        c.ok("till-1", "sync", "now")
        now = datetime.now(UTC)
        sold = now - timedelta(days=2)
        c.ok("till-1", "checkout", receipt("r-1", BORIS, at=sold, lines=BIG))
        c.ok("till-1", "sync", "now")
        program.update(pointsLifetimeDays=30)
        c.ok(None, "hub", "import", {"program": program}, "--publish")
        c.ok("till-1", "sync", "now")
        c.ok("till-1", "checkout", receipt("r-2", BORIS, at=sold, lines=BIG))
        c.ok("till-1", "sync", "now")
        c.ok(None, "hub", "publish")
        c.ok("till-2", "sync", "now")
        till, listed, hub = figures(c, "till-2", now + timedelta(days=20))
        assert till == hub == 300 + 2 * EARNED
        assert [p for p, _ in listed] == [EARNED]
        assert sold + timedelta(days=31) <= listed[0][1] <= sold + timedelta(days=31, hours=1)
        assert figures(c, "till-1", now + timedelta(days=20)) == (till, listed, hub)
        for name in ("till-1", "till-2"):
            till, _, hub = figures(c, name, now + timedelta(days=40))
            assert till == hub == 300 + EARNED, name


def test_a_refund_gives_back_into_and_takes_back_from_the_batches_as_their_commit_dated_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CONTRACT §16: r-1 earns 269 under 30 days; the hub then holds 0. r-2 spends all of
    Boris's points (r-1's batch first, it expires soonest) and earns 252 that never
    expire; r-2's refund gives the 569 back to the batches they came from (269 into
    r-1's, still expiring 30 days after r-1) and takes its 252 back off its own batch.
    Forty days on, the tills and the hub agree: 300, r-1's points gone."""
    with chain_of(tmp_path, monkeypatch, capsys, lifetime=30) as c:
        now = datetime.now(UTC)
        c.ok("till-1", "checkout", receipt("r-1", BORIS, lines=BIG))
        c.ok("till-1", "sync", "now")
        publish_lifetime(c, 0)
        c.ok("till-1", "sync", "now")
        spent = c.ok("till-1", "checkout", receipt("r-2", BORIS, redeem=-1, lines=BIG))
        # it earns on what is paid in money: 842,100 minor × 3 % / 100 = 252.63
        assert (spent["redeemedPoints"], spent["earnedPoints"]) == (300 + EARNED, 252)
        back = {
            "refundId": "f-2",
            "receiptId": "r-2",
            "at": (now + timedelta(minutes=1)).isoformat(),
            "lines": [{"sku": BIG[0]["sku"], "qty": "100"}],
        }
        refunded = c.ok("till-1", "refund", back)
        assert refunded["returnedPoints"] == 300 + EARNED
        c.ok("till-1", "sync", "now")
        c.ok(None, "hub", "publish")
        c.ok("till-2", "sync", "now")
        soon = now + timedelta(days=1)
        till, listed, hub = figures(c, "till-1", soon)
        assert till == hub == 300 + EARNED
        assert [p for p, _ in listed] == [EARNED]
        assert now + timedelta(days=30) <= listed[0][1] <= now + timedelta(days=30, hours=1)
        assert figures(c, "till-2", soon) == (till, listed, hub)
        for name in ("till-1", "till-2"):
            till, _, hub = figures(c, name, now + timedelta(days=40))
            assert till == hub == 300, name


# ---------------------------------------------------------------- the hub's stores


NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
WEEK = 7 * 86400.0
SOLD = "2026-11-23T10:15:00+03:00"


def sale(
    seq: int,
    earned: int,
    expires: str = "",
    *,
    pending: str = "",
    result: dict[str, Any] | None = None,
) -> Any:
    """A sale of c-1 at `SOLD` that earned `earned` points (at once, or pending until
    `pending`), its till saying the batch expires at `expires` ("": an older till)."""
    from tillpoint.sync.hub_store import TxIn

    return TxIn(
        "till-1",
        seq,
        "CHECKOUT",
        SOLD,
        "c-1",
        "",
        json.dumps({"receiptId": f"r-{seq}"}),
        json.dumps(result if result is not None else {"earnedPoints": earned}),
        0 if pending else earned,
        earned if pending else 0,
        pending,
        earned_expires_at=expires,
    )


def hub_of(factory: Any, lifetime: int) -> Any:
    from tillpoint.sync.loopback import import_doc

    hub = factory()
    data = sample_master_data()
    data["program"]["pointsLifetimeDays"] = lifetime
    import_doc(hub, data)  # c-1: 1,200 points that never expire
    hub.publish(NOW - timedelta(days=1), WEEK)
    return hub


def lifetime_now(hub: Any, days: int) -> None:
    from tillpoint.sync.loopback import import_doc

    program = sample_master_data()["program"]
    program["pointsLifetimeDays"] = days
    import_doc(hub, {"program": program})


def c1(hub: Any, at: datetime) -> tuple[int, list[tuple[int, datetime]]]:
    """c-1's balancePoints and expiring in a snapshot published at `at`."""
    version = hub.publish(at, WEEK).version
    row = next(c for c in hub.snapshot_doc(version, 0)["customers"] if c["id"] == "c-1")
    listed = [(e["points"], instant(e["expiresAt"])) for e in row.get("expiring", [])]
    return int(row["balancePoints"]), listed


def test_the_hub_dates_each_sale_with_the_expiry_its_till_sent_and_older_ones_by_its_rule(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §16: the hub holds 30 days. A sale whose till said "never" (committed
    while nothing expired) never expires; one whose till said 3 December expires then
    (committed under 10 days); one from an older till, which says nothing, expires 30
    days after it by the hub's own rule, and once the hub holds 0 never, as before. A
    refund taking back part of the "never" sale's points takes them off that batch."""
    hub = hub_of(hub_store_factory, lifetime=30)
    dec3 = "2026-12-03T10:15:00+03:00"
    result = hub.ingest("till-1", "", [sale(1, 100, "never"), sale(2, 50, dec3), sale(3, 20)], NOW)
    assert [r.outcome for r in result.results] == ["STORED"] * 3
    day30 = instant("2026-12-23T10:15:00+03:00")
    assert c1(hub, NOW + timedelta(days=1)) == (1370, [(50, instant(dec3)), (20, day30)])
    assert hub.balance("c-1", instant(dec3) + timedelta(seconds=1)).available == 1320
    assert hub.balance("c-1", day30 + timedelta(seconds=1)).available == 1300
    assert hub.balance("c-1", NOW + timedelta(days=3650)).available == 1300

    from tillpoint.sync.hub_store import TxIn

    refund = TxIn(
        "till-1",
        4,
        "REFUND",
        "2026-11-24T10:00:00+03:00",
        "c-1",
        "",
        json.dumps({"refundId": "f-1", "receiptId": "r-1"}),
        json.dumps({"refundId": "f-1", "returnedPoints": 0}),
        -40,
        0,
        "",
    )
    assert hub.ingest("till-1", "", [refund], NOW).results[0].outcome == "STORED"
    assert c1(hub, NOW + timedelta(days=2)) == (1330, [(50, instant(dec3)), (20, day30)])
    assert hub.balance("c-1", NOW + timedelta(days=3650)).available == 1260

    lifetime_now(hub, 0)  # the older till's sale follows the hub's rule; the others do not
    assert c1(hub, NOW + timedelta(days=3)) == (1330, [(50, instant(dec3))])
    assert hub.balance("c-1", NOW + timedelta(days=3650)).available == 1280


def test_pending_points_keep_the_expiry_their_sale_was_given(hub_store_factory: Any) -> None:
    """CONTRACT §16 with `activationDelayDays`: a sale's points pending until the next day
    keep the expiry its till sent ("never"), not `pointsLifetimeDays` (30) after their
    activation; an older till's pending points follow the hub's rule."""
    hub = hub_of(hub_store_factory, lifetime=30)
    activates = "2026-11-24T10:15:00+03:00"
    hub.ingest(
        "till-1", "", [sale(1, 70, "never", pending=activates), sale(2, 30, pending=activates)], NOW
    )
    assert hub.balance("c-1", NOW).pending == 100
    later = instant(activates) + timedelta(days=40)
    assert hub.balance("c-1", later).available == 1270
    assert c1(hub, instant(activates) + timedelta(days=1)) == (
        1300,
        [(30, instant("2026-12-24T10:15:00+03:00"))],
    )


def test_a_sale_sent_again_with_or_without_its_expiry_is_the_same_sale(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §9: the expiry is worked out from the till's ledger when a sale is sent,
    no part of its content: a till of this release that sends again a sale an earlier
    release had sent (its answer lost) gets DUPLICATE, not CONFLICT; the stored one
    stands."""
    hub = hub_of(hub_store_factory, lifetime=30)
    assert hub.ingest("till-1", "", [sale(1, 100)], NOW).results[0].outcome == "STORED"
    again = hub.ingest("till-1", "b-2", [sale(1, 100, "never")], NOW).results[0]
    assert again.outcome == "DUPLICATE", again.reason
    assert hub.balance("c-1", NOW + timedelta(days=40)).available == 1200  # the older rule


@pytest.mark.parametrize(
    ("expires", "result", "reason"),
    [
        ("2026-12-23T10:15:00", None, "earnedExpiresAt '2026-12-23T10:15:00' is neither"),
        ("soon", None, "earnedExpiresAt 'soon' is neither 'never' nor an RFC 3339 time"),
        ("never", {"earnedPoints": 5, "earnedExpiresAt": "never"}, "is the hub's own key"),
    ],
)
def test_an_expiry_the_hub_cannot_read_sets_the_sale_aside(
    hub_store_factory: Any, expires: str, result: dict[str, Any] | None, reason: str
) -> None:
    """A sale whose `earnedExpiresAt` is neither "never" nor a time with an offset (or
    whose result carries the key the hub keeps it under) is REJECTED alone, saying why
    in one line; nothing of it is counted."""
    hub = hub_of(hub_store_factory, lifetime=30)
    answer = hub.ingest("till-1", "", [sale(1, 5, expires, result=result), sale(2, 7)], NOW)
    first, second = answer.results
    assert (first.outcome, second.outcome) == ("REJECTED", "STORED")
    assert reason in first.reason and "\n" not in first.reason
    assert hub.balance("c-1", NOW + timedelta(days=1)).available == 1207
