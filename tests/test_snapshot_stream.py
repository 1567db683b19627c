"""Snapshots as JSON Lines: streamed row by row, atomic, bad lines named by number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tillpoint.agent import cache as cache_mod
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot


def to_jsonl(snap: dict[str, Any]) -> str:
    rows = {k: snap.pop(k, []) for k in ("categories", "products", "customers", "cards", "offers")}
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", **snap}, ensure_ascii=False)]
    for section, items in rows.items():
        lines.append(json.dumps({"section": section}))
        lines += [json.dumps(item, ensure_ascii=False) for item in items]
    return "\n".join(lines) + "\n"


def test_jsonl_snapshot_prices_like_the_json_one(cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "snap.jsonl"
    path.write_text(to_jsonl(snapshot()), encoding="utf-8")
    assert cli("snapshot", "load", str(path), "--json").json()["version"] == 1
    via_lines = cli("quote", receipt(), "--json").json()
    other = Agent(tmp_path / "other", "till-1")
    other.load_snapshot(snapshot())
    assert other.quote(receipt_from_json(receipt())).to_json() == via_lines
    other.close()


def test_a_bad_line_rolls_everything_back(cli: CLI, tmp_path: Path) -> None:
    cli("snapshot", "load", snapshot())
    agent = Agent(tmp_path / "data", "till-1")
    before = cache_mod.dump(agent._cache)
    text = to_jsonl(snapshot(version=2))
    lines = text.splitlines()
    card = lines.index('{"section": "cards"}') + 1
    lines[card] = '{"number": "2770000000017", "customerId": "c-a", "status": "STOLEN"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    run = cli("snapshot", "load", str(bad))
    assert run.code == 2 and f"line {card + 1}" in run.err
    dup = tmp_path / "dup.jsonl"
    lines = text.splitlines()
    dup.write_text("\n".join([*lines, '{"section": "cards"}', lines[card]]) + "\n")
    run = cli("snapshot", "load", str(dup))
    assert run.code == 2 and "same key" in run.err
    floaty = tmp_path / "float.jsonl"
    lines = text.splitlines()
    floaty.write_text(text.replace('"balancePoints": 1200', '"balancePoints": 12.5'))
    assert cli("snapshot", "load", str(floaty)).code == 2
    assert cache_mod.dump(agent._cache) == before
    agent.close()


def test_delta_as_jsonl(cli: CLI, tmp_path: Path) -> None:
    cli("snapshot", "load", snapshot())
    delta = {
        "version": 2,
        "baseVersion": 1,
        "removed": {"cards": ["2770000000024"]},
        "offers": [
            {"id": "o-new", "kind": "PERCENT_OFF", "value": "10", "skus": ["4601234000017"]}
        ],
    }
    path = tmp_path / "delta.jsonl"
    path.write_text(to_jsonl(delta))
    assert cli("snapshot", "load", str(path)).code == 0
    assert cli("identify", "2770000000024", "--json").json() == {"status": "UNKNOWN"}
    assert cli("quote", receipt(), "--json").json()["lines"][0]["offerId"] == "o-new"


def test_empty_files_and_bad_bytes_are_refused_with_their_line(tmp_path: Path) -> None:
    import pytest
    from tillpoint.agent.errors import InputError
    from tillpoint.agent.snapshot_stream import read_lines

    with pytest.raises(InputError, match="empty"):
        read_lines([b"\n", b"  \n"])
    header, rows = read_lines(
        [
            b"\n",
            b'{"format": "tillpoint.snapshot/jsonl", "version": 3}\n',
            b"\n",
            b'{"section": "cards"}\n',
            b'{"number": "1", "customerId": "c\xff"}\n',
        ]
    )
    assert header.version == 3
    with pytest.raises(InputError, match=r"line 5: not valid JSON \(not UTF-8 text\)"):
        list(rows)
