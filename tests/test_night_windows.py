"""Night windows (the contract §14): `"hours": [{"from": "22:00", "to": "02:00"}]` runs from
22:00 to midnight and on until 02:00 the next morning, all of it the night of the day it
starts, so `weekdays` and `onFavoriteWeekday` are read on that day. They used to be refused
with the whole snapshot (one such offer from the hub kept a till on stale data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot

MILK = "4601234000017"
FRIDAY_NIGHT = {
    "id": "o-night",
    "kind": "PERCENT_OFF",
    "skus": [MILK],
    "value": "10",
    "weekdays": [5],
    "hours": [{"from": "22:00", "to": "02:00"}],
}


def offer_at(agent: Agent, at: str) -> str | None:
    """The offer the milk line gets at `at` (local time, Moscow)."""
    result = agent.quote(receipt_from_json(receipt(at=at)))
    return result.lines[0].offer_id


@pytest.mark.parametrize(
    ("at", "applies"),
    [
        ("2026-11-27T21:59:59+03:00", False),  # Friday, before the night
        ("2026-11-27T22:00:00+03:00", True),  # Friday night, from inclusive
        ("2026-11-27T23:59:59+03:00", True),
        ("2026-11-28T00:00:00+03:00", True),  # Saturday morning: still Friday's night
        ("2026-11-28T01:59:59+03:00", True),
        ("2026-11-28T02:00:00+03:00", False),  # to exclusive
        ("2026-11-27T01:00:00+03:00", False),  # Friday morning: Thursday's night
        ("2026-11-28T22:30:00+03:00", False),  # Saturday night
        ("2026-11-27T20:30:00+00:00", True),  # 23:30 in Moscow, given in UTC
    ],
)
def test_a_night_window_belongs_to_the_day_it_starts(
    tmp_path: Path, at: str, applies: bool
) -> None:
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=[FRIDAY_NIGHT]))
        assert offer_at(agent, at) == ("o-night" if applies else None)
    finally:
        agent.close()


def test_a_night_window_and_the_favourite_weekday(tmp_path: Path) -> None:
    """`onFavoriteWeekday` is read on the night's day too: a Friday customer's night runs
    into Saturday morning."""
    night = {k: v for k, v in FRIDAY_NIGHT.items() if k != "weekdays"}
    snap = snapshot(offers=[{**night, "onFavoriteWeekday": True}])
    snap["customers"][0]["favoriteWeekday"] = 5
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        assert offer_at(agent, "2026-11-28T01:00:00+03:00") == "o-night"
        assert offer_at(agent, "2026-11-27T01:00:00+03:00") is None  # Thursday's night
        assert offer_at(agent, "2026-11-27T23:00:00+03:00") == "o-night"
    finally:
        agent.close()


def test_an_empty_window_is_still_refused_and_changes_nothing(tmp_path: Path, cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    for hours in ({"from": "08:00", "to": "08:00"}, {"from": "24:00", "to": "02:00"}):
        bad = snapshot(version=2, offers=[{**FRIDAY_NIGHT, "hours": [hours]}])
        run = cli("snapshot", "load", bad)
        assert run.code == 2 and "Traceback" not in run.err, run.err
        assert f"hours {hours['from']}-{hours['to']}" in run.err
    assert cli("status", "--json").json()["cacheVersion"] == 1
    agent = Agent(tmp_path / "other", "till-1")
    try:
        with pytest.raises(InputError, match="an empty window"):
            agent.load_snapshot(
                snapshot(offers=[{**FRIDAY_NIGHT, "hours": [{"from": "08:00", "to": "08:00"}]}])
            )
    finally:
        agent.close()
