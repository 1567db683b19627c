"""The SQL the two hub stores share (sync/hub_sql.py): written once over a dialect, and
what differs per engine (placeholders, list parameters) right on both real engines."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from tillpoint.sync.hub_sql import POSTGRES, SQLITE, SqlHubStore, SqlTx, pg_array
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data

from .conftest import REPO

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WEEK = 7 * 86400.0


def checkout(seq: int, available: int = 0, fiscal: str = "") -> TxIn:
    return TxIn(
        "a",
        seq,
        "CHECKOUT",
        NOW.isoformat(),
        "c-1",
        "",
        json.dumps({"receiptId": f"a-{seq}"}),
        "{}",
        available,
        0,
        "",
        fiscal,
    )


def test_a_batch_longer_than_one_chunk_is_deduplicated_and_settled_whole(
    hub_store_factory: Any,
) -> None:
    """1,201 transactions in one batch: SQLite asks for them in chunks of 500 parameters,
    PostgreSQL in one array; every seq is found again, and a hold past the first chunk
    is settled by its transaction."""
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    held = store.authorise("a", "a-1150", "c-1", 100, NOW, [], NOW, 600.0)
    assert held.authorised == 100
    batch = [checkout(seq, -100 if seq == 1150 else 0) for seq in range(1, 1202)]
    first = store.ingest("a", "b1", batch, NOW)
    assert (first.acked_through, first.count("STORED")) == (1201, 1201)
    # the hold is settled (an active one would still take its 100 from another receipt)
    after = store.authorise("a", "a-other", "c-1", 5000, NOW, [], NOW, 600.0)
    assert (after.authorised, after.live_balance) == (1100, 1100)
    again = [*batch[:-1], checkout(1201, fiscal="other")]  # the last one's content differs
    second = store.ingest("a", "b2", again, NOW)
    assert second.count("DUPLICATE") == 1200 and second.results[-1].outcome == "CONFLICT"
    assert len(store.ledger("a")) == 1201


# Text that an array literal must quote: its delimiters, quotes, backslashes, NULL, spaces.
AWKWARD = ['a"b', "c\\d", "{e,f}", "NULL", "", " g ", 'h\\"i', "ж,ё"]


def test_array_literals_read_back_as_the_values(pg_url: str) -> None:
    """PostgreSQL's list parameters go as array literals (`pg_array`): whatever the text,
    PostgreSQL reads back the very values, NULLs and integers too."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        texts = conn.execute("SELECT %s::text[]", (pg_array([*AWKWARD, None]),)).fetchone()
        numbers = conn.execute("SELECT %s::bigint[]", (pg_array([1, -2, 3]),)).fetchone()
        among = conn.execute(  # an inferred type, as `any_of` leaves it
            "SELECT count(*) FROM unnest(%s::text[]) k WHERE k = ANY(%s)",
            (pg_array(AWKWARD), pg_array(AWKWARD[:3])),
        ).fetchone()
    assert texts == ([*AWKWARD, None],)
    assert numbers == ([1, -2, 3],)
    assert among == (3,)
    assert pg_array([]) == "{}"


def test_awkward_receipts_are_settled_and_stored_as_sent(hub_store_factory: Any) -> None:
    """Receipt ids and JSON with quotes, backslashes and braces: a hold on such a receipt
    is settled by its transaction (the receipts go as one list parameter), and the
    transaction is stored as sent (the batch's rows go as arrays)."""
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    receipts = [f"a-{n}-{text}" for n, text in enumerate(AWKWARD)]
    for receipt in receipts:
        assert store.authorise("a", receipt, "c-1", 10, NOW, [], NOW, 600.0).authorised == 10
    batch = [
        TxIn(
            "a",
            n + 1,
            "CHECKOUT",
            NOW.isoformat(),
            "c-1",
            "",
            json.dumps({"receiptId": receipt, "note": AWKWARD}, ensure_ascii=False),
            json.dumps({"receiptId": receipt}),
            -10,
            0,
            "",
            AWKWARD[n],
        )
        for n, receipt in enumerate(receipts)
    ]
    assert store.ingest("a", "b1", batch, NOW).count("STORED") == len(batch)
    # every hold settled: the live balance is the ledger's, nothing held besides
    whole = store.authorise("a", "a-other", "c-1", 100_000, NOW, [], NOW, 600.0)
    assert whole.authorised == whole.live_balance == store.balance("c-1", NOW).available
    assert [t.receipt_id for t in store.transactions("a", 0, 0, "")] == receipts
    again = store.ingest("a", "b2", batch, NOW)  # the contents compare equal: duplicates
    assert again.count("DUPLICATE") == len(batch)


