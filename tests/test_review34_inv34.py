"""Review 34, inv34: an INVALID card is bad input (CONTRACT §4, §12).

CONTRACT §4's table calls INVALID "bad check digit, empty or malformed input", and §12
maps 400 to bad input and 412 to "precondition: blocked card, expired hold, no snapshot":
the blocked card, not the invalid one. Until review 34 a quote, hold, checkout or balance
of an INVALID card was refused as a precondition (412 / FAILED_PRECONDITION). It is now
400 / INVALID_ARGUMENT over HTTP and gRPC, exit 2 on the CLI, with the same cashier's
message ("card not accepted: …") and nothing stored; a BLOCKED or LOST card (or a phone
whose customer has no active card) stays 412 / FAILED_PRECONDITION. `identify` answers
INVALID with 200: there it is an outcome, not an error.

Real parts: the HTTP and gRPC servers `tillpoint run` builds, on loopback ports, over one
agent whose data directory the in-process CLI shares; and a real `tillpoint run`
process, with the CLI forwarding to it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, ean13, free_port, posagent_stub, receipt, snapshot
from .conftest import post_to as _post

TIMEOUT = 10
EXE = Path(sys.executable).parent / "tillpoint"

LOST = ean13("277000000004")  # c-d's only card: lost
LOST_PHONE = "89260000004"  # c-d's phone: the customer has no active card (BLOCKED, §4)

# (scanned text, identify's reason): each is INVALID by CONTRACT §4
INVALID = [
    ("2770000000018", "the card number's check digit is wrong"),
    ("", "nothing was scanned"),
    ("TP1X", "a card number or phone has digits only (no brackets, letters or other signs)"),
    ("+12025550123", "not a Russian phone number (+7 and 10 digits)"),
    ("+7 (916) 123-45-67", "a card number or phone has digits only"),
]
# (scanned text, the refusal's message): BLOCKED by CONTRACT §4
BLOCKED = [
    ("2770000000031", "card refused: the card is blocked; sell without loyalty"),
    (LOST, "card refused: the card is lost; sell without loyalty"),
    (LOST_PHONE, "card refused: the customer has no active card; sell without loyalty"),
]
SALES = ("quote", "hold", "checkout")


def _snapshot() -> dict[str, Any]:
    base = snapshot()
    return snapshot(
        customers=[
            *base["customers"],
            {"id": "c-d", "firstName": "Глеб", "tier": "base", "phone": "+79260000004"},
        ],
        cards=[*base["cards"], {"number": LOST, "customerId": "c-d", "status": "LOST"}],
    )


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "data", "till-1")
    a.load_snapshot(_snapshot())
    yield a
    a.close()


@pytest.fixture
def http_port(agent: Agent) -> Iterator[int]:
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    try:
        yield srv.port
    finally:
        srv.stop()


def _http_refusal(port: int, call: str, card: str) -> tuple[int, str, str]:
    body = {"card": card} if call == "balance" else receipt(f"{call}-x", card=card)
    status, doc = _post(port, f"/v1/{call}", body)
    assert set(doc) == {"error"}, doc
    return status, doc["error"]["code"], doc["error"]["message"]


def _grpc_refusal(stub: Any, call: str, card: str) -> tuple[grpc.StatusCode, str]:
    if call == "balance":
        request: Any = pb.BalanceRequest(card=card)
    else:
        request = json_format.ParseDict(receipt(f"{call}-x", card=card), pb.Receipt())
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, call.capitalize())(request, timeout=TIMEOUT)
    return caught.value.code(), caught.value.details()


def _ledger(data: Path) -> list[str]:
    """The ledger's every row, read beside the agent (WAL: a reader sees what is committed)."""
    with sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True, timeout=TIMEOUT) as db:
        rows = list(db.iterdump())
    db.close()
    return rows


