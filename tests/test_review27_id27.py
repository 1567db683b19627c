"""Review 27 (id27): identifying a card (docs/CONTRACT.md §4), the offers printed on the
receipt (§7) and the customer display (§8), through the CLI, HTTP and the display driver."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import serial
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.scanner import ScannerReader
from tillpoint.printer.service import Devices, greet_on_scan, load_configs

from .conftest import CLI, receipt, snapshot
from .test_review1 import NEXT_VISIT
from .test_review25_print25 import _shown

# ---------------------------------------------------------------- §4 a phone two customers share


def _moved_account() -> dict[str, Any]:
    """Глеб's old account (c-0, its card BLOCKED) and his new one (c-z, an ACTIVE card):
    the same phone on both, written two ways, as a hub re-registering a customer leaves it."""
    snap = snapshot()
    snap["customers"] += [
        {"id": "c-0", "firstName": "Глеб", "tier": "base", "phone": "+79267770011"},
        {"id": "c-z", "firstName": "Глеб", "tier": "silver", "phone": "8 926 777-00-11"},
    ]
    snap["cards"] += [
        {"number": "2770000000048", "customerId": "c-0", "status": "BLOCKED"},
        {"number": "2770000000055", "customerId": "c-z", "status": "ACTIVE"},
    ]
    return snap


def test_a_phone_shared_with_an_old_blocked_account_finds_the_active_one(cli: CLI) -> None:
    """docs/CONTRACT.md §4: "A phone that matches a customer identifies them through their
    first active card (by card number; BLOCKED if they have none)". A phone on two customers
    (an old account whose card was blocked, the new one the customer uses) took the one whose
    id sorts first and refused the sale as BLOCKED ("the customer has no active card"),
    though the phone's owner has an active card: the cashier sold without loyalty."""
    assert cli("snapshot", "load", _moved_account(), "--json").code == 0
    gleb = {"status": "FOUND", "customerId": "c-z", "tier": "silver", "firstName": "Глеб"}
    for text in ("+79267770011", "89267770011", "926 777 00 11"):
        run = cli("identify", text, "--json")
        assert (run.code, run.json()) == (0, gleb), (text, run.err)
    done = cli("checkout", receipt("r1", card="+7 926 777-00-11"), "--json")
    assert done.code == 0, done.err
    assert done.json()["card"] == gleb
    # the blocked card itself is still refused, by number
    assert cli("identify", "2770000000048", "--json").json()["status"] == "BLOCKED"


def test_a_phone_whose_every_owner_has_no_active_card_is_blocked(cli: CLI) -> None:
    snap = _moved_account()
    snap["cards"][-1]["status"] = "LOST"
    assert cli("snapshot", "load", snap, "--json").code == 0
    run = cli("identify", "89267770011", "--json")
    assert run.json() == {"status": "BLOCKED", "reason": "the customer has no active card"}


def test_a_phone_two_customers_with_active_cards_share_finds_the_first_by_id(cli: CLI) -> None:
    """docs/CONTRACT.md §4's decision, kept: the customer whose id sorts first."""
    snap = _moved_account()
    snap["cards"][-2]["status"] = "ACTIVE"
    assert cli("snapshot", "load", snap, "--json").code == 0
    assert cli("identify", "89267770011", "--json").json()["customerId"] == "c-0"


# ---------------------------------------------------------------- §8 a narrow display


