"""Review 49 (mut49b): rules of expiring points (§16), refunds (§6), the offline limit
(§5, §11) and identification (§4) that a mutation of their code went past the suite's
tests of them unnoticed (the second part of review 48's mutation testing).

Each test pins the contract's rule with figures worked out by hand from docs/CONTRACT.md
(the comments show the sums), and names the mutant it kills (docs/DECISIONS.md,
"Review 49 (mut49b)"). The pure rules are called as the till calls them; the rest goes
through a real `Agent` on real SQLite files.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from tillpoint.agent import ledger as ledger_db
from tillpoint.agent.expiry import Movement, wallet_of
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import enrolled_till, receipt, snapshot

if TYPE_CHECKING:
    from tillpoint.sync.loopback import LoopbackHub

MILK = "4601234000017"
BORIS = "2770000000024"  # c-b, base tier


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _redeeming_program(snap: dict[str, Any]) -> None:
    """Every point of a basket may be redeemed, and the offline limit is out of the way."""
    snap["program"] = {
        **snap["program"],
        "maxRedeemPercent": 100,
        "offlineRedeemLimitPoints": 10**6,
    }


def _refund(agent: Agent, refund_id: str, receipt_id: str, at: str, qty: str) -> Any:
    return agent.refund(
        refund_from_json(
            {
                "refundId": refund_id,
                "receiptId": receipt_id,
                "at": at,
                "lines": [{"sku": MILK, "qty": qty}],
            }
        )
    )


def _give_backs(conn: sqlite3.Connection, receipt_id: str) -> list[tuple[str, int, int]]:
    """(device, seq, points) of the refunds' give-back rows of a sale, in the order written."""
    return [
        (str(d), int(s), int(p))
        for d, s, p in conn.execute(
            "SELECT device_id, seq, points FROM points WHERE receipt_id = ? AND kind = 'spend'"
            " AND points > 0 ORDER BY id",
            (receipt_id,),
        )
    ]


# ------------------------------------- §9 × §16: an unsent refund's points sent to the hub


def test_a_give_back_into_three_batches_follows_each_batch_the_last_taken_first(
    tmp_path: Path,
) -> None:
    """§16: "Spending takes the points that expire soonest first (points that never expire
    last)"; "Points given back by a refund return to the batches they were taken from; a
    batch already expired stays expired"; the last taken first (its decisions). Boris has
    300 points: 100 expire on 10.12, 100 on 20.12, 100 never. A sale on 1.12 redeems 250:
    100 of 10.12's, 100 of 20.12's, 50 of the never-expiring (one row per batch, §16's
    decisions). Returned whole on 15.12 it gives back floor(250 × 1/1) = 250 (§6): 50 to
    the never-expiring part, 100 to 20.12's, 100 to 10.12's, expired: 150 still count on
    15.12 (what the till tells the hub of that unsent refund, `ledger.given_back_alive`),
    50 on 21.12. (Mutant: `skip -= amount + room`, which let 20.12's batch take 200.)"""
    snap = snapshot()
    _redeeming_program(snap)
    boris = snap["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [
        {"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"},
        {"points": 100, "expiresAt": "2026-12-20T23:59:59+03:00"},
    ]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "1", "priceMinor": 30000}]
        sold = agent.checkout(
            receipt_from_json(
                receipt("x-1", BORIS, at="2026-12-01T12:00:00+03:00", lines=line, redeemPoints=250)
            )
        )
        assert sold.redeemed_points == 250
        back = _refund(agent, "x-1-r", "x-1", "2026-12-15T12:00:00+03:00", "1")
        assert back.returned_points == 250
    finally:
        agent.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.db")) as conn:
        taken = conn.execute(
            "SELECT -p.points, p.expires_at FROM points p JOIN receipts r USING (receipt_id)"
            " WHERE p.receipt_id = 'x-1' AND p.kind = 'spend' AND p.points < 0 AND p.seq = r.seq"
            " ORDER BY p.id"
        ).fetchall()
        assert [(p, e and _t(e)) for p, e in taken] == [
            (100, _t("2026-12-10T23:59:59+03:00")),
            (100, _t("2026-12-20T23:59:59+03:00")),
            (50, None),
        ]
        ((device, seq, points),) = _give_backs(conn, "x-1")
        assert (device, points) == ("till-1", 250)

        def alive(at: str) -> int:
            return ledger_db.given_back_alive(conn, "till-1", "x-1", seq, 250, _t(at))

        assert alive("2026-12-10T12:00:00+03:00") == 250
        assert alive("2026-12-15T12:00:00+03:00") == 150
        assert alive("2026-12-20T23:59:59+03:00") == 150
        assert alive("2026-12-21T00:00:00+03:00") == 50


