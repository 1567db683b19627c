"""The hub's rules, once, in plain code over a small storage interface.

Dedupe on (deviceId, seq), settling what a transaction moves, hold accounting
(authorise/release), balances, and what a snapshot contains live here. A store
(`hub_sqlite.SqliteHubStore`, `hub_postgres.PostgresHubStore`) only supplies `HubTx`, one
open database transaction offering primitives (read a row, insert a row, sum some
columns, stream rows in key order), and its own bulk paths (import, publish). Both stores
therefore answer every question the same way, and one test suite runs over both.

Concurrency: every rule runs inside one `HubTx`. `write_tx()` opens a write transaction;
`lock_device` and `lock_customers` make ingest of one device, and the hold accounting of
one customer, one at a time across every process over the same database (SQLite's
`BEGIN IMMEDIATE` already serialises all writers; PostgreSQL takes transaction-scoped
advisory locks); `lock_receipt` makes the authorisations of one receipt (its points step,
its coupon step) one at a time. Ingest takes its device's lock first and then the
customers' in sorted order; authorise takes its receipt's and then its customer's; the
coupon step its receipt's only; every advisory lock before any row is written: no two
transactions wait for each other in a circle (docs/DECISIONS.md, "Review 46 (pgrace46)").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from pydantic import ValidationError
from pydantic.alias_generators import to_camel
from tillpoint.agent.coupons import issued_by, issued_prefix
from tillpoint.agent.errors import InputError, NotFound
from tillpoint.agent.expiry import Movement, Wallet, expiry_time, wallet_of
from tillpoint.agent.ledger import utc_text
from tillpoint.agent.limits import INT64_MAX, INT64_MIN, has_lone_surrogate, is_utf8_text
from tillpoint.agent.models import (
    Coupon,
    Program,
    _timestamp,
    describe,
    fits_int64,
)
from tillpoint.agent.pricing import activation_time

from .hub_store import (
    SECTIONS,
    Authorisation,
    HubBalance,
    IngestResult,
    Publication,
    TxIn,
    TxResult,
    UnknownVersion,
    Unsynced,
)

log = logging.getLogger("tillpoint.hub")


class CallerGone(Exception):
    """The call's caller stopped waiting before its write: nothing was written."""


class Superseded(CallerGone):
    """An AuthorizeRedemption that came to the hub before the receipt's ACTIVE hold (or a
    coupon hold of it) was placed: that newer hold is the receipt's, and the late call
    writes nothing (review 39, grant39). Its till stopped waiting long since (it held the
    receipt again only after this call's deadline), and is answered as such a call is."""


def _refuse_if_superseded(tx: HubTx, device_id: str, receipt_id: str, arrived: str) -> None:
    """`Superseded` when the device's receipt has an ACTIVE hold or a coupon hold placed
    after `arrived` (UTC text: the hub's clock when the call came)."""
    stamp = tx.newest_hold_stamp(device_id, receipt_id)
    if stamp is not None and stamp > arrived:
        raise Superseded(f"a newer hold of receipt {receipt_id} was placed since this call came")


Texts = Iterator[tuple[str, str]]  # (key, canonical JSON text of the row) of a kind, in key order
# One counted transaction's points (the contract §16): (points available,
# pending_activates_at, pending points, its `at` when it moves available points or is a
# refund, the part of them earned at once at a checkout, its receipt (`RECEIPT_KEY`; a
# refund's: the receipt it refunds), its kind, the points a refund gives back, when a
# sale's earned batch expires as its till's commit fixed it (`EARNED_EXPIRES_KEY`: "never"
# or UTC text; None: not said, a till of an earlier release)). The hub replays them as the
# till replays its own movements: a spend takes the batches not expired at its time, the
# points a sale earned expire when its commit said (else `pointsLifetimeDays` after they
# become spendable, the lifetime the hub holds), and a refund gives points back to the
# batches its sale took them from.
Move = tuple[int, str | None, int, str | None, int, str, str, int, str | None]
# The key of a stored CHECKOUT's result that holds `TxIn.earned_expires_at` (the contract
# §16: the expiry of earned points is fixed at commit), and its value for "never expires".
EARNED_EXPIRES_KEY = "earnedExpiresAt"
NEVER = "never"
# A known customer's sale that earned its points at once: it moves available points even
# when it spent as many as it earned (its delta 0). Such a sale was left out: the hub did
# not take the spend from the soonest-expiring batch nor start the earned batch, and said
# other points than the till once a batch expired.
EARNED_WHEN = "kind = 'CHECKOUT' AND delta_pending = 0 AND customer_id != ''"
MOVED_AT = f"CASE WHEN delta_available != 0 OR kind = 'REFUND' OR ({EARNED_WHEN}) THEN at END"
# A sale's receipt as its moves name it (a refund's: the receipt it refunds), unambiguous
# across devices: the device id's length, the device id, the receipt id.
RECEIPT_KEY = "length(t.device_id) || ':' || t.device_id || t.receipt_id"
CouponUse = tuple[str, str, int, str, str, str]  # code, device, seq, receipt, customer, at
BATCH_ANSWER_DAYS = 30
ADVANCE_PAGE = 1000
CLAIM_TRIES = 3  # optimistic authorisations before the one under the lock


