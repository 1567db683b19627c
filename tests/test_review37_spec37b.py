"""Review 37, spec37b: CONTRACT §10 (the command line) and §11 (hold, confirm, cancel) told
to the real `tillpoint` binary and to a real `tillpoint run` over HTTP and gRPC, every
answer worked out from the contract first (the scenarios `s10_*` and `s11_*` of
tests/scenarios/review37/ tell the CLI's side of a receipt's life).

One fault, of §10's data directory: a `ledger.db` or `cache.db` that is another program's
SQLite database (tables of its own, none of tillpoint's schema steps) was taken for a new
till's: every command wrote tillpoint's tables (and WAL mode) into that program's file, and
`snapshot load` replaced that program's `cache.db` with the cache's link, its data gone.
It is now refused before anything is written (exit 2: the operator names another data
directory, as for a data directory that is a file), the file left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CLI, receipt, snapshot

EXE = Path(sys.executable).parent / "tillpoint"
TIMEOUT = 60.0


def tillpoint(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_CLI_LOCAL": "1"}
    env.pop("TILLPOINT_DATA_DIR", None)
    env.pop("TILLPOINT_CONFIG", None)
    return subprocess.run(
        [str(EXE), *map(str, args)],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def another_programs_database(path: Path) -> str:
    """An SQLite file of some other program (a POS's own books, say), its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor INTEGER)")
    conn.execute("INSERT INTO orders (total_minor) VALUES (17980)")
    conn.commit()
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("tillpoint: ")
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [["status", "--json"], ["snapshot", "load", "SNAP"], ["hold", "RECEIPT", "--json"]],
    ids=["status", "snapshot-load", "hold"],
)
def test_a_ledger_that_is_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path: Path, command: list[str]
) -> None:
    """CONTRACT §10: exit 2 is for what an operator must mend before the till can work (a
    data directory that is a file, read-only, ...); a data directory whose ledger.db is
    another program's database is one. Until review 37 tillpoint added its own tables to it
    (and switched it to WAL), and sold on it."""
    data = tmp_path / "data"
    ledger = data / "ledger.db"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot()), encoding="utf-8")
    if command[0] == "hold":  # a till with its cache, whose ledger.db was replaced
        assert tillpoint("--data-dir", data, "snapshot", "load", snap).returncode == 0
        for file in data.glob("ledger.db*"):
            file.unlink()
    digest = another_programs_database(ledger)
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps(receipt("h-1")), encoding="utf-8")
    args = [{"SNAP": str(snap), "RECEIPT": str(rec)}.get(a, a) for a in command]

    done = tillpoint("--data-dir", data, *args)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    line = one_line(done.stderr)
    assert str(ledger) in line and "another program" in line, line
    assert "--data-dir" in line, line  # where the directory was named
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == digest
    assert not Path(f"{ledger}-wal").exists()


def test_a_cache_that_is_another_programs_database_is_neither_written_nor_replaced(
    tmp_path: Path,
) -> None:
    """`snapshot load` switched cache.db to a link to its new generation: another program's
    file of that name was deleted (review 37). Refused, exit 2, the file as it was."""
    data = tmp_path / "data"
    cache = data / "cache.db"
    digest = another_programs_database(cache)
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot()), encoding="utf-8")

    for args in (["snapshot", "load", snap], ["status", "--json"]):
        done = tillpoint("--data-dir", data, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        line = one_line(done.stderr)
        assert str(cache) in line and "another program" in line, line
    assert not cache.is_symlink()
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == digest
    assert not list(data.glob("cache-*.db"))


def test_run_does_not_start_on_another_programs_ledger(tmp_path: Path) -> None:
    """`run` at start: exit 2 (the unit does not restart it for ever), nothing written."""
    data = tmp_path / "data"
    ledger = data / "ledger.db"
    digest = another_programs_database(ledger)
    env = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": "till-1",
        "TILLPOINT_SERVER__LISTEN": "127.0.0.1:0",
        "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0",
        "TILLPOINT_METRICS__ENABLED": "false",
    }
    done = subprocess.run(
        [str(EXE), "--data-dir", str(data), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "another program" in done.stderr
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("kind", ["empty-file", "sqlite-without-tables"])
def test_an_empty_ledger_file_is_still_a_new_tills(tmp_path: Path, cli: CLI, kind: str) -> None:
    """What is refused is another program's data, not an empty file: a `touch ledger.db`
    (or an SQLite file with no table yet) is taken for a new till's, as before."""
    data = tmp_path / "data"  # the `cli` fixture's data directory
    data.mkdir()
    ledger = data / "ledger.db"
    if kind == "empty-file":
        ledger.touch()
    else:
        sqlite3.connect(ledger).execute("PRAGMA user_version = 0").close()
    assert cli("snapshot", "load", snapshot()).code == 0
    done = cli("hold", receipt("h-1"), "--json")
    assert done.code == 0, done.err
    assert done.json()["state"] == "HELD"


def test_a_hub_store_that_is_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """The hub's SQLite store alike (`hub import --store FILE`): it was switched to WAL
    before its schema steps were looked for, and took tillpoint's hub tables."""
    store = tmp_path / "other.db"
    digest = another_programs_database(store)
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot()), encoding="utf-8")
    done = tillpoint("hub", "import", "--hub-dir", tmp_path / "hub", "--store", store, snap)
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = one_line(done.stderr)
    assert line.count(str(store)) == 1 and "another program" in line and "--store" in line, line
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest
