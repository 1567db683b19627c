"""Review 27 (rev27): a second look at the session's merged change (docs/CONTRACT.md §3,
§9): what it left for a long-running till."""

from __future__ import annotations

import base64
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent.errors import StorageError, TillpointError
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import (
    LoopbackHub,
    Till,
    receipt,
    sample_master_data,
    timings,
    wait_for,
)
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher
from tillpoint.sync.service import SyncService
from tillpoint.v1 import tillpoint_pb2 as pb

CARD = "2770000000017"


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
        # the bundle's own header, its signature included (review 40: a remembered
        # refusal's signature is compared, and a new one checked, before a download)
        signed = {"total_size": ahead.size, "signature": base64.b64decode(ahead.signature)}
        header = pb.SnapshotChunk(
            version=ahead.version, sha256=bytes.fromhex(ahead.sha256), expires_at=expires, **signed
        )
        assert right._header_refusal(header) is None
        upper = pb.SnapshotChunk(
            version=ahead.version,
            sha256=bytes.fromhex(ahead.sha256),
            expires_at=expires.upper(),
            **signed,
        )
        assert right._header_refusal(upper) is None
    finally:
        till.stop()
        hub.stop()


def test_an_outbox_row_whose_result_does_not_read_is_named_not_an_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/CONTRACT.md §9, §12: an outbox row that does not read as a transaction is kept,
    and `status` names it (`outbox row seq S of D cannot be read`), logged at ERROR once.
    A row whose JSON reads but whose `resultJson` (with an explain trace, which the hub
    does not get) does not was "push: unexpected error: JSONDecodeError(...)" with a
    traceback at every retry of the sync thread (and "internal error" from `tillpoint
    sync now`)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    service = None
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        till.agent.checkout(receipt_from_json(dict(receipt("r-1", CARD), explain=True)))
        with sqlite3.connect(tmp_path / "till-1" / "ledger.db") as conn:
            result = conn.execute("SELECT result FROM receipts").fetchone()[0]
            assert '"trace"' in result
            conn.execute("UPDATE receipts SET result = ?", (result[:-40],))  # cut short
        with pytest.raises(TillpointError, match="outbox row seq 1 of till-1 cannot be read"):
            Pusher(till.data_dir, "till-1", till.link, call_timeout_s=2).drain()
        fast = timings(backoff_base_s=0.05, backoff_cap_s=0.1, push_check_s=0.05)
        caplog.set_level(logging.DEBUG, logger="tillpoint")
        service = SyncService(till.agent, till.link, till.link.enrollment, fast)
        service.start()
        wait_for(lambda: "seq 1" in till.agent.status().to_json()["syncError"], timeout=5)
        time.sleep(1.0)  # retries, about ten of them
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "outbox row seq 1" in errors[0].getMessage()
        assert till.agent.status().to_json()["outboxDepth"] == 1
    finally:
        if service is not None:
            service.stop()
            till.authoriser.close()
            till.agent.close()
        else:
            till.stop()
        hub.stop()


@contextlib.contextmanager
def _pulls_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> Iterator[Till]:
    """A till's sync thread (fast backoffs) whose every pull raises `error`."""

    def failing(self: Puller, *args: object, **kwargs: object) -> None:
        raise error

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    monkeypatch.setattr(Puller, "pull", failing)
    fast = timings(backoff_base_s=0.02, backoff_cap_s=0.05)
    service = SyncService(till.agent, till.link, till.link.enrollment, fast)
    service.start()
    try:
        yield till
    finally:
        service.stop()
        till.authoriser.close()
        till.agent.close()
        hub.stop()


def test_an_unexpected_error_of_the_sync_thread_is_logged_with_its_trace_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9, §12: the sync thread of `tillpoint run` outlives an error it did
    not expect (a bug: here one put in the pull), which `status` records and the thread
    retries with its backoff. Its traceback was logged at ERROR at every retry (up to a
    minute apart, for as long as the bug lasts: a journal full of the same trace, where
    the same refusal of a snapshot is logged once); once, then one DEBUG line a retry."""
    caplog.set_level(logging.DEBUG, logger="tillpoint")
    with _pulls_failing(tmp_path, monkeypatch, RuntimeError("a bug in the pull")) as till:
        wait_for(lambda: "a bug in the pull" in till.agent.status().to_json()["syncError"])
        wait_for(lambda: sum("again" in r.getMessage() for r in caplog.records) >= 3)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert errors[0].exc_info is not None  # with its trace


def test_a_pull_that_fails_on_the_tills_side_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9: a pull that fails on the till's own side (a full disk or a
    damaged cache while a snapshot is applied: a `StorageError`) wrote the same ERROR
    line at every retry, as push refusals and unexpected errors no longer do; once, then
    one DEBUG line a retry, and `status` keeps saying it."""
    caplog.set_level(logging.DEBUG, logger="tillpoint")
    full = StorageError("the cache cannot be written: disk full")
    with _pulls_failing(tmp_path, monkeypatch, full) as till:
        wait_for(lambda: "disk full" in till.agent.status().to_json()["syncError"])
        wait_for(lambda: sum("disk full" in r.getMessage() for r in caplog.records) >= 4)
        said = [r for r in caplog.records if "disk full" in r.getMessage()]
        assert [r.levelno for r in said][:1] == [logging.ERROR]
        assert all(r.levelno == logging.DEBUG for r in said[1:]), [r.levelname for r in said]
