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

import os
import shutil
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


@pytest.fixture(scope="module")
def loaded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A till's data directory with the example snapshot loaded, made once a module by a
    real `snapshot load`; each test gets its own copy (`loaded_dir`)."""
    data = tmp_path_factory.mktemp("rev36f") / "till"
    done = _tillpoint(data, "snapshot", "load", str(EXAMPLE_SNAPSHOT))
    assert done.returncode == 0, done.stderr
    return data


@pytest.fixture
def loaded_dir(loaded_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(loaded_template, tmp_path / "till"))


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


@pytest.fixture(scope="module")
def hub_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub directory made once a module by a real `hub init` and `hub import`; each test
    gets its own copy (`hub_dir`)."""
    data = tmp_path_factory.mktemp("rev36f") / "hub"
    for words in (("hub", "init"), ("hub", "import", str(EXAMPLE_SNAPSHOT))):
        done = _tillpoint(data, *words)
        assert done.returncode == 0, done.stderr
    return data


@pytest.fixture
def hub_dir(hub_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hub_template, tmp_path / "hub"))


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


def test_s10_a_snapshot_loaded_from_a_file_after_a_pull_died_applying_it_is_no_sync(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 `status`: `lastPullAt` is when the till last synced with its hub. A
    pull writes its `pull_landing` marker ({version, at}) just before it applies; killed
    there (SIGKILL, the disk), the cache keeps its version and the marker stays. The same
    snapshot then loaded from a file (`hub export` carried on a stick, `snapshot load`)
    is no sync: status said the dead pull's start was the last sync."""
    from tillpoint.agent.ledger import PULL_LANDING
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data
    from tillpoint.sync.pull import Puller

    hub = LoopbackHub(tmp_path / "hubs" / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        puller = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5)
        assert puller.pull().status == "APPLIED"
        synced = till.agent.status().to_json()["lastPullAt"]
        assert synced
        assert hub.publish() == 2
        # what a pull of version 2 leaves when it dies after its marker, before its apply
        # commits (the ledger's row as `Puller._apply` writes it)
        puller._record({PULL_LANDING: puller._landing(2)})
        bundle = tmp_path / "till-1.snapshot"
        done = _tillpoint(tmp_path / "hubs", "hub", "export", "till-1", "--out", str(bundle))
        assert done.returncode == 0, done.stderr
        env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_LOG_LEVEL": "warning"}
        done = subprocess.run(
            [EXE, "--data-dir", str(tmp_path / "till"), "snapshot", "load", str(bundle)],
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        st = till.agent.status().to_json()
        assert st["cacheVersion"] == 2
        assert st["lastPullAt"] == synced, "a pull that never landed is not the last sync"
    finally:
        till.stop()
        hub.stop()


@pytest.mark.parametrize("command", [("config", "check"), ("run",)], ids=["config-check", "run"])
def test_s10_a_hub_address_not_in_utf8_is_a_configuration_error(
    loaded_dir: Path, command: tuple[str, ...]
) -> None:
    """CONTRACT §10 exit codes: a configuration a unit's environment gives in a script's
    other bytes (`TILLPOINT_HUB__ADDRESS`) is the operator's to mend: exit 2, one line
    naming the setting. It was "internal error: UnicodeEncodeError", exit 1, at `config
    check` and at `run`'s start (a unit restarting it for ever)."""
    env = {**os.environ, "TILLPOINT_HUB__ADDRESS": "hub-" + NOT_UTF8 + ":8062"}
    done = subprocess.run(
        [EXE, "--data-dir", str(loaded_dir), *command],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    err = done.stderr.decode("utf-8")
    assert done.returncode == 2, err
    assert "internal error" not in err and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tillpoint: config") and "hub.address" in last, err
