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
        "in-process quote ÷ SQLite floor, 50 lines",
        "checkout − quote, same 50-line basket",
        "gRPC Quote ÷ stub, 50 lines",
        "gRPC Quote p99 − stub p99, 50 lines",
        "quotes/s, 4 clients ÷ 1 client",
        "agent memory after 1000 mixed calls",
        "tillpoint quote: CLI wall time",
        "outbox upload to the hub",
        "tillpoint run: start to ready",
        "agent memory idle",
    ):
        assert wanted in names, wanted
    for row in result["figures"]:  # every figure says its target, and a verdict or why not
        assert row["target"] and "pass" in row
    upload = next(f for f in result["figures"] if f["figure"] == "outbox upload to the hub")
    assert upload["transactions"] == 300
