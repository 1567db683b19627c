"""Review 52 (mut52a): mutation testing of `agent/models.py`, the data shapes' validation
(docs/CONTRACT.md §2, §3, §5, §13-§15). Each test below pins a rule of a data shape that
no test held: a mutant of its validator passed every fast test that runs the line
(docs/DECISIONS.md, "Review 52 (mut52a)" lists them). They go through the doors a POS
and a hub use: `snapshot load` and `quote` at the CLI (exit 2 and one line for bad
input), HTTP `POST /v1/quote` on a real server (400 INVALID_ARGUMENT), gRPC `Balance`
on a real server. Figures are worked out by hand beside each case.
"""

from __future__ import annotations

import copy
import http.client
import json
import sqlite3
from pathlib import Path
from typing import Any

from tillpoint.agent.http_api import HttpServer

from .conftest import BASE_SNAPSHOT, CLI, Run, post_json, receipt

TIMEOUT = 10
ANNA = "2770000000017"  # c-a, gold 7.5 %, 1200 points, birthday 25 November
BORIS = "2770000000024"  # c-b, base 3 %, 80 points, birthday 10 March
MILK = "4601234000017"


def _snapshot(**changes: Any) -> dict[str, Any]:
    snap = copy.deepcopy(BASE_SNAPSHOT)
    snap.update(copy.deepcopy(changes))
    return snap


def _program(**changes: Any) -> dict[str, Any]:
    program = copy.deepcopy(BASE_SNAPSHOT["program"])
    program.update(changes)
    return program


def _refused(run: Run, words: str) -> None:
    """Bad input at the CLI: exit 2, nothing on stdout, one line naming the problem."""
    assert run.code == 2, run
    assert run.out == "" and run.err.count("\n") == 1, run
    assert run.err.startswith("tillpoint: ") and words in run.err, run.err


# ---------------------------------------------------------------- §3: the program's figures


def test_max_redeem_percent_as_a_json_integer_from_0_to_100(cli: CLI) -> None:
    """§3 writes `"maxRedeemPercent": 30`, a JSON integer (a decimal string works too):
    0 is a program with no redemption, 100 lets a receipt be paid in points to its last
    whole point; 101 and -1 are refused. Mutants: `< 0` as `<= 0` or `< 1` refused 0,
    `> 100` as `>= 100` or `> 99` refused 100, `> 101` took 101.

    Anna (1200 points) asks for all she may (-1) on 2 × 89.90 = 17980 kopecks, point
    value 100: percent 0 allows floor(17980 × 0 / 100 / 100) = 0 points; percent 100
    allows min(1200, floor(17980 × 100 / 100 / 100) = 179, capacity floor(17980 / 100)
    = 179) = 179 points, 17900 kopecks, 80 left to pay."""
    everything = receipt(card=ANNA, redeemPoints=-1)
    assert cli("snapshot", "load", _snapshot(program=_program(maxRedeemPercent=0))).code == 0
    none = cli("quote", everything, "--json")
    assert none.code == 0, none
    assert (none.json()["redeemedPoints"], none.json()["payableMinor"]) == (0, 17980)

    loaded = cli("snapshot", "load", _snapshot(version=2, program=_program(maxRedeemPercent=100)))
    assert loaded.code == 0, loaded
    every = cli("quote", everything, "--json")
    assert every.code == 0, every
    assert (every.json()["redeemedPoints"], every.json()["payableMinor"]) == (179, 80)

    for bad in (101, -1, "100.01"):
        _refused(
            cli("snapshot", "load", _snapshot(version=3, program=_program(maxRedeemPercent=bad))),
            "program.maxRedeemPercent must",
        )
    assert cli("quote", everything, "--json").json()["redeemedPoints"] == 179  # the cache as it was


def test_an_offers_value_written_as_a_negative_json_integer_is_refused(cli: CLI) -> None:
    """§2/§3: an offer's `value` is a non-negative decimal; a JSON integer -1 (not only
    the string "-1") is refused naming the field, and 0 as an integer is taken (a zero
    discount, not applied: §5). Mutant: `< 0` as `< -1` loaded a PERCENT_OFF of -1 %."""
    offer = {"id": "o-neg", "kind": "PERCENT_OFF", "skus": [MILK], "value": -1}
    _refused(
        cli("snapshot", "load", _snapshot(offers=[offer])), "offers[0].value must not be negative"
    )
    zero = {**offer, "value": 0}
    assert cli("snapshot", "load", _snapshot(offers=[zero])).code == 0
    quoted = cli("quote", receipt(card=BORIS), "--json")
    assert quoted.code == 0 and quoted.json()["discountMinor"] == 0, quoted


