"""The composition root (agent/app.py): the process is assembled in one place, and what it
is does not depend on which modules happened to be imported first."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import REPO, receipt, snapshot

STATUS_KEYS = """
import json, sys
from pathlib import Path
from tillpoint.agent import app
from tillpoint.agent.config import Settings

def keys():
    agent = app.cli_agent(Settings(device_id="till-1", data_dir=Path(sys.argv[1])))
    try:
        return sorted(agent.status().to_json())
    finally:
        agent.close()

before = keys()
from tillpoint.agent.cli import build_parser
build_parser()
import tillpoint.sync.cli, tillpoint.printer.cli  # noqa: E401
print(json.dumps({"before": before, "after": keys()}))
"""


def test_status_is_the_same_whatever_was_imported(tmp_path: Path) -> None:
    """Once, `Agent.status()` had 9 keys before `build_parser()` and 18 after it."""
    out = subprocess.run(
        [sys.executable, "-c", STATUS_KEYS, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    ).stdout
    got = json.loads(out)
    assert got["before"] == got["after"]
    assert {"lastPullAt", "enrolled", "printerState", "outboxDepth"} <= set(got["before"])


def test_no_registry_is_filled_at_import_time() -> None:
    for path in [*(REPO / "agent").glob("*.py"), *(REPO / "sync").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for name in ("background_starters", "status_providers", "PLUGIN_MODULES"):
            assert name not in text, (path.name, name)
    assert not (REPO / "agent" / "hooks.py").exists()


class Display:
    """A device notifier of our own (agent/service.py DeviceNotifier)."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def show(self, lines: Sequence[str]) -> None:
        self.shown.append("show")

    def after_quote(self, result: Mapping[str, Any]) -> None:
        self.shown.append("quote")

    def after_checkout(self, result: Mapping[str, Any]) -> None:
        self.shown.append("checkout")

    def status(self) -> Mapping[str, Any]:
        return {name: {"state": "OK"} for name in ("printer", "display", "scanner")}


def test_collaborators_are_given_to_the_constructor(tmp_path: Path) -> None:
    display = Display()
    agent = Agent(
        tmp_path / "data",
        "till-1",
        devices=display,
        status_sources=(lambda conn: {"extra": 1},),
        device_kinds={"display": "serial"},
    )
    try:
        agent.load_snapshot(snapshot())
        agent.quote(receipt_from_json(receipt("r1")))
        agent.checkout(receipt_from_json(receipt("r1")))
        status = agent.status()
    finally:
        agent.close()
    assert display.shown == ["quote", "checkout"]
    assert status.to_json()["extra"] == 1 and status.display_state == "OK"


def test_sync_now_refuses_an_enrolment_for_another_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sync now` applies `run`'s rule: the enrolment must be this till's device."""
    hub_dir, bundle, till = tmp_path / "hub", tmp_path / "b.json", tmp_path / "till"
    enroll = ["hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle)]
    assert main(["hub", "init", "--hub-dir", str(hub_dir)]) == 0
    assert main([*enroll, "--address", "127.0.0.1:9"]) == 0
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    assert main(["sync", "install", str(bundle), "--data-dir", str(till)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-2")
    code = main(["sync", "now", "--data-dir", str(till)])
    err = capsys.readouterr().err
    assert code == 2
    assert "the enrolment is for device 'till-1' but this till runs as 'till-2'" in err
