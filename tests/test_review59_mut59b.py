"""Review 59 (mut59b): mutation testing of `sync/cli.py`, the command line of the reference
hub (`tillpoint hub ...`) and of the till's sync side (`tillpoint sync ...`).

The rules the tool's surviving mutants showed untested, pinned on real parts: a real hub
directory made by `hub init`/`hub import`, the hub served in this process on a random
127.0.0.1 port (`LoopbackHub`, the server `hub serve` runs), real SQLite ledgers, and
`tillpoint.agent.cli.main` as the CLI runs it (`tests.test_sync_cli.run`). And the one
product fault found: `hub receipts` and `sync receipts` told a `--since` or `--limit`
past the protocol's int64 as "internal error" (exit 1), now exit 2 in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data

from tests.test_sync_cli import run

INT64_MAX = 2**63 - 1


def _hub_with_a_till(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LoopbackHub, Path]:
    """A served hub with the sample data and till-1 enrolled with it by `hub enroll` and
    `sync install` (its address in the bundle)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    till = tmp_path / "till"
    hub.enroll("till-1", till)
    return hub, till


def _sell_offline(till: Path, receipt_id: str = "r1") -> None:
    """A sale journalled in the till's ledger (its outbox), as the agent makes it."""
    from tillpoint.agent.service import Agent

    agent = Agent(till, "till-1")
    try:
        agent.checkout(receipt_from_json(receipt(receipt_id, "2770000000017")))
    finally:
        agent.close()


# ---------------------------------------------------------------- the fault: receipts' flags


@pytest.mark.parametrize("flag", ["--since", "--limit"])
def test_hub_receipts_refuses_a_since_or_limit_past_int64_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """It was "internal error: OverflowError: Python int too large to convert to SQLite
    INTEGER", exit 1 (a script retries on 1)."""
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    assert run(capsys, "hub", "enroll", "till-1", "--hub-dir", hub_dir)[0] == 0
    argv = ["hub", "receipts", "--device", "till-1", "--hub-dir", hub_dir]
    for bad in (INT64_MAX + 1, 10**20, -1):
        code, out, err = run(capsys, *argv, flag, str(bad))
        assert (code, out) == (2, ""), err
        assert err == (f"tillpoint: {flag} must be 0 or more and at most {INT64_MAX} (got {bad})\n")
    code, out, err = run(capsys, *argv, flag, str(INT64_MAX))
    assert code == 0, err
    assert "0 transaction(s) of till-1 stored" in out


@pytest.mark.parametrize("flag", ["--since", "--limit"])
def test_sync_receipts_refuses_a_since_or_limit_past_int64_before_asking_the_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """It was "internal error: ValueError: Value out of range: …", exit 1."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        argv = ["sync", "receipts", "--data-dir", str(till)]
        for bad in (INT64_MAX + 1, -1):
            code, out, err = run(capsys, *argv, flag, str(bad))
            assert (code, out) == (2, ""), err
            assert err == (
                f"tillpoint: {flag} must be 0 or more and at most {INT64_MAX} (got {bad})\n"
            )
        code, out, err = run(capsys, *argv, flag, str(INT64_MAX))
        assert code == 0, err
        assert "of till-1 stored" in out
    finally:
        hub.stop()
