"""Review 23 (cli23): the hand-worked scenarios of tests/scenarios/review23 again, with a real
`tillpoint run` serving the data directory, so every CLI call after the first snapshot goes the
forwarded way (agent/forward.py) and must print the same documents and exit codes as the local
way that tests/test_scenarios.py checks. Slow (a `run` per scenario): `make test-all`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.forward import SERVING

from .conftest import free_port
from .test_scenarios import OWN_SCENARIOS, _argv, _check_step, _run_in_process

EXE = Path(sys.executable).parent / "tillpoint"

# one of each kind of call: pricing, refunds, hold/confirm/cancel with a TTL, coupons, bad input
FORWARDED = [
    "s5_receipt_offer_ties_control_group_and_redeem_share",
    "s6_refund_in_thirds_exact_totals",
    "s10_bad_receipts_exit_2_nothing_changed",
    "s11_cancel_releases_and_is_idempotent",
    "s11_hold_ttl_expiry",
    "s13_coupon_verdicts_and_use",
    "s16_expiring_batches_soonest_first",
]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(data: Path) -> None:
        conf = tmp_path / "till.toml"
        conf.write_text(
            f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\nenabled = false\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
        proc = subprocess.Popen(
            [EXE, "--config", conf, "--data-dir", data, "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not (data / SERVING).exists():
            assert proc.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("name", FORWARDED)
def test_scenario_through_a_serving_agent(
    name: str,
    serve: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    problems = forwarded_problems(
        OWN_SCENARIOS / "review23" / f"{name}.json", serve, tmp_path, monkeypatch, capsys
    )
    assert not problems, "\n".join(problems)


def forwarded_problems(
    file: Path,
    serve: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> list[str]:
    """A scenario's steps told to the CLI with `tillpoint run` (the `serve` fixture)
    serving its data directory from the first step that is not its first snapshot load:
    every call after it goes the forwarded way and must print what the local way does.
    Answers the steps' problems (none: each as its `expect` says)."""
    scenario = json.loads(file.read_text("utf-8"))
    for key in list(os.environ):
        if key.startswith("TILLPOINT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", scenario["deviceId"])
    data = tmp_path / "data"
    data.mkdir()
    problems: list[str] = []
    served = False
    for index, step in enumerate(scenario["steps"]):
        if not served and (index > 0 or step["command"] != "snapshot load"):
            serve(data)
            served = True
        if step["command"] == "wait":
            time.sleep(float(step["seconds"]))
            continue
        code, out, err = _run_in_process(_argv(step, data, index), capsys)
        problems.extend(_check_step(file.stem, index, step, code, out, err))
    assert served
    return problems
