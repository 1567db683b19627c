"""Review 30 (dup30): the house rules, audited in the product code.

Files the agent and the hub write for others are written whole (temp-then-rename): a
write that fails on the way (a full disk, a file-size limit) leaves the file it was to
replace as it was, and says so in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.sync.loopback import sample_master_data

LIMIT = 128 * 1024  # bytes a process may write into one file (RLIMIT_FSIZE)


# The limit is set by the child itself before it runs the code (a bootstrap that execs),
# not by `preexec_fn`: that forces a plain fork of this multi-threaded pytest process, and
# grpc's fork handlers (grpc is loaded here by earlier tests) abort the child now and then
# ("epoll_wait error: Bad file descriptor", exit -6) before it ever execs.
_BOOTSTRAP = (
    "import os, resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def run_limited_python(*args: str) -> subprocess.CompletedProcess[str]:
    """`python *args` in a process that may not write more than `LIMIT` bytes into a file
    (a disk that fills up on the way: Python ignores SIGXFSZ, a write fails with EFBIG)."""
    return subprocess.run(
        [sys.executable, "-c", _BOOTSTRAP, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_limited(*argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI under the file-size limit (`run_limited_python`)."""
    return run_limited_python("-m", "tillpoint.agent.cli", *argv)


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_a_hub_export_that_fails_on_the_way_leaves_the_earlier_export_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/CONTRACT.md §3 (`hub export`, files written whole): the export to the same
    file again fails half way (the disk fills up); the file exported before is still
    there as it was, no half file stands under its name, and no temporary file is left."""
    hub = str(tmp_path / "hub")
    data = sample_master_data()
    data["customers"] += [
        {"id": f"x-{n}", "firstName": "Имя", "tier": "base", "balancePoints": n}
        for n in range(3000)
    ]
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    cli_json(capsys, "hub", "import", str(catalogue), "--publish", "--hub-dir", hub)
    cli_json(capsys, "hub", "enroll", "till-1", "--hub-dir", hub, "--out", str(tmp_path / "b"))
    out = tmp_path / "usb" / "signed.json"
    out.parent.mkdir()
    done = cli_json(capsys, "hub", "export", "till-1", "--hub-dir", hub, "--out", str(out))
    assert done["bytes"] > LIMIT  # the second export cannot be written whole
    before = out.read_bytes()

    again = run_limited("hub", "export", "till-1", "--hub-dir", hub, "--out", str(out))
    # exit 1: a disk that fills up is the machine's fault, not the input's (review 40,
    # rev40c; it was exit 2 until then, CONTRACT §3's decision of 2026-12-04)
    assert again.returncode == 1, again.stderr
    assert again.stdout == "" and again.stderr.count("\n") == 1
    assert f"cannot write {out}" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["signed.json"]


def test_a_secret_the_disk_cannot_hold_whole_is_refused_not_written_in_part(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §9 (device identity; files written whole): the writer of keys and
    enrolment bundles wrote with one bare `os.write`, which on a disk that fills up
    writes a part and returns its count: a cut key or bundle was renamed over the good
    one and `hub enroll` reported success. Now the write fails and the old file stays."""
    path = tmp_path / "till-1.json"
    path.write_text('{"old": true}\n', encoding="utf-8")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tillpoint.sync import pki\n"
        "try:\n"
        "    pki.write_bundle(Path(sys.argv[1]), {'key': 'k' * 200_000})\n"
        "except OSError as exc:\n"
        "    print('refused:', exc.strerror)\n"
        "else:\n"
        "    print('written')\n"
    )
    done = run_limited_python("-c", script, str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:"), done.stdout
    assert path.read_text(encoding="utf-8") == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["till-1.json"]


def test_an_export_never_writes_through_a_link_found_at_its_temporary_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/CONTRACT.md §3 (`hub export`, files written whole): `--out` in a folder others
    may write (/tmp): a link another user put at the temporary name (`NAME.tmp`) is not
    followed: the file it points to stays as it was, and `NAME` is the export itself,
    not that link."""
    hub = str(tmp_path / "hub")
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    cli_json(capsys, "hub", "import", str(catalogue), "--publish", "--hub-dir", hub)
    cli_json(capsys, "hub", "enroll", "till-1", "--hub-dir", hub, "--out", str(tmp_path / "b"))
    victim = tmp_path / "someone-elses.txt"
    victim.write_text("theirs\n", encoding="utf-8")
    out = tmp_path / "signed.json"
    out.with_name("signed.json.tmp").symlink_to(victim)

    cli_json(capsys, "hub", "export", "till-1", "--hub-dir", hub, "--out", str(out))
    assert victim.read_text(encoding="utf-8") == "theirs\n"
    assert not out.is_symlink()
    assert json.loads(out.read_text(encoding="utf-8"))["format"].startswith("tillpoint-signed")
    assert not out.with_name("signed.json.tmp").exists()
