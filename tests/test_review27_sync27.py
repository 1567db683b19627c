"""Review 27 (sync27): what a long-running till lives through with its hub (docs/CONTRACT.md
§3, §9): real hub on 127.0.0.1 (its store, gRPC over mTLS), enrolled tills with their SQLite
cache and ledger, the same `SyncService` `tillpoint run` starts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.app import till_agent
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.authoriser import HubAuthoriser
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import (
    LoopbackHub,
    Till,
    receipt,
    sample_master_data,
    timings,
    wait_for,
)
from tillpoint.sync.pull import Puller, cache_version
from tillpoint.sync.push import Pusher
from tillpoint.sync.service import SyncService

from .listeners import close_listener

CARD = "2770000000017"
SKU = "4601234000017"


def many_offers(count: int, id_length: int) -> list[dict[str, Any]]:
    """`count` mass offers on the milk, each with a long id: an explain trace lists every
    one of them on every milk line (docs/CONTRACT.md §17)."""
    return [
        {
            "id": f"o-{i:04d}-" + "x" * (id_length - 7),
            "campaignId": "camp-1",
            "kind": "PERCENT_OFF",
            "skus": [SKU],
            "value": str(1 + i % 9),
            "minQty": "1",
            "validFrom": "2026-01-01T00:00:00+03:00",
            "validTo": "2027-12-31T23:59:59+03:00",
            "priority": 10,
            "rank": 1,
        }
        for i in range(count)
    ]


@pytest.fixture()
def offers_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    data = sample_master_data()
    data["offers"] = many_offers(40, 190)
    hub = LoopbackHub(tmp_path / "hub", data=data)
    yield hub
    hub.stop()


def synced_till(hub: LoopbackHub, tmp_path: Path, name: str, **kw: Any) -> Till:
    till = hub.till(name, tmp_path / name, **kw)
    wait_for(lambda: cache_version(till.data_dir) >= 1)
    return till


def stored_at_hub(hub: LoopbackHub, device: str) -> list[str]:
    return [t.receipt_id for t in hub.store.transactions(device)]


# ---------------------------------------------------------------- 1. a poison row


@pytest.mark.slow
def test_a_sale_with_a_huge_explain_trace_does_not_block_the_outbox(
    offers_hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §9, §17: `checkout --explain` keeps the trace with the result, and
    the till sent that result to the hub whole. A big basket with many offers made one
    transaction larger than the hub takes in one message (16 MiB): the hub answered every
    push RESOURCE_EXHAUSTED, the till took it for "the hub is unreachable", and that sale
    and every later one stayed in the outbox for good. The trace changes no figure and is
    not the hub's business: the hub gets the sale without it, and both sales arrive."""
    till = synced_till(offers_hub, tmp_path, "till-1")
    try:
        lines = [{"sku": SKU, "qty": "1", "priceMinor": 100 + i} for i in range(880)]
        big = receipt("big-1", CARD, lines=lines)
        big["explain"] = True
        sold = till.agent.checkout(receipt_from_json(big))
        assert sold.trace is not None
        till.agent.checkout(receipt_from_json(receipt("next-1", CARD)))
        wait_for(lambda: len(stored_at_hub(offers_hub, "till-1")) == 2, timeout=20)
        assert stored_at_hub(offers_hub, "till-1") == ["big-1", "next-1"]
        # the till's own copy keeps its trace: a replay answers what the first call did
        again = till.agent.checkout(receipt_from_json(big))
        assert again.trace == sold.trace
    finally:
        till.stop()


def test_a_result_without_a_trace_goes_to_the_hub_byte_for_byte() -> None:
    """docs/CONTRACT.md §9: the hub tells a duplicate from a conflict by the transaction's
    bytes, so dropping the trace must leave every other result text as it was stored
    (spaced texts of older agents, key order, non-ASCII), and a traced one always the same."""
    from tillpoint.sync.push import without_trace

    for text in (
        '{"receiptId": "r1", "display": ["Анна"], "earnedPoints": 3}',
        '{"receiptId":"r1","display":["Анна"],"lines":[{"offerId":"trace"}]}',
    ):
        assert without_trace(text) == text
    traced = '{"receiptId":"r1","trace":{"lines":[]},"display":["Анна"]}'
    assert without_trace(traced) == '{"receiptId":"r1","display":["Анна"]}'
    assert without_trace(without_trace(traced)) == without_trace(traced)


