"""Review 38, rev38c: session 37's input checks and its refusal of another program's
database read again as an operator and an integrator meet them, and the small items
rev37d, rev37g and spec37b left, with real parts (the `tillpoint` CLI, SQLite files,
a gRPC server, the HTTP interface).

Faults found (each shown failing first):
- another program's SQLite file in WAL mode, left with its `-wal` (that program stopped
  without its last checkpoint), was refused as CONTRACT §10 says, but tillpoint's
  closing connection checkpointed it: the file changed under the refusal that called it
  "left as it was", and its `-wal` was removed;
- a listen in a form gRPC cannot read (`[127.0.0.1]:P`, `::1:P`) passed `config check`
  and was served by HTTP, but `run` failed to bind gRPC, exit 1; a half-bracketed one
  (`[::1:P`, `::1]:P`) and `*:P` passed `config check` too;
- `hub init --host '[::1]'` said the address is not one a certificate can name (no word
  of the brackets); `hub init` over another program's `hub.db` made `keys/` first;
- `hub.poll_interval_s = inf` (or `1e-300`, `1e300`) passed `config check`;
- `/openapi.json`'s int64 digit-string pattern refused `"-0"`/`"-01"`, which the agent
  takes, and took a string past int64, which the agent refuses (400);
- the snapshot's `holdTtlSeconds: 1.5` was told to "write money in minor units";
- `print retry` of a job a stop set back said it was "queued and not tried yet";
- the hub's PostgreSQL store at another program's database: `hub init` wrote the hub's
  tables into it (exit 0), golang-migrate's `schema_migrations` read as "a later
  release", others failed in PostgreSQL's words, exit 1, `schema_migrations` left;
- a hub store that is no SQLite file at all: exit 1, `hub serve` restarted for ever.

Found right: a 0-byte file is a new one at every door; a later release's file is exit 2
and left as it was (ledger, cache, hub store); `localhost`, `[::]` beside `0.0.0.0`,
`0.0.0.0` beside `127.0.0.1` on one port are one port for two servers; ports past 65535
refused; `print queue` on another program's file says it has no print queue.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.http_api import HttpServer, openapi
from tillpoint.agent.service import Agent

from .conftest import CLI, free_port, ipv6_loopback, receipt, snapshot

EXE = str(Path(sys.executable).with_name("tillpoint"))  # the console script, a real process


def _tillpoint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "TILLPOINT_DEVICE_ID": "till-1", **(env or {})},
        check=False,
    )


def _one_line(err: str) -> str:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------- 1. another program's WAL file, its -wal left


def _crashed_wal_database(path: Path) -> None:
    """Another program's SQLite file in WAL mode whose last writes are still in its
    `-wal` (the program was killed before it checkpointed): the file and its `-wal` as
    such a crash leaves them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.with_name("work.db")
    conn = sqlite3.connect(work)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor INTEGER)")
    conn.execute("INSERT INTO orders (total_minor) VALUES (17980)")
    conn.commit()
    shutil.copyfile(work, path)  # as the crash left them: the commit in the -wal alone
    shutil.copyfile(work.with_name("work.db-wal"), path.with_name(path.name + "-wal"))
    conn.close()
    work.unlink()


@pytest.mark.parametrize("name", ["ledger.db", "cache.db"])
def test_s10_another_programs_wal_file_with_its_wal_left_is_refused_untouched(
    tmp_path: Path, name: str
) -> None:
    """CONTRACT §10 (another program's database: exit 2, the file left as it was). A WAL
    file whose last commit is still in its `-wal` was refused, but the refusing
    connection, the last one to close, checkpointed the `-wal` into the file and
    removed it: the file changed, byte for byte, under "it is left as it was"."""
    data = tmp_path / "data"
    path = data / name
    _crashed_wal_database(path)
    wal = path.with_name(name + "-wal")
    before, wal_before = _digest(path), _digest(wal)
    done = _tillpoint("--data-dir", str(data), "status", "--json")
    assert done.returncode == 2, done.stderr
    assert "another program's SQLite database (its tables: orders)" in _one_line(done.stderr)
    assert _digest(path) == before, "the file is as it was"
    assert wal.exists() and _digest(wal) == wal_before, "its -wal is as it was"
    conn = sqlite3.connect(path)  # that program's data is all there still
    assert conn.execute("SELECT total_minor FROM orders").fetchall() == [(17980,)]
    conn.close()


