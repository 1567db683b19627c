"""Scanner routing (docs/CONTRACT.md §13, §4): a scanned coupon code goes to the receipt being
rung up, a card to identification; through `Agent.scan` and the kiosk's serial scanner."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest
import serial
from tillpoint.agent.errors import InputError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.scanner import ScannerReader
from tillpoint.printer.service import Devices, greet_on_scan, load_configs

from .conftest import CLI
from .test_coupons import COUPONS, NEXT_VISIT, SORRY, receipt, snap, verdicts

CARD = "2770000000017"


def test_scan_routes_coupon_codes_and_cards(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS, offers=[SORRY, NEXT_VISIT]))
        assert agent.scan("app-555").to_json() == {
            "kind": "COUPON",
            "code": "APP555",
            "offerId": "o-sorry",
        }
        assert agent.scan(CARD).to_json() == {
            "kind": "CARD",
            "card": agent.identify(CARD).to_json(),
        }
        assert agent.scan(CARD).card.status == "FOUND"
        # a code nobody issued is not a coupon: identification says what it is
        assert agent.scan("NOPE-1").card.status == "INVALID"
        # a code this till printed on a receipt is found at once, before any snapshot has it
        first = agent.checkout(receipt_from_json(receipt("s1")))
        assert first.to_json()["printedOffers"] == ["o-next"]
        assert agent.scan("TP5TILL11").kind == "COUPON"
        # the codes wait for the receipt, once each, oldest first; taking them empties the list
        agent.scan("APP 555")
        codes = agent.take_scanned_coupons()
        assert codes == ["APP555", "TP5TILL11"] and agent.take_scanned_coupons() == []
        done = agent.checkout(receipt_from_json(receipt("s2", *codes)))
        # both on the milk line: 20.00 off each unit (40.00) beats 20 % (35.96)
        assert verdicts(done) == [
            ("APP555", "APPLIED", ""),
            ("TP5TILL11", "REJECTED", "NOT_APPLICABLE"),
        ]
        with pytest.raises(InputError):
            agent.scan("x" * 500)
    finally:
        agent.close()


def test_the_kiosk_scanner_routes_a_coupon_and_greets_a_card(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "till", "till-1")
    agent.load_snapshot(snap(coupons=COUPONS))
    p, d, s = load_configs({"kind": "none"}, {"kind": "serial", "device": "loop://"}, {})
    devices = Devices(tmp_path / "ledger-devices.db", p, d, s)
    port = serial.serial_for_url("loop://", timeout=0.05)
    seen: queue.Queue[str] = queue.Queue()
    greet_on_scan(agent.scan, devices)  # as agent/app.py wires `tillpoint run`
    route = devices.on_scan

    def on_scan(text: str) -> None:
        route(text)
        seen.put(text)

    reader = ScannerReader("loop://", on_scan, read_timeout_s=0.05, port_factory=lambda: port)
    reader.start()
    try:
        port.write(b"SORRY-7K2Q9\r\n")
        assert seen.get(timeout=5) == "SORRY-7K2Q9"
        assert agent.scanned_coupons == ["SORRY7K2Q9"]
        assert devices.status()["display"]["lines"][0] == "Купон принят"
        port.write(CARD.encode() + b"\r")
        assert seen.get(timeout=5) == CARD
        assert agent.scanned_coupons == ["SORRY7K2Q9"]  # a card is not a coupon
        assert "Анна" in devices.status()["display"]["lines"][0]
    finally:
        reader.stop()
        devices.stop()
        agent.close()


def test_the_scan_command(cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snap(coupons=COUPONS)), encoding="utf-8")
    assert cli("snapshot", "load", path).code == 0
    assert cli("scan", "app-555", "--json").json() == {
        "kind": "COUPON",
        "code": "APP555",
        "offerId": "o-sorry",
    }
    assert cli("scan", "app-555").out.strip() == "COUPON APP555 (offer o-sorry)"
    assert cli("scan", CARD, "--json").json()["card"]["status"] == "FOUND"
    assert cli("scan", "12ab").out.startswith("CARD INVALID (")
    bad = cli("scan", "x" * 500)
    assert bad.code == 2 and "too long" in bad.err and "Traceback" not in bad.err
