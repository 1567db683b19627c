"""A quiet till's link to the hub stays up through its keepalive pings.

The hub's server option for the pings it accepts once had a name gRPC does not know
(`grpc.http2.min_recv_ping_interval_without_data_ms`), so the hub kept gRPC's default of
5 minutes: a till pinging every 20 s while quiet got two strikes and then GOAWAY
"too_many_pings", and its link dropped (seen in the chain-scale bench's log).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from tillpoint.sync import client, hub_server
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import LoopbackHub

from .conftest import ChannelStates


def test_the_hub_accepts_pings_as_often_as_the_tills_send_them() -> None:
    assert hub_server.MIN_PING_INTERVAL_MS <= client.KEEPALIVE_MS // 2
    assert client.KEEPALIVE_MS <= 30_000  # a dead link is noticed within a minute


@pytest.mark.slow
def test_a_quiet_link_is_not_dropped_for_its_keepalive_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped pair scaled down 20 times: the till pings every 1 s, the hub accepts
    # pings 0.5 s apart. With the option's old name the hub dropped the link within 4 s.
    monkeypatch.setattr(client, "KEEPALIVE_MS", client.KEEPALIVE_MS // 20)
    monkeypatch.setattr(hub_server, "MIN_PING_INTERVAL_MS", hub_server.MIN_PING_INTERVAL_MS // 20)
    hub = LoopbackHub(tmp_path / "hub")
    link = HubLink(hub.address, hub.enroll("till-1", tmp_path / "till"))
    states = ChannelStates(link.channel)
    try:
        assert states.wait_ready(), states.states
        time.sleep(8)  # eight pings, and nothing else on the link
        assert states.since_ready() == [grpc.ChannelConnectivity.READY], states.states
    finally:
        states.close()
        link.close()
        hub.stop()