class HubTx(Protocol):
    """One open database transaction: the primitives the rules are built from."""

    # -- master data and publications
    def latest_version(self) -> int: ...

    def publication(self, version: int) -> Publication | None: ...

    def text_as_of(self, kind: str, key: str, version: int) -> str | None:
        """The row's canonical JSON text at `version`; None when absent or removed."""
        ...

    def texts_as_of(self, kind: str, version: int) -> Texts:
        """Every row of `kind` at `version`, in key order (code point order), streamed."""
        ...

    def keys_changed(self, kind: str, base: int, version: int) -> list[str]:
        """Keys of `kind` with a revision in (base, version], in key order."""
        ...

    def cards_ever_of(self, customer_id: str) -> list[str]:
        """Cards any revision ever gave to the customer (the rules check the current owner)."""
        ...

    def progress_at(self, version: int) -> dict[str, int]:
        """Every device's appliedThrough at the publication `version`, by device."""
        ...

    # -- the ledger
    def stored_receipt(self, device_id: str, seq: int) -> str | None:
        """The receiptId of the transaction stored under (device, seq) (a refund's: its
        sale's); None when none is."""
        ...

    def stored_contents(self, device_id: str, seqs: list[int]) -> dict[int, str]:
        """The content hashes of those of `seqs` the device has stored (one round trip)."""
        ...

    def seqs_after(self, device_id: str, seq: int, limit: int) -> list[int]:
        """The device's stored seqs above `seq`, ascending, at most `limit`."""
        ...

    def insert_transaction(self, tx: TxIn, fields: dict[str, Any], content: str, now: str) -> None:
        """Store `tx` with the fields the rules settled (receipt_id, ref_id, available,
        pending, activates)."""
        ...

    def set_aside(
        self,
        tx: TxIn,
        outcome: str,
        reason: str,
        content: str,
        payload: str,
        now: str,
        seq_taken: bool = False,
    ) -> None: ...

    def open_seq_taken(self, device_id: str) -> list[tuple[int, str]]:
        """(id, payload) of the device's set-aside entries of a seq taken (`seq_taken`)
        not resolved yet."""
        ...

    def resolve_set_aside(self, entry_id: int, stored_seq: int, now: str) -> None:
        """The entry's sale or refund is stored under `stored_seq` (review 32)."""
        ...

    def booked(
        self, device_id: str, kind: str, receipt_id: str, ref_id: str
    ) -> tuple[int, str] | None: ...

    def checkout_pending(self, device_id: str, receipt_id: str) -> tuple[str | None, int] | None:
        """(pending_activates_at of the receipt's CHECKOUT, pending points left on the
        receipt over all its transactions); None without a CHECKOUT."""
        ...

    def contiguous_through(self, device_id: str) -> int | None: ...

    def set_contiguous_through(self, device_id: str, through: int) -> None: ...

    def batch_answer(self, device_id: str, batch_id: str) -> tuple[str, str] | None:
        """(content hash, answer JSON) given to the batch before."""
        ...

    def save_batch_answer(
        self, device_id: str, batch_id: str, content: str, answer: str, now: str, prune_before: str
    ) -> None: ...

    def live_moves(self, customer_id: str, cards: list[str]) -> list[Move]:
        """Every stored transaction of the customer (and UNKNOWN-card ones of `cards`) as a
        `Move`, in the order they were stored."""
        ...

    # -- what a publication counts (see `snapshot_stream`)
    def newly_counted(self, base: Publication, pub: Publication) -> Iterable[tuple[str, str]]:
        """(customer_id, card) of transactions counted at `pub` but not at `base`."""
        ...

    def reowned_cards(self, base: Publication, pub: Publication) -> Iterable[str]:
        """Cards with a revision in (base, pub] that have UNKNOWN-card points up to the cut."""
        ...

    def counted_card_moves(self, pub: Publication) -> Iterable[tuple[Any, ...]]:
        """(card, *`Move`) of counted UNKNOWN-card transactions."""
        ...

    def counted_customer_moves(
        self, pub: Publication, only: set[str] | None
    ) -> Iterable[tuple[Any, ...]]:
        """(customer, *the columns of a `Move`) of each counted transaction, in customer
        order and then the order they were stored (only those of `only` if given)."""
        ...

    # -- coupons (the contract §13)
    def coupon_first_use(self, code: str) -> tuple[str, str] | None:
        """(device_id, receipt_id) of the code's first recorded use."""
        ...

    def record_coupon_use(self, row: CouponUse) -> tuple[str, str] | None:
        """Record the code's first use; None when it is, else the first use another
        server recorded meanwhile (which is then kept)."""
        ...

    def record_coupon_conflict(self, row: CouponUse) -> None:
        """Kept once per (code, device, seq)."""
        ...

    def put_till_coupon(self, code: str, doc: str | None) -> None:
        """Set a coupon row of the next publication (None: remove the code) that a till's
        transaction decides (a code's first use, a till-issued code): the next balance
        refresh publishes it, as `hub publish` does."""
        ...

    def drop_coupon_holds_of(self, device_id: str, receipt_ids: list[str]) -> None:
        """Drop the device's coupon holds of `receipt_ids` (their sales used the codes),
        in one statement a chunk."""
        ...

    def clear_coupon_holds(self, device_id: str, receipt_id: str, now: str) -> None:
        """Drop every coupon hold expired at `now` (``expires_at <= now``) and the
        device's of the receipt, in one statement (PostgreSQL: its rows locked in code
        order; review 47, pg47)."""
        ...

    def keep_coupon_holds(
        self, device_id: str, receipt_id: str, codes: list[str], placed_by: str
    ) -> int:
        """Drop the receipt's coupon holds of codes not in `codes` placed at or before
        `placed_by` (UTC text); how many were dropped."""
        ...

    def coupon_held(self, code: str) -> bool: ...

    def hold_coupon(
        self, code: str, device_id: str, receipt_id: str, customer_id: str, now: str, expires: str
    ) -> bool:
        """Hold the code for the receipt; False when another server held it meanwhile."""
        ...

    # -- holds
    def lock_device(self, device_id: str) -> None: ...

    def lock_customers(self, customer_ids: Iterable[str]) -> None: ...

    def lock_settling(
        self,
        customer_ids: list[str],
        device_id: str,
        keys: list[str],
        receipts: Sequence[str] = (),
    ) -> None:
        """The receipt locks (`lock_receipt`) of the device's `receipts` (sorted), then
        `lock_customers` of `customer_ids` and of the device's ACTIVE holds of `keys` (an
        ingest's: the holds it may settle, whoever they are for), all sorted, read once
        the receipts' locks are held (review 47, pg47; the receipts: review 48, pg48)."""
        ...

    def lock_receipt(self, device_id: str, receipt_id: str) -> None:
        """Until the transaction ends: one authorisation step of the device's receipt at
        a time (`hold_coupons`, `authorise`, `claim_hold`: each one's `Superseded` check,
        then its writes). Taken before the customer's lock, never after it."""
        ...

    def expire_holds(self, customer_id: str, now: str) -> None: ...

    def active_holds_at(self, customer_id: str) -> list[tuple[str, str, int, str]]:
        """(device_id, receipt_id, points, the receipt's time in UTC text or "" when not
        known) of the customer's ACTIVE holds."""
        ...

    def held(self, customer_id: str, now: str) -> int: ...

    def settle_holds(self, device_id: str, receipt_ids: list[str]) -> None: ...

    def upsert_hold(
        self,
        hold_id: str,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        now: str,
        expires: str,
        at: str = "",
    ) -> None:
        """Insert the hold, or make the device's hold of that receipt ACTIVE with these
        points and expiry; `at`: the receipt's time (UTC text), "" when not known."""
        ...

    def newest_hold_stamp(self, device_id: str, receipt_id: str) -> str | None:
        """The latest `created_at` (UTC text) of the device's ACTIVE hold and coupon holds
        of the receipt; None when it has none."""
        ...

    def shrink_hold(self, device_id: str, receipt_id: str, points: int, placed_by: str) -> int:
        """The device's ACTIVE hold of the receipt, placed at or before `placed_by` (UTC
        text), made `points` when it holds more (0: dropped); never grown, a SETTLED one
        or one placed later left as it is. How many holds changed."""
        ...

    def delete_hold(self, device_id: str, receipt_id: str) -> int:
        """Drop the device's hold of the receipt, ACTIVE or SETTLED; how many."""
        ...

    def receipt_settled(self, device_id: str, receipt_id: str) -> bool:
        """Whether the device's receipt is already committed here: its CHECKOUT stored, or
        its hold SETTLED (by that transaction, or by the till's unsynced movements)."""
        ...

    def ledger_mark(self, customer_id: str, cards: list[str]) -> str:
        """What changes whenever `HubRules.live` of the customer may: the latest version,
        and the count and highest ingest id of the customer's transactions (and of the
        UNKNOWN-card ones of `cards`)."""
        ...


