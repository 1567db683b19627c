"""Review 34 (memo34): state a long-lived till keeps across calls, against a fresh agent,
through the events the earlier differentials did not walk over.

docs/ARCHITECTURE.md, "What a long-lived agent keeps between calls", lists what
`tillpoint run` keeps; review 34 went over it again (agent/, sync/ on the till's side,
printer/). Each per-version memo of the agent (`CacheView.remembered`) is keyed by the
snapshot version; what they do not key on is the program's settings (read from the same
version), the clock, the customer and the ledger: each of these is read at every call.
These tests drive a long-lived agent through the events that change those inputs and
that review 30 (tests/test_review30_memo30.py), review 31 (tests/test_review31_long31.py)
and review 32 (tests/test_review32_long32.py) left out: a delta that changes the
program's time zone (the store-day of the offline limit, the birthday window, an offer's
hours) or its other settings (the point's value, the tiers' rates, the print limits)
while holds are open, the store's midnight in a zone whose offset is not whole hours, a
customer's birthday, favourite weekday and pending points changed by a delta, and a
snapshot's coupons changed or withdrawn after a quote used them. Each answer after the
event is compared with a fresh agent's on a copy of the data directory made just before
the call (docs/CONTRACT.md §2, §3, §5, §7, §11, §13, §14, §16), with review 30's and
review 31's harnesses.
"""

from __future__ import annotations

import copy
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from .conftest import SteppingClock, snapshot
from .test_review30_memo30 import ANNA, BORIS, BREAD, CHEESE, MILK, Till, sale
from .test_review31_long31 import HubSequence

# ---------------------------------------------------------------- targeted events


def _program(**changes: Any) -> dict[str, Any]:
    return {**snapshot()["program"], "holdTtlSeconds": 1800, **changes}


def _delta(till: Till, version: int, **rows: Any) -> None:
    """A delta applied by another process (a sync, `tillpoint snapshot load`)."""
    till.load({"version": version, "baseVersion": version - 1, **rows})


def _morning_and_tuesday() -> list[dict[str, Any]]:
    """An offer of the store's mornings and one of its Tuesdays (CONTRACT §14)."""
    return [
        {
            "id": "m-morning",
            "kind": "PERCENT_OFF",
            "skus": [MILK],
            "value": "25",
            "hours": [{"from": "08:00", "to": "11:00"}],
        },
        {
            "id": "m-tuesday",
            "kind": "BONUS_MULTIPLIER",
            "skus": [BREAD],
            "value": "3",
            "weekdays": [2],
        },
        {
            "id": "p-a-print",
            "customerId": "c-a",
            "kind": "PERCENT_OFF",
            "skus": [CHEESE],
            "value": "20",
            "printable": True,
            "printText": "-20% сыр",
            "rank": 1,
        },
    ]


def _basket(rid: str, at: datetime, card: str = ANNA, **changes: Any) -> dict[str, Any]:
    lines = [
        {"sku": MILK, "qty": "2", "priceMinor": 8990},
        {"sku": BREAD, "qty": "1", "priceMinor": 6500},
        {"sku": CHEESE, "qty": "0.4", "priceMinor": 99000},
    ]
    return sale(rid, at, card=card, lines=lines, **changes)