def test_a_give_back_after_an_earlier_refund_starts_where_that_one_stopped_in_three_batches(
    tmp_path: Path,
) -> None:
    """The same sale (100 of 10.12's, 100 of 20.12's, 50 never, taken in that order),
    returned in two refunds of a line of qty 2 (§6: floor(250 × 1/2) = 125, then
    250 − 125 = 125). The first, on 5.12, gives back 50 to the never-expiring part and 75
    to 20.12's; the second, on 15.12, the last 25 of 20.12's and 100 to 10.12's, which
    expired on 10.12: 25 of its 125 still count on 15.12, none on 21.12. (What the refunds
    before it gave back, skipped batch by batch: kills `skip += …`, `max` for the skip's
    `min` and `amount + min(amount, skip)`.)"""
    snap = snapshot()
    _redeeming_program(snap)
    boris = snap["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [
        {"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"},
        {"points": 100, "expiresAt": "2026-12-20T23:59:59+03:00"},
    ]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "2", "priceMinor": 15000}]
        sold = agent.checkout(
            receipt_from_json(
                receipt("x-2", BORIS, at="2026-12-01T12:00:00+03:00", lines=line, redeemPoints=250)
            )
        )
        assert sold.redeemed_points == 250
        first = _refund(agent, "x-2-a", "x-2", "2026-12-05T12:00:00+03:00", "1")
        second = _refund(agent, "x-2-b", "x-2", "2026-12-15T12:00:00+03:00", "1")
        assert (first.returned_points, second.returned_points) == (125, 125)
    finally:
        agent.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.db")) as conn:
        (_, seq_a, _), (_, seq_b, _) = _give_backs(conn, "x-2")

        def alive(seq: int, at: str) -> int:
            return ledger_db.given_back_alive(conn, "till-1", "x-2", seq, 125, _t(at))

        assert alive(seq_a, "2026-12-05T12:00:00+03:00") == 125
        assert alive(seq_a, "2026-12-21T00:00:00+03:00") == 50
        assert alive(seq_b, "2026-12-15T12:00:00+03:00") == 25
        assert alive(seq_b, "2026-12-21T00:00:00+03:00") == 0


def test_points_given_back_past_the_sales_own_rows_count_as_never_expiring(
    tmp_path: Path,
) -> None:
    """§16's decisions: "Points given back for a sale the hub never counted (taken before
    the imported balance) join the part that never expires"; the till's rule alike
    (`Wallet._give_back`, review 48): given back with no batch known, they never expire.
    A ledger an earlier release let two device ids write (`ledger.other_device`: it opens
    under either) holds a sale of till-1 that redeemed 250 (100 of 10.12's, 100 of 20.12's,
    50 never) and its refund written as till-2: till-2 has no row of the sale, so all 250
    it gave back count for the hub, on 15.12 and on 21.12 alike. (Mutant: `alive −
    max(0, left)`, which told the hub −250.)"""
    snap = snapshot()
    _redeeming_program(snap)
    boris = snap["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [
        {"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"},
        {"points": 100, "expiresAt": "2026-12-20T23:59:59+03:00"},
    ]
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "1", "priceMinor": 30000}]
        agent.checkout(
            receipt_from_json(
                receipt("x-3", BORIS, at="2026-12-01T12:00:00+03:00", lines=line, redeemPoints=250)
            )
        )
    finally:
        agent.close()
    # What an earlier release left: a transaction journaled under a second id.
    with contextlib.closing(sqlite3.connect(data / "ledger.db")) as conn, conn:
        conn.execute(
            "INSERT INTO journal VALUES ('till-2', 1, 'CHECKOUT', 'old-2',"
            " '2026-12-01T09:00:00+00:00', NULL, '', '2026-12-01T09:00:00+00:00')"
        )
    agent = Agent(data, "till-2")
    try:
        back = _refund(agent, "x-3-r", "x-3", "2026-12-15T12:00:00+03:00", "1")
        assert back.returned_points == 250
    finally:
        agent.close()
    with contextlib.closing(sqlite3.connect(data / "ledger.db")) as conn:
        ((device, seq, points),) = _give_backs(conn, "x-3")
        assert (device, points) == ("till-2", 250)
        for at in ("2026-12-15T12:00:00+03:00", "2026-12-21T00:00:00+03:00"):
            assert ledger_db.given_back_alive(conn, "till-2", "x-3", seq, 250, _t(at)) == 250


# ---------------------------------------------------------------- §5, §11: the offline limit


def test_an_open_offline_hold_counts_against_the_cards_offline_limit_of_the_day(
    agent: Agent,
) -> None:
    """§5 step 4: offline, redemption is capped by "what is left of
    `offlineRedeemLimitPoints` for this card on this store-day"; §11's decisions: "an
    open hold counts against the day's offline limit ... for every other receipt of this
    till, quotes included". Anna (1200 points) on a till with no hub (OFFLINE), limit
    500: a hold redeeming 200, then a quote asking 500 on the same store-day gets 500 −
    200 = 300; a checkout of 100 more, then a quote: 500 − 200 − 100 = 200. (Mutant:
    `offline_redeemed`'s `used -= …`, the open holds' use taken off instead of added:
    the quote got all 500.)"""
    line = [{"sku": "4601234000055", "qty": "1", "priceMinor": 300000}]
    held = agent.hold(receipt_from_json(receipt("h-1", lines=line, redeemPoints=200)))
    assert (held.mode, held.redeemed_points) == ("OFFLINE", 200)
    quoted = agent.quote(receipt_from_json(receipt("q-1", lines=line, redeemPoints=500)))
    assert quoted.redeemed_points == 300
    sold = agent.checkout(receipt_from_json(receipt("c-1", lines=line, redeemPoints=100)))
    assert sold.redeemed_points == 100
    quoted = agent.quote(receipt_from_json(receipt("q-2", lines=line, redeemPoints=500)))
    assert quoted.redeemed_points == 200


