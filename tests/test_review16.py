"""Faults found in session 16's audits and re-reads, each with the test that failed before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent, Conflict
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.sync.loopback import receipt as sync_receipt

from .conftest import receipt, snapshot
from .test_coupons import COUPONS, snap
from .test_coupons import receipt as coupon_receipt

MILK = "4601234000017"


def test_multipliers_under_the_birthday_one_are_all_beaten_by_it(tmp_path: Path) -> None:
    """×2 and ×3 on the customer's birthday (×5): the line earns ×5, so both rows say
    BEATEN by `birthdayMultiplier`; the ×2 said BEATEN by the ×3, which gave nothing."""
    offers = [
        {"id": f"o-m{v}", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": v}
        for v in ("2", "3")
    ]
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=offers))  # c-a's birthday is in the window
        sale = agent.quote(receipt_from_json(receipt("r-1", explain=True))).to_json()
        rows = {r["offerId"]: r for r in sale["trace"]["lines"][0]["offers"]}
        for offer in ("o-m2", "o-m3"):
            assert (rows[offer]["outcome"], rows[offer]["beatenBy"]) == (
                "BEATEN",
                "birthdayMultiplier",
            ), rows
    finally:
        agent.close()


def test_status_says_the_mode_the_till_prices_in_at_once(tmp_path: Path) -> None:
    """The hub goes away: the next sale is OFFLINE, and so is `status` right then. It
    said ONLINE (the sync loop's last record) until the loop's next exchange, and at
    start OFFLINE while holds were already answered ONLINE."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till")
    try:
        wait_for(lambda: till.agent.status().cache_version >= 1)
        card = sample_master_data()["cards"][0]["number"]
        wait_for(
            lambda: till.agent.quote(receipt_from_json(sync_receipt("q", card))).mode == "ONLINE"
        )
        assert till.agent.status().mode == "ONLINE"
        hub.stop()
        sale = till.agent.checkout(receipt_from_json(sync_receipt("r2", card, redeem=10)))
        assert sale.mode == "OFFLINE"
        assert till.agent.status().mode == "OFFLINE"
    finally:
        till.stop()
        hub.stop()


def test_a_retry_spelling_the_card_and_codes_another_way_is_a_retry(tmp_path: Path) -> None:
    """§4 and §13 look a card up without its blanks and dashes, a code also in upper
    case: a hold or checkout sent again with "sorry-7k2q9" for "SORRY-7K2Q9" is the same
    receipt (its stored result), not a 409; another code is still a conflict."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))
        held = agent.hold(receipt_from_json(coupon_receipt("h-1", "SORRY-7K2Q9")))
        again = agent.hold(
            receipt_from_json(coupon_receipt("h-1", "sorry 7k2q9", card="2770-0000 0001-7"))
        )
        assert again.to_json() == held.to_json()
        sold = agent.checkout(receipt_from_json(coupon_receipt("c-1", "APP555")))
        again = agent.checkout(receipt_from_json(coupon_receipt("c-1", "app-555")))
        assert again.to_json() == sold.to_json()
        with pytest.raises(Conflict):
            agent.hold(receipt_from_json(coupon_receipt("h-1", "APP555")))
    finally:
        agent.close()
