"""SQLite files of a till: connections, the cache's schema and generations, checkpoints.

A till keeps two files in its data directory:

- ``cache.db``: the hub's snapshot (program, catalogue, customers, cards, offers). A full
  snapshot is built into a new generation file, ``cache-<version>-<token>.db``, and
  ``cache.db`` becomes a symlink switched atomically to it (`switch_cache`); a delta patches
  the current generation in one transaction. Readers see the old data or the new, never a
  mix. SQLite resolves the symlink when it names the ``-wal`` and ``-shm`` files, so each
  generation has its own; a file is never renamed over a database someone has open.
  An older install's plain ``cache.db`` file works as it is until the first full apply.
- ``ledger.db``: what happened at this till (receipts, refunds, journal, outbox, points,
  print history and print jobs, sync state). Every commit writes its rows in one
  transaction with ``synchronous=FULL``, so a receipt, its journal entry and its outbox
  row stand or fall together. Its schema, its opener and its SQL live in `ledger.py`;
  this module gives it the connection settings (`connect`) and `Checkpointer`.

Two files, so that a long snapshot apply holds the cache's write lock without ever
holding the ledger's: checkouts keep committing while a snapshot loads.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import (
    DamagedCache,
    ForeignDatabase,
    InputError,
    LaterRelease,
    ReadOnlyData,
    StorageError,
    TillpointError,
)

if TYPE_CHECKING:
    from sqlite_utils import Database

BUSY_TIMEOUT_MS = 5000

# `tillpoint sync now --timeout S`'s deadline (`time.monotonic`), set by `writes_until`:
# its writes wait no longer than what is left of it for another writer (`begin_write`).
# The setting thread's own (a context variable, review 38's rev38f: it was the process's,
# and a hub or agent thread of the same process took the cut too)
_writes_until: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tillpoint_writes_until", default=None
)
CACHE = "cache.db"
# A generation of the cache: the snapshot version and a token, never reused, so a stale
# connection can never pair its -wal or -shm with another file of the same name.
GENERATION = re.compile(r"^cache-[0-9]+-[0-9a-f]+\.db$")
# A part of a parallel build (`cache_build`): rows written by one worker, merged, deleted.
PART = re.compile(r"^cache-[0-9]+-[0-9a-f]+\.db\.part[0-9]+$")
BUILDING = ".building"
log = logging.getLogger("tillpoint.agent")


@dataclass(frozen=True)
class _Step:
    """One migration, as `sqlite_utils.migrations.Migrations` keeps it (name, fn, transactional)."""

    name: str
    fn: Callable[[Database], None]
    transactional: bool = True


class MigrationSet:
    """A `sqlite_utils` migration set, recorded in the same ``_sqlite_migrations`` table,
    whose library is imported only when a migration is pending: a database already at
    the current schema opens with one SELECT (sqlite_utils is a tenth of a CLI call's
    start). `@set()` registers a function as `Migrations.__call__` does."""

    # The sets recorded in each file ("ledger", "cache"), to tell a step no set knows.
    _of_file: ClassVar[dict[str, list[MigrationSet]]] = {}

    def __init__(self, name: str, file: str) -> None:
        self.name = name
        self.file = file
        self._migrations: list[_Step] = []
        MigrationSet._of_file.setdefault(file, []).append(self)

    def __call__(self) -> Callable[[Callable[[Database], None]], Callable[[Database], None]]:
        def register(fn: Callable[[Database], None]) -> Callable[[Database], None]:
            self._migrations.append(_Step(fn.__name__, fn))
            return fn

        return register

    def current(self, conn: sqlite3.Connection) -> bool:
        try:
            rows = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        except sqlite3.OperationalError:  # a new database: no table yet
            # (or another program's, opened by a path `connect` did not: the hub's store)
            path = conn.execute("PRAGMA database_list").fetchone()[2] or "this file"
            refuse_foreign(conn, path, hub=self.file == "hub database")
            return False
        known = {(s.name, m.name) for s in self._of_file[self.file] for m in s._migrations}
        unknown = {f"{step} ({of})" for of, step in rows if (of, step) not in known}
        if unknown:
            self._refuse_another_kind(conn, {of for of, _ in rows})
            # Written by a later release (or a development build), then this one started
            # on it: a rollback. Its tables are not the ones this code writes (an older
            # release took seqs the newer one had used, and pushed outbox rows without
            # their texts, which the hub set aside): refused before anything is read.
            what = ", ".join(sorted(unknown))
            # a hub has no data directory: its database (review 38, rev38g)
            where = "hub database" if self.file == "hub database" else "data directory"
            raise LaterRelease(
                f"the {self.file} was written by another tillpoint release (schema steps"
                f" {what} are unknown to this one): "
                + (
                    "run that release, or delete cache.db and the cache-*.db files of the"
                    " data directory (a copy of the hub's data: the next snapshot rebuilds it)"
                    if self.file == "cache"
                    else f"run that release, or restore the {where} saved before it was installed"
                )
            )
        applied = {step for of, step in rows if of == self.name}
        return all(m.name in applied for m in self._migrations)

    def _refuse_another_kind(self, conn: sqlite3.Connection, theirs: set[str]) -> None:
        """A file whose every schema step is another kind of tillpoint file's (a till's
        ledger given as the hub's `--store`) is a wrong path, not a later release's file
        ("written by another tillpoint release" sent the reader looking for one)."""
        if theirs & {s.name for s in self._of_file[self.file]}:
            return
        kinds = {s.name: f for f, sets in self._of_file.items() for s in sets if f != self.file}
        other = next((kinds[of] for of in sorted(theirs) if of in kinds), None)
        if other is None:
            return
        path = conn.execute("PRAGMA database_list").fetchone()[2] or "this file"
        what = f"a till's {other}" if other in ("ledger", "cache") else f"a {other}"
        raise InputError(f"{path} is {what}, not a {self.file}: check the path")

    def apply(self, conn: sqlite3.Connection) -> None:
        """The pending steps, as sqlite-utils' `Migrations.apply` applies them, inside the
        caller's transaction. Where the file has no record table yet, or the one that
        sqlite-utils makes (a new cache at each full snapshot, a new ledger), without
        importing it: its import scans every installed package's entry points
        (`importlib.metadata`, perf38/rev38i). The steps use `execute` and
        `executescript` alone (`_PlainDatabase`); the table, its index and the rows are
        sqlite-utils' own, byte for byte (`tests/test_review39_left39.py`)."""
        if not self._plain_record(conn):
            self.apply_with_sqlite_utils(conn)
            return
        applied = {
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (self.name,)
            )
        }
        db = _PlainDatabase(conn)
        for step in self._migrations:
            if step.name in applied:
                continue
            with db.atomic():
                step.fn(db)  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
                    " VALUES (?, ?, ?)",
                    (self.name, step.name, str(datetime.now(UTC))),
                )

    @staticmethod
    def _plain_record(conn: sqlite3.Connection) -> bool:
        """Whether the record table is absent (then made here, as sqlite-utils makes it)
        or sqlite-utils' current one; any other form is sqlite-utils' to mend."""
        rows = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE tbl_name = '_sqlite_migrations'"
            ).fetchall()
        )
        if not rows:
            conn.execute(_RECORD_TABLE)
            conn.execute(_RECORD_INDEX)
            return True
        return rows == {"_sqlite_migrations": _RECORD_TABLE, _RECORD_INDEX_NAME: _RECORD_INDEX}

    def apply_with_sqlite_utils(self, conn: sqlite3.Connection) -> None:
        """The pending steps by sqlite-utils' `Migrations.apply` itself."""
        from sqlite_utils import Database
        from sqlite_utils.migrations import Migrations

        migrations = Migrations(self.name)
        migrations._migrations = list(self._migrations)  # type: ignore[arg-type]
        migrations.apply(Database(conn))