def test_an_open_offline_hold_counts_against_the_limit_when_the_hub_is_away(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """The same rules on a till with a hub that does not answer (§5 step 4: "When the hub
    is not reachable, also min with what is left of `offlineRedeemLimitPoints`"; §11's
    decisions: an open hold counts against the day's offline limit). The hub's Anna has
    1,200 points, the limit is 500: with the hub stopped, a Hold of 200 is OFFLINE; a
    second Hold asking 500 the same store-day gets 500 − 200 = 300; once both are
    confirmed, a third gets 0. (Mutant: `offline_redeemed`'s `used -= …`: the second got
    all 500, 700 offline in one day.)"""
    till = enrolled_till(hub, tmp_path / "till", "till-1")
    try:
        hub.stop()  # away: every Hold prices OFFLINE
        line = [{"sku": MILK, "qty": "1", "priceMinor": 300000}]
        first = till.agent.hold(receipt_from_json(receipt("h-1", lines=line, redeemPoints=200)))
        assert (first.mode, first.redeemed_points) == ("OFFLINE", 200)
        second = till.agent.hold(receipt_from_json(receipt("h-2", lines=line, redeemPoints=500)))
        assert (second.mode, second.redeemed_points) == ("OFFLINE", 300)
        till.agent.confirm("h-1")
        till.agent.confirm("h-2")
        third = till.agent.hold(receipt_from_json(receipt("h-3", lines=line, redeemPoints=500)))
        assert (third.mode, third.redeemed_points) == ("OFFLINE", 0)
    finally:
        till.stop()


# ---------------------------------------------------------------- §4: identification


def test_the_unassigned_code_point_between_two_dropped_runs_is_another_character(
    agent: Agent,
) -> None:
    """§4: "anything with other characters is `INVALID`"; its decisions (review 33) drop
    the invisible operators U+2060…U+2064 and the bidi isolates U+2066…U+2069 as white
    space. U+2065 between them is unassigned: no format character, so "another
    character": Anna's card with it is `INVALID` (digits only), with either neighbour
    it finds her. (Mutant: `_char_class`'s `points[i + 1] == point + 2`, which wrote the
    two runs as one range U+2060…U+2069 and dropped U+2065 too.)"""
    card = "2770000000017"
    for mark in ("\u2064", "\u2066"):
        found = agent.identify(card[:6] + mark + card[6:]).to_json()
        assert (found["status"], found["customerId"]) == ("FOUND", "c-a"), hex(ord(mark))
    assert agent.identify(card[:6] + "\u2065" + card[6:]).to_json() == {
        "status": "INVALID",
        "reason": "a card number or phone has digits only (no brackets, letters or other signs)",
    }


# ------------------------------------- §16: a receipt's result in its time's place


def test_a_late_receipts_earned_batch_is_spent_by_a_later_sale_in_its_result_too(
    tmp_path: Path,
) -> None:
    """§16's decisions: the till replays its own transactions in time order, and "a
    receipt's result puts the receipt in its time's place among them": its `balance` is
    what `balance --at` its time says next. Points expire 30 days after they become
    spendable; Boris has 300 that never expire. A sale on 25.11 redeems 100. A receipt
    dated 20.11, sent after it, earns floor(1000.00 × 3 %) = 30 points, spendable at once
    and expiring on 20.12. In time order the 25.11 sale comes after it and spends the
    soonest-expiring first: the 30 of 20.12, then 70 of the 300: 230 left, none listed
    to expire; the sale's own floor(400.00 × 3 %) = 12 are pending on 20.11 (§3: every
    movement counts, the time asked decides only what is pending). (Mutants of
    `Points.after`: `later and …`, `if not later`, which put the late receipt after the
    sale: 30 listed to expire on 20.12 that the sale had spent.)"""
    snap = snapshot()
    snap["program"] = {**snap["program"], "pointsLifetimeDays": 30}
    snap["customers"][1]["balancePoints"] = 300
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        sold = agent.checkout(
            receipt_from_json(
                receipt(
                    "s-1",
                    BORIS,
                    at="2026-11-25T12:00:00+03:00",
                    lines=[{"sku": MILK, "qty": "1", "priceMinor": 50000}],
                    redeemPoints=100,
                )
            )
        )
        assert sold.redeemed_points == 100
        late = agent.checkout(
            receipt_from_json(
                receipt(
                    "s-0",
                    BORIS,
                    at="2026-11-20T12:00:00+03:00",
                    lines=[{"sku": MILK, "qty": "1", "priceMinor": 100000}],
                )
            )
        ).to_json()
        assert late["earnedPoints"] == 30
        assert late["balance"] == {"availablePoints": 230, "pendingPoints": 12}
        at = _t("2026-11-20T12:00:00+03:00")
        assert agent.balance(BORIS, at).to_json() == late["balance"]
    finally:
        agent.close()


def test_a_receipt_that_moves_no_points_still_lists_the_batches_that_expire(agent: Agent) -> None:
    """§16: `Balance` gains `expiring`, the next batches that still hold points; a
    receipt's `balance` is the balance after it (§5 step 6). Boris has 80 points, 50 of
    them expiring on 31.12; a receipt of cigarettes only (excluded from loyalty: nothing
    earned) redeeming nothing moves no points: its balance is 80, 50 of them listed to
    expire on 31.12. (Mutant: `Points.after` answering None when it was given no move,
    which dropped the list.)"""
    snap = snapshot()
    snap["customers"][1]["expiring"] = [{"points": 50, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    agent.load_snapshot({**snap, "version": 2, "baseVersion": 0})
    line = [{"sku": "4601234000031", "qty": "1", "priceMinor": 20000}]
    sold = agent.checkout(receipt_from_json(receipt("t-1", BORIS, lines=line))).to_json()
    assert (sold.get("earnedPoints", 0), sold.get("redeemedPoints", 0)) == (0, 0)
    assert sold["balance"] == {
        "availablePoints": 80,
        "pendingPoints": 0,
        "expiring": [{"points": 50, "expiresAt": "2026-12-31T23:59:59+03:00"}],
    }


MSK = ZoneInfo("Europe/Moscow")


def test_pending_points_count_from_the_instant_they_activate_when_points_expire() -> None:
    """§5 step 6 / §3: earned points are pending until `activatesAt`, then available;
    §16's decisions: pending points are "spendable at `activatesAt`" and gone
    `pointsLifetimeDays` after it at the same local clock time. A snapshot's pending
    entry of 40 points activating on 1.12 12:00 with a 30-day lifetime: pending a
    microsecond before, available at 12:00 itself, through 31.12 12:00:00.999999, gone
    after. (Mutant: `Batch.spendable`'s `active_from < at`: at the activation instant
    the points were neither pending nor available.)"""
    activates = _t("2026-12-01T12:00:00+03:00")
    wallet = wallet_of(0, [], [(40, activates)], [], 30, MSK)
    assert wallet.points_at(_t("2026-12-01T11:59:59.999999+03:00")) == (0, 40)
    assert wallet.points_at(activates) == (40, 0)
    assert wallet.expiring_at(activates) == [(40, _t("2026-12-31T12:00:00+03:00"))]
    assert wallet.points_at(_t("2026-12-31T12:00:00.999999+03:00")) == (40, 0)
    assert wallet.points_at(_t("2026-12-31T12:00:01+03:00")) == (0, 0)


def test_a_plus_number_with_a_bracket_after_the_plus_is_refused_for_its_bracket(
    agent: Agent,
) -> None:
    """§4: a `+` number that is not a Russian phone, and anything with other characters,
    is `INVALID`; its decisions: "Brackets are not dropped", the reason "a card number or
    phone has digits only (no brackets, letters or other signs)". `+(79161234567` has a
    bracket right after the `+`: refused for the bracket, not as "not a Russian phone
    number" (the digits after it are a Russian phone's). (Mutant: `identify`'s
    `scanned[2:]`, which looked at the text after the bracket.)"""
    assert agent.identify("+(79161234567").to_json() == {
        "status": "INVALID",
        "reason": "a card number or phone has digits only (no brackets, letters or other signs)",
    }
    assert agent.identify("+89161234567").to_json() == {
        "status": "INVALID",
        "reason": "not a Russian phone number (+7 and 10 digits)",
    }


# ---------------------------------------- §16: a refund of a sale the snapshot has counted


def test_a_counted_sales_refund_gives_back_to_batches_expiring_as_those_it_took(
    tmp_path: Path,
) -> None:
    """§16's decisions: once a snapshot has counted the sale, "Points such a refund gives
    back go to batches that expire when the ones the sale's redemption took did (the
    sale's rows say which ...), the last taken first ...; into a batch already expired they
    stay expired". Boris has 300 points, 100 expiring on 10.12. A sale of 150.00 on 1.12
    redeems 150 (100 of 10.12's, then 50 of the rest; nothing left to earn on). Snapshot 2
    counts it: 150 points, none expiring. Returned whole on 5.12, it gives back 150: 50 to
    the part that never expires, 100 to a batch expiring on 10.12: 300 on 5.12 with 100
    listed, 200 on 11.12. (Mutants of `ledger._counted_sales`, which read the sale's rows:
    `row[1] != "spend"` for the refunds giving back, `return {}`: all 150 never expired.)"""
    snap = snapshot()
    _redeeming_program(snap)
    boris = snap["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [{"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "1", "priceMinor": 15000}]
        sold = agent.checkout(
            receipt_from_json(
                receipt("k-1", BORIS, at="2026-12-01T12:00:00+03:00", lines=line, redeemPoints=150)
            )
        ).to_json()
        assert (sold["redeemedPoints"], sold.get("earnedPoints", 0)) == (150, 0)
        counted = snapshot(version=2, appliedThrough={"till-1": 1})
        _redeeming_program(counted)
        counted["customers"][1]["balancePoints"] = 150
        agent.load_snapshot(counted)
        back = _refund(agent, "k-1-r", "k-1", "2026-12-05T12:00:00+03:00", "1").to_json()
        assert back["returnedPoints"] == 150
        assert agent.balance(BORIS, _t("2026-12-05T12:00:00+03:00")).to_json() == {
            "availablePoints": 300,
            "pendingPoints": 0,
            "expiring": [{"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"}],
        }
        assert agent.balance(BORIS, _t("2026-12-11T00:00:00+03:00")).to_json() == {
            "availablePoints": 200,
            "pendingPoints": 0,
        }
    finally:
        agent.close()


# ------------------------------------- §3, §16: a balance asked before the till's moves


def test_a_balance_asked_before_every_move_replays_them_batch_by_batch(tmp_path: Path) -> None:
    """§16: "Available at T = what is left of the batches not expired at T"; §6's
    decisions (review 40): §3 counts the till's own transactions whatever their dates, T
    decides only which batches are pending or expired then. Nothing expires; points
    activate 3 days after a sale. Boris has 100. A sale of 1000.00 on 20.11 earns 30
    (3 %), spendable on 23.11; a sale on 25.11 redeems 120 (the 100 first, the older
    batch on a tie, then 20 of the 30) and earns floor(880.00 × 3 %) = 26, spendable on
    28.11. Asked for 19.11, before both: the 100 are spent, 10 of the first sale's and the
    26 pending: 0 available, 36 pending (not −20 and 56, the sums' figures). (Mutant:
    `ledger._moved_later`'s test negated: a balance asked before every move took the
    sums.)"""
    snap = snapshot()
    snap["program"] = {**snap["program"], "activationDelayDays": 3}
    snap["customers"][1]["balancePoints"] = 100
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "1", "priceMinor": 100000}]
        first = agent.checkout(
            receipt_from_json(receipt("m-1", BORIS, at="2026-11-20T12:00:00+03:00", lines=line))
        ).to_json()
        assert first["earnedPoints"] == 30
        second = agent.checkout(
            receipt_from_json(
                receipt("m-2", BORIS, at="2026-11-25T12:00:00+03:00", lines=line, redeemPoints=120)
            )
        ).to_json()
        assert (second["redeemedPoints"], second["earnedPoints"]) == (120, 26)
        assert agent.balance(BORIS, _t("2026-11-19T12:00:00+03:00")).to_json() == {
            "availablePoints": 0,
            "pendingPoints": 36,
        }
    finally:
        agent.close()


