"""`tillpoint run` killed with SIGKILL mid-push and mid-pull restarts cleanly, losing nothing.

The agent is a real subprocess (`.venv/bin/tillpoint --config ... run`); the hub runs in
this process so the test can hold a push after the hub committed it, or slow a download.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import Puller, cache_version

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
DEVICE = "till-1"


def config(tmp_path: Path, data_dir: Path, hub: LoopbackHub) -> Path:
    path = tmp_path / "till.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n'
        f'data_dir = "{data_dir}"\n'
        "[hub]\n"
        f'address = "{hub.address}"\n'
        "call_timeout_ms = 2000\n"
        "poll_interval_s = 30\n"
        "[server]\n"
        'listen = "127.0.0.1:0"\n'
        "[metrics]\n"
        "enabled = false\n"
        "[http]\n"  # not the default port: another agent on this machine may have it
        'listen = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture()
def agents() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start(agents: list[subprocess.Popen[bytes]], cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [TILLPOINT, "--config", str(cfg), "run"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    agents.append(proc)
    return proc


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def ledger_rows(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_sigkill_mid_push_loses_and_duplicates_nothing(
    tmp_path: Path, agents: list[subprocess.Popen[bytes]]
) -> None:
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data_dir = tmp_path / "till"
    enrollment = hub.enroll(DEVICE, data_dir)
    try:
        agent = Agent(data_dir, DEVICE)  # sales while the service is not running
        Puller(agent, HubLink(hub.address, enrollment), enrollment, call_timeout_s=5).pull()
        for i in range(30):
            agent.checkout(receipt_from_json(receipt(f"r-{i}", "2770000000017", redeem=1)))
        agent.close()

        in_flight = threading.Event()
        release = threading.Event()

        def hold_the_answer(where: str) -> None:
            if where == "push.committed":
                in_flight.set()
                release.wait(20)  # the batch is stored; the answer waits

        hub.server.servicer.failpoint = hold_the_answer
        cfg = config(tmp_path, data_dir, hub)
        proc = start(agents, cfg, tmp_path / "agent.log")
        assert in_flight.wait(20), (tmp_path / "agent.log").read_text()
        sigkill(proc)  # killed while waiting for the hub's acknowledgement
        hub.server.servicer.failpoint = None
        release.set()
        assert len(hub.store.ledger(DEVICE)) > 0
        # nothing left the outbox without an acknowledgement
        assert ledger_rows(data_dir, "SELECT count(*) FROM outbox")[0][0] == 30
        # each row's texts are its receipt's: the restarted push reads them from there
        refer = "SELECT count(*) FROM outbox WHERE texts = 'receipt'"
        assert ledger_rows(data_dir, refer)[0][0] == 30

        start(agents, cfg, tmp_path / "agent.log")
        wait_for(
            lambda: ledger_rows(data_dir, "SELECT count(*) FROM outbox")[0][0] == 0, timeout=30
        )
        journal = ledger_rows(
            data_dir, "SELECT device_id, seq, kind, ref_id FROM journal ORDER BY seq"
        )
        hub_ledger = [(e.device_id, e.seq, e.kind, e.ref_id) for e in hub.store.ledger(DEVICE)]
        assert hub_ledger == journal and len(journal) == 30
    finally:
        hub.stop()


def test_sigkill_mid_pull_resumes_and_keeps_the_old_snapshot_meanwhile(
    tmp_path: Path, agents: list[subprocess.Popen[bytes]]
) -> None:
    data = sample_master_data()
    data["products"] += [
        {"sku": f"2{i:012d}", "name": f"Товар номер {i}", "category": "dairy"} for i in range(4000)
    ]
    hub = LoopbackHub(
        tmp_path / "hub",
        HubConfig(chunk_size=16 * 1024, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0),
        data=sample_master_data(),
    )
    data_dir = tmp_path / "till"
    hub.enroll(DEVICE, data_dir)
    try:
        cfg = config(tmp_path, data_dir, hub)
        log = tmp_path / "agent.log"
        proc = start(agents, cfg, log)
        wait_for(lambda: cache_version(data_dir) == 1, timeout=30)

        from tillpoint.sync.loopback import import_doc

        import_doc(hub.store, data)
        # A slow store uplink: the delta (about 310 KiB) takes six seconds, its part file
        # made durable every second, so the kill below finds it part-way whatever else
        # this machine runs (at 100 KiB a second a busy test process once first looked
        # when it was whole: the restart then had nothing to resume).
        hub.server.servicer.rate_limit_bytes_s = 50 * 1024
        version = hub.publish()
        meta = data_dir / "sync" / "pull.json"

        def downloading() -> bool:
            try:
                partial = json.loads(meta.read_text())
            except (FileNotFoundError, ValueError):
                return False
            return bool(0 < partial["offset"] < partial["total_size"])

        wait_for(downloading, timeout=30)
        sigkill(proc)
        assert cache_version(data_dir) == 1  # the old snapshot is still the live one
        hub.server.servicer.rate_limit_bytes_s = 0

        start(agents, cfg, log)
        wait_for(lambda: cache_version(data_dir) == version, timeout=30)
        resumed = hub.server.servicer.stats.resumed_pulls
        assert resumed and resumed[0] > 0, log.read_text()
        conn = sqlite3.connect(data_dir / "cache.db")
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 4003
        conn.close()
        # The part file goes right after the apply that switched the version in.
        wait_for(lambda: not (data_dir / "sync" / "pull.part").exists(), timeout=10)
    finally:
        hub.stop()
