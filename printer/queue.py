"""The durable print queue: ``print_jobs`` rows in the agent's ledger and the worker that prints.

The agent inserts one ``PENDING`` row in the same SQLite transaction as a committed checkout
(:func:`enqueue` does that insert for a connection the caller owns). The checkout never waits
for the printer: :class:`PrintWorker` runs in its own thread with its own connection and
prints the rows in order.

One job, one attempt::

    PENDING ──connect, ask status──► (printer offline / out of paper: stay PENDING, back off)
       │
       ▼ claim: state = SENDING, attempts + 1, COMMIT        ← nothing was sent before this
    send the bytes (they end with the cut) ──fails──► PENDING, back off (no cut went out)
       │
       ▼ send GS r 1, wait for the printer's reply (it answers after it has printed)
       ├─ reply ──────────────► DONE, printed_at
       ├─ no reply in time ───► ask DLE EOT 2 (when query_status is on):
       │     ├─ answer ───────► DONE, last_error notes "not confirmed" (it reads: no GS r)
       │     └─ silence ──────► PENDING, "sent, not confirmed": held (the jobs behind it
       │                        wait) until the printer answers DLE EOT, then sent again
       └─ connection lost ────► PENDING, back off (the printer did not acknowledge the job)

Exactly once, as far as ESC/POS allows:

- a job is reprinted only when the printer demonstrably did not take all of it (the send
  failed before the cut went out, or the connection broke before the printer acknowledged);
- a job found in ``SENDING`` when the worker starts was interrupted (crash, power cut) between
  its first byte and being marked done: it may or may not be on paper, so it is *not*
  reprinted; it becomes ``FAILED`` with a message saying so, and :meth:`PrintWorker.requeue`
  prints it again on request;
- a duplicate is still possible if a printer prints a whole job and then drops the connection
  without answering ``GS r``, or prints it and then answers nothing until it is back (the
  held job is sent again: a duplicate is the lesser evil next to a lost coupon); a lost
  coupon is possible if a printer that answers ``DLE EOT`` but never ``GS r`` loses its
  buffer after the worker gave up waiting (or with ``query_status`` off). Both need a
  printer fault at exactly that moment. ``docs/PRINTING.md`` has the whole table.

A job the printer drops ``max_send_failures`` times while it is sent or confirmed (connected:
too big for the printer, a byte it rejects) becomes ``FAILED``, so it cannot hold the jobs
behind it for good; connect failures are not counted.

Backoff: consecutive failures wait ``retry_base_s × 2^(n-1)`` capped at ``retry_max_s``, with
equal jitter (half fixed, half random). Jobs print strictly in order: while the oldest pending
job waits, the ones behind it wait too, so the printer is not hammered and coupons are not
reordered. Only one worker may run per ledger (an ``flock`` on ``<ledger>.print.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypedDict

from tillpoint.agent.db import connect, full_disk_hint
from tillpoint.agent.errors import InputError, StorageError
from tillpoint.agent.expiry import last_instant
from tillpoint.agent.ledger import (
    PRINT_UNCONFIRMED,
    insert_print_job,
    migrate_ledger,
    print_jobs,
    requeue_print_job,
)
from tillpoint.printer import _escpos
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.errors import ConnectionLost, PrinterError
from tillpoint.printer.layout import offers_blocks, render_escpos, separator_bytes
from tillpoint.printer.payload import OfferNow, PrintPayload, parse_payload
from tillpoint.printer.profiles import Profile, resolve_profile
from tillpoint.printer.transport import STOP_FINISH_S, Transport, make_transport

__all__ = [
    "Health",
    "PrintWorker",
    "PrinterStatus",
    "enqueue",
    "ensure_schema",
    "list_jobs",
    "query_health",
    "read_torn",
    "requeue",
    "rfc3339",
    "write_torn",
]

log = logging.getLogger("tillpoint.printer")

DLE_EOT_OFFLINE_CAUSE = b"\x10\x04\x02"
DLE_EOT_PAPER = b"\x10\x04\x04"
GS_R_PAPER = b"\x1dr\x01"

PrinterState = Literal["OK", "OFFLINE", "ERROR", "DISABLED"]
PaperState = Literal["OK", "LOW", "OUT", "UNKNOWN"]


class PrinterStatus(TypedDict):
    state: PrinterState
    printer: str
    queue_depth: int  # PENDING + SENDING jobs
    failed_jobs: int
    last_error: str | None
    last_printed_at: str | None
    retry_at: str | None
    paper: PaperState


def rfc3339(dt: datetime) -> str:
    """UTC, millisecond precision, "Z": sorts as text in time order."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def ensure_schema(conn: sqlite3.Connection) -> None:
    """The ledger's schema (``print_jobs`` among it), from the module that owns the file."""
    migrate_ledger(conn)


def enqueue(
    conn: sqlite3.Connection,
    payload: Mapping[str, Any],
    *,
    created_at: datetime | None = None,
) -> bool:
    """Insert a job in the caller's transaction; False if this receipt already has one.

    The payload is checked first (InputError when it would not print). Idempotent on
    ``receiptId``, like checkout itself.
    """
    parsed = parse_payload(payload)
    return insert_print_job(
        conn, parsed.receipt_id, rfc3339(created_at or datetime.now(UTC)), parsed.to_json()
    )


def _receipt_now(job: _Job, payload: PrintPayload, now: datetime) -> datetime:
    """The receipt's business time (`at`, what §7 picked the offers at) advanced by how long
    the job has waited: an offer counts as expired when it ended before the coupon comes
    out, on the receipt's clock. The wall clock alone dropped every job of a receipt dated
    in the past (a replayed or test day: nothing printed while the printer was up)."""
    if payload.at is None or job.created_at is None:
        return now
    return payload.at + max(now - job.created_at, timedelta(0))


