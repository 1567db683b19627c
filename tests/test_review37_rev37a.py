"""Review 37 (rev37a): session 36's agent-side changes read again, adversarially
(CONTRACT §7, §10, §11). Each test marked "failed before the fix" did; the others pin
what was checked and found right. Real parts: `tillpoint` one-shot commands as
processes, the reference hub on 127.0.0.1 with its own gRPC handlers, real SQLite files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import receipt
from .test_review35_left35 import owed_releases
from .test_review36_left36 import EXE, GatedReleases, confirm_started, owed_till
from .test_review36_left36 import gated_releases as gated_releases  # a fixture
from .test_review36_rev36a import full_till as full_till  # a fixture

# ---------------------------------------- 1. a one-shot command stopped while it pays what it owes


def _answer_of(proc: subprocess.Popen[bytes]) -> tuple[str, dict[str, object]]:
    """The one JSON document a `--json` command wrote, read line by line until it parses."""
    assert proc.stdout is not None
    text = ""
    while True:
        line = proc.stdout.readline().decode()
        assert line, "the process ended before its answer"
        text += line
        try:
            return text, json.loads(text)
        except json.JSONDecodeError:
            continue


@pytest.mark.slow  # ~5 s of set-up (a hub stopped and started), then a `tillpoint` process
@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],  # SIGHUP: review 38 (rev38b)
    ids=["SIGTERM", "SIGINT", "SIGHUP"],
)
def test_a_one_shot_stopped_while_it_sends_what_it_owes_exits_as_its_answer_said(
    tmp_path: Path, gated_releases: GatedReleases, sig: signal.Signals
) -> None:
    """CONTRACT §10 (exit codes: 0 for a call answered), §11 (the releases owed are sent
    after a one-shot command's answer, never delaying it). `tillpoint confirm` answered
    CONFIRMED (the sale is committed) and then sends the releases owed from the hub's
    outage; a POS (or its supervisor's timeout, or an operator's Ctrl-C) stops it while
    the hub works on one. The sale's answer stands, so its exit code must too: before the
    fix the process died of the SIGTERM (-15, a shell's 143) or exited 130 after a
    KeyboardInterrupt, and a POS that reads the exit code first took a committed sale for
    a failed one (sold again under a new receiptId: twice). What was not released stays
    owed for the next command. Failed before the fix."""
    gated_releases.gate = threading.Event()
    hub, data, conf, env = owed_till(tmp_path, 3, redeem_timeout_ms=5000)
    try:
        proc = confirm_started(tmp_path, data, conf, env)
        try:
            text, doc = _answer_of(proc)
            assert doc["state"] == "CONFIRMED"
            # the first owed release is in the hub's handler, the till waiting for it
            for _ in range(200):
                if gated_releases.started:
                    break
                gated_releases.gate.wait(0.05)
            assert gated_releases.started, "no owed release was sent"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            gated_releases.gate.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (proc.returncode, err)
        assert out == b"", "the answer is the one document, nothing after it"
        assert "internal error" not in err.decode()
        assert json.loads(text)["receiptId"] == "sale-1"
        assert owed_releases(data) >= 2  # those not sent stay owed, for the next command
    finally:
        hub.stop()


# ---------------------------------------- 2. a network printer's close (checked, found right)


def _printer(behaviour: str, job_len: int) -> tuple[int, bytearray, threading.Event, Any]:
    """A network printer on 127.0.0.1 taking one connection: `reads-closes` reads the job
    then closes its side (before the agent's FIN); `reads-resets` reads the whole job then
    resets the connection (RST); `stalls` has the smallest receive buffer and reads
    nothing until `go` is set (a printer whose buffer is full: it acknowledges no more
    bytes), then reads the rest. Answers the port, what it read, `go` and its thread."""
    import socket
    import struct

    listener = socket.socket()
    if behaviour == "stalls":
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's least
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10.0)
    got = bytearray()
    go = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        conn.settimeout(20.0)
        try:
            if behaviour == "stalls":
                go.wait(20.0)
            while len(got) < job_len and (chunk := conn.recv(65536)):
                got.extend(chunk)
            if behaviour == "reads-resets":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif behaviour == "stalls":
                conn.recv(1)  # the agent's FIN
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], got, go, thread


@pytest.mark.parametrize("behaviour", ["reads-closes", "reads-resets"])
def test_a_close_to_a_printer_that_closes_or_resets_after_the_job_ends_quietly(
    behaviour: str,
) -> None:
    """CONTRACT §7 (PRINTING: the close sends the FIN and drains until the printer took
    every byte or closed its side). A printer that closes its side after the job, or
    resets the connection after reading it: the close ends well before its bound, says
    nothing (no error for a job the printer has), and the printer has every byte."""
    from tillpoint.printer.transport import NetworkTransport

    job = b"\x1b@" + b"coupon line\n" * 500 + b"\x1dV\x00"
    port, got, _, thread = _printer(behaviour, len(job))
    transport = NetworkTransport("127.0.0.1", port, 2.0, 5.0, close_drain_s=10.0)
    transport.open()
    transport.write(job)
    thread.join(10.0)  # it read the job and closed (or reset) before the agent's close
    transport.close()  # neither raises nor waits out its 10 s (the test's own timeout)
    assert bytes(got) == job


def test_a_close_to_a_printer_that_acknowledges_nothing_waits_its_bound_and_delivers_later() -> (
    None
):
    """CONTRACT §7. A printer whose buffer is full acknowledges no byte more: the close's
    drain must not take the FIN's one byte in the send queue for "all acknowledged"
    (review 36's `unsent <= fin`): it waits its whole bound (the bytes still in the
    agent's kernel), then closes gracefully (not a reset), so the printer gets the whole
    job when it reads again: every byte arrives after the close."""
    from tillpoint.printer.transport import NetworkTransport

    job = b"\x1b@" + bytes(range(256)) * 64 + b"\x1dV\x00"  # 16 KiB: more than it takes
    port, got, go, thread = _printer("stalls", len(job))
    transport = NetworkTransport("127.0.0.1", port, 2.0, 5.0, close_drain_s=0.3)
    transport.open()
    transport.write(job)  # into the agent's kernel; the printer takes a few KiB of it
    sock = transport._sock
    assert sock is not None
    from tillpoint.printer.transport import _unsent

    waiting = _unsent(sock)
    assert waiting is not None and waiting > 1, "the printer took the whole job"
    import time

    started = time.monotonic()
    transport.close()
    # its whole bound (a lower bound: a loaded machine only makes it longer); before
    # review 36's `<= fin` counted the FIN alone, an early end is what a miscount gives
    assert time.monotonic() - started >= 0.29
    assert not got
    go.set()
    thread.join(20.0)
    assert bytes(got) == job  # the tail delivered after the close, not reset away


# ---------------------------------------- 3. storageError: a retry answered from storage


def test_a_checkout_retried_on_a_freed_ledger_leaves_storage_error_until_a_sale_is_stored(
    full_till: tuple[Any, Any],
) -> None:
    """CONTRACT §10 (`storageError`: "sales are refused for storage since
    `storageErrorAt`", cleared when a sale is stored again; DECISIONS "Review 36: what
    clears storageError"). The ledger is freed; the POS sends again a Checkout already
    committed and a Confirm already confirmed (their answers come from what is stored,
    nothing is committed): the sign stays, said alike by `/healthz`, `/v1/status` (what
    `tillpoint status` prints when `run` serves) and the Status the gRPC door answers.
    The next new sale clears it everywhere. Checked, found right."""
    import urllib.request

    from .test_review36_rev36a import _healthz, _post

    agent, srv = full_till

    def said() -> tuple[str | None, str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/v1/status", timeout=10) as r:
            http_status = json.loads(r.read())
        grpc_status = agent.status().to_json()
        return (
            _healthz(srv.port).get("storageError"),
            str(http_status.get("storageError", "")),
            str(grpc_status["storageError"]),
        )

    sign = said()
    assert sign[0] and "disk is full" in sign[0] and sign[0] == sign[1] == sign[2]
    status, held = _post(srv.port, "/v1/hold", receipt("held-1"))
    assert (status, held["state"]) == (200, "HELD")
    agent._ledger.execute("PRAGMA max_page_count = 1073741823")  # room again
    status, again = _post(srv.port, "/v1/checkout", receipt("sold-0"))  # the same body
    assert (status, again["state"]) == (200, "CONFIRMED")
    assert said() == sign  # nothing was committed: still the sign
    status, done = _post(srv.port, "/v1/confirm", {"receiptId": "held-1"})
    assert (status, done["state"]) == (200, "CONFIRMED")  # a sale stored
    assert said() == (None, "", "")
    status, again = _post(srv.port, "/v1/confirm", {"receiptId": "held-1"})
    assert (status, again["state"]) == (200, "CONFIRMED")
    assert said() == (None, "", "")


@pytest.mark.slow  # a hub and a `tillpoint` process: ~4 s
def test_a_one_shot_stopped_just_after_its_answer_exits_as_its_answer_said(
    tmp_path: Path,
) -> None:
    """CONTRACT §10, §11. Nothing owed: after its answer a one-shot `tillpoint hold`
    looks for what it owes the hub, closes its hub link (up to half a second for gRPC's
    watch of the channel) and its files, and exits. A SIGTERM in that time, the answer
    read (a POS's supervisor ending the process it has its answer from), made it die
    -15 after a HELD answer; here one every 20 ms from the answer on. Failed before the
    fix (and with the sending alone guarded: its closes and exit)."""
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data
    from tillpoint.sync.loopback import receipt as hub_receipt

    from .conftest import enrolled_till
    from .test_review35_spec35c import ANNA, BIG

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        data = tmp_path / "data"
        enrolled_till(hub, data, "till-1").stop()
        conf = tmp_path / "tillpoint.toml"
        conf.write_text(f'device_id = "till-1"\ndata_dir = "{data}"\n')
        (tmp_path / "sale.json").write_text(json.dumps(hub_receipt("s-1", ANNA, lines=BIG)))
        env = {k: v for k, v in os.environ.items() if k != "TILLPOINT_DEVICE_ID"}
        proc = subprocess.Popen(
            [EXE, "--config", conf, "hold", tmp_path / "sale.json", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _, doc = _answer_of(proc)
            assert (doc["state"], doc["mode"]) == ("HELD", "ONLINE")
            for _ in range(1500):  # a SIGTERM every 20 ms from the answer to the exit
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.02)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (proc.returncode, err)
        assert out == b""
    finally:
        hub.stop()


# ---------------------------------------- 4. an owed release across a step of the wall clock


@pytest.mark.slow  # a hub stopped and started, its link's reconnection: 5-25 s
def test_a_release_owed_across_a_step_forward_of_days_is_still_sent(
    tmp_path: Path, gated_releases: GatedReleases
) -> None:
    """CONTRACT §11 ("expired and cancelled holds release their reservations"; a hold
    lives `holdTtlSeconds` of time that passes). A hold granted ONLINE is cancelled while
    the hub is away: its release is owed. Then NTP sets the till's wall clock right, two
    days forward (an RTC that had lost them). The till follows the step for its open
    holds, but read the closed hold's `closed_at` against the stepped clock: "closed more
    than a day ago, run out at the hub" — the release was dropped, never sent, while the
    hub (its own clock) still held the customer's points from every till for its copy's
    whole time. The times an owed release or ask is judged by move with the step, as the
    open holds' do. Failed before the fix (no release reached the hub)."""
    from datetime import datetime, timedelta

    from tillpoint.agent.results import receipt_from_json

    from .conftest import SteppingClock
    from .test_review31_long31 import _sale, stepped_while_it_asks

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    with stepped_while_it_asks(tmp_path, clock, 2.0) as (agent, data, _, hub):
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0})
        agent.sweep_holds()  # the clock's mark made (the hold timer's round)
        held = agent.hold(receipt_from_json(_sale("h-1", clock(), redeemPoints=100)))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 100)
        hub.stop()
        assert agent.cancel("h-1").state == "CANCELLED"  # its release owed
        assert owed_releases(tmp_path / "till") == 1
        hub.restart()
        clock.passes(30)
        clock.stepped(timedelta(days=2).total_seconds())  # NTP
        agent.sweep_holds()  # the hold timer's round follows the step
        assert agent.hub_calls_owed()["release"] == 1
        for _ in range(50):  # the link's reconnection after the hub's restart (backoff)
            if agent.retry_hub_releases() or owed_releases(tmp_path / "till") == 0:
                break
            threading.Event().wait(0.2)
        assert len(gated_releases.started) == 1, "the owed release was dropped unsent"
        assert owed_releases(tmp_path / "till") == 0
