"""Review 27 (rev27): a second look at the session's merged change (docs/CONTRACT.md §3,
§9): what it left for a long-running till."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.pull import Puller
from tillpoint.v1 import tillpoint_pb2 as pb


def test_a_remembered_expiry_written_in_lower_case_is_checked_again(tmp_path: Path) -> None:
    """docs/CONTRACT.md §2, §9: an `expiresAt` is an RFC 3339 time, and RFC 3339 lets a
    bundle write its "T" and "Z" in lower case (the till's check of the bundle reads it
    so). A snapshot refused as expired by a clock that ran ahead is checked again against
    the header's `expiresAt` at the next pull; a lower-case one did not read back
    ("2026-12-10t10:00:00z" is not Python's ISO format), so the same bundle was refused from
    memory until the hub published another."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    try:
        ahead = Puller(
            till.agent,
            till.link,
            till.link.enrollment,
            call_timeout_s=2,
            clock=lambda: datetime.now(UTC) + timedelta(days=8),
        ).pull()
        assert ahead.status == "REFUSED" and "expired" in ahead.message
        right = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2)
        expires = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dt%H:%M:%Sz")
        header = pb.SnapshotChunk(
            version=ahead.version, sha256=bytes.fromhex(ahead.sha256), expires_at=expires
        )
        assert right._header_refusal(header) is None
        upper = pb.SnapshotChunk(
            version=ahead.version, sha256=bytes.fromhex(ahead.sha256), expires_at=expires.upper()
        )
        assert right._header_refusal(upper) is None
    finally:
        till.stop()
        hub.stop()
