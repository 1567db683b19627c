"""Review 22 (rev22): a second reading of the changes since dd790b9, with real parts."""

from __future__ import annotations

from pathlib import Path

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.layout import offers_blocks, render_escpos
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.profiles import resolve_profile

from .conftest import receipt, snapshot

FOREVER = {
    "id": "o-forever",
    "campaignId": "camp-f",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000024"],
    "value": "20",
    # "never ends", as a hub may write it: the last second RFC 3339 can name, in UTC
    "validTo": "9999-12-31T23:59:59Z",
    "rank": 1,
    "printable": True,
    "printText": "Скидка на хлеб",
}


def _printed_text(agent: Agent) -> str:
    (payload,) = agent._ledger.execute("SELECT payload FROM print_jobs").fetchone()
    data = render_escpos(offers_blocks(parse_payload(payload)), resolve_profile(PrinterConfig()))
    return data.decode("cp866", errors="replace")


def test_an_offer_valid_to_the_end_of_time_prints_and_the_sale_stands(tmp_path: Path) -> None:
    """The coupon's times are turned to the store's zone (out22); an offer that ends at
    9999-12-31T23:59:59Z is past year 9999 in Moscow: `astimezone` raised OverflowError
    inside the checkout, and the sale failed ("internal error") for a coupon's date."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(
        snapshot(offers=[FOREVER, {**FOREVER, "id": "o-cpn", "rank": 2, "issueCoupon": True}])
    )
    result = agent.checkout(receipt_from_json(receipt(at="2026-11-23T07:15:00Z")))
    assert result.state == "CONFIRMED"
    assert result.to_json()["printedOffers"] == ["o-forever", "o-cpn"]
    paper = _printed_text(agent)
    assert "Чек r1, 23.11.2026 10:15" in paper  # the sale's time is still the store's
    assert "31.12.9999" in paper  # the bound as written: no later day exists
    agent.close()