# sqlite-utils' record of applied steps (`Migrations.ensure_migrations_table`, 4.x), as
# it writes it: made the same way here, so either can apply a later step to the file.
_RECORD_TABLE = (
    'CREATE TABLE "_sqlite_migrations" (\n'
    '   "id" INTEGER PRIMARY KEY,\n'
    '   "migration_set" TEXT,\n'
    '   "name" TEXT,\n'
    '   "applied_at" TEXT\n'
    ")"
)
_RECORD_INDEX_NAME = "idx__sqlite_migrations_migration_set_name"
_RECORD_INDEX = (
    f'CREATE UNIQUE INDEX "{_RECORD_INDEX_NAME}"\n'
    '    ON "_sqlite_migrations" ("migration_set", "name")'
)


class _PlainDatabase:
    """What a schema step is given instead of sqlite-utils' `Database`: its `execute`,
    `executescript` and `atomic` (a savepoint inside the caller's transaction, as
    sqlite-utils nests them), on the same connection, as sqlite-utils 4 runs them."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Any = None) -> sqlite3.Cursor:
        if parameters is None:
            return self.conn.execute(sql)
        return self.conn.execute(sql, parameters)

    def executescript(self, sql: str) -> sqlite3.Cursor:
        """As sqlite-utils runs a script: inside a transaction statement by statement
        (`sqlite3.executescript` would commit it first), else whole."""
        if not self.conn.in_transaction:
            return self.conn.executescript(sql)
        cursor = self.conn.cursor()
        start = 0
        for end, char in enumerate(sql):
            if char == ";" and sqlite3.complete_statement(sql[start : end + 1].strip()):
                cursor.execute(sql[start : end + 1].strip())
                start = end + 1
        if rest := sql[start:].strip():
            cursor.execute(rest)
        return cursor

    @contextlib.contextmanager
    def atomic(self) -> Iterator[_PlainDatabase]:
        conn = self.conn
        if not conn.in_transaction:
            conn.execute("BEGIN")
            try:
                yield self
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        savepoint = f"sqlite_utils_{secrets.token_hex(16)}"
        conn.execute(f"SAVEPOINT {savepoint};")
        try:
            yield self
        except BaseException:
            if conn.in_transaction:
                conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint};")
                conn.execute(f"RELEASE SAVEPOINT {savepoint};")
            raise
        conn.execute(f"RELEASE SAVEPOINT {savepoint};")


cache_migrations = MigrationSet("tillpoint.cache", "cache")


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


@cache_migrations()
def m002_coupons(db: Database) -> None:
    # One-time codes that unlock an offer (§13); doc is the Coupon's JSON.
    db.executescript(
        """
        CREATE TABLE coupons (code TEXT PRIMARY KEY, customer_id TEXT, doc TEXT NOT NULL);
        """
    )


@cache_migrations()
def m003_products_read(db: Database) -> None:
    # A receipt's products are read from this index alone (`CacheView._products`, INDEXED
    # BY): one B-tree descent a SKU instead of the key's index and then the table's row,
    # half the pages a 50-SKU read touches in a chain's cache (docs/PERFORMANCE.md).
    db.execute("CREATE INDEX IF NOT EXISTS products_read ON products (sku, category, excluded)")


def owner_hint(path: Path) -> str:
    """What a support engineer needs when a file or directory cannot be written: whose it
    is, against whom this process runs as ("" when they are the same, or it cannot say)."""
    import pwd

    def name(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    for candidate in (path, *path.parents):
        try:
            owner = candidate.stat().st_uid
        except OSError:
            continue
        if owner == os.geteuid():
            return ""
        return f" ({candidate} belongs to user {name(owner)}; this runs as {name(os.geteuid())})"
    return ""


# Below this much free space a file system is said to be full: SQLite needs a page or
# a shared-memory file (32 KiB) more than is left, and says only "disk I/O error".
FULL_DISK_BYTES = 1 << 20


def full_disk_hint(path: Path) -> str:
    """ "; the file system of DIR is full (N KiB free)" when the file system holding
    `path` (or the nearest directory of it that exists) has almost no space left for this
    process, else "". SQLite reports a full disk as "disk I/O error" when the file it
    could not grow is the WAL's shared memory, which every open of the cache and the
    ledger makes: support went looking for a broken disk."""
    for candidate in (path, *path.parents):
        try:
            fs = os.statvfs(candidate)
        except OSError:
            continue
        free = fs.f_bavail * fs.f_frsize
        if free >= FULL_DISK_BYTES or fs.f_blocks == 0:  # 0 blocks: it tells no size
            return ""  # (procfs, sysfs, some FUSE and network mounts), so not "full"
        where = candidate if candidate.is_dir() else candidate.parent
        return f"; the file system of {where} is full ({free // 1024} KiB free)"
    return ""


def file_size_limit_hint(path: Path) -> str:
    """ "; FILE reached this process's file size limit (N KiB: …)" when the process has
    a file size limit (RLIMIT_FSIZE: `ulimit -f`, systemd's `LimitFSIZE=`) and the
    database `path`, or its `-wal` or `-journal`, is within SQLite's largest page of it,
    else "". Python ignores SIGXFSZ, so such a write fails with EFBIG, which SQLite says
    as "disk I/O error" with space left on the disk: support went looking for a broken
    disk (review 39, ops39)."""
    return files_size_limit_hint(path, Path(f"{path}-wal"), Path(f"{path}-journal"))


def files_size_limit_hint(*paths: Path) -> str:
    """`file_size_limit_hint` for the first of `paths` within SQLite's largest page of
    the limit: a cache's build writes files of its own (the generation being built, its
    workers' parts), which the cache's name does not find (review 40, rev40c)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft == resource.RLIM_INFINITY:
        return ""
    for candidate in paths:
        try:
            size = candidate.stat().st_size
        except OSError:
            continue
        if size + 65536 + 24 > soft:  # a WAL frame: a 24-byte header and a page (≤ 64 KiB)
            return _limit_words(candidate, soft)
    return ""


def _limit_words(path: Path, soft: int) -> str:
    size = f"{soft // 1024} KiB" if soft >= 1024 else f"{soft} bytes"  # not "0 KiB"
    return (
        f"; {path} reached this process's file size limit ({size}:"
        " `ulimit -f`, or LimitFSIZE= in its systemd unit; the disk has room)"
    )


def too_large_hint(path: Path) -> str:
    """What a write refused as too large (EFBIG) adds: the process's file size limit and
    the file that reached it, or, with no limit set, its file system's largest file."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft == resource.RLIM_INFINITY:
        return f"; {path} is as large as its file system allows a file to be"
    return _limit_words(path, soft)


# The errors of a write that are the machine's, not the input's: no room, a quota, the
# file size limit, the device (exit 1, `StorageError`; a path or a mode that refuses is
# the input's, exit 2).
ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def no_space_hint(path: Path, exc: OSError) -> str:
    """What a write refused for space (ENOSPC, EDQUOT; EFBIG: the file size limit,
    `too_large_hint`) adds to the system's words: the
    file system of `path` is full and where (`full_disk_hint`), or, with space left by
    its count, that it has no room for this write (its inodes, the blocks kept for root)
    or that the user's quota is used up; "" for any other error. `run` on a full disk said
    "cannot use the data directory …: No space left on device" (review 32): support asked
    which disk."""
    if exc.errno == errno.EFBIG:  # the process's file size limit (review 40, rev40c)
        return too_large_hint(path)
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    where = next((p for p in (path, *path.parents) if p.is_dir()), path)
    if exc.errno == errno.EDQUOT:
        return f"; the disk quota of this user on {where} is used up"
    return full_disk_hint(path) or f"; the file system of {where} is full (no room for a file)"


def write_refused(path: Path, exc: OSError, what: str, then: str = "") -> TillpointError:
    """A file the user named (`--out`, `--png`, `--export`) that could not be written:
    the machine's fault (no room, a quota, the file size limit, the device: exit 1, a
    `StorageError` with what explains it) or the input's (a directory, a mode: exit 2).
    A full disk and `ulimit -f` said exit 2, as if the command had been given a wrong
    path (review 40, rev40c; CONTRACT §10's storage rule: a full disk is exit 1)."""
    said = f"{what}: {exc.strerror or exc}"
    if exc.errno in ROOM_ERRNOS:
        return StorageError(f"{said}{no_space_hint(path, exc)}{then}")
    return InputError(f"{said}{then}")


def file_of(conn: sqlite3.Connection) -> Path:
    """The file a connection has open (SQLite reports it with symlinks resolved)."""
    return Path(os.path.realpath(conn.execute("PRAGMA database_list").fetchone()[2]))


def _storage_error(
    conn: sqlite3.Connection, message: str, exc: sqlite3.Error, *, named: bool = False
) -> StorageError:
    """`message: exc` and what explains it (a file's owner, a full disk); `named`: the
    database's file named after `message` ("… of …/ledger.db")."""
    if named:
        with contextlib.suppress(sqlite3.Error):
            message = f"{message} of {file_of(conn)}"
    hint = ""
    if "readonly" in str(exc):  # SQLITE_READONLY: the file's owner or mode, or a read-only mount
        with contextlib.suppress(sqlite3.Error):
            hint = owner_hint(file_of(conn))
    else:  # a full disk, said as "database or disk is full" or as "disk I/O error"
        with contextlib.suppress(sqlite3.Error):
            hint = full_disk_hint(file_of(conn)) or file_size_limit_hint(file_of(conn))
    return StorageError(f"{message}: {exc}{hint}")


def storage_error(conn: sqlite3.Connection, message: str, exc: sqlite3.Error) -> StorageError:
    """`message: exc` and what explains it, for a write made outside `write_transaction`
    (`sync now`'s raw state records)."""
    return _storage_error(conn, message, exc)


@contextlib.contextmanager
def writes_until(deadline: float) -> Iterator[None]:
    """Within it, a write of this thread (`begin_write`) waits for another writer of its
    database no later than `deadline` (`time.monotonic`), nor longer than its connection's
    own busy timeout: `tillpoint sync now --timeout S`, whose one deadline held for every
    hub call but not for a ledger another process was writing (it waited SQLite's 5 s;
    review 38, rev38b). Not for `run`: its writes wait their 5 s; nor for another thread
    of the process (a hub, an agent: review 38's rev38f)."""
    token = _writes_until.set(deadline)
    try:
        yield
    finally:
        _writes_until.reset(token)


def begin_write(conn: sqlite3.Connection, *, wait: bool = True) -> None:
    """`BEGIN IMMEDIATE`, waiting for another writer no later than `writes_until`'s
    deadline when one is set (then not at all once it has passed): the connection's busy
    timeout lowered for that BEGIN only, then set back (rev38b's cut stayed on the
    connection, and raised a shorter one to 5 s: review 38's rev38f). `wait=False`: not
    at all (a write that may as well be left to the next call: SQLITE_BUSY at once)."""
    until = _writes_until.get()
    if wait and until is None:
        conn.execute("BEGIN IMMEDIATE")
        return
    own = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    left_ms = int(max(0.0, until - time.monotonic()) * 1000) if wait and until is not None else 0
    if left_ms >= own:
        conn.execute("BEGIN IMMEDIATE")
        return
    conn.execute(f"PRAGMA busy_timeout = {left_ms}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {own}")


@contextlib.contextmanager
def write_transaction(
    conn: sqlite3.Connection, what: str, *, wait: bool = True
) -> Iterator[sqlite3.Connection]:
    """One `BEGIN IMMEDIATE` write transaction on an autocommit connection.

    Anything raised inside rolls all of it back; SQLite's own errors (busy, disk full,
    a constraint) come out as one StorageError naming `what`, so callers see a readable
    refusal and know that nothing was stored. `wait=False`: another writer's transaction
    is not waited for (`begin_write`), refused busy at once.
    """
    yield from _transaction(
        conn,
        lambda: begin_write(conn, wait=wait),
        f"the {what} is busy or unavailable",
        f"the {what} could not be written, nothing was stored",
    )


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """One read transaction (a deferred `BEGIN`: one view of the file for every read
    inside) on an autocommit connection. SQLite's own errors ("disk I/O error", "database
    is locked" past the busy timeout, a damaged page) come out as one StorageError naming
    `what`, as `write_transaction`'s do: raw, a gRPC call of the hub reading its SQLite
    store answered UNKNOWN, as if the hub had answered, where its writes and every error
    of its PostgreSQL store answer UNAVAILABLE (review 56)."""
    yield from _transaction(
        conn,
        lambda: conn.execute("BEGIN"),
        f"the {what} is unavailable",
        f"the {what} could not be read",
    )


def _transaction(
    conn: sqlite3.Connection, begin: Callable[[], object], unbegun: str, failed: str
) -> Iterator[sqlite3.Connection]:
    """The body of `write_transaction` and `read_transaction`: begun, yielded, committed;
    anything raised inside rolls back, SQLite's own errors said as a StorageError (a
    rollback that fails after one, on a failing disk, does not hide it)."""
    try:
        begin()
    except sqlite3.Error as exc:
        raise _storage_error(conn, unbegun, exc) from None
    try:
        yield conn
    except sqlite3.Error as exc:
        _roll_back(conn)
        raise _storage_error(conn, failed, exc) from None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _roll_back(conn)
        raise _storage_error(conn, failed, exc) from None


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def connect(
    path: Path, *, readonly: bool = False, create: bool = True, checked: bool = False
) -> sqlite3.Connection:
    """An autocommit connection (explicit BEGIN/COMMIT), WAL, synchronous=FULL, busy timeout.

    `create=False` refuses a missing file instead of making an empty database there.
    Another program's database is refused (`refuse_foreign`) unless `checked`: a second
    connection to a file an earlier one opened (the WAL's checkpointer)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not readonly and not checked:
            refuse_foreign_wal(path)  # its -wal left as it is: no checkpoint at the close
        if readonly or not create:
            mode = "ro" if readonly else "rw"
            conn = sqlite3.connect(
                f"{Path(path).absolute().as_uri()}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly and not checked:
            refuse_foreign(conn, path)  # before WAL mode, tillpoint's first write to a file
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except (sqlite3.Error, OSError) as exc:
        read_only = None if readonly else read_only_part(path)
        if read_only is not None:
            raise ReadOnlyData(
                f"cannot open {path}: {exc}; {read_only} is read-only for this process"
                f" (a file system mounted read-only, or its mode){owner_hint(path)}"
            ) from None
        raise StorageError(
            f"cannot open {path}: {exc}{full_disk_hint(path) or file_size_limit_hint(path)}"
            f"{owner_hint(path)}"
        ) from None
    return conn


def foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables of `conn`'s file when it is another program's SQLite database: tables,
    and no ``_sqlite_migrations`` (every file tillpoint has made since its first release
    records its schema steps there, in the transaction that makes its first table), or
    one whose steps are all another program's (sqlite-utils' migrations keep that table
    too; tillpoint's sets have always been named ``tillpoint.*``: rev37f). An empty file,
    or one with no table yet, is a new one: []."""
    names = sorted(
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
    )
    if not names:
        return []
    if "_sqlite_migrations" in names:
        sets = conn.execute(
            "SELECT count(*), count(CASE WHEN migration_set LIKE 'tillpoint.%' THEN 1 END)"
            " FROM _sqlite_migrations"
        ).fetchone()
        if not sets[0] or sets[1]:  # tillpoint's steps (or none recorded yet): its own
            return []
    return names


HUB_STORE_HINT = "name the hub's own store (--store, TILLPOINT_HUB_STORE or --hub-dir)"


SQLITE_HEADER = b"SQLite format 3\x00"


def _read_only(path: Path, *, as_written: bool = False) -> sqlite3.Connection:
    """A read-only connection to `path` for a look before tillpoint writes: it never
    checkpoints another program's ``-wal`` on close, nor creates the file. `as_written`:
    the file's pages as they are, its ``-journal`` ignored (SQLite's `immutable`): a hot
    journal is rolled back by a connection's first read, which a read-only one cannot
    do ("attempt to write a readonly database")."""
    options = "mode=ro&immutable=1" if as_written else "mode=ro"
    return sqlite3.connect(f"{path.absolute().as_uri()}?{options}", uri=True)


def refuse_not_sqlite(path: Path) -> None:
    """ForeignDatabase (exit 2) when the hub's store `path` is a file that is no SQLite
    database at all (another program's, a path named by mistake): it was "file is not a
    database", exit 1, and `hub serve`'s unit restarted for ever (review 38, rev38c). The
    till's own files say "damaged" instead (`DamagedLedger`, `DamagedCache`).

    Asked of SQLite over a read-only connection, never by opening the file here: a
    descriptor of a database file that the process opens and closes drops every POSIX
    lock its SQLite connections hold on it (SQLite's own connections share them). The
    hub's gRPC threads each open a connection: a live hub dropped its writers' locks
    (a release from a till of the release before was lost: review 33's rel33 test)."""
    try:
        probe = _read_only(path)
    except (OSError, sqlite3.Error):  # missing (a new store), or unreadable: the open says
        return
    try:
        probe.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc):
            return  # busy, locked, unreadable: the connection that follows says why
    else:
        return
    finally:
        probe.close()
    try:  # no SQLite database: nothing of SQLite's holds a lock on it
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError:
        head = b""
    raise ForeignDatabase(
        f"{path} is not an SQLite database (it begins {head[:8]!r}): another program's"
        " file, or a hub database damaged beyond reading; it is left as it was;"
        f" {HUB_STORE_HINT}, or restore the hub database from its backup"
    )


