"""Review 57 (mut57c): mutation testing of what review 54 left unrun of the hub's store in
SQL (`sync/hub_sql.py`): the column indexes of `transactions()` and `_pub`, the ledger,
enrolment, the set-aside list, the category tree's cycles, the devices' reads. Each test
pins a rule of the store that a surviving mutant broke and no test held, on a real
SQLite file and a real PostgreSQL database each (`hub_store_factory`), every value of a
row distinct from the others so that a column read from its neighbour shows.
docs/DECISIONS.md, "Review 57 (mut57c)", lists the mutants."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.ledger import utc_text
from tillpoint.sync import hub_sql
from tillpoint.sync.hub_store import DeviceRecord, ImportRefused, LedgerEntry, StoredTx, TxIn
from tillpoint.sync.loopback import import_doc

from .test_review54_mut54c import CARD_1, NOW, WEEK, sale
from .test_review54_mut54c import store as store  # a fixture: the sample published as version 1

CARD_2 = "2770000000024"  # c-2's (the sample's)


def pending_sale(seq: int, receipt: str, *, refunds: str = "") -> TxIn:
    """till-a's sale of `receipt` to c-1's card (spent 100, 50 pending until 14 days on,
    fiscal document FD-`seq`), or with `refunds` its refund (100 back, the 50 taken back)."""
    activates = (NOW + timedelta(days=14)).isoformat()
    at = (NOW + timedelta(minutes=seq)).isoformat()
    if refunds:
        request = {"refundId": receipt, "receiptId": refunds}
        return TxIn(
            "till-a", seq, "REFUND", at, "c-1", CARD_1, json.dumps(request),
            json.dumps({"returnedPoints": 100}), 100, -50, activates, f"FD-{seq}",
        )  # fmt: skip
    return TxIn(
        "till-a", seq, "CHECKOUT", at, "c-1", CARD_1, json.dumps({"receiptId": receipt}),
        "{}", -100, 50, activates, f"FD-{seq}",
    )  # fmt: skip


# ---------------------------------------------------------------- the ledger's reads (§11)


def test_a_stored_transaction_reads_each_of_its_own_columns(store: Any) -> None:
    """`transactions()` (ListTransactions, `hub receipts`): every field of a sale and of
    its refund from its own column, a refund's refundId only on the refund; `since_seq`
    0 by default (seq 1 listed), `limit` 0 all of them, `receipt_id` the receipt's rows."""
    t1 = NOW + timedelta(hours=1)
    got = store.ingest(
        "till-a", "", [pending_sale(1, "r-1"), pending_sale(2, "f-1", refunds="r-1")], t1
    )
    assert [r.outcome for r in got.results] == ["STORED", "STORED"]
    store.ingest("till-a", "", [sale("till-a", 3, "c-2", 5, receipt="r-3", card=CARD_2)], t1)
    activates = utc_text(NOW + timedelta(days=14))
    sold = StoredTx(
        "till-a", 1, "CHECKOUT", "r-1", "", (NOW + timedelta(minutes=1)).isoformat(), "c-1",
        CARD_1, -100, 50, activates, utc_text(t1), "FD-1",
    )  # fmt: skip
    refunded = StoredTx(
        "till-a", 2, "REFUND", "r-1", "f-1", (NOW + timedelta(minutes=2)).isoformat(), "c-1",
        CARD_1, 100, -50, activates, utc_text(t1), "FD-2",
    )  # fmt: skip
    third = StoredTx(
        "till-a", 3, "CHECKOUT", "r-3", "", NOW.isoformat(), "c-2", CARD_2, 5, 0, "",
        utc_text(t1), "",
    )  # fmt: skip
    assert store.transactions("till-a") == [sold, refunded, third]
    assert store.transactions("till-a", 1) == [refunded, third]
    assert store.transactions("till-a", limit=1) == [sold]
    assert store.transactions("till-a", limit=2) == [sold, refunded]
    assert store.transactions("till-a", receipt_id="r-1") == [sold, refunded]
    assert store.transactions("till-a", 1, 1, "r-1") == [refunded]
    assert store.transactions("till-b") == []


