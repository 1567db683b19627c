"""Review 47, hub47: what a long-running `tillpoint hub serve` keeps in memory.

leak46's day (bench/leakday.py) saw the hub's RSS grow 85 -> 134 MiB over 36 minutes while
its Python blocks stayed flat: glibc's free heap grew 2 -> 31 MB (one malloc arena for each
of the hub's threads, up to glibc's 8 a core, each keeping its own free pieces) and
SQLite's page caches filled as hub.db grew. `tillpoint run` limited its arenas (issues
11 and 15: `agent.app.limit_malloc_arenas`); `hub serve` did not. Measured in review 47
(docs/PERFORMANCE.md, "The hub's memory over a day"): with 16 arenas the hub's free heap
grew 3.8 -> 39.4 MB in 13 minutes; with two it stayed 6.7-11.5 MB.

Checked here, through the real `hub serve` command line in a process of its own (its
CLI's `main`, as the console script runs it, then glibc's `malloc_stats`):

- the hub serving calls from many tills at once keeps `MALLOC_ARENAS` arenas (before
  the fix: one per thread that served, 8 or more);
- an operator's `MALLOC_ARENA_MAX` is left to glibc (the hub does not override it);
- the hub's SQLite connections are one a thread that served and each keeps a bounded
  page cache (SQLite's default 2,000 KiB, `PRAGMA cache_size` -2000): what the hub's
  SQLite memory can reach is connections x that bound (docs/OPERATIONS.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tillpoint.agent.app import MALLOC_ARENAS
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.loopback import LoopbackHub

from bench.hubready import hub_health, wait_hub_serving
from tests.conftest import free_port

TIMEOUT = 120  # a loaded machine's generous deadline: the hub answers in well under

# `tillpoint hub serve` as the console script runs it, then glibc's malloc_stats: one
# "Arena N:" paragraph for each of the process's arenas, on stderr, after the hub stopped
_SERVE_THEN_STATS = """
import ctypes, sys
from tillpoint.agent.cli import main
sys.argv = ["tillpoint", *sys.argv[1:]]
code = main()
sys.stdout.flush()
sys.stderr.flush()
ctypes.CDLL(None).malloc_stats()
sys.exit(code)
"""

CALLERS = 12  # tills asking at once: the hub's pool starts a worker for each


def _serve_busy_and_count_arenas(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    """(the hub's malloc arenas after serving CALLERS concurrent callers, its stderr)."""
    root = tmp_path / "hub"
    setup = LoopbackHub(root, start=False)
    port = free_port()
    setup.port = port
    enrollments = [setup.enroll(f"till-{i}", tmp_path / f"till-{i}") for i in range(CALLERS)]
    setup.server.store.close()
    address = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-c", _SERVE_THEN_STATS, "hub", "serve", "--hub-dir", str(root)]
    err = tmp_path / "hub.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--listen", address], stdout=subprocess.DEVNULL, stderr=out, env=env
        )
    try:
        assert wait_hub_serving(address, enrollments[0], TIMEOUT, proc), err.read_text()
        links = [HubLink(address, e) for e in enrollments]
        together = threading.Barrier(CALLERS)
        answers: list[str] = []

        def ask(link: HubLink) -> None:
            together.wait(TIMEOUT)
            for _ in range(20):  # health reads the store: each worker opens its connection
                answers.append(hub_health(link, TIMEOUT))

        callers = [threading.Thread(target=ask, args=(link,)) for link in links]
        for t in callers:
            t.start()
        for t in callers:
            t.join(TIMEOUT)
        for link in links:
            link.close()
        assert answers == ["SERVING"] * (CALLERS * 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    text = err.read_text(encoding="utf-8", errors="replace")
    return sum(1 for line in text.splitlines() if line.startswith("Arena ")), text


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TILLPOINT_") and k != "MALLOC_ARENA_MAX"
    }
    return {**env, **extra}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_busy_hub_serve_keeps_the_tills_malloc_arenas(tmp_path: Path) -> None:
    """leak46: the hub's free heap grew 2 -> 31 MB over a day, spread over an arena for
    each of its threads (glibc's default: up to 8 a core). `hub serve` limits them as
    `run` does, before its threads start: MALLOC_ARENAS (2) however many tills ask at
    once."""
    arenas, text = _serve_busy_and_count_arenas(tmp_path, _env())
    assert arenas == MALLOC_ARENAS, text[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_an_operators_malloc_arena_max_wins_at_the_hub(tmp_path: Path) -> None:
    """MALLOC_ARENA_MAX in the hub's environment is the operator's: glibc's, not ours."""
    arenas, text = _serve_busy_and_count_arenas(tmp_path, _env(MALLOC_ARENA_MAX="4"))
    assert arenas == 4, text[-3000:]


def test_the_hubs_sqlite_connections_keep_sqlites_bounded_page_cache(tmp_path: Path) -> None:
    """Each thread of the hub that reads or writes keeps one connection (closed when the
    thread ends or the store closes); its page cache is SQLite's default bound, 2,000 KiB
    (`cache_size` -2000), not more: the hub's SQLite memory levels off at connections x
    2 MB (leak46's 10 connections: the 17 MB seen) however large hub.db grows."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        seen: list[tuple[int, int]] = []

        def read() -> None:
            with store.read_tx():
                pass
            conn = store._conn()
            seen.append((id(conn), conn.execute("PRAGMA cache_size").fetchone()[0]))

        threads = [threading.Thread(target=read) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        read()
        read()  # the same thread again: its one connection
        assert len({c for c, _ in seen}) == 4
        assert seen[-1][0] == seen[-2][0]
        assert {size for _, size in seen} == {-2000}
    finally:
        store.close()
