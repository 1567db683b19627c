"""Review 25 (hub25): the reference hub as the retailer's central team uses it.

- Seeded random histories of imports of every kind of row (products, categories,
  customers, cards, offers, coupons, the program; added, changed, removed) and
  publications: a till that applied every delta answers exactly what a till that loaded
  the full snapshot of the same version answers (identify, quote with explain, balance of
  every card) and holds the same cache rows (docs/CONTRACT.md §3), on both stores.
- `hub import` of bad data: one line, exit 2, the hub's data unchanged.
"""

from __future__ import annotations

import json
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.db import open_cache
from tillpoint.agent.errors import InputError
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc

from .conftest import ean13

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
WEEK = 7 * 86400.0
AT = "2026-11-23T10:15:00+03:00"


SKUS = [ean13(f"460123400{n:03d}") for n in range(1, 7)]
CARDS = [ean13(f"277000000{n:03d}") for n in range(1, 8)]
CUSTOMERS = [f"c-{n}" for n in range(5)]
CATEGORIES = ["food", "dairy", "bakery", "cheese"]
OFFERS = [f"o-{n}" for n in range(6)]
COUPONS = ["SORRY-1", "SORRY-2", "SORRY-3"]
KINDS = ["PERCENT_OFF", "AMOUNT_OFF", "FIXED_PRICE", "BONUS_MULTIPLIER", "RECEIPT_PERCENT_OFF"]


def _program(rng: random.Random) -> dict[str, Any]:
    return {
        "currency": "RUB",
        "timezone": rng.choice(["Europe/Moscow", "Asia/Yekaterinburg"]),
        "pointValueMinor": rng.choice([1, 100]),
        "maxRedeemPercent": rng.choice([30, 50, 100]),
        "offlineRedeemLimitPoints": rng.choice([0, 500, 100000]),
        "birthdayMultiplier": rng.choice([1, 5]),
        "pointsLifetimeDays": rng.choice([0, 30]),
        "tiers": [
            {"code": "base", "accrualPercent": rng.choice(["3", "1.5"])},
            {"code": "gold", "accrualPercent": "7"},
        ],
    }


def _row(rng: random.Random, kind: str, key: str) -> dict[str, Any]:
    if kind == "products":
        return {
            "sku": key,
            "name": f"товар {rng.randint(0, 9)}",
            "category": rng.choice([*CATEGORIES, "none"]),
            "excludedFromLoyalty": rng.random() < 0.2,
        }
    if kind == "categories":
        parent = rng.choice([None, *CATEGORIES[: CATEGORIES.index(key)]])
        return {"code": key, "name": key.upper(), **({"parent": parent} if parent else {})}
    if kind == "customers":
        row: dict[str, Any] = {
            "id": key,
            "firstName": rng.choice(["Анна", "Борис", ""]),
            "tier": rng.choice(["base", "gold"]),
            "balancePoints": rng.randint(0, 3000),
            "segment": rng.choice(["NEW", "ACTIVE", "AT_RISK", "CHURNED"]),
            "controlGroups": rng.sample(["camp-1", "camp-2"], rng.randint(0, 1)),
        }
        if rng.random() < 0.5:
            row["phone"] = f"+7916{rng.randint(0, 2):07d}"
        if rng.random() < 0.5:
            row["birthday"] = rng.choice(["1990-11-25", "1985-03-10"])
        if rng.random() < 0.3:
            row["pending"] = [
                {"points": rng.randint(1, 50), "activatesAt": "2026-11-30T00:00:00+03:00"}
            ]
        if rng.random() < 0.3:
            pts = rng.randint(0, row["balancePoints"])
            row["expiring"] = [{"points": pts, "expiresAt": "2026-12-31T23:59:59+03:00"}]
        return row
    if kind == "cards":
        return {
            "number": key,
            "customerId": rng.choice(CUSTOMERS),
            "status": rng.choice(["ACTIVE", "ACTIVE", "BLOCKED", "LOST"]),
        }
    if kind == "offers":
        offer_kind = rng.choice(KINDS)
        offer: dict[str, Any] = {
            "id": key,
            "campaignId": rng.choice(["camp-1", "camp-2", "camp-3"]),
            "kind": offer_kind,
            "value": str(rng.choice([2, 5, 15, 50])),
            "priority": rng.randint(0, 3),
            "rank": rng.randint(0, 3),
            "printable": rng.random() < 0.5,
            "printText": "скидка",
            "validFrom": "2026-11-01T00:00:00+03:00",
            "validTo": rng.choice(["2026-11-30T23:59:59+03:00", "2026-11-20T00:00:00+03:00"]),
            "couponRequired": rng.random() < 0.2,
        }
        if offer_kind == "RECEIPT_PERCENT_OFF":
            offer["minTotalMinor"] = rng.choice([0, 10000])
        else:
            offer["skus"] = rng.sample(SKUS, rng.randint(0, 2))
            offer["categories"] = rng.sample(CATEGORIES, rng.randint(0, 1))
        if rng.random() < 0.5:
            offer["customerId"] = rng.choice(CUSTOMERS)
        return offer
    assert kind == "coupons"
    coupon: dict[str, Any] = {"code": key, "offerId": rng.choice(OFFERS)}
    if rng.random() < 0.5:
        coupon["customerId"] = rng.choice(CUSTOMERS)
    return coupon


