"""Review 51 (mut51c): the rules of the durable print queue and of a receipt's hub turns
that a mutation run found untested (the contract §7, §11).

Each test pins a rule with figures worked out by hand from its words, not from running
the code; its docstring names the mutant of `printer/queue.py` or `agent/hub_turns.py`
that survived the tests chosen for the run (docs/DECISIONS.md, "Review 51 (mut51c)",
lists every survivor). Real parts: a real SQLite ledger, the loopback ESC/POS printer
on a random port (`VirtualPrinter`), real processes and real `fcntl` locks on one data
directory's `hub_turns.lock`.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import HubUnavailable, StorageError
from tillpoint.agent.hub_turns import HUB_TURNS_FILE, HubTurns
from tillpoint.agent.ledger import PRINT_UNCONFIRMED
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.payload import OfferNow
from tillpoint.printer.queue import PrintWorker, enqueue, ensure_schema, list_jobs, stop_wait_s
from tillpoint.printer.virtual import VirtualPrinter

from .conftest import ManualClock
from .test_printer_queue import NOW, add_job, config, payload, worker

# The sale of `payload()`: 23 November 2026, 10:15 in Moscow (07:15 UTC, `NOW`); its one
# offer o-1 valid to 30 November 23:59:59 Moscow time.
SALE_AT = "2026-11-23T10:15:00+03:00"


def _ledger(tmp_path: Path) -> Path:
    """An agent's ledger with its schema, as `tillpoint run` makes it."""
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        ensure_schema(conn)
    finally:
        conn.close()
    return path


def _job(ledger: Path, receipt: str) -> dict[str, Any]:
    (job,) = list_jobs(ledger, receipt, include_done=True)
    return job


def _with_offer(receipt: str, **offer: Any) -> dict[str, Any]:
    data = payload(receipt)
    data["offers"][0].update(offer)
    return data


# ---------------------------------------------------------------- the receipt's clock


def test_a_job_without_the_sales_time_is_judged_on_the_wall_clock(tmp_path: Path) -> None:
    """§7, a waiting coupon leaves off an offer that ended before it comes out. A payload
    without `at` (the field is optional: a job queued without it) is judged on the wall
    clock: an offer valid to 30 November prints on 23 November; one that ended on
    22 November is not printed (the job FAILED). Mutant `payload.at is None or
    job.created_at is None` → `and`: `None + timedelta` raised in `run_once`, every look
    at the queue failed, and the job and every coupon behind it waited for ever."""
    ledger = _ledger(tmp_path)
    fresh = payload("r-fresh")
    del fresh["at"]
    ended = _with_offer("r-ended", validTo="2026-11-22T23:59:59+03:00")
    del ended["at"]
    add_job(ledger, fresh)
    add_job(ledger, ended)
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
            assert w.run_once() == 0
            assert w.run_once() is None  # nothing left to look at
        finally:
            w.close()
        assert [d.codes for d in printer.complete] == [["TP1-o-1"]]
    assert _job(ledger, "r-fresh")["state"] == "DONE"
    failed = _job(ledger, "r-ended")
    assert failed["state"] == "FAILED"
    assert "every offer expired" in failed["last_error"]


def test_an_offer_ending_on_the_day_of_the_sale_prints_at_once(tmp_path: Path) -> None:
    """§7 picks offers "valid at `at`": one valid to 23:59:59 of the sale's own day (sale
    10:15, Moscow) is on the coupon the printer takes at once (the job waited 0 s: the
    receipt's clock reads 10:15). Mutant `max(now - created_at, timedelta(0))` →
    `timedelta(1)`: every job counted as having waited a day at least, and the offer,
    ended 13 h 45 min after the sale, was dropped (the job FAILED, nothing printed)."""
    ledger = _ledger(tmp_path)
    add_job(ledger, _with_offer("r-today", validTo="2026-11-23T23:59:59+03:00"))
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
        finally:
            w.close()
        assert [d.codes for d in printer.complete] == [["TP1-o-1"]]
    assert _job(ledger, "r-today")["state"] == "DONE"


