"""Review 36 (rev36e): the hub's delta floor and late grants read again (CONTRACT §3, §9, §11).

1. The first prune after upgrading a hub that kept a year of versions deleted them all in
   one write transaction: on a generated SQLite store of 10,000 versions, 240 tills and
   50,000 customers it held the write lock 5 s (every push, authorisation and release
   waited that long); a year of balance refreshes every 5 minutes is ten times that, past
   the store's 30 s busy timeout, so those calls failed as "database is locked" and the
   tills went OFFLINE. The prune now climbs to its floor a bounded number of versions a
   transaction (`hub_sql.PRUNE_STEP`); each step leaves a store whose floor is a version,
   exactly as a prune to that version would.
2. A hub stopped during such a prune waited 5 s for its watcher, then closed the store
   under the prune still running: the prune now ends between two steps when the hub stops.
3. SQLite has no queue for its write lock: a waiting writer polls it, and missed the
   microseconds between two steps (3.8 s waits on 30,000 versions): the prune pauses
   150 ms between two steps (a writer now waits one step at the most, 0.55 s measured).
Found right (tests kept): two PostgreSQL servers pruning at once; a till away 40 days
with sales queued; a late grant kept up to the till's limit, absent, 0, or above the grant.

Real parts: the hub stores on real SQLite files and on the throwaway PostgreSQL cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync import hub_sql
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import ManualClock
from .test_hub_store import dump
from .test_review36_hub36 import (
    ANNA,
    BORIS,
    LONG_TTL_S,
    a_till,
    held_for,
    hub_clock,
    publish_after,
    pull,
    push,
    sell,
    stored,
)
from .test_review39_flake39 import HeldBack, held_back

__all__ = ["held_back", "hub_clock"]  # review 36 (hub36)'s and flake39's fixtures

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TTL_S = 400 * 86400.0


def seven_versions(store: Any) -> None:
    """Versions 1..7, a day apart from NOW, each changing a customer (revisions to prune)."""
    import_doc(store, sample_master_data())
    store.publish(NOW, TTL_S)
    for v in range(2, 8):
        import_doc(store, {"customers": [{"id": "c-9", "firstName": f"Вера {v}"}]})
        store.publish(NOW + (v - 1) * DAY, TTL_S)


def pruned_state(store: Any) -> dict[str, list[tuple[Any, ...]]]:
    """What the prune leaves: revisions, publications, appliedThrough rows, the floor."""
    queries = {
        "revisions": "SELECT kind, key, version, doc FROM revisions ORDER BY kind, key, version",
        "publications": "SELECT version, cut FROM publications ORDER BY version",
        "progress": "SELECT version, device_id, through FROM publication_progress"
        " ORDER BY version, device_id",
        "floor": "SELECT value FROM meta WHERE key = 'delta_floor'",
    }
    with store.read_tx() as tx:
        return {k: [tuple(r) for r in tx.execute(q).fetchall()] for k, q in queries.items()}


def floors_seen(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The delta floor at the start of each write transaction of `store` from now on."""
    seen: list[int] = []
    writing = store._writing

    @contextmanager
    def counted() -> Iterator[Any]:
        with writing() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key = 'delta_floor'").fetchone()
            seen.append(0 if row is None else int(row[0]))
            yield tx

    monkeypatch.setattr(store, "_writing", counted)
    return seen


