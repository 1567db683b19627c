"""Review 38, rev38g: rev38c's and spec38b's merged changes read again adversarially, and
the items they left, with real parts (the `tillpoint` CLI as a process, SQLite files, a
live agent beside a one-shot, the display's bytes, the printed coupon).

Faults found (each shown failing first):
- CONTRACT §8: a stress mark still counted as a display column, so "Ната́ша, добрый
  день!" (20 columns once the mark the code page lacks is dropped) fell back to "Добрый
  день!" and the name went;
- CONTRACT §7/§8: a first name of combining marks only ("\\u0301") was a name: the
  display showed ", добрый день!" and the coupon ", ждём вас снова!";
- CONTRACT §10: a listen whose host no system resolves (`::P`, read as host ":", and a
  host with a blank: `[ ::1]:P`, ` 127.0.0.1:P`) passed `config check`; `run` then
  failed to bind, exit 1;
- `hub serve` over a refused store (another program's `hub.db`, a file that is no SQLite
  file) made the hub's whole `keys/` (a CA, a server certificate, a snapshot key) first;
- a hub store a later release wrote said "restore the data directory" (a till's words);
- a refused `ledger.db` (another program's, or no SQLite file) got `cache.db` and
  `phone.key` made beside it before the refusal.

Found right: a PostgreSQL hub database of the first release is upgraded, not refused; a
one-shot beside a live agent whose ledger has an unchecked `-wal` reads
the latest sale, does not wait for a writer, leaves the `-wal` as it was; a stress mark
is dropped on every Cyrillic code page and with the transliteration on Latin ones;
every listen form `config check` takes is handed to gRPC in the form HTTP binds.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.config import listen_text, pinned_listen, split_listen
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import message_bytes, showable
from tillpoint.printer.messages import greeting, greeting_line
from tillpoint.printer.text import degrade

from .conftest import CLI, free_port, receipt, snapshot
from .test_review38_rev38c import _digest, _one_line, _tillpoint
from .test_review38_spec38b import _preview

# ---------------------------------------- 1. the display's width after an accent's drop

STRESSED = "Ната\u0301ша"  # "Ната́ша": а + COMBINING ACUTE ACCENT, 7 code points, 6 letters


def test_s8_a_stressed_name_that_fits_once_its_mark_is_dropped_is_greeted_by_name() -> None:
    """CONTRACT §8: the greeting keeps the name while it fits the 20 columns. "Наташа,
    добрый день!" is 20; with its stress mark (dropped on the display: CP866 has no
    accent) it was counted 21, and the display said "Добрый день!" without the name. The
    name is now greeted without the mark, and every line is at most 20 characters."""
    assert greeting_line(STRESSED) == "Наташа, добрый день!"
    shown = message_bytes(greeting(STRESSED, 1192), DisplayConfig())
    assert "Наташа, добрый день!".encode("cp866") in shown
    assert "Бонусы: 1192".encode("cp866") in shown
    # without a balance: one row, not "Добрый день," over the name
    assert showable(greeting(STRESSED), "cp866") == ["Наташа, добрый день!", ""]
    assert all(len(line) <= 20 for line in greeting(STRESSED, 1192) + greeting(STRESSED))


@pytest.mark.parametrize("name", ["\u0301", "\u0301\u0301", "\u20dd", "\u0301 "])
def test_s8_a_first_name_of_combining_marks_only_is_no_name(name: str) -> None:
    """CONTRACT §8: a greeting without a name is "Добрый день!". A first name of
    combining marks only (no letter under them) was a name: the display showed ",
    добрый день!" once the marks the code page lacks went."""
    assert greeting(name, 5) == ["Добрый день!", "Бонусы: 5"]
    assert greeting(name) == ["Добрый день!", ""]
    shown = message_bytes(greeting(name, 5), DisplayConfig())
    assert ", добрый".encode("cp866") not in shown


def test_s7_a_first_name_of_combining_marks_only_is_left_off_the_coupon(
    cli: CLI, tmp_path: Any
) -> None:
    """CONTRACT §7: the coupon greets by the first name, "Ждём вас снова!" without one.
    A name of a lone stress mark printed ", ждём вас снова!"."""
    text = _preview(cli, tmp_path, "\u0301", "Скидка")
    assert "Ждём вас снова!" in text
    assert ", ждём" not in text