def test_a_delta_that_moves_the_store_to_another_zone_is_answered_as_a_fresh_till_answers(
    tmp_path: Path,
) -> None:
    """CONTRACT §2, §5, §14, §16: business time is the store's local time in the program's
    `timezone`, which a delta may change (a store moved to another region's program; a
    hub's fix). A standalone till at 23:30 Moscow time has sold and held against the
    day's offline limit; the delta puts the store in Asia/Kamchatka (08:30 the next day
    there: another store-day, inside a morning offer's hours, on a Tuesday, on Анна's
    birthday), then in America/New_York (15:30 the day before). After each, every answer
    (the held receipt quoted and held again, a new sale, Confirm, balances, status) is a
    fresh agent's: nothing the till keeps between calls holds the old zone."""
    start = datetime.fromisoformat("2026-11-23T23:30:00+03:00")  # Monday in Moscow
    clock = SteppingClock(start)
    program = _program(offlineRedeemLimitPoints=60, birthdayWindowDays=0, activationDelayDays=1)
    first = snapshot(program=program, offers=_morning_and_tuesday())
    first["customers"][0]["birthday"] = "1990-11-24"
    till = Till(tmp_path, clock, first)
    n = 0
    seen: list[Any] = []

    def round_of_calls() -> None:
        nonlocal n
        n += 1
        now = clock()
        seen.append(till.compare("quote", _basket("h-1", now, redeemPoints=-1, explain=True)))
        till.compare("hold", _basket("h-1", start, redeemPoints=20))
        till.compare("quote", _basket(f"q-{n}", now, card=BORIS, redeemPoints=-1))
        till.compare("checkout", _basket(f"c-{n}", now, redeemPoints=30))
        till.compare("balance", {"card": ANNA, "at": now.isoformat()})
        till.compare("balance", {"card": ANNA, "at": (now + timedelta(hours=13)).isoformat()})
        till.compare("status", None)

    try:
        assert till.compare("hold", _basket("h-1", start, redeemPoints=20))[1]["state"] == "HELD"
        round_of_calls()
        _delta(till, 2, program={**program, "timezone": "Asia/Kamchatka"})
        round_of_calls()
        clock.passes(600)
        _delta(till, 3, program={**program, "timezone": "America/New_York"})
        round_of_calls()
        assert till.compare("confirm", {"receiptId": "h-1"})[1]["state"] == "CONFIRMED"
        refund = {
            "refundId": "f-1",
            "receiptId": "h-1",
            "at": clock().isoformat(),
            "lines": [{"sku": BREAD, "qty": "1"}],
        }
        till.compare("refund", refund)
        round_of_calls()
        till.check()
        # the zone mattered: the morning offer in Kamchatka only, the birthday's accrual
        offered = [[line["offerId"] for line in q[1]["lines"]] for q in seen]
        earned = [q[1]["earnedPoints"] for q in seen]
        assert offered[0][0] is None and offered[1][0] == "m-morning" and offered[2][0] is None
        assert earned[1] > 3 * earned[0]  # Анна's birthday in Kamchatka (×5), not in Moscow
    finally:
        till.close()


