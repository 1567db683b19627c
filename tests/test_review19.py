"""Faults found in session 19's audits and notes, each with the test that failed before."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot

AT = "2026-11-24T12:00:00+03:00"


class Display:
    """What the agent tells the till's devices (agent/service.py DeviceNotifier), kept as
    the lines a pole display would show."""

    def __init__(self) -> None:
        self.lines: list[list[str]] = []

    def show(self, lines: Sequence[str]) -> None:
        self.lines.append(list(lines))

    def after_quote(self, result: Any) -> None:
        self.lines.append(list(result.display))

    def after_checkout(self, result: Any) -> None:
        self.after_quote(result)

    def status(self) -> Mapping[str, Any]:
        return {name: {"state": "OK"} for name in ("printer", "display", "scanner")}


def test_a_cancel_takes_the_held_total_off_the_display(tmp_path: Path) -> None:
    """§8/§11: a cancelled hold (payment failed, basket abandoned) left its total on the
    pole display and in the result's `display`. Only the receipt on display is cleared: a
    POS tidying an older hold must not blank the next customer's total."""
    display = Display()
    agent = Agent(tmp_path / "data", "till-1", devices=display)
    try:
        agent.load_snapshot(snapshot())
        held = agent.hold(receipt_from_json(receipt("r1")))
        assert display.lines[-1] == list(held.display) != ["Чек отменён", ""]
        cancelled = agent.cancel("r1")
        assert list(cancelled.display) == ["Чек отменён", ""]
        assert display.lines[-1] == ["Чек отменён", ""]
        assert agent.cancel("r1").to_json() == cancelled.to_json()  # idempotent

        agent.hold(receipt_from_json(receipt("r2")))
        agent.hold(receipt_from_json(receipt("r3")))
        shown = display.lines[-1]
        agent.cancel("r2")  # not the receipt on display
        assert display.lines[-1] == shown
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("products", {"sku": "4601234000062", "excludedFromLoyalty": "yes"}),
        ("products", {"sku": "4601234000062", "excludedFromLoyalty": 1}),
        ("offers", {"id": "o-b", "kind": "PERCENT_OFF", "value": "5", "printable": "true"}),
        ("offers", {"id": "o-b", "kind": "PERCENT_OFF", "value": "5", "couponRequired": 0}),
        ("offers", {"id": "o-b", "kind": "PERCENT_OFF", "value": "5", "onFavoriteWeekday": 1}),
    ],
)
def test_a_snapshots_yes_or_1_is_not_a_boolean(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, kind: str, row: dict[str, Any]
) -> None:
    """Snapshots are proto3 JSON: a boolean is `true` or `false`. "yes", "true" or 1 for
    `excludedFromLoyalty` loaded as true (tobacco earned nothing by a guess), 0 as false;
    the receipt's `explain` was strict already. Refused, the cache left as it was."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("snapshot", "load", snapshot(version=2, **{kind: [row]}))
    assert run.code == 2 and "must be true or false" in run.err, run.err
    assert cli("status", "--json").json()["cacheVersion"] == 1
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "import", {kind: [row]})
    assert run.code == 2 and "must be true or false" in run.err, run.err


@pytest.mark.parametrize(
    ("at", "words"),
    [
        ("2026-11-23T10:15:00+0300", "is not an RFC 3339 time"),
        ("20261123T101500+03:00", "is not an RFC 3339 time"),
        ("2026-W48-1T10:15:00+03:00", "is not an RFC 3339 time"),
        ("1700000000", "is not an RFC 3339 time"),
        ("2026-11-23T10+03:00", "is not an RFC 3339 time"),
        ("2026-02-30T10:15:00+03:00", "is not a day of the calendar"),
        ("2026-11-24T09:00:00", 'has no offset: add one, as in "2026-11-24T09:00:00+03:00"'),
    ],
)
def test_a_time_is_rfc_3339_not_any_iso_8601(tmp_path: Path, cli: CLI, at: str, words: str) -> None:
    """§2: "Time stamps are RFC 3339 with an offset". ISO 8601's other spellings were taken
    (a basic-format time, a week date, "+0300", no seconds) and, in JSON text read by
    pydantic-core (snapshot rows, an HTTP body), a unix time; the same time read from a
    plain JSON snapshot was refused. Now every reader refuses them, with one message."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for command in ("quote", "checkout"):
        run = cli(command, receipt(at=at), "--json")
        assert run.code == 2 and words in run.err, run.err
    offer = {"id": "o-t", "kind": "PERCENT_OFF", "value": "5", "validTo": at}
    for path in (None, "jsonl"):
        snap = snapshot(version=2, offers=[offer])
        if path == "jsonl":  # the rows read by pydantic-core from JSON text
            head = {k: v for k, v in snap.items() if not isinstance(v, list)}
            lines = [{"format": "tillpoint.snapshot/jsonl", **head}]
            for section in ("products", "customers", "cards", "offers"):
                lines += [{"section": section}, *snap[section]]
            file = tmp_path / "snap.jsonl"
            file.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
            run = cli("snapshot", "load", str(file))
        else:
            run = cli("snapshot", "load", snap)
        assert run.code == 2 and words in run.err, run.err
    assert cli("status", "--json").json()["cacheVersion"] == 1


