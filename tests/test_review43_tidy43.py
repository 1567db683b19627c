"""Review 43, tidy43: session 42's small leftovers, each checked with the real parts (real
`tillpoint` processes, real SQLite files and PostgreSQL databases, real threads).

1. One bounded readline: the JSON Lines line bound (`limits.LINE_MAX_BYTES`, 64 MiB) was
   checked by three copies of the same lines (`snapshot_stream.stream_lines`,
   `cache_build._lines`, `hub_import._bounded_lines`); one helper
   (`limits.bounded_lines`) serves the three now. Its edge (a line of the bound and its
   newline read, one byte more refused by its number, with or without a newline, a first
   line already read in part finished within the bound, bytes and text) is pinned here
   with a small bound; the three readers' own words ("snapshot line N: …", "import
   refused, nothing was imported: line N …") stay pinned by review 42's tests.
2. A hub store used after `close()`: the SQLite store opened a new connection for a
   thread that outlived the close (`hub serve`'s snapshot builder past the stop's 10 s),
   and nobody closed it. A store is used again after its close (`HubServer`'s stop and
   start: review 35's tests restart hubs), so the SQLite store now closes a thread's
   connection when that thread ends (before or after a close), and nothing is left open
   (the connection asked, the file's descriptors counted); PostgreSQL's closed pool
   refuses such a use, now in words of a closed store. A real hub whose builder waited
   past the stop leaves nothing open, and on PostgreSQL says INFO, not ERROR.
3. `hub import` of a two-row catalogue was said to peak at ~377 MiB: a measurement's
   artefact (a child's `ru_maxrss` starts from the RSS of the process that forked it;
   the import was run from one that had just built a 300 MB line). Measured from a
   small parent it is the process's baseline, ~76 MiB; pinned below 150 MiB (a file
   and standard input), and a 300 MB line's refusal below 3 x 64 + 120 MiB, as the
   till's (`make test-all`).
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import StorageError

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
ROWS = (
    '{"product": {"sku": "4600000000011", "name": "Milk", "category": "dairy"}}\n'
    '{"product": {"sku": "4600000000012", "name": "Bread", "category": "dairy"}}\n'
)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}


# ------------------------------------------------------- 2. a hub store used after close


def open_descriptors(path: Path) -> list[str]:
    """This process's open descriptors of `path` and its `-wal` and `-shm` files."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, gone
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


def test_a_hub_store_used_after_close_by_a_thread_that_outlived_it(
    hub_store_factory: Any,
) -> None:
    """A real thread that used the store (its own connection, on SQLite) outlives the
    store's `close` (the snapshot builder past `hub serve`'s stop) and calls it again.
    SQLite's store serves it (a store is used again after its close: `HubServer`'s stop
    and start); PostgreSQL's closed pool refuses it, now in words of a closed store
    (StorageError "the hub database is closed", not "could not be written, nothing was
    stored" of a read)."""
    store = hub_store_factory()
    sqlite = type(store).__name__ == "SqliteHubStore"
    used, closed = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def builder() -> None:
        try:
            store.latest()  # its connection, opened by this thread
            used.set()
            closed.wait(30)
            store.latest()
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=builder, name="hub-snapshots")
    thread.start()
    assert used.wait(30)
    store.close()
    closed.set()
    thread.join(30)
    assert not thread.is_alive() and len(outcome) == 1
    if sqlite:
        assert outcome == [None]
        assert store.latest() is None  # the closing thread too
    else:
        assert isinstance(outcome[0], StorageError), outcome
        assert str(outcome[0]) == "the hub database is closed"
        with pytest.raises(StorageError, match=r"^the hub database is closed$"):
            store.latest()
    store.close()  # a second close is nothing


def sqlite_store_with_a_thread(path: Path, close_between: bool) -> tuple[Any, list[str]]:
    """A SQLite hub store at `path` and a real thread that reads it, with the store's
    `close` made while the thread waits between two reads (or none); the thread ended.
    With this process's descriptors of the database before the thread started."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    store = SqliteHubStore(path)
    before = open_descriptors(path)
    used, closed = threading.Event(), threading.Event()
    done: list[int] = []

    def builder() -> None:
        store.latest()
        used.set()
        closed.wait(30)
        done.append(store.delta_floor())

    thread = threading.Thread(target=builder)
    thread.start()
    assert used.wait(30)
    if close_between:
        store.close()
    closed.set()
    thread.join(30)
    assert not thread.is_alive() and done == [0]
    gc.collect()
    return store, before


def test_a_sqlite_hub_store_leaves_nothing_open_after_a_thread_outlived_its_close(
    tmp_path: Path,
) -> None:
    """The leftover: once the thread that outlived the close has ended, no descriptor of
    the hub's database (nor of its -wal, -shm) is open in the process (the connection it
    opened after the close was kept in the store's list and never closed)."""
    path = tmp_path / "hub.db"
    sqlite_store_with_a_thread(path, close_between=True)
    assert open_descriptors(path) == []


