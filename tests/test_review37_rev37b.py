"""Review 37 (rev37b): session 36's sync and status changes read again (CONTRACT §9,
§10, §11): `sync now --timeout`, the link state after each way a call ends, `status`'s
one read, the listen addresses. Each test here that names a fault failed before the fix
beside it; the others pin what was tried and found right. Real parts: the reference hub
on 127.0.0.1 with its own gRPC handlers, real SQLite files, real sockets.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, sample_master_data

from .conftest import CLI, enrolled_till, free_port, needs_ipv6, receipt
from .test_review35_left35 import cancelled_while_away, owed_releases
from .test_review36_rev36c import _recorded_mode

EXE = str(Path(sys.executable).parent / "tillpoint")

# ---------------------------------------- 1. sync now's deadline and the link state


def _slow(monkeypatch: pytest.MonkeyPatch, call: str, seconds: float) -> None:
    """The hub's handler of `call` waits `seconds` before it works (a busy hub, well
    within the till's own call deadline of 5 s)."""
    handler = getattr(HubServicer, call)
    if inspect.isgeneratorfunction(handler):

        def slowly_streamed(self: Any, request: Any, context: Any) -> Any:
            time.sleep(seconds)
            yield from handler(self, request, context)

        monkeypatch.setattr(HubServicer, call, slowly_streamed)
    else:

        def slowly(self: Any, request: Any, context: Any) -> Any:
            time.sleep(seconds)
            return handler(self, request, context)

        monkeypatch.setattr(HubServicer, call, slowly)


@pytest.mark.parametrize(
    ("call", "said"),
    [
        ("ListTransactions", ("before the hub answered (nothing pushed; 1 transaction(s)",)),
        ("PushTransactions", ("with the hub not taking the transactions in time (pushed 0)",)),
        # (or, on a busy machine, cut between the push and the pull: the same fault)
        (
            "PullSnapshot",
            ("while pulling the snapshot (pushed 1;", "before the snapshot was pulled (pushed 1;"),
        ),
    ],
)
def test_sync_now_cut_by_its_own_timeout_leaves_the_till_online(
    tmp_path: Path,
    hub: LoopbackHub,
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    said: tuple[str, ...],
) -> None:
    """CONTRACT §10 (`sync now --timeout`: one line, exit 1; `status`'s mode: ONLINE when
    the last exchange with the hub worked), §11 (a call cut by sync now's own deadline
    says nothing of the hub: review 36's rev36c, for the owed releases). A till recorded
    ONLINE by a `sync now` that worked sells once; the hub is then 2.5 s slow at one of
    its calls (its mark, the push, the snapshot), within the till's own 5 s, and the
    operator runs `sync now --timeout 1.5`. It gives up at its deadline, as the contract
    says, but recorded the till OFFLINE, and `tillpoint status` said so until the next
    contact, though the hub was there all along (it took the push, in the last case):
    the operator's deadline was taken for a hub away."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    first = cli("sync", "now", "--timeout", "30")
    assert first.code == 0, first.err
    assert _recorded_mode(data) == "ONLINE"
    sold = cli("checkout", receipt("s-1"), "--json")
    assert sold.code == 0, sold.err
    _slow(monkeypatch, call, 2.5)
    hub.restart()  # with the slow handler
    done = cli("sync", "now", "--timeout", "1.5")
    assert done.code == 1
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    gave_up = "tillpoint: sync now gave up at its deadline of 1.5 s (--timeout) "
    assert lines[0].startswith(tuple(gave_up + words for words in said)), lines[0]
    assert _recorded_mode(data) == "ONLINE"
    status = cli("status", "--json")
    assert status.code == 0, status.err
    assert json.loads(status.out)["mode"] == "ONLINE", status.out


@pytest.mark.slow  # an outage's holds, a sync now of 3 s: ~6.5 s each
@pytest.mark.parametrize("form", ["--json", "text"])
def test_sync_now_says_how_many_releases_its_deadline_left_owed(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """CONTRACT §10 (`sync now --timeout`), §11 (`sync now` sends the releases owed within
    its --timeout; those left stay owed for the next). Three holds cancelled while the hub
    was away; the hub is back but holds each release up to 10 s (within the till's own
    20 s), and `sync now --timeout 3` pushes, pulls and ends 0 with the three still owed: the hub
    holds those customers' points from every other till. It said only "pushed 0
    transaction(s), 0 waiting; snapshot 1 is the newest", as if nothing were left to
    send; it now says how many releases (and shrinks) stayed owed, in the text and in
    the JSON document (`hubCallsOwed`, `owedReceiptIds`: left37's words, merged)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "data"
    try:
        cancelled_while_away(hub, data, 3)
        assert owed_releases(data) == 3
        release = HubServicer.ReleaseRedemption
        let_go = threading.Event()

        def held(self: Any, request: Any, context: Any) -> Any:
            let_go.wait(10)
            return release(self, request, context)

        monkeypatch.setattr(HubServicer, "ReleaseRedemption", held)
        hub.restart()  # with the held handler
        monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "20000")
        try:
            done = cli("sync", "now", "--timeout", "3", *([form] if form == "--json" else []))
        finally:
            let_go.set()
        assert done.code == 0, done.err
        assert owed_releases(data) == 3
        if form == "--json":
            doc = json.loads(done.out)
            assert doc["hubCallsOwed"] == {"release": 3, "shrink": 0}, doc
        else:
            assert " 3 release(s) (" in done.out, done.out
            assert done.out.strip().endswith(
                "still owed to the hub, sent by `tillpoint run` or the next `sync now`"
            ), done.out
    finally:
        hub.stop()


