"""Review 32 (dev32): the printer and the customer display when they misbehave for real.

A printer or display fault never blocks or undoes a sale, never prints twice, never loses a
coupon that was due (CONTRACT §7, §8). Real parts only: a raw port-9100 listener on
127.0.0.1 with small socket buffers (one that stops reading mid-coupon, one that resets
the connection mid-coupon), pseudo-terminals (`os.openpty`, socat pairs) and pyserial
`loop://` for serial devices, the project's ESC/POS decoder on what the printer took.
Sales are asserted to answer while a device is stuck (ordering and generous bounds, no
timings).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.app import stop_time_s
from tillpoint.agent.config import load as load_settings
from tillpoint.agent.service import Agent
from tillpoint.printer.config import DisplayConfig, PrinterConfig
from tillpoint.printer.decode import Decoder, Document
from tillpoint.printer.display import CustomerDisplay
from tillpoint.printer.transport import open_serial
from tillpoint.printer.virtual_display import PtyPair
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import PROGRAM, free_port, grpc_served, receipt, snapshot
from .stopclock import stop_seconds
from .test_review31_dev31 import (
    LONG_OFFERS,
    _jobs,
    _prime,
    _printer,
    _sale,
    _until,
    needs_socat,
    till,
)

# ----------------------------------------------------------------- a raw port-9100 printer


def _receipts_of(docs: list[Document]) -> list[str]:
    """The receipts of the complete (cut) coupons among `docs`, in order."""
    out = []
    for doc in docs:
        if doc.complete:
            out += [
                line.text.split()[1].rstrip(",")
                for line in doc.lines
                if line.text.strip().startswith("Чек r-")
            ]
    return out


class Printer9100:
    """A port-9100 printer on 127.0.0.1 with small socket buffers (so a sender's writes
    really block once it stops reading). It answers `DLE EOT` (on line, paper fine) and
    `GS r` (printed) and decodes each connection's bytes. `mode`:

    - "ok": reads and prints everything;
    - "stall": once a job's first bytes arrive it reads no more on that connection (its
      buffer full: a jammed mechanism, a wedged print server) until `mend()`;
    - "reset": after `reset_after` bytes of a job it resets the connection (RST) and is
      off (connections refused) until `back()`.
    """

    def __init__(self, mode: str = "ok", *, reset_after: int = 400) -> None:
        self.mode = mode
        self.reset_after = reset_after
        self.port = 0
        self.documents: list[Document] = []
        self.stalled = threading.Event()
        self.was_reset = threading.Event()
        self._mended = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listen()

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(8)
        self.port = sock.getsockname()[1]
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = Decoder()
        job_bytes = 0
        try:
            while True:
                data = conn.recv(512)
                if not data:
                    return
                job = data.replace(b"\x10\x04\x02", b"").replace(b"\x10\x04\x04", b"")
                if job and self.mode == "stall":
                    self.stalled.set()
                    self._mended.wait()  # reads no more until mended
                if job and self.mode == "reset" and job_bytes + len(job) >= self.reset_after:
                    decoder.feed(data[: max(0, self.reset_after - job_bytes)])
                    self.mode = "off"
                    self._off()  # refused until back()
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()  # RST mid-coupon
                    self.was_reset.set()
                    return
                job_bytes += len(job)
                for req in decoder.feed(data):
                    conn.sendall(b"\x00" if req.command == "GS r" else b"\x12")
        except OSError:
            pass
        finally:
            decoder.finish()
            with self._lock:
                self.documents += decoder.documents
            with contextlib.suppress(OSError):
                conn.close()

    def _off(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept: no longer listening
        with contextlib.suppress(OSError):
            self.sock.close()

    def mend(self) -> None:
        self.mode = "ok"
        self._mended.set()

    def back(self) -> None:
        self.mode = "ok"
        self._listen()

    def coupons(self) -> list[str]:
        with self._lock:
            return _receipts_of(self.documents)

    def close(self) -> None:
        self._mended.set()
        self._off()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


def _long_snapshot() -> dict[str, Any]:
    """Fifty long offers: a coupon of some 50 KB, far more than the socket buffers hold."""
    return snapshot(
        program={**PROGRAM, "offerPrintCooldownDays": 0, "maxOffersPrinted": 50},
        offers=LONG_OFFERS,
    )


def _http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        raw = answer.read()
        try:
            return answer.status, json.loads(raw or b"null")
        except ValueError:
            return answer.status, raw.decode()
    finally:
        conn.close()


def _job_rows(data: Path) -> list[tuple[str, str, int, str | None]]:
    conn = sqlite3.connect(data / "ledger.db", timeout=10)
    try:
        return list(
            conn.execute(
                "SELECT receipt_id, state, attempts, last_error FROM print_jobs ORDER BY id"
            )
        )
    finally:
        conn.close()


@contextlib.contextmanager
def served(agent: Agent) -> Iterator[tuple[int, Any, int]]:
    """The till's HTTP server, a gRPC `PosAgent` stub and its /metrics, as `run` serves
    them: (HTTP port, stub, metrics port)."""
    from tillpoint.agent import metrics
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.server import register_gauges

    registry = metrics.Registry()
    register_gauges(registry, agent)
    scrape, scrape_port = metrics.serve(registry, "127.0.0.1", 0)
    web = HttpServer(agent, "127.0.0.1:0")
    web.start()
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield web.port, pb_grpc.PosAgentStub(channel), scrape_port
    finally:
        web.stop()
        scrape.shutdown()


def _metrics(port: int) -> dict[str, float]:
    status, text = _http(port, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in str(text).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _answers_while_stuck(http_port: int, stub: Any, n: int) -> None:
    """A quote and a checkout over HTTP, and over gRPC, each answered in full (a generous
    bound: the printer's write timeout is 1 s, its stuck write far longer)."""
    for kind, call in (
        ("http quote", lambda: _http(http_port, "POST", "/v1/quote", receipt(f"hq-{n}"))),
        ("http checkout", lambda: _http(http_port, "POST", "/v1/checkout", receipt(f"r-h{n}"))),
    ):
        code, body = call()  # a call the printer held would wait for ever: it never reads
        assert code == 200, (kind, body)  # again until mended, and `_http` waits 30 s
        assert body["earnedPoints"] > 0
    for name in ("Quote", "Checkout"):
        request = json_format.ParseDict(
            receipt(f"r-g{n}" if name == "Checkout" else f"gq-{n}"), pb.Receipt()
        )
        result = getattr(stub, name)(request, timeout=30)  # held: for ever (above)
        assert result.earned_points > 0


# ----------------------------------------------------------------- 1. stops reading mid-coupon


@pytest.mark.slow
def test_a_printer_that_stops_reading_mid_coupon_holds_it_and_prints_it_once(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: a network printer takes the first part of a 50 KB coupon and stops
    reading (on loopback the kernel takes the whole job: the write returns, and neither
    `GS r` nor `DLE EOT` is answered after it). Meanwhile the till's HTTP and gRPC quotes
    and checkouts answer; status and /metrics say ERROR with the reason ("sent, not
    confirmed"), the coupons wait. Mended, each coupon is cut once, in order: the copies
    the worker sent while the printer did not read (every retry, as the printer answered
    `DLE EOT` on a fresh connection) were left in the kernel by a graceful close and all
    came out when it read again."""
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(_long_snapshot())
    agent.close()
    jam = Printer9100("stall")
    try:
        with (
            till(tmp_path, _printer(jam.port)) as (agent, _),
            served(agent) as (
                web,
                stub,
                scrape,
            ),
        ):
            code, first = _http(web, "POST", "/v1/checkout", receipt("r-000"))
            assert code == 200 and len(first["printedOffers"]) == 50
            assert jam.stalled.wait(10)
            for n in range(3):
                _answers_while_stuck(web, stub, n)
            status = _until(
                lambda: (s := _http(web, "GET", "/v1/status")[1])["printerState"] == "ERROR" and s,
                15,
            )
            assert status and "not confirmed" in status["printerLastError"]
            assert status["printQueueDepth"] == 7
            assert _until(
                lambda: _metrics(scrape).get('tillpoint_printer_ok{state="ERROR"}') == 0, 10
            )
            # the worker tries again meanwhile (the printer answers DLE EOT when asked)
            assert _until(lambda: _job_rows(tmp_path)[0][2] >= 3, 30), _job_rows(tmp_path)
            assert jam.coupons() == []
            jam.mend()
            assert _until(lambda: {s for _, s, _, _ in _job_rows(tmp_path)} == {"DONE"}, 60)
            sales = [r for r, _, _, _ in _job_rows(tmp_path)]
            assert _until(lambda: jam.coupons() == sales, 10), jam.coupons()
            time.sleep(1.0)
            assert jam.coupons() == sales  # once each
            status = _until(
                lambda: (s := _http(web, "GET", "/v1/status")[1])["printerState"] == "OK" and s,
                10,
            )
            assert status and status["printQueueDepth"] == 0
    finally:
        jam.close()


# ----------------------------------------------------------------- 2. resets mid-coupon


def test_a_printer_that_resets_mid_coupon_prints_it_once_in_full_when_back(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: the printer resets the connection (RST) 400 bytes into a coupon and is
    off a while: the job is PENDING, never DONE on a half coupon; status and /metrics say
    OFFLINE with the reason and the coupon waiting. Back, the coupon is printed again in
    full, once, and the job is DONE; status and /metrics say OK and nothing waits."""
    _prime(tmp_path)
    printer = Printer9100("reset", reset_after=400)
    try:
        with (
            till(tmp_path, _printer(printer.port)) as (agent, _),
            served(agent) as (
                web,
                _stub,
                scrape,
            ),
        ):
            assert len(_sale(agent, 0).printed_offers) == 3
            assert printer.was_reset.wait(10)
            status = _until(
                lambda: (
                    (s := _http(web, "GET", "/v1/status")[1])["printerState"] == "OFFLINE" and s
                ),
                10,
            )
            assert status, _http(web, "GET", "/v1/status")[1]
            assert status["printQueueDepth"] == 1
            assert status["printerLastError"]
            assert _job_rows(tmp_path)[0][1] == "PENDING"
            assert printer.coupons() == []  # the torn part was not cut
            assert _until(
                lambda: (
                    (m := _metrics(scrape)).get('tillpoint_printer_ok{state="OFFLINE"}') == 0
                    and m["tillpoint_print_queue_depth"] == 1
                ),
                10,
            )
            _sale(agent, 1)  # a sale while it is off
            printer.back()
            assert _until(lambda: [s for _, s, _, _ in _job_rows(tmp_path)] == ["DONE"] * 2, 20)
            assert _until(lambda: printer.coupons() == ["r-000", "r-001"], 10)
            time.sleep(0.5)
            assert printer.coupons() == ["r-000", "r-001"]  # once each
            status = _until(
                lambda: (s := _http(web, "GET", "/v1/status")[1])["printerState"] == "OK" and s,
                10,
            )
            assert status and status["printQueueDepth"] == 0
            # a scrape reads a status at most a second old
            assert _until(
                lambda: (
                    (m := _metrics(scrape)).get('tillpoint_printer_ok{state="OK"}') == 1
                    and m["tillpoint_print_queue_depth"] == 0
                ),
                10,
            )
    finally:
        printer.close()


# ----------------------------------------------------------------- 3. a display that reads slowly


def _totals(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(r"Итого: (\d+)", data.decode("cp866", "replace"))]


class LoopDisplay:
    """A pole display on pyserial's `loop://` (a 4 KB line): what the driver writes, the
    test reads as the display would, when it chooses to."""

    def __init__(self) -> None:
        self.port = open_serial("loop://", read_timeout_s=0.05, write_timeout_s=0.5)

    def factory(self) -> Any:
        if not self.port.is_open:  # reconnected: the same line again
            self.port.open()
        return self.port

    def take(self, settle_s: float = 0.5) -> bytes:
        """Everything on the line until it stays quiet `settle_s`."""
        out = b""
        quiet = time.monotonic() + settle_s
        while time.monotonic() < quiet:
            with contextlib.suppress(Exception):
                chunk = self.port.read(4096)
                if chunk:
                    out += chunk
                    quiet = time.monotonic() + settle_s
        return out


def test_a_display_that_stops_reading_is_reported_and_shows_the_current_message_after() -> None:
    """CONTRACT §8: a pole display that stops taking bytes while the cashier scans a
    hundred items: each `show` returns at once; the display's writer survives (pyserial's
    `loop://` raised `queue.Full`, which killed the thread: the display stayed "OK" and
    was never written again) and says OFFLINE with the reason; when the display reads
    again it is shown the current total, not the backlog of stale ones (a 4 KB line:
    some eighty of them)."""
    line = LoopDisplay()
    config = DisplayConfig(
        kind="serial", device="loop://", reconnect_s=0.1, refresh_s=60, write_timeout_s=0.5
    )
    display = CustomerDisplay(config, port_factory=line.factory)
    display.start()
    try:
        showing = 0.0  # the shows' own time, the sleeps between them left out
        for n in range(100):
            started = time.monotonic()
            display.show([f"Итого: {n},00", ""])
            showing += time.monotonic() - started
            time.sleep(0.005)
        # returned at once: a show that waited for its write would wait the 0.5 s write
        # timeout for each the full line refuses (the 4 KB line holds some eighty: twenty,
        # 10 s); a bound on all hundred, not on each (one show descheduled 0.5 s on a
        # loaded machine is no fault: review 40, flake40b)
        assert showing < 5.0, showing
        # OFFLINE with the reason (never OK meanwhile: it took nothing, review 32, rev32b)
        assert _until(
            lambda: (s := display.status())["state"] == "OFFLINE" and s["last_error"], 10
        ), display.status()
        assert "loop://" in str(display.status()["last_error"])
        # read until the current total has come (the driver writes it once the line is
        # free and its reconnect is due: on a loaded machine, after a quiet 0.5 s)
        got = line.take()
        deadline = time.monotonic() + 15
        while _totals(got)[-1:] != [99] and time.monotonic() < deadline:
            got += line.take()
        shown = _totals(got)
        assert shown and shown[-1] == 99
        # a few messages the line held when it stopped, then the current one, never the
        # backlog of some eighty (at most 4 here, 5 at load 10 in session 59's CI: the
        # writer's turns between the shows are the scheduler's)
        assert len([n for n in shown if n != 99]) <= 10, shown
        assert _until(lambda: display.status()["state"] == "OK", 10)
        display.show(["Итого: 100,00", ""])
        assert display.flush(5)
        assert _totals(line.take()) == [100]
    finally:
        display.stop()


def test_a_display_on_a_pty_that_reads_nothing_is_queued_no_more_than_its_line_carries(
    tmp_path: Path,
) -> None:
    """CONTRACT §8: a pole display on a pseudo-terminal that reads nothing while the
    cashier scans six hundred items (a pty cannot say what it still queues): each `show`
    returns at once, and the driver queues no more than the line (9600 baud) carries
    meanwhile, the newest message last. It wrote every message as it came, and the
    terminal queued some 19 KB of stale totals: the display, reading again, showed them
    all in turn (20 s of them at 9600 baud) before the current one."""
    master, slave = os.openpty()
    try:
        device = os.ttyname(slave)
        config = DisplayConfig(kind="serial", device=device, reconnect_s=0.1, refresh_s=60)
        display = CustomerDisplay(config)
        display.start()
        try:
            started = time.monotonic()
            for n in range(600):
                before = time.monotonic()
                display.show([f"Итого: {n},00", ""])
                # not waiting for the line: the stale totals took 20 s of it, a line
                # nobody reads for ever; 5 s is a loaded machine's room (review 44, flake44)
                assert time.monotonic() - before < 5
                time.sleep(0.002)
            assert display.flush(5)
            elapsed = time.monotonic() - started
            os.set_blocking(master, False)
            got = b""
            quiet = time.monotonic() + 0.5
            while time.monotonic() < quiet:
                try:
                    chunk = os.read(master, 65536)
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                got += chunk
                quiet = time.monotonic() + 0.5
            shown = _totals(got)
            assert shown and shown[-1] == 599
            carried = elapsed * 9600 / 10
            assert len(got) <= carried + 200, (len(got), carried, len(shown))
        finally:
            display.stop()
    finally:
        os.close(master)
        os.close(slave)


# ----------------------------------------------------------------- 4. SIGTERM while stuck


class RunTill:
    """`tillpoint run` on `data` with a network printer and a serial display, over HTTP."""

    def __init__(self, tmp_path: Path, data: Path, printer_port: int, display: str) -> None:
        self.port = free_port()
        conf = tmp_path / "till.toml"
        conf.write_text(
            f'device_id = "till-1"\n[server]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[metrics]\nenabled = false\n[http]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {printer_port}\n'
            "connect_timeout_s = 1\nstatus_timeout_s = 0.3\nconfirm_timeout_s = 2\n"
            "retry_base_s = 0.1\nretry_max_s = 0.5\npoll_interval_s = 0.1\n"
            f'[display]\nkind = "serial"\ndevice = "{display}"\nreconnect_s = 0.2\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        exe = Path(sys.executable).parent / "tillpoint"
        self.printer = load_settings(conf).printer  # its stop's bound: `stop_time_s`
        self.log_path = tmp_path / "run.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [exe, "--config", conf, "--data-dir", data, "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, "tillpoint run stopped"
            with contextlib.suppress(OSError):
                if _http(self.port, "GET", "/healthz")[0] == 200:
                    break
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.1)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return _http(self.port, method, path, body)

    def terminate(self) -> float:
        """SIGTERM; the seconds until it exited (0 status asserted)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:  # pragma: no cover - a hung agent
                self.proc.kill()
                self.proc.wait()
            self.log.close()
        assert code == 0
        return time.monotonic() - started


@pytest.mark.slow
def test_run_stopped_while_the_printer_and_the_display_are_stuck_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """CONTRACT §7, §8: `tillpoint run` with a network printer that stopped reading in the
    middle of a 50 KB coupon and a pole display nobody reads (a pty) is stopped with
    SIGTERM: it stops within its documented bound (the worker's `confirm_timeout_s` +
    `status_timeout_s` + 5 s beside the 5 s grace, well inside the unit's
    `TimeoutStopSec` of 30 s), with status 0, no job left SENDING or FAILED. The printer
    mended and the agent started again, each coupon is cut once, in the order of the
    sales: the copy the first agent had left in the kernel is not delivered as well."""
    data = tmp_path / "data"
    seed = Agent(data, "till-1")
    seed.load_snapshot(_long_snapshot())
    seed.close()
    jam = Printer9100("stall")
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        run = RunTill(tmp_path, data, jam.port, tty)
        try:
            for n in range(3):
                code, sale = run.call("POST", "/v1/checkout", receipt(f"r-00{n}"))
                assert code == 200 and len(sale["printedOffers"]) == 50
                assert run.call("POST", "/v1/quote", receipt(f"q-{n}"))[0] == 200
            assert jam.stalled.wait(10)
            for n in range(40):  # the display's line fills: nobody reads it
                assert run.call("POST", "/v1/quote", receipt(f"q-x{n}"))[0] == 200
        finally:
            run.terminate()
        # within its documented bound, on the run's own clock (the test's counted the
        # machine's load too; review 44, flake44)
        bound = stop_time_s(run.printer)
        assert stop_seconds(run.log_path) < bound, run.log_path.read_text()[-2000:]
        rows = _job_rows(data)
        assert [(r, s) for r, s, _, _ in rows] == [(f"r-00{n}", "PENDING") for n in range(3)]
        jam.mend()  # reads again: the stalled connections too
        time.sleep(1.0)
        assert jam.coupons() == []  # nothing of the first agent's was cut
        again = RunTill(tmp_path, data, jam.port, tty)
        try:
            assert _until(lambda: {s for _, s, _, _ in _job_rows(data)} == {"DONE"}, 60)
            assert _until(lambda: jam.coupons() == ["r-000", "r-001", "r-002"], 10)
            time.sleep(1.0)
            assert jam.coupons() == ["r-000", "r-001", "r-002"]
        finally:
            again.terminate()
    finally:
        jam.close()
        os.close(master)
        os.close(slave)


# ----------------------------------------------------------------- 5. a serial printer's line


class SerialLine:
    """The printer's end of a socat pty pair, one ESC/POS stream as a printer reads it (a
    torn part and the next job in one decoder, as on paper). It answers `DLE EOT` (on
    line, paper fine) and `GS r` (printed). Stalled, once a job's first bytes arrive it
    reads no more (its buffer full) until `mend()`; then it reads what the line held."""

    def __init__(self, peer: Path, *, stall: bool) -> None:
        self.port = open_serial(str(peer), read_timeout_s=0.05)
        self.stall = stall
        self.stalled = threading.Event()
        self._mended = threading.Event()
        self.decoder = Decoder()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.port.read(4096)
            except Exception:
                return
            if not data:
                continue
            job = data.replace(b"\x10\x04\x02", b"").replace(b"\x10\x04\x04", b"")
            if self.stall and job:
                self.stalled.set()
                self._mended.wait()
            with self._lock:
                requests = self.decoder.feed(data)
            for req in requests:
                with contextlib.suppress(Exception):
                    self.port.write(b"\x00" if req.command == "GS r" else b"\x12")

    def mend(self) -> None:
        self.stall = False
        self._mended.set()

    def documents(self) -> list[Document]:
        with self._lock:
            return list(self.decoder.documents)

    def close(self) -> None:
        self._stop.set()
        self._mended.set()
        self._thread.join(2)
        self.port.close()


def _serial_printer(device: Path) -> PrinterConfig:
    return PrinterConfig(
        kind="serial",
        device=str(device),
        baudrate=921600,
        write_timeout_s=60.0,
        status_timeout_s=0.3,
        confirm_timeout_s=1.0,
        retry_base_s=0.05,
        retry_max_s=0.2,
        poll_interval_s=0.1,
    )


@needs_socat
@pytest.mark.slow
def test_a_serial_write_broken_off_leaves_the_line_sane_for_the_next_job(
    tmp_path: Path,
) -> None:
    """CONTRACT §7: a serial printer stops reading in the middle of a 50-offer coupon and
    the agent is stopped (the write broken off, the line's queue dropped as the code
    intends). Mended on the same line and the agent started again: the printer cuts that
    coupon and the next once each, complete (all fifty codes, the Cyrillic in its code
    page); the torn part of the first attempt that reached it is cut off as a piece of
    its own (it was glued on: the coupon came out with its first offers twice)."""
    agent = Agent(tmp_path, "till-1")
    agent.load_snapshot(_long_snapshot())
    agent.close()
    config = _serial_printer(tmp_path / "pty" / "device")
    codes = [f"TP1-o-{n:02d}" for n in range(50)]
    with PtyPair(tmp_path / "pty") as pair:
        line = SerialLine(pair.peer, stall=True)
        try:
            with till(tmp_path, config) as (agent, _):
                assert len(_sale(agent, 0).printed_offers) == 50
                assert line.stalled.wait(10)
                assert _until(lambda: _jobs(agent) == [("r-000", "SENDING")])
                assert len(_sale(agent, 1).printed_offers) == 50
            assert [s for _, s, _, _ in _job_rows(tmp_path)] == ["PENDING", "PENDING"]
            line.mend()
            time.sleep(1.0)
            with till(tmp_path, config) as (agent, _):
                assert _until(lambda: all(s == "DONE" for _, s in _jobs(agent)), 30)
                time.sleep(0.5)
            complete = [d for d in line.documents() if d.complete]
            assert _receipts_of(complete) == ["r-000", "r-001"]
            coupons = [d for d in complete if "Чек r-" in d.text]
            assert len(coupons) == 2
            for doc in coupons:  # each whole: the torn part is a piece of its own
                assert doc.codes == codes
                assert "Скидка на хлеб" in doc.text
            assert len(complete) <= 3
        finally:
            line.close()


def test_the_cut_before_a_resend_is_blank_paper_when_nothing_was_torn() -> None:
    """CONTRACT §7: what a job sent after a torn attempt begins with ends a command the
    torn part broke off and cuts that part off; with nothing torn before it, it is a
    blank strip, never a document of its own (the decoder counts it in `blank_cuts`),
    and the coupon after it decodes whole; after a torn text it is that text's piece."""
    from tillpoint.printer.config import PrinterConfig as Config
    from tillpoint.printer.layout import separator_bytes
    from tillpoint.printer.profiles import resolve_profile

    profile = resolve_profile(Config(kind="file", device="/tmp/unused-dev32"))
    job = b"\x1b@\x1bt\x11" + "Скидка".encode("cp866") + b"\n\x1bd\x06\x1dV\x01"
    clean = Decoder()
    clean.feed(separator_bytes(profile) + job)
    assert [d.text.strip() for d in clean.documents] == ["Скидка"]
    assert clean.blank_cuts == 1
    # torn in the middle of a QR code's data (`GS ( k`, 20 bytes announced, 5 sent)
    torn = b"\x1b@\x1bt\x11" + "Обрыв".encode("cp866") + b"\n\x1d(k\x17\x001P0TP1-o"
    after = Decoder()
    after.feed(torn + separator_bytes(profile) + job)
    assert [d.complete for d in after.documents] == [True, True]
    assert "Обрыв" in after.documents[0].text
    assert after.documents[1].text.strip() == "Скидка"
