"""The SQL both hub stores share, written once over a small dialect layer.

`hub_rules.HubRules` holds the hub's rules over `HubTx`'s primitives. This module holds
the one implementation of those primitives (`SqlTx`) and of the store's plain reads and
device records (`SqlHubStore`), written against a `Dialect`: the little that differs
between SQLite and PostgreSQL in these statements.

- Placeholders: statements are written with ``?``; `PostgresDialect.sql` turns them into
  psycopg's ``%s`` (once per statement text, cached).
- A list parameter: ``col IN (?, ?, …)`` in chunks on SQLite, ``col = ANY(?)`` (one array)
  on PostgreSQL (`Dialect.any_of`, `Dialect.chunks`).
- The JSON expressions: a card revision's owner (the expression of the
  ``revisions_card_owner`` index, so that both planners use it), the points earned at
  once at a checkout and those a refund gives back (`Dialect.earned`, `Dialect.returned`).
- Text in code point order where a column's collation does not give it.

Upserts and ignored duplicates are standard ``INSERT … ON CONFLICT … DO UPDATE / DO
NOTHING`` on both engines (SQLite has them since 3.24), so they are written once too.

What really differs stays in each store's module: SQLite's file, WAL and per-thread
connections, its import through a temp table and its snapshot rows by bare columns of a
max() aggregate (`hub_sqlite`); PostgreSQL's pool and migrations, advisory locks,
pipelined ingest (its transactions buffered into one ``unnest`` insert), ``COPY`` import,
`hub_claim_hold`, the one-statement live inputs and server-side cursors (`hub_postgres`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

from tillpoint.agent.errors import InputError
from tillpoint.agent.ledger import utc_text
from tillpoint.agent.models import coupon_code

from .hub_rules import (
    EARNED_EXPIRES_KEY,
    EARNED_WHEN,
    MOVED_AT,
    RECEIPT_KEY,
    CouponUse,
    HubRules,
    Move,
    Texts,
    _when,
    conflict,
    move_of,
)
from .hub_store import DeviceRecord, LedgerEntry, Publication, StoredTx, TxIn

T = TypeVar("T")

# The order of a stream's moves after its own key (customer): the order they were stored.
MOVE_ORDER = "t.ingest_id"
# How many versions one write transaction of `prune_versions` forgets (240 tills: 48,000
# appliedThrough rows, a fraction of a second of the SQLite hub's write lock).
PRUNE_STEP = 200
# The pause between two of its steps: a SQLite writer waiting for the lock polls it at
# most 100 ms apart (there is no queue), and missed a lock free for microseconds.
PRUNE_PAUSE_S = 0.15


def _moves(earned: str, returned: str, fixed: str) -> str:
    return (
        "t.delta_available AS a, t.pending_activates_at AS w, t.delta_pending AS d,"
        f" {MOVED_AT} AS s, {earned} AS e, {RECEIPT_KEY} AS r, t.kind AS k, {returned} AS b,"
        f" {fixed} AS x"
    )


def _has_fixed(find: str) -> str:
    """A sale whose stored result holds `EARNED_EXPIRES_KEY` (only the hub writes it, after
    checking it), by the engine's substring function: its JSON is read for it; the rest
    (older tills' sales) are not."""
    return f"t.kind = 'CHECKOUT' AND {find}(t.result_json, '\"{EARNED_EXPIRES_KEY}\"') > 0"


# The set_aside columns and index of review 32 (hub32b): SQLite's m006_set_aside_resolved
# and PostgreSQL's migration 10 run the same statements.
SET_ASIDE_RESOLVED = """
    ALTER TABLE set_aside ADD COLUMN seq_taken INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE set_aside ADD COLUMN stored_seq BIGINT;
    ALTER TABLE set_aside ADD COLUMN resolved_at TEXT;
    UPDATE set_aside SET seq_taken = 1 WHERE outcome = 'CONFLICT'
        AND reason LIKE 'seq % of % is already stored with other content%';
    CREATE INDEX set_aside_open_taken ON set_aside (device_id)
        WHERE seq_taken = 1 AND stored_seq IS NULL;
"""


class Dialect:
    """What differs between the engines in the statements of `SqlTx` and `SqlHubStore`."""

    name: ClassVar[str]
    differs: ClassVar[str]  # "{a} differs from {b}", NULL equal to NULL
    card_owner: ClassVar[str]  # a card revision's customerId (the index's expression)
    earned: ClassVar[str]  # points earned at once at a checkout: see `hub_rules.Move`
    returned: ClassVar[str]  # points a refund gives back: see `hub_rules.Move`
    fixed: ClassVar[str]  # when a sale's earned batch expires, as said: see `hub_rules.Move`
    # The columns of a `hub_rules.Move` of each transaction `t`
    moves: ClassVar[str]

    def sql(self, text: str) -> str:
        """The statement written with ``?`` placeholders, in the driver's style."""
        return text

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """A condition true where `column` is one of `values` (at most one chunk of
        `chunks`), and its parameters."""
        raise NotImplementedError

    def chunks(self, values: Sequence[T]) -> Iterator[Sequence[T]]:
        """`values` in parts small enough for one `any_of`."""
        yield values

    def code_points(self, column: str) -> str:
        """`column` compared in code point order (as Python's str and the snapshot do)."""
        return column

    def deleted_in_order(self, table: str, key: str, where: str) -> str:
        """The DELETE of `table`'s rows where `where`; on an engine of row locks, the
        rows locked first in `key`'s code point order, so that two such statements (or
        scans by two indexes) never take two rows in opposite orders (review 47)."""
        return f"DELETE FROM {table} WHERE {where}"


class SqliteDialect(Dialect):
    name = "sqlite"
    differs = "NOT ({a} IS {b})"
    card_owner = "json_extract(doc, '$.customerId')"
    earned = (
        f"CASE WHEN {EARNED_WHEN} AND json_type(result_json, '$.earnedPoints') = 'integer'"
        " THEN json_extract(result_json, '$.earnedPoints') ELSE 0 END"
    )
    returned = (
        "CASE WHEN kind = 'REFUND' AND json_type(result_json, '$.returnedPoints')"
        " = 'integer' THEN json_extract(result_json, '$.returnedPoints') ELSE 0 END"
    )
    fixed = (
        f"CASE WHEN {_has_fixed('instr')}"
        f" THEN json_extract(t.result_json, '$.{EARNED_EXPIRES_KEY}') END"
    )
    moves = _moves(earned, returned, fixed)
    CHUNK = 500  # well under SQLite's limit on the number of parameters

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def chunks(self, values: Sequence[T]) -> Iterator[Sequence[T]]:
        for start in range(0, len(values), self.CHUNK):
            yield values[start : start + self.CHUNK]

    # BINARY, SQLite's default collation, is code point order for UTF-8 text


# A sale's result as jsonb, read for its points. A coupon code an older till kept a NUL
# in is the escape \u0000 there, which jsonb (and json's operators) refuse: one such row
# failed every snapshot build of the chain. The six characters `\u0000` become
# `\ufffd` wherever they are (an escape of U+0000 becomes one of U+FFFD; after an
# escaped backslash they are plain letters either way): the text stays valid JSON and
# no number changes.
_RESULT_JSONB = "replace(result_json, '\\u0000', '\\ufffd')::jsonb"


class PostgresDialect(Dialect):
    name = "postgresql"
    differs = "{a} IS DISTINCT FROM {b}"
    card_owner = "(doc::jsonb) ->> 'customerId'"
    earned = (
        f"CASE WHEN {EARNED_WHEN}"
        f" AND jsonb_typeof({_RESULT_JSONB} -> 'earnedPoints') = 'number'"
        f" THEN ({_RESULT_JSONB} ->> 'earnedPoints')::numeric::bigint ELSE 0 END"
    )
    returned = (
        "CASE WHEN kind = 'REFUND'"
        f" AND jsonb_typeof({_RESULT_JSONB} -> 'returnedPoints') = 'number'"
        f" THEN ({_RESULT_JSONB} ->> 'returnedPoints')::numeric::bigint ELSE 0 END"
    )
    fixed = f"CASE WHEN {_has_fixed('strpos')} THEN {_RESULT_JSONB} ->> '{EARNED_EXPIRES_KEY}' END"
    moves = _moves(earned, returned, fixed)

    def sql(self, text: str) -> str:
        return _percent_s(text)

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [pg_array(values)]

    def code_points(self, column: str) -> str:
        return f'{column} COLLATE "C"'

    def deleted_in_order(self, table: str, key: str, where: str) -> str:
        return (
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where}"
            f" ORDER BY {self.code_points(key)} FOR UPDATE)"
        )


