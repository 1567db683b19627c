"""`tillpoint` run as root on an installed till never leaves root-owned files behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import snapshot

NOBODY = 65534
# The test runs the CLI under Debian's python3.11 (its standard library is readable by
# every user, as on a till) with this venv's packages: the venv's own interpreter may
# live under a directory only root can read (pyenv in /root), which the dropped
# process could not import from.
SYSTEM_PYTHON = Path("/usr/bin/python3.11")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11),
        reason="needs /usr/bin/python3.11 and a 3.11 venv",
    ),
]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="tillpoint-owner-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tillpoint(*args: str | Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]
    code = (
        f"import site, sys; site.addsitedir({site!r})\n"
        "from tillpoint.agent.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = "till-1"
    return subprocess.run(
        [*prefix, SYSTEM_PYTHON, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd="/",
    )


def owners(path: Path) -> set[int]:
    return {p.stat().st_uid for p in [path, *path.rglob("*")]}


def test_root_on_a_directory_of_another_user_runs_as_that_user(shared_dir: Path) -> None:
    data = shared_dir / "data"
    data.mkdir(mode=0o750)
    os.chown(data, NOBODY, NOBODY)
    run = tillpoint("--data-dir", data, "status", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["deviceId"] == "till-1"
    assert {"cache.db", "ledger.db"} <= {p.name for p in data.iterdir()}
    assert owners(data) == {NOBODY}  # nothing of root's inside
    snap = shared_dir / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    snap.chmod(0o644)
    assert tillpoint("--data-dir", data, "snapshot", "load", snap).returncode == 0
    assert owners(data) == {NOBODY}


def test_root_keeps_its_own_and_new_directories(shared_dir: Path) -> None:
    data = shared_dir / "new"
    run = tillpoint("--data-dir", data, "status")
    assert run.returncode == 0, run.stderr
    assert owners(data) == {0}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_root_that_cannot_switch_refuses_with_a_hint(shared_dir: Path) -> None:
    data = shared_dir / "data"
    data.mkdir(mode=0o750)
    os.chown(data, NOBODY, NOBODY)
    no_setuid = ("setpriv", "--bounding-set=-setuid,-setgid", "--")
    run = tillpoint("--data-dir", data, "status", prefix=no_setuid)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "sudo -u nobody tillpoint" in run.stderr
    assert list(data.iterdir()) == []  # nothing was created
