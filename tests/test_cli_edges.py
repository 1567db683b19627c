"""What a person and a POS script see: reasons, queued coupons, one status everywhere."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from tillpoint.agent.proto_json import message_json
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, receipt, snapshot
from .test_run_devices import OFFER, free_port


def test_identify_gives_the_reason_of_invalid_and_blocked(cli: CLI) -> None:
    cli("snapshot", "load", snapshot())
    invalid = cli("identify", "2770000000018", "--json").json()
    assert invalid == {"status": "INVALID", "reason": "the card number's check digit is wrong"}
    blocked = cli("identify", "2770000000031", "--json").json()
    assert blocked["status"] == "BLOCKED" and blocked["reason"] == "the card is blocked"
    assert cli("identify", "2770000000031").out.strip() == "BLOCKED (the card is blocked)"
    assert cli("identify", "12ab").out.startswith("INVALID (a card number or phone")
    pb_card = pb.CardOutcome()
    from google.protobuf import json_format

    json_format.ParseDict(blocked, pb_card)  # the proto has the field
    assert pb_card.reason == "the card is blocked"


def test_checkout_says_the_coupon_is_queued_not_printed(cli: CLI) -> None:
    cli("snapshot", "load", snapshot(offers=[OFFER]))
    out = cli("checkout", receipt()).out
    # no coupon printer configured (the default): picked for the cooldown, no job queued
    assert "offers picked, not printed (no coupon printer configured): o-print" in out
    assert "queued" not in out and "offers printed" not in out


def test_print_preview_of_a_result_without_offers_prints_nothing(cli: CLI) -> None:
    cli("snapshot", "load", snapshot(offers=[OFFER]))
    result = cli("checkout", receipt(card="2770000000024"), "--json").json()
    assert result["printedOffers"] == []
    offers = snapshot(offers=[OFFER])
    run = cli("print", "preview", result, "--offers", offers)
    assert run.code == 0 and run.out.startswith("nothing to print") and "20%" not in run.out
    assert cli("print", "preview", result, "--offers", offers, "--json").json()["text"] == ""
    del result["printedOffers"]  # proto3 JSON may leave the empty list out
    run = cli("print", "preview", result, "--offers", offers)
    assert run.code == 0 and run.out.startswith("nothing to print")


def test_print_queue_json_is_camel_case(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    # a till with a coupon printer (with none, no job is queued)
    monkeypatch.setenv("TILLPOINT_PRINTER", '{"kind": "network", "host": "127.0.0.1"}')
    cli("snapshot", "load", snapshot(offers=[OFFER]))
    cli("checkout", receipt())
    [job] = cli("print", "queue", "--json").json()["jobs"]
    assert job["receiptId"] == "r1" and job["offers"] == ["o-print"]
    assert set(job) == {
        "id",
        "receiptId",
        "createdAt",
        "state",
        "attempts",
        "nextAttemptAt",
        "lastError",
        "printedAt",
        "offers",
    }


def test_status_json_is_the_proto_status_with_every_field(cli: CLI) -> None:
    cli("snapshot", "load", snapshot())
    status = cli("status", "--json").json()
    names = [f.json_name for f in pb.Status.DESCRIPTOR.fields]
    assert list(status) == names  # every field, in the proto's order
    assert isinstance(status["cacheVersion"], int) and status["printerState"] == "DISABLED"
    assert status["displayState"] == "DISABLED" and status["scannerState"] == "DISABLED"


def test_cli_grpc_and_metrics_agree_on_status_and_printer_state(cli: CLI, tmp_path: Path) -> None:
    """A till without a printer: DISABLED in `status --json`, gRPC Status and the metrics."""
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    port, metrics_port = free_port(), free_port()
    conf = tmp_path / "t.toml"
    conf.write_text(
        f'device_id = "till-1"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n'  # not the default port: another agent may have it
    )
    exe = Path(sys.executable).parent / "tillpoint"
    env = {k: v for k, v in os.environ.items() if k != "TILLPOINT_DEVICE_ID"}
    proc = subprocess.Popen([exe, "--config", conf, "--data-dir", data, "run"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            served = message_json(
                pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as r:
                    metrics = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        printed = cli("--config", conf, "status", "--json").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert served == printed
    assert served["printerState"] == "DISABLED"
    assert 'tillpoint_printer_ok{state="DISABLED"} 0' in metrics
    assert json.dumps(served)  # plain JSON types only


def test_version_names_the_contract() -> None:
    exe = Path(sys.executable).parent / "tillpoint"
    run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    assert re.fullmatch(
        r"tillpoint \S+ \(contract tillpoint\.v1, \d{4}-\d{2}, sections 1-\d+\)\n", run.stdout
    )
    # §10: with --json, one JSON document
    run = subprocess.run([exe, "--version", "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    doc = json.loads(run.stdout)
    assert set(doc) == {"version", "contract"} and doc["contract"].startswith("tillpoint.v1")


def test_help_imports_nothing_heavy() -> None:
    """`--help` builds every command's parser without gRPC, pydantic, cryptography, sqlite-utils."""
    code = (
        "import sys, contextlib, io\n"
        "from tillpoint.agent.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    for argv in (['--help'], ['hub', '--help'], ['print', 'queue', '--help']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = ('grpc', 'pydantic', 'pydantic_settings', 'cryptography', 'sqlite_utils',\n"
        "         'google.protobuf', 'escpos', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print('usage: tillpoint' in out.getvalue())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.split("\n")[:2] == ["[]", "True"], run.stdout + run.stderr


def test_snapshot_load_refuses_what_is_not_a_json_object_before_reading_it(
    cli: CLI, tmp_path: Path
) -> None:
    """`snapshot load /dev/zero` read zeros until memory ran out (1 GB a second); a file
    that cannot be a snapshot is refused on its first bytes, and the cache kept."""
    assert cli("snapshot", "load", snapshot()).code == 0
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)))
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    for name in ("/dev/zero", str(junk), str(array)):
        run = cli("snapshot", "load", name)
        assert run.code == 2 and "not a snapshot" in run.err, (name, run.err)
        assert run.err.count("\n") == 1
    assert cli("status", "--json").json()["cacheVersion"] == 1
    # A byte order mark and blank lines before the document are still a document.
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf \n\n" + json.dumps(snapshot(version=2)).encode())
    assert cli("snapshot", "load", str(bom)).code == 0
    assert cli("status", "--json").json()["cacheVersion"] == 2


def test_snapshot_load_from_stdin_refuses_what_is_not_a_json_object(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cat /dev/zero | tillpoint snapshot load -` alike: refused on its first bytes."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(open("/dev/zero", "rb")))  # noqa: SIM115
    run = cli("snapshot", "load", "-")
    assert run.code == 2 and "-: not a snapshot" in run.err, run.err
    body = json.dumps(snapshot()).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    assert cli("snapshot", "load", "-").code == 0
