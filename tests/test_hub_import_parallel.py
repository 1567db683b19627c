"""`hub import` of a large JSON Lines file parses it in several processes: the rows, the
problems and their line numbers are exactly those of reading it in one."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tillpoint.sync import hub_import
from tillpoint.sync.hub_import import read_jsonl
from tillpoint.sync.hub_rules import canon

from bench.generate import Scale, write_full


def rows_of(data: bytes, workers: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for row in read_jsonl(io.BytesIO(data), len(data), None, workers):
        if hasattr(row, "kind"):
            if row.text is not None and row.doc is not None:
                assert row.text == canon(row.doc)
            text = row.text if row.text is not None else canon(row.doc)
            out.append((row.kind, row.key, text, row.where))
        else:
            out.append(("problem", row.where, row.message))
    return out


def test_a_snapshot_file_reads_the_same_in_processes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(hub_import, "CHUNK_LINES", 97)  # many chunks, sections inside them
    path = write_full(tmp_path / "tiny.jsonl", Scale.named("tiny"))
    data = path.read_bytes()
    serial = rows_of(data, 1)
    assert len(serial) > 1000
    assert rows_of(data, 2) == serial


def test_bad_lines_and_an_unforeseen_section_line_read_the_same(monkeypatch: Any) -> None:
    """Problems keep their line numbers; a section line the reading process does not
    recognise (an escaped key) makes the chunks after it be read again, rightly."""
    monkeypatch.setattr(hub_import, "CHUNK_LINES", 3)
    lines = [
        json.dumps({"format": "tillpoint.snapshot/jsonl", "version": 1}),
        json.dumps({"section": "categories"}),
        json.dumps({"code": "dairy", "name": "Dairy"}),
        "{not json",
        json.dumps({"code": "bread", "name": "Bread"}),
        '{"sec\\u0074ion": "products"}',  # "section", escaped
        json.dumps({"sku": "4601234000017", "name": "Milk", "category": "dairy"}),
        json.dumps({"sku": "4601234000024", "name": "Kefir", "price": 1.5}),
        json.dumps({"sku": "4601234000031", "name": "Bread", "category": "bread"}),
        json.dumps({"section": "nonsense"}),
        json.dumps({"sku": "4601234000048", "name": "Cheese"}),
    ]
    data = ("\n".join(lines) + "\n").encode()
    serial = rows_of(data, 1)
    assert [r[0] for r in serial].count("product") == 2
    assert any(r[0] == "problem" and r[1] == "line 4" for r in serial)
    assert rows_of(data, 2) == serial
