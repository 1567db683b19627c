"""Review 48 (mut48b): rules of refunds (§6), expiring points (§16) and identification
(§4) that a mutation of their code went past the suite's tests of them unnoticed.

Each test pins the contract's rule with figures worked out by hand from docs/CONTRACT.md
(the comments show the sums), and names the mutant it kills (docs/DECISIONS.md,
"Review 48 (mut48b)"). The pure rules are called as the till calls them; the rest goes
through a real `Agent` on real SQLite files.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from tillpoint.agent import ledger as ledger_db
from tillpoint.agent.errors import Refused
from tillpoint.agent.expiry import Movement, Wallet, wallet_of
from tillpoint.agent.refunds import SoldLine, apply_refund
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, receipt_time, snapshot

MILK = "4601234000017"
BORIS = "2770000000024"  # c-b, base tier


# ---------------------------------------------------------------- §6: refunds


def test_a_return_past_what_is_left_of_a_line_goes_on_to_the_next_line_of_that_sku() -> None:
    """§6: "A returned (sku, qty) is taken from the receipt's first line with that SKU that
    still has qty left, then the next." Line 1 (qty 2, 10 redeemed, 6 earned) had 1
    returned before; 2 more are returned: 1 from line 1, 1 from line 2 (qty 2, 20
    redeemed, 8 earned). Given back: floor(10×2/2) − floor(10×1/2) = 5 on line 1,
    floor(20×1/2) = 10 on line 2: 15. Taken back: 6 − floor(6×1/2) = 3, and
    floor(8×1/2) = 4: 7. (Mutant: `min(left, qty + returned)` put all 2 on line 1.)"""
    sold = [
        SoldLine(MILK, Fraction(2), 10, 6, Fraction(1)),
        SoldLine(MILK, Fraction(2), 20, 8, Fraction(0)),
    ]
    out = apply_refund(sold, [(MILK, Fraction(2))], 0, "r1")
    assert out.returned_qty == (Fraction(2), Fraction(1))
    assert (out.returned_points, out.taken_back_points) == (15, 7)


def test_returning_more_than_is_left_after_an_earlier_refund_is_refused() -> None:
    """§6: "Returning more than was bought ... is refused", over the refunds before it
    too (§6's decisions): 2 bought, 1 returned before, 2 asked."""
    sold = [SoldLine(MILK, Fraction(2), 10, 6, Fraction(1))]
    with pytest.raises(Refused, match=r"\(2 bought, 1 returned before, 1 left to return;"):
        apply_refund(sold, [(MILK, Fraction(2))], 0, "r1")


# ---------------------------------------------------------------- §16: points that expire

MSK = ZoneInfo("Europe/Moscow")


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


DEC10 = _t("2026-12-10T23:59:59+03:00")
DEC31 = _t("2026-12-31T23:59:59+03:00")


def _sale(points: int, at: str, receipt_id: str = "r1") -> Movement:
    return Movement("spend", -points, receipt_id, _t(at), False)


def _give_back(points: int, at: str, receipt_id: str = "r1") -> Movement:
    return Movement("spend", points, receipt_id, _t(at), True)


def _wallet(*moves: Movement) -> Wallet:
    # 100 points: 30 expire on 10.12, 50 on 31.12, 20 never
    return wallet_of(100, [(30, DEC10), (50, DEC31)], [], moves, 0, MSK)


def test_a_spend_takes_the_soonest_expiring_points_first_the_never_expiring_last() -> None:
    """§16: "Spending takes the points that expire soonest first (points that never expire
    last)". 60 spent on 1.12: 30 of 10.12's, 30 of 31.12's; left 20 on 31.12 and 20 that
    never expire: 40 now, and 20 once 31.12 is over."""
    wallet = _wallet(_sale(60, "2026-12-01T12:00:00+03:00"))
    assert wallet.points_at(_t("2026-12-01T12:00:00+03:00")) == (40, 0)
    assert wallet.expiring_at(_t("2026-12-01T12:00:00+03:00")) == [(20, DEC31)]
    assert wallet.points_at(_t("2027-01-01T00:00:00+03:00")) == (20, 0)


def test_points_given_back_go_to_the_batches_they_came_from_the_last_taken_first() -> None:
    """§16: "Points given back by a refund return to the batches they were taken from";
    the last taken first (its decisions). Of the 60 above (30 of 10.12's, then 30 of
    31.12's), 40 given back on 5.12: 30 to 31.12's, 10 to 10.12's: 10 expire on 10.12, 50
    on 31.12; 80 available, 70 after 10.12."""
    wallet = _wallet(
        _sale(60, "2026-12-01T12:00:00+03:00"), _give_back(40, "2026-12-05T12:00:00+03:00")
    )
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (80, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(10, DEC10), (50, DEC31)]
    assert wallet.points_at(_t("2026-12-11T12:00:00+03:00")) == (70, 0)


def test_points_given_back_into_a_batch_already_expired_stay_expired() -> None:
    """§16: "a batch already expired stays expired". The same 40 given back on 15.12: 30
    to 31.12's (50 again), 10 to 10.12's, gone: 50 + 20 = 70, not 80."""
    wallet = _wallet(
        _sale(60, "2026-12-01T12:00:00+03:00"), _give_back(40, "2026-12-15T12:00:00+03:00")
    )
    assert wallet.points_at(_t("2026-12-15T12:00:00+03:00")) == (70, 0)
    assert wallet.expiring_at(_t("2026-12-15T12:00:00+03:00")) == [(50, DEC31)]


def test_a_debt_does_not_outlive_the_points_that_paid_it() -> None:
    """§16's decisions, their example: "50 owed, then 100 earned, is 50 available with 50
    listed to expire, and 0 after that day (it was -50)". A customer with nothing spends
    50 on 1.12 (a debt, counted at once: -50); 100 earned on 2.12, spendable at once,
    expire on 31.12 (on 1.12 they are pending: §3 counts every movement, T decides only
    what is pending or expired then)."""
    wallet = wallet_of(
        0,
        [],
        [],
        [
            _sale(50, "2026-12-01T12:00:00+03:00", "r1"),
            Movement(
                "earn",
                100,
                "r2",
                _t("2026-12-02T12:00:00+03:00"),
                False,
                _t("2026-12-02T12:00:00+03:00"),
                DEC31,
            ),
        ],
        0,
        MSK,
    )
    assert wallet.points_at(_t("2026-12-01T13:00:00+03:00")) == (-50, 100)
    assert wallet.points_at(_t("2026-12-03T12:00:00+03:00")) == (50, 0)
    assert wallet.expiring_at(_t("2026-12-03T12:00:00+03:00")) == [(50, DEC31)]
    assert wallet.points_at(_t("2027-01-01T00:00:00+03:00")) == (0, 0)


def test_a_counted_sales_refund_gives_back_to_batches_expiring_as_those_it_took() -> None:
    """§16's decisions: once a snapshot has counted the sale, "Points such a refund gives
    back go to batches that expire when the ones the sale's redemption took did ..., the
    last taken first, less what refunds the snapshot counted gave back already; into a
    batch already expired they stay expired". The sale took 20 points expiring on 10.12,
    then 30 expiring on 31.12; a refund the snapshot counted gave 10 back (to 31.12's: the
    snapshot lists them, with 40 that never expire). A refund it has not counted gives
    back 30 on 5.12: 20 to 31.12's, 10 to 10.12's: 80 available, 10 expiring on 10.12 and
    10 + 20 = 30 on 31.12; 70 after 10.12. The same refund on 15.12: 10.12's 10 stay
    expired: 70."""
    counted = {"r1": ([(20, DEC10), (30, DEC31)], 10)}

    def wallet(at: str) -> Wallet:
        return wallet_of(50, [(10, DEC31)], [], [_give_back(30, at)], 0, MSK, counted)

    early = wallet("2026-12-05T12:00:00+03:00")
    assert early.points_at(_t("2026-12-05T12:00:00+03:00")) == (80, 0)
    assert early.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(10, DEC10), (30, DEC31)]
    assert early.points_at(_t("2026-12-11T12:00:00+03:00")) == (70, 0)
    late = wallet("2026-12-15T12:00:00+03:00")
    assert late.points_at(_t("2026-12-15T12:00:00+03:00")) == (70, 0)
    assert late.expiring_at(_t("2026-12-15T12:00:00+03:00")) == [(30, DEC31)]


