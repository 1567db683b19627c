"""Review 36 (rev36b): session 35's start-up and sync changes read again (CONTRACT §10,
§11). Each test here that names a fault failed before the fix beside it; the others
pin what was tried and found right. Real parts: the reference hub on 127.0.0.1 with its
own gRPC handlers, real SQLite files, real sockets.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, enrolled_till, free_port, needs_ipv6, snapshot
from .test_review35_left35 import (
    SlowReleases,
    cancelled_while_away,
    owed_releases,
    slow_releases,
)

__all__ = ["slow_releases"]  # left35's fixture: a hub slow at releases

EXE = str(Path(sys.executable).parent / "tillpoint")

# ---------------------------------------- 1. sync now's round of the hold timer


def test_sync_now_gives_an_owed_release_no_longer_than_its_timeout_has_left(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`sync now --timeout`: no call to the hub is given longer than what
    is left of it), §11. The releases `sync now` sends after its push and pull (review
    35) were each given the till's `hub.redeem_timeout_ms` plus the hub's margin whatever
    was left of --timeout: with a redeem deadline of 20 s (allowed up to 60 s) and a hub
    that stops answering after the pull, `sync now --timeout 5` ran up to 25 s. Counted,
    not timed: the hub's handler reads the deadline each release came with."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    given: list[float | None] = []
    release = HubServicer.ReleaseRedemption

    def recording(self: Any, request: Any, context: Any) -> Any:
        given.append(context.time_remaining())
        return release(self, request, context)

    monkeypatch.setattr(HubServicer, "ReleaseRedemption", recording)
    data = tmp_path / "data"
    try:
        cancelled_while_away(hub, data, 2)
        assert owed_releases(data) == 2
        hub.restart()  # with the recording handler
        monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "20000")
        done = cli("sync", "now", "--timeout", "5")
        assert done.code == 0, done.err
        assert owed_releases(data) == 0
        assert len(given) == 2
        assert all(left is not None and left <= 5.0 for left in given), given
    finally:
        hub.stop()


@pytest.mark.slow  # a run and a sync now on one data directory, a slow hub: ~8 s
def test_sync_now_beside_a_running_till_on_its_data_directory_doubles_nothing_at_the_hub(
    tmp_path: Path, slow_releases: SlowReleases, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §9 (each transaction stored once), §11 (a release owed is sent until the
    hub takes it). A till comes back from an outage with sales in its outbox and holds
    cancelled while the hub was away; `tillpoint run` starts on its data directory and a
    `sync now` is run beside it at once (an operator's habit), both pushing and both
    sending the owed releases (review 35's round), to a hub slow at releases (their
    sends overlap). Found right: each sale is stored once at the hub, every release is
    taken (nothing held for the customer), `sync now` ends 0, neither says a Traceback."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "data"
    try:
        cancelled_while_away(hub, data, 8, sales=6)
        assert owed_releases(data) == 8
        hub.restart()  # the slow one
        conf = tmp_path / "tillpoint.toml"
        conf.write_text(
            f'device_id = "till-1"\ndata_dir = "{data}"\n[server]\nlisten = "127.0.0.1:0"\n'
            '[http]\nlisten = "127.0.0.1:0"\n[metrics]\nenabled = false\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        run = subprocess.Popen([EXE, "--config", conf, "run"], env=env, stderr=subprocess.PIPE)
        procs.append(run)
        done = subprocess.run(
            [EXE, "--config", conf, "sync", "now", "--timeout", "30", "--wait", "30"],
            env=env,
            capture_output=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
        assert b"Traceback" not in done.stderr
        deadline = time.monotonic() + 30
        while owed_releases(data) or len(hub.store.transactions("till-1")) < 6:
            assert time.monotonic() < deadline, "the releases or the sales never all went"
            assert run.poll() is None
            time.sleep(0.1)
        stored = hub.store.transactions("till-1")
        assert sorted(tx.receipt_id for tx in stored) == [f"s-{i}" for i in range(6)]
        assert len({tx.seq for tx in stored}) == 6
        assert hub.store.balance("c-1", datetime.now(UTC)).held == 0
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0
        assert run.stderr is not None
        assert b"Traceback" not in run.stderr.read()
    finally:
        hub.stop()


def test_sync_now_that_reaches_its_timeout_before_the_hub_answers_says_it_gave_up(
    tmp_path: Path, hub: LoopbackHub, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`sync now --timeout`: the command that reaches its deadline ends with
    exit 1 and one line, "sync now gave up at its deadline of S s (--timeout) …"). A
    deadline spent before the hub answered the first call (the mark it asks before
    pushing; a hub 0.5 s slow there, a --timeout of 0.3 s) said "the hub did not answer
    in time", the words of a hub too slow for the till's own call deadline (5 s here),
    not of the operator's --timeout."""
    enrolled_till(hub, tmp_path / "data", "till-1").stop()
    listed = HubServicer.ListTransactions

    def slowly(self: Any, request: Any, context: Any) -> Any:
        time.sleep(0.5)
        return listed(self, request, context)

    monkeypatch.setattr(HubServicer, "ListTransactions", slowly)
    hub.restart()  # with the slow handler
    done = cli("sync", "now", "--timeout", "0.3")
    assert done.code == 1
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0] == (
        "tillpoint: sync now gave up at its deadline of 0.3 s (--timeout) before the hub"
        " answered (nothing pushed; 0 transaction(s) still in the outbox, sent by"
        " `tillpoint run` or the next `sync now`)"
    )
    again = cli("sync", "now", "--timeout", "30")  # the hub was there all along
    assert again.code == 0, again.err


