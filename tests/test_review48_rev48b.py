"""Review 48 (rev48b): a second reading of perf48's `models.stored_offers` (docs/DECISIONS.md,
"Review 48 (rev48b)"; docs/PERFORMANCE.md, "A known card's quote, cheaper").

A customer's personal offers read back from the cache are parsed by a model made of
`Offer`'s field types without its Python validators, and each is given `Offer`'s class
with the fields as parsed. These tests hold every offer a till's cache can hold — rows
made by the snapshot's own line reader (`snapshot_stream._rows`: what `tillpoint
snapshot load` stores, text and all), the rows older releases stored (tests/fixtures/
upgrade), rows loaded by the real CLI, full and delta — to the full parse
(`TypeAdapter(list[Offer]).validate_json(text, context=STORED)`): the same class, fields
in the same order with the same values and types (their repr), fields set, equality,
hash, dumps, derived fields, pickling and copies.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import tarfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from tillpoint.agent.errors import InputError
from tillpoint.agent.models import STORED, Offer, stored_offers
from tillpoint.agent.snapshot_stream import _rows

HERE = Path(__file__).resolve().parent
FULL = TypeAdapter(list[Offer])
MOSCOW_MONDAY_NOON = datetime.fromisoformat("2026-11-23T12:00:00+03:00")


def _state(offer: Offer) -> list[tuple[str, str, str]]:
    """Each entry of the offer's `__dict__` in order: name, type, repr (a Decimal's
    exponent, a time's offset and its tzinfo's class, a tuple's members)."""
    return [(k, type(v).__qualname__, repr(v)) for k, v in vars(offer).items()]


def _derived(offer: Offer) -> tuple[object, ...]:
    return (
        offer.valid_span,
        offer.has_window,
        offer.gated,
        tuple(w.seconds for w in offer.hours),
        offer.valid_at(MOSCOW_MONDAY_NOON),
        offer.in_window(MOSCOW_MONDAY_NOON, 1),
        offer.in_window(MOSCOW_MONDAY_NOON.replace(hour=23, minute=30), None),
    )


def assert_identical(text: str) -> list[Offer]:
    """`stored_offers(text)` is the full parse of `text`, offer by offer, in every way a
    till can look at one (or both refuse it, in the same words)."""
    try:
        full = FULL.validate_json(text, context=STORED)
    except ValueError as refused:
        with pytest.raises(type(refused)) as fast_refused:
            stored_offers(text)
        assert str(fast_refused.value) == str(refused)
        return []
    fast = stored_offers(text)
    assert [type(o) for o in fast] == [Offer] * len(full)
    for a, b in zip(fast, full, strict=True):
        assert _state(a) == _state(b)
        assert a.model_fields_set == b.model_fields_set
        assert (a.__pydantic_extra__, a.__pydantic_private__) == (
            b.__pydantic_extra__,
            b.__pydantic_private__,
        )
        assert a == b and hash(a) == hash(b)
        assert repr(a) == repr(b)
        assert repr(a.model_dump()) == repr(b.model_dump())
        assert a.model_dump_json(by_alias=True) == b.model_dump_json(by_alias=True)
        assert a.model_dump_json(by_alias=True, exclude_unset=True) == b.model_dump_json(
            by_alias=True, exclude_unset=True
        )
        assert _derived(a) == _derived(b)
        # with the derived fields now in both `__dict__`s: still equal, same hash, same state
        assert a == b and hash(a) == hash(b) and _state(a) == _state(b)
        for made in (
            pickle.loads(pickle.dumps(a)),
            a.model_copy(),
            a.model_copy(deep=True),
            copy.deepcopy(a),
        ):
            assert type(made) is Offer and made == b and hash(made) == hash(b)
            assert made.model_fields_set == b.model_fields_set
        again = Offer.model_validate_json(a.model_dump_json(by_alias=True), context=STORED)
        assert again == b and hash(again) == hash(b)
        assert pickle.loads(pickle.dumps(a)) == pickle.loads(pickle.dumps(b))
    return fast


def _stored_text(line: str) -> str | None:
    """The text `tillpoint snapshot load` stores for an offers line (`_rows`: the line as
    given, or written again without its nulls), None when the snapshot refuses it."""
    try:
        rows = list(_rows(iter([(1, line)]), section="offers"))
    except InputError:
        return None
    assert len(rows) == 1
    _section, row, text = rows[0]
    assert isinstance(row, Offer)
    return text


