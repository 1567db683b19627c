"""Review 40 (spec40c): CONTRACT §3 (the snapshot's shapes) and §4 (identifying a card),
black box, against an independent model written from the contract's words alone.

`model()` below is §4 read as a cashier and a POS vendor would, written before reading
the product's identification code: the scanned text loses its surrounding blanks, inner
white space of any kind and dashes of any kind; empty is `INVALID`; a `+` number is a
phone only as `+7` and ten digits, else `INVALID`; other characters are `INVALID`; digits
are looked up as a card number first (a 13-digit number with a wrong EAN-13 check digit is
`INVALID` before any look-up), then as a phone (`+7XXXXXXXXXX`, `8XXXXXXXXXX`,
`7XXXXXXXXXX`, `XXXXXXXXXX` the same phone), whose customer is identified through their
first active card (by number), `BLOCKED` if they have none; anything else is `UNKNOWN`. A
card `BLOCKED` or `LOST` is `BLOCKED`; `FOUND` is an active card of a known customer.

Every spelling a real POS sends (cards with blanks, dashes of every kind, leading zeros,
a scanner's CR/LF/Tab/GS suffix and AIM prefix, wrong check digits, 12 digits without the
check digit; phones in every Russian form, too short, too long, with brackets or letters;
a customer with several cards, a customer with none active, a phone two customers share,
a card number that is also a phone's form, a card whose customer is not in the cache,
int64-sized digit strings) goes through the real doors: HTTP `POST /v1/identify` on a
real server on a loopback port, and the CLI's `identify TEXT --json`, whose document must
be the HTTP body byte for byte, and gRPC's `Identify` (`PosAgent` on a real gRPC server)
must answer the same outcome. The default run sends every text over HTTP and a seeded
quarter of them through the CLI; the slow twin sends all of them through the CLI. The
long tables (a quote and a balance for each text, the snapshot shapes) run a seeded half
by default and whole in their `[every]` slow twins.

§3's shapes go through `snapshot load FILE` (the CLI): fields missing, `null`, of the
wrong type, unknown, near-miss typos, empty lists, int64's limits, duplicate keys. A
refused snapshot must exit 2 with a one-line message naming the field, no traceback, and
leave the cache as it was (the same data directory answers as before and still reports
its version); an accepted one must identify as the model says. A delta walk checks that a
row replaces the whole row (a phone changed or dropped, a card lost, a customer removed).
A snapshot's phone in twenty spellings a CRM export carries is found by every scanned form
(or by none when it is no Russian phone), over HTTP on an agent of the data directory the
CLI loaded; a sale by phone is journalled on the customer's first active card by number.

Where §3/§4 are silent, the product's documented readings (CONTRACT.md §3/§4 decisions)
are pinned here, named `PRODUCT_READING`: a card read twice in one scan is `INVALID`; a
text over 128 characters is bad input (exit 2, HTTP 400), not an outcome; a card whose
customer is not in the cache is `UNKNOWN`; a phone two customers share identifies the one,
by id, that has an active card; a snapshot card number written with blanks is loaded but
never matched; a card without a status is `ACTIVE`; unknown snapshot fields are left out
with a warning.

Found (review 40, spec40c): nothing: every answer of both doors agreed with the model and
with each other.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import random
import shutil
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.service import Agent

from .conftest import CLI, PROGRAM, posagent_stub, receipt, snapshot

I64 = 2**63 - 1


# The default run takes a seeded share of a long table, its slow twin (`[every]`) all of it.
SHARE = [pytest.param(False, id="seeded"), pytest.param(True, id="every", marks=pytest.mark.slow)]


def share(items: list[Any], every: bool, part: float = 0.5) -> list[Any]:
    if every:
        return list(items)
    keep = sorted(random.Random(40).sample(range(len(items)), max(1, int(len(items) * part))))
    return [items[i] for i in keep]


# ---------------------------------------------------------------- the model (§4's words)

DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"


def normalise(text: str) -> str:
    """Surrounding blanks, inner white space of any kind and dashes of any kind dropped."""
    return "".join(
        ch
        for ch in text.strip()
        if not (ch.isspace() or ch in DASHES or unicodedata.category(ch) == "Pd")
    )


def ean_ok(digits: str) -> bool:
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(digits[:12]))
    return (10 - total % 10) % 10 == int(digits[12])


def phone_of(digits: str) -> str | None:
    if len(digits) == 10:
        return "+7" + digits
    if len(digits) == 11 and digits[0] in "78":
        return "+7" + digits[1:]
    return None


Cards = dict[str, tuple[str, str]]  # number -> (customerId, status)
Customers = dict[str, dict[str, Any]]  # id -> {"phone", "tier", "firstName"}


def model(text: str, cards: Cards, customers: Customers) -> dict[str, Any]:
    t = normalise(text)
    if not t:
        return {"status": "INVALID"}
    if t.startswith("+"):
        rest = t[1:]
        if not (rest.isascii() and rest.isdigit()) or not (len(rest) == 11 and rest[0] == "7"):
            return {"status": "INVALID"}
        return by_phone("+" + rest, cards, customers)
    if not (t.isascii() and t.isdigit()):
        return {"status": "INVALID"}
    if len(t) == 13 and not ean_ok(t):
        return {"status": "INVALID"}
    if t in cards:
        owner, status = cards[t]
        if status in ("BLOCKED", "LOST"):
            return {"status": "BLOCKED"}
        if owner not in customers:  # PRODUCT_READING: FOUND needs a known customer
            return {"status": "UNKNOWN"}
        return found(owner, customers)
    phone = phone_of(t)
    if phone is not None:
        return by_phone(phone, cards, customers)
    return {"status": "UNKNOWN"}


def found(owner: str, customers: Customers) -> dict[str, Any]:
    c = customers[owner]
    return {"status": "FOUND", "customerId": owner, "tier": c["tier"], "firstName": c["firstName"]}


def by_phone(phone: str, cards: Cards, customers: Customers) -> dict[str, Any]:
    owners = sorted(cid for cid, c in customers.items() if c["phone"] == phone)
    if not owners:
        return {"status": "UNKNOWN"}
    for owner in owners:  # PRODUCT_READING: a shared phone, the first by id with an active card
        if any(o == owner and st == "ACTIVE" for o, st in cards.values()):
            return found(owner, customers)
    return {"status": "BLOCKED"}


# ---------------------------------------------------------------- the till's data

CUSTOMERS: list[dict[str, Any]] = [
    {
        "id": "c-a",
        "firstName": "Анна",
        "tier": "gold",
        "phone": "+79161234567",
        "balancePoints": 1200,
    },
    {"id": "c-multi", "firstName": "Мила", "tier": "silver", "phone": "+79035550001"},
    {"id": "c-noactive", "firstName": "Нина", "tier": "base", "phone": "+79035550002"},
    {"id": "c-nocards", "firstName": "Ольга", "tier": "base", "phone": "+79035550003"},
    {"id": "c-s1", "firstName": "Сава", "tier": "base", "phone": "+79035550004"},
    {"id": "c-s2", "firstName": "Стас", "tier": "gold", "phone": "+79035550004"},
    {"id": "c-s3", "firstName": "Сёма", "tier": "silver", "phone": "+79035550005"},
    {"id": "c-s4", "firstName": "Соня", "tier": "gold", "phone": "+79035550005"},
    {"id": "c-z", "firstName": "Зоя", "tier": "base"},
    {"id": "c-p", "firstName": "Пётр", "tier": "base"},
    {"id": "c-q", "firstName": "Катя", "tier": "gold", "phone": "+79161112233"},
    {"id": "c-w", "firstName": "Вова", "tier": "platinum", "phone": "8 (903) 555-00-07"},
    {"id": "c-t", "firstName": "Тая", "tier": "base", "phone": "9035550008"},
]
CARDS: list[dict[str, Any]] = [
    {"number": "2770000000017", "customerId": "c-a", "status": "ACTIVE"},
    {"number": "2770000000048", "customerId": "c-multi", "status": "BLOCKED"},
    {"number": "2770000000055", "customerId": "c-multi", "status": "ACTIVE"},
    {"number": "2770000000062", "customerId": "c-multi", "status": "LOST"},
    {"number": "1000", "customerId": "c-multi", "status": "ACTIVE"},
    {"number": "2770000000079", "customerId": "c-noactive", "status": "BLOCKED"},
    {"number": "2770000000086", "customerId": "c-noactive", "status": "LOST"},
    {"number": "2770000000109", "customerId": "c-s1", "status": "BLOCKED"},
    {"number": "2770000000116", "customerId": "c-s2", "status": "ACTIVE"},
    {"number": "2770000000123", "customerId": "c-s3", "status": "ACTIVE"},
    {"number": "2770000000130", "customerId": "c-s4", "status": "ACTIVE"},
    {"number": "0012345", "customerId": "c-z", "status": "ACTIVE"},
    {"number": "89161112233", "customerId": "c-p", "status": "ACTIVE"},  # a phone's form
    {"number": "2770000000147", "customerId": "c-ghost", "status": "ACTIVE"},  # no such customer
    {"number": "2770000000154", "customerId": "c-w", "status": "ACTIVE"},
    {"number": "2770000000161", "customerId": "c-t"},  # no status: ACTIVE
    {"number": "1234567890123", "customerId": "c-a", "status": "ACTIVE"},  # wrong check digit
    {"number": "12345678901234567890", "customerId": "c-z", "status": "LOST"},
]
SNAP: dict[str, Any] = {
    "version": 1,
    "baseVersion": 0,
    "issuedAt": "2026-11-23T03:00:00Z",
    "program": PROGRAM,
    "customers": CUSTOMERS,
    "cards": CARDS,
    "products": [{"sku": "4601234000017", "name": "Молоко 3,2% 1 л", "category": "dairy"}],
    "categories": [{"code": "dairy", "name": "Молочные"}],
    "offers": [],
}
TIERS = {t["code"] for t in PROGRAM["tiers"]}


def phone_as_written(text: str) -> str | None:
    """A snapshot's phone "as a person writes it" (§3's decision): blanks, dashes, brackets."""
    digits = "".join(ch for ch in text if ch not in " -()")
    digits = digits[2:] if digits.startswith("+7") and len(digits) == 12 else digits
    return phone_of(digits) if digits.isdigit() else None


def model_data(snap: dict[str, Any]) -> tuple[Cards, Customers]:
    customers = {
        c["id"]: {
            "phone": phone_as_written(c["phone"]) if c.get("phone") else None,
            "tier": c["tier"] if c.get("tier") in TIERS else "base",  # §4 decision: priced tier
            "firstName": c.get("firstName") or "",
        }
        for c in snap["customers"]
    }
    cards = {c["number"]: (c["customerId"], c.get("status") or "ACTIVE") for c in snap["cards"]}
    return cards, customers


MODEL_CARDS, MODEL_CUSTOMERS = model_data(SNAP)

TEXTS = [
    # card spellings
    "2770000000017",
    " 2770000000017 ",
    "2770 0000 0001 7",
    "277-000-000-0017",
    "2770000000017\r\n",
    "2770000000017\n",
    "2770000000017\t",
    "\t2770000000017\r",
    "2770000000017\x1d",
    "277\u20130000\u20140000\u2212" + "17",
    "2770\u00a00000\u20030001\u20097",
    "2770\u30000000\u20280001\u20297",
    "277\u2010000\u2011000\ufe63001\uff0d7",
    "277\u2e3a000\u301c000\u2012001\u20157",
    "+7\u2212916\u2212123\u22124567",
    "2770000000018",
    "277000000001",
    "]E02770000000017",
    "2770000000017X",
    "A2770000000017",
    "2770000000017;",
    "2770000000017.",
    "2770000000017\x00",
    "27700000000１7",
    # phones
    "+79161234567",
    "89161234567",
    "79161234567",
    "9161234567",
    "+7 916 123-45-67",
    "8-916-123-45-67",
    "8 916 123 45 67",
    "7 916 123 45 67",
    "8—916—123—45—67",
    "+7\u00a0916\u00a0123\u00a045\u00a067",
    "+79161234567 ",
    "+7-9161234567",
    "+ 7 916 1234567",
    "+7 916 123 45 67\r\n",
    "79161234567\r\n",
    "+7 (916) 123-45-67",
    "8(916)1234567",
    "8 (916) 123-45-67",
    "+7(916)1234567",
    "+7916123456",
    "+791612345678",
    "+7 916 123-45-6",
    "+7 916 123-45-678",
    "891612345",
    "8916123456789",
    "891612345678",
    "9161234567a",
    "+1 212 555 0100",
    "+89161234567",
    "++79161234567",
    "+79161234567+",
    "7+9161234567",
    "8 800 555 35 35",
    "+78005553535",
    "+70000000000",
    "70000000000",
    "80000000000",
    # nothing
    "",
    "   ",
    "\r\n",
    "+",
    "-",
    "—",
    "  -  ",
    "ABC",
    # several cards, none active, shared phones, card-or-phone, missing customer
    "+79035550001",
    "89035550001",
    "9035550002",
    "+79035550003",
    "89035550004",
    "89035550005",
    "1000",
    "2770000000048",
    "2770000000055",
    "2770000000062",
    "2770000000079",
    "2770000000086",
    "2770000000116",
    "2770000000109",
    "89161112233",
    "+79161112233",
    "79161112233",
    "9161112233",
    "2770000000147",
    "2770000000154",
    "89035550007",
    "+79035550008",
    "2770000000161",
    # leading zeros, long digit strings, check digits
    "0012345",
    "00 12-345",
    "12345",
    "012345",
    "00012345",
    "0",
    "1234567890123",
    "12345678901234567890",
    "1234 5678 9012 3456 7890",
    "0000000000000",
    "00000000000",
    "0000000000",
    "4601234000017",
    "9" * 19,
    "9" * 25,
    "9" * 128,
    "0079161234567",
]
# PRODUCT_READING: texts the contract's table does not decide; the product's documented
# answers (CONTRACT.md §4 and §10 decisions).
READ_TWICE = "2770000000017 2770000000017"
TOO_LONG = ["9" * 129, "2" * 300]


def test_the_model_reads_the_contract_as_written() -> None:
    """The model itself, on §4's own sentences (so a wrong model cannot agree with a wrong
    product by accident)."""
    cards: Cards = {"2770000000017": ("c-1", "ACTIVE"), "2770000000024": ("c-1", "LOST")}
    customers: Customers = {"c-1": {"phone": "+79161234567", "tier": "gold", "firstName": "А"}}
    status = {
        t: model(t, cards, customers)["status"]
        for t in (
            "2770000000017",
            "2770000000024",
            "2770000000018",
            "+79161234567",
            "89161234567",
            "79161234567",
            "9161234567",
            "+79990000000",
            "12345",
            "+1 212 555 0100",
            "9161234567a",
            "",
            "2770 0000-0001\u20147",
        )
    }
    assert status == {
        "2770000000017": "FOUND",
        "2770000000024": "BLOCKED",
        "2770000000018": "INVALID",
        "+79161234567": "FOUND",
        "89161234567": "FOUND",
        "79161234567": "FOUND",
        "9161234567": "FOUND",
        "+79990000000": "UNKNOWN",
        "12345": "UNKNOWN",
        "+1 212 555 0100": "INVALID",
        "9161234567a": "INVALID",
        "": "INVALID",
        "2770 0000-0001\u20147": "FOUND",
    }


# ---------------------------------------------------------------- the doors


@pytest.fixture(scope="module")
def http_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    agent = Agent(tmp_path_factory.mktemp("spec40c-http") / "data", "till-1")
    agent.load_snapshot(copy.deepcopy(SNAP))
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    try:
        yield srv.port
    finally:
        srv.stop()
        agent.close()


def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def identify_http(port: int, text: str) -> tuple[int, bytes]:
    return post(port, "/v1/identify", json.dumps({"text": text}).encode())


def without_reason(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "reason"}


def test_every_spelling_over_http_is_what_the_contract_says(http_port: int) -> None:
    wrong = []
    for text in TEXTS:
        status, body = identify_http(http_port, text)
        expected = model(text, MODEL_CARDS, MODEL_CUSTOMERS)
        got = json.loads(body)
        if status != 200 or without_reason(got) != expected:
            wrong.append((text, status, got, expected))
        # INVALID and BLOCKED say why, in words (§4's table: "a message the cashier understands")
        if got.get("status") in ("INVALID", "BLOCKED"):
            assert isinstance(got.get("reason"), str) and len(got["reason"]) > 8, (text, got)
        if got.get("status") in ("UNKNOWN",):
            assert set(got) == {"status"}, (text, got)
    assert not wrong, "\n".join(repr(w) for w in wrong)


def test_what_the_contract_leaves_open_is_answered_as_documented(http_port: int) -> None:
    """PRODUCT_READING: one card read twice is INVALID (CONTRACT §4, review 38); more than
    128 characters is bad input, 400, not an outcome (§10: "a text field longer than 128
    characters"); exactly 128 digits is an UNKNOWN number."""
    status, body = identify_http(http_port, READ_TWICE)
    assert (status, json.loads(body)) == (
        200,
        {"status": "INVALID", "reason": "the card was read twice in one scan; scan it once"},
    )
    for text in TOO_LONG:
        status, body = identify_http(http_port, text)
        assert status == 400, text
        assert json.loads(body) == {
            "error": {
                "code": "INVALID_ARGUMENT",
                "message": "identify: text is too long (at most 128 characters)",
            }
        }
    assert identify_http(http_port, "9" * 128) == (200, b'{"status": "UNKNOWN"}\n')


@pytest.mark.parametrize("every", SHARE)
def test_a_quote_and_a_balance_answer_each_spelling_as_identify_does(
    http_port: int, every: bool
) -> None:
    """§10: identify's document is `CheckoutResult.card`; a quote with a FOUND or UNKNOWN
    card carries that very object, a BLOCKED one is 412 and an INVALID one 400 (CONTRACT
    §4's decision), and `balance` answers FOUND with the points, UNKNOWN 404, BLOCKED 412,
    INVALID 400 (§12)."""
    quote_status = {"FOUND": 200, "UNKNOWN": 200, "BLOCKED": 412, "INVALID": 400}
    balance_status = {"FOUND": 200, "UNKNOWN": 404, "BLOCKED": 412, "INVALID": 400}
    for n, text in enumerate(share([*TEXTS, READ_TWICE], every)):
        card = json.loads(identify_http(http_port, text)[1])
        status, body = post(
            http_port, "/v1/quote", json.dumps(receipt(f"q{n}", card=text)).encode()
        )
        assert status == quote_status[card["status"]], (text, card, body)
        if status == 200:
            assert json.loads(body)["card"] == card, text
        status, body = post(http_port, "/v1/balance", json.dumps({"card": text}).encode())
        assert status == balance_status[card["status"]], (text, card, body)


@pytest.fixture
def loaded_cli(cli: CLI, tmp_path: Path) -> CLI:
    assert cli("snapshot", "load", copy.deepcopy(SNAP)).code == 0
    return cli


def identify_cli(cli: CLI, text: str) -> Any:
    # A text that starts with a dash is given after `--` (argparse); §10's decision takes
    # most such texts without it, `--` always.
    return cli("identify", "--json", "--", text)


def check_cli_equals_http(cli: CLI, port: int, texts: list[str]) -> None:
    for text in texts:
        run = identify_cli(cli, text)
        status, body = identify_http(port, text)
        assert run.code == 0 and status == 200, (text, run, status, body)
        assert run.out.encode() == body, (text, run.out, body)
        assert run.err == ""
    for text in TOO_LONG:
        run = identify_cli(cli, text)
        assert run.code == 2 and run.out == ""
        assert run.err == "tillpoint: identify: text is too long (at most 128 characters)\n"


def test_the_cli_prints_the_http_document_byte_for_byte(loaded_cli: CLI, http_port: int) -> None:
    """A seeded quarter of the texts (the slow twin: all)."""
    texts = [*share(TEXTS, False, 0.25), READ_TWICE, "", "-"]
    check_cli_equals_http(loaded_cli, http_port, texts)


@pytest.mark.slow
def test_the_cli_prints_the_http_document_byte_for_byte_every_text(
    loaded_cli: CLI, http_port: int
) -> None:
    check_cli_equals_http(loaded_cli, http_port, [*TEXTS, READ_TWICE])


def test_identify_bodies_of_the_wrong_shape_are_bad_input(http_port: int) -> None:
    """§12: the body is IdentifyRequest's proto3 JSON; `null` and absent are the empty text
    (INVALID, "nothing was scanned"); another type or an unknown field is 400."""
    nothing = {"status": "INVALID", "reason": "nothing was scanned"}
    for body in (b'{"text": null}', b"{}"):
        status, raw = post(http_port, "/v1/identify", body)
        assert (status, json.loads(raw)) == (200, nothing), body
    for body, words in (
        (b'{"text": 2770000000017}', "text must be a string"),
        (b'{"text": ["2770000000017"]}', "text must be a string"),
        (b'{"text": true}', "text must be a string"),
        (b'{"card": "2770000000017"}', "card is not a known field"),
        (b'{"text": "2770000000017", "foo": 1}', "foo is not a known field"),
        (b"[]", "expected a JSON object"),
        (b'"2770000000017"', "expected a JSON object"),
        (b"", "not valid JSON"),
    ):
        status, raw = post(http_port, "/v1/identify", body)
        doc = json.loads(raw)
        assert status == 400 and doc["error"]["code"] == "INVALID_ARGUMENT", body
        assert words in doc["error"]["message"], (body, doc)


# ---------------------------------------------------------------- §3: the snapshot's shapes

Mutation = Callable[[dict[str, Any]], Any]


def base() -> dict[str, Any]:
    return snapshot()


def at(section: str, field: str, value: Any, i: int = 0) -> Mutation:
    return lambda s: s[section][i].__setitem__(field, value)


def dropping(section: str, field: str, i: int = 0) -> Mutation:
    return lambda s: s[section][i].pop(field)


def top(field: str, value: Any) -> Mutation:
    return lambda s: s.__setitem__(field, value)


def program(**fields: Any) -> Mutation:
    return lambda s: s["program"].update(fields)


# (name, mutation, text to identify, what it must identify as: status and customerId)
ACCEPTED: list[tuple[str, Mutation, str, tuple[str, str | None]]] = [
    ("int64 version as a string", top("version", "7"), "2770000000017", ("FOUND", "c-a")),
    (
        "no baseVersion: a full one",
        lambda s: s.pop("baseVersion"),
        "2770000000017",
        ("FOUND", "c-a"),
    ),
    ("baseVersion null", top("baseVersion", None), "2770000000017", ("FOUND", "c-a")),
    ("no issuedAt", lambda s: s.pop("issuedAt"), "2770000000017", ("FOUND", "c-a")),
    ("program null: the defaults", top("program", None), "2770000000017", ("FOUND", "c-a")),
    ("program {}", top("program", {}), "2770000000017", ("FOUND", "c-a")),
    ("no program", lambda s: s.pop("program"), "2770000000017", ("FOUND", "c-a")),
    ("offers null", top("offers", None), "2770000000017", ("FOUND", "c-a")),
    ("no offers", lambda s: s.pop("offers"), "2770000000017", ("FOUND", "c-a")),
    ("removed null", top("removed", None), "2770000000017", ("FOUND", "c-a")),
    ("appliedThrough {}", top("appliedThrough", {}), "2770000000017", ("FOUND", "c-a")),
    (
        "appliedThrough as a string",
        top("appliedThrough", {"till-9": "41"}),
        "2770000000017",
        ("FOUND", "c-a"),
    ),
    ("an unknown top field", top("storeName", "x"), "2770000000017", ("FOUND", "c-a")),
    (
        "an unknown customer field",
        at("customers", "lastName", "И"),
        "2770000000017",
        ("FOUND", "c-a"),
    ),
    ("an unknown card field", at("cards", "issuedAt", "2020"), "2770000000017", ("FOUND", "c-a")),
    ("balance int64 max", at("customers", "balancePoints", I64), "2770000000017", ("FOUND", "c-a")),
    (
        "balance int64 max as a string",
        at("customers", "balancePoints", str(I64)),
        "2770000000017",
        ("FOUND", "c-a"),
    ),
    (
        "balance int64 min",
        at("customers", "balancePoints", -I64 - 1),
        "2770000000017",
        ("FOUND", "c-a"),
    ),
    ("balance null", at("customers", "balancePoints", None), "2770000000017", ("FOUND", "c-a")),
    ("version int64 max", top("version", I64), "2770000000017", ("FOUND", "c-a")),
    ("no cards: the number is unknown", top("cards", []), "2770000000017", ("UNKNOWN", None)),
    (
        "every list empty",
        lambda s: s.update(customers=[], cards=[], products=[], categories=[], offers=[]),
        "+79161234567",
        ("UNKNOWN", None),
    ),
    ("phone null: no phone", at("customers", "phone", None), "+79161234567", ("UNKNOWN", None)),
    (
        "phone as a person writes it",
        at("customers", "phone", "8 (916) 123-45-67"),
        "+79161234567",
        ("FOUND", "c-a"),
    ),
    (
        "phone of ten digits",
        at("customers", "phone", "9161234567"),
        "89161234567",
        ("FOUND", "c-a"),
    ),
    (
        "phone that is no phone",
        at("customers", "phone", "call me"),
        "89161234567",
        ("UNKNOWN", None),
    ),
    ("card status null: ACTIVE", at("cards", "status", None), "2770000000017", ("FOUND", "c-a")),
    ("card without status: ACTIVE", dropping("cards", "status"), "2770000000017", ("FOUND", "c-a")),
    (
        "card of an unknown customer",
        at("cards", "customerId", "c-zz"),
        "2770000000017",
        ("UNKNOWN", None),
    ),
    (
        "card with leading zeros",
        at("cards", "number", "0002770000000017"),
        "0002770000000017",
        ("FOUND", "c-a"),
    ),
    (
        "card number with blanks: never matched",
        at("cards", "number", "2770 0000 0001 7"),
        "2770000000017",
        ("UNKNOWN", None),
    ),
    (
        "card with a wrong check digit: never matched",
        at("cards", "number", "2770000000018"),
        "2770000000018",
        ("INVALID", None),
    ),
    ("tier null: the base tier", at("customers", "tier", None), "2770000000017", ("FOUND", "c-a")),
    ("firstName null", at("customers", "firstName", None), "2770000000017", ("FOUND", "c-a")),
    (
        "a shared phone in two spellings",
        at("customers", "phone", "8 (916) 123-45-67", 1),
        "89161234567",
        ("FOUND", "c-a"),
    ),
    ("tiers []: the defaults", program(tiers=[]), "2770000000017", ("FOUND", "c-a")),
    ("a byte order mark", lambda s: None, "2770000000017", ("FOUND", "c-a")),
]

# (name, mutation or raw text, words the one-line refusal must carry)
REFUSED: list[tuple[str, Mutation | str, str]] = [
    ("no version", lambda s: s.pop("version"), "snapshot: version is required"),
    ("version null", top("version", None), "snapshot: version is required"),
    ("version 0", top("version", 0), "version must be greater than zero"),
    ("version -1", top("version", -1), "version must be greater than zero"),
    (
        "version past int64",
        top("version", I64 + 1),
        "version does not fit in a signed 64-bit integer",
    ),
    ("version 7.0", top("version", 7.0), "has a decimal point"),
    ("version true", top("version", True), "version must be a whole number, not true/false"),
    ("version abc", top("version", "abc"), "version must be a whole number"),
    ("baseVersion -1", top("baseVersion", -1), "baseVersion must not be negative"),
    ("customers {}", top("customers", {}), "snapshot: customers must be a list"),
    ("cards a string", top("cards", "x"), "snapshot: cards must be a list"),
    ("customers [null]", top("customers", [None]), "customers[0] must be a JSON object"),
    (
        "balance past int64",
        at("customers", "balancePoints", I64 + 1),
        "customers[0].balancePoints does not fit in a signed 64-bit integer",
    ),
    (
        "balance past int64 as a string",
        at("customers", "balancePoints", str(I64 + 1)),
        "customers[0].balancePoints does not fit in a signed 64-bit integer",
    ),
    (
        "balance below int64",
        at("customers", "balancePoints", -I64 - 2),
        "customers[0].balancePoints does not fit in a signed 64-bit integer",
    ),
    (
        "balance 1.5",
        at("customers", "balancePoints", 1.5),
        "customers[0].balancePoints: the number 1.5 has a decimal point",
    ),
    (
        "balance 12x",
        at("customers", "balancePoints", "12x"),
        "customers[0].balancePoints must be a whole number",
    ),
    (
        "balance true",
        at("customers", "balancePoints", True),
        "customers[0].balancePoints must be a whole number, not true/false",
    ),
    (
        "phone a number",
        at("customers", "phone", 79161234567),
        "customers[0].phone must be a string",
    ),
    (
        "firstName a number",
        at("customers", "firstName", 5),
        "customers[0].firstName must be a string",
    ),
    ("segment VIP", at("customers", "segment", "VIP"), 'customers[0].segment "VIP" is not one of'),
    (
        "birthday 30 Feb",
        at("customers", "birthday", "1990-02-30"),
        'customers[0].birthday "1990-02-30" is not a date',
    ),
    ("customer without id", dropping("customers", "id"), "customers[0].id is required"),
    ("customer id empty", at("customers", "id", ""), "customers[0].id must not be empty"),
    ("customer id a number", at("customers", "id", 5), "customers[0].id must be a string"),
    (
        "a customer twice",
        lambda s: s["customers"].append({"id": "c-a", "tier": "base"}),
        "customers: 'c-a' appears twice",
    ),
    (
        "a card twice",
        lambda s: s["cards"].append(copy.deepcopy(s["cards"][0])),
        "cards: '2770000000017' appears twice",
    ),
    (
        "a product twice",
        lambda s: s["products"].append(copy.deepcopy(s["products"][0])),
        "products: '4601234000017' appears twice",
    ),
    (
        "card number a number",
        at("cards", "number", 2770000000017),
        "cards[0].number must be a string",
    ),
    ("card number null", at("cards", "number", None), "cards[0].number is required"),
    ("card without customerId", dropping("cards", "customerId"), "cards[0].customerId is required"),
    (
        "card status active",
        at("cards", "status", "active"),
        'cards[0].status "active" is not one of ACTIVE, BLOCKED or LOST',
    ),
    (
        "card status 1",
        at("cards", "status", 1),
        "cards[0].status must be one of ACTIVE, BLOCKED or LOST",
    ),
    (
        "card status FROZEN",
        at("cards", "status", "FROZEN"),
        'cards[0].status "FROZEN" is not one of',
    ),
    (
        "a section's typo",
        lambda s: s.__setitem__("customer", s.pop("customers")),
        "customer is not a known field (did you mean customers?)",
    ),
    (
        "a section's case",
        lambda s: s.__setitem__("Cards", s.pop("cards")),
        "Cards is not a known field (did you mean cards?)",
    ),
    (
        "pointValueMinor past int64",
        program(pointValueMinor=I64 + 1),
        "program.pointValueMinor does not fit in a signed 64-bit integer",
    ),
    (
        "pointValueMinor 0",
        program(pointValueMinor=0),
        "program.pointValueMinor must be greater than zero",
    ),
    (
        "a tier twice",
        program(
            tiers=[{"code": "base", "accrualPercent": "3"}, {"code": "base", "accrualPercent": "5"}]
        ),
        "tier 'base' appears twice",
    ),
    ("appliedThrough negative", top("appliedThrough", {"till-9": -1}), "must not be negative"),
    ("not an object", "[]", "not a snapshot"),
    ("empty file", "", "not valid JSON"),
    ("NaN", "NaN-balance", "NaN is not a JSON number"),
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name.replace(' ', '-')}.json"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("every", SHARE)
def test_snapshot_shapes_the_contract_accepts_identify_as_the_model_says(
    cli: CLI, tmp_path: Path, every: bool
) -> None:
    """One data directory: each full snapshot (a newer version each time) replaces the
    cache (§3: "baseVersion 0 is a full snapshot: it replaces the cache")."""
    for n, (name, mutate, text, (status, owner)) in enumerate(share(ACCEPTED, every)):
        snap = base()
        mutate(snap)
        if name != "version int64 max":
            snap["version"] = 100 + n
        raw = json.dumps(snap, ensure_ascii=False)
        if name == "a byte order mark":
            raw = "\ufeff" + raw
        run = cli("snapshot", "load", write(tmp_path, name, raw))
        assert run.code == 0, (name, run)
        assert "Traceback" not in run.err
        got = identify_cli(cli, text).json()
        assert (got["status"], got.get("customerId")) == (status, owner), (name, got)
        if name == "version int64 max":
            # nothing is newer than int64's maximum: the next one starts a new data dir
            shutil.rmtree(tmp_path / "data")


@pytest.mark.parametrize("every", SHARE)
def test_snapshot_shapes_the_contract_refuses_keep_the_cache(
    cli: CLI, tmp_path: Path, every: bool
) -> None:
    """Exit 2, one line naming the field, no traceback, the cache as it was: the same data
    directory answers every refusal, then still identifies version 1's card and phone."""
    assert cli("snapshot", "load", base()).code == 0
    before = identify_cli(cli, "+79161234567").out
    for name, mutate, words in share(REFUSED, every):
        if isinstance(mutate, str):
            raw = mutate
            if raw == "NaN-balance":
                raw = json.dumps(snapshot(version=2)).replace(
                    '"balancePoints": 1200', '"balancePoints": NaN'
                )
        else:
            snap = snapshot(version=2)
            mutate(snap)
            raw = json.dumps(snap, ensure_ascii=False)
        run = cli("snapshot", "load", write(tmp_path, name, raw))
        assert run.code == 2, (name, run)
        assert run.out == "" and run.err.count("\n") == 1, (name, run)
        assert run.err.startswith("tillpoint: ") and words in run.err, (name, run.err)
    assert cli("status", "--json").json()["cacheVersion"] == 1
    assert identify_cli(cli, "+79161234567").out == before
    assert identify_cli(cli, "2770000000017").json()["customerId"] == "c-a"


def test_a_delta_row_replaces_the_whole_row(cli: CLI) -> None:
    """§3: "A row in a delta replaces the whole row with that key; removed lists the keys
    that go"; §4 then answers from the new rows only."""
    assert cli("snapshot", "load", base()).code == 0

    def who(text: str) -> tuple[str, str | None]:
        doc = identify_cli(cli, text).json()
        return doc["status"], doc.get("customerId")

    def delta(version: int, **rows: Any) -> None:
        run = cli("snapshot", "load", {"version": version, "baseVersion": version - 1, **rows})
        assert run.code == 0, run

    anna = {"id": "c-a", "firstName": "Анна", "tier": "gold", "balancePoints": 5}
    delta(2, customers=[{**anna, "phone": "+79169999999"}])
    assert who("+79161234567") == ("UNKNOWN", None)  # the old phone went with the old row
    assert who("8 916 999-99-99") == ("FOUND", "c-a")
    delta(3, customers=[anna])  # a row without a phone: no phone
    assert who("+79169999999") == ("UNKNOWN", None)
    delta(4, cards=[{"number": "2770000000017", "customerId": "c-a", "status": "LOST"}])
    assert who("2770000000017") == ("BLOCKED", None)
    delta(5, removed={"customers": ["c-b"]})
    assert who("2770000000024") == ("UNKNOWN", None)  # its card stays, its customer went
    assert who("+79035550001") == ("UNKNOWN", None)
    delta(6, removed={"cards": ["nobody's"], "customers": ["nobody"]})
    delta(7, customers=[{"id": "c-b", "firstName": "Б", "tier": "base", "phone": "89035550001"}])
    assert who("+79035550001") == ("FOUND", "c-b")
    delta(8, removed={"cards": ["2770000000024"]})
    assert who("+79035550001") == ("BLOCKED", None)  # §4: "BLOCKED if they have none"
    refused = cli("snapshot", "load", {"version": 10, "baseVersion": 7})
    assert refused.code == 2
    assert refused.err == (
        "tillpoint: delta snapshot 10 applies on version 7, but the cache is at version 8:"
        " a full snapshot is needed\n"
    )
    older = cli("snapshot", "load", snapshot(version=8))
    assert older.code == 2 and "not newer than the cache's 8" in older.err
    assert who("+79035550001") == ("BLOCKED", None)


# A customer's phone in the snapshot, in the spellings a CRM export carries (§3's
# decision: "read as a person writes it": blanks, dashes of any kind and brackets dropped);
# each template is given ten digits. The last ones are no Russian phone: nobody's.
PHONE_SPELLINGS: list[tuple[Callable[[str], str], bool]] = [
    (lambda d: f"+7{d}", True),
    (lambda d: f"8{d}", True),
    (lambda d: f"7{d}", True),
    (lambda d: d, True),
    (lambda d: f"+7 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}", True),
    (lambda d: f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}", True),
    (lambda d: f"8({d[:3]}){d[3:]}", True),
    (lambda d: f"({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}", True),
    (lambda d: f"+7-{d[:3]}-{d[3:6]}-{d[6:8]}-{d[8:]}", True),
    (lambda d: f" +7 {d[:3]} {d[3:6]} {d[6:8]} {d[8:]}\t", True),
    (lambda d: f"+7\u00a0{d[:3]}\u00a0{d[3:6]}\u00a0{d[6:]}", True),
    (lambda d: f"8\u2013{d[:3]}\u2013{d[3:6]}\u2013{d[6:]}", True),
    (lambda d: f"+7\u2212{d[:3]}\u2212{d[3:]}", True),
    (lambda d: f"\u202a+7 {d[:3]} {d[3:6]}-{d[6:8]}-{d[8:]}\u202c", True),
    (lambda d: f"8 ( {d[:3]} ) {d[3:6]} - {d[6:8]} - {d[8:]}", True),
    (lambda d: f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]} доб. 12", False),
    (lambda d: f"+8 {d[:3]} {d[3:6]} {d[6:]}", False),
    (lambda d: f"tel:+7{d}", False),
    (lambda d: f"+7{d[:-1]}", False),
    (lambda d: f"+7{d}5", False),
]


