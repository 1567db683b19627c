"""Review items of session 15: the offer that beat a basket deal, and a line's multiplier
offer, chosen the way the line's own offer is chosen, whatever order the offers come in
(the order of a category lineage's offers follows the process's string hash seed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import MESSAGE_MAX, one_line
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.models import (
    _NO_CONTROLS,
    Customer,
    Offer,
    Product,
    Program,
    Receipt,
    ReceiptLine,
)
from tillpoint.agent.pricing import PricingContext, price
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import import_doc, sample_master_data

from .conftest import receipt, snapshot
from .test_coupons import COUPONS, NEXT_VISIT, NOW, SORRY, outbox, snap, verdicts
from .test_coupons import receipt as coupon_receipt
from .test_http_api import Client, error_of

DEAL = {"id": "deal", "kind": "MULTIBUY", "skus": ["A"], "buyQty": "2", "freeQty": "1"}
TIED = [  # two line offers that give the same, on two levels of the product's lineage
    {"id": "o-food", "kind": "PERCENT_OFF", "categories": ["food"], "value": "50"},
    {"id": "o-dairy", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "50"},
]


def _beaten_by(result: dict[str, Any]) -> list[str]:
    return [
        row["beatenBy"]
        for line in result["trace"]["lines"]
        for row in line["offers"]
        if row["offerId"] == "deal"
    ]


def _quote(tmp_path: Path, offers: list[dict[str, Any]]) -> dict[str, Any]:
    agent = Agent(tmp_path / "till", "till-1")
    try:
        doc = snapshot(offers=offers)
        doc["products"].append({"sku": "A", "name": "A", "category": "dairy"})
        agent.load_snapshot(doc)
        body = receipt(explain=True, lines=[{"sku": "A", "qty": "3", "priceMinor": 10000}])
        return agent.quote(receipt_from_json(body)).to_json()
    finally:
        agent.close()


def test_a_deal_beaten_by_tied_offers_names_the_one_the_line_got(tmp_path: Path) -> None:
    """A personal and a mass offer giving the same: the line takes the smaller id (same
    priority), and the trace said the deal was beaten by the personal one, always."""
    personal = {**TIED[1], "id": "z-personal", "customerId": "c-a"}
    mass = {**TIED[1], "id": "a-mass"}
    result = _quote(tmp_path, [personal, mass, DEAL])
    assert result["lines"][0]["offerId"] == "a-mass"
    assert _beaten_by(result) == ["a-mass"]


def test_the_offer_that_beat_a_deal_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """Two mass offers on the product's category and its parent, equal: which one a fresh
    process named as beating the deal followed PYTHONHASHSEED (o-food under 0 and 3,
    o-dairy under 1 and 2), while the line always got the same one."""
    data = tmp_path / "till"
    doc = snapshot(offers=[*TIED, DEAL])
    doc["products"].append({"sku": "A", "name": "A", "category": "dairy"})
    (tmp_path / "snap.json").write_text(json.dumps(doc))
    body = receipt(explain=True, lines=[{"sku": "A", "qty": "3", "priceMinor": 10000}])
    (tmp_path / "q.json").write_text(json.dumps(body))
    base = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(data)]
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1"}
    subprocess.run([*base, "snapshot", "load", str(tmp_path / "snap.json")], env=env, check=True)
    answers = set()
    for seed in "0123":
        out = subprocess.run(
            [*base, "quote", str(tmp_path / "q.json"), "--json", "--local"],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(out)
        assert _beaten_by(result) == [result["lines"][0]["offerId"]], seed
        answers.add(out)
    assert len(answers) == 1


def _multiplier_context(offers: list[dict[str, Any]]) -> PricingContext:
    return PricingContext(
        program=Program(),
        products={"A": Product(sku="A", category="dairy")},
        categories_of=lambda sku: frozenset({"dairy", "food"}),
        customer=Customer(id="c-1", tier="base"),
        offers=[Offer.model_validate(o) for o in offers],
    )


def test_a_line_multiplier_is_chosen_by_priority_and_id_not_by_order() -> None:
    """Two BONUS_MULTIPLIER offers of the same value: the line's multiplier offer (what a
    coupon's verdict reads as "gave something") was the first met, the trace's APPLIED
    the lower priority, then the smaller id."""
    tied = [
        {"id": "m-b", "kind": "BONUS_MULTIPLIER", "skus": ["A"], "value": "2", "priority": 1},
        {"id": "m-a", "kind": "BONUS_MULTIPLIER", "skus": ["A"], "value": "2", "priority": 1},
        {"id": "m-c", "kind": "BONUS_MULTIPLIER", "skus": ["A"], "value": "2", "priority": 0},
    ]
    line = ReceiptLine.model_validate({"sku": "A", "qty": "1", "priceMinor": 10000})
    sale = Receipt.model_validate(
        {"receiptId": "r", "at": "2026-11-23T10:15:00+03:00", "lines": [line], "explain": True}
    )
    for offers in (tied, tied[::-1], tied[1:] + tied[:1]):
        priced = price(sale, _multiplier_context(offers))
        assert priced.applied_offers == {"m-c"}, [o["id"] for o in offers]
        assert priced.trace is not None
        applied = [
            row["offerId"]
            for row in priced.trace["lines"][0]["offers"]
            if row["outcome"] == "APPLIED"
        ]
        assert applied == ["m-c"]


def test_a_quote_of_a_held_receipt_keeps_its_own_coupon(tmp_path: Path) -> None:
    """The hold's own coupon was ALREADY_USED to a quote of the held receipt (its points and
    offline limit were already left out): the quote priced without the coupon's discount
    what the checkout then committed with it."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))
        held = agent.hold(receipt_from_json(coupon_receipt("r1", "SORRY-7K2Q9")))
        assert verdicts(held) == [("SORRY7K2Q9", "APPLIED", "")]
        quoted = agent.quote(receipt_from_json(coupon_receipt("r1", "SORRY-7K2Q9")))
        assert verdicts(quoted) == verdicts(held)
        assert quoted.discount_minor == held.discount_minor > 0
        other = agent.quote(receipt_from_json(coupon_receipt("r2", "SORRY-7K2Q9")))
        assert verdicts(other) == [("SORRY7K2Q9", "REJECTED", "ALREADY_USED")]
        done = agent.checkout(receipt_from_json(coupon_receipt("r1", "SORRY-7K2Q9")))
        assert done.discount_minor == held.discount_minor
        again = agent.quote(receipt_from_json(coupon_receipt("r3", "SORRY-7K2Q9")))
        assert verdicts(again) == [("SORRY7K2Q9", "REJECTED", "ALREADY_USED")]
    finally:
        agent.close()


