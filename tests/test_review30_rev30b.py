"""Review 30 (rev30b): a second read of the hub's online redemption across an expiry
(docs/CONTRACT.md §9 with §16): the time a till sends with its unsent sales, the upgrade
from a hub database whose holds carry no receipt time, and both stores' answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.v1 import tillpoint_pb2 as pb

from .test_hub_security import identity, stub
from .test_review30_sync30 import HUB_NOW, expiring_data, expiring_hub

TIMEOUT = 10
AFTER_MIDNIGHT = "2026-12-01T00:10:00+03:00"


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = expiring_hub(tmp_path / "hub")
    yield hub
    hub.stop()


def ask(
    receipt_id: str, points: int, *unsent: pb.UnsyncedPoints, device: str = "till-1"
) -> pb.AuthorizeRedemptionRequest:
    return pb.AuthorizeRedemptionRequest(
        device_id=device,
        receipt_id=receipt_id,
        customer_id="c-2",
        points=points,
        at=AFTER_MIDNIGHT,
        unsynced=list(unsent),
    )


@pytest.mark.parametrize(
    "sold",
    [
        "9999-12-31T23:59:59-10:00",  # past the last UTC instant there is
        "0001-01-01T00:00:00+05:00",  # before the first
    ],
)
def test_an_unsent_sales_time_out_of_range_is_not_a_failure_of_the_hub(
    hub: LoopbackHub, sold: str
) -> None:
    """docs/CONTRACT.md §9: a till's unsent sale carries its time (`UnsyncedPoints.at`);
    one that is a time with an offset but no UTC instant (year 10000 or year 0 in UTC)
    made the hub fail (OverflowError: gRPC UNKNOWN, a traceback in its log) where a time
    it cannot read is counted as from a till that sends none: the unsent −10 taken off
    the 100 points that count after midnight, 90 granted, nothing credited."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    unsent = pb.UnsyncedPoints(seq=1, receipt_id="s-1", points=-10, at=sold, spent=10)
    reply = s.AuthorizeRedemption(ask("r-1", 300, unsent), timeout=TIMEOUT)
    assert (reply.authorized_points, reply.live_balance) == (90, 90)
    # held: the 90 and the unsent 10; nothing is left for the next receipt
    assert s.AuthorizeRedemption(ask("r-2", 300), timeout=TIMEOUT).authorized_points == 0


# ------------------------------------------------- a hub database of the previous release

OLD_HOLD = (  # a hold the previous release wrote: till A's 250 at 23:50, no receipt time
    "h-old",
    "till-a",
    "a-1",
    "c-2",
    250,
    "2026-11-30T17:55:00.000000Z",
    "2026-11-30T18:25:00.000000Z",
    "ACTIVE",
)


def old_sqlite_hub(path: Path) -> Any:
    """A SQLite hub database as the release before review 30 left it (no m005: holds
    without `receipt_at`), with master data published and an open hold."""
    import sqlite3

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.loopback import import_doc

    made = SqliteHubStore(path)
    import_doc(made, expiring_data())
    made.publish(HUB_NOW, 7 * 86400.0)
    made.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE holds DROP COLUMN receipt_at")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_hold_at'")
        conn.execute("INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, ?)", OLD_HOLD)
    conn.close()
    return SqliteHubStore(path)


