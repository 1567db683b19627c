"""Review 26 (deal26): the offer features in combination (coupons, windows, basket deals,
explain), through the CLI with `--json` and HTTP on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, Till, sample_master_data, wait_for
from tillpoint.sync.pull import Puller, cache_version

from .conftest import CLI, post_to, receipt, snapshot

MILK, BREAD, CHEESE = "4601234000017", "4601234000024", "4601234000055"


def _load(cli: CLI, **changes: Any) -> None:
    done = cli("snapshot", "load", snapshot(**changes))
    assert done.code == 0, done.err


def _quote(cli: CLI, body: dict[str, Any], *more: str, command: str = "quote") -> dict[str, Any]:
    done = cli(command, body, "--json", *more)
    assert done.code == 0, done.err
    answer: dict[str, Any] = done.json()
    return answer


FIGURES = ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor", "earnedPoints")


def _outcomes(trace: dict[str, Any], line: int) -> dict[str, str]:
    return {row["offerId"]: row["outcome"] for row in trace["lines"][line]["offers"]}


def test_why_this_price_after_a_sale_that_used_a_coupon(cli: CLI) -> None:
    """docs/CONTRACT.md §17 with §13: `quote --explain` of a committed receipt is support's
    "why this price?" after the sale. A sale that used a coupon got no trace: priced again,
    its own use of the code made the code ALREADY_USED, the coupon's offer did not apply,
    the figures differed and the trace was left out. The receipt's own use is no other
    receipt's: the trace names the coupon's offer (a deal here) as the sale applied it."""
    offers = [
        {"id": "o-sorry", "kind": "PERCENT_OFF", "skus": [MILK], "value": "20",
         "couponRequired": True},
        {"id": "o-2for1", "kind": "MULTIBUY", "skus": [CHEESE], "buyQty": "1", "freeQty": "1",
         "couponRequired": True},
        {"id": "o-5", "kind": "PERCENT_OFF", "skus": [MILK, CHEESE], "value": "5"},
    ]  # fmt: skip
    coupons = [
        {"code": "SORRY1", "offerId": "o-sorry", "customerId": "c-a"},
        {"code": "DEAL1", "offerId": "o-2for1"},
    ]
    _load(cli, offers=offers, coupons=coupons)
    body = receipt(
        "r-coupon",
        lines=[
            {"sku": MILK, "qty": "2", "priceMinor": 8990},
            {"sku": CHEESE, "qty": "2", "priceMinor": 30000},
        ],
        coupons=["sorry-1", "DEAL 1"],
    )
    before = _quote(cli, body, "--explain")
    sold = _quote(cli, body, command="checkout")
    assert [v["status"] for v in sold["coupons"]] == ["APPLIED", "APPLIED"]
    assert [line["offerId"] for line in sold["lines"]] == ["o-sorry", "o-2for1"]
    after = _quote(cli, body, "--explain")
    assert {k: after[k] for k in FIGURES} == {k: sold[k] for k in FIGURES}
    assert after["coupons"] == sold["coupons"]
    assert "trace" in after, "no trace for the sale's own coupons"
    assert after["trace"]["lines"] == before["trace"]["lines"]
    assert _outcomes(after["trace"], 0) == {"o-sorry": "APPLIED", "o-5": "BEATEN"}
    assert _outcomes(after["trace"], 1) == {"o-2for1": "APPLIED", "o-5": "TAKEN_BY_DEAL"}
    # another receipt may not use the codes: the sale used them
    other = _quote(cli, {**body, "receiptId": "r-other"}, "--explain")
    assert [v["reason"] for v in other["coupons"]] == ["ALREADY_USED", "ALREADY_USED"]
    assert _outcomes(other["trace"], 0) == {"o-sorry": "COUPON_MISSING", "o-5": "APPLIED"}


def test_why_this_price_names_the_caps_the_sale_was_priced_with(cli: CLI) -> None:
    """docs/CONTRACT.md §17: the redemption part of the trace names every cap and which one
    bound. Priced again after the sale, the caps were the ledger's after it: a sale that
    spent the whole balance, or the day's whole offline limit, got no trace at all (its
    own spending left nothing to spend), and one that spent part of it showed a balance
    cap the sale never saw. The sale's own points and offline use are left out: the trace
    shows the caps the sale was priced with."""
    _load(cli)
    whole_balance = receipt(  # Борис has 80 points; 30 % of 1000.00 is 300
        "r-balance", card="2770000000024", redeemPoints=-1,
        lines=[{"sku": MILK, "qty": "10", "priceMinor": 10000}],
    )  # fmt: skip
    day_limit = receipt(  # Анна has 1200 points; the offline limit is 500 a day
        "r-limit", redeemPoints=-1, lines=[{"sku": MILK, "qty": "100", "priceMinor": 10000}]
    )
    part = receipt("r-part", redeemPoints=10, at="2026-11-24T09:00:00+03:00")  # another day
    for body, cap, points in (
        (whole_balance, "BALANCE", 80),
        (day_limit, "OFFLINE_LIMIT", 500),
        (part, "REQUESTED", 10),
    ):
        before = _quote(cli, body, "--explain")
        sold = _quote(cli, body, command="checkout")
        assert sold["redeemedPoints"] == points
        after = _quote(cli, body, "--explain")
        assert {k: after[k] for k in FIGURES} == {k: sold[k] for k in FIGURES}
        assert "trace" in after, f"{body['receiptId']}: no trace after the sale"
        assert after["trace"] == before["trace"]
        assert after["trace"]["redemption"]["boundBy"] == cap


@pytest.fixture()
def two_offer_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    """A hub whose snapshot has two coupon offers on milk: 50 % off (code BIG1) and 20.00
    off a unit (code SMALL1), both for any identified customer."""
    offers = [
        {"id": "o-big", "kind": "PERCENT_OFF", "skus": [MILK], "value": "50",
         "couponRequired": True},
        {"id": "o-small", "kind": "AMOUNT_OFF", "skus": [MILK], "value": "2000",
         "couponRequired": True},
    ]  # fmt: skip
    codes = [{"code": "BIG1", "offerId": "o-big"}, {"code": "SMALL1", "offerId": "o-small"}]
    hub = LoopbackHub(
        tmp_path / "hub", data=sample_master_data() | {"offers": offers, "coupons": codes}
    )
    yield hub
    hub.stop()


def _enrolled(hub: LoopbackHub, tmp_path: Path, name: str) -> Till:
    till = hub.till(name, tmp_path / name, start=False)
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    wait_for(lambda: cache_version(till.data_dir) == 1)
    return till


def _sale(receipt_id: str, *codes: str, redeem: int = 0) -> Any:
    return receipt_from_json(
        {
            "receiptId": receipt_id,
            "at": "2026-11-23T10:15:00+03:00",
            "card": "2770000000017",
            "lines": [{"sku": MILK, "qty": "2", "priceMinor": 8990}],
            "coupons": list(codes),
            "redeemPoints": redeem,
        }
    )


def _verdicts(result: Any) -> list[tuple[str, str, str]]:
    return [(v.code, v.status, v.reason) for v in result.coupons]


def test_a_code_that_wins_after_the_hub_refused_another_is_authorised_too(
    two_offer_hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §13: online, the hub authorises each applied code (two tills cannot
    use one code). A receipt with two codes: the hub says the first (the better offer) is
    used, the receipt is priced again without it, and the second code's offer now applies.
    That second code was APPLIED and consumed without the hub ever holding it (only the
    codes applied before the hub answered were asked about), so another till, online,
    used it too. A code that comes to apply after the hub's answer is authorised as well."""
    a, b = (_enrolled(two_offer_hub, tmp_path, name) for name in ("a", "b"))
    try:
        first = b.agent.checkout(_sale("b-1", "BIG1"))
        assert (first.mode, _verdicts(first)) == ("ONLINE", [("BIG1", "APPLIED", "")])
        both = a.agent.checkout(_sale("a-1", "BIG1", "SMALL1", redeem=10))
        assert both.mode == "ONLINE"
        assert _verdicts(both) == [
            ("BIG1", "REJECTED", "ALREADY_USED"),
            ("SMALL1", "APPLIED", ""),
        ]
        assert both.payable_minor == 17980 - 4000 - 1000  # 20.00 off each unit, 10 points
        # asked twice, the hub holds the receipt's points once
        assert two_offer_hub.store.holds_outstanding(datetime.now(UTC)) == (1, 10)
        # the hub holds SMALL1 for a-1 now: till b, online, may not use it
        third = b.agent.checkout(_sale("b-2", "SMALL1"))
        assert third.mode == "ONLINE"
        assert _verdicts(third) == [("SMALL1", "REJECTED", "ALREADY_USED")]
        assert third.payable_minor == 17980
    finally:
        for till in (a, b):
            till.stop()


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = post_to(port, path, body)
    assert status == 200, answer
    return dict(answer)


