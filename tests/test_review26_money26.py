"""Review 26 (money26): the arithmetic at its edges, through the public doors.

docs/CONTRACT.md §2 (money, quantities), §5 (pricing), §6 (refunds), §16 (expiring points).
"""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent.models import Receipt, Refund
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot

CARD = "2770000000017"
MILK, BREAD = "4601234000017", "4601234000024"


def _refund(refund_id: str, *lines: tuple[str, str], at: str = "2026-11-24T10:00:00+03:00") -> Any:
    return {
        "refundId": refund_id,
        "receiptId": "r1",
        "at": at,
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
    }


# ---------------------------------------------------------------- §2 × §6: long quantities


def test_a_quantity_of_many_digits_is_returned_to_the_last_thousandth(cli: CLI) -> None:
    """docs/CONTRACT.md §2: a quantity is a decimal string with at most 3 decimals, of any
    length a text field may have; §6: returning all of it, in parts, returns exactly it.
    The POS sends the amount, so the line's amount fits whatever the quantity says.
    (The returned quantity was kept to 28 significant digits: after returning all but
    0.001 the till said the whole line had gone back and then some, "-987.655 left".)"""
    bought = "12345678901234567890123456789012.345"
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = receipt(
        lines=[
            {"sku": MILK, "qty": bought, "amountMinor": 500},
            {"sku": BREAD, "qty": "1", "priceMinor": 10000},
        ]
    )
    assert cli("checkout", sale, "--json").code == 0
    first = cli("refund", _refund("f1", (MILK, "12345678901234567890123456789012.344")), "--json")
    assert first.code == 0, first.err
    # §6: idempotent on refundId, quantities compared by value, to the last digit
    again = cli("refund", _refund("f1", (MILK, "12345678901234567890123456789012.344")), "--json")
    assert (again.code, again.out) == (0, first.out)
    other = cli("refund", _refund("f1", (MILK, "12345678901234567890123456789013.344")), "--json")
    assert other.code == 2 and "already stored with another body" in other.err
    last = cli("refund", _refund("f2", (MILK, "0.001")), "--json")
    assert last.code == 0, last.err
    more = cli("refund", _refund("f3", (MILK, "0.001")), "--json")
    assert more.code == 2
    assert more.err == (
        f"tillpoint: receipt r1: returning more of sku {MILK} than was bought"
        f" ({bought} bought, {bought} returned before, 0 left to return;"
        " this refund asks 0.001)\n"
    )


# ---------------------------------------------------------------- §2 × §3: int64 balances

I64 = 2**63 - 1


def test_a_balance_that_fits_is_answered_whatever_its_movements_add_up_to(cli: CLI) -> None:
    """docs/CONTRACT.md §2 and §3: points are whole numbers, int64 in the contract; the
    local balance is `balancePoints` plus this till's movements. A customer at the int64
    floor (a hub's correction) who earns 3.46e18 points three times has 1.15e18: the sum
    of the movements alone passes int64, the balance does not. (The till summed the
    movements in SQLite, which said "integer overflow": the fourth checkout and every
    `balance` of the customer were "internal error", exit 1.)"""
    snap = snapshot()
    snap["program"]["pointValueMinor"] = 1
    snap["customers"][0]["balancePoints"] = -I64 - 1
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": MILK, "qty": "1", "priceMinor": I64}
    earned = I64 * 75 * 5 // 1000  # 7.5 % × the birthday's 5 of I64 minor units, 1 each
    for k in range(4):
        run = cli("checkout", receipt(f"r{k}", lines=[line]), "--json")
        assert run.code == 0, run.err
        assert run.json()["earnedPoints"] == earned
        assert run.json()["balance"]["availablePoints"] == -I64 - 1 + (k + 1) * earned
    balance = cli("balance", CARD, "--at", "2026-11-23T12:00:00+03:00", "--json")
    assert balance.code == 0, balance.err
    assert balance.json() == {"availablePoints": -I64 - 1 + 4 * earned, "pendingPoints": 0}


