"""Review 25 (sync25): snapshots (docs/CONTRACT.md §3) and sync (§9) with a real hub and tills.

Real parts only: the reference hub (its store, gRPC over loopback mTLS), enrolled tills
with their SQLite cache and ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import (
    LoopbackHub,
    Till,
    import_doc,
    receipt,
    sample_master_data,
    timings,
    wait_for,
)
from tillpoint.sync.pull import Puller, cache_version

from .conftest import enrolled_till

CARD = "2770000000017"  # c-1: 1200 points at the hub
NEW_CUSTOMER = {"id": "c-9", "firstName": "Вера", "tier": "base", "balancePoints": 10}
NEW_CARD = {"number": "2770000000031", "customerId": "c-9", "status": "ACTIVE"}
BIG = [{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}]  # 30 %: 1500 points


def no_accrual_data() -> dict[str, Any]:
    """Anna earns nothing, so every point she spends comes out of her 1200."""
    data = sample_master_data()
    data["program"]["tiers"].append({"code": "none", "accrualPercent": "0"})
    data["customers"][0]["tier"] = "none"
    return data


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=no_accrual_data())
    yield hub
    hub.stop()


def enrolled(hub: LoopbackHub, tmp_path: Path, name: str, **kw: Any) -> Till:
    return enrolled_till(hub, tmp_path / name, name, **kw)


def held_at_hub(hub: LoopbackHub) -> int:
    return int(hub.store.balance("c-1", datetime.now(UTC)).held)


@pytest.mark.slow
def test_a_hold_the_hub_grants_after_the_deadline_is_not_kept(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9, §11: past the 300 ms the till prices OFFLINE; a hold the slow
    hub places afterwards would reserve the customer's points for every other till for the
    hold's whole time (31 minutes), even once the till cancelled the receipt (its release
    can reach the hub before the late hold). The hub's live balance after hold + cancel is
    what it was."""
    till = enrolled(hub, tmp_path, "till-1")  # the 300 ms deadline
    other = enrolled(hub, tmp_path, "till-2", timings=timings(redeem_timeout_s=3.0))
    late = threading.Event()

    def slow(where: str) -> None:
        if where == "authorize" and not late.is_set():
            time.sleep(0.8)

    hub.server.servicer.failpoint = slow
    try:
        held = till.agent.hold(receipt_from_json(receipt("h-1", CARD, redeem=1000, lines=BIG)))
        assert (held.mode, held.redeemed_points) == ("OFFLINE", 500)
        till.agent.cancel("h-1")  # at once: the release overtakes the late hold
        time.sleep(1.0)  # the hub has finished the late call
        assert held_at_hub(hub) == 0
        # a checkout priced OFFLINE by the deadline: nothing held until its upload either
        sold = till.agent.checkout(receipt_from_json(receipt("c-1", CARD, redeem=1000, lines=BIG)))
        assert (sold.mode, sold.redeemed_points) == ("OFFLINE", 500)
        time.sleep(1.0)
        late.set()
        assert held_at_hub(hub) == 0
        sold = other.agent.checkout(receipt_from_json(receipt("o-1", CARD, redeem=1200, lines=BIG)))
        assert (sold.mode, sold.redeemed_points) == ("ONLINE", 1200)  # c-1 not sent yet
    finally:
        late.set()
        till.stop()
        other.stop()


