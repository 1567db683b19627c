"""The till agent: identify, quote, checkout, refund, balance, status over the two SQLite files.

`Agent` is what the CLI and the local `PosAgent` gRPC server call. It owns no transport:
the clock, the data directory and the hub's redemption authoriser are injected.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from . import cache as cache_mod
from . import ledger
from .cache import CacheView, ancestors
from .db import Checkpointer, LiveCache, open_ledger, phone_secret, remove_cache, write_transaction
from .errors import (
    CardRefused,
    HubUnavailable,
    InputError,
    NotFound,
    Refused,
    TillpointError,
)
from .identify import Identification, identify, normalise
from .messages import checkout_display, identify_display, quote_display
from .models import Customer, Offer, Program, Receipt, Refund, Snapshot, SnapshotHeader, parse
from .money import decimal_text, frac
from .pricing import (
    OfferIndex,
    Priced,
    PricingContext,
    activation_time,
    in_birthday_window,
    offers_to_print,
    price,
)
from .refunds import SoldLine, apply_refund

Clock = Callable[[], datetime]
log = logging.getLogger("tillpoint.agent")


def system_clock() -> datetime:
    return datetime.now(UTC)


class RedemptionAuthoriser(Protocol):
    """The hub's online redemption check (SPEC §9); raises HubUnavailable when it is not there."""

    def authorise(self, customer_id: str, receipt_id: str, points: int, at: datetime) -> int: ...

    def reachable(self) -> bool:
        """Whether the hub is answering, as the last exchanges with it say."""
        ...


# Parts that add fields to `status` (the hub sync, the printer) register a function of
# the ledger connection here when they are imported.
status_providers: list[Callable[[sqlite3.Connection], dict[str, Any]]] = []


@dataclass(frozen=True)
class _Priced:
    receipt: Receipt
    ident: Identification
    priced: Priced
    mode: str
    result: dict[str, Any]
    customer: Customer | None
    offers: list[Offer]
    applied: dict[str, int]


