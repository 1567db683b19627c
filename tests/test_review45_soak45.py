"""Review 45 (soak45): what the long-running soaks found after ask45's hold/release change.

The three-till PostgreSQL soak (tests/test_review33_store33.py, seed 45003, beside two CPU
hogs) sold one one-time coupon code at two tills at once, both priced ONLINE with the code
APPLIED, and the hub recorded a conflict at the second sale's ingest (CONTRACT §13: a code
the hub authorised online is used once). The hub's `hold_coupons` read "used?" and "held?"
in two statements of one READ COMMITTED transaction: the other till's sale, ingested
between them, moved the code from `coupon_holds` to `coupon_uses` (one transaction), so
the first statement saw no use and the second no hold, and the code was held for a second
receipt. Here the ingest is made to land exactly there (a real PostgreSQL database, the
real ingest committed from another thread while the authorisation's transaction is open);
the fix reads the uses again after holding the code.

Also pinned: the long40 walk's bet that no hold lives at the hub longer than
`holdTtlSeconds` + 60 s is about receipts' holds; an unsent spend the hub holds for a till
(`seq:N`) is held again at each request that still lists it unsent, its expiry moved, its
`created_at` kept (bench/pgkill.py reads those apart).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import import_doc, sample_master_data

from .test_coupons import COUPONS, NOW, SORRY, outbox, receipt, verdicts

CODE = "SORRY7K2Q9"


def _postgres_hub(pg_cluster: Any) -> Any:
    pytest.importorskip("psycopg")
    from tillpoint.sync.hub_postgres import PostgresHubStore

    hub = PostgresHubStore(pg_cluster.new_database(), migrate_schema=True)
    import_doc(hub, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
    hub.publish(NOW, 7 * 86400.0)
    return hub


@pytest.mark.timeout(120)
def test_a_code_whose_sale_is_ingested_mid_authorisation_is_not_held_for_a_second_receipt(
    tmp_path: Path, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §13: till-1 holds the code online and sells it; its sale reaches the hub
    while till-2's authorisation of the same code is between reading the uses and reading
    the holds: till-2 is told the code is used (before: held for it too, both sales
    APPLIED online, a conflict at the hub)."""
    from tillpoint.sync import hub_postgres

    hub = _postgres_hub(pg_cluster)
    till = Agent(tmp_path / "till-1", "till-1")
    try:
        till.load_snapshot(hub.snapshot_doc(1, 0))
        sold = till.checkout(receipt_from_json(receipt("s0", CODE)))
        assert verdicts(sold) == [(CODE, "APPLIED", "")]
        sale = outbox(tmp_path / "till-1")
    finally:
        till.close()
    assert hub.hold_coupons("till-1", "s0", "c-1", [CODE], NOW, 600) == []  # till-1's hold

    original = hub_postgres.PgTx.coupon_first_use
    main = threading.get_ident()
    ingested: list[Any] = []

    def first_use_then_ingest(self: Any, code: str) -> Any:
        found = original(self, code)
        if threading.get_ident() == main and not ingested:
            # till-1's sale committed at the hub right after this statement (another
            # connection, its own transaction): the code moves from held to used
            worker = threading.Thread(
                target=lambda: ingested.append(hub.ingest("till-1", "", sale, NOW))
            )
            worker.start()
            worker.join(60)
            assert ingested, "the ingest did not finish"
        return found

    monkeypatch.setattr(hub_postgres.PgTx, "coupon_first_use", first_use_then_ingest)
    try:
        used = hub.hold_coupons("till-2", "s1", "c-2", [CODE], NOW, 600)
        monkeypatch.undo()
        assert ingested
        assert used == [CODE]  # till-2 prices the receipt without it
        with hub.read_tx() as tx:
            assert not tx.coupon_held(CODE)  # nothing held for till-2's receipt
            assert tx.coupon_first_use(CODE) == ("till-1", "s0")
    finally:
        monkeypatch.undo()
        hub.close()


def test_a_code_held_for_a_receipt_is_refused_to_another_on_either_hub_store(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    """CONTRACT §13 (the rule the fix keeps, on SQLite and PostgreSQL): a code held for one
    receipt, then used by its sale, is refused to another receipt, and held again for its
    own receipt's request."""
    hub = hub_store_factory()
    import_doc(hub, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
    hub.publish(NOW, 7 * 86400.0)
    assert hub.hold_coupons("till-1", "s0", "c-1", [CODE], NOW, 600) == []
    assert hub.hold_coupons("till-2", "s1", "c-2", [CODE], NOW, 600) == [CODE]
    assert hub.hold_coupons("till-1", "s0", "c-1", [CODE], NOW, 600) == []  # its own again
    later = datetime(2026, 11, 23, 6, 1, tzinfo=UTC)
    assert hub.hold_coupons("till-2", "s1", "c-2", [CODE, "APP555"], later, 600) == [CODE]


def test_an_unsent_spend_held_at_the_hub_is_held_again_while_the_till_lists_it(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §9: a till's spend the hub has not received is held for the other tills
    until its transaction arrives; each request that still lists it unsent holds it again,
    its expiry `hold_ttl_s` from that request and its `created_at` the first. So such a
    hold (`seq:N`) may live past `holdTtlSeconds` + 60 s from its `created_at` (long40's
    walk, seed 45122 with 10 s holds: 72.3 s), which is not a receipt's hold left behind."""
    from tillpoint.sync.hub_store import Unsynced

    hub = hub_store_factory()
    import_doc(hub, sample_master_data())
    hub.publish(NOW, 7 * 86400.0)
    spend = [Unsynced(7, "r-offline", -30, NOW.isoformat(), 30)]
    first, second = NOW, datetime(2026, 11, 23, 6, 2, tzinfo=UTC)  # 120 s apart
    for now in (first, second):
        hub.authorise("till-1", f"r-{now.minute}", "c-1", 0, now, spend, now, 70)
    with hub.read_tx() as tx:
        rows = [(rid, pts) for dev, rid, pts, _ in tx.active_holds_at("c-1") if dev == "till-1"]
    assert rows == [("seq:7", 30)]
    created, expires = _hold_times(hub, "till-1", "seq:7")
    assert created == first
    assert expires == datetime(2026, 11, 23, 6, 3, 10, tzinfo=UTC)  # the second + 70 s


def _hold_times(hub: Any, device: str, key: str) -> tuple[datetime, datetime]:
    with hub.read_tx() as tx:
        row = tx.execute(
            "SELECT created_at, expires_at FROM holds WHERE device_id = ? AND receipt_id = ?",
            (device, key),
        ).fetchone()
    return datetime.fromisoformat(row[0]), datetime.fromisoformat(row[1])
