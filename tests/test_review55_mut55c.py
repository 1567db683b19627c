"""Review 55 (mut55c): mutation testing of the agent's housekeeping — the logs' masking
(`agent/logs.py`), files written whole (`agent/files.py`), one agent per data directory
(`agent/lock.py`) and the /metrics endpoint (`agent/metrics.py`, the gauges of
`server.register_gauges`). Each test pins a rule a surviving mutant broke and no test
held, with real parts: real files in tmp_path, a real small file system (a tmpfs in a
mount namespace of its own) for a full disk, real second processes for the lock, real
HTTP scrapes of a real endpoint. Figures are worked out by hand in the comments.
docs/DECISIONS.md, "Review 55 (mut55c)", lists the mutants."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tillpoint.agent.metrics import Histogram, Registry, serve
from tillpoint.agent.server import register_gauges
from tillpoint.agent.service import Agent

from .conftest import snapshot


def _scrape(port: int) -> dict[str, str]:
    """One real scrape of /metrics: each sample's name (with its labels) -> its value as
    written."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    samples = [line.rsplit(" ", 1) for line in body.splitlines() if not line.startswith("#")]
    return {name: value for name, value in samples}


# ------------------------------------------------------------------ /metrics: the values


def test_a_gauge_of_seven_digits_is_scraped_exactly(tmp_path: Path) -> None:
    """A sample's value was written `{value:g}`: six significant digits. A till on snapshot
    version 1234567 said `tillpoint_snapshot_version 1.23457e+06`, which Prometheus reads
    as 1234570 — three versions ahead of what it holds; a chain numbering its versions by
    date (2026120701) read 2026120000. Now an integer is written whole: 1234567."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(version=1234567))
    registry = Registry()
    register_gauges(registry, agent)
    servers, port = serve(registry, "127.0.0.1", 0)
    try:
        samples = _scrape(port)
    finally:
        servers.shutdown()
        agent.close()
    assert samples["tillpoint_snapshot_version"] == "1234567"
    assert samples["tillpoint_outbox_depth"] == "0"
    age = samples["tillpoint_snapshot_age_seconds"]
    assert "e" not in age and float(age) > 0, age  # seconds since it was issued, in full


def test_a_value_that_is_not_whole_keeps_its_digits_and_infinity_is_prometheus_words() -> None:
    """What is not a whole number keeps every digit Python's shortest form needs (`repr`):
    12345.678 was `12345.7`; and the words for the infinities and not-a-number are the
    text format's own (`+Inf`, `-Inf`, `NaN`; `{:g}` wrote `inf`, which no parser takes)."""
    registry = Registry()
    registry.gauge(
        "t_values",
        "test values",
        lambda: {
            'k="a"': 12345.678,
            'k="b"': float("inf"),
            'k="c"': float("-inf"),
            'k="d"': 0.25,
            'k="e"': -3.0,
            'k="f"': 2.0**53,
        },
    )
    text = registry.render()
    assert 't_values{k="a"} 12345.678\n' in text
    assert 't_values{k="b"} +Inf\n' in text and 't_values{k="c"} -Inf\n' in text
    assert 't_values{k="d"} 0.25\n' in text and 't_values{k="e"} -3\n' in text
    assert 't_values{k="f"} 9007199254740992\n' in text
    registry.gauge("t_nan", "not a number", lambda: {"": float("nan")})
    assert "t_nan NaN\n" in registry.render()


def test_a_duration_on_a_bucket_bound_is_counted_in_that_bucket() -> None:
    """Prometheus' `le` is "less than or equal": a checkout of exactly 1 ms is in
    `le="0.001"`. Only 0.003 s had been observed (between bounds), so a histogram that put
    a value at a bound in the next bucket up (`bisect_right`) passed. By hand: 0 and 0.001
    are <= 0.001 (2); 0.0010001 <= 0.002 (3, cumulative); nothing more up to 1.0 (3); 2.5
    <= 2.5 (4); 2.5000001 only in +Inf (5). The sum 0 + 0.001 + 0.0010001 + 2.5 +
    2.5000001 = 5.0020002, written to the microsecond: 5.002000."""
    histogram = Histogram("t_seconds", "test")
    for seconds in (0.001, 0.0010001, 2.5, 2.5000001, 0.0):
        histogram.observe(seconds)
    registry = Registry()
    registry.checkout_seconds = histogram
    servers, port = serve(registry, "127.0.0.1", 0)
    try:
        samples = _scrape(port)
    finally:
        servers.shutdown()
    cumulative = {
        "0.001": "2",
        "0.002": "3",
        "0.005": "3",
        "0.01": "3",
        "0.025": "3",
        "0.05": "3",
        "0.1": "3",
        "0.25": "3",
        "0.5": "3",
        "1.0": "3",
        "2.5": "4",
        "+Inf": "5",
    }
    assert {
        name[len('t_seconds_bucket{le="') : -2]: value
        for name, value in samples.items()
        if name.startswith("t_seconds_bucket")
    } == cumulative
    assert samples["t_seconds_count"] == "5" and samples["t_seconds_sum"] == "5.002000"