def test_an_offer_valid_to_the_sales_very_moment_prints(tmp_path: Path) -> None:
    """§2: an end is inclusive; an end with a fraction of a second is that moment. An
    offer valid to 10:15:00.250, a sale at 10:15:00.250 and a printer that takes the job
    at once (the receipt's clock at exactly that moment): printed. Mutant
    `last_instant(valid_to) >= moment` → `>` dropped it (FAILED, "every offer expired")."""
    ledger = _ledger(tmp_path)
    moment = "2026-11-23T10:15:00.250+03:00"
    data = _with_offer("r-edge", validTo=moment)
    data["at"] = moment
    conn = sqlite3.connect(ledger, isolation_level=None)
    try:
        enqueue(conn, data, created_at=datetime.fromisoformat(moment))
    finally:
        conn.close()
    with VirtualPrinter() as printer:
        clock = ManualClock(datetime.fromisoformat(moment))  # taken with no wait at all
        w = worker(ledger, printer.port, clock)
        try:
            assert w.run_once() == 0
        finally:
            w.close()
        assert [d.codes for d in printer.complete] == [["TP1-o-1"]]
    assert _job(ledger, "r-edge")["state"] == "DONE"


def test_a_wall_clock_set_back_never_takes_the_receipts_clock_before_the_sale(
    tmp_path: Path,
) -> None:
    """§7: a waiting coupon prints each offer to the earlier of its end at the sale and its
    end now, and leaves off one that ended before it comes out, on the receipt's clock
    (the sale's `at` plus the job's wait, never less than 0). The job was queued at 10:15
    (the sale), the wall clock was then set back 2 h (NTP fixing a fast clock), and the
    hub ended the offer at 09:00, before the sale: not printed, the job FAILED. Mutant
    `timedelta(0)` → `timedelta(-1)` let the wait go negative: the receipt's clock read
    08:15 and the coupon promised an offer that had ended before the customer's sale."""
    ledger = _ledger(tmp_path)
    add_job(ledger)  # created at NOW, 10:15 Moscow
    ended = datetime.fromisoformat("2026-11-23T09:00:00+03:00")
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port, ManualClock(NOW - timedelta(hours=2)))
        w.offers_now = lambda ids, _rid: {i: OfferNow(ended, "−15% на молоко") for i in ids}
        try:
            assert w.run_once() == 0
        finally:
            w.close()
        assert printer.complete == []
    job = _job(ledger, "s1-t1-000123")
    assert job["state"] == "FAILED"
    assert "every offer was withdrawn by the hub or ended" in job["last_error"]


def test_a_waiting_coupon_never_promises_a_later_end_than_the_sale_gave(tmp_path: Path) -> None:
    """§7: a waiting coupon prints each offer "to the earlier of its end at the sale and its
    end now". The sale gave o-1 to 30 November; the snapshot now runs it to 31 December
    (r-later) or gives it no end at all (r-open): both coupons read "по 30.11.2026".
    Mutant `end is not None and (...)` → `or`: r-later printed "по 31.12.2026" (a promise
    the sale never made), and r-open raised comparing None with a date, so the queue
    stopped at it."""
    ledger = _ledger(tmp_path)
    add_job(ledger, payload("r-later"))
    add_job(ledger, payload("r-open"))
    ends = {
        "r-later": datetime.fromisoformat("2026-12-31T23:59:59+03:00"),
        "r-open": None,
    }
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)
        w.offers_now = lambda ids, rid: {i: OfferNow(ends[rid], "−15% на молоко") for i in ids}
        try:
            assert w.run_once() == 0
            assert w.run_once() == 0
        finally:
            w.close()
        later, open_ended = printer.wait_for(2)
    for paper in (later, open_ended):
        assert "Действует с 01.11 по 30.11.2026" in paper.text, paper.text
        assert "31.12.2026" not in paper.text
    assert [_job(ledger, r)["state"] for r in ("r-later", "r-open")] == ["DONE", "DONE"]


