"""The snapshot cache (the contract §3): apply full and delta snapshots atomically, read them."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from pydantic import TypeAdapter

from .db import (
    BUILDING,
    CACHE,
    cache_file,
    cache_migrations,
    file_of,
    fsync_path,
    migrate,
    new_generation,
    open_cache,
    remove_old_generations,
    remove_replaced_plain_wal,
    remove_stale_builds,
    switch_cache,
    write_transaction,
)
from .errors import InputError, SnapshotRefused, StorageError, one_line
from .identify import normalise, phone_key
from .models import (
    LINE_KINDS,
    ROW_MODELS,
    STORED,
    CardRecord,
    Category,
    Coupon,
    Customer,
    Model,
    Offer,
    Product,
    Program,
    Removed,
    Snapshot,
    SnapshotHeader,
)

T = TypeVar("T")
_BATCH = 5000
# Customers whose parsed personal offers are kept (per snapshot version): a till sees the
# same few customers again within minutes (a quote, then the checkout, a hold, a refund).
PERSONAL_OFFERS_KEPT = 64
# Open receipts whose products' rows are kept (`CacheView.products`): a till has one, or
# a few put aside; and the SKUs kept for one receipt, at most.
RECEIPTS_KEPT = 8
SKUS_KEPT = 1_000
# The page cache of a full snapshot's build (KiB): the primary-key indexes of millions of
# rows take random inserts; the agent's memory ceiling during an apply is 150 MB. At store
# scale 16 and 32 MB took the same time; 32 MB cost 16 MB more RSS.
_BUILD_CACHE_KIB = 16_000
# A build writes without fsyncs; left alone, the kernel would hold gigabytes of its dirty
# pages and write them in bursts (or at its final fsync), and a checkout's fsync of the
# ledger on the same file system would wait behind them. Every this many batches the
# build's written pages are flushed (fdatasync), so only a few MB are ever pending.
_BUILD_SYNC_BATCHES = 10
log = logging.getLogger("tillpoint.agent")


# A row tuple of SQLite as a NamedTuple, with no Python call (`tuple.__new__`).
_row = tuple.__new__


class ProductRow(NamedTuple):
    """What pricing needs of a product; a plain row, cheap to build 50 times a receipt.
    (Not its name: no quote reads it, and its text was ≈ 15 % of a 50-SKU read.)"""

    sku: str
    category: str
    excluded_from_loyalty: bool


@dataclass(frozen=True)
class CacheInfo:
    version: int
    issued_at: str | None
    expires_at: str | None
    loaded_at: str | None
    unchanged: bool = False  # the very snapshot the cache holds, loaded again: nothing done
    # fields and sections the contract does not define, left out ("customers[].lastName")
    ignored: tuple[str, ...] = ()

    def naming(self, ignored: Collection[str]) -> CacheInfo:
        """This, naming what the load left out (sorted), when it left out anything."""
        return replace(self, ignored=tuple(sorted(ignored))) if ignored else self


def ignored_note(ignored: Sequence[str], shown: int = 10) -> str:
    """What a snapshot's load says of the fields and sections it left out, on one line:
    the names are the snapshot's own keys (a line break, a terminal's escape sequence or
    a key of any length written as `one_line` writes a message, each cut to 80)."""
    from .config import shorten  # the one "cut with an ellipsis"; config only when warning

    names = ", ".join(shorten(one_line(name), 79) for name in ignored[:shown]) + (
        f" and {len(ignored) - shown} more" if len(ignored) > shown else ""
    )
    return (
        f"the snapshot has fields this version of tillpoint does not know, left out (not"
        f" stored): {names}. A misspelt one: mend the snapshot and load it again; a newer"
        f" hub's: they count once the till is upgraded"
    )


def phone_index(phone: str, secret: bytes) -> str:
    """A keyed hash of the canonical phone: the cache never holds a phone number itself.

    HMAC-SHA256 (RFC 2104) from the key's two padded states, hashed once per key: a full
    snapshot hashes a million phones, and `hmac.new` per phone costs three times this."""
    inner, outer = _hmac_states(secret)
    h = inner.copy()
    h.update(phone.encode())
    o = outer.copy()
    o.update(h.digest())
    digest: str = o.hexdigest()
    return digest


@functools.lru_cache(maxsize=8)
def _hmac_states(secret: bytes) -> tuple[Any, Any]:
    key = (hashlib.sha256(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


# A snapshot row on its way to the cache: its section, the validated row, and the row's
# JSON text when the caller already has it (a streamed snapshot), so it is not re-encoded.
Row = tuple[str, Model, str | None]


def rows_of(snap: Snapshot) -> Iterator[Row]:
    for section in ROW_MODELS:
        for row in getattr(snap, section):
            yield section, row, None


def apply(
    data_dir: Path,
    header: SnapshotHeader,
    rows: Iterable[Row],
    now: datetime,
    secret: bytes,
    make: Callable[[Path], CacheInfo] | None = None,
) -> CacheInfo:
    """Apply a snapshot to the till's cache: all of it or none of it.

    The cache's write lock (a `BEGIN IMMEDIATE` on the current generation) is held
    throughout, so applies from different processes (`tillpoint run` pulling,
    `tillpoint snapshot load`) take turns. A delta is applied in place in that one
    transaction. A full snapshot is built into a new generation file and switched in
    (`_build`, `db.switch_cache`); readers keep the old generation until the switch, and
    a bad row anywhere discards the build. An older or equal version is refused.

    `make(tmp)`, when given, builds a full snapshot's generation at `tmp` instead of
    writing `rows` (`cache_build`: the rows validated and written by child processes).
    """
    for _ in range(5):
        conn = open_cache(data_dir)
        try:
            if header.is_full and file_of(conn).name == CACHE:
                # a plain cache.db (a fresh till's, an older install's) this apply replaces:
                # its -wal emptied first, so that its names can go after the switch while
                # another process still has the file open (`remove_replaced_plain_wal`)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with write_transaction(conn, "cache"):
                current = file_of(conn)
                if current != cache_file(data_dir):
                    continue  # switched while this waited for the lock: take the new one
                if _loaded_already(conn, header):
                    return replace(info(conn), unchanged=True)
                _check(header, _version(conn))
                if not header.is_full:
                    _fill(conn, header, rows, now, secret)
                    return info(conn)
                serial = functools.partial(_make, header=header, rows=rows, now=now, secret=secret)
                built, loaded = _build(data_dir, header, make or serial)
                try:
                    switch_cache(data_dir, built)
                except OSError as exc:
                    built.unlink(missing_ok=True)
                    raise StorageError(
                        f"cannot switch the cache to the new snapshot: {exc}"
                    ) from None
                try:
                    remove_old_generations(data_dir, keep={built, current})
                except OSError as exc:  # the switch is done; old files wait for the next one
                    log.warning("old cache generations were not removed: %s", exc)
                return loaded
        finally:
            conn.close()
            # the -wal and -shm of a plain cache.db this apply replaced (the first full
            # snapshot of a fresh till): its connection, just closed, was the last
            remove_replaced_plain_wal(data_dir)
    raise StorageError("the cache is busy: it kept being replaced while this waited")


def _loaded_already(conn: sqlite3.Connection, header: SnapshotHeader) -> bool:
    """The snapshot the cache holds, loaded again (its version and `issuedAt`): §3 refuses
    an older version, and a seeding script that loads the same file twice must not fail.
    Another snapshot under the same version (another `issuedAt`, or none) is refused."""
    return holds(conn, header.version, header.issued_at)


def holds(conn: sqlite3.Connection, version: int, issued_at: datetime | None) -> bool:
    """Whether the cache holds the snapshot of this version and `issuedAt` (none: never)."""
    return (
        issued_at is not None
        and version == _version(conn)
        and _get(conn, "issued_at") == issued_at.isoformat()
    )


def _check(header: SnapshotHeader, current: int) -> None:
    if header.version <= current:
        raise SnapshotRefused(
            f"snapshot version {header.version} is not newer than the cache's {current}"
        )
    if not header.is_full and header.base_version != current:
        raise SnapshotRefused(
            f"delta snapshot {header.version} applies on version {header.base_version},"
            f" but the cache is at version {current}: a full snapshot is needed"
        )


def _build(
    data_dir: Path, header: SnapshotHeader, make: Callable[[Path], CacheInfo]
) -> tuple[Path, CacheInfo]:
    """A full snapshot as a new generation file, complete and durable, not yet switched in.

    `make(tmp)` writes it under a temporary name with no journal and no fsyncs (a crash
    leaves only that file, and part files beside it, which the next apply deletes); then
    it is fsynced and renamed to its generation name. Anything raised deletes it.
    """
    remove_stale_builds(data_dir)
    tmp, final = new_generation(data_dir, header.version)
    try:
        loaded = make(tmp)
        fsync_path(tmp)
        os.rename(tmp, final)  # nobody has it open; the switch fsyncs the directory
    except (sqlite3.Error, OSError) as exc:
        hint = build_hint(tmp)  # before the files it reads are deleted
        _discard(tmp, final)
        raise StorageError(
            f"the cache could not be written, nothing was stored: {exc}{hint}"
        ) from None
    except BaseException:
        _discard(tmp, final)
        raise
    return final, loaded


def build_hint(tmp: Path) -> str:
    """What explains a build's failed write (SQLite says "disk I/O error" for both): the
    data directory's file system is full, or the build's file, or a worker's part,
    reached the process's file size limit (`ulimit -f`, LimitFSIZE=): a snapshot too big
    for it said only "disk I/O error" (review 40, rev40c; ops39 named the limit for the
    ledger, whose name the cache's build files do not have)."""
    from .db import files_size_limit_hint, full_disk_hint

    base = tmp.name.removesuffix(BUILDING)
    files = [tmp, *sorted(tmp.parent.glob(f"{base}.part*"))]
    return full_disk_hint(tmp) or files_size_limit_hint(*files)


class Settle:
    """Called after each batch of a build: every `_BUILD_SYNC_BATCHES` calls the file's
    written pages are flushed (fdatasync), so only a few MB are ever pending."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._batches = 0

    def __call__(self) -> None:
        self._batches += 1
        if _BUILD_SYNC_BATCHES and self._batches % _BUILD_SYNC_BATCHES == 0:
            os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def open_build(path: Path) -> sqlite3.Connection:
    """A connection to a build file: no journal, no fsyncs (`Settle` flushes), the build's
    page cache."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"PRAGMA cache_size = -{_BUILD_CACHE_KIB}")
    except BaseException:
        conn.close()
        raise
    return conn


def write_part(path: Path, rows: Iterable[Row], secret: bytes) -> None:
    """A new build file at `path` holding `rows`: the cache's schema (from the migrations)
    without its secondary indexes (`index_sql` has them), the rows in one transaction."""
    conn = open_build(path)
    settle = Settle(path)
    try:
        migrate(conn, cache_migrations)
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall():
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("BEGIN")
        _write_rows(conn, rows, secret, replace=False, after_batch=settle)
        conn.execute("COMMIT")
    finally:
        conn.close()
        settle.close()


@functools.lru_cache(maxsize=1)
def index_sql() -> tuple[str, ...]:
    """The cache's secondary indexes, as the migrations create them."""
    conn = sqlite3.connect(":memory:")
    try:
        migrate(conn, cache_migrations)
        return tuple(
            sql
            for (sql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        )
    finally:
        conn.close()


def finish_build(conn: sqlite3.Connection, header: SnapshotHeader, now: datetime) -> CacheInfo:
    """The snapshot's meta and the secondary indexes into a build holding its rows; WAL."""
    conn.execute("BEGIN")
    _write_meta(conn, header, now)
    for sql in index_sql():
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    return info(conn)


def _make(
    tmp: Path, *, header: SnapshotHeader, rows: Iterable[Row], now: datetime, secret: bytes
) -> CacheInfo:
    """The in-process build: every row validated and written here."""
    write_part(tmp, rows, secret)
    conn = open_build(tmp)
    try:
        return finish_build(conn, header, now)
    finally:
        conn.close()


def _discard(*paths: Path) -> None:
    for path in paths:
        for part in path.parent.glob(f"{path.name.removesuffix(BUILDING)}.part*"):
            part.unlink(missing_ok=True)  # the part files of a parallel build
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                path.with_name(path.name + suffix).unlink(missing_ok=True)


def _fill(
    conn: sqlite3.Connection,
    header: SnapshotHeader,
    rows: Iterable[Row],
    now: datetime,
    secret: bytes,
) -> None:
    """A delta's removals, rows and meta, inside the caller's transaction (a full
    snapshot is built into a new generation instead: `_build`)."""
    _remove(conn, header.removed)
    _write_rows(conn, rows, secret, replace=True)
    _write_meta(conn, header, now)


def _write_meta(conn: sqlite3.Connection, header: SnapshotHeader, now: datetime) -> None:
    """The program, appliedThrough, version and times of a snapshot."""
    if header.program is not None or header.is_full:
        program = header.program or Program()
        _set(conn, "program", program.model_dump_json(by_alias=True))
    for device, seq in header.applied_through.items():
        conn.execute(
            "INSERT INTO applied_through VALUES (?, ?) ON CONFLICT (device_id)"
            " DO UPDATE SET seq = max(seq, excluded.seq)",
            (device, seq),
        )
    _set(conn, "version", str(header.version))
    _set(conn, "issued_at", header.issued_at.isoformat() if header.issued_at else "")
    _set(conn, "expires_at", header.expires_at.isoformat() if header.expires_at else "")
    _set(conn, "loaded_at", now.isoformat())


def _remove(conn: sqlite3.Connection, removed: Removed) -> None:
    for table, key, keys in (
        ("cards", "number", removed.cards),
        ("customers", "id", removed.customers),
        ("offers", "id", removed.offers),
        ("products", "sku", removed.products),
        ("categories", "code", removed.categories),
        ("coupons", "code", removed.coupons),
    ):
        conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", ((k,) for k in keys))


_COLUMNS = {
    "categories": 3,
    "products": 4,
    "customers": 3,
    "cards": 3,
    "offers": 3,
    "coupons": 3,
}


def _params(section: str, row: Model, raw: str | None, secret: bytes) -> tuple[object, ...]:
    # Most rows are offers, then cards and customers: test in that order.
    if isinstance(row, Offer):
        return (row.id, row.customer_id, raw or row.model_dump_json(by_alias=True))
    if isinstance(row, CardRecord):
        return (row.number, row.customer_id, row.status)
    if isinstance(row, Customer):
        return (row.id, _phone_column(row.phone, secret), _customer_doc(row, raw))
    if isinstance(row, Product):
        return (row.sku, row.name, row.category, int(row.excluded_from_loyalty))
    if isinstance(row, Category):
        return (row.code, row.parent, row.name)
    if isinstance(row, Coupon):
        return (row.code, row.customer_id, row.model_dump_json(by_alias=True))
    raise AssertionError(section)  # pragma: no cover


def _customer_doc(row: Customer, raw: str | None) -> str:
    """The customer's row as stored: never with a phone (only its keyed hash is kept).

    The row's own JSON text is stored as it came when it cannot carry a phone: the model
    found none, and the text has no `"phone"` anywhere and no backslash (so no key with an
    escape spelling "phone", and no duplicate phone key whose first value the model did
    not keep). A text with one phone is stored with that member cut out (`_without_phone`).
    A text saying a key twice (the model keeps the last value, the text both) is written
    again: its first value, never validated, could be anything (a surname). So is any
    other text it cannot be sure of (a pydantic dump of the model)."""
    if raw is not None and "\\" not in raw and _keys_in(raw) == _keys_given(row):
        if row.phone is None:
            if '"phone"' not in raw:
                return raw
        else:
            cut = _without_phone(raw, row.phone)
            if cut is not None:
                return cut
    return row.model_dump_json(by_alias=True, exclude={"phone"})


def _keys_in(raw: str) -> int:
    """The keys a JSON text with no backslash says: its colons outside strings (every `"`
    delimits one)."""
    return sum(part.count(":") for part in raw.split('"')[::2])


def _keys_given(row: Customer) -> int:
    """The keys the model read: each object's fields given, the nested ones' too."""
    nested = sum(len(part.model_fields_set) for part in (*row.pending, *row.expiring))
    return len(row.model_fields_set) + nested


_JSON_BLANKS = " \t\n\r"


def _without_phone(raw: str, phone: str) -> str | None:
    """`raw`, a validated customer's JSON text with no backslash, without its `"phone"`
    member and one comma beside it; None unless that is certain. With no backslash every
    `"` delimits a string and no string holds an escape, so the one `"phone"` followed by
    a colon is the top-level key the model read (nested objects forbid it), and its value
    is exactly `"` + phone + `"`."""
    key = raw.find('"phone"')
    if key < 0 or raw.find('"phone"', key + 1) >= 0:
        return None
    at = len(raw) - len(raw[key + 7 :].lstrip(_JSON_BLANKS))
    if raw[at : at + 1] != ":":
        return None
    at = len(raw) - len(raw[at + 1 :].lstrip(_JSON_BLANKS))
    value = f'"{phone}"'
    if not raw.startswith(value, at):
        return None
    end = at + len(value)
    after = len(raw) - len(raw[end:].lstrip(_JSON_BLANKS))
    if raw[after : after + 1] == ",":
        return raw[:key] + raw[after + 1 :]
    head = raw[:key].rstrip(_JSON_BLANKS)
    if head.endswith(","):
        return head[:-1] + raw[end:]
    return raw[:key] + raw[end:]  # the only member


def _write_rows(
    conn: sqlite3.Connection,
    rows: Iterable[Row],
    secret: bytes,
    *,
    replace: bool,
    after_batch: Callable[[], None] | None = None,
) -> None:
    """Insert in batches. A full snapshot inserts into empty tables, so a key given twice
    is caught by the primary key; a delta replaces rows, and its keys are tracked here."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    batches: dict[str, list[tuple[object, ...]]] = {section: [] for section in ROW_MODELS}
    seen: set[tuple[str, object]] = set()

    def flush(section: str) -> None:
        batch = batches[section]
        marks = ", ".join("?" * _COLUMNS[section])
        done = conn.total_changes
        try:
            conn.executemany(f"{verb} INTO {section} VALUES ({marks})", batch)
        except sqlite3.IntegrityError:
            # the rows before the one refused went in: their count is its place in the batch
            key = batch[min(conn.total_changes - done, len(batch) - 1)][0]
            raise InputError(f"snapshot: two {section} rows have the same key, {key!r}") from None
        batch.clear()
        if after_batch is not None:
            after_batch()

    current, batch = "", batches[next(iter(ROW_MODELS))]
    for section, row, raw in rows:
        params = _params(section, row, raw, secret)
        if replace:
            key = (section, params[0])
            if key in seen:
                raise InputError(f"snapshot: {section} {params[0]!r} appears twice")
            seen.add(key)
        if section != current:
            current, batch = section, batches[section]
        batch.append(params)
        if len(batch) >= _BATCH:
            flush(section)
    for section in ROW_MODELS:
        if batches[section]:
            flush(section)


def _phone_column(phone: str | None, secret: bytes) -> str | None:
    """The hub's data says a phone as a person writes it: brackets are dropped here too
    ("8 (916) 123-45-67" loaded and never matched), where a scanned text with them is
    INVALID (§4). One that is still no Russian phone identifies nobody (NULL)."""
    key = phone_key(normalise(phone).translate(_BRACKETS)) if phone else None
    return phone_index(key, secret) if key else None


_BRACKETS = {ord("("): None, ord(")"): None}


def _set(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _version(conn: sqlite3.Connection) -> int:
    return int(_get(conn, "version") or 0)


def _stamp(stored: str | None) -> str | None:
    """A stored time as the project prints times: UTC as `Z`, as the snapshot most likely
    wrote it (`isoformat` keeps any other offset and spells UTC `+00:00`)."""
    if stored and stored.endswith("+00:00"):
        return stored[:-6] + "Z"
    return stored or None


def info(conn: sqlite3.Connection) -> CacheInfo:
    return CacheInfo(
        version=_version(conn),
        issued_at=_stamp(_get(conn, "issued_at")),
        expires_at=_stamp(_get(conn, "expires_at")),
        loaded_at=_stamp(_get(conn, "loaded_at")),
    )


class CacheView:
    """Reads of one consistent cache state; use inside `CacheView.reading(conn)`."""

    def __init__(
        self, conn: sqlite3.Connection, secret: bytes = b"", memo: dict[str, Any] | None = None
    ) -> None:
        self.conn = conn
        self.secret = secret
        # Data every receipt needs and that changes only with the snapshot (mass offers,
        # the category tree), kept across views and keyed by the snapshot version.
        self._memo = memo if memo is not None else {}
        self._at_version: int | None = None
        # (customer id, stored row) of the last card read (`card`), for `customer`
        self._holder: tuple[str, str] | None = None

    @classmethod
    @contextmanager
    def reading(
        cls, conn: sqlite3.Connection, secret: bytes = b"", memo: dict[str, Any] | None = None
    ) -> Iterator[CacheView]:
        """A read transaction: every read inside sees the same snapshot version."""
        conn.execute("BEGIN")
        try:
            yield cls(conn, secret, memo)
        finally:
            conn.execute("COMMIT")

    @property
    def version(self) -> int:
        """The snapshot version this view reads: fixed for its read transaction (read once;
        not a cached_property, whose first access takes a lock on Python 3.11)."""
        if self._at_version is None:
            self._at_version = _version(self.conn)
        return self._at_version

    def program(self) -> Program:
        def load() -> Program:
            raw = _get(self.conn, "program")
            return Program() if raw is None else Program.model_validate_json(raw, context=STORED)

        program: Program = self.remembered("program", load)
        return program

    def applied_through(self) -> dict[str, int]:
        """Each device's last seq the snapshot's balances include. Written only with the
        snapshot's version (`_write_meta`), so read once per version, as the program is
        (a statement a quote saved); a copy, the memo's own is never handed out."""
        applied: dict[str, int] = self.remembered(
            "applied-through",
            lambda: {str(d): int(s) for d, s in self.conn.execute("SELECT * FROM applied_through")},
        )
        return dict(applied)

    # CardLookup
    def card(self, number: str) -> CardRecord | None:
        """The card; its customer's row is read with it (identification asks for it next:
        `customer`), in the same statement and read transaction."""
        row = self.conn.execute(
            "SELECT k.number, k.customer_id, k.status, c.doc FROM cards k"
            " LEFT JOIN customers c ON c.id = k.customer_id WHERE k.number = ?",
            (number,),
        ).fetchone()
        if row is None:
            return None
        if row[3] is not None:
            self._holder = (row[1], row[3])
        return CardRecord(number=row[0], customer_id=row[1], status=row[2])

    def customer(self, customer_id: str) -> Customer | None:
        holder = self._holder
        if holder is not None and holder[0] == customer_id:
            return Customer.model_validate_json(holder[1], context=STORED)
        row = self.conn.execute("SELECT doc FROM customers WHERE id = ?", (customer_id,)).fetchone()
        return None if row is None else Customer.model_validate_json(row[0], context=STORED)

    def customer_by_phone(self, phone: str) -> Customer | None:
        """The customer the phone identifies (§4). A phone two customers share (the hub's
        data should not have it; an old account with a blocked card and the new one, say)
        identifies the first by id of those with an active card, else the first by id."""
        row = self.conn.execute(
            "SELECT doc FROM customers AS c WHERE phone = ? ORDER BY NOT EXISTS"
            " (SELECT 1 FROM cards WHERE customer_id = c.id AND status = 'ACTIVE'), id LIMIT 1",
            (phone_index(phone, self.secret),),
        ).fetchone()
        return None if row is None else Customer.model_validate_json(row[0], context=STORED)

    def cards_of(self, customer_id: str) -> list[CardRecord]:
        return [
            CardRecord(number=n, customer_id=c, status=s)
            for n, c, s in self.conn.execute(
                "SELECT number, customer_id, status FROM cards WHERE customer_id = ?",
                (customer_id,),
            )
        ]

    # pricing reads
    def products(self, skus: Iterable[str], receipt_id: str | None = None) -> dict[str, ProductRow]:
        """The receipt's products as plain rows (validated when the snapshot was loaded).
        A till quotes its open receipt again as each item is scanned, then holds it: the
        rows read for a `receipt_id` are kept (for the last `RECEIPTS_KEPT` receipts, per
        snapshot version), so each call reads only the SKUs new to the receipt. A memo of
        the whole catalogue was slower than the statement on a receipt's first sight
        (docs/PERFORMANCE.md, "The products of an open receipt")."""
        if receipt_id is None:
            return self._read_products(list(set(skus)))
        kept: OrderedDict[str, tuple[dict[str, ProductRow], set[str]]] = self.remembered(
            "receipt-products", OrderedDict
        )
        unique = set(skus)
        seen = kept.get(receipt_id)
        if seen is not None:
            with contextlib.suppress(KeyError):  # the most recent last (another thread's pop)
                kept.move_to_end(receipt_id)
        else:  # the receipt's first sight: every SKU read, the rows kept
            read = self._read_products(list(unique))
            if len(unique) <= SKUS_KEPT:
                kept[receipt_id] = (dict(read), unique.difference(read))
                while len(kept) > RECEIPTS_KEPT:
                    with contextlib.suppress(KeyError):  # another thread took it first
                        kept.popitem(last=False)
            return read
        found, absent = seen  # the products and the SKUs that are none
        wanted = [sku for sku in unique if sku not in found and sku not in absent]
        read = self._read_products(wanted) if wanted else {}
        if len(found) + len(absent) + len(wanted) <= SKUS_KEPT:
            found.update(read)
            absent.update(unique.difference(found))
        read.update({sku: row for sku in unique if (row := found.get(sku)) is not None})
        return read

    def _read_products(self, wanted: list[str]) -> dict[str, ProductRow]:
        """One statement for up to 500 SKUs. SQLite's row tuples become the rows as they
        are (no Python call a row): `excluded <> 0` is its 0 or 1, a bool's value."""
        if len(wanted) <= 500:
            return {row[0]: _row(ProductRow, row) for row in self._products(wanted)}
        out: dict[str, ProductRow] = {}
        for i in range(0, len(wanted), 500):
            out.update(
                {row[0]: _row(ProductRow, row) for row in self._products(wanted[i : i + 500])}
            )
        return out

    def _products(self, chunk: list[str]) -> list[tuple[str, str, bool]]:
        marks = ",".join("?" * len(chunk))
        rows: list[tuple[str, str, bool]] = self.conn.execute(
            "SELECT sku, category, excluded <> 0 FROM products INDEXED BY products_read"
            f" WHERE sku IN ({marks})",
            chunk,
        ).fetchall()
        return rows

    def remembered(self, name: str, load: Callable[[], T]) -> T:
        """Something derived from the snapshot (the program, the category tree, the mass
        offers and their index), made once per snapshot version and kept across views.
        Views on several threads share the memo: each step is one atomic dict operation."""
        key = f"{name}@{self.version}"
        found = self._memo.get(key)
        if found is None:
            for old in [k for k in list(self._memo) if k.startswith(f"{name}@")]:
                self._memo.pop(old, None)
            found = self._memo.setdefault(key, load())
        return cast(T, found)

    def category_parents(self) -> Mapping[str, str | None]:
        parents: Mapping[str, str | None] = self.remembered(
            "parents",
            lambda: dict(self.conn.execute("SELECT code, parent FROM categories").fetchall()),
        )
        return parents

    def categories(self) -> list[Category]:
        return [
            Category(code=c, parent=p, name=n)
            for c, p, n in self.conn.execute("SELECT code, parent, name FROM categories")
        ]

    def coupon(self, code: str) -> Coupon | None:
        row = self.conn.execute("SELECT doc FROM coupons WHERE code = ?", (code,)).fetchone()
        return None if row is None else Coupon.model_validate_json(row[0], context=STORED)

    def offer(self, offer_id: str) -> Offer | None:
        row = self.conn.execute("SELECT doc FROM offers WHERE id = ?", (offer_id,)).fetchone()
        return None if row is None else Offer.model_validate_json(row[0], context=STORED)

    def offers_for(self, customer_id: str) -> list[Offer]:
        """The customer's personal offers and every mass offer, by id."""
        return sorted([*self.personal_offers(customer_id), *self.mass_offers()], key=_offer_id)

    def mass_offers(self) -> list[Offer]:
        """Every mass offer of the snapshot (no `customerId`), by id, read from the cache once
        per version: per-version memos are built from the cache, never from one request."""
        mass: list[Offer] = self.remembered(
            "mass",
            lambda: sorted(
                (
                    Offer.model_validate_json(doc, context=STORED)
                    for (doc,) in self.conn.execute(
                        "SELECT doc FROM offers WHERE customer_id IS NULL"
                    )
                ),
                key=_offer_id,
            ),
        )
        return mass

    def personal_offers_for(
        self, customer_id: str, skus: Collection[str], categories: Collection[str]
    ) -> list[Offer]:
        """The customer's personal offers that might apply to a receipt of these SKUs and
        (its lines') categories, by id: every receipt-level offer, and the line offers
        targeting one of them. Pricing finds a line's offers by its SKU and categories,
        so it prices with these as with all of them; the others are not parsed."""
        return self._personal(customer_id).for_receipt(skus, categories)

    def personal_offers(self, customer_id: str) -> list[Offer]:
        """The customer's personal offers, by id."""
        return self._personal(customer_id).all()

    def _personal(self, customer_id: str) -> _Personal:
        """Read once per (snapshot version, customer) and kept for the last
        `PERSONAL_OFFERS_KEPT` customers, each offer parsed when first needed: the memo is
        keyed by the version this view reads, so a new version never serves the old ones."""
        kept: OrderedDict[str, _Personal] = self.remembered("personal", OrderedDict)
        found = kept.get(customer_id)
        if found is None:
            found = _Personal(
                [
                    doc
                    for (doc,) in self.conn.execute(
                        "SELECT doc FROM offers WHERE customer_id = ?", (customer_id,)
                    )
                ]
            )
            kept[customer_id] = found
            while len(kept) > PERSONAL_OFFERS_KEPT:
                with contextlib.suppress(KeyError):  # another thread took it first
                    kept.popitem(last=False)
        else:
            with contextlib.suppress(KeyError):
                kept.move_to_end(customer_id)
        return found


class _Personal:
    """One customer's personal offers in one snapshot version: their stored JSON, what
    each targets, and each offer parsed when a receipt first might get it (several
    threads may parse one at once: they store equal offers)."""

    __slots__ = ("docs", "offers", "targets")

    def __init__(self, docs: list[str]) -> None:
        self.docs = docs
        self.offers: list[Offer | None]
        if len(docs) <= PARSE_ALL_UP_TO:
            # A usual customer's few offers in one parse (the rows were validated when the
            # snapshot was applied): cheaper than reading each one's targets with
            # `json.loads` first and parsing the two or three a receipt gets.
            parsed = (
                _offer_list().validate_json(f"[{','.join(docs)}]", context=STORED) if docs else []
            )
            self.offers = list(parsed)
            self.targets = [_targets_of(offer) for offer in parsed]
        else:
            self.targets = [_targets(doc) for doc in docs]
            self.offers = [None] * len(docs)

    def parsed(self, i: int) -> Offer:
        offer = self.offers[i]
        if offer is None:
            offer = self.offers[i] = Offer.model_validate_json(self.docs[i], context=STORED)
        return offer

    def all(self) -> list[Offer]:
        return sorted((self.parsed(i) for i in range(len(self.docs))), key=_offer_id)

    def for_receipt(self, skus: Collection[str], categories: Collection[str]) -> list[Offer]:
        return sorted(
            (
                self.parsed(i)
                for i, aim in enumerate(self.targets)
                if aim is None or not aim[0].isdisjoint(skus) or not aim[1].isdisjoint(categories)
            ),
            key=_offer_id,
        )


def _targets(doc: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """The SKUs and categories a line offer's stored JSON targets, read with `json.loads`
    (a fraction of the model's parse); None for a receipt-level offer, which any receipt
    might get, and whenever unsure: a document with an escape, or with one of the keys
    read spelled more than once, is never left out."""
    if "\\" in doc or any(doc.count(key) > 1 for key in _TARGET_KEYS):
        return None
    light = json.loads(doc)
    kind = light.get("kind") if isinstance(light, dict) else None
    if not isinstance(kind, str) or kind not in LINE_KINDS:
        return None
    skus = light.get("skus") or []
    groups = light.get("categories") or []
    if not isinstance(skus, list) or not isinstance(groups, list):
        return None
    if not all(isinstance(x, str) for x in (*skus, *groups)):
        return None
    return frozenset(skus), frozenset(groups)


_TARGET_KEYS = ('"kind"', '"skus"', '"categories"')
# A customer with at most this many personal offers has them all parsed on first sight
# (`_Personal`); more (issue 13's heavy customers: 50) are parsed as receipts need them.
PARSE_ALL_UP_TO = 12


def _targets_of(offer: Offer) -> tuple[frozenset[str], frozenset[str]] | None:
    """`_targets` of a parsed offer: what `OfferIndex` files it under."""
    if offer.kind not in LINE_KINDS:
        return None
    return frozenset(offer.skus), frozenset(offer.categories)


@functools.lru_cache(maxsize=1)
def _offer_list() -> TypeAdapter[list[Offer]]:
    return TypeAdapter(list[Offer])


def _offer_id(offer: Offer) -> str:
    return offer.id


def ancestors(category: str, parents: Mapping[str, str | None]) -> frozenset[str]:
    """The category and all its ancestors (a cycle in bad data stops the walk)."""
    seen: list[str] = []
    code: str | None = category
    while code and code not in seen:
        seen.append(code)
        code = parents.get(code)
    return frozenset(seen)


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the cache, for tests that check a refused input changed nothing."""
    tables = (
        "meta",
        "applied_through",
        "products",
        "categories",
        "customers",
        "cards",
        "offers",
        "coupons",
    )
    return {
        t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=json.dumps) for t in tables
    }
