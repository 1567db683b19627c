"""Two real hub servers (`tillpoint hub serve` processes) over one PostgreSQL database and
one shared hub directory; tills dial both. One server is SIGKILLed while the tills push
and redeem: the other keeps serving, nothing is lost or stored twice, and online grants
never exceed the card's balance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import CheckoutResult, receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync import pki
from tillpoint.sync.authoriser import HubAuthoriser
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubDir
from tillpoint.sync.loopback import import_doc, receipt, sample_master_data, timings, wait_for
from tillpoint.sync.pull import cache_version
from tillpoint.sync.service import SyncService

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
CARD = "2770000000017"  # c-1, 1200 points


def no_accrual_data() -> dict[str, Any]:
    data = sample_master_data()
    data["program"]["tiers"].append({"code": "none", "accrualPercent": "0"})
    data["customers"][0]["tier"] = "none"
    return data


def big_line() -> list[dict[str, Any]]:
    return [{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}]


@pytest.fixture()
def servers(procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """The hub processes a test started, stopped at its end (conftest's `procs`)."""
    return procs


def serve(
    servers: list[subprocess.Popen[bytes]], hub_dir: Path, url: str, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    port_file = hub_dir.parent / f"{name}.port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    with open(hub_dir.parent / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [
                TILLPOINT,
                "hub",
                "serve",
                "--hub-dir",
                str(hub_dir),
                "--store",
                url,
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--publish-every",
                "1",
                "--heartbeat",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    servers.append(proc)
    port = int(wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30))
    return proc, port


@pytest.mark.slow
def test_one_of_two_hub_servers_killed_while_tills_push_and_redeem(
    pg_url: str, tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    hub = HubDir(tmp_path / "hub", pg_url)
    hub.init()
    store = hub.open_store(migrate=True)
    import_doc(store, no_accrual_data())
    store.publish(datetime.now(UTC), 86400)
    a, port_a = serve(servers, hub.root, pg_url, "a")
    b, port_b = serve(servers, hub.root, pg_url, "b")

    tills: list[tuple[Agent, SyncService, HubAuthoriser]] = []
    slow_ok = timings(redeem_timeout_s=5.0, call_timeout_s=5.0)
    for i in range(4):
        device = f"till-{i}"
        first, second = (port_a, port_b) if i % 2 == 0 else (port_b, port_a)
        address = f"ipv4:127.0.0.1:{first},127.0.0.1:{second}"  # pick_first: fails over
        identity = pki.issue_device(hub.keys, device)
        store.enroll(device, identity.fingerprint, datetime.now(UTC))
        enrollment = pki.install_bundle(
            tmp_path / device, pki.make_bundle(hub.keys, identity, address), device
        )
        agent = Agent(tmp_path / device, device)
        link = HubLink(address, enrollment)
        authoriser = HubAuthoriser(link, agent.data_dir, device, slow_ok.redeem_timeout_s)
        agent.hub = authoriser
        service = SyncService(agent, link, enrollment, slow_ok)
        service.start()
        tills.append((agent, service, authoriser))
    try:
        for agent, _, _ in tills:
            wait_for(lambda agent=agent: cache_version(agent.data_dir) >= 1, 60)
        results: list[CheckoutResult] = []
        lock = threading.Lock()
        sold = threading.Semaphore(0)

        def sell(agent: Agent) -> None:
            for n in range(8):
                done = agent.checkout(
                    receipt_from_json(
                        receipt(f"{agent.device_id}-{n}", CARD, redeem=100, lines=big_line())
                    )
                )
                with lock:
                    results.append(done)
                sold.release()
                time.sleep(0.05)

        threads = [threading.Thread(target=sell, args=(t[0],)) for t in tills]
        for thread in threads:
            thread.start()
        for _ in range(6):  # a few sales in, while pushes and redemptions go on
            assert sold.acquire(timeout=60)
        a.send_signal(signal.SIGKILL)
        assert a.wait(timeout=10) == -signal.SIGKILL
        for thread in threads:
            thread.join(timeout=120)
        assert len(results) == 32
        assert b.poll() is None  # the other server kept serving

        for _, service, _ in tills:
            wait_for(lambda service=service: service.pusher.pending() == 0, 60)
        online = sum(r.redeemed_points for r in results if r.mode == "ONLINE")
        spent = sum(r.redeemed_points for r in results)
        assert online <= 1200  # the holds of both servers never granted more than she had
        assert sum(1 for r in results if r.mode == "ONLINE") >= 16  # B answered after the kill
        for agent, _, _ in tills:
            seqs = [e.seq for e in store.ledger(agent.device_id)]
            assert seqs == list(range(1, 9))  # every transaction once, none lost
        assert store.balance("c-1", datetime.now(UTC)).available == 1200 - spent

        # B publishes balance refreshes and serves them: the tills follow its versions.
        newest = wait_for(lambda: (p := store.latest()) is not None and p.version > 1 and p, 30)
        for agent, _, _ in tills:
            wait_for(lambda agent=agent: cache_version(agent.data_dir) >= newest.version, 60)
    finally:
        for agent, service, authoriser in tills:
            service.stop()
            authoriser.close()
            agent.close()
        store.close()
