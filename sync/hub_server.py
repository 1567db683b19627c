"""The reference hub's gRPC service (`tillpoint hub serve`): mTLS, snapshots, ingest, holds.

Every RPC first authenticates the caller: the TLS handshake already requires a client
certificate signed by the hub's CA; the servicer then requires that certificate to be
the one on record for an enrolled, unrevoked device, and the request's device_id (and
each pushed transaction's) to be that device. docs/PROTOCOL.md has the whole contract.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Protocol, TypeVar

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2_grpc
from tillpoint.agent.config import (
    bind_problem,
    bind_refusal,
    half_bound,
    others_listening,
    pinned_listen,
    release_unserved,
)
from tillpoint.agent.errors import InputError, StorageError, TillpointError, one_line
from tillpoint.agent.files import write_whole
from tillpoint.agent.grpc_decode import RefuseUndecodable
from tillpoint.agent.grpc_health import ReadinessHealth
from tillpoint.agent.limits import INT64_MAX
from tillpoint.agent.logs import say_once
from tillpoint.agent.models import _timestamp, coupon_code
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from . import pki
from .hub_postgres import is_postgres_url
from .hub_rules import CallerGone, Superseded
from .hub_sqlite import SqliteHubStore
from .hub_store import (
    SHRINK_MARGIN_S,
    HubStats,
    HubStore,
    Publication,
    StoredTx,
    TxIn,
    UnknownVersion,
    Unsynced,
)
from .signing import (
    MANIFEST_PREFIX,
    MAX_CHUNK,
    SNAPSHOT_JSONL,
    canonical_json,
    manifest,
    sign_manifest,
)

log = logging.getLogger("tillpoint.hub")

Clock = Callable[[], datetime]
MAX_BATCH = 1000
MAX_LIST = 1000  # transactions per ListTransactions answer (and its default)
DB_FILE = "hub.db"
SNAPSHOTS = "snapshots"
RETRY_BUILD_S = 30.0
MAX_HOLD_TTL_S = 86_400  # a till may ask for holds of its program's TTL, up to a day
MAX_AUTH_COUPONS = 100  # codes one authorisation may carry (a receipt has a handful)
# The longest ids a till sends (docs/CONTRACT.md §10): a receipt's (and a batch's, a hash
# of 32 characters) 128, a customer's 200 (an imported key). A longer one, or one with a
# NUL (PostgreSQL's text refuses it: UNAVAILABLE, read by the till as the hub away), is
# refused at the door, INVALID_ARGUMENT, before the store is touched (review 31).
ID_LIMITS = {"receiptId": 128, "batchId": 128, "customerId": 200}


def _id_problem(name: str, value: str, limit_of: str | None = None) -> str | None:
    limit = ID_LIMITS[limit_of or name]
    if len(value) > limit:
        return f"{name} is too long (at most {limit} characters)"
    if "\x00" in value:
        return f"{name} must not contain a NUL character"
    return None


# What a snapshot file's signature covers (its .json says so): a file built before the
# manifest signature (v2: PREFIX + payload in the file) is deleted and built again.
SIGNED = MANIFEST_PREFIX.rstrip(b"\x00").decode()


def system_clock() -> datetime:
    return datetime.now(UTC)


def _unwritten(what: str, path: Path, exc: OSError, remove: Path) -> StorageError:
    """A snapshot's file the machine refused, named with why; `remove` is taken away so
    the next build has the room and finds no half of a snapshot."""
    from tillpoint.agent.db import no_space_hint

    hint = no_space_hint(path, exc)
    remove.unlink(missing_ok=True)
    return StorageError(f"{what} {path} could not be written: {exc.strerror or exc}{hint}")


# The bytes of each SnapshotChunk the hub sends (the protocol allows up to 1 MiB). A
# quarter MiB, not the whole MiB (session 59): gRPC grows a till's window to take a whole
# message, so a chunk adds to what the hub has under way to a slow till, which its pings
# wait behind (sync.client.WINDOW_BYTES). A cut pull also loses at most this much (it
# resumes at its last whole chunk).
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class HubConfig:
    chunk_size: int = CHUNK_BYTES  # bytes per SnapshotChunk (at most MAX_CHUNK, 1 MiB)
    heartbeat_s: float = 15.0  # Subscribe sends the latest version at least this often
    stream_max_s: float = 300.0  # a Subscribe stream ends after this; the agent reopens it
    hold_ttl_s: float = 900.0  # an authorised redemption is held this long
    snapshot_ttl_s: float = 7 * 86400.0  # expiresAt = issuedAt + this
    publish_every_s: float = 300.0  # balance refresh versions (0: only `hub publish`)
    watch_interval_s: float = 0.5  # how often the server looks for new versions
    max_workers: int = 64  # each connected till holds one for its Subscribe stream
    keep_versions: int = 3  # full snapshot files kept (and the deltas above the oldest)
    # Deltas are made from the versions a till could have held within this long (the
    # newest one issued at or before now minus this, and every later one); older versions
    # are pruned from the store and a till on one gets a full snapshot (0: keep all).
    delta_retention_s: float = 30 * 86400.0
    # A pull that needs a full snapshot while none newer than the till's is built waits
    # this long, then gets ABORTED and retries with its backoff (the till's first-chunk
    # deadline is 120 s: stay well under it).
    full_wait_s: float = 60.0
    rate_limit_bytes_s: float = 0.0  # per snapshot stream (0: unlimited), spares store uplinks
    # the server certificate within 30 days of its end (or past it): logged at start and
    # again this often while the hub serves
    certificate_reminder_s: float = pki.REMIND_EVERY_S

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1 (got {self.max_workers})")
        positive = (
            "heartbeat_s",
            "stream_max_s",
            "hold_ttl_s",
            "snapshot_ttl_s",
            "certificate_reminder_s",
        )
        others = (
            "publish_every_s",
            "watch_interval_s",
            "full_wait_s",
            "rate_limit_bytes_s",
            "delta_retention_s",
        )
        for name in (*positive, *others):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                least = "above 0" if name in positive else "at least 0"
                raise ValueError(f"{name} must be a finite number {least} (got {value})")


# The first words of a libpq "keyword=value" connection string, which `--store` does not
# take (a URL only): its commonest keywords (a file path begun so is no one's).
LIBPQ_KEYWORDS = frozenset(
    {
        *("host", "hostaddr", "port", "dbname", "user", "password", "passfile", "service"),
        *("sslmode", "connect_timeout", "application_name", "options", "target_session_attrs"),
    }
)


class HubDir:
    """A hub's directory: ``keys/``, ``snapshots/`` and, with the default store, ``hub.db``.

    `store` selects the store (default: $TILLPOINT_HUB_STORE): "" (``hub.db`` here), a
    SQLite file's path, or a PostgreSQL URL (postgresql://...), which several hub servers
    share; their hub directories then hold the same keys, and ``snapshots/`` should be
    one directory they all share (docs/HUB.md).
    """

    def __init__(self, root: Path, store: str | None = None) -> None:
        self.root = Path(root)
        self.keys = pki.HubKeys(self.root / "keys")
        if store is None:
            store = os.environ.get("TILLPOINT_HUB_STORE", "")
        self.store_url = store.strip()
        keyword = re.match(r"^([a-z_]+)\s*=", self.store_url)
        if keyword is not None and keyword.group(1) in LIBPQ_KEYWORDS:
            # libpq's other form ("host=db password=… dbname=hub", psql's habit) became a
            # new, empty SQLite hub in a file named after it, password and all (review 58,
            # rev58); nothing of it is echoed
            raise InputError(
                "the hub store is a libpq 'keyword=value' string: give it as a URL,"
                " postgresql://USER:PASSWORD@HOST:PORT/DBNAME (the password %-encoded)"
            )
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", self.store_url)
        if scheme is not None and not is_postgres_url(self.store_url):
            # A mistyped URL ("postgressql://", "postgresql+psycopg://") became a SQLite
            # file under a directory named after it, password and all, and the operator
            # believed the database was loaded. The scheme alone is echoed, never the rest.
            raise InputError(
                f"the hub store '{scheme.group(1)}://…' is neither a postgresql:// (or"
                " postgres://) URL nor a file path"
            )

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    def init(self, hosts: list[str] | None = None) -> bool:
        return pki.init_hub_keys(self.keys, hosts)

    def exists(self) -> bool:
        """Whether a hub was made here (`hub init`, or `hub import` into a new directory):
        its database is there. Other commands never make one (a wrong --hub-dir would
        otherwise give an empty hub that publishes nothing). On PostgreSQL the database
        is shared: a hub is here when its keys are (`hub init` or `hub import` made them)."""
        if self.on_postgres:
            return self.keys.ca_cert.is_file()
        return self.sqlite_path.is_file()

    def require(self) -> HubDir:
        """This hub, or InputError when there is none here."""
        if not self.exists():
            raise InputError(f"no hub at {self.root}: run 'tillpoint hub init'")
        return self

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS

    @property
    def on_postgres(self) -> bool:
        return is_postgres_url(self.store_url)

    def open_store(self, *, migrate: bool = False) -> HubStore:
        """The hub's store; `migrate`: bring a PostgreSQL schema up to date first (SQLite
        files always are)."""
        if self.on_postgres:
            from .hub_postgres import PostgresHubStore

            return PostgresHubStore(self.store_url, migrate_schema=migrate)
        return SqliteHubStore(self.sqlite_path)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.store_url) if self.store_url else self.db


# ---------------------------------------------------------------- snapshots


class StillBuilding(TillpointError):
    """No full snapshot newer than the till's is ready yet; it is being built."""


