"""Snapshot pull (the contract §3, §9): chunked, resumable, verified, then one atomic swap.

The bytes received so far live in ``<data dir>/sync/pull.part`` (exactly the payload,
verified in place and applied from there) beside ``pull.json``
(the bundle's header and how many payload bytes are safely on disk). The part file is
fsynced every `SYNC_EVERY_BYTES` and when the stream ends, and ``pull.json`` is written
only after such an fsync, so it never claims bytes a crash could lose.
After a broken stream, a restart, or a SIGKILL, the next pull asks the hub for the same
bundle (``want_version``) from that offset; the hub rebuilds bundles deterministically,
and the SHA-256 in the header tells the agent whether it is still the same bundle (if
not, it starts again from 0).

Nothing reaches the cache before every check in `signing.verify_file` has passed (the
file is hashed in blocks; nothing maps or holds it). Then it is applied from the file by
path (`VerifiedFile.apply`, `Agent.load_snapshot_file`): a delta in one SQLite transaction
in this process; a full snapshot by child processes that build a new cache generation
(`agent.cache_build`) while this process only waits, so checkouts keep a core, and then
switch `cache.db` to it. A refused snapshot is logged, recorded for `status`, and the
cache keeps serving the version it had.

`Puller._pull` is a few named steps, each returning what happened: `_receive` (ask for the
bundle, resuming a partial one; `_start` reads the header from the first chunk, a
`_Download` writes and checkpoints the part file), `_complete`, `_apply` (verify, apply);
`pull` records the outcome for `status`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import grpc
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.db import open_cache
from tillpoint.agent.errors import (
    InputError,
    SnapshotCorrupted,
    SnapshotRefused,
    StorageError,
    TillpointError,
    UnreadableFile,
)
from tillpoint.agent.files import write_whole
from tillpoint.agent.ledger import PULL_LANDING, open_ledger
from tillpoint.agent.lock import flock_within
from tillpoint.agent.logs import SAID_BY_THE_COMMAND
from tillpoint.v1 import tillpoint_pb2 as pb

from . import signing
from .client import HubLink
from .pki import Enrollment
from .till import TillAgent

log = logging.getLogger("tillpoint.sync")

Progress = Callable[[int, int], None]
MIB = 1024 * 1024
# A chain's full snapshot (1M customers, 5M offers) is about 2 GiB: room to grow.
DEFAULT_MAX_BYTES = 8 * 1024 * MIB
# fsync the part file (and then record the offset in pull.json) after this many bytes or
# this many seconds, whichever comes first: few fsyncs on a fast link, little to fetch
# again after a crash on a slow one.
SYNC_EVERY_BYTES = 32 * MIB
SYNC_EVERY_S = 1.0
SPACE_MARGIN = 64 * MIB
EXPIRED_WORDS = " expired at "  # in `signing`'s refusal of an expired snapshot
LIMIT_WORDS = " is above this till's limit of "  # in `_header_refusal`'s refusal
# The slowest link a snapshot chunk is waited for (bytes a second, 256 kbit/s): a chunk of
# 256 KiB may take 8 s and `hub.call_timeout_ms` more (13 s; 1 MiB: 37 s) before the stream
# counts as stalled (a dead link is noticed by the channel's keepalive within 20 s + 60 s).
SLOWEST_LINK = 32 * 1024
LAYOUT = 3  # pull.part holds the payload alone; the signature covers its manifest (v3)


class SyncBusy(TillpointError):
    pass


# How long the first chunk of a pull may take: the hub may be building a full snapshot.
FIRST_CHUNK_S = 120.0


class PullInterrupted(TillpointError):
    """The stream broke or ended early; what arrived is kept and the next pull resumes."""


class NoSpace(PullInterrupted):
    """Not enough free disk space for the snapshot; the pull is tried again later."""


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class PullResult:
    status: str  # APPLIED, UP_TO_DATE, REFUSED
    version: int
    base_version: int = 0
    size: int = 0
    resumed_from: int = 0
    message: str = ""
    sha256: str = ""
    signature: str = ""  # the bundle's, base64: a refusal remembers it (review 40)
    # REFUSED for what the bundle is (its signature, version, content): remembered, not
    # downloaded again; False for bytes that did not arrive as declared (the transfer).
    remembered: bool = True


@dataclass
class _Partial:
    version: int
    base_version: int
    total_size: int
    sha256: str
    signature: str
    issued_at: str
    expires_at: str
    offset: int  # payload bytes safely on disk in pull.part
    layout: int = 0

    @classmethod
    def of(cls, chunk: pb.SnapshotChunk) -> _Partial:
        return cls(
            version=chunk.version,
            base_version=chunk.base_version,
            total_size=chunk.total_size,
            sha256=chunk.sha256.hex(),
            signature=base64.b64encode(chunk.signature).decode(),
            issued_at=chunk.issued_at,
            expires_at=chunk.expires_at,
            offset=0,
            layout=LAYOUT,
        )

    def same_bundle(self, chunk: pb.SnapshotChunk) -> bool:
        return (
            chunk.version == self.version
            and chunk.base_version == self.base_version
            and chunk.total_size == self.total_size
            and chunk.sha256.hex() == self.sha256
            and base64.b64encode(chunk.signature).decode() == self.signature
        )


@dataclass(frozen=True)
class _OtherBase:
    """The hub offered a delta that does not apply on this till's version (the contract
    §3): refused before any of it is downloaded, and a full snapshot is asked for."""

    message: str


@dataclass(frozen=True)
class _Received:
    """A bundle whose declared bytes are all in pull.part: next, verify and apply it."""

    bundle: _Partial
    resumed_from: int


class _Download:
    """pull.part being written. `received` bytes are in it, `durable` of them fsynced and
    recorded in pull.json (`checkpoint`): pull.json never claims more than a crash keeps."""

    def __init__(self, puller: Puller, bundle: _Partial, fh: IO[bytes], resumed_from: int) -> None:
        self.puller = puller
        self.bundle = bundle
        self.fh = fh
        self.resumed_from = resumed_from
        self.received = self.durable = bundle.offset
        self.synced_at = time.monotonic()
        self.kept = True  # on the way out: make what arrived durable and record it

    @classmethod
    def resume(cls, puller: Puller, bundle: _Partial) -> _Download:
        with _written(puller.part):
            fh = open(puller.part, "r+b", buffering=1 << 20)  # noqa: SIM115
            fh.truncate(bundle.offset)
            fh.seek(bundle.offset)
        return cls(puller, bundle, fh, bundle.offset)

    @classmethod
    def fresh(cls, puller: Puller, bundle: _Partial) -> _Download:
        with _written(puller.part):
            fh = open(puller.part, "wb", buffering=1 << 20)  # noqa: SIM115
            puller._save_meta(bundle)
        return cls(puller, bundle, fh, 0)

    def refusal(self, chunk: pb.SnapshotChunk) -> str | None:
        """Why this chunk cannot be part of the bundle; None: it can."""
        if not self.bundle.same_bundle(chunk) or chunk.offset != self.received:
            return "snapshot refused: chunks of different bundles or out of order"
        if len(chunk.data) > signing.MAX_CHUNK:
            return f"snapshot refused: a chunk of {len(chunk.data)} bytes (limit 1 MiB)"
        if self.received + len(chunk.data) > self.bundle.total_size:
            return f"snapshot refused: more data than the declared {self.bundle.total_size} bytes"
        return None

    def append(self, data: bytes) -> None:
        with _written(self.puller.part):
            self.fh.write(data)
        self.received += len(data)
        if (
            self.received - self.durable >= self.puller.sync_every_bytes
            or time.monotonic() - self.synced_at >= self.puller.sync_every_s
        ):
            self.checkpoint()

    def checkpoint(self) -> None:
        self.synced_at = time.monotonic()
        if self.received == self.durable:
            return
        with _written(self.puller.part):
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.bundle.offset = self.received
            self.puller._save_meta(self.bundle)  # never claims more than is on disk
        self.durable = self.received

    def abandon(self) -> None:
        """A refused bundle: nothing of it is kept (`Puller._refused` deletes the files)."""
        self.kept = False

    def close(self) -> None:
        try:
            if self.kept:
                self.checkpoint()
        finally:
            with _written(self.puller.part):  # what the buffer still holds is written
                self.fh.close()


@contextlib.contextmanager
def _written(part: Path) -> Iterator[None]:
    """A write of the snapshot's bytes (pull.part, pull.json) that the machine refuses is
    a storage error naming the file and why: the file size limit (`ulimit -f`,
    LimitFSIZE=), a full disk. It was "internal error: OSError: [Errno 27] File too
    large" at `sync now`, and `run`'s pull logged a traceback as an unexpected error
    (review 40, rev40c). What arrived before stays for the next pull to resume."""
    try:
        yield
    except OSError as exc:
        from tillpoint.agent.db import no_space_hint, owner_hint

        hint = no_space_hint(part, exc) or owner_hint(part)
        raise StorageError(
            f"the snapshot could not be written to {part}: {exc.strerror or exc}{hint}"
        ) from None


def sync_dir(data_dir: Path) -> Path:
    path = Path(data_dir) / "sync"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: Path, wait_s: float) -> Iterator[None]:
    """An exclusive lock between the service and `tillpoint sync now` on the same till."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not flock_within(fd, wait_s):
            raise SyncBusy(f"another sync of this till is running ({path.name} is locked)")
        yield
    finally:
        os.close(fd)


