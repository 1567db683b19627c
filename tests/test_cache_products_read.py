"""A receipt's products are read from the covering index `products_read` (cache migration
m003): one B-tree descent a SKU. A cache built before that migration gets the index when
the agent opens it, and prices exactly as before."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from tillpoint.agent.db import cache_file, cache_migrations, connect, migrate
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.agent.wire import json_of

from tests.conftest import receipt, snapshot


def _plan(data_dir: Path) -> str:
    conn = sqlite3.connect(cache_file(data_dir))
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN SELECT sku, category, excluded <> 0 FROM products"
            " INDEXED BY products_read WHERE sku IN (?, ?)",
            ("a", "b"),
        ).fetchall()
    finally:
        conn.close()
    return " ".join(str(row[-1]) for row in rows)


def test_the_products_are_read_from_the_covering_index(agent: Agent) -> None:
    assert "COVERING INDEX products_read" in _plan(agent.data_dir)


def test_a_cache_from_before_the_index_gets_it_on_open_and_prices_the_same(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = Agent(data, "till-1")
    first.load_snapshot(snapshot())
    body = receipt(lines=[{"sku": "4601234000017", "qty": "2", "priceMinor": 8990}])
    before = json_of(first.quote(receipt_from_json(body)))
    first.close()
    # As the previous release left it: no index, no record of migration m003.
    conn = sqlite3.connect(cache_file(data))
    conn.execute("DROP INDEX products_read")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_products_read'")
    conn.commit()
    conn.close()

    again = Agent(data, "till-1")
    try:
        assert json_of(again.quote(receipt_from_json(body))) == before
    finally:
        again.close()
    assert "COVERING INDEX products_read" in _plan(data)


def test_two_connections_migrating_one_old_cache_both_open_it(tmp_path: Path) -> None:
    """After an upgrade `tillpoint run` and a CLI may open the same old cache at once: the
    second waits for the first's write lock, then finds the index made and m003 recorded
    (unique), and must open the cache rather than fail."""
    data = tmp_path / "data"
    first = Agent(data, "till-1")
    first.load_snapshot(snapshot())
    first.close()
    path = cache_file(data)
    setup = sqlite3.connect(path)
    setup.execute("DROP INDEX products_read")
    setup.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_products_read'")
    setup.commit()
    setup.close()

    # The first connection is half-way through m003: the index made, not yet committed.
    ahead = connect(path, create=False)
    second = connect(path, create=False)
    failed: list[BaseException] = []

    def open_second() -> None:
        try:
            migrate(second, cache_migrations)
        except BaseException as exc:  # reported below
            failed.append(exc)

    thread = threading.Thread(target=open_second)
    try:
        ahead.execute("BEGIN IMMEDIATE")
        ahead.execute("CREATE INDEX products_read ON products (sku, category, excluded)")
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # the second waits for the first's write lock
        ahead.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('tillpoint.cache', 'm003_products_read', '2026-12-01')"
        )
        ahead.execute("COMMIT")
        thread.join(10)
        assert not thread.is_alive()
        assert failed == []
        assert cache_migrations.current(second)
    finally:
        thread.join(10)
        ahead.close()
        second.close()
