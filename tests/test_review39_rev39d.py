"""Review 39, rev39d: session 38's configuration reading, identification and foreign-file
checks read again (CONTRACT §4, §10, §12).

- The configuration is read without pydantic-settings in the common case (perf38): the
  reading is compared here, over generated configurations (a TOML file × TILLPOINT_*
  variables × flags), with pydantic-settings' own `BaseSettings` built as the release
  before built `Settings` — the oracle: what it took gives the same Settings, what it
  refused is refused with the same one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError, create_model, field_validator
from tillpoint.agent import config
from tillpoint.agent.errors import InputError
from tillpoint.agent.models import describe

# ---------------------------------------------------------------- the oracle: the release before

_ORACLE_FILE: ContextVar[dict[str, Any] | None] = ContextVar("rev39d_oracle_file", default=None)


def _oracle_class() -> Any:
    """`Settings` as the release before review 38's perf38 defined it: pydantic-settings'
    `BaseSettings` with the same fields and validators, its sources (highest first) the
    init values (flags), the environment (TILLPOINT_, `__` for a table's key) and the
    TOML file's tables (an init source, as `_TomlFile` was)."""
    from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

    class Before(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix="TILLPOINT_", env_nested_delimiter="__", extra="forbid"
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: Any,
            init_settings: Any,
            env_settings: Any,
            dotenv_settings: Any,
            file_secret_settings: Any,
        ) -> tuple[Any, ...]:
            values = _ORACLE_FILE.get() or {}
            return (init_settings, env_settings, InitSettingsSource(settings_cls, values))

    validators = {}
    for name, decorator in config.Settings.__pydantic_decorators__.field_validators.items():
        info, own = decorator.info, config.Settings.__dict__[name]  # the classmethod itself
        validators[name] = field_validator(*info.fields, mode=info.mode)(own)
    fields = {name: (f.annotation, f) for name, f in config.Settings.model_fields.items()}
    return create_model(  # type: ignore[call-overload]
        "SettingsBefore", __base__=Before, __validators__=validators, **fields
    )


_BEFORE = _oracle_class()


def _before(path: Path | None, values: dict[str, Any], flags: dict[str, Any]) -> Any:
    """What the release before's `load(path, **flags)` gave: ("ok", the settings' dump) or
    ("refused", its one line)."""
    from pydantic_settings import SettingsError

    token = _ORACLE_FILE.set(values)
    try:
        return ("ok", _BEFORE(**flags).model_dump())
    except ValidationError as exc:
        return ("refused", f"config: {describe(exc)}{config._source_of(exc, path)}")
    except SettingsError as exc:
        return ("refused", f"config: {config._env_problem(exc)}")
    finally:
        _ORACLE_FILE.reset(token)


def _now(path: Path | None, flags: dict[str, Any]) -> Any:
    try:
        return ("ok", config.load(path, **flags).model_dump())
    except InputError as exc:
        return ("refused", str(exc))


# ---------------------------------------------------------------- TOML written from values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(values: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in values.items())


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly `env`'s TILLPOINT_* variables for the block (hypothesis runs the body many
    times in one test: monkeypatch's undo comes only at the test's end)."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("TILLPOINT_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.upper().startswith("TILLPOINT_")]:
            del os.environ[key]
        os.environ.update(saved)


# ---------------------------------------------------------------- generated configurations

