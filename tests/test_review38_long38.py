"""Review 38 (long38): a POS on ONE keep-alive HTTP connection to ONE long-lived
`tillpoint run` with the shipped settings, thousands of calls in a seeded random order,
one-shot sales and `sync now` beside it, the hub going away and coming back.

Review 35's harness (tests/test_review35_memo35.py `StoreDaySequence`: review 32's
`tillpoint run` through `bench/difflong_doors.py serve`, its settings the shipped ones but
the ports, the data directory and a real network printer's address; a real hub that
goes away and comes back), walked as a POS walks it after this session's changes to the
HTTP door (review 38: the connection limit judged at accept, a refused body's rest cut,
empty lines between requests, an answer before `100 Continue`), to identification (a card
read twice, CONTRACT §4) and to one-shot processes (their logging and signals, the
ledger's busy wait during `sync now`):

- every call of the walk goes through ONE HTTP/1.1 connection, opened once: it must stay
  open after every answer (CONTRACT §12: an error answer keeps the connection; only the
  ones the contract names close it). The walk mixes in errors: bad input (400
  INVALID_ARGUMENT, compared like any answer), a body that is not JSON (400), an unknown
  path (404), a wrong method (405), and a card read twice (§4: INVALID);
- each call's answer is compared with a fresh agent's on a copy of the data directory
  made just before it, at the same moment, its hub the long-lived process's answers
  played back (review 32's way; the fresh agent is made in the test's process after its
  module caches are cleared, `bench.difflong_doors.fresh_doc`: a process a call would
  take an hour for the long walk);
- between calls, one-shot `tillpoint --local checkout` processes (their own process,
  their own hub link) and a one-shot `tillpoint sync now`, with the hub up or away; and
  both started at once while the POS sells on its connection (the ledger written by
  three processes);
- after the walk: many connections opened and closed, reset mid-head or mid-body; then
  256 new connections at once are all served (the limit's count leaks none);
- at the end (review 35's `settle`): the hub holds every sale and refund of the till's
  journal once, nothing owed, each customer's points the till's; after each outage the
  till is ONLINE again, and its outbox empty, within the shipped settings' promise.

The walk's length is one parameter: a short seeded walk in `make test` (7-20 s), the long
one (~2,000 calls, 15 min on a loaded machine) marked slow.

Found (review 38, long38): an empty line a POS sends after its POST's body, when it comes
after the answer (Nagle holds a second small write until the answer's ACK), closed the
kept connection at the head's 10 s instead of keep-alive's 75 s (the test at the end;
`http_api._Protocol.data_received`). Found right: everything the walk checks, in a
1,983-call walk (seed 3802) with 53 outages: no answer unlike a fresh agent's, the one
connection never closed, 256 new connections served after 600 opened, closed and reset,
every sale at the hub once, ONLINE and drained within 3.6 s of the hub's return; a 401 on
a token bind keeps the connection.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import difflong as dl

from .conftest import tcp_sockets
from .test_review32_long32 import _env
from .test_review35_memo35 import PROMISED_DRAIN_S, StoreDaySequence

# What the POS sends that is refused before any agent call: (method, path, body, status).
RAW_ERRORS = [
    ("POST", "/v1/quote", b"{not json", 400),
    ("POST", "/v1/hold", b"", 400),
    ("POST", "/v1/nothing-here", b"{}", 404),
    ("GET", "/v1/quote", None, 405),
    ("PUT", "/v1/confirm", b"{}", 405),
]


# What the connections of the churn send before they close, or are reset (every other
# round): nothing; half a head; half a body; a whole call (kept alive); then four the
# server answers and closes itself: HTTP/1.0, `Connection: close` with a refused body, an
# answer before `100 Continue`, a TLS hello on the plain port.
CHURN = [
    b"",
    b"POST /v1/quote HTTP/1.1\r\nHost: x\r\n",
    b"POST /v1/quote HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 500\r\n\r\n{"receiptId":',
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"POST /v1/quote HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 9\r\n\r\n"
    b"{not json",
    b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),
]
SERVER_CLOSES = {4, 5, 6, 7}


class PosSequence(StoreDaySequence):
    """Review 35's shipped run, called by one POS on one kept connection."""

    ACTIONS = (
        ["new"] * 3
        + ["again"] * 2
        + ["hold"] * 3
        + ["confirm"] * 3
        + ["checkout"] * 3
        + ["cancel", "refund", "refund", "identify", "balance", "reuse", "bad"]
        + ["raw", "raw", "twice", "tick"]
        + ["oneshot", "outage", "delta", "beside"]
    )
    TRACE_ENV = "LONG38_TRACE"

    # one-shot sales (each beside a call of the POS) in an outage
    outage_sales = 2

    def __init__(self, seed: int, work: Path) -> None:
        self.dropped: list[str] = []  # the POS's connection closed where it should not be
        self.connections = 0
        super().__init__(seed, work)

    def start(self) -> None:
        super().start()
        self.open_pos()

    def open_pos(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.ll.http_port, timeout=40)
        self.conn.connect()
        self.connections += 1
        self.sock = self.conn.sock

    def exchange(
        self, method: str, path: str, raw: bytes | None
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        """One request on the POS's connection; a connection that closed (or said it
        will) where it should not is a fault, counted, and opened again."""
        headers = {"Content-Type": "application/json"} if raw is not None else {}
        if self.rng.random() < 0.05:  # an empty line between requests (RFC 9112 §2.2)
            self.count("raw/crlf")
            self.sock.sendall(b"\r\n")
        try:
            self.conn.request(method, path, raw, headers)
            resp = self.conn.getresponse()
            body = resp.read()
        except (http.client.HTTPException, OSError) as exc:
            self.dropped.append(f"{method} {path}: {exc!r}")
            self.conn.close()
            self.open_pos()
            self.conn.request(method, path, raw, headers)
            resp = self.conn.getresponse()
            body = resp.read()
        if resp.will_close or self.conn.sock is not self.sock:
            self.dropped.append(f"{method} {path} {resp.status}: closed after the answer")
            self.conn.close()
            self.open_pos()
        return resp.status, body, resp

    # ------------------------------------------------------------ one comparison

    def long(self, call: str, body: Any, via: str) -> tuple[str, Any]:
        raw = json.dumps(body, ensure_ascii=False).encode()
        status, text, _ = self.exchange("POST", f"/v1/{call}", raw)
        doc = json.loads(text)
        if status != 200:
            return "error", (doc["error"]["code"], doc["error"]["message"])
        self.long_text = text.decode()
        return "ok", doc

    def fresh_process(self, call: str, body: Any, via: str, lines: list[str]) -> dict[str, Any]:
        from bench.difflong_doors import fresh_doc

        dl.clear_module_caches()
        return fresh_doc(
            self.clock(),
            self.work / "copy",
            call,
            via,
            json.loads(json.dumps(body)),
            [json.loads(x) for x in lines if x.strip()],
        )

    def compare(self, call: str, body: Any, via: str | None = None) -> tuple[str, Any]:
        return super().compare(call, body, "http")  # the POS's one connection, always

    # ------------------------------------------------------------ the steps

    def do(self, action: str) -> None:
        r = self.rng
        if action == "bad":  # bad input of the contract's (a 400 compared like any answer)
            self.count("action/bad")
            body = self.new_body()
            dl.perturb(r, body)
            self.compare(r.choice(["quote", "hold", "checkout"]), body)
        elif action == "raw":  # refused before the agent: the connection stays
            self.count("action/raw")
            method, path, raw, want = r.choice(RAW_ERRORS)
            status, text, resp = self.exchange(method, path, raw)
            self.count(f"raw/{status}")
            doc = json.loads(text) if text else {}
            if status != want or "error" not in doc:
                self.lost.append(f"{method} {path}: {status} {text[:200]!r}, not {want}")
            if status == 405 and not resp.getheader("Allow"):
                self.lost.append(f"{method} {path}: 405 without Allow")
        elif action == "twice":  # a scanner that sent the card twice in one text (§4)
            self.count("action/twice")
            card = r.choice(dl.CARDS[:5])
            got = self.compare("identify", {"text": card + card})
            if got[0] != "ok" or got[1].get("status") != "INVALID":
                self.lost.append(f"{card} read twice: {got}")
            body = {**self.new_body(), "card": card + card}
            got = self.compare(r.choice(["quote", "checkout"]), body)
            if got[0] != "error" or got[1][0] != "INVALID_ARGUMENT":
                self.lost.append(f"a receipt with {card} read twice: {got}")
        elif action == "oneshot":
            self.count("action/oneshot")
            self.oneshot_sale()
            if r.random() < 0.5:
                self.sync_now()
        elif action == "beside":
            self.count("action/beside")
            self.beside()
        elif action == "outage":  # one-shots and calls while the hub is away, then back
            self.count("action/outage")
            if self.hub_up:
                StoreDaySequence.do(self, "down")
            for _ in range(self.outage_sales):
                self.oneshot_sale()
                StoreDaySequence.do(self, r.choice(["checkout", "hold", "confirm", "refund"]))
            self.sync_now()
            self.hub_back()
            self.online_again()
        else:
            super().do(action)

    # ------------------------------------------------------------ one-shot processes

    def oneshot(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`tillpoint --config … ARGS` run in a process of its own beside the run (its
        clock the run's clock file: `bench/difflong_doors.py serve`)."""
        command = [sys.executable, "-m", "bench.difflong_doors", "serve"]
        command += [str(self.work / "clock"), str(self.record)]
        return subprocess.run(
            [*command, "--config", str(self.ll.cfg), *args],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=timeout,
            check=False,
        )

    def oneshot_sale(self) -> None:
        """A sale by a one-shot `tillpoint --local checkout` (its own process, its own
        link to the hub): a CONFIRMED sale is in the journal once, then at the hub once."""
        rid = self.new_receipt()
        body = {**self.bodies[rid], "redeemPoints": self.rng.choice([0, 0, 10])}
        self.bodies[rid] = body
        path = self.work / "oneshot.json"
        path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        done = self.oneshot("--local", "checkout", str(path), "--json")
        self.count(f"oneshot/checkout/{done.returncode}")
        if done.returncode == 0:
            self.committed[rid] = body
            self.closed.add(rid)
        elif done.returncode not in (2, 3, 4):  # refused input, card, no points: its answer
            self.lost.append(f"one-shot checkout {rid}: {done.returncode} {done.stderr[-400:]}")

    def beside(self) -> None:
        """A one-shot sale and a one-shot `sync now` started at once, the POS selling on
        its connection meanwhile (its checkouts not compared: the one-shots write the
        ledger under it). Each ends as it would alone; the POS's calls are answered 200;
        the settle at the end finds every sale at the hub once."""
        path = self.work / "beside.json"
        rid = self.new_receipt()
        body = {**self.bodies[rid], "redeemPoints": 0}
        self.bodies[rid] = body
        path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        command = [sys.executable, "-m", "bench.difflong_doors", "serve"]
        command += [str(self.work / "clock"), str(self.record), "--config", str(self.ll.cfg)]
        up = self.hub_up
        procs = [
            subprocess.Popen(
                [*command, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            for args in (["--local", "checkout", str(path), "--json"], ["sync", "now", "--json"])
        ]
        try:
            for _ in range(5):
                mine = self.new_receipt()
                sale = {**self.bodies[mine], "redeemPoints": 0}
                self.bodies[mine] = sale
                raw = json.dumps(sale, ensure_ascii=False).encode()
                status, text, _ = self.exchange("POST", "/v1/checkout", raw)
                self.count(f"beside/pos/{status}")
                if status == 200:
                    self.committed[mine] = sale
                    self.closed.add(mine)
                elif status not in (400, 412):  # (bad input, a blocked card: its own answer)
                    self.lost.append(f"a checkout beside one-shots: {status} {text[:300]!r}")
            outs = [p.communicate(timeout=90) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        sale_code, sync_code = procs[0].returncode, procs[1].returncode
        self.count(f"beside/checkout/{sale_code}")
        self.count(f"beside/sync/{'up' if up else 'down'}/{sync_code}")
        if sale_code == 0:
            self.committed[rid] = body
            self.closed.add(rid)
        elif sale_code not in (2, 3, 4):
            self.lost.append(f"one-shot checkout beside: {sale_code} {outs[0][1][-400:]}")
        if up and sync_code != 0:
            self.lost.append(f"sync now beside the POS, hub up: {sync_code} {outs[1][1][-400:]}")

    def sync_now(self) -> None:
        """A one-shot `tillpoint sync now` beside the run: 0 with the hub up, a clear exit
        with it away (nothing lost either way: the end's settle counts every sale)."""
        done = self.oneshot("sync", "now", "--json")
        self.count(f"oneshot/sync/{'up' if self.hub_up else 'down'}/{done.returncode}")
        if self.hub_up and done.returncode != 0:
            self.lost.append(f"sync now with the hub up: {done.returncode} {done.stderr[-400:]}")
        if not self.hub_up and done.returncode == 0:
            self.lost.append(f"sync now with the hub away said it worked: {done.stdout[-400:]}")

    def online_again(self) -> None:
        """After the hub is back the run's status says ONLINE within the shipped
        settings' promise (measured from the hub's listening again in `hub_back`)."""
        began = time.monotonic()
        while True:
            mode = self.status().get("mode")
            if mode == "ONLINE":
                self.count("online/again")
                return
            if time.monotonic() - began > PROMISED_DRAIN_S:
                self.lost.append(f"not ONLINE {PROMISED_DRAIN_S} s after the hub was back")
                return
            time.sleep(0.05)

    # ------------------------------------------------------------ the connection count

    def churn_then_burst(self, churn: int) -> list[str]:
        """`churn` connections opened and closed at once, reset mid-head or mid-body; then
        256 at once (the shipped `max_connections`; the POS's and the harness's closed
        first), each asking for the status: every one is answered 200."""
        bad: list[str] = []
        self.conn.close()
        self.ll.conn.close()
        port = self.ll.http_port
        reset = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close is a reset
        for i in range(churn):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            kind = i % len(CHURN)
            if CHURN[kind]:
                s.sendall(CHURN[kind])
            if kind in SERVER_CLOSES:  # the server answers and closes: read it to the end
                while s.recv(65536):
                    pass
            elif kind == 3:
                s.recv(65536)
            if (i // len(CHURN)) % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
            s.close()
        # the server has seen every close: a loaded machine's `run` takes them in a burst
        # from its accept queue and counts each open until it reads its reset (rev38e's
        # test met 503 so in CI; this waited 0.5 s): waited for, then a call of its own
        bad.extend(_settled(port))
        results: list[Any] = [None] * 256
        socks: list[socket.socket] = []
        go = threading.Barrier(256 + 1, timeout=30)

        def one(k: int) -> None:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                socks.append(s)
                go.wait()
                s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                f = s.makefile("rb")
                line = f.readline()
                results[k] = line.split()[1].decode() if line else "closed"
            except Exception as exc:  # what one connection met, reported
                results[k] = repr(exc)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(256)]
        for t in threads:
            t.start()
        try:
            go.wait()
        except threading.BrokenBarrierError:
            bad.append("the 256 connections were not all opened in 30 s")
        for t in threads:
            t.join(60)
        for s in socks:
            s.close()
        refused = [r for r in results if r != "200"]
        if refused:
            bad.append(f"{len(refused)} of 256 new connections not served: {refused[:5]}")
        self.count(f"burst/served/{256 - len(refused)}")
        self.open_pos()
        return bad


# The events that take seconds (processes of their own, the hub away and back)
SLOW_EVENTS = ("oneshot", "outage", "delta", "beside")

# LISTEN, and the states of a server's socket it has not closed yet (a handshake done but
# not accepted, open, or its peer's FIN come and not yet closed here)
_LISTEN, _NOT_CLOSED_HERE = "0A", {"03", "01", "08"}


def _server_side(port: int) -> tuple[int, int]:
    """(the accept queue of the socket listening on 127.0.0.1:`port`, the server's sockets
    of `port` not closed yet). A reset connection the server has not read yet is in
    neither: the call `_settled` makes after them waits behind it in the server's loop."""
    found = tcp_sockets(port)
    queued = sum(s.rx_queue for s in found if s.state == _LISTEN)
    return queued, sum(s.state in _NOT_CLOSED_HERE for s in found)


def _settled(port: int, within_s: float = 60.0) -> list[str]:
    """Wait until the `run` serving HTTP on `port` has taken every connection from its
    accept queue and closed every one closed at the other end, then make one call through
    its loop; what did not settle, said."""
    deadline = time.monotonic() + within_s
    while (left := _server_side(port)) != (0, 0):
        if time.monotonic() > deadline:
            return [f"the churn's connections not settled in {within_s:g} s: {left}"]
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = s.makefile("rb").readline()
    return [] if line.split()[1:2] == [b"200"] else [f"the call after the churn: {line!r}"]


def walk(seed: int, steps: int, work: Path, churn: int = 200, short: bool = False) -> PosSequence:
    """The walk: a few events in a row (each kind once), `steps` seeded steps, the churn
    and the burst, then review 35's settle. `short`: one outage with one one-shot sale,
    and calls only in the seeded steps (`make test`'s walk)."""
    work.mkdir(parents=True, exist_ok=True)
    seq = PosSequence(seed, work)
    if short:
        seq.outage_sales = 1
        seq.ACTIONS = [a for a in PosSequence.ACTIONS if a not in SLOW_EVENTS]
    try:
        script = ["new", "hold", "raw", "twice", "confirm", "outage", "bad"]
        for action in script if short else ["oneshot", *script]:
            seq.do(action)
        for _ in range(steps):
            seq.step()
        seq.problems = seq.churn_then_burst(churn)
        seq.problems += seq.settle()
    finally:
        seq.close()
    return seq


def _check(seq: PosSequence) -> None:
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert not seq.problems, "\n".join(seq.problems)
    assert not seq.dropped, seq.dropped[:5]
    assert seq.connections == 2, seq.connections  # opened once, and again after the burst
    assert all(code == 0 for code in seq.stops), seq.stops
    assert seq.drains and max(seq.drains) <= PROMISED_DRAIN_S, (seq.drains, seq.counts)
    assert seq.counts.get("online/again", 0) >= 1, seq.counts


@pytest.mark.timeout(300)
def test_one_pos_connection_a_short_seeded_walk_with_one_shots_and_an_outage(
    tmp_path: Path,
) -> None:
    """CONTRACT §4, §5, §9, §11, §12, §13: the short walk (make test)."""
    seq = walk(3801, 30, tmp_path / "work", churn=120, short=True)
    _check(seq)
    assert seq.compared >= 30, seq.counts
    assert seq.counts.get("oneshot/sync/down/1") == 1, seq.counts


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_one_pos_connection_two_thousand_calls(tmp_path: Path) -> None:
    """CONTRACT §4, §5, §9, §11, §12, §13: ~2,000 calls on the one connection."""
    seq = walk(3802, 1500, tmp_path / "work", churn=600)
    _check(seq)
    assert seq.compared >= 1500, seq.counts


if __name__ == "__main__":  # python -m tests.test_review38_long38 SEED STEPS [short]
    import shutil

    t0 = time.monotonic()
    where = Path("/tmp") / f"long38-{sys.argv[1]}"
    shutil.rmtree(where, ignore_errors=True)
    s = walk(int(sys.argv[1]), int(sys.argv[2]), where, short="short" in sys.argv)
    print(f"{s.compared} compared, {len(s.mismatches)} mismatches, {time.monotonic() - t0:.1f} s")
    print(json.dumps(s.counts, sort_keys=True), s.stops, "drains", s.drains)
    print("connections", s.connections, "dropped", s.dropped[:10])
    for m in s.mismatches[:10]:
        print("MISMATCH", m)
    for p in s.problems:
        print("PROBLEM", p)


# ---------------------------------------------------------------- CONTRACT §12: an empty line late


def _answer(sock: socket.socket) -> bytes:
    """One JSON answer read from `sock` (b"" when the server closed it first)."""
    got = b""
    while not got.endswith(b"}\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk
    return got


def test_an_empty_line_after_the_answer_keeps_the_keep_alive_idle_time(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §12 (review 34's decision, review 38's empty lines): an old HTTP stack's
    extra CRLF after a POST's body is ignored. Written by the POS apart from the body, it
    comes after the answer (Nagle's algorithm holds it until the agent's answer brings
    the ACK). Until review 38 (long38) it was taken as the first bytes of the next
    request's head: the head's 10 s timer, not the 75 s an idle kept connection has
    (uvicorn's keep-alive timer, which any byte cancels), and the connection closed 10 s
    after each call; the POS's next call, a customer later, met it closed. Now such an
    empty line is dropped as it comes and the connection stays as idle as it was. The
    head's timer is made short here (0.5 s) to see it in a second."""
    from tillpoint.agent import http_api

    monkeypatch.setattr(http_api, "HEAD_TIMEOUT_S", 0.5)
    body = json.dumps({"text": "2770000000017"}).encode()
    call = b"POST /v1/identify HTTP/1.1\r\nHost: till\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(call)
        assert _answer(sock).startswith(b"HTTP/1.1 200 "), "the first call"
        sock.sendall(b"\r\n")  # the CRLF, after the answer
        time.sleep(0.2)
        sock.sendall(b"\r")  # (and one cut in two)
        sock.sendall(b"\n")
        time.sleep(1.2)  # idle: past the head's timer, well within keep-alive
        sock.sendall(call)
        assert _answer(sock).startswith(b"HTTP/1.1 200 "), "closed after an empty line"
    # a connection that sends only empty lines is still one that sends no head: closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        began = time.monotonic()
        sock.sendall(b"\r\n")
        time.sleep(0.2)
        sock.sendall(b"\r\n")
        assert sock.recv(65536) == b""
        assert time.monotonic() - began < 5


def test_a_401_on_a_token_bind_keeps_the_pos_connection(agent: Any) -> None:
    """CONTRACT §12: a POS on a token-protected bind that sends a call without its token
    (a body sent whole, no `Expect`) gets the 401 and its connection goes on: the next
    call, with the token, is answered on it, and so are a 404 and a 405 between."""
    from tillpoint.agent.http_api import HttpServer

    srv = HttpServer(agent, "127.0.0.1:0", token="pos-token")
    srv.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        body = json.dumps({"text": "2770000000017"}).encode()
        token = {"Authorization": "Bearer pos-token"}
        statuses = []
        socks: set[int] = set()  # the one connection's socket, never another
        for method, path, headers in [
            ("POST", "/v1/identify", {}),
            ("POST", "/v1/identify", token),
            ("POST", "/v1/nothing", token),
            ("GET", "/v1/identify", token),
            ("POST", "/v1/identify", {"Authorization": "Bearer wrong"}),
            ("POST", "/v1/identify", token),
        ]:
            conn.request(method, path, body, {"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            resp.read()
            statuses.append((resp.status, resp.will_close))
            socks.add(id(conn.sock))
        conn.close()
    finally:
        srv.stop()
    assert statuses == [(401, False), (200, False), (404, False), (405, False), (401, False),
                        (200, False)]  # fmt: skip
    assert len(socks) == 1
