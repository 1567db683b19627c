"""Review 32 (conc32): many POS calls at once on one till, through every door.

A till's POS, its self-checkout kiosk and a support engineer's CLI call ONE real
`tillpoint run` process at the same moment: HTTP/JSON, gRPC and the `tillpoint` command
line forwarded to the running agent (agent/forward.py). Each test releases its calls
together from a barrier and checks that exactly one outcome wins and nothing is lost or
doubled: the ledger's receipts, journal and outbox, the points, coupon uses, print jobs;
and that every answer is one the contract documents (CONTRACT §10, §11, §12: 200/OK, 404,
409, 412, ...), never a 500 or an INTERNAL.

What tests/test_review21_race21.py, tests/test_review26_life26.py and
tests/test_commit_early.py already hold (in-process agents, or one receipt per door at
random) is not repeated: here the racing calls go through different doors of one
process at once, on one receiptId, one customer, one coupon, one sale.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.service import Agent
from tillpoint.printer.virtual import VirtualPrinter
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import PROGRAM, free_port, snapshot
from .conftest import receipt as receipt_json
from .test_review32_long32 import FORWARDED_ONLY

pytestmark = pytest.mark.slow  # each test starts a real `tillpoint run`: 3-20 s

DEVICE = "till-1"
ANNA = "2770000000017"  # c-a: 1200 points, gold
BORIS = "2770000000024"  # c-b: 80 points, base
EXE = str(Path(sys.executable).with_name("tillpoint"))
REPO = Path(__file__).resolve().parent.parent
BIG = [{"sku": "4601234000017", "qty": "1", "priceMinor": 1_000_000}]  # 30 %: 3000 points
TIMEOUT = 60

# What each door may answer: a documented outcome. The CLI's exit codes: 0, 2 (a refusal)
# and 1 (retry: unavailable); HTTP and gRPC their statuses (never 500 / INTERNAL).
DOCUMENTED = {"ok", "conflict", "precondition", "not_found", "invalid"}
HTTP_KIND = {200: "ok", 409: "conflict", 412: "precondition", 404: "not_found", 400: "invalid"}
GRPC_KIND = {
    "OK": "ok",
    "ALREADY_EXISTS": "conflict",
    "FAILED_PRECONDITION": "precondition",
    "NOT_FOUND": "not_found",
    "INVALID_ARGUMENT": "invalid",
}
GRPC_REQUEST = {
    "hold": pb.Receipt,
    "checkout": pb.Receipt,
    "quote": pb.Receipt,
    "confirm": pb.ConfirmRequest,
    "cancel": pb.CancelRequest,
    "refund": pb.Refund,
    "balance": pb.BalanceRequest,
}


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    out["TILLPOINT_DEVICE_ID"] = DEVICE
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    return out


class Answer:
    """One door's answer: its kind (a documented outcome, or what went wrong), the raw
    status (HTTP status, gRPC code name, CLI exit code), the result document or message."""

    def __init__(self, door: str, kind: str, raw: Any, doc: Any) -> None:
        self.door, self.kind, self.raw, self.doc = door, kind, raw, doc

    def __repr__(self) -> str:
        return f"Answer({self.door}, {self.kind}, {self.raw}, {str(self.doc)[:300]})"

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def figure(self, name: str) -> int:
        return int(self.doc.get(name, 0) or 0)


class Till:
    """A real `tillpoint run` on `data` (seeded before), with its three doors."""

    def __init__(
        self,
        work: Path,
        data: Path,
        hub: LoopbackHub | None = None,
        hub_conf: str = "",
        printer: VirtualPrinter | None = None,
    ):
        self.work, self.data = work, data
        self.grpc_port, self.http_port = free_port(), free_port()
        self.conf = work / "till.toml"
        text = (
            f'device_id = "{DEVICE}"\n'
            f'[server]\nlisten = "127.0.0.1:{self.grpc_port}"\n[metrics]\nenabled = false\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n'
        )
        if printer is not None:  # a real ESC/POS printer on TCP
            text += f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {printer.port}\n'
        if hub is not None:
            text += f'[hub]\naddress = "{hub.address}"\npoll_interval_s = 30\n{hub_conf}'
        self.conf.write_text(text, encoding="utf-8")
        self.printer: VirtualPrinter | None = None
        self.log = work / "run.log"
        self.files = iter(range(10**6))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [EXE, "--config", str(self.conf), "--data-dir", str(data), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env(),
            )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        try:
            self._wait_served()
        except BaseException:
            # the test fails here, and nobody holds this object to stop the run: stopped
            # now, or it outlived the test (its ports, its data directory) and the CI run
            # (review 42, review42); killed when it does not end at SIGTERM
            try:
                self.stop()
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=TIMEOUT)
            raise

    def _wait_served(self) -> None:
        self._ready = ready = grpc.channel_ready_future(self.channel)
        # A run that ended before it served is said at once, with its log (review 42: one
        # that could not bind its port was waited for 60 s and told as a gRPC time-out).
        wait_for(lambda: ready.done() or self.proc.poll() is not None, TIMEOUT)
        if self.proc.poll() is not None:
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise AssertionError(f"tillpoint run ended ({self.proc.returncode}) unserved:\n{tail}")
        self.stub = pb_grpc.PosAgentStub(self.channel)
        wait_for(lambda: self.healthy(), TIMEOUT)
        wait_for(lambda: (self.data / "serving.json").exists(), TIMEOUT)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthz", timeout=5
            ) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        # a readiness wait still watching the channel (a run that ended unserved) is ended
        # first: the channel closed under grpcio's polling thread made it die with
        # "Cannot monitor channel state: Channel closed!" (review 42, review42), as
        # `HubLink.close` found
        ready = getattr(self, "_ready", None)
        if ready is not None and not ready.done():
            ready.cancel()
            polling = getattr(self.channel, "_connectivity_state", None)
            # grpcio's thread ends after its next 0.2 s watch; 30 s for a loaded machine
            deadline = time.monotonic() + 30
            while getattr(polling, "polling", False) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=TIMEOUT)

    # ------------------------------------------------------------ the doors

    def call(self, door: str, name: str, body: dict[str, Any]) -> Answer:
        return {"http": self.http, "grpc": self.grpc, "cli": self.cli}[door](name, body)

    def http(self, name: str, body: dict[str, Any]) -> Answer:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/v1/{name}",
            data=json.dumps(body, ensure_ascii=False).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                return Answer("http", "ok", answer.status, json.loads(answer.read()))
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                doc = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                doc = text
            return Answer("http", HTTP_KIND.get(exc.code, f"http {exc.code}"), exc.code, doc)

    def grpc(self, name: str, body: dict[str, Any]) -> Answer:
        method = getattr(self.stub, name.capitalize())
        try:
            reply = method(json_format.ParseDict(body, GRPC_REQUEST[name]()), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            code = exc.code().name
            return Answer("grpc", GRPC_KIND.get(code, f"grpc {code}"), code, exc.details())
        doc = json_format.MessageToDict(reply)
        return Answer("grpc", "ok", "OK", doc)

    def cli(self, name: str, body: dict[str, Any]) -> Answer:
        """`tillpoint NAME ... --json`, forwarded to the running agent (never run locally)."""
        args: list[str] = [name]
        if name in ("quote", "hold", "checkout", "refund"):
            path = self.work / f"body-{next(self.files)}.json"
            path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
            args.append(str(path))
        elif name in ("confirm", "cancel"):
            args.append(body["receiptId"])
            if body.get("fiscalDocument"):
                args += ["--fiscal", body["fiscalDocument"]]
        elif name == "balance":
            args.append(body["card"])
        done = subprocess.run(
            [sys.executable, "-c", FORWARDED_ONLY, "--data-dir", str(self.data), *args, "--json"],
            capture_output=True,
            text=True,
            env=env(),
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode == 0:
            return Answer("cli", "ok", 0, json.loads(done.stdout))
        message = done.stderr.strip()
        kind = f"cli exit {done.returncode}"
        if done.returncode == 2 and "\n" not in message and "Traceback" not in message:
            kind = cli_kind(message)
        return Answer("cli", kind, done.returncode, message)

    # ------------------------------------------------------------ what the till stored

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.data / "ledger.db", timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def count(self, table: str, where: str = "1", *args: Any) -> int:
        return int(self.rows(f"SELECT count(*) FROM {table} WHERE {where}", *args)[0][0])

    def balance(self, card: str) -> int:
        answer = self.http("balance", {"card": card})
        assert answer.ok, answer
        return answer.figure("availablePoints")


def cli_kind(message: str) -> str:
    """The documented refusal a forwarded CLI's one-line message (exit 2) names."""
    words = message.lower()
    if "another body" in words or "different body" in words or "already" in words:
        return "conflict"
    if "not held at this till" in words or "never committed" in words or "not found" in words:
        return "not_found"
    return "precondition"  # exit 2: refused (the message is checked where it matters)


