"""Review 54 (mut54a): mutation testing of the reference hub's gRPC service
(`sync/hub_server.py`: who may call, what is refused with which status, Subscribe, the
holds at the hub, PullSnapshot's chunks, ListTransactions; docs/CONTRACT.md §7, §8, §9,
§11). Each test here pins a rule a surviving mutant broke unseen (docs/DECISIONS.md,
"Review 54 (mut54a)"). Real parts: the reference hub (`LoopbackHub`: its SQLite store, or
the PostgreSQL one of `--hub-store=postgresql`, its keys, a gRPC server on a free
loopback port) and real mTLS clients with enrolled device certificates.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .test_hub_security import identity, stub

TIMEOUT = 10.0


def enrolled(hub: LoopbackHub, device: str = "till-1") -> pb_grpc.HubStub:
    """A real mTLS client of `hub` with the certificate on record for `device`."""
    me = identity(hub, device, enroll=True)
    return stub(hub, key=me.key_pem, cert=me.cert_pem)


def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value.code(), str(err.value.details())


# ------------------------------------------------------------------ who may call


def test_a_certificate_of_the_hubs_ca_that_names_no_device_is_unauthenticated(
    hub: LoopbackHub,
) -> None:
    """The contract §9: every call is authenticated by the device its certificate names.
    A certificate the hub's CA signed with no common name (made by hand with the CA's
    key, not by `hub enroll`) passes TLS and names no device: UNAUTHENTICATED "the
    certificate names no device", never UNKNOWN (a parse that failed on it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(hub.dir.keys.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(hub.dir.keys.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "a shop")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    s = stub(
        hub,
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert=cert.public_bytes(serialization.Encoding.PEM),
    )
    request = pb.PullSnapshotRequest(device_id="till-1")
    assert refusal(lambda: list(s.PullSnapshot(request, timeout=TIMEOUT))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "the certificate names no device",
    )


# ------------------------------------------------------------------ Subscribe


@pytest.fixture
def quiet_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    """A hub whose heartbeat (30 s) is far longer than any wait below."""
    config = HubConfig(heartbeat_s=30.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    yield hub
    hub.stop()


def test_a_new_version_reaches_a_subscribed_till_at_once_not_at_the_next_heartbeat(
    quiet_hub: LoopbackHub,
) -> None:
    """docs/PROTOCOL.md (Subscribe), the contract §7: a notification is sent at once when
    a version is published, and every `heartbeat_s` besides. A stream that heard of it
    only at its heartbeat (the wait for a newer version ending at the heartbeat alone)
    left every till on the old prices for up to 15 s; the tests' heartbeat of 1 s hid it.
    Here the heartbeat is 30 s and the stream's deadline 15 s: only "at once" passes."""
    s = enrolled(quiet_hub)
    stream = s.Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=15.0)
    first = next(stream)
    assert (first.latest_version, first.heartbeat_s) == (1, 30)
    time.sleep(0.3)  # the stream waits for a newer version now
    version = quiet_hub.publish()
    assert version == 2
    news = next(stream)
    assert news.latest_version == 2
    assert news.issued_at == quiet_hub.store.publication(2).issued_at.isoformat()
    stream.cancel()


def test_a_heartbeat_under_a_second_is_announced_as_one_second(tmp_path: Path) -> None:
    """The `heartbeat_s` a notification carries is whole seconds, at least 1 (a till
    counts three silent heartbeats before it opens the stream again: 0 would give it no
    time at all)."""
    config = HubConfig(heartbeat_s=0.2, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    try:
        stream = enrolled(hub).Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=5.0)
        notes = [next(stream) for _ in range(3)]
        assert [(n.latest_version, n.heartbeat_s) for n in notes] == [(1, 1)] * 3
        stream.cancel()
    finally:
        hub.stop()