# ---------------------------------------------------------------- §6 × §16: parts of a whole

AT = datetime.fromisoformat("2026-11-23T10:15:00+03:00")
SKUS = [MILK, BREAD, "4601234000031"]  # the last is tobacco: excluded from loyalty


def _qty_text(q: Fraction) -> str:
    whole, part = divmod(q.numerator * 1000 // q.denominator, 1000)
    return f"{whole}.{part:03d}".rstrip("0").rstrip(".")


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batches=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 60)), max_size=3),
    rest=st.integers(0, 300),
    pending=st.lists(st.tuples(st.integers(1, 200), st.integers(-5, 5)), max_size=2),
    delay=st.sampled_from([0, 1, 3]),
    lifetime=st.sampled_from([0, 10, 30]),
    lines=st.lists(
        st.tuples(st.sampled_from(SKUS), st.integers(1, 3000), st.integers(1, 50_000)),
        min_size=1,
        max_size=3,
    ),
    redeem=st.sampled_from([-1, 50, 1]),
    parts=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    minutes=st.integers(0, 72),
)
def test_a_sale_returned_in_any_parts_leaves_every_batch_as_it_was(
    batches: list[tuple[int, int]],
    rest: int,
    pending: list[tuple[int, int]],
    delay: int,
    lifetime: int,
    lines: list[tuple[str, int, int]],
    redeem: int,
    parts: int,
    seed: int,
    minutes: int,
) -> None:
    """docs/CONTRACT.md §6: returning everything, in any number of refunds of weighed
    parts (to the 0.001), gives back exactly the redeemed points and takes back exactly
    the earned ones; §16: the points go back to the batches they came from, so before
    any batch expires the balance and its `expiring` batches are what they were before
    the sale, at every later moment (pending points, snapshot batches and activation
    delays included)."""
    r = random.Random(seed)
    snap = snapshot()
    snap["program"].update(
        pointsLifetimeDays=lifetime,
        activationDelayDays=delay,
        maxRedeemPercent=100,
        offlineRedeemLimitPoints=10**6,
    )
    anna = snap["customers"][0]
    anna["birthday"] = "1990-05-05"
    anna["expiring"] = [
        {"points": p, "expiresAt": (AT + timedelta(days=d)).isoformat()} for p, d in batches
    ]
    anna["balancePoints"] = sum(p for p, _ in batches) + rest
    anna["pending"] = [
        {"points": p, "activatesAt": (AT + timedelta(days=d)).isoformat()} for p, d in pending
    ]
    sold = [
        {"sku": sku, "qty": _qty_text(Fraction(q, 1000)), "priceMinor": p} for sku, q, p in lines
    ]
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Path(tmp) / "data", "till-1")
        try:
            agent.load_snapshot(snap)
            when = AT + timedelta(minutes=minutes)  # before any batch expires (a day on)
            later = [when + timedelta(hours=h) for h in (0, 3, 30, 24 * 4, 24 * 12, 24 * 70)]
            before = [agent.balance(CARD, t).to_json() for t in later]
            sale = agent.checkout(
                Receipt.model_validate(receipt(lines=sold, redeemPoints=redeem))
            ).to_json()
            left = [Fraction(line["qty"]) for line in sold]
            returned = taken = 0
            for k in range(1, 100):
                if not any(left):
                    break
                asked = []
                for i, line in enumerate(sold):
                    whole = left[i] if k >= parts else None
                    q = whole or Fraction(r.randint(0, int(left[i] * 1000)), 1000)
                    if q:
                        left[i] -= q
                        asked.append({"sku": line["sku"], "qty": _qty_text(q)})
                if asked:
                    body = {"refundId": f"f{k}", "receiptId": "r1", "at": when.isoformat()}
                    got = agent.refund(Refund.model_validate({**body, "lines": asked}))
                    returned += got.to_json()["returnedPoints"]
                    taken += got.to_json()["takenBackPoints"]
            assert (returned, taken) == (sale["redeemedPoints"], sale["earnedPoints"])
            assert [agent.balance(CARD, t).to_json() for t in later] == before
        finally:
            agent.close()