def at_once(calls: Sequence[Callable[[], Answer]]) -> list[Answer]:
    """Run the calls on threads released together by a barrier; their answers in order."""
    gate = threading.Barrier(len(calls))
    out: list[Any] = [None] * len(calls)

    def run(i: int, call: Callable[[], Answer]) -> None:
        try:
            gate.wait(TIMEOUT)
            out[i] = call()
        except BaseException as exc:  # reported by the assertions below
            out[i] = Answer("?", f"raised {exc!r}", None, None)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    return out


def documented(answers: Sequence[Answer]) -> None:
    bad = [a for a in answers if a.kind not in DOCUMENTED]
    assert not bad, bad


def seeded(data: Path, snap: dict[str, Any]) -> Path:
    seed = Agent(data, DEVICE)
    try:
        seed.load_snapshot(snap)
    finally:
        seed.close()
    return data


def receipt(rid: str, card: str = ANNA, **changes: Any) -> dict[str, Any]:
    return receipt_json(rid, card, **changes)


# Anna's printable offer: each of her commits queues one print job (CONTRACT §7).
PRINTABLE = {
    "id": "o-next",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000024"],
    "value": "10",
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2026-12-31T23:59:59+03:00",
    "printable": True,
    "printText": "-10% на хлеб",
}


@pytest.fixture
def till(tmp_path: Path) -> Iterator[Till]:
    program = {
        **PROGRAM,
        "holdTtlSeconds": 600,
        "offlineRedeemLimitPoints": 100_000,
        "offerPrintCooldownDays": 0,
    }
    snap = snapshot(program=program, offers=[PRINTABLE])
    with VirtualPrinter() as printer:
        t = Till(tmp_path, seeded(tmp_path / "till", snap), printer=printer)
        t.printer = printer
        yield t
        t.stop()