def test_a_coupon_multiplier_no_larger_than_the_birthday_one_is_not_used(
    tmp_path: Path,
) -> None:
    """A coupon's BONUS_MULTIPLIER ×2 on a customer's birthday (×5): the line earned ×5,
    and the code came back APPLIED and was used up, for nothing (§13: NOT_APPLICABLE when
    its offer gave the receipt nothing; §5: the largest of the multipliers)."""
    milk = "4601234000017"
    offers = [
        {"id": f"o-x{v}", "kind": "BONUS_MULTIPLIER", "skus": [milk], "value": v,
         "couponRequired": True}
        for v in ("2", "5", "7")
    ]  # fmt: skip
    codes = [{"code": f"X{v}", "offerId": f"o-x{v}"} for v in ("2", "5", "7")]
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=offers, coupons=codes))  # c-a: 25 November
        for code, verdict in (("X2", "NOT_APPLICABLE"), ("X5", "NOT_APPLICABLE"), ("X7", "")):
            body = receipt(f"r-{code}", explain=True, coupons=[code])
            sale = agent.checkout(receipt_from_json(body)).to_json()
            assert [v["reason"] for v in sale["coupons"]] == [verdict], code
            rows = sale["trace"]["lines"][0]["offers"]
            (row,) = [r for r in rows if r["offerId"] == f"o-x{code[1:]}"]
            if verdict:
                assert (row["outcome"], row["beatenBy"]) == ("BEATEN", "birthdayMultiplier")
            else:
                assert row["outcome"] == "APPLIED"
        again = agent.quote(receipt_from_json(receipt("r-again", coupons=["X2", "X7"])))
        assert [v.reason for v in again.coupons] == ["NOT_APPLICABLE", "ALREADY_USED"]
    finally:
        agent.close()


def _program(**changes: Any) -> dict[str, Any]:
    return {**snapshot()["program"], **changes}


