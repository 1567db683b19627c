"""The native-records ceiling of a known card's quote (issue 11, docs/PERFORMANCE.md,
2026-12-03) still runs: tiny scale, no time asserted."""

from __future__ import annotations

import re

import pytest

from bench import native_ceiling


def test_the_native_prototype_runs_beside_the_quote_and_prices_most_receipts_alike(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert native_ceiling.main(["--scale", "tiny", "--calls", "30"]) == 0
    out = capsys.readouterr().out
    for name in ("quote", "floor", "native"):
        assert re.search(rf"^  {name} +mean \d+\.\d+ ", out, re.MULTILINE), out
    # a cost estimate of comparable work: it leaves a few rules out (see its text), but
    # most receipts of the bench's mix get from it what the agent answers
    share = re.search(r"as the agent did on (\d+)% of them", out)
    assert share is not None and int(share.group(1)) >= 80, out