def printed_once(t: Till) -> None:
    """Each committed receipt's print job printed once, and nothing else (CONTRACT §7)."""
    assert t.printer is not None
    jobs = t.count("print_jobs")
    assert jobs == t.count("journal", "kind = 'CHECKOUT'")
    wait_for(lambda: t.count("print_jobs", "state != 'DONE'") == 0, TIMEOUT)
    assert len(t.printer.wait_for(jobs, 10)) == jobs
    time.sleep(0.3)
    assert len(t.printer.complete) == jobs


DOORS = ("http", "grpc", "cli")


# ---------------------------------------------------------------- one receiptId


def test_the_same_hold_from_three_doors_at_once_is_held_once(till: Till) -> None:
    """CONTRACT §11: Hold is idempotent on receiptId; three doors sending one body at once
    all get the one held result, one hold is stored and it reserves its points once."""
    body = receipt("h-same", redeemPoints=100, lines=BIG)
    answers = at_once([partial(till.call, d, "hold", body) for d in DOORS])
    documented(answers)
    assert all(a.ok for a in answers), answers
    assert {a.doc["state"] for a in answers} == {"HELD"}
    assert {a.figure("redeemedPoints") for a in answers} == {100}
    assert len({a.doc["holdExpiresAt"] for a in answers}) == 1
    assert till.count("receipt_life", "receipt_id = ?", "h-same") == 1
    assert till.count("journal") == till.count("outbox") == till.count("print_jobs") == 0
    # the other receipts see 100 points reserved, once
    quote = till.http("quote", receipt("q-after", redeemPoints=-1, lines=BIG))
    assert quote.ok and quote.figure("redeemedPoints") == 1100, quote


def test_two_bodies_held_at_once_under_one_receipt_id_one_wins_the_others_conflict(
    till: Till,
) -> None:
    """CONTRACT §11: another body under a stored receiptId is a conflict (409,
    ALREADY_EXISTS, exit 2), never answered with another body's result; exactly one is
    stored, and its reservation is the only one."""
    bodies = [receipt("h-diff", redeemPoints=10 * (i + 1), lines=BIG) for i in range(3)]
    answers = at_once(
        [partial(till.call, d, "hold", b) for d, b in zip(DOORS, bodies, strict=True)]
    )
    documented(answers)
    won = [a for a in answers if a.ok]
    assert len(won) == 1, answers
    assert sorted(a.kind for a in answers) == ["conflict", "conflict", "ok"], answers
    points = won[0].figure("redeemedPoints")
    assert points in (10, 20, 30)
    assert till.count("receipt_life", "receipt_id = ?", "h-diff") == 1
    quote = till.http("quote", receipt("q-after", redeemPoints=-1, lines=BIG))
    assert quote.figure("redeemedPoints") == 1200 - points, quote


def test_hold_and_checkout_of_one_receipt_at_once_commit_it_once(till: Till) -> None:
    """CONTRACT §11: Checkout of a held receipt (same body) confirms it; Hold of a
    confirmed one answers the confirmed result. At once, through two doors each way:
    one sale in the journal and the outbox, one print job at most, its points once."""
    before = till.balance(ANNA)
    body = receipt("hc-1", redeemPoints=50, lines=BIG)
    answers = at_once(
        [
            lambda: till.call("http", "hold", body),
            lambda: till.call("grpc", "checkout", body),
            lambda: till.call("cli", "hold", body),
            lambda: till.call("http", "checkout", body),
        ]
    )
    documented(answers)
    assert all(a.ok for a in answers), answers
    for a in answers[1], answers[3]:
        assert a.doc["state"] == "CONFIRMED"
    seqs = {int(a.doc["seq"]) for a in answers if a.doc["state"] == "CONFIRMED"}
    assert seqs == {1}
    assert till.count("journal") == till.count("outbox") == 1
    assert till.count("print_jobs", "receipt_id = 'hc-1'") == 1
    earned = answers[1].figure("earnedPoints")
    assert till.balance(ANNA) == before - 50 + earned
    printed_once(till)


