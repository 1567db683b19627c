"""The benchmark itself still runs end to end (tiny scale; no time is asserted)."""

from __future__ import annotations

from pathlib import Path

from bench import run as bench_run


def test_bench_runs_every_figure_at_tiny_scale(tmp_path: Path) -> None:
    result = bench_run.run("tiny", 20, tmp_path, out=lambda _line: None)
    names = {f["figure"] for f in result["figures"]}
    for wanted in (
        "full snapshot apply",
        "agent memory during apply",
        "in-process quote, 50 lines",
        "checkout (commit, fsync)",
        "PosAgent.Quote over gRPC",
        "POST /v1/quote over HTTP",
        "outbox upload to the hub",
        "tillpoint run: start to ready",
        "agent memory idle",
    ):
        assert wanted in names, wanted
    upload = next(f for f in result["figures"] if f["figure"] == "outbox upload to the hub")
    assert upload["transactions"] == 300