# ---------------------------------------------------------------- §16: a sale the hub counted


def _counted(cli: CLI, program: dict[str, Any], customer: dict[str, Any]) -> None:
    """Version 2 of the snapshot: the hub has counted the till's first transaction (the
    sale r1) and shows its points as `customer` says."""
    snap = snapshot(version=2, appliedThrough={"till-1": 1})
    snap["program"].update(program)
    snap["customers"][0].update(customer)
    assert cli("snapshot", "load", snap).code == 0


def test_points_taken_back_for_a_counted_sale_come_off_that_sales_own_batch(cli: CLI) -> None:
    """docs/CONTRACT.md §16 (its decisions): points a refund takes back come off the
    sale's own earned batch first, also once the hub has counted the sale and lists its
    points as an `expiring` batch of the snapshot. (The till took them as a spend, the
    soonest-expiring first: the customer's other 50 points expiring on the 25th went,
    and 50 of the refunded sale's points stayed listed to expire on the 28th; on the
    26th the till said 1000 where the hub says 950.)"""
    program = {"pointsLifetimeDays": 5}
    snap = snapshot()
    snap["program"].update(program)
    snap["customers"][0].update(
        balancePoints=1000, expiring=[{"points": 50, "expiresAt": "2026-11-25T23:59:59+03:00"}]
    )
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": MILK, "qty": "1", "priceMinor": 100000}
    sale = cli("checkout", receipt(lines=[line]), "--json").json()
    earned = sale["earnedPoints"]
    assert earned == 375  # 1000 ₽ × 7.5 % × 5 (the birthday window)
    own = {"points": earned, "expiresAt": "2026-11-28T10:15:00+03:00"}  # 5 days after
    assert sale["balance"]["expiring"] == [
        {"points": 50, "expiresAt": "2026-11-25T23:59:59+03:00"},
        own,
    ]
    _counted(
        cli,
        program,
        {
            "balancePoints": 1000 + earned,
            "expiring": [{"points": 50, "expiresAt": "2026-11-25T23:59:59+03:00"}, own],
        },
    )
    back = cli("refund", _refund("f1", (MILK, "1")), "--json")
    assert back.code == 0, back.err
    assert back.json()["takenBackPoints"] == earned
    assert back.json()["balance"] == {
        "availablePoints": 1000,
        "pendingPoints": 0,
        "expiring": [{"points": 50, "expiresAt": "2026-11-25T23:59:59+03:00"}],
    }
    later = cli("balance", CARD, "--at", "2026-11-26T10:00:00+03:00", "--json")
    assert later.json() == {"availablePoints": 950, "pendingPoints": 0}