class Agent:
    # Full snapshots from a file (`load_snapshot_file`): worker processes (None: the
    # CPUs, at most 4) and the smallest piece worth a worker of its own.
    build_workers: int | None = None
    build_min_chunk: int = 8 << 20

    def __init__(
        self,
        data_dir: Path,
        device_id: str,
        *,
        clock: Clock = system_clock,
        hub: RedemptionAuthoriser | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.device_id = device_id
        self.clock = clock
        self.hub = hub
        # The cache connection follows full snapshots switched in by any process.
        self._live = LiveCache(self.data_dir)
        self._cache = self._live.connection()
        self._secret = phone_secret(self.data_dir)
        self._memo: dict[str, Any] = {}
        self._ledger = open_ledger(self.data_dir)
        self._checkpoints = Checkpointer(self.data_dir / "ledger.db")
        self._ledger.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's job
        self._lock = threading.RLock()
        self.metrics: Any = None  # a metrics.Registry when run as a service
        self.devices: Any = None  # printer, display and scanner when run as a service

    def close(self) -> None:
        self._checkpoints.close()
        self._live.close()
        self._ledger.close()

    # ------------------------------------------------------------ snapshot

    def load_snapshot(self, data: Any) -> cache_mod.CacheInfo:
        """Apply a snapshot given as one JSON document (a dict)."""
        snap = parse(Snapshot, data, "snapshot")
        return self._apply(snap.header, cache_mod.rows_of(snap))

    def load_snapshot_lines(self, lines: Iterable[bytes | str]) -> cache_mod.CacheInfo:
        """Apply a snapshot streamed as JSON Lines (see `snapshot_stream`), row by row."""
        from .snapshot_stream import read_lines

        header, rows = read_lines(lines)
        return self._apply(header, rows)

    def load_snapshot_file(
        self, path: Path, offset: int = 0, length: int | None = None
    ) -> cache_mod.CacheInfo:
        """Apply the JSON Lines snapshot at `path[offset:offset+length]` (to its end by
        default). A full snapshot is built by child processes at low priority
        (`cache_build`): this process only waits, without the GIL, so its checkouts keep
        a core and the interpreter; a delta (small) is applied here, in one transaction."""
        from . import cache_build
        from .snapshot_stream import read_lines

        path = Path(path)
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                f.seek(offset)
                header, _ = read_lines(f)
                if not header.is_full:
                    f.seek(offset)
                    if length is None or offset + length >= size:
                        return self.load_snapshot_lines(f)
                    return self.load_snapshot_lines(io.BytesIO(f.read(length)))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
        loaded = cache_build.run(
            self.data_dir,
            path,
            offset,
            size - offset if length is None else length,
            self.clock(),
            workers=self.build_workers,
            min_chunk=self.build_min_chunk,
        )
        with self._lock:
            self._cache = self._live.connection()
        return loaded

    def _apply(self, header: SnapshotHeader, rows: Iterable[cache_mod.Row]) -> cache_mod.CacheInfo:
        # Its own connections: readers keep theirs, and a full snapshot is built into a new
        # file that readers move to at their next read.
        loaded = cache_mod.apply(self.data_dir, header, rows, self.clock(), self._secret)
        if header.is_full:
            with self._lock:
                self._cache = self._live.connection()
        return loaded

    # ------------------------------------------------------------ identify, balance

    def _tell_devices(self, hook: str, result: Any) -> None:
        """Printer and display get the result after the commit; their faults stay theirs."""
        devices = self.devices
        if devices is None:
            return
        try:
            getattr(devices, hook)(result)
        except Exception:
            log.warning("the customer display or printer did not take %s", hook, exc_info=True)

    def identify(self, text: str) -> dict[str, Any]:
        with self._lock, self._view() as view:
            ident = identify(text, view)
            card = card_json(
                ident, view.program().tier(ident.customer.tier).code if ident.customer else None
            )
        if self.devices is not None and ident.customer is not None and ident.found:
            self._tell_devices("show", identify_display(ident.customer.first_name))
        return card

    def balance(self, card: str, at: datetime | None = None) -> dict[str, int]:
        moment = at or self.clock()
        with self._lock, self._view() as view:
            ident = _require_card(identify(card, view))
            if ident.customer is None:
                raise NotFound(f"card {card.strip()} is not known to this till")
            return ledger.balance(
                self._ledger, ident.customer, view.applied_through(), moment
            ).as_json()

    # ------------------------------------------------------------ quote, checkout

    def quote(self, data: Any) -> dict[str, Any]:
        receipt = parse(Receipt, data, "receipt")
        with self._lock, self._view() as view:
            result = self._price(receipt, view, commit=False).result
        self._tell_devices("after_quote", result)
        return result

    def checkout(self, data: Any) -> dict[str, Any]:
        receipt = parse(Receipt, data, "receipt")
        with self._lock, self._write(), self._view() as view:
            stored = self._ledger.execute(
                "SELECT result FROM receipts WHERE receipt_id = ?", (receipt.receipt_id,)
            ).fetchone()
            if stored is not None:
                result: dict[str, Any] = json.loads(stored[0])
            else:
                done = self._price(receipt, view, commit=True)
                self._store_checkout(done, view)
                result = done.result
        self._tell_devices("after_checkout", result)  # committed first; devices never block
        return result

    def _price(self, receipt: Receipt, view: CacheView, *, commit: bool) -> _Priced:
        program = view.program()
        ident = _require_card(identify(receipt.card, view))
        customer = ident.customer
        products = view.products(line.sku for line in receipt.lines)
        lineage: dict[str, frozenset[str]] = view.remembered("ancestors", dict)
        parents = view.category_parents()

        def categories_of(sku: str) -> frozenset[str]:
            product = products.get(sku)
            if product is None:
                return frozenset()
            found: frozenset[str] | None = lineage.get(product.category)
            if found is None:
                found = lineage[product.category] = ancestors(product.category, parents)
            return found

        applied = view.applied_through()
        offers = view.offers_for(customer.id) if customer else []
        before = ledger.balance(self._ledger, customer, applied, receipt.at) if customer else None
        mass = view.remembered(
            "mass-index", lambda: OfferIndex(o for o in offers if o.customer_id is None)
        )
        ctx = PricingContext(
            program=program,
            products=products,
            categories_of=categories_of,
            customer=customer,
            offers=OfferIndex((o for o in offers if o.customer_id is not None), also=mass),
            available_points=before.available if before else 0,
        )
        # A standalone till caps redemption with the day's offline limit from the start, so
        # the receipt is priced once. With a hub, every redemption asks it (within its
        # deadline) for what the rules allow; a smaller grant, or the offline limit when the
        # hub does not answer, prices the receipt again.
        mode = "ONLINE" if self.hub is not None and self.hub.reachable() else "OFFLINE"
        if customer is not None and self.hub is None and receipt.redeem_points != 0:
            ctx = _with_cap(ctx, self._offline_remaining(receipt, ident, program))
        priced = price(receipt, ctx)
        if self.hub is not None and customer is not None and priced.redeem_allowed_without_cap > 0:
            cap, mode = self._redeem_cap(receipt, ident, priced, program, commit)
            if cap < priced.redeem_allowed_without_cap:
                priced = price(receipt, _with_cap(ctx, cap))

        printed: list[Offer] = []
        if commit and customer is not None:
            since = receipt.at - timedelta(days=program.offer_print_cooldown_days)
            recent = ledger.printed_since(self._ledger, customer.id, since)
            printed = offers_to_print(customer, offers, receipt.at, program, recent.__contains__)

        after = None
        if before is not None:
            earned = priced.earned_points
            pending_now = activation_time(receipt.at, program) > receipt.at
            after = ledger.Points(
                before.available - priced.redeemed_points + (0 if pending_now else earned),
                before.pending + (earned if pending_now else 0),
            )
        tier = program.tier(customer.tier).code if customer else None
        result = result_json(receipt, ident, tier, priced, mode, after, printed)
        if commit and customer is not None and after is not None:
            birthday = in_birthday_window(
                customer.birthday,
                receipt.at.astimezone(program.zone).date(),
                program.birthday_window_days,
            )
            result["display"] = checkout_display(
                customer.first_name,
                priced.earned_points,
                after.available,
                frac(program.birthday_multiplier) if birthday else None,
            )
        else:
            result["display"] = quote_display(priced.total, priced.discount)
        return _Priced(
            receipt,
            ident,
            priced,
            mode,
            result,
            customer,
            printed,
            applied,
        )

    def _redeem_cap(
        self,
        receipt: Receipt,
        ident: Identification,
        priced: Priced,
        program: Program,
        commit: bool,
    ) -> tuple[int, str]:
        wanted = priced.redeem_allowed_without_cap
        if self.hub is not None and ident.customer is not None:
            try:
                if not commit:
                    # A quote places no hold: ONLINE while the hub answers, else the
                    # offline cap the checkout would get too.
                    if self.hub.reachable():
                        return wanted, "ONLINE"
                    raise HubUnavailable("the hub is not answering")
                customer_id = ident.customer.id
                granted = self.hub.authorise(customer_id, receipt.receipt_id, wanted, receipt.at)
                return granted, "ONLINE"
            except HubUnavailable:
                pass
        return self._offline_remaining(receipt, ident, program), "OFFLINE"

    def _offline_remaining(self, receipt: Receipt, ident: Identification, program: Program) -> int:
        """What is left of the offline limit for this card on the receipt's store-day."""
        day = receipt.at.astimezone(program.zone).date().isoformat()
        used = ledger.offline_redeemed(self._ledger, ident.card_number or "", day)
        return max(0, program.offline_redeem_limit_points - used)

    def _store_checkout(self, done: _Priced, view: CacheView) -> None:
        receipt, priced, customer = done.receipt, done.priced, done.customer
        conn = self._ledger
        now = self.clock()
        seq = ledger.take_seq(conn, self.device_id, done.applied.get(self.device_id, 0))
        program = view.program()
        card = done.ident.card_number or normalise(receipt.card)
        day = receipt.at.astimezone(program.zone).date().isoformat()
        request = receipt.model_dump(mode="json", by_alias=True, exclude_none=True)
        # Where the sale is in the ledger's numbering: stored with the result, so an
        # idempotent replay answers with it too (a quote has neither).
        done.result["deviceId"] = self.device_id
        done.result["seq"] = seq
        # Encoded once: the same texts go to the receipt's row and to its outbox payload.
        request_text = json.dumps(request, ensure_ascii=False)
        result_text = json.dumps(done.result, ensure_ascii=False)
        conn.execute(
            "INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                receipt.receipt_id,
                self.device_id,
                seq,
                receipt.at.isoformat(),
                day,
                card,
                customer.id if customer else None,
                done.mode,
                priced.redeemed_points,
                priced.extra_points,
                request_text,
                result_text,
                ledger.utc_text(now),
            ),
        )
        conn.executemany(
            "INSERT INTO receipt_lines VALUES (?,?,?,?,?,?,?)",
            [
                (
                    receipt.receipt_id,
                    i,
                    line.sku,
                    str(receipt.lines[i].qty),
                    line.redeemed_points,
                    line.earned_points,
                    "0",
                )
                for i, line in enumerate(priced.lines)
            ],
        )
        delta_available = delta_pending = 0
        if customer is not None:
            activates = activation_time(receipt.at, program)
            rows: list[tuple[str, int, str | None]] = []
            if priced.redeemed_points:
                rows.append(("spend", -priced.redeemed_points, None))
                delta_available -= priced.redeemed_points
            if priced.earned_points:
                rows.append(("earn", priced.earned_points, ledger.utc_text(activates)))
                if activates > receipt.at:
                    delta_pending += priced.earned_points
                else:
                    delta_available += priced.earned_points
            conn.executemany(
                "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
                " activates_at) VALUES (?,?,?,?,?,?,?)",
                [(self.device_id, seq, customer.id, receipt.receipt_id, *r) for r in rows],
            )
            for offer in done.offers:
                conn.execute(
                    "INSERT INTO print_history VALUES (?,?,?,?)",
                    (customer.id, offer.id, ledger.utc_text(receipt.at), receipt.receipt_id),
                )
            if done.offers:
                self._enqueue_print(receipt, customer, done.offers, now)
        self._journal(
            seq,
            "CHECKOUT",
            receipt.receipt_id,
            receipt.at,
            customer,
            card,
            request_text,
            result_text,
            delta_available,
            delta_pending,
            now,
        )

    def _enqueue_print(
        self, receipt: Receipt, customer: Customer, offers: list[Offer], now: datetime
    ) -> None:
        """The coupon job, in the receipt's transaction. An offer that could not be printed
        (say, an id a barcode cannot carry) costs the coupon, never the sale."""
        from tillpoint.printer.payload import payload_for_checkout
        from tillpoint.printer.queue import enqueue

        try:
            payload = payload_for_checkout(
                receipt.receipt_id,
                receipt.at.isoformat(),
                customer.first_name,
                [o.model_dump(mode="json", by_alias=True, exclude_none=True) for o in offers],
            )
        except TillpointError as exc:
            log.warning("no coupon for receipt %s: %s", receipt.receipt_id, exc)
            return
        enqueue(self._ledger, payload, created_at=now)

    def _journal(
        self,
        seq: int,
        kind: str,
        ref_id: str,
        at: datetime,
        customer: Customer | None,
        card: str,
        request: str,
        result: str,
        delta_available: int,
        delta_pending: int,
        now: datetime,
    ) -> None:
        customer_id = customer.id if customer else None
        self._ledger.execute(
            "INSERT INTO journal VALUES (?,?,?,?,?,?,?,?)",
            (
                self.device_id,
                seq,
                kind,
                ref_id,
                at.isoformat(),
                customer_id,
                card,
                ledger.utc_text(now),
            ),
        )
        payload = {
            "deviceId": self.device_id,
            "seq": seq,
            "kind": kind,
            "at": at.isoformat(),
            "customerId": customer_id or "",
            "card": card,
            "requestJson": request,
            "resultJson": result,
            "pointsDeltaAvailable": delta_available,
            "pointsDeltaPending": delta_pending,
        }
        self._ledger.execute(
            "INSERT INTO outbox (device_id, seq, payload, created_at) VALUES (?,?,?,?)",
            (self.device_id, seq, json.dumps(payload, ensure_ascii=False), ledger.utc_text(now)),
        )

    # ------------------------------------------------------------ refund

    def refund(self, data: Any) -> dict[str, Any]:
        refund = parse(Refund, data, "refund")
        with self._lock, self._write(), self._view() as view:
            conn = self._ledger
            stored = conn.execute(
                "SELECT result FROM refunds WHERE refund_id = ?", (refund.refund_id,)
            ).fetchone()
            if stored is not None:
                return dict(json.loads(stored[0]))
            row = conn.execute(
                "SELECT at, card, customer_id, extra_points, result FROM receipts"
                " WHERE receipt_id = ?",
                (refund.receipt_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"receipt {refund.receipt_id} was never committed at this till")
            sold_at = datetime.fromisoformat(row[0])
            card, customer_id, extra = str(row[1]), row[2], int(row[3])
            if refund.at < sold_at:
                raise InputError(
                    f"refund at {refund.at.isoformat()} is before the sale at {row[0]}"
                )
            lines = conn.execute(
                "SELECT idx, sku, qty, redeemed_points, earned_points, returned_qty"
                " FROM receipt_lines WHERE receipt_id = ? ORDER BY idx",
                (refund.receipt_id,),
            ).fetchall()
            sold = [
                SoldLine(sku, Fraction(Decimal(q)), int(p), int(e), Fraction(Decimal(r)))
                for _, sku, q, p, e, r in lines
            ]
            outcome = apply_refund(
                sold,
                [(line.sku, Fraction(line.qty)) for line in refund.lines],
                extra,
                refund.receipt_id,
            )
            for (idx, *_), new in zip(lines, outcome.returned_qty, strict=True):
                conn.execute(
                    "UPDATE receipt_lines SET returned_qty = ? WHERE receipt_id = ? AND idx = ?",
                    (decimal_text(new), refund.receipt_id, idx),
                )
            program = view.program()
            applied = view.applied_through()
            seq = ledger.take_seq(conn, self.device_id, applied.get(self.device_id, 0))
            customer = view.customer(customer_id) if customer_id else None
            delta_available = delta_pending = 0
            if customer_id:
                rows: list[tuple[str, int, str | None]] = []
                if outcome.returned_points:
                    rows.append(("spend", outcome.returned_points, None))
                    delta_available += outcome.returned_points
                taken = outcome.taken_back_points
                activates = activation_time(sold_at, program)
                if taken and refund.at < activates:
                    # Taken-back points come off the receipt's own pending points first.
                    pending_left = int(
                        conn.execute(
                            "SELECT coalesce(sum(points), 0) FROM points"
                            " WHERE receipt_id = ? AND kind = 'earn'",
                            (refund.receipt_id,),
                        ).fetchone()[0]
                    )
                    from_pending = max(0, min(taken, pending_left))
                    if from_pending:
                        rows.append(("earn", -from_pending, ledger.utc_text(activates)))
                        delta_pending -= from_pending
                        taken -= from_pending
                if taken:
                    rows.append(("spend", -taken, None))
                    delta_available -= taken
                conn.executemany(
                    "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
                    " activates_at) VALUES (?,?,?,?,?,?,?)",
                    [(self.device_id, seq, customer_id, refund.receipt_id, *r) for r in rows],
                )
            balance = ledger.balance(conn, customer, applied, refund.at) if customer else None
            result: dict[str, Any] = {
                "refundId": refund.refund_id,
                "receiptId": refund.receipt_id,
                "returnedPoints": outcome.returned_points,
                "takenBackPoints": outcome.taken_back_points,
                "balance": balance.as_json() if balance else None,
                "negativeBalance": bool(balance and balance.available < 0),
                "deviceId": self.device_id,
                "seq": seq,
            }
            request = refund.model_dump(mode="json", by_alias=True)
            request_text = json.dumps(request, ensure_ascii=False)
            result_text = json.dumps(result, ensure_ascii=False)
            now = self.clock()
            conn.execute(
                "INSERT INTO refunds VALUES (?,?,?,?,?,?,?,?)",
                (
                    refund.refund_id,
                    refund.receipt_id,
                    self.device_id,
                    seq,
                    refund.at.isoformat(),
                    request_text,
                    result_text,
                    ledger.utc_text(now),
                ),
            )
            self._journal(
                seq,
                "REFUND",
                refund.refund_id,
                refund.at,
                customer,
                card,
                request_text,
                result_text,
                delta_available,
                delta_pending,
                now,
            )
            return result

    # ------------------------------------------------------------ reset

    def reset(self) -> None:
        """Forget the cache and the ledger, but never while the hub still waits for data."""
        with self._lock:
            depth = ledger.outbox_depth(self._ledger)
            if depth:
                raise Refused(
                    f"{depth} transaction(s) have not reached the hub yet: reset refused"
                    " (bring the hub back, or copy ledger.db away first)"
                )
            self.close()
            self._memo.clear()
            remove_cache(self.data_dir)  # cache.db and every generation
            for suffix in ("", "-wal", "-shm"):
                (self.data_dir / f"ledger.db{suffix}").unlink(missing_ok=True)
            self._live = LiveCache(self.data_dir)
            self._cache = self._live.connection()
            self._ledger = open_ledger(self.data_dir)
            self._checkpoints = Checkpointer(self.data_dir / "ledger.db")
            self._ledger.execute("PRAGMA wal_autocheckpoint = 0")

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._cache = self._live.connection()
            info = cache_mod.info(self._cache)
            conn = self._ledger
            jobs = conn.execute(
                "SELECT count(*) FROM print_jobs WHERE state NOT IN ('DONE')"
            ).fetchone()[0]
            status: dict[str, Any] = {
                "deviceId": self.device_id,
                "cacheVersion": info.version,
                "cacheIssuedAt": info.issued_at or "",
                "lastSeq": ledger.last_seq(conn, self.device_id),
                "outboxDepth": ledger.outbox_depth(conn),
                "mode": "ONLINE" if self.hub is not None and self.hub.reachable() else "OFFLINE",
                "printQueueDepth": int(jobs),
            }
            status.update(printer_state_from_queue(conn))
            for provider in status_providers:
                status.update(provider(conn))
        devices = self.devices
        if devices is not None:  # live states when run as a service
            try:
                live = devices.status()
                status["printerState"] = live["printer"]["state"]
                status["displayState"] = live["display"]["state"]
                status["scannerState"] = live["scanner"]["state"]
            except Exception:
                log.warning("device status unavailable", exc_info=True)
        return status

    # ------------------------------------------------------------ plumbing

    def _view(self) -> contextlib.AbstractContextManager[CacheView]:
        """A read of the current cache; called with `_lock` held. A full snapshot switched
        in since the last read (by this or another process) is picked up here."""
        self._cache = self._live.connection()
        return CacheView.reading(self._cache, self._secret, self._memo)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ledger write transaction; anything raised inside rolls all of it back."""
        with write_transaction(self._ledger, "ledger") as conn:
            yield conn
        self._checkpoints.committed()


def printer_state_from_queue(conn: sqlite3.Connection) -> dict[str, Any]:
    """What the print queue says when no live printer state is at hand (another process)."""
    failed, retrying, last_error = conn.execute(
        "SELECT count(*) FILTER (WHERE state = 'FAILED'),"
        " count(*) FILTER (WHERE state IN ('PENDING', 'SENDING') AND attempts > 0),"
        " (SELECT last_error FROM print_jobs WHERE state <> 'DONE' AND last_error IS NOT NULL"
        "  ORDER BY id DESC LIMIT 1)"
        " FROM print_jobs"
    ).fetchone()
    state = "FAILED_JOBS" if failed else "RETRYING" if retrying else "OK"
    return {"printerState": state, "printerLastError": last_error or ""}


# ---------------------------------------------------------------- JSON shapes


def card_json(ident: Identification, tier: str | None) -> dict[str, Any]:
    if ident.customer is None or ident.status != "FOUND":
        return {"status": ident.status}
    return {
        "status": "FOUND",
        "customerId": ident.customer.id,
        "tier": tier,
        "firstName": ident.customer.first_name,
    }


def result_json(
    receipt: Receipt,
    ident: Identification,
    tier: str | None,
    priced: Priced,
    mode: str,
    balance: ledger.Points | None,
    printed: list[Offer],
) -> dict[str, Any]:
    pv = priced.point_value
    return {
        "receiptId": receipt.receipt_id,
        "card": card_json(ident, tier),
        "mode": mode,
        "lines": [
            {
                "sku": line.sku,
                "amountMinor": line.amount,
                "discountMinor": line.discount,
                "offerId": line.offer_id,
                "redeemedMinor": line.redeemed_points * pv,
                "earnedPoints": line.earned_points,
            }
            for line in priced.lines
        ],
        "totalMinor": priced.total,
        "discountMinor": priced.discount,
        "redeemedPoints": priced.redeemed_points,
        "payableMinor": priced.payable,
        "earnedPoints": priced.earned_points,
        "balance": balance.as_json() if balance else None,
        "heldOut": list(priced.held_out),
        "printedOffers": [o.id for o in printed],
    }


def _require_card(ident: Identification) -> Identification:
    if ident.status == "INVALID":
        raise CardRefused(f"card not accepted: {ident.reason}")
    if ident.status == "BLOCKED":
        raise CardRefused(f"card refused: {ident.reason}; sell without loyalty")
    return ident


def _with_cap(ctx: PricingContext, cap: int) -> PricingContext:
    from dataclasses import replace

    return replace(ctx, redeem_cap=cap)


__all__ = ["Agent", "Refused", "system_clock"]
