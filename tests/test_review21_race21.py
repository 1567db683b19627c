"""Review 21 (race21): races of concurrent calls on one till, with a real hub on 127.0.0.1.

A receipt's hold at the hub is placed one call at a time (agent/hub_turns.py): two calls
under one receiptId sent at once used to ask the hub each, and the later request replaced
the hold the till stored with the other one's figures (docs/CONTRACT.md §11)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import Conflict
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import HubGrant
from tillpoint.sync.loopback import LoopbackHub, Till, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import Puller, cache_version

from .test_coupons import SORRY

CARD = "2770000000017"  # Anna, 1200 points
DEVICE = "till-1"


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    data = sample_master_data() | {
        "offers": [SORRY],
        "coupons": [{"code": "ONCE1", "offerId": "o-sorry"}],
    }
    hub = LoopbackHub(tmp_path / "hub", data=data)
    yield hub
    hub.stop()


@pytest.fixture()
def till(hub: LoopbackHub, tmp_path: Path) -> Iterator[Till]:
    till = hub.till(DEVICE, tmp_path / "till", start=False)
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    wait_for(lambda: cache_version(till.data_dir) == 1)
    yield till
    till.stop()


class Interleave:
    """The till's real hub authoriser, whose first authorisation waits (up to `wait_s`)
    until a second one has started: the order two calls at once may take on a busy till
    (the first's request answered, the second's sent before the first commits)."""

    def __init__(self, inner: Any, wait_s: float = 1.5) -> None:
        self.inner = inner
        self.calls = 0
        self.second = threading.Event()
        self.wait_s = wait_s
        self._lock = threading.Lock()

    def authorise(
        self,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Sequence[str] = (),
    ) -> HubGrant:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if not first:
            self.second.set()
        grant: HubGrant = self.inner.authorise(
            customer_id, receipt_id, points, at, hold_ttl_s, coupon_codes
        )
        if first:
            self.second.wait(self.wait_s)
        return grant

    def release(self, receipt_id: str) -> bool:
        return bool(self.inner.release(receipt_id))

    def reachable(self) -> bool:
        return bool(self.inner.reachable())


def hub_holds(hub: LoopbackHub, receipt_id: str) -> tuple[int, list[str]]:
    conn = sqlite3.connect(hub.root / "hub.db")
    try:
        points = conn.execute(
            "SELECT coalesce(sum(points), 0) FROM holds"
            " WHERE device_id = ? AND receipt_id = ? AND state = 'ACTIVE'",
            (DEVICE, receipt_id),
        ).fetchone()[0]
        codes = [
            c
            for (c,) in conn.execute(
                "SELECT code FROM coupon_holds WHERE device_id = ? AND receipt_id = ?"
                " ORDER BY code",
                (DEVICE, receipt_id),
            )
        ]
    finally:
        conn.close()
    return int(points), codes


def race(gate: Interleave, first: Any, second: Any) -> list[Any]:
    """Run `first`, and `second` once the first has sent its hub request; each one's
    result or the exception it raised."""
    out: list[Any] = [None, None]

    def run(i: int, call: Any) -> None:
        try:
            out[i] = call()
        except Exception as exc:  # the conflict is an answer here
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    threads[0].start()
    wait_for(lambda: gate.calls >= 1, 10)
    threads[1].start()
    for t in threads:
        t.join(30)
    return out


@pytest.mark.parametrize("big_first", [True, False], ids=["big-first", "small-first"])
@pytest.mark.parametrize("what", ["hold", "checkout"])
def test_a_conflicting_call_at_once_leaves_the_hub_hold_as_the_till_stored_it(
    hub: LoopbackHub, till: Till, what: str, big_first: bool
) -> None:
    """Two bodies under one receiptId at once: one is stored, the other is a conflict, and
    the hub holds exactly what the stored one reserved (points and coupon codes): the
    conflict's request never replaced it (before, the hub held the loser's 10 points for a
    receipt that spends 300, so another till could spend them again; or the loser's 300
    points and its coupon code, which no other receipt could then use, for a receipt that
    spends 10)."""
    agent = till.agent
    gate = Interleave(agent.hub)
    agent.hub = gate
    big = receipt(
        "r-conflict",
        CARD,
        redeem=300,
        lines=[{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}],
    )
    big["coupons"] = ["ONCE1"]
    small = receipt("r-conflict", CARD, redeem=10)
    call = getattr(agent, what)
    bodies = (big, small) if big_first else (small, big)
    first, second = race(
        gate, lambda: call(receipt_from_json(bodies[0])), lambda: call(receipt_from_json(bodies[1]))
    )
    assert not isinstance(first, Exception), first
    assert isinstance(second, Conflict), second
    codes = [v.code for v in first.coupons if v.status == "APPLIED"]
    assert (first.redeemed_points, codes) == ((300, ["ONCE1"]) if big_first else (10, []))
    # a checkout too: its transaction is not pushed here (no sync running), so the hub
    # holds its points and code until it arrives
    assert hub_holds(hub, "r-conflict") == (first.redeemed_points, codes)
