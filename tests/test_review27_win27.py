"""Review 27 (win27): the time rules — docs/CONTRACT.md §2 (the store's local time), §14
(offer windows) and §16 (points that expire) — probed at their boundaries through the
public doors (CLI `--json`, HTTP)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, grpc_served, receipt, snapshot

CARD = "2770000000017"
MILK = "4601234000017"


def _http(server: HttpServer, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ---------------------------------------------------------------- §16 and §2: an ERP's "never"


def _never_in_utc() -> dict[str, Any]:
    snap = snapshot()
    snap["customers"][0]["expiring"] = [{"points": 300, "expiresAt": "9999-12-31T23:59:59Z"}]
    return snap


def test_a_batch_that_never_expires_written_in_utc_is_listed_not_a_crash(cli: CLI) -> None:
    """docs/CONTRACT.md §2 lets an `expiresAt` say 9999-12-31 (an ERP's "never"), §16 lists
    it in `expiring`. Written in UTC it is in the year 10000 in Moscow: every balance, quote
    and checkout of the customer failed with "internal error: OverflowError"."""
    assert cli("snapshot", "load", _never_in_utc()).code == 0
    run = cli("balance", CARD, "--at", "2026-11-23T10:00:00+03:00", "--json")
    assert run.code == 0, run.err
    assert run.json() == {
        "availablePoints": 1200,
        "pendingPoints": 0,
        "expiring": [{"points": 300, "expiresAt": "9999-12-31T23:59:59+00:00"}],
    }
    quote = cli("quote", receipt("q1", redeemPoints=-1), "--json")
    assert quote.code == 0, quote.err
    done = cli("checkout", receipt("r1", redeemPoints=-1), "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert result["redeemedPoints"] == 53  # spent from the batch that expires first
    assert result["balance"]["expiring"] == [
        {"points": 247, "expiresAt": "9999-12-31T23:59:59+00:00"}
    ]
    back = cli(
        "refund",
        {
            "refundId": "f1",
            "receiptId": "r1",
            "at": "2026-11-24T12:00:00+03:00",
            "lines": [{"sku": MILK, "qty": "2"}],
        },
        "--json",
    )
    assert back.code == 0, back.err
    assert back.json()["balance"]["availablePoints"] == 1200


def test_a_batch_that_never_expires_written_in_utc_over_http(
    agent: Agent, server: HttpServer
) -> None:
    agent.load_snapshot({**_never_in_utc(), "version": 2})
    status, body = _http(server, "/v1/balance", {"card": CARD, "at": "2026-11-23T10:00:00Z"})
    assert status == 200, body
    assert body["expiring"] == [{"points": 300, "expiresAt": "9999-12-31T23:59:59+00:00"}]
    status, body = _http(server, "/v1/checkout", receipt("r1", redeemPoints=-1))
    assert status == 200, body


def test_a_batch_that_never_expires_written_in_utc_over_grpc(agent: Agent) -> None:
    agent.load_snapshot({**_never_in_utc(), "version": 2})
    with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        answer = stub.Balance(pb.BalanceRequest(card=CARD, at="2026-11-23T10:00:00Z"), timeout=10)
    assert [(e.points, e.expires_at) for e in answer.expiring] == [
        (300, "9999-12-31T23:59:59+00:00")
    ]


# ---------------------------------------------------------------- §16 with §11: a hold open


def _load_expiring(cli: CLI, balance: int) -> None:
    """The customer with `balance` points, 100 of them expiring at 10:20 (no birthday)."""
    snap = snapshot()
    snap["customers"][0].update(
        {
            "balancePoints": balance,
            "birthday": None,
            "expiring": [{"points": 100, "expiresAt": "2026-11-23T10:20:00+03:00"}],
        }
    )
    assert cli("snapshot", "load", snap).code == 0


def _batch_then_hold(cli: CLI) -> None:
    """200 points, 100 of them expiring at 10:20; a hold at 10:15 reserves 50 of those."""
    _load_expiring(cli, 200)
    held = cli("hold", receipt("h1", at="2026-11-23T10:15:00+03:00", redeemPoints=50), "--json")
    assert held.code == 0, held.err
    assert held.json()["redeemedPoints"] == 50
    assert held.json()["balance"]["expiring"] == [
        {"points": 50, "expiresAt": "2026-11-23T10:20:00+03:00"}
    ]


BIG = [{"sku": MILK, "qty": "10", "priceMinor": 8990}]


def test_a_hold_reserves_points_of_a_batch_that_has_expired_by_the_next_sale(cli: CLI) -> None:
    """docs/CONTRACT.md §16, §11: the open hold's 50 points come out of the batch that
    expires at 10:20 (soonest first, at the hold's `at`), as its Confirm will take them.
    A sale at 10:25 has the 100 that never expire: it was capped at 50 (the hold's points
    were taken at 10:25, when only the never-expiring part was left) and its balance said
    50 less than after the hold's Confirm."""
    _batch_then_hold(cli)
    sale = receipt("r2", at="2026-11-23T10:25:00+03:00", redeemPoints=-1, lines=BIG)
    quoted = cli("quote", sale, "--json").json()
    assert quoted["redeemedPoints"] == 100
    assert quoted["balance"]["availablePoints"] == quoted["earnedPoints"]
    done = cli("checkout", sale, "--json").json()
    assert done["redeemedPoints"] == 100
    confirmed = cli("confirm", "h1", "--json").json()
    assert confirmed["state"] == "CONFIRMED"
    balance = cli("balance", CARD, "--at", "2026-11-23T10:30:00+03:00", "--json").json()
    assert balance["availablePoints"] == done["earnedPoints"] + confirmed["earnedPoints"]


def test_a_quote_beside_a_hold_of_expired_points_shows_no_debt(cli: CLI) -> None:
    """Only the expiring batch: its 50 held points would have gone at 10:20 anyway. A
    quote at 10:25 said -37 (the hold's 50 taken as a debt) where the customer, once the
    hold is confirmed, has the quote's own 13 and the hold's points earned."""
    _load_expiring(cli, 100)
    assert cli("hold", receipt("h1", redeemPoints=50), "--json").code == 0
    later = receipt("q2", at="2026-11-23T10:25:00+03:00", redeemPoints=-1)
    quoted = cli("quote", later, "--json").json()
    assert (quoted["redeemedPoints"], quoted["earnedPoints"]) == (0, 13)
    assert quoted["balance"] == {"availablePoints": 13, "pendingPoints": 0}


def test_a_confirm_beside_a_hold_of_expired_points_shows_no_debt(cli: CLI) -> None:
    """The same through Confirm (its balance is worked out again as the ledger stands)."""
    _load_expiring(cli, 100)
    assert cli("hold", receipt("h1", redeemPoints=50), "--json").code == 0
    later = receipt("h2", at="2026-11-23T10:25:00+03:00")
    assert cli("hold", later, "--json").json()["balance"]["availablePoints"] == 13
    confirmed = cli("confirm", "h2", "--json").json()
    assert confirmed["balance"] == {"availablePoints": 13, "pendingPoints": 0}
    assert confirmed["display"][-1] == "Бонусы: 13"
