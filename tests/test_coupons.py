"""Coupons (§13): snapshot coupons through the hub, a full child-process build and deltas;
verdicts on the receipt, `couponRequired` offers, consumption at commit (real files)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent import ledger
from tillpoint.agent.cli import main
from tillpoint.agent.db import cache_file
from tillpoint.agent.errors import InputError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_server import HubDir
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb

from .test_deals_snapshots import jsonl
from .test_proto_json import strict

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
MILK = "4601234000017"
SORRY = {
    "id": "o-sorry",
    "kind": "AMOUNT_OFF",
    "skus": [MILK],
    "value": "2000",
    "couponRequired": True,
}
COUPONS = [
    {
        "code": "SORRY-7K2Q9",
        "offerId": "o-sorry",
        "customerId": "c-1",
        "validFrom": "2026-11-20T00:00:00+03:00",
        "validTo": "2026-12-20T23:59:59+03:00",
    },
    {"code": "app 555", "offerId": "o-sorry"},
]


def coupons_in_cache(data_dir: Path) -> list[str]:
    conn = sqlite3.connect(cache_file(data_dir))
    try:
        return [code for (code,) in conn.execute("SELECT code FROM coupons ORDER BY code")]
    finally:
        conn.close()


def test_snapshot_coupons_from_hub_import_to_a_full_build_and_a_delta(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    hub = hub_store_factory()  # each hub store: SQLite and PostgreSQL
    agent = Agent(tmp_path / "till", "till-1")
    try:
        import_doc(hub, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
        assert hub.publish(NOW, 7 * 86400.0).version == 1
        full = hub.snapshot_doc(1, 0)
        strict(full, pb.Snapshot())
        # codes are kept as the till looks them up: blanks and dashes dropped, upper case
        assert sorted(c["code"] for c in full["coupons"]) == ["APP555", "SORRY7K2Q9"]
        agent.load_snapshot_file(jsonl(full, tmp_path / "full.jsonl"))  # child processes
        assert coupons_in_cache(tmp_path / "till") == ["APP555", "SORRY7K2Q9"]

        import_doc(hub, {"removed": {"coupons": ["SORRY7K2Q9"]}})
        assert hub.publish(NOW.replace(hour=7), 7 * 86400.0).version == 2
        delta = hub.snapshot_doc(2, 1)
        assert delta["removed"] == {"coupons": ["SORRY7K2Q9"]}
        agent.load_snapshot(delta)
        assert coupons_in_cache(tmp_path / "till") == ["APP555"]
    finally:
        agent.close()
        hub.close()


def snap(**more: Any) -> dict[str, Any]:
    return {"version": 1, "baseVersion": 0, **sample_master_data(), "offers": [SORRY]} | more


def test_a_plain_snapshot_with_coupons_loads_in_process(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))
        assert coupons_in_cache(tmp_path / "till") == ["APP555", "SORRY7K2Q9"]
    finally:
        agent.close()


def receipt(
    receipt_id: str, *codes: str, card: str = "2770000000017", **more: Any
) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "at": "2026-11-23T10:15:00+03:00",
        "card": card,
        "lines": [{"sku": MILK, "qty": "2", "priceMinor": 8990}],
        "coupons": list(codes),
    } | more


def verdicts(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(v.code, v.status, v.reason) for v in result.coupons]


def test_verdicts_consumption_and_coupon_required_offers(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "till", "till-1")
    try:
        more = [
            {"code": "LATER", "offerId": "o-sorry", "validFrom": "2026-11-24T00:00:00+03:00"},
            {"code": "GONE", "offerId": "o-sorry", "validTo": "2026-11-22T23:59:59+03:00"},
            {"code": "BORIS", "offerId": "o-sorry", "customerId": "c-2"},
            {"code": "NOOFFER", "offerId": "o-none"},
        ]
        agent.load_snapshot(snap(coupons=COUPONS + more))
        # no coupon: the couponRequired offer does not apply (explain: COUPON_MISSING)
        plain = agent.quote(receipt_from_json(receipt("q0", explain=True)))
        assert plain.lines[0].discount_minor == 0 and plain.to_json()["coupons"] == []
        (entry,) = plain.to_json()["trace"]["lines"][0]["offers"]
        assert (entry["offerId"], entry["outcome"]) == ("o-sorry", "COUPON_MISSING")

        codes = ("later", "GONE", "Boris", "x-1", "NOOFFER", "sorry 7k2q9", "SORRY-7K2Q9", "APP555")
        quoted = agent.quote(receipt_from_json(receipt("r1", *codes)))
        assert verdicts(quoted) == [
            ("LATER", "REJECTED", "NOT_YET_VALID"),
            ("GONE", "REJECTED", "EXPIRED"),
            ("BORIS", "REJECTED", "OTHER_CUSTOMER"),
            ("X1", "REJECTED", "UNKNOWN"),
            ("NOOFFER", "REJECTED", "NOT_APPLICABLE"),  # its offer gave nothing
            ("SORRY7K2Q9", "APPLIED", ""),
            ("SORRY7K2Q9", "REJECTED", "DUPLICATE"),
            ("APP555", "REJECTED", "NOT_APPLICABLE"),  # o-sorry is already unlocked
        ]
        # AMOUNT_OFF 20.00 a unit × 2 = 40.00
        assert (quoted.lines[0].discount_minor, quoted.lines[0].offer_id) == (
            4000,
            "o-sorry",
        )
        committed = agent.checkout(receipt_from_json(receipt("r1", *codes)))
        assert committed.to_json() == quoted.to_json() | {
            "printedOffers": [],
            "display": committed.to_json()["display"],
            "state": "CONFIRMED",
            "deviceId": "till-1",  # where the sale went in the ledger: a quote has none
            "seq": 1,
        }
        strict(committed.to_json(), pb.CheckoutResult())

        # the same code on a later receipt of this till: ALREADY_USED, no discount
        again = agent.checkout(receipt_from_json(receipt("r2", "SORRY7K2Q9")))
        assert verdicts(again) == [("SORRY7K2Q9", "REJECTED", "ALREADY_USED")]
        assert again.lines[0].discount_minor == 0
        # the other code is still good; a repeated checkout returns what it returned
        assert verdicts(agent.checkout(receipt_from_json(receipt("r3", "APP555")))) == [
            ("APP555", "APPLIED", "")
        ]
        assert verdicts(agent.checkout(receipt_from_json(receipt("r3", "APP555")))) == [
            ("APP555", "APPLIED", "")
        ]
        # a quote never uses a code up, and an unknown card uses none
        unknown = agent.quote(receipt_from_json(receipt("r4", "LATER", card="2770000000994")))
        assert verdicts(unknown) == [("LATER", "REJECTED", "NOT_APPLICABLE")]
    finally:
        agent.close()
    conn = sqlite3.connect(tmp_path / "till" / "ledger.db")
    try:
        rows = conn.execute("SELECT code, receipt_id, offer_id FROM coupon_uses ORDER BY code")
        assert rows.fetchall() == [("APP555", "r3", "o-sorry"), ("SORRY7K2Q9", "r1", "o-sorry")]
    finally:
        conn.close()


# ---------------------------------------------------------------- properties


def drop_devices(result: dict[str, Any]) -> dict[str, Any]:
    skip = ("printedOffers", "display", "state", "deviceId", "seq")  # a quote has no seq
    return {k: v for k, v in result.items() if k not in skip}


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["quote", "checkout"]),
        st.sampled_from(["r1", "r2", "r3", "r4"]),
        st.lists(st.sampled_from(["SORRY7K2Q9", "sorry-7k2q9", "APP555", "X"]), max_size=3),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
def test_a_code_is_used_at_most_once_per_till_and_quote_equals_checkout(
    actions: list[tuple[str, str, list[str]]],
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tp-coupon-"))
    agent = Agent(data_dir, "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))
        bodies: dict[str, dict[str, Any]] = {}  # the first body under each receipt id
        committed: set[str] = set()
        applied: dict[str, set[str]] = {}  # code -> the receipts whose result applied it
        for kind, receipt_id, codes in actions:
            body = bodies.setdefault(receipt_id, receipt(receipt_id, *codes))
            if kind == "quote" and receipt_id in committed:
                continue  # a quote of a committed receipt would see its own use
            if kind == "quote":
                quoted = agent.quote(receipt_from_json(body))
                result = agent.checkout(receipt_from_json(body))
                assert drop_devices(quoted.to_json()) == drop_devices(
                    result.to_json()
                )  # quote equals checkout
            else:
                result = agent.checkout(receipt_from_json(body))
            committed.add(receipt_id)
            for code, status, _ in verdicts(result):
                if status == "APPLIED":
                    applied.setdefault(code, set()).add(receipt_id)
        assert all(len(receipts) == 1 for receipts in applied.values()), applied
    finally:
        agent.close()
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        used = conn.execute("SELECT code, count(*) FROM coupon_uses GROUP BY code").fetchall()
        assert all(n == 1 for _, n in used)
        assert {code for code, _ in used} == set(applied)
    finally:
        conn.close()


# ---------------------------------------------------------------- at the hub


def outbox(data_dir: Path) -> list[TxIn]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:  # as the uploader reads it: every device's rows, the texts put back
        devices = [d for (d,) in conn.execute("SELECT DISTINCT device_id FROM outbox")]
        rows = [r for d in devices for r in ledger.outbox_batch(conn, d, 1_000_000)]
        payloads = [json.loads(r.payload) for r in sorted(rows, key=lambda r: r.seq)]
    finally:
        conn.close()
    return [
        TxIn(
            p["deviceId"],
            p["seq"],
            p["kind"],
            p["at"],
            p["customerId"],
            p["card"],
            p["requestJson"],
            p["resultJson"],
            p["pointsDeltaAvailable"],
            p["pointsDeltaPending"],
            p.get("pendingActivatesAt", ""),
        )
        for p in payloads
    ]


def test_one_code_used_on_two_offline_tills_is_one_conflict_at_the_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hub_store_factory: Any
) -> None:
    hub = hub_store_factory()  # each hub store: SQLite and PostgreSQL
    store = str(getattr(hub, "url", "") or hub.path)
    if store.startswith("postgresql"):
        HubDir(tmp_path, store).init()  # the keys make a hub on a shared database
    tills = [Agent(tmp_path / name, name) for name in ("till-1", "till-2")]
    try:
        import_doc(hub, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
        hub.publish(NOW, 7 * 86400.0)
        for n, till in enumerate(tills):
            till.load_snapshot(hub.snapshot_doc(1, 0))
            result = till.checkout(receipt_from_json(receipt(f"s{n}", "SORRY7K2Q9")))
            assert verdicts(result) == [("SORRY7K2Q9", "APPLIED", "")]  # both sales stand
        for _ in range(2):  # a retried push changes nothing
            for name in ("till-1", "till-2"):
                hub.ingest(name, "", outbox(tmp_path / name), NOW)
        assert hub.coupon_conflicts() == [
            {
                "code": "SORRY7K2Q9",
                "deviceId": "till-2",
                "receiptId": "s1",
                "at": "2026-11-23T10:15:00+03:00",
                "firstDeviceId": "till-1",
                "firstReceiptId": "s0",
            }
        ]
        assert len(hub.ledger()) == 2  # nothing lost
        # the used code leaves the next snapshot
        hub.publish(NOW.replace(hour=7), 7 * 86400.0)
        assert hub.snapshot_doc(2, 1)["removed"] == {"coupons": ["SORRY7K2Q9"]}
        assert [c["code"] for c in hub.snapshot_doc(2, 0)["coupons"]] == ["APP555"]
        # the hub's operator sees the conflict
        cli = ["hub", "coupon-conflicts", "--hub-dir", str(tmp_path), "--store", store]
        assert main([*cli, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out == {"conflicts": hub.coupon_conflicts()}
        assert main(cli) == 0
        assert "SORRY7K2Q9: used by till-1 (s0) and again by till-2 (s1)" in capsys.readouterr().out
        # and its status counts it (the contract §13: "shown in its status")
        status = ["hub", "status", "--hub-dir", str(tmp_path), "--store", store]
        assert main([*status, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["version"], shown["couponConflicts"], shown["setAside"]) == (2, 1, 0)
        assert main(status) == 0
        assert "1 coupon conflict(s) (hub coupon-conflicts)" in capsys.readouterr().out
    finally:
        for till in tills:
            till.close()
        hub.close()


NEXT_VISIT = {
    "id": "o-next",
    "customerId": "c-1",
    "kind": "PERCENT_OFF",
    "skus": [MILK],
    "value": "20",
    "couponRequired": True,
    "issueCoupon": True,
    "printable": True,
    "printText": "−20% на молоко в следующий раз",
    "validTo": "2026-12-31T23:59:59+03:00",
}


def test_a_till_issued_coupon_is_printed_usable_at_once_and_reaches_other_tills(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    from google.protobuf import json_format

    hub = hub_store_factory()  # each hub store: SQLite and PostgreSQL
    tills = [Agent(tmp_path / name, name) for name in ("till-1", "till-2")]
    try:
        import_doc(hub, sample_master_data() | {"offers": [NEXT_VISIT]})
        hub.publish(NOW, 7 * 86400.0)
        for till in tills:
            till.load_snapshot(hub.snapshot_doc(1, 0))
        first = tills[0].checkout(receipt_from_json(receipt("s1")))
        assert first.to_json()["printedOffers"] == ["o-next"]
        assert first.lines[0].discount_minor == 0  # no code yet: couponRequired
        # "TP" + length 5 + "TILL1" (till-1 normalised) + its first coupon number
        conn = sqlite3.connect(tmp_path / "till-1" / "ledger.db")
        try:
            (doc,) = conn.execute("SELECT doc FROM issued_coupons").fetchone()
            (job,) = conn.execute("SELECT payload FROM print_jobs").fetchone()
        finally:
            conn.close()
        coupon = json.loads(doc)
        assert coupon == {
            "code": "TP5TILL11",
            "offerId": "o-next",
            "customerId": "c-1",
            "validFrom": "2026-11-23T10:15:00+03:00",
            "validTo": "2026-12-31T23:59:59+03:00",
        }
        assert json.loads(job)["offers"][0]["code"] == "TP5TILL11"  # printed to be scanned
        # the checkout and the issued coupon: two transactions, seq 1 and 2
        txs = outbox(tmp_path / "till-1")
        assert [(t.seq, t.kind) for t in txs] == [(1, "CHECKOUT"), (2, "COUPON_ISSUED")]
        for p in txs:  # what the push sends parses as the contract's Transaction
            tx = pb.Transaction(kind=pb.TransactionKind.Value(p.kind), request_json=p.request_json)
            assert json_format.MessageToDict(tx)["kind"] == p.kind

        # the hub takes it into the next snapshot: another till finds the code
        hub.ingest("till-1", "", txs, NOW)
        hub.publish(NOW.replace(hour=7), 7 * 86400.0)
        delta = hub.snapshot_doc(2, 1)
        assert delta["coupons"] == [coupon]
        tills[1].load_snapshot(delta)
        elsewhere = tills[1].quote(receipt_from_json(receipt("q1", "tp5till11")))
        assert verdicts(elsewhere) == [("TP5TILL11", "APPLIED", "")]

        # the issuing till takes it back at once (before any snapshot): 20 % of 179.80
        second = tills[0].checkout(receipt_from_json(receipt("s2", "TP5TILL11")))
        assert verdicts(second) == [("TP5TILL11", "APPLIED", "")]
        assert (second.lines[0].discount_minor, second.lines[0].offer_id) == (
            3596,
            "o-next",
        )
        hub.ingest("till-1", "", outbox(tmp_path / "till-1"), NOW)
        hub.publish(NOW.replace(hour=8), 7 * 86400.0)
        assert hub.snapshot_doc(3, 2)["removed"] == {"coupons": ["TP5TILL11"]}
    finally:
        for till in tills:
            till.close()
        hub.close()


def test_an_offer_with_no_end_issues_a_code_with_none(
    tmp_path: Path, hub_store_factory: Any
) -> None:
    """§13: "valid from `at` to the offer's `validTo`"; an offer without one (open-ended)
    used to fail every checkout of its customer (KeyError): now the code has no end
    either, is usable at once and reaches the hub like any other."""
    open_ended = {k: v for k, v in NEXT_VISIT.items() if k != "validTo"}
    hub = hub_store_factory()
    till = Agent(tmp_path / "till-1", "till-1")
    try:
        import_doc(hub, sample_master_data() | {"offers": [open_ended]})
        hub.publish(NOW, 7 * 86400.0)
        till.load_snapshot(hub.snapshot_doc(1, 0))
        first = till.checkout(receipt_from_json(receipt("s1")))
        assert first.to_json()["printedOffers"] == ["o-next"]
        txs = outbox(tmp_path / "till-1")
        assert [t.kind for t in txs] == ["CHECKOUT", "COUPON_ISSUED"]
        coupon = json.loads(txs[1].request_json)["coupon"]
        assert coupon == {
            "code": "TP5TILL11",
            "offerId": "o-next",
            "customerId": "c-1",
            "validFrom": "2026-11-23T10:15:00+03:00",
        }
        later = receipt("s2", "TP5TILL11", at="2027-06-01T10:00:00+03:00")
        assert verdicts(till.checkout(receipt_from_json(later))) == [("TP5TILL11", "APPLIED", "")]
        hub.ingest("till-1", "", txs, NOW)
        hub.publish(NOW.replace(hour=7), 7 * 86400.0)
        assert hub.snapshot_doc(2, 1)["coupons"] == [coupon]
    finally:
        till.close()
        hub.close()


def test_the_hub_takes_only_a_tills_own_codes_as_issued(hub_store_factory: Any) -> None:
    """A COUPON_ISSUED was checked for its shape only: a till could put any code in every
    till's next snapshot — another till's, one for an offer of its choosing, or the
    retailer's own imported code rewritten for anyone until 2099 (an audit of what one
    till can do to another's data). Only the device's own numbering is taken."""
    hub = hub_store_factory()
    import_doc(hub, sample_master_data())
    hub.publish(NOW, 7 * 86400.0)

    def issued(seq: int, code: str) -> TxIn:
        doc = {"code": code, "offerId": "o-next", "validFrom": "2026-11-23T10:15:00+03:00"}
        request = json.dumps({"receiptId": f"r{seq}", "coupon": doc})
        return TxIn("till-1", seq, "COUPON_ISSUED", NOW.isoformat(), "c-1", "", request, "{}",
                    0, 0, "")  # fmt: skip

    codes = ["TP6TILLB1", "FREESTUFF", "TP5TILL1X", "TP5TILL1", "TP5TILL1٣", "TP5TILL17"]
    result = hub.ingest("till-1", "", [issued(i, c) for i, c in enumerate(codes, 1)], NOW)
    outcomes = [(r.seq, r.outcome) for r in result.results]
    assert outcomes == [(1, "REJECTED"), (2, "REJECTED"), (3, "REJECTED"), (4, "REJECTED"),
                        (5, "REJECTED"), (6, "STORED")]  # fmt: skip
    assert "not one of till-1's own codes (TP5TILL1…)" in result.results[0].reason
    hub.publish(NOW.replace(hour=7), 7 * 86400.0)
    assert [c["code"] for c in hub.snapshot_doc(2, 1)["coupons"]] == ["TP5TILL17"]


def test_a_hold_reserves_its_coupons_and_a_cancel_gives_them_back(tmp_path: Path) -> None:
    """Contract §11 with §13: a held code is used for every other receipt of this till until
    the hold is cancelled or expires; a confirm keeps it used."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snap(coupons=COUPONS))
        held = agent.hold(receipt_from_json(receipt("h1", "SORRY7K2Q9")))
        assert held.state == "HELD" and verdicts(held) == [("SORRY7K2Q9", "APPLIED", "")]
        other = agent.quote(receipt_from_json(receipt("h2", "SORRY7K2Q9")))
        assert verdicts(other) == [("SORRY7K2Q9", "REJECTED", "ALREADY_USED")]
        agent.cancel("h1")
        again = agent.hold(receipt_from_json(receipt("h2", "SORRY7K2Q9")))
        assert verdicts(again) == [("SORRY7K2Q9", "APPLIED", "")]
        confirmed = agent.confirm("h2")
        assert confirmed.state == "CONFIRMED"
        assert verdicts(confirmed) == [("SORRY7K2Q9", "APPLIED", "")]
        late = agent.quote(receipt_from_json(receipt("h3", "SORRY7K2Q9")))
        assert verdicts(late) == [("SORRY7K2Q9", "REJECTED", "ALREADY_USED")]
    finally:
        agent.close()