def refuse_foreign_wal(path: Path, *, hub: bool = False) -> None:
    """`refuse_foreign` of a file with a ``-wal`` or a ``-journal`` beside it (another
    program stopped before its last checkpoint, or in the middle of a write), asked over
    a read-only connection: the refusing connection checkpointed that ``-wal`` into the
    file and removed it as the file's last to close (review 38, rev38c), and rolled a hot
    ``-journal`` back into the file at its first read and deleted it (review 39, rev39d):
    the file changed under "left as it was". A journal's file is read as written (its
    journal ignored: only the tables' names are read). A file that cannot be read so is
    left to the connection that follows to say why."""
    wal = path.with_name(path.name + "-wal")
    journal = path.with_name(path.name + "-journal")
    try:
        if _has_bytes(wal):
            probe = _read_only(path)
        elif _has_bytes(journal):
            probe = _read_only(path, as_written=True)
        else:
            return
    except (OSError, sqlite3.Error):
        return
    try:
        probe.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        refuse_foreign(probe, path, hub=hub)
    except sqlite3.Error:
        pass
    finally:
        probe.close()


def _has_bytes(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def refuse_foreign_file(path: Path) -> None:
    """`refuse_foreign` of an existing file looked at read only (nothing made, nothing
    changed): a till's cache file before a new ledger is made beside it (review 39)."""
    try:
        if not path.is_file():
            return
        probe = _read_only(path, as_written=not _has_bytes(path.with_name(path.name + "-wal")))
    except (OSError, sqlite3.Error):
        return
    try:
        refuse_foreign(probe, path)
    except sqlite3.Error:
        pass  # busy, damaged, not SQLite: the cache's own opening says why
    finally:
        probe.close()


def refuse_foreign(conn: sqlite3.Connection, path: Path | str, *, hub: bool = False) -> None:
    """ForeignDatabase (exit 2), `conn` closed, when `path` is another program's SQLite
    database: tillpoint would write its own tables into it (review 37: it did, and a
    snapshot's load replaced such a ``cache.db``, that program's data gone)."""
    tables = foreign_tables(conn)
    if not tables:
        return
    conn.close()
    shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    name = Path(path).name
    if hub:
        what, where = "hub database", HUB_STORE_HINT
    elif name == "ledger.db" or name == CACHE or name.startswith("cache-"):
        what = "ledger" if name == "ledger.db" else "cache"
        where = (
            "name a data directory of tillpoint's own"
            " (--data-dir, TILLPOINT_DATA_DIR or data_dir in the configuration names it)"
        )
    else:
        what, where = "database", "check the path"
    raise ForeignDatabase(
        f"{path} is another program's SQLite database (its tables: {shown}), not a tillpoint"
        f" {what}: it is left as it was; {where}"
    )


def read_only_part(path: Path) -> Path | None:
    """The file `path`, or the nearest directory it lies in (or would be made in), when this
    process may not write it: SQLite said only "unable to open database file"."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not os.access(candidate, os.W_OK):
                return candidate
            if candidate == path:
                continue  # the file is writable: its directory (for -wal and -shm)?
            return None
    return None


def migrate(conn: sqlite3.Connection, migrations: MigrationSet) -> None:
    """Apply `migrations`' pending steps to `conn`'s file.

    Two connections may migrate one file at once: after an upgrade, `tillpoint run`'s
    readers and a CLI or `snapshot load` open the same cache. So the pending steps are
    applied under the file's write lock (`BEGIN IMMEDIATE`) and looked for again once it
    is held: the second connection waits for the first and finds its work done, instead
    of failing on the first's record (unique). The steps commit together, each in its
    own savepoint (sqlite-utils nests them in the open transaction); a failure rolls all
    of them back and is reported as it happened."""
    try:
        if migrations.current(conn):  # the usual case: one SELECT, no lock
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not migrations.current(conn):
                migrations.apply(conn)
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        # the file named, and a full disk said as one (a fresh till's first start on a
        # full disk said "cannot migrate the database schema: database or disk is full")
        raise _storage_error(conn, "cannot migrate the database schema", exc, named=True) from None


def is_damage(text: str) -> bool:
    """Whether SQLite's words say a file is damaged (not a constraint, a lock or a busy
    disk, which keep their own handling)."""
    return "malformed" in text or "not a database" in text


def damaged_cache(data_dir: Path, what: str) -> DamagedCache:
    """What a till says of a cache file SQLite finds damaged: the cache is only a copy of
    the hub's data, and the way out is to make it again."""
    return DamagedCache(
        f"the cache in {data_dir} is damaged ({what}); it is a copy of the hub's data:"
        f" stop tillpoint, delete {Path(data_dir) / 'cache'}*.db*, and load a full snapshot"
        " again (`tillpoint snapshot load FILE`, or start it enrolled: it pulls one)"
    )


