"""Review 29 (scen29): what the scenarios under tests/scenarios/review29b/ cannot say, the
codes a POS reads over HTTP when a refund is refused (docs/CONTRACT.md §6, §12).

The scenarios themselves (hand arithmetic in each step's "why") run in tests/test_scenarios.py.
"""

from __future__ import annotations

from typing import Any

from tillpoint.agent.http_api import HttpServer

from .conftest import CLI, receipt
from .test_http_api import Client, error_of

AT = "2026-11-24T12:00:00+03:00"


def _refund(refund_id: str, lines: list[tuple[str, str]], at: str = AT) -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": "r1",
        "at": at,
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
    }


def test_refused_refunds_answer_their_codes_and_change_nothing(
    server: HttpServer, cli: CLI
) -> None:
    """docs/CONTRACT.md §6 and §12: more than was bought is a precondition the till's own
    ledger decides (412 FAILED_PRECONDITION: the same body was fine before the earlier
    refund), a receipt the till never committed 404, a refundId reused with another body
    409, a refund dated before its sale 400; each one JSON line, the balance untouched."""
    client = Client(server.port)
    assert client.post("/v1/checkout", receipt("r1")).status == 200
    milk = "4601234000017"
    first = client.post("/v1/refund", _refund("f1", [(milk, "1")]))
    assert first.status == 200, first.body
    asked = {"card": "2770000000017", "at": "2026-11-25T00:00:00+03:00"}
    before = client.post("/v1/balance", asked)
    assert before.status == 200

    status, code, message = error_of(client.post("/v1/refund", _refund("f2", [(milk, "2")])))
    assert (status, code) == (412, "FAILED_PRECONDITION"), message
    assert "more" in message and "than was bought" in message and milk in message
    status, code, message = error_of(
        client.post("/v1/refund", _refund("f3", [(milk, "0.6"), (milk, "0.6")]))
    )
    assert (status, code) == (412, "FAILED_PRECONDITION"), message
    unknown = dict(_refund("f4", [(milk, "1")]), receiptId="never-sold")
    assert error_of(client.post("/v1/refund", unknown))[:2] == (404, "NOT_FOUND")
    status, code, message = error_of(client.post("/v1/refund", _refund("f1", [(milk, "0.5")])))
    assert (status, code) == (409, "ALREADY_EXISTS") and "f1" in message
    early = _refund("f5", [(milk, "1")], at="2026-11-23T10:14:59+03:00")
    status, code, message = error_of(client.post("/v1/refund", early))
    assert (status, code) == (400, "INVALID_ARGUMENT") and "before the sale" in message

    assert client.post("/v1/balance", asked).body == before.body
    # The CLI refuses the same refund with exit 2 and one line, as every door does.
    run = cli("refund", _refund("f2", [(milk, "2")]), "--json")
    assert run.code == 2 and run.out == "" and len(run.err.strip().splitlines()) == 1
    assert "than was bought" in run.err
    # What was left is still there to return.
    last = client.post("/v1/refund", _refund("f6", [(milk, "1")]))
    assert last.status == 200 and last.json()["refundId"] == "f6"
    client.close()
