"""Review 36, rev36f: spec36e's one-moment status and pull marker, spec36f's non-UTF-8
command lines and rev36d's holds' time line read again, with real parts.

Faults found (each shown failing first):
- a command line word that is not UTF-8 (a POS script in windows-1251) that argparse
  echoes in its error (`tillpoint sync receipts <bytes>`, `tillpoint status <bytes>`:
  "unrecognized arguments: ...") said "internal error: UnicodeEncodeError", exit 1: the
  error stream, reconfigured to UTF-8, was strict (CONTRACT §10: bad input, exit 2, one
  line);
- a pull whose apply failed after it wrote its `pull_landing` marker (the disk, the
  agent killed) left the marker, and a snapshot of that version loaded afterwards from a
  file (`snapshot load`) made `status` show the failed pull's start as the last sync
  (CONTRACT §10: `lastPullAt`, a sync that never landed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("tillpoint"))  # the console script, a real process
EXAMPLE_SNAPSHOT = REPO / "examples" / "snapshot.json"
NOT_UTF8 = os.fsdecode(b"\xcf\xf0\xe8")  # "При" in windows-1251, surrogate-escaped


def _tillpoint(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TILLPOINT_LOG_LEVEL": "warning"}
    env.pop("TILLPOINT_DEVICE_ID", None)
    return subprocess.run(
        [EXE, "--data-dir", str(data_dir), *args],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def loaded_dir(tmp_path: Path) -> Path:
    data = tmp_path / "till"
    done = _tillpoint(data, "snapshot", "load", str(EXAMPLE_SNAPSHOT))
    assert done.returncode == 0, done.stderr
    return data


@pytest.mark.parametrize(
    "words",
    [
        ("sync", "receipts", NOT_UTF8),
        ("status", NOT_UTF8),
        ("balance", "2000000000015", NOT_UTF8),
        ("print", "queue", NOT_UTF8),
    ],
    ids=["sync-receipts", "status", "balance", "print-queue"],
)
def test_s10_a_non_utf8_word_left_over_on_the_command_line_is_bad_input_in_one_line(
    loaded_dir: Path, words: tuple[str, ...]
) -> None:
    """CONTRACT §10: a word the command does not take, in a script's other bytes, is bad
    input: exit 2 and one line naming it, never "internal error" (exit 1)."""
    done = _tillpoint(loaded_dir, *words)
    err = done.stderr.decode("utf-8")  # the error line itself is UTF-8
    assert done.returncode == 2, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "unrecognized arguments" in err or "\\udccf" in err, err


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    data = tmp_path / "hub"
    for words in (("hub", "init"), ("hub", "import", str(EXAMPLE_SNAPSHOT))):
        done = _tillpoint(data, *words)
        assert done.returncode == 0, done.stderr
    return data


@pytest.mark.parametrize(
    "words",
    [
        ("hub", "receipts", "--device", NOT_UTF8),
        ("hub", "receipts", "--device", "till-1", "--receipt", NOT_UTF8),
        ("hub", "balance", NOT_UTF8),
        ("hub", "revoke", NOT_UTF8),
        ("hub", "export", NOT_UTF8),
        ("hub", "set-aside", "--device", NOT_UTF8),
        ("hub", "enroll", NOT_UTF8),
    ],
    ids=["receipts", "receipts-receipt", "balance", "revoke", "export", "set-aside", "enroll"],
)
def test_s10_a_hub_command_given_a_device_card_or_receipt_not_in_utf8_is_bad_input(
    hub_dir: Path, words: tuple[str, ...]
) -> None:
    """CONTRACT §10: a device id, customer or receiptId in a script's other bytes given to
    a `hub` command is bad input (exit 2, one line), not "internal error:
    UnicodeEncodeError" (exit 1) from the hub's store; nothing is changed."""
    before = sorted(p.name for p in hub_dir.rglob("*"))
    done = _tillpoint(hub_dir, *words)
    err = done.stderr.decode("utf-8")
    assert done.returncode == 2, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in hub_dir.rglob("*")) == before
