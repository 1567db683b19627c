"""Review 27 (exp27): the trace of docs/CONTRACT.md §17 (why this price) with the
redemption caps of §5 step 4, as a cashier or support engineer reads it at the till."""

from __future__ import annotations

from .conftest import CLI, receipt, snapshot

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