def test_confirm_dates_the_points_with_the_program_in_force_at_commit(tmp_path: Path) -> None:
    """§5 step 6: points become spendable "with the delay in force when the receipt was
    committed"; a held receipt is committed at Confirm. The delay and the lifetime were
    those of the Hold's program, whatever a snapshot changed before the Confirm."""
    agent = Agent(tmp_path / "till", "till-1")
    card = "2770000000024"  # c-b: 80 points, base tier (3 %), no birthday in November
    at = datetime.fromisoformat("2026-11-23T10:15:00+03:00")
    try:
        agent.load_snapshot(snapshot(program=_program(activationDelayDays=3)))
        held = agent.hold(receipt_from_json(receipt("r1", card=card)))
        assert held.balance is not None and held.balance.pending_points == 5
        agent.load_snapshot(
            {"version": 2, "baseVersion": 1, "program": _program(pointsLifetimeDays=1)}
        )
        done = agent.confirm("r1").to_json()
        assert done["balance"]["pendingPoints"] == 0
        assert done["balance"]["availablePoints"] == 85
        assert agent.balance(card, at + timedelta(hours=1)).available_points == 85
        assert agent.balance(card, at + timedelta(days=2)).available_points == 80  # expired
    finally:
        agent.close()


def _published(hub: Any, till: Agent, *offers: dict[str, Any]) -> None:
    """The hub's first version (the sample master data, `offers`, the coupons), on the till."""
    import_doc(hub, sample_master_data() | {"offers": list(offers), "coupons": COUPONS})
    hub.publish(NOW, 7 * 86400.0)
    till.load_snapshot(hub.snapshot_doc(1, 0))


def test_a_balance_refresh_publishes_what_tills_did_to_coupons_and_nothing_else(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    """A code's first use left the next snapshot only at an operator's `hub publish`: the
    hub's automatic balance refreshes publish no draft rows, so another till, offline,
    took the used code again for as long as nobody published (no bound at all); a
    till-issued code likewise reached no other till. Now a refresh publishes the coupon
    rows tills' transactions wrote, and still none of the operator's draft."""
    hub = hub_store_factory()  # SQLite and PostgreSQL
    till = Agent(tmp_path / "till-1", "till-1")
    try:
        _published(hub, till, SORRY, NEXT_VISIT)
        sale = till.checkout(receipt_from_json(coupon_receipt("s1", "SORRY-7K2Q9")))
        assert verdicts(sale) == [("SORRY7K2Q9", "APPLIED", "")]
        assert sale.to_json()["printedOffers"] == ["o-next"]  # and a code: TP5TILL11
        import_doc(hub, {"coupons": [{"code": "LATER-1", "offerId": "o-sorry"}]})  # a draft
        hub.ingest("till-1", "", outbox(tmp_path / "till-1"), NOW)
        refresh = hub.publish(NOW.replace(hour=7), 7 * 86400.0, include_draft=False,
                              reason="balances")  # fmt: skip
        delta = hub.snapshot_doc(refresh.version, 1)
        assert delta["removed"] == {"coupons": ["SORRY7K2Q9"]}
        assert [c["code"] for c in delta["coupons"]] == ["TP5TILL11"]
        full = hub.publish(NOW.replace(hour=8), 7 * 86400.0)  # the operator's publish
        later = hub.snapshot_doc(full.version, refresh.version)
        assert [c["code"] for c in later["coupons"]] == ["LATER1"]
        assert "coupons" not in later.get("removed", {})
        again = hub.publish(NOW.replace(hour=9), 7 * 86400.0, include_draft=False,
                            reason="balances")  # fmt: skip
        last = hub.snapshot_doc(again.version, full.version)
        assert (last["coupons"], last.get("removed", {}).get("coupons", [])) == ([], [])
    finally:
        till.close()
        hub.close()


# ---------------------------------------------------------------- HTTP, from a fuzz of it


@pytest.fixture
def client(agent: Agent) -> Iterator[Client]:
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    pos = Client(server.port)
    yield pos
    pos.close()
    server.stop()


SALE = {
    "receiptId": "s1",
    "at": "2026-11-23T10:15:00+03:00",
    "card": "2770000000017",
    "lines": [{"sku": "4601234000017", "qty": "1", "priceMinor": 100}],
}
LONE = "\\ud800"  # as a JSON text writes it: the escape, not the character


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/identify", '{"' + LONE + '": 1}'),  # an unknown key: no answer at all
        ("/v1/balance", '{"card": "2770000000017", "at": "' + LONE + '"}'),
        ("/v1/confirm", '{"receiptId": "x", "' + LONE + '": 1}'),
        ("/v1/cancel", '{"receiptId": "' + LONE + '"}'),  # echoed by the message: 500
        ("/v1/quote", json.dumps(SALE)[:-1] + ', "storeId": "' + LONE + '"}'),
        ("/v1/checkout", json.dumps(SALE).replace('"1"', '"' + LONE + '"')),
        ("/v1/refund", '{"refundId": "r", "receiptId": "s1", "at": "' + LONE + '", "lines": []}'),
    ],
)
def test_a_lone_surrogate_is_a_400_not_a_500_or_no_answer(
    client: Client, path: str, body: str
) -> None:
    """`\\ud800` escaped in a JSON body decodes to a character no UTF-8 text holds: the
    error message that echoed it failed to encode, so the POS got a 500, or, failing again
    inside the error handler, no answer at all until its own timeout."""
    answer = client.post(path, raw=body.encode())
    status, code, message = error_of(answer)
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert "lone UTF-16 surrogate" in message
    assert client.get("/healthz").status == 200


