"""Review 36 (rev36a): session 35's agent-side changes read again, adversarially
(CONTRACT §10, §11, §12). Each test marked "failed before the fix" did; the others pin
what was checked and found right. Real parts: the agent on real SQLite files (a ledger
that cannot grow: SQLite's own "database or disk is full"), its HTTP door on a real
server, real sockets.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import StorageError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import post_to as _post
from .conftest import receipt, snapshot

# ---------------------------------------- 1. storageError: what a stored sale is

SKU = "4601234000017"


def _refund(refund_id: str, receipt_id: str) -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": SKU, "qty": "1"}],
    }


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        assert answer.status == 200
        found: dict[str, Any] = json.loads(answer.read())
        return found


@pytest.fixture
def full_till(tmp_path: Path) -> Iterator[tuple[Agent, HttpServer]]:
    """A till with ten sales stored, then a ledger that cannot grow (its file held at the
    pages it has: SQLite's own "database or disk is full"), filled until a Checkout is
    refused; its HTTP door on a real server."""
    from tillpoint.agent.results import receipt_from_json

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    for i in range(10):
        assert agent.checkout(receipt_from_json(receipt(f"sold-{i}"))).state == "CONFIRMED"
    pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
    agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
    for i in range(500):
        try:
            agent.checkout(receipt_from_json(receipt(f"fill-{i}")))
        except StorageError as exc:
            assert "disk is full" in exc.message
            break
    else:
        raise AssertionError("the ledger never filled")
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    try:
        yield agent, srv
    finally:
        srv.stop()
        agent.close()


def test_a_hold_or_refund_stored_on_a_full_ledger_leaves_storage_error_while_sales_fail(
    full_till: tuple[Agent, HttpServer],
) -> None:
    """CONTRACT §10 (`/healthz`'s `storageError`: "sales are refused for storage since
    `storageErrorAt`", cleared when a sale is stored again). On a ledger that cannot
    grow a Hold (one small row) and a Refund still commit while every Checkout and every
    Confirm (the sale's receipt rows) is refused: review 35 counted a Hold's and a
    Refund's commit as a sale stored, so `/healthz`, gRPC's Status and the metric said
    the till was well after each, and the ERROR was logged again at the next refused
    Confirm (the sign flapped while no sale could be stored). Failed before the fix."""
    agent, srv = full_till
    said = _healthz(srv.port)["storageError"]
    assert "disk is full" in said
    status, held = _post(srv.port, "/v1/hold", receipt("held-1"))
    assert (status, held["state"]) == (200, "HELD")  # a small row still fits
    assert _healthz(srv.port).get("storageError") == said
    status, error = _post(srv.port, "/v1/confirm", {"receiptId": "held-1"})
    assert status == 503 and error["error"]["code"] == "UNAVAILABLE"  # the payment's step refused
    status, refunded = _post(srv.port, "/v1/refund", _refund("rf-1", "sold-0"))
    assert status == 200 and refunded["refundId"] == "rf-1"  # a refund still fits
    assert _healthz(srv.port).get("storageError") == said
    assert agent.status().to_json()["storageError"] == said  # gRPC's Status, the metric
    status, error = _post(srv.port, "/v1/checkout", receipt("sale-1"))
    assert status == 503 and error["error"]["code"] == "UNAVAILABLE"
    # room again: the Confirm stores the sale, and the sign clears
    agent._ledger.execute("PRAGMA max_page_count = 1073741823")
    status, done = _post(srv.port, "/v1/confirm", {"receiptId": "held-1"})
    assert (status, done["state"]) == (200, "CONFIRMED")
    assert "storageError" not in _healthz(srv.port)
    assert agent.status().to_json()["storageErrorAt"] == ""


def test_a_confirm_answered_from_storage_that_follows_a_step_leaves_storage_error(
    tmp_path: Path,
) -> None:
    """CONTRACT §10, §11. A Confirm sent again for a receipt already confirmed writes no
    sale; if NTP steps the clock while it waits for the agent's lock, its transaction
    moves the open holds by the step (rows rewritten in place, which a full ledger still
    takes). Review 35 counted any row changed in a sale's transaction as a sale stored,
    so that retry cleared `storageError` while every new sale was refused. Failed
    before the fix (the sign is cleared now by a receipt committed, nothing else)."""
    from datetime import datetime

    from tillpoint.agent.results import receipt_from_json

    from .conftest import SteppingClock
    from .test_review30_memo30 import ANNA, MILK, sale
    from .test_review35_rev35 import _stepped_while_waiting_for_the_lock

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    try:
        program = {**snapshot()["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
        line = {"sku": MILK, "qty": "1", "priceMinor": 100}
        assert agent.hold(receipt_from_json(sale("open", clock(), card=ANNA, lines=[line])))
        assert agent.checkout(receipt_from_json(sale("done", clock(), lines=[line])))
        pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
        agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        refused = None
        for i in range(500):
            body = sale(f"fill-{i}", clock(), lines=[line])
            try:
                agent.checkout(receipt_from_json(body))
            except StorageError:
                refused = body
                break
        assert refused is not None
        said = agent.status().to_json()["storageError"]
        assert "disk is full" in said
        agent.sweep_holds()  # the hold timer's round: the clock's mark made
        expires = agent._life("open").expires_at
        answers = _stepped_while_waiting_for_the_lock(
            agent, clock, "confirm", lambda: agent.confirm("done"), 3600
        )
        assert not isinstance(answers[0], Exception), answers[0]
        assert answers[0].state == "CONFIRMED"  # the stored answer
        assert agent._life("open").expires_at > expires  # the step followed, stored
        assert agent.status().to_json()["storageError"] == said
        with pytest.raises(StorageError):
            agent.checkout(receipt_from_json(refused))
    finally:
        agent.close()


# ---------------------------------------- 2. run's stop mid-release, then a restart


@pytest.mark.slow  # two `tillpoint run` processes against a slow hub: ~8 s
def test_a_sigterm_mid_release_then_a_restart_sends_every_owed_release_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, procs: list[Any]
) -> None:
    """CONTRACT §10 (a graceful stop), §11 (a cancelled hold's points released at the
    hub). Thirty releases owed to a slow hub (15 holds cancelled while it was away, 15
    asked for by a process gone and never stored); a SIGTERM to `tillpoint run` while its
    hold timer sends them (review 35: it stops between calls), then a second `run`: every
    owed release reaches the hub and is done there once, none twice, none lost, and the
    ledger owes nothing. Checked and found right."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tillpoint.sync.hub_server import HubServicer
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    from .conftest import free_port
    from .test_review35_left35 import owed_for_cancels_and_asks, owed_releases

    done: list[str] = []
    started: list[float] = []
    release = HubServicer.ReleaseRedemption

    def slowly(self: Any, request: Any, context: Any) -> Any:
        started.append(time.monotonic())
        time.sleep(0.2)  # a busy hub, within the till's shipped deadline
        answer = release(self, request, context)
        done.append(request.receipt_id)  # not reached when the call was refused
        return answer

    monkeypatch.setattr(HubServicer, "ReleaseRedemption", slowly)
    exe = str(Path(sys.executable).parent / "tillpoint")
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "data"
    try:
        n = 15
        # the asks made by a process gone two minutes before: past the time their grant
        # could still come (`LATE_GRANT_S`), so the hub's "nothing held" ends each one
        owed_for_cancels_and_asks(hub, data, n, asked_ago_s=120)
        hub.restart()  # the slow one
        conf = tmp_path / "tillpoint.toml"
        conf.write_text(
            f'device_id = "till-1"\ndata_dir = "{data}"\n'
            f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[http]\nlisten = "127.0.0.1:0"\n'
            "[metrics]\nenabled = false\n"
        )
        env = dict(os.environ)
        env.pop("TILLPOINT_DEVICE_ID", None)

        def run() -> Any:
            proc = subprocess.Popen([exe, "--config", conf, "run"], env=env)
            procs.append(proc)
            return proc

        first = run()
        deadline = time.monotonic() + 30
        while len(started) < 5:  # mid-way through the owed releases
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        left = owed_releases(data)
        assert 0 < left < 2 * n
        assert len(set(done)) == len(done) == 2 * n - left  # each sent one is off the ledger
        second = run()
        deadline = time.monotonic() + 60
        while owed_releases(data):
            assert time.monotonic() < deadline and second.poll() is None
            time.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        assert sorted(done) == sorted([f"h-{i}" for i in range(n)] + [f"a-{i}" for i in range(n)])
    finally:
        hub.stop()


# ---------------------------------------- 3. the 16 KiB head check, counted in bytes


def _quote_post(body_size: int) -> bytes:
    """A POST /v1/quote (kept alive) whose JSON body, padded with spaces, is `body_size`
    bytes: a body larger than the head limit."""
    body = json.dumps(receipt("q-1")).encode()
    body += b" " * (body_size - len(body))
    head = (
        b"POST /v1/quote HTTP/1.1\r\nHost: till\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


@pytest.mark.parametrize("size", [16 * 1024, 16 * 1024 + 1])
@pytest.mark.parametrize("piece", [0, 1, 1000], ids=["one-write", "bytes", "kib"])
def test_a_body_larger_than_16_kib_in_the_heads_packet_then_a_pipelined_head(
    server: HttpServer, size: int, piece: int
) -> None:
    """CONTRACT §12: the 16 KiB limit is the head's, not the connection's bytes. A quote
    whose 20 KiB body comes in the same write as its head (the count reaches 20 KiB
    before h11 has read the head), then, pipelined behind it, a head of exactly 16 KiB
    (served) or one byte more (400): in the same write, a byte at a time, or in
    1,000-byte writes that cut the body's end and the next head anywhere. Checked and
    found right (the count is only a hint; the buffer decides, and starts again after
    the answer)."""
    import socket
    import time

    from .test_review35_left35 import answers, status_head

    request = _quote_post(20 * 1024) + status_head(size)
    want = [200, 200 if size == 16 * 1024 else 400]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not piece:
            sock.sendall(request)
        else:
            for at in range(0, len(request), piece):
                sock.sendall(request[at : at + piece])
                if piece > 1:
                    time.sleep(0.001)
        assert answers(sock) == want


# ---------------------------------------- 4. a step just after a call looked for one


class _StepsJustAfterALook:
    """A `SteppingClock` whose wall clock is stepped (NTP) once, at the instant just after
    the agent read it for the `nth` time inside `function` to look for a step (the agent
    reads the wall clock, then the steady one: the step comes with that steady reading)."""

    def __init__(self, clock: Any, function: str, step_s: float, nth: int = 1) -> None:
        self.clock, self.function, self.step_s, self.nth = clock, function, step_s, nth
        self.armed = False
        self.done = False

    def steady(self) -> float:
        import sys

        if self.armed and not self.done:
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_name == self.function and frame.f_code.co_filename.endswith(
                    "service.py"
                ):
                    self.nth -= 1
                    if not self.nth:
                        self.clock.stepped(self.step_s)
                        self.done = True
                    break
                frame = frame.f_back  # type: ignore[assignment]
        return float(self.clock.steady())


def _stepping_agent(
    tmp_path: Path, function: str, nth: int = 1
) -> tuple[Agent, Any, _StepsJustAfterALook]:
    from datetime import datetime

    from tillpoint.agent.results import receipt_from_json

    from .conftest import SteppingClock
    from .test_review30_memo30 import ANNA, MILK, sale

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    look = _StepsJustAfterALook(clock, function, 3600, nth)
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=look.steady)
    program = {**snapshot()["program"], "holdTtlSeconds": 600}
    agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
    line = {"sku": MILK, "qty": "1", "priceMinor": 100}
    held = agent.hold(receipt_from_json(sale("h-1", clock(), card=ANNA, lines=[line])))
    assert held.state == "HELD"
    clock.passes(60)  # the POS takes the payment
    agent.sweep_holds()  # the clock's mark made
    return agent, clock, look


def test_a_step_just_after_the_timers_look_expires_no_hold_with_time_left(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes. The hold timer's
    round looks for a step under the agent's lock, then read the clock again for its
    "now": NTP stepping an hour forward between the two (the round's look found none)
    compared the hold's unmoved expiry with the stepped clock and expired it with 9 of
    its 10 minutes left (released at the hub, its Confirm refused). Rare at a till
    (microseconds each round), but a stress of steps met it in half the holds. "Now" is
    the clock on the holds' time line (`Agent._now`). Failed before the fix."""
    # its first look is before the lock, the second under it
    agent, _, look = _stepping_agent(tmp_path, "sweep_holds", nth=2)
    try:
        look.armed = True
        assert agent.sweep_holds() == 0
        assert look.done
        assert agent._life("h-1").state == "HELD"
        agent.sweep_holds()  # the next round follows the step: the hold moved with it
        assert agent.confirm("h-1").state == "CONFIRMED"
    finally:
        agent.close()


def test_a_step_just_after_a_confirms_look_confirms_the_hold(tmp_path: Path) -> None:
    """CONTRACT §11. A Confirm looks for a step inside its transaction (review 35), then
    read the clock again to compare the hold's expiry: NTP stepping an hour forward
    between the two answered "hold expired" for a hold with 9 minutes left, the payment
    taken. Failed before the fix."""
    agent, _, look = _stepping_agent(tmp_path, "_confirm")
    try:
        look.armed = True
        assert agent.confirm("h-1").state == "CONFIRMED"
        assert look.done
    finally:
        agent.close()


def test_a_step_just_after_a_retried_holds_look_answers_the_stored_hold(
    tmp_path: Path,
) -> None:
    """CONTRACT §11 (a Hold sent again answers what is stored). The retry looks for a
    step inside its transaction, then read the clock again: an hour forward between the
    two made the stored hold look expired, and the retry priced it afresh (a new hold,
    a new `holdExpiresAt` an hour later than the POS was told). Failed before the fix."""
    from tillpoint.agent.results import receipt_from_json

    from .test_review30_memo30 import ANNA, MILK, sale

    agent, clock, look = _stepping_agent(tmp_path, "_hold")
    try:
        first = json.loads(agent._life("h-1").held_result)["holdExpiresAt"]
        line = {"sku": MILK, "qty": "1", "priceMinor": 100}
        body = sale("h-1", clock() - timedelta(seconds=60), card=ANNA, lines=[line])
        look.armed = True
        again = agent.hold(receipt_from_json(body))
        assert look.done
        assert again.state == "HELD"
        assert again.hold_expires_at == first  # the stored hold, not a new one
    finally:
        agent.close()


@pytest.mark.slow  # ~4 s of steps under five threads
def test_steps_under_concurrent_sales_and_the_timer_keep_every_hold_its_time(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes. Four threads sell
    (Checkout; Hold then Confirm, Cancel, or a quote and the Hold sent again) and one
    runs the hold timer's round without pause, while the wall clock is stepped 300
    times (±30 min to ±2 h, net +42.5 h) and no time passes: no hold may expire, no
    Confirm be refused, and every open hold ends with its whole TTL left on the stepped
    clock, `holdExpiresAt` with it (each step followed once, none lost across threads).
    Before the fix half the holds expired (steps met between a look and a reading)."""
    import random
    import threading
    import time
    from datetime import datetime

    from tillpoint.agent.errors import TillpointError
    from tillpoint.agent.results import receipt_from_json

    from .conftest import SteppingClock
    from .test_review30_memo30 import ANNA, MILK, sale

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    try:
        program = {**snapshot()["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
        agent.sweep_holds()
        at, line = clock(), {"sku": MILK, "qty": "1", "priceMinor": 100}
        stop = threading.Event()
        problems: list[str] = []

        def sells(k: int) -> None:
            rng = random.Random(k)
            for i in range(10**6):
                if stop.is_set():
                    return
                rid = f"w{k}-{i}"
                body = receipt_from_json(sale(rid, at, card=ANNA, lines=[line]))
                kind = rng.random()
                try:
                    if kind < 0.3:
                        assert agent.checkout(body).state == "CONFIRMED"
                        continue
                    assert agent.hold(body).state == "HELD"
                    if kind < 0.5:
                        assert agent.confirm(rid).state == "CONFIRMED"
                    elif kind < 0.6:
                        assert agent.cancel(rid).state == "CANCELLED"
                    elif kind < 0.7:
                        agent.quote(body)
                        assert agent.hold(body).state == "HELD"
                except (TillpointError, AssertionError) as exc:
                    problems.append(f"{rid}: {exc!r}")

        def timer() -> None:
            while not stop.is_set():
                agent.sweep_holds()
                stop.wait(0.003)

        threads = [threading.Thread(target=sells, args=(k,)) for k in range(4)]
        threads.append(threading.Thread(target=timer))
        for thread in threads:
            thread.start()
        rng = random.Random(36)
        try:
            for _ in range(300):
                clock.stepped(rng.choice([3600, -3600, 1800, -1800, 7200, -5400]))
                time.sleep(0.01)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        agent.sweep_holds()  # the last step followed
        assert problems == []
        rows = agent._ledger.execute(
            "SELECT state, expires_at, held_result FROM receipt_life WHERE state IN"
            " ('HELD', 'EXPIRED')"
        ).fetchall()
        assert rows and all(state == "HELD" for state, _, _ in rows)
        now = clock()
        for _, expires, held in rows:
            assert datetime.fromisoformat(expires) - now == timedelta(seconds=600)
            assert datetime.fromisoformat(json.loads(held)["holdExpiresAt"]) - now == timedelta(
                seconds=600
            )
    finally:
        agent.close()
