"""Review 54 (lead): what the snapshot build's orphan watch may stop; what the till's
authoriser sends the hub of its unsent points (docs/DECISIONS.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cache_build
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.loopback import receipt as hub_receipt

from .test_cache_build import NOW, build_processes, leftovers, make_agent
from .test_review30_sync30 import HUB_TTL_S, enrolled  # a till never pushing
from .test_review53_mut53b import MIN_CHUNK, snapshot_lines, write

# Starts the command it is given and a bystander in its own process group, prints both
# pids, and exits when its stdin closes: a script that runs a build by hand.
STARTER = """
import subprocess, sys
build = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(build.pid, bystander.pid, flush=True)
sys.stdin.readline()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_orphaned_build_started_in_its_starters_group_stops_alone(tmp_path: Path) -> None:
    """A coordinator a script started without `--parent` and without a session of its own
    (as PERFORMANCE.md's benchmarks run it by hand) shares the script's process group. Once
    the script is gone the build stops, its stalled worker too, and the group's other
    process lives: the watch used to kill the whole group (review 53, mut53b)."""
    data = tmp_path / "till"
    make_agent(data, 2).close()
    source = write(tmp_path / "v2.jsonl", snapshot_lines(2))
    command = [sys.executable, "-m", cache_build.MODULE, "build", "--data-dir", str(data)]
    command += ["--source", str(source), "--now", NOW.isoformat(), "--workers", "2"]
    command += ["--min-chunk", str(MIN_CHUNK)]
    env = {**os.environ, cache_build.FAULT_ENV: "stall:0"}  # worker 0 waits a minute
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,  # the script's group is not pytest's
    )
    assert starter.stdout is not None and starter.stdin is not None
    coordinator, bystander = map(int, starter.stdout.readline().split())
    try:
        deadline = time.monotonic() + 60
        while not build_processes("work", data):
            assert time.monotonic() < deadline, "the build started no worker"
            time.sleep(0.05)
        assert os.getpgid(coordinator) == os.getpgid(bystander) == starter.pid
        starter.stdin.close()
        starter.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(coordinator) or build_processes("work", data):
            assert time.monotonic() < deadline, "the orphaned build went on"
            time.sleep(0.05)
        assert _alive(bystander), "the build's orphan watch killed its starter's group"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(starter.pid, signal.SIGKILL)
        starter.wait(timeout=30)
    agent = make_agent(data, 2)
    try:
        assert agent.load_snapshot_file(source).version == 2
    finally:
        agent.close()
    assert leftovers(data) == []


# ------------------------------------------ the till's unsent points, as the hub is sent them

ANNA = "2770000000024"  # c-2 of the sample data, base tier (3 %)
A_DAY_LATER = "2026-12-01T10:00:00.999999+03:00"  # the last instant a-1's earned point counts


def lifetime_data() -> dict[str, Any]:
    """100 points that never expire; points earned live one day (§16); 100 % of a
    receipt may be paid in points, so only the balance caps a redemption."""
    data = sample_master_data()
    data["program"]["maxRedeemPercent"] = 100
    data["program"]["pointsLifetimeDays"] = 1
    data["customers"][1]["balancePoints"] = 100
    return data


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(
        tmp_path / "hub",
        data=lifetime_data(),
        clock=lambda: datetime(2026, 11, 30, 6, 0, tzinfo=UTC),
        snapshot_ttl_s=HUB_TTL_S,
    )
    yield hub
    hub.stop()


def _sale(receipt_id: str, at: str, price_minor: int, redeem: int) -> Any:
    line = [{"sku": "4601234000017", "qty": "1", "priceMinor": price_minor}]
    body = hub_receipt(receipt_id, ANNA, redeem=redeem, lines=line)
    body["at"] = at
    return receipt_from_json(body)


def test_an_unsent_earned_point_counts_at_the_hub_through_its_last_second_and_not_after(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """§9 with §16: till A's sale at 10:00 on 30 November earns 1 point (3 % of 50,00),
    spendable at once and for one day: through the second 10:00:00 on 1 December (its
    last instant, .999999, included). A's outbox has not reached the hub. Till B at 09:00
    on 1 December spends the 100 the hub knows of. At 10:00:00.999999 A asks for all it
    sees (101): the hub counts A's unsent point and grants 1;
    at 10:00:01 the point is gone, A asks for 100 and the hub, told of no point, grants 0
    (sent as spendable, it granted 1: A and B would spend 101 of the 100 that count).
    Mutation testing of sync/authoriser.py (review 54): no test in the default run sent
    the hub an earned point with an expiry."""
    a = enrolled(hub, tmp_path, "till-a")
    b = enrolled(hub, tmp_path, "till-b")
    try:
        one = a.agent.checkout(_sale("a-1", "2026-11-30T10:00:00+03:00", 5000, 0))
        assert (one.mode, one.earned_points) == ("ONLINE", 1)
        spent = b.agent.checkout(_sale("b-1", "2026-12-01T09:00:00+03:00", 30000, -1))
        assert (spent.mode, spent.redeemed_points) == ("ONLINE", 100)
        last = a.agent.hold(_sale("a-2", A_DAY_LATER, 30000, -1))
        assert (last.mode, last.redeemed_points) == ("ONLINE", 1)
        a.agent.cancel("a-2")
        after = a.agent.hold(_sale("a-3", "2026-12-01T10:00:01+03:00", 30000, -1))
        assert (after.mode, after.redeemed_points) == ("ONLINE", 0)
    finally:
        a.stop()
        b.stop()


def test_an_unsent_sale_with_a_receipt_id_of_the_longest_length_settles_its_own_hold(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """§9: a receipt id of 128 characters (the longest a receipt may have) is sent with
    the till's unsent sale, so the hub settles that receipt's hold with it instead of
    counting both: A's sale spends 50 of 100, its next sale may have the other 50. Only a
    longer id (an earlier release's) is sent blank (review 32); one of 128 sent blank,
    the hub counted the hold and the sale, 100, and granted 0."""
    a = enrolled(hub, tmp_path, "till-a")
    longest = "r" * 128
    try:
        one = a.agent.checkout(_sale(longest, "2026-11-30T10:00:00+03:00", 5000, 50))
        assert (one.mode, one.redeemed_points) == ("ONLINE", 50)
        two = a.agent.checkout(_sale("a-2", "2026-11-30T10:05:00+03:00", 30000, -1))
        assert (two.mode, two.redeemed_points) == ("ONLINE", 50)
    finally:
        a.stop()


def test_no_test_s_loopback_hub_on_a_fixed_day_publishes_for_a_week_only() -> None:
    """docs/ARCHITECTURE.md, "Tests and the calendar": a loopback hub whose clock is a fixed
    moment (`clock=lambda: HUB_NOW`, `clock=lambda: datetime(...)`) publishes with
    `snapshot_ttl_s` given: its default, a week from that moment, is a date bomb for every
    test whose tills pull (they verify the snapshot on the wall clock). Five files' hubs
    on 30 November and 5 December would have failed so from 7 and 12 December 2026."""
    import ast

    found = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "LoopbackHub"):
                continue
            words = {k.arg: k.value for k in node.keywords}
            clock = words.get("clock")
            fixed = isinstance(clock, ast.Lambda) and isinstance(clock.body, ast.Name | ast.Call)
            if fixed and "snapshot_ttl_s" not in words:
                found.append(f"{path.name}:{node.lineno}")
    assert found == [], f"a fixed-day loopback hub publishing for a week: {found}"
