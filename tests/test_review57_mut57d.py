"""Review 57 (mut57d): mutation testing of the reference hub's snapshot files
(`sync/hub_server.py`: `write_payload`, `FileSnapshot`, `_name`, `snapshot_payload`;
docs/CONTRACT.md §3, §9, docs/PROTOCOL.md's snapshot files). What the tests already
there did not hold, pinned here (docs/DECISIONS.md, "Review 57 (mut57d)"): the payload is
written in batches of 8192 lines, and no test had a snapshot of more than a batch, so
nothing held that a file of many batches, with a section ending exactly at a batch's end,
is the same bytes as one written at once, whole, and signed as it is on disk; and that a
hub under the packaged service's umask (0077) writes its snapshot files for its owner
alone (they hold every customer's row), none widened by a mode of its own.
Real parts: the reference hub (`LoopbackHub`: its SQLite store, its keys, a gRPC server
on a free loopback port), the snapshot file the hub built on disk, a real till pulling
it over mTLS and applying it to its own SQLite cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tillpoint.sync.hub_server import snapshot_payload
from tillpoint.sync.hub_store import SECTIONS
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.sync.pull import Puller
from tillpoint.sync.signing import manifest

# `write_payload` writes its lines in batches of this many (its `8192`).
BATCH = 8192


def data_whose_customers_end_a_batch() -> dict[str, object]:
    """The sample data with customers added until the last customer row is a batch's
    last line (each section's rows follow one `{"section": ...}` line; the header is
    written alone): the cards' section line then opens the next batch."""
    doc = sample_master_data()
    lines_before = sum(1 + len(doc[s]) for s in ("products", "categories")) + 1  # type: ignore[arg-type]
    customers: list[dict[str, object]] = doc["customers"]  # type: ignore[assignment]
    for n in range(BATCH - lines_before - len(customers)):
        customers.append({"id": f"x-{n:05d}", "firstName": "Гость", "tier": "base"})
    assert lines_before + len(customers) == BATCH
    return doc


@pytest.fixture
def big_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tmp_path / "hub", data=data_whose_customers_end_a_batch())
    yield hub
    hub.stop()


def test_a_snapshot_of_many_batches_is_the_bytes_signed_whole_and_applied(
    big_hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/PROTOCOL.md: the file holds exactly the payload, the same state always gives
    the same bytes, and its signature covers its size and SHA-256 computed while it was
    written. With more rows than one batch and a section ending at a batch's end: the
    hub's file is the payload written in memory, byte for byte; its size, hash and
    signature are the file's; every line is one JSON object, the header first, each
    section's line once and in order before its rows, no line empty or cut; and a real
    till pulls it, verifies it and holds every row."""
    builder = big_hub.server.builder
    wait_for(lambda: builder.full_ready(1), timeout=60)
    snap = builder.bundle(1, 0)
    on_disk = snap.path.read_bytes()
    _, in_memory = snapshot_payload(big_hub.store, 1, 0)
    assert on_disk == in_memory
    assert snap.size == len(on_disk)
    assert snap.sha256 == hashlib.sha256(on_disk).digest()
    builder._public.verify(snap.signature, manifest(snap.size, snap.sha256))

    assert on_disk.endswith(b"\n")
    lines = [json.loads(line) for line in on_disk.decode().split("\n")[:-1]]
    assert lines[0]["format"] == "tillpoint.snapshot/jsonl" and lines[0]["version"] == 1
    sections = [(i, line["section"]) for i, line in enumerate(lines) if "section" in line]
    assert [s for _, s in sections] == [s for s in SECTIONS if s not in ("offers", "coupons")]
    customers_at = dict((s, i) for i, s in sections)["customers"]
    cards_at = dict((s, i) for i, s in sections)["cards"]
    assert cards_at - customers_at - 1 == 8184  # the customers' rows
    assert cards_at == BATCH + 1  # after the header and a whole batch

    till = big_hub.till("till-1", tmp_path / "till", start=False)
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=30.0).pull()
        conn = sqlite3.connect(till.data_dir / "cache.db")
        try:
            assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 8184
            assert conn.execute("SELECT count(*) FROM cards").fetchone()[0] == 2
        finally:
            conn.close()
    finally:
        till.stop()


def test_a_hub_under_the_services_umask_writes_its_snapshot_files_for_its_owner_alone(
    tmp_path: Path,
) -> None:
    """A snapshot file holds every customer's row (names, birthdays, balances), as the
    hub's database does. packaging/tillpoint-hub.service runs the hub with UMask=0077 in
    a 0700 state directory: the full snapshot, a delta, their records and the locks are
    then 0600, none given a wider mode of the hub's own (as `write_whole`'s 0644 default
    would be if it were a chmod)."""
    old = os.umask(0o077)
    try:
        hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
        try:
            builder = hub.server.builder
            wait_for(lambda: builder.full_ready(1), timeout=60)
            builder.bundle(1, 0)
            assert hub.publish() == 2
            builder.bundle(2, 1)
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode) for p in builder.dir.iterdir() if p.is_file()
            }
        finally:
            hub.stop()
    finally:
        os.umask(old)
    assert {"v0000000001-full.snap", "v0000000002-from-0000000001.json"} <= set(modes)
    assert {name for name, mode in modes.items() if mode != 0o600} == set()
