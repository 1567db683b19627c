"""Review 45 (pgrace45): the PostgreSQL hub's check-then-write sequences, past soak45's.

On a PostgreSQL hub (READ COMMITTED) a write transaction that reads, decides, then writes
can decide on a state another transaction changes between two of its statements, unless
a lock taken first (an advisory lock, a unique key the insert meets first) orders them.
docs/DECISIONS.md "Review 45 (pgrace45)" lists each such sequence with its guard. One had
none: `hold_coupons`' `Superseded` check (review 39, grant39: an AuthorizeRedemption that
came before the receipt's newest hold writes nothing) read the receipt's newest hold
stamp, then dropped the receipt's coupon holds and held its own codes. A newer call for
the same receipt committing between the two (a till asking again, another coupon
scanned, after its first call timed out) had its holds dropped by the older call: a code
the till was told APPLIED online was held for no receipt, free for another till to hold
and use too. Here the newer call is made to commit exactly there (a real PostgreSQL
database, the one seam a wrapper around `PgTx.newest_hold_stamp`); the fix takes the
receipt's advisory lock before the check.

Also pinned on both hub stores, without the seam: the older call coming after the newer
one's holds is refused (`Superseded`) and leaves them as they are.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from tillpoint.agent.ledger import utc_text
from tillpoint.sync.hub_rules import Superseded
from tillpoint.sync.loopback import import_doc, sample_master_data

from .test_coupons import COUPONS, NOW, SORRY

CODE = "SORRY7K2Q9"
OTHER = "APP555"
LATER = NOW + timedelta(seconds=5)  # when the till's second call for the receipt came


def _hub(store: Any) -> Any:
    import_doc(store, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
    store.publish(NOW, 7 * 86400.0)
    return store


def _coupon_holds(hub: Any, device: str, receipt: str) -> list[tuple[str, str]]:
    with hub.read_tx() as tx:
        rows = tx.execute(
            "SELECT code, created_at FROM coupon_holds WHERE device_id = ? AND receipt_id = ?"
            " ORDER BY code",
            (device, receipt),
        ).fetchall()
    return [(str(code), str(at)) for code, at in rows]


def _lock_waits(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return 0 if row is None else int(row[0])


@pytest.mark.timeout(120)
def test_a_newer_coupon_authorisation_committed_mid_check_keeps_its_holds(
    pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §13 and review 39 (grant39): till-1's first AuthorizeRedemption of receipt
    r1 (code SORRY7K2Q9, came at NOW) is between its `Superseded` check and its writes
    when its second one (SORRY7K2Q9 and APP555, came 5 s later) commits: both codes stay
    held for r1 as the second call answered (before: the first call dropped them and held
    SORRY7K2Q9 alone, APP555 APPLIED online at till-1 and free for any other till)."""
    pytest.importorskip("psycopg")
    from tillpoint.sync import hub_postgres

    url = pg_cluster.new_database()
    hub = _hub(hub_postgres.PostgresHubStore(url, migrate_schema=True))
    original = hub_postgres.PgTx.newest_hold_stamp
    main = threading.get_ident()
    newer: list[Any] = []
    worker: list[threading.Thread] = []

    def stamp_then_newer_call(self: Any, device_id: str, receipt_id: str) -> Any:
        found = original(self, device_id, receipt_id)
        if threading.get_ident() == main and not worker:

            def second_call() -> None:
                newer.append(
                    hub.hold_coupons("till-1", "r1", "", [CODE, OTHER], LATER, 600, arrived=LATER)
                )

            worker.append(threading.Thread(target=second_call))
            worker[0].start()
            # the second call commits here, or (a lock taken before the check) waits for
            # this transaction's: either way, on with the first call
            deadline = time.monotonic() + 60
            while worker[0].is_alive() and not _lock_waits(url):
                assert time.monotonic() < deadline, "the second call neither ended nor waited"
                worker[0].join(0.05)
        return found

    monkeypatch.setattr(hub_postgres.PgTx, "newest_hold_stamp", stamp_then_newer_call)
    try:
        try:
            first = hub.hold_coupons("till-1", "r1", "", [CODE], NOW, 600, arrived=NOW)
        except Superseded:
            first = None  # refused, as a call that came before the receipt's hold is
        worker[0].join(60)
        monkeypatch.undo()
        assert not worker[0].is_alive()
        assert first in ([], None)
        assert newer == [[]]  # the second call: both codes held for r1
        held = _coupon_holds(hub, "till-1", "r1")
        assert held == [(OTHER, utc_text(LATER)), (CODE, utc_text(LATER))]
    finally:
        monkeypatch.undo()
        hub.close()


def test_an_older_coupon_authorisation_after_a_newer_one_writes_nothing(
    hub_store_factory: Any,
) -> None:
    """Review 39 (grant39) for a receipt with coupons and no points, on either hub store:
    the receipt's coupon holds placed by a call that came later stay as they are when an
    older call for the receipt arrives after them (`Superseded`)."""
    hub = _hub(hub_store_factory())
    assert hub.hold_coupons("till-1", "r1", "", [CODE, OTHER], LATER, 600, arrived=LATER) == []
    with pytest.raises(Superseded):
        hub.hold_coupons("till-1", "r1", "", [CODE], NOW, 600, arrived=NOW)
    assert [code for code, _ in _coupon_holds(hub, "till-1", "r1")] == [OTHER, CODE]
    # another receipt is told both codes are held
    assert hub.hold_coupons("till-2", "r9", "", [CODE, OTHER], LATER, 600) == [CODE, OTHER]
