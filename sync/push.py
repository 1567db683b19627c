"""Transaction upload (the contract §9): the outbox drains to the hub, exactly once in effect.

- Batches go in seq order (at most `batch_size` rows and about 1 MiB each).
- A row leaves the outbox only in the same SQLite transaction that records the hub's
  acknowledgement of it; nothing is deleted before. A crash or SIGKILL at any point
  leaves the row to be sent again, and the hub, which dedupes on (deviceId, seq),
  answers DUPLICATE: no transaction is lost or counted twice.
- A batch is named by its content (`batch_id`), so a retried batch gets the hub's stored
  answer.
- A transaction the hub sets aside (CONFLICT: the hub holds other content under that
  seq; REJECTED: malformed) moves to ``sync_set_aside`` so it cannot block the outbox;
  it stays in the journal and `status` reports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import json_format
from tillpoint.agent import ledger
from tillpoint.agent.db import write_transaction
from tillpoint.agent.errors import TillpointError
from tillpoint.v1 import tillpoint_pb2 as pb

from . import state
from .client import HubLink
from .pull import file_lock, sync_dir

log = logging.getLogger("tillpoint.sync")

Progress = Callable[[int, int], None]
MAX_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class BatchResult:
    sent: int
    stored: int
    duplicates: int
    set_aside: int
    acked_through: int
    settled: int = 0  # rows that left the outbox (or the discarded seqs) with this answer


class UnreadableRow(TillpointError):
    """An outbox row whose text does not read as a transaction."""


class OutOfTime(Exception):
    """`drain`'s deadline came with transactions still to send; `sent` left the outbox
    before it."""

    def __init__(self, sent: int) -> None:
        super().__init__(sent)
        self.sent = sent


def without_trace(result_json: str) -> str:
    """A committed result as the hub gets it: without the explain trace (the contract §17)
    kept with it at the till. The trace changes no figure and is the till's support view;
    a big basket's with many offers ran past what the hub takes in one message (16 MiB),
    and the hub refused every push of that sale, and of every sale after it, for good.
    A result without a trace is sent as it is stored, byte for byte (the hub tells a
    duplicate from a conflict by those bytes)."""
    if '"trace"' not in result_json:
        return result_json
    result = json.loads(result_json)
    if not isinstance(result, dict) or "trace" not in result:
        return result_json
    del result["trace"]
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


def _discarded(payload: str) -> bool:
    """Whether an outbox row tells the hub of a seq discarded unsent (`reset --force`)."""
    return ledger.DISCARDED in payload and json.loads(payload).get("kind") == ledger.DISCARDED


def timed_out(exc: grpc.RpcError) -> bool:
    """The call ran out of its deadline (a thin or slow link, not a hub that refused)."""
    return isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class Pusher:
    def __init__(
        self,
        data_dir: Path,
        device_id: str,
        link: HubLink,
        *,
        call_timeout_s: float,
        batch_size: int = 200,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.device_id = device_id
        self.link = link
        self.call_timeout_s = call_timeout_s
        self.batch_size = batch_size
        self.lock_path = sync_dir(self.data_dir) / "push.lock"
        self._conn: sqlite3.Connection | None = None
        # What the hub set aside during the last `drain`: (seq, CONFLICT|REJECTED, reason).
        self.set_aside: list[tuple[int, str, str]] = []
        self.mark_known = False  # `learn_mark` done by this pusher
        # The batch's bounds now: halved after a push that ran out of time (an uplink too
        # thin for a whole batch within the deadline), doubled back after each success.
        self.rows_limit = batch_size
        self.last_rows = 0  # the size of the last batch sent
        self.bytes_limit = MAX_BATCH_BYTES
        # `tillpoint sync now --timeout`: a time.monotonic() by which `drain` ends; no
        # call to the hub is given longer than what is left of it.
        self.deadline: float | None = None

    def call_timeout(self) -> float:
        """A call's deadline: `call_timeout_s`, or what is left of `deadline` if less."""
        if self.deadline is None:
            return self.call_timeout_s
        return max(0.001, min(self.call_timeout_s, self.deadline - time.monotonic()))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def hub_id(self) -> str:
        """The hub this pusher's link talks to (its CA), `ledger.answered_by`."""
        return str(getattr(self.link, "hub_id", ""))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = ledger.open_ledger(self.data_dir)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def pending(self) -> int:
        """Transactions still to send: the outbox, and the seqs a reset discarded."""
        return ledger.outbox_pending(self.conn, self.device_id) + ledger.discarded_pending(
            self.conn, self.device_id
        )

    def _batch(self) -> list[tuple[int, str]]:
        rows: list[tuple[int, str]] = []
        size = 0
        # the seqs a `reset --force` discarded first: they come before every sale in the outbox
        told = ledger.discarded_batch(self.conn, self.device_id, self.rows_limit)
        for row in told or ledger.outbox_batch(self.conn, self.device_id, self.rows_limit):
            if rows and size + len(row.payload) > self.bytes_limit:
                break
            rows.append((row.seq, row.payload))
            size += len(row.payload)
        return rows

    def _transaction(self, seq: int, payload: str) -> pb.Transaction:
        try:
            tx = json_format.ParseDict(
                json.loads(payload), pb.Transaction(), ignore_unknown_fields=True
            )
            tx.result_json = without_trace(tx.result_json)  # reads it when it has one
        except (ValueError, TypeError, json_format.ParseError) as exc:
            # A damaged ledger or a hand edit: the row is kept (nothing is sent in its
            # place, and the hub must get every seq), and `status` says which it is.
            raise UnreadableRow(
                f"outbox row seq {seq} of {self.device_id} cannot be read ({exc}): the ledger is"
                " damaged; this sale and those after it are not sent until it is mended"
            ) from None
        if tx.points_delta_pending and not tx.pending_activates_at:
            activates_at = ledger.earn_activation(self.conn, self.device_id, seq)
            if activates_at is not None:
                tx.pending_activates_at = activates_at
        if tx.kind == pb.CHECKOUT and tx.customer_id and not tx.earned_expires_at:
            # the expiry its commit fixed (§16): the hub dates the batch with it, not with
            # the lifetime it holds when it answers
            expires_at = ledger.earned_expiry(self.conn, self.device_id, seq, tx.customer_id)
            if expires_at is not None:
                tx.earned_expires_at = expires_at
        return tx

    def push_batch(self) -> BatchResult | None:
        """Send the oldest batch; None when the outbox is empty. Raises grpc.RpcError."""
        rows = self._batch()
        if not rows:
            return None
        batch_id = hashlib.sha256(
            "\n".join(f"{seq}:{hashlib.sha256(p.encode()).hexdigest()}" for seq, p in rows).encode()
        ).hexdigest()[:32]
        request = pb.TransactionBatch(
            device_id=self.device_id,
            transactions=[self._transaction(seq, p) for seq, p in rows],
            batch_id=batch_id,
        )
        seqs = [seq for seq, _ in rows]
        self.last_rows = len(rows)
        try:
            ack = self.link.stub.PushTransactions(request, timeout=self.call_timeout())
        except grpc.RpcError as exc:
            self._count_attempt(seqs)
            if timed_out(exc):
                self._narrow(len(rows), sum(len(p) for _, p in rows))
            raise
        self.link.ok()
        self.rows_limit = min(self.batch_size, self.rows_limit * 2)
        self.bytes_limit = min(MAX_BATCH_BYTES, self.bytes_limit * 2)
        return self._acknowledged(rows, ack)

    def _narrow(self, rows: int, size: int) -> None:
        """A push ran out of time: the next batch is half as big (down to one sale). The
        deadline is the same for every push, and an uplink too thin to carry a whole batch
        within it (a store's backup 3G link after an outage) saw every push time out with
        the same batch: the backlog never drained (the contract §9: every sale reaches
        the hub once the link is back). Each success doubles them back: a hub that did
        not answer at all (packets lost on the way) is back to whole batches in a few
        pushes."""
        self.rows_limit = max(1, rows // 2)
        self.bytes_limit = max(1, size // 2)
        log.info(
            "push of %d transaction(s) ran out of time: the next batches are at most %d",
            rows,
            self.rows_limit,
        )

    def _count_attempt(self, seqs: list[int]) -> None:
        try:
            ledger.count_push_attempt(self.conn, self.device_id, seqs)
        except sqlite3.Error as exc:  # counting is best effort
            log.warning("cannot count the push attempt: %s", exc)

    def _acknowledged(self, rows: list[tuple[int, str]], ack: pb.PushAck) -> BatchResult:
        payloads = dict(rows)
        done: list[int] = []
        aside: list[tuple[int, str, str]] = []
        again: list[ledger.SetAside] = []
        if ack.results:
            for result in ack.results:
                if result.seq not in payloads:
                    continue
                if result.outcome in (pb.TX_STORED, pb.TX_DUPLICATE) or _discarded(
                    payloads[result.seq]
                ):
                    done.append(result.seq)  # a DISCARDED seq: set aside there, as meant
                elif result.outcome == pb.TX_CONFLICT and result.seq_taken:
                    # another transaction of this device holds the seq at the hub: this
                    # one is numbered again and sent again (`ledger.renumber`)
                    again.append(ledger.SetAside(result.seq, "CONFLICT", result.reason))
                elif result.outcome in (pb.TX_CONFLICT, pb.TX_REJECTED):
                    name = pb.TransactionOutcome.Name(result.outcome).removeprefix("TX_")
                    aside.append((result.seq, name, result.reason))
        else:  # a hub without per-transaction results: trust the contiguous mark
            done = [seq for seq in payloads if seq <= ack.acked_through_seq]
        now = state.now_text()
        moved = ledger.settle_push(
            self.conn,
            self.device_id,
            done,
            [ledger.SetAside(seq, outcome, reason) for seq, outcome, reason in aside],
            payloads,
            {"last_push_at": now, "acked_through": str(ack.acked_through_seq)},
            now,
            ack.acked_through_seq,
            kept_since=state.now_text(datetime.now(UTC) - timedelta(days=ledger.SENT_KEPT_DAYS)),
            hub=self.hub_id,
            again=again,
        )
        for item in again:
            if item.seq in moved:
                # the hub's words: its seq taken (two tills may be running as this
                # device, or this ledger was wiped or restored), or its sale's (a refund)
                log.warning(
                    "seq %d of %s numbered again as seq %d and sent again: the hub said %s",
                    item.seq,
                    self.device_id,
                    moved[item.seq],
                    item.reason,
                )
            else:  # not a sale or refund (a till-issued coupon): set aside, as before
                aside.append((item.seq, item.outcome, item.reason))
        for seq, outcome, reason in aside:
            log.error("hub set aside transaction %d: %s %s", seq, outcome, reason)
        self.set_aside.extend(aside)
        return BatchResult(
            len(rows),
            ack.accepted,
            ack.duplicates,
            len(aside),
            ack.acked_through_seq,
            len(done) + len(aside) + len(moved),  # one numbered again moved on too
        )

    def learn_mark(self) -> int:
        """Ask the hub how far it has this device's transactions (ListTransactions'
        contiguous mark, nothing listed) and number the next sales above it. A till
        re-imaged or reset before the hub published its last sales again gets a snapshot
        whose appliedThrough is behind: without this, its next sales took numbers the hub
        had stored already, and the hub set them aside (the contract §9: never reused)."""
        request = pb.ListTransactionsRequest(device_id=self.device_id, since_seq=2**62, limit=1)
        try:
            reply = self.link.stub.ListTransactions(request, timeout=self.call_timeout())
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.mark_known = True  # a hub without the call: appliedThrough alone
                return 0
            self.link.failed(exc)  # the link's state and its one-line words, as a push's
            raise
        self.link.ok()
        mark = int(reply.acked_through_seq)
        with write_transaction(self.conn, "ledger") as conn:
            ledger.keep_seq_above(conn, self.device_id, mark)
            ledger.answered_by(conn, self.hub_id)
            # a hub restored from a backup: what it acknowledged since is sent again
            ledger.requeue_lost(conn, self.device_id, mark)
        self.mark_known = True
        return mark

    def know_mark(self) -> None:
        """`learn_mark` once a pusher: before its first push (a sync round, a drain)."""
        if not self.mark_known:
            self.learn_mark()

    def drain(
        self,
        progress: Progress | None = None,
        lock_wait_s: float = 0.0,
        narrow_on_timeout: bool = False,
    ) -> int:
        """Push until the outbox is empty; returns how many rows left it (`set_aside`
        lists those of them the hub set aside instead of storing). The first drain of a
        pusher learns the hub's mark first (`learn_mark`).

        `narrow_on_timeout` (`tillpoint sync now`): a push of more than one sale that
        runs out of time is tried again at once with half the batch (`_narrow`), inside
        this call, down to one sale; only one sale running out of time ends the call. A
        pusher that lives for one call never saw its narrowed bounds again, and a backlog
        over an uplink too thin for a whole batch never drained by hand. The hub answered
        `learn_mark` just before, so a timeout here is a thin link, not a hub gone (which
        ends the call at `learn_mark`). `tillpoint run` narrows between its rounds, with
        its back-off.

        `deadline` (a time.monotonic(); `sync now --timeout`) bounds the whole drain: each
        push gets at most what is left of it, and a drain that reaches it with rows still
        to send raises `OutOfTime` (the rows stay in the outbox)."""
        self.set_aside = []
        self.know_mark()
        with file_lock(self.lock_path, lock_wait_s):
            total = self.pending()
            sent = 0
            try:
                while True:
                    if self.out_of_time() and self.pending():
                        raise OutOfTime(sent)
                    try:
                        result = self.push_batch()
                    except grpc.RpcError as exc:
                        if timed_out(exc) and self.out_of_time():
                            message = self.link.failed(exc)
                            state.put(
                                self.conn, {"error:push": state.error_value(f"push: {message}")}
                            )
                            raise OutOfTime(sent) from None
                        if narrow_on_timeout and self.last_rows > 1 and timed_out(exc):
                            continue  # the next batch is half as big (`_narrow`)
                        raise
                    if result is None:
                        return sent
                    sent += result.sent
                    if progress is not None:
                        progress(min(sent, total), max(total, sent))
                    if result.settled == 0:
                        return sent  # the hub took nothing: do not spin
            except grpc.RpcError as exc:
                message = self.link.failed(exc)
                if not self.link.closing:  # a stop's cancel is no failure of the push
                    state.put(self.conn, {"error:push": state.error_value(f"push: {message}")})
                raise
