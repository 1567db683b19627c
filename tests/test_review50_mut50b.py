"""Review 50 (mut50b): mutation testing of the coupons' verdicts (§13), the request limits'
line reading (§3, §10) and the hub's mirror of the rules (§6, §11, §13, §16).

Each test pins a rule of docs/CONTRACT.md that a surviving mutant broke without a test
noticing; the expected figures are worked by hand from the contract (docs/DECISIONS.md,
"Review 50 (mut50b)"). Real parts: real SQLite files, the reference hub on 127.0.0.1,
real processes where the till's path uses them."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import limits, snapshot_stream
from tillpoint.agent.errors import InputError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, Till, import_doc, sample_master_data
from tillpoint.sync.pull import cache_version

from .conftest import answered, enrolled_till, snapshot
from .test_coupons import COUPONS, MILK, SORRY, receipt, snap, verdicts
from .test_deals_snapshots import jsonl

KEFIR = "4601234000024"
# A second coupon-only offer, on the kefir: 5.00 off a unit with the code KEF-1
KEF_OFFER = {
    "id": "o-kefir",
    "kind": "AMOUNT_OFF",
    "skus": [KEFIR],
    "value": "500",
    "couponRequired": True,
}
KEF_COUPON = {"code": "KEF-1", "offerId": "o-kefir"}


# ---------------------------------------------------------------- §13: a coupon's window


def test_a_coupon_holds_through_the_last_microsecond_of_its_valid_to_second(
    tmp_path: Path,
) -> None:
    """§13's coupon dates read by §2's rule: a `validTo` written in whole seconds
    (`2026-12-20T23:59:59+03:00`) is still in force at 23:59:59.999999 and over at the next
    second's 00:00:00.000; a `validFrom` is the moment it says. Anna's SORRY-7K2Q9 (valid
    20.11 00:00 to 20.12 23:59:59, Moscow) on 2 milks of 89.90: 20.00 off each, 40.00."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))

        def quoted(at: str) -> tuple[list[tuple[str, str, str]], int]:
            result = agent.quote(receipt_from_json(receipt("q", "SORRY7K2Q9", at=at)))
            return verdicts(result), result.lines[0].discount_minor

        applied = ([("SORRY7K2Q9", "APPLIED", "")], 4000)
        assert quoted("2026-12-20T23:59:59.999999+03:00") == applied
        assert quoted("2026-12-20T23:59:59.500+03:00") == applied
        assert quoted("2026-12-21T00:00:00+03:00") == (
            [("SORRY7K2Q9", "REJECTED", "EXPIRED")],
            0,
        )
        assert quoted("2026-11-20T00:00:00+03:00") == applied
        assert quoted("2026-11-19T23:59:59.999999+03:00") == (
            [("SORRY7K2Q9", "REJECTED", "NOT_YET_VALID")],
            0,
        )
    finally:
        agent.close()


# ---------------------------------------------------------------- §13: online, the hub's "used"


@pytest.fixture()
def coupon_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    data = sample_master_data() | {
        "offers": [SORRY, KEF_OFFER],
        "coupons": [*COUPONS, KEF_COUPON],
    }
    hub = LoopbackHub(tmp_path / "hub", data=data)
    yield hub
    hub.stop()


def _till(hub: LoopbackHub, tmp_path: Path, name: str) -> Till:
    return enrolled_till(hub, tmp_path / name, name, timings=answered())


