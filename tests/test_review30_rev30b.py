"""Review 30 (rev30b): a second read of the hub's online redemption across an expiry
(docs/CONTRACT.md §9 with §16): the time a till sends with its unsent sales, the upgrade
from a hub database whose holds carry no receipt time, and both stores' answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.v1 import tillpoint_pb2 as pb

from .test_hub_security import identity, stub
from .test_review30_sync30 import HUB_NOW, expiring_data

TIMEOUT = 10
AFTER_MIDNIGHT = "2026-12-01T00:10:00+03:00"


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=expiring_data(), clock=lambda: HUB_NOW)
    yield hub
    hub.stop()


def ask(receipt_id: str, points: int, *unsent: pb.UnsyncedPoints) -> pb.AuthorizeRedemptionRequest:
    return pb.AuthorizeRedemptionRequest(
        device_id="till-1",
        receipt_id=receipt_id,
        customer_id="c-2",
        points=points,
        at=AFTER_MIDNIGHT,
        unsynced=list(unsent),
    )


@pytest.mark.parametrize(
    "sold",
    [
        "9999-12-31T23:59:59-10:00",  # past the last UTC instant there is
        "0001-01-01T00:00:00+05:00",  # before the first
    ],
)
def test_an_unsent_sales_time_out_of_range_is_not_a_failure_of_the_hub(
    hub: LoopbackHub, sold: str
) -> None:
    """docs/CONTRACT.md §9: a till's unsent sale carries its time (`UnsyncedPoints.at`);
    one that is a time with an offset but no UTC instant (year 10000 or year 0 in UTC)
    made the hub fail (OverflowError: gRPC UNKNOWN, a traceback in its log) where a time
    it cannot read is counted as from a till that sends none: the unsent −10 taken off
    the 100 points that count after midnight, 90 granted, nothing credited."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    unsent = pb.UnsyncedPoints(seq=1, receipt_id="s-1", points=-10, at=sold, spent=10)
    reply = s.AuthorizeRedemption(ask("r-1", 300, unsent), timeout=TIMEOUT)
    assert (reply.authorized_points, reply.live_balance) == (90, 90)
    # held: the 90 and the unsent 10; nothing is left for the next receipt
    assert s.AuthorizeRedemption(ask("r-2", 300), timeout=TIMEOUT).authorized_points == 0
