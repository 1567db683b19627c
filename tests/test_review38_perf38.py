"""Review 38, perf38: a one-shot CLI call's start-up cost (docs/PERFORMANCE.md, "A one-shot
CLI call's start").

A POS that calls `tillpoint quote FILE` paid ~0.28 s a call, most of it imports: among them
pydantic-settings (and asyncio, ssl, email under it), which only read the TILLPOINT_*
environment. The configuration now reads the common environment itself, the same way
(CONTRACT §10's precedence: flags, environment, file, defaults; tables key by key), and
leaves any other to pydantic-settings, imported then. These tests hold the two readings
equal, and a one-shot quote/checkout to the modules it needs (not timed: speed lives in
bench/cli_startup.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import config

from .conftest import receipt, snapshot

# ---------------------------------------------------------------- the environment's reading

# Environments read without pydantic-settings: upper-case names of settings that are text,
# numbers or booleans, top-level or a table's key, and names of no setting (ignored).
FAST = [
    {},
    {"TILLPOINT_DATA_DIR": "/var/lib/x", "TILLPOINT_DEVICE_ID": "till-9"},
    {"TILLPOINT_DATA_DIR": ""},
    {"TILLPOINT_BUILD_WORKERS": "3"},
    {"TILLPOINT_BUILD_WORKERS": "many"},
    {"TILLPOINT_HUB__ADDRESS": "hub.corp:50070", "TILLPOINT_HUB__CALL_TIMEOUT_MS": "100"},
    {"TILLPOINT_HUB__POLL_INTERVAL_S": "0.5", "TILLPOINT_HUB__REDEEM_TIMEOUT_MS": " 7 "},
    {
        "TILLPOINT_SERVER__LISTEN": "0.0.0.0:50061",
        "TILLPOINT_SERVER__TOKEN": "secret",
        "TILLPOINT_SERVER__MAX_WORKERS": "10",
        "TILLPOINT_HTTP__ENABLED": "no",
        "TILLPOINT_HTTP__LISTEN": "[::1]:8061",
        "TILLPOINT_LOG__LEVEL": "debug",
        "TILLPOINT_LOG__FORMAT": "JSON",
        "TILLPOINT_METRICS__ENABLED": "0",
        "TILLPOINT_METRICS__LISTEN": "127.0.0.1:9999",
    },
    # no setting of these names: pydantic-settings ignores them, so does the fast reading
    {"TILLPOINT_CONFIG": "/etc/x.toml", "TILLPOINT_HUB_ADDRESS": "y", "TILLPOINT_NOPE": "1"},
]

# Environments left to pydantic-settings (its JSON reading, its words, its case rules).
SLOW = [
    {"TILLPOINT_HTTP__ALLOWED_ORIGINS": '["http://localhost:3000"]'},
    {"TILLPOINT_HTTP__ALLOWED_ORIGINS": "http://localhost:3000"},  # not JSON: its error
    {"TILLPOINT_HUB": '{"address": "hub:50070"}'},
    {"TILLPOINT_HUB": '{"address": "hub:50070"}', "TILLPOINT_HUB__CALL_TIMEOUT_MS": "9"},
    {"TILLPOINT_PRINTER__KIND": "tcp"},
    {"TILLPOINT_PRINTER": '{"kind": "tcp"}'},
    {"tillpoint_data_dir": "/lower/case"},
    {"TILLPOINT_HUB__ADRESS": "typo:1"},
    {"TILLPOINT_HUB__ADDRESS__X": "deeper"},
]


def _environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in list(os.environ):
        if key.upper().startswith("TILLPOINT_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _pydantic_settings_reading() -> Any:
    try:
        return ("values", config._env_values_by_pydantic_settings())
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


def _our_reading() -> Any:
    try:
        return ("values", config._env_values())
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


@pytest.mark.parametrize("env", FAST, ids=lambda e: ",".join(e) or "empty")
def test_the_common_environment_is_read_without_pydantic_settings_and_the_same_way(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """CONTRACT §10: each of these is read here (pydantic-settings not asked) into exactly
    what pydantic-settings' environment source reads from it."""
    _environment(monkeypatch, env)
    expected = _pydantic_settings_reading()

    def refuse() -> dict[str, Any]:
        raise AssertionError("pydantic-settings asked for a common environment")

    monkeypatch.setattr(config, "_env_values_by_pydantic_settings", refuse)
    assert _our_reading() == expected


