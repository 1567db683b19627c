"""Review 60 (mut60c): mutation testing of what review 58 (mut58a) left unrun of the till's
SQLite files (`agent/db.py`): the storage errors' words (`_storage_error`,
`storage_error`, `write_refused`), the refusals of another program's or a damaged file,
the cache's generations and their clean-ups, the phone key, `connect`'s last flags and
`Checkpointer`'s thread. Each test pins a rule a surviving mutant broke and no test held
(docs/DECISIONS.md, "Review 60 (mut60c)", lists the mutants). Real parts: real SQLite
files in tmp_path, a file really owned by another user (the tests run as root here: they
are skipped where `chown` is refused), real processes where the rule is a process's.
The helpers of review 58's file are imported from it, not copied.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tillpoint.agent.db import (
    LiveCache,
    cache_migrations,
    connect,
    full_disk_hint,
    migrate,
    remove_replaced_plain_wal,
    storage_error,
    write_refused,
    write_transaction,
)
from tillpoint.agent.errors import InputError, StorageError, TillpointError

from .test_review58_mut58a import _till_with_a_generation

EXE = Path(sys.executable).parent / "tillpoint"

# ---------------------------------------- the storage errors' words

NOBODY = 65534  # "nobody" on most systems
NAMELESS = 54321  # a user id with no name in the password database (checked)


def _user_name(uid: int) -> str:
    """A user's name as `owner_hint` says it: its number when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _given_to(path: Path, uid: int) -> None:
    """`path` given to user `uid` (only root may: skipped elsewhere)."""
    if uid != os.geteuid():
        try:
            os.chown(path, uid, uid)
        except PermissionError:
            pytest.skip("only root can give a file to another user")


@pytest.mark.parametrize("owner", ["this-process", "nobody", "nameless"])
def test_a_refused_write_names_the_owner_and_a_failed_write_names_only_what(
    tmp_path: Path, owner: str
) -> None:
    """CONTRACT §10/§12 (a storage fault says what explains it). A migration refused
    "readonly" (a file of another user's, a read-only mount: here `query_only`, SQLite's
    same SQLITE_READONLY) names the file after its words and, when it is another user's,
    whose it is, by name or by number when the user has no name; a checkout's write that
    fails for a constraint on that same file says the write's words alone: no owner, no
    file. Survived on the sets: the owner's hint given to a non-"readonly" error, or the
    full disk's to a "readonly" one (`"readonly" in str(exc)` negated or `not in`);
    `named` negated or its default True (the migration's file unsaid, every write's file
    said); `owner_hint`'s "" for this process's own file and `name`'s number made None
    ("…databaseNone", "belongs to user None")."""
    uid = {"this-process": os.geteuid(), "nobody": NOBODY, "nameless": NAMELESS}[owner]
    if owner == "nameless":
        import pwd

        with contextlib.suppress(KeyError):
            pwd.getpwuid(NAMELESS)
            pytest.skip(f"user id {NAMELESS} has a name here")
    path = tmp_path / "cache.db"
    conn = connect(path)
    _given_to(path, uid)
    try:
        conn.execute("PRAGMA query_only = 1")
        with pytest.raises(StorageError) as refused:
            migrate(conn, cache_migrations)
        said = f"cannot migrate the database schema of {path}: attempt to write a readonly database"
        if uid != os.geteuid():
            me = _user_name(os.geteuid())
            said += f" ({path} belongs to user {_user_name(uid)}; this runs as {me})"
        assert refused.value.message == said
        conn.execute("PRAGMA query_only = 0")
        migrate(conn, cache_migrations)
        conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(StorageError) as failed, write_transaction(conn, "ledger"):
            conn.execute("INSERT INTO t VALUES (1)")
        assert failed.value.message == (
            "the ledger could not be written, nothing was stored: UNIQUE constraint failed: t.x"
        )
    finally:
        conn.close()