# ---------------------------------------------------------------- offers of any spelling

_KINDS = (
    "PERCENT_OFF",
    "AMOUNT_OFF",
    "FIXED_PRICE",
    "BONUS_MULTIPLIER",
    "RECEIPT_PERCENT_OFF",
    "EXTRA_POINTS",
    "QUANTITY_PRICE",
    "MULTIBUY",
)
_TEXTS = st.sampled_from(
    ["", "x", "Молоко −15 %", "🥛🍞 2 за 1", "a\u200bb", "  пробел  ", "\\", "é", "𝔘"]
)
_KEYS = st.sampled_from(["s1", "4601234000017", "молоко", "🍞", "c" * 200, " a "])
_DECIMALS = st.sampled_from(
    ["", "0", "10", "15.0", "0.5", "1e1", "100", "100.000", "150", "2.5", "007", "1.2345", 5, 0]
)
_QTYS = st.sampled_from(["", "1", "2", "2.0", "0.5", "1.250", "3.000", "0.001", "1e1", 2, []])
_TIMES = st.sampled_from(
    [
        "",
        [],
        None,
        "2026-11-01T00:00:00+03:00",
        "2026-11-30T23:59:59.5Z",
        "2026-11-30t23:59:59z",
        "2026-11-30 23:59+03:00",
        "2016-12-31T23:59:60Z",
        "2026-11-23T10:15:00.123456789-05:00",
        "9999-12-31T23:59:59Z",
        "2026-11-30T23:59:59+0300",
    ]
)
_CLOCKS = st.sampled_from(["00:00", "09:30", "22:00", "02:00", "23:59", "24:00", "12:00"])
_WEEKDAYS = st.lists(st.one_of(st.integers(1, 7), st.sampled_from(["3", "7", "0"])), max_size=4)
_INTS = st.one_of(st.integers(-3, 10**6), st.sampled_from(["-3", "1000", "9223372036854775807"]))
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "campaignId": _TEXTS,
    "customerId": st.sampled_from(["c1", "c1", "", None, "c" * 201]),
    "skus": st.lists(_KEYS, max_size=3),
    "categories": st.lists(_KEYS, max_size=2),
    "value": _DECIMALS,
    "minQty": _QTYS,
    "minTotalMinor": _INTS,
    "validFrom": _TIMES,
    "validTo": _TIMES,
    "priority": _INTS,
    "rank": _INTS,
    "printable": st.booleans(),
    "printText": _TEXTS,
    "couponRequired": st.booleans(),
    "issueCoupon": st.booleans(),
    "weekdays": _WEEKDAYS,
    "hours": st.lists(st.fixed_dictionaries({"from": _CLOCKS, "to": _CLOCKS}), max_size=3),
    "onFavoriteWeekday": st.booleans(),
    "tiers": st.lists(
        st.fixed_dictionaries(
            {"minQty": _QTYS, "unitPriceMinor": st.one_of(st.integers(0, 10**5), st.just("90"))}
        ),
        max_size=3,
    ),
    "buyQty": _QTYS,
    "freeQty": _QTYS,
}
_SNAKE = {
    "campaignId": "campaign_id",
    "customerId": "customer_id",
    "minQty": "min_qty",
    "validTo": "valid_to",
    "printText": "print_text",
    "buyQty": "buy_qty",
}


@st.composite
def offer_lines(draw: st.DrawFn) -> str:
    """An offers line of a snapshot: any kind, any subset of fields, in any spelling the
    reader might be given (proto3's empty values, nulls, snake_case names, decimals
    written many ways, Cyrillic and emoji, escapes or none)."""
    row: dict[str, Any] = {"id": draw(_KEYS), "kind": draw(st.sampled_from(_KINDS))}
    for name in [name for name in sorted(_FIELDS) if draw(st.booleans())]:
        key = _SNAKE[name] if name in _SNAKE and draw(st.booleans()) else name
        row[key] = draw(_FIELDS[name])
    keys = list(row)
    order = draw(st.permutations(keys))
    return json.dumps(
        {k: row[k] for k in order},
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )


@st.composite
def stored_lists(draw: st.DrawFn) -> str:
    """A JSON list of 1-4 offer rows as the cache holds them (each accepted by the
    snapshot's reader), `_Personal`'s argument to `stored_offers`."""
    texts = []
    for line in draw(st.lists(offer_lines(), min_size=1, max_size=3)):
        text = _stored_text(line)
        if text is None:
            reject()
        texts.append(text)
    return f"[{','.join(texts)}]"


