"""Review 51 (mut51a): rules of the outbox's upload and the sync loop (CONTRACT §9) that
mutation testing of sync/push.py, sync/service.py and sync/backoff.py found no test
holding. Each test fails on its mutant and passes on the code (docs/DECISIONS.md,
"Review 51 (mut51a)").

Real parts: the reference hub on SQLite served over mTLS on 127.0.0.1 (for a hub of an
earlier release, its own servicer with one answer changed, as tests/test_sync_snapshots.py
does), enrolled tills with their SQLite ledgers, the shipped `SyncService` threads.
Default part: 23 tests, about 30 s alone (45 s on a loaded machine); one slow test, ~10 s.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.config import Settings
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.backoff import Backoff
from tillpoint.sync.hub_server import HubConfig, HubServicer
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import Puller, cache_version
from tillpoint.sync.push import Pusher
from tillpoint.sync.service import SyncTimings
from tillpoint.v1 import tillpoint_pb2 as pb

CARD = "2770000000017"


def rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- the backoff (§9's decision)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 60.0), (-0.5, 60.0), (2.0, 1.0), (0.0, 0.0)])
def test_a_backoff_needs_a_base_above_zero_and_a_cap_not_below_it(base: float, cap: float) -> None:
    """A base of 0 is a retry loop without a pause (every delay 0·2ⁿ = 0): the hub
    hammered by every till of a chain. Refused, as a cap below the base."""
    with pytest.raises(ValueError, match="need 0 < base <= cap"):
        Backoff(base, cap)


def test_a_backoff_whose_cap_is_its_base_waits_that_every_time() -> None:
    backoff = Backoff(1.0, 1.0, rng=random.Random(5))
    assert all(0.5 <= backoff.next() <= 1.0 for _ in range(10))


def test_each_delay_is_drawn_over_the_whole_upper_half() -> None:
    """§9: each delay is drawn from [d/2, d] ("equal jitter"): the whole half, so that a
    store's tills coming back together spread over it. The draws of a seeded generator,
    worked out by hand: d/2 + uniform(0, d/2) from the same generator."""
    backoff = Backoff(1.0, 1.0, rng=random.Random(51))
    mirror = random.Random(51)
    draws = [backoff.next() for _ in range(400)]
    assert draws == [0.5 + mirror.uniform(0, 0.5) for _ in range(400)]
    assert min(draws) < 0.55 and max(draws) > 0.95


def test_a_reset_backoff_starts_again_at_its_base_and_doubles_from_there() -> None:
    """After a success the next failure waits [base/2, base] again, the one after it
    [base, 2·base]: the same as a fresh backoff, neither shorter nor longer."""
    backoff = Backoff(0.5, 60.0, rng=random.Random(3))
    for _ in range(6):
        backoff.next()
    backoff.reset()
    assert backoff.failures == 0
    first, second, third = backoff.next(), backoff.next(), backoff.next()
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 1.0
    assert 1.0 <= third <= 2.0


# ---------------------------------------- a set-aside sale whose text says DISCARDED


def test_a_sale_whose_text_says_discarded_is_set_aside_when_the_hub_conflicts_never_dropped(
    tmp_path: Path,
) -> None:
    """§9: a seq the till discarded (`reset --force`) leaves the outbox whatever the hub
    answers (it set it aside, as meant); a sale the hub answers CONFLICT is set aside
    and kept in `sync_set_aside` for `status`. The first is recognised by its payload's
    `kind`; a sale whose receipt id holds the word "DISCARDED" is still a sale. (The
    quick look for the word before reading the JSON is only that: with it alone such a
    sale, answered CONFLICT, left the outbox as acknowledged, set aside nowhere.)"""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        now = datetime.now(UTC)
        # the hub holds till-1's receipt DISCARDED-1 with another request (an old disk's)
        hub.store.ingest(
            "till-1",
            "",
            [
                TxIn(
                    "till-1",
                    5,
                    "CHECKOUT",
                    now.isoformat(),
                    "c-2",
                    "",
                    '{"receiptId": "DISCARDED-1"}',
                    "{}",
                    1,
                    0,
                    "",
                )
            ],
            now,
        )
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        till.agent.checkout(receipt_from_json(receipt("DISCARDED-1", CARD)))
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5)
        try:
            assert pusher.drain() == 1
            assert [(seq, outcome) for seq, outcome, _ in pusher.set_aside] == [(1, "CONFLICT")]
        finally:
            pusher.close()
        assert rows(till.data_dir, "SELECT seq, outcome FROM sync_set_aside") == [(1, "CONFLICT")]
    finally:
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- a hub of an earlier release


class EarlierHub(HubServicer):
    """The reference hub's servicer answering as a hub of an earlier release may: a push
    acknowledged by the contiguous mark alone (no per-transaction results), or with a
    result for a seq this push did not carry."""

    no_results = False
    stray_result = False
    mark_behind = False  # and its mark for the device answered as 0

    def PushTransactions(
        self, request: pb.TransactionBatch, context: grpc.ServicerContext
    ) -> pb.PushAck:
        ack = super().PushTransactions(request, context)
        if self.no_results:
            ack.ClearField("results")
        if self.mark_behind:
            ack.acked_through_seq = 0
        if self.stray_result:
            stray = pb.TransactionResult(seq=999, outcome=pb.TX_STORED)
            results = [stray, *ack.results]
            ack.ClearField("results")
            ack.results.extend(results)
        return ack


@pytest.fixture
def earlier_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    EarlierHub.no_results = EarlierHub.stray_result = EarlierHub.mark_behind = False
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    server = hub.server
    server.servicer = EarlierHub(server.store, server.builder, server.notifier, hub.config)
    hub.start()
    yield hub
    hub.stop()
    EarlierHub.no_results = EarlierHub.stray_result = EarlierHub.mark_behind = False


def sell_and_drain(hub: LoopbackHub, tmp_path: Path, sales: int) -> tuple[int, int]:
    """`sales` sales at an enrolled till, drained once: (rows that left, rows still in)."""
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        for i in range(sales):
            till.agent.checkout(receipt_from_json(receipt(f"r-{i}", CARD)))
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5)
        try:
            return pusher.drain(), pusher.pending()
        finally:
            pusher.close()
    finally:
        till.stop()


def test_a_hub_without_per_transaction_results_settles_the_batch_up_to_its_mark(
    earlier_hub: LoopbackHub, tmp_path: Path
) -> None:
    """A hub that answers only `ackedThroughSeq` (no results): the rows at or below that
    mark leave the outbox, the last one too (the mark names it). With `<` for `<=` the
    row at the mark stayed, was sent again and again answered by the same mark: the
    outbox never emptied."""
    EarlierHub.no_results = True
    assert sell_and_drain(earlier_hub, tmp_path, 3) == (3, 0)
    assert [e.seq for e in earlier_hub.store.ledger("till-1")] == [1, 2, 3]


def test_a_result_for_a_seq_the_push_did_not_carry_is_passed_over(
    earlier_hub: LoopbackHub, tmp_path: Path
) -> None:
    """A result naming a seq not in this batch (first in the answer) is passed over and
    the batch's own results still settle it: a `break` there left all three sales in the
    outbox, sent again at every round."""
    EarlierHub.stray_result = True
    assert sell_and_drain(earlier_hub, tmp_path, 3) == (3, 0)


def test_a_drain_that_the_hub_settles_nothing_of_stops_after_that_push(
    earlier_hub: LoopbackHub, tmp_path: Path
) -> None:
    """`drain` does not spin: a push the hub settled nothing of (no result, its mark
    behind every row) ends it, the rows left in the outbox for the next round, and it
    says how many it sent. Without that stop it pushed the same batch again for good."""
    EarlierHub.no_results = EarlierHub.mark_behind = True
    assert sell_and_drain(earlier_hub, tmp_path, 3) == (3, 3)
    assert earlier_hub.server.servicer.stats.pushes == 1


def test_a_batch_stops_before_the_row_that_would_take_it_past_its_byte_bound(
    tmp_path: Path,
) -> None:
    """§9: a batch is at most `batch_size` rows and about 1 MiB (halved after a push that
    ran out of time), at least one row. Three sales of this till's outbox, sizes a, b, c
    read from it (b the biggest): under a bound of a + b the batch is the first two (a
    row that ends exactly at the bound is taken), under a + b - 1 the first alone (never
    the first and the third, which would fit: batches go in seq order), under 1 byte
    still the first. Rows summed wrong (or compared with >=) made batches past the
    bound; a row passed over for its size let a later one in ahead of it."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        five = [{"sku": "4601234000017", "qty": "1", "priceMinor": 100 + i} for i in range(5)]
        for i in range(3):  # the second the biggest: five lines
            lines = five if i == 1 else None
            till.agent.checkout(receipt_from_json(receipt(f"r-{i}", CARD, lines=lines)))
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5)
        try:
            whole = pusher._batch()
            assert [seq for seq, _ in whole] == [1, 2, 3]
            a, b, c = (len(payload) for _, payload in whole)
            assert c < b
            for bound, seqs in ((a + b, [1, 2]), (a + b - 1, [1]), (1, [1])):
                pusher.bytes_limit = bound
                assert [seq for seq, _ in pusher._batch()] == seqs, bound
        finally:
            pusher.close()
    finally:
        till.stop()
        hub.stop()


