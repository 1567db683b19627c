"""Review 30 (memo30): state a long-lived till keeps across calls, against a fresh agent.

One agent behind its HTTP interface (`HttpServer`, as `tillpoint run` serves it) lives
through an event that should change or invalidate something it keeps between calls (its
per-version memos, an open receipt's product rows, a customer's personal offers, its
reader connections, the wall clock's mark); before each call after the event the data
directory is copied and a FRESH agent on the copy, with the same clock, answers the same
call: the two answers must be equal, every field (docs/CONTRACT.md §3, §5, §11, §16).

What the earlier differentials (bench/difflong.py, tests/test_review26_long26.py) do not
cover and these do: the till's shipped clock handling (a wall clock with the seconds that
pass beside it, so that a step of the wall clock is followed: those ran with a test clock,
which switches that off), a receipt priced again as items are scanned through deltas that
remove and bring back its products and categories, a customer with more personal offers
than are parsed on first sight (parsed as receipts need them), a full snapshot switched
in by another process while idle reader connections wait, and a store in a zone with
daylight saving across its autumn change.

Fields that legitimately differ between the two answers: none. The one moment a fresh
agent cannot answer as the long-lived one is the first call after a step of the wall
clock (the long-lived agent follows the step at that call; a fresh one has seen no step):
that call is made on the long-lived agent alone, and every call after it is compared.
"""

from __future__ import annotations

import copy
import http.client
import json
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from bench import difflong as dl

from .conftest import SteppingClock, snapshot

DEVICE = "till-1"
MILK, BREAD, CHEESE = "4601234000017", "4601234000024", "4601234000055"
ANNA, BORIS = "2770000000017", "2770000000024"