def test_each_new_version_is_told_once_and_the_stream_waits_again_after_it(
    quiet_hub: LoopbackHub,
) -> None:
    """After a notification the stream waits for a version above the one it told: a
    stream that took the told version for 0 again sent it over and over without a pause
    (the till read each one as a heartbeat, the hub spent a thread and the link on them),
    and the next version came behind them."""
    s = enrolled(quiet_hub)
    stream = s.Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=15.0)
    assert next(stream).latest_version == 1
    told = []
    for _ in range(2):
        quiet_hub.publish()
        told.append(next(stream).latest_version)
    assert told == [2, 3]
    stream.cancel()


def test_a_stream_ends_at_its_longest_time_not_at_the_next_heartbeat(tmp_path: Path) -> None:
    """docs/PROTOCOL.md: the hub ends a Subscribe stream after `stream_max_s` (300 s; the
    till opens another), and its last wait is cut to that end: a wait of a whole heartbeat
    past it kept the stream up to 15 s longer, and a loop that went on while the call was
    active never ended it at all (the notification repeated without a pause). Here the
    stream lasts 1 s and the heartbeat is 30 s: the version at once, once more at the
    end, and the stream closes with OK."""
    config = HubConfig(heartbeat_s=30.0, stream_max_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    try:
        stream = enrolled(hub).Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=15.0)
        notes = []
        for note in stream:
            notes.append(note.latest_version)
            assert len(notes) <= 2, notes[:10]
        assert notes == [1, 1]
        assert stream.code() == grpc.StatusCode.OK
    finally:
        hub.stop()


def test_a_hub_with_no_version_yet_says_0_and_tells_its_first_at_once(tmp_path: Path) -> None:
    """A hub before its first `hub publish`: the stream says version 0 with no issuedAt
    and a pull gets one empty chunk of version 0 (never -1 or 1, which a till would
    take for a version); then version 1 is told as soon as it is published."""
    config = HubConfig(heartbeat_s=30.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), publish=False)
    try:
        stream = enrolled(hub).Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=15.0)
        first = next(stream)
        assert (first.latest_version, first.issued_at, first.heartbeat_s) == (0, "", 30)
        # and a pull: nothing newer, one empty chunk of version 0
        nothing = list(
            enrolled(hub, "till-2").PullSnapshot(
                pb.PullSnapshotRequest(device_id="till-2"), timeout=TIMEOUT
            )
        )
        assert [(c.version, c.total_size, c.data) for c in nothing] == [(0, 0, b"")]
        time.sleep(0.3)  # the stream waits for a version now
        assert hub.publish() == 1
        news = next(stream)
        assert (news.latest_version, news.issued_at) == (
            1,
            hub.store.publication(1).issued_at.isoformat(),
        )
        stream.cancel()
    finally:
        hub.stop()


# ------------------------------------------------------------------ the ids' lengths