def test_the_seqs_a_reset_discarded_count_with_the_outbox_as_still_to_send(
    tmp_path: Path,
) -> None:
    """§9: after `reset --force` the till still owes the hub the seqs it discarded (a
    DISCARDED transaction each) besides the sales made since: both are "still to send",
    and `run`'s round pushes only when there is something to send. One discarded seq and
    one new sale are two; counted as the outbox minus the discarded ones they were none,
    and `run` never pushed that sale."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        till.agent.checkout(receipt_from_json(receipt("r-1", CARD)))
        assert till.agent.reset(force=True).discarded == 1
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        till.agent.checkout(receipt_from_json(receipt("r-2", CARD)))
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5)
        try:
            assert pusher.pending() == 2
            assert pusher.drain() == 2
            assert pusher.pending() == 0
        finally:
            pusher.close()
        assert [e.ref_id for e in hub.store.ledger("till-1")] == ["r-2"]
    finally:
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- the sync loop's pace


def shipped(data_dir: Path) -> SyncTimings:
    """What `tillpoint run` ships."""
    timings = SyncTimings.from_settings(Settings(device_id="till-1", data_dir=data_dir))
    assert (timings.backoff_base_s, timings.backoff_cap_s) == (0.5, 60.0)
    return timings


def test_a_hub_away_is_retried_with_the_backoff_not_at_every_round(tmp_path: Path) -> None:
    """§9: retries back off. With the hub gone, the pull and the push (a sale waits in the
    outbox: two sales) each fail, and the next try of each waits its backoff: with the shipped 0.5 s
    base, at least 0.25, 0.5, 1 and 2 s, so no more than 5 failures of either in 3 s (a
    loaded machine only makes it fewer). A retry that did not wait (the backoff's delay
    taken off the clock instead of added) tried hundreds of times a second; a drain
    that went on after any failure of a batch of more than one (not only `sync now`'s
    push that ran out of time) tried again at once, for good, inside one round."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", timings=shipped(tmp_path / "till"))
    service = till.service
    assert service is not None
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1 and till.link.online, timeout=20)
        hub.stop()
        wait_for(lambda: not till.link.online, timeout=20)
        for i in range(2):  # OFFLINE, into the outbox: a batch of two
            till.agent.checkout(receipt_from_json(receipt(f"r-away-{i}", CARD)))
        service.trigger_pull()
        wait_for(
            lambda: service.pull_backoff.failures and service.push_backoff.failures,
            timeout=20,
        )
        pulls, pushes = service.pull_backoff.failures, service.push_backoff.failures
        time.sleep(3.0)
        assert service.pull_backoff.failures - pulls <= 5
        assert service.push_backoff.failures - pushes <= 5
    finally:
        till.stop()
        hub.stop()