# ---------------------------------------- 2. two of the till's servers on one port


def _config(tmp_path: Path, server: str, http: str, metrics: str | None = None) -> Path:
    conf = tmp_path / "tillpoint.toml"
    shown = f'listen = "{metrics}"' if metrics else "enabled = false"
    conf.write_text(
        f'device_id = "till-1"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[server]\nlisten = "{server}"\n[http]\nlisten = "{http}"\n[metrics]\n{shown}\n',
        encoding="utf-8",
    )
    return conf


def _tillpoint(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    return subprocess.run(
        [EXE, "--config", str(conf), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("server", "http", "metrics", "said"),
    [
        (
            "127.0.0.1:{p}",
            "127.0.0.1:{p}",
            None,
            "[server] listen 127.0.0.1:{p} and [http] listen 127.0.0.1:{p}",
        ),
        (
            "localhost:{p}",
            "127.0.0.1:{p}",
            None,
            "[server] listen localhost:{p} and [http] listen 127.0.0.1:{p}",
        ),
        (
            "127.0.0.1:0",
            "127.0.0.1:{p}",
            "localhost:{p}",
            "[http] listen 127.0.0.1:{p} and [metrics] listen localhost:{p}",
        ),
    ],
)
def test_config_check_and_run_refuse_two_servers_on_one_port(
    tmp_path: Path,
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
    http: str,
    metrics: str | None,
    said: str,
) -> None:
    """CONTRACT §10 (`config check` validates the configuration; exit 2 for a setting
    refused; a port another program holds: one line, exit 1). The gRPC server and the
    HTTP door (or /metrics) given one port on one address: `config check` said
    "configuration is valid", and `run` exited 1 with "cannot listen on 127.0.0.1:P for
    HTTP: Address already in use", the words of a port another program holds, so the
    unit restarted it for ever and the operator looked for a program that was its own
    gRPC server. Both now refuse the configuration in one line naming the two keys,
    exit 2, as any setting that can never work."""
    port = free_port()
    conf = _config(
        tmp_path,
        server.format(p=port),
        http.format(p=port),
        metrics.format(p=port) if metrics else None,
    )
    expected = f"tillpoint: config: {said.format(p=port)}: one port ({port}) for two servers"
    monkeypatch.delenv("TILLPOINT_HTTP__LISTEN", raising=False)  # the file's, not the suite's
    checked = cli("--config", conf, "config", "check")
    assert checked.code == 2, checked.out
    assert checked.err.strip().startswith(expected), checked.err
    run = _tillpoint(conf, "run")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [checked.err.strip()], run.stderr


@needs_ipv6
def test_grpc_on_the_ipv4_wildcard_meets_an_ipv6_listen_of_its_port() -> None:
    """CONTRACT §10: grpcio binds `0.0.0.0` dual-stack (as `[::]`), so the gRPC server
    there and the HTTP door on `[::1]` of its port cannot both listen (rev37b's reading,
    kept in left37's `listen_clash` at the merge); two HTTP-like servers on `0.0.0.0` and
    `[::1]` (each its own family) can."""
    from tillpoint.agent.config import _shared_port

    port = free_port()
    assert _shared_port(f"0.0.0.0:{port}", f"[::1]:{port}", dual=True) == port
    assert _shared_port(f"0.0.0.0:{port}", f"[::1]:{port}") == 0


@needs_ipv6
@pytest.mark.parametrize(
    ("server", "http"),
    [
        ("127.0.0.1:{p}", "[::1]:{p}"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:{p}", "127.0.0.2:{p}"),
    ],
)
def test_config_check_takes_one_port_on_two_addresses(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, server: str, http: str
) -> None:
    """CONTRACT §10: the same port on two addresses (each its own listen, as the kernel
    gives them), or port 0 for both (each picks its own), is not one port: found right."""
    port = free_port()
    conf = _config(tmp_path, server.format(p=port), http.format(p=port))
    monkeypatch.delenv("TILLPOINT_HTTP__LISTEN", raising=False)  # the file's, not the suite's
    checked = cli("--config", conf, "config", "check")
    assert checked.code == 0, checked.err


@needs_ipv6
def test_run_names_an_ipv6_http_listen_in_brackets_in_its_log(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §12 (`[http] listen`), §10 (an IPv6 listen is named in brackets, as review
    36 made the "cannot listen" lines). `run`'s start-up line for the HTTP door, the one
    support reads to find where the POS should connect, said "HTTP interface on
    ::1:43719", an address that reads as a host and a port either way (the gRPC line
    keeps the brackets as written)."""
    port = free_port()  # free on ::1 too, below the ephemeral range (review 42)
    conf = _config(tmp_path, "127.0.0.1:0", f"[::1]:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    run = subprocess.Popen([EXE, "--config", str(conf), "run"], env=env, stderr=subprocess.PIPE)
    procs.append(run)
    assert run.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while not any("HTTP interface on" in line for line in lines):
        assert time.monotonic() < deadline and run.poll() is None, lines
        lines.append(run.stderr.readline().decode())
    said = [json.loads(line)["msg"] for line in lines if "HTTP interface on" in line]
    assert said == [f"HTTP interface on [::1]:{port}"], said
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0


# ---------------------------------------- 3. status at one moment, a pull landing


def test_status_never_pairs_the_old_version_with_the_pull_that_replaced_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`status`'s fields agree at each moment: the version in the cache and
    the last sync). `status` reads the cache's version, then the ledger's figures in one
    read (review 36). A pull that lands between the two (its snapshot switched in, its
    end recorded: a full snapshot is built by other processes, without the agent's lock)
    made one document show the version before beside the time of the pull that replaced
    it, a pair no moment had. Driven here by running the pull as status enters its
    ledger read."""
    from tillpoint.agent import ledger
    from tillpoint.sync.pull import Puller

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        puller = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5)
        assert puller.pull().status == "APPLIED"
        first = till.agent.status().to_json()
        assert hub.publish() == 2
        one_read = ledger.one_read
        landed: list[str] = []

        def pull_lands_first(conn: Any) -> Any:
            if not landed:
                time.sleep(0.01)  # the pull's own time, after the one before
                assert puller.pull().status == "APPLIED"
                landed.append("v2")
            return one_read(conn)

        monkeypatch.setattr(ledger, "one_read", pull_lands_first)
        seen = till.agent.status().to_json()
        assert landed == ["v2"]
        assert seen["lastPullAt"] > first["lastPullAt"], (first, seen)
        assert seen["cacheVersion"] == 2, seen  # the pull whose time it shows
    finally:
        till.stop()
        hub.stop()
