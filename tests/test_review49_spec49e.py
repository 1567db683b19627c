"""Review 49 (spec49e): the contract's §10 (the command line), §11 (hold, confirm, cancel)
and §12 (the local HTTP interface) read black-box at every sentence's edge, as a POS
integrator who has only docs/INTEGRATION.md and the served `/openapi.json`. Each
expectation was worked out by hand from the contract's words (and docs/CONTRACT.md's
recorded decisions where it is silent) before the product was run; the product did what
they say in every case (docs/DECISIONS.md, "Review 49 (spec49e)"). Kept because no earlier
test held these edges in this form:

- §10's "a request larger than 4 MiB": exactly 4,194,304 bytes is taken, one byte more
  refused, at the CLI (a real process, `--json`: nothing on stdout, one stderr line, exit 2,
  cache and ledger byte for byte as they were), over HTTP (400 and the error body) and over
  gRPC (a request of exactly 4 MiB is judged on its fields; one byte more is refused for
  its size).
- §10's "a text field longer than 128 characters": every text of a receipt (`receiptId`,
  `storeId`, `tillId`, `card`, a line's `sku`, a coupon) and of a refund (`refundId`, a
  line's `sku`) at 128 characters is taken and at 129 refused naming the call, the field
  and the limit; characters are code points (128 emoji are 128 characters).
- §10's other bad inputs at their edges over HTTP, with the served request schema's verdict
  beside the agent's: `qty` "1.000" taken and "1.0000" refused, int64's last value taken and
  the next refused (as a number and as a string, `priceMinor`, `amountMinor`,
  `redeemPoints`), negative prices and `redeemPoints` below −1 refused, no lines, unknown
  fields of a receipt, a line, a refund and its line, and of the small bodies; the schema
  and the agent agree on each but the refusals the contract says the schema cannot state.
- §11: Confirm and Cancel sent again after another sale of the same customer (her balance
  moved) return the first answer byte for byte; a Checkout retried after it too; a Hold of
  a cancelled receipt answers the Cancel's document and one of a confirmed receipt the
  Confirm's; the four calls' refusals at HTTP and gRPC with one message (409 /
  ALREADY_EXISTS for another body by Hold and Checkout, 412 / FAILED_PRECONDITION for a
  Confirm of a cancelled hold and a Cancel of a confirmed receipt, 404 / NOT_FOUND for an
  id never held); `holdExpiresAt` is the Hold's moment plus `holdTtlSeconds` (1800 by
  default) and gone after Confirm and Cancel; a Quote under a held receipt's id reserves
  nothing and confirms nothing.
- §12: a JSON key given twice in a request counts the last time, at HTTP as at the CLI.
- §10: `--version` says the version and the contract it implements, in text and in `--json`.
- §10 (the one fault, a message): a `confirm`/`cancel` RECEIPT_ID or a `--fiscal` value that
  starts with a dash is told how to give it (`-- -neg`, `--fiscal=-FD-1`); it was "the
  following arguments are required: RECEIPT_ID" though one was given.

One `tillpoint run` (HTTP and gRPC on random loopback ports) answers the module's calls;
the CLI's refusals run on a data directory of their own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from .conftest import REPO
from .test_review39_spec39a import HttpPos, OpenApi, _start_run, cli_argv

EXE = str(Path(sys.executable).with_name("tillpoint"))
MIB4 = 4 * 1024 * 1024
INT64_MAX = 2**63 - 1
ANNA, BORIS = "2770000000017", "2770000000024"  # c-1 gold 1200 points, c-2 base
MILK = "4601234000017"
RECEIPT: dict[str, Any] = json.loads(
    (REPO / "examples" / "receipt-card.json").read_text(encoding="utf-8")
)


def receipt(rid: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(RECEIPT)
    body["receiptId"] = rid
    body.update(changes)
    return body


def one_line(**line: Any) -> list[dict[str, Any]]:
    return [{"sku": MILK, "qty": "1", **line}]


def refund(fid: str, rid: str, **changes: Any) -> dict[str, Any]:
    body = {
        "refundId": fid,
        "receiptId": rid,
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": MILK, "qty": "1"}],
    }
    body.update(changes)
    return body


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}


def load_snapshot(data: Path) -> None:
    """`tillpoint snapshot load` in a process of its own, as a till is seeded."""
    done = subprocess.run(
        [EXE, "--data-dir", str(data), "snapshot", "load", str(REPO / "examples/snapshot.json")],
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@dataclass
class Till:
    data: Path
    work: Path
    http: HttpPos
    api: OpenApi
    grpc_port: int
    channel: grpc.Channel

    def post(self, path: str, body: Any) -> tuple[int, bytes]:
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        answer = self.http.send("POST", path, raw)
        self.api.check(path, "POST", answer)  # a status and a body openapi.json declares
        return answer.status, answer.raw

    def doc(self, path: str, body: Any) -> tuple[int, Any]:
        status, raw = self.post(path, body)
        return status, json.loads(raw)

    def error(self, path: str, body: Any) -> tuple[int, str, str]:
        status, doc = self.doc(path, body)
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
        return status, doc["error"]["code"], doc["error"]["message"]

    def grpc_call(self, method: str, body: dict[str, Any]) -> tuple[str, str]:
        """The gRPC door's answer to the same body: its code's name and its message."""
        from tillpoint.v1 import tillpoint_pb2 as pb
        from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

        request_type = {
            "Hold": pb.Receipt,
            "Checkout": pb.Receipt,
            "Quote": pb.Receipt,
            "Confirm": pb.ConfirmRequest,
            "Cancel": pb.CancelRequest,
        }[method]
        stub = pb_grpc.PosAgentStub(self.channel)
        request = json_format.ParseDict(body, request_type()) if isinstance(body, dict) else body
        try:
            getattr(stub, method)(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
        return "OK", ""


@pytest.fixture(scope="module")
def till(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Till]:
    work = tmp_path_factory.mktemp("spec49e")
    data = work / "till"
    load_snapshot(data)
    proc, http_port, grpc_port = _start_run(work, data)
    http = HttpPos(http_port, timeout=30)
    api = OpenApi(json.loads(http.send("GET", "/openapi.json", None).raw))
    channel = grpc.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", 16 << 20)]
    )
    try:
        yield Till(data, work, http, api, grpc_port, channel)
    finally:
        channel.close()
        http.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A till's data directory of the CLI's own (no `tillpoint run` serves it)."""
    data = tmp_path_factory.mktemp("spec49e-cli") / "till"
    load_snapshot(data)
    return data