def test_a_point_value_written_as_the_string_1_is_taken(cli: CLI) -> None:
    """§2: an int64 may be written as a string; `pointValueMinor` must be above zero, and
    "1" is (a mutant's `<= 1` refused it, and every snapshot with it). With one point a
    kopeck, Anna (1200 points, asking for all she may on a till with no hub, offline)
    gets min(1200, floor(17980 × 30 / 100 / 1) = 5394, capacity 17980, the offline
    limit 500) = 500 points: 500 kopecks off 17980, 17480 to pay."""
    loaded = cli("snapshot", "load", _snapshot(program=_program(pointValueMinor="1")))
    assert loaded.code == 0, loaded
    quoted = cli("quote", receipt(card=ANNA, redeemPoints=-1), "--json")
    assert quoted.code == 0, quoted
    assert (quoted.json()["redeemedPoints"], quoted.json()["payableMinor"]) == (500, 17480)
    for bad in ("0", "-1", 0):
        _refused(
            cli("snapshot", "load", _snapshot(version=2, program=_program(pointValueMinor=bad))),
            "program.pointValueMinor must",
        )


# ---------------------------------------------------------------- §3: rows


def test_a_birthday_is_a_date_string_never_a_number(cli: CLI) -> None:
    """§3 writes `"birthday": "1990-11-25"`. A number there (an ERP's 19901125, or a unix
    time) is bad input naming the field, not read as seconds since 1970 (pydantic's own
    lax date did that when `_date` let anything but a string through: 19901125 seconds is
    1970-08-19, and the customer's birthday multiplier moved to August)."""
    for bad in (19901125, 0):
        customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
        customers[0]["birthday"] = bad
        _refused(
            cli("snapshot", "load", _snapshot(customers=customers)),
            "customers[0].birthday must be a date string YYYY-MM-DD",
        )
    assert cli("snapshot", "load", _snapshot()).code == 0


def test_an_offers_min_qty_has_at_most_3_decimals(cli: CLI) -> None:
    """§2: quantities have at most 3 decimals, an offer's `minQty` too (a snapshot coming
    in; one stored by an earlier release reads back). "1.0005" and "1.0000" (4 written
    decimals) are refused naming the offer; "1.005" is taken and holds: a line of qty
    "1.004" is below it (no discount), "1.005" reaches it (10 % of 1.005 × 10000 =
    10050 → 1005). Mutants: `_decimals` made 0 (or its `if` negated) and `_stored`
    negated took 4 decimals."""
    offer = {"id": "o-min", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10"}
    for bad in ("1.0005", "1.0000"):
        _refused(
            cli("snapshot", "load", _snapshot(offers=[{**offer, "minQty": bad}])),
            f"minQty {bad} has more than 3 decimals",
        )
    assert cli("snapshot", "load", _snapshot(offers=[{**offer, "minQty": "1.005"}])).code == 0
    line = {"sku": MILK, "priceMinor": 10000}
    below = cli("quote", receipt(card=BORIS, lines=[{**line, "qty": "1.004"}]), "--json")
    at = cli("quote", receipt(card=BORIS, lines=[{**line, "qty": "1.005"}]), "--json")
    assert below.code == 0 and at.code == 0, (below, at)
    assert (below.json()["discountMinor"], at.json()["discountMinor"]) == (0, 1005)


# ---------------------------------------------------------------- §2: an int64 as text


def test_an_int64_string_of_exactly_128_characters_is_read(server: HttpServer) -> None:
    """§2 and the text limit (128 characters, §10's decisions): a `priceMinor` written
    as a string of 128 characters ("0" × 124 + "8990", proto3 JSON's int64 as text) is
    8990 kopecks; one of 129 is "too long". Mutant: `_not_too_long`'s `>` as `>=`
    refused the 128."""
    line = {"sku": MILK, "qty": "2", "priceMinor": "0" * 124 + "8990"}
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, lines=[line]))
    assert status == 200, answer
    assert answer["totalMinor"] == 17980
    longer = {**line, "priceMinor": "0" * 125 + "8990"}
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, lines=[longer]))
    assert status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
    assert answer["error"]["message"] == (
        "receipt: lines[0].priceMinor is too long (at most 128 characters)"
    )


# ---------------------------------------------------------------- §2: leap seconds

# A minute's 59th second 60 written without an offset, and the example the message gives:
# the whole-hour offset, within the world's -12:00 to +14:00, that makes it 23:59:60 in
# UTC (hour h: +(h + 1) up to +14:00, from 14:59:60 on h − 23 hours; 23:59:60 is Z).
LEAP_EXAMPLES = {
    0: "+01:00", 1: "+02:00", 2: "+03:00", 3: "+04:00", 4: "+05:00", 5: "+06:00",
    6: "+07:00", 7: "+08:00", 8: "+09:00", 9: "+10:00", 10: "+11:00", 11: "+12:00",
    12: "+13:00", 13: "+14:00", 14: "-09:00", 15: "-08:00", 16: "-07:00", 17: "-06:00",
    18: "-05:00", 19: "-04:00", 20: "-03:00", 21: "-02:00", 22: "-01:00", 23: "Z",
}  # fmt: skip


