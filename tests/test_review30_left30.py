"""Review 30 (left30): what earlier sessions left open — a phone at rest, the explain
trace's shape, fractional seconds at a validity bound, coupons without a printer, and
over-long identifiers."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .conftest import CLI, receipt, snapshot

# ------------------------------------------------------------ 1. a phone at rest (§4)

ANNA_PHONE = "9161234567"  # c-a, found by her phone


def _ledger_text(data_dir: Path) -> str:
    """Every value of every table of the till's SQLite files, as one text."""
    seen: list[str] = []
    for name in ("ledger.db", "cache.db"):
        conn = sqlite3.connect(data_dir / name)
        try:
            tables = [
                t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                seen += [repr(row) for row in conn.execute(f'SELECT * FROM "{table}"')]
        finally:
            conn.close()
    return "\n".join(seen)


def _rows(data_dir: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_a_phone_is_never_kept_by_the_till(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §4: a phone's digits land nowhere at rest but as the card number
    of a sale that identified no one — not in the stored request, whether the phone found
    its customer or nobody, nor anywhere for a phone that found its customer; digits that
    identify no one are the sale's card (journal, outbox: §4's table has the hub settle
    them when it knows the card); a retry is still a retry and another body a conflict."""
    data = tmp_path / "data"
    assert cli("snapshot", "load", snapshot()).code == 0
    nobody = cli("checkout", receipt("r-1", "+7 999 111-22-33"), "--json")
    assert nobody.code == 0, nobody.err
    assert nobody.json()["card"] == {"status": "UNKNOWN"}
    assert nobody.json()["earnedPoints"] == 5  # accrued all the same (§4's table)
    typed = cli("checkout", receipt("r-2", "8 999 111 22 33"), "--json")
    assert typed.code == 0, typed.err
    anna = cli("checkout", receipt("r-3", "8-916-123-45-67"), "--json")
    assert anna.json()["card"]["customerId"] == "c-a"
    assert cli("hold", receipt("r-4", "+79161234567"), "--json").code == 0
    held_text = _ledger_text(data)
    assert cli("confirm", "r-4", "--json").code == 0
    refund = {
        "refundId": "f-1",
        "receiptId": "r-1",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": "4601234000017", "qty": "1"}],
    }
    assert cli("refund", refund, "--json").code == 0
    # Анна's phone (she was found by it) is nowhere, held or confirmed
    for text in (held_text, _ledger_text(data)):
        assert ANNA_PHONE not in text
    # the stored requests keep every phone in its keyed form
    for (text,) in _rows(data, "SELECT request FROM receipts"):
        assert "999111" not in text and ANNA_PHONE not in text
    # the sales to digits of nobody's are journalled and sent under the digits as scanned
    # (blanks and dashes dropped), their refund too; Анна's under her card
    cards = [c for (c,) in _rows(data, "SELECT card FROM journal ORDER BY seq")]
    assert cards[0] == "+79991112233" and cards[1] == "89991112233"
    assert cards[-1] == "+79991112233"
    assert "2770000000017" in cards
    # a retry (spelt another way) answers the stored result; another body is a conflict
    again = cli("checkout", receipt("r-1", "+7999 1112233"), "--json")
    assert again.code == 0, again.err
    assert again.json() == nobody.json()
    other = cli("checkout", receipt("r-1", "+79991112234"), "--json")
    assert other.code == 2 and "another body" in other.err
    assert cli("checkout", receipt("r-3", "+79161234567"), "--json").json() == anna.json()


# ------------------------------------------------------------ 2. the trace's figures (§17)

WINDOW = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-11-30T23:59:59+03:00"}
SUNDAYS = {"weekdays": [7], **WINDOW}  # 2026-11-23 is a Monday
BREAD = "4601234000024"


def test_every_trace_row_tells_its_terms_and_a_figure_only_when_weighed(cli: CLI) -> None:
    """docs/CONTRACT.md §17: a receipt offer always tells its terms (`percent`, `points`:
    what it gives once its threshold is met), and `discountMinor` only when it was weighed;
    a money line offer that was weighed tells its `discountMinor`, 0 included; one set aside
    before (outside its window, below its minimum qty) tells none."""
    offers = [
        {"id": "x-far", "kind": "EXTRA_POINTS", "value": "50", "minTotalMinor": 100000, **WINDOW},
        {"id": "x-sun", "kind": "EXTRA_POINTS", "value": "20", "minTotalMinor": 100, **SUNDAYS},
        {"id": "x-ok", "kind": "EXTRA_POINTS", "value": "10", "minTotalMinor": 100, **WINDOW},
        # weighed, and gives nothing: the only line has its line offer
        {
            "id": "p-zero",
            "kind": "RECEIPT_PERCENT_OFF",
            "value": "3",
            "minTotalMinor": 100,
            **WINDOW,
        },
        {
            "id": "p-far",
            "kind": "RECEIPT_PERCENT_OFF",
            "value": "5",
            "minTotalMinor": 100000,
            **WINDOW,
        },
        {
            "id": "p-sun",
            "kind": "RECEIPT_PERCENT_OFF",
            "value": "2",
            "minTotalMinor": 100,
            **SUNDAYS,
        },
        {"id": "l-zero", "kind": "AMOUNT_OFF", "skus": [BREAD], "value": "0", **WINDOW},
        {
            "id": "l-qty",
            "kind": "PERCENT_OFF",
            "skus": [BREAD],
            "value": "5",
            "minQty": "5",
            **WINDOW,
        },
        {"id": "l-ten", "kind": "PERCENT_OFF", "skus": [BREAD], "value": "10", **WINDOW},
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    lines = [{"sku": BREAD, "qty": "1", "priceMinor": 5000}]
    got = cli("quote", receipt("q-1", lines=lines), "--explain", "--json")
    assert got.code == 0, got.err
    trace = got.json()["trace"]
    rows = {r["offerId"]: r for r in trace["receiptOffers"]}
    assert rows["x-far"]["outcome"] == "BELOW_MIN_TOTAL" and rows["x-far"]["points"] == 50
    assert rows["x-sun"]["outcome"] == "OUTSIDE_WINDOW" and rows["x-sun"]["points"] == 20
    assert rows["x-ok"]["outcome"] == "APPLIED" and rows["x-ok"]["points"] == 10
    assert rows["p-far"]["outcome"] == "BELOW_MIN_TOTAL" and rows["p-far"]["percent"] == "5"
    assert rows["p-sun"]["outcome"] == "OUTSIDE_WINDOW" and rows["p-sun"]["percent"] == "2"
    assert rows["p-zero"]["outcome"] == "ZERO_DISCOUNT" and rows["p-zero"]["discountMinor"] == 0
    weighed = {"x-ok", "p-zero"}
    for row in rows.values():
        told = "discountMinor" in row
        assert told == (row["kind"] == "RECEIPT_PERCENT_OFF" and row["offerId"] in weighed)
        assert list(row)[3:6] == ["minTotalMinor", "basketMinor", "missingMinor"]
    line = {r["offerId"]: r for r in trace["lines"][0]["offers"]}
    assert line["l-zero"]["outcome"] == "ZERO_DISCOUNT" and line["l-zero"]["discountMinor"] == 0
    assert line["l-qty"]["outcome"] == "BELOW_MIN_QTY" and "discountMinor" not in line["l-qty"]
    assert line["l-ten"] == {
        "offerId": "l-ten",
        "kind": "PERCENT_OFF",
        "outcome": "APPLIED",
        "discountMinor": 500,
    }
    # the trace changes no figure (§17)
    plain = cli("quote", receipt("q-1", lines=lines), "--json").json()
    assert {k: v for k, v in got.json().items() if k != "trace"} == plain


# ------------------------------------------------- 3. a bound's last second (§2, §5, §14)

LAST_DAY = "2026-11-30T23:59:59+03:00"
CHEESE, MILK = "4601234000055", "4601234000017"


def _last_second_snapshot() -> dict[str, Any]:
    til = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": LAST_DAY}
    later = {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-12-31T23:59:59+03:00"}
    offers = [
        {
            "id": "l-bread",
            "kind": "PERCENT_OFF",
            "skus": [BREAD],
            "value": "10",
            "customerId": "c-a",
            "printable": True,
            "printText": "−10% на хлеб",
            **til,
        },
        {
            "id": "m-cheese",
            "kind": "MULTIBUY",
            "skus": [CHEESE],
            "buyQty": "1",
            "freeQty": "1",
            **til,
        },
        {"id": "r-5", "kind": "RECEIPT_PERCENT_OFF", "value": "5", "minTotalMinor": 100, **til},
        {"id": "x-10", "kind": "EXTRA_POINTS", "value": "10", "minTotalMinor": 100, **til},
        {
            "id": "x-coupon",
            "kind": "EXTRA_POINTS",
            "value": "7",
            "minTotalMinor": 100,
            "couponRequired": True,
            **later,
        },
    ]
    snap = snapshot(offers=offers)
    snap["coupons"] = [{"code": "LAST1", "offerId": "x-coupon", **til}]
    snap["customers"][0]["expiring"] = [{"points": 300, "expiresAt": LAST_DAY}]
    return snap


def test_a_bound_in_whole_seconds_holds_through_its_last_second(cli: CLI) -> None:
    """docs/CONTRACT.md §2, §5: a `validTo` (or `expiresAt`) written in whole seconds,
    "23:59:59", holds through that second: a sale at 23:59:59.000, .500 or .999 gets the
    line offer, the deal, the receipt offers, the coupon and the printed offer, and the
    expiring points still count; at 00:00:00.000 none of them does."""
    assert cli("snapshot", "load", _last_second_snapshot()).code == 0
    lines = [
        {"sku": BREAD, "qty": "1", "priceMinor": 5000},
        {"sku": CHEESE, "qty": "2", "priceMinor": 30000},
        {"sku": MILK, "qty": "1", "priceMinor": 10000},
    ]
    for n, (at, valid) in enumerate(
        [
            ("2026-12-01T00:00:00.000+03:00", False),  # first: nothing printed before it
            ("2026-11-30T23:59:59+03:00", True),
            ("2026-11-30T23:59:59.500+03:00", True),
            ("2026-11-30T20:59:59.999999Z", True),
            ("2026-11-30T23:59:59.999+03:00", True),
        ]
    ):
        body = receipt(f"s-{n}", at=at, lines=lines, coupons=["LAST1"])
        got = cli("quote", body, "--json").json()
        offers = [line["offerId"] for line in got["lines"]]
        assert offers == (["l-bread", "m-cheese", "r-5"] if valid else [None] * 3), at
        assert got["coupons"][0]["status"] == ("APPLIED" if valid else "REJECTED"), at
        balance = cli("balance", "2770000000017", "--at", at, "--json").json()
        assert balance["availablePoints"] == (1200 if valid else 900), at
        if n in (0, 4):  # committed (the coupon used last): the offer printed for the next visit
            sold = cli("checkout", body, "--json").json()
            assert sold["printedOffers"] == (["l-bread"] if valid else []), at


# --------------------------------------------------- 5. over-long identifiers (§10, §11)


def test_an_over_long_identifier_gets_the_same_words_at_every_door(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §10, §11, §12: a receiptId, refundId, coupon code, identify's text or
    balance's card over 128 characters, a fiscalDocument over 64, is refused with the same
    one-line message by the CLI (exit 2), HTTP (400) and gRPC (INVALID_ARGUMENT), nothing
    stored; the fiscal document's words are those of every other field ("is too long")."""
    import json
    import urllib.error
    import urllib.request

    import grpc
    from google.protobuf import json_format
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.agent.results import receipt_from_json
    from tillpoint.agent.service import Agent
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    from .conftest import grpc_served

    long, refund_id = "r" * 129, "f" * 129
    refund = {
        "refundId": refund_id,
        "receiptId": "h-1",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": MILK, "qty": "1"}],
    }
    cases: list[tuple[str, list[Any], str, dict[str, Any], str, Any]] = [
        (
            "receipt: receiptId is too long (at most 128 characters)",
            ["checkout", receipt(long), "--json"],
            "/v1/checkout",
            receipt(long),
            "Checkout",
            json_format.ParseDict(receipt(long), pb.Receipt()),
        ),
        (
            "receipt: coupons[0] is too long (at most 128 characters)",
            ["hold", receipt("c-1", coupons=["C" * 129]), "--json"],
            "/v1/hold",
            receipt("c-1", coupons=["C" * 129]),
            "Hold",
            json_format.ParseDict(receipt("c-1", coupons=["C" * 129]), pb.Receipt()),
        ),
        (
            "confirm: fiscalDocument is too long (at most 64 characters)",
            ["confirm", "h-1", "--fiscal", "F" * 65, "--json"],
            "/v1/confirm",
            {"receiptId": "h-1", "fiscalDocument": "F" * 65},
            "Confirm",
            pb.ConfirmRequest(receipt_id="h-1", fiscal_document="F" * 65),
        ),
        (
            "confirm: receiptId is too long (at most 128 characters)",
            ["confirm", long, "--json"],
            "/v1/confirm",
            {"receiptId": long},
            "Confirm",
            pb.ConfirmRequest(receipt_id=long),
        ),
        (
            "cancel: receiptId is too long (at most 128 characters)",
            ["cancel", long, "--json"],
            "/v1/cancel",
            {"receiptId": long},
            "Cancel",
            pb.CancelRequest(receipt_id=long),
        ),
        (
            "refund: refundId is too long (at most 128 characters)",
            ["refund", refund, "--json"],
            "/v1/refund",
            refund,
            "Refund",
            json_format.ParseDict(refund, pb.Refund()),
        ),
        (
            "identify: text is too long (at most 128 characters)",
            ["identify", "1" * 129, "--json"],
            "/v1/identify",
            {"text": "1" * 129},
            "Identify",
            pb.IdentifyRequest(text="1" * 129),
        ),
        (
            "balance: card is too long (at most 128 characters)",
            ["balance", "1" * 129, "--json"],
            "/v1/balance",
            {"card": "1" * 129},
            "Balance",
            pb.BalanceRequest(card="1" * 129),
        ),
    ]
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("hold", receipt("h-1"), "--json").code == 0
    agent = Agent(tmp_path / "doors", "till-1")
    agent.load_snapshot(snapshot())
    agent.hold(receipt_from_json(receipt("h-1")))
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    before = {d: _ledger_text(d) for d in (tmp_path / "data", tmp_path / "doors")}
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            for words, argv, path, body, rpc, message in cases:
                run = cli(*argv)
                assert (run.code, run.out, run.err) == (2, "", f"tillpoint: {words}\n"), words
                request = urllib.request.Request(
                    f"http://127.0.0.1:{server.port}{path}",
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                try:
                    urllib.request.urlopen(request, timeout=10)
                    raise AssertionError(f"{path} took {words}")
                except urllib.error.HTTPError as exc:
                    error = json.loads(exc.read())["error"]
                    assert (exc.code, error) == (
                        400,
                        {"code": "INVALID_ARGUMENT", "message": words},
                    ), words
                try:
                    getattr(stub, rpc)(message, timeout=10)
                    raise AssertionError(f"{rpc} took {words}")
                except grpc.RpcError as exc:
                    assert (exc.code(), exc.details()) == (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        words,
                    ), words
    finally:
        server.stop()
        agent.close()
    assert before == {d: _ledger_text(d) for d in (tmp_path / "data", tmp_path / "doors")}


def test_a_held_phone_receipts_retry_digest_is_not_made_of_the_phone(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §4: the digest a hold is stored with (to tell a retry from another
    body) is taken over the request as kept, the phone in its keyed form: a SHA-256 of the
    body as sent would give the phone back to whoever tries 10^10 of them. A retry spelt
    another way is still a retry, another body a conflict, and a hold stored before review
    30 (its digest over the body as sent) is still retried."""
    import json

    from tillpoint.agent.service import request_digest

    data = tmp_path / "data"
    assert cli("snapshot", "load", snapshot()).code == 0
    body = receipt("h-1", "+7 999 111-22-33")
    held = cli("hold", body, "--json")
    assert held.code == 0, held.err
    sent = json.loads(json.dumps(receipt("h-1", "+7 999 111-22-33", explain=False, coupons=[])))
    (digest,) = _rows(data, "SELECT digest FROM receipt_life WHERE receipt_id = 'h-1'")[0]
    assert digest not in {request_digest(sent), request_digest(body)}
    assert cli("hold", receipt("h-1", "89991112233"), "--json").json() == held.json()
    other = cli("hold", receipt("h-1", "+79991112234"), "--json")
    assert other.code == 2 and "another body" in other.err
    # a hold an earlier release stored: its digest over the body as sent
    conn = sqlite3.connect(data / "ledger.db")
    with conn:
        conn.execute(
            "UPDATE receipt_life SET digest = ? WHERE receipt_id = 'h-1'",
            (
                request_digest(
                    json.loads(_rows(data, "SELECT request FROM receipt_life")[0][0])
                    | {"card": "+7 999 111-22-33"}
                ),
            ),
        )
    conn.close()
    assert cli("hold", body, "--json").json() == held.json()
