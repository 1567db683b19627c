"""The CLI's JSON is the proto3 JSON mapping of tillpoint.v1 (the contract §1), both ways."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI, SHARED, receipt, snapshot

STEP_INPUT = {
    "snapshot load": pb.Snapshot,
    "checkout": pb.Receipt,
    "quote": pb.Receipt,
    "refund": pb.Refund,
}


def strict(data: Any, message: Message) -> Message:
    return json_format.ParseDict(data, message, ignore_unknown_fields=False)


def test_cli_outputs_parse_as_their_messages(cli: CLI) -> None:
    cli("snapshot", "load", snapshot())
    strict(cli("identify", "2770000000017", "--json").json(), pb.CardOutcome())
    strict(cli("identify", "2770000000099", "--json").json(), pb.CardOutcome())
    result = cli("checkout", receipt(redeemPoints=10), "--json").json()
    parsed = strict(result, pb.CheckoutResult())
    assert isinstance(parsed, pb.CheckoutResult)
    assert parsed.card.first_name == "Анна" and parsed.lines[0].offer_id == ""
    assert json_format.MessageToDict(parsed)["receiptId"] == "r1"
    refund = {
        "refundId": "f1",
        "receiptId": "r1",
        "at": "2026-11-24T10:00:00+03:00",
        "lines": [{"sku": "4601234000017", "qty": "1"}],
    }
    strict(cli("refund", refund, "--json").json(), pb.RefundResult())
    strict(cli("balance", "2770000000017", "--json").json(), pb.Balance())


@pytest.mark.skipif(not (SHARED / "examples").is_dir(), reason="shared examples not present")
def test_example_inputs_are_valid_proto_json() -> None:
    for path in sorted((SHARED / "examples").glob("*.json")):
        for step in json.loads(path.read_text(encoding="utf-8"))["steps"]:
            kind = STEP_INPUT.get(step["command"])
            if kind is not None:
                strict(step["input"], kind())


def test_spec_section_3_snapshot_is_valid_proto_json() -> None:
    strict(snapshot(appliedThrough={"till-1": 41}), pb.Snapshot())
