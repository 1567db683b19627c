"""Review 36, spec36f: CONTRACT §11 (hold, confirm, cancel) and §12 (the local HTTP/JSON
interface) read sentence by sentence and told to a real `tillpoint run` over HTTP, over gRPC
with nothing but server reflection (no .proto, no generated code), and to the one-shot CLI,
the answers worked out by hand from the contract (the scenarios `s11_*` and `s12_*` of
tests/scenarios/review36/ tell the CLI's side).

No answer of HTTP or gRPC differed from the contract. One fault, at the CLI (§10): a
receiptId or `--fiscal` of `confirm`/`cancel` (and a `scan`'s text) in bytes that are not
UTF-8 was exit 1 "internal error: UnicodeEncodeError", locally and forwarded to a served
till; now bad input, exit 2 (a scan: the INVALID card). Where the contract is silent, the
readings the product takes (written in docs/CONTRACT.md §10, §11 and §12):
- "the body" of a Hold or Checkout is the receipt as parsed: key order, blanks, an int64
  written as a string, a quantity's trailing zeros, `at` in another offset, the card's
  blanks and `explain` make no other body; a field the POS sends that it left out the first
  time (an `amountMinor` equal to price × qty) does; a number written `1.0` or `1e1` is no
  body at all (400, CONTRACT §10);
- a hold has expired at its `holdExpiresAt` itself (alive to the microsecond before);
- after a hold expired, a Hold of another body under its receiptId is the 409 (the first
  body stored under it rules); the same body is held afresh;
- `fiscalDocument`'s 64 characters are Unicode characters (code points), "" is none;
- a token set for a loopback listen is asked for too; `Bearer` is read in any case.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tillpoint.agent.errors import Conflict, Refused
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import PROGRAM, ManualClock, free_port, receipt, snapshot

EXE = Path(sys.executable).parent / "tillpoint"
TIMEOUT = 30.0
ANNA = "2770000000017"  # gold 7.5 %, birthday 25 November (x5 on the 23rd), 1200 points
BORIS = "2770000000024"  # base 3 %, 80 points
MIB4 = 4 * 1024 * 1024


# ---------------------------------------------------------------- a real `tillpoint run`


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    data: Path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
    env.update(extra)
    return env


def _start(where: Path, *, ttl: int | None = 1800, load: bool = True, **env: str) -> Served:
    """`tillpoint run` on a data directory of its own (the test snapshot loaded, its
    `holdTtlSeconds` = `ttl`), its gRPC on a free loopback port, HTTP where `env` says."""
    where.mkdir(parents=True, exist_ok=True)
    data = where / "data"
    if load:
        program = dict(PROGRAM) if ttl is None else {**PROGRAM, "holdTtlSeconds": ttl}
        snap = where / "snapshot.json"
        snap.write_text(json.dumps(snapshot(program=program), ensure_ascii=False), "utf-8")
        done = subprocess.run(
            [EXE, "--data-dir", data, "snapshot", "load", snap, "--json"],
            env=_env(**env),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    port = free_port()
    conf = where / "till.toml"
    conf.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[metrics]\nenabled = false\n', "utf-8")
    with open(where / "run.log", "ab") as log:  # its stop timed on its own clock (flake44)
        proc = subprocess.Popen(
            [EXE, "--config", conf, "--data-dir", data, "run"],
            env=_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while not (data / "serving.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError("tillpoint run never served")
        time.sleep(0.05)
    doc = json.loads((data / "serving.json").read_text("utf-8"))
    return Served(proc, int(doc["port"]), port, data)


def _stop(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def till(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `tillpoint run` for the module (holds live 30 minutes): each test uses
    receiptIds of its own."""
    served = _start(tmp_path_factory.mktemp("till"))
    yield served
    _stop(served)


