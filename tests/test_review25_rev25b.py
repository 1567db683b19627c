"""Review 25b: a second look at sync25 (sync after a hub restore) and hub25.

Real parts only: reference hubs (their stores, gRPC over loopback mTLS), an enrolled till
with its SQLite cache and ledger, the CLI in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync import pki
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import Puller, cache_version
from tillpoint.sync.push import Pusher

CARD = "2770000000017"


def drain(data_dir: Path, device_id: str, link: Any) -> None:
    pusher = Pusher(data_dir, device_id, link, call_timeout_s=2)
    try:
        pusher.drain()
    finally:
        pusher.close()


def test_a_till_enrolled_with_another_hub_does_not_send_it_the_old_hubs_sales(
    tmp_path: Path, cli: Any
) -> None:
    """docs/CONTRACT.md §9 (exactly once in effect): the sales the old hub acknowledged are
    kept 35 days to be sent again to *that* hub if it is restored from a backup. A till
    enrolled with another hub (`sync install` of its bundle, once the outbox drained)
    took the new hub's mark for the device (0) for the old hub's going back and sent it
    every sale of the last 35 days, which the new hub counted in its live balances a
    second time (its customers were imported with the old hub's balances). The same for
    a sale a running agent pushed to the old hub before it was restarted."""
    from tillpoint.sync.client import HubLink

    data_dir = tmp_path / "data"
    # two hubs, each its own store (the till side is what is checked here)
    old = LoopbackHub(tmp_path / "old", data=sample_master_data(), store=str(tmp_path / "o.db"))
    new = LoopbackHub(tmp_path / "new", data=sample_master_data(), store=str(tmp_path / "n.db"))
    till = old.till("till-1", data_dir, start=False)
    link = None
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        wait_for(lambda: cache_version(data_dir) >= 1)
        for n in (1, 2, 3):
            till.agent.checkout(receipt_from_json(receipt(f"r-{n}", CARD)))
        drain(data_dir, "till-1", till.link)
        assert old.store.applied_through("till-1") == 3

        identity = pki.issue_device(new.dir.keys, "till-1")
        from datetime import UTC, datetime

        new.store.enroll("till-1", identity.fingerprint, datetime.now(UTC))
        bundle = pki.make_bundle(new.dir.keys, identity, new.address)
        run = cli("sync", "install", bundle)
        assert run.code == 0, run.err
        # a running agent keeps its enrolment until restarted: a sale meanwhile goes to the
        # old hub, which acknowledges it
        till.agent.checkout(receipt_from_json(receipt("r-4", CARD)))
        drain(data_dir, "till-1", till.link)
        assert old.store.applied_through("till-1") == 4
        till.stop()

        link = HubLink(new.address, pki.load_enrollment(data_dir))
        drain(data_dir, "till-1", link)
        assert new.store.ledger("till-1") == []  # nothing of the old hub's sent here
        run = cli("status", "--json")
        assert run.code == 0, run.err
    finally:
        if link is not None:
            link.close()
        old.stop()
        new.stop()


def test_a_hub_restored_from_a_backup_gets_the_discarded_seqs_again(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9 (loses nothing), docs/HUB.md (Backups): a hub restored from a
    backup is sent again what it acknowledged since, so that the device's mark goes on.
    A seq the till discarded (`reset --force`), which the hub had set aside, was not kept
    with the rest: the restored hub never had it again, its mark for the device stopped
    below it for good, and none of the till's later sales reached a published balance."""
    import shutil
    import sqlite3

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    if hub.dir.on_postgres:
        hub.stop()
        pytest.skip("the backup here is a copy of the SQLite store")
    data_dir = tmp_path / "till-1"
    till = hub.till("till-1", data_dir, start=False)

    def pull() -> None:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()

    try:
        pull()
        wait_for(lambda: cache_version(data_dir) >= 1)
        till.agent.checkout(receipt_from_json(receipt("r-1", CARD)))
        drain(data_dir, "till-1", till.link)
        backup = tmp_path / "hub-backup.db"
        source, target = sqlite3.connect(hub.dir.sqlite_path), sqlite3.connect(backup)
        try:
            source.backup(target)  # seq 1
        finally:
            source.close()
            target.close()
        till.agent.checkout(receipt_from_json(receipt("r-2", CARD)))  # seq 2, never sent
        assert till.agent.reset(force=True).discarded == 1
        pull()
        till.agent.checkout(receipt_from_json(receipt("r-3", CARD)))
        drain(data_dir, "till-1", till.link)
        assert hub.store.applied_through("till-1") == 3
        hub.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{hub.dir.sqlite_path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(backup, hub.dir.sqlite_path)
        hub.restart()
        assert hub.store.applied_through("till-1") == 1
        till.agent.checkout(receipt_from_json(receipt("r-4", CARD)))
        drain(data_dir, "till-1", till.link)
        drain(data_dir, "till-1", till.link)  # what the answer showed lost
        assert hub.store.applied_through("till-1") == 4
        assert [(e.seq, e.ref_id) for e in hub.store.ledger("till-1")] == [
            (1, "r-1"),
            (3, "r-3"),
            (4, "r-4"),
        ]
        assert till.agent.status().to_json()["outboxDepth"] == 0
    finally:
        till.stop()
        hub.stop()


def test_the_35_days_kept_do_not_slow_every_push(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9: the acknowledged transactions kept 35 days (`sync_sent`) are
    pruned at each push's answer, inside the write transaction every checkout waits for.
    The prune walked every kept row of the device (its primary key, device then seq),
    not the rows past 35 days: 60,000 kept sales (a busy till's 35 days) held the ledger
    about 200 ms a push batch. It now reads only the rows it deletes."""
    from tillpoint.agent import ledger

    conn = ledger.open_ledger(tmp_path)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO sync_sent VALUES ('till-1', ?, '{}', '2026-12-01T10:00:00Z', NULL,"
            " '2026-12-01T10:00:00Z')",
            [(seq,) for seq in range(1, 20_001)],
        )
        conn.execute("COMMIT")
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(count, 1000)
        ledger.settle_push(
            conn,
            "till-1",
            [],
            [],
            {},
            {},
            "2026-12-03T10:00:00Z",
            0,
            kept_since="2026-10-29T10:00:00Z",
        )
        conn.set_progress_handler(None, 0)
        # a walk over the 20,000 rows is some 200 thousand steps; the kept rows stay
        assert steps[0] < 20, f"{steps[0]} thousand SQLite steps to prune nothing"
        assert conn.execute("SELECT count(*) FROM sync_sent").fetchone()[0] == 20_000
    finally:
        conn.close()