def test_the_hubs_used_code_turns_only_that_code_and_leaves_a_duplicate_and_another_code(
    coupon_hub: LoopbackHub, tmp_path: Path
) -> None:
    """§13: online, "a code the hub says is used is `ALREADY_USED`" — that code only. Till b
    checks out APP555 first (the hub holds it for b's receipt). Till a then scans APP555,
    APP-555 again and KEF-1 on milk 2 × 89.90 and kefir 60.00: the hub says APP555 is used,
    so its first scan is ALREADY_USED, its second stays DUPLICATE (every later scan of a
    code is, §13's decisions), and KEF-1, which the hub held for a, is APPLIED: the milk
    at 179.80 with no discount, the kefir 60.00 − 5.00, 234.80 to pay."""
    a, b = _till(coupon_hub, tmp_path, "a"), _till(coupon_hub, tmp_path, "b")
    try:
        first = b.agent.checkout(receipt_from_json(receipt("b-1", "APP555")))
        assert (first.mode, verdicts(first)) == ("ONLINE", [("APP555", "APPLIED", "")])
        lines = [
            {"sku": MILK, "qty": "2", "priceMinor": 8990},
            {"sku": KEFIR, "qty": "1", "priceMinor": 6000},
        ]
        sale = a.agent.checkout(
            receipt_from_json(receipt("a-1", "APP555", "app-555", "KEF-1", lines=lines))
        )
        assert sale.mode == "ONLINE"
        assert verdicts(sale) == [
            ("APP555", "REJECTED", "ALREADY_USED"),
            ("APP555", "REJECTED", "DUPLICATE"),
            ("KEF1", "APPLIED", ""),
        ]
        assert [line.discount_minor for line in sale.lines] == [0, 500]
        assert sale.payable_minor == 23480
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------- §3: a snapshot's lines

EDGE = 1000  # the line bound made 1,000 bytes in this process (as review 42's tests do)


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(limits, "LINE_MAX_BYTES", EDGE)
    return EDGE


def _lines(raw: bytes, first: bytes | None, text: bool) -> list[Any]:
    """`stream_lines` of `raw`, its first line (or part of it) `first` read before, from a
    binary stream or a text one (the CLI's standard input either way)."""
    if text:
        head: Any = None if first is None else first.decode()
        return list(snapshot_stream.stream_lines(io.StringIO(raw.decode()), head))
    return list(snapshot_stream.stream_lines(io.BytesIO(raw), first))


@pytest.mark.parametrize("text", [False, True])
def test_a_first_line_read_whole_before_is_one_line_and_the_next_follows(
    bound: int, text: bool
) -> None:
    """§3: a JSON Lines snapshot is one row a line. The CLI reads a stream's first line
    before it knows it is JSON Lines (`snapshot load -`): handed over whole, with its
    newline, it is line 1 as it is, and the rest of the stream is read from line 2 on."""
    got = _lines(b'{"section": "products"}\n', b'{"format": "x"}\n', text)
    want = [b'{"format": "x"}\n', b'{"section": "products"}\n']
    assert got == ([w.decode() for w in want] if text else want)


@pytest.mark.parametrize("text", [False, True])
def test_a_first_line_read_to_the_bound_is_finished_and_judged_whole(
    bound: int, text: bool
) -> None:
    """§3's bound (64 MiB, here 1,000 bytes): a line of exactly the bound and its newline
    is read; one byte more is refused naming line 1 — also when the first `EDGE` bytes of
    it were read before (the CLI's head): the rest of the line is read, not taken as line
    2. A last line of exactly the bound with no newline after it is read too."""
    ok = b"x" * EDGE + b"\n"
    assert _lines(ok[EDGE:] + b"{}\n", ok[:EDGE], text) == (
        [ok.decode(), "{}\n"] if text else [ok, b"{}\n"]
    )
    long = b"x" * (EDGE + 1) + b"\n"
    with pytest.raises(InputError, match=r"^snapshot line 1: longer than 0 MiB "):
        _lines(long[EDGE:], long[:EDGE], text)
    last = b"x" * EDGE  # no newline: the file's end
    for head in (10, EDGE - 1, EDGE):
        assert _lines(last[head:], last[:head], text) == [last.decode() if text else last]


