"""Review 49 (spec49d): §3 (the snapshot), §6 (refunds) and §16 (points that expire) read
black-box, sentence by sentence, at each sentence's edges.

Every figure below was worked out by hand from the contract's words (and
docs/CONTRACT.md's decisions where the contract is silent) before the product was run;
the arithmetic is written beside it. The arithmetic runs through the CLI in this process
on real snapshot, receipt and refund files (`main(argv)`, one real SQLite data directory
per till); the last test runs the same day as real `tillpoint` processes on one till and
through a real `tillpoint run`'s HTTP port on another, to show the doors agree.
docs/DECISIONS.md, "Review 49 (spec49d)", says what was found.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_review35_shape35 import clean_env
from .test_review45_spec45 import Till

__all__ = ["clean_env"]  # the fixture, used by name below

ANNA = "2770000000017"  # c-1
BOB = "2770000000024"  # c-2
ANNA2 = "2770000000048"  # c-1's second card
AT = "2026-12-15T12:00:00+03:00"  # a Tuesday in Moscow
GOLD10 = [{"code": "base", "accrualPercent": "3"}, {"code": "gold", "accrualPercent": "10"}]


def full(version: int = 1, **sections: Any) -> dict[str, Any]:
    return {
        "version": version,
        "baseVersion": 0,
        "issuedAt": f"2026-12-{version:02d}T00:00:00Z",
        **sections,
    }


def delta(version: int, base: int, **sections: Any) -> dict[str, Any]:
    return {
        "version": version,
        "baseVersion": base,
        "issuedAt": f"2026-12-{version:02d}T00:00:00Z",
        **sections,
    }


def receipt(rid: str, card: str, lines: list[tuple[str, str, int]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiptId": rid,
        "storeId": "s1",
        "tillId": "t1",
        "at": AT,
        "card": card,
        "lines": [{"sku": s, "qty": q, "priceMinor": p} for s, q, p in lines],
        "redeemPoints": 0,
    }
    return body | kw


def refund(fid: str, rid: str, at: str, *lines: tuple[str, str]) -> dict[str, Any]:
    return {
        "refundId": fid,
        "receiptId": rid,
        "at": at,
        "lines": [{"sku": s, "qty": q} for s, q in lines],
    }


@pytest.fixture
def make(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    made: list[Till] = []

    def build(snap: dict[str, Any] | None = None) -> Till:
        root = tmp_path / f"till{len(made)}"
        root.mkdir()
        till = Till(root, capsys)
        if snap is not None:
            till.load(snap)
        made.append(till)
        return till

    yield build


def load(till: Till, snap: dict[str, Any]) -> tuple[int, Any, str]:
    """`snapshot load FILE --json`: (exit code, its JSON document or "", stderr)."""
    code, out, err = till.run("snapshot", "load", till.file(snap), "--json")
    return code, (json.loads(out) if code == 0 else out), err.strip()


def ident(till: Till, text: str) -> dict[str, Any]:
    code, out, err = till.run("identify", text, "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def lines_of(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (ln["sku"], ln["discountMinor"], ln["offerId"], ln["redeemedMinor"], ln["earnedPoints"])
        for ln in result["lines"]
    ]


def moved(result: dict[str, Any]) -> tuple[int, int, int, int, bool]:
    """A refund's points and balance: (returned, taken back, available, pending, negative)."""
    bal = result["balance"]
    return (
        result["returnedPoints"],
        result["takenBackPoints"],
        bal["availablePoints"],
        bal["pendingPoints"],
        result["negativeBalance"],
    )


# ---------------------------------------------------------------- §3: full snapshots