@dataclass
class Answer:
    status: int
    body: Any
    raw: bytes
    headers: http.client.HTTPMessage


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        payload = raw
        if payload is None and body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode()
        conn.request(method, path, body=payload, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = None
    return Answer(resp.status, parsed, data, resp.headers)


def refused(answer: Answer, status: int, code: str, words: str) -> None:
    """§12: the error is `{"error": {"code", "message"}}` (nothing else), JSON, with the
    contract's status for its code."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("content-type", "").startswith("application/json")
    assert set(answer.body) == {"error"} and set(answer.body["error"]) == {"code", "message"}
    assert answer.body["error"]["code"] == code
    assert words in answer.body["error"]["message"], answer.body


def milk(receipt_id: str, card: str = ANNA, **changes: Any) -> dict[str, Any]:
    """2 x milk 89.90 = 179.80 (`conftest.receipt`)."""
    return receipt(receipt_id, card, **changes)


# ---------------------------------------------------------------- §11 over HTTP


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Served]:
    """A `tillpoint run` of the test's own (Анна's balance as the snapshot says)."""
    served = _start(tmp_path)
    yield served
    _stop(served)


def test_hold_confirm_cancel_answer_the_contracts_figures_and_codes_over_http(
    fresh: Served,
) -> None:
    """CONTRACT §11 by hand. Анна: 1200 points, gold 7.5 %, her birthday window (x5);
    2 x 8990 = 17980, 30 % = 5394 -> at most 53 points. Holding 50: payable 12980, earned
    floor(12980 x 7.5 % / 100 x 5) = floor(48.675) = 48, balance 1200 - 50 + 48 = 1198."""
    port = fresh.http
    held = call(port, "POST", "/v1/hold", milk("f-1", redeemPoints=50))
    assert held.status == 200, held.body
    doc = held.body
    assert doc["state"] == "HELD" and doc["redeemedPoints"] == 50
    assert doc["payableMinor"] == 12980 and doc["earnedPoints"] == 48
    assert doc["balance"] == {"availablePoints": 1198, "pendingPoints": 0}
    assert doc["printedOffers"] == [] and "seq" not in doc and "deviceId" not in doc
    # holdExpiresAt: RFC 3339 with an offset, 1800 s after now (the agent's clock)
    expires = datetime.fromisoformat(doc["holdExpiresAt"])
    assert expires.utcoffset() is not None
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 1800 - 60 < left <= 1800

    # during the hold: Balance is the ledger as it stands (nothing committed yet)...
    bal = call(port, "POST", "/v1/balance", {"card": ANNA})
    assert bal.body == {"availablePoints": 1200, "pendingPoints": 0}
    # ... a quote of another receipt prices beside it (1150 left, 53 redeemed, earned
    # floor(12680 x 7.5 % / 100 x 5) = 47: 1200 - 50 - 53 + 47 = 1144) and reserves nothing
    for _ in range(2):
        other = call(port, "POST", "/v1/quote", milk("f-q", redeemPoints=-1)).body
        assert other["redeemedPoints"] == 53 and "state" not in other
        assert other["balance"] == {"availablePoints": 1144, "pendingPoints": 0}
    # ... and a quote of the held receipt answers what its Confirm commits
    same = call(port, "POST", "/v1/quote", milk("f-1", redeemPoints=50)).body
    assert same["redeemedPoints"] == 50 and same["balance"]["availablePoints"] == 1198

    # Confirm with a fiscal document of 64 Cyrillic letters: committed, journalled
    fiscal = "Ф" * 64
    done = call(port, "POST", "/v1/confirm", {"receiptId": "f-1", "fiscalDocument": fiscal})
    assert done.status == 200, done.body
    assert done.body["state"] == "CONFIRMED" and "holdExpiresAt" not in done.body
    assert done.body["deviceId"] == "till-1" and done.body["seq"] >= 1
    for key in ("lines", "totalMinor", "redeemedPoints", "payableMinor", "earnedPoints"):
        assert done.body[key] == doc[key], key
    # the first answer again, whatever fiscal document comes with the retry
    for again in ({"receiptId": "f-1"}, {"receiptId": "f-1", "fiscalDocument": "FD-2"}):
        assert call(port, "POST", "/v1/confirm", again).raw == done.raw
    # a Hold or a Checkout of the same body answers the confirmed receipt
    assert call(port, "POST", "/v1/hold", milk("f-1", redeemPoints=50)).raw == done.raw
    assert call(port, "POST", "/v1/checkout", milk("f-1", redeemPoints=50)).raw == done.raw
    # another body under the id: 409 ALREADY_EXISTS, never another receipt's result
    for path in ("/v1/hold", "/v1/checkout"):
        refused(
            call(port, "POST", path, milk("f-1", redeemPoints=51)),
            409,
            "ALREADY_EXISTS",
            "already stored with another body",
        )
    refused(
        call(port, "POST", "/v1/cancel", {"receiptId": "f-1"}),
        412,
        "FAILED_PRECONDITION",
        "use a refund",
    )
    for path in ("/v1/confirm", "/v1/cancel"):
        refused(call(port, "POST", path, {"receiptId": "f-unknown"}), 404, "NOT_FOUND", "f-unknown")


def test_cancel_releases_and_answers_the_same_and_confirm_after_it_is_refused(
    till: Served,
) -> None:
    """CONTRACT §11: Cancel releases the hold; a Cancel again returns the first answer, a
    Confirm is "hold expired: price the receipt again"; a Hold of the body answers the
    CANCELLED result, a Checkout of it is refused (its decision)."""
    port = till.http
    held = call(port, "POST", "/v1/hold", milk("c-1", BORIS, redeemPoints=80)).body
    # Борис: 80 points; 30 % of 179.80 allows 53: 53 held
    assert held["redeemedPoints"] == 53
    gone = call(port, "POST", "/v1/cancel", {"receiptId": "c-1"})
    assert gone.status == 200, gone.body
    assert gone.body["state"] == "CANCELLED" and "holdExpiresAt" not in gone.body
    assert gone.body["display"] == ["Чек отменён", ""]
    assert gone.body["redeemedPoints"] == 53
    assert call(port, "POST", "/v1/cancel", {"receiptId": "c-1"}).raw == gone.raw
    refused(
        call(port, "POST", "/v1/confirm", {"receiptId": "c-1"}),
        412,
        "FAILED_PRECONDITION",
        "hold expired: price the receipt again",
    )
    assert call(port, "POST", "/v1/hold", milk("c-1", BORIS, redeemPoints=80)).raw == gone.raw
    refused(
        call(port, "POST", "/v1/checkout", milk("c-1", BORIS, redeemPoints=80)),
        412,
        "FAILED_PRECONDITION",
        "cancelled",
    )
    # released: his 80 points are whole for the next receipt (53 of them)
    after = call(port, "POST", "/v1/quote", milk("c-2", BORIS, redeemPoints=-1)).body
    assert after["redeemedPoints"] == 53


@pytest.mark.parametrize(
    ("fiscal", "ok"),
    [
        ("", True),
        ("x" * 64, True),
        ("Ж" * 64, True),  # 128 bytes of UTF-8: characters are counted, not bytes
        ("😀" * 64, True),  # 256 bytes, 128 UTF-16 units: 64 characters
        (" " * 64, True),
        ("x" * 65, False),
        ("Ж" * 65, False),
        ("x" * 129, False),
        ("FD\n1", False),
        ("FD\t1", False),
        ("FD\x001", False),
    ],
    ids=[
        "empty",
        "64",
        "64-cyrillic",
        "64-astral",
        "64-blanks",
        "65",
        "65-cyrillic",
        "129",
        "line-break",
        "tab",
        "nul",
    ],
)
def test_fiscal_document_at_its_edges(till: Served, fiscal: str, ok: bool) -> None:
    """CONTRACT §11: `fiscalDocument` optional, at most 64 characters, no control
    characters; a refused Confirm leaves the hold held (it can be confirmed after)."""
    port = till.http
    rid = "fd-" + hashlib.sha256(fiscal.encode()).hexdigest()[:16]
    assert call(port, "POST", "/v1/hold", milk(rid)).body["state"] == "HELD"
    answer = call(port, "POST", "/v1/confirm", {"receiptId": rid, "fiscalDocument": fiscal})
    if ok:
        assert answer.status == 200 and answer.body["state"] == "CONFIRMED", answer.body
        return
    words = (
        "is too long (at most 64 characters)" if len(fiscal) > 64 else "must not contain control"
    )
    refused(answer, 400, "INVALID_ARGUMENT", f"confirm: fiscalDocument {words}")
    assert call(port, "POST", "/v1/confirm", {"receiptId": rid}).body["state"] == "CONFIRMED"


def test_which_bodies_are_the_same_receipt(till: Served) -> None:
    """CONTRACT §11: "a Hold or Checkout whose body differs from the one first stored under
    that receiptId is refused". The body is the receipt as parsed (its decision): key order,
    an int64 as a string, "2.000" for "2", `at` in UTC, the card's blanks, `explain` and a
    field written as its default are the same receipt; an `amountMinor` the first body left
    out is another, even equal to price x qty; `1.0` or `1e1` are no receipt (400)."""
    port = till.http
    first = milk("b-1", redeemPoints=10)
    held = call(port, "POST", "/v1/hold", first)
    assert held.status == 200
    line = {"sku": "4601234000017", "qty": "2", "priceMinor": 8990}
    same = [
        dict(reversed(list(first.items()))),
        {**first, "redeemPoints": "10", "lines": [{**line, "priceMinor": "8990"}]},
        {**first, "lines": [{**line, "qty": "2.000"}]},
        {**first, "at": "2026-11-23T07:15:00Z"},
        {**first, "card": "2770 0000 0001 7"},
        {**first, "explain": False},
        {**first, "coupons": []},
        {**first, "lines": [{**line, "amountMinor": None}]},
    ]
    for body in same:
        again = call(port, "POST", "/v1/hold", body)
        assert again.raw == held.raw, (body, again.body)
    with_explain = call(port, "POST", "/v1/hold", {**first, "explain": True})
    assert with_explain.status == 200 and with_explain.body["state"] == "HELD"
    other = [
        {**first, "redeemPoints": 11},
        {**first, "storeId": "s2"},
        {**first, "lines": [{**line, "amountMinor": 17980}]},
        {**first, "lines": [{**line, "qty": "3"}]},
    ]
    for body in other:
        refused(call(port, "POST", "/v1/hold", body), 409, "ALREADY_EXISTS", "b-1")
    text = json.dumps(first)
    for written in ('"redeemPoints": 10.0', '"redeemPoints": 1e1'):
        bad = text.replace('"redeemPoints": 10', written).encode()
        refused(call(port, "POST", "/v1/hold", raw=bad), 400, "INVALID_ARGUMENT", "redeemPoints")
    # none of it changed the hold
    assert call(port, "POST", "/v1/hold", first).raw == held.raw


# ---------------------------------------------------------------- §11: the hold's life


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Agent, ManualClock]]:
    clock = ManualClock(datetime(2026, 11, 23, 7, 15, 0, 123456, tzinfo=UTC))
    agent = Agent(tmp_path / "data", "till-1", clock=clock)
    agent.load_snapshot(snapshot(program={**PROGRAM, "holdTtlSeconds": 1}))
    yield agent, clock
    agent.close()


def test_a_hold_has_expired_at_its_hold_expires_at_and_not_a_microsecond_before(
    clocked: tuple[Agent, ManualClock],
) -> None:
    """CONTRACT §11: "a hold expires holdTtlSeconds after it was placed": with 1 s, the
    hold placed at 07:15:00.123456 reserves its 40 points through 07:15:01.123455 and
    nothing from 07:15:01.123456, its `holdExpiresAt`, when its Confirm is refused."""
    agent, clock = clocked
    held = agent.hold(receipt_from_json(milk("x-1", redeemPoints=40)))
    assert held.hold_expires_at == "2026-11-23T07:15:01.123456+00:00"
    clock.advance(1 - 1e-6)
    beside = agent.quote(receipt_from_json(milk("x-q", redeemPoints=-1)))
    # 1200 - 40 held - 53 + 47 earned
    assert beside.to_json()["balance"]["availablePoints"] == 1154
    clock.now = datetime.fromisoformat(held.hold_expires_at)
    beside = agent.quote(receipt_from_json(milk("x-q", redeemPoints=-1)))
    assert beside.to_json()["balance"]["availablePoints"] == 1194  # 1200 - 53 + 47
    with pytest.raises(Refused, match="hold expired: price the receipt again"):
        agent.confirm("x-1")
    # another body under the expired hold's id is still another body (the first rules) ...
    with pytest.raises(Conflict, match="another body"):
        agent.hold(receipt_from_json(milk("x-1", redeemPoints=41)))
    # ... the same body is priced and held afresh, a whole TTL from now
    again = agent.hold(receipt_from_json(milk("x-1", redeemPoints=40)))
    assert again.state == "HELD"
    assert datetime.fromisoformat(again.hold_expires_at or "") == clock.now + timedelta(seconds=1)


def test_checkout_is_hold_and_confirm_the_same_figures_and_ledger_rows(tmp_path: Path) -> None:
    """CONTRACT §11: `Checkout` is `Hold` and `Confirm` in one call. Two tills on the same
    clock and snapshot: one checks a receipt out, the other holds and confirms it; the
    answers are the same document and the ledgers hold the same rows (the receipt, its
    points, the journal and outbox, the print queue), but for the hold's own record."""
    docs, rows = [], []
    body = milk(
        "cx-1",
        redeemPoints=-1,
        lines=[
            {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
            {"sku": "4601234000031", "qty": "1", "priceMinor": 20000},  # tobacco
            {"sku": "4601234000055", "qty": "0.512", "priceMinor": 99999},
        ],
    )
    for way in ("checkout", "hold+confirm"):
        clock = ManualClock(datetime(2026, 11, 23, 7, 15, tzinfo=UTC))
        data = tmp_path / way
        agent = Agent(data, "till-1", clock=clock)
        try:
            agent.load_snapshot(snapshot())
            if way == "checkout":
                docs.append(agent.checkout(receipt_from_json(body)).to_json())
            else:
                agent.hold(receipt_from_json(body))
                docs.append(agent.confirm("cx-1").to_json())
        finally:
            agent.close()
        with sqlite3.connect(data / "ledger.db") as db:
            tables = [
                t
                for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if t not in ("_sqlite_migrations", "receipt_life")
            ]
            rows.append({t: db.execute(f"SELECT * FROM {t}").fetchall() for t in tables})
    assert docs[0] == docs[1]
    assert docs[0]["state"] == "CONFIRMED" and docs[0]["redeemedPoints"] > 0
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_a_real_run_takes_the_ttl_from_the_snapshot_and_sweeps_without_a_call(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: `holdTtlSeconds` 1 from the snapshot: `holdExpiresAt` is 1 s after the
    hold, its Confirm after it is refused (412); the hold timer closes it with no call at
    all (its row EXPIRED within its 15 s round). About 17 s."""
    served = _start(tmp_path, ttl=1)
    try:
        before = datetime.now(UTC)
        held = call(served.http, "POST", "/v1/hold", milk("t-1", redeemPoints=30)).body
        expires = datetime.fromisoformat(held["holdExpiresAt"])
        assert before + timedelta(seconds=1) <= expires <= datetime.now(UTC) + timedelta(seconds=1)
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        held2 = call(served.http, "POST", "/v1/hold", milk("t-2", redeemPoints=30)).body
        refused(
            call(served.http, "POST", "/v1/confirm", {"receiptId": "t-1"}),
            412,
            "FAILED_PRECONDITION",
            "hold expired: price the receipt again (t-1)",
        )
        # t-2: no call names it again; the timer's round marks it EXPIRED by itself
        expires2 = datetime.fromisoformat(held2["holdExpiresAt"])
        deadline = time.monotonic() + 25
        state = None
        while time.monotonic() < deadline:
            with sqlite3.connect(served.data / "ledger.db", timeout=5) as db:
                row = db.execute(
                    "SELECT state FROM receipt_life WHERE receipt_id = 't-2'"
                ).fetchone()
            state = row[0] if row else None
            if state == "EXPIRED":
                break
            time.sleep(0.5)
        assert state == "EXPIRED"
        assert datetime.now(UTC) > expires2
    finally:
        _stop(served)


# ---------------------------------------------------------------- §12: routes and shapes


CALLS = ["identify", "quote", "hold", "confirm", "cancel", "checkout", "refund", "balance"]


def test_every_route_answers_its_method_and_refuses_the_others(till: Served) -> None:
    """CONTRACT §12: POST for the eight calls, GET for status, /healthz and /openapi.json;
    another method is 405 naming the path's methods in `Allow`, with the JSON error; an
    unknown path 404; a bad body 400; everything `application/json`."""
    port = till.http
    for name in CALLS:
        path = f"/v1/{name}"
        bad = call(port, "POST", path, raw=b"{not json")
        refused(bad, 400, "INVALID_ARGUMENT", "not valid JSON")
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            answer = call(port, method, path, raw=b"{}" if method != "GET" else None)
            refused(answer, 405, "METHOD_NOT_ALLOWED", f"{method} {path}: use POST")
            assert answer.headers["Allow"] == "POST"
    for path in ("/v1/status", "/healthz", "/openapi.json"):
        ok = call(port, "GET", path)
        assert ok.status == 200 and ok.headers["content-type"].startswith("application/json")
        assert call(port, "HEAD", path).status == 200
        nope = call(port, "POST", path, raw=b"{}")
        assert nope.status == 405 and nope.headers["Allow"] == "GET, HEAD"
    assert call(port, "GET", "/healthz").body == {"status": "SERVING", "cacheVersion": 1}
    for path in ("/v1/nope", "/", "/V1/QUOTE", "/v1/quote/"):
        refused(call(port, "POST", path, raw=b"{}"), 404, "NOT_FOUND", "no such call")
    # identify's empty body is the INVALID outcome (200); the others need their fields
    assert call(port, "POST", "/v1/identify", {}).body["status"] == "INVALID"
    refused(call(port, "POST", "/v1/quote", raw=b"[]"), 400, "INVALID_ARGUMENT", "object")
    refused(
        call(port, "POST", "/v1/checkout", milk("bl-1", "2770000000031")),
        412,
        "FAILED_PRECONDITION",
        "blocked",
    )


def test_an_answer_is_byte_for_byte_the_clis(till: Served, tmp_path: Path) -> None:
    """CONTRACT §12: "responses too, byte-for-byte the same document the CLI prints with
    --json": a quote over HTTP and the one-shot CLI on the served data directory."""
    body = milk("cli-1", redeemPoints=-1)
    over_http = call(till.http, "POST", "/v1/quote", body).raw
    file = tmp_path / "r.json"
    file.write_text(json.dumps(body), "utf-8")
    done = subprocess.run(
        [EXE, "--data-dir", till.data, "quote", file, "--json"],
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == over_http


def test_a_body_of_exactly_4_mib_is_read_and_one_byte_more_refused(till: Served) -> None:
    """CONTRACT §10/§12: "a request larger than 4 MiB" is bad input (400): 4,194,304 bytes
    are served, 4,194,305 refused and nothing held."""
    port = till.http
    for size, status in ((MIB4 - 1, 200), (MIB4, 200), (MIB4 + 1, 400)):
        text = json.dumps(milk(f"big-{size}", redeemPoints=5)).encode()
        body = text + b" " * (size - len(text))
        assert len(body) == size
        answer = call(port, "POST", "/v1/hold", raw=body)
        assert answer.status == status, (size, answer.body)
        if status == 400:
            refused(answer, 400, "INVALID_ARGUMENT", "request larger than 4 MiB")
            refused(
                call(port, "POST", "/v1/confirm", {"receiptId": f"big-{size}"}),
                404,
                "NOT_FOUND",
                "not held",
            )
        else:
            assert answer.body["state"] == "HELD"


def test_one_keep_alive_connection_carries_calls_and_their_errors(till: Served) -> None:
    """CONTRACT §12 with HTTP/1.1: a POS keeps its connection; a 400, 404, 409 or 412 does
    not close it, and the next call on it is answered."""
    conn = http.client.HTTPConnection("127.0.0.1", till.http, timeout=TIMEOUT)
    sock: socket.socket | None = None
    try:
        steps: list[tuple[str, Any, int]] = [
            ("/v1/hold", milk("ka-1", redeemPoints=5), 200),
            ("/v1/hold", milk("ka-1", redeemPoints=6), 409),
            ("/v1/quote", "{bad", 400),
            ("/v1/confirm", {"receiptId": "ka-none"}, 404),
            ("/v1/confirm", {"receiptId": "ka-1"}, 200),
            ("/v1/cancel", {"receiptId": "ka-1"}, 412),
            ("/v1/balance", {"card": ANNA}, 200),
        ]
        for path, body, status in steps:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            conn.request("POST", path, body=raw)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status, path
            assert resp.getheader("connection") != "close"
            if sock is None:
                sock = conn.sock
            assert conn.sock is sock  # the same connection throughout
    finally:
        conn.close()


def test_no_snapshot_is_503_at_healthz_and_412_for_pricing(tmp_path: Path) -> None:
    """CONTRACT §10/§12: a till with no snapshot: /healthz 503 (the JSON error), quote, hold
    and checkout 412 "no snapshot loaded"; confirm and cancel know no receipt (404)."""
    served = _start(tmp_path, load=False)
    try:
        refused(call(served.http, "GET", "/healthz"), 503, "UNAVAILABLE", "no snapshot")
        for name in ("quote", "hold", "checkout"):
            refused(
                call(served.http, "POST", f"/v1/{name}", milk("ns-1")),
                412,
                "FAILED_PRECONDITION",
                "no snapshot loaded",
            )
        for name in ("confirm", "cancel"):
            refused(
                call(served.http, "POST", f"/v1/{name}", {"receiptId": "ns-1"}),
                404,
                "NOT_FOUND",
                "ns-1",
            )
        assert call(served.http, "GET", "/v1/status").body["cacheVersion"] == 0
    finally:
        _stop(served)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "127.0.0.1:0"], ids=["wildcard", "loopback"])
def test_the_token_is_asked_of_every_request(tmp_path: Path, listen: str) -> None:
    """CONTRACT §12: bound beyond loopback, a request without `Authorization: Bearer
    <token>` (none, a wrong one, another scheme) is 401 `UNAUTHENTICATED` on every path,
    `WWW-Authenticate: Bearer` with it; the scheme's word is read in any case (RFC 9110
    §11.1). A token set for a loopback listen is asked for the same (CONTRACT §12's
    decision: the token guards every path)."""
    served = _start(tmp_path, TILLPOINT_HTTP__LISTEN=listen, TILLPOINT_HTTP__TOKEN="t0k-en")
    try:
        port = served.http
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer t0k-e"},
            {"Authorization": "Basic t0k-en"},
            {"Authorization": "t0k-en"},
        ):
            for method, path in (
                ("POST", "/v1/quote"),
                ("GET", "/healthz"),
                ("GET", "/openapi.json"),
                ("GET", "/v1/status"),
                ("POST", "/v1/nope"),
            ):
                answer = call(port, method, path, milk("tk-1"), headers=headers)
                refused(answer, 401, "UNAUTHENTICATED", "token")
                assert answer.headers["WWW-Authenticate"] == "Bearer"
        for scheme in ("Bearer", "bearer", "BEARER"):
            ok = call(
                port,
                "POST",
                "/v1/quote",
                milk("tk-1"),
                headers={"Authorization": f"{scheme} t0k-en"},
            )
            assert ok.status == 200, ok.body
        assert (
            call(port, "GET", "/healthz", headers={"Authorization": "Bearer t0k-en"}).status == 200
        )
    finally:
        _stop(served)


