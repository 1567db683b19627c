"""Review 40 (rev40e): a second reading of rev40c (a file the machine refuses is exit 1
naming the file, a refused path exit 2; `cli.ErrorLines`; key sets; UTF-16/32 inputs) and
rev40d (the serial stop's grace, look-alikes for the other Cyrillic letters, pictographs as
word breaks in first names), looking for the paths their fixes did not reach. Each test
that names a fault failed before the fix beside it; the others pin a promise found kept.
Real parts: real `tillpoint` processes and a real hub on a loopback port, `cli.main` run in
this process from several threads, a real tmpfs filled to its last page in a mount
namespace of its own (skipped where `unshare` is refused).

Found right and pinned: `main(argv)` in a caller's process gives its stderr back; the other
Cyrillic letters' look-alikes fit the display's rows on four code pages. Checked by hand,
not pinned: the till's enrolment (`sync install`) and `hub init --renew-server` write their
keys as one set (`pki._write_set`) already.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .test_review38_rev38b import EXE


def _hub_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env["TILLPOINT_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    hub = tmp_path / "hub"
    made = subprocess.run(
        [EXE, "hub", "init", "--hub-dir", str(hub)],
        env=_hub_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return hub


@pytest.mark.parametrize(
    "where", ["missing folder", pytest.param("a folder", marks=pytest.mark.slow)]
)  # the second a hub process more (~5 s), in `make test-all`
def test_hub_serve_with_a_port_file_it_cannot_write_is_exit_2_naming_it(
    tmp_path: Path, hub_dir: Path, where: str
) -> None:
    """`hub serve --port-file F` where F cannot be written (its folder missing, F a
    folder): the bound port could not be told, which a script waiting for F never learns.
    It said "internal error: FileNotFoundError: … hub.port.tmp" (or IsADirectoryError),
    exit 1: the temporary name, not the file given, worded as a bug. Now exit 2, one line
    naming --port-file and the file, and the server stopped (the process ends)."""
    port_file = tmp_path / "nope" / "hub.port" if where == "missing folder" else tmp_path
    run = subprocess.run(
        [
            EXE,
            "hub",
            "serve",
            "--hub-dir",
            str(hub_dir),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        env=_hub_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert last.startswith(f"tillpoint: --port-file {port_file}: "), last


@pytest.mark.parametrize("keycap", ["#\ufe0f\u20e3", "1\ufe0f\u20e3", "*\u20e3", "7\u20e3"])
def test_a_keycap_pictograph_parts_a_first_name_as_other_pictographs_do(keycap: str) -> None:
    """rev40d made a pictograph part a first name's words ("Анна😀" is "Анна"). A keycap
    emoji (#️⃣, 1️⃣: a digit, `#` or `*`, the emoji's variation selector and the
    combining enclosing keycap) is a pictograph too, but only its keycap mark was dropped:
    its digit stayed, glued to the name ("Анна1, добрый день!", "Анна#")."""
    from tillpoint.printer.display import showable
    from tillpoint.printer.messages import first_name_only, greeting_line

    assert first_name_only(f"Анна{keycap}") == "Анна"
    assert first_name_only(f"Анна{keycap}Мария") == "Анна"
    assert first_name_only(keycap) == ""
    assert showable([greeting_line(first_name_only(f"Анна{keycap}"), 20)], "cp866") == [
        "Анна, добрый день!"
    ]
    # a digit or # that is no keycap stays as written (§8 shows what the name holds)
    assert first_name_only("Анна1") == "Анна1"


def test_main_in_a_callers_process_gives_its_stderr_back_from_threads_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rev40c wraps stderr in `cli.ErrorLines` while a command runs. Run in a caller's
    own process (`main(argv)`: a test, a program embedding the CLI), from six threads at
    once, with bad input, `--help` and `--version`: the caller gets its own `sys.stderr`
    object back (not a wrapper left behind), the error line reaches the stream it had
    redirected, and bad input is exit 2 (argparse's `SystemExit(2)`) as before. Found
    right; pinned."""
    import contextlib
    import io
    import sys
    import threading

    from tillpoint.agent.cli import ErrorLines, main

    monkeypatch.setenv("TILLPOINT_DATA_DIR", str(tmp_path / "data"))
    missing = str(tmp_path / "missing.json")

    def code(argv: list[str]) -> object:
        try:
            return main(argv)
        except SystemExit as exc:
            return exc.code

    mine = io.StringIO()
    with contextlib.redirect_stderr(mine), contextlib.redirect_stdout(io.StringIO()):
        assert code(["print", "preview", missing]) == 2
        assert sys.stderr is mine
        assert code(["quote"]) == 2
        assert code(["--help"]) == 0
        assert code(["--version"]) == 0
        assert sys.stderr is mine
        codes: list[object] = []
        threads = [
            threading.Thread(target=lambda: codes.append(code(["print", "preview", missing])))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert codes == [2] * 6
        assert sys.stderr is mine and not isinstance(sys.stderr, ErrorLines)
    lines = mine.getvalue().splitlines()
    assert lines.count(f"tillpoint: {missing}: no such file") == 7, lines
    assert "Traceback" not in mine.getvalue()


_META_ON_A_FULL_DISK = r"""
import json, os, subprocess, sys
from pathlib import Path
full = Path(sys.argv[1])
if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(full)]).returncode:
    sys.exit(90)
from tillpoint.agent.errors import StorageError
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
root = full / "hub"
hub = LoopbackHub(root, data=sample_master_data(), start=False)
snap = hub.server.builder.bundle(1, 0)  # its size learnt; built again below
size = snap.path.stat().st_size
snap.path.unlink()
snap.path.with_suffix(".json").unlink()
st = os.statvfs(full)
with open(full / "fill", "wb") as fh:  # room for the snapshot's pages, none for its record
    fh.write(b"\0" * (st.f_bavail * st.f_frsize - -(-size // 4096) * 4096))
try:
    hub.server.builder.bundle(1, 0)
    out = {"kind": None}
except StorageError as exc:
    out = {"kind": "StorageError", "message": exc.message}
except Exception as exc:
    out = {"kind": type(exc).__name__, "message": str(exc)}
out["left"] = sorted(p.name for p in (root / "snapshots").iterdir())
print(json.dumps(out))
"""


def test_a_snapshot_whose_record_meets_a_full_disk_names_the_file(tmp_path: Path) -> None:
    """rev40c named the hub's snapshot file and why when its write is refused (a full
    disk, the file size limit). The record written after it (`v…-full.json`, the file's
    size, hash and signature) was outside that: a disk that filled with the snapshot's
    last page raised a bare "[Errno 28] No space left on device" (no file; `hub export`
    said "internal error: OSError"), and the `.snap` stayed without its record, taking
    the room a retry needs. Now a storage error naming the record and the full file
    system, the `.snap` removed. A real tmpfs in a mount namespace of its own."""
    import json
    import sys

    from .test_review32_ops32 import _mount_namespace

    unshare = _mount_namespace()
    if unshare is None:
        pytest.skip("no mount namespace here (unshare refused): cannot make a small disk")
    full = tmp_path / "full"
    full.mkdir()
    run = subprocess.run(
        [*unshare, sys.executable, "-c", _META_ON_A_FULL_DISK, str(full)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode == 90:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr}")
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["kind"] == "StorageError", out
    record = f"{full}/hub/snapshots/v0000000001-full.json"
    assert out["message"].startswith(f"the snapshot's record {record} could not be written: "), out
    assert "is full" in out["message"], out
    assert out["left"] == ["builders.lock"], out


@pytest.mark.parametrize("codec", ["cp866", "cp1251", "cp437", "cp852"])
def test_the_other_cyrillic_letters_look_alikes_fit_the_display(codec: str) -> None:
    """rev40d's look-alikes read again: Ү and Ұ both as У and Һ as Х are how Russian
    writes those names (Айгүл Айгул, Ұлан Улан, Һадия Хадия), and on a page without
    Cyrillic Җ, Ҳ, Һ, Ҷ are two letters (Zh, Kh, Ch). The display's rows are fitted after
    the look-alikes (`message_bytes`: `fit_lines(showable(...))`), so a name that grows
    so never makes a row longer than the display. Found right; pinned."""
    from tillpoint.printer.display import showable
    from tillpoint.printer.messages import fit_lines, greeting_line
    from tillpoint.printer.text import degrade

    if codec in ("cp866", "cp1251"):
        assert degrade("Айгүл Ұлан Һадия Әсел Жаңыл", codec) == "Айгул Улан Хадия Асел Жаныл"
    for name in ("Җәүһәрҗәүһәр", "Ҳҷҳҷҳҷҳҷ", "Һһһһһһһһһһһһһ", "Ҷамшед😀", "Ҳусейн"):
        for columns in (8, 16, 20, 40):
            rows = fit_lines(showable([greeting_line(name, columns)], codec), columns, 2)
            assert all(len(row) <= columns for row in rows), (name, columns, rows)
            assert all("?" not in row for row in rows), (name, columns, rows)


def test_a_utf8_config_with_a_nul_byte_says_where_not_not_utf8(tmp_path: Path) -> None:
    """rev40c made any NUL byte in a TOML configuration "not UTF-8 text" (its reading: a
    NUL beside each ASCII letter is UTF-16 or UTF-32 without a mark). A UTF-8 file with
    one NUL in it (a file a power cut left with zeros after its last write, an editor's
    stray byte) is UTF-8 text: it was sent to convert the file's encoding, which is right,
    and lost the line tomllib named. Now the NUL's line and column, "TOML allows none";
    a file in UTF-16/32 (a NUL in its first four bytes) is "not UTF-8 text" as before."""
    from tillpoint.agent.config import read_config_file
    from tillpoint.agent.errors import InputError

    path = tmp_path / "tillpoint.toml"
    path.write_bytes(b'device_id = "till-1"\n# a comment\x00 here\n')
    with pytest.raises(InputError) as refused:
        read_config_file(path)
    said = refused.value.message
    assert "not UTF-8 text" not in said, said
    assert said == f"config {path}: a NUL byte at line 2, column 12 (TOML allows none)", said
    path.write_bytes("[hub]\npoll_interval_s = 30\n".encode("utf-16-le"))
    with pytest.raises(InputError) as refused:
        read_config_file(path)
    assert refused.value.message.startswith(f"config {path}: not UTF-8 text ("), refused.value
