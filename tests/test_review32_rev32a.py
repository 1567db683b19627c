"""Review 32 (rev32a): this session's sync changes, adversarially (CONTRACT §6, §9, §11,
§16). (1) A sale or refund whose seq the hub holds with another transaction is numbered
again at the till (`TransactionResult.seq_taken`); (2) the authoriser sends an unsent
movement whose receiptId the hub refuses without it, and the hub sets a NUL receipt or
refund id aside as REJECTED. Real parts: the reference hub on SQLite and on PostgreSQL
(a throwaway cluster), enrolled tills over mTLS on 127.0.0.1, their SQLite ledgers.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.loopback import receipt as hub_receipt
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher

from .conftest import enrolled_till
from .test_review32_left32a import _as_an_earlier_release_kept_it

ANNA = "2770000000017"  # c-1 of the hub's sample data: 1,200 points
MILK = "4601234000017"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopbackHub]:
    store = None
    if request.param == "postgresql":
        store = str(request.getfixturevalue("pg_url"))
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), store=store)
    yield hub
    hub.stop()


def ledger_rows(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "ledger.db", timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def hub_held(hub: LoopbackHub, customer: str = "c-1") -> int:
    return int(hub.store.balance(customer, datetime.now(UTC)).held)


def hub_points(hub: LoopbackHub, customer: str = "c-1") -> tuple[int, int]:
    found = hub.store.balance(customer, datetime.now(UTC))
    return found.available, found.pending


def till_points(agent: Agent, card: str = ANNA) -> tuple[int, int]:
    found = agent.balance(card)
    return found.available_points, found.pending_points


def drain(till: Any) -> int:
    pusher = Pusher(till.data_dir, till.device_id, till.link, call_timeout_s=5)
    try:
        return pusher.drain()
    finally:
        pusher.close()


def pull(till: Any) -> None:
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()


def refund_body(refund_id: str, receipt_id: str, qty: str = "1") -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": MILK, "qty": qty}],
    }


# ---------------------------------------------------------------- the authoriser's unsent ids


def test_a_rejected_unsent_sale_holds_nothing_at_the_hub_once_pushed(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §9: a sale the hub sets aside (REJECTED) is never counted by the hub. An
    earlier release's sale under a receiptId with a NUL (40 points spent, 9 earned) waits
    in the outbox; since review 32 the till's next redemption asks the hub with it (its
    id left out) and stays ONLINE, and the hub holds the sale's net spend (31) for the
    other tills under the movement's seq, as it does for every unsent spend. The push
    then brings the sale, REJECTED ("a NUL character cannot be stored"): the hub held
    those 31 points on for the hold's whole time (30 minutes), though it will never count
    the sale, and another till of the store was granted 31 points less than Anna's live
    balance. The hold of an unsent movement goes with its transaction's answer, whatever
    it is."""
    till = enrolled_till(hub, tmp_path / "till", "till-1")
    other = enrolled_till(hub, tmp_path / "other", "till-2")
    try:
        online = till.agent.hub
        till.agent.hub = None  # the earlier release's sale: priced offline, no hold at the hub
        old = till.agent.checkout(receipt_from_json(hub_receipt("r-old", ANNA, redeem=40)))
        assert (old.redeemed_points, old.earned_points) == (40, 9)
        till.agent.hub = online
        _as_an_earlier_release_kept_it(till.data_dir, "r-old", "r\x00old")

        new = till.agent.checkout(receipt_from_json(hub_receipt("r-new", ANNA, redeem=-1)))
        assert new.mode == "ONLINE" and new.redeemed_points == 53
        assert hub_held(hub) == 31 + 53  # the unsent sale's net spend, and r-new's hold

        assert drain(till) == 2
        assert [t.receipt_id for t in hub.store.transactions("till-1")] == ["r-new"]
        assert hub_held(hub) == 0  # was 31 until the hold expired

        live = hub_points(hub)[0]
        assert live == 1200 - 53 + new.earned_points  # the REJECTED sale counts nowhere
        big = hub_receipt(
            "b-1", ANNA, redeem=live, lines=[{"sku": MILK, "qty": "1000", "priceMinor": 8990}]
        )
        granted = other.agent.checkout(receipt_from_json(big))
        assert (granted.mode, granted.redeemed_points) == ("ONLINE", live)
    finally:
        other.stop()
        till.stop()
