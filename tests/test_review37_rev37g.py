"""Review 37, rev37g: an adversarial review of this session's HTTP, client and sync-now
changes (spec37c, rev37d, rev37b, left37), with real parts: a real HTTP interface on a
loopback port spoken to with raw sockets, real configuration files through the CLI.

What it found, each shown here:

- A call already in flight when `HttpServer.stop` began (its body still arriving, a call
  waiting on the hub) was answered without `Connection: close`, and the connection was
  then closed unasked: spec37c's "from the moment shutdown starts every answer says
  Connection: close" held only for requests that reached the agent after the stop began.
  uvicorn's shutdown marks such a call's connection not to be kept but said nothing in
  the answer; a POS that reused the connection met "closed without response"
  (RFC 9112 §9.6). CONTRACT §12.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub

from .conftest import CLI, enrolled_till
from .test_review37_spec37c import answers_of

TIMEOUT = 10.0
IDENTIFY = json.dumps({"text": "2770000000017"}).encode()


def read_all(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


# ---------------------------------------------------------------- CONTRACT §12: stopping


def test_a_call_in_flight_when_shutdown_starts_is_answered_with_connection_close(
    agent: Agent,
) -> None:
    """CONTRACT §12: from the moment shutdown starts every answer says `Connection: close`.
    A call whose head arrived before the stop and whose body arrives during it (a slow
    POS, or a call still running) is answered within the grace, and its answer says the
    connection ends, as it then does."""
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    stopper = threading.Thread(target=srv.stop)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
            sock.sendall(
                b"POST /v1/identify HTTP/1.1\r\nHost: till\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(IDENTIFY), IDENTIFY[:5])
            )
            time.sleep(0.2)  # the request is under way (its head read, the call started)
            stopper.start()
            deadline = time.monotonic() + TIMEOUT
            while srv.serve.server.started and not _shut(srv):  # uvicorn's shutdown began
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.1)  # ... and, in the same step, the connections (loop's thread)
            sock.sendall(IDENTIFY[5:])
            got = read_all(sock)
    finally:
        if stopper.ident is None:
            srv.stop()
        stopper.join(TIMEOUT)
    ((status, headers, body),) = answers_of(got)
    assert json.loads(body)["status"] == "FOUND"  # served within the grace
    assert (status, headers.get("connection")) == (200, "close")


def _shut(srv: HttpServer) -> bool:
    """Whether uvicorn has asked the open connections to finish (its listeners closed)."""
    return all(not s.is_serving() for s in srv.serve.server.servers)


# ---------------------------------------------------------------- CONTRACT §10: hub.address


@pytest.mark.parametrize("form", ["dns:///127.0.0.1:{port}", "ipv4:127.0.0.1:{port}"])
def test_a_hub_address_in_grpc_target_form_still_syncs(
    tmp_path: Path, hub: LoopbackHub, cli: CLI, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """CONTRACT §10: `hub.address` is what the till dials with gRPC, and gRPC takes a
    target name (`dns:///hub.corp:50070`, the form gRPC's own documents give for a name
    to resolve, with every address of it; `ipv4:10.0.0.5:50070`). Such a configuration
    worked until rev37d's check read the scheme's colon as a bare IPv6 address: `config
    check` and every command said "an IPv6 address goes in brackets", exit 2, so a till
    upgraded with it stopped and was not restarted."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", form.format(port=hub.port))
    checked = cli("config", "check")
    assert checked.code == 0, checked.err
    done = cli("sync", "now", "--timeout", "30")
    assert done.code == 0, done.err
