"""`HubStore` on one SQLite file (WAL, synchronous=FULL): the reference hub's storage.

Each public method is one transaction. Writers take the write lock at once
(``BEGIN IMMEDIATE``), so ingest, holds and publishing serialise; readers (snapshot
builds) see one consistent state. Connections are per thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from tillpoint.agent.db import (
    MigrationSet,
    migrate,
    read_transaction,
    refuse_foreign,
    refuse_foreign_wal,
    refuse_not_sqlite,
    write_transaction,
)
from tillpoint.agent.errors import ForeignDatabase, StorageError
from tillpoint.agent.ledger import utc_text

from .hub_rules import HubTx, Texts, canon
from .hub_sql import (
    CLEARED,
    MOVE_ORDER,
    SET_ASIDE_RESOLVED,
    SQLITE,
    SqlHubStore,
    SqlTx,
    category_cycles,
    publish_sql,
)
from .hub_store import (
    ImportRefused,
    ImportReport,
    ImportRow,
    Publication,
    RowProblem,
)

log = logging.getLogger("tillpoint.hub")

BUSY_TIMEOUT_MS = 30_000
MAX_PROBLEMS = 10
migrations = MigrationSet("tillpoint.hub", "hub database")


@migrations()
def m001_hub(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        -- Master data, one row per key and published version that changed it;
        -- doc NULL: the key was removed in that version.
        CREATE TABLE revisions (
            kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT,
            PRIMARY KEY (kind, key, version)
        ) WITHOUT ROWID;
        CREATE INDEX revisions_version ON revisions (kind, version);
        CREATE INDEX revisions_card_owner ON revisions (json_extract(doc, '$.customerId'))
            WHERE kind = 'card';
        -- Imported, not yet published.
        CREATE TABLE draft (
            kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT, PRIMARY KEY (kind, key)
        ) WITHOUT ROWID;
        CREATE TABLE publications (
            version INTEGER PRIMARY KEY,
            issued_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            cut INTEGER NOT NULL,          -- last ingest_id counted in this version
            reason TEXT NOT NULL,
            changed_rows INTEGER NOT NULL
        );
        CREATE TABLE publication_progress (
            version INTEGER NOT NULL, device_id TEXT NOT NULL, through INTEGER NOT NULL,
            PRIMARY KEY (version, device_id)
        ) WITHOUT ROWID;
        -- The ledger: every transaction of every till, once.
        CREATE TABLE transactions (
            ingest_id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            card TEXT NOT NULL,
            receipt_id TEXT NOT NULL,
            ref_id TEXT NOT NULL,
            request_json TEXT NOT NULL,
            result_json TEXT NOT NULL,
            sent_delta_available INTEGER NOT NULL,
            sent_delta_pending INTEGER NOT NULL,
            delta_available INTEGER NOT NULL,   -- as counted (settled for UNKNOWN cards)
            delta_pending INTEGER NOT NULL,
            pending_activates_at TEXT,          -- UTC text, when delta_pending != 0
            content_sha256 TEXT NOT NULL,
            ingested_at TEXT NOT NULL,
            UNIQUE (device_id, seq)
        );
        CREATE INDEX transactions_customer ON transactions (customer_id, ingest_id);
        CREATE INDEX transactions_card ON transactions (card) WHERE customer_id = '';
        CREATE INDEX transactions_receipt ON transactions (device_id, receipt_id);
        CREATE TABLE device_progress (
            device_id TEXT PRIMARY KEY, contiguous_through INTEGER NOT NULL
        );
        -- Transactions the hub did not take (conflicting content, malformed): for review.
        CREATE TABLE set_aside (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, outcome TEXT NOT NULL,
            reason TEXT NOT NULL, content_sha256 TEXT NOT NULL, payload TEXT NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (device_id, seq, content_sha256)
        );
        -- The answer given to each push batch, returned again when the batch is retried.
        CREATE TABLE push_batches (
            device_id TEXT NOT NULL, batch_id TEXT NOT NULL, content_sha256 TEXT NOT NULL,
            ack TEXT NOT NULL, created_at TEXT NOT NULL,
            PRIMARY KEY (device_id, batch_id)
        ) WITHOUT ROWID;
        CREATE TABLE holds (
            hold_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            receipt_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            points INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('ACTIVE', 'SETTLED', 'EXPIRED')),
            UNIQUE (device_id, receipt_id)
        );
        CREATE INDEX holds_customer ON holds (customer_id, state);
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            enrolled_at TEXT NOT NULL,
            revoked_at TEXT
        );
        """
    )


@migrations()
def m002_coupon_uses(db: Database) -> None:
    db.executescript(
        """
        -- The first use of each coupon code the tills reported (the contract §13).
        CREATE TABLE coupon_uses (
            code TEXT PRIMARY KEY,
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, receipt_id TEXT NOT NULL,
            customer_id TEXT NOT NULL, at TEXT NOT NULL
        );
        -- A later use of a code already used (two tills offline): the sale stands.
        CREATE TABLE coupon_conflicts (
            code TEXT NOT NULL,
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, receipt_id TEXT NOT NULL,
            customer_id TEXT NOT NULL, at TEXT NOT NULL,
            PRIMARY KEY (code, device_id, seq)
        );
        """
    )


def _doc(text: str | None) -> dict[str, Any] | None:
    return None if text is None else dict(json.loads(text))


@migrations()
def m002_fiscal_document(db: Database) -> None:
    # The fiscal document number a till confirmed a receipt with (the contract §11), for audits.
    db.execute("ALTER TABLE transactions ADD COLUMN fiscal_document TEXT NOT NULL DEFAULT ''")


@migrations()
def m003_coupon_holds(db: Database) -> None:
    db.executescript(
        """
        -- Codes authorised online for a receipt not yet settled (the contract §13): no other
        -- receipt may use them until the hold is settled, released or expired.
        CREATE TABLE coupon_holds (
            code TEXT PRIMARY KEY,
            device_id TEXT NOT NULL, receipt_id TEXT NOT NULL, customer_id TEXT NOT NULL,
            created_at TEXT NOT NULL, expires_at TEXT NOT NULL
        );
        CREATE INDEX coupon_holds_receipt ON coupon_holds (device_id, receipt_id);
        """
    )


@migrations()
def m004_till_coupons(db: Database) -> None:
    db.executescript(
        """
        -- Coupon codes whose draft row a till's transaction wrote (a first use: the code
        -- leaves; a till-issued code: it joins): a balance refresh publishes these rows
        -- too, so no till waits for an operator's `hub publish` to learn them (§3, §13).
        CREATE TABLE till_coupons (code TEXT PRIMARY KEY) WITHOUT ROWID;
        """
    )


@migrations()
def m005_hold_at(db: Database) -> None:
    # The time of the receipt a hold is for (review 30): the hub replays an active hold as
    # a spend at that time, so points it takes from a batch that expires before another
    # till's receipt are not taken from that receipt's balance a second time (§9, §16).
    db.execute("ALTER TABLE holds ADD COLUMN receipt_at TEXT NOT NULL DEFAULT ''")


@migrations()
def m006_set_aside_resolved(db: Database) -> None:
    # Review 32 (hub32b): a set-aside entry of a seq the device held with another
    # transaction (`seq_taken`: the till numbers that sale or refund again and sends it
    # again) reads resolved once its sale or refund is stored, under the seq it went to
    # (`stored_seq`, `resolved_at`); the entry stays, the sign that two tills may share
    # the device's id. Entries set aside before are recognised by their reason.
    db.executescript(SET_ASIDE_RESOLVED)


class SqliteTx(SqlTx):
    """`HubTx` on an open SQLite transaction: the shared primitives (`hub_sql.SqlTx`),
    SQLite's snapshot row streams, and no locks (BEGIN IMMEDIATE already serialises
    writers)."""

    dialect = SQLITE

    def texts_as_of(self, kind: str, version: int) -> Texts:
        """Every row of `kind` at `version` as its stored text, in key order.

        One pass over the primary key (kind, key, version) with no sort (EXPLAIN QUERY
        PLAN: ``SEARCH revisions USING PRIMARY KEY (kind=?)``); SQLite's bare columns of a
        max() aggregate come from the row holding the maximum, i.e. the newest revision.
        The stored text is already canonical JSON (`canon` is the only writer of `draft`
        and `publish` copies it), so it is written as it is, never parsed.
        """
        cur = self.conn.execute(
            "SELECT key, doc, max(version) FROM revisions WHERE kind = ? AND version <= ?"
            " GROUP BY key ORDER BY key",
            (kind, version),
        )
        while batch := cur.fetchmany(4096):
            for key, doc, _ in batch:
                if doc is not None:
                    yield key, doc

    def counted_customer_moves(
        self, pub: Publication, only: set[str] | None
    ) -> Iterable[tuple[Any, ...]]:
        known = ""
        if only is not None:
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS want (id TEXT PRIMARY KEY)")
            self.conn.execute("DELETE FROM temp.want")
            self.conn.executemany("INSERT INTO temp.want VALUES (?)", ((k,) for k in only))
            known = " AND t.customer_id IN (SELECT id FROM temp.want)"
        rows: sqlite3.Cursor = self.conn.execute(
            f"SELECT t.customer_id, {SQLITE.moves}{self.COUNTED} AND t.customer_id != ''{known}"
            f" ORDER BY t.customer_id, {MOVE_ORDER}",
            (pub.version, pub.cut),
        )
        return rows

    def lock_device(self, device_id: str) -> None:
        pass  # BEGIN IMMEDIATE: this transaction is the only writer

    def lock_customers(self, customer_ids: Iterable[str]) -> None:
        pass

    def lock_settling(
        self,
        customer_ids: list[str],
        device_id: str,
        keys: list[str],
        receipts: Sequence[str] = (),
    ) -> None:
        pass

    def lock_receipt(self, device_id: str, receipt_id: str) -> None:
        pass

    def lock_devices(self) -> None:
        pass  # a write transaction holds the file's write lock already


class _Held:
    """A thread's connection, in that thread's own slot of the store's thread-local map:
    Python lets go of the slot when the thread ends, and the connection is closed then
    (one connection a thread: no other thread is inside a statement on it). A connection
    `close` closed already is closed again here: nothing. `closes`: how many closes of
    the store came before it was opened (one from before the last close is let go of
    when its thread next asks for a connection: `SqliteHubStore._conn`)."""

    __slots__ = ("closes", "conn")

    def __init__(self, conn: sqlite3.Connection, closes: int) -> None:
        self.conn = conn
        self.closes = closes

    def __del__(self) -> None:
        with suppress(Exception):
            self.conn.close()


def _reading(conn: sqlite3.Connection) -> bool:
    """Whether a transaction is open on `conn` (a closed one: no)."""
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:  # closed (by `close`, its thread's own)
        return False


class SqliteHubStore(SqlHubStore):
    tx_class = SqliteTx

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        # every connection opened, with the thread it belongs to (`close`)
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._guard = threading.Lock()
        self._closes = 0  # how many times `close` ran: a thread's older connection is stale
        try:
            # the till's files' mechanism: pending steps under the write lock, and a file
            # a later release migrated (steps this one does not know) refused
            migrate(self._conn(), migrations)
        except ForeignDatabase:  # names the file already
            raise
        except StorageError as exc:  # the same kind (LaterRelease: exit 2), the path added
            raise type(exc)(f"{path}: {exc.message}") from None

    # ------------------------------------------------------------ plumbing

    def _conn(self) -> sqlite3.Connection:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.closes != self._closes:
            # this thread's connection from before a close (a thread that outlived it):
            # let go of now, in the thread itself, so a thread holds one connection
            # however many closes it outlives (one each until it ended, review 44). One
            # still in a read of this thread's (a snapshot stream it has not finished)
            # is kept aside until the thread asks after that read, or ends.
            self._local.stale = [*getattr(self._local, "stale", ()), held]
            self._local.held = held = None
        if getattr(self._local, "stale", None):
            kept: list[_Held] = []
            for old in self._local.stale:
                if _reading(old.conn):
                    kept.append(old)
                else:
                    with suppress(sqlite3.Error):
                        old.conn.close()
            self._local.stale = kept
        if held is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                refuse_not_sqlite(self.path)
                refuse_foreign_wal(self.path, hub=True)  # its -wal not checkpointed
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                refuse_foreign(conn, self.path, hub=True)  # before WAL mode: left as it was
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"cannot open the hub database {self.path}: {exc}") from None
            self._local.held = _Held(conn, self._closes)
            with self._guard:
                self._all.append((threading.current_thread(), conn))
            return conn
        return held.conn

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._conn(), "hub database")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return read_transaction(self._conn(), "hub database")

    def write_tx(self) -> AbstractContextManager[HubTx]:
        return self._writing()

    def read_tx(self) -> AbstractContextManager[HubTx]:
        return self._reading()

    def durability_notes(self) -> list[str]:
        return []  # every connection runs synchronous = FULL: a commit is on the disk

    def build_lock(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()  # one machine: the snapshot directory's file locks suffice

    def close(self) -> None:
        """Close this thread's connection and those of threads that have ended. Another
        live thread's connection is left to it: closed here, it was freed under the
        statement that thread was running, a segmentation fault (review 42: `hub serve`
        stopped while its snapshot builder built, which the stop waits 10 s for); it is
        closed when that thread ends.

        The store can be used again (`HubServer`'s stop, then its start); a connection
        a thread opens, before the close or after it, is closed when that thread ends
        (`_Held`): a thread that outlived the close (that builder, past the stop's wait)
        opened a new one, which nobody closed (review 43, tidy43). A live thread's
        connection left here is closed when that thread next asks for one (`_conn`)."""
        me = threading.current_thread()
        with self._guard:
            closing, self._all = self._all, []
            self._closes += 1  # every thread's connection opened before now is stale
        left = 0
        for owner, conn in closing:
            if owner is me or not owner.is_alive():
                with suppress(sqlite3.Error):
                    conn.close()
            else:
                left += 1
        del closing
        if left:
            log.info("hub database: %d connection(s) of threads still running left to them", left)

    # ------------------------------------------------------------ master data

    def import_rows(self, rows: Iterable[ImportRow | RowProblem]) -> ImportReport:
        problems: list[str] = []
        total_problems = 0
        counts: dict[str, int] = defaultdict(int)
        removed = 0
        n = 0
        with self._write() as conn:
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS import_seen"
                " (kind TEXT, key TEXT, where_ TEXT, PRIMARY KEY (kind, key)) WITHOUT ROWID"
            )
            conn.execute("DELETE FROM temp.import_seen")
            try:
                for item in rows:
                    if isinstance(item, RowProblem):
                        total_problems += 1
                        if len(problems) < MAX_PROBLEMS:
                            problems.append(f"{item.where}: {item.message}")
                        continue
                    seen = conn.execute(
                        "SELECT where_ FROM temp.import_seen WHERE kind = ? AND key = ?",
                        (item.kind, item.key),
                    ).fetchone()
                    if seen is not None and item.kind != "program":
                        total_problems += 1
                        if len(problems) < MAX_PROBLEMS:
                            problems.append(
                                f"{item.where}: {item.kind} {item.key!r} appears twice"
                                f" (also at {seen[0]})"
                            )
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO temp.import_seen VALUES (?, ?, ?)",
                        (item.kind, item.key, item.where),
                    )
                    if total_problems:
                        continue  # keep validating, write nothing more
                    conn.execute(
                        "INSERT OR REPLACE INTO draft VALUES (?, ?, ?)",
                        (
                            item.kind,
                            item.key,
                            item.text if item.text is not None else canon(item.doc),
                        ),
                    )
                    n += 1
                    if item.removes:
                        removed += 1
                    else:
                        counts[item.kind] += 1
                if not total_problems:
                    for where, message in self._reference_problems(conn):
                        total_problems += 1
                        if len(problems) < MAX_PROBLEMS:
                            problems.append(f"{where}: {message}")
                if total_problems:
                    raise ImportRefused(problems, total_problems)
            finally:
                # a failed write (a full disk, the file size limit) rolled the transaction
                # back, the scratch table with it: "no such table: temp.import_seen" here
                # replaced the write's own words (review 40, rev40c)
                with suppress(sqlite3.Error):
                    conn.execute("DELETE FROM temp.import_seen")
        return ImportReport(rows=n, by_kind=dict(counts), removed=removed)

    def _reference_problems(self, conn: sqlite3.Connection) -> Iterator[tuple[str, str]]:
        """Cards of this import must point at a customer that will exist; the categories
        must stay a tree."""
        latest = _latest_version(conn)
        for key, where, customer in conn.execute(
            "SELECT s.key, s.where_, json_extract(d.doc, '$.customerId')"
            " FROM temp.import_seen s JOIN draft d ON d.kind = s.kind AND d.key = s.key"
            " WHERE s.kind = 'card' AND d.doc IS NOT NULL"
        ).fetchall():
            if self._current_doc(conn, "customer", str(customer), latest) is None:
                yield where, f"card {key} belongs to customer {customer!r}, who is not known"
        imported = dict(
            conn.execute(
                "SELECT key, where_ FROM temp.import_seen WHERE kind = 'category'"
            ).fetchall()
        )
        if imported:
            for code, message in category_cycles(SqliteTx(conn)):
                yield imported.get(code, "categories"), message

    def _current_doc(
        self, conn: sqlite3.Connection, kind: str, key: str, latest: int
    ) -> dict[str, Any] | None:
        """The row as the next publication would have it (draft over the latest version)."""
        row = conn.execute(
            "SELECT doc FROM draft WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        if row is not None:
            return _doc(row[0])
        return self._doc_as_of(conn, kind, key, latest)

    def _doc_as_of(
        self, conn: sqlite3.Connection, kind: str, key: str, version: int
    ) -> dict[str, Any] | None:
        return _doc(SqliteTx(conn).text_as_of(kind, key, version))

    def publish(
        self,
        now: datetime,
        ttl_s: float,
        *,
        include_draft: bool = True,
        reason: str = "publish",
        min_version: int = 0,
    ) -> Publication:
        with self._write() as conn:
            latest = _latest_version(conn)
            version = max(latest + 1, min_version)
            # A balance refresh publishes only the rows tills' transactions wrote.
            changed = conn.execute(publish_sql(SQLITE, include_draft), (version, latest)).rowcount
            conn.execute(CLEARED[include_draft])
            conn.execute("DELETE FROM till_coupons")
            cut = int(
                conn.execute("SELECT coalesce(max(ingest_id), 0) FROM transactions").fetchone()[0]
            )
            expires = now + timedelta(seconds=ttl_s)
            conn.execute(
                "INSERT INTO publications VALUES (?, ?, ?, ?, ?, ?)",
                (version, utc_text(now), utc_text(expires), cut, reason, changed),
            )
            conn.execute(
                "INSERT INTO publication_progress SELECT ?, device_id, contiguous_through"
                " FROM device_progress",
                (version,),
            )
        return Publication(
            version, now.astimezone(UTC), expires.astimezone(UTC), cut, reason, changed
        )


def _latest_version(conn: sqlite3.Connection) -> int:
    return SqliteTx(conn).latest_version()