def test_settings_changed_by_a_delta_while_a_hold_is_open_are_read_as_a_fresh_till_reads_them(
    tmp_path: Path,
) -> None:
    """CONTRACT §3, §5, §7, §11: a delta changes the point's value, the tiers' rates and
    the print limits while Анна's receipt is held. The hold keeps its figures (Hold sent
    again answers them, Confirm commits them), the offers printed are chosen at Confirm by
    the settings then, and a quote of the held receipt, a new sale and the committed
    receipt quoted again answer as a fresh agent on the same files."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    program = _program(maxOffersPrinted=3, offerPrintCooldownDays=7)
    till = Till(tmp_path, clock, snapshot(program=program, offers=_morning_and_tuesday()))
    try:
        held = _basket("h-1", clock(), redeemPoints=100)
        assert till.compare("hold", held)[1]["state"] == "HELD"
        till.compare("checkout", _basket("c-1", clock()))
        tiers = [
            {"code": "base", "accrualPercent": "1"},
            {"code": "silver", "accrualPercent": "6.5"},
            {"code": "gold", "accrualPercent": "10"},
        ]
        changed = {**program, "pointValueMinor": 50, "tiers": tiers, "maxOffersPrinted": 0}
        _delta(till, 2, program=changed)
        clock.passes(30)
        till.compare("hold", held)
        till.compare("quote", held)
        till.compare("quote", {**held, "redeemPoints": -1, "explain": True})
        till.compare("quote", _basket("c-1", clock() - timedelta(seconds=30)))  # committed
        till.compare("checkout", _basket("c-2", clock(), redeemPoints=-1))
        assert till.compare("confirm", {"receiptId": "h-1"})[1]["state"] == "CONFIRMED"
        _delta(till, 3, program={**changed, "maxOffersPrinted": 2, "offerPrintCooldownDays": 0})
        till.compare("checkout", _basket("c-3", clock()))
        till.compare("quote", {**held, "explain": True})
        till.compare("balance", {"card": ANNA, "at": clock().isoformat()})
        till.compare("status", None)
        till.check()
    finally:
        till.close()


def test_a_card_given_to_another_customer_by_a_delta_is_priced_for_its_new_holder(
    tmp_path: Path,
) -> None:
    """CONTRACT §3, §4, §5: the till keeps the last customers' personal offers per snapshot
    version, by customer. A delta gives Анна's card to Борис (a card re-issued), another
    takes Борис's row away and a third brings him back with other offers; each quote of the
    same receipt with that card, and the phone's identification, are a fresh agent's."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    offers = [
        {"id": "p-a", "customerId": "c-a", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"},
        {"id": "p-b", "customerId": "c-b", "kind": "PERCENT_OFF", "skus": [MILK], "value": "30"},
    ]
    till = Till(tmp_path, clock, snapshot(program=_program(), offers=offers))
    body = _basket("q-1", clock(), redeemPoints=-1)

    def calls() -> None:
        till.compare("quote", body)
        till.compare("quote", {**body, "card": "+7 916 123-45-67"})
        till.compare("identify", {"text": ANNA})
        till.compare("identify", {"text": "89035550001"})

    try:
        calls()
        _delta(till, 2, cards=[{"number": ANNA, "customerId": "c-b", "status": "ACTIVE"}])
        calls()
        _delta(till, 3, removed={"customers": ["c-b"]})
        calls()
        boris = {**snapshot()["customers"][1], "tier": "gold", "phone": "+79161234567"}
        other = {**offers[1], "value": "45", "skus": [BREAD]}
        _delta(till, 4, customers=[boris], offers=[other])
        calls()
        till.compare("checkout", {**body, "receiptId": "c-1", "redeemPoints": 10})
        till.check()
    finally:
        till.close()


