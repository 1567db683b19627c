"""Review 58 (mut58b): mutation testing of `sync/hub_import.py`, `tillpoint hub import`'s
reading of master data (docs/CONTRACT.md §3, §10; docs/DECISIONS.md, review 58 mut58b).

What the central team's import decides is what every till of the chain prices with: which
rows reach the hub, with which values, and where a refused row is said to be. The tests
here pin the rules the existing tests let a mutant change unseen, with the real parts: the
module's readers on real files, `tillpoint hub import` run in this process on a real hub
directory and SQLite store, and as a real subprocess fed standard input and signals.

The fault found: `hub import -` told JSON Lines from one JSON document by the first 4 KiB
of its first line; a JSON Lines file whose first row was longer (an offer of 300 SKUs) was
read as one document and refused, "not valid JSON (Extra data at line 2 column 1)", with
no hint, though the same file by its name imported.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main

SKUS = [f"460123400{n:04d}" for n in range(400)]  # 6 KiB of SKUs: past the first 4 KiB


def hub_import(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: bytes | None = None,
) -> tuple[int, Any, str]:
    """`tillpoint hub import ARGS --json` in this process on `tmp_path`'s hub: (exit code,
    the JSON it printed or None, what it said on stderr)."""
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    argv = ["hub", "import", *args, "--hub-dir", str(tmp_path / "hub"), "--json"]
    code = main([*argv, "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def jsonl(*rows: dict[str, Any]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


# ------------------------------------------------------------------ the fault: sniffing


def test_standard_input_whose_first_row_is_past_4_kib_is_read_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: `hub import -` tells JSON Lines by its first line that is not
    blank, a whole row `{"<kind>": {...}}`. It read that line's first 4 KiB only: an offer
    of 400 SKUs first was no whole row there, the text was read as one JSON document and
    refused, "not valid JSON (Extra data at line 2 column 1)", exit 2, with no hint (that
    hint reads the same 4 KiB), though the same file by its name imported."""
    offer = {"id": "o-1", "kind": "PERCENT_OFF", "value": "10", "skus": SKUS}
    data = jsonl({"offer": offer}, {"customer": {"id": "c-1", "balancePoints": 5}})
    assert len(data.split(b"\n")[0]) > 4096
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=b"\n" + data)
    assert code == 0, err
    assert out["byKind"] == {"customer": 1, "offer": 1}
    # a one-line JSON document (`jq -c`) as long is still one document
    doc = {"program": {"currency": "RUB"}, "offers": [offer]}
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=json.dumps(doc).encode())
    assert code == 0, err
    assert out["byKind"] == {"program": 1, "offer": 1}


def test_standard_input_of_a_hubs_snapshot_with_a_long_header_is_read_as_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub's JSON Lines snapshot has its header's keys sorted: `format` after
    `appliedThrough`, which names every till (the till's `snapshot load` had the same
    fault, review 26). With 300 tills the header was refused as one JSON document."""
    header = {
        "appliedThrough": {f"till-{n:04d}": n for n in range(300)},
        "format": "tillpoint.snapshot/jsonl",
        "version": 7,
    }
    data = jsonl(header, {"section": "customers"}, {"id": "c-1", "balancePoints": 12})
    assert data.index(b"tillpoint.snapshot/jsonl") > 4096
    code, out, err = hub_import(tmp_path, capsys, monkeypatch, "-", stdin=data)
    assert code == 0, err
    assert out["byKind"] == {"customer": 1}


def test_a_long_first_row_refused_as_one_document_is_hinted_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint of a JSON document's refusal (review 42, polish42) reads the whole first
    line too: `rows.txt` with a long first row is told `--format jsonl`."""
    offer = {"id": "o-1", "kind": "PERCENT_OFF", "value": "10", "skus": SKUS}
    path = tmp_path / "rows.txt"
    path.write_bytes(jsonl({"offer": offer}, {"customer": {"id": "c-1"}}))
    code, _, err = hub_import(tmp_path, capsys, monkeypatch, str(path))
    assert code == 2
    assert "Extra data at line 2 column 1" in err
    assert "the text is JSON Lines (one row a line): give --format jsonl" in err
