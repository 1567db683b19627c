"""What a support engineer sees when a till's storage, configuration or printer goes wrong
(found by an operator's audit): a readable line, the status and the metrics that tell the
truth, never "internal error" for something an administrator can mend."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import config
from tillpoint.agent.cli import main
from tillpoint.agent.errors import InputError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.lock import DataDirLock
from tillpoint.agent.metrics import Registry, serve
from tillpoint.agent.server import register_gauges
from tillpoint.agent.service import Agent
from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
from tillpoint.printer.service import Devices

from .conftest import CLI, free_port, receipt, snapshot
from .conftest import post_to as _post


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def test_a_full_disk_is_logged_shown_in_status_and_counted_until_a_sale_is_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ledger that cannot grow (SQLite's own "database or disk is full", as on a full
    disk) refused every sale with 503 while /healthz, status, the metrics and the log all
    looked normal: the store sold without loyalty and support had nothing to find."""
    registry = Registry()
    agent = Agent(tmp_path / "data", "till-1", metrics=registry)
    agent.load_snapshot(snapshot())
    register_gauges(registry, agent)
    http = HttpServer(agent, "127.0.0.1:0")
    http.start()
    metrics, metrics_port = serve(registry, "127.0.0.1", 0)
    scrape = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
        agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        caplog.set_level(logging.WARNING, logger="tillpoint.agent")
        # Sales fill the pages there are, then every one is refused.
        refused: list[dict[str, Any]] = []
        for i in range(500):
            body = receipt(f"full-{i}")
            status, answer = _post(http.port, "/v1/checkout", body)
            if status != 200:
                assert status == 503 and answer["error"]["code"] == "UNAVAILABLE", answer
                assert "disk is full" in answer["error"]["message"]
                refused.append(body)
                if len(refused) == 3:
                    break
        assert len(refused) == 3
        assert _post(http.port, "/v1/quote", refused[0])[0] == 200  # quotes still work
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "sales are refused" in errors[0].getMessage()  # once
        shown = agent.status().to_json()
        assert "disk is full" in shown["storageError"] and shown["storageErrorAt"]
        health = json.loads(_get(f"http://127.0.0.1:{http.port}/healthz"))
        assert health["status"] == "SERVING" and "disk is full" in health["storageError"]
        text = _get(scrape)
        assert "tillpoint_storage_error 1" in text
        assert 'tillpoint_call_errors_total{code="UNAVAILABLE"} 3' in text
        # Room again: the refused sale is stored when sent again, and every sign clears.
        agent._ledger.execute("PRAGMA max_page_count = 1073741823")
        assert _post(http.port, "/v1/checkout", refused[0])[0] == 200
        shown = agent.status().to_json()
        assert shown["storageError"] == "" and shown["storageErrorAt"] == ""
        assert "storageError" not in json.loads(_get(f"http://127.0.0.1:{http.port}/healthz"))
        assert any("written again" in r.getMessage() for r in caplog.records)
        time.sleep(1.1)  # a scrape reads the status at most once a second
        assert "tillpoint_storage_error 0" in _get(scrape)
    finally:
        metrics.shutdown()
        http.stop()
        agent.close()


@pytest.mark.parametrize(
    ("section", "listen", "says"),
    [
        ("server", "127.0.0.1:99999", "from 0 to 65535"),  # gRPC listened on 34463
        ("metrics", "127.0.0.1", "expected HOST:PORT"),  # internal error: ValueError
        ("metrics", "127.0.0.1:99999", "from 0 to 65535"),  # internal error: OverflowError
        ("http", "127.0.0.1:99999", "from 0 to 65535"),
        ("server", "localhost", "expected HOST:PORT"),  # said: "set a token"
        ("http", ":8061", "expected HOST:PORT"),
        ("server", "127.0.0.1:８０６１", "from 0 to 65535"),  # full-width digits
    ],
)
def test_config_refuses_a_listen_address_run_could_not_bind_as_written(
    section: str, listen: str, says: str
) -> None:
    with pytest.raises(InputError, match=f"^config: {section}.listen .*{says}"):
        config.load(**{section: {"listen": listen}})
    assert config.split_listen("[::1]:0") == ("::1", 0)


def test_config_check_names_the_listen_problem_in_one_line(cli: CLI, tmp_path: Path) -> None:
    conf = tmp_path / "tillpoint.toml"
    conf.write_text('[metrics]\nlisten = "127.0.0.1"\n')
    run = cli("--config", conf, "config", "check")
    assert run.code == 2 and run.err.count("\n") == 1 and "expected HOST:PORT" in run.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_data_directory_is_named_not_an_internal_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o500)
    try:
        with pytest.raises(InputError, match=f"^cannot use the data directory {data}:"):
            DataDirLock(data).acquire()
    finally:
        data.chmod(0o700)


def test_a_data_directory_that_is_a_file_is_named(tmp_path: Path) -> None:
    """Read-only mounts and another user's directories give OSError where the lock file is
    made: "internal error: OSError" sent support to file a bug instead of `chown`."""
    taken = tmp_path / "not-a-dir"
    taken.write_text("")
    with pytest.raises(InputError, match=f"^cannot use the data directory {taken}:"):
        DataDirLock(taken).acquire()
    conf = tmp_path / "run.toml"
    conf.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[http]\nenabled = false\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--config", str(conf), "--data-dir", str(taken), "run"])
    assert code == 2 and "internal error" not in err.getvalue()  # not retried by the unit
    # every command says it before the lock is taken (privileges.check_data_dir)
    assert err.getvalue().startswith(f"tillpoint: the data directory {taken} is not a directory")