def test_a_sqlite_hub_stores_thread_connection_is_closed_when_the_thread_ends(
    tmp_path: Path,
) -> None:
    """Without a close: a thread's connection is closed when the thread ends, not kept
    open until the store closes (the store's own thread's stays open until then).
    (SQLite keeps a closed connection's descriptors while another connection of the
    process holds the file, so the connection itself is asked.)"""
    import sqlite3

    path = tmp_path / "hub.db"
    store, _ = sqlite_store_with_a_thread(path, close_between=False)
    conns = {owner is threading.current_thread(): conn for owner, conn in store._all}
    assert len(store._all) == 2
    assert conns[True].execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conns[False].execute("SELECT 1")
    store.close()
    gc.collect()
    assert open_descriptors(path) == []


def test_a_hub_stopped_before_its_builder_reached_the_store_leaves_nothing_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leftover's case with a real hub: its snapshot builder waits for the build's
    lock (held here, as another builder would) past `hub serve`'s stop (its wait made
    0.2 s), then goes on. On SQLite it builds on a connection of its own, as before, and
    no descriptor of hub.db stays open once its thread has ended (that connection was
    never closed); on PostgreSQL (`make test-pg`) the closed store refuses it, and that is
    INFO (the hub stopped), not an ERROR. No temporary file is left either way."""
    import fcntl
    import logging

    from tillpoint.sync import hub_server
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data

    monkeypatch.setattr(hub_server, "BUILD_STOP_WAIT_S", 0.2)
    # The stop comes once the builder is at the lock: stopped whenever the scheduler let
    # it, on a loaded machine the hub stopped before the builder had woken, and the
    # builder then ended without a build (review 44, stress44: CI's suite beside two CPU
    # hogs failed here once; that order is pinned in tests/test_review44_stress44.py).
    reached = threading.Event()
    real_flock = hub_server._flock

    @contextmanager
    def watched_flock(path: Path, how: int) -> Iterator[bool]:
        if how == fcntl.LOCK_SH:  # a build's shared lock: the builder is at the lock
            reached.set()
        with real_flock(path, how) as got:
            yield got

    monkeypatch.setattr(hub_server, "_flock", watched_flock)
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), publish=False)
    sqlite = type(hub.server.store).__name__ == "SqliteHubStore"
    snapshots = hub.server.dir.snapshots
    held = os.open(snapshots / hub_server.BUILDERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # the builder's shared lock waits for it
        builder = hub.server.builder
        builder.request_full(hub.publish())
        thread = builder._thread
        assert thread is not None
        assert reached.wait(60), "the builder never reached the builders' lock"
        hub.stop()
        assert thread.is_alive()  # outlived the stop, waiting for the lock
    finally:
        os.close(held)  # the lock let go: the builder goes on
    thread.join(30)
    assert not thread.is_alive()
    assert list(snapshots.glob("*.tmp")) == []
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tillpoint.hub"]
    assert not [m for level, m in said if level >= logging.ERROR], said
    if sqlite:
        assert len(list(snapshots.glob("*.snap"))) == 1
        gc.collect()
        assert open_descriptors(hub.server.dir.root / "hub.db") == []
    else:
        assert (
            logging.INFO,
            "the full snapshot of version 1 was not built: the hub database is closed",
        ) in said, said


# ------------------------------------------------ 3. the memory of a two-row `hub import`

# The peak resident size of a command's processes, measured by a small Python parent: a
# child's ru_maxrss starts from the resident size of the process that forked it, so one
# measured from a large process (a pytest worker) says that process's size.
PEAK_PROBE = (
    "import resource, subprocess, sys\n"
    "stdin = open(sys.argv[1], 'rb') if sys.argv[1] else None\n"
    "done = subprocess.run(sys.argv[2:], stdin=stdin, capture_output=True)\n"
    "sys.stderr.buffer.write(done.stderr)\n"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_mib(command: list[str], stdin: Path | None = None) -> tuple[int, float, str]:
    """`command`'s exit code, its peak resident size in MiB and its standard error."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, str(stdin or ""), *command],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    code, kib = done.stdout.split()
    return int(code), int(kib) / 1024, done.stderr


@pytest.mark.parametrize("way", ["file", "stdin"])
def test_a_two_row_hub_import_peaks_near_the_process_baseline(tmp_path: Path, way: str) -> None:
    """The leftover's case: two rows imported (a file, standard input's copy), the
    peak under 150 MiB (measured ~76 MiB: the interpreter, pydantic, the store)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(ROWS, encoding="utf-8")
    hub = ["hub", "import", "--hub-dir", str(tmp_path / "hub")]
    if way == "file":
        code, peak, err = peak_mib([TILLPOINT, *hub, str(rows)])
    else:
        code, peak, err = peak_mib([TILLPOINT, *hub, "-"], stdin=rows)
    assert code == 0, err
    assert peak < 150, f"{peak:.0f} MiB"


def test_a_child_peak_measured_from_a_large_parent_says_the_parents_size(tmp_path: Path) -> None:
    """Why ~377 MiB was seen: the same two-row import, measured from a parent holding
    300 MiB, is said to peak above 300 MiB (a measurement to avoid, pinned so that the
    probe above stays a small parent)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(ROWS, encoding="utf-8")
    probe = "big = bytearray(300 << 20)\nbig[::4096] = b'x' * len(big[::4096])\n" + PEAK_PROBE
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "",
            TILLPOINT,
            "hub",
            "import",
            "--hub-dir",
            str(tmp_path / "hub"),
            str(rows),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    code, kib = done.stdout.split()
    assert int(code) == 0, done.stderr
    assert int(kib) / 1024 > 300


