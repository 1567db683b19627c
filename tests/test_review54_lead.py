"""Review 54 (lead): what the snapshot build's orphan watch may stop (docs/DECISIONS.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tillpoint.agent import cache_build

from .test_cache_build import NOW, leftovers, make_agent
from .test_review53_mut53b import MIN_CHUNK, snapshot_lines, write

# Starts the command it is given and a bystander in its own process group, prints both
# pids, and exits when its stdin closes: a script that runs a build by hand.
STARTER = """
import subprocess, sys
build = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(build.pid, bystander.pid, flush=True)
sys.stdin.readline()
"""


def _processes(role: bytes, data: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\0{role.decode()}\0".encode() in cmdline and str(data).encode() in cmdline:
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_orphaned_build_started_in_its_starters_group_stops_alone(tmp_path: Path) -> None:
    """A coordinator a script started without `--parent` and without a session of its own
    (as PERFORMANCE.md's benchmarks run it by hand) shares the script's process group. Once
    the script is gone the build stops, its stalled worker too, and the group's other
    process lives: the watch used to kill the whole group (review 53, mut53b)."""
    data = tmp_path / "till"
    make_agent(data, 2).close()
    source = write(tmp_path / "v2.jsonl", snapshot_lines(2))
    command = [sys.executable, "-m", cache_build.MODULE, "build", "--data-dir", str(data)]
    command += ["--source", str(source), "--now", NOW.isoformat(), "--workers", "2"]
    command += ["--min-chunk", str(MIN_CHUNK)]
    env = {**os.environ, cache_build.FAULT_ENV: "stall:0"}  # worker 0 waits a minute
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,  # the script's group is not pytest's
    )
    assert starter.stdout is not None and starter.stdin is not None
    coordinator, bystander = map(int, starter.stdout.readline().split())
    try:
        deadline = time.monotonic() + 60
        while not _processes(b"work", data):
            assert time.monotonic() < deadline, "the build started no worker"
            time.sleep(0.05)
        assert os.getpgid(coordinator) == os.getpgid(bystander) == starter.pid
        starter.stdin.close()
        starter.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(coordinator) or _processes(b"work", data):
            assert time.monotonic() < deadline, "the orphaned build went on"
            time.sleep(0.05)
        assert _alive(bystander), "the build's orphan watch killed its starter's group"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(starter.pid, signal.SIGKILL)
        starter.wait(timeout=30)
    agent = make_agent(data, 2)
    try:
        assert agent.load_snapshot_file(source).version == 2
    finally:
        agent.close()
    assert leftovers(data) == []