class HubRules:
    """The rules of `HubStore` that are not bulk storage; a store subclasses it and
    supplies `write_tx` and `read_tx`."""

    def write_tx(self) -> AbstractContextManager[HubTx]:
        raise NotImplementedError

    def read_tx(self) -> AbstractContextManager[HubTx]:
        raise NotImplementedError

    # ------------------------------------------------------------ master data

    @staticmethod
    def doc_as_of(tx: HubTx, kind: str, key: str, version: int) -> dict[str, Any] | None:
        text = tx.text_as_of(kind, key, version)
        return None if text is None else dict(json.loads(text))

    def program(self, tx: HubTx) -> Program:
        return _program_of(tx.text_as_of("program", "", tx.latest_version()))

    # ------------------------------------------------------------ ledger

    def ingest(self, device_id: str, batch_id: str, txs: list[TxIn], now: datetime) -> IngestResult:
        contents = [t.content() for t in txs]  # each worked out once (a JSON text and a hash)
        batch_hash = hashlib.sha256("\n".join(contents).encode()).hexdigest()
        with self.write_tx() as tx:
            tx.lock_device(device_id)
            if batch_id:
                found = tx.batch_answer(device_id, batch_id)
                if found is not None and found[0] == batch_hash:
                    answer = json.loads(found[1])
                    answered = tuple(
                        # [seq, outcome, reason] and, since review 32, seq_taken
                        TxResult(int(r[0]), str(r[1]), str(r[2]), bool(r[3:] and r[3]))
                        for r in answer["results"]
                    )
                    # what the till's requests held since under a seq this answer set
                    # aside (the answer lost, the sale still unsent there) goes, as it did
                    # the first time (`_ingest_one`): the till sends it under its new seq
                    gone = [
                        f"seq:{r.seq}" for r in answered if r.seq_taken or r.outcome == "REJECTED"
                    ]
                    if gone:
                        tx.lock_settling(_customers(txs), device_id, gone)
                        tx.settle_holds(device_id, gone)
                    return IngestResult(int(answer["ackedThrough"]), answered, replayed=True)
            # The customers whose holds this batch settles, before anything is read: its
            # sales' and those its receipts and seqs are held for now (a receipt held for
            # one card and sold with another). Without the latter, settling another
            # customer's holds by the receipt index beside that customer's claim expiring
            # them in the heap's order met two rows in opposite orders ("deadlock
            # detected"; review 47, pg47). Those customers are read once the locks of the
            # batch's receipts are held (an authorisation step of one of them waits for
            # this ingest, or has committed and is read here): a late call's hold for a
            # customer not locked here, placed while the ingest ran, stayed ACTIVE for
            # the sold receipt (review 48, pg48).
            tx.lock_settling(_customers(txs), device_id, _settle_keys(txs), _settle_receipts(txs))
            program = self.program(tx)
            stored: dict[tuple[str, int], str] = {}  # what is stored of the batch's seqs
            for dev in {t.device_id for t in txs}:
                seqs = [t.seq for t in txs if t.device_id == dev]
                known = tx.stored_contents(dev, seqs)
                stored.update({(dev, seq): content for seq, content in known.items()})
            settled: dict[str, list[str]] = defaultdict(list)  # device -> hold receipt keys
            sold: dict[str, list[str]] = defaultdict(list)  # device -> receipts sold
            # (device, receipt) of the batch's sales whose seq is taken: numbered again
            renumbered: set[tuple[str, str]] = set()
            # The batch's coupon rows (uses, till-issued codes): (code, turn, what)
            coupons: list[tuple[str, int, CouponUse | dict[str, Any]]] = []
            results = [
                self._ingest_one(
                    tx, t, content, program, now, stored, settled, sold, renumbered, coupons
                )
                for t, content in zip(txs, contents, strict=True)
            ]
            # ... written after its transactions, in code order (each code's in the
            # batch's order: the same rows as one by one). In the batch's order, two
            # pushes using K1, K2 and K2, K1 (a code used at two tills offline) each
            # waited for the other's uncommitted use, and PostgreSQL failed one ("deadlock
            # detected"); an import writes the draft's rows in key order too (review 47,
            # pg47). Nothing of the ingest reads these rows before its end.
            for _, _, what in sorted(coupons, key=lambda item: item[:2]):
                if isinstance(what, dict):
                    self._issue_coupon(tx, what)
                else:
                    self._use_coupon(tx, what)
            self._resolve_taken(tx, txs, results, now)
            # The holds these transactions make real: their receipts', and those of
            # their seqs (nothing in between reads the holds: settled once, at the end).
            for dev, keys in settled.items():
                tx.settle_holds(dev, keys)
            for dev, receipts in sold.items():  # their coupons used now, no longer held
                tx.drop_coupon_holds_of(dev, receipts)
            through = self._advance(tx, device_id)
            ack = {
                "ackedThrough": through,
                "results": [
                    [r.seq, r.outcome, r.reason, *([True] if r.seq_taken else [])] for r in results
                ],
            }
            if batch_id:
                tx.save_batch_answer(
                    device_id,
                    batch_id,
                    batch_hash,
                    json.dumps(ack),
                    utc_text(now),
                    utc_text(now - timedelta(days=BATCH_ANSWER_DAYS)),
                )
        return IngestResult(through, tuple(results))

    def _ingest_one(
        self,
        tx: HubTx,
        t: TxIn,
        content: str,
        program: Program,
        now: datetime,
        stored: dict[tuple[str, int], str],
        settled: dict[str, list[str]],
        sold: dict[str, list[str]],
        renumbered: set[tuple[str, str]],
        coupons: list[tuple[str, int, CouponUse | dict[str, Any]]],
    ) -> TxResult:
        existing = stored.get((t.device_id, t.seq))
        if existing is not None:
            if existing == content:
                return TxResult(t.seq, "DUPLICATE", stored_as=t.seq)
            reason = (
                f"seq {t.seq} of {t.device_id} is already stored with other content: two"
                f" tills may be running as {t.device_id} (one enrolment bundle installed on"
                " both, a cloned disk), or its ledger was restored from an old backup"
            )
            # a sale or refund: the till numbers it again and sends it again (review
            # 32), then the dedupe on its receipt or refund id (`_booked_before`)
            # decides. A till-issued coupon (a person decides between two clones' codes)
            # or a discarded seq (nothing to send again) is no seq taken (rev32d): it
            # said "the till numbers it again" and its entry could never read resolved
            taken = t.kind in ("CHECKOUT", "REFUND")
            self._set_aside(tx, t, "CONFLICT", reason, content, now, seq_taken=taken)
            if t.kind == "CHECKOUT" and _request_receipt(t):
                renumbered.add((t.device_id, _request_receipt(t)))
            # what was held for it unsent under this seq goes: the till sends it (and
            # asks with it) under its new seq from now on
            settled[t.device_id].append(f"seq:{t.seq}")
            return TxResult(t.seq, "CONFLICT", reason, seq_taken=taken)
        if t.kind == "REFUND" and renumbered:
            receipt_id = _request_receipt(t)
            if (t.device_id, receipt_id) in renumbered:
                # its sale, earlier in this batch, comes back under a seq above this one:
                # stored now, the refund would count without its sale (its points given
                # back into no batch, §16) until the sale came; numbered again after it
                # words true of a till of either release (rev32d): one before review 32
                # reads no seq_taken and sets both aside for good, numbering nothing
                reason = (
                    f"its sale {receipt_id} is numbered again at the till if it can (the hub"
                    f" holds the sale's seq with another transaction of {t.device_id}), and"
                    " the refund after it; a till of an earlier release sets both aside:"
                    " the refund is never counted without its sale"
                )
                # a seq taken as its sale's is (hub32b): resolved once stored again
                self._set_aside(tx, t, "CONFLICT", reason, content, now, seq_taken=True)
                settled[t.device_id].append(f"seq:{t.seq}")  # as for its sale, above
                return TxResult(t.seq, "CONFLICT", reason, seq_taken=True)
        try:
            fields = self.settle(tx, t, program)
        except ValueError as exc:
            reason = str(exc)
            self._set_aside(tx, t, "REJECTED", reason, content, now)
            # never counted: the hold `authorise` placed for it while it was unsent (its
            # "seq:N") goes with it, or the hub held its spend from the other tills for
            # the hold's whole time (review 32: an earlier release's NUL receiptId)
            settled[t.device_id].append(f"seq:{t.seq}")
            return TxResult(t.seq, "REJECTED", reason)
        twin = self._booked_before(tx, t, fields)
        if twin is not None:  # DUPLICATE or CONFLICT: never counted twice
            self._set_aside(tx, t, twin.outcome, twin.reason, content, now)
            # but the till committed it: what its hold reserved here is settled with it
            settled[t.device_id] += [f"seq:{t.seq}", fields["receipt_id"]]
            sold[t.device_id].append(fields["receipt_id"])
            return twin
        tx.insert_transaction(t, fields, content, utc_text(now))
        stored[(t.device_id, t.seq)] = content
        if t.kind == "CHECKOUT":
            for use in self._coupon_uses(t, fields["receipt_id"]):
                coupons.append((use[0], len(coupons), use))
        elif t.kind == "COUPON_ISSUED":
            coupons.append((str(fields["coupon"]["code"]), len(coupons), fields["coupon"]))
        # The holds this transaction makes real: its receipt's, and the one for its seq.
        settled[t.device_id].append(f"seq:{t.seq}")
        if t.kind == "CHECKOUT":
            settled[t.device_id].append(fields["receipt_id"])
            sold[t.device_id].append(fields["receipt_id"])
        return TxResult(t.seq, "STORED", stored_as=t.seq)

    @staticmethod
    def _booked_before(tx: HubTx, t: TxIn, fields: dict[str, Any]) -> TxResult | None:
        """A receipt or refund this device's ledger already holds under another seq: the
        same sale sent again after the till lost its ledger (a reset, a re-imaged disk),
        which the (deviceId, seq) dedupe cannot see. The same request is a DUPLICATE,
        another one under the same id a CONFLICT; either way it is not counted again (the
        contract §5: idempotent on receiptId; §9: exactly once in effect)."""
        if t.kind not in ("CHECKOUT", "REFUND"):
            return None
        found = tx.booked(t.device_id, t.kind, fields["receipt_id"], fields["ref_id"])
        if found is None:
            return None
        seq, request_json = found
        what = f"{'receipt' if t.kind == 'CHECKOUT' else 'refund'} {fields['ref_id']}"
        if json.loads(request_json) == json.loads(t.request_json):
            reason = f"{what} is already stored as seq {seq} of {t.device_id}: sent again"
            return TxResult(t.seq, "DUPLICATE", reason, stored_as=seq)
        reason = f"{what} is already stored as seq {seq} of {t.device_id} with another request"
        return TxResult(t.seq, "CONFLICT", reason)

    @staticmethod
    def _set_aside(
        tx: HubTx,
        t: TxIn,
        outcome: str,
        reason: str,
        content: str,
        now: datetime,
        seq_taken: bool = False,
    ) -> None:
        payload = json.dumps(t.__dict__, ensure_ascii=False)
        tx.set_aside(t, outcome, reason, content, payload, utc_text(now), seq_taken)

    @staticmethod
    def _resolve_taken(tx: HubTx, txs: list[TxIn], results: list[TxResult], now: datetime) -> None:
        """The set-aside entries of a seq taken (`seq_taken`) whose sale or refund this
        batch stored, or found stored (the same request under another seq), read resolved
        from now on, with that seq: the till numbered it again and it counts once. An
        entry whose id the hub holds with another request stays to be reviewed (review
        32, docs/CONTRACT.md §9)."""
        landed: dict[str, list[tuple[TxIn, int]]] = defaultdict(list)
        for t, r in zip(txs, results, strict=True):
            if r.stored_as and t.kind in ("CHECKOUT", "REFUND"):
                landed[t.device_id].append((t, r.stored_as))
        for device_id, items in landed.items():
            entries = tx.open_seq_taken(device_id)
            if not entries:
                continue
            waiting: dict[tuple[str, str], list[tuple[int, Any]]] = defaultdict(list)
            for entry_id, payload in entries:
                with contextlib.suppress(ValueError, TypeError, KeyError, RecursionError):
                    doc = json.loads(payload)
                    request = json.loads(doc["request_json"])
                    waiting[(str(doc["kind"]), _ref_of(str(doc["kind"]), request))].append(
                        (entry_id, request)
                    )
            for t, seq in items:
                try:
                    request = json.loads(t.request_json)
                except (ValueError, RecursionError):
                    continue
                for entry_id, asked in waiting.get((t.kind, _ref_of(t.kind, request)), []):
                    if asked == request:
                        tx.resolve_set_aside(entry_id, seq, utc_text(now))

    def settle(self, tx: HubTx, t: TxIn, program: Program) -> dict[str, Any]:
        """Check a transaction and work out the points it moves, as the hub counts them."""
        if t.seq < 1:
            raise ValueError("seq must be 1 or more")
        if t.kind == "DISCARDED":
            raise ValueError(
                "discarded unsent at the till (`tillpoint reset --force`, or a seq it"
                " numbered again and a hub restored from a backup lost): nothing to count"
            )
        if t.kind not in ("CHECKOUT", "REFUND", "COUPON_ISSUED"):
            raise ValueError(f"unknown kind {t.kind!r}")
        _storable(t)
        try:
            at = _timestamp(t.at)
            request = json.loads(t.request_json)
            result = json.loads(t.result_json)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unreadable transaction: {exc}") from None
        except RecursionError:  # a failure of the whole push (UNKNOWN) until review 31
            raise ValueError("unreadable transaction: JSON nested too deeply") from None
        for name, text, doc in (
            ("request", t.request_json, request),
            ("result", t.result_json, result),
        ):
            if "\\u" in text and has_lone_surrogate(doc):
                # no UTF-8 text holds one: a store's text column refused it, and the
                # whole push failed (UNKNOWN) until review 31 (docs/CONTRACT.md §10)
                raise ValueError(
                    f"unreadable transaction: {name}Json holds a lone UTF-16 surrogate"
                    " (\\ud800 to \\udfff, not half of a pair)"
                )
        if not isinstance(request, dict) or not isinstance(result, dict):
            raise ValueError("requestJson and resultJson must be JSON objects")
        receipt_id = str(request.get("receiptId") or "")
        if not receipt_id:
            raise ValueError("the request has no receiptId")
        _storable_id("receiptId", receipt_id)
        if t.kind == "COUPON_ISSUED":
            return self._settle_issued(t, request, receipt_id)
        ref_id = receipt_id if t.kind == "CHECKOUT" else str(request.get("refundId") or "")
        if not ref_id:
            raise ValueError("the refund has no refundId")
        _storable_id("refundId", ref_id)
        available, pending = t.delta_available, t.delta_pending
        activates: str | None = None
        if pending:
            if not t.pending_activates_at:
                raise ValueError("pending points without pendingActivatesAt")
            try:
                activates = utc_text(_timestamp(t.pending_activates_at))
            except ValueError as exc:
                raise ValueError(f"pendingActivatesAt: {exc}") from None
        if not t.customer_id and t.card:
            # An UNKNOWN card: the till counted nothing; the hub settles the points it
            # earned (or loses) so that they reach the customer once the card is known.
            available, pending, activates = self._settle_unknown(
                tx, t, at, result, receipt_id, program
            )
        fields: dict[str, Any] = {
            "receipt_id": receipt_id,
            "ref_id": ref_id,
            "available": available,
            "pending": pending,
            "activates": activates,
        }
        if t.kind == "CHECKOUT":
            stored = _with_earned_expiry(t, result)
            if stored is not None:
                fields["result_json"] = stored
        return fields

    @staticmethod
    def _settle_issued(t: TxIn, request: dict[str, Any], receipt_id: str) -> dict[str, Any]:
        """A coupon a till issued: checked whole; it moves no points."""
        if t.delta_available or t.delta_pending:
            raise ValueError("an issued coupon moves no points")
        try:
            coupon = Coupon.model_validate(request.get("coupon"))
        except ValidationError as exc:
            raise ValueError(f"coupon: {describe(exc)}") from None
        if not issued_by(coupon.code, t.device_id):
            raise ValueError(
                f"coupon {coupon.code} is not one of {t.device_id}'s own codes"
                f" ({issued_prefix(t.device_id)}…)"
            )
        return {
            "receipt_id": receipt_id,
            "ref_id": coupon.code,
            "available": 0,
            "pending": 0,
            "activates": None,
            "coupon": coupon.model_dump(mode="json", by_alias=True, exclude_none=True),
        }

    @staticmethod
    def _issue_coupon(tx: HubTx, doc: dict[str, Any]) -> None:
        """A till-issued code goes into the next snapshot for every till, unless it was
        already used (then it has nothing to do there)."""
        code = str(doc["code"])
        if tx.coupon_first_use(code) is None:
            tx.put_till_coupon(code, canon(doc))

    @staticmethod
    def _coupon_uses(t: TxIn, receipt_id: str) -> list[CouponUse]:
        """The codes a checkout used (APPLIED), as rows of `coupon_uses`."""
        result = json.loads(t.result_json)
        verdicts = result.get("coupons") if isinstance(result, dict) else None
        uses: list[CouponUse] = []
        for verdict in verdicts if isinstance(verdicts, list) else ():
            if not isinstance(verdict, dict) or verdict.get("status") != "APPLIED":
                continue
            code = str(verdict.get("code") or "")
            if code:
                uses.append((code, t.device_id, t.seq, receipt_id, t.customer_id, t.at))
        return uses

    @staticmethod
    def _use_coupon(tx: HubTx, row: CouponUse) -> None:
        """A code a checkout used: its first use is recorded (and the code leaves the next
        snapshot); a later use elsewhere is a conflict, and the sale stands."""
        code, device_id, _, receipt_id, _, _ = row
        first = tx.coupon_first_use(code) or tx.record_coupon_use(row)
        if first is None:
            tx.put_till_coupon(code, None)  # the first use: the code leaves
        elif first != (device_id, receipt_id):
            tx.record_coupon_conflict(row)

    @staticmethod
    def _settle_unknown(
        tx: HubTx,
        t: TxIn,
        at: datetime,
        result: dict[str, Any],
        receipt_id: str,
        program: Program,
    ) -> tuple[int, int, str | None]:
        if t.kind == "CHECKOUT":
            earned = _points_of(result, "earnedPoints")
            due = activation_time(at, program)
            if earned and due > at:
                return 0, earned, utc_text(due)
            return earned, 0, None
        taken = _points_of(result, "takenBackPoints")
        returned = _points_of(result, "returnedPoints")
        row = tx.checkout_pending(t.device_id, receipt_id)
        pending = 0
        activates: str | None = None
        if row is not None and row[0] and at < _when(row[0]):
            from_pending = max(0, min(taken, int(row[1])))
            if from_pending:
                pending, activates, taken = -from_pending, str(row[0]), taken - from_pending
        return _int64(returned - taken, "the refund's points"), pending, activates

    @staticmethod
    def _advance(tx: HubTx, device_id: str) -> int:
        found = tx.contiguous_through(device_id)
        through = found or 0
        start = through
        while True:  # the stored seqs above it, a page at a time, while they follow on
            page = tx.seqs_after(device_id, through, ADVANCE_PAGE)
            for seq in page:
                if seq != through + 1:
                    break
                through = seq
            else:
                if len(page) == ADVANCE_PAGE:
                    continue
            break
        if found is None or through != start:
            tx.set_contiguous_through(device_id, through)
        return through

    # ------------------------------------------------------------ balances and holds

    def live(self, tx: HubTx, customer_id: str, at: datetime) -> tuple[int, int] | None:
        """(available, pending) at `at` over everything ingested; None: unknown customer."""
        return _live_points(self._live_inputs(tx, customer_id, marked=False), at)

    def _live_inputs(self, tx: HubTx, customer_id: str, *, marked: bool) -> LiveInputs:
        latest = tx.latest_version()
        customer = tx.text_as_of("customer", customer_id, latest)
        if customer is None:
            return LiveInputs(latest, None, None, [], [], "")
        cards = [
            key
            for key in tx.cards_ever_of(customer_id)
            if (self.doc_as_of(tx, "card", key, latest) or {}).get("customerId") == customer_id
        ]
        return LiveInputs(
            latest,
            customer,
            tx.text_as_of("program", "", latest),
            cards,
            tx.live_moves(customer_id, cards),
            tx.ledger_mark(customer_id, cards) if marked else "",
        )

    def live_inputs(self, customer_id: str) -> LiveInputs:
        """What `live` counts, of one consistent state, with the customer's ledger mark (a
        store may read it in one statement: PostgreSQL does)."""
        with self.read_tx() as tx:
            return self._live_inputs(tx, customer_id, marked=True)

    def balance(self, customer_id: str, at: datetime) -> HubBalance:
        with self.read_tx() as tx:
            live = self.live(tx, customer_id, at)
            if live is None:
                raise NotFound(f"customer {customer_id} is not known to the hub")
            held = tx.held(customer_id, utc_text(datetime.now(UTC)))
            return HubBalance(live[0], live[1], held)

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
        for item in unsynced:  # an unsent spend is held as its negation: it must fit int64
            if item.points < -INT64_MAX:
                raise InputError(
                    f"unsynced seq {item.seq}: points {item.points} is out of range"
                    f" (at least {-INT64_MAX})"
                )
        if not unsynced:  # the common case: the customer's lock held for one short step
            for _ in range(CLAIM_TRIES):
                claimed = self._authorise_optimistic(
                    device_id, receipt_id, customer_id, points, at, now, hold_ttl_s
                )
                if claimed is not None and (
                    claimed.authorised >= points
                    or not self._holds_before(customer_id, device_id, receipt_id, at)
                ):
                    return claimed
                if claimed is not None:
                    break  # other receipts' holds to replay at their times: under the lock
        # The till's unsynced movements (or a ledger that kept moving, or other receipts'
        # holds of known times before this one): all under the lock.
        with self.write_tx() as tx:
            # The receipt's lock before the customer's, both before the check: a newer
            # call's coupon step (under the receipt's lock only) committed between the
            # check and the hold below left this older call's points held for the receipt
            # (review 46, pgrace46)
            tx.lock_receipt(device_id, receipt_id)
            tx.lock_customers([customer_id])
            if not tx.receipt_settled(device_id, receipt_id):
                _refuse_if_superseded(tx, device_id, receipt_id, utc_text(now))
            tx.expire_holds(customer_id, utc_text(now))
            inputs = self._live_inputs(tx, customer_id, marked=False)
            spendable = 0
            spends: list[Move] = []  # spends replayed at their times (§16)
            expires = now + timedelta(seconds=hold_ttl_s)
            mine = {receipt_id}
            for item in unsynced:
                stored = tx.stored_receipt(device_id, item.seq)
                if stored is not None and stored == (item.receipt_id or stored):
                    continue  # received (an id the hub refuses is sent as "": by its seq)
                # Another receipt under its seq (two tills under one device id, a wiped
                # till's sales) is not this movement: the till numbers it again and sends
                # it (review 32), and it counts and is held until then as any unsent one
                # The till's own movement the hub has not received: it counts now, and a
                # spend is held for the other tills until the transaction arrives (its
                # receipt's own hold, if any, is replaced so nothing is held twice). A
                # sale's redemption at or before `at` is replayed at its time, as the hub
                # will once the sale arrives: soonest-expiring first (§16).
                sold = _aware(item.at)
                if sold is not None and sold <= at and item.spent > 0:
                    spends.append(
                        (
                            -item.spent,
                            None,
                            0,
                            utc_text(sold),
                            0,
                            f"seq:{item.seq}",
                            "CHECKOUT",
                            0,
                            None,
                        )
                    )
                    spendable += item.points + item.spent
                else:
                    spendable += item.points
                key = f"seq:{item.seq}"
                mine.add(key)
                tx.settle_holds(device_id, [item.receipt_id])
                if item.points < 0:
                    tx.upsert_hold(
                        uuid.uuid4().hex,
                        device_id,
                        key,
                        customer_id,
                        -item.points,
                        utc_text(now),
                        utc_text(expires),
                        "" if sold is None else utc_text(sold),
                    )
            # The other receipts' holds: one of a receipt at or before `at` is replayed as
            # that receipt's spend at its time (soonest-expiring first, §16: what it takes
            # from a batch that has expired by `at` is gone from `at`'s balance already);
            # one of a later or unknown time is taken off the balance as it is.
            held = 0
            for dev, rid, pts, when in tx.active_holds_at(customer_id):
                if dev == device_id and rid in mine:
                    continue  # this receipt, or a movement counted through `unsynced`
                if when and _when(when) <= at:
                    spends.append((-int(pts), None, 0, when, 0, f"hold:{rid}", "CHECKOUT", 0, None))
                else:
                    held += int(pts)
            live = _live_points(replace(inputs, moves=[*inputs.moves, *spends]), at)
            spendable += 0 if live is None else live[0]
            _spendable_fits(customer_id, spendable)  # else rolled back: no hold written
            live_balance = spendable - held
            granted = max(0, min(points, live_balance))
            hold_id = ""
            if tx.receipt_settled(device_id, receipt_id):
                granted = 0  # a late call for a committed receipt: no second hold
            else:
                tx.delete_hold(device_id, receipt_id)
            if granted > 0:
                hold_id = uuid.uuid4().hex
                tx.upsert_hold(
                    hold_id,
                    device_id,
                    receipt_id,
                    customer_id,
                    granted,
                    utc_text(now),
                    utc_text(expires),
                    utc_text(at),
                )
            if unsynced:  # the till's unsent spends are held: all of them must still fit
                total = sum(int(pts) for _, _, pts, _ in tx.active_holds_at(customer_id))
                if not (fits_int64(total) and fits_int64(live_balance)):
                    raise InputError(  # rolled back: nothing held for this request
                        f"unsynced: customer {customer_id}'s held points ({total}) and live"
                        f" balance ({live_balance}) must fit in a signed 64-bit integer"
                    )
        return Authorisation(granted, hold_id, expires, live_balance)

    def _holds_before(
        self, customer_id: str, device_id: str, receipt_id: str, at: datetime
    ) -> bool:
        """Whether the customer has other receipts' active holds of a known time at or
        before `at` (which `authorise` replays at their times under the lock)."""
        with self.read_tx() as tx:
            return any(
                when and _when(when) <= at and not (dev == device_id and rid == receipt_id)
                for dev, rid, _, when in tx.active_holds_at(customer_id)
            )

    def _authorise_optimistic(
        self,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        at: datetime,
        now: datetime,
        hold_ttl_s: float,
    ) -> Authorisation | None:
        """The spendable points are worked out from a read transaction, without the
        customer's lock; then `claim_hold` takes the lock, checks that the customer's
        ledger mark (what `live` depends on) has not moved since, and does the hold
        accounting. None when it moved: the caller tries again."""
        inputs = self.live_inputs(customer_id)
        live = _live_points(inputs, at)
        spendable = 0 if live is None else live[0]
        _spendable_fits(customer_id, spendable)
        expires = now + timedelta(seconds=hold_ttl_s)
        found = self.claim_hold(
            device_id,
            receipt_id,
            customer_id,
            points,
            spendable,
            inputs.cards,
            inputs.mark,
            uuid.uuid4().hex,
            utc_text(now),
            utc_text(expires),
            utc_text(at),
        )
        if found is None:
            return None
        granted, live_balance, hold_id = found
        return Authorisation(granted, hold_id, expires, live_balance)

    def claim_hold(
        self,
        device_id: str,
        receipt_id: str,
        customer_id: str,
        points: int,
        spendable: int,
        cards: list[str],
        mark: str,
        hold_id: str,
        now: str,
        expires: str,
        at: str = "",
    ) -> tuple[int, int, str] | None:
        """Under the receipt's and the customer's locks, if the customer's ledger mark is
        still `mark`: the other receipts' active holds are taken from `spendable`, the
        receipt's hold is replaced by one of what is granted; (granted, live balance, hold
        id or ""). Nothing is granted or written for a receipt already committed
        (`receipt_settled`). None when the mark moved. `Superseded`, nothing written,
        when the receipt has an ACTIVE hold or a coupon hold placed after `now` (this
        call's arrival: review 39, grant39). One transaction; a store may do it in one
        round trip (PostgreSQL: `hub_claim_hold`, the same accounting in plpgsql)."""
        with self.write_tx() as tx:
            tx.lock_receipt(device_id, receipt_id)  # as `authorise`'s (review 46, pgrace46)
            tx.lock_customers([customer_id])
            if tx.ledger_mark(customer_id, cards) != mark:
                return None
            tx.expire_holds(customer_id, now)
            held = sum(
                int(pts)
                for dev, rid, pts, _ in tx.active_holds_at(customer_id)
                if not (dev == device_id and rid == receipt_id)
            )
            live_balance = spendable - held
            if tx.receipt_settled(device_id, receipt_id):
                # The till's deadline passed, it committed offline and pushed; this call
                # came after the ingest: an ACTIVE hold now would take the points twice
                # until it expired, and the SETTLED one must stay as it is.
                return 0, live_balance, ""
            # a hold of the receipt placed after this call came is the receipt's: kept
            _refuse_if_superseded(tx, device_id, receipt_id, now)
            granted = max(0, min(points, live_balance))
            tx.delete_hold(device_id, receipt_id)
            if granted > 0:
                tx.upsert_hold(
                    hold_id, device_id, receipt_id, customer_id, granted, now, expires, at
                )
        return granted, live_balance, hold_id if granted > 0 else ""

    def offline_limit(self) -> int:
        """The published program's `offlineRedeemLimitPoints`: the most a receipt priced
        OFFLINE redeems (the contract §5)."""
        with self.read_tx() as tx:
            return int(self.program(tx).offline_redeem_limit_points)

    def newest_hold_at(self, device_id: str, receipt_id: str) -> datetime | None:
        """When the newest of the device's active hold and coupon holds of the receipt was
        placed, by the stamp of the hub that placed it; None when there is none. Read by
        a release or shrink as it starts (`HubServicer._while_waiting`): its `placed_by`
        is the later of this and the hub's clock then, so that a wall clock set back (or
        another server's clock ahead of this one's) never hides the hold the call is for
        (review 34: such a release touched nothing and answered `released: false`)."""
        with self.read_tx() as tx:
            stamp = tx.newest_hold_stamp(device_id, receipt_id)
        return _when(stamp) if stamp else None

    def release(
        self,
        device_id: str,
        receipt_id: str,
        *,
        placed_by: datetime | None = None,
        still_wanted: Callable[[], bool] | None = None,
    ) -> bool:
        """A hold the till gave up (its receipt cancelled or expired there): dropped, its
        coupon holds with it, so the points are spendable at once. A settled hold stays:
        its transaction is the truth. The shrink to nothing, under the shrink's two guards
        (`placed_by`, `still_wanted`): a release the till gave up on never drops a hold
        placed since under the receiptId (review 33, rel33)."""
        return self.shrink(
            device_id, receipt_id, 0, [], placed_by=placed_by, still_wanted=still_wanted
        )

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
        """A hold the till priced OFFLINE after the hub granted it (the grant came past the
        till's deadline, the contract §11): kept for what the receipt uses, at most
        `points` and the coupon holds of `codes`; the rest is spendable at once by the
        customer's other receipts. Never grows a hold nor places one; a settled hold (its
        transaction) stays as it is. True when something was made smaller.
        Only holds placed at or before `placed_by` (when the shrink came) are touched, and
        nothing is when `still_wanted()` says no inside the write transaction (the till
        gave up on the call: `CallerGone`): a till whose shrink timed out takes the
        receipt's next turn, and a hold placed since under the receiptId is not the one
        the shrink was owed by (review 33, rev33b). `release` is the shrink to nothing."""
        stamp = utc_text(placed_by) if placed_by is not None else "9999"
        with self.write_tx() as tx:
            if still_wanted is not None and not still_wanted():
                raise CallerGone("the till stopped waiting")
            changed = tx.shrink_hold(device_id, receipt_id, max(0, points), stamp)
            changed += tx.keep_coupon_holds(device_id, receipt_id, codes, stamp)
        return bool(changed)

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
        """Online coupon authorisation (the contract §13): the codes another receipt
        already used or holds; the others are held for this receipt (its earlier holds
        replaced) until its transaction settles them, `release` drops them, or they expire.
        `arrived`: when the AuthorizeRedemption came; nothing is written (`Superseded`)
        when a hold of the receipt was placed after it (review 39, grant39), and a points
        hold of the receipt placed before it (an older call's, written after this call's
        points step) is dropped (review 46, pgrace46)."""
        used: list[str] = []
        with self.write_tx() as tx:
            # Before the check: on PostgreSQL (READ COMMITTED) another call for the
            # receipt committed between the check's read and the writes below had its
            # coupon holds dropped by this older call (review 45, pgrace45)
            tx.lock_receipt(device_id, receipt_id)
            if tx.receipt_settled(device_id, receipt_id):
                # A step of a receipt already sold (a late call of a receipt its till
                # priced OFFLINE, confirmed and pushed) holds nothing: no transaction
                # would settle that hold, and the codes were refused to every other
                # receipt until it expired (review 48, pg48). A claim grants 0 there.
                # Under the receipt's lock, which the ingest of its sale takes: a sale
                # being stored is seen here once it is. The codes its sale used are
                # the receipt's own; every other is answered as not held.
                mine = {c for c in codes if tx.coupon_first_use(c) == (device_id, receipt_id)}
                return [code for code in dict.fromkeys(codes) if code not in mine]
            if arrived is not None:
                _refuse_if_superseded(tx, device_id, receipt_id, utc_text(arrived))
                # A points hold of the receipt placed before this call came is an older
                # call's: this call's own points step (`authorise`, stamped at the same
                # arrival) replaced every hold of the receipt before it, so such a hold was
                # written since, between this call's two steps (its points step, holding
                # no points, left nothing for the older call's check to see). The receipt
                # holds what its newest call answered (review 46, pgrace46). Before any
                # coupon hold is written: holds rows, then coupon_holds rows, as a shrink
                # and an ingest write them.
                tx.shrink_hold(
                    device_id, receipt_id, 0, utc_text(arrived - timedelta(microseconds=1))
                )
            # Every expired coupon hold and the receipt's own, in one statement: on
            # PostgreSQL its rows are locked in code order, as an ingest's drop of its
            # sales' coupon holds locks them; two statements (or two scan orders, the
            # expiry's by the heap or by expiry, the drop's by receipt) met two rows in
            # opposite orders, and PostgreSQL failed one of the two ("deadlock detected":
            # the push, or this step with its till pricing OFFLINE; review 47, pg47)
            tx.clear_coupon_holds(device_id, receipt_id, utc_text(now))
            expires = utc_text(now + timedelta(seconds=hold_ttl_s))
            # In one order, the codes sorted: an insert waits for another transaction's
            # uncommitted hold of its code, and two receipts holding K1, K2 and K2, K1 at
            # once each waited for the other (PostgreSQL's "deadlock detected": one call
            # failed, its till priced OFFLINE; review 46, pgrace46). Answered in the order
            # asked.
            for code in sorted(set(codes)):
                first = tx.coupon_first_use(code)
                if first is not None and first != (device_id, receipt_id):
                    used.append(code)
                    continue
                if tx.coupon_held(code):  # another receipt's hold (this one's were dropped)
                    used.append(code)
                    continue
                if first is None and not tx.hold_coupon(
                    code, device_id, receipt_id, customer_id, utc_text(now), expires
                ):
                    used.append(code)  # held by another server's receipt meanwhile
                    continue
                again = tx.coupon_first_use(code) if first is None else None
                if again is not None and again != (device_id, receipt_id):
                    # Read again once held: on PostgreSQL (READ COMMITTED) each statement
                    # sees what has committed by then, and the sale of the receipt that
                    # held the code, ingested between the two reads above, moved it from
                    # held to used in one transaction: neither read saw it. Held now, any
                    # such ingest has committed (the insert waited for its delete of the
                    # old hold), so this read sees its use (review 45, soak45: one code
                    # APPLIED online at two tills at once).
                    used.append(code)
                    tx.keep_coupon_holds(
                        device_id,
                        receipt_id,
                        [c for c in dict.fromkeys(codes) if c not in used],
                        utc_text(now),
                    )
        return [code for code in dict.fromkeys(codes) if code in used]

    # ------------------------------------------------------------ snapshots

    def snapshot_doc(self, version: int, base_version: int) -> dict[str, Any]:
        """The snapshot as one JSON document (the shape of the contract §3)."""
        stream = self.snapshot_stream(version, base_version)
        _, header = next(stream)
        doc: dict[str, Any] = {**header, **{section: [] for section in SECTIONS}}
        for section, text in stream:
            doc.setdefault(section, []).append(json.loads(text))
        return doc

    def snapshot_stream(
        self, version: int, base_version: int
    ) -> Generator[tuple[str, Any], None, None]:
        """The snapshot `version`, full (base 0) or a delta from base: ("header", header
        dict) first, then (section, row) with each row as its canonical JSON text, in
        section order and key order, streamed from one read transaction (the caller reads
        it to the end).

        It is the same for every device (docs/PROTOCOL.md §3): a transaction of device d is
        counted in the balances iff it was ingested up to the version's cut and its seq is
        at most d's contiguous progress at that version; `appliedThrough` lists every
        device's progress.
        """
        with self.read_tx() as tx:
            pub = tx.publication(version)
            if pub is None:
                raise UnknownVersion(f"version {version} was never published")
            base = None
            if base_version:
                base = tx.publication(base_version)
                if base is None or base_version >= version:
                    raise UnknownVersion(f"no delta from version {base_version}")
            header: dict[str, Any] = {
                "version": version,
                "baseVersion": base_version,
                "issuedAt": pub.issued_at.isoformat(),
                "expiresAt": pub.expires_at.isoformat(),
                "appliedThrough": tx.progress_at(version),
            }
            if base is None:
                program = self.doc_as_of(tx, "program", "", version)
                header["program"] = program if program is not None else _default_program()
                yield "header", header
                for section, kind in SECTIONS.items():
                    rows = tx.texts_as_of(kind, version)
                    if kind == "customer":
                        rows = self._with_balances(tx, rows, pub, only=None)
                    for _, text in rows:
                        yield section, text
                return
            removed: dict[str, list[str]] = {}
            changed: dict[str, list[str]] = {}
            for section, kind in [("program", "program"), *SECTIONS.items()]:
                for key in tx.keys_changed(kind, base_version, version):
                    found = self.doc_as_of(tx, kind, key, version)
                    if found is None:
                        if kind != "program":
                            removed.setdefault(section, []).append(key)
                    elif kind == "program":
                        header["program"] = found
                    else:
                        changed.setdefault(section, []).append(key)
            customers = set(changed.get("customers", [])) | {
                key
                for key in self._affected_customers(tx, base, pub)
                if tx.text_as_of("customer", key, version) is not None
            }
            changed["customers"] = sorted(customers)
            header["removed"] = removed
            yield "header", header
            for section, kind in SECTIONS.items():
                pairs: Texts = (
                    (key, tx.text_as_of(kind, key, version) or "{}")
                    for key in changed.get(section, [])
                )
                if kind == "customer":
                    pairs = self._with_balances(tx, pairs, pub, only=customers)
                for _, text in pairs:
                    yield section, text

    def _affected_customers(self, tx: HubTx, base: Publication, pub: Publication) -> set[str]:
        """Customers whose balance may differ between the versions: those of transactions
        counted at `pub` but not at `base` (any device's: seq above its progress at base,
        up to its progress at pub; being counted only ever starts, since progress never
        goes back), and the owners before and after of cards of UNKNOWN-card points that
        changed owner."""
        out: set[str] = set()
        cards: set[str] = set()
        for customer, card in tx.newly_counted(base, pub):
            if customer:
                out.add(str(customer))
            elif card:
                cards.add(str(card))
        # A card that changed owner moves its UNKNOWN-card points between customers.
        for card in tx.reowned_cards(base, pub):
            cards.add(str(card))
            before = self.doc_as_of(tx, "card", str(card), base.version)
            if before is not None:
                out.add(str(before["customerId"]))
        for card in cards:
            owner = self.doc_as_of(tx, "card", card, pub.version)
            if owner is not None:
                out.add(str(owner["customerId"]))
        return out

    def _with_balances(
        self,
        tx: HubTx,
        customers: Iterable[tuple[str, str]],
        pub: Publication,
        only: set[str] | None,
    ) -> Texts:
        """Customer rows (key order) with balancePoints and pending as of `pub`.

        Counted: each transaction ingested up to the cut whose seq is at most its device's
        progress at `pub` (its appliedThrough there). The moves come from one query in
        customer order, merged with the rows as they stream by, so memory does not grow
        with the chain; a row with nothing to add is written as stored.
        """
        program = _program_of(tx.text_as_of("program", "", pub.version))
        # Points of UNKNOWN cards go to the card's owner at this version (few rows).
        extra: dict[str, list[Move]] = defaultdict(list)
        owners: dict[str, str | None] = {}
        for card, *move in tx.counted_card_moves(pub):
            if card not in owners:
                doc = self.doc_as_of(tx, "card", str(card), pub.version)
                owners[card] = None if doc is None else str(doc["customerId"])
            owner = owners[card]
            if owner is not None:
                extra[owner].append(move_of(move))
        sums = _grouped(tx.counted_customer_moves(pub, only))
        upcoming = next(sums, None)
        for key, text in customers:
            while upcoming is not None and upcoming[0] < key:
                upcoming = next(sums, None)
            moves = extra.get(key, [])
            if upcoming is not None and upcoming[0] == key:
                moves = moves + upcoming[1]
            # In canonical JSON `"name":` with both quotes bare can only be a key; an
            # empty list (how rows were imported before defaults were left out) is none.
            if (
                not moves
                and '"balancePoints":' in text
                and ('"pending":' not in text or '"pending":[]' in text)
                and ('"expiring":' not in text or '"expiring":[]' in text)
            ):
                yield key, text  # nothing to add, nothing to fold, nothing expires: as stored
                continue
            yield key, _balance_row(text, moves, pub.issued_at, program)


