"""Review 31 (spec31b): the receipt's life (CONTRACT §11) through the real doors — HTTP/JSON
(§12) and gRPC on one `Agent`, as `tillpoint run` serves them — with a basket deal (§15),
a coupon (§13) and redemption against the day's offline limit (§5 step 4, §9).

Every figure is worked out by hand from the contract, not read back from the code. The
snapshot: Анна gold 10 %, 1000 points, offline limit 500 a day, holds of 600 s;
m-1 "3 for 2" on bread; cp-1 20 % off milk with a coupon (K1).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import PROGRAM, ManualClock, grpc_served, snapshot

TIMEOUT = 10
ANNA = "2770000000017"
MILK, BREAD = "4601234000017", "4601234000024"
AT = "2026-11-25T12:00:00+03:00"
VALID = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-12-31T23:59:59+03:00"}
TIERS = [{"code": "base", "accrualPercent": "5"}, {"code": "gold", "accrualPercent": "10"}]
OFFERS = [
    {"id": "m-1", "campaignId": "camp-m", "kind": "MULTIBUY", "skus": [BREAD], "buyQty": "2",
     "freeQty": "1", **VALID},
    {"id": "cp-1", "campaignId": "camp-c", "kind": "PERCENT_OFF", "skus": [MILK], "value": "20",
     "couponRequired": True, **VALID},
]  # fmt: skip


def sale(receipt_id: str, lines: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"receiptId": receipt_id, "at": AT, "card": ANNA, "lines": lines, **more}


def line(sku: str, qty: str, price: int) -> dict[str, Any]:
    return {"sku": sku, "qty": qty, "priceMinor": price}


@dataclass
class Doors:
    """One agent behind its HTTP and gRPC doors, on a wall clock the test moves."""

    agent: Agent
    http_port: int
    stub: pb_grpc.PosAgentStub
    clock: ManualClock

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body, ensure_ascii=False).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def grpc(self, call: str, request: Any) -> Any:
        """The answer as its proto3 JSON (the HTTP door's document), or the status code."""
        if isinstance(request, dict):
            kind = {"Confirm": pb.ConfirmRequest, "Cancel": pb.CancelRequest}.get(call)
            kind = kind or (pb.Refund if call == "Refund" else pb.Receipt)
            request = json_format.ParseDict(request, kind())
        try:
            answer = getattr(self.stub, call)(request, timeout=TIMEOUT)
        except grpc.RpcError as err:
            return err.code(), err.details()
        return json_format.MessageToDict(answer)


@pytest.fixture
def doors(tmp_path: Path) -> Iterator[Doors]:
    from tillpoint.agent.http_api import HttpServer

    clock = ManualClock(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    agent = Agent(tmp_path / "data", "till-1", clock=clock)
    program = {**PROGRAM, "tiers": TIERS, "holdTtlSeconds": 600}
    customers = [
        {"id": "c-a", "firstName": "Анна", "tier": "gold", "birthday": "1990-06-15",
         "balancePoints": 1000},
    ]  # fmt: skip
    cards = [{"number": ANNA, "customerId": "c-a", "status": "ACTIVE"}]
    coupons = [{"code": "K1", "offerId": "cp-1", **VALID}]
    agent.load_snapshot(
        snapshot(program=program, customers=customers, cards=cards, offers=OFFERS, coupons=coupons)
    )
    http = HttpServer(agent, "127.0.0.1:0")
    http.start()
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Doors(agent, http.port, pb_grpc.PosAgentStub(channel), clock)
    finally:
        http.stop()
        agent.close()


FIGURES = ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor")


def figures(doc: dict[str, Any]) -> tuple[Any, ...]:
    """The money and points of a result, in proto3 JSON as HTTP writes it (int64 figures as
    numbers; gRPC's MessageToDict writes them as strings and leaves zeros out)."""
    return tuple(json.dumps(doc.get(k), sort_keys=True) for k in FIGURES)


def test_a_held_deal_is_answered_alike_at_both_doors_and_a_conflict_at_each(doors: Doors) -> None:
    """§11: Hold at one door, the same body at the other answers the stored hold; another
    body under the id is a conflict at both (409, ALREADY_EXISTS), for Hold and Checkout;
    Checkout of the held body confirms it; Confirm and Hold again answer the confirmed
    result; Cancel of it is refused at both ("use a refund")."""
    body = sale("h1", [line(BREAD, "3", 6000)], redeemPoints=-1)
    status, held = doors.post("/v1/hold", body)
    # m-1: one complete group of 3, the last unit free: floor(18000 × 1 / 3) = 6000;
    # 12000 left, 30 % → 36 points (capacity 120, offline 500, balance 1000); 8400 paid → 8
    assert status == 200 and held["state"] == "HELD"
    assert held["lines"] == [
        {"sku": BREAD, "amountMinor": 18000, "discountMinor": 6000, "offerId": "m-1",
         "redeemedMinor": 3600, "earnedPoints": 8},
    ]  # fmt: skip
    assert (held["redeemedPoints"], held["payableMinor"], held["printedOffers"]) == (36, 8400, [])
    again = doors.grpc("Hold", body)
    assert again["state"] == "HELD" and again["holdExpiresAt"] == held["holdExpiresAt"]
    assert again["lines"][0]["offerId"] == "m-1" and again["redeemedPoints"] == "36"

    other = {**body, "redeemPoints": 10}
    for call, path in (("Hold", "/v1/hold"), ("Checkout", "/v1/checkout")):
        assert doors.grpc(call, other)[0] == grpc.StatusCode.ALREADY_EXISTS, call
        status, doc = doors.post(path, other)
        assert status == 409 and doc["error"]["code"] == "ALREADY_EXISTS", path

    status, done = doors.post("/v1/checkout", body)  # Checkout = Hold + Confirm: confirms h1
    assert status == 200 and (done["state"], done["seq"]) == ("CONFIRMED", 1)
    assert figures(done) == figures(held) and "holdExpiresAt" not in done
    # the balance at at: 1000 − 36 + 8
    assert done["balance"] == {"availablePoints": 972, "pendingPoints": 0}
    confirmed = doors.grpc("Confirm", {"receiptId": "h1", "fiscalDocument": "ФД-1"})
    assert confirmed["state"] == "CONFIRMED" and confirmed["seq"] == "1"
    assert doors.post("/v1/hold", body) == (200, done)
    assert doors.post("/v1/confirm", {"receiptId": "h1"}) == (200, done)
    code, message = doors.grpc("Cancel", {"receiptId": "h1"})
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "use a refund" in message
    status, doc = doors.post("/v1/cancel", {"receiptId": "h1"})
    assert status == 412 and "use a refund" in doc["error"]["message"]


def test_a_hold_reserves_until_exactly_its_ttl_then_confirm_is_refused(doors: Doors) -> None:
    """§11: a hold expires holdTtlSeconds after it was placed: at 599 s it still reserves
    its points (the day's offline limit and the balance) and can be confirmed; at exactly
    600 s it reserves nothing and Confirm is refused at both doors; a Cancel then answers
    CANCELLED, and Confirm says it was cancelled."""
    small = sale("h2", [line(MILK, "1", 10000)], redeemPoints=10)
    status, h2 = doors.post("/v1/hold", small)
    # 10 points asked ≤ 30 % of 10000 (30): 10; 9000 paid → 9
    assert status == 200 and (h2["redeemedPoints"], h2["earnedPoints"]) == (10, 9)
    doors.clock.advance(599)
    done = doors.grpc("Confirm", {"receiptId": "h2"})
    assert done["state"] == "CONFIRMED" and done["seq"] == "1"
    assert done["balance"] == {"availablePoints": "999"}  # 1000 − 10 + 9; zeros left out

    big = [line(MILK, "1", 100000)]
    status, h3 = doors.post("/v1/hold", sale("h3", big, redeemPoints=-1))
    # 30 % of 100000 → 300; balance 999; the day's offline limit 500 − 10 = 490: 300
    assert status == 200 and h3["redeemedPoints"] == 300
    quote = sale("q4", big, redeemPoints=-1)
    doors.clock.advance(599)
    # beside the open hold: balance 999 − 300 = 699, offline limit 490 − 300 = 190: 190
    assert doors.post("/v1/quote", quote)[1]["redeemedPoints"] == 190
    assert doors.grpc("Quote", quote)["redeemedPoints"] == "190"
    doors.clock.advance(1)  # exactly holdTtlSeconds after the hold: it has run out
    assert doors.post("/v1/quote", quote)[1]["redeemedPoints"] == 300
    assert doors.grpc("Quote", quote)["redeemedPoints"] == "300"
    code, message = doors.grpc("Confirm", {"receiptId": "h3"})
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "hold expired" in message
    status, doc = doors.post("/v1/confirm", {"receiptId": "h3"})
    assert status == 412 and doc["error"]["code"] == "FAILED_PRECONDITION"
    status, cancelled = doors.post("/v1/cancel", {"receiptId": "h3"})
    assert status == 200 and cancelled["state"] == "CANCELLED"
    assert doors.grpc("Cancel", {"receiptId": "h3"})["state"] == "CANCELLED"
    code, message = doors.grpc("Confirm", {"receiptId": "h3"})
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cancelled" in message


def test_a_coupon_held_at_one_door_is_used_at_the_other_until_the_cancel(doors: Doors) -> None:
    """§13 with §11: the hold uses K1 on this till at once (ALREADY_USED for any other
    receipt, at either door); its cancel gives it back; a refund of a receipt never
    confirmed, and a Confirm of a receipt never held, are NOT_FOUND at both doors."""
    milk = [line(MILK, "1", 10000)]
    held = doors.grpc("Hold", sale("h5", milk, coupons=["k-1"]))
    # 20 % of 10000 = 2000; 8000 → 8
    assert held["coupons"] == [{"code": "K1", "status": "APPLIED"}]
    assert held["discountMinor"] == "2000" and held["earnedPoints"] == "8"
    status, other = doors.post("/v1/checkout", sale("r6", milk, coupons=["K1"]))
    assert status == 200
    assert other["coupons"] == [{"code": "K1", "status": "REJECTED", "reason": "ALREADY_USED"}]
    assert (other["discountMinor"], other["earnedPoints"], other["seq"]) == (0, 10, 1)

    refund = {"refundId": "f5", "receiptId": "h5", "at": AT, "lines": [{"sku": MILK, "qty": "1"}]}
    status, doc = doors.post("/v1/refund", refund)
    assert status == 404 and doc["error"]["code"] == "NOT_FOUND"
    assert doors.grpc("Refund", refund)[0] == grpc.StatusCode.NOT_FOUND
    status, doc = doors.post("/v1/confirm", {"receiptId": "nope"})
    assert status == 404 and doc["error"]["code"] == "NOT_FOUND"
    assert doors.grpc("Confirm", {"receiptId": "nope"})[0] == grpc.StatusCode.NOT_FOUND

    status, cancelled = doors.post("/v1/cancel", {"receiptId": "h5"})
    assert status == 200 and cancelled["state"] == "CANCELLED"
    used = doors.grpc("Checkout", sale("r7", milk, coupons=["K1"]))
    assert used["coupons"] == [{"code": "K1", "status": "APPLIED"}] and used["seq"] == "2"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{doors.http_port}/v1/status", timeout=TIMEOUT
    ) as answer:
        status_doc = json.loads(answer.read())
    # r6 and r7 only: a hold, its cancel, a refused refund or confirm are no transactions
    assert (status_doc["lastSeq"], status_doc["outboxDepth"]) == (2, 2)


# ------------------------------------------------------------ a real `tillpoint run`


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], int, int]]:
    """`tillpoint run` on a data directory seeded with a snapshot (m-1, holds of 600 s):
    (data dir, the environment, HTTP port, gRPC port)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import free_port

    exe = Path(sys.executable).with_name("tillpoint")
    if not exe.exists():
        pytest.skip("the tillpoint entry point is not installed")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    http_port, grpc_port = free_port(), free_port()
    env.update(
        TILLPOINT_DEVICE_ID="till-1",
        TILLPOINT_HTTP__LISTEN=f"127.0.0.1:{http_port}",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{grpc_port}",
        TILLPOINT_METRICS__ENABLED="false",
    )
    program = {**PROGRAM, "tiers": TIERS, "holdTtlSeconds": 600}
    customers = [{"id": "c-a", "firstName": "Анна", "tier": "gold", "balancePoints": 1000}]
    cards = [{"number": ANNA, "customerId": "c-a", "status": "ACTIVE"}]
    seed = tmp_path / "snapshot.json"
    seed.write_text(
        json.dumps(snapshot(program=program, customers=customers, cards=cards, offers=OFFERS[:1])),
        encoding="utf-8",
    )
    loaded = subprocess.run(
        [str(exe), "--data-dir", str(data), "snapshot", "load", str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    proc = subprocess.Popen(
        [str(exe), "--data-dir", str(data), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/healthz", timeout=TIMEOUT
                ) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "tillpoint run ended"
            assert time.monotonic() < deadline, "tillpoint run never became healthy"
            time.sleep(0.1)
        yield data, {**env, "EXE": str(exe)}, http_port, grpc_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_one_receipts_life_across_the_cli_http_and_grpc_of_a_running_agent(
    running: tuple[Path, dict[str, str], int, int], tmp_path: Path
) -> None:
    """§11 at the three doors of one `tillpoint run`: a hold made with the CLI is the
    same document over HTTP (byte for byte, §12); another body under its id is a conflict
    at each door (exit 2, ALREADY_EXISTS, 409); Confirm at one door is the same answer at
    the others; Cancel of the confirmed receipt, Confirm of an unknown id and a refund of a
    receipt never committed are refused at each (exit 2; FAILED_PRECONDITION / NOT_FOUND;
    412 / 404)."""
    import subprocess

    data, env, http_port, grpc_port = running
    files = iter(range(100))

    def cli(*args: Any) -> subprocess.CompletedProcess[str]:
        argv = []
        for arg in args:
            if isinstance(arg, dict):
                path = tmp_path / f"in-{next(files)}.json"
                path.write_text(json.dumps(arg, ensure_ascii=False), encoding="utf-8")
                arg = str(path)
            argv.append(arg)
        run_env = {k: v for k, v in env.items() if k != "EXE"}
        return subprocess.run(
            [env["EXE"], "--data-dir", str(data), *argv],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def http(path: str, body: Any) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    body = sale("h1", [line(BREAD, "3", 6000)], redeemPoints=-1)
    held = cli("hold", body, "--json")
    assert held.returncode == 0, held.stderr
    doc = json.loads(held.stdout)
    # 3 for 2: 6000 off; 30 % of 12000 → 36 points; 8400 paid → 8
    assert (doc["state"], doc["discountMinor"], doc["redeemedPoints"]) == ("HELD", 6000, 36)
    assert http("/v1/hold", body) == (200, held.stdout.encode())

    other = {**body, "redeemPoints": 1}
    refused = cli("checkout", other, "--json")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "another body" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert http("/v1/hold", other)[0] == 409
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Hold(json_format.ParseDict(other, pb.Receipt()), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

        status, confirmed = http("/v1/confirm", {"receiptId": "h1", "fiscalDocument": "ФД-7"})
        assert status == 200
        done = json.loads(confirmed)
        assert (done["state"], done["seq"], done["earnedPoints"]) == ("CONFIRMED", 1, 8)
        again = cli("confirm", "h1", "--json")
        assert again.returncode == 0 and again.stdout.encode() == confirmed
        answer = stub.Confirm(pb.ConfirmRequest(receipt_id="h1"), timeout=TIMEOUT)
        assert (answer.state, answer.seq, answer.earned_points) == (pb.CONFIRMED, 1, 8)

        cancel = cli("cancel", "h1", "--json")
        assert cancel.returncode == 2 and "use a refund" in cancel.stderr
        assert http("/v1/cancel", {"receiptId": "h1"})[0] == 412
        with pytest.raises(grpc.RpcError) as err:
            stub.Cancel(pb.CancelRequest(receipt_id="h1"), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        assert cli("confirm", "nope", "--json").returncode == 2
        assert http("/v1/confirm", {"receiptId": "nope"})[0] == 404
        with pytest.raises(grpc.RpcError) as err:
            stub.Confirm(pb.ConfirmRequest(receipt_id="nope"), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        never = {
            "refundId": "f1",
            "receiptId": "h9",
            "at": AT,
            "lines": [{"sku": BREAD, "qty": "1"}],
        }
        assert cli("refund", never, "--json").returncode == 2
        assert http("/v1/refund", never)[0] == 404
        with pytest.raises(grpc.RpcError) as err:
            stub.Refund(json_format.ParseDict(never, pb.Refund()), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------ §9: what the outbox holds


def test_the_outbox_holds_one_transaction_per_commit_and_per_issued_code(tmp_path: Path) -> None:
    """§9 with §11 and §13: what the push sends, seq by seq. A hold and its cancel are
    nothing; a confirmed hold is a CHECKOUT with its fiscal document and the held figures;
    the code its printed offer issued is a COUPON_ISSUED of its own seq; a checkout asked
    with `explain` is sent without its trace; a refund is a REFUND. Each carries the
    points it moves (spendable at once: activationDelayDays 0)."""
    from tillpoint.agent.results import receipt_from_json, refund_from_json
    from tillpoint.sync.push import Pusher

    cheese = "4601234000055"
    printed = {
        "id": "pr-1", "campaignId": "camp-p", "customerId": "c-a", "kind": "PERCENT_OFF",
        "skus": [cheese], "value": "20", "printable": True, "issueCoupon": True,
        "couponRequired": True, "printText": "−20% на сыр", "rank": 1, **VALID,
    }  # fmt: skip
    program = {**PROGRAM, "tiers": TIERS, "holdTtlSeconds": 600}
    customers = [{"id": "c-a", "firstName": "Анна", "tier": "gold", "balancePoints": 1000}]
    cards = [{"number": ANNA, "customerId": "c-a", "status": "ACTIVE"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(
            snapshot(program=program, customers=customers, cards=cards, offers=[*OFFERS, printed])
        )
        agent.hold(receipt_from_json(sale("h1", [line(MILK, "1", 10000)], redeemPoints=10)))
        agent.cancel("h1")
        bread = sale("h2", [line(BREAD, "3", 6000)], redeemPoints=-1)
        agent.hold(receipt_from_json(bread))
        done = agent.confirm("h2", "ФД-0002")
        # 3 for 2: 6000 off; 30 % of 12000 → 36 points; 8400 paid → 8
        assert (done.seq, done.redeemed_points, done.earned_points) == (1, 36, 8)
        assert list(done.printed_offers) == ["pr-1"]
        explained = sale("r3", [line(MILK, "1", 10000)], explain=True)
        assert agent.checkout(receipt_from_json(explained)).seq == 3  # 10000 → 10 points
        back = {
            "refundId": "f4",
            "receiptId": "h2",
            "at": AT,
            "lines": [{"sku": BREAD, "qty": "1"}],
        }
        refunded = agent.refund(refund_from_json(back))
        # one of three: floor(36 × 1/3) = 12 back, floor(8 × 1/3) = 2 taken back
        assert (refunded.returned_points, refunded.taken_back_points) == (12, 2)
    finally:
        agent.close()

    pusher = Pusher(tmp_path / "data", "till-1", None, call_timeout_s=1.0)  # type: ignore[arg-type]
    try:
        txs = [pusher._transaction(seq, payload) for seq, payload in pusher._batch()]
    finally:
        pusher.close()
    assert [(t.device_id, t.seq, t.kind) for t in txs] == [
        ("till-1", 1, pb.CHECKOUT),
        ("till-1", 2, pb.COUPON_ISSUED),
        ("till-1", 3, pb.CHECKOUT),
        ("till-1", 4, pb.REFUND),
    ]
    sold, issued, explained_tx, refund_tx = txs
    assert (sold.customer_id, sold.card, sold.fiscal_document) == ("c-a", ANNA, "ФД-0002")
    assert json.loads(sold.request_json)["receiptId"] == "h2"
    result = json.loads(sold.result_json)
    assert (result["redeemedPoints"], result["earnedPoints"], result["payableMinor"]) == (
        36,
        8,
        8400,
    )
    assert result["lines"][0]["offerId"] == "m-1"
    assert (sold.points_delta_available, sold.points_delta_pending) == (8 - 36, 0)
    coupon = json.loads(issued.request_json)
    # TP + the length of TILL1 + TILL1 + the device's first coupon number
    assert coupon["receiptId"] == "h2" and coupon["coupon"]["code"] == "TP5TILL11"
    assert coupon["coupon"]["offerId"] == "pr-1" and coupon["coupon"]["customerId"] == "c-a"
    assert issued.points_delta_available == 0 and issued.result_json == "{}"
    assert "trace" not in json.loads(explained_tx.result_json)
    assert explained_tx.points_delta_available == 10 and explained_tx.fiscal_document == ""
    assert refund_tx.points_delta_available == 12 - 2
