"""A receipt sent again with `explain` is the same receipt (the contract §11, §17): the
trace changes no figure, so asking for it is no other body."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def test_a_checkout_sent_again_with_explain_returns_the_stored_result(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(_load("snapshot.json"))
        receipt = _load("receipt-card.json")
        first = agent.checkout(receipt_from_json(receipt))
        again = agent.checkout(receipt_from_json({**receipt, "explain": True}))
        # the stored result, no conflict, nothing counted twice; with the trace asked for
        # (priced again without its own commit, §17), which changes no figure
        answered = again.to_json()
        assert "trace" in answered and "trace" not in first.to_json()
        del answered["trace"]
        assert answered == first.to_json()
        assert agent.status().last_seq == first.seq
        held = agent.hold(receipt_from_json({**receipt, "receiptId": "h-1", "explain": True}))
        assert agent.hold(receipt_from_json({**receipt, "receiptId": "h-1"})) == held
    finally:
        agent.close()


def test_a_receipt_with_no_lines_is_refused_in_plain_words(tmp_path: Path) -> None:
    receipt = {**_load("receipt-card.json"), "lines": []}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(receipt), encoding="utf-8")
    command = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(tmp_path / "t")]
    done = subprocess.run(
        [*command, "quote", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "tillpoint: receipt: lines must not be empty"