def test_windows_weekdays_and_the_favourite_day_over_http_at_their_edges(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §14 with §17, over HTTP: a Friday night window (22:00-02:00: the
    morning part is Friday's night), a favourite-weekday night window, an hour the autumn
    clock change repeats (Berlin, 25 October 2026: both 02:30s are inside 02:00-03:00), the
    exact edges (from inclusive, to exclusive); each answer with and without `explain` the
    same but for the trace, which names the winner and why the others lost."""
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.service import Agent

    offers = [
        {"id": "o-night", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10",
         "weekdays": [5], "hours": [{"from": "22:00", "to": "02:00"}]},
        {"id": "o-fav", "kind": "AMOUNT_OFF", "skus": [MILK], "value": "1500",
         "onFavoriteWeekday": True, "hours": [{"from": "23:00", "to": "01:00"}]},
        {"id": "o-dst", "kind": "FIXED_PRICE", "skus": [MILK], "value": "1000",
         "hours": [{"from": "02:00", "to": "03:00"}]},
    ]  # fmt: skip
    snap = snapshot(offers=offers)
    snap["program"]["timezone"] = "Europe/Berlin"
    snap["customers"][0]["favoriteWeekday"] = 5  # Friday
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snap)
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    cases = [  # at (Berlin), the offer that applies, the others' outcomes
        ("2026-11-27T21:59:59+01:00", None, {}),  # Friday, a second before the night
        ("2026-11-27T22:00:00+01:00", "o-night", {}),
        ("2026-11-27T23:00:00+01:00", "o-fav", {"o-night": "BEATEN"}),
        ("2026-11-28T00:59:59+01:00", "o-fav", {"o-night": "BEATEN"}),  # still Friday's
        ("2026-11-28T01:00:00+01:00", "o-night", {"o-fav": "OUTSIDE_WINDOW"}),
        ("2026-11-28T02:00:00+01:00", "o-dst", {"o-night": "OUTSIDE_WINDOW"}),  # Saturday
        ("2026-11-27T01:30:00+01:00", None, {}),  # Friday morning: Thursday's night
        ("2026-10-25T02:30:00+02:00", "o-dst", {}),  # summer time's 02:30
        ("2026-10-25T02:30:00+01:00", "o-dst", {}),  # the same clock time an hour later
        ("2026-10-25T03:00:00+01:00", None, {}),
    ]
    try:
        for n, (at, winner, others) in enumerate(cases):
            body = receipt(f"w-{n}", at=at, lines=[{"sku": MILK, "qty": "1", "priceMinor": 10000}])
            plain = _post(server.port, "/v1/quote", body)
            explained = _post(server.port, "/v1/quote", {**body, "explain": True})
            trace = explained.pop("trace")
            assert explained == plain, at
            assert plain["lines"][0]["offerId"] == winner, at
            outcomes = _outcomes(trace, 0)
            expected = {o["id"]: "OUTSIDE_WINDOW" for o in offers} | others
            if winner is not None:
                expected[winner] = "APPLIED"
            assert outcomes == expected, at
    finally:
        server.stop()
        agent.close()


def test_a_coupon_deal_in_a_control_group_beside_a_second_deal_and_weighed_lines(
    cli: CLI,
) -> None:
    """docs/CONTRACT.md §13, §15, §5 step 7, §17 together: a coupon unlocks a 3-for-2 of
    the customer's control group (it would have won: held out, its code NOT_APPLICABLE and
    not used up); the next deal (2-for-1 on dairy, priority 6) takes the whole-quantity
    lines from a personal 10 % and a quantity price; the weighed cheese line takes part in
    no deal and gets the quantity price (the SKU's 3.5 reaches its tier); the trace names
    each line's winner and why every other offer lost, and changes no figure."""
    offers = [
        {"id": "mb", "kind": "MULTIBUY", "skus": [MILK, CHEESE], "buyQty": "2",
         "freeQty": "1", "couponRequired": True, "priority": 5, "campaignId": "k"},
        {"id": "mb2", "kind": "MULTIBUY", "categories": ["dairy"], "buyQty": "1",
         "freeQty": "1", "priority": 6},
        {"id": "p10", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10",
         "customerId": "c-a"},
        {"id": "qp", "kind": "QUANTITY_PRICE", "skus": [CHEESE],
         "tiers": [{"minQty": "2", "unitPriceMinor": 9000}]},
    ]  # fmt: skip
    snap = snapshot(offers=offers, coupons=[{"code": "MB-1", "offerId": "mb"}])
    snap["customers"][0]["controlGroups"] = ["k"]
    _load(cli, **snap)
    body = receipt(
        lines=[
            {"sku": MILK, "qty": "2", "priceMinor": 8990},
            {"sku": CHEESE, "qty": "2.5", "priceMinor": 10000},
            {"sku": CHEESE, "qty": "1", "priceMinor": 10000},
            {"sku": BREAD, "qty": "1", "priceMinor": 5000},
        ],
        coupons=["mb-1"],
    )
    plain = _quote(cli, body)
    explained = _quote(cli, body, "--explain")
    trace = explained.pop("trace")
    assert explained == plain
    assert [(x["offerId"], x["discountMinor"]) for x in plain["lines"]] == [
        ("mb2", 8990),  # cheese 100.00, milk 89.90 | milk 89.90: the second unit free
        ("qp", 2500),  # 2.5 × 100.00 − 2.5 × 90.00
        ("mb2", 0),  # in the deal's group, no free unit
        (None, 0),
    ]
    assert plain["heldOut"] == ["mb"]
    assert plain["coupons"] == [{"code": "MB1", "status": "REJECTED", "reason": "NOT_APPLICABLE"}]
    assert _outcomes(trace, 0) == {"mb": "CONTROL_GROUP", "mb2": "APPLIED", "p10": "TAKEN_BY_DEAL"}
    assert _outcomes(trace, 1) == {"mb": "ZERO_DISCOUNT", "mb2": "ZERO_DISCOUNT", "qp": "APPLIED"}
    assert _outcomes(trace, 2) == {"mb": "CONTROL_GROUP", "mb2": "APPLIED", "qp": "TAKEN_BY_DEAL"}
    assert [
        (d["offerId"], d["outcome"], d["discountMinor"], d["lineOffersMinor"])
        for d in trace["deals"]
    ] == [
        ("mb", "CONTROL_GROUP", 8990, 2798),
        ("mb2", "APPLIED", 8990, 2798),
    ]
    # the code was not used up: the next receipt may take it
    sold = _quote(cli, body, command="checkout")
    assert sold["coupons"] == plain["coupons"]
    again = _quote(cli, {**body, "receiptId": "r-next"})
    assert again["coupons"] == plain["coupons"]  # still NOT_APPLICABLE, not ALREADY_USED
