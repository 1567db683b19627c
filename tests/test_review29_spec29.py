"""Review 29 (spec29): a grader's reading of the contract, sentence by sentence.

Most of it is scenario files (tests/scenarios/review29/, run by tests/test_scenarios.py, each
step's hand arithmetic in its "why"). What a scenario file cannot say is here, through the
CLI as a script or a POS host calls it."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, receipt, snapshot


def _one_document(out: str) -> Any:
    doc = json.loads(out)
    assert out.count("\n") == 1 and out.endswith("\n"), out
    return doc


# ---------------------------------------------------------------- §10: where --json goes


def test_json_given_before_the_command_prints_its_document(cli: CLI) -> None:
    """docs/CONTRACT.md §10: `tillpoint [--data-dir DIR] [--config FILE] COMMAND`, and with
    `--json` a command prints one JSON document. A script (or a test harness) that writes
    the flags it always passes first, `tillpoint --data-dir D --json checkout FILE`, was
    refused with exit 2 ("--json goes after the command"), although `--data-dir` is taken
    after the command as well as before it: every one of its calls failed."""
    assert cli("--json", "snapshot", "load", snapshot()).code == 0
    run = cli("--json", "status")
    assert run.code == 0 and run.err == "", run.err
    assert _one_document(run.out)["cacheVersion"] == 1
    run = cli("--json", "identify", "2770000000017")
    assert run.code == 0 and _one_document(run.out)["status"] == "FOUND", run.err
    run = cli("--json", "checkout", receipt("r1"))
    assert run.code == 0 and _one_document(run.out)["receiptId"] == "r1", run.err
    run = cli("--json", "balance", "2770000000017", "--at", "2026-11-23T10:15:00+03:00")
    assert run.code == 0 and set(_one_document(run.out)) >= {"availablePoints", "pendingPoints"}
    # the same document as with --json after the command
    after = cli("identify", "2770000000017", "--json")
    assert cli("--json", "identify", "2770000000017").out == after.out
    # a scanned text that starts with a dash (§4) is still the text
    run = cli("--json", "identify", "-277-000-000-0017")
    assert run.code == 0 and _one_document(run.out)["status"] == "FOUND", run.err
    # another flag of the command (--explain) is taken before it too
    run = cli("--explain", "--json", "quote", receipt("q1"))
    assert run.code == 0 and "trace" in _one_document(run.out), run.err


def test_a_flag_the_command_does_not_have_is_still_refused(cli: CLI) -> None:
    """Only a flag of the command that follows is read before it: `--explain status` is no
    option of status (exit 2, one line, nothing on stdout), nor is an unknown word."""
    for argv in (("--explain", "status"), ("--frobnicate", "status"), ("--json", "run")):
        run = cli(*argv)
        assert run.code == 2 and run.out == "", argv
        assert run.err.count("\n") == 1 and "unrecognized arguments" in run.err, run.err


# ---------------------------------------------------------------- §9: the device id


def test_the_device_id_defaults_to_the_host_name(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9: the device id comes from the configuration (`device_id`,
    environment TILLPOINT_DEVICE_ID), default the host name: with neither, a sale is
    journaled under the host's name and `status` says so."""
    for key in [k for k in os.environ if k.startswith("TILLPOINT_")]:
        if key != "TILLPOINT_HTTP__LISTEN":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no tillpoint.toml of a working directory
    assert cli("snapshot", "load", snapshot()).code == 0
    host = socket.gethostname()
    run = cli("checkout", receipt("r1"), "--json")
    assert run.code == 0, run.err
    assert _one_document(run.out)["deviceId"] == host and json.loads(run.out)["seq"] == 1
    assert _one_document(cli("status", "--json").out)["deviceId"] == host
    # and that name is the ledger's from then on: another device id is refused in one line
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-9")
    run = cli("status", "--json")
    assert run.code == 2 and run.out == "" and run.err.count("\n") == 1
    assert f"'{host}'" in run.err and "'till-9'" in run.err, run.err
