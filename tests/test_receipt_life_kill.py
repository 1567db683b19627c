"""A till crash between Hold and Confirm (the contract §11): a real `tillpoint run`, SIGKILLed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import free_port, receipt, snapshot

TIMEOUT = 10


@contextmanager
def running(data: Path, conf: Path, port: int) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    exe = Path(sys.executable).parent / "tillpoint"
    env = {k: v for k, v in os.environ.items() if k != "TILLPOINT_DEVICE_ID"}
    proc = subprocess.Popen([exe, "--config", conf, "--data-dir", data, "run"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            yield proc, pb_grpc.PosAgentStub(channel)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow  # two starts of `tillpoint run`: about 10 s
def test_a_hold_survives_sigkill_and_confirm_commits_it_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seed = Agent(data, "till-1")
    seed.load_snapshot(snapshot())
    seed.close()
    port = free_port()
    conf = tmp_path / "t.toml"
    conf.write_text(
        f'device_id = "till-1"\n[server]\nlisten = "127.0.0.1:{port}"\n[metrics]\nenabled = false\n'
        '[http]\nlisten = "127.0.0.1:0"\n'  # not the default port: another agent may have it
    )
    held_request = json_format.ParseDict(receipt("r-held", redeemPoints=50), pb.Receipt())
    sold_request = json_format.ParseDict(receipt("r-sold"), pb.Receipt())
    with running(data, conf, port) as (proc, stub):
        sold = stub.Checkout(sold_request, timeout=TIMEOUT)
        held = stub.Hold(held_request, timeout=TIMEOUT)
        assert held.state == pb.HELD and held.redeemed_points == 50
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL

    with running(data, conf, port) as (_, stub):
        assert stub.Hold(held_request, timeout=TIMEOUT) == held  # still held, same figures
        assert stub.Checkout(sold_request, timeout=TIMEOUT) == sold  # committed once
        done = stub.Confirm(pb.ConfirmRequest(receipt_id="r-held"), timeout=TIMEOUT)
        assert done.state == pb.CONFIRMED
        assert (done.redeemed_points, done.earned_points, done.payable_minor) == (
            held.redeemed_points,
            held.earned_points,
            held.payable_minor,
        )
        assert stub.Confirm(pb.ConfirmRequest(receipt_id="r-held"), timeout=TIMEOUT) == done
        status = stub.Status(pb.StatusRequest(), timeout=TIMEOUT)
        assert (status.last_seq, status.outbox_depth) == (2, 2)

    conn = sqlite3.connect(data / "ledger.db")
    try:
        journal = conn.execute("SELECT seq, ref_id FROM journal ORDER BY seq").fetchall()
        assert journal == [(1, "r-sold"), (2, "r-held")]
        spent = conn.execute(
            "SELECT sum(points) FROM points WHERE kind = 'spend' AND receipt_id = 'r-held'"
        ).fetchone()
        assert spent == (-50,)
    finally:
        conn.close()
