"""Review 27 (exp27): the trace of docs/CONTRACT.md §17 (why this price) with the
redemption caps of §5 step 4, as a cashier or support engineer reads it at the till."""

from __future__ import annotations

from pathlib import Path

from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.sync.loopback import receipt as hub_receipt

from .conftest import CLI, answered, receipt, snapshot

MILK, BREAD = "4601234000017", "4601234000024"
VALID = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-11-30T23:59:59+03:00"}


def test_the_text_trace_tells_what_each_receipt_offer_gave_and_what_beat_it(cli: CLI) -> None:
    """docs/CONTRACT.md §17: receipt offers with their threshold, and an offer BEATEN names
    the offer that beat it and its discount. The text trace (`quote --explain` without
    `--json`, what support reads) showed only "o-r3: BEATEN (from 100,00)": not what o-r3
    would have given, not that o-r5 beat it, not the points an EXTRA_POINTS offer added;
    and "asked -1" for a customer who asked to spend as much as allowed."""
    offers = [
        {"id": "o-r5", "kind": "RECEIPT_PERCENT_OFF", "value": "5", "minTotalMinor": 10000},
        {"id": "o-r3", "kind": "RECEIPT_PERCENT_OFF", "value": "3", "minTotalMinor": 10000},
        {"id": "o-xp", "kind": "EXTRA_POINTS", "value": "25", "minTotalMinor": 10000},
        {"id": "o-far", "kind": "RECEIPT_PERCENT_OFF", "value": "10", "minTotalMinor": 50000},
    ]
    offers = [{**o, **VALID, "priority": 1} for o in offers]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    body = receipt("r-1", redeemPoints=-1)  # 2 × 89,90 = 179,80, no line offers
    trace = cli("quote", body, "--explain", "--json").json()["trace"]
    rows = {r["offerId"]: r for r in trace["receiptOffers"]}
    assert rows["o-r5"]["outcome"] == "APPLIED" and rows["o-r5"]["discountMinor"] == 899
    assert rows["o-r3"]["outcome"] == "BEATEN" and rows["o-r3"]["beatenBy"] == "o-r5"
    assert rows["o-r3"]["discountMinor"] == 539  # floor(17980 × 3 %)
    assert rows["o-xp"]["outcome"] == "APPLIED" and rows["o-xp"]["points"] == 25
    text = cli("quote", body, "--explain")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert "  receipt offer o-r5: APPLIED −8,99 (from 100,00)" in lines
    assert "  receipt offer o-r3: BEATEN −5,39 by o-r5 (−8,99) (from 100,00)" in lines
    assert "  receipt offer o-xp: APPLIED +25 pts (from 100,00)" in lines
    assert "  receipt offer o-far: BELOW_MIN_TOTAL (from 500,00, 320,20 more needed)" in lines
    (redemption,) = [line for line in lines if line.startswith("  redemption:")]
    assert redemption.startswith("  redemption: asked as much as allowed, allowed ")


def test_the_text_trace_shows_a_deal_weighed_against_the_line_offers(cli: CLI) -> None:
    """docs/CONTRACT.md §15, §17: a MULTIBUY takes its lines only when its total beats the
    line offers of the same lines; the JSON trace has both totals (`trace.deals`), the text
    trace showed neither, so "why did 3 for 2 not apply?" had no answer there."""
    offers = [
        {"id": "o-3for2", "kind": "MULTIBUY", "skus": [MILK], "buyQty": "2", "freeQty": "1"},
        {"id": "o-40", "kind": "PERCENT_OFF", "skus": [MILK], "value": "40"},
    ]
    offers = [{**o, **VALID, "priority": 1} for o in offers]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    body = receipt("r-1", lines=[{"sku": MILK, "qty": "3", "priceMinor": 8990}])
    (deal,) = cli("quote", body, "--explain", "--json").json()["trace"]["deals"]
    # one milk free: 89,90; 40 % of 269,70: 107,88
    assert (deal["outcome"], deal["discountMinor"], deal["lineOffersMinor"]) == (
        "BEATEN",
        8990,
        10788,
    )
    text = cli("quote", body, "--explain")
    assert text.code == 0, text.err
    assert "  deal o-3for2: BEATEN −89,90 (line offers −107,88; lines 1)" in text.out.splitlines()


def test_the_text_trace_of_an_unknown_card_says_why_it_redeems_nothing(cli: CLI) -> None:
    """docs/CONTRACT.md §5 step 4: unknown cards redeem nothing; the trace lists no caps
    and is bound by UNKNOWN_CARD. The text read "allowed 0 (; bound by unknown_card)"."""
    assert cli("snapshot", "load", snapshot()).code == 0
    body = receipt("r-1", card="2770000000048", redeemPoints=50)
    redemption = cli("quote", body, "--explain", "--json").json()["trace"]["redemption"]
    assert (redemption["caps"], redemption["boundBy"]) == ([], "UNKNOWN_CARD")
    text = cli("quote", body, "--explain")
    assert "  redemption: asked 50, allowed 0 (bound by unknown_card)" in text.out.splitlines()


