"""Review 36 (rev36a): session 35's agent-side changes read again, adversarially
(CONTRACT §10, §11, §12). Each test marked "failed before the fix" did; the others pin
what was checked and found right. Real parts: the agent on real SQLite files (a ledger
that cannot grow: SQLite's own "database or disk is full"), its HTTP door on a real
server, real sockets.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import StorageError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import receipt, snapshot

# ---------------------------------------- 1. storageError: what a stored sale is

SKU = "4601234000017"


def _refund(refund_id: str, receipt_id: str) -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": SKU, "qty": "1"}],
    }


def _post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        assert answer.status == 200
        found: dict[str, Any] = json.loads(answer.read())
        return found


@pytest.fixture
def full_till(tmp_path: Path) -> Iterator[tuple[Agent, HttpServer]]:
    """A till with ten sales stored, then a ledger that cannot grow (its file held at the
    pages it has: SQLite's own "database or disk is full"), filled until a Checkout is
    refused; its HTTP door on a real server."""
    from tillpoint.agent.results import receipt_from_json

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    for i in range(10):
        assert agent.checkout(receipt_from_json(receipt(f"sold-{i}"))).state == "CONFIRMED"
    pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
    agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
    for i in range(500):
        try:
            agent.checkout(receipt_from_json(receipt(f"fill-{i}")))
        except StorageError as exc:
            assert "disk is full" in exc.message
            break
    else:
        raise AssertionError("the ledger never filled")
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    try:
        yield agent, srv
    finally:
        srv.stop()
        agent.close()


def test_a_hold_or_refund_stored_on_a_full_ledger_leaves_storage_error_while_sales_fail(
    full_till: tuple[Agent, HttpServer],
) -> None:
    """CONTRACT §10 (`/healthz`'s `storageError`: "sales are refused for storage since
    `storageErrorAt`", cleared when a sale is stored again). On a ledger that cannot
    grow a Hold (one small row) and a Refund still commit while every Checkout and every
    Confirm (the sale's receipt rows) is refused: review 35 counted a Hold's and a
    Refund's commit as a sale stored, so `/healthz`, gRPC's Status and the metric said
    the till was well after each, and the ERROR was logged again at the next refused
    Confirm (the sign flapped while no sale could be stored). Failed before the fix."""
    agent, srv = full_till
    said = _healthz(srv.port)["storageError"]
    assert "disk is full" in said
    status, held = _post(srv.port, "/v1/hold", receipt("held-1"))
    assert (status, held["state"]) == (200, "HELD")  # a small row still fits
    assert _healthz(srv.port).get("storageError") == said
    status, error = _post(srv.port, "/v1/confirm", {"receiptId": "held-1"})
    assert status == 503 and error["error"]["code"] == "UNAVAILABLE"  # the payment's step refused
    status, refunded = _post(srv.port, "/v1/refund", _refund("rf-1", "sold-0"))
    assert status == 200 and refunded["refundId"] == "rf-1"  # a refund still fits
    assert _healthz(srv.port).get("storageError") == said
    assert agent.status().to_json()["storageError"] == said  # gRPC's Status, the metric
    status, error = _post(srv.port, "/v1/checkout", receipt("sale-1"))
    assert status == 503 and error["error"]["code"] == "UNAVAILABLE"
    # room again: the Confirm stores the sale, and the sign clears
    agent._ledger.execute("PRAGMA max_page_count = 1073741823")
    status, done = _post(srv.port, "/v1/confirm", {"receiptId": "held-1"})
    assert (status, done["state"]) == (200, "CONFIRMED")
    assert "storageError" not in _healthz(srv.port)
    assert agent.status().to_json()["storageErrorAt"] == ""


def test_a_confirm_answered_from_storage_that_follows_a_step_leaves_storage_error(
    tmp_path: Path,
) -> None:
    """CONTRACT §10, §11. A Confirm sent again for a receipt already confirmed writes no
    sale; if NTP steps the clock while it waits for the agent's lock, its transaction
    moves the open holds by the step (rows rewritten in place, which a full ledger still
    takes). Review 35 counted any row changed in a sale's transaction as a sale stored,
    so that retry cleared `storageError` while every new sale was refused. Failed
    before the fix (the sign is cleared now by a receipt committed, nothing else)."""
    from datetime import datetime

    from tillpoint.agent.results import receipt_from_json

    from .conftest import SteppingClock
    from .test_review30_memo30 import ANNA, MILK, sale
    from .test_review35_rev35 import _stepped_while_waiting_for_the_lock

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "till", "till-1", clock=clock, monotonic=clock.steady)
    try:
        program = {**snapshot()["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**snapshot(program=program), "version": 1, "baseVersion": 0})
        line = {"sku": MILK, "qty": "1", "priceMinor": 100}
        assert agent.hold(receipt_from_json(sale("open", clock(), card=ANNA, lines=[line])))
        assert agent.checkout(receipt_from_json(sale("done", clock(), lines=[line])))
        pages = agent._ledger.execute("PRAGMA page_count").fetchone()[0]
        agent._ledger.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        refused = None
        for i in range(500):
            body = sale(f"fill-{i}", clock(), lines=[line])
            try:
                agent.checkout(receipt_from_json(body))
            except StorageError:
                refused = body
                break
        assert refused is not None
        said = agent.status().to_json()["storageError"]
        assert "disk is full" in said
        agent.sweep_holds()  # the hold timer's round: the clock's mark made
        expires = agent._life("open").expires_at
        answers = _stepped_while_waiting_for_the_lock(
            agent, clock, "confirm", lambda: agent.confirm("done"), 3600
        )
        assert not isinstance(answers[0], Exception), answers[0]
        assert answers[0].state == "CONFIRMED"  # the stored answer
        assert agent._life("open").expires_at > expires  # the step followed, stored
        assert agent.status().to_json()["storageError"] == said
        with pytest.raises(StorageError):
            agent.checkout(receipt_from_json(refused))
    finally:
        agent.close()
