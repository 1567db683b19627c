"""Review 37 (rev37a): session 36's agent-side changes read again, adversarially
(CONTRACT §7, §10, §11). Each test marked "failed before the fix" did; the others pin
what was checked and found right. Real parts: `tillpoint` one-shot commands as
processes, the reference hub on 127.0.0.1 with its own gRPC handlers, real SQLite files.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from .test_review35_left35 import owed_releases
from .test_review36_left36 import EXE, GatedReleases, owed_till
from .test_review36_left36 import gated_releases as gated_releases  # a fixture

# ---------------------------------------- 1. a one-shot command stopped while it pays what it owes


def _answer_of(proc: subprocess.Popen[bytes]) -> tuple[str, dict[str, object]]:
    """The one JSON document a `--json` command wrote, read line by line until it parses."""
    assert proc.stdout is not None
    text = ""
    while True:
        line = proc.stdout.readline().decode()
        assert line, "the process ended before its answer"
        text += line
        try:
            return text, json.loads(text)
        except json.JSONDecodeError:
            continue


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_one_shot_stopped_while_it_sends_what_it_owes_exits_as_its_answer_said(
    tmp_path: Path, gated_releases: GatedReleases, sig: signal.Signals
) -> None:
    """CONTRACT §10 (exit codes: 0 for a call answered), §11 (the releases owed are sent
    after a one-shot command's answer, never delaying it). `tillpoint confirm` answered
    CONFIRMED (the sale is committed) and then sends the releases owed from the hub's
    outage; a POS (or its supervisor's timeout, or an operator's Ctrl-C) stops it while
    the hub works on one. The sale's answer stands, so its exit code must too: before the
    fix the process died of the SIGTERM (-15, a shell's 143) or exited 130 after a
    KeyboardInterrupt, and a POS that reads the exit code first took a committed sale for
    a failed one (sold again under a new receiptId: twice). What was not released stays
    owed for the next command. Failed before the fix."""
    gated_releases.gate = threading.Event()
    hub, data, conf, env = owed_till(tmp_path, 3, redeem_timeout_ms=5000)
    try:
        from tillpoint.agent.results import receipt_from_json
        from tillpoint.agent.service import Agent

        till = Agent(data, "till-1")  # held while the hub was away (OFFLINE), in-process
        try:
            sale = json.loads((tmp_path / "sale.json").read_text())
            assert till.hold(receipt_from_json(sale)).state == "HELD"
        finally:
            till.close()
        proc = subprocess.Popen(
            [EXE, "--config", conf, "confirm", "sale-1", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            text, doc = _answer_of(proc)
            assert doc["state"] == "CONFIRMED"
            # the first owed release is in the hub's handler, the till waiting for it
            for _ in range(200):
                if gated_releases.started:
                    break
                gated_releases.gate.wait(0.05)
            assert gated_releases.started, "no owed release was sent"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            gated_releases.gate.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (proc.returncode, err)
        assert out == b"", "the answer is the one document, nothing after it"
        assert "internal error" not in err.decode()
        assert json.loads(text)["receiptId"] == "sale-1"
        assert owed_releases(data) >= 2  # those not sent stay owed, for the next command
    finally:
        hub.stop()
