"""Review 39 (left39): older items earlier sessions left.

- spec38c: `balance --at T` with T before a later refund counted the points that refund
  gave back (CONTRACT §6, §16: available at T is what the customer had at T).
- rev38k: `maxRedeemPercent: 1.5` was refused in money's words ("write money in minor
  units"), at the till without its rule and at the hub's import without its field; other
  fields that count points or percents were told the same (CONTRACT §3).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, PROGRAM, receipt, snapshot

BORIS = "2770000000024"  # c-b: base tier (3 %), 80 points
MILK = "4601234000055"


def _sale(receipt_id: str, at: str, redeem: int, qty: str = "1") -> dict[str, Any]:
    return receipt(
        receipt_id,
        card=BORIS,
        at=at,
        lines=[{"sku": MILK, "qty": qty, "priceMinor": 45000}],
        redeemPoints=redeem,
    )


def _refund(refund_id: str, receipt_id: str, at: str, qty: str = "1") -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": at,
        "lines": [{"sku": MILK, "qty": qty}],
    }


@pytest.fixture(params=[0, 365], ids=["points-never-expire", "points-expire"])
def till(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(program={**PROGRAM, "pointsLifetimeDays": request.param}))
    yield agent
    agent.close()


def _balance(agent: Agent, at: str) -> dict[str, Any]:
    data = agent.balance(BORIS, datetime.fromisoformat(at)).to_json()
    data.pop("expiring", None)
    return data


def test_a_balance_before_a_refund_leaves_out_the_points_it_gave_back(till: Agent) -> None:
    """CONTRACT §6, §16: 80 points; a sale on the 23rd redeems 50 and earns 12 (3 % of
    400.00); it is returned on the 25th (50 given back, 12 taken back). On the 24th the
    customer had 42 points, not the 80 the refund gave them again."""
    sold = till.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
    assert (sold.earned_points, sold.to_json()["balance"]["availablePoints"]) == (12, 42)
    back = till.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
    assert (back.returned_points, back.taken_back_points) == (50, 12)
    assert back.to_json()["balance"]["availablePoints"] == 80
    assert _balance(till, "2026-11-24T12:00:00+03:00") == {
        "availablePoints": 42,
        "pendingPoints": 0,
    }
    assert _balance(till, "2026-11-25T10:00:00+03:00") == {
        "availablePoints": 80,
        "pendingPoints": 0,
    }


def test_points_given_back_then_spent_again_count_once(till: Agent) -> None:
    """The points the refund gave back spent again on the 26th: asked for the 24th, that
    spend counts at once (CONTRACT §5's decision: a later receipt can never spend points
    twice) and the give-back does not, so nothing is left, never below zero."""
    till.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
    till.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
    again = till.checkout(receipt_from_json(_sale("r-2", "2026-11-26T10:00:00+03:00", 80)))
    assert again.redeemed_points == 80
    assert _balance(till, "2026-11-24T12:00:00+03:00")["availablePoints"] == 0
    assert _balance(till, "2026-11-26T10:00:00+03:00")["availablePoints"] == 11


def test_a_late_receipt_dated_before_the_refund_redeems_what_was_there_then(till: Agent) -> None:
    """A receipt of the 24th sent after the refund of the 25th (an offline POS's queue):
    it may redeem the 42 points the customer had on the 24th, not the 80 of today, and
    its result's balance is what `balance --at` its time answers next (CONTRACT §5.6)."""
    till.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
    till.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
    late = till.checkout(receipt_from_json(_sale("r-2", "2026-11-24T12:00:00+03:00", 80)))
    assert late.redeemed_points == 42
    after = late.to_json()["balance"]
    after.pop("expiring", None)
    assert after == _balance(till, "2026-11-24T12:00:00+03:00")
    assert after["availablePoints"] == 0 + 12  # its own 12 points (3 % of 408.00)
    # today: 80 - 42 + 12
    assert _balance(till, "2026-11-26T12:00:00+03:00")["availablePoints"] == 50


def test_the_expiring_list_never_holds_points_given_back_later(tmp_path: Path) -> None:
    """Points that expire (§16): the 80 points all expire on 31.12; the sale takes 50 of
    them, its refund on the 25th puts them back. On the 24th 30 of them were left (and the
    sale's own 12, taken back on the 25th, count off at once): the list says no more than
    the 42 available, where it said 80 before."""
    snap = snapshot(program={**PROGRAM, "pointsLifetimeDays": 365})
    boris = next(c for c in snap["customers"] if c["id"] == "c-b")
    boris["expiring"] = [{"points": 80, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        agent.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
        agent.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
        then = agent.balance(BORIS, datetime.fromisoformat("2026-11-24T12:00:00+03:00")).to_json()
        assert then["availablePoints"] == 42
        assert sum(e["points"] for e in then["expiring"]) <= 42
        now = agent.balance(BORIS, datetime.fromisoformat("2026-11-25T12:00:00+03:00")).to_json()
        assert now["availablePoints"] == 80
        assert now["expiring"] == [{"points": 80, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    finally:
        agent.close()


# ---------------------------------------------------------------- rev38k: a fraction's words


@pytest.mark.parametrize(
    ("field", "rule"),
    [
        ("maxRedeemPercent", 'write it as a decimal string ("1.5")'),
        ("birthdayMultiplier", 'write it as a decimal string ("1.5")'),
        ("offlineRedeemLimitPoints", "write a whole number of points"),
        ("pointValueMinor", "write money in minor units"),
    ],
)
def test_a_snapshot_s_fraction_is_told_in_the_field_s_own_words(
    cli: CLI, field: str, rule: str
) -> None:
    """CONTRACT §3: a till reads the program's percents and multiplier as decimals (a
    string "1.5" loads); a JSON number 1.5 was told to "write money in minor units"."""
    run = cli("snapshot", "load", snapshot(program={**PROGRAM, field: 1.5}))
    assert run.code == 2
    line = run.err.strip()
    assert "\n" not in line
    assert f"program.{field}: the number 1.5 has a decimal point" in line
    assert rule in line
    if "Minor" not in field:
        assert "money" not in line


def test_a_customer_s_points_with_a_fraction_are_told_in_points(cli: CLI) -> None:
    snap = snapshot()
    snap["customers"][1]["balancePoints"] = 1.5
    run = cli("snapshot", "load", snap)
    assert run.code == 2
    assert "customers[1].balancePoints: the number 1.5 has a decimal point" in run.err
    assert "write a whole number of points" in run.err and "money" not in run.err


@pytest.mark.parametrize(
    ("doc", "said"),
    [
        (
            {"program": {"maxRedeemPercent": 1.5}},
            "program.maxRedeemPercent: the number 1.5 has a fraction: write a whole number"
            " (a percent, not money)",
        ),
        (
            {"program": {"tiers": [{"code": "base", "accrualPercent": 1.5}]}},
            "program.tiers[0].accrualPercent: the number 1.5 has a fraction: write it as a"
            ' decimal string ("1.5")',
        ),
        (
            {"program": {"activationDelayDays": 1.5}},
            "program.activationDelayDays: the number 1.5 has a fraction: write a whole number"
            " of days",
        ),
        (
            {"customers": [{"id": "c1", "balancePoints": 1.5}]},
            "customers[0].balancePoints: the number 1.5 has a fraction: write a whole number"
            " of points",
        ),
        (
            {"products": [{"sku": "p1", "priceMinor": 1.5}]},
            "products[0].priceMinor: the number 1.5 has a fraction: write money in minor units"
            " (whole numbers) and quantities as decimal strings",
        ),
    ],
)
def test_the_hub_s_import_names_the_field_of_a_fraction_and_its_rule(
    cli: CLI, tmp_path: Path, doc: dict[str, Any], said: str
) -> None:
    """A hub operator's `hub import` said "the number 1.5 has a fraction: use minor units
    or decimal strings" and no field: which of a file's thousands of numbers?"""
    run = cli("hub", "import", "--hub-dir", tmp_path / "hub", doc)
    assert run.code == 2
    assert run.err == f"tillpoint: import: {said}\n"


def test_a_json_lines_import_names_the_field_of_a_fraction_too(cli: CLI, tmp_path: Path) -> None:
    lines = tmp_path / "master.jsonl"
    lines.write_text(
        '{"format": "tillpoint.snapshot/jsonl", "program": {"maxRedeemPercent": 1.5}}\n',
        encoding="utf-8",
    )
    run = cli("hub", "import", "--hub-dir", tmp_path / "hub", lines)
    assert run.code == 2
    assert "line 1: program.maxRedeemPercent: the number 1.5 has a fraction" in run.err
    assert "(a percent, not money)" in run.err and "minor units" not in run.err


@pytest.mark.parametrize(
    ("place", "advice"),
    [
        ("program.maxRedeemPercent", "write a whole number (a percent, not money)"),
        ("customers[0].balancePoints", "write a whole number of points"),
        ("lines[0].priceMinor", "write money in minor units"),
        ("program.holdTtlSeconds", "write a whole number of seconds"),
    ],
)
def test_an_integer_field_s_advice_speaks_of_what_it_counts(place: str, advice: str) -> None:
    """What a proto JSON reader (gRPC's JSON mapping, a signed snapshot) tells of an int64
    field written with a point (agent/wire.py)."""
    from tillpoint.agent.wire import whole_number_advice

    assert whole_number_advice(place).startswith(advice)


def test_the_hub_asks_for_a_whole_percent_where_a_till_takes_a_decimal(
    cli: CLI, tmp_path: Path
) -> None:
    """`"maxRedeemPercent": "1.5%"` at the hub's import was told to be "a decimal string
    such as \"7.5\"", which the hub then refuses ("must be a whole number"): the rule
    said is the hub's own (CONTRACT §3's program at the hub is int64)."""
    run = cli(
        "hub", "import", "--hub-dir", tmp_path / "hub", {"program": {"maxRedeemPercent": "1.5%"}}
    )
    assert run.code == 2
    assert 'maxRedeemPercent must be a whole number such as "30"' in run.err
    assert "7.5" not in run.err
