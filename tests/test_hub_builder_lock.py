"""One snapshot builder per hub directory: `hub export` beside a build in another process."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tillpoint.agent.cli import main
from tillpoint.sync.hub_server import HubDir, SnapshotBuilder
from tillpoint.sync.loopback import sample_master_data, wait_for

# A builder in its own process whose build stops after the header until `go` exists:
# the state `hub serve` is in for minutes while it builds a chain-sized snapshot.
SLOW_BUILDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tillpoint.sync.hub_server import HubDir, SnapshotBuilder

    hub = HubDir(Path(sys.argv[1]))
    started, go = Path(sys.argv[2]), Path(sys.argv[3])
    store = hub.open_store()
    real = store.snapshot_stream

    def slow(version, base):
        stream = real(version, base)
        yield next(stream)
        started.touch()
        while not go.exists():
            time.sleep(0.02)
        yield from stream

    store.snapshot_stream = slow
    builder = SnapshotBuilder(store, hub.keys.signing_key(), hub.snapshots)
    snap = builder.bundle(store.latest().version, 0)
    print(snap.path.stat().st_ino, snap.sha256.hex())
    """
)


def _hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    hub_dir = tmp_path / "hub"
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    assert main(["hub", "init", "--hub-dir", str(hub_dir)]) == 0
    assert main(["hub", "import", str(catalogue), "--publish", "--hub-dir", str(hub_dir)]) == 0
    bundle = tmp_path / "till-1.bundle.json"
    assert main(["hub", "enroll", "till-1", "--hub-dir", str(hub_dir), "--out", str(bundle)]) == 0
    capsys.readouterr()
    return hub_dir


def _opened(pid: int, directory: Path) -> list[str]:
    """The files of `directory` (but its builders.lock) that process `pid` has open."""
    found: list[str] = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it has ended
        return found
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{directory}/") and not target.endswith("/builders.lock"):
            found.append(target)
    return found


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TILLPOINT_") or k == "TILLPOINT_HUB_STORE"  # --hub-store
    }


def test_export_waits_for_a_build_in_another_process_and_takes_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub_dir = _hub(tmp_path, capsys)
    started, go = tmp_path / "started", tmp_path / "go"
    builder = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILDER, str(hub_dir), str(started), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    export = None
    try:
        wait_for(lambda: started.exists() or builder.poll() is not None, timeout=60)
        assert builder.poll() is None, builder.communicate()
        tmp = hub_dir / "snapshots" / "v0000000001-full.snap.tmp"
        assert tmp.exists()  # the build in progress
        out = tmp_path / "signed.json"
        export = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tillpoint.agent.cli import main; raise SystemExit(main())",
                "hub",
                "export",
                "till-1",
                "--hub-dir",
                str(hub_dir),
                "--out",
                str(out),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        # export got as far as the snapshot directory (a lock to wait on, or a file of
        # its own), and then left the build's files alone and waits
        wait_for(
            lambda: _opened(export.pid, hub_dir / "snapshots") or export.poll() is not None, 60
        )
        time.sleep(0.5)
        assert export.poll() is None, export.communicate()
        assert tmp.exists()
        go.touch()
        built, berr = builder.communicate(timeout=60)
        assert builder.returncode == 0, berr
        exported, eerr = export.communicate(timeout=60)
        assert export.returncode == 0, eerr
    finally:
        go.touch()
        for proc in (builder, export):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    inode, sha = built.split()
    snap = hub_dir / "snapshots" / "v0000000001-full.snap"
    assert str(snap.stat().st_ino) == inode  # export took that file, built nothing
    assert json.loads(exported)["version"] == 1
    payload = base64.b64decode(json.loads(out.read_text())["payload"])
    assert hashlib.sha256(payload).hexdigest() == sha  # the very bytes the builder wrote
    names = sorted(p.name for p in (hub_dir / "snapshots").iterdir())
    assert names == ["builders.lock", "v0000000001-full.json", "v0000000001-full.snap"]


def test_only_a_start_with_no_build_running_deletes_leftovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub_dir = _hub(tmp_path, capsys)
    hub = HubDir(hub_dir)
    snaps = hub.snapshots
    snaps.mkdir(exist_ok=True)
    leftovers = [snaps / "v0000000001-full.snap.tmp", snaps / "v0000000002-full.snap"]
    for path in leftovers:
        path.write_bytes(b"half a build")
    store = hub.open_store()
    try:
        # another builder at work: its files stay
        fd = os.open(snaps / "builders.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            SnapshotBuilder(store, hub.keys.signing_key(), snaps)
            assert all(p.exists() for p in leftovers)
        finally:
            os.close(fd)
        # nobody building: what a crash left is deleted
        builder = SnapshotBuilder(store, hub.keys.signing_key(), snaps)
        assert not any(p.exists() for p in leftovers)
        snap = builder.bundle(1, 0)
        assert snap.size > 0
        assert [p.name for p in snaps.glob("*.lock")] == ["builders.lock"]
    finally:
        store.close()