def test_a_prune_of_many_versions_climbs_to_its_floor_a_few_versions_a_transaction(
    hub_store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §3 (review 36's delta floor): the write lock is held for a bounded number
    of versions at a time, and the store ends exactly as one prune to the floor leaves it."""
    stepped, whole = hub_store_factory(), hub_store_factory()
    seven_versions(stepped)
    seven_versions(whole)
    full_7 = stepped.snapshot_doc(7, 0)
    delta_7 = stepped.snapshot_doc(7, 6)
    before = NOW + 6 * DAY  # version 7 is the newest issued by then: the floor
    assert whole.prune_versions(before) == 7

    monkeypatch.setattr(hub_sql, "PRUNE_STEP", 2, raising=False)
    seen = floors_seen(stepped, monkeypatch)
    assert stepped.prune_versions(before) == 7
    assert seen == [0, 2, 4, 6]  # 2 versions a transaction, then the last one
    assert stepped.publication(6) is None
    assert stepped.snapshot_doc(7, 0) == full_7
    with pytest.raises(Exception, match="no delta from version 6"):
        stepped.snapshot_doc(7, 6)
    assert delta_7["version"] == 7
    assert pruned_state(stepped) == pruned_state(whole)
    seen.clear()
    assert stepped.prune_versions(before) == 7  # nothing more to do: one look
    assert seen == [7]


def test_two_servers_on_one_postgresql_store_prune_at_once_as_one(
    pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §3: two hub servers on one PostgreSQL database each prune when they see a
    new version: stepping at once, they take turns on the floor's row and end where one
    prune ends (no step lost, none done twice, no serialisation failure)."""
    from tillpoint.sync.hub_postgres import PostgresHubStore

    url = pg_cluster.new_database()
    one = PostgresHubStore(url, migrate_schema=True)
    two = PostgresHubStore(url)
    alone = PostgresHubStore(pg_cluster.new_database(), migrate_schema=True)
    try:
        seven_versions(one)
        seven_versions(alone)
        monkeypatch.setattr(hub_sql, "PRUNE_STEP", 1)
        before = NOW + 6 * DAY
        assert alone.prune_versions(before) == 7
        floors: list[int] = []
        errors: list[BaseException] = []

        def prune(store: Any) -> None:
            try:
                floors.append(store.prune_versions(before))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=prune, args=(s,)) for s in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and floors == [7, 7]
        assert pruned_state(one) == pruned_state(alone)
    finally:
        for store in (one, two, alone):
            store.close()


@pytest.fixture
def lived_hub(tmp_path: Path, hub_clock: ManualClock) -> Iterator[LoopbackHub]:
    """The reference hub with the shipped retention (30 days) whose program has points
    that activate after 14 days and expire after 365 (CONTRACT §16), its version 1
    published 50 days ago on its clock (`hub_clock`)."""
    data = sample_master_data()
    data["program"].update(activationDelayDays=14, pointsLifetimeDays=365)
    h = LoopbackHub(
        tmp_path / "hub",
        HubConfig(heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0),
        data=data,
        publish=False,
        clock=hub_clock,
    )
    h.publish(LONG_TTL_S)
    yield h
    h.stop()


def test_a_till_away_40_days_with_sales_queued_counts_each_once_after_its_full_snapshot(
    lived_hub: LoopbackHub, hub_clock: ManualClock, tmp_path: Path
) -> None:
    """CONTRACT §3, §9, §16: till a holds version 1 and queues three sales (nothing
    pushed) while the hub publishes versions 40, 15 and 0 days ago and prunes version 1.
    It pushes them: the full snapshot it then gets (version 4, built before the push,
    appliedThrough without them) leaves its own sales counted once, on top of the hub's
    rows, and the balance refresh that counts them (a delta from 4) does not count them
    again. At each step its balances (available, pending, expiring batches) are the
    hub's and a fresh till's; at the end its cache is the fresh till's, byte for byte."""
    hub = lived_hub
    a = a_till(hub, tmp_path, "a")
    try:
        assert pull(a).version == 1
        for rid, card in (("a-1", ANNA), ("a-2", BORIS), ("a-3", ANNA)):
            sell(a, rid, card)
        publish_after(hub, hub_clock, 10, {"customers": [{"id": "c-3", "firstName": "Вера"}]})
        publish_after(hub, hub_clock, 25, {"removed": {"customers": ["c-3"]}})
        assert publish_after(hub, hub_clock, 15, {}) == 4
        wait_for(lambda: hub.store.delta_floor() == 2)
        wait_for(lambda: hub.server.builder.full_ready(4) is not None)
        push(a)
        assert stored(hub) == [("a", 1), ("a", 2), ("a", 3)]

        def same_everywhere(version: int) -> None:
            c = a_till(hub, tmp_path, f"c{version}")
            try:
                assert pull(c).version == version
                for card, customer in ((ANNA, "c-1"), (BORIS, "c-2")):
                    at_hub = hub.store.balance(customer, datetime.now(UTC))
                    mine = a.agent.balance(card)
                    assert (mine.available_points, mine.pending_points) == (
                        at_hub.available,
                        at_hub.pending,
                    )
                    assert mine.pending_points > 0  # the three sales' points, 14 days
                    if version == 5:  # what c's snapshot counts, a counts too: the same
                        assert mine == c.agent.balance(card)
            finally:
                c.stop()

        got = pull(a)
        assert (got.status, got.version, got.base_version) == ("APPLIED", 4, 0)
        same_everywhere(4)
        assert publish_after(hub, hub_clock, 0, {}) == 5  # the refresh counts a's sales
        got = pull(a)
        assert (got.status, got.version, got.base_version) == ("APPLIED", 5, 4)
        same_everywhere(5)
        c = a_till(hub, tmp_path, "c")
        try:
            assert pull(c).version == 5
            assert dump(a.data_dir) == dump(c.data_dir)
        finally:
            c.stop()
    finally:
        a.stop()


@pytest.fixture
def lowered_limit(tmp_path: Path, held_back: HeldBack) -> Iterator[LoopbackHub]:
    """The reference hub: version 1's program lets a till redeem 600 points offline,
    version 2's 200 (the hub's newest). Its AuthorizeRedemption's calls are known to
    `held_back` (each one's deadline)."""
    data = sample_master_data()
    data["program"]["offlineRedeemLimitPoints"] = 600
    h = LoopbackHub(tmp_path / "hub", data=data)
    import_doc(h.store, {"program": {**data["program"], "offlineRedeemLimitPoints": 200}})
    h.publish()
    yield h
    h.stop()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (None, 200),  # a till before review 36: the hub's newest program's, as before
        (600, 600),  # the till's own
        (0, 0),  # a till that redeems nothing OFFLINE: the grant dropped, as a limit of 0
        (10**15, 1200),  # a till saying more: the grant, never more than it
    ],
)
def test_a_late_grant_keeps_what_the_till_says_up_to_the_grant(
    lowered_limit: LoopbackHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    held_back: HeldBack,
    sent: int | None,
    kept: int,
) -> None:
    """CONTRACT §9, §11: a grant of Anna's 1200 points that the hub's slow store makes
    past the till's 300 ms deadline is kept up to the till's offline limit (field 9):
    absent, the hub's newest program's; 0 keeps nothing; a till that says more than the
    grant gets the grant (a shrink never grows a hold), which it would have had on time."""
    hub = lowered_limit
    a = a_till(hub, tmp_path, "a")
    store = hub.store
    granted, shrunk = store.authorise, store.shrink
    done = threading.Event()

    def slow_store(*args: Any, **kw: Any) -> Any:
        out = granted(*args, **kw)
        held_back.past_its_deadline()  # the store busy: the call's deadline passes meanwhile
        return out

    def shrink(*args: Any, **kw: Any) -> Any:
        try:
            return shrunk(*args, **kw)
        finally:
            done.set()

    monkeypatch.setattr(store, "authorise", slow_store)
    monkeypatch.setattr(store, "shrink", shrink)
    try:
        request = pb.AuthorizeRedemptionRequest(
            device_id="a",
            receipt_id="r-late",
            customer_id="c-1",
            points=1200,
            at=datetime.now(UTC).isoformat(),
        )
        if sent is not None:
            request.offline_redeem_limit_points = sent
        # Review 41 (flake41): 1 s, and the store busy until the call's deadline at the hub
        # has passed (it was 0.3 s against a store 0.6 s late: on a loaded machine the
        # request could reach the hub past 0.3 s, which then rightly placed nothing)
        with pytest.raises(grpc.RpcError) as caught:
            a.link.stub.AuthorizeRedemption(request, timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert done.wait(10)
        assert held_for(hub, "c-1") == kept
    finally:
        a.stop()


def test_a_hub_stopped_while_it_prunes_stops_between_steps_before_its_store_closes(
    lived_hub: LoopbackHub, hub_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §3: a hub stopped (SIGTERM, a restart) during a long prune (its first
    after an upgrade: a minute on a year of versions) waited 5 s for its watcher, then
    closed the store under the prune's running statements (a SQLite connection closed
    under a running statement crashes the process; here the watcher died on a closed
    database). The prune stops between two steps, the floor where it got to."""
    hub = lived_hub
    for _ in range(39):  # versions 2..40, a day apart, none older than 30 days yet
        publish_after(hub, hub_clock, 0.5, {})
    monkeypatch.setattr(hub_sql, "PRUNE_STEP", 1)
    step = hub.store._prune_step
    started, stopped = threading.Event(), threading.Event()
    late: list[int] = []

    def slow_step(target: int) -> Any:
        started.set()
        if stopped.is_set():
            late.append(target)
        time.sleep(0.3)  # 40 steps: 12 s, a long prune
        return step(target)

    monkeypatch.setattr(hub.store, "_prune_step", slow_step)
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    publish_after(hub, hub_clock, 60, {})  # version 41: the watcher prunes up to 40
    assert started.wait(10)
    hub.server.stop()
    stopped.set()
    watcher = hub.server._watcher
    assert watcher is not None and not watcher.is_alive()
    assert late == [] and died == []
    assert 0 < hub.store.delta_floor() < 40  # the steps done stay done


def test_a_write_waiting_while_the_hub_prunes_gets_in_between_two_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §3: SQLite has no queue for its write lock: a waiting writer (a push, an
    authorisation) polls it, up to 100 ms apart, and a prune that took the next step as
    soon as it ended its last left it free for microseconds, so the writer waited for
    several steps (4 s measured on a generated store of 30,000 versions, steps of 0.5 s).
    The prune pauses between two steps, longer than a poll: the writer gets in."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    store = SqliteHubStore(tmp_path / "hub.db")
    other = SqliteHubStore(tmp_path / "hub.db")  # a server thread's own connection
    try:
        seven_versions(store)
        monkeypatch.setattr(hub_sql, "PRUNE_STEP", 1)
        writing = store._writing
        events: list[str] = []
        first = threading.Event()

        @contextmanager
        def slow() -> Iterator[Any]:  # each step holds the write lock 0.3 s
            with writing() as tx:
                events.append("step")
                first.set()
                yield tx
                time.sleep(0.3)

        monkeypatch.setattr(store, "_writing", slow)

        def push() -> None:
            assert first.wait(10)
            with other._writing() as tx:
                tx.execute("INSERT INTO meta (key, value) VALUES ('probe', '1')")
            events.append("write")

        writer = threading.Thread(target=push)
        writer.start()
        assert store.prune_versions(NOW + 6 * DAY) == 7
        writer.join(timeout=30)
        assert events.index("write") <= 2, events  # was after all seven steps
    finally:
        store.close()
        other.close()