# What the snapshot offers now of a job's offers (`PrintWorker.offers_now`): given their
# ids and the job's receipt id, the ones it would still print (there, `printable`, still
# the own offers of the receipt's customer and not of a campaign whose control group the
# customer has joined since), each with its `validTo` and its words now; None when it
# cannot tell (no snapshot loaded): the job prints as it was queued.
OffersNow = Callable[[Sequence[str], str], Mapping[str, OfferNow] | None]


def _as_offered_now(payload: PrintPayload, offers_now: OffersNow | None) -> PrintPayload:
    """The job without the offers the hub withdrew while it waited (removed by a delta, no
    longer printable, or held back from the customer now in the campaign's control
    group), each of the others with the words the snapshot has now and to the earlier of
    its two ends (a coupon never promises more than the snapshot gives now, nor more than
    the sale gave)."""
    if offers_now is None or not payload.offers:
        return payload
    try:
        current = offers_now([o.id for o in payload.offers], payload.receipt_id)
    except Exception:  # the cache unreadable now: printed as queued, never held up
        log.warning("the offers of a print job could not be read from the snapshot", exc_info=True)
        return payload
    if current is None:
        return payload
    kept = []
    for offer in payload.offers:
        if offer.id not in current:
            continue
        end, text = current[offer.id]
        if end is not None and (offer.valid_to is None or end < offer.valid_to):
            offer = offer.model_copy(update={"valid_to": end})
        if text != offer.text:
            offer = offer.model_copy(update={"text": text})
        kept.append(offer)
    if kept == payload.offers:
        return payload
    return payload.model_copy(update={"offers": kept})


def _still_valid(job: _Job, payload: PrintPayload, now: datetime) -> PrintPayload:
    """The job without the offers that ended while it waited (none left of some: `_stale`
    fails the job)."""
    moment = _receipt_now(job, payload, now)
    kept = [o for o in payload.offers if o.valid_to is None or last_instant(o.valid_to) >= moment]
    if len(kept) == len(payload.offers):
        return payload
    return payload.model_copy(update={"offers": kept})


def _connect(db_path: str | os.PathLike[str]) -> sqlite3.Connection:
    path = Path(db_path)
    if not path.exists():
        raise InputError(f"{path}: no ledger here (has this till committed a receipt?)")
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("SELECT 1 FROM print_jobs LIMIT 1")
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        if "no such table" in str(exc):
            raise InputError(f"{path}: no print queue in it ({exc})") from None
        # a full disk ("disk I/O error" opening the WAL's shared memory), a busy or
        # unreadable file: the queue is there, this process cannot read it now (exit 1)
        raise StorageError(f"cannot open {path}: {exc}{full_disk_hint(path)}") from None
    return conn


def list_jobs(
    db_path: str | os.PathLike[str], receipt_id: str | None = None, *, include_done: bool = False
) -> list[dict[str, Any]]:
    """Jobs of the queue (open ones, or every one), oldest first, payload parsed."""
    conn = _connect(db_path)
    try:
        rows = print_jobs(conn, receipt_id, include_done=include_done)
    finally:
        conn.close()
    for row in rows:
        with contextlib.suppress(ValueError):
            row["payload"] = json.loads(row["payload"])
    return rows


def requeue(db_path: str | os.PathLike[str], receipt_id: str) -> bool:
    """Put a FAILED (or DONE) job back in the queue, or send a held one or one waiting for
    its retry now (`requeue_print_job`); False when there is no such job."""
    conn = _connect(db_path)
    try:
        return requeue_print_job(conn, receipt_id)
    finally:
        conn.close()


@dataclass(frozen=True)
class Health:
    """What the printer says about itself; ``known`` is False when it did not answer."""

    known: bool
    paper: PaperState = "UNKNOWN"
    problem: str | None = None  # blocks printing: cover open, out of paper, error

    @property
    def blocking(self) -> bool:
        return self.problem is not None


def _valid_realtime(b: int) -> bool:
    # DLE EOT replies: bit 0 = 0, bit 1 = 1, bit 4 = 1, bit 7 = 0
    return (b & 0x93) == 0x12


def stop_wait_s(config: PrinterConfig) -> float:
    """How long the print worker's stop waits for a job on its way: its confirmation
    (`confirm_timeout_s`, then `status_timeout_s`) and 5 s more; on a serial line also
    the time a job's last seconds may still take to be written out (`STOP_FINISH_S`,
    twice: review 39, rev38e)."""
    wait = float(config.confirm_timeout_s) + float(config.status_timeout_s) + 5.0
    return wait + (2 * STOP_FINISH_S if config.kind == "serial" else 0.0)


