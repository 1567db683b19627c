"""Review 47 (review47): a second reading of session 47's hub changes (pg47's ingest:
`lock_settling` before anything is read, the batch's coupon rows written after its
transactions in code order). Real parts: the reference hub's stores on SQLite and on a
throwaway PostgreSQL cluster.

- A pushed sale whose receiptId holds a NUL or a lone UTF-16 surrogate (an earlier
  release's till took one) is set aside alone as REJECTED on either store (review 31,
  review 32), the rest of its batch stored. pg47's `lock_settling` sent the receiptId to
  PostgreSQL (the receipts whose holds the batch may settle) before `settle` refused it:
  the whole push failed UNAVAILABLE ("PostgreSQL text fields cannot contain NUL (0x00)
  bytes"), and the till's outbox was blocked behind it for good. A customer id with a
  NUL went to `lock_customers` the same way (before session 47 too).
- The coupon rows of one batch, now written after its transactions in code order, are
  the rows the batch wrote one transaction at a time: a code's first use in the batch's
  order is its use, a later use of it by another receipt a conflict, a REJECTED sale's
  codes no use at all, the codes gone from the next snapshot (pinned on both stores).
- `main(argv)` hands back the collector's threshold after a `run` that served, and a
  caller that had frozen objects itself keeps its freeze (the lead's "a caller's own
  freeze stays": nothing of the caller's thawed), through a real process serving until
  SIGTERM.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .test_hub_claim import tx
from .test_review46_pgrace46 import _hub
from .test_review47_lead47 import collector_after_a_run


def _sale(seq: int, customer: str, request_json: str, codes: tuple[str, ...] = ()) -> Any:
    coupons = [{"code": code, "status": "APPLIED"} for code in codes]
    return replace(
        tx("till-a", seq, customer, 0),
        request_json=request_json,
        result_json=json.dumps({"earnedPoints": 7, "coupons": coupons}),
    )


def test_a_sale_with_an_unstorable_receipt_or_customer_is_rejected_alone(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §9, §10: a transaction the hub cannot store is set aside (REJECTED) and
    the batch goes on; the push never fails for it (the till would send it for good)."""
    store = _hub(hub_store_factory())
    batch = [
        _sale(1, "c-1", '{"receiptId": "r\\u0000nul"}'),  # as an earlier release sent it
        _sale(2, "c-1", '{"receiptId": "r\\ud800lone"}'),
        _sale(3, "c\x00x", '{"receiptId": "r-3"}'),
        _sale(4, "c-1", '{"receiptId": "r-4"}'),
    ]
    done = store.ingest("till-a", "b-1", batch, datetime.now(UTC))
    assert [r.outcome for r in done.results] == ["REJECTED", "REJECTED", "REJECTED", "STORED"]
    assert "NUL" in done.results[0].reason and "surrogate" in done.results[1].reason
    assert done.acked_through == 4
    assert [t.receipt_id for t in store.transactions("till-a")] == ["r-4"]
    again = store.ingest("till-a", "b-1", batch, datetime.now(UTC))  # the answer replayed
    assert again.replayed and [r.outcome for r in again.results] == [
        r.outcome for r in done.results
    ]


def _coupon_state(store: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Any]:
    with store.read_tx() as t:
        uses = t.execute(
            "SELECT code, device_id, seq, receipt_id FROM coupon_uses ORDER BY code"
        ).fetchall()
        conflicts = t.execute(
            "SELECT code, device_id, seq, receipt_id FROM coupon_conflicts ORDER BY code, seq"
        ).fetchall()
        draft = t.execute(
            "SELECT key, doc FROM draft WHERE kind = 'coupon' ORDER BY key"
        ).fetchall()
    return (
        [tuple(r) for r in uses],
        [tuple(r) for r in conflicts],
        [tuple(r) for r in draft],
    )


