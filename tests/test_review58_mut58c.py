"""Review 58 (mut58c): mutation testing of the hub's store on PostgreSQL
(`sync/hub_postgres.py`): its pool and the lock waits it sets, the refusal of another
program's database, the import's two paths, the transactions and locks of the store's own
SQL, and the words a till or an operator gets. Each test pins a rule that a surviving
mutant broke and no test held, on a real database of the run's throwaway PostgreSQL
cluster (`pg_cluster`, `pg_url`); docs/DECISIONS.md, "Review 58 (mut58c)", lists the
mutants. The one stand-in: the module's clock (`hub_postgres.time`) held still where a
test reads a lock wait computed from a call's deadline, so that the value is exact on a
loaded machine."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("psycopg")

import psycopg
from tillpoint.agent.errors import ForeignDatabase
from tillpoint.sync import hub_postgres
from tillpoint.sync.hub_postgres import PostgresHubStore, migrate


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresHubStore]:
    """A migrated, empty hub store on a fresh database of the run's cluster."""
    store = PostgresHubStore(pg_url, migrate_schema=True)
    try:
        yield store
    finally:
        store.close()


def run_sql(url: str, *statements: str) -> None:
    """Each statement on a connection of its own (autocommit), as another program would."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for sql in statements:
            conn.execute(sql.encode())


def lock_timeout(store: PostgresHubStore) -> str:
    """The lock_timeout of the connection the calling thread's next statement gets."""
    with store.read_tx() as tx:
        row = tx.conn.execute("SHOW lock_timeout").fetchone()
    assert row is not None
    return str(row[0])


# ------------------------------------------------- the lock waits of a call with a deadline


@pytest.mark.parametrize(
    ("wait_s", "shown"),
    [
        (None, "30s"),  # no deadline: LOCK_TIMEOUT_MS
        (40.0, "27s"),  # the pool's 30 s at most, less a tenth
        (20.0, "18s"),  # 20 s less a tenth
        (0.25, "200ms"),  # 250 ms less LOCK_MARGIN_MS (a tenth is less)
        (0.05, "50ms"),  # nothing left after the margin: LOCK_FLOOR_MS (0 is "no limit")
    ],
)
def test_a_calls_lock_waits_end_before_its_deadline(
    pg_store: PostgresHubStore, monkeypatch: pytest.MonkeyPatch, wait_s: float | None, shown: str
) -> None:
    """`pinned(wait_s)` (an RPC's time left): the connection's lock_timeout is that time
    (the pool's 30 s at most) less a tenth, at least 50 ms less, and at least 50 ms; a
    call without a deadline waits 30 s; the next call's connection gets its own again.
    The module's clock is held still so that the time left is exact."""
    monkeypatch.setattr(hub_postgres, "time", types.SimpleNamespace(monotonic=lambda: 1024.0))
    if wait_s is None:
        assert lock_timeout(pg_store) == shown
        return
    with pg_store.pinned(wait_s):
        assert lock_timeout(pg_store) == shown
    assert lock_timeout(pg_store) == "30s"


# ------------------------------------------------- another program's database (§10)


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (5, "(its tables: t1, t2, t3, t4, t5),"),
        (6, "(its tables: t1, t2, t3, t4, t5 and 1 more),"),
        (7, "(its tables: t1, t2, t3, t4, t5 and 2 more),"),
    ],
)
def test_another_programs_database_is_named_by_its_first_five_tables(
    pg_url: str, count: int, shown: str
) -> None:
    """The refusal names five of its tables in name order and counts the rest; nothing is
    written into it (`hub migrate`, and a hub's open)."""
    names = [f"t{i}" for i in range(count, 0, -1)]  # made in reverse order
    run_sql(pg_url, *(f"CREATE TABLE {name} (id INTEGER)" for name in names))
    for attempt in (lambda: migrate(pg_url), lambda: PostgresHubStore(pg_url)):
        with pytest.raises(ForeignDatabase) as refused:
            attempt()
        assert shown in str(refused.value)
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        left = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert left == (count,)