def test_a_leap_second_without_an_offset_gets_a_real_offset_at_every_hour(cli: CLI) -> None:
    """§2's decisions: a leap second without an offset is told so, with an example the
    till takes. Review 32's test held the hours 2, 18 and 23; the edge where the example
    turns from east of UTC to west (13:59:60 → +14:00, 14:59:60 → -09:00) was held by
    none: mutants of `_leap_example`'s bound gave "+15:00" and "+16:00", offsets no
    place on earth has, or moved the turn."""
    assert cli("snapshot", "load", _snapshot()).code == 0
    for hour, offset in LEAP_EXAMPLES.items():
        day = "2027-01-01" if offset.startswith("+") else "2026-12-31"
        at = f"{day}T{hour:02d}:59:60"
        run = cli("quote", receipt(at=at), "--json")
        _refused(run, f'"{at}" has no offset: add one, as in "{at}{offset}"')
        taken = cli("quote", receipt(at=at + offset), "--json")
        assert taken.code == 0, (at + offset, taken)


def test_a_sale_in_a_leap_second_is_at_the_last_microsecond_of_second_59(cli: CLI) -> None:
    """§2's decisions: a time in a leap second is read as the last instant of second 59
    (23:59:59.999999 UTC), after every time of that second. An offer starting at
    23:59:59.999999Z applies to a sale at 23:59:60Z (10 % of 17980 = 1798); one that ends
    at 23:59:59.999998Z does not. Mutant: 999998 for 999999 put the sale before the
    first offer's start."""
    window = {"kind": "PERCENT_OFF", "skus": [MILK], "value": "10"}
    offers = [
        {**window, "id": "o-from", "validFrom": "2026-12-31T23:59:59.999999Z"},
        {**window, "id": "o-to", "validTo": "2026-12-31T23:59:59.999998Z", "value": "50"},
    ]
    assert cli("snapshot", "load", _snapshot(offers=offers)).code == 0
    quoted = cli("quote", receipt(card=BORIS, at="2026-12-31T23:59:60Z"), "--json")
    assert quoted.code == 0, quoted
    assert quoted.json()["discountMinor"] == 1798
    assert [line["offerId"] for line in quoted.json()["lines"]] == ["o-from"]


# ---------------------------------------------------------------- §3: the program's bounds


def test_the_programs_day_and_hold_bounds_are_inclusive(cli: CLI) -> None:
    """The program's durations are bounded so the dates worked out from a sale exist
    (§3's decisions): at most 36600 days (a century) for `activationDelayDays`,
    `offerPrintCooldownDays` and `pointsLifetimeDays`, at most 36600 × 86400 =
    3162240000 seconds for `holdTtlSeconds`. The bound itself is taken, one more is
    refused naming the field. Mutants: `>` as `>=` refused the bound."""
    version = iter(range(1, 100))
    for field in ("activationDelayDays", "offerPrintCooldownDays", "pointsLifetimeDays"):
        at_bound = _snapshot(version=next(version), program=_program(**{field: 36600}))
        assert cli("snapshot", "load", at_bound).code == 0, field
        over = _snapshot(version=next(version), program=_program(**{field: 36601}))
        _refused(cli("snapshot", "load", over), f"program.{field} at most 36600 days")
    at_bound = _snapshot(version=next(version), program=_program(holdTtlSeconds=3162240000))
    assert cli("snapshot", "load", at_bound).code == 0
    over = _snapshot(version=next(version), program=_program(holdTtlSeconds=3162240001))
    _refused(cli("snapshot", "load", over), "program.holdTtlSeconds at most 3162240000 seconds")


def test_a_tier_code_given_twice_refuses_the_program(cli: CLI) -> None:
    """§3: which rate would a "gold" customer earn if gold came twice? The snapshot is
    refused naming the code (3 % and 7.5 % here), and the cache keeps what it had: Anna
    still earns at 7.5 % × 5 (her birthday window): floor(17980 × 7.5 × 5 / 10000) = 67.
    Mutants: `repeated_tier` answering None, or counting `> 2`, loaded it."""
    assert cli("snapshot", "load", _snapshot()).code == 0
    tiers = [
        {"code": "base", "accrualPercent": "3"},
        {"code": "gold", "accrualPercent": "3"},
        {"code": "gold", "accrualPercent": "7.5"},
    ]
    twice = _snapshot(version=2, program=_program(tiers=tiers))
    _refused(cli("snapshot", "load", twice), "program.tiers: tier 'gold' appears twice")
    quoted = cli("quote", receipt(card=ANNA), "--json")
    assert quoted.code == 0 and quoted.json()["earnedPoints"] == 67, quoted


# ---------------------------------------------------------------- §14: weekdays and hours