def test_s10_a_hub_store_that_is_another_programs_wal_file_is_refused_untouched(
    tmp_path: Path,
) -> None:
    """CONTRACT §10, the hub's store: the same file as `hub.db` (`hub status`)."""
    hub_dir = tmp_path / "hub"
    path = hub_dir / "hub.db"
    _crashed_wal_database(path)
    before = _digest(path)
    done = _tillpoint("hub", "status", "--hub-dir", str(hub_dir))
    assert done.returncode == 2, done.stderr
    assert "another program's SQLite database" in _one_line(done.stderr)
    assert _digest(path) == before
    assert path.with_name("hub.db-wal").exists()


# ---------------------------------------- 2. hub init


def test_s10_hub_init_of_a_bracketed_ipv6_host_says_to_write_it_without_brackets(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (a clear one-line error). `--host '[::1]'` (as a listen writes it)
    was "not a host name or an IP address a certificate can name", the address itself
    being one: the line now says to write it without brackets. Nothing is made."""
    hub_dir = tmp_path / "hub"
    done = _tillpoint("hub", "init", "--hub-dir", str(hub_dir), "--host", "[::1]")
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert "without brackets" in line and "--host ::1" in line, line
    assert not hub_dir.exists()


def test_s10_hub_init_over_another_programs_hub_db_leaves_nothing_behind(tmp_path: Path) -> None:
    """CONTRACT §10: `hub init` into a directory whose `hub.db` is another program's
    database was refused (exit 2, the file untouched), but only after it had made the
    hub's CA, server certificate and snapshot key in `keys/` beside it. Now the store is
    refused before any key is made."""
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    path = hub_dir / "hub.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = _digest(path)
    done = _tillpoint("hub", "init", "--hub-dir", str(hub_dir), "--host", "127.0.0.1")
    assert done.returncode == 2, done.stderr
    assert "another program's SQLite database" in _one_line(done.stderr)
    assert sorted(p.name for p in hub_dir.iterdir()) == ["hub.db"]
    assert _digest(path) == before


# ---------------------------------------- 3. hub.poll_interval_s


@pytest.mark.parametrize("value", ["inf", "1e-300", "1e300", "0.05", "86401"])
def test_s10_a_poll_interval_past_sane_bounds_is_a_configuration_error(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """CONTRACT §10 (a configuration error: exit 2, one line). `inf` made the till never
    poll again and `1e-300` poll in a busy loop; both passed `config check`. The
    interval is now between 0.1 s and a day."""
    monkeypatch.setenv("TILLPOINT_HUB__POLL_INTERVAL_S", value)
    done = cli("config", "check")
    assert done.code == 2, done.err
    line = _one_line(done.err)
    assert "hub.poll_interval_s must be" in line, line  # finite, 0.1 or more, at most 86400


@pytest.mark.parametrize("value", ["0.1", "60", "86400"])
def test_s10_a_poll_interval_within_bounds_is_taken(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TILLPOINT_HUB__POLL_INTERVAL_S", value)
    done = cli("config", "check")
    assert done.code == 0, done.err
    shown = json.loads(done.out.split("\n", 1)[1])  # after "configuration is valid"
    assert math.isclose(shown["hub"]["poll_interval_s"], float(value))


# ---------------------------------------- 4. listen forms: config check and run agree


@pytest.mark.parametrize(
    ("listen", "words"),
    [
        ("[::1:{p}", "brackets"),
        ("::1]:{p}", "brackets"),
        ("*:{p}", "0.0.0.0"),
    ],
    ids=["open-bracket", "close-bracket", "star"],
)
@pytest.mark.parametrize("section", ["server", "http", "metrics"])
def test_s10_a_listen_no_server_can_bind_is_refused_by_config_check_and_run(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, section: str, listen: str, words: str
) -> None:
    """CONTRACT §10: `config check` calls valid what `run` serves. A half-bracketed
    address and `*` passed `config check` (with a token); `run` then failed to bind (gRPC
    cannot read them; `*` is no name the system resolves), exit 1. Both refuse them now,
    exit 2, with one line that says how to write it."""
    written = listen.format(p=free_port())
    monkeypatch.setenv(f"TILLPOINT_{section.upper()}__LISTEN", written)
    if section != "metrics":  # /metrics has no token: beyond loopback is its operator's call
        monkeypatch.setenv(f"TILLPOINT_{section.upper()}__TOKEN", "t" * 32)
    monkeypatch.setenv("TILLPOINT_METRICS__ENABLED", "true")
    for args in (("config", "check"), ("run",)):
        done = cli(*args)
        assert done.code == 2, (args, done.err)
        line = _one_line(done.err)
        assert f"{section}.listen" in line and words in line, (args, line)


def _bracketed_or_bare() -> list[Any]:
    forms = [pytest.param("[127.0.0.1]:{p}", "127.0.0.1", id="bracketed-ipv4")]
    forms.append(
        pytest.param(
            "::1:{p}",
            "::1",
            id="bare-ipv6",
            marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback"),
        )
    )
    return forms


@pytest.mark.parametrize(("listen", "host"), _bracketed_or_bare())
def test_s10_a_listen_config_check_takes_is_one_grpc_serves(
    agent: Agent, cli: CLI, monkeypatch: pytest.MonkeyPatch, listen: str, host: str
) -> None:
    """CONTRACT §10: `[127.0.0.1]:P` and `::1:P` are read as the host and the port (HTTP
    and /metrics bound them so), and `config check` takes them; gRPC was handed the
    text as written and refused it ("Failed to bind"), so `run` stopped, exit 1. gRPC
    now binds the address as every other server reads it."""
    import grpc
    from tillpoint.agent.server import build_server

    port = free_port()
    written = listen.format(p=port)
    monkeypatch.setenv("TILLPOINT_SERVER__LISTEN", written)
    assert cli("config", "check").code == 0
    server, bound, _ = build_server(agent, written)
    server.start()
    try:
        assert bound == port
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
    finally:
        server.stop(0).wait()


# ---------------------------------------- 5. openapi's int64 strings and the agent


def _int64_string_patterns() -> dict[str, str]:
    """Each request field's int64 string form in `/openapi.json`: its pattern, by name."""
    found: dict[str, str] = {}

    def walk(node: Any, name: str = "") -> None:
        if isinstance(node, dict):
            for form in node.get("anyOf", []):
                if isinstance(form, dict) and form.get("type") == "string" and "pattern" in form:
                    found[name] = form["pattern"]
            for key, value in node.items():
                walk(value, key if key not in ("anyOf", "properties") else name)
        elif isinstance(node, list):
            for item in node:
                walk(item, name)

    walk(json.loads(json.dumps(openapi())))
    return found


def _quote(port: int, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/quote",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redeemPoints", "-0"),
        ("redeemPoints", "-01"),
        ("redeemPoints", "-001"),
        ("redeemPoints", "-00"),
        ("redeemPoints", "-2"),
        ("redeemPoints", "-10"),
        ("redeemPoints", "0007"),
        ("redeemPoints", "9223372036854775807"),
        ("redeemPoints", "00009223372036854775807"),
        ("redeemPoints", "9223372036854775808"),
        ("redeemPoints", "9323372036854775807"),
        ("redeemPoints", "10000000000000000000"),
        ("priceMinor", "-0"),
        ("priceMinor", "-000"),
        ("priceMinor", "-1"),
        ("priceMinor", "0100"),
        ("priceMinor", "9223372036854775808"),
        ("priceMinor", "99999999999999999999"),
    ],
)
def test_s12_openapis_int64_string_pattern_takes_what_the_agent_takes(
    server: HttpServer, field: str, value: str
) -> None:
    """CONTRACT §12 (`/openapi.json` states each request field's limits as the agent
    checks them). The digit-string form of `priceMinor` (`^[0-9]+$`) and `redeemPoints`
    (`^(-1|[0-9]+)$`) refused `"-0"` and `"-01"`, which the agent reads as 0 and −1, and
    took a string past int64, which the agent refuses (400): a validator built from the
    document and the agent disagreed. Now one says what the other does."""
    pattern = _int64_string_patterns()[field]
    body = receipt()
    if field == "priceMinor":
        body["lines"][0]["priceMinor"] = value
    else:
        body[field] = value
    accepted = _quote(server.port, body) == 200
    assert (re.search(pattern, value) is not None) == accepted, (pattern, value, accepted)


