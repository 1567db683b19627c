"""The Debian package and the wheel: contents, maintainer scripts, a real install.

Building the package takes ~20 s and installing it ~10 s, so those tests are `slow`
(`make test-all`, and CI); the static checks run in the default suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import REPO, snapshot

PACKAGING = REPO / "packaging"


def test_unit_is_notify_with_watchdog_and_hardening() -> None:
    unit = (PACKAGING / "tillpoint.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
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
        env=dict(os.environ, PY=str(REPO / ".venv" / "bin" / "python")),
    )
    return REPO / out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
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
    ):
        assert path in listing
    assert "./opt/tillpoint/wheels/tillpoint-" in listing
    conffiles = subprocess.run(
        ["dpkg-deb", "-f", deb, "Package"], capture_output=True, text=True, check=True
    ).stdout
    assert conffiles.strip() == "tillpoint"


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`dpkg --root` into a throw-away root; maintainer scripts run with DPKG_ROOT set."""
    root = tmp_path_factory.mktemp("root")
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
    )
    yield root


@pytest.mark.slow
def test_installed_agent_starts_and_answers(installed: Path, tmp_path: Path) -> None:
    exe = installed / "opt/tillpoint/venv/bin/tillpoint"
    site = next((installed / "opt/tillpoint/venv/lib").glob("python3*/site-packages"))
    assert (site / "tillpoint").is_dir()
    for bare in ("agent", "sync", "printer"):
        assert not (site / bare).exists()  # one namespace, no generic names
    data = tmp_path / "data"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False))
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-9")
    subprocess.run([exe, "--data-dir", data, "snapshot", "load", snap], check=True, env=env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    ):
        assert expected in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tillpoint = tillpoint.agent.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