class CountingHub(HubServicer):
    """The reference hub's servicer, counting the PullSnapshot calls it is asked."""

    pull_calls = 0

    def PullSnapshot(
        self, request: pb.PullSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotChunk]:
        type(self).pull_calls += 1
        yield from super().PullSnapshot(request, context)


def test_a_till_up_to_date_asks_for_the_snapshot_at_its_poll_interval_not_at_every_round(
    tmp_path: Path,
) -> None:
    """§9: the agent pulls at start, on a notification and every poll interval. Its
    rounds run every `push_check_s` (0.1 s here) to look at the outbox; the poll is
    30 s. In 2 s after the start the hub is asked at most twice (the pull at start, and
    one more if the stream's first notification came before that pull ended); a pull
    dated from the clock minus the interval asked at every round."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    server = hub.server
    CountingHub.pull_calls = 0
    server.servicer = CountingHub(server.store, server.builder, server.notifier, hub.config)
    hub.start()
    till = hub.till("till-1", tmp_path / "till")
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1, timeout=20)
        time.sleep(2.0)
        assert 1 <= CountingHub.pull_calls <= 2
    finally:
        till.stop()
        hub.stop()


# ------------------------------------------------ a drain goes on past a batch it settled


def test_a_drain_goes_on_past_batches_of_a_sale_numbered_again_and_one_set_aside(
    tmp_path: Path,
) -> None:
    """`drain` stops early only when the hub settled nothing of a batch (it must not spin);
    a batch is settled by its rows stored, set aside and numbered again alike. Batches of
    two here, the hub holding an old disk's sale at seq 2 (seq taken: r-2 is numbered
    again as seq 5) and r-3 with another request (set aside): batch 1 is one stored and
    one numbered again, batch 2 one set aside and one stored, batch 3 r-2 again. Counted
    as stored minus numbered again, or stored minus set aside, either batch settled
    "nothing", and the drain ended with sales in the outbox."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        now = datetime.now(UTC)
        old = [
            TxIn("till-1", seq, "CHECKOUT", now.isoformat(), "c-2", "", request, "{}", 1, 0, "")
            for seq, request in ((2, '{"receiptId": "old-2"}'), (9, '{"receiptId": "r-3"}'))
        ]
        hub.store.ingest("till-1", "", old, now)
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        for i in range(1, 5):
            till.agent.checkout(receipt_from_json(receipt(f"r-{i}", CARD)))
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5, batch_size=2)
        try:
            assert pusher.drain() == 5  # 2 + 2 + r-2 again
            assert pusher.pending() == 0
            assert [(seq, outcome) for seq, outcome, _ in pusher.set_aside] == [(3, "CONFLICT")]
        finally:
            pusher.close()
        stored = [(e.seq, e.ref_id) for e in hub.store.ledger("till-1")]
        assert (1, "r-1") in stored and (4, "r-4") in stored and (5, "r-2") in stored
        assert hub.server.servicer.stats.pushes == 3
    finally:
        till.stop()
        hub.stop()