class Bundle(Protocol):
    """A signed snapshot ready to be served in chunks."""

    @property
    def version(self) -> int: ...

    @property
    def base_version(self) -> int: ...

    @property
    def issued_at(self) -> str: ...

    @property
    def expires_at(self) -> str: ...

    @property
    def signature(self) -> bytes: ...

    @property
    def sha256(self) -> bytes: ...

    @property
    def size(self) -> int: ...

    @property
    def payload(self) -> bytes: ...

    def reader(self) -> AbstractContextManager[Callable[[int, int], bytes]]: ...


@dataclass(frozen=True)
class FileSnapshot:
    """A signed snapshot on disk: the file holds exactly the payload; its signature
    covers the manifest (`signing.manifest`: size and SHA-256, computed while it was
    written), and chunks are read at their offset."""

    path: Path
    version: int
    base_version: int
    issued_at: str
    expires_at: str
    sha256: bytes
    signature: bytes
    size: int  # of the payload
    build_s: float = 0.0

    def meta(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "baseVersion": self.base_version,
            "issuedAt": self.issued_at,
            "expiresAt": self.expires_at,
            "sha256": self.sha256.hex(),
            "signature": base64.b64encode(self.signature).decode(),
            "size": self.size,
            "buildSeconds": round(self.build_s, 3),
            "signed": SIGNED,
        }

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> FileSnapshot:
        return cls(
            path=path,
            version=int(meta["version"]),
            base_version=int(meta["baseVersion"]),
            issued_at=str(meta["issuedAt"]),
            expires_at=str(meta["expiresAt"]),
            sha256=bytes.fromhex(str(meta["sha256"])),
            signature=base64.b64decode(str(meta["signature"])),
            size=int(meta["size"]),
            build_s=float(meta.get("buildSeconds", 0.0)),
        )

    @contextmanager
    def reader(self) -> Iterator[Callable[[int, int], bytes]]:
        """`read(offset, n)` of the payload from one open file: a file pruned while it
        is served stays readable until the stream ends."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            yield lambda offset, n: os.pread(fd, n, offset)
        finally:
            os.close(fd)

    @property
    def payload(self) -> bytes:
        """The whole payload in memory: for small snapshots and tests only."""
        with self.reader() as read:
            return read(0, self.size)


def write_payload(
    store: HubStore, version: int, base: int, out: BinaryIO
) -> tuple[dict[str, Any], int, bytes]:
    """Write the snapshot as JSON Lines (`tillpoint.snapshot/jsonl`, the format a till
    applies row by row) to `out`: the header line, then a `{"section": ...}` line before
    each section's rows, all canonical JSON (the rows as the store keeps them), so the
    same state always gives the same bytes. Returns (header, size, SHA-256)."""
    digest = hashlib.sha256()
    size = 0

    def emit(data: bytes) -> None:
        nonlocal size
        out.write(data)
        digest.update(data)
        size += len(data)

    stream = store.snapshot_stream(version, base)
    try:
        _, header = next(stream)
        emit(canonical_json({"format": SNAPSHOT_JSONL, **header}) + b"\n")
        current = ""
        batch: list[str] = []
        for section, text in stream:
            if section != current:
                batch.append(canonical_json({"section": section}).decode())
                current = section
            batch.append(text)
            if len(batch) >= 8192:
                batch.append("")
                emit("\n".join(batch).encode())
                batch.clear()
        if batch:
            batch.append("")
            emit("\n".join(batch).encode())
    finally:
        stream.close()  # ends the store's read transaction whatever happened
    return header, size, digest.digest()


def snapshot_payload(store: HubStore, version: int, base: int) -> tuple[dict[str, Any], bytes]:
    """The payload in memory (small snapshots, tests)."""
    out = io.BytesIO()
    header, _, _ = write_payload(store, version, base, out)
    return header, out.getvalue()


def _name(version: int, base: int) -> str:
    return f"v{version:010d}-full" if base == 0 else f"v{version:010d}-from-{base:010d}"


# How long a stop waits for the build on its way (`SnapshotBuilder.stop`): a build at
# chain scale takes minutes, and is left to end with the process.
BUILD_STOP_WAIT_S = 10.0


class SnapshotBuilder:
    """Builds signed snapshots into `<hub dir>/snapshots/` and serves them from there.

    Snapshots are the same for every till, so each (version, base) is built once: the
    payload is streamed from the store to a temporary file (SHA-256 computed on the way),
    fsynced, its manifest (size and SHA-256) signed, and the file renamed; a
    `.json` beside it (written last) holds the header, checksum and signature. Nothing
    chain-sized is ever in memory. A background thread builds the newest version's full
    snapshot as soon as the hub sees it (one build at a time, always the newest asked
    for); deltas are built on demand by the pull that needs them. Files of the newest
    `keep_versions` full snapshots (and newer deltas) are kept; older ones are deleted.
    Builds are deterministic, so a file rebuilt after a restart has the same bytes.

    Other processes may build into the same directory (`hub export` beside `hub serve`):
    each (version, base) is built under an exclusive lock on `<name>.lock`, and a builder
    that waited for it takes the file the other one built. Every builder also holds a
    shared lock on `builders.lock` while it builds; temporary files left by a crash are
    deleted only under the exclusive lock of `builders.lock` (no build running anywhere).
    """

    def __init__(
        self,
        store: HubStore,
        key: ed25519.Ed25519PrivateKey,
        directory: Path,
        *,
        keep_versions: int = 3,
        full_wait_s: float = 60.0,
        newest_wait_s: float = 5.0,
    ) -> None:
        self.store = store
        self.key = key
        self._public = key.public_key()
        self.dir = Path(directory)
        self.keep_versions = max(1, keep_versions)
        self.full_wait_s = full_wait_s
        self.newest_wait_s = newest_wait_s
        self._cond = threading.Condition()
        self._ready: dict[tuple[int, int], FileSnapshot] = {}
        self._building: set[tuple[int, int]] = set()
        self._wanted = 0  # the newest version whose full snapshot was asked for
        # the running thread's stop: each `start` makes its own, so that a thread a `stop`
        # did not wait for (a long build) ends alone after a start again (review 44)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._deltas = threading.BoundedSemaphore(2)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------ files

    def _load(self) -> None:
        """The files already built; when no builder runs (in any process), delete what a
        crash left behind. While one runs, its files are left alone: a `.tmp` or a
        `.snap` without its `.json` may be the build in progress."""
        with _flock(self.dir / BUILDERS_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB) as alone:
            if alone:
                for leftover in [*self.dir.glob("*.tmp"), *self.dir.glob("v*.lock")]:
                    leftover.unlink(missing_ok=True)  # a build interrupted by a crash
            for meta in self.dir.glob("*.json"):
                found = self._read_built(meta)
                if found is not None:
                    self._ready[(found.version, found.base_version)] = found
                elif alone:
                    meta.unlink(missing_ok=True)
                    meta.with_suffix(".snap").unlink(missing_ok=True)
            if alone:
                for snap in self.dir.glob("*.snap"):
                    if not snap.with_suffix(".json").exists():
                        snap.unlink(missing_ok=True)

    def _read_built(self, meta: Path) -> FileSnapshot | None:
        """The snapshot whose `.json` is `meta`, or None when it is not a whole file of this
        hub's publication (the `.json` is written last: a build in progress has none)."""
        snap = meta.with_suffix(".snap")
        try:
            meta_doc = json.loads(meta.read_text(encoding="utf-8"))
            found = FileSnapshot.load(snap, meta_doc)
            if meta_doc.get("signed") != SIGNED or snap.stat().st_size != found.size:
                raise ValueError("an older layout or signature (v2), or the wrong size")
            # A hub restored from an older backup may publish the same version number
            # again with other content: a file is kept only for the very publication.
            pub = self.store.publication(found.version)
            if pub is None or pub.issued_at.isoformat() != found.issued_at:
                raise ValueError("not this hub's publication")
            # Signed with the key this hub signs with now: after `snapshot.key` was
            # replaced (docs/PROTOCOL.md §1) a file signed with the old one was served
            # (and exported) until deleted, and every till given the new key refused it.
            # It is built again (the same payload, signed anew).
            self._public.verify(found.signature, manifest(found.size, found.sha256))
        except InvalidSignature:
            log.info("snapshot file %s is signed with another key: built again", meta.name)
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return found

    def _build_once(self, version: int, base: int) -> FileSnapshot:
        """The file of (version, base): built here, or by another process (`hub export`
        beside `hub serve`) that held its lock first, whose file is then taken. Over a
        shared store the store's lock decides too (PostgreSQL: an advisory lock, so hub
        servers on other machines sharing the directory build each file once)."""
        name = _name(version, base)
        with (
            _flock(self.dir / BUILDERS_LOCK, fcntl.LOCK_SH),
            _name_lock(self.dir / f"{name}.lock"),
            self.store.build_lock(f"snapshot {name}"),  # every process: this order
        ):
            built = self._read_built(self.dir / f"{name}.json")
            if built is not None:
                log.info("snapshot file %s was built by another process", name)
                return built
            return self._build(version, base)

    def _build(self, version: int, base: int) -> FileSnapshot:
        started = time.monotonic()
        name = _name(version, base)
        final = self.dir / f"{name}.snap"
        tmp = self.dir / f"{name}.snap.tmp"
        try:
            with open(tmp, "wb", buffering=1 << 20) as fh:
                header, size, sha = write_payload(self.store, version, base, fh)
                fh.flush()
                os.fsync(fh.fileno())
            signature = sign_manifest(self.key, size, sha)  # 62 bytes, not the payload
            os.replace(tmp, final)
        except OSError as exc:
            # the file and why (a file size limit, a full disk): "[Errno 27] File too
            # large" alone named neither (review 40, rev40c)
            raise _unwritten("the snapshot file", tmp, exc, tmp) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        snap = FileSnapshot(
            path=final,
            version=version,
            base_version=base,
            issued_at=str(header["issuedAt"]),
            expires_at=str(header["expiresAt"]),
            sha256=sha,
            signature=signature,
            size=size,
            build_s=time.monotonic() - started,
        )
        record = self.dir / f"{name}.json"
        try:
            write_whole(record, json.dumps(snap.meta()).encode())
        except OSError as exc:
            # a disk the snapshot's last page filled: a bare "[Errno 28] No space left on
            # device" (`hub export`: "internal error"), the `.snap` kept without its
            # record, the room a retry needs taken (review 40, rev40e)
            raise _unwritten("the snapshot's record", record, exc, final) from None
        return snap

    def _prune(self) -> None:
        """Keep the newest `keep_versions` full snapshots and anything newer than the
        oldest of them; a file being served stays readable (open descriptor)."""
        with self._cond:
            fulls = sorted(v for v, b in self._ready if b == 0)
            if len(fulls) <= self.keep_versions:
                return
            floor = fulls[-self.keep_versions]
            old = [k for k in self._ready if k[0] < floor]
            snaps = [self._ready.pop(k) for k in old]
        for snap in snaps:
            snap.path.with_suffix(".json").unlink(missing_ok=True)
            snap.path.unlink(missing_ok=True)
            log.info("snapshot file %s deleted (older than those kept)", snap.path.name)

    # ------------------------------------------------------------ building

    def _get(self, version: int, base: int) -> FileSnapshot:
        """The file of (version, base), built here unless it is ready or being built."""
        key = (version, base)
        with self._cond:
            while key in self._building:
                self._cond.wait()
            hit = self._ready.get(key)
            if hit is not None and _whole(hit):
                return hit
            if hit is not None:  # its file deleted (or cut) under the running hub
                log.warning("snapshot file %s is gone: building it again", hit.path.name)
                del self._ready[key]
            self._building.add(key)
        try:
            snap = self._build_once(version, base)
        except BaseException:
            with self._cond:
                self._building.discard(key)
                self._cond.notify_all()
            raise
        with self._cond:
            self._building.discard(key)
            self._ready[key] = snap
            self._cond.notify_all()
        log.info(
            "snapshot %d %s built: %d bytes in %.1f s",
            version,
            "full" if base == 0 else f"delta from {base}",
            snap.size,
            snap.build_s,
        )
        return snap

    def damaged(self, bundle: Bundle) -> None:
        """Delete a file found damaged while it was sent: the next pull that needs it
        builds it again (`_get`: its file is not whole), with the same bytes as signed
        (builds are deterministic). Only while it is still the file served: a rebuild
        writes the same name."""
        with self._cond:
            if self._ready.get((bundle.version, bundle.base_version)) is not bundle:
                return
            if isinstance(bundle, FileSnapshot):
                bundle.path.with_suffix(".json").unlink(missing_ok=True)
                bundle.path.unlink(missing_ok=True)
        log.error(
            "snapshot %d (from %d) does not hash to what was signed (a damaged disk?):"
            " its file is deleted and built again on the next pull",
            bundle.version,
            bundle.base_version,
        )

    def request_full(self, version: int) -> None:
        """Ask the background thread for this version's full snapshot (newest wins)."""
        with self._cond:
            if version > self._wanted:
                self._wanted = version
                self._cond.notify_all()

    def start(self) -> None:
        """Build in the background; again after a `stop` (a hub server started again):
        a new thread, which builds the newest version asked for."""
        if self._thread is None:
            self._halt = halt = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(halt,), name="hub-snapshots", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._halt.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=BUILD_STOP_WAIT_S)
            self._thread = None

    def _run(self, halt: threading.Event) -> None:
        done = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: halt.is_set() or self._wanted > done)  # noqa: B023
                if halt.is_set():
                    return
                version = self._wanted
            try:
                self._get(version, 0)
                self._prune()
                done = version
            except Exception as exc:  # logged, tried again a little later
                if halt.is_set():  # the hub stopped under the build, its store closed
                    log.info("the full snapshot of version %d was not built: %s", version, exc)
                    return
                log.error("building the full snapshot of version %d failed: %s", version, exc)
                with self._cond:
                    self._cond.wait_for(halt.is_set, timeout=RETRY_BUILD_S)

    def full_ready(self, version: int) -> FileSnapshot | None:
        with self._cond:
            return self._ready.get((version, 0))

    def wait_full(self, version: int, timeout: float) -> FileSnapshot | None:
        """The full snapshot of `version` once built (asking for it), or None after timeout."""
        self.request_full(version)
        with self._cond:
            self._cond.wait_for(lambda: (version, 0) in self._ready, timeout=timeout)
            return self._ready.get((version, 0))

    def _newest_full(self, above: int) -> FileSnapshot | None:
        with self._cond:
            fulls = [s for (v, b), s in self._ready.items() if b == 0 and v > above]
        return max(fulls, key=lambda s: s.version) if fulls else None

    # ------------------------------------------------------------ serving

    def choose(self, have: int, want: int) -> tuple[Publication, int] | None:
        """(publication to send, its base) for an agent at `have`; None: nothing newer.

        A delta when `have` is a published version; otherwise a full snapshot that is
        already built: the newest version's or the one being resumed (`want`); else, after
        waiting up to `newest_wait_s` for the newest one, the newest built one above
        `have` (the till takes a delta to the newest next). When none is built, waits up
        to `full_wait_s` in all, then raises StillBuilding (the till retries with its
        backoff)."""
        latest = self.store.latest()
        if latest is None:
            return None
        pub = latest
        if want and want != latest.version and want > have:
            wanted = self.store.publication(want)
            if wanted is not None:
                pub = wanted
        if pub.version <= have:
            return None
        if have and have >= self.store.delta_floor() and self.store.publication(have):
            return pub, have
        if self.full_ready(pub.version) is None:
            # Usually a build of the newest version takes seconds: wait a little for it;
            # at chain scale it takes minutes, so take the newest one already built.
            found = self.wait_full(latest.version, min(self.newest_wait_s, self.full_wait_s))
            if found is None:
                found = self._newest_full(have)
            if found is None:
                found = self.wait_full(latest.version, self.full_wait_s - self.newest_wait_s)
            if found is None:
                raise StillBuilding(
                    f"the full snapshot of version {latest.version} is being built; try again"
                    " shortly"
                )
            chosen = self.store.publication(found.version)
            if chosen is None:  # pragma: no cover - pruned since it was built (the floor)
                raise StillBuilding(f"version {found.version} is gone")
            pub = chosen
        return pub, 0

    def bundle(self, version: int, base: int) -> Bundle:
        """The signed snapshot (version, base): from its file, built first if needed (a
        full one being built in the background is waited for)."""
        if base == 0:
            return self._get(version, 0)
        with self._deltas:  # deltas of a big change take a while: two at a time
            return self._get(version, base)


