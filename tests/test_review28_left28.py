"""Review 28 (left28): items earlier sessions left open, each through a public door
(the CLI with --json, a real hub on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, timings
from tillpoint.sync.pull import Puller

from tests.test_review27_sync27 import ThinLink, stored_at_hub

CARD = "2770000000017"
SKU = "4601234000017"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip() and "--json" in argv else out
    return code, doc, err


# ---------------------------------------------------------------- 1. sync now, thin uplink


@pytest.mark.slow  # ~3 s: 30 sales, then about 1 s of pushing over the relay
def test_sync_now_drains_a_backlog_over_an_uplink_too_thin_for_a_whole_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9: every sale reaches the hub once the link is back. `tillpoint
    sync now` built a fresh pusher for each call, so a push that ran out of time over an
    uplink too thin for a whole batch ended the call ("the hub is unreachable"), and the
    next call tried the same whole batch again: the backlog never drained by hand. The
    call now halves its batch after a push that runs out of time, down to one sale."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till-1"
    till = hub.till("till-1", data, start=False, timings=timings(call_timeout_s=2.0))
    thin = None
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        basket = [{"sku": SKU, "qty": "1", "priceMinor": 100 + i} for i in range(12)]
        sales = 30
        for i in range(sales):
            till.agent.checkout(receipt_from_json(receipt(f"r-{i:03d}", CARD, lines=basket)))
        till.stop()
        thin = ThinLink(hub.port, rate=200_000)
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", f"127.0.0.1:{thin.port}")
        monkeypatch.setenv("TILLPOINT_HUB__CALL_TIMEOUT_MS", "300")
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(data), "--json")
        assert code == 0, err
        assert (doc["pushed"], doc["outboxDepth"]) == (sales, 0)
        assert stored_at_hub(hub, "till-1") == [f"r-{i:03d}" for i in range(sales)]
    finally:
        if thin is not None:
            thin.close()
        hub.stop()
