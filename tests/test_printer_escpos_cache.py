"""python-escpos pickles its printer database into tillpoint's cache directory in place,
not temp-then-rename: a process importing it while another wrote it read a half-written
file (EOFError; seen when the two test workers first imported it on a fresh clone, and a
CLI command started beside a starting `run` meets the same). `_escpos.load` now holds an
flock on the directory for the import, and writes a pickle cut short again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

IMPORT = "from tillpoint.printer import _escpos; _escpos.load(); print('ok')"


def first_imports(cache: Path, n: int) -> list[subprocess.CompletedProcess[str]]:
    env = dict(os.environ, TILLPOINT_CACHE_DIR=str(cache))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_processes_importing_escpos_at_once_on_a_fresh_cache_all_succeed(tmp_path: Path) -> None:
    for round_ in range(3):
        runs = first_imports(tmp_path / f"cache{round_}", 6)
        assert [(r.returncode, r.stdout) for r in runs] == [(0, "ok\n")] * 6, [
            r.stderr[-300:] for r in runs
        ]
        assert list((tmp_path / f"cache{round_}" / "escpos").glob("*.capabilities.pickle"))


def test_a_pickle_cut_short_is_written_again(tmp_path: Path) -> None:
    assert [r.returncode for r in first_imports(tmp_path, 1)] == [0]
    (pickle,) = (tmp_path / "escpos").glob("*.capabilities.pickle")
    whole = pickle.stat().st_size
    pickle.write_bytes(pickle.read_bytes()[: whole // 3])
    os.utime(pickle, (2_000_000_000, 2_000_000_000))  # newer than the database: it is read
    (run,) = first_imports(tmp_path, 1)
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr[-300:]
    assert pickle.stat().st_size == whole
