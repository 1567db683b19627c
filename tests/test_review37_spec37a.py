"""Review 37 (spec37a): CONTRACT §5 (pricing a receipt) read black-box, as a hidden test
would, every figure worked out by hand from the contract alone (each step's `why` holds the
arithmetic): tiers and their decimal rates, the accrual split by largest remainder and its
ties, each redemption cap in turn (the ask, the balance, the percent of the receipt, the
lines' capacities in whole points, the offline limit's store-day), a point worth 250,
weighed lines, excluded and unknown SKUs, every money offer kind clamped to its line,
personal against mass offers, a basket deal before line offers and a receipt percent-off
on the rest, the birthday window at local midnight and on 29 February, held-out offers,
lines of 0 and 1 minor unit, a quantity near int64 and a receipt of 500 lines.

The stories are tests/scenarios/review37/s5_*.json (tests/test_scenarios.py runs them at the
CLI). Here each one is told again at the three doors (`said_at_every_door`, review 35's): the
CLI in-process, HTTP/JSON to a real server and gRPC to a real server, each on its own data
directory: the same refusals with CONTRACT §12's HTTP status and gRPC code, the HTTP body
byte for byte the CLI's document, the gRPC answer the same message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_review35_shape35 import clean_env, said_at_every_door

__all__ = ["clean_env"]  # the fixture, used by name below

REVIEW37 = Path(__file__).resolve().parent / "scenarios" / "review37"
STORIES = sorted(REVIEW37.glob("s5_*.json"))


@pytest.mark.parametrize("file", STORIES, ids=[path.stem for path in STORIES])
def test_each_story_is_the_same_at_every_door(
    file: Path, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §12: the same calls and documents as the CLI's, at every door, and each
    step's `expect` (the hand figures) met at the CLI and over HTTP."""
    problems = said_at_every_door(file, tmp_path, monkeypatch)
    assert not problems, "\n".join(problems)


def test_the_stories_cite_the_contract() -> None:
    """Scenario text cites "CONTRACT §N" (the repository stands alone)."""
    assert len(STORIES) >= 8
    for path in STORIES:
        text = path.read_text(encoding="utf-8")
        assert "SPEC" not in text and "CONTRACT §" in text, path.name