def test_a_raw_write_s_error_is_told_as_a_storage_error_with_its_words(tmp_path: Path) -> None:
    """`sync now`'s raw writes of its state records raise `storage_error(...)` (exit 1, one
    line): its `return` made None survived (`raise None`: "internal error: TypeError")."""
    path = tmp_path / "ledger.db"
    conn = connect(path)
    try:
        conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError) as raw:
            conn.execute("INSERT INTO t VALUES (1)")
        told = storage_error(conn, "the ledger could not be written", raw.value)
        assert isinstance(told, StorageError)
        assert told.message == ("the ledger could not be written: UNIQUE constraint failed: t.x")
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("code", "kind", "hint"),
    [
        (errno.ENOSPC, StorageError, "; the file system of {dir} is full (no room for a file)"),
        (errno.EDQUOT, StorageError, "; the disk quota of this user on {dir} is used up"),
        (errno.EISDIR, InputError, ""),
        (errno.EACCES, InputError, ""),
    ],
    ids=["no-room", "quota", "a-directory", "its-mode"],
)
def test_a_file_the_user_named_refused_is_the_machine_s_fault_or_the_input_s(
    tmp_path: Path, code: int, kind: type[TillpointError], hint: str
) -> None:
    """CONTRACT §10's storage rule: `--out`, `--png`, `--export` refused for room (no
    space, a quota) is exit 1 with the room said; refused for the path (a directory, a
    mode) is exit 2, the system's words alone. `write_refused`'s `in ROOM_ERRNOS` (negated
    or `not in`) and either `return` made None survived on the sets (a full disk exit 2
    as a wrong path; `raise None`). The disk here has room, so the no-room hint is the
    one for "no room for a file" (its inodes, root's blocks): a nearly full /tmp skips."""
    if code == errno.ENOSPC and full_disk_hint(tmp_path):
        pytest.skip("this machine's temporary directory is really nearly full")
    out = tmp_path / "export.json"
    refused = write_refused(
        out, OSError(code, os.strerror(code)), f"cannot write {out}", " (nothing written)"
    )
    assert type(refused) is kind
    assert refused.message == (
        f"cannot write {out}: {os.strerror(code)}{hint.format(dir=tmp_path)} (nothing written)"
    )


# ---------------------------------------- LiveCache: a refused generation left for a while


def test_a_refused_generation_is_not_opened_again_before_its_retry_time(tmp_path: Path) -> None:
    """`LiveCache` (the agent's cache): a generation it cannot read (a later release's,
    switched in during an upgrade in place) is tried again only after `RETRY_S`, not on
    each read of a till's day. Here the refused file is mended in place (its later
    step's record removed: same file, same identity) just after the refusal: the reader
    still prices from its fallback on the next reads (its move after `RETRY_S` is
    review 24's test). `monotonic() + RETRY_S` as `-` survived: the refused generation
    opened and migrated again on every read (the warning's memo hid it)."""
    from .test_cache_generations import forget_the_later_migration, switch_in_a_later_generation

    fallback = _till_with_a_generation(tmp_path)
    later = switch_in_a_later_generation(tmp_path, "cache-2-0badcafe.db")
    live = LiveCache(tmp_path, fallback=fallback)
    try:
        assert live.path == fallback
        forget_the_later_migration(later)
        for _ in range(3):
            live.connection()
            assert live.path == fallback
    finally:
        live.close()


# ---------------------------------------- a data directory that may not be written


