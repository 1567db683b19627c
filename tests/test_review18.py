"""Faults found in session 18's audits, each with the test that failed before."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError
from tillpoint.agent.db import cache_file
from tillpoint.agent.errors import InputError
from tillpoint.agent.models import STORED, Offer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot

MILK = "4601234000017"
AT = "2026-11-24T12:00:00+03:00"


def _offer(**changes: object) -> dict[str, object]:
    offer: dict[str, object] = {
        "id": "o-min",
        "kind": "PERCENT_OFF",
        "skus": [MILK],
        "value": "10",
        "minQty": "2",
    }
    offer.update(changes)
    return offer


@pytest.mark.parametrize("min_qty", ["1.0001", "0.0005", "2.0000"])
def test_an_offers_min_qty_of_more_than_3_decimals_is_refused(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, min_qty: str
) -> None:
    """The contract §2: quantities have at most 3 decimals; a QUANTITY_PRICE tier's
    `minQty` was held to it, an offer's own `minQty` loaded ("1.0001")."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        with pytest.raises(InputError, match=r"minQty .* more than 3 decimals"):
            agent.load_snapshot(snapshot(version=2, offers=[_offer(minQty=min_qty)]))
        assert agent.status().cache_version == 1
    finally:
        agent.close()
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "import", {"offers": [_offer(minQty=min_qty)]})
    assert run.code == 2 and "more than 3 decimals" in run.err, run.err


