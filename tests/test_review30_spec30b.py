"""Review 30 (spec30b): what the explain trace tells of a receipt offer that lost
(docs/CONTRACT.md §17): `BEATEN` names the winner and its discount, at every door.
The hand-worked scenarios are in tests/scenarios/review30c/."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from google.protobuf import json_format
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import posagent_stub, receipt, snapshot


def _receipt_offer(oid: str, percent: str) -> dict[str, Any]:
    return {
        "id": oid,
        "campaignId": "camp-" + oid,
        "customerId": "c-a",
        "kind": "RECEIPT_PERCENT_OFF",
        "skus": [],
        "categories": [],
        "value": percent,
        "minTotalMinor": 10000,
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
        "priority": 10,
    }


def _load(agent: Any) -> dict[str, Any]:
    agent.load_snapshot(
        snapshot(version=2, offers=[_receipt_offer("rp-3", "3"), _receipt_offer("rp-4", "4")])
    )
    # 2 × 89,90 = 179,80 ≥ 100,00: rp-3 gives floor(17980 × 3%) = 539, rp-4 719 (wins)
    return receipt("q1", explain=True)


def _rp3(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(row for row in rows if row["offerId"] == "rp-3")


def test_beaten_receipt_offer_names_its_winner_and_the_winners_discount_over_http(
    agent: Any, server: Any
) -> None:
    """docs/CONTRACT.md §17: `BEATEN` (by which offer, and its discount); `beatenBy` always
    comes with `beatenByDiscountMinor`. A receipt offer said only `beatenBy`."""
    body = json.dumps(_load(agent)).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/v1/quote", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        doc = json.loads(response.read())
    row = _rp3(doc["trace"]["receiptOffers"])
    assert row["outcome"] == "BEATEN"
    assert row["discountMinor"] == 539
    assert row["beatenBy"] == "rp-4"
    assert row["beatenByDiscountMinor"] == 719


def test_beaten_receipt_offer_winners_discount_over_grpc(agent: Any) -> None:
    """docs/CONTRACT.md §17 over gRPC: TraceReceiptOffer.beaten_by_discount_minor."""
    message = json_format.ParseDict(_load(agent), pb.Receipt())
    with posagent_stub(agent) as stub:
        result = stub.Quote(message, timeout=10)
    doc = json_format.MessageToDict(result)
    row = _rp3(doc["trace"]["receiptOffers"])
    assert row["outcome"] == "BEATEN"
    assert row["beatenBy"] == "rp-4"
    assert int(row["beatenByDiscountMinor"]) == 719
