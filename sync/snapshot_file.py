"""`tillpoint snapshot load FILE` for the sync era (the contract §3).

A till enrolled with a hub accepts only signed bundles (``tillpoint hub export``), checked
exactly like a pulled snapshot. A till that is not enrolled (a standalone till, a test)
also accepts a plain snapshot JSON; a signed bundle is then loaded without a signature
check, since such a till has no hub key to check it with (its declared size and SHA-256
are checked: a truncated or damaged file is refused).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tillpoint.agent import cache as cache_mod
from tillpoint.agent.db import open_cache
from tillpoint.agent.errors import SnapshotRefused

from . import ENROLLMENT_DIR, is_enrolled
from .till import TillAgent

if TYPE_CHECKING:
    from .pki import Enrollment

# The key material (`pki`, `signing`: cryptography) and the pull's module (gRPC) are
# imported only for a signed bundle or an enrolled till: a plain snapshot loaded on a
# standalone till, the common one-shot `snapshot load`, needs none of them (review 38).


def load_snapshot_file(agent: TillAgent, doc: Any) -> cache_mod.CacheInfo:
    """Apply a snapshot file's JSON (already parsed) to the agent's cache."""
    enrollment = _enrollment(agent.data_dir)
    if _signed(doc):
        from . import signing
        from .pull import cache_version

        payload, signature = signing.from_file(doc)
        if enrollment is None:
            # no key to check the signature with; the declared size and checksum still
            # tell a truncated or damaged file (it loaded, whatever its bytes had become).
            signing.check_declared(payload, *signing.declared(doc))
            unchecked = signing.VerifiedSnapshot(signing.read_header(payload), payload)
            return unchecked.apply(agent)
        current = cache_version(agent.data_dir)
        if _held_already(agent.data_dir, payload, current):
            # the very snapshot the cache holds, from a file again (a seeding script run
            # twice): its signature is checked all the same, then the cache answers
            # "unchanged", as for a plain file (§3 refuses an *older* version)
            current -= 1
        # The declared size and SHA-256 first, as a pull and a till without a hub check
        # them: a payload cut short is "truncated", a changed byte "corrupted", not "the
        # signature is not the hub's" (review 42, polish42). The signature is still over
        # what was read: declared values written to match a changed payload are its to refuse.
        size, sha256 = signing.declared(doc)
        loaded = signing.verify(
            public_key=enrollment.snapshot_public_key(),
            payload=payload,
            signature=signature,
            current_version=current,
            now=agent.clock(),
            declared_size=size,
            declared_sha256=sha256,
        ).apply(agent)
        _forget_landing(agent.data_dir, loaded.version)
        return loaded
    refuse_plain_if_enrolled(agent.data_dir)
    return agent.load_snapshot(doc)


def _enrollment(data_dir: Path) -> Enrollment | None:
    """`pki.load_enrollment`, which finds nothing (and finishes no key set) where the
    enrolment directory does not exist: pki is not imported then."""
    if not os.path.lexists(Path(data_dir) / ENROLLMENT_DIR):
        return None
    from .pki import load_enrollment

    return load_enrollment(data_dir)


def _signed(doc: Any) -> bool:
    """`signing.is_signed_file`, which only a JSON object with a "format" key can be."""
    if not (isinstance(doc, dict) and "format" in doc):
        return False
    from . import signing

    return signing.is_signed_file(doc)


def _forget_landing(data_dir: Path, version: int) -> None:
    """A pull's `pull_landing` marker for this version or an older one, left by a pull that
    died applying it (SIGKILL, the disk): the version is in the cache now from a file, no
    sync, and `status` took the dead pull's start for the last sync (`ledger.last_pull_at`,
    review 36, rev36f). A pull of a newer version applying beside us keeps its own."""
    import json

    from tillpoint.agent.ledger import PULL_LANDING, open_ledger

    conn = open_ledger(data_dir)
    try:
        with conn:
            row = conn.execute(
                "SELECT value FROM sync_state WHERE key = ?", (PULL_LANDING,)
            ).fetchone()
            try:
                landing = int(json.loads(str(row[0]))["version"]) if row else None
            except (ValueError, TypeError, KeyError):
                landing = 0  # unreadable: no pull's any more
            if landing is not None and landing <= version:
                conn.execute("DELETE FROM sync_state WHERE key = ?", (PULL_LANDING,))
    finally:
        conn.close()


def _held_already(data_dir: Path, payload: bytes, current: int) -> bool:
    """Whether the payload's header names the snapshot the cache holds: its version and
    `issuedAt` (the cache's own test, `cache.holds`). Read before the signature is
    checked, it only picks the version the check compares with: a header that cannot be
    read is no match (the signature check refuses what is not the hub's)."""
    from tillpoint.agent.models import _timestamp

    from . import signing

    if current <= 0:
        return False
    try:
        header = signing.read_header(payload)
    except SnapshotRefused:
        return False
    if header.get("version") not in (current, str(current)):
        return False
    try:
        issued = _timestamp(header.get("issuedAt"))
    except (TypeError, ValueError):
        return False
    conn = open_cache(Path(data_dir))
    try:
        return cache_mod.holds(conn, current, issued)
    finally:
        conn.close()


def refuse_plain_if_enrolled(data_dir: Path) -> None:
    """Raise SnapshotRefused on a till enrolled with a hub: call it before loading any
    unsigned snapshot (a JSON document or a JSON Lines stream)."""
    if is_enrolled(data_dir):
        raise SnapshotRefused(
            "this till is enrolled with a hub and accepts only signed snapshots: use"
            " `tillpoint hub export DEVICE` on the hub, or let the till pull"
        )
