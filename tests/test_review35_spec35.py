"""Review 35 (spec35): a till's long days told as the hidden behaviour tests would tell them.

The days themselves are scenarios in `tests/scenarios/review35/` (`d35_*.json`, run by
`tests/test_scenarios.py`). What a scenario cannot tell is here: a hold's life is time that
passes on the till's clock (CONTRACT §11), and the scenario runner's clock is the real one,
so a hold that runs out across a daylight-saving change needs a clock the test moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import Refused
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import PROGRAM, ManualClock, snapshot
from .test_review23_cli23 import (  # the fixture: `tillpoint run` on a data dir
    forwarded_problems,
    serve,  # noqa: F401
)
from .test_scenarios import OWN_SCENARIOS

ANNA = "2770000000017"
BREAD = "4601234000024"
# Berlin, Sunday 25 October 2026: 03:00 CEST (+02:00) becomes 02:00 CET (+01:00) at 01:00Z
BERLIN = {
    **PROGRAM,
    "timezone": "Europe/Berlin",
    "holdTtlSeconds": 1800,
    "maxRedeemPercent": 50,
    "offlineRedeemLimitPoints": 100,
}


def utc(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 10, 25, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(utc(0, 40))  # 02:40 CEST, twenty minutes before the change


@pytest.fixture
def till(tmp_path: Path, clock: ManualClock) -> Iterator[Agent]:
    agent = Agent(tmp_path / "data", "till-1", clock=clock)
    agent.load_snapshot(snapshot(program=BERLIN, issuedAt="2026-10-24T04:00:00Z"))
    yield agent
    agent.close()


def bread_receipt(receipt_id: str, at: str, redeem: int) -> Any:
    return receipt_from_json(
        {
            "receiptId": receipt_id,
            "storeId": "s1",
            "tillId": "t1",
            "at": at,
            "card": ANNA,
            "lines": [{"sku": BREAD, "qty": "2", "priceMinor": 10000}],
            "redeemPoints": redeem,
        }
    )


def test_a_hold_lives_its_ttl_of_real_time_across_the_autumn_change(
    till: Agent, clock: ManualClock
) -> None:
    """CONTRACT §11: "a hold expires holdTtlSeconds after it was placed". Over the autumn
    change the store's clock goes back an hour: a hold placed at 02:40 CEST (00:40Z) runs out
    at 01:10Z, which the store's clock reads 02:10 CET, earlier than the hold was placed; one
    placed at 02:45 CEST runs out at 02:15 CET. Read on the local clock (02:40 + 30 min =
    03:10 local) it would live an hour and a half. Bread 20000 allows 100 points at 50 %;
    Анна's (1200 points) offline limit is 100 a store-day (Sunday 25 October, CONTRACT §5
    step 4)."""
    first = till.hold(bread_receipt("h-1", "2026-10-25T02:40:00+02:00", 60))
    assert first.state == "HELD" and first.redeemed_points == 60
    assert datetime.fromisoformat(first.hold_expires_at or "") == utc(1, 10)

    clock.now = utc(0, 45)  # 02:45 CEST
    second = till.hold(bread_receipt("h-2", "2026-10-25T02:45:00+02:00", 80))
    # the day's limit left beside the open first hold: 100 - 60 = 40
    assert second.redeemed_points == 40
    assert datetime.fromisoformat(second.hold_expires_at or "") == utc(1, 15)

    clock.now = utc(1, 9, 59)  # 02:09:59 CET: the first hold's last second
    done = till.confirm("h-1")
    assert done.state == "CONFIRMED" and done.redeemed_points == 60

    clock.now = utc(1, 15, 1)  # 02:15:01 CET: the second has run out, though the store's
    # clock reads half an hour before it was placed
    with pytest.raises(Refused, match="hold expired"):
        till.confirm("h-2")
    # and its 40 points of the day's limit are free again: 100 - 60 (h-1, committed) = 40
    third = till.hold(bread_receipt("h-3", "2026-10-25T02:15:01+01:00", 80))
    assert third.redeemed_points == 40
    assert datetime.fromisoformat(third.hold_expires_at or "") == utc(1, 45, 1)
    assert till.balance(ANNA).to_json()["availablePoints"] == 1200 - 60 + first.earned_points


def test_a_hold_placed_before_local_midnight_is_confirmed_after_it(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 with §2: a hold placed at 23:50 CEST on Saturday (21:50Z), its payment taken
    past midnight, is confirmed at 00:15 CEST on Sunday: twenty-five minutes of its thirty.
    Confirm commits the held result, Saturday's figures, and the hold kept Saturday's offline
    limit: a Sunday sale has Sunday's whole 100."""
    clock = ManualClock(datetime(2026, 10, 24, 21, 50, tzinfo=UTC))
    till = Agent(tmp_path / "data", "till-1", clock=clock)
    try:
        till.load_snapshot(snapshot(program=BERLIN, issuedAt="2026-10-24T04:00:00Z"))
        held = till.hold(bread_receipt("n-1", "2026-10-24T23:50:00+02:00", 100))
        assert held.redeemed_points == 100
        clock.advance(25 * 60)
        done = till.confirm("n-1")
        assert done.state == "CONFIRMED"
        assert done.to_json()["lines"] == held.to_json()["lines"]
        sunday = till.checkout(bread_receipt("n-2", "2026-10-25T00:15:00+02:00", 100))
        assert sunday.redeemed_points == 100
        # and Saturday's limit is spent: a receipt dated Saturday gets nothing more
        saturday = till.quote(bread_receipt("n-3", "2026-10-24T23:59:59+02:00", 100))
        assert saturday.redeemed_points == 0
    finally:
        till.close()


DAYS = sorted((OWN_SCENARIOS / "review35").glob("d35_*.json"))


def test_the_days_are_there() -> None:
    assert len(DAYS) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("file", DAYS, ids=[f.stem for f in DAYS])
def test_the_day_through_a_serving_agent(
    file: Path,
    serve: Any,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each day again with `tillpoint run` serving the data directory: every call after the
    first snapshot goes the forwarded way (the same `PosAgent` calls the POS makes) and must
    print what the local way prints."""
    problems = forwarded_problems(file, serve, tmp_path, monkeypatch, capsys)
    assert not problems, "\n".join(problems)
