"""Review 40, ci40: CI's `make test` pass back under its budget, and what keeps it so.

1. The files are handed to the two workers longest first (tests/conftest.py orders the
   collection by tests/file_seconds.json; the Makefile's `--no-loadscope-reorder` keeps
   that order: pytest-xdist's own order, most tests first, sends the files of few long
   tests last). Checked: the collection order follows the table whatever the files'
   names, each file's tests stay together and in their order, and every file the table
   names still exists (a renamed file would be ordered by its count of tests, unseen).
2. tests/test_scenarios.py builds each command's parser once, not at each of its ~3,000
   in-process calls (a third of a call's time). Checked: a reused parser answers a call,
   an argparse refusal and the call again as a parser built for each call does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tillpoint.agent.cli import main

from .conftest import FILE_SECONDS, REPO, receipt, snapshot
from .test_scenarios import _run_in_process

TIMEOUT = 120


def test_every_file_the_order_table_names_exists() -> None:
    seconds = json.loads(FILE_SECONDS.read_text(encoding="utf-8"))
    assert len(seconds) > 100, len(seconds)
    assert not [f for f in seconds if not (REPO / f).is_file()]
    assert all(isinstance(s, int | float) and s >= 0 for s in seconds.values())


def test_the_makefile_keeps_the_collection_order_for_the_workers() -> None:
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    (line,) = [x for x in make.splitlines() if x.startswith("XDIST :=")]
    assert "--dist loadfile" in line and "--no-loadscope-reorder" in line, line


def test_the_collection_goes_longest_file_first_each_file_whole() -> None:
    """Three files, named against their order: test_scenarios.py (the table's longest),
    test_hub_store.py, test_layers.py (short): collected longest first."""
    seconds = json.loads(FILE_SECONDS.read_text(encoding="utf-8"))
    files = ["tests/test_layers.py", "tests/test_hub_store.py", "tests/test_scenarios.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "--collect-only", "-q", *files],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        check=True,
    )
    ids = [x for x in done.stdout.splitlines() if "::" in x]
    order = [i.partition("::")[0] for i in ids]
    runs = [f for n, f in enumerate(order) if n == 0 or order[n - 1] != f]
    assert runs == sorted(files, key=lambda f: -seconds.get(f, 0)), runs
    # each file's own tests in the order its module defines them
    alone = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "--collect-only", "-q", files[1]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        check=True,
    )
    assert [i for i in ids if i.startswith(files[1])] == [
        x for x in alone.stdout.splitlines() if "::" in x
    ]


def test_a_reused_parser_answers_as_one_built_for_each_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same calls through tests/test_scenarios.py's runner (its parsers built once)
    and through `main` (a parser each call), each in a data directory of its own: a
    quote, two argparse refusals of the same command, the quote again, a checkout, a
    balance."""
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot()), encoding="utf-8")
    body = tmp_path / "r.json"
    body.write_text(json.dumps(receipt("r1")), encoding="utf-8")

    def calls(data: Path) -> list[list[str]]:
        base = ["--data-dir", str(data)]
        return [
            [*base, "snapshot", "load", str(snap), "--json"],
            [*base, "quote", str(body), "--json"],
            [*base, "quote", str(body), "--no-such-option"],
            [*base, "quote", "--json"],
            [*base, "quote", str(body), "--json", "--explain"],
            [*base, "checkout", str(body), "--json"],
            [*base, "balance", "2770000000017", "--json"],
        ]

    reused = [_run_in_process(argv, capsys) for argv in calls(tmp_path / "reused")]
    fresh = []
    for argv in calls(tmp_path / "fresh"):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        got = capsys.readouterr()
        fresh.append((code, got.out, got.err))
    assert [c for c, _, _ in reused] == [0, 0, 2, 2, 0, 0, 0]
    reused_text = [
        (c, o.replace("reused", "DIR"), e.replace("reused", "DIR")) for c, o, e in reused
    ]
    fresh_text = [(c, o.replace("fresh", "DIR"), e.replace("fresh", "DIR")) for c, o, e in fresh]
    assert reused_text == fresh_text
