"""Review 39, rev39j: a second look at rev39g (an HTTP answer's progress by what the
client's kernel acknowledged, SIOCOUTQ; the reset with a linger of 0) and rev39h (a
serial job's rest offered to the port every 10 ms in the stop's grace; an integer
field's fraction told "write a whole number"), with real sockets, real ptys and the real
CLI.

1. CONTRACT §3: `appliedThrough`'s seqs are told "write a whole number" only after the
   units' endings were read off the field's last name, which in that map is a device's
   id: `lane_s: 1.5` was told seconds, `pos-percent` a decimal string. Fixed (the map
   first). `_PLAIN_WHOLE` checked: no money or quantity field of the proto, a snapshot or
   a hub import has a last name in it (the proto's `limit` counts transactions, its
   `offset`s are bytes).
2. CONTRACT §12, a stop: a connection whose answer waited unread when the grace ended
   was left as it was by uvicorn, neither reset nor closed (the kernel's ~3.8 MB sent
   whenever the POS read, then nothing; at `run`'s exit an orderly end). Now reset.
   Found right: the linger-0 reset never meets an answer taken whole (the timer runs
   only while asyncio's buffer holds bytes the kernel never had, and is cancelled as it
   empties), SIOCOUTQ reads an IPv6 connection as an IPv4 one (the door binds TCP only,
   no Unix socket), the ioctl runs at a pause and at the timer, not at each write.
3. CONTRACT §7, rev39h's grace on a serial port: a printer that stops is offered the
   rest about once each 10 ms, no busy loop; one unplugged (EIO) in the grace ends the
   write at once, not DONE. Found right.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

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
            # the ~8 MB answer's first byte: its pricing took more than 5 s on a loaded
            # machine (TimeoutError; review 40, flake40b)
            sock.settimeout(30.0)
            sock.sendall(BIG_QUOTE)
            assert sock.recv(1) == b"H"
            sock.settimeout(5.0)  # the fault: no end at all after the stop
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


# ------------------- a serial job's rest in the stop's grace, offered every 10 ms (CONTRACT §7)


def _serial(rate: int, slave: int) -> Any:
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.transport import SerialTransport

    transport = SerialTransport(
        PrinterConfig(
            kind="serial", device=os.ttyname(slave), baudrate=rate * 10, write_timeout_s=10.0
        )
    )
    transport.open()
    return transport


def test_a_stopped_printer_is_offered_the_rest_every_10_ms_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The grace offers a job's rest to the port with `os.write` every 10 ms, without
    `select` (rev39h): a printer that stops taking bytes as the stop comes (flow control
    held) is offered it about once each 10 ms for the grace (twice the rest's line time,
    0.1 s at least), not in a busy loop, and the write is broken off when the grace ends,
    saying how much went out (the job PENDING, printed again whole; §7). On a UART's port
    (rev39h's `_Uart` over a real pty: its 4,096 bytes' room, writable below 256). Found
    right."""
    from tillpoint.printer import transport as transport_mod
    from tillpoint.printer.errors import ConnectionLost

    from .test_review39_left39 import _CountingLine
    from .test_review39_rev39h import _Uart

    rate = 23_040  # a 230,400-baud line
    master, slave = os.openpty()
    line = _CountingLine(master, rate)
    transport = _serial(rate, slave)
    job = b"\x1b@" + b"x" * 6_000 + b"\n\x1dV\x00"  # the rest past the fill: 0.08 s
    stopped: list[float] = []

    def stop() -> None:
        stopped.append(time.monotonic())
        line.hold.set()  # the printer stops reading
        transport.abort()

    uart = _Uart(line, transport._port.fd, stop)
    offered: list[float] = []
    write = uart.write

    def counted(fd: int, data: Any) -> int:
        if stopped and fd == transport._port.fd:
            offered.append(time.monotonic())
        return write(fd, data)

    monkeypatch.setattr(uart, "write", counted)
    monkeypatch.setattr(transport_mod, "select", uart)
    monkeypatch.setattr(transport_mod, "os", uart)
    try:
        with pytest.raises(ConnectionLost, match=r"broken off \(\d+ of 6006 bytes went out\)"):
            transport.write(job)  # 4,096 and what the line read as the stop came
        took = time.monotonic() - stopped[0]
    finally:
        line.close()
        transport.close()
        os.close(master)
        os.close(slave)
    assert 0.1 <= took < 1.0, took  # the grace: 0.166 s (twice 1,910 bytes' line time)
    assert 5 <= len(offered) <= took / 0.01 + 3, (len(offered), took)


def test_a_printer_unplugged_in_the_grace_ends_the_write_at_once_not_done() -> None:
    """A serial printer unplugged while the stop's grace offers it a job's rest (here the
    pty's printer end closed: the port's writes fail, EIO) ends the write at once with
    "went away", the job not DONE (its rest never reached the port; §7: PENDING, printed
    again whole at the next start), not after the grace, and not in a loop of failing
    writes. Found right."""
    from tillpoint.printer.errors import ConnectionLost

    from .test_review39_left39 import _CountingLine

    rate = 23_040
    master, slave = os.openpty()
    line = _CountingLine(master, rate)
    transport = _serial(rate, slave)
    job = b"\x1b@" + b"y" * 40_000 + b"\n\x1dV\x00"  # past what the pty holds (~20 KB)
    outcome: list[Any] = []

    def write() -> None:
        try:
            transport.write(job)
            outcome.append("whole")
        except ConnectionLost as exc:
            outcome.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(line.got) < 4096:  # the line has begun taking the job
            assert time.monotonic() < deadline
            time.sleep(0.005)
        transport.abort()  # the stop: about 0.8 s of the job left, its grace ~1.6 s
        time.sleep(0.1)
        line.close()
        unplugged = time.monotonic()
        os.close(master)  # the printer unplugged
        thread.join(TIMEOUT)
        took = time.monotonic() - unplugged
    finally:
        thread.join(TIMEOUT)
        transport.close()
        os.close(slave)
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost), outcome
    assert "went away" in str(outcome[0]), outcome
    # at once, not at the grace's end (~1.6 s after the stop, ~1.5 s after the unplug):
    # halfway, a loaded machine's room (0.5 s until review 45, timing45); "went away",
    # not the grace's "broken off", tells the two apart without a clock
    assert took < 0.75, took
