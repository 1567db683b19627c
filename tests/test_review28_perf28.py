"""Review 28 (perf28): what the HTTP quote's path keeps per snapshot version.

A long-lived agent prices exactly like a fresh one on the same data (docs/CONTRACT.md §3:
the points a snapshot's balances already hold are never counted twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from tests.conftest import receipt, snapshot


def _quote(agent: Agent, receipt_id: str) -> dict[str, Any]:
    return agent.quote(receipt_from_json(receipt(receipt_id))).to_json()


def test_applied_through_kept_per_version_prices_like_a_fresh_agent(tmp_path: Path) -> None:
    """The snapshot's `appliedThrough` is read once per version: a delta that says the
    hub's balances now include this till's sale moves it, and the agent that quoted
    before the delta (its memo filled) answers as a fresh agent does, the sale's points
    counted once."""
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    try:
        agent.load_snapshot(snapshot())
        sale = agent.checkout(receipt_from_json(receipt("sale-1")))
        earned = sale.earned_points
        assert earned > 0
        before = _quote(agent, "q-1")["balance"]  # the memo of version 1 is filled here
        customer = next(c for c in snapshot()["customers"] if c["id"] == "c-a")
        agent.load_snapshot(
            {
                "version": 2,
                "baseVersion": 1,
                "appliedThrough": {"till-1": sale.seq},
                "customers": [{**customer, "balancePoints": customer["balancePoints"] + earned}],
            }
        )
        long_lived = _quote(agent, "q-2")
    finally:
        agent.close()
    fresh_agent = Agent(data, "till-1")
    try:
        fresh = _quote(fresh_agent, "q-2")
    finally:
        fresh_agent.close()
    assert long_lived == fresh
    points = before["availablePoints"] + before["pendingPoints"]
    after = long_lived["balance"]
    assert after["availablePoints"] + after["pendingPoints"] == points  # not points + earned
