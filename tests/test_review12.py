"""Review items of issue 12: `config check --json` speaks proto3 camelCase, `status` has
one documented set-aside figure, and `reset` gives back only what open holds reserved."""

from __future__ import annotations

import json
import re
from typing import Any

from .conftest import CLI, REPO


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in (key, *_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


def test_config_check_json_is_camel_case_and_the_text_keeps_the_file_names(cli: CLI) -> None:
    run = cli("config", "check", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["deviceId"] and doc["hub"]["maxSnapshotMib"] == 8192
    assert doc["printer"]["connectTimeoutS"] == 3.0
    assert not [k for k in _keys(doc) if "_" in k]
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", k) for k in _keys(doc))
    text = cli("config", "check")
    assert text.code == 0 and text.out.startswith("configuration is valid\n")
    shown = json.loads(text.out.split("\n", 1)[1])
    assert shown["hub"]["max_snapshot_mib"] == 8192 and "device_id" in shown


def test_status_documents_set_aside_and_marks_the_older_field_deprecated(cli: CLI) -> None:
    proto = (REPO / "proto" / "tillpoint" / "v1" / "tillpoint.proto").read_text(encoding="utf-8")
    comment = proto.split("int64 set_aside_transactions = 19;")[0].rsplit("= 18;", 1)[1]
    assert "Deprecated" in comment and "set_aside` (field 40)" in comment
    assert "int64 set_aside = 40;" in proto  # both kept, numbers unchanged
    protocol = (REPO / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = protocol.split("## 5. Status")[1].split("\n## ")[0]
    assert "`setAside` (Status field 40" in section
    assert "`setAsideTransactions` (Status field 19) is **deprecated**" in section
    doc = cli("status", "--json").json()
    assert doc["setAside"] == doc["setAsideTransactions"] == 0  # still sent, the same count
