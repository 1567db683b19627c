"""Review 34, doc34: a new POS integrator with an afternoon and the docs only (issue 11's
"done when"). A POS written from docs/INTEGRATION.md and `GET /openapi.json` alone (over
HTTP, and over gRPC with server reflection only) ran its whole flow as the guide says;
tests/test_review31_pos31.py already runs an equivalent of both against a real
`tillpoint run`, so the clients are not kept twice. What the guide or openapi.json did
not tell the integrator, and what the agent did other than they said, is here.

Real parts: an agent's HTTP interface on a free loopback port, real sockets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.http_api import HttpServer

from .conftest import CLI, REPO, free_port

TIMEOUT = 10.0
TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """One request on its own connection, written at once; its status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            head, _, body = answer.partition(b"\r\n\r\n")
            if _:
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if length is not None and len(body) >= int(length.group(1)):
                    break
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# ------------------------------------------------ a request head over 16 KiB (CONTRACT §12)


def status_get(target_pad: int = 0, header_pad: int = 0) -> bytes:
    head = b"GET /v1/status" + (b"?" + b"a" * target_pad if target_pad else b"")
    head += b" HTTP/1.1\r\nHost: till\r\n"
    if header_pad:
        head += b"X-Pad: " + b"a" * header_pad + b"\r\n"
    return head + b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("shape", "build"),
    [
        ("a long header", lambda size: status_get(header_pad=size)),
        ("a long request line", lambda size: status_get(target_pad=size)),
    ],
    ids=["header", "request-line"],
)
def test_a_whole_request_head_over_16_kib_sent_at_once_is_refused_with_400(
    server: HttpServer, shape: str, build: Any
) -> None:
    """CONTRACT §12 (and the guide's 400 row, and openapi.json's 400): "a request head over
    16 KiB" is 400 INVALID_ARGUMENT "invalid HTTP request: its head is larger than 16 KiB".
    It was so only for a head that came in pieces (h11 limits an incomplete head only): a
    whole head of 20 KiB (or 100 KiB) written at once was served, and one of 128 KiB
    refused as "larger than 16 KiB", so a POS could not know which of its requests the
    agent would take."""

    def sized(size: int) -> bytes:
        request: bytes = build(size - (len(build(1)) - 1))
        assert len(request) == size
        return request

    fits = sized(16 * 1024)
    assert exchange(server.port, fits)[0] == 200, f"a head of exactly 16 KiB ({shape})"
    for size in (16 * 1024 + 1, 20 * 1024, 48 * 1024):
        status, body = exchange(server.port, sized(size))
        assert status == 400, f"a head of {size} bytes ({shape}) was answered {status}"
        error = json.loads(body)["error"]
        assert error["code"] == "INVALID_ARGUMENT"
        assert error["message"] == "invalid HTTP request: its head is larger than 16 KiB"
    # and the server serves the next POS as before
    assert exchange(server.port, status_get())[0] == 200