def test_why_a_sale_got_only_what_the_hub_granted(tmp_path: Path) -> None:
    """docs/CONTRACT.md §17: `quote --explain` after the sale answers support's "why only
    50 points?" with the caps the sale was priced with, the hub grant included. Борис has
    300 points; another till holds 250 of them at the hub, so the hub grants this till 50.
    Priced again for its trace, the sale was priced as a quote (no grant: 300 points), the
    figures differed and the answer carried no trace at all."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    # the deadline of a till whose hub answers (conftest's `ANSWERED_S`): with FAST's 300 ms
    # till-2's first hold, on a connection never used, went OFFLINE once on a loaded machine
    till = hub.till("till-1", tmp_path / "t1", timings=answered())
    other = hub.till("till-2", tmp_path / "t2", timings=answered())
    try:
        card, big = "2770000000024", [{"sku": MILK, "qty": "100", "priceMinor": 10000}]
        wait_for(lambda: min(t.agent.status().cache_version for t in (till, other)) >= 1)
        wait_for(
            lambda: till.agent.quote(receipt_from_json(hub_receipt("q", card))).mode == "ONLINE"
        )
        held = other.agent.hold(receipt_from_json(hub_receipt("h-2", card, redeem=250, lines=big)))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 250)
        body = hub_receipt("r-1", card, redeem=-1, lines=big)
        sold = till.agent.checkout(receipt_from_json(body))
        assert (sold.mode, sold.redeemed_points) == ("ONLINE", 50)
        why = till.agent.quote(receipt_from_json({**body, "explain": True}))
        assert why.redeemed_points == 50 and why.trace is not None, "no trace after the sale"
        redemption = why.trace["redemption"]
        assert (redemption["allowedPoints"], redemption["boundBy"]) == (50, "HUB_GRANT")
        assert {"name": "HUB_GRANT", "points": 50} in redemption["caps"]
        assert {"name": "BALANCE", "points": 300} in redemption["caps"]
    finally:
        till.stop()
        other.stop()
        hub.stop()


def test_why_a_sale_made_while_the_hub_was_away_got_the_offline_limit(tmp_path: Path) -> None:
    """docs/CONTRACT.md §5 step 4, §17: a sale made while the hub did not answer is capped
    by the day's offline limit (500). Asked "why this price?" once the hub answers again,
    it was priced again online (no offline limit: 1200 points, not the 500 sold), the
    figures differed and the answer carried no trace."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "t1")
    try:
        card, big = "2770000000017", [{"sku": MILK, "qty": "100", "priceMinor": 10000}]
        wait_for(lambda: till.agent.status().cache_version >= 1)
        hub.stop()
        body = hub_receipt("r-1", card, redeem=-1, lines=big)
        sold = till.agent.checkout(receipt_from_json(body))
        assert (sold.mode, sold.redeemed_points) == ("OFFLINE", 500)
        hub.restart()
        probe = receipt_from_json(hub_receipt("q", card))
        wait_for(lambda: till.agent.quote(probe).mode == "ONLINE", timeout=15)
        why = till.agent.quote(receipt_from_json({**body, "explain": True}))
        assert why.redeemed_points == 500 and why.trace is not None, "no trace after the sale"
        redemption = why.trace["redemption"]
        assert (redemption["allowedPoints"], redemption["boundBy"]) == (500, "OFFLINE_LIMIT")
        assert {"name": "OFFLINE_LIMIT", "points": 500} in redemption["caps"]
    finally:
        till.stop()
        hub.stop()


def test_a_quote_of_a_held_receipt_answers_the_points_the_hub_granted_it(tmp_path: Path) -> None:
    """docs/CONTRACT.md §11, §17: a quote of a held receipt (the same body) answers what its
    Confirm commits. Online, the hub granted the hold 50 of Борис's 300 points (another
    till holds 250); the quote asked the hub nothing and answered 300 points and 250.00
    less to pay than the Confirm then committed, its trace a HUB_GRANT of 300."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    # the hub's grants on a loaded machine: as the test above
    till = hub.till("till-1", tmp_path / "t1", timings=answered())
    other = hub.till("till-2", tmp_path / "t2", timings=answered())
    try:
        card, big = "2770000000024", [{"sku": MILK, "qty": "100", "priceMinor": 10000}]
        wait_for(lambda: min(t.agent.status().cache_version for t in (till, other)) >= 1)
        probe = receipt_from_json(hub_receipt("q", card))
        wait_for(lambda: till.agent.quote(probe).mode == "ONLINE")
        other.agent.hold(receipt_from_json(hub_receipt("h-2", card, redeem=250, lines=big)))
        body = hub_receipt("r-1", card, redeem=-1, lines=big)
        held = till.agent.hold(receipt_from_json(body))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 50)
        quoted = till.agent.quote(receipt_from_json({**body, "explain": True}))
        assert (quoted.redeemed_points, quoted.payable_minor) == (50, held.payable_minor)
        assert quoted.trace is not None
        assert quoted.trace["redemption"]["boundBy"] == "HUB_GRANT"
        confirmed = till.agent.confirm("r-1")
        assert (confirmed.redeemed_points, confirmed.payable_minor) == (50, held.payable_minor)
    finally:
        till.stop()
        other.stop()
        hub.stop()
