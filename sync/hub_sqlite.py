"""`HubStore` on one SQLite file (WAL, synchronous=FULL): the reference hub's storage.

Each public method is one transaction. Writers take the write lock at once
(``BEGIN IMMEDIATE``), so ingest, holds and publishing serialise; readers (snapshot
builds) see one consistent state. Connections are per thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections import defaultdict
from collections.abc import Generator, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations
from tillpoint.agent.db import write_transaction
from tillpoint.agent.errors import StorageError
from tillpoint.agent.ledger import utc_text
from tillpoint.agent.models import Coupon, Program, _timestamp, describe
from tillpoint.agent.pricing import activation_time

from .hub_store import (
    SECTIONS,
    Authorisation,
    DeviceRecord,
    HubBalance,
    ImportRefused,
    ImportReport,
    ImportRow,
    IngestResult,
    LedgerEntry,
    Publication,
    RowProblem,
    StoredTx,
    TxIn,
    TxResult,
    UnknownVersion,
    Unsynced,
)

Texts = Iterator[tuple[str, str]]  # (key, canonical JSON text of the row) of a kind, in key order
Move = tuple[int, str | None, int]  # (points available, pending_activates_at, pending points)
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


def _canon(doc: dict[str, Any] | None) -> str | None:
    if doc is None:
        return None
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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


class SqliteHubStore:
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
                        (item.kind, item.key, _canon(item.doc)),
                    )
                    n += 1
                    if item.doc is None:
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
        latest = self._latest_version(conn)
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
            latest = self._latest_version(conn)
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

    def _latest_version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM publications").fetchone()[0])

    def _publication(self, conn: sqlite3.Connection, version: int) -> Publication | None:
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

    def latest(self) -> Publication | None:
        with self._read() as conn:
            return self._publication(conn, self._latest_version(conn))

    def publication(self, version: int) -> Publication | None:
        with self._read() as conn:
            return self._publication(conn, version)

    def delta_floor(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'delta_floor'").fetchone()
            return 0 if row is None else int(row[0])

    # ------------------------------------------------------------ snapshots

    def snapshot_doc(self, version: int, base_version: int) -> dict[str, Any]:
        """The snapshot as one JSON document (the shape of the contract §3)."""
        stream = self.snapshot_stream(version, base_version)
        _, header = next(stream)
        doc: dict[str, Any] = {**header, **{section: [] for section in SECTIONS}}
        for section, text in stream:
            doc.setdefault(section, []).append(json.loads(text))
        return doc

    def snapshot_stream(
        self, version: int, base_version: int
    ) -> Generator[tuple[str, Any], None, None]:
        """The snapshot `version`, full (base 0) or a delta from base: ("header", header
        dict) first, then (section, row) with each row as its canonical JSON text, in
        section order and key order, streamed from one read transaction (the caller reads
        it to the end).

        It is the same for every device (docs/PROTOCOL.md §3): a transaction of device d is
        counted in the balances iff it was ingested up to the version's cut and its seq is
        at most d's contiguous progress at that version; `appliedThrough` lists every
        device's progress.
        """
        with self._read() as conn:
            pub = self._publication(conn, version)
            if pub is None:
                raise UnknownVersion(f"version {version} was never published")
            base = None
            if base_version:
                base = self._publication(conn, base_version)
                if base is None or base_version >= version:
                    raise UnknownVersion(f"no delta from version {base_version}")
            header: dict[str, Any] = {
                "version": version,
                "baseVersion": base_version,
                "issuedAt": pub.issued_at.isoformat(),
                "expiresAt": pub.expires_at.isoformat(),
                "appliedThrough": self._progress_all(conn, version),
            }
            if base is None:
                program = self._doc_as_of(conn, "program", "", version)
                header["program"] = program if program is not None else _default_program()
                yield "header", header
                for section, kind in SECTIONS.items():
                    rows = self._texts_as_of(conn, kind, version)
                    if kind == "customer":
                        rows = self._with_balances(conn, rows, pub, only=None)
                    for _, text in rows:
                        yield section, text
                return
            removed: dict[str, list[str]] = {}
            changed: dict[str, list[str]] = {}
            for section, kind in [("program", "program"), *SECTIONS.items()]:
                for (key,) in conn.execute(
                    "SELECT DISTINCT key FROM revisions WHERE kind = ? AND version > ?"
                    " AND version <= ? ORDER BY key",
                    (kind, base_version, version),
                ).fetchall():
                    found = self._doc_as_of(conn, kind, str(key), version)
                    if found is None:
                        if kind != "program":
                            removed.setdefault(section, []).append(str(key))
                    elif kind == "program":
                        header["program"] = found
                    else:
                        changed.setdefault(section, []).append(str(key))
            customers = set(changed.get("customers", [])) | {
                key
                for key in self._affected_customers(conn, base, pub)
                if self._doc_as_of(conn, "customer", key, version) is not None
            }
            changed["customers"] = sorted(customers)
            header["removed"] = removed
            yield "header", header
            for section, kind in SECTIONS.items():
                pairs: Texts = (
                    (key, self._text_as_of(conn, kind, key, version))
                    for key in changed.get(section, [])
                )
                if kind == "customer":
                    pairs = self._with_balances(conn, pairs, pub, only=customers)
                for _, text in pairs:
                    yield section, text

    def _text_as_of(self, conn: sqlite3.Connection, kind: str, key: str, version: int) -> str:
        row = conn.execute(
            "SELECT doc FROM revisions WHERE kind = ? AND key = ? AND version <= ?"
            " ORDER BY version DESC LIMIT 1",
            (kind, key, version),
        ).fetchone()
        return "{}" if row is None or row[0] is None else str(row[0])

    def _texts_as_of(self, conn: sqlite3.Connection, kind: str, version: int) -> Texts:
        """Every row of `kind` at `version` as its stored text, in key order.

        One pass over the primary key (kind, key, version) with no sort (EXPLAIN QUERY
        PLAN: ``SEARCH revisions USING PRIMARY KEY (kind=?)``); SQLite's bare columns of a
        max() aggregate come from the row holding the maximum, i.e. the newest revision.
        The stored text is already canonical JSON (`_canon` is the only writer of `draft`
        and `publish` copies it), so it is written as it is, never parsed.
        """
        cur = conn.execute(
            "SELECT key, doc, max(version) FROM revisions WHERE kind = ? AND version <= ?"
            " GROUP BY key ORDER BY key",
            (kind, version),
        )
        while batch := cur.fetchmany(4096):
            for key, doc, _ in batch:
                if doc is not None:
                    yield key, doc

    def _progress_all(self, conn: sqlite3.Connection, version: int) -> dict[str, int]:
        return {
            str(device): int(through)
            for device, through in conn.execute(
                "SELECT device_id, through FROM publication_progress WHERE version = ?"
                " ORDER BY device_id",
                (version,),
            )
        }

    def _affected_customers(
        self, conn: sqlite3.Connection, base: Publication, pub: Publication
    ) -> set[str]:
        """Customers whose balance may differ between the versions: those of transactions
        counted at `pub` but not at `base` (any device's: seq above its progress at base,
        up to its progress at pub; being counted only ever starts, since progress never
        goes back), and the owners before and after of cards of UNKNOWN-card points that
        changed owner."""
        out: set[str] = set()
        cards: set[str] = set()
        for customer, card in conn.execute(
            "SELECT DISTINCT t.customer_id, t.card FROM publication_progress p"
            " JOIN transactions t ON t.device_id = p.device_id AND t.seq <= p.through"
            " AND t.seq > coalesce((SELECT b.through FROM publication_progress b"
            " WHERE b.version = ? AND b.device_id = p.device_id), 0)"
            " WHERE p.version = ? AND t.ingest_id <= ?",
            (base.version, pub.version, pub.cut),
        ):
            if customer:
                out.add(str(customer))
            elif card:
                cards.add(str(card))
        # A card that changed owner moves its UNKNOWN-card points between customers.
        for (card,) in conn.execute(
            "SELECT DISTINCT r.key FROM revisions r WHERE r.kind = 'card' AND r.version > ?"
            " AND r.version <= ? AND EXISTS (SELECT 1 FROM transactions t"
            " WHERE t.customer_id = '' AND t.card = r.key AND t.ingest_id <= ?)",
            (base.version, pub.version, pub.cut),
        ):
            cards.add(str(card))
            before = self._doc_as_of(conn, "card", str(card), base.version)
            if before is not None:
                out.add(str(before["customerId"]))
        for card in cards:
            owner = self._doc_as_of(conn, "card", card, pub.version)
            if owner is not None:
                out.add(str(owner["customerId"]))
        return out

    def _with_balances(
        self,
        conn: sqlite3.Connection,
        customers: Iterable[tuple[str, str]],
        pub: Publication,
        only: set[str] | None,
    ) -> Texts:
        """Customer rows (key order) with balancePoints and pending as of `pub`.

        Counted: each transaction ingested up to the cut whose seq is at most its device's
        progress at `pub` (its appliedThrough there). The sums come from one grouped
        query in customer order, merged with the rows as they stream by, so memory does
        not grow with the chain; a row with nothing to add is written as stored.
        """
        counted = (
            " FROM transactions t JOIN publication_progress p ON p.version = ?"
            " AND p.device_id = t.device_id WHERE t.ingest_id <= ? AND t.seq <= p.through"
        )
        params: list[Any] = [pub.version, pub.cut]
        known = ""
        if only is not None:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS want (id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM temp.want")
            conn.executemany("INSERT INTO temp.want VALUES (?)", ((k,) for k in only))
            known = " AND t.customer_id IN (SELECT id FROM temp.want)"
        # Points of UNKNOWN cards go to the card's owner at this version (few rows).
        extra: dict[str, list[Move]] = defaultdict(list)
        owners: dict[str, str | None] = {}
        for card, points, when, due in conn.execute(
            "SELECT t.card, sum(t.delta_available), t.pending_activates_at,"
            f" sum(t.delta_pending){counted} AND t.customer_id = '' AND t.card != ''"
            " GROUP BY t.card, t.pending_activates_at",
            params,
        ):
            if card not in owners:
                doc = self._doc_as_of(conn, "card", str(card), pub.version)
                owners[card] = None if doc is None else str(doc["customerId"])
            owner = owners[card]
            if owner is not None:
                extra[owner].append((int(points), when, int(due or 0)))
        sums = _grouped(
            conn.execute(
                "SELECT t.customer_id, sum(t.delta_available), t.pending_activates_at,"
                f" sum(t.delta_pending){counted} AND t.customer_id != ''{known}"
                " GROUP BY t.customer_id, t.pending_activates_at ORDER BY t.customer_id",
                params,
            )
        )
        upcoming = next(sums, None)
        for key, text in customers:
            while upcoming is not None and upcoming[0] < key:
                upcoming = next(sums, None)
            moves = extra.get(key, [])
            if upcoming is not None and upcoming[0] == key:
                moves = moves + upcoming[1]
            # In canonical JSON `"name":` with both quotes bare can only be a key.
            if not moves and '"balancePoints":' in text and '"pending":' not in text:
                yield key, text  # nothing to add, nothing to fold: as stored
                continue
            yield key, _balance_row(text, moves, pub.issued_at)

    # ------------------------------------------------------------ ledger

    def ingest(self, device_id: str, batch_id: str, txs: list[TxIn], now: datetime) -> IngestResult:
        import hashlib

        batch_hash = hashlib.sha256("\n".join(tx.content() for tx in txs).encode()).hexdigest()
        with self._write() as conn:
            if batch_id:
                row = conn.execute(
                    "SELECT content_sha256, ack FROM push_batches"
                    " WHERE device_id = ? AND batch_id = ?",
                    (device_id, batch_id),
                ).fetchone()
                if row is not None and row[0] == batch_hash:
                    stored = json.loads(row[1])
                    return IngestResult(
                        acked_through=int(stored["ackedThrough"]),
                        results=tuple(
                            TxResult(int(s), str(o), str(r)) for s, o, r in stored["results"]
                        ),
                        replayed=True,
                    )
            program = self._program(conn)
            results = [self._ingest_one(conn, tx, program, now) for tx in txs]
            through = self._advance(conn, device_id)
            ack = {
                "ackedThrough": through,
                "results": [[r.seq, r.outcome, r.reason] for r in results],
            }
            if batch_id:
                conn.execute(
                    "INSERT OR REPLACE INTO push_batches VALUES (?, ?, ?, ?, ?)",
                    (device_id, batch_id, batch_hash, json.dumps(ack), utc_text(now)),
                )
                conn.execute(
                    "DELETE FROM push_batches WHERE created_at < ?",
                    (utc_text(now - timedelta(days=30)),),
                )
        return IngestResult(through, tuple(results))

    def _program(self, conn: sqlite3.Connection) -> Program:
        doc = self._doc_as_of(conn, "program", "", self._latest_version(conn))
        return Program() if doc is None else Program.model_validate(doc)

    def _ingest_one(
        self, conn: sqlite3.Connection, tx: TxIn, program: Program, now: datetime
    ) -> TxResult:
        content = tx.content()
        existing = conn.execute(
            "SELECT content_sha256 FROM transactions WHERE device_id = ? AND seq = ?",
            (tx.device_id, tx.seq),
        ).fetchone()
        if existing is not None:
            if existing[0] == content:
                return TxResult(tx.seq, "DUPLICATE")
            reason = f"seq {tx.seq} of {tx.device_id} is already stored with other content"
            self._set_aside(conn, tx, "CONFLICT", reason, content, now)
            return TxResult(tx.seq, "CONFLICT", reason)
        try:
            fields = self._settle(conn, tx, program)
        except ValueError as exc:
            reason = str(exc)
            self._set_aside(conn, tx, "REJECTED", reason, content, now)
            return TxResult(tx.seq, "REJECTED", reason)
        conn.execute(
            "INSERT INTO transactions (device_id, seq, kind, at, customer_id, card, receipt_id,"
            " ref_id, request_json, result_json, sent_delta_available, sent_delta_pending,"
            " delta_available, delta_pending, pending_activates_at, content_sha256,"
            " ingested_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                utc_text(now),
            ),
        )
        if tx.fiscal_document:
            conn.execute(
                "UPDATE transactions SET fiscal_document = ? WHERE device_id = ? AND seq = ?",
                (tx.fiscal_document, tx.device_id, tx.seq),
            )
        if tx.kind == "CHECKOUT":
            self._use_coupons(conn, tx, fields["receipt_id"])
        elif tx.kind == "COUPON_ISSUED":
            self._issue_coupon(conn, fields["coupon"])
        # The holds this transaction makes real: its receipt's, and the one for its seq.
        settled = [f"seq:{tx.seq}"] + ([fields["receipt_id"]] if tx.kind == "CHECKOUT" else [])
        if tx.kind == "CHECKOUT":  # its codes are used now (coupon_uses), not held
            conn.execute(
                "DELETE FROM coupon_holds WHERE device_id = ? AND receipt_id = ?",
                (tx.device_id, fields["receipt_id"]),
            )
        conn.executemany(
            "UPDATE holds SET state = 'SETTLED' WHERE device_id = ? AND receipt_id = ?"
            " AND state = 'ACTIVE'",
            [(tx.device_id, key) for key in settled],
        )
        return TxResult(tx.seq, "STORED")

    def _settle_issued(self, tx: TxIn, request: dict[str, Any], receipt_id: str) -> dict[str, Any]:
        """A coupon a till issued: checked whole; it moves no points."""
        if tx.delta_available or tx.delta_pending:
            raise ValueError("an issued coupon moves no points")
        try:
            coupon = Coupon.model_validate(request.get("coupon"))
        except ValidationError as exc:
            raise ValueError(f"coupon: {describe(exc)}") from None
        return {
            "receipt_id": receipt_id,
            "ref_id": coupon.code,
            "available": 0,
            "pending": 0,
            "activates": None,
            "coupon": coupon.model_dump(mode="json", by_alias=True, exclude_none=True),
        }

    def _issue_coupon(self, conn: sqlite3.Connection, doc: dict[str, Any]) -> None:
        """A till-issued code goes into the next snapshot for every till, unless it was
        already used (then it has nothing to do there)."""
        code = str(doc["code"])
        if conn.execute("SELECT 1 FROM coupon_uses WHERE code = ?", (code,)).fetchone() is None:
            conn.execute(
                "INSERT OR REPLACE INTO draft (kind, key, doc) VALUES ('coupon', ?, ?)",
                (code, _canon(doc)),
            )

    def _use_coupons(self, conn: sqlite3.Connection, tx: TxIn, receipt_id: str) -> None:
        """The codes a checkout used: the first use of a code is recorded (and the code
        leaves the next snapshot); a later use elsewhere is a conflict, and the sale stands."""
        result = json.loads(tx.result_json)
        verdicts = result.get("coupons") if isinstance(result, dict) else None
        for verdict in verdicts if isinstance(verdicts, list) else ():
            if not isinstance(verdict, dict) or verdict.get("status") != "APPLIED":
                continue
            code = str(verdict.get("code") or "")
            if not code:
                continue
            row = (code, tx.device_id, tx.seq, receipt_id, tx.customer_id, tx.at)
            first = conn.execute(
                "SELECT device_id, receipt_id FROM coupon_uses WHERE code = ?", (code,)
            ).fetchone()
            if first is None:
                conn.execute("INSERT INTO coupon_uses VALUES (?,?,?,?,?,?)", row)
                conn.execute(
                    "INSERT OR REPLACE INTO draft (kind, key, doc) VALUES ('coupon', ?, NULL)",
                    (code,),
                )
            elif tuple(first) != (tx.device_id, receipt_id):
                conn.execute("INSERT OR IGNORE INTO coupon_conflicts VALUES (?,?,?,?,?,?)", row)

    def coupon_conflicts(self) -> list[dict[str, Any]]:
        """Codes used more than once (by two tills while they were offline), for review."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.code, c.device_id, c.receipt_id, c.at, u.device_id, u.receipt_id"
                " FROM coupon_conflicts c JOIN coupon_uses u ON u.code = c.code"
                " ORDER BY c.code, c.device_id, c.seq"
            ).fetchall()
        return [
            {
                "code": code,
                "deviceId": device,
                "receiptId": receipt,
                "at": at,
                "firstDeviceId": first_device,
                "firstReceiptId": first_receipt,
            }
            for code, device, receipt, at, first_device, first_receipt in rows
        ]

    def _settle(self, conn: sqlite3.Connection, tx: TxIn, program: Program) -> dict[str, Any]:
        """Check a transaction and work out the points it moves, as the hub counts them."""
        if tx.seq < 1:
            raise ValueError("seq must be 1 or more")
        if tx.kind not in ("CHECKOUT", "REFUND", "COUPON_ISSUED"):
            raise ValueError(f"unknown kind {tx.kind!r}")
        try:
            at = _timestamp(tx.at)
            request = json.loads(tx.request_json)
            result = json.loads(tx.result_json)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unreadable transaction: {exc}") from None
        if not isinstance(request, dict) or not isinstance(result, dict):
            raise ValueError("requestJson and resultJson must be JSON objects")
        receipt_id = str(request.get("receiptId") or "")
        if not receipt_id:
            raise ValueError("the request has no receiptId")
        if tx.kind == "COUPON_ISSUED":
            return self._settle_issued(tx, request, receipt_id)
        ref_id = receipt_id if tx.kind == "CHECKOUT" else str(request.get("refundId") or "")
        if not ref_id:
            raise ValueError("the refund has no refundId")
        available, pending = tx.delta_available, tx.delta_pending
        activates: str | None = None
        if pending:
            if not tx.pending_activates_at:
                raise ValueError("pending points without pendingActivatesAt")
            try:
                activates = utc_text(_timestamp(tx.pending_activates_at))
            except ValueError as exc:
                raise ValueError(f"pendingActivatesAt: {exc}") from None
        if not tx.customer_id and tx.card:
            # An UNKNOWN card: the till counted nothing; the hub settles the points it
            # earned (or loses) so that they reach the customer once the card is known.
            available, pending, activates = self._settle_unknown(
                conn, tx, at, result, receipt_id, program
            )
        return {
            "receipt_id": receipt_id,
            "ref_id": ref_id,
            "available": available,
            "pending": pending,
            "activates": activates,
        }

    def _settle_unknown(
        self,
        conn: sqlite3.Connection,
        tx: TxIn,
        at: datetime,
        result: dict[str, Any],
        receipt_id: str,
        program: Program,
    ) -> tuple[int, int, str | None]:
        if tx.kind == "CHECKOUT":
            earned = int(result.get("earnedPoints") or 0)
            due = activation_time(at, program)
            if earned and due > at:
                return 0, earned, utc_text(due)
            return earned, 0, None
        taken = int(result.get("takenBackPoints") or 0)
        returned = int(result.get("returnedPoints") or 0)
        row = conn.execute(
            "SELECT pending_activates_at, coalesce((SELECT sum(delta_pending) FROM transactions"
            " t2 WHERE t2.device_id = t.device_id AND t2.receipt_id = t.receipt_id), 0)"
            " FROM transactions t WHERE device_id = ? AND receipt_id = ? AND kind = 'CHECKOUT'",
            (tx.device_id, receipt_id),
        ).fetchone()
        pending = 0
        activates: str | None = None
        if row is not None and row[0] and at < _when(row[0]):
            from_pending = max(0, min(taken, int(row[1])))
            if from_pending:
                pending, activates, taken = -from_pending, str(row[0]), taken - from_pending
        return returned - taken, pending, activates

    def _set_aside(
        self,
        conn: sqlite3.Connection,
        tx: TxIn,
        outcome: str,
        reason: str,
        content: str,
        now: datetime,
    ) -> None:
        payload = json.dumps(tx.__dict__, ensure_ascii=False)
        conn.execute(
            "INSERT OR IGNORE INTO set_aside (device_id, seq, outcome, reason, content_sha256,"
            " payload, received_at) VALUES (?,?,?,?,?,?,?)",
            (tx.device_id, tx.seq, outcome, reason, content, payload, utc_text(now)),
        )

    def _advance(self, conn: sqlite3.Connection, device_id: str) -> int:
        row = conn.execute(
            "SELECT contiguous_through FROM device_progress WHERE device_id = ?", (device_id,)
        ).fetchone()
        through = 0 if row is None else int(row[0])
        start = through
        while conn.execute(
            "SELECT 1 FROM transactions WHERE device_id = ? AND seq = ?", (device_id, through + 1)
        ).fetchone():
            through += 1
        if row is None or through != start:
            conn.execute(
                "INSERT OR REPLACE INTO device_progress VALUES (?, ?)", (device_id, through)
            )
        return through

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

    # ------------------------------------------------------------ balances and holds

    def _live(
        self, conn: sqlite3.Connection, customer_id: str, at: datetime
    ) -> tuple[int, int] | None:
        """(available, pending) at `at` over everything ingested; None: unknown customer."""
        latest = self._latest_version(conn)
        doc = self._doc_as_of(conn, "customer", customer_id, latest)
        if doc is None:
            return None
        cutoff = utc_text(at)
        available = int(doc.get("balancePoints", 0))
        pending = 0
        for entry in doc.get("pending", []):
            if _timestamp(entry["activatesAt"]) <= at:
                available += int(entry["points"])
            else:
                pending += int(entry["points"])
        cards = [
            str(key)
            for (key,) in conn.execute(
                "SELECT DISTINCT key FROM revisions WHERE json_extract(doc, '$.customerId') = ?"
                " AND kind = 'card'",
                (customer_id,),
            ).fetchall()
            if (self._doc_as_of(conn, "card", str(key), latest) or {}).get("customerId")
            == customer_id
        ]
        marks = ",".join("?" * len(cards))
        unknown = f" OR (customer_id = '' AND card IN ({marks}))" if cards else ""
        for points, when, due in conn.execute(
            "SELECT sum(delta_available), pending_activates_at, sum(delta_pending)"
            f" FROM transactions WHERE customer_id = ?{unknown} GROUP BY pending_activates_at",
            (customer_id, *cards),
        ):
            available += int(points)
            if due:
                if when and when <= cutoff:
                    available += int(due)
                else:
                    pending += int(due)
        return available, pending

    def balance(self, customer_id: str, at: datetime) -> HubBalance:
        with self._read() as conn:
            live = self._live(conn, customer_id, at)
            if live is None:
                from tillpoint.agent.errors import NotFound

                raise NotFound(f"customer {customer_id} is not known to the hub")
            held = conn.execute(
                "SELECT coalesce(sum(points), 0) FROM holds WHERE customer_id = ?"
                " AND state = 'ACTIVE' AND expires_at > ?",
                (customer_id, utc_text(datetime.now(UTC))),
            ).fetchone()[0]
            return HubBalance(live[0], live[1], int(held))

    def authorise(
        self,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        at: datetime,
        unsynced: list[Unsynced],
        now: datetime,
        hold_ttl_s: float,
    ) -> Authorisation:
        with self._write() as conn:
            conn.execute(
                "UPDATE holds SET state = 'EXPIRED' WHERE state = 'ACTIVE' AND expires_at <= ?",
                (utc_text(now),),
            )
            live = self._live(conn, customer_id, at)
            spendable = 0 if live is None else live[0]
            expires = now + timedelta(seconds=hold_ttl_s)
            mine = {receipt_id}
            for item in unsynced:
                stored = conn.execute(
                    "SELECT 1 FROM transactions WHERE device_id = ? AND seq = ?",
                    (device_id, item.seq),
                ).fetchone()
                if stored is not None:
                    continue
                # The till's own movement the hub has not received: it counts now, and a
                # spend is held for the other tills until the transaction arrives (its
                # receipt's own hold, if any, is replaced so nothing is held twice).
                spendable += item.points
                key = f"seq:{item.seq}"
                mine.add(key)
                conn.execute(
                    "UPDATE holds SET state = 'SETTLED' WHERE device_id = ? AND receipt_id = ?"
                    " AND state = 'ACTIVE'",
                    (device_id, item.receipt_id),
                )
                if item.points < 0:
                    conn.execute(
                        "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, 'ACTIVE')"
                        " ON CONFLICT (device_id, receipt_id) DO UPDATE SET"
                        " points = excluded.points, expires_at = excluded.expires_at,"
                        " state = 'ACTIVE'",
                        (
                            uuid.uuid4().hex,
                            device_id,
                            key,
                            customer_id,
                            -item.points,
                            utc_text(now),
                            utc_text(expires),
                        ),
                    )
            held = 0
            for dev, rid, pts in conn.execute(
                "SELECT device_id, receipt_id, points FROM holds WHERE customer_id = ?"
                " AND state = 'ACTIVE'",
                (customer_id,),
            ):
                if dev == device_id and rid in mine:
                    continue  # this receipt, or a movement counted through `unsynced`
                held += int(pts)
            live_balance = spendable - held
            granted = max(0, min(points, live_balance))
            hold_id = ""
            conn.execute(
                "DELETE FROM holds WHERE device_id = ? AND receipt_id = ?", (device_id, receipt_id)
            )
            if granted > 0:
                hold_id = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, 'ACTIVE')",
                    (
                        hold_id,
                        device_id,
                        receipt_id,
                        customer_id,
                        granted,
                        utc_text(now),
                        utc_text(expires),
                    ),
                )
        return Authorisation(granted, hold_id, expires, live_balance)

    def release(self, device_id: str, receipt_id: str) -> bool:
        """A hold the till gave up (its receipt cancelled or expired there): dropped, so the
        points are spendable at once. A settled hold stays: its transaction is the truth."""
        with self._write() as conn:
            gone = conn.execute(
                "DELETE FROM holds WHERE device_id = ? AND receipt_id = ? AND state = 'ACTIVE'",
                (device_id, receipt_id),
            ).rowcount
            gone += conn.execute(
                "DELETE FROM coupon_holds WHERE device_id = ? AND receipt_id = ?",
                (device_id, receipt_id),
            ).rowcount
        return bool(gone)

    def hold_coupons(
        self,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        codes: list[str],
        now: datetime,
        hold_ttl_s: float,
    ) -> list[str]:
        used: list[str] = []
        with self._write() as conn:
            conn.execute("DELETE FROM coupon_holds WHERE expires_at <= ?", (utc_text(now),))
            conn.execute(
                "DELETE FROM coupon_holds WHERE device_id = ? AND receipt_id = ?",
                (device_id, receipt_id),
            )
            expires = utc_text(now + timedelta(seconds=hold_ttl_s))
            for code in dict.fromkeys(codes):
                first = conn.execute(
                    "SELECT device_id, receipt_id FROM coupon_uses WHERE code = ?", (code,)
                ).fetchone()
                if first is not None and tuple(first) != (device_id, receipt_id):
                    used.append(code)
                    continue
                held = conn.execute("SELECT 1 FROM coupon_holds WHERE code = ?", (code,)).fetchone()
                if held is not None:  # another receipt's hold (this one's were dropped)
                    used.append(code)
                    continue
                if first is None:
                    conn.execute(
                        "INSERT INTO coupon_holds VALUES (?,?,?,?,?,?)",
                        (code, device_id, receipt_id, customer_id, utc_text(now), expires),
                    )
        return used

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


