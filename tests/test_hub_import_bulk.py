"""`hub import`'s bulk path: a run of a JSON Lines snapshot section's rows is validated by
pydantic-core in one call and its canonical texts written there. It must read exactly as
the line-by-line path (the reference): the same rows, the same texts, and every bad row
refused with its line and field."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import InputError
from tillpoint.sync import hub_import
from tillpoint.sync.hub_import import BULK, Bulk, read_file, read_jsonl
from tillpoint.sync.hub_rules import canon
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.hub_store import SECTIONS, ImportRefused, ImportRow

from bench.generate import Scale, write_full


def rows_of(data: bytes) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for row in read_jsonl(io.BytesIO(data), len(data), None, 1):
        if isinstance(row, ImportRow):
            out.append((row.kind, row.key, row.removes, row.text or canon(row.doc), row.where))
        else:
            out.append(("problem", row.where, row.message))
    return out


def line_by_line(data: bytes, monkeypatch: Any) -> list[tuple[Any, ...]]:
    with monkeypatch.context() as m:
        m.setattr(hub_import, "BULK", {})
        return rows_of(data)


def snapshot(sections: dict[str, list[Any]]) -> bytes:
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", "version": 1})]
    for name, rows in sections.items():
        lines.append(json.dumps({"section": name}))
        lines += [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def test_every_kind_but_the_program_has_a_bulk_path() -> None:
    assert sorted(BULK) == ["card", "category", "coupon", "customer", "offer", "product"]


def test_a_generated_snapshot_reads_the_same_in_bulk(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(hub_import, "CHUNK_LINES", 333)  # runs cut by chunks and sections
    data = write_full(tmp_path / "tiny.jsonl", Scale.named("tiny")).read_bytes()
    bulk = rows_of(data)
    assert len(bulk) > 2000 and not any(r[0] == "problem" for r in bulk)
    assert bulk == line_by_line(data, monkeypatch)


ODD_TEXT = 'a "quoted" \\ back\tslash\n\r\x01\x1f\x7f \u2028 / ё 😀 \u00a0'


def test_odd_texts_and_times_read_the_same(monkeypatch: Any) -> None:
    """Control characters, quotes, backslashes, non-ASCII, and the spellings of a time the
    till takes: the bulk texts are byte for byte the line-by-line ones."""
    good_times = [
        "2026-11-23T10:15:00+03:00",
        "2026-11-23T10:15:00Z",
        "2026-11-23T10:15:00z",
        "2026-11-23T10:15:00.5+00:00",
        "2026-11-23T10:15:00.123456-05:30",
        "2026-11-23 10:15:00+03:00",
    ]
    sections = {
        "products": [{"sku": "4601234000017", "name": ODD_TEXT, "category": ODD_TEXT}],
        "customers": [{"id": "c1", "firstName": ODD_TEXT, "favoriteWeekday": 3}],
        "offers": [
            {
                "id": f"o{n}",
                "kind": "PERCENT_OFF",
                "value": "5",
                "validFrom": t,
                "printText": ODD_TEXT,
            }
            for n, t in enumerate(good_times)
        ]
        + ['{"id": "dup", "kind": "PERCENT_OFF", "value": "5", "value": "7", "rank": 1}'],
        "coupons": [{"code": " ab–12 cd ", "offerId": "o1"}],
    }
    for name, rows in sections.items():  # each run is taken by the bulk path
        kind = SECTIONS[name]
        lines = [
            (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode() for r in rows
        ]
        assert hub_import._bulk_rows(BULK[kind], 1, lines) is not None, name
    data = snapshot(sections)
    assert rows_of(data) == line_by_line(data, monkeypatch)


def test_what_the_bulk_path_refuses_goes_line_by_line(monkeypatch: Any) -> None:
    """Lax spellings (a string of digits, a padded date) and times the till refuses: the
    run is read line by line, which takes or refuses each row as it always did."""
    times = ["2026-11-23T10:15+03:00", "2026-11-23T10:15:00+0300", "2026-11-23T10:15:00"]
    times += ["2026-11-23t10:15:00z", "2026-11-23", "yesterday", "2026-11-23T10:15:00+03:00"]
    sections = {
        "customers": [
            {"id": "c1", "favoriteWeekday": "3"},
            {"id": "c2", "birthday": " 1990-02-03 ", "balancePoints": "-12"},
        ],
        "offers": [
            {"id": f"o{n}", "kind": "PERCENT_OFF", "value": "5", "validFrom": t}
            for n, t in enumerate(times)
        ],
    }
    data = snapshot(sections)
    rows = rows_of(data)
    assert rows == line_by_line(data, monkeypatch)
    assert [r[1] for r in rows if r[0] == "customer"] == ["c1", "c2"]
    assert any(r[0] == "problem" for r in rows)  # the times without an offset


TIMES = [
    "2026-11-23T10:15:00+03:00",
    "2026-11-23T10:15:00Z",
    "2026-11-23T10:15:00z",
    "2026-11-23t10:15:00Z",
    "2026-11-23T10:15:00.5+00:00",
    "2026-11-23T10:15:00-00:00",
    "2026-11-23T10:15:00.123456-05:30",
    "2026-11-23T10:15:00.1234567+03:00",
    "2026-11-23T10:15:60+03:00",
    "2026-11-23T24:00:00+03:00",
    "2026-02-29T10:15:00+03:00",
    "2028-02-29T10:15:00+03:00",
    "2026-04-31T10:15:00+03:00",
    "2026-11-23T10:15:00+24:00",
    "2026-11-23T10:15:00+23:59",
    "2026-11-23 10:15:00+03:00",
    "2026-11-23T10:15+03:00",
    "2026-11-23T10:15:00+0300",
    "2026-11-23T10:15:00+03",
    "2026-11-23T10:15:00",
    "2026-11-23",
    " 2026-11-23T10:15:00+03:00",
    "20261123T101500Z",
    "yesterday",
]


@pytest.mark.parametrize("moment", TIMES)
def test_each_spelling_of_a_time_reads_the_same(moment: str, monkeypatch: Any) -> None:
    """A time the bulk path parses natively is one `_timestamp` takes, to the same text;
    the others go to `_timestamp` itself."""
    row = {"id": "o", "kind": "PERCENT_OFF", "value": "5", "validFrom": moment}
    customer = {"id": "c", "pending": [{"points": 5, "activatesAt": moment}]}
    data = snapshot({"customers": [customer], "offers": [row]})
    assert rows_of(data) == line_by_line(data, monkeypatch)


@pytest.mark.parametrize("kind", sorted(BULK))
def test_a_fraction_in_any_field_is_refused_by_the_bulk_path(kind: str) -> None:
    """A JSON number with a fraction is refused wherever it is (as `_no_float` refuses it
    on the line-by-line path), even 1.0 for a whole number or a true/false."""
    bulk = Bulk(kind)
    for probe in hub_import._PROBES[kind]:
        assert bulk is not None and hub_import._bulk_rows(bulk, 1, [json.dumps(probe).encode()])
        model = hub_import.MODELS[kind]
        for name, info in model.model_fields.items():
            alias = info.alias or name
            for number in ("1.0", "0.0", "1e0", "[1.0]", '[{"points": 1.0}]'):
                row = {k: v for k, v in probe.items() if k != alias}
                line = json.dumps(row)[:-1] + f', "{alias}": {number}}}'
                assert hub_import._bulk_rows(bulk, 1, [line.encode()]) is None, (alias, number)


def test_a_bad_row_deep_in_a_run_is_found_with_its_line_and_field(
    tmp_path: Path, monkeypatch: Any
) -> None:
    offers: list[Any] = [
        {"id": f"o{n}", "kind": "AMOUNT_OFF", "value": "300", "skus": ["4601234000017"]}
        for n in range(5000)
    ]
    offers[3210] = {"id": "o3210", "kind": "AMOUNT_OFF", "value": 1.5}
    offers[4000] = {"id": "o4000", "kind": "AMOUNT_OFF", "value": "-3"}
    offers[4500] = '{"id": "o4500", "kind": "AMOUNT_OFF", "value": "3"}, {"id": "x"}'
    data = snapshot({"offers": offers})
    rows = rows_of(data)
    problems = [r for r in rows if r[0] == "problem"]
    assert [p[1] for p in problems] == ["line 3213", "line 4003", "line 4503"]
    assert "fraction" in problems[0][2]
    assert problems[1][2].startswith("value")
    assert rows == line_by_line(data, monkeypatch)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        with pytest.raises(ImportRefused) as refused:
            store.import_rows(hub_import.read_file(path))
        assert "line 3213" in str(refused.value.problems[0])
    finally:
        store.close()


# ---------------------------------------------------------------- the stores' checks


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    """An empty hub store, once on SQLite and once on PostgreSQL."""
    return hub_store_factory()


def import_lines(store: Any, tmp_path: Path, sections: dict[str, list[Any]]) -> Any:
    path = tmp_path / f"i{len(list(tmp_path.iterdir()))}.jsonl"
    path.write_bytes(snapshot(sections))
    return store.import_rows(hub_import.read_file(path))


def test_a_key_twice_and_nothing_else_wrong_refuses_with_both_lines(
    store: Any, tmp_path: Path
) -> None:
    """(On PostgreSQL the duplicate is found by the draft's insert failing, not looked for
    beforehand.)"""
    customers = [{"id": f"c{n}"} for n in range(3000)]
    customers.append({"id": "c1234", "firstName": "again"})
    with pytest.raises(ImportRefused) as refused:
        import_lines(store, tmp_path, {"customers": customers})
    assert refused.value.problems == [
        "line 3003: customer 'c1234' appears twice (also at line 1237)"
    ]
    assert store.draft_size() == 0


def test_the_last_program_counts_and_a_card_needs_its_customer_as_of_the_draft(
    store: Any, tmp_path: Path
) -> None:
    import_lines(store, tmp_path, {"customers": [{"id": "c1"}, {"id": "c2"}]})
    store.publish(datetime.now(UTC), 86400.0)
    path = tmp_path / "p.jsonl"
    lines = [
        {"program": {"currency": "EUR"}},
        {"program": {"currency": "USD"}},
        {"removed": {"customers": ["c2"]}},
        {"card": {"number": "2770000000017", "customerId": "c1"}},  # published: known
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = store.import_rows(hub_import.read_file(path))
    assert report.by_kind == {"program": 2, "card": 1} and report.removed == 1
    store.publish(datetime.now(UTC), 86400.0)
    assert store.snapshot_doc(2, 0)["program"]["currency"] == "USD"
    with pytest.raises(ImportRefused, match="2770000000024 belongs to customer 'c2'"):
        import_lines(
            store,
            tmp_path,
            {
                "customers": [{"id": "c3"}],
                "cards": [
                    {"number": "2770000000024", "customerId": "c2"},  # removed
                    {"number": "2770000000031", "customerId": "c3"},  # in this import
                ],
            },
        )
    path.write_text(json.dumps({"removed": {"customers": ["c1"]}}) + "\n")
    store.import_rows(hub_import.read_file(path))  # c1's removal waits in the draft
    with pytest.raises(ImportRefused, match="belongs to customer 'c1'"):
        import_lines(store, tmp_path, {"cards": [{"number": "2770000000048", "customerId": "c1"}]})


def test_stored_rows_leave_defaults_out_but_a_customer_keeps_its_points(
    monkeypatch: Any,
) -> None:
    """A till reads an absent field as its default, so the hub stores (and serves) none:
    every offer carried six default fields and every customer `"pending":[]`, a snapshot
    30 % larger to build, send and apply. A customer's balancePoints is always said."""
    data = snapshot(
        {
            "customers": [
                {"id": "c1", "tier": "", "pending": [], "expiring": [], "balancePoints": 0},
                {"id": "c2", "balancePoints": 50, "controlGroups": []},
            ],
            "offers": [
                {
                    "id": "o1",
                    "kind": "PERCENT_OFF",
                    "value": "5",
                    "couponRequired": False,
                    "weekdays": [],
                    "hours": [],
                }
            ],
            "cards": [{"number": "2770000000017", "customerId": "c1", "status": "ACTIVE"}],
        }
    )
    for rows in (rows_of(data), line_by_line(data, monkeypatch)):
        texts = {key: text for _, key, _, text, _ in rows}
        assert texts["c1"] == '{"balancePoints":0,"id":"c1"}'
        assert texts["c2"] == '{"balancePoints":50,"id":"c2"}'
        assert texts["o1"] == '{"id":"o1","kind":"PERCENT_OFF","value":"5"}'
        assert texts["2770000000017"] == '{"customerId":"c1","number":"2770000000017"}'


def test_the_program_keeps_every_value_it_was_given() -> None:
    """A program's defaults are business figures (the redemption cap, the offline limit):
    stored as given, so a release that changed a default would not change a program."""
    found = hub_import.validate_row(
        "program", {"maxRedeemPercent": "30", "offlineRedeemLimitPoints": 500}, "line 1"
    )
    assert isinstance(found, ImportRow) and found.doc is not None
    # int64 figures as JSON numbers (docs/CONTRACT.md §3), whatever form they came in
    assert found.doc["maxRedeemPercent"] == 30 and found.doc["offlineRedeemLimitPoints"] == 500


def test_an_import_of_what_is_not_json_is_refused_on_its_first_bytes(tmp_path: Path) -> None:
    """`hub import /dev/zero` read zeros into memory until it ran out (JSON) or looked for
    the end of a first line forever (JSON Lines): refused on the file's first bytes."""
    for fmt in ("json", "jsonl"):
        with pytest.raises(InputError, match="import: not an import file"):
            list(read_file(Path("/dev/zero"), fmt))
