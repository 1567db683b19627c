"""Review 22 (life22): a receipt's whole life through the real CLI and a real `tillpoint run`
over HTTP, in the combinations a POS meets (the contract §4, §6, §11, §12, §13).

Each figure is worked out by hand from the contract; nothing here is read back from the
code. The snapshot is the suite's base one (Анна gold 7.5 %, 1200 points; Борис base 3 %,
80 points; Вера's card blocked) plus the offers and coupons each test names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, PROGRAM, free_port, receipt, snapshot

ANNA, BORIS, VERA = "2770000000017", "2770000000024", "2770000000031"
NEW_CARD = "2770000000307"  # a valid EAN-13 no snapshot below knows at first
AT = "2026-11-10T12:00:00+03:00"
VALID = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-12-31T23:59:59+03:00"}
CHEESE_10 = {
    "id": "o-c",
    "campaignId": "camp-c",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "value": "10",
    "skus": ["4601234000055"],
    **VALID,
}
BREAD_20_COUPON = {
    "id": "o-cp",
    "campaignId": "camp-cp",
    "kind": "PERCENT_OFF",
    "value": "20",
    "skus": ["4601234000024"],
    "couponRequired": True,
    **VALID,
}
COUPON = {"code": "SORRY-7K2Q9", "offerId": "o-cp", **VALID}


def refund(refund_id: str, receipt_id: str, sku: str, qty: str, at: str) -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": at,
        "lines": [{"sku": sku, "qty": qty}],
    }


# ------------------------------------------------------------ an UNKNOWN card's points


def test_an_unknown_cards_points_reach_its_later_owner_through_the_hub_never_twice(
    cli: CLI,
) -> None:
    """§4: the hub settles an UNKNOWN card's points once it knows the card (CONTRACT §4's
    decision): a snapshot naming the owner before the hub counted the sale shows none of
    them; the one whose appliedThrough counts the sale and its refund shows what the hub
    settled, and the till adds nothing on top."""
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = receipt(
        "u1",
        card=NEW_CARD,
        at=AT,
        lines=[{"sku": "4601234000024", "qty": "2", "priceMinor": 50000}],
    )
    done = cli("checkout", sale, "--json")
    assert done.code == 0, done.err
    # base tier 3 %: 100000 × 3 / 10000 = 30 points, for the hub to settle; seq 1
    assert done.json()["card"] == {"status": "UNKNOWN"}
    assert (done.json()["earnedPoints"], done.json()["seq"], done.json()["balance"]) == (
        30,
        1,
        None,
    )

    owner = {"id": "c-n", "firstName": "Нина", "tier": "gold", "balancePoints": 0}
    known = snapshot(version=2)
    known["customers"].append(owner)
    known["cards"].append({"number": NEW_CARD, "customerId": "c-n", "status": "ACTIVE"})
    assert cli("snapshot", "load", known).code == 0  # the hub has not counted seq 1 yet
    assert cli("identify", NEW_CARD, "--json").json()["status"] == "FOUND"
    assert cli("balance", NEW_CARD, "--at", AT, "--json").json() == {
        "availablePoints": 0,
        "pendingPoints": 0,
    }

    back = cli(
        "refund", refund("fu1", "u1", "4601234000024", "1", "2026-11-11T10:00:00+03:00"), "--json"
    )
    assert back.code == 0, back.err
    # floor(30 × 1 / 2) = 15 taken back, at the hub; the sale's customer was unknown
    assert back.json()["takenBackPoints"] == 15 and back.json()["balance"] is None
    assert back.json()["seq"] == 2

    settled = snapshot(version=3, appliedThrough={"till-1": 2})
    settled["customers"].append({**owner, "balancePoints": 15})  # 30 − 15, as the hub counted
    settled["cards"] = known["cards"]
    assert cli("snapshot", "load", settled).code == 0
    assert cli("balance", NEW_CARD, "--at", "2026-11-12T10:00:00+03:00", "--json").json() == {
        "availablePoints": 15,
        "pendingPoints": 0,
    }


# ------------------------------------------------------------ refunds in combination


def test_refunds_of_one_line_in_three_parts_give_back_and_take_back_exactly_the_whole(
    cli: CLI,
) -> None:
    """§6 by hand: Борис (80 points, 3 %) buys 3 × 100.00 spending 50 points; 250.00 paid
    in money earns 7. Returning 1, 1, 1: floor(50r/3) − before and floor(7r/3) − before."""
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = receipt(
        "p1",
        card=BORIS,
        at=AT,
        lines=[{"sku": "4601234000024", "qty": "3", "priceMinor": 10000}],
        redeemPoints=50,
    )
    done = cli("checkout", sale, "--json").json()
    assert (done["redeemedPoints"], done["earnedPoints"], done["balance"]["availablePoints"]) == (
        50,
        7,
        37,
    )
    expected = [(16, 2, 51), (17, 2, 66), (17, 3, 80)]
    for i, (returned, taken, available) in enumerate(expected):
        at = f"2026-11-11T1{i}:00:00+03:00"
        got = cli("refund", refund(f"f{i}", "p1", "4601234000024", "1", at), "--json")
        assert got.code == 0, got.err
        doc = got.json()
        assert (doc["returnedPoints"], doc["takenBackPoints"]) == (returned, taken)
        assert doc["balance"] == {"availablePoints": available, "pendingPoints": 0}
        assert doc["negativeBalance"] is False
    # 16 + 17 + 17 = 50 given back, 2 + 2 + 3 = 7 taken back: the balance is 80 again
    over = cli(
        "refund", refund("f9", "p1", "4601234000024", "1", "2026-11-12T10:00:00+03:00"), "--json"
    )
    assert (over.code, over.out) == (2, "") and len(over.err.strip().splitlines()) == 1


def test_a_coupon_receipt_refunded_keeps_its_coupon_used(cli: CLI) -> None:
    """§13: a refund does not give a coupon back; its points go back as for any receipt."""
    snap = snapshot(offers=[BREAD_20_COUPON], coupons=[COUPON])
    assert cli("snapshot", "load", snap).code == 0
    bread = [{"sku": "4601234000024", "qty": "1", "priceMinor": 10000}]
    sale = receipt("c1", card=ANNA, at=AT, lines=bread, coupons=["sorry 7k2q9", "SORRY-7K2Q9"])
    done = cli("checkout", sale, "--json").json()
    assert [(c["status"], c["reason"]) for c in done["coupons"]] == [
        ("APPLIED", ""),
        ("REJECTED", "DUPLICATE"),
    ]
    # 20 % off 100.00; 80.00 × 7.5 % = 6 points
    assert (done["lines"][0]["discountMinor"], done["earnedPoints"]) == (2000, 6)
    back = cli(
        "refund", refund("fc1", "c1", "4601234000024", "1", "2026-11-11T10:00:00+03:00"), "--json"
    )
    assert back.code == 0 and back.json()["takenBackPoints"] == 6
    again = cli(
        "quote", receipt("c2", card=ANNA, at=AT, lines=bread, coupons=["SORRY-7K2Q9"]), "--json"
    )
    assert again.json()["coupons"][0]["reason"] == "ALREADY_USED"
    assert again.json()["lines"][0]["discountMinor"] == 0


def test_confirm_commits_the_held_figures_after_a_snapshot_blocks_the_card_or_cuts_points(
    cli: CLI,
) -> None:
    """§11: Confirm commits exactly the held result, no pricing again (CONTRACT §11's
    decision): the payment was taken on it."""
    assert cli("snapshot", "load", snapshot()).code == 0
    big = [{"sku": "4601234000024", "qty": "1", "priceMinor": 100000}]
    boris = receipt("b1", card=BORIS, at=AT, lines=big, redeemPoints=-1)
    anna = receipt("a1", card=ANNA, at=AT, lines=big, redeemPoints=-1)
    assert cli("hold", boris, "--json").json()["redeemedPoints"] == 80
    # 30 % of 1000.00 is 300 points; Анна has 1200
    assert cli("hold", anna, "--json").json()["redeemedPoints"] == 300
    later = snapshot(version=2)
    for card in later["cards"]:
        if card["number"] == BORIS:
            card["status"] = "BLOCKED"
    for customer in later["customers"]:
        if customer["id"] == "c-a":
            customer["balancePoints"] = 100
    assert cli("snapshot", "load", later).code == 0
    done = cli("confirm", "b1", "--json")
    assert done.code == 0, done.err
    assert (done.json()["state"], done.json()["redeemedPoints"]) == ("CONFIRMED", 80)
    done = cli("confirm", "a1", "--json")
    assert done.code == 0, done.err
    # 100 − 300 + floor(700.00 × 7.5 %) = 100 − 300 + 52
    assert done.json()["redeemedPoints"] == 300
    assert done.json()["balance"] == {"availablePoints": -148, "pendingPoints": 0}


def test_store_and_till_ids_are_optional_and_the_offline_limit_is_the_cards_day(
    cli: CLI,
) -> None:
    """CONTRACT §5's decision: `storeId`/`tillId` may be left out and do not split the
    offline limit (500 a card a store-day: the local date of `at`)."""
    snap = snapshot()
    snap["customers"][0]["balancePoints"] = 3000
    assert cli("snapshot", "load", snap).code == 0
    big = [{"sku": "4601234000024", "qty": "1", "priceMinor": 1_000_000}]
    first = receipt("o1", card=ANNA, at=AT, lines=big, redeemPoints=300)
    assert cli("checkout", first, "--json").json()["redeemedPoints"] == 300
    bare = receipt("o2", card=ANNA, at=AT, lines=big)
    del bare["storeId"], bare["tillId"]
    done = cli("checkout", {**bare, "redeemPoints": 300}, "--json")
    assert done.code == 0, done.err
    assert done.json()["redeemedPoints"] == 200  # what is left of 500 today
    other = receipt("o3", card=ANNA, at=AT, lines=big, redeemPoints=300, storeId="s2")
    assert cli("checkout", other, "--json").json()["redeemedPoints"] == 0


# ------------------------------------------------------------ a real `tillpoint run`


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, raw = self.call("POST", path, body)
        return status, json.loads(raw)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Http, Path, dict[str, str]]]:
    exe = Path(sys.executable).with_name("tillpoint")
    if not exe.exists():
        pytest.skip("the tillpoint entry point is not installed")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = "till-1"
    env["TILLPOINT_HTTP__LISTEN"] = f"127.0.0.1:{free_port()}"
    env["TILLPOINT_SERVER__LISTEN"] = f"127.0.0.1:{free_port()}"
    env["TILLPOINT_METRICS__ENABLED"] = "false"
    http = Http(int(env["TILLPOINT_HTTP__LISTEN"].rsplit(":", 1)[1]))
    proc = subprocess.Popen(
        [str(exe), "--data-dir", str(data), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.call("GET", "/healthz")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the HTTP interface never answered"
                time.sleep(0.1)
        yield http, data, {**env, "EXE": str(exe)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def load(env: dict[str, str], data: Path, doc: dict[str, Any], tmp: Path) -> None:
    file = tmp / f"snapshot-{doc['version']}.json"
    file.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    run_env = {k: v for k, v in env.items() if k != "EXE"}
    done = subprocess.run(
        [env["EXE"], "--data-dir", str(data), "snapshot", "load", str(file)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_receipts_life_over_http_on_a_running_agent(
    served: tuple[Http, Path, dict[str, str]], tmp_path: Path
) -> None:
    http, data, env = served
    status, body = http.call("GET", "/healthz")
    assert status == 503 and json.loads(body)["error"]["code"] == "UNAVAILABLE"
    cheese = [{"sku": "4601234000055", "qty": "2", "priceMinor": 10000}]
    sale = receipt("h1", card=ANNA, at=AT, lines=cheese, redeemPoints=-1)
    status, doc = http.post("/v1/hold", sale)
    assert status == 412 and "no snapshot loaded" in doc["error"]["message"]

    program = {**PROGRAM, "holdTtlSeconds": 600}
    first = snapshot(program=program, offers=[CHEESE_10, BREAD_20_COUPON], coupons=[COUPON])
    load(env, data, first, tmp_path)
    deadline = time.monotonic() + 10
    while http.call("GET", "/healthz")[0] != 200:
        assert time.monotonic() < deadline, "never healthy after the snapshot"
        time.sleep(0.1)

    # Hold: 10 % off 200.00; 30 % of 180.00 caps redemption at 54 points; nothing earned yet
    status, held = http.post("/v1/hold", sale)
    assert status == 200 and held["state"] == "HELD" and held["holdExpiresAt"]
    assert (held["discountMinor"], held["redeemedPoints"], held["printedOffers"]) == (2000, 54, [])
    assert http.post("/v1/balance", {"card": ANNA, "at": AT})[1]["availablePoints"] == 1200
    assert http.post("/v1/hold", {**sale, "redeemPoints": 5})[0] == 409

    # the offer goes away before the payment is done: Confirm commits the held figures
    v2 = snapshot(version=2, program=program, offers=[BREAD_20_COUPON], coupons=[COUPON])
    load(env, data, v2, tmp_path)
    status, raw = http.call("POST", "/v1/confirm", {"receiptId": "h1", "fiscalDocument": "FD-1"})
    confirmed = json.loads(raw)
    assert status == 200 and confirmed["state"] == "CONFIRMED" and confirmed["seq"] == 1
    for key in ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor"):
        assert confirmed[key] == held[key], key
    # 126.00 paid in money × 7.5 % = 9 points
    assert confirmed["earnedPoints"] == 9
    assert http.call("POST", "/v1/confirm", {"receiptId": "h1", "fiscalDocument": "X"}) == (
        200,
        raw,
    )
    status, doc = http.post("/v1/cancel", {"receiptId": "h1"})
    assert status == 412 and "use a refund" in doc["error"]["message"]

    # two refunds of one unit each: floor(54/2) = 27 and floor(9/2) = 4, then the rest
    status, one = http.post(
        "/v1/refund", refund("f1", "h1", "4601234000055", "1", "2026-11-11T10:00:00+03:00")
    )
    assert status == 200 and (one["returnedPoints"], one["takenBackPoints"]) == (27, 4)
    status, two = http.post(
        "/v1/refund", refund("f2", "h1", "4601234000055", "1", "2026-11-11T11:00:00+03:00")
    )
    assert status == 200 and (two["returnedPoints"], two["takenBackPoints"]) == (27, 5)
    assert two["balance"] == {"availablePoints": 1200, "pendingPoints": 0}
    assert (
        http.post(
            "/v1/refund", refund("f3", "h1", "4601234000055", "1", "2026-11-12T10:00:00+03:00")
        )[0]
        == 412
    )
    assert (
        http.post(
            "/v1/refund", refund("f1", "h1", "4601234000055", "2", "2026-11-11T10:00:00+03:00")
        )[0]
        == 409
    )

    # a coupon held by one receipt is used for every other until the hold is cancelled
    bread = [{"sku": "4601234000024", "qty": "1", "priceMinor": 10000}]
    with_code = receipt("h2", card=ANNA, at=AT, lines=bread, coupons=["SORRY-7K2Q9"])
    status, doc = http.post("/v1/hold", with_code)
    assert status == 200 and doc["coupons"][0]["status"] == "APPLIED"
    other = {**with_code, "receiptId": "q2"}
    assert http.post("/v1/quote", other)[1]["coupons"][0]["reason"] == "ALREADY_USED"
    status, cancelled = http.post("/v1/cancel", {"receiptId": "h2"})
    assert status == 200 and cancelled["state"] == "CANCELLED"
    assert http.post("/v1/quote", other)[1]["coupons"][0]["status"] == "APPLIED"
    status, doc = http.post("/v1/confirm", {"receiptId": "h2"})
    assert status == 412 and "hold expired" in doc["error"]["message"]
    status, doc = http.post(
        "/v1/refund", refund("f4", "h2", "4601234000024", "1", "2026-11-11T10:00:00+03:00")
    )
    assert status == 404 and doc["error"]["code"] == "NOT_FOUND"

    # a hold that runs out (2 s) gives its coupon back and cannot be confirmed
    program = {**program, "holdTtlSeconds": 2}
    v3 = snapshot(version=3, program=program, offers=[BREAD_20_COUPON], coupons=[COUPON])
    load(env, data, v3, tmp_path)
    status, doc = http.post("/v1/hold", {**with_code, "receiptId": "h3"})
    assert status == 200 and doc["coupons"][0]["status"] == "APPLIED"
    time.sleep(2.5)
    status, doc = http.post("/v1/confirm", {"receiptId": "h3"})
    assert status == 412 and doc["error"]["code"] == "FAILED_PRECONDITION"
    status, doc = http.post("/v1/checkout", {**with_code, "receiptId": "h4"})
    assert status == 200 and doc["coupons"][0]["status"] == "APPLIED"

    # blocked card, unknown receipt
    assert http.post("/v1/checkout", receipt("h5", card=VERA, at=AT))[0] == 412
    assert http.post("/v1/confirm", {"receiptId": "nope"})[0] == 404