def test_a_snapshot_coupon_changed_or_withdrawn_while_a_hold_uses_it(tmp_path: Path) -> None:
    """CONTRACT §3, §11, §13: a hold reserves the snapshot coupon it applied. A delta then
    gives the code to another customer, and another withdraws it; the held receipt sent
    again, quotes with the code (beside the hold, and of another receipt), Confirm, Cancel
    and a new sale with it answer as a fresh agent's."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    offers = [
        {
            "id": "m-cpn",
            "kind": "AMOUNT_OFF",
            "skus": [MILK],
            "value": "3000",
            "couponRequired": True,
        }
    ]
    coupons = [{"code": "CPN1", "offerId": "m-cpn"}, {"code": "CPN2", "offerId": "m-cpn"}]
    till = Till(tmp_path, clock, snapshot(program=_program(), offers=offers, coupons=coupons))
    held = _basket("h-1", clock(), coupons=["CPN1"])
    other = _basket("h-2", clock(), card=BORIS, coupons=["CPN2"])
    try:
        assert till.compare("hold", held)[1]["state"] == "HELD"
        assert till.compare("hold", other)[1]["state"] == "HELD"
        till.compare("quote", {**held, "receiptId": "q-1"})
        _delta(till, 2, coupons=[{"code": "CPN1", "offerId": "m-cpn", "customerId": "c-b"}])
        for body in (held, {**held, "receiptId": "q-2"}, {**held, "card": BORIS}):
            till.compare("quote", body)
        till.compare("hold", held)
        _delta(till, 3, removed={"coupons": ["CPN1", "CPN2"]})
        till.compare("quote", held)
        till.compare("hold", held)
        till.compare("confirm", {"receiptId": "h-1"})
        till.compare("cancel", {"receiptId": "h-2"})
        till.compare("checkout", {**other, "receiptId": "c-1"})
        till.compare("quote", held)
        till.check()
    finally:
        till.close()


def test_the_store_midnight_in_a_zone_of_quarter_hours_is_answered_as_a_fresh_till_answers(
    tmp_path: Path,
) -> None:
    """CONTRACT §2, §5 step 6, §16: the store-day of the offline limit, points that activate
    a day later and a customer's birthday window change at the store's midnight in its
    zone (Asia/Kathmandu, +05:45: not a whole hour from UTC, nor from the till's clock).
    Through that midnight (time passing, then the clock stepped back across it and forward
    again), sales, holds and balances are a fresh agent's."""
    zone = ZoneInfo("Asia/Kathmandu")
    start = datetime(2026, 11, 23, 23, 59, 20, tzinfo=zone)
    clock = SteppingClock(start)
    program = _program(
        timezone="Asia/Kathmandu",
        offlineRedeemLimitPoints=60,
        activationDelayDays=1,
        pointsLifetimeDays=2,
        birthdayWindowDays=0,
    )
    first = snapshot(program=program, offers=_morning_and_tuesday())
    first["customers"][0]["birthday"] = "1990-11-24"
    till = Till(tmp_path, clock, first)
    n = 0

    def round_of_calls() -> None:
        nonlocal n
        n += 1
        now = clock().astimezone(zone)
        till.compare("checkout", _basket(f"c-{n}", now, redeemPoints=25))
        till.compare("hold", _basket(f"h-{n}", now, redeemPoints=-1))
        till.compare("quote", _basket(f"q-{n}", now, redeemPoints=-1, explain=True))
        till.compare("balance", {"card": ANNA, "at": now.isoformat()})

    try:
        round_of_calls()
        clock.passes(30)  # 23:59:50
        round_of_calls()
        clock.passes(15)  # 00:00:05, Tuesday
        round_of_calls()
        clock.stepped(-60)  # NTP: 23:59:05, Monday again
        till.long("quote", _basket("q-step", clock()))  # followed here, by the long-lived one
        round_of_calls()
        till.compare("confirm", {"receiptId": "h-2"})
        clock.stepped(24 * 3600)  # a day forward: the first sales' points are spendable
        till.long("quote", _basket("q-step-2", clock()))
        round_of_calls()
        till.compare("confirm", {"receiptId": "h-3"})  # its time kept: 1800 s, by the steps
        till.compare("status", None)
        till.check()
    finally:
        till.close()


# ---------------------------------------------------------------- the clock's mark, taken by two


def test_a_step_another_thread_saw_first_is_not_followed_twice_by_a_hold_in_its_transaction(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes; the till follows a
    step of its wall clock by moving the open holds (docs/ARCHITECTURE.md, `_clock_mark`).
    A hold that ran out is held again under its receiptId, priced inside its write
    transaction and asking the hub there; NTP set the clock an hour back during that
    request, and `run`'s 15 s hold timer (or a quote) read the clock meanwhile: it took
    the step from the mark and waited for the agent's lock to move the open holds. The
    Hold, finding no step left to follow, made its times on the stepped clock and
    committed; then the timer moved every open hold by the hour, the new one too: it had
    expired at once, and the POS's Confirm after the payment was refused ("hold
    expired"), where a fresh agent's Confirm on the same files would have had it HELD a
    moment before. A step is now taken from the mark only under the agent's lock, by
    whoever moves the holds by it."""
    import threading

    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent
    from tillpoint.sync.authoriser import HubAuthoriser
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = sample_master_data()
    hub = LoopbackHub(tmp_path / "hub", data=data)
    enrollment = hub.enroll("till-1", tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    timer: list[threading.Thread] = []
    agent: Any = None

    class SteppedWhileTheTimerRuns(HubAuthoriser):
        """The hub's real authoriser; during the request the wall clock is set back an hour
        and the hold timer's round starts (on its own thread, as `run`'s does)."""

        def authorise(self, *args: Any, **kwargs: Any) -> Any:
            if not timer:
                clock.stepped(-3600)
                clock.read_by = set()
                timer.append(threading.Thread(target=agent.sweep_holds, daemon=True))
                timer[0].start()
                wait_for(lambda: timer[0].ident in clock.read_by, timeout=10)  # it read it
            return super().authorise(*args, **kwargs)

    authoriser = SteppedWhileTheTimerRuns(link, tmp_path / "till", "till-1", 3.0)
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady, hub=authoriser)
    try:
        timer.append(threading.Thread())  # not during the first hold's request
        program = {**data["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        lines = [{"sku": MILK, "qty": "1", "amountMinor": 500_000}]
        body = sale("h-1", clock(), card=ANNA, redeemPoints=100, lines=lines)
        first = agent.hold(receipt_from_json(body)).to_json()
        assert (first["state"], first["mode"]) == ("HELD", "ONLINE")
        clock.passes(601)  # the hold ran out; the same receipt again
        timer.clear()
        held = agent.hold(receipt_from_json(body)).to_json()
        timer[0].join(timeout=30)
        assert not timer[0].is_alive()
        assert (held["state"], held["redeemedPoints"]) == ("HELD", 100)
        assert datetime.fromisoformat(held["holdExpiresAt"]) == clock() + timedelta(seconds=600)
        clock.passes(60)  # the POS took the payment: Confirm
        confirmed = agent.confirm("h-1").to_json()
        assert (confirmed["state"], confirmed["redeemedPoints"]) == ("CONFIRMED", 100)
        status = agent.status().to_json()
        assert (status["outboxDepth"], status["lastSeq"]) == (1, 1)
    finally:
        agent.close()
        authoriser.close()
        link.close()
        hub.stop()


# ---------------------------------------------------------------- the seeded walk


class Memo34Sequence(HubSequence):
    """Review 31's seeded sequence (a till enrolled with a real hub, its hub going away
    and coming back, deltas, clock steps, holds run out) with the events it left out."""

    ACTIONS = (
        *HubSequence.ACTIONS,
        *["setting"] * 3,
        *["midnight"] * 2,
        *["person"] * 2,
        *["coupon"] * 2,
    )
    ZONES = (
        "Europe/Moscow",
        "Asia/Kamchatka",
        "America/New_York",
        "Asia/Kathmandu",
        "Pacific/Chatham",
    )

    def do(self, action: str) -> None:
        if action in ("setting", "person", "coupon"):
            if not self.hub_up:
                self.do("up")
            self.count(f"action/{action}")
            self.publish(getattr(self, f"{action}_delta")())
            return
        if action == "midnight":
            self.count("action/midnight")
            self.to_midnight()
            return
        super().do(action)

    def delta(self) -> None:
        """Review 31's delta of the hub's data; one that gives a card to a customer this
        walk removed is refused by the hub (nothing imported): the master data as before."""
        from tillpoint.sync.hub_store import ImportRefused

        master = copy.deepcopy(self.master)
        try:
            super().delta()
        except ImportRefused:
            self.master = master
            self.count("delta/refused")

    # ------------------------------------------------------------ the events

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.master["program"]["timezone"])

    def setting_delta(self) -> dict[str, Any]:
        """The program's settings changed, its time zone among them (holdTtlSeconds kept:
        the sequence counts a hold's time with it)."""
        r = self.rng
        program = copy.deepcopy(self.master["program"])
        program.update(
            timezone=r.choice(self.ZONES),
            pointValueMinor=r.choice([100, 100, 50, 10]),
            birthdayWindowDays=r.choice([0, 1, 7]),
            birthdayMultiplier=r.choice(["2", "5"]),
            maxOffersPrinted=r.choice([0, 1, 3]),
            offerPrintCooldownDays=r.choice([0, 7]),
            offlineRedeemLimitPoints=r.choice([50, 500]),
            tiers=[
                {"code": "base", "accrualPercent": r.choice(["3", "1"])},
                {"code": "silver", "accrualPercent": r.choice(["5", "6.5"])},
                {"code": "gold", "accrualPercent": r.choice(["7.5", "10"])},
            ],
        )
        return {"program": program}

    def person_delta(self) -> dict[str, Any]:
        """A customer's birthday (today or tomorrow in the store's zone, or none), favourite
        weekday, phone and points pending until about now; or the customer removed (their
        cards stay: a card of no customer), or brought back."""
        r = self.rng
        now = self.clock().astimezone(self.zone())
        gone: list[dict[str, Any]] = getattr(self, "gone", [])
        self.gone = gone
        roll = r.random()
        if roll < 0.15 and len(self.master["customers"]) > 2:
            c = r.choice(self.master["customers"])
            gone.append(c)
            return {"removed": {"customers": [c["id"]]}}
        c = copy.deepcopy(
            gone.pop() if roll < 0.35 and gone else r.choice(self.master["customers"])
        )
        if r.random() < 0.2:
            c["phone"] = r.choice(["+79161234567", "+79035550001", "+79990000000"])
        day = (now + timedelta(days=r.choice([0, 1, 8]))).date()
        c["birthday"] = r.choice([f"1990-{day:%m-%d}", None])
        if c["birthday"] is None:
            c.pop("birthday")
        c["favoriteWeekday"] = r.choice([now.isoweekday(), (now.isoweekday() % 7) + 1])
        c["pending"] = [
            {
                "points": r.randint(5, 90),
                "activatesAt": (now + timedelta(seconds=r.choice([-30, 20, 400]))).isoformat(),
            }
        ]
        return {"customers": [c]}

    def coupon_delta(self) -> dict[str, Any]:
        """A snapshot coupon changed (its customer, its end) or withdrawn."""
        r = self.rng
        code = f"CPN{r.randrange(12)}"
        if r.random() < 0.3:
            return {"removed": {"coupons": [code]}}
        now = self.clock().astimezone(self.zone())
        row: dict[str, Any] = {"code": code, "offerId": "m-cpn"}
        if r.random() < 0.5:
            row["customerId"] = r.choice(["c-a", "c-b"])
        if r.random() < 0.5:
            row["validTo"] = (now + timedelta(seconds=r.choice([-60, 30, 3600]))).isoformat()
        return {"coupons": [row]}

    def to_midnight(self) -> None:
        """The clock passes to a few seconds before the store's next midnight (its zone's);
        the calls after it cross it."""
        now = self.clock().astimezone(self.zone())
        midnight = datetime.combine(
            now.date() + timedelta(days=1), datetime.min.time(), self.zone()
        )
        seconds = (midnight - now).total_seconds() - self.rng.choice([1, 20, 45])
        if seconds > 0:
            self.clock.passes(seconds)
            if seconds >= self.TTL:
                self.closed |= self.held
                self.held = set()

    def publish(self, doc: dict[str, Any]) -> None:
        """`doc` into the hub's master data, published, and pulled by the till."""
        import grpc
        from tillpoint.sync.loopback import import_doc, wait_for
        from tillpoint.sync.pull import PullInterrupted, cache_version

        keys = {"customers": "id", "coupons": "code"}
        for section, rows in doc.items():
            if section == "program":
                self.master["program"] = rows
            elif section == "removed":
                for part, key in (("coupons", "code"), ("customers", "id")):
                    gone = set(rows.get(part, ()))
                    self.master[part] = [c for c in self.master[part] if c[key] not in gone]
            else:
                key = keys[section]
                kept = [row for row in self.master[section] if row[key] != rows[0][key]]
                self.master[section] = [*kept, *rows]
        if self.trace:
            print("DELTA34", doc)
        import_doc(self.hub.store, doc)
        version = self.hub.publish()

        def pulled() -> bool:
            if self.synced:  # its sync loop pulls it (the hub's notification, or its poll)
                return cache_version(self.data) >= version
            try:  # (the link may still be in its reconnect backoff: tried again)
                self.puller.pull()
            except (grpc.RpcError, PullInterrupted):
                return False
            return cache_version(self.data) >= version

        try:
            wait_for(pulled, timeout=20, every=0.2)
        except TimeoutError:
            self.count("pull/unreached")


