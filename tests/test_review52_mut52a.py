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
from typing import Any

from tillpoint.agent.http_api import HttpServer

from .conftest import BASE_SNAPSHOT, CLI, Run, receipt

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


def _post(server: HttpServer, path: str, body: Any) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("POST", path, json.dumps(body, ensure_ascii=False).encode())
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


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
    status, answer = _post(server, "/v1/quote", receipt(card=BORIS, lines=[line]))
    assert status == 200, answer
    assert answer["totalMinor"] == 17980
    longer = {**line, "priceMinor": "0" * 125 + "8990"}
    status, answer = _post(server, "/v1/quote", receipt(card=BORIS, lines=[longer]))
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
