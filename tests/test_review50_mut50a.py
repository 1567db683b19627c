"""Review 50 (mut50a): the rules of the pricing arithmetic that a mutation run found
untested, and a waiting coupon's offer the hub turned into a mass offer.

Each test pins a rule of the contract (docs/CONTRACT.md §5, §7, §15) with figures worked
out by hand from the rule's words, not from running the code; its docstring names the
mutant of `agent/pricing.py` that survived the tests chosen for the run
(docs/DECISIONS.md, "Review 50 (mut50a)", lists every survivor).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

CHEESE = "4601234000055"  # dairy (food)


def _next_visit(offer_id: str, rank: int) -> dict[str, Any]:
    """A personal, printable offer of c-a (Анна, card 2770000000017) for her next visit."""
    return {
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


# ------------------------------------------------- §7: a waiting coupon's offer made mass


def test_a_waiting_coupons_offer_the_hub_made_a_mass_offer_is_left_off(tmp_path: Path) -> None:
    """CONTRACT §7: the coupon carries "personal printable offers of this customer" (a
    mass offer is never printed, review 30), and a job that waited for the printer prints
    what the snapshot still offers when the printer takes it. A delta that turned o-a
    into a mass offer (its `customerId` dropped) while the coupon waited: o-a is no
    longer an offer of Анна's own, so it is left off and o-b prints alone. It printed
    (`may_go_on_paper`'s `return True` for an offer with no customer, review 49's one
    survivor left), also for a customer in the control group of the offer's campaign."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import PrintWorker, list_jobs
    from tillpoint.printer.virtual import VirtualPrinter

    now = datetime.fromisoformat("2026-11-23T10:20:00+03:00")
    data = tmp_path / "data"
    agent = Agent(data, "till-1", clock=lambda: now)
    offers = [_next_visit("o-a", 1), _next_visit("o-b", 2)]
    try:
        agent.load_snapshot(snapshot(offers=offers))
        sale = agent.checkout(receipt_from_json(receipt("r1"))).to_json()
        assert sale["printedOffers"] == ["o-a", "o-b"]
        mass = {k: v for k, v in offers[0].items() if k != "customerId"}
        agent.load_snapshot({"version": 2, "baseVersion": 1, "offers": [mass]})
        assert list(agent.offers_on_paper(["o-a", "o-b"]) or {}) == ["o-b"]
        with VirtualPrinter() as printer:
            config = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
            worker = PrintWorker(
                data / "ledger.db", config, clock=lambda: now, offers_now=agent.offers_on_paper
            )
            try:
                assert worker.run_once() == 0
                (paper,) = printer.wait_for(1)
                assert paper.codes == ["TP1-o-b"]
            finally:
                worker.close()
        (job,) = list_jobs(data / "ledger.db", "r1", include_done=True)
        assert job["state"] == "DONE", job
        # the sale stays as it was made: both offers picked, their cooldown started
        assert agent.checkout(receipt_from_json(receipt("r1"))).to_json()["printedOffers"] == [
            "o-a",
            "o-b",
        ]
    finally:
        agent.close()
