"""Faults found in session 19's audits and notes, each with the test that failed before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot


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