_PROPERTY = dict(
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    deadline=None,
    derandomize=True,
)


@settings(max_examples=20, **_PROPERTY)  # type: ignore[arg-type]
@given(stored_lists())
def test_any_stored_offer_list_parses_as_the_full_parse(text: str) -> None:
    assert_identical(text)


@pytest.mark.slow
@settings(max_examples=2000, **{**_PROPERTY, "derandomize": False})  # type: ignore[arg-type]
@given(stored_lists())
def test_any_stored_offer_list_parses_as_the_full_parse_long(text: str) -> None:
    assert_identical(text)


@settings(max_examples=60, **_PROPERTY)  # type: ignore[arg-type]
@given(st.lists(offer_lines(), min_size=1, max_size=3))
def test_any_offer_list_at_all_is_read_or_refused_as_the_full_parse(lines: list[str]) -> None:
    """Rows the snapshot would refuse too (a damaged cache, a row of a release with other
    rules): read as the full parse reads them, or refused in its words."""
    assert_identical(f"[{','.join(lines)}]")


# ---------------------------------------------------------------- the rules stored_offers skips


def test_offer_validators_are_the_ones_stored_offers_reasons_about() -> None:
    """`stored_offers` skips `Offer`'s Python validators because the field validators only
    turn an empty value into the default (values its types refuse) and the model validator
    only refuses. A validator added to `Offer`, or one of these given more fields, would be
    skipped silently on every known card's quote: this fails first, so `stored_offers` is
    read again (docs/DECISIONS.md, review 48 rev48b)."""
    found = Offer.__pydantic_decorators__
    assert {name: d.info.fields for name, d in found.field_validators.items()} == {
        "_proto3_default": (
            "customer_id",
            "min_qty",
            "valid_from",
            "valid_to",
            "buy_qty",
            "free_qty",
        ),
        "_deal_value_unset": ("value",),
    }
    assert list(found.model_validators) == ["_consistent"]
    assert found.model_validators["_consistent"].info.mode == "after"
    assert not (
        found.validators
        or found.root_validators
        or found.field_serializers
        or found.model_serializers
        or found.computed_fields
    )
    assert Offer.__pydantic_post_init__ is None
    assert not Offer.__private_attributes__


_REFUSED_BY_OFFER = [
    {"validFrom": "2026-12-01T00:00:00Z", "validTo": "2026-11-01T00:00:00Z"},
    {"value": "150"},
    {"kind": "EXTRA_POINTS", "value": "2.5"},
    {"kind": "QUANTITY_PRICE", "value": "0"},
    {"kind": "MULTIBUY", "buyQty": "1.5", "freeQty": "1"},
    {"kind": "AMOUNT_OFF", "value": None},
]


@pytest.mark.parametrize("change", _REFUSED_BY_OFFER)
def test_a_row_offer_s_model_validator_refuses_is_refused_as_the_full_parse(
    change: dict[str, Any],
) -> None:
    """Before review 48 (rev48b) `stored_offers` read these rows (the types accept them;
    only `Offer._consistent` refuses them), where every other reader of the cache (the mass
    offers, `CacheView.offer` for the print worker) refused them: now refused in the full
    parse's words, alone or beside good rows."""
    row = {"id": "o1", "customerId": "c1", "kind": "PERCENT_OFF", "skus": ["s1"], "value": "10"}
    bad = json.dumps({k: v for k, v in {**row, **change}.items() if v is not None})
    good = json.dumps({**row, "id": "o2"})
    for text in (f"[{bad}]", f"[{good},{bad}]", f"[{bad},{good}]"):
        with pytest.raises(ValidationError):
            FULL.validate_json(text, context=STORED)
        assert assert_identical(text) == []


