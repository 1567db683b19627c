"""Review 39, rev39f: this session's rev39d (the configuration's loose values, masked
identifiers, foreign files, a link-local listen) and spec39a (a NUL in a JSON body) read
again (CONTRACT §10, §12).
"""

from __future__ import annotations

import json
import os
import re
import threading
from contextlib import closing as contextlib_closing
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import config

from .conftest import posagent_stub, snapshot

# ---------------------------------------------------------------- a poll interval's warning


def _no_tillpoint_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.upper().startswith("TILLPOINT_")]:
        monkeypatch.delenv(key)


def test_s10_a_loose_value_is_its_own_loads_whatever_another_thread_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: a loose value (`hub.poll_interval_s = 0.05`, taken as 0.1) is `run`'s
    WARNING and `config check`'s refusal. They were kept in one list of the module,
    emptied by every load: a load in another thread of the process (a second `main(argv)`,
    a test's agent) in between emptied it, and the first load's `config check` said
    "configuration is valid" (or a clean file's was refused with the other file's line).
    Each load's loose values are now its Settings' own."""
    _no_tillpoint_environment(monkeypatch)
    loose, clean = tmp_path / "loose.toml", tmp_path / "clean.toml"
    loose.write_text("[hub]\npoll_interval_s = 0.05\n", encoding="utf-8")
    clean.write_text("[hub]\npoll_interval_s = 5\n", encoding="utf-8")
    first = config.load(loose, data_dir=tmp_path / "data", device_id="till-1")
    loaded: list[Any] = []
    other = threading.Thread(
        target=lambda: loaded.append(
            config.load(clean, data_dir=tmp_path / "data", device_id="till-1")
        )
    )
    other.start()
    other.join(30)
    (second,) = loaded
    (line,) = config.loose_values(first)
    assert str(loose) in line and "taken as 0.1" in line, line
    assert config.loose_values(second) == []
    # and the other way: a clean load after a loose one in this thread says nothing
    assert config.loose_values(config.load(clean, data_dir=tmp_path / "d", device_id="t")) == []
    assert len(config.loose_values(first)) == 1  # once, however often it is read


def test_s10_a_poll_interval_set_by_a_hub_table_in_the_environment_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loose line names where the value came from: `TILLPOINT_HUB={"poll_interval_s":
    0.05}` (a table as JSON, CONTRACT §10) was blamed on the configuration file, which did
    not hold the key ("config /etc/tillpoint.toml: hub.poll_interval_s must be …")."""
    _no_tillpoint_environment(monkeypatch)
    path = tmp_path / "tillpoint.toml"
    path.write_text('[hub]\naddress = "hub:50070"\n', encoding="utf-8")
    monkeypatch.setenv("TILLPOINT_HUB", '{"poll_interval_s": 0.05}')
    loaded = config.load(path, data_dir=tmp_path / "data", device_id="till-1")
    assert loaded.hub.poll_interval_s == 0.1
    (line,) = config.loose_values(loaded)
    assert "(set by TILLPOINT_HUB)" in line and str(path) not in line, line


# ---------------------------------------------------------------- a card written grouped

# A card as a POS or an operator often writes it, in groups: identify reads it without its
# blanks and dashes (CONTRACT §4), so `balance` looks it up, and its refusal wrote it whole.
GROUPED = [
    ("2770 0000 0005 5", "2770000000055"),
    ("4600-0000-0000-1234", "4600000000001234"),
    ("2770\u200b0000\u200b0005\u200b5", "2770000000055"),  # zero-width spaces (a scanner's)
    ("+7\u200b916\u200b000\u200b00\u200b01", "9160000001"),
]


def _whole(digits: str, line: str) -> bool:
    return digits in re.sub(r"\D", "", line)


def test_s12_an_unknown_card_written_in_groups_is_said_masked_at_the_cli(cli: Any) -> None:
    """CONTRACT §12: `balance` of a card the till does not know names it masked (review 39,
    rev39d), but a card written in groups (`2770 0000 0005 5`, `4600-0000-0000-1234`)
    has no run of five digits and was written whole. Now the number as identify read it,
    masked: its last four digits kept."""
    cli("snapshot", "load", snapshot())
    for typed, digits in GROUPED:
        done = cli("balance", typed)
        assert done.code == 2, done.err
        line = done.err.strip()
        assert "is not known to this till" in line and "\n" not in line, line
        assert not _whole(digits, line), line
        assert line.endswith(f"{digits[-4:]} is not known to this till"), line


def test_s12_an_unknown_card_written_in_groups_is_said_masked_over_http_and_grpc(
    server: Any, agent: Any
) -> None:
    import http.client

    import grpc
    from tillpoint.v1 import tillpoint_pb2 as pb

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for typed, digits in GROUPED:
            body = json.dumps({"card": typed})
            conn.request("POST", "/v1/balance", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            message = json.loads(answer.read())["error"]["message"]
            assert answer.status == 404, message
            assert not _whole(digits, message), message
    finally:
        conn.close()
    with posagent_stub(agent) as stub:
        for typed, digits in GROUPED:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Balance(pb.BalanceRequest(card=typed), timeout=10)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert not _whole(digits, refused.value.details() or ""), refused.value.details()


# ---------------------------------------------------------------- UTF-16 at the other doors

_CODINGS = ["utf-16-le", "utf-16-be", "utf-32-le"]


def _snapshot_jsonl() -> str:
    s = snapshot()
    head = {"format": "tillpoint.snapshot/jsonl"}
    head.update({k: s[k] for k in ("version", "baseVersion", "issuedAt", "program")})
    lines = [json.dumps(head, ensure_ascii=False)]
    for section in ("categories", "products", "customers", "cards", "offers"):
        lines.append(json.dumps({"section": section}))
        lines += [json.dumps(row, ensure_ascii=False) for row in s[section]]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("coding", _CODINGS)
def test_s2_hub_import_of_utf16_without_a_bom_is_not_utf8_text(
    cli: Any, tmp_path: Path, coding: str
) -> None:
    """CONTRACT §2: every JSON input is UTF-8, `hub import` too (JSON and JSON Lines); a
    file of UTF-16 or UTF-32 without a byte order mark (a .NET `Encoding.Unicode`) is
    "not valid JSON (not UTF-8 text)" (review 39, spec39a, at the agent's doors). `hub
    import` still read it as JSON and said "Expecting property name enclosed in double
    quotes at line 1 column 2" (or, in big-endian, "does not start with a JSON object's
    {"). Nothing imported."""
    hub_dir = tmp_path / "hub"
    doc = json.dumps(snapshot(), ensure_ascii=False)
    rows = "".join(
        json.dumps({"customer": c}, ensure_ascii=False) + "\n" for c in snapshot()["customers"]
    )
    for name, text in (
        ("master.json", doc),
        ("master.jsonl", rows),
        ("snap.jsonl", _snapshot_jsonl()),
    ):
        path = tmp_path / name
        path.write_bytes(text.encode(coding))
        done = cli("hub", "import", "--hub-dir", hub_dir, path)
        assert done.code == 2, done.err
        assert done.err.strip().endswith("not valid JSON (not UTF-8 text)"), (name, done.err)
        assert "\n" not in done.err.strip()
    done = cli("hub", "status", "--hub-dir", hub_dir, "--json")
    assert done.code == 0, done.err


@pytest.mark.parametrize("coding", _CODINGS)
def test_s2_snapshot_load_of_utf16_without_a_bom_is_not_utf8_text(
    cli: Any, tmp_path: Path, coding: str
) -> None:
    """The same at `snapshot load` (a JSON document or JSON Lines, a file or stdin's
    first line): UTF-16 big-endian was "not a snapshot: it does not start with a JSON
    object's {", little-endian "not UTF-8 text"; one wording now, the cache untouched."""
    for name, text in (("snap.json", json.dumps(snapshot())), ("snap.jsonl", _snapshot_jsonl())):
        path = tmp_path / name
        path.write_bytes(text.encode(coding))
        done = cli("snapshot", "load", path)
        assert done.code == 2, done.err
        assert done.err.strip() == f"tillpoint: {path}: not valid JSON (not UTF-8 text)", done.err
    assert cli("status", "--json").json()["cacheVersion"] == 0


# ---------------------------------------------------------------- tillpoint's own file, torn


def test_s10_tillpoints_own_file_torn_mid_write_beside_its_journal_is_never_refused(
    tmp_path: Path,
) -> None:
    """CONTRACT §10: a file with a hot `-journal` is asked "another program's?" on its
    pages as written (`immutable`, review 39 rev39d). tillpoint's own ledger (on a file
    system without WAL, in SQLite's rollback journal) killed in the middle of a schema
    write has some of the write's pages in the file and some not: a false refusal would
    stop the till for good. Every mix of the schema's changed pages (the table list's
    and `_sqlite_migrations`'), the others new or old, is taken as tillpoint's own (or
    left to the opening that rolls the journal back). Found right; pinned."""
    import itertools
    import sqlite3

    from tillpoint.agent import db, ledger

    ledger.open_ledger(tmp_path).close()
    path = tmp_path / "ledger.db"
    with contextlib_closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    before = path.read_bytes()
    with contextlib_closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        for i in range(60):  # a later release's steps: the table list splits its pages
            conn.execute(f"CREATE TABLE later_step_table_of_a_long_name_{i:03d} (a, b, c, d)")
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('tillpoint.ledger', 'later', '')"
        )
        conn.execute("COMMIT")
        schema = sorted(
            page - 1
            for (page,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name IN ('sqlite_schema', 'sqlite_master',"
                " '_sqlite_migrations')"
            )
        )
    after = path.read_bytes()
    size = 4096
    torn = tmp_path / "torn"
    torn.mkdir()
    file = torn / "ledger.db"
    (torn / "ledger.db-journal").write_bytes(bytes.fromhex("d9d505f920a163d7") + bytes(504))
    old = before + bytes(len(after) - len(before))
    changed = [
        p for p in schema if old[p * size : (p + 1) * size] != after[p * size : (p + 1) * size]
    ]
    assert len(changed) >= 4, changed
    changed = changed[:10]
    for k in range(len(changed) + 1):
        for pages in itertools.combinations(changed, k):
            mixed = bytearray(old)
            for p in pages:
                mixed[p * size : (p + 1) * size] = after[p * size : (p + 1) * size]
            file.write_bytes(bytes(mixed))
            db.refuse_foreign_wal(file)  # never ForeignDatabase