def test_an_offer_an_earlier_release_stored_with_them_still_prices(tmp_path: Path) -> None:
    """A rule of input: the cache's rows were checked when their snapshot was applied, and
    a till upgraded over one must keep selling."""
    doc = json.dumps(_offer(minQty="2.0005"))
    with pytest.raises(ValidationError):
        Offer.model_validate_json(doc)
    assert str(Offer.model_validate_json(doc, context=STORED).min_qty) == "2.0005"
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=[_offer(minQty="2")]))
        with sqlite3.connect(cache_file(agent.data_dir)) as conn:  # as an older release kept it
            conn.execute("UPDATE offers SET doc = ? WHERE id = 'o-min'", (doc,))
        conn.close()
        agent = Agent(tmp_path / "till", "till-1")  # a restart: no memo of the old row
        three = receipt("q-1", lines=[{"sku": MILK, "qty": "3", "priceMinor": 1000}])
        two = receipt("q-2", lines=[{"sku": MILK, "qty": "2", "priceMinor": 1000}])
        assert agent.quote(receipt_from_json(three)).lines[0].offer_id == "o-min"
        assert agent.quote(receipt_from_json(two)).lines[0].offer_id is None  # 2 < 2.0005
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"receiptId": "r\n1"}, "receiptId"),
        ({"lines": [{"sku": "46012340\x0000017", "qty": "1", "priceMinor": 100}]}, "lines[0].sku"),
        ({"receiptId": "r\u00851"}, "receiptId"),  # a C1 control: NEXT LINE
        ({"receiptId": "r\u20281"}, "receiptId"),  # LINE SEPARATOR
        ({"receiptId": "r\u202e1"}, "receiptId"),  # a bidi override
    ],
)
def test_control_characters_in_a_requests_ids_are_refused(
    cli: CLI, changes: dict[str, object], field: str
) -> None:
    """A NUL, a line break or an escape in a receiptId, SKU or coupon code matched nothing
    and went on into the answer, the logs and the printout."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("quote", receipt("r1", **changes), "--json")
    assert run.code == 2 and f"{field} must not contain control characters" in run.err, run.err
    refund = {"refundId": "f\t1", "receiptId": "r1", "lines": [{"sku": MILK, "qty": "1"}]}
    run = cli("refund", refund, "--json")
    assert run.code == 2 and "refundId must not contain control characters" in run.err, run.err
    # Cyrillic and other printable text is not a control character
    assert cli("quote", receipt("чек-1"), "--json").code == 0


def test_a_scanned_codes_control_characters_never_refuse_the_receipt(cli: CLI) -> None:
    """A scanner's CR or tab is a blank the code's normal form drops (§13), as are other
    control characters (session 20: a NUL kept in a code stopped a PostgreSQL hub), and
    any code gets its verdict: "a rejected code never refuses the receipt"."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("quote", receipt("r1", coupons=["SORRY\x1b[2J", "ABC\r\n"]), "--json")
    assert run.code == 0, run.err
    verdicts = [(v["code"], v["status"], v["reason"]) for v in run.json()["coupons"]]
    assert verdicts == [
        ("SORRY[2J", "REJECTED", "UNKNOWN"),
        ("ABC", "REJECTED", "UNKNOWN"),
    ]


def test_a_refund_names_a_sale_of_an_earlier_release_as_it_was_committed() -> None:
    """An earlier release committed receipt ids and SKUs with control characters: a
    refund must still name them (its own refundId is new, and held to the rule)."""
    from tillpoint.agent.results import refund_from_json

    refund = refund_from_json(
        {"refundId": "f1", "receiptId": "s1\t", "at": AT, "lines": [{"sku": "x\r", "qty": "1"}]}
    )
    assert refund.receipt_id == "s1\t" and refund.lines[0].sku == "x\r"


def test_a_refund_beyond_what_is_left_says_what_is_left(cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("checkout", receipt("r1"), "--json").code == 0  # 2 × milk
    one = {"refundId": "f1", "receiptId": "r1", "at": AT, "lines": [{"sku": MILK, "qty": "1"}]}
    assert cli("refund", one, "--json").code == 0
    two = {"refundId": "f2", "receiptId": "r1", "at": AT, "lines": [{"sku": MILK, "qty": "2"}]}
    run = cli("refund", two, "--json")
    assert run.code == 2, run.err
    assert "2 bought, 1 returned before, 1 left to return; this refund asks 2" in run.err


@pytest.mark.parametrize(
    ("price", "said"),
    [("8990.0", "has a decimal point"), ("8.99e3", "is written with an exponent")],
)
def test_a_number_with_a_point_or_an_exponent_is_named_with_its_field(
    cli: CLI, tmp_path: Path, price: str, said: str
) -> None:
    """ "the number 1200.0 has a fraction" named no field, and 1200.0 has none."""
    assert cli("snapshot", "load", snapshot()).code == 0
    body = json.dumps(receipt("r1")).replace('"priceMinor": 8990', f'"priceMinor": {price}')
    path = tmp_path / "float.json"
    path.write_text(body)
    run = cli("quote", str(path), "--json")
    assert run.code == 2
    assert f"lines[0].priceMinor: the number {price} {said}" in run.err, run.err


RECEIPT_5 = {"id": "o-r", "kind": "RECEIPT_PERCENT_OFF", "value": "5", "minTotalMinor": 50000}


def test_explain_does_not_change_the_display(cli: CLI) -> None:
    """§17: "a result with and without it is the same otherwise". The hint of a receipt
    discount within reach was shown only when the quote asked for a trace."""
    assert cli("snapshot", "load", snapshot(offers=[RECEIPT_5])).code == 0
    basket = receipt("r1", lines=[{"sku": MILK, "qty": "1", "priceMinor": 10000}])
    plain = cli("quote", basket, "--json").json()
    explained = cli("quote", basket, "--explain", "--json").json()
    assert explained.pop("trace")["receiptOffers"][0]["outcome"] == "BELOW_MIN_TOTAL"
    assert plain == explained
    assert plain["display"] == ["Итого: 100,00", "Ещё 400 ₽ до −5%"]


def test_the_hint_leaves_the_savings_and_a_control_groups_offer_alone(cli: CLI) -> None:
    offers = [
        RECEIPT_5,
        {"id": "o-10", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"},
        {**RECEIPT_5, "id": "o-cg", "campaignId": "camp-9", "minTotalMinor": 20000},
    ]
    customers = [{**c} for c in snapshot()["customers"]]
    customers[1]["controlGroups"] = ["camp-9"]  # Борис, card 2770000000024
    assert cli("snapshot", "load", snapshot(offers=offers, customers=customers)).code == 0
    line = [{"sku": MILK, "qty": "1", "priceMinor": 10000}]
    # savings to show: they stay (§8), the hint does not replace them
    assert cli("quote", receipt("r1", lines=line), "--json").json()["display"] == [
        "Итого: 100,00",
        "Скидка: 10,00",
    ]
    # a control-group customer: the nearest discount he would get is 5 % at 500 ₽, not
    # the 200 ₽ one he is held out of
    other = [{"sku": "4601234000024", "qty": "1", "priceMinor": 10000}]
    shown = cli("quote", receipt("r2", card="2770000000024", lines=other), "--json").json()
    assert shown["display"] == ["Итого: 100,00", "Ещё 400 ₽ до −5%"]


def test_a_hold_shows_the_hint_its_quote_shows(cli: CLI) -> None:
    """Hold prices like a checkout and shows the quote's display: the pole display lost
    "Ещё 400 ₽ до −5%" the moment the POS held the receipt."""
    assert cli("snapshot", "load", snapshot(offers=[RECEIPT_5])).code == 0
    basket = receipt("r1", lines=[{"sku": MILK, "qty": "1", "priceMinor": 10000}])
    quoted = cli("quote", basket, "--json").json()["display"]
    assert quoted == ["Итого: 100,00", "Ещё 400 ₽ до −5%"]
    assert cli("hold", basket, "--json").json()["display"] == quoted


def test_one_long_offer_text_does_not_cost_the_receipts_other_coupons() -> None:
    """A snapshot's printText has no length limit; the print payload took 1,000
    characters at most and the worker failed the whole job: every coupon of that receipt
    was lost, each still marked printed (its cooldown started)."""
    from tillpoint.printer.payload import TEXT_MAX, parse_payload, payload_source_for_checkout

    offers = [
        {"id": "long-1", "printText": "Скидка " * 400, "validTo": "2026-11-30T23:59:59+03:00"},
        {"id": "short-2", "printText": "−10% на хлеб", "validTo": "2026-11-30T23:59:59+03:00"},
    ]
    source = payload_source_for_checkout("r1", "2026-11-23T10:15:00+03:00", "А" * 300, offers)
    payload = parse_payload(source)  # what the print worker does when it takes the job
    assert [o.id for o in payload.offers] == ["long-1", "short-2"]
    assert len(payload.offers[0].text) == TEXT_MAX and payload.offers[1].text == "−10% на хлеб"


def test_a_printed_offers_code_scanned_names_its_offer(cli: CLI) -> None:
    """`TP1-<offerId>` (an offer printed without a one-time code) read as a card: its
    dashes dropped, "TP1P-A" was an INVALID card."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("scan", "TP1-p-a", "--json")
    assert run.code == 0, run.err
    assert run.json() == {"kind": "OFFER", "code": "TP1-p-a", "offerId": "p-a"}
    assert cli("scan", "2770000000017", "--json").json()["kind"] == "CARD"


def test_the_hints_percent_is_written_as_money_is() -> None:
    from tillpoint.agent.messages import reach_line

    assert reach_line(40000, "7.50") == "Ещё 400 ₽ до −7,5%"
    assert reach_line(40000, "5.0") == "Ещё 400 ₽ до −5%"


def test_no_more_offers_print_than_one_print_job_holds(tmp_path: Path) -> None:
    """`maxOffersPrinted` 100 and 55 printable offers: the job of 55 failed at the
    printer (a payload holds 50), every coupon with it, each marked printed."""
    from tillpoint.agent.pricing import OFFERS_PRINTED_MAX
    from tillpoint.printer.payload import OFFERS_MAX, parse_payload

    from .test_receipt_life import OFFER

    assert OFFERS_PRINTED_MAX == OFFERS_MAX
    offers = [{**OFFER, "id": f"o-{i:02d}"} for i in range(55)]
    snap = snapshot(offers=offers)
    snap["program"] = {**snap["program"], "maxOffersPrinted": 100}
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap)
        done = agent.checkout(receipt_from_json(receipt("r1")))
        assert len(done.printed_offers) == OFFERS_MAX
        (payload,) = agent._ledger.execute("SELECT payload FROM print_jobs").fetchone()
        assert len(parse_payload(payload).offers) == OFFERS_MAX
    finally:
        agent.close()
