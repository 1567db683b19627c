"""Typed results and the one mapper at the edges (agent/results.py, agent/wire.py).

`Agent` returns frozen typed results; the gRPC edge builds its messages from them field by
field (`wire.message_of`), the CLI and HTTP print their JSON document (`json_of`), and
the ledger stores that document. Held together here: for any result, the message equals
json_format's parse of the JSON document, and the stored document reads back the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tillpoint.agent.cli import json_document
from tillpoint.agent.models import Receipt, Refund
from tillpoint.agent.results import (
    Balance,
    Card,
    CheckoutResult,
    CouponVerdict,
    ExpiringBatch,
    RefundResult,
    ResultLine,
    ScanResult,
    json_text,
)
from tillpoint.agent.service import Agent
from tillpoint.agent.wire import (
    checkout_of,
    json_of,
    message_of,
    receipt_from_json,
    refund_from_json,
    refund_of_message,
)
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import receipt, snapshot

_text = st.text(alphabet="abcXYZ0189-_ ЁЖ", max_size=8)
_int = st.integers(-(2**62), 2**62)
_opt_text = st.none() | _text


@st.composite
def _cards(draw: st.DrawFn) -> Card:
    status = draw(st.sampled_from(["FOUND", "UNKNOWN", "INVALID", "BLOCKED"]))
    if status == "FOUND":
        return Card(status, draw(_text), draw(_opt_text), draw(_opt_text))
    return Card(status, reason=draw(st.none() | _text.filter(bool)))


_balances = st.builds(
    Balance,
    _int,
    _int,
    st.lists(st.builds(ExpiringBatch, _int, _text), max_size=3).map(tuple),
)
_lines = st.builds(ResultLine, _text, _int, _int, _opt_text, _int, _int)
_verdicts = st.builds(
    CouponVerdict, _text, st.sampled_from(["APPLIED", "REJECTED"]), st.sampled_from(["", "UNKNOWN"])
)


@st.composite
def _results(draw: st.DrawFn) -> CheckoutResult:
    state = draw(st.sampled_from([None, "HELD", "CONFIRMED", "CANCELLED"]))
    seq = draw(st.integers(1, 2**40)) if state == "CONFIRMED" else None
    return CheckoutResult(
        receipt_id=draw(_text),
        card=draw(_cards()),
        mode=draw(st.sampled_from(["ONLINE", "OFFLINE"])),
        lines=tuple(draw(st.lists(_lines, max_size=4))),
        total_minor=draw(_int),
        discount_minor=draw(_int),
        redeemed_points=draw(_int),
        payable_minor=draw(_int),
        earned_points=draw(_int),
        balance=draw(st.none() | _balances),
        held_out=tuple(draw(st.lists(_text, max_size=2))),
        printed_offers=tuple(draw(st.lists(_text, max_size=2))),
        coupons=tuple(draw(st.lists(_verdicts, max_size=3))),
        display=tuple(draw(st.lists(_text, max_size=2))),
        state=state,
        hold_expires_at="2026-11-23T07:20:00+00:00" if state == "HELD" else None,
        device_id="till-1" if seq else None,
        seq=seq,
    )


_refunds = st.builds(
    RefundResult, _text, _text, _int, _int, st.none() | _balances, st.booleans(), _text, _int
)


def _parsed(doc: dict[str, Any], message: Any) -> Any:
    return json_format.ParseDict(doc, message)


@settings(max_examples=300, deadline=None)
@given(result=_results())
def test_a_checkout_message_is_the_parse_of_its_json(result: CheckoutResult) -> None:
    message = message_of(result)
    assert message == _parsed(json_of(result), pb.CheckoutResult())
    # The stored document reads back as the same result, byte for byte.
    doc = json.dumps(result.to_json(), ensure_ascii=False)
    again = CheckoutResult.from_json(json.loads(doc))
    assert json.dumps(again.to_json(), ensure_ascii=False) == doc
    assert message_of(again) == message  # its typed fields too
    assert replace(again, stored=None).to_json() == result.to_json()
    # The gRPC client's reading of the message maps back to the same message.
    assert message_of(checkout_of(message)) == message


# Any text, and texts that look like the JSON around them (json_text splices the lines in).
_tricky = st.text(max_size=12) | st.sampled_from(
    ['"lines": []', 'x", "lines": [], "', "\\", '"', "\u2028", "\x00", "Анна", "\ud800"]
)


@settings(max_examples=300, deadline=None)
@given(
    result=_results(),
    receipt_id=_tricky,
    name=_tricky,
    rows=st.lists(st.builds(ResultLine, _tricky, _int, _int, st.none() | _tricky, _int, _int)),
    trace=st.none() | st.just({"lines": [], "note": '"lines": []'}),
)
def test_json_text_is_the_cli_document_byte_for_byte(
    result: CheckoutResult,
    receipt_id: str,
    name: str,
    rows: list[ResultLine],
    trace: dict[str, Any] | None,
) -> None:
    """What HTTP answers (`json_text`) is what the CLI prints (`json_document(json_of(...))`)."""
    result = replace(
        result,
        receipt_id=receipt_id,
        card=Card("FOUND", "c1", "base", name),
        lines=tuple(rows),
        trace=trace,
    )
    assert json_text(result) == json_document(json_of(result))
    stored = CheckoutResult.from_json(json.loads(json_document(json_of(result))))
    assert json_text(stored) == json_document(json_of(stored))


@settings(max_examples=200, deadline=None)
@given(result=_refunds, card=_cards(), balance=_balances)
def test_json_text_of_the_other_results_is_the_cli_document(
    result: RefundResult, card: Card, balance: Balance
) -> None:
    for one in (result, card, balance, ScanResult("CARD", card=card)):
        assert json_text(one) == json_document(json_of(one))


@settings(max_examples=200, deadline=None)
@given(result=_refunds)
def test_a_refund_message_is_the_parse_of_its_json(result: RefundResult) -> None:
    message = message_of(result)
    assert message == _parsed(json_of(result), pb.RefundResult())
    again = RefundResult.from_json(result.to_json())
    assert replace(again, stored=None).to_json() == again.to_json() == result.to_json()
    assert refund_of_message(message).to_json() == result.to_json()


@settings(max_examples=200, deadline=None)
@given(card=_cards(), balance=_balances)
def test_cards_and_balances_map_like_json_format(card: Card, balance: Balance) -> None:
    assert message_of(card) == _parsed(json_of(card), pb.CardOutcome())
    assert message_of(balance) == _parsed(json_of(balance), pb.Balance())
    assert Card.from_json(card.to_json()).to_json() == card.to_json()


def test_the_agent_takes_models_and_returns_typed_results(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "till-1")
    try:
        agent.load_snapshot(snapshot())
        card = agent.identify("2770000000017")
        assert isinstance(card, Card) and card.status == "FOUND"
        quote = agent.quote(receipt_from_json(receipt()))
        assert isinstance(quote, CheckoutResult) and quote.state is None and quote.seq is None
        held = agent.hold(receipt_from_json(receipt("r2")))
        assert held.state == "HELD" and held.hold_expires_at
        done = agent.confirm("r2")
        assert (done.state, done.device_id, done.seq) == ("CONFIRMED", "till-1", 1)
        assert agent.checkout(receipt_from_json(receipt("r2"))) == done  # the stored result
        balance = agent.balance("2770000000017")
        assert isinstance(balance, Balance)
        assert done.balance is not None
        assert balance.available_points == done.balance.available_points
        refund = agent.refund(
            refund_from_json(
                {
                    "refundId": "f1",
                    "receiptId": "r2",
                    "at": "2026-11-23T11:00:00+03:00",
                    "lines": [{"sku": done.lines[0].sku, "qty": "1"}],
                }
            )
        )
        assert isinstance(refund, RefundResult) and refund.seq == 2
        scanned = agent.scan("2770000000017")
        assert isinstance(scanned, ScanResult) and scanned.card == card
        # A result is read by attribute: not a mapping, and never equal to its document.
        assert not isinstance(quote, Mapping) and quote != quote.to_json()
        assert quote == CheckoutResult.from_json(quote.to_json())  # equal by its document
    finally:
        agent.close()


def test_the_edges_parse_requests_with_one_line_refusals() -> None:
    from tillpoint.agent.errors import InputError

    assert isinstance(receipt_from_json(receipt()), Receipt)
    with pytest.raises(InputError, match=r"^receipt: "):
        receipt_from_json({"receiptId": "r1"})
    with pytest.raises(InputError, match=r"^refund: expected a JSON object"):
        refund_from_json([])
    assert Refund  # the model the refund edges parse into


def test_the_devices_read_the_typed_result_without_its_json(tmp_path: Path) -> None:
    """printer.service.Devices (the agent's DeviceNotifier) read the display lines and the
    printed offers by attribute: no JSON document is built per sale for them."""
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
    from tillpoint.printer.service import Devices

    devices = Devices(tmp_path / "ledger.db", PrinterConfig(), DisplayConfig(), ScannerConfig())
    shown: list[list[str]] = []
    devices.display.show = shown.append  # type: ignore[method-assign]
    result = CheckoutResult(
        "r1", Card("UNKNOWN"), "OFFLINE", (), 0, 0, 0, 0, 0, None, (), ("o-1",),
        display=("Итого: 0,00",),
    )  # fmt: skip
    called: list[str] = []

    class Counting(CheckoutResult):
        __slots__ = ()

        def to_json(self) -> dict[str, Any]:
            called.append("to_json")
            return CheckoutResult.to_json(self)

    counted = Counting(**{f: getattr(result, f) for f in result.__dataclass_fields__})
    devices.after_checkout(counted)
    assert shown == [["Итого: 0,00"]] and devices.worker._wake.is_set()
    assert called == []
    devices.stop()