def test_a_full_snapshot_replaces_every_table_and_its_removed_removes_nothing(make: Any) -> None:
    """§3: "baseVersion 0 is a full snapshot: it replaces the cache". Every table of v1
    (products, categories, customers, cards, offers, coupons, the program) is gone after a
    v2 that does not list its rows. A full snapshot's `removed` has nothing to remove from:
    its own rows are the cache (CONTRACT §3's decision, review 49); a row it both lists and
    removes stays."""
    v1 = full(
        1,
        program={"tiers": GOLD10},
        products=[
            {"sku": "A", "name": "A", "category": "cat1"},
            {"sku": "B", "name": "B", "category": "cat2"},
        ],
        categories=[
            {"code": "cat1", "name": "c1"},
            {"code": "cat2", "name": "c2", "parent": "cat1"},
        ],
        customers=[
            {
                "id": "c-1",
                "firstName": "Анна",
                "tier": "gold",
                "balancePoints": 1000,
                "phone": "+79161234567",
            },
            {"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 50},
        ],
        cards=[{"number": ANNA, "customerId": "c-1"}, {"number": BOB, "customerId": "c-2"}],
        offers=[
            {"id": "o-1", "kind": "PERCENT_OFF", "categories": ["cat1"], "value": "10"},
            {
                "id": "o-2",
                "kind": "PERCENT_OFF",
                "skus": ["B"],
                "value": "20",
                "couponRequired": True,
            },
        ],
        coupons=[{"code": "K1", "offerId": "o-2"}],
    )
    till = make(v1)
    basket = receipt("q", BOB, [("A", "1", 10000), ("B", "1", 10000)], coupons=["K1"])
    before = till.doc("quote", basket)
    # A: 10 % through cat1 = 1000, 9000 × 3 % = 2.7; B: the code's 20 % = 2000 (beats 10 %
    # through cat2 → cat1), 8000 × 3 % = 2.4; floor(5.1) = 5: 2 + 2 and the one left to the
    # larger fraction, A's .7 → A 3, B 2.
    assert lines_of(before) == [("A", 1000, "o-1", 0, 3), ("B", 2000, "o-2", 0, 2)]
    assert before["coupons"][0]["status"] == "APPLIED"

    v2 = full(
        2,
        program={"tiers": [{"code": "base", "accrualPercent": "5"}]},
        products=[{"sku": "B", "name": "B"}],
        customers=[{"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 70}],
        cards=[{"number": BOB, "customerId": "c-2"}, {"number": ANNA2, "customerId": "c-2"}],
        removed={"cards": [ANNA2], "customers": ["c-2"], "products": ["B"], "offers": []},
    )
    assert load(till, v2)[:2] == (0, {"version": 2, "issuedAt": "2026-12-02T00:00:00Z"})
    assert ident(till, ANNA) == {"status": "UNKNOWN"}  # c-1 and her card are gone
    assert ident(till, "+79161234567") == {"status": "UNKNOWN"}  # so is her phone
    assert ident(till, ANNA2)["customerId"] == "c-2"  # listed in removed, kept
    after = till.doc("quote", basket | {"receiptId": "q2"})
    # A is no product now (no points), o-1 and o-2 are gone, K1 is unknown; B earns at
    # the new program's only tier: 10000 × 5 % = 5.
    assert lines_of(after) == [("A", 0, None, 0, 0), ("B", 0, None, 0, 5)]
    assert after["coupons"] == [{"code": "K1", "status": "REJECTED", "reason": "UNKNOWN"}]
    assert till.balance(BOB, AT) == {"availablePoints": 70, "pendingPoints": 0}

    # The JSON Lines form: the header's `removed` removes nothing from a full snapshot either.
    header = {k: v for k, v in v2.items() if k not in ("products", "customers", "cards")}
    text = [json.dumps(header | {"version": 3, "format": "tillpoint.snapshot/jsonl"})]
    for section in ("products", "customers", "cards"):
        text += [json.dumps({"section": section})]
        text += [json.dumps(row, ensure_ascii=False) for row in v2[section]]
    code, out, err = till.run("snapshot", "load", till.file("\n".join(text) + "\n"), "--json")
    assert code == 0 and json.loads(out)["version"] == 3, err
    again = till.doc("quote", basket | {"receiptId": "q3"})
    assert lines_of(again) == [("A", 0, None, 0, 0), ("B", 0, None, 0, 5)]
    assert ident(till, ANNA2)["customerId"] == "c-2"


# ---------------------------------------------------------------- §3: deltas


def test_deltas_apply_on_their_exact_base_replace_whole_rows_and_remove_each_kind(
    make: Any,
) -> None:
    """§3: a delta applies only on exactly `baseVersion` (another base, or an empty cache,
    is refused asking for a full one, the cache kept); a row replaces the whole row (the
    fields it leaves out take their defaults: no tier is the first tier, no birthday, no
    phone, no `excludedFromLoyalty`); `removed` takes cards (the customer stays, found by
    her other card, no longer by the phone her new row leaves out), customers, offers,
    products, categories and coupons; `program` absent keeps the program, present
    replaces it whole (absent fields take the defaults, `{}` all of them, `null` is
    absent)."""
    v1 = full(
        1,
        program={"pointValueMinor": 50, "maxRedeemPercent": 50, "tiers": GOLD10},
        products=[
            {"sku": "A", "name": "A", "category": "cat1"},
            {"sku": "B", "name": "B", "category": "cat2", "excludedFromLoyalty": True},
        ],
        categories=[{"code": "cat1", "name": "c1"}, {"code": "cat2", "name": "c2"}],
        customers=[
            {
                "id": "c-1",
                "firstName": "Анна",
                "tier": "gold",
                "balancePoints": 1000,
                "phone": "+79161234567",
                "birthday": "1990-12-16",
            },
            {"id": "c-2", "firstName": "Борис", "balancePoints": 50},
        ],
        cards=[
            {"number": ANNA, "customerId": "c-1"},
            {"number": ANNA2, "customerId": "c-1"},
            {"number": BOB, "customerId": "c-2"},
        ],
        offers=[
            {"id": "o-1", "kind": "PERCENT_OFF", "categories": ["cat1"], "value": "10"},
            {"id": "o-2", "kind": "AMOUNT_OFF", "skus": ["A"], "value": "500", "customerId": "c-2"},
        ],
        coupons=[{"code": "K1", "offerId": "o-1"}],
    )
    till = make(v1)
    first = till.doc("quote", receipt("q1", ANNA, [("A", "1", 10000)]))
    # 10 % off = 1000; the birthday (16.12, tomorrow) ×5: 9000 × 10 % × 5 / (100 × 50) = 90.
    assert lines_of(first) == [("A", 1000, "o-1", 0, 90)]

    code, out, err = load(till, delta(3, 2))
    assert (code, out) == (2, "")
    assert "a full snapshot is needed" in err and "cache is at version 1" in err
    code, out, err = load(make(), delta(3, 2))  # an empty cache takes no delta
    assert (code, out) == (2, "") and "a full snapshot is needed" in err

    d2 = delta(
        2,
        1,
        customers=[{"id": "c-1", "firstName": "Анна", "balancePoints": 900}],
        products=[{"sku": "B", "name": "B2", "category": "cat2"}],
        removed={"cards": [ANNA], "products": ["A"]},
    )
    assert load(till, d2)[0] == 0
    assert ident(till, ANNA) == {"status": "UNKNOWN"}
    assert ident(till, ANNA2) == {
        "status": "FOUND",
        "customerId": "c-1",
        "tier": "base",
        "firstName": "Анна",
    }
    assert ident(till, "89161234567") == {"status": "UNKNOWN"}
    second = till.doc(
        "quote", receipt("q2", ANNA2, [("A", "1", 10000), ("B", "1", 10000)], redeemPoints=-1)
    )
    # A is no product; B is eligible now (o-1 is on cat1 only) and there is no birthday:
    # redemption min(900, 10000 × 50 % / 50 = 100, capacity 200) = 100 points =
    # 5000; 5000 × 3 % / 50 = 3 points. 900 − 100 + 3 = 803.
    assert lines_of(second) == [("A", 0, None, 0, 0), ("B", 0, None, 5000, 3)]
    assert second["balance"] == {"availablePoints": 803, "pendingPoints": 0}

    def priced(rid: str) -> tuple[int, int]:
        doc = till.doc("quote", receipt(rid, ANNA2, [("B", "1", 10000)], redeemPoints=-1))
        return doc["redeemedPoints"], doc["earnedPoints"]

    assert load(till, delta(3, 2))[0] == 0  # no program: kept (50 a point, 50 %)
    assert priced("q3") == (100, 3)
    assert load(till, delta(4, 3, program={"maxRedeemPercent": 20}))[0] == 0
    # 100 a point again, 20 %: 20 points; 8000 × 3 % = 2.4 → 2
    assert priced("q4") == (20, 2)
    assert load(till, delta(5, 4, program={}))[0] == 0  # every default: 30 % → 30; 2.1 → 2
    assert priced("q5") == (30, 2)
    assert load(till, delta(6, 5, program=None))[0] == 0  # null is absent: kept
    assert priced("q6") == (30, 2)

    d7 = delta(
        7,
        6,
        cards=[{"number": BOB, "customerId": "c-1"}],  # a card moved to another customer
        offers=[{"id": "o-2", "kind": "AMOUNT_OFF", "skus": ["B"], "value": "700"}],  # mass now
        removed={
            "customers": ["c-2"],
            "offers": ["o-1"],
            "categories": ["cat2"],
            "coupons": ["K1"],
        },
    )
    assert load(till, d7)[0] == 0
    assert ident(till, BOB)["customerId"] == "c-1"
    third = till.doc("quote", receipt("q7", BOB, [("B", "1", 10000)], coupons=["K1"]))
    assert lines_of(third) == [("B", 700, "o-2", 0, 2)]  # 9300 × 3 % = 2.79 → 2
    assert third["coupons"] == [{"code": "K1", "status": "REJECTED", "reason": "UNKNOWN"}]


def test_a_removed_card_leaves_its_customer_to_her_other_card_and_her_phone(make: Any) -> None:
    """§3's `removed.cards` with §4: the customer stays; her phone finds her through her
    other active card, and once that one is removed too, `BLOCKED` ("no active card")."""
    phone = "+79161234567"
    till = make(
        full(
            1,
            products=[{"sku": "A", "name": "A"}],
            customers=[{"id": "c-1", "firstName": "Анна", "balancePoints": 1, "phone": phone}],
            cards=[{"number": ANNA, "customerId": "c-1"}, {"number": ANNA2, "customerId": "c-1"}],
        )
    )
    assert load(till, delta(2, 1, removed={"cards": [ANNA]}))[0] == 0
    assert ident(till, ANNA) == {"status": "UNKNOWN"}
    assert ident(till, phone)["customerId"] == ident(till, ANNA2)["customerId"] == "c-1"
    assert load(till, delta(3, 2, removed={"cards": [ANNA2]}))[0] == 0
    assert ident(till, phone) == {"status": "BLOCKED", "reason": "the customer has no active card"}


def test_pending_applied_through_older_snapshots_and_values_outside_their_sets(
    make: Any,
) -> None:
    """§3: `pending` becomes spendable at `activatesAt` (a start: that very moment);
    `appliedThrough[this till]` below the ledger's last seq counts only the later
    transactions on top of `balancePoints`, above it counts none and numbering goes on
    above it, and a delta never lowers it; a snapshot older than the cache is refused, the
    very same one is "unchanged"; unknown fields are left out with a warning; a segment or a
    card status outside its set refuses the snapshot."""
    v1 = full(
        5,
        program={"tiers": GOLD10},
        products=[{"sku": "A", "name": "A"}],
        customers=[
            {
                "id": "c-1",
                "firstName": "Анна",
                "tier": "gold",
                "balancePoints": 1000,
                "pending": [
                    {"points": 40, "activatesAt": "2026-12-16T00:00:00+03:00"},
                    {"points": 7, "activatesAt": "2026-12-17T10:00:00+03:00"},
                ],
            },
            {"id": "c-2", "firstName": "Борис", "balancePoints": 50},
        ],
        cards=[{"number": ANNA, "customerId": "c-1"}, {"number": BOB, "customerId": "c-2"}],
    )
    till = make(v1)
    for at, available, pending in [
        ("2026-12-15T23:59:59.999999+03:00", 1000, 47),
        ("2026-12-16T00:00:00+03:00", 1040, 7),
        ("2026-12-17T09:59:59+03:00", 1040, 7),
        ("2026-12-17T10:00:00+03:00", 1047, 0),
    ]:
        assert till.balance(ANNA, at) == {"availablePoints": available, "pendingPoints": pending}

    assert load(till, v1)[1] == {
        "version": 5,
        "issuedAt": "2026-12-05T00:00:00Z",
        "unchanged": True,
    }
    for older in (full(4), v1 | {"issuedAt": "2026-12-05T00:00:01Z"}):
        code, out, err = load(till, older)
        assert (code, out) == (2, "") and "is not newer than the cache's 5" in err

    for field, value, words in [
        ("segment", "VIP", "is not one of NEW, ACTIVE, AT_RISK, CHURNED"),
        ("segment", "active", "is not one of NEW, ACTIVE, AT_RISK, CHURNED"),
    ]:
        row = {"id": "c-2", "firstName": "Б", "balancePoints": 60, field: value}
        code, _, err = load(till, delta(6, 5, customers=[row]))
        assert code == 2 and words in err, err
    code, _, err = load(
        till, delta(6, 5, cards=[{"number": BOB, "customerId": "c-2", "status": "STOLEN"}])
    )
    assert code == 2 and "is not one of ACTIVE, BLOCKED or LOST" in err
    rows = [
        {"id": f"c-{n}", "firstName": "Б", "balancePoints": 1, "segment": s}
        for n, s in enumerate(["NEW", "ACTIVE", "AT_RISK", "CHURNED"], 3)
    ]
    rows.append({"id": "c-2", "firstName": "Б", "balancePoints": 60, "lastName": "X"})
    code, _, err = load(till, delta(6, 5, customers=rows, stores=[]))
    assert code == 0 and "customers[].lastName, stores" in err

    sales = []
    for n, asked in enumerate([0, 10, 20], 1):  # 100,00 at 10 %
        sale = till.doc("checkout", receipt(f"r{n}", ANNA, [("A", "1", 10000)], redeemPoints=asked))
        sales.append((sale["seq"], sale["redeemedPoints"], sale["earnedPoints"]))
    # 10000 × 10 % = 10; 9000 → 9; 8000 → 8.  1000 + 10 − 10 + 9 − 20 + 8 = 997 (+ 47 pending
    # at AT). The till's own seqs start at 1.
    assert sales == [(1, 0, 10), (2, 10, 9), (3, 20, 8)]
    back = till.doc("refund", refund("f1", "r1", "2026-12-15T13:00:00+03:00", ("A", "1")))
    assert (back["seq"], back["takenBackPoints"]) == (4, 10)

    # The hub counted seq 1 and 2: 1000 + 10 − 10 + 9 = 1009 (and the pending 47).
    c1 = {"id": "c-1", "firstName": "Анна", "tier": "gold", "balancePoints": 1009}
    assert (
        load(
            till,
            full(
                7,
                products=v1["products"],
                customers=[c1],
                cards=v1["cards"],
                program={"tiers": GOLD10},
                appliedThrough={"till-1": 2},
            ),
        )[0]
        == 0
    )
    # + seq 3 (−20 + 8) + seq 4 (−10) = 987
    assert till.balance(ANNA, AT) == {"availablePoints": 987, "pendingPoints": 0}
    assert load(till, delta(8, 7, appliedThrough={"till-1": 1}))[0] == 0  # never lowered
    assert till.balance(ANNA, AT) == {"availablePoints": 987, "pendingPoints": 0}
    c1["balancePoints"] = 500
    assert (
        load(
            till,
            full(
                9,
                products=v1["products"],
                customers=[c1],
                cards=v1["cards"],
                program={"tiers": GOLD10},
                appliedThrough={"till-1": 10},
            ),
        )[0]
        == 0
    )
    assert till.balance(ANNA, AT) == {"availablePoints": 500, "pendingPoints": 0}
    sale = till.doc("checkout", receipt("r5", ANNA, [("A", "1", 10000)]))
    assert sale["seq"] == 11 and sale["balance"]["availablePoints"] == 510


# ---------------------------------------------------------------- §6: refunds


def test_refunds_in_parts_across_lines_of_one_sku_a_weighed_line_and_extra_points(
    make: Any,
) -> None:
    """§6 sentence by sentence on one receipt: A×3, A×2, B 1.5 kg, tobacco C (excluded),
    100 points redeemed, an EXTRA_POINTS 50. Each refund moves floor(p × r / q) and floor(e ×
    r / q) less what the refunds before moved; a returned A takes the first line with qty
    left, then the next; EXTRA_POINTS go back only when every line, the excluded one
    included, is back; the balance ends where it began. Then the refusals: more than was
    bought, a SKU not on the receipt, a receipt never committed, a refund before its sale, a
    `refundId` sent again (the stored result, a quantity written otherwise the same body) and
    reused with another body (a conflict)."""
    till = make(
        full(
            1,
            program={"tiers": GOLD10},
            products=[
                {"sku": "A", "name": "A"},
                {"sku": "B", "name": "B"},
                {"sku": "C", "name": "C", "excludedFromLoyalty": True},
            ],
            customers=[{"id": "c-1", "firstName": "Анна", "tier": "gold", "balancePoints": 1000}],
            cards=[{"number": ANNA, "customerId": "c-1"}],
            offers=[{"id": "x", "kind": "EXTRA_POINTS", "value": "50", "minTotalMinor": 1}],
        )
    )
    lines = [("A", "3", 10000), ("A", "2", 10000), ("B", "1.5", 20000), ("C", "1", 5000)]
    sale = till.doc("checkout", receipt("r1", ANNA, lines, redeemPoints=100))
    # Capacities 300, 200, 300: 100 points spread 37.5, 25, 37.5 → 37, 25, 37 + 1 to the
    # earlier .5: p = 38, 25, 37. Paid 26200, 17500, 26300 at 10 %: 26.2, 17.5, 26.3 = 70 →
    # 26, 17, 26 + 1 to the largest fraction (.5): e = 26, 18, 26. Earned 70 + 50 = 120.
    assert lines_of(sale) == [
        ("A", 0, None, 3800, 26),
        ("A", 0, None, 2500, 18),
        ("B", 0, None, 3700, 26),
        ("C", 0, None, 0, 0),
    ]
    assert sale["balance"]["availablePoints"] == 1000 - 100 + 120

    def back(n: int, hour: int, *returned: tuple[str, str]) -> tuple[int, int, int, int, bool]:
        at = f"2026-12-15T{hour}:00:00+03:00"
        return moved(till.doc("refund", refund(f"f{n}", "r1", at, *returned)))

    # L1 r=1: floor(38/3) = 12, floor(26/3) = 8.
    assert back(1, 13, ("A", "1")) == (12, 8, 1024, 0, False)
    # L1 r=3: 38 − 12 = 26, 26 − 8 = 18; then L2 r=1: floor(25/2) = 12, floor(18/2) = 9.
    assert back(2, 14, ("A", "3")) == (38, 27, 1035, 0, False)
    # B r=0.5 of 1.5: floor(37/3) = 12, floor(26/3) = 8.
    assert back(3, 15, ("B", "0.5")) == (12, 8, 1039, 0, False)
    # B r=1.2: floor(37 × 0.8) = 29 → 17; floor(26 × 0.8) = 20 → 12.
    assert back(4, 16, ("B", "0.7")) == (17, 12, 1044, 0, False)
    # B r=1.5: 8 and 6; L2 r=2: 13 and 9. C is not back: the 50 stay.
    assert back(5, 17, ("B", "0.3"), ("A", "1")) == (21, 15, 1050, 0, False)
    # C, the last line: nothing of its own, and the receipt's 50.
    assert back(6, 18, ("C", "1")) == (0, 50, 1000, 0, False)

    for body, status in [
        (
            refund("f7", "r1", "2026-12-15T19:00:00+03:00", ("A", "0.001")),
            "5 bought, 5 returned before, 0 left to return",
        ),
        (refund("f8", "r1", "2026-12-15T19:00:00+03:00", ("Z", "1")), "has no line with sku Z"),
        (
            refund("f9", "r9", "2026-12-15T19:00:00+03:00", ("A", "1")),
            "receipt r9 was never committed at this till",
        ),
        (refund("f10", "r1", "2026-12-15T11:59:59+03:00", ("A", "1")), "is before the sale"),
        (
            refund("f1", "r1", "2026-12-15T13:00:00+03:00", ("A", "2")),
            "refund f1 is already stored with another body",
        ),
    ]:
        assert status in till.refused("refund", body)
    again = till.doc("refund", refund("f1", "r1", "2026-12-15T13:00:00+03:00", ("A", "1.000")))
    assert (moved(again), again["seq"]) == ((12, 8, 1024, 0, False), 2)
    assert till.balance(ANNA, "2026-12-15T20:00:00+03:00") == {
        "availablePoints": 1000,
        "pendingPoints": 0,
    }


def test_a_refund_takes_back_off_the_receipts_pending_points_then_below_zero(make: Any) -> None:
    """§6: while the sale's points are pending a refund takes back off them (not off the
    available balance, which gets the returned points at once); after activation, off the
    available balance; that may go below zero, and `negativeBalance` says so; the debt is
    paid by the points that activate later."""
    till = make(
        full(
            1,
            program={"activationDelayDays": 2, "maxRedeemPercent": 100, "tiers": GOLD10},
            products=[{"sku": "A", "name": "A"}],
            customers=[
                {
                    "id": "c-1",
                    "firstName": "Анна",
                    "tier": "gold",
                    "balancePoints": 100,
                    "pending": [{"points": 5, "activatesAt": "2026-12-16T00:00:00+03:00"}],
                },
            ],
            cards=[{"number": ANNA, "customerId": "c-1"}],
            offers=[{"id": "x", "kind": "EXTRA_POINTS", "value": "50", "minTotalMinor": 1}],
        )
    )
    sale = till.doc("checkout", receipt("r1", ANNA, [("A", "4", 10000)], redeemPoints=-1))
    # All 100 available points (the 5 pending until the 16th); 30000 × 10 % = 30 + 50.
    assert (sale["redeemedPoints"], sale["earnedPoints"]) == (100, 80)
    assert sale["balance"] == {"availablePoints": 0, "pendingPoints": 85}
    first = till.doc("refund", refund("f1", "r1", "2026-12-16T12:00:00+03:00", ("A", "1")))
    # floor(100/4) = 25 back, floor(30/4) = 7 off the sale's 80 pending: 73; 5 + 25 = 30.
    assert moved(first) == (25, 7, 30, 73, False)
    assert till.balance(ANNA, "2026-12-17T11:59:59+03:00") == {
        "availablePoints": 30,
        "pendingPoints": 73,
    }
    assert till.balance(ANNA, "2026-12-17T12:00:00+03:00") == {
        "availablePoints": 103,
        "pendingPoints": 0,
    }
    second = till.doc("refund", refund("f2", "r1", "2026-12-17T12:00:00+03:00", ("A", "1")))
    # r=2: 50 − 25 = 25 back, floor(60/4) = 15 − 7 = 8 off the available 103: 120.
    assert moved(second) == (25, 8, 120, 0, False)
    spend = till.doc(
        "checkout",
        receipt("r2", ANNA, [("A", "100", 10000)], at="2026-12-17T13:00:00+03:00", redeemPoints=-1),
    )
    # 120 spent; 988000 × 10 % = 988 + 50 = 1038 pending until the 19th.
    assert spend["balance"] == {"availablePoints": 0, "pendingPoints": 1038}
    last = till.doc("refund", refund("f3", "r1", "2026-12-17T14:00:00+03:00", ("A", "2")))
    # The whole receipt: 100 − 50 = 50 back; 30 − 15 = 15 and the 50 taken back: 0 + 50 − 65.
    assert moved(last) == (50, 65, -15, 1038, True)
    assert till.balance(ANNA, "2026-12-20T00:00:00+03:00") == {
        "availablePoints": 1023,
        "pendingPoints": 0,
    }


def test_a_refund_is_the_sales_customers_whatever_the_card_is_now(make: Any) -> None:
    """The contract is silent; CONTRACT §6's decision (review 49): a refund moves the points
    of the sale's customer, whatever the sale's card is in the cache now — blocked, lost,
    removed, or moved to another customer — and answers that customer's balance; `null`
    when that customer has left the cache (the points still count for her if she comes
    back). An UNKNOWN card's sale takes back its base-tier points with `balance` null."""
    v1 = full(
        1,
        program={"activationDelayDays": 1},
        products=[{"sku": "A", "name": "A"}],
        customers=[
            {"id": "c-1", "firstName": "Анна", "tier": "gold", "balancePoints": 1000},
            {"id": "c-2", "firstName": "Борис", "tier": "base", "balancePoints": 100},
        ],
        cards=[{"number": ANNA, "customerId": "c-1"}, {"number": BOB, "customerId": "c-2"}],
    )
    till = make(v1)
    stranger = till.doc("checkout", receipt("u1", "2770000000055", [("A", "3", 10000)]))
    assert (stranger["card"], stranger["earnedPoints"]) == ({"status": "UNKNOWN"}, 9)  # 3 %
    gone = till.doc("refund", refund("fu", "u1", "2026-12-15T13:00:00+03:00", ("A", "1")))
    assert (gone["takenBackPoints"], gone["balance"]) == (3, None)  # floor(9/3)

    sale = till.doc("checkout", receipt("a1", ANNA, [("A", "4", 10000)], redeemPoints=40))
    # 36000 × 7 % (gold's default) = 25.2 → 25, pending a day.
    assert (sale["redeemedPoints"], sale["earnedPoints"]) == (40, 25)
    assert sale["balance"] == {"availablePoints": 960, "pendingPoints": 25}
    at = "2026-12-15T13:00:00+03:00"
    steps: list[tuple[dict[str, Any], tuple[int, int, Any]]] = [
        # BLOCKED: floor(40/4) = 10 back, floor(25/4) = 6 off the pending 25.
        (
            delta(2, 1, cards=[{"number": ANNA, "customerId": "c-1", "status": "BLOCKED"}]),
            (10, 6, {"availablePoints": 970, "pendingPoints": 19}),
        ),
        # moved to Boris: still Anna's. r=2: 10 and floor(12.5) − 6 = 6.
        (
            delta(3, 2, cards=[{"number": ANNA, "customerId": "c-2"}]),
            (10, 6, {"availablePoints": 980, "pendingPoints": 13}),
        ),
        # removed: still Anna's. r=3: 10 and floor(18.75) − 12 = 6.
        (
            delta(4, 3, removed={"cards": [ANNA]}),
            (10, 6, {"availablePoints": 990, "pendingPoints": 7}),
        ),
        # Anna gone from the cache: her balance is not known here. r=4: 10 and 7.
        (delta(5, 4, removed={"customers": ["c-1"]}), (10, 7, None)),
    ]
    for n, (snap, expected) in enumerate(steps, 1):
        assert load(till, snap)[0] == 0
        done = till.doc("refund", refund(f"fa{n}", "a1", at, ("A", "1")))
        assert (done["returnedPoints"], done["takenBackPoints"], done["balance"]) == expected
    assert till.balance(BOB, AT) == {"availablePoints": 100, "pendingPoints": 0}  # untouched
    # Anna back with 500 and a new card: her own sale and refunds still count (no
    # appliedThrough): 500 − 40 + 25 + 40 − 25 = 500.
    back = {"id": "c-1", "firstName": "Анна", "tier": "gold", "balancePoints": 500}
    assert (
        load(till, delta(6, 5, customers=[back], cards=[{"number": ANNA2, "customerId": "c-1"}]))[0]
        == 0
    )
    assert till.balance(ANNA2, "2026-12-17T00:00:00+03:00") == {
        "availablePoints": 500,
        "pendingPoints": 0,
    }


# ---------------------------------------------------------------- §16: points that expire

EXPIRING = [
    {"points": 300, "expiresAt": "2026-12-20T23:59:59+03:00"},
    {"points": 200, "expiresAt": "2026-12-18T23:59:59+03:00"},
    {"points": 100, "expiresAt": "2027-01-31T23:59:59+03:00"},
    {"points": 50, "expiresAt": "2026-12-25T12:00:00+03:00"},
]
DAY16 = full(
    1,
    program={"pointsLifetimeDays": 30, "tiers": GOLD10},
    products=[{"sku": "A", "name": "A"}],
    customers=[
        {
            "id": "c-1",
            "firstName": "Анна",
            "tier": "gold",
            "balancePoints": 1000,
            "expiring": EXPIRING,
        }
    ],
    cards=[{"number": ANNA, "customerId": "c-1"}],
)
SALE16 = receipt("r1", ANNA, [("A", "10", 10000)], redeemPoints=250)
REFUND16 = refund("f1", "r1", "2026-12-19T12:00:00+03:00", ("A", "10"))
# (balance --at, what it answers after the refund), worked out in the test below
LATER16 = [
    (
        "2026-12-20T23:59:59.5+03:00",
        800,
        [
            (300, "2026-12-20T23:59:59+03:00"),
            (50, "2026-12-25T12:00:00+03:00"),
            (100, "2027-01-31T23:59:59+03:00"),
        ],
    ),
    (
        "2026-12-21T00:00:00+03:00",
        500,
        [(50, "2026-12-25T12:00:00+03:00"), (100, "2027-01-31T23:59:59+03:00")],
    ),
    (
        "2026-12-25T12:00:00.999+03:00",
        500,
        [(50, "2026-12-25T12:00:00+03:00"), (100, "2027-01-31T23:59:59+03:00")],
    ),
    ("2026-12-25T12:00:01+03:00", 450, [(100, "2027-01-31T23:59:59+03:00")]),
    ("2027-02-01T00:00:00+03:00", 350, []),
]


END20 = "2026-12-20T23:59:59+03:00"


def batches(balance: dict[str, Any]) -> list[tuple[int, str]]:
    return [(b["points"], b["expiresAt"]) for b in balance.get("expiring", [])]


def test_expiring_points_are_spent_soonest_first_and_come_back_to_their_batches(
    make: Any,
) -> None:
    """§16: 1000 points, of which 200 expire 18.12, 300 on 20.12, 50 on 25.12 at noon, 100 on
    31.01 (350 never). `expiring` lists the next 3. A sale of 250 points takes the 200 of
    18.12, then 50 of 20.12; its own 75 points expire 30 days later at its clock time. The
    whole refund on 19.12 gives back 250, last taken first: 50 into 20.12's, 200 into
    18.12's, expired: they stay expired (`returnedPoints` is still 250); the 75 come off the
    sale's own batch. Each `expiresAt` counts through its second, and not a second later;
    an end with a fraction is that very moment."""
    till = make(DAY16)
    assert batches(till.balance(ANNA, AT)) == [
        (200, "2026-12-18T23:59:59+03:00"),
        (300, "2026-12-20T23:59:59+03:00"),
        (50, "2026-12-25T12:00:00+03:00"),
    ]
    sale = till.doc("checkout", SALE16)
    # 75000 × 10 % = 75, expiring 14.01 12:00 (30 days); 1000 − 250 + 75 = 825.
    assert (sale["redeemedPoints"], sale["earnedPoints"]) == (250, 75)
    assert sale["balance"]["availablePoints"] == 825
    assert batches(sale["balance"]) == [
        (250, "2026-12-20T23:59:59+03:00"),
        (50, "2026-12-25T12:00:00+03:00"),
        (75, "2027-01-14T12:00:00+03:00"),
    ]
    for at in ("2026-12-18T23:59:59.999999+03:00", "2026-12-19T00:00:00+03:00"):
        assert till.balance(ANNA, at)["availablePoints"] == 825  # 18.12's batch was empty
    done = till.doc("refund", REFUND16)
    assert moved(done) == (250, 75, 800, 0, False)  # 825 + 50 − 75
    for at, available, listed in LATER16:
        answer = till.balance(ANNA, at)
        assert (answer["availablePoints"], batches(answer)) == (available, listed), at

    # An end with a fraction; a batch already gone when the snapshot came; a sale stamped
    # with a fraction dates its own batch with it.
    other = make(
        full(
            1,
            program={"pointsLifetimeDays": 10},
            products=[{"sku": "A", "name": "A"}],
            customers=[
                {
                    "id": "c-1",
                    "firstName": "Анна",
                    "tier": "gold",
                    "balancePoints": 1000,
                    "expiring": [
                        {"points": 300, "expiresAt": "2026-11-01T00:00:00+03:00"},
                        {"points": 10, "expiresAt": "2026-12-16T12:00:00.5+03:00"},
                        {"points": 20, "expiresAt": "2026-12-17T00:00:00+03:00"},
                        {"points": 30, "expiresAt": "2026-12-16T21:00:00Z"},  # the same moment
                        {"points": 40, "expiresAt": "2026-12-18T00:00:00+03:00"},
                    ],
                },
            ],
            cards=[{"number": ANNA, "customerId": "c-1"}],
        )
    )
    assert other.balance(ANNA, "2026-12-16T12:00:00.5+03:00")["availablePoints"] == 700
    assert other.balance(ANNA, "2026-12-16T12:00:00.500001+03:00")["availablePoints"] == 690
    sale = other.doc(
        "checkout",
        receipt(
            "r1", ANNA, [("A", "1", 10000)], at="2026-12-16T12:00:00.25+03:00", redeemPoints=15
        ),
    )
    # 10 of the 12:00:00.5 batch, 5 of the merged 50 of midnight; 8500 × 7 % = 5.95 → 5.
    assert sale["balance"]["availablePoints"] == 690
    assert batches(sale["balance"]) == [
        (45, "2026-12-17T00:00:00+03:00"),
        (40, "2026-12-18T00:00:00+03:00"),
        (5, "2026-12-26T12:00:00.250000+03:00"),
    ]
    # 1000 − (300 + 10 + 20 + 30 + 40) = 600 never expire (the 15 came off the batches);
    # with the sale's 5: 605 through 26.12 12:00:00.25, 600 after.
    assert other.balance(ANNA, "2026-12-26T12:00:00.25+03:00")["availablePoints"] == 605
    assert other.balance(ANNA, "2026-12-26T12:00:00.250001+03:00")["availablePoints"] == 600


@pytest.mark.parametrize(
    ("refund_at", "after"),
    [
        # In the batch's last second: the 30 go back into it alive, 70 expire at midnight.
        ("2026-12-20T23:59:59.5+03:00", {"availablePoints": 1003, "expiring": [(70, END20)]}),
        # At midnight: the batch has expired; the 30 go back into it and stay expired.
        ("2026-12-21T00:00:00+03:00", {"availablePoints": 933, "expiring": []}),
    ],
)
def test_points_given_back_at_a_batchs_last_moment_live_and_a_moment_later_stay_expired(
    make: Any, refund_at: str, after: dict[str, Any]
) -> None:
    """§16 with §2's inclusive end: 100 of 1000 points expire 20.12 at 23:59:59. A sale on
    15.12 spends 60 of them (40 left) and earns 94000 × 7 % = 65.8 → 65 (never expiring):
    1005. Half of it returned gives back floor(60 × 5 / 10) = 30 into the batch they came
    from and takes back floor(65 × 5 / 10) = 32. Either way 933 are left on the 21st; the
    rest returned then gives back 30 into the expired batch and takes back 33: 900."""
    till = make(
        full(
            1,
            products=[{"sku": "A", "name": "A"}],
            customers=[
                {
                    "id": "c-1",
                    "firstName": "Анна",
                    "tier": "gold",
                    "balancePoints": 1000,
                    "expiring": [{"points": 100, "expiresAt": END20}],
                }
            ],
            cards=[{"number": ANNA, "customerId": "c-1"}],
        )
    )
    sale = till.doc("checkout", receipt("r1", ANNA, [("A", "10", 10000)], redeemPoints=60))
    assert sale["balance"]["availablePoints"] == 1005
    assert batches(sale["balance"]) == [(40, END20)]
    half = till.doc("refund", refund("f1", "r1", refund_at, ("A", "5")))
    assert (half["returnedPoints"], half["takenBackPoints"]) == (30, 32)
    assert half["balance"]["availablePoints"] == after["availablePoints"]
    assert batches(half["balance"]) == after["expiring"]
    assert till.balance(ANNA, "2026-12-21T00:00:00+03:00")["availablePoints"] == 933
    rest = till.doc("refund", refund("f2", "r1", "2026-12-21T00:00:01+03:00", ("A", "5")))
    assert moved(rest) == (30, 33, 900, 0, False)


def test_a_lifetime_keeps_the_local_clock_time_across_both_clock_changes(make: Any) -> None:
    """§16 with §5 step 6, in Berlin, one day's activation and two days' lifetime: a sale on
    Saturday 28 March 2026 at 12:00 CET is spendable on the 29th at 12:00 CEST (10:00Z,
    23 hours later) and gone after the 31st 12:00 CEST; one on 24 October at 12:00 CEST is
    spendable on the 25th at 12:00 CET (11:00Z, 25 hours later) and gone after the 27th
    12:00 CET; one at 02:30 on the 24th becomes spendable at the first 02:30 of the 25th
    (CEST, 00:30Z)."""
    till = make(
        full(
            1,
            program={
                "timezone": "Europe/Berlin",
                "pointsLifetimeDays": 2,
                "activationDelayDays": 1,
                "tiers": [{"code": "base", "accrualPercent": "10"}],
            },
            products=[{"sku": "A", "name": "A"}],
            customers=[{"id": "c-1", "firstName": "Анна", "tier": "base", "balancePoints": 0}],
            cards=[{"number": ANNA, "customerId": "c-1"}],
        )
    )

    def sell(rid: str, at: str, qty: str) -> None:
        till.doc("checkout", receipt(rid, ANNA, [("A", qty, 10000)], at=at))

    def seen(at: str) -> tuple[int, int, list[tuple[int, str]]]:
        doc = till.balance(ANNA, at)
        return doc["availablePoints"], doc["pendingPoints"], batches(doc)

    sell("r1", "2026-03-28T12:00:00+01:00", "1")  # 10 points
    spring = [(10, "2026-03-31T12:00:00+02:00")]
    assert seen("2026-03-29T09:59:59Z") == (0, 10, [])
    assert seen("2026-03-29T10:00:00Z") == (10, 0, spring)
    assert seen("2026-03-31T10:00:00.999999Z") == (10, 0, spring)
    assert seen("2026-03-31T10:00:01Z") == (0, 0, [])
    sell("r2", "2026-10-24T12:00:00+02:00", "2")  # 20 points
    autumn = [(20, "2026-10-27T12:00:00+01:00")]
    assert seen("2026-10-25T10:59:59Z") == (0, 20, [])
    assert seen("2026-10-25T11:00:00Z") == (20, 0, autumn)
    assert seen("2026-10-27T11:00:00Z") == (20, 0, autumn)
    assert seen("2026-10-27T11:00:01Z") == (0, 0, [])
    sell("r3", "2026-10-24T02:30:00+02:00", "3")  # 30 points
    assert seen("2026-10-25T00:29:59Z") == (0, 50, [])
    assert seen("2026-10-25T00:30:00Z") == (30, 20, [(30, "2026-10-27T02:30:00+01:00")])


# ---------------------------------------------------------------- the doors agree

EXE = Path(sys.executable).parent / "tillpoint"


def day_at_both_doors(make: Any, tmp_path: Path, *, processes: bool) -> None:
    """§16's day above on two tills started together: on one, `snapshot load`,
    `checkout`, `refund` and `balance --at` (as real `tillpoint` processes when
    `processes`, else in this process but for one `balance --at`); on the other, a real
    `tillpoint run` whose snapshot a real `snapshot load` process gives it while it serves
    (else loaded before it starts), and the same bodies posted to its HTTP port. The same
    documents, byte for byte, and every later balance the figures worked out by hand."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env |= {"TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0"}
    by_cli, by_http = make(), make()
    files = {}
    for name, body in [("snap", DAY16), ("sale", SALE16), ("refund", REFUND16)]:
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    grpc_port = socket.socket()
    grpc_port.bind(("127.0.0.1", 0))
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{grpc_port.getsockname()[1]}"\n'
        "[metrics]\nenabled = false\n",
        encoding="utf-8",
    )
    grpc_port.close()
    if not processes:
        by_http.load(DAY16)  # before it serves, in this process
    run = subprocess.Popen(
        [EXE, "--config", conf, "--data-dir", by_http.dir, "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def tillpoint(data: Path, *argv: Any) -> str:
        done = subprocess.run(
            [EXE, "--data-dir", data, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def cli(*argv: Any) -> str:
        if processes:
            return tillpoint(by_cli.dir, *argv)
        code, out, err = by_cli.run(*map(str, argv))
        assert code == 0, err
        return str(out).strip()

    later = [at for at, _, _ in LATER16] if processes else [LATER16[1][0]]
    try:
        by_process = [
            cli("snapshot", "load", files["snap"], "--json"),
            cli("checkout", files["sale"], "--json"),
            cli("refund", files["refund"], "--json"),
        ] + [tillpoint(by_cli.dir, "balance", ANNA, "--at", at, "--json") for at in later]
        serving = by_http.dir / "serving.json"
        deadline = time.monotonic() + 60
        while not serving.exists():
            assert run.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)
        port = json.loads(serving.read_text(encoding="utf-8"))["port"]
        if processes:
            loaded = tillpoint(by_http.dir, "snapshot", "load", files["snap"], "--json")
            assert loaded == by_process[0]

        def post(path: str, body: Any) -> str:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request(
                    "POST",
                    path,
                    body=json.dumps(body),
                    headers={"Content-Type": "application/json"},
                )
                answer = conn.getresponse()
                status, text = answer.status, answer.read().decode()
            finally:
                conn.close()
            assert status == 200, text
            return text.strip()

        over_http = [
            post("/v1/checkout", SALE16),
            post("/v1/refund", REFUND16),
        ] + [post("/v1/balance", {"card": ANNA, "at": at}) for at, _, _ in LATER16]
    finally:
        run.terminate()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    assert over_http[:2] == by_process[1:3]
    if processes:
        assert over_http[2:] == by_process[3:]
    else:
        assert over_http[3] == by_process[3]
    assert json.loads(by_process[1])["balance"]["availablePoints"] == 825
    assert moved(json.loads(by_process[2])) == (250, 75, 800, 0, False)
    for text, (at, available, listed) in zip(over_http[2:], LATER16, strict=True):
        doc = json.loads(text)
        assert (doc["availablePoints"], batches(doc)) == (available, listed), at


def test_the_expiring_day_at_the_cli_and_over_a_running_agents_http_agree(
    make: Any, tmp_path: Path
) -> None:
    """The short twin of the test below: the CLI's till in this process but for one real
    `balance --at` process; the HTTP till's snapshot loaded before it serves."""
    day_at_both_doors(make, tmp_path, processes=False)


@pytest.mark.slow
def test_the_expiring_day_as_processes_and_over_a_running_agents_http_agree(
    make: Any, tmp_path: Path
) -> None:
    """§16's day as a hidden test drives it: every CLI call a real `tillpoint` process
    (`snapshot load`, `checkout`, `refund`, five `balance --at`), beside a real `tillpoint
    run`'s HTTP port (~10 s on a loaded machine)."""
    day_at_both_doors(make, tmp_path, processes=True)