def test_pending_points_taken_back_for_a_counted_sale_leave_its_pending_entry(cli: CLI) -> None:
    """docs/CONTRACT.md §6: points taken back come off the receipt's own pending points
    while they are pending; §16: `expiring` lists what is left of each batch. The hub has
    counted the sale and lists its 375 points as a `pending` entry; half the sale goes
    back while they are pending, so 188 become spendable and expire. (The till kept the
    187 taken back as a batch of its own, below zero, which `expiring` skipped: it listed
    all 375 points to expire on the 30th, with 188 of them available.)"""
    program = {"pointsLifetimeDays": 5, "activationDelayDays": 2}
    snap = snapshot()
    snap["program"].update(program)
    snap["customers"][0]["balancePoints"] = 1000
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": MILK, "qty": "1", "priceMinor": 100000}
    sale = cli("checkout", receipt(lines=[line]), "--json").json()
    assert sale["balance"] == {"availablePoints": 1000, "pendingPoints": 375}
    activates = "2026-11-25T10:15:00+03:00"
    entry = {"points": 375, "activatesAt": activates}
    _counted(cli, program, {"balancePoints": 1000, "pending": [entry]})
    back = cli("refund", _refund("f1", (MILK, "0.5")), "--json")
    assert back.code == 0, back.err
    assert back.json()["takenBackPoints"] == 187
    assert back.json()["balance"] == {"availablePoints": 1000, "pendingPoints": 188}
    later = cli("balance", CARD, "--at", "2026-11-26T10:00:00+03:00", "--json")
    assert later.json() == {
        "availablePoints": 1188,
        "pendingPoints": 0,
        "expiring": [{"points": 188, "expiresAt": "2026-11-30T10:15:00+03:00"}],
    }
    gone = cli("balance", CARD, "--at", "2026-12-01T10:00:00+03:00", "--json")
    assert gone.json() == {"availablePoints": 1000, "pendingPoints": 0}


def test_points_taken_back_for_a_counted_sale_that_never_expire_leave_the_batch_that_does(
    cli: CLI,
) -> None:
    """The same where the till's points never expire (`pointsLifetimeDays` 0) and the hub
    imported 50 that do: the sale's 375 are in the never-expiring rest of the snapshot,
    and come off it. (The till took the 50 expiring on the 25th first: from the 26th on
    it said 1000 where the hub says 950, until the next snapshot took the 50 back.)"""
    snap = snapshot()
    soon = {"points": 50, "expiresAt": "2026-11-25T23:59:59+03:00"}
    snap["customers"][0].update(balancePoints=1000, expiring=[soon])
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": MILK, "qty": "1", "priceMinor": 100000}
    assert cli("checkout", receipt(lines=[line]), "--json").json()["earnedPoints"] == 375
    _counted(cli, {}, {"balancePoints": 1375, "expiring": [soon]})
    back = cli("refund", _refund("f1", (MILK, "1")), "--json")
    assert back.json()["balance"] == {
        "availablePoints": 1000,
        "pendingPoints": 0,
        "expiring": [soon],
    }
    later = cli("balance", CARD, "--at", "2026-11-26T10:00:00+03:00", "--json")
    assert later.json() == {"availablePoints": 950, "pendingPoints": 0}