def test_a_post_whose_head_is_over_16_kib_runs_nothing(server: HttpServer) -> None:
    """The refused request is not run: a checkout behind a 20 KiB head stores nothing."""
    body = json.dumps(
        {
            "receiptId": "big-head-1",
            "at": "2026-11-23T10:15:00+03:00",
            "card": "2770000000017",
            "lines": [{"sku": "4601234000017", "qty": "1", "priceMinor": 8990}],
        }
    ).encode()
    head = (
        b"POST /v1/checkout HTTP/1.1\r\nHost: till\r\nContent-Type: application/json\r\n"
        b"X-Pad: " + b"a" * (20 * 1024) + b"\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    assert exchange(server.port, head + body)[0] == 400
    status, answer = exchange(
        server.port,
        b"GET /v1/status HTTP/1.1\r\nHost: till\r\nConnection: close\r\n\r\n",
    )
    assert status == 200 and json.loads(answer)["lastSeq"] == 0, answer


# ------------------------------------------- openapi.json: each call's own refusals (§12)


@pytest.fixture
def served_openapi(server: HttpServer) -> Iterator[dict[str, Any]]:
    status, body = exchange(
        server.port, b"GET /openapi.json HTTP/1.1\r\nHost: till\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    yield json.loads(body)


def described(doc: dict[str, Any], path: str, status: str) -> str:
    operations = doc["paths"][path]
    operation = operations.get("post") or operations["get"]
    return str(operation["responses"][status]["description"])


# What the guide's error table says each call's refusal means (docs/INTEGRATION.md, "Errors",
# CONTRACT §11, §12): words the call's own description must carry, and words of another
# call's that it must not.
OWN_REFUSALS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    # an INVALID card is bad input, a 400 (review 34, inv34: it was a 412 beside the blocked)
    ("/v1/quote", "400"): (("bad input", "invalid", "card"), ("blocked", "snapshot")),
    ("/v1/hold", "400"): (("bad input", "invalid", "card"), ("blocked", "snapshot")),
    ("/v1/checkout", "400"): (("bad input", "invalid", "card"), ("blocked", "snapshot")),
    ("/v1/balance", "400"): (("bad input", "invalid", "card"), ("blocked", "snapshot")),
    ("/v1/quote", "412"): (("no snapshot", "blocked"), ("hold expired", "refund", "invalid")),
    ("/v1/hold", "412"): (("no snapshot", "blocked"), ("hold expired", "refund", "invalid")),
    ("/v1/checkout", "412"): (("no snapshot", "blocked", "cancelled"), ("hold expired", "invalid")),
    ("/v1/confirm", "412"): (("expired", "cancelled", "hold"), ("blocked", "snapshot")),
    ("/v1/cancel", "412"): (("confirmed", "refund"), ("blocked", "snapshot", "expired")),
    ("/v1/refund", "412"): (("more than", "not on the receipt"), ("blocked", "hold expired")),
    ("/v1/balance", "412"): (("blocked",), ("snapshot", "hold", "invalid", "empty")),
    ("/v1/confirm", "404"): (("not held", "hold it again"), ("card",)),
    ("/v1/cancel", "404"): (("not held",), ("card",)),
    ("/v1/refund", "404"): (("not sold", "held"), ("card",)),
    ("/v1/balance", "404"): (("card", "UNKNOWN"), ("receipt",)),
    ("/v1/hold", "409"): (("receiptId", "another body"), ("refundId",)),
    ("/v1/checkout", "409"): (("receiptId", "another body"), ("refundId",)),
    ("/v1/refund", "409"): (("refundId", "another body"), ()),
}


def test_openapi_describes_each_calls_own_refusals(served_openapi: dict[str, Any]) -> None:
    """A generated client documents each response by its description. openapi.json gave
    every call the same words: a refund's 412 read "refused: no snapshot, blocked card,
    expired hold" (a refund's 412 is more returned than was sold, or a SKU not on the
    receipt), a balance's 404 "unknown receipt", a refund's 409 "another body under a
    known receiptId" (it is the refundId), a cancel's 412 named no confirmed receipt.
    Each call's 404, 409 and 412 now say what they mean for that call, as the guide does."""
    wrong = []
    for (path, status), (must, must_not) in OWN_REFUSALS.items():
        text = described(served_openapi, path, status)
        missing = [w for w in must if w.lower() not in text.lower()]
        foreign = [w for w in must_not if w.lower() in text.lower()]
        if missing or foreign:
            wrong.append(f"{path} {status} {text!r}: lacks {missing}, names {foreign}")
    assert not wrong, "\n".join(wrong)


def test_a_503_of_a_call_without_an_id_does_not_ask_for_its_receipt_id(
    served_openapi: dict[str, Any],
) -> None:
    """identify, balance, status and openapi.json have no receiptId; their 503 told the
    POS to "retry with the same receiptId". The sale calls' 503 still says so."""
    for path in ("/v1/identify", "/v1/balance", "/v1/status", "/openapi.json"):
        text = described(served_openapi, path, "503")
        assert "retry" in text and "receiptId" not in text, (path, text)
    for path in ("/v1/quote", "/v1/hold", "/v1/confirm", "/v1/cancel", "/v1/checkout"):
        assert "receiptId" in described(served_openapi, path, "503"), path
    assert "refundId" in described(served_openapi, "/v1/refund", "503")


# ------------------------------------------------------- the guide's table of the calls


def test_the_guides_table_marks_confirms_fiscal_document_optional(
    served_openapi: dict[str, Any],
) -> None:
    """CONTRACT §11: `fiscalDocument` is optional, openapi.json does not require it and the
    agent confirms without one; the guide's table wrote `{"receiptId", "fiscalDocument"}`
    where it marks balance's optional `at` with `?`. Every field a table body marks
    optional is optional in openapi.json, and every field openapi.json leaves optional in
    a `{"a", "b"?}` body is marked so."""
    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `POST (/v1/\w+)` \| `(\{[^`]*\})` \|", guide, re.M)
    bodies = {path: body for path, body in rows if not re.search(r'": ', body)}
    assert set(bodies) == {"/v1/confirm", "/v1/cancel", "/v1/balance"}, bodies
    schemas = served_openapi["components"]["schemas"]
    for path, body in bodies.items():
        ref = served_openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        fields = dict(re.findall(r'"(\w+)"(\??)', body))
        assert set(fields) == set(schema["properties"]), (path, body)
        required = set(schema.get("required", ()))
        for name, optional in fields.items():
            if name in required:
                assert not optional, f"{path}: {name} is required, the guide marks it '?'"
            elif name != "card":  # balance's card: none is an INVALID card (400, the table)
                assert optional, f"{path}: {name} is optional, the guide's {body} does not say"


# --------------------------------------- openapi.json: what each field means (the proto's words)


def test_openapi_describes_the_fields_in_the_protos_own_words(
    served_openapi: dict[str, Any],
) -> None:
    """openapi.json said of `redeemPoints` only "an integer, -1 or more", of `card` "a
    string", of `holdExpiresAt` "a string": what -1 means, what text goes in `card` and in
    which form the hold's end comes were in the proto's comments (tillpoint.proto, which a
    POS written from openapi.json and reflection never sees: reflection carries no
    comments) and in the guide. Every field commented in the proto now carries the
    comment as its description, generated from the .proto the package ships."""
    schemas = served_openapi["components"]["schemas"]

    def words(message: str, field: str) -> str:
        return str(schemas[message]["properties"][field].get("description", ""))

    assert "-1" in words("Receipt", "redeemPoints") and "allowed" in words(
        "Receipt", "redeemPoints"
    )
    assert "scanned text" in words("Receipt", "card")
    assert "RFC 3339" in words("Receipt", "at")
    assert "RFC 3339" in words("CheckoutResult", "holdExpiresAt")
    assert "HELD" in words("CheckoutResult", "holdExpiresAt")
    assert "64" in words("ConfirmRequest", "fiscalDocument")
    assert "cashier" in words("CardOutcome", "reason")
    assert "RFC 3339" in words("ExpiringPoints", "expiresAt")
    assert "quote" in words("CheckoutResult", "deviceId")  # a comment above the field
    assert "explain" in words("CheckoutResult", "trace")
    # a message's own comment describes its schema
    assert "§4" in str(schemas["CardOutcome"].get("description", ""))
    # the fields of a sale the proto did not comment, now commented in the guide's words
    assert "every call" in words("Receipt", "receiptId")
    assert "retry" in words("Refund", "refundId")
    assert "prints itself" in words("CheckoutResult", "printedOffers")
    assert "never shown" in words("CheckoutResult", "heldOut")
    assert "2 x 20" in words("CheckoutResult", "display")
    assert "what to charge" in words("CheckoutResult", "payableMinor")
    assert "null" in words("CheckoutResult", "balance") and "FOUND" in words(
        "RefundResult", "balance"
    )
    assert "null" in words("ResultLine", "offerId")
    for device in ("printerState", "displayState", "scannerState"):
        assert "DISABLED" in words("Status", device) and "OK" in words("Status", device)
    # a field the proto does not comment has no description made up for it
    assert "description" not in schemas["CheckoutResult"]["properties"]["receiptId"]
    # the descriptions change no rule: a $ref or a nullable field keeps its shape
    assert schemas["CheckoutResult"]["properties"]["balance"]["anyOf"][1] == {"type": "null"}


def test_the_proto_the_descriptions_come_from_ships_with_the_package() -> None:
    """The agent reads the comments from the installed `tillpoint.v1` package, beside its
    generated code (a till's Debian package has no source tree): pyproject's package
    data names the .proto."""
    from pathlib import Path

    from tillpoint.v1 import tillpoint_pb2

    proto = Path(tillpoint_pb2.__file__).with_name("tillpoint.proto")
    assert "message Receipt {" in proto.read_text(encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'"tillpoint\.v1" = \[[^\]]*"\*\.proto"', pyproject)


# ----------------------------------------------- the card text a POS sends (CONTRACT §4)


def identify(port: int, text: str) -> dict[str, Any]:
    body = json.dumps({"text": text}).encode()
    status, answer = exchange(
        port,
        b"POST /v1/identify HTTP/1.1\r\nHost: till\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
    )
    assert status == 200, answer
    return dict(json.loads(answer))


def test_the_guide_tells_the_pos_to_strip_a_phones_brackets(server: HttpServer) -> None:
    """CONTRACT §4: blanks and dashes are dropped, brackets are not: `+7 (916) 123-45-67`,
    the way a Russian POS writes a phone, is INVALID ("POS software should strip
    formatting"). The guide said only that `card` is "the text the customer showed (card
    number, phone, barcode)", so a POS that sent its phone field as formatted told the
    cashier the card was invalid. The guide now says which forms are read and that
    brackets are not; each of its examples answers as it says."""
    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    said = re.search(r"A phone is read as `([^`]+)`,\s+`([^`]+)`\s+or\s+`([^`]+)`", guide)
    assert said is not None, "the guide names the phone forms the agent reads"
    for text in said.groups():
        assert identify(server.port, text)["status"] == "FOUND", text
    refused = re.search(r"`([^`]*\([^`]*)`\s+is\s+`INVALID`", guide)
    assert refused is not None, "the guide says a phone with brackets is INVALID"
    answer = identify(server.port, refused.group(1))
    assert answer["status"] == "INVALID" and "brackets" in answer["reason"], answer
    assert "strip" in guide[refused.start() - 300 : refused.end() + 300]


def test_the_guide_says_where_a_pos_gets_an_offers_name(served_openapi: dict[str, Any]) -> None:
    """The guide's "What to print" asked for "its `offerId` if you print offer names", and
    no call answers a name: an integrator looked for one in openapi.json. The guide now
    says the agent serves none and where the names are."""
    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    at = guide.index("if you print offer names")
    near = " ".join(guide[at : at + 600].split())
    assert "serves no offer names" in near and "master data" in near, near
    assert not [p for p in served_openapi["paths"] if "offer" in p.lower()]


# ------------------------------------------------ where `tillpoint run` serves (README)


def test_run_help_says_where_the_agent_serves_and_how_to_move_it(cli: CLI) -> None:
    """Following the README, an integrator whose machine had 8061 taken asked `tillpoint
    run --help`, which said "run the agent service" and nothing more: the addresses and
    the keys that move them were in docs/INTEGRATION.md only. It now names each server's
    default address (the configuration's own), its key and its environment variable."""
    from tillpoint.agent.config import HttpSettings, MetricsSettings, ServerSettings

    run = cli("run", "--help")
    assert run.code == 0, run.err
    text = " ".join(run.out.split())
    for default, key, env in (
        (ServerSettings().listen, "[server] listen", "TILLPOINT_SERVER__LISTEN"),
        (HttpSettings().listen, "[http] listen", "TILLPOINT_HTTP__LISTEN"),
        (MetricsSettings().listen, "[metrics] listen", "TILLPOINT_METRICS__LISTEN"),
    ):
        assert default in text and key in text and env in text, (default, text)
    assert "docs/INTEGRATION.md" in text


# ------------------------------------- a rollback's data directory: no 412, no agent (§12)


def test_a_later_releases_data_directory_stops_the_agent_it_answers_no_412(
    tmp_path: Path,
) -> None:
    """The guide's 412 row said a data directory written by a later release answers every
    call 412 "… written by another tillpoint release …". The agent never answers it: `run`
    refuses such a directory at start (exit 2, which the unit does not restart), so a POS
    meets a refused connection, which the guide's timeouts section covers. The row no
    longer promises the 412; the guide says what a POS sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    data = tmp_path / "data"
    env.update(
        TILLPOINT_DATA_DIR=str(data),
        TILLPOINT_HTTP__LISTEN=f"127.0.0.1:{free_port()}",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{free_port()}",
        TILLPOINT_METRICS__ENABLED="false",
    )
    snapshot = str(REPO / "examples" / "snapshot.json")
    subprocess.run([TILLPOINT, "snapshot", "load", snapshot], env=env, check=True, timeout=60)
    with sqlite3.connect(data / "ledger.db") as ledger:  # a step a later release made
        ledger.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('tillpoint.ledger', 'm999_later', '2027-01-01')"
        )
    ledger.close()
    run = subprocess.run([TILLPOINT, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "written by another tillpoint release" in run.stderr

    guide = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    row = next(line for line in guide.splitlines() if line.startswith("| 412 |"))
    assert "another tillpoint release" not in row, row
    said = " ".join(guide.split())
    assert "written by another tillpoint release" in said
    at = said.index("written by another tillpoint release")
    assert "does not start" in said[at - 400 : at + 400], said[at - 400 : at + 400]


# ------------------------------------------- a gRPC POS's "before the first sale" (§12)


def test_a_grpc_pos_checks_the_health_service_as_the_guide_says(tmp_path: Path) -> None:
    """The guide told an HTTP POS to check `GET /healthz` before the first sale (200 with
    a snapshot, 503 without) and a gRPC POS nothing: reflection lists
    `grpc.health.v1.Health`, but what it answers on a till with no snapshot was not said.
    The guide now says it, and the agent answers as it says: NOT_SERVING before the first
    snapshot, SERVING after, for the server ("") and for PosAgent alike."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tillpoint.agent.service import Agent

    from .conftest import grpc_served, snapshot

    guide = " ".join((REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8").split())
    said = re.search(r"`grpc\.health\.v1\.Health/Check` answers `(\w+)`[^.]*?`(\w+)`", guide)
    assert said is not None, "the guide says what the gRPC health service answers"
    loaded, empty = said.groups()
    agent = Agent(tmp_path / "data", "till-1")
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def health() -> set[str]:
                return {
                    health_pb2.HealthCheckResponse.ServingStatus.Name(
                        stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                    )
                    for name in ("", "tillpoint.v1.PosAgent")
                }

            assert health() == {empty}
            agent.load_snapshot(snapshot())
            assert health() == {loaded}
    finally:
        agent.close()
