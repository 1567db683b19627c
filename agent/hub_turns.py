"""A receipt's hold at the hub is placed or released one at a time.

The hub keeps one hold a (till, receiptId). Placing it (a hold or checkout asks the hub
for its redemption) and releasing it (the receipt cancelled, its hold expired, or a
release retried once the hub is back) run outside the agent's lock, since each is an
RPC. Without turns, a release decided for an expired hold could reach the hub after the
POS had held the same receiptId again, and drop the new hold: the customer's points would
stand unreserved at the hub while the till still held them.

`HubTurns` orders the two: a release starts only when no hold of that receipt is in
progress (else it is left for the next retry), and a hold waits for a release in flight.
A release's RPC has its deadline (`hub.redeem_timeout_ms`, at most 60 s), so the wait
ends; past `wait_s` (longer than any deadline) the hold is refused as the hub being
unavailable, never placed beside a release still on its way.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import HubUnavailable


class HubTurns:
    def __init__(self, wait_s: float = 90.0) -> None:
        self._changed = threading.Condition()
        self._holding: Counter[str] = Counter()
        self._releasing: set[str] = set()
        self._wait_s = wait_s

    @contextmanager
    def holding(self, receipt_id: str) -> Iterator[None]:
        """Around the whole of a hold or checkout: its hub request and its ledger write."""
        with self._changed:
            if not self._changed.wait_for(lambda: receipt_id not in self._releasing, self._wait_s):
                raise HubUnavailable(
                    f"receipt {receipt_id}: the release of its earlier hold has not reached"
                    " the hub yet: retry with the same receiptId"
                )
            self._holding[receipt_id] += 1
        try:
            yield
        finally:
            with self._changed:
                self._holding[receipt_id] -= 1
                if not self._holding[receipt_id]:
                    del self._holding[receipt_id]
                self._changed.notify_all()

    def start_release(self, receipt_id: str) -> bool:
        """False: a hold of this receipt is in progress; its own request replaces the
        hub's hold, and what is left to release (if it fails) is retried later."""
        with self._changed:
            if receipt_id in self._holding or receipt_id in self._releasing:
                return False
            self._releasing.add(receipt_id)
            return True

    def end_release(self, receipt_id: str) -> None:
        with self._changed:
            self._releasing.discard(receipt_id)
            self._changed.notify_all()
