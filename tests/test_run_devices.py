"""`tillpoint run` with its devices: the coupon reaches a real TCP printer after a checkout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.codes import offer_code
from tillpoint.printer.virtual import VirtualPrinter
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import free_port, receipt, snapshot

OFFER = {
    "id": "o-print",
    "campaignId": "camp-p",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000024"],
    "value": "20",
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2099-12-31T23:59:59+03:00",
    "rank": 1,
    "printable": True,
    "printText": "−20% на хлеб",
}


def test_coupon_prints_through_run_and_status_shows_the_printer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot(offers=[OFFER]))
    with VirtualPrinter() as printer:
        port = free_port()
        conf = tmp_path / "t.toml"
        conf.write_text(
            f'device_id = "till-1"\n[server]\nlisten = "127.0.0.1:{port}"\n'
            "[metrics]\nenabled = false\n"
            '[http]\nlisten = "127.0.0.1:0"\n'  # not the default port: another agent may have it
            f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {printer.port}\n'
            "retry_base_s = 0.1\n"
        )
        exe = Path(sys.executable).parent / "tillpoint"
        env = {k: v for k, v in os.environ.items() if k != "TILLPOINT_DEVICE_ID"}
        proc = subprocess.Popen([exe, "--config", conf, "--data-dir", data, "run"], env=env)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                stub = pb_grpc.PosAgentStub(channel)
                result = stub.Checkout(json_format.ParseDict(receipt(), pb.Receipt()), timeout=10)
                assert list(result.printed_offers) == ["o-print"]
                docs = printer.wait_for(1, timeout_s=15)
                assert "20% на хлеб" in docs[0].text
                assert docs[0].codes == ["TP1-o-print"]
                # The worker marks the job DONE once the printer confirms it (GS r).
                deadline = time.monotonic() + 15
                while True:
                    status = stub.Status(pb.StatusRequest(), timeout=10)
                    if status.print_queue_depth == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert status.printer_state == "OK"
                assert status.print_queue_depth == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def test_an_offer_id_outside_ascii_still_prints_and_sells(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot(offers=[{**OFFER, "id": "предложение-1"}]))
    result = agent.checkout(receipt_from_json(receipt()))
    assert result.to_json()["printedOffers"] == ["предложение-1"]
    status = agent.status()
    assert status.outbox_depth == 1 and status.print_queue_depth == 1
    (payload,) = agent._ledger.execute("SELECT payload FROM print_jobs").fetchone()
    # printed with its id percent-encoded in the scan code, never refused (it failed the
    # coupon job before 2026-12-02: test_review16)
    assert json.loads(payload)["offers"][0]["code"] == offer_code("предложение-1")
    agent.close()
