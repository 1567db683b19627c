"""Review 39 (rev39h): a second look at left39's merge.

- A new file's schema without sqlite-utils (`agent/db.py`, `MigrationSet.apply` and
  `_PlainDatabase`): every old release's files (tests/fixtures/upgrade) brought to today's
  schema by it and by sqlite-utils come out the same, rows included; a file one way began
  is finished by the other (a rollback to a release that still imports sqlite-utils, then
  the upgrade again); a step that fails midway leaves nothing of itself and no record, as
  sqlite-utils' own; a script's statements are split as sqlite-utils splits them
  (triggers, ';' in strings and comments). Found right.
- `tillpoint print queue --json` written without protobuf (`printer/cli.py`,
  `queue_json`): equal to the proto's document for rows of a real ledger in every job
  state, non-ASCII text, int64 at its limits. Found right.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tillpoint.sync.hub_sqlite  # noqa: F401  (the hub's set registered)
from tillpoint.agent import db as db_mod
from tillpoint.agent import ledger as _ledger  # noqa: F401  (the ledger's sets registered)
from tillpoint.agent.db import MigrationSet, _PlainDatabase

from .conftest import CLI, snapshot

UPGRADE = Path(__file__).parent / "fixtures" / "upgrade"
FIXTURES = sorted(UPGRADE.glob("*.tar.gz"))
KINDS = {"ledger.db": "ledger", "hub.db": "hub database"}


def _content(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """Everything of a file but when its steps ran: the schema, the steps recorded in
    their order, and every table's rows."""
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    steps = conn.execute(
        "SELECT id, migration_set, name FROM _sqlite_migrations ORDER BY id"
    ).fetchall()
    rows = {
        name: sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"').fetchall()))
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT IN ('_sqlite_migrations', 'sqlite_sequence') ORDER BY name"
        )
    }
    return objects, steps, rows


def _apply(path: Path, kind: str, *, plain: bool) -> tuple[Any, ...]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for each in MigrationSet._of_file[kind]:
            if plain:
                each.apply(conn)
            else:
                each.apply_with_sqlite_utils(conn)
        conn.execute("COMMIT")
        assert all(each.current(conn) for each in MigrationSet._of_file[kind])
        return _content(conn)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def old_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[Path, str]]]:
    """Every SQLite file of every old release's data directories (till and hub)."""
    out = tmp_path_factory.mktemp("old")
    found: list[tuple[Path, str]] = []
    for fixture in FIXTURES:
        where = out / fixture.name.removesuffix(".tar.gz")
        with tarfile.open(fixture) as tar:
            tar.extractall(where, filter="data")
        for path in sorted(where.glob("*/*.db")):
            if path.name == "cache.db" and path.is_symlink():
                continue  # the generation it names is listed itself
            found.append((path, KINDS.get(path.name, "cache")))
    yield found


def test_every_old_release_s_file_is_upgraded_the_same_without_sqlite_utils(
    tmp_path: Path, old_files: list[tuple[Path, str]]
) -> None:
    """CONTRACT §10 (an upgrade keeps a till's data): a ledger, cache and hub store of
    each release the fixtures keep, brought to today's steps by the plain path (the
    record table is sqlite-utils' own, so it is taken) and by sqlite-utils itself: the
    same schema, the same steps in the same order, the same rows (m004, m010 and m014
    rewrite rows)."""
    kinds = set()
    for path, kind in old_files:
        plain, library = tmp_path / "plain.db", tmp_path / "library.db"
        shutil.copy(path, plain)
        shutil.copy(path, library)
        before = sqlite3.connect(path)
        try:
            (had,) = before.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()
        finally:
            before.close()
        ours = _apply(plain, kind, plain=True)
        theirs = _apply(library, kind, plain=False)
        assert ours == theirs, path
        assert len(ours[1]) >= had
        kinds.add(kind)
        plain.unlink()
        library.unlink()
    assert kinds == {"ledger", "cache", "hub database"}


def _steps(kind: str) -> list[tuple[MigrationSet, int]]:
    return [(each, len(each._migrations)) for each in MigrationSet._of_file[kind]]


