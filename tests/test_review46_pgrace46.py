"""Review 46 (pgrace46): an older AuthorizeRedemption's points hold written after a newer
call of the same receipt, past review 45's `Superseded` checks.

Review 39 (grant39): an AuthorizeRedemption that came to the hub before the receipt's
newest hold was placed writes nothing (`Superseded`). The hub's server runs one call as two
write transactions: `authorise` (the points, under the customer's lock; on PostgreSQL
`hub_claim_hold` in plpgsql, or the whole accounting under the lock when the till lists
unsent movements) and then `hold_coupons` (the codes, under the receipt's lock since
review 45, pgrace45). A newer call of the receipt that holds no points (a coupon-only
receipt, a customer with nothing to redeem) leaves its only trace in its coupon holds.
Review 45 left `authorise`'s `Superseded` check reading those under the customer's lock
only: on PostgreSQL (READ COMMITTED) the newer call's coupon holds could commit between an
older call's check and its write, and the older call then held its points for the receipt
anyway. The same end state is reached on both hub stores without any statement-level
race: the older call's points transaction fits between the newer call's two
transactions (its points step wrote nothing for the older call to see). Either way the
receipt, priced by the till with the newer answer (no points), kept the older call's
points held from every other till for its life (until its commit, cancel or expiry),
whole when the older call also had codes (its coupon step refused as `Superseded`, which
skips the server's cut to the offline limit).

Checked here on real stores (a real SQLite file, a real PostgreSQL cluster):
- the older call's points step between the newer call's two steps (both stores, no seam);
- the newer call's coupon step committing between the older call's check and write, on
  PostgreSQL's optimistic path (`hub_claim_hold`: the one seam is another session's
  uncommitted hold row of the receipt, on which the function's insert waits after its
  checks) and on `authorise`'s locked path (the one seam a wrapper around the store's
  `newest_hold_stamp`), and the same on SQLite (one writer: the newer call waits);
- a hub database of the release before (schema 11) migrated to 12: its holds kept, the
  claim waiting on the receipt's lock;
- every path that takes the receipt's and the customer's locks, run concurrently on one
  receipt set many times: no deadlock (the order: receipt, then customer). That run
  found one more, older than this review: two receipts holding the same coupon codes in
  opposite orders at once deadlocked on PostgreSQL; shown with one seam, fixed (the
  codes held in sorted order).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tillpoint.agent.errors import InputError, StorageError
from tillpoint.agent.ledger import utc_text
from tillpoint.sync.hub_rules import CallerGone, Superseded
from tillpoint.sync.hub_store import Unsynced
from tillpoint.sync.loopback import import_doc, sample_master_data

from .test_hub_claim import NOW, tx

TTL_S = 600.0
DEVICE = "till-a"
CUSTOMER = "c-1"  # 1200 points (sample_master_data)
CODE = "NEW-1"


def _hub(store: Any) -> Any:
    import_doc(store, sample_master_data())
    store.publish(NOW, 7 * 86400.0)
    return store


def _times() -> tuple[datetime, datetime]:
    """(when the older call came, when the newer one came): real time, as the holds live
    in it (`balance` counts them at the wall clock)."""
    older = datetime.now(UTC)
    return older, older + timedelta(seconds=1)


def _points_holds(hub: Any, receipt: str) -> list[tuple[int, str]]:
    with hub.read_tx() as tx:
        rows = tx.execute(
            "SELECT points, created_at FROM holds WHERE device_id = ? AND receipt_id = ?"
            " AND state = 'ACTIVE'",
            (DEVICE, receipt),
        ).fetchall()
    return [(int(points), str(at)) for points, at in rows]


def _coupon_holds(hub: Any, receipt: str) -> list[tuple[str, str]]:
    with hub.read_tx() as tx:
        rows = tx.execute(
            "SELECT code, created_at FROM coupon_holds WHERE device_id = ? AND receipt_id = ?"
            " ORDER BY code",
            (DEVICE, receipt),
        ).fetchall()
    return [(str(code), str(at)) for code, at in rows]


def _held(hub: Any) -> int:
    return int(hub.balance(CUSTOMER, NOW).held)


def _waits(url: str, locktype: str) -> int:
    """Sessions of the database waiting on a lock of `locktype` (pg_locks)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = %s AND NOT l.granted AND a.datname = current_database()",
            (locktype,),
        ).fetchone()
    return 0 if row is None else int(row[0])