def test_a_publication_reads_each_of_its_own_columns(store: Any) -> None:
    """`_pub`: a version's number, issue and expiry, cut (the ledger's mark it counts
    through), reason and changed rows, each from its own column (a snapshot's header,
    the delta's base, `hub status`)."""
    store.ingest("till-a", "", [sale("till-a", n, "c-1", n) for n in (1, 2, 3)], NOW)
    customer = {"id": "c-9", "firstName": "Ия", "tier": "base", "balancePoints": 9}
    import_doc(store, {"customers": [customer]})
    issued = NOW + timedelta(hours=2)
    pub = store.publish(issued, 3 * 86400.0)
    assert pub == store.latest() == store.publication(2)
    assert (pub.version, pub.issued_at, pub.expires_at) == (2, issued, issued + timedelta(3))
    assert pub.reason == "publish"
    # three transactions counted through, one customer row changed: distinct figures
    assert (pub.cut >= 3, pub.changed_rows) == (True, 1)
    assert store.publication(3) is None
    assert store.delta_floor() == 0  # never pruned: a delta from every version
    first = store.publication(1)
    assert (first.version, first.issued_at, first.expires_at) == (1, NOW, NOW + timedelta(7))


def test_the_ledger_lists_each_devices_rows_by_seq(store: Any) -> None:
    """`ledger()` (`hub ledger`): each row's device, seq, kind, reference (the receipt, a
    refund's refundId), customer, card and deltas from its own column; one device's
    rows by seq, all of them by device then seq."""
    store.ingest("till-b", "", [sale("till-b", 1, "c-2", 7, receipt="r-b", card=CARD_2)], NOW)
    store.ingest("till-a", "", [pending_sale(1, "r-1"), pending_sale(2, "f-1", refunds="r-1")], NOW)
    a1 = LedgerEntry("till-a", 1, "CHECKOUT", "r-1", "c-1", CARD_1, -100, 50)
    a2 = LedgerEntry("till-a", 2, "REFUND", "f-1", "c-1", CARD_1, 100, -50)
    b1 = LedgerEntry("till-b", 1, "CHECKOUT", "r-b", "c-2", CARD_2, 7, 0)
    assert store.ledger("till-a") == [a1, a2]
    assert store.ledger("till-b") == [b1]
    assert store.ledger() == [a1, a2, b1]
    assert store.ledger("till-c") == []


# ---------------------------------------------------------------- set aside (§11, review 32)


def test_the_set_aside_list_reads_each_entrys_own_columns(store: Any) -> None:
    """`set_aside_transactions()`: by device (code point order: "TILL-Z" before
    "till-a"), then seq; one device's alone when asked; each entry's outcome, reason,
    arrival, whether its seq was taken, resolved or not and under which seq."""
    t1, t2 = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, receipt="r-1")], NOW)
    # r-2 sent under r-1's seq: set aside (seq taken), then stored as seq 2 at T2
    got = store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, receipt="r-2")], t1)
    assert [(r.outcome, r.seq_taken) for r in got.results] == [("CONFLICT", True)]
    bad = TxIn("TILL-Z", 4, "CHECKOUT", NOW.isoformat(), "c-1", "", "not json", "{}", 0, 0, "")
    got = store.ingest("TILL-Z", "", [bad], t2)
    assert [r.outcome for r in got.results] == ["REJECTED"]
    store.ingest("till-a", "", [sale("till-a", 2, "c-1", 0, receipt="r-2")], t2)
    listed = store.set_aside_transactions()
    assert [(e["deviceId"], e["seq"], e["outcome"]) for e in listed] == [
        ("TILL-Z", 4, "REJECTED"),
        ("till-a", 1, "CONFLICT"),
    ]
    rejected, taken = listed
    assert rejected["receivedAt"] == utc_text(t2) and rejected["reason"]
    assert (rejected["seqTaken"], rejected["resolved"]) == (False, False)
    assert (rejected["storedAsSeq"], rejected["resolvedAt"]) == (None, None)
    assert taken["receivedAt"] == utc_text(t1)
    assert taken["reason"].startswith("seq 1 of till-a is already stored with other content")
    assert (taken["seqTaken"], taken["resolved"]) == (True, True)
    assert (taken["storedAsSeq"], taken["resolvedAt"]) == (2, utc_text(t2))
    assert store.set_aside_transactions("till-a") == [taken]
    assert store.set_aside_transactions("TILL-Z") == [rejected]
    assert store.set_aside_transactions("till-b") == []


# ---------------------------------------------------------------- the category tree (§3)


def test_a_cycle_is_named_once_and_a_removed_parent_makes_none(store: Any) -> None:
    """`category_cycles`: a chain leading into a cycle (a → b → c → b) is refused with
    the one cycle, named from where the chain enters it (b → c → b), once; a category
    whose parent the draft removes ends there, no cycle."""
    doc = {
        "categories": [
            {"code": "a", "name": "A", "parent": "b"},
            {"code": "b", "name": "B", "parent": "c"},
            {"code": "c", "name": "C", "parent": "b"},
        ]
    }
    with pytest.raises(ImportRefused) as refused:
        import_doc(store, doc)
    [problem] = refused.value.problems
    assert problem.endswith("category 'b' is its own ancestor (b → c → b)")
    assert store.draft_size() == 0  # nothing of it kept
    # x under food, published (version 2); then x removed in the draft, and food put
    # under x: x → food is the published row's, but x is gone from the next version, so
    # food → x ends there: no cycle through a category the draft removes
    import_doc(store, {"categories": [{"code": "x", "name": "X", "parent": "food"}]})
    store.publish(NOW, WEEK)
    import_doc(store, {"removed": {"categories": ["x"]}})
    import_doc(store, {"categories": [{"code": "food", "name": "Еда", "parent": "x"}]})
    # x back, under dairy: now it is one (dairy → food → x → dairy)
    cycle = r"'dairy' is its own ancestor \(dairy → food → x → dairy\)"
    with pytest.raises(ImportRefused, match=cycle):
        import_doc(store, {"categories": [{"code": "x", "name": "X", "parent": "dairy"}]})


# ---------------------------------------------------------------- devices (§10)


def test_an_enrolment_checks_the_other_devices_codes_not_its_own(store: Any) -> None:
    """`enroll`: a device whose id has another enrolled device's normal form ("TILL A"
    of "till-a") is refused and nothing changes; the same device enrolled again, and a
    device of another normal form, are enrolled."""
    t1 = NOW + timedelta(days=1)
    store.enroll("till-a", "fp-a", NOW)
    with pytest.raises(InputError, match="would issue the same coupon codes"):
        store.enroll("TILL A", "fp-x", t1)
    assert store.devices() == [DeviceRecord("till-a", "fp-a", utc_text(NOW), None)]
    store.enroll("till-a", "fp-a2", t1)  # again: its own codes are no clash
    store.enroll("till-b", "fp-b", t1)
    assert store.devices() == [
        DeviceRecord("till-a", "fp-a2", utc_text(t1), None),
        DeviceRecord("till-b", "fp-b", utc_text(t1), None),
    ]


def test_each_device_is_listed_with_its_own_record(store: Any) -> None:
    """`device()` / `devices()` (`hub status`, the door's check of a client certificate):
    each device's fingerprint, enrolment and revocation from its own row; an unknown
    device has none; a revocation says True once and changes only its own row."""
    t1, t2 = NOW + timedelta(days=1), NOW + timedelta(days=2)
    store.enroll("till-b", "fp-b", t1)
    store.enroll("till-a", "fp-a", NOW)
    assert store.revoke("till-b", t2)
    assert not store.revoke("till-b", t2 + timedelta(days=1))
    assert not store.revoke("till-c", t2)
    a = DeviceRecord("till-a", "fp-a", utc_text(NOW), None)
    b = DeviceRecord("till-b", "fp-b", utc_text(t1), utc_text(t2))
    assert (store.device("till-a"), store.device("till-b")) == (a, b)
    assert store.device("till-c") is None
    assert store.devices() == [a, b]
    # the operator's reads around them: till-b's newest seq came at T2, till-a has none
    store.ingest("till-b", "", [sale("till-b", n, "c-1", 0) for n in (1, 2)], t1)
    store.ingest("till-b", "", [sale("till-b", 3, "c-1", 0)], t2)
    assert store.last_uploads(["till-a", "till-b"]) == {"till-b": utc_text(t2)}
    assert (store.applied_through("till-a"), store.applied_through("till-b")) == (0, 3)