def test_status_says_why_an_idle_printer_is_offline(tmp_path: Path) -> None:
    """A printer unreachable while no job waited showed OFFLINE with an empty
    `printerLastError`: the worker's probe knew why, the status read only the jobs."""
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    closed = free_port()  # nothing listens there
    devices = Devices(
        data / "ledger.db",
        PrinterConfig(kind="network", host="127.0.0.1", port=closed, probe_interval_s=0.1),
        DisplayConfig(),
        ScannerConfig(),
    )
    agent.devices = devices
    devices.start()
    try:
        deadline = time.monotonic() + 10
        while agent.status().printer_state != "OFFLINE" and time.monotonic() < deadline:
            time.sleep(0.05)
        status = agent.status()
        assert status.printer_state == "OFFLINE"
        assert f"127.0.0.1:{closed}" in status.printer_last_error, status.printer_last_error
    finally:
        devices.stop()
        agent.close()


def test_status_says_why_the_display_is_offline(tmp_path: Path) -> None:
    """`displayState: OFFLINE` came without a reason (the printer has `printerLastError`):
    `displayLastError` carries the display's own words, in the status and its JSON (the
    proto `Status`, field 44), and is "" once the display is back."""
    from tillpoint.agent.wire import status_json

    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    closed = free_port()  # nothing listens there: a display server that is down
    devices = Devices(
        data / "ledger.db",
        PrinterConfig(),
        DisplayConfig(kind="serial", device=f"socket://127.0.0.1:{closed}", reconnect_s=0.1),
        ScannerConfig(),
    )
    agent.devices = devices
    devices.start()
    try:
        deadline = time.monotonic() + 10
        while not agent.status().to_json()["displayLastError"] and time.monotonic() < deadline:
            time.sleep(0.05)
        doc = agent.status().to_json()
        assert doc["displayState"] == "OFFLINE"
        assert str(closed) in doc["displayLastError"], doc
        as_proto = status_json(agent.status())  # a field the proto lacks is an error
        assert as_proto["displayLastError"] == doc["displayLastError"]
    finally:
        devices.stop()
        agent.close()
    again = Agent(data, "till-1")  # a process that does not drive the display: ""
    try:
        assert again.status().to_json()["displayLastError"] == ""
    finally:
        again.close()


def test_a_ledger_refuses_another_device_id(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same data directory run as till-A, then till-B: both sales were journalled at
    seq 1, and till-A's sale stayed in the outbox ("pushed 0, 0 waiting") for good."""
    data = tmp_path / "data"  # the `cli` fixture's, as till-1
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("checkout", receipt("r1")).code == 0
    with pytest.raises(InputError, match="holds the sales of device 'till-1', none of 'till-2'"):
        Agent(data, "till-2")
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-2")
    body = tmp_path / "receipt.json"
    body.write_text(json.dumps(receipt("r2")))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--data-dir", str(data), "checkout", str(body), "--local"])
    assert code == 2 and "a till's device_id never changes" in err.getvalue()
    assert err.getvalue().count("\n") == 1
    Agent(data, "till-1").close()  # its own id still opens it
    # A ledger an earlier release let two ids write opens under either (each pushes its
    # own rows; `reset` once sent), not under a third: no id is locked out for good.
    conn = sqlite3.connect(data / "ledger.db")
    with conn:
        conn.execute(
            "INSERT INTO journal SELECT 'till-2', seq, kind, ref_id, at, customer_id, card,"
            " created_at FROM journal WHERE device_id = 'till-1'"
        )
    conn.close()
    Agent(data, "till-1").close()
    Agent(data, "till-2").close()
    with pytest.raises(InputError, match=r"none of 'till-3'.*tillpoint reset"):
        Agent(data, "till-3")
    fresh = Agent(tmp_path / "fresh", "till-9")  # no sale yet: any id
    fresh.close()
    Agent(tmp_path / "fresh", "till-10").close()


@pytest.mark.parametrize("address", [["--address", "127.0.0.1:9"], []])  # [] the default ""
def test_a_till_enrolled_as_another_device_refuses_to_sell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: list[str]
) -> None:
    """Enrolled as till-1 but configured as till-2, `run` sold standalone under till-2:
    sales the hub would never take (and a ledger the mended id could not open); with no
    hub address in the bundle or the config, too."""
    hub_dir, bundle, till = tmp_path / "hub", tmp_path / "b.json", tmp_path / "till"
    assert main(["hub", "init", "--hub-dir", str(hub_dir)]) == 0
    enroll = ["hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle)]
    assert main([*enroll, *address]) == 0
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    # a hold made as till-1 before the bundle was installed, confirmed by the mistyped id
    held = tmp_path / "held.json"
    held.write_text(json.dumps(receipt("r-held")))
    assert main(["--data-dir", str(till), "snapshot", "load", str(snap_file(tmp_path))]) == 0
    assert main(["--data-dir", str(till), "hold", str(held), "--local"]) == 0
    assert main(["sync", "install", str(bundle), "--data-dir", str(till)]) == 0
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-2")
    conf = tmp_path / "run.toml"
    conf.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[http]\nenabled = false\n')
    body = tmp_path / "receipt.json"
    body.write_text(json.dumps(receipt("r1")))
    for argv in (
        ["run"],
        ["checkout", str(body), "--local"],
        ["confirm", "r-held", "--local"],
        ["refund", str(body), "--local"],
    ):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["--config", str(conf), "--data-dir", str(till), *argv])
        assert code == 2, (argv, err.getvalue())
        assert (
            "the enrolment is for device 'till-1' but this till runs as 'till-2'" in err.getvalue()
        )
    assert main(["--data-dir", str(till), "status", "--local"]) == 0  # support still sees it
    journal = sqlite3.connect(till / "ledger.db").execute("SELECT count(*) FROM journal")
    assert journal.fetchone() == (0,)


def snap_file(tmp_path: Path) -> Path:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    return path
