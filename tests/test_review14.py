"""Review items of session 14's contract audit: a coupon voided as it was printed, int64
strings with blanks, and the receipt's documented line limit."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.identify import normalise
from tillpoint.agent.models import DASHES, coupon_code
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import import_doc, sample_master_data

from .conftest import receipt as plain_receipt
from .conftest import snapshot
from .test_coupons import COUPONS, NOW, SORRY, coupons_in_cache, receipt, snap, verdicts


def test_a_delta_voids_a_coupon_written_as_it_was_printed(tmp_path: Path) -> None:
    """`removed.coupons: ["SORRY-7K2Q9"]` deleted nothing (the row is kept as SORRY7K2Q9)
    and the voided code still took its discount on every till."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))
        agent.load_snapshot(
            {"version": 2, "baseVersion": 1, "removed": {"coupons": ["sorry 7k2q9", "App-555"]}}
        )
        assert coupons_in_cache(tmp_path / "till") == []
        quoted = agent.quote(receipt_from_json(receipt("r1", "SORRY-7K2Q9")))
        assert verdicts(quoted) == [("SORRY7K2Q9", "REJECTED", "UNKNOWN")]
        with pytest.raises(InputError, match=r"removed\.coupons.*letters or digits"):
            agent.load_snapshot({"version": 3, "baseVersion": 2, "removed": {"coupons": ["--"]}})
    finally:
        agent.close()