def cache_file(data_dir: Path) -> Path:
    """The current cache file: the generation ``cache.db`` points to, or ``cache.db`` itself."""
    return Path(os.path.realpath(Path(data_dir) / CACHE))


def open_cache(data_dir: Path) -> sqlite3.Connection:
    """A connection to the current generation of the cache (migrated).

    The symlink is resolved here and the generation opened by its own name, without
    creating it: if a switch and a clean-up removed it in between, resolve again. The
    same when an older install's plain ``cache.db`` (or a fresh till's empty one) was
    opened by name just as the first full apply switched it to a generation and removed
    its -wal and -shm: SQLite says "unable to open database file", and the cache is fine."""
    for _ in range(5):
        path = cache_file(data_dir)
        generation = path.name != CACHE
        try:
            conn = connect(path, create=not generation)
        except StorageError as exc:
            if _switched(data_dir, path):
                continue
            if is_damage(exc.message):  # its first page: "file is not a database"
                raise damaged_cache(data_dir, exc.message) from None
            raise
        try:
            migrate(conn, cache_migrations)
        except StorageError as exc:
            conn.close()
            if _switched(data_dir, path):
                continue
            if is_damage(exc.message):
                raise damaged_cache(data_dir, exc.message) from None
            raise
        except BaseException:
            conn.close()
            raise
        return conn
    link = Path(data_dir) / CACHE
    if link.is_symlink() and not link.exists():
        # not a switch in progress: its generation is gone (deleted by hand, a restore
        # without it), and every call said "it keeps being replaced", the way out untold
        raise damaged_cache(data_dir, f"{CACHE} points to {os.readlink(link)}, which is missing")
    raise StorageError(f"cannot open the cache in {data_dir}: it keeps being replaced")


