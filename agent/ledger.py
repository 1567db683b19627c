"""The till's ledger (``ledger.db``): its one schema, its one opener, and its SQL.

This module owns the file. Every table of it is created here, in two sqlite-utils
migration sets applied together by `open_ledger` / `migrate_ledger` (the names are those
older tills recorded in ``_sqlite_migrations``, so an existing ledger upgrades in place):

- ``tillpoint.ledger``: receipts and their lines, refunds, the journal, the outbox, point
  movements, print history and print jobs (the print worker's queue), the receipt's life
  (hold, confirm, cancel), coupons used and issued;
- ``tillpoint.sync``: the sync client's ``sync_state`` and ``sync_set_aside``.

Reads (balances, sequence numbers, limits, history) and writes are named functions over
a connection the caller owns: `Agent` calls the writes inside the one transaction of a
commit or refund; the sync client and the print worker call theirs on their own
connections. Rows that cross a module boundary are frozen dataclasses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo

from .db import MigrationSet, begin_write, connect, is_damage, migrate, owner_hint
from .errors import DamagedLedger, InputError, StorageError
from .expiry import Counted, Movement, Tally, Wallet, days_later, last_instant, wallet_of
from .expiry import utc_text as utc_text  # the ledger's time stamps (its callers' name)
from .models import Coupon, Customer, Program

if TYPE_CHECKING:
    from sqlite_utils import Database

LEDGER = "ledger.db"
log = logging.getLogger("tillpoint.sync")

ledger_migrations = MigrationSet("tillpoint.ledger", "ledger")
# The sync client's tables: a set of their own, as older tills recorded them.
sync_migrations = MigrationSet("tillpoint.sync", "ledger")


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


@ledger_migrations()
def m003_receipt_life(db: Database) -> None:
    # The receipt's life at the till (hold, confirm, cancel): one row per receiptId ever
    # held or committed through it, with the digest of the request first stored under it.
    db.executescript(
        """
        CREATE TABLE receipt_life (
            receipt_id TEXT PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('HELD', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),
            digest TEXT NOT NULL,
            request TEXT NOT NULL,
            held_result TEXT NOT NULL,
            figures TEXT NOT NULL,
            card TEXT NOT NULL,
            local_day TEXT NOT NULL,
            mode TEXT NOT NULL,
            redeemed_points INTEGER NOT NULL,
            hub_hold INTEGER NOT NULL,
            held_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            closed_at TEXT,
            fiscal_document TEXT
        );
        CREATE INDEX receipt_life_open ON receipt_life (state, expires_at) WHERE state = 'HELD';
        CREATE INDEX receipt_life_card_day ON receipt_life (card, local_day)
            WHERE state = 'HELD';
        """
    )


@ledger_migrations()
def m004_receipt_activates_at(db: Database) -> None:
    # When the receipt's earned points become spendable, fixed at commit with the
    # activationDelayDays then in force: a refund judges "still pending" by it, never by
    # today's program. Receipts committed before: their earn row's activation time, or the
    # sale time (nothing was earned, so nothing can be pending).
    db.execute("ALTER TABLE receipts ADD COLUMN activates_at TEXT")
    db.execute(
        "UPDATE receipts SET activates_at = coalesce("
        " (SELECT min(p.activates_at) FROM points p"
        "  WHERE p.receipt_id = receipts.receipt_id AND p.kind = 'earn' AND p.points > 0"
        "  AND p.device_id = receipts.device_id AND p.seq = receipts.seq), at)"
    )


@ledger_migrations()
def m005_points_expires_at(db: Database) -> None:
    # When a batch of earned points expires (pointsLifetimeDays in force at commit after
    # its activation); NULL: never. Rows written before never expire.
    db.execute("ALTER TABLE points ADD COLUMN expires_at TEXT")


@ledger_migrations()
def m006_coupon_uses(db: Database) -> None:
    # The coupons this till's commits used (§13): a code is accepted at most once here.
    db.executescript(
        """
        CREATE TABLE coupon_uses (
            code TEXT PRIMARY KEY,
            receipt_id TEXT NOT NULL,
            customer_id TEXT,
            offer_id TEXT NOT NULL,
            at TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """
    )


@ledger_migrations()
def m007_issued_coupons(db: Database) -> None:
    # One-time codes this till printed on offers with issueCoupon (§13); doc is the Coupon.
    db.executescript(
        """
        CREATE TABLE issued_coupons (
            code TEXT PRIMARY KEY,
            receipt_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """
    )


@ledger_migrations()
def m008_points_by_device(db: Database) -> None:
    # A balance reads a customer's rows per device above the snapshot's appliedThrough
    # (§3): an index range, not the customer's whole history on this till. The index on
    # customer_id alone stays: it gives the customer's newest row in one seek.
    db.executescript(
        """
        CREATE INDEX points_customer_device ON points (customer_id, device_id, seq);
        """
    )


@ledger_migrations()
def m009_outbox_texts(db: Database) -> None:
    # A checkout's or refund's request and result texts are stored once, in its row of
    # `receipts` or `refunds`: its outbox row says which ('receipt' or 'refund', the row
    # named by its journal entry's ref_id) and its payload lacks requestJson and
    # resultJson, which `outbox_batch` puts back. NULL: the payload is whole (coupon
    # issues, and every row written before; those are sent as they are).
    db.execute("ALTER TABLE outbox ADD COLUMN texts TEXT")


@ledger_migrations()
def m010_clustered_rows(db: Database) -> None:
    # A commit appends to `receipt_lines`, `journal` and `outbox`, each keyed by its
    # primary key: tables WITHOUT ROWID are that key's one b-tree, where a rowid table
    # wrote its row and the key's index apart (a 50-line receipt's lines were ≈ 6 pages
    # of the write-ahead log, the index's page splits most of them). Same columns, same
    # order; the rows are copied in key order, in the migration's one transaction.
    tables = {
        "receipt_lines": (
            "receipt_id TEXT NOT NULL, idx INTEGER NOT NULL, sku TEXT NOT NULL,"
            " qty TEXT NOT NULL, redeemed_points INTEGER NOT NULL,"
            " earned_points INTEGER NOT NULL, returned_qty TEXT NOT NULL DEFAULT '0',"
            " PRIMARY KEY (receipt_id, idx)"
        ),
        "journal": (
            "device_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
            " ref_id TEXT NOT NULL, at TEXT NOT NULL, customer_id TEXT, card TEXT NOT NULL,"
            " created_at TEXT NOT NULL, PRIMARY KEY (device_id, seq)"
        ),
        "outbox": (
            "device_id TEXT NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL,"
            " created_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, texts TEXT,"
            " PRIMARY KEY (device_id, seq)"
        ),
    }
    for name, columns in tables.items():
        key = columns[columns.index("PRIMARY KEY (") + len("PRIMARY KEY (") : -1]
        db.execute(f"CREATE TABLE {name}_clustered ({columns}) WITHOUT ROWID")
        db.execute(f"INSERT INTO {name}_clustered SELECT * FROM {name} ORDER BY {key}")
        db.execute(f"DROP TABLE {name}")
        db.execute(f"ALTER TABLE {name}_clustered RENAME TO {name}")


@ledger_migrations()
def m011_receipt_lines_inline(db: Database) -> None:
    # A receipt's lines are written with it, as one JSON text in its row:
    # [[sku, qty, redeemed points, earned points], ...] (`insert_receipt`). The table
    # `receipt_lines` keeps the lines of receipts committed before (NULL here) and of
    # receipts refunded since (their returned quantities, `set_returned`).
    db.execute("ALTER TABLE receipts ADD COLUMN lines TEXT")


@ledger_migrations()
def m012_hub_releases(db: Database) -> None:
    # A cancelled or expired hold whose release did not reach the hub keeps `hub_hold`
    # (cleared once the hub released it): the releases still to send, found by this index.
    db.execute(
        "CREATE INDEX receipt_life_release ON receipt_life (closed_at)"
        " WHERE hub_hold != 0 AND state IN ('CANCELLED', 'EXPIRED')"
    )


@ledger_migrations()
def m013_coupon_uses_receipt(db: Database) -> None:
    # A hold cancelled, expired or priced again gives its codes back by its receipt id,
    # inside the ledger's write transaction: without this index each one read every code
    # the till ever took (the table keeps them all).
    db.execute("CREATE INDEX coupon_uses_receipt ON coupon_uses (receipt_id)")


@ledger_migrations()
def m014_issued_coupons_seq(db: Database) -> None:
    # The seq of the COUPON_ISSUED transaction that sent each code to the hub: once the
    # hub has counted it (appliedThrough), the snapshot says whether the code still exists
    # (removed: used elsewhere, voided), not this table.
    db.execute("ALTER TABLE issued_coupons ADD COLUMN seq INTEGER")
    # One pass over the journal (no index by ref_id: a subquery a code read it whole for
    # each, 45 s for 3,000 codes of a year's 300,000 rows, past a unit's start timeout).
    db.execute(
        "UPDATE issued_coupons SET seq = issued.seq FROM (SELECT ref_id, max(seq) AS seq"
        " FROM journal WHERE kind = 'COUPON_ISSUED' GROUP BY ref_id) AS issued"
        " WHERE issued.ref_id = issued_coupons.code"
    )


@ledger_migrations()
def m015_hub_asks(db: Database) -> None:
    # The receipts whose hold the till is asking the hub for, written before the request
    # and gone with the receipt's own rows (one transaction): one left behind is a receipt
    # the till never stored (killed while the hub placed its hold, or a commit that failed
    # after the grant), whose hold at the hub no one else releases (`unstored_hub_asks`).
    db.execute(
        "CREATE TABLE hub_asks (receipt_id TEXT PRIMARY KEY, asked_at TEXT NOT NULL) WITHOUT ROWID"
    )


@ledger_migrations()
def m016_hub_asks_pid(db: Database) -> None:
    # The process that asked (`os.getpid()`): an ask of a process still running (a
    # `tillpoint hold` run locally beside `tillpoint run`) may be on its way to its commit;
    # one of a process gone is released at once (`Agent._release_unstored`).
    db.execute("ALTER TABLE hub_asks ADD COLUMN pid INTEGER")


@sync_migrations()
def m001_sync_state(db: Database) -> None:
    # sync_state(key, value): last pull, last push, last contact, mode, outstanding errors
    # (one per area), last refused snapshot. sync_set_aside: transactions the hub answered
    # CONFLICT or REJECTED; they leave the outbox and stay in the journal.
    db.executescript(
        """
        CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE sync_set_aside (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)
        );
        """
    )


@sync_migrations()
def m002_sync_sent(db: Database) -> None:
    # sync_sent: the outbox rows the hub acknowledged, kept a while (`SENT_KEPT_DAYS`) as
    # they were: a hub restored from a backup has lost those it acknowledged since, and
    # they are sent again from here (`requeue_lost`) when its mark for the device goes back.
    db.execute(
        "CREATE TABLE sync_sent (device_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " payload TEXT NOT NULL, created_at TEXT NOT NULL, texts TEXT,"
        " sent_at TEXT NOT NULL, PRIMARY KEY (device_id, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX sync_sent_at ON sync_sent (sent_at)")


@sync_migrations()
def m003_sync_discarded(db: Database) -> None:
    # sync_discarded: the seqs `tillpoint reset --force` discarded unsent, to be told to
    # the hub (`queue_discarded`); each leaves once the hub answered for it.
    db.execute(
        "CREATE TABLE sync_discarded (device_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " at TEXT NOT NULL, PRIMARY KEY (device_id, seq)) WITHOUT ROWID"
    )


@sync_migrations()
def m004_sync_sent_by_device(db: Database) -> None:
    # The prune at each push's answer (`settle_push`: the device's rows sent before 35
    # days) by an index it can range over: on (sent_at) alone SQLite took the primary key
    # for `device_id = ?` and walked every kept row of the device, in the write
    # transaction every checkout waits for (about 200 ms a batch at 60,000 rows).
    db.execute("DROP INDEX IF EXISTS sync_sent_at")
    db.execute("CREATE INDEX sync_sent_by_device ON sync_sent (device_id, sent_at)")


# How long an acknowledged transaction is kept to be sent again to a hub restored from a
# backup (a restore of an older backup loses what it acknowledged before that, for good).
SENT_KEPT_DAYS = 35


def requeue_lost(
    conn: sqlite3.Connection, device_id: str, hub_mark: int, but: Sequence[int] = ()
) -> int:
    """Inside the caller's write transaction: when the hub's contiguous mark for the
    device went back below the last one it answered (`sync_state` 'acked_through': the
    hub was restored from a backup and lost what it acknowledged since), the acknowledged
    transactions above it go back into the outbox, as they were (the hub stores each one
    it lost, and answers DUPLICATE for the others), but those in `but` (just answered).
    Returns how many."""
    row = conn.execute("SELECT value FROM sync_state WHERE key = 'acked_through'").fetchone()
    if row is None or hub_mark >= int(row[0] or 0):
        return 0
    answered = json.dumps(sorted(set(but)))
    lost = (
        " FROM sync_sent WHERE device_id = ? AND seq > ?"
        " AND seq NOT IN (SELECT value FROM json_each(?))"
        " AND coalesce(json_extract(payload, '$.kind'), '') {} ?"
    )
    cur = conn.execute(
        "INSERT OR IGNORE INTO outbox (device_id, seq, payload, created_at, texts)"
        " SELECT device_id, seq, payload, created_at, texts" + lost.format("!="),
        (device_id, hub_mark, answered, DISCARDED),
    )
    count = int(cur.rowcount)
    # a seq discarded unsent (`reset --force`) is told again as such, not as a sale
    cur = conn.execute(
        "INSERT OR IGNORE INTO sync_discarded (device_id, seq, at)"
        " SELECT device_id, seq, json_extract(payload, '$.at')" + lost.format("="),
        (device_id, hub_mark, answered, DISCARDED),
    )
    count += int(cur.rowcount)
    conn.execute("INSERT OR REPLACE INTO sync_state VALUES ('acked_through', ?)", (str(hub_mark),))
    if count:
        log.warning(
            "the hub has this till's transactions only through seq %d, below what it"
            " acknowledged before (restored from a backup?): %d sent again",
            hub_mark,
            count,
        )
    return count


def answered_by(conn: sqlite3.Connection, hub: str) -> None:
    """Inside the caller's write transaction, before a hub's answer is taken: `hub` (its
    CA's fingerprint, `HubLink.hub_id`) answered. The acknowledgements of another hub
    are forgotten (`forget_acknowledged`): only the hub that gave them, restored from a
    backup, gets them again. A running agent keeps the enrolment it started with after
    `sync install` of another hub's bundle: what it pushed to the old hub meanwhile was
    sent to the new one after the restart, and counted there a second time."""
    if not hub:
        return
    row = conn.execute("SELECT value FROM sync_state WHERE key = 'acked_hub'").fetchone()
    if row is not None and str(row[0]) != hub:
        forget_acknowledged(conn)
    if row is None or str(row[0]) != hub:
        conn.execute("INSERT OR REPLACE INTO sync_state VALUES ('acked_hub', ?)", (hub,))


def forget_acknowledged(conn: sqlite3.Connection) -> None:
    """Inside the caller's write transaction (`tillpoint sync install` of another hub's
    bundle): what the previous hub acknowledged is its own, kept to be sent again to it
    were it restored from a backup (`requeue_lost`). Another hub's mark for the device
    (0: it has none of its sales) is not that hub's going back: without this the till
    sent the new hub every sale of its last 35 days, counted there a second time."""
    conn.execute("DELETE FROM sync_sent")
    conn.execute("DELETE FROM sync_state WHERE key = 'acked_through'")


@contextlib.contextmanager
def one_read(conn: sqlite3.Connection) -> Iterator[None]:
    """The reads inside see the ledger at one moment (one read transaction; inside the
    caller's own transaction, that one). `status` reads the last seq, the outbox, the
    print queue and the sync state in turn: a sale committed or a push settled between
    two of them made one document count a transaction twice or not at all (the outbox
    and the hub's mark for the device overlapping), review 36 (spec36e)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # nothing was written: the read ends


# `sync_state` 'pull_landing': the snapshot a pull is applying and when it began to
# (`{"version": V, "at": T}`), written by the sync client just before the apply.
PULL_LANDING = "pull_landing"


def last_pull_at(conn: sqlite3.Connection, cache_version: int) -> str:
    """The last sync's time for `status` (UTC text, "" before the first): the pull's own
    record ('last_pull_at', written once it ended), or, while a pull that already put its
    snapshot in the cache (`cache_version` at or above the one it applies) has not
    recorded its end yet, when it began to apply it. Read in one statement, so a pull
    that ends between two reads is seen either way. Until review 36 (spec36e) a status
    read in that moment showed the new version beside the sync before (or none at all, at
    the first pull): one read in eight while a pull landed."""
    rows = dict(
        conn.execute(
            "SELECT key, value FROM sync_state WHERE key IN ('last_pull_at', ?)",
            (PULL_LANDING,),
        ).fetchall()
    )
    recorded = str(rows.get("last_pull_at") or "")
    try:
        landing = json.loads(str(rows[PULL_LANDING]))
        version, at = int(landing["version"]), str(landing["at"])
    except (KeyError, ValueError, TypeError):
        return recorded
    return max(recorded, at) if cache_version >= version else recorded


def ledger_path(data_dir: Path) -> Path:
    return Path(data_dir) / LEDGER


def migrate_ledger(conn: sqlite3.Connection) -> None:
    """Bring a connection's ledger to the current schema (both migration sets)."""
    migrate(conn, ledger_migrations)
    migrate(conn, sync_migrations)


def open_ledger(data_dir: Path) -> sqlite3.Connection:
    """The one way to open a till's ledger: `db.connect` settings (autocommit, WAL,
    synchronous=FULL, busy timeout), migrated. StorageError when it cannot be opened;
    DamagedLedger, with what to do, when SQLite finds it damaged (it said "cannot open
    …/ledger.db: file is not a database", no word of what the file holds)."""
    path = ledger_path(data_dir)
    try:
        conn = connect(path)
    except StorageError as exc:
        if is_damage(exc.message):
            raise damaged_ledger(path, exc.message) from None
        raise
    try:
        migrate_ledger(conn)
    except StorageError as exc:
        conn.close()
        if is_damage(exc.message):
            raise damaged_ledger(path, exc.message) from None
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def damaged_ledger(path: Path, what: str) -> DamagedLedger:
    return DamagedLedger(
        f"the ledger {path} is damaged ({what}); it holds this till's sales, not all of them"
        " at the hub yet: stop tillpoint, copy the data directory aside, and check it with"
        f" `sqlite3 {path} 'PRAGMA integrity_check'` (`.recover` saves what it can)"
    )


def require_writable(data_dir: Path) -> None:
    """Refuse to serve on a ledger this process cannot write (`tillpoint run` at start).

    SQLite opens a file it may not write read-only without a word: every sale was then
    refused with a 503 the POS retries for ever, and a fixed file mode needed a restart
    anyway (the connection stays read-only). A write that is rolled back tells."""
    path = ledger_path(data_dir)
    conn = open_ledger(data_dir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO device (key, value) VALUES ('write_check', '')")
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc):  # the file or its directory: an administrator's to mend
            raise InputError(
                f"cannot write {path}: it is read-only for this process{owner_hint(path)}"
            ) from None
        raise StorageError(f"cannot write {path}: {exc}{owner_hint(path)}") from None
    finally:
        conn.close()


@dataclass(frozen=True)
class Points:
    available: int
    pending: int
    # The next batches that expire (§16): (points, expiresAt as RFC 3339), soonest first.
    expiring: tuple[tuple[int, str], ...] = ()
    # The batches behind these figures when points expire (None: nothing expires), for a
    # receipt's balance after it (`after`), and what they were replayed from: the
    # snapshot's customer and the unsynced moves, in their order.
    wallet: Wallet | None = field(default=None, compare=False, repr=False)
    made_of: tuple[Customer, tuple[Movement, ...], Mapping[str, Counted]] | None = field(
        default=None, compare=False, repr=False
    )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"availablePoints": self.available, "pendingPoints": self.pending}
        if self.expiring:  # proto3 JSON leaves an empty list out
            out["expiring"] = [{"points": p, "expiresAt": e} for p, e in self.expiring]
        return out

    def after(self, program: Program, at: datetime, *moves: Movement) -> Points | None:
        """These points after `moves` (a receipt's spending and earning, at `at`); None
        when nothing expires (the caller adds the figures up). The receipt's moves take
        their place in the replay's order (`balance`: in time order, then as written):
        after everything at or before their time, refunds at that time included (they
        were written first), so a receipt dated before others the till holds (a hold
        confirmed after later sales), or a sale in the minute of a refund, answers what
        `balance` says next."""
        if self.wallet is None:
            return None
        wallet = self.wallet
        if self.made_of is not None and moves:
            customer, replayed, counted = self.made_of
            # Each move at its own time (another open hold's spending, dated before or
            # after this receipt's: its points leave the batches they will at its Confirm).
            again, later = list(replayed), False
            for move in moves:
                cut = sum(1 for m in again if m.at <= move.at)
                later = later or cut < len(again)
                again.insert(cut, move)
            made_of = (customer, tuple(again), counted)
            if later:  # some happened later: the whole replay again
                wallet = _wallet(customer, again, program, counted)
            else:
                for move in moves:
                    wallet.apply(move)
            return replace(_points(wallet, at, program), made_of=made_of)
        for move in moves:
            wallet.apply(move)
        return _points(wallet, at, program)


def balance(
    conn: sqlite3.Connection,
    customer: Customer,
    applied_through: Mapping[str, int],
    at: datetime,
    program: Program | None = None,
    *,
    moved: bool = True,
    sold: str | None = None,
) -> Points:
    """The customer's points at `at` (the contract §3, §5.6, §16).

    The snapshot's `balancePoints`, plus its `pending` entries due by `at`, plus this
    till's own point movements that the snapshot has not counted yet (seq above
    `appliedThrough` of the device that wrote them). Spending counts at once; earned
    points count from their activation time and are pending before. When points expire
    (`program.pointsLifetimeDays`, a customer's `expiring`, an earned batch with an
    expiry), they are counted batch by batch instead (`expiry.Wallet`). `sold`: a committed
    receipt priced again for its trace, its own point rows (its sale's, its refunds')
    left out, as before it was sold.
    """
    lifetime = program.points_lifetime_days if program is not None else 0
    # `moved=False`: the caller read that this till holds no point rows of the customer
    # (`quote_reads`, in the same read transaction), so there is no device to look up.
    found = _point_devices(conn, customer.id) if moved else []
    devices = [(d, applied_through.get(d, 0)) for d in found]
    if program is None or not (lifetime or customer.expiring):
        available, pending, replayed_rows = 0, 0, 0
        cutoff = utc_text(at)
        for device_id, seq in devices:
            a, p, e = _summed_moves(conn, customer.id, device_id, cutoff, seq, sold)
            available, pending, replayed_rows = available + a, pending + p, replayed_rows + e
        if program is None or not (
            replayed_rows or _moved_later(conn, customer.id, devices, at, sold)
        ):
            tally = Tally(at, customer.balance_points + available, pending)
            for entry in customer.pending:
                tally.add("earn", entry.points, entry.activates_at)
            return Points(tally.available, tally.pending)
    # Points expire (or a take-back the sums cannot place): the unsynced moves are
    # replayed batch by batch (in the order below).
    rows: list[Any] = []
    for device_id, seq in devices:
        rows += conn.execute(
            # A row of a refund has the sale's receipt_id and the refund's own seq; the
            # journal gives the transaction's time (a refund being written has none yet:
            # it is at `at`).
            "SELECT p.id, p.kind, p.points, p.activates_at, p.expires_at,"
            " p.receipt_id, r.seq IS NOT NULL AND r.seq <> p.seq, j.at FROM points p"
            " LEFT JOIN receipts r ON r.receipt_id = p.receipt_id"
            " LEFT JOIN journal j ON j.device_id = p.device_id AND j.seq = p.seq"
            " WHERE p.customer_id = ? AND p.device_id = ? AND p.seq > ?"
            " AND p.receipt_id IS NOT ?",
            (customer.id, device_id, seq, sold),
        ).fetchall()
    # In time order, then as written (a refund is always written after its sale): the
    # order the hub replays the same transactions in (`sync.hub_rules._wallet`), so which
    # batch a spend takes, and when the rest expires, is the same on both (in the order
    # written, a hold confirmed after later receipts spent other batches here than at the
    # hub). At one time it is the order the calls came in: an exchange (a refund, then a
    # sale in the same minute spending the points it gave back) was replayed "a sale
    # before a refund", and the new sale's own points paid a debt it never had.
    rows.sort(key=lambda row: (_moved_at(row[7], at), int(row[0])))
    assert program is not None
    moves = tuple(_movement(row, at) for row in rows)
    counted = _counted_sales(conn, customer.id, rows)
    points = _points(_wallet(customer, moves, program, counted), at, program)
    return replace(points, made_of=(customer, moves, counted))


def _moved_later(
    conn: sqlite3.Connection,
    customer_id: str,
    devices: Sequence[tuple[str, int]],
    at: datetime,
    sold: str | None,
) -> bool:
    """Whether a point movement the snapshot has not counted is dated after `at` (a
    balance asked for an earlier time, a receipt sent late). A spend (a take-back) dated
    so took the batches spendable at its own time, some of which may be pending at `at`:
    the points are then counted batch by batch (docs/CONTRACT.md §16: available at T is
    what is left of the batches at T), as when points expire, so that whether points
    expire changes no figure. The journal keeps each transaction's `at` as sent."""
    for device_id, seq in devices:
        for (tx_at,) in conn.execute(
            "SELECT DISTINCT j.at FROM points p JOIN journal j"
            " ON j.device_id = p.device_id AND j.seq = p.seq"
            " WHERE p.customer_id = ? AND p.device_id = ? AND p.seq > ?"
            " AND p.receipt_id IS NOT ?",
            (customer_id, device_id, seq, sold),
        ):
            if datetime.fromisoformat(tx_at) > at:
                return True
    return False


def _counted_sales(
    conn: sqlite3.Connection, customer_id: str, rows: Sequence[Any]
) -> dict[str, Counted]:
    """The sales the snapshot counted that the replayed refund rows give points back for:
    what each sale's spending took, batch by batch (its rows, each with the expiry of the
    batch it took: `Agent._commit`), and what refunds the snapshot counted gave back."""
    in_replay = {str(row[5]) for row in rows if not row[6]}
    giving = {str(row[5]) for row in rows if row[6] and row[1] == "spend" and row[2] > 0}
    replayed = {int(row[0]) for row in rows}
    counted: dict[str, Counted] = {}
    for receipt_id in sorted(giving - in_replay):
        parts: list[tuple[int, datetime | None]] = []
        given = 0
        for row_id, points, expires_at, own in conn.execute(
            "SELECT p.id, p.points, p.expires_at, r.seq = p.seq AND r.device_id = p.device_id"
            " FROM points p JOIN receipts r ON r.receipt_id = p.receipt_id"
            " WHERE p.customer_id = ? AND p.receipt_id = ? AND p.kind = 'spend' ORDER BY p.id",
            (customer_id, receipt_id),
        ):
            if own and points < 0:
                parts.append(
                    (-int(points), datetime.fromisoformat(expires_at) if expires_at else None)
                )
            elif not own and points > 0 and int(row_id) not in replayed:
                given += int(points)
        counted[receipt_id] = (parts, given)
    return counted


def _summed_moves(
    conn: sqlite3.Connection,
    customer_id: str,
    device_id: str,
    cutoff: str,
    seq: int,
    sold: str | None,
) -> tuple[int, int, int]:
    """A device's unsynced point rows of the customer (but receipt `sold`'s, `balance`):
    (available, pending, rows the sums cannot count), by the one rule of `expiry.Tally`:
    spending counts at once, earned points from their activation time (never without
    one). Summed by SQLite; when its 64-bit sum overflows (movements past int64 whose
    balance fits: a customer at the int64 floor earning), in Python, exactly. The rows
    the sums cannot count are replayed batch by batch (`balance`): rows that expire, and
    a refund's take-back of points still pending at `cutoff` (a negative earn), which
    comes off a pending entry of the snapshot only while it holds them, else off the
    batch a snapshot published after their activation lists them in (review 50)."""
    where = (
        " FROM points WHERE customer_id = ?1 AND device_id = ?2 AND seq > ?4"
        " AND receipt_id IS NOT ?5"
    )
    args = (customer_id, device_id, cutoff, seq, sold)
    try:
        a, p, e = conn.execute(
            "SELECT coalesce(sum(CASE WHEN kind = 'spend' OR activates_at <= ?3"
            " THEN points END), 0), coalesce(sum(CASE WHEN kind = 'spend'"
            " OR activates_at <= ?3 THEN NULL ELSE points END), 0), count(expires_at)"
            " + count(CASE WHEN kind = 'earn' AND points < 0 AND activates_at > ?3 THEN 1 END)"
            + where,
            args,
        ).fetchone()
        return int(a), int(p), int(e)
    except sqlite3.OperationalError as exc:
        if "integer overflow" not in str(exc):
            raise
    available = pending = replayed = 0
    for kind, points, activates_at, expires_at in conn.execute(
        "SELECT kind, points, activates_at, expires_at" + where, args
    ):
        if kind == "spend" or (activates_at is not None and activates_at <= cutoff):
            available += points
        else:
            pending += points
            replayed += kind == "earn" and points < 0 and activates_at is not None
        replayed += expires_at is not None
    return available, pending, replayed


def _moved_at(tx_at: str | None, at: datetime) -> datetime:
    """A point row's transaction time (its journal's `at`; a refund being written has
    none yet: it is at `at`)."""
    return datetime.fromisoformat(tx_at) if tx_at else at


def _point_devices(conn: sqlite3.Connection, customer_id: str) -> list[str]:
    """The devices that wrote point rows of the customer (this till's id, and its former
    ids after a reset): one index seek each, so a balance reads only the rows the
    snapshot has not counted, never the customer's whole history on this till."""
    devices: list[str] = []
    while True:
        row = conn.execute(
            "SELECT device_id FROM points WHERE customer_id = ? AND device_id > ?"
            " ORDER BY device_id LIMIT 1",
            (customer_id, devices[-1] if devices else ""),
        ).fetchone()
        if row is None:
            return devices
        devices.append(str(row[0]))


def _movement(row: Sequence[Any], at: datetime) -> Movement:
    _, kind, points, activates_at, expires_at, receipt_id, by_refund, tx_at = row
    return Movement(
        kind,
        int(points),
        str(receipt_id),
        _moved_at(tx_at, at),
        bool(by_refund),
        datetime.fromisoformat(activates_at) if activates_at else None,
        datetime.fromisoformat(expires_at) if expires_at else None,
    )


def _wallet(
    customer: Customer,
    moves: Sequence[Movement],
    program: Program,
    counted: Mapping[str, Counted] | None = None,
) -> Wallet:
    return wallet_of(
        customer.balance_points,
        [(e.points, e.expires_at) for e in customer.expiring],
        [(e.points, e.activates_at) for e in customer.pending],
        moves,
        program.points_lifetime_days,
        program.zone,
        counted,
    )


def _points(wallet: Wallet, at: datetime, program: Program) -> Points:
    available, pending = wallet.points_at(at)
    expiring = tuple(
        (points, _local_text(moment, program.zone)) for points, moment in wallet.expiring_at(at)
    )
    return Points(available, pending, expiring, wallet)


def _local_text(moment: datetime, zone: ZoneInfo) -> str:
    """`moment` in the store's zone (docs/CONTRACT.md §16); a moment with no local time there
    (an ERP's "never", `9999-12-31T23:59:59Z`, is in the year 10000 in Moscow) as written."""
    try:
        return moment.astimezone(zone).isoformat()
    except OverflowError:
        return moment.isoformat()


def other_device(conn: sqlite3.Connection, device_id: str) -> str | None:
    """The device whose sales this ledger journals when it journals none of `device_id`'s
    (None: it holds some of them, or no sale at all). A ledger is one till's: its outbox
    is pushed, and its seqs taken, for one device id. A ledger an earlier release let two
    ids write opens under either (each can push its own rows and `reset` once sent)."""
    row = conn.execute(  # two seeks of the key (a year's journal is 300,000 rows)
        "SELECT device_id FROM journal WHERE (device_id < ?1 OR device_id > ?1)"
        " AND NOT EXISTS (SELECT 1 FROM journal WHERE device_id = ?1) LIMIT 1",
        (device_id,),
    ).fetchone()
    return None if row is None else str(row[0])


def last_seq(conn: sqlite3.Connection, device_id: str) -> int:
    """The last sequence number the device used: its newest journal entry, or the number
    a reset kept (the ``device`` row), whichever is higher."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM device WHERE key = ?1), 0),"
        " coalesce((SELECT max(seq) FROM journal WHERE device_id = ?2), 0))",
        (f"last_seq:{device_id}", device_id),
    ).fetchone()
    return int(row[0])


def keep_seq_above(conn: sqlite3.Connection, device_id: str, seq: int) -> None:
    """Raise the numbers the device rows keep to `seq` (never lower them): the next seq,
    and the next till-issued coupon number (each code travels in a transaction whose seq
    is at least its number, `take_coupon_number`), are above it. Inside the caller's
    write transaction."""
    for key in (f"last_seq:{device_id}", f"last_coupon:{device_id}"):
        row = conn.execute("SELECT value FROM device WHERE key = ?", (key,)).fetchone()
        if seq > (int(row[0]) if row else 0):
            conn.execute("INSERT OR REPLACE INTO device VALUES (?, ?)", (key, str(seq)))


def take_seq(conn: sqlite3.Connection, device_id: str, applied_through: int) -> int:
    """The next sequence number: above the last one used and above what the hub has counted.

    Called inside the commit's transaction, whose journal entry then holds it, so a
    rolled-back commit gives its number back and a committed one never repeats (a
    re-imaged till continues above appliedThrough). Nothing is written for the count
    itself: the journal is it (a reset keeps its last number in the ``device`` row).
    """
    return max(last_seq(conn, device_id), applied_through) + 1


def offline_redeemed(
    conn: sqlite3.Connection,
    card: str,
    local_day: str,
    now: datetime | None = None,
    but: str | None = None,
    sold: str | None = None,
) -> int:
    """Points this till let the card spend offline on this store-day: committed receipts
    (but `sold`, a committed receipt priced again for its trace), and, given `now`, the
    offline holds still open then (the contract §11: a hold reserves) but receipt `but`'s
    own (priced again, it must not count against itself)."""
    row = conn.execute(
        "SELECT coalesce(sum(redeemed_points), 0) FROM receipts"
        " WHERE card = ? AND local_day = ? AND mode = 'OFFLINE' AND receipt_id IS NOT ?",
        (card, local_day, sold),
    ).fetchone()
    used = int(row[0])
    if now is not None:
        used += int(
            conn.execute(
                "SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
                " WHERE card = ? AND local_day = ? AND state = 'HELD' AND mode = 'OFFLINE'"
                " AND expires_at > ? AND receipt_id IS NOT ?",
                (card, local_day, utc_text(now), but),
            ).fetchone()[0]
        )
    return used


# The parts of `quote_reads` and `pricing_marks` (parameters ?1 customer, ?2 now, ?3 the
# receipt left out, ?4 card, ?5 store-day, ?6 a committed receipt priced again for its
# trace, whose own use is left out too): what the customer's other open holds reserve,
# and the card's offline redemption that day, committed and held.
_HELD_BY_OTHERS = (
    "(SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
    " WHERE state = 'HELD' AND expires_at > ?2 AND receipt_id IS NOT ?3"
    " AND json_extract(figures, '$.customerId') = ?1)"
)
_OFFLINE_USE = (
    "(SELECT coalesce(sum(redeemed_points), 0) FROM receipts"
    " WHERE card = ?4 AND local_day = ?5 AND mode = 'OFFLINE' AND receipt_id IS NOT ?6),"
    " (SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
    " WHERE card = ?4 AND local_day = ?5 AND state = 'HELD' AND mode = 'OFFLINE'"
    " AND expires_at > ?2 AND receipt_id IS NOT ?3)"  # its own hold: not another's use
)


class QuoteReads(NamedTuple):
    """What pricing a known card's receipt reads from the ledger, in one statement."""

    moved: bool  # this till holds point rows of the customer (`balance` reads them)
    held: int  # `held_points`: what the customer's other open holds reserve
    offline: int  # `offline_redeemed` with `now`: the card's offline redemption that day


def quote_reads(
    conn: sqlite3.Connection,
    customer_id: str,
    card: str,
    local_day: str | None,
    now: datetime,
    but: str | None,
    sold: str | None = None,
) -> QuoteReads:
    """`held_points(conn, customer_id, now, but)`, `offline_redeemed(conn, card, local_day,
    now)` (0 without a `local_day`: not asked) and whether `balance` has point rows to
    read, in one statement instead of four (the statements of `pricing_marks`). `sold`: a
    committed receipt priced again for its trace, its own offline use left out."""
    now_text = utc_text(now)
    if local_day is None:
        moved, held = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM points WHERE customer_id = ?1), {_HELD_BY_OTHERS}",
            (customer_id, now_text, but),
        ).fetchone()
        return QuoteReads(bool(moved), int(held), 0)
    moved, held, spent, open_ = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM points WHERE customer_id = ?1),"
        f" {_HELD_BY_OTHERS}, {_OFFLINE_USE}",
        (customer_id, now_text, but, card, local_day, sold),
    ).fetchone()
    return QuoteReads(bool(moved), int(held), int(spent) + int(open_))