def test_the_hub_voids_a_coupon_written_as_it_was_printed(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    hub = hub_store_factory()  # SQLite and PostgreSQL
    agent = Agent(tmp_path / "till", "till-1")
    try:
        import_doc(hub, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
        hub.publish(NOW, 7 * 86400.0)
        agent.load_snapshot(hub.snapshot_doc(1, 0))
        import_doc(hub, {"removed": {"coupons": ["SORRY-7K2Q9"]}})
        assert hub.publish(NOW.replace(hour=7), 7 * 86400.0).version == 2
        delta = hub.snapshot_doc(2, 1)
        assert delta["removed"] == {"coupons": ["SORRY7K2Q9"]}
        agent.load_snapshot(delta)
        assert coupons_in_cache(tmp_path / "till") == ["APP555"]
        with pytest.raises(InputError, match=r"removed\.coupons\[0\].*letters or digits"):
            import_doc(hub, {"removed": {"coupons": ["- -"]}})
    finally:
        agent.close()
        hub.close()


@pytest.mark.parametrize("text", [" 8990", "8990\n", "\t8990", "8990 "])
def test_an_int64_string_with_blanks_is_refused_as_protobuf_refuses_it(text: str) -> None:
    body = plain_receipt(lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": text}])
    with pytest.raises(InputError, match=r"lines\[0\]\.priceMinor"):
        receipt_from_json(body)
    assert receipt_from_json(plain_receipt(redeemPoints="-1")).redeem_points == -1


def test_a_receipt_has_at_most_ten_thousand_lines() -> None:
    line = {"sku": "4601234000017", "qty": "1", "priceMinor": 100}
    assert len(receipt_from_json(plain_receipt(lines=[line] * 10_000)).lines) == 10_000
    with pytest.raises(InputError, match=r"lines has too many items \(at most 10000\)"):
        receipt_from_json(plain_receipt(lines=[line] * 10_001))


def test_dashes_of_every_kind_are_dropped_from_cards_and_coupon_codes(tmp_path: Path) -> None:
    """§4: "dashes of any kind (hyphen, en/em dash, minus sign)": 21 of Unicode's dashes
    (the full-width U+FF0D, the small U+FE63, the two-em U+2E3A, ...) made an INVALID card."""
    pd = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Pd"}
    # the minus signs, the swung dash and the soft hyphen (review 29) beside Pd
    assert pd <= DASHES and DASHES - pd == {"\u2212", "\u207b", "\u208b", "\u2053", "\u00ad"}
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        for dash in sorted(DASHES):
            text = f"2770{dash}0000{dash}00017"
            assert normalise(text) == "2770000000017", hex(ord(dash))
            assert agent.identify(text).status == "FOUND", hex(ord(dash))
            assert coupon_code(f"sorry{dash}7k2q9") == "SORRY7K2Q9", hex(ord(dash))
    finally:
        agent.close()


BEATEN_DEAL = [
    {"id": "o-m", "kind": "MULTIBUY", "skus": ["A", "B"], "buyQty": "2", "freeQty": "1"},
    {"id": "o-a", "kind": "PERCENT_OFF", "skus": ["A"], "value": "20"},
]


def test_a_deal_beaten_on_a_line_without_its_own_offer_names_what_beat_it(
    tmp_path: Path,
) -> None:
    """§17: BEATEN "by which offer, and its discount". 2 of A at 300 and 1 of B at 100:
    the 2-for-1 (B free, 100) loses to A's 20 % (120); B's row said BEATEN and nothing
    more, as B got no offer of its own."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        doc = snapshot()
        doc["products"] += [
            {"sku": sku, "name": sku, "category": doc["products"][0]["category"]}
            for sku in ("A", "B")
        ]
        doc["offers"] = BEATEN_DEAL
        agent.load_snapshot(doc)
        body = plain_receipt(
            explain=True,
            lines=[
                {"sku": "A", "qty": "2", "priceMinor": 300},
                {"sku": "B", "qty": "1", "priceMinor": 100},
            ],
        )
        trace = agent.quote(receipt_from_json(body)).to_json()["trace"]
        rows = {
            (line["sku"], row["offerId"]): row for line in trace["lines"] for row in line["offers"]
        }
        assert rows[("A", "o-a")]["outcome"] == "APPLIED"
        for sku in ("A", "B"):
            row = rows[(sku, "o-m")]
            assert row["outcome"] == "BEATEN", row
            assert (row["beatenBy"], row["beatenByDiscountMinor"]) == ("o-a", 120), row
        assert trace["deals"][0]["lineOffersMinor"] == 120
    finally:
        agent.close()


def test_a_snapshot_phone_written_with_brackets_identifies_its_customer(tmp_path: Path) -> None:
    """ "8 (916) 123-45-67" in the hub's data loaded and matched no scanned form of it."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        doc = snapshot()
        doc["customers"][0]["phone"] = "8 (916) 123-45-67"
        agent.load_snapshot(doc)
        customer = doc["customers"][0]["id"]
        for scanned in ("+79161234567", "89161234567", "9161234567"):
            found = agent.identify(scanned)
            assert (found.status, found.customer_id) == ("FOUND", customer), scanned
        assert agent.identify("8 (916) 123-45-67").status == "INVALID"  # scanned: §4
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("offers", "lines"),
    [
        (  # another deal then takes A: it did not beat o-m1, o-a's 120 did
            [
                {"id": "o-m1", "kind": "MULTIBUY", "skus": ["A", "B"], "buyQty": "2",
                 "freeQty": "1"},
                {"id": "o-m2", "kind": "MULTIBUY", "skus": ["A"], "buyQty": "1", "freeQty": "1"},
                {"id": "o-a", "kind": "PERCENT_OFF", "skus": ["A"], "value": "20"},
            ],
            [("A", "2", 300), ("B", "1", 100)],
        ),
        (  # a receipt offer then lands on C: o-a's 10 beat the deal, not o-r
            [
                {"id": "o-m1", "kind": "MULTIBUY", "skus": ["A", "B", "C"], "buyQty": "2",
                 "freeQty": "1"},
                {"id": "o-a", "kind": "AMOUNT_OFF", "skus": ["A"], "value": "10"},
                {"id": "o-r", "kind": "RECEIPT_PERCENT_OFF", "value": "50"},
            ],
            [("A", "1", 1000), ("C", "1", 300), ("B", "1", 1)],
        ),
    ],
)  # fmt: skip
def test_a_beaten_deal_names_the_line_offers_that_beat_it_not_what_came_later(
    tmp_path: Path, offers: list[dict[str, Any]], lines: list[tuple[str, str, int]]
) -> None:
    agent = Agent(tmp_path / "till", "till-1")
    try:
        doc = snapshot()
        category = doc["products"][0]["category"]
        doc["products"] += [{"sku": s, "name": s, "category": category} for s in "ABC"]
        doc["offers"] = offers
        agent.load_snapshot(doc)
        body = plain_receipt(
            explain=True,
            lines=[{"sku": sku, "qty": qty, "priceMinor": price} for sku, qty, price in lines],
        )
        trace = agent.quote(receipt_from_json(body)).to_json()["trace"]
        beaten = [
            row for line in trace["lines"] for row in line["offers"] if row["offerId"] == "o-m1"
        ]
        assert beaten and all(row["outcome"] == "BEATEN" for row in beaten)
        assert all(row["beatenBy"] == "o-a" for row in beaten), beaten
    finally:
        agent.close()
