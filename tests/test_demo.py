"""`tillpoint demo` plays the store's day on loopback and exits 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.demo import play
from tillpoint.agent.demo_data import EXAMPLE_FILES
from tillpoint.printer.virtual_display import PtyPair

from .conftest import CLI, REPO


def test_demo_plays_a_whole_day(tmp_path: Path) -> None:
    lines: list[str] = []
    assert play(tmp_path, tills=2, out=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    for expected in (
        "FOUND: Анна",
        "(ONLINE)",
        "mode OFFLINE, 500 points spent",
        "held out (control group",
        "check digit is wrong",
        "outbox empty",
        "hub ledger 7 transactions = the tills' journals 7",
        "(offer m-bread-25)",
        # the afternoon (docs/CONTRACT.md §13–§17): a sorry bonus used once in the chain,
        # a printed one-time code scanned back, 3 for 2, a happy hour, expiring points, a trace
        "coupon SORRYANNA1: APPLIED (ONLINE)",
        "REJECTED ALREADY_USED",
        "a COUPON for p-c-0001-next-visit",
        "offer m-household-3for2",
        "offer m-fruit-happy-hour",
        "her display: Сгорят ",
        "m-fruit-happy-hour: OUTSIDE_WINDOW",
        "m-basket-1000: BELOW_MIN_TOTAL, ",
        "coupons used twice in the chain: 0",
        "the receipt printer prints",
        "printer OK\n",  # till 1 prints on the virtual printer
        "printer DISABLED",  # till 2 has none: the same word as status, gRPC and metrics
        "Demo finished",
    ):
        assert expected in text
    if PtyPair.available():
        assert "Анна, добрый день!" in text and "display" in text


def test_demo_help_explains_the_options(cli: CLI) -> None:
    run = cli("demo", "--help")
    assert run.code == 0
    for option in ("--speed", "--tills", "--keep-running"):
        assert option in run.out


@pytest.mark.slow
@pytest.mark.ci
def test_demo_command_with_three_tills(cli: CLI) -> None:
    run = cli("demo", "--tills", "3")
    assert run.code == 0, run.out + run.err
    assert "Demo finished" in run.out


def _load_and_sell(cli: CLI, folder: Path, hub_dir: Path) -> dict[str, Any]:
    """Every example file of `folder` used as the README does; the answers by file name."""
    answers: dict[str, Any] = {}
    run = cli("snapshot", "load", folder / "snapshot.json", "--json")
    assert run.code == 0, run.err
    for name in ORDER:
        command = "refund" if name == "refund.json" else "checkout"
        run = cli(command, folder / name, "--json")
        assert run.code == 0, f"{name}: {run.err}"
        answers[name] = run.json()
    run = cli("hub", "import", folder / "catalogue.json", "--publish", "--hub-dir", hub_dir)
    assert run.code == 0, run.err
    assert "published version 1" in run.out
    return answers


ORDER = [
    "receipt-redemption.json",
    "receipt-card.json",
    "receipt-phone.json",
    "receipt-unknown-card.json",
    "receipt-weighed.json",
    "refund.json",
]


def test_demo_export_writes_example_files_that_load(cli: CLI, tmp_path: Path) -> None:
    run = cli("demo", "--export", tmp_path / "exported")
    assert run.code == 0, run.err
    exported = tmp_path / "exported"
    assert sorted(p.name for p in exported.iterdir()) == sorted(EXAMPLE_FILES)
    answers = _load_and_sell(cli, exported, tmp_path / "hub")
    assert answers["receipt-card.json"]["card"]["status"] == "FOUND"
    assert answers["receipt-phone.json"]["card"]["firstName"] == "Борис"
    assert answers["receipt-unknown-card.json"]["card"]["status"] == "UNKNOWN"
    assert answers["receipt-weighed.json"]["lines"][0]["amountMinor"] == 24875  # 1.25 × 199
    assert answers["receipt-redemption.json"]["redeemedPoints"] > 0
    assert answers["refund.json"]["returnedPoints"] == 0  # the card receipt spent no points
    assert answers["refund.json"]["takenBackPoints"] > 0
    again = cli("demo", "--export", exported)  # overwrites its own files
    assert again.code == 0
    refused = cli("demo", "--export", exported / "snapshot.json")
    assert refused.code == 2 and "not a directory" in refused.err


def test_the_repository_examples_are_the_export_s_files_and_load(cli: CLI, tmp_path: Path) -> None:
    examples = REPO / "examples"
    assert sorted(p.name for p in examples.glob("*.json")) == sorted(EXAMPLE_FILES)
    answers = _load_and_sell(cli, examples, tmp_path / "hub")
    # the worked example of docs/CONTRACT.md §5, figure for figure
    worked = answers["receipt-redemption.json"]
    assert (worked["totalMinor"], worked["discountMinor"], worked["redeemedPoints"]) == (
        17980,
        2697,
        45,
    )
    assert (worked["payableMinor"], worked["earnedPoints"]) == (10783, 37)
    assert worked["balance"] == {"availablePoints": 1192, "pendingPoints": 0}
    assert answers["receipt-unknown-card.json"]["card"] == {"status": "UNKNOWN"}
    assert answers["receipt-weighed.json"]["lines"][0]["amountMinor"] == 46029