def test_an_escaped_surrogate_pair_is_one_character_and_welcome(client: Client) -> None:
    answer = client.post("/v1/identify", raw=b'{"text": "\\ud83d\\ude00"}')
    assert answer.status == 200 and answer.json()["status"] == "INVALID"


def test_error_messages_are_one_bounded_line_whatever_was_sent(client: Client) -> None:
    """Messages echo ids and field names: a line break in one made a second, false line
    in a POS's log, and a megabyte key a megabyte message."""
    status, _, message = error_of(client.post("/v1/confirm", {"receiptId": "A1\nERROR x\u0000"}))
    assert status == 404 and "A1\\nERROR x\\x00" in message
    status, _, message = error_of(client.post("/v1/quote", {**SALE, "k" * 1_000_000: 1}))
    assert status == 400 and len(message) <= MESSAGE_MAX and "characters]" in message
    assert one_line(message) == message


@pytest.mark.parametrize("blank", [" ", "\t", "\u00a0", "\u3000"])
def test_a_receipt_id_confirm_and_cancel_could_not_name_is_refused(
    client: Client, blank: str
) -> None:
    """A hold under a blank receiptId was HELD (its points reserved for 30 minutes), and
    its Confirm and Cancel were refused: "receiptId must not be empty"."""
    said = "be blank" if blank != "\t" else "contain control characters"  # a tab is both
    for path in ("/v1/hold", "/v1/checkout", "/v1/quote"):
        status, code, message = error_of(client.post(path, {**SALE, "receiptId": blank}))
        assert (status, code) == (400, "INVALID_ARGUMENT"), path
        assert f"receiptId must not {said}" in message
    refund = {"refundId": blank, "receiptId": "s1", "at": SALE["at"], "lines": SALE["lines"]}
    status, _, message = error_of(client.post("/v1/refund", refund))
    assert status == 400 and f"refundId must not {said}" in message


