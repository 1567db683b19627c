"""Online redemption authorisation (the contract §9): the agent's `RedemptionAuthoriser`.

`Agent.checkout` calls `authorise` while it prices a receipt that redeems points. The
hub places a hold against the customer's live balance (every till's ingested
transactions, minus the other tills' active holds), so two tills cannot spend the same
points. The call has a hard deadline (``hub.redeem_timeout_ms``, 300 ms by default); when
the hub does not answer within it, `HubUnavailable` makes the agent price OFFLINE with
the offline limit (§5 step 4), so no request of a checkout waits longer than that on the
network. A checkout asks once, and once more for each coupon code that comes to apply
after the hub said another is used (`Agent._price`, review 26); all the requests of one
Hold or Checkout share that one deadline (`since`: when its first request was made), so a
checkout never waits on the hub longer than it (until review 29, each request had a
deadline of its own: one more per such code, 1.2 s for four codes at 300 ms).

The request also carries this till's own point movements that are still in its outbox
(the hub has not seen them), so the hub does not authorise points this till already
spent, and does not count twice a hold whose receipt is among them.

A held receipt (the contract §11) keeps its hold at the hub for the program's `holdTtlSeconds`
(sent as `hold_ttl_seconds`); `release` drops it when the till cancels the receipt or
lets its hold expire, and the receipt's transaction settles it after Confirm.

The same call carries the receipt's APPLIED coupon codes (the contract §13): the hub holds
each one for this receipt the same way, and answers which ones another receipt already
used or holds; the agent prices the receipt again without those (ALREADY_USED).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import grpc
from tillpoint.agent.errors import HubUnavailable, StorageError
from tillpoint.agent.expiry import Tally, last_instant
from tillpoint.agent.ledger import UnsyncedMove, given_back_alive, open_ledger, unsynced_moves
from tillpoint.agent.limits import TEXT_MAX
from tillpoint.agent.models import HubGrant
from tillpoint.v1 import tillpoint_pb2 as pb

from .client import REFUSED, UNREACHABLE, HubLink
from .hub_store import SHRINK_MARGIN_S

_DEADLINE_REACHED = "the command's deadline (--timeout) is reached"

log = logging.getLogger("tillpoint.sync")


def _gone(move: UnsyncedMove, at: datetime) -> bool:
    """Points a sale earned that have expired by `at` (§16): not the hub's to count at
    `at` (counted, another till could spend them)."""
    if move.kind != "earn" or move.points <= 0 or not move.expires_at:
        return False
    return at > last_instant(datetime.fromisoformat(move.expires_at.replace("Z", "+00:00")))


def _sendable(receipt_id: str) -> str:
    """An unsent movement's receiptId as the hub takes it: "" for one it refuses (a NUL,
    over TEXT_MAX characters: a sale an earlier release committed), which made the whole
    request INVALID_ARGUMENT, so its customer priced OFFLINE until the push (review 32).
    The hub counts the movement by its seq; the id only settles the hold of that receipt,
    and the hub never placed one under an id it refuses."""
    return "" if len(receipt_id) > TEXT_MAX or "\x00" in receipt_id else receipt_id


class HubAuthoriser:
    def __init__(self, link: HubLink, data_dir: Path, device_id: str, timeout_s: float) -> None:
        self.link = link
        self.data_dir = Path(data_dir)
        self.device_id = device_id
        self.timeout_s = timeout_s
        # (time.monotonic) a one-shot command's own deadline (`sync now --timeout`): no
        # call is given longer than what is left of it, none starts once it has passed
        self.deadline: float | None = None
        # Opened now, never inside a checkout: that holds the ledger's write lock.
        self._conn: sqlite3.Connection | None = open_ledger(self.data_dir)
        self._lock = threading.Lock()

    def _unsynced(self, customer_id: str, at: datetime) -> list[pb.UnsyncedPoints]:
        """This till's movements of the customer's points that still wait in the outbox.

        A read on its own connection: the checkout that calls us holds the ledger's
        write transaction, and WAL readers never wait for a writer.
        """
        with self._lock:
            if self._conn is None:
                raise StorageError("the authoriser is closed")
            rows = unsynced_moves(self._conn, self.device_id, customer_id)
            # A refund's points given back count at `at` only in batches that still do.
            rows = [
                replace(
                    move,
                    points=given_back_alive(
                        self._conn, self.device_id, move.receipt_id, move.seq, move.points, at
                    ),
                )
                if move.kind == "spend" and move.points > 0 and not move.sold_at
                else move
                for move in rows
            ]
        tally = Tally(at)  # only what counts at `at`: the hub adds it to its balance
        by_seq: dict[int, pb.UnsyncedPoints] = {}
        for move in rows:
            item = by_seq.setdefault(
                move.seq,
                pb.UnsyncedPoints(
                    seq=move.seq,
                    receipt_id=_sendable(move.receipt_id),
                    at=move.sold_at,  # the hub replays the sale's redemption at its time
                    spent=move.redeemed,
                ),
            )
            if tally.active(move.kind, move.activates_at) and not _gone(move, at):
                item.points += move.points
        return list(by_seq.values())

    def authorise(
        self,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Sequence[str] = (),
        since: float | None = None,
        offline_limit: int | None = None,
    ) -> HubGrant:
        """`offline_limit`: the till's own `offlineRedeemLimitPoints` (its snapshot's), what
        the hub keeps of a grant it makes past the deadline (the contract §11, review 36)."""
        timeout = self.timeout_s
        if since is not None:  # a request of a checkout that asked already (`time.monotonic`)
            timeout -= time.monotonic() - since
            if timeout <= 0:
                log.info("redemption for %s priced offline: its hub deadline is spent", receipt_id)
                raise HubUnavailable("the hub did not answer in time")
        try:
            unsynced = self._unsynced(customer_id, at)
        except (sqlite3.Error, StorageError) as exc:
            # Without them the hub could authorise points this till already spent.
            raise HubUnavailable(f"cannot read this till's unsent transactions: {exc}") from None
        request = pb.AuthorizeRedemptionRequest(
            device_id=self.device_id,
            receipt_id=receipt_id,
            customer_id=customer_id,
            points=points,
            at=at.isoformat(),
            unsynced=unsynced,
            hold_ttl_seconds=hold_ttl_s or 0,
            coupon_codes=list(coupon_codes),
            offline_redeem_limit_points=offline_limit,
        )
        try:
            reply = self.link.stub.AuthorizeRedemption(request, timeout=timeout)
        except grpc.RpcError as exc:
            message = self.link.failed(exc)
            log.info("redemption for %s priced offline: %s", receipt_id, message)
            raise HubUnavailable(message) from None
        self.link.ok()
        asked = set(coupon_codes)
        return HubGrant(
            max(0, min(points, int(reply.authorized_points))),
            frozenset(c for c in reply.used_coupons if c in asked),
        )

    def _margined_timeout(self, what: str, receipt_id: str) -> float:
        """The deadline of a release or a shrink: `hub.redeem_timeout_ms` plus the hub's
        margin, cut to what is left of `deadline` (review 36: `sync now --timeout 5` with a
        redeem deadline of 20 s gave each owed release 20.1 s). HubUnavailable, no call,
        when no more than the margin is left: the hub would not work on it."""
        timeout = self.timeout_s + SHRINK_MARGIN_S
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= SHRINK_MARGIN_S:
                log.info("%s of %s left owed: the command's deadline is reached", what, receipt_id)
                raise HubUnavailable(_DEADLINE_REACHED)
        return timeout

    def _cut_short(self, exc: grpc.RpcError, timeout: float, what: str, receipt_id: str) -> None:
        """HubUnavailable, the link left as it is, when a release or a shrink ran out of
        the time `deadline` left it, shorter than its own: the command's deadline says
        nothing of the hub. Taken for a hub away, it marked the link so, and a `sync now`
        that pushed, pulled and ended 0 left the till recorded OFFLINE (review 36, rev36c)."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout < self.timeout_s + SHRINK_MARGIN_S:
            log.info("%s of %s left owed: the command's deadline is reached", what, receipt_id)
            raise HubUnavailable(_DEADLINE_REACHED) from None

    def release(self, receipt_id: str) -> bool:
        """Drop this till's hold for the receipt at the hub (HubUnavailable if the hub does
        not answer in time: the hold then simply expires there)."""
        request = pb.ReleaseRedemptionRequest(
            device_id=self.device_id, receipt_id=receipt_id, with_margin=True
        )
        timeout = self._margined_timeout("release", receipt_id)
        try:
            # as the shrink's: the hub works on it only while `SHRINK_MARGIN_S` is left,
            # so a late release never drops the receipt's next hold (review 33, rel33)
            reply = self.link.stub.ReleaseRedemption(request, timeout=timeout)
        except grpc.RpcError as exc:
            self._cut_short(exc, timeout, "release", receipt_id)
            message = self.link.failed(exc)
            log.info("hold of %s not released at the hub: %s", receipt_id, message)
            raise HubUnavailable(message) from None
        self.link.ok()
        return bool(reply.released)

    def shrink(self, receipt_id: str, points: int, coupon_codes: Sequence[str]) -> bool | None:
        """Keep the hub's hold of a receipt priced OFFLINE after a late grant for what it
        uses: at most `points` and the coupon holds of `coupon_codes` (the contract §11).
        True: made smaller; False: nothing to shrink (no active hold, or no more than
        that); None: the hub does not take it (a hub before review 33 answers UNIMPLEMENTED,
        or it refused the request): the whole grant stays held, as before, until the
        receipt's transaction settles it or the till releases it. HubUnavailable when the
        hub is not reached (sent again later)."""
        request = pb.ShrinkRedemptionRequest(
            device_id=self.device_id,
            receipt_id=receipt_id,
            points=max(0, points),
            coupon_codes=list(coupon_codes),
        )
        timeout = self._margined_timeout("shrink", receipt_id)
        try:
            # the hub works on it only while this much is left (`SHRINK_MARGIN_S`): a
            # deadline of `hub.redeem_timeout_ms` alone, when that is as short, never would
            reply = self.link.stub.ShrinkRedemption(request, timeout=timeout)
        except grpc.RpcError as exc:
            self._cut_short(exc, timeout, "shrink", receipt_id)
            code = exc.code() if isinstance(exc, grpc.Call) else None
            message = self.link.failed(exc)
            if code in UNREACHABLE or code in REFUSED:
                log.info("hold of %s not shrunk at the hub yet: %s", receipt_id, message)
                raise HubUnavailable(message) from None
            log.info("hold of %s left whole at the hub: %s", receipt_id, message)
            return None
        self.link.ok()
        return bool(reply.shrunk)

    def reachable(self) -> bool:
        """What the last exchanges with the hub say: a receipt that needs no authorisation
        is priced ONLINE only while the hub is answering."""
        return bool(self.link.online)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