def _gs_r_reply(
    transport: Transport, timeout_s: float, stopping: Callable[[], bool] = lambda: False
) -> bytes:
    """The answer to `GS r 1` within `timeout_s`, or b"". A status byte of another kind (a
    `DLE EOT` answer or an automatic status: bit 4 set, bit 7 clear; GS r keeps bit 4 at
    0) that came late, or that the printer sent by itself, was taken for the confirmation
    of a job never printed. Any other byte counts, as before (printers differ).

    `timeout_s` runs from the printer's last progress through the job where the transport
    tells what it has not taken yet (`unsent`: a network printer): a printer reading a
    long coupon slowly answers once it has read it all, and was asked while most of it
    still waited in the agent's kernel; unanswered, the attempt was held as
    unacknowledged, reset under the coupon's tail and sent again behind a cut, at every
    retry, for ever (review 32, rev32b). On a serial line (`line_busy_s`) it runs from
    when the line has carried the job at its baud rate: the kernel holds tens of KB for
    the line after the write returns, which the port does not tell, and the answer was
    awaited while some seconds of a long coupon still crossed the line (review 38). Not
    once the agent is `stopping`: its stop waits for one `timeout_s` at most."""
    unsent: Callable[[], int | None] | None = getattr(transport, "unsent", None)
    waiting = unsent() if unsent is not None else None
    line_busy: Callable[[], float] | None = getattr(transport, "line_busy_s", None)
    busy = line_busy() if line_busy is not None and not stopping() else 0.0
    deadline = time.monotonic() + busy + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if busy and stopping():  # the stop waits for one `timeout_s` at most
            deadline = min(deadline, time.monotonic() + timeout_s)
            busy = 0.0
            # and this read too: it waited the line's whole time as well, past the bound
            # the stop joins the worker for (review 40, rev40d)
            left = deadline - time.monotonic()
        byte = transport.read(1, min(left, 0.1) if waiting or busy else left)
        if byte:
            if byte[0] & 0x90 != 0x10:
                return byte
            continue
        if not waiting or unsent is None:  # all of it taken (or no telling): plain wait
            continue
        now_waiting = unsent()
        if now_waiting is not None and now_waiting < waiting and not stopping():
            deadline = time.monotonic() + timeout_s  # it still reads the job
        waiting = now_waiting
    return b""


def query_health(transport: Transport, timeout_s: float) -> Health:
    """Ask ``DLE EOT 2`` (offline cause) and ``DLE EOT 4`` (paper); no answer → unknown.

    Never trusts silence: python-escpos 3.1 reads an empty reply as "paper OK", we read it
    as "unknown". Raises ConnectionLost if the printer drops the connection meanwhile.
    """
    transport.discard_input()
    transport.write(DLE_EOT_OFFLINE_CAUSE)
    reply = transport.read(1, timeout_s)
    if not reply or not _valid_realtime(reply[0]):
        return Health(known=False)
    cause = reply[0]
    transport.write(DLE_EOT_PAPER)
    reply = transport.read(1, timeout_s)
    paper: PaperState = "UNKNOWN"
    if reply and _valid_realtime(reply[0]):
        if reply[0] & 0x60:
            paper = "OUT"
        elif reply[0] & 0x0C:
            paper = "LOW"
        else:
            paper = "OK"
    problem = None
    if cause & 0x04:
        problem = "printer cover is open"
    elif cause & 0x20 or paper == "OUT":
        problem = "printer is out of paper"
        paper = "OUT"
    elif cause & 0x40:
        problem = "printer reports an error (cutter jam or overheating?)"
    return Health(known=True, paper=paper, problem=problem)


# The start of a job's `last_error` while it was sent and never confirmed (no `GS r`, no
# `DLE EOT` answer after it): the job is held, with every job behind it, until the printer
# answers `DLE EOT` again, and then sent again. Stored in the row, so it holds across a
# restart; `print retry` sends it again at once (held again if still unanswered).
UNCONFIRMED = PRINT_UNCONFIRMED


# What a job's `last_error` says when an earlier attempt may have left a torn part of it
# on the printer (sent in part, or sent and never acknowledged): its next send begins by
# cutting that part off (`layout.separator_bytes`).
_TORN_MARKS = (
    "(while sending;",
    "(before the printer confirmed;",
    "the agent stopped while the job was sent",
)


# The ledger's `device` row (kept by `tillpoint reset`: the paper is the printer's) that
# says a job may have left a torn part on the printer with no cut after it: the JSON list
# of the codes of what was on its way (`separator_bytes` outlasts their longest command).
# Written when a job is claimed, so a crash mid-send leaves it; gone once a job is settled.
_TORN_KEY = "print_torn"


def _torn_before(job: _Job) -> bool:
    error = job.last_error or ""
    return error.startswith(UNCONFIRMED) or any(mark in error for mark in _TORN_MARKS)


def read_torn(conn: sqlite3.Connection) -> tuple[str, ...] | None:
    """The codes of the torn part the ledger says is on the printer (`_TORN_KEY`), each
    once; None when nothing is torn. sqlite3.Error when the ledger has no schema yet."""
    row = conn.execute("SELECT value FROM device WHERE key = ?", (_TORN_KEY,)).fetchone()
    if row is None:
        return None
    try:
        codes = json.loads(str(row[0]))
    except ValueError:
        codes = []
    if not isinstance(codes, list):
        codes = []
    return tuple(dict.fromkeys(str(code) for code in codes))


def write_torn(conn: sqlite3.Connection, codes: tuple[str, ...] | None) -> None:
    """The ledger's torn mark set to `codes` (the codes of what was on its way to the
    printer), or gone (None): the paper's last piece was cut."""
    if codes is None:
        conn.execute("DELETE FROM device WHERE key = ?", (_TORN_KEY,))
    else:
        # each code once: the separator outlasts the longest of them, and a crash loop
        # while one coupon was sent wrote the kept codes and its own again at every
        # start (rev33a: a row growing by a job's codes per restart)
        conn.execute(
            "INSERT OR REPLACE INTO device (key, value) VALUES (?, ?)",
            (_TORN_KEY, json.dumps(list(dict.fromkeys(codes)), ensure_ascii=False)),
        )


class _Unconfirmed(Exception):
    """The printer took a job and answered nothing after it."""


class _Blocked(Exception):
    def __init__(self, health: Health) -> None:
        super().__init__(health.problem)
        self.health = health