def held_spends(
    conn: sqlite3.Connection, customer_id: str, now: datetime, but: str | None = None
) -> list[Movement]:
    """The spending of this till's open holds of the customer (but receipt `but`), each at
    its receipt's `at`, in time order: where it takes its points from (§16) when they expire."""
    rows = conn.execute(
        "SELECT redeemed_points, json_extract(figures, '$.at') FROM receipt_life"
        " WHERE state = 'HELD' AND expires_at > ? AND receipt_id IS NOT ?"
        " AND json_extract(figures, '$.customerId') = ? AND redeemed_points > 0"
        " ORDER BY rowid",
        (utc_text(now), but, customer_id),
    ).fetchall()
    moves = [Movement("spend", -int(p), "", datetime.fromisoformat(str(t)), False) for p, t in rows]
    return sorted(moves, key=lambda m: m.at)


def held_points(
    conn: sqlite3.Connection, customer_id: str, now: datetime, but: str | None = None
) -> int:
    """Points reserved by this till's open holds of the customer (but receipt `but`)."""
    row = conn.execute(
        "SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
        " WHERE state = 'HELD' AND expires_at > ? AND receipt_id IS NOT ?"
        " AND json_extract(figures, '$.customerId') = ?",
        (utc_text(now), but, customer_id),
    ).fetchone()
    return int(row[0])


