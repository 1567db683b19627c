"""Signed snapshots: what the hub signs, what an agent checks before it swaps its cache.

The payload is the snapshot's JSON exactly as the hub serialised it. The Ed25519
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
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from tillpoint.agent.errors import SnapshotRefused

CONTEXT = b"tillpoint.snapshot.v1\x00"
FILE_FORMAT = "tillpoint-signed-snapshot/1"
MAX_CHUNK = 1024 * 1024  # the protocol's chunk limit (SnapshotChunk.data)


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
) -> dict[str, Any]:
    """Every check before the swap; returns the parsed snapshot or raises SnapshotRefused."""
    if declared_size is not None and len(payload) != declared_size:
        what = "truncated" if len(payload) < declared_size else "longer than declared"
        raise SnapshotRefused(f"snapshot refused: {what} ({len(payload)} of {declared_size} bytes)")
    if declared_sha256 is not None and hashlib.sha256(payload).digest() != declared_sha256:
        raise SnapshotRefused("snapshot refused: its checksum does not match (corrupted)")
    try:
        public_key.verify(signature, signed_message(device_id, payload))
    except InvalidSignature:
        raise SnapshotRefused(
            "snapshot refused: the signature is not the hub's (tampered, corrupted, or made"
            " for another device)"
        ) from None
    try:
        doc = json.loads(payload.decode("utf-8"), parse_float=_no_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotRefused(f"snapshot refused: signed but not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SnapshotRefused("snapshot refused: not a JSON object")
    check_header(doc, current_version, now, declared_version)
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