def _ten_percent(**window: Any) -> dict[str, Any]:
    return {"id": "o-win", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10", **window}


def test_hours_are_read_to_the_minute(cli: CLI) -> None:
    """§14: `hours` from inclusive, to exclusive, on the store's local time (Moscow). A
    window "10:15"-"10:16" holds from 10:15:00 to 10:15:59 and not at 10:14:59 or
    10:16:00 (10 % of 17980 = 1798). Mutants of `_clock_seconds` (minutes × 59 or × 61,
    or minutes subtracted) moved its ends by seconds, or made it a night window."""
    assert (
        cli(
            "snapshot",
            "load",
            _snapshot(offers=[_ten_percent(hours=[{"from": "10:15", "to": "10:16"}])]),
        ).code
        == 0
    )
    for clock, discount in (
        ("10:14:59", 0),
        ("10:15:00", 1798),
        ("10:15:59", 1798),
        ("10:16:00", 0),
    ):
        at = f"2026-11-23T{clock}+03:00"
        quoted = cli("quote", receipt(card=BORIS, at=at), "--json")
        assert quoted.code == 0 and quoted.json()["discountMinor"] == discount, (clock, quoted)


def test_an_hour_that_is_no_clock_time_is_refused(cli: CLI) -> None:
    """§14: an hour is "HH:MM", 00:00 to 24:00 ("24:00" only as an end). "25:00", "8:00",
    "10:60" and "24:01" are refused naming the field. Mutant: `_clock`'s `or` as `and`
    took any string (and "25:00" became 90000 seconds after midnight)."""
    for bad in ("25:00", "8:00", "10:60", "24:01"):
        offer = _ten_percent(hours=[{"from": bad, "to": "23:00"}])
        _refused(
            cli("snapshot", "load", _snapshot(offers=[offer])),
            f'offers[0].hours[0].from "{bad}" is not a local time HH:MM (00:00 to 24:00)',
        )


def test_weekdays_are_iso_from_monday_1_to_sunday_7(cli: CLI) -> None:
    """§14: ISO weekdays, Monday 1 … Sunday 7, both ends taken; 0 and 8 refused naming
    the field. 23 November 2026 is a Monday, the 29th a Sunday, the 24th a Tuesday: an
    offer on [1] gives 20 % on the Monday (3596), one on [7] 10 % on the Sunday (1798),
    neither on the Tuesday. Mutants: `1 <= n <= 7` as `1 < n`, `0 <=`, `<= 6` or `<= 8`."""
    monday = {**_ten_percent(weekdays=[1]), "id": "o-mon", "value": "20"}
    sunday = {**_ten_percent(weekdays=[7]), "id": "o-sun"}
    assert cli("snapshot", "load", _snapshot(offers=[monday, sunday])).code == 0
    for day, discount in (("23", 3596), ("29", 1798), ("24", 0)):
        quoted = cli("quote", receipt(card=BORIS, at=f"2026-11-{day}T12:00:00+03:00"), "--json")
        assert quoted.code == 0 and quoted.json()["discountMinor"] == discount, (day, quoted)
    for bad in (0, 8):
        _refused(
            cli("snapshot", "load", _snapshot(version=2, offers=[_ten_percent(weekdays=[bad])])),
            f"offers[0].weekdays[0] weekday {bad} is not ISO (Monday 1 … Sunday 7)",
        )


# ---------------------------------------------------------------- §15: a deal's value


def test_a_deals_value_written_empty_is_left_out(cli: CLI) -> None:
    """§3/§15: in proto3 JSON `""` is a string's unset value, and the deal kinds need no
    `value`: a MULTIBUY written with `"value": ""` (a printer that writes every field)
    loads and gives its deal, "3 for 2" on three cartons of milk at 89.90: the cheapest
    unit free, floor(26970 × 1 / 3) = 8990. A PERCENT_OFF with `"value": ""` is a
    missing value, refused as no decimal. Mutant: `value == ""` as `!=` refused the deal."""
    deal = {"id": "o-3for2", "kind": "MULTIBUY", "skus": [MILK], "value": "",
            "buyQty": "2", "freeQty": "1"}  # fmt: skip
    assert cli("snapshot", "load", _snapshot(offers=[deal])).code == 0
    three = receipt(card=BORIS, lines=[{"sku": MILK, "qty": "3", "priceMinor": 8990}])
    quoted = cli("quote", three, "--json")
    assert quoted.code == 0 and quoted.json()["discountMinor"] == 8990, quoted
    percent = {"id": "o-pct", "kind": "PERCENT_OFF", "skus": [MILK], "value": ""}
    _refused(
        cli("snapshot", "load", _snapshot(version=2, offers=[percent])),
        'offers[0].value must be a decimal string such as "7.5"',
    )


# ---------------------------------------------------------------- §2: rows of an earlier release


def test_a_stored_time_written_with_a_space_and_plus_0300_still_reads(
    cli: CLI, tmp_path: Path
) -> None:
    """§2's decisions: a row an earlier release stored with a time outside RFC 3339
    (an `expiresAt` of "+0300", before the rule) reads back, so an upgraded till sells
    on. Review 19 held the "T" spelling; the same time with a space for the "T" (RFC 3339
    allows one) is read the same: Anna's quote is the same answer before and after the
    cache's row is rewritten so. Mutant: the stored reading's `" " not in text` as
    `" " in text` refused that row, and every sale of hers failed."""
    from tillpoint.agent.db import cache_file

    customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
    customers[0]["expiring"] = [{"points": 300, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    program = _program(pointsLifetimeDays=365)
    assert cli("snapshot", "load", _snapshot(program=program, customers=customers)).code == 0
    before = cli("quote", receipt(card=ANNA, redeemPoints=-1), "--json")
    assert before.code == 0, before
    cache = sqlite3.connect(cache_file(tmp_path / "data"))
    try:
        (doc,) = cache.execute("SELECT doc FROM customers WHERE id = 'c-a'").fetchone()
        assert "2026-12-31T23:59:59+03:00" in doc
        with cache:
            older = doc.replace("2026-12-31T23:59:59+03:00", "2026-12-31 23:59:59+0300")
            cache.execute("UPDATE customers SET doc = ? WHERE id = 'c-a'", (older,))
    finally:
        cache.close()
    after = cli("quote", receipt(card=ANNA, redeemPoints=-1), "--json")
    assert after.code == 0, after
    assert after.out == before.out


# ---------------------------------------------------------------- §2/§13: a window's ends


def test_a_window_whose_start_is_its_ends_last_instant_is_a_window(cli: CLI) -> None:
    """§2's decisions: an end in whole seconds holds through that second, to .999999; a
    start at that very instant is a window of one microsecond, not a reversed one, for an
    offer and a coupon alike (one microsecond later it is reversed, refused naming it).
    Mutant: `validFrom > last_instant(validTo)` as `>=` refused the snapshot."""
    start, end = "2026-11-23T10:15:00.999999+03:00", "2026-11-23T10:15:00+03:00"
    offer = {"id": "o-tick", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10",
             "validFrom": start, "validTo": end}  # fmt: skip
    coupon = {"code": "TICK-1", "offerId": "o-tick", "validFrom": start, "validTo": end}
    assert cli("snapshot", "load", _snapshot(offers=[offer], coupons=[coupon])).code == 0
    later = "2026-11-23T10:15:01+03:00"
    _refused(
        cli("snapshot", "load", _snapshot(version=2, offers=[{**offer, "validFrom": later}])),
        "offer o-tick: validFrom is after validTo",
    )
    _refused(
        cli("snapshot", "load", _snapshot(version=2, coupons=[{**coupon, "validFrom": later}])),
        "coupon TICK1: validFrom is after validTo",
    )


# ---------------------------------------------------------------- §15: tiers of a QUANTITY_PRICE


def test_two_tiers_at_one_min_qty_with_two_prices_are_refused(cli: CLI) -> None:
    """§15: the tier with the highest `minQty` reached gives the unit price; two tiers at
    the same `minQty` ("2" and "2.000") with two prices would make the price depend on
    their order, and are refused naming both prices. The same tier twice at one price is
    taken, and prices as one tier: 2 × 89.90 at 80.00 a unit, 17980 − 16000 = 1980 off.
    Mutants: the check's `if` negated, or run only from 3 tiers on, took them."""
    deal = {"id": "o-qp", "kind": "QUANTITY_PRICE", "skus": [MILK]}
    two = [{"minQty": "2", "unitPriceMinor": 8000}, {"minQty": "2.000", "unitPriceMinor": 7000}]
    _refused(
        cli("snapshot", "load", _snapshot(offers=[{**deal, "tiers": two}])),
        "offer o-qp: two tiers with minQty 2 and two unit prices (8000 and 7000)",
    )
    same = [{"minQty": "2", "unitPriceMinor": 8000}, {"minQty": "2.000", "unitPriceMinor": 8000}]
    assert cli("snapshot", "load", _snapshot(offers=[{**deal, "tiers": same}])).code == 0
    quoted = cli("quote", receipt(card=BORIS), "--json")
    assert quoted.code == 0 and quoted.json()["discountMinor"] == 1980, quoted


# ---------------------------------------------------------------- §3: versions and appliedThrough


def test_a_delta_on_top_of_its_own_version_is_refused(cli: CLI) -> None:
    """§3: a delta applies on top of `baseVersion`, an earlier version: `baseVersion` equal
    to `version` is refused naming both. Mutant: `>=` as `>` took it."""
    assert cli("snapshot", "load", _snapshot()).code == 0
    _refused(
        cli("snapshot", "load", {"version": 1, "baseVersion": 1}),
        "baseVersion 1 must be below version 1",
    )


def test_applied_through_is_kept_and_bounded(cli: CLI) -> None:
    """§3: `appliedThrough[device]` is the last of the device's sales counted in
    `balancePoints`; the till adds only its sales numbered above it. Boris (80 points)
    buys 2 × 89.90 at 3 %: floor(17980 × 3 / 10000) = 5 points, 85. A snapshot that
    counts that sale (balancePoints 85, appliedThrough {"till-1": 1}) leaves him 85, not
    90. The bound is 2^53 − 1 = 9007199254740991 (taken), one more refused. Mutants:
    `_room_above` returning {} (the sale counted twice), `>` as `>=` (the bound refused)."""
    assert cli("snapshot", "load", _snapshot()).code == 0
    sold = cli("checkout", receipt("r-ap", card=BORIS), "--json")
    assert sold.code == 0 and sold.json()["earnedPoints"] == 5, sold
    customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
    customers[1]["balancePoints"] = 85
    counted = _snapshot(version=2, customers=customers, appliedThrough={"till-1": 1})
    assert cli("snapshot", "load", counted).code == 0
    balance = cli("balance", BORIS, "--json")
    assert balance.code == 0 and balance.json()["availablePoints"] == 85, balance
    top = _snapshot(version=3, customers=customers, appliedThrough={"till-9": 2**53 - 1})
    assert cli("snapshot", "load", top).code == 0
    over = _snapshot(version=4, customers=customers, appliedThrough={"till-9": 2**53})
    _refused(cli("snapshot", "load", over), "till-9: 9007199254740992 is above 9007199254740991")


def test_a_multibuy_needs_whole_buy_and_free_quantities(cli: CLI) -> None:
    """§15: "3 for 2" counts whole units: `buyQty` and `freeQty` are whole numbers of 1 or
    more ("2.000" is 2). "1.5" or a missing `freeQty` is refused naming the offer.
    Mutant: `qty is None or qty != whole` as `and` took "1.5" (and failed on a missing
    one with an internal error)."""
    deal = {"id": "o-mb", "kind": "MULTIBUY", "skus": [MILK], "buyQty": "2.000", "freeQty": "1"}
    assert cli("snapshot", "load", _snapshot(offers=[deal])).code == 0
    _refused(
        cli("snapshot", "load", _snapshot(version=2, offers=[{**deal, "buyQty": "1.5"}])),
        "offer o-mb: MULTIBUY needs a whole buyQty of 1 or more",
    )
    without = {key: value for key, value in deal.items() if key != "freeQty"}
    _refused(
        cli("snapshot", "load", _snapshot(version=2, offers=[without])),
        "offer o-mb: MULTIBUY needs a whole freeQty of 1 or more",
    )


def test_a_key_given_twice_is_named(cli: CLI) -> None:
    """§3: a snapshot's rows are keyed (a product by `sku`); a key given twice is refused
    naming that key, not the first row's. Mutants of `_unique`'s look for it (`> 1` as
    `>= 1`, `> 0`, `> 2`) named another key or failed."""
    products = [*copy.deepcopy(BASE_SNAPSHOT["products"]), {"sku": "4601234000024"}]
    _refused(
        cli("snapshot", "load", _snapshot(products=products)),
        "products: '4601234000024' appears twice",
    )


# ---------------------------------------------------------------- §5: a receipt's figures


def test_redeem_points_below_minus_1_is_refused(server: HttpServer) -> None:
    """§5: `redeemPoints` is 0 or more, or -1 for as much as allowed; -2 is bad input,
    HTTP 400 naming the field. Mutant: `< -1` as `< -2` took -2."""
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, redeemPoints=-2))
    assert status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
    assert answer["error"]["message"] == (
        "receipt: redeemPoints must be 0 or more, or -1 for as much as allowed"
    )


def test_a_receipt_total_of_exactly_int64_max_is_priced(server: HttpServer) -> None:
    """§2: money is an int64 of minor units; a receipt's total may reach 2^63 − 1 and not
    pass it. Two lines of goods not in the catalogue (no offers, no points) with amounts
    2^63 − 2 and 1 are priced, total 9223372036854775807; 2^63 − 1 and 1 are refused.
    A line of `priceMinor` 2^63 − 1 × "1" is at the bound too, and priced. Mutants: the
    total summed from -1 or subtracted took the second; a line's `>` as `>=` refused
    the third."""
    top = 2**63 - 1
    lines = [
        {"sku": "4601234999999", "qty": "1", "amountMinor": top - 1},
        {"sku": "4601234999998", "qty": "1", "amountMinor": 1},
    ]
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, lines=lines))
    assert status == 200, answer
    assert answer["totalMinor"] == top and answer["payableMinor"] == top
    one = [{"sku": "4601234999999", "qty": "1", "priceMinor": top}]  # price × 1 at the bound
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, lines=one))
    assert status == 200 and answer["totalMinor"] == top, answer
    lines[0]["amountMinor"] = top
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, lines=lines))
    assert status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
    assert "the receipt total does not fit in a signed 64-bit integer" in answer["error"]["message"]