def pg_array(values: Iterable[str | int | None]) -> str:
    """`values` as a PostgreSQL array literal (``{"a","b"}``, ``{1,2}``), a text
    parameter the statement casts or PostgreSQL infers: built by joins in C, where
    psycopg adapts a list element by element in Python (about twice the CPU for a
    batch's arrays, and the push's statements carry several)."""
    return (
        "{"
        + ",".join(
            "NULL"
            if v is None
            else str(v)
            if isinstance(v, int)
            else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


@lru_cache(maxsize=1024)
def _percent_s(text: str) -> str:
    if "%" in text:  # psycopg would read it as a placeholder
        raise ValueError(f"a shared statement may not contain '%': {text}")
    return text.replace("?", "%s")


SQLITE = SqliteDialect()
POSTGRES = PostgresDialect()


def _one(cur: Any) -> int:
    """The first column of the cursor's first row as an int (0 when there is none)."""
    row = cur.fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _pub(row: Sequence[Any] | None) -> Publication | None:
    if row is None:
        return None
    return Publication(
        int(row[0]), _when(row[1]), _when(row[2]), int(row[3]), str(row[4]), int(row[5])
    )


# The draft rows (`d`) a publication takes: all of them (`hub publish`), or, in a balance
# refresh, those tills' transactions wrote (`SqlTx.put_till_coupon`: a code's first use,
# a till-issued code), which no till should wait for an operator to publish.
_TILLS_ROWS = "d.kind = 'coupon' AND d.key IN (SELECT code FROM till_coupons)"
# ... and what each publishes: its draft doc, but no code a till used (a one-time code: an
# import of the CRM's coupon list again never brings a used one back; §13).
_PUBLISHED_DOC = (
    "(CASE WHEN d.kind = 'coupon' AND d.key IN (SELECT code FROM coupon_uses)"
    " THEN NULL ELSE d.doc END)"
)
# ... and how they leave the draft (all at once: no WHERE, SQLite's truncation).
CLEARED = {True: "DELETE FROM draft", False: f"DELETE FROM draft AS d WHERE {_TILLS_ROWS}"}


def publish_sql(dialect: Dialect, include_draft: bool) -> str:
    """The one statement that makes a version's revisions (parameters: the version, the
    latest published one), whatever the draft's size: a row becomes a revision only when
    it differs from the latest published one (docs are canonical text)."""
    latest = (
        "(SELECT r.doc FROM revisions r WHERE r.kind = d.kind AND r.key = d.key"
        " AND r.version <= ? ORDER BY r.version DESC LIMIT 1)"
    )
    taken = "TRUE" if include_draft else _TILLS_ROWS
    return dialect.sql(
        "INSERT INTO revisions (kind, key, version, doc)"
        f" SELECT d.kind, d.key, ?, {_PUBLISHED_DOC} FROM draft d WHERE {taken}"
        f" AND {dialect.differs.format(a=latest, b=_PUBLISHED_DOC)}"
    )


def category_cycles(tx: SqlTx) -> list[tuple[str, str]]:
    """The cycles of the category tree the next publication would hold (the draft over
    the latest version): (a category of each cycle, its words), one a cycle. A tree has
    none; `hub import` refuses one (an offer on a category of a cycle would reach every
    category of it). Categories are few (thousands in a chain): read whole."""
    parents: dict[str, str | None] = {
        key: json.loads(doc).get("parent")
        for key, doc in tx.texts_as_of("category", tx.latest_version())
    }
    for key, doc in tx.execute("SELECT key, doc FROM draft WHERE kind = 'category'").fetchall():
        if doc is None:
            parents.pop(str(key), None)
        else:
            parents[str(key)] = json.loads(doc).get("parent")
    done: set[str] = set()
    cycles: list[tuple[str, str]] = []
    for start in sorted(parents):
        path: list[str] = []
        code: str | None = start
        while code is not None and code in parents and code not in done and code not in path:
            path.append(code)
            code = parents[code]
        if code is not None and code in path:
            ring = path[path.index(code) :]
            words = " → ".join([*ring, code])
            cycles.append((code, f"category {code!r} is its own ancestor ({words})"))
        done.update(path)
    return cycles


class SqlTx:
    """`HubTx` on an open transaction of a DB-API connection, over `dialect`: every
    primitive the two engines do alike. A store's subclass supplies the locks and the
    snapshot's row streams (`texts_as_of`, `counted_customer_moves`), and may replace any
    primitive with a way of its own (PostgreSQL: buffered inserts, `hub_ledger_mark`)."""

    dialect: ClassVar[Dialect]
    # Old push answers are pruned with each answer saved: all of them where one writer
    # runs at a time (SQLite), only the device's where several servers ingest at once
    # (its rows are under its device's lock, so no two ingests delete the same rows).
    prune_own_batches_only: ClassVar[bool] = False

    def __init__(self, conn: Any) -> None:
        self._raw = conn

    @property
    def conn(self) -> Any:
        return self._raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one shared statement (``?`` placeholders); its cursor."""
        if params:
            return self.conn.execute(self.dialect.sql(sql), params)
        return self.conn.execute(self.dialect.sql(sql))

    def _count(self, cur: Any) -> int:
        """The rows a statement changed."""
        return int(cur.rowcount)

    # -- engine-specific (see the subclasses)

    def lock_device(self, device_id: str) -> None:
        raise NotImplementedError

    def lock_customers(self, customer_ids: Iterable[str]) -> None:
        raise NotImplementedError

    def lock_receipt(self, device_id: str, receipt_id: str) -> None:
        raise NotImplementedError

    def lock_settling(
        self,
        customer_ids: list[str],
        device_id: str,
        keys: list[str],
        receipts: Sequence[str] = (),
    ) -> None:
        raise NotImplementedError

    def lock_devices(self) -> None:
        """Until the transaction ends: one enrolment at a time (its check reads every
        device, then inserts)."""
        raise NotImplementedError

    def texts_as_of(self, kind: str, version: int) -> Texts:
        raise NotImplementedError

    def counted_customer_moves(
        self, pub: Publication, only: set[str] | None
    ) -> Iterable[tuple[Any, ...]]:
        raise NotImplementedError

    # -- master data and publications

    def latest_version(self) -> int:
        return _one(self.execute("SELECT coalesce(max(version), 0) FROM publications"))

    def publication(self, version: int) -> Publication | None:
        return _pub(
            self.execute(
                "SELECT version, issued_at, expires_at, cut, reason, changed_rows"
                " FROM publications WHERE version = ?",
                (version,),
            ).fetchone()
        )

    def text_as_of(self, kind: str, key: str, version: int) -> str | None:
        row = self.execute(
            "SELECT doc FROM revisions WHERE kind = ? AND key = ? AND version <= ?"
            " ORDER BY version DESC LIMIT 1",
            (kind, key, version),
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def keys_changed(self, kind: str, base: int, version: int) -> list[str]:
        return [
            str(key)
            for (key,) in self.execute(
                "SELECT DISTINCT key FROM revisions WHERE kind = ? AND version > ?"
                " AND version <= ? ORDER BY key",
                (kind, base, version),
            )
        ]

    def cards_ever_of(self, customer_id: str) -> list[str]:
        return [
            str(key)
            for (key,) in self.execute(
                f"SELECT DISTINCT key FROM revisions WHERE {self.dialect.card_owner} = ?"
                " AND kind = 'card'",
                (customer_id,),
            )
        ]

    def progress_at(self, version: int) -> dict[str, int]:
        return {
            str(device): int(through)
            for device, through in self.execute(
                "SELECT device_id, through FROM publication_progress WHERE version = ?"
                " ORDER BY device_id",
                (version,),
            )
        }

    def put_till_coupon(self, code: str, doc: str | None) -> None:
        self.execute(
            "INSERT INTO draft (kind, key, doc) VALUES ('coupon', ?, ?)"
            " ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc",
            (code, doc),
        )
        self.execute(
            "INSERT INTO till_coupons (code) VALUES (?) ON CONFLICT (code) DO NOTHING", (code,)
        )

    # -- the ledger

    def stored_receipt(self, device_id: str, seq: int) -> str | None:
        row = self.execute(
            "SELECT receipt_id FROM transactions WHERE device_id = ? AND seq = ?",
            (device_id, seq),
        ).fetchone()
        return None if row is None else str(row[0])

    def stored_contents(self, device_id: str, seqs: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for part in self.dialect.chunks(seqs):
            among, params = self.dialect.any_of("seq", part)
            for seq, content in self.execute(
                f"SELECT seq, content_sha256 FROM transactions WHERE device_id = ? AND {among}",
                (device_id, *params),
            ):
                found[int(seq)] = str(content)
        return found

    def seqs_after(self, device_id: str, seq: int, limit: int) -> list[int]:
        """The device's seqs above `seq` the hub has decided: stored, or set aside (a
        CONFLICT or REJECTED transaction is never stored; counting it as a hole would
        stop the device's contiguous mark there for good, and with it every later sale
        of the device in every snapshot)."""
        return [
            int(s)
            for (s,) in self.execute(
                "SELECT seq FROM transactions WHERE device_id = ? AND seq > ?"
                " UNION SELECT seq FROM set_aside WHERE device_id = ? AND seq > ?"
                " ORDER BY 1 LIMIT ?",
                (device_id, seq, device_id, seq, limit),
            )
        ]

    @staticmethod
    def transaction_row(
        tx: TxIn, fields: dict[str, Any], content: str, now: str
    ) -> tuple[Any, ...]:
        """The values of `INSERT_TRANSACTION`'s columns, in order."""
        return (
            tx.device_id,
            tx.seq,
            tx.kind,
            tx.at,
            tx.customer_id,
            tx.card,
            fields["receipt_id"],
            fields["ref_id"],
            tx.request_json,
            fields.get("result_json", tx.result_json),  # with the batch's expiry (§16)
            tx.delta_available,
            tx.delta_pending,
            fields["available"],
            fields["pending"],
            fields["activates"],
            content,
            now,
            tx.fiscal_document,
        )

    TRANSACTION_COLUMNS = (
        "device_id, seq, kind, at, customer_id, card, receipt_id, ref_id, request_json,"
        " result_json, sent_delta_available, sent_delta_pending, delta_available,"
        " delta_pending, pending_activates_at, content_sha256, ingested_at, fiscal_document"
    )

    def insert_transaction(self, tx: TxIn, fields: dict[str, Any], content: str, now: str) -> None:
        self.execute(
            f"INSERT INTO transactions ({self.TRANSACTION_COLUMNS})"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            self.transaction_row(tx, fields, content, now),
        )

    def set_aside(
        self,
        tx: TxIn,
        outcome: str,
        reason: str,
        content: str,
        payload: str,
        now: str,
        seq_taken: bool = False,
    ) -> None:
        self.execute(
            "INSERT INTO set_aside (device_id, seq, outcome, reason, content_sha256, payload,"
            " received_at, seq_taken) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (tx.device_id, tx.seq, outcome, reason, content, payload, now, int(seq_taken)),
        )

    def open_seq_taken(self, device_id: str) -> list[tuple[int, str]]:
        # by the partial index set_aside_open_taken: nothing to read on most pushes
        rows = self.execute(
            "SELECT id, payload FROM set_aside WHERE device_id = ? AND seq_taken = 1"
            " AND stored_seq IS NULL ORDER BY id",
            (device_id,),
        ).fetchall()
        return [(int(i), str(p)) for i, p in rows]

    def resolve_set_aside(self, entry_id: int, stored_seq: int, now: str) -> None:
        self.execute(
            "UPDATE set_aside SET stored_seq = ?, resolved_at = ? WHERE id = ?",
            (stored_seq, now, entry_id),
        )

    def booked(
        self, device_id: str, kind: str, receipt_id: str, ref_id: str
    ) -> tuple[int, str] | None:
        # The receipt's few rows by its index, the first taken here: an ORDER BY seq LIMIT
        # 1 led SQLite to walk the device's rows in seq order instead (a scan a push row,
        # 4,200 → 140 transactions a second at 20,000 on one till).
        rows = self.execute(
            "SELECT seq, request_json FROM transactions WHERE device_id = ? AND receipt_id = ?"
            " AND kind = ? AND ref_id = ?",
            (device_id, receipt_id, kind, ref_id),
        ).fetchall()
        if not rows:
            return None
        seq, request_json = min(rows, key=lambda row: int(row[0]))
        return int(seq), str(request_json)

    def checkout_pending(self, device_id: str, receipt_id: str) -> tuple[str | None, int] | None:
        row = self.execute(
            "SELECT pending_activates_at, coalesce((SELECT sum(delta_pending) FROM transactions"
            " t2 WHERE t2.device_id = t.device_id AND t2.receipt_id = t.receipt_id), 0)"
            " FROM transactions t WHERE device_id = ? AND receipt_id = ?"
            " AND kind = 'CHECKOUT' LIMIT 1",
            (device_id, receipt_id),
        ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def contiguous_through(self, device_id: str) -> int | None:
        row = self.execute(
            "SELECT contiguous_through FROM device_progress WHERE device_id = ?", (device_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def set_contiguous_through(self, device_id: str, through: int) -> None:
        self.execute(
            "INSERT INTO device_progress VALUES (?, ?) ON CONFLICT (device_id)"
            " DO UPDATE SET contiguous_through = excluded.contiguous_through",
            (device_id, through),
        )

    def batch_answer(self, device_id: str, batch_id: str) -> tuple[str, str] | None:
        row = self.execute(
            "SELECT content_sha256, ack FROM push_batches WHERE device_id = ? AND batch_id = ?",
            (device_id, batch_id),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def save_batch_answer(
        self, device_id: str, batch_id: str, content: str, answer: str, now: str, prune_before: str
    ) -> None:
        self.execute(
            "INSERT INTO push_batches VALUES (?, ?, ?, ?, ?) ON CONFLICT"
            " (device_id, batch_id) DO UPDATE SET content_sha256 = excluded.content_sha256,"
            " ack = excluded.ack, created_at = excluded.created_at",
            (device_id, batch_id, content, answer, now),
        )
        if self.prune_own_batches_only:
            self.execute(
                "DELETE FROM push_batches WHERE device_id = ? AND created_at < ?",
                (device_id, prune_before),
            )
        else:
            self.execute("DELETE FROM push_batches WHERE created_at < ?", (prune_before,))

    def _customer_or_cards(self, customer_id: str, cards: list[str]) -> tuple[str, list[Any]]:
        """The transactions of the customer, and the UNKNOWN-card ones of `cards`."""
        if not cards:
            return "customer_id = ?", [customer_id]
        among, params = self.dialect.any_of("card", cards)
        return f"(customer_id = ? OR (customer_id = '' AND {among}))", [customer_id, *params]

    def live_moves(self, customer_id: str, cards: list[str]) -> list[Move]:
        where, params = self._customer_or_cards(customer_id, cards)
        return [
            move_of(row)
            for row in self.execute(
                f"SELECT {self.dialect.moves} FROM transactions t WHERE {where}"
                f" ORDER BY {MOVE_ORDER}",
                params,
            )
        ]

    def ledger_mark(self, customer_id: str, cards: list[str]) -> str:
        where, params = self._customer_or_cards(customer_id, cards)
        row = self.execute(
            f"SELECT count(*), coalesce(max(ingest_id), 0) FROM transactions WHERE {where}",
            params,
        ).fetchone()
        return f"{self.latest_version()}:{row[0]}:{row[1]}"

    # -- what a publication counts

    def newly_counted(self, base: Publication, pub: Publication) -> Iterable[tuple[str, str]]:
        return [
            (str(a), str(b))
            for a, b in self.execute(
                "SELECT DISTINCT t.customer_id, t.card FROM publication_progress p"
                " JOIN transactions t ON t.device_id = p.device_id AND t.seq <= p.through"
                " AND t.seq > coalesce((SELECT b.through FROM publication_progress b"
                " WHERE b.version = ? AND b.device_id = p.device_id), 0)"
                " WHERE p.version = ? AND t.ingest_id <= ?",
                (base.version, pub.version, pub.cut),
            )
        ]

    def reowned_cards(self, base: Publication, pub: Publication) -> Iterable[str]:
        return [
            str(card)
            for (card,) in self.execute(
                "SELECT DISTINCT r.key FROM revisions r WHERE r.kind = 'card'"
                " AND r.version > ? AND r.version <= ? AND EXISTS (SELECT 1"
                " FROM transactions t WHERE t.customer_id = '' AND t.card = r.key"
                " AND t.ingest_id <= ?)",
                (base.version, pub.version, pub.cut),
            )
        ]

    # The transactions a publication counts (parameters: its version, its cut).
    COUNTED = (
        " FROM transactions t JOIN publication_progress p ON p.version = ?"
        " AND p.device_id = t.device_id WHERE t.ingest_id <= ? AND t.seq <= p.through"
    )

    def counted_card_moves(self, pub: Publication) -> Iterable[tuple[Any, ...]]:
        return [
            (str(row[0]), *move_of(row[1:]))
            for row in self.execute(
                f"SELECT t.card, {self.dialect.moves}{self.COUNTED}"
                f" AND t.customer_id = '' AND t.card != '' ORDER BY t.card, {MOVE_ORDER}",
                (pub.version, pub.cut),
            )
        ]

    # -- coupons

    def coupon_first_use(self, code: str) -> tuple[str, str] | None:
        row = self.execute(
            "SELECT device_id, receipt_id FROM coupon_uses WHERE code = ?", (code,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def record_coupon_use(self, row: CouponUse) -> tuple[str, str] | None:
        # Two servers may record the same code at once: the unique key decides, and the
        # loser reads the winner's (on PostgreSQL committed by then: ON CONFLICT waited
        # for it; on SQLite this transaction is the only writer and always wins).
        done = self._count(
            self.execute(
                "INSERT INTO coupon_uses VALUES (?,?,?,?,?,?) ON CONFLICT (code) DO NOTHING", row
            )
        )
        return None if done else self.coupon_first_use(row[0])

    def record_coupon_conflict(self, row: CouponUse) -> None:
        self.execute(
            "INSERT INTO coupon_conflicts VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING", row
        )

    # Every statement that deletes several coupon holds takes them in code order
    # (PostgreSQL: locked first). Each in its plan's order (the heap's, `expires_at`'s,
    # the receipt index's), an expiry and an ingest's drop met two rows in opposite
    # orders and PostgreSQL failed one ("deadlock detected"; review 47, pg47).

    def _coupon_holds_deleted(self, where: str) -> str:
        return self.dialect.deleted_in_order("coupon_holds", "code", where)

    def drop_coupon_holds_of(self, device_id: str, receipt_ids: list[str]) -> None:
        self._of_receipts(
            self._coupon_holds_deleted("device_id = ? AND {}"), device_id, receipt_ids
        )

    def clear_coupon_holds(self, device_id: str, receipt_id: str, now: str) -> None:
        self.execute(
            self._coupon_holds_deleted("expires_at <= ? OR (device_id = ? AND receipt_id = ?)"),
            (now, device_id, receipt_id),
        )

    def keep_coupon_holds(
        self, device_id: str, receipt_id: str, codes: list[str], placed_by: str
    ) -> int:
        keep = set(codes)
        # deleted one by one in code order, the order of every other statement that
        # deletes several coupon holds (`PgTx`; review 47, pg47)
        held = [
            str(code)
            for (code,) in self.execute(
                "SELECT code FROM coupon_holds WHERE device_id = ? AND receipt_id = ?"
                f" AND created_at <= ? ORDER BY {self.dialect.code_points('code')}",
                (device_id, receipt_id, placed_by),
            ).fetchall()
        ]
        gone = 0
        for code in held:
            if code not in keep:
                gone += self._count(
                    self.execute(
                        "DELETE FROM coupon_holds WHERE code = ? AND device_id = ?"
                        " AND receipt_id = ? AND created_at <= ?",
                        (code, device_id, receipt_id, placed_by),
                    )
                )
        return gone

    def coupon_held(self, code: str) -> bool:
        return (
            self.execute("SELECT 1 FROM coupon_holds WHERE code = ?", (code,)).fetchone()
            is not None
        )

    def hold_coupon(
        self, code: str, device_id: str, receipt_id: str, customer_id: str, now: str, expires: str
    ) -> bool:
        # Two servers may hold the same code at once: the key decides, the loser is told.
        return bool(
            self._count(
                self.execute(
                    "INSERT INTO coupon_holds VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (code, device_id, receipt_id, customer_id, now, expires),
                )
            )
        )

    # -- holds

    def expire_holds(self, customer_id: str, now: str) -> None:
        self.execute(
            "UPDATE holds SET state = 'EXPIRED' WHERE customer_id = ? AND state = 'ACTIVE'"
            " AND expires_at <= ?",
            (customer_id, now),
        )

    def active_holds_at(self, customer_id: str) -> list[tuple[str, str, int, str]]:
        return [
            (str(d), str(r), int(p), str(a or ""))
            for d, r, p, a in self.execute(
                "SELECT device_id, receipt_id, points, receipt_at FROM holds WHERE customer_id = ?"
                " AND state = 'ACTIVE'",
                (customer_id,),
            )
        ]

    def held(self, customer_id: str, now: str) -> int:
        return _one(
            self.execute(
                "SELECT coalesce(sum(points), 0) FROM holds WHERE customer_id = ?"
                " AND state = 'ACTIVE' AND expires_at > ?",
                (customer_id, now),
            )
        )

    def settle_holds(self, device_id: str, receipt_ids: list[str]) -> None:
        self._of_receipts(
            "UPDATE holds SET state = 'SETTLED' WHERE device_id = ? AND {} AND state = 'ACTIVE'",
            device_id,
            receipt_ids,
        )

    def _of_receipts(self, sql: str, device_id: str, receipt_ids: list[str]) -> None:
        """`sql` for the device's receipts (``{}``: the condition on receipt_id), a
        statement a chunk."""
        for part in self.dialect.chunks(receipt_ids):
            among, params = self.dialect.any_of("receipt_id", part)
            self.execute(sql.format(among), (device_id, *params))

    def upsert_hold(
        self,
        hold_id: str,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        now: str,
        expires: str,
        at: str = "",
    ) -> None:
        self.execute(
            "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, 'ACTIVE', ?)"
            " ON CONFLICT (device_id, receipt_id) DO UPDATE SET"
            " points = excluded.points, expires_at = excluded.expires_at, state = 'ACTIVE',"
            " receipt_at = excluded.receipt_at",
            (hold_id, device_id, receipt_id, customer_id, points, now, expires, at),
        )

    def receipt_settled(self, device_id: str, receipt_id: str) -> bool:
        row = self.execute(
            "SELECT 1 FROM transactions WHERE device_id = ? AND receipt_id = ?"
            " AND kind = 'CHECKOUT' UNION ALL SELECT 1 FROM holds"
            " WHERE device_id = ? AND receipt_id = ? AND state = 'SETTLED' LIMIT 1",
            (device_id, receipt_id, device_id, receipt_id),
        ).fetchone()
        return row is not None

    def newest_hold_stamp(self, device_id: str, receipt_id: str) -> str | None:
        row = self.execute(
            "SELECT max(t) FROM (SELECT created_at AS t FROM holds WHERE device_id = ?"
            " AND receipt_id = ? AND state = 'ACTIVE' UNION ALL SELECT created_at FROM"
            " coupon_holds WHERE device_id = ? AND receipt_id = ?) AS placed",
            (device_id, receipt_id, device_id, receipt_id),
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def shrink_hold(self, device_id: str, receipt_id: str, points: int, placed_by: str) -> int:
        if points <= 0:
            return self._count(
                self.execute(
                    "DELETE FROM holds WHERE device_id = ? AND receipt_id = ?"
                    " AND state = 'ACTIVE' AND created_at <= ?",
                    (device_id, receipt_id, placed_by),
                )
            )
        return self._count(
            self.execute(
                "UPDATE holds SET points = ? WHERE device_id = ? AND receipt_id = ?"
                " AND state = 'ACTIVE' AND points > ? AND created_at <= ?",
                (points, device_id, receipt_id, points, placed_by),
            )
        )

    def delete_hold(self, device_id: str, receipt_id: str) -> int:
        return self._count(
            self.execute(
                "DELETE FROM holds WHERE device_id = ? AND receipt_id = ?", (device_id, receipt_id)
            )
        )


# A device's row as `DeviceRecord` holds it, field for field.
_DEVICE_ROWS = "SELECT device_id, fingerprint, enrolled_at, revoked_at FROM devices"


class SqlHubStore(HubRules):
    """The `HubStore` methods both engines do alike (plain reads, device records), over a
    store's `_read` and `_write` (each yields a connection inside one transaction) and
    its `SqlTx` class. Import, publish, the snapshot's streams and the locks are each
    store's own."""

    tx_class: ClassVar[type[SqlTx]]

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _single(self) -> AbstractContextManager[Any]:
        """A connection for one statement (a read transaction unless the store says)."""
        return self._read()

    def pinned(self, wait_s: float | None = None) -> AbstractContextManager[None]:
        """One connection for the calling thread's statements until the block ends (a
        store with a pool of connections, waiting for it `wait_s` at the most; nothing
        to do for one with a connection per thread)."""
        return nullcontext()

    @contextmanager
    def _reading(self) -> Iterator[SqlTx]:
        with self._read() as conn:
            yield self.tx_class(conn)

    @contextmanager
    def _writing(self) -> Iterator[SqlTx]:
        with self._write() as conn:
            yield self.tx_class(conn)

    # ------------------------------------------------------------ master data

    def draft_size(self) -> int:
        with self._reading() as tx:
            return _one(tx.execute("SELECT count(*) FROM draft"))

    def latest(self) -> Publication | None:
        with self._reading() as tx:
            return tx.publication(tx.latest_version())

    def publication(self, version: int) -> Publication | None:
        with self._reading() as tx:
            return tx.publication(version)

    def delta_floor(self) -> int:
        """The lowest version the hub still makes a delta from (0: every one): below it
        the versions are pruned (`prune_versions`), and a till there gets a full snapshot."""
        with self._reading() as tx:
            return _one(tx.execute("SELECT value FROM meta WHERE key = 'delta_floor'"))

    def prune_versions(self, before: datetime, stop: Callable[[], bool] | None = None) -> int:
        """Forget the versions older than the one that was the newest at `before` (its
        floor): their publications, their `appliedThrough` rows, and every revision no
        version from the floor on reads (a row's revisions before its last one at or
        below the floor; that one too when it removed the row). The floor's and every
        later version's full snapshot, and the delta between any two of them, stay
        exactly as they were; the ledger is never touched (balances are counted from
        all of it). Returns the floor, which only ever rises (docs/CONTRACT.md §3).

        The floor climbs `PRUNE_STEP` versions a write transaction (each step is the
        prune to a version): the first prune of a hub that kept a year of versions would
        otherwise hold the write lock for a minute (SQLite: every push and authorisation
        waited, then failed past the busy timeout; review 36). `stop()` true between two
        steps ends it there (a hub stopping: its store is closed next), the floor as far
        as it got."""
        with self._reading() as tx:
            target = _one(
                tx.execute(
                    "SELECT max(version) FROM publications WHERE issued_at <= ?",
                    (utc_text(before),),
                )
            )
        while True:
            floor, done = self._prune_step(target)
            if done:
                return floor
            time.sleep(PRUNE_PAUSE_S)  # the writers waiting get in (review 36, rev36e)
            if stop is not None and stop():
                return floor

    def _prune_step(self, target: int) -> tuple[int, bool]:
        """One step of `prune_versions` towards `target`: (the floor, whether reached)."""
        with self._writing() as tx:
            # The floor's row first: its lock puts two servers' prunes one after the other.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('delta_floor', '0')"
                " ON CONFLICT (key) DO UPDATE SET value = meta.value"
            )
            floor = _one(tx.execute("SELECT value FROM meta WHERE key = 'delta_floor'"))
            if target <= floor:
                return floor, True
            # the version PRUNE_STEP publications above the floor (or the target)
            row = tx.execute(
                "SELECT version FROM publications WHERE version > ? AND version < ?"
                " ORDER BY version LIMIT 1 OFFSET ?",
                (floor, target, PRUNE_STEP - 1),
            ).fetchone()
            new = target if row is None else int(row[0])
            tx.execute(
                "DELETE FROM revisions WHERE version < ? AND EXISTS (SELECT 1 FROM revisions n"
                " WHERE n.kind = revisions.kind AND n.key = revisions.key"
                " AND n.version > revisions.version AND n.version <= ?)",
                (new, new),
            )
            tx.execute("DELETE FROM revisions WHERE version <= ? AND doc IS NULL", (new,))
            tx.execute("DELETE FROM publication_progress WHERE version < ?", (new,))
            tx.execute("DELETE FROM publications WHERE version < ?", (new,))
            tx.execute("UPDATE meta SET value = ? WHERE key = 'delta_floor'", (str(new),))
            return new, new == target

    # ------------------------------------------------------------ ledger

    def transactions(
        self, device_id: str, since_seq: int = 0, limit: int = 0, receipt_id: str = ""
    ) -> list[StoredTx]:
        sql = (
            "SELECT device_id, seq, kind, receipt_id, ref_id, at, customer_id, card,"
            " delta_available, delta_pending, coalesce(pending_activates_at, ''), ingested_at,"
            " fiscal_document FROM transactions WHERE device_id = ? AND seq > ?"
        )
        params: list[Any] = [device_id, since_seq]
        if receipt_id:
            sql += " AND receipt_id = ?"
            params.append(receipt_id)
        sql += " ORDER BY seq"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reading() as tx:
            rows = tx.execute(sql, params).fetchall()
        return [
            StoredTx(
                device_id=str(r[0]),
                seq=int(r[1]),
                kind=str(r[2]),
                receipt_id=str(r[3]),
                refund_id=str(r[4]) if r[2] == "REFUND" else "",
                at=str(r[5]),
                customer_id=str(r[6]),
                card=str(r[7]),
                delta_available=int(r[8]),
                delta_pending=int(r[9]),
                pending_activates_at=str(r[10]),
                ingested_at=str(r[11]),
                fiscal_document=str(r[12] or ""),
            )
            for r in rows
        ]

    def coupon_conflicts(self) -> list[dict[str, Any]]:
        """Codes used more than once (by two tills while they were offline), for review."""
        order = ", ".join(map(self.tx_class.dialect.code_points, ("c.code", "c.device_id")))
        with self._reading() as tx:
            rows = tx.execute(
                "SELECT c.code, c.device_id, c.receipt_id, c.at, u.device_id, u.receipt_id"
                " FROM coupon_conflicts c JOIN coupon_uses u ON u.code = c.code"
                f" ORDER BY {order}, c.seq"
            ).fetchall()
        return [conflict(*row) for row in rows]

    def set_aside_transactions(self, device_id: str = "") -> list[dict[str, Any]]:
        """What the hub set aside instead of storing (CONFLICT, REJECTED, a DUPLICATE of a
        receipt stored under another seq), for review: by device, then seq. An entry of a
        seq taken (`seqTaken`) whose sale or refund the till numbered again and the hub
        then stored reads `resolved`, with the seq it is stored under (review 32)."""
        order = self.tx_class.dialect.code_points("device_id")
        where, params = (" WHERE device_id = ?", (device_id,)) if device_id else ("", ())
        with self._reading() as tx:
            rows = tx.execute(
                "SELECT device_id, seq, outcome, reason, received_at, seq_taken, stored_seq,"
                f" resolved_at FROM set_aside{where} ORDER BY {order}, seq, id",
                params,
            ).fetchall()
        return [
            {
                "deviceId": str(d),
                "seq": int(s),
                "outcome": str(o),
                "reason": str(r),
                "receivedAt": str(a),
                # a seq the device held with another transaction (review 32): the till
                # numbers it again; resolved once stored, under `storedAsSeq`
                "seqTaken": bool(taken),
                "resolved": stored is not None,
                "storedAsSeq": None if stored is None else int(stored),
                "resolvedAt": None if when is None else str(when),
            }
            for d, s, o, r, a, taken, stored, when in rows
        ]

    def applied_through(self, device_id: str) -> int:
        with self._reading() as tx:
            return tx.contiguous_through(device_id) or 0

    def last_uploads(self, device_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._reading() as tx:
            for device_id in device_ids:  # each by the (device_id, seq) index: no scan
                row = tx.execute(
                    "SELECT ingested_at FROM transactions WHERE device_id = ?"
                    " ORDER BY seq DESC LIMIT 1",
                    (device_id,),
                ).fetchone()
                if row is not None:
                    found[device_id] = str(row[0])
        return found

    def holds_outstanding(self, now: datetime) -> tuple[int, int]:
        with self._reading() as tx:
            count, points = tx.execute(
                "SELECT count(*), coalesce(sum(points), 0) FROM holds"
                " WHERE state = 'ACTIVE' AND expires_at > ?",
                (utc_text(now),),
            ).fetchone()
        return int(count), int(points)

    def ingested_since(self, cut: int) -> int:
        with self._reading() as tx:
            return _one(tx.execute("SELECT count(*) FROM transactions WHERE ingest_id > ?", (cut,)))

    def ledger(self, device_id: str | None = None) -> list[LedgerEntry]:
        sql = (
            "SELECT device_id, seq, kind, ref_id, customer_id, card, delta_available,"
            " delta_pending FROM transactions"
        )
        with self._reading() as tx:
            rows = (
                tx.execute(sql + " WHERE device_id = ? ORDER BY seq", (device_id,))
                if device_id
                else tx.execute(sql + " ORDER BY device_id, seq")
            ).fetchall()
        return [
            LedgerEntry(str(a), int(b), str(c), str(d), str(e), str(f), int(g), int(h))
            for a, b, c, d, e, f, g, h in rows
        ]

    # ------------------------------------------------------------ devices

    def enroll(self, device_id: str, fingerprint: str, now: datetime) -> None:
        """Enrol (or enrol again) a device. A till-issued coupon code is built from the
        device id's normal form (blanks and dashes dropped, upper case: `coupons.issued_code`),
        so a device whose id has the same normal form as another's is refused: the codes of
        the two would be the same (the contract §13: unique in the chain)."""
        mine = coupon_code(device_id)
        with self._writing() as tx:
            tx.lock_devices()  # two enrolments at once must not both pass the check
            for (other,) in tx.execute("SELECT device_id FROM devices").fetchall():
                if other != device_id and coupon_code(str(other)) == mine:
                    raise InputError(
                        f"device id {device_id!r} would issue the same coupon codes as the"
                        f" enrolled device {other!r} (codes drop dashes, blanks and case):"
                        " choose another id"
                    )
            tx.execute(
                "INSERT INTO devices VALUES (?, ?, ?, NULL) ON CONFLICT (device_id) DO UPDATE"
                " SET fingerprint = excluded.fingerprint, enrolled_at = excluded.enrolled_at,"
                " revoked_at = NULL",
                (device_id, fingerprint, utc_text(now)),
            )

    def device(self, device_id: str) -> DeviceRecord | None:
        with self._single() as conn:
            row = (
                self.tx_class(conn)
                .execute(
                    f"{_DEVICE_ROWS} WHERE device_id = ?",
                    (device_id,),
                )
                .fetchone()
            )
        return None if row is None else DeviceRecord(*row)

    def devices(self) -> list[DeviceRecord]:
        # in code point order on every engine (PostgreSQL's `devices.device_id` has the
        # database's collation: a cluster made with the machine's locale sorted otherwise)
        order = self.tx_class.dialect.code_points("device_id")
        with self._single() as conn:
            rows = self.tx_class(conn).execute(f"{_DEVICE_ROWS} ORDER BY {order}").fetchall()
        return [DeviceRecord(*row) for row in rows]

    def revoke(self, device_id: str, now: datetime) -> bool:
        with self._writing() as tx:
            return (
                tx._count(
                    tx.execute(
                        "UPDATE devices SET revoked_at = ? WHERE device_id = ?"
                        " AND revoked_at IS NULL",
                        (utc_text(now), device_id),
                    )
                )
                > 0
            )
