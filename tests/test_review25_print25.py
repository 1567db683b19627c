"""Review 25 (print25): offers printed on the receipt (docs/CONTRACT.md §7), the customer
display (§8) and till-issued coupons (§13), end to end."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import serial
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import CustomerDisplay
from tillpoint.printer.virtual_display import DisplayScreen

from .conftest import receipt, snapshot

NEXT_VISIT: dict[str, Any] = {
    "id": "o-next",
    "campaignId": "camp-n",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000017"],
    "value": "20",
    "couponRequired": True,
    "issueCoupon": True,
    "printable": True,
    "printText": "−20% на молоко в следующий раз",
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2026-12-31T23:59:59+03:00",
    "rank": 1,
}


def _issued(data: Path) -> list[str]:
    conn = sqlite3.connect(data / "ledger.db")
    try:
        return [str(c) for (c,) in conn.execute("SELECT code FROM issued_coupons ORDER BY seq")]
    finally:
        conn.close()


def test_a_till_restored_from_a_backup_issues_no_code_it_issued_before(tmp_path: Path) -> None:
    """docs/CONTRACT.md §13: a till-issued code is unique in the chain, built from a
    per-device counter "never reused, like `seq`" (§9: after a snapshot whose
    appliedThrough is higher than the till's last seq, numbering continues above it).
    A till whose ledger was put back from last week's backup continued its seq above the
    snapshot's appliedThrough, but its coupon counter from the backup: it printed again
    the codes it had issued after the backup (TP5TILL12 to two customers)."""
    data, backup = tmp_path / "data", tmp_path / "backup"
    till = Agent(data, "till-1")
    till.load_snapshot(snapshot(offers=[NEXT_VISIT]))
    till.checkout(receipt_from_json(receipt("r1")))  # TP5TILL11, seq 1 and 2
    till.close()
    shutil.copytree(data, backup)
    till = Agent(data, "till-1")
    for i, day in enumerate(("2026-12-01", "2026-12-09"), 2):  # after the 7-day cooldown
        till.checkout(receipt_from_json(receipt(f"r{i}", at=f"{day}T10:00:00+03:00")))
    till.close()
    issued = _issued(data)
    assert issued == ["TP5TILL11", "TP5TILL12", "TP5TILL13"]  # seq 2, 4 and 6

    # the till's disk fails; last week's backup goes back; the hub counted through seq 6
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    till = Agent(data, "till-1")
    restored = snapshot(offers=[NEXT_VISIT], version=2, appliedThrough={"till-1": 6})
    till.load_snapshot(restored)
    done = till.checkout(receipt_from_json(receipt("r9", at="2026-12-17T10:00:00+03:00")))
    till.close()
    assert done.to_json()["seq"] == 7
    (new,) = set(_issued(data)) - {"TP5TILL11"}
    assert new not in issued


def _shown(lines: list[str], columns: int) -> list[str]:
    """What a real display driver, on a pyserial loop port, puts on a `columns` × 2 screen."""
    config = DisplayConfig(kind="serial", device="loop://", columns=columns)
    port = serial.serial_for_url("loop://", timeout=0.2, write_timeout=0.5)
    display = CustomerDisplay(config, port_factory=lambda: port)
    display.start()
    try:
        display.show(lines)
        assert display.flush(2.0)
        screen = DisplayScreen(columns=columns)
        screen.feed(port.read(8192))
        return screen.text
    finally:
        display.stop()


def test_a_narrow_display_shows_the_whole_total_never_a_cut_figure(agent: Agent) -> None:
    """docs/CONTRACT.md §8: messages fit the display, "reworded rather than cut". A
    display configured with 16 columns (`[display] columns`, 8–40) got the 20-column
    lines cut at a word: a basket of 12 345,67 showed "Итого: 12 345." and the
    greeting "Анна, добрый." — a total the customer reads wrong. A line that does not
    fit now drops its label (the figure is whole) or the name before the greeting."""
    big = receipt("q1", lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": 1234567}])
    quoted = agent.quote(receipt_from_json(big)).to_json()["display"]
    assert quoted == ["Итого: 12 345,67", ""]  # 16 characters: fits as it is
    huge = receipt("q2", lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": 123456789}])
    quoted = agent.quote(receipt_from_json(huge)).to_json()["display"]
    assert quoted == ["Итого: 1 234 567,89", ""]
    assert _shown(quoted, 16) == ["1 234 567,89", ""]
    assert _shown(quoted, 10) == ["1234567,89", ""]
    assert _shown(["Анна, добрый день!", "Бонусы: 1192"], 16) == ["Добрый день!", "Бонусы: 1192"]
    assert _shown(["Начислено: +1 234", "Бонусы: 123 456 789"], 12) == ["+1 234", "123 456 789"]
    # the 20-column default shows the lines as they are
    assert _shown(quoted, 20) == ["Итого: 1 234 567,89", ""]


def _printed(agent: Agent, receipt_id: str, at: str) -> list[str]:
    done = agent.checkout(receipt_from_json(receipt(receipt_id, at=at)))
    return list(done.to_json()["printedOffers"])


def test_print_days_are_the_stores_days_across_a_clock_change(tmp_path: Path) -> None:
    """docs/CONTRACT.md §7: "starting within 7 days" and "not printed within
    offerPrintCooldownDays" are days of the store (§2: `at` is read in the store's local
    date), as §5 step 6 counts its days: at the same local clock time, also across a
    daylight-saving change. In a Berlin store they were 24-hour periods: an offer printed
    on Wednesday 25 March at 10:00 was not printed again at 10:00 a week later (an hour
    short, the clocks went forward), and on Wednesday 21 October an offer starting at 10:00
    a week later (the clocks go back) was not printed."""
    program = {**snapshot()["program"], "timezone": "Europe/Berlin", "offerPrintCooldownDays": 7}
    offer = {**NEXT_VISIT, "issueCoupon": False, "couponRequired": False}
    offer["validFrom"], offer["validTo"] = "2026-03-01T00:00:00+01:00", "2026-12-31T00:00:00+01:00"
    spring = Agent(tmp_path / "spring", "till-1")
    spring.load_snapshot(snapshot(program=program, offers=[offer]))
    assert _printed(spring, "r1", "2026-03-25T10:00:00+01:00") == ["o-next"]
    assert _printed(spring, "r2", "2026-04-01T09:59:59+02:00") == []  # still within 7 days
    assert _printed(spring, "r3", "2026-04-01T10:00:00+02:00") == ["o-next"]  # 7 days on
    spring.close()

    soon = {**offer, "id": "o-soon", "validFrom": "2026-10-28T10:00:00+01:00"}
    later = {**offer, "id": "o-later", "validFrom": "2026-10-28T10:00:01+01:00"}
    autumn = Agent(tmp_path / "autumn", "till-1")
    autumn.load_snapshot(snapshot(program=program, offers=[soon, later]))
    assert _printed(autumn, "r1", "2026-10-21T10:00:00+02:00") == ["o-soon"]
    autumn.close()