def test_a_job_exactly_max_job_age_old_still_prints(tmp_path: Path) -> None:
    """PRINTING.md: a job "older than `max_job_age_s`" is FAILED, not printed. One exactly
    3,600 s old with `max_job_age_s = 3600` is not older: it prints; one 3,601 s old is
    FAILED with the reason. Mutant `> max_age` → `>=` failed the first."""
    ledger = _ledger(tmp_path)
    add_job(ledger, payload("r-3600"))  # both created at NOW
    with VirtualPrinter() as printer:
        clock = ManualClock(NOW + timedelta(seconds=3600))
        w = worker(ledger, printer.port, clock, max_job_age_s=3600)
        try:
            assert w.run_once() == 0
            assert _job(ledger, "r-3600")["state"] == "DONE"
            add_job(ledger, payload("r-3601"))
            clock.advance(1)
            assert w.run_once() == 0
        finally:
            w.close()
        assert [d.codes for d in printer.complete] == [["TP1-o-1"]]
    failed = _job(ledger, "r-3601")
    assert failed["state"] == "FAILED"
    assert failed["last_error"] == ("older than max_job_age_s (3600 s) when the printer was back")


def test_paper_that_ran_out_during_a_job_without_gs_r_shows_in_status(tmp_path: Path) -> None:
    """§7, printer trouble "is reported in status": a printer without `GS r` that answers
    `DLE EOT` is asked it after the job; its paper ran out with this coupon. The job is
    DONE with its note, and `printerState` is ERROR, paper OUT, "printer is out of paper"
    (the next coupon would not come out). Mutant `after.paper != "UNKNOWN"` → `==` kept
    the paper read before the job: OK, paper OK, while the printer stood empty."""
    ledger = _ledger(tmp_path)
    add_job(ledger)
    with VirtualPrinter() as printer:
        printer.answer_gs_r = False

        def ran_out(_doc: Any) -> None:
            printer.paper = "out"

        printer.on_document = ran_out
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
            status = w.status()
        finally:
            w.close()
        assert [d.codes for d in printer.complete] == [["TP1-o-1"]]
    job = _job(ledger, "s1-t1-000123")
    assert job["state"] == "DONE" and "did not confirm" in job["last_error"]
    assert (status["state"], status["paper"], status["last_error"]) == (
        "ERROR",
        "OUT",
        "printer is out of paper",
    )


def test_paper_running_low_during_a_job_is_read_from_its_gs_r_answer(tmp_path: Path) -> None:
    """The `GS r 1` answer after a job carries the paper sensor (bits 0-1 near end, 2-3
    end; bits 4 and 7 clear): paper running low with this coupon (answer 0x03) shows as
    paper LOW in `printerState`, the printer still OK. Mutant `reply[0] & 0x90` → `& 0x8F`
    took every answer with a sensor bit set for a byte of another kind: paper OK."""
    ledger = _ledger(tmp_path)
    add_job(ledger)
    with VirtualPrinter() as printer:

        def running_low(_doc: Any) -> None:
            printer.paper = "low"

        printer.on_document = running_low
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
            status = w.status()
        finally:
            w.close()
    assert _job(ledger, "s1-t1-000123")["last_error"] is None  # confirmed
    assert (status["state"], status["paper"]) == ("OK", "LOW")


# ---------------------------------------------------------------- a torn part, a restart


