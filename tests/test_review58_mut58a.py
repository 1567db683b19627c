"""Review 58 (mut58a): mutation testing of the till's SQLite files (`agent/db.py`):
`connect`'s pragmas, `begin_write` and its deadline, `Checkpointer`, the cache's
generations, the migrations runner, the refusals of foreign or damaged files, the phone
key and the storage errors' hints. Each test pins a rule a surviving mutant broke and no
test held (docs/DECISIONS.md, "Review 58 (mut58a)", lists the mutants). Real parts: real
SQLite files in tmp_path, a second real connection holding a write lock, the real
checkpoint thread watched through the ledger file's size, real subprocesses where the
rule is a process's (its exit).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.db import (
    HUB_STORE_HINT,
    Checkpointer,
    LiveCache,
    begin_write,
    cache_migrations,
    cache_switch_lock,
    connect,
    migrate,
    open_cache,
    refuse_foreign,
    remove_replaced_plain_wal,
    switch_cache,
    write_transaction,
    writes_until,
)
from tillpoint.agent.errors import ForeignDatabase
from tillpoint.agent.ledger import open_ledger

from .test_review55_mut55c import on_a_small_disk

# ---------------------------------------- connect: every connection's pragmas


def _pragmas(conn: sqlite3.Connection) -> dict[str, object]:
    return {
        name: conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
    }


# What every connection of a till runs with (CONTRACT §5's "one SQLite transaction
# (`synchronous=FULL`)", §9's "SQLite's 5 s busy timeout"): 2 is FULL.
TILL_PRAGMAS = {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 5000, "foreign_keys": 1}


def test_every_connection_of_a_till_is_wal_full_sync_with_the_5_s_busy_timeout(
    tmp_path: Path,
) -> None:
    """The ledger's, the cache's (plain and a generation's), a read-only one, the
    checkpointer's second connection (`checked`) and one that may not create its file:
    each in WAL, `synchronous=FULL`, a 5 s busy timeout (5000 ±1 survived: no test read
    it) and foreign keys on; and a data directory whose parents are missing is made."""
    data_dir = tmp_path / "a" / "b" / "data"
    ledger = open_ledger(data_dir)
    cache = open_cache(data_dir)
    try:
        opened = {
            "ledger": ledger,
            "cache": cache,
            "read-only": connect(data_dir / "ledger.db", readonly=True),
            "checked": connect(data_dir / "ledger.db", checked=True),
            "existing": connect(data_dir / "cache.db", create=False),
        }
        for what, conn in opened.items():
            assert _pragmas(conn) == TILL_PRAGMAS, what
            if conn not in (ledger, cache):
                conn.close()
    finally:
        ledger.close()
        cache.close()


# ---------------------------------------- begin_write: the deadline cuts a long own wait

# A connection's own busy timeout far above anything a loaded machine takes to fail at
# once: a write that waits it instead of the deadline's is told apart by minutes, not ms.
LONG_OWN_MS = 60_000


@pytest.fixture
def held_ledger(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """(holder, waiter): the holder has the file's write lock (`BEGIN IMMEDIATE`); the
    waiter's own busy timeout is `LONG_OWN_MS`."""
    path = tmp_path / "ledger.db"
    holder, waiter = connect(path), connect(path)
    waiter.execute(f"PRAGMA busy_timeout = {LONG_OWN_MS}")
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder, waiter
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        waiter.close()


@pytest.mark.parametrize(
    ("left_s", "wait"),
    [(-1.0, True), (0.3, True), (60.0, False)],
    ids=["passed", "shorter", "no-wait-beside-a-deadline"],
)
def test_a_deadline_shorter_than_the_connections_own_wait_is_the_one_waited(
    held_ledger: tuple[sqlite3.Connection, sqlite3.Connection], left_s: float, wait: bool
) -> None:
    """CONTRACT §9 (`sync now --timeout S`: its ledger writes wait no later than it).
    Review 38's test gave the waiter 400 ms of its own, so a `begin_write` that waited
    its own timeout instead of what was left of the deadline (`wait and until is None`
    as `or`; `until - monotonic()` as `+`), or waited the deadline where told not to wait
    (`wait and until is not None` as `or`), passed within its 2 s margin. Here the
    connection's own is a minute: a deadline passed fails at once, a deadline 0.3 s
    away after it, `wait=False` at once beside a deadline a minute away (30 s of margin
    each), and the connection's own wait is set back."""
    _, waiter = held_ledger
    started = time.monotonic()
    with (
        pytest.raises(sqlite3.OperationalError, match="database is locked"),
        writes_until(time.monotonic() + left_s),
    ):
        begin_write(waiter, wait=wait)
    waited = time.monotonic() - started
    assert (max(0.0, left_s) if wait else 0.0) <= waited + 0.02 and waited < 30, waited
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == LONG_OWN_MS
    assert not waiter.in_transaction


def _in_write_transaction(conn: sqlite3.Connection) -> bool:
    with write_transaction(conn, "ledger"):
        return conn.in_transaction


def _released_after(holder: sqlite3.Connection, seconds: float) -> threading.Timer:
    """The holder's write lock let go `seconds` from now, on a timer thread."""
    timer = threading.Timer(seconds, lambda: holder.execute("ROLLBACK"))
    timer.start()
    return timer


def _in_begun_write(conn: sqlite3.Connection) -> bool:
    begin_write(conn)
    try:
        return conn.in_transaction
    finally:
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("write", [_in_begun_write, _in_write_transaction])
def test_a_write_waits_for_another_writer_unless_told_not_to(
    held_ledger: tuple[sqlite3.Connection, sqlite3.Connection],
    write: Callable[[sqlite3.Connection], bool],
) -> None:
    """A checkout's commit (`write_transaction(ledger, "ledger")`), a push's answer and
    `sync_state` (`begin_write(conn)`) wait for another process's write by default: their
    `wait=True` defaults made False survived (the checkout would answer "the ledger is
    busy or unavailable" at once beside a `sync now`). The holder lets go after 0.5 s;
    the waiter has a minute."""
    holder, waiter = held_ledger
    timer = _released_after(holder, 0.5)
    try:
        assert write(waiter)
    finally:
        timer.join()


# ---------------------------------------- Checkpointer: after `every_commits` commits


def _ledger_writer(path: Path) -> Callable[[], None]:
    """One commit of a 4 KB row to `path` with SQLite's inline checkpoint off (the agent's
    ledger connection): the file itself grows only when a checkpoint copies the WAL in."""
    conn = connect(path)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")

    def commit() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
        conn.execute("COMMIT")

    return commit


def _grows(path: Path, size: int, within_s: float) -> bool:
    """Whether the file at `path` grows past `size` within `within_s` (polled)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.stat().st_size > size:
            return True
        time.sleep(0.02)
    return path.stat().st_size > size


def test_the_checkpointer_checkpoints_at_every_tenth_commit_and_not_before(
    tmp_path: Path,
) -> None:
    """With `every_s` an hour, only the commit count wakes the thread: two rounds of ten
    commits, each checkpointed at its tenth and not at its ninth. test_storage's test
    gives `every_s=0.05`, so a count that never reached `every_commits` (`+=` as `-=`,
    `+= 0`, `>=` as `>`, the count begun or reset at -1) or reached it early (`+= 2`,
    the condition negated, begun or reset at 1) still checkpointed within its wait. No
    checkpoint is a ledger WAL that grows for as long as `run` runs; one early is more
    checkpoints (writes and fsyncs of the ledger file) than asked. The "not before" wait
    is 1 s: the rule holds however slow the machine is."""
    path = tmp_path / "ledger.db"
    commit = _ledger_writer(path)
    checkpoints = Checkpointer(path, every_commits=10, every_s=3600.0)
    try:
        for round_ in (1, 2):
            size = path.stat().st_size
            for _ in range(9):
                commit()
                checkpoints.committed()
            assert not _grows(path, size, 1.0), f"round {round_}: checkpointed before the 10th"
            commit()
            checkpoints.committed()
            assert _grows(path, size, 60.0), f"round {round_}: no checkpoint at the 10th"
    finally:
        checkpoints.close()


def test_a_process_that_never_closes_its_checkpointer_still_exits(tmp_path: Path) -> None:
    """The checkpoint thread is a daemon: a command that fails before it closes its agent
    (`daemon=True` made False survived) must not hang at its exit, its thread waiting
    `every_s` for ever."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tillpoint.agent.db import Checkpointer, connect
        path = Path({str(tmp_path / "ledger.db")!r})
        connect(path).execute("CREATE TABLE t (x)")
        Checkpointer(path, every_s=3600.0).committed()
        print("left")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "left\n"), done.stderr