def test_snapshot_load_from_standard_input_reads_its_header_line_once(tmp_path: Path) -> None:
    """§3, §10: `tillpoint snapshot load -` of a JSON Lines snapshot on standard input (a
    real process, a pipe): the header line the CLI reads first is the header, and every row
    after it loads (the cache at version 1)."""
    path = jsonl(snapshot(), tmp_path / "v1.jsonl")
    exe = str(Path(sys.executable).with_name("tillpoint"))
    data = str(tmp_path / "till")
    env = {"TILLPOINT_DEVICE_ID": "till-1", "PATH": "/usr/bin:/bin"}
    with open(path, "rb") as stdin:
        done = subprocess.run(
            [exe, "--data-dir", data, "snapshot", "load", "-"],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert done.returncode == 0, done.stderr
    assert cache_version(Path(data)) == 1


# ---------------------------------------------------------------- §9: a push replayed


def _two_sales(tmp_path: Path) -> list[Any]:
    """Two sales of a till (Anna's milk, then her kefir), as its outbox sends them."""
    from .test_coupons import outbox

    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap())
        agent.checkout(receipt_from_json(receipt("r-1")))
        lines = [{"sku": KEFIR, "qty": "1", "priceMinor": 6000}]
        agent.checkout(receipt_from_json(receipt("r-2", lines=lines)))
    finally:
        agent.close()
    return outbox(tmp_path / "till")


