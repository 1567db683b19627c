"""Points that expire (§16): a property against a model of the batches, and the edges."""

from __future__ import annotations

import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent.messages import checkout_display, expiry_line
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import PROGRAM, receipt, snapshot

CARD = "2770000000024"  # c-b, base tier (3 %)
START = datetime.fromisoformat("2026-11-23T10:00:00+03:00")  # Moscow: no DST


def _snapshot(rest: int, expiring: list[tuple[int, datetime]], lifetime: int) -> dict[str, Any]:
    snap = snapshot(
        program={
            **PROGRAM,
            "pointsLifetimeDays": lifetime,
            "maxRedeemPercent": 100,
            "offlineRedeemLimitPoints": 10**9,
        }
    )
    for customer in snap["customers"]:
        if customer["id"] == "c-b":
            customer["balancePoints"] = rest + sum(p for p, _ in expiring)
            customer["expiring"] = [{"points": p, "expiresAt": e.isoformat()} for p, e in expiring]
    return snap


class Batches:
    """The contract's rule, written plainly: spend the batches expiring soonest first."""

    def __init__(self, rest: int, expiring: list[tuple[int, datetime]]) -> None:
        self.batches: list[list[Any]] = [[p, e] for p, e in expiring] + [[rest, None]]

    def live(self, at: datetime) -> int:
        return sum(b[0] for b in self.batches if b[1] is None or at <= b[1])

    def spend(self, points: int, at: datetime) -> None:
        order = sorted(
            (b for b in self.batches if b[1] is None or at <= b[1]),
            key=lambda b: (b[1] is None, b[1] or at),
        )
        for b in order:
            part = min(points, b[0])
            b[0] -= part
            points -= part
        assert points == 0

    def earn(self, points: int, expires: datetime | None) -> None:
        self.batches.append([points, expires])


steps = st.lists(
    st.tuples(
        st.integers(1, 24 * 12),  # hours since the step before
        st.integers(100, 300_000),  # price in minor units
        st.sampled_from([-1, -1, 0, 50, 400]),  # redeemPoints
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rest=st.integers(0, 300),
    expiring=st.lists(
        st.tuples(st.integers(1, 300), st.integers(1, 24 * 40)), min_size=0, max_size=4
    ),
    lifetime=st.integers(0, 20),
    plan=steps,
)
def test_spending_never_uses_an_expired_point(
    rest: int, expiring: list[tuple[int, int]], lifetime: int, plan: list[tuple[int, int, int]]
) -> None:
    batches = [(p, START + timedelta(hours=h)) for p, h in expiring]
    model = Batches(rest, batches)
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(Path(tmp) / "data", "till-1")
        try:
            agent.load_snapshot(_snapshot(rest, batches, lifetime))
            at = START
            for i, (hours, price, redeem) in enumerate(plan):
                at += timedelta(hours=hours)
                live = model.live(at)
                result = agent.checkout(
                    receipt_from_json(
                        receipt(
                            f"r{i}",
                            card=CARD,
                            at=at.isoformat(),
                            lines=[{"sku": "4601234000055", "qty": "1", "priceMinor": price}],
                            redeemPoints=redeem,
                        )
                    )
                )
                redeemed, earned = result.redeemed_points, result.earned_points
                assert redeemed <= live  # never a point that expired by `at`
                if redeem == -1:
                    assert redeemed == min(live, price // 100)  # every live point is spendable
                model.spend(redeemed, at)
                if earned:
                    model.earn(earned, at + timedelta(days=lifetime) if lifetime else None)
                assert result.balance.available_points == model.live(at)
                assert result.balance.pending_points == 0
                shown = result.to_json()["balance"].get("expiring", [])
                want = sorted((b[1], b[0]) for b in model.batches if b[1] and b[0] and at <= b[1])
                assert [(s["expiresAt"], s["points"]) for s in shown] == [
                    (e.isoformat(), p) for e, p in _merged(want)[:3]
                ]
            later = at + timedelta(days=400)  # every batch that expires has expired
            assert agent.balance(CARD, later).available_points == model.live(later)
        finally:
            agent.close()


def _merged(batches: list[tuple[datetime, int]]) -> list[tuple[datetime, int]]:
    out: list[tuple[datetime, int]] = []
    for moment, points in batches:
        if out and out[-1][0] == moment:
            out[-1] = (moment, out[-1][1] + points)
        else:
            out.append((moment, points))
    return out


def test_no_lifetime_and_no_expiring_keeps_the_balance_as_it_was(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        result = agent.checkout(receipt_from_json(receipt(card=CARD)))
        assert "expiring" not in result.to_json()["balance"]
        assert (
            agent.balance(CARD, START + timedelta(days=3000)).to_json()
            == result.to_json()["balance"]
        )
    finally:
        agent.close()


def test_balance_expiring_over_grpc_json(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "data", "till-1")
    try:
        expires = START + timedelta(days=5)
        agent.load_snapshot(_snapshot(10, [(300, expires)], 0))
        got = agent.balance(CARD, START)
        message = json_format.ParseDict(got.to_json(), pb.Balance())
        assert message.expiring[0].points == 300
        assert message.expiring[0].expires_at == expires.isoformat()
    finally:
        agent.close()


def test_display_warning_fits_the_display() -> None:
    assert expiry_line(300, date(2026, 12, 31)) == "Сгорят 31.12: 300"
    assert len(expiry_line(10**15, date(2026, 12, 31))) <= 20
    lines = checkout_display("Борис", 3, 456, None, (40, date(2026, 11, 30)))
    assert lines == ["Сгорят 30.11: 40", "Бонусы: 456"]


def test_points_earned_before_a_skipped_clock_time_live_their_whole_lifetime(
    tmp_path: Path,
) -> None:
    """Berlin, a sale at 02:30 the day before the spring change, one day's delay and one
    day's lifetime: 02:30 is not on the clock on 29 March, so the points become spendable
    at 03:30 (01:30 UTC) and expire a day later at 03:30, the same clock time (§16). They
    used to expire at 02:30, 23 hours on, an hour before the hub said."""
    snap = snapshot(
        program={
            **PROGRAM,
            "timezone": "Europe/Berlin",
            "activationDelayDays": 1,
            "pointsLifetimeDays": 1,
        }
    )
    agent = Agent(tmp_path, "till-1")
    try:
        agent.load_snapshot(snap)
        sale = receipt("r-dst", card=CARD, at="2026-03-28T02:30:00+01:00")
        earned = agent.checkout(receipt_from_json(sale)).earned_points
        assert earned > 0

        def at(text: str) -> tuple[int, int, list[str]]:
            b = agent.balance(CARD, datetime.fromisoformat(text))
            return b.available_points, b.pending_points, [e.expires_at for e in b.expiring]

        assert at("2026-03-29T03:29:59+02:00") == (80, earned, [])
        assert at("2026-03-29T03:30:00+02:00") == (80 + earned, 0, ["2026-03-30T03:30:00+02:00"])
        assert at("2026-03-30T03:30:00+02:00")[0] == 80 + earned  # through expiresAt
        assert at("2026-03-30T03:30:01+02:00") == (80, 0, [])
    finally:
        agent.close()