def test_a_transactions_content_is_the_hash_stored_before() -> None:
    """`TxIn.content` (now one encoder made once) hashes the very text it always did:
    the rows stored before still compare equal to their retries."""
    import hashlib

    tx = checkout(7, 5, fiscal="ФД 1")
    tx = TxIn(*[*tx.__dict__.values()][:6], '{"receiptId":"ж\\"}', *[*tx.__dict__.values()][7:])
    fields = [*[*tx.__dict__.values()][:10], tx.fiscal_document]
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    assert tx.content() == hashlib.sha256(text.encode()).hexdigest()


def test_the_dialects_differ_only_in_what_they_say() -> None:
    sql = "SELECT seq FROM transactions WHERE device_id = ? AND seq > ?"
    assert SQLITE.sql(sql) is sql
    assert POSTGRES.sql(sql) == "SELECT seq FROM transactions WHERE device_id = %s AND seq > %s"
    with pytest.raises(ValueError, match="may not contain '%'"):
        POSTGRES.sql("SELECT 1 WHERE key LIKE 'a%'")
    assert SQLITE.any_of("seq", [1, 2, 3]) == ("seq IN (?,?,?)", [1, 2, 3])
    assert POSTGRES.any_of("seq", (1, 2, 3)) == ("seq = ANY(?)", ["{1,2,3}"])
    assert [len(part) for part in SQLITE.chunks(list(range(1201)))] == [500, 500, 201]
    assert [len(part) for part in POSTGRES.chunks(list(range(1201)))] == [1201]
    assert SQLITE.code_points("c.code") == "c.code"
    assert POSTGRES.code_points("c.code") == 'c.code COLLATE "C"'


# What each store's module may still define of what hub_sql.py writes once: the ways of
# its own engine (PostgreSQL's buffered inserts, `hub_ledger_mark`, pipelined counts).
ENGINE_OWN = {
    "SqliteTx": set(),
    "PgTx": {"__init__", "conn", "_count", "insert_transaction", "ledger_mark"},
    "SqliteHubStore": set(),
    "PostgresHubStore": {"_single", "pinned"},  # `device`: one statement, autocommit
}


def _methods(path: str, cls: str) -> set[str]:
    tree = ast.parse((REPO / "sync" / path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    raise AssertionError(f"no class {cls} in {path}")


def _written_once(base: type) -> set[str]:
    """The methods `base` implements (not those it leaves to the engines)."""
    own = set()
    for name, value in vars(base).items():
        func = getattr(value, "fget", value)
        code = getattr(func, "__code__", None)
        if code is None:
            continue
        source = ast.unparse(ast.parse(_source(func)))
        if "raise NotImplementedError" not in source:
            own.add(name)
    return own


def _source(func: Any) -> str:
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(func))


@pytest.mark.parametrize(
    ("path", "cls", "base"),
    [
        ("hub_sqlite.py", "SqliteTx", SqlTx),
        ("hub_postgres.py", "PgTx", SqlTx),
        ("hub_sqlite.py", "SqliteHubStore", SqlHubStore),
        ("hub_postgres.py", "PostgresHubStore", SqlHubStore),
    ],
)
def test_no_store_writes_a_shared_primitive_again(path: str, cls: str, base: type) -> None:
    again = (_methods(path, cls) & _written_once(base)) - ENGINE_OWN[cls]
    assert not again, f"{path}: {cls} writes again what hub_sql.{base.__name__} has: {again}"


def test_a_pinned_thread_runs_its_statements_on_one_connection(pg_url: str) -> None:
    """`pinned` (an RPC's statements): one connection of the pool for the thread's reads
    and writes until the block ends; a failed statement leaves the pool usable."""
    from tillpoint.agent.errors import StorageError
    from tillpoint.sync.hub_postgres import PostgresHubStore

    store = PostgresHubStore(pg_url, migrate_schema=True, pool_size=2)
    try:

        def backend() -> int:
            with store._conn() as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return int(row[0])

        with store.pinned():
            first = backend()
            with store.write_tx() as tx:
                assert tx.conn.execute("SELECT pg_backend_pid()").fetchone() == (first,)
            with pytest.raises(StorageError), store._conn() as conn:
                conn.execute("SELECT no_such_column FROM devices")
            assert backend() == first
            assert store.device("nobody") is None
        assert store.latest() is None  # the connection went back to the pool, usable
    finally:
        store.close()