def _refused_at_every_door(
    agent: Agent,
    http_port: int,
    cli: CLI,
    data: Path,
    cards: Any,
    status: str,
    refusal: tuple[int, grpc.StatusCode],
) -> None:
    """Each card identifies with `status` and every sale call and balance of it is refused
    with `refusal` (the HTTP status and the gRPC code; exit 2 on the CLI) and the same
    message at the three doors; the ledger is left as it was."""
    http_status, grpc_code = refusal
    before = _ledger(data)
    with posagent_stub(agent) as stub:
        for card, words in cards:
            answered, doc = _post(http_port, "/v1/identify", {"text": card})
            assert answered == 200 and doc["status"] == status, (card, doc)
            if status == "INVALID":
                assert doc["reason"].startswith(words), (card, doc)
                expected = f"card not accepted: {doc['reason']}"
            else:
                expected = words
            for call in (*SALES, "balance"):
                http = _http_refusal(http_port, call, card)
                assert http == (http_status, grpc_code.name, expected), (call, card, http)
                assert _grpc_refusal(stub, call, card) == (grpc_code, expected), (call, card)
                args: tuple[Any, ...] = (
                    ("balance", card) if call == "balance" else (call, receipt("c-x", card=card))
                )
                run = cli(*args, "--json")
                assert (run.code, run.out, run.err) == (2, "", f"tillpoint: {expected}\n")
    assert _ledger(data) == before
    assert agent.status().to_json()["lastSeq"] == 0


def test_an_invalid_card_is_bad_input_over_http_grpc_and_the_cli(
    agent: Agent, http_port: int, cli: CLI, tmp_path: Path
) -> None:
    """CONTRACT §4, §12: quote, hold, checkout and balance of an INVALID card answer 400
    INVALID_ARGUMENT over HTTP, INVALID_ARGUMENT over gRPC, exit 2 on the CLI, each with
    the cashier's "card not accepted: <identify's reason>"; nothing is stored."""
    _refused_at_every_door(
        agent,
        http_port,
        cli,
        tmp_path / "data",
        INVALID,
        "INVALID",
        (400, grpc.StatusCode.INVALID_ARGUMENT),
    )


def test_a_blocked_or_lost_card_is_still_a_precondition(
    agent: Agent, http_port: int, cli: CLI, tmp_path: Path
) -> None:
    """CONTRACT §4, §12: a BLOCKED or LOST card, or a phone whose customer has no active
    card, is valid input the rules refuse: 412 FAILED_PRECONDITION, gRPC
    FAILED_PRECONDITION, exit 2, "card refused: …; sell without loyalty"; nothing stored."""
    _refused_at_every_door(
        agent,
        http_port,
        cli,
        tmp_path / "data",
        BLOCKED,
        "BLOCKED",
        (412, grpc.StatusCode.FAILED_PRECONDITION),
    )


def test_a_receipt_without_a_card_is_bad_input_over_grpc_and_http(
    agent: Agent, http_port: int
) -> None:
    """A receipt with no `card` at all is one with `"card": ""` (proto3): INVALID, so 400
    / INVALID_ARGUMENT "card not accepted: nothing was scanned"; so is a balance without
    a card (absent, or null: the field left out)."""
    without = {k: v for k, v in receipt("nc-1").items() if k != "card"}
    expected = "card not accepted: nothing was scanned"
    for call in SALES:
        status, doc = _post(http_port, f"/v1/{call}", without)
        assert (status, doc["error"]["code"], doc["error"]["message"]) == (
            400,
            "INVALID_ARGUMENT",
            expected,
        ), call
    for body in ({}, {"card": None}):
        status, doc = _post(http_port, "/v1/balance", body)
        assert (status, doc["error"]["code"]) == (400, "INVALID_ARGUMENT"), body
    with posagent_stub(agent) as stub, pytest.raises(grpc.RpcError) as caught:
        stub.Checkout(json_format.ParseDict(without, pb.Receipt()), timeout=TIMEOUT)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        expected,
    )
    assert agent.status().to_json()["lastSeq"] == 0


def test_an_invalid_card_on_an_empty_till_is_bad_input_before_no_snapshot(
    tmp_path: Path,
) -> None:
    """Bad input is refused before any precondition (a quantity of 0 on a till with no
    snapshot is 400, not 412): an INVALID card is decided without a look-up (§4), so a
    till with no snapshot answers it 400 too; a valid card there is still 412 "no
    snapshot loaded"."""
    empty = Agent(tmp_path / "empty", "till-1")
    try:
        srv = HttpServer(empty, "127.0.0.1:0")
        srv.start()
        try:
            status, doc = _post(srv.port, "/v1/checkout", receipt("e-1", card="2770000000018"))
            assert (status, doc["error"]["code"]) == (400, "INVALID_ARGUMENT"), doc
            assert doc["error"]["message"].startswith("card not accepted: "), doc
            status, doc = _post(srv.port, "/v1/quote", receipt("e-2"))
            assert (status, doc["error"]["code"]) == (412, "FAILED_PRECONDITION"), doc
            assert doc["error"]["message"].startswith("no snapshot loaded"), doc
        finally:
            srv.stop()
        assert empty.status().to_json()["lastSeq"] == 0
    finally:
        empty.close()


