"""Signed snapshots: what the hub signs, what an agent checks before it swaps its cache.

The payload is the snapshot exactly as the hub serialised it: JSON Lines in the format
`tillpoint.snapshot/jsonl` (a header line, then each section's rows), which the agent
applies row by row, so a chain-sized snapshot never has to be one object in memory. A
snapshot is the same for every device (docs/PROTOCOL.md §3), so the Ed25519 signature
covers ``PREFIX + payload`` with ``PREFIX = b"tillpoint.snapshot.v2\\0"`` (domain
separation: these bytes are never a valid message of any other use of the key, nor of
the per-device v1 signatures, which bound ``device_id`` too). The hub writes a full
snapshot to disk as exactly the signed message, signs it from a memory map and serves the
payload from ``len(PREFIX)`` on; a till writes its download the same way, so neither
side ever holds or copies a chain-sized payload to sign or verify it.

An agent accepts a snapshot only when, in this order: the payload is not larger than
declared (nor than the agent's limit), its SHA-256 matches, the signature verifies with
the hub's key from the enrolment bundle, it parses as a snapshot whose version is the
declared one and strictly newer than the cache's, and its ``expiresAt`` is present and
in the future. Only then does the atomic swap run (``Agent.load_snapshot``).

On disk (``tillpoint hub export`` writes it, ``tillpoint snapshot load`` reads it) a signed
bundle is one JSON document::

    {"format": "tillpoint-signed-snapshot/1", "deviceId": "till-1",
     "signature": "<base64>", "payload": "<base64 of the exact snapshot JSON>"}
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import mmap
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from tillpoint.agent.errors import SnapshotRefused

if TYPE_CHECKING:
    from tillpoint.agent.cache import CacheInfo
    from tillpoint.agent.service import Agent

PREFIX = b"tillpoint.snapshot.v2\x00"  # the one definition of what a signature covers
FILE_FORMAT = "tillpoint-signed-snapshot/2"
OLD_FILE_FORMAT = "tillpoint-signed-snapshot/1"
MAX_CHUNK = 1024 * 1024  # the protocol's chunk limit (SnapshotChunk.data)
SNAPSHOT_JSONL = "tillpoint.snapshot/jsonl"  # the payload format (agent/snapshot_stream.py)


def signed_message(payload: bytes) -> bytes:
    return PREFIX + payload


def sign(key: ed25519.Ed25519PrivateKey, payload: bytes) -> bytes:
    return key.sign(signed_message(payload))


def sign_message_file(key: ed25519.Ed25519PrivateKey, path: Path) -> bytes:
    """Sign a file that holds exactly the signed message (PREFIX + payload), from a
    read-only memory map (cryptography's Ed25519 `sign` takes any buffer)."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[: len(PREFIX)] != PREFIX:
            raise ValueError(f"{path} does not start with the signing prefix")
        with memoryview(mm) as whole:
            return key.sign(whole)


def canonical_json(doc: Any) -> bytes:
    """The one serialisation the hub signs: sorted keys, no blanks, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SignedSnapshot:
    """A payload in memory with its signature and the header the hub sends beside it."""

    version: int
    base_version: int
    issued_at: str
    expires_at: str
    payload: bytes
    signature: bytes

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.payload).digest()

    @property
    def size(self) -> int:
        return len(self.payload)

    def read(self, offset: int, size: int) -> bytes:
        return self.payload[offset : offset + size]

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[int, int], bytes]]:
        yield self.read

    def to_file(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "version": self.version,
            "baseVersion": self.base_version,
            "signature": base64.b64encode(self.signature).decode(),
            "payload": base64.b64encode(self.payload).decode(),
        }


def write_signed_file(out: TextIO, bundle: Any) -> None:
    """The signed file of a bundle (SignedSnapshot or the hub's FileSnapshot), its payload
    base64-encoded block by block, so a chain-sized one is never whole in memory."""
    head = json.dumps(
        {
            "format": FILE_FORMAT,
            "version": bundle.version,
            "baseVersion": bundle.base_version,
            "signature": base64.b64encode(bundle.signature).decode(),
        }
    )
    out.write(head[:-1] + ', "payload": "')
    block = 3 * 256 * 1024  # a multiple of 3: the pieces join into one base64 text
    with bundle.reader() as read:
        for start in range(0, bundle.size, block):
            out.write(base64.b64encode(read(start, block)).decode())
    out.write('"}\n')


def is_signed_file(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") in (FILE_FORMAT, OLD_FILE_FORMAT)


def from_file(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    """(payload, signature) of a signed bundle file."""
    if doc.get("format") == OLD_FILE_FORMAT:
        raise SnapshotRefused(
            "signed snapshot file: format /1 (a per-device signature this till no longer"
            " accepts): export it again with `tillpoint hub export`"
        )
    try:
        payload = base64.b64decode(str(doc["payload"]), validate=True)
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except KeyError as exc:
        raise SnapshotRefused(f"signed snapshot file: {exc.args[0]} is missing") from None
    except (binascii.Error, ValueError):
        raise SnapshotRefused("signed snapshot file: payload or signature is not base64") from None
    return payload, signature


def _no_float(text: str) -> Any:
    raise SnapshotRefused(f"snapshot: the number {text} has a fraction")


def verify(
    *,
    public_key: ed25519.Ed25519PublicKey,
    payload: bytes,
    signature: bytes,
    current_version: int,
    now: datetime,
    declared_version: int | None = None,
    declared_size: int | None = None,
    declared_sha256: bytes | None = None,
) -> VerifiedSnapshot:
    """Every check before the swap; returns the parsed snapshot or raises SnapshotRefused."""
    _check_size(len(payload), declared_size)
    _check_sha256(payload, declared_sha256)
    _check_signature(public_key, signature, signed_message(payload))
    header = read_header(payload)
    check_header(header, current_version, now, declared_version)
    return VerifiedSnapshot(header, payload)


def _check_size(size: int, declared: int | None) -> None:
    if declared is not None and size != declared:
        what = "truncated" if size < declared else "longer than declared"
        raise SnapshotRefused(f"snapshot refused: {what} ({size} of {declared} bytes)")


def _check_sha256(payload: bytes | memoryview, declared: bytes | None) -> None:
    if declared is not None and hashlib.sha256(payload).digest() != declared:
        raise SnapshotRefused("snapshot refused: its checksum does not match (corrupted)")


def _check_signature(
    public_key: ed25519.Ed25519PublicKey, signature: bytes, message: bytes | memoryview
) -> None:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise SnapshotRefused(
            "snapshot refused: the signature is not the hub's (tampered, corrupted, or signed"
            " with another key)"
        ) from None


class VerifiedFile:
    """A downloaded snapshot whose checks passed, verified and applied from one mmap.

    Ed25519 needs the whole signed message as one buffer. The file holds exactly that
    message (PREFIX, then the payload), so it is mapped read-only instead of read into
    memory: the signature, the checksum and the rows that are applied all come from the
    same mapped bytes, and the process's anonymous memory stays flat. Mapped pages are
    page cache (counted as RssFile while mapped, dropped on close).
    """

    def __init__(
        self,
        header: dict[str, Any],
        message: Path,
        mm: mmap.mmap,
        start: int,
        temporary: bool = False,
    ) -> None:
        self.header = header
        self._message = message
        self._mm = mm
        self._start = start
        self._temporary = temporary

    @property
    def jsonl(self) -> bool:
        return self.header.get("format") == SNAPSHOT_JSONL

    def lines(self) -> Iterator[bytes]:
        self._mm.seek(self._start)
        return iter(self._mm.readline, b"")

    def apply(self, agent: Agent) -> CacheInfo:
        """A JSON Lines snapshot is applied from the verified file itself: a full one is
        built by child processes reading the payload after the prefix (`cache_build`)."""
        if self.jsonl:
            return agent.load_snapshot_file(self._message, self._start)
        return agent.load_snapshot(self.header)

    def close(self) -> None:
        self._mm.close()
        if self._temporary:
            self._message.unlink(missing_ok=True)

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_message_file(
    *,
    public_key: ed25519.Ed25519PublicKey,
    path: Path,
    signature: bytes,
    current_version: int,
    now: datetime,
    declared_version: int | None = None,
    declared_size: int | None = None,
    declared_sha256: bytes | None = None,
    temporary: bool = False,
) -> VerifiedFile:
    """`verify` for a file that holds the signed message (PREFIX + payload), with memory
    that does not grow with its size: the same checks in the same order. Use the result
    as a context manager (it holds the mapping; `temporary`: the file goes with it)."""
    ok = False
    mm: mmap.mmap | None = None
    try:
        size = path.stat().st_size - len(PREFIX)
        _check_size(max(size, 0), declared_size)
        if size <= 0:
            raise SnapshotRefused("snapshot refused: the payload is empty")
        with path.open("rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if mm[: len(PREFIX)] != PREFIX:
            raise SnapshotRefused("snapshot refused: the download does not hold a signed message")
        mm.madvise(mmap.MADV_SEQUENTIAL)
        body = memoryview(mm)[len(PREFIX) :]
        try:
            _check_sha256(body, declared_sha256)
        finally:
            body.release()
        with memoryview(mm) as whole:  # released before the mapping can be closed
            _check_signature(public_key, signature, whole)
        mm.seek(len(PREFIX))
        first = mm.readline()
        header = read_header(first if SNAPSHOT_JSONL.encode() in first else mm[len(PREFIX) :])
        check_header(header, current_version, now, declared_version)
        ok = True
        return VerifiedFile(header, path, mm, len(PREFIX), temporary)
    finally:
        if not ok:
            if mm is not None:
                mm.close()
            if temporary:
                path.unlink(missing_ok=True)


def verify_file(
    *,
    public_key: ed25519.Ed25519PublicKey,
    path: Path,
    signature: bytes,
    current_version: int,
    now: datetime,
    declared_version: int | None = None,
    declared_size: int | None = None,
    declared_sha256: bytes | None = None,
) -> VerifiedFile:
    """`verify` for a bare payload on disk: the signed message is written next to it
    (PREFIX, then the payload copied in 1 MiB blocks) as `<path>.msg`, which goes when the
    result is closed; then `verify_message_file`."""
    size = path.stat().st_size
    _check_size(size, declared_size)
    if size == 0:
        raise SnapshotRefused("snapshot refused: the payload is empty")
    message = path.with_name(path.name + ".msg")
    with path.open("rb") as src, message.open("wb") as dst:
        dst.write(PREFIX)
        shutil.copyfileobj(src, dst, 1024 * 1024)
    return verify_message_file(
        public_key=public_key,
        path=message,
        signature=signature,
        current_version=current_version,
        now=now,
        declared_version=declared_version,
        declared_size=declared_size,
        declared_sha256=declared_sha256,
        temporary=True,
    )


@dataclass(frozen=True)
class VerifiedSnapshot:
    """A payload whose signature and header passed; `apply` swaps it into the cache."""

    header: dict[str, Any]
    payload: bytes

    @property
    def jsonl(self) -> bool:
        return self.header.get("format") == SNAPSHOT_JSONL

    def apply(self, agent: Agent) -> CacheInfo:
        if self.jsonl:
            return agent.load_snapshot_lines(io.BytesIO(self.payload))
        return agent.load_snapshot(self.header)


def read_header(payload: bytes) -> dict[str, Any]:
    """The header of a JSON Lines payload (its first line), or the whole JSON document."""
    first, _, _ = payload.partition(b"\n")
    text = first if first.lstrip().startswith(b"{") and SNAPSHOT_JSONL.encode() in first else None
    try:
        doc = json.loads((text or payload).decode("utf-8"), parse_float=_no_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotRefused(f"snapshot refused: signed but not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SnapshotRefused("snapshot refused: not a JSON object")
    return doc


def check_header(
    doc: dict[str, Any], current_version: int, now: datetime, declared_version: int | None
) -> None:
    """Version strictly newer, the declared one, and not expired."""
    from tillpoint.agent.models import _timestamp

    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        try:
            version = int(str(version))
        except ValueError:
            raise SnapshotRefused("snapshot refused: it has no version") from None
    if declared_version is not None and version != declared_version:
        raise SnapshotRefused(
            f"snapshot refused: it says version {version} but was announced as {declared_version}"
        )
    if version <= current_version:
        raise SnapshotRefused(
            f"snapshot refused: version {version} is not newer than the cache's"
            f" {current_version} (rollback)"
        )
    expires = doc.get("expiresAt")
    if not expires:
        raise SnapshotRefused(f"snapshot refused: version {version} has no expiresAt")
    try:
        expires_at = _timestamp(expires)
    except ValueError as exc:
        raise SnapshotRefused(f"snapshot refused: expiresAt {exc}") from None
    if expires_at <= now:
        raise SnapshotRefused(
            f"snapshot refused: version {version} expired at {expires_at.isoformat()}"
        )
