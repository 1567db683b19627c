"""`tillpoint demo` plays the store's day on loopback and exits 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent.demo import play
from tillpoint.printer.virtual_display import PtyPair

from .conftest import CLI


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
def test_demo_command_with_three_tills(cli: CLI) -> None:
    run = cli("demo", "--tills", "3")
    assert run.code == 0, run.out + run.err
    assert "Demo finished" in run.out