def test_the_error_classes_say_where_an_invalid_card_belongs() -> None:
    """agent/errors.py: the INVALID card's class is bad input (INVALID_ARGUMENT, exit 2,
    HTTP 400); the blocked card's a refusal (FAILED_PRECONDITION, exit 2, HTTP 412); the
    module's drawing of the hierarchy says so."""
    from tillpoint.agent import errors

    invalid = errors.edge_of(errors.InvalidCard("card not accepted: nothing was scanned"))
    blocked = errors.edge_of(errors.CardRefused("card refused: the card is blocked"))
    assert issubclass(errors.InvalidCard, errors.InputError)
    assert not issubclass(errors.CardRefused, errors.InputError)
    assert (invalid.exit_code, invalid.code, invalid.http_status) == (2, "INVALID_ARGUMENT", 400)
    assert (blocked.exit_code, blocked.code, blocked.http_status) == (2, "FAILED_PRECONDITION", 412)
    drawing = errors.__doc__ or ""
    invalid_row = next(line for line in drawing.splitlines() if "InvalidCard" in line)
    blocked_row = next(line for line in drawing.splitlines() if "CardRefused" in line)
    assert "INVALID_ARGUMENT" in invalid_row and "INVALID" in invalid_row.split("ARGUMENT")[1]
    assert "FAILED_PRECONDITION" in blocked_row and "INVALID" not in blocked_row.split("TION")[1]
    # drawn under InputError (its branch of the tree), before the next top-level class
    lines = drawing.splitlines()
    at = lines.index(invalid_row)
    assert lines.index(next(x for x in lines if "InputError" in x)) < at
    assert at < lines.index(next(x for x in lines if "── Refused" in x))


# ------------------------------------------------------- a real `tillpoint run` process


def _env(data: Path, http: int, grpc_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(
        TILLPOINT_DEVICE_ID="till-1",
        TILLPOINT_DATA_DIR=str(data),
        TILLPOINT_HTTP__LISTEN=f"127.0.0.1:{http}",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{grpc_port}",
        TILLPOINT_METRICS__ENABLED="false",
    )
    return env


@pytest.mark.slow
def test_a_running_agent_answers_an_invalid_card_400_and_a_blocked_one_412(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """`tillpoint run` as a till runs it: HTTP, gRPC and the CLI forwarded to it agree."""
    data, http, grpc_port = tmp_path / "data", free_port(), free_port()
    env = _env(data, http, grpc_port)
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(_snapshot(), ensure_ascii=False), encoding="utf-8")
    subprocess.run([EXE, "snapshot", "load", snap], env=env, check=True, timeout=60)
    proc = subprocess.Popen(
        [EXE, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    procs.append(proc)
    deadline = time.monotonic() + 30
    while not (data / "serving.json").exists():
        assert proc.poll() is None, "tillpoint run stopped"
        assert time.monotonic() < deadline, "tillpoint run never served"
        time.sleep(0.05)
    before = _ledger(data)
    cases = [
        ("2770000000018", 400, "INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
        ("2770000000031", 412, "FAILED_PRECONDITION", grpc.StatusCode.FAILED_PRECONDITION),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        for card, http_status, code, grpc_code in cases:
            for call in (*SALES, "balance"):
                status, got, message = _http_refusal(http, call, card)
                assert (status, got) == (http_status, code), (call, card, message)
                assert _grpc_refusal(stub, call, card) == (grpc_code, message)
                if call == "balance":
                    args: list[Any] = ["balance", card]
                else:
                    path = tmp_path / f"{call}-{card}.json"
                    path.write_text(json.dumps(receipt("c-x", card=card)), encoding="utf-8")
                    args = [call, path]
                run = subprocess.run(
                    [EXE, *args, "--json"], env=env, capture_output=True, text=True, timeout=60
                )
                assert (run.returncode, run.stdout, run.stderr) == (
                    2,
                    "",
                    f"tillpoint: {message}\n",
                ), (call, card)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert _ledger(data) == before
