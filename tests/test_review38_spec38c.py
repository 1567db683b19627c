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
from .test_review35_shape35 import (
    GRPC_CALLS,
    _body,
    _without_hold_expiry,
    clean_env,
    said_at_every_door,
)
from .test_scenarios import _argv, _mismatches

__all__ = ["clean_env"]  # a fixture used by name

EXE = Path(sys.executable).parent / "tillpoint"
TIMEOUT = 30.0
STORIES = sorted(
    p
    for p in (Path(__file__).resolve().parent / "scenarios" / "review38").glob("s5_*.json")
    if json.loads(p.read_text("utf-8")).get("scenario", "").startswith("review38 spec38c")
)
IDS = [p.stem[:40] for p in STORIES]
# Every review 38 story (spec38a's, spec38b's, left38's too) is walked at the three doors
# here: one walk a session's scenarios (review 35's `said_at_every_door`).
EVERY_STORY = sorted((Path(__file__).resolve().parent / "scenarios" / "review38").glob("*.json"))
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


@pytest.mark.parametrize("file", EVERY_STORY, ids=[p.stem[:40] for p in EVERY_STORY])
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
        applied = [o for o in row["offers"] if o["outcome"] == "APPLIED" and o["kind"] in money]
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
            if (
                "trace" in expect
                and "discountMinor" in expect
                and "caps" in expect["trace"].get("redemption", {})
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
    data: Path


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
    return Served(proc, int(doc["port"]), port, data)


def _stop(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait(timeout=10)


@pytest.fixture
def runs(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[dict[str, Any], Served, Served, Served]]:
    """The story of `request.param` and three `tillpoint run`s with its snapshot loaded:
    one for HTTP, one for gRPC, one for the CLI (its commands forwarded to the `run`)."""
    file: Path = request.param
    story = json.loads(file.read_text("utf-8"))
    snap = story["steps"][0]["input"]
    started: list[Served] = []
    try:
        for door in ("http", "grpc", "cli"):
            started.append(_start(tmp_path / door, snap))
        yield story, started[0], started[1], started[2]
    finally:
        for served in reversed(started):
            _stop(served)


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
@pytest.mark.parametrize("runs", STORIES, ids=IDS, indirect=True)
def test_each_story_told_to_real_runs_over_http_grpc_and_the_cli(
    runs: tuple[dict[str, Any], Served, Served, Served],
) -> None:
    """Each step of the story to one `tillpoint run` over HTTP, to another over gRPC and to a
    third by the `tillpoint` command (forwarded to it): the `expect` met by the HTTP
    document, the CLI's `--json` byte for byte the HTTP body (CONTRACT §12), the gRPC answer
    the same message, the trace adding up (CONTRACT §17), a refused step refused with exit 2
    and the status and code CONTRACT §12 maps it to."""
    story, web, rpc, cli = runs
    problems: list[str] = []
    with grpc.insecure_channel(f"127.0.0.1:{rpc.grpc}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        for index, step in enumerate(story["steps"][1:], start=1):
            where = f"step {index} ({step['command']})"
            body = _body(step)
            status, doc, raw = _post(web.http, ROUTES[step["command"]], body)
            method, request_type, _ = GRPC_CALLS[step["command"]]
            try:
                reply = getattr(stub, method)(
                    json_format.ParseDict(body, request_type()), timeout=TIMEOUT
                )
                code = "OK"
            except grpc.RpcError as exc:
                reply, code = None, exc.code().name  # type: ignore[attr-defined]
            argv = [EXE, *(str(a) for a in _argv(step, cli.data, index))]
            told = subprocess.run(argv, env=_env(), capture_output=True, timeout=60, check=False)
            expect = step.get("expect")
            if isinstance(expect, dict) and set(expect) == {"exitCode"}:
                if told.returncode != 2 or told.stdout:
                    problems.append(f"{where}: CLI exit {told.returncode} {told.stdout!r}")
                if status != step["httpStatus"] or code != step["grpcCode"]:
                    problems.append(
                        f"{where}: HTTP {status} gRPC {code}, expected "
                        f"{step['httpStatus']} {step['grpcCode']}: {doc}"
                    )
                continue
            if status != 200 or reply is None:
                problems.append(f"{where}: HTTP {status} {doc}, gRPC {code}")
                continue
            if _without_hold_expiry(told.stdout.decode()) != _without_hold_expiry(raw.decode()):
                problems.append(f"{where}: CLI {told.stdout!r} != HTTP {raw!r}")
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


# ---------------------------------------------------------------- two tills online, one hub


def _master_data() -> dict[str, Any]:
    """The stories' snapshot as the hub imports it (its sections, no header)."""
    snap = json.loads(STORIES[1].read_text("utf-8"))["steps"][0]["input"]
    keys = ("program", "categories", "products", "customers", "cards", "offers", "coupons")
    return {k: snap[k] for k in keys}


@pytest.fixture
def online(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A hub holding the stories' data and two enrolled tills, till-1 served over gRPC and
    till-2 over HTTP (each yielded as a function: call name, body → (status, document))."""
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.sync.loopback import LoopbackHub

    from .conftest import enrolled_till, grpc_served

    hub = LoopbackHub(tmp_path / "hub", data=_master_data())
    one = enrolled_till(hub, tmp_path / "t1", "till-1")
    two = enrolled_till(hub, tmp_path / "t2", "till-2")
    web = HttpServer(two.agent, "127.0.0.1:0")
    web.start()
    try:
        with grpc_served(one.agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.PosAgentStub(ch)

            def by_grpc(call: str, body: dict[str, Any]) -> tuple[str, Any]:
                method, request_type, _ = GRPC_CALLS[call]
                try:
                    reply = getattr(stub, method)(
                        json_format.ParseDict(body, request_type()), timeout=TIMEOUT
                    )
                except grpc.RpcError as exc:
                    return exc.code().name, None  # type: ignore[attr-defined]
                doc = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)
                return "OK", json.loads(json.dumps(doc), parse_int=int)

            def by_http(call: str, body: dict[str, Any]) -> tuple[str, Any]:
                status, doc, _ = _post(web.port, ROUTES[call], body)
                return str(status), doc

            yield by_grpc, by_http
    finally:
        web.stop()
        two.stop()
        one.stop()
        hub.stop()


def _ints(doc: Any) -> Any:
    """gRPC's JSON writes int64 as strings: numbers again, to compare with hand figures."""
    if isinstance(doc, dict):
        return {k: _ints(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ints(v) for v in doc]
    if isinstance(doc, str) and doc.lstrip("-").isdigit():
        return int(doc)
    return doc


ANNA = "2770000000017"
BORIS = "2770000000024"


def _line(sku: str, qty: str, price: int) -> dict[str, Any]:
    return {"sku": sku, "qty": qty, "priceMinor": price}


@pytest.mark.slow
def test_two_tills_online_one_code_and_one_balance_with_deals_and_windows(
    online: tuple[Any, Any],
) -> None:
    """CONTRACT §9, §11, §13, §15, §17 online. till-1 holds Анна's a-3 basket with SWEET-ANY
    (Saturday 10:00, birthday ×3): the hub holds the code and the 70 points. till-2 quotes
    the same basket under another id: APPLIED (a quote asks the hub nothing, §13's
    decisions), then checks it out: the hub says the code is used, ALREADY_USED; the
    re-price without it keeps the hub's grant, 70 (HUB_GRANT binds, not PERCENT's 93):
    MILK o-morning min(20000, 4000), CHOC 15000 with no offer (one unit, no group); spread
    70 × (160, 150) / 310 = 36.13, 33.87 → 36, 34; points ×3 at 5 %: 12400 → 18.6, 11600 →
    17.4: 36, shares 18 + 1 (MILK's .6), 17; + xp-anna 40 = 76; payable 35000 − 4000 −
    7000 = 24000. till-1 cancels: the code is free; till-2's next sale gets it.
    Борис on both tills: till-1 holds the b-2 deal basket (144 points, PERCENT), till-2's
    two cheeses and a milk may redeem floor(90000 × 30 / 10000) = 270 of his 300, but the
    hub has 300 − 144 = 156 left for him: 156 (HUB_GRANT). The two tills spend 300, no more."""
    by_grpc, by_http = online
    basket = [_line("MILK", "2", 10000), _line("CHOC", "1", 15000)]
    a3 = {
        "receiptId": "on-a3",
        "at": "2026-12-05T10:00:00+03:00",
        "card": ANNA,
        "lines": basket,
        "redeemPoints": 100,
        "coupons": ["SWEET-ANY"],
        "explain": True,
    }
    code, held = by_grpc("hold", a3)
    assert code == "OK", code
    held = _ints(held)
    assert held["mode"] == "ONLINE" and held["state"] == "HELD"
    assert held["redeemedPoints"] == 70 and held["earnedPoints"] == 64
    assert held["coupons"] == [{"code": "SWEETANY", "status": "APPLIED", "reason": ""}]
    assert trace_problems(held) == []
    caps = {c["name"]: c["points"] for c in held["trace"]["redemption"]["caps"]}
    assert caps["HUB_GRANT"] == 70 and "OFFLINE_LIMIT" not in caps, caps

    other = {**a3, "receiptId": "on-x1", "at": "2026-12-05T10:05:00+03:00"}
    status, quoted = by_http("quote", other)
    assert status == "200" and quoted["coupons"][0]["status"] == "APPLIED", quoted
    status, sold = by_http("checkout", other)
    assert status == "200", sold
    assert sold["mode"] == "ONLINE"
    assert sold["coupons"] == [{"code": "SWEETANY", "status": "REJECTED", "reason": "ALREADY_USED"}]
    figures = {
        k: sold[k]
        for k in ("totalMinor", "discountMinor", "redeemedPoints", "payableMinor", "earnedPoints")
    }
    assert figures == {
        "totalMinor": 35000,
        "discountMinor": 4000,
        "redeemedPoints": 70,
        "payableMinor": 24000,
        "earnedPoints": 76,
    }, sold
    assert [
        (x["discountMinor"], x.get("offerId"), x["redeemedMinor"], x["earnedPoints"])
        for x in sold["lines"]
    ] == [(4000, "o-morning", 3600, 19), (0, None, 3400, 17)]
    assert sold["trace"]["redemption"]["boundBy"] == "HUB_GRANT", sold["trace"]["redemption"]
    assert trace_problems(sold) == []

    code, cancelled = by_grpc("cancel", {"receiptId": "on-a3"})
    assert code == "OK" and cancelled["state"] == "CANCELLED"
    status, again = by_http("checkout", {**other, "receiptId": "on-x2"})
    assert status == "200" and again["coupons"][0]["status"] == "APPLIED", again
    assert again["lines"][1]["offerId"] == "o-choc-cpn"

    b2 = {
        "receiptId": "on-b2",
        "at": "2026-12-07T12:00:00+03:00",
        "card": BORIS,
        "lines": [_line("CHOC", "3", 15000), _line("COOKIE", "3", 9000)],
        "redeemPoints": -1,
    }
    code, held_b = by_grpc("hold", b2)
    assert code == "OK" and _ints(held_b)["redeemedPoints"] == 144, held_b
    b9 = {
        "receiptId": "on-b9",
        "at": "2026-12-07T12:05:00+03:00",
        "card": BORIS,
        "explain": True,
        "lines": [_line("CHEESE", "2", 45000), _line("MILK", "1", 10000)],
        "redeemPoints": -1,
    }
    status, sold_b = by_http("checkout", b9)
    assert status == "200", sold_b
    assert sold_b["redeemedPoints"] == 156, sold_b["trace"]["redemption"]
    assert sold_b["trace"]["redemption"]["boundBy"] == "HUB_GRANT"
    assert sold_b["heldOut"] == ["o-cheese-ctl"]
    assert trace_problems(sold_b) == []
    code, done = by_grpc("confirm", {"receiptId": "on-b2"})
    assert code == "OK" and _ints(done)["redeemedPoints"] == 144
