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


def test_another_programs_database_is_named_by_its_first_five_tables(pg_url: str) -> None:
    """The refusal names five of its tables in name order and counts the rest; nothing is
    written into it."""
    names = ["t7", "t1", "t5", "t3", "t6", "t2", "t4"]
    run_sql(pg_url, *(f"CREATE TABLE {name} (id INTEGER)" for name in names))
    with pytest.raises(ForeignDatabase) as refused:
        migrate(pg_url)
    assert "(its tables: t1, t2, t3, t4, t5 and 2 more)" in str(refused.value)
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        left = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert left == (7,)


def test_another_programs_database_of_five_tables_is_named_whole(pg_url: str) -> None:
    run_sql(pg_url, *(f"CREATE TABLE t{i} (id INTEGER)" for i in range(1, 6)))
    with pytest.raises(ForeignDatabase) as refused:
        PostgresHubStore(pg_url)
    assert "(its tables: t1, t2, t3, t4, t5)," in str(refused.value)


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
