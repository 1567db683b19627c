"""SQLite files of a till and their schema migrations, versioned in one place.

A till keeps two files in its data directory:

- ``cache.db``: the hub's snapshot (program, catalogue, customers, cards, offers). It is
  replaced or patched by one snapshot transaction at a time; readers see the old data or
  the new, never a mix (WAL).
- ``ledger.db``: what happened at this till (receipts, refunds, journal, outbox, points,
  print history and print jobs). Every commit writes its rows in one transaction with
  ``synchronous=FULL``, so a receipt, its journal entry and its outbox row stand or fall
  together.

Two files, so that a long snapshot apply holds the cache's write lock without ever
holding the ledger's: checkouts keep committing while a snapshot loads.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .errors import StorageError

BUSY_TIMEOUT_MS = 5000

cache_migrations = Migrations("tillpoint.cache")
ledger_migrations = Migrations("tillpoint.ledger")


@cache_migrations()
def m001_cache(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE applied_through (device_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE TABLE products (
            sku TEXT PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
            excluded INTEGER NOT NULL
        );
        CREATE TABLE categories (code TEXT PRIMARY KEY, parent TEXT, name TEXT NOT NULL);
        CREATE TABLE customers (id TEXT PRIMARY KEY, phone TEXT, doc TEXT NOT NULL);
        CREATE INDEX customers_phone ON customers (phone);
        CREATE TABLE cards (
            number TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL
        );
        CREATE INDEX cards_customer ON cards (customer_id);
        CREATE TABLE offers (id TEXT PRIMARY KEY, customer_id TEXT, doc TEXT NOT NULL);
        CREATE INDEX offers_customer ON offers (customer_id);
        """
    )


@ledger_migrations()
def m001_ledger(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE device (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE receipts (
            receipt_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            local_day TEXT NOT NULL,
            card TEXT NOT NULL,
            customer_id TEXT,
            mode TEXT NOT NULL,
            redeemed_points INTEGER NOT NULL,
            extra_points INTEGER NOT NULL,
            request TEXT NOT NULL,
            result TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX receipts_card_day ON receipts (card, local_day);
        CREATE TABLE receipt_lines (
            receipt_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            sku TEXT NOT NULL,
            qty TEXT NOT NULL,
            redeemed_points INTEGER NOT NULL,
            earned_points INTEGER NOT NULL,
            returned_qty TEXT NOT NULL DEFAULT '0',
            PRIMARY KEY (receipt_id, idx)
        );
        CREATE TABLE refunds (
            refund_id TEXT PRIMARY KEY,
            receipt_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            request TEXT NOT NULL,
            result TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        -- Every committed receipt and refund, forever; (device_id, seq) is never reused.
        CREATE TABLE journal (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            ref_id TEXT NOT NULL,
            at TEXT NOT NULL,
            customer_id TEXT,
            card TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)
        );
        -- What is still to be sent to the hub; a row goes only when the hub acknowledged it.
        CREATE TABLE outbox (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (device_id, seq)
        );
        -- Point movements of this till's transactions. kind 'spend' counts at once,
        -- kind 'earn' counts from activates_at (pending before).
        CREATE TABLE points (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            customer_id TEXT NOT NULL,
            receipt_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('spend', 'earn')),
            points INTEGER NOT NULL,
            activates_at TEXT
        );
        CREATE INDEX points_customer ON points (customer_id);
        CREATE TABLE print_history (
            customer_id TEXT NOT NULL,
            offer_id TEXT NOT NULL,
            printed_at TEXT NOT NULL,
            receipt_id TEXT NOT NULL
        );
        CREATE INDEX print_history_customer ON print_history (customer_id, offer_id);
        CREATE TABLE IF NOT EXISTS print_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            receipt_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'PENDING',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            printed_at TEXT
        );
        """
    )


@ledger_migrations()
def m002_print_jobs_open(db: Database) -> None:
    # Keeps the print worker's "oldest open job" look-up cheap as DONE rows pile up.
    db.execute(
        "CREATE INDEX IF NOT EXISTS print_jobs_open ON print_jobs(state, id) WHERE state <> 'DONE'"
    )


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """One `BEGIN IMMEDIATE` write transaction on an autocommit connection.

    Anything raised inside rolls all of it back; SQLite's own errors (busy, disk full,
    a constraint) come out as one StorageError naming `what`, so callers see a readable
    refusal and know that nothing was stored.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StorageError(f"the {what} is busy or unavailable: {exc}") from None
    try:
        yield conn
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StorageError(f"the {what} could not be written, nothing was stored: {exc}") from None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StorageError(f"the {what} could not be written, nothing was stored: {exc}") from None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """An autocommit connection (explicit BEGIN/COMMIT), WAL, synchronous=FULL, busy timeout."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot open {path}: {exc}") from None
    return conn


def migrate(conn: sqlite3.Connection, migrations: Migrations) -> None:
    try:
        migrations.apply(Database(conn))
    except sqlite3.Error as exc:
        raise StorageError(f"cannot migrate the database schema: {exc}") from None


def open_cache(data_dir: Path) -> sqlite3.Connection:
    conn = connect(data_dir / "cache.db")
    migrate(conn, cache_migrations)
    return conn


def phone_secret(data_dir: Path) -> bytes:
    """The till's key for phone hashes, made once (0600, written temp-then-rename)."""
    import os
    import secrets

    path = data_dir / "phone.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def open_ledger(data_dir: Path) -> sqlite3.Connection:
    conn = connect(data_dir / "ledger.db")
    migrate(conn, ledger_migrations)
    return conn
