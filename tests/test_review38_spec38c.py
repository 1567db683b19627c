"""Review 38, spec38c: the hidden tests' side: features combined on one receipt, told at every
door. The stories are the scenarios `tests/scenarios/review38/s5_*` of this review (every
figure worked out by hand from CONTRACT §5–§17, the arithmetic in each step's `why`):

- Анна (gold, birthday window, favourite Friday, points expiring on 15.12 and 31.12): a coupon
  that unlocks an offer on a line a basket deal wanted (the deal loses, then wins), a
  favourite-weekday multiplier at 23:59:59 and the birthday's at the store's local midnight
  written in UTC, weighed apples reaching a quantity-price tier together, a receipt percent
  on the one line left, redemption bound by PERCENT, REQUESTED and the day's offline limit
  while a deal and a receipt percent apply, a hold that reserves a code and the limit then
  cancelled, every coupon verdict, a deal's line refunded alone in two parts across the
  expiry of the batch its points came from, balances at a batch's last second;
- Борис (control group): both control-group offers held out (one unlocked by his own code),
  a control-group coupon offer on a deal's line (traced, not held out), a receipt percent
  with nothing to discount, a hold confirmed after a later sale (its balance at its own
  `at`), a refund taking back points another sale spent; an UNKNOWN card with a code.

Each story is told three ways, all held to the same hand figures and to each other:
the CLI (tests/test_scenarios.py), review 35's three doors in one process
(`said_at_every_door`: the HTTP document byte for byte the CLI's, gRPC the same message), and
here to real `tillpoint run` processes, one spoken to over HTTP and one over gRPC, where
each answer is held to the scenario's `expect`, to the other door's answer, and to CONTRACT
§17 (the trace adds up to the figures; quote = hold = checkout is in the stories' `expect`).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import free_port
from .test_review35_shape35 import GRPC_CALLS, _body, clean_env, said_at_every_door
from .test_scenarios import _mismatches

__all__ = ["clean_env"]  # a fixture used by name

EXE = Path(sys.executable).parent / "tillpoint"
TIMEOUT = 30.0
STORIES = sorted(
    p
    for p in (Path(__file__).resolve().parent / "scenarios" / "review38").glob("s5_*.json")
    if json.loads(p.read_text("utf-8")).get("scenario", "").startswith("review38 spec38c")
)
IDS = [p.stem[:40] for p in STORIES]
ROUTES = {
    "quote": "/v1/quote",
    "hold": "/v1/hold",
    "checkout": "/v1/checkout",
    "confirm": "/v1/confirm",
    "cancel": "/v1/cancel",
    "refund": "/v1/refund",
    "balance": "/v1/balance",
    "identify": "/v1/identify",
}


def test_the_stories_are_there() -> None:
    assert len(STORIES) == 3, STORIES


# ---------------------------------------------------------------- the three doors in one process


@pytest.mark.parametrize("file", STORIES, ids=IDS)
def test_each_story_says_the_same_at_every_door(
    file: Path, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI, HTTP/JSON and gRPC, each on a till of its own: the same refusals (the HTTP
    status and gRPC code each refused step names), the same documents, the `expect` met."""
    problems = said_at_every_door(file, tmp_path, monkeypatch)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- CONTRACT §17: the trace adds up