def pricing_marks(
    conn: sqlite3.Connection,
    customer_id: str | None,
    card: str,
    local_day: str,
    codes: Sequence[str],
    now: datetime,
    but: str,
) -> tuple[Any, ...]:
    """In brief, what pricing a receipt (`but`) reads from the ledger: the customer's point
    movements (the newest row: rows are only added, by commits and refunds, and ids are
    never reused), the points the customer's other open holds reserve, the card's offline
    redemption on the store-day (commits and holds), and for each scanned code whether this
    till issued it and whether it is used. Equal marks read twice: the pricing read the same inputs
    (a commit priced before its transaction checks this inside it, cheaply)."""
    now_text = utc_text(now)
    marks: tuple[Any, ...] = ()
    if customer_id is not None:
        marks = tuple(
            conn.execute(
                "SELECT (SELECT max(id) FROM points WHERE customer_id = ?1),"
                f" {_HELD_BY_OTHERS}, {_OFFLINE_USE}",
                (customer_id, now_text, but, card, local_day, None),
            ).fetchone()
        )
    for code in codes:
        issued = conn.execute("SELECT 1 FROM issued_coupons WHERE code = ?", (code,)).fetchone()
        marks += (code, issued is not None, coupon_used(conn, code, now, but))
    return marks


def printed_within(
    conn: sqlite3.Connection,
    customer_id: str,
    at: datetime,
    cooldown_days: int,
    zone: ZoneInfo | None,
) -> set[str]:
    """Offers whose print cooldown (the contract §7) still runs at `at`: printed to the
    customer at P with `at` before P + `cooldown_days` store days (the same local clock
    time, a skipped or repeated one read as §5 step 6 and §16 read it: `days_later`), so
    an offer printed exactly that long ago may print again. A print dated after `at` (a
    sale sent late, a hold confirmed after a later sale) counts too.

    Counted on from each print, not back from `at`: the two differ on a clock change
    (until review 40 a print at 02:30 on 22 March in Berlin printed again from 03:00 on
    the 29th, not 03:30, and one in the second 02:30 of 25 October only from 03:00 on
    1 November). Rows older than the cooldown by more than two days (any clock change's
    reach) are not read."""
    try:
        oldest = utc_text(at - timedelta(days=cooldown_days + 2))
    except OverflowError:
        oldest = ""
    out: set[str] = set()
    for offer_id, printed_at in conn.execute(
        "SELECT offer_id, printed_at FROM print_history WHERE customer_id = ? AND printed_at > ?",
        (customer_id, oldest),
    ):
        if at < _cooldown_end(datetime.fromisoformat(str(printed_at)), cooldown_days, zone):
            out.add(str(offer_id))
    return out


