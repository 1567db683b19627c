"""Review 34 (left34): small faults left by reviews 32 and 33, each shown first by a test
here (CONTRACT §7, §10, §16). Real parts: SQLite ledgers, a TCP printer on the raw 9100
protocol, `tillpoint` in-process and as processes, the hub on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.printer.decode import Decoder
from tillpoint.printer.virtual import VirtualPrinter
from tillpoint.sync.loopback import LoopbackHub, receipt, wait_for

from .conftest import CLI
from .test_hub_postgres import two_servers  # noqa: F401 (a fixture)
from .test_printer_queue import add_job, payload, worker

# ---------------------------------------------------------------- 1. the test page after a torn job


def test_the_test_page_after_a_torn_job_is_cut_off_from_it_and_clears_the_mark(
    cli: CLI, tmp_path: Path
) -> None:
    """CONTRACT §7. A printer drops a five-offer coupon 800 bytes in: the job FAILED, its
    torn part on the paper with no cut after it, the ledger's `print_torn` mark kept for
    the next job. `tillpoint print test` sent its page without that mark: the page was
    glued onto the torn part (one piece of paper, the coupon's first offers on top of
    the test page). It now begins with the cut a job begins with, and, printed whole,
    clears the mark as a job does (the next coupon starts without a needless cut)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ledger = data_dir / "ledger.db"
    offer = payload()["offers"][0]
    five = [dict(offer, id=f"o-{i}", code=f"TP1-o-{i}") for i in range(1, 6)]
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port, max_send_failures=1)
        try:
            add_job(ledger, payload("s1-t1-000123", offers=five))
            printer.close_after_bytes = 800
            w.run_once()
            job = w.job("s1-t1-000123")
            assert job is not None and job["state"] == "FAILED", job
        finally:
            w.close()
        printer.close_after_bytes = None
        config = tmp_path / "tillpoint.toml"
        config.write_text(
            f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {printer.port}\n'
        )
        run = cli("--config", config, "print", "test")
        assert run.code == 0, run.err
        printer.wait_for(1)
        paper = Decoder()
        paper.feed(bytes(printer.received))
    pieces = [d for d in paper.documents if d.complete]
    [page] = [d for d in pieces if "ТЕСТОВАЯ СТРАНИЦА" in d.text]
    assert "ВАШИ ПРЕДЛОЖЕНИЯ" not in page.text, page.text  # not glued on
    assert page.codes == ["TP1-TEST"]
    conn = sqlite3.connect(ledger)
    try:
        kept = conn.execute("SELECT value FROM device WHERE key = 'print_torn'").fetchall()
    finally:
        conn.close()
    assert kept == []  # the page went out whole with its cut: nothing torn left


def test_a_test_page_cut_short_leaves_the_mark_for_the_next_coupon(tmp_path: Path) -> None:
    """CONTRACT §7: a test page the printer dropped mid-way is a torn part too: the mark is
    set before its bytes go (with its code), and the next coupon begins with the cut,
    also from the worker of a `run` started before the page (it reads the mark again
    when it claims a job: it kept the mark in memory from its start only)."""
    from tillpoint.printer.cli_support import print_test_page
    from tillpoint.printer.errors import PrinterError

    from .test_printer_queue import config as printer_config

    ledger = tmp_path / "ledger.db"
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)  # `run` serving meanwhile: its worker started
        try:
            printer.close_after_bytes = 300
            # dropped while sent or before the confirmation: torn either way
            with contextlib.suppress(PrinterError):
                print_test_page(printer_config(printer.port), ledger=ledger)
            conn = sqlite3.connect(ledger)
            try:
                [(kept,)] = conn.execute("SELECT value FROM device WHERE key = 'print_torn'")
            finally:
                conn.close()
            assert json.loads(kept) == ["TP1-TEST"]
            printer.close_after_bytes = None
            before = len(printer.received)
            add_job(ledger)
            w.run_once()
            assert w.job("s1-t1-000123")["state"] == "DONE"  # type: ignore[index]
        finally:
            w.close()
        sent = bytes(printer.received[before:]).replace(b"\x10\x04\x02", b"")
        sent = sent.replace(b"\x10\x04\x04", b"")
    assert sent.startswith(b"\x00" * 96), sent[:40]  # the separator, then the coupon


# ---------------------------------------------------------------- 2. the releases owed for hub_asks


class Crash(BaseException):
    """The till's process dying right after the hub answered (nothing after it runs)."""