@pytest.mark.parametrize(
    ("codec", "shown"),
    [
        ("cp866", "Наташа"),
        ("cp1251", "Наташа"),
        ("cp855", "Наташа"),
        ("koi8_r", "Наташа"),
        ("iso8859_5", "Наташа"),
        ("mac_cyrillic", "Наташа"),
        ("cp437", "Natasha"),
        ("cp852", "Natasha"),
        ("cp1252", "Natasha"),
    ],
)
def test_s8_a_stress_mark_goes_on_every_code_page_that_lacks_it(codec: str, shown: str) -> None:
    """Found right: CONTRACT §7/§8's drop on every single-byte page (the Cyrillic ones, and
    the Latin ones after the transliteration); a Latin accent the page has stays."""
    assert degrade(STRESSED, codec) == shown
    assert degrade("Zoe\u0308", "cp1252") == "Zoë"


# ---------------------------------------- 2. listen forms `config check` takes


@pytest.mark.parametrize(
    "listen",
    ["::{p}", "[ ::1]:{p}", " 127.0.0.1:{p}", "[127.0.0.1 ]:{p}"],
    ids=["colon-host", "blank-in-brackets", "leading-blank", "trailing-blank"],
)
def test_s10_a_listen_whose_host_no_system_resolves_is_refused_by_config_check_and_run(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, listen: str
) -> None:
    """CONTRACT §10: `config check` calls valid what `run` serves. `::8061` (read as the
    host ":"; `[::]:8061` was meant) and a host with a blank passed `config check`; `run`
    then said "the name : does not resolve", exit 1. Both refuse them now, exit 2."""
    written = listen.format(p=free_port())
    monkeypatch.setenv("TILLPOINT_SERVER__LISTEN", written)
    monkeypatch.setenv("TILLPOINT_SERVER__TOKEN", "t" * 32)
    for args in (("config", "check"), ("run",)):
        done = cli(*args)
        assert done.code == 2, (args, done.err)
        line = _one_line(done.err)
        assert "server.listen" in line, (args, line)


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:8061",
        "[127.0.0.1]:8061",
        "[::1]:8061",
        "::1:8061",
        ":::8061",
        "[::]:0",
        "0.0.0.0:0",
        "localhost:8061",
        "[localhost]:8061",
        "[fe80::1%lo]:8061",
        "127.0.0.1:08061",
    ],
)
def test_s10_every_listen_form_config_check_takes_is_handed_to_grpc_as_http_reads_it(
    listen: str,
) -> None:
    """Found right: gRPC gets the host and port HTTP and /metrics bind (`split_listen`),
    in the one form gRPC reads (brackets round an IPv6 address, none round the rest)."""
    host, port = split_listen(listen)
    pinned = pinned_listen(listen)
    assert split_listen(pinned)[0] == host
    if port:
        assert pinned == listen_text(host, port)


# ---------------------------------------- 3. hub serve over a refused store


def _foreign_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor INTEGER)")
    conn.execute("INSERT INTO orders VALUES (1, 17980)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["another-programs", "not-sqlite"])
def test_s10_hub_serve_over_a_refused_store_makes_no_keys(tmp_path: Path, kind: str) -> None:
    """CONTRACT §10: a refused store is left as it was, and nothing is made beside it.
    `hub serve` in a directory whose `hub.db` is another program's (or no SQLite file)
    made the hub's CA, server certificate and snapshot key in `keys/`, then refused:
    a later `hub init` there kept those keys."""
    hub_dir = tmp_path / "hub"
    store = hub_dir / "hub.db"
    if kind == "not-sqlite":
        hub_dir.mkdir()
        store.write_text("id,total_minor\n1,17980\n", encoding="utf-8")
    else:
        _foreign_sqlite(store)
    before = _digest(store)
    done = _tillpoint("hub", "serve", "--hub-dir", str(hub_dir), "--listen", "127.0.0.1:0")
    assert done.returncode == 2, done.stderr
    _one_line(done.stderr)
    assert _digest(store) == before
    assert sorted(p.name for p in hub_dir.iterdir()) == ["hub.db"]


def test_s10_a_hub_store_a_later_release_wrote_names_the_hub_database(tmp_path: Path) -> None:
    """CONTRACT §10: a later release's file is exit 2, with what to do. The hub's store
    said "restore the data directory saved before it was installed", a till's words: a
    hub has a hub database (and its directory of keys and snapshots)."""
    hub_dir = tmp_path / "hub"
    assert _tillpoint("hub", "init", "--hub-dir", str(hub_dir)).returncode == 0
    conn = sqlite3.connect(hub_dir / "hub.db")
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('tillpoint.hub', 'm999_from_the_future', '2027-01-01T00:00:00')"
    )
    conn.commit()
    conn.close()
    done = _tillpoint("hub", "status", "--hub-dir", str(hub_dir))
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert "another tillpoint release" in line, line
    assert "data directory" not in line and "restore the hub database" in line, line