def _switched(data_dir: Path, path: Path) -> bool:
    """Whether `path`, resolved a moment ago, is no longer the current cache (a switch came
    between): a failure to open it says nothing of the cache."""
    generation = path.name != CACHE
    return (generation and not path.exists()) or cache_file(data_dir) != path


def cache_identity(data_dir: Path | str) -> tuple[str | None, int, int]:
    """What ``cache.db`` is now: the symlink's target (None for a plain file) and the
    file's device and inode. Two system calls, cheap enough to check before every read
    (`LiveCache` passes the path as a string: building a `Path` cost more than both)."""
    path = os.path.join(data_dir, CACHE)
    try:
        target: str | None = os.readlink(path)
    except OSError:
        target = None
    try:
        st = os.stat(path)
    except OSError:
        return (target, 0, 0)
    return (target, st.st_dev, st.st_ino)


class LiveCache:
    """The agent's long-lived cache connection, moved to a new generation when one is
    switched in (by this process or another, say `tillpoint snapshot load`).

    `connection()` costs a readlink and a stat; after a switch it opens the new generation
    and closes the old connection. Call it with the agent's lock held.

    A generation this release cannot open (a later release's `snapshot load` during an
    upgrade in place, a file being replaced) leaves the connection on the one it reads,
    tried again after `RETRY_S`, and said once. A new connection given `fallback` (the
    generation the agent reads) starts there when the current one is refused, so every
    call of the agent prices from the same data rather than some refused, and tries the
    current one again after `RETRY_S` as well."""

    RETRY_S = 10.0

    def __init__(
        self, data_dir: Path, cache_kib: int | None = None, *, fallback: Path | None = None
    ) -> None:
        """`cache_kib`: the connection's page cache (SQLite's default: 2,000 KiB)."""
        self.data_dir = Path(data_dir)
        self.cache_kib = cache_kib
        self._dir = str(self.data_dir)
        self._identity = cache_identity(self._dir)  # before opening: never misses a switch
        self._refused: tuple[str | None, int, int] | None = None
        self._retry_at = 0.0
        try:
            self._conn = self._open()
        except StorageError as exc:
            if fallback is None:
                raise
            try:
                self._conn = self._open(fallback)
            except StorageError:
                raise exc from None
            self._refuse(self._identity, exc)
            # what cache.db would be were it still the fallback: the refused one differs,
            # so `connection()` tries it again after `RETRY_S` as the agent's own does
            try:
                st = os.stat(fallback)
                self._identity = (fallback.name, st.st_dev, st.st_ino)
            except OSError:  # removed since it was opened: any identity but the refused one
                self._identity = (fallback.name, 0, 0)
        self.path = file_of(self._conn)
        remove_replaced_plain_wal(self.data_dir)  # an earlier release's leftovers

    def _open(self, path: Path | None = None) -> sqlite3.Connection:
        if path is None:
            conn = open_cache(self.data_dir)
        else:  # a generation by its own name: it exists and was migrated when first read
            conn = connect(path, create=False)
            try:
                migrate(conn, cache_migrations)
            except BaseException:
                conn.close()
                raise
        if self.cache_kib is not None:
            conn.execute(f"PRAGMA cache_size = -{int(self.cache_kib)}")
        return conn

    def connection(self) -> sqlite3.Connection:
        now = cache_identity(self._dir)
        if now != self._identity and (now != self._refused or time.monotonic() >= self._retry_at):
            try:
                fresh = self._open()
            except StorageError as exc:
                self._refuse(now, exc)
                return self._conn
            old, self._conn, self._identity = self._conn, fresh, now
            replaced, self.path, self._refused = self.path, file_of(fresh), None
            with contextlib.suppress(sqlite3.Error):
                old.close()
            if replaced.name == CACHE:  # the plain cache.db the first full apply replaced
                remove_replaced_plain_wal(self.data_dir)
        return self._conn

    def _refuse(self, identity: tuple[str | None, int, int], exc: StorageError) -> None:
        self._refused, self._retry_at = identity, time.monotonic() + self.RETRY_S
        with _REFUSALS_LOCK:
            if identity in _REFUSALS_SAID:
                return
            if len(_REFUSALS_SAID) >= 16:
                _REFUSALS_SAID.clear()
            _REFUSALS_SAID.add(identity)
        log.warning(
            "the new cache generation cannot be read; pricing from the one before: %s", exc.message
        )

    def close(self) -> None:
        self._conn.close()
        if self.path.name == CACHE:  # perhaps the last connection to a replaced plain file
            remove_replaced_plain_wal(self.data_dir)


