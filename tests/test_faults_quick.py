"""The fault-injection harness itself works (bench/faults.py), at a few faults each.

`make faults-quick` runs every scenario at CI size; these keep the cheap ones in the
default suite so a change that breaks the harness or a promise is seen at once.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench import faults


def test_mutated_snapshots_are_all_refused(tmp_path: Path) -> None:
    outcome = faults.scenario_snapshots(tmp_path, 60, random.Random(1))
    assert outcome.ok, outcome.broken
    assert outcome.injected == 60 and outcome.counts["cache unchanged"] == 1


def test_full_disk_refuses_cleanly_and_recovers(tmp_path: Path) -> None:
    outcome = faults.scenario_full_disk(tmp_path, random.Random(1))
    assert outcome.ok, outcome.broken
    assert outcome.counts["nothing partial"] == 1
    assert outcome.counts["checkout after space returns"] == 1


def test_malformed_input_is_refused_over_grpc_and_the_cli(tmp_path: Path) -> None:
    outcome = faults.scenario_malformed(tmp_path, 80, 4, random.Random(1))
    assert outcome.ok, outcome.broken
    assert outcome.counts["CLI refused: exit 2, one line"] == 4


def test_the_hub_killed_between_commit_and_answer_duplicates_nothing(tmp_path: Path) -> None:
    outcome = faults.scenario_hub_kill(tmp_path, 2, random.Random(1))
    assert outcome.ok, outcome.broken
    assert outcome.counts["duplicates"] == 0


def test_chaos_proxy_heals_and_ledgers_agree(tmp_path: Path) -> None:
    outcome = faults.scenario_proxy(tmp_path, 6, random.Random(1))
    assert outcome.ok, outcome.broken


def test_one_code_on_two_tills_is_one_conflict_after_an_outage_and_none_online(
    tmp_path: Path,
) -> None:
    outcome = faults.scenario_coupons(tmp_path, 4, random.Random(1))
    assert outcome.ok, outcome.broken
    assert outcome.counts["codes used on both tills offline"] == 2
    assert outcome.counts["conflicts at the hub"] >= 2


def test_table_lists_faults_and_outcomes() -> None:
    o = faults.Outcome("x", injected=3)
    o.counts["refused"] = 3
    assert "refused: 3" in faults.table([o]) and " ok " in faults.table([o])


@pytest.mark.slow
def test_after_a_hub_outage_the_tills_recover_with_the_shipped_settings(tmp_path: Path) -> None:
    outcome = faults.scenario_outage(tmp_path, 3, random.Random(1))
    assert outcome.ok, outcome.broken
    assert outcome.counts["seconds to drain after the hub is back"] <= faults.OUTAGE_DRAIN_S