def test_snapshot_phones_in_every_spelling_find_their_customer_by_any_scan(
    cli: CLI, tmp_path: Path
) -> None:
    """One snapshot (loaded by `snapshot load`) with a customer per spelling, each its own
    number and an active card; every §4 form of each number scanned over HTTP on an agent
    of the same data directory: FOUND that customer, or UNKNOWN when the snapshot's phone
    is no Russian phone."""
    snap = snapshot()
    for i, (spell, _) in enumerate(PHONE_SPELLINGS):
        digits = f"95{i:08d}"
        snap["customers"].append(
            {"id": f"p-{i:02d}", "firstName": "П", "tier": "base", "phone": spell(digits)}
        )
        snap["cards"].append(
            {"number": f"30{i:02d}", "customerId": f"p-{i:02d}", "status": "ACTIVE"}
        )
    assert cli("snapshot", "load", snap).code == 0
    agent = Agent(tmp_path / "data", "till-1")
    srv = HttpServer(agent, "127.0.0.1:0")
    srv.start()
    try:
        for i, (_, is_phone) in enumerate(PHONE_SPELLINGS):
            digits = f"95{i:08d}"
            for scan in (f"+7{digits}", f"8{digits}", f"7 {digits[:3]} {digits[3:]}", digits):
                status, body = identify_http(srv.port, scan)
                doc = json.loads(body)
                expected = ("FOUND", f"p-{i:02d}") if is_phone else ("UNKNOWN", None)
                assert (status, doc["status"], doc.get("customerId")) == (200, *expected), (i, scan)
    finally:
        srv.stop()
        agent.close()


