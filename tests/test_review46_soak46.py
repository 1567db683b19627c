"""Review 46 (soak46): what the soaks with new seeds found, pinned.

Session 46 ran the project's soaks and long differentials with new seeds (store33's
three-or-more tills on a PostgreSQL hub, long40's walk of kills with more tills, soak22's
moving clock, difflong and difflong_hub, long32's doors; docs/DECISIONS.md "Review 46
(soak46)"). No failure was the product's; the harness bets are mended, and these tests
pin what the failures showed the product doing right:

- the long-lived agent counts another open hold's spending in a quote's balance (the
  points leave the batch they will at its Confirm, even for a quote dated before it) and
  stops counting it the moment it expires, whether or not the hold sweep has run: at
  each of those moments it answers as a fresh agent on the same data (CONTRACT §5, §11);
- a sale ingested by the hub between two tills' grants gives the second the points it
  earned (store33 seed 46013's "over-grant" was the harness's bound, which left them out);
- soak22's moving clock: two answers that differ with a time of the ledger between
  their moments (a batch activating) are told apart (`bench.soaktime.crossed`);
- the harness reads a hold's expiry from the copy's ledger (`held_expiries`,
  `expiry_within`), so a hold it did not record (a retry's) or a fresh answer late on a
  loaded machine makes the comparison skipped, not a mismatch.

Real parts: a real `Agent` behind its HTTP interface (review 30's `Till`), real SQLite
data directories copied with SQLite's backup API, the hub's store on a real SQLite file
and a real PostgreSQL database; the clock is the test's (no sleeping).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.loopback import import_doc, sample_master_data

from bench import difflong as dl

from .conftest import SteppingClock
from .test_review30_memo30 import Till

ANNA = "2770000000017"
MILK, CHEESE = "4601234000017", "4601234000055"


def _receipt(rid: str, at: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": at,
        "card": ANNA,
        "lines": [{"sku": CHEESE, "qty": "2", "priceMinor": 45000}],
        "redeemPoints": 0,
    }
    body.update(changes)
    return body


def test_another_open_holds_spending_leaves_a_quotes_balance_when_it_expires(
    tmp_path: Path,
) -> None:
    """CONTRACT §5, §11 (difflong seed 46201's shape): a sale earns a batch; a Hold dated
    after it redeems from that batch; a quote dated before both shows the batch pending
    less the held spending, as a fresh agent does; once the hold's TTL (3 s) has passed
    (nothing swept yet) the same quote shows the whole batch pending again, as a fresh
    agent does; and so after the hold's sweep."""
    clock = SteppingClock(datetime(2026, 12, 6, 9, 41, 0, tzinfo=UTC))
    till = Till(tmp_path, clock, copy.deepcopy(dl.SNAPSHOT))
    try:
        sold = till.compare("checkout", _receipt("r-sale", "2026-11-26T17:00:00+03:00"))
        assert sold[0] == "ok", sold
        earned = int(sold[1]["earnedPoints"])
        assert earned > 100, sold
        held = till.compare(
            "hold", _receipt("r-held", "2026-11-30T18:59:00+03:00", redeemPoints=100)
        )
        assert held[0] == "ok" and held[1]["state"] == "HELD", held
        spent = int(held[1]["redeemedPoints"])
        assert spent > 0, held
        early = _receipt("r-early", "2026-11-22T13:00:00+03:00")
        early["lines"] = [{"sku": MILK, "qty": "1", "priceMinor": 8990}]
        during = till.compare("quote", early)
        clock.passes(dl.PROGRAM_TTL + 0.5)  # the hold has run out; no sweep has run
        after = till.compare("quote", early)
        swept = till.compare("cancel", {"receiptId": "r-held"})  # expired: answered CANCELLED
        again = till.compare("quote", early)
        till.check()  # each answer a fresh agent's on the data as it was
        assert swept[0] == "ok" and swept[1]["state"] == "CANCELLED", swept  # CONTRACT §11
        figures = [doc[1]["balance"] for doc in (during, after, again)]
        total = [int(f["availablePoints"]) + int(f["pendingPoints"]) for f in figures]
        # counted while open (the points leave their batch at its own time), not after
        assert total == [total[1] - spent, total[1], total[1]], (figures, earned, spent)
        assert figures[1] == figures[2], figures
    finally:
        till.close()


def test_the_differentials_read_the_holds_expiry_from_the_copys_ledger(tmp_path: Path) -> None:
    """bench/difflong.py (review 46): `held_expiries` lists the open holds' expiries of a
    copied data directory (not a closed hold's), and `expiry_within` says whether one
    falls between the copy and the fresh answer, a second either side."""
    clock = SteppingClock(datetime(2026, 12, 6, 9, 41, 0, tzinfo=UTC))
    till = Till(tmp_path, clock, copy.deepcopy(dl.SNAPSHOT))
    try:
        for rid in ("r-1", "r-2"):
            got = till.long("hold", _receipt(rid, "2026-11-30T18:59:00+03:00"))
            assert got[0] == "ok" and got[1]["state"] == "HELD", got
        assert till.long("cancel", {"receiptId": "r-2"})[1]["state"] == "CANCELLED"
        copy_dir = tmp_path / "copy"
        dl.copy_state(till.data, copy_dir)
    finally:
        till.close()
    expiries = dl.held_expiries(copy_dir)
    due = clock.t + timedelta(seconds=dl.PROGRAM_TTL)
    assert [abs((at - due).total_seconds()) < 0.01 for at in expiries] == [True], expiries
    second = timedelta(seconds=1)
    assert dl.expiry_within(expiries, clock.t, due)
    assert dl.expiry_within(expiries, due + second / 2, due + 5 * second)  # a second's margin
    assert not dl.expiry_within(expiries, clock.t, due - 2 * second)
    assert not dl.expiry_within(expiries, due + 2 * second, due + 9 * second)
    assert not dl.expiry_within([], clock.t, due)


def test_the_moving_clock_soak_reads_the_ledgers_times_between_two_answers(
    tmp_path: Path,
) -> None:
    """bench/soaktime.py (review 46, soak22 seed 46402): a batch earned at 00:00:01
    activates at 00:00:01 the next day, the moment the soak's calls of that day are
    made; `crossed` finds it (and the batch's expiry) between two answers' moments, a
    second either side, and nothing far from them."""
    from bench.soaktime import crossed

    clock = SteppingClock(datetime(2026, 11, 28, 21, 0, 1, tzinfo=UTC))
    till = Till(tmp_path, clock, copy.deepcopy(dl.SNAPSHOT))
    try:
        sold = till.long("checkout", _receipt("s-126", "2026-11-29T00:00:01+03:00"))
        assert sold[0] == "ok" and int(sold[1]["earnedPoints"]) > 0, sold
        copy_dir = tmp_path / "copy"
        dl.copy_state(till.data, copy_dir)
    finally:
        till.close()
    active = datetime(2026, 11, 29, 21, 0, 1, tzinfo=UTC)  # activationDelayDays 1
    ms = timedelta(milliseconds=1)
    assert crossed(copy_dir, active - 100 * ms, active + 200 * ms)
    assert crossed(copy_dir, active + 1500 * ms, active + 3000 * ms) is False
    assert crossed(copy_dir, active - 3000 * ms, active - 1500 * ms) is False
    gone = active + timedelta(days=dl.PROGRAM["pointsLifetimeDays"])
    assert crossed(copy_dir, gone - 100 * ms, gone + 100 * ms)


@pytest.mark.parametrize("hub_store_factory", ["sqlite", "postgresql"], indirect=True)
def test_a_sale_ingested_between_two_grants_gives_the_second_its_earned_points(
    hub_store_factory: Any,
) -> None:
    """CONTRACT §9 (store33 seed 46013, read as the harness's bound): till-a's receipt holds
    all of c-1's 1,200 points; another receipt asking then is granted nothing; till-a's
    sale (spending 1,200, earning 49) is ingested, settling its hold; a receipt asking
    now is granted the 49 it earned, no more: the two grants together exceed what c-1 had
    before by what the first sale earned, and the hub never held more than c-1 had. On
    both hub stores (a real SQLite file, a real PostgreSQL database)."""
    from .test_hub_claim import NOW, tx

    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(NOW, 7 * 86400.0)

    def ask(device: str, receipt: str, points: int) -> int:
        now = datetime.now(UTC)  # holds live in real time
        return int(store.authorise(device, receipt, "c-1", points, NOW, [], now, 900).authorised)

    assert ask("till-a", "till-a-1", 1200) == 1200
    assert ask("till-b", "till-b-1", 500) == 0  # all of c-1's points held
    store.ingest("till-a", "", [tx("till-a", 1, "c-1", -1200 + 49)], NOW)
    assert store.balance("c-1", NOW).held == 0  # the sale settled its hold
    assert ask("till-b", "till-b-1", 500) == 49
    assert store.balance("c-1", NOW).held == 49
