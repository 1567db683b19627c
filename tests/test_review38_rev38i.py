"""Review 38, rev38i: an adversarial review of perf38 (a one-shot CLI call's start):
`Settings` read without pydantic-settings' `BaseSettings`, models built at first use,
pydantic's plugins disabled by the CLI, lazy imports (CONTRACT §10: `--data-dir` and
`--config` win over the environment, which wins over the file; tables key by key).

Faults found, each failing here first:
- the sources were merged in another order than pydantic-settings merged them: a table
  given as flags (`Settings(hub={...})`, `config.load(..., hub={...})`) beside a
  TILLPOINT_HUB that is JSON but no table lost the file's other `[hub]` keys (their
  defaults taken instead), where pydantic-settings kept them;
- `main(argv)` called in its caller's process (the tests', a bench's, an integrator's
  script) set PYDANTIC_DISABLE_PLUGINS in that process's environment for good, and put
  the stand-in for pydantic's plugin loader in its `sys.modules`: every model the caller
  built afterwards ran without its pydantic plugins, even once it set the variable to
  load them. Only the `tillpoint` command itself (its process is tillpoint's) does so;
- (older than perf38, same contract rule) the CLI's short way to a running `run`
  (`forward.data_dir_of`) read the file's `data_dir` key only and the upper-case
  TILLPOINT_DATA_DIR first, where the configuration takes `DATA_DIR`/`Data_Dir` and, of
  two names in different cases, the last: a command went to the `run` of another data
  directory, or ran here beside its own `run`.

Checked and found right (not tests here, a table compared by hand; see the report):
`tillpoint config check --json` (stdout, stderr, exit code) of main before perf38 and
after it over 148 configurations (every kind of setting; the environment set, unset,
empty, blank, in lower or mixed case, JSON tables and lists, a device table's key; TOML
of loose types, cased keys, dotted keys and inline tables; the same key in flags,
environment and file; a table partly in each) differ only where rev38c meant them to
(`hub.poll_interval_s` inf, nan, 1e-300). The models' validation errors, `describe`'s
lines and JSON schemas are the same built lazily as eagerly; twelve threads building
every model's validator at once got the same answers, no error (pydantic builds under a
lock). The one-shot import guard fails when asyncio, pydantic-settings or pydantic's own
plugin loader comes back; here it covers `hold`, `confirm`, `identify` and `balance` too.
Sixteen rows of the table are pinned here (`config check --json`, in-process).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic._internal._utils import deep_update  # pydantic-settings' own merge
from tillpoint.agent import cli, config

from .conftest import receipt, snapshot
from .test_review38_perf38 import _imported, _unwanted


def _no_tillpoint_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("TILLPOINT_"):
            monkeypatch.delenv(key)


# ------------------------------------------------- the sources merged as pydantic-settings

# A table in each source: a table, something else, or nothing.
_FLAGS = [None, {"address": "flag:1"}, "flag-text"]
_ENV = [None, '{"redeem_timeout_ms": 9}', "5", '"env-text"']
_FILE = [None, "[hub]\ncall_timeout_ms = 77\n", 'hub = "file-text"\n']


def _pydantic_settings_merge(flags: dict[str, Any], path: Path) -> dict[str, Any]:
    """What `BaseSettings` validated: its sources (highest first: the flags, the
    environment, the file) each merged under the ones before it (`_settings_build_values`:
    `state = deep_update(source_state, state)`)."""
    from pydantic_settings import InitSettingsSource

    sources = [
        InitSettingsSource(config.Settings, dict(flags))(),  # type: ignore[arg-type]
        config._env_values_by_pydantic_settings(),
        InitSettingsSource(config.Settings, config.read_config_file(path))(),  # type: ignore[arg-type]
    ]
    state: dict[str, Any] = {}
    for source in sources:
        state = deep_update(source, state)
    return state


@pytest.mark.parametrize("flag", _FLAGS, ids=lambda v: f"flag={v!r}")
@pytest.mark.parametrize("env", _ENV, ids=lambda v: f"env={v!r}")
@pytest.mark.parametrize("toml", _FILE, ids=lambda v: f"file={v!r}")
def test_flags_environment_and_file_merge_as_pydantic_settings_merged_them(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flag: Any,
    env: str | None,
    toml: str | None,
) -> None:
    """CONTRACT §10: flags over the environment over the file, a table key by key, as
    pydantic-settings' `BaseSettings` built them (a table as flags beside a TILLPOINT_HUB
    of another JSON kind lost the file's keys)."""
    _no_tillpoint_environment(monkeypatch)
    if env is not None:
        monkeypatch.setenv("TILLPOINT_HUB", env)
    path = tmp_path / "tillpoint.toml"
    path.write_text(toml or "")
    flags: dict[str, Any] = {"data_dir": str(tmp_path)}
    if flag is not None:
        flags["hub"] = flag
    expected = _pydantic_settings_merge(flags, path)
    token = config._CONFIG_FILE.set(path)
    try:
        assert config._settings_values(dict(flags)) == expected
    finally:
        config._CONFIG_FILE.reset(token)