def test_a_held_job_is_cut_from_its_torn_part_even_without_the_ledgers_mark(
    tmp_path: Path,
) -> None:
    """§7's decisions: the first job sent after an attempt that may have left a torn part
    on the printer begins by cutting it off (`separator_bytes`: NULs, `ESC @`, the cut).
    A job held as "sent, not confirmed" says so in its own row, and that alone is enough:
    here the ledger holds no torn mark (a ledger written before review 33 kept one, or
    the mark's write failed: `_keep_torn` logs it and goes on), and the held job's next
    send still starts with the NULs. Mutant `error.startswith(UNCONFIRMED) or any(...)`
    → `and` sent the coupon glued onto the torn part."""
    ledger = _ledger(tmp_path)
    add_job(ledger)
    conn = sqlite3.connect(ledger, isolation_level=None)
    try:
        conn.execute(
            "UPDATE print_jobs SET attempts = 1, last_error = ?",
            (f"{PRINT_UNCONFIRMED}: the printer took the job and answered nothing after it",),
        )
        assert conn.execute("SELECT count(*) FROM device WHERE key = 'print_torn'").fetchone() == (
            0,
        )
    finally:
        conn.close()
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0  # the printer answers DLE EOT: the held job goes
        finally:
            w.close()
        printer.wait_for(1)
        asked = b"\x10\x04\x02\x10\x04\x04"  # DLE EOT 2, DLE EOT 4
        assert printer.received.startswith(asked + b"\x00" * 96 + b"\x1b@"), printer.received[:40]
    job = _job(ledger, "s1-t1-000123")
    assert (job["state"], job["attempts"]) == ("DONE", 2)


def test_coupons_printed_in_a_row_cost_no_blank_piece_between_them(tmp_path: Path) -> None:
    """§7's decisions: the cut before a job (NULs, `ESC @`, a feed, the cut) goes out only
    after an attempt that may have left a torn part; "when nothing was torn" is the
    exception that costs blank paper, not the rule. Two coupons printed and confirmed in a
    row: two pieces of paper, no NULs sent, no torn mark left in the ledger. Mutant
    `claimed and not settled` → `or` in `_attempt`'s `finally` took every printed job for
    a torn one: a blank piece before each later coupon."""
    ledger = _ledger(tmp_path)
    add_job(ledger, payload("r-1"))
    add_job(ledger, payload("r-2"))
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
            assert w.run_once() == 0
        finally:
            w.close()
        printer.wait_for(2)
        assert len(printer.documents) == 2
        assert b"\x00" * 96 not in printer.received
    conn = sqlite3.connect(ledger, isolation_level=None)
    try:
        torn = conn.execute("SELECT count(*) FROM device WHERE key = 'print_torn'").fetchone()
    finally:
        conn.close()
    assert torn == (0,)


def test_a_job_cut_short_after_a_print_backs_off_from_the_base_again(tmp_path: Path) -> None:
    """A coupon printed, then the next one cut short (the printer closed the connection
    after 40 bytes: 6 of status questions, 34 of the job): it is printed again in full,
    after the first step of the backoff, 0.5-1 s with `retry_base_s` 1: a print in
    between starts the count of failures again. Mutant: `_printed` setting the count to
    1 instead of 0 made it wait 1-2 s, the second step."""
    ledger = _ledger(tmp_path)
    add_job(ledger, payload("r-1"))
    add_job(ledger, payload("r-2"))
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
            printer.wait_for(1)
            printer.close_after_bytes = 40
            assert w.run_once() == 0
        finally:
            w.close()
    job = _job(ledger, "r-2")
    assert job["state"] == "PENDING"
    assert "the job is printed again" in job["last_error"]
    wait = (datetime.fromisoformat(job["next_attempt_at"]) - NOW).total_seconds()
    assert 0.5 <= wait <= 1.0, wait