# Each setting's values in the file: mostly what a till's file holds, some loose (`"5"`,
# taken with a warning), some refused.
_KEYS: dict[str, list[Any]] = {
    "data_dir": ["/var/lib/x", "rel/dir", "", 5],
    "device_id": ["till-9", "T1", "a b", "x" * 70],
    "build_workers": [0, 3, "3", 17, True],
    "hub.address": ["hub.corp:50070", "", "h:1", "::1"],
    "hub.poll_interval_s": [60, 0.5, "5", 0.05, math.inf],
    "hub.call_timeout_ms": [100, 5000, "7", 0],
    "hub.adress": ["typo:1"],
    "http.enabled": [True, False, "no", 1],
    "http.listen": ["127.0.0.1:8061", "[::1]:8062", "0.0.0.0:8063"],
    "http.token": ["secret", "a b"],
    "http.allowed_origins": [["http://localhost:3000"], [], ["HTTP://LocalHost:80"], "x"],
    "log.level": ["debug", "INFO", "loud"],
    "log.format": ["JSON", "text"],
    "printer.kind": ["tcp", 3],
    "nope": [1],
}
# Each setting's values in the environment (text; a table or a list as JSON).
_ENV_KEYS: dict[str, list[str]] = {
    "DATA_DIR": ["/var/lib/y", "", " "],
    "DEVICE_ID": ["till-env", "a b"],
    "BUILD_WORKERS": ["2", " 7 ", "many"],
    "HUB": ['{"address": "j:1"}', '{"address": "j:1", "call_timeout_ms": 9}', "{}", "[]", "x"],
    "HUB__ADDRESS": ["hub.env:50070", ""],
    "HUB__POLL_INTERVAL_S": ["0.5", "0.05", "inf", "30"],
    "HUB__CALL_TIMEOUT_MS": ["9", "0"],
    "HUB__ADRESS": ["typo:2"],
    "HUB_ADDRESS": ["ignored:1"],
    "HUB__ADDRESS__X": ["deeper"],
    "HTTP": ['{"enabled": false}', '{"listen": "127.0.0.1:8070"}', "null"],
    "HTTP__ENABLED": ["no", "true", "maybe"],
    "HTTP__ALLOWED_ORIGINS": ['["http://localhost:3000"]', "[]", "http://localhost:3000"],
    "HTTP__LISTEN": ["127.0.0.1:8071", "[::1]:8072"],
    "LOG__LEVEL": ["debug", "WARNING"],
    "LOG": ['{"level": "error"}'],
    "SERVER__MAX_WORKERS": ["10", "0"],
    "METRICS__ENABLED": ["0", "off"],
    "PRINTER": ['{"kind": "tcp"}', "3"],
    "PRINTER__KIND": ["tcp"],
    "NOPE": ["1"],
}


def _set(values: dict[str, Any], dotted: str, value: Any, case: str) -> None:
    table, _, key = dotted.rpartition(".")
    if case == "mixed":  # a key as someone may write it: pydantic-settings took a top-level
        key = key.upper()  # key in any case, a table's key only as written
        table = table.capitalize()
    if table:
        values.setdefault(table, {})[key] = value
    else:
        values[key] = value


def _pick(values: list[Any], i: int) -> Any:
    """One of `values` by a drawn number: the first (a usual value) most often."""
    return values[i % len(values)] if i < 7 else values[0]