# ---------------------------------------------------------------- 2. a refused snapshot


def new_snapshot_key(hub: LoopbackHub) -> None:
    """The hub's snapshot key replaced (docs/PROTOCOL.md §1: no rotation command; every
    till refuses what it signs until it gets a renewed bundle), and the hub restarted."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    keys = hub.dir.keys
    keys.snapshot_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keys.snapshot_pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    hub.restart()


@pytest.mark.slow
def test_a_refused_version_is_not_pulled_again_at_every_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/CONTRACT.md §3, §9: a refused snapshot is refused once and the till keeps its
    cache; a notification makes the till pull a *new* version at once. Every Subscribe
    heartbeat (15 s by default) repeats the hub's newest version, and the till took each
    one for news: it pulled the version it had refused again (the first chunk, up to
    1 MiB of a chain's snapshot, from every till) and logged the refusal at ERROR, four
    times a minute for as long as the hub published nothing newer (days, with a snapshot
    key replaced). Now the heartbeats of a version already announced wake nothing; the
    polls go on at their own pace (60 s by default)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())  # heartbeat 1 s
    # the shipped backoff (a refused pull waits 0.5 s, 1 s, 2 s, ... up to 60 s)
    till = synced_till(
        hub, tmp_path, "till-1", timings=timings(backoff_base_s=0.5, backoff_cap_s=60)
    )
    try:
        new_snapshot_key(hub)
        hub.publish()  # version 2, signed with a key the till does not hold
        wait_for(lambda: hub.server.servicer.stats.pulls >= 1, timeout=10)
        # the refusal recorded (waited for: 0.5 s until review 40)
        wait_for(
            lambda: (
                (till.agent.status().to_json().get("lastRefusedSnapshot") or {}).get("version") == 2
            ),
            timeout=20,
        )
        # A refused delta is followed by the full snapshot's pull (refused too): the pulls
        # settle (no pull for 1.5 s, where a heartbeat's would come every second) before
        # the count is taken (review 40: read after the first refusal, it met the second)
        seen = [hub.server.servicer.stats.pulls, time.monotonic()]

        def settled() -> bool:
            now = hub.server.servicer.stats.pulls
            if now != seen[0]:
                seen[:] = [now, time.monotonic()]
            return time.monotonic() - seen[1] >= 1.5

        wait_for(settled, timeout=30)
        pulls = hub.server.servicer.stats.pulls
        time.sleep(2.5)  # two heartbeats
        assert hub.server.servicer.stats.pulls == pulls, "pulled again at a heartbeat"
        assert cache_version(till.data_dir) == 1
        status = till.agent.status().to_json()
        assert "signature" in status["lastError"]
        assert status["lastRefusedSnapshot"]["version"] == 2
        # asked again (the polls): logged at ERROR once, `status` keeps saying it
        assert till.service is not None
        for _ in range(2):
            till.service.trigger_pull()
            wait_for(lambda p=pulls: hub.server.servicer.stats.pulls > p)
            pulls = hub.server.servicer.stats.pulls
        time.sleep(0.3)
        errors = [
            r for r in caplog.records if r.levelname == "ERROR" and "(version 2)" in r.message
        ]
        assert len(errors) == 1, [r.message for r in errors]
        hub.publish()  # a new version is news: pulled at once (and refused: the same key)
        wait_for(lambda: hub.server.servicer.stats.pulls > pulls, timeout=20)
        wait_for(lambda: till.agent.status().to_json()["lastRefusedSnapshot"]["version"] == 3)
    finally:
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- 3. a thin uplink


class ThinLink:
    """A TCP relay on 127.0.0.1 that carries the till's bytes to the hub at `rate` bytes a
    second (a store's backup 3G uplink), and the hub's back at `down` (0: full speed)."""

    def __init__(self, target_port: int, rate: int, down: int = 0) -> None:
        self.rate = rate
        self.down = down
        self.target_port = target_port
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst, rate in ((client, upstream, self.rate), (upstream, client, self.down)):
                threading.Thread(target=self._pipe, args=(src, dst, rate), daemon=True).start()

    @staticmethod
    def _pipe(src: Any, dst: Any, rate: int) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(1024 if rate else 65536)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.closed = True
        close_listener(self.server)


SALES = 40


@pytest.mark.slow
def test_a_backlog_drains_over_an_uplink_too_thin_for_a_whole_batch(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9: the till keeps its sales until the hub acknowledges them, and
    they reach it once the link is back. A push had one deadline (5 s by default) whatever
    its size, and a batch of up to 200 sales and 1 MiB: over an uplink too thin to carry a
    whole batch in time (a store on its backup 3G link after an outage), every push ran
    out of time with the same batch, and the backlog never drained. A push that runs out
    of time is tried again with a smaller batch, down to one sale."""

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till-1"
    slow = timings(call_timeout_s=1.0, backoff_base_s=0.1, backoff_cap_s=0.5)
    till = hub.till("till-1", data, start=False, timings=slow)
    Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
    # sold while the hub was away: more than a gRPC stream's window (64 KiB) in all, so
    # the hub cannot take a batch of them all from its socket's buffers once it ran late
    basket = [{"sku": SKU, "qty": "1", "priceMinor": 100 + i} for i in range(12)]
    for i in range(SALES):
        till.agent.checkout(receipt_from_json(receipt(f"r-{i:03d}", CARD, lines=basket)))
    till.stop()
    thin = ThinLink(hub.port, rate=50_000)
    enrollment = till.link.enrollment
    link = HubLink(f"127.0.0.1:{thin.port}", enrollment)
    authoriser = HubAuthoriser(link, data, "till-1", slow.redeem_timeout_s)
    agent = till_agent(data, "till-1", hub=authoriser)
    service = SyncService(agent, link, enrollment, slow)
    service.start()
    try:
        wait_for(lambda: len(stored_at_hub(hub, "till-1")) == SALES, timeout=30)
        assert stored_at_hub(hub, "till-1") == [f"r-{i:03d}" for i in range(SALES)]
    finally:
        service.stop()
        authoriser.close()
        agent.close()
        thin.close()
        hub.stop()


# ---------------------------------------------------------------- 4. two tills, one id


def test_two_tills_running_as_one_device_are_told_apart_in_words(tmp_path: Path) -> None:
    """docs/CONTRACT.md §9: (deviceId, seq) is one sale. Two tills running as one device
    (one enrolment bundle installed on both, a cloned disk) number their sales alike: the
    hub keeps the first of each seq and sets the other aside (nothing counted twice,
    nothing dropped unseen; since review 32 the till numbers it again and sends it
    again). The second till's status said only "seq 1 of till-x is already stored with
    other content"; it now names the likely causes, for the person who must sort it out."""
    from datetime import UTC, datetime

    from tillpoint.sync import pki

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    identity = pki.issue_device(hub.dir.keys, "till-x")
    hub.store.enroll("till-x", identity.fingerprint, datetime.now(UTC))
    bundle = pki.make_bundle(hub.dir.keys, identity, hub.address)
    parts: list[tuple[Any, Any, Any]] = []
    try:
        for name in ("a", "b"):
            data = tmp_path / name
            enrollment = pki.install_bundle(data, bundle, "till-x")
            link = HubLink(hub.address, enrollment)
            authoriser = HubAuthoriser(link, data, "till-x", 0.3)
            agent = till_agent(data, "till-x", hub=authoriser)
            parts.append((agent, link, authoriser))
            Puller(agent, link, enrollment, call_timeout_s=2).pull()
            sale = receipt(f"{name}-1", CARD)
            sale["tillId"] = name
            assert agent.checkout(receipt_from_json(sale)).seq == 1
            pusher = Pusher(data, "till-x", link, call_timeout_s=2)
            pusher.drain()
            pusher.close()
        # since review 32 the second till's sale is numbered again and stored (nothing
        # lost: tests/test_review32_hub32.py); the words stay in the hub's set-aside list
        assert stored_at_hub(hub, "till-x") == ["a-1", "b-1"]
        status = parts[1][0].status().to_json()
        assert (status["setAside"], status["outboxDepth"]) == (0, 0)
        words = [r["reason"] for r in hub.store.set_aside_transactions("till-x")]
        assert len(words) == 1 and "two tills may be running as till-x" in words[0]
        assert parts[0][0].status().to_json()["syncError"] == ""
    finally:
        for agent, link, authoriser in parts:
            link.close()
            authoriser.close()
            agent.close()
        hub.stop()


@pytest.mark.slow
def test_a_snapshot_comes_down_a_thin_link_in_one_pull(tmp_path: Path) -> None:
    """docs/CONTRACT.md §3, §9: a pull gives up on a stream that delivers nothing for
    `hub.call_timeout_ms` (5 s), a dead link TCP has not noticed. A chunk is one gRPC
    message of up to 1 MiB, which arrives whole or not at all: below about 1.7 Mbit/s a
    chunk takes longer than that, so every pull after the first chunk (which may take
    120 s) was cancelled as stalled, and a store's snapshot came one chunk per pull, each
    after the backoff (up to a minute). A chunk now has the time a link of 256 kbit/s
    needs for one as big as the last, and at least the call timeout."""
    from tillpoint.sync.hub_server import HubConfig

    data = sample_master_data()
    data["customers"] += [
        {"id": f"c-{i:05d}", "firstName": "Имя", "tier": "base", "balancePoints": i}
        for i in range(3, 2500)
    ]
    config = HubConfig(
        heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0, chunk_size=64 * 1024
    )
    hub = LoopbackHub(tmp_path / "hub", config, data=data)
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    thin = ThinLink(hub.port, rate=0, down=100_000)  # ~0.65 s a 64 KiB chunk
    link = HubLink(f"127.0.0.1:{thin.port}", till.link.enrollment)
    try:
        result = Puller(till.agent, link, link.enrollment, call_timeout_s=0.3).pull()
        assert result.status == "APPLIED" and result.size > 2 * 64 * 1024
        assert result.resumed_from == 0
    finally:
        link.close()
        till.stop()
        thin.close()
        hub.stop()


# ---------------------------------------------------------------- 5. a row the till cannot send


def test_an_outbox_row_the_till_cannot_read_stops_neither_pulls_nor_status(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §9 (a long-running till keeps syncing) and §12 (status says what is
    wrong): an outbox row whose text no longer reads as JSON (a damaged ledger, a hand
    edit) raised out of the sync thread, which died: no push or pull ever again until a
    restart, while `status` said nothing was wrong. The row is kept (nothing is sent in
    its place), the thread goes on pulling, and `status` names the row."""
    import sqlite3

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    service = None
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        till.agent.checkout(receipt_from_json(receipt("r-1", CARD)))
        with sqlite3.connect(tmp_path / "till-1" / "ledger.db") as conn:
            conn.execute("UPDATE outbox SET payload = '{broken' WHERE seq = 1")
        service = SyncService(till.agent, till.link, till.link.enrollment, timings())
        service.start()
        wait_for(lambda: "seq 1" in till.agent.status().to_json()["syncError"], timeout=5)
        hub.publish()  # a new version still comes down
        wait_for(lambda: cache_version(till.data_dir) == 2, timeout=5)
        status = till.agent.status().to_json()
        assert status["outboxDepth"] == 1
        assert "outbox row" in status["syncError"], status["syncError"]
    finally:
        if service is not None:
            service.stop()
            till.authoriser.close()
            till.agent.close()
        else:
            till.stop()
        hub.stop()


# ---------------------------------------------------------------- 6. the till's clock


def test_a_snapshot_refused_by_a_clock_days_ahead_is_taken_once_the_clock_is_right(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §3, §9: a till refuses an expired snapshot, and a bundle refused
    for what it is is remembered and not downloaded again. Expired is not what the bundle
    is but what the till's clock says: a till whose clock ran days ahead (a flat RTC
    battery, a wrong manual setting) refused the hub's snapshot as expired, and once NTP
    had set its clock right it still refused the same bundle from memory until the hub
    published another (up to half the snapshot's validity, 84 h by default, in a quiet
    hub). The remembered expiry is checked again against the clock of the next pull."""
    from datetime import UTC, datetime, timedelta

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1", start=False)
    try:
        ahead = Puller(
            till.agent,
            till.link,
            till.link.enrollment,
            call_timeout_s=2,
            clock=lambda: datetime.now(UTC) + timedelta(days=8),
        ).pull()
        assert ahead.status == "REFUSED" and "expired" in ahead.message
        right = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        assert (right.status, right.version) == ("APPLIED", 1)
        assert cache_version(till.data_dir) == 1
        assert "lastRefusedSnapshot" not in till.agent.status().to_json()
    finally:
        till.stop()
        hub.stop()