BUILDERS_LOCK = "builders.lock"


def _whole(snap: FileSnapshot) -> bool:
    """Whether the snapshot's file is still there, at its size (an operator or a cleanup
    may delete it under a running hub: it was served from memory, and every pull failed)."""
    try:
        return snap.path.stat().st_size == snap.size
    except OSError:
        return False


@contextmanager
def _flock(path: Path, how: int) -> Iterator[bool]:
    """flock(2) on `path` (made if missing) for the block; yields False when LOCK_NB was
    asked and another holder has it. flock locks belong to the open file, so threads of
    one process exclude each other as processes do."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _name_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` that exists only while held: the holder deletes the
    file before it lets go, and a waiter that then gets the lock of a deleted file tries
    again on the path (so that the lock files do not pile up, one per version)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = -1
        except BaseException:
            os.close(fd)
            raise
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


# ---------------------------------------------------------------- notifications


class Notifier:
    """Tells Subscribe streams about new versions; publishing may happen in another process
    (`tillpoint hub publish`), so a watcher thread polls the store."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.latest: Publication | None = None
        self.stopping = False

    def update(self, pub: Publication | None) -> None:
        with self._cond:
            if pub is not None and (self.latest is None or pub.version > self.latest.version):
                self.latest = pub
                self._cond.notify_all()

    def wait_newer(
        self, version: int, timeout: float, ended: Callable[[], bool] = lambda: False
    ) -> Publication | None:
        """The newest publication, once it is above `version`, the hub stops, `ended()`
        (the caller's stream is over: see `wake`) or `timeout` passes."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self.stopping
                    or (self.latest is not None and self.latest.version > version)
                    or ended()
                ),
                timeout=timeout,
            )
            return self.latest

    def wake(self) -> None:
        """Waiters look again at what they wait for: a stream whose call ended (the till
        cancelled it, or the hub's pings dropped its connection) stops waiting for its
        heartbeat, and gives back its worker at once; the others wait on."""
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()

    def start(self) -> None:
        """Streams wait again (a hub server started again after its stop)."""
        with self._cond:
            self.stopping = False


# ---------------------------------------------------------------- the service

Failpoint = Callable[[str], None]


_Req = TypeVar("_Req")
_Rep = TypeVar("_Rep")


def _one_connection(
    rpc: Callable[[HubServicer, _Req, grpc.ServicerContext], _Rep],
) -> Callable[[HubServicer, _Req, grpc.ServicerContext], _Rep]:
    """The RPC's statements (the device's record, then its work) on one connection of
    the store (`HubStore.pinned`), waited for no longer than the call's deadline: a
    till that has given up (a lock held in the database, the pool's connections all
    taken meanwhile) does not keep a server thread waiting on for 30 s."""

    @functools.wraps(rpc)
    def run(self: HubServicer, request: _Req, context: grpc.ServicerContext) -> _Rep:
        try:
            with self.store.pinned(context.time_remaining()):
                return rpc(self, request, context)
        except StorageError as exc:  # no connection to pin: the database is unavailable
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)

    return run


class HubServicer(pb_grpc.HubServicer):
    def __init__(
        self,
        store: HubStore,
        builder: SnapshotBuilder,
        notifier: Notifier,
        config: HubConfig,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.builder = builder
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.stats = HubStats()
        self.rate_limit_bytes_s = config.rate_limit_bytes_s
        # Test failpoints: called with "push.committed" (after a batch is stored, before
        # the answer is sent), "pull.chunk" and "authorize"; one may raise, abort or sleep.
        self.failpoint: Failpoint | None = None

    # ------------------------------------------------------------ auth

    def _device(self, context: grpc.ServicerContext, claimed: str) -> str:
        auth = context.auth_context()
        pems = list(auth.get("x509_pem_cert") or [])
        if not pems:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        device, fingerprint, not_after = _identity(bytes(pems[0]))
        if device is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "the certificate names no device")
        try:
            # the call's first statement: a connection waited for no longer than the
            # call's deadline (`_one_connection`), whichever RPC it is
            with self.store.pinned(context.time_remaining()):
                record = self.store.device(device)
        except StorageError as exc:  # a lost database: the hub did not answer (not UNKNOWN)
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        if record is None:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"device {device} is not enrolled")
        if record.revoked_at is not None:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"device {device} is revoked")
        if record.fingerprint != fingerprint:
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate of {device} is not the enrolled one (re-enrolled?)",
            )
        if not_after is not None and datetime.now(UTC) > not_after:
            # TLS checks the dates at the handshake only: a connection opened before the
            # certificate expired (a till's Subscribe, kept alive for days) went on
            # working with it; now it ends at the next call, as a revocation does
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {device} expired at {not_after.isoformat()}",
            )
        if claimed != device:
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the request is for device {claimed!r} but the certificate is {device!r}",
            )
        return device

    def _fail(self, where: str) -> None:
        if self.failpoint is not None:
            self.failpoint(where)

    # ------------------------------------------------------------ RPCs

    def PullSnapshot(
        self, request: pb.PullSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotChunk]:
        self._device(context, request.device_id)  # the snapshot is the same for every till
        try:
            chosen = self.builder.choose(request.have_version, request.want_version)
            if chosen is None:
                latest = self.store.latest()
                yield pb.SnapshotChunk(version=latest.version if latest else 0, total_size=0)
                return
            pub, base = chosen
            bundle = self.builder.bundle(pub.version, base)
            # a delta says which version `base` it is made on (its issuedAt): a till that
            # holds another version under that number asks for a full snapshot instead
            base_pub = self.store.publication(bundle.base_version) if bundle.base_version else None
            base_issued_at = base_pub.issued_at.isoformat() if base_pub is not None else ""
        except (StillBuilding, UnknownVersion) as exc:
            # The hub is there and answering: not UNAVAILABLE (which a till takes as "the
            # hub is down" and prices OFFLINE); the till retries with its pull backoff.
            # (UnknownVersion: the delta's base was pruned since it was chosen; the next
            # pull gets a full snapshot.)
            _abort(context, grpc.StatusCode.ABORTED, exc.message)
        except (TillpointError, OSError) as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        offset = 0
        if request.want_version == bundle.version and 0 < request.offset < bundle.size:
            offset = request.offset
            self.stats.resumed_pulls.append(offset)
        self.stats.pulls += 1
        size = self.config.chunk_size
        sha256 = bundle.sha256
        # A whole file sent is hashed on the way, and its last chunk held back unless the
        # hash is the one signed: a file damaged on the hub's disk (same size, other
        # bytes) is dropped and built again, instead of being sent to every till after
        # every pull backoff, each till refusing it (the checksum) and asking again.
        digest = hashlib.sha256() if offset == 0 else None
        with contextlib.ExitStack() as opened:
            try:
                read = opened.enter_context(bundle.reader())
            except OSError as exc:  # deleted since it was chosen: the next pull rebuilds it
                _abort(context, grpc.StatusCode.UNAVAILABLE, f"snapshot file: {exc}")
            for start in range(offset, bundle.size, size):
                self._fail("pull.chunk")
                try:
                    data = read(start, size)
                except OSError as exc:
                    _abort(context, grpc.StatusCode.UNAVAILABLE, f"snapshot file: {exc}")
                if digest is not None:
                    digest.update(data)
                    if start + size >= bundle.size and digest.digest() != sha256:
                        self.builder.damaged(bundle)
                        _abort(
                            context,
                            grpc.StatusCode.DATA_LOSS,
                            f"snapshot {bundle.version} is damaged on the hub (its file is"
                            " not what was signed); it is being built again: pull again",
                        )
                yield pb.SnapshotChunk(
                    version=bundle.version,
                    base_version=bundle.base_version,
                    total_size=bundle.size,
                    signature=bundle.signature,
                    issued_at=bundle.issued_at,
                    expires_at=bundle.expires_at,
                    sha256=sha256,
                    offset=start,
                    data=data,
                    base_issued_at=base_issued_at,
                )
                if self.rate_limit_bytes_s > 0 and context.is_active():
                    time.sleep(len(data) / self.rate_limit_bytes_s)

    @_one_connection
    def PushTransactions(
        self, request: pb.TransactionBatch, context: grpc.ServicerContext
    ) -> pb.PushAck:
        device = self._device(context, request.device_id)
        if len(request.transactions) > MAX_BATCH:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} per batch")
        if problem := _id_problem("batchId", request.batch_id):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"PushTransactions: {problem}")
        txs = []
        for tx in request.transactions:
            if tx.device_id != device:
                _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"transaction {tx.seq} is of device {tx.device_id!r}, not {device!r}",
                )
            txs.append(tx_in_of(tx))
        try:
            result = self.store.ingest(device, request.batch_id, txs, self.clock())
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        self.stats.pushes += 1
        self._fail("push.committed")
        outcome = {
            "STORED": pb.TX_STORED,
            "DUPLICATE": pb.TX_DUPLICATE,
            "CONFLICT": pb.TX_CONFLICT,
            "REJECTED": pb.TX_REJECTED,
        }
        for r in result.results:
            if r.outcome in ("CONFLICT", "REJECTED"):
                again = (
                    # a till of an earlier release reads no seq_taken (rev32d)
                    " (the till numbers it again and sends it again; one of an earlier"
                    " release keeps it set aside)"
                    if r.seq_taken
                    else ""
                )
                log.warning("device %s seq %d set aside: %s%s", device, r.seq, r.reason, again)
        return pb.PushAck(
            acked_through_seq=result.acked_through,
            accepted=result.count("STORED"),
            duplicates=result.count("DUPLICATE"),
            conflicts=result.count("CONFLICT"),
            rejected=result.count("REJECTED"),
            results=[
                pb.TransactionResult(
                    seq=r.seq, outcome=outcome[r.outcome], reason=r.reason, seq_taken=r.seq_taken
                )
                for r in result.results
            ],
        )

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Notification]:
        self._device(context, request.device_id)
        heartbeat = self.config.heartbeat_s
        ends = time.monotonic() + self.config.stream_max_s

        def note(pub: Publication | None) -> pb.Notification:
            return pb.Notification(
                latest_version=pub.version if pub else 0,
                issued_at=pub.issued_at.isoformat() if pub else "",
                heartbeat_s=max(1, round(heartbeat)),
            )

        pub = self.notifier.latest
        sent = pub.version if pub else 0
        # the call's end (a cancel, a connection dropped) wakes its wait below at once,
        # rather than at its next heartbeat (session 58)
        context.add_callback(self.notifier.wake)
        yield note(pub)
        while context.is_active() and not self.notifier.stopping and time.monotonic() < ends:
            pub = self.notifier.wait_newer(
                sent,
                timeout=min(heartbeat, ends - time.monotonic()),
                ended=lambda: not context.is_active(),
            )
            if self.notifier.stopping or not context.is_active():
                return
            # a device revoked (or enrolled again) meanwhile: the stream ends, as a new
            # call would be refused (it ran on for up to `stream_max_s`)
            self._device(context, request.device_id)
            sent = pub.version if pub else 0
            yield note(pub)

    @_one_connection
    def AuthorizeRedemption(
        self, request: pb.AuthorizeRedemptionRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeRedemptionReply:
        device = self._device(context, request.device_id)
        if request.points < 0 or not request.receipt_id or not request.customer_id:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "receiptId, customerId and points >= 0 are required",
            )
        problem = _id_problem("receiptId", request.receipt_id) or _id_problem(
            "customerId", request.customer_id
        )
        for i, u in enumerate(request.unsynced):
            problem = problem or _id_problem(f"unsynced[{i}].receiptId", u.receipt_id, "receiptId")
        if problem:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"AuthorizeRedemption: {problem}")
        try:
            at = _timestamp(request.at)
        except ValueError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"at: {exc}")
        codes = _coupon_codes(context, request.coupon_codes)
        offline_limit: int | None = None  # the till's own (review 36); None: the hub's
        if request.HasField("offline_redeem_limit_points"):
            offline_limit = request.offline_redeem_limit_points
            if offline_limit < 0:
                _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "offlineRedeemLimitPoints must be >= 0",
                )
        self._fail("authorize")
        if _past_deadline(context):
            # The till has priced the receipt OFFLINE already (queued behind a busy hub):
            # a hold placed now would reserve points no one uses.
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the till stopped waiting")
        ttl_s = self.config.hold_ttl_s
        if request.hold_ttl_seconds > 0:  # the till's program says how long its holds live
            ttl_s = float(min(request.hold_ttl_seconds, MAX_HOLD_TTL_S))
        # When the call came: the stamp of all it places (its hold, its coupon holds), so
        # that its cut past the deadline touches those alone, and no hold of the receipt
        # placed after it (`Superseded`: it writes nothing then; review 39, grant39)
        arrived = self.clock()
        try:
            granted = self.store.authorise(
                device,
                request.receipt_id,
                request.customer_id,
                request.points,
                at,
                [Unsynced(u.seq, u.receipt_id, u.points, u.at, u.spent) for u in request.unsynced],
                arrived,
                ttl_s,
            )
            # Each code is held for this receipt with its redemption (the contract §13).
            used = (
                self.store.hold_coupons(
                    device,
                    request.receipt_id,
                    request.customer_id,
                    codes,
                    arrived,
                    ttl_s,
                    arrived=arrived,
                )
                if codes
                else []
            )
        except Superseded as exc:
            # The receipt was held again (ONLINE) after this call came: its till stopped
            # waiting for it long since and priced it OFFLINE, and the newer hold is the
            # receipt's. Replaced by this grant (cut to the offline limit), it held less
            # than the till redeems, and another till could spend the rest (review 39,
            # grant39). Nothing written; answered as a call the till gave up on.
            log.info("AuthorizeRedemption of %s: %s", request.receipt_id, exc)
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the till stopped waiting")
        except InputError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        if _past_deadline(context):
            # The till stopped waiting while the store worked: it priced the receipt
            # OFFLINE, and its release (a cancel, an expiry) may have come before this
            # hold. Kept whole, it would take the points from every other till for the
            # hold's whole time, after a cancel too; dropped (as until review 34), the
            # OFFLINE receipt's redemption and its one-time coupon codes were free for
            # another till to take again. Kept for what an OFFLINE pricing may use: at
            # most the offline limit of the till's own snapshot (it says it; review 34
            # took the hub's newest program's, and a till on an older snapshot with a
            # higher one redeemed points another till was then granted: review 36; a
            # till that does not say gets the hub's), and the coupon holds; the till's
            # shrink (since review 33) cuts it to what the receipt uses, its Cancel or
            # expiry releases it, its transaction settles it.
            # (only what this call placed, stamped at its arrival: a hold of the receipt
            # placed since is not its; cut to the stamp of its last clock reading, it cut a
            # hold placed while its answer was on its way: review 39, grant39)
            with contextlib.suppress(StorageError):
                self.store.shrink(
                    device,
                    request.receipt_id,
                    self.store.offline_limit() if offline_limit is None else offline_limit,
                    codes,
                    placed_by=arrived,
                )
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the till stopped waiting")
        return pb.AuthorizeRedemptionReply(
            authorized_points=granted.authorised,
            hold_id=granted.hold_id,
            expires_at=granted.expires_at.isoformat(),
            live_balance=granted.live_balance,
            used_coupons=used,
        )

    @_one_connection
    def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> pb.ListTransactionsReply:
        device = self._device(context, request.device_id)  # a till lists its own only
        if request.since_seq < 0 or request.limit < 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "since_seq and limit must be >= 0")
        limit = min(request.limit or MAX_LIST, MAX_LIST)
        try:
            return list_transactions(self.store, device, request.since_seq, limit)
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)

    @_one_connection
    def ReleaseRedemption(
        self, request: pb.ReleaseRedemptionRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseRedemptionReply:
        """A hold the till gave up (its receipt cancelled or expired there): dropped, under
        the shrink's two guards (review 33, rel33): a till whose release timed out counts
        it as not sent and may hold the receipt again ONLINE at once, and that new hold
        is not the one the release was for. A till before rel33 gave the call no margin:
        worked on while it waits at all, as before (it saw nothing else)."""
        device = self._device(context, request.device_id)
        if not request.receipt_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "receiptId is required")
        if problem := _id_problem("receiptId", request.receipt_id):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"ReleaseRedemption: {problem}")
        started, still_wanted = self._while_waiting(
            context,
            SHRINK_MARGIN_S if request.with_margin else 0.0,
            device,
            request.receipt_id,
        )
        try:
            released = self.store.release(
                device, request.receipt_id, placed_by=started, still_wanted=still_wanted
            )
        except CallerGone:
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the till stopped waiting")
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        return pb.ReleaseRedemptionReply(released=released)

    def _while_waiting(
        self, context: grpc.ServicerContext, margin_s: float, device: str, receipt_id: str
    ) -> tuple[datetime, Callable[[], bool]]:
        """The two guards of a call that names only a receipt, whose till may take the
        receipt's next turn once it stops waiting (ShrinkRedemption, ReleaseRedemption;
        review 33, rev33b and rel33): when the call started (the store touches only holds
        placed at or before it), and whether the till still waits with `margin_s` left
        (asked again inside the write transaction: `CallerGone`). DEADLINE_EXCEEDED now,
        nothing changed, when it does not. The margin is the link's jitter: the hub's
        deadline runs from the request's arrival, the till's from its sending.
        The start is the later of this hub's clock and the stamp of the receipt's newest
        hold read just before it (review 34): the stamps are wall-clock times, and a
        clock set back since the hold was placed (NTP, a resumed virtual machine), or
        the clock of another server of the store ahead of this one's, put the hold the
        call is for "after" the call: it touched nothing and answered false, and the till
        took that as done while the hub held the points up to the hold's expiry."""
        if _past_deadline(context, margin_s):
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the till stopped waiting")
        try:
            newest = self.store.newest_hold_at(device, receipt_id)
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        started = self.clock()
        if newest is not None and newest > started:
            log.warning(
                "the hold of receipt %s was placed %.3f s after this hub's clock says it is"
                " now (a clock set back, or a server's clock ahead of this one's): released"
                " or shrunk all the same",
                receipt_id,
                (newest - started).total_seconds(),
            )
            started = newest
        return started, lambda: not _past_deadline(context, margin_s)

    @_one_connection
    def ShrinkRedemption(
        self, request: pb.ShrinkRedemptionRequest, context: grpc.ServicerContext
    ) -> pb.ShrinkRedemptionReply:
        """A hold the till priced OFFLINE after this hub granted it too late (the contract
        §11): kept for what the receipt uses, the rest spendable by the customer's other
        receipts at once (it was held from them up to the hold's expiry)."""
        device = self._device(context, request.device_id)
        if not request.receipt_id or request.points < 0:
            _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "receiptId and points >= 0 are required"
            )
        if problem := _id_problem("receiptId", request.receipt_id):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"ShrinkRedemption: {problem}")
        codes = _coupon_codes(context, request.coupon_codes)
        # holds placed later are not the one this shrink is for; only while the till waits
        started, still_wanted = self._while_waiting(
            context, SHRINK_MARGIN_S, device, request.receipt_id
        )
        try:
            self._fail("shrink")
            # Only while the till still waits (review 33, rev33b): a till whose shrink
            # timed out counts it as not sent and takes the receipt's next turn, so its
            # hold may have expired, and the receipt been held again (the hub's one hold
            # a receipt is then that new Hold's) by the time a late shrink is worked on.
            # The deadline is checked with a margin for the link's jitter (the hub's runs
            # from the request's arrival: after the till's) inside the write transaction,
            # and only holds placed before this call started are shrunk.
            shrunk = self.store.shrink(
                device,
                request.receipt_id,
                request.points,
                codes,
                placed_by=started,
                still_wanted=still_wanted,
            )
        except CallerGone:
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the till stopped waiting")
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        return pb.ShrinkRedemptionReply(shrunk=shrunk)