def test_confirm_and_cancel_at_once_one_wins(till: Till) -> None:
    """CONTRACT §11: Confirm ∥ Cancel of one hold: either it is confirmed (the Cancel
    answers "use a refund", 412) or cancelled (the Confirm answers "hold expired: price
    the receipt again", 412); never both, never a 500, and the ledger agrees."""
    for n, (confirm_door, cancel_door) in enumerate(
        [("http", "grpc"), ("grpc", "http"), ("cli", "http"), ("http", "cli")]
    ):
        rid = f"cc-{n}"
        held = till.http("hold", receipt(rid, redeemPoints=40, lines=BIG))
        assert held.ok, held
        confirm, cancel = at_once(
            [
                partial(till.call, confirm_door, "confirm", {"receiptId": rid}),
                partial(till.call, cancel_door, "cancel", {"receiptId": rid}),
            ]
        )
        documented([confirm, cancel])
        assert [confirm.ok, cancel.ok].count(True) == 1, (confirm, cancel)
        committed = till.count("journal", "ref_id = ?", rid)
        assert till.count("print_jobs", "receipt_id = ?", rid) == committed
        if confirm.ok:
            assert confirm.doc["state"] == "CONFIRMED" and committed == 1
            assert cancel.kind == "precondition" and "use a refund" in str(cancel.doc)
        else:
            assert cancel.doc["state"] == "CANCELLED" and committed == 0
            assert confirm.kind == "precondition" and "hold expired" in str(confirm.doc)
    assert till.count("journal") == till.count("outbox")
    printed_once(till)


def test_two_confirms_with_different_fiscal_documents_commit_one(till: Till) -> None:
    """CONTRACT §11: Confirm of a confirmed receipt returns the first answer whatever
    fiscal document is sent again: three doors at once, one commit, one fiscal document
    stored (the winner's), every answer the same figures and seq."""
    till.http("hold", receipt("fd-1", redeemPoints=30, lines=BIG))
    answers = at_once(
        [
            partial(till.call, d, "confirm", {"receiptId": "fd-1", "fiscalDocument": f"FD-{d}"})
            for d in DOORS
        ]
    )
    documented(answers)
    assert all(a.ok for a in answers), answers
    assert {int(a.doc["seq"]) for a in answers} == {1}
    assert (
        len(
            {
                json.dumps({k: v for k, v in a.doc.items() if k != "display"}, sort_keys=True)
                for a in answers
                if a.door != "grpc"
            }
        )
        == 1
    )
    assert till.count("journal") == till.count("outbox") == 1
    stored = till.rows("SELECT fiscal_document FROM receipt_life WHERE receipt_id = 'fd-1'")
    assert len(stored) == 1 and stored[0][0] in {f"FD-{d}" for d in DOORS}, stored
    assert till.count("receipts", "receipt_id = 'fd-1'") == 1
    assert till.count("print_jobs", "receipt_id = 'fd-1'") == 1
    printed_once(till)
    # the hub gets the stored one: the outbox's transaction names it
    payload = till.rows("SELECT payload FROM outbox")[0][0]
    assert [f"FD-{d}" in payload for d in DOORS].count(True) <= 1


def test_a_refund_racing_its_checkout_is_refunded_once_or_not_found(till: Till) -> None:
    """CONTRACT §6, §11: a Refund sent while its sale's Checkout is still being stored is
    either refused as not committed (404, NOT_FOUND) or applied once; never a 500."""
    for n, (sale_door, refund_door) in enumerate(
        [("http", "grpc"), ("grpc", "http"), ("http", "cli")]
    ):
        rid = f"sr-{n}"
        sale = receipt(
            rid, redeemPoints=20, lines=[{"sku": "4601234000017", "qty": "2", "priceMinor": 50_000}]
        )
        refund = {
            "refundId": f"{rid}-r",
            "receiptId": rid,
            "at": "2026-11-24T12:00:00+03:00",
            "lines": [{"sku": "4601234000017", "qty": "1"}],
        }
        sold, returned = at_once(
            [
                partial(till.call, sale_door, "checkout", sale),
                partial(till.call, refund_door, "refund", refund),
            ]
        )
        documented([sold, returned])
        assert sold.ok, sold
        assert returned.kind in ("ok", "not_found"), returned
        assert till.count("refunds", "refund_id = ?", f"{rid}-r") == (1 if returned.ok else 0)
    assert till.count("journal") == till.count("outbox")


# ---------------------------------------------------------------- one sale, many refunds


def test_refunds_of_one_sale_from_three_doors_never_return_more_than_sold(till: Till) -> None:
    """CONTRACT §6: three refunds (three refundIds) of the whole sale sent at once through
    three doors: one is applied, the others are refused (412: more than was bought) and
    the points come back once."""
    before = till.balance(ANNA)
    sale = till.http(
        "checkout",
        receipt(
            "rr-1",
            redeemPoints=60,
            lines=[{"sku": "4601234000017", "qty": "2", "priceMinor": 50_000}],
        ),
    )
    assert sale.ok, sale
    refunds = [
        {
            "refundId": f"rr-1-{d}",
            "receiptId": "rr-1",
            "at": "2026-11-24T12:00:00+03:00",
            "lines": [{"sku": "4601234000017", "qty": "2"}],
        }
        for d in DOORS
    ]
    answers = at_once(
        [partial(till.call, d, "refund", b) for d, b in zip(DOORS, refunds, strict=True)]
    )
    documented(answers)
    assert sorted(a.kind for a in answers) == ["ok", "precondition", "precondition"], answers
    assert till.count("refunds") == 1
    assert till.count("journal", "kind = 'REFUND'") == 1
    assert till.balance(ANNA) == before  # everything given and taken back once
    # the same refunds retried: the winner's answer again, the losers still refused
    again = [till.call(d, "refund", b) for d, b in zip(DOORS, refunds, strict=True)]
    assert [a.kind for a in again] == [a.kind for a in answers], again
    # one refundId from three doors at once (a POS retrying through another door): one
    # refund, the same answer to each
    sale = till.http("checkout", receipt("rr-2", redeemPoints=60, lines=BIG))
    assert sale.ok, sale
    one = {
        "refundId": "rr-2-once",
        "receiptId": "rr-2",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": "4601234000017", "qty": "1"}],
    }
    answers = at_once([partial(till.call, d, "refund", one) for d in DOORS])
    documented(answers)
    assert all(a.ok for a in answers), answers
    assert {(a.figure("returnedPoints"), a.figure("takenBackPoints")) for a in answers} == {
        (60, sale.figure("earnedPoints"))
    }
    assert till.count("refunds", "receipt_id = 'rr-2'") == 1
    assert till.count("journal") == till.count("outbox") == 4


