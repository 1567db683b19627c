"""Review 37 (rev37f): this session's storage and one-shot exit changes read again,
adversarially (CONTRACT §10, §11). Each test marked "failed before the fix" did; the
others pin what was checked and found right. Real parts: `tillpoint` one-shot commands
and `tillpoint run` as processes, real SQLite files, loopback HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port, receipt, snapshot

EXE = str(Path(sys.executable).parent / "tillpoint")


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    return dict(env, TILLPOINT_DATA_DIR=str(data), TILLPOINT_DEVICE_ID="till-1")


def _loaded_till(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data = tmp_path / "data"
    env = _env(data)
    (tmp_path / "snap.json").write_text(json.dumps(snapshot()), encoding="utf-8")
    done = subprocess.run(
        [EXE, "snapshot", "load", str(tmp_path / "snap.json")],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return data, env


def _stopped_after_answer(
    argv: list[str], env: dict[str, str], every_s: float = 0.002, signum: int = signal.SIGTERM
) -> tuple[int, bytes, bytes, bytes]:
    """Run `argv`, read its answer (one `--json` line), then SIGTERM it (or `signum`) every
    `every_s` until it ends (a POS's supervisor ending a process it has its answer from).
    Answers the exit code, the answer line, the rest of stdout and stderr."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the process ended before its answer"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(every_s)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, line, out, err


# ---------------------------------------- 1. a one-shot commit without a hub, and one forwarded


@pytest.mark.parametrize("command", ["checkout", "hold"])
def test_a_standalone_one_shot_stopped_after_its_answer_exits_as_its_answer_said(
    tmp_path: Path, command: str
) -> None:
    """CONTRACT §10 (exit 0 for a call answered), §11. Review 37 (rev37a) made a stop
    from a one-shot command's answer to its exit change nothing, but only on a till with
    a hub (where the releases owed are sent). A till without one (standalone, or its hub
    not enrolled) spends 150-250 ms after a committed sale's answer closing its ledger
    and exiting, and a SIGTERM then killed it (-15, a shell's 143): a POS that reads the
    exit code first took the committed sale for a failed one. Failed before the fix."""
    _, env = _loaded_till(tmp_path)
    for attempt in range(3):  # each stop lands somewhere else in the close and the exit
        rid = f"sale-{attempt}"
        (tmp_path / "r.json").write_text(json.dumps(receipt(rid)), encoding="utf-8")
        code, line, out, err = _stopped_after_answer(
            [EXE, command, str(tmp_path / "r.json"), "--json"], env
        )
        assert json.loads(line)["receiptId"] == rid
        assert code == 0, (code, err)
        assert out == b"" and err == b""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A loaded till served by a real `tillpoint run` (HTTP on a free port): the CLI's
    calls are forwarded to it."""
    data, env = _loaded_till(tmp_path)
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [EXE, "--config", str(conf), "run"],
        env=dict(env, TILLPOINT_HTTP__LISTEN="127.0.0.1:0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (data / "serving.json").exists():
            assert proc.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)
        yield data, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_forwarded_one_shot_stopped_after_its_answer_exits_as_its_answer_said(
    tmp_path: Path, running: tuple[Path, dict[str, str]]
) -> None:
    """CONTRACT §10, §11. A `tillpoint checkout` forwarded to the `tillpoint run` serving
    its data directory prints the agent's answer (the sale is committed there), then
    exits (7-40 ms); a SIGTERM then killed it (-15) after the committed sale's answer.
    It still ends at once (nothing is owed: `run` sends the releases itself). Failed
    before the fix."""
    _, env = running
    for attempt in range(5):
        rid = f"fwd-{attempt}"
        (tmp_path / "r.json").write_text(json.dumps(receipt(rid)), encoding="utf-8")
        started = time.monotonic()
        code, line, out, err = _stopped_after_answer(
            [EXE, "checkout", str(tmp_path / "r.json"), "--json"], env, every_s=0.001
        )
        assert json.loads(line)["receiptId"] == rid
        assert code == 0, (code, err)
        assert out == b"" and err == b""
        assert time.monotonic() - started < 10  # no owed send, no hub link: it ends at once


# ---------------------------------------- 2. another program's database kept by sqlite-utils


def _migrated_by_another_program(path: Path) -> str:
    """An SQLite file of another program that records its schema steps as sqlite-utils
    does (``_sqlite_migrations``, its own migration set), its SHA-256."""
    import hashlib
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE _sqlite_migrations (
            id INTEGER PRIMARY KEY, migration_set TEXT, name TEXT, applied_at TEXT
        );
        INSERT INTO _sqlite_migrations (migration_set, name, applied_at)
            VALUES ('books', 'm001_orders', '2026-11-01 10:00:00+00:00');
        CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor INTEGER);
        INSERT INTO orders (total_minor) VALUES (17980);
        """
    )
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("file", ["ledger.db", "cache.db"])
def test_another_programs_database_with_sqlite_utils_migrations_is_refused_as_one(
    tmp_path: Path, file: str
) -> None:
    """CONTRACT §10 (exit 2 for what an operator must mend; the data left as it was).
    Review 37 (spec37b) refuses another program's SQLite file as a ledger or a cache: one
    with tables and no ``_sqlite_migrations``. A program that keeps its schema with
    sqlite-utils' migrations (as tillpoint does) has that table, under its own migration
    set: tillpoint switched its file to WAL mode (a write) and then said it "was written
    by another tillpoint release" (run that release, or restore the data directory).
    Every file tillpoint has made records only `tillpoint.*` sets. Failed before the fix."""
    import hashlib

    data = tmp_path / "data"
    digest = _migrated_by_another_program(data / file)
    done = subprocess.run(
        [EXE, "status", "--json"],
        env=dict(_env(data), TILLPOINT_CLI_LOCAL="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "another program's SQLite database" in lines[0], lines
    assert "tillpoint release" not in lines[0]
    assert hashlib.sha256((data / file).read_bytes()).hexdigest() == digest  # not WAL
    assert not (data / f"{file}-wal").exists()