def test_a_percent_off_of_exactly_100_is_taken_above_is_refused(cli: CLI) -> None:
    """§5 step 2: PERCENT_OFF's discount is floor(amount × value / 100); 100 % makes the
    line free (17980 off 17980), above 100 is refused naming the offer, for a receipt's
    percent-off too. Mutants: `> 100` as `>= 100` or `> 99` refused 100, `> 101` took
    101."""
    offer = {"id": "o-all", "kind": "PERCENT_OFF", "skus": [MILK], "value": "100"}
    assert cli("snapshot", "load", _snapshot(offers=[offer])).code == 0
    quoted = cli("quote", receipt(card=BORIS), "--json")
    assert quoted.code == 0 and quoted.json()["discountMinor"] == 17980, quoted
    for kind in ("PERCENT_OFF", "RECEIPT_PERCENT_OFF"):
        for value in ("100.01", 101):
            above = {**offer, "kind": kind, "value": value}
            _refused(
                cli("snapshot", "load", _snapshot(version=2, offers=[above])),
                "offer o-all: a percentage above 100",
            )


def test_extra_points_are_whole_and_other_values_may_have_decimals(cli: CLI) -> None:
    """§5 step 3: points are whole numbers (§2), so an EXTRA_POINTS `value` is too: "50"
    adds 50 points once, "50.5" is refused naming the offer; a percent may have
    decimals: PERCENT_OFF "7.5" takes floor(17980 × 7.5 / 100) = 1348, and Boris (3 %)
    earns on the 16632 he pays floor(16632 × 3 / 10000) = 4, + 50 = 54. Mutants: the
    whole-points rule applied to every kind, to every kind but EXTRA_POINTS, or refusing
    whole points."""
    extra = {"id": "o-xp", "kind": "EXTRA_POINTS", "value": "50"}
    percent = {"id": "o-pc", "kind": "PERCENT_OFF", "skus": [MILK], "value": "7.5"}
    assert cli("snapshot", "load", _snapshot(offers=[extra, percent])).code == 0
    quoted = cli("quote", receipt(card=BORIS), "--json")
    assert quoted.code == 0, quoted
    assert (quoted.json()["discountMinor"], quoted.json()["earnedPoints"]) == (1348, 54)
    _refused(
        cli("snapshot", "load", _snapshot(version=2, offers=[{**extra, "value": "50.5"}])),
        "offer o-xp: EXTRA_POINTS value must be whole points",
    )


# ---------------------------------------------------------------- §13: a code's length


def test_a_coupon_code_of_128_characters_as_looked_up_is_taken(
    cli: CLI, server: HttpServer
) -> None:
    """§13 and the text limit: a code is at most 128 characters as it is looked up
    (upper-cased: "ß" is "SS"). In a snapshot, "ß" × 64 ("SS" × 64, 128) loads and
    "ß" × 65 (130) is refused; on a receipt, a scanned "ß" × 64 gets its verdict (this
    till knows no such code: REJECTED, UNKNOWN) and "ß" × 65 is bad input, HTTP 400.
    Mutants: `> 128` as `>= 128` in `Coupon._normal` and `_looked_up_fits`."""
    offer = {"id": "o-c", "kind": "PERCENT_OFF", "skus": [MILK], "value": "10",
             "couponRequired": True}  # fmt: skip
    coupon = {"code": "ß" * 64, "offerId": "o-c"}
    assert cli("snapshot", "load", _snapshot(offers=[offer], coupons=[coupon])).code == 0
    longer = {**coupon, "code": "ß" * 65}
    _refused(
        cli("snapshot", "load", _snapshot(version=2, offers=[offer], coupons=[longer])),
        "is too long once upper-cased (at most 128 characters",
    )
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, coupons=["ß" * 64]))
    assert status == 200, answer
    assert [(c["status"], c["reason"]) for c in answer["coupons"]] == [("REJECTED", "UNKNOWN")]
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, coupons=["ß" * 65]))
    assert status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
    assert "coupons[0] is too long once upper-cased" in answer["error"]["message"]


