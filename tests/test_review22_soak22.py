"""Review 22 (soak22): a long-lived `tillpoint run` while time moves.

`bench/soaktime.py` runs one `tillpoint run` (`bench/clocked_run.py`: the real command
line, its agent's wall clock moved by the harness) through receipts stamped at its clock
as the clock crosses offer hours, midnight and weekdays, the favourite weekday, a night
window, a birthday window, expiring batches, pending points, a coupon's and an offer's
end, holds idle past their TTL, a snapshot applied while receipts are held, both
daylight-saving changes in the program's zone, a restart after holds expired while the
till was down, and an NTP step back; each answer equal to a fresh agent's on a copy of
the data directory with the same clock. No difference was found (docs/FAULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

ROOT = Path(__file__).resolve().parents[1]


def _soak(tmp_path: Path, calls: int, *, idle_wait: bool) -> None:
    from bench import soaktime

    s = soaktime.run(tmp_path / "work", seed=22, calls=calls, idle_wait=idle_wait)
    assert not s.mismatches, "\n".join(s.mismatches[:5])
    assert s.clock_checked >= 10  # the run's holds ran out TTL from the moved clock
    assert s.by_call.get("confirm/FAILED_PRECONDITION", 0) >= 1, s.by_call  # idle holds
    assert sum(s.counts.values()) >= 25 * calls
    if idle_wait:  # the run's own timer expired the idle holds, by the moved clock
        assert s.swept >= 4  # idle holds, and holds expired while the run was down


def test_a_long_lived_till_answers_as_a_fresh_one_while_time_moves_short(
    tmp_path: Path,
) -> None:
    """One call at each moment (about 8 s; the slow test below makes eight)."""
    _soak(tmp_path, calls=1, idle_wait=False)


@pytest.mark.slow  # about 50 s: eight calls at each moment, the sweeper's own round waited for
def test_a_long_lived_till_answers_as_a_fresh_one_while_time_moves(tmp_path: Path) -> None:
    _soak(tmp_path, calls=8, idle_wait=True)


def test_the_clocked_run_moves_only_the_agents_clock(tmp_path: Path) -> None:
    """`bench/clocked_run.py` is the `tillpoint` command line with the agent's clock read
    from a file: a hold placed through it runs out `holdTtlSeconds` after that clock."""
    from bench import difflong as dl

    data = tmp_path / "data"
    snap = tmp_path / "snap.json"
    doc = {
        "version": 1,
        "baseVersion": 0,
        "issuedAt": "2026-11-23T03:00:00Z",
        "program": {"holdTtlSeconds": 60},
        "products": [{"sku": dl.MILK, "name": "Молоко", "category": "dairy"}],
        "customers": [{"id": "c-1", "tier": "base", "balancePoints": 10}],
        "cards": [{"number": "2770000000017", "customerId": "c-1", "status": "ACTIVE"}],
    }
    snap.write_text(json.dumps(doc), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = dl.DEVICE
    subprocess.run(
        [dl.EXE, "--data-dir", str(data), "snapshot", "load", str(snap)],
        check=True,
        capture_output=True,
        env=env,
    )
    clock = tmp_path / "clock"
    offset = -40 * 86_400
    clock.write_text(str(offset), encoding="utf-8")
    body = {
        "receiptId": "r-1",
        "at": "2026-10-24T12:00:00+03:00",
        "card": "2770000000017",
        "lines": [{"sku": dl.MILK, "qty": "1", "priceMinor": 1000}],
    }
    rfile = tmp_path / "r.json"
    rfile.write_text(json.dumps(body), encoding="utf-8")
    clocked = [sys.executable, "-m", "bench.clocked_run", str(clock)]
    done = subprocess.run(
        [*clocked, "--data-dir", str(data), "hold", str(rfile), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    expires = datetime.fromisoformat(json.loads(done.stdout)["holdExpiresAt"])
    want = datetime.now(UTC) + timedelta(seconds=offset + 60)
    assert abs((expires - want).total_seconds()) < 30
    # a fresh agent with the real clock finds the hold long run out
    agent = Agent(data, dl.DEVICE)
    try:
        again = agent.hold(receipt_from_json(body)).to_json()
        assert datetime.fromisoformat(again["holdExpiresAt"]) > datetime.now(UTC)
    finally:
        agent.close()
