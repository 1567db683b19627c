"""Review 27 (win27): the time rules — docs/CONTRACT.md §2 (the store's local time), §14
(offer windows) and §16 (points that expire) — probed at their boundaries through the
public doors (CLI `--json`, HTTP)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot

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