def test_a_pushed_batch_seen_before_is_answered_the_same_for_30_days(tmp_path: Path) -> None:
    """§9's decision (docs/PROTOCOL.md): the hub answers a `batch_id` it has seen with the
    same content with the stored answer (the till's retry after a lost answer hears
    `STORED`, not `DUPLICATE`), and keeps its answers 30 days; a `batch_id` it has seen with
    other content is worked afresh. A real SQLite hub store, the till's own transactions."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    one, two = _two_sales(tmp_path)
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

        def outcomes(batch: str, txs: list[Any], now: datetime) -> tuple[Any, ...]:
            got = store.ingest("till-1", batch, txs, now)
            return got.acked_through, [(r.seq, r.outcome) for r in got.results], got.replayed

        assert outcomes("b-1", [one], t0) == (1, [(1, "STORED")], False)
        # the answer lost, the same batch again a day and 29 days later: the stored answer
        assert outcomes("b-1", [one], t0 + timedelta(days=1)) == (1, [(1, "STORED")], True)
        assert outcomes("b-1", [one], t0 + timedelta(days=29)) == (1, [(1, "STORED")], True)
        # the same id with other content (the batch's rows are what it is named by): afresh
        assert outcomes("b-1", [one, two], t0 + timedelta(days=29)) == (
            2,
            [(1, "DUPLICATE"), (2, "STORED")],
            False,
        )
        # another push 31 days on prunes the answers older than 30 days: b-1's is gone, and
        # b-1 sent again then is worked as any batch (its rows are stored: DUPLICATE)
        assert outcomes("b-2", [two], t0 + timedelta(days=60)) == (2, [(2, "DUPLICATE")], False)
        assert outcomes("b-1", [one, two], t0 + timedelta(days=60)) == (
            2,
            [(1, "DUPLICATE"), (2, "DUPLICATE")],
            False,
        )
    finally:
        store.close()


def test_a_replayed_answer_drops_what_was_held_since_under_a_seq_it_set_aside(
    tmp_path: Path,
) -> None:
    """§9, §11 (docs/PROTOCOL.md: a replayed push is answered the same, and does the same):
    a push whose transaction 1 the hub sets aside (REJECTED: a kind it does not know) loses
    its answer; the till, still holding seq 1 as unsent, asks for a redemption and lists it
    as an unsynced spend of 100, which the hub holds (`seq:1`) for the other tills: Anna's
    1,200 are 1,100 for till-2. The till sends the batch again: the stored answer, and the
    hold of the seq it set aside goes, as at the first answer: 1,200 for till-2 again."""
    from dataclasses import replace

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.hub_store import Unsynced

    one, _ = _two_sales(tmp_path)
    bad = replace(one, kind="99")
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        store.publish(t0 - timedelta(hours=1), 7 * 86400.0)  # Anna's 1,200 points
        first = store.ingest("till-1", "b-1", [bad], t0)
        assert [(r.seq, r.outcome) for r in first.results] == [(1, "REJECTED")]
        spend = Unsynced(seq=1, receipt_id="r-1", points=-100)
        store.authorise("till-1", "r-9", "c-1", 0, t0, [spend], t0, 60.0)

        def for_till_2(now: datetime) -> int:
            return store.authorise("till-2", "r-x", "c-1", 0, now, [], now, 60.0).live_balance

        assert for_till_2(t0 + timedelta(seconds=1)) == 1100
        again = store.ingest("till-1", "b-1", [bad], t0 + timedelta(seconds=2))
        assert again.replayed and [(r.seq, r.outcome) for r in again.results] == [(1, "REJECTED")]
        assert for_till_2(t0 + timedelta(seconds=3)) == 1200
    finally:
        store.close()


def test_a_snapshot_files_last_line_of_one_byte_is_read_and_refused(tmp_path: Path) -> None:
    """§3: every line of a JSON Lines snapshot after the header is a section line or a row,
    each a JSON object. A file whose last line is one byte (`7`, no newline after it: a
    file cut short, a stray byte) is refused naming that line, the cache unchanged — also
    right after the header, where the build reads the lines itself (to the payload's last
    byte) before its workers take the sections."""
    whole = jsonl(snapshot(), tmp_path / "v1.jsonl").read_bytes()
    header = whole[: whole.index(b"\n") + 1]
    for name, data in (("whole", whole), ("header", header)):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(data + b"7")
        lines = data.count(b"\n") + 1
        agent = Agent(tmp_path / name, "till-1")
        try:
            with pytest.raises(InputError, match=f"^snapshot line {lines}: "):
                agent.load_snapshot_file(path)
        finally:
            agent.close()
        assert cache_version(tmp_path / name) == 0  # nothing loaded


# ---------------------------------------------------------------- §9, §11: holds at the hub


def _published_store(tmp_path: Path) -> Any:
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    store = SqliteHubStore(tmp_path / "hub.db")
    import_doc(store, sample_master_data())
    store.publish(datetime(2026, 11, 23, 7, 0, tzinfo=UTC), 7 * 86400.0)
    return store


def test_a_grant_of_0_points_places_no_hold(tmp_path: Path) -> None:
    """§11, §13's decisions: `hub status`'s `holdsOutstanding` counts the redemption holds
    tills placed online and not yet settled or expired, and their points. A request for 0
    points (a receipt that redeems nothing, asked for its codes) and one for a customer with
    nothing to spend are granted 0 and hold nothing: no hold id, no hold counted. Anna's
    1,200 points: a request for 200 holds 200, one hold; Boris asks for 400 of his 300 and
    gets 300."""
    store = _published_store(tmp_path)
    try:
        now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        nothing = store.authorise("till-1", "r-1", "c-1", 0, now, [], now, 60.0)
        assert (nothing.authorised, nothing.hold_id, nothing.live_balance) == (0, "", 1200)
        assert store.holds_outstanding(now) == (0, 0)
        some = store.authorise("till-1", "r-2", "c-1", 200, now, [], now, 60.0)
        assert (some.authorised, some.live_balance) == (200, 1200) and some.hold_id
        assert store.holds_outstanding(now) == (1, 200)
        boris = store.authorise("till-2", "r-3", "c-2", 400, now, [], now, 60.0)
        assert (boris.authorised, boris.live_balance) == (300, 300)
        assert store.holds_outstanding(now) == (2, 500)
        # Anna's other receipt asks 0: nothing more held, her live balance 1,000 (200 held)
        again = store.authorise("till-2", "r-4", "c-1", 0, now, [], now, 60.0)
        assert (again.authorised, again.hold_id, again.live_balance) == (0, "", 1000)
        assert store.holds_outstanding(now) == (2, 500)
        # one point asked, one held
        one = store.authorise("till-2", "r-7", "c-1", 1, now, [], now, 60.0)
        assert (one.authorised, one.live_balance) == (1, 1000) and one.hold_id
        assert store.holds_outstanding(now) == (3, 501)
        # Boris's 300 are held for r-3; a sale of his then pushed spent 100 of them: his
        # live balance is -100 for another receipt, which is granted 0, not less
        from dataclasses import replace

        from .test_review32_hub32b import sale

        # (the sale at 07:58, the receipt at 07:59: r-3's hold, of 08:00, counts as it is)
        sold = (now - timedelta(minutes=2)).isoformat()
        spent = replace(sale(1, "r-b1"), customer_id="c-2", delta_available=-100, at=sold)
        assert store.ingest("till-3", "", [spent], now).results[0].outcome == "STORED"
        before = now - timedelta(minutes=1)
        short = store.authorise("till-2", "r-8", "c-2", 50, before, [], now, 60.0)
        assert (short.authorised, short.hold_id, short.live_balance) == (0, "", -100)
        assert store.holds_outstanding(now) == (3, 501)
        # an unsent movement of 0 points (a sale that earned and spent nothing) holds nothing
        from tillpoint.sync.hub_store import Unsynced

        flat = Unsynced(seq=7, receipt_id="r-6", points=0)
        store.authorise("till-2", "r-5", "c-1", 0, now, [flat], now, 60.0)
        assert store.holds_outstanding(now) == (3, 501)
    finally:
        store.close()


def test_an_unsynced_spend_of_minus_int64_max_is_taken_and_one_below_is_refused(
    tmp_path: Path,
) -> None:
    """§2, §10: points are signed 64-bit. An unsent movement the till lists with its
    redemption request is held as its negation, which must fit: −(2⁶³ − 1) is taken (held
    as 2⁶³ − 1), −2⁶³ is refused as bad input naming the seq, nothing held."""
    from tillpoint.sync.hub_store import Unsynced

    top = 2**63 - 1
    store = _published_store(tmp_path)
    try:
        now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        low = Unsynced(seq=1, receipt_id="r-1", points=-top - 1)
        with pytest.raises(InputError, match=r"^unsynced seq 1: points -9223372036854775808 "):
            store.authorise("till-1", "r-9", "c-1", 0, now, [low], now, 60.0)
        assert store.holds_outstanding(now) == (0, 0)
        edge = Unsynced(seq=1, receipt_id="r-1", points=-top)
        got = store.authorise("till-1", "r-9", "c-1", 0, now, [edge], now, 60.0)
        assert (got.authorised, got.live_balance) == (0, 1200 - top)
        assert store.holds_outstanding(now) == (1, top)
    finally:
        store.close()


# ---------------------------------------------------------------- §9: a seq taken


def test_a_refund_after_its_sale_whose_seq_is_taken_in_one_batch_waits_for_the_sale(
    tmp_path: Path,
) -> None:
    """§9's decision (docs/PROTOCOL.md, review 32): a sale whose seq the hub holds with
    another transaction is set aside `seqTaken` (the till numbers it again); a refund of
    that sale later in the same batch is answered so too, and is not counted before its
    sale. The refund of a sale the hub holds (r-0) in the same batch is stored."""
    import json
    from dataclasses import replace

    from tillpoint.sync.hub_sqlite import SqliteHubStore

    from .test_review32_hub32b import NOW as AT
    from .test_review32_hub32b import sale

    def refund(seq: int, refund_id: str, of: str) -> Any:
        request = json.dumps({"receiptId": of, "refundId": refund_id})
        return replace(sale(seq, refund_id, kind="REFUND"), request_json=request)

    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        assert store.ingest("till-x", "", [sale(1, "r-0")], AT).results[0].outcome == "STORED"
        got = store.ingest("till-x", "", [sale(1, "r-a"), refund(2, "f-1", "r-a")], AT)
        assert [(r.seq, r.outcome, r.seq_taken) for r in got.results] == [
            (1, "CONFLICT", True),
            (2, "CONFLICT", True),
        ]
        assert got.results[1].reason.startswith("its sale r-a is numbered again at the till")
        kept = store.ingest("till-x", "", [refund(3, "f-0", "r-0")], AT)
        assert [(r.seq, r.outcome) for r in kept.results] == [(3, "STORED")]
    finally:
        store.close()


def test_a_pushed_sale_settles_its_receipts_hold(tmp_path: Path) -> None:
    """§9, §11: the hub holds a receipt's granted points until the receipt's transaction
    reaches it (or the hold expires); the sale's push settles the hold, so its points are
    not kept out of reach twice (the sale counts, the hold goes). Anna's receipt r-1 holds
    200 of her 1,200; once its sale is pushed no hold is outstanding, and her other
    receipt's live balance is the 1,200 with the sale counted (the sale here moves +1)."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    from .test_review32_hub32b import NOW as AT
    from .test_review32_hub32b import sale

    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        store.publish(AT - timedelta(hours=1), 7 * 86400.0)
        held = store.authorise("till-x", "r-1", "c-1", 200, AT, [], AT, 600.0)
        assert held.authorised == 200 and store.holds_outstanding(AT) == (1, 200)
        got = store.ingest("till-x", "", [sale(1, "r-1")], AT)
        assert [(r.seq, r.outcome) for r in got.results] == [(1, "STORED")]
        assert store.holds_outstanding(AT) == (0, 0)
        other = store.authorise("till-y", "r-2", "c-1", 0, AT, [], AT, 600.0)
        assert other.live_balance == 1201
    finally:
        store.close()


