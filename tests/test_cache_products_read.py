"""A receipt's products are read from the covering index `products_read` (cache migration
m003): one B-tree descent a SKU. A cache built before that migration gets the index when
the agent opens it, and prices exactly as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tillpoint.agent.db import cache_file
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