@pytest.mark.parametrize(
    "at",
    ["2026-11-23t10:15:00z", "2026-11-23 10:15:00.123456789+03:00", "2026-11-23T10:15+03:00"],
)
def test_rfc_3339s_own_freedoms_are_taken(cli: CLI, at: str) -> None:
    """RFC 3339 §5.6 allows a lowercase "t" and "z" and a space for the "T"; a fraction
    finer than microseconds is cut; no seconds is Java's `OffsetDateTime.toString()` at
    a whole minute, read from a receipt and from a snapshot's JSON text alike."""
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("quote", receipt(at=at), "--json").code == 0
    offer = {"id": "o-t", "kind": "PERCENT_OFF", "value": "5", "validTo": at}
    assert cli("snapshot", "load", snapshot(version=2, offers=[offer])).code == 0


def test_confirm_and_cancel_take_the_proto_field_names_over_http(
    agent: Agent, server: HttpServer
) -> None:
    """§1: the bodies are proto3 JSON, whose readers take a field's proto name as well as
    its lowerCamelCase one; receipts and refunds did (`receipt_id`, `price_minor`), the
    small bodies refused `receipt_id` and `fiscal_document` ("is not a known field")."""
    from .test_http_api import Client, error_of

    client = Client(server.port)
    try:
        for rid in ("p1", "p2"):
            assert client.post("/v1/hold", receipt(rid)).status == 200
        done = client.post("/v1/confirm", {"receipt_id": "p1", "fiscal_document": "FD-1"})
        assert done.status == 200, done.body
        assert done.json()["state"] == "CONFIRMED"
        ledger = sqlite3.connect(agent.data_dir / "ledger.db")
        try:
            kept = "SELECT fiscal_document FROM receipt_life WHERE receipt_id = 'p1'"
            assert ledger.execute(kept).fetchone() == ("FD-1",)
        finally:
            ledger.close()
        assert client.post("/v1/cancel", {"receipt_id": "p2"}).json()["state"] == "CANCELLED"
        assert client.post("/v1/balance", {"card": "2770000000017", "at": AT}).status == 200
        twice = client.post("/v1/cancel", {"receipt_id": "p2", "receiptId": "p2"})
        assert error_of(twice)[:2] == (400, "INVALID_ARGUMENT")
        assert "given twice" in error_of(twice)[2]
        unknown = client.post("/v1/cancel", {"receipt": "p2"})
        assert "receipt is not a known field" in error_of(unknown)[2]
    finally:
        client.close()
