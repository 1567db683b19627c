"""Session 56 (lead): docs/ARCHITECTURE.md's "Modules" names every module there is.

Seven modules (among them `sync/signing.py`, `sync/hub_store.py`, `agent/privileges.py`)
were named nowhere in ARCHITECTURE.md, which the guide asks to keep true: a new
developer looking for where a snapshot's signature is checked found no pointer. The
section now lists every module of `agent/`, `sync/` and `printer/` with one line; these
tests fail when a module is added, removed or renamed and the list does not follow, and
when the list's *core* marks and tests/test_layers.py's core disagree.
"""

from __future__ import annotations

import logging
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tillpoint.agent.errors import StorageError
from tillpoint.sync.hub_server import HubConfig, HubDir, HubServer
from tillpoint.sync.hub_store import Publication
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import REPO
from .test_layers import CORE
from .test_review56_mut56c import LONG_TTL_S, ReadsFailing

ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
PACKAGES = ("agent", "sync", "printer")


def _section() -> str:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    start = text.index("\n## Modules\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _listed() -> dict[str, dict[str, str]]:
    """Each package's table: module file name -> its line's description."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in _section().splitlines():
        heading = re.match(r"\*\*(\w+)/\*\*", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
        row = re.match(r"\| `([\w.]+\.py)` \| (.+) \|$", line)
        if row and current is not None:
            assert row.group(1) not in current, f"{row.group(1)} listed twice"
            current[row.group(1)] = row.group(2)
    return tables


def _on_disk(package: str) -> set[str]:
    return {
        p.name
        for p in (REPO / package).glob("*.py")
        if p.name != "__init__.py" or package == "sync"  # sync's holds what others use
    }


def test_every_module_is_listed_and_every_listed_one_exists() -> None:
    tables = _listed()
    assert sorted(tables) == sorted(PACKAGES)
    for package in PACKAGES:
        listed = set(tables[package])
        missing, gone = _on_disk(package) - listed, listed - _on_disk(package)
        assert not missing, f"{package}/ modules not in ARCHITECTURE.md's Modules: {missing}"
        assert not gone, f"ARCHITECTURE.md's Modules names {package}/ modules not there: {gone}"


def test_the_core_marks_are_the_layers_tests_core() -> None:
    marked = {name[:-3] for name, line in _listed()["agent"].items() if "*core*" in line}
    assert marked == set(CORE)


def test_the_virtual_printer_tells_an_uncut_job_as_maybe_a_cutterless_printers() -> None:
    """`python -m tillpoint.printer.virtual` headed a job without a cut "INTERRUPTED": a
    person trying a till configured `cut = false` against it (PRINTING.md's manual test)
    saw every coupon called interrupted. The bytes cannot tell the two apart; the
    heading now names both. A real listener, a real TCP job, the real process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillpoint.printer.virtual", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        port = int(first.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"\x1b@Coupon line\n\n\n")  # no cut, then the till closes
        heading = proc.stdout.readline()
        assert (
            heading == "===== job 1 (not cut: a printer without a cutter, or interrupted) =====\n"
        )
        assert "Coupon line" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_every_root_handler_the_escpos_import_adds_is_removed() -> None:
    """`_escpos.load` removed the root logger's new handlers while iterating over that
    same list, so of two new ones the second stayed (mut56b's note): python-escpos 3.1
    adds one (`basicConfig`), a release adding two would have left a handler writing
    every log record of `tillpoint run` to standard error a second time. A fresh
    interpreter imports the real python-escpos, with two handlers added after it."""
    code = """
import logging
from tillpoint.printer import _escpos
real = _escpos._import_all
def import_and_add_two():
    real()
    logging.getLogger().addHandler(logging.StreamHandler())
    logging.getLogger().addHandler(logging.StreamHandler())
_escpos._import_all = import_and_add_two
_escpos.load()
print(len(logging.getLogger().handlers))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "0", (done.stdout, done.stderr)


class FailingReads(ReadsFailing):
    """mut56c's store whose reads of the latest version fail while `failing` is set,
    failing with the error given, and counting the reads (the watcher's rounds)."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error = error
        self.reads = 0

    def latest(self) -> Publication | None:
        self.reads += 1
        if self.failing.is_set():
            raise self.error
        return super().latest()


@pytest.mark.parametrize(
    ("error", "level"),
    [
        (sqlite3.OperationalError("disk I/O error"), logging.ERROR),
        (StorageError("the hub's database is unavailable"), logging.WARNING),
    ],
    ids=["sqlite", "named"],
)
def test_a_watcher_failing_round_after_round_says_it_once_and_says_when_it_works_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, level: int
) -> None:
    """mut56c's watcher, which now outlives any failed round, logged the failure at every
    round: twice a second (`watch_interval_s` 0.5) for as long as a PostgreSQL outage or
    a failing disk lasted. Now the words once at their level, the same words again at
    DEBUG (as the till's sync logs a retry), and one INFO line when a round works again."""
    hub_dir = HubDir(tmp_path / "hub", "")
    hub_dir.init()
    store = FailingReads(hub_dir.sqlite_path, error)
    import_doc(store, sample_master_data())
    store.publish(datetime.now(UTC), LONG_TTL_S)
    server = HubServer(
        hub_dir, HubConfig(heartbeat_s=1.0, watch_interval_s=0.02, publish_every_s=0), store=store
    )
    caplog.set_level(logging.DEBUG, logger="tillpoint.hub")
    server.start()
    try:
        store.failing.set()
        failed_from = store.reads
        wait_for(lambda: store.reads >= failed_from + 10, timeout=30)
        store.failing.clear()
        wait_for(lambda: "hub watcher: working again" in caplog.text, timeout=30)
    finally:
        server.stop(grace=0)
        store.close()
    said = [r for r in caplog.records if r.getMessage().startswith("hub watcher:")]
    loud = [r for r in said if r.levelno > logging.INFO]
    assert [r.levelno for r in loud] == [level], [r.getMessage() for r in loud]
    assert str(error) in loud[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in said) >= 8  # the rounds that failed again
    again = [r for r in said if r.levelno == logging.INFO]
    assert len(again) == 1 and str(error) in again[0].getMessage()


@pytest.mark.parametrize("table", ["publications", ""], ids=["publications", "every-table"])
def test_a_read_the_hub_s_sqlite_store_fails_is_unavailable_to_the_till_not_unknown(
    tmp_path: Path, table: str
) -> None:
    """mut56c's note: the SQLite hub store's writes turn SQLite's errors into a
    StorageError, its reads did not. A read that failed (a disk's I/O error, a lock held
    past the busy timeout, a damaged page) reached the till as UNKNOWN "Exception calling
    application: …", as if the hub had answered, where the same failure of the
    PostgreSQL store is UNAVAILABLE (review 20: `a_lost_database_is_unavailable_not_unknown`)
    and the till prices OFFLINE. The reads fail in SQLite itself: an authorizer on the
    store's real connections denies reading `table` (every table: the device's check at
    the call's start; `publications`: inside the pull)."""
    from .test_hub_security import TIMEOUT, identity, stub

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    failing = threading.Event()

    def authorize(action: int, name: str | None, *_: object) -> int:
        denied = action == sqlite3.SQLITE_READ and (not table or name == table)
        return sqlite3.SQLITE_DENY if failing.is_set() and denied else sqlite3.SQLITE_OK

    store = hub.server.store
    opened = store._conn

    def guarded() -> sqlite3.Connection:
        conn = opened()
        conn.set_authorizer(authorize)  # set again each time: SQLite re-prepares then
        return conn

    store._conn = guarded
    hub.start()
    try:
        me = identity(hub, "till-1", enroll=True)
        s = stub(hub, key=me.key_pem, cert=me.cert_pem)
        ask = pb.PullSnapshotRequest(device_id="till-1")
        assert list(s.PullSnapshot(ask, timeout=TIMEOUT))  # the store reads
        failing.set()
        with pytest.raises(grpc.RpcError) as err:
            list(s.PullSnapshot(ask, timeout=TIMEOUT))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "hub database" in (err.value.details() or ""), err.value.details()
        assert "is prohibited" in (err.value.details() or ""), err.value.details()
    finally:
        failing.clear()
        hub.stop()