def _cooldown_end(printed: datetime, days: int, zone: ZoneInfo | None) -> datetime:
    """`days` store days after a print; past the calendar's end, the latest time there is."""
    try:
        if zone is not None:
            with contextlib.suppress(OverflowError):
                return days_later(printed, days, zone)
        return printed + timedelta(days=days)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def take_coupon_number(conn: sqlite3.Connection, device_id: str, applied_through: int = 0) -> int:
    """The next number of a coupon this till issues: never reused, like `seq`.

    It is above what the hub counted of the till (`appliedThrough`) as well as above its
    own last number: each code went to the hub in a transaction whose seq is at least its
    number, so none the hub has seen is made again, whether the till is new, re-imaged
    with its ledger lost, or put back from a backup older than its last codes.
    """
    key = f"last_coupon:{device_id}"
    row = conn.execute("SELECT value FROM device WHERE key = ?", (key,)).fetchone()
    number = max(int(row[0]) if row else 0, applied_through) + 1
    conn.execute("INSERT OR REPLACE INTO device VALUES (?, ?)", (key, str(number)))
    return number


def insert_issued_coupon(
    conn: sqlite3.Connection, code: str, receipt_id: str, doc: str, created_at: str, seq: int
) -> None:
    """A till-issued one-time code (the contract §13): its snapshot-form JSON `doc`, and
    the seq of the transaction that sends it to the hub."""
    conn.execute(
        "INSERT INTO issued_coupons (code, receipt_id, doc, created_at, seq) VALUES (?,?,?,?,?)",
        (code, receipt_id, doc, created_at, seq),
    )


def issued_coupon(conn: sqlite3.Connection, code: str, counted_through: int) -> Coupon | None:
    """A coupon this till issued, usable here at once, before any snapshot carries it; not
    once the hub has counted its transaction (`counted_through`, this till's
    appliedThrough): from then on the snapshot's coupons say whether it exists (a code the
    hub removed, used on another till or voided, is gone here too)."""
    row = conn.execute(
        "SELECT doc FROM issued_coupons WHERE code = ? AND (seq IS NULL OR seq > ?)",
        (code, counted_through),
    ).fetchone()
    return None if row is None else Coupon.model_validate_json(row[0])


def coupon_used(
    conn: sqlite3.Connection,
    code: str,
    now: datetime | None = None,
    but: str | None = None,
    sold: str | None = None,
) -> bool:
    """Whether a commit on this till used the coupon code (the contract §13), or an open
    hold reserves it; given `now`, a hold expired by then (not yet swept) reserves nothing,
    nor does the open hold of receipt `but` (the receipt being priced: a quote of a held
    receipt is priced with its own hold left out, as its points are), nor the commit of
    receipt `sold` (a committed receipt priced again for its trace: its own use of a code
    did not make the code used for itself)."""
    args: tuple[str | None, ...] = (code,)
    if now is None:
        sql = "SELECT 1 FROM coupon_uses WHERE code = ?"
    else:
        sql = (
            "SELECT 1 FROM coupon_uses u LEFT JOIN receipt_life l ON l.receipt_id = u.receipt_id"
            " WHERE u.code = ? AND NOT (coalesce(l.state, '') = 'HELD'"
            " AND (l.expires_at <= ? OR u.receipt_id IS ?)) AND u.receipt_id IS NOT ?"
        )
        args = (code, utc_text(now), but, sold)
    return conn.execute(sql, args).fetchone() is not None


