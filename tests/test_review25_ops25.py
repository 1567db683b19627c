"""Review 25 (ops25): the product as a retailer's IT team installs and runs it and as a
support engineer debugs it (docs/CONTRACT.md §10, README "Running it on a till") — each
finding with the test that failed before its fix."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.queue import PrintWorker, ensure_schema
from tillpoint.printer.transport import make_transport

from .conftest import CLI, free_port, receipt, snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("below", [False, True])
def test_a_data_dir_that_is_a_file_is_one_line_exit_2(
    tmp_path: Path, cli: CLI, below: bool
) -> None:
    """docs/CONTRACT.md §10: a data directory that is a file (a typo in --data-dir, a
    path under a file) is a configuration problem: `status`, `snapshot load` and
    `identify` said "cannot open …/cache.db: [Errno 17] File exists: '…'" with exit 1
    (which the unit restarts for ever), where `run` said it with exit 2."""
    (tmp_path / "data").write_text("not a directory\n")
    flag = ["--data-dir", str(tmp_path / "data" / "sub")] if below else []
    for args in (
        ["status", "--json"],
        ["snapshot", "load", str(EXAMPLES / "snapshot.json")],
        ["identify", "2770000000017", "--json"],
    ):
        run = cli(*flag, *args)
        assert run.code == 2, (args, run.code, run.err)
        _one_line(run.err)
        assert "data directory" in run.err and "not a directory" in run.err.lower(), run.err
        assert run.out == ""
    assert (tmp_path / "data").read_text() == "not a directory\n"


def _damage_header(data: Path) -> None:
    from tillpoint.agent.db import cache_file

    with cache_file(data).open("r+b") as cache:
        cache.write(b"not a database at all" * 8)


def test_a_cache_with_a_damaged_header_says_damaged_and_the_way_out(
    tmp_path: Path, cli: CLI
) -> None:
    """A cache file whose first page is damaged said "cannot open …/cache-7-….db: file is
    not a database", exit 1: no word that it is only a copy of the hub's data, nor what to
    do (a damaged page further in said both). Now every command says it is damaged and how
    to make it again (exit 1, as for a damaged page further in)."""
    assert cli("snapshot", "load", str(EXAMPLES / "snapshot.json")).code == 0
    _damage_header(tmp_path / "data")
    for args in (["identify", "2770000000017", "--json"], ["status", "--json"]):
        run = cli(*args)
        assert run.code == 1, (args, run.code, run.err)
        _one_line(run.err)
        assert "is damaged" in run.err and "cache*.db*" in run.err, run.err


def test_run_on_a_damaged_cache_stops_with_exit_2_not_restarted_in_a_loop(tmp_path: Path) -> None:
    """README: the unit restarts the agent whatever ended it but exit 2, "a configuration
    or data directory problem". `run` on a damaged cache ended with exit 1: systemd
    started it again every 2 s for ever, the same line in the journal each time."""
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    agent.close()
    _damage_header(data)
    _run_refused_as_damaged(data)


def _run_refused_as_damaged(data: Path) -> None:
    """`tillpoint run` on `data` stops at start with exit 2 and says the file is damaged."""
    command, env = _run_command(data)
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "is damaged" in run.stderr and "Traceback" not in run.stderr


def _run_command(data: Path) -> tuple[list[str], dict[str, str]]:
    """`tillpoint run` on `data` as till-1 on free ports, without /metrics: argv, env."""
    env = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": "till-1",
        "TILLPOINT_SERVER__LISTEN": "127.0.0.1:0",
        "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0",
        "TILLPOINT_METRICS__ENABLED": "false",
    }
    return [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(data), "run"], env


def test_a_printer_found_unreachable_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A support engineer reads the journal: the display's "customer display offline" was
    there, but a receipt printer found unplugged by the start-up probe (and every probe
    after) left no line at all while `status` said OFFLINE. Now a WARNING when the probe
    finds it so, once, and an INFO line when it answers again."""
    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger, isolation_level=None)
    ensure_schema(conn)
    conn.close()
    port = free_port()
    config = PrinterConfig(kind="network", host="127.0.0.1", port=port, connect_timeout_s=1.0)
    where = [config]
    worker = PrintWorker(ledger, config, printer_factory=lambda: make_transport(where[0]))
    caplog.set_level(logging.INFO, logger="tillpoint")
    try:
        assert worker.probe() == "OFFLINE"
        assert worker.probe() == "OFFLINE"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert f"127.0.0.1:{port}" in warnings[0].getMessage()
        assert "OFFLINE" in warnings[0].getMessage()
        from tillpoint.printer.virtual import VirtualPrinter

        with VirtualPrinter() as printer:
            where[0] = config.model_copy(update={"port": printer.port})
            caplog.clear()
            assert worker.probe() == "OK"
            assert [r.levelno for r in caplog.records] == [logging.INFO], caplog.records
            assert "answers again" in caplog.records[0].getMessage()
    finally:
        worker.close()