# ---------------------------------------------------------------- one customer, one coupon


def test_one_customer_redeeming_on_many_receipts_at_once_never_spends_more_than_allowed(
    tmp_path: Path,
) -> None:
    """CONTRACT §5 step 4, §9: a standalone till (offline): six receipts of one customer
    at once through the three doors, each asking all it may: together they never spend
    more than the store-day's offline limit (500) nor the balance (1200), holds included."""
    program = {**PROGRAM, "holdTtlSeconds": 600, "offlineRedeemLimitPoints": 500}
    t = Till(tmp_path, seeded(tmp_path / "till", snapshot(program=program)))
    try:
        calls = []
        for n in range(6):
            door, name = DOORS[n % 3], ("checkout", "hold")[n % 2]
            body = receipt(f"red-{n}", redeemPoints=-1, lines=BIG)
            calls.append(partial(t.call, door, name, body))
        answers = at_once(calls)
        documented(answers)
        assert all(a.ok for a in answers), answers
        spent = sum(a.figure("redeemedPoints") for a in answers)
        assert spent == 500, [a.figure("redeemedPoints") for a in answers]
        assert all(a.doc.get("mode") == "OFFLINE" for a in answers)
        # the offline limit is spent: another receipt that day redeems nothing
        late = t.http("quote", receipt("red-late", redeemPoints=-1, lines=BIG))
        assert late.figure("redeemedPoints") == 0, late
    finally:
        t.stop()


SORRY = {
    "id": "o-sorry",
    "kind": "AMOUNT_OFF",
    "skus": ["4601234000017"],
    "value": "2000",
    "couponRequired": True,
}


def test_one_coupon_on_receipts_from_three_doors_at_once_is_used_once(tmp_path: Path) -> None:
    """CONTRACT §13: a one-time code scanned on three receipts at once (a hold and two
    checkouts, three doors): one receipt gets it APPLIED, the others ALREADY_USED, and
    the ledger has one use."""
    program = {**PROGRAM, "holdTtlSeconds": 600}
    snap = snapshot(
        program=program, offers=[SORRY], coupons=[{"code": "ONCE7", "offerId": "o-sorry"}]
    )
    t = Till(tmp_path, seeded(tmp_path / "till", snap))
    try:
        calls = [
            partial(t.call, d, c, receipt(f"cp-{n}", BORIS, coupons=["ONCE7"]))
            for n, (d, c) in enumerate(zip(DOORS, ("hold", "checkout", "checkout"), strict=True))
        ]
        answers = at_once(calls)
        documented(answers)
        assert all(a.ok for a in answers), answers
        verdicts = sorted(a.doc["coupons"][0].get("status", "") for a in answers)
        assert verdicts == ["APPLIED", "REJECTED", "REJECTED"], [a.doc["coupons"] for a in answers]
        assert sum(a.figure("discountMinor") for a in answers) == 2 * 2000  # 2000 a unit
        assert t.count("coupon_uses", "code = 'ONCE7'") == 1
    finally:
        t.stop()


def test_till_issued_coupons_of_commits_at_once_are_never_the_same_code(tmp_path: Path) -> None:
    """CONTRACT §13: a printed offer with issueCoupon gets a new one-time code built from
    the device id and a counter never reused: six commits at once through three doors
    (checkouts, and holds confirmed at once) issue six different codes, one print job each."""
    program = {**PROGRAM, "holdTtlSeconds": 600, "offerPrintCooldownDays": 0}
    snap = snapshot(program=program, offers=[dict(PRINTABLE, issueCoupon=True)])
    with VirtualPrinter() as printer:
        t = Till(tmp_path, seeded(tmp_path / "till", snap), printer=printer)
        try:
            for n in range(3):
                assert t.http("hold", receipt(f"ih-{n}")).ok
            calls = [partial(t.call, d, "checkout", receipt(f"ic-{d}")) for d in DOORS]
            calls += [
                partial(t.call, d, "confirm", {"receiptId": f"ih-{n}"}) for n, d in enumerate(DOORS)
            ]
            answers = at_once(calls)
            documented(answers)
            assert all(a.ok for a in answers), answers
            codes = [c for (c,) in t.rows("SELECT code FROM issued_coupons")]
            assert len(codes) == len(set(codes)) == 6, codes
            assert t.count("print_jobs") == 6
        finally:
            t.stop()


