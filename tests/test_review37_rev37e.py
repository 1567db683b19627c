"""Review 37 (rev37e): this session's hold/release changes read again, adversarially
(CONTRACT §9, §11): a receipt's hub turns across the processes of one data directory
(`hub_turns.lock`), a call's lowest offline limit told the hub, and a step of the wall
clock moving the owed releases' times. Each test marked "failed before the fix" did; the
others pin what was checked and found right. Real parts: the reference hub on 127.0.0.1
with its own gRPC handlers, real SQLite files, `tillpoint` processes on one data
directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, receipt

from .conftest import CLI, enrolled_till
from .test_review35_left35 import ANNA
from .test_review37_left37 import EXE

# ---------------------------------------- 1. a Cancel beside another process's Hold


def _slow_grants(
    monkeypatch: pytest.MonkeyPatch, hub: LoopbackHub, seconds: float
) -> threading.Event:
    """The hub grants each redemption `seconds` after it was asked (within the till's
    deadline); the event is set when the first request reached it."""
    asked = threading.Event()
    authorise = HubServicer.AuthorizeRedemption

    def slow(self: Any, request: Any, context: Any) -> Any:
        asked.set()
        time.sleep(seconds)
        return authorise(self, request, context)

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", slow)
    hub.restart()
    return asked


@pytest.mark.parametrize("command", ["cancel", "confirm"])
def test_a_cancel_or_confirm_beside_another_processs_hold_waits_for_it(
    tmp_path: Path,
    hub: LoopbackHub,
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    procs: list[subprocess.Popen[bytes]],
    command: str,
) -> None:
    """CONTRACT §11 (Cancel releases a hold; Confirm commits exactly the held figures). A
    POS driving the till by its command line (one-shot commands, run locally: no `run`,
    or an HTTP interface with a token) sends `tillpoint hold`; the hub is slow and the
    POS gives up waiting and sends `tillpoint cancel` (or, the customer paying, `confirm`)
    of the same receiptId from another process. A Confirm or Cancel of a receipt whose
    Hold is still asking the hub waits for it (review 34, `HubTurns.hold_ended`) in one
    process only: across processes it answered "not held at this till" (exit 2), and the
    Hold stored a moment later kept the customer's 10 points reserved, here and at the
    hub, until it expired (or the paid sale went unrecorded). Failed before the fix."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    asked = _slow_grants(monkeypatch, hub, 2.0)
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "10000")
    body = tmp_path / "sale.json"
    body.write_text(json.dumps(receipt("r-1", ANNA, redeem=10)), encoding="utf-8")
    env = {**os.environ, "TILLPOINT_CLI_LOCAL": "1"}
    hold = subprocess.Popen(
        [EXE, "--data-dir", str(data), "hold", str(body), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(hold)
    assert asked.wait(30.0), "the hold never asked the hub"
    done = cli(command, "r-1", "--json")
    out, err = hold.communicate(timeout=30)
    assert hold.returncode == 0, err
    held = json.loads(out)
    assert (held["state"], held["mode"], held["redeemedPoints"]) == ("HELD", "ONLINE", 10)
    assert done.code == 0, done.err
    answer = json.loads(done.out)
    expected = "CANCELLED" if command == "cancel" else "CONFIRMED"
    assert (answer["state"], answer["redeemedPoints"]) == (expected, 10), answer
    if command == "cancel":  # released at the hub too
        assert hub.store.balance("c-1", datetime.now(UTC)).held == 0
