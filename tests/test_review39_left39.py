"""Review 39 (left39): older items earlier sessions left.

- spec38c: `balance --at T` with T before a later refund counts the points that refund
  gave back (CONTRACT §6, §16). spec38c read "available at T" as what the customer had
  at T; review 40 kept the other reading (a refund's points count at once, as a later
  spend does): the tests are strict xfails, the reading not taken (docs/DECISIONS.md).
- rev38k: `maxRedeemPercent: 1.5` was refused in money's words ("write money in minor
  units"), at the till without its rule and at the hub's import without its field; other
  fields that count points or percents were told the same (CONTRACT §3).
- perf38/rev38i: a new cache file (each full snapshot) was made through sqlite-utils,
  whose import scans every installed package's entry points (CONTRACT §10's one-shot).
- rev38e: a serial job the stop met in its last second to hand over was broken off:
  its torn part, codes included, went out and the next start printed it whole again
  (CONTRACT §7: a coupon redeemed twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sqlite3
import threading
import time
import tty
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.errors import ConnectionLost
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.transport import SerialTransport

from .conftest import CLI, PROGRAM, receipt, snapshot
from .test_review31_dev31 import till as devices_till
from .test_review32_dev32 import _job_rows, _long_snapshot
from .test_review38_left38 import _PacedLine

BORIS = "2770000000024"  # c-b: base tier (3 %), 80 points
MILK = "4601234000055"


def _sale(receipt_id: str, at: str, redeem: int, qty: str = "1") -> dict[str, Any]:
    return receipt(
        receipt_id,
        card=BORIS,
        at=at,
        lines=[{"sku": MILK, "qty": qty, "priceMinor": 45000}],
        redeemPoints=redeem,
    )


def _refund(refund_id: str, receipt_id: str, at: str, qty: str = "1") -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": at,
        "lines": [{"sku": MILK, "qty": qty}],
    }


@pytest.fixture(params=[0, 365], ids=["points-never-expire", "points-expire"])
def till(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(program={**PROGRAM, "pointsLifetimeDays": request.param}))
    yield agent
    agent.close()


# spec38c's reading, not taken (review 40): a refund's points count at once at any time
LEFT = pytest.mark.xfail(
    strict=True,
    reason="the reading not taken: a refund's points count at once, at any time asked"
    " (CONTRACT §6's decision; docs/DECISIONS.md, review 40)",
)


def _balance(agent: Agent, at: str) -> dict[str, Any]:
    data = agent.balance(BORIS, datetime.fromisoformat(at)).to_json()
    data.pop("expiring", None)
    return data


@LEFT
def test_a_balance_before_a_refund_leaves_out_the_points_it_gave_back(till: Agent) -> None:
    """CONTRACT §6, §16: 80 points; a sale on the 23rd redeems 50 and earns 12 (3 % of
    400.00); it is returned on the 25th (50 given back, 12 taken back). On the 24th the
    customer had 42 points, not the 80 the refund gave them again."""
    sold = till.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
    assert (sold.earned_points, sold.to_json()["balance"]["availablePoints"]) == (12, 42)
    back = till.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
    assert (back.returned_points, back.taken_back_points) == (50, 12)
    assert back.to_json()["balance"]["availablePoints"] == 80
    assert _balance(till, "2026-11-24T12:00:00+03:00") == {
        "availablePoints": 42,
        "pendingPoints": 0,
    }
    assert _balance(till, "2026-11-25T10:00:00+03:00") == {
        "availablePoints": 80,
        "pendingPoints": 0,
    }


def test_points_given_back_then_spent_again_count_once(till: Agent) -> None:
    """The points the refund gave back spent again on the 26th: asked for the 24th, that
    spend counts at once (CONTRACT §5's decision: a later receipt can never spend points
    twice) and the give-back does not, so nothing is left, never below zero."""
    till.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
    till.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
    again = till.checkout(receipt_from_json(_sale("r-2", "2026-11-26T10:00:00+03:00", 80)))
    assert again.redeemed_points == 80
    assert _balance(till, "2026-11-24T12:00:00+03:00")["availablePoints"] == 0
    assert _balance(till, "2026-11-26T10:00:00+03:00")["availablePoints"] == 11


@LEFT
def test_a_late_receipt_dated_before_the_refund_redeems_what_was_there_then(till: Agent) -> None:
    """A receipt of the 24th sent after the refund of the 25th (an offline POS's queue):
    it may redeem the 42 points the customer had on the 24th, not the 80 of today, and
    its result's balance is what `balance --at` its time answers next (CONTRACT §5.6)."""
    till.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
    till.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
    late = till.checkout(receipt_from_json(_sale("r-2", "2026-11-24T12:00:00+03:00", 80)))
    assert late.redeemed_points == 42
    after = late.to_json()["balance"]
    after.pop("expiring", None)
    assert after == _balance(till, "2026-11-24T12:00:00+03:00")
    assert after["availablePoints"] == 0 + 12  # its own 12 points (3 % of 408.00)
    # today: 80 - 42 + 12
    assert _balance(till, "2026-11-26T12:00:00+03:00")["availablePoints"] == 50


@LEFT
def test_the_expiring_list_never_holds_points_given_back_later(tmp_path: Path) -> None:
    """Points that expire (§16): the 80 points all expire on 31.12; the sale takes 50 of
    them, its refund on the 25th puts them back. On the 24th 30 of them were left (and the
    sale's own 12, taken back on the 25th, count off at once): the list says no more than
    the 42 available, where it said 80 before."""
    snap = snapshot(program={**PROGRAM, "pointsLifetimeDays": 365})
    boris = next(c for c in snap["customers"] if c["id"] == "c-b")
    boris["expiring"] = [{"points": 80, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        agent.checkout(receipt_from_json(_sale("r-1", "2026-11-23T10:15:00+03:00", 50)))
        agent.refund(refund_from_json(_refund("f-1", "r-1", "2026-11-25T10:00:00+03:00")))
        then = agent.balance(BORIS, datetime.fromisoformat("2026-11-24T12:00:00+03:00")).to_json()
        assert then["availablePoints"] == 42
        assert sum(e["points"] for e in then["expiring"]) <= 42
        now = agent.balance(BORIS, datetime.fromisoformat("2026-11-25T12:00:00+03:00")).to_json()
        assert now["availablePoints"] == 80
        assert now["expiring"] == [{"points": 80, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    finally:
        agent.close()


# ---------------------------------------------------------------- rev38k: a fraction's words


@pytest.mark.parametrize(
    ("field", "rule"),
    [
        ("maxRedeemPercent", 'write it as a decimal string ("1.5")'),
        ("birthdayMultiplier", 'write it as a decimal string ("1.5")'),
        ("offlineRedeemLimitPoints", "write a whole number of points"),
        ("pointValueMinor", "write money in minor units"),
    ],
)
def test_a_snapshot_s_fraction_is_told_in_the_field_s_own_words(
    cli: CLI, field: str, rule: str
) -> None:
    """CONTRACT §3: a till reads the program's percents and multiplier as decimals (a
    string "1.5" loads); a JSON number 1.5 was told to "write money in minor units"."""
    run = cli("snapshot", "load", snapshot(program={**PROGRAM, field: 1.5}))
    assert run.code == 2
    line = run.err.strip()
    assert "\n" not in line
    assert f"program.{field}: the number 1.5 has a decimal point" in line
    assert rule in line
    if "Minor" not in field:
        assert "money" not in line


def test_a_customer_s_points_with_a_fraction_are_told_in_points(cli: CLI) -> None:
    snap = snapshot()
    snap["customers"][1]["balancePoints"] = 1.5
    run = cli("snapshot", "load", snap)
    assert run.code == 2
    assert "customers[1].balancePoints: the number 1.5 has a decimal point" in run.err
    assert "write a whole number of points" in run.err and "money" not in run.err


@pytest.mark.parametrize(
    ("doc", "said"),
    [
        (
            {"program": {"maxRedeemPercent": 1.5}},
            "program.maxRedeemPercent: the number 1.5 has a fraction: write a whole number"
            " (a percent, not money)",
        ),
        (
            {"program": {"tiers": [{"code": "base", "accrualPercent": 1.5}]}},
            "program.tiers[0].accrualPercent: the number 1.5 has a fraction: write it as a"
            ' decimal string ("1.5")',
        ),
        (
            {"program": {"activationDelayDays": 1.5}},
            "program.activationDelayDays: the number 1.5 has a fraction: write a whole number"
            " of days",
        ),
        (
            {"customers": [{"id": "c1", "balancePoints": 1.5}]},
            "customers[0].balancePoints: the number 1.5 has a fraction: write a whole number"
            " of points",
        ),
        (
            {"products": [{"sku": "p1", "priceMinor": 1.5}]},
            "products[0].priceMinor: the number 1.5 has a fraction: write money in minor units"
            " (whole numbers) and quantities as decimal strings",
        ),
    ],
)
def test_the_hub_s_import_names_the_field_of_a_fraction_and_its_rule(
    cli: CLI, tmp_path: Path, doc: dict[str, Any], said: str
) -> None:
    """A hub operator's `hub import` said "the number 1.5 has a fraction: use minor units
    or decimal strings" and no field: which of a file's thousands of numbers?"""
    run = cli("hub", "import", "--hub-dir", tmp_path / "hub", doc)
    assert run.code == 2
    assert run.err == f"tillpoint: import: {said}\n"


def test_a_json_lines_import_names_the_field_of_a_fraction_too(cli: CLI, tmp_path: Path) -> None:
    lines = tmp_path / "master.jsonl"
    lines.write_text(
        '{"format": "tillpoint.snapshot/jsonl", "program": {"maxRedeemPercent": 1.5}}\n',
        encoding="utf-8",
    )
    run = cli("hub", "import", "--hub-dir", tmp_path / "hub", lines)
    assert run.code == 2
    assert "line 1: program.maxRedeemPercent: the number 1.5 has a fraction" in run.err
    assert "(a percent, not money)" in run.err and "minor units" not in run.err


@pytest.mark.parametrize(
    ("place", "advice"),
    [
        ("program.maxRedeemPercent", "write a whole number (a percent, not money)"),
        ("customers[0].balancePoints", "write a whole number of points"),
        ("lines[0].priceMinor", "write money in minor units"),
        ("program.holdTtlSeconds", "write a whole number of seconds"),
    ],
)
def test_an_integer_field_s_advice_speaks_of_what_it_counts(place: str, advice: str) -> None:
    """What a proto JSON reader (gRPC's JSON mapping, a signed snapshot) tells of an int64
    field written with a point (agent/wire.py)."""
    from tillpoint.agent.advice import whole_number_advice

    assert whole_number_advice(place).startswith(advice)


def test_the_hub_asks_for_a_whole_percent_where_a_till_takes_a_decimal(
    cli: CLI, tmp_path: Path
) -> None:
    """`"maxRedeemPercent": "1.5%"` at the hub's import was told to be "a decimal string
    such as \"7.5\"", which the hub then refuses ("must be a whole number"): the rule
    said is the hub's own (CONTRACT §3's program at the hub is int64)."""
    run = cli(
        "hub", "import", "--hub-dir", tmp_path / "hub", {"program": {"maxRedeemPercent": "1.5%"}}
    )
    assert run.code == 2
    assert 'maxRedeemPercent must be a whole number such as "30"' in run.err
    assert "7.5" not in run.err


# ----------------------------- rev38e: a stop in a serial job's last second (CONTRACT §7)


class _CountingLine(_PacedLine):
    """`_PacedLine` (it answers `GS r` and `DLE EOT` once it has read them) that also
    keeps every byte it took (`got`), and can stop reading (`hold`: a printer whose
    buffer is full, flow control held)."""

    def __init__(self, master: int, rate: int) -> None:
        self.got = bytearray()
        self.hold = threading.Event()
        super().__init__(master, rate)

    def _serve(self) -> None:
        start = time.monotonic()
        taken = 0
        while not self._stop.is_set():
            allowed = int((time.monotonic() - start) * self.rate) - taken
            if allowed <= 0 or self.hold.is_set():
                time.sleep(0.01)
                continue
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                start, taken = time.monotonic(), 0
                continue
            try:
                data = os.read(self.master, min(allowed, 4096))
            except OSError:
                return
            taken += len(data)
            self.got += data
            for request in self.decoder.feed(data):
                answer = b"\x00" if request.command == "GS r" else b"\x12"
                self.answered_gs_r += request.command == "GS r"
                with contextlib.suppress(OSError):
                    os.write(self.master, answer)


def _pty_holds() -> int:
    """How many bytes the kernel holds for a pseudo-terminal's line while nobody reads
    (20 KB here; the wait before the stop is worked out from it, not assumed)."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        os.set_blocking(slave, False)
        held = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                held += os.write(slave, b"x" * 1024)
        return held
    finally:
        os.close(master)
        os.close(slave)


RATE = 23_040  # bytes a second: a 230,400-baud line
HELD = _pty_holds()


@contextlib.contextmanager
def _serial(rate: int) -> Iterator[tuple[SerialTransport, _CountingLine]]:
    master, slave = os.openpty()
    line = _CountingLine(master, rate)
    transport = SerialTransport(
        PrinterConfig(
            kind="serial",
            device=os.ttyname(slave),
            baudrate=rate * 10,
            write_timeout_s=10.0,
        )
    )
    transport.open()
    try:
        yield transport, line
    finally:
        line.close()
        transport.close()
        os.close(master)
        os.close(slave)


JOB = b"\x1b@" + b"Your coupon: TP1-o-01 ".ljust(63, b".") * 700 + b"\n\x1dV\x00"  # ~44 KB


def _write_in_thread(transport: SerialTransport) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def write() -> None:
        try:
            transport.write(JOB)
            outcome.append("whole")
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread, outcome


def _until(what: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not what() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_stop_in_a_serial_job_s_last_second_lets_its_cut_go_out(tmp_path: Path) -> None:
    """CONTRACT §7: the stop breaks off a job still being written, which the next start
    prints again in full. A coupon whose last second was still to be handed to the line
    went out torn, its codes printed and scannable, and then again whole: a coupon
    redeemed twice. A rest the line carries within `STOP_FINISH_S` is now written out,
    the cut last: the job is the printer's, never sent again."""
    with _serial(RATE) as (transport, line):
        thread, outcome = _write_in_thread(transport)
        # the kernel holds HELD bytes for the line: the write waits until ~0.8 s is left
        _until(lambda: len(line.got) >= len(JOB) - HELD - RATE * 0.8, 20)
        transport.abort()  # the print worker's stop
        thread.join(10)
        assert outcome == ["whole"]
        _until(lambda: len(line.got) >= len(JOB), 10)
        assert bytes(line.got) == JOB


def test_a_stop_still_breaks_off_a_job_the_printer_stopped_taking(tmp_path: Path) -> None:
    """The grace is for a line that moves: a printer that stopped reading (flow control
    held, its buffer full) is broken off as before, within the grace, and what the line
    queues is dropped (no cut went out: the next start prints it in full)."""
    with _serial(RATE) as (transport, line):
        thread, outcome = _write_in_thread(transport)
        _until(lambda: len(line.got) >= len(JOB) - HELD - RATE * 0.8, 20)
        line.hold.set()
        aborted = time.monotonic()
        transport.abort()
        thread.join(10)
        assert time.monotonic() - aborted < 4.0
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost), outcome
        assert "broken off" in str(outcome[0])


def test_the_print_worker_s_stop_in_a_coupon_s_last_second_leaves_it_printed_once(
    tmp_path: Path,
) -> None:
    """The whole path (CONTRACT §7, docs/PRINTING.md's stop rule): `tillpoint run`'s
    devices on a serial printer, a 50-offer coupon on its way, the stop coming when
    under a second of it is left to hand to the line. The job is DONE after one
    attempt, on paper once and whole, never sent again ("sent in full; the agent
    stopped before the printer confirmed it": the `GS r` question, a write begun after
    the stop, is not sent); it was left PENDING ("the agent stopped while the job was
    sent"), torn, and printed again whole at the next start."""
    data = tmp_path / "data"
    seed = Agent(data, "till-1")
    seed.load_snapshot(_long_snapshot())
    seed.close()
    master, slave = os.openpty()
    line = _CountingLine(master, RATE)
    config = PrinterConfig(
        kind="serial",
        device=os.ttyname(slave),
        baudrate=RATE * 10,
        write_timeout_s=10.0,
        status_timeout_s=0.3,
        confirm_timeout_s=3.0,
        retry_base_s=0.05,
        retry_max_s=0.2,
        poll_interval_s=0.1,
    )
    try:
        with devices_till(data, config) as (agent, devices):
            sale = agent.checkout(receipt_from_json(receipt("r-000")))
            assert len(sale.printed_offers) == 50
            (payload,) = agent._ledger.execute("SELECT payload FROM print_jobs").fetchone()
            size = len(devices.worker._render(parse_payload(payload)))
            _until(lambda: len(line.got) >= size - HELD - RATE * 0.8, 20)
            assert len(line.got) < size  # the coupon is still on its way
        rows = _job_rows(data)
        assert [(r, s, a) for r, s, a, _ in rows] == [("r-000", "DONE", 1)], rows
        assert "not printed again" in rows[0][3], rows
        _until(lambda: len(line.decoder.documents) == 1 and line.decoder.documents[0].complete, 5)
        docs = line.decoder.documents
        assert [d.complete for d in docs] == [True], [d.text[:60] for d in docs]
        assert docs[0].codes == [f"TP1-o-{n:02d}" for n in range(50)]
    finally:
        line.close()
        os.close(master)
        os.close(slave)


# ------------------------- perf38/rev38i: a new file's schema without sqlite-utils (§10)


def _schema(conn: sqlite3.Connection) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    objects = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
    ).fetchall()
    steps = conn.execute(
        "SELECT migration_set, name FROM _sqlite_migrations ORDER BY id"
    ).fetchall()
    return objects, steps


@pytest.mark.parametrize("kind", ["cache", "ledger", "hub database"])
def test_a_new_file_s_schema_is_sqlite_utils_own_without_importing_it(
    tmp_path: Path, kind: str
) -> None:
    """A new file's schema steps are applied without sqlite-utils (whose import scans
    every installed package's entry points: a new snapshot's cache built at each full
    snapshot paid it), into the same tables, indexes and `_sqlite_migrations` rows, in
    the same order, as sqlite-utils' `Migrations.apply` writes (which a later step on
    the file, by either way, then reads)."""
    import tillpoint.sync.hub_sqlite  # noqa: F401  (its set registered)
    from tillpoint.agent import db as db_mod
    from tillpoint.agent import ledger as _ledger  # noqa: F401

    sets = db_mod.MigrationSet._of_file[kind]
    plain = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    library = sqlite3.connect(tmp_path / "library.db", isolation_level=None)
    try:
        for each in sets:
            plain.execute("BEGIN IMMEDIATE")
            each.apply(plain)
            plain.execute("COMMIT")
            library.execute("BEGIN IMMEDIATE")
            each.apply_with_sqlite_utils(library)
            library.execute("COMMIT")
        assert _schema(plain) == _schema(library)
        stamps = [at for (at,) in plain.execute("SELECT applied_at FROM _sqlite_migrations")]
        assert all(datetime.fromisoformat(at).utcoffset() is not None for at in stamps)
        assert all(each.current(plain) for each in sets)
    finally:
        plain.close()
        library.close()


def test_a_snapshot_load_building_a_new_cache_imports_no_sqlite_utils(tmp_path: Path) -> None:
    """`tillpoint snapshot load` of a full snapshot builds a new cache file: it imported
    sqlite-utils (and importlib.metadata under it, an entry-point scan) for its schema
    (perf38/rev38i). The import guard of review 38 now says so too."""
    from .test_review38_perf38 import NOT_FOR_A_SNAPSHOT_LOAD, _imported, _unwanted

    assert "sqlite_utils" in NOT_FOR_A_SNAPSHOT_LOAD
    assert "importlib.metadata" in NOT_FOR_A_SNAPSHOT_LOAD
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(tmp_path / "data"), TILLPOINT_DEVICE_ID="till-1")
    snap = tmp_path / "snapshot.json"
    snap.write_text(json.dumps(snapshot()))
    names, loaded = _imported(["snapshot", "load", str(snap)], env)  # a new till: new files
    assert loaded.returncode == 0, loaded.stderr[-500:]
    assert "tillpoint.agent.db" in names
    assert _unwanted(names, ("sqlite_utils", "importlib.metadata")) == []


JOBS: list[dict[str, Any]] = [
    {
        "id": 1,
        "receipt_id": "s1-t1-000123",
        "created_at": "2026-11-23T07:15:00+00:00",
        "state": "DONE",
        "attempts": 1,
        "next_attempt_at": None,
        "last_error": None,
        "printed_at": "2026-11-23T07:15:01+00:00",
        "payload": {"offers": [{"id": "o-1"}, {"id": "о-кириллица"}, "not an offer", {}]},
    },
    {
        "id": 2**40,
        "receipt_id": "r-2",
        "created_at": None,
        "state": "PENDING",
        "attempts": 0,
        "next_attempt_at": "2026-11-23T07:16:00+00:00",
        "last_error": "the agent stopped while the job was sent; printed again in full",
        "printed_at": None,
        "payload": "{not json",
    },
    {
        "id": 3,
        "receipt_id": "r-3 «Ёлка» 🎄",
        "created_at": "2026-11-23T07:17:00+00:00",
        "state": "FAILED",
        "attempts": 5,
        "next_attempt_at": None,
        "last_error": "line\ttab",
        "printed_at": None,
        "payload": {"offers": []},
    },
]


def test_the_print_queue_s_document_is_the_proto_s_without_protobuf() -> None:
    """`tillpoint print queue --json` is the proto's `PrintQueueList` as `message_json`
    writes it (CONTRACT §1's --json: the proto3 JSON of the message, every field): built
    without protobuf now, so held equal to protobuf's own writing here."""
    from tillpoint.agent.wire import message_json
    from tillpoint.printer.cli import queue_json
    from tillpoint.v1 import tillpoint_pb2 as pb

    for jobs in ([], JOBS[:1], JOBS):
        listing = pb.PrintQueueList()
        for job in jobs:
            payload = job["payload"]
            offers = payload.get("offers", []) if isinstance(payload, dict) else []
            listing.jobs.add(
                id=job["id"],
                receipt_id=job["receipt_id"],
                created_at=job["created_at"] or "",
                state=job["state"],
                attempts=job["attempts"],
                next_attempt_at=job["next_attempt_at"] or "",
                last_error=job["last_error"] or "",
                printed_at=job["printed_at"] or "",
                offers=[str(o.get("id")) for o in offers if isinstance(o, dict)],
            )
        ours = queue_json(jobs)
        assert ours == message_json(listing)
        assert json.dumps(ours) == json.dumps(message_json(listing))  # the keys' order too


def test_print_queue_imports_no_protobuf(tmp_path: Path) -> None:
    """perf38/rev38i: `tillpoint print queue` imported protobuf to build its listing."""
    from .test_review38_perf38 import _imported, _unwanted

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(tmp_path / "data"), TILLPOINT_DEVICE_ID="till-1")
    snap = tmp_path / "snapshot.json"
    snap.write_text(json.dumps(snapshot()))
    _, loaded = _imported(["snapshot", "load", str(snap)], env)
    assert loaded.returncode == 0, loaded.stderr[-500:]
    names, listed = _imported(["print", "queue", "--all", "--json"], env)
    assert listed.returncode == 0, listed.stderr[-500:]
    assert json.loads(listed.stdout) == {"jobs": []}
    assert "tillpoint.printer.cli" in names
    assert _unwanted(names, ("google.protobuf", "grpc", "tillpoint.agent.wire")) == []
