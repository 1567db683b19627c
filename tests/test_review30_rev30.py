"""Review 30 (rev30): a second look at what this session changed: the doors' words for a
text over its limit, and the phone kept only in its keyed form."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, grpc_served, receipt, snapshot


def _http_error(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("length", [200])
def test_a_fiscal_document_over_64_characters_is_said_alike_by_every_door(
    cli: CLI, tmp_path: Path, length: int
) -> None:
    """docs/CONTRACT.md §10, §11, §12: a `fiscalDocument` is at most 64 characters, and one
    over that is refused in the same words by the CLI (exit 2), HTTP (400) and gRPC
    (INVALID_ARGUMENT): "confirm: fiscalDocument is too long (at most 64 characters)".
    One of 129 characters or more was said by HTTP as "(at most 128 characters)", the
    limit of the other texts, while the CLI and gRPC said 64. The hold stays HELD."""
    import grpc
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    words = "confirm: fiscalDocument is too long (at most 64 characters)"
    fiscal = "F" * length
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("hold", receipt("h-1"), "--json").code == 0
    run = cli("confirm", "h-1", "--fiscal", fiscal, "--json")
    assert (run.code, run.out, run.err) == (2, "", f"tillpoint: {words}\n")

    agent = Agent(tmp_path / "doors", "till-1")
    agent.load_snapshot(snapshot())
    agent.hold(receipt_from_json(receipt("h-1")))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    try:
        code, answer = _http_error(
            server.port, "/v1/confirm", {"receiptId": "h-1", "fiscalDocument": fiscal}
        )
        assert (code, answer) == (400, {"error": {"code": "INVALID_ARGUMENT", "message": words}})
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Confirm(
                    pb.ConfirmRequest(receipt_id="h-1", fiscal_document=fiscal), timeout=10
                )
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                words,
            )
        held = agent.hold(receipt_from_json(receipt("h-1"))).to_json()
        assert held["state"] == "HELD"
    finally:
        server.stop()
        agent.close()
    again = cli("hold", receipt("h-1"), "--json")
    assert again.code == 0 and again.json()["state"] == "HELD"


# ------------------------------------------- a till-issued coupon in its offer's last second

ENDS_AT = "2026-11-30T23:59:59+03:00"  # the offer's end, in whole seconds
LAST_SECOND = "2026-11-30T23:59:59.500+03:00"  # a POS that stamps milliseconds


def _issuing(offer_id: str = "o-next", customer_id: str = "c-a") -> dict[str, Any]:
    return {
        "id": offer_id,
        "customerId": customer_id,
        "kind": "PERCENT_OFF",
        "skus": ["4601234000024"],
        "value": "10",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": ENDS_AT,
        "priority": 1,
        "rank": 1,
        "printable": True,
        "printText": "−10% на хлеб",
        "issueCoupon": True,
    }


def test_a_sale_in_the_last_second_of_an_issuing_offer_is_committed(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §2, §7, §13: an end written in whole seconds holds through that
    second, so a sale stamped 23:59:59.500 picks a printable offer ending 23:59:59, and an
    `issueCoupon` offer is printed with a new code valid from the sale's `at` to the
    offer's end. That code's validFrom (23:59:59.500) is after its validTo (23:59:59) by
    the instant, and the till refused its own coupon: the checkout failed (exit 1,
    "internal error") and the POS sold without loyalty, for an offer meant for the next
    visit. Now the code's window is read by the same rule (it holds through 23:59:59):
    the sale stands, the offer is printed and its code is issued; the hub takes the
    code's transaction (it checks a coupon with the same model) and puts the code in its
    next snapshot, which a till loads."""
    from datetime import UTC, datetime

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.loopback import import_doc

    from .test_coupons import outbox

    offers = [_issuing(), _issuing("o-boris", "c-b")]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    sale = cli("checkout", receipt("r-last", at=LAST_SECOND), "--json")
    assert sale.code == 0, sale.err
    assert sale.json()["printedOffers"] == ["o-next"]
    assert sale.json()["state"] == "CONFIRMED"
    # a Hold in that second, confirmed: Confirm picks the offers and issues the code then
    held = cli("hold", receipt("r-held", "2770000000024", at=LAST_SECOND), "--json")
    assert held.code == 0, held.err
    confirmed = cli("confirm", "r-held", "--json")
    assert confirmed.code == 0, confirmed.err
    assert confirmed.json()["printedOffers"] == ["o-boris"]
    # the code's transaction at the hub, and the hub's next snapshot at a till
    txs = outbox(tmp_path / "data")
    assert [t.kind for t in txs] == ["CHECKOUT", "COUPON_ISSUED", "CHECKOUT", "COUPON_ISSUED"]
    coupon = json.loads(txs[1].request_json)["coupon"]
    other = json.loads(txs[3].request_json)["coupon"]
    assert (coupon["validFrom"], coupon["validTo"]) == ("2026-11-30T23:59:59.500000+03:00", ENDS_AT)
    hub = SqliteHubStore(tmp_path / "hub.db")
    try:
        now = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
        master = {k: v for k, v in snapshot(offers=offers).items() if "ersion" not in k}
        import_doc(hub, master)
        hub.publish(now, 7 * 86400.0)
        hub.ingest("till-1", "", txs, now)
        assert [t.seq for t in hub.transactions("till-1")] == [1, 2, 3, 4]
        hub.publish(now.replace(hour=22), 7 * 86400.0)
        delta = hub.snapshot_doc(2, 1)
        assert sorted(c["code"] for c in delta["coupons"]) == [coupon["code"], other["code"]]
    finally:
        hub.close()
    loaded = cli("snapshot", "load", delta)
    assert loaded.code == 0, loaded.err