@dataclass(frozen=True)
class LiveInputs:
    """What a customer's live points are worked out from (`HubRules.live`): at the latest
    version, the customer's and the program's row texts (None: absent), the cards whose
    UNKNOWN-card points count, the moves (`Move`), and the ledger mark (`ledger_mark`)."""

    version: int
    customer: str | None
    program: str | None
    cards: list[str]
    moves: list[Move]
    mark: str


def _live_points(inputs: LiveInputs, at: datetime) -> tuple[int, int] | None:
    if inputs.customer is None:
        return None
    program = _program_of(inputs.program)
    wallet = _wallet(json.loads(inputs.customer), inputs.moves, program)
    return wallet.points_at(at)


@lru_cache(maxsize=16)
def _program_of(text: str | None) -> Program:
    """The program of a row text (None: the default), validated once per text (a push
    and an authorisation each need it; a Program is frozen, so one object serves all)."""
    return Program() if text is None else Program.model_validate(json.loads(text))


def conflict(
    code: str, device: str, receipt: str, at: str, first_device: str, first_receipt: str
) -> dict[str, Any]:
    """A coupon conflict as `hub coupon-conflicts` shows it."""
    return {
        "code": code,
        "deviceId": device,
        "receiptId": receipt,
        "at": at,
        "firstDeviceId": first_device,
        "firstReceiptId": first_receipt,
    }


def _aware(text: str) -> datetime | None:
    """A till's time stamp (RFC 3339 with an offset), or None: empty, or not one (no
    offset, or no UTC instant: "9999-12-31T23:59:59-10:00" is in the year 10000 in UTC)."""
    try:
        moment = _when(text) if text else None
        if moment is None or moment.utcoffset() is None:
            return None
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def canon(doc: dict[str, Any] | None) -> str | None:
    if doc is None:
        return None
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def move_of(row: Sequence[Any]) -> Move:
    """A `Move` from the columns a store reads (`hub_sql.Dialect.moves`)."""
    points, when, due, moved_at, earned, receipt, kind, returned, fixed = row
    return (
        int(points),
        when,
        int(due or 0),
        moved_at,
        int(earned or 0),
        str(receipt),
        str(kind),
        int(returned or 0),
        None if fixed is None else str(fixed),
    )


def _grouped(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[str, list[Move]]]:
    """(customer, its moves) from rows (customer, *`Move`'s columns) that come grouped by
    customer. The columns have the `Move`'s types already (`hub_sql.Dialect.moves`: one
    transaction each, nothing summed): taken as they are, as this runs for every
    transaction a snapshot counts."""
    current: str | None = None
    moves: list[Move] = []
    for row in rows:
        customer = row[0]
        if customer != current:
            if current is not None:
                yield current, moves
            current, moves = str(customer), []
        moves.append(row[1:])
    if current is not None:
        yield current, moves


