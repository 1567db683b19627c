"""The reference hub's storage interface.

Everything the hub's gRPC service and its admin commands need from storage goes through
`HubStore`. `hub_sqlite.SqliteHubStore` implements it on one SQLite file and
`hub_postgres.PostgresHubStore` on PostgreSQL: the rules once (`hub_rules.HubRules`), the
SQL both engines share once (`hub_sql`, over a dialect), each engine's own ways in its
module (each method is one database transaction).

Data model (what an implementation must keep):

- *master data* (program, products, categories, customers, cards, offers) as revisions
  per published version, so that any published version from the *delta floor* on, and
  the delta between two of them, can be rebuilt exactly (`prune_versions` forgets the
  older ones: a till on one gets a full snapshot); imports go to a *draft* that
  `publish` turns into the next version;
- *publications*: version, issuedAt, expiresAt and the ledger *cut* (the last ingested
  transaction counted in that version) with every device's `appliedThrough` at that cut;
- the *ledger* of ingested transactions, unique on (deviceId, seq), with each device's
  highest contiguous seq;
- redemption *holds*, enrolled *devices*, and the answers already given to push batches.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tillpoint.agent.errors import InputError, TillpointError

KINDS = ("program", "product", "category", "customer", "card", "offer", "coupon")
SECTIONS = {  # snapshot section -> kind
    "products": "product",
    "categories": "category",
    "customers": "customer",
    "cards": "card",
    "offers": "offer",
    "coupons": "coupon",
}


# A ShrinkRedemption or ReleaseRedemption is worked on only while its till still waits
# this long at least (the link's jitter: the hub's deadline runs from the request's
# arrival, the till's from its sending): a till that gave up may have held the receipt
# again since (review 33, rev33b and rel33). The till gives either call this much on top
# of its `hub.redeem_timeout_ms`, which may be shorter (sync/authoriser.py).
SHRINK_MARGIN_S = 0.1


class ImportRefused(InputError):
    """An import with bad rows; nothing of it was stored."""

    def __init__(self, problems: list[str], total: int) -> None:
        more = f" (and {total - len(problems)} more)" if total > len(problems) else ""
        lines = "; ".join(problems)
        super().__init__(f"import refused, nothing was imported: {lines}{more}")
        self.problems = problems


class UnknownVersion(TillpointError):
    pass


@dataclass(frozen=True)
class ImportRow:
    """One validated row: `doc` and `text` both None remove the key; `text`, when a
    reader made it already, is the doc's canonical JSON text (the bulk reader makes only
    the text, and leaves `doc` None)."""

    kind: str
    key: str
    doc: dict[str, Any] | None
    where: str
    text: str | None = field(default=None, compare=False)

    @property
    def removes(self) -> bool:
        return self.doc is None and self.text is None


@dataclass(frozen=True)
class RowProblem:
    where: str
    message: str


@dataclass(frozen=True)
class ImportReport:
    rows: int
    by_kind: Mapping[str, int]
    removed: int


@dataclass(frozen=True)
class Publication:
    version: int
    issued_at: datetime
    expires_at: datetime
    cut: int
    reason: str
    changed_rows: int = 0


# What `TxIn.content` hashes is this encoder's text: made once (json.dumps with options
# makes one on every call, a good part of the cost of 50 contents a batch).
_CONTENT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class TxIn:
    """A transaction as the hub ingests it (from `tillpoint.v1.Transaction`)."""

    device_id: str
    seq: int
    kind: str
    at: str
    customer_id: str
    card: str
    request_json: str
    result_json: str
    delta_available: int
    delta_pending: int
    pending_activates_at: str
    fiscal_document: str = ""  # the POS's fiscal document of a confirmed receipt
    # When the batch a CHECKOUT earned expires, as the till's commit fixed it ("never", an
    # RFC 3339 time; "": not said). Worked out from the till's ledger when it is sent, as
    # `pending_activates_at` is: no part of the content. Stored as the key
    # `EARNED_EXPIRES_KEY` of the stored result (the contract §16).
    earned_expires_at: str = ""

    def content(self) -> str:
        """What identifies the transaction's content (for duplicates versus conflicts)."""
        fields = [
            self.device_id,
            self.seq,
            self.kind,
            self.at,
            self.customer_id,
            self.card,
            self.request_json,
            self.result_json,
            self.delta_available,
            self.delta_pending,
        ]
        if self.fiscal_document:  # absent from older transactions' content
            fields.append(self.fiscal_document)
        return hashlib.sha256(_CONTENT_JSON.encode(fields).encode()).hexdigest()