def test_two_refunds_of_a_counted_sale_give_back_along_the_sales_own_rows_only(
    tmp_path: Path,
) -> None:
    """The same rule when the refunds also take back earned points. Boris has 300, 100
    expiring on 10.12; a sale of 2 × 1000.00 on 1.12 redeems 150 (100 of 10.12's, 50 of
    the rest) and earns floor(1850.00 × 3 %) = 55, spendable at once, never expiring.
    Snapshot 2 counts it: 300 − 150 + 55 = 205. Two refunds of one unit each, on 3.12 and
    5.12, give back 75 and 75 (§6: floor(150 × 1/2), then the rest) and take back 27 and
    28. The give-backs follow the sale's rows, the last taken first: 50 to the rest and 25
    to 10.12's, then 75 to 10.12's: 300 on 5.12, 100 of them listed to expire on 10.12,
    200 after. A refund's take-back row is no batch the sale took from. (Mutant:
    `_counted_sales`'s `own or points < 0`, which counted the take-backs as parts the sale
    took: 45 listed, 255 after 10.12.)"""
    snap = snapshot()
    _redeeming_program(snap)
    boris = snap["customers"][1]
    boris["balancePoints"] = 300
    boris["expiring"] = [{"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "2", "priceMinor": 100000}]
        sold = agent.checkout(
            receipt_from_json(
                receipt("k-2", BORIS, at="2026-12-01T12:00:00+03:00", lines=line, redeemPoints=150)
            )
        ).to_json()
        assert (sold["redeemedPoints"], sold["earnedPoints"]) == (150, 55)
        counted = snapshot(version=2, appliedThrough={"till-1": 1})
        _redeeming_program(counted)
        counted["customers"][1]["balancePoints"] = 205
        agent.load_snapshot(counted)
        first = _refund(agent, "k-2-a", "k-2", "2026-12-03T12:00:00+03:00", "1").to_json()
        second = _refund(agent, "k-2-b", "k-2", "2026-12-05T12:00:00+03:00", "1").to_json()
        assert (first["returnedPoints"], first["takenBackPoints"]) == (75, 27)
        assert (second["returnedPoints"], second["takenBackPoints"]) == (75, 28)
        assert agent.balance(BORIS, _t("2026-12-05T12:00:00+03:00")).to_json() == {
            "availablePoints": 300,
            "pendingPoints": 0,
            "expiring": [{"points": 100, "expiresAt": "2026-12-10T23:59:59+03:00"}],
        }
        assert agent.balance(BORIS, _t("2026-12-11T00:00:00+03:00")).to_json() == {
            "availablePoints": 200,
            "pendingPoints": 0,
        }
    finally:
        agent.close()


def test_a_late_refund_takes_back_the_points_of_a_counted_sale_a_snapshot_shows_active(
    tmp_path: Path,
) -> None:
    """§6: returning everything "takes back exactly e"; points taken back come off the
    receipt's own pending points while they are pending (at the refund's `at`). Points
    activate 3 days after a sale and expire 30 days later. Boris (80) buys for 1000.00 on
    1.12: 30 points, spendable on 4.12. Snapshot 2, published after that, counts the sale:
    110, 30 of them expiring on 3.1. The refund, dated 2.12 (the points still pending
    then), reaches the till after it: it takes back 30, so from 4.12 Boris has
    110 − 30 = 80. (Mutant: `Wallet.apply`'s `if not left`: with no pending entry of that
    activation left in the snapshot, the 30 were never taken back: 110.)"""
    snap = snapshot()
    program = {**snap["program"], "pointsLifetimeDays": 30, "activationDelayDays": 3}
    snap["program"] = program
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "1", "priceMinor": 100000}]
        sold = agent.checkout(
            receipt_from_json(receipt("p-1", BORIS, at="2026-12-01T12:00:00+03:00", lines=line))
        ).to_json()
        assert sold["earnedPoints"] == 30
        counted = snapshot(version=2, appliedThrough={"till-1": 1}, program=program)
        boris = counted["customers"][1]
        boris["balancePoints"] = 110
        boris["expiring"] = [{"points": 30, "expiresAt": "2027-01-03T12:00:00+03:00"}]
        agent.load_snapshot(counted)
        back = _refund(agent, "p-1-r", "p-1", "2026-12-02T12:00:00+03:00", "1").to_json()
        assert (back["returnedPoints"], back["takenBackPoints"]) == (0, 30)
        after = agent.balance(BORIS, _t("2026-12-05T12:00:00+03:00")).to_json()
        assert (after["availablePoints"], after["pendingPoints"]) == (80, 0)
    finally:
        agent.close()