def test_a_migration_that_stopped_before_its_first_step_is_tillpoints_own(pg_url: str) -> None:
    """`schema_migrations` of tillpoint's columns and no row (a `hub migrate` stopped
    after making it, before its first step committed): the database is tillpoint's, and
    migrating it again applies every step."""
    run_sql(
        pg_url,
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    assert migrate(pg_url) == [number for number, _, _ in hub_postgres.MIGRATIONS]
    PostgresHubStore(pg_url).close()


def test_another_programs_migrations_of_tillpoints_columns_are_refused(pg_url: str) -> None:
    """Another tool's `schema_migrations` with the same three columns, its step 1 of
    another name: another program's database, refused before anything is written (it
    would have been taken for tillpoint's, its step 1 skipped and step 2 run on
    nothing)."""
    run_sql(
        pg_url,
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "INSERT INTO schema_migrations (version, name) VALUES (1, 'create_users')",
        "CREATE TABLE users (id INTEGER)",
    )
    for attempt in (lambda: migrate(pg_url), lambda: PostgresHubStore(pg_url)):
        with pytest.raises(ForeignDatabase) as refused:
            attempt()
        assert "(its tables: schema_migrations, users)" in str(refused.value)
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(1, "create_users")]


# ------------------------------------------------- a database that cannot be reached (§9)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def cut_off(cluster: Any, url: str) -> None:
    """The database takes no new connection and its sessions are ended (as a restart,
    or a failover, leaves a hub's pool), until `let_in`."""
    name = database_name(url)
    run_sql(
        cluster.url,
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )


def let_in(cluster: Any, url: str) -> None:
    run_sql(cluster.url, f'ALTER DATABASE "{database_name(url)}" ALLOW_CONNECTIONS true')


def test_a_database_that_takes_no_connection_is_unavailable_with_its_reason(
    pg_cluster: Any, pg_url: str
) -> None:
    """Every connection of the pool ended and no new one taken: a call fails as
    unavailable with PostgreSQL's reason (the probe's connection attempt), not after the
    pool's 30 s with "couldn't get a connection", and not as "could not be written";
    once the database takes connections again the same store serves."""
    from tillpoint.agent.errors import StorageError
    from tillpoint.sync.loopback import wait_for

    store = PostgresHubStore(pg_url, migrate_schema=True, pool_size=2)
    try:
        assert store.devices() == []
        cut_off(pg_cluster, pg_url)
        try:
            for _ in range(2):  # the probe's answer, then the one it keeps a moment
                with pytest.raises(StorageError) as failed:
                    store.devices()
                line = str(failed.value)
                assert line.startswith("the hub database is unavailable: "), line
                assert "not currently accepting connections" in line, line
        finally:
            let_in(pg_cluster, pg_url)
        assert wait_for(lambda: _serves(store), 60, 0.2)
    finally:
        store.close()


def _serves(store: PostgresHubStore) -> bool:
    from tillpoint.agent.errors import StorageError

    try:
        return store.devices() == []
    except StorageError:
        return False


def test_a_till_hears_a_database_that_takes_no_connection_as_unavailable(
    pg_cluster: Any, pg_url: str, tmp_path: Any
) -> None:
    """The same over gRPC, a real hub on the store: a till's call is answered
    UNAVAILABLE (it tries again; UNKNOWN would set its sale aside) with the reason, and
    answered again once the database is back."""
    import grpc
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
    from tillpoint.v1 import tillpoint_pb2 as pb

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), store=pg_url)
    try:
        link = HubLink(hub.address, hub.enroll("till-a", tmp_path / "till-a"))

        def call() -> str:
            try:
                link.stub.ListTransactions(
                    pb.ListTransactionsRequest(device_id="till-a", since_seq=0, limit=1),
                    timeout=20,
                )
                return "OK"
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        assert call() == "OK"
        cut_off(pg_cluster, pg_url)
        try:
            said = call()
            assert said.startswith("UNAVAILABLE: the hub database is unavailable: "), said
            assert "not currently accepting connections" in said, said
        finally:
            let_in(pg_cluster, pg_url)
        assert wait_for(lambda: call() == "OK", 60, 0.2)
        link.close()
    finally:
        hub.stop()


# ------------------------------------------------- one connection for an RPC's statements


def backend_pid(store: PostgresHubStore) -> int:
    with store.read_tx() as tx:
        row = tx.conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def checkouts(store: PostgresHubStore) -> int:
    """How many connections the store's pool has handed out since the last asking (the
    pool's own count, `requests_num`)."""
    return int(store.pool.pop_stats().get("requests_num", 0))


