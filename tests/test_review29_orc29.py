"""Review 29 (orc29): what a receipt tells beside its figures, against a reference model.

tests/oracle29.py models, from docs/CONTRACT.md §5, §7, §8, §13–§17 and their decisions
alone, the §17 trace of a priced receipt (every offer of each line with its outcome, the
basket deals, the receipt offers with their thresholds, the redemption's caps and which
one bound), the offers §7 prints after each commit over a till's weeks (holds confirmed
and cancelled, the per-customer cooldown), and the §8 display rows of a quote, a hold, a
checkout, a confirm and a cancel. Seeded random snapshots and baskets (review 28's
generators) go through a public door (the agent's calls, HTTP) and every field is compared
with the model. The first tests pin what the model found the product telling wrong.
Slow: the `_longer` runs (about 15 s together on one worker).
"""

from __future__ import annotations

import copy
import json
import random
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot
from .oracle28 import TillState
from .oracle29 import (
    Explainer,
    PrintBook,
    checkout_display,
    normal_trace,
    printed_offers,
    quote_display,
)
from .test_review28_orc28 import (
    CENTRE,
    SECOND_CARD,
    disagreement,
    gen_receipt,
    gen_snapshot,
    sequence,
)

MILK = "4601234000017"
ANNA, BORIS = "2770000000017", "2770000000024"  # Анна is in her birthday window on 23.11


def _offers(trace: dict[str, Any], line: int) -> dict[str, dict[str, Any]]:
    return {o["offerId"]: o for o in trace["lines"][line]["offers"]}


# ---------------------------------------------------------------- what the model found


def test_a_control_group_multiplier_on_a_line_that_earns_nothing_is_zero_discount(
    cli: CLI,
) -> None:
    """docs/CONTRACT.md §13/§17: a multiplier on a line that earns on nothing (free after
    its discounts) gives nothing, and the trace says CONTROL_GROUP only for a control-group
    offer that would give its line something: a ×3 of the customer's control campaign on a
    free line is ZERO_DISCOUNT (it said CONTROL_GROUP) and is not held out."""
    snap = snapshot()
    snap["customers"][1]["controlGroups"] = ["k1"]
    snap["offers"] = [
        {"id": "x3", "campaignId": "k1", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "3"},
        {"id": "free", "kind": "FIXED_PRICE", "skus": [MILK], "value": "0"},
    ]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=BORIS, explain=True)
    got = cli("quote", rec, "--explain", "--json").json()
    assert got["lines"][0]["discountMinor"] == 17980 and got["heldOut"] == []
    assert _offers(got["trace"], 0)["x3"]["outcome"] == "ZERO_DISCOUNT"


def test_a_multiplier_below_the_birthdays_on_a_free_line_is_zero_discount(cli: CLI) -> None:
    """docs/CONTRACT.md §13/§17: on a line that earns on nothing the birthday's ×5 gives
    nothing either, so the line's multiplier offers are ZERO_DISCOUNT, not BEATEN by
    `birthdayMultiplier` (which it said: the birthday beat nothing)."""
    snap = snapshot()
    snap["offers"] = [{"id": "x2", "kind": "BONUS_MULTIPLIER", "skus": [MILK], "value": "2"}]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=ANNA, lines=[{"sku": MILK, "qty": "2", "priceMinor": 0}], explain=True)
    got = cli("quote", rec, "--explain", "--json").json()
    row = _offers(got["trace"], 0)["x2"]
    assert row["outcome"] == "ZERO_DISCOUNT" and not row.get("beatenBy")


def test_an_offer_a_deal_took_the_line_from_tells_what_it_would_give(cli: CLI) -> None:
    """docs/CONTRACT.md §17 / DECISIONS "Explain": each offer of a line comes with
    `discountMinor`, what it gives or would give the line; a money offer on a line a
    MULTIBUY took is TAKEN_BY_DEAL by the deal with the deal's discount there, and its own
    would-be discount (it said 0, as if the offer gave that line nothing)."""
    snap = snapshot()
    snap["offers"] = [
        {"id": "d21", "kind": "MULTIBUY", "skus": [MILK], "buyQty": "2", "freeQty": "1"},
        {"id": "p10", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"},
    ]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=BORIS, lines=[{"sku": MILK, "qty": "3", "priceMinor": 1000}])
    got = cli("quote", {**rec, "explain": True}, "--json").json()
    assert got["lines"][0]["offerId"] == "d21" and got["lines"][0]["discountMinor"] == 1000
    row = _offers(got["trace"], 0)["p10"]
    assert row["outcome"] == "TAKEN_BY_DEAL"
    assert (row["beatenBy"], row["beatenByDiscountMinor"]) == ("d21", 1000)
    assert row["discountMinor"] == 300
    assert got["trace"]["deals"][0]["lineOffersMinor"] == 300


