"""Review 33, date33: the suite and the product on other dates (CONTRACT §2: every time a
till prices at is the receipt's own `at`, in the program's zone; nothing of the contract
depends on the day a test is run).

No test may depend on today's date (docs/ARCHITECTURE.md, "Tests and the calendar"): a
fixture made on one day must not expire, a snapshot, certificate or scenario dated by
hand must not fall behind the clock. The guard below runs the suite's dated parts (the
demo, the README walkthrough, every scenario file, the upgrade fixtures made by older
releases) with the wall clock moved a year ahead by `faketime`, in the `make test-all`
and CI slow pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent.demo_data import chain, example_files

from .conftest import REPO
from .test_review23_upgrade23 import FIXTURES, Old, _uploads_once

FAKETIME = shutil.which("faketime")
SITE = Path(__file__).parent / "faketime"  # time.sleep under libfaketime (its docstring)
AHEAD = timedelta(days=366)

# The parts of the suite that carry dates of their own, run as a person would run them.
DATED = [
    "tests/test_demo.py::test_demo_plays_a_whole_day",
    "tests/test_readme.py::test_readme_walkthrough_runs_as_written",
    "tests/test_scenarios.py",
    "tests/test_review23_upgrade23.py",
]


@pytest.mark.parametrize("fixture", [FIXTURES[0]], ids=lambda f: f.name.removesuffix(".tar.gz"))
def test_an_upgraded_till_whose_certificates_ran_out_renews_them_and_uploads_once(
    fixture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade fixtures' server and till certificates end on 2031-12-02 (five years
    from when they were made): from then on tests/test_review23_upgrade23.py renews them
    first, as an operator would, before the old till uploads its outbox (CONTRACT §9). The
    renewal is made here on any date, so the path a later run takes is checked today: the
    old till, with a bundle of this release installed over its old enrolment, drains its
    outbox once to the upgraded hub and its balances agree."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    monkeypatch.delenv("TILLPOINT_HUB__ADDRESS", raising=False)
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "50")
    old = Old(fixture, tmp_path)
    before = (old.till / "enrollment" / "device.pem").read_bytes()
    _uploads_once(old, tmp_path, monkeypatch, renew=True)
    assert (old.till / "enrollment" / "device.pem").read_bytes() != before


def _faked(ahead: timedelta) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment of a process whose wall clock reads `ahead`
    later than now, and goes on (an offset: the processes it starts agree with it)."""
    assert FAKETIME is not None
    env = dict(os.environ)
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH")) if p)
    return [FAKETIME, "-f", f"+{int(ahead.total_seconds())}s"], env


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    FAKETIME is None,
    reason="faketime is not installed (`make deps-system` installs it as root): the"
    " suite's dated parts were not run a year ahead",
)
def test_the_suite_s_dated_parts_pass_a_year_ahead(tmp_path: Path) -> None:
    prefix, env = _faked(AHEAD)
    # the moved clock is seen, and sleeping works under it
    probe = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            "import datetime, time; time.sleep(0.01);"
            " print(datetime.datetime.now(datetime.UTC).date().isoformat())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    expected = {(datetime.now(UTC) + AHEAD + timedelta(days=d)).date().isoformat() for d in (-1, 0)}
    assert probe.returncode == 0 and probe.stdout.strip() in expected, probe.stdout + probe.stderr
    run = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "t"),
            "-m",
            "",
            # the PostgreSQL ones start a server of their own; the hub's SQLite store
            # carries the same dates
            "-k",
            "not postgresql",
            *DATED,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


@pytest.mark.parametrize("today", [date(2028, 2, 27), date(2027, 11, 1), date(2028, 2, 29)])
def test_the_demo_s_chain_is_made_on_any_day_of_a_leap_year(today: date) -> None:
    """`tillpoint demo` on 27 February 2028: the heroine's birthday is in two days, on
    29 February, and it was written into the year 1990, which has none: the demo (and
    `tillpoint demo --export`) stopped with "day is out of range for month" (CONTRACT §4's
    birthday window is what it shows). Her birthday is now in a leap year."""
    snap = chain(today)
    anna = snap["customers"][0]
    born = date.fromisoformat(anna["birthday"])
    assert (born.month, born.day) == (
        (today + timedelta(days=2)).month,
        (today + timedelta(days=2)).day,
    )
    files = example_files(today)
    assert "snapshot.json" in files
