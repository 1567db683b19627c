"""Review 21 (docs21): the documents a new user and a POS integrator follow say what the
code does: the packaged example configuration, the commands the contract lists, and the
integration guide's programs against a real `tillpoint run`."""

from __future__ import annotations

import re
from pathlib import Path

from tillpoint.agent.config import Settings
from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig

from .conftest import CLI, REPO

EXAMPLE = REPO / "packaging" / "tillpoint.example.toml"


def _example_keys() -> dict[str, set[str]]:
    """Each table's keys the example shows, set or commented out (`# key = value`)."""
    keys: dict[str, set[str]] = {"": set()}
    table = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            table = m.group(1)
            keys.setdefault(table, set())
        elif m := re.match(r"^#?\s?(\w+)\s*=", line):
            keys[table].add(m.group(1))
    return keys


def test_the_example_config_shows_every_key() -> None:
    """It says "Every key is shown with its default": the device tables lacked 22 keys
    (the unit's TimeoutStopSec names `confirm_timeout_s`, which it did not show)."""
    shown = _example_keys()
    tables = {
        "": set(Settings.model_fields)
        - {"hub", "server", "http", "log", "metrics"}
        - {"printer", "display", "scanner"},
        "printer": set(PrinterConfig.model_fields),
        "display": set(DisplayConfig.model_fields),
        "scanner": set(ScannerConfig.model_fields),
    }
    for name in ("hub", "server", "http", "log", "metrics"):
        model = Settings.model_fields[name].annotation
        assert model is not None and hasattr(model, "model_fields")
        tables[name] = set(model.model_fields)
    missing = {
        t: sorted(k - shown.get(t, set())) for t, k in tables.items() if k - shown.get(t, set())
    }
    unknown = {
        t: sorted(shown[t] - tables.get(t, set())) for t in shown if shown[t] - tables.get(t, set())
    }
    assert not missing, f"keys the example does not show: {missing}"
    assert not unknown, f"keys the example shows that the configuration does not have: {unknown}"


def test_the_example_config_commented_values_are_valid(cli: CLI, tmp_path: Path) -> None:
    """A line shown commented out is a value `config check` takes once uncommented."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^# ?(\w+\s*=.*)$", line)
        lines.append(m.group(1) if m else line)
    conf = tmp_path / "uncommented.toml"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = cli("--config", str(conf), "config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["printer"]["usbInEp"] == 0x82
    assert run.json()["printer"]["confirmTimeoutS"] == 10.0


def _commands() -> list[str]:
    """Every command of `tillpoint`, groups' actions as "hub serve"."""
    import argparse

    from tillpoint.agent.cli import build_parser

    found: list[str] = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(prefix + name)
                    walk(sub, prefix + name + " ")

    walk(build_parser(), "")
    return found