def old_postgres_hub(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A PostgreSQL hub database at schema 8 (before migration 9), its hold written by
    the previous release, then migrated by this one (as `hub migrate` does)."""
    import psycopg
    from tillpoint.sync import hub_postgres
    from tillpoint.sync.loopback import import_doc

    with monkeypatch.context() as m:
        # up to 8 (9 is hold_at; review 32's 10 came after it)
        before = [m for m in hub_postgres.MIGRATIONS if m[0] < 9]
        m.setattr(hub_postgres, "MIGRATIONS", before)
        m.setattr(hub_postgres, "SCHEMA_VERSION", before[-1][0])
        made = hub_postgres.PostgresHubStore(url, migrate_schema=True)
        import_doc(made, expiring_data())
        made.publish(HUB_NOW, 7 * 86400.0)
        made.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO holds VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", OLD_HOLD)
    return hub_postgres.PostgresHubStore(url, migrate_schema=True)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_hold_the_previous_release_wrote_still_holds_after_the_upgrade(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9: two tills cannot spend the same points, across the upgrade
    too. Till A's hold of 250 (written before the hub recorded a hold's receipt time) is
    taken off as it is, its time unknown: till B at 23:55 gets the 50 left, at 00:10
    nothing (100 − 250); A asking again for its receipt is answered by the new rule (its
    own hold replaced, 250), and then B at 00:10 gets the 50 the replay leaves."""
    if kind == "sqlite":
        store = old_sqlite_hub(tmp_path / "hub.db")
    else:
        store = old_postgres_hub(request.getfixturevalue("pg_cluster").new_database(), monkeypatch)
    try:

        def authorise(device: str, receipt_id: str, points: int, at: str) -> int:
            moment = datetime.fromisoformat(at)
            found = store.authorise(device, receipt_id, "c-2", points, moment, [], HUB_NOW, 1800)
            return int(found.authorised)

        assert authorise("till-b", "b-1", 300, "2026-11-30T23:55:00+03:00") == 50
        assert authorise("till-b", "b-1", 300, AFTER_MIDNIGHT) == 0
        assert authorise("till-a", "a-1", 250, "2026-11-30T23:50:00+03:00") == 250
        assert authorise("till-b", "b-1", 300, AFTER_MIDNIGHT) == 50
    finally:
        store.close()


# ------------------------------------------------------------- two tills at one moment


def test_tills_asking_at_once_around_midnight_never_get_more_than_is_left(
    hub_store_factory: Any,
) -> None:
    """docs/CONTRACT.md §9: two tills cannot spend the same points, when holds are
    replayed at their times too. Till A holds 250 at 23:50 (the 200 that expire at
    midnight, then 50 of the 100 that never do); then six tills ask at once for 100 each,
    three at 23:55 and three at 00:10. In any order only 50 are left: a till at 23:55
    replays A's hold and sees the 50; one at 00:10 replays A's and any earlier one's; one
    at 23:55 after a grant at 00:10 takes that later hold off as it is. Same on SQLite and
    PostgreSQL (the optimistic claim, then the locked redo)."""
    import threading

    from tillpoint.sync.loopback import import_doc

    store = hub_store_factory()
    import_doc(store, expiring_data())
    store.publish(HUB_NOW, 7 * 86400.0)
    first = datetime.fromisoformat("2026-11-30T23:50:00+03:00")
    assert store.authorise("till-a", "a-1", "c-2", 250, first, [], HUB_NOW, 1800).authorised == 250
    times = ["2026-11-30T23:55:00+03:00", AFTER_MIDNIGHT] * 3
    granted: list[int] = []
    start = threading.Barrier(len(times))

    def ask_at(n: int, at: str) -> None:
        start.wait()
        found = store.authorise(
            f"till-{n}", f"r-{n}", "c-2", 100, datetime.fromisoformat(at), [], HUB_NOW, 1800
        )
        granted.append(int(found.authorised))

    threads = [threading.Thread(target=ask_at, args=(n, at)) for n, at in enumerate(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(granted) == len(times)
    assert sum(granted) == 50, granted


def test_unsent_points_past_int64_are_refused_as_bad_input(hub: LoopbackHub) -> None:
    """docs/CONTRACT.md §9 (bad input: INVALID_ARGUMENT, one line, nothing written): an
    unsent spend of −9223372036854775808 points (int64's least, which has no positive
    twin) is held for the other tills as its negation, past int64: the hub failed
    (OverflowError, gRPC UNKNOWN, a traceback in its log). Refused now, and nothing is
    held: the next ask gets the 100 points that count after midnight."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    unsent = pb.UnsyncedPoints(seq=1, receipt_id="s-1", points=-(2**63))
    with pytest.raises(grpc.RpcError) as err:
        s.AuthorizeRedemption(ask("r-1", 300, unsent), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "\n" not in (err.value.details() or "")
    assert "unsynced seq 1" in (err.value.details() or "")
    assert s.AuthorizeRedemption(ask("r-2", 300), timeout=TIMEOUT).authorized_points == 100


def test_unsent_spends_that_would_hold_past_int64_are_refused(hub: LoopbackHub) -> None:
    """docs/CONTRACT.md §9 (bad input: INVALID_ARGUMENT, one line, nothing written): two
    tills each send an unsent spend of 9223372036854775807 points for one customer. The
    second was held beside the first, past int64 together: its reply's live balance
    (−18446744073709551514) could not be sent (gRPC UNKNOWN, a traceback in the hub's log),
    and every till asking for that customer failed the same way until the holds expired.
    The second is refused now, nothing held for it: a third till is answered (0 granted,
    the first's hold stands)."""
    one, two, three = (identity(hub, f"till-{n}", enroll=True) for n in (1, 2, 3))
    huge = pb.UnsyncedPoints(seq=1, receipt_id="s-1", points=-(2**63 - 1))
    first = stub(hub, key=one.key_pem, cert=one.cert_pem)
    assert first.AuthorizeRedemption(ask("r-1", 300, huge), timeout=TIMEOUT).authorized_points == 0
    second = stub(hub, key=two.key_pem, cert=two.cert_pem)
    with pytest.raises(grpc.RpcError) as err:
        second.AuthorizeRedemption(ask("r-2", 300, huge, device="till-2"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "64-bit" in (err.value.details() or "")
    third = stub(hub, key=three.key_pem, cert=three.cert_pem)
    reply = third.AuthorizeRedemption(ask("r-3", 300, device="till-3"), timeout=TIMEOUT)
    assert (reply.authorized_points, reply.live_balance) == (0, 100 - (2**63 - 1))
