"""Review 25c: a second look at rev25b (the till keeps which hub acknowledged what).

Real parts only: a reference hub (its store, gRPC over loopback mTLS), an enrolled till
with its SQLite cache and ledger, the CLI in-process.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tillpoint.agent.results import receipt_from_json
from tillpoint.sync import pki
from tillpoint.sync.loopback import LoopbackHub, Till, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import Puller, cache_version

from .test_review25_rev25b import CARD, drain


def sell_two_and_drain(till: Till, data_dir: Path) -> None:
    """The till takes the hub's snapshot, sells r-1 and r-2, and the hub acknowledges them."""
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    wait_for(lambda: cache_version(data_dir) >= 1)
    for n in (1, 2):
        till.agent.checkout(receipt_from_json(receipt(f"r-{n}", CARD)))
    drain(data_dir, "till-1", till.link)


def kept(data_dir: Path) -> list[int]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return [int(r[0]) for r in conn.execute("SELECT seq FROM sync_sent ORDER BY seq")]
    finally:
        conn.close()


def test_a_renewed_bundle_of_the_same_hub_keeps_what_it_acknowledged(
    tmp_path: Path, cli: Any
) -> None:
    """docs/CONTRACT.md §9 (loses nothing): the same hub is the same CA certificate,
    however its PEM text is written. A renewed bundle whose CA text differed only in
    line endings (the hub's ca.pem copied to a second hub server through a Windows share)
    was taken for another hub: `sync install` refused it while a sale waited in the
    outbox (a till whose certificate is about to expire could not renew), and once
    drained forgot the hub's acknowledgements, which the hub restored from a backup
    then never had again."""
    from tillpoint.sync.client import HubLink

    data_dir = tmp_path / "data"
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", data_dir, start=False)
    link = None
    try:
        sell_two_and_drain(till, data_dir)
        assert kept(data_dir) == [1, 2]
        till.agent.checkout(receipt_from_json(receipt("r-3", CARD)))  # waits in the outbox
        first = till.link.hub_id
        till.stop()

        identity = pki.issue_device(hub.dir.keys, "till-1")
        hub.store.enroll("till-1", identity.fingerprint, datetime.now(UTC))
        bundle = pki.make_bundle(hub.dir.keys, identity, hub.address)
        bundle["caCertificate"] = bundle["caCertificate"].replace("\n", "\r\n")
        run = cli("sync", "install", bundle)
        assert run.code == 0, run.err
        assert kept(data_dir) == [1, 2]

        link = HubLink(hub.address, pki.load_enrollment(data_dir))
        assert link.hub_id == first
        drain(data_dir, "till-1", link)
        assert hub.store.applied_through("till-1") == 3
        assert kept(data_dir) == [1, 2, 3]
    finally:
        if link is not None:
            link.close()
        hub.stop()


def acked_hub(data_dir: Path) -> str | None:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        row = conn.execute("SELECT value FROM sync_state WHERE key = 'acked_hub'").fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def test_a_long_lived_till_of_one_hub_keeps_what_it_acknowledged(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9: what the hub acknowledged is kept for that hub. A ledger of the
    release before (no 'acked_hub') forgets nothing at its first answer; nor does a hub
    restarted with a renewed server certificate (`hub init --renew-server`: the same CA)
    or a till restarted (its link built again from the same ca.pem)."""
    from tillpoint.sync.client import HubLink

    data_dir = tmp_path / "data"
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", data_dir, start=False)
    link = None
    try:
        sell_two_and_drain(till, data_dir)
        assert acked_hub(data_dir) == till.link.hub_id
        conn = sqlite3.connect(data_dir / "ledger.db")
        with conn:
            conn.execute("DELETE FROM sync_state WHERE key = 'acked_hub'")  # the release before
        conn.close()
        till.agent.checkout(receipt_from_json(receipt("r-3", CARD)))
        drain(data_dir, "till-1", till.link)
        assert kept(data_dir) == [1, 2, 3]
        assert acked_hub(data_dir) == till.link.hub_id

        hub.stop()
        hub.dir.keys.renew_server()
        hub.restart()
        link = HubLink(hub.address, pki.load_enrollment(data_dir))  # the till restarted
        assert link.hub_id == till.link.hub_id
        till.agent.checkout(receipt_from_json(receipt("r-4", CARD)))
        drain(data_dir, "till-1", link)
        assert hub.store.applied_through("till-1") == 4
        assert kept(data_dir) == [1, 2, 3, 4]
        assert [e.seq for e in hub.store.ledger("till-1")] == [1, 2, 3, 4]
    finally:
        if link is not None:
            link.close()
        till.stop()
        hub.stop()
