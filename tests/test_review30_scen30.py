"""Review 30 (scen30): what the rules' combinations over a receipt's life showed, through the
CLI with --json. The scenarios themselves are tests/scenarios/review30b/ (run by
tests/test_scenarios.py)."""

from __future__ import annotations

from typing import Any

from .conftest import CLI, snapshot

CARD = "2770000000017"
BREAD = "4601234000024"


def _printable(offer_id: str, rank: int, **more: Any) -> dict[str, Any]:
    offer = {
        "id": offer_id,
        "campaignId": "camp-" + offer_id,
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "value": "10",
        "skus": [BREAD],
        "categories": [],
        "minQty": "1",
        "priority": 10,
        "rank": rank,
        "printable": True,
        "printText": f"offer {offer_id}",
        "validFrom": "2026-12-01T00:00:00+03:00",
        "validTo": "2026-12-31T23:59:59+03:00",
    }
    offer.update(more)
    return offer


def _receipt(receipt_id: str, at: str) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": at,
        "card": CARD,
        "lines": [{"sku": BREAD, "qty": "1", "priceMinor": 10000}],
        "redeemPoints": 0,
    }


def _base(cli: CLI, offers: list[dict[str, Any]], max_printed: int) -> None:
    snap = snapshot(offers=offers)
    snap["program"] = dict(snap["program"], maxOffersPrinted=max_printed)
    assert cli("snapshot", "load", snap, "--json").code == 0


def test_confirm_picks_the_offers_to_print_when_it_commits(cli: CLI) -> None:
    """docs/CONTRACT.md §7 and §11: the offers are picked after the commit, and a held
    receipt is committed by Confirm. Until review 30 Confirm printed what Hold had picked
    (less any printed meanwhile): an offer the hub removed between them was printed, with a
    fresh one-time code for an offer no till has (§13), and a place the cooldown emptied was
    left empty although another offer was due."""
    offers = [
        _printable("pr-1", 1, couponRequired=True, issueCoupon=True),
        _printable("pr-2", 2),
        _printable("pr-3", 3),
    ]
    _base(cli, offers, max_printed=1)
    held = cli("hold", _receipt("h-1", "2026-12-02T10:00:00+03:00"), "--json")
    assert held.code == 0 and held.json()["printedOffers"] == []
    sold = cli("checkout", _receipt("s-1", "2026-12-02T10:01:00+03:00"), "--json")
    assert sold.json()["printedOffers"] == ["pr-1"]  # and its code TP5TILL11, seq 2
    delta = {"version": 2, "baseVersion": 1, "removed": {"offers": ["pr-2"]}}
    assert cli("snapshot", "load", delta, "--json").code == 0

    confirmed = cli("confirm", "h-1", "--json")
    assert confirmed.code == 0, confirmed.err
    # pr-1: printed a minute ago (7 days' cooldown); pr-2: gone; the one place is pr-3's
    assert confirmed.json()["printedOffers"] == ["pr-3"]

    held = cli("hold", _receipt("h-2", "2026-12-10T10:00:00+03:00"), "--json")
    assert held.code == 0
    delta = {"version": 3, "baseVersion": 2, "removed": {"offers": ["pr-1"]}}
    assert cli("snapshot", "load", delta, "--json").code == 0
    confirmed = cli("confirm", "h-2", "--json")
    assert confirmed.json()["printedOffers"] == ["pr-3"]  # out of its cooldown on 12-09
    status = cli("status", "--json").json()
    assert status["lastSeq"] == 4  # s-1, its code, h-1, h-2: no code for the removed pr-1
    quote = _receipt("q-1", "2026-12-10T10:05:00+03:00")
    quote["coupons"] = ["TP5TILL12"]
    verdicts = cli("quote", quote, "--json").json()["coupons"]
    assert verdicts == [{"code": "TP5TILL12", "status": "REJECTED", "reason": "UNKNOWN"}]


def test_confirm_prints_nothing_to_a_customer_the_hub_removed(cli: CLI) -> None:
    """docs/CONTRACT.md §7 and §11: the pick reads the customer (control groups, favourite
    weekday); one the hub removed between Hold and Confirm gets the sale committed as held
    and no offers printed."""
    _base(cli, [_printable("pr-1", 1, issueCoupon=True, couponRequired=True)], max_printed=5)
    assert cli("hold", _receipt("h-1", "2026-12-02T10:00:00+03:00"), "--json").code == 0
    delta = {"version": 2, "baseVersion": 1, "removed": {"customers": ["c-a"]}}
    assert cli("snapshot", "load", delta, "--json").code == 0
    confirmed = cli("confirm", "h-1", "--json")
    assert confirmed.code == 0, confirmed.err
    doc = confirmed.json()
    assert doc["state"] == "CONFIRMED" and doc["printedOffers"] == []
    assert doc["earnedPoints"] == 7  # 10000 * 7.5 / 10000 = 7.5 -> 7, as held
    assert cli("status", "--json").json()["lastSeq"] == 1  # the sale, no code