def test_a_balance_refresh_and_an_ingest_of_a_coupon_use_take_turns_on_postgresql(
    tmp_path: Path, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh now deletes the tills' coupon rows from the draft: an ingest that changed
    one after the refresh's snapshot (a till-issued code used for the first time) made the
    refresh fail, "could not serialize access due to concurrent update", balances and
    coupons held back until the next refresh 300 s later. They take turns now."""
    from tillpoint.sync import hub_postgres

    url = pg_cluster.new_database()
    hub = hub_postgres.PostgresHubStore(url, migrate_schema=True)
    other = hub_postgres.PostgresHubStore(url)  # a second hub server, or another thread
    till = Agent(tmp_path / "till-1", "till-1")
    try:
        _published(hub, till, SORRY, NEXT_VISIT)
        till.checkout(receipt_from_json(coupon_receipt("s1", "SORRY-7K2Q9")))  # issues TP5TILL11
        hub.ingest("till-1", "", outbox(tmp_path / "till-1"), NOW)  # draft: TP5TILL11 joins
        used = till.checkout(receipt_from_json(coupon_receipt("s2", "TP5TILL11")))
        assert verdicts(used) == [("TP5TILL11", "APPLIED", "")]
        started, ingested = threading.Event(), threading.Event()
        latest = hub_postgres._latest_version

        def first_read(conn: Any) -> int:  # the refresh has its snapshot: let the ingest run
            found = latest(conn)
            started.set()
            ingested.wait(1.0)  # with the lock, the ingest waits for the refresh instead
            return found

        def ingest() -> None:
            started.wait(10)
            other.ingest("till-1", "", outbox(tmp_path / "till-1"), NOW)  # TP5TILL11 leaves
            ingested.set()

        monkeypatch.setattr(hub_postgres, "_latest_version", first_read)
        pusher = threading.Thread(target=ingest)
        pusher.start()
        refresh = hub.publish(NOW.replace(hour=7), 7 * 86400.0, include_draft=False,
                              reason="balances")  # fmt: skip
        pusher.join(10)
        assert ingested.is_set()
        monkeypatch.setattr(hub_postgres, "_latest_version", latest)
        assert [c["code"] for c in hub.snapshot_doc(refresh.version, 1)["coupons"]] == ["TP5TILL11"]
        after = hub.publish(NOW.replace(hour=8), 7 * 86400.0, include_draft=False,
                            reason="balances")  # fmt: skip
        gone = hub.snapshot_doc(after.version, refresh.version)["removed"]
        assert gone == {"coupons": ["TP5TILL11"]}
    finally:
        till.close()
        other.close()
        hub.close()


def test_a_used_code_imported_again_stays_removed(tmp_path: Path, hub_store_factory: Any) -> None:
    """The CRM's coupon list imported again after a till used one of its codes: the
    import wrote the code's row back into the draft, so neither the refresh nor the
    operator's publish removed it, and the used one-time code stayed live everywhere."""
    hub = hub_store_factory()  # SQLite and PostgreSQL
    till = Agent(tmp_path / "till-1", "till-1")
    try:
        _published(hub, till, SORRY)
        till.checkout(receipt_from_json(coupon_receipt("s1", "SORRY-7K2Q9")))
        hub.ingest("till-1", "", outbox(tmp_path / "till-1"), NOW)
        import_doc(hub, {"coupons": COUPONS})  # the same list again, the used code in it
        refresh = hub.publish(NOW.replace(hour=7), 7 * 86400.0, include_draft=False,
                              reason="balances")  # fmt: skip
        assert hub.snapshot_doc(refresh.version, 1)["removed"] == {"coupons": ["SORRY7K2Q9"]}
        import_doc(hub, {"coupons": COUPONS})
        full = hub.publish(NOW.replace(hour=8), 7 * 86400.0)
        assert [c["code"] for c in hub.snapshot_doc(full.version, 0)["coupons"]] == ["APP555"]
    finally:
        till.close()
        hub.close()


def test_openapi_states_the_limits_the_agent_refuses_beyond(client: Client) -> None:
    """A POS written against openapi.json alone learnt no limit (a 129-character id, a
    101st coupon, an empty SKU were refused with nothing in the description saying so):
    each request field's limits now come from the models that check them."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def field(message: str, name: str) -> dict[str, Any]:
        described: dict[str, Any] = schemas[message]["properties"][name]
        described = {k: v for k, v in described.items() if k != "description"}  # review 34
        return described["anyOf"][0] if "anyOf" in described else described  # null: left out

    assert field("Receipt", "receiptId") == {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "pattern": _NO_CONTROLS,  # no control characters
    }
    assert field("Receipt", "lines")["minItems"] == 1
    assert field("Receipt", "lines")["maxItems"] == 10_000
    assert field("Receipt", "coupons")["maxItems"] == 100
    assert field("ReceiptLine", "sku")["minLength"] == 1
    assert field("ConfirmRequest", "fiscalDocument")["maxLength"] == 64
    assert field("IdentifyRequest", "text") == {"type": "string", "maxLength": 128}
    over = [
        {**SALE, "receiptId": "r" * 129},
        {**SALE, "coupons": [f"C{i}" for i in range(101)]},
        {**SALE, "lines": []},
        {**SALE, "lines": [{**SALE["lines"][0], "sku": ""}]},
    ]
    for body in over:
        assert error_of(client.post("/v1/quote", body))[:2] == (400, "INVALID_ARGUMENT")
    at_the_limit = {**SALE, "receiptId": "r" * 128, "coupons": [f"C{i}" for i in range(100)]}
    assert client.post("/v1/quote", at_the_limit).status == 200
    held = client.post("/v1/hold", {**SALE, "receiptId": "f-1"})
    assert held.status == 200
    status, _, message = error_of(
        client.post("/v1/confirm", {"receiptId": "f-1", "fiscalDocument": "F" * 65})
    )
    assert status == 400 and "64" in message
