"""Review 25 (ops25): the product as a retailer's IT team installs and runs it and as a
support engineer debugs it (docs/CONTRACT.md §10, README "Running it on a till") — each
finding with the test that failed before its fix."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.queue import PrintWorker, ensure_schema
from tillpoint.printer.transport import make_transport

from .conftest import CLI, receipt, snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("below", [False, True])
def test_a_data_dir_that_is_a_file_is_one_line_exit_2(
    tmp_path: Path, cli: CLI, below: bool
) -> None:
    """docs/CONTRACT.md §10: a data directory that is a file (a typo in --data-dir, a
    path under a file) is a configuration problem: `status`, `snapshot load` and
    `identify` said "cannot open …/cache.db: [Errno 17] File exists: '…'" with exit 1
    (which the unit restarts for ever), where `run` said it with exit 2."""
    (tmp_path / "data").write_text("not a directory\n")
    flag = ["--data-dir", str(tmp_path / "data" / "sub")] if below else []
    for args in (
        ["status", "--json"],
        ["snapshot", "load", str(EXAMPLES / "snapshot.json")],
        ["identify", "2770000000017", "--json"],
    ):
        run = cli(*flag, *args)
        assert run.code == 2, (args, run.code, run.err)
        _one_line(run.err)
        assert "data directory" in run.err and "not a directory" in run.err.lower(), run.err
        assert run.out == ""
    assert (tmp_path / "data").read_text() == "not a directory\n"