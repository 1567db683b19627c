"""`HubStore` on one SQLite file (WAL, synchronous=FULL): the reference hub's storage.

Each public method is one transaction. Writers take the write lock at once
(``BEGIN IMMEDIATE``), so ingest, holds and publishing serialise; readers (snapshot
builds) see one consistent state. Connections are per thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations
from tillpoint.agent.db import write_transaction
from tillpoint.agent.errors import StorageError
from tillpoint.agent.ledger import utc_text

from .hub_rules import (
    EARNED_WHEN,
    MOVED_AT,
    CouponUse,
    HubRules,
    HubTx,
    Move,
    Texts,
    _when,
    canon,
    conflict,
)
from .hub_store import (
    DeviceRecord,
    ImportRefused,
    ImportReport,
    ImportRow,
    LedgerEntry,
    Publication,
    RowProblem,
    StoredTx,
    TxIn,
)

# points earned at once at a checkout (its result's earnedPoints): see `hub_rules.Move`
EARNED = (
    f"sum(CASE WHEN {EARNED_WHEN} AND json_type(result_json, '$.earnedPoints') = 'integer'"
    " THEN json_extract(result_json, '$.earnedPoints') ELSE 0 END)"
)

BUSY_TIMEOUT_MS = 30_000
MAX_PROBLEMS = 10
migrations = Migrations("tillpoint.hub")


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


class SqliteHubStore(HubRules):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        conn = self._conn()
        try:
            migrations.apply(Database(conn))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot migrate the hub database {path}: {exc}") from None

    # ------------------------------------------------------------ plumbing

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"cannot open the hub database {self.path}: {exc}") from None
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._conn(), "hub database")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def write_tx(self) -> Iterator[HubTx]:
        with self._write() as conn:
            yield SqliteTx(conn)

    @contextmanager
    def read_tx(self) -> Iterator[HubTx]:
        with self._read() as conn:
            yield SqliteTx(conn)

    def build_lock(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()  # one machine: the snapshot directory's file locks suffice

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

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
                conn.execute("DELETE FROM temp.import_seen")
        return ImportReport(rows=n, by_kind=dict(counts), removed=removed)

    def _reference_problems(self, conn: sqlite3.Connection) -> Iterator[tuple[str, str]]:
        """Cards of this import must point at a customer that will exist."""
        latest = _latest_version(conn)
        for key, where, customer in conn.execute(
            "SELECT s.key, s.where_, json_extract(d.doc, '$.customerId')"
            " FROM temp.import_seen s JOIN draft d ON d.kind = s.kind AND d.key = s.key"
            " WHERE s.kind = 'card' AND d.doc IS NOT NULL"
        ).fetchall():
            if self._current_doc(conn, "customer", str(customer), latest) is None:
                yield where, f"card {key} belongs to customer {customer!r}, who is not known"

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
        row = conn.execute(
            "SELECT doc FROM revisions WHERE kind = ? AND key = ? AND version <= ?"
            " ORDER BY version DESC LIMIT 1",
            (kind, key, version),
        ).fetchone()
        return None if row is None else _doc(row[0])

    def draft_size(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM draft").fetchone()[0])

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
            changed = 0
            if include_draft:
                # One statement, whatever the draft's size: a row becomes a revision only
                # when it differs from the latest published one (docs are canonical text).
                changed = conn.execute(
                    "INSERT INTO revisions (kind, key, version, doc)"
                    " SELECT d.kind, d.key, ?, d.doc FROM draft d WHERE NOT ("
                    " (SELECT r.doc FROM revisions r WHERE r.kind = d.kind AND r.key = d.key"
                    " AND r.version <= ? ORDER BY r.version DESC LIMIT 1) IS d.doc)",
                    (version, latest),
                ).rowcount
                conn.execute("DELETE FROM draft")
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

    def latest(self) -> Publication | None:
        with self._read() as conn:
            return _publication(conn, _latest_version(conn))

    def publication(self, version: int) -> Publication | None:
        with self._read() as conn:
            return _publication(conn, version)

    def delta_floor(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'delta_floor'").fetchone()
            return 0 if row is None else int(row[0])

    # ------------------------------------------------------------ ledger

    def transactions(
        self, device_id: str, since_seq: int = 0, limit: int = 0, receipt_id: str = ""
    ) -> list[StoredTx]:
        sql = (
            "SELECT device_id, seq, kind, receipt_id, ref_id, at, customer_id, card,"
            " delta_available, delta_pending, coalesce(pending_activates_at, ''), ingested_at"
            " FROM transactions WHERE device_id = ? AND seq > ?"
        )
        params: list[Any] = [device_id, since_seq]
        if receipt_id:
            sql += " AND receipt_id = ?"
            params.append(receipt_id)
        sql += " ORDER BY seq"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
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
            )
            for r in rows
        ]

    def coupon_conflicts(self) -> list[dict[str, Any]]:
        """Codes used more than once (by two tills while they were offline), for review."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.code, c.device_id, c.receipt_id, c.at, u.device_id, u.receipt_id"
                " FROM coupon_conflicts c JOIN coupon_uses u ON u.code = c.code"
                " ORDER BY c.code, c.device_id, c.seq"
            ).fetchall()
        return [conflict(*row) for row in rows]

    def applied_through(self, device_id: str) -> int:
        with self._read() as conn:
            row = conn.execute(
                "SELECT contiguous_through FROM device_progress WHERE device_id = ?",
                (device_id,),
            ).fetchone()
            return 0 if row is None else int(row[0])

    def ingested_since(self, cut: int) -> int:
        with self._read() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM transactions WHERE ingest_id > ?", (cut,)
                ).fetchone()[0]
            )

    def ledger(self, device_id: str | None = None) -> list[LedgerEntry]:
        sql = (
            "SELECT device_id, seq, kind, ref_id, customer_id, card, delta_available,"
            " delta_pending FROM transactions"
        )
        with self._read() as conn:
            rows = (
                conn.execute(sql + " WHERE device_id = ? ORDER BY seq", (device_id,))
                if device_id
                else conn.execute(sql + " ORDER BY device_id, seq")
            ).fetchall()
        return [
            LedgerEntry(str(a), int(b), str(c), str(d), str(e), str(f), int(g), int(h))
            for a, b, c, d, e, f, g, h in rows
        ]

    # ------------------------------------------------------------ devices

    def enroll(self, device_id: str, fingerprint: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, NULL)",
                (device_id, fingerprint, utc_text(now)),
            )

    def device(self, device_id: str) -> DeviceRecord | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT device_id, fingerprint, enrolled_at, revoked_at FROM devices"
                " WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        return None if row is None else DeviceRecord(row[0], row[1], row[2], row[3])

    def revoke(self, device_id: str, now: datetime) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                (utc_text(now), device_id),
            )
            return cur.rowcount > 0