class Till:
    """The long-lived agent behind its HTTP interface, and a fresh one on a copy."""

    def __init__(self, work: Path, clock: SteppingClock, first: dict[str, Any]) -> None:
        from tillpoint.agent.http_api import HttpServer

        self.work = work
        self.data = work / "data"
        self.clock = clock
        loader = Agent(self.data, DEVICE, clock=clock)
        try:
            loader.load_snapshot(first)
        finally:
            loader.close()
        # as `agent/app.py` wires a till: its clock with the seconds that pass beside it
        self.agent = Agent(self.data, DEVICE, clock=clock, monotonic=clock.steady)
        self.server = HttpServer(self.agent, "127.0.0.1:0")
        self.server.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        self.mismatches: list[str] = []
        self.compared = 0

    def close(self) -> None:
        self.conn.close()
        self.server.stop()
        self.agent.close()

    def long(self, call: str, body: Any) -> tuple[str, Any]:
        """The call on the long-lived agent, over HTTP: ("ok", doc) or ("error", (code, msg))."""
        if call == "status":
            self.conn.request("GET", "/v1/status")
        else:
            raw = json.dumps(body, ensure_ascii=False).encode()
            self.conn.request("POST", f"/v1/{call}", raw, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        doc = json.loads(resp.read())
        if resp.status != 200:
            return "error", (doc["error"]["code"], doc["error"]["message"])
        return "ok", doc

    def fresh(self, copy_dir: Path, call: str, body: Any) -> tuple[str, Any]:
        dl.clear_module_caches()
        moment = self.clock()
        agent = Agent(copy_dir, DEVICE, clock=lambda: moment)
        try:
            if call == "status":
                from tillpoint.agent.wire import status_json

                return "ok", status_json(agent.status())
            return dl.answer_of(agent, call, body, "http")
        finally:
            agent.close()

    def compare(self, call: str, body: Any = None) -> tuple[str, Any]:
        """The call on the long-lived agent and on a fresh one on a copy made just before."""
        copy_dir = self.work / "copy"
        dl.copy_state(self.data, copy_dir)
        got = self.long(call, body)
        want = self.fresh(copy_dir, call, body)
        self.compared += 1
        if got != want:
            self.mismatches.append(
                json.dumps(
                    {
                        "call": call,
                        "clock": self.clock().isoformat(),
                        "body": body,
                        "diff": dl.diff(got, want) or [f"long={got} fresh={want}"],
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )
        return got

    def load(self, snap: dict[str, Any]) -> None:
        """A snapshot applied by another process (`tillpoint snapshot load`, a sync)."""
        other = Agent(self.data, DEVICE, clock=self.clock)
        try:
            other.load_snapshot(snap)
        finally:
            other.close()

    def check(self) -> None:
        assert not self.mismatches, "\n".join(self.mismatches[:5])


def sale(rid: str, at: datetime, card: str = ANNA, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": at.isoformat(),
        "card": card,
        "lines": [{"sku": MILK, "qty": "2", "priceMinor": 8990}],
        "redeemPoints": 0,
    }
    body.update(changes)
    return body


# ---------------------------------------------------------------- the wall clock stepped


def test_after_the_wall_clock_is_stepped_the_till_answers_as_a_fresh_one(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11: a hold lives `holdTtlSeconds` of time that passes. The till
    follows a step of its wall clock (open holds keep their time left); after it has,
    every answer (a quote of the held basket, the Hold sent again with its
    `holdExpiresAt`, Balance, status, Confirm, Cancel, a new Checkout) is a fresh agent's
    on the same data, back and forward, across the store's midnight."""
    start = datetime.fromisoformat("2026-11-23T23:40:00+03:00")
    clock = SteppingClock(start)
    till = Till(tmp_path, clock, snapshot(program={**snapshot()["program"], "holdTtlSeconds": 600}))
    try:
        a = sale("h-1", start, redeemPoints=30)
        b = sale("h-2", start, card=BORIS, redeemPoints=10)
        assert till.compare("hold", a)[1]["state"] == "HELD"
        assert till.compare("hold", b)[1]["state"] == "HELD"
        clock.passes(120)
        till.compare("quote", a)

        clock.stepped(-3600)  # NTP sets the clock an hour back: 22:42 again
        till.long("quote", sale("q-0", clock()))  # followed here, by the long-lived one
        clock.passes(5)
        for call, body in (
            ("quote", a),
            ("hold", a),
            ("hold", b),
            ("balance", {"card": ANNA, "at": clock().isoformat()}),
            ("status", None),
        ):
            till.compare(call, body)
        held = till.long("hold", a)[1]
        # the hold keeps its time left: 600 - 120 - 5 s, by the stepped clock
        assert datetime.fromisoformat(held["holdExpiresAt"]) == clock() + timedelta(seconds=475)

        clock.passes(400)
        assert till.compare("confirm", {"receiptId": "h-1"})[1]["state"] == "CONFIRMED"

        clock.stepped(2 * 3600)  # and two hours forward: past the store's midnight
        till.long("status", None)  # (status does not follow a step: nothing to compare)
        till.long("quote", sale("q-1", clock()))
        clock.passes(5)
        assert till.compare("hold", b)[1]["state"] == "HELD"  # 70 s left of its 600
        till.compare("quote", b)
        till.compare("checkout", sale("c-1", clock(), redeemPoints=-1))
        till.compare("balance", {"card": ANNA, "at": clock().isoformat()})
        till.compare("balance", {"card": BORIS, "at": clock().isoformat()})
        assert till.compare("cancel", {"receiptId": "h-2"})[1]["state"] == "CANCELLED"
        clock.passes(80)
        till.compare("hold", b)
        till.compare("status", None)
        till.check()
    finally:
        till.close()


# ---------------------------------------------------------------- memos through deltas


def _personal(n: int) -> list[dict[str, Any]]:
    """Анна's personal offers: more than the ones parsed on first sight (12), each aimed at
    a SKU or a category her receipts have, some at the receipt."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        offer: dict[str, Any] = {
            "id": f"p-{i:02d}",
            "customerId": "c-a",
            "kind": "PERCENT_OFF",
            "value": str(3 + i),
            "priority": 10 + i,
            "rank": i,
        }
        if i % 4 == 0:
            offer["skus"] = [MILK]
        elif i % 4 == 1:
            offer["categories"] = ["bakery"]
        elif i % 4 == 2:
            offer["categories"] = ["food"]
        else:
            offer.update(kind="EXTRA_POINTS", minTotalMinor=1000, value=str(i))
        out.append(offer)
    return out


def test_a_receipt_scanned_through_deltas_is_priced_as_a_fresh_till_prices_it(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §3, §5: a delta replaces whole rows and removes keys; the next call
    prices from the new version. The till keeps an open receipt's product rows (and the
    SKUs that are none), a customer's personal offers (parsed as receipts need them past
    12), the mass offers' index and the category tree between calls: each quote of the
    growing receipt after each delta (a product removed, brought back in another
    category, excluded; a category moved; a personal offer changed and removed; a full
    snapshot switched in by another process while idle reader connections wait) is a
    fresh agent's."""
    start = datetime.fromisoformat("2026-11-23T10:00:00+03:00")
    clock = SteppingClock(start)
    first = snapshot()
    first["offers"] = [
        *_personal(15),
        {"id": "m-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "4"},
        {"id": "m-bread", "kind": "AMOUNT_OFF", "skus": [BREAD], "value": "500"},
    ]
    till = Till(tmp_path, clock, first)
    version = 1

    def delta(**rows: Any) -> None:
        nonlocal version
        version += 1
        doc: dict[str, Any] = {"version": version, "baseVersion": version - 1}
        doc.update(rows)
        till.load(doc)

    lines: list[dict[str, Any]] = []

    def scan(sku: str, qty: str = "1", price: int = 10000) -> None:
        lines.append({"sku": sku, "qty": qty, "priceMinor": price})
        body = sale("open-1", clock(), lines=lines, redeemPoints=-1, explain=len(lines) % 2 == 0)
        till.compare("quote", body)
        till.compare("quote", {**body, "receiptId": "open-2", "card": BORIS})

    try:
        scan(MILK)
        scan(BREAD)
        scan("4601234099999")  # no product (yet)
        delta(removed={"products": [MILK]})
        till.compare("status", None)
        scan(CHEESE)
        delta(
            products=[
                {"sku": MILK, "name": "Молоко", "category": "bakery"},
                {"sku": "4601234099999", "name": "Новинка", "category": "dairy"},
            ]
        )
        scan(BREAD, "2", 6500)
        delta(
            products=[
                {"sku": CHEESE, "name": "Сыр", "category": "dairy", "excludedFromLoyalty": True}
            ]
        )
        scan(MILK, "3", 8990)
        delta(categories=[{"code": "bakery", "name": "Хлеб"}])  # no longer under food
        scan(CHEESE, "0.5", 99000)
        changed = copy.deepcopy(first["offers"][4])
        changed.update(value="50", skus=[CHEESE, "4601234099999"], categories=[])
        delta(offers=[changed], removed={"offers": ["p-00", "p-01", "m-bread"]})
        scan(BREAD)

        # two quotes at once: two idle reader connections kept, then a full snapshot
        # switched in by another process
        body = sale("open-1", clock(), lines=lines, redeemPoints=-1)
        other = Till.__new__(Till)  # a second HTTP connection to the same server
        other.conn = http.client.HTTPConnection("127.0.0.1", till.server.port, timeout=30)
        done: list[Any] = []
        side = threading.Thread(target=lambda: done.append(other.long("quote", body)))
        side.start()
        till.long("quote", body)
        side.join()
        other.conn.close()
        assert done and done[0][0] == "ok"
        version += 1
        full = snapshot(version=version, issuedAt="2026-11-23T06:00:00Z")
        full["offers"] = [
            *_personal(13)[3:],
            {"id": "m-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "9"},
        ]
        till.load(full)
        scan(MILK)
        scan("4601234099999")  # no product again
        till.compare("hold", sale("open-1", clock(), lines=lines, redeemPoints=-1))
        till.compare("confirm", {"receiptId": "open-1"})
        till.compare("status", None)
        till.check()
        assert till.compared >= 20
    finally:
        till.close()


def test_after_a_reset_the_same_version_number_is_priced_from_the_new_data(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §3, §9: versions only grow, so the agent's memos are keyed by the
    version; a reset (the one way back to version 0) forgets the cache, and the next
    snapshot may carry a version number the agent has seen with other data. Quotes on
    the same agent (its reader connections kept) after the reset price from the new data,
    as a fresh agent does."""
    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    first = snapshot(offers=[{"id": "m-1", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"}])
    till = Till(tmp_path, clock, first)
    try:
        body = sale("z-1", clock(), lines=[{"sku": MILK, "qty": "2", "priceMinor": 8990}])
        before = till.compare("quote", body)
        assert before[1]["lines"][0]["discountMinor"] == 1798
        till.agent.reset(force=True)
        again = snapshot(
            issuedAt="2026-11-23T05:00:00Z",
            offers=[{"id": "m-1", "kind": "PERCENT_OFF", "categories": ["food"], "value": "30"}],
            products=[{"sku": MILK, "name": "Молоко", "category": "bakery"}],
        )
        till.load(again)  # version 1 again, other data
        after = till.compare("quote", body)
        assert after[1]["lines"][0]["discountMinor"] == 5394
        till.compare("quote", {**body, "receiptId": "z-2", "explain": True})
        till.compare("checkout", body)
        till.compare("status", None)
        till.check()
    finally:
        till.close()


# ---------------------------------------------------------------- a daylight-saving store


def test_a_store_through_its_autumn_clock_change_is_answered_as_a_fresh_till_answers(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §2, §5 step 6, §14, §16: business time is the store's local time
    (here Europe/Berlin, whose clocks go back from 03:00 to 02:00 on 25 October 2026).
    Through that night, sales, holds, balances and the offline limit of each store-day
    (points that activate a day later at the same local wall-clock time, expire two days
    after, an offer of the hours 02:00-03:00 and one of Sundays) answer as a fresh till."""
    zone = "Europe/Berlin"
    start = datetime.fromisoformat("2026-10-24T23:50:00+02:00")
    clock = SteppingClock(start)
    program = {
        **snapshot()["program"],
        "timezone": zone,
        "activationDelayDays": 1,
        "pointsLifetimeDays": 2,
        "holdTtlSeconds": 1800,
        "offlineRedeemLimitPoints": 60,
    }
    first = snapshot(program=program)
    first["offers"] = [
        {
            "id": "m-night",
            "kind": "PERCENT_OFF",
            "skus": [MILK],
            "value": "10",
            "hours": [{"from": "02:00", "to": "03:00"}],
        },
        {
            "id": "m-sunday",
            "kind": "BONUS_MULTIPLIER",
            "categories": ["food"],
            "value": "2",
            "weekdays": [7],
        },
    ]
    till = Till(tmp_path, clock, first)
    n = 0

    def round_of_calls() -> None:
        nonlocal n
        n += 1
        now = clock().astimezone(ZoneInfo(zone))  # as the store's POS stamps it
        till.compare("quote", sale(f"q-{n}", now, card=BORIS, redeemPoints=-1))
        till.compare("balance", {"card": ANNA, "at": now.isoformat()})
        till.compare("checkout", sale(f"c-{n}", now, redeemPoints=25))
        till.compare("hold", sale(f"h-{n}", now, card=BORIS, redeemPoints=-1))

    try:
        round_of_calls()  # Saturday 23:50 CEST
        clock.passes(20 * 60)  # Sunday 00:10
        round_of_calls()
        clock.passes(2 * 3600)  # 02:10 CEST
        round_of_calls()
        clock.passes(3600)  # 02:10 again: CET
        assert clock().astimezone(ZoneInfo(zone)).strftime("%H:%M%z") == "02:10+0100"
        round_of_calls()
        till.compare("confirm", {"receiptId": "h-3"})  # held at 02:10 CEST, an hour ago
        till.compare("cancel", {"receiptId": "h-4"})
        clock.passes(24 * 3600)  # Monday 02:10: the first sales' points are spendable
        round_of_calls()
        for day in (25, 27):  # balances through the night, and after the expiry
            for hour in ("01:30:00+02:00", "02:30:00+02:00", "02:30:00+01:00", "03:30:00+01:00"):
                moment = f"2026-10-{day}T{hour}"
                till.compare("balance", {"card": ANNA, "at": moment})
        till.compare("status", None)
        till.check()
    finally:
        till.close()


# ---------------------------------------------------------------- a printer coming back


def _next_visit(offer_id: str, rank: int, **changes: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "id": offer_id,
        "campaignId": f"camp-{offer_id}",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": [CHEESE],
        "value": "20",
        "validFrom": "2026-11-20T00:00:00+03:00",
        "validTo": "2026-12-31T23:59:59+03:00",
        "rank": rank,
        "printable": True,
        "printText": f"Предложение {offer_id}",
    }
    offer.update(changes)
    return offer


def test_a_coupon_waiting_for_the_printer_leaves_off_what_a_delta_withdrew(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §3, §7: a sale picks the customer's printable offers for the next
    visit, and a job waits in the queue while the printer is off. The hub withdrew one of
    them meanwhile (a delta removes it), stopped another from printing (`printable`
    false) and ended a third earlier: when the printer came back the coupon still
    printed all three as the sale saw them, offers this till no longer gives, with the
    old end date. Now the worker of `tillpoint run` prints what the snapshot still offers,
    to the earlier of the two ends; a job left with nothing is not printed, and says why."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import PrintWorker
    from tillpoint.printer.virtual import VirtualPrinter

    from .conftest import receipt

    now = datetime.fromisoformat("2026-11-23T10:20:00+03:00")
    data = tmp_path / "data"
    agent = Agent(data, DEVICE, clock=lambda: now)
    offers = [
        _next_visit("o-keep", 1),
        _next_visit("o-gone", 2),
        _next_visit("o-quiet", 3),
        _next_visit("o-short", 4),
    ]
    try:
        agent.load_snapshot(snapshot(offers=offers))
        sale = agent.checkout(receipt_from_json(receipt("r1"))).to_json()
        assert sale["printedOffers"] == ["o-keep", "o-gone", "o-quiet", "o-short"]
        lone = {**offers[0], "id": "o-lone", "customerId": "c-b", "rank": 1}
        agent.load_snapshot(snapshot(version=2, offers=[*offers, lone]))  # Борис's
        other = agent.checkout(receipt_from_json(receipt("r2", card=BORIS)))
        assert other.to_json()["printedOffers"] == ["o-lone"]
        # the printer is off; the hub's delta arrives
        quiet = {**offers[2], "printable": False}
        short = {**offers[3], "validTo": "2026-11-30T23:59:59+03:00"}
        agent.load_snapshot(
            {
                "version": 3,
                "baseVersion": 2,
                "offers": [quiet, short],
                "removed": {"offers": ["o-gone", "o-lone"]},
            }
        )
        with VirtualPrinter() as printer:
            config = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
            worker = PrintWorker(
                data / "ledger.db", config, clock=lambda: now, offers_now=agent.offers_on_paper
            )
            try:
                assert worker.run_once() == 0
                assert worker.run_once() == 0
                (paper,) = printer.wait_for(1)
                assert paper.codes == ["TP1-o-keep", "TP1-o-short"]
                assert "по 30.11.2026" in paper.text and "по 31.12.2026" in paper.text
                lone_job = worker.job("r2")
                assert lone_job is not None and lone_job["state"] == "FAILED"
                assert lone_job["last_error"] == (
                    "every offer was withdrawn by the hub or ended before the printer was"
                    " back: not printed"
                )
            finally:
                worker.close()
    finally:
        agent.close()


@pytest.mark.slow
def test_run_prints_a_waiting_coupon_without_the_offer_a_delta_withdrew(tmp_path: Path) -> None:
    """docs/CONTRACT.md §7 through `tillpoint run` and a port-9100 printer that is off at
    the sale: a delta withdraws one of the two offers picked (another process loads it),
    the printer comes on, and the coupon prints the other one only."""
    from tillpoint.printer.virtual import VirtualPrinter

    from .conftest import free_port, receipt
    from .test_review25_print25 import _Till

    data = tmp_path / "data"
    seed = Agent(data, DEVICE)
    seed.load_snapshot(snapshot(offers=[_next_visit("o-keep", 1), _next_visit("o-gone", 2)]))
    seed.close()
    printer_port = free_port()  # nothing listens: the printer is off
    till = _Till(tmp_path, data, printer_port)
    try:
        code, sale = till.call("POST", "/v1/checkout", receipt("r1"))
        assert (code, sale["printedOffers"]) == (200, ["o-keep", "o-gone"])
        status = till.status_until(lambda s: s["printerState"] == "OFFLINE")
        assert status["printQueueDepth"] == 1
        other = Agent(data, DEVICE)  # `tillpoint snapshot load` beside `run`
        try:
            other.load_snapshot({"version": 2, "baseVersion": 1, "removed": {"offers": ["o-gone"]}})
        finally:
            other.close()
        with VirtualPrinter(port=printer_port) as printer:
            (paper,) = printer.wait_for(1, timeout_s=15)
            assert paper.codes == ["TP1-o-keep"]
            assert "Предложение o-gone" not in paper.text
            status = till.status_until(lambda s: s["printQueueDepth"] == 0)
            assert (status["printerState"], status["printQueueDepth"]) == ("OK", 0)
    finally:
        till.stop()


def test_a_hold_placed_while_the_wall_clock_is_stepped_keeps_its_whole_time(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §11: a hold lives `holdTtlSeconds` of time that passes. A till with
    a hub asks it for the points while it prices a Hold (up to 300 ms); NTP set the clock
    an hour back during that request. The hold's expiry was worked out on the new clock,
    and the till followed the step at its next call, moving the open holds, this one too:
    an hour off, it had expired at once ("hold expired" at Confirm, the payment taken).
    Now the step is followed before the hold's times are made, so they keep its TTL."""
    from tillpoint.sync.authoriser import HubAuthoriser
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = sample_master_data()
    hub = LoopbackHub(tmp_path / "hub", data=data)
    enrollment = hub.enroll(DEVICE, tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    steps = [-3600.0]

    class SteppedDuringTheRequest(HubAuthoriser):
        """The hub's real authoriser; the wall clock is set back while it asks."""

        def authorise(self, *args: Any, **kwargs: Any) -> Any:
            if steps:
                clock.stepped(steps.pop())
            return super().authorise(*args, **kwargs)

    authoriser = SteppedDuringTheRequest(link, tmp_path / "till", DEVICE, 3.0)
    agent = Agent(tmp_path / "till", DEVICE, clock=clock, monotonic=clock.steady, hub=authoriser)
    try:
        program = {**data["program"], "holdTtlSeconds": 1800}
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        lines = [{"sku": MILK, "qty": "1", "amountMinor": 500_000}]
        body = sale("h-1", clock(), card="2770000000017", redeemPoints=100, lines=lines)
        held = agent.hold(receipt_from_json(body)).to_json()
        assert (held["state"], held["mode"], held["redeemedPoints"]) == ("HELD", "ONLINE", 100)
        expires = datetime.fromisoformat(held["holdExpiresAt"])
        assert expires == clock() + timedelta(seconds=1800)  # on the stepped clock

        clock.passes(60)
        agent.quote(receipt_from_json(sale("q-1", clock())))  # no step since: nothing moves
        again = agent.hold(receipt_from_json(body)).to_json()
        assert (again["state"], again["holdExpiresAt"]) == ("HELD", held["holdExpiresAt"])
        confirmed = agent.confirm("h-1").to_json()
        assert (confirmed["state"], confirmed["redeemedPoints"]) == ("CONFIRMED", 100)
    finally:
        agent.close()
        authoriser.close()
        link.close()
        hub.stop()
