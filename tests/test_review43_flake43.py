"""Review 43 (flake43): races between processes at `tillpoint run`'s start and stop, and
in the suite's harnesses that start real processes.

Session 41's and 42's submissions failed on one rare test each, all races between
processes: a readiness signal that showed before the thing the next step used. Checked
here, on real sockets, real data directories and real `tillpoint run` processes:

- `run` started gRPC (health SERVING, as `build_server` sets it) before it wrote
  ``serving.json``: a POS or a script that waited for gRPC and then ran a CLI call had it
  run in a process of its own (without the run's printer; a second writer of the
  ledger), the session-42 fault again through the other door. ``serving.json`` is now
  written before either server answers (the HTTP port listens from its bind, so a CLI
  call that reads it early waits in the backlog).
- since review 43's lead fix the HTTP port (as gRPC's always did) accepts TCP connections
  from its bind, before the run answers and before it checks for a stop during start-up:
  a harness that took "the port accepts" for "the agent answers" (ops26's SIGTERM test)
  stopped the run in its start-up, where it says "stopped during start-up", not
  "stopped". It waits for an HTTP answer now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import forward
from tillpoint.agent import server as server_module
from tillpoint.agent.errors import TillpointError

from .conftest import CLI

# ---------------------------------------- 1. serving.json before the first gRPC answer


def test_serving_json_is_written_before_grpc_answers(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (the CLI forwards to the serving run): once gRPC answers (its health
    says SERVING from the start), a CLI call goes to this run: ``serving.json`` names it
    already when the gRPC server starts. A server that fails to start leaves no file
    behind (the run exits 1, one line). Failed before the fix: the file was written after
    gRPC had started."""
    seen: list[Any] = []
    built = server_module.build_server

    def build(*args: Any, **kwargs: Any) -> Any:
        server, port, health = built(*args, **kwargs)

        class Refusing:
            def start(self) -> None:
                path = tmp_path / "data" / forward.SERVING
                seen.append(path.exists() and forward._serving(path.parent)["pid"] > 0)
                server.stop(None)
                raise TillpointError("the gRPC server did not start (test)")

            def __getattr__(self, name: str) -> Any:
                return getattr(server, name)

        return Refusing(), port, health

    monkeypatch.setattr(server_module, "build_server", build)
    for key in ("SERVER", "HTTP"):
        monkeypatch.setenv(f"TILLPOINT_{key}__LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("TILLPOINT_METRICS__ENABLED", "false")
    run = cli("run")
    assert run.code == 1 and "Traceback" not in run.err, run.err
    assert "the gRPC server did not start" in run.err
    assert seen == [True]  # published before gRPC could answer
    assert not (tmp_path / "data" / forward.SERVING).exists()  # and withdrawn


# ---------------------------------------- 2. a harness's "it listens" is not "it answers"

# `tillpoint run` with a pause between binding its HTTP port and the rest of its start-up
# (the stop check, the hub side, the servers): a loaded machine's scheduler, made certain.
_SLOW_AFTER_HTTP_BIND = """
import sys, time
from tillpoint.agent import http_api
bound = http_api.HttpServer.__init__
def slow(self, *args, **kwargs):
    bound(self, *args, **kwargs)
    time.sleep(float(sys.argv[1]))
http_api.HttpServer.__init__ = slow
from tillpoint.agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_ops26_waits_for_an_answer_not_for_a_listening_port(tmp_path: Path) -> None:
    """ops26's `test_sigterm_as_soon_as_the_agent_answers_is_a_graceful_stop` sends SIGTERM
    as soon as `run` answers and expects the graceful stop's last line, "stopped". It took
    a TCP connection to the HTTP port for an answer: since the port listens from its bind
    (review 43, lead), that is before `run` has started anything, and a SIGTERM then is a
    stop during start-up ("stopped during start-up: nothing was served"). Its wait is
    shown here against a run held up right after that bind; failed before its fix."""
    import json
    import signal
    import subprocess
    import sys

    from tillpoint.agent.service import Agent

    from .conftest import free_port, snapshot
    from .test_review26_ops26 import _run_env, wait_answering

    data = tmp_path / "data"
    seed = Agent(data, "till-1")
    seed.load_snapshot(snapshot())
    seed.close()
    http = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_AFTER_HTTP_BIND, "1", "--data-dir", str(data), "run"],
        env=_run_env(http),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_answering(http, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(err.strip().splitlines()[-1])["msg"] == "stopped", err[-2000:]


def _slow_tillpoint(where: Path, pause_s: float) -> str:
    """An executable `tillpoint` whose `run` pauses `pause_s` after binding its HTTP port."""
    import sys

    exe = where / "slow-tillpoint"
    exe.write_text(
        f"#!{sys.executable}\nimport sys\nsys.argv.insert(1, {str(pause_s)!r})\n"
        + _SLOW_AFTER_HTTP_BIND,
        encoding="utf-8",
    )
    exe.chmod(0o755)
    return str(exe)


# ~10 s (a 6 s pause past spec39a's old 5 s): `make test-all` and CI; the ops26 test above
# is its quick twin (the same pause after the HTTP bind, the same wrong readiness)
@pytest.mark.slow
def test_spec39a_waits_for_grpc_as_long_as_for_the_http_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spec39a's `_start_run` connected to the HTTP port, then gave gRPC 5 s to be ready,
    and a gRPC that was not (`grpc.FutureTimeoutError`, no OSError) ended the test. The
    HTTP port accepting implied gRPC had started; since the port listens from its bind
    (review 43, lead), before the hub side, the devices and gRPC start, it does not: the
    wait now gives gRPC the rest of its 30 s. Shown with a run held up 6 s after that bind;
    failed before the fix."""
    import signal

    from . import test_review39_spec39a as spec39a

    monkeypatch.setattr(spec39a, "EXE", _slow_tillpoint(tmp_path, 6))
    (tmp_path / "work").mkdir()
    proc, _, _ = spec39a._start_run(tmp_path / "work", tmp_path / "data")
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# ---------------------------------------- 3. socat's pseudo-terminals on a loaded machine


def test_a_pty_pair_waits_for_a_slow_socat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`PtyPair` (the suite's pole displays, printers and scanners on a serial line; the
    demo's display) gave socat 5 s to make its two pseudo-terminals and then failed the
    test ("socat did not create the pseudo-terminals"): short for a process's start on a
    loaded machine (a stop's wait after SIGKILL likewise had 2 s). Shown with a socat
    that starts 6 s late; failed before the fix (20 s)."""
    import shutil

    from tillpoint.printer.virtual_display import PtyPair

    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed")
    slow = tmp_path / "bin" / "socat"
    slow.parent.mkdir()
    slow.write_text(f'#!/bin/sh\nsleep 6\nexec {socat} "$@"\n', encoding="utf-8")
    slow.chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow.parent}:{__import__('os').environ['PATH']}")
    with PtyPair(tmp_path / "pty") as pair:
        assert pair.device.exists() and pair.peer.exists()