# ---------------------------------------------------------------- a hold at its TTL edge


def test_cancel_at_the_hold_expiry_races_the_sweeper_and_answers_cancelled(tmp_path: Path) -> None:
    """CONTRACT §11: holds of 1 s; a Cancel sent as each one runs out meets `run`'s
    sweep (at every call and every 15 s): the Cancel answers CANCELLED whether the sweep
    expired it first or not (a cancel of an expired hold is a cancel), the receipt stays
    cancelled, a Confirm of it is refused, and nothing is committed."""
    program = {**PROGRAM, "holdTtlSeconds": 1}
    t = Till(tmp_path, seeded(tmp_path / "till", snapshot(program=program)))
    try:
        for n in range(4):
            rid = f"ttl-{n}"
            held = t.http("hold", receipt(rid, redeemPoints=10, lines=BIG))
            assert held.ok, held
            time.sleep(0.9 + 0.05 * n)  # around the hold's expiry
            door = DOORS[n % 3]
            answers = at_once(
                [
                    partial(t.call, door, "cancel", {"receiptId": rid}),
                    partial(t.call, "grpc", "quote", receipt("q-" + rid, lines=BIG)),  # sweeps
                    partial(t.call, "http", "hold", receipt("x-" + rid)),  # sweeps too
                ]
            )
            documented(answers)
            cancel = answers[0]
            assert cancel.ok and cancel.doc["state"] == "CANCELLED", cancel
            again = t.call("http", "hold", receipt(rid, redeemPoints=10, lines=BIG))
            assert again.ok and again.doc["state"] == "CANCELLED", again
            refused = t.call("grpc", "confirm", {"receiptId": rid})
            assert refused.kind == "precondition", refused
        assert t.count("journal") == 0
    finally:
        t.stop()


# ---------------------------------------------------------------- a snapshot while selling


