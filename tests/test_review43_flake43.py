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