def _memo34_walk(tmp_path: Path, seed: int, steps: int, synced: bool = False) -> Memo34Sequence:
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    seq = Memo34Sequence(seed, work, synced)
    print(f"memo34 walk: seed {seed}, {steps} steps (python -m tests.test_review34_memo34 SEED)")
    try:
        for _ in range(steps):
            seq.step()
    finally:
        seq.close()
    return seq


@pytest.mark.slow
@pytest.mark.ci
def test_a_long_lived_till_answers_as_a_fresh_one_through_settings_zones_and_midnights(
    tmp_path: Path,
) -> None:
    """CONTRACT §2, §3, §5, §7, §11, §13, §14, §16: a seeded walk (its seed printed; another
    one from $MEMO34_SEED) over review 31's events and the program's settings and time
    zone changed by deltas while holds are open, the store's midnight, customers'
    birthdays, favourite weekdays and pending points, and snapshot coupons changed or
    withdrawn; every answer compared with a fresh agent's."""
    seed = int(os.environ.get("MEMO34_SEED") or 3401)
    seq = _memo34_walk(tmp_path, seed, 300)
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert seq.compared > 150, seq.counts
    for event in ("setting", "midnight", "person", "coupon"):
        assert seq.counts.get(f"action/{event}", 0) >= 2, seq.counts


