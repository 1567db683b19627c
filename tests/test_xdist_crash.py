"""A worker that dies mid-run fails its test and the run still ends (tests/xdist_crash.py).

Session 40's CI never ended after a worker's segmentation fault (pytest-xdist 3.8.0 under
`--dist loadfile` waits for ever once a worker is replaced). A real pytest, on the
suite's own options and conftest mend, runs files where tests kill their worker: it must
end, report each crashed test failed once, and run every other test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from xdist.scheduler.loadscope import LoadScopeScheduling

from tests.xdist_crash import mend

REPO = Path(__file__).resolve().parents[1]


def test_the_suite_s_conftest_mends_the_scheduler() -> None:
    mend()  # idempotent: the conftest did it already
    assert getattr(LoadScopeScheduling, "_tillpoint_mended", False)


def test_a_run_whose_workers_crash_ends_and_names_the_crashed_tests(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text("from tests.xdist_crash import mend\n\nmend()\n")
    (suite / "test_a.py").write_text("def test_a1(): pass\n\ndef test_a2(): pass\n")
    crash = "import os\n\ndef test_{0}1(): pass\n\ndef test_{0}_crash(): os._exit(1)\n\n"
    (suite / "test_b.py").write_text(crash.format("b") + "def test_b3(): pass\n")
    (suite / "test_z.py").write_text(crash.format("z"))  # a crash in the last file
    # two crashes in one file, after a test: both workers may be down at once
    (suite / "test_y.py").write_text(crash.format("y") + "def test_y_again(): os._exit(1)\n")
    for name in "cdefgh":  # one-test files: a replacement given one waits for a second
        (suite / f"test_{name}.py").write_text(f"def test_{name}1(): pass\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    xdist = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]  # the Makefile's
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *xdist,
            "-o",
            "addopts=",
            str(suite),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,  # xdist's own scheduler waited here for ever
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "4 failed, 12 passed" in out, out
    assert "crashed while running 'suite/test_b.py::test_b_crash'" in out, out
    assert "crashed while running 'suite/test_z.py::test_z_crash'" in out, out
    assert "crashed while running 'suite/test_y.py::test_y_again'" in out, out
    assert "INTERNALERROR" not in out + done.stderr