def test_device_ids_that_would_issue_the_same_codes_are_not_both_enrolled(
    hub_store_factory: Any,
) -> None:
    """§13: a till-issued code is unique in the chain. It is built from the device id's
    normal form (dashes, blanks and case dropped), so the hub refuses to enrol a second
    device whose id has the same normal form: `till-1`, `TILL1` and `till1` would all
    issue TP5TILL1…"""
    hub = hub_store_factory()
    hub.enroll("till-1", "f1", NOW)
    for twin in ("TILL1", "till1", "Till - 1"):
        with pytest.raises(InputError, match=f"device id '{twin}' would issue the same coupon"):
            hub.enroll(twin, "f2", NOW)
        assert hub.device(twin) is None
    hub.enroll("till-1", "f3", NOW)  # enrolling the same device again is fine
    hub.enroll("till-11", "f4", NOW)  # TP6TILL11… : the length keeps them apart
    assert hub.device("till-1").fingerprint == "f3"
    hub.revoke("till-1", NOW)  # a revoked device's codes are still out there
    with pytest.raises(InputError):
        hub.enroll("TILL1", "f5", NOW)


def test_hub_enroll_refuses_a_twin_device_id_with_one_line_and_no_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub_dir = tmp_path / "hub"
    base = ["hub", "enroll", "--hub-dir", str(hub_dir), "--address", "127.0.0.1:1"]
    assert main(["hub", "init", "--hub-dir", str(hub_dir)]) == 0
    assert main([*base, "till-1", "--out", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    assert main([*base, "TILL1", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "same coupon codes as the enrolled device 'till-1'" in err
    assert not (tmp_path / "b.json").exists()


def test_giving_a_holds_codes_back_does_not_read_every_code_ever_used(tmp_path: Path) -> None:
    """A hold cancelled, expired or priced again gives its codes back by receipt id, in
    the ledger's write transaction; the table keeps every code the till ever took, and
    each give-back read all of it. By an index now (ledger m013): SQLite's work for a
    cancel is the same beside 100 used codes and beside 20,000."""

    def steps(used: int) -> int:
        agent = Agent(tmp_path / f"till-{used}", "till-1")
        try:
            agent.load_snapshot(snap(coupons=COUPONS))
            conn = agent._ledger
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO coupon_uses (code, receipt_id, customer_id, offer_id, at,"
                " created_at) VALUES (?, ?, 'c-1', 'o-sorry', '2026-01-01', '2026-01-01')",
                [(f"OLD{i}", f"old-{i}") for i in range(used)],
            )
            conn.execute("COMMIT")
            agent.hold(receipt_from_json(receipt("h1", "SORRY7K2Q9")))
            counted = [0]

            def tick() -> int:
                counted[0] += 1
                return 0

            conn.set_progress_handler(tick, 100)
            assert agent.cancel("h1").state == "CANCELLED"
            conn.set_progress_handler(None, 0)
            return counted[0]
        finally:
            agent.close()

    assert steps(20_000) <= steps(100) + 5