def trace_problems(doc: dict[str, Any]) -> list[str]:
    """CONTRACT §17: the trace explains the figures it comes with: each line's discount is
    its APPLIED money offer's (a line offer, a deal, or the receipt percent, whose row is the
    sum over its lines), the redemption's allowed points are the redeemed points and the cap
    named binds, and the APPLIED extra points are in the earned points."""
    trace = doc.get("trace")
    if trace is None:
        return []
    out: list[str] = []
    money = {"PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "QUANTITY_PRICE", "MULTIBUY"}
    receipt_percent = 0
    for line, row in zip(doc["lines"], trace["lines"], strict=True):
        applied = [
            o for o in row["offers"] if o["outcome"] == "APPLIED" and o["kind"] in money
        ]
        if len(applied) > 1:
            out.append(f"line {row['index']}: two money offers APPLIED: {applied}")
        if applied:
            if line.get("offerId") != applied[0]["offerId"]:
                out.append(f"line {row['index']}: offerId {line.get('offerId')} != {applied}")
            if line["discountMinor"] != applied[0]["discountMinor"]:
                out.append(f"line {row['index']}: discount {line['discountMinor']} != {applied}")
        else:
            receipt_percent += line["discountMinor"]
    for offer in trace.get("receiptOffers", []):
        if offer["kind"] == "RECEIPT_PERCENT_OFF" and offer["outcome"] == "APPLIED":
            if offer["discountMinor"] != receipt_percent:
                out.append(f"{offer['offerId']}: {offer['discountMinor']} != {receipt_percent}")
            receipt_percent = 0
    if receipt_percent:
        out.append(f"{receipt_percent} of discount no trace row explains")
    if sum(line["discountMinor"] for line in doc["lines"]) != doc["discountMinor"]:
        out.append("the lines' discounts do not add up to discountMinor")
    redemption = trace["redemption"]
    if redemption["allowedPoints"] != doc["redeemedPoints"]:
        out.append(f"allowed {redemption['allowedPoints']} != redeemed {doc['redeemedPoints']}")
    caps = {cap["name"]: cap["points"] for cap in redemption.get("caps", [])}
    if caps and min(caps.values()) != redemption["allowedPoints"]:
        out.append(f"caps {caps} do not bind at {redemption['allowedPoints']}")
    if caps and caps.get(redemption["boundBy"]) != redemption["allowedPoints"]:
        out.append(f"boundBy {redemption['boundBy']} is not the cap that binds: {caps}")
    extra = sum(
        o["points"]
        for o in trace.get("receiptOffers", [])
        if o["kind"] == "EXTRA_POINTS" and o["outcome"] == "APPLIED"
    )
    if sum(line["earnedPoints"] for line in doc["lines"]) + extra != doc["earnedPoints"]:
        out.append("the lines' points and the extra points do not add up to earnedPoints")
    return out


def test_the_hand_figures_and_their_traces_add_up() -> None:
    """The check above, first on the stories' own hand-worked answers (each `expect` that
    gives a trace with its figures adds up), then on one of them with a figure changed."""
    checked = 0
    for file in STORIES:
        for step in json.loads(file.read_text("utf-8"))["steps"]:
            expect = step.get("expect") or {}
            if "trace" in expect and "discountMinor" in expect and "caps" in expect["trace"].get(
                "redemption", {}
            ):
                assert trace_problems(expect) == [], (file.name, step["input"]["receiptId"])
                checked += 1
    assert checked >= 7
    doc = json.loads(STORIES[0].read_text("utf-8"))["steps"][1]["expect"]
    doc["lines"][2]["discountMinor"] += 1
    assert trace_problems(doc)


# ---------------------------------------------------------------- real `tillpoint run`s


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
    return env


def _start(where: Path, snap: dict[str, Any]) -> Served:
    """`tillpoint run` on a data directory of its own with `snap` loaded (by the CLI, as an
    operator seeds a standalone till), gRPC on a free loopback port, HTTP on another."""
    where.mkdir(parents=True)
    data = where / "data"
    file = where / "snapshot.json"
    file.write_text(json.dumps(snap, ensure_ascii=False), "utf-8")
    done = subprocess.run(
        [EXE, "--data-dir", data, "snapshot", "load", file, "--json"],
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    port = free_port()
    conf = where / "till.toml"
    conf.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[metrics]\nenabled = false\n', "utf-8")
    proc = subprocess.Popen(
        [EXE, "--config", conf, "--data-dir", data, "run"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (data / "serving.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError("tillpoint run never served")
        time.sleep(0.05)
    doc = json.loads((data / "serving.json").read_text("utf-8"))
    return Served(proc, int(doc["port"]), port)


def _stop(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait(timeout=10)


@pytest.fixture
def two_runs(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[dict[str, Any], Served, Served]]:
    """The story of `request.param` and two `tillpoint run`s with its snapshot loaded."""
    file: Path = request.param
    story = json.loads(file.read_text("utf-8"))
    snap = story["steps"][0]["input"]
    web = _start(tmp_path / "http", snap)
    try:
        rpc = _start(tmp_path / "grpc", snap)
    except BaseException:
        _stop(web)
        raise
    yield story, web, rpc
    _stop(rpc)
    _stop(web)


def _post(port: int, route: str, body: Any) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", route, body=json.dumps(body, ensure_ascii=False).encode())
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(raw), raw


@pytest.mark.slow
@pytest.mark.parametrize("two_runs", STORIES, ids=IDS, indirect=True)
def test_each_story_told_to_real_runs_over_http_and_grpc(
    two_runs: tuple[dict[str, Any], Served, Served],
) -> None:
    """Each step of the story to one `tillpoint run` over HTTP and to another over gRPC: the
    `expect` met by the HTTP document, the gRPC answer the same message, the trace adding up
    (CONTRACT §17), a refused step refused with the status and code CONTRACT §12 maps it to."""
    story, web, rpc = two_runs
    problems: list[str] = []
    with grpc.insecure_channel(f"127.0.0.1:{rpc.grpc}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        for index, step in enumerate(story["steps"][1:], start=1):
            where = f"step {index} ({step['command']})"
            body = _body(step)
            status, doc, _ = _post(web.http, ROUTES[step["command"]], body)
            method, request_type, _ = GRPC_CALLS[step["command"]]
            try:
                reply = getattr(stub, method)(
                    json_format.ParseDict(body, request_type()), timeout=TIMEOUT
                )
                code = "OK"
            except grpc.RpcError as exc:
                reply, code = None, exc.code().name  # type: ignore[attr-defined]
            expect = step.get("expect")
            if isinstance(expect, dict) and set(expect) == {"exitCode"}:
                if status != step["httpStatus"] or code != step["grpcCode"]:
                    problems.append(
                        f"{where}: HTTP {status} gRPC {code}, expected "
                        f"{step['httpStatus']} {step['grpcCode']}: {doc}"
                    )
                continue
            if status != 200 or reply is None:
                problems.append(f"{where}: HTTP {status} {doc}, gRPC {code}")
                continue
            problems += [f"{where} http: {m}" for m in _mismatches(expect or {}, doc)]
            problems += [f"{where} http: {m}" for m in trace_problems(doc)]
            mine = json_format.ParseDict(doc, type(reply)(), ignore_unknown_fields=False)
            if isinstance(reply, pb.CheckoutResult):  # each till's own clock
                mine.ClearField("hold_expires_at")
                reply.ClearField("hold_expires_at")
            if mine != reply:
                problems.append(
                    f"{where}: gRPC {json_format.MessageToJson(reply)} != HTTP {json.dumps(doc)}"
                )
    assert not problems, "\n".join(problems)