# The refused generations already said in the log (`LiveCache._refuse`), by identity.
_REFUSALS_SAID: set[tuple[str | None, int, int]] = set()
_REFUSALS_LOCK = threading.Lock()


def new_generation(data_dir: Path, version: int) -> tuple[Path, Path]:
    """Names for a full snapshot's build: the temporary file and the generation it becomes."""
    final = Path(data_dir) / f"cache-{version}-{secrets.token_hex(4)}.db"
    return final.with_name(final.name + BUILDING), final


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_cache(data_dir: Path, generation: Path) -> None:
    """Point ``cache.db`` at `generation` in one atomic step (a new symlink renamed over the
    old name), then make the directory entry durable. Connections already open keep
    reading the file they have; new ones, and the agent's next read, get `generation`."""
    data_dir = Path(data_dir)
    link = data_dir / f".{CACHE}.{secrets.token_hex(4)}.link"
    os.symlink(generation.name, link)
    try:
        os.replace(link, data_dir / CACHE)
    except OSError:
        link.unlink(missing_ok=True)
        raise
    fsync_path(data_dir)


def _cache_files(data_dir: Path) -> Iterator[Path]:
    """Every file of the cache but ``cache.db``: generations, their -wal/-shm, builds and
    their part files, and the -wal/-shm of an older install's plain ``cache.db``."""
    for path in Path(data_dir).iterdir():
        name = path.name
        base = name.removesuffix("-wal").removesuffix("-shm").removesuffix("-journal")
        built = base.removesuffix(BUILDING)
        if GENERATION.match(built) or PART.match(built) or (base == CACHE and name != CACHE):
            yield path