# ---------------------------------------------------------------- §11/§12 over gRPC, by reflection


class Reflected:
    """PosAgent's calls built from what the server's reflection says, as grpcurl does."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.service = DescriptorPool(self.database).FindServiceByName("tillpoint.v1.PosAgent")

    def __call__(self, name: str, body: dict[str, Any]) -> tuple[str, Any]:
        method = self.service.methods_by_name[name]
        request = message_factory.GetMessageClass(method.input_type)
        answer = message_factory.GetMessageClass(method.output_type)
        stub = self.channel.unary_unary(
            f"/tillpoint.v1.PosAgent/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=answer.FromString,
        )
        try:
            got = stub(json_format.Parse(json.dumps(body), request()), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
        return "OK", json_format.MessageToDict(got)


def test_the_receipts_life_over_grpc_with_reflection_alone(till: Served) -> None:
    """CONTRACT §12: "gRPC server reflection is on": a client with no .proto lists the
    services, builds Hold, Confirm and Cancel from it and gets §11's answers and codes
    (ALREADY_EXISTS, FAILED_PRECONDITION, NOT_FOUND, INVALID_ARGUMENT); the health service
    says SERVING for "" and for tillpoint.v1.PosAgent."""
    with grpc.insecure_channel(f"127.0.0.1:{till.grpc}") as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        pos = Reflected(channel)
        services = set(pos.database.get_services())
        assert {"tillpoint.v1.PosAgent", "grpc.health.v1.Health"} <= services
        names = {m.name for m in pos.service.methods}
        assert {"Hold", "Confirm", "Cancel", "Checkout", "Quote", "Balance"} <= names

        code, held = pos("Hold", milk("g-1", redeemPoints=50))
        assert code == "OK" and held["state"] == "HELD" and held["redeemedPoints"] == "50"
        # the same moment HTTP answers for the retry
        over_http = call(till.http, "POST", "/v1/hold", milk("g-1", redeemPoints=50)).body
        assert over_http["holdExpiresAt"] == held["holdExpiresAt"]
        assert pos("Hold", milk("g-1", redeemPoints=50)) == (code, held)
        assert pos("Hold", milk("g-1", redeemPoints=51))[0] == "ALREADY_EXISTS"
        assert pos("Checkout", milk("g-1", redeemPoints=51))[0] == "ALREADY_EXISTS"
        code, words = pos("Confirm", {"receiptId": "g-1", "fiscalDocument": "x" * 65})
        assert (code, words) == (
            "INVALID_ARGUMENT",
            "confirm: fiscalDocument is too long (at most 64 characters)",
        )
        code, done = pos("Confirm", {"receiptId": "g-1", "fiscalDocument": "😀" * 64})
        assert code == "OK" and done["state"] == "CONFIRMED"
        assert pos("Confirm", {"receiptId": "g-1", "fiscalDocument": "other"}) == (code, done)
        code, words = pos("Cancel", {"receiptId": "g-1"})
        assert code == "FAILED_PRECONDITION" and "use a refund" in words
        assert pos("Cancel", {"receiptId": "g-none"})[0] == "NOT_FOUND"
        assert pos("Confirm", {"receiptId": "g-none"})[0] == "NOT_FOUND"
        assert pos("Confirm", {"receiptId": ""}) == (
            "INVALID_ARGUMENT",
            "confirm: receiptId must not be empty",
        )
        pos("Hold", milk("g-2"))
        code, gone = pos("Cancel", {"receiptId": "g-2"})
        assert code == "OK" and gone["state"] == "CANCELLED"
        code, words = pos("Confirm", {"receiptId": "g-2"})
        assert code == "FAILED_PRECONDITION"
        assert words.startswith("hold expired: price the receipt again")

        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "tillpoint.v1.PosAgent"):
            check = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert check.status == serving
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- the CLI's bytes


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["confirm", "nb-1\udcff"], "confirm: receiptId is not UTF-8 text"),
        (["cancel", "nb-1\udcff"], "cancel: receiptId is not UTF-8 text"),
        (["confirm", "nb-1", "--fiscal", "FD\udcff1"], "confirm: fiscalDocument is not UTF-8 text"),
    ],
    ids=["confirm-id", "cancel-id", "fiscal"],
)
def test_a_command_line_text_that_is_not_utf8_is_bad_input(
    cli: Any, argv: list[str], words: str
) -> None:
    """CONTRACT §10: bad input of any kind is exit 2 and one clear line. A receiptId or
    fiscal document given on the command line in bytes that are not UTF-8 (a POS script
    in windows-1251: Python reads them as lone surrogates) was exit 1 "internal error:
    UnicodeEncodeError ... surrogates not allowed"; the hold is left as it was."""
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    assert cli("hold", milk("nb-1"), "--json").code == 0
    run = cli(*argv, "--json")
    assert (run.code, run.out) == (2, ""), run.err
    assert run.err == f"tillpoint: {words}\n"
    done = cli("confirm", "nb-1", "--json")
    assert done.code == 0 and done.json()["state"] == "CONFIRMED"