def test_every_answer_during_snapshot_loads_is_priced_on_one_version(tmp_path: Path) -> None:
    """CONTRACT §3: applying is atomic and checkouts keep running. Quotes and checkouts
    from three doors while `tillpoint snapshot load` applies full snapshots and deltas
    that change the offer's discount AND the customer's tier together: every answer is
    the one version's figures (discount and earned points from one version), never a mix."""
    program = {**PROGRAM, "holdTtlSeconds": 600}

    def version(v: int, base: int) -> dict[str, Any]:
        percent = str(v)  # version v: v % off milk, and the customer's tier goes with it
        tier = ("base", "silver", "gold")[v % 3]
        snap = snapshot(
            version=v,
            baseVersion=base,
            program=program,
            offers=[
                {
                    "id": "o-milk",
                    "kind": "PERCENT_OFF",
                    "skus": ["4601234000017"],
                    "value": percent,
                    "validFrom": "2026-01-01T00:00:00+03:00",
                    "validTo": "2027-01-01T00:00:00+03:00",
                }
            ],
        )
        snap["customers"] = [
            dict(c, tier=tier) if c["id"] == "c-b" else c for c in snap["customers"]
        ]
        if base:
            snap = {
                "version": v,
                "baseVersion": base,
                "offers": snap["offers"],
                "customers": [c for c in snap["customers"] if c["id"] == "c-b"],
            }
        return snap

    t = Till(tmp_path, seeded(tmp_path / "till", version(1, 0)))
    rates = {"base": 3, "silver": 5, "gold": 15 / 2}
    lines = [{"sku": "4601234000017", "qty": "1", "priceMinor": 100_000}]

    def expected(v: int) -> tuple[int, int]:
        discount = 100_000 * v // 100
        tier = ("base", "silver", "gold")[v % 3]
        earned = int((100_000 - discount) * rates[tier] / 100 / 100)
        return discount, earned

    stop = threading.Event()
    answers: list[Answer] = []
    n = iter(range(10**6))

    def pos(door: str) -> None:
        while not stop.is_set():
            k = next(n)
            name = "checkout" if k % 4 == 0 else "quote"
            answers.append(t.call(door, name, receipt(f"sv-{k}", BORIS, lines=lines)))

    threads = [threading.Thread(target=pos, args=(d,)) for d in ("http", "grpc", "http", "cli")]
    try:
        for th in threads:
            th.start()
        for v in range(2, 8):
            snap = version(v, 0 if v % 2 == 0 else v - 1)
            path = tmp_path / f"snap-{v}.json"
            path.write_text(json.dumps(snap, ensure_ascii=False), encoding="utf-8")
            done = subprocess.run(
                [EXE, "--data-dir", str(t.data), "snapshot", "load", str(path)],
                capture_output=True,
                text=True,
                env=env(),
                timeout=TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join(TIMEOUT)
        t.stop()
    documented(answers)
    allowed = {expected(v) for v in range(1, 8)}
    seen = {(a.figure("discountMinor"), a.figure("earnedPoints")) for a in answers}
    assert seen <= allowed, sorted(seen - allowed)
    assert len(seen) >= 3, seen  # the calls did run across the loads


# ---------------------------------------------------------------- with a hub, slow or away


def a_hub(tmp_path: Path) -> LoopbackHub:
    data = sample_master_data()
    data["program"]["holdTtlSeconds"] = 600
    data["program"]["offlineRedeemLimitPoints"] = 300
    return LoopbackHub(tmp_path / "hub", data=data)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    h = a_hub(tmp_path)
    yield h
    h.stop()


def enrolled_run(hub: LoopbackHub, tmp_path: Path, redeem_timeout_ms: int = 300) -> Till:
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.pull import Puller

    data = tmp_path / "till"
    enrollment = hub.enroll(DEVICE, data)
    seed = Agent(data, DEVICE)
    Puller(seed, HubLink(hub.address, enrollment), enrollment, call_timeout_s=5).pull()
    seed.close()
    return Till(
        tmp_path, data, hub, f"redeem_timeout_ms = {redeem_timeout_ms}\ncall_timeout_ms = 2000\n"
    )


def hub_holds(hub: LoopbackHub) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(hub.root / "hub.db")
    try:
        return conn.execute(
            "SELECT receipt_id, points, state FROM holds ORDER BY receipt_id"
        ).fetchall()
    finally:
        conn.close()


def hub_held(hub: LoopbackHub) -> int:
    return int(hub.store.balance("c-1", datetime.now(UTC)).held)


@pytest.mark.parametrize("delay_s", [0.0, 0.25, 0.35, None], ids=["fast", "slow", "late", "away"])
def test_one_customer_on_many_receipts_at_once_with_a_slow_or_absent_hub(
    hub: LoopbackHub, tmp_path: Path, delay_s: float | None
) -> None:
    """CONTRACT §5 step 4, §9, §11: six receipts of one customer (1200 points at the hub)
    at once through the three doors, each asking all it may, while the hub answers at
    once, near the 300 ms deadline, just past it, or not at all. Together they never spend
    more than the balance; what was priced OFFLINE never more than the day's offline
    limit (300); the hub holds exactly what the till's open holds reserve online."""
    real = hub.server.servicer.failpoint

    def slow(where: str) -> None:
        if where == "authorize" and delay_s is not None:
            time.sleep(delay_s)

    if delay_s is None:
        t = enrolled_run(hub, tmp_path)
        hub.stop()  # away: every request unanswered
    else:
        hub.server.servicer.failpoint = slow
        t = enrolled_run(hub, tmp_path)
    try:
        calls = []
        for n in range(6):
            door, name = DOORS[n % 3], ("hold", "checkout")[n % 2]
            body = receipt(f"hb-{n}", "2770000000017", redeemPoints=-1, lines=BIG)
            calls.append(partial(t.call, door, name, body))
        answers = at_once(calls)
        documented(answers)
        assert all(a.ok for a in answers), answers
        spent = sum(a.figure("redeemedPoints") for a in answers)
        offline = sum(a.figure("redeemedPoints") for a in answers if a.doc.get("mode") == "OFFLINE")
        # a checkout's points are spendable at once (activationDelayDays 0): the receipts
        # after it may spend them, never more than there is
        earned = sum(a.figure("earnedPoints") for a in answers if a.doc.get("state") == "CONFIRMED")
        figures = [
            (a.doc.get("mode"), a.doc.get("state"), a.figure("redeemedPoints")) for a in answers
        ]
        assert spent <= 1200 + earned, figures
        assert offline <= 300, figures
        # (a hub that answers at once may still miss a deadline on a loaded machine: no
        # assertion that every receipt is ONLINE)
        if delay_s is None:
            assert offline == spent == 300, figures
            assert t.balance(ANNA) - 300 >= 0
        else:
            online_held = sum(
                a.figure("redeemedPoints")
                for a in answers
                if a.doc.get("mode") == "ONLINE" and a.doc.get("state") == "HELD"
            )
            offline_held = sum(
                a.figure("redeemedPoints")
                for a in answers
                if a.doc.get("mode") == "OFFLINE" and a.doc.get("state") == "HELD"
            )
            # every sale reaches the hub once; the hub holds the online holds' grants, and
            # the grant of a hold it answered too late stays held for that receipt until
            # its Confirm's transaction or its Cancel (CONTRACT §11's decision, review 32):
            # never more than the customer has; its balance is the till's
            wait_for(lambda: t.count("outbox") == 0, TIMEOUT)
            try:
                wait_for(lambda: online_held <= hub_held(hub) <= 1200 + earned, 20)
            except TimeoutError:
                raise AssertionError(
                    (
                        figures,
                        [a.doc.get("receiptId") for a in answers],
                        hub_holds(hub),
                        t.rows(
                            "SELECT receipt_id, state, mode, redeemed_points, hub_hold"
                            " FROM receipt_life"
                        ),
                        t.rows("SELECT * FROM hub_asks"),
                    )
                ) from None
            hub_available = int(hub.store.balance("c-1", datetime.now(UTC)).available)
            assert t.balance(ANNA) == hub_available, figures
            # the holds still to be confirmed never take the balance below zero
            assert hub_available - online_held - offline_held >= 0, figures
            assert [e.ref_id for e in hub.store.ledger(DEVICE)] == [
                r for (r,) in t.rows("SELECT ref_id FROM journal ORDER BY seq")
            ]
        assert t.count("journal") == t.count("journal", "kind = 'CHECKOUT'") == 3
    finally:
        hub.server.servicer.failpoint = real
        t.stop()


@pytest.mark.parametrize("door", DOORS)
def test_a_hold_priced_offline_after_a_late_grant_keeps_it_held_until_it_is_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, door: str
) -> None:
    """CONTRACT §9, §11: the hub places a receipt's hold and answers after the till's
    300 ms deadline: the till prices the Hold OFFLINE (the day's offline limit, 300) and
    stores it so. The grant stays held at the hub for that receipt (review 32's decision:
    released early, a one-time coupon the OFFLINE hold applied could be used at another
    till, and points the till spent offline spent again) until its Confirm's transaction
    settles it: then the hub holds nothing and the next receipt redeems what is left."""
    from tillpoint.sync.hub_server import HubServicer

    granted = HubServicer.AuthorizeRedemption
    late = threading.Event()

    def answers_late(self: Any, request: Any, context: Any) -> Any:
        reply = granted(self, request, context)  # placed at once
        if late.is_set():
            # answered past the till's deadline: what its gRPC client then reports
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "answered past the deadline")
        return reply

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", answers_late)
    hub = a_hub(tmp_path)  # its server serves the late answers
    # Review 41 (flake41): the run waits 10 s for the hub, and the late answer is made so at
    # once (it was 0.6 s late against the run's 300 ms: on a loaded machine the request
    # could reach the hub past 300 ms, which then rightly placed nothing, or the last
    # checkout, meant ONLINE, was priced OFFLINE). hold33's `late` does the same.
    t = enrolled_run(hub, tmp_path, redeem_timeout_ms=10_000)
    try:
        late.set()
        held = t.call(door, "hold", receipt("late-1", "2770000000017", redeemPoints=-1, lines=BIG))
        assert held.ok and held.doc["mode"] == "OFFLINE", held
        assert held.figure("redeemedPoints") == 300  # the day's offline limit
        late.clear()
        assert hub_held(hub) > 0  # the late grant is still held for late-1
        done = t.call(door, "confirm", {"receiptId": "late-1"})
        assert done.ok and done.figure("redeemedPoints") == 300, done  # as held
        wait_for(lambda: t.count("outbox") == 0, TIMEOUT)
        wait_for(lambda: hub_held(hub) == 0, 10)  # settled by the transaction
        other = "grpc" if door != "grpc" else "http"
        sale = t.call(
            other, "checkout", receipt("late-2", "2770000000017", redeemPoints=-1, lines=BIG)
        )
        assert sale.ok and sale.doc["mode"] == "ONLINE", sale
        # what is left: 1200 - the offline hold's 300, and what its sale earned (spendable
        # at once, activationDelayDays 0)
        assert sale.figure("redeemedPoints") == 900 + done.figure("earnedPoints"), sale
        wait_for(lambda: t.count("outbox") == 0, TIMEOUT)
        hub_available = int(hub.store.balance("c-1", datetime.now(UTC)).available)
        assert t.balance(ANNA) == hub_available
    finally:
        t.stop()
        hub.stop()