def _lifetime_agent(tmp_path: Path) -> Agent:
    """Points expire 30 days after they become spendable; Boris has 300 that never do."""
    snap = snapshot()
    _redeeming_program(snap)
    snap["program"]["pointsLifetimeDays"] = 30
    snap["customers"][1]["balancePoints"] = 300
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snap)
    return agent


def _sale(agent: Agent, receipt_id: str, at: str, price: int, redeem: int = 0) -> Any:
    line = [{"sku": MILK, "qty": "1", "priceMinor": price}]
    body = receipt(receipt_id, BORIS, at=at, lines=line, redeemPoints=redeem)
    return agent.checkout(receipt_from_json(body)).to_json()


def test_a_sale_after_an_earning_one_spends_its_batch_first_in_its_own_result(
    tmp_path: Path,
) -> None:
    """§16: spending takes the soonest-expiring points first; a receipt's result is the
    balance after it (§5 step 6). A sale of 1000.00 on 15.11 earns 30, expiring on 15.12.
    A sale of 50.00 on 20.11 redeems 50 (all of it: nothing earned): the 30 of 15.12
    first, then 20 of the 300: 280 left, none listed to expire. (Mutant: `Points.after`'s
    `sum(0 for …)`: the receipt put before the earlier sale, it spent the 300 first.)"""
    agent = _lifetime_agent(tmp_path)
    try:
        assert _sale(agent, "e-1", "2026-11-15T12:00:00+03:00", 100000)["earnedPoints"] == 30
        spent = _sale(agent, "e-2", "2026-11-20T12:00:00+03:00", 5000, redeem=50)
        assert (spent["redeemedPoints"], spent.get("earnedPoints", 0)) == (50, 0)
        assert spent["balance"] == {"availablePoints": 280, "pendingPoints": 0}
    finally:
        agent.close()