class SqliteTx:
    """`HubTx` on an open SQLite transaction (BEGIN IMMEDIATE already serialises writers,
    so the locks are no-ops)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- master data and publications

    def latest_version(self) -> int:
        return _latest_version(self.conn)

    def publication(self, version: int) -> Publication | None:
        return _publication(self.conn, version)

    def text_as_of(self, kind: str, key: str, version: int) -> str | None:
        row = self.conn.execute(
            "SELECT doc FROM revisions WHERE kind = ? AND key = ? AND version <= ?"
            " ORDER BY version DESC LIMIT 1",
            (kind, key, version),
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

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

    def keys_changed(self, kind: str, base: int, version: int) -> list[str]:
        return [
            str(key)
            for (key,) in self.conn.execute(
                "SELECT DISTINCT key FROM revisions WHERE kind = ? AND version > ?"
                " AND version <= ? ORDER BY key",
                (kind, base, version),
            )
        ]

    def cards_ever_of(self, customer_id: str) -> list[str]:
        return [
            str(key)
            for (key,) in self.conn.execute(
                "SELECT DISTINCT key FROM revisions WHERE json_extract(doc, '$.customerId') = ?"
                " AND kind = 'card'",
                (customer_id,),
            )
        ]

    def progress_at(self, version: int) -> dict[str, int]:
        return {
            str(device): int(through)
            for device, through in self.conn.execute(
                "SELECT device_id, through FROM publication_progress WHERE version = ?"
                " ORDER BY device_id",
                (version,),
            )
        }

    # -- the ledger

    def stored_content(self, device_id: str, seq: int) -> str | None:
        row = self.conn.execute(
            "SELECT content_sha256 FROM transactions WHERE device_id = ? AND seq = ?",
            (device_id, seq),
        ).fetchone()
        return None if row is None else str(row[0])

    def stored_contents(self, device_id: str, seqs: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for start in range(0, len(seqs), 500):
            part = seqs[start : start + 500]
            marks = ",".join("?" * len(part))
            for seq, content in self.conn.execute(
                "SELECT seq, content_sha256 FROM transactions WHERE device_id = ?"
                f" AND seq IN ({marks})",
                (device_id, *part),
            ):
                found[int(seq)] = str(content)
        return found

    def seqs_after(self, device_id: str, seq: int, limit: int) -> list[int]:
        return [
            int(s)
            for (s,) in self.conn.execute(
                "SELECT seq FROM transactions WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (device_id, seq, limit),
            )
        ]

    def insert_transaction(self, tx: TxIn, fields: dict[str, Any], content: str, now: str) -> None:
        self.conn.execute(
            "INSERT INTO transactions (device_id, seq, kind, at, customer_id, card, receipt_id,"
            " ref_id, request_json, result_json, sent_delta_available, sent_delta_pending,"
            " delta_available, delta_pending, pending_activates_at, content_sha256,"
            " ingested_at, fiscal_document) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                tx.device_id,
                tx.seq,
                tx.kind,
                tx.at,
                tx.customer_id,
                tx.card,
                fields["receipt_id"],
                fields["ref_id"],
                tx.request_json,
                tx.result_json,
                tx.delta_available,
                tx.delta_pending,
                fields["available"],
                fields["pending"],
                fields["activates"],
                content,
                now,
                tx.fiscal_document,
            ),
        )

    def set_aside(
        self, tx: TxIn, outcome: str, reason: str, content: str, payload: str, now: str
    ) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO set_aside (device_id, seq, outcome, reason, content_sha256,"
            " payload, received_at) VALUES (?,?,?,?,?,?,?)",
            (tx.device_id, tx.seq, outcome, reason, content, payload, now),
        )

    def checkout_pending(self, device_id: str, receipt_id: str) -> tuple[str | None, int] | None:
        row = self.conn.execute(
            "SELECT pending_activates_at, coalesce((SELECT sum(delta_pending) FROM transactions"
            " t2 WHERE t2.device_id = t.device_id AND t2.receipt_id = t.receipt_id), 0)"
            " FROM transactions t WHERE device_id = ? AND receipt_id = ? AND kind = 'CHECKOUT'",
            (device_id, receipt_id),
        ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def contiguous_through(self, device_id: str) -> int | None:
        row = self.conn.execute(
            "SELECT contiguous_through FROM device_progress WHERE device_id = ?", (device_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def set_contiguous_through(self, device_id: str, through: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO device_progress VALUES (?, ?)", (device_id, through)
        )

    def batch_answer(self, device_id: str, batch_id: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT content_sha256, ack FROM push_batches WHERE device_id = ? AND batch_id = ?",
            (device_id, batch_id),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def save_batch_answer(
        self, device_id: str, batch_id: str, content: str, answer: str, now: str, prune_before: str
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO push_batches VALUES (?, ?, ?, ?, ?)",
            (device_id, batch_id, content, answer, now),
        )
        self.conn.execute("DELETE FROM push_batches WHERE created_at < ?", (prune_before,))

    def live_moves(self, customer_id: str, cards: list[str]) -> list[Move]:
        marks = ",".join("?" * len(cards))
        unknown = f" OR (customer_id = '' AND card IN ({marks}))" if cards else ""
        return [
            (int(points), when, int(due or 0), spent, int(earned))
            for points, when, due, spent, earned in self.conn.execute(
                "SELECT sum(delta_available), pending_activates_at, sum(delta_pending),"
                f" {MOVED_AT}, {EARNED} FROM transactions WHERE customer_id = ?{unknown}"
                f" GROUP BY pending_activates_at, {MOVED_AT}",
                (customer_id, *cards),
            )
        ]

    def ledger_mark(self, customer_id: str, cards: list[str]) -> str:
        marks = ",".join("?" * len(cards))
        unknown = f" OR (customer_id = '' AND card IN ({marks}))" if cards else ""
        row = self.conn.execute(
            "SELECT count(*), coalesce(max(ingest_id), 0) FROM transactions"
            f" WHERE customer_id = ?{unknown}",
            (customer_id, *cards),
        ).fetchone()
        return f"{self.latest_version()}:{row[0]}:{row[1]}"

    # -- what a publication counts

    def newly_counted(self, base: Publication, pub: Publication) -> Iterable[tuple[str, str]]:
        return self.conn.execute(
            "SELECT DISTINCT t.customer_id, t.card FROM publication_progress p"
            " JOIN transactions t ON t.device_id = p.device_id AND t.seq <= p.through"
            " AND t.seq > coalesce((SELECT b.through FROM publication_progress b"
            " WHERE b.version = ? AND b.device_id = p.device_id), 0)"
            " WHERE p.version = ? AND t.ingest_id <= ?",
            (base.version, pub.version, pub.cut),
        ).fetchall()

    def reowned_cards(self, base: Publication, pub: Publication) -> Iterable[str]:
        return [
            str(card)
            for (card,) in self.conn.execute(
                "SELECT DISTINCT r.key FROM revisions r WHERE r.kind = 'card' AND r.version > ?"
                " AND r.version <= ? AND EXISTS (SELECT 1 FROM transactions t"
                " WHERE t.customer_id = '' AND t.card = r.key AND t.ingest_id <= ?)",
                (base.version, pub.version, pub.cut),
            )
        ]

    _COUNTED = (
        " FROM transactions t JOIN publication_progress p ON p.version = ?"
        " AND p.device_id = t.device_id WHERE t.ingest_id <= ? AND t.seq <= p.through"
    )

    def counted_card_moves(
        self, pub: Publication
    ) -> Iterable[tuple[str, int, str | None, int, str | None, int]]:
        return self.conn.execute(
            "SELECT t.card, sum(t.delta_available), t.pending_activates_at,"
            f" sum(t.delta_pending), {MOVED_AT}, {EARNED}{self._COUNTED}"
            " AND t.customer_id = '' AND t.card != ''"
            f" GROUP BY t.card, t.pending_activates_at, {MOVED_AT}",
            (pub.version, pub.cut),
        ).fetchall()

    def counted_customer_moves(
        self, pub: Publication, only: set[str] | None
    ) -> Iterable[tuple[str, int, str | None, int, str | None, int]]:
        known = ""
        if only is not None:
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS want (id TEXT PRIMARY KEY)")
            self.conn.execute("DELETE FROM temp.want")
            self.conn.executemany("INSERT INTO temp.want VALUES (?)", ((k,) for k in only))
            known = " AND t.customer_id IN (SELECT id FROM temp.want)"
        return self.conn.execute(
            "SELECT t.customer_id, sum(t.delta_available), t.pending_activates_at,"
            f" sum(t.delta_pending), {MOVED_AT}, {EARNED}{self._COUNTED}"
            f" AND t.customer_id != ''{known}"
            f" GROUP BY t.customer_id, t.pending_activates_at, {MOVED_AT} ORDER BY t.customer_id",
            (pub.version, pub.cut),
        )

    # -- coupons

    def coupon_first_use(self, code: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT device_id, receipt_id FROM coupon_uses WHERE code = ?", (code,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def record_coupon_use(self, row: CouponUse) -> tuple[str, str] | None:
        self.conn.execute("INSERT INTO coupon_uses VALUES (?,?,?,?,?,?)", row)
        return None  # the only writer: nobody recorded it meanwhile

    def record_coupon_conflict(self, row: CouponUse) -> None:
        self.conn.execute("INSERT OR IGNORE INTO coupon_conflicts VALUES (?,?,?,?,?,?)", row)

    def put_draft(self, kind: str, key: str, doc: str | None) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO draft (kind, key, doc) VALUES (?, ?, ?)", (kind, key, doc)
        )

    def expire_coupon_holds(self, now: str) -> None:
        self.conn.execute("DELETE FROM coupon_holds WHERE expires_at <= ?", (now,))

    def drop_coupon_holds(self, device_id: str, receipt_id: str) -> int:
        return int(
            self.conn.execute(
                "DELETE FROM coupon_holds WHERE device_id = ? AND receipt_id = ?",
                (device_id, receipt_id),
            ).rowcount
        )

    def drop_coupon_holds_of(self, device_id: str, receipt_ids: list[str]) -> None:
        self.conn.executemany(
            "DELETE FROM coupon_holds WHERE device_id = ? AND receipt_id = ?",
            [(device_id, receipt_id) for receipt_id in receipt_ids],
        )

    def coupon_held(self, code: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM coupon_holds WHERE code = ?", (code,)).fetchone()
            is not None
        )

    def hold_coupon(
        self, code: str, device_id: str, receipt_id: str, customer_id: str, now: str, expires: str
    ) -> bool:
        self.conn.execute(
            "INSERT INTO coupon_holds VALUES (?,?,?,?,?,?)",
            (code, device_id, receipt_id, customer_id, now, expires),
        )
        return True  # the only writer

    # -- holds

    def lock_device(self, device_id: str) -> None:
        pass  # BEGIN IMMEDIATE: this transaction is the only writer

    def lock_customers(self, customer_ids: Iterable[str]) -> None:
        pass

    def expire_holds(self, customer_id: str, now: str) -> None:
        self.conn.execute(
            "UPDATE holds SET state = 'EXPIRED' WHERE customer_id = ? AND state = 'ACTIVE'"
            " AND expires_at <= ?",
            (customer_id, now),
        )

    def active_holds(self, customer_id: str) -> list[tuple[str, str, int]]:
        return [
            (str(d), str(r), int(p))
            for d, r, p in self.conn.execute(
                "SELECT device_id, receipt_id, points FROM holds WHERE customer_id = ?"
                " AND state = 'ACTIVE'",
                (customer_id,),
            )
        ]

    def held(self, customer_id: str, now: str) -> int:
        return int(
            self.conn.execute(
                "SELECT coalesce(sum(points), 0) FROM holds WHERE customer_id = ?"
                " AND state = 'ACTIVE' AND expires_at > ?",
                (customer_id, now),
            ).fetchone()[0]
        )

    def settle_holds(self, device_id: str, receipt_ids: list[str]) -> None:
        self.conn.executemany(
            "UPDATE holds SET state = 'SETTLED' WHERE device_id = ? AND receipt_id = ?"
            " AND state = 'ACTIVE'",
            [(device_id, key) for key in receipt_ids],
        )

    def upsert_hold(
        self,
        hold_id: str,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        now: str,
        expires: str,
    ) -> None:
        self.conn.execute(
            "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, 'ACTIVE')"
            " ON CONFLICT (device_id, receipt_id) DO UPDATE SET"
            " points = excluded.points, expires_at = excluded.expires_at, state = 'ACTIVE'",
            (hold_id, device_id, receipt_id, customer_id, points, now, expires),
        )

    def delete_hold(self, device_id: str, receipt_id: str, *, only_active: bool) -> int:
        active = " AND state = 'ACTIVE'" if only_active else ""
        return int(
            self.conn.execute(
                f"DELETE FROM holds WHERE device_id = ? AND receipt_id = ?{active}",
                (device_id, receipt_id),
            ).rowcount
        )


def _latest_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM publications").fetchone()[0])


def _publication(conn: sqlite3.Connection, version: int) -> Publication | None:
    row = conn.execute(
        "SELECT version, issued_at, expires_at, cut, reason, changed_rows"
        " FROM publications WHERE version = ?",
        (version,),
    ).fetchone()
    if row is None:
        return None
    return Publication(
        int(row[0]), _when(row[1]), _when(row[2]), int(row[3]), str(row[4]), int(row[5])
    )