def test_points_taken_back_while_pending_come_off_the_snapshots_pending_entry_of_the_sale() -> None:
    """§6: points taken back "come off the receipt's own pending points first while they
    are still pending"; §16's decisions: for a sale the snapshot counted, "while pending,
    off the `pending` entry that activates when the sale's points do". The snapshot has
    100 pending from 2.12 10:00 (a 30 days' lifetime: gone after 1.1 10:00); a refund on
    1.12 takes back 40 of them: 60 pending, then 60 available and 60 listed to expire on
    1.1, none after."""
    active = _t("2026-12-02T10:00:00+03:00")
    gone = _t("2027-01-01T10:00:00+03:00")
    back = Movement("earn", -40, "r1", _t("2026-12-01T12:00:00+03:00"), True, active, gone)
    wallet = wallet_of(0, [], [(100, active)], [back], 30, MSK)
    assert wallet.points_at(_t("2026-12-01T13:00:00+03:00")) == (0, 60)
    assert wallet.points_at(_t("2026-12-03T12:00:00+03:00")) == (60, 0)
    assert wallet.expiring_at(_t("2026-12-03T12:00:00+03:00")) == [(60, gone)]
    assert wallet.points_at(_t("2027-01-02T12:00:00+03:00")) == (0, 0)


def test_two_counted_sales_one_spending_the_others_points_both_returned_leave_the_balance() -> None:
    """§16's decisions: when the sale's batch no longer holds what a refund takes back
    because another sale spent it, the rest is taken as a spend "and that batch remembers
    it: points a later refund gives back into the batch, while it has not expired, pay that
    spend back first. So a sale and the sale that spent its points, both returned, leave
    the balance as it was in either order"; for sales a snapshot counted, their batch is
    the snapshot's that expires when the sale's points do. r1 earned 50 (expiring 31.12),
    r2 spent those 50; the snapshot counted both: 70 that never expire. r1 returned on
    3.12 takes back 50 (off the 31.12 batch: empty, so off the 70: 20); r2 returned on 5.12
    gives its 50 back into the 31.12 batch, which pays the 70 back first: 70 that never
    expire, nothing listed, 70 on 1.1 too."""
    earned_from = _t("2026-11-20T12:00:00+03:00")
    take_back = Movement(
        "spend", -50, "r1", _t("2026-12-03T12:00:00+03:00"), True, earned_from, DEC31
    )
    give_back = _give_back(50, "2026-12-05T12:00:00+03:00", "r2")
    counted = {"r2": ([(50, DEC31)], 0)}
    wallet = wallet_of(70, [], [], [take_back, give_back], 0, MSK, counted)
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (70, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == []
    assert wallet.points_at(_t("2027-01-01T12:00:00+03:00")) == (70, 0)


def test_points_given_back_in_two_refunds_follow_the_batches_taken_the_last_first() -> None:
    """§16: given-back points return to the batches they were taken from, the last taken
    first, across refunds (each after what the ones before gave back). Of the 60 spent on
    1.12 (30 of 10.12's, then 30 of 31.12's), 20 come back on 3.12 (to 31.12's: 40) and 20
    on 5.12 (10 to 31.12's: 50, then 10 to 10.12's): 10 expire on 10.12, 50 on 31.12."""
    wallet = _wallet(
        _sale(60, "2026-12-01T12:00:00+03:00"),
        _give_back(20, "2026-12-03T12:00:00+03:00"),
        _give_back(20, "2026-12-05T12:00:00+03:00"),
    )
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (80, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(10, DEC10), (50, DEC31)]


def test_points_given_back_for_a_sale_with_no_batch_known_never_expire() -> None:
    """§16's decisions: "Points given back for a sale the hub never counted (taken before
    the imported balance) join the part that never expires", on the till as at the hub
    (`Wallet._give_back`): 25 given back for a sale nothing here took points for: 125,
    and 95 once 10.12's 30 are gone."""
    wallet = _wallet(_give_back(25, "2026-12-05T12:00:00+03:00", "r-before"))
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (125, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(30, DEC10), (50, DEC31)]
    assert wallet.points_at(_t("2026-12-11T12:00:00+03:00")) == (95, 0)


def test_points_given_back_into_a_debt_pay_what_is_still_owed_first() -> None:
    """§16's decisions: spending beyond every batch "is a debt that counts at once"; "A
    refund of the sale that made the debt gives back what is still owed first". 50 spent
    by a customer with nothing: -50; 20 of them given back: -30 still owed, -10 after 10
    more (and no batch to list)."""
    spent = _sale(50, "2026-12-01T12:00:00+03:00")
    once = wallet_of(0, [], [], [spent, _give_back(20, "2026-12-03T12:00:00+03:00")], 0, MSK)
    assert once.points_at(_t("2026-12-03T12:00:00+03:00")) == (-30, 0)
    twice = wallet_of(
        0,
        [],
        [],
        [
            spent,
            _give_back(20, "2026-12-03T12:00:00+03:00"),
            _give_back(20, "2026-12-04T12:00:00+03:00"),
        ],
        0,
        MSK,
    )
    assert twice.points_at(_t("2026-12-04T12:00:00+03:00")) == (-10, 0)
    assert twice.expiring_at(_t("2026-12-04T12:00:00+03:00")) == []


def test_points_given_back_for_a_debt_already_paid_go_to_the_batch_that_paid_it() -> None:
    """§16's decisions: a refund of the sale that made the debt gives back "what is still
    owed first, then into the batches that paid it". 50 owed from 1.12, paid by 50 of the
    100 earned on 2.12 (expiring 31.12): 50. The sale returned on 3.12 gives back 30: none
    owed, so into the 31.12 batch: 80, all of them listed to expire on 31.12, 0 after."""
    earned = Movement(
        "earn",
        100,
        "r2",
        _t("2026-12-02T12:00:00+03:00"),
        False,
        _t("2026-12-02T12:00:00+03:00"),
        DEC31,
    )
    wallet = wallet_of(
        0,
        [],
        [],
        [
            _sale(50, "2026-12-01T12:00:00+03:00"),
            earned,
            _give_back(30, "2026-12-03T12:00:00+03:00"),
        ],
        0,
        MSK,
    )
    assert wallet.points_at(_t("2026-12-03T12:00:00+03:00")) == (80, 0)
    assert wallet.expiring_at(_t("2026-12-03T12:00:00+03:00")) == [(80, DEC31)]
    assert wallet.points_at(_t("2027-01-01T12:00:00+03:00")) == (0, 0)


def test_a_debt_still_owed_at_the_time_asked_is_netted_off_the_batches_listed() -> None:
    """§16's decisions: "a debt still owed at the time asked (one dated later and counted
    at once, which the replay met after the batches that could have paid it had
    expired ...) is netted off the soonest-expiring batches in `expiring` ... so
    `expiring` never lists more than is available". 30 expiring on 10.12; a refund dated
    15.12 takes back 20 spent points: a debt (the 30 are gone by then). Asked on 5.12:
    30 − 20 = 10 available, and 10 listed to expire on 10.12."""
    take_back = Movement("spend", -20, "r1", _t("2026-12-15T12:00:00+03:00"), True)
    wallet = wallet_of(30, [(30, DEC10)], [], [take_back], 0, MSK)
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (10, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(10, DEC10)]


def test_a_pending_take_back_larger_than_one_pending_entry_goes_on_to_the_next() -> None:
    """The same rule (§6, §16's decisions) when the snapshot has two `pending` entries that
    activate when the sale's points do (30 and 30, from 2.12 10:00): 40 taken back come
    off both, 30 and 10: 20 pending, then 20 available and 20 listed to expire on 1.1."""
    active = _t("2026-12-02T10:00:00+03:00")
    gone = _t("2027-01-01T10:00:00+03:00")
    back = Movement("earn", -40, "r1", _t("2026-12-01T12:00:00+03:00"), True, active, gone)
    wallet = wallet_of(0, [], [(30, active), (30, active)], [back], 30, MSK)
    assert wallet.points_at(_t("2026-12-01T13:00:00+03:00")) == (0, 20)
    assert wallet.points_at(_t("2026-12-03T12:00:00+03:00")) == (20, 0)
    assert wallet.expiring_at(_t("2026-12-03T12:00:00+03:00")) == [(20, gone)]


# ---------------------------------------------------------------- §11: a Confirm's balance


def test_a_confirms_balance_leaves_out_the_points_another_open_hold_reserves(
    tmp_path: Path,
) -> None:
    """§11's decisions: "a result's `balance.availablePoints` (quote, hold, confirm) leaves
    out the points this till's other open holds of the customer reserve; the `Balance`
    call reports the ledger as it is". Two holds of Boris (50 and 70 points redeemed);
    the first confirmed answers the ledger's balance at its time less the other's 70.
    (Mutant: `ledger.held_points` answering 0, which no file of the ledger's set saw.)"""
    snap = snapshot()
    snap["customers"][1]["balancePoints"] = 1000
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": "4601234000055", "qty": "1", "priceMinor": 45000}]
        agent.hold(receipt_from_json(receipt("h-a", BORIS, lines=line, redeemPoints=50)))
        agent.hold(receipt_from_json(receipt("h-b", BORIS, lines=line, redeemPoints=70)))
        confirmed = agent.confirm("h-a").to_json()
        ledger_now = agent.balance(BORIS, receipt_time()).to_json()["availablePoints"]
        assert confirmed["redeemedPoints"] == 50
        assert confirmed["balance"]["availablePoints"] == ledger_now - 70
    finally:
        agent.close()


# ------------------------------------- §9 × §16: an unsent refund's points sent to the hub


def test_an_unsent_refunds_points_count_for_the_hub_only_in_batches_still_alive(
    tmp_path: Path,
) -> None:
    """§16: points given back go to the batches they were taken from, the last taken first,
    and into an expired batch they stay expired; the till sends the hub, for an online
    redemption, only the unsent give-backs that still count (`ledger.given_back_alive`).
    Boris has 200 points expiring 30.11 23:59:59 and 100 that never do; a sale at 23:50
    redeems 250 (200 of the expiring, then 50). Refunds of 1 of its 3 units give back
    floor(250 × 1/3) = 83 at 23:55 and floor(250 × 2/3) − 83 = 83 at 00:20. The first: 50
    into the never-expiring part, then 33 into the expiring one: 83 alive through 23:59:59
    (.999999 included), 50 after. The second comes after the first's 83 (50 + 33 of the
    200): all 83 into the expiring batch: 0 alive on 1.12. (Mutants of its sums and of the
    inclusive end, which only a slow test of review 30 reached.)"""
    snap = snapshot()
    snap["program"] = {
        **snap["program"],
        "maxRedeemPercent": 100,
        "offlineRedeemLimitPoints": 10**6,
    }
    boris = snap["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [{"points": 200, "expiresAt": "2026-11-30T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "3", "priceMinor": 10000}]
        sold = agent.checkout(
            receipt_from_json(
                receipt("x-1", BORIS, at="2026-11-30T23:50:00+03:00", lines=line, redeemPoints=250)
            )
        )
        assert sold.redeemed_points == 250
        for refund_id, at in (
            ("x-1-a", "2026-11-30T23:55:00+03:00"),
            ("x-1-b", "2026-12-01T00:20:00+03:00"),
        ):
            back = agent.refund(
                refund_from_json(
                    {
                        "refundId": refund_id,
                        "receiptId": "x-1",
                        "at": at,
                        "lines": [{"sku": MILK, "qty": "1"}],
                    }
                )
            )
            assert back.returned_points == 83
    finally:
        agent.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.db")) as conn:
        (first, _), (second, _) = conn.execute(
            "SELECT seq, points FROM points WHERE receipt_id = 'x-1' AND kind = 'spend'"
            " AND points > 0 ORDER BY seq"
        ).fetchall()

        def alive(seq: int, at: str) -> int:
            return ledger_db.given_back_alive(conn, "till-1", "x-1", seq, 83, _t(at))

        assert alive(first, "2026-11-30T23:59:59.999999+03:00") == 83
        assert alive(first, "2026-12-01T00:00:00+03:00") == 50
        assert alive(second, "2026-12-01T00:30:00+03:00") == 0


# ---------------------------------------------------------------- §4: identification


def test_only_the_contracts_four_forms_of_a_phone_find_its_customer(agent: Agent) -> None:
    """§4: "`+7XXXXXXXXXX`, `8XXXXXXXXXX`, `7XXXXXXXXXX` and `XXXXXXXXXX` are the same
    phone"; "any other string of digits" is `UNKNOWN`. Anna's phone is +7 916 123-45-67:
    its four forms find her; 11 digits that start with 9 are no phone's form (the mutant
    `len == 11 or first in "78"` read them as +7 and the 10 after the 9)."""
    for text in ("+79161234567", "89161234567", "79161234567", "9161234567"):
        found = agent.identify(text).to_json()
        assert (found["status"], found["customerId"]) == ("FOUND", "c-a"), text
    assert agent.identify("99161234567").to_json() == {"status": "UNKNOWN"}