def test_confirm_and_cancel_at_once_with_a_hub_leave_it_holding_nothing(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """CONTRACT §9, §11: online holds (the hub holds their points); Confirm ∥ Cancel of
    each from two doors: whichever wins, once the outbox is drained the hub holds nothing
    (a confirmed one settled by its transaction, a cancelled one released), has exactly
    the till's journal, and the customer's balance the till shows."""
    t = enrolled_run(hub, tmp_path)
    try:
        pairs = [("http", "grpc"), ("grpc", "cli"), ("cli", "http"), ("grpc", "http")]
        for n, (confirm_door, cancel_door) in enumerate(pairs):
            rid = f"hc-{n}"
            held = t.http("hold", receipt(rid, "2770000000017", redeemPoints=50, lines=BIG))
            assert held.ok, held
            confirm, cancel = at_once(
                [
                    partial(t.call, confirm_door, "confirm", {"receiptId": rid}),
                    partial(t.call, cancel_door, "cancel", {"receiptId": rid}),
                ]
            )
            documented([confirm, cancel])
            assert [confirm.ok, cancel.ok].count(True) == 1, (confirm, cancel)
        wait_for(lambda: t.count("outbox") == 0, TIMEOUT)
        wait_for(lambda: hub_held(hub) == 0, 20)  # within the hold timer's round
        assert [e.ref_id for e in hub.store.ledger(DEVICE)] == [
            r for (r,) in t.rows("SELECT ref_id FROM journal ORDER BY seq")
        ]
        hub_available = int(hub.store.balance("c-1", datetime.now(UTC)).available)
        assert t.balance(ANNA) == hub_available
    finally:
        t.stop()
