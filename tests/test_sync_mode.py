"""ONLINE/OFFLINE as the till reports it, with a real loopback hub (the contract §5, §9)."""

from __future__ import annotations

from pathlib import Path

from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, wait_for


def test_mode_follows_the_hub_and_status_carries_the_sync_fields(tmp_path: Path) -> None:
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till")
    try:
        wait_for(lambda: till.agent.status().cache_version >= 1)
        wait_for(lambda: till.agent.status().mode == "ONLINE")
        card = sample_master_data()["cards"][0]["number"]
        assert till.agent.checkout(receipt_from_json(receipt("r1", card))).mode == "ONLINE"
        status = till.agent.status()
        for key in ("lastPullAt", "lastPushAt", "lastError", "enrolled"):
            assert key in status.to_json()
        assert till.agent.quote(receipt_from_json(receipt("q1", card, redeem=10))).mode == "ONLINE"
        hub.stop()
        # Redemption needs the hub: it does not answer, so OFFLINE within the deadline.
        result = till.agent.checkout(receipt_from_json(receipt("r2", card, redeem=10)))
        assert result.mode == "OFFLINE" and result.redeemed_points == 10
        # From then on the till knows the hub is away, even for receipts without redemption,
        # and a quote shows the offline cap the checkout would get.
        assert till.agent.checkout(receipt_from_json(receipt("r3", card))).mode == "OFFLINE"
        quoted = till.agent.quote(receipt_from_json(receipt("q2", card, redeem=-1)))
        assert quoted.mode == "OFFLINE" and quoted.redeemed_points <= 490
        wait_for(lambda: till.agent.status().mode == "OFFLINE")
    finally:
        till.stop()
        hub.stop()