def test_postgresql_lists_the_devices_in_code_point_order_whatever_its_collation(
    pg_cluster: Any,
) -> None:
    """`devices()` (`hub status`) lists by device id in code point order, as SQLite and
    the set-aside list do, on a database whose default collation is not "C" (a cluster
    `initdb` made with the machine's locale; here ICU's root collation, which sorts
    "till_c" first and "TILL-B" after "till-a"): `devices.device_id` has no collation of
    its own (the tables of migration 1 that have one are the ledger's)."""
    import uuid

    import psycopg
    from tillpoint.sync.hub_postgres import PostgresHubStore

    name = f"hub_icu_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url, autocommit=True, connect_timeout=10) as conn:
        try:
            conn.execute(
                f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu'
                " ICU_LOCALE 'und' LOCALE 'C'".encode()
            )
        except psycopg.Error as e:  # a server built without ICU
            pytest.skip(f"no ICU collation: {e}")
    store = PostgresHubStore(pg_cluster.url.rsplit("/", 1)[0] + f"/{name}", migrate_schema=True)
    try:
        ids = ["till-a", "till_c", "TILL-B", "Till-0"]
        for n, device in enumerate(ids):
            store.enroll(device, f"fp-{n}", NOW)
        assert [d.device_id for d in store.devices()] == sorted(ids)
        assert sorted(ids) == ["TILL-B", "Till-0", "till-a", "till_c"]
    finally:
        store.close()


# ---------------------------------------------------------------- the prune's floor (§3)


def test_a_prune_stopped_between_steps_or_with_nothing_to_do_says_its_floor(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prune_versions` returns the floor as far as it got: stopped after its first step
    (steps of 2 versions here: floor 0 → 2 of a target 5), and when the floor is at its
    target already (nothing to do). Of the seven `floor`→`ceil` swaps review 54 left
    unrun, those of these two returns survived every test (a NameError)."""
    monkeypatch.setattr(hub_sql, "PRUNE_STEP", 2)
    for n in range(1, 5):
        assert store.publish(NOW + timedelta(hours=n), WEEK).version == n + 1
    later = NOW + timedelta(days=1)
    assert store.prune_versions(later, stop=lambda: True) == 2
    assert store.delta_floor() == 2
    assert store.prune_versions(later) == 5
    assert store.prune_versions(later) == 5  # at its target: the floor as it is
    assert store.delta_floor() == 5


# ---------------------------------------------------------------- coupons (§13)


def test_a_codes_first_use_is_its_device_and_receipt(store: Any) -> None:
    """`coupon_first_use` is (device, receipt): a code a sale listed twice is no conflict
    with itself; a late coupon step of the sold receipt is answered its own code as held
    (only the code its sale did not use is refused); another till's use is a conflict
    naming both receipts."""
    used = {"coupons": [{"code": "K-1", "status": "APPLIED"}] * 2}
    store.ingest("till-a", "", [sale("till-a", 1, "c-1", 0, receipt="r-1", result=used)], NOW)
    assert store.coupon_conflicts() == []
    now = datetime.now(UTC)
    assert store.hold_coupons("till-a", "r-1", "c-1", ["K-1", "K-2"], now, 600.0) == ["K-2"]
    assert store.hold_coupons("till-b", "r-1", "c-1", ["K-1"], now, 600.0) == ["K-1"]
    once = {"coupons": [{"code": "K-1", "status": "APPLIED"}]}
    store.ingest("till-b", "", [sale("till-b", 1, "c-2", 0, receipt="r-9", result=once)], NOW)
    [seen] = store.coupon_conflicts()
    assert "till-a" in json.dumps(seen) and "till-b" in json.dumps(seen)
