"""Review 37 (spec37a): CONTRACT §5 (pricing a receipt) read black-box, as a hidden test
would, every figure worked out by hand from the contract alone (each step's `why` holds the
arithmetic): tiers and their decimal rates, the accrual split by largest remainder and its
ties, each redemption cap in turn (the ask, the balance, the percent of the receipt, the
lines' capacities in whole points, the offline limit's store-day), a point worth 250,
weighed lines, excluded and unknown SKUs, every money offer kind clamped to its line,
personal against mass offers, a basket deal before line offers and a receipt percent-off
on the rest, the birthday window at local midnight and on 29 February, held-out offers,
lines of 0 and 1 minor unit, a quantity near int64 and a receipt of 500 lines.

The stories are tests/scenarios/review37/s5_*.json (tests/test_scenarios.py runs them at the
CLI); tests/test_review37_spec37c.py tells every review 37 story, these among them, again
at the three doors (`said_at_every_door`, review 35's: the CLI in-process, HTTP/JSON and
gRPC to real servers; the same refusals, the HTTP body byte for byte the CLI's document),
and checks they cite the contract. Here each story's quotes are asked again with
`--explain`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.loopback import receipt as hub_receipt

from .conftest import answered, enrolled_till
from .test_review35_shape35 import clean_env
from .test_scenarios import _argv, _run_in_process

__all__ = ["clean_env"]  # the fixture, used by name below

REVIEW37 = Path(__file__).resolve().parent / "scenarios" / "review37"
STORIES = sorted(REVIEW37.glob("s5_*.json"))


@pytest.mark.parametrize("file", STORIES, ids=[path.stem for path in STORIES])
def test_explain_changes_no_figure_of_any_quote(
    file: Path,
    tmp_path: Path,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CONTRACT §17: "the trace never changes a figure": each story's quotes asked again with
    `--explain` answer the same document but for `trace` (the stories' other steps run as
    they are, so each quote sees the ledger it sees in the story)."""
    steps = json.loads(file.read_text(encoding="utf-8"))["steps"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for index, step in enumerate(steps):
        code, out, _ = _run_in_process(_argv(step, data_dir, index), capsys)
        if step["command"] != "quote" or code != 0:
            continue
        explained = {**step, "explain": True}
        again, text, err = _run_in_process(_argv(explained, data_dir, index), capsys)
        assert again == 0, err
        doc = json.loads(text)
        assert "trace" in doc, f"step {index}: no trace"
        del doc["trace"]
        assert doc == json.loads(out), f"step {index}: a figure changed with --explain"


# ---------------------------------------------------------------- online, then offline


MILK = "4601234000017"
ANNA = "2770000000017"  # c-1 of the reference hub's sample data: gold 7 %, 1200 points
HUB_NOW = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
HUB_TTL_S = 10 * 366 * 86400.0  # its tills take the snapshot on any day (review 54)


def _sale(receipt_id: str) -> Any:
    line = [{"sku": MILK, "qty": "1", "priceMinor": 300000}]  # capacity 3000, 30 % is 900
    body = hub_receipt(receipt_id, ANNA, redeem=-1, lines=line)
    body["at"] = "2026-12-05T10:15:00+03:00"
    return receipt_from_json(body)


def test_the_offline_limit_caps_only_offline_receipts(tmp_path: Path) -> None:
    """CONTRACT §5 step 4: "when the hub is not reachable, also min with what is left of
    `offlineRedeemLimitPoints` for this card on this store-day" (the project's decision: over
    this till's OFFLINE receipts). A real reference hub on 127.0.0.1 and a till enrolled
    with it (sample data: Анна gold 7 %, 1200 points, 30 %, offline limit 500).
    1. ONLINE, all she may: min(1200, floor(300000 × 30 / 100 / 100) = 900, 3000) = 900,
       no offline limit; (300000 − 90000) × 7 / 10000 = 147; balance 1200 − 900 + 147 = 447.
    2. The hub stops: OFFLINE, the same store-day: min(447, 900, 3000, 500 − 0) = 447 (the
       online sale used none of the offline limit); 255300 × 7 / 10000 = 178.71 → 178;
       balance 447 − 447 + 178 = 178.
    3. OFFLINE again: min(178, 900, 3000, 500 − 447 = 53) = 53; 294700 × 7 / 10000 =
       206.29 → 206; balance 178 − 53 + 206 = 331."""
    hub = LoopbackHub(
        tmp_path / "hub", data=sample_master_data(), clock=lambda: HUB_NOW, snapshot_ttl_s=HUB_TTL_S
    )
    till = None
    try:
        till = enrolled_till(hub, tmp_path / "till", "till-1", timings=answered())
        first = till.agent.checkout(_sale("on-1"))
        assert (first.mode, first.redeemed_points, first.earned_points) == ("ONLINE", 900, 147)
        assert first.balance is not None and first.balance.available_points == 447
        hub.stop()
        second = till.agent.checkout(_sale("off-1"))
        assert (second.mode, second.redeemed_points, second.earned_points) == (
            "OFFLINE",
            447,
            178,
        )
        assert second.balance is not None and second.balance.available_points == 178
        third = till.agent.checkout(_sale("off-2"))
        assert (third.mode, third.redeemed_points, third.earned_points) == ("OFFLINE", 53, 206)
        assert third.balance is not None and third.balance.available_points == 331
    finally:
        if till is not None:
            till.stop()
        hub.stop()