def test_a_redemption_counts_the_tills_unsent_movements_once(tmp_path: Path) -> None:
    """§9, §11 (docs/PROTOCOL.md, `UnsyncedPoints`): with a redemption request the till
    lists its movements the hub may not have. One the hub holds under its seq for the same
    receipt is received (counted once, as stored; nothing held for it); another receipt
    under that seq is a movement the hub has not got (review 32: it counts, and its spend
    is held). An unsent sale at 11:59 that redeemed 100 and earned 30 counts as both: its
    spend replayed at its time, its 30 added. Anna: 1,200 imported, +1 of the stored sale
    r-1. Boris: 300."""
    from tillpoint.agent.expiry import utc_text
    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.hub_store import Unsynced

    from .test_review32_hub32b import NOW as AT
    from .test_review32_hub32b import sale

    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        store.publish(AT - timedelta(hours=1), 7 * 86400.0)
        store.ingest("till-x", "", [sale(1, "r-1")], AT)

        def live(receipt_id: str, customer: str, item: Unsynced) -> int:
            got = store.authorise("till-x", receipt_id, customer, 0, AT, [item], AT, 600.0)
            return got.live_balance

        assert live("r-9", "c-1", Unsynced(seq=1, receipt_id="r-1", points=-100)) == 1201
        assert store.holds_outstanding(AT) == (0, 0)
        assert live("r-8", "c-1", Unsynced(seq=1, receipt_id="r-z", points=-100)) == 1101
        assert store.holds_outstanding(AT) == (1, 100)
        sold = utc_text(AT - timedelta(minutes=1))
        unsent = Unsynced(seq=2, receipt_id="r-2", points=-70, at=sold, spent=100)
        assert live("r-7", "c-2", unsent) == 300 - 100 + 30
        assert store.holds_outstanding(AT) == (2, 170)
    finally:
        store.close()