def test_the_sync_loop_waits_between_its_rounds_never_spins(tmp_path: Path) -> None:
    """The sync thread looks at the outbox every `push_check_s` (0.1 s here) and sleeps
    in between: in 2 s, about 20 rounds (a loaded machine: fewer). A round that dated
    its next look from the clock minus the interval, or took the shorter of 0 and the
    wait, ran thousands of rounds a second: a core of the till's PC kept busy. The
    rounds are counted at their last step, the service's own `_persist_mode` (wrapped:
    it still runs)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till")
    service = till.service
    assert service is not None
    rounds = [0]
    persist = service._persist_mode

    def counted() -> None:
        rounds[0] += 1
        persist()

    try:
        wait_for(lambda: cache_version(till.data_dir) == 1, timeout=20)
        service._persist_mode = counted  # type: ignore[method-assign]
        time.sleep(2.0)
        assert 0 < rounds[0] <= 60
    finally:
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- a pull spoilt on the way


class SpoiltOnceHub(HubServicer):
    """The reference hub's servicer whose first snapshot stream sends its second chunk
    out of order (a stream spoilt on the way, not a bundle refused for what it is), and
    whose Subscribe stream stays open and silent (no notification wakes a pull)."""

    streams = 0

    def PullSnapshot(
        self, request: pb.PullSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotChunk]:
        type(self).streams += 1
        first = type(self).streams == 1
        for i, chunk in enumerate(super().PullSnapshot(request, context)):
            if first and i == 1:
                chunk.offset += 1
            yield chunk

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Notification]:
        while context.is_active():
            time.sleep(0.05)
        yield from ()


def test_a_pull_spoilt_on_the_way_is_tried_again_after_the_backoff_not_the_poll(
    tmp_path: Path,
) -> None:
    """§9 (the sync loop's rule): a bundle refused for what it is waits for the next poll
    (the hub's word until it publishes another), but what went wrong on the way (chunks
    out of order: the refusal is not remembered) is retried with the pull's backoff. The
    start pull's stream is spoilt; with a 30 s poll and nothing announced, the till has
    the snapshot within seconds. Taken as a success, the retry waited the whole poll."""
    data = sample_master_data()
    data["products"] = [
        *data["products"],  # type: ignore[list-item]
        *({"sku": f"2{i:012d}", "name": f"Товар {i}", "category": "dairy"} for i in range(300)),
    ]
    config = HubConfig(chunk_size=1024, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=data, start=False)
    server = hub.server
    SpoiltOnceHub.streams = 0
    server.servicer = SpoiltOnceHub(server.store, server.builder, server.notifier, config)
    hub.start()
    till = hub.till("till-1", tmp_path / "till")  # FAST: a 30 s poll, a 0.05 s backoff
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1, timeout=20)
        assert SpoiltOnceHub.streams >= 2
    finally:
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- sync now's halving, its ends


def sync_now(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> tuple[int, str]:
    code = main(["sync", "now", "--data-dir", str(data), *argv])
    return code, capsys.readouterr().err


def slow_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sales: int, slower_than: int
) -> tuple[LoopbackHub, Path, threading.Event, list[int]]:
    """A hub whose pushes of more than `slower_than` transactions never answer within the
    till's deadline (a link too thin for them; they are dropped unstored), and a till with
    `sales` sales in its outbox, for `tillpoint sync now` (500 ms a call)."""
    released = threading.Event()
    late: list[int] = []  # the sizes of the pushes that ran late
    real_push = HubServicer.PushTransactions

    def push(self: HubServicer, request: pb.TransactionBatch, context: Any) -> Any:
        if len(request.transactions) > slower_than:
            late.append(len(request.transactions))
            released.wait(10)  # longer than the till waits for a call
            context.abort(grpc.StatusCode.UNAVAILABLE, "too late")
        return real_push(self, request, context)

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till-1"
    till = hub.till("till-1", data, start=False)
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        for i in range(sales):
            till.agent.checkout(receipt_from_json(receipt(f"r-{i}", CARD)))
    finally:
        till.stop()
    monkeypatch.setattr(HubServicer, "PushTransactions", push)
    hub.restart()  # its servicer's methods are bound when it starts
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", hub.address)
    monkeypatch.setenv("TILLPOINT_HUB__CALL_TIMEOUT_MS", "500")
    return hub, data, released, late


def test_sync_now_halves_a_batch_of_two_that_runs_late_and_sends_each_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§9: `sync now` tries a push that ran out of time again at once with half the
    batch, down to one transaction. Two sales over a link that carries one in time: the
    pair runs late, then each goes alone; exit 0, both at the hub. Halving only batches
    of more than two ended the command at the pair ("the hub did not answer in time")."""
    hub, data, released, late = slow_hub(tmp_path, monkeypatch, sales=2, slower_than=1)
    try:
        code, err = sync_now(capsys, data, "--timeout", "30")
        assert code == 0, err
        assert late == [2]
        assert [e.ref_id for e in hub.store.ledger("till-1")] == ["r-0", "r-1"]
    finally:
        released.set()
        hub.stop()


def test_sync_now_whose_one_sale_runs_late_says_so_at_once_not_at_its_deadline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§9: `sync now` ends with "the hub did not answer in time" when a single
    transaction does not get through in time; it does not try the same one again until
    its `--timeout` (30 s here) and then say it gave up at its deadline."""
    hub, data, released, late = slow_hub(tmp_path, monkeypatch, sales=1, slower_than=0)
    try:
        code, err = sync_now(capsys, data, "--timeout", "30")
        assert code == 1, err
        assert late == [1]
        assert err.count("\n") == 1 and "did not answer in time" in err, err
        assert "--timeout" not in err, err
        assert hub.store.ledger("till-1") == []
    finally:
        released.set()
        hub.stop()


# ---------------------------------------------------------------- Subscribe after an outage


@pytest.mark.slow  # ~10 s: an outage into long backoffs first (test_sync_recovery's twin)
def test_after_an_outage_the_subscribe_stream_is_back_at_once_and_brings_the_next_version(
    tmp_path: Path,
) -> None:
    """§9 (the sync loop): when the hub answers again, the pull, push and Subscribe
    backoffs all end. The pull's and push's ending is tested by test_sync_recovery; here
    Subscribe's: after a long outage (each backoff 30-60 s) the hub is back, the till
    pulls, and a version published after that comes down by notification within 28 s,
    with the shipped 60 s poll. A Subscribe that waited out its backoff (its wait ended
    only by the stop) left the till a poll behind."""
    from .test_sync_recovery import BACK_WITHIN_S, outage, start

    hub, service, till = start(tmp_path)
    try:
        outage(hub, service)
        pulled = service.last_pull
        hub.restart()
        wait_for(lambda: service.last_pull is not pulled, timeout=BACK_WITHIN_S)
        assert cache_version(service.agent.data_dir) == 1
        hub.publish()  # version 2, after the till's pull: only a notification brings it
        published = time.monotonic()
        wait_for(lambda: cache_version(service.agent.data_dir) == 2, timeout=BACK_WITHIN_S)
        assert time.monotonic() - published < BACK_WITHIN_S
    finally:
        till.stop()  # type: ignore[attr-defined]
        hub.stop()


def test_a_single_sale_whose_push_ran_late_is_still_sent_by_the_next_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§9: a push that runs out of time halves the next batch, down to one transaction,
    never to none. One sale, its push late (500 ms a call here), then the hub answers:
    the next drain sends it. Halved to zero rows, the batch read nothing, the drain said
    the outbox was empty, and the sale stayed in it for good (only a success doubles the
    bound back). Its byte bound is halved too, and both are doubled by the success."""
    hub, data, released, late = slow_hub(tmp_path, monkeypatch, sales=1, slower_than=0)
    till = hub.till("till-1", data, start=False)
    pusher = Pusher(data, "till-1", till.link, call_timeout_s=0.5)
    try:
        pusher.know_mark()
        size = len(pusher._batch()[0][1])
        with pytest.raises(grpc.RpcError) as caught:
            pusher.push_batch()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert (pusher.rows_limit, late) == (1, [1])
        halved = pusher.bytes_limit
        assert halved == size // 2
        released.set()  # the late push ends (unstored), and the hub answers in time again
        monkeypatch.undo()
        hub.restart()
        assert pusher.drain() == 1
        assert pusher.pending() == 0
        assert [e.ref_id for e in hub.store.ledger("till-1")] == ["r-0"]
        # the success doubled both bounds back (§9), towards 200 rows and 1 MiB
        assert (pusher.rows_limit, pusher.bytes_limit) == (2, 2 * halved)
    finally:
        released.set()
        pusher.close()
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- a silent Subscribe stream


class SilentHub(HubServicer):
    """The reference hub's servicer counting its Subscribe streams; with `silent`, each
    stream sends the hub's first notification (heartbeat 1 s) and then nothing, open."""

    streams = 0
    silent = False

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Notification]:
        type(self).streams += 1
        notes = super().Subscribe(request, context)
        if not self.silent:
            yield from notes
            return
        yield next(notes)
        notes.close()
        while context.is_active():
            time.sleep(0.05)