@pytest.mark.parametrize("kind", ["ledger", "cache", "hub database"])
@pytest.mark.parametrize("first", ["plain", "library"])
def test_a_file_one_way_began_is_finished_by_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, first: str
) -> None:
    """A new file made by this release at some step (each cut point of each set), then
    the later steps applied the other way (a rollback to a release that imports
    sqlite-utils, the upgrade again; or an old file brought on by this one): the file
    equals one made in one go."""
    whole = tmp_path / "whole.db"
    expected = _apply(whole, kind, plain=True)
    sets = _steps(kind)
    for index, (cut_set, count) in enumerate(sets):
        for cut in range(count + 1):
            path = tmp_path / f"{index}-{cut}.db"
            with monkeypatch.context() as patch:
                for later in sets[index + 1 :]:
                    patch.setattr(later[0], "_migrations", [])
                patch.setattr(cut_set, "_migrations", cut_set._migrations[:cut])
                _apply(path, kind, plain=first == "plain")
            got = _apply(path, kind, plain=first != "plain")
            # the steps' ids and rows as made in one go
            assert got == expected, (cut_set.name, cut)
            path.unlink()


# A set of steps for this file's tests alone: its own kind of file.
trial = MigrationSet("rev39h.trial", "rev39h trial file")


@trial()
def m001_first(db: Any) -> None:
    db.execute("CREATE TABLE first (x INTEGER)")
    db.execute("INSERT INTO first VALUES (1)")


@trial()
def m002_fails_midway(db: Any) -> None:
    db.executescript(
        """
        CREATE TABLE second (y TEXT);
        INSERT INTO second VALUES ('half; of it');
        INSERT INTO first VALUES (2);
        INSERT INTO nowhere VALUES (3);
        CREATE TABLE never (z);
        """
    )


def _trial_state(conn: sqlite3.Connection) -> tuple[Any, ...]:
    tables = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    steps = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    return tables, steps, conn.execute("SELECT x FROM first ORDER BY x").fetchall()


def test_a_step_that_fails_midway_leaves_nothing_of_it_as_sqlite_utils_does(
    tmp_path: Path,
) -> None:
    """A step whose script fails at its fourth statement: its savepoint is rolled back
    (its table, its rows, its change to an earlier step's table gone), it is not
    recorded, the step before stands in the open transaction, and the error is
    SQLite's own; sqlite-utils' `Migrations.apply` leaves the same."""
    states = []
    for plain in (True, False):
        conn = sqlite3.connect(tmp_path / f"{plain}.db", isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):
                if plain:
                    trial.apply(conn)
                else:
                    trial.apply_with_sqlite_utils(conn)
            assert conn.in_transaction
            states.append(_trial_state(conn))
            conn.execute("COMMIT")
        finally:
            conn.close()
    assert states[0] == states[1]
    assert states[0] == (
        [("_sqlite_migrations",), ("first",)],
        [("rev39h.trial", "m001_first")],
        [(1,)],
    )


def test_migrate_rolls_a_failed_step_back_whole(tmp_path: Path) -> None:
    """`db.migrate` (every file's opening): the failure rolls every step of the round
    back, the record table included, and is said as a storage error naming the file;
    the file is as it was (empty here), and the next opening tries again."""
    from tillpoint.agent.errors import StorageError

    path = tmp_path / "trial.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(StorageError, match="cannot migrate the database schema"):
            db_mod.migrate(conn, trial)
        assert not conn.in_transaction
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    finally:
        conn.close()


SCRIPTS = [
    # a trigger's body holds ';' (sqlite3.complete_statement keeps it whole)
    """
    CREATE TABLE t (a TEXT, b INTEGER);
    CREATE TABLE log (what TEXT);
    CREATE TRIGGER t_in AFTER INSERT ON t BEGIN
        INSERT INTO log VALUES ('in; ' || new.a);
        UPDATE log SET what = what || ';' WHERE what = 'never';
    END;
    INSERT INTO t VALUES ('x;y', 1);
    """,
    # string literals, quoted names and comments holding ';' and quotes
    """
    -- a comment; with a semicolon and an apostrophe: it's here
    CREATE TABLE "odd;name" ("col;umn" TEXT DEFAULT 'a;b', [x;y] INTEGER);
    /* a block comment; spanning
       lines; 'quoted' */
    INSERT INTO "odd;name" VALUES ('it''s; fine', 2); -- trailing; comment
    INSERT INTO "odd;name" ("col;umn") SELECT 'last'';' || count(*) FROM "odd;name"
    """,
    # a CASE ... END in a trigger, a statement without its ';' last, a comment last
    """
    CREATE TABLE u (n INTEGER);
    CREATE TABLE v (s TEXT);
    CREATE TRIGGER u_in AFTER INSERT ON u BEGIN
        INSERT INTO v VALUES (CASE WHEN new.n > 1 THEN 'big;' ELSE 'small' END);
    END;
    INSERT INTO u VALUES (1);
    INSERT INTO u VALUES (2)
    ;
    -- the end
    """,
]