# ---------------------------------------- refuse_foreign: what the refusal names

DATA_DIR_HINT = (
    "name a data directory of tillpoint's own"
    " (--data-dir, TILLPOINT_DATA_DIR or data_dir in the configuration names it)"
)


def _foreign_file(path: Path, tables: int) -> Path:
    """Another program's SQLite file at `path`: `tables` tables t1, t2, … and no
    tillpoint schema step."""
    conn = sqlite3.connect(path)
    for n in range(1, tables + 1):
        conn.execute(f"CREATE TABLE t{n} (x)")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    ("name", "hub", "what", "where"),
    [
        ("ledger.db", False, "ledger", DATA_DIR_HINT),
        ("cache.db", False, "cache", DATA_DIR_HINT),
        ("cache-7-0123abcd.db", False, "cache", DATA_DIR_HINT),
        ("store.db", False, "database", "check the path"),
        ("ledger.db", True, "hub database", HUB_STORE_HINT),
    ],
    ids=["ledger", "cache", "generation", "other", "hub"],
)
def test_another_programs_file_is_named_as_the_file_it_was_taken_for(
    tmp_path: Path, name: str, hub: bool, what: str, where: str
) -> None:
    """CONTRACT §10: "…/ledger.db is another program's SQLite database (its tables:
    orders), not a tillpoint ledger: it is left as it was; name a data directory of
    tillpoint's own (…)". The kind (ledger, cache, a generation's cache, a database of
    another name, the hub's store) and the way out were held by no test (`name ==
    "ledger.db" or …` negated and each `==` as `!=` survived)."""
    path = _foreign_file(tmp_path / name, 1)
    conn = sqlite3.connect(path)
    with pytest.raises(ForeignDatabase) as refused:
        refuse_foreign(conn, path, hub=hub)
    assert refused.value.message == (
        f"{path} is another program's SQLite database (its tables: t1), not a tillpoint"
        f" {what}: it is left as it was; {where}"
    )
    with pytest.raises(sqlite3.ProgrammingError):  # closed by the refusal
        conn.execute("SELECT 1")


