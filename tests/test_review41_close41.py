"""Review 41 (lead): an agent closed while another thread reads it (session 40's CI crash).

The pre-CI run of session 41 caught the segmentation fault that had cost session 40's
submission: the crashing thread was a health `Watch`'s follower reading `Agent.status`
(the cache's header) while the test's main thread ran `Agent.close`, which closed the
SQLite connection under it (a connection freed inside another thread's statement). The
gRPC reflection thread of the harness's partial dump was a bystander. `Agent.close` now
waits for a call in progress (the agent's lock) before it closes anything.

The race runs in a child `python`, so that a crash is the child's exit status and never
the pytest worker's death: a reader thread calling `status()` without pause, and `close()`
from the main thread, 150 times (before the fix the child died within 200 rounds in each
of three runs; ~5 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import snapshot

CHILD = r"""
import faulthandler, json, sys, threading
from pathlib import Path
from tillpoint.agent.service import Agent

faulthandler.dump_traceback_later(100, exit=True)  # a close that never ends: exit 1
snap = json.loads(Path(sys.argv[1]).read_text())
base = Path(sys.argv[2])
for n in range(int(sys.argv[3])):
    agent = Agent(base / str(n), "till-1")
    agent.load_snapshot(snap)
    reading = threading.Event()

    def reader() -> None:
        reading.set()
        while True:
            try:
                agent.status()
            except Exception:  # a closed agent's calls fail as Python errors, never crash
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    reading.wait()
    agent.close()
    thread.join(10)
    assert not thread.is_alive(), "a call on a closed agent did not end"
print("rounds done")
"""


def test_an_agent_closed_while_another_thread_reads_its_status_never_crashes(
    tmp_path: Path,
) -> None:
    snap = tmp_path / "snapshot.json"
    snap.write_text(json.dumps(snapshot()))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(snap), str(tmp_path / "agents"), "150"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert "rounds done" in done.stdout


def test_a_blocking_health_watch_hears_each_change_and_the_shutdown() -> None:
    """review41 (a second reading of seg41's health service): a blocking `Watch` (one a
    server without grpcio's non-blocking handlers makes: none of the agent's doors do)
    is grpcio's own, and `set` called `.tell()` on its plain callback: AttributeError.
    Called in-process with the two calls grpcio's blocking Watch makes of its context."""
    from grpc_health.v1 import health_pb2
    from tillpoint.agent.grpc_health import NOT_SERVING, SERVING, ReadinessHealth

    readiness = [True]
    health = ReadinessHealth(("svc",), lambda wait_s: readiness[0], every_s=3600)

    class Context:  # what grpcio's blocking Watch asks of its context, no more
        def add_callback(self, callback: object) -> bool:
            return True

        def time_remaining(self) -> float:
            return 5.0

    answers = health.Watch(health_pb2.HealthCheckRequest(service="svc"), Context(), None)  # type: ignore[arg-type]
    assert next(answers).status == SERVING
    readiness[0] = False
    health.set_ready(False)
    assert next(answers).status == NOT_SERVING
    health.set_ready(True)
    assert next(answers).status == SERVING
    health.enter_graceful_shutdown()
    assert next(answers).status == NOT_SERVING