def _coupon_codes(context: grpc.ServicerContext, given: Iterable[str]) -> list[str]:
    """A request's coupon codes in normal form (§13); INVALID_ARGUMENT past the bounds."""
    codes = [coupon_code(c) for c in given]
    if len(codes) > MAX_AUTH_COUPONS or not all(0 < len(c) <= 128 for c in codes):
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"couponCodes: at most {MAX_AUTH_COUPONS} codes of 1 to 128 characters",
        )
    return codes


def stored_transaction(tx: StoredTx) -> pb.StoredTransaction:
    return pb.StoredTransaction(
        device_id=tx.device_id,
        seq=tx.seq,
        kind=pb.TransactionKind.Value(tx.kind),
        receipt_id=tx.receipt_id,
        refund_id=tx.refund_id,
        at=tx.at,
        customer_id=tx.customer_id,
        card=tx.card,
        points_delta_available=tx.delta_available,
        points_delta_pending=tx.delta_pending,
        pending_activates_at=tx.pending_activates_at,
        ingested_at=tx.ingested_at,
        fiscal_document=tx.fiscal_document,
    )


def list_transactions(
    store: HubStore, device_id: str, since_seq: int, limit: int, receipt_id: str = ""
) -> pb.ListTransactionsReply:
    """The answer of ListTransactions (and `hub receipts`): at most `limit` (0: all)."""
    # one more than asked tells `more`; never past SQLite's int64 (`hub receipts --limit
    # 9223372036854775807` was "internal error: OverflowError", review 59, mut59b)
    fetch = min(limit + 1, INT64_MAX) if limit else 0
    txs = store.transactions(device_id, since_seq, fetch, receipt_id)
    more = bool(limit) and len(txs) > limit
    return pb.ListTransactionsReply(
        transactions=[stored_transaction(tx) for tx in (txs[:limit] if more else txs)],
        acked_through_seq=store.applied_through(device_id),
        more=more,
    )


