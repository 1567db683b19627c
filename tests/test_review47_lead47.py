"""Session 47 (lead): what `main(argv)` hands back to a caller's process after a `run`
that served.

flake46 handed back the root logger and the stop signals; a `run` that got as far as
serving also settles the cyclic collector for its own life (`app.settle_collector`:
every object of the process frozen, the young threshold 10,000). Left so, a program that
embeds the CLI (a wrapper, a bench, a test worker) never collected any object it had
made before the `run` again. A real process whose program is `main(argv)`, serving on
real ports until SIGTERM, then printing its collector's state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .test_review46_review46 import till_config

PROGRAM = """
import gc, json, sys
from tillpoint.agent.cli import main
gc.set_threshold(700, 10, 10)
before = [gc.get_threshold(), gc.get_freeze_count()]
code = main(sys.argv[1:])
print(json.dumps({"code": code, "before": before,
                  "after": [gc.get_threshold(), gc.get_freeze_count()]}))
"""


def collector_after_a_run(tmp_path: Path, program: str) -> dict[str, Any]:
    """`program` (a Python program calling `main(argv)` that prints its collector's state
    as JSON last) run with `--config … run` for a till of its own, asked for its Status
    over gRPC once it serves, stopped by SIGTERM; what it printed."""
    conf, port = till_config(tmp_path)
    env = dict(os.environ)
    env.pop("TILLPOINT_DEVICE_ID", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", program, "--config", str(conf), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.PosAgentStub(channel)
            assert stub.Status(pb.StatusRequest(), timeout=20).device_id == "till-1"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-3000:]
    state: dict[str, Any] = json.loads(out.splitlines()[-1])
    assert state["code"] == 0, err[-2000:]
    return state


@pytest.mark.timeout(120)
def test_a_run_under_main_argv_hands_the_collector_back(tmp_path: Path) -> None:
    state = collector_after_a_run(tmp_path, PROGRAM)
    assert state["after"] == state["before"] == [[700, 10, 10], 0], state


def test_an_ingests_lock_keys_are_every_key_it_may_settle() -> None:
    """DECISIONS "Session 47 (lead)": an ingest locks the customers of the holds of every
    key it may settle before it reads anything (pg47's order). A refund found booked
    already (a DUPLICATE) settles its sale's receipt's holds too (`_booked_before`), so
    its sale's receipt is among the keys, as a sale's own receipt and every seq are; an
    id PostgreSQL cannot store is not (review47)."""
    from dataclasses import replace

    from tillpoint.sync.hub_rules import _settle_keys

    from .test_hub_claim import tx

    sale = replace(tx("till-a", 1, "c-1", 0), request_json='{"receiptId": "r1"}')
    refund = replace(
        tx("till-a", 2, "c-1", 0),
        kind="REFUND",
        request_json='{"refundId": "f1", "receiptId": "r0"}',
    )
    issued = replace(tx("till-a", 3, "", 0), kind="COUPON_ISSUED", request_json="{}")
    unstorable = replace(tx("till-a", 4, "c-1", 0), request_json='{"receiptId": "r\\u0000"}')
    keys = _settle_keys([sale, refund, issued, unstorable])
    assert keys == ["r0", "r1", "seq:1", "seq:2", "seq:3", "seq:4"]
