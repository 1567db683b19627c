"""Signed snapshots: what the hub signs, what an agent checks before it swaps its cache.

The payload is the snapshot exactly as the hub serialised it: JSON Lines in the format
`tillpoint.snapshot/jsonl` (a header line, then each section's rows), which the agent
applies row by row, so a chain-sized snapshot never has to be one object in memory. A
snapshot is the same for every device (docs/PROTOCOL.md §3), so the Ed25519 signature
covers a small **manifest** of the payload, not the payload itself::

    MANIFEST_PREFIX + size.to_bytes(8, "big") + sha256(payload)

with ``MANIFEST_PREFIX = b"tillpoint.snapshot.v3\\0"`` (62 bytes in all). The prefix is
domain separation: these bytes are never a valid message of any other use of the key,
nor of the older v2 (``b"tillpoint.snapshot.v2\\0" + payload``) or per-device v1
signatures. Ed25519 has no streaming form, so signing the payload meant holding (or
mapping) all of it; the manifest lets both sides hash the payload in fixed-size blocks
and sign or verify 62 bytes. It is as strong as before as long as SHA-256 is collision
and second-preimage resistant: a different payload with the same size and digest would
be needed to reuse a signature (docs/PROTOCOL.md §2).

An agent accepts a snapshot only when, in this order: the payload is not larger than
declared (nor than the agent's limit), its SHA-256 matches the declared one, the
signature verifies over the manifest of the size and digest it computed itself, with the
hub's key from the enrolment bundle, it parses as a snapshot whose version is the
declared one and strictly newer than the cache's, and its ``expiresAt`` is present and
in the future. Only then does the atomic swap run (``Agent.load_snapshot``).

On disk (``tillpoint hub export`` writes it, ``tillpoint snapshot load`` reads it) a signed
bundle is one JSON document::

    {"format": "tillpoint-signed-snapshot/3", "version": 7, "baseVersion": 0,
     "size": 1234, "sha256": "<hex>", "signature": "<base64>",
     "payload": "<base64 of the exact payload>"}

``size`` and ``sha256`` are informative (the till recomputes both); files of formats
/1 and /2 carry signatures of the older messages and are refused with a hint.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from tillpoint.agent import limits
from tillpoint.agent.errors import SnapshotCorrupted, SnapshotRefused

if TYPE_CHECKING:
    from tillpoint.agent.cache import CacheInfo

    from .till import TillAgent

# The one definition of what a signature covers: this prefix, the payload's size (8 bytes,
# big-endian), its SHA-256 (32 bytes).
MANIFEST_PREFIX = b"tillpoint.snapshot.v3\x00"
FILE_FORMAT = "tillpoint-signed-snapshot/3"
OLD_FILE_FORMATS = ("tillpoint-signed-snapshot/1", "tillpoint-signed-snapshot/2")
MAX_CHUNK = 1024 * 1024  # the protocol's chunk limit (SnapshotChunk.data)
HASH_BLOCK = 1024 * 1024  # a file is hashed in blocks of this size into one buffer
SNAPSHOT_JSONL = "tillpoint.snapshot/jsonl"  # the payload format (agent/snapshot_stream.py)


def manifest(size: int, sha256: bytes) -> bytes:
    """The signed message of a payload of `size` bytes whose SHA-256 is `sha256`."""
    if len(sha256) != 32 or not 0 <= size < 1 << 64:
        raise ValueError("a manifest needs a 32-byte SHA-256 and a size below 2**64")
    return MANIFEST_PREFIX + size.to_bytes(8, "big") + sha256


def sign_manifest(key: ed25519.Ed25519PrivateKey, size: int, sha256: bytes) -> bytes:
    return key.sign(manifest(size, sha256))


def sign(key: ed25519.Ed25519PrivateKey, payload: bytes) -> bytes:
    return sign_manifest(key, len(payload), hashlib.sha256(payload).digest())


def hash_file(path: Path, start: int = 0) -> tuple[int, bytes]:
    """(size, SHA-256) of `path` from `start` on, read in `HASH_BLOCK` blocks into one
    reused buffer (no memory map: mapped pages would count in the process's RSS)."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fh.fileno(), start, 0, os.POSIX_FADV_SEQUENTIAL)
        fh.seek(start)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    view.release()
    return size, digest.digest()


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
        return {**_file_head(self), "payload": base64.b64encode(self.payload).decode()}


def _file_head(bundle: Any) -> dict[str, Any]:
    """A signed file's fields but its payload."""
    return {
        "format": FILE_FORMAT,
        "version": bundle.version,
        "baseVersion": bundle.base_version,
        "size": bundle.size,
        "sha256": bundle.sha256.hex(),
        "signature": base64.b64encode(bundle.signature).decode(),
    }


class _Writer(Protocol):
    def write(self, text: str, /) -> object: ...


def write_signed_file(out: _Writer, bundle: Any) -> None:
    """The signed file of a bundle (SignedSnapshot or the hub's FileSnapshot), its payload
    base64-encoded block by block, so a chain-sized one is never whole in memory."""
    head = json.dumps(_file_head(bundle))
    out.write(head[:-1] + ', "payload": "')
    block = 3 * 256 * 1024  # a multiple of 3: the pieces join into one base64 text
    with bundle.reader() as read:
        for start in range(0, bundle.size, block):
            out.write(base64.b64encode(read(start, block)).decode())
    out.write('"}\n')


def is_signed_file(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") in (FILE_FORMAT, *OLD_FILE_FORMATS)


def from_file(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    """(payload, signature) of a signed bundle file."""
    if doc.get("format") in OLD_FILE_FORMATS:
        raise SnapshotRefused(
            f"signed snapshot file: format /{str(doc['format']).rsplit('/', 1)[-1]} (a"
            " signature this till no longer accepts): export it again with"
            " `tillpoint hub export`"
        )
    try:
        payload = base64.b64decode(str(doc["payload"]), validate=True)
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except KeyError as exc:
        raise SnapshotRefused(f"signed snapshot file: {exc.args[0]} is missing") from None
    except (binascii.Error, ValueError):
        raise SnapshotRefused("signed snapshot file: payload or signature is not base64") from None
    return payload, signature


def declared(doc: dict[str, Any]) -> tuple[int | None, bytes | None]:
    """The payload's size and SHA-256 a signed file declares beside it (None: not given).
    Malformed ones are a damaged file."""
    size, sha = doc.get("size"), doc.get("sha256")
    if size is not None and (type(size) is not int or size < 0):
        raise SnapshotCorrupted("signed snapshot file: size is not a byte count (damaged)")
    if sha is None:
        return size, None
    try:
        digest = bytes.fromhex(sha) if isinstance(sha, str) else b""
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise SnapshotCorrupted("signed snapshot file: sha256 is not a SHA-256 in hex (damaged)")
    return size, digest


def check_declared(payload: bytes, size: int | None, sha256: bytes | None) -> None:
    """The payload against the size and SHA-256 declared beside it: a truncated or damaged
    file is refused even where no signature can be checked (a till not enrolled)."""
    _check_size(len(payload), size)
    _check_sha256(hashlib.sha256(payload).digest(), sha256)


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
    digest = hashlib.sha256(payload).digest()
    _check_sha256(digest, declared_sha256)
    _check_signature(public_key, signature, len(payload), digest)
    header = read_header(payload)
    check_header(header, current_version, now, declared_version)
    return VerifiedSnapshot(header, payload)


def _check_size(size: int, declared: int | None) -> None:
    if declared is not None and size != declared:
        what = "truncated" if size < declared else "longer than declared"
        raise SnapshotCorrupted(f"snapshot refused: {what} ({size} of {declared} bytes)")


def _check_sha256(digest: bytes, declared: bytes | None) -> None:
    if declared is not None and digest != declared:
        raise SnapshotCorrupted("snapshot refused: its checksum does not match (corrupted)")


def check_manifest_signature(
    public_key: ed25519.Ed25519PublicKey, signature: bytes, size: int, sha256: bytes
) -> None:
    """A header's signature over the manifest of the size and SHA-256 it declares, before
    any payload is downloaded (a pull checks a bundle it refused before this way when the
    hub serves it under another signature): SnapshotRefused in `_check_signature`'s words;
    ValueError for a size or digest no manifest can hold."""
    _check_signature(public_key, signature, size, sha256)  # `manifest` raises ValueError


def _check_signature(
    public_key: ed25519.Ed25519PublicKey, signature: bytes, size: int, digest: bytes
) -> None:
    """The signature over the manifest of what was computed here (never of what the hub
    declared beside the data)."""
    try:
        public_key.verify(signature, manifest(size, digest))
    except InvalidSignature:
        raise SnapshotRefused(
            "snapshot refused: the signature is not the hub's (tampered, corrupted, or signed"
            " with another key)"
        ) from None


class VerifiedFile:
    """A payload file on disk whose checks passed. Nothing is held open or mapped: a
    JSON Lines snapshot is applied from the file by path (a full one by the agent's
    build processes, which read it themselves)."""

    def __init__(self, header: dict[str, Any], path: Path) -> None:
        self.header = header
        self.path = path

    @property
    def jsonl(self) -> bool:
        return self.header.get("format") == SNAPSHOT_JSONL

    def apply(self, agent: TillAgent) -> CacheInfo:
        if self.jsonl:
            return agent.load_snapshot_file(self.path, 0)
        return agent.load_snapshot(self.header)

    def close(self) -> None:
        return None

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """`verify` for a payload on disk, with memory that does not grow with its size: the
    file is hashed in blocks (`hash_file`), then the same checks in the same order."""
    path = Path(path)
    _check_size(path.stat().st_size, declared_size)
    size, digest = hash_file(path)
    _check_size(size, declared_size)  # the file changed under us
    if size == 0:
        raise SnapshotRefused("snapshot refused: the payload is empty")
    _check_sha256(digest, declared_sha256)
    _check_signature(public_key, signature, size, digest)
    with open(path, "rb") as fh:
        first = fh.readline(limits.LINE_MAX_BYTES + 1)  # a longer JSON Lines header: refused
        if not (first.lstrip().startswith(b"{") and SNAPSHOT_JSONL.encode() in first):
            first = first + fh.read()  # a plain JSON document (small): read whole
    header = read_header(first)
    check_header(header, current_version, now, declared_version)
    return VerifiedFile(header, path)


@dataclass(frozen=True)
class VerifiedSnapshot:
    """A payload whose signature and header passed; `apply` swaps it into the cache."""

    header: dict[str, Any]
    payload: bytes

    @property
    def jsonl(self) -> bool:
        return self.header.get("format") == SNAPSHOT_JSONL

    def apply(self, agent: TillAgent) -> CacheInfo:
        if self.jsonl:
            return agent.load_snapshot_lines(io.BytesIO(self.payload))
        return agent.load_snapshot(self.header)


def read_header(payload: bytes) -> dict[str, Any]:
    """The header of a JSON Lines payload (its first line), or the whole JSON document."""
    first, _, _ = payload.partition(b"\n")
    text = first if first.lstrip().startswith(b"{") and SNAPSHOT_JSONL.encode() in first else None
    if text is not None and len(text) > limits.LINE_MAX_BYTES:
        # as the rows' reading refuses it (review 42, left42), before it is read as JSON
        raise SnapshotRefused(f"snapshot refused: {limits.line_too_long(1)}")
    try:
        doc = json.loads((text or payload).decode("utf-8"), parse_float=_no_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotRefused(f"snapshot refused: signed but not valid JSON ({exc})") from None
    except RecursionError:  # what Python's reader cannot take: as hub import words it
        raise SnapshotRefused("snapshot refused: not valid JSON (nested too deeply)") from None
    except ValueError:  # an integer past its 4,300 digits
        raise SnapshotRefused(
            "snapshot refused: not valid JSON (a number with too many digits)"
        ) from None
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
    if expires_at <= now:  # the words " expired at " are pull.EXPIRED_WORDS: keep them
        raise SnapshotRefused(
            f"snapshot refused: version {version} expired at {expires_at.isoformat()}"
        )