def test_a_pinned_block_is_one_checkout_of_the_pool_and_keeps_its_connection(
    pg_url: str,
) -> None:
    """`pinned`: an RPC's statements take one connection of the pool, not one each, and
    a `pinned` within it (the device's record read inside the RPC's block) is the outer
    block's connection, which the outer block keeps after the inner one ends."""
    store = PostgresHubStore(pg_url, migrate_schema=True, pool_size=2)
    try:
        checkouts(store)
        with store.pinned(20):
            outer = backend_pid(store)
            with store.pinned(20):
                assert backend_pid(store) == outer
            assert backend_pid(store) == outer
            assert store.devices() == []
        assert checkouts(store) == 1
        backend_pid(store)
        backend_pid(store)
        assert checkouts(store) == 2  # unpinned: one each
    finally:
        store.close()


# ------------------------------------------------- the settings that lose an acknowledged commit


def test_each_setting_that_can_lose_an_acknowledged_commit_is_named_and_no_other(
    pg_cluster: Any, pg_url: str
) -> None:
    """`durability_notes` (said at `hub serve`): the run's cluster runs with fsync and
    synchronous_commit off (tests/conftest's throwaway one): both named, in that order;
    a database with synchronous_commit on gets fsync's alone."""
    store = PostgresHubStore(pg_url, migrate_schema=True)
    try:
        notes = store.durability_notes()
        assert [note.split(" = off")[0] for note in notes] == [
            "the hub database runs with synchronous_commit",
            "the hub database runs with fsync",
        ], notes
    finally:
        store.close()
    run_sql(pg_cluster.url, f'ALTER DATABASE "{database_name(pg_url)}" SET synchronous_commit = on')
    store = PostgresHubStore(pg_url)
    try:
        notes = store.durability_notes()
        assert len(notes) == 1 and notes[0].startswith("the hub database runs with fsync = off")
    finally:
        store.close()


# ------------------------------------------------- the store's URL in the words (§10)