@pytest.mark.parametrize(("lifetime", "delay", "qty"), [(5, 0, "1"), (0, 0, "1"), (5, 2, "0.5")])
def test_the_till_and_the_hub_agree_on_a_refund_of_a_sale_the_hub_counted(
    lifetime: int, delay: int, qty: str
) -> None:
    """docs/CONTRACT.md §16 (its decisions: the till and the hub replay by one rule): a
    sale, the hub's snapshot that counted it loaded on the till, then a refund of it; the
    till and the hub that counted the refund say the same balance and the same batches
    to expire, day after day. Real parts: an Agent on SQLite files, the hub's SQLite
    store, the till's outbox as its push sends it."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.loopback import import_doc

    from .test_hub_till_agree import CARD as BORIS
    from .test_hub_till_agree import NOW, SKU, WEEK, _master, pushed

    start = datetime.fromisoformat("2026-11-23T10:00:00+03:00")
    with tempfile.TemporaryDirectory() as tmp:
        hub = SqliteHubStore(Path(tmp) / "hub.db")
        agent = Agent(Path(tmp) / "till", "till-1")
        try:
            import_doc(hub, _master(1000, [(50, start + timedelta(days=2))], lifetime, delay))
            agent.load_snapshot(hub.snapshot_doc(hub.publish(NOW, WEEK).version, 0))
            at = start + timedelta(minutes=15)
            line = {"sku": SKU, "qty": "1", "priceMinor": 1_000_000}
            sale = receipt("r1", card=BORIS, at=at.isoformat(), lines=[line])
            agent.checkout(Receipt.model_validate(sale))
            hub.ingest("till-1", "", pushed(Path(tmp) / "till"), NOW)
            counted = hub.snapshot_doc(hub.publish(NOW + timedelta(hours=5), WEEK).version, 0)
            assert counted["appliedThrough"] == {"till-1": 1}
            agent.load_snapshot(counted)
            body = {"refundId": "f1", "receiptId": "r1", "at": (at + timedelta(days=1))}
            body["lines"] = [{"sku": SKU, "qty": qty}]
            body["at"] = body["at"].isoformat()
            agent.refund(Refund.model_validate(body))
            hub.ingest("till-1", "", pushed(Path(tmp) / "till"), NOW)
            for hours in range(25, 24 * 12, 6):
                moment = at + timedelta(hours=hours)
                till = agent.balance(BORIS, moment).to_json()
                there = hub.balance("c-b", moment)
                row = next(
                    c
                    for c in hub.snapshot_doc(hub.publish(moment, WEEK).version, 0)["customers"]
                    if c["id"] == "c-b"
                )
                assert (till["availablePoints"], till["pendingPoints"]) == (
                    there.available,
                    there.pending,
                ), moment
                assert [
                    (e["points"], datetime.fromisoformat(e["expiresAt"]))
                    for e in till.get("expiring", [])
                ] == [
                    (e["points"], datetime.fromisoformat(e["expiresAt"]))
                    for e in row.get("expiring", [])
                ], moment
        finally:
            agent.close()
            hub.close()


def _synced_history(seed: int) -> str | None:
    """A random history at one till of sales (redeeming or not), refunds of parts of them
    and syncs (the till's transactions pushed, the hub's new snapshot loaded), the hub
    counting what the till pushed after every step; the first moment the till and the hub
    disagree on the balance, or None."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.loopback import import_doc

    from .test_hub_till_agree import CARD as BORIS
    from .test_hub_till_agree import NOW, SKU, WEEK, _master, pushed

    r = random.Random(seed)
    lifetime, delay = r.choice([0, 2, 5, 30]), r.choice([0, 0, 1, 2])
    start = datetime.fromisoformat("2026-11-23T10:00:00+03:00")
    batches = [(r.randint(10, 300), start + timedelta(hours=r.randint(10, 200))) for _ in "ab"]
    with tempfile.TemporaryDirectory() as tmp:
        hub = SqliteHubStore(Path(tmp) / "hub.db")
        agent = Agent(Path(tmp) / "till", "till-1")
        try:
            master = _master(r.choice([0, 100, 1000]), batches[: r.randint(0, 2)], lifetime, delay)
            import_doc(hub, master)
            agent.load_snapshot(hub.snapshot_doc(hub.publish(NOW, WEEK).version, 0))
            at, left, steps = start, {}, []
            for i in range(r.randint(3, 9)):
                at += timedelta(hours=r.randint(1, 40))
                step = r.choice(["sale", "sale", "refund", "refund", "sync"])
                if step == "sale":
                    line = {"sku": SKU, "qty": "1", "priceMinor": r.randint(100, 300_000)}
                    sale = receipt(f"r{i}", card=BORIS, at=at.isoformat(), lines=[line])
                    sale["redeemPoints"] = r.choice([-1, 0, 50, 400])
                    agent.checkout(Receipt.model_validate(sale))
                    left[f"r{i}"] = 4  # quarters
                elif step == "refund" and any(left.values()):
                    sold = r.choice([s for s, q in left.items() if q])
                    quarters = r.randint(1, left[sold])
                    left[sold] -= quarters
                    body = {"refundId": f"f{i}", "receiptId": sold, "at": at.isoformat()}
                    body["lines"] = [{"sku": SKU, "qty": str(quarters / 4)}]
                    agent.refund(Refund.model_validate(body))
                elif step == "sync":
                    hub.ingest("till-1", "", pushed(Path(tmp) / "till"), NOW)
                    agent.load_snapshot(hub.snapshot_doc(hub.publish(at, WEEK).version, 0))
                steps.append(f"{step} {at:%d %H:%M}")
                hub.ingest("till-1", "", pushed(Path(tmp) / "till"), NOW)
                for hours in (0, 1, 5, 24, 48, 72, 24 * 7, 24 * 40):
                    moment = at + timedelta(hours=hours)
                    till = agent.balance(BORIS, moment)
                    there = hub.balance("c-b", moment)
                    if (till.available_points, till.pending_points) != (
                        there.available,
                        there.pending,
                    ):
                        return (
                            f"seed {seed} (lifetime {lifetime}, delay {delay}) after {steps},"
                            f" {hours} h on: till {till.to_json()}, hub {there}"
                        )
        finally:
            agent.close()
            hub.close()
    return None