@pytest.mark.parametrize(
    ("tables", "shown"),
    [
        (5, "t1, t2, t3, t4, t5"),
        (6, "t1, t2, t3, t4, t5 and 1 more"),
        (8, "t1, t2, t3, t4, t5 and 3 more"),
    ],
)
def test_a_refusal_names_five_tables_and_counts_the_rest(
    tmp_path: Path, tables: int, shown: str
) -> None:
    """Five names, then "and N more" (the 5s ±1, `> 5` as `>=`, `len - 5` as `+`:
    survived). The names sort as text: t1…t8 in order."""
    path = _foreign_file(tmp_path / "ledger.db", tables)
    with pytest.raises(ForeignDatabase, match=rf"\(its tables: {shown}\), not a tillpoint ledger"):
        connect(path)


# ---------------------------------------- the storage errors' hints: their words and bounds


def test_a_write_refused_for_room_says_which_room(tmp_path: Path) -> None:
    """`no_space_hint` on a file system with room (tmp_path): ENOSPC is a file system full
    "(no room for a file)" (its inodes, root's reserve), EDQUOT the user's quota, EFBIG
    the size a file may have, any other errno nothing; each names the nearest directory
    that exists (a file to be made in one still missing)."""
    import errno

    from tillpoint.agent.db import no_space_hint

    path = tmp_path / "missing" / "export.json"

    def said(code: int) -> str:
        return no_space_hint(path, OSError(code, "refused"))

    assert said(errno.ENOSPC) == f"; the file system of {tmp_path} is full (no room for a file)"
    assert said(errno.EDQUOT) == f"; the disk quota of this user on {tmp_path} is used up"
    assert said(errno.EFBIG).startswith(f"; {path} ")
    assert said(errno.EACCES) == said(errno.EIO) == ""