def test_a_checkout_logs_no_personal_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """README: logs carry no customer's phone, surname or birthday, and no full card."""
    caplog.set_level(logging.DEBUG)
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        agent.checkout(receipt_from_json(receipt("p1", card="+7 916 123-45-67")))
        agent.checkout(receipt_from_json(receipt("p2")))
    finally:
        agent.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("2770000000017", "9161234567", "1990-11-25"):
        assert secret not in text


@pytest.mark.parametrize("table", ["printer", "display", "scanner"])
def test_a_typo_in_a_device_table_is_said_as_in_the_other_tables(
    tmp_path: Path, cli: CLI, table: str
) -> None:
    """docs/CONTRACT.md §10: `[hub] adress` is "hub.adress is not a known field", but
    `[printer] kindd` was "config [printer.kindd]: Extra inputs are not permitted"
    (pydantic's words, to a person mending a file)."""
    conf = tmp_path / "typo.toml"
    conf.write_text(f'[{table}]\nkindd = "network"\n', encoding="utf-8")
    run = cli("--config", str(conf), "config", "check")
    assert run.code == 2, run.err
    _one_line(run.err)
    assert "kindd is not a known field" in run.err and f"[{table}]" in run.err, run.err
    assert "Extra inputs" not in run.err


@pytest.mark.slow
def test_an_outage_is_a_few_lines_in_the_log_not_one_per_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """README (logs): sync errors are said once. During an outage every retry of the pull
    and of the push wrote "pull failed: the hub is unreachable (…)" at INFO, 14 lines in
    the first 25 s and 3–4 a minute for as long as the hub stayed away, after the WARNING
    that already said the till sells OFFLINE. Now a failure is logged at INFO when its
    words change; the same again is DEBUG."""
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
    from tillpoint.sync.loopback import receipt as hub_receipt
    from tillpoint.sync.pull import cache_version

    caplog.set_level(logging.INFO, logger="tillpoint")
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till")
    service = till.service
    assert service is not None
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1 and till.link.online, timeout=20)
        hub.stop()
        wait_for(lambda: not service.link.online, timeout=10)
        service.agent.checkout(receipt_from_json(hub_receipt("r-0", "2770000000017")))
        service.trigger_pull()
        wait_for(
            lambda: service.pull_backoff.failures >= 4 and service.push_backoff.failures >= 4,
            timeout=30,
        )
        said = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.INFO and "unreachable" in r.getMessage()
        ]
        assert len(said) <= 4, said  # OFFLINE once, the pull's and the push's first failure
    finally:
        till.stop()
        hub.stop()


def _run_briefly(data: Path) -> str:
    """`tillpoint run` on `data` until it serves, then SIGTERM: its log (stderr)."""
    import signal
    import time

    command, env = _run_command(data)
    env["TILLPOINT_LOG__FORMAT"] = "text"
    log = data.parent / "run.log"
    with log.open("w") as err:
        process = subprocess.Popen(command, env=env, stderr=err, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while "PosAgent serving" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    return log.read_text()


def test_run_logs_its_release_and_the_snapshot_it_serves_or_that_it_has_none(
    tmp_path: Path,
) -> None:
    """A support engineer reading a till's journal learns from the start line which
    release runs and which snapshot it serves: it said "cache version 7" only, and a
    till with no snapshot (every sale refused: 412 "no snapshot loaded") started without
    a word of warning."""
    from tillpoint.agent.cli import version_text

    data = tmp_path / "data"
    empty = _run_briefly(data)
    assert version_text() in empty
    assert "WARNING" in empty and "no snapshot loaded" in empty, empty
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    agent.close()
    served = _run_briefly(data)
    assert version_text() in served
    assert "snapshot version 1 issued 2026-11-23T03:00:00Z" in served, served
    assert "no snapshot loaded" not in served


def test_a_grpc_listen_address_in_use_says_why_as_the_other_servers_do(tmp_path: Path) -> None:
    """`run` on a gRPC port another program holds said "cannot listen on …: the address is
    in use or not valid", where HTTP and /metrics say the system's reason and the key:
    "… for HTTP: Address already in use". Now gRPC does too (and for an address that is
    not this machine's, "Cannot assign requested address")."""
    from tillpoint.agent.errors import TillpointError
    from tillpoint.agent.server import build_server

    agent = Agent(tmp_path / "data", "till-1")
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            with pytest.raises(TillpointError) as refused:
                build_server(agent, f"127.0.0.1:{port}")
            message = refused.value.message
            assert f"cannot listen on 127.0.0.1:{port} for gRPC: Address already in use" in message
            assert "[server] listen" in message
        with pytest.raises(TillpointError, match="for gRPC: Cannot assign requested address"):
            build_server(agent, "192.0.2.1:50061", token="t")  # TEST-NET-1: not this machine
    finally:
        agent.close()


def _without_root_powers(command: list[str]) -> list[str]:
    """Root ignores file modes: drop the capabilities that let it (as test_review19)."""
    import shutil

    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root ignores file modes, and setpriv is not here to drop that")
    drop = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, "--bounding-set", drop, "--inh-caps", drop, *command]