def test_a_stored_offer_with_tiers_an_earlier_release_took_still_reads(
    cli: CLI, tmp_path: Path
) -> None:
    """The rule on two tiers at one `minQty` is a rule of input (review 46's `STORED`): a
    QUANTITY_PRICE an earlier release stored with two such tiers reads back and prices
    (here at the first one's 80.00 a unit: 2 × 89.90 − 2 × 80.00 = 1980 off), so an
    upgraded till sells on. Mutant: the check's `and not _stored(...)` as
    `or` ran it on the stored row, and every quote failed."""
    from tillpoint.agent.db import cache_file

    tiers = [{"minQty": "2", "unitPriceMinor": 8000}]
    deal = {"id": "o-qp", "kind": "QUANTITY_PRICE", "skus": [MILK], "tiers": tiers}
    assert cli("snapshot", "load", _snapshot(offers=[deal])).code == 0
    before = cli("quote", receipt(card=BORIS), "--json")
    assert before.code == 0 and before.json()["discountMinor"] == 1980, before
    cache = sqlite3.connect(cache_file(tmp_path / "data"))
    try:
        (doc,) = cache.execute("SELECT doc FROM offers WHERE id = 'o-qp'").fetchone()
        stored = json.loads(doc)
        stored["tiers"] = [*stored["tiers"], {"minQty": "2.000", "unitPriceMinor": 8000}]
        stored["tiers"][-1]["unitPriceMinor"] = 9000
        with cache:
            cache.execute("UPDATE offers SET doc = ? WHERE id = 'o-qp'", (json.dumps(stored),))
    finally:
        cache.close()
    after = cli("quote", receipt(card=BORIS), "--json")
    assert after.code == 0, after
    assert after.json()["discountMinor"] == 1980


# ---------------------------------------------------------------- §3: the program's defaults