@dataclass(frozen=True)
class _Job:
    id: int
    receipt_id: str
    created_at: datetime | None
    payload: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None = None

    @property
    def unconfirmed(self) -> bool:
        return (self.last_error or "").startswith(UNCONFIRMED)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PrintWorker:
    """Prints queued jobs from ``<data_dir>/ledger.db``; never called on the checkout path.

    ``printer_factory`` returns a new, unopened :class:`~tillpoint.printer.transport.Transport`
    (default: from ``config``); ``clock`` returns an aware UTC datetime. Construct it on the
    main thread at start-up: that resolves the profile (PrinterConfigError if it cannot work)
    and imports python-escpos quietly. Then :meth:`start` it, :meth:`wake` it after a commit
    that queued a job, read :meth:`status`, and :meth:`stop` it at shutdown.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        config: PrinterConfig,
        printer_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], datetime] | None = None,
        *,
        rng: random.Random | None = None,
        create_schema: bool = True,
        offers_now: OffersNow | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        # `tillpoint run` gives the agent's look-up (`Agent.offers_on_paper`): a job prints
        # only what the snapshot still offers when the printer takes it (`_as_offered_now`)
        self.offers_now = offers_now
        self.config = config
        self.disabled = config.kind == "none"
        self._factory = printer_factory or (lambda: make_transport(config))
        self._clock = clock or _utc_now
        self._rng = rng or random.Random()
        self.profile: Profile | None = None
        if not self.disabled:
            _escpos.load()
            self.profile = resolve_profile(config)
        self._db_lock = threading.Lock()
        # the ledger's settings (WAL, synchronous=FULL, busy timeout) and its words for a
        # file that cannot be opened or migrated (StorageError: a full disk, an I/O error)
        self._conn = connect(self.db_path)
        if create_schema:  # each migration in its own transaction
            with self._db_lock:
                ensure_schema(self._conn)
        self._state: PrinterState = "DISABLED" if self.disabled else "OK"
        self._paper: PaperState = "UNKNOWN"
        self._last_error: str | None = None
        self._last_printed_at: str | None = None
        self._retry_at: datetime | None = None
        self._failures = 0
        self._contact: float | None = None  # monotonic time the printer was last tried
        self._job_error = False  # `_last_error` is a job's own (bad payload), not the printer's
        self._unconfirmed = False  # the last job was sent and never confirmed
        # per job id: how often the printer dropped it while it was sent or confirmed
        # (connect failures not counted); `max_send_failures` of them fail the job
        self._drops: dict[int, int] = {}
        # an attempt ended with part of a job maybe on the printer and no cut after it:
        # the next job sent begins by cutting it off (`separator_bytes`), its NULs as long
        # as the longest command of that job's codes (`_torn_codes`). Kept in the ledger
        # too (`_TORN_KEY`): after a restart following a torn job that FAILED (or a crash
        # while one was sent), the next coupon was glued onto the torn part (review 33)
        self._torn, self._torn_codes = self._torn_kept()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # The transport a job's bytes are being written to: `stop` breaks that write off
        # (a printer that stopped taking bytes held a graceful stop past its wait, and the
        # job, left SENDING, was failed at the next start as a crash's)
        self._sending: Transport | None = None
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self.description = "none" if self.disabled else self._factory_description()

    def _factory_description(self) -> str:
        c = self.config
        if c.kind == "network":
            return f"network {c.host}:{c.port}"
        if c.kind == "usb":
            return f"usb {c.usb_vendor_id or 0:04x}:{c.usb_product_id or 0:04x}"
        return f"{c.kind} {c.device}"

    # ------------------------------------------------------------------ database
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _head(self) -> _Job | None:
        with self._db_lock:
            row = self._conn.execute(
                "SELECT id, receipt_id, created_at, payload, attempts, next_attempt_at, "
                "last_error FROM print_jobs WHERE state <> 'DONE' AND state = 'PENDING' "
                "ORDER BY id LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return _Job(
            id=row[0],
            receipt_id=row[1],
            created_at=_parse_time(row[2]),
            payload=row[3],
            attempts=row[4],
            next_attempt_at=_parse_time(row[5]),
            last_error=row[6],
        )

    def recover(self) -> int:
        """Jobs left ``SENDING`` by a crash become FAILED (not reprinted); return how many."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE print_jobs SET state = 'FAILED', last_error = ? "
                "WHERE state <> 'DONE' AND state = 'SENDING'",
                (
                    "interrupted while printing (agent stopped): it may or may not be on paper, "
                    "so it is not reprinted automatically; requeue it to print it again",
                ),
            )
            n = cur.rowcount
        if n:
            log.warning("%d print job(s) were interrupted mid-print and are not reprinted", n)
        return n

    def requeue(self, receipt_id: str) -> bool:
        """Print a FAILED (or DONE) job again, or a held one or one waiting for its retry
        now, on an operator's request (`requeue_print_job`)."""
        with self._tx() as conn:
            changed = requeue_print_job(conn, receipt_id)
        if changed:
            self.wake()
        return changed

    def _set(self, job_id: int, sql: str, *args: Any) -> None:
        with self._tx() as conn:
            conn.execute(f"UPDATE print_jobs SET {sql} WHERE id = ?", (*args, job_id))

    def _claim(self, job_id: int, codes: tuple[str, ...] = ()) -> bool:
        """The job SENDING; and, in the same transaction, the printer marked as maybe
        holding a torn part of it (or of the torn one before it) until it is settled:
        a crash while it is sent leaves the mark for the next start."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE print_jobs SET state = 'SENDING', attempts = attempts + 1 "
                "WHERE id = ? AND state = 'PENDING'",
                (job_id,),
            )
            if cur.rowcount != 1:
                return False
            if not self._torn:
                # a mark another process set since this worker started: `print test`'s
                # page cut short while `run` served (review 34)
                kept = read_torn(conn)
                if kept is not None:
                    self._torn, self._torn_codes = True, kept
            self._write_torn(conn, (*self._torn_codes, *codes) if self._torn else codes)
            return True

    @staticmethod
    def _write_torn(conn: sqlite3.Connection, codes: tuple[str, ...] | None) -> None:
        write_torn(conn, codes)

    def _torn_kept(self) -> tuple[bool, tuple[str, ...]]:
        """What the ledger says of a torn part on the printer (`_TORN_KEY`)."""
        try:
            with self._db_lock:
                codes = read_torn(self._conn)
        except sqlite3.Error:  # no ledger schema yet (`create_schema=False`): nothing torn
            return False, ()
        return (False, ()) if codes is None else (True, codes)

    def _keep_torn(self) -> None:
        """The in-memory torn mark written to the ledger (a failed write is logged: the
        mark still holds for this run)."""
        try:
            with self._tx() as conn:
                self._write_torn(conn, self._torn_codes if self._torn else None)
        except sqlite3.Error as exc:
            log.warning("cannot keep the printer's torn-job mark in the ledger: %s", exc)

    def _fail(self, job: _Job, message: str) -> None:
        self._drops.pop(job.id, None)  # a `print retry` counts afresh
        log.error("print job %s failed: %s", job.receipt_id, message)
        self._set(job.id, "state = 'FAILED', last_error = ?", message)
        self._last_error, self._job_error = f"job {job.receipt_id}: {message}", True

    def _done(self, job: _Job, note: str | None) -> None:
        """DONE, and, in the same transaction, the printer's torn mark gone: the job went
        out whole with its cut (and the cut before it of a torn part)."""
        now = rfc3339(self._clock())
        with self._tx() as conn:
            conn.execute(
                "UPDATE print_jobs SET state = 'DONE', printed_at = ?, last_error = ?,"
                " next_attempt_at = NULL WHERE id = ?",
                (now, note, job.id),
            )
            self._write_torn(conn, None)
        self._last_printed_at = now

    def _retry(self, job: _Job, message: str, state: PrinterState, claimed: bool) -> None:
        self._failures += 1
        cap = min(
            self.config.retry_max_s, self.config.retry_base_s * 2 ** min(self._failures - 1, 30)
        )
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        retry_at = self._clock() + timedelta(seconds=delay)
        self._set(
            job.id,
            "state = 'PENDING', attempts = attempts + ?, next_attempt_at = ?, last_error = ?",
            0 if claimed else 1,
            rfc3339(retry_at),
            message,
        )
        self._state, self._last_error, self._retry_at = state, message, retry_at
        self._job_error = False
        if message.startswith(UNCONFIRMED):
            log.warning("print job %s %s; retry in %.1f s", job.receipt_id, message, delay)
        else:
            log.warning(
                "print job %s not printed (%s); retry in %.1f s", job.receipt_id, message, delay
            )

    # ------------------------------------------------------------------ printing
    def _render(self, payload: PrintPayload) -> bytes:
        assert self.profile is not None
        blocks = offers_blocks(payload, heading=self.config.heading, codepage=self.profile.codepage)
        return render_escpos(blocks, self.profile)

    def run_once(self) -> float | None:
        """Handle the oldest pending job if it is due.

        Returns 0 when there may be more to do now, the seconds until the next job is due, or
        None when the queue is empty (or printing is disabled).
        """
        if self.disabled:
            return None
        job = self._head()
        if job is None:
            self._retry_at = None
            return None
        if job.last_error is None:
            # never failed, or put back by `tillpoint print retry` (which clears the error;
            # every drop counted wrote one): the count starts again. The retry may come
            # from another process, so the worker reads it here (review 35: a held job
            # put back after the paper was fixed kept its drops, and one more failed it)
            self._drops.pop(job.id, None)
        now = self._clock()
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            wait = (job.next_attempt_at - now).total_seconds()
            # No backoff is longer than `retry_max_s`: a retry time further ahead is from
            # a wall clock that stepped back since (NTP, a wrong RTC fixed), and the queue
            # waited for the size of the step. Due now.
            if wait <= self.config.retry_max_s:
                return wait
        try:
            payload = parse_payload(job.payload)
        except InputError as exc:
            self._fail(job, str(exc))
            return 0.0
        offered = _as_offered_now(payload, self.offers_now)  # without those withdrawn since
        kept = _still_valid(job, offered, now)  # without the offers that ended meanwhile
        stale = self._stale(job, payload, kept, now, withdrawn=offered != payload)
        if stale:
            self._fail(job, stale)
            return 0.0
        payload = kept
        if not payload.offers:
            self._set(job.id, "state = 'DONE', last_error = ?", "no offers: nothing to print")
            return 0.0
        try:
            data = self._render(payload)
        except Exception as exc:  # a layout bug must not wedge the queue
            self._fail(job, f"could not lay out the coupon: {exc}")
            return 0.0
        self._attempt(job, data, tuple(offer.scan_code for offer in payload.offers))
        return 0.0

    def _stale(
        self,
        job: _Job,
        payload: PrintPayload,
        kept: PrintPayload,
        now: datetime,
        *,
        withdrawn: bool = False,
    ) -> str | None:
        """Why the job is not printed at all (`kept`: the payload without the offers that
        ended or were withdrawn while it waited), or None."""
        if payload.offers and not kept.offers:
            if withdrawn:
                return (
                    "every offer was withdrawn by the hub or ended before the printer was"
                    " back: not printed"
                )
            return "every offer expired before the printer was back: not printed"
        max_age = self.config.max_job_age_s
        if (
            max_age is not None
            and job.created_at is not None
            and (now - job.created_at).total_seconds() > max_age
        ):
            return f"older than max_job_age_s ({max_age:g} s) when the printer was back"
        return None

    def _asks(self, transport: Transport) -> bool:
        """Whether the printer is asked `DLE EOT` over this transport."""
        return transport.readable and self.config.query_status

    def _attempt(self, job: _Job, data: bytes, codes: tuple[str, ...] = ()) -> None:
        cfg = self.config
        claimed = False
        settled = False  # the job is the printer's: DONE, every byte of it to go out
        phase = "connect"
        note: str | None = None
        transport = self._factory()
        try:
            health = self._ask(transport)
            if health.blocking:
                raise _Blocked(health)
            if job.unconfirmed and self._asks(transport) and not health.known:
                # sent before and never confirmed: not again (nor the jobs behind it)
                # until the printer answers, or a printer that prints and never answers
                # would print it at every retry
                raise _Unconfirmed()
            if self._stop.is_set():
                # the stop came while the printer was asked how it is: nothing of the job
                # went out. Claimed and "broken off", it counted an attempt and set the
                # ledger's torn mark: the next start cut a piece of blank paper before the
                # coupon (review 40, rev40d)
                return
            if not self._claim(job.id, codes):
                return  # someone requeued or finished it meanwhile
            claimed = True
            phase = "send"
            if self._torn or _torn_before(job):
                assert self.profile is not None
                # the torn part is this job's (sent before) or the last torn one's
                data = separator_bytes(self.profile, self._torn_codes + codes) + data
            self._send(transport, data)
            self._torn, self._torn_codes = False, ()
            phase = "confirm"
            paper = health.paper
            if transport.readable and cfg.confirm:
                # a late status byte (an answer after its timeout, or one the printer
                # sends by itself) must not pass for the answer to this question
                transport.discard_input()
                transport.write(GS_R_PAPER)
                reply = _gs_r_reply(transport, cfg.confirm_timeout_s, self._stop.is_set)
                carried = self._still_carrying(transport, health) if not reply else 0.0
                if carried:
                    # the stop came while a serial line still carried the job the kernel
                    # took whole: no answer could come sooner, and DLE EOT would wait
                    # behind it too. Held, its rest dropped from the line, it was torn
                    # and printed whole again at the next start (review 40, rev40d)
                    note = (
                        "sent in full; the agent stopped before the printer confirmed it "
                        f"(the line was still carrying {carried:.1f} s of it): not printed "
                        "again"
                    )
                elif not reply and self._asks(transport):
                    # no GS r: does the printer answer anything after the job? One that
                    # answers DLE EOT reads its input (it lacks GS r, or holds the job for
                    # paper); one that answers nothing may have thrown the job away
                    after = query_health(transport, cfg.status_timeout_s)
                    if not after.known:
                        raise _Unconfirmed()
                    if after.paper != "UNKNOWN":
                        paper = after.paper
                if not reply:
                    note = note or (
                        f"sent; the printer did not confirm within {cfg.confirm_timeout_s:g} s "
                        "(no GS r support, or paper/cover trouble: it prints when fixed)"
                    )
                elif not reply[0] & 0x90:  # GS r 1 reply: bits 4 and 7 are 0
                    paper = "OUT" if reply[0] & 0x0C else "LOW" if reply[0] & 0x03 else "OK"
            settled = True
        except _Blocked as blocked:
            self._paper = blocked.health.paper
            self._retry(job, str(blocked), "ERROR", claimed)
            return
        except _Unconfirmed:
            self._hold(job, claimed)
            return
        except Exception as exc:
            if phase == "send" and self._stop.is_set():
                self._stopped_sending(job, exc)
                return
            if phase == "confirm" and self._stop.is_set() and getattr(transport, "aborted", False):
                # the stop's abort came as the job's write returned: every byte, the cut
                # last, is the printer's, and only the confirmation was cut short. Done,
                # not sent again (review 31, rev31b: it was printed twice)
                note = (
                    "sent in full; the agent stopped before the printer confirmed it "
                    f"({exc}): not printed again"
                )
                settled = True
            else:
                self._failed_attempt(job, exc, phase, claimed)
                return
        finally:
            if claimed and not settled:
                self._torn, self._torn_codes = True, codes
                self._keep_torn()
                # The job is sent again in full (held, retried, broken off): what of it
                # the connection still holds is thrown away, not delivered after the
                # close. A printer that stopped reading mid-job got every copy the
                # retries sent once it read again, and printed the coupon that often
                # (review 32). What it had already taken has no cut: a torn part.
                drop = getattr(transport, "drop_output", None)
                if drop is not None:
                    with contextlib.suppress(Exception):
                        drop()
            transport.close()
        self._printed(job, note, paper, health)

    def _still_carrying(self, transport: Transport, health: Health) -> float:
        """The seconds of a job a serial line still carries when the stop ended the wait
        for its `GS r` answer (0: not stopping, not a serial line, or it has carried it).
        Only of a printer that answered `DLE EOT` before the job (or is not asked): one
        that was there a moment ago reads what the line brings it."""
        line_busy: Callable[[], float] | None = getattr(transport, "line_busy_s", None)
        if line_busy is None or not self._stop.is_set():
            return 0.0
        if self._asks(transport) and not health.known:
            return 0.0
        return line_busy()

    def _failed_attempt(self, job: _Job, exc: Exception, phase: str, claimed: bool) -> None:
        if not isinstance(exc, PrinterError):  # a bug in a transport: keep the job
            log.exception("unexpected error printing %s", job.receipt_id)
        if phase == "connect":
            message = str(exc)
        elif phase == "send":
            message = f"{exc} (while sending; the job is printed again in full)"
        else:
            message = f"{exc} (before the printer confirmed; the job is printed again)"
        lost = isinstance(exc, ConnectionLost) or phase == "connect"
        state: PrinterState = "OFFLINE" if lost else "ERROR"
        if phase != "connect" and self._dropped(job, f"{exc} (while {phase}ing)"):
            return
        self._retry(job, message, state, claimed)

    def _printed(self, job: _Job, note: str | None, paper: PaperState, health: Health) -> None:
        # The job is on its way to paper: from here on it is never sent again.
        self._drops.pop(job.id, None)
        self._mark_done(job, note)
        self._failures = 0
        # a job the printer took but never confirmed, and did not answer how it was before
        # either: ERROR until a job is confirmed or the printer answers a probe (a printer
        # that accepts the bytes and reads none of them showed OK while every coupon was
        # lost). One that answered DLE EOT but lacks GS r is not flagged after every job.
        self._unconfirmed = note is not None and paper != "OUT" and not health.known
        self._state = "ERROR" if paper == "OUT" or self._unconfirmed else "OK"
        self._paper = paper
        # an unconfirmed job's note stays until a confirmed print (as PRINTING.md draws
        # it): a printer that takes the bytes and never prints looked healthy meanwhile
        self._last_error = (
            "printer is out of paper"
            if paper == "OUT"
            else f"job {job.receipt_id}: {note}"
            if note
            else None
        )
        self._job_error = note is not None and paper != "OUT"
        self._retry_at = None
        if note:
            log.warning("print job %s sent, printer did not confirm: %s", job.receipt_id, note)
        else:
            log.info("printed offers for receipt %s", job.receipt_id)

    def _send(self, transport: Transport, data: bytes) -> None:
        """Write a job's bytes where `stop` can break the write off (`abort`, which the
        transports have: the socket shut down, the serial write cancelled)."""
        with self._send_lock:
            if self._stop.is_set():
                raise ConnectionLost("the agent is stopping: the job was not sent")
            self._sending = transport
        try:
            transport.write(data)  # raises unless every byte went out (an abort included)
        finally:
            with self._send_lock:
                self._sending = None
        # A write that returned took the whole job, the cut last, whether or not the stop's
        # abort came meanwhile: it is not "broken off" (review 31, rev31b: a stop that came
        # as the write ended put it back PENDING, and the next start printed it twice)

    def _abort_send(self) -> None:
        with self._send_lock:
            transport = self._sending
            abort = getattr(transport, "abort", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort()

    def _stopped_sending(self, job: _Job, exc: BaseException) -> None:
        """The agent stopped while the job's bytes were written (the write broken off, or
        the printer had stopped taking them): no cut went out, so the job is PENDING again
        and printed in full by the next start, neither left SENDING (failed at the next
        start as interrupted by a crash) nor counted as a printer's drop."""
        message = (
            f"the agent stopped while the job was sent ({exc}); no cut went out: it is "
            "printed again in full"
        )
        log.warning("print job %s: %s", job.receipt_id, message)
        self._set(job.id, "state = 'PENDING', next_attempt_at = NULL, last_error = ?", message)
        self._drops.pop(job.id, None)

    def _dropped(self, job: _Job, message: str) -> bool:
        """Count a failure while the job was sent or confirmed (the printer took the
        connection); at `max_send_failures` the job is FAILED and the queue moves on: a
        job the printer always drops (too big for its buffer) blocked every later coupon
        and printed a torn fragment at every retry."""
        drops = self._drops.get(job.id, 0) + 1
        limit = self.config.max_send_failures
        if drops < limit:
            self._drops[job.id] = drops
            return False
        self._drops.pop(job.id, None)
        self._fail(
            job,
            f"the printer dropped this job {drops} times while it was sent (too big for it, "
            f"or something in it the printer rejects?); last: {message}; not retried: "
            f"`tillpoint print retry {job.receipt_id}` prints it again",
        )
        # the printer itself takes connections: the next job goes now, and the FAILED job
        # shows as such (`printerState` FAILED_JOBS) rather than the last drop's OFFLINE
        self._failures = 0
        self._state, self._retry_at = "OK", None
        return True

    def _hold(self, job: _Job, claimed: bool) -> None:
        """The job was sent and the printer answered nothing after it (or it was sent so
        before and the printer still answers nothing): PENDING, held with the jobs behind
        it until the printer answers `DLE EOT`, then sent again."""
        cfg = self.config
        if claimed:
            message = (
                f"{UNCONFIRMED}: the printer took the job and answered neither GS r "
                f"({cfg.confirm_timeout_s:g} s) nor DLE EOT ({cfg.status_timeout_s:g} s) after "
                "it; held, with the jobs behind it, until the printer answers, then printed "
                "again (it may print twice)"
            )
        else:
            message = (
                f"{UNCONFIRMED}: the printer still answers no status question "
                f"(DLE EOT, {cfg.status_timeout_s:g} s); the job is held, with the jobs "
                "behind it, until it does, then printed again (it may print twice)"
            )
        self._retry(job, message, "ERROR", claimed)
        self._last_error = f"job {job.receipt_id}: {message}"
        self._paper = "UNKNOWN"

    def _ask(self, transport: Transport) -> Health:
        """Connect, and ask the printer how it is when the transport reads (`DLE EOT`)."""
        self._contact = time.monotonic()
        transport.open()
        if self._asks(transport):
            return query_health(transport, self.config.status_timeout_s)
        return Health(known=False)

    def probe(self) -> PrinterState:
        """Ask the printer how it is without printing (the thread does, while no job
        waits): otherwise a printer unplugged after its last job showed that job's OK
        until the next sale found out. Connects, asks as a job does first, closes.

        What it finds is logged when it changes (the journal is where a support engineer
        looks; a printer unplugged at start left no line while `status` said OFFLINE): a
        WARNING once when it is not OK, an INFO line when it answers again."""
        before, said = self._state, self._last_error
        state = self._probe()
        if state != before or (state != "OK" and self._last_error != said):
            if state == "OK":
                if before in ("OFFLINE", "ERROR"):
                    log.info("receipt printer (%s) answers again", self.description)
            elif state in ("OFFLINE", "ERROR"):
                log.warning(
                    "receipt printer (%s) %s: %s",
                    self.description,
                    state,
                    self._last_error or "no answer",
                )
        return state

    def _probe(self) -> PrinterState:
        if self.disabled:
            return self._state
        transport = self._factory()
        asked = False
        try:
            health = self._ask(transport)
            asked = self._asks(transport)
        except Exception as exc:  # as a job's connect phase: OFFLINE
            if not isinstance(exc, PrinterError):  # a bug in a transport
                log.exception("unexpected error asking the printer how it is")
            self._state, self._last_error, self._job_error = "OFFLINE", str(exc), False
            return self._state
        finally:
            transport.close()
        if health.known:
            self._paper = health.paper
            self._unconfirmed = False  # it answers: the last job's silence was its own
        elif asked:
            # it took the connection and answered nothing: not OK (a wedged printer that
            # reads nothing looked healthy at start while it lost every coupon)
            self._paper = "UNKNOWN"
            self._state = "ERROR"
            if not self._job_error:
                self._last_error = (
                    "the printer accepted the connection but did not answer the status "
                    f"question (DLE EOT) within {self.config.status_timeout_s:g} s"
                )
            return self._state
        self._state = "ERROR" if health.blocking or self._unconfirmed else "OK"
        if health.blocking or not self._job_error:  # a job's own reason stays till a print
            self._last_error, self._job_error = health.problem, False
        return self._state

    def _probe_due(self) -> bool:
        every = self.config.probe_interval_s
        if not every or self.disabled:
            return False
        return self._contact is None or time.monotonic() - self._contact >= every

    def _mark_done(self, job: _Job, note: str | None) -> None:
        """Mark DONE, retrying a busy ledger; failing that it stays SENDING (never reprinted)."""
        for attempt in range(5):
            try:
                self._done(job, note)
                return
            except sqlite3.Error as exc:
                log.warning("cannot mark print job %s done yet: %s", job.receipt_id, exc)
                if self._stop.wait(min(1.0, 0.1 * 2**attempt)):
                    break
        log.error("print job %s printed but left SENDING: it will not be reprinted", job.receipt_id)

    # ------------------------------------------------------------------ thread
    def _acquire_lock(self) -> None:
        path = f"{self.db_path}.print.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PrinterError(
                f"another print worker is already running on {self.db_path}"
            ) from None
        self._lock_fd = fd

    def start(self) -> None:
        """Take the ledger's print lock, recover interrupted jobs, start the thread."""
        if self._thread is not None:
            return
        self._acquire_lock()
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tillpoint-print", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now (call it after a commit that queued a job)."""
        self._wake.set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the thread, letting a job on its way finish (by default as long as its
        confirmation may take, and 5 s more): a graceful stop (`systemctl restart`)
        during a job's confirmation left it SENDING, failed at the next start as a crash's
        (it may or may not be on paper), and the customer's coupon was lost."""
        self._stop.set()
        self._wake.set()
        self._abort_send()  # a job's bytes stuck on the way: PENDING again, not SENDING
        if timeout_s is None:
            timeout_s = stop_wait_s(self.config)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self.stop()
        with self._db_lock:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.run_once()
                if delay is None and self._probe_due():
                    self.probe()
            except Exception:
                log.exception("print worker loop error")
                delay = self.config.poll_interval_s
            if delay == 0:
                continue
            wait = (
                self.config.poll_interval_s
                if delay is None
                else min(delay, self.config.poll_interval_s)
            )
            self._wake.wait(wait)
            self._wake.clear()

    # ------------------------------------------------------------------ status
    def status(self) -> PrinterStatus:
        """A snapshot for ``tillpoint status``; reads the queue, never talks to the printer."""
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT state, COUNT(*) FROM print_jobs WHERE state <> 'DONE' GROUP BY state"
            ).fetchall()
        counts = {state: n for state, n in rows}
        return PrinterStatus(
            state=self._state,
            printer=self.description,
            queue_depth=counts.get("PENDING", 0) + counts.get("SENDING", 0),
            failed_jobs=counts.get("FAILED", 0),
            last_error=self._last_error,
            last_printed_at=self._last_printed_at,
            retry_at=rfc3339(self._retry_at) if self._retry_at else None,
            paper=self._paper,
        )

    def job(self, receipt_id: str) -> dict[str, Any] | None:
        """One job's row as a dict (for support and tests)."""
        with self._db_lock:
            cur = self._conn.execute("SELECT * FROM print_jobs WHERE receipt_id = ?", (receipt_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        if row is None:
            return None
        out = dict(zip(names, row, strict=True))
        with contextlib.suppress(ValueError):
            out["payload"] = json.loads(out["payload"])
        return out