@pytest.mark.parametrize(
    ("store", "shown"),
    [
        ("postgresql://postgres:s3cret@127.0.0.1:{port}/{db}", "postgres:***@127.0.0.1"),
        ("postgresql://:s3cret@127.0.0.1:{port}/{db}", "postgresql://:***@127.0.0.1"),
        ("postgresql://127.0.0.1:{port}/{db}?password=s3cret", "?password=***"),
        (
            "postgres://127.0.0.1:{port}/{db}?sslmode=disable&password=s3cret&user=postgres",
            "&password=***&user=postgres",
        ),
    ],
)
def test_a_store_urls_password_is_never_said(pg_cluster: Any, store: str, shown: str) -> None:
    """libpq takes a password in the URL's user part or as a `password=` parameter of
    its query; a hub command's one-line error (here `hub migrate` of a database that
    does not exist, or of a role that does not; exit 1) names the store with the
    password masked either way. The query's password, and the user part's of an empty
    user name, were printed as written (on the operator's terminal and in the hub's
    log)."""
    import subprocess

    from .test_review38_rev38c import EXE

    url = store.format(port=pg_cluster.port, db="no_such_hub")
    done = subprocess.run(
        [EXE, "hub", "migrate", "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "s3cret" not in done.stderr, done.stderr
    assert shown in done.stderr and "connection failed: " in done.stderr, done.stderr


# ------------------------------------------------- an ingest never waits for another device's


def test_an_ingest_prunes_its_own_devices_old_answers_and_waits_for_no_other(
    pg_store: PostgresHubStore,
) -> None:
    """On PostgreSQL an ingest prunes only its own device's old push answers (under its
    device's lock): till-b's ingest, still open, does not make till-a's wait on till-c's
    old answer (pruning every device's, as SQLite's one writer does, made each ingest
    wait for the one before it, and failed this one after its 2 s). till-c's old answer
    is pruned by till-c's own next ingest."""
    import threading

    from tillpoint.agent.errors import StorageError

    old, now, cut = "2026-10-01T00:00:00Z", "2026-12-07T00:00:00Z", "2026-11-07T00:00:00Z"
    with pg_store.write_tx() as tx:
        tx.save_batch_answer("till-c", "b-old", "sha-c", "{}", old, "2026-09-01T00:00:00Z")
    outcome: dict[str, Any] = {}

    def till_a() -> None:
        try:
            with pg_store.pinned(2.0), pg_store.write_tx() as tx:
                tx.save_batch_answer("till-a", "b-1", "sha-a", "{}", now, cut)
            outcome["a"] = "stored"
        except StorageError as exc:
            outcome["a"] = exc.message

    with pg_store.write_tx() as tx:  # till-b's ingest, open while till-a's runs
        tx.save_batch_answer("till-b", "b-1", "sha-b", "{}", now, cut)
        tx.flush()
        tx.conn.execute("SELECT 1").fetchone()  # its statements run: its row locks held
        thread = threading.Thread(target=till_a)
        thread.start()
        thread.join(60)
    assert outcome == {"a": "stored"}
    with pg_store.read_tx() as tx:
        assert tx.batch_answer("till-c", "b-old") == ("sha-c", "{}")
    with pg_store.write_tx() as tx:
        tx.save_batch_answer("till-c", "b-1", "sha-c2", "{}", now, cut)
    with pg_store.read_tx() as tx:
        assert tx.batch_answer("till-c", "b-old") is None


# ------------------------------------------------- the live inputs in one statement (§9, §11)


def test_the_one_statement_live_inputs_are_the_rules_own(pg_store: PostgresHubStore) -> None:
    """PostgreSQL reads what `HubRules.live` counts in one statement (`_LIVE_INPUTS`, an
    authorisation's first step), its ledger mark by `hub_ledger_mark`: the same version,
    customer, program, cards, moves and mark as the rules' own reads through a PgTx
    (`HubRules.live_inputs`, `PgTx.ledger_mark`), for a customer with a sale, one with a
    card's UNKNOWN sale and nothing else, and a customer the hub does not know. A mark
    read otherwise than the claim's (`hub_claim_hold`) made every claim start again."""
    from tillpoint.sync.hub_rules import HubRules
    from tillpoint.sync.loopback import import_doc, sample_master_data

    from .test_review54_mut54c import CARD_1, NOW, WEEK, sale
    from .test_review57_mut57c import CARD_2

    import_doc(pg_store, sample_master_data())
    pg_store.publish(NOW, WEEK)
    pg_store.ingest(
        "till-a",
        "",
        [
            sale("till-a", 1, "c-1", -100, card=CARD_1),
            sale("till-a", 2, "", 7, card=CARD_2),
        ],
        NOW,
    )
    for customer in ("c-1", "c-2", "c-nobody"):
        fast = pg_store.live_inputs(customer)
        assert fast == HubRules.live_inputs(pg_store, customer), customer
    c1 = pg_store.live_inputs("c-1")
    assert c1.customer is not None and c1.cards and c1.moves and c1.mark
    assert pg_store.live_inputs("c-nobody").customer is None


def test_a_claim_in_one_statement_answers_its_grant_the_balance_and_its_hold(
    pg_store: PostgresHubStore,
) -> None:
    """`claim_hold` (`hub_claim_hold`, an authorisation's one round trip) answers what it
    granted, the live balance before it, and the hold's id (one point is a hold), ""
    when nothing was granted; None when the customer's ledger mark moved (the caller
    reads again); Superseded, nothing written, for a call that came before the
    receipt's hold was placed. A None for
    every claim sent each authorisation round the loop and then the locked path, the
    same grants at three times the statements."""
    from datetime import UTC, datetime, timedelta

    from tillpoint.agent.ledger import utc_text
    from tillpoint.sync.hub_rules import Superseded
    from tillpoint.sync.loopback import import_doc, sample_master_data

    from .test_review54_mut54c import NOW, WEEK

    import_doc(pg_store, sample_master_data())
    pg_store.publish(NOW, WEEK)
    inputs = pg_store.live_inputs("c-1")  # 1200 points
    now = datetime.now(UTC)
    stamps = (utc_text(now), utc_text(now + timedelta(seconds=600)))

    def claim(receipt: str, points: int, mark: str = inputs.mark) -> Any:
        return pg_store.claim_hold(
            "till-a", receipt, "c-1", points, 1200, inputs.cards, mark, f"h-{receipt}", *stamps
        )

    assert claim("r-0", 1) == (1, 1200, "h-r-0")  # one point is a hold
    assert claim("r-1", 300) == (300, 1199, "h-r-1")
    assert claim("r-2", 2000) == (899, 899, "h-r-2")
    assert claim("r-3", 10) == (0, 0, "")
    assert claim("r-4", 10, mark="moved") is None
    assert pg_store.balance("c-1", now).held == 1200
    # a call that came before r-1's hold was placed (its arrival a second earlier)
    before = (utc_text(now - timedelta(seconds=1)), stamps[1])
    with pytest.raises(Superseded):
        pg_store.claim_hold(
            "till-a", "r-1", "c-1", 5, 1200, inputs.cards, inputs.mark, "h-x", *before
        )
    assert pg_store.balance("c-1", now).held == 1200


def test_a_call_that_finds_every_connection_taken_waits_its_own_time_only(
    pg_url: str,
) -> None:
    """The pool's connections all in use (one here) and the database there: a call with
    1.5 s left (an RPC's) waits for a connection that long, then is told the database
    is unavailable, instead of waiting on until one comes back (here after 60 s)."""
    import threading

    from tillpoint.agent.errors import StorageError

    store = PostgresHubStore(pg_url, migrate_schema=True, pool_size=1)
    held, done = threading.Event(), threading.Event()

    def busy() -> None:  # the connection given back after 60 s at most
        with store.pinned():
            held.set()
            done.wait(60)

    holder = threading.Thread(target=busy)
    holder.start()
    try:
        assert held.wait(60)
        with pytest.raises(StorageError) as failed, store.pinned(1.5):
            pass
        assert str(failed.value).startswith("the hub database is unavailable: "), failed.value
    finally:
        done.set()
        holder.join(60)
        store.close()


# ------------------------------------------------- the advisory locks of a write (§9, §11)


def second_writer(store: PostgresHubStore, lock: Any) -> str:
    """What a second write transaction taking `lock(tx)` meets, with 1.5 s to wait (an
    RPC's time): "went through", or the store's word for a lock it waited out."""
    from tillpoint.agent.errors import StorageError

    try:
        with store.pinned(1.5), store.write_tx() as tx:
            lock(tx)
        return "went through"
    except StorageError as exc:
        return exc.message


def while_held(store: PostgresHubStore, lock: Any, other: Any) -> str:
    """`second_writer(store, other)` in a thread of its own while this thread's write
    transaction holds `lock(tx)`; the first ends only once the second has its answer."""
    import threading

    said: list[str] = []
    with store.write_tx() as tx:
        lock(tx)
        tx.conn.execute("SELECT 1").fetchone()  # the pipeline's statements run: held
        thread = threading.Thread(target=lambda: said.append(second_writer(store, other)))
        thread.start()
        thread.join(60)
    assert said, "the second writer gave no answer within 60 s"
    return said[0]


BUSY = "the hub database is busy (a lock held by another session outlasted this call's time)"


def test_a_customers_lock_is_held_to_the_end_of_its_transaction(
    pg_store: PostgresHubStore,
) -> None:
    """`lock_customers` (the locked authorisation, the hold accounting of a customer one
    transaction at a time): a second writer of c-1 waits for the first's transaction
    (here past its 1.5 s: told busy, nothing stored); a writer of c-2 does not; an empty
    list locks nothing. With the statement skipped for a list of customers, two
    authorisations of one card counted its points each for itself."""
    c1: Any = lambda tx: tx.lock_customers(["c-1"])  # noqa: E731
    assert while_held(pg_store, c1, c1).startswith(BUSY)
    assert while_held(pg_store, c1, lambda tx: tx.lock_customers(["c-2", "c-3"])) == "went through"
    assert while_held(pg_store, c1, lambda tx: tx.lock_customers([])) == "went through"
    both: Any = lambda tx: tx.lock_customers(["c-0", "c-1"])  # noqa: E731
    assert while_held(pg_store, c1, both).startswith(BUSY)


def test_a_receipts_and_its_customers_locks_of_a_settling_ingest_are_held(
    pg_store: PostgresHubStore,
) -> None:
    """`lock_settling` (an ingest's: its receipts' locks, then its customers'): a late
    authorisation of a sold receipt (`lock_receipt`) waits for the ingest that sells
    it, and so does a writer of its customer; another device's receipt of the same id
    does not."""
    settle: Any = lambda tx: tx.lock_settling(["c-1"], "till-a", [], ["r-1"])  # noqa: E731
    assert while_held(pg_store, settle, lambda tx: tx.lock_receipt("till-a", "r-1")).startswith(
        BUSY
    )
    assert while_held(pg_store, settle, lambda tx: tx.lock_customers(["c-1"])).startswith(BUSY)
    other: Any = lambda tx: tx.lock_receipt("till-b", "r-1")  # noqa: E731
    assert while_held(pg_store, settle, other) == "went through"


# ------------------------------------------------- a refused import, whole (§3)


def test_a_refused_import_counts_its_bad_rows_and_its_keys_twice_together(
    pg_store: PostgresHubStore,
) -> None:
    """`hub import` (the staged path) with eleven bad lines and a key twice: the first
    ten problems by line, "(and 2 more)" for the eleventh and the second key's; nothing
    of it is in the draft."""
    from tillpoint.sync.hub_store import ImportRefused, ImportRow, RowProblem

    rows: list[Any] = [ImportRow("customer", "c-9", {"id": "c-9"}, "line 1")]
    rows += [RowProblem(f"line {n}", "not JSON") for n in range(2, 13)]
    rows.append(ImportRow("customer", "c-9", {"id": "c-9"}, "line 13"))
    with pytest.raises(ImportRefused) as refused:
        pg_store.import_rows(iter(rows))
    assert len(refused.value.problems) == 10
    assert refused.value.problems[0] == "line 2: not JSON"
    assert str(refused.value).endswith("line 11: not JSON (and 2 more)"), refused.value
    with pg_store.read_tx() as tx:
        assert tx.conn.execute("SELECT count(*) FROM draft").fetchone() == (0,)


# ------------------------------------------------- the store's kind and its open (§10)


@pytest.mark.parametrize(
    ("store", "postgres"),
    [
        ("postgresql://hub.example/hub", True),
        ("postgres://hub.example/hub", True),
        ("/var/lib/tillpoint-hub/hub.db", False),
        ("hub-postgresql://x", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_postgresql_url_is_a_postgresql_store(store: str | None, postgres: bool) -> None:
    """`is_postgres_url` (`HubDir.on_postgres`): the two schemes libpq takes, at the
    start; a file path (a SQLite store), another scheme, nothing, are not."""
    assert hub_postgres.is_postgres_url(store) is postgres


def test_a_store_opened_with_its_open_lock_logs_no_warning(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The open lock taken (the usual open): the store's log says nothing; the warning
    is for an open lock that could not be taken (docs/HUB.md, Migrations)."""
    import logging

    with caplog.at_level(logging.INFO, logger="tillpoint.sync.hub_postgres"):
        PostgresHubStore(pg_url, migrate_schema=True).close()
    assert [r.getMessage() for r in caplog.records if r.name == hub_postgres.log.name] == []


def test_an_empty_database_is_schema_0_and_a_hub_says_to_migrate_it(pg_url: str) -> None:
    """A new, empty database (no `schema_migrations` yet): schema 0; a hub's open is
    refused with the command to run, and leaves it empty."""
    from tillpoint.agent.errors import StorageError

    assert hub_postgres.schema_version(pg_url) == 0
    with pytest.raises(StorageError) as refused:
        PostgresHubStore(pg_url)
    assert f"has schema 0, this hub needs {hub_postgres.SCHEMA_VERSION}: run" in str(refused.value)
    assert hub_postgres.schema_version(pg_url) == 0


def test_postgresqls_message_is_one_line_without_the_statements_text() -> None:
    """`_line`: libpq's message on one line, without the statement PostgreSQL quotes
    after it ("LINE 1: …" and a caret)."""
    said = 'ERROR:  relation "draft" does not exist\nLINE 1: SELECT 1 FROM draft\n  ^'
    assert hub_postgres._line(Exception(said)) == 'ERROR: relation "draft" does not exist'
    assert hub_postgres._line(Exception("connection failed:\n  refused")) == (
        "connection failed: refused"
    )