@pytest.mark.parametrize("env", SLOW, ids=lambda e: ",".join(e))
def test_any_other_environment_is_pydantic_settings_own_reading(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """A table or a list as JSON, a device table's key, an unknown key of a table, a name
    in lower case: pydantic-settings reads them, as before (its JSON, its words)."""
    _environment(monkeypatch, env)
    asked = []
    original = config._env_values_by_pydantic_settings

    def spy() -> dict[str, Any]:
        asked.append(True)
        return original()

    expected = _pydantic_settings_reading()
    monkeypatch.setattr(config, "_env_values_by_pydantic_settings", spy)
    assert _our_reading() == expected
    assert asked


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"data_dir": "/a", "device_id": "t"},
        {"Data_Dir": "/a", "data_dir": "/b"},
        {"DATA_DIR": "/b", "Data_Dir": "/a"},
        {"DEVICE_ID": "x", "nope": 1, "Hub": {"address": "h:1"}},
        {"hub": {"ADDRESS": "kept as written"}},
    ],
)
def test_flags_and_file_keys_are_named_as_pydantic_settings_named_them(
    values: dict[str, Any],
) -> None:
    """pydantic-settings' init source (the flags, the TOML file) took a top-level key in
    any case (`Data_Dir = ...` in the file), the first one of a name, the rest dropped."""
    from pydantic_settings import InitSettingsSource

    theirs = InitSettingsSource(config.Settings, dict(values))()  # type: ignore[arg-type]
    assert config._by_field_name(dict(values)) == theirs


def test_settings_built_directly_read_the_environment_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`Settings(device_id=..., data_dir=...)` (tests, benches) still takes the rest from
    the environment, a flag still wins over it, and a table merges key by key."""
    _environment(
        monkeypatch,
        {"TILLPOINT_DEVICE_ID": "from-env", "TILLPOINT_HUB__ADDRESS": "hub.corp:50070"},
    )
    settings = config.Settings(data_dir=tmp_path)
    assert (settings.device_id, settings.hub.address) == ("from-env", "hub.corp:50070")
    assert config.Settings(device_id="flag", data_dir=tmp_path).device_id == "flag"
    toml = tmp_path / "c.toml"
    toml.write_text('[hub]\naddress = "file:1"\ncall_timeout_ms = 77\n')
    loaded = config.load(toml, data_dir=tmp_path)
    assert (loaded.hub.address, loaded.hub.call_timeout_ms) == ("hub.corp:50070", 77)


# ---------------------------------------------------------------- what a one-shot imports

# Nothing a one-shot quote or checkout does needs these: the servers and their transports,
# the hub's side, the devices' drivers, the settings library (the environment a POS sets),
# the asyncio loop and what only pydantic-settings brought (ssl, concurrent.futures).
NOT_FOR_A_ONE_SHOT = (
    "grpc",
    "google.protobuf",
    "uvicorn",
    "starlette",
    "anyio",
    "asyncio",
    "ssl",
    "concurrent.futures",
    "pydantic_settings",
    "cryptography",
    "sqlite_utils",
    "escpos",
    "serial",
    "usb",
    "PIL",
    "tillpoint.agent.server",
    "tillpoint.agent.http_api",
    "tillpoint.agent.wire",
    "tillpoint.sync.hub_server",
    "tillpoint.sync.hub_store",
    "tillpoint.sync.pull",
    "tillpoint.sync.push",
    "tillpoint.sync.pki",
    "tillpoint.sync.signing",
    # a till without devices (the test's: no [printer] table) needs no device code at all
    "tillpoint.printer.config",
    "tillpoint.printer.queue",
    "tillpoint.printer.transport",
    # pydantic's plugin loader's, with plugins disabled (`cli._no_pydantic_plugin_loader`)
    "importlib.metadata",
    "email",
)


def _imported(
    args: list[str], env: dict[str, str]
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules a `tillpoint ARGS` process imported (`-X importtime`'s lines)."""
    code = "import sys; from tillpoint.agent.cli import main; sys.exit(main())"
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, run


