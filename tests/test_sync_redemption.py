"""Online redemption (the contract §9): holds on the live balance, deadlines, offline fallback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_store import Unsynced
from tillpoint.sync.loopback import (
    LoopbackHub,
    Till,
    receipt,
    sample_master_data,
    timings,
    wait_for,
)
from tillpoint.sync.pull import Puller, cache_version

CARD = "2770000000017"


def no_accrual_data() -> dict[str, Any]:
    """Anna earns nothing, so every point she spends comes out of her 1200."""
    data = sample_master_data()
    data["program"]["tiers"].append({"code": "none", "accrualPercent": "0"})
    data["customers"][0]["tier"] = "none"
    return data


def big_line() -> list[dict[str, Any]]:
    # 30 % of 5000.00 allows 1500 points: the balance is the only limit
    return [{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}]


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=no_accrual_data())
    yield hub
    hub.stop()


def enrolled(hub: LoopbackHub, tmp_path: Path, name: str, **kw: Any) -> Till:
    till = hub.till(name, tmp_path / name, **kw)
    if till.service is None:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    wait_for(lambda: cache_version(till.data_dir) == 1)
    return till


def test_two_tills_redeeming_the_same_card_at_once_never_overspend(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    slow_ok = timings(redeem_timeout_s=3.0)  # this test is about races, not deadlines
    tills = [enrolled(hub, tmp_path, f"till-{i}", timings=slow_ok) for i in range(2)]
    try:
        results: list[dict[str, Any]] = []
        lock = threading.Lock()
        start = threading.Barrier(len(tills))

        def sell(till: Till) -> None:
            start.wait()
            for n in range(4):
                done = till.agent.checkout(
                    receipt_from_json(
                        receipt(f"{till.device_id}-{n}", CARD, redeem=400, lines=big_line())
                    )
                )
                with lock:
                    results.append(done)

        threads = [threading.Thread(target=sell, args=(t,)) for t in tills]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 8
        assert all(r.mode == "ONLINE" for r in results)
        spent = sum(r.redeemed_points for r in results)
        assert spent == 1200  # everything she had, and not one point more
        for till in tills:
            wait_for(
                lambda till=till: till.service is not None and till.service.pusher.pending() == 0
            )
        assert hub.store.balance("c-1", datetime.now(UTC)).available == 0
    finally:
        for till in tills:
            till.stop()


def test_the_same_race_when_the_tills_sent_nothing_yet(hub: LoopbackHub, tmp_path: Path) -> None:
    """Holds alone keep the total right while no transaction has reached the hub."""
    tills = [
        enrolled(hub, tmp_path, f"t{i}", start=False, timings=timings(redeem_timeout_s=3.0))
        for i in range(3)
    ]
    try:
        start = threading.Barrier(len(tills))
        results: list[int] = []

        def sell(till: Till) -> None:
            start.wait()
            done = till.agent.checkout(
                receipt_from_json(
                    receipt(f"{till.device_id}-x", CARD, redeem=700, lines=big_line())
                )
            )
            results.append(done.redeemed_points)

        threads = [threading.Thread(target=sell, args=(t,)) for t in tills]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sum(results) == 1200 and max(results) == 700
    finally:
        for till in tills:
            till.stop()


def test_a_till_spending_offline_reports_it_and_others_cannot_spend_it(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    a = enrolled(hub, tmp_path, "a", start=False, timings=timings(redeem_timeout_s=3.0))
    b = enrolled(hub, tmp_path, "b", start=False, timings=timings(redeem_timeout_s=3.0))
    try:
        hub.stop()
        offline = a.agent.checkout(
            receipt_from_json(receipt("a-1", CARD, redeem=400, lines=big_line()))
        )
        assert (offline.mode, offline.redeemed_points) == ("OFFLINE", 400)
        hub.restart()
        # a is back online before its outbox is sent: its next authorisation tells the
        # hub about the 400 it spent, and the hub holds them against b
        grpc.channel_ready_future(a.link.channel).result(timeout=10)
        grpc.channel_ready_future(b.link.channel).result(timeout=10)
        online = a.agent.checkout(
            receipt_from_json(receipt("a-2", CARD, redeem=500, lines=big_line()))
        )
        assert (online.mode, online.redeemed_points) == ("ONLINE", 500)
        b_result = b.agent.checkout(
            receipt_from_json(receipt("b-1", CARD, redeem=1200, lines=big_line()))
        )
        assert b_result.mode == "ONLINE"
        assert b_result.redeemed_points == 1200 - 400 - 500
    finally:
        a.stop()
        b.stop()


def test_a_hub_that_does_not_answer_in_time_means_offline_pricing(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    till = enrolled(hub, tmp_path, "till-1", start=False)
    release = threading.Event()

    def stuck(where: str) -> None:
        if where == "authorize":
            release.wait(5)

    hub.server.servicer.failpoint = stuck
    try:
        started = time.monotonic()
        result = till.agent.checkout(
            receipt_from_json(receipt("r-1", CARD, redeem=1000, lines=big_line()))
        )
        elapsed = time.monotonic() - started
        assert result.mode == "OFFLINE"
        assert result.redeemed_points == 500  # the offline limit of §5.4
        # the 300 ms deadline, then no more waiting (the hub is stuck 5 s; the bound was
        # 1 s, which a loaded machine could pass: review 40, flake40)
        assert 0.3 <= elapsed < 3.0
    finally:
        release.set()
        till.stop()


def test_a_down_hub_costs_no_time_at_all(hub: LoopbackHub, tmp_path: Path) -> None:
    till = enrolled(hub, tmp_path, "till-1", start=False)
    try:
        hub.stop()
        started = time.monotonic()
        result = till.agent.checkout(
            receipt_from_json(receipt("r-1", CARD, redeem=100, lines=big_line()))
        )
        assert result.mode == "OFFLINE" and result.redeemed_points == 100
        assert time.monotonic() - started < 0.5
    finally:
        till.stop()


def test_holds_expire_when_a_receipt_is_never_committed(hub: LoopbackHub) -> None:
    store = hub.store
    t0 = datetime.now(UTC)
    first = store.authorise("a", "r-1", "c-1", 800, t0, [], t0, 60)
    assert first.authorised == 800
    second = store.authorise("b", "r-2", "c-1", 800, t0, [], t0 + timedelta(seconds=30), 60)
    assert second.authorised == 400 and second.live_balance == 400
    # r-1 was abandoned: after the hold's time the points are spendable again
    third = store.authorise("c", "r-3", "c-1", 800, t0, [], t0 + timedelta(seconds=61), 60)
    assert third.authorised == 800  # 1200 - r-2's 400
    # asking again for the same receipt replaces its hold instead of adding one
    again = store.authorise("c", "r-3", "c-1", 800, t0, [], t0 + timedelta(seconds=62), 60)
    assert again.authorised == 800
    assert (
        store.authorise("d", "r-4", "c-1", 9, t0, [], t0 + timedelta(seconds=62), 60).authorised
        == 0
    )


def test_unsynced_points_are_counted_once(hub: LoopbackHub) -> None:
    store = hub.store
    t0 = datetime.now(UTC)
    # till a had r-0 authorised (300), committed it as seq 1, and has not sent it yet
    assert store.authorise("a", "r-0", "c-1", 300, t0, [], t0, 600).authorised == 300
    unsent = [Unsynced(seq=1, receipt_id="r-0", points=-300)]
    mine = store.authorise("a", "r-1", "c-1", 1200, t0, unsent, t0, 600)
    assert mine.authorised == 900  # 1200 - 300, not 1200 - 300 - 300
    other = store.authorise("b", "r-2", "c-1", 1200, t0, [], t0, 600)
    assert other.authorised == 0  # 300 (seq 1) + 900 (r-1) are held
    assert store.balance("c-1", t0).held == 1200
