"""Review 26 (ops26): `tillpoint run` started and stopped as systemd does it
(packaging/tillpoint.service, docs/CONTRACT.md §9, §10, §12) — each finding with the test
that failed before its fix."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.agent.service import Agent
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data
from tillpoint.sync.pull import Puller

from .conftest import free_port
from .listeners import close_listener

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "tillpoint.service"
TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))


def _timeout_stop_s() -> float:
    match = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.M)
    assert match, "the unit names its TimeoutStopSec"
    return float(match.group(1))


@pytest.fixture()
def stalled_printer() -> Iterator[int]:
    """A port-9100 printer that accepts a connection and never reads nor answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield int(listener.getsockname()[1])
    close_listener(listener)
    for conn in held:
        conn.close()


def _wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("tillpoint run never became healthy")


def _post(port: int, call: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/{call}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        result: dict[str, object] = json.loads(answer.read())
    return result


@pytest.mark.slow
def test_a_stop_with_a_stalled_printer_and_a_silent_hub_ends_within_timeout_stop_sec(
    tmp_path: Path, stalled_printer: int
) -> None:
    """packaging/tillpoint.service: a graceful stop must end within TimeoutStopSec, or
    systemd kills the agent (KillMode=mixed) and the coupon the printer was confirming is
    failed at the next start as a crash's. `run` stopped its parts one after another: the
    print worker's wait for the printer's confirmation (confirm_timeout_s + 5.5 s), then the
    sync threads' (up to 10 s each), so the waits added up past 30 s with a printer that
    took the job and never answered and a hub that took the push and never answered. Now
    they are stopped side by side: the stop takes the longest of them, exit 0, last line
    "stopped"."""
    data = sample_master_data()
    data["offers"] = [
        {
            "id": "o-print",
            "campaignId": "camp-p",
            "customerId": "c-1",
            "kind": "PERCENT_OFF",
            "skus": ["4601234000024"],
            "value": "20",
            "validFrom": "2026-01-01T00:00:00+03:00",
            "validTo": "2099-12-31T23:59:59+03:00",
            "rank": 1,
            "printable": True,
            "printText": "-20% kefir",
        }
    ]
    hub = LoopbackHub(tmp_path / "hub", data=data)
    till = tmp_path / "till"
    enrollment = hub.enroll("till-1", till)
    pushed = threading.Event()
    try:
        agent = Agent(till, "till-1")
        Puller(agent, HubLink(hub.address, enrollment), enrollment, call_timeout_s=5).pull()
        agent.close()

        def silent_hub(where: str) -> None:
            if where == "push.committed":
                pushed.set()
                time.sleep(120)  # took the batch; the answer never comes (in time)

        hub.server.servicer.failpoint = silent_hub
        http = free_port()
        config = tmp_path / "till.toml"
        config.write_text(
            f'device_id = "till-1"\ndata_dir = "{till}"\n'
            f'[hub]\naddress = "{hub.address}"\ncall_timeout_ms = 600000\n'
            '[server]\nlisten = "127.0.0.1:0"\n[metrics]\nenabled = false\n'
            f'[http]\nlisten = "127.0.0.1:{http}"\n'
            f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {stalled_printer}\n'
            "confirm_timeout_s = 21\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        proc = subprocess.Popen(
            [TILLPOINT, "--config", str(config), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_healthy(http, proc)
            sold = _post(http, "checkout", receipt("r-1", "2770000000017", lines=None))
            assert sold.get("printedOffers") == ["o-print"], sold
            assert pushed.wait(20)
            time.sleep(1.0)  # the job is sent; its confirmation is awaited
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=90)
            took = time.monotonic() - began
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, err[-3000:]
        last = json.loads(err.strip().splitlines()[-1])
        assert last["msg"] == "stopped", last
        assert took < _timeout_stop_s() - 2, f"stop took {took:.1f} s"
    finally:
        hub.server.servicer.failpoint = None
        hub.stop()


def _run_env(http: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(
        TILLPOINT_DEVICE_ID="till-1",
        TILLPOINT_SERVER__LISTEN="127.0.0.1:0",
        TILLPOINT_HTTP__LISTEN=f"127.0.0.1:{http}",
        TILLPOINT_METRICS__ENABLED="false",
    )
    return env


def wait_answering(port: int, proc: subprocess.Popen[str]) -> None:
    """Until `run` on HTTP port `port` answers (`/healthz`, 200 or 503): a POS may call now.
    A TCP connection is no answer: the port listens from its bind, before `run` has
    started anything (review 43; a SIGTERM then was a stop during start-up)."""
    import http.client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return  # it answers: a POS may call now
        except OSError:
            time.sleep(0.01)
        finally:
            conn.close()
    raise AssertionError("tillpoint run never answered")


@pytest.mark.slow
def test_sigterm_as_soon_as_the_agent_answers_is_a_graceful_stop(tmp_path: Path) -> None:
    """packaging/tillpoint.service, docs/CONTRACT.md §12: from the moment `run` answers
    (`/healthz` 200, a POS may send a checkout) a SIGTERM drains and exits 0. The handler
    was set only after the servers had started and the start-up lines were logged: a
    `systemctl stop` (or restart) in that window killed the agent outright, exit -15, no
    drain, the print worker and the sync threads cut wherever they were, the journal's
    last line "HTTP interface on …"."""
    from .conftest import snapshot

    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    http = free_port()
    proc = subprocess.Popen(
        [TILLPOINT, "--data-dir", str(data), "run"],
        env=_run_env(http),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_answering(http, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, (proc.returncode, err[-2000:])
    assert json.loads(err.strip().splitlines()[-1])["msg"] == "stopped", err[-2000:]
