"""Review 48 (perf48): a customer's personal offers, read back from the cache, are parsed
by `models.stored_offers` — `Offer`'s field types without its Python validators — and
must be the very `Offer`s the full parse makes (docs/PERFORMANCE.md, "A known card's
quote, cheaper"). Rows the types refuse (an empty value a snapshot may write for a field
left out, a row an older release stored) go to the full parse, which reads them or says
what is wrong. Real cache files: the examples' snapshot applied by a real agent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError
from tillpoint.agent.db import cache_file
from tillpoint.agent.models import STORED, Offer, stored_offers
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.agent.wire import json_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FULL = TypeAdapter(list[Offer])


def _same(text: str) -> list[Offer]:
    """`stored_offers(text)`, checked to be what the full parse makes: equal offers of the
    class `Offer`, the same fields in the same order with the same values (their repr:
    a Decimal's exponent, a time's offset), the same fields set, the same JSON."""
    fast = stored_offers(text)
    full = FULL.validate_json(text, context=STORED)
    assert [type(o) for o in fast] == [Offer] * len(full)
    assert fast == full
    for a, b in zip(fast, full, strict=True):
        assert repr(vars(a)) == repr(vars(b))
        assert a.model_fields_set == b.model_fields_set
        assert a.model_dump_json(by_alias=True) == b.model_dump_json(by_alias=True)
        assert (a.valid_span, a.gated, a.has_window) == (b.valid_span, b.gated, b.has_window)
    return fast


@pytest.fixture(scope="module")
def example_agent(tmp_path_factory: pytest.TempPathFactory) -> Agent:
    agent = Agent(tmp_path_factory.mktemp("perf48") / "data", "till-48")
    agent.load_snapshot(json.loads((EXAMPLES / "snapshot.json").read_text()))
    return agent


def test_every_stored_offer_of_the_examples_parses_as_the_full_parse(
    example_agent: Agent,
) -> None:
    conn = sqlite3.connect(cache_file(example_agent.data_dir))
    try:
        docs = [doc for (doc,) in conn.execute("SELECT doc FROM offers ORDER BY id")]
    finally:
        conn.close()
    assert len(docs) >= 2
    assert len(_same(f"[{','.join(docs)}]")) == len(docs)
    for doc in docs:
        _same(f"[{doc}]")


def _scenario_offers(node: object) -> list[dict[str, object]]:
    if isinstance(node, dict):
        found = [o for o in node.get("offers") or [] if isinstance(o, dict)]
        return found + [o for k, v in node.items() if k != "offers" for o in _scenario_offers(v)]
    if isinstance(node, list):
        return [o for v in node for o in _scenario_offers(v)]
    return []


def test_every_offer_of_the_scenarios_parses_as_the_full_parse() -> None:
    """The scenarios' offers (deals, windows, tiers, coupons, favourite weekdays), each as
    a row the full parse reads (those it refuses are the refusal tests' own)."""
    seen = 0
    for path in sorted((Path(__file__).parent / "scenarios").glob("*.json")):
        for row in _scenario_offers(json.loads(path.read_text())):
            text = json.dumps([row], ensure_ascii=False)
            try:
                FULL.validate_json(text, context=STORED)
            except ValidationError:
                continue
            _same(text)
            seen += 1
    assert seen >= 50


BASE = {"id": "o1", "customerId": "c1", "kind": "PERCENT_OFF", "skus": ["s1"], "value": "10"}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"validFrom": "", "validTo": []},  # proto3's unset spellings: the full parse's defaults
        {"minQty": ""},
        {"customerId": ""},
        {"kind": "MULTIBUY", "value": "", "buyQty": "2", "freeQty": "1"},
        {"kind": "MULTIBUY", "buyQty": "3", "freeQty": "1", "value": "0", "minQty": []},
        {"hours": [{"from": "22:00", "to": "02:00"}], "weekdays": [5, 6]},
        {"kind": "QUANTITY_PRICE", "tiers": [{"minQty": "2", "unitPriceMinor": 90}], "value": ""},
        {"validFrom": "2026-11-01T00:00:00+03:00", "validTo": "2026-11-30T23:59:59.5Z"},
        {"value": "10.50", "minQty": "1.250", "minTotalMinor": "1000", "priority": "-3"},
    ],
)
def test_an_offer_row_of_any_spelling_is_the_full_parse_s(change: dict[str, object]) -> None:
    row = {**BASE, **change}
    _same(json.dumps([row, BASE], ensure_ascii=False))


def test_a_row_the_full_parse_refuses_is_refused_with_its_words() -> None:
    text = json.dumps([{**BASE, "kind": "NO_SUCH_KIND"}])
    with pytest.raises(ValidationError) as fast:
        stored_offers(text)
    with pytest.raises(ValidationError) as full:
        FULL.validate_json(text, context=STORED)
    assert str(fast.value) == str(full.value)


def test_a_known_card_prices_its_personal_offers_as_before(example_agent: Agent) -> None:
    """The examples' card receipt, quoted by an agent whose personal offers are parsed the
    new way, answers what a fresh agent's own receipt says it gets (an offer applied)."""
    body = json.loads((EXAMPLES / "receipt-card.json").read_text())
    answer = json_of(example_agent.quote(receipt_from_json(body)))
    assert answer["receiptId"] == body["receiptId"]
    fresh = Agent(example_agent.data_dir, "till-48")
    try:
        assert json_of(fresh.quote(receipt_from_json(body))) == answer
    finally:
        fresh.close()