# ---------------------------------------- 6. a fraction of a second in a snapshot


def test_s10_a_hold_ttl_with_a_fraction_is_told_in_seconds(cli: CLI, tmp_path: Path) -> None:
    """CONTRACT §10 (a clear one-line error, nothing changed). `holdTtlSeconds: 1.5` was
    refused with "write money in minor units (whole numbers) and quantities as decimal
    strings": the field is seconds. Money's fields keep their words."""
    snap = snapshot()
    snap["program"]["holdTtlSeconds"] = 1.5
    done = cli("snapshot", "load", snap)
    assert done.code == 2, done.err
    line = _one_line(done.err)
    assert line == (
        "tillpoint: program.holdTtlSeconds: the number 1.5 has a decimal point:"
        " write a whole number of seconds"
    ), line
    assert cli("status", "--json").json()["cacheVersion"] in (0, None)  # nothing loaded
    money = snapshot()
    money["products"][0]["priceMinor"] = 89.9  # the products' own money
    said = _one_line(cli("snapshot", "load", money).err)
    assert said.endswith(
        "write money in minor units (whole numbers) and quantities as decimal strings"
    ), said


# ---------------------------------------- 7. print retry of a job a stop set back


def test_s7_print_retry_of_a_job_a_stop_set_back_says_what_happened(
    queue_with_stopped_job: tuple[Path, str], cli: CLI
) -> None:
    """CONTRACT §7, §10. A job whose bytes a stop broke off is PENDING again, to be printed
    in full (docs/PRINTING.md): `print retry` said it was "queued and not tried yet",
    which is not what happened. It now says it was broken off and is printed again in
    full (exit 2 still: it is queued already, nothing to put back)."""
    ledger_path, receipt_id = queue_with_stopped_job
    done = cli("print", "retry", receipt_id)
    assert done.code == 2, done.err
    line = _one_line(done.err)
    assert "not tried yet" not in line, line
    assert "the agent stopped while the job was sent" in line and "printed again" in line, line
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    assert conn.execute("SELECT state FROM print_jobs").fetchone() == ("PENDING",)
    conn.close()