def test_the_release_of_a_hold_the_till_never_stored_is_counted_as_owed(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §11: `tillpoint_hub_calls_owed{call="release"}` counts the releases that
    keep a customer's points held at the hub from every till. The till died between the
    hub's grant and its commit (a `hub_asks` note, no stored receipt): the hub holds 100
    of Anna's points until the hold timer's release reaches it, and the gauge said 0
    owed while the hub was away. A hold on its way (its note written, its grant not yet
    stored) is not owed: it is not counted."""
    from tillpoint.agent.app import till_agent

    from .conftest import PassThroughHub
    from .test_review26_life26 import BIG, CARD, DEVICE, enrolled, held_at_hub

    till = enrolled(hub, tmp_path)
    real = till.agent.hub
    seen: list[dict[str, int]] = []

    class Looks(PassThroughHub):
        def granted(self, grant: Any) -> None:
            seen.append(till.agent.hub_calls_owed())  # on its way: owed nothing yet

    class Dies(PassThroughHub):
        def granted(self, grant: Any) -> None:
            raise Crash

    till.agent.hub = Looks(real)
    till.agent.hold(receipt_from_json(receipt("r-fine", CARD, redeem=10, lines=BIG)))
    assert seen == [{"release": 0, "shrink": 0}]
    till.agent.cancel("r-fine")
    till.agent.hub = Dies(real)
    with pytest.raises(Crash):
        till.agent.hold(receipt_from_json(receipt("r-lost", CARD, redeem=100, lines=BIG)))
    till.agent.close()  # what a SIGKILL leaves: the ledger as committed
    assert held_at_hub(hub) == 100
    hub.stop()  # away when the restarted till's hold timer first tries
    again = till_agent(till.data_dir, DEVICE, hub=real)
    try:
        assert again.retry_hub_releases() == 0
        assert again.hub_calls_owed() == {"release": 1, "shrink": 0}
        hub.start()  # back: the link's backoff may put the first round off a little
        wait_for(lambda: again.retry_hub_releases() == 1, timeout=10.0, every=0.1)
        assert held_at_hub(hub) == 0
        # Review 45 (ask45): still counted owed while a later request of the lost Hold may
        # land a grant (`LATE_GRANT_S` from its last request): the hub freed the points,
        # and the release is sent again at the next rounds until then
        assert again.hub_calls_owed() == {"release": 1, "shrink": 0}
    finally:
        again.close()
        till.link.close()
        till.authoriser.close()


# ---------------------------------------------------------------- 3. a close with unread input


def test_a_close_with_status_bytes_unread_still_delivers_the_tail_and_a_fin() -> None:
    """CONTRACT §7. A network printer sent bytes the agent never read (status it sends by
    itself, a late answer) and is still taking the job (busy printing: the job's tail in
    the agent's send queue). The close, `shutdown(SHUT_WR)` then `close()`, became a
    reset on Linux (data unread at the close): the tail was thrown away and the printer
    got an RST. With `confirm = false` nothing noticed: a coupon without its end, no
    cut. The close now drains the input (a short explicit bound) before it closes: the
    printer gets every byte and a FIN."""
    import socket
    import threading

    from tillpoint.printer.transport import NetworkTransport

    job = bytes(range(256)) * 2048  # 512 KiB: more than both ends' buffers take at once
    closed = threading.Event()
    got: dict[str, Any] = {}
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5.0)

    def printer() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5.0)
        with conn:
            conn.sendall(b"\x14\x00\x00\x0f")  # ASB-like status, never asked for
            closed.wait(5.0)  # busy printing until the agent has closed
            data = bytearray()
            try:
                while chunk := conn.recv(65536):
                    data += chunk
                got["end"] = "FIN"
            except OSError as exc:
                got["end"] = type(exc).__name__
            got["data"] = bytes(data)

    thread = threading.Thread(target=printer, daemon=True)
    thread.start()
    try:
        transport = NetworkTransport(
            "127.0.0.1", listener.getsockname()[1], 2.0, 5.0, close_drain_s=0.5
        )
        transport.open()
        transport.write(job)
        transport.close()
        closed.set()
        thread.join(10.0)
    finally:
        closed.set()
        listener.close()
    assert got.get("end") == "FIN", got.get("end")
    assert got["data"] == job


# ---------------------------------------------------------------- 4. port 0, a name of two

# Run inside a user, network and mount namespace of its own (`unshare -rnm`): `localhost`
# is 127.0.0.1 and ::1 (a hosts file of its own), IPv4 sorted first (a gai.conf of its
# own), the ports the system picks for a door are 40000-40003, and [::1]:40000-40002
# belong to another program. A door asked for `localhost:0` that takes a port on
# 127.0.0.1 which is another program's on ::1 listens on one address only (gRPC: a POS
# connecting to `localhost` over ::1 reaches the other program; the hub's gRPC too) or
# fails to start (HTTP).
PORT_ZERO_SCRIPT = r"""
import json, socket, sys, tempfile, time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.agent.config import listen_addresses
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent

assert [f for f, _ in listen_addresses("localhost", 0)] == [socket.AF_INET, socket.AF_INET6]
held = []
for port in (40000, 40001, 40002):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::1", port))
    s.listen()
    held.append(s)
agent = Agent(Path(tempfile.mkdtemp()) / "data", "till-1")
out = {"grpc": [], "http": []}
RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def picking(narrow):  # the doors pick from 40000-40003; a client's connect needs more
    RANGE.write_text("40000 40003" if narrow else "30000 39999")
for _ in range(8):
    picking(True)
    try:
        server, port, _ = build_server(agent, "localhost:0")
    except Exception as exc:
        out["grpc"].append(str(exc))
        continue
    picking(False)
    server.start()
    answered = []
    for host in ("127.0.0.1", "[::1]"):
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            try:
                stub = health_pb2_grpc.HealthStub(channel)
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                answered.append(host)
            except grpc.RpcError as exc:
                answered.append(exc.code().name)
    out["grpc"].append(answered)
    server.stop(None).wait(5)
for _ in range(8):
    picking(True)
    try:
        http = HttpServer(agent, "localhost:0")
    except Exception as exc:
        out["http"].append(str(exc))
        continue
    picking(False)
    http.start()
    answered = []
    for host in ("127.0.0.1", "::1"):
        # the client closes first: no TIME_WAIT left on the door's port for the next pick
        try:
            with socket.create_connection((host, http.port), timeout=2) as c:
                c.sendall(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
                line = c.recv(64).split(b"\r\n")[0]
            name = f"[{host}]" if ":" in host else host
            answered.append(name if b" 200 " in line else line.decode("latin-1"))
        except OSError as exc:
            answered.append(type(exc).__name__)
    out["http"].append(answered)
    http.stop()
agent.close()
from tillpoint.sync.loopback import LoopbackHub

hub = LoopbackHub(Path(tempfile.mkdtemp()) / "hub", start=False)
out["hub"] = []
for _ in range(3):
    picking(True)
    port = hub.server.start("localhost:0")
    picking(False)
    mine = socket.socket(socket.AF_INET6)
    mine.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        mine.bind(("::1", port))
        out["hub"].append("not on ::1")
    except OSError:  # taken: the hub's, unless it is the other program's
        out["hub"].append("another program's ::1" if 40000 <= port <= 40002 else "both")
    finally:
        mine.close()
    hub.server.stop(grace=0)
    # grpcio may close the stopped listener a moment after stop's event: the next pick
    # (one port free on both addresses in the narrowed range) waits for it, 10 s at most
    for _ in range(200):
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family) as probe:
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((host, port))
            break
        except OSError:
            time.sleep(0.05)
    hub.server = type(hub.server)(hub.dir, hub.config, clock=hub.clock)
print(json.dumps(out))
"""


def _in_own_namespace(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    gai = tmp_path / "gai.conf"
    gai.write_text("precedence ::ffff:0:0/96 100\nprecedence ::1/128 50\n")
    (tmp_path / "script.py").write_text(script)
    setup = (
        f"mount --bind {hosts} /etc/hosts && touch /etc/gai.conf 2>/dev/null;"
        f" mount --bind {gai} /etc/gai.conf && ip link set lo up"
        f' && exec "{sys.executable}" {tmp_path / "script.py"}'
    )
    return subprocess.run(
        ["unshare", "-rnm", "sh", "-c", setup],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_port_zero_on_localhost_binds_one_port_on_both_addresses(tmp_path: Path) -> None:
    """CONTRACT §10: `[server] listen` / `[http] listen` = `localhost:0` (a free port) where
    `localhost` is 127.0.0.1 and ::1. The port picked on the first address was bound on
    the second as it came: gRPC, finding it another program's there, listened on
    127.0.0.1 alone (grpcio's "Only 1 addresses added out of total 2", a log line), so a
    POS connecting to localhost over ::1 reached the other program; the HTTP door
    failed to start ("Address already in use"). A free port now binds on every address
    of the name, or another is picked."""
    probe = subprocess.run(
        ["unshare", "-rnm", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0 or shutil.which("ip") is None:
        pytest.skip(f"no user and network namespaces here: {probe.stderr!r}")
    run = _in_own_namespace(tmp_path, PORT_ZERO_SCRIPT)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.splitlines()[-1])
    both = ["127.0.0.1", "[::1]"]
    assert out["grpc"] == [both] * 8, out
    assert out["http"] == [both] * 8, out
    assert out["hub"] == ["both"] * 3, out  # `hub serve`'s listen, the same way


# ---------------------------------------------------------------- 5. renumber and a refund's points


def test_a_refund_numbered_again_keeps_its_points_with_it_when_its_customer_had_left(
    tmp_path: Path,
) -> None:
    """CONTRACT §9, §16. Anna buys (seq 1, 53 points redeemed); the hub drops her from
    the snapshot; her refund (seq 2) still gives her points back (its point rows name her,
    from the sale), but its journal row has no customer (she was not in the snapshot).
    The hub holds seq 2 with another transaction of this device (a wiped till's old
    disk): the refund is numbered again (seq 3). `renumber` moved the point rows of the
    journal's customer only: none, so the refund's rows stayed under seq 2. Anna back
    in the next snapshot, which counted the device up to seq 2 (the other transaction),
    the till read the refund's rows as counted by the hub: her balance left out the 53
    points given back (and kept the 47 earned ones taken back) until the hub published
    past seq 3."""
    from tillpoint.agent import ledger
    from tillpoint.agent.results import refund_from_json
    from tillpoint.agent.service import Agent

    from .conftest import receipt, snapshot

    base = snapshot()
    anna_card = base["cards"][0]["number"]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(base)
        sold = agent.checkout(receipt_from_json(receipt("r-1", anna_card, redeemPoints=100)))
        assert sold.redeemed_points > 0
        gone = snapshot(
            version=2,
            customers=base["customers"][1:],
            cards=base["cards"][1:],
            appliedThrough={"till-1": 1},
        )
        agent.load_snapshot(gone)
        refund = agent.refund(
            refund_from_json(
                {
                    "refundId": "rf-1",
                    "receiptId": "r-1",
                    "at": "2026-11-23T11:00:00+03:00",
                    "lines": [{"sku": "4601234000017", "qty": "2"}],
                }
            )
        )
        assert refund.returned_points == sold.redeemed_points
        with agent._lock, agent._write() as conn:  # the hub's answer: seq 2 is taken
            assert ledger.renumber(conn, "till-1", 2, 2) == 3
        counted = 1200 - sold.redeemed_points + sold.earned_points  # the hub counted seq 1
        back = snapshot(
            version=3,
            customers=[dict(base["customers"][0], balancePoints=counted), *base["customers"][1:]],
            appliedThrough={"till-1": 2},
        )
        agent.load_snapshot(back)
        balance = agent.balance(anna_card)
        # the refund (seq 3, not counted by the hub yet): the redeemed points back, the
        # earned ones taken back
        expected = counted + refund.returned_points - refund.taken_back_points
        assert balance.available_points + balance.pending_points == expected, balance
    finally:
        agent.close()


# ---------------------------------------------------------------- 7. a shrink and an authorisation


def test_a_shrink_and_another_tills_authorisation_interleaved_on_postgresql(
    two_servers: Any,  # noqa: F811  (the fixture imported above)
    pg_url: str,
) -> None:
    """CONTRACT §11 (a late grant shrunk to what the OFFLINE hold uses; the rest spendable
    at once) on the PostgreSQL hub, two servers over one database. The shrink takes no
    customer lock ("it only frees points"); shown here, not reasoned: (1) the shrink
    waits on the hold's row (another transaction holds it) while another till's
    authorisation of the same customer runs: that one sees the hold whole and is not
    held up by it; (2) the authorisation waits on the customer's lock while the shrink
    runs: the shrink is not held up, and the authorisation, let go, sees the hold shrunk.
    Afterwards the balance's holds are the sum of the holds, never above the balance."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    import psycopg

    a, b = two_servers
    now = datetime.now(UTC)
    assert a.authorise("till-a", "r-a", "c-1", 1000, now, [], now, 900.0).authorised == 1000
    assert b.balance("c-1", now).held == 1000

    def holds() -> dict[str, int]:
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT receipt_id, points FROM holds WHERE customer_id = 'c-1'"
                " AND state = 'ACTIVE' ORDER BY receipt_id"
            ).fetchall()
        return {str(r): int(p) for r, p in rows}

    with ThreadPoolExecutor(max_workers=2) as pool, psycopg.connect(pg_url) as other:
        # (1) the hold's row locked by another transaction: the shrink waits on it
        other.execute(
            "SELECT 1 FROM holds WHERE device_id = 'till-a' AND receipt_id = 'r-a' FOR UPDATE"
        )
        shrinking = pool.submit(a.shrink, "till-a", "r-a", 200, [], placed_by=now)
        with pytest.raises(TimeoutError):
            shrinking.result(timeout=0.5)  # waiting on the row
        granted = b.authorise("till-b", "r-b", "c-1", 1200, now, [], now, 900.0)
        assert granted.authorised == 200  # the hold still whole: 1200 - 1000, not more
        other.commit()
        assert shrinking.result(timeout=10) is True
        assert holds() == {"r-a": 200, "r-b": 200}

        # (2) the customer's lock held (what an authorisation takes): the shrink runs on
        other.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("customer:c-1",))
        started = threading.Event()

        def authorise_c() -> int:
            started.set()
            return int(a.authorise("till-c", "r-c", "c-1", 1200, now, [], now, 900.0).authorised)

        authorising = pool.submit(authorise_c)
        assert started.wait(5)
        with pytest.raises(TimeoutError):
            authorising.result(timeout=0.5)  # waiting on the customer's lock
        assert b.shrink("till-a", "r-a", 50, [], placed_by=now) is True  # not held up
        other.commit()
        assert authorising.result(timeout=10) == 1200 - 50 - 200  # it saw the shrink
    assert holds() == {"r-a": 50, "r-b": 200, "r-c": 950}
    assert a.balance("c-1", now).held == 1200  # all of it held, never more


# ---------------------------------------------------------------- 6. what `hub serve` removed


def test_hub_serve_says_at_start_which_copies_of_standard_input_it_removed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §10: a copy of standard input a `hub import -` killed by SIGKILL left in
    the hub's directory (as large as the chain's export) is removed at the next import or
    `hub serve`, and the start says so on stderr (one JSON log line, WARNING): it said how
    many, not which nor how large. One a live import holds is never removed (its lock;
    tests/test_review33_left33.py with a real import)."""
    import fcntl
    import os
    import time

    from tillpoint.sync.hub_import import SPOOL_PREFIX
    from tillpoint.sync.hub_server import HubDir

    hub_dir = tmp_path / "hub"
    HubDir(hub_dir).init()
    HubDir(hub_dir).open_store(migrate=True).close()
    left = hub_dir / f"{SPOOL_PREFIX}killed01"
    left.write_bytes(b'{"customer": {"id": "c-1"}}\n' * 1000)
    held = hub_dir / f"{SPOOL_PREFIX}running"
    held.write_bytes(b"{}\n")
    old = time.time() - 3600
    for path in (left, held):
        os.utime(path, (old, old))
    port_file = tmp_path / "hub.port"
    with held.open("rb") as reading:
        fcntl.flock(reading.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live import's lock
        serve = subprocess.Popen(
            [sys.executable, "-m", "tillpoint.agent.cli", "hub", "serve", "--hub-dir",
             str(hub_dir), "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "TILLPOINT_DATA_DIR": str(tmp_path / "data")},
        )  # fmt: skip
        procs.append(serve)
        wait_for(lambda: port_file.exists() or serve.poll() is not None, timeout=60)
        assert serve.poll() is None
        assert not left.exists() and held.exists()
    serve.terminate()  # as soon as the port file is there: a graceful stop all the same
    _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err.decode()[-2000:]
    assert not port_file.exists()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    said = [line for line in lines if "standard input" in line.get("msg", "")]
    assert len(said) == 1, err.decode()[-2000:]
    assert said[0]["level"] == "warning"
    # how many, where, and which, with how much disk they held: the count alone said
    # nothing of what the disk got back (a copy is as large as the chain's export)
    assert said[0]["msg"] == (
        f"removed 1 copy(ies) of standard input a killed `hub import -` left in {hub_dir},"
        f" 28000 bytes in all: {left.name} (28000 bytes)"
    )
