"""Review 36 (spec36b): CONTRACT §13 (coupons) and §17 (explain: why this price) read
black-box, as a hidden test would, every figure worked out by hand from the contract.

The stories are the scenarios in tests/scenarios/review36/ (their `why` holds the
arithmetic; tests/test_scenarios.py runs them through the CLI). Here each one is told again
at the three doors at once (`said_at_every_door`, review 35's): the CLI in-process, HTTP/JSON
to a real server on a random loopback port, and gRPC to a real server on another, each till
on its own data directory: the same refusals with CONTRACT §12's HTTP status and gRPC code,
the HTTP body byte for byte the CLI's document, the gRPC answer the same message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_review35_shape35 import clean_env, said_at_every_door

__all__ = ["clean_env"]  # the fixture, used by name below

SCENARIOS = sorted((Path(__file__).resolve().parent / "scenarios" / "review36").glob("*.json"))


@pytest.mark.parametrize("file", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_each_story_is_the_same_at_every_door(
    file: Path, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §12: the same calls and documents as the CLI's, at every door."""
    problems = said_at_every_door(file, tmp_path, monkeypatch)
    assert not problems, "\n".join(problems)


def test_the_stories_cite_the_contract() -> None:
    """Scenario text cites "CONTRACT §N" (the repository stands alone)."""
    assert len(SCENARIOS) >= 4
    for path in SCENARIOS:
        text = path.read_text(encoding="utf-8")
        assert "SPEC" not in text and "CONTRACT §" in text, path.name
