"""Review 31 (long31): a long-lived till prices like a fresh one, through outages, clock
steps and deltas.

A till runs one `tillpoint run` that a POS calls thousands of times a day. What that
process keeps between calls (docs/ARCHITECTURE.md, "What a long-lived agent keeps
between calls") must never make an answer differ from a fresh agent's on the same data
directory (docs/CONTRACT.md §5, §7, §9, §11, §13, §16). These tests first pin the two
leftovers review 30 named, then drive one long-lived agent, enrolled with a real hub (gRPC
on loopback, mTLS, the shipped retry and backoff settings) that goes away and comes back,
with seeded random sequences, and compare each answer with a fresh agent's on a copy of
the data directory made just before the call.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

DEVICE = "till-1"
MILK = "4601234000017"
ANNA = "2770000000017"


class Clock:
    """A wall clock and the seconds that pass beside it (what `tillpoint run` reads: the
    system clock and CLOCK_BOOTTIME), both moved by the test."""

    def __init__(self, t: datetime) -> None:
        self.t = t
        self.s = 1000.0

    def __call__(self) -> datetime:
        return self.t

    def steady(self) -> float:
        return self.s

    def passes(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.s += seconds

    def stepped(self, seconds: float) -> None:
        """The wall clock set (NTP, an operator) by `seconds`; no time passes."""
        self.t += timedelta(seconds=seconds)


def _sale(rid: str, at: datetime, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": at.isoformat(),
        "card": ANNA,
        "lines": [{"sku": MILK, "qty": "1", "amountMinor": 500_000}],
        "redeemPoints": 100,
    }
    body.update(changes)
    return body


# ---------------------------------------------------------------- leftover 1: a re-held receipt


def test_a_receipt_held_again_after_expiry_keeps_its_whole_time_across_a_clock_step(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes, and a hold that
    expired is priced and held afresh under the same receiptId. That second Hold is priced
    inside its write transaction (the receipt is known), asking the hub there; NTP set the
    clock an hour back during that request. The new hold's expiry was made on the stepped
    clock, and the next call followed the step by moving the open holds, this one too: an
    hour off, it had expired at once, and the POS's Confirm after the payment was refused
    ("hold expired"). Review 30 fixed this for a receipt priced before its transaction
    only."""
    from tillpoint.sync.authoriser import HubAuthoriser
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    clock = Clock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    data = sample_master_data()
    hub = LoopbackHub(tmp_path / "hub", data=data)
    enrollment = hub.enroll(DEVICE, tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    steps: list[float] = []

    class SteppedDuringTheRequest(HubAuthoriser):
        """The hub's real authoriser; the wall clock is set back while it asks."""

        def authorise(self, *args: Any, **kwargs: Any) -> Any:
            if steps:
                clock.stepped(steps.pop())
            return super().authorise(*args, **kwargs)

    authoriser = SteppedDuringTheRequest(link, tmp_path / "till", DEVICE, 3.0)
    agent = Agent(tmp_path / "till", DEVICE, clock=clock, monotonic=clock.steady, hub=authoriser)
    try:
        program = {**data["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        body = _sale("h-1", clock())
        first = agent.hold(receipt_from_json(body)).to_json()
        assert (first["state"], first["mode"], first["redeemedPoints"]) == ("HELD", "ONLINE", 100)
        clock.passes(601)  # the hold ran out (the POS took long); the same receipt again
        steps.append(-3600.0)
        held = agent.hold(receipt_from_json(body)).to_json()
        assert (held["state"], held["redeemedPoints"]) == ("HELD", 100)
        assert datetime.fromisoformat(held["holdExpiresAt"]) == clock() + timedelta(seconds=600)

        clock.passes(60)
        agent.quote(receipt_from_json(_sale("q-1", clock(), redeemPoints=0)))
        again = agent.hold(receipt_from_json(body)).to_json()
        assert (again["state"], again["holdExpiresAt"]) == ("HELD", held["holdExpiresAt"])
        confirmed = agent.confirm("h-1").to_json()
        assert (confirmed["state"], confirmed["redeemedPoints"]) == ("CONFIRMED", 100)
    finally:
        agent.close()
        authoriser.close()
        link.close()
        hub.stop()


# ---------------------------------------------------------------- leftover 2: a waiting coupon


def _next_visit(offer_id: str, rank: int, **changes: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "id": offer_id,
        "campaignId": f"camp-{offer_id}",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": ["4601234000055"],
        "value": "20",
        "validFrom": "2026-11-20T00:00:00+03:00",
        "validTo": "2026-12-31T23:59:59+03:00",
        "rank": rank,
        "printable": True,
        "printText": f"Предложение {offer_id}",
    }
    offer.update(changes)
    return offer


def test_a_waiting_coupon_prints_what_a_fresh_pick_would_give_after_a_delta(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: a sale picks the customer's printable offers "not of a campaign where
    the customer is in the control group", each "printed with its text"; a job waits while
    the printer is off, and it prints what the snapshot still offers when the printer takes
    it. Meanwhile the hub put the customer in the control group of one offer's campaign and
    reworded another (`printText`). The coupon still printed the control-group offer (what
    the hub holds back from that customer to measure the campaign) and the old words; a
    Confirm after the same delta (review 30) already picked neither. Now the worker leaves
    the control-group offer off and prints the words the snapshot has now."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import PrintWorker
    from tillpoint.printer.virtual import VirtualPrinter

    from .conftest import receipt, snapshot

    now = datetime.fromisoformat("2026-11-23T10:20:00+03:00")
    data = tmp_path / "data"
    agent = Agent(data, DEVICE, clock=lambda: now)
    offers = [_next_visit("o-keep", 1), _next_visit("o-ctl", 2), _next_visit("o-new", 3)]
    try:
        first = snapshot(offers=offers)
        agent.load_snapshot(first)
        sale = agent.checkout(receipt_from_json(receipt("r1"))).to_json()
        assert sale["printedOffers"] == ["o-keep", "o-ctl", "o-new"]
        anna = {**first["customers"][0], "controlGroups": ["camp-o-ctl"]}
        reworded = {**offers[2], "printText": "Новые слова"}
        agent.load_snapshot(
            {"version": 2, "baseVersion": 1, "customers": [anna], "offers": [reworded]}
        )
        with VirtualPrinter() as printer:
            config = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
            worker = PrintWorker(
                data / "ledger.db", config, clock=lambda: now, offers_now=agent.offers_on_paper
            )
            try:
                assert worker.run_once() == 0
                (paper,) = printer.wait_for(1)
                assert paper.codes == ["TP1-o-keep", "TP1-o-new"]
                assert "Новые слова" in paper.text
                assert "Предложение o-new" not in paper.text
                assert "Предложение o-ctl" not in paper.text
            finally:
                worker.close()
    finally:
        agent.close()
