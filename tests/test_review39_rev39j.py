"""Review 39, rev39j: a second look at rev39g (an HTTP answer's progress by what the
client's kernel acknowledged, SIOCOUTQ; the reset with a linger of 0) and rev39h (a
serial job's rest offered to the port every 10 ms in the stop's grace; an integer
field's fraction told "write a whole number"), with real sockets, real ptys and the real
CLI.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest
from tillpoint.agent import http_api
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import CLI, snapshot
from .test_review39_rev39a import BIG_QUOTE, TIMEOUT
from .test_review39_rev39g import offers  # noqa: F401  (the fixture: an ~8 MB explain)

# ------------------------- an integer field's fraction, told in its own words (CONTRACT §3)


@pytest.mark.parametrize("device", ["lane_s", "till-7_ms", "kasse-points", "pos-percent"])
def test_a_fraction_in_applied_through_is_a_sequence_whatever_the_device_is_called(
    cli: CLI, tmp_path: Path, device: str
) -> None:
    """CONTRACT §3: `appliedThrough[device]` is a sequence number, and a device id is any
    1 to 64 characters without blanks or slashes (CONTRACT §10): `lane_s`, `kasse-points`.
    rev39h told a fraction there "write a whole number", but only after the field's last
    name was matched against the units' endings, which for this map is the device's id:
    `appliedThrough.lane_s: 1.5` was told "write a whole number of seconds", and
    `pos-percent` 'write it as a decimal string ("1.5")' (a decimal string there is
    refused next). Failing first."""
    snap = snapshot()
    snap["appliedThrough"] = {device: "__F__"}
    file = tmp_path / "fraction.json"
    file.write_text(json.dumps(snap).replace('"__F__"', "1.5"), encoding="utf-8")
    run = cli("snapshot", "load", file)
    assert run.code == 2, run.err
    assert run.err.count("\n") == 1, run.err
    assert run.err.endswith(
        f"appliedThrough.{device}: the number 1.5 has a decimal point: write a whole number\n"
    ), run.err


# ---------------------------------- an answer the stop meets unread (CONTRACT §12)


def _reading_to_the_end(sock: socket.socket) -> tuple[int, str]:
    """Read what comes until the connection ends: (bytes, how it ended)."""
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        return got, "reset"
    except TimeoutError:
        return got, "no end"
    return got, "orderly end"


def test_a_stop_resets_a_connection_whose_answer_is_still_unread(
    offers: Agent,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CONTRACT §12: a graceful stop gives in-flight calls the grace, and a connection
    past its answer's time is reset (rev39g: so that no cut answer comes later, ending
    cleanly). A POS that had not read its ~8 MB answer when the stop came (its writer
    paused, its answer's 10 s not over at the grace's end) was neither reset nor closed:
    the server stopped and left the socket as it was, the kernel sending the ~3.8 MB it
    held whenever the POS read, and then nothing (in `run`, the process's exit closed it:
    the rest, then an orderly end, a cut answer with a clean close). Now the connections
    left at the grace's end are reset, as the answer's time resets one. Failing first
    (3.8 MB, then no end at all in 5 s). Here the grace is 1 s."""
    monkeypatch.setattr(http_api, "GRACE_S", 1)
    srv = HttpServer(offers, "127.0.0.1:0")
    srv.start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    with sock:
        try:
            sock.connect(("127.0.0.1", srv.port))
            sock.settimeout(5.0)
            sock.sendall(BIG_QUOTE)
            assert sock.recv(1) == b"H"
            deadline = time.monotonic() + TIMEOUT
            while not any(  # the answer written as far as the kernel takes it
                c.flow.write_paused for c in srv.serve.server.server_state.connections
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            started = time.monotonic()
            srv.stop()
            took = time.monotonic() - started
        got, end = _reading_to_the_end(sock)
    assert took < http_api.GRACE_S + 2.0, took
    assert end == "reset", (got, end)
    assert got <= 64 << 10, f"{got} bytes of the answer came after the stop"


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback here")
def test_an_answer_s_progress_over_ipv6_is_what_the_client_took() -> None:
    """CONTRACT §12 (the door listens on IPv6 too: `[::1]:8080`): `_unacknowledged`,
    asyncio's buffer and the kernel's send queue (`SIOCOUTQ`), reads a TCP connection
    over IPv6 as over IPv4: all of an answer a client has not read counts (the kernel's
    part too, not only asyncio's), and nothing once it has read it all. Found right."""
    import asyncio

    size = 2 << 20

    async def main() -> tuple[int, int, int]:
        served: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

        class _Answer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                transport.write(b"x" * size)
                served.set_result(transport)

        listener = await asyncio.get_running_loop().create_server(_Answer, "::1", 0)
        port = listener.sockets[0].getsockname()[1]
        client = socket.socket(socket.AF_INET6)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(client, ("::1", port)), 5
            )
            transport = await asyncio.wait_for(served, 5)
            await asyncio.sleep(0.2)  # the kernel takes what it will
            unread, own = http_api._unacknowledged(transport), transport.get_write_buffer_size()
            got = 0
            deadline = time.monotonic() + TIMEOUT
            while got < size and time.monotonic() < deadline:
                got += len(
                    await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 1 << 20), 5)
                )
            await asyncio.sleep(0.05)  # the last acknowledgement
            after = http_api._unacknowledged(transport)
            transport.close()
            return unread, own, after
        finally:
            client.close()
            listener.close()
            await listener.wait_closed()

    unread, own, after = asyncio.run(main())
    assert own < unread <= 2 << 20, (own, unread)
    assert unread >= (2 << 20) - (256 << 10), unread  # only what the client's kernel holds
    assert after == 0
