"""`hub import` on PostgreSQL into an empty draft (the usual full import): one COPY
straight into the draft, its key built after the load, the counts from the rows. It must
store and report exactly what the staged path does, and anything wrong (a key twice, a
bad row, a card whose customer is not known) must still be refused with its lines, the
draft left as it was (and its key in place)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync import hub_import
from tillpoint.sync.hub_import import read_file
from tillpoint.sync.hub_postgres import PostgresHubStore
from tillpoint.sync.hub_store import ImportRefused


@pytest.fixture()
def stores(pg_cluster: Any) -> Iterator[Any]:
    made: list[PostgresHubStore] = []

    def make() -> PostgresHubStore:
        made.append(PostgresHubStore(pg_cluster.new_database(), migrate_schema=True))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The blocks read in this process, or (any file size) in two worker processes."""
    monkeypatch.setattr(hub_import, "BLOCK_WORKERS", request.param)
    monkeypatch.setattr(hub_import, "BLOCK_WORKERS_FROM", 0)
    monkeypatch.setattr(hub_import, "CHUNK_LINES", 7)  # many blocks, sections inside them
    return int(request.param)


def snapshot(path: Path, sections: dict[str, list[Any]], header: dict[str, Any]) -> Path:
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", "version": 1, **header})]
    for name, rows in sections.items():
        lines.append(json.dumps({"section": name}))
        lines += [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def draft(store: PostgresHubStore) -> list[tuple[str, str, str | None]]:
    with store._conn() as conn:
        rows = conn.execute("SELECT kind, key, doc FROM draft ORDER BY kind, key").fetchall()
        key = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'draft_pkey'"
        ).fetchone()
    assert key == (1,)  # the draft's primary key is there, whatever happened
    return [(str(k), str(key_), d) for k, key_, d in rows]


SECTIONS: dict[str, list[Any]] = {
    "customers": [
        {"id": f"c{n}", "firstName": 'Анна "\\ tab\t', "balancePoints": n} for n in range(40)
    ]
    + [{"id": "odd\tkey\\with\nbreaks\r"}],
    "cards": [
        {"number": "2770000000017", "customerId": "c1"},
        {"number": "2770000000024", "customerId": "odd\tkey\\with\nbreaks\r"},
    ],
    "offers": [{"id": f"o{n}", "kind": "PERCENT_OFF", "value": "5"} for n in range(30)],
}
HEADER = {"program": {"currency": "EUR"}, "removed": {"offers": ["gone-1", "gone\\2"]}}


def test_an_empty_draft_gets_what_the_staged_path_stores_and_reports(
    stores: Any, tmp_path: Path, workers: int
) -> None:
    path = snapshot(tmp_path / "a.jsonl", SECTIONS, HEADER)
    fast, staged = stores(), stores()
    report = fast._import_fast(read_file(path))
    assert report is not None  # the fast path took it
    want = staged._import_staged(read_file(path))
    assert report == want
    assert report.by_kind == {"program": 1, "customer": 41, "card": 2, "offer": 30}
    assert report.removed == 2 and report.rows == 76
    assert draft(fast) == draft(staged)
    assert ("offer", "gone\\2", None) in draft(fast)
    listed = stores()  # rows that can be read again but are no file: COPY row by row
    assert listed._import_fast(list(read_file(path))) == want
    assert draft(listed) == draft(staged)


def test_a_key_twice_into_an_empty_draft_is_refused_with_both_lines(
    stores: Any, tmp_path: Path, workers: int
) -> None:
    sections = {
        **SECTIONS,
        "offers": [*SECTIONS["offers"], {"id": "o7", "kind": "PERCENT_OFF", "value": "6"}],
    }
    path = snapshot(tmp_path / "twice.jsonl", sections, HEADER)
    store = stores()
    assert store._import_fast(read_file(path)) is None  # the key's build failed
    with pytest.raises(ImportRefused) as refused:
        store.import_rows(read_file(path))
    assert refused.value.problems == ["line 78: offer 'o7' appears twice (also at line 55)"]
    assert draft(store) == []


def test_a_bad_row_or_an_unknown_owner_into_an_empty_draft_is_refused_with_its_line(
    stores: Any, tmp_path: Path, workers: int
) -> None:
    store = stores()
    bad = {**SECTIONS, "offers": [*SECTIONS["offers"], {"id": "o99", "kind": "NOPE"}]}
    with pytest.raises(ImportRefused, match="line 78: kind"):
        store.import_rows(read_file(snapshot(tmp_path / "bad.jsonl", bad, HEADER)))
    orphan = {**SECTIONS, "cards": [{"number": "2770000000031", "customerId": "c-none"}]}
    with pytest.raises(ImportRefused, match="line 45: card 2770000000031 belongs to customer"):
        store.import_rows(read_file(snapshot(tmp_path / "orphan.jsonl", orphan, HEADER)))
    assert draft(store) == []


def test_an_import_into_a_draft_that_holds_rows_goes_the_staged_way(
    stores: Any, tmp_path: Path, workers: int
) -> None:
    store = stores()
    store.import_rows(read_file(snapshot(tmp_path / "a.jsonl", SECTIONS, HEADER)))
    again = {"customers": [{"id": "c1", "balancePoints": 500}, {"id": "c99"}]}
    path = snapshot(tmp_path / "b.jsonl", again, {"program": {"currency": "USD"}})
    assert store._import_fast(read_file(path)) is None  # the draft is not empty
    report = store.import_rows(read_file(path))
    assert report.by_kind == {"program": 1, "customer": 2}
    rows = {(kind, key): doc for kind, key, doc in draft(store)}
    assert rows["customer", "c1"] == '{"balancePoints":500,"id":"c1"}'
    assert rows["customer", "c99"] == '{"balancePoints":0,"id":"c99"}'
    assert rows["program", ""] is not None and '"USD"' in rows["program", ""]
    assert len(rows) == 76 + 1  # the program once (USD now), c1 changed, c99 added


def test_the_blocks_are_the_rows_as_copy_text(tmp_path: Path, monkeypatch: Any) -> None:
    """The bulk runs' COPY text, made with no row objects, is what the rows would make."""
    from bench.generate import Scale, write_full

    monkeypatch.setattr(hub_import, "CHUNK_LINES", 97)  # runs cut by chunks and sections
    for path in (
        write_full(tmp_path / "tiny.jsonl", Scale.named("tiny")),
        snapshot(tmp_path / "odd.jsonl", SECTIONS, HEADER),
    ):
        source = read_file(path)
        blocks = list(source.copy_blocks())
        whole = hub_import.Block.of(list(source))
        assert b"".join(b.data for b in blocks) == whole.data
        assert sum(b.rows for b in blocks) == whole.rows
        assert sum(b.removed for b in blocks) == whole.removed
        counts: dict[str, int] = {}
        for b in blocks:
            for kind, count in b.counts.items():
                counts[kind] = counts.get(kind, 0) + count
        assert counts == whole.counts and not any(b.problem for b in blocks)
