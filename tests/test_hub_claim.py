"""A redemption hold is claimed in one short step (both stores: a real SQLite file and a
real PostgreSQL database): the spendable points are read without the customer's lock,
and the hold is claimed under it only while the customer's ledger mark has not moved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tillpoint.agent.ledger import utc_text
from tillpoint.sync.hub_rules import HubRules
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
CARD = "2770000000017"  # c-1's, 1200 points


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(NOW, 7 * 86400.0)
    return store


def tx(
    device: str, seq: int, customer: str, available: int, *, card: str = "", pending: int = 0
) -> TxIn:
    due = (NOW + timedelta(days=3)).isoformat() if pending else ""
    return TxIn(
        device,
        seq,
        "CHECKOUT",
        NOW.isoformat(),
        customer,
        card,
        json.dumps({"receiptId": f"{device}-{seq}"}),
        json.dumps({"earnedPoints": 7}),
        available,
        pending,
        due,
    )


def claim(store: Any, receipt: str, points: int, inputs: Any) -> Any:
    now = datetime.now(UTC)  # holds live in real time (`balance` counts them so)
    return store.claim_hold(
        "till-a",
        receipt,
        "c-1",
        points,
        1200,
        inputs.cards,
        inputs.mark,
        f"hold-{receipt}",
        utc_text(now),
        utc_text(now + timedelta(minutes=15)),
    )


def test_a_hold_is_claimed_only_while_the_ledger_mark_has_not_moved(store: Any) -> None:
    inputs = store.live_inputs("c-1")
    assert inputs.cards == [CARD]
    store.ingest("till-b", "", [tx("till-b", 1, "c-1", -100)], NOW)  # the mark moves
    assert claim(store, "r-1", 500, inputs) is None
    assert store.balance("c-1", NOW).held == 0  # nothing was held
    store.ingest("till-b", "", [tx("till-b", 2, "", 5, card=CARD)], NOW)  # its card's too
    fresh = store.live_inputs("c-1")
    assert fresh.mark != inputs.mark
    store.ingest("till-b", "", [tx("till-b", 3, "", 5, card=CARD)], NOW)
    assert claim(store, "r-1", 500, fresh) is None
    fresh = store.live_inputs("c-1")
    assert claim(store, "r-1", 500, fresh) == (500, 1200, "hold-r-1")
    assert claim(store, "r-2", 900, fresh) == (700, 700, "hold-r-2")  # r-1's 500 held
    assert claim(store, "r-1", 100, fresh) == (100, 500, "hold-r-1")  # r-1 replaced
    assert store.balance("c-1", NOW).held == 800
    store.publish(NOW, 7 * 86400.0)  # a new version moves the mark too
    assert claim(store, "r-3", 1, fresh) is None


def test_the_stores_read_of_live_inputs_is_the_rules_own(store: Any) -> None:
    """A store's `live_inputs` (PostgreSQL's: one statement) is what the rules' own
    reading over the primitives gives; and `authorise` grants from it."""
    store.ingest(
        "till-b",
        "",
        [
            tx("till-b", 1, "c-1", -100),
            tx("till-b", 2, "c-1", 0, pending=40),
            tx("till-b", 3, "", 9, card=CARD),
            tx("till-b", 4, "c-2", 30),
        ],
        NOW,
    )
    mine = store.live_inputs("c-1")
    rules = HubRules.live_inputs(store, "c-1")
    assert (mine.version, mine.customer, mine.program, mine.cards, mine.mark) == (
        rules.version,
        rules.customer,
        rules.program,
        rules.cards,
        rules.mark,
    )
    assert sorted(mine.moves, key=repr) == sorted(rules.moves, key=repr)
    assert store.live_inputs("nobody").customer is None
    got = store.authorise("till-a", "r-9", "c-1", 5000, NOW, [], NOW, 900.0)
    assert got.authorised == got.live_balance == store.balance("c-1", NOW).available