# ---------------------------------------- 2. the half-bound check at a restart


def _ours_closing(port: int) -> int:
    """How many of the kernel's TCP sockets on local `port` are closing (FIN_WAIT1/2,
    TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING): what a stopped process leaves."""
    closing = {"04", "05", "06", "08", "09", "0B"}
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if int(fields[1].rpartition(":")[2], 16) == port and fields[3] in closing:
                        found += 1
        except OSError:
            continue
    return found


def _grpc_status(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        answer = pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
        return str(answer.device_id)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="the kernel's tables (Linux)")
def test_run_restarted_at_once_on_its_ports_starts_beside_its_closing_connections(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §10 (a graceful stop; a port another program holds). A systemd restart
    right after a stop: the stopped `run` leaves its POS connections closing on its
    ports (FIN_WAIT2 and TIME_WAIT on the agent's side, a POS that keeps its side open).
    The start's half-bound check (review 35) reads the kernel's tables after grpcio's
    bind: none of those sockets listens, and the till starts at once on the same ports,
    `localhost` for gRPC (both loopbacks looked at). Found right."""
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    grpc_port, http_port = free_port(), free_port()
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'device_id = "till-1"\n[server]\nlisten = "localhost:{grpc_port}"\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [EXE, "--config", conf, "--data-dir", data, "run"], env=env, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    first = start()
    assert _grpc_status(f"127.0.0.1:{grpc_port}") == "till-1"
    kept = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    kept.request("GET", "/v1/status")  # a POS's keep-alive connection, left open
    assert kept.getresponse().read()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")  # and a channel, left open
    try:
        pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        assert _ours_closing(grpc_port) + _ours_closing(http_port) > 0
        second = start()  # at once, as `Restart=` does
        assert _grpc_status(f"localhost:{grpc_port}") == "till-1", second.poll()
        assert second.poll() is None
        fresh = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        fresh.request("GET", "/v1/status")
        assert fresh.getresponse().status == 200
        fresh.close()
    finally:
        channel.close()
        kept.close()


def _table_row(address_hex: str, port: int, inode: int) -> str:
    """A LISTEN row of /proc/net/tcp as the kernel writes it."""
    return (
        f"   0: {address_hex}:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000"
        f" 00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


_HEADING = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)


def test_a_till_whose_own_listener_the_tables_do_not_name_as_its_own_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (a port another program holds: exit 1). The half-bound check (review
    35) takes a listening row of the kernel's tables whose inode is none of this
    process's sockets for another program's. Where /proc does not give a socket's inode
    as this process's descriptors name it (a sandboxed kernel such as gVisor writes 0
    when it cannot stat a socket), the agent's own listener, grpcio's, read as another
    program's: "127.0.0.1:PORT is another program's", exit 1, at every start, a till
    that never starts. When no row on the port is this process's, the tables cannot
    tell its socket from another's: the probe alone decides, as on another system."""
    from tillpoint.agent import config
    from tillpoint.agent import server as server_module

    port = free_port()
    tcp = tmp_path / "tcp"  # what such a /proc says once grpcio has bound the port
    tcp.write_text(_HEADING + _table_row("0100007F", port, 0), encoding="ascii")
    monkeypatch.setattr(config, "_PROC_TCP", (str(tcp), str(tmp_path / "tcp6-absent")))
    agent = Agent(tmp_path / "data", "till-1")
    try:
        server, bound, _ = server_module.build_server(agent, f"127.0.0.1:{port}")
        try:
            assert bound == port
        finally:
            server.stop(None).wait(5)
    finally:
        agent.close()


def test_a_hub_whose_own_listener_the_tables_do_not_name_as_its_own_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: the same for `hub serve` (`HubServer.start` asks the same check)."""
    from tillpoint.agent import config

    port = free_port()
    tcp = tmp_path / "tcp"
    tcp.write_text(_HEADING + _table_row("0100007F", port, 0), encoding="ascii")
    monkeypatch.setattr(config, "_PROC_TCP", (str(tcp), str(tmp_path / "tcp6-absent")))
    hub = LoopbackHub(tmp_path / "hub", start=False)
    try:
        assert hub.server.start(f"127.0.0.1:{port}") == port
    finally:
        hub.server.stop()


def test_another_program_is_still_found_beside_a_listener_the_tables_name_as_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: where the tables do name this process's listener, another program's
    row on an address of the listen still counts (review 35's `localhost` with ::1
    taken): the self-check above leaves that finding as it was."""
    import socket

    from tillpoint.agent import config

    with socket.socket() as ours:
        ours.bind(("127.0.0.1", 0))
        ours.listen()
        port = ours.getsockname()[1]
        inode = os.fstat(ours.fileno()).st_ino
        tcp, tcp6 = tmp_path / "tcp", tmp_path / "tcp6"
        tcp.write_text(_HEADING + _table_row("0100007F", port, inode), encoding="ascii")
        tcp6.write_text(  # [::1]:PORT, another program's
            _HEADING.replace("local_address", "local_address" + " " * 24)
            + _table_row("00000000000000000000000001000000", port, 1),
            encoding="ascii",
        )
        monkeypatch.setattr(config, "_PROC_TCP", (str(tcp), str(tcp6)))
        monkeypatch.setattr(config, "_bindable", lambda ip: True)  # ::1 here or not
        got = config.others_listening(f"localhost:{port}", port, ours=True)
        assert got == [f"[::1]:{port}"]


@needs_ipv6
def test_a_taken_ipv6_listen_is_named_in_brackets_by_the_http_and_metrics_doors(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (a port another program holds: one line naming the address). The
    HTTP door and /metrics named an IPv6 listen without its brackets, "cannot listen on
    ::1:8061 for HTTP", an address that reads as a host and a port either way; gRPC's line
    named it as written. Found while putting the HTTP and gRPC listeners on one port."""
    import socket

    from tillpoint.agent import metrics
    from tillpoint.agent.errors import TillpointError
    from tillpoint.agent.http_api import HttpServer

    with socket.socket(socket.AF_INET6) as other:
        other.bind(("::1", 0))
        other.listen()
        port = other.getsockname()[1]
        agent = Agent(tmp_path / "data", "till-1")
        try:
            with pytest.raises(TillpointError) as http_refused:
                HttpServer(agent, f"[::1]:{port}")
            with pytest.raises(TillpointError) as metrics_refused:
                metrics.serve(metrics.Registry(), "::1", port)
        finally:
            agent.close()
    assert f"cannot listen on [::1]:{port} for HTTP: " in str(http_refused.value)
    assert f"cannot listen on [::1]:{port} for /metrics: " in str(metrics_refused.value)


# ---------------------------------------- 3. /openapi.json's examples, integers as strings


def _as_strings(value: Any) -> Any:
    """A request with each of its integers written as a JSON string, as proto3 JSON
    allows for every integer field ("8990" for 8990) and a proto3 JSON printer writes an
    int64 (Java's JsonFormat, protobuf-es)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {key: _as_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_strings(item) for item in value]
    return value


def test_every_example_request_with_its_integers_as_strings_is_answered_as_its_example(
    tmp_path: Path,
) -> None:
    """CONTRACT §12 (HTTP is proto3 JSON: an int64 as a number or a string). Each example
    request of /openapi.json (agent/openapi_examples.json), its integers written as JSON
    strings, sent over real HTTP to a till on the examples' snapshot and clock as the
    generator runs them, is answered 200 with the example's answer, value for value (a
    refusal's example, review 36's doc36, is sent as it is and answered as it says); and
    a Hold or Checkout retried in the other form is the same receipt (200, the same
    answer), not another body (409). Found right (doc35 sent the integers only)."""
    import json
    from datetime import datetime

    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.openapi_examples import DEVICE_ID, load

    steps = load()
    now = [datetime.fromisoformat("2000-01-01T00:00:00+00:00")]
    agent = Agent(tmp_path / "data", DEVICE_ID, clock=lambda: now[0])
    examples = Path(__file__).resolve().parents[1] / "examples"
    agent.load_snapshot(json.loads((examples / "snapshot.json").read_text(encoding="utf-8")))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()

    def send(path: str, body: Any) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            if body is None:
                conn.request("GET", path)
            else:
                raw = json.dumps(body, ensure_ascii=False).encode()
                conn.request("POST", path, raw, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            conn.close()

    try:
        wrong: list[str] = []
        strung = 0
        for step in steps:
            body = step.get("request")
            expected = step.get("status", 200)
            if expected == 503:  # a full ledger's refusals: test_review36_doc36 sends them
                continue
            if body is not None and "at" in body:
                now[0] = datetime.fromisoformat(body["at"])
            # A refusal's request is sent as it is (its fault may be a type's).
            sent = body if body is None or expected != 200 else _as_strings(body)
            strung += sent != body
            status, got = send(step["path"], sent)
            if step["path"] == "/v1/status":  # its moment and devices are the till's own
                continue
            if (status, got) != (expected, step["answer"]):
                wrong.append(f"{step['path']} {step['name']}: {status} {got}")
            if expected != 200:
                continue
            if body is not None and step["path"] in ("/v1/hold", "/v1/checkout"):
                again = send(step["path"], body)  # retried with its integers as numbers
                if again != (200, got):
                    wrong.append(f"{step['path']} {step['name']} retried: {again}")
        assert not wrong, "\n".join(wrong)
        assert strung >= 5  # the receipts' prices and points went as strings
    finally:
        server.stop()
        agent.close()


def test_a_whole_number_the_document_takes_and_the_agent_refuses_is_described(
    tmp_path: Path,
) -> None:
    """CONTRACT §12 (the 400s: "a number with a decimal point or an exponent is refused
    naming where it is"), /openapi.json. The document's integers are JSON Schema's, for
    which 8990.0 and 8.99e3 are the integer 8990 (a validating client or proxy passes
    them); the agent refuses them, 400. Each call with a whole number in its request now
    says so in its 400, so a POS team reading the document (or a client generated from
    it) learns it there, not from the till. Failed before: "malformed JSON, unknown
    field, out-of-range value"."""
    import json

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
    from tillpoint.agent.http_api import HttpServer, openapi

    doc = json.loads(json.dumps(openapi()))
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    pointer = "paths/~1v1~1quote/post/requestBody/content/application~1json/schema"
    validator = Draft202012Validator({"$ref": f"urn:openapi#/{pointer}"}, registry=registry)
    examples = Path(__file__).resolve().parents[1] / "examples"
    body = json.loads((examples / "receipt-card.json").read_text(encoding="utf-8"))
    body["lines"][0]["priceMinor"] = 5490.0
    assert not list(validator.iter_errors(body))  # the document takes it

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(json.loads((examples / "snapshot.json").read_text(encoding="utf-8")))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/v1/quote", json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 400  # the agent does not
        assert "decimal point" in json.loads(answer.read())["error"]["message"]
        conn.close()
    finally:
        server.stop()
        agent.close()
    # the calls whose request has a whole number (prices, amounts, points)
    for path in ("/v1/quote", "/v1/hold", "/v1/checkout", "/v1/refund"):
        said = doc["paths"][path]["post"]["responses"]["400"]["description"]
        assert "decimal point or an exponent" in said, (path, said)