@pytest.mark.parametrize(
    "change",
    [
        {"validFrom": "2026-12-01T00:00:00Z", "validTo": "2026-11-01T00:00:00Z"},
        {"value": "150"},
        {"kind": "EXTRA_POINTS", "value": "2.5"},
        {"kind": "QUANTITY_PRICE", "value": "0"},
        {"kind": "MULTIBUY", "buyQty": "1.5", "freeQty": "1"},
        {"kind": "AMOUNT_OFF", "value": None},
    ],
)
def test_a_row_offer_s_own_rule_refuses_is_never_in_a_cache(change: dict[str, Any]) -> None:
    """The one thing the fast parse does not do is `Offer._consistent`'s refusals: a row
    it refuses is read by the fast parse (perf48's DECISIONS section says so). Such a row
    never reaches a cache: the snapshot's reader refuses it, by the stricter rules of
    input, before it is stored."""
    row = {"id": "o1", "customerId": "c1", "kind": "PERCENT_OFF", "skus": ["s1"], "value": "10"}
    row.update(change)
    line = json.dumps({k: v for k, v in row.items() if v is not None})
    assert _stored_text(line) is None


# ---------------------------------------------------------------- older releases' caches


@pytest.mark.parametrize(
    "fixture", sorted((HERE / "fixtures" / "upgrade").glob("*.tar.gz")), ids=lambda p: p.name
)
def test_an_older_release_s_cached_offers_parse_as_the_full_parse(
    fixture: Path, tmp_path: Path
) -> None:
    with tarfile.open(fixture) as archive:
        names = [m for m in archive.getmembers() if m.name.startswith("till/cache")]
        archive.extractall(tmp_path, members=names, filter="data")
    docs: dict[str, list[str]] = {}
    for path in sorted((tmp_path / "till").glob("cache*.db")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for customer, doc in conn.execute("SELECT customer_id, doc FROM offers ORDER BY id"):
                docs.setdefault(customer or "", []).append(doc)
        except sqlite3.DatabaseError:  # the -wal of the live file only
            continue
        finally:
            conn.close()
    assert docs, fixture
    for customer_docs in docs.values():
        assert len(assert_identical(f"[{','.join(customer_docs)}]")) == len(customer_docs)
        for doc in customer_docs:
            assert_identical(f"[{doc}]")


# ---------------------------------------------------------------- through the real CLI

_OFFERS: list[dict[str, Any]] = [
    {"id": "p-pct", "kind": "PERCENT_OFF", "skus": ["milk"], "value": "15.0", "minQty": "1",
     "printable": True, "printText": "Молоко −15 % 🥛", "validFrom": "2026-11-01T00:00:00+03:00",
     "validTo": "2026-11-30t23:59:59z", "priority": "10", "rank": 1},
    {"id": "p-amt", "kind": "AMOUNT_OFF", "categories": ["bakery"], "value": "500",
     "minTotalMinor": "1000", "weekdays": [1, "2"], "hours": [{"from": "09:00", "to": "24:00"}]},
    {"id": "p-fix", "kind": "FIXED_PRICE", "skus": ["cheese"], "value": 90000, "minQty": "0.5",
     "validTo": "", "onFavoriteWeekday": False, "campaignId": ""},
    {"id": "p-bon", "kind": "BONUS_MULTIPLIER", "skus": ["milk", "bread"], "value": "2",
     "hours": [{"from": "22:00", "to": "02:00"}, {"from": "00:00", "to": "24:00"}]},
    {"id": "p-rcp", "kind": "RECEIPT_PERCENT_OFF", "value": "0.5", "minTotalMinor": 100,
     "printable": True, "printText": "Скидка на чек", "min_qty": ""},
    {"id": "p-ext", "kind": "EXTRA_POINTS", "value": "40.000", "issueCoupon": True,
     "printable": True, "printText": "Код на 40 баллов"},
    {"id": "p-qty", "kind": "QUANTITY_PRICE", "skus": ["bread"], "value": "",
     "tiers": [{"minQty": "2", "unitPriceMinor": 5000},
               {"minQty": "3.0", "unitPriceMinor": "4500"}]},
    {"id": "p-mb", "kind": "MULTIBUY", "skus": ["milk"], "buyQty": "2.0", "freeQty": "1",
     "value": "", "buy_qty": "2"},
    {"id": "p-cpn", "kind": "PERCENT_OFF", "skus": ["bread"], "value": "100",
     "couponRequired": True},
    {"id": "p-fav", "kind": "PERCENT_OFF", "skus": ["cheese"], "value": "7",
     "onFavoriteWeekday": True, "validFrom": None},
]  # fmt: skip


def _snapshot(version: int, base: int, offers: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"version": version, "baseVersion": base,
                            "issuedAt": "2026-11-23T06:00:00Z", "offers": offers}  # fmt: skip
    if base == 0:
        body["categories"] = [{"code": "bakery", "name": "Хлеб"}, {"code": "dairy"}]
        body["products"] = [
            {"sku": "milk", "name": "Молоко", "category": "dairy"},
            {"sku": "bread", "name": "Хлеб", "category": "bakery"},
            {"sku": "cheese", "name": "Сыр", "category": "dairy"},
        ]
        body["customers"] = [{"id": "c1", "firstName": "Анна", "tier": "gold", "favoriteWeekday": 1,
                              "balancePoints": 500}]  # fmt: skip
        body["cards"] = [{"number": "2770000000017", "customerId": "c1"}]
    return body


def _cli(data: Path, *args: str, stdin: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-48"}
    done = subprocess.run(
        [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(data), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def _receipt(receipt_id: str) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": "2026-11-23T23:30:00+03:00",
        "card": "2770000000017",
        "lines": [
            {"sku": "milk", "qty": "3", "priceMinor": 8990},
            {"sku": "bread", "qty": "3", "priceMinor": 5490},
            {"sku": "cheese", "qty": "0.512", "priceMinor": 99000},
        ],
        "redeemPoints": 0,
    }


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A till's data directory with every kind of personal offer loaded by the real CLI:
    a full snapshot, then a delta that changes two offers and adds one."""
    data = tmp_path_factory.mktemp("rev48b") / "data"
    root = data.parent
    personal = [{**o, "customerId": "c1"} for o in _OFFERS]
    (root / "full.json").write_text(json.dumps(_snapshot(1, 0, personal), ensure_ascii=False))
    changed = [
        {**personal[0], "value": "20", "printText": "Молоко −20 % 🥛"},
        {**personal[6], "tiers": [{"minQty": "2", "unitPriceMinor": 4900}]},
        {"id": "p-new", "customerId": "c1", "kind": "AMOUNT_OFF", "skus": ["cheese"],
         "value": "1e1"},  # refused: a number, not a decimal string, as the snapshot says
    ]  # fmt: skip
    (root / "delta-bad.json").write_text(json.dumps(_snapshot(2, 1, changed)))
    changed[2]["value"] = "10.00"
    (root / "delta.json").write_text(json.dumps(_snapshot(2, 1, changed), ensure_ascii=False))
    _cli(data, "snapshot", "load", "--json", str(root / "full.json"))
    return data


def _customer_docs(data: Path) -> list[str]:
    from tillpoint.agent.db import cache_file

    conn = sqlite3.connect(f"file:{cache_file(data)}?mode=ro", uri=True)
    try:
        return [d for (d,) in conn.execute("SELECT doc FROM offers WHERE customer_id = 'c1'")]
    finally:
        conn.close()


def test_every_kind_loaded_by_the_cli_full_and_delta_parses_as_the_full_parse(
    loaded: Path,
) -> None:
    root = loaded.parent
    docs = _customer_docs(loaded)
    assert len(docs) == len(_OFFERS)
    assert len(assert_identical(f"[{','.join(docs)}]")) == len(docs)
    quoted = _cli(loaded, "quote", "--json", "-", stdin=json.dumps(_receipt("r-q")))
    bad = subprocess.run(
        [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(loaded), "snapshot",
         "load", str(root / "delta-bad.json")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "TILLPOINT_DEVICE_ID": "till-48"},
    )  # fmt: skip
    assert bad.returncode != 0 and "value" in bad.stderr
    _cli(loaded, "snapshot", "load", "--json", str(root / "delta.json"))
    docs = _customer_docs(loaded)
    assert len(docs) == len(_OFFERS) + 1
    offers = assert_identical(f"[{','.join(docs)}]")
    assert {o.id: o.value for o in offers}["p-new"] == Decimal("10.00")
    requoted = _cli(loaded, "quote", "--json", "-", stdin=json.dumps(_receipt("r-q")))
    assert quoted != requoted  # the delta's new offers are priced
    sold = _cli(loaded, "checkout", "--json", "-", stdin=json.dumps(_receipt("r-1")))
    priced = ("lines", "totalMinor", "discountMinor", "payableMinor", "earnedPoints")
    assert [sold.get(k) for k in priced] == [requoted.get(k) for k in priced]
    refund = {"refundId": "f-1", "receiptId": "r-1", "at": "2026-11-24T12:00:00+03:00",
              "lines": [{"sku": "milk", "qty": "1"}]}  # fmt: skip
    assert _cli(loaded, "refund", "--json", "-", stdin=json.dumps(refund))