@pytest.mark.parametrize("script", SCRIPTS, ids=["trigger", "literals", "case-end"])
def test_a_script_s_statements_are_split_as_sqlite_utils_splits_them(
    tmp_path: Path, script: str
) -> None:
    """`_PlainDatabase.executescript` inside the migration's transaction (sqlite3's own
    `executescript` would commit it first) runs the statements sqlite-utils' does."""
    from sqlite_utils import Database

    content = []
    for plain in (True, False):
        conn = sqlite3.connect(tmp_path / f"{plain}.db", isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if plain:
                _PlainDatabase(conn).executescript(script)
            else:
                Database(conn).executescript(script)
            assert conn.in_transaction  # no commit in the middle of a migration
            conn.execute("COMMIT")
            objects = conn.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY name"
            ).fetchall()
            rows = {
                name: conn.execute(f'SELECT * FROM "{name}"').fetchall()
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            }
            content.append((objects, rows))
        finally:
            conn.close()
    assert content[0] == content[1]
    assert any(rows for rows in content[0][1].values())


# ------------------------------------- `print queue --json` without protobuf (CONTRACT §7)


def _proto_document(jobs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The listing as `print queue` wrote it before review 39: the proto message."""
    from tillpoint.agent.wire import message_json
    from tillpoint.v1 import tillpoint_pb2 as pb

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
    human = [
        f"{j.receipt_id:<24} {j.state:<8} attempts {j.attempts:<3} {j.last_error}".rstrip()
        for j in listing.jobs
    ]
    return message_json(listing), human


def test_the_queue_of_a_real_ledger_is_listed_as_the_proto_lists_it(
    tmp_path: Path, cli: CLI
) -> None:
    """Rows of a real ledger in each state a job has (PENDING, SENDING, DONE, FAILED),
    ids and attempts at int64's edges, Cyrillic, emoji and tabs in the texts, a payload
    that is not JSON, offers whose ids are numbers: `queue_json` over `list_jobs` is the
    proto's document, keys in its order, numbers as `message_json` writes int64."""
    from tillpoint.printer.queue import list_jobs

    data = tmp_path / "data"
    assert cli("snapshot", "load", snapshot()).code == 0
    rows = [
        (1, "r-1", "2026-11-23T07:15:00Z", '{"offers": [{"id": "o-1"}, {"id": 7}]}',
         "PENDING", 0, None, None, None),
        (2, "чек «Ёлка» 🎄", "2026-11-23T07:16:00Z", '{"offers": [{"id": "о-кир"}]}',
         "SENDING", 1, "2026-11-23T07:17:00Z", "printer\tbusy", None),
        (3, "r-3", "2026-11-23T07:18:00Z", '{"offers": []}',
         "DONE", 2, None, "sent; не подтверждено", "2026-11-23T07:19:00Z"),
        (2**63 - 1, "r-4", "2026-11-23T07:20:00Z", "{not json",
         "FAILED", 2**63 - 1, None, "x" * 300, None),
    ]  # fmt: skip
    conn = sqlite3.connect(data / "ledger.db", isolation_level=None)
    try:
        conn.executemany(
            "INSERT INTO print_jobs (id, receipt_id, created_at, payload, state, attempts,"
            " next_attempt_at, last_error, printed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    finally:
        conn.close()
    for include_done in (False, True):
        jobs = list_jobs(data / "ledger.db", include_done=include_done)
        assert len(jobs) == (4 if include_done else 3)
        theirs, human = _proto_document(jobs)
        flag = ["--all"] if include_done else []
        listed = cli("print", "queue", *flag, "--json")
        assert listed.code == 0, listed.err
        assert listed.out == json.dumps(theirs, ensure_ascii=False) + "\n"
        ours = json.loads(listed.out)
        assert [job["id"] for job in ours["jobs"]][-1] == 2**63 - 1
        shown = cli("print", "queue", *flag)
        assert shown.code == 0, shown.err
        assert shown.out == "\n".join(human) + "\n"


# ------------------ a serial job the stop meets in its last 2 s, on a UART (CONTRACT §7)


class _Uart:
    """`select` and `os` of `printer/transport.py` as a UART's port behaves, over a real
    pty: its kernel buffer holds 4,096 bytes for the line (`UART_XMIT_SIZE`), and Linux's
    `n_tty_poll` says it is writable only while fewer than 256 (`WAKEUP_CHARS`) wait
    (`tty_chars_in_buffer`). A pseudo-terminal has no such count (it says writable
    whenever it has room, and holds ~14-20 KB), so the port's `os.write`s are counted
    and held to the UART's room on their way, and the bytes the printer end has not read
    yet stand for the UART's queue. `stop` runs once the kernel has taken its fill of a
    write that has more (the print worker's stop coming then)."""

    BUFFER = 4096
    WAKEUP = 256

    def __init__(self, line: Any, port_fd: int, stop: Any) -> None:
        import os
        import select as real

        self._real = real
        self._os = os
        self._line = line
        self._port = port_fd
        self._stop = stop
        self.taken = 0

    def __getattr__(self, name: str) -> Any:  # the rest of `os`
        return getattr(self._os, name)

    def _queued(self) -> int:
        return self.taken - len(self._line.got)

    def write(self, fd: int, data: Any) -> int:
        if fd != self._port:
            return int(self._os.write(fd, data))
        room = self.BUFFER - self._queued()
        if room <= 0:
            raise BlockingIOError
        count = int(self._os.write(fd, data[:room]))
        self.taken += count
        if count < len(data) and self._stop is not None:
            self._stop, stop = None, self._stop
            stop()
        return count

    def select(self, r: Any, w: Any, x: Any, timeout: float | None = None) -> Any:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready_r, ready_w, ready_x = self._real.select(r, w, x, min(left or 0.005, 0.005))
            ready_w = [fd for fd in ready_w if fd != self._port or self._queued() < self.WAKEUP]
            if ready_r or ready_w or ready_x or (deadline is not None and left == 0):
                return ready_r, ready_w, ready_x


def test_a_stop_in_a_serial_job_s_last_second_lets_it_go_out_on_a_uart_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop met a job with 1,000 bytes (0.04 s) of it left to hand to the line, the
    kernel holding its fill: a UART's port says "writable" again only once fewer than
    256 bytes wait (3,840 bytes' line time later: 4 s at 9,600 baud, 0.17 s here), and
    the write waited for that in its grace of twice 0.04 s: broken off, torn, and
    printed whole again at the next start, on a real serial port (a pty says writable
    whenever it has room: left39's tests passed). The rest is now offered to the port
    while the grace lasts, as the line frees room (CONTRACT §7)."""
    import os
    import time

    from tillpoint.printer import transport as transport_mod
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.transport import SerialTransport

    from .test_review39_left39 import _CountingLine, _until

    rate = 23_040  # a 230,400-baud line
    master, slave = os.openpty()
    line = _CountingLine(master, rate)
    transport = SerialTransport(
        PrinterConfig(
            kind="serial", device=os.ttyname(slave), baudrate=rate * 10, write_timeout_s=10.0
        )
    )
    transport.open()
    job = b"\x1b@" + b"Your coupon: TP1-o-01 ".ljust(63, b".") * 65 + b"x" * 1000 + b"\n\x1dV\x00"
    stopped: list[float] = []

    def stop() -> None:
        stopped.append(time.monotonic())
        transport.abort()  # the print worker's stop

    uart = _Uart(line, transport._port.fd, stop)
    monkeypatch.setattr(transport_mod, "select", uart)
    monkeypatch.setattr(transport_mod, "os", uart)
    outcome: list[Any] = []
    try:
        try:
            transport.write(job)
            outcome.append("whole")
        except Exception as exc:
            outcome.append(exc)
        assert len(stopped) == 1 and uart.taken >= 4096
        assert time.monotonic() - stopped[0] < 4.0
        assert outcome == ["whole"], outcome
        _until(lambda: len(line.got) >= len(job), 10)
        assert bytes(line.got) == job
    finally:
        line.close()
        transport.close()
        os.close(master)
        os.close(slave)


def test_a_uart_s_printer_that_stopped_taking_bytes_is_still_broken_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rest offered to the port while the grace lasts: a printer that stops reading
    as the stop comes (flow control held) takes none of it, and the write is broken off
    when the grace runs out, within the stop's bound, saying how much went out (the job
    PENDING, printed again in full; CONTRACT §7)."""
    import os
    import time

    from tillpoint.printer import transport as transport_mod
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.errors import ConnectionLost
    from tillpoint.printer.transport import SerialTransport

    from .test_review39_left39 import _CountingLine

    rate = 23_040
    master, slave = os.openpty()
    line = _CountingLine(master, rate)
    transport = SerialTransport(
        PrinterConfig(
            kind="serial", device=os.ttyname(slave), baudrate=rate * 10, write_timeout_s=10.0
        )
    )
    transport.open()
    job = b"\x1b@" + b"x" * 30_000 + b"\n\x1dV\x00"  # 1.3 s of the line: within the rule
    stopped: list[float] = []

    def stop() -> None:
        stopped.append(time.monotonic())
        line.hold.set()  # the printer stops reading
        transport.abort()

    uart = _Uart(line, transport._port.fd, stop)
    monkeypatch.setattr(transport_mod, "select", uart)
    monkeypatch.setattr(transport_mod, "os", uart)
    try:
        with pytest.raises(ConnectionLost, match=r"broken off \(4096 of 30006 bytes went out\)"):
            transport.write(job)
        assert 2.0 < time.monotonic() - stopped[0] < 4.0  # twice the rest's 1.1 s, no more
    finally:
        line.close()
        transport.close()
        os.close(master)
        os.close(slave)


# ------------------------------------ a fraction's refusal at every nesting (CONTRACT §3)


def _with_fraction(place: list[Any]) -> dict[str, Any]:
    """The tests' snapshot with a QUANTITY_PRICE deal (tiers inside an offer), a
    customer's expiring and pending batches, and "__F__" at `place`."""
    snap = snapshot(
        offers=[
            {
                "id": "q-s",
                "kind": "QUANTITY_PRICE",
                "skus": ["4601234000017"],
                "tiers": [{"minQty": "4", "unitPriceMinor": 2500}],
                "priority": 1,
            }
        ]
    )
    snap["program"]["pointsLifetimeDays"] = 365
    snap["customers"][1]["expiring"] = [{"points": 10, "expiresAt": "2026-12-31T23:59:59Z"}]
    node: Any = snap
    for step in place[:-1]:
        node = node[step]
    node[place[-1]] = "__F__"
    return snap


NESTED = [
    (["offers", 0, "tiers", 0, "unitPriceMinor"], "write money in minor units"),
    (["customers", 1, "expiring", 0, "points"], "write a whole number of points"),
    (["program", "tiers", 1, "accrualPercent"], None),
    (["offers", 0, "priority"], "write a whole number"),
    (["version"], "write a whole number"),
]


def _place(path: list[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


@pytest.mark.parametrize(("path", "advice"), NESTED, ids=[_place(p) for p, _ in NESTED])
def test_a_fraction_is_refused_naming_its_field_at_every_nesting(
    cli: CLI, tmp_path: Path, path: list[Any], advice: str | None
) -> None:
    """A number with a point deep in a snapshot (a deal's tier, a customer's batch) is
    refused at the till (`snapshot load`) and at the hub (`hub import`) naming its own
    place and its field's rule, in one line, exit 2 (found right). A field that counts
    neither money nor points nor time (an offer's priority, the version) was told to
    "write money in minor units": now "write a whole number"."""
    text = json.dumps(_with_fraction(path), ensure_ascii=False).replace('"__F__"', "1.5")
    file = tmp_path / "fraction.json"
    file.write_text(text, encoding="utf-8")
    place = _place(path)
    till = cli("snapshot", "load", file)
    hub = cli("hub", "import", "--hub-dir", tmp_path / "hub", file)
    for run in (till, hub):
        assert run.code == 2, run.err
        assert run.err.count("\n") == 1
        assert f"{place}: the number 1.5 has a" in run.err, run.err
        if advice is not None:
            assert advice in run.err, run.err
            if "Minor" not in place:
                assert "money" not in run.err, run.err