def test_points_given_back_for_a_counted_sale_return_to_the_batch_they_came_from(cli: CLI) -> None:
    """docs/CONTRACT.md §16: points given back by a refund return to the batches they were
    taken from; a batch already expired stays expired, also once the hub has counted the
    sale. (The till gave them to the part that never expires until the next snapshot: a
    refund on the 26th of 50 points taken from a batch gone on the 25th gave 50 points the
    hub does not have; one on the 24th, 50 that never expired where the hub's go on the
    25th.)"""
    soon = {"points": 300, "expiresAt": "2026-11-25T23:59:59+03:00"}
    snap = snapshot()
    snap["customers"][0].update(balancePoints=1000, expiring=[soon])
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": MILK, "qty": "1", "priceMinor": 100000}
    sale = cli("checkout", receipt(lines=[line], redeemPoints=50), "--json").json()
    earned = sale["earnedPoints"]
    assert (sale["redeemedPoints"], earned) == (50, 356)  # 950 ₽ × 7.5 % × 5
    left = {**soon, "points": 250}
    _counted(cli, {}, {"balancePoints": 950 + earned, "expiring": [left]})
    half = cli("refund", _refund("f1", (MILK, "0.5"), at="2026-11-24T12:00:00+03:00"), "--json")
    assert half.json()["returnedPoints"] == 25
    assert half.json()["balance"]["expiring"] == [{**soon, "points": 275}]
    assert half.json()["balance"]["availablePoints"] == 1056 - 178 + 275
    # the 275 are gone after the 25th: 700 that never expire and the sale's 178 left
    later = cli("balance", CARD, "--at", "2026-11-26T10:00:00+03:00", "--json").json()
    assert later == {"availablePoints": 878, "pendingPoints": 0}
    rest = cli("refund", _refund("f2", (MILK, "0.5"), at="2026-11-26T12:00:00+03:00"), "--json")
    assert rest.json()["returnedPoints"] == 25
    # the 25 went back into the batch gone on the 25th: they stay gone
    after = cli("balance", CARD, "--at", "2026-11-26T12:00:00+03:00", "--json").json()
    assert after == {"availablePoints": 700, "pendingPoints": 0}


def test_the_till_and_the_hub_agree_over_syncs_and_refunds_of_counted_sales() -> None:
    """docs/CONTRACT.md §16: the till's balance is the hub's, whichever of its sales the
    hub's snapshot has counted when they are returned (12 seeded histories; the first
    five disagreed before review 26's fixes)."""
    seeds = (18, 23, 37, 39, 40, 0, 1, 2, 3, 4, 5, 6)
    found = [d for seed in seeds if (d := _synced_history(seed))]
    assert not found, "\n".join(found)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_till_and_the_hub_agree_over_syncs_and_refunds_of_counted_sales_at_length() -> None:
    """The same on 300 more seeds (about 70 s)."""
    found = [d for seed in range(100, 400) if (d := _synced_history(seed))]
    assert not found, "\n".join(found[:10])