def files_of(data: Path) -> dict[str, str]:
    """Every file of the data directory by its SHA-256 (the cache, the ledger, their WAL)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data.iterdir())
        if p.is_file() and not p.name.endswith(".lock")
    }


# ---------------------------------------------------------------- §10: 4 MiB


def padded(body: dict[str, Any], size: int) -> bytes:
    """`body` as JSON of exactly `size` bytes (blanks before its closing brace)."""
    raw = json.dumps(body, ensure_ascii=False).encode()
    out = raw[:-1] + b" " * (size - len(raw)) + b"}"
    assert len(out) == size
    return out


def test_a_request_of_exactly_4_mib_is_taken_and_one_byte_more_is_refused_at_every_door(
    till: Till, cli_data: Path, tmp_path: Path
) -> None:
    # HTTP: "larger than 4 MiB" is more than 4,194,304 bytes
    status, raw = till.post("/v1/quote", padded(receipt("mib-http"), MIB4))
    assert status == 200 and json.loads(raw)["receiptId"] == "mib-http"
    assert till.error("/v1/quote", padded(receipt("mib-http"), MIB4 + 1)) == (
        400,
        "INVALID_ARGUMENT",
        "request larger than 4 MiB",
    )
    # gRPC: a Receipt of exactly 4 MiB is judged on its fields (its storeId is too long);
    # one byte more is refused for its size before any field is read
    from tillpoint.v1 import tillpoint_pb2 as pb

    for size, said in (
        (MIB4, "receipt: storeId is too long (at most 128 characters)"),
        (MIB4 + 1, f"request larger than 4 MiB ({MIB4 + 1} bytes; at most {MIB4})"),
    ):
        message = json_format.ParseDict(receipt("mib-grpc"), pb.Receipt())
        message.store_id = "x" * (size - message.ByteSize() - 4)
        while message.ByteSize() < size:
            message.store_id += "x"
        while message.ByteSize() > size:
            message.store_id = message.store_id[:-1]
        assert message.ByteSize() == size
        assert till.grpc_call("Quote", message) == ("INVALID_ARGUMENT", said)

    # the CLI (real processes on a till of their own): 4 MiB checks out, one byte more is
    # exit 2, one stderr line, nothing on stdout, the data directory as it was
    data = cli_data
    exact, over = tmp_path / "exact.json", tmp_path / "over.json"
    exact.write_bytes(padded(receipt("mib-cli"), MIB4))
    over.write_bytes(padded(receipt("mib-cli-over"), MIB4 + 1))
    before = files_of(data)
    refused = subprocess.run(
        [EXE, "--data-dir", str(data), "checkout", str(over), "--json"],
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert (refused.returncode, refused.stdout) == (2, b"")
    assert refused.stderr.decode() == (
        f"tillpoint: {over}: the request is larger than 4 MiB ({MIB4} bytes): refused\n"
    )
    assert files_of(data) == before
    taken = subprocess.run(
        [EXE, "--data-dir", str(data), "checkout", str(exact), "--json"],
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert taken.returncode == 0, taken.stderr
    result = json.loads(taken.stdout)
    assert (result["receiptId"], result["state"]) == ("mib-cli", "CONFIRMED")


# ---------------------------------------------------------------- §10: 128 characters


TEXTS = {
    "receiptId": lambda n: receipt("я" * n),
    "storeId": lambda n: receipt("len-store", storeId="s" * n),
    "tillId": lambda n: receipt("len-till", tillId="т" * n),
    "card": lambda n: receipt("len-card", card="7" * n),
    "lines[0].sku": lambda n: receipt(
        "len-sku", lines=[{"sku": "ш" * n, "qty": "1", "priceMinor": 100}]
    ),
    "coupons[0]": lambda n: receipt("len-coupon", coupons=["К" * n]),
}


@pytest.mark.parametrize("field", list(TEXTS))
def test_every_text_of_a_receipt_at_128_characters_is_taken_and_at_129_refused(
    till: Till, field: str
) -> None:
    status, raw = till.post("/v1/quote", TEXTS[field](128))
    assert status == 200, raw
    assert till.error("/v1/quote", TEXTS[field](129)) == (
        400,
        "INVALID_ARGUMENT",
        f"receipt: {field} is too long (at most 128 characters)",
    )
    # the schema says the same limit to a generated client
    assert not till.api.accepts("/v1/quote", TEXTS[field](128))
    assert till.api.accepts("/v1/quote", TEXTS[field](129))


def test_characters_are_code_points_and_a_refunds_texts_have_the_same_limit(till: Till) -> None:
    emoji = "\U0001f600"
    status, doc = till.doc("/v1/quote", receipt(emoji * 128))
    assert status == 200 and doc["receiptId"] == emoji * 128
    assert till.error("/v1/quote", receipt(emoji * 129))[2] == (
        "receipt: receiptId is too long (at most 128 characters)"
    )
    for body, said in (
        (refund("r" * 129, "never"), "refund: refundId is too long (at most 128 characters)"),
        (
            refund("f-sku", "never", lines=[{"sku": "ш" * 129, "qty": "1"}]),
            "refund: lines[0].sku is too long (at most 128 characters)",
        ),
    ):
        assert till.error("/v1/refund", body) == (400, "INVALID_ARGUMENT", said)
    # 128 is within the limit: the refund is then judged on its receipt (never sold here)
    status, code, _ = till.error("/v1/refund", refund("r" * 128, "never"))
    assert (status, code) == (404, "NOT_FOUND")


# ---------------------------------------------------------------- §10: bad input's edges


EDGES: list[tuple[str, dict[str, Any], str | None]] = [
    # (what, the receipt's changes, None when taken, else the agent's message)
    ("qty 3 decimals", {"lines": one_line(qty="1.000", priceMinor=100)}, None),
    ("qty 0.001", {"lines": one_line(qty="0.001", priceMinor=100)}, None),
    (
        "qty 4 decimals",
        {"lines": one_line(qty="1.0000", priceMinor=100)},
        'receipt: lines[0].qty "1.0000" is not a quantity: a positive decimal with at most 3'
        " decimals",
    ),
    (
        "qty zero",
        {"lines": one_line(qty="0.000", priceMinor=100)},
        'receipt: lines[0].qty "0.000" is not a quantity: it must be greater than zero',
    ),
    (
        "qty negative",
        {"lines": one_line(qty="-1", priceMinor=100)},
        'receipt: lines[0].qty "-1" is not a quantity: a positive decimal with at most 3 decimals',
    ),
    ("price int64 max", {"lines": one_line(priceMinor=INT64_MAX)}, None),
    ("price int64 max string", {"lines": one_line(priceMinor=str(INT64_MAX))}, None),
    (
        "price past int64",
        {"lines": one_line(priceMinor=INT64_MAX + 1)},
        "receipt: lines[0].priceMinor does not fit in a signed 64-bit integer",
    ),
    (
        "price past int64 string",
        {"lines": one_line(priceMinor=str(INT64_MAX + 1))},
        "receipt: lines[0].priceMinor does not fit in a signed 64-bit integer",
    ),
    (
        "amount past int64",
        {"lines": one_line(amountMinor=INT64_MAX + 1)},
        "receipt: lines[0].amountMinor does not fit in a signed 64-bit integer",
    ),
    ("price zero", {"lines": one_line(priceMinor=0)}, None),
    (
        "price negative",
        {"lines": one_line(priceMinor=-1)},
        "receipt: lines[0].priceMinor must not be negative",
    ),
    (
        "amount negative",
        {"lines": one_line(priceMinor=1, amountMinor=-1)},
        "receipt: lines[0].amountMinor must not be negative",
    ),
    ("redeem -1", {"redeemPoints": -1}, None),
    ("redeem int64 max", {"redeemPoints": INT64_MAX}, None),
    (
        "redeem -2",
        {"redeemPoints": -2},
        "receipt: redeemPoints must be 0 or more, or -1 for as much as allowed",
    ),
    (
        "redeem past int64",
        {"redeemPoints": INT64_MAX + 1},
        "receipt: redeemPoints does not fit in a signed 64-bit integer",
    ),
    ("no lines", {"lines": []}, "receipt: lines must not be empty"),
    ("unknown field", {"extra": 1}, "receipt: extra is not a known field"),
    (
        "unknown line field",
        {"lines": one_line(priceMinor=1, name="Молоко")},
        "receipt: lines[0].name is not a known field",
    ),
]


@pytest.mark.parametrize("what, changes, said", EDGES, ids=[e[0] for e in EDGES])
def test_bad_input_at_its_edges_over_http_and_the_schemas_verdict(
    till: Till, what: str, changes: dict[str, Any], said: str | None
) -> None:
    body = receipt(f"edge-{what.replace(' ', '-')}", **changes)
    if said is None:
        status, doc = till.doc("/v1/quote", body)
        assert status == 200, doc
    else:
        assert till.error("/v1/quote", body) == (400, "INVALID_ARGUMENT", said)
    # a client that validates its request with the served schema is told the same
    assert bool(till.api.accepts("/v1/quote", body)) == (said is not None), what


def test_unknown_fields_of_a_refund_and_of_the_small_bodies_are_refused(till: Till) -> None:
    for path, body, said in (
        ("/v1/refund", refund("u1", "never", note="x"), "refund: note is not a known field"),
        (
            "/v1/refund",
            refund("u2", "never", lines=[{"sku": MILK, "qty": "1", "priceMinor": 1}]),
            "refund: lines[0].priceMinor is not a known field",
        ),
        ("/v1/confirm", {"receiptId": "x", "note": 1}, "confirm: note is not a known field"),
        ("/v1/cancel", {"receiptId": "x", "note": 1}, "cancel: note is not a known field"),
        ("/v1/identify", {"text": ANNA, "note": 1}, "identify: note is not a known field"),
        ("/v1/balance", {"card": ANNA, "note": 1}, "balance: note is not a known field"),
    ):
        assert till.error(path, body) == (400, "INVALID_ARGUMENT", said), path
        assert till.api.accepts(path, body), path


def test_a_key_given_twice_counts_the_last_time_at_http_as_at_the_cli(
    till: Till, cli_data: Path, tmp_path: Path
) -> None:
    text = (
        '{"receiptId": "twice-a", "receiptId": "twice-b", "at": "2026-11-23T10:20:00+03:00",'
        f' "card": "{BORIS}", "lines": [{{"sku": "{MILK}", "qty": "1", "priceMinor": 100}}]}}'
    )
    status, raw = till.post("/v1/quote", text.encode())
    assert status == 200 and json.loads(raw)["receiptId"] == "twice-b"
    path = tmp_path / "twice.json"
    path.write_text(text, encoding="utf-8")
    run = cli_argv(cli_data, ["quote", str(path), "--json"])
    assert run.code == 0, run.err
    # the same document but for the balance (each till has its own sales)
    mine, theirs = json.loads(run.out), json.loads(raw)
    assert mine.pop("balance") and theirs.pop("balance") and mine == theirs


def test_cli_refusals_print_nothing_on_stdout_one_line_and_change_no_file(
    cli_data: Path, tmp_path: Path
) -> None:
    """§10's list at the CLI with `--json`, for checkout, hold and refund: exit 2, one
    stderr line, nothing on stdout, every file of the data directory byte for byte."""
    data = cli_data
    sold = cli_argv(data, ["checkout", str(REPO / "examples" / "receipt-card.json"), "--json"])
    assert sold.code == 0, sold.err
    bodies: list[tuple[str, str, Any]] = [
        ("checkout", "malformed", '{"receiptId": '),
        ("hold", "unknown", receipt("c1", extra=1)),
        ("checkout", "qty", receipt("c1", lines=one_line(qty="0.0001", priceMinor=1))),
        ("hold", "negative", receipt("c1", lines=one_line(priceMinor=-5))),
        ("checkout", "int64", receipt("c1", lines=one_line(priceMinor=INT64_MAX + 1))),
        ("hold", "no lines", receipt("c1", lines=[])),
        ("checkout", "129", receipt("c1", tillId="t" * 129)),
        ("refund", "unknown", refund("f1", RECEIPT["receiptId"], extra=1)),
        ("refund", "qty", refund("f1", RECEIPT["receiptId"], lines=[{"sku": MILK, "qty": "0"}])),
        ("refund", "129", refund("f" * 129, RECEIPT["receiptId"])),
    ]
    before = files_of(data)
    for call, what, body in bodies:
        path = tmp_path / f"{call}-{what}.json"
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        path.write_text(text, encoding="utf-8")
        run = cli_argv(data, [call, str(path), "--json"])
        assert run.code == 2 and run.out == "", (call, what, run)
        assert run.err.count("\n") == 1 and run.err.startswith("tillpoint: "), (call, what)
        assert "Traceback" not in run.err
    assert files_of(data) == before


# ---------------------------------------------------------------- §11


def test_replays_answer_the_first_document_after_the_customer_s_balance_moved(till: Till) -> None:
    anna = {"card": ANNA, "redeemPoints": 0}
    status, held = till.post("/v1/hold", receipt("rp-1", **anna))
    assert status == 200
    status, confirmed = till.post("/v1/confirm", {"receiptId": "rp-1", "fiscalDocument": "F-1"})
    assert status == 200
    status, checked = till.post("/v1/checkout", receipt("rp-2", card=ANNA, redeemPoints=-1))
    assert status == 200
    status, _ = till.post("/v1/hold", receipt("rp-3", **anna))
    assert status == 200
    status, cancelled = till.post("/v1/cancel", {"receiptId": "rp-3"})
    assert status == 200
    # another sale of Анна moves her balance: every replay still answers the first document
    status, other = till.doc("/v1/checkout", receipt("rp-4", card=ANNA, redeemPoints=-1))
    assert status == 200 and other["balance"] != json.loads(confirmed)["balance"]
    assert till.post("/v1/confirm", {"receiptId": "rp-1", "fiscalDocument": "F-1"}) == (
        200,
        confirmed,
    )
    # whatever fiscal document comes with the replay (decision: the first answer)
    assert till.post("/v1/confirm", {"receiptId": "rp-1"}) == (200, confirmed)
    assert till.post("/v1/checkout", receipt("rp-2", card=ANNA, redeemPoints=-1)) == (200, checked)
    assert till.post("/v1/cancel", {"receiptId": "rp-3"}) == (200, cancelled)
    # a Hold of a known id with the same body answers its current result
    assert till.post("/v1/hold", receipt("rp-3", **anna)) == (200, cancelled)
    assert till.post("/v1/hold", receipt("rp-1", **anna)) == (200, confirmed)
    # the states and holdExpiresAt of each
    h, c, x = json.loads(held), json.loads(confirmed), json.loads(cancelled)
    assert (h["state"], c["state"], x["state"]) == ("HELD", "CONFIRMED", "CANCELLED")
    assert "holdExpiresAt" not in c and "holdExpiresAt" not in x
    assert "seq" not in h and "deviceId" not in h and h["printedOffers"] == []
    figures = ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor")
    assert [h[k] for k in (*figures, "earnedPoints")] == [c[k] for k in (*figures, "earnedPoints")]


def test_hold_expires_at_is_the_hold_s_moment_plus_the_default_1800_s(till: Till) -> None:
    before = time.time()
    status, held = till.doc("/v1/hold", receipt("ttl-1"))
    after = time.time()
    assert status == 200
    expires = datetime.fromisoformat(held["holdExpiresAt"]).timestamp()
    assert before + 1800 - 1 <= expires <= after + 1800 + 1
    # a quote under the held id reserves nothing and confirms nothing: still held
    status, quoted = till.doc("/v1/quote", receipt("ttl-1"))
    assert status == 200 and "state" not in quoted and "holdExpiresAt" not in quoted
    assert till.doc("/v1/hold", receipt("ttl-1")) == (200, held)
    status, done = till.doc("/v1/checkout", receipt("ttl-1"))  # Checkout after its Hold
    assert status == 200 and done["state"] == "CONFIRMED" and "holdExpiresAt" not in done
    assert till.doc("/v1/confirm", {"receiptId": "ttl-1"}) == (200, done)


def test_the_lifes_refusals_say_one_thing_at_http_and_grpc(till: Till) -> None:
    assert till.post("/v1/hold", receipt("rf-1"))[0] == 200
    other = receipt("rf-1", redeemPoints=5)
    conflict = "receipt rf-1 is already stored with another body: use a new receiptId"
    for path, method in (("/v1/hold", "Hold"), ("/v1/checkout", "Checkout")):
        assert till.error(path, other) == (409, "ALREADY_EXISTS", conflict)
        assert till.grpc_call(method, other) == ("ALREADY_EXISTS", conflict)
    # fiscalDocument: 64 characters taken, 65 refused (nothing committed by the refusal)
    long = {"receiptId": "rf-1", "fiscalDocument": "Ф" * 65}
    said = "confirm: fiscalDocument is too long (at most 64 characters)"
    assert till.error("/v1/confirm", long) == (400, "INVALID_ARGUMENT", said)
    assert till.grpc_call("Confirm", long) == ("INVALID_ARGUMENT", said)
    status, doc = till.doc("/v1/confirm", {"receiptId": "rf-1", "fiscalDocument": "Ф" * 64})
    assert status == 200 and doc["state"] == "CONFIRMED"
    use_a_refund = "receipt rf-1 is confirmed: use a refund"
    assert till.error("/v1/cancel", {"receiptId": "rf-1"}) == (
        412,
        "FAILED_PRECONDITION",
        use_a_refund,
    )
    assert till.grpc_call("Cancel", {"receiptId": "rf-1"}) == ("FAILED_PRECONDITION", use_a_refund)
    # a cancelled hold's Confirm: the contract's words first
    assert till.post("/v1/hold", receipt("rf-2"))[0] == 200
    assert till.post("/v1/cancel", {"receiptId": "rf-2"})[0] == 200
    expired = "hold expired: price the receipt again (rf-2 was cancelled: under a new receiptId)"
    assert till.error("/v1/confirm", {"receiptId": "rf-2"}) == (412, "FAILED_PRECONDITION", expired)
    assert till.grpc_call("Confirm", {"receiptId": "rf-2"}) == ("FAILED_PRECONDITION", expired)
    # an id never held, or only quoted: 404 / NOT_FOUND, for Confirm and Cancel alike
    assert till.post("/v1/quote", receipt("rf-3"))[0] == 200
    for rid in ("rf-3", "rf-never"):
        said = f"receipt {rid} is not held at this till"
        for path, method in (("/v1/confirm", "Confirm"), ("/v1/cancel", "Cancel")):
            assert till.error(path, {"receiptId": rid}) == (404, "NOT_FOUND", said)
            assert till.grpc_call(method, {"receiptId": rid}) == ("NOT_FOUND", said)


# ---------------------------------------------------------------- §10: --version


def test_version_names_the_contract_in_text_and_json() -> None:
    from importlib import metadata

    __version__ = metadata.version("tillpoint")

    text = subprocess.run([EXE, "--version"], env=_env(), capture_output=True, timeout=60)
    assert text.returncode == 0 and text.stderr == b""
    assert text.stdout.decode() == (
        f"tillpoint {__version__} (contract tillpoint.v1, 2026-11, sections 1-17)\n"
    )
    as_json = subprocess.run(
        [EXE, "--version", "--json"], env=_env(), capture_output=True, timeout=60
    )
    assert as_json.returncode == 0 and as_json.stderr == b""
    assert json.loads(as_json.stdout) == {
        "version": __version__,
        "contract": "tillpoint.v1, 2026-11, sections 1-17",
    }


# ---------------------------------------------------------------- §10: a dash first


def test_a_receipt_id_or_fiscal_document_that_starts_with_a_dash_is_told_how_to_give_it(
    cli_data: Path, tmp_path: Path
) -> None:
    """A receiptId the hold's file and HTTP take ("-neg") given to `confirm` or `cancel`
    was "the following arguments are required: RECEIPT_ID" with no hint (it was given:
    argparse read it as an option), and `--fiscal -FD-1` "expected one argument" (review
    49, spec49e: a one-line message a person understands says how to give them)."""
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(receipt("-neg")), encoding="utf-8")

    def tillpoint(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXE, "--data-dir", str(cli_data), *args],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    for command in ("confirm", "cancel"):
        refused = tillpoint(command, "-neg", "--json")
        assert (refused.returncode, refused.stdout) == (2, "")
        assert refused.stderr == (
            "tillpoint: the following arguments are required: RECEIPT_ID; a text that starts"
            f" with a dash goes after --: -- -neg (see `tillpoint {command} --help`)\n"
        )
    refused = tillpoint("confirm", "-neg", "--fiscal", "-FD-1", "--json")
    assert refused.returncode == 2
    held = tillpoint("hold", str(path), "--json")
    assert held.returncode == 0, held.stderr
    refused = tillpoint("confirm", "--json", "--fiscal", "-FD-1", "--", "-neg")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "tillpoint: argument --fiscal: expected one argument; a value that starts with a"
        " dash is written --fiscal=-FD-1 (see `tillpoint confirm --help`)\n"
    )
    done = tillpoint("confirm", "--json", "--fiscal=-FD-1", "--", "-neg")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "CONFIRMED"
