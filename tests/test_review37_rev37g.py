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
- A `hub.address` in gRPC's target form (`dns:///hub.corp:50070`, `ipv4:10.0.0.5:50070`),
  which the till hands to gRPC as it is and which worked before, was refused by rev37d's
  check as "an IPv6 address goes in brackets", exit 2 at `config check` and at every
  command: a till upgraded with it stopped and was not restarted. CONTRACT §10.

What it found right (tried, no fault): a keep-alive connection used for 3,000 calls is
never closed nor answered `Connection: close`; a request with Transfer-Encoding and
Content-Length, in HTTP/1.1 or 1.0, is answered once and nothing pipelined after it is
served, a token refusal of it still arrives (401); an `Authorization` folded over two
lines is read, an empty one beside the token is two fields (401); gRPC's one
`authorization` value is served; `status`'s re-read is bounded (3 tries); `sync now`'s
gave-up records ONLINE only after an answer of this command, a refusal records OFFLINE;
`print retry` changes a PENDING job only by one UPDATE the worker's claim (PENDING to
SENDING) cannot cross, and a job SENDING is never put back; the packaged example
configuration and the documents' one TOML block pass `config check`; `localhost`, a name
with `_`, `[fe80::1%eth0]:50070` pass as `hub.address`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

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
            # the request is under way (its head read, the call started); waited for, as
            # what follows (review 40: 0.2 s and 0.1 s sleeps a loaded machine could pass)
            _until(lambda: [c.cycle is not None for c in _connections(srv)] == [True])
            stopper.start()
            deadline = time.monotonic() + TIMEOUT
            while srv.serve.server.started and not _shut(srv):  # uvicorn's shutdown began
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # ... and, in the same step, the connection told (loop's thread): its call's
            # answer is to close it
            _until(lambda: [c.cycle.keep_alive for c in _connections(srv)] == [False])
            sock.sendall(IDENTIFY[5:])
            got = read_all(sock)
    finally:
        if stopper.ident is None:
            srv.stop()
        stopper.join(TIMEOUT)
    ((status, headers, body),) = answers_of(got)
    assert json.loads(body)["status"] == "FOUND"  # served within the grace
    assert (status, headers.get("connection")) == (200, "close")


def _connections(srv: HttpServer) -> list[Any]:
    return list(srv.serve.server.server_state.connections)


def _until(condition: Any) -> None:
    deadline = time.monotonic() + 6 * TIMEOUT
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


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


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("dns:///hub.corp:50070", False),
        ("dns://10.0.0.53/hub.corp:50070", False),
        ("ipv6:[::1]:50070", False),
        ("unix:/run/tillpoint-hub.sock", False),
        ("dns:///hub corp:50070", True),  # a blank: no name has one
        ("dns:///hub.corp:50070\x00x", True),  # a NUL cut gRPC's target short
        ("dns:50070", False),  # a host named "dns" and its port, as before
        ("::1", True),  # still a bare IPv6 address (rev37d)
    ],
)
def test_a_grpc_target_name_is_checked_for_blanks_and_control_characters_only(
    address: str, refused: bool
) -> None:
    """CONTRACT §10 (DECISIONS, review 37): one check for `hub.address` and `hub enroll
    --address`; a gRPC target name is gRPC's to read."""
    from tillpoint.agent.config import hub_address_problem

    for port_required in (True, False):
        assert (hub_address_problem(address, port_required=port_required) is not None) is refused


# ---------------------------------------------------------------- CONTRACT §12: gRPC's token


def test_grpc_one_token_beside_a_binary_header_and_other_metadata_is_served(
    agent: Agent,
) -> None:
    """CONTRACT §12 (the token's decision): two `authorization` values are refused since
    spec37c; one, among other metadata (a binary `-bin` header, a POS's own keys, a key
    that only begins with "authorization"), is still the call served."""
    import grpc
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    from .conftest import grpc_served

    metadata = [
        ("x-pos-lane", "7"),
        ("authorization-bin", b"\x00\xffnot a token"),
        ("authorization", "Bearer s3cret-token"),
        ("authorizationx", "Bearer wrong"),
    ]
    with (
        grpc_served(agent, token="s3cret-token") as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.PosAgentStub(channel)
        answer = stub.Identify(
            pb.IdentifyRequest(text="2770000000017"), metadata=metadata, timeout=5
        )
        assert answer.status == pb.FOUND