@pytest.mark.parametrize("command", ["quote", "checkout"])
def test_a_one_shot_imports_only_what_it_needs(tmp_path: Path, command: str) -> None:
    """CONTRACT §10 (the CLI, one call a process): a one-shot `snapshot load`, quote or
    checkout with a POS's usual environment (TILLPOINT_DATA_DIR, TILLPOINT_DEVICE_ID) on a
    till without a hub or devices imports none of NOT_FOR_A_ONE_SHOT, so a later change
    cannot quietly bring them back (docs/PERFORMANCE.md, "A one-shot CLI call's start")."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(tmp_path / "data"), TILLPOINT_DEVICE_ID="till-1")
    snap = tmp_path / "snapshot.json"
    snap.write_text(json.dumps(snapshot()))
    sale = tmp_path / "receipt.json"
    sale.write_text(json.dumps(receipt("r-38")))
    _, loaded = _imported(["snapshot", "load", str(snap)], env)  # a new till's files made
    assert loaded.returncode == 0, loaded.stderr[-500:]
    # the next plain snapshot on a till not enrolled: no key material, no gRPC
    snap.write_text(json.dumps(snapshot(version=2)))
    names, loaded = _imported(["snapshot", "load", str(snap)], env)
    assert loaded.returncode == 0 and "version 2" in loaded.stdout, loaded.stderr[-500:]
    # (its new cache file's schema is made without sqlite-utils, whose import reads the
    # installed packages' entry points, importlib.metadata: review 39, perf38/rev38i)
    assert _unwanted(names, NOT_FOR_A_SNAPSHOT_LOAD) == []
    names, run = _imported([command, str(sale), "--json"], env)
    assert run.returncode == 0, run.stderr[-500:]
    assert json.loads(run.stdout)["receiptId"] == "r-38"
    assert "tillpoint.agent.service" in names  # the lines were read
    assert _unwanted(names) == []


NOT_FOR_A_SNAPSHOT_LOAD = (
    "grpc",
    "google.protobuf",
    "asyncio",
    "pydantic_settings",
    "cryptography",
    "tillpoint.sync.pki",
    "tillpoint.sync.signing",
    "tillpoint.sync.pull",
    "tillpoint.sync.client",
    "sqlite_utils",
    "importlib.metadata",
)


def _unwanted(names: set[str], unwanted: tuple[str, ...] = NOT_FOR_A_ONE_SHOT) -> list[str]:
    return sorted(
        name
        for name in names
        for prefix in unwanted
        if name == prefix or name.startswith(prefix + ".")
    )


def test_the_plugin_loader_given_in_its_place_answers_as_pydantic_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every plugin disabled, pydantic's loader answers "none"; the CLI's stand-in
    (which spares importlib.metadata) answers the same, and is put in place only then."""
    import types

    from pydantic.plugin import _loader
    from tillpoint.agent import cli

    for value in ("__all__", "1", "true"):
        monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", value)
        assert tuple(_loader.get_plugins()) == ()
    monkeypatch.delitem(sys.modules, "pydantic.plugin._loader")
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "")  # an operator's: plugins load
    cli._no_pydantic_plugin_loader()
    assert "pydantic.plugin._loader" not in sys.modules
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "__all__")
    cli._no_pydantic_plugin_loader()
    stand_in = sys.modules["pydantic.plugin._loader"]
    assert isinstance(stand_in, types.ModuleType) and stand_in is not _loader
    assert tuple(stand_in.get_plugins()) == ()


def test_an_operator_who_lets_pydantic_plugins_load_gets_pydantic_own_loader(
    tmp_path: Path,
) -> None:
    """PYDANTIC_DISABLE_PLUGINS set outside (empty: every plugin loads) is kept: pydantic's
    own loader runs, importlib.metadata with it (docs/DECISIONS.md, review 38)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(tmp_path / "data"), TILLPOINT_DEVICE_ID="till-1")
    sale = tmp_path / "receipt.json"
    sale.write_text(json.dumps(receipt("r-38")))
    names, run = _imported(["quote", str(sale)], {**env, "PYDANTIC_DISABLE_PLUGINS": ""})
    assert run.returncode == 2 and "no snapshot loaded" in run.stderr  # validated first
    assert "importlib.metadata" in names
    names, run = _imported(["quote", str(sale)], env)
    assert run.returncode == 2 and "importlib.metadata" not in names


@pytest.mark.slow
def test_the_start_up_bench_runs(tmp_path: Path) -> None:
    """`bench/cli_startup.py` (in `make bench`) runs and writes its JSON: one round of two
    commands here, nothing timed or asserted of its figures."""
    out = tmp_path / "cli_startup.json"
    argv = [sys.executable, "-m", "bench.cli_startup", "--runs", "1", "--json", str(out)]
    run = subprocess.run(
        [*argv, "--commands", "quote,status"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode == 0, run.stderr[-500:]
    doc = json.loads(out.read_text())
    assert set(doc["commands"]) == {"quote", "status"}
    assert set(doc["floor"]) == {"python -c pass", "python -c 'import pydantic'"}
    assert doc["commands"]["quote"]["new"]["wall_ms_min"] > 0
    assert run.stderr == ""  # every command exited 0