def _wallet(doc: dict[str, Any], moves: Iterable[Move], program: Program) -> Wallet:
    """A customer's points as batches, by the till's rule (`agent.expiry.wallet_of`, the
    contract §16): the row's `balancePoints` with its `expiring` parts and its `pending`
    entries, then the counted moves as the till's movements, each naming its receipt:
    sales' earned points pending until their activation time, then in time order (at the
    same time in the order stored), as the till does, each sale's spend (taking the
    batches not expired at its time, soonest first) and its points earned at once (a
    batch from its `at`), and each refund's points given back (to the batches its sale
    took them from, the last taken first), taken back while pending (off the sale's own
    batch) and taken back since (off that batch while it counts, else spent). A sale
    without a time moves no available points (`MOVED_AT`). A sale's earned batch expires
    when its till's commit said (`Move`, the contract §16: fixed at commit, so a lifetime
    published later dates only the points earned after it); a sale of a till that did not
    say, `pointsLifetimeDays` of `program` after its points became spendable."""
    lifetime, zone = program.points_lifetime_days, program.zone
    moves = list(moves)
    fixed_of = {m[5]: m[8] for m in moves if m[8] is not None and m[6] == "CHECKOUT"}

    def expiry(receipt: str, start: datetime) -> datetime | None:
        fixed = fixed_of.get(receipt)
        if fixed is None:
            return expiry_time(start, lifetime, zone)
        return None if fixed == NEVER else _timestamp(fixed)

    pending: list[Movement] = []
    timed: list[tuple[datetime, bool, list[Movement]]] = []  # (at, a refund, its movements)
    for points, when, due, moved_at, earned, receipt, kind, returned, _ in moves:
        refund = kind == "REFUND"
        active = _when(when) if when and due else None
        if active is not None and not refund:
            expires = expiry(receipt, active)
            pending.append(Movement("earn", due, receipt, active, False, active, expires))
        if moved_at is None:
            continue
        at = _timestamp(moved_at)
        out: list[Movement] = []
        if refund:
            back = max(returned, points, 0)  # given back; what it nets less: taken back
            if back:
                out.append(Movement("spend", back, receipt, at, True))
            if active is not None:
                expires = expiry(receipt, active)
                out.append(Movement("earn", due, receipt, at, False, active, expires))
            if back != points:
                out.append(Movement("spend", points - back, receipt, at, True))
        else:
            earned = max(0, earned)
            spent = earned - points  # a spend (> 0), or points given back (< 0)
            if spent:
                out.append(Movement("spend", -spent, receipt, at, spent < 0))
            if earned:
                expires = expiry(receipt, at)
                out.append(Movement("earn", earned, receipt, at, False, at, expires))
        timed.append((at, refund, out))
    # in time order, then as stored (a till's transactions in the order it wrote them)
    in_order = [m for *_, out in sorted(timed, key=lambda group: group[0]) for m in out]
    return wallet_of(
        int(doc.get("balancePoints", 0)),
        [(int(e["points"]), _timestamp(e["expiresAt"])) for e in doc.get("expiring", [])],
        [(int(e["points"]), _timestamp(e["activatesAt"])) for e in doc.get("pending", [])],
        pending + in_order,
        lifetime,
        zone,
    )