@pytest.fixture
def queue_with_stopped_job(tmp_path: Path) -> tuple[Path, str]:
    """The till's ledger (`cli`'s data directory) with a job a real worker's stop broke
    off while its bytes were on their way to a TCP printer that stopped reading."""
    from tillpoint.printer.queue import ensure_schema
    from tillpoint.printer.virtual import VirtualPrinter

    from .test_printer_queue import NOW, add_job, payload, worker

    data = tmp_path / "data"
    data.mkdir()
    ledger_path = data / "ledger.db"
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    ensure_schema(conn)
    conn.close()
    receipt_id = "s1-t1-000124"
    add_job(ledger_path, payload(receipt_id))
    from .conftest import ManualClock

    with VirtualPrinter() as printer:
        w = worker(ledger_path, printer.port, ManualClock(NOW))
        try:
            # the stop's own words for a job whose write it broke off (`_stopped_sending`)
            w._stopped_sending(_job_of(w, receipt_id), ConnectionAbortedError("aborted"))
        finally:
            w.close()
    return ledger_path, receipt_id


def _job_of(w: Any, receipt_id: str) -> Any:
    from tillpoint.printer.queue import _Job

    row = w.job(receipt_id)
    return _Job(row["id"], receipt_id, None, "", row["attempts"], None)


# ---------------------------------------- 8. the PostgreSQL hub's DSN at another program's


def _pg_tables(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() ORDER BY table_name"
            )
        ]
        return {n: int(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}


_OTHER_PROGRAMS = {
    "plain": ["CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor BIGINT)"],
    # golang-migrate's table: its version read as "a later release's schema"
    "golang-migrate": [
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, dirty BOOLEAN NOT NULL)",
        "INSERT INTO schema_migrations VALUES (20230101120000, false)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY)",
    ],
    # Rails': "COALESCE types text and integer cannot be matched", exit 1
    "rails": [
        "CREATE TABLE schema_migrations (version VARCHAR PRIMARY KEY)",
        "INSERT INTO schema_migrations VALUES ('20230101120000')",
    ],
    # a table of tillpoint's name: "relation meta already exists", exit 1
    "meta": ["CREATE TABLE meta (k TEXT)"],
}