def test_paper_refilled_after_it_ran_out_with_a_coupon_clears_the_error(tmp_path: Path) -> None:
    """§7, status: paper that ran out with a coupon (its `GS r` answer, 0x0F) is ERROR,
    paper OUT, "printer is out of paper"; refilled, the next probe (`DLE EOT`, nothing
    printed) reads OK, paper OK, and no error is left. Mutant `note is not None and paper
    != "OUT"` → `or` in `_printed` took the paper's error for the job's own, which a probe
    keeps: OK with "printer is out of paper" beside it until the next coupon."""
    ledger = _ledger(tmp_path)
    add_job(ledger)
    with VirtualPrinter() as printer:

        def ran_out(_doc: Any) -> None:
            printer.paper = "out"

        printer.on_document = ran_out
        w = worker(ledger, printer.port)
        try:
            assert w.run_once() == 0
            status = w.status()
            assert (status["state"], status["paper"], status["last_error"]) == (
                "ERROR",
                "OUT",
                "printer is out of paper",
            )
            printer.paper = "ok"
            assert w.probe() == "OK"
            status = w.status()
        finally:
            w.close()
    assert (status["state"], status["paper"], status["last_error"]) == ("OK", "OK", None)


def test_a_job_interrupted_mid_print_is_failed_at_start_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """§7: at most once across agent crashes. A job found SENDING at start becomes FAILED,
    not reprinted, and the journal says so (the line a support engineer finds). Mutant
    `if n:` negated in `recover`: the job FAILED without a word in the journal."""
    ledger = _ledger(tmp_path)
    add_job(ledger)
    conn = sqlite3.connect(ledger, isolation_level=None)
    conn.execute("UPDATE print_jobs SET state = 'SENDING', attempts = 1")
    conn.close()
    w = PrintWorker(ledger, PrinterConfig(kind="none"))
    try:
        with caplog.at_level(logging.WARNING, logger="tillpoint.printer"):
            assert w.recover() == 1
            assert w.recover() == 0  # nothing left SENDING: nothing said
    finally:
        w.close()
    said = [r.getMessage() for r in caplog.records if r.name == "tillpoint.printer"]
    assert said == ["1 print job(s) were interrupted mid-print and are not reprinted"]
    job = _job(ledger, "s1-t1-000123")
    assert job["state"] == "FAILED" and "not reprinted automatically" in job["last_error"]


def test_an_operators_requeue_in_the_agent_prints_the_job_at_once(tmp_path: Path) -> None:
    """`PrintWorker.requeue`: a printed (or FAILED) job put back prints at once, not at the
    worker's next poll. The poll is 30 s here; the reprint comes within the test's 15 s.
    Mutant `if changed:` negated: the worker was not woken, the coupon waited 30 s."""
    ledger = _ledger(tmp_path)
    add_job(ledger)
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port, poll_interval_s=30.0, probe_interval_s=0)
        w.start()
        try:
            printer.wait_for(1, timeout_s=15)
            deadline = time.monotonic() + 15
            while _job(ledger, "s1-t1-000123")["state"] != "DONE":
                assert time.monotonic() < deadline, "the first print was never marked DONE"
                time.sleep(0.02)
            assert w.requeue("s1-t1-000123")
            assert len(printer.wait_for(2, timeout_s=15)) == 2, "the requeued job waited"
        finally:
            w.close()


def test_an_idle_print_worker_waits_between_its_looks(tmp_path: Path) -> None:
    """The worker thread with nothing to print looks at the queue every
    `poll_interval_s` (0.5 s here) and sleeps in between: over 2 s this process spends
    well under 0.3 s of CPU (a look is one small query). Mutant `delay == 0` → `!=` in
    `_run`: it looked again at once, for ever, a core of the till's CPU spent on an empty
    queue (seconds of CPU here)."""
    ledger = _ledger(tmp_path)
    with VirtualPrinter() as printer:
        w = worker(ledger, printer.port, poll_interval_s=0.5, probe_interval_s=0)
        w.start()
        try:
            time.sleep(0.5)  # its start (recover, the first look) done
            before = time.process_time()
            time.sleep(2.0)
            spent = time.process_time() - before
        finally:
            w.close()
    assert spent < 0.3, f"{spent:.2f} s of CPU in 2 s with nothing to print"