def _points_of(result: dict[str, Any], name: str) -> int:
    """A figure of an UNKNOWN card's result (proto3 JSON: an int64 as a string or a number):
    the till never sends one past int64, an older or a broken one might; the transaction is
    then REJECTED (set aside), not stored where no balance or snapshot could hold it."""
    value = result.get(name) or 0
    try:
        number = int(value) if not isinstance(value, bool | float) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ValueError(f"resultJson {name}: not a whole number")
    return _int64(number, f"resultJson {name}")


def _spendable_fits(customer_id: str, points: int) -> None:
    """The hub adds every till's points to the imported balance: past int64 no hold could
    be stored or answered (a till's own check sees only its own points). Refused before
    any hold is written; the till prices the receipt with its offline limit."""
    if not fits_int64(points):
        raise InputError(
            f"customer {customer_id}'s points at the hub ({points}) do not fit in a signed"
            " 64-bit integer: correct the customer's balancePoints with `hub import`"
        )


def _capped(customer_id: str, what: str, points: int) -> int:
    """A figure of a published customer row, within int64. Each till checked its own
    view, but several tills' sales over an imported balance within a few points of the
    limit can add up past it at the hub (refusing them at ingest would read the
    customer's whole history at every push). Served as it is, every till would refuse
    the snapshot and the whole chain would stop taking new versions for one customer;
    the row says the limit instead, the hub's ledger keeps the exact count (`hub
    balance`), and each till refuses that customer's receipts that would earn more."""
    if fits_int64(points):
        return points
    limit = INT64_MAX if points > 0 else INT64_MIN
    log.error(
        "customer %s: %s %d does not fit in a signed 64-bit integer; the snapshot says %d:"
        " correct the customer's balancePoints with `hub import`",
        customer_id,
        what,
        points,
        limit,
    )
    return limit