def _built(picks: list[tuple[str, int, str]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for dotted, i, case in picks:
        _set(values, dotted, _pick(_KEYS[dotted], i), case)
    return values


_FILE = st.lists(
    st.tuples(
        st.sampled_from(sorted(_KEYS)),
        st.integers(0, 9),
        st.sampled_from(["as", "as", "as", "mixed"]),
    ),
    max_size=5,
).map(_built)


def _env_name(name: str, case: str) -> str:
    full = "TILLPOINT_" + name
    return {"upper": full, "lower": full.lower(), "mixed": "Tillpoint_" + name.capitalize()}[case]


_ENV = st.lists(
    st.tuples(
        st.sampled_from(sorted(_ENV_KEYS)),
        st.integers(0, 9),
        st.sampled_from(["upper", "upper", "upper", "lower", "mixed"]),
    ),
    max_size=4,
).map(lambda picks: {_env_name(name, case): _pick(_ENV_KEYS[name], i) for name, i, case in picks})
_FLAGS = st.fixed_dictionaries(
    {},
    optional={
        "data_dir": st.sampled_from(["/flag/data"]),
        "device_id": st.sampled_from(["flag-till", "bad id"]),
        "hub": st.sampled_from([{"address": "flag:1"}, {"poll_interval_s": 5}]),
    },
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(values=_FILE, env=_ENV, flags=_FLAGS, with_file=st.booleans())
def test_the_configuration_reads_as_pydantic_settings_read_it(
    tmp_path: Path,
    values: dict[str, Any],
    env: dict[str, str],
    flags: dict[str, Any],
    with_file: bool,
) -> None:
    """CONTRACT §10 (flags, environment, file, defaults; a table key by key): over
    generated configurations, what the release before took (pydantic-settings'
    `BaseSettings`) gives the same settings now, and what it refused is refused with the
    same one line (exit 2 at every command)."""
    path = tmp_path / "tillpoint.toml" if with_file else None
    if path is not None:
        path.write_text(_toml(values), encoding="utf-8")
    with _environment(env):
        expected = _before(path, values if path else {}, flags)
        found = _now(path, flags)
    event(f"{expected[0]} {'file' if path else 'no file'} {'env' if env else 'no env'}")
    assert found == expected
    if found[0] == "refused":
        assert "\n" not in found[1]


@pytest.mark.slow
@settings(
    max_examples=4000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(values=_FILE, env=_ENV, flags=_FLAGS, with_file=st.booleans())
def test_the_configuration_reads_as_pydantic_settings_read_it_at_length(
    tmp_path: Path,
    values: dict[str, Any],
    env: dict[str, str],
    flags: dict[str, Any],
    with_file: bool,
) -> None:
    """The same, over 4,000 configurations (`make test-all`)."""
    test_the_configuration_reads_as_pydantic_settings_read_it.hypothesis.inner_test(  # type: ignore[attr-defined]
        tmp_path, values, env, flags, with_file
    )


# ---------------------------------------------------------------- hub.poll_interval_s at an upgrade


@pytest.mark.parametrize(
    ("written", "taken"), [("0.05", 0.1), ("1e-300", 0.1), ("86401", 86_400.0), ("inf", 86_400.0)]
)
def test_s10_a_poll_interval_an_earlier_release_took_is_clamped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, taken: float
) -> None:
    """CONTRACT §10: `hub.poll_interval_s` is 0.1 s to a day since review 38 (rev38c), and a
    file with 0.05 (or inf), which the release before took, stopped `run` at the upgrade
    (exit 2): a till that does not start after an upgrade. Now every command but `config
    check` takes the nearest bound, and `run` logs the line (a loose value's WARNING);
    `config check` still refuses it (tests/test_review38_rev38c.py)."""
    for key in [k for k in os.environ if k.upper().startswith("TILLPOINT_")]:
        monkeypatch.delenv(key)
    path = tmp_path / "tillpoint.toml"
    path.write_text(f"[hub]\npoll_interval_s = {written}\n", encoding="utf-8")
    loaded = config.load(path, data_dir=tmp_path / "data", device_id="till-1")
    assert loaded.hub.poll_interval_s == taken
    (line,) = config.loose_values(loaded)
    assert str(path) in line and "hub.poll_interval_s must be" in line, line
    assert f"taken as {taken:g}" in line, line
    # the environment alike, named as its source
    path.write_text("", encoding="utf-8")
    monkeypatch.setenv("TILLPOINT_HUB__POLL_INTERVAL_S", written)
    loaded = config.load(path, data_dir=tmp_path / "data", device_id="till-1")
    assert loaded.hub.poll_interval_s == taken
    (line,) = config.loose_values(loaded)
    assert "TILLPOINT_HUB__POLL_INTERVAL_S" in line, line


@pytest.mark.parametrize("written", ["0", "-1", "nan"])
def test_s10_a_poll_interval_no_release_took_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    """0, a negative number and nan were refused before review 38 too: still exit 2."""
    monkeypatch.setenv("TILLPOINT_HUB__POLL_INTERVAL_S", written)
    with pytest.raises(InputError, match="poll_interval_s"):
        config.load(None, data_dir=tmp_path / "data", device_id="till-1")


# ---------------------------------------------------------------- card numbers in error lines

# Cards and phones a till does not know, as an operator types them at `balance`: none of
# them may be written whole in an error line (a POS's log, a support ticket).
UNKNOWN_CARDS = [
    ("4600000000001234", "4600000000001234"),  # a 16-digit card of another scheme
    ("2770000000055", "2770000000055"),  # an EAN-13 the cache does not hold
    ("27700000000552770000000017", "27700000000552770000000017"),  # 26 digits, no one's
    ("+7 916 000-00-01", "9160000001"),  # a phone no customer has
]


def _whole(digits: str, line: str) -> bool:
    """Whether `line` holds `digits` (a card's or a phone's) whole, its blanks aside."""
    return digits in "".join(c for c in line if c not in " -()")


def test_s12_an_unknown_card_in_balance_is_said_masked_at_the_cli(cli: Any) -> None:
    """CONTRACT §10/§12: logs mask cards and phones (`logs.mask`); the one line of a
    `balance` of a card the till does not know wrote the number whole (`card
    4600000000001234 is not known to this till`) on stderr, which a POS keeps in its log.
    Now masked as the logs mask it, its last four digits kept for the operator."""
    cli("snapshot", "load", _snapshot())
    for typed, digits in UNKNOWN_CARDS:
        done = cli("balance", typed)
        assert done.code == 2, done.err
        line = done.err.strip()
        assert "\n" not in line and "is not known to this till" in line, line
        assert not _whole(digits, line), line
        assert digits[-4:] in line, line


def _snapshot() -> dict[str, Any]:
    from .conftest import snapshot

    return snapshot()


def test_s12_an_unknown_card_in_balance_is_said_masked_over_http_and_grpc(
    server: Any, agent: Any
) -> None:
    """The same line at the HTTP door (404's message) and the gRPC door (NOT_FOUND's
    details)."""
    import http.client

    import grpc
    from tillpoint.v1 import tillpoint_pb2 as pb

    from .conftest import posagent_stub

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for typed, digits in UNKNOWN_CARDS:
            conn.request(
                "POST",
                "/v1/balance",
                json.dumps({"card": typed}),
                {"Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            message = json.loads(answer.read())["error"]["message"]
            assert answer.status == 404, message
            assert "is not known" in message and not _whole(digits, message), message
    finally:
        conn.close()
    with posagent_stub(agent) as stub:
        for typed, digits in UNKNOWN_CARDS:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Balance(pb.BalanceRequest(card=typed), timeout=10)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            details = refused.value.details() or ""
            assert "is not known" in details and not _whole(digits, details), details


# ---------------------------------------------------------------- a link-local listen

# Run in a network namespace of its own (`unshare --net`): two interfaces (a veth pair)
# carrying one link-local address, another program listening on it on the second, the
# agent's gRPC server built on the first. Prints the outcome's one line.
_LINK_LOCAL_SCRIPT = """
import socket, subprocess, sys, tempfile
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent

def beside(interface):
    code = ("import socket, sys; s = socket.socket(socket.AF_INET6); "
            f"s.bind(socket.getaddrinfo('fe80::1%{interface}', 0, socket.AF_INET6)[0][4]); "
            "s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()")
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(other.stdout.readline())
        agent = Agent(tempfile.mkdtemp() + "/data", "till-1")
        try:
            server, bound, _ = build_server(agent, f"[fe80::1%lla]:{port}", token="t")
            print("listening", bound == port, flush=True)
            server.stop(0)
        except Exception as exc:
            print("refused", exc, flush=True)
        finally:
            agent.close()
    finally:
        other.stdin.close()
        other.wait(10)

beside("llb")  # another interface's: the agent listens
beside("lla")  # its own interface's: refused, as before
"""
_NAMESPACE_SETUP = (
    "ip link set lo up && ip link add lla type veth peer name llb"
    " && ip link set lla up && ip link set llb up"
    " && ip -6 addr add fe80::1/64 dev lla nodad && ip -6 addr add fe80::1/64 dev llb nodad"
    ' || exit 77; exec "$0" -c "$1"'
)


def test_s12_a_link_local_listen_beside_its_address_on_another_interface_starts() -> None:
    """CONTRACT §12 (listen addresses; DECISIONS "a link-local listen"): with `listen =
    "[fe80::1%lla]:P"`, another program on fe80::1 of another interface read as holding
    the listen's own address (/proc/net/tcp6 carries no interface), and `run` exited 1
    ("[fe80::1]:P is another program's"). grpcio bound the scoped address itself, port
    sharing off: a row of that address that is not this process's is another
    interface's. Real interfaces, in a network namespace of the test's own; skipped
    where this machine cannot make one."""
    import shutil
    import subprocess
    import sys

    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("no unshare or ip here")
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", _NAMESPACE_SETUP, sys.executable, _LINK_LOCAL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 77 or (done.returncode != 0 and "unshare" in done.stderr):
        pytest.skip(f"no network namespace with two interfaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-2000:]
    other_interface, same_interface = done.stdout.strip().splitlines()
    assert other_interface == "listening True", done.stdout + done.stderr[-1000:]
    assert same_interface.startswith("refused cannot listen on [fe80::1%lla]"), done.stdout
    assert "Address already in use" in same_interface, same_interface


# ---------------------------------------------------------------- foreign files left as they were


def _files(directory: Path) -> dict[str, str]:
    """Each file of `directory` and its bytes' digest."""
    import hashlib

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def _interrupted_write(path: Path) -> None:
    """Another program's SQLite file (rollback journal, SQLite's default) that stopped in
    the middle of a write: its `-journal` hot beside it, the file's pages half changed
    (the program was killed; `os._exit` leaves them so)."""
    import sqlite3
    import subprocess
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor INTEGER)")
    conn.execute("INSERT INTO orders (total_minor) VALUES (17980)")
    conn.commit()
    conn.close()
    code = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA cache_size = 1')\n"  # pages spill to the file before the commit
        "conn.execute('BEGIN')\n"
        "conn.executemany('INSERT INTO orders (total_minor) VALUES (?)',"
        " [(i,) for i in range(3000)])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert path.with_name(path.name + "-journal").stat().st_size > 0


@pytest.mark.parametrize("name", ["ledger.db", "cache.db", "hub.db"])
def test_s10_another_programs_file_stopped_mid_write_is_refused_untouched(
    cli: Any, tmp_path: Path, name: str
) -> None:
    """CONTRACT §10 (another program's database: exit 2, one line, "it is left as it
    was"). A file with a hot `-journal` (that program killed in the middle of a write)
    was refused, but the refusing connection's first read rolled the journal back into
    the file and deleted it: the file changed, byte for byte, under "left as it was".
    rev38c's read-only look covered a `-wal` only."""
    where = tmp_path / ("hub" if name == "hub.db" else "there")
    _interrupted_write(where / name)
    before = _files(where)
    if name == "hub.db":
        done = cli("hub", "status", "--hub-dir", str(where))
    else:
        done = cli("--data-dir", str(where), "status", "--json")
    assert done.code == 2, done.err
    line = done.err.strip()
    assert "\n" not in line and "another program's SQLite database" in line, line
    assert "left as it was" in line, line
    assert _files(where) == before, "the file and its -journal are as they were"


def test_s10_another_programs_cache_file_gets_no_ledger_beside_it(cli: Any, tmp_path: Path) -> None:
    """CONTRACT §10: a data directory whose `cache.db` is another program's database was
    refused (exit 2, the file as it was), but only after a new `ledger.db` (and its
    `-wal`, `-shm`) had been made beside it, in that program's directory; rev38g did the
    same for a refused ledger (no `cache.db` beside it). Now the cache is looked at, read
    only, before a new ledger is made."""
    import sqlite3

    where = tmp_path / "there"
    where.mkdir()
    conn = sqlite3.connect(where / "cache.db")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = _files(where)
    done = cli("--data-dir", str(where), "status", "--json")
    assert done.code == 2, done.err
    assert "another program's SQLite database" in done.err.strip(), done.err
    assert _files(where) == before


_LIVE_WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
if sys.argv[2] == "wal":
    conn.execute("PRAGMA journal_mode = WAL")
conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total_minor INTEGER)")
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO orders (total_minor) VALUES (17980)")
print("writing", flush=True)
sys.stdin.readline()  # the test's refusal happens meanwhile
conn.execute("COMMIT")
print(conn.execute("SELECT count(*) FROM orders").fetchone()[0], flush=True)
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_s10_another_programs_file_in_use_is_refused_and_its_locks_kept(
    cli: Any, tmp_path: Path, mode: str
) -> None:
    """CONTRACT §10: another program that has its SQLite file open in the middle of a
    write (its lock held) while a till is pointed at it: the refusal is at once, one line,
    exit 2, and that program's write then commits as if nothing had happened (its lock
    was not taken from it, its `-wal` not checkpointed)."""
    import subprocess
    import sys

    where = tmp_path / "there"
    where.mkdir()
    path = where / "ledger.db"
    other = subprocess.Popen(
        [sys.executable, "-c", _LIVE_WRITER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "writing"
        done = cli("--data-dir", str(where), "status", "--json")
        assert done.code == 2, done.err
        line = done.err.strip()
        assert "\n" not in line and "another program's SQLite database" in line, line
        other.stdin.write("go\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "1"  # its write committed, whole
    finally:
        other.kill()
        other.wait(10)


def test_s10_another_programs_postgres_database_in_use_is_refused_and_its_locks_kept(
    pg_url: str,
) -> None:
    """CONTRACT §10, the hub's PostgreSQL store: another program's database, that program
    in the middle of a write (a row lock held, uncommitted): `hub migrate` and a hub's
    open are refused at once (ForeignDatabase: exit 2, one line), no lock of the hub's
    is left in that database (its advisory locks were taken for the look), and the
    program's write commits."""
    import psycopg
    from tillpoint.agent.errors import ForeignDatabase
    from tillpoint.sync.hub_postgres import PostgresHubStore, migrate

    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as setup:
        setup.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_minor BIGINT)")
        setup.execute("INSERT INTO orders VALUES (1, 100)")
    with psycopg.connect(pg_url, connect_timeout=10) as other:  # a transaction open
        other.execute("UPDATE orders SET total_minor = 17980 WHERE id = 1")
        other.execute("LOCK TABLE orders IN EXCLUSIVE MODE")
        for attempt in (lambda: migrate(pg_url), lambda: PostgresHubStore(pg_url)):
            with pytest.raises(ForeignDatabase) as refused:
                attempt()
            line = str(refused.value)
            assert "\n" not in line and "another program's PostgreSQL database" in line
        with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as look:
            held = look.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE d.datname = current_database() AND l.pid NOT IN (%s, %s)",
                (other.info.backend_pid, look.info.backend_pid),
            ).fetchone()
            assert held == (0,), "no lock of the hub's is left there"
        other.commit()
        assert other.execute("SELECT total_minor FROM orders").fetchall() == [(17980,)]
