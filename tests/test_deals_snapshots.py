"""The fields of time windows (§14) and basket deals (§15) travel the whole way: hub import,
publish, a full snapshot built by child processes on the till, and a delta (real files)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tillpoint.agent.models import ROW_MODELS
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.loopback import import_doc, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb

from .test_proto_json import strict

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
MILK, KEFIR = "4601234000017", "4601234000024"
DEAL = {
    "id": "m-2for1",
    "kind": "MULTIBUY",
    "categories": ["dairy"],
    "buyQty": "1",
    "freeQty": "1",
    "weekdays": [1, 2],
    "hours": [{"from": "08:00", "to": "24:00"}],
}
TIERS = {
    "id": "q-milk",
    "kind": "QUANTITY_PRICE",
    "skus": [MILK],
    "tiers": [{"minQty": "3", "unitPriceMinor": 5000}],
    "onFavoriteWeekday": True,
    "couponRequired": False,
}


def jsonl(doc: dict[str, Any], path: Path) -> Path:
    """The snapshot as JSON Lines: header, then each section's rows."""
    sections = tuple(ROW_MODELS)
    header = {k: v for k, v in doc.items() if k not in sections}
    out = [json.dumps({"format": "tillpoint.snapshot/jsonl", **header}, ensure_ascii=False)]
    for name in sections:
        out.append(json.dumps({"section": name}))
        out.extend(json.dumps(row, ensure_ascii=False) for row in doc.get(name, []))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def receipt(receipt_id: str, at: str) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "at": at,
        "card": "2770000000017",
        "lines": [
            {"sku": MILK, "qty": "2", "priceMinor": 8000},
            {"sku": KEFIR, "qty": "1", "priceMinor": 6000},
        ],
    }


def test_deal_and_window_fields_go_from_hub_import_to_the_till(tmp_path: Path) -> None:
    hub = SqliteHubStore(tmp_path / "hub.db")
    agent = Agent(tmp_path / "till", "till-1")
    try:
        master = sample_master_data()
        master["customers"][0]["favoriteWeekday"] = 2
        import_doc(hub, master | {"offers": [DEAL, TIERS]})
        assert hub.publish(NOW, 7 * 86400.0).version == 1
        full = hub.snapshot_doc(1, 0)
        strict(full, pb.Snapshot())  # the published shape is the contract's
        offers = {o["id"]: o for o in full["offers"]}
        assert offers["m-2for1"]["hours"] == [{"from": "08:00", "to": "24:00"}]
        assert offers["m-2for1"]["weekdays"] == [1, 2]
        assert (offers["m-2for1"]["buyQty"], offers["m-2for1"]["freeQty"]) == ("1", "1")
        assert offers["q-milk"]["tiers"] == [{"minQty": "3", "unitPriceMinor": 5000}]
        assert offers["q-milk"]["onFavoriteWeekday"] is True

        # a full snapshot from a file: built by child processes
        agent.load_snapshot_file(jsonl(full, tmp_path / "full.jsonl"))
        # Monday 10:15: units milk 80.00 ×2, kefir 60.00 → groups [milk milk] [kefir]:
        # one complete group, the second milk free: floor(16000 × 1 / 2) = 8000; kefir is in
        # no complete group. q-milk: Monday is not the favourite weekday (2).
        monday = agent.quote(receipt_from_json(receipt("r1", "2026-11-23T10:15:00+03:00")))
        assert [(x.discount_minor, x.offer_id) for x in monday.lines] == [
            (8000, "m-2for1"),
            (0, None),
        ]
        # Monday 07:59: outside the deal's hours: nothing
        early = agent.quote(receipt_from_json(receipt("r2", "2026-11-23T07:59:00+03:00")))
        assert [x.discount_minor for x in early.lines] == [0, 0]

        # a delta: the deal is gone, q-milk reaches its tier from 2 units now
        import_doc(
            hub,
            {
                "offers": [TIERS | {"tiers": [{"minQty": "2", "unitPriceMinor": 5000}]}],
                "removed": {"offers": ["m-2for1"]},
            },
        )
        assert hub.publish(NOW.replace(hour=7), 7 * 86400.0).version == 2
        delta = hub.snapshot_doc(2, 1)
        assert delta["baseVersion"] == 1 and delta["offers"][0]["tiers"][0]["minQty"] == "2"
        agent.load_snapshot(delta)
        # Tuesday (favourite weekday 2): 2 milk at 50.00 instead of 80.00 = 16000 - 10000
        tuesday = agent.quote(receipt_from_json(receipt("r3", "2026-11-24T10:15:00+03:00")))
        assert [(x.discount_minor, x.offer_id) for x in tuesday.lines] == [
            (6000, "q-milk"),
            (0, None),
        ]
        monday = agent.quote(receipt_from_json(receipt("r4", "2026-11-23T10:15:00+03:00")))
        assert [x.discount_minor for x in monday.lines] == [0, 0]
    finally:
        agent.close()
        hub.close()


def test_explain_through_grpc_message_shapes(tmp_path: Path) -> None:
    """The trace and the new offer fields parse strictly as their proto messages."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        master = sample_master_data()
        master["customers"][0]["favoriteWeekday"] = 1
        agent.load_snapshot({"version": 1, "baseVersion": 0, **master, "offers": [DEAL, TIERS]})
        result = agent.quote(
            receipt_from_json(receipt("r1", "2026-11-23T10:15:00+03:00") | {"explain": True})
        )
        parsed = strict(result.to_json(), pb.CheckoutResult())
        assert isinstance(parsed, pb.CheckoutResult)
        assert parsed.trace.deals[0].offer_id == "m-2for1"
        assert parsed.trace.redemption.bound_by == "REQUESTED"  # asked for 0 points
        outcomes = {(o.offer_id, o.outcome) for line in parsed.trace.lines for o in line.offers}
        assert ("m-2for1", "APPLIED") in outcomes
        assert ("q-milk", "BELOW_MIN_QTY") in outcomes or ("q-milk", "TAKEN_BY_DEAL") in outcomes
    finally:
        agent.close()