def _int64(value: int, what: str) -> int:
    if not fits_int64(value):
        raise ValueError(f"{what} ({value}) does not fit in a signed 64-bit integer")
    return value


def _balance_row(text: str, moves: list[Move], issued_at: datetime, program: Program) -> str:
    """A customer row with the counted moves added as of `issued_at`: balancePoints the
    points available then (expired batches left out), `pending` the points not active yet,
    `expiring` the batches that still hold available points (the contract §16)."""
    row = dict(json.loads(text))
    wallet = _wallet(row, moves, program)
    balance, _ = wallet.points_at(issued_at)
    entries: dict[datetime, int] = defaultdict(int)
    for batch in wallet.batches:
        if batch.pending(issued_at) and batch.active_from is not None:
            entries[batch.active_from.astimezone(UTC)] += batch.points
    fit = functools.partial(_capped, str(row.get("id", "")))
    left = [
        {"points": fit("pending", entries[when_]), "activatesAt": when_.isoformat()}
        for when_ in sorted(entries)
        if entries[when_]
    ]
    expiring = [
        {"points": fit("expiring", points), "expiresAt": moment.isoformat()}
        for points, moment in wallet.expiring_at(issued_at, limit=len(wallet.batches))
    ]
    row["balancePoints"] = fit("balancePoints", balance)
    if left:
        row["pending"] = left
    else:
        row.pop("pending", None)
    if expiring:
        row["expiring"] = expiring
    else:
        row.pop("expiring", None)
    return str(canon(row))


def _with_earned_expiry(t: TxIn, result: dict[str, Any]) -> str | None:
    """The result to store for a sale of a known customer whose till said when the batch
    it earned expires (`TxIn.earned_expires_at`): its text with `EARNED_EXPIRES_KEY`
    added ("never" or UTC text), which the stores' moves read (`Move`); None: as sent
    (an UNKNOWN card's points are the hub's to settle: what its till says is not read)."""
    if EARNED_EXPIRES_KEY in result:
        raise ValueError(f"resultJson: {EARNED_EXPIRES_KEY} is the hub's own key")
    said = t.earned_expires_at if t.customer_id else ""
    if not said:
        return None
    if said != NEVER:
        moment = _aware(said)
        if moment is None:
            raise ValueError(
                f"earnedExpiresAt {said!r} is neither {NEVER!r} nor an RFC 3339 time with an offset"
            )
        said = utc_text(moment)
    head = t.result_json.rstrip()[:-1].rstrip()  # a JSON object (`settle` read it)
    comma = "" if head.endswith("{") else ","
    return f"{head}{comma}{json.dumps(EARNED_EXPIRES_KEY)}:{json.dumps(said)}}}"


def _customers(txs: list[TxIn]) -> list[str]:
    """The customers of a batch's transactions, sorted (the order of their locks)."""
    return sorted({t.customer_id for t in txs if _storable_key(t.customer_id)})


def _settle_receipts(txs: list[TxIn]) -> list[str]:
    """The receipts a batch may settle the holds of: its sales' and its refunds' sales'
    (those of `_settle_keys` that an authorisation step locks: review 48, pg48)."""
    receipts = {_request_receipt(t) for t in txs if t.kind in ("CHECKOUT", "REFUND")}
    return sorted(r for r in receipts if _storable_key(r))


def _settle_keys(txs: list[TxIn]) -> list[str]:
    """The hold keys a batch may settle: every seq's, its sales' receipts, and its
    refunds' sales' receipts (a refund found booked already settles its sale's receipt's
    holds, `_booked_before`; review 47)."""
    keys = {f"seq:{t.seq}" for t in txs}
    keys.update(_request_receipt(t) for t in txs if t.kind in ("CHECKOUT", "REFUND"))
    return sorted(key for key in keys if _storable_key(key))


def _storable_key(key: str) -> bool:
    """Whether a customer id or receipt id of a pushed transaction can name a stored row
    (a lock's key, read before `settle` checks the transaction): one with a NUL or a lone
    surrogate names none (`settle` sets its transaction aside), and PostgreSQL's text
    refused it, failing the whole push (review 47, review47)."""
    return bool(key) and "\x00" not in key and is_utf8_text(key)


def _request_receipt(t: TxIn) -> str:
    """The receiptId of a transaction's request (a refund's: its sale's), "" when it has
    none it can read (`settle` says what is wrong with it then)."""
    try:
        request = json.loads(t.request_json)
    except (ValueError, TypeError, RecursionError):
        return ""
    return str(request.get("receiptId") or "") if isinstance(request, dict) else ""


def _storable_id(name: str, value: str) -> None:
    """A receipt's or refund's id with a NUL (escaped in the request's JSON, so not
    `_storable`'s business: an earlier release's till took one) is a key PostgreSQL's
    text refuses: the push failed UNAVAILABLE, and the till sent it again for good, its
    outbox blocked behind it (review 32). Refused alone (REJECTED, set aside) on either
    store, so both agree."""
    if "\x00" in value:
        raise ValueError(f"{name}: a NUL character cannot be stored")


def _default_program() -> dict[str, Any]:
    return Program().model_dump(mode="json", by_alias=True, exclude_none=True)


def _ref_of(kind: str, request: Any) -> str:
    """The id a sale or refund is known by at the hub (`settle`'s ref_id): a CHECKOUT's
    receiptId, a REFUND's refundId; "" for anything else."""
    if not isinstance(request, dict):
        return ""
    return str(request.get("receiptId" if kind == "CHECKOUT" else "refundId") or "")


def _storable(t: TxIn) -> None:
    """A NUL in a text field (a fiscal document an older till accepted) is refused by
    PostgreSQL's text columns: the whole batch failed, and every push after it, so the
    till's outbox was blocked for good. Refused alone here (REJECTED, set aside: its
    payload is JSON, the NUL escaped), on either store, so both agree."""
    for name, value in t.__dict__.items():
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(f"{to_camel(name)}: a NUL character cannot be stored")