@pytest.mark.slow
def test_a_300_mb_line_of_hub_import_costs_no_more_than_the_bound(tmp_path: Path) -> None:
    """One 300 MB line (a producer that lost its newlines) after a row: refused by its
    number, exit 2, the peak under the baseline and three times the 64 MiB bound (the
    reading holds the bound's bytes and their join: measured ~206 MiB)."""
    path = tmp_path / "long.jsonl"
    with path.open("wb") as f:
        f.write(ROWS.encode()[: ROWS.index("\n") + 1])
        f.write(b'{"product": {"sku": "1", "name": "')
        block = b"x" * (1 << 20)
        for _ in range(300):
            f.write(block)
        f.write(b'"}}\n')
    code, peak, err = peak_mib(
        [TILLPOINT, "hub", "import", "--hub-dir", str(tmp_path / "hub"), str(path)]
    )
    assert code == 2, err
    assert err == (
        "tillpoint: import refused, nothing was imported: line 2 is longer than 64 MiB"
        " (one row a line: is the file JSON Lines?)\n"
    )
    assert peak < 3 * 64 + 120, f"{peak:.0f} MiB"


# ------------------------------------------------------------ 1. one bounded readline

EDGE = 100  # the bound given to the helper here


def test_bounded_lines_at_the_edge_of_bytes_and_of_text() -> None:
    """`limits.bounded_lines`: a line of the bound and its newline is read, one more byte
    (character, of a text stream) is refused by its number, with a newline after it or
    none (a last line); the numbering starts at `number`; a first line already read in
    part is finished within the bound; an empty stream gives nothing."""
    from tillpoint.agent import limits

    def read(lines: list[bytes], text: bool, number: int = 1, first: int = 0) -> list[Any]:
        raw = b"".join(lines)
        f: Any = io.StringIO(raw.decode()) if text else io.BytesIO(raw)
        head = f.read(first) if first else None
        return list(limits.bounded_lines(f.readline, LineTooLong, number, head, EDGE))

    ok, long = b"x" * EDGE + b"\n", b"x" * (EDGE + 1)
    for text in (False, True):
        assert read([ok, ok, b"x" * EDGE], text) == [
            (line.decode() if text else line) for line in (ok, ok, b"x" * EDGE)
        ]
        assert read([], text) == [] and read([], text, first=1) == []
        assert len(read([ok, ok], text, first=10)) == 2
        cases = (([ok, long + b"\n", ok], 2), ([ok, ok, long], 3), ([long + b"\n", ok], 1))
        for lines, at in cases:
            for number in (1, 7):
                for first in (0, 10):
                    with pytest.raises(LineTooLong) as refused:
                        read(lines, text, number, first)
                    assert refused.value.args == (number + at - 1,)


class LineTooLong(Exception):
    pass


def test_bounded_lines_read_the_bound_from_limits_when_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without `bound`, `LINE_MAX_BYTES` as it is when the reading starts (the suite's
    tests make it small in this process)."""
    from tillpoint.agent import limits

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", EDGE)
    f = io.BytesIO(b"a\n" + b"x" * (EDGE + 1))
    with pytest.raises(LineTooLong):
        list(limits.bounded_lines(f.readline, LineTooLong))


def test_the_builds_lines_stop_at_the_payloads_end_and_are_bounded_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`cache_build._lines` reads [start, end) of a file: a line that crosses `end` (a
    payload followed by other bytes) is cut there, and the bound is that of the cut line:
    of the bound, read; one byte more, refused as "snapshot line N" from `start`'s line."""
    from tillpoint.agent import cache_build, limits
    from tillpoint.agent.errors import InputError

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", EDGE)
    body = b"a\n" + b"x" * EDGE
    path = tmp_path / "payload"
    path.write_bytes(b"pre\n" + body + b"yyyy trailer\n")
    with path.open("rb") as fh:
        assert list(cache_build._lines(fh, 4, 4 + len(body))) == [b"a\n", b"x" * EDGE]
        assert list(cache_build._lines(fh, 4, 6)) == [b"a\n"]
        assert list(cache_build._lines(fh, 4, 4)) == []
        with pytest.raises(InputError, match=r"^snapshot line 2: longer than 0 MiB "):
            list(cache_build._lines(fh, 4, 4 + len(body) + 1))