def test_a_writable_ledger_in_a_directory_that_may_not_be_written_is_said_read_only(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (a read-only data directory: exit 2 naming it). A till's ledger and
    cache that this process may write, in a directory it may not (SQLite cannot make
    their -wal and -shm: "unable to open database file"): `tillpoint status` says the
    directory is read-only, exit 2, one line. `read_only_part`'s `candidate == path`
    negated survived (the writable file ended the look: exit 1, "cannot open …", the
    directory unsaid); review 25's and 19's tests hold a read-only directory with no
    file and a read-only file. Run without root's powers over file modes (setpriv)."""
    from .test_review25_ops25 import _without_root_powers

    data = tmp_path / "data"
    _till_with_a_generation(data)
    for path in data.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666)
    data.chmod(0o555)
    try:
        run = subprocess.run(
            _without_root_powers([str(EXE), "--data-dir", str(data), "status", "--json"]),
            env={**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_CLI_LOCAL": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        data.chmod(0o755)
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"{data} is read-only for this process" in run.stderr, run.stderr


# ---------------------------------------- connect: a connection any thread may use


@pytest.mark.parametrize(
    "options",
    [{}, {"create": False}, {"readonly": True}],
    ids=["ledger", "existing", "read-only"],
)
def test_a_connection_made_on_one_thread_reads_on_another(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    """The agent opens its ledger and its cache once and serves every gRPC and HTTP call
    from a pool of threads (under its lock), and `LiveCache` opens a new generation on
    whichever thread reads first: every connection `connect` makes is usable from any
    thread (`check_same_thread=False` made True, either branch, survived on the sets:
    "SQLite objects created in a thread can only be used in that same thread" at the
    first call served on another thread)."""
    path = tmp_path / "ledger.db"
    connect(path).close()
    conn = connect(path, **options)
    read: list[object] = []

    def on_another_thread() -> None:
        try:
            read.append(conn.execute("PRAGMA journal_mode").fetchone()[0])
        except sqlite3.Error as exc:
            read.append(exc)

    try:
        thread = threading.Thread(target=on_another_thread)
        thread.start()
        thread.join(timeout=60)
        assert read == ["wal"], read
    finally:
        conn.close()


# ---------------------------------------- remove_cache: whatever of the cache is there


@pytest.mark.parametrize("by_hand", [False, True], ids=["whole", "cache.db-deleted-by-hand"])
def test_a_reset_removes_every_cache_file_whatever_is_left_of_them(
    tmp_path: Path, by_hand: bool
) -> None:
    """`reset` removes the cache with `remove_cache`: ``cache.db`` and every generation
    and leftover. A data directory whose ``cache.db`` was deleted by hand (what a damaged
    cache's message tells, done while the agent ran) is no error: the rest goes too
    (`cache.db`'s `missing_ok=True` made False survived: FileNotFoundError, "internal
    error", and the generations left)."""
    from tillpoint.agent.db import remove_cache

    generation = _till_with_a_generation(tmp_path)
    (tmp_path / "cache.db-wal").write_bytes(b"")  # an older install's plain file's
    if by_hand:
        (tmp_path / "cache.db").unlink()
    remove_cache(tmp_path)
    assert not generation.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cache")) == []


# ---------------------------------------- a schema step's script, written compactly


@pytest.mark.parametrize(
    "script",
    [
        "CREATE TABLE a (x TEXT);CREATE TABLE b (y TEXT);INSERT INTO a VALUES ('p;q');"
        "INSERT INTO b VALUES ('r')",
        "CREATE TABLE a (x INTEGER);INSERT INTO a VALUES (1);INSERT INTO a VALUES (2);",
    ],
    ids=["no-final-semicolon", "semicolon-last"],
)
def test_a_compact_script_s_statements_are_split_as_sqlite_utils_splits_them(
    tmp_path: Path, script: str
) -> None:
    """Review 39's comparison of `_PlainDatabase.executescript` (a schema step's script
    inside the migration's transaction) with sqlite-utils' own, on scripts whose
    statements follow each other with no line break: every script of today's steps has
    one after each `;`, which hid the split's arithmetic (`char == ";"` as `!=`, the next
    statement's `start` one character further): a later step written so would fail
    ("You can only execute one statement at a time", a syntax error) or lose a
    character."""
    from .test_review39_rev39h import (
        test_a_script_s_statements_are_split_as_sqlite_utils_splits_them,
    )

    test_a_script_s_statements_are_split_as_sqlite_utils_splits_them(tmp_path, script)


def test_a_replaced_plain_cache_s_shm_without_its_wal_is_removed(tmp_path: Path) -> None:
    """A replaced plain ``cache.db`` whose -wal is already gone (removed by an earlier
    clean-up that was cut between its two unlinks, or by hand) and whose -shm is left:
    the next clean-up removes the -shm (the -wal's `missing_ok=True` made False
    survived: its FileNotFoundError, swallowed, ended the clean-up before the -shm)."""
    from .test_review58_mut58a import _plain_cache_switched_under_a_held_lock

    live = LiveCache(tmp_path)  # a reader on the plain file, as in review 58's tests
    try:
        wal, shm = _plain_cache_switched_under_a_held_lock(tmp_path)
        wal.unlink()
        remove_replaced_plain_wal(tmp_path)
        assert not shm.exists()
    finally:
        live.close()
