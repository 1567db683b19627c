"""A receipt's hold at the hub is placed or released one at a time.

The hub keeps one hold a (till, receiptId). Placing it (a hold or checkout asks the hub
for its redemption) and releasing it (the receipt cancelled, its hold expired, or a
release retried once the hub is back) run outside the agent's lock, since each is an
RPC. Without turns, a release decided for an expired hold could reach the hub after the
POS had held the same receiptId again, and drop the new hold: the customer's points would
stand unreserved at the hub while the till still held them.

`HubTurns` orders them: a release starts only when no hold of that receipt is in
progress (else it is left for the next retry), and a hold waits for a release in flight
and for another hold or checkout of the same receiptId in progress. Two calls under one
receiptId at once (a POS retrying over HTTP while its first call is still running, two
clients sending one receipt) each asked the hub, and the later request replaced the hold
the earlier one had just stored: with another body (then answered with a conflict) the
hub held the loser's points and coupon codes for the winner's receipt, so another till
could spend the points the stored receipt will spend. Taking turns, the second call finds
the receipt stored and asks the hub nothing: the stored answer, or the conflict.
A Confirm or a Cancel of a receiptId whose hold is in progress waits for it to end
(`hold_ended`), then answers what it stored.
A release's RPC has its deadline (`hub.redeem_timeout_ms`, at most 60 s), and so has a
hold's request, so the wait ends; past `wait_s` (longer than any deadline) the call is
refused as the hub being unavailable (retry with the same receiptId), never placed beside
a release or another hold still on its way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import HubUnavailable


class HubTurns:
    def __init__(
        self, wait_s: float = 90.0, on_put_off: Callable[[str], object] | None = None
    ) -> None:
        """`on_put_off(receipt_id)`: called when a hold's turn ends after a release of its
        receipt was put off for it (`start_release`), outside any lock: the call may have
        ended without holding the receipt again (it found it cancelled, or failed), and
        then nothing else sends that release before the next retry round."""
        self._changed = threading.Condition()
        self._holding: set[str] = set()
        self._releasing: set[str] = set()
        self._put_off: set[str] = set()
        self._on_put_off = on_put_off
        self._wait_s = wait_s

    @contextmanager
    def holding(self, receipt_id: str) -> Iterator[None]:
        """Around the whole of a hold or checkout: its hub request and its ledger write.
        One at a time for a receiptId, and never beside its release."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: receipt_id not in self._releasing and receipt_id not in self._holding,
                self._wait_s,
            ):
                why = (
                    "the release of its earlier hold has not reached the hub yet"
                    if receipt_id in self._releasing
                    else "another call with this receiptId is still asking the hub"
                )
                raise HubUnavailable(f"receipt {receipt_id}: {why}: retry with the same receiptId")
            self._holding.add(receipt_id)
        try:
            yield
        finally:
            with self._changed:
                self._holding.discard(receipt_id)
                owed = receipt_id in self._put_off
                self._put_off.discard(receipt_id)
                self._changed.notify_all()
            if owed and self._on_put_off is not None:
                self._on_put_off(receipt_id)

    def busy_holding(self, receipt_id: str) -> bool:
        """Whether a hold or checkout of this receipt is in its turn now (its request to
        the hub on its way, or its grant not yet stored)."""
        with self._changed:
            return receipt_id in self._holding

    def hold_ended(self, receipt_id: str) -> None:
        """Wait until no hold or checkout of `receipt_id` is in progress (a Confirm or a
        Cancel sent while its Hold still asks the hub: a POS that gave up on the Hold).
        Answered before the Hold was stored, it was a 404 "not held", and the hold then
        stored kept the customer's points reserved, at the hub too, until it expired,
        though the POS had cancelled it (review 34). No turn is taken: a hold that starts
        after this is another call, answered as it comes."""
        with self._changed:
            if not self._changed.wait_for(lambda: receipt_id not in self._holding, self._wait_s):
                raise HubUnavailable(
                    f"receipt {receipt_id}: another call with this receiptId is still asking"
                    " the hub: retry with the same receiptId"
                )

    def start_release(self, receipt_id: str) -> bool:
        """False: a hold of this receipt is in progress (its own request replaces the
        hub's hold; the release is handed to `on_put_off` when its turn ends, for a call
        that did not hold the receipt again), or a release of it is already on its way."""
        with self._changed:
            if receipt_id in self._holding:
                self._put_off.add(receipt_id)  # asked again when that hold's turn ends
                return False
            if receipt_id in self._releasing:
                return False
            self._releasing.add(receipt_id)
            return True

    def end_release(self, receipt_id: str) -> None:
        with self._changed:
            self._releasing.discard(receipt_id)
            self._changed.notify_all()