def _doors_sequence() -> type:
    """The walk's events through review 32's long-lived `tillpoint run` process (its three
    doors, its own sync loops and hold timer, restarts), each answer compared with a fresh
    process's: what a process keeps (the interpreter's hash seed among it) shows there."""
    from .test_review32_long32 import DoorsSequence

    class Memo34Doors(Memo34Sequence, DoorsSequence):  # type: ignore[misc]
        ACTIONS = (*DoorsSequence.ACTIONS, *Memo34Sequence.ACTIONS[len(HubSequence.ACTIONS) :])

    return Memo34Doors


@pytest.mark.slow
def test_a_long_lived_run_process_answers_as_a_fresh_one_through_settings_and_midnights(
    tmp_path: Path,
) -> None:
    """CONTRACT §2, §5, §7, §13, §14, §16: the walk's events through `tillpoint run`'s doors
    (a seed of its own; another from $MEMO34_SEED)."""
    seed = int(os.environ.get("MEMO34_SEED") or 3402)
    work = tmp_path / "work"
    work.mkdir()
    print(f"memo34 doors walk: seed {seed}")
    seq = _doors_sequence()(seed, work)
    try:
        for _ in range(40):
            seq.step()
    finally:
        seq.close()
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert seq.compared > 20, seq.counts


if __name__ == "__main__":  # python -m tests.test_review34_memo34 SEED [STEPS]
    import json
    import sys
    import tempfile
    import time

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as where:
        steps = int(sys.argv[2]) if len(sys.argv) > 2 else 160
        s = _memo34_walk(Path(where), int(sys.argv[1]), steps, "synced" in sys.argv[3:])
    print(f"{s.compared} compared, {len(s.mismatches)} mismatches, {time.monotonic() - t0:.1f} s")
    print(json.dumps(s.counts, sort_keys=True))
    for m in s.mismatches[:10]:
        print("MISMATCH", m)