# ---------------------------------------------------------------- §10: a text's limit


def test_a_text_of_128_characters_is_taken_and_one_of_129_refused() -> None:
    """§10's decision: every text field of a request holds at most 128 characters; one
    over is refused naming the call, the field and the limit. A receipt id and a scanned
    code of exactly 128 are taken; 129 are refused."""
    assert len(receipt_from_json(receipt("r" * 128, "C" * 128)).receipt_id) == 128
    with pytest.raises(InputError, match=r"^receipt: receiptId is too long \(at most 128 char"):
        receipt_from_json(receipt("r" * 129))
    with pytest.raises(InputError, match=r"^receipt: coupons\[0\] is too long \(at most 128 c"):
        receipt_from_json(receipt("r-1", "C" * 129))


# ---------------------------------------------------------------- §6, §16: an UNKNOWN card's refund


def test_an_unknown_cards_refund_takes_back_off_pending_before_activation_only(
    tmp_path: Path,
) -> None:
    """§4, §6, §16: the hub settles the points an UNKNOWN card's sale earned (the till
    counted nothing), pending until `activationDelayDays` later at the same local time; a
    refund takes back off that pending part while the refund's `at` is before the
    activation, and off the available points from the activation instant on (pending
    points are spendable at `activatesAt`). 14 days' delay: the sale of 23.11 10:00 (Moscow)
    earns 50, pending until 7.12 10:00 (07:00 UTC). A refund on 30.11 takes back 20: −20
    pending. One at 7.12 10:00:00 exactly takes back 10: −10 available. One on 1.12 takes
    back 40 of which 30 are still pending: −30 pending, −10 available."""
    import json
    import sqlite3

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.hub_store import TxIn

    card = "2770000000994"  # no customer's

    def tx(seq: int, kind: str, at: str, request: dict[str, Any], result: dict[str, Any]) -> TxIn:
        return TxIn(
            "till-x", seq, kind, at, "", card, json.dumps(request), json.dumps(result), 0, 0, ""
        )

    data = sample_master_data()
    data["program"]["activationDelayDays"] = 14
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, data)
        store.publish(datetime(2026, 11, 23, 6, 0, tzinfo=UTC), 7 * 86400.0)
        batch = [
            tx(
                1,
                "CHECKOUT",
                "2026-11-23T10:00:00+03:00",
                {"receiptId": "r-1"},
                {"earnedPoints": 50},
            ),
            tx(
                2,
                "REFUND",
                "2026-11-30T12:00:00+03:00",
                {"receiptId": "r-1", "refundId": "f-1"},
                {"takenBackPoints": 20},
            ),
            tx(
                3,
                "REFUND",
                "2026-12-07T10:00:00+03:00",
                {"receiptId": "r-1", "refundId": "f-2"},
                {"takenBackPoints": 10},
            ),
            tx(
                4,
                "REFUND",
                "2026-12-01T12:00:00+03:00",
                {"receiptId": "r-1", "refundId": "f-3"},
                {"takenBackPoints": 40},
            ),
        ]
        got = store.ingest("till-x", "", batch, datetime(2026, 12, 8, 9, 0, tzinfo=UTC))
        assert [r.outcome for r in got.results] == ["STORED"] * 4
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "hub.db")
    try:
        rows = conn.execute(
            "SELECT seq, delta_available, delta_pending, pending_activates_at FROM transactions"
            " WHERE device_id = 'till-x' ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    due = "2026-12-07T07:00:00.000000Z"  # the hub's UTC text
    assert rows == [(1, 0, 50, due), (2, 0, -20, due), (3, -10, 0, None), (4, -10, -30, due)]


def test_what_the_hub_counts_of_a_seq_0_an_issued_code_and_an_unknown_cards_0_points(
    tmp_path: Path,
) -> None:
    """§9: seqs start at 1, a transaction under seq 0 is set aside (REJECTED). §13: a
    till-issued coupon (COUPON_ISSUED) moves no points. §4: an UNKNOWN card's sale that
    earned 0 points, or whose result does not say, moves none (no delay: nothing pending)."""
    import json
    import sqlite3

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.hub_store import TxIn

    at = "2026-11-23T10:00:00+03:00"

    def tx(
        seq: int, kind: str, request: dict[str, Any], result: dict[str, Any], **more: Any
    ) -> TxIn:
        fields: dict[str, Any] = {"customer_id": "", "card": "2770000000994"} | more
        return TxIn(
            "till-x",
            seq,
            kind,
            at,
            fields["customer_id"],
            fields["card"],
            json.dumps(request),
            json.dumps(result),
            0,
            0,
            "",
        )

    coupon = {"code": "TP5TILLX1", "offerId": "o-1", "customerId": "c-1", "validFrom": at}
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        batch = [
            tx(0, "CHECKOUT", {"receiptId": "r-0"}, {"earnedPoints": 5}),
            tx(1, "CHECKOUT", {"receiptId": "r-1"}, {"earnedPoints": 0}),
            tx(2, "CHECKOUT", {"receiptId": "r-2"}, {}),
            tx(
                3,
                "COUPON_ISSUED",
                {"receiptId": "r-3", "coupon": coupon},
                {},
                customer_id="c-1",
                card="2770000000017",
            ),
        ]
        got = store.ingest("till-x", "", batch, datetime(2026, 11, 23, 8, 0, tzinfo=UTC))
        assert [(r.seq, r.outcome) for r in got.results] == [
            (0, "REJECTED"),
            (1, "STORED"),
            (2, "STORED"),
            (3, "STORED"),
        ]
        assert got.results[0].reason == "seq must be 1 or more"
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "hub.db")
    try:
        rows = conn.execute(
            "SELECT seq, delta_available, delta_pending FROM transactions ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    assert rows == [(1, 0, 0), (2, 0, 0), (3, 0, 0)]


def test_the_locked_grant_gives_0_to_a_stranger_a_short_customer_and_a_sold_receipt(
    tmp_path: Path,
) -> None:
    """§9, §11: what the hub grants is at most what is asked and at least 0, through
    either of its two ways (a request with unsent movements is worked under the customer's
    lock). A customer the hub has no row of has nothing (live balance 0); a customer whose
    holds exceed the balance (live -100) is granted 0; a receipt already sold (its sale
    pushed) is granted 0 and holds nothing."""
    from dataclasses import replace

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.hub_store import Unsynced

    from .test_review32_hub32b import sale

    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    flat = Unsynced(seq=50, receipt_id="r-50", points=0)  # worked under the lock
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data())
        store.publish(now - timedelta(hours=1), 7 * 86400.0)
        for unsynced in ([], [flat]):
            got = store.authorise("till-1", "r-1", "c-9", 100, now, unsynced, now, 60.0)
            assert (got.authorised, got.hold_id, got.live_balance) == (0, "", 0)
        # Boris: 300, all held for r-3 at 08:00, then a sale of 100 at 07:58 pushed
        assert store.authorise("till-2", "r-3", "c-2", 300, now, [], now, 60.0).authorised == 300
        sold = (now - timedelta(minutes=2)).isoformat()
        spent = replace(sale(1, "r-b1"), customer_id="c-2", delta_available=-100, at=sold)
        store.ingest("till-3", "", [spent], now)
        got = store.authorise(
            "till-1", "r-8", "c-2", 50, now - timedelta(minutes=1), [flat], now, 60.0
        )
        assert (got.authorised, got.hold_id, got.live_balance) == (0, "", -100)
        # Anna's receipt r-5, sold and pushed, asked about again: 0, nothing held
        store.ingest("till-1", "", [replace(sale(2, "r-5"), device_id="till-1", at=sold)], now)
        got = store.authorise("till-1", "r-5", "c-1", 100, now, [flat], now, 60.0)
        assert (got.authorised, got.hold_id) == (0, "")
        assert store.holds_outstanding(now) == (1, 300)
    finally:
        store.close()