def _grouped(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[str, list[Move]]]:
    """(customer, its moves) from rows (customer, available, activates_at, pending) that
    come grouped by customer."""
    current: str | None = None
    moves: list[Move] = []
    for customer, points, when, due in rows:
        if customer != current:
            if current is not None:
                yield current, moves
            current, moves = str(customer), []
        moves.append((int(points), when, int(due or 0)))
    if current is not None:
        yield current, moves


def _balance_row(text: str, moves: list[Move], issued_at: datetime) -> str:
    """A customer row with the counted moves added, and pending points due by `issued_at`
    folded into balancePoints."""
    row = dict(json.loads(text))
    balance = int(row.get("balancePoints", 0))
    entries: dict[datetime, int] = defaultdict(int)
    for entry in row.get("pending", []):
        entries[_timestamp(entry["activatesAt"]).astimezone(UTC)] += int(entry["points"])
    for points, when, due in moves:
        balance += points
        if when and due:
            entries[_when(when).astimezone(UTC)] += due
    left = []
    for when_ in sorted(entries):
        if not entries[when_]:
            continue
        if when_ <= issued_at:
            balance += entries[when_]
        else:
            left.append({"points": entries[when_], "activatesAt": when_.isoformat()})
    row["balancePoints"] = balance
    if left:
        row["pending"] = left
    else:
        row.pop("pending", None)
    return str(_canon(row))


def _default_program() -> dict[str, Any]:
    return Program().model_dump(mode="json", by_alias=True, exclude_none=True)