def test_a_late_receipt_between_two_sales_takes_its_place_between_them(tmp_path: Path) -> None:
    """§16's decisions: a receipt's result puts it in its time's place among the till's
    moves. 15.11: a sale of 1000.00 redeems 10 (of the 300) and earns floor(990.00 × 3 %)
    = 29 (expiring 15.12). 25.11: a sale of 500.00 redeems 100 (two rows: 29 of 15.12's,
    71 of the rest) and earns floor(400.00 × 3 %) = 12 (pending on 20.11). Then a receipt
    dated 20.11 earns 30 (expiring 20.12). In time order the 25.11 sale spends 29 of
    15.12's, then 30 of 20.12's and 41 of the 290: on 20.11, 249 available, 12 pending,
    none listed. (Mutant: `Points.after`'s `sum(2 for …)`: the receipt put after the 25.11
    sale's spending, 30 listed to expire on 20.12.)"""
    agent = _lifetime_agent(tmp_path)
    try:
        first = _sale(agent, "b-1", "2026-11-15T12:00:00+03:00", 100000, redeem=10)
        assert (first["redeemedPoints"], first["earnedPoints"]) == (10, 29)
        later = _sale(agent, "b-2", "2026-11-25T12:00:00+03:00", 50000, redeem=100)
        assert (later["redeemedPoints"], later["earnedPoints"]) == (100, 12)
        late = _sale(agent, "b-3", "2026-11-20T12:00:00+03:00", 100000)
        assert late["earnedPoints"] == 30
        assert late["balance"] == {"availablePoints": 249, "pendingPoints": 12}
    finally:
        agent.close()


def test_a_refund_of_a_redemption_from_points_that_never_expire_leaves_the_balance(
    agent: Agent,
) -> None:
    """§6: returning everything gives back exactly p and takes back exactly e. Boris
    (base, 80 points, none expiring) buys for 1000.00 redeeming 50 and earns
    floor(950.00 × 3 %) = 28: 58. Returned whole: 50 back, 28 taken: 80, no batch
    listed. (Mutant: `ledger.spent_expiry`'s `row is None and …`, which stored the text
    "None" as the give-back's expiry.)"""
    line = [{"sku": MILK, "qty": "1", "priceMinor": 100000}]
    sold = agent.checkout(receipt_from_json(receipt("n-1", BORIS, lines=line, redeemPoints=50)))
    assert (sold.redeemed_points, sold.to_json()["earnedPoints"]) == (50, 28)
    back = _refund(agent, "n-1-r", "n-1", "2026-11-23T12:00:00+03:00", "1").to_json()
    assert (back["returnedPoints"], back["takenBackPoints"]) == (50, 28)
    assert back["balance"] == {"availablePoints": 80, "pendingPoints": 0}
    now = _t("2026-11-23T12:00:00+03:00")
    assert agent.balance(BORIS, now).to_json() == back["balance"]


def test_points_that_expired_before_a_debt_was_made_never_pay_it() -> None:
    """§16: "a batch already expired stays expired"; its decisions: a debt "is paid by
    the points that become spendable after it ... as they do". Boris's 100 points all
    expire on 10.12. A refund on 15.12 takes back 50 points of a sale the till knows
    nothing of: no batch counts then, so it is a debt: −50 on 15.12 and still −50 on
    20.12; 30 earned on 20.12 pay 30 of it: −20. (Mutant: `Wallet.settle`'s `since is
    None and …`, which let the expired 100 pay the debt: 0.)"""
    dec10 = _t("2026-12-10T23:59:59+03:00")
    take_back = Movement("spend", -50, "r1", _t("2026-12-15T12:00:00+03:00"), True)
    wallet = wallet_of(100, [(100, dec10)], [], [take_back], 0, MSK)
    assert wallet.points_at(_t("2026-12-15T12:00:00+03:00")) == (-50, 0)
    assert wallet.points_at(_t("2026-12-20T12:00:00+03:00")) == (-50, 0)
    at = _t("2026-12-20T12:00:00+03:00")
    wallet.apply(Movement("earn", 30, "r2", at, False, at, None))
    assert wallet.points_at(at) == (-20, 0)


