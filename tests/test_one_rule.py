"""Each rule is written once: the error → exit code / gRPC / HTTP table, the enrolled
till's signed-only rule, the available/pending arithmetic."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tillpoint.agent import errors
from tillpoint.agent.cli import main
from tillpoint.agent.expiry import Tally, utc_text

from .conftest import REPO, snapshot
from .test_snapshot_stream import to_jsonl

ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.TillpointError)
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_one_answer_at_every_edge(cls: type[errors.TillpointError]) -> None:
    edge = errors.edge_of(cls("what is wrong"))
    assert edge.exit_code in (1, 2)
    assert edge.code in errors.HTTP_STATUS
    assert edge.http_status == errors.HTTP_STATUS[edge.code]
    assert edge.message == "what is wrong"
    # The forwarded CLI reads the agent's answer back to the same exit code.
    assert errors.exit_code_of(edge.code) == edge.exit_code


def test_the_edges_keep_no_table_of_their_own() -> None:
    for name in ("cli.py", "server.py", "http_api.py"):
        text = (REPO / "agent" / name).read_text(encoding="utf-8")
        assert "HTTP_STATUS = {" not in text, name
        assert "exc.exit_code" not in text and "exc.grpc_code" not in text, name
        assert "edge_of(exc)" in text, name
    forward = (REPO / "agent" / "forward.py").read_text(encoding="utf-8")
    assert "exit_code_of(" in forward and '"INVALID_ARGUMENT": 2' not in forward


def test_an_enrolled_till_refuses_any_plain_snapshot_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_dir, bundle, till = tmp_path / "hub", tmp_path / "b.json", tmp_path / "till"
    assert main(["hub", "init", "--hub-dir", str(hub_dir)]) == 0
    assert main(["hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle)]) == 0
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    assert main(["sync", "install", str(bundle), "--data-dir", str(till)]) == 0
    document, lines = tmp_path / "s.json", tmp_path / "s.jsonl"
    document.write_text(json.dumps(snapshot()), encoding="utf-8")
    lines.write_text(to_jsonl(snapshot()), encoding="utf-8")
    capsys.readouterr()
    said = []
    for path in (document, lines):
        assert main(["snapshot", "load", str(path), "--data-dir", str(till)]) == 2
        said.append(capsys.readouterr().err)
    assert said[0] == said[1]
    assert "accepts only signed snapshots" in said[0]


def test_available_and_pending_by_one_rule() -> None:
    at = datetime.fromisoformat("2026-11-23T10:00:00+03:00")
    tally = Tally(at, 100)
    tally.add("spend", -30, None)  # at once
    tally.add("earn", 5, at)  # from its activation time
    tally.add("earn", 7, utc_text(at - timedelta(microseconds=1)))  # as stored text
    tally.add("earn", 11, at + timedelta(seconds=1))
    tally.add("earn", 13, utc_text(at + timedelta(days=7)))
    tally.add("earn", 17, None)  # no activation time: never available
    assert (tally.available, tally.pending) == (82, 41)
    assert Tally(at).active("earn", utc_text(at)) and Tally(at).active("earn", at)