def test_each_id_is_taken_up_to_its_length_and_refused_one_character_over(
    hub: LoopbackHub,
) -> None:
    """The contract §10 (the longest ids a till sends): a receiptId and a batchId of 128
    characters, a customerId of 200, reach the store; one character more is
    INVALID_ARGUMENT at the hub's door, naming the field and its limit (the tests had
    only 100,000 characters: the bound one off either way went unseen)."""
    s = enrolled(hub)

    def release(receipt_id: str) -> bool:
        request = pb.ReleaseRedemptionRequest(device_id="till-1", receipt_id=receipt_id)
        return bool(s.ReleaseRedemption(request, timeout=TIMEOUT).released)

    def authorise(receipt_id: str, customer_id: str) -> pb.AuthorizeRedemptionReply:
        request = pb.AuthorizeRedemptionRequest(
            device_id="till-1",
            receipt_id=receipt_id,
            customer_id=customer_id,
            points=50,
            at=datetime.now(UTC).isoformat(),
        )
        return s.AuthorizeRedemption(request, timeout=TIMEOUT)

    def push(batch_id: str) -> pb.PushAck:
        return s.PushTransactions(
            pb.TransactionBatch(device_id="till-1", batch_id=batch_id), timeout=TIMEOUT
        )

    assert release("r" * 128) is False  # no hold of that receipt: nothing released
    assert authorise("r" * 128, "c-1").authorized_points == 50
    assert authorise("q" * 128, "c" * 200).authorized_points == 0  # no such customer
    assert push("b" * 128).accepted == 0
    for call, words in [
        (lambda: release("r" * 129), "ReleaseRedemption: receiptId is too long (at most 128"),
        (lambda: authorise("r" * 129, "c-1"), "receiptId is too long (at most 128"),
        (lambda: authorise("p" * 128, "c" * 201), "customerId is too long (at most 200"),
        (lambda: push("b" * 129), "PushTransactions: batchId is too long (at most 128"),
    ]:
        code, details = refusal(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert words in details


# ------------------------------------------------------------------ the holds at the hub

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def still_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    """The sample hub on a clock that stands still at NOW: a hold's expiry is NOW + its
    time to live, to the second."""
    hub = LoopbackHub(  # its snapshot valid for years: no test may depend on today's date
        tmp_path / "hub", data=sample_master_data(), clock=lambda: NOW, snapshot_ttl_s=3e8
    )
    yield hub
    hub.stop()


def hold(
    s: pb_grpc.HubStub,
    receipt_id: str,
    *,
    points: int = 50,
    ttl_s: int = 0,
    codes: tuple[str, ...] = (),
) -> pb.AuthorizeRedemptionReply:
    request = pb.AuthorizeRedemptionRequest(
        device_id="till-1",
        receipt_id=receipt_id,
        customer_id="c-1",
        points=points,
        at=NOW.isoformat(),
        hold_ttl_seconds=ttl_s,
        coupon_codes=list(codes),
    )
    return s.AuthorizeRedemption(request, timeout=TIMEOUT)


def test_a_hold_at_the_hub_lives_as_long_as_the_till_asks_up_to_a_day(
    still_hub: LoopbackHub,
) -> None:
    """docs/PROTOCOL.md (AuthorizeRedemption), the contract §11: a till asks for holds of
    its program's `holdTtlSeconds` (plus its margin); the hub holds that long, at most a
    day; a till that does not say (0, an earlier release) gets the hub's `--hold-ttl`
    (900 s by default). No test read a grant's `expires_at`: the day's cap dropped, or
    the till's time to live ignored (a hold that outlived a cancelled receipt's till by
    13 minutes, or one that ended under its receipt), went unseen."""
    s = enrolled(still_hub)
    for receipt_id, asked, held in [
        ("r-1", 1860, 1860),  # the default program's 1800 s and the till's 60 s margin
        ("r-2", 1, 1),
        ("r-3", 0, 900),  # not said: the hub's own
        ("r-4", 86_400, 86_400),
        ("r-5", 86_401, 86_400),  # at most a day
        ("r-6", 10 * 86_400, 86_400),
    ]:
        reply = hold(s, receipt_id, ttl_s=asked)
        assert reply.authorized_points == 50
        expires = datetime.fromisoformat(reply.expires_at)
        assert expires - NOW == timedelta(seconds=held), receipt_id


def test_an_authorisation_takes_a_hundred_codes_of_128_characters_and_no_more(
    still_hub: LoopbackHub,
) -> None:
    """The contract §13: an AuthorizeRedemption carries at most 100 coupon codes, each 1
    to 128 characters as it is looked up; past either bound it is INVALID_ARGUMENT, one
    line, and nothing is held. Up to them every code is held for the receipt: another
    receipt asking for one of them is told it is used. (The tests sent a handful of short
    codes: both bounds one off went unseen.)"""
    s = enrolled(still_hub)
    codes = tuple(f"{i:03d}" + "K" * 125 for i in range(100))
    reply = hold(s, "r-1", points=0, codes=codes)
    assert (reply.authorized_points, list(reply.used_coupons)) == (0, [])
    assert list(hold(s, "r-2", points=0, codes=(codes[99], "FREE")).used_coupons) == [codes[99]]
    for given in [
        (*codes, "EXTRA"),  # 101 codes
        ("K" * 129,),
        ("ß" * 65,),  # 130 once upper-cased ("SS")
        (" - ",),  # nothing left once blanks and dashes are dropped
    ]:
        code, details = refusal(lambda given=given: hold(s, "r-3", points=0, codes=given))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "couponCodes: at most 100 codes of 1 to 128 characters"
    assert list(hold(s, "r-4", points=0, codes=("EXTRA",)).used_coupons) == []  # not held


def test_an_authorisation_needs_its_receipt_its_customer_and_points_of_0_or_more(
    still_hub: LoopbackHub,
) -> None:
    """docs/PROTOCOL.md: AuthorizeRedemption requires a receiptId, a customerId and
    points >= 0 (0: a receipt that redeems only coupons), and an
    offlineRedeemLimitPoints, when said, of 0 or more; each one missing alone is
    INVALID_ARGUMENT (the tests sent all three wrong at once, or points of -2^63: a
    check of all three together, or of points below -1, went unseen). A ShrinkRedemption
    the same for its receiptId and points."""
    s = enrolled(still_hub)
    required = "receiptId, customerId and points >= 0 are required"
    for receipt_id, customer_id, points in [("", "c-1", 5), ("r-1", "", 5), ("r-1", "c-1", -1)]:
        request = pb.AuthorizeRedemptionRequest(
            device_id="till-1",
            receipt_id=receipt_id,
            customer_id=customer_id,
            points=points,
            at=NOW.isoformat(),
        )
        assert refusal(lambda r=request: s.AuthorizeRedemption(r, timeout=TIMEOUT)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            required,
        )
    limited = pb.AuthorizeRedemptionRequest(
        device_id="till-1",
        receipt_id="r-1",
        customer_id="c-1",
        points=0,
        at=NOW.isoformat(),
        offline_redeem_limit_points=-1,
    )
    assert refusal(lambda: s.AuthorizeRedemption(limited, timeout=TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "offlineRedeemLimitPoints must be >= 0",
    )
    limited.offline_redeem_limit_points = 0
    reply = s.AuthorizeRedemption(limited, timeout=TIMEOUT)
    assert (reply.authorized_points, reply.live_balance) == (0, 1200)
    assert hold(s, "r-2", points=0).authorized_points == 0
    for receipt_id, points in [("", 0), ("r-2", -1)]:
        shrink = pb.ShrinkRedemptionRequest(
            device_id="till-1", receipt_id=receipt_id, points=points
        )
        assert refusal(lambda r=shrink: s.ShrinkRedemption(r, timeout=TIMEOUT)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "receiptId and points >= 0 are required",
        )


def _gate_builds(builder: Any, gate: threading.Event) -> None:
    """Hold the builder's next builds until `gate` is set (as test_sync_snapshots does);
    a pull waits up to 30 s for a full snapshot, 0.2 s for the newest."""
    real = builder._build

    def held(version: int, base: int) -> Any:
        gate.wait(60)
        return real(version, base)

    builder._build = held
    builder.full_wait_s, builder.newest_wait_s = 30.0, 0.2


def test_while_the_newest_full_snapshot_is_built_a_new_till_gets_the_one_already_built(
    tmp_path: Path,
) -> None:
    """docs/PROTOCOL.md (PullSnapshot), `SnapshotBuilder.choose`: a till with no cache
    while the newest version's full snapshot is still being built (minutes at chain
    scale) waits a little for it (`newest_wait_s`, 5 s), then gets the newest full one
    already built (it takes a delta to the newest next), not ABORTED "being built" after
    the whole `full_wait_s` (60 s). The build is held by a gate on `_build` (as in
    test_sync_snapshots), the rest is the real hub: waiting the whole minute for the
    newest, or skipping the one built, went unseen (the one test of the wait has no
    older full snapshot)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    builder = hub.server.builder
    gate = threading.Event()
    try:
        wait_for(lambda: builder.full_ready(1), timeout=30)
        assert hub.publish() == 2
        wait_for(lambda: builder.full_ready(2), timeout=30)
        _gate_builds(builder, gate)
        assert hub.publish() == 3
        s = enrolled(hub)
        chunks = pulled(s)  # a deadline of 30 s: 0.2 s is waited here
        assert {(c.version, c.base_version) for c in chunks} == {(2, 0)}  # the newest built
        assert builder.full_ready(3) is None  # the newest one is still being built
        gate.set()
        assert {(c.version, c.base_version) for c in pulled(s)} == {(3, 0)}
    finally:
        gate.set()
        hub.stop()


def test_a_pull_waiting_for_the_only_full_snapshot_gets_it_once_built(tmp_path: Path) -> None:
    """`SnapshotBuilder.choose`: with no full snapshot built at all, a pull waits up to
    `full_wait_s` for the newest one and is served it as soon as it is built; ABORTED
    ("being built": the till retries after its backoff) only when the wait runs out. A
    wait that never saw the file built answered ABORTED at its end every time (the one
    test of the wait released the build only after its ABORTED)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    builder = hub.server.builder
    gate = threading.Event()
    try:
        wait_for(lambda: builder.full_ready(1), timeout=30)
        _gate_builds(builder, gate)
        with builder._cond:
            builder._ready.clear()  # as if nothing were built yet
        assert hub.publish() == 2
        opener = threading.Timer(1.0, gate.set)
        opener.start()
        chunks = pulled(enrolled(hub))  # a deadline of 30 s
        assert {(c.version, c.base_version) for c in chunks} == {(2, 0)}
        opener.join()
    finally:
        gate.set()
        hub.stop()


def test_the_hub_keeps_the_files_of_its_newest_full_snapshots_and_the_deltas_above_them(
    tmp_path: Path,
) -> None:
    """docs/PROTOCOL.md (the snapshot files): the files of the newest `keep_versions`
    full snapshots (3; 2 here) and the deltas above the oldest of them are kept, older
    ones deleted once a newer full snapshot is built. No test looked at the directory: a
    prune that found no full snapshot kept every file for good (a chain's disk filled a
    version at a time), and one that compared a delta's base for its version deleted the
    full snapshots being served."""
    config = HubConfig(keep_versions=2, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    builder = hub.server.builder
    files = hub.dir.snapshots

    def snaps() -> set[str]:
        return {p.name for p in files.glob("*.snap")} | {p.name for p in files.glob("*.json")}

    def named(*names: str) -> set[str]:
        return {f"{n}.{ext}" for n in names for ext in ("snap", "json")}

    try:
        s = enrolled(hub)
        wait_for(lambda: builder.full_ready(1), timeout=30)
        assert hub.publish() == 2
        wait_for(lambda: builder.full_ready(2), timeout=30)
        assert {(c.version, c.base_version) for c in pulled(s, have=1)} == {(2, 1)}
        assert snaps() == named(
            "v0000000001-full", "v0000000002-full", "v0000000002-from-0000000001"
        )
        assert hub.publish() == 3
        wait_for(lambda: builder.full_ready(3), timeout=30)
        assert {(c.version, c.base_version) for c in pulled(s, have=2)} == {(3, 2)}
        kept = named("v0000000002-full", "v0000000002-from-0000000001", "v0000000003-full")
        wait_for(lambda: snaps() == kept | named("v0000000003-from-0000000002"), timeout=30)
        assert hub.publish() == 4
        wait_for(lambda: builder.full_ready(4), timeout=30)
        kept = named("v0000000003-full", "v0000000003-from-0000000002", "v0000000004-full")
        wait_for(lambda: snaps() == kept, timeout=30)
        # what is kept is served from its file; what was deleted is built again when asked
        assert {(c.version, c.base_version) for c in pulled(s)} == {(4, 0)}
        assert {(c.version, c.base_version) for c in pulled(s, have=3)} == {(4, 3)}
    finally:
        hub.stop()


# ------------------------------------------------------------ PushTransactions, ListTransactions


def sale(seq: int) -> pb.Transaction:
    return pb.Transaction(
        device_id="till-1",
        seq=seq,
        kind=pb.CHECKOUT,
        at="2026-12-07T09:00:00Z",
        request_json=f'{{"receiptId": "r-{seq}"}}',
        result_json="{}",
    )


def test_a_batch_of_a_thousand_is_stored_and_a_listing_gives_a_thousand_at_most(
    hub: LoopbackHub,
) -> None:
    """docs/PROTOCOL.md: a PushTransactions batch holds at most 1000 transactions (1001
    is INVALID_ARGUMENT, nothing stored); ListTransactions answers at most 1000 a call
    (its default and its cap) with `more` set while there are more after them, from
    `since_seq` on, and refuses a negative `since_seq` or `limit`. A till's full batch
    refused, or a listing one short, past its cap or without `more`, went unseen: the
    tests pushed and listed a few."""
    s = enrolled(hub)
    code, details = refusal(
        lambda: s.PushTransactions(
            pb.TransactionBatch(device_id="till-1", transactions=[sale(i) for i in range(1, 1002)]),
            timeout=TIMEOUT,
        )
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "at most 1000 per batch")
    ack = s.PushTransactions(
        pb.TransactionBatch(device_id="till-1", transactions=[sale(i) for i in range(1, 1001)]),
        timeout=TIMEOUT,
    )
    assert (ack.accepted, ack.acked_through_seq) == (1000, 1000)
    ack = s.PushTransactions(
        pb.TransactionBatch(device_id="till-1", transactions=[sale(1001)]), timeout=TIMEOUT
    )
    assert (ack.accepted, ack.acked_through_seq) == (1, 1001)

    def listed(since_seq: int = 0, limit: int = 0) -> tuple[list[int], bool, int]:
        request = pb.ListTransactionsRequest(device_id="till-1", since_seq=since_seq, limit=limit)
        reply = s.ListTransactions(request, timeout=TIMEOUT)
        return [t.seq for t in reply.transactions], reply.more, reply.acked_through_seq

    assert listed() == (list(range(1, 1001)), True, 1001)
    assert listed(limit=5000) == (list(range(1, 1001)), True, 1001)
    assert listed(limit=1000) == (list(range(1, 1001)), True, 1001)
    assert listed(since_seq=1) == (list(range(2, 1002)), False, 1001)
    assert listed(since_seq=999, limit=2) == ([1000, 1001], False, 1001)
    assert listed(since_seq=999, limit=1) == ([1000], True, 1001)
    assert listed(since_seq=1001) == ([], False, 1001)
    for since_seq, limit in [(-1, 0), (0, -1)]:
        code, details = refusal(lambda a=since_seq, b=limit: listed(a, b))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "since_seq and limit must be >= 0",
        )


# ------------------------------------------------------------------ PullSnapshot


CHUNK = 300


@pytest.fixture
def chunky_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    """The sample hub serving chunks of 300 bytes, its versions 1 and 2 published."""
    config = HubConfig(chunk_size=CHUNK, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    hub.publish()
    yield hub
    hub.stop()


def pulled(
    s: pb_grpc.HubStub, have: int = 0, want: int = 0, offset: int = 0
) -> list[pb.SnapshotChunk]:
    request = pb.PullSnapshotRequest(
        device_id="till-1", have_version=have, want_version=want, offset=offset
    )
    return list(s.PullSnapshot(request, timeout=30.0))


def test_a_pull_is_sent_in_chunks_at_their_offsets_and_resumes_at_the_tills_offset(
    chunky_hub: LoopbackHub,
) -> None:
    """The contract §7, docs/PROTOCOL.md (PullSnapshot): a full snapshot for a till at 0,
    in chunks of `chunk_size` bytes at consecutive offsets, each carrying the size, the
    hash and the signature; a pull that names the version being downloaded (`want`) and
    an offset inside it resumes there; an offset at or past the end, or of another
    version, starts over from byte 0 (it never answered an empty stream, which a till
    cannot tell from a cut one); a till up to date gets one empty chunk of the latest
    version, and a till on a published version a delta on it."""
    s = enrolled(chunky_hub)
    chunks = pulled(s)
    whole = b"".join(c.data for c in chunks)
    size = chunks[0].total_size
    assert size == len(whole) > 3 * CHUNK  # four chunks at least
    assert [c.offset for c in chunks] == list(range(0, size, CHUNK))
    assert [len(c.data) for c in chunks[:-1]] == [CHUNK] * (len(chunks) - 1)
    assert {(c.version, c.base_version, c.base_issued_at) for c in chunks} == {(2, 0, "")}
    assert hashlib.sha256(whole).digest() == chunks[0].sha256
    assert len({(c.sha256, c.signature, c.total_size) for c in chunks}) == 1

    resumed = pulled(s, want=2, offset=450)
    assert [c.offset for c in resumed] == list(range(450, size, CHUNK))
    assert b"".join(c.data for c in resumed) == whole[450:]
    last = pulled(s, want=2, offset=size - 1)
    assert [(c.offset, c.data) for c in last] == [(size - 1, whole[-1:])]
    # a download of version 1 begun before 2 was published goes on where it stopped
    older = pulled(s, want=1, offset=450)
    assert {(c.version, c.base_version) for c in older} == {(1, 0)}
    assert [c.offset for c in older] == list(range(450, older[0].total_size, CHUNK))
    resumes = list(chunky_hub.server.servicer.stats.resumed_pulls)
    assert resumes == [450, size - 1, 450]
    for want, offset in [(2, 0), (2, size), (2, size + 5), (2, -1), (3, 450), (0, 450)]:
        again = pulled(s, want=want, offset=offset)
        assert [c.offset for c in again] == list(range(0, size, CHUNK)), (want, offset)
        assert b"".join(c.data for c in again) == whole
    assert list(chunky_hub.server.servicer.stats.resumed_pulls) == resumes  # none resumed

    assert [(c.version, c.total_size, c.data) for c in pulled(s, have=2)] == [(2, 0, b"")]
    delta = pulled(s, have=1)
    v1 = chunky_hub.store.publication(1).issued_at.isoformat()
    assert {(c.version, c.base_version, c.base_issued_at) for c in delta} == {(2, 1, v1)}
    assert b"".join(c.data for c in delta) != whole
    # a `want` at or below the till's own version (a part file left from before) is no
    # download to resume: the till gets what is newer than what it has
    assert {(c.version, c.base_version) for c in pulled(s, have=1, want=1)} == {(2, 1)}
    assert chunky_hub.publish() == 3
    assert {(c.version, c.base_version) for c in pulled(s, have=2, want=1)} == {(3, 2)}


def test_the_hubs_warning_of_a_sale_set_aside_says_the_till_sends_it_again_only_when_it_does(
    hub: LoopbackHub, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/HUB.md (two live tills under one device id): each sale set aside is a WARNING
    in the hub's log, "device D seq S set aside: <why>", and when its seq was taken by
    other content (`seq_taken`: the till numbers it again and sends it again) it says so;
    a transaction REJECTED for what it is (a kind this hub does not know) is not sent
    again, and its warning does not say it will be (the words were only read for a
    CONFLICT: swapped, they promised a resend of the rejected one)."""
    s = enrolled(hub)
    first = s.PushTransactions(
        pb.TransactionBatch(device_id="till-1", transactions=[sale(1)]), timeout=TIMEOUT
    )
    assert first.accepted == 1
    clone = pb.Transaction()
    clone.CopyFrom(sale(1))
    clone.request_json = '{"receiptId": "w-1"}'  # another till's sale under seq 1
    odd = sale(2)
    odd.kind = 999  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="tillpoint.hub"):
        ack = s.PushTransactions(
            pb.TransactionBatch(device_id="till-1", transactions=[clone, odd]), timeout=TIMEOUT
        )
    assert [(r.seq, r.outcome, r.seq_taken) for r in ack.results] == [
        (1, pb.TX_CONFLICT, True),
        (2, pb.TX_REJECTED, False),
    ]
    lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    again = "(the till numbers it again and sends it again; one of an earlier release keeps it"
    assert len(lines) == 2
    assert lines[0].startswith("device till-1 seq 1 set aside: ") and again in lines[0]
    assert lines[1].startswith("device till-1 seq 2 set aside: ") and again not in lines[1]