def cache_version(data_dir: Path) -> int:
    conn = open_cache(Path(data_dir))
    try:
        return cache_mod.info(conn).version
    finally:
        conn.close()


class Puller:
    def __init__(
        self,
        agent: TillAgent,
        link: HubLink,
        enrollment: Enrollment,
        *,
        call_timeout_s: float,
        stream_timeout_s: float = 600.0,
        first_chunk_timeout_s: float = FIRST_CHUNK_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], datetime] | None = None,
        sync_every_bytes: int = SYNC_EVERY_BYTES,
        sync_every_s: float = SYNC_EVERY_S,
        free_space: Callable[[Path], int] = disk_free,
    ) -> None:
        self.agent = agent
        self.link = link
        self.enrollment = enrollment
        self.device_id = enrollment.device_id
        self.call_timeout_s = call_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.first_chunk_timeout_s = max(first_chunk_timeout_s, call_timeout_s)
        self.max_bytes = max_bytes
        self.sync_every_bytes = max(1, sync_every_bytes)
        self.sync_every_s = sync_every_s
        self.disk_free = free_space
        self.clock = clock or agent.clock
        self.dir = sync_dir(agent.data_dir)
        self.part = self.dir / "pull.part"
        self._started = self._downloaded = time.monotonic()  # the last pull's phases
        self.meta = self.dir / "pull.json"
        self._said: tuple[int, str, str] | None = None  # the last refusal logged
        self._resumed: tuple[int, int] | None = None  # the last resume logged (version, byte)

    # ------------------------------------------------------------ partial download

    def _load_partial(self, current: int) -> _Partial | None:
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
            partial = _Partial(**meta)
        except (OSError, ValueError, TypeError):
            return None
        usable = (
            partial.layout == LAYOUT
            and partial.version > current
            and partial.base_version in (0, current)
            and self.part.exists()
            and self.part.stat().st_size >= partial.offset
        )
        if not usable:
            self._discard()
            return None
        return partial

    def _save_meta(self, partial: _Partial) -> None:
        write_whole(self.meta, json.dumps(partial.__dict__).encode())

    def _discard(self) -> None:
        for path in (self.meta, self.part):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ------------------------------------------------------------ pull

    def pull(self, progress: Progress | None = None, lock_wait_s: float = 0.0) -> PullResult:
        """One pull: up to date, applied, or refused; raises grpc.RpcError / PullInterrupted
        when the hub or the stream failed (the caller retries with backoff)."""
        from . import state

        with file_lock(self.dir / "pull.lock", lock_wait_s):
            try:
                result = self._pull(progress)
            except (grpc.RpcError, PullInterrupted) as exc:
                message = self.link.failed(exc) if isinstance(exc, grpc.RpcError) else str(exc)
                if not self.link.closing:  # a stop's cancel: resumed by the next pull
                    self._record({"error:pull": state.error_value(f"pull: {message}")})
                raise
            now = state.now_text()
            if result.status == "REFUSED" and not result.remembered:
                self._record({"error:pull": state.error_value(result.message), PULL_LANDING: None})
            elif result.status == "REFUSED":
                record = {
                    "version": result.version,
                    "sha256": result.sha256,
                    "reason": result.message,
                    "at": now,
                }
                self._record(
                    {
                        "error:pull": state.error_value(result.message),
                        "refused": json.dumps(record, ensure_ascii=False),
                        # the hub key it was checked with: a bundle installed since with
                        # another key (the hub's signing key replaced) checks it afresh
                        "refused_key": self._key_id(),
                        # and the bundle's signature: the same payload signed again (the
                        # hub's own key put back) is another bundle (review 40, spec40b)
                        "refused_signature": result.signature,
                        PULL_LANDING: None,
                    }
                )
            else:
                values: dict[str, str | None] = {
                    "last_pull_at": now,
                    PULL_LANDING: None,
                    "error:pull": state.error_value(result.message) if result.message else None,
                }
                if result.status == "APPLIED":
                    values["refused"] = None
                    values["refused_key"] = None
                    values["refused_signature"] = None
                self._record(values)
            return result

    @staticmethod
    def _landing(version: int) -> str:
        from . import state

        return json.dumps({"version": version, "at": state.now_text()})

    def _record(self, values: dict[str, str | None]) -> None:
        from . import state

        conn = open_ledger(self.agent.data_dir)
        try:
            state.put(conn, values)
        finally:
            conn.close()

    def _pull(self, progress: Progress | None) -> PullResult:
        """Decide what to ask for, receive it into pull.part, then verify and apply it.

        Each step returns what happened: a `PullResult` when the pull ends there (nothing
        newer, refused), or what the next step needs. What the caller should retry (the hub
        or the stream failed, a broken stream, no disk space) is raised as grpc.RpcError or
        `PullInterrupted`, with what arrived kept on disk for the next pull to resume.
        """
        current = cache_version(self.agent.data_dir)
        partial = self._load_partial(current)
        received = self._receive(current, partial, progress)
        if isinstance(received, _OtherBase):
            # The contract §3: a delta that does not apply on this till's version is
            # refused, and the till asks for a full snapshot (have_version 0) at once.
            log.warning("%s; asking for a full snapshot", received.message)
            partial = self._load_partial(current)
            if partial is not None and partial.base_version != 0:
                partial = None  # a full one is asked for: a delta's download is no use
            received = self._receive(current, partial, progress, full=True)
            assert not isinstance(received, _OtherBase)  # a full one is refused, not retried
        if isinstance(received, PullResult):
            return received
        self._downloaded = time.monotonic()
        return self._apply(received.bundle, current, received.resumed_from)

    def _receive(
        self,
        current: int,
        partial: _Partial | None,
        progress: Progress | None,
        *,
        full: bool = False,
    ) -> _Received | PullResult | _OtherBase:
        """Stream the bundle into pull.part: the rest of `partial` when the hub still
        serves that bundle, else a new one from byte 0. A watchdog cancels a stream that
        delivers nothing for a while (the link is dead even if TCP has not noticed); the
        first chunk may take longer, since the hub may wait for a full snapshot being built.
        `full`: ask for a full snapshot (have_version 0) whatever the cache's version.
        """
        request = pb.PullSnapshotRequest(
            device_id=self.device_id,
            have_version=0 if full else current,
            offset=partial.offset if partial else 0,
            want_version=partial.version if partial else 0,
        )
        call: Any = self.link.stub.PullSnapshot(request, timeout=self.stream_timeout_s)
        watchdog = _Watchdog(call, self.call_timeout_s, first_s=self.first_chunk_timeout_s)
        self._started = time.monotonic()
        download: _Download | None = None
        try:
            for chunk in call:
                watchdog.feed(len(chunk.data))
                self.link.ok()
                if download is None:
                    started = self._start(chunk, current, partial, full)
                    if isinstance(started, PullResult | _OtherBase):
                        return started
                    download = started
                refusal = download.refusal(chunk)
                if refusal is not None:
                    download.abandon()  # the stream, not the bundle: not remembered
                    return replace(self._refused(download.bundle, refusal), remembered=False)
                download.append(chunk.data)
                if progress is not None:
                    progress(download.received, download.bundle.total_size)
        except grpc.RpcError as exc:
            if watchdog.fired:
                at = download.received if download else partial.offset if partial else 0
                raise PullInterrupted(
                    f"the snapshot stream stalled for {watchdog.limit:g} s; will resume"
                    f" at byte {at}"
                ) from None
            if (
                download is not None
                and isinstance(exc, grpc.Call)
                and exc.code() == grpc.StatusCode.DATA_LOSS
            ):
                # The hub found its file damaged as it sent it (and builds it again):
                # what arrived is not the bundle, so the next pull starts from byte 0.
                download.abandon()
                self._discard()
            raise
        finally:
            watchdog.stop()
            call.cancel()  # a no-op when the stream has ended
            if download is not None:
                download.close()  # what arrived is made durable, unless abandoned
        return self._complete(download, partial)

    def _start(
        self, chunk: pb.SnapshotChunk, current: int, partial: _Partial | None, full: bool
    ) -> _Download | PullResult | _OtherBase:
        """The first chunk carries the bundle's header: nothing newer, a bundle refused
        before it is downloaded (a delta on another base than this till's version: not
        downloaded either, a full snapshot is asked for), the rest of the partial
        download, or a new download."""
        if chunk.total_size == 0:
            return self._nothing_newer(chunk.version, current)
        incoming = _Partial.of(chunk)
        if chunk.base_version not in (0, current) or (full and chunk.base_version != 0):
            message = (
                f"snapshot {chunk.version} refused: it is a delta from version"
                f" {chunk.base_version}, and this till's cache is at version {current}"
            )
        elif chunk.base_version and not self._holds_base(chunk.base_issued_at):
            message = (
                f"snapshot {chunk.version} refused: it is a delta from the hub's version"
                f" {chunk.base_version} of {chunk.base_issued_at}, and this till's version"
                f" {current} is another (the hub was restored from a backup?)"
            )
        else:
            message = ""
        if message:
            if not full:
                return _OtherBase(message)
            # Asked for a full one and sent a delta again: not remembered (the hub's
            # answer, not the bundle, is wrong); the next pull asks again.
            return replace(self._refused(incoming, message, discard=False), remembered=False)
        refusal = self._header_refusal(chunk)
        if refusal is not None:
            # Kept: a partial download of another bundle may still be resumed later.
            return self._refused(incoming, refusal, discard=False)
        if partial is not None and partial.same_bundle(chunk) and chunk.offset == partial.offset:
            self._check_space(partial.total_size, partial.offset)
            self._say_resumed(chunk.version, partial.offset)
            return _Download.resume(self, partial)
        if chunk.offset != 0:
            # Not the bundle we had: forget it and start over next time.
            self._discard()
            raise PullInterrupted("the hub's bundle changed; starting over")
        self._check_space(incoming.total_size, 0)
        return _Download.fresh(self, incoming)

    def _say_resumed(self, version: int, offset: int) -> None:
        """A resumed download, logged once at INFO; the same resume again (a retry that
        failed at the same place: the file size limit, a full disk) at DEBUG, and one from
        byte 0, which resumes nothing, not at all. `run`'s pull at the file size limit
        logged "resuming snapshot 1 at byte 0" at every retry, a resume that did not
        happen (review 42, polish42)."""
        if offset == 0:
            return
        level = logging.DEBUG if self._resumed == (version, offset) else logging.INFO
        self._resumed = (version, offset)
        log.log(level, "resuming snapshot %d at byte %d", version, offset)

    def _holds_base(self, base_issued_at: str) -> bool:
        """Whether the cache's version is the hub's version a delta is made on: the same
        issuedAt (a hub that does not say, or a time that does not parse: taken as so)."""
        if not base_issued_at:
            return True
        conn = open_cache(self.agent.data_dir)
        try:
            mine = cache_mod.info(conn).issued_at
        finally:
            conn.close()
        try:
            theirs = datetime.fromisoformat(base_issued_at)
            return mine is None or datetime.fromisoformat(mine) == theirs
        except ValueError:
            return True

    @staticmethod
    def _complete(download: _Download | None, partial: _Partial | None) -> _Received:
        """The stream ended: the whole bundle is on disk, or the pull resumes later."""
        if download is not None:
            bundle, received, resumed_from = (
                download.bundle,
                download.received,
                download.resumed_from,
            )
        elif partial is not None:  # no chunk at all: what the last pull left, as it is
            bundle, received, resumed_from = partial, partial.offset, 0
        else:
            raise PullInterrupted("the hub ended the stream without sending anything")
        if received < bundle.total_size:
            raise PullInterrupted(
                f"the snapshot stream ended at byte {received} of {bundle.total_size}; will resume"
            )
        return _Received(bundle, resumed_from)

    def _check_space(self, total: int, offset: int) -> None:
        """Room for the rest of the download and for applying it (the cache grows by
        about the payload's size while the old data is still there): else a retryable
        error, not a refusal, since the same snapshot is fine once space is freed."""
        need = (total - offset) + total + SPACE_MARGIN
        free = self.disk_free(self.dir)
        if free < need:
            raise NoSpace(
                f"not enough disk space for snapshot of {total} bytes: {free // MIB} MiB free,"
                f" {need // MIB} MiB needed; will retry"
            )

    def _header_refusal(self, chunk: pb.SnapshotChunk) -> str | None:
        """Why this bundle is refused before any of it is downloaded; None: download it."""
        if chunk.total_size > self.max_bytes:
            return f"snapshot refused: {chunk.total_size} bytes{LIMIT_WORDS}{self.max_bytes}"
        return self._known_refusal(chunk)

    def _known_refusal(self, chunk: pb.SnapshotChunk) -> str | None:
        """The same bundle was refused before: do not download it again."""
        from .state import get

        conn = open_ledger(self.agent.data_dir)
        try:
            raw = get(conn, "refused")
            key = get(conn, "refused_key")
            signature = get(conn, "refused_signature")
        finally:
            conn.close()
        if not raw or key != self._key_id():
            # None recorded (a refusal an older release remembered) counts as another
            # key: the bundle is downloaded and checked once more
            return None
        try:
            seen = json.loads(raw)
        except ValueError:
            return None
        if seen.get("version") != chunk.version or seen.get("sha256") != chunk.sha256.hex():
            return None
        if signature != base64.b64encode(chunk.signature).decode():
            # The same payload under another signature (the hub's own key put back after
            # a wrong one signed it) is checked afresh: until review 40 (spec40b) a bundle
            # refused for its signature was refused from memory when the hub served it
            # signed right, until the hub published another version. None recorded (a
            # refusal an older release remembered) is checked afresh too. The signature
            # covers the manifest (size and SHA-256, both in this header), so it is
            # checked here first: one that does not verify would be refused after the
            # download too, so nothing is downloaded (review 40, rev40f: a hub serving
            # the payload under a new bad signature at each poll, a broken signer or a
            # key made anew at each start, had the till download it at every poll).
            return self._header_signature_refusal(chunk)
        reason = str(seen.get("reason", "refused before"))
        if EXPIRED_WORDS in reason and self._still_valid(chunk.expires_at):
            # expired by the clock of that pull, not by this one: a clock that ran days
            # ahead and was set right refused the hub's bundle from memory until the hub
            # published another
            return None
        if LIMIT_WORDS in reason:
            # above the limit this till had then (`hub.max_snapshot_mib`), not refused for
            # what the bundle is: `_header_refusal` has just judged it by today's limit.
            # A limit raised for it refused the bundle from memory, in words naming the
            # old limit, until the hub published another version (review 51, mut51b).
            return None
        return reason

    def _header_signature_refusal(self, chunk: pb.SnapshotChunk) -> str | None:
        """Why a header's signature cannot be the hub's over the size and SHA-256 it
        declares (the payload, if it matched them, would fail the same check, and if it
        did not, would be refused as corrupted); None: it verifies, download it."""
        try:
            signing.check_manifest_signature(
                self.enrollment.snapshot_public_key(),
                chunk.signature,
                chunk.total_size,
                chunk.sha256,
            )
        except SnapshotRefused as exc:
            return str(exc)
        except (OSError, ValueError):
            return None  # no key to check with, a malformed header: the download decides
        return None

    def _still_valid(self, expires_at: str) -> bool:
        """Whether a header's `expiresAt` is still ahead by this till's clock now, read as
        the bundle's own check reads it (`signing.check_header`: RFC 3339, "t" and "z" in
        either case)."""
        from tillpoint.agent.models import _timestamp

        try:
            return _timestamp(expires_at) > self.clock()
        except (ValueError, TypeError):
            return False

    def _key_id(self) -> str:
        """The hub's snapshot key this till holds now (its enrolment's `snapshot.pub`)."""
        try:
            return hashlib.sha256(self.enrollment.snapshot_pub.read_bytes()).hexdigest()
        except OSError:
            return ""

    def _nothing_newer(self, hub_version: int, current: int) -> PullResult:
        message = ""
        if hub_version < current:
            message = (
                f"the hub's newest version {hub_version} is older than this till's cache"
                f" {current}: publish on the hub with --min-version {current + 1}"
            )
            log.warning(message)
        return PullResult("UP_TO_DATE", current, message=message)

    def _apply(self, partial: _Partial, current: int, resumed_from: int) -> PullResult:
        try:
            # The download is hashed in blocks and the signature checked over its
            # manifest; then applied from the file by path. Nothing maps or holds it.
            with signing.verify_file(
                public_key=self.enrollment.snapshot_public_key(),
                path=self.part,
                signature=base64.b64decode(partial.signature),
                current_version=current,
                now=self.clock(),
                declared_version=partial.version,
                declared_size=partial.total_size,
                declared_sha256=bytes.fromhex(partial.sha256),
            ) as verified:
                verified_at = time.monotonic()
                # `status` shows this as the last sync from the moment the data is in
                # the cache until `pull` records its end (`ledger.last_pull_at`)
                self._record({PULL_LANDING: self._landing(partial.version)})
                loaded = verified.apply(self.agent)
        except UnreadableFile:
            raise  # the file, not the bundle (EMFILE, EIO): the next pull tries again
        except SnapshotCorrupted as exc:
            # The bytes received are not what the hub declared (truncated, another
            # checksum): the transfer failed, not the bundle; the next pull downloads it
            # again (the hub may have rebuilt a damaged file meanwhile).
            return replace(self._refused(partial, str(exc)), remembered=False)
        except InputError as exc:
            # SnapshotRefused (older, wrong base), or a signed bundle with a row this till
            # refuses (a balance past int64): the same bytes would be refused again, so
            # they are recorded and not downloaded again; the cache keeps its version.
            return self._refused(partial, str(exc))
        self._discard()
        done = time.monotonic()
        if loaded.ignored:  # a newer hub's fields, or a typo the hub's import let through
            log.warning("snapshot %d: %s", partial.version, cache_mod.ignored_note(loaded.ignored))
        log.info(
            "snapshot %d applied (%s, %d bytes): received in %.1f s, verified in %.1f s,"
            " applied in %.1f s",
            partial.version,
            "full" if partial.base_version == 0 else f"delta from {partial.base_version}",
            partial.total_size,
            self._downloaded - self._started,
            verified_at - self._downloaded,
            done - verified_at,
        )
        return PullResult(
            "APPLIED",
            partial.version,
            partial.base_version,
            partial.total_size,
            resumed_from,
            sha256=partial.sha256,
        )

    def _refused(self, partial: _Partial | None, reason: str, discard: bool = True) -> PullResult:
        if discard:
            self._discard()
        version = partial.version if partial else 0
        # Once at ERROR; the same refusal of the same bundle again (the next polls, up to
        # 1,440 a day while the hub publishes nothing newer) at DEBUG: `status` keeps it.
        said = (version, partial.sha256 if partial else "", reason)
        level = logging.DEBUG if said == self._said else logging.ERROR
        self._said = said
        # For `run`'s operator; a one-shot `sync now` says it in its own line (review 40,
        # spec40b: it was said twice on stderr, this record as `tillpoint: error: …`).
        log.log(
            level,
            "%s (version %d); the cache keeps its current version",
            reason,
            version,
            extra=SAID_BY_THE_COMMAND,
        )
        return PullResult(
            "REFUSED",
            version,
            partial.base_version if partial else 0,
            partial.total_size if partial else 0,
            message=reason,
            sha256=partial.sha256 if partial else "",
            signature=partial.signature if partial else "",
        )


