"""What a commit writes (issue 15): its request and result texts once, in its receipt's or
refund's row (the outbox row refers to them and the uploader puts them back); no life
row for a checkout; the coupon job checked by the print worker; few WAL pages."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.errors import Conflict, Refused, StorageError
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data
from tillpoint.sync.pull import Puller
from tillpoint.sync.push import Pusher

from .conftest import receipt as receipt_json
from .conftest import snapshot

CARD = "2770000000017"


def _raw(agent: Agent) -> list[tuple[int, str, str | None]]:
    return agent._ledger.execute("SELECT seq, payload, texts FROM outbox ORDER BY seq").fetchall()


def test_a_checkout_and_a_refund_keep_their_texts_once(agent: Agent) -> None:
    done = agent.checkout(receipt_from_json(receipt_json("r1", redeemPoints=40)))
    back = agent.refund(
        refund_from_json(
            {
                "refundId": "rf1",
                "receiptId": "r1",
                "at": "2026-11-24T12:00:00+03:00",
                "lines": [{"sku": "4601234000017", "qty": "1"}],
            }
        )
    )
    raw = _raw(agent)
    assert [(seq, texts) for seq, _, texts in raw] == [(1, "receipt"), (2, "refund")]
    for _, payload, _ in raw:  # not a second copy in the outbox
        assert "requestJson" not in json.loads(payload)
        assert "resultJson" not in json.loads(payload)
    sale = agent._ledger.execute("SELECT request, result FROM receipts").fetchone()
    refund = agent._ledger.execute("SELECT request, result FROM refunds").fetchone()
    # what the uploader sends: the whole Transaction, the texts put back from their rows
    sent = [json.loads(r.payload) for r in ledger.outbox_batch(agent._ledger, "till-1", 10)]
    assert [(p["seq"], p["kind"]) for p in sent] == [(1, "CHECKOUT"), (2, "REFUND")]
    assert (sent[0]["requestJson"], sent[0]["resultJson"]) == sale
    parsed = receipt_from_json(receipt_json("r1", redeemPoints=40))
    assert json.loads(sale[0]) == parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert (sent[1]["requestJson"], sent[1]["resultJson"]) == refund
    assert json.loads(sent[0]["resultJson"])["seq"] == done.seq == 1
    assert json.loads(sent[1]["resultJson"])["refundId"] == back.refund_id
    assert sent[0]["pointsDeltaAvailable"] == -40 + done.earned_points
    # each text once in the ledger file's live rows: the receipt's result text is not
    # also in the outbox, escaped into a payload
    assert json.dumps(sale[1], ensure_ascii=False)[1:-1] not in raw[0][1]
    # the idempotent replay reads the one copy
    assert agent.checkout(receipt_from_json(receipt_json("r1", redeemPoints=40))) == done


def test_the_texts_are_sent_exactly_as_a_whole_payload_was(tmp_path: Path, agent: Agent) -> None:
    """`outbox_batch` writes what `json.dumps` of the whole payload wrote before (the two
    keys last), non-ASCII text included."""
    agent.checkout(receipt_from_json(receipt_json("r-ü")))
    (row,) = ledger.outbox_batch(agent._ledger, "till-1", 10)
    whole = json.loads(row.payload)
    assert row.payload == json.dumps(whole, ensure_ascii=False)
    assert list(whole)[-2:] == ["requestJson", "resultJson"]
    assert json.loads(whole["requestJson"])["receiptId"] == "r-ü"


def test_an_outbox_row_whose_receipt_row_is_gone_is_an_error_not_a_loss(agent: Agent) -> None:
    agent.checkout(receipt_from_json(receipt_json("r1")))
    agent._ledger.execute("DELETE FROM receipts")
    with pytest.raises(StorageError, match="receipt row is missing"):
        ledger.outbox_batch(agent._ledger, "till-1", 10)


def test_a_push_sends_the_texts_and_a_set_aside_row_keeps_them(tmp_path: Path) -> None:
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        # the hub already holds till-1's receipt r-0 with another request (an old disk's).
        # A seq the hub holds with another transaction is numbered again since review 32
        # (tests/test_review32_hub32.py); the receipt id still decides
        now = datetime.now(UTC)
        old = '{"receiptId": "r-0"}'
        other = TxIn("till-1", 5, "CHECKOUT", now.isoformat(), "c-2", "", old, "{}", 1, 0, "")
        hub.store.ingest("till-1", "", [other], now)
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        for i in range(3):
            till.agent.checkout(receipt_from_json(receipt(f"r-{i}", CARD)))
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=2, batch_size=2)
        assert pusher.drain() == 3
        stored = hub.store.transactions("till-1")
        assert [(t.seq, t.kind, t.receipt_id) for t in stored] == [
            (2, "CHECKOUT", "r-1"),
            (3, "CHECKOUT", "r-2"),
            (5, "CHECKOUT", "r-0"),
        ]
        pusher.close()
    finally:
        till.stop()
        hub.stop()
    conn = sqlite3.connect(tmp_path / "till" / "ledger.db")
    try:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM receipts").fetchone()[0] == 3  # kept
        # the set-aside transaction keeps its whole payload, texts included
        (payload,) = conn.execute("SELECT payload FROM sync_set_aside WHERE seq = 1").fetchone()
        request = conn.execute("SELECT request FROM receipts WHERE seq = 1").fetchone()[0]
        assert json.loads(payload)["requestJson"] == request
    finally:
        conn.close()


SOLD_AT = datetime(2026, 11, 23, 7, 15, tzinfo=UTC)


def _sell_and_print(tmp_path: Path, offer: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Sell r1 on a till whose snapshot has `offer`, then let a print worker take its job
    to a virtual printer (the raw port-9100 protocol): (the result, the job, what came out
    of the printer)."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import PrintWorker
    from tillpoint.printer.virtual import VirtualPrinter

    till = Agent(tmp_path / "data", "till-1", clock=lambda: SOLD_AT)
    try:
        till.load_snapshot(snapshot(offers=[offer]))
        done = till.checkout(receipt_from_json(receipt_json("r1")))
        (payload,) = till._ledger.execute("SELECT payload FROM print_jobs").fetchone()
        assert json.loads(payload)["offers"][0]["id"] == offer["id"]
    finally:
        till.close()
    with VirtualPrinter() as printer:
        config = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
        worker = PrintWorker(tmp_path / "data" / "ledger.db", config, clock=lambda: SOLD_AT)
        try:
            worker.run_once()
            job = worker.job("r1")
            printed = printer.wait_for(1) if job is not None and job["state"] == "DONE" else []
            return done, job, printed or printer.complete
        finally:
            worker.close()


def test_an_offer_text_too_long_for_a_coupon_prints_cut(tmp_path: Path) -> None:
    """The print job's payload is made before the write transaction and checked once, by
    the print worker when it takes the job. A text too long for a coupon (1,001
    characters) failed the job, and every coupon of the receipt with it; it is cut to the
    1,000 a payload holds and prints."""
    from .test_receipt_life import OFFER

    done, job, printed = _sell_and_print(tmp_path, {**OFFER, "printText": "х" * 1001})
    assert done.state == "CONFIRMED" and done.printed_offers == ("o-print",)
    assert job is not None and job["state"] == "DONE" and printed


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({}, "Скидка 20% на товары акции"),
        ({"kind": "AMOUNT_OFF", "value": "5000"}, "Скидка 50,00 руб. за единицу товара акции"),
        ({"kind": "BONUS_MULTIPLIER", "value": "1.5"}, "Бонусы x1,5 на товары акции"),
    ],
)
def test_a_printable_offer_without_its_text_prints_what_it_gives(
    tmp_path: Path, changes: dict[str, str], words: str
) -> None:
    """A snapshot's printable offer with no printText prints its kind's words (the
    printer's real TCP listener and the ESC/POS decoder), not a coupon with no text."""
    from .test_receipt_life import OFFER

    offer = {k: v for k, v in OFFER.items() if k != "printText"} | changes
    done, job, printed = _sell_and_print(tmp_path, offer)
    assert done.printed_offers == ("o-print",)
    assert job is not None and job["state"] == "DONE"
    [doc] = printed
    assert words in doc.text, doc.text


def test_a_checkout_writes_no_life_row_and_answers_retries_from_its_receipt(
    agent: Agent,
) -> None:
    done = agent.checkout(receipt_from_json(receipt_json("r1")))
    assert agent._ledger.execute("SELECT count(*) FROM receipt_life").fetchone()[0] == 0
    assert agent.checkout(receipt_from_json(receipt_json("r1"))) == done
    assert agent.hold(receipt_from_json(receipt_json("r1"))) == done
    assert agent.confirm("r1") == done
    with pytest.raises(Refused, match="use a refund"):
        agent.cancel("r1")
    with pytest.raises(Conflict):
        agent.checkout(receipt_from_json(receipt_json("r1", redeemPoints=10)))
    assert agent._ledger.execute("SELECT count(*) FROM journal").fetchone()[0] == 1


def test_the_numbering_is_the_journal_and_a_reset_keeps_it(agent: Agent) -> None:
    """A commit writes no counter row: the next seq is above the journal's newest (and
    above what a reset kept in the device row)."""
    seqs = [agent.checkout(receipt_from_json(receipt_json(f"r{i}"))).seq for i in range(3)]
    assert seqs == [1, 2, 3]
    kept = "SELECT value FROM device WHERE key = 'last_seq:till-1'"
    assert agent._ledger.execute(kept).fetchone() is None
    assert ledger.last_seq(agent._ledger, "till-1") == 3
    agent.reset(force=True)  # the cache goes too
    assert agent._ledger.execute(kept).fetchone() == ("3",)
    agent.load_snapshot(snapshot())
    assert agent.checkout(receipt_from_json(receipt_json("r9"))).seq == 4


def test_the_texts_a_checkout_stores_are_the_documents_it_made() -> None:
    """The native encoders used for a checkout's texts write the same documents as the
    per-object dumps they replace (bench offers and results: random mixed receipts)."""
    import random

    from tillpoint.agent.service import _json_text, _offers_json, _with_seq

    from bench.generate import Scale, write_full
    from bench.run import mixed_receipt

    scale = Scale.named("tiny")
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        till = Agent(Path(tmp) / "data", "till-1")
        try:
            till.load_snapshot_file(write_full(Path(tmp) / "full.jsonl", scale))
            seen = 0
            for i in range(60):
                receipt = receipt_from_json(mixed_receipt(f"m-{i}", rng, scale, 20))
                with till._read(alone=False) as (view, conn):
                    done = till._price(receipt, view, commit=True, reads=conn)
                dumps = [
                    o.model_dump(mode="json", by_alias=True, exclude_none=True) for o in done.offers
                ]
                assert _offers_json(done.offers) == dumps
                doc = done.result.to_json()
                assert json.loads(_json_text(doc)) == doc
                assert json.loads(_with_seq(_json_text(doc), 7)) == {**doc, "seq": 7}
                seen += len(dumps)
            assert seen > 0
        finally:
            till.close()


def test_a_checkout_answers_the_typed_result_its_json_reads_back_as(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CONFIRMED result a checkout returns is made from its pricing's typed result,
    not read back from the stored JSON: every field is what `from_json` would give."""
    import dataclasses
    import random

    from tillpoint.agent import service
    from tillpoint.agent.results import CheckoutResult

    from bench.generate import Scale, write_full
    from bench.run import mixed_receipt

    made = []
    real = service._confirmed_of
    monkeypatch.setattr(service, "_confirmed_of", lambda p, r: made.append(1) or real(p, r))
    scale = Scale.named("tiny")
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        till = Agent(Path(tmp) / "data", "till-1")
        try:
            till.load_snapshot_file(write_full(Path(tmp) / "full.jsonl", scale))
            for i in range(60):
                data = mixed_receipt(f"m-{i}", rng, scale, rng.choice([5, 20]))
                if i % 4 == 0:
                    data["redeemPoints"] = 50
                if i % 5 == 0:
                    data["explain"] = True  # a trace in the result
                done = till.checkout(receipt_from_json(data))
                back = CheckoutResult.from_json(done.to_json())
                for f in dataclasses.fields(CheckoutResult):
                    assert getattr(done, f.name) == getattr(back, f.name), (i, f.name)
                assert till.checkout(receipt_from_json(data)) == done  # the replay
        finally:
            till.close()
    assert len(made) == 60


def test_a_receipts_lines_are_in_its_row_until_a_refund_returns_some(agent: Agent) -> None:
    lines = [
        {"sku": "4601234000017", "qty": "2", "priceMinor": 8990},
        {"sku": "4601234000024", "qty": "1.250", "priceMinor": 5000},
    ]
    agent.checkout(receipt_from_json(receipt_json("r1", lines=lines)))
    conn = agent._ledger
    assert conn.execute("SELECT count(*) FROM receipt_lines").fetchone()[0] == 0
    (text,) = conn.execute("SELECT lines FROM receipts WHERE receipt_id = 'r1'").fetchone()
    assert [(sku, qty) for sku, qty, _, _ in json.loads(text)] == [
        ("4601234000017", "2"),
        ("4601234000024", "1.250"),
    ]
    sold = ledger.receipt_lines(conn, "r1")
    assert [(x.idx, x.sku, x.qty, x.returned_qty) for x in sold] == [
        (0, "4601234000017", "2", "0"),
        (1, "4601234000024", "1.250", "0"),
    ]

    def refund(refund_id: str, qty: str) -> None:
        agent.refund(
            refund_from_json(
                {
                    "refundId": refund_id,
                    "receiptId": "r1",
                    "at": "2026-11-24T12:00:00+03:00",
                    "lines": [{"sku": "4601234000017", "qty": qty}],
                }
            )
        )

    refund("rf1", "1")  # the first refund keeps the returned quantities in rows
    after = ledger.receipt_lines(conn, "r1")
    assert [(x.sku, x.qty, x.returned_qty) for x in after] == [
        ("4601234000017", "2", "1"),
        ("4601234000024", "1.250", "0"),
    ]
    assert [(x.redeemed_points, x.earned_points) for x in after] == [
        (x.redeemed_points, x.earned_points) for x in sold
    ]
    refund("rf2", "1")  # and the next one goes on from them
    assert [x.returned_qty for x in ledger.receipt_lines(conn, "r1")] == ["2", "0"]
    with pytest.raises(Refused):
        refund("rf3", "1")  # nothing of that line is left to return