def test_a_debt_owed_at_the_time_asked_is_netted_off_two_batches_in_turn() -> None:
    """§16's decisions: a debt still owed at the time asked "is netted off the
    soonest-expiring batches in `expiring`, as a spend takes them". 30 points expire on
    10.12 and 20 on 12.12; a refund dated 15.12 takes back 40 spent points (both batches
    are gone by then): a debt of 40. Asked on 5.12: 50 − 40 = 10 available; netted, 30
    off 10.12's and 10 off 12.12's: 10 listed, on 12.12. (Mutant: `expiring_at`'s
    `owed += part`, which netted 30 more off 12.12's: none listed.)"""
    dec10, dec12 = _t("2026-12-10T23:59:59+03:00"), _t("2026-12-12T23:59:59+03:00")
    take_back = Movement("spend", -40, "r1", _t("2026-12-15T12:00:00+03:00"), True)
    wallet = wallet_of(50, [(30, dec10), (20, dec12)], [], [take_back], 0, MSK)
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (10, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(10, dec12)]


def test_a_refund_of_the_sale_that_made_a_debt_pays_what_is_owed_then_the_payer() -> None:
    """§16's decisions: "A refund of the sale that made the debt gives back what is still
    owed first, then into the batches that paid it." Nothing left; a sale on 1.12 spends
    50: a debt of 50. 30 earned on 2.12 pay 30 of it (20 still owed). The sale's refund
    on 3.12 gives back 40: 20 to what is owed, 20 to the batch that paid: 20 available.
    (Mutant: `_repay`'s `points += owed`, which gave the payer 30.)"""
    moves = [
        Movement("spend", -50, "r1", _t("2026-12-01T12:00:00+03:00"), False),
        Movement(
            "earn",
            30,
            "r2",
            _t("2026-12-02T12:00:00+03:00"),
            False,
            _t("2026-12-02T12:00:00+03:00"),
            None,
        ),
        Movement("spend", 40, "r1", _t("2026-12-03T12:00:00+03:00"), True),
    ]
    wallet = wallet_of(0, [], [], moves, 0, MSK)
    assert wallet.points_at(_t("2026-12-03T12:00:00+03:00")) == (20, 0)