def test_a_batchs_coupon_rows_are_those_of_its_transactions_one_by_one(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §13: r-1 uses K2 then K1, r-2 uses K1 again (a code used twice in one
    batch: the later use a conflict, the sale stands), r-3 is REJECTED (its codes are no
    use), r-4 uses K2 twice in its own result (one use), r-5 repeats r-1's request under
    another seq (a DUPLICATE: no second use)."""
    store = _hub(hub_store_factory())
    batch = [
        _sale(1, "c-1", '{"receiptId": "r-1"}', ("K2", "K1")),
        _sale(2, "c-2", '{"receiptId": "r-2"}', ("K1",)),
        replace(_sale(3, "c-1", '{"receiptId": "r-3"}', ("K3",)), kind="NOPE"),
        _sale(4, "c-1", '{"receiptId": "r-4"}', ("K4", "K4")),
        _sale(5, "c-1", '{"receiptId": "r-1"}', ("K2", "K1")),
    ]
    done = store.ingest("till-a", "b-1", batch, datetime.now(UTC))
    assert [r.outcome for r in done.results] == [
        "STORED",
        "STORED",
        "REJECTED",
        "STORED",
        "DUPLICATE",
    ]
    uses, conflicts, draft = _coupon_state(store)
    assert uses == [
        ("K1", "till-a", 1, "r-1"),
        ("K2", "till-a", 1, "r-1"),
        ("K4", "till-a", 4, "r-4"),
    ]
    assert conflicts == [("K1", "till-a", 2, "r-2")]
    assert draft == [("K1", None), ("K2", None), ("K4", None)]  # gone from the next snapshot


def test_lock_settling_takes_the_locks_of_the_devices_active_holds_of_its_keys(
    pg_url: str,
) -> None:
    """DECISIONS "Review 47 (pg47)": an ingest's customer locks are its sales' and those
    of the device's ACTIVE holds of its keys (a receipt, a `seq:N`), and no one else's:
    not a SETTLED hold's, not another device's, and nothing for empty lists. Read from
    another session while the ingest's transaction is open (`pg_try_advisory_xact_lock`
    fails on a key held)."""
    import psycopg
    from tillpoint.sync.hub_postgres import PostgresHubStore

    store = PostgresHubStore(pg_url, migrate_schema=True)
    now = datetime.now(UTC).isoformat()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for n, (device, receipt, customer, state) in enumerate(
                [
                    ("till-a", "seq:3", "c-2", "ACTIVE"),  # an unsent sale's spend
                    ("till-a", "r-9", "c-3", "ACTIVE"),  # held for c-3, sold for c-1
                    ("till-a", "r-8", "c-4", "SETTLED"),
                    ("till-b", "r-9", "c-5", "ACTIVE"),  # another till's receipt r-9
                    ("till-a", "r-7", "c-6", "ACTIVE"),  # not among the keys
                ]
            ):
                conn.execute(
                    "INSERT INTO holds VALUES (%s, %s, %s, %s, 5, %s, %s, %s, '')",
                    (f"h{n}", device, receipt, customer, now, now, state),
                )

        def free(customer: str) -> bool:
            with psycopg.connect(pg_url) as other:  # a transaction: its lock goes at its end
                row = other.execute(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"customer:{customer}",),
                ).fetchone()
                return bool(row and row[0])

        with store.write_tx() as tx:
            tx.lock_settling([], "till-a", [])  # nothing to lock: no error
        with store.write_tx() as tx:
            tx.lock_settling(["c-1"], "till-a", ["r-8", "r-9", "seq:3"])
            held = {c: not free(c) for c in ("c-1", "c-2", "c-3", "c-4", "c-5", "c-6")}
        assert held == {
            "c-1": True,
            "c-2": True,
            "c-3": True,
            "c-4": False,
            "c-5": False,
            "c-6": False,
        }
        assert free("c-1") and free("c-3")  # gone with the transaction
    finally:
        store.close()


FROZEN_CALLER = """
import gc, json, sys
from tillpoint.agent.cli import main
kept = [object() for _ in range(10)]
gc.freeze()  # the caller's own
gc.set_threshold(500, 7, 9)
before = [gc.get_threshold(), gc.get_freeze_count()]
code = main(sys.argv[1:])
print(json.dumps({"code": code, "before": before,
                  "after": [gc.get_threshold(), gc.get_freeze_count()]}))
"""


@pytest.mark.timeout(120)
def test_a_run_under_main_argv_leaves_a_callers_own_freeze_frozen(tmp_path: Path) -> None:
    """Session 47 (lead), DECISIONS "Review 47 (review47)": the threshold comes back; the
    caller's frozen objects stay frozen (the run's freeze on top stays with them)."""
    state = collector_after_a_run(tmp_path, FROZEN_CALLER)
    assert state["before"][0] == state["after"][0] == [500, 7, 9]
    assert state["after"][1] >= state["before"][1] > 0  # nothing of the caller's thawed
