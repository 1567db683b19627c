"""The reference hub's gRPC service (`tillpoint hub serve`): mTLS, snapshots, ingest, holds.

Every RPC first authenticates the caller: the TLS handshake already requires a client
certificate signed by the hub's CA; the servicer then requires that certificate to be
the one on record for an enrolled, unrevoked device, and the request's device_id (and
each pushed transaction's) to be that device. docs/PROTOCOL.md has the whole contract.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519
from tillpoint.agent.errors import StorageError, TillpointError
from tillpoint.agent.models import _timestamp
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from . import pki
from .hub_sqlite import SqliteHubStore
from .hub_store import HubStats, HubStore, Publication, TxIn, Unsynced
from .signing import MAX_CHUNK, SNAPSHOT_JSONL, SignedSnapshot, canonical_json, sign

log = logging.getLogger("tillpoint.hub")

Clock = Callable[[], datetime]
MAX_BATCH = 1000
DB_FILE = "hub.db"


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HubConfig:
    chunk_size: int = MAX_CHUNK  # bytes per SnapshotChunk (at most 1 MiB)
    heartbeat_s: float = 15.0  # Subscribe sends the latest version at least this often
    stream_max_s: float = 300.0  # a Subscribe stream ends after this; the agent reopens it
    hold_ttl_s: float = 900.0  # an authorised redemption is held this long
    snapshot_ttl_s: float = 7 * 86400.0  # expiresAt = issuedAt + this
    publish_every_s: float = 300.0  # balance refresh versions (0: only `hub publish`)
    watch_interval_s: float = 0.5  # how often the server looks for new versions
    max_workers: int = 64  # each connected till holds one for its Subscribe stream
    bundle_cache_bytes: int = 256 * 1024 * 1024
    rate_limit_bytes_s: float = 0.0  # per snapshot stream (0: unlimited), spares store uplinks

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK}")


class HubDir:
    """A hub's directory: ``hub.db`` and ``keys/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.keys = pki.HubKeys(self.root / "keys")

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    def init(self, hosts: list[str] | None = None) -> bool:
        return pki.init_hub_keys(self.keys, hosts)

    def open_store(self) -> SqliteHubStore:
        return SqliteHubStore(self.db)


# ---------------------------------------------------------------- snapshots


class SnapshotBuilder:
    """Builds, signs and caches per-device bundles (deterministic: the same store state
    gives the same bytes, so a pull can resume even after the hub restarted)."""

    def __init__(
        self, store: HubStore, key: ed25519.Ed25519PrivateKey, cache_bytes: int = 256 << 20
    ) -> None:
        self.store = store
        self.key = key
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int, int], SignedSnapshot] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        # Full snapshots of a big chain take seconds and memory to build: two at a time.
        self._building = threading.BoundedSemaphore(2)

    def choose(self, have: int, want: int) -> tuple[Publication, int] | None:
        """(publication to send, its base) for an agent at `have`; None: nothing newer."""
        latest = self.store.latest()
        if latest is None:
            return None
        pub = latest
        if want and want != latest.version and want > have:
            wanted = self.store.publication(want)
            if wanted is not None:
                pub = wanted
        if pub.version <= have:
            return None
        base = 0
        if have and have >= self.store.delta_floor() and self.store.publication(have):
            base = have
        return pub, base

    def bundle(self, device_id: str, version: int, base: int) -> SignedSnapshot:
        key = (device_id, version, base)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        with self._building:
            with self._lock:
                hit = self._cache.get(key)  # built while this call waited its turn
            if hit is not None:
                return hit
            header, payload = snapshot_payload(self.store, device_id, version, base)
        bundle = SignedSnapshot(
            device_id=device_id,
            version=version,
            base_version=base,
            issued_at=str(header["issuedAt"]),
            expires_at=str(header["expiresAt"]),
            payload=payload,
            signature=sign(self.key, device_id, payload),
        )
        with self._lock:
            if key not in self._cache:
                self._cache[key] = bundle
                self._size += bundle.size
            while self._size > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._size -= old.size
        return bundle


def snapshot_payload(
    store: HubStore, device_id: str, version: int, base: int
) -> tuple[dict[str, Any], bytes]:
    """The snapshot as JSON Lines (`tillpoint.snapshot/jsonl`, the format a till applies
    row by row): the header line, then a `{"section": ...}` line before each section's
    rows. Canonical JSON throughout, so the same state always gives the same bytes."""
    out = io.BytesIO()
    header: dict[str, Any] = {}
    current = ""
    for section, row in store.snapshot_stream(device_id, version, base):
        if section == "header":
            header = row
            out.write(canonical_json({"format": SNAPSHOT_JSONL, **row}) + b"\n")
            continue
        if section != current:
            out.write(canonical_json({"section": section}) + b"\n")
            current = section
        out.write(canonical_json(row) + b"\n")
    return header, out.getvalue()


# ---------------------------------------------------------------- notifications


class Notifier:
    """Tells Subscribe streams about new versions; publishing may happen in another process
    (`tillpoint hub publish`), so a watcher thread polls the store."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.latest: Publication | None = None
        self.stopping = False

    def update(self, pub: Publication | None) -> None:
        with self._cond:
            if pub is not None and (self.latest is None or pub.version > self.latest.version):
                self.latest = pub
                self._cond.notify_all()

    def wait_newer(self, version: int, timeout: float) -> Publication | None:
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self.stopping or (self.latest is not None and self.latest.version > version)
                ),
                timeout=timeout,
            )
            return self.latest

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()


# ---------------------------------------------------------------- the service

Failpoint = Callable[[str], None]


class HubServicer(pb_grpc.HubServicer):
    def __init__(
        self,
        store: HubStore,
        builder: SnapshotBuilder,
        notifier: Notifier,
        config: HubConfig,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.builder = builder
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.stats = HubStats()
        self.rate_limit_bytes_s = config.rate_limit_bytes_s
        # Test failpoints: called with "push.committed" (after a batch is stored, before
        # the answer is sent), "pull.chunk" and "authorize"; one may raise, abort or sleep.
        self.failpoint: Failpoint | None = None

    # ------------------------------------------------------------ auth

    def _device(self, context: grpc.ServicerContext, claimed: str) -> str:
        auth = context.auth_context()
        pems = list(auth.get("x509_pem_cert") or [])
        if not pems:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        pem = bytes(pems[0])
        device = pki.device_id_of(pem)
        if device is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "the certificate names no device")
        record = self.store.device(device)
        if record is None:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"device {device} is not enrolled")
        if record.revoked_at is not None:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"device {device} is revoked")
        if record.fingerprint != pki.fingerprint(pem):
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate of {device} is not the enrolled one (re-enrolled?)",
            )
        if claimed != device:
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the request is for device {claimed!r} but the certificate is {device!r}",
            )
        return device

    def _fail(self, where: str) -> None:
        if self.failpoint is not None:
            self.failpoint(where)

    # ------------------------------------------------------------ RPCs

    def PullSnapshot(
        self, request: pb.PullSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotChunk]:
        device = self._device(context, request.device_id)
        try:
            chosen = self.builder.choose(request.have_version, request.want_version)
            if chosen is None:
                latest = self.store.latest()
                yield pb.SnapshotChunk(version=latest.version if latest else 0, total_size=0)
                return
            pub, base = chosen
            bundle = self.builder.bundle(device, pub.version, base)
        except TillpointError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        offset = 0
        if request.want_version == bundle.version and 0 < request.offset < bundle.size:
            offset = request.offset
            self.stats.resumed_pulls.append(offset)
        self.stats.pulls += 1
        size = self.config.chunk_size
        for start in range(offset, bundle.size, size):
            self._fail("pull.chunk")
            data = bundle.payload[start : start + size]
            yield pb.SnapshotChunk(
                version=bundle.version,
                base_version=bundle.base_version,
                total_size=bundle.size,
                signature=bundle.signature,
                issued_at=bundle.issued_at,
                expires_at=bundle.expires_at,
                sha256=bundle.sha256,
                offset=start,
                data=data,
            )
            if self.rate_limit_bytes_s > 0 and context.is_active():
                time.sleep(len(data) / self.rate_limit_bytes_s)

    def PushTransactions(
        self, request: pb.TransactionBatch, context: grpc.ServicerContext
    ) -> pb.PushAck:
        device = self._device(context, request.device_id)
        if len(request.transactions) > MAX_BATCH:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH} per batch")
        txs = []
        for tx in request.transactions:
            if tx.device_id != device:
                _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"transaction {tx.seq} is of device {tx.device_id!r}, not {device!r}",
                )
            txs.append(
                TxIn(
                    device_id=tx.device_id,
                    seq=tx.seq,
                    kind=pb.TransactionKind.Name(tx.kind),
                    at=tx.at,
                    customer_id=tx.customer_id,
                    card=tx.card,
                    request_json=tx.request_json,
                    result_json=tx.result_json,
                    delta_available=tx.points_delta_available,
                    delta_pending=tx.points_delta_pending,
                    pending_activates_at=tx.pending_activates_at,
                )
            )
        try:
            result = self.store.ingest(device, request.batch_id, txs, self.clock())
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        self.stats.pushes += 1
        self._fail("push.committed")
        outcome = {
            "STORED": pb.TX_STORED,
            "DUPLICATE": pb.TX_DUPLICATE,
            "CONFLICT": pb.TX_CONFLICT,
            "REJECTED": pb.TX_REJECTED,
        }
        for r in result.results:
            if r.outcome in ("CONFLICT", "REJECTED"):
                log.warning("device %s seq %d set aside: %s", device, r.seq, r.reason)
        return pb.PushAck(
            acked_through_seq=result.acked_through,
            accepted=result.count("STORED"),
            duplicates=result.count("DUPLICATE"),
            conflicts=result.count("CONFLICT"),
            rejected=result.count("REJECTED"),
            results=[
                pb.TransactionResult(seq=r.seq, outcome=outcome[r.outcome], reason=r.reason)
                for r in result.results
            ],
        )

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Notification]:
        self._device(context, request.device_id)
        heartbeat = self.config.heartbeat_s
        ends = time.monotonic() + self.config.stream_max_s

        def note(pub: Publication | None) -> pb.Notification:
            return pb.Notification(
                latest_version=pub.version if pub else 0,
                issued_at=pub.issued_at.isoformat() if pub else "",
                heartbeat_s=max(1, round(heartbeat)),
            )

        pub = self.notifier.latest
        sent = pub.version if pub else 0
        yield note(pub)
        while context.is_active() and not self.notifier.stopping and time.monotonic() < ends:
            pub = self.notifier.wait_newer(sent, timeout=min(heartbeat, ends - time.monotonic()))
            if self.notifier.stopping or not context.is_active():
                return
            sent = pub.version if pub else 0
            yield note(pub)

    def AuthorizeRedemption(
        self, request: pb.AuthorizeRedemptionRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeRedemptionReply:
        device = self._device(context, request.device_id)
        if request.points < 0 or not request.receipt_id or not request.customer_id:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "receiptId, customerId and points >= 0 are required",
            )
        try:
            at = _timestamp(request.at)
        except ValueError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"at: {exc}")
        self._fail("authorize")
        try:
            granted = self.store.authorise(
                device,
                request.receipt_id,
                request.customer_id,
                request.points,
                at,
                [Unsynced(u.seq, u.receipt_id, u.points) for u in request.unsynced],
                self.clock(),
                self.config.hold_ttl_s,
            )
        except StorageError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, exc.message)
        return pb.AuthorizeRedemptionReply(
            authorized_points=granted.authorised,
            hold_id=granted.hold_id,
            expires_at=granted.expires_at.isoformat(),
            live_balance=granted.live_balance,
        )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


# ---------------------------------------------------------------- the server


class HubServer:
    """A running hub: gRPC over mTLS, the version watcher and the balance publisher."""

    def __init__(
        self,
        hub_dir: Path,
        config: HubConfig | None = None,
        *,
        clock: Clock = system_clock,
        store: HubStore | None = None,
    ) -> None:
        self.dir = HubDir(hub_dir)
        self.config = config or HubConfig()
        self.clock = clock
        self.dir.init()
        self.store: HubStore = store or self.dir.open_store()
        self._owns_store = store is None
        self.notifier = Notifier()
        self.builder = SnapshotBuilder(
            self.store, self.dir.keys.signing_key(), self.config.bundle_cache_bytes
        )
        self.servicer = HubServicer(self.store, self.builder, self.notifier, self.config, clock)
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.port = 0

    def start(self, listen: str = "127.0.0.1:0") -> int:
        key, cert, ca = self.dir.keys.server_credentials_material()
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="hub"
            ),
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
                ("grpc.http2.max_pings_without_data", 0),
                # a push batch is ~1 MiB, but one receipt of 10,000 lines can be more
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )
        pb_grpc.add_HubServicer_to_server(self.servicer, server)
        port = server.add_secure_port(listen, creds)
        if port == 0:
            raise TillpointError(f"the hub cannot listen on {listen}")
        self.notifier.update(self.store.latest())
        server.start()
        self._server = server
        self.port = port
        self._watcher = threading.Thread(target=self._watch, name="hub-watch", daemon=True)
        self._watcher.start()
        log.info("hub serving on port %d", port)
        return port

    def _watch(self) -> None:
        next_publish = time.monotonic() + self.config.publish_every_s
        while not self._stop.wait(self.config.watch_interval_s):
            try:
                self.notifier.update(self.store.latest())
                if self.config.publish_every_s and time.monotonic() >= next_publish:
                    next_publish = time.monotonic() + self.config.publish_every_s
                    self.refresh_balances()
            except TillpointError as exc:
                log.warning("hub watcher: %s", exc.message)

    def refresh_balances(self) -> Publication | None:
        """Publish a balance-only version when transactions came in since the last one,
        or when the last one is past half its validity (so tills never run out)."""
        latest = self.store.latest()
        if latest is None:
            return None
        now = self.clock()
        half_life = latest.issued_at + (latest.expires_at - latest.issued_at) / 2
        if self.store.ingested_since(latest.cut) == 0 and now < half_life:
            return None
        pub = self.store.publish(
            now, self.config.snapshot_ttl_s, include_draft=False, reason="balances"
        )
        log.info("published balance refresh version %d", pub.version)
        self.notifier.update(pub)
        return pub

    def stop(self, grace: float | None = 1.0) -> None:
        self._stop.set()
        self.notifier.stop()
        if self._server is not None:
            self._server.stop(grace).wait(timeout=(grace or 0) + 5)
            self._server = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=0)