def test_points_given_back_into_an_expired_batch_count_at_a_time_before_it_expired(
    tmp_path: Path,
) -> None:
    """§16: a batch already expired stays expired; §6's decisions (review 40): points a
    refund gives back count "at once" for a balance asked for a time before the refund
    too, T deciding only which batches are pending or expired then. Boris's 80 points all
    expire on 10.12. A sale of 60.00 on 1.12 redeems 60 (nothing earned); its refund on
    15.12 gives the 60 back into the 10.12 batch, expired: 0 on 15.12, and asked for
    5.12, 80 (all listed to expire on 10.12). (Mutant: `_into`'s `batch.points -=
    points`: −40 on 5.12.)"""
    snap = snapshot()
    _redeeming_program(snap)
    snap["customers"][1]["expiring"] = [{"points": 80, "expiresAt": "2026-12-10T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        sold = _sale(agent, "x-9", "2026-12-01T12:00:00+03:00", 6000, redeem=60)
        assert (sold["redeemedPoints"], sold.get("earnedPoints", 0)) == (60, 0)
        back = _refund(agent, "x-9-r", "x-9", "2026-12-15T12:00:00+03:00", "1").to_json()
        assert back["returnedPoints"] == 60
        assert back["balance"] == {"availablePoints": 0, "pendingPoints": 0}
        assert agent.balance(BORIS, _t("2026-12-05T12:00:00+03:00")).to_json() == {
            "availablePoints": 80,
            "pendingPoints": 0,
            "expiring": [{"points": 80, "expiresAt": "2026-12-10T23:59:59+03:00"}],
        }
    finally:
        agent.close()


def test_a_partial_take_back_leaves_the_rest_of_the_sales_own_batch(tmp_path: Path) -> None:
    """§16's decisions: "taken-back points come off the sale's own earned batch first".
    Points expire 30 days after they become spendable; Boris has 300 that never do. A
    sale of 2 × 1000.00 on 1.12 earns 60, expiring on 31.12. One unit returned on 5.12
    takes back floor(60 × 1/2) = 30 off that batch: 330, 30 listed on 31.12. (Mutant:
    `_take_back`'s `max` for `min`, which emptied the batch and gave 30 to the rest.)"""
    agent = _lifetime_agent(tmp_path)
    try:
        line = [{"sku": MILK, "qty": "2", "priceMinor": 100000}]
        body = receipt("w-1", BORIS, at="2026-12-01T12:00:00+03:00", lines=line)
        assert agent.checkout(receipt_from_json(body)).to_json()["earnedPoints"] == 60
        back = _refund(agent, "w-1-r", "w-1", "2026-12-05T12:00:00+03:00", "1").to_json()
        assert back["takenBackPoints"] == 30
        assert back["balance"] == {
            "availablePoints": 330,
            "pendingPoints": 0,
            "expiring": [{"points": 30, "expiresAt": "2026-12-31T12:00:00+03:00"}],
        }
    finally:
        agent.close()


def test_a_take_back_while_pending_comes_off_the_sales_own_pending_batch(tmp_path: Path) -> None:
    """§6: "Points taken back come off the receipt's own pending points first while they
    are still pending." Points activate 3 days after a sale and expire 30 days later.
    Boris (80) buys 2 × 1000.00 on 1.12: 60 points pending until 4.12. One unit returned
    on 2.12 takes back floor(60 × 1/2) = 30 off them: 80 available, 30 pending. (Mutant:
    `Wallet.apply`'s `own.points -= m.points`: 90 pending.)"""
    snap = snapshot()
    snap["program"] = {**snap["program"], "pointsLifetimeDays": 30, "activationDelayDays": 3}
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        line = [{"sku": MILK, "qty": "2", "priceMinor": 100000}]
        body = receipt("q-1", BORIS, at="2026-12-01T12:00:00+03:00", lines=line)
        assert agent.checkout(receipt_from_json(body)).to_json()["earnedPoints"] == 60
        back = _refund(agent, "q-1-r", "q-1", "2026-12-02T12:00:00+03:00", "1").to_json()
        assert back["takenBackPoints"] == 30
        assert back["balance"] == {"availablePoints": 80, "pendingPoints": 30}
    finally:
        agent.close()


def test_a_debt_is_netted_off_the_soonest_expiring_batch_whatever_the_snapshots_order() -> None:
    """The same netting (§16's decisions: "netted off the soonest-expiring batches ... as
    a spend takes them") with the snapshot's `expiring` listed latest first: 20 on 12.12,
    then 30 on 10.12, and a debt of 40 made on 15.12. Asked on 5.12: 30 off 10.12's, 10
    off 12.12's: 10 listed, on 12.12. (Mutant: `expiring_at`'s sort key `expires_at and
    at`, which netted in the snapshot's order: 10 listed on 10.12.)"""
    dec10, dec12 = _t("2026-12-10T23:59:59+03:00"), _t("2026-12-12T23:59:59+03:00")
    take_back = Movement("spend", -40, "r1", _t("2026-12-15T12:00:00+03:00"), True)
    wallet = wallet_of(50, [(20, dec12), (30, dec10)], [], [take_back], 0, MSK)
    assert wallet.points_at(_t("2026-12-05T12:00:00+03:00")) == (10, 0)
    assert wallet.expiring_at(_t("2026-12-05T12:00:00+03:00")) == [(10, dec12)]


def test_points_given_back_into_a_paid_debt_go_to_its_payers_the_last_first() -> None:
    """§16's decisions: a refund of the sale that made the debt gives back "what is still
    owed first, then into the batches that paid it" (the last taken first). Nothing left;
    a sale on 1.12 spends 50: a debt. 30 earned on 2.12 (expiring 31.12) and 20 on 3.12
    (never) pay it, in that order. Its refunds give back 10 on 4.12 (to the 3.12 batch),
    then 40 on 5.12 (its other 10, then 30 to the 2.12 batch): 50, 30 listed on 31.12.
    (Mutants of `_repay`'s payer list: `part + back`, 10 listed; `back != part` and its
    negation, an endless loop.)"""
    dec31 = _t("2026-12-31T23:59:59+03:00")

    def earn(points: int, receipt_id: str, at: str, expires: datetime | None) -> Movement:
        return Movement("earn", points, receipt_id, _t(at), False, _t(at), expires)

    moves = [
        Movement("spend", -50, "r1", _t("2026-12-01T12:00:00+03:00"), False),
        earn(30, "r2", "2026-12-02T12:00:00+03:00", dec31),
        earn(20, "r3", "2026-12-03T12:00:00+03:00", None),
        Movement("spend", 10, "r1", _t("2026-12-04T12:00:00+03:00"), True),
        Movement("spend", 40, "r1", _t("2026-12-05T12:00:00+03:00"), True),
    ]
    wallet = wallet_of(0, [], [], moves, 0, MSK)
    at = _t("2026-12-05T12:00:00+03:00")
    assert wallet.points_at(at) == (50, 0)
    assert wallet.expiring_at(at) == [(30, dec31)]


def test_batches_of_one_point_are_listed_spent_and_expire_like_any_other() -> None:
    """§16: `expiring` is "the next (at most 3) batches that still hold points"; spending
    takes the soonest-expiring first. 13 points: 1 each expiring on 10.12, 12.12, 20.12
    and 24.12, 9 never. On 1.12 three are listed (10.12, 12.12, 20.12). A spend of 2 on
    1.12 takes 10.12's and 12.12's point: 11 left, 20.12's and 24.12's listed, and still
    11 on 13.12. (Mutants: `EXPIRING_SHOWN` 2 or 4; `expiring_at`'s and `_spend`'s
    `points > 1`, which passed over a batch of one point.)"""
    d10, d12, d20, d24 = (_t(f"2026-12-{day}T23:59:59+03:00") for day in ("10", "12", "20", "24"))
    batches = [(1, d10), (1, d12), (1, d20), (1, d24)]
    at = _t("2026-12-01T12:00:00+03:00")
    assert wallet_of(13, batches, [], [], 0, MSK).expiring_at(at) == [
        (1, d10),
        (1, d12),
        (1, d20),
    ]
    spent = wallet_of(13, batches, [], [Movement("spend", -2, "r1", at, False)], 0, MSK)
    assert spent.points_at(at) == (11, 0)
    assert spent.expiring_at(at) == [(1, d20), (1, d24)]
    assert spent.points_at(_t("2026-12-13T12:00:00+03:00")) == (11, 0)
