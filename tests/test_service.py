"""`tillpoint run` as a service: config, lock, logs, metrics, systemd notify, reset."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent import logs
from tillpoint.agent.config import load
from tillpoint.agent.errors import InputError, Refused
from tillpoint.agent.lock import DataDirLock
from tillpoint.agent.metrics import Registry, serve
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, REPO, free_port, receipt, snapshot


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "t1"\n[hub]\nredeem_timeout_ms = -5\n')
    with pytest.raises(InputError, match=r"hub\.redeem_timeout_ms"):
        load(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('devise_id = "t1"\n')
    with pytest.raises(InputError, match="devise_id"):
        load(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("device_id = \n")
    with pytest.raises(InputError, match=r"broken\.toml"):
        load(broken)


def test_environment_beats_file_and_flags_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'device_id = "from-file"\ndata_dir = "{tmp_path / "file"}"\n')
    assert load(conf).device_id == "from-file"
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "from-env")
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "250")
    settings = load(conf, data_dir=tmp_path / "flag")
    assert settings.device_id == "from-env"
    assert settings.hub.redeem_timeout_ms == 250
    assert settings.data_dir == tmp_path / "flag"


def test_data_dir_flag_beats_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILLPOINT_DATA_DIR", str(tmp_path / "env"))
    assert load().data_dir == tmp_path / "env"
    assert load(data_dir=tmp_path / "flag").data_dir == tmp_path / "flag"


def test_example_config_is_valid_and_config_check(cli: CLI) -> None:
    example = REPO / "packaging" / "tillpoint.example.toml"
    run = cli("--config", str(example), "config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["server"]["listen"].startswith("127.0.0.1:")
    assert run.json()["printer"]["profile"] == "generic-80mm"


def test_config_check_validates_the_device_tables(cli: CLI, tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('[printer]\nkind = "network"\n')
    run = cli("--config", str(conf), "config", "check")
    assert run.code == 2 and "host" in run.err and "printer" in run.err


def test_one_agent_per_data_dir(tmp_path: Path) -> None:
    with DataDirLock(tmp_path), pytest.raises(Refused, match="another tillpoint"):
        DataDirLock(tmp_path).acquire()
    DataDirLock(tmp_path).acquire().release()  # free again


def test_masking_hides_cards_and_phones() -> None:
    text = "card 2770000000017 phone +79161234567 alt 8 916 123-45-67 and 9161234567"
    masked = logs.mask(text)
    for secret in ("2770000000017", "+79161234567", "916 123", "9161234567"):
        assert secret not in masked
    assert "*********0017" in masked and "4567" in masked


def test_json_log_lines_are_masked(capfd: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "json")
    logging.getLogger("tillpoint.test").info("identified %s", "2770000000017")
    line = capfd.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["msg"] == "identified *********0017" and entry["level"] == "info"
    logging.getLogger().handlers.clear()


def test_json_log_lines_carry_the_trace_masked(capfd: pytest.CaptureFixture[str]) -> None:
    """A bug's log line (an HTTP 500, the contract §12) has its trace, card numbers masked."""
    logs.setup("INFO", "json")
    try:
        raise KeyError("card 2770000000017")
    except KeyError:
        logging.getLogger("tillpoint.test").exception("HTTP POST /v1/checkout failed")
    entry = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
    assert entry["error"] == "KeyError('card *********0017')"
    assert entry["trace"].startswith("Traceback (most recent call last):")
    assert "test_json_log_lines_carry_the_trace_masked" in entry["trace"]
    assert "2770000000017" not in entry["trace"]
    logging.getLogger().handlers.clear()


def test_metrics_endpoint(tmp_path: Path) -> None:
    from tillpoint.agent.server import register_gauges

    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    registry = Registry()
    register_gauges(registry, agent)
    registry.checkout_seconds.observe(0.003)
    server, port = serve(registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert 'tillpoint_checkout_seconds_bucket{le="0.005"} 1' in body
        assert "tillpoint_snapshot_version 1" in body
        assert "tillpoint_outbox_depth 0" in body
        assert 'tillpoint_printer_ok{state="DISABLED"} 0' in body  # no printer configured
        agent.device_kinds = {"printer": "network"}
        time.sleep(1.1)  # a scrape reads the status at most once a second
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            # configured, and no print worker in this process to ask: not OK (session 16)
            assert 'tillpoint_printer_ok{state="UNKNOWN"} 0' in r.read().decode()
        assert "tillpoint_hub_online 0" in body and "tillpoint_sync_error 0" in body
    finally:
        server.shutdown()
        agent.close()


def test_reset_is_refused_while_the_outbox_holds_transactions(cli: CLI) -> None:
    cli("snapshot", "load", snapshot())
    assert cli("checkout", receipt()).code == 0
    run = cli("reset")
    assert run.code == 2 and "have not reached the hub" in run.err
    assert cli("status", "--json").json()["outboxDepth"] == 1


def test_reset_when_everything_was_sent(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    agent.reset()
    assert agent.status().cache_version == 0
    agent.close()


def test_cache_holds_no_phone_numbers(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(snapshot())
    # every file of the cache: the generation cache.db points to, its -wal and -shm (the
    # plain cache.db's -wal this read is gone since review 32: the first snapshot removes it)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cache*") if p.is_file())
    assert b"9161234567" not in raw and b"916123" not in raw
    assert agent.identify("89161234567").status == "FOUND"
    assert oct((tmp_path / "phone.key").stat().st_mode & 0o777) == "0o600"
    agent.close()


def test_run_serves_notifies_systemd_and_stops_gracefully(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    port, metrics_port = free_port(), free_port()
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(
        f'device_id = "till-1"\ndata_dir = "{data}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n'  # not the default port: another agent may have it
        '[log]\nformat = "json"\n'
    )
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    exe = Path(sys.executable).parent / "tillpoint"
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="400000")
    env.pop("TILLPOINT_DEVICE_ID", None)
    proc = subprocess.Popen(
        [exe, "--config", conf, "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        messages = [notify.recv(100).decode()]
        assert messages == ["READY=1"]
        assert notify.recv(100).decode() == "WATCHDOG=1"
        second = subprocess.run(
            [exe, "--config", conf, "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 2 and "another tillpoint" in second.stderr
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            result = stub.Checkout(json_format.ParseDict(receipt(), pb.Receipt()), timeout=10)
            assert result.card.status == pb.FOUND
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert "tillpoint_checkout_seconds_count 1" in r.read().decode()
        # SIGHUP (a logrotate script, "HUP to reload") ended the process with no drain and
        # systemd, counting that a clean exit, did not start it again: now it is ignored.
        proc.send_signal(signal.SIGHUP)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            assert stub.Status(pb.StatusRequest(), timeout=10).device_id == "till-1"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        _, err = proc.communicate(timeout=5)
        entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any("stopped" in e["msg"] for e in entries)
        assert any(e["msg"].startswith("SIGHUP ignored") for e in entries)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the lock is free again
        try:
            DataDirLock(data).acquire().release()
            break
        except Refused:
            time.sleep(0.1)
    else:
        pytest.fail("lock not released")
