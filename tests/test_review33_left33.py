"""Review 33 (left33): small faults left by review 32, each shown first by a test here
(CONTRACT §4, §5, §6, §7, §9, §10). Real parts: the reference hub on SQLite, enrolled tills
over mTLS on 127.0.0.1, their SQLite ledgers, `tillpoint` processes, a TCP printer.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.sync.loopback import receipt as hub_receipt
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher

from .conftest import enrolled_till
from .test_review32_rev32a import ANNA, drain, expiring_data, ledger_rows, refund_body

# ---------------------------------------------------------------- 1. a refund after its sale


@pytest.fixture
def expiring_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=expiring_data())
    yield hub
    hub.stop()


def test_a_refund_never_reaches_the_hub_before_its_sale_numbered_again_in_an_earlier_push(
    expiring_hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §9, §6, §16. Till W, wiped and enrolled again, sells n-1 from a snapshot
    file (seq 1, redeeming 50 of the 200 points that expire in January) and refunds part
    of it (seq 2, 25 back into that batch); the hub holds seq 1 of W's old disk. The
    first push carries the sale alone (a narrow batch): seq taken, the sale is numbered
    again as seq 3, the refund still unsent under seq 2. The next push (one row, as a
    thin link's is) sent seq 2 first: the hub stored the refund without its sale, and
    the snapshot published then told the till 146 of Anna's points expire in January
    where 175 do. A refund now goes after its sale's transaction."""
    hub = expiring_hub
    data_dir = tmp_path / "w"
    till = enrolled_till(hub, data_dir, "till-w")
    till.agent.checkout(receipt_from_json(hub_receipt("w-1", ANNA)))
    assert drain(till) == 1
    till.stop()
    shutil.rmtree(data_dir)

    hub.enroll("till-w", data_dir)
    agent = Agent(data_dir, "till-w")
    try:
        agent.load_snapshot(hub.store.snapshot_doc(1, 0))
        sold = agent.checkout(receipt_from_json(hub_receipt("n-1", ANNA, redeem=50)))
        returned = agent.refund(refund_from_json(refund_body("n-1-r", "n-1")))
        own = agent.balance(ANNA)
    finally:
        agent.close()
    assert (sold.seq, returned.seq, returned.returned_points) == (1, 2, 25)
    assert own.expiring[0].points == 175

    till = hub.till("till-w", data_dir, start=False)
    pusher = Pusher(till.data_dir, "till-w", till.link, call_timeout_s=5)
    try:
        pusher.know_mark()
        pusher.rows_limit = 1  # the sale alone
        pusher.push_batch()
        journal = ledger_rows(data_dir, "SELECT seq, ref_id FROM journal ORDER BY seq")
        assert journal == [(2, "n-1-r"), (3, "n-1")]  # the sale numbered again
        pusher.batch_size = pusher.rows_limit = 1  # one row a push
        pusher.push_batch()
        assert [e.ref_id for e in hub.store.ledger("till-w")] == ["w-1", "n-1"]  # not the refund
        hub.publish()
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        assert till.agent.balance(ANNA).expiring[0].points == 175  # was 146
        pusher.push_batch()
        assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-w")] == [
            (1, "w-1"),
            (2, "n-1-r"),
            (3, "n-1"),
        ]
        assert hub.store.applied_through("till-w") == 3
    finally:
        pusher.close()
        till.stop()


def test_a_whole_batch_sends_a_refund_after_its_sale_numbered_again(
    expiring_hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §9: in one batch too, the sale numbered again goes first, its refund
    (the lower seq) right after it; the other rows keep their seq order."""
    hub = expiring_hub
    data_dir = tmp_path / "w"
    till = enrolled_till(hub, data_dir, "till-w")
    till.agent.checkout(receipt_from_json(hub_receipt("w-1", ANNA)))
    assert drain(till) == 1
    till.stop()
    shutil.rmtree(data_dir)

    hub.enroll("till-w", data_dir)
    agent = Agent(data_dir, "till-w")
    try:
        agent.load_snapshot(hub.store.snapshot_doc(1, 0))
        agent.checkout(receipt_from_json(hub_receipt("n-1", ANNA, redeem=50)))
        agent.refund(refund_from_json(refund_body("n-1-r", "n-1")))
        agent.checkout(receipt_from_json(hub_receipt("n-2", ANNA)))
    finally:
        agent.close()

    till = hub.till("till-w", data_dir, start=False)
    pusher = Pusher(till.data_dir, "till-w", till.link, call_timeout_s=5)
    try:
        pusher.know_mark()
        pusher.rows_limit = 1
        pusher.push_batch()  # n-1 numbered again as 4
        pusher.rows_limit = 2
        assert [seq for seq, _ in pusher._batch()] == [3]  # the refund waits for its sale
        pusher.rows_limit = 200
        assert [seq for seq, _ in pusher._batch()] == [3, 4, 2]
        assert pusher.drain() == 3
        assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-w")] == [
            (1, "w-1"),
            (2, "n-1-r"),
            (3, "n-2"),
            (4, "n-1"),
        ]
    finally:
        pusher.close()
        till.stop()