# ---------------------------------------------------------------- what status and the CLI say


def test_a_usb_printer_is_named_by_its_vendor_and_product_ids(tmp_path: Path) -> None:
    """`printerState`'s printer, as `tillpoint status` shows it: a USB printer is named by
    its ids in hex ("usb 04b8:0202"), a network one by its address. Mutant `c.kind == 'usb'`
    → `!=`: the USB printer was named "usb None" and a network one by its ids."""
    ledger = _ledger(tmp_path)
    usb = PrinterConfig(kind="usb", usb_vendor_id=0x04B8, usb_product_id=0x0202)
    for cfg, name in ((usb, "usb 04b8:0202"), (config(9100), "network 127.0.0.1:9100")):
        w = PrintWorker(ledger, cfg)
        try:
            assert w.status()["printer"] == name
        finally:
            w.close()


def test_a_ledger_path_that_is_a_directory_is_a_one_line_storage_error(tmp_path: Path) -> None:
    """`tillpoint print queue` on a data directory whose `ledger.db` is a directory (or a
    file SQLite cannot open): a StorageError naming the file, exit 1. Mutant `conn is not
    None` → `is None` in `_connect`: an AttributeError ('NoneType' object has no attribute
    'close'), an internal error instead of the reason."""
    (tmp_path / "ledger.db").mkdir()
    with pytest.raises(StorageError, match=r"cannot open .*ledger\.db: unable to open"):
        list_jobs(tmp_path / "ledger.db")


def test_the_stop_waits_longer_for_a_serial_printer_only() -> None:
    """`stop_wait_s` (what `tillpoint run`'s stop waits for a job on its way, and what
    systemd is told): `confirm_timeout_s` + `status_timeout_s` + 5 s, and for a serial
    printer twice `STOP_FINISH_S` (2 s) more: 2 + 0.3 + 5 = 7.3 s on the network,
    11.3 s on a serial line. Mutant `kind == "serial"` negated swapped the two."""
    network = config(9100, confirm_timeout_s=2.0, status_timeout_s=0.3)
    serial = PrinterConfig(
        kind="serial", device="/dev/ttyS0", confirm_timeout_s=2.0, status_timeout_s=0.3
    )
    assert stop_wait_s(network) == pytest.approx(7.3)
    assert stop_wait_s(serial) == pytest.approx(11.3)


# ---------------------------------------------------------------- the hub turns (§11)


def test_a_refused_hold_says_which_call_of_its_receipt_it_waited_for() -> None:
    """A Hold refused past its wait says why (the error the POS gets, "retry with the same
    receiptId"): a release of the earlier hold not yet at the hub, or another call with
    this receiptId still asking the hub. Mutants of the `why` (the `IfExp` negated, `in`
    → `not in`) gave each case the other's reason."""
    turns = HubTurns(wait_s=0.2)
    try:
        assert turns.start_release("r-rel")
        with (
            pytest.raises(HubUnavailable, match="the release of its earlier hold has not"),
            turns.holding("r-rel"),
        ):
            pass
        turns.end_release("r-rel")

        inside = threading.Event()
        leave = threading.Event()

        def first_call() -> None:
            with turns.holding("r-two"):
                inside.set()
                leave.wait(10)

        thread = threading.Thread(target=first_call)
        thread.start()
        try:
            assert inside.wait(10)
            assert turns.busy_holding("r-two")
            with (
                pytest.raises(HubUnavailable, match="another call with this receiptId is still"),
                turns.holding("r-two"),
            ):
                pass
        finally:
            leave.set()
            thread.join(10)
        assert not turns.busy_holding("r-two")
    finally:
        turns.close()


