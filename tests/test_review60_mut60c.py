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

import os
import sqlite3
from pathlib import Path

import pytest
from tillpoint.agent.db import (
    cache_migrations,
    connect,
    migrate,
    storage_error,
    write_transaction,
)
from tillpoint.agent.errors import StorageError

# ---------------------------------------- the storage errors' words

NOBODY = 65534  # a user this process is not (the tests run as root, or as their own user)


def _owned_by_another_user(path: Path) -> None:
    """`path` given to user NOBODY (only root may: skipped elsewhere)."""
    try:
        os.chown(path, NOBODY, NOBODY)
    except PermissionError:
        pytest.skip("only root can give a file to another user")
    if os.geteuid() == NOBODY:
        pytest.skip("this runs as the user the file was given to")


def test_a_refused_write_names_the_owner_and_a_failed_write_names_only_what(
    tmp_path: Path,
) -> None:
    """CONTRACT §10/§12 (a storage fault says what explains it). A migration refused
    "readonly" (a file of another user's, a read-only mount: here `query_only`, SQLite's
    same SQLITE_READONLY) names the file after its words and whose the file is; a
    checkout's write that fails for a constraint on that same file says the write's
    words alone: no owner, no file (the owner's hint given to a non-"readonly" error, or
    the full disk's to a "readonly" one — `"readonly" in str(exc)` negated — survived, as
    did `named` negated: the migration's file unsaid, every write's file said)."""
    path = tmp_path / "cache.db"
    conn = connect(path)
    _owned_by_another_user(path)
    try:
        conn.execute("PRAGMA query_only = 1")
        with pytest.raises(StorageError) as refused:
            migrate(conn, cache_migrations)
        assert refused.value.message.startswith(
            f"cannot migrate the database schema of {path}: attempt to write a readonly database ("
        ), refused.value.message
        assert refused.value.message.endswith("; this runs as root)" if os.geteuid() == 0 else ")")
        assert f"({path} belongs to user " in refused.value.message
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
