"""Review 53 (mut53a): mutation testing of the agent's configuration (agent/config.py) and
of its shipped defaults (the contract §10, §12, and every § with a configurable number).
A till runs on the defaults it ships with: each is checked here as `tillpoint config
check --json` shows it (a real process, no file, no TILLPOINT_* variable) against the
example configuration and the docs that name it; each range the example states is the
one `config check` keeps, at both edges. Each test fails on a mutant its docstring names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, REPO

EXE = str(Path(sys.executable).with_name("tillpoint"))
EXAMPLE = REPO / "packaging" / "tillpoint.example.toml"
DEVICE_TABLES = ("printer", "display", "scanner")


def _clean_env(**more: str) -> dict[str, str]:
    """The process's environment without any TILLPOINT_* variable (a till's unit sets
    none but TILLPOINT_DATA_DIR), plus `more`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(more)
    return env


def _config_check(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "--data-dir", str(data_dir), *args, "config", "check", "--json"],
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _example_values() -> list[tuple[str, str, Any, bool]]:
    """(table, key, value, set) of each key line of the example: set, or commented out
    with a value (`# port = 9100`); a commented-out key whose comment says it has no such
    default (`Default: no limit`, the profile's) is left to test_review31_ops31."""
    out: list[tuple[str, str, Any, bool]] = []
    table = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            table = m.group(1)
            continue
        if m := re.match(r"^(#\s?)?(\w+)\s*=\s*(.*?)(\s+#.*)?$", line):
            try:
                value = tomllib.loads(f"x = {m.group(3)}")["x"]
            except tomllib.TOMLDecodeError:
                continue  # a comment's prose that looks like a key
            out.append((table, m.group(2), value, m.group(1) is None))
    return out


# ---------------------------------------------------------------- the shipped defaults


def test_s10_a_till_without_a_file_runs_on_the_values_the_example_sets(tmp_path: Path) -> None:
    """packaging/tillpoint.example.toml: "Every key is shown with its default". The
    effective configuration of a till with no file and no TILLPOINT_* variable (`config
    check --json`, a real process) holds each value the example sets, table by table,
    and so does the one read from the example itself: the example changes nothing. The
    models' own defaults were compared with the example (test_review26_doc26); what a
    till runs on was not. Fails on each default mutated (hub, server, http, log, metrics,
    build_workers)."""
    bare = _config_check(tmp_path / "d")
    assert bare.returncode == 0, bare.stderr
    shown = json.loads(bare.stdout)
    with_example = _config_check(tmp_path / "d", "--config", str(EXAMPLE))
    assert with_example.returncode == 0, with_example.stderr
    assert json.loads(with_example.stdout) == shown  # the example is the defaults
    checked = 0
    for table, key, value, is_set in _example_values():
        if table == "" and key in ("device_id", "data_dir"):
            continue  # the host name, and the data directory by user: said in words
        where = shown if table == "" else shown[table]
        if not is_set and where.get(_camel(key)) is None:
            continue  # unset by default (a printer's host): said beside it
        assert where[_camel(key)] == value, f"[{table}] {key}: the example says {value!r}"
        checked += 1
    assert checked > 60, checked
    # the numbers a reader meets first, as the till runs them
    hub, server, http, metrics = shown["hub"], shown["server"], shown["http"], shown["metrics"]
    assert (hub["redeemTimeoutMs"], hub["callTimeoutMs"]) == (300, 5000)
    assert (hub["pollIntervalS"], hub["maxSnapshotMib"], hub["address"]) == (60, 8192, "")
    assert (server["listen"], server["maxWorkers"], server["token"]) == ("127.0.0.1:50061", 8, "")
    assert (http["enabled"], http["listen"], http["allowedOrigins"]) == (True, "127.0.0.1:8061", [])
    assert (metrics["enabled"], metrics["listen"]) == (True, "127.0.0.1:9464")
    assert shown["log"] == {"level": "INFO", "format": "auto"}
    assert shown["buildWorkers"] == 0


