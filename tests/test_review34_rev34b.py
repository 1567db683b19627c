"""Review 34 (rev34b): a second reading of the session's product changes, as a whole.

Each test is a doubt about one of review 34's changes that could be made concrete, over
real parts (the agent on real SQLite files, its HTTP door on a real server):

- the clock-step rule (CONTRACT §11, docs/ARCHITECTURE.md `_clock_mark`): a Hold priced
  before its write transaction made its times on one side of a wall-clock step, and the
  step was taken (the open holds moved) by another call while the Hold waited for the
  agent's lock: stored unmoved, off by the step.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tillpoint.sync.loopback import LoopbackHub, wait_for

from .conftest import SteppingClock, snapshot
from .test_review30_memo30 import ANNA, MILK, sale
from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, hold33_till, life
from .test_review33_rev33b import Stall
from .test_review34_rev34 import held_for, late, slow_hub, stall, stall_entered

__all__ = ["late", "slow_hub", "stall"]  # rev34's fixtures


def _waiting_for_the_lock(thread: threading.Thread, function: str, line: int) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code.co_name == function and frame.f_lineno == line


def test_a_step_taken_while_a_hold_priced_early_waits_for_the_lock_moves_it_too(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: a hold lives `holdTtlSeconds` of time that passes, and a step of the
    till's wall clock moves the open holds by the step. A Hold is priced before its write
    transaction (its times read from the clock then), and waits for the agent's lock
    behind another call's commit (here the test's thread holds it, as a Checkout's
    transaction does). NTP sets the clock an hour forward meanwhile, and `run`'s hold
    timer gets the lock first: it takes the step and moves the open holds. The Hold then
    stored the times it made before the step, unmoved: expired at once, its Confirm
    after the payment refused ("hold expired"), the hub's copy still held. Its times
    must be those of the clock it is stored on: a step taken since they were made is
    followed by making them again."""
    from tillpoint.agent import service
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    try:
        program = {**snapshot()["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
        other = sale(
            "h-0", clock(), card=ANNA, lines=[{"sku": MILK, "qty": "1", "priceMinor": 100}]
        )
        assert agent.hold(receipt_from_json(other)).state == "HELD"  # an open hold, moved
        agent.sweep_holds()  # the clock's mark made
        body = sale("h-1", clock(), card=ANNA)
        answers: list[dict[str, object]] = []
        lines, first = inspect.getsourcelines(service.Agent.hold)
        lock_line = first + next(i for i, text in enumerate(lines) if "with self._lock" in text)
        priced, locked = threading.Event(), threading.Event()
        price_early = agent._price_early

        def priced_then_another_commit(*args: Any, **kwargs: Any) -> Any:
            early = price_early(*args, **kwargs)
            priced.set()  # another call's commit takes the agent's lock now
            assert locked.wait(30)
            return early

        agent._price_early = priced_then_another_commit
        hold = threading.Thread(
            target=lambda: answers.append(agent.hold(receipt_from_json(body)).to_json())
        )
        hold.start()
        assert priced.wait(30)
        with agent._lock:  # another call's commit in progress
            locked.set()
            deadline = time.monotonic() + 30
            while not _waiting_for_the_lock(hold, "hold", lock_line):
                assert time.monotonic() < deadline and hold.is_alive(), "the Hold never waited"
                threading.Event().wait(0.01)
            clock.stepped(3600)  # NTP: an hour forward
            assert agent.sweep_holds() == 0  # the hold timer's round: it takes the step
        hold.join(timeout=30)
        assert not hold.is_alive()
        held = answers[0]
        assert held["state"] == "HELD"
        assert datetime.fromisoformat(str(held["holdExpiresAt"])) == clock() + timedelta(
            seconds=600
        )
        clock.passes(60)  # the POS took the payment
        assert agent.confirm("h-1").state == "CONFIRMED"
        assert agent.confirm("h-0").state == "CONFIRMED"  # moved by the step: still held
    finally:
        agent.close()


# ---------------------------------------------------------------- a shrink back after a reset


def test_a_shrink_back_after_a_reset_leaves_alone_a_checkout_sold_since_under_its_receipt_id(
    slow_hub: LoopbackHub, tmp_path: Path, late: threading.Event, stall: Stall
) -> None:
    """CONTRACT §10, §11: a `reset` beside a shrink in flight leaves the receipt to the
    shrink, which releases it at the hub once back, since the ledger forgot it (review
    34). The till takes sales again after the reset (a snapshot pulled), and the POS
    sells under that receiptId again with a Checkout, which waits for the shrink's turn
    and is granted ONLINE: a committed receipt, with no life row. The shrink, once back,
    took the missing life row for "forgotten" and released the receipt at the hub: the
    Checkout's redemption, not yet pushed, was no longer held there, and another till
    could spend the same 1200 points until the push. A receipt the ledger has committed
    is not forgotten: its transaction settles it at the hub."""
    from tillpoint.sync.pull import Puller, cache_version

    hub = slow_hub
    a = hold33_till(hub, tmp_path / "a", "a")
    sold: list[Any] = []
    try:
        a.agent.on_hub_call_owed(lambda: None)  # a hold timer sends shrinks, not the Hold
        late.set()
        try:
            first = a.agent.hold(a_receipt("a-late"))
        finally:
            late.clear()
        assert (first.mode, first.redeemed_points) == ("OFFLINE", OFFLINE_LIMIT)
        a.authoriser.timeout_s = 20.0  # the shrink waits at the hub while the reset runs
        stall.on.set()
        timer = threading.Thread(target=a.agent.retry_hub_releases)  # the hold timer's round
        timer.start()
        wait_for(lambda: life(a, "a-late")[3] == 2 and stall_entered(a, "a-late"))
        a.agent.reset(force=True)
        Puller(a.agent, a.link, a.link.enrollment, call_timeout_s=2).pull()
        wait_for(lambda: cache_version(a.data_dir) == 1)
        turns = a.agent._hub_turns
        end_release = turns.end_release
        checkout_done = threading.Event()

        def after_the_checkout(receipt_id: str) -> None:
            end_release(receipt_id)
            if receipt_id == "a-late":  # the Checkout waiting for this turn goes first
                assert checkout_done.wait(20)

        turns.end_release = after_the_checkout  # type: ignore[method-assign]

        def checkout() -> None:
            try:
                sold.append(a.agent.checkout(a_receipt("a-late")))
            finally:
                checkout_done.set()

        pos = threading.Thread(target=checkout)
        pos.start()
        wait_for(lambda: "a-late" in turns._releasing)  # the Checkout waits for the shrink
        stall.go.set()
        pos.join(30)
        timer.join(30)
        assert not pos.is_alive() and not timer.is_alive()
        assert (sold[0].state, sold[0].mode, sold[0].redeemed_points) == (
            "CONFIRMED",
            "ONLINE",
            1200,
        )
        assert held_for(hub, "c-1") == 1200  # held at the hub until the sale is pushed
    finally:
        stall.go.set()
        a.stop()


# ---------------------------------------------------------------- a network printer's close


def test_a_graceful_close_ends_once_the_printer_took_every_byte() -> None:
    """CONTRACT §7: a graceful close of a network printer's connection sends the FIN after
    the job's last byte and drains what the printer sends, `close_drain_s` at most, until
    the printer has taken every byte (review 34). A printer that reads the whole job and
    keeps its side open (it closes on its own timeout, as many AppSocket printers do)
    held every close the whole bound: the check of what was still unsent read the
    transport's socket after the close had let it go, found none, and never ended the
    wait. Each coupon and each health probe cost the print worker 2 s more. With a bound
    of 10 minutes, the close of a job the printer has read must end at once."""
    import socket

    from tillpoint.printer.transport import NetworkTransport

    job = b"\x1b@" + b"coupon line\n" * 200 + b"\x1dV\x00"
    got = bytearray()
    eof = threading.Event()
    let_go = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10.0)

    def printer() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10.0)
        with conn:
            while chunk := conn.recv(65536):
                got.extend(chunk)
            eof.set()
            let_go.wait(60.0)  # its own idle timeout: the side stays open until then

    at_printer = threading.Thread(target=printer, daemon=True)
    at_printer.start()
    transport = NetworkTransport(
        "127.0.0.1", listener.getsockname()[1], 2.0, 5.0, close_drain_s=600.0
    )
    closing = threading.Thread(target=transport.close, daemon=True)
    try:
        transport.open()
        transport.write(job)
        closing.start()
        closing.join(15.0)
        assert not closing.is_alive(), "the close waited for the printer to close its side"
        assert eof.wait(10.0) and bytes(got) == job
    finally:
        let_go.set()
        if closing.is_alive():
            closing.join(60.0)
        at_printer.join(10.0)
        listener.close()