@pytest.mark.parametrize(
    ("points", "first_row"),
    [
        (1_234_567_890_123, "28.11:-1234567890123"),  # the warning's last wording that fits
        (12_345_678_901_234, "Начислено: +5"),  # none fits: the points earned, as §8 asks
    ],
)
def test_an_expiry_warning_that_does_not_fit_never_drops_its_points(
    cli: CLI, points: int, first_row: str
) -> None:
    """docs/CONTRACT.md §8 and its decisions: the expiry warning needs its date and points
    together (`31.12: -300`, then `31.12:-300`); a warning no wording fits gives the row
    back to the points earned (§8: points earned and balance after commit). The result's
    display said "Сгорят 28.11", a date with no points, for a large batch."""
    snap = snapshot()
    snap["customers"][1]["balancePoints"] = points + 100
    snap["customers"][1]["expiring"] = [
        {"points": points, "expiresAt": "2026-11-28T23:59:59+03:00"}
    ]
    assert cli("snapshot", "load", snap).code == 0
    got = cli("checkout", receipt(card=BORIS), "--json").json()
    assert got["earnedPoints"] == 5
    assert got["display"] == [first_row, f"Б: {got['balance']['availablePoints']}"]


@pytest.mark.parametrize(
    ("expires", "warned"),
    [
        ("2026-04-03T10:00:00+02:00", True),  # 14 store days to the minute (335 hours)
        ("2026-04-03T10:30:00+02:00", False),  # within 14 × 24 hours, after 14 store days
    ],
)
def test_the_expiry_warning_counts_store_days_across_a_clock_change(
    cli: CLI, expires: str, warned: bool
) -> None:
    """docs/CONTRACT.md §8/§16 decisions: the warning replaces the points earned when the
    first batch expires within 14 days of `at`; days are the store's (§2), at the same local
    clock time also across a daylight-saving change, as the activation delay (§5 step 6),
    the lifetime (§16) and the print cooldown (§7) count them. In a Berlin store on 20 March
    at 10:00, a batch expiring on 3 April at 10:30 (summer time) is after those 14 days:
    it counted 14 × 24 hours and warned."""
    snap = snapshot()
    snap["program"] = {**snap["program"], "timezone": "Europe/Berlin"}
    snap["customers"][1]["balancePoints"] = 500
    snap["customers"][1]["expiring"] = [{"points": 300, "expiresAt": expires}]
    assert cli("snapshot", "load", snap).code == 0
    rec = receipt(card=BORIS, at="2026-03-20T10:00:00+01:00")
    got = cli("checkout", rec, "--json").json()
    first = "Сгорят 03.04: 300" if warned else f"Начислено: +{got['earnedPoints']}"
    assert got["display"][0] == first