@pytest.mark.parametrize("where", ["data", "data/new"])
def test_a_read_only_data_dir_is_said_so_exit_2(tmp_path: Path, where: str) -> None:
    """A data directory this process cannot write (a file system remounted read-only, a
    mode) said "cannot open …/cache.db: unable to open database file" (or "[Errno 13]
    Permission denied"), exit 1: no word of what to mend, and the unit restarts it for
    ever. Now the message says the directory is read-only for this process, exit 2."""
    data = tmp_path / "data"
    data.mkdir(mode=0o555)
    command = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(tmp_path / where)]
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_CLI_LOCAL": "1"}
    run = subprocess.run(
        _without_root_powers([*command, "status", "--json"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, (run.returncode, run.stderr)
    _one_line(run.stderr)
    assert f"{data} is read-only for this process" in run.stderr, run.stderr


def test_the_hub_s_listen_address_in_use_says_why(tmp_path: Path, cli: CLI) -> None:
    """`hub serve` on a port in use said "the hub cannot listen on …: in use or not an
    address"; now the system's reason, as the agent's servers say it."""
    assert cli("hub", "import", str(EXAMPLES / "catalogue.json"), "--hub-dir", tmp_path / "hub")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = cli("hub", "serve", "--hub-dir", tmp_path / "hub", "--listen", f"127.0.0.1:{port}")
    assert run.code != 0
    _one_line(run.err)
    assert f"the hub cannot listen on 127.0.0.1:{port}: Address already in use" in run.err


def _damaged_ledger(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    agent.checkout(receipt_from_json(receipt("r1")))
    agent.close()
    for side in ("ledger.db-wal", "ledger.db-shm"):
        (data / side).unlink(missing_ok=True)
    with (data / "ledger.db").open("r+b") as ledger:
        ledger.write(b"not a database at all" * 8)
    return data


def test_a_damaged_ledger_says_so_and_what_to_keep(tmp_path: Path, cli: CLI) -> None:
    """A ledger whose first page is damaged said "cannot open …/ledger.db: file is not a
    database": no word that it holds the till's sales (not a copy, unlike the cache), nor
    what to do first. Now it says it is damaged, to keep a copy and check it."""
    data = _damaged_ledger(tmp_path)
    run = cli("status", "--json", "--local")
    assert run.code == 1, run.err
    _one_line(run.err)
    assert f"the ledger {data / 'ledger.db'} is damaged" in run.err, run.err
    assert "copy" in run.err and "integrity_check" in run.err


def test_run_on_a_damaged_ledger_stops_with_exit_2(tmp_path: Path) -> None:
    """As for a damaged cache: `run` ended with exit 1, restarted by the unit every 2 s."""
    data = _damaged_ledger(tmp_path)
    _run_refused_as_damaged(data)


@pytest.mark.parametrize(("level", "form"), [("debug", "JSON"), ("Warning", "Text")])
def test_the_log_level_and_format_are_taken_in_any_case(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, level: str, form: str
) -> None:
    """`TILLPOINT_LOG__LEVEL=debug` (what a person types to see more) stopped every command
    and `run` with exit 2, which the unit does not restart: a till without loyalty over a
    log level's case. The level and the format are read in any case."""
    monkeypatch.setenv("TILLPOINT_LOG__LEVEL", level)
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(f'[log]\nformat = "{form}"\n', encoding="utf-8")
    run = cli("--config", conf, "config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["log"] == {"level": level.upper(), "format": form.lower()}
    assert cli("--config", conf, "status", "--json").code == 0