@dataclass(frozen=True)
class TxResult:
    seq: int
    outcome: str  # STORED, DUPLICATE, CONFLICT, REJECTED
    reason: str = ""
    # CONFLICT because another transaction holds the seq (not the receipt or refund id):
    # the till may number it again and send it again (TransactionResult.seq_taken)
    seq_taken: bool = False
    # the seq the transaction is stored under (STORED: its own; a DUPLICATE: the one that
    # holds it), 0 otherwise: resolves a set-aside entry of a seq taken (review 32). The
    # push's own work, no part of its answer: a retried batch's stored answer has none
    stored_as: int = field(default=0, compare=False)


@dataclass(frozen=True)
class IngestResult:
    acked_through: int
    results: tuple[TxResult, ...]
    replayed: bool = False  # the stored answer to a batch seen before

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)


@dataclass(frozen=True)
class Authorisation:
    authorised: int
    hold_id: str
    expires_at: datetime
    live_balance: int


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    fingerprint: str
    enrolled_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class Unsynced:
    seq: int
    receipt_id: str
    points: int
    at: str = ""  # a sale's business time (UTC text), "" when not sent
    spent: int = 0  # the points the sale redeemed (part of `points`)


@dataclass(frozen=True)
class HubBalance:
    available: int
    pending: int
    held: int = 0


@dataclass(frozen=True)
class LedgerEntry:
    device_id: str
    seq: int
    kind: str
    ref_id: str
    customer_id: str
    card: str
    delta_available: int
    delta_pending: int


@dataclass(frozen=True)
class StoredTx:
    """A transaction in the hub's ledger, as `hub receipts` and ListTransactions show it."""

    device_id: str
    seq: int
    kind: str  # CHECKOUT or REFUND
    receipt_id: str  # the sold receipt (a refund's: the one it refunds)
    refund_id: str  # REFUND only
    at: str
    customer_id: str
    card: str
    delta_available: int  # as the hub counts it
    delta_pending: int
    pending_activates_at: str
    ingested_at: str
    fiscal_document: str = ""  # a confirmed receipt's, as the till sent it (§11)


@dataclass
class HubStats:
    """Counters an operator (and a test) can read."""

    pulls: int = 0
    # the byte offsets of the last resumed downloads (not every one for the hub's life)
    resumed_pulls: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    pushes: int = 0