@functools.lru_cache(maxsize=16_384)  # a chain's busiest tills; about 1 kB each
def _identity(pem: bytes) -> tuple[str | None, str, datetime | None]:
    """(the device a client certificate names, its fingerprint, its expiry): the
    certificate parsed once, not on every call (the enrolment and revocation are still
    read from the store on every call, and the expiry compared with the clock)."""
    device = pki.device_id_of(pem)
    if device is None:
        return None, "", None
    return device, pki.fingerprint(pem), pki.certificate_not_after(pem)


HUB_SERVICE = "tillpoint.v1.Hub"


def hub_health(store: HubStore) -> ReadinessHealth:
    """The standard health service (grpc.health.v1) of the hub: SERVING while its store
    answers, NOT_SERVING while it cannot (a PostgreSQL stopped, restarting, or with every
    connection taken: the hub's calls answer UNAVAILABLE then); `Check` reads it when
    asked, `Watch` streams each change (`agent.grpc_health`). The hub's port asks for a
    client certificate, so a checker presents a device's (one enrolled for monitoring)."""

    def ready(wait_s: float | None) -> bool:
        try:
            with store.pinned(wait_s):  # no longer than the check's deadline
                store.latest()
        except TillpointError as exc:
            log.info("health check: the store does not answer: %s", exc.message)
            return False
        return True

    return ReadinessHealth((HUB_SERVICE,), ready, thread_name="hub-health-watch")


