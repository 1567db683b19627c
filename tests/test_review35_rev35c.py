"""Review 35, third pair of eyes (rev35c): the clock-step and listen changes merged in
review 35 (CONTRACT §10, §11). Each test marked "failed before the fix" did; the others
pin what was checked and found right. Real parts: the agent on real SQLite files (a
ledger that cannot grow: SQLite's own "database or disk is full"), a stepped wall clock
beside a steady one (`SteppingClock`), real gRPC servers (the agent's and the hub's)
beside another program's real listening socket, the kernel's own tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import StorageError, TillpointError

from .conftest import SteppingClock, needs_ipv6, snapshot
from .test_review30_memo30 import ANNA, MILK, sale
from .test_review35_rev35b import holder

__all__ = ["holder"]  # rev35b's fixture: another program listening on a port of its own

# ---------------------------------------- 1, 2. steps followed inside one transaction


def _agent(tmp_path: Path) -> tuple[Any, SteppingClock]:
    """An agent on a stepped wall clock beside a steady one, a 600 s hold TTL, and one
    open hold ("a-1") whose time the steps must keep."""
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    program = {**snapshot()["program"], "holdTtlSeconds": 600}
    agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
    body = sale("a-1", clock(), card=ANNA, lines=[{"sku": MILK, "qty": "1", "priceMinor": 100}])
    assert agent.hold(receipt_from_json(body)).state == "HELD"
    agent.sweep_holds()  # the clock's mark made
    return agent, clock


def _expiry(agent: Any, rid: str) -> tuple[datetime, datetime]:
    """(the ledger's expiry of the hold, the `holdExpiresAt` a retried Hold answers)."""
    import json

    row = agent._life(rid)
    held = json.loads(row.held_result)
    return datetime.fromisoformat(row.expires_at), datetime.fromisoformat(held["holdExpiresAt"])


def _two_steps_in_the_checkout(agent: Any, clock: SteppingClock, first: int, second: int) -> None:
    """The next Checkout meets a step of `first` s left for its transaction (made after
    its pricing's own look at the clock), then one of `second` s made inside it, before
    its early pricing is taken: it follows both in its one transaction."""
    followed, still = agent._clock_followed, agent._still

    def step_after_the_look(early: Any, confirm_now: bool) -> Any:
        out = followed(early, confirm_now)
        clock.stepped(first)  # NTP, while the Checkout waits for the agent's lock
        return out

    def step_inside(early: Any, view: Any) -> Any:
        clock.stepped(second)  # NTP again, inside the transaction
        return still(early, view)

    agent._clock_followed = step_after_the_look
    agent._still = step_inside


def _steps_no_more(agent: Any) -> None:
    for name in ("_clock_followed", "_still"):
        agent.__dict__.pop(name, None)


@pytest.mark.parametrize(("first", "second"), [(3600, -1800), (3600, -3600), (-3600, 7200)])
def test_a_checkout_that_follows_two_steps_and_commits_moves_the_holds_by_both_once(
    tmp_path: Path, first: int, second: int
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes; each step of the
    wall clock moves the open holds by the step, once. A Checkout's one transaction
    follows a step at its start and another before its early pricing is stored (review
    35 summed them): committed, the open hold moved by both, its `holdExpiresAt` with it,
    the sale's own time on the clock it is stored on, and no step left for the next call
    (a step followed twice moved the hold again)."""
    from tillpoint.agent.results import receipt_from_json

    agent, clock = _agent(tmp_path)
    try:
        expires, answered = _expiry(agent, "a-1")
        taken = agent._steps_taken
        _two_steps_in_the_checkout(agent, clock, first, second)
        body = sale("c-1", clock(), card=ANNA, lines=[{"sku": MILK, "qty": "1", "priceMinor": 90}])
        done = agent.checkout(receipt_from_json(body))
        _steps_no_more(agent)
        assert done.state == "CONFIRMED"
        assert agent._steps_taken == taken + 2
        moved = timedelta(seconds=first + second)
        assert _expiry(agent, "a-1") == (expires + moved, answered + moved)
        agent.sweep_holds()  # nothing left to follow: not moved again
        assert _expiry(agent, "a-1") == (expires + moved, answered + moved)
        assert agent._steps_taken == taken + 2
        # the hold keeps its time left by the clock it now lives on
        left = (expires + moved) - clock()
        assert timedelta(0) < left <= timedelta(seconds=600)
        assert agent.confirm("a-1").state == "CONFIRMED"
    finally:
        agent.close()


@pytest.mark.parametrize(("first", "second"), [(3600, -1800), (3600, -3600), (-3600, 7200)])
def test_a_checkout_refused_after_following_two_steps_gives_both_back_to_the_next_call(
    tmp_path: Path, first: int, second: int
) -> None:
    """CONTRACT §11, §10 (a ledger that cannot be written refuses the sale, nothing
    stored). A Checkout follows two steps inside its transaction, then its commit fails
    (the ledger cannot grow: "database or disk is full"): the holds' move is rolled back
    with it, and the steps are given back to the clock's mark, summed (review 35): the
    next call (the hold timer's round) moves the open hold by both, once, and the hold's
    `holdExpiresAt` with it; steps that cancel out leave it where it was."""
    from tillpoint.agent.results import receipt_from_json

    agent, clock = _agent(tmp_path)
    try:
        expires, answered = _expiry(agent, "a-1")
        pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
        agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        refused = None
        for i in range(500):  # the pages' free room filled by sales first
            line = {"sku": MILK, "qty": "1", "priceMinor": 80}
            body = sale(f"f-{i}", clock(), card=ANNA, lines=[line])
            try:
                agent.checkout(receipt_from_json(body))
            except StorageError as exc:
                assert "full" in exc.message
                refused = body
                break
        assert refused is not None
        assert _expiry(agent, "a-1") == (expires, answered)  # no step yet
        _two_steps_in_the_checkout(agent, clock, first, second)
        with pytest.raises(StorageError):
            agent.checkout(receipt_from_json(refused))
        _steps_no_more(agent)
        assert _expiry(agent, "a-1") == (expires, answered)  # rolled back with the sale
        agent._ledger.execute("PRAGMA max_page_count = 1073741823")
        agent.sweep_holds()  # the hold timer's round: the steps given back, followed
        moved = timedelta(seconds=first + second)
        assert _expiry(agent, "a-1") == (expires + moved, answered + moved)
        agent.sweep_holds()  # once
        assert _expiry(agent, "a-1") == (expires + moved, answered + moved)
        assert agent.confirm("a-1").state == "CONFIRMED"
        assert agent.checkout(receipt_from_json(refused)).state == "CONFIRMED"
    finally:
        agent.close()


def test_a_hold_priced_early_follows_a_step_once_and_is_stored_on_the_stepped_clock(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: review 35 follows a step at the start of `_hold` as well as before
    an early pricing is taken (review 34). A Hold priced before its transaction, with a
    step taken by its own early path (`_clock_followed`) and another met inside its
    transaction: the new hold is stored with its whole TTL on the clock it is stored on
    (not moved again by a step it already made its times after), and the open hold moved
    by both steps, once."""
    from tillpoint.agent.results import receipt_from_json

    agent, clock = _agent(tmp_path)
    try:
        expires, _ = _expiry(agent, "a-1")
        price_early = agent._price_early

        def step_after_pricing(*args: Any, **kwargs: Any) -> Any:
            out = price_early(*args, **kwargs)
            clock.stepped(3600)  # taken by the Hold's `_clock_followed`
            return out

        agent._price_early = step_after_pricing
        still = agent._still

        def step_inside(early: Any, view: Any) -> Any:
            clock.stepped(-1800)  # taken inside the Hold's transaction
            return still(early, view)

        agent._still = step_inside
        body = sale("h-1", clock(), card=ANNA, lines=[{"sku": MILK, "qty": "1", "priceMinor": 90}])
        held = agent.hold(receipt_from_json(body))
        for name in ("_price_early", "_still"):
            agent.__dict__.pop(name)
        assert held.state == "HELD"
        new, answered = _expiry(agent, "h-1")
        assert new == clock() + timedelta(seconds=600) == answered
        assert _expiry(agent, "a-1")[0] == expires + timedelta(seconds=1800)
        agent.sweep_holds()
        assert _expiry(agent, "h-1")[0] == new  # no step left to move it again
    finally:
        agent.close()


# ---------------------------------------- 3. a call that waits for the lock while stepped


def test_a_refund_waiting_for_the_lock_while_the_clock_is_stepped_says_the_receipt_is_held(
    tmp_path: Path,
) -> None:
    """CONTRACT §6, §11: a refund of a receipt held here and not confirmed is refused in
    the words of its life: "held here, not confirmed ... (confirm it, or cancel the
    hold)". A Refund follows a step before it takes the agent's lock, then waits for it
    behind another call's commit; NTP steps the clock an hour forward meanwhile. The
    Refund compared the hold's unmoved expiry with the stepped clock and told the
    cashier "its hold expired here" of a hold with 9 of its 10 minutes left (a cashier
    who then prices the sale again reserves the points twice). As rev35 did for Confirm
    and Hold: the step is followed inside the Refund's own transaction. Failed before
    the fix."""
    import threading
    import time

    from tillpoint.agent.errors import NotFound
    from tillpoint.agent.results import refund_from_json
    from tillpoint.agent.service import Agent

    from .test_review35_rev35 import _lock_line, _waiting_at

    agent, clock = _agent(tmp_path)
    try:
        clock.passes(60)  # the POS takes the payment
        agent.sweep_holds()
        refund = {
            "refundId": "rf-1",
            "receiptId": "a-1",
            "at": clock().isoformat(),
            "lines": [{"sku": MILK, "qty": "1"}],
        }
        answers: list[Any] = []

        def run() -> None:
            try:
                answers.append(agent.refund(refund_from_json(refund)))
            except Exception as exc:  # the answer the POS would get
                answers.append(exc)

        line = _lock_line(Agent.refund)
        thread = threading.Thread(target=run)
        with agent._lock:  # another call's commit in progress
            thread.start()
            deadline = time.monotonic() + 30
            while not _waiting_at(thread, "refund", line):
                assert time.monotonic() < deadline and thread.is_alive(), "never waited"
                threading.Event().wait(0.01)
            clock.stepped(3600)  # NTP, while the Refund waits for the lock
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert isinstance(answers[0], NotFound), answers
        assert "a-1 is held here, not confirmed" in answers[0].message, answers[0].message
        assert agent.confirm("a-1").state == "CONFIRMED"  # its time left kept
    finally:
        agent.close()


# ---------------------------------------- 4. another program on the gRPC port


@needs_ipv6
@pytest.mark.parametrize("other", ["::1", "fd00::2"])
def test_grpc_on_the_ipv4_wildcard_refuses_another_program_on_an_ipv6_address(
    tmp_path: Path, holder: Any, other: str
) -> None:
    """CONTRACT §10 (`[server] listen`, "never half-bound"). A wildcard listen covers
    every address of the host, in both families (grpcio binds `0.0.0.0:PORT` dual-stack
    as `[::]`). Another program listening on [::1]:PORT (or any IPv6 address of the host)
    makes grpcio's dual-stack bind fail; it falls back to 0.0.0.0 alone with a log line
    of its own, and the agent started: a POS connecting over IPv6 (`localhost` as ::1)
    reached that program. The other family's *wildcard* was refused already (rev35b); an
    address of it takes a part of the same connections. Failed before the fix."""
    import socket

    from tillpoint.agent import server as server_module
    from tillpoint.agent.service import Agent

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind((other, 0))
    except OSError:
        pytest.skip(f"{other} is not an address of this host")
    port = holder(other)
    agent = Agent(tmp_path / "data", "till-1")
    try:
        with pytest.raises(TillpointError) as refused:
            server, _, _ = server_module.build_server(agent, f"0.0.0.0:{port}", token="t" * 32)
            server.stop(None).wait(5)
        assert f"[{other}]:{port} is another program's" in str(refused.value)
    finally:
        agent.close()


@needs_ipv6
def test_the_hub_on_the_ipv4_wildcard_refuses_another_program_on_ipv6_loopback(
    tmp_path: Path, holder: Any
) -> None:
    """CONTRACT §10: the same for `hub serve` (`HubServer.start`). Failed before the fix."""
    from tillpoint.sync.loopback import LoopbackHub

    port = holder("::1")
    hub = LoopbackHub(tmp_path / "hub", start=False)
    try:
        with pytest.raises(TillpointError, match=rf"\[::1\]:{port} is another program's"):
            hub.server.start(f"0.0.0.0:{port}")
    finally:
        hub.server.stop()


@needs_ipv6
def test_an_ipv4_mapped_listener_in_the_ipv6_table_counts_as_its_ipv4_address(
    holder: Any,
) -> None:
    """CONTRACT §10: another program's IPv6 socket bound to ::ffff:127.0.0.1 (as grpcio
    itself binds 127.0.0.1) is written in /proc/net/tcp6; it takes the calls to
    127.0.0.1 and counts as that address, not as another one."""
    from tillpoint.agent import config

    port = holder("::ffff:127.0.0.1", v6only=False)
    assert config.others_listening(f"127.0.0.1:{port}", port) == [f"127.0.0.1:{port}"]
    assert config.others_listening(f"[::1]:{port}", port) == []


def test_a_name_of_a_non_loopback_address_of_the_host_counts_that_address_only(
    holder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: a listen on a host name the resolver gives as a non-loopback address
    of this host: another program on that address counts, one on another address (the
    loopback) does not."""
    import socket

    from tillpoint.agent import config

    address = ""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # the route's source address: no packet is sent
            address = probe.getsockname()[0]
    except OSError:
        pass
    if not address or address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address here")
    found = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return found(address if host == "till-host.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = holder(address)
    assert config.others_listening(f"till-host.example:{port}", port) == [f"{address}:{port}"]
    other = holder("127.0.0.1")
    assert config.others_listening(f"till-host.example:{other}", other) == []


@needs_ipv6
def test_the_hub_on_port_0_is_checked_too(
    tmp_path: Path, holder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: `hub serve` on `localhost:0` is given one free port for both
    loopbacks (`pinned_listen`); another program that takes it on ::1 before grpcio binds
    (here: the picked port is one it holds already) is found as for a port written out:
    the check is not skipped for port 0."""
    from tillpoint.sync import hub_server
    from tillpoint.sync.loopback import LoopbackHub

    port = holder("::1")
    monkeypatch.setattr(hub_server, "pinned_listen", lambda listen: f"localhost:{port}")
    monkeypatch.setattr(hub_server, "bind_refusal", lambda listen: None)  # the probe's window
    hub = LoopbackHub(tmp_path / "hub", start=False)
    try:
        with pytest.raises(TillpointError, match=rf"\[::1\]:{port} is another program's"):
            hub.server.start("localhost:0")
    finally:
        hub.server.stop()


_SHARER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("probed", [True, False], ids=["probe", "probe-window"])
def test_grpc_on_the_wildcard_beside_a_port_sharing_program_on_loopback_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probed: bool
) -> None:
    """CONTRACT §10: another program holds 127.0.0.1:PORT with `SO_REUSEPORT` (it would
    take the POS's calls to 127.0.0.1). The agent on 0.0.0.0:PORT does not start: its
    probe says the port is in use, and past the probe (another program that came in its
    window) grpcio's own bind fails too, since the agent's server shares no port
    (`grpc.so_reuseport` 0): the kernel lets no wildcard bind beside it."""
    import subprocess
    import sys

    from tillpoint.agent import server as server_module
    from tillpoint.agent.service import Agent

    proc = subprocess.Popen(
        [sys.executable, "-c", _SHARER, "127.0.0.1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    agent = Agent(tmp_path / "data", "till-1")
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        if not probed:
            monkeypatch.setattr(server_module, "bind_refusal", lambda address: None)
        with pytest.raises(TillpointError, match=f"cannot listen on 0.0.0.0:{port} for gRPC"):
            server, _, _ = server_module.build_server(agent, f"0.0.0.0:{port}", token="t" * 32)
            server.stop(None).wait(5)
    finally:
        agent.close()
        proc.kill()
        proc.wait(timeout=10)