@pytest.mark.parametrize(
    "argv",
    [
        [b"confirm", b"fb-1\xff"],
        [b"cancel", b"fb-1\xff"],
        [b"confirm", b"fb-1", b"--fiscal", b"FD\xcf"],
    ],
    ids=["confirm-id", "cancel-id", "fiscal"],
)
def test_the_same_bytes_told_to_a_served_till(till: Served, argv: list[bytes]) -> None:
    """The same with `tillpoint run` serving the data directory (the CLI forwards its
    calls over HTTP): exit 2 and the same line, not exit 1 "internal error"."""
    rid = "fb-" + hashlib.sha256(b" ".join(argv)).hexdigest()[:8]
    argv = [a.replace(b"fb-1", rid.encode()) for a in argv]
    assert call(till.http, "POST", "/v1/hold", milk(rid)).body["state"] == "HELD"
    done = subprocess.run(
        [bytes(EXE), b"--data-dir", bytes(till.data), *argv, b"--json"],
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, b""), done.stderr
    assert done.stderr.startswith(b"tillpoint: ") and b"is not UTF-8 text" in done.stderr
    assert done.stderr.count(b"\n") == 1
    again = call(till.http, "POST", "/v1/confirm", {"receiptId": rid})
    assert again.body["state"] == "CONFIRMED"


@pytest.mark.parametrize("text", ["AB\udcff", "TP1-o\udcff", "2770000000017\udcff"])
def test_a_scan_that_is_not_utf8_is_an_invalid_card(cli: Any, text: str) -> None:
    """The same bytes at `tillpoint scan` (a kiosk's scanner script): exit 1 "internal
    error: UnicodeEncodeError" before. Such a text is no coupon code and no printed
    offer's code; it is read as a card, INVALID, as `identify` reads it (exit 0, CONTRACT
    §4: a malformed card is the INVALID outcome)."""
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    run = cli("scan", text, "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["kind"] == "CARD" and doc["card"]["status"] == "INVALID"
    assert cli("identify", text, "--json").json() == doc["card"]


def test_print_retry_of_an_id_that_is_not_utf8_is_bad_input(cli: Any) -> None:
    """The same bytes at `tillpoint print retry RECEIPT_ID` (CONTRACT §7's queue, §10's
    bad input): exit 1 "internal error: UnicodeEncodeError" before; exit 2 and one line."""
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    run = cli("print", "retry", "pr-1\udcff", "--json")
    assert (run.code, run.out) == (2, ""), run.err
    assert run.err == "tillpoint: print retry: receiptId is not UTF-8 text\n"
