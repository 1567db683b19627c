"""Review 28 (rev28): a second look at the session's merged change."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tillpoint.agent.cli import main
from tillpoint.printer.config import DisplayConfig
from tillpoint.printer.display import message_bytes
from tillpoint.printer.messages import fit_lines, quote_lines

_FIGURE = re.compile(r"\d[\d ,]*\d|\d")


def _figures(text: str) -> list[str]:
    return [m.replace(" ", "") for m in _FIGURE.findall(text)]


@pytest.mark.parametrize("width", range(8, 21))
@pytest.mark.parametrize(
    "lines",
    [
        ["Итого: 12 345 678,90", ""],
        quote_lines(12_345_678_901, 0),  # "123 456 789,01": the label left out at 20
        ["Итого: 1 234 567,89", ""],
        ["Итого: 123 456,78", ""],
    ],
)
def test_a_total_is_never_split_over_two_rows_nor_cut(lines: list[str], width: int) -> None:
    """docs/CONTRACT.md §8: a figure is never cut (a cut total reads as another total). On 10
    columns "Итого: 12 345 678,90" showed "Итого: 12" over "345 678,90"; "123 456 789,01"
    showed "123 456" over "789,01" up to 13 columns (12 fit it without its spaces); on 9
    columns "Итого: 1 234 567,89" showed "Итого: 1.". The figure is whole on one row or not
    shown at all."""
    rows = fit_lines(lines, width)
    assert all(len(row) <= width for row in rows)
    whole = _figures(lines[0])
    for row in rows:
        for figure in _figures(row):
            assert figure in whole, (width, rows)
    if width >= len(whole[0]):
        assert any(whole[0] in _figures(row) for row in rows), (width, rows)


def test_the_display_shows_the_total_without_its_spaces_rather_than_over_two_rows() -> None:
    """docs/CONTRACT.md §8, through the driver's bytes: a 12-column display."""
    config = DisplayConfig(columns=12, rows=2)
    shown = message_bytes(quote_lines(12_345_678_901, 0), config).decode(config.codepage)
    assert "123456789,01" in shown


def test_hub_import_from_stdin_stopped_leaves_no_copy_behind(tmp_path: Path) -> None:
    """docs/CONTRACT.md §10 (`hub import -` copies standard input into the hub's directory,
    removed afterwards): an import stopped by SIGTERM (`timeout`, a job runner, systemd) or
    SIGHUP (its terminal closed) while it reads left its hidden copy, as large as the chain's
    export, in the hub's directory for good."""
    hub_dir = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_DATA_DIR": str(tmp_path / "data")}
    cli = [sys.executable, "-m", "tillpoint.agent.cli"]
    for sig in (signal.SIGTERM,):  # SIGHUP the same (one process: this test is slow)
        code, _, err = import_stopped_while_copying(cli, hub_dir, env, sig, wait_s=20)
        assert code != 0
        assert b"Traceback" not in err, err
        assert list(hub_dir.glob(".import-stdin-*")) == [], sig


def import_stopped_while_copying(
    cli: list[str],
    hub_dir: Path,
    env: dict[str, str],
    sig: int,
    procs: list[subprocess.Popen[bytes]] | None = None,
    wait_s: float = 60.0,
) -> tuple[int, bytes, bytes]:
    """`hub import -` (by `cli`, the command's words before `hub`) sent a row, stopped by
    `sig` once its copy of standard input is in `hub_dir`: its exit code, stdout, stderr.
    `procs`: where a test's fixture keeps the process, to end it if the test fails;
    `wait_s`: how long the copy and the stopped process's end are waited for."""
    proc = subprocess.Popen(
        [*cli, "hub", "import", "-", "--hub-dir", str(hub_dir), "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    if procs is not None:
        procs.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(b'{"customer": {"id": "c-1", "balancePoints": 10}}\n')
    proc.stdin.flush()
    deadline = time.monotonic() + wait_s
    while not list(hub_dir.glob(".import-stdin-*")) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    # (a signal before the copy is locked waits: review 55)
    assert list(hub_dir.glob(".import-stdin-*")), "the copy was never made"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=wait_s)
    return proc.returncode, out, err


@pytest.mark.parametrize("head", [b"\n", b"\r\n\n", b"  \n"])
def test_hub_import_from_stdin_reads_json_lines_that_begin_with_a_blank_line(
    head: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: `hub import -` tells JSON Lines from its first line. A JSON
    Lines export that begins with a blank line imports by its name, but from standard
    input it was taken for one JSON document and refused ("customer is not a known
    section", exit 2): the first line that is not blank tells."""
    rows = b'{"customer": {"id": "c-1", "balancePoints": 10}}\n'
    rows += b'{"customer": {"id": "c-2", "balancePoints": 20}}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(head + rows)))
    argv = ["hub", "import", "-", "--hub-dir", str(tmp_path / "hub"), "--json"]
    code = main([*argv, "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["byKind"]["customer"] == 2