# ---------------------------------------- 4. a refused ledger: nothing made beside it


@pytest.mark.parametrize("kind", ["another-programs", "not-sqlite"])
def test_s10_a_refused_ledger_gets_no_cache_or_phone_key_beside_it(
    tmp_path: Path, kind: str
) -> None:
    """CONTRACT §10: another program's file as `ledger.db` (or no SQLite file at all) is
    refused and left as it was; the data directory stays as the operator found it. The
    till made `cache.db` (94 KiB) and `phone.key` (a new secret) beside it first."""
    data = tmp_path / "data"
    ledger = data / "ledger.db"
    if kind == "not-sqlite":
        data.mkdir()
        ledger.write_bytes(b"garbage, not a database at all\n")
    else:
        _foreign_sqlite(ledger)
    before = _digest(ledger)
    done = _tillpoint("status", env={"TILLPOINT_DATA_DIR": str(data), "TILLPOINT_CLI_LOCAL": "1"})
    assert done.returncode != 0, done.stdout
    _one_line(done.stderr)
    assert _digest(ledger) == before
    made = sorted(p.name for p in data.iterdir() if not p.name.endswith(".lock"))
    assert made == ["ledger.db"], made


# ---------------------------------------- 5. a one-shot beside a live agent's -wal


def test_s10_a_one_shot_beside_a_live_agent_reads_its_unchecked_wal_and_leaves_it(
    tmp_path: Path,
) -> None:
    """Found right: rev38c's read-only look at a file with a `-wal` (`refuse_foreign_wal`)
    runs at every one-shot's open beside a live `run`, whose ledger always has one (its
    checkpoints are its own). The one-shot sees the sale just committed, waits for no
    writer (a write transaction held open beside it), and leaves the `-wal` and `-shm`
    for the agent."""
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    try:
        agent.load_snapshot(snapshot())
        agent.checkout(receipt_from_json(receipt("r1")))
        wal = data / "ledger.db-wal"
        assert wal.stat().st_size > 0
        writer = sqlite3.connect(data / "ledger.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
        try:
            done = _tillpoint(
                "status",
                "--json",
                env={"TILLPOINT_DATA_DIR": str(data), "TILLPOINT_CLI_LOCAL": "1"},
            )
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["outboxDepth"] == 1
        assert wal.stat().st_size > 0 and (data / "ledger.db-shm").exists()
        again = agent.checkout(receipt_from_json(receipt("r2")))  # the agent writes on
        assert again.receipt_id == "r2"
    finally:
        agent.close()


# ---------------------------------------- 6. the PostgreSQL check on an older hub database


def test_s10_a_postgres_hub_database_of_the_first_release_is_upgraded_not_refused(
    pg_url: str,
) -> None:
    """Found right: rev38c's `_refuse_foreign` asks for tillpoint's `schema_migrations`
    (three columns, step 1 `hub`). A hub database the first PostgreSQL release made
    (2026-11-30: step 1 only, its `schema_migrations` the same) is tillpoint's: `hub
    migrate` brings it up to date, and the store opens it."""
    import psycopg
    from tillpoint.sync.hub_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresHubStore, migrate

    number, name, sql = MIGRATIONS[0]
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        # what the first release's `migrate` wrote, step by step
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        conn.execute(sql.encode())
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (number, name)
        )
    applied = migrate(pg_url)
    assert applied == [n for n, _, _ in MIGRATIONS[1:]]
    PostgresHubStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        found = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    assert found is not None and found[0] == SCHEMA_VERSION
