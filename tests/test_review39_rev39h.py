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
