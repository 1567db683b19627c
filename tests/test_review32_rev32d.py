"""Review 32 (rev32d): the till and the hub of different releases, after review 32's sync
changes (docs/CONTRACT.md §9, §10, §11; docs/PROTOCOL.md; docs/HUB.md). A chain upgrades
its hub and its tills at different times: a till of the release before (4362ba0, which
sets a seq taken aside for good) against this hub, this till against that hub, each
upgraded in place; and the hub's "resolved" set-aside entries (hub32b) met by rev32a's
refunds numbered again with their sale. Real parts: the hub's store on SQLite and on
PostgreSQL (a throwaway cluster), `tillpoint` processes of both releases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty hub store (the program defaults), SQLite or PostgreSQL."""
    if request.param == "sqlite":
        from tillpoint.sync.hub_sqlite import SqliteHubStore

        made: Any = SqliteHubStore(tmp_path / "hub.db")
    else:
        from tillpoint.sync.hub_postgres import PostgresHubStore

        url = request.getfixturevalue("pg_cluster").new_database()
        made = PostgresHubStore(url, migrate_schema=True)
    import_doc(made, sample_master_data())
    yield made
    made.close()


def tx(seq: int, receipt_id: str, refund_id: str = "") -> TxIn:
    """A sale of till-x (a refund of `receipt_id` when `refund_id` is given)."""
    request: dict[str, Any] = {"receiptId": receipt_id}
    if refund_id:
        request["refundId"] = refund_id
    return TxIn(
        "till-x",
        seq,
        "REFUND" if refund_id else "CHECKOUT",
        NOW.isoformat(),
        "c-1",
        "",
        json.dumps(request),
        json.dumps({"seq": seq}),
        -1 if refund_id else 1,
        0,
        "",
    )


def test_a_refund_numbered_again_with_its_sale_reads_resolved_once_stored(store: Any) -> None:
    """CONTRACT §9 (review 32's decisions: rev32a's refund in its sale's batch, hub32b's
    resolved entries). The hub holds seq 1 of till-x. The clone's r-a (seq 1, taken) and
    its refund f-a (seq 2, free) arrive in one batch: both are answered CONFLICT
    `seqTaken`, both numbered again by the till (3, 4) and stored. Both set-aside entries
    are seqs taken and read resolved, as 3 and 4; the refund's was neither, and stayed to
    be reviewed for ever although it was stored."""
    store.ingest("till-x", "", [tx(1, "r-0")], NOW)
    first = store.ingest("till-x", "", [tx(1, "r-a"), tx(2, "r-a", "f-a")], NOW)
    assert [(r.outcome, r.seq_taken) for r in first.results] == [("CONFLICT", True)] * 2
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert [(rows[s]["seqTaken"], rows[s]["resolved"]) for s in (1, 2)] == [(True, False)] * 2

    again = store.ingest("till-x", "", [tx(3, "r-a"), tx(4, "r-a", "f-a")], NOW)
    assert [r.outcome for r in again.results] == ["STORED", "STORED"]
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert [(rows[s]["resolved"], rows[s]["storedAsSeq"]) for s in (1, 2)] == [
        (True, 3),
        (True, 4),
    ]