def test_a_table_given_as_flags_keeps_the_file_keys_the_flags_do_not_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CONTRACT §10, the whole way: `load(..., hub={...})` with TILLPOINT_HUB=5 (JSON, no
    table: the flags' table wins over it) and `[hub] call_timeout_ms = 77` in the file
    takes 77, as it did before review 38 (it took the default 5000)."""
    _no_tillpoint_environment(monkeypatch)
    monkeypatch.setenv("TILLPOINT_HUB", "5")
    path = tmp_path / "tillpoint.toml"
    path.write_text("[hub]\ncall_timeout_ms = 77\n")
    settings = config.load(path, data_dir=tmp_path, hub={"address": "hub.corp:50070"})
    assert (settings.hub.address, settings.hub.call_timeout_ms) == ("hub.corp:50070", 77)


# ------------------------------------------------- pydantic's plugins, the caller's process


def test_main_in_a_callers_process_leaves_its_environment_and_pydantic_as_they_were(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`main(argv)` run in its caller's process (not the `tillpoint` command) leaves that
    process's PYDANTIC_DISABLE_PLUGINS and pydantic's plugin loader alone: it set the
    variable for good and put its stand-in loader in `sys.modules`, so the caller's own
    models ran without their pydantic plugins from then on, whatever it set."""
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    monkeypatch.delitem(sys.modules, "pydantic.plugin._loader", raising=False)
    _no_tillpoint_environment(monkeypatch)
    assert cli.main(["config", "check", "--json", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["dataDir"] == str(tmp_path)
    assert "PYDANTIC_DISABLE_PLUGINS" not in os.environ
    loader = sys.modules.get("pydantic.plugin._loader")  # pydantic's own, if any yet
    assert loader is None or hasattr(loader, "PYDANTIC_ENTRY_POINT_GROUP")


def test_the_tillpoint_command_still_disables_pydantic_plugins_for_its_own_process(
    tmp_path: Path,
) -> None:
    """The `tillpoint` command (`main()` with no arguments of a caller) still sets the
    variable when unset and gives its stand-in loader: no importlib.metadata (perf38)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    env.update(TILLPOINT_DATA_DIR=str(tmp_path / "data"), TILLPOINT_DEVICE_ID="till-1")
    sale = tmp_path / "receipt.json"
    sale.write_text(json.dumps(receipt("r-38i")))
    _imported(["quote", str(sale)], env)  # the till's files made (sqlite-utils' migrations
    # read the installed packages' entry points: importlib.metadata is that step's)
    names, run = _imported(["quote", str(sale)], env)
    assert run.returncode == 2 and "no snapshot loaded" in run.stderr
    assert "importlib.metadata" not in names


# ------------------------------------------------- the import guard, the other one-shots


@pytest.fixture(scope="module")
def loaded_till(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A standalone till (no hub, no devices) with a snapshot and one hold, as a POS
    sets it up: TILLPOINT_DATA_DIR and TILLPOINT_DEVICE_ID."""
    root = tmp_path_factory.mktemp("rev38i")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(TILLPOINT_DATA_DIR=str(root / "data"), TILLPOINT_DEVICE_ID="till-1")
    snap = root / "snapshot.json"
    snap.write_text(json.dumps(snapshot()))
    held = root / "held.json"
    held.write_text(json.dumps(receipt("r-held")))
    for args in (["snapshot", "load", str(snap)], ["hold", str(held), "--json"]):
        _, run = _imported(args, env)
        assert run.returncode == 0, run.stderr[-500:]
    return root, env


@pytest.mark.parametrize(
    "args",
    [
        ["hold", "{root}/next.json", "--json"],
        ["confirm", "r-held", "--json"],
        ["identify", "2770000000017", "--json"],
        ["balance", "2770000000017", "--json"],
    ],
    ids=lambda a: a[0],
)
def test_the_other_one_shots_import_only_what_they_need(
    loaded_till: tuple[Path, dict[str, str]], args: list[str]
) -> None:
    """CONTRACT §10: `hold`, `confirm`, `identify` and `balance` on a standalone till
    import none of what a quote does not (perf38's guard covered quote and checkout
    only): a later change cannot bring gRPC, asyncio or pydantic-settings back to them
    quietly."""
    root, env = loaded_till
    (root / "next.json").write_text(json.dumps(receipt("r-next")))
    names, run = _imported([a.replace("{root}", str(root)) for a in args], env)
    assert run.returncode == 0, run.stderr[-500:]
    assert "tillpoint.agent.service" in names  # the lines were read
    assert _unwanted(names) == []


# ------------------------------------------------- `config check`, pinned from the table

# Rows of the table compared by hand (main before perf38 and after it gave the same
# document): (environment, TOML file, --data-dir given, {dotted key of the document: value}).
_PINNED: list[tuple[dict[str, str], str | None, bool, dict[str, Any]]] = [
    (  # a table partly in the environment, partly in the file
        {"TILLPOINT_HUB__ADDRESS": "env:1"},
        '[hub]\naddress = "file:1"\ncall_timeout_ms = 77\n',
        True,
        {"hub.address": "env:1", "hub.callTimeoutMs": 77},
    ),
    (  # a table as JSON over the file's table, a key of it over the JSON
        {"TILLPOINT_HUB": '{"address": "json:1"}', "TILLPOINT_HUB__REDEEM_TIMEOUT_MS": "9"},
        '[hub]\ncall_timeout_ms = 77\naddress = "file:1"\n',
        True,
        {"hub.address": "json:1", "hub.redeemTimeoutMs": 9, "hub.callTimeoutMs": 77},
    ),
    ({"tillpoint_hub__address": "lower:1"}, None, True, {"hub.address": "lower:1"}),
    ({"TILLPOINT_HUB__Address": "mixed:1"}, None, True, {"hub.address": "mixed:1"}),
    ({"tillpoint_hub": '{"address": "low:1"}'}, None, True, {"hub.address": "low:1"}),
    ({}, '[Hub]\naddress = "cased:1"\n', True, {"hub.address": "cased:1"}),
    ({}, '[hub]\naddress = "a:1"\n[HUB]\naddress = "b:1"\n', True, {"hub.address": "a:1"}),
    ({}, 'data_dir = "{root}/a"\nDATA_DIR = "{root}/b"\n', False, {"dataDir": "{root}/a"}),
    ({"tillpoint_data_dir": "{root}/low"}, None, True, {"dataDir": "{root}/data"}),
    (
        {"TILLPOINT_HTTP__ALLOWED_ORIGINS": "[]", "TILLPOINT_DATA_DIR": "{root}/env"},
        'data_dir = "{root}/file"\n',
        True,
        {"dataDir": "{root}/data", "http.allowedOrigins": []},
    ),
    ({"tillpoint_device_id": "low-env"}, 'device_id = "file"\n', True, {"deviceId": "low-env"}),
    (
        {"TILLPOINT_LOG": '{"level": "debug"}', "TILLPOINT_LOG__FORMAT": "text"},
        None,
        True,
        {"log.level": "DEBUG", "log.format": "text"},
    ),
    (
        {"TILLPOINT_HUB__CALL_TIMEOUT_MS": "20"},
        'hub = {address = "inl:1", call_timeout_ms = 10}\n',
        True,
        {"hub.address": "inl:1", "hub.callTimeoutMs": 20},
    ),
    (
        {"TILLPOINT_PRINTER": '{"kind": "network", "host": "127.0.0.1"}'},
        "[printer]\nport = 9200\n",
        True,
        {"printer.kind": "network", "printer.host": "127.0.0.1", "printer.port": 9200},
    ),
    (
        {"TILLPOINT_HTTP__ENABLED": "no", "TILLPOINT_METRICS__ENABLED": "0"},
        "[metrics]\nenabled = true\n",
        True,
        {"http.enabled": False, "metrics.enabled": False},
    ),
    ({"TILLPOINT_BUILD_WORKERS": " 3 "}, None, True, {"buildWorkers": 3}),
]


@pytest.mark.parametrize(("env", "toml", "flag", "expected"), _PINNED)
def test_config_check_reads_the_table_rows_as_before_review_38(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    env: dict[str, str],
    toml: str | None,
    flag: bool,
    expected: dict[str, Any],
) -> None:
    """CONTRACT §10: `config check --json` of these (the flags, the environment in any
    case, as text or JSON, the file with cased or dotted keys; a table from several) is
    what main gave before perf38 read the environment itself."""
    _no_tillpoint_environment(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("{root}", str(tmp_path)))
    argv = ["config", "check", "--json"]
    if toml is not None:
        path = tmp_path / "tillpoint.toml"
        path.write_text(toml.replace("{root}", str(tmp_path)))
        argv += ["--config", str(path)]
    if flag:
        argv += ["--data-dir", str(tmp_path / "data")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    for dotted, value in expected.items():
        found = doc
        for part in dotted.split("."):
            found = found[part]
        wanted = value.replace("{root}", str(tmp_path)) if isinstance(value, str) else value
        assert found == wanted, dotted


# ------------------------------------------------- the CLI's short way reads the same place

_WAYS: list[tuple[list[tuple[str, str]], str | None, bool]] = [
    ([("TILLPOINT_DATA_DIR", "up"), ("tillpoint_data_dir", "low")], None, False),
    ([("tillpoint_data_dir", "low"), ("TILLPOINT_DATA_DIR", "up")], None, False),
    ([("Tillpoint_Data_Dir", "mixed")], None, False),
    ([], 'Data_Dir = "{root}/cased"\n', False),
    ([], 'DATA_DIR = "{root}/upper"\ndata_dir = "{root}/lower"\n', False),
    ([], 'data_dir = "{root}/file"\n', False),
    ([("TILLPOINT_DATA_DIR", "env")], 'DATA_DIR = "{root}/file"\n', False),
    ([("tillpoint_data_dir", "low")], None, True),
]


@pytest.mark.parametrize(("env", "toml", "flag"), _WAYS)
def test_the_forwarding_cli_finds_the_data_directory_the_configuration_names(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    env: list[tuple[str, str]],
    toml: str | None,
    flag: bool,
) -> None:
    """CONTRACT §10 (flag, environment, file): the CLI's short way to a running `run`
    (`forward.data_dir_of`, no configuration loaded) looks for it in the data directory
    the configuration reads: a file's `DATA_DIR` or `Data_Dir` (a field whatever its case,
    the first such key) and, of two variables named in different cases, the one the
    configuration takes. It read only `data_dir` and the upper-case name first: a command
    went to the `run` of another data directory, or ran here beside its own `run`."""
    import argparse

    from tillpoint.agent import forward

    _no_tillpoint_environment(monkeypatch)
    for key, value in env:
        monkeypatch.setenv(key, str(tmp_path / value))
    path = None
    if toml is not None:
        path = tmp_path / "tillpoint.toml"
        path.write_text(toml.replace("{root}", str(tmp_path)))
    flag_dir = tmp_path / "flag" if flag else None
    args = argparse.Namespace(data_dir=flag_dir, config=path)
    assert forward.data_dir_of(args) == config.load(path, data_dir=flag_dir).data_dir


def test_a_serving_agent_builds_every_validator_before_ready() -> None:
    """CONTRACT §12 (a till's calls in milliseconds): `defer_build` leaves a model's
    validator for its first use, which spares a one-shot CLI call the ones it never needs;
    `tillpoint run` builds them all before READY (`models.build_validators`, called by the
    serving path), so a POS's first calls after a start do not pay them."""
    import inspect

    from tillpoint.agent import app, models

    models.build_validators()
    todo: list[type] = [models.Model]
    built = 0
    while todo:
        for cls in todo.pop().__subclasses__():
            assert cls.__pydantic_complete__, cls
            assert type(cls.__pydantic_validator__).__name__ != "MockValSer", cls
            built += 1
            todo.append(cls)
    assert built > 10
    source = inspect.getsource(app)
    assert source.index("models.build_validators()") < source.index("settle_collector()\n")