class _Watchdog:
    """Cancels a streaming call that has not delivered anything for `idle_s` seconds."""

    def __init__(self, call: Any, idle_s: float, first_s: float) -> None:
        self.call = call
        self.idle_s = idle_s
        self._limit = first_s
        self.fired = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pull-watchdog", daemon=True)
        self._thread.start()

    @property
    def limit(self) -> float:
        return self._limit

    def feed(self, size: int = 0) -> None:
        """A chunk of `size` bytes arrived: the next may take as long as a thin link needs
        for one as big (`SLOWEST_LINK`), and `idle_s` more. A chunk is one message of up
        to 1 MiB that arrives whole: with `idle_s` (5 s) alone, a link below ~1.7 Mbit/s
        had every pull cancelled as stalled after its first chunk. `idle_s` more, not the
        larger of the two (review 59, rev59): the time for the data alone at 32 KiB/s
        (8 s for the hub's 256 KiB chunks) is less than a 256 kbit/s line needs for the
        chunk with TCP's, TLS's, HTTP/2's and gRPC's framing (8.2-8.7 s), and such a line
        had its pull cancelled as stalled every few chunks; it also leaves a live line
        that pauses a few seconds its pull."""
        self._last = time.monotonic()
        self._limit = self.idle_s + size / SLOWEST_LINK

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_s / 4)):
            if time.monotonic() - self._last > self._limit:
                self.fired = True
                self.call.cancel()
                return

    def stop(self) -> None:
        self._stop.set()