@pytest.mark.parametrize(
    ("command", "kind"),
    [("init", kind) for kind in sorted(_OTHER_PROGRAMS)] + [("migrate", "plain")],
)
def test_s10_a_postgres_hub_store_that_is_another_programs_database_is_refused_untouched(
    pg_url: str, tmp_path: Path, kind: str, command: str
) -> None:
    """CONTRACT §10 (another program's database: exit 2, FAILED_PRECONDITION, the
    database left as it was), the hub's PostgreSQL store. A DSN naming another program's
    database got tillpoint's sixteen tables written into it (`hub init`, exit 0), or was
    said to be "migrated by a later release" (golang-migrate's `schema_migrations`), or
    failed in PostgreSQL's words, exit 1, with tillpoint's `schema_migrations` left in
    it. `hub init` made `keys/` first. Now refused before anything is written."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        for sql in _OTHER_PROGRAMS[kind]:
            conn.execute(sql)
    before = _pg_tables(pg_url)
    hub_dir = tmp_path / "hub"
    args = ["hub", command, "--hub-dir", str(hub_dir), "--store", pg_url]
    if command == "init":
        args += ["--host", "127.0.0.1"]
    done = _tillpoint(*args)
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert "another program's PostgreSQL database" in line, line
    assert "later release" not in line, line
    assert _pg_tables(pg_url) == before
    assert not hub_dir.exists() or not any(hub_dir.iterdir())


def test_s10_a_postgres_hub_store_of_tillpoints_own_is_taken_again(pg_url: str) -> None:
    """Found right, kept so: an empty database is a new hub's, and tillpoint's own is
    migrated and opened again (a database it shares with other tables is its own too)."""
    import psycopg
    from tillpoint.sync.hub_postgres import PostgresHubStore, migrate

    assert migrate(pg_url)  # a new hub's: every step applied
    assert migrate(pg_url) == []
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE reports (id INTEGER PRIMARY KEY)")
    PostgresHubStore(pg_url).close()
    assert migrate(pg_url) == []


# ---------------------------------------- 9. a hub store that is not SQLite at all


@pytest.mark.parametrize("command", ["status", "serve"])
def test_s10_a_hub_store_that_is_not_sqlite_at_all_is_exit_2_untouched(
    tmp_path: Path, command: str
) -> None:
    """CONTRACT §10 (what an operator must mend: exit 2, not restarted for ever). A
    `hub.db` that is no SQLite file (another program's file, a store named by mistake)
    was "cannot open the hub database …: file is not a database", exit 1: `hub serve`'s
    unit restarted for ever. The till's own files say "damaged" (DECISIONS); the hub's
    store now says what it is, exit 2, the file as it was."""
    hub_dir = tmp_path / "hub"  # the store named by --store: a hub there (`HubDir.exists`)
    store = tmp_path / "orders.csv"
    store.write_text("id,total_minor\n1,17980\n", encoding="utf-8")
    before = _digest(store)
    args = ["hub", command, "--hub-dir", str(hub_dir), "--store", str(store)]
    if command == "serve":
        args += ["--listen", "127.0.0.1:0"]
    done = _tillpoint(*args)
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert "is not an SQLite database" in line and "left as it was" in line, line
    assert _digest(store) == before
    assert [p.name for p in tmp_path.glob("orders.csv*")] == ["orders.csv"]


def test_a_new_thread_s_store_connection_keeps_the_hubs_lock_on_its_file(
    tmp_path: Path,
) -> None:
    """CONTRACT §9, §11 (nothing lost): the check that a hub store is an SQLite file at
    all (rev38c) opened and closed the file itself at every new thread's connection; a
    process that closes any descriptor of a file drops every POSIX lock it holds on it,
    SQLite's connections' too. A live hub (a connection a gRPC thread) so lost its shared
    lock on `hub.db`: another process closing its own connection then took itself for
    the last one, checkpointed and deleted the `-wal` under the hub, and the hub's writes
    after it went to a deleted file (review 33's till of the release before saw its
    release lost). Now asked of SQLite itself."""
    import threading

    from tillpoint.sync.hub_sqlite import SqliteHubStore

    path = tmp_path / "hub.db"
    store = SqliteHubStore(path)
    try:
        opened = threading.Thread(target=store._conn)  # a gRPC thread's first call
        opened.start()
        opened.join(30)
        code = (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1])\n"
            "c.execute('SELECT count(*) FROM sqlite_master').fetchone()\n"
            "c.close()\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert other.returncode == 0, other
        assert path.with_name("hub.db-wal").exists(), "another process deleted the hub's -wal"
    finally:
        store.close()
