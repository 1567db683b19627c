"""Review 51 (mut51b): rules of the snapshot's pull, verification and apply (the contract
§3, §9) that mutation testing of `sync/pull.py`, `sync/signing.py` and
`agent/snapshot_stream.py` found no test noticing broken.

A real hub over loopback mTLS serves the snapshots (its chunk stream altered where a test
says so, as a broken hub would); the till's cache and ledger are real SQLite files.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from tillpoint.sync.loopback import LoopbackHub, Till
from tillpoint.sync.pull import Puller, PullInterrupted, cache_version
from tillpoint.sync.signing import SignedSnapshot, manifest, sign
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI
from .test_sync_snapshots import RogueServicer, in_memory, serve_rogue_hub

DEVICE = "till-1"


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    yield from serve_rogue_hub(tmp_path / "hub")


@pytest.fixture()
def till(hub: LoopbackHub, tmp_path: Path) -> Iterator[Till]:
    till = hub.till(DEVICE, tmp_path / "till", start=False)
    yield till
    till.stop()


def puller(till: Till, **kw: object) -> Puller:
    return Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2.0, **kw)  # type: ignore[arg-type]


def rogue(hub: LoopbackHub) -> RogueServicer:
    servicer = hub.server.servicer
    assert isinstance(servicer, RogueServicer)
    return servicer


def cut_at(n: int) -> object:
    """A chunk hook that ends the stream before chunk `n` (as if the link broke there)."""
    return lambda i, chunk: None if i == n else chunk


def interrupted_at(hub: LoopbackHub, till: Till, n: int) -> Path:
    """A pull of version 1 broken after `n` chunks of 1 KiB: pull.json says n KiB."""
    rogue(hub).chunk_hook = cut_at(n)  # type: ignore[assignment]
    with pytest.raises(PullInterrupted):
        puller(till).pull()
    rogue(hub).chunk_hook = None
    meta = till.data_dir / "sync" / "pull.json"
    assert json.loads(meta.read_text())["offset"] == n * 1024
    return meta


# ---------------------------------------------------------------- pull.json's layout


def test_pull_json_records_layout_3_and_such_a_file_is_resumed(
    hub: LoopbackHub, till: Till
) -> None:
    """pull.json is read by the next release too (a till upgraded mid-download): its
    `layout` says what pull.part holds, 3 since the manifest signature (the payload
    alone). A layout-3 file written as this release writes it is resumed at its offset.
    (mut51b: `LAYOUT = 3` → 4 survived: nothing looked at the number written.)"""
    meta = interrupted_at(hub, till, 3)
    doc = json.loads(meta.read_text())
    assert doc["layout"] == 3
    assert set(doc) == {
        "version",
        "base_version",
        "total_size",
        "sha256",
        "signature",
        "issued_at",
        "expires_at",
        "offset",
        "layout",
    }
    result = puller(till).pull()
    assert (result.status, result.version, result.resumed_from) == ("APPLIED", 1, 3 * 1024)


def test_a_part_file_of_the_older_layout_is_discarded_and_the_pull_starts_from_0(
    hub: LoopbackHub, till: Till
) -> None:
    """docs/PROTOCOL.md: "a part file of the older layout is discarded". Layout 2's
    pull.part held the signed message (the v2 prefix, then the payload), so its offset
    counts other bytes: resumed, the till would append the rest of the payload after
    them and refuse the whole as corrupted. (mut51b: `LAYOUT = 3` → 2 survived.)"""
    meta = interrupted_at(hub, till, 3)
    doc = json.loads(meta.read_text())
    part = till.data_dir / "sync" / "pull.part"
    payload_so_far = part.read_bytes()
    prefix = b"tillpoint.snapshot.v2\0"
    part.write_bytes(prefix + payload_so_far)  # what a layout-2 till had on disk
    meta.write_text(json.dumps({**doc, "layout": 2, "offset": len(prefix) + 3 * 1024}))
    result = puller(till).pull()
    assert (result.status, result.version, result.resumed_from) == ("APPLIED", 1, 0)
    assert list(rogue(hub).stats.resumed_pulls) == []  # asked from byte 0
    assert not part.exists() and not meta.exists()


# ---------------------------------------------------------------- a changed bundle


def test_a_bundle_changed_under_the_same_version_starts_again_from_byte_0(
    hub: LoopbackHub, till: Till
) -> None:
    """The contract §9 (docs/PROTOCOL.md, Resume): "the header's SHA-256 tells the till it
    is the same bundle, else it starts from 0". A hub restored from a backup serves
    version 1 again with other bytes (signed with its key): the till's 3 KiB of the old
    version 1 are not resumed; the pull says the bundle changed, forgets pull.part, and
    the next pull downloads the new bundle from byte 0 and applies it.
    (mut51b: `_Partial.same_bundle`'s `and` → `or` survived: a bundle matching in its
    version alone was resumed, its old bytes and the new ones refused as corrupted.)"""
    interrupted_at(hub, till, 3)
    real = hub.server.builder.bundle
    key = hub.server.builder.key

    def rebuilt(version: int, base: int) -> SignedSnapshot:
        b = in_memory(real(version, base))
        # the same version, other content: one product's name changed (the same length)
        payload = b.payload.replace('Товар 7"'.encode(), 'Товар X"'.encode(), 1)
        assert payload != b.payload
        return replace(b, payload=payload, signature=sign(key, payload))

    hub.server.builder.bundle = rebuilt  # type: ignore[method-assign]
    with pytest.raises(PullInterrupted, match="the hub's bundle changed; starting over"):
        puller(till).pull()
    assert not (till.data_dir / "sync" / "pull.part").exists()
    assert cache_version(till.data_dir) == 0
    result = puller(till).pull()
    assert (result.status, result.version, result.resumed_from) == ("APPLIED", 1, 0)
    db = sqlite3.connect(till.data_dir / "cache.db")
    try:
        names = {r[0] for r in db.execute("SELECT name FROM products WHERE sku = '2000000000007'")}
    finally:
        db.close()
    assert names == {"Товар X"}


# ---------------------------------------------------------------- chunks of the stream


@pytest.mark.parametrize("change", ["another bundle's sha256", "a chunk skipped"])
def test_a_chunk_of_another_bundle_or_out_of_order_is_refused_mid_stream(
    hub: LoopbackHub, till: Till, change: str
) -> None:
    """docs/PROTOCOL.md: the till stops at once, keeps the old cache and records the
    refusal when "chunks of different bundles or out of order arrive". Chunk 4 names
    another SHA-256 (at the right offset), or comes at 5 KiB where 4 KiB was due (the
    same bundle): either is refused, not remembered (the stream, not the bundle), and
    nothing of it is kept. (mut51b: `not same_bundle or offset != received` → `and`
    survived: either alone passed; the other bundle's chunk was even applied.)"""

    def bad(i: int, chunk: pb.SnapshotChunk) -> pb.SnapshotChunk:
        if i == 4:
            if change == "a chunk skipped":
                chunk.offset += 1024
            else:
                chunk.sha256 = bytes(32)
        return chunk

    rogue(hub).chunk_hook = bad
    result = puller(till).pull()
    assert result.status == "REFUSED" and not result.remembered
    assert result.message == "snapshot refused: chunks of different bundles or out of order"
    assert cache_version(till.data_dir) == 0
    assert not (till.data_dir / "sync" / "pull.part").exists()
    rogue(hub).chunk_hook = None
    again = puller(till).pull()  # the same bundle served right: downloaded and taken
    assert (again.status, again.version, again.resumed_from) == ("APPLIED", 1, 0)


# ---------------------------------------------------------------- the signed manifest


def test_the_manifest_is_62_bytes_and_refuses_what_it_cannot_hold() -> None:
    """signing's module docstring: the signature covers `MANIFEST_PREFIX + size (8 bytes,
    big-endian) + sha256(payload)`, 62 bytes; `check_manifest_signature` says ValueError
    for a size or digest no manifest can hold (the pull's header check reads that as
    "the download decides"). Figures by hand: 22 + 8 + 32. (mut51b: `or` → `and` and
    `< 1 << 64` → `<=` survived: a 31-byte digest made a 61-byte manifest; 2**64 raised
    OverflowError, which the pull does not catch.)"""
    sha = bytes(range(32))
    m = manifest(258, sha)
    assert len(m) == 62
    assert m == b"tillpoint.snapshot.v3\x00" + b"\x00" * 6 + b"\x01\x02" + sha
    assert manifest(0, sha)[22:30] == bytes(8)
    assert manifest((1 << 64) - 1, sha)[22:30] == b"\xff" * 8
    for size, digest in ((10, sha[:31]), (10, sha + b"\x00"), (-1, sha), (1 << 64, sha)):
        with pytest.raises(ValueError, match="32-byte SHA-256 and a size below 2"):
            manifest(size, digest)


# ---------------------------------------------------------------- checkpoints


def test_pull_json_is_checkpointed_at_every_sync_every_bytes_exactly(
    hub: LoopbackHub, till: Till
) -> None:
    """docs/PROTOCOL.md: the part file is fsynced every 32 MiB or every second, whichever
    comes first, and only then is the offset recorded in pull.json. With 4 KiB and an
    hour, over 1 KiB chunks, pull.json says 0 until the 4th chunk is written, 4 KiB from
    it to the 7th, 8 KiB from the 8th: read after each chunk, in the till's own thread
    (the progress callback), so no race. (mut51b: `>= sync_every_bytes` → `>` survived:
    the checkpoint came a chunk late; the stream-side test reads pull.json from the hub's
    thread, which gRPC runs ahead of the till.)"""
    meta = till.data_dir / "sync" / "pull.json"
    seen: dict[int, int] = {}

    def progress(received: int, total: int) -> None:
        if received <= 9 * 1024:
            seen[received // 1024] = json.loads(meta.read_text())["offset"] // 1024

    rogue(hub).chunk_hook = cut_at(10)  # type: ignore[assignment]
    with pytest.raises(PullInterrupted):
        puller(till, sync_every_bytes=4 * 1024, sync_every_s=3600.0).pull(progress)
    assert seen == {1: 0, 2: 0, 3: 0, 4: 4, 5: 4, 6: 4, 7: 4, 8: 8, 9: 8}
    assert json.loads(meta.read_text())["offset"] == 10 * 1024  # made durable on the way out


# ---------------------------------------------------------------- the first chunk's wait


def test_the_first_chunk_may_take_longer_than_the_calls_timeout(
    hub: LoopbackHub, till: Till
) -> None:
    """docs/PROTOCOL.md: the hub may wait for a full snapshot being built before its first
    chunk ("well inside the till's 120 s first-chunk deadline"); only later chunks are
    held to the stall bound (`hub.call_timeout_ms` at least). A first chunk 3 s late, with
    a call timeout of 2 s, is waited for and the snapshot applied. (mut51b: `max(first,
    call timeout)` → `min` survived: the first chunk got 2 s and every such pull was
    cancelled as stalled.)"""
    import time

    calls: list[int] = []

    def late_first_chunk(where: str) -> None:
        if where == "pull.chunk":
            calls.append(1)
            if len(calls) == 1:
                time.sleep(3.0)

    hub.server.servicer.failpoint = late_first_chunk
    result = puller(till).pull()  # call_timeout_s=2.0, the first chunk's default 120 s
    assert (result.status, result.version) == ("APPLIED", 1)


# ---------------------------------------------------------------- a signed file's payload


def test_a_signed_file_of_several_blocks_reads_back_byte_for_byte(tmp_path: Path) -> None:
    """`write_signed_file` (`hub export`) writes the payload's base64 block by block, each
    block a multiple of 3 bytes so the pieces join into one base64 text. A payload of
    2 MiB + 1 byte (blocks of 768 KiB: two whole, the last one shorter) is written to a
    real file, read back by `from_file` (strict base64) and checked against its declared
    size and SHA-256. (mut51b: the block's 3 × 256 × 1024 → 2 × or 255 × survived: a
    block that is not a multiple of 3 put `=` padding mid-text, and every export above
    that size was refused as "not base64"; the tests' exports were a block or less.)"""
    from tillpoint.sync.signing import check_declared, declared, from_file, write_signed_file

    key = ed25519.Ed25519PrivateKey.generate()
    payload = bytes((i * 7 + i // 251) % 256 for i in range(2 * 1024 * 1024 + 1))
    bundle = SignedSnapshot(3, 0, "", "", payload, sign(key, payload))
    path = tmp_path / "export.json"
    with open(path, "w", encoding="utf-8") as out:
        write_signed_file(out, bundle)
    doc = json.loads(path.read_text(encoding="utf-8"))
    read, signature = from_file(doc)
    assert read == payload and signature == bundle.signature
    assert declared(doc) == (len(payload), hashlib.sha256(payload).digest())
    check_declared(read, *declared(doc))
    assert doc["payload"].count("=") == 0  # 2 MiB + 1 = 3 × 699,051: no padding at all


# ---------------------------------------------------------------- JSON Lines section lines


@pytest.mark.parametrize(
    ("marker", "delta"),
    [
        ('{"section": "cards", "rows": 2}', True),
        ('{"section": ""}', True),
        ('{"section": 7}', True),
        ('{"section": "cards", "rows": 2}', False),
    ],
    ids=["another key beside it", "an empty name", "a number", "a full snapshot's"],
)
def test_a_malformed_section_line_is_refused_naming_it_and_the_cache_is_unchanged(
    cli: CLI, tmp_path: Path, marker: str, delta: bool
) -> None:
    """agent/snapshot_stream.py: a section line is `{"section": NAME}`, a bad line is
    refused with its line number, the whole snapshot rolled back (the contract §3). A
    section line with a second key, an empty name or a number for the name is refused as
    such, exit 2, in one line, and the cache keeps version 1 (a delta, applied here; a
    full snapshot, read by the build's workers). (mut51b: the three tests'
    `or` → `and` survived: each of them alone passed; the number's then failed in
    `near_miss`, the empty name and the extra key were taken as the section.)"""
    from tillpoint.agent import cache as cache_mod
    from tillpoint.agent.service import Agent

    from .conftest import snapshot
    from .test_snapshot_stream import to_jsonl

    cli("snapshot", "load", snapshot())
    agent = Agent(tmp_path / "data", "till-1")
    before = cache_mod.dump(agent._cache)
    agent.close()
    doc: dict[str, Any] = (
        {
            "version": 2,
            "baseVersion": 1,
            "cards": [{"number": "2770000000099", "customerId": "c-1"}],
        }
        if delta
        else snapshot(version=2)
    )
    lines = to_jsonl(doc).splitlines()
    at = lines.index('{"section": "cards"}')
    lines[at] = marker
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = cli("snapshot", "load", str(path))
    assert run.code == 2, run.err
    assert run.err.strip().splitlines() == [
        f'tillpoint: snapshot line {at + 1}: a section line is {{"section": NAME}}'
        " (one of categories, products, customers, cards, offers, coupons)"
    ], run.err
    agent = Agent(tmp_path / "data", "till-1")
    try:
        assert cache_mod.dump(agent._cache) == before
    finally:
        agent.close()


# ---------------------------------------------------------------- which partial is resumed


def test_a_pull_json_whose_part_file_is_gone_starts_again_from_byte_0(
    hub: LoopbackHub, till: Till
) -> None:
    """pull.json is resumed only with its pull.part at least as long as it says: an
    operator who deleted pull.part (to free space) leaves a pull.json the next pull
    discards, downloading from byte 0. (mut51b: `_load_partial`'s `and` → `or` survived:
    one condition alone made it usable, and the resume opened the missing file,
    "the snapshot could not be written to …/pull.part: No such file or directory" at
    every pull.)"""
    meta = interrupted_at(hub, till, 3)
    (till.data_dir / "sync" / "pull.part").unlink()
    result = puller(till).pull()
    assert (result.status, result.version, result.resumed_from) == ("APPLIED", 1, 0)
    assert list(rogue(hub).stats.resumed_pulls) == []
    assert not meta.exists()


def test_a_partial_download_of_the_version_the_cache_reached_otherwise_is_discarded(
    hub: LoopbackHub, till: Till
) -> None:
    """docs/ARCHITECTURE.md: a partial download is resumed only for a version above the
    cache's, and ends with "a cache that moved past it". Version 1's pull is broken at
    3 KiB; the till then loads version 1 from the hub's signed export (`snapshot load`);
    the next pull finds nothing newer and deletes pull.part and pull.json rather than
    keep them for a version it holds. (mut51b: `version > current` → `>=` survived: the
    part file stayed on disk, up to a chain's 2 GiB, until a newer version came.)"""
    from tillpoint.sync import load_snapshot_file

    from .test_sync_snapshots import signed_file

    meta = interrupted_at(hub, till, 3)
    part = till.data_dir / "sync" / "pull.part"
    assert load_snapshot_file(till.agent, signed_file(hub.server.builder.bundle(1, 0))).version == 1
    result = puller(till).pull()
    assert (result.status, result.version) == ("UP_TO_DATE", 1)
    assert not part.exists() and not meta.exists()


def test_a_row_with_a_dot_in_its_text_is_taken_and_a_fraction_still_refused(
    cli: CLI, tmp_path: Path
) -> None:
    """A JSON Lines row is refused for a number with a fraction ("numbers with a fraction
    are not allowed": money and points are integers, the contract §2), and read with a
    cheap test first (a "." in the line) before the exact one. A product named "Сок 0.2 л"
    in a delta is a text with a dot, not a number: it is taken, and quoted by that name;
    `"priceMinor": 2.5`-like fractions are still refused. (mut51b: `"." in text and
    _has_float(text)` → `or` survived: every row with a dot anywhere was refused; no
    test's snapshot had one.)"""
    from .conftest import snapshot
    from .test_snapshot_stream import to_jsonl

    cli("snapshot", "load", snapshot())
    delta = {
        "version": 2,
        "baseVersion": 1,
        "products": [{"sku": "4601234000099", "name": "Сок 0.2 л", "category": "dairy"}],
    }
    path = tmp_path / "delta.jsonl"
    path.write_text(to_jsonl(dict(delta)), encoding="utf-8")
    run = cli("snapshot", "load", str(path))
    assert run.code == 0, run.err
    db = sqlite3.connect(tmp_path / "data" / "cache.db")
    try:
        row = db.execute("SELECT name FROM products WHERE sku = '4601234000099'").fetchone()
    finally:
        db.close()
    assert row == ("Сок 0.2 л",)
    fraction = {
        "version": 3,
        "baseVersion": 2,
        "customers": [{"id": "c-9", "tier": "base", "balancePoints": 1.5}],
    }
    path.write_text(to_jsonl(fraction), encoding="utf-8")
    run = cli("snapshot", "load", str(path))
    assert run.code == 2 and "numbers with a fraction are not allowed" in run.err, run.err


# ---------------------------------------------------------------- the header's bounds


def test_disk_space_is_judged_at_exactly_the_rest_plus_the_size_plus_64_mib(
    hub: LoopbackHub, till: Till
) -> None:
    """docs/PROTOCOL.md: less free space than the rest of the download plus the
    snapshot's size again plus 64 MiB is a retryable "not enough disk space". Figures by
    hand for a bundle of S bytes: from byte 0, S + S + 64 MiB is enough and one byte less
    is not; resumed at 3 KiB, (S − 3,072) + S + 64 MiB is enough. (mut51b: the sum's signs
    and `free < need` → `<=` survived: the one test gave 1,000 bytes.)"""
    from tillpoint.sync.pull import NoSpace

    size = hub.server.builder.bundle(1, 0).size
    mib64 = 64 * 1024 * 1024
    with pytest.raises(NoSpace, match="not enough disk space"):
        puller(till, free_space=lambda _: 2 * size + mib64 - 1).pull()
    assert not (till.data_dir / "sync" / "pull.part").exists()
    interrupted_at(hub, till, 3)
    with pytest.raises(NoSpace, match="not enough disk space"):
        puller(till, free_space=lambda _: (size - 3072) + size + mib64 - 1).pull()
    result = puller(till, free_space=lambda _: (size - 3072) + size + mib64).pull()
    assert (result.status, result.resumed_from) == ("APPLIED", 3072)
    hub.publish()
    size2 = hub.server.builder.bundle(2, 1).size
    result = puller(till, free_space=lambda _: 2 * size2 + mib64).pull()
    assert (result.status, result.version, result.resumed_from) == ("APPLIED", 2, 0)


def test_a_snapshot_refused_for_the_tills_limit_is_taken_once_the_limit_allows_it(
    hub: LoopbackHub, till: Till
) -> None:
    """`hub.max_snapshot_mib`: a snapshot *above* the limit is refused before download,
    naming both figures; one of exactly the limit's bytes is taken. The limit is this
    till's setting, not what the bundle is: once it is raised (by an operator who read
    that refusal, and restarted the service), the same bundle is downloaded and applied.
    Until review 51 the refusal was remembered like a bad signature and the bundle
    refused from memory, in words naming the old limit, until the hub published another
    version (found by mut51b pinning the boundary of `total_size > max_bytes`, whose `>=`
    no test held: this test failed on the code). Not downloaded meanwhile either way: the
    header decides."""
    size = hub.server.builder.bundle(1, 0).size
    refused = puller(till, max_bytes=size - 1).pull()
    assert refused.status == "REFUSED"
    assert refused.message == (
        f"snapshot refused: {size} bytes is above this till's limit of {size - 1}"
    )
    again = puller(till, max_bytes=size - 2).pull()  # a lower limit: said with its figure
    assert again.message == (
        f"snapshot refused: {size} bytes is above this till's limit of {size - 2}"
    )
    assert cache_version(till.data_dir) == 0
    assert not (till.data_dir / "sync" / "pull.part").exists()
    result = puller(till, max_bytes=size).pull()
    assert (result.status, result.version, result.size) == ("APPLIED", 1, size)


def test_a_till_as_new_as_the_hub_is_up_to_date_without_a_warning(
    hub: LoopbackHub, till: Till, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing newer on the hub: UP_TO_DATE, with no message and no pull error in
    `status`. Only a hub *older* than the cache (restored from a backup) is warned of, with
    the `--min-version` to publish at. (mut51b: `hub_version < current` → `<=` survived:
    every poll of an up-to-date till warned "the hub's newest version 1 is older than this
    till's cache 1".)"""
    import logging

    from tillpoint.agent.ledger import open_ledger
    from tillpoint.sync import sync_status

    assert puller(till).pull().status == "APPLIED"
    with caplog.at_level(logging.WARNING, logger="tillpoint.sync"):
        again = puller(till).pull()
    assert (again.status, again.version, again.message) == ("UP_TO_DATE", 1, "")
    assert not [r for r in caplog.records if "older than" in r.getMessage()]
    conn = open_ledger(till.data_dir)
    try:
        assert sync_status(conn)["lastError"] == ""
    finally:
        conn.close()


# ---------------------------------------------------------------- a signed file's declared figures


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("size", "1234", "size is not a byte count (damaged)"),
        ("size", -1, "size is not a byte count (damaged)"),
        ("size", True, "size is not a byte count (damaged)"),
        ("size", 0, "longer than declared"),
        ("sha256", "zz" * 32, "sha256 is not a SHA-256 in hex (damaged)"),
        ("sha256", "ab" * 31, "sha256 is not a SHA-256 in hex (damaged)"),
        ("sha256", 7, "sha256 is not a SHA-256 in hex (damaged)"),
        ("sha256", "ab" * 32, "its checksum does not match (corrupted)"),
    ],
)
def test_a_signed_files_declared_size_and_sha256_are_checked_on_a_standalone_till(
    tmp_path: Path, field: str, value: object, words: str
) -> None:
    """signing's module docstring: a signed file's `size` and `sha256` are informative,
    but a malformed one is a damaged file, and one that does not match the payload a
    truncated or corrupted file, even on a till with no hub key to check the signature
    with (`snapshot load`, review 42). Left out, they are not checked; the file loads.
    (mut51b: `type(size) is not int or size < 0` → `and` and `<` → `<=` survived: no
    test gave a malformed figure; a text size then failed as an internal TypeError.)"""
    from datetime import UTC, datetime

    from tillpoint.agent.errors import SnapshotRefused
    from tillpoint.agent.service import Agent
    from tillpoint.sync import load_snapshot_file
    from tillpoint.sync.loopback import sample_master_data

    plain = {"version": 5, "issuedAt": datetime.now(UTC).isoformat(), **sample_master_data()}
    payload = json.dumps(plain, ensure_ascii=False).encode()
    key = ed25519.Ed25519PrivateKey.generate()
    doc = SignedSnapshot(5, 0, "", "", payload, sign(key, payload)).to_file()
    agent = Agent(tmp_path / "alone", "till-x")
    try:
        with pytest.raises(SnapshotRefused) as refused:
            load_snapshot_file(agent, {**doc, field: value})
        assert words in str(refused.value)
        assert "\n" not in str(refused.value)
        assert cache_version(tmp_path / "alone") == 0
        left_out = {k: v for k, v in doc.items() if k not in ("size", "sha256")}
        assert load_snapshot_file(agent, left_out).version == 5
    finally:
        agent.close()


# ---------------------------------------------------------------- what `status` keeps


def test_an_applied_snapshot_clears_the_last_refused_one_from_status(
    hub: LoopbackHub, till: Till
) -> None:
    """`status.lastRefusedSnapshot` names a bundle refused for what it is (here: signed
    with another key) while the till keeps its old version; the pull that applies a newer
    bundle forgets it at once, with the pull error. (mut51b: `status == "APPLIED"` → `!=`
    survived: the refusal stayed in `status` beside the applied version until the next
    poll found nothing newer.)"""
    from tillpoint.agent.ledger import open_ledger
    from tillpoint.sync import sync_status

    real = hub.server.builder.bundle
    other_key = ed25519.Ed25519PrivateKey.generate()

    def wrongly_signed(version: int, base: int) -> SignedSnapshot:
        b = in_memory(real(version, base))
        return replace(b, signature=sign(other_key, b.payload))

    hub.server.builder.bundle = wrongly_signed  # type: ignore[method-assign]
    refused = puller(till).pull()
    assert refused.status == "REFUSED" and "signature" in refused.message

    def status() -> dict[str, Any]:
        conn = open_ledger(till.data_dir)
        try:
            return sync_status(conn)
        finally:
            conn.close()

    assert status()["lastRefusedSnapshot"]["version"] == 1
    del hub.server.builder.bundle  # the real builder again
    hub.publish()
    applied = puller(till).pull()
    assert (applied.status, applied.version) == ("APPLIED", 2)
    after = status()
    assert "lastRefusedSnapshot" not in after and after["lastError"] == "", after


def test_a_json_lines_row_with_a_field_set_to_null_is_that_field_left_out(
    cli: CLI, tmp_path: Path
) -> None:
    """The contract §3 and §10: a field set to `null` is the field left out (proto3 JSON);
    a JSON Lines row reads so too, validated again without its nulls. A delta's customer
    row with `"controlGroups": null` and `"balancePoints": null` (which the row's model
    itself refuses as null) loads as the customer without them. (mut51b: `if "null" in
    text` negated survived: such a row was refused, "customers: controlGroups: …"; no
    JSON Lines test had such a null.)"""
    from .conftest import snapshot
    from .test_snapshot_stream import to_jsonl

    cli("snapshot", "load", snapshot())
    row = {
        "id": "c-9",
        "tier": "base",
        "birthday": None,
        "controlGroups": None,
        "balancePoints": None,
    }
    path = tmp_path / "delta.jsonl"
    path.write_text(to_jsonl({"version": 2, "baseVersion": 1, "customers": [row]}), "utf-8")
    assert '"birthday": null' in path.read_text(encoding="utf-8")
    run = cli("snapshot", "load", str(path))
    assert run.code == 0, run.err
    db = sqlite3.connect(tmp_path / "data" / "cache.db")
    try:
        found = db.execute("SELECT count(*) FROM customers WHERE id = 'c-9'").fetchone()
    finally:
        db.close()
    assert found == (1,)


# ---------------------------------------------------------------- a delta on another base


def _wrong_base(hub: LoopbackHub) -> list[int]:
    """The hub answers a till at version 1 with the delta 2 → 3 (a hub's bug, a store
    restored under it), as review 25's slow test makes it; a full snapshot when asked."""
    builder = hub.server.builder
    choose = builder.choose
    asked: list[int] = []

    def wrong(have: int, want: int) -> Any:
        asked.append(have)
        chosen = choose(have, want)
        if chosen is not None and chosen[1] != 0:
            return chosen[0], chosen[0].version - 1
        return chosen

    builder.choose = wrong  # type: ignore[method-assign]
    return asked


def test_a_delta_on_another_base_from_a_hub_that_names_no_base_time_asks_for_a_full_one(
    hub: LoopbackHub, till: Till
) -> None:
    """The contract §3: a delta whose `baseVersion` is not the cache's is refused from its
    header and the till asks for a full snapshot at once (have_version 0). Review 25's slow
    test has a hub that names the base's `issuedAt`, which catches it a second way; a hub
    that names none (an older hub: `base_issued_at` empty) is caught by the version alone.
    (mut51b: `base not in (0, current) or (full and base != 0)` → `and` survived: such a
    delta was downloaded and refused at its apply, remembered, the till left on version 1.)"""
    assert puller(till).pull().version == 1
    hub.publish()
    hub.publish()

    def no_base_time(i: int, chunk: pb.SnapshotChunk) -> pb.SnapshotChunk:
        chunk.base_issued_at = ""
        return chunk

    rogue(hub).chunk_hook = no_base_time
    asked = _wrong_base(hub)
    result = puller(till).pull()
    assert (result.status, result.version, result.base_version) == ("APPLIED", 3, 0)
    assert asked == [1, 0]


def test_a_deltas_partial_download_is_not_resumed_as_the_full_snapshot_asked_for(
    hub: LoopbackHub, till: Till
) -> None:
    """A till at version 1 has 3 KiB of the delta 1 → 3 on disk when its hub starts to
    answer it with a delta on another base: it asks for a full snapshot, from byte 0 (a
    delta's bytes are no part of it), and applies it in that same pull. (mut51b: `_pull`'s
    `partial.base_version != 0` → `== 0` survived: the delta's offset was sent with the
    full request, the hub resumed the full snapshot there, and the pull ended "the hub's
    bundle changed; starting over".)"""
    assert puller(till).pull().version == 1
    from tillpoint.sync.loopback import import_doc

    products = [{"sku": f"3{i:012d}", "name": f"Новый {i}", "category": "dairy"} for i in range(60)]
    import_doc(hub.store, {"products": products})
    hub.publish()  # 2: the delta 1 → 3 is several chunks of 1 KiB
    hub.publish()  # 3
    interrupted = puller(till)
    rogue(hub).chunk_hook = cut_at(1)  # type: ignore[assignment]
    with pytest.raises(PullInterrupted):
        interrupted.pull()
    rogue(hub).chunk_hook = None
    doc = json.loads((till.data_dir / "sync" / "pull.json").read_text())
    assert (doc["base_version"], doc["offset"]) == (1, 1024)
    _wrong_base(hub)
    result = puller(till).pull()
    assert (result.status, result.base_version, result.resumed_from) == ("APPLIED", 0, 0)


def test_a_stream_that_ends_before_its_first_chunk_is_retried_and_keeps_the_partial(
    hub: LoopbackHub, till: Till
) -> None:
    """A stream that ends before any chunk (a hub cut off mid-answer) is a broken stream:
    `PullInterrupted`, retried with the backoff. With nothing on disk it says the hub sent
    nothing; with 3 KiB of the bundle on disk it says where the download stands, keeps
    them, and the next pull resumes there. (mut51b: `_complete`'s `partial is not None` →
    `is None` survived: with nothing on disk the pull failed as an internal error,
    "'NoneType' object has no attribute 'offset'".)"""
    rogue(hub).chunk_hook = cut_at(0)  # type: ignore[assignment]
    with pytest.raises(PullInterrupted, match="the hub ended the stream without sending"):
        puller(till).pull()
    interrupted_at(hub, till, 3)
    size = hub.server.builder.bundle(1, 0).size
    rogue(hub).chunk_hook = cut_at(0)  # type: ignore[assignment]
    with pytest.raises(PullInterrupted, match=f"ended at byte 3072 of {size}; will resume"):
        puller(till).pull()
    rogue(hub).chunk_hook = None
    result = puller(till).pull()
    assert (result.status, result.resumed_from) == ("APPLIED", 3072)


def test_chunks_of_exactly_the_protocols_1_mib_are_taken(hub: LoopbackHub, till: Till) -> None:
    """docs/PROTOCOL.md: chunks of up to 1 MiB (`SnapshotChunk.data`); a chunk *over* it
    is refused. A hub serving its default 1 MiB chunks sends exactly 1 MiB in each but the
    last: a snapshot of 1 MiB and 1 KiB (its rows, then blank lines, which JSON Lines
    ignores; signed with the hub's key) is taken in two chunks. (mut51b: `len(data) >
    MAX_CHUNK` → `>=` survived: every snapshot over 1 MiB from a real hub was refused;
    the tests' hubs send 1 KiB chunks.)"""
    real = hub.server.builder.bundle
    key = hub.server.builder.key

    def padded(version: int, base: int) -> SignedSnapshot:
        b = in_memory(real(version, base))
        payload = b.payload + b"\n" * (1024 * 1024 + 1024 - len(b.payload))
        return replace(b, payload=payload, signature=sign(key, payload))

    hub.server.builder.bundle = padded  # type: ignore[method-assign]
    servicer = rogue(hub)
    servicer.config = replace(servicer.config, chunk_size=1024 * 1024)
    sizes: list[int] = []

    def seen(i: int, chunk: pb.SnapshotChunk) -> pb.SnapshotChunk:
        sizes.append(len(chunk.data))
        return chunk

    servicer.chunk_hook = seen
    result = puller(till).pull()
    assert (result.status, result.version) == ("APPLIED", 1), result.message
    assert sizes == [1024 * 1024, 1024]


def test_a_bundle_refused_under_one_hub_key_is_checked_afresh_under_the_next(
    hub: LoopbackHub, till: Till
) -> None:
    """docs/PROTOCOL.md: a refused bundle is recognised from its header and not downloaded
    again "while the till holds the same hub key"; one installed since with another
    snapshot key checks it afresh. A bundle signed with a key the till does not hold is
    refused; the till's `snapshot.pub` is then that key (the hub's key replaced, the till
    given the new one): the same bundle, same version, SHA-256 and signature, is
    downloaded, verifies and is applied. (mut51b: `not raw or key != key_id` → `and`
    survived this session's sets: the bundle was refused from memory under the new key.)"""
    from cryptography.hazmat.primitives import serialization

    real = hub.server.builder.bundle
    new_key = ed25519.Ed25519PrivateKey.generate()

    def signed_with_new_key(version: int, base: int) -> SignedSnapshot:
        b = in_memory(real(version, base))
        return replace(b, signature=sign(new_key, b.payload))

    hub.server.builder.bundle = signed_with_new_key  # type: ignore[method-assign]
    refused = puller(till).pull()
    assert refused.status == "REFUSED" and "signature" in refused.message
    pem = new_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    till.link.enrollment.snapshot_pub.write_bytes(pem)
    result = puller(till).pull()
    assert (result.status, result.version, result.sha256) == ("APPLIED", 1, refused.sha256)