def test_s10_the_docs_name_the_defaults_the_till_runs_on(tmp_path: Path) -> None:
    """README.md, docs/INTEGRATION.md and docs/CONTRACT.md name the three listens and the
    hub's deadlines a POS integrator and a retailer's IT team plan with: each as the
    effective configuration of a till without a file shows it."""
    run = _config_check(tmp_path / "d")
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    integration = (REPO / "docs" / "INTEGRATION.md").read_text(encoding="utf-8")
    contract = (REPO / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    http = re.search(r"\| HTTP/JSON \| `http://([^`]+)` \| `\[http\] listen`", integration)
    grpc = re.search(
        r"\| gRPC `tillpoint.v1.PosAgent` \| `([^`]+)` \| `\[server\] listen`", integration
    )
    assert http and http[1] == shown["http"]["listen"]
    assert grpc and grpc[1] == shown["server"]["listen"]
    assert f"`{shown['metrics']['listen']}`, env `TILLPOINT_METRICS__LISTEN`" in integration
    assert f"http://{shown['metrics']['listen']}/metrics" in readme
    redeem = re.search(r"deadline `hub.redeem_timeout_ms`, default (\d+) ms", contract)
    assert redeem and int(redeem[1]) == shown["hub"]["redeemTimeoutMs"]
    assert f"within the till's {shown['hub']['redeemTimeoutMs']} ms deadline" in readme
    call = re.search(r"one deadline \(`hub.call_timeout_ms`, (\d+) s\)", contract)
    assert call and int(call[1]) * 1000 == shown["hub"]["callTimeoutMs"]
    poll = re.search(r"\(`hub.poll_interval_s`, (\d+) s; 0.1 s to a day", contract)
    assert poll and int(poll[1]) == shown["hub"]["pollIntervalS"]


# ---------------------------------------------------------------- the ranges the example states


# "# 8..40" at a line's end, "(1 to 60000)", "(0.1 to 86400; ...)"
RANGE = r"(?:# |\()(\d+(?:\.\d+)?)(?:\.\.| to )(\d+(?:\.\d+)?)(?:[);]|$)"


def _stated_ranges() -> list[tuple[str, str, float, float | None]]:
    """(table, key, lowest, highest or None) of each key whose line or the comment lines
    just above it in the example state its range: `# 8..40`, "(1 to 60000)",
    "(1 or more)", "(0.1 to 86400; ...)"."""
    out: list[tuple[str, str, float, float | None]] = []
    table, above = "", list[str]()
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            table, above = m.group(1), []
            continue
        m = re.match(r"^(\w+)\s*=\s*(.*?)(\s+#.*)?$", line)
        if m is None:
            above = [*above, line] if line.startswith("#") else []
            continue
        text = " ".join([*above, m.group(3) or ""])
        above = []
        if found := re.search(
            r"(?:# |\()(\d+(?:\.\d+)?)(?:\.\.| to )(\d+(?:\.\d+)?)(?:[);]|$)", text
        ):
            out.append((table, m.group(1), float(found[1]), float(found[2])))
        elif found := re.search(r"\((\d+) or more[);]", text):
            out.append((table, m.group(1), float(found[1]), None))
    return out


def _number(value: float, integer: bool) -> str:
    return str(int(value)) if integer else repr(value)


def test_s10_each_range_the_example_states_is_the_one_config_check_keeps(
    cli: CLI, tmp_path: Path
) -> None:
    """The example states the range of each number a till's installer may set (`# 8..40`,
    "(1 to 60000)"); until review 53 it stated none for the hub's deadlines, the gRPC
    server's workers, the build workers or the snapshot's size, and a support engineer
    learnt them from a refusal. `config check` takes each edge and refuses one past it,
    exit 2 and one line naming the key. Fails on every bound of HubSettings,
    ServerSettings and build_workers mutated one up or down, and on
    `_bounded_poll_interval`'s `<=` made `<`."""
    ranges = _stated_ranges()
    stated = {(t, k) for t, k, _, _ in ranges}
    assert {
        ("", "build_workers"),
        ("server", "max_workers"),
        ("hub", "redeem_timeout_ms"),
        ("hub", "call_timeout_ms"),
        ("hub", "poll_interval_s"),
        ("hub", "max_snapshot_mib"),
        ("display", "columns"),
        ("display", "rows"),
        ("display", "brightness"),
    } <= stated, stated
    defaults = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    conf = tmp_path / "c.toml"
    for table, key, low, high in ranges:
        given = defaults.get(table, {}) if table else defaults
        integer = isinstance(given[key], int) and low.is_integer()  # 0.1 s: a number
        step = 1 if integer else low / 100  # 0.1 s: 0.099 is past it
        edges = [(low, 0), (low - step, 2)]
        if high is not None:
            edges += [(high, 0), (high + (1 if integer else 0.5), 2)]
        for value, code in edges:
            line = f"{key} = {_number(value, integer)}\n"
            conf.write_text(line if not table else f"[{table}]\n{line}", encoding="utf-8")
            run = cli("--config", str(conf), "config", "check")
            assert run.code == code, (table, key, value, run.out, run.err)
            if code:
                (said,) = run.err.strip().splitlines()
                assert key in said, said
                # the bound missed, in the setting's own words: "must be 60000 or less",
                # "must be 1 or more" or "more than 0", "must be 0.1 or more (seconds
                # between polls)", "at most 86400 (a day)"
                bound = f"{high:g} or less" if value > low else f"{low:g} or more"
                if key == "poll_interval_s":
                    bound = f"at most {high:g}" if value > low else f"{low:g} or more"
                elif value < low and low.is_integer():
                    bound = (
                        f"{low:g} or more"
                        if f"{low:g} or more" in said
                        else f"more than {low - 1:g}"
                    )
                assert bound in said, (bound, said)


# ---------------------------------------------------------------- the defaults, served

# Run in a network namespace of its own (`unshare -n`): the default ports (8061, 50061,
# 9464) are this machine's, and another till or test may hold them.
_SERVE_DEFAULTS = r"""
import json, os, signal, subprocess, sys, time, urllib.error, urllib.request

subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
exe, data, log = sys.argv[1:4]
env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
env["TILLPOINT_DATA_DIR"] = data  # as the packaged unit sets it, and nothing else
found = {}
with open(log, "wb") as err:
    agent = subprocess.Popen([exe, "run"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8061/healthz", timeout=5) as r:
                    found["healthz"] = r.status
                break
            except urllib.error.HTTPError as exc:
                found["healthz"] = exc.code
                break
            except OSError:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"not serving (exit {agent.poll()})")
                time.sleep(0.2)
        with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10) as r:
            found["metrics"] = r.status
        from tillpoint.client import PosAgentClient

        with PosAgentClient("127.0.0.1:50061", timeout=10.0) as till:
            found["identify"] = till.identify("2770000000017")["status"]
    finally:
        agent.send_signal(signal.SIGTERM)
        found["exit"] = agent.wait(60)
print(json.dumps(found))
"""


def test_s10_s12_a_till_without_a_file_serves_grpc_http_and_metrics_where_the_docs_say(
    tmp_path: Path,
) -> None:
    """A till installed from the package (no file, TILLPOINT_DATA_DIR alone, as the unit
    sets it) serves HTTP/JSON at 127.0.0.1:8061, PosAgent over gRPC at 127.0.0.1:50061
    and /metrics at 127.0.0.1:9464 (docs/INTEGRATION.md's table, README), all three
    answering a POS on loopback with no token, and stops cleanly at SIGTERM. A real
    `tillpoint run` in a network namespace of its own (the ports are the machine's
    otherwise). Fails on a listen default moved, and on the token rule asked of a
    loopback listen (`token_problem`'s `or` made `and`)."""
    log = tmp_path / "run.log"
    data = tmp_path / "d"
    load = subprocess.run(
        [EXE, "snapshot", "load", str(REPO / "examples" / "snapshot.json")],
        env=_clean_env(TILLPOINT_DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert load.returncode == 0, load.stderr
    try:
        probe = subprocess.run(
            [
                "unshare",
                "-n",
                sys.executable,
                "-c",
                _SERVE_DEFAULTS,
                EXE,
                str(tmp_path / "d"),
                str(log),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if probe.returncode and "Operation not permitted" in probe.stderr:
        pytest.skip(f"no network namespace here: {probe.stderr.strip()}")
    assert probe.returncode == 0, (probe.stderr, log.read_text(errors="replace"))
    found = json.loads(probe.stdout)
    assert found == {"healthz": 200, "metrics": 200, "identify": "FOUND", "exit": 0}, found


# ---------------------------------------------------------------- precedence, at the real edge


def test_s10_flags_then_environment_then_file_then_defaults_whatever_else_the_environment_holds(
    tmp_path: Path,
) -> None:
    """Precedence (agent/config.py): flags, then TILLPOINT_* variables, then the file, then
    the defaults, key by key inside a table. The environment of a till holds other
    TILLPOINT_* variables than settings: TILLPOINT_CONFIG names the file, a POS's script
    reads TILLPOINT_URL (docs/INTEGRATION.md), and a stray `TILLPOINT_X__Y` names no
    table. Each is passed over, and the settings after it are still read: a real process,
    the variables in that order. Fails on `_env_values`' `continue` made `break` (every
    setting after TILLPOINT_CONFIG dropped: the file's redeem deadline won over the
    environment's) and on `_env_scalar`'s `or` made `and` (the stray table's variable
    was an internal error)."""
    conf = tmp_path / "till.toml"
    conf.write_text(
        'device_id = "from-file"\n'
        "[hub]\nredeem_timeout_ms = 400\ncall_timeout_ms = 1234\n"
        "[server]\nmax_workers = 4\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env |= {  # in this order: the process's environment keeps it
        "TILLPOINT_CONFIG": str(conf),
        "TILLPOINT_URL": "http://127.0.0.1:8061",
        "TILLPOINT_NOSUCH__KEY": "1",
        "TILLPOINT_DATA_DIR": str(tmp_path / "from-env"),
        "TILLPOINT_HUB__REDEEM_TIMEOUT_MS": "250",
        "TILLPOINT_SERVER__MAX_WORKERS": "12",
    }
    run = subprocess.run(
        [EXE, "--data-dir", str(tmp_path / "from-flag"), "config", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["dataDir"] == str(tmp_path / "from-flag")  # the flag over the environment
    assert shown["hub"]["redeemTimeoutMs"] == 250  # the environment over the file
    assert shown["server"]["maxWorkers"] == 12
    assert shown["hub"]["callTimeoutMs"] == 1234  # the file, key by key in its table
    assert shown["deviceId"] == "from-file"  # the file over the default (the host name)
    assert shown["hub"]["pollIntervalS"] == 60  # the default
    assert run.stderr == ""


def test_s10_a_device_id_has_1_to_64_characters(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/CONTRACT.md §10: `device_id` has 1 to 64 characters (a certificate's common
    name; it was 100 until review 25, and the hub could not enrol 65 to 100). 64 is taken,
    65 refused in one line naming the variable that set it; the model's own bound (100)
    was the only one tested at its edge. Fails on `device_id_problem`'s `>` made `>=`,
    its `or` made `and`, and its first refusal dropped."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "t" * 64)
    run = cli("config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["deviceId"] == "t" * 64
    for device_id in ("t" * 65, "t" * 100):
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", device_id)
        run = cli("config", "check")
        assert run.code == 2, run.out
        assert run.err == (
            f"tillpoint: config: device_id {device_id!r}: a device id has 1 to 64 characters"
            " (set by TILLPOINT_DEVICE_ID)\n"
        ), run.err


def test_s10_a_nul_byte_from_the_fifth_byte_on_is_said_where_it_is(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §10 (review 40, rev40c/rev40e): a NUL in the first four bytes of
    the configuration is a file in UTF-16 or UTF-32 without its mark, "not UTF-8 text";
    one from the fifth byte on is a UTF-8 file with a stray NUL, said by its line and
    column. The edge (byte 3 against byte 4) and a file that starts with an empty line
    were tested nowhere. Fails on `at < 4` made `<= 4` or `< 5`, and on the line count
    started at the second byte."""
    conf = tmp_path / "till.toml"
    for raw, said in (
        (b"abc\x00 = 1\n", "not UTF-8 text (a NUL byte at byte 3)"),
        (b"abcd\x00 = 1\n", "a NUL byte at line 1, column 5 (TOML allows none)"),
        (b"\n\nx = \x00\n", "a NUL byte at line 3, column 5 (TOML allows none)"),
    ):
        conf.write_bytes(raw)
        run = cli("--config", str(conf), "config", "check")
        assert run.code == 2, run.out
        assert run.err == f"tillpoint: config {conf}: {said}\n", run.err


def test_s12_a_token_and_an_origin_at_the_length_the_example_states(
    cli: CLI, tmp_path: Path
) -> None:
    """The example states a token's and an allowed origin's longest (512 and 200
    characters; until review 53 nowhere): `config check` takes them and refuses one more,
    exit 2, one line naming the table and key. Fails on the Token's `max_length` and the
    Origin's moved one up or down."""
    example = EXAMPLE.read_text(encoding="utf-8")
    assert example.count("# Printable ASCII without blanks, at most 512 characters.\ntoken") == 2
    assert "scheme://host[:port], at most 200 characters.\nallowed_origins" in example
    conf = tmp_path / "c.toml"
    origin = "http://" + "o" * 193  # 200 characters
    for table, line, code in (
        ("server", f'token = "{"t" * 512}"', 0),
        ("server", f'token = "{"t" * 513}"', 2),
        ("http", f'token = "{"t" * 512}"', 0),
        ("http", f'token = "{"t" * 513}"', 2),
        ("http", f'allowed_origins = ["{origin}"]', 0),
        ("http", f'allowed_origins = ["{origin}o"]', 2),
    ):
        conf.write_text(f"[{table}]\n{line}\n", encoding="utf-8")
        run = cli("--config", str(conf), "config", "check")
        assert run.code == code, (line[:30], run.err)
        if code:
            (said,) = run.err.strip().splitlines()
            assert said.startswith(f"tillpoint: config: {table}."), said


def test_s10_a_configuration_of_exactly_1_mib_is_read_and_one_byte_more_is_not(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §10: a configuration larger than 1 MiB is no configuration file
    (`--config /dev/zero` was read until memory ran out) and is refused before it is read
    whole. The edge was tested nowhere: a file of exactly 1,048,576 bytes (a long
    comment) is read, one byte more is refused, exit 2, one line. Fails on
    `CONFIG_MAX_BYTES` moved a KiB either way."""
    conf = tmp_path / "big.toml"
    head = b'device_id = "till-1"\n# '
    for size, code in ((1024 * 1024, 0), (1024 * 1024 + 1, 2)):
        conf.write_bytes(head + b"x" * (size - len(head) - 1) + b"\n")
        assert conf.stat().st_size == size
        run = cli("--config", str(conf), "config", "check")
        assert run.code == code, run.err
        if code:
            assert run.err == (
                f"tillpoint: config {conf}: larger than 1 MiB: not a configuration file\n"
            ), run.err


def test_s10_a_hub_address_in_brackets_is_read_as_every_listen_is(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub.address` is HOST:PORT as every listen is read (review 37): an IPv6 hub in
    brackets with its port (`[::1]:50070`) or without one (`[::1]`: gRPC's 443, a hub
    behind a front end) is taken; one whose bracket is never closed (`[::1:50070`) is
    refused, exit 2, one line naming the variable. Fails on `hub_address_problem`'s
    `bracketed` read with `or` (anything that starts with "[" passed unchecked)."""
    for address, code in (("[::1]:50070", 0), ("[::1]", 0), ("[::1:50070", 2)):
        monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", address)
        run = cli("config", "check", "--json")
        assert run.code == code, (address, run.err)
        if code:
            assert run.err.startswith(
                f"tillpoint: config: hub.address {address!r}: unbalanced brackets"
            ), run.err
            assert run.err.endswith(" (set by TILLPOINT_HUB__ADDRESS)\n"), run.err
        else:
            assert run.json()["hub"]["address"] == address


def test_s10_a_malformed_file_is_one_line_in_a_fresh_process(tmp_path: Path) -> None:
    """A malformed configuration is one line, exit 2, in a process that has read no
    environment through pydantic-settings (a till's `run` at boot: the module is not
    imported; the tests' own process has it loaded from the start of the run, where the
    refusal's path is another). Fails on `load`'s `settings_module is None` made `is not
    None` (the file's one line became "internal error: AttributeError", exit 1)."""
    conf = tmp_path / "bad.toml"
    conf.write_text("[hub]\nredeem_timeout_ms =\n", encoding="utf-8")
    run = _config_check(tmp_path / "d", "--config", str(conf))
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"tillpoint: config {conf}: "), run.stderr
    assert run.stderr.count("\n") == 1 and "internal error" not in run.stderr, run.stderr


def test_s10_a_device_tables_own_check_names_the_variables_of_that_table(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: a refusal names the TILLPOINT_* variable that set the value;
    a device table's own check (a network printer without its host) names the variables
    of that table, as `env_source` reads a table alone. Tested for a key only until now.
    Fails on `env_source`'s `len(loc) == 1` made `== 0`."""
    monkeypatch.setenv("TILLPOINT_PRINTER__KIND", "network")
    run = cli("config", "check")
    assert run.code == 2, run.out
    assert run.err == (
        'tillpoint: config [printer]: printer kind "network" needs host'
        " (set by TILLPOINT_PRINTER__KIND)\n"
    ), run.err


def test_s10_two_bad_values_name_where_the_one_said_came_from(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bad values, one from the environment and one from the file: the line says the
    first and where that one was set, not where the other was. Fails on `_source_of`'s
    `errors[0]` made `errors[-1]` ("(in FILE)" after the environment's value)."""
    conf = tmp_path / "two.toml"
    conf.write_text("[server]\nmax_workers = 0\n", encoding="utf-8")
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "0")
    run = cli("--config", str(conf), "config", "check")
    assert run.code == 2, run.out
    assert run.err == (
        "tillpoint: config: hub.redeem_timeout_ms must be more than 0 (and 1 more"
        " problem(s)) (set by TILLPOINT_HUB__REDEEM_TIMEOUT_MS)\n"
    ), run.err


def test_s10_s12_a_refusal_names_a_table_set_whole_and_a_listen_set_beyond_loopback(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value set by a table given whole as JSON (`TILLPOINT_HUB={...}`) names that
    variable; the HTTP door's token rule (a table's own check) names the variable that
    put its listen beyond loopback. Fails on `_source_of`'s `loc[: n + 1]` made
    `n + 2` (the table's variable missed) and its `len(loc) == 1` made `!= 1`."""
    monkeypatch.setenv("TILLPOINT_HUB", '{"redeem_timeout_ms": 0}')
    run = cli("config", "check")
    assert run.code == 2, run.out
    assert run.err == (
        "tillpoint: config: hub.redeem_timeout_ms must be more than 0 (set by TILLPOINT_HUB)\n"
    ), run.err
    monkeypatch.delenv("TILLPOINT_HUB")
    monkeypatch.setenv("TILLPOINT_HTTP__LISTEN", "0.0.0.0:8061")
    run = cli("config", "check")
    assert run.code == 2, run.out
    assert run.err == (
        "tillpoint: config: http listen 0.0.0.0:8061 is not a loopback address: set a token"
        " ([http] token or TILLPOINT_HTTP__TOKEN) (set by TILLPOINT_HTTP__LISTEN)\n"
    ), run.err
