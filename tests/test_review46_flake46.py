"""Review 46, flake46: tests that depend on something that differs between runs rather
than on the product (the machine's load, the date, the hash seed, the order the files
meet in a worker, the environment's TZ and locale).

CI runs `.ci/run` once on a clean clone on a loaded two-core machine, and one failing
test keeps the session's work from landing, so a test that can fail there without a
fault of the product costs as much as a fault. Each test here pins one such dependence
gone (docs/DECISIONS.md, "Review 46 (flake46)").
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

TESTS = Path(__file__).parent


def _given_tests() -> list[tuple[str, object]]:
    """(module:name, the test) of every Hypothesis test of the suite's files."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        if "@given" not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(f"tests.{path.stem}")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                fn = getattr(module, node.name)
                if hasattr(fn, "hypothesis"):
                    found.append((f"{path.stem}:{node.name}", fn))
    return found


def test_no_hypothesis_test_bets_on_the_machines_speed() -> None:
    """Hypothesis' default deadline is 200 ms an example, and with it the too_slow health
    check fails a test whose first examples take more than 1 s to draw: a worker stopped
    for 0.4 s by a loaded machine failed tests/test_display_messages.py's pure tests with
    "Unreliable test timings! On an initial run, this test took 492.01ms" (shown by
    stopping the pytest process 0.4 s in every 0.7 s; CI's two cores run three workers and
    the processes they start). Every Hypothesis test of the suite runs with no deadline
    (which also puts too_slow at 30 s of drawing); the speed lives in `make bench`."""
    tests = _given_tests()
    assert len(tests) >= 30  # the suite's Hypothesis tests were found
    betting = {
        name: str(fn._hypothesis_internal_use_settings.deadline)  # type: ignore[attr-defined]
        for name, fn in tests
        if fn._hypothesis_internal_use_settings.deadline is not None  # type: ignore[attr-defined]
    }
    assert betting == {}, betting