_LIMITS = textwrap.dedent(
    """
    import os, resource, sys
    from pathlib import Path
    from tillpoint.agent.db import file_size_limit_hint, files_size_limit_hint, too_large_hint

    d = Path(sys.argv[1])
    print(repr(too_large_hint(d / "a.db")))  # no limit set
    soft = 1 << 20
    for name, size in (("under.db", soft - 65560), ("at.db", soft - 65559)):
        with open(d / name, "wb") as f:
            f.truncate(size)  # sparse: sizes, not bytes written
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))
    print(repr(files_size_limit_hint(d / "missing.db", d / "under.db")))
    print(repr(files_size_limit_hint(d / "missing.db", d / "under.db", d / "at.db")))
    print(repr(file_size_limit_hint(d / "at.db")))
    for soft in (1023, 1024, 2048):
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))
        print(repr(too_large_hint(d / "b.db")))
    """
)


def test_the_file_size_limit_is_named_within_a_wal_frame_of_it(tmp_path: Path) -> None:
    """Review 39 (ops39), 40 (rev40c): SQLite says "disk I/O error" for a write past the
    process's file size limit (`ulimit -f`); the hint names the file within a WAL frame
    (64 KiB and its 24-byte header: 65,560 bytes) of the limit, and not one a byte
    further off (`>` as `>=`, `+` as `-`, 65536 and 24 ±1 survived), and says the limit
    in KiB from 1024 bytes up, in bytes below (`>=` as `>`, 1024 ±1 survived); with no
    limit set, a file too large is its file system's bound. In a subprocess: the limit is
    the process's."""
    done = subprocess.run(
        [sys.executable, "-c", _LIMITS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    def limit(path: Path, size: str) -> str:
        return repr(
            f"; {path} reached this process's file size limit ({size}: `ulimit -f`, or"
            " LimitFSIZE= in its systemd unit; the disk has room)"
        )

    at = tmp_path / "at.db"
    assert done.stdout.splitlines() == [
        repr(f"; {tmp_path / 'a.db'} is as large as its file system allows a file to be"),
        repr(""),
        limit(at, "1024 KiB"),
        limit(at, "1024 KiB"),
        limit(tmp_path / "b.db", "1023 bytes"),
        limit(tmp_path / "b.db", "1 KiB"),
        limit(tmp_path / "b.db", "2 KiB"),
    ]


_NEARLY_FULL = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tillpoint.agent.db import full_disk_hint

    d = Path(sys.argv[1])

    def free() -> int:
        fs = os.statvfs(d)
        return fs.f_bavail * fs.f_frsize

    def leave(kib: int) -> None:  # fill the disk until `kib` KiB are left
        with open(d / "fill", "ab") as fill:
            fill.write(b"f" * (free() - kib * 1024))

    for kib in (1536, 1024, 768):
        leave(kib)
        print(free() // 1024)
        print(repr(full_disk_hint(d / "sub" / "ledger.db")))  # its directory not made yet
        print(repr(full_disk_hint(d / "fill")))  # a file: its directory is named
    """
)


def test_a_file_system_is_said_full_below_one_mib_free(tmp_path: Path) -> None:
    """`full_disk_hint` on a real file system with 1.5 MiB or exactly 1 MiB free says
    nothing, with 768 KiB free says "; the file system of DIR is full (768 KiB free)"
    (CONTRACT §12: "less than 1 MiB left"; the bound `1 << 20` as `1 << 21` or `1 << 19`,
    `>=` as `>`, `f_blocks == 0` as `!=`, the directory named as the file's or its
    parent's: survived), for a path whose directory does not exist yet (a new
    till's ledger) and for a file. A tmpfs of 4 MiB in a mount namespace of the test's
    own, as review 55's full-disk test (skipped where none can be made)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run = on_a_small_disk(disk, "4m", _NEARLY_FULL)
    full = repr(f"; the file system of {disk} is full (768 KiB free)")
    assert run.stdout.splitlines() == ["1536", "''", "''", "1024", "''", "''", "768", full, full]


# ---------------------------------------- LiveCache: moved once, said once, a fallback never made


def _plain_cache_switched_under_a_held_lock(data_dir: Path) -> tuple[Path, Path]:
    """A fresh till's plain ``cache.db`` (its -wal emptied, as a full apply empties it)
    switched to a new generation while the data directory's switch lock is held (a
    `reset` at work), so the switch's clean-up leaves the plain file's -wal and -shm.
    Returns them."""
    plain = connect(data_dir / "cache.db")
    plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    plain.close()
    generation = data_dir / "cache-1-0123abcd.db"
    conn = connect(generation)
    migrate(conn, cache_migrations)
    conn.close()
    with cache_switch_lock(data_dir, 0) as taken:
        assert taken
        switch_cache(data_dir, generation)
        remove_replaced_plain_wal(data_dir)  # what the switching apply does after it
    wal, shm = data_dir / "cache.db-wal", data_dir / "cache.db-shm"
    assert wal.exists() and shm.exists()
    return wal, shm


def test_a_reader_that_moves_off_a_replaced_plain_cache_removes_its_wal_and_shm(
    tmp_path: Path,
) -> None:
    """The agent's `LiveCache` on a plain ``cache.db`` another process switched: its next
    read moves to the generation and removes the plain file's -wal and -shm (`replaced.name
    == CACHE` negated survived); until a switch, every read is the same connection
    (`now != identity and …` as `or` survived: a new connection, and its open and
    migration check, on every read of a till's day)."""
    live = LiveCache(tmp_path)
    first = live.connection()
    assert live.connection() is first and live.connection() is first
    wal, shm = _plain_cache_switched_under_a_held_lock(tmp_path)
    moved = live.connection()
    assert moved is not first and live.path.name == "cache-1-0123abcd.db"
    assert not wal.exists() and not shm.exists()
    assert live.connection() is moved
    live.close()


def test_a_reader_closed_last_on_a_replaced_plain_cache_removes_its_wal_and_shm(
    tmp_path: Path,
) -> None:
    """The same reader closed before its next read, the plain file's last connection: its
    `close` removes them (its `path.name == CACHE` negated, or `==` as `!=`, survived:
    they stayed beside the generation until the next full snapshot)."""
    live = LiveCache(tmp_path)
    assert live.connection().execute("SELECT count(*) FROM meta").fetchone() == (0,)
    wal, shm = _plain_cache_switched_under_a_held_lock(tmp_path)
    live.close()
    assert not wal.exists() and not shm.exists()


def _till_with_a_generation(data_dir: Path) -> Path:
    """A till's data directory after its first full snapshot: the generation's path."""
    from tillpoint.agent.db import cache_file
    from tillpoint.agent.service import Agent

    from .conftest import snapshot

    agent = Agent(data_dir, "till-1")
    agent.load_snapshot(snapshot())
    agent.close()
    return cache_file(data_dir)


def test_each_refused_generation_is_said_once_among_several(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two generations a later release wrote (an upgrade in place), switched in turn, each
    refused by readers given the one they read as `fallback`: each is said once in the log
    however many readers refuse it, the first too when the second came between (the memo
    cleared at each refusal, `len >= 16` negated, survived: said again; `in` negated: never
    said)."""
    from .test_cache_generations import switch_in_a_later_generation

    fallback = _till_with_a_generation(tmp_path)
    readers = []
    with caplog.at_level("WARNING", logger="tillpoint"):
        first = switch_in_a_later_generation(tmp_path, "cache-2-0badcafe.db")
        readers += [LiveCache(tmp_path, fallback=fallback) for _ in range(2)]
        switch_cache(tmp_path, fallback)  # the next is copied from the current one
        switch_in_a_later_generation(tmp_path, "cache-3-0badcafe.db")
        readers += [LiveCache(tmp_path, fallback=fallback) for _ in range(2)]
        switch_cache(tmp_path, first)
        readers += [LiveCache(tmp_path, fallback=fallback) for _ in range(2)]
    for reader in readers:
        assert reader.path == fallback
        reader.close()
    warned = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 2, warned


def test_a_fallback_that_is_gone_is_never_made_empty(tmp_path: Path) -> None:
    """A reader whose current generation is refused and whose `fallback` was removed
    meanwhile raises the refusal; it does not make an empty cache under the fallback's
    name to price from (`create=False` made True survived: an empty cache, every card
    unknown)."""
    from tillpoint.agent.errors import LaterRelease

    from .test_cache_generations import switch_in_a_later_generation

    fallback = _till_with_a_generation(tmp_path)
    switch_in_a_later_generation(tmp_path, "cache-2-0badcafe.db")
    gone = fallback.with_name("cache-1-00000000.db")
    with pytest.raises(LaterRelease, match="m099_from_a_later_release"):
        LiveCache(tmp_path, fallback=gone)
    assert not gone.exists()


def test_a_generation_that_cannot_be_opened_says_why_at_once(tmp_path: Path) -> None:
    """Resolving the link again is for a switch, or a generation gone (`_switched`): one
    that is there but cannot be opened (here a directory under its name) fails at once
    with SQLite's words, not after five tries with "it keeps being replaced"
    (`not path.exists()` as `path.exists()` survived)."""
    from tillpoint.agent.errors import StorageError

    tmp_path.joinpath("cache-1-0123abcd.db").mkdir()
    tmp_path.joinpath("cache.db").symlink_to("cache-1-0123abcd.db")
    with pytest.raises(StorageError, match="unable to open database file"):
        open_cache(tmp_path)


# ---------------------------------------- migrations: a later release's file, another program's


def stepped_on_by_a_later_release(path: Path, migration_set: str) -> None:
    """A schema step this release does not know recorded in `path` (a later release ran
    on it, then this one was started again: a rollback)."""
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES (?, 'm099_from_a_later_release', '2027-01-01')",
        (migration_set,),
    )
    conn.commit()
    conn.close()


@pytest.mark.parametrize("file", ["ledger", "cache"])
def test_a_file_a_later_release_wrote_says_the_way_back_of_its_kind(
    tmp_path: Path, file: str
) -> None:
    """A rollback's ledger says to restore the data directory saved before the upgrade
    (it holds the till's sales); a rollback's cache says it may be deleted (a copy of the
    hub's data). Which kind says which was held by no test (`self.file == "cache"` as
    `!=`, and the hub's `where` the other way round, survived: the ledger's owner told
    to delete the cache, the cache's to restore a backup)."""
    from tillpoint.agent.errors import LaterRelease

    opener, name, way_back = {
        "ledger": (
            open_ledger,
            "ledger.db",
            "run that release, or restore the data directory saved before it was installed",
        ),
        "cache": (
            open_cache,
            "cache.db",
            "run that release, or delete cache.db and the cache-*.db files of the data"
            " directory (a copy of the hub's data: the next snapshot rebuilds it)",
        ),
    }[file]
    opener(tmp_path).close()
    stepped_on_by_a_later_release(tmp_path / name, f"tillpoint.{file}")
    with pytest.raises(LaterRelease) as refused:
        opener(tmp_path)
    assert refused.value.message == (
        f"the {file} was written by another tillpoint release (schema steps"
        f" m099_from_a_later_release (tillpoint.{file}) are unknown to this one): {way_back}"
    )


def test_another_programs_file_migrated_by_a_connection_of_its_own_is_named_by_its_path(
    tmp_path: Path,
) -> None:
    """`migrate` on a connection `connect` did not make (the hub's store opens its own):
    another program's file is refused by its path, as a database of no kind of
    tillpoint's ("this file" for the path, the path's column ±1, `hub=` for the cache's
    set: survived), and left as it was."""
    path = _foreign_file(tmp_path / "orders.db", 1)
    before = path.read_bytes()
    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(ForeignDatabase) as refused:
        migrate(conn, cache_migrations)
    assert refused.value.message == (
        f"{path} is another program's SQLite database (its tables: t1), not a tillpoint"
        " database: it is left as it was; check the path"
    )
    assert path.read_bytes() == before


# ---------------------------------------- the phone key: made once, the same after a restart

_PHONE_KEY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tillpoint.agent.db import phone_secret

    print(phone_secret(Path(sys.argv[1])).hex())
    """
)


def test_the_phone_key_is_made_once_in_a_new_directory_and_read_the_same_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Identification by phone hashes the number with the till's key (CONTRACT §4): a key
    that changed across restarts finds no phone. Made by one process in a data directory
    whose parents do not exist yet (`parents=True` made False survived), 32 bytes, 0600
    (its mode ±1 survived), and read the same by the next process; a temporary file a
    killed maker left is removed and said, and nothing is said when there is none
    (the condition negated survived: "removed a temporary file" at every start)."""
    import logging
    import os

    from tillpoint.agent.db import phone_secret

    data_dir = tmp_path / "new" / "till"

    def made_in_a_process() -> str:
        done = subprocess.run(
            [sys.executable, "-c", _PHONE_KEY, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    first = made_in_a_process()
    assert len(bytes.fromhex(first)) == 32
    assert (data_dir / "phone.key").stat().st_mode & 0o777 == 0o600
    assert made_in_a_process() == first
    with caplog.at_level(logging.INFO, logger="tillpoint"):
        assert phone_secret(data_dir).hex() == first
        assert not [r for r in caplog.records if "temporary file" in r.getMessage()]
        left = data_dir / "phone.key.0badcafe.tmp"  # `create_once`'s temporary name
        left.write_bytes(b"a key half written")
        os.utime(left, (time.time() - 3600, time.time() - 3600))
        assert phone_secret(data_dir).hex() == first
    assert not left.exists()
    said = [r.getMessage() for r in caplog.records if "temporary file" in r.getMessage()]
    assert len(said) == 1 and str(data_dir / "phone.key") in said[0], said


# ---------------------------------------- transactions and connections that may not write


def test_a_write_transaction_left_by_any_error_is_rolled_back_and_the_next_one_works(
    tmp_path: Path,
) -> None:
    """An exception that is not SQLite's (a bug, a cancellation) inside a write: all of it
    rolled back, the connection out of the transaction (its `if conn.in_transaction`
    negated survived: the transaction stayed open, its rows pending, and every later
    write of the agent's ledger failed "cannot start a transaction within a
    transaction")."""
    conn = connect(tmp_path / "ledger.db")
    conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="a bug"), write_transaction(conn, "ledger"):
        conn.execute("INSERT INTO t VALUES (1)")
        raise ValueError("a bug")
    assert not conn.in_transaction
    with write_transaction(conn, "ledger"):
        conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]
    conn.close()


def test_a_connection_that_may_not_create_or_write_neither_creates_nor_writes(
    tmp_path: Path,
) -> None:
    """`readonly=True` and `create=False` open by URI with SQLite's `mode=ro` / `mode=rw`:
    a missing file is refused and not made, a read-only one refuses a write (`readonly or
    not create` as `and` survived: each opened the file read-write, made if missing)."""
    from tillpoint.agent.errors import StorageError

    missing = tmp_path / "cache-1-0123abcd.db"
    for options in ({"readonly": True}, {"create": False}):
        with pytest.raises(StorageError) as refused:
            connect(missing, **options)
        # nothing more on a disk with room, no file size limit, this user's directory
        # (`files_size_limit_hint`'s "" as None survived: "…database fileNone")
        assert refused.value.message == f"cannot open {missing}: unable to open database file"
        assert not missing.exists(), options
    open_ledger(tmp_path).close()
    reader = connect(tmp_path / "ledger.db", readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("CREATE TABLE t (x)")
    reader.close()


def test_another_programs_ledger_left_with_its_wal_is_named_a_ledger(tmp_path: Path) -> None:
    """Another program's WAL file with its -wal still there (it stopped before its last
    checkpoint, or still has it open), met as a till's ``ledger.db``: refused over a
    read-only look as a ledger with the data directory's way out (`hub=False` made True
    survived: "not a tillpoint hub database: … name the hub's own store"), its file and
    -wal as they were."""
    path = tmp_path / "ledger.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode = WAL")
    other.execute("PRAGMA wal_autocheckpoint = 0")
    other.execute("CREATE TABLE orders (x)")
    wal = tmp_path / "ledger.db-wal"
    before = (path.read_bytes(), wal.read_bytes())
    assert before[1]
    try:
        with pytest.raises(ForeignDatabase) as refused:
            connect(path)
        assert refused.value.message == (
            f"{path} is another program's SQLite database (its tables: orders), not a"
            f" tillpoint ledger: it is left as it was; {DATA_DIR_HINT}"
        )
        assert (path.read_bytes(), wal.read_bytes()) == before
    finally:
        other.close()


@pytest.mark.parametrize("opener", [open_ledger, open_cache], ids=["ledger", "cache"])
def test_a_file_at_the_current_schema_opens_while_another_process_writes_it(
    tmp_path: Path, opener: Callable[[Path], sqlite3.Connection]
) -> None:
    """`migrate`'s usual case is one SELECT and no lock: a CLI command opens the ledger or
    the cache while `run` holds its write lock (a commit, a snapshot's apply). Steps of
    the set counted as those of other sets (`of == self.name` as `!=` survived) sent
    every open for the write lock: 5 s, then "cannot migrate the database schema …:
    database is locked"."""
    opener(tmp_path).close()
    holder = connect(tmp_path / ("ledger.db" if opener is open_ledger else "cache.db"))
    holder.execute("BEGIN IMMEDIATE")
    try:
        opened = opener(tmp_path)
        assert opened.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] > 0
        opened.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_migration_that_fails_leaves_its_connection_out_of_the_transaction(
    tmp_path: Path,
) -> None:
    """A step that fails rolls back every step of the run and the record, and leaves the
    connection usable: no transaction open, so no write lock held for other processes
    until the caller closes it (`migrate`'s `if conn.in_transaction` negated survived:
    its callers close the connection, which hid it)."""
    from tillpoint.agent.db import MigrationSet

    steps = MigrationSet("review58.failing", "review58 test file")

    @steps()
    def m001_table(db: Any) -> None:
        db.execute("CREATE TABLE t (x)")

    @steps()
    def m002_fails(db: Any) -> None:
        raise ValueError("a step that fails")

    conn = connect(tmp_path / "steps.db")
    with pytest.raises(ValueError, match="a step that fails"):
        migrate(conn, steps)
    assert not conn.in_transaction
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == []
    conn.close()