class HubStore(Protocol):
    def pinned(self, wait_s: float | None = None) -> AbstractContextManager[None]:
        """The calling thread's statements on one connection until the block ends;
        `wait_s`: how long the caller can wait for that connection (None: the store's
        own limit)."""
        ...

    # master data
    def import_rows(self, rows: Iterable[ImportRow | RowProblem]) -> ImportReport: ...

    def publish(
        self,
        now: datetime,
        ttl_s: float,
        *,
        include_draft: bool = True,
        reason: str = "publish",
        min_version: int = 0,
    ) -> Publication: ...

    def latest(self) -> Publication | None: ...

    def publication(self, version: int) -> Publication | None: ...

    def delta_floor(self) -> int:
        """The lowest version a delta is made from (0: any); below it, a full snapshot."""
        ...

    def prune_versions(self, before: datetime, stop: Callable[[], bool] | None = None) -> int:
        """Forget the versions older than the newest one issued at or before `before`
        (the new floor, returned): their deltas and full snapshots can no longer be made.
        Versions from the floor on, and the ledger, stay whole. A few versions a
        transaction; `stop()` true between two of them ends it there (the floor so far)."""
        ...

    def snapshot_doc(self, version: int, base_version: int) -> dict[str, Any]: ...

    def snapshot_stream(
        self, version: int, base_version: int
    ) -> Generator[tuple[str, Any], None, None]:
        """("header", dict), then (section, canonical JSON text of a row), in key order."""
        ...

    def draft_size(self) -> int: ...

    # ledger
    def ingest(
        self, device_id: str, batch_id: str, txs: list[TxIn], now: datetime
    ) -> IngestResult: ...

    def authorise(
        self,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        at: datetime,
        unsynced: list[Unsynced],
        now: datetime,
        hold_ttl_s: float,
    ) -> Authorisation:
        """Hold up to `points` for the receipt against the customer's live balance (the
        contract §9), replacing the receipt's earlier hold. `now`: the hub's clock when
        the call came; `hub_rules.Superseded`, nothing written, when the receipt has an
        ACTIVE hold or a coupon hold placed after it (review 39, grant39)."""
        ...

    def offline_limit(self) -> int:
        """The published program's `offlineRedeemLimitPoints`."""
        ...

    def newest_hold_at(self, device_id: str, receipt_id: str) -> datetime | None:
        """When the newest of the device's active hold and coupon holds of the receipt was
        placed (its stamp); None when there is none."""
        ...

    def release(
        self,
        device_id: str,
        receipt_id: str,
        *,
        placed_by: datetime | None = None,
        still_wanted: Callable[[], bool] | None = None,
    ) -> bool:
        """Drop the device's active hold for the receipt and its coupon holds; False when
        there is none. The guards of `shrink` (it is the shrink to nothing)."""
        ...

    def shrink(
        self,
        device_id: str,
        receipt_id: str,
        points: int,
        codes: list[str],
        *,
        placed_by: datetime | None = None,
        still_wanted: Callable[[], bool] | None = None,
    ) -> bool:
        """Keep the device's active hold of the receipt for at most `points` and the coupon
        holds of `codes` only (an OFFLINE hold after a late grant, the contract §11);
        never grows or places one. False when nothing was made smaller. Only holds placed
        at or before `placed_by`; nothing (`hub_rules.CallerGone`) when `still_wanted()`
        is false inside the write transaction."""
        ...

    def hold_coupons(
        self,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        codes: list[str],
        now: datetime,
        hold_ttl_s: float,
        *,
        arrived: datetime | None = None,
    ) -> list[str]:
        """Online coupon authorisation (the contract §13): the codes another receipt already
        used or holds; the others are held for this receipt until its transaction settles
        them, `release` drops them, or they expire. Replaces the receipt's earlier holds.
        `hub_rules.Superseded`, nothing written, when a hold of the receipt was placed
        after `arrived` (when the AuthorizeRedemption came); a points hold of the receipt
        placed before `arrived` (an older call's) is dropped (review 46, pgrace46)."""
        ...

    def balance(self, customer_id: str, at: datetime) -> HubBalance: ...

    def ledger(self, device_id: str | None = None) -> list[LedgerEntry]: ...

    def transactions(
        self, device_id: str, since_seq: int = 0, limit: int = 0, receipt_id: str = ""
    ) -> list[StoredTx]:
        """The device's stored transactions with seq above `since_seq`, by seq; at most
        `limit` (0: all); only those of `receipt_id` (its sale and refunds) if given."""
        ...

    def coupon_conflicts(self) -> list[dict[str, Any]]:
        """Codes used more than once (by two tills while they were offline), for review."""
        ...

    def set_aside_transactions(self, device_id: str = "") -> list[dict[str, Any]]:
        """What the hub set aside instead of storing, for review: by device, then seq."""
        ...

    def applied_through(self, device_id: str) -> int: ...

    def last_uploads(self, device_ids: list[str]) -> dict[str, str]:
        """When each device's newest transaction (highest seq) came in (UTC text); a
        device that has stored nothing is left out."""
        ...

    def holds_outstanding(self, now: datetime) -> tuple[int, int]:
        """The redemption holds placed online and neither settled nor expired at `now`:
        (how many, their points)."""
        ...

    def ingested_since(self, cut: int) -> int: ...

    # devices
    def enroll(self, device_id: str, fingerprint: str, now: datetime) -> None: ...

    def device(self, device_id: str) -> DeviceRecord | None: ...

    def devices(self) -> list[DeviceRecord]:
        """Every device enrolled (revoked ones too), by device id in code point order."""
        ...

    def revoke(self, device_id: str, now: datetime) -> bool: ...

    def build_lock(self, name: str) -> AbstractContextManager[None]:
        """Held while a snapshot file is built, across every process over this store (a
        no-op where only one machine can open it: SQLite)."""
        ...

    def durability_notes(self) -> list[str]:
        """Warnings for settings under which the store can lose a commit the hub has
        acknowledged (a till told "stored" never sends it again), said at `hub serve`;
        [] when there are none."""
        ...

    def close(self) -> None: ...