def test_the_discount_within_reach_is_the_one_the_customer_would_get_there(cli: CLI) -> None:
    """docs/CONTRACT.md §17/§8 decisions: with no savings yet a quote's display shows how
    much more the basket needs for the nearest receipt discount the customer would get.
    Two receipt discounts at one threshold: reaching it, step 3 gives the larger (§5: the
    best one), so the display names 10 %; it named the 3 % offer, the smaller id."""
    offers = [
        {"id": "r-a", "kind": "RECEIPT_PERCENT_OFF", "value": "3", "minTotalMinor": 100000},
        {"id": "r-b", "kind": "RECEIPT_PERCENT_OFF", "value": "10", "minTotalMinor": 100000},
        {"id": "r-c", "kind": "RECEIPT_PERCENT_OFF", "value": "15", "minTotalMinor": 100001},
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    got = cli("quote", receipt(card=BORIS), "--json").json()
    assert got["display"] == ["Итого: 179,80", "Ещё 821 ₽ до −10%"]
    bigger = receipt(card=BORIS, lines=[{"sku": MILK, "qty": "10", "priceMinor": 10000}])
    assert cli("quote", bigger, "--json").json()["lines"][0]["offerId"] == "r-b"


def test_a_long_hint_takes_the_narrow_displays_last_wording_before_it_is_left_out(
    cli: CLI,
) -> None:
    """docs/CONTRACT.md §8 decisions: the discount hint is never cut: `+520 ₽ до −5%`, then
    without its spaces (`+520₽ до −5%`), else the row stays empty. The result's 2 × 20
    display stopped one wording short: "+19 821 ₽ до −99,999%" (21) left the row empty
    where "+19821₽ до −99,999%" (19) fits."""
    offers = [
        {"id": "r", "kind": "RECEIPT_PERCENT_OFF", "value": "99.999", "minTotalMinor": 2000017}
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    got = cli("quote", receipt(card=BORIS), "--json").json()
    assert got["display"] == ["Итого: 179,80", "+19821₽ до \u221299,999%"]


# ---------------------------------------------------------------- the differential run


def quote(agent: Agent, rec: dict[str, Any]) -> dict[str, Any]:
    return agent.quote(receipt_from_json(rec)).to_json()


def trace_differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Each part of the trace the product told otherwise than the model."""
    g, w = normal_trace(got), normal_trace(want)
    out = []
    for gl, wl in zip(g["lines"], w["lines"], strict=True):
        if gl != wl:
            out.append(f"line {wl['index']}: product {gl['offers']} model {wl['offers']}")
    for part in ("deals", "receiptOffers", "redemption"):
        if g[part] != w[part]:
            out.append(f"{part}: product {g[part]} model {w[part]}")
    return out


def widen(rng: random.Random, snap: dict[str, Any]) -> None:
    """Offers that also target the goods that get none (§5 step 1: the tobacco line, a SKU
    not in the catalogue), so the trace's EXCLUDED_PRODUCT is weighed too."""
    for o in snap["offers"]:
        if "skus" in o and rng.random() < 0.4:
            o["skus"] = [*o["skus"], rng.choice(["tob", "zz-unknown"])]
        if "categories" in o and rng.random() < 0.15:
            o["categories"] = [*o["categories"], "tobacco"]


def run_traces(tmp_path: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    agent = Agent(tmp_path / f"data-{seed}", "till-1")
    problems: list[str] = []
    try:
        for n in range(count):
            snap = gen_snapshot(rng, n + 2)
            widen(rng, snap)
            rec = {**gen_receipt(rng, snap, n), "explain": True}
            agent.load_snapshot(snap)
            got = quote(agent, rec)
            plain = quote(agent, {**rec, "explain": False})
            # §17: the trace never changes a figure; with and without it, the same otherwise
            told = copy.deepcopy(got)
            told.pop("trace")
            if told != plain:
                problems.append(f"case {n}: explain changed the result")
            diff = trace_differences(got["trace"], Explainer(snap).explain(rec).trace)
            if diff:
                problems.append(disagreement(snap, rec, diff))
    finally:
        agent.close()
    return problems


def test_the_trace_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §17: 100 seeded snapshots and receipts, every field of the trace."""
    problems = run_traces(tmp_path, 29, 100)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


@pytest.mark.slow
def test_the_trace_matches_the_reference_model_longer(tmp_path: Path) -> None:
    """As above, on another seed (about 6 s alone)."""
    problems: list[str] = []
    for seed in (5,):
        problems += run_traces(tmp_path, seed, 250)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


# ---------------------------------------------------------------- §7 across a till's days


def print_case(rng: random.Random, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A snapshot whose offers are mostly personal and printable, and a till's receipts
    over three weeks, some exactly a cooldown or 7 days after another (§7)."""
    snap = gen_snapshot(rng, n + 2)
    start = CENTRE[0]  # the business day gen_snapshot centred the snapshot on
    program = snap["program"]
    program["maxOffersPrinted"] = rng.choice([5, 5, 0, 1, 2, 60])
    program["offerPrintCooldownDays"] = rng.choice([7, 7, 0, 1, 3])
    for o in snap["offers"]:
        if rng.random() < 0.7:
            o["customerId"] = rng.choice(["c1", "c2", "c3"])
        o["printable"] = rng.random() < 0.85
        if rng.random() < 0.7:
            o["rank"] = rng.randint(0, 3)
        if rng.random() < 0.3:  # starting within (or just beyond) 7 days of a sale
            o["validFrom"] = (start + timedelta(days=rng.choice([1, 6, 7, 8, 12]))).isoformat()
            o.pop("validTo", None)
    receipts = []
    at = start - timedelta(days=2)
    for k in range(rng.randint(4, 9)):
        step = rng.choice(
            [
                timedelta(hours=rng.randint(0, 30)),
                timedelta(minutes=rng.randint(0, 90)),
                timedelta(days=program["offerPrintCooldownDays"]),
                timedelta(days=program["offerPrintCooldownDays"], seconds=-1),
            ]
        )
        at += step
        rec = gen_receipt(rng, snap, k)
        rec["receiptId"] = f"p{n}-{k}"
        rec["at"] = at.isoformat()
        rec["coupons"] = []
        if snap["cards"][-1]["status"] == "ACTIVE" and rng.random() < 0.25:
            rec["card"] = SECOND_CARD  # c1's other card: the cooldown is the customer's
        starts = [o["validFrom"] for o in snap["offers"] if o.get("validFrom")]
        if starts and rng.random() < 0.25:  # exactly 7 days (or a second less) before one
            first = datetime.fromisoformat(rng.choice(starts))
            rec["at"] = (first - timedelta(days=7, seconds=rng.choice([0, 0, 1, -1]))).isoformat()
        receipts.append(rec)
    # in time order (a till's day; a backdated receipt is another review's question)
    receipts.sort(key=lambda r: datetime.fromisoformat(r["at"]))
    return snap, receipts


def run_prints(tmp_path: Path, seed: int, count: int) -> list[str]:
    """Each till's receipts in time order, each checked out, or held and confirmed once
    the next receipt is done, or held and cancelled (§11: a hold prints nothing, a
    confirm picks the offers then, a cancel prints nothing and starts no cooldown); every
    result's `printedOffers`, and a hold's, a confirm's and a cancel's `display`."""
    rng = random.Random(seed)
    problems: list[str] = []
    for n in range(count):
        snap, receipts = print_case(rng, n)
        agent = Agent(tmp_path / f"data-{seed}-{n}", "till-1")
        try:
            agent.load_snapshot(snap)
            oracle, book = Explainer(snap), PrintBook()
            waiting: list[dict[str, Any]] = []

            case = json.dumps({"snapshot": snap, "receipts": receipts}, ensure_ascii=False)

            def check(
                rec: dict[str, Any], got: dict[str, Any], want: list[str], case: str = case
            ) -> None:
                if got.get("printedOffers", []) != want:
                    problems.append(
                        f"{case}\n  {rec['receiptId']}: product {got.get('printedOffers')}"
                        f" model {want}"
                    )

            for rec in [*receipts, None]:
                for held in waiting:  # the POS confirms once the next sale is done
                    got = agent.confirm(held["receiptId"]).to_json()
                    check(held, got, printed_offers(oracle, held, book))
                    if got.get("display") != checkout_display(oracle, held, got):
                        problems.append(f"{held['receiptId']}: confirm shows {got['display']}")
                waiting = []
                if rec is None:
                    break
                quoted = quote(agent, rec)
                if quoted.get("printedOffers"):
                    problems.append(f"{rec['receiptId']}: a quote printed")
                life = rng.random()
                if life < 0.6:
                    got = agent.checkout(receipt_from_json(rec)).to_json()
                    check(rec, got, printed_offers(oracle, rec, book))
                    again = agent.checkout(receipt_from_json(rec)).to_json()
                    if again.get("printedOffers", []) != got.get("printedOffers", []):
                        problems.append(f"{rec['receiptId']}: a replay printed otherwise")
                    continue
                held_result = agent.hold(receipt_from_json(rec)).to_json()
                if held_result.get("printedOffers") or held_result.get("display") != quoted.get(
                    "display"
                ):
                    problems.append(f"{rec['receiptId']}: a hold printed or showed otherwise")
                if life < 0.85:
                    waiting.append(rec)
                else:
                    got = agent.cancel(rec["receiptId"]).to_json()
                    if got.get("printedOffers") or got.get("display") != ["Чек отменён", ""]:
                        problems.append(f"{rec['receiptId']}: cancel {got.get('display')}")
        finally:
            agent.close()
    return problems


def test_printed_offers_match_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §7 with §11: seeded tills, each a few days of checkouts, holds
    confirmed and cancelled; every receipt's `printedOffers` (which, how many, in which
    order, the cooldown per customer)."""
    problems = run_prints(tmp_path, 29, 12)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


# ---------------------------------------------------------------- §8 the display texts


def run_displays(tmp_path: Path, seed: int, count: int, post: Any = None) -> list[str]:
    """Each case quoted (with its trace, for the hint within reach) and checked out on a
    fresh snapshot; both results' `display` against the model. `post(path, body)`, when
    given, sends the calls over HTTP instead of in-process."""
    rng = random.Random(seed)
    agent = Agent(tmp_path / f"display-{seed}", "till-1")
    problems: list[str] = []

    def call(path: str, rec: dict[str, Any]) -> dict[str, Any]:
        if post is not None:
            return dict(post(agent, path, rec))
        if path == "quote":
            return quote(agent, rec)
        return agent.checkout(receipt_from_json(rec)).to_json()

    try:
        for n in range(count):
            snap = gen_snapshot(rng, n + 2)
            rec = {**gen_receipt(rng, snap, n), "explain": True}
            rec["receiptId"] = f"d{seed}-{n}"
            for c in snap["customers"]:  # names of every kind (§8: no more than the first)
                c["firstName"] = rng.choice(["Анна", "Мария-Луиза", "Александра Петровна", "Zoë"])
            agent.load_snapshot(snap)
            oracle = Explainer(snap)
            q = call("quote", rec)
            want_q = quote_display(oracle, rec, q, q["trace"])
            c = call("checkout", rec)
            want_c = checkout_display(oracle, rec, c)
            for what, got, want in (("quote", q, want_q), ("checkout", c, want_c)):
                shown = got.get("display", [])
                if shown != want or any(len(row) > 20 for row in shown):
                    problems.append(
                        disagreement(snap, rec, [f"{what}: product {shown} model {want}"])
                    )
    finally:
        agent.close()
    return problems


def test_the_display_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §8: 60 seeded quotes and checkouts, each `display` row."""
    problems = run_displays(tmp_path, 29, 60)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


@pytest.mark.slow
def test_the_display_and_the_prints_match_the_reference_model_longer(tmp_path: Path) -> None:
    """As above, and §7's prints, on another seed (about 5 s alone)."""
    problems = run_displays(tmp_path, 5, 120) + run_prints(tmp_path, 5, 15)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


def test_trace_and_display_over_http_match_the_reference_model(tmp_path: Path) -> None:
    """The same through `POST /v1/quote` and `/v1/checkout` of the HTTP interface `tillpoint
    run` serves (docs/CONTRACT.md §12): the trace and both displays."""
    from tillpoint.agent.http_api import HttpServer

    servers: dict[int, HttpServer] = {}

    def post(agent: Agent, path: str, body: dict[str, Any]) -> Any:
        if id(agent) not in servers:
            servers[id(agent)] = HttpServer(agent, "127.0.0.1:0")
            servers[id(agent)].start()
        request = urllib.request.Request(
            f"http://127.0.0.1:{servers[id(agent)].port}/v1/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    try:
        problems = run_displays(tmp_path, 2029, 10, post)
        rng = random.Random(2029)
        for n in range(10):
            snap = gen_snapshot(rng, n + 2)
            rec = {**gen_receipt(rng, snap, n), "explain": True, "receiptId": f"h{n}"}
            agent = Agent(tmp_path / f"http-{n}", "till-1")
            try:
                agent.load_snapshot(snap)
                got = post(agent, "quote", rec)
                diff = trace_differences(got["trace"], Explainer(snap).explain(rec).trace)
                problems += [f"{rec['receiptId']} {d}" for d in diff]
            finally:
                servers.pop(id(agent)).stop()
                agent.close()
    finally:
        for server in servers.values():
            server.stop()
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


# ---------------------------------------------------------------- the trace over a till's days


def run_day(tmp_path: Path, seed: int) -> list[str]:
    """Review 28's till days (the same customers again, their points spent, the day's
    offline limit used, codes used, receipts sent late): each receipt quoted and checked
    out with `explain`, both traces against the model on the till's state so far (§17's
    redemption: the balance and the offline limit left)."""
    snap, receipts = sequence(seed)
    oracle, state = Explainer(snap), TillState()
    agent = Agent(tmp_path / f"day-{seed}", "till-1")
    problems: list[str] = []
    try:
        agent.load_snapshot(snap)
        for rec in receipts:
            rec = {**rec, "explain": True}
            want = oracle.explain(rec, state).trace
            for what, got in (
                ("quote", quote(agent, rec)),
                ("checkout", agent.checkout(receipt_from_json(rec)).to_json()),
            ):
                diff = trace_differences(got["trace"], want)
                problems += [f"seed {seed} {rec['receiptId']} {what}: {d}" for d in diff]
            oracle.price(rec, state=state, commit=True)
    finally:
        agent.close()
    return problems


def test_the_trace_over_a_till_day_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §17 with §5 step 4: 12 seeded till days, every receipt's trace."""
    problems: list[str] = []
    for seed in range(12):
        problems += run_day(tmp_path, seed)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])


# ---------------------------------------------------------------- basket deals, densely


def deal_case(rng: random.Random, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Several MULTIBUYs and line offers over three goods, whole quantities, equal unit
    prices often (§15's ties, a deal line with no free unit, a group won by another line)."""
    goods = [MILK, "4601234000024", "4601234000055"]
    offers: list[dict[str, Any]] = []
    for k in range(rng.randint(1, 3)):
        offers.append(
            {
                "id": f"m{k}",
                "kind": "MULTIBUY",
                "skus": rng.sample(goods, rng.randint(1, 3)),
                "buyQty": str(rng.randint(1, 3)),
                "freeQty": str(rng.randint(1, 2)),
                "priority": rng.randint(0, 1),
                **({"campaignId": "k1"} if rng.random() < 0.2 else {}),
            }
        )
    for k in range(rng.randint(0, 4)):
        kind = rng.choice(["PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE"])
        o: dict[str, Any] = {
            "id": f"l{k}",
            "kind": kind,
            "skus": rng.sample(goods, rng.randint(1, 2)),
            "priority": rng.randint(0, 1),
        }
        if kind == "QUANTITY_PRICE":
            o["tiers"] = [{"minQty": "2", "unitPriceMinor": rng.randint(100, 5000)}]
        elif kind == "PERCENT_OFF":
            o["value"] = rng.choice(["10", "30", "50", "60"])
        else:
            o["value"] = rng.choice(["10", "300", "500", "1500", "3000"])
        if rng.random() < 0.2:
            o["campaignId"] = "k1"
        offers.append(o)
    snap = snapshot(version=n + 1, offers=offers)
    snap["customers"][1]["controlGroups"] = ["k1"] if rng.random() < 0.5 else []
    lines = [
        {
            "sku": rng.choice(goods),
            "qty": str(rng.randint(1, 4)),
            "priceMinor": rng.choice([1000, 2500, 5000, 999]),
        }
        for _ in range(rng.randint(1, 5))
    ]
    return snap, receipt(f"m{n}", card=BORIS, lines=lines, explain=True)


def test_the_trace_of_basket_deals_matches_the_reference_model(tmp_path: Path) -> None:
    """docs/CONTRACT.md §15/§17: 100 seeded baskets of deals and line offers, every field
    of the trace (who took each line, who beat whom and by how much, `trace.deals`)."""
    rng = random.Random(29)
    agent = Agent(tmp_path / "deals", "till-1")
    problems: list[str] = []
    try:
        for n in range(100):
            snap, rec = deal_case(rng, n)
            agent.load_snapshot(snap)
            diff = trace_differences(quote(agent, rec)["trace"], Explainer(snap).explain(rec).trace)
            if diff:
                problems.append(
                    json.dumps({"offers": snap["offers"], "receipt": rec}) + f"\n  {diff}"
                )
    finally:
        agent.close()
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:3])
