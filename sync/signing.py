"""Signed snapshots: what the hub signs, what an agent checks before it swaps its cache.

The payload is the snapshot exactly as the hub serialised it: JSON Lines in the format
`tillpoint.snapshot/jsonl` (a header line, then each section's rows), which the agent
applies row by row, so a chain-sized snapshot never has to be one object in memory. The Ed25519
signature covers ``b"tillpoint.snapshot.v1\\0" + device_id + b"\\0" + payload``: the
exact payload bytes, bound to the device they were made for (a per-device snapshot
carries that device's ``appliedThrough`` and balances, so it must not be replayed on
another till).

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
import hashlib
import io
import json
import mmap
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from tillpoint.agent.errors import SnapshotRefused

if TYPE_CHECKING:
    from tillpoint.agent.cache import CacheInfo
    from tillpoint.agent.service import Agent

CONTEXT = b"tillpoint.snapshot.v1\x00"
FILE_FORMAT = "tillpoint-signed-snapshot/1"
MAX_CHUNK = 1024 * 1024  # the protocol's chunk limit (SnapshotChunk.data)
SNAPSHOT_JSONL = "tillpoint.snapshot/jsonl"  # the payload format (agent/snapshot_stream.py)


def signed_message(device_id: str, payload: bytes) -> bytes:
    return CONTEXT + device_id.encode() + b"\x00" + payload


def sign(key: ed25519.Ed25519PrivateKey, device_id: str, payload: bytes) -> bytes:
    return key.sign(signed_message(device_id, payload))


def canonical_json(doc: Any) -> bytes:
    """The one serialisation the hub signs: sorted keys, no blanks, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SignedSnapshot:
    """A payload with its signature and the header the hub sends beside it."""

    device_id: str
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

    def to_file(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "deviceId": self.device_id,
            "version": self.version,
            "baseVersion": self.base_version,
            "signature": base64.b64encode(self.signature).decode(),
            "payload": base64.b64encode(self.payload).decode(),
        }


def is_signed_file(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == FILE_FORMAT


def from_file(doc: dict[str, Any]) -> tuple[str, bytes, bytes]:
    """(device id, payload, signature) of a signed bundle file."""
    try:
        device = str(doc["deviceId"])
        payload = base64.b64decode(str(doc["payload"]), validate=True)
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except KeyError as exc:
        raise SnapshotRefused(f"signed snapshot file: {exc.args[0]} is missing") from None
    except (binascii.Error, ValueError):
        raise SnapshotRefused("signed snapshot file: payload or signature is not base64") from None
    return device, payload, signature


def _no_float(text: str) -> Any:
    raise SnapshotRefused(f"snapshot: the number {text} has a fraction")


def verify(
    *,
    public_key: ed25519.Ed25519PublicKey,
    device_id: str,
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
    _check_signature(public_key, signature, signed_message(device_id, payload))
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
            "snapshot refused: the signature is not the hub's (tampered, corrupted, or made"
            " for another device)"
        ) from None


class VerifiedFile:
    """A downloaded payload file whose checks passed, verified and applied from one mmap.

    Ed25519 needs the whole signed message as one buffer. Instead of reading a chain-sized
    payload into memory (twice: the payload and the prefixed message), the message is
    written next to the payload on disk (prefix, then the payload copied by the kernel)
    and mapped read-only: the signature, the checksum and the rows that are applied all
    come from the same mapped bytes, and the process's anonymous memory stays flat.
    Mapped pages are page cache (counted as RssFile while mapped, dropped on close).
    """

    def __init__(self, header: dict[str, Any], message: Path, mm: mmap.mmap, start: int) -> None:
        self.header = header
        self._message = message
        self._mm = mm
        self._start = start

    @property
    def jsonl(self) -> bool:
        return self.header.get("format") == SNAPSHOT_JSONL

    def lines(self) -> Iterator[bytes]:
        self._mm.seek(self._start)
        return iter(self._mm.readline, b"")

    def apply(self, agent: Agent) -> CacheInfo:
        if self.jsonl:
            return agent.load_snapshot_lines(self.lines())
        return agent.load_snapshot(self.header)

    def close(self) -> None:
        self._mm.close()
        self._message.unlink(missing_ok=True)

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_file(
    *,
    public_key: ed25519.Ed25519PublicKey,
    device_id: str,
    path: Path,
    signature: bytes,
    current_version: int,
    now: datetime,
    declared_version: int | None = None,
    declared_size: int | None = None,
    declared_sha256: bytes | None = None,
) -> VerifiedFile:
    """`verify` for a payload on disk, with memory that does not grow with its size.

    The same checks in the same order; use the result as a context manager (it holds the
    mapping and a temporary `<path>.msg` file of the signed message).
    """
    size = path.stat().st_size
    _check_size(size, declared_size)
    if size == 0:
        raise SnapshotRefused("snapshot refused: the payload is empty")
    prefix = signed_message(device_id, b"")
    message = path.with_name(path.name + ".msg")
    with path.open("rb") as src, message.open("wb") as dst:
        dst.write(prefix)
        shutil.copyfileobj(src, dst, 1024 * 1024)
    with message.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    ok = False
    try:
        mm.madvise(mmap.MADV_SEQUENTIAL)
        body = memoryview(mm)[len(prefix) :]
        try:
            _check_sha256(body, declared_sha256)
        finally:
            body.release()
        with memoryview(mm) as whole:  # released before the mapping can be closed
            _check_signature(public_key, signature, whole)
        mm.seek(len(prefix))
        first = mm.readline()
        header = read_header(first if SNAPSHOT_JSONL.encode() in first else mm[len(prefix) :])
        check_header(header, current_version, now, declared_version)
        ok = True
        return VerifiedFile(header, message, mm, len(prefix))
    finally:
        if not ok:
            mm.close()
            message.unlink(missing_ok=True)


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