def test_a_birthday_customers_points_stay_on_a_narrow_display(agent: Agent) -> None:
    """docs/CONTRACT.md §8: a display configured narrower rewords a line before it cuts
    one ("С ДР! +57"). Анна (gold 7.5 %, birthday 25 November: ×5 on 23 November) buys for
    4 000,00 and earns 1 500 points: the 20-column line is "С днём рожд.! +1500", which a
    16-column display cut to "С днём рожд.!." and a 12-column one to "С днём." — the
    points earned, the one figure of the line, were gone."""
    big = receipt("r1", lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": 400000}])
    shown = agent.checkout(receipt_from_json(big)).to_json()["display"]
    assert shown == ["С днём рожд.! +1500", "Бонусы: 2700"]
    assert _shown(shown, 16) == ["С ДР! +1500", "Бонусы: 2700"]
    assert _shown(shown, 12) == ["С ДР! +1500", "Бонусы: 2700"]
    assert _shown(shown, 8) == ["+1500", "2700"]
    # the short wish on the narrowest display: its figure, not "С ДР!."
    assert _shown(["С днём рождения! +37", "Бонусы: 1192"], 8) == ["+37", "1192"]


def test_a_name_the_display_cannot_show_is_left_out_not_shown_as_question_marks(
    agent: Agent,
) -> None:
    """docs/CONTRACT.md §8: the greeting with the first name. The display speaks one code
    page (CP866): a name in letters it lacks (Chinese, Greek) was shown as "???, добрый
    день!" — question marks for the customer's name. The greeting now leaves such a name
    out ("Добрый день!"), as it does a name that does not fit; a Latin name with an accent
    still shows without it ("Zoe")."""
    from tillpoint.printer.messages import greeting

    assert _shown(greeting("王小明"), 20) == ["Добрый день!", ""]
    assert _shown(greeting("Άννα"), 20) == ["Добрый день!", ""]
    assert _shown(greeting("Άλεξάνδρα-Μαρία"), 20) == ["Добрый день!", ""]  # the long-name form
    assert _shown(greeting("Zoë"), 20) == ["Zoe, добрый день!", ""]
    assert _shown(greeting("Ольга", 12), 20) == ["Ольга, добрый день!", "Бонусы: 12"]
    # the rest of a line keeps its question mark
    assert _shown(["Итого: 179,80", "Что? Скидка!"], 20) == ["Итого: 179,80", "Что? Скидка!"]


def test_a_discount_hint_too_long_for_a_narrow_display_is_left_out_not_cut(agent: Agent) -> None:
    """docs/CONTRACT.md §8 ("reworded rather than cut") and §17's hint "Ещё 520 ₽ до
    скидки 5%": on 12 columns the hint showed "+400 Р до." and on 8 "+400 Р." — money
    without what it is for, read as "+400 roubles". It is written without its spaces when
    that fits ("+400Р до -5%"), else the row stays empty."""
    snap = snapshot(
        offers=[
            {
                "id": "o-r",
                "kind": "RECEIPT_PERCENT_OFF",
                "value": "5",
                "minTotalMinor": 50000,
                "validFrom": "2026-11-01T00:00:00+03:00",
                "validTo": "2026-11-30T23:59:59+03:00",
            }
        ]
    )
    agent.load_snapshot({**snap, "version": 2})
    small = receipt("q1", lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": 10000}])
    shown = agent.quote(receipt_from_json(small)).to_json()["display"]
    assert shown == ["Итого: 100,00", "Ещё 400 ₽ до −5%"]
    assert _shown(shown, 14) == ["Итого: 100,00", "+400 Р до -5%"]
    assert _shown(shown, 12) == ["100,00", "+400Р до -5%"]
    assert _shown(shown, 8) == ["100,00", ""]
    assert _shown(["Итого: 100,00", "Ещё 12 400 ₽ до −7,5%"], 16) == [
        "Итого: 100,00",
        "+12400Р до -7,5%",
    ]
    assert _shown(["Итого: 100,00", "Ещё 12 400 ₽ до −7,5%"], 12) == ["100,00", ""]


def test_a_long_name_is_left_out_on_a_narrow_display_never_cut() -> None:
    """docs/CONTRACT.md §8 ("reworded rather than cut"; the messages leave out a name that
    does not fit rather than cut it): Александра's greeting, "Добрый день," over
    "Александра!", showed "Алексан." on an 8-column display."""
    from tillpoint.printer.messages import greeting

    assert greeting("Александра") == ["Добрый день,", "Александра!"]
    # the name left out; the greeting takes both rows rather than "Добрый." (review 28)
    assert _shown(greeting("Александра"), 10) == ["Добрый", "день!"]
    assert _shown(greeting("Александра"), 11)[1] == "Александра!"


def test_the_kiosk_tells_a_new_card_it_is_welcome_and_a_blocked_one_it_is_not(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §4: an `UNKNOWN` card (a valid number this till does not know yet:
    a card issued at the service desk this morning) is no refusal: its sale earns base-tier
    points the hub settles. At a kiosk its scan showed "Карта не принята" ("card not
    accepted") and the customer walked away from points they would have had. It greets
    them now without a name; a blocked or invalid card still says it is not accepted."""
    agent = Agent(tmp_path / "till", "till-1")
    agent.load_snapshot(snapshot())
    p, d, s = load_configs({"kind": "none"}, {"kind": "serial", "device": "loop://"}, {})
    devices = Devices(tmp_path / "ledger-devices.db", p, d, s)
    port = serial.serial_for_url("loop://", timeout=0.05)
    seen: queue.Queue[str] = queue.Queue()
    greet_on_scan(agent.scan, devices)  # as agent/app.py wires `tillpoint run`
    route = devices.on_scan
    assert route is not None

    def on_scan(text: str) -> None:
        route(text)
        seen.put(text)

    reader = ScannerReader("loop://", on_scan, read_timeout_s=0.05, port_factory=lambda: port)
    reader.start()
    try:
        for text, lines in (
            ("2770000000093", ["Добрый день!", ""]),  # UNKNOWN
            ("2770000000017", ["Анна, добрый день!", ""]),  # FOUND
            ("2770000000031", ["Карта не принята", ""]),  # BLOCKED
            ("2770000000018", ["Карта не принята", ""]),  # INVALID: its check digit
        ):
            port.write(text.encode() + b"\r\n")
            assert seen.get(timeout=5) == text
            assert devices.status()["display"]["lines"] == lines, text
    finally:
        reader.stop()
        devices.stop()
        agent.close()


def test_identify_over_http_replaces_the_last_customers_balance_on_the_display(
    agent: Agent, server: Any, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §8 (never more than the customer's first name) and §4. After Анна's
    sale the display shows her points and balance; the next customer's card identified
    by the POS (`POST /v1/identify`) greeted a FOUND card only: for a new card (UNKNOWN) or
    a refused one her balance stayed in front of the next customer. Identify now shows what
    the kiosk's scanner shows: the greeting (no name for an UNKNOWN card) or "Карта не
    принята"."""
    from .test_http_api import Client

    p, d, s = load_configs({"kind": "none"}, {"kind": "serial", "device": "loop://"}, {})
    devices = Devices(tmp_path / "ledger-devices.db", p, d, s)
    agent.devices = devices
    client = Client(server.port)
    try:
        assert client.post("/v1/checkout", receipt("r1")).status == 200
        assert devices.status()["display"]["lines"] == ["С днём рождения! +67", "Бонусы: 1267"]
        for text, lines in (
            ("2770000000093", ["Добрый день!", ""]),  # UNKNOWN
            ("2770000000017", ["Анна, добрый день!", ""]),  # FOUND
            ("+7 999 000-00-00", ["Добрый день!", ""]),  # a phone of no one: UNKNOWN
            ("2770000000031", ["Карта не принята", ""]),  # BLOCKED
            ("27700000000１7", ["Карта не принята", ""]),  # INVALID
        ):
            answer = client.post("/v1/identify", {"text": text})
            assert answer.status == 200
            assert devices.status()["display"]["lines"] == lines, text
    finally:
        client.close()
        devices.stop()


# ---------------------------------------------------------------- §7 the coupon's greeting


def test_a_coupon_leaves_out_a_name_the_printer_cannot_print(cli: CLI) -> None:
    """docs/CONTRACT.md §7 (each offer printed with its text) and §8's first name: the
    coupon's greeting "Анна, ждём вас снова!" came out "???, ждём вас снова!" for a name in
    letters the printer's code page (CP866) lacks. It prints "Ждём вас снова!" then, as it
    does for a customer with no name; a Cyrillic name prints as before."""
    snap = snapshot(offers=[{**NEXT_VISIT, "customerId": "c-c", "rank": 1}])
    snap["customers"][2]["firstName"] = "王小明"
    snap["cards"][2]["status"] = "ACTIVE"
    assert cli("snapshot", "load", snap, "--json").code == 0
    done = cli("checkout", receipt("r1", card="2770000000031"), "--json")
    assert done.code == 0 and done.json()["printedOffers"] == ["o-next"], done.err
    shown = cli("print", "preview", done.json(), "--offers", snap, "--json")
    assert shown.code == 0, shown.err
    assert "Ждём вас снова!" in shown.json()["text"] and "?" not in shown.json()["text"]
    anna = cli("checkout", receipt("r2"), "--json").json()
    assert anna["printedOffers"] == []  # Анна has no offer of her own here
    snap["offers"].append({**NEXT_VISIT, "id": "o-anna", "rank": 1})
    assert cli("snapshot", "load", {**snap, "version": 2}, "--json").code == 0
    anna = cli("checkout", receipt("r3"), "--json").json()
    text = cli("print", "preview", anna, "--offers", snap, "--json").json()["text"]
    assert "Анна, ждём вас снова!" in text


# ---------------------------------------------------------------- §8 points paid, on the display


def test_the_display_shows_the_points_paid_while_the_basket_is_priced(agent: Agent) -> None:
    """docs/CONTRACT.md §8: "running total and savings while the basket is priced". Анна
    pays 53 points (53,00) of 179,80: the quote and the hold showed "Итого: 179,80" over
    an empty row, and the card terminal asked for 126,80, a difference the display never
    explained. The second row now counts the points paid: the total less that row is
    what the customer pays (`payableMinor`)."""
    spend = receipt("q1", redeemPoints=53)
    quoted = agent.quote(receipt_from_json(spend)).to_json()
    assert (quoted["redeemedPoints"], quoted["payableMinor"]) == (53, 12680)
    assert quoted["display"] == ["Итого: 179,80", "Бонусами: 53,00"]
    held = agent.hold(receipt_from_json(receipt("h1", redeemPoints=53))).to_json()
    assert held["display"] == ["Итого: 179,80", "Бонусами: 53,00"]
    # with an offer too: 15 % off (26,97) and 45 points (30 % of the rest): 71,97 in all
    offer = {"id": "o-1", "kind": "PERCENT_OFF", "skus": ["4601234000017"], "value": "15"}
    agent.load_snapshot(snapshot(version=2, offers=[offer]))
    both = agent.quote(receipt_from_json(receipt("q2", redeemPoints=-1))).to_json()
    assert both["payableMinor"] == 17980 - 7197
    assert both["display"] == ["Итого: 179,80", "Выгода: 71,97"]
    # no points: as before
    plain = agent.quote(receipt_from_json(receipt("q3"))).to_json()
    assert plain["display"] == ["Итого: 179,80", "Скидка: 26,97"]