def test_a_receipt_in_its_hold_turn_is_busy_and_free_after_it() -> None:
    """`busy_holding` (what `owed_hub_calls` leaves out: an ask whose call may still store
    its receipt is on its way, not owed, §11 and `sync now`'s `hubCallsOwed`): True while
    a hold of that receipt is in its turn, False before and after, and False for another
    receipt meanwhile. Mutants: its return negated, `in` → `not in`."""
    turns = HubTurns(wait_s=0.2)
    try:
        assert not turns.busy_holding("r-1")
        with turns.holding("r-1"):
            assert turns.busy_holding("r-1")
            assert not turns.busy_holding("r-2")
        assert not turns.busy_holding("r-1")
    finally:
        turns.close()


# Another process on the data directory (a `sync now`, a one-shot beside `run`): tries to
# take a receipt's turn as a release does, says whether it could, and gives it back.
_RELEASE = """
import sys
from pathlib import Path
from tillpoint.agent.hub_turns import HubTurns
turns = HubTurns(across=Path(sys.argv[1]))
taken = turns.start_release(sys.argv[2])
if taken:
    turns.end_release(sys.argv[2])
print("taken" if taken else "busy", flush=True)
"""


def _other_process_release(lock: Path, receipt_id: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE, str(lock), receipt_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_a_holds_end_frees_its_receipt_for_the_other_processes(tmp_path: Path) -> None:
    """§11, a release never drops a newer hold: while `run` holds r-1 another process
    (`sync now`) may not release it; once the hold's turn ends it may, at once. Mutant
    `if taken:` negated in `holding`: the byte of r-1 stayed locked in `run` after the
    hold, and every later release of r-1 from another process was put off, round after
    round, until `run` exited (the customer's points held at the hub meanwhile). And the
    turn is the receipt's, not the file's: a release of r-2 is not put off by the hold of
    r-1 (mutant: `_byte` returning 0, every receipt on one byte, each release put off by
    any hold of another process)."""
    lock = tmp_path / HUB_TURNS_FILE
    run = HubTurns(wait_s=5.0, across=lock)
    try:
        with run.holding("r-1"):
            assert _other_process_release(lock, "r-1") == "busy"
            # another receipt is not kept waiting by it (its own byte of the file)
            assert _other_process_release(lock, "r-2") == "taken"
        assert _other_process_release(lock, "r-1") == "taken"
    finally:
        run.close()


def test_a_byte_taken_twice_in_one_process_is_kept_until_the_last_lets_go(
    tmp_path: Path,
) -> None:
    """`_AcrossProcesses`: POSIX locks are the process's, so two turns of one byte in it
    are counted and the byte unlocked when the last lets go (two receipts whose hashes
    share a byte, each in its in-process turn). Taken twice and given once, another
    process still finds it busy; given twice, free. Mutants of the count (`+ 1` → `- 1`,
    `held[0]` → `held[-1]`, `held[1]`) unlocked it at the first give (the other turn
    unguarded) or never."""
    from tillpoint.agent.hub_turns import _AcrossProcesses

    lock = tmp_path / HUB_TURNS_FILE
    turns = _AcrossProcesses(lock)
    try:
        assert turns.take("r-1", 0.0) and turns.take("r-1", 0.0)
        turns.give("r-1")
        assert _other_process_release(lock, "r-1") == "busy"
        turns.give("r-1")
        assert _other_process_release(lock, "r-1") == "taken"
    finally:
        turns.close()


def test_the_turns_file_is_made_read_write_for_its_owner_only(tmp_path: Path) -> None:
    """`hub_turns.lock` is made 0600: every process of the till's user opens it read-write
    for its locks (`fcntl.lockf` with LOCK_EX needs a descriptor open for writing), and
    nobody else needs it. Mutants 0o600 → 0o577 (no write for the owner: a second
    process of a non-root till failed to open it and took its turns in itself only, the
    race review 37 closed open again; not seen by root, who runs the tests) and → 0o601."""
    lock = tmp_path / HUB_TURNS_FILE
    turns = HubTurns(across=lock)
    try:
        assert lock.stat().st_mode & 0o777 == 0o600
    finally:
        turns.close()