def _until(what: str, done: Any, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not done():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


# ------------------------------------------------------------ both stores, no seam


def test_an_older_points_step_between_a_newer_calls_two_steps_is_dropped(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §11, §13, review 39 (grant39). Till-a's first call for r1 (100 points, came
    at t) is held up; the till asks again (no points, code NEW-1, came at t+1 s). The newer
    call's points step writes nothing (no points asked); the older call's points step runs
    next and holds 100 (nothing newer to see); the newer call's coupon step then holds
    NEW-1 and drops the older call's points hold: the receipt holds what its newest answer
    said. Failed before the fix on both stores (100 points held for r1, priced without
    them, from every other till until r1's commit, cancel or expiry)."""
    hub = _hub(hub_store_factory())
    older, newer = _times()
    answer = hub.authorise(DEVICE, "r1", CUSTOMER, 0, NOW, [], newer, TTL_S)
    assert answer.authorised == 0
    late = hub.authorise(DEVICE, "r1", CUSTOMER, 100, NOW, [], older, TTL_S)
    assert late.authorised == 100  # nothing of the newer call's to see yet: written
    assert hub.hold_coupons(DEVICE, "r1", CUSTOMER, [CODE], newer, TTL_S, arrived=newer) == []
    assert _points_holds(hub, "r1") == []
    assert _held(hub) == 0
    assert _coupon_holds(hub, "r1") == [(CODE, utc_text(newer))]
    # the older call's own codes, after: refused, nothing written (grant39, as before)
    with pytest.raises(Superseded):
        hub.hold_coupons(DEVICE, "r1", CUSTOMER, ["OLD-1"], older, TTL_S, arrived=older)
    assert _coupon_holds(hub, "r1") == [(CODE, utc_text(newer))]


def test_a_calls_coupon_step_keeps_its_own_and_newer_points_holds(hub_store_factory: Any) -> None:
    """Checked, found right with the fix: the coupon step drops only a points hold placed
    before its call came. Its own call's points hold (stamped at the same arrival) stays,
    a later call's too (then the step is `Superseded`), a settled one stays, and a coupon
    step given no arrival (no stamp to compare) touches no points hold."""
    hub = _hub(hub_store_factory())
    older, newer = _times()
    assert hub.authorise(DEVICE, "r1", CUSTOMER, 300, NOW, [], newer, TTL_S).authorised == 300
    assert hub.hold_coupons(DEVICE, "r1", CUSTOMER, [CODE], newer, TTL_S, arrived=newer) == []
    assert _points_holds(hub, "r1") == [(300, utc_text(newer))]
    with pytest.raises(Superseded):
        hub.hold_coupons(DEVICE, "r1", CUSTOMER, ["OLD-1"], older, TTL_S, arrived=older)
    assert _points_holds(hub, "r1") == [(300, utc_text(newer))]
    assert hub.authorise(DEVICE, "r2", CUSTOMER, 200, NOW, [], older, TTL_S).authorised == 200
    assert hub.hold_coupons(DEVICE, "r2", CUSTOMER, ["TWO-1"], newer, TTL_S) == []
    assert _points_holds(hub, "r2") == [(200, utc_text(older))]
    assert _held(hub) == 500


# ------------------------------------------------------------ one seam each


@pytest.mark.timeout(120)
def test_a_newer_coupon_step_mid_claim_leaves_no_older_points_hold_on_postgresql(
    pg_cluster: Any,
) -> None:
    """CONTRACT §11, §13, review 39, PostgreSQL's optimistic path (`hub_claim_hold`). The
    newer call's points step wrote nothing; the older call's claim has checked (nothing
    newer) and waits to insert its hold (the seam: another session's uncommitted hold row
    of r1); the newer call's coupon step runs then. Before the fix it committed there
    (no lock in common) and the older claim then held 100 points for r1. Now it waits for
    the claim's receipt lock, and finding the older call's hold drops it."""
    psycopg = pytest.importorskip("psycopg")
    from tillpoint.sync.hub_postgres import PostgresHubStore

    url = pg_cluster.new_database()
    hub = _hub(PostgresHubStore(url, migrate_schema=True))
    older, newer = _times()
    seam = psycopg.connect(url)  # its own transaction, left open
    try:
        assert hub.authorise(DEVICE, "r1", CUSTOMER, 0, NOW, [], newer, TTL_S).authorised == 0
        seam.execute(
            "INSERT INTO holds VALUES ('seam', %s, 'r1', 'c-9', 1, '2000-01-01T00:00:00Z',"
            " '2000-01-01T00:00:00Z', 'EXPIRED', '')",
            (DEVICE,),
        )
        results: dict[str, Any] = {}

        def run(name: str, call: Any) -> threading.Thread:
            def body() -> None:
                try:
                    results[name] = call()
                except Exception as exc:
                    results[name] = exc

            thread = threading.Thread(target=body, daemon=True)
            thread.start()
            return thread

        late = run(
            "late",
            lambda: hub.authorise(DEVICE, "r1", CUSTOMER, 100, NOW, [], older, TTL_S),
        )
        _until("the older claim waits on the seam's row", lambda: _waits(url, "transactionid"))
        coupons = run(
            "coupons",
            lambda: hub.hold_coupons(DEVICE, "r1", CUSTOMER, [CODE], newer, TTL_S, arrived=newer),
        )
        _until(
            "the newer coupon step ends or waits on a lock",
            lambda: not coupons.is_alive() or _waits(url, "advisory"),
        )
        committed_mid_claim = not coupons.is_alive()
        seam.rollback()
        late.join(60)
        coupons.join(60)
        assert not late.is_alive() and not coupons.is_alive()
        assert results["coupons"] == [], results
        assert not isinstance(results["late"], Exception) or isinstance(
            results["late"], Superseded
        ), results
        assert _points_holds(hub, "r1") == []  # before the fix: [(100, older)]
        assert _held(hub) == 0
        assert _coupon_holds(hub, "r1") == [(CODE, utc_text(newer))]
        assert not committed_mid_claim
    finally:
        seam.close()
        hub.close()


@pytest.mark.timeout(120)
def test_a_newer_coupon_step_mid_locked_authorisation_leaves_no_older_points_hold(
    hub_store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §11, §13, review 39, `authorise` under the lock (the till lists an unsent
    spend). The older call has read the receipt's newest hold stamp (its `Superseded`
    check: nothing newer) when the newer call's coupon step runs (the one seam: a wrapper
    around the store's `newest_hold_stamp`). Before the fix, on PostgreSQL, the coupon
    step committed there and the older call then held 100 points for r1; SQLite's one
    writer made the coupon step wait, and it left the 100 points held too. Now, on both,
    the coupon step waits (PostgreSQL: the receipt's lock) and drops the older hold."""
    hub = _hub(hub_store_factory())
    url = getattr(hub, "url", None)
    older, newer = _times()
    assert hub.authorise(DEVICE, "r1", CUSTOMER, 0, NOW, [], newer, TTL_S).authorised == 0
    tx_class = type(hub).tx_class
    original = tx_class.newest_hold_stamp
    main = threading.get_ident()
    worker: list[threading.Thread] = []
    answers: list[Any] = []
    mid: list[bool] = []

    def stamp_then_newer_step(self: Any, device_id: str, receipt_id: str) -> Any:
        found = original(self, device_id, receipt_id)
        if threading.get_ident() == main and not worker:

            def newer_step() -> None:
                try:
                    answers.append(
                        hub.hold_coupons(
                            DEVICE, "r1", CUSTOMER, [CODE], newer, TTL_S, arrived=newer
                        )
                    )
                except Exception as exc:
                    answers.append(exc)

            worker.append(threading.Thread(target=newer_step, daemon=True))
            worker[0].start()
            if url is not None:  # it commits here, or waits on a lock
                _until(
                    "the newer coupon step ends or waits on a lock",
                    lambda: not worker[0].is_alive() or _waits(url, "advisory"),
                )
            else:  # SQLite: it waits for the write lock (a second to show it does)
                worker[0].join(1.0)
            mid.append(not worker[0].is_alive())
        return found

    monkeypatch.setattr(tx_class, "newest_hold_stamp", stamp_then_newer_step)
    try:
        late = hub.authorise(
            DEVICE, "r1", CUSTOMER, 100, NOW, [Unsynced(1, "r-0", -50)], older, TTL_S
        )
    finally:
        monkeypatch.setattr(tx_class, "newest_hold_stamp", original)
    worker[0].join(60)
    assert not worker[0].is_alive()
    assert late.authorised == 100
    assert answers == [[]]
    assert _points_holds(hub, "r1") == []  # before the fix: [(100, older)]
    assert _held(hub) == 50  # the unsent spend's, held for till-a's other tills' sake
    assert _coupon_holds(hub, "r1") == [(CODE, utc_text(newer))]
    assert mid == [False]  # the newer step did not commit inside the older one's window


@pytest.mark.timeout(120)
def test_a_store_of_the_release_before_is_migrated_to_12_with_its_holds_kept(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/HUB.md, Migrations. A hub database of the release before this one (schema 11)
    with a hold its claim placed: this release refuses it until `hub migrate`, which
    applies 12 alone (the function replaced, no row changed); the hold is still held, a
    late call that came before it writes nothing, and the migrated claim takes the
    receipt's lock (a session holding it makes the claim wait; `PgTx.lock_receipt`'s
    key)."""
    pytest.importorskip("psycopg")
    from tillpoint.sync import hub_postgres

    older, newer = _times()
    with monkeypatch.context() as m:
        m.setattr(hub_postgres, "MIGRATIONS", [s for s in hub_postgres.MIGRATIONS if s[0] < 12])
        m.setattr(hub_postgres, "SCHEMA_VERSION", 11)
        old = _hub(hub_postgres.PostgresHubStore(pg_url, migrate_schema=True))
        assert old.authorise(DEVICE, "r1", CUSTOMER, 300, NOW, [], newer, TTL_S).authorised == 300
        old.close()
    with pytest.raises(StorageError) as refused:
        hub_postgres.PostgresHubStore(pg_url)
    assert "has schema 11, this hub needs 12: run 'tillpoint hub migrate" in str(refused.value)
    assert hub_postgres.migrate(pg_url) == [12]
    hub = hub_postgres.PostgresHubStore(pg_url)
    try:
        assert _points_holds(hub, "r1") == [(300, utc_text(newer))]
        with pytest.raises(Superseded):
            hub.authorise(DEVICE, "r1", CUSTOMER, 100, NOW, [], older, TTL_S)
        assert _held(hub) == 300
        with hub.write_tx() as tx:  # the receipt's lock, held while a claim of r1 comes
            tx.lock_receipt(DEVICE, "r1")
            done: list[Any] = []
            later = datetime.now(UTC) + timedelta(seconds=2)
            claim = threading.Thread(
                target=lambda: done.append(
                    hub.authorise(DEVICE, "r1", CUSTOMER, 100, NOW, [], later, TTL_S)
                ),
                daemon=True,
            )
            claim.start()
            _until("the claim waits on the receipt's lock", lambda: _waits(pg_url, "advisory"))
            assert not done
        claim.join(60)
        assert [d.authorised for d in done] == [100]
        assert _points_holds(hub, "r1") == [(100, utc_text(later))]
    finally:
        hub.close()


@pytest.mark.timeout(120)
def test_two_receipts_holding_the_same_codes_in_opposite_orders_do_not_deadlock(
    pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §13 (found by the concurrent run below, seed 462). Till-a asks for r1 with
    codes K1, K2 while till-b asks for r9 with K2, K1. Each coupon hold is an insert that
    waits for another transaction's uncommitted row of the code: r1's call held K1, r9's
    then held K2 and waited on K1, r1's then waited on K2: PostgreSQL's deadlock check
    failed one call (UNAVAILABLE, "deadlock detected"; its till priced OFFLINE). The one
    seam: a wrapper around `PgTx.hold_coupon` runs r9's call right after r1's first hold
    and waits until it waits on a lock. Now every call holds its codes in one order (the
    codes sorted): r9's waits on K1, r1's goes on; r9's is told both are held."""
    pytest.importorskip("psycopg")
    from tillpoint.sync import hub_postgres

    url = pg_cluster.new_database()
    hub = _hub(hub_postgres.PostgresHubStore(url, migrate_schema=True))
    original = hub_postgres.PgTx.hold_coupon
    main = threading.get_ident()
    worker: list[threading.Thread] = []
    answers: list[Any] = []
    now = datetime.now(UTC)

    def hold_then_other_call(self: Any, code: str, *args: Any) -> bool:
        held = original(self, code, *args)
        if threading.get_ident() == main and not worker:

            def other_call() -> None:
                try:
                    answers.append(hub.hold_coupons("till-b", "r9", "c-2", ["K2", "K1"], now, 600))
                except Exception as exc:
                    answers.append(exc)

            worker.append(threading.Thread(target=other_call, daemon=True))
            worker[0].start()
            _until(
                "the other call waits on a lock or ends",
                lambda: not worker[0].is_alive() or _waits(url, "transactionid"),
            )
        return held

    monkeypatch.setattr(hub_postgres.PgTx, "hold_coupon", hold_then_other_call)
    try:
        try:
            first: Any = hub.hold_coupons(DEVICE, "r1", CUSTOMER, ["K1", "K2"], now, 600)
        except StorageError as exc:
            first = exc
        worker[0].join(60)
    finally:
        monkeypatch.undo()
    try:
        assert not worker[0].is_alive()
        assert first == [], first  # before: one of the two, "deadlock detected"
        assert answers == [["K2", "K1"]], answers  # in the order asked
        assert [code for code, _ in _coupon_holds(hub, "r1")] == ["K1", "K2"]
    finally:
        hub.close()


# ------------------------------------------------------------ every lock, concurrently


def _mixed_calls(hub: Any, seed: int, threads: int, calls: int) -> list[str]:
    """`threads` threads each make `calls` calls of every kind that takes the receipt's or
    the customer's lock (or writes the rows they guard) over two customers and eight
    receipts of one device; the unexpected errors' messages (a deadlock is one)."""
    receipts = [f"r{n}" for n in range(1, 9)]
    customers = ["c-1", "c-2"]
    seqs = itertools.count(1)
    seq_lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(threads)

    def one(rng: random.Random) -> None:
        receipt = rng.choice(receipts)
        customer = rng.choice(customers)
        came = datetime.now(UTC) - timedelta(milliseconds=rng.randrange(0, 3))
        kind = rng.randrange(6)
        if kind == 0:  # optimistic (PostgreSQL: hub_claim_hold)
            hub.authorise(DEVICE, receipt, customer, rng.randrange(0, 50), NOW, [], came, TTL_S)
        elif kind == 1:  # under the lock (an unsent spend listed)
            with seq_lock:
                seq = next(seqs) + 10_000
            unsent = [Unsynced(seq, f"u{seq}", -rng.randrange(1, 5))]
            hub.authorise(DEVICE, receipt, customer, rng.randrange(0, 50), NOW, unsent, came, TTL_S)
        elif kind == 2:  # coupon step
            codes = rng.sample(["K1", "K2", "K3", "K4"], rng.randrange(1, 3))
            hub.hold_coupons(DEVICE, receipt, customer, codes, came, TTL_S, arrived=came)
        elif kind == 3:
            hub.shrink(DEVICE, receipt, rng.randrange(0, 10), ["K1"], placed_by=came)
        elif kind == 4:
            hub.release(DEVICE, receipt, placed_by=came)
        else:  # ingest: a sale of the customer settling its receipt's holds
            with seq_lock:
                seq = next(seqs)
            sale = replace(
                tx(DEVICE, seq, customer, -1), request_json=f'{{"receiptId": "{receipt}"}}'
            )
            hub.ingest(DEVICE, "", [sale], NOW)

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        start.wait(60)
        for _ in range(calls):
            try:
                one(rng)
            except (Superseded, CallerGone, InputError):
                pass  # answers, not faults
            except StorageError as exc:
                errors.append(exc.message)
            except Exception as exc:
                errors.append(repr(exc))

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(600)
    assert not any(thread.is_alive() for thread in pool)
    return errors


@pytest.mark.timeout(300)
def test_every_locking_path_at_once_never_deadlocks(pg_cluster: Any) -> None:
    """Every path that takes a receipt's or a customer's lock (claims, the locked
    authorisation, coupon steps), beside the shrinks, releases and ingests that write
    the same rows, run at once over a few receipts: no deadlock, no other error (short,
    seeded: the default run's twin of the slow one below)."""
    pytest.importorskip("psycopg")
    from tillpoint.sync.hub_postgres import PostgresHubStore

    hub = _hub(PostgresHubStore(pg_cluster.new_database(), migrate_schema=True))
    try:
        assert _mixed_calls(hub, 46, threads=4, calls=40) == []
    finally:
        hub.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [461, 462, 463])
def test_every_locking_path_at_once_never_deadlocks_long(pg_cluster: Any, seed: int) -> None:
    """The same, 6 threads of 300 calls each, three seeds."""
    pytest.importorskip("psycopg")
    from tillpoint.sync.hub_postgres import PostgresHubStore

    hub = _hub(PostgresHubStore(pg_cluster.new_database(), migrate_schema=True))
    try:
        assert _mixed_calls(hub, seed, threads=6, calls=300) == []
    finally:
        hub.close()
