"""Review 43 (review43): a second pair of eyes on session 43's start-up and store changes.

1. `tillpoint run` whose gRPC server fails to start (its serving thread not started:
   "can't start new thread", a unit at its TasksMax) stops what it started since
   review 43. gRPC's server had already moved to STARTED, and its stop's event is set
   only by the serving thread that never ran: the cleanup's unbounded `wait()` hung
   the run for good instead of exiting 1 (before review 43 it exited 1). The run must
   end, in one line, its lock let go, no thread of its own left running.
2. `limits.bounded_lines`, one helper for three readers since review 43 (tidy43): its
   lines, their numbering and the refusal's number are those of the three copies it
   replaced, compared on seeded random payloads at a small bound (every edge: a last
   line without newline, CRLF, a line exactly at the bound and one byte past it, a
   payload's end in the middle of a line, empty input, a first line read in part).
3. The SQLite hub store's connections closed by `_Held.__del__`: closed in the thread
   that owned them when it ends, never under another thread's statement.

Real parts: `tillpoint run` in-process on real sockets and a real data directory, real
threads, real SQLite files. The gRPC failure is injected where the kernel would refuse
a thread (its serving thread's start raises as CPython does then).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI

# ------------------------------------------------------------- 1. gRPC fails to start


# `tillpoint run` in a process of its own whose gRPC serving thread cannot start.
GRPC_START_FAILS = """
import sys, threading
import grpc._server as grpc_server
from tillpoint.agent.cli import main

real_start = threading.Thread.start

def start(self):
    if getattr(self, "_target", None) is grpc_server._serve:
        raise RuntimeError("can't start new thread")
    real_start(self)

threading.Thread.start = start
code = main(sys.argv[1:])
left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
print("threads left:", left, file=sys.stderr)
sys.exit(code)
"""


def test_a_run_whose_grpc_server_fails_to_start_exits_and_stops_what_it_started(
    tmp_path: Path,
) -> None:
    """CONTRACT §10: a `run` whose gRPC server cannot start its serving thread exits 1
    (one line, no traceback) rather than waiting for ever on gRPC's stop, removes
    ``serving.json``, lets go of the data directory's lock, and leaves no thread of
    its own running at its exit."""
    import os
    import subprocess
    import sys

    from tillpoint.agent import forward
    from tillpoint.agent.lock import DataDirLock

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(
        TILLPOINT_DEVICE_ID="till-1",
        TILLPOINT_SERVER__LISTEN="127.0.0.1:0",
        TILLPOINT_HTTP__LISTEN="127.0.0.1:0",
        TILLPOINT_METRICS__ENABLED="false",
    )
    data = tmp_path / "data"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", GRPC_START_FAILS, "--data-dir", str(data), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,  # generous for a loaded machine (its exit takes ~2 s); it waited for ever
        )
    except subprocess.TimeoutExpired:
        pytest.fail("run hung after its gRPC server failed to start")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tillpoint:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert any("can't start new thread" in line for line in lines), proc.stderr
    # nothing of the run's own left: gRPC's, HTTP's, the devices', the sweeper's
    assert "threads left: [" in proc.stderr, proc.stderr
    left = proc.stderr.split("threads left: ", 1)[1].splitlines()[0]
    assert not any(name in left for name in ("http", "hold", "print", "display")), left
    assert not (data / forward.SERVING).exists()
    DataDirLock(data).acquire().release()  # the lock let go