def remove_stale_builds(data_dir: Path) -> None:
    """Builds left by an apply that crashed or failed (call it holding the cache's write
    lock: nobody else is building then)."""
    for path in _cache_files(data_dir):
        if BUILDING in path.name:
            path.unlink(missing_ok=True)
    for path in Path(data_dir).glob(f".{CACHE}.*.link"):  # a switch cut short
        path.unlink(missing_ok=True)


def remove_old_generations(data_dir: Path, keep: set[Path]) -> None:
    """Delete every generation but those in `keep` (the current one and the one before).

    The one before is kept because a reader may have resolved ``cache.db`` to it just
    before the switch and be about to open it. Older ones are unlinked even if a
    connection still has them: on Linux an open file lives on, its -wal and -shm too,
    and no new connection can reach them (generation names are never reused)."""
    kept = {k.name for k in keep}
    for path in _cache_files(data_dir):
        base = path.name.removesuffix("-wal").removesuffix("-shm").removesuffix("-journal")
        if base not in kept:
            path.unlink(missing_ok=True)


# How long a reset waits for `cache_switch_lock` (its other holders hold it for a check
# and two unlinks) before it goes on without it.
CACHE_SWITCH_WAIT_S = 10.0


@contextlib.contextmanager
def cache_switch_lock(data_dir: Path, wait_s: float) -> Iterator[bool]:
    """An exclusive flock of the data directory while the plain ``cache.db`` changes hands:
    `reset` holds it while it removes the cache and makes a fresh plain one, and
    `remove_replaced_plain_wal` while it checks and unlinks the replaced file's -wal and
    -shm (review 33: a reset between that check and the unlink had its fresh cache's
    -wal and -shm unlinked from under its live connection). Yields whether it was taken
    within `wait_s` (0: one try); not taken, the caller decides (the removal skips, a reset
    goes on). The holders are short: one directory check and two unlinks, or a reset's
    switch. (`files.create_once` locks the directory too, on a file system without hard
    links, around one rename.)"""
    from .lock import flock_within

    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False
        return
    try:
        try:
            taken = flock_within(fd, wait_s)
        except OSError:  # a file system without locks
            taken = False
        yield taken
    finally:
        os.close(fd)  # the lock with it