def outbox_depth(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


KEPT_BY_RESET = frozenset({"device", "sqlite_sequence", "_sqlite_migrations", "sync_discarded"})


def open_hub_holds(conn: sqlite3.Connection) -> list[str]:
    """The receipts for which the hub may hold points or coupon codes: the open holds, the
    cancelled or expired ones whose release has not reached it yet, and those asked for
    that the till never stored."""
    closed = [
        str(rid)
        for (rid,) in conn.execute(
            "SELECT receipt_id FROM receipt_life WHERE hub_hold != 0"
            " AND state IN ('HELD', 'CANCELLED', 'EXPIRED')"
        )
    ]
    return closed + [rid for rid, _, _ in unstored_hub_asks(conn)]


def grants_may_land(
    conn: sqlite3.Connection, held_since: str, asked_since: str
) -> list[tuple[str, str]]:
    """(receiptId, time) of the receipts whose grant may still reach the hub's store after
    a release sent now, oldest first (`tillpoint reset`, which keeps their releases owed:
    review 46, reset46): a hold priced OFFLINE after asking the hub, placed after
    `held_since` (`Agent._grant_may_come`; the time: the hold's), open or closed with its
    release owed; and an ask of a receipt not committed made after `asked_since` (the time:
    the ask's last request, as `Agent._release_unstored` counts it)."""
    late: dict[str, str] = {}
    for rid, held_at in conn.execute(
        "SELECT receipt_id, held_at FROM receipt_life WHERE hub_hold != 0"
        " AND state IN ('HELD', 'CANCELLED', 'EXPIRED') AND mode = 'OFFLINE' AND held_at > ?",
        (held_since,),
    ):
        late[str(rid)] = str(held_at)
    for rid, asked_at in conn.execute(
        "SELECT a.receipt_id, a.asked_at FROM hub_asks AS a WHERE a.asked_at > ?"
        " AND NOT EXISTS (SELECT 1 FROM receipts AS r WHERE r.receipt_id = a.receipt_id)"
        " AND NOT EXISTS (SELECT 1 FROM receipt_life AS l"
        " WHERE l.receipt_id = a.receipt_id AND l.state = 'CONFIRMED')",
        (asked_since,),
    ):
        late[str(rid)] = max(late.get(str(rid), ""), str(asked_at))
    return sorted(late.items(), key=lambda item: (item[1], item[0]))


def keep_owed_releases(conn: sqlite3.Connection, late: Sequence[tuple[str, str]]) -> None:
    """Inside `tillpoint reset`'s write transaction, after `forget_all_but_numbering`: the
    receipts of `grants_may_land`, noted again as asks to the hub (`hub_asks`, no process:
    the reset's ends with it). The ledger has no other row of them now, so each is an
    unstored ask, whose release `Agent._release_unstored` sends at every round (`tillpoint
    run`'s hold timer, `sync now`, a one-shot's `send_owed`) while its grant may land, and
    once after; a receipt stored again under that receiptId forgets it with its commit."""
    conn.executemany(
        "INSERT OR REPLACE INTO hub_asks (receipt_id, asked_at, pid) VALUES (?, ?, NULL)",
        list(late),
    )


def outbox_seqs(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """Every (device, seq) still in the outbox."""
    return [
        (str(d), int(s))
        for d, s in conn.execute("SELECT device_id, seq FROM outbox ORDER BY device_id, seq")
    ]


def queue_discarded(conn: sqlite3.Connection, seqs: Sequence[tuple[str, int]], now: str) -> None:
    """Inside the caller's write transaction (`tillpoint reset --force`): the seqs
    discarded unsent, to be told to the hub as DISCARDED transactions (`discarded_batch`):
    it sets them aside, nothing counted, and the device's progress goes on past them.
    Without it the hub waited for them for good, and counted none of the device's later
    sales in any snapshot. Kept by a later reset (`KEPT_BY_RESET`); not in the outbox,
    whose depth and reset's refusal are about sales."""
    conn.executemany(
        "INSERT OR IGNORE INTO sync_discarded (device_id, seq, at) VALUES (?,?,?)",
        [(device_id, seq, now) for device_id, seq in seqs],
    )


def discarded_pending(conn: sqlite3.Connection, device_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM sync_discarded WHERE device_id = ?", (device_id,)
    ).fetchone()
    return int(row[0])


def _discarded_payload(device_id: str, seq: int, at: str) -> str:
    """The DISCARDED transaction that tells the hub of seq `seq` discarded unsent."""
    return json.dumps(
        {
            "deviceId": device_id,
            "seq": seq,
            "kind": DISCARDED,
            "at": at,
            "requestJson": "{}",
            "resultJson": "{}",
        }
    )


def discarded_batch(conn: sqlite3.Connection, device_id: str, limit: int) -> list[OutboxRow]:
    """The oldest `limit` DISCARDED transactions still to tell the hub, as outbox rows."""
    return [
        OutboxRow(int(seq), _discarded_payload(device_id, int(seq), str(at)))
        for seq, at in conn.execute(
            "SELECT seq, at FROM sync_discarded WHERE device_id = ? ORDER BY seq LIMIT ?",
            (device_id, limit),
        )
    ]


DISCARDED = "DISCARDED"  # the Transaction kind of a seq discarded unsent


def forget_all_but_numbering(conn: sqlite3.Connection) -> None:
    """`tillpoint reset` inside the caller's write transaction: empty every table of the
    ledger except the device's numbering (and the schema's own bookkeeping), and the
    coupon uses of committed receipts: a code used here stays used here (it is history,
    and the hub may not have counted it yet); only open holds' reservations go.

    Before that, each device's last seq is raised to the highest one in its journal, so
    a number is never reused even if the `device` row was behind.
    """
    for device_id, seq in conn.execute(
        "SELECT device_id, max(seq) FROM journal GROUP BY 1"
    ).fetchall():
        keep_seq_above(conn, str(device_id), int(seq))
    conn.execute(
        "DELETE FROM coupon_uses WHERE receipt_id IN"
        " (SELECT receipt_id FROM receipt_life WHERE state = 'HELD')"
    )
    tables = [
        str(name)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if str(name) not in KEPT_BY_RESET | {"coupon_uses"}
    ]
    for name in tables:
        conn.execute(f'DELETE FROM "{name}"')


# ---------------------------------------------------------------- writes of a commit


@dataclass(frozen=True)
class ReceiptRow:
    """A committed receipt (table ``receipts``); times are the texts stored."""

    receipt_id: str
    device_id: str
    seq: int
    at: str
    local_day: str
    card: str
    customer_id: str | None
    mode: str
    redeemed_points: int
    extra_points: int
    request: str
    result: str
    created_at: str
    activates_at: str | None
    # in order: (sku, qty as decimal text, redeemed points, earned points)
    lines: Sequence[tuple[str, str, int, int]] = ()


def insert_receipt(conn: sqlite3.Connection, row: ReceiptRow) -> None:
    """The receipt's row, its lines in it (`receipt_lines` reads them back)."""
    conn.execute(
        "INSERT INTO receipts (receipt_id, device_id, seq, at, local_day, card,"
        " customer_id, mode, redeemed_points, extra_points, request, result, created_at,"
        " activates_at, lines) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            row.receipt_id,
            row.device_id,
            row.seq,
            row.at,
            row.local_day,
            row.card,
            row.customer_id,
            row.mode,
            row.redeemed_points,
            row.extra_points,
            row.request,
            row.result,
            row.created_at,
            row.activates_at,
            json.dumps(row.lines, ensure_ascii=False, separators=(",", ":")),
        ),
    )


@dataclass(frozen=True)
class JournalRow:
    """One committed transaction (table ``journal``), forever; (device_id, seq) is unique."""

    device_id: str
    seq: int
    kind: str
    ref_id: str
    at: str
    customer_id: str | None
    card: str
    created_at: str


# Where an outbox row's request and result texts are kept (column ``outbox.texts``): the
# row of `receipts` or `refunds` its journal entry names; None: in its payload.
TEXTS_IN = {"receipt", "refund"}


def insert_journal(
    conn: sqlite3.Connection,
    row: JournalRow,
    payload: Mapping[str, Any],
    request: str,
    result: str,
    texts: str | None = None,
) -> None:
    """The journal entry and its outbox row (the Transaction the hub gets), together.

    `payload` is the Transaction without its requestJson and resultJson (`request`,
    `result`). With `texts` ('receipt' or 'refund') they are the texts of the row of
    `receipts` or `refunds` named by `row.ref_id`, written in the same transaction, and
    are not stored again: `outbox_batch` reads them from there. Without, they go into the
    payload."""
    conn.execute(
        "INSERT INTO journal VALUES (?,?,?,?,?,?,?,?)",
        (
            row.device_id,
            row.seq,
            row.kind,
            row.ref_id,
            row.at,
            row.customer_id,
            row.card,
            row.created_at,
        ),
    )
    if texts is None:
        payload = {**payload, "requestJson": request, "resultJson": result}
    elif texts not in TEXTS_IN:
        raise ValueError(f"texts: one of {sorted(TEXTS_IN)} or None (got {texts!r})")
    conn.execute(
        "INSERT INTO outbox (device_id, seq, payload, created_at, texts) VALUES (?,?,?,?,?)",
        (row.device_id, row.seq, json.dumps(payload, ensure_ascii=False), row.created_at, texts),
    )


# ---------------------------------------------------------------- the outbox (sync push)


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    payload: str


def outbox_pending(conn: sqlite3.Connection, device_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM outbox WHERE device_id = ?", (device_id,)).fetchone()
    return int(row[0])


def outbox_batch(conn: sqlite3.Connection, device_id: str, limit: int) -> list[OutboxRow]:
    """The oldest `limit` rows of the device's outbox, in seq order but for a refund of a
    sale numbered again (`_sales_first`), each payload whole: the request and result
    texts kept in the receipt's or refund's row are put back (`insert_journal`)."""
    return _sales_first(conn, device_id, _outbox_rows(conn, device_id, 0, limit))


def _outbox_rows(
    conn: sqlite3.Connection, device_id: str, since: int, limit: int
) -> list[OutboxRow]:
    """The first `limit` rows of the device's outbox from seq `since` on, in seq order."""
    rows: list[OutboxRow] = []
    for seq, payload, texts, request, result in conn.execute(
        "SELECT o.seq, o.payload, o.texts, coalesce(r.request, f.request),"
        " coalesce(r.result, f.result) FROM outbox o"
        " LEFT JOIN journal j ON o.texts IS NOT NULL AND j.device_id = o.device_id"
        " AND j.seq = o.seq"
        " LEFT JOIN receipts r ON o.texts = 'receipt' AND r.receipt_id = j.ref_id"
        " LEFT JOIN refunds f ON o.texts = 'refund' AND f.refund_id = j.ref_id"
        " WHERE o.device_id = ? AND o.seq >= ? ORDER BY o.seq LIMIT ?",
        (device_id, since, limit),
    ):
        text = str(payload)
        if texts is not None:
            if request is None or result is None:  # written in one transaction with it
                raise StorageError(
                    f"outbox row {device_id}/{seq}: its {texts} row is missing from the ledger"
                )
            text = _with_texts(text, str(request), str(result))
        rows.append(OutboxRow(int(seq), text))
    return rows


def _sales_first(
    conn: sqlite3.Connection, device_id: str, rows: list[OutboxRow]
) -> list[OutboxRow]:
    """`rows` with every refund whose sale is still in the outbox under a higher seq (the
    sale numbered again, `renumber`, while the refund waited) put right after its sale;
    one whose sale is not among `rows` waits for a later batch, and a batch left with
    nothing but such refunds is the sale of the first (the contract §9: the hub stored a
    refund without its sale, whose points it gave back into no batch, §16, and a snapshot
    published then told the till a wrong expiry, until the sale came; review 33)."""
    if not rows:
        return rows
    marks = ",".join("?" * len(rows))
    later = dict(
        conn.execute(
            "SELECT j.seq, s.seq FROM journal j JOIN refunds f ON f.refund_id = j.ref_id"
            " JOIN receipts s ON s.receipt_id = f.receipt_id"
            " JOIN outbox x ON x.device_id = j.device_id AND x.seq = s.seq"
            f" WHERE j.device_id = ? AND j.kind = 'REFUND' AND j.seq IN ({marks})"
            " AND s.seq > j.seq",
            (device_id, *(row.seq for row in rows)),
        ).fetchall()
    )
    if not later:
        return rows
    waiting: dict[int, list[OutboxRow]] = defaultdict(list)
    for row in rows:
        if row.seq in later:
            waiting[int(later[row.seq])].append(row)
    ordered: list[OutboxRow] = []
    for row in rows:
        if row.seq not in later:
            ordered.append(row)
            ordered.extend(waiting.pop(row.seq, ()))
    if not ordered:  # the sale of the first, alone (its refund comes in the next one)
        ordered = _outbox_rows(conn, device_id, min(later.values()), 1)
    return ordered


def _with_texts(payload: str, request: str, result: str) -> str:
    """The JSON object text `payload` with "requestJson" and "resultJson" appended, as
    `json.dumps` of the dict with them would write it."""
    dumps = json.dumps
    return (
        f"{payload[:-1]}, "
        f'"requestJson": {dumps(request, ensure_ascii=False)}, '
        f'"resultJson": {dumps(result, ensure_ascii=False)}}}'
    )


def count_push_attempt(conn: sqlite3.Connection, device_id: str, seqs: Sequence[int]) -> None:
    marks = ",".join("?" * len(seqs))
    conn.execute(
        f"UPDATE outbox SET attempts = attempts + 1 WHERE device_id = ? AND seq IN ({marks})",
        (device_id, *seqs),
    )


def earn_activation(conn: sqlite3.Connection, device_id: str, seq: int) -> str | None:
    """When the points earned by transaction `seq` activate (None: nothing pending)."""
    row = conn.execute(
        "SELECT activates_at FROM points WHERE device_id = ? AND seq = ?"
        " AND kind = 'earn' AND activates_at IS NOT NULL LIMIT 1",
        (device_id, seq),
    ).fetchone()
    return None if row is None else str(row[0])


NEVER = "never"  # `Transaction.earned_expires_at` of a batch that never expires


def earned_expiry(
    conn: sqlite3.Connection, device_id: str, seq: int, customer_id: str
) -> str | None:
    """When the batch sale `seq` earned expires, as its commit fixed it (§16): UTC text,
    or `NEVER` (no lifetime then, or a row written before expiry existed); None when the
    sale earned nothing here (an UNKNOWN card's points are the hub's to settle)."""
    row = conn.execute(
        "SELECT expires_at FROM points WHERE customer_id = ? AND device_id = ? AND seq = ?"
        " AND kind = 'earn' AND points > 0 LIMIT 1",
        (customer_id, device_id, seq),
    ).fetchone()
    if row is None:
        return None
    return NEVER if row[0] is None else str(row[0])


@dataclass(frozen=True)
class SetAside:
    """A transaction the hub answered CONFLICT or REJECTED (table ``sync_set_aside``)."""

    seq: int
    outcome: str
    reason: str


def _with_seq(text: str, old: int, new: int) -> str:
    """A stored result (or a payload) with its "seq" `new`: the key the commit appends
    last (`service._with_seq`) replaced as it is, else the document written again."""
    tail = f',"seq":{old}}}'
    if text.endswith(tail):
        return f'{text[: -len(tail)]},"seq":{new}}}'
    doc = json.loads(text)
    if not isinstance(doc, dict):
        return text
    doc["seq"] = new
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def renumber(conn: sqlite3.Connection, device_id: str, old: int, hub_mark: int) -> int | None:
    """Inside the caller's write transaction: the sale or refund journalled as `old`, whose
    seq the hub holds with another transaction of this device (two tills under one device
    id, a wiped or restored ledger: `TransactionResult.seq_taken`), takes the next seq
    above everything this ledger and the hub have numbered, in every row that names it
    (journal, receipt or refund, its points, its outbox row), and stays in the outbox to
    be sent again. Returns the new seq; None when `old` is not such a row (left as it is).
    The hub's dedupe on the receipt or refund id decides it then: stored once, or set
    aside if the hub holds that id already (docs/CONTRACT.md §9)."""
    row = conn.execute(
        "SELECT kind, ref_id, customer_id FROM journal WHERE device_id = ? AND seq = ?",
        (device_id, old),
    ).fetchone()
    box = conn.execute(
        "SELECT payload FROM outbox WHERE device_id = ? AND seq = ?", (device_id, old)
    ).fetchone()
    if row is None or box is None or row[0] not in ("CHECKOUT", "REFUND"):
        return None
    kind, ref_id, customer_id = str(row[0]), str(row[1]), row[2]
    new = take_seq(conn, device_id, hub_mark)
    conn.execute(
        "UPDATE journal SET seq = ? WHERE device_id = ? AND seq = ?", (new, device_id, old)
    )
    table, key = ("receipts", "receipt_id") if kind == "CHECKOUT" else ("refunds", "refund_id")
    found = conn.execute(
        f"SELECT result FROM {table} WHERE {key} = ? AND device_id = ? AND seq = ?",
        (ref_id, device_id, old),
    ).fetchone()
    if found is not None:
        conn.execute(
            f"UPDATE {table} SET seq = ?, result = ? WHERE {key} = ?",
            (new, _with_seq(str(found[0]), old, new), ref_id),
        )
    # Its point rows name the customer of the sale: a refund's journal row names the
    # customer only if the snapshot still had them when it was made; left under the old
    # seq, a snapshot that counted the device past it (the other transaction holding it)
    # passed for having counted the refund, and the customer's balance left it out
    # until the hub published past the new seq (review 34)
    owners = {customer_id} if customer_id is not None else set()
    if kind == "REFUND":
        sale = conn.execute(
            "SELECT r.customer_id FROM refunds f JOIN receipts r ON r.receipt_id = f.receipt_id"
            " WHERE f.refund_id = ?",
            (ref_id,),
        ).fetchone()
        if sale is not None and sale[0] is not None:
            owners.add(str(sale[0]))
    for owner in sorted(owners):
        conn.execute(
            "UPDATE points SET seq = ? WHERE customer_id = ? AND device_id = ? AND seq = ?",
            (new, owner, device_id, old),
        )
    payload = json.loads(str(box[0]))
    payload["seq"] = new
    if isinstance(payload.get("resultJson"), str):
        payload["resultJson"] = _with_seq(payload["resultJson"], old, new)
    conn.execute(
        "UPDATE outbox SET seq = ?, payload = ?, attempts = 0 WHERE device_id = ? AND seq = ?",
        (new, json.dumps(payload, ensure_ascii=False), device_id, old),
    )
    return new


def _count_renumbered(
    conn: sqlite3.Connection, device_id: str, moved: Mapping[int, int], now: str
) -> None:
    """Inside `settle_push`'s transaction: `sync_state` keeps how many sales and refunds
    were numbered again since the ledger began ('renumbered') and the last one
    ('renumbered_last': old and new seq, when, its receipt and refund id), for `status`
    (`sync.state.sync_status`): a support engineer had a log line only (review 32)."""
    row = conn.execute("SELECT value FROM sync_state WHERE key = 'renumbered'").fetchone()
    count = (int(row[0]) if row is not None and str(row[0]).isdigit() else 0) + len(moved)
    old = max(moved)
    new = moved[old]
    found = conn.execute(
        "SELECT j.kind, j.ref_id, f.receipt_id FROM journal j LEFT JOIN refunds f"
        " ON j.kind = 'REFUND' AND f.refund_id = j.ref_id WHERE j.device_id = ? AND j.seq = ?",
        (device_id, new),
    ).fetchone()
    kind, ref_id, refunded = found if found is not None else ("", "", None)
    last = {
        "oldSeq": old,
        "newSeq": new,
        "at": now,
        "receiptId": str(refunded or "") if kind == "REFUND" else str(ref_id or ""),
        "refundId": str(ref_id or "") if kind == "REFUND" else "",
    }
    conn.executemany(
        "INSERT OR REPLACE INTO sync_state VALUES (?, ?)",
        [("renumbered", str(count)), ("renumbered_last", json.dumps(last, ensure_ascii=False))],
    )


def settle_push(
    conn: sqlite3.Connection,
    device_id: str,
    done: Sequence[int],
    aside: Sequence[SetAside],
    payloads: Mapping[int, str],
    sync_values: Mapping[str, str],
    now: str,
    hub_mark: int = 0,
    kept_since: str | None = None,
    hub: str = "",
    again: Sequence[SetAside] = (),
) -> dict[int, int]:
    """The hub's answer to a push, in one write transaction: acknowledged rows leave the
    outbox, set-aside ones move to ``sync_set_aside``, `sync_values` go to ``sync_state``
    and the push's error clears. `hub_mark`, the hub's contiguous mark for the device:
    numbering continues above it (`keep_seq_above`). `again`: those the hub set aside
    because another transaction holds their seq (`renumber`): each sale or refund of them
    is numbered again and stays in the outbox; any other is set aside. Returns the seqs
    numbered again, old to new."""
    moved: dict[int, int] = {}
    begin_write(conn)
    try:
        keep_seq_above(conn, device_id, hub_mark)
        for item in sorted(again, key=lambda item: item.seq):
            new = renumber(conn, device_id, item.seq, hub_mark)
            if new is None:
                aside = [*aside, item]
            else:
                moved[item.seq] = new
        if moved:
            _count_renumbered(conn, device_id, moved, now)
        answered_by(conn, hub)
        # the old seq of one numbered again is decided at the hub (set aside: another
        # transaction holds it), and kept with the acknowledged ones as a seq discarded
        # here: a hub restored from a backup that lost it is told so (`requeue_lost`:
        # DISCARDED, nothing counted), or its mark for the device stopped there for good
        # (a wiped till's old disk, whose sale held it, is gone). It replaces any row kept
        # under it (one sent again to a restored hub, then numbered again).
        conn.executemany(
            "INSERT OR REPLACE INTO sync_sent (device_id, seq, payload, created_at, texts,"
            " sent_at) VALUES (?, ?, ?, ?, NULL, ?)",
            [(device_id, old, _discarded_payload(device_id, old, now), now, now) for old in moved],
        )
        # kept a while, to be sent again to a hub restored from a backup (`requeue_lost`):
        # what it stored, and what it decided otherwise (set aside, a discarded seq),
        # without which its mark for the device would stop there after a restore
        decided = [*done, *(item.seq for item in aside)]
        conn.executemany(
            "INSERT OR REPLACE INTO sync_sent (device_id, seq, payload, created_at, texts,"
            " sent_at) SELECT device_id, seq, payload, created_at, texts, ? FROM outbox"
            " WHERE device_id = ? AND seq = ?",
            [(now, device_id, seq) for seq in decided],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO sync_sent (device_id, seq, payload, created_at, texts,"
            " sent_at) SELECT device_id, seq, ?, at, NULL, ? FROM sync_discarded"
            " WHERE device_id = ? AND seq = ?",
            [(payloads[seq], now, device_id, seq) for seq in decided if seq in payloads],
        )
        if kept_since is not None:
            conn.execute(
                "DELETE FROM sync_sent WHERE device_id = ? AND sent_at < ?",
                (device_id, kept_since),
            )
        for item in aside:
            conn.execute(
                "INSERT OR REPLACE INTO sync_set_aside VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, item.seq, payloads[item.seq], item.outcome, item.reason, now),
            )
        gone = decided
        conn.executemany(
            "DELETE FROM outbox WHERE device_id = ? AND seq = ?",
            [(device_id, seq) for seq in gone],
        )
        conn.executemany(
            "DELETE FROM sync_discarded WHERE device_id = ? AND seq = ?",
            [(device_id, seq) for seq in gone],
        )
        requeue_lost(conn, device_id, hub_mark, but=gone)
        for key, value in sync_values.items():
            conn.execute("INSERT OR REPLACE INTO sync_state VALUES (?, ?)", (key, value))
        conn.execute("DELETE FROM sync_state WHERE key = 'error:push'")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return moved


@dataclass(frozen=True)
class UnsyncedMove:
    """A point movement of this till still waiting in the outbox (the hub has not seen it)."""

    seq: int
    receipt_id: str
    kind: str
    points: int
    activates_at: str | None
    sold_at: str = ""  # a sale's `at` (a refund's: ""), for the hub's replay (§16)
    redeemed: int = 0  # the points the sale redeemed (a refund: 0)
    expires_at: str | None = None  # the batch's expiry (UTC text), None: never


def unsynced_moves(
    conn: sqlite3.Connection, device_id: str, customer_id: str
) -> list[UnsyncedMove]:
    return [
        UnsyncedMove(
            int(seq),
            str(receipt_id),
            str(kind),
            int(points),
            activates_at,
            at or "",
            int(spent or 0),
            expires_at,
        )
        for seq, receipt_id, kind, points, activates_at, at, spent, expires_at in conn.execute(
            "SELECT p.seq, p.receipt_id, p.kind, p.points, p.activates_at, r.at,"
            " r.redeemed_points, p.expires_at FROM points p"
            " JOIN outbox o ON o.device_id = p.device_id AND o.seq = p.seq"
            " LEFT JOIN receipts r ON r.receipt_id = p.receipt_id AND r.seq = p.seq"
            " AND r.device_id = p.device_id"
            " WHERE p.device_id = ? AND p.customer_id = ? ORDER BY p.seq",
            (device_id, customer_id),
        )
    ]


# ---------------------------------------------------------------- print jobs


def insert_print_history(
    conn: sqlite3.Connection,
    customer_id: str,
    offer_ids: Sequence[str],
    printed_at: str,
    receipt_id: str,
) -> None:
    """The offers printed for a customer on a receipt (the contract §7's "not printed to
    the same customer within N days" reads them back through `printed_within`)."""
    conn.executemany(
        "INSERT INTO print_history VALUES (?,?,?,?)",
        [(customer_id, offer_id, printed_at, receipt_id) for offer_id in offer_ids],
    )


def insert_print_job(
    conn: sqlite3.Connection, receipt_id: str, created_at: str, payload: str
) -> bool:
    """A PENDING print job in the caller's transaction; False if the receipt has one."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO print_jobs (receipt_id, created_at, payload) VALUES (?, ?, ?)",
        (receipt_id, created_at, payload),
    )
    return cur.rowcount == 1


# The start of a held print job's `last_error` (printer/queue.py: sent, and the printer
# answered nothing after it).
PRINT_UNCONFIRMED = "sent, not confirmed"


def requeue_print_job(conn: sqlite3.Connection, receipt_id: str) -> bool:
    """A FAILED (or DONE) job back in the queue, or a held one (sent and not confirmed), or
    one waiting for its retry after a drop or a printer away (its backoff), sent again now;
    False when there is no such job. A PENDING job is one row, taken by the worker alone
    (`_claim`: PENDING to SENDING), so sooner is never twice; until review 37 a job
    waiting for its retry was "no failed, held or printed job" (`print retry`, exit 2)."""
    cur = conn.execute(
        "UPDATE print_jobs SET state = 'PENDING', next_attempt_at = NULL, last_error = NULL "
        "WHERE receipt_id = ? AND (state IN ('FAILED', 'DONE')"
        " OR (state = 'PENDING' AND (next_attempt_at IS NOT NULL"
        " OR substr(last_error, 1, ?) = ?)))",
        (receipt_id, len(PRINT_UNCONFIRMED), PRINT_UNCONFIRMED),
    )
    return cur.rowcount == 1


def print_jobs(
    conn: sqlite3.Connection, receipt_id: str | None = None, *, include_done: bool = False
) -> list[dict[str, Any]]:
    """Jobs of the queue (open ones, or every one, or one receipt's), oldest first."""
    sql = "SELECT * FROM print_jobs"
    args: tuple[Any, ...] = ()
    if receipt_id is not None:
        sql, args = sql + " WHERE receipt_id = ?", (receipt_id,)
    elif not include_done:
        sql += " WHERE state <> 'DONE'"
    cur = conn.execute(sql + " ORDER BY id", args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# ---------------------------------------------------------------- the receipt's life


# `receipt_life.hub_hold` of an open hold whose hold at the hub is to be shrunk (§11).
HUB_SHRINK_OWED = 2


@dataclass(frozen=True)
class ReceiptLife:
    """A receiptId held or committed through hold/confirm (table ``receipt_life``).

    `request`, `held_result` and `figures` are the stored JSON texts while HELD (empty once
    CONFIRMED: the receipt's own rows keep them); times are stored UTC texts."""

    receipt_id: str
    state: str  # HELD, CONFIRMED, CANCELLED, EXPIRED
    digest: str
    request: str
    held_result: str
    figures: str
    card: str
    local_day: str
    mode: str
    redeemed_points: int
    hub_hold: bool
    held_at: str
    expires_at: str
    closed_at: str | None = None
    # An open hold priced OFFLINE whose hub grant (it came past the deadline) may hold more
    # than it uses: its hold at the hub is to be shrunk to what it uses (`hub_shrinks_due`).
    # Stored as `hub_hold` = 2 (no new column: a release before review 33 reads it as 1,
    # "the hub may hold something", and sends its release at cancel or expiry as before).
    shrink_owed: bool = False


def receipt_life(conn: sqlite3.Connection, receipt_id: str) -> ReceiptLife | None:
    row = conn.execute(
        "SELECT receipt_id, state, digest, request, held_result, figures, card, local_day,"
        " mode, redeemed_points, hub_hold, held_at, expires_at, closed_at"
        " FROM receipt_life WHERE receipt_id = ?",
        (receipt_id,),
    ).fetchone()
    if row is None:
        return None
    return ReceiptLife(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        str(row[7]),
        str(row[8]),
        int(row[9]),
        bool(row[10]),
        str(row[11]),
        str(row[12]),
        None if row[13] is None else str(row[13]),
        int(row[10]) == HUB_SHRINK_OWED,
    )


def insert_life(conn: sqlite3.Connection, life: ReceiptLife) -> None:
    conn.execute(
        "INSERT INTO receipt_life (receipt_id, state, digest, request, held_result, figures,"
        " card, local_day, mode, redeemed_points, hub_hold, held_at, expires_at, closed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            life.receipt_id,
            life.state,
            life.digest,
            life.request,
            life.held_result,
            life.figures,
            life.card,
            life.local_day,
            life.mode,
            life.redeemed_points,
            HUB_SHRINK_OWED if life.hub_hold and life.shrink_owed else int(life.hub_hold),
            life.held_at,
            life.expires_at,
            life.closed_at,
        ),
    )


def confirm_life(
    conn: sqlite3.Connection, receipt_id: str, closed_at: str, fiscal_document: str | None
) -> None:
    """The hold became the sale: the receipt's own rows keep the request and the result."""
    conn.execute(
        "UPDATE receipt_life SET state = 'CONFIRMED', closed_at = ?, fiscal_document = ?,"
        " request = '', held_result = '', figures = '{}' WHERE receipt_id = ?",
        (closed_at, fiscal_document, receipt_id),
    )


def hub_releases_due(conn: sqlite3.Connection, since: str) -> list[str]:
    """The cancelled or expired holds closed after `since` whose release has not reached
    the hub yet, oldest first."""
    return [
        str(rid)
        for (rid,) in conn.execute(
            "SELECT receipt_id FROM receipt_life INDEXED BY receipt_life_release"
            " WHERE hub_hold != 0 AND state IN ('CANCELLED', 'EXPIRED') AND closed_at > ?"
            " ORDER BY closed_at",
            (since,),
        )
    ]


def hub_shrinks_due(conn: sqlite3.Connection, now: str) -> list[str]:
    """The open holds priced OFFLINE, not expired by `now`, whose hold at the hub (a grant
    that came past the deadline) is still to be shrunk to what they use, oldest first."""
    return [
        str(rid)
        for (rid,) in conn.execute(
            "SELECT receipt_id FROM receipt_life WHERE state = 'HELD' AND expires_at > ?"
            " AND hub_hold = ? ORDER BY held_at",
            (now, HUB_SHRINK_OWED),
        )
    ]


def shrunk_at_hub(conn: sqlite3.Connection, receipt_id: str, held_at: str) -> None:
    """The hub shrank the hold of this receipt placed at `held_at` (or will not: a hub
    before review 33): nothing left to shrink; a release at its cancel or expiry still."""
    conn.execute(
        "UPDATE receipt_life SET hub_hold = 1 WHERE receipt_id = ? AND held_at = ?"
        " AND hub_hold = ?",
        (receipt_id, held_at, HUB_SHRINK_OWED),
    )


def note_hub_ask(conn: sqlite3.Connection, receipt_id: str, at: str, pid: int) -> None:
    """Before a hold's or checkout's request to the hub (made by process `pid`): it may
    hold this receipt's redemption or coupons from now on (`m015_hub_asks`)."""
    conn.execute(
        "INSERT OR REPLACE INTO hub_asks (receipt_id, asked_at, pid) VALUES (?, ?, ?)",
        (receipt_id, at, pid),
    )


def forget_hub_ask(conn: sqlite3.Connection, receipt_id: str, asked_at: str | None = None) -> None:
    """Inside the transaction that stores the receipt (its own record says what the hub
    holds from then on), or once the hub released it; `asked_at`: only that ask (not one
    made again since)."""
    if asked_at is None:
        conn.execute("DELETE FROM hub_asks WHERE receipt_id = ?", (receipt_id,))
    else:
        conn.execute(
            "DELETE FROM hub_asks WHERE receipt_id = ? AND asked_at = ?", (receipt_id, asked_at)
        )


def unstored_hub_asks(
    conn: sqlite3.Connection, receipt_id: str | None = None
) -> list[tuple[str, str, int | None]]:
    """(receiptId, asked_at, the asking process's id) of the asks to the hub whose receipt
    the ledger has not stored (no open hold, no commit: a cancelled or expired hold priced
    afresh and lost leaves its closed row), oldest first; `receipt_id`: that one only.
    Not an ask kept beside a closed hold whose own release is still owed (`hub_hold`): that
    release is sent and forgets the hold's own ask (`kept_hub_ask`, review 45); another
    ask left there is listed once that release is done."""
    sql = (
        "SELECT a.receipt_id, a.asked_at, a.pid FROM hub_asks AS a"
        " WHERE NOT EXISTS (SELECT 1 FROM receipt_life AS l WHERE l.receipt_id = a.receipt_id"
        " AND (l.state IN ('HELD', 'CONFIRMED') OR l.hub_hold != 0))"
        " AND NOT EXISTS (SELECT 1 FROM receipts AS r WHERE r.receipt_id = a.receipt_id)"
    )
    args: tuple[str, ...] = ()
    if receipt_id is not None:
        sql += " AND a.receipt_id = ?"
        args = (receipt_id,)
    rows = conn.execute(sql + " ORDER BY a.asked_at", args)
    return [(str(r), str(a), None if p is None else int(p)) for r, a, p in rows]


def released_at_hub(conn: sqlite3.Connection, receipt_id: str) -> None:
    """The hub released the hold of this closed receipt: nothing left to send."""
    conn.execute(
        "UPDATE receipt_life SET hub_hold = 0 WHERE receipt_id = ? AND state != 'HELD'",
        (receipt_id,),
    )


def kept_hub_ask(conn: sqlite3.Connection, receipt_id: str) -> str | None:
    """The `asked_at` of the ask kept beside a stored hold of this receipt (a Hold priced
    OFFLINE that asked the hub more than once: its release stays owed while a later
    request's grant may land, whatever the hub answers; review 44's hold44 note, kept in
    the ledger since review 45 so that a restart or another process knows it; `reset`
    forgets it with the rest, and keeps the release owed as an unstored ask's while a
    grant may land: `keep_owed_releases`, review 46)."""
    row = conn.execute(
        "SELECT asked_at FROM hub_asks WHERE receipt_id = ?", (receipt_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def forget_committed_hub_asks(conn: sqlite3.Connection) -> None:
    """Forget the asks to the hub of receipts committed here: a committed receipt is never
    priced or held again (its retry answers what is stored), and its transaction settles
    what the hub holds for it. The receipt's commit forgets its own; one left beside it
    (noted again by a call that then answered the stored receipt) was listed by nothing,
    released by nothing, and kept to the end (review 45, ask45)."""
    conn.execute(
        "DELETE FROM hub_asks WHERE EXISTS"
        " (SELECT 1 FROM receipts AS r WHERE r.receipt_id = hub_asks.receipt_id)"
    )


def run_out_at_hub(conn: sqlite3.Connection, before: str) -> None:
    """The holds of receipts closed before `before` have run out at the hub by now."""
    conn.execute(
        "UPDATE receipt_life SET hub_hold = 0 WHERE hub_hold != 0"
        " AND state IN ('CANCELLED', 'EXPIRED') AND closed_at <= ?",
        (before,),
    )


def due_holds(conn: sqlite3.Connection, now: str) -> list[tuple[str, bool]]:
    """(receiptId, whether the hub holds points for it) of the holds expired by `now`."""
    return [
        (str(rid), bool(hub_hold))
        for rid, hub_hold in conn.execute(
            "SELECT receipt_id, hub_hold FROM receipt_life"
            " WHERE state = 'HELD' AND expires_at <= ?",
            (now,),
        )
    ]


# The `device` key of the last step of the wall clock the ledger's hold times were moved
# by: the wall clock's offset from the steady clock (seconds; the system's CLOCK_BOOTTIME
# on Linux, one for every process) before the step and after it.
CLOCK_FOLLOWED = "clock_followed"
# The `device` key of the time line the ledger's hold times are on: the boot it is of (the
# steady clock counts from a boot) and the wall clock's offset from the steady one then.
CLOCK_LINE = "clock_line"


def clock_line(conn: sqlite3.Connection, boot: str) -> float | None:
    """The wall clock's offset from the steady one (seconds) that the ledger's hold times
    were last made on, when recorded on this `boot` (another boot's tells nothing: its
    steady clock counted from another instant)."""
    rows = dict(
        conn.execute(
            "SELECT key, value FROM device WHERE key IN (?, ?, ?)",
            (CLOCK_LINE, CLOCK_LINE_SEEN, CLOCK_FOLLOWED),
        ).fetchall()
    )
    if CLOCK_LINE not in rows:
        return None
    was, _, offset = str(rows[CLOCK_LINE]).rpartition(" ")
    if was != boot:
        return None
    try:
        line = float(offset)
    except ValueError:
        return None
    try:
        seen = json.loads(str(rows.get(CLOCK_LINE_SEEN, "null")))
        if (
            isinstance(seen, list)
            and seen[:1] == [rows[CLOCK_LINE]]
            and CLOCK_FOLLOWED in rows
            and seen[1:] != [rows[CLOCK_FOLLOWED]]
        ):
            # a step followed since by a release that keeps no line (before review 38,
            # run in its place on this boot): the holds are on the offset it moved them to
            return float(str(rows[CLOCK_FOLLOWED]).split()[1])
    except (ValueError, IndexError):
        pass  # the line as written
    return line


# The `device` key of what the line was last written beside: `[the line's text, the last
# step followed then (`clock_followed`'s text, or null)]`. A release before review 38's
# (a rollback on this boot, then this one again) follows steps without writing the line:
# a `clock_followed` other than the one seen beside the line, the line as it was, says
# the holds were moved since, to its offset after (`clock_line`). Without it the line's
# offset was taken for theirs, and the steps that release followed (two or more: one is
# told by `clock_followed` itself) were followed again: the holds moved twice.
CLOCK_LINE_SEEN = "clock_line_seen"


def _line_seen(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: the line as written now, and the last step followed."""
    rows = dict(
        conn.execute(
            "SELECT key, value FROM device WHERE key IN (?, ?)", (CLOCK_LINE, CLOCK_FOLLOWED)
        ).fetchall()
    )
    conn.execute(
        "INSERT OR REPLACE INTO device (key, value) VALUES (?, ?)",
        (CLOCK_LINE_SEEN, json.dumps([rows.get(CLOCK_LINE), rows.get(CLOCK_FOLLOWED)])),
    )


# The `device` key of the holds still open when a boot's first line was written over the
# line of another boot: `{"boot": B, "holds": [[receiptId, held_at], ...]}`. Their expiry
# is a wall-clock time of the boot before (across a restart of the system it applies as
# stored, CONTRACT §11): no step of the wall clock on boot B moves them (review 39).
CLOCK_LINE_BEFORE = "clock_line_before"


def record_clock_line(conn: sqlite3.Connection, boot: str, offset: float) -> None:
    """Inside a write transaction: the ledger's hold times are on `offset` (`clock_line`).
    The first line of a boot written over another boot's lists the holds open then
    (`CLOCK_LINE_BEFORE`): they were made on the boot before, whose steady clock this
    boot's steps are not measured from. No line at all (a new ledger, or one of a release
    before review 38) lists none: its open holds are moved by a step as before."""
    row = conn.execute("SELECT value FROM device WHERE key = ?", (CLOCK_LINE,)).fetchone()
    if row is not None and str(row[0]).rpartition(" ")[0] != boot:
        holds = conn.execute(
            "SELECT receipt_id, held_at FROM receipt_life WHERE state = 'HELD' ORDER BY held_at"
        ).fetchall()
        conn.execute(
            "INSERT OR REPLACE INTO device (key, value) VALUES (?, ?)",
            (CLOCK_LINE_BEFORE, json.dumps({"boot": boot, "holds": [list(h) for h in holds]})),
        )
    conn.execute(
        "INSERT OR REPLACE INTO device (key, value) VALUES (?, ?)",
        (CLOCK_LINE, f"{boot} {offset!r}"),
    )
    _line_seen(conn)


def holds_of_boot_before(conn: sqlite3.Connection, boot: str) -> set[tuple[str, str]]:
    """(receiptId, held_at) of the holds open when `boot`'s first line was written (made
    on a boot before it: `record_clock_line`); none when that line was not `boot`'s."""
    row = conn.execute("SELECT value FROM device WHERE key = ?", (CLOCK_LINE_BEFORE,)).fetchone()
    if row is None:
        return set()
    try:
        listed = json.loads(str(row[0]))
        if listed.get("boot") != boot:
            return set()
        return {(str(rid), str(at)) for rid, at in listed.get("holds", [])}
    except (ValueError, TypeError, AttributeError):
        return set()


def follow_clock_step(
    conn: sqlite3.Connection,
    step: timedelta,
    offset: float,
    tolerance_s: float,
    boot: str | None = None,
) -> bool:
    """Inside a write transaction: move the ledger's hold times by a step of the wall clock
    (`shift_open_holds`) unless another process on this ledger already followed that same
    step (the last step recorded went from this one's offset before it, `offset` less
    `step`, to `offset`, the wall clock less the steady one now, each within
    `tolerance_s`), and record it. Each process tells a step from its own readings of
    the clocks: `tillpoint run` and a one-shot command alive across one step each moved
    the holds by it, twice in all: an hour back, an open hold with its minutes left
    expired at once (review 37, rev37e). Both ends are compared: a step back to where
    an earlier one went from is another step. False: already followed, nothing moved.
    Either way the ledger's time line is then `offset` (`record_clock_line`, on `boot`).

    Nor when the ledger's line of `boot` is `offset` already (within `tolerance_s`): its
    hold times are on the clock as it reads now. A process whose start wrote no line
    (the ledger busy) and that read the clock before a step, while another process
    started after it wrote the boot's first line on the stepped clock and held a receipt
    on it, moved that hold by the step (an hour back: expired at once; review 39,
    rev39e)."""
    if boot is not None:
        line = clock_line(conn, boot)
        record_clock_line(conn, boot, offset)
        if line is not None and abs(line - offset) < tolerance_s:
            return False
    before = offset - step.total_seconds()
    row = conn.execute("SELECT value FROM device WHERE key = ?", (CLOCK_FOLLOWED,)).fetchone()
    if row is not None:
        try:
            was, now = (float(part) for part in str(row[0]).split())
        except ValueError:
            pass
        else:
            if abs(was - before) < tolerance_s and abs(now - offset) < tolerance_s:
                return False
    shift_open_holds(conn, step, boot)
    conn.execute(
        "INSERT OR REPLACE INTO device (key, value) VALUES (?, ?)",
        (CLOCK_FOLLOWED, f"{before!r} {offset!r}"),
    )
    if boot is not None:
        _line_seen(conn)  # the line is `offset`, the step to it followed
    return True


def shift_open_holds(conn: sqlite3.Connection, step: timedelta, boot: str | None = None) -> int:
    """Move the expiry of every open hold by `step` (the wall clock was stepped by it),
    and the `holdExpiresAt` its held result answers a retried Hold with, and its `held_at`;
    and the times the releases and asks owed to the hub are judged by (a closed hold's
    `closed_at` and `held_at`, an ask's `asked_at`). A step on `boot` leaves the
    holds made on a boot before it (`holds_of_boot_before`): their wall-clock expiry
    was made on a clock this boot's steps are not measured from, and a dead RTC set right
    by NTP after the restart held them a day at the till, the hub's copies run out after
    `holdTtlSeconds` + 60 s (review 38's rev38h, closed in review 39)."""
    before = set() if boot is None else holds_of_boot_before(conn, boot)
    moved = []
    for rid, at, text, held_at in conn.execute(
        "SELECT receipt_id, expires_at, held_result, held_at FROM receipt_life WHERE state = 'HELD'"
    ).fetchall():
        if (rid, held_at) in before:
            continue
        held = json.loads(text)
        if held.get("holdExpiresAt"):
            then = datetime.fromisoformat(held["holdExpiresAt"]) + step
            held["holdExpiresAt"] = then.astimezone(UTC).isoformat()
        text = json.dumps(held, ensure_ascii=False)
        moved.append(
            (
                utc_text(datetime.fromisoformat(at) + step),
                text,
                utc_text(datetime.fromisoformat(held_at) + step),
                rid,
            )
        )
    # `held_at` too: a closed OFFLINE hold's release stays owed for `LATE_GRANT_S` of time
    # that passes after it (`Agent._grant_may_come`, compared with the clock on this line);
    # left on the clock of before the step, an hour forward took a release answered
    # "nothing held" for final while the late grant was on its way (held at the hub for
    # `holdTtlSeconds` + 60 s), an hour back kept it owed for an hour (review 39, rev39i)
    conn.executemany(
        "UPDATE receipt_life SET expires_at = ?, held_result = ?, held_at = ?"
        " WHERE receipt_id = ? AND state = 'HELD'",
        moved,
    )
    # What an owed call to the hub is judged by moves with them: a release owed since its
    # `closed_at`, an ask since its `asked_at`, each owed for a day of time that passes
    # (`run_out_at_hub`; an ask of another process still running is young for 120 s).
    # Left on the clock of before the step, a step forward of a day took a release owed
    # for minutes for one run out at the hub and dropped it unsent, the hub (its own
    # clock) holding the points from every till for its copy's whole time (review 37).
    conn.executemany(
        "UPDATE receipt_life SET closed_at = ?, held_at = ? WHERE receipt_id = ?",
        [
            (
                utc_text(datetime.fromisoformat(at) + step),
                utc_text(datetime.fromisoformat(held_at) + step),
                rid,
            )
            for rid, at, held_at in conn.execute(
                "SELECT receipt_id, closed_at, held_at FROM receipt_life WHERE hub_hold != 0"
                " AND state IN ('CANCELLED', 'EXPIRED') AND closed_at IS NOT NULL"
            ).fetchall()
        ],
    )
    conn.executemany(
        "UPDATE hub_asks SET asked_at = ? WHERE receipt_id = ?",
        [
            (utc_text(datetime.fromisoformat(at) + step), rid)
            for rid, at in conn.execute("SELECT receipt_id, asked_at FROM hub_asks").fetchall()
        ],
    )
    return len(moved)


def close_holds(
    conn: sqlite3.Connection,
    receipt_ids: Sequence[str],
    state: str,
    closed_at: str,
    *,
    only_held: bool = False,
) -> None:
    """Holds CANCELLED or EXPIRED: their coupons are given back (the contract §11, §13)."""
    where = " AND state = 'HELD'" if only_held else ""
    conn.executemany(
        f"UPDATE receipt_life SET state = ?, closed_at = ? WHERE receipt_id = ?{where}",
        [(state, closed_at, rid) for rid in receipt_ids],
    )
    conn.executemany("DELETE FROM coupon_uses WHERE receipt_id = ?", [(r,) for r in receipt_ids])


@dataclass(frozen=True)
class CouponUse:
    """A coupon code a receipt of this till uses (held or committed)."""

    code: str
    receipt_id: str
    customer_id: str
    offer_id: str
    at: str
    created_at: str


def use_coupons(conn: sqlite3.Connection, uses: Sequence[CouponUse]) -> None:
    """Mark the codes used here. OR REPLACE: the one row a code can already have is that of
    a hold that expired since the last sweep."""
    conn.executemany(
        "INSERT OR REPLACE INTO coupon_uses (code, receipt_id, customer_id, offer_id, at,"
        " created_at) VALUES (?,?,?,?,?,?)",
        [(u.code, u.receipt_id, u.customer_id, u.offer_id, u.at, u.created_at) for u in uses],
    )


def forget_life(conn: sqlite3.Connection, receipt_id: str) -> None:
    """An expired hold priced again: its row and its coupons go, and its place in the
    list of the boot before's holds (`CLOCK_LINE_BEFORE`): the hold that replaces it is
    this boot's, even when the wall clock, stepped back, gives it the very `held_at` text
    the listed one had (review 39, rev39e: left by this boot's steps as the boot before's)."""
    conn.execute("DELETE FROM receipt_life WHERE receipt_id = ?", (receipt_id,))
    conn.execute("DELETE FROM coupon_uses WHERE receipt_id = ?", (receipt_id,))
    row = conn.execute("SELECT value FROM device WHERE key = ?", (CLOCK_LINE_BEFORE,)).fetchone()
    if row is None or json.dumps(receipt_id) not in str(row[0]):
        return  # not listed: not parsed (a list may hold thousands)
    try:
        listed = json.loads(str(row[0]))
        holds = [pair for pair in listed["holds"] if pair[0] != receipt_id]
    except (ValueError, TypeError, KeyError, IndexError):
        return  # read as none by `holds_of_boot_before` anyway
    if len(holds) != len(listed["holds"]):
        listed["holds"] = holds
        conn.execute(
            "UPDATE device SET value = ? WHERE key = ?", (json.dumps(listed), CLOCK_LINE_BEFORE)
        )


def hold_lapsed(conn: sqlite3.Connection, receipt_id: str, now: str) -> bool:
    """Whether the receipt's hold expired by `now` (swept or not): a Hold or Checkout of
    it prices it afresh."""
    row = conn.execute(
        "SELECT 1 FROM receipt_life WHERE receipt_id = ?"
        " AND (state = 'EXPIRED' OR (state = 'HELD' AND expires_at <= ?))",
        (receipt_id, now),
    ).fetchone()
    return row is not None


def receipt_known(conn: sqlite3.Connection, receipt_id: str) -> bool:
    """Whether the receiptId is held or committed here (or ever was)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM receipt_life WHERE receipt_id = ?1)"
        " OR EXISTS (SELECT 1 FROM receipts WHERE receipt_id = ?1)",
        (receipt_id,),
    ).fetchone()
    return bool(row[0])


# What a quote reads of its receiptId, in one statement: the committed receipt, if any,
# and the digest of a hold of it still open at ?2 (a quote of another body is priced
# beside that hold, `service.Agent.quote`).
QUOTE_LOOKUP = (
    "SELECT r.request, r.result, r.device_id, r.seq,"
    " (SELECT digest FROM receipt_life WHERE receipt_id = ?1 AND state = 'HELD'"
    " AND expires_at > ?2)"
    " FROM (SELECT 1) LEFT JOIN receipts r ON r.receipt_id = ?1"
)


def quote_lookup(
    conn: sqlite3.Connection, receipt_id: str, now: datetime
) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
    """(`stored_receipt`'s answer, the digest of the receipt's open hold or None)."""
    row = conn.execute(QUOTE_LOOKUP, (receipt_id, utc_text(now))).fetchone()
    return (None if row[0] is None else (str(row[0]), _stored_result(row))), row[4]


def held_redemption(conn: sqlite3.Connection, receipt_id: str) -> dict[str, Any] | None:
    """The mode an open hold was priced in and the points it redeemed (what the hub
    granted it, online), as a result's `mode` and `redeemedPoints`; None without one."""
    row = conn.execute(
        "SELECT mode, redeemed_points FROM receipt_life WHERE receipt_id = ? AND state = 'HELD'",
        (receipt_id,),
    ).fetchone()
    return None if row is None else {"mode": str(row[0]), "redeemedPoints": int(row[1])}


def stored_receipt(conn: sqlite3.Connection, receipt_id: str) -> tuple[str, dict[str, Any]] | None:
    """(request text, result) of a committed receipt."""
    row = conn.execute(
        "SELECT request, result, device_id, seq FROM receipts WHERE receipt_id = ?",
        (receipt_id,),
    ).fetchone()
    if row is None:
        return None
    return str(row[0]), _stored_result(row)


def _stored_result(row: Any) -> dict[str, Any]:
    result = dict(json.loads(row[1]))
    # Stored by an agent older than Hold/Confirm and deviceId/seq in results.
    result.setdefault("state", "CONFIRMED")
    result.setdefault("deviceId", str(row[2]))
    result.setdefault("seq", int(row[3]))
    return result


# ---------------------------------------------------------------- refunds


@dataclass(frozen=True)
class StoredRefund:
    """A refund committed here: its request and result texts and its place in the
    numbering (the result of an older agent lacks the latter)."""

    request: str
    result: str
    device_id: str
    seq: int


def stored_refund(conn: sqlite3.Connection, refund_id: str) -> StoredRefund | None:
    row = conn.execute(
        "SELECT request, result, device_id, seq FROM refunds WHERE refund_id = ?", (refund_id,)
    ).fetchone()
    if row is None:
        return None
    return StoredRefund(str(row[0]), str(row[1]), str(row[2]), int(row[3]))


@dataclass(frozen=True)
class SoldReceipt:
    """What a refund needs of a committed receipt: when it was sold, to which card and
    customer, its extra points, and when its earned points activate (fixed at commit)."""

    at: str
    card: str
    customer_id: str | None
    extra_points: int
    activates_at: str


def sold_receipt(conn: sqlite3.Connection, receipt_id: str) -> SoldReceipt | None:
    row = conn.execute(
        "SELECT at, card, customer_id, extra_points, activates_at FROM receipts"
        " WHERE receipt_id = ?",
        (receipt_id,),
    ).fetchone()
    if row is None:
        return None
    return SoldReceipt(str(row[0]), str(row[1]), row[2], int(row[3]), str(row[4]))


@dataclass(frozen=True)
class ReceiptLine:
    """A committed receipt line: quantities as decimal texts, points as integers."""

    idx: int
    sku: str
    qty: str
    redeemed_points: int
    earned_points: int
    returned_qty: str


def receipt_lines(conn: sqlite3.Connection, receipt_id: str) -> list[ReceiptLine]:
    """A committed receipt's lines in order, with what was returned of each: the rows of
    `receipt_lines` (a receipt committed before its lines were kept in its row, or
    refunded since), else its row's lines, nothing returned."""
    rows = conn.execute(
        "SELECT idx, sku, qty, redeemed_points, earned_points, returned_qty"
        " FROM receipt_lines WHERE receipt_id = ? ORDER BY idx",
        (receipt_id,),
    ).fetchall()
    if rows:
        return [
            ReceiptLine(int(i), str(s), str(q), int(p), int(e), str(r)) for i, s, q, p, e, r in rows
        ]
    return [
        ReceiptLine(i, str(s), str(q), int(p), int(e), "0")
        for i, (s, q, p, e) in enumerate(_inline_lines(conn, receipt_id))
    ]


def _inline_lines(conn: sqlite3.Connection, receipt_id: str) -> list[list[Any]]:
    row = conn.execute("SELECT lines FROM receipts WHERE receipt_id = ?", (receipt_id,)).fetchone()
    return [] if row is None or row[0] is None else list(json.loads(row[0]))


def set_returned(
    conn: sqlite3.Connection, receipt_id: str, returned: Sequence[tuple[int, str]]
) -> None:
    """The returned quantity of each (line index, decimal text) after a refund. A receipt
    refunded for the first time gets its rows of `receipt_lines` here, from its row's."""
    if (
        conn.execute(
            "SELECT 1 FROM receipt_lines WHERE receipt_id = ? LIMIT 1", (receipt_id,)
        ).fetchone()
        is None
    ):
        conn.executemany(
            "INSERT INTO receipt_lines VALUES (?,?,?,?,?,?,?)",
            [
                (receipt_id, i, str(s), str(q), int(p), int(e), "0")
                for i, (s, q, p, e) in enumerate(_inline_lines(conn, receipt_id))
            ],
        )
    conn.executemany(
        "UPDATE receipt_lines SET returned_qty = ? WHERE receipt_id = ? AND idx = ?",
        [(qty, receipt_id, idx) for idx, qty in returned],
    )


def given_back_alive(
    conn: sqlite3.Connection, device_id: str, receipt_id: str, seq: int, points: int, at: datetime
) -> int:
    """Of the `points` a refund (its `seq`) gave back, those in batches that still count at
    `at`: they go back to the batches the sale took them from, the last taken first, after
    what the refunds before it gave back; into a batch expired by then they stay expired
    (the contract §16). What the sale's rows do not account for counts as it is."""
    taken = conn.execute(
        "SELECT -p.points, p.expires_at FROM points p JOIN receipts r"
        " ON r.receipt_id = p.receipt_id AND r.seq = p.seq AND r.device_id = p.device_id"
        " WHERE p.receipt_id = ? AND p.device_id = ? AND p.kind = 'spend' AND p.points < 0"
        " ORDER BY p.id",
        (receipt_id, device_id),
    ).fetchall()
    (before,) = conn.execute(
        "SELECT coalesce(sum(p.points), 0) FROM points p LEFT JOIN receipts r"
        " ON r.receipt_id = p.receipt_id AND r.seq = p.seq AND r.device_id = p.device_id"
        " WHERE p.receipt_id = ? AND p.device_id = ? AND p.kind = 'spend' AND p.points > 0"
        " AND p.seq < ? AND r.receipt_id IS NULL",
        (receipt_id, device_id, seq),
    ).fetchone()
    skip, left, alive = int(before), points, 0
    for amount, expires in reversed(taken):
        room = int(amount) - min(int(amount), skip)
        skip -= int(amount) - room
        part = min(room, left)
        left -= part
        if part and (
            expires is None
            or at <= last_instant(datetime.fromisoformat(str(expires).replace("Z", "+00:00")))
        ):
            alive += part
        if left <= 0:
            break
    return alive + max(0, left)


def spent_expiry(conn: sqlite3.Connection, customer_id: str, receipt_id: str) -> str | None:
    """When the last-expiring batch a sale's redemption took expires (None: it took none
    that expires): a refund's give-back row carries it, so that a balance replays it batch
    by batch (an expired batch stays expired) also once nothing else expires."""
    row = conn.execute(
        "SELECT max(p.expires_at) FROM points p JOIN receipts r"
        " ON r.receipt_id = p.receipt_id AND r.seq = p.seq AND r.device_id = p.device_id"
        " WHERE p.customer_id = ? AND p.receipt_id = ? AND p.kind = 'spend' AND p.points < 0",
        (customer_id, receipt_id),
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def earned_left(
    conn: sqlite3.Connection, receipt_id: str, customer_id: str | None = None
) -> tuple[int, str | None]:
    """The points a receipt earned, less those taken back since, and their expiry (read
    through the customer's rows when `customer_id` is given: an index seek)."""
    query = "SELECT coalesce(sum(points), 0), max(expires_at) FROM points"
    query += " WHERE receipt_id = ? AND kind = 'earn'"
    args: tuple[str, ...] = (receipt_id,)
    if customer_id is not None:
        query, args = query + " AND customer_id = ?", (receipt_id, customer_id)
    points, expires = conn.execute(query, args).fetchone()
    return int(points), expires


@dataclass(frozen=True)
class PointMove:
    """A row of `points`: spending (negative), giving back (positive), earning ('earn',
    with its activation and expiry) under the (deviceId, seq) of its transaction."""

    kind: str  # spend or earn
    points: int
    activates_at: str | None = None
    expires_at: str | None = None


def insert_points(
    conn: sqlite3.Connection,
    device_id: str,
    seq: int,
    customer_id: str,
    receipt_id: str,
    moves: Sequence[PointMove],
) -> None:
    conn.executemany(
        "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
        " activates_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
        [
            (
                device_id,
                seq,
                customer_id,
                receipt_id,
                m.kind,
                m.points,
                m.activates_at,
                m.expires_at,
            )
            for m in moves
        ],
    )


@dataclass(frozen=True)
class RefundRow:
    refund_id: str
    receipt_id: str
    device_id: str
    seq: int
    at: str
    request: str
    result: str
    created_at: str


def insert_refund(conn: sqlite3.Connection, row: RefundRow) -> None:
    conn.execute(
        "INSERT INTO refunds (refund_id, receipt_id, device_id, seq, at, request, result,"
        " created_at) VALUES (?,?,?,?,?,?,?,?)",
        (
            row.refund_id,
            row.receipt_id,
            row.device_id,
            row.seq,
            row.at,
            row.request,
            row.result,
            row.created_at,
        ),
    )


def open_print_jobs(conn: sqlite3.Connection) -> int:
    """Print jobs waiting to print (PENDING or SENDING): `printQueueDepth`, the worker's
    `queue_depth`. A FAILED job waits for nobody (`print retry` puts it back); it is
    counted in `printerState` FAILED_JOBS and `print queue`."""
    return int(
        conn.execute(
            "SELECT count(*) FROM print_jobs WHERE state <> 'DONE'"
            " AND state IN ('PENDING', 'SENDING')"
        ).fetchone()[0]
    )


def print_queue_health(conn: sqlite3.Connection) -> tuple[int, int, str]:
    """Failed jobs, jobs waiting for a retry, and the last error: the newest open job's,
    or the newest printed job's note (sent, not confirmed) until a later one prints.

    A job waits for a retry when it is PENDING after an attempt; a SENDING job is being
    printed (its claim counted the attempt already, so `attempts > 0` there said RETRYING
    while a first attempt simply printed)."""
    # Open jobs only, by the partial index `print_jobs_open` (its `state <> 'DONE'` said
    # as it is written there): the printed jobs stay in the table for good, a till's year
    # of sales, and every status call and metrics scrape asks this.
    failed, retrying, last_error = conn.execute(
        "SELECT count(*) FILTER (WHERE state = 'FAILED'),"
        " count(*) FILTER (WHERE state = 'PENDING' AND attempts > 0),"
        " coalesce("
        "  (SELECT last_error FROM print_jobs INDEXED BY print_jobs_open"
        "   WHERE state <> 'DONE' AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1),"
        "  (SELECT last_error FROM print_jobs WHERE state = 'DONE' ORDER BY id DESC LIMIT 1))"
        " FROM print_jobs WHERE state <> 'DONE'"
    ).fetchone()
    return int(failed), int(retrying), str(last_error or "")