KEYS = {
    "products": SKUS,
    "categories": CATEGORIES,
    "customers": CUSTOMERS,
    "cards": CARDS,
    "offers": OFFERS,
    "coupons": COUPONS,
}


def _batch(rng: random.Random, first: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if first or rng.random() < 0.3:
        doc["program"] = _program(rng)
    removed: dict[str, list[str]] = {}
    for kind, keys in KEYS.items():
        chosen = keys if first else rng.sample(keys, rng.randint(0, 2))
        doc[kind] = [_row(rng, kind, k) for k in chosen]
        if not first and rng.random() < 0.3:
            gone = [k for k in rng.sample(keys, 1) if k not in chosen]
            if gone:
                removed[kind] = gone
    if removed:
        doc["removed"] = removed
    return doc


def _tx(device: str, seq: int, customer: str, available: int, card: str = "") -> TxIn:
    return TxIn(
        device,
        seq,
        "CHECKOUT",
        NOW.isoformat(),
        customer,
        card,
        json.dumps({"receiptId": f"{device}-{seq}"}),
        "{}",
        available,
        0,
        "",
    )


def _dump(data_dir: Path) -> dict[str, Any]:
    conn = open_cache(data_dir)
    try:
        rows = cache_mod.dump(conn)
        rows["meta"] = [r for r in rows["meta"] if r[0] not in ("loaded_at",)]
        rows["customers"] = [(r[0], *r[2:]) for r in rows["customers"]]  # per-till phone hash
        return rows
    finally:
        conn.close()


def _answer(call: Any) -> Any:
    try:
        result = call()
    except Exception as exc:  # a refusal is an answer too: compare its words
        return f"{type(exc).__name__}: {exc}"
    return result.to_json() if hasattr(result, "to_json") else result


def _answers(agent: Agent) -> dict[str, Any]:
    at = datetime.fromisoformat(AT)
    phones = [f"+7916{n:07d}" for n in range(3)]
    out: dict[str, Any] = {}
    for text in [*CARDS, *phones]:
        out[f"identify {text}"] = _answer(lambda t=text: agent.identify(t))
        out[f"balance {text}"] = _answer(lambda t=text: agent.balance(t, at))
    for n, card in enumerate([*CARDS, "2770000000994"]):
        doc = {
            "receiptId": f"q-{n}",
            "storeId": "s1",
            "tillId": "t1",
            "at": AT,
            "card": card,
            "lines": [
                {"sku": sku, "qty": str(1 + i % 3), "priceMinor": 5000 + 100 * i}
                for i, sku in enumerate(SKUS)
            ],
            "redeemPoints": -1,
            "coupons": COUPONS,
            "explain": True,
        }
        out[f"quote {card}"] = _answer(lambda d=doc: agent.quote(receipt_from_json(d)))
    return out


def _history(store: Any, root: Path, seed: int) -> None:
    """`follower` applies every delta; `skipper` only some, each from its own version (a
    till that was off for a while)."""
    rng = random.Random(seed)
    follower = Agent(root / "follower", "till-1", clock=lambda: NOW)
    skipper = Agent(root / "skipper", "till-1", clock=lambda: NOW)
    seqs = {"a": 0, "b": 0}
    late: list[TxIn] = []  # held back: a gap in its device's seqs until it arrives
    try:
        for step in range(8):
            doc = _batch(rng, step == 0)
            before = store.draft_size()
            try:
                import_doc(store, doc)
            except InputError:
                assert step > 0, "the first, complete import is refused"
                assert store.draft_size() == before  # a refused import stores nothing
            for _ in range(rng.randint(0, 3)):
                device = rng.choice(["a", "b"])
                seqs[device] += 1
                if rng.random() < 0.3:  # an UNKNOWN card's sale: the hub settles it
                    tx = _tx(device, seqs[device], "", rng.randint(0, 40), rng.choice(CARDS))
                else:
                    customer = rng.choice([*CUSTOMERS, "c-gone"])
                    tx = _tx(device, seqs[device], customer, rng.randint(-40, 40))
                if rng.random() < 0.2:
                    late.append(tx)
                else:
                    store.ingest(device, "", [tx], NOW)
            if late and rng.random() < 0.4:
                for tx in late:
                    store.ingest(tx.device_id, "", [tx], NOW)
                late.clear()
            if step == 0 or rng.random() < 0.7:
                latest = store.latest()
                base = latest.version if latest else 0
                refresh = step > 0 and rng.random() < 0.3  # a server's balance refresh
                pub = store.publish(
                    NOW + timedelta(seconds=step),
                    WEEK,
                    include_draft=not refresh,
                    reason="refresh" if refresh else "publish",
                )
                follower.load_snapshot(store.snapshot_doc(pub.version, base))
                if step == 0 or rng.random() < 0.4:
                    own = skipper.status().cache_version if step else 0
                    skipper.load_snapshot(store.snapshot_doc(pub.version, own))
        latest = store.latest()
        pub = store.publish(NOW + timedelta(seconds=99), WEEK)
        follower.load_snapshot(store.snapshot_doc(pub.version, latest.version))
        skipper.load_snapshot(store.snapshot_doc(pub.version, skipper.status().cache_version))
        fresh = Agent(root / "fresh", "till-1", clock=lambda: NOW)
        try:
            fresh.load_snapshot(store.snapshot_doc(pub.version, 0))
            expected = _answers(fresh)
            assert _answers(follower) == expected, f"seed {seed}"
            assert _answers(skipper) == expected, f"seed {seed}"
        finally:
            fresh.close()
    finally:
        follower.close()
        skipper.close()
    assert _dump(root / "follower") == _dump(root / "fresh"), f"seed {seed}"
    assert _dump(root / "skipper") == _dump(root / "fresh"), f"seed {seed}"


@pytest.mark.parametrize(
    "seed", [*range(3), *(pytest.param(n, marks=pytest.mark.slow) for n in range(3, 24))]
)
def test_a_till_that_followed_every_delta_answers_as_one_that_loaded_the_full_snapshot(
    hub_store_factory: Any, seed: int
) -> None:
    """docs/CONTRACT.md §3: a row in a delta replaces the row with that key, `removed`
    lists the keys that go, `program` replaces the program; every kind of row."""
    with tempfile.TemporaryDirectory() as tmp:
        store = hub_store_factory()
        _history(store, Path(tmp), seed)


# ---------------------------------------------------------------- bad imports

GOOD = {
    "program": {"currency": "RUB", "tiers": [{"code": "base", "accrualPercent": "3"}]},
    "categories": [
        {"code": "food", "name": "Продукты"},
        {"code": "dairy", "parent": "food", "name": "Молочные"},
    ],
    "products": [{"sku": SKUS[0], "name": "Молоко", "category": "dairy"}],
    "customers": [{"id": "c-1", "tier": "base", "balancePoints": 100}],
    "cards": [{"number": CARDS[0], "customerId": "c-1"}],
}


def _draft(store: Any) -> Any:
    latest = store.latest()
    return (store.draft_size(), latest.version if latest else 0)


@pytest.mark.parametrize(
    "categories",
    [
        [{"code": "a", "parent": "a"}],
        [{"code": "a", "parent": "b"}, {"code": "b", "parent": "a"}],
        [{"code": "food", "parent": "dairy", "name": "Продукты"}],  # with the stored tree
    ],
    ids=["itself", "two", "with-stored"],
)
def test_a_category_tree_with_a_cycle_is_refused_and_nothing_is_imported(
    hub_store_factory: Any, categories: list[dict[str, Any]]
) -> None:
    """docs/CONTRACT.md §3 (categories form a tree: an offer on a category reaches its
    descendants): a cycle would make every category of it the ancestor of the others, so
    an offer on one priced the goods of all; the import is refused, nothing imported."""
    store = hub_store_factory()
    try:
        import_doc(store, GOOD)
        store.publish(NOW, WEEK)
        before = _draft(store)
        with pytest.raises(InputError, match="its own ancestor") as refused:
            import_doc(store, {"categories": categories, "customers": [{"id": "c-9"}]})
        assert "\n" not in str(refused.value)
        assert _draft(store) == before
        store.publish(NOW + timedelta(seconds=1), WEEK)
        doc = store.snapshot_doc(store.latest().version, 0)
        assert [c["id"] for c in doc["customers"]] == ["c-1"]
        assert {c["code"]: c.get("parent") for c in doc["categories"]} == {
            "food": None,
            "dairy": "food",
        }
    finally:
        store.close()


def test_hub_import_of_a_category_cycle_is_one_line_exit_2(cli: Any, tmp_path: Path) -> None:
    hub = ["--hub-dir", str(tmp_path / "hub")]
    assert cli("hub", "import", GOOD, *hub, "--publish").code == 0
    run = cli("hub", "import", {"categories": [{"code": "a", "parent": "a"}]}, *hub, "--json")
    assert run.code == 2 and run.out == ""
    assert run.err.count("\n") == 1 and "category 'a' is its own ancestor" in run.err, run.err
    assert cli("hub", "status", *hub, "--json").json()["draftRows"] == 0


@pytest.mark.parametrize("field", ["maxRedeemPercent", "birthdayMultiplier"])
def test_a_program_figure_that_is_no_int64_is_refused_by_hub_import(
    cli: Any, tmp_path: Path, field: str
) -> None:
    """docs/CONTRACT.md §3: the program's figures are int64 (the proto's `Program`): a
    fraction there ("12.5") was imported and published, a snapshot no protobuf reader of
    the program takes."""
    hub = ["--hub-dir", str(tmp_path / "hub")]
    doc = {**GOOD, "program": {**GOOD["program"], field: "12.5"}}
    run = cli("hub", "import", doc, *hub, "--json")
    assert run.code == 2 and run.out == "" and run.err.count("\n") == 1, run
    assert f"{field} must be a whole number" in run.err, run.err
    assert cli("hub", "status", *hub, "--json").json()["draftRows"] == 0


def test_the_published_program_writes_its_int64_figures_as_numbers(hub_store_factory: Any) -> None:
    """docs/CONTRACT.md §3: `"maxRedeemPercent": 30, "birthdayMultiplier": 5`, as every
    other int64 of the program (they were the strings "30" and "5", given or defaulted)."""
    from google.protobuf import json_format
    from tillpoint.v1 import tillpoint_pb2

    store = hub_store_factory()
    try:
        import_doc(store, {**GOOD, "program": {**GOOD["program"], "maxRedeemPercent": "50"}})
        store.publish(NOW, WEEK)
        program = store.snapshot_doc(1, 0)["program"]
        assert program["maxRedeemPercent"] == 50 and program["birthdayMultiplier"] == 5
        assert all(
            not isinstance(v, str) for k, v in program.items() if k not in ("currency", "timezone")
        )
        json_format.ParseDict(program, tillpoint_pb2.Program())
    finally:
        store.close()


# ---------------------------------------------------------------- hub status


def test_hub_status_says_when_each_till_last_uploaded_and_the_holds_outstanding(
    cli: Any, tmp_path: Path
) -> None:
    """What the central team needs at a glance: which tills uploaded and when (one enrolled
    and silent shows no upload), and the redemption holds tills placed online that are not
    settled yet (points the hub keeps out of the customers' reach)."""
    from tillpoint.sync.hub_server import HubDir

    hub_dir = tmp_path / "hub"
    hub = ["--hub-dir", str(hub_dir)]
    assert cli("hub", "import", GOOD, *hub, "--publish").code == 0
    for device in ("till-1", "till-2"):
        assert cli("hub", "enroll", device, *hub, "--address", "127.0.0.1:50070").code == 0
    now = datetime.now(UTC)
    store = HubDir(hub_dir).open_store()
    try:
        store.ingest("till-1", "", [_tx("till-1", 1, "c-1", 3)], now)
        granted = store.authorise("till-2", "r-9", "c-1", 40, now, [], now, 900.0)
        assert granted.authorised == 40, granted
    finally:
        store.close()
    run = cli("hub", "status", *hub, "--json")
    assert run.code == 0, run
    status = run.json()
    devices = {d["deviceId"]: d for d in status["devices"]}
    assert devices["till-1"]["ackedThroughSeq"] == 1
    last = datetime.fromisoformat(devices["till-1"]["lastUploadAt"])
    assert abs((last - now).total_seconds()) < 60
    assert devices["till-2"]["lastUploadAt"] is None
    assert status["holdsOutstanding"] == {"holds": 1, "points": 40}
    human = cli("hub", "status", *hub).out
    assert "last upload" in human and "1 redemption hold(s) outstanding (40 points)" in human


# ---------------------------------------------------------------- hub enroll


def test_a_till_named_in_cyrillic_is_enrolled_and_syncs(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9 (device_id, default the host name): a till's configuration takes
    `касса-1`, so `hub enroll` must make its bundle: it was "internal error: ValueError:
    URI values should be passed as an A-label string", exit 1."""
    from tillpoint.sync.loopback import LoopbackHub

    hub_dir = tmp_path / "hub"
    hub = ["--hub-dir", str(hub_dir)]
    assert cli("hub", "import", GOOD, *hub, "--publish").code == 0
    server = LoopbackHub(hub_dir)
    try:
        bundle = tmp_path / "b.json"
        run = cli("hub", "enroll", "касса-1", *hub, "--address", server.address, "--out", bundle)
        assert run.code == 0, run
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "касса-1")
        assert cli("sync", "install", bundle, "--json").code == 0
        run = cli("sync", "now", "--json")
        assert run.code == 0, run
        assert run.json()["pull"]["version"] == 1
    finally:
        server.stop()


def test_a_device_id_longer_than_a_certificate_name_is_refused_in_one_line(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate's common name (the device's id there) has at most 64 characters (a
    host name too): `hub enroll` of 65 to 100 was "internal error: ValueError: Attribute's
    length must be >= 1 and <= 64", exit 1; a till configured with one could never be
    enrolled. Both refuse it now, exit 2; 64 is enrolled."""
    hub = ["--hub-dir", str(tmp_path / "hub")]
    assert cli("hub", "import", GOOD, *hub).code == 0
    run = cli("hub", "enroll", "t" * 65, *hub)
    assert run.code == 2 and run.err.count("\n") == 1 and "64" in run.err, run
    assert cli("hub", "enroll", "t" * 64, *hub).code == 0
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "t" * 65)
    run = cli("status", "--json")
    assert run.code == 2 and "64" in run.err, run


def test_renewing_a_device_the_hub_never_enrolled_is_refused(cli: Any, tmp_path: Path) -> None:
    """`hub enroll ID --renew` is for a till the hub knows (its certificate lost or
    ending): with a mistyped id (`til-1`) it enrolled a new device nobody runs, silently,
    and the till meant kept its old certificate. Refused in one line, nothing enrolled."""
    hub = ["--hub-dir", str(tmp_path / "hub")]
    assert cli("hub", "import", GOOD, *hub).code == 0
    assert cli("hub", "enroll", "till-1", *hub).code == 0
    run = cli("hub", "enroll", "til-1", "--renew", *hub, "--json")
    assert run.code == 2 and run.out == "" and run.err.count("\n") == 1, run
    assert "til-1 is not enrolled" in run.err and "without --renew" in run.err, run.err
    status = cli("hub", "status", *hub, "--json").json()
    assert [d["deviceId"] for d in status["devices"]] == ["till-1"]
    assert not (tmp_path / "hub" / "bundles" / "til-1.json").exists()
    assert cli("hub", "enroll", "till-1", "--renew", *hub).code == 0


def test_two_imports_at_once_cannot_close_a_category_ring_between_them(
    hub_store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each import checks the tree it leaves; two at once (PostgreSQL: two sessions, each
    seeing only its own rows until it commits) must not each pass with one half of a ring
    (a → b, b → a). The check is made slow (50 ms) so that the two overlap."""
    import threading
    import time

    from tillpoint.sync import hub_postgres, hub_sqlite

    store = hub_store_factory()
    try:
        import_doc(store, GOOD)
        store.publish(NOW, WEEK)
        for module in (hub_postgres, hub_sqlite):
            real = module.category_cycles

            def slow(tx: Any, real: Any = real) -> Any:
                time.sleep(0.05)
                return real(tx)

            monkeypatch.setattr(module, "category_cycles", slow)
        for round_ in range(3):
            a, b = f"a{round_}", f"b{round_}"
            start = threading.Barrier(2)
            refused: list[str] = []

            def load(code: str, parent: str, start: threading.Barrier, refused: list[str]) -> None:
                start.wait(5)
                try:
                    import_doc(store, {"categories": [{"code": code, "parent": parent}]})
                except InputError as exc:
                    refused.append(str(exc))

            threads = [
                threading.Thread(target=load, args=(a, b, start, refused)),
                threading.Thread(target=load, args=(b, a, start, refused)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(refused) == 1 and "its own ancestor" in refused[0], refused
    finally:
        store.close()


@pytest.mark.parametrize("name", ["master.json", "master.jsonl"])
def test_an_import_file_with_a_byte_order_mark_is_imported(
    cli: Any, tmp_path: Path, name: str
) -> None:
    """docs/CONTRACT.md (every JSON input is UTF-8; a leading byte order mark is skipped):
    files saved by Windows tools (Excel's "CSV UTF-8", Notepad) start with one, and `hub
    import` refused them as "not valid JSON (Unexpected UTF-8 BOM …)"."""
    path = tmp_path / name
    if name.endswith(".jsonl"):
        rows = [{"customer": GOOD["customers"][0]}, {"card": GOOD["cards"][0]}]
        text = "\n".join(json.dumps(r) for r in rows) + "\n"
    else:
        text = json.dumps(GOOD, ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    run = cli("hub", "import", path, "--hub-dir", str(tmp_path / "hub"), "--json")
    assert run.code == 0, run
    assert run.json()["byKind"]["customer"] == 1


def test_importing_a_signed_snapshot_or_a_bundle_says_what_the_file_is(
    cli: Any, tmp_path: Path
) -> None:
    """`hub import` of the hub's own `hub export` file, or of a till's enrolment bundle,
    said "format is not a known section" / "caCertificate is not a known section": one
    line that names what the file is, exit 2, nothing imported."""
    hub_dir = tmp_path / "hub"
    hub = ["--hub-dir", str(hub_dir)]
    assert cli("hub", "import", GOOD, *hub, "--publish").code == 0
    assert cli("hub", "enroll", "till-1", *hub).code == 0
    signed = tmp_path / "signed.json"
    assert cli("hub", "export", "till-1", *hub, "--out", signed).code == 0
    for path, words in (
        (signed, "a signed snapshot"),
        (hub_dir / "bundles" / "till-1.json", "an enrolment bundle"),
    ):
        run = cli("hub", "import", path, *hub, "--json")
        assert run.code == 2 and run.err.count("\n") == 1 and words in run.err, run
        assert "not master data" in run.err, run.err
    assert cli("hub", "status", *hub, "--json").json()["draftRows"] == 0


def test_a_section_given_twice_in_an_import_file_is_refused(cli: Any, tmp_path: Path) -> None:
    """A JSON import with `"customers"` twice (two exports pasted together) imported only
    the last one, silently: the customers of the first were simply not there. Refused,
    one line, exit 2, nothing imported."""
    path = tmp_path / "twice.json"
    first = json.dumps(GOOD["customers"])
    path.write_text('{"customers": ' + first + ', "customers": [{"id": "c-2"}]}', encoding="utf-8")
    hub = ["--hub-dir", str(tmp_path / "hub")]
    run = cli("hub", "import", path, *hub, "--json")
    assert run.code == 2 and run.err.count("\n") == 1, run
    assert "customers is given twice" in run.err, run.err
    assert cli("hub", "status", *hub, "--json").json()["draftRows"] == 0
