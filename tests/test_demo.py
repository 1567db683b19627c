"""`tillpoint demo` plays the store's day and exits 0."""

from __future__ import annotations

from pathlib import Path

from tillpoint.agent.demo import play

from .conftest import CLI


def test_demo_plays_a_day(tmp_path: Path) -> None:
    lines: list[str] = []
    assert play(tmp_path, tills=2, out=lines.append) == 0
    text = "\n".join(lines)
    assert "FOUND: Анна" in text
    assert "held out for the control group" in text
    assert "card refused" in text and "check digit" in text
    assert "Demo finished" in text


def test_demo_command_and_help(cli: CLI) -> None:
    run = cli("demo", "--help")
    assert run.code == 0 and "--speed" in run.out and "--tills" in run.out
    run = cli("demo")
    assert run.code == 0, run.err
    assert "Demo finished" in run.out