def test_a_phone_sells_on_the_customers_first_active_card_by_number(
    cli: CLI, tmp_path: Path
) -> None:
    """§4: "a phone that matches a customer identifies them through their first active card
    (by card number)"; the sale is journalled on that card (the ledger's real file). "By
    card number" compares numbers as text (CONTRACT §4's decision): `123456` before
    `99999`; the blocked `100000` before both is passed over."""
    snap = snapshot()
    snap["customers"].append(
        {"id": "c-m", "firstName": "М", "tier": "base", "phone": "+79035557777"}
    )
    snap["cards"] += [
        {"number": "99999", "customerId": "c-m", "status": "ACTIVE"},
        {"number": "123456", "customerId": "c-m", "status": "ACTIVE"},
        {"number": "100000", "customerId": "c-m", "status": "BLOCKED"},
    ]
    assert cli("snapshot", "load", snap).code == 0
    sale = receipt("r-phone", card="8 903 555-77-77")
    run = cli("checkout", sale, "--json")
    assert run.code == 0, run
    assert run.json()["card"] == {
        "status": "FOUND",
        "customerId": "c-m",
        "tier": "base",
        "firstName": "М",
    }
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.db")) as conn:
        rows = conn.execute(
            "SELECT customer_id, card FROM journal WHERE ref_id = 'r-phone'"
        ).fetchall()
    assert rows == [("c-m", "123456")]


def test_grpc_identify_answers_every_spelling_as_http_does(http_port: int, tmp_path: Path) -> None:
    """The third door (§1's `PosAgent`, on a real gRPC server on a loopback port): the
    `CardOutcome` of each text, as proto3 JSON, is the HTTP document; a text over 128
    characters is `INVALID_ARGUMENT` with HTTP's 400 message."""
    import grpc
    from google.protobuf import json_format
    from tillpoint.v1 import tillpoint_pb2 as pb

    agent = Agent(tmp_path / "grpc", "till-1")
    agent.load_snapshot(copy.deepcopy(SNAP))
    try:
        with posagent_stub(agent) as stub:
            for text in [*TEXTS, READ_TWICE]:
                answer = stub.Identify(pb.IdentifyRequest(text=text), timeout=30)
                status, body = identify_http(http_port, text)
                assert (200, json_format.MessageToDict(answer)) == (status, json.loads(body)), text
            for text in TOO_LONG:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Identify(pb.IdentifyRequest(text=text), timeout=30)
                status, body = identify_http(http_port, text)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (status, refused.value.details()) == (
                    400,
                    json.loads(body)["error"]["message"],
                )
    finally:
        agent.close()
