"""Hold and Checkout priced before their write transaction (issue 15): the commit checks that
nothing the pricing read has changed and prices again only then; nothing lost, nothing
doubled, and the redemption never goes over the balance. Real threads, real SQLite files."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import ledger, service
from tillpoint.agent.models import Receipt
from tillpoint.agent.money import decimal_text
from tillpoint.agent.results import CheckoutResult, receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import PROGRAM, ManualClock, snapshot
from .conftest import receipt as receipt_json

BORIS = "2770000000024"  # 80 points, base tier
BIG = [{"sku": "4601234000017", "qty": "1", "priceMinor": 100_000}]  # room for 300 points
TIMEOUT = 10


def receipt(*args: Any, **fields: Any) -> Receipt:
    return receipt_from_json(receipt_json(*args, **fields))


@pytest.fixture
def till(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(
        tmp_path / "data", "till-1", clock=ManualClock(datetime(2026, 11, 23, 7, 15, tzinfo=UTC))
    )
    program = {**PROGRAM, "holdTtlSeconds": 600, "offlineRedeemLimitPoints": 100_000}
    a.load_snapshot(snapshot(program=program))
    yield a
    a.close()


class Counted:
    """Counts the receipts priced inside the write transaction (`Agent._price` on the
    writer's connection) and, with `pause`, stops the first early-priced checkout between
    its pricing and its transaction until `go` is set."""

    def __init__(self, agent: Agent, pause: bool = False) -> None:
        self.inside = 0
        self.priced = threading.Event()
        self.go = threading.Event()
        self.paused = not pause
        price, early = agent._price, agent._price_early

        def counted_price(*args: Any, **kw: Any) -> Any:
            if kw.get("reads") is None:
                self.inside += 1
            return price(*args, **kw)

        def paused_early(*args: Any, **kw: Any) -> Any:
            found = early(*args, **kw)
            if not self.paused:
                self.paused = True
                self.priced.set()
                assert self.go.wait(TIMEOUT)
            return found

        agent._price = counted_price  # type: ignore[method-assign]
        agent._price_early = paused_early  # type: ignore[method-assign]


def points(agent: Agent) -> int:
    return agent.balance(BORIS).available_points


def test_a_checkout_priced_early_commits_without_pricing_again(till: Agent) -> None:
    counted = Counted(till)
    first = till.checkout(receipt("e1", card=BORIS, redeemPoints=30, lines=BIG))
    assert first.redeemed_points == 30 and first.state == "CONFIRMED"
    held = till.hold(receipt("e2", card=BORIS, redeemPoints=20, lines=BIG))
    assert held.state == "HELD" and held.redeemed_points == 20
    assert counted.inside == 0  # nothing changed between pricing and commit
    # a retry is answered from what is stored, inside the transaction
    assert till.checkout(receipt("e1", card=BORIS, redeemPoints=30, lines=BIG)) == first
    assert counted.inside == 0


def test_a_checkout_on_the_same_card_between_pricing_and_commit_forces_a_new_price(
    till: Agent,
) -> None:
    counted = Counted(till, pause=True)
    before = points(till)
    assert before == 80
    out: dict[str, Any] = {}

    def first() -> None:
        out["a"] = till.checkout(receipt("a", card=BORIS, redeemPoints=-1, lines=BIG))

    thread = threading.Thread(target=first)
    thread.start()
    assert counted.priced.wait(TIMEOUT)  # "a" priced against 80 points, not committed
    b = till.checkout(receipt("b", card=BORIS, redeemPoints=-1, lines=BIG))
    assert b.redeemed_points == 80  # committed while "a" waited
    counted.go.set()
    thread.join(TIMEOUT)
    a = out["a"]
    # "a" saw that the card's points moved and was priced again inside its transaction
    assert counted.inside == 1
    # all that is left is what "b" earned (points count at once in this program)
    assert a.redeemed_points == b.earned_points and a.state == "CONFIRMED"
    assert a.redeemed_points + b.redeemed_points <= before + b.earned_points
    after = points(till)
    assert after == a.earned_points and after >= 0
    # one receipt, one journal entry and one outbox row each, in order
    rows = till._ledger.execute("SELECT seq, kind FROM journal ORDER BY seq").fetchall()
    assert rows == [(1, "CHECKOUT"), (2, "CHECKOUT")]
    payloads = [
        json.loads(row.payload) for row in ledger.outbox_batch(till._ledger, till.device_id, 100)
    ]
    assert [json.loads(p["resultJson"])["receiptId"] for p in payloads] == ["b", "a"]


def test_a_hold_placed_between_pricing_and_commit_forces_a_new_price(till: Agent) -> None:
    counted = Counted(till, pause=True)
    out: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: out.update(
            a=till.checkout(receipt("a", card=BORIS, redeemPoints=50, lines=BIG))
        )
    )
    thread.start()
    assert counted.priced.wait(TIMEOUT)
    held = till.hold(receipt("h", card=BORIS, redeemPoints=60, lines=BIG))
    assert held.redeemed_points == 60
    counted.go.set()
    thread.join(TIMEOUT)
    assert counted.inside == 1
    assert out["a"].redeemed_points == 20  # what the hold left
    assert till.confirm("h").redeemed_points == 60
    assert points(till) == 80 - 80 + out["a"].earned_points + held.earned_points


def test_many_checkouts_on_one_card_at_once_never_redeem_more_than_the_balance(
    till: Agent,
) -> None:
    errors: list[BaseException] = []
    results: list[CheckoutResult] = []
    start = threading.Barrier(6)

    def sell(n: int) -> None:
        try:
            start.wait(TIMEOUT)
            for k in range(3):
                rid = f"t{n}-{k}"
                results.append(till.checkout(receipt(rid, card=BORIS, redeemPoints=-1, lines=BIG)))
                results.append(till.hold(receipt(f"h{rid}", card=BORIS, redeemPoints=7, lines=BIG)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sell, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    assert not errors
    spent = sum(r.redeemed_points for r in results if r.state == "CONFIRMED")
    held = sum(r.redeemed_points for r in results if r.state == "HELD")
    earned = sum(r.earned_points for r in results if r.state == "CONFIRMED")
    # each checkout may spend what the earlier ones earned, never what is not there
    left = points(till)
    assert left == 80 - spent + earned
    assert left - held >= 0
    assert len({r.seq for r in results if r.state == "CONFIRMED"}) == 18
    assert till._ledger.execute("SELECT count(*) FROM outbox").fetchone()[0] == 18


@pytest.mark.parametrize(
    "qty", ["2", "2.000", "0.5", "0.500", "007", "10", "100", "0.001", "1.010", "000.100", "2.5"]
)
def test_the_request_digest_counts_a_quantity_by_value_as_before(qty: str) -> None:
    assert service._qty_text(qty) == decimal_text(Fraction(Decimal(qty)))


def test_readers_keep_small_page_caches(till: Agent) -> None:
    """Memory after many calls (issue 15): each reader connection's page cache is
    READER_CACHE_KIB, not SQLite's 2,000 KiB, and stays so after a snapshot switch."""
    assert service.READER_CACHE_KIB <= 512
    with till._read() as (view, conn):
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -service.READER_CACHE_KIB
        assert view.conn.execute("PRAGMA cache_size").fetchone()[0] == -service.READER_CACHE_KIB
    till.load_snapshot(snapshot(version=2, program={**PROGRAM, "holdTtlSeconds": 600}))
    with till._read() as (view, _):
        assert view.version == 2
        assert view.conn.execute("PRAGMA cache_size").fetchone()[0] == -service.READER_CACHE_KIB
    # the writer's connections too: the cache one reads little now, the ledger one appends
    assert till._cache.execute("PRAGMA cache_size").fetchone()[0] == -service.READER_CACHE_KIB
    assert till._ledger.execute("PRAGMA cache_size").fetchone()[0] == -service.WRITER_CACHE_KIB


def test_a_coupon_used_between_pricing_and_commit_is_not_used_twice(tmp_path: Path) -> None:
    sorry = {
        "id": "o-sorry",
        "kind": "AMOUNT_OFF",
        "skus": ["4601234000017"],
        "value": "2000",
        "couponRequired": True,
    }
    till = Agent(
        tmp_path / "data", "till-1", clock=ManualClock(datetime(2026, 11, 23, 7, 15, tzinfo=UTC))
    )
    try:
        till.load_snapshot(
            snapshot(offers=[sorry], coupons=[{"code": "APP555", "offerId": "o-sorry"}])
        )
        counted = Counted(till, pause=True)
        out: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: out.update(a=till.checkout(receipt("a", card=BORIS, coupons=["APP555"])))
        )
        thread.start()
        assert counted.priced.wait(TIMEOUT)  # "a" priced with the coupon, not committed
        b = till.checkout(receipt("b", card=BORIS, coupons=["APP555"]))
        assert b.to_json()["coupons"] == [{"code": "APP555", "status": "APPLIED", "reason": ""}]
        counted.go.set()
        thread.join(TIMEOUT)
        a = out["a"]
        assert counted.inside == 1
        assert a.to_json()["coupons"] == [
            {"code": "APP555", "status": "REJECTED", "reason": "ALREADY_USED"}
        ]
        assert a.discount_minor == 0 < b.discount_minor
        uses = till._ledger.execute("SELECT receipt_id FROM coupon_uses").fetchall()
        assert uses == [("b",)]
    finally:
        till.close()
