"""Review 52 (mut52b): mutation testing of the local HTTP/JSON door (agent/http_api.py,
the contract §11 and §12). Each test pins a rule a mutant of the module broke with every
earlier test passing (docs/DECISIONS.md, "Review 52 (mut52b)"). Real HTTP to a real
server on a random loopback port over a real agent on real SQLite files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.limits import TEXT_MAX
from tillpoint.agent.service import MAX_FISCAL_DOCUMENT

from .conftest import receipt
from .test_http_api import Client, error_of


@pytest.fixture
def client(server: HttpServer) -> Iterator[Client]:
    c = Client(server.port)
    yield c
    c.close()


# ---------------------------------------------------------------- the small bodies


def test_a_null_proto_name_before_the_field_names_nothing(client: Client) -> None:
    """`"receipt_id": null` is the field left out (the contract §12), wherever it stands in
    the object: one before `receiptId` is passed over and the object read on (a `break`
    for its `continue` stopped reading there: "cancel: receiptId is required")."""
    assert client.post("/v1/hold", receipt("n-1")).status == 200
    answer = client.post("/v1/cancel", raw=b'{"receipt_id": null, "receiptId": "n-1"}')
    assert answer.status == 200, answer.body
    assert answer.json()["state"] == "CANCELLED"
    # and a confirm's: the fiscal document after a null one is read too
    assert client.post("/v1/hold", receipt("n-2")).status == 200
    answer = client.post(
        "/v1/confirm",
        raw=b'{"receiptId": "n-2", "fiscal_document": null, "fiscalDocument": "FD-7"}',
    )
    assert answer.status == 200 and answer.json()["state"] == "CONFIRMED", answer.body


def test_a_balance_without_a_card_says_what_is_wrong_with_its_at(client: Client) -> None:
    """A balance body's optional fields are each read: with no card, a bad `at` is said
    as the `at`'s fault, as gRPC reads it first (agent/server.py). A `break` for the
    `continue` past the absent card left the `at` unread: "card not accepted"."""
    status, code, message = error_of(client.post("/v1/balance", {"at": "yesterday"}))
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert message.startswith('balance: at: "yesterday" is not an RFC 3339 time'), message
    status, code, message = error_of(client.post("/v1/balance", {"at": "2" * (TEXT_MAX + 1)}))
    assert (status, code, message) == (
        400,
        "INVALID_ARGUMENT",
        f"balance: at is too long (at most {TEXT_MAX} characters)",
    )


def test_a_small_body_text_exactly_at_its_limit_is_taken(client: Client) -> None:
    """The limits are "at most": 128 characters of a text, 64 of a fiscal document (the
    contract §12's decision on limits; one more is refused, tests/test_review30_left30.py).
    `>=` for `>` refused the longest allowed."""
    assert MAX_FISCAL_DOCUMENT == 64 and TEXT_MAX == 128
    answer = client.post("/v1/identify", {"text": "7" * TEXT_MAX})
    assert answer.status == 200 and answer.json()["status"] == "UNKNOWN", answer.body
    assert client.post("/v1/hold", receipt("f-64")).status == 200
    answer = client.post(
        "/v1/confirm", {"receiptId": "f-64", "fiscalDocument": "F" * MAX_FISCAL_DOCUMENT}
    )
    assert answer.status == 200 and answer.json()["state"] == "CONFIRMED", answer.body
    longest = "r" * TEXT_MAX
    status, code, message = error_of(client.post("/v1/cancel", {"receiptId": longest}))
    assert (status, code) == (404, "NOT_FOUND"), message  # read, and not held here
    # a fiscal document's own limit, not a text's: 65 is refused
    status, code, message = error_of(
        client.post("/v1/confirm", {"receiptId": "f-64", "fiscalDocument": "F" * 65})
    )
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert message == "confirm: fiscalDocument is too long (at most 64 characters)"
