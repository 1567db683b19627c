"""The Debian package and the wheel: contents, maintainer scripts, a real install.

Building the package takes a minute or more (it downloads the pinned wheels for Python
3.11, 3.12 and 3.13 once; pip's cache serves later builds) and installing it ~20 s per
interpreter, so those tests are `slow` (`make test-all`, and CI); the static checks run in
the default suite. The install is tested with every supported interpreter this machine
has (`python3.X` on PATH, Debian's /usr/bin, pyenv or uv installs); the others are
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import REPO, free_port, snapshot

PACKAGING = REPO / "packaging"
SUPPORTED = ("3.11", "3.12", "3.13")  # Debian 12, Ubuntu 24.04, Debian 13


def lock_pins() -> dict[str, str]:
    sys.path.insert(0, str(PACKAGING))
    try:
        from runtime_lock import pins
    finally:
        sys.path.remove(str(PACKAGING))
    return pins(REPO / "requirements.lock")  # type: ignore[no-any-return]


def find_python(version: str) -> str | None:
    """An interpreter of that version that can make a venv, or None."""
    home = Path.home()
    candidates = [shutil.which(f"python{version}"), f"/usr/bin/python{version}"]
    for pattern in (
        f".pyenv/versions/{version}.*/bin/python{version}",
        f".local/share/uv/python/cpython-{version}.*/bin/python{version}",
    ):
        candidates += [str(p) for p in sorted(home.glob(pattern))]
    for exe in candidates:
        if not exe or not os.access(exe, os.X_OK):
            continue
        probe = subprocess.run(
            [exe, "-c", "import ensurepip, venv, sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return exe
    return None


def test_runtime_dependencies_are_pinned_in_the_lock() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = lock_pins()
    for requirement in project["dependencies"]:
        name, version = re.fullmatch(
            r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", requirement
        ).groups()  # type: ignore[union-attr]
        assert pinned[re.sub(r"[-_.]+", "-", name).lower()] == version, requirement
    assert "pyusb" in pinned  # USB receipt printers


def test_package_promises_the_pythons_it_is_built_for() -> None:
    script = (PACKAGING / "build-deb.sh").read_text()
    assert f'PYTHONS=${{PYTHONS:-"{" ".join(SUPPORTED)}"}}' in script
    control = (PACKAGING / "debian" / "control.in").read_text()
    assert "python3 (>= 3.11), python3 (<< 3.14)" in control


def test_runtime_lock_refuses_a_wheel_the_lock_does_not_pin(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pins\nPyYAML==6.0.3\nsetuptools==80.9.0\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("pyyaml-6.0.3-cp313-cp313-manylinux_2_17_x86_64.whl", "pip-26.3-py3-none-any.whl"):
        (wheels / name).touch()
    script = [sys.executable, str(PACKAGING / "runtime_lock.py"), str(lock), str(wheels)]
    ok = subprocess.run(script, capture_output=True, text=True, check=False, timeout=30)
    assert ok.returncode == 0 and ok.stdout == "pyyaml==6.0.3\n"
    (wheels / "setuptools-84.2.1-py3-none-any.whl").touch()
    bad = subprocess.run(script, capture_output=True, text=True, check=False, timeout=30)
    assert bad.returncode == 1 and "setuptools-84.2.1" in bad.stderr and "80.9.0" in bad.stderr


def test_unit_is_notify_with_watchdog_and_hardening() -> None:
    unit = (PACKAGING / "tillpoint.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",  # a SIGHUP death is clean to systemd: on-failure left it down
        "RestartPreventExitStatus=2",  # a config problem: retrying cannot mend it
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "User=tillpoint",
        "SupplementaryGroups=dialout lp",
        "NoNewPrivileges=true",
    ):
        assert line in unit


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_parse(script: str) -> None:
    path = PACKAGING / "debian" / script
    assert os.access(path, os.X_OK)
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)


def test_udev_rules_grant_groups() -> None:
    rules = (PACKAGING / "60-tillpoint.rules").read_text()
    assert 'GROUP="dialout"' in rules and 'GROUP="lp"' in rules


@pytest.fixture(scope="module")
def deb() -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not available")
    out = subprocess.run(
        [str(PACKAGING / "build-deb.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        # gzip, not the shipped xz: the same files, ~45-90 s less of CI (build-deb.sh)
        env=dict(os.environ, PY=str(REPO / ".venv" / "bin" / "python"), DEB_COMPRESSION="gzip"),
    )
    return REPO / out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(1200)  # the first test builds the package (wheels for three Pythons)
def test_package_contents_and_control(deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "-I", deb], capture_output=True, text=True, check=True)
    assert "Package: tillpoint" in info.stdout and "python3-venv" in info.stdout
    listing = subprocess.run(
        ["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True
    ).stdout
    for path in (
        "./lib/systemd/system/tillpoint.service",
        "./etc/tillpoint/tillpoint.toml",
        "./lib/udev/rules.d/60-tillpoint.rules",
        "./usr/bin/tillpoint -> /opt/tillpoint/venv/bin/tillpoint",
        "./opt/tillpoint/README.md",
        "./opt/tillpoint/docs/CONTRACT.md",  # the README's links resolve beside it
        "./opt/tillpoint/docs/INTEGRATION.md",
        # the files the README's walkthrough and INTEGRATION.md's programs use, so an
        # integrator on a till with the package alone can seed an agent for them
        "./opt/tillpoint/examples/snapshot.json",
        "./opt/tillpoint/examples/receipt-card.json",
    ):
        assert path in listing
    assert "./opt/tillpoint/wheels/tillpoint-" in listing
    for version in SUPPORTED:  # the compiled dependencies for every supported Python
        tag = "cp" + version.replace(".", "")
        for name in ("grpcio-1.85.1", "pydantic_core-", "pyyaml-6.0.3"):
            assert re.search(rf"wheels/{name}\S*-{tag}-{tag}-manylinux\S*\.whl", listing), (
                name,
                tag,
            )
    assert "wheels/pyusb-" in listing
    shipped = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True
    ).stdout
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(shipped)) as tar:
        member = tar.extractfile("./opt/tillpoint/requirements.lock")
        assert member is not None
        runtime = dict(line.split("==") for line in member.read().decode().split())
    pinned = lock_pins()
    assert runtime and all(pinned[name] == version for name, version in runtime.items())
    assert runtime["pyyaml"] == "6.0.3" and runtime["pyusb"] == pinned["pyusb"]
    package = subprocess.run(
        ["dpkg-deb", "-f", deb, "Package"], capture_output=True, text=True, check=True
    ).stdout
    assert package.strip() == "tillpoint"
    # the configuration is a conffile: an upgrade keeps the till's edits (this read the
    # Package field under the name `conffiles` and never looked at them, until review 31)
    conffiles = subprocess.run(
        ["dpkg-deb", "-I", deb, "conffiles"], capture_output=True, text=True, check=True
    ).stdout
    assert conffiles.split() == ["/etc/tillpoint/tillpoint.toml"]


def dpkg_install(deb: Path, root: Path, python: str | None = None) -> None:
    """`dpkg --root` into a throw-away root; maintainer scripts run with DPKG_ROOT set
    (and TILLPOINT_PYTHON: the interpreter postinst builds the venv with)."""
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    subprocess.run(
        [
            "dpkg",
            f"--root={root}",
            "--force-script-chrootless",
            "--force-depends",
            "--force-not-root",
            "--log=/dev/null",
            "-i",
            str(deb),
        ],
        check=True,
        capture_output=True,
        timeout=600,
        env=dict(os.environ, TILLPOINT_PYTHON=python) if python else None,
    )


def default_python_version() -> str | None:
    """The version of the `python3` postinst builds the venv with when TILLPOINT_PYTHON
    is not set (the first on PATH), or None."""
    exe = shutil.which("python3")
    if exe is None:
        return None
    probe = subprocess.run(
        [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package installed as a till installs it: postinst's venv with `python3`."""
    root = tmp_path_factory.mktemp("root")
    dpkg_install(deb, root)
    yield root


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("version", SUPPORTED)
def test_installs_offline_with_each_supported_python(
    deb: Path, version: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} with venv on this machine")
    if version == default_python_version():
        # The install postinst makes with the default `python3` is this version's: the
        # module's `installed` root (one install, ~20-35 s, not two of the same venv).
        # TILLPOINT_PYTHON, the other way to name the interpreter, is taken by the
        # other versions' installs (`make test-all`).
        root = request.getfixturevalue("installed")
    else:
        root = tmp_path / "root"
        dpkg_install(deb, root, python)
    venv = root / "opt/tillpoint/venv"
    (site,) = (venv / "lib").glob("python3*/site-packages")
    assert site.parent.name == f"python{version}"
    exe = venv / "bin/tillpoint"
    run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("tillpoint "), run.stderr
    freeze = subprocess.run(
        [venv / "bin/python", "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {
        re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(freeze.stdout)
    }
    pinned = lock_pins()
    for name, version_installed in installed.items():
        if name not in ("pip", "tillpoint"):
            assert pinned.get(name) == version_installed, name  # exactly the tested pins
    assert "pyusb" in installed and "grpcio" in installed
    data = tmp_path / "data"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False))
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-9")
    load = subprocess.run(
        [exe, "--data-dir", data, "snapshot", "load", snap, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert load.returncode == 0 and json.loads(load.stdout)["version"] == 1, load.stderr


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(1200)
def test_installed_agent_starts_and_answers(installed: Path, tmp_path: Path) -> None:
    exe = installed / "opt/tillpoint/venv/bin/tillpoint"
    site = next((installed / "opt/tillpoint/venv/lib").glob("python3*/site-packages"))
    assert (site / "tillpoint").is_dir()
    for bare in ("agent", "sync", "printer"):
        assert not (site / bare).exists()  # one namespace, no generic names
    # the config may hold tokens: not world-readable; the hub's directory is ready for
    # `tillpoint hub init` before its unit ever started
    assert (installed / "etc/tillpoint/tillpoint.toml").stat().st_mode & 0o777 == 0o640
    assert (installed / "var/lib/tillpoint-hub").stat().st_mode & 0o777 == 0o700
    data = tmp_path / "data"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False))
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-9")
    # the README's check of the installed configuration, as it is shipped
    shipped = installed / "etc/tillpoint/tillpoint.toml"
    check = subprocess.run(
        [exe, "--config", shipped, "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0 and "configuration is valid" in check.stdout, check.stderr
    subprocess.run([exe, "--data-dir", data, "snapshot", "load", snap], check=True, env=env)
    port = free_port()
    conf = tmp_path / "tillpoint.toml"
    example = (installed / "etc/tillpoint/tillpoint.toml").read_text()
    conf.write_text(
        example.replace('listen = "127.0.0.1:50061"', f'listen = "127.0.0.1:{port}"').replace(
            "enabled = true", "enabled = false"
        )
    )
    proc = subprocess.Popen([exe, "--config", conf, "--data-dir", data, "run"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            status = pb_grpc.PosAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
        assert status.device_id == "till-9" and status.cache_version == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0


def test_wheel_holds_one_tillpoint_namespace(tmp_path: Path) -> None:
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path, REPO],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tillpoint-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("tillpoint-")}
    assert tops == {"tillpoint"}
    for expected in (
        "tillpoint/agent/cli.py",
        "tillpoint/sync/hub_server.py",
        "tillpoint/printer/queue.py",
        "tillpoint/v1/tillpoint_pb2.py",
        "tillpoint/v1/tillpoint.proto",
        "tillpoint/client/__init__.py",
    ):
        assert expected in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tillpoint = tillpoint.agent.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