def remove_replaced_plain_wal(data_dir: Path) -> None:
    """The ``cache.db-wal`` and ``cache.db-shm`` of a plain ``cache.db`` (a fresh till's
    first, an older install's) that a full apply has replaced by the symlink: SQLite does
    not remove them when the last connection to a file no longer under its name closes
    (it checkpoints and empties the -wal, 0 bytes), and no new connection can reach them
    (it opens the generation by its own name). Removed once the -wal is empty: a non-empty
    one may still hold frames a connection opened before the switch reads (it waits for
    that connection's close, or for the next full apply). Call it after closing the
    connection to the replaced file; anything that fails leaves them for the next call.
    The check and the unlink hold `cache_switch_lock` (one try: a reset at work has it,
    and then they are left for the next call)."""
    data_dir = Path(data_dir)
    if not (data_dir / CACHE).is_symlink():
        return  # the plain file is the cache: its -wal and -shm are in use
    with cache_switch_lock(data_dir, 0) as taken:
        if not taken or not (data_dir / CACHE).is_symlink():
            return
        wal = data_dir / f"{CACHE}-wal"
        try:
            if wal.stat().st_size:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        with contextlib.suppress(OSError):
            wal.unlink(missing_ok=True)
            (data_dir / f"{CACHE}-shm").unlink(missing_ok=True)


def remove_cache(data_dir: Path) -> None:
    """Every cache file: ``cache.db`` (a link or a file) and all generations."""
    for path in _cache_files(data_dir):
        path.unlink(missing_ok=True)
    (Path(data_dir) / CACHE).unlink(missing_ok=True)


def phone_secret(data_dir: Path) -> bytes:
    """The till's key for phone hashes, made once (0600, `files.create_once`)."""
    import secrets

    from .files import create_once, remove_stale_temps

    path = data_dir / "phone.key"
    # a maker killed while it wrote (SIGKILL, power loss) left its temporary file: removed
    # when no live process writes it (review 33)
    if remove_stale_temps(data_dir, path.name + ".", ".tmp"):
        log.info("removed a temporary file of %s a stopped process had left", path)
    try:
        return _phone_key_of(path)
    except FileNotFoundError:
        pass

    data_dir.mkdir(parents=True, exist_ok=True)
    # made whole under a name of its own and linked: a key another process made meanwhile
    # stands, and both read that one (review 31: the shared "phone.tmp" was truncated and
    # linked by both, and one process could read a key the other was still writing)
    try:
        create_once(path, secrets.token_hex(32).encode(), mode=0o600)
    except OSError as exc:  # a full disk at a fresh till's start: one line, not a trace
        raise StorageError(
            f"cannot make {path}: {exc.strerror or exc}{no_space_hint(path, exc)}"
        ) from None
    return _phone_key_of(path)


_PHONE_KEY = re.compile(r"[0-9a-fA-F]{64}")


def _phone_key_of(path: Path) -> bytes:
    """The key `phone_secret` wrote at `path`: 64 hexadecimal digits (32 bytes; a blank
    around them is taken). Anything else is a damaged file, said as one (exit 1 to a
    command, exit 2 to `run` at start: no restart mends it): until review 32 it said
    `bytes.fromhex`'s words ("non-hexadecimal number found in fromhex() arg at position
    0"), and a key cut short was taken and found no phone. FileNotFoundError: none yet."""
    try:
        text = path.read_bytes().decode("ascii", "replace").strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not _PHONE_KEY.fullmatch(text):
        raise DamagedCache(
            f"{path} is damaged (not the 64 hexadecimal digits tillpoint wrote); it keys the"
            " cache's phone look-ups only: stop tillpoint, delete it, and load a full"
            " snapshot again (`tillpoint snapshot load FILE`, or start it enrolled: it"
            " pulls one)"
        )
    return bytes.fromhex(text)


class Checkpointer:
    """Copies the ledger's WAL into its database file off the sale path.

    SQLite's automatic checkpoint runs inside the commit that crosses 1000 WAL pages:
    about one checkout in a hundred then also writes and fsyncs the database file, which
    is the checkout's p99. The agent's ledger connection turns it off and tells this
    thread about each commit; the thread checkpoints (PASSIVE: it never blocks a writer)
    after `every_commits` commits or `every_s` seconds, on its own connection. If the
    thread is gone, the WAL only grows until the last connection closes (SQLite then
    checkpoints), so nothing is ever at risk: the WAL is as durable as the database.
    """

    def __init__(self, path: Path, every_commits: int = 1000, every_s: float = 1.0) -> None:
        import threading

        self.path = path
        self.every_commits = every_commits
        self.every_s = every_s
        self._commits = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._threading = threading

    def committed(self) -> None:
        self._commits += 1
        if self._thread is None:
            self._thread = self._threading.Thread(
                target=self._run, name="ledger-checkpoint", daemon=True
            )
            self._thread.start()
        if self._commits >= self.every_commits:
            self._wake.set()

    def _run(self) -> None:
        try:
            conn = connect(self.path, checked=True)
        except StorageError:
            log.warning("ledger checkpoints: cannot open %s", self.path, exc_info=True)
            return
        try:
            while not self._stop.is_set():
                self._wake.wait(self.every_s)
                self._wake.clear()
                if self._commits:
                    self._commits = 0
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error as exc:  # e.g. a full disk: the WAL just waits
                        log.warning("ledger checkpoint failed (%s); retried later", exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
