"""Faults found in session 17's audits and re-reads, each with the test that failed before."""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.service import Agent

from .conftest import snapshot


def test_a_tier_code_given_twice_is_refused_with_the_snapshot(tmp_path: Path) -> None:
    """Two `base` tiers at 3 % and 5 %: which one a customer earns at was the first's, by
    the order of a list; the snapshot is refused, and the cache keeps what it had."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        bad = snapshot(version=2)
        bad["program"]["tiers"] = [
            {"code": "base", "accrualPercent": "3"},
            {"code": "base", "accrualPercent": "5"},
        ]
        with pytest.raises(InputError, match="tier 'base' appears twice"):
            agent.load_snapshot(bad)
        assert agent.status().cache_version == 1
    finally:
        agent.close()