def _past_deadline(context: grpc.ServicerContext, margin_s: float = 0.0) -> bool:
    """Whether the caller's deadline has passed (it has given up on the answer), or is
    less than `margin_s` away. The hub's deadline is the till's timeout counted from the
    request's arrival: it ends after the till's, never before."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= margin_s


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, one_line(message))  # messages echo what a till sent
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


# ---------------------------------------------------------------- the server


def tx_in_of(tx: pb.Transaction) -> TxIn:
    """A pushed transaction as the store ingests it."""
    return TxIn(
        device_id=tx.device_id,
        seq=tx.seq,
        kind=_kind_name(tx.kind),
        at=tx.at,
        customer_id=tx.customer_id,
        card=tx.card,
        request_json=tx.request_json,
        result_json=tx.result_json,
        delta_available=tx.points_delta_available,
        delta_pending=tx.points_delta_pending,
        pending_activates_at=tx.pending_activates_at,
        fiscal_document=tx.fiscal_document,
        earned_expires_at=tx.earned_expires_at,
    )


def _kind_name(kind: int) -> str:
    """The kind's name; a number this hub does not know (a newer till's, or garbage) as
    its digits, which the rules REJECT for that transaction alone (it failed the whole
    batch with UNKNOWN, as `Name` raised)."""
    try:
        return pb.TransactionKind.Name(kind)  # type: ignore[arg-type]
    except ValueError:
        return str(kind)


# The shortest keepalive interval the hub accepts from a till: half the tills' own
# (sync.client.KEEPALIVE_MS), so a ping a little early is never a strike.
MIN_PING_INTERVAL_MS = 10_000

# The hub pings each till's connection every 30 s when it has read nothing from it, and a
# ping not answered within a minute ends the connection: a till gone without a word (its
# power cut, a cable pulled past the store's switch, a NAT that forgot the connection)
# gives back the worker its Subscribe stream held within about 90 s, not at
# `stream_max_s` (300 s; session 58). Given as `grpc.keepalive_timeout_ms` and as gRPC's
# own ping timeout, which grpcio times a ping by (sync.client.KEEPALIVE_TIMEOUT_MS). A
# minute, gRPC's default, not 10 s (the till's from review 57 to session 58): the timeout
# holds for every ping the hub sends, its bandwidth probe's too, and a ping's answer comes
# behind a till's upload; at 10 s a push of 2 MB over a 50 KB/s line was cut ("ping
# timeout") every time.
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 60_000


class HubServer:
    """A running hub: gRPC over mTLS, the version watcher and the balance publisher."""

    def __init__(
        self,
        hub_dir: Path | HubDir,
        config: HubConfig | None = None,
        *,
        clock: Clock = system_clock,
        store: HubStore | None = None,
    ) -> None:
        self.dir = hub_dir if isinstance(hub_dir, HubDir) else HubDir(hub_dir)
        self.config = config or HubConfig()
        self.clock = clock
        # the store first: a refused one (another program's `hub.db`) left the hub's
        # keys made beside it (review 38, rev38g)
        self.store: HubStore = store or self.dir.open_store()
        self._owns_store = store is None
        try:
            self.dir.init()
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self.notifier = Notifier()
        self.builder = SnapshotBuilder(
            self.store,
            self.dir.keys.signing_key(),
            self.dir.snapshots,
            keep_versions=self.config.keep_versions,
            full_wait_s=self.config.full_wait_s,
        )
        self.servicer = HubServicer(self.store, self.builder, self.notifier, self.config, clock)
        self.health = hub_health(self.store)
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._stopped = False  # `stop` ran: a `start` begins again what it ended
        self._watcher: threading.Thread | None = None
        self.port = 0
        self._served_not_after: datetime | None = None
        self.certificate = pki.CertificateReminder(
            self._certificate_note, log, self.config.certificate_reminder_s
        )

    def _certificate_note(self, now: datetime) -> tuple[int, str] | None:
        """What the log says of the server certificate this process serves with: the one
        it read at start (a renewed `server.pem` is served only after a restart, so a
        renewal without one still expires, and says so)."""
        return pki.expiry_note(
            self._served_not_after,
            now,
            "the hub's server",
            "run 'tillpoint hub init --renew-server' on the hub and restart every 'hub serve'"
            " (the tills need nothing new)",
        )

    def _begin_again(self) -> None:
        """Before a start after a stop (`LoopbackHub.stop`, then `.start`): what the stop
        ended begins anew, as in a new server, so the watcher, the snapshot builder and the
        health run again (review 44: they stayed stopped, and the restarted hub built and
        watched nothing). The store it opened and the stop closed is opened again when it
        cannot be used again (PostgreSQL's pool; a SQLite store opens its connections
        again as its threads ask)."""
        if self._owns_store and self.dir.on_postgres:
            self.store = self.servicer.store = self.builder.store = self.dir.open_store()
        self._stopped = False  # after the store: a start that could not open it, again next
        self._stop = threading.Event()
        self.notifier.start()
        self.health = hub_health(self.store)  # a stopped one is NOT_SERVING for good

    def start(self, listen: str = "127.0.0.1:0") -> int:
        """Serve on `listen`; the port. Again after `stop`, on the same object too."""
        if self._stopped:
            self._begin_again()
        key, cert, ca = self.dir.keys.server_credentials_material()
        self._served_not_after = pki.certificate_not_after(cert)
        self.certificate.check()  # said at start, then again by the watcher each day
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.config.max_workers, thread_name_prefix="hub"
        )
        server = grpc.server(
            self._executor,
            interceptors=[RefuseUndecodable()],  # bytes that are no request: INVALID_ARGUMENT
            options=[
                ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                # gRPC's name for the server's "minimum interval between received pings
                # without data" (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS):
                # below it a ping is a strike, and after two the hub would drop the till
                # with GOAWAY "too_many_pings" (its default is 5 minutes).
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
                ("grpc.so_reuseport", 0),  # one hub a port, never two sharing its tills
                ("grpc.http2.max_pings_without_data", 0),
                # a push batch is ~1 MiB, but one receipt of 10,000 lines can be more
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )
        # asked first: grpcio's own failed bind logs a line of its own on stderr
        refusal = bind_refusal(listen)
        port = 0
        if refusal is None:
            try:
                # port 0 on a name of several addresses: one free port on all of them
                port = server.add_secure_port(pinned_listen(listen), creds)
            except RuntimeError:  # grpcio's "Failed to bind"
                port = 0
        if port != 0 and (taken := others_listening(listen, port, ours=True)):
            release_unserved(server)  # never half-bound (review 35)
            port, refusal = 0, half_bound(taken)
        if port == 0:
            raise TillpointError(
                f"the hub cannot listen on {listen}: {refusal or bind_problem(listen)}"
            )
        # the services once the port is the hub's alone (`release_unserved` serves nothing)
        pb_grpc.add_HubServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        latest = self.store.latest()
        for note in self.store.durability_notes():
            log.warning("%s", note)
        self.notifier.update(latest)
        self.builder.start()
        if latest is not None:
            self.builder.request_full(latest.version)
        server.start()
        self._server = server
        self.port = port
        self._watcher = threading.Thread(
            target=self._watch, args=(self._stop,), name="hub-watch", daemon=True
        )
        self._watcher.start()
        log.info("hub serving on port %d", port)
        return port

    def _watch(self, stop: threading.Event) -> None:
        every = self.config.publish_every_s
        next_try = 0.0  # (monotonic) a refresh that found nothing to publish waits `every`
        pruned_at = -1  # the latest version when the versions were last pruned
        said = ""  # the failure last logged: the same again is DEBUG (a round each 0.5 s)
        while not stop.wait(self.config.watch_interval_s):
            self.certificate.check()  # a look once a day (`certificate_reminder_s`)
            try:
                latest = self.store.latest()
                self.notifier.update(latest)
                if latest is not None:
                    self.builder.request_full(latest.version)  # built once, for every till
                # Due `every` after the store's latest version, not after this process
                # started: a hub restarted more often than that published no refresh, and
                # used codes stayed in every till's snapshot.
                # A latest version issued "in the future" is from a clock set back since
                # (NTP): due now, or nothing was refreshed for the size of the step.
                now = self.clock()
                due = latest is not None and (
                    now >= latest.issued_at + timedelta(seconds=every) or now < latest.issued_at
                )
                # A round its run's stop came in the middle of (a store read held up past
                # the stop's wait for it) publishes and prunes nothing: the server may
                # serve a new run by now, with a watcher of its own (review 45).
                if stop.is_set():
                    return
                if every and due and time.monotonic() >= next_try:
                    next_try = time.monotonic() + every
                    latest = self.refresh_balances() or latest
                # then the prune, once a version, whoever published it: before the refresh,
                # a prune of a year of versions (200 a step, 150 ms apart) put the tills'
                # refresh off by minutes (review 37)
                if latest is not None and latest.version != pruned_at and not stop.is_set():
                    pruned_at = latest.version
                    self.prune_versions(stop)
                if said:
                    failure = said.removeprefix("hub watcher: ")
                    log.info("hub watcher: working again (last failure: %s)", failure)
                    said = ""
            except TillpointError as exc:
                said = say_once(log, said, logging.WARNING, f"hub watcher: {exc.message}")
            except Exception as exc:
                # Any other error of a round (SQLite's reads pass its own on: "disk I/O
                # error", "database is locked" past the store's wait) ended the thread for
                # good: the hub served on, told its tills of no version `hub publish` made,
                # refreshed and pruned nothing until a restart (review 56). The next round
                # tries again, as the snapshot builder does.
                text = f"hub watcher: {one_line(str(exc))} (tried again next round)"
                said = say_once(log, said, logging.ERROR, text)

    def prune_versions(self, stop: threading.Event | None = None) -> int:
        """Forget the versions older than `delta_retention_s` (docs/CONTRACT.md §3): a
        till on one gets a full snapshot. The floor (0: nothing pruned). `stop`: the run
        whose watcher prunes (its own event, never the one of a run started since: review
        45); the server's current run by default."""
        keep = self.config.delta_retention_s
        if not keep:
            return self.store.delta_floor()
        # The floor before, read from the store: what this prune forgot is the versions
        # from it (1 at least: versions start at 1) to below the new floor. The floor's
        # first rise (to 1) forgot nothing, and a server started again after a prune finds
        # the floor where it was: "versions before N pruned" said there was false (review
        # 57, mut57a).
        before = max(self.store.delta_floor(), 1)
        # a stop ends it between two steps: the store is closed next (review 36, rev36e)
        floor = self.store.prune_versions(
            self.clock() - timedelta(seconds=keep), stop=(stop or self._stop).is_set
        )
        if floor > before:
            log.info("versions before %d pruned: a till on one gets a full snapshot", floor)
        return floor

    def refresh_balances(self) -> Publication | None:
        """Publish a balance-only version when transactions came in since the last one,
        or when the last one is past half its validity (so tills never run out)."""
        latest = self.store.latest()
        if latest is None:
            return None
        now = self.clock()
        half_life = latest.issued_at + (latest.expires_at - latest.issued_at) / 2
        if self.store.ingested_since(latest.cut) == 0 and now < half_life:
            return None
        pub = self.store.publish(
            now, self.config.snapshot_ttl_s, include_draft=False, reason="balances"
        )
        log.info("published balance refresh version %d", pub.version)
        self.notifier.update(pub)
        self.builder.request_full(pub.version)
        return pub

    @property
    def serving(self) -> bool:
        """Started and not stopped since."""
        return self._server is not None

    def stop(self, grace: float | None = 1.0) -> None:
        self._stopped = True
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.notifier.stop()
        if self._server is not None:
            self._server.stop(grace).wait(timeout=(grace or 0) + 5)
            self._server = None
        if self._executor is not None:
            # gRPC's stop ends the RPCs, not the handlers still running in the pool: the
            # store is closed only once they have returned (a SQLite connection closed
            # under a running statement crashes the process), waiting 5 s at the most.
            self._executor.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + 5
            for thread in list(getattr(self._executor, "_threads", ())):
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            self._executor = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.builder.stop()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=0)
