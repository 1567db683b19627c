"""The reference hub's store: imports, versions, deltas, balances (both stores: a real
SQLite file and a real PostgreSQL database)."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.db import open_cache
from tillpoint.agent.errors import InputError
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_import import read_file
from tillpoint.sync.hub_store import ImportRefused, TxIn
from tillpoint.sync.loopback import import_doc, sample_master_data

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WEEK = 7 * 86400.0


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    """An empty hub store, once on SQLite and once on PostgreSQL."""
    return hub_store_factory()


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def lines(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    return path


# ---------------------------------------------------------------- imports


def test_a_snapshot_shaped_file_imports_and_publishes(store: Any, tmp_path: Path) -> None:
    doc = {"version": 7, "appliedThrough": {"till-1": 41}, **sample_master_data()}
    report = store.import_rows(read_file(write(tmp_path / "a.json", doc)))
    assert report.by_kind == {"program": 1, "category": 2, "product": 3, "customer": 2, "card": 2}
    pub = store.publish(NOW, WEEK)
    assert (pub.version, pub.changed_rows) == (1, 10)
    snap = store.snapshot_doc(1, 0)
    assert snap["version"] == 1 and snap["baseVersion"] == 0
    assert snap["expiresAt"] == (NOW + timedelta(days=7)).isoformat()
    assert [c["id"] for c in snap["customers"]] == ["c-1", "c-2"]
    assert snap["appliedThrough"] == {}  # the file's header is the hub's to set (no pushes yet)


def test_bad_rows_refuse_the_whole_import(store: Any, tmp_path: Path) -> None:
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    doc = sample_master_data()
    doc["customers"].append({"id": "c-3", "balancePoints": "many"})
    doc["cards"].append({"number": "2770000000018", "customerId": "c-1"})  # bad check digit
    doc["cards"].append({"number": "2770000000031", "customerId": "nobody"})
    doc["products"].append({"sku": "4601234000017", "name": "twice"})
    with pytest.raises(ImportRefused) as err:
        store.import_rows(read_file(write(tmp_path / "bad.json", doc)))
    message = str(err.value)
    assert "customers[2]: balancePoints must be a whole number" in message
    assert "check digit" in message
    assert "appears twice" in message
    assert store.draft_size() == 0  # nothing half-imported
    assert store.publish(NOW, WEEK).changed_rows == 0


def test_a_card_of_an_unknown_customer_is_a_bad_row(store: Any, tmp_path: Path) -> None:
    doc = {"cards": [{"number": "2770000000031", "customerId": "nobody"}]}
    with pytest.raises(ImportRefused, match="not known"):
        store.import_rows(read_file(write(tmp_path / "c.json", doc)))


def test_fractions_and_unknown_sections_are_refused(store: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fraction"):
        list(
            read_file(
                write(tmp_path / "f.json", {"customers": [{"id": "x", "balancePoints": 1.5}]})
            )
        )
    with pytest.raises(InputError, match="not a known section"):
        list(read_file(write(tmp_path / "u.json", {"shops": []})))
    with pytest.raises(InputError, match="no such file"):
        read_file(tmp_path / "missing.json")


def test_json_lines_import_with_line_numbers(store: Any, tmp_path: Path) -> None:
    rows = [{"program": sample_master_data()["program"]}]
    rows += [{"customer": {"id": f"c-{i}", "balancePoints": i}} for i in range(2000)]
    rows += [{"card": {"number": "2770000000017", "customerId": "c-1"}}]
    report = store.import_rows(read_file(lines(tmp_path / "big.jsonl", rows)))
    assert report.by_kind["customer"] == 2000
    bad = [
        *rows[:5],
        "not json",
        {"customers": []},
        {"shop": {}},
        {"customer": {"id": "c-x", "balancePoints": 0.5}},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in bad) + "\n")
    with pytest.raises(ImportRefused) as err:
        store.import_rows(read_file(path))
    message = str(err.value)
    for where in (
        "line 6: not valid JSON",
        "line 7: write one row per line",
        "line 8: 'shop' is not a known kind",
        # its field and rule named (review 39, rev38k)
        "line 9: customer.balancePoints: the number 0.5 has a fraction: write a whole"
        " number of points",
    ):
        assert where in message
    store.publish(NOW, WEEK)
    assert len(store.snapshot_doc(1, 0)["customers"]) == 2000  # the first import only


def test_removals_and_deltas(store: Any) -> None:
    import_doc(store, sample_master_data())
    assert store.publish(NOW, WEEK).version == 1
    import_doc(
        store,
        {
            "products": [{"sku": "4601234000017", "name": "Молоко 2,5%", "category": "dairy"}],
            "removed": {"cards": ["2770000000024"], "offers": ["never-was"]},
        },
    )
    import_doc(
        store,
        sample_master_data() | {"products": [], "cards": [], "customers": [], "categories": []},
    )  # same program: no change
    pub = store.publish(NOW + timedelta(hours=1), WEEK)
    assert pub.version == 2 and pub.changed_rows == 2  # removing what never was is nothing
    delta = store.snapshot_doc(2, 1)
    assert delta["baseVersion"] == 1
    assert [p["name"] for p in delta["products"]] == ["Молоко 2,5%"]
    assert delta["removed"] == {"cards": ["2770000000024"]}
    assert "program" not in delta and delta["customers"] == []
    full = store.snapshot_doc(2, 0)
    assert [c["number"] for c in full["cards"]] == ["2770000000017"]
    # version 1 can still be rebuilt exactly as it was
    assert len(store.snapshot_doc(1, 0)["cards"]) == 2


# ---------------------------------------------------------------- balances in snapshots


def tx(
    device: str, seq: int, customer: str, available: int, pending: int = 0, due: str = ""
) -> TxIn:
    return TxIn(
        device,
        seq,
        "CHECKOUT",
        NOW.isoformat(),
        customer,
        "",
        json.dumps({"receiptId": f"{device}-{seq}"}),
        "{}",
        available,
        pending,
        due,
    )


def test_snapshots_are_the_same_for_every_till_and_count_nothing_twice(store: Any) -> None:
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    later = (NOW + timedelta(days=3)).isoformat()
    store.ingest(
        "a",
        "",
        [tx("a", 1, "c-1", -100), tx("a", 2, "c-1", 0, 50, later), tx("a", 4, "c-1", -7)],
        NOW,
    )
    store.ingest("b", "", [tx("b", 1, "c-1", 30)], NOW)
    store.publish(NOW + timedelta(minutes=1), WEEK)

    def anna(version: int, base: int = 0) -> dict[str, Any]:
        doc = store.snapshot_doc(version, base)
        return {
            "through": doc["appliedThrough"],
            **next(c for c in doc["customers"] if c["id"] == "c-1"),
        }

    v2 = anna(2)
    # a's seq 4 is not contiguous: a counts it itself (above its appliedThrough 2), and
    # nobody else's snapshot counts it yet either
    assert v2["through"] == {"a": 2, "b": 1} and v2["balancePoints"] == 1200 - 100 + 30
    assert v2["pending"] == [{"points": 50, "activatesAt": later.replace("+00:00", "+00:00")}]
    assert anna(2, base=1)["balancePoints"] == v2["balancePoints"]  # delta agrees
    # the gap is filled: seq 3 and 4 are counted now, for every till
    store.ingest("a", "", [tx("a", 3, "c-1", 5)], NOW)
    store.publish(NOW + timedelta(minutes=2), WEEK)
    v3 = anna(3)
    assert v3["through"] == {"a": 4, "b": 1} and v3["balancePoints"] == 1200 - 100 + 30 + 5 - 7
    assert anna(3, base=2)["balancePoints"] == v3["balancePoints"]
    # once the pending points are due at issue time they are folded in
    store.publish(NOW + timedelta(days=4), WEEK)
    folded = next(c for c in store.snapshot_doc(4, 0)["customers"] if c["id"] == "c-1")
    assert folded["balancePoints"] == 1200 - 100 + 30 + 5 - 7 + 50 and "pending" not in folded


def test_full_payload_rows_are_canonical(store: Any) -> None:
    """Rows are written as stored (not re-encoded): the stored text must be canonical."""
    from tillpoint.sync.hub_server import snapshot_payload
    from tillpoint.sync.signing import canonical_json

    data = sample_master_data()
    data["customers"].append({"id": "c-3", "firstName": 'Вера "Ю"', "tier": "base"})
    import_doc(store, data)
    store.publish(NOW, WEEK)
    store.ingest("a", "", [tx("a", 1, "c-2", 40)], NOW)
    store.publish(NOW + timedelta(minutes=1), WEEK)
    for version in (1, 2):
        _, payload = snapshot_payload(store, version, 0)
        lines = payload.splitlines()
        assert len(lines) > 5
        for line in lines:
            assert canonical_json(json.loads(line)) == line
    doc = store.snapshot_doc(2, 0)
    by_id = {c["id"]: c for c in doc["customers"]}
    assert by_id["c-2"]["balancePoints"] == 340 and by_id["c-3"]["balancePoints"] == 0


def test_a_row_with_nothing_to_add_is_written_as_stored(store: Any, monkeypatch: Any) -> None:
    """Empty `pending`/`expiring` lists are nothing to fold: such a row with no counted
    moves skips the replay (every imported customer carried them, so every row of a
    chain's snapshot was replayed: ≈ 17 µs each, 17 s a million customers)."""
    from tillpoint.sync import hub_rules

    data = sample_master_data()
    data["customers"].append(
        {"id": "c-9", "tier": "base", "balancePoints": 70, "pending": [], "expiring": []}
    )
    import_doc(store, data)
    replayed: list[str] = []
    real = hub_rules._balance_row

    def spy(text: str, *args: Any) -> str:
        replayed.append(json.loads(text)["id"])
        return real(text, *args)

    monkeypatch.setattr(hub_rules, "_balance_row", spy)
    store.publish(NOW, WEEK)
    row = next(c for c in store.snapshot_doc(1, 0)["customers"] if c["id"] == "c-9")
    assert "c-9" not in replayed
    assert row["balancePoints"] == 70 and not row.get("pending") and not row.get("expiring")


# ---------------------------------------------------------------- full == full + deltas

ops = st.lists(
    st.one_of(
        st.tuples(st.just("customer"), st.integers(0, 5), st.integers(-50, 500)),
        st.tuples(st.just("remove"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("tx"), st.integers(0, 5), st.integers(-30, 30)),
        st.tuples(st.just("fill"), st.just(0), st.just(0)),
        st.tuples(st.just("publish"), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops)
def test_applying_the_deltas_gives_the_full_snapshot(
    hub_store_factory: Any, steps: list[tuple[str, int, int]]
) -> None:
    """For any history, a till that follows every delta holds exactly the full snapshot.

    Transactions come from two tills, some out of order (a seq held back, sent later by
    "fill"), so counting starts for the held-back ones and those behind them only once
    they are contiguous."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = hub_store_factory()  # a new empty hub each example
        follower = Agent(root / "follower", "a", clock=lambda: NOW)
        seqs = {"a": 0, "b": 0}
        held: list[TxIn] = []
        try:
            import_doc(store, sample_master_data())
            store.publish(NOW, WEEK)
            follower.load_snapshot(store.snapshot_doc(1, 0))
            for kind, n, value in [*steps, ("publish", 0, 0)]:
                cid = f"c-{n}"
                if kind == "customer":
                    import_doc(store, {"customers": [{"id": cid, "balancePoints": value}]})
                elif kind == "remove":
                    import_doc(store, {"removed": {"customers": [cid]}})
                elif kind == "tx":
                    device = "a" if value % 2 else "b"
                    if value % 3 == 0:  # this seq arrives late: a gap until "fill"
                        seqs[device] += 1
                        held.append(tx(device, seqs[device], cid, value + 1))
                    seqs[device] += 1
                    store.ingest(device, "", [tx(device, seqs[device], cid, value)], NOW)
                elif kind == "fill":
                    for late in held:
                        store.ingest(late.device_id, "", [late], NOW)
                    held.clear()
                else:
                    latest = store.latest()
                    pub = store.publish(NOW + timedelta(seconds=latest.version), WEEK)
                    follower.load_snapshot(store.snapshot_doc(pub.version, latest.version))
            version = store.latest().version
            fresh = Agent(root / "fresh", "a", clock=lambda: NOW)
            fresh.load_snapshot(store.snapshot_doc(version, 0))
            fresh.close()
            assert dump(root / "follower") == dump(root / "fresh")
        finally:
            follower.close()
            store.close()


def dump(data_dir: Path) -> dict[str, Any]:
    conn = open_cache(data_dir)
    try:
        rows = cache_mod.dump(conn)
        rows["meta"] = [r for r in rows["meta"] if r[0] not in ("loaded_at",)]
        # phone keys are hashed with each till's own secret
        rows["customers"] = [(r[0], *r[2:]) for r in rows["customers"]]
        return rows
    finally:
        conn.close()


def test_two_enrolments_at_once_of_ids_with_one_normal_form_never_both_pass(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub enroll` refuses an id whose normal form (the till's coupon codes) is another
    device's; the check reads every device, then inserts. Two enrolments at once, on two
    connections (PostgreSQL: two sessions), must not both pass it. The check is made slow
    (each enrolled device's normal form takes 20 ms) so that the two overlap."""
    import threading
    import time

    from tillpoint.sync import hub_sql

    now = datetime(2026, 11, 30, tzinfo=UTC)
    store.enroll("seed-till", "e" * 64, now)
    normal_form = hub_sql.coupon_code

    def slow(device_id: str) -> str:
        time.sleep(0.02)
        return normal_form(device_id)

    monkeypatch.setattr(hub_sql, "coupon_code", slow)
    for round_ in range(4):
        ids = (f"till-{round_}", f"TILL {round_}")
        start = threading.Barrier(2)
        passed: list[str] = []
        refused: list[str] = []

        def enrol(
            device_id: str, start: threading.Barrier, passed: list[str], refused: list[str]
        ) -> None:
            start.wait(5)
            try:
                store.enroll(device_id, "f" * 64, now)
                passed.append(device_id)
            except InputError:
                refused.append(device_id)

        threads = [threading.Thread(target=enrol, args=(d, start, passed, refused)) for d in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(passed) == 1 and len(refused) == 1, (passed, refused)


def test_a_pushed_receipt_is_looked_up_by_its_index_not_the_devices_rows(tmp_path: Path) -> None:
    """The dedupe by receipt id (`SqlTx.booked`) runs for every pushed receipt. Written
    with ORDER BY seq LIMIT 1 it had SQLite walk the device's rows in seq order: a scan a
    receipt, the upload of 20,000 receipts of one till at 140 a second instead of 4,000+.
    Its statement must search `transactions_receipt` and scan nothing."""
    import sqlite3

    from tillpoint.sync.hub_sqlite import SqliteHubStore

    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        seen: list[str] = []
        with store.write_tx() as tx:
            conn: sqlite3.Connection = tx.conn  # type: ignore[attr-defined]
            conn.set_trace_callback(seen.append)
            assert tx.booked("till-1", "CHECKOUT", "r-1", "r-1") is None
            conn.set_trace_callback(None)
            statement = next(s for s in seen if "FROM transactions" in s)
            plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
        assert "transactions_receipt" in plan and "SCAN" not in plan, plan
    finally:
        store.close()


def test_a_hub_database_a_later_release_migrated_is_refused(tmp_path: Path) -> None:
    """As a till's files (tests/test_ledger_owner.py): a rollback of the hub's SQLite
    store names the steps it does not know instead of serving on tables it does not."""
    import sqlite3

    from tillpoint.agent.errors import StorageError
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    path = tmp_path / "hub.db"
    SqliteHubStore(path).close()
    later = sqlite3.connect(path)
    later.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('tillpoint.hub', 'm099_from_the_future', '2027-01-01')"
    )
    later.commit()
    later.close()
    step = r"m099_from_the_future \(tillpoint.hub\) are unknown to this one"
    with pytest.raises(StorageError, match=f"hub.db: the hub database was written by .*{step}"):
        SqliteHubStore(path)
