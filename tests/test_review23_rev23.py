"""Review 23 (rev23): a second look at this session's change."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import CLI

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_an_unknown_snapshot_field_nested_deep_is_left_out_not_an_internal_error(
    cli: CLI, tmp_path: Path
) -> None:
    """A field the contract does not define holding a value nested some hundreds deep
    (within what the JSON reader takes): the copy without it was made by `deepcopy` of
    the whole document, which ran out of recursion ("internal error", exit 1)."""
    doc = json.loads((EXAMPLES / "snapshot.json").read_text(encoding="utf-8"))
    text = json.dumps(doc, ensure_ascii=False)
    deep = "[" * 600 + "]" * 600
    assert text.count('"customers": [{') == 1
    text = text.replace('"customers": [{', '"customers": [{"zz": ' + deep + ", ", 1)
    path = tmp_path / "deep.json"
    path.write_text(text, encoding="utf-8")
    loaded = cli("snapshot", "load", path, "--json")
    assert loaded.code == 0, loaded.err
    assert json.loads(loaded.out)["version"] == 7
    assert "customers[].zz" in loaded.err and "internal error" not in loaded.err


def test_the_warning_naming_unknown_fields_is_one_bounded_line(cli: CLI, tmp_path: Path) -> None:
    """The names in the warning are the snapshot's own keys: a line break, a terminal's
    escape sequence or a key of 100,000 characters was printed as it was (two lines on
    stderr, the terminal's colours changed, 100 KB), where every message is one line."""
    doc = json.loads((EXAMPLES / "snapshot.json").read_text(encoding="utf-8"))
    doc["customers"][0]["x\ny\u2028z\x1b[31m"] = 1
    doc["customers"][1]["k" * 100_000] = 1
    loaded = cli("snapshot", "load", doc, "--json")
    assert loaded.code == 0, loaded.err
    assert loaded.err.startswith("tillpoint: warning: ") and loaded.err.count("\n") == 1
    assert "\x1b" not in loaded.err and "\u2028" not in loaded.err
    assert len(loaded.err) < 2000
    assert "customers[].x\\ny" in loaded.err
    assert loaded.err.rstrip().endswith("they count once the till is upgraded")