def subscribed_till(tmp_path: Path, silent: bool, heartbeat_s: float) -> tuple[LoopbackHub, Any]:
    config = HubConfig(heartbeat_s=heartbeat_s, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), start=False)
    server = hub.server
    SilentHub.streams, SilentHub.silent = 0, silent
    server.servicer = SilentHub(server.store, server.builder, server.notifier, hub.config)
    hub.start()
    return hub, hub.till("till-1", tmp_path / "till")


def test_a_subscribe_stream_silent_for_three_heartbeats_is_opened_again(tmp_path: Path) -> None:
    """§9 (the sync loop): a Subscribe stream silent for three heartbeats (1 s each
    here) is cancelled and opened again. Without the watch a half-dead connection kept
    the till from every notification until the stream's 60 s deadline."""
    hub, till = subscribed_till(tmp_path, silent=True, heartbeat_s=1.0)
    try:
        wait_for(lambda: SilentHub.streams >= 2, timeout=20)
    finally:
        till.stop()
        hub.stop()


def test_a_subscribe_stream_that_hears_its_heartbeats_is_kept_open(tmp_path: Path) -> None:
    """The other side of the watch: a stream whose heartbeats come (every 4 s here) stays
    the one stream for 4.5 s (it may be silent for 12). A watch that cancelled a stream
    that was not silent opened one every half second; one that allowed three seconds,
    not three heartbeats, cancelled a stream between the heartbeats of a hub that
    sends one every 15 s (the hub's default)."""
    hub, till = subscribed_till(tmp_path, silent=False, heartbeat_s=4.0)
    try:
        wait_for(lambda: SilentHub.streams >= 1, timeout=20)
        time.sleep(4.5)
        assert SilentHub.streams == 1
    finally:
        till.stop()
        hub.stop()