@pytest.mark.slow
def test_a_delta_on_another_base_makes_the_till_ask_for_a_full_snapshot(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §3: a delta whose baseVersion is not the cache's is refused and the
    agent asks for a full one (and ends up right). A hub that answers a till at version 1
    with the delta 2 → 3 (a hub's bug, a store restored under it) had the till refuse it,
    remember it, and refuse it again at every pull: the till stayed at version 1."""
    till = enrolled(hub, tmp_path, "till-1")
    try:
        import_doc(hub.store, {"customers": [NEW_CUSTOMER], "cards": [NEW_CARD]})
        assert hub.publish() == 2
        import_doc(hub.store, {"removed": {"cards": [CARD]}})
        assert hub.publish() == 3
        builder = hub.server.builder
        choose = builder.choose
        asked: list[int] = []

        def wrong_base(have: int, want: int) -> Any:
            asked.append(have)
            chosen = choose(have, want)
            if chosen is not None and chosen[1] != 0:
                return chosen[0], chosen[0].version - 1  # the delta 2 -> 3 to a till at 1
            return chosen

        builder.choose = wrong_base  # type: ignore[method-assign]
        puller = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2)
        result = puller.pull()
        assert (result.status, result.version, result.base_version) == ("APPLIED", 3, 0)
        assert asked == [1, 0]  # then a full one
        assert cache_version(till.data_dir) == 3
        assert till.agent.identify(CARD).status == "UNKNOWN"  # removed in 3
        assert till.agent.identify(NEW_CARD["number"]).status == "FOUND"  # added in 2
        assert puller.pull().status == "UP_TO_DATE"
    finally:
        till.stop()


def test_a_till_issued_coupon_number_continues_above_applied_through(tmp_path: Path) -> None:
    """docs/CONTRACT.md §13, §9: a till-issued code is built from a per-device counter that
    is never reused, like seq. A ledger older than the device's history (a data directory
    restored from a backup) numbered its next sale above the snapshot's appliedThrough,
    but its next code from its own old counter: a code the hub already had (another
    customer's, in every till's snapshot) was issued again."""
    from tillpoint.agent.service import Agent

    from .test_coupons import NEXT_VISIT

    agent = Agent(tmp_path / "till", "till-1")
    try:
        first = sample_master_data() | {"offers": [NEXT_VISIT]}
        first |= {"version": 1, "baseVersion": 0, "issuedAt": "2026-11-23T03:00:00Z"}
        agent.load_snapshot(first)
        at = datetime(2026, 11, 23, 7, 15, tzinfo=UTC)
        agent.checkout(receipt_from_json(receipt("s-1", CARD, at=at)))
        assert issued_codes(tmp_path / "till") == [("TP5TILL11", 2)]
        # the hub counted this device's sales up to seq 50 (codes up to 50 among them)
        agent.load_snapshot(
            {
                "version": 2,
                "baseVersion": 1,
                "issuedAt": "2026-11-24T03:00:00Z",
                "appliedThrough": {"till-1": 50},
            }
        )
        later = datetime(2026, 12, 2, 7, 15, tzinfo=UTC)  # past the print cooldown
        done = agent.checkout(receipt_from_json(receipt("s-2", CARD, at=later)))
        assert done.to_json()["printedOffers"] == ["o-next"]
        codes = issued_codes(tmp_path / "till")
        assert codes[0] == ("TP5TILL11", 2)
        code, seq = codes[1]
        assert seq == 52  # the checkout took 51
        assert int(code.removeprefix("TP5TILL1")) > 50, code
    finally:
        agent.close()


def issued_codes(data_dir: Path) -> list[tuple[str, int]]:
    import sqlite3

    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return [
            (str(c), int(s))
            for c, s in conn.execute("SELECT code, seq FROM issued_coupons ORDER BY seq")
        ]
    finally:
        conn.close()


@pytest.mark.slow
def test_a_snapshot_counting_part_of_the_tills_sales_counts_nothing_twice(tmp_path: Path) -> None:
    """docs/CONTRACT.md §3, §9: the hub publishes while some of the till's transactions are
    in and others still in its outbox (pending points, refunds of counted and uncounted
    receipts among them): the till's balance never moves for it, and ends as the hub's."""
    from datetime import timedelta

    from tillpoint.agent.results import refund_from_json
    from tillpoint.sync.push import Pusher

    data = sample_master_data()
    data["program"]["activationDelayDays"] = 14
    hub = LoopbackHub(tmp_path / "hub", data=data)
    till = enrolled(hub, tmp_path, "till-1", timings=timings(redeem_timeout_s=3.0))

    def local() -> tuple[int, int]:
        b = till.agent.balance(CARD)
        return b.available_points, b.pending_points

    def at_hub() -> tuple[int, int]:
        b = hub.store.balance("c-1", datetime.now(UTC))
        return b.available, b.pending

    def push(batch: int | None = None) -> None:
        pusher = Pusher(
            till.data_dir, "till-1", till.link, call_timeout_s=2, batch_size=batch or 200
        )
        try:
            pusher.push_batch() if batch else pusher.drain()
        finally:
            pusher.close()

    def publish_and_pull() -> None:
        version = hub.publish()
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        assert cache_version(till.data_dir) == version

    try:
        t0 = datetime.now(UTC) - timedelta(minutes=10)
        lines = [{"sku": "4601234000017", "qty": "3", "amountMinor": 30000}]
        for i in range(3):
            sold = till.agent.checkout(
                receipt_from_json(
                    receipt(f"r-{i}", CARD, at=t0 + timedelta(seconds=i), redeem=20, lines=lines)
                )
            )
            assert (sold.mode, sold.redeemed_points, sold.earned_points) == ("ONLINE", 20, 19)
        assert local() == (1140, 57)
        push(batch=2)  # seq 1 and 2 in, 3 still in the outbox
        publish_and_pull()
        assert hub.store.applied_through("till-1") == 2
        assert local() == (1140, 57)
        for refund_id, receipt_id in (("f-0", "r-0"), ("f-2", "r-2")):  # counted, not counted
            till.agent.refund(
                refund_from_json(
                    {
                        "refundId": refund_id,
                        "receiptId": receipt_id,
                        "at": (t0 + timedelta(seconds=30)).isoformat(),
                        "lines": [{"sku": "4601234000017", "qty": "1"}],
                    }
                )
            )
        assert local() == (1152, 45)
        push(batch=1)  # seq 3 in; the refunds (4, 5) still out
        publish_and_pull()
        assert at_hub() == (1140, 57)
        assert local() == (1152, 45)
        push()
        publish_and_pull()
        assert at_hub() == local() == (1152, 45)
    finally:
        till.stop()
        hub.stop()


def test_without_notifications_the_till_polls(hub: LoopbackHub, tmp_path: Path) -> None:
    """docs/CONTRACT.md §9: a notification makes the till pull at once; otherwise it polls
    (here: a hub whose notifications never reach the till, every 2 s)."""
    from tillpoint.sync.service import SyncService

    every = timings(poll_interval_s=2.0)
    till = hub.till("till-1", tmp_path / "till-1", start=False, timings=every)
    service = SyncService(till.agent, till.link, till.link.enrollment, every)
    service._subscribe = lambda: None  # type: ignore[method-assign]
    service.start()
    till.service = service
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1)
        import_doc(hub.store, {"customers": [NEW_CUSTOMER], "cards": [NEW_CARD]})
        version = hub.publish()
        started = time.monotonic()
        wait_for(lambda: cache_version(till.data_dir) == version, timeout=10)
        assert time.monotonic() - started < 4.0  # within one poll interval (and a pull)
    finally:
        till.stop()


def test_a_hub_restored_from_a_backup_is_not_taken_for_the_tills_base(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §3: a delta applies only on top of exactly its base. A hub restored
    from a backup numbers its next publications again from the backup's (its balance
    refreshes do so by themselves as the tills push again): its version 2 is not the 2 a
    till took before the restore. The till took the restored hub's delta 2 -> 3 on top of
    its own 2, and kept for good what only the lost 2 had (a card removed) and never got
    what only the new 2 has (a new customer)."""
    import shutil
    import sqlite3

    if hub.dir.on_postgres:
        pytest.skip("the backup here is a copy of the SQLite store")
    till = enrolled(hub, tmp_path, "till-1")
    try:
        backup = tmp_path / "hub-backup.db"
        source = sqlite3.connect(hub.dir.sqlite_path)
        target = sqlite3.connect(backup)
        try:
            source.backup(target)  # version 1
        finally:
            source.close()
            target.close()
        import_doc(hub.store, {"removed": {"cards": [CARD]}})
        assert hub.publish() == 2
        puller = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2)
        assert puller.pull().status == "APPLIED"
        assert till.agent.identify(CARD).status == "UNKNOWN"

        hub.stop()  # the hub's disk is lost; last night's backup comes back
        for suffix in ("", "-wal", "-shm"):
            Path(f"{hub.dir.sqlite_path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(backup, hub.dir.sqlite_path)
        hub.restart()
        import_doc(hub.store, {"customers": [NEW_CUSTOMER], "cards": [NEW_CARD]})
        assert hub.publish() == 2  # another version 2
        import_doc(hub.store, {"customers": [NEW_CUSTOMER | {"balancePoints": 20}]})
        assert hub.publish() == 3

        result = puller.pull()
        assert (result.status, result.version, result.base_version) == ("APPLIED", 3, 0)
        assert till.agent.identify(CARD).status == "FOUND"  # the hub's data, not the lost 2
        assert till.agent.balance(NEW_CARD["number"]).available_points == 20
    finally:
        till.stop()


@pytest.mark.slow
def test_what_a_hub_restored_from_a_backup_lost_is_sent_again(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9 (loses nothing; exactly once in effect), docs/HUB.md (Backups):
    a hub restored from a backup has lost the transactions it acknowledged since. The till
    had deleted them on the acknowledgement and never sent them again: the hub's mark for
    the device stopped below the gap for good, so none of the till's later sales ever
    reached a published balance either. The till now sends them again (the hub stores
    each once) once the hub's mark for it goes back."""
    import shutil
    import sqlite3

    from tillpoint.sync.push import Pusher

    if hub.dir.on_postgres:
        pytest.skip("the backup here is a copy of the SQLite store")
    till = enrolled(hub, tmp_path, "till-1", timings=timings(redeem_timeout_s=3.0))

    def push() -> None:
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=2)
        try:
            pusher.drain()
        finally:
            pusher.close()

    def sell(*numbers: int) -> None:
        for n in numbers:
            till.agent.checkout(receipt_from_json(receipt(f"r-{n}", CARD, redeem=10)))

    try:
        sell(1, 2)
        push()
        backup = tmp_path / "hub-backup.db"
        source, target = sqlite3.connect(hub.dir.sqlite_path), sqlite3.connect(backup)
        try:
            source.backup(target)  # seq 1 and 2
        finally:
            source.close()
            target.close()
        sell(3, 4)
        push()  # acknowledged, then lost with the hub's disk
        hub.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{hub.dir.sqlite_path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(backup, hub.dir.sqlite_path)
        hub.restart()
        sell(5, 6)
        push()
        push()  # what the answer showed lost
        assert [e.seq for e in hub.store.ledger("till-1")] == [1, 2, 3, 4, 5, 6]
        assert hub.store.applied_through("till-1") == 6
        version = hub.publish()
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        assert cache_version(till.data_dir) == version
        hub_anna = hub.store.balance("c-1", datetime.now(UTC)).available
        assert till.agent.balance(CARD).available_points == hub_anna
        push()
        assert [e.seq for e in hub.store.ledger("till-1")] == [1, 2, 3, 4, 5, 6]  # once
    finally:
        till.stop()


def test_after_reset_force_the_tills_later_sales_still_reach_the_snapshots(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9: `tillpoint reset --force` discards the transactions the hub has
    not got; their seqs never reached it, so the hub's mark for the device stopped below
    them for good and none of the till's later sales reached a published balance (every
    other till went on without them, and the hub's snapshots never counted them). The
    till now tells the hub which seqs it discarded: the hub sets them aside (nothing to
    count) and the device's progress goes on."""
    from tillpoint.sync import sync_status
    from tillpoint.sync.push import Pusher

    till = enrolled(hub, tmp_path, "till-1", timings=timings(redeem_timeout_s=3.0))

    def push() -> None:
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=2)
        try:
            pusher.drain()
            assert pusher.set_aside == []
        finally:
            pusher.close()

    try:
        till.agent.checkout(receipt_from_json(receipt("r-1", CARD)))
        push()
        till.agent.checkout(receipt_from_json(receipt("r-2", CARD)))  # seq 2, never sent
        assert till.agent.reset(force=True).discarded == 1
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        sold = till.agent.checkout(receipt_from_json(receipt("r-3", CARD)))
        push()
        assert hub.store.applied_through("till-1") == 3
        assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-1")] == [(1, "r-1"), (3, "r-3")]
        version = hub.publish()
        doc = hub.store.snapshot_doc(version, 0)
        assert doc["appliedThrough"] == {"till-1": 3}  # r-3 is in the published balances
        listed = [(r["seq"], r["outcome"]) for r in hub.store.set_aside_transactions("till-1")]
        assert listed == [(2, "REJECTED")]  # `hub set-aside`: what the till discarded
        from tillpoint.agent.ledger import open_ledger

        conn = open_ledger(till.data_dir)
        try:
            assert sync_status(conn)["setAside"] == 0  # nothing for the till's support to do
        finally:
            conn.close()
        assert till.agent.status().to_json()["outboxDepth"] == 0
        assert sold.mode == "ONLINE"
    finally:
        till.stop()