def test_the_contract_names_every_command() -> None:
    """§10 lists "more commands than the table": `scan`, `hub migrate`, `sync receipts` and
    `print retry` were missing from it."""
    contract = (REPO / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    section = contract[contract.index("## 10. ") : contract.index("## 11. ")]
    spans = re.findall(r"`([^`]+)`", section.replace("\n  ", " "))
    groups = {c.split()[0] for c in _commands() if " " in c}
    missing = []
    for command in _commands():
        words = command.split()
        if len(words) == 1:
            if command in groups or any(s.split()[0] == command for s in spans):
                continue
        elif any(
            s.split()[0] == words[0] and len(s.split()) > 1 and words[1] in s.split()[1].split("|")
            for s in spans
        ):
            continue
        missing.append(command)
    assert not missing, f"commands docs/CONTRACT.md §10 does not name: {missing}"


def test_config_check_shows_the_text_as_written(cli: CLI) -> None:
    """The text form printed the example's Cyrillic heading as \\u0412\\u0410...: unreadable
    to the person checking the file."""
    run = cli("--config", str(EXAMPLE), "config", "check")
    assert run.code == 0, run.err
    assert '"heading": "ВАШИ ПРЕДЛОЖЕНИЯ"' in run.out


def test_the_units_paths_are_what_the_package_installs() -> None:
    """The units start the program the package's postinst builds (its venv), document the
    README build-deb.sh installs, and write where postinst made their directories."""
    packaging = REPO / "packaging"
    build = (packaging / "build-deb.sh").read_text(encoding="utf-8")
    postinst = (packaging / "debian" / "postinst").read_text(encoding="utf-8")
    assert 'venv --clear "$ROOT/opt/tillpoint/venv"' in postinst
    assert "ln -s /opt/tillpoint/venv/bin/tillpoint" in build
    assert 'install -m 0644 README.md CHANGELOG.md "$STAGE/opt/tillpoint/"' in build
    for unit, data in (
        ("tillpoint.service", "/var/lib/tillpoint"),
        ("tillpoint-hub.service", "/var/lib/tillpoint-hub"),
    ):
        text = (packaging / unit).read_text(encoding="utf-8")
        assert f"packaging/{unit} " in build  # shipped
        start = re.search(r"^ExecStart=(\S+)", text, re.M)
        assert start is not None and start.group(1) == "/opt/tillpoint/venv/bin/tillpoint"
        assert (
            f"ReadWritePaths={data}\n" in text
            and f"StateDirectory={data.rsplit('/', 1)[1]}\n" in text
        )
        assert "install -d -o tillpoint -g tillpoint -m 07" in postinst and f" {data}\n" in postinst
        doc = re.search(r"^Documentation=file://(\S+)", text, re.M)
        assert doc is None or doc.group(1) == "/opt/tillpoint/README.md"
    agent = (packaging / "tillpoint.service").read_text(encoding="utf-8")
    assert "--config /etc/tillpoint/tillpoint.toml run" in agent
    assert '"$STAGE/etc/tillpoint/tillpoint.toml"' in build
    assert "Environment=TILLPOINT_DATA_DIR=/var/lib/tillpoint\n" in agent
    hub = (packaging / "tillpoint-hub.service").read_text(encoding="utf-8")
    assert "--hub-dir /var/lib/tillpoint-hub" in hub


def test_the_docs_name_every_package_the_distribution_installs() -> None:
    """README and ARCHITECTURE listed four of the five (`tillpoint.client`, which the
    README's own Python example imports, was missing from both)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("All of it installs as one import namespace")
    listed = readme[start : readme.index("\n\n", start)]
    architecture = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    folders = project["tool"]["setuptools"]["package-dir"]
    for package in packages:
        assert f"`{package}`" in listed, package
        assert re.search(
            rf"^{re.escape(folders[package])}/?\s+→ {re.escape(package)}\s", architecture, re.M
        ), package


def test_the_readme_python_client_example_runs_against_tillpoint_run(tmp_path: Path) -> None:
    """The README's `PosAgentClient` block, pasted, against a real `tillpoint run` seeded
    with the walkthrough's snapshot (its gRPC port moved off the default)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import free_port

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    block = next(b for b in blocks if "PosAgentClient(" in b)
    assert '"127.0.0.1:50061"' in block  # the default it shows
    port = free_port()
    (tmp_path / "examples").symlink_to(REPO / "examples")
    data = tmp_path / "data"
    exe = str(Path(sys.executable).parent / "tillpoint")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(
        TILLPOINT_DEVICE_ID="till-1",
        TILLPOINT_SERVER__LISTEN=f"127.0.0.1:{port}",
        TILLPOINT_HTTP__LISTEN="127.0.0.1:0",
        TILLPOINT_METRICS__ENABLED="false",
    )
    load = [exe, "--data-dir", str(data), "snapshot", "load", "examples/snapshot.json"]
    subprocess.run(load, cwd=tmp_path, env=env, check=True, timeout=60, capture_output=True)
    agent = subprocess.Popen(
        [exe, "--data-dir", str(data), "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (data / "serving.json").exists():
            assert agent.poll() is None and time.monotonic() < deadline, (
                "tillpoint run never served"
            )
            time.sleep(0.05)
        (tmp_path / "client.py").write_text(
            block.replace('"127.0.0.1:50061"', f'"127.0.0.1:{port}"'), encoding="utf-8"
        )
        done = subprocess.run(
            [sys.executable, "client.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert "'status': 'FOUND'" in first and "'firstName': 'Борис'" in first
    assert second == "35831 4"  # receipt-card.json: 363,80 less 5,49; tobacco earns nothing


def test_help_points_at_the_docs_where_the_package_puts_them() -> None:
    """`tillpoint --help` sent a till's engineer to "the source tree", which a till with
    the package has not: build-deb.sh puts README.md and docs/ under /opt/tillpoint."""
    from tillpoint.agent.cli import build_parser

    epilog = build_parser().epilog or ""
    build = (REPO / "packaging" / "build-deb.sh").read_text(encoding="utf-8")
    assert "/opt/tillpoint" in epilog and '"$STAGE/opt/tillpoint/docs/"' in build