def test_absent_program_fields_take_the_defaults_shown(cli: CLI) -> None:
    """§3: "absent program fields take the defaults shown above": a program of only a
    currency is maxRedeemPercent 30, offlineRedeemLimitPoints 500, birthdayWindowDays 7,
    pointValueMinor 100, tiers base 3 % and gold 7 %, birthdayMultiplier 5; a customer
    without `balancePoints` has 0. By hand, Anna (gold, 1200 points, birthday 25
    November) asking for all she may (-1, a till with no hub: offline):
    - 17980 kopecks: min(1200, floor(17980 × 30 / 100 / 100) = 53, 179, 500) = 53;
    - 1000000 kopecks: min(1200, 3000, 10000, 500) = 500 (the offline limit);
    - nothing redeemed, on 18 November (7 days before her birthday) she earns at 7 % × 5:
      floor(17980 × 7 × 5 / 10000) = 62; on the 17th (8 days) × 1: floor(12.586) = 12.
    Mutants of the defaults (29, 499, a window of 6 days) passed every other test."""
    customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
    del customers[2]["balancePoints"]  # Вера: no balance written
    customers[2]["id"] = "c-v"
    cards = [
        *copy.deepcopy(BASE_SNAPSHOT["cards"]),
        {"number": "2770000000048", "customerId": "c-v"},
    ]
    snap = _snapshot(program={"currency": "RUB"}, customers=customers, cards=cards)
    assert cli("snapshot", "load", snap).code == 0

    def quote(**changes: Any) -> dict[str, Any]:
        run = cli("quote", receipt(card=ANNA, **changes), "--json")
        assert run.code == 0, run
        return dict(run.json())

    assert quote(redeemPoints=-1)["redeemedPoints"] == 53
    big = [{"sku": MILK, "qty": "1", "priceMinor": 1000000}]
    assert quote(redeemPoints=-1, lines=big)["redeemedPoints"] == 500
    assert quote(at="2026-11-18T12:00:00+03:00")["earnedPoints"] == 62
    assert quote(at="2026-11-17T12:00:00+03:00")["earnedPoints"] == 12
    balance = cli("balance", "2770000000048", "--json")
    assert balance.code == 0 and balance.json()["availablePoints"] == 0, balance


def test_a_favorite_weekday_is_0_unset_or_iso(cli: CLI) -> None:
    """§14: `favoriteWeekday` is ISO (1-7), 0 its proto3 unset value; -1 and 8 are refused
    naming the field. Mutant: the bound `ge=0` as `ge=-1` took -1."""
    for good in (0, 7):
        customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
        customers[0]["favoriteWeekday"] = good
        assert cli("snapshot", "load", _snapshot(customers=customers)).code == 0, good
    for bad, words in ((-1, "must be 0 or more"), (8, "must be 7 or less")):
        customers = copy.deepcopy(BASE_SNAPSHOT["customers"])
        customers[0]["favoriteWeekday"] = bad
        _refused(
            cli("snapshot", "load", _snapshot(version=2, customers=customers)),
            f"customers[0].favoriteWeekday {words}",
        )


# ---------------------------------------------------------------- §5/§12: a request's list bounds


def test_a_requests_list_bounds_hold_and_openapi_states_them(server: HttpServer) -> None:
    """§5/§12: a receipt needs a line (none: 400 "lines must not be empty") and carries
    at most 100 scanned coupons (101: "has too many items (at most 100)"; 100 are each
    given a verdict); `GET /openapi.json` states the bounds the models check: a receipt's
    `lines` 1 to 10000 items, `coupons` at most 100, `redeemPoints` -1 or more, a refund's
    `lines` 1 to 10000. Mutants of those bounds in the models passed every other test."""
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, lines=[]))
    assert status == 400 and answer["error"]["message"] == "receipt: lines must not be empty"
    codes = [f"NONE-{n}" for n in range(101)]
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, coupons=codes))
    assert status == 400, answer
    assert answer["error"]["message"] == "receipt: coupons has too many items (at most 100)"
    status, answer = post_json(server, "/v1/quote", receipt(card=BORIS, coupons=codes[:100]))
    assert status == 200 and len(answer["coupons"]) == 100, answer
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/openapi.json")
        schemas = json.loads(connection.getresponse().read())["components"]["schemas"]
    finally:
        connection.close()
    receipt_fields, refund_fields = (
        schemas["Receipt"]["properties"],
        schemas["Refund"]["properties"],
    )
    assert (receipt_fields["lines"]["minItems"], receipt_fields["lines"]["maxItems"]) == (1, 10000)
    assert receipt_fields["coupons"]["anyOf"][0]["maxItems"] == 100
    assert receipt_fields["redeemPoints"]["anyOf"][0]["minimum"] == -1
    assert (refund_fields["lines"]["minItems"], refund_fields["lines"]["maxItems"]) == (1, 10000)


def test_a_snapshot_key_is_at_most_200_characters(cli: CLI) -> None:
    """§3's keys (a SKU, an id, a code, a card number) are at most 200 characters: 200
    loads, 201 is refused naming the field. Mutant: the bound 201 took it."""
    products = [{"sku": "7" * 200}]
    assert cli("snapshot", "load", _snapshot(products=products)).code == 0
    _refused(
        cli("snapshot", "load", _snapshot(version=2, products=[{"sku": "7" * 201}])),
        "products[0].sku is too long (at most 200 characters)",
    )
