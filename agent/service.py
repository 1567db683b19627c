"""The till agent: identify, quote, checkout, refund, balance, status over the two SQLite files.

`Agent` is what the CLI and the local `PosAgent` gRPC server call. It owns no transport:
the clock, the data directory and the hub's redemption authoriser are injected.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic_core
from pydantic import TypeAdapter

from . import cache as cache_mod
from . import coupons, ledger
from .cache import CacheView, ancestors, phone_index
from .db import (
    CACHE,
    CACHE_SWITCH_WAIT_S,
    Checkpointer,
    LiveCache,
    cache_switch_lock,
    connect,
    is_damage,
    phone_secret,
    refuse_foreign_file,
    remove_cache,
    write_transaction,
)
from .errors import (
    CardRefused,
    Conflict,
    HubUnavailable,
    InputError,
    InvalidCard,
    NoSnapshot,
    NotFound,
    Refused,
    StorageError,
    TillpointError,
    UnreadableFile,
    one_line,
)
from .expiry import WARN_DAYS, Movement, days_later, expiry_time
from .forward import process_running
from .hub_turns import HUB_TURNS_FILE, HubTurns
from .identify import Identification, identify, normalise, phone_key
from .limits import is_utf8_text
from .logs import SAID_BY_THE_COMMAND, mask_identifier
from .messages import (
    cancelled_display,
    checkout_display,
    identify_display,
    quote_display,
    unknown_card_display,
)
from .models import (
    CONTROLS_MESSAGE,
    Coupon,
    Customer,
    HubGrant,
    Offer,
    Program,
    Receipt,
    Refund,
    Snapshot,
    SnapshotHeader,
    check_text,
    coupon_code,
    fits_int64,
    has_controls,
    parse_snapshot_part,
    refuse_wrapped_sections,
)
from .money import decimal_text, frac
from .pricing import (
    OfferIndex,
    Priced,
    PricingContext,
    activation_time,
    in_birthday_window,
    may_go_on_paper,
    offers_to_print,
    price,
)
from .refunds import SoldLine, apply_refund
from .results import (
    Balance,
    Card,
    CheckoutResult,
    CouponVerdict,
    ExpiringBatch,
    RefundResult,
    ResultLine,
    ScanResult,
    TillStatus,
)

if TYPE_CHECKING:
    from tillpoint.printer.payload import OfferNow

Clock = Callable[[], datetime]
log = logging.getLogger("tillpoint.agent")

# the longest `Agent.close` waits for a call in progress (its hub and lock waits are bounded)
CLOSE_WAIT_S = 30.0
MAX_FISCAL_DOCUMENT = 64
MAX_RECEIPT_ID = 128
HUB_HOLD_MARGIN_S = 60
# The longest a hub keeps a hold (sync/hub_server.py MAX_HOLD_TTL_S): an older one has run out.
HUB_HOLD_MAX_S = 86_400
# How long a request to the hub noted in `hub_asks` may still be on its way to its commit
# (its hub requests, each within the redemption deadline, a busy ledger's 5 s wait): a
# younger ask of a receipt not stored yet, made by another process still running (a
# `tillpoint hold` run locally beside `tillpoint run`), may be a call in progress whose
# hold is not released before then.
HUB_ASK_GRACE_S = 120
# How long after a Hold priced OFFLINE (its request to the hub unanswered within the
# deadline) its grant may still reach the hub's store: a hub under load works on a request
# it took before the deadline for seconds after it. A release the hub answers "nothing
# held" within that time stays owed (review 39, flake39: the grant landed after the
# Cancel's release and stayed held at the hub for `holdTtlSeconds` + 60 s).
LATE_GRANT_S = 60
MAX_SCANNED_COUPONS = 100  # a receipt carries at most 100 codes


def system_clock() -> datetime:
    return datetime.now(UTC)


def steady_clock() -> float:
    """Seconds that pass, whatever NTP does to the wall clock; a suspended till's sleep
    counts too (CLOCK_BOOTTIME on Linux; elsewhere the monotonic clock)."""
    boot = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boot) if boot is not None else time.monotonic()


# A wall clock that moved this much more (or less) than the time that passed was stepped
# (NTP, a wrong RTC set right, an operator): open holds are moved with it (§11).
CLOCK_STEP_S = 2.0
# The ledger's time line (`ledger.clock_line`) is written again when the clock's offset
# has drifted this far from it without a step (NTP's small steps, under 2 s each: Linux
# slews CLOCK_BOOTTIME with the wall clock, so a slew leaves the offset as it is).
CLOCK_LINE_DRIFT_S = 0.5


@functools.cache
def boot_id() -> str | None:
    """This boot of the system (Linux's `boot_id`): the steady clock (CLOCK_BOOTTIME)
    counts from it, so an offset of the wall clock from it is of this boot only."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


class RedemptionAuthoriser(Protocol):
    """The hub's online redemption check (the contract §9); HubUnavailable when it is not there."""

    def authorise(
        self,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Sequence[str] = (),
        since: float | None = None,
        offline_limit: int | None = None,
    ) -> HubGrant:
        """Hold `points` (at most) and the receipt's applied coupon codes at the hub.
        `since`: when (`time.monotonic`) the Hold or Checkout asking made its first request;
        all its requests share one deadline from then (the contract §9). `offline_limit`:
        this till's `offlineRedeemLimitPoints`, what the hub keeps of a grant it makes past
        the deadline (the contract §11, review 36)."""
        ...

    def release(self, receipt_id: str) -> bool:
        """Drop the hub's hold for a receipt cancelled or expired here (the contract §11)."""
        ...

    # Optional (`Agent._shrink_at_hub` asks with getattr; an authoriser without it is taken
    # as a hub before review 33): `shrink(receipt_id, points, coupon_codes) -> bool | None`
    # keeps the hub's hold of a receipt priced OFFLINE after a late grant for what it uses.

    def reachable(self) -> bool:
        """Whether the hub is answering, as the last exchanges with it say."""
        ...


class DeviceNotifier(Protocol):
    """The till's printer, display and scanner as the agent sees them (printer.service.Devices):
    told after each identification, quote and commit; their faults stay theirs."""

    def show(self, lines: Sequence[str]) -> None: ...

    def after_quote(self, result: CheckoutResult) -> None: ...

    def after_checkout(self, result: CheckoutResult) -> None: ...

    def status(self) -> Mapping[str, Any]: ...


class Histogram(Protocol):
    def observe(self, value: float) -> None: ...


class Metrics(Protocol):
    """What the edges record about the agent's calls (metrics.Registry)."""

    @property
    def checkout_seconds(self) -> Histogram: ...

    def count_error(self, code: str) -> None: ...


# A part that adds fields to `status` (the hub sync: `sync.state.sync_status`), read on
# the agent's ledger connection under its lock.
StatusSource = Callable[[sqlite3.Connection], Mapping[str, Any]]


@dataclass(frozen=True)
class _Priced:
    receipt: Receipt
    ident: Identification
    priced: Priced
    mode: str
    result: CheckoutResult
    customer: Customer | None
    offers: list[Offer]
    applied: dict[str, int]
    coupon_checks: list[coupons.CouponCheck]
    # a commit's pricing asked the hub to hold its redemption or coupons (answered or
    # not: a request past its deadline may still have placed the hold there)
    asked_hub: bool = False
    # what its redemption takes, batch by batch (`_spent_from`)
    spent_from: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Ready:
    """What a hold or checkout stores, made from its pricing (`Agent._ready`)."""

    now: datetime
    expires: datetime
    figures: dict[str, Any]
    held: dict[str, Any]
    hub_hold: bool
    # a hold's stored texts
    held_text: str = ""
    figures_text: str = "{}"
    # a checkout's CONFIRMED result without its seq, and its text, for the offers
    # `offer_ids`; the coupon job's payload text (None: made in the transaction)
    result: dict[str, Any] | None = None
    result_text: str = ""
    offer_ids: tuple[str, ...] = ()
    payload: str | None = None
    # the pricing's typed result, which the CONFIRMED one is made from (`_confirmed_of`)
    priced: CheckoutResult | None = None


class _Asks(threading.local):
    """This thread's Hold or Checkout while it asks the hub (`Agent._one_hub_deadline`):
    `active` inside one, `since` when its first request was made (`time.monotonic`),
    `told` the lowest offline limit its requests told the hub (what the hub keeps of a
    grant it makes past the deadline: the cap of its OFFLINE pricing, review 37), `count`
    how many requests it made (review 44, hold44: more than one, and a release that
    dropped the first one's grant may have come before a later one's), `unkept` when its
    last request noted inside the write transaction was made (the ledger's time line): that
    note goes if the transaction fails, and is written again on its own then
    (`Agent._keep_last_ask`, review 45: an unstored ask's late-grant window counts from
    its last request)."""

    def __init__(self) -> None:
        self.active = False
        self.since: float | None = None
        self.told: int | None = None
        self.count = 0
        self.unkept: str | None = None


@dataclass(frozen=True)
class _Early:
    """A receipt priced before its write transaction (`Agent._price_early`): its pricing,
    the snapshot version and ledger marks it was priced from, and what it stores."""

    done: _Priced
    version: int
    marks: tuple[Any, ...]
    ready: _Ready
    program: Program
    # `Agent._steps_taken` before `ready`'s times were read: a step taken since moved the
    # open holds, and this one's times are made again when it is stored (review 34)
    steps: int = 0


@dataclass(frozen=True)
class ResetResult:
    """What `Agent.reset` did: unsent transactions discarded, and the hub's holds of the
    till's open holds released there or left to expire there (hub not reached, and no
    release owed); the releases it keeps owed, since a grant may still land after them
    (review 46, reset46), and until when (the wall clock, "" with none)."""

    discarded: int
    hub_holds_released: int = 0
    hub_holds_left: int = 0
    hub_releases_owed: int = 0
    hub_releases_owed_until: str = ""


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
        devices: DeviceNotifier | None = None,
        metrics: Metrics | None = None,
        status_sources: Sequence[StatusSource] = (),
        device_kinds: Mapping[str, str] | None = None,
        build_workers: int | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """Collaborators are given here (`agent/app.py` wires a till's): the hub's
        redemption authoriser (None: standalone, the offline limit applies), the devices
        told after each sale, the metrics the edges record into, the parts that add
        fields to `status`, and the configured kind of each device (for `status` in a
        process that does not drive them: the CLI). `monotonic` counts the seconds that
        pass, to tell a step of the wall clock from time passing (default: the system's
        with the system clock; none with another clock: that clock is taken as steady)."""
        self.data_dir = Path(data_dir)
        self.device_id = device_id
        self.clock = clock
        self._monotonic = monotonic
        self._clock_mark: tuple[datetime, float] | None = None
        # The step followed inside the current write transaction (one transaction at a
        # time: under `_lock`), taken off the mark again if it rolls back (`_write`).
        self._followed_step: float | None = None
        # Steps taken from the mark so far (under `_mark_lock`): a Hold priced early whose
        # times were read before another call took one is made again at its commit.
        self._steps_taken = 0
        self._mark_lock = threading.Lock()
        # what the steady clock counts from (`keep_clock_line`); None: no steady clock
        self._boot = self._steady_boot()
        # Whether the ledger has a time line of this boot (`_line_first`): once it has,
        # no other boot's process writes it while this one runs.
        self._line_here = self._boot is None
        # A step taken from the mark, its holds' move in the write transaction under way
        # (`_follow_clock_step`; the agent's lock held): `_line_first` writes the line off it.
        self._step_in_hand = 0.0
        self.hub = hub
        self.devices = devices
        # The receipt whose figures the display shows now: a Cancel clears only its own
        # (a POS tidying an old hold must not blank the next customer's total).
        self._on_display: str | None = None
        # results the printer/display service did not take (`_tell_devices`), in `status`
        # (both under `_device_miss_lock`: sales on many threads write them, `status` reads)
        self._device_misses = 0
        self._device_miss_error = ""
        self._device_miss_lock = threading.Lock()
        self.metrics = metrics
        self.status_sources = tuple(status_sources)
        # The configured `kind` of "printer", "display", "scanner" (absent: "none").
        self.device_kinds: dict[str, str] = dict(device_kinds or {})
        if build_workers is not None:
            self.build_workers = build_workers
        # The ledger first: a refused one (another program's file) had `cache.db` and
        # `phone.key` made beside it (review 38, rev38g). A new one only once the cache
        # file there, if any, is no other program's: it had a `ledger.db` made beside it
        # (review 39, rev39d).
        if not ledger.ledger_path(self.data_dir).exists():
            refuse_foreign_file(self.data_dir / CACHE)
        self._ledger = ledger.open_ledger(self.data_dir)
        other = ledger.other_device(self._ledger, device_id)
        if other is not None:
            # Sales under a changed device_id took seqs the hub had from the first id, and
            # the first id's outbox was never pushed again ("0 waiting", a sale lost).
            self._ledger.close()
            raise InputError(
                f"the ledger of {self.data_dir} holds the sales of device {other!r}, none of"
                f" {device_id!r}: a till's device_id never changes (set it back to {other!r};"
                f" or `tillpoint reset` as {other!r} once its outbox is empty; or give"
                f" {device_id!r} a data directory of its own)"
            )
        try:
            # The cache connection follows full snapshots switched in by any process.
            self._live = LiveCache(self.data_dir, READER_CACHE_KIB)
            self._cache = self._live.connection()
            self._secret = phone_secret(self.data_dir)
        except BaseException:
            if hasattr(self, "_live"):
                self._live.close()
            self._ledger.close()
            raise
        self._memo: dict[str, Any] = {}
        self._ledger.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        self._checkpoints = Checkpointer(ledger.ledger_path(self.data_dir))
        self._ledger.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's job
        self._lock = threading.RLock()
        # (at, message) of the last ledger write that failed (or damaged file read); None
        # once a sale is stored again (`_write`)
        self._storage_problem: tuple[str, str] | None = None
        # whether the current write transaction (under `_lock`) committed a receipt's
        # rows (`_commit`): only that clears `_storage_problem`
        self._sale_in_write = False
        # a receipt's hub hold: placed or released, not both; a release put off for a
        # hold in its turn is sent when that turn ends (the hold may not have replaced it)
        # (and, with a hub, across the processes on this data directory: `hub_turns.lock`,
        # review 37)
        self._hub_turns = HubTurns(
            on_put_off=self._release_put_off,
            across=None if hub is None else self.data_dir / HUB_TURNS_FILE,
        )
        # who sends the hub calls owed (`tillpoint run`'s hold timer): told when an OFFLINE
        # hold's grant at the hub is to be shrunk (`on_hub_call_owed`)
        self._owed_listeners: list[Callable[[], None]] = []
        # `_one_hub_deadline`: when this thread's Hold or Checkout first asked the hub, and
        # the lowest offline limit its requests told the hub
        self._asks = _Asks()
        # Holds priced OFFLINE that asked the hub more than once (their early pricing, then
        # again inside the write transaction, or again for a coupon): receiptId ->
        # `time.monotonic()` when held. Their release stays owed while a grant may come
        # whatever the hub answers (`_release_at_hub`; review 44, hold44). This process's
        # own: a restart forgets it (then a release that found a grant is done, as before).
        self._asked_again: dict[str, float] = {}
        # Quotes, identification and balances read on connections of their own, outside
        # `_lock` (`_read`): WAL readers never wait behind a commit's fsync. Idle pairs of
        # reader connections are reused, the most recent first; at most READERS_KEPT stay.
        self._idle_readers: list[tuple[LiveCache, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        # One read at a time, though: reads are CPU work under the GIL, and several at once
        # only made the server's I/O thread wait for the GIL (a convoy: 4 clients got half
        # the quotes 1 client got). A read never waits for a write, only for another read.
        self._one_read = threading.Lock()
        # Coupon codes the till's scanner read for the receipt being rung up (`scan`).
        self.scanned_coupons: list[str] = []
        self.keep_clock_line()  # a step made before this process started, not followed yet

    def close(self) -> None:
        """Close the agent's files, once a call another thread is making has ended.

        A connection closed while another thread is inside it is freed under that thread:
        the process died of a segmentation fault (review 41: a health Watch's reading of
        `status` met `close` in a test's worker; `tillpoint run` closes after its servers
        stopped, but a reading already begun could still meet it). A call that has not
        ended after `CLOSE_WAIT_S` keeps the files open to the process's end (logged):
        every write is a committed transaction, so nothing is lost."""
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            log.warning(
                "closing: a call still running after %.0f s; the agent's files are left"
                " open until the process ends",
                CLOSE_WAIT_S,
            )
            return
        try:
            self._hub_turns.close()
            self._checkpoints.close()
            self._live.close()
            self._ledger.close()
            with self._readers_lock:
                idle, self._idle_readers = self._idle_readers, []
            for live, reads in idle:
                _close_reader(live, reads)
        finally:
            self._lock.release()

    # ------------------------------------------------------------ snapshot

    def load_snapshot(self, data: Any) -> cache_mod.CacheInfo:
        """Apply a snapshot given as one JSON document (a dict). Fields the contract does
        not define are left out and named in the answer's `ignored`."""
        ignored: set[str] = set()
        refuse_wrapped_sections(data)
        snap = parse_snapshot_part(Snapshot, data, "snapshot", ignored)
        return self._apply(snap.header, cache_mod.rows_of(snap)).naming(ignored)

    def load_snapshot_lines(self, lines: Iterable[bytes | str]) -> cache_mod.CacheInfo:
        """Apply a snapshot streamed as JSON Lines (see `snapshot_stream`), row by row."""
        from .snapshot_stream import read_lines

        ignored: set[str] = set()
        header, rows = read_lines(lines, ignored)
        return self._apply(header, rows).naming(ignored)

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
            raise UnreadableFile(f"{path}: no such file") from None
        except OSError as exc:
            raise UnreadableFile(f"{path}: cannot read it ({exc.strerror})") from None
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
        self._on_display = result.receipt_id if hook != "show" else None
        try:
            getattr(devices, hook)(result)
        except Exception as exc:  # counted in `status`; the sale stands (review 31)
            log.warning("the customer display or printer did not take %s", hook, exc_info=True)
            said = one_line(f"{hook}: {type(exc).__name__}: {exc}")  # any code: not locked
            # cut, not `textwrap.shorten`: a long path or token had left only "[...]"
            said = said if len(said) <= 200 else said[:199] + "…"
            with self._device_miss_lock:  # the count and its error change together
                self._device_misses += 1
                self._device_miss_error = said

    def identify(self, text: str) -> Card:
        check_text("identify: text", text)
        with self._read() as (view, _):
            ident = identify(text, view)
            card = card_of(
                ident, view.program().tier(ident.customer.tier).code if ident.customer else None
            )
        if self.devices is not None:  # the last customer's balance does not stay (§8)
            self._tell_devices("show", identify_display(ident))
        return card

    def scan(self, text: str) -> ScanResult:
        """Route a scanned text (the contract §13): a coupon code this till knows (the
        cache's coupons or one it issued) is `{"kind": "COUPON", "code", "offerId"}` and
        waits in `scanned_coupons` for the receipt being rung up; anything else is a card:
        `{"kind": "CARD", "card": <identify's answer>}`. A printed offer's `TP1-<offerId>`
        (§7, an offer printed without a one-time code) that is no known coupon names its
        offer and unlocks nothing: `{"kind": "OFFER", "code", "offerId"}`, never a card
        (its dashes dropped, it read as an INVALID one)."""
        from tillpoint.printer.codes import parse_offer_code

        check_text("scan: text", text)
        if not is_utf8_text(text):  # a script's other bytes: no code, a card INVALID (§4)
            return ScanResult("CARD", card=self.identify(text))
        code = coupon_code(text)
        if code:
            with self._lock, self._view() as view:
                coupon = view.coupon(code) or ledger.issued_coupon(
                    self._ledger, code, view.applied_through().get(self.device_id, 0)
                )
                if coupon is not None and code not in self.scanned_coupons:
                    self.scanned_coupons = [*self.scanned_coupons, code][-MAX_SCANNED_COUPONS:]
            if coupon is not None:
                return ScanResult("COUPON", code=code, offer_id=coupon.offer_id)
        offer = parse_offer_code(text)
        if offer is not None:
            return ScanResult("OFFER", code=text.strip(), offer_id=offer)
        return ScanResult("CARD", card=self.identify(text))

    def offers_on_paper(
        self, offer_ids: Sequence[str], receipt_id: str | None = None
    ) -> dict[str, OfferNow] | None:
        """Of the offers a queued coupon job holds, those the snapshot still lets print
        (there and `printable`: a delta may have withdrawn them since the sale; not of a
        campaign whose control group the customer has joined since, nor of a customer no
        longer in the cache, nor made a mass offer since, nor given since to a customer
        other than the one who bought `receipt_id`, §7), each with its `validTo` (None: no
        end) and its words now (`printText`, reworded by a delta); None when no snapshot
        is loaded (nothing to tell by). The print worker of `tillpoint run` asks before
        it prints a job, with the job's receipt."""
        from tillpoint.printer.payload import OfferNow, offer_text

        with self._read() as (view, conn):
            if view.version == 0:
                return None
            # The customer the coupon is for: the sale's (a receipt the ledger no longer
            # has, or none named: the offers' own customers, as before review 50).
            sold = ledger.sold_receipt(conn, receipt_id) if receipt_id is not None else None
            owner = sold.customer_id if sold is not None else None
            found: dict[str, OfferNow] = {}
            for offer_id in dict.fromkeys(offer_ids):
                offer = view.offer(offer_id)
                if offer is None:
                    continue
                # a coupon's offers are its customer's (§7), as the cache has them now: the
                # sale's (an offer given to another since is not for them, review 50)
                whose = owner or offer.customer_id
                customer = view.customer(whose) if whose else None
                if not may_go_on_paper(offer, customer):
                    continue
                found[offer_id] = OfferNow(offer.valid_to, offer_text(_offers_json([offer])[0]))
            return found

    def take_scanned_coupons(self) -> list[str]:
        """The coupon codes scanned since the last call, oldest first (the POS puts them in
        `Receipt.coupons`); the list is empty afterwards."""
        with self._lock:
            codes, self.scanned_coupons = self.scanned_coupons, []
        return codes

    def balance(self, card: str, at: datetime | None = None) -> Balance:
        check_text("balance: card", card)
        moment = at or self.clock()
        with self._read() as (view, conn):
            ident = _require_card(identify(card, view))
            if ident.customer is None:
                # on an empty cache every card is unknown: say why (it read as a wrong card)
                empty = (
                    ": no snapshot is loaded yet (tillpoint snapshot load FILE, or let the"
                    " till reach its hub)"
                    if view.version == 0
                    else ""
                )
                # the number masked as the logs mask it: this line is a POS's log's. As
                # identify read it, blanks and dashes out: a card written in groups
                # (`2770 0000 0005 5`) has no run of digits to mask and was written whole
                # (review 39, rev39f)
                shown = mask_identifier(normalise(card))
                raise NotFound(f"card {shown} is not known to this till{empty}")
            return balance_of(
                ledger.balance(conn, ident.customer, view.applied_through(), moment, view.program())
            )

    # ------------------------------------------------------------ quote, checkout

    def quote(self, receipt: Receipt) -> CheckoutResult:
        """Price a receipt, storing and reserving nothing. The receipt committed under its
        receiptId (the same body) answers its committed figures as a quote (priced again,
        its own points would count twice in the balance shown): nothing printed, no state,
        the quote's display; with `explain`, the trace kept with it, else the trace of
        pricing it again when that gives the committed figures (§17: a trace never changes
        a figure; support asks "why this price?" after the sale). Another body is priced
        like any quote (the contract refuses a reused receiptId for Hold and Checkout
        only); under a held receiptId, beside that hold (its points and coupons stay
        reserved)."""
        trace: dict[str, Any] | None = None
        self._follow_clock_step()  # the open holds it counts, as they stand after a step
        with self._read() as (view, conn):
            stored, held = ledger.quote_lookup(conn, receipt.receipt_id, self._now())
            # the receipt as stored, made only for a receiptId this till knows
            request = (
                _Request.of(receipt, self._secret)
                if stored is not None or held is not None
                else None
            )
            if stored is not None and request and not request.same_as(stored[0]):
                stored = None
            if stored is not None and receipt.explain and "trace" not in stored[1]:
                trace = self._sold_trace(receipt, stored[1], view, conn)
            if stored is None:
                # another basket under a held receiptId is no retry of that hold: its
                # Hold would be refused (409), so it is priced beside the hold, which
                # keeps its points and coupons, as any other receipt is
                own_hold = held is None or (
                    request is not None
                    and (request.matches(held) or _held_earlier(conn, receipt.receipt_id, request))
                )
                # the same basket as its open hold, on a till with a hub: priced in the
                # hold's mode with the points the hub granted it, as Confirm commits them
                # (a quote asks the hub nothing; §11)
                same_hold = held is not None and request is not None and request.matches(held)
                hold = (
                    ledger.held_redemption(conn, receipt.receipt_id)
                    if self.hub is not None and same_hold
                    else None
                )
                result = self._price(
                    receipt, view, commit=False, reads=conn, own_hold=own_hold, sale=hold
                ).result
        if stored is not None:
            answer = _as_quote(stored[1], receipt.explain)
            if trace is not None:
                answer["trace"] = trace
            result = CheckoutResult.from_json(answer)
        self._tell_devices("after_quote", result)
        return result

    def checkout(self, receipt: Receipt) -> CheckoutResult:
        """Hold and Confirm in one transaction (the contract §11): the CONFIRMED result."""
        request = _Request.of(
            receipt, self._secret
        )  # before the transaction: nothing in it waits for this
        self.sweep_holds()
        with self._hub_turns.holding(receipt.receipt_id), self._one_hub_deadline():
            early = self._clock_followed(self._price_early(receipt, confirm_now=True), True)
            # a failed transaction's last hub request noted again on its own (review 45);
            # apart, so that `with self._lock` stays the line a call waits for the lock on
            with self._keep_last_ask(receipt.receipt_id):  # noqa: SIM117
                with self._lock, self._write(), self._view() as view:
                    state, result, typed = self._hold(
                        receipt, view, confirm_now=True, request=request, early=early
                    )
                    if state == "CANCELLED":
                        raise Refused(
                            f"receipt {receipt.receipt_id} was cancelled:"
                            " price it under a new receiptId"
                        )
                    if state == "HELD":
                        result = self._confirm(receipt.receipt_id, None, view)
        if receipt.explain and "trace" not in result:
            # a retry, or the open hold it met, asked no trace: §17's `checkout --explain`
            # still answers one (the stored result stays as committed)
            with self._read() as (view, conn):
                trace = self._sold_trace(receipt, result, view, conn)
            if trace is not None:
                typed = CheckoutResult.from_json({**result, "trace": trace})
        done = typed if typed is not None else CheckoutResult.from_json(result)
        self._tell_devices("after_checkout", done)  # committed first; devices never block
        return done

    def _sold_trace(
        self, receipt: Receipt, sale: dict[str, Any], view: CacheView, conn: sqlite3.Connection
    ) -> dict[str, Any] | None:
        """The trace of a committed receipt stored without one (support's "why this price?"
        after the sale, or a `checkout --explain` retried): priced again without its own
        commit, and kept only when that gives the committed figures (§17: a trace never
        changes a figure). What pricing now refuses (a card blocked since) gives none."""
        try:
            again = self._price(
                receipt, view, commit=False, reads=conn, sold=True, sale=sale
            ).result.to_json()
        except TillpointError:
            return None
        if "trace" not in again or any(again.get(k) != sale.get(k) for k in _FIGURES):
            return None
        trace: dict[str, Any] = again["trace"]
        return trace

    # ------------------------------------------------------------ hold, confirm, cancel

    def hold(self, receipt: Receipt) -> CheckoutResult:
        """Price the receipt and reserve its redemption (the contract §11): the HELD result.

        The same body under the same receiptId returns what is stored (whatever the state),
        another body is a Conflict; a hold that expired is priced and held afresh."""
        request = _Request.of(receipt, self._secret)
        self.sweep_holds()
        with self._hub_turns.holding(receipt.receipt_id), self._one_hub_deadline():
            early = self._clock_followed(self._price_early(receipt, confirm_now=False), False)
            with self._keep_last_ask(receipt.receipt_id):  # noqa: SIM117 (as Checkout's)
                with self._lock, self._write(), self._view() as view:
                    _, stored, _ = self._hold(receipt, view, request=request, early=early)
        result = CheckoutResult.from_json(stored)
        if result.state == "HELD":
            if result.mode == "OFFLINE" and self.hub is not None and not self._owed_listeners:
                # no one listening in this process (a library's agent; `run`'s hold timer
                # and a one-shot `tillpoint hold`, which sends it after its answer, listen:
                # review 38): the late grant's shrink is sent here, after the hold's turn
                self._shrink_now(receipt.receipt_id)
            self._tell_devices("after_quote", result)
        return result

    def _shrink_now(self, receipt_id: str) -> None:
        try:
            self._shrink_at_hub(receipt_id)
        except Exception:  # the hold is stored: a later round (`tillpoint run`) sends it
            log.warning(
                "the shrink of receipt %s is left to the retries", receipt_id, exc_info=True
            )

    def confirm(self, receipt_id: str, fiscal_document: str | None = None) -> CheckoutResult:
        """Commit exactly the held figures (no pricing again): the CONFIRMED result."""
        receipt_id = _receipt_id(receipt_id, "confirm")
        if fiscal_document is not None and len(fiscal_document) > MAX_FISCAL_DOCUMENT:
            raise InputError(
                f"confirm: fiscalDocument is too long (at most {MAX_FISCAL_DOCUMENT} characters)"
            )
        if fiscal_document is not None and not is_utf8_text(fiscal_document):
            raise InputError("confirm: fiscalDocument is not UTF-8 text")
        if fiscal_document is not None and has_controls(fiscal_document):
            # A NUL is stored, pushed and then refused by the hub's PostgreSQL for good.
            raise InputError(f"confirm: fiscalDocument {CONTROLS_MESSAGE}")
        self._hub_turns.hold_ended(receipt_id)  # its Hold still asking the hub: after it
        self.sweep_holds()
        with self._lock, self._write(), self._view() as view:
            stored = self._confirm(receipt_id, fiscal_document or None, view)
        result = CheckoutResult.from_json(stored)
        self._tell_devices("after_checkout", result)
        return result

    def cancel(self, receipt_id: str) -> CheckoutResult:
        """Release a hold: the held figures with `"state": "CANCELLED"` (none of them
        happened). Cancelling again returns the same; a confirmed receipt needs a refund."""
        receipt_id = _receipt_id(receipt_id, "cancel")
        self._hub_turns.hold_ended(receipt_id)  # its Hold still asking the hub: after it
        self.sweep_holds()
        with self._lock, self._write():
            row = self._life(receipt_id)
            if row is None:
                if self._stored_receipt(receipt_id) is not None:
                    raise Refused(f"receipt {receipt_id} is confirmed: use a refund")
                raise NotFound(f"receipt {receipt_id} is not held at this till")
            state = row.state
            if state == "CONFIRMED":
                raise Refused(f"receipt {receipt_id} is confirmed: use a refund")
            held = json.loads(row.held_result)
            release = state == "HELD" and row.hub_hold
            if state != "CANCELLED":
                ledger.close_holds(
                    self._ledger, [receipt_id], "CANCELLED", ledger.utc_text(self.clock())
                )
        if release:
            self._release_at_hub(receipt_id)
        if self._on_display == receipt_id:
            self._tell_devices("show", cancelled_display())
        return CheckoutResult.from_json(_cancelled(held))

    def sweep_holds(self, stop: threading.Event | None = None) -> int:
        """Expire the holds past their time and release what they reserved at the hub.

        Called by every hold, confirm, cancel and checkout, and by `tillpoint run`'s timer;
        one indexed read when nothing is due. `stop` (the timer's, set by `run`'s stop):
        no further release is sent once it is set; those left are owed, sent by
        `retry_hub_releases` (here or at the next start)."""
        self._follow_clock_step()
        with self._lock:
            # The clock is read under the lock, after a step made meanwhile is followed:
            # read before it, while this round waited for the lock behind a Hold's
            # transaction that followed a step back, the holds moved an hour back were
            # compared with the time of before the step and expired with their minutes
            # left (review 35)
            self._follow_clock_step()
            now = ledger.utc_text(self._now())
            due = ledger.due_holds(self._ledger, now)
            if not due:
                return 0
            with self._write() as conn:
                ledger.close_holds(conn, [rid for rid, _ in due], "EXPIRED", now, only_held=True)
        for rid, hub_hold in due:
            log.info("hold of receipt %s expired", rid)
            if hub_hold and not _stopping(stop):
                self._release_at_hub(rid)
        return len(due)

    def _clock_followed(self, early: _Early | None, confirm_now: bool) -> _Early | None:
        """`early` with its times made again when the wall clock was stepped while it was
        priced (a hub request takes up to its deadline): the open holds are moved by the
        step here, and a hold made on one side of the step and stored after the holds
        were moved on the other would be off by the step (expired at once after a step
        back). Its figures stand; only its times (`_ready`) are read again."""
        if early is None or not self._follow_clock_step():
            return early
        return replace(early, ready=self._ready(early.done, early.program, confirm_now))

    def _follow_clock_step(self) -> bool:
        """A hold lives `holdTtlSeconds` of time that passes (the contract §11), but its
        expiry is stored as a wall-clock time: when the wall clock was stepped since the
        last reading (NTP set it an hour back or forward), move the open holds' expiry by
        the step, so that a step back does not stretch a hold past the hub's copy of it
        and a step forward does not expire at once a hold whose payment is being taken.
        True when it moved them (a step was followed).

        The clock is read first without the agent's lock (a quote does not wait for a
        commit when nothing was stepped), leaving a step it finds on the mark; the step is
        taken under the lock, by whichever call then holds it. Taken before the lock, it
        was this call's while it waited, and a Hold priced inside its write transaction
        meanwhile (holding the lock, asking the hub) found no step to follow, made its
        times on the stepped clock, and was moved by the step after its commit: an hour
        back, expired at once (review 34)."""
        if self._take_clock_step(peek=True) is None:
            return False
        with self._lock:
            step = self._take_clock_step()
            if step is None:  # followed meanwhile by the call that held the lock
                return False
            # the mark is on the stepped clock now; the holds are not moved yet: a first
            # line of this boot written in this transaction (`_line_first`) is put where
            # they are, before the step (review 39, rev39e)
            self._step_in_hand = step
            try:
                with self._write() as conn:
                    moved = ledger.follow_clock_step(
                        conn,
                        timedelta(seconds=step),
                        self._mark_offset(),
                        CLOCK_STEP_S,
                        self._boot,
                    )
            except StorageError:  # logged by `_write`; the next call tries again
                self._unfollow(step)
                return False
            finally:
                self._step_in_hand = 0.0
        if moved:
            log.warning(
                "the wall clock was stepped by %+.0f s: open holds keep their time left", step
            )
        return True

    def _take_clock_step(self, *, peek: bool = False) -> float | None:
        """Read the wall clock beside the steady one and mark it: the step since the last
        reading when the wall clock was stepped by `CLOCK_STEP_S` or more, else None. The
        caller moves the open holds by the step, or gives it back (`_unfollow`) when it
        cannot; it holds the agent's lock (the step is the lock holder's to follow). With
        `peek`, a step is said and left on the mark (no lock needed); a reading without
        one is marked as ever."""
        # The system's steady clock goes with the system's wall clock only: a clock set in
        # its place (a test's, moved to make time pass) is taken as steady unless it
        # comes with its own `monotonic`.
        steady = self._monotonic or (steady_clock if self.clock is system_clock else None)
        if steady is None:
            return None
        with self._mark_lock:  # not the agent's lock: a quote does not wait for a commit
            wall, passed = self.clock(), steady()
            mark = self._clock_mark
            step = None if mark is None else (wall - mark[0]).total_seconds() - (passed - mark[1])
            if step is not None and abs(step) < CLOCK_STEP_S:
                step = None
            if step is None or not peek:
                self._clock_mark = (wall, passed)
            if step is not None and not peek:
                self._steps_taken += 1
        return step

    def _steady_boot(self) -> str | None:
        """What this process's steady clock counts from: the system's boot (CLOCK_BOOTTIME,
        every process's); a steady clock given in its place (a test's) is its own."""
        if self._monotonic is not None:
            owner = getattr(self._monotonic, "__self__", self._monotonic)
            return f"given:{os.getpid()}:{id(owner)}"
        if self.clock is system_clock and getattr(time, "CLOCK_BOOTTIME", None) is not None:
            return boot_id()
        return None

    def keep_clock_line(self) -> None:
        """Take the time line the ledger's hold times are on (`ledger.clock_line`: the
        wall clock's offset from the steady clock they were made on, this boot) as this
        process's: a step the ledger has not followed, or followed while this process did
        not see it, is then this process's next call's to follow (`_follow_clock_step`).
        At a process's start and at each round of `tillpoint run`'s hold timer.

        A process started after a step of the wall clock that `run` had not followed yet
        took its first reading as no step, made its hold's expiry on the stepped clock,
        and `run` then moved that hold by the step with the others (an hour back: expired
        at once; an hour forward, the new process itself expired every open hold); and a
        step there and back between two rounds of `run`, the first followed by a process
        gone since, was no step for `run`: every hold an hour too long (review 38). The
        line is recorded when there is none of this boot and when the clock has drifted
        from it (`CLOCK_LINE_DRIFT_S`) with no step to follow."""
        boot = self._boot
        steady = self._monotonic or (steady_clock if self.clock is system_clock else None)
        if boot is None or steady is None:
            return
        with self._lock:
            try:
                line = ledger.clock_line(self._ledger, boot)
            except sqlite3.Error:
                return
            with self._mark_lock:
                wall, passed = self.clock(), steady()
                offset = wall.timestamp() - passed
                mark = self._clock_mark
                ours = offset if mark is None else mark[0].timestamp() - mark[1]
                if line is not None and abs(ours - line) >= CLOCK_STEP_S:
                    # the open holds are on the ledger's line: a step from it is ours to follow
                    base = wall if mark is None else mark[0]
                    since = passed if mark is None else mark[1]
                    self._clock_mark = (base - timedelta(seconds=ours - line), since)
                    return
            if abs(offset - ours) >= CLOCK_STEP_S:
                return  # a step this process has to follow records the line with it
            if line is not None and abs(offset - line) < CLOCK_LINE_DRIFT_S:
                return
            # Not waited for: another process in a write transaction (`run`'s Hold asking
            # the hub in it, up to its deadline) held a one-shot `quote` at its start for
            # SQLite's busy timeout, 5 s, for a line it does not need (review 38, rev38h).
            try:
                with write_transaction(self._ledger, "ledger", wait=False) as conn:
                    if ledger.clock_line(conn, boot) == line:  # no other process's meanwhile
                        ledger.record_clock_line(conn, boot, offset)
            except (StorageError, sqlite3.Error) as exc:  # busy, read-only: the next round
                log.debug("the ledger's time line not recorded: %s", exc)

    def _line_first(self, conn: sqlite3.Connection) -> None:
        """At the start of a write transaction, until the ledger has this boot's time line:
        written first, so that no hold of this boot is ever made before it. The first line
        of a boot lists the holds open then as the boot before's (`ledger.record_clock_line`,
        never moved by this boot's steps); a hold this boot made before that line (its
        start's line not written: the ledger was busy, `keep_clock_line` waits for no one)
        would be listed with them, and a step on this boot would leave it on the stepped
        clock (an hour back: held an hour and a half at the till, the hub's copy run out).
        On the line this process's hold times are on: its mark's, the step on it not
        followed yet (a step is followed inside the transaction, recorded with it)."""
        if self._line_here:
            return
        boot = self._boot
        assert boot is not None
        if ledger.clock_line(conn, boot) is not None:
            self._line_here = True  # committed: this boot's already
            return
        steady = self._monotonic or (steady_clock if self.clock is system_clock else None)
        if steady is None:
            return
        with self._mark_lock:
            mark = self._clock_mark
            if mark is None:
                wall, passed = self.clock(), steady()
            else:
                wall, passed = mark
        # the mark less a step taken just now whose move this transaction makes: a line
        # on the stepped clock said the holds were on it already (`ledger.follow_clock_step`),
        # and the first step of a ledger without a line (a release before review 38's) left
        # them unmoved (rev39e)
        ledger.record_clock_line(conn, boot, wall.timestamp() - passed - self._step_in_hand)

    def _mark_offset(self) -> float:
        """The wall clock less the steady one at the last reading (`_take_clock_step`'s
        mark), in seconds: the same for every process on the system (the steady clock is
        CLOCK_BOOTTIME), what `ledger.follow_clock_step` records a step followed at."""
        with self._mark_lock:
            mark = self._clock_mark
        assert mark is not None  # a step was just taken from it
        return mark[0].timestamp() - mark[1]

    def _now(self) -> datetime:
        """The wall clock on the time line the open holds live on: the clock as it reads,
        less a step made since the last reading (`_take_clock_step`) that no call has
        followed yet (the holds not moved by it). Read where a hold's time is compared
        or made (the sweep's "now", a Confirm's, a new hold's expiry, the holds pricing
        counts): `self.clock()` read just after a call looked for a step, a step made in
        between (NTP at that instant) was compared with the unmoved holds, and an hour
        forward expired a hold with its minutes left or refused its Confirm "hold
        expired" (review 36). Once the step is followed, the clock as it reads. Marks
        nothing (a reading, not a follow)."""
        steady = self._monotonic or (steady_clock if self.clock is system_clock else None)
        if steady is None:
            return self.clock()
        with self._mark_lock:
            wall, passed = self.clock(), steady()
            mark = self._clock_mark
        if mark is None:
            return wall
        step = (wall - mark[0]).total_seconds() - (passed - mark[1])
        return wall if abs(step) < CLOCK_STEP_S else wall - timedelta(seconds=step)

    def _unfollow(self, step: float) -> None:
        """A step taken (`_take_clock_step`) whose move of the open holds was not stored:
        taken off the mark, so that the next reading finds it again. Not the mark from
        before it put back: another thread may have read the clock since and taken a later
        step (moving the holds by it), which that mark would count a second time."""
        with self._mark_lock:
            if self._clock_mark is not None:
                wall, passed = self._clock_mark
                self._clock_mark = (wall - timedelta(seconds=step), passed)

    def _follow_clock_step_here(self) -> None:
        """`_follow_clock_step` inside the write transaction the caller holds (a receipt
        priced there, asking the hub, up to its deadline): the open holds are moved by a
        step made meanwhile in this transaction, before the new hold's times are made on
        the stepped clock (moved at the next call with the others, it was off by the
        step: an hour back, expired at once). Should the transaction not commit, the
        step is given back (`_write`, `_unfollow`), so the next call moves them."""
        step = self._take_clock_step()
        if step is None:
            return
        # (moved once for all the processes on the ledger: `ledger.follow_clock_step`)
        moved = ledger.follow_clock_step(
            self._ledger, timedelta(seconds=step), self._mark_offset(), CLOCK_STEP_S, self._boot
        )
        # a transaction may follow two steps (a Checkout's hold, then its confirm): all
        # are given back if it rolls back
        self._followed_step = (self._followed_step or 0.0) + step
        if moved:
            log.warning(
                "the wall clock was stepped by %+.0f s: open holds keep their time left", step
            )

    def _release_at_hub(self, receipt_id: str, *, forgotten: bool = False) -> bool | None:
        """True: released. False: the hub was not reached (or there is none);
        `retry_hub_releases` tries again (the hold of a closed receipt keeps its `hub_hold`
        mark until then). None: nothing to release now: the receipt was held again since
        (an expired hold priced afresh: its new hold replaced the old one at the hub), or
        a hold of it is being placed (`HubTurns`; that hold carries the release owed), or
        the hub held nothing yet for a hold whose grant may still reach it (still owed,
        sent again at the next round: `_grant_may_come`; whatever the hub answered when
        the Hold asked it more than once, `_asked_again`).
        `forgotten`: the ledger no longer has the receipt (`reset`), release it as is."""
        hub = self.hub
        if hub is None:
            return False
        with self._lock:
            # the ledger read in the receipt's turn, which another process's hold takes too:
            # read before it, a release owed reached the hub after that process held the
            # receipt again, and dropped the new hold (review 37)
            if not self._hub_turns.start_release(receipt_id):
                return None
            life = None if forgotten else self._life(receipt_id)
            if not forgotten and (
                life is None or life.state not in ("CANCELLED", "EXPIRED") or not life.hub_hold
            ):
                self._hub_turns.end_release(receipt_id)
                return None  # held again, or confirmed since: its transaction settles it
            # the Hold asked more than once, noted with its hold by whichever process made
            # it (review 45: `_asked_again` is this process's only)
            kept = None if forgotten else ledger.kept_hub_ask(self._ledger, receipt_id)
        try:
            dropped = hub.release(receipt_id)
        except TillpointError as exc:
            log.info("hold of %s not released at the hub yet: %s", receipt_id, exc)
            return False
        finally:
            self._hub_turns.end_release(receipt_id)
        if (
            life is not None
            and (not dropped or receipt_id in self._asked_again or kept is not None)
            and self._grant_may_come(life)
        ):
            # The hub held nothing for it yet, but the hold's request may still be on its
            # way to the hub's store (taken before the deadline, then held up by a busy
            # hub): a grant placed after this release would be held for every other till
            # for the hold's whole time there. Still owed: sent again at the next round.
            # So is one that dropped a grant when the Hold asked more than once: it may
            # have dropped the first request's grant (answered in time), the last one's
            # (not answered in time: the Hold priced OFFLINE) still on its way (review 44,
            # hold44: the store soak's hold left at the hub).
            log.info(
                "hold of %s: %s at the hub, sent again later",
                receipt_id,
                "released" if dropped else "nothing held yet",
            )
            return None
        with self._lock, self._write() as conn:
            ledger.released_at_hub(conn, receipt_id)
            if kept is not None and life is not None and kept == life.held_at:
                # the hold's own note (written with it, at its time) goes with its release;
                # another ask of the receipt (a lapsed hold priced again and lost, its
                # request perhaps still on its way) is an unstored one from now on, sent
                # while its own window lasts (`_release_unstored`)
                ledger.forget_hub_ask(conn, receipt_id, kept)
        with self._lock:
            self._asked_again.pop(receipt_id, None)
        return True

    def _note_asked_again(self, receipt_id: str) -> None:
        """Note a Hold priced OFFLINE that asked the hub more than once (`_asked_again`);
        those noted more than `LATE_GRANT_S` ago (by the process's steady clock) and never
        released here (confirmed: their transaction settles them) are let go."""
        now = time.monotonic()
        asked = self._asked_again
        for rid in [r for r, at in asked.items() if now - at > 2 * LATE_GRANT_S]:
            del asked[rid]
        asked[receipt_id] = now

    def _grant_may_come(self, life: ledger.ReceiptLife) -> bool:
        """Whether a grant for this closed hold may still reach the hub's store: it was
        priced OFFLINE after asking the hub (no answer within the deadline: the hub may
        have taken the request and be working on it), less than `LATE_GRANT_S` ago."""
        since = ledger.utc_text(self._now() - timedelta(seconds=LATE_GRANT_S))
        return life.mode == "OFFLINE" and life.held_at > since

    def _unstored_window(self) -> timedelta:
        """How long after an unstored ask's last noted request its grant may still land:
        `LATE_GRANT_S` plus the hub's deadline (`timeout_s`, optional as `shrink` is): a
        till killed inside its write transaction lost the note of a request made at most
        that much later (review 45, ask45; `_release_unstored`, and `reset`'s kept
        releases, review 46)."""
        deadline_s = float(getattr(self.hub, "timeout_s", 0.0) or 0.0)
        return timedelta(seconds=LATE_GRANT_S + deadline_s)

    def on_hub_call_owed(self, listener: Callable[[], None]) -> None:
        """`listener` (quick, from any thread) is told when a call to the hub is owed at
        once: a hold priced OFFLINE whose request placed a hold there all the same (its
        grant came past the deadline). `tillpoint run`'s hold timer wakes on it and shrinks
        that hold to what the receipt uses (`retry_hub_releases`); a one-shot `tillpoint
        hold` sends it after its answer (`TillSync.send_owed`, review 38). With none, the
        Hold sends it itself, before its answer."""
        self._owed_listeners.append(listener)

    def _hub_call_owed(self) -> None:
        for listener in self._owed_listeners:
            try:
                listener()
            except Exception:  # the hold timer's next round sends it
                log.warning("waking the hold timer failed", exc_info=True)

    def _shrink_at_hub(self, receipt_id: str) -> bool | None:
        """Shrink the hub's hold of an open hold priced OFFLINE (its grant came past the
        deadline) to what the hold uses: its redeemed points and the coupon codes it
        applied (the contract §11). Not a release: the hold redeems those points and uses
        those codes, which no other till may take until its Confirm's transaction settles
        them or its Cancel or expiry releases them. True: done (shrunk, nothing to shrink,
        or a hub that does not know the call: it keeps the whole grant, as before review
        33). False: the hub was not reached (`retry_hub_releases` sends it again). None:
        nothing to send now (the hold closed, confirmed or held again since, or a call of
        the receipt to the hub is in its turn: the next round), or the hub shrank nothing
        while the hold's grant may still be on its way (`_grant_may_come`: sent again at
        the next round)."""
        hub = self.hub
        if hub is None:
            return False
        now = ledger.utc_text(self._now())  # the holds' time line (review 36, rev36d)
        with self._lock:
            if not self._hub_turns.start_release(receipt_id):
                return None
            life = self._life(receipt_id)  # in its turn, as a release's (review 37)
            if (
                life is None
                or life.state != "HELD"
                or not life.shrink_owed
                or life.expires_at <= now
            ):
                self._hub_turns.end_release(receipt_id)
                return None
            # the Hold asked more than once (hold44's note, in the ledger since ask45)
            asked_again = receipt_id in self._asked_again or (
                ledger.kept_hub_ask(self._ledger, receipt_id) == life.held_at
            )
        shrink = getattr(hub, "shrink", None)
        try:
            codes = coupons.applied_codes(json.loads(life.held_result))
            done = None if shrink is None else shrink(receipt_id, life.redeemed_points, codes)
        except TillpointError as exc:
            log.info("hold of %s not shrunk at the hub yet: %s", receipt_id, exc)
            return False
        finally:
            self._hub_turns.end_release(receipt_id)
        if done is None:
            log.info("hold of receipt %s left whole at the hub (it does not shrink)", receipt_id)
        # Nothing shrunk: the hub may hold nothing for it yet, its grant still on its way
        # (a busy hub), to be kept for the offline limit, or whole, when it lands. Still
        # owed: sent again at the next round (review 40, rev40b; as a release answered
        # "nothing held" is, flake39). So is one that shrank a grant when the Hold asked
        # more than once, whatever the hub answers: it may have cut the first request's
        # grant while the last one's was still on its way, which then lands and is kept
        # up to the offline limit, more than the hold uses when the card's offline limit
        # was partly spent here (review 46, reset46; as hold44 keeps such a release owed).
        again = (done is False or (done is True and asked_again)) and self._grant_may_come(life)
        if again:
            log.info(
                "hold of %s: %s at the hub, sent again later",
                receipt_id,
                "shrunk" if done else "nothing to shrink",
            )
        with self._lock, self._write() as conn:
            if not again:
                ledger.shrunk_at_hub(conn, receipt_id, life.held_at)
            # (a receipt committed since under the receiptId, by a Checkout after the
            # reset, has no life row either: not forgotten, its transaction settles it)
            forgotten = self._life(receipt_id) is None and self._stored_receipt(receipt_id) is None
        # a Cancel or an expiry while the shrink was on its way found the turn taken; so
        # did a `reset`, which forgot the receipt: released as it is (review 34: what the
        # shrink kept stayed held at the hub to its expiry)
        self._release_at_hub(receipt_id, forgotten=forgotten)
        return None if again else True

    def _release_put_off(self, receipt_id: str) -> None:
        """A release put off while a hold or checkout of the receipt was in its turn: sent
        now unless that call held the receipt again (its hold replaced the hub's) or
        confirmed it (its transaction settles it); a hub away leaves it to the retries.
        A shrink put off so (the receipt's open OFFLINE hold owes one) wakes the hold
        timer again."""
        try:
            if self._release_at_hub(receipt_id) is None:
                # a shrink put off for that turn (the Hold woke the hold timer from inside
                # its transaction and the round came before the turn ended): the timer
                # again, not this call, which is the POS's (rev33b)
                with self._lock:
                    life = self._life(receipt_id)
                if life is not None and life.state == "HELD" and life.shrink_owed:
                    self._hub_call_owed()
        except Exception:  # a busy or full disk: the hold timer's next round
            log.warning(
                "the release of receipt %s is left to the retries", receipt_id, exc_info=True
            )

    def retry_hub_releases(self, stop: threading.Event | None = None) -> int:
        """Send again the releases of cancelled and expired holds that did not reach the
        hub (it was away): until then the hub kept the customer's points held for every
        till, up to a day. `tillpoint run`'s hold timer calls it; stops at the first the
        hub does not answer. Holds closed more than a day ago have run out at the hub.
        When every release went, the hub's holds of open OFFLINE holds granted too late
        are shrunk to what they use (`_shrink_at_hub`). Answers how many were released.
        `stop` (the timer's, set by `run`'s stop): looked at before each call to the hub,
        so a stop waits for the call on its way only, not for every call owed to a slow
        hub (review 35); those not sent stay owed in the ledger, for the next start."""
        if self.hub is None:
            return 0
        # on the open holds' time line, which the owed releases' `closed_at` and the asks'
        # `asked_at` live on (moved by a step, rev37a): the clock as it reads, before the
        # step is followed (a one-shot's `send_owed`, no sweep first), took a release owed
        # for minutes two days forward for one run out at the hub and dropped it (rev37e)
        cutoff = ledger.utc_text(self._now() - timedelta(seconds=HUB_HOLD_MAX_S))
        with self._lock:
            due = ledger.hub_releases_due(self._ledger, cutoff)
        released = answered = 0
        for rid in due:
            if _stopping(stop):
                return released
            done = self._release_at_hub(rid)
            if done is False:  # the hub is away: the next round
                break
            released += bool(done)
            # (None: nothing to send now, or one the hub answered that stays owed while
            # its late grant may come: the calls below are owed all the same)
            answered += 1
        if answered == len(due):
            with self._lock, self._write() as conn:
                ledger.run_out_at_hub(conn, cutoff)
                ledger.forget_committed_hub_asks(conn)
            released += self._release_unstored(cutoff, stop)
            if not _stopping(stop):
                self._send_shrinks(stop)  # then the open OFFLINE holds' late grants (not counted)
        return released

    def hub_calls_owed(self) -> dict[str, int]:
        """How many releases and shrinks the hub has not taken yet (`/metrics`'s
        `tillpoint_hub_calls_owed`, `sync now`'s `hubCallsOwed`): `owed_hub_calls` counted."""
        return {call: len(ids) for call, ids in self.owed_hub_calls().items()}

    def owed_hub_calls(self) -> dict[str, list[str]]:
        """The receiptIds whose release or shrink the hub has not taken yet, oldest first:
        each keeps points held there from every till. The releases include those of holds
        asked for and never stored (`hub_asks`, what `_release_unstored` sends), but not an
        ask whose call may still store its receipt (this process's hold in its turn;
        another process's, younger than `HUB_ASK_GRACE_S`): that one is on its way, not
        owed. `sync now` names them (review 37: it said nothing of those its deadline left)."""
        if self.hub is None:
            return {"release": [], "shrink": []}
        # the open holds' expiry compared on their time line: a step no call has followed
        # yet took a hold with its minutes left for expired, its shrink not owed (rev36d);
        # so are the releases' and asks' times, which move with a step too (rev37a, rev37e)
        now = self._now()
        cutoff = ledger.utc_text(now - timedelta(seconds=HUB_HOLD_MAX_S))
        young = ledger.utc_text(now - timedelta(seconds=HUB_ASK_GRACE_S))
        open_now = ledger.utc_text(now)
        with self._lock, ledger.one_read(self._ledger):  # the three lists of one moment
            releases = ledger.hub_releases_due(self._ledger, cutoff)
            shrinks = ledger.hub_shrinks_due(self._ledger, open_now)
            asks = ledger.unstored_hub_asks(self._ledger)
        releases += [
            rid
            for rid, asked_at, pid in asks
            if asked_at > cutoff
            and not (asked_at > young and _running_elsewhere(pid))
            and not self._hub_turns.busy_holding(rid)
        ]
        return {"release": releases, "shrink": shrinks}

    def _send_shrinks(self, stop: threading.Event | None = None) -> int:
        """Shrink at the hub the holds of open OFFLINE holds that it granted too late
        (`_shrink_at_hub`); stops at the first the hub does not answer, or once `stop` is
        set (`retry_hub_releases`)."""
        with self._lock:
            due = ledger.hub_shrinks_due(self._ledger, ledger.utc_text(self._now()))
        sent = 0
        for rid in due:
            if _stopping(stop):
                break
            done = self._shrink_at_hub(rid)
            if done is False:
                break
            sent += bool(done)
        return sent

    def _release_unstored(self, cutoff: str, stop: threading.Event | None = None) -> int:
        """Release at the hub the holds it may have placed for receipts this till asked
        for and never stored (killed between the request and the commit, or a commit that
        failed after the grant): nobody else would, and the hub kept the customer's points
        and codes held from every till for the hold's whole time. Asks older than a day
        have run out at the hub. One made by another process still running and younger
        than `HUB_ASK_GRACE_S` may still be stored (a call between its request and its
        commit, whose turn is not this agent's `HubTurns`): a later round. Stops at the
        first the hub does not answer, or once `stop` is set (`retry_hub_releases`)."""
        now = self._now()
        young = ledger.utc_text(now - timedelta(seconds=HUB_ASK_GRACE_S))
        # The release of an ask younger than this stays owed whatever the hub answers:
        # "nothing held", its request may still be on its way to the hub's store (as a
        # cancelled OFFLINE hold's release, `_grant_may_come`; review 40, rev40b);
        # "released", it may have dropped the grant of the Hold's first request while a
        # later one (its pricing again in the write transaction, a coupon's) was still on
        # its way (review 44's hold44 for a stored hold; review 45, ask45, here, where the
        # till cannot know how many requests the ask made: the count went with the process
        # or the failed transaction). Counted from the ask's last request as the ledger
        # keeps it (`note_hub_ask` replaces the time at each request committed; a failed
        # transaction's is written again, `_keep_last_ask`), plus the hub's deadline
        # (`_unstored_window`).
        late = ledger.utc_text(now - self._unstored_window())
        with self._lock:
            asks = ledger.unstored_hub_asks(self._ledger)
        released = 0
        for rid, asked_at, pid in asks:
            if _stopping(stop):
                break
            if asked_at > young and _running_elsewhere(pid):
                continue
            if asked_at <= cutoff:
                with self._lock, self._write() as conn:
                    ledger.forget_hub_ask(conn, rid, asked_at)
                continue
            with self._lock:
                # no hold of it on its way (its turn: `HubTurns`, across processes too),
                # and, read in that turn, still not stored
                if not self._hub_turns.start_release(rid):
                    continue
                if ledger.unstored_hub_asks(self._ledger, rid) != [(rid, asked_at, pid)]:
                    self._hub_turns.end_release(rid)
                    continue
            try:
                assert self.hub is not None
                dropped = self.hub.release(rid)
            except TillpointError as exc:
                log.info("hold of %s not released at the hub yet: %s", rid, exc)
                return released
            finally:
                self._hub_turns.end_release(rid)
            # counted once for each hold the hub dropped (review 45: an ask kept owed is
            # answered again, "nothing held" after its first answer dropped the grant)
            released += bool(dropped)
            if asked_at > late:
                # A request may still reach the hub (held up on the wire or in a busy hub,
                # the till killed meanwhile): a grant placed after this release would hold
                # the points of a receipt no till holds. Sent again at the next round.
                log.info(
                    "hold of %s: %s at the hub, sent again later",
                    rid,
                    "released" if dropped else "nothing held yet",
                )
                continue
            log.info("hold of receipt %s, never stored here, released at the hub", rid)
            with self._lock, self._write() as conn:
                ledger.forget_hub_ask(conn, rid, asked_at)
        return released

    def _life(self, receipt_id: str) -> ledger.ReceiptLife | None:
        return ledger.receipt_life(self._ledger, receipt_id)

    def _stored_earlier(self, row: ledger.ReceiptLife, request: _Request) -> bool:
        """Whether a receipt's life stored by an earlier release, whose digest was made
        another way (the 2026-11-30 release hashed its Receipt's dump, fields at their
        defaults included), is this request: its stored text compared as a receipt
        committed before receipts had a life is (`_same_body`). Asked only when the
        digests differ, so a conflict costs one more read and a retry is not refused."""
        stored = row.request
        if not stored:
            found = self._stored_receipt(row.receipt_id)
            stored = found[0] if found is not None else ""
        return bool(stored) and request.same_as(stored)

    def _stored_receipt(self, receipt_id: str) -> tuple[str, dict[str, Any]] | None:
        """(request text, result) of a committed receipt."""
        return ledger.stored_receipt(self._ledger, receipt_id)

    def _hold(
        self,
        receipt: Receipt,
        view: CacheView,
        *,
        confirm_now: bool = False,
        request: _Request | None = None,
        early: _Early | None = None,
    ) -> tuple[str, dict[str, Any], CheckoutResult | None]:
        """Inside the write transaction: (state, result) stored under the receiptId, or a
        new hold priced now ("HELD"; with `confirm_now`, committed at once: "CONFIRMED"),
        and the typed CONFIRMED result when committed now from the early pricing (else
        None: the caller reads the result's JSON).
        Conflict when the id is stored with another body. `request`: the receipt's JSON,
        digest and text, made before the transaction (made here if not). `early`: the
        receipt priced before the transaction (`_price_early`), taken when nothing it read
        has changed since, else priced again here."""
        rid = receipt.receipt_id
        request = request or _Request.of(receipt, self._secret)
        # A step made while this call waited for the lock (behind another commit) is
        # followed before the stored hold's expiry is read against the clock: unfollowed,
        # an hour forward made a stored hold look expired, and its retry priced it afresh
        # (review 35)
        self._follow_clock_step_here()
        row = self._life(rid)
        if row is None:
            stored = self._stored_receipt(rid)  # committed before receipts had a life
            if stored is not None:
                # Stored by an older agent, whose Receipt had fewer fields: compared
                # without the fields left at their defaults on either side.
                if not request.same_as(stored[0]):
                    raise _conflict(rid)
                return "CONFIRMED", stored[1], None
        else:
            state = row.state
            if not request.matches(row.digest) and not self._stored_earlier(row, request):
                raise _conflict(rid)
            now = ledger.utc_text(self._now())
            if state == "HELD" and row.expires_at > now:
                return "HELD", dict(json.loads(row.held_result)), None
            if state == "CONFIRMED":
                found = self._stored_receipt(rid)
                assert found is not None  # written in the same transaction
                return "CONFIRMED", found[1], None
            if state == "CANCELLED":
                return "CANCELLED", _cancelled(json.loads(row.held_result)), None
            # expired (swept or not yet): priced and held again below
            ledger.forget_life(self._ledger, rid)
        # What the hub may still hold for this receipt that no one else will release: an
        # expired hold's (its release owed, in the row forgotten above), or the grant of
        # the early pricing when it is priced again here. The new hold releases it at its
        # cancel or expiry (a release names the receipt; a new grant replaces it anyway).
        owed = row is not None and row.hub_hold
        if early is not None and row is None and self._still(early, view):
            done, ready = early.done, early.ready
            # Its times were read before this transaction; a step taken since (another
            # call held the lock first: `run`'s hold timer, a quote) moved the open holds
            # but not this one, which would be stored off by the step (review 34, rev34b:
            # an hour forward, expired at once). A step not taken yet is taken here.
            self._follow_clock_step_here()
            if self._steps_taken != early.steps:
                ready = self._ready(done, early.program, confirm_now)
        else:
            owed = owed or (early is not None and early.ready.hub_hold)
            done = self._price(receipt, view, commit=True)
            self._follow_clock_step_here()  # stepped while the hub was asked: times below
            ready = self._ready(done, view.program(), confirm_now)
        # A hold reserves its applied coupons (the contract §11, §13): used here from now
        # on; a cancel or an expiry gives them back, a confirm keeps them.
        self._use_coupons(done, ready.now)
        now_at, expires, figures, held = ready.now, ready.expires, ready.figures, ready.held
        hub_hold = ready.hub_hold or owed
        request_text = request.text
        # The receipt's own rows say from now on what the hub holds for it.
        ledger.forget_hub_ask(self._ledger, rid)
        if confirm_now:
            # Checkout: the receipt's own rows keep request and result, and are its record
            # (no life row: that is for receipts held first; a retry compares with the
            # stored request, as for a receipt committed before receipts had a life).
            result, typed = self._commit(
                rid, request_text, held, figures, None, done.applied, now_at, ready
            )
            return "CONFIRMED", result, typed
        ledger.insert_life(
            self._ledger,
            ledger.ReceiptLife(
                rid,
                "HELD",
                request.digest,
                request_text,
                ready.held_text,
                ready.figures_text,
                figures["card"],
                figures["localDay"],
                done.mode,
                done.priced.redeemed_points,
                hub_hold,
                ledger.utc_text(now_at),
                ledger.utc_text(expires),
                # priced OFFLINE while the hub may hold a grant for it (one that came past
                # the deadline, or an earlier pricing's): that hold is shrunk to what this
                # one uses (`_shrink_at_hub`), never released while it is open (§11)
                shrink_owed=hub_hold and done.mode == "OFFLINE",
            ),
        )
        if hub_hold and done.mode == "OFFLINE":
            if self._asks.active and self._asks.count > 1:
                self._note_asked_again(rid)
                # and in the ledger, with the hold (review 45, ask45): the note of this
                # process alone was lost by a restart and by a release sent by another
                # process (a one-shot `tillpoint cancel`); its time is the hold's, after
                # its last request (`_release_at_hub`, `_release_unstored`)
                ledger.note_hub_ask(self._ledger, rid, ledger.utc_text(now_at), os.getpid())
            self._hub_call_owed()  # the hold timer sends the shrink (after this commit)
        return "HELD", held, None

    def _price_early(self, receipt: Receipt, *, confirm_now: bool) -> _Early | None:
        """Price a receipt for Hold or Checkout before the write transaction, on a reader's
        connections (one read transaction on each file, beside any commit), and make what
        the commit will store from it; None for a receiptId the ledger already knows (a
        retry, a hold: answered inside). Not one read at a time (`_read`): with a hub,
        pricing a commit waits for its grant, and quotes do not wait for that."""
        # A step made since the call's sweep (while it waited for its receipt's turn) is
        # followed before the read: unfollowed, an hour forward made a Hold sent again
        # take its stored hold for lapsed and note an ask to the hub it never made (its
        # transaction then followed the step and answered the stored hold), whose release
        # was counted owed and sent again once the hold closed (review 36)
        self._follow_clock_step()
        with self._read(alone=False) as (view, conn):
            if ledger.receipt_known(conn, receipt.receipt_id):
                now = ledger.utc_text(self._now())
                if self.hub is not None and ledger.hold_lapsed(conn, receipt.receipt_id, now):
                    # held afresh inside the write transaction, asking the hub there: noted
                    # now, where a note outlives a till killed before that commit
                    self._note_hub_ask(receipt.receipt_id, conn)
                return None
            done = self._price(receipt, view, commit=True, reads=conn)
            program = view.program()
            steps = self._steps_taken  # before `_ready` reads the clock
            return _Early(
                done,
                view.version,
                self._marks(conn, done, program),
                self._ready(done, program, confirm_now),
                program,
                steps,
            )

    def _still(self, early: _Early, view: CacheView) -> bool:
        """Inside the write transaction: whether what `early` was priced from is unchanged
        (the same snapshot version, the same ledger marks), so its figures stand."""
        return early.version == view.version and early.marks == self._marks(
            self._ledger, early.done, view.program()
        )

    def _marks(self, conn: sqlite3.Connection, done: _Priced, program: Program) -> tuple[Any, ...]:
        """`ledger.pricing_marks` of a priced receipt, as the ledger stands now."""
        receipt, customer = done.receipt, done.customer
        codes = [c.code for c in done.coupon_checks if c.code]
        if customer is None and not codes:
            return ()
        return ledger.pricing_marks(
            conn,
            customer.id if customer else None,
            done.ident.card_number or "",
            receipt.at.astimezone(program.zone).date().isoformat(),
            codes,
            self._now(),
            receipt.receipt_id,
        )

    def _ready(self, done: _Priced, program: Program, confirm_now: bool) -> _Ready:
        """What a hold or checkout stores, made from its pricing (before the write
        transaction when priced early): the figures, the held result, the JSON texts, and
        the checkout's result and coupon print job for the offers chosen at pricing."""
        now = self._now()
        expires = now + timedelta(seconds=program.hold_ttl_seconds)
        figures = _figures(done, program)
        held = done.result.to_json()
        held["printedOffers"] = []  # chosen again at Confirm: nothing prints before
        # What a held receipt shows; a checkout's result shows the figures' display instead
        # (`_confirmed`), so it is not worked out for one.
        held["display"] = [] if confirm_now else _priced_display(done.priced, program)
        held["state"] = "HELD"
        held["holdExpiresAt"] = expires.astimezone(UTC).isoformat()
        # Points or coupon codes the hub may hold for this receipt (released at cancel or
        # expiry): granted, or asked for (a request past its deadline may have placed them).
        hub_hold = done.asked_hub or (
            done.mode == "ONLINE"
            and self.hub is not None
            and (done.priced.redeemed_points > 0 or bool(done.result.applied_codes))
        )
        if not confirm_now:
            return _Ready(
                now,
                expires,
                figures,
                held,
                hub_hold,
                json.dumps(held, ensure_ascii=False),
                json.dumps(figures, ensure_ascii=False),
            )
        offers: list[dict[str, Any]] = figures["offers"]
        result = _confirmed(held, figures, offers, self.device_id)
        payload = None
        if offers and not any(o.get("issueCoupon") for o in offers):
            payload = self._print_payload(done.receipt.receipt_id, figures, offers)
        return _Ready(
            now,
            expires,
            figures,
            held,
            hub_hold,
            result=result,
            result_text=_json_text(result),
            offer_ids=tuple(o["id"] for o in offers),
            payload=payload,
            priced=done.result,
        )

    def _confirm(
        self, receipt_id: str, fiscal_document: str | None, view: CacheView
    ) -> dict[str, Any]:
        """Inside the write transaction: commit the held figures, or return the commit."""
        # A step made while the Confirm waited for the lock (after its `sweep_holds`) is
        # followed before the hold's expiry is compared with the clock: an hour forward
        # refused "hold expired" a hold with its minutes left, the payment taken (review 35)
        self._follow_clock_step_here()
        row = self._life(receipt_id)
        if row is None:
            stored = self._stored_receipt(receipt_id)
            if stored is not None:
                return stored[1]
            raise NotFound(f"receipt {receipt_id} is not held at this till")
        state = row.state
        if state == "CONFIRMED":
            found = self._stored_receipt(receipt_id)
            assert found is not None
            return found[1]
        now = self._now()
        if state == "CANCELLED":
            # the contract's words for both (§11), then which of the two it was
            raise Refused(
                f"hold expired: price the receipt again ({receipt_id} was cancelled:"
                " under a new receiptId)"
            )
        if state == "EXPIRED" or row.expires_at <= ledger.utc_text(now):
            raise Refused(f"hold expired: price the receipt again ({receipt_id})")
        held, figures, request_text = (
            json.loads(row.held_result),
            json.loads(row.figures),
            row.request,
        )
        # committed now: the points' dates with the program in force now (§5 step 6)
        figures.update(_points_dates(datetime.fromisoformat(figures["at"]), view.program()))
        self._balance_now(receipt_id, held, figures, view)
        self._pick_offers_now(figures, view)
        result, _ = self._commit(
            receipt_id, request_text, held, figures, fiscal_document, view.applied_through(), now
        )
        # The receipt's own rows keep the request and the result from now on.
        ledger.confirm_life(self._ledger, receipt_id, ledger.utc_text(now), fiscal_document)
        return result

    def _pick_offers_now(self, figures: dict[str, Any], view: CacheView) -> None:
        """Confirm: §7 picks the offers to print after the commit, so from the offers the
        till has now, with the cooldown as the ledger stands now: an offer the hub removed
        since the Hold, or of a campaign whose control group the customer has joined since,
        is not printed (nor given a code, §13), and one printed to the customer meanwhile
        leaves its place to the next by rank. A customer no longer in the cache gets none."""
        customer_id = figures.get("customerId")
        if customer_id is None:
            return
        customer = view.customer(customer_id)
        if customer is None:
            figures["offers"] = []
            return
        program = view.program()
        at = datetime.fromisoformat(figures["at"])
        recent = ledger.printed_within(
            self._ledger, customer.id, at, program.offer_print_cooldown_days, program.zone
        )
        own = view.personal_offers(customer.id)
        printed = offers_to_print(customer, own, at, program, recent.__contains__)
        figures["offers"] = _offers_json(printed)
        figures["cooldownDays"] = program.offer_print_cooldown_days
        figures["timezone"] = program.timezone

    def _balance_now(
        self, receipt_id: str, held: dict[str, Any], figures: dict[str, Any], view: CacheView
    ) -> None:
        """Confirm: the held result's balance (and the display's) as the ledger stands now.

        The sale's figures stay those of the Hold, but receipts of the same customer
        committed since (another basket held beside it) changed what is left after it."""
        customer_id = figures.get("customerId")
        customer = view.customer(customer_id) if customer_id else None
        if customer is None or held.get("balance") is None:
            return
        program = view.program()
        at = datetime.fromisoformat(figures["at"])
        before = ledger.balance(self._ledger, customer, view.applied_through(), at, program)
        expires = figures.get("expiresAt")
        now = self._now()
        held_elsewhere = ledger.held_points(self._ledger, customer.id, now, receipt_id)
        before, held_elsewhere = _with_holds(
            before, held_elsewhere, self._ledger, customer.id, now, receipt_id, at, program
        )
        after = _balance_after(
            before,
            program,
            receipt_id,
            at,
            int(figures["redeemed"]),
            int(figures["earned"]),
            datetime.fromisoformat(figures["activatesAt"]),
            datetime.fromisoformat(expires) if expires else None,
            held_elsewhere,
        )
        _points_fit(after)  # before the commit: refused, nothing stored (a snapshot since)
        figures["spentFrom"] = _spent_from(after, receipt_id)
        if after.as_json() == held["balance"]:
            return
        held["balance"] = after.as_json()
        birthday = in_birthday_window(
            customer.birthday, at.astimezone(program.zone).date(), program.birthday_window_days
        )
        figures["display"] = checkout_display(
            customer.first_name,
            int(figures["earned"]),
            after.available,
            frac(program.birthday_multiplier) if birthday else None,
            _expiring_soon(after, at, program),
        )

    def _price(
        self,
        receipt: Receipt,
        view: CacheView,
        *,
        commit: bool,
        reads: sqlite3.Connection | None = None,
        own_hold: bool = True,
        sold: bool = False,
        sale: dict[str, Any] | None = None,
    ) -> _Priced:
        """Price `receipt`; ledger reads on `reads` (a reader's own connection, `_read`) or,
        by default, on the writer's (with `_lock` held). `own_hold`: the receipt's own
        hold, if any, is left out of what other holds reserve (points, coupons, the day's
        offline limit); False for a quote of another body under a held receiptId. `sold`:
        the committed receipt priced again for its trace (`quote`): its own commit (its
        points, its coupon uses, its offline redemption) is left out of the ledger's
        answers, as it was not there when the receipt was priced for the sale; `sale`, its
        committed result (or its open hold's `mode` and `redeemedPoints`), says how the
        hub capped it (its mode, the points it was granted), as the hub is not asked again."""
        conn = self._ledger if reads is None else reads
        own_id = receipt.receipt_id if own_hold else None
        sold_id = receipt.receipt_id if sold else None
        # an INVALID card is decided without a look-up (§4): bad input, refused before the
        # empty till's precondition as any bad input is (a cache with no snapshot holds no
        # card, so no BLOCKED one either)
        ident = _require_card(identify(receipt.card, view))
        _require_snapshot(view)
        program = view.program()
        customer = ident.customer
        products = view.products([line.sku for line in receipt.lines], receipt.receipt_id)
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
        checks = coupons.check(
            receipt.coupons,
            receipt.at,
            customer,
            lambda code: (
                view.coupon(code)
                or ledger.issued_coupon(conn, code, applied.get(self.device_id, 0))
            ),
            lambda code: ledger.coupon_used(conn, code, self._now(), own_id, sold_id),
        )
        personal: list[Offer] = []
        lines_categories: Callable[[str], frozenset[str]] = categories_of
        if customer is not None:  # only the offers its lines might get are parsed
            # categories_of(sku) for every SKU of the receipt, in one loop with no call
            of_sku = dict.fromkeys([line.sku for line in receipt.lines], _NO_CATEGORIES)
            for sku, product in products.items():  # the receipt's SKUs that are products
                found = lineage.get(product.category)
                if found is None:
                    found = lineage[product.category] = ancestors(product.category, parents)
                of_sku[sku] = found
            lines_categories = of_sku.__getitem__  # every line's SKU is in it
            groups = frozenset().union(*of_sku.values())
            personal = view.personal_offers_for(customer.id, of_sku.keys(), groups)
        before = None
        held_elsewhere = 0
        offline_used: int | None = None
        if customer is not None:
            # A standalone till caps redemption with the day's offline limit (below): its
            # use that day is read with the rest, in one statement; a trace lists the cap
            # even when nothing is asked (the contract §17: every cap).
            capped = self.hub is None and (receipt.redeem_points != 0 or receipt.explain)
            marks = ledger.quote_reads(
                conn,
                customer.id,
                ident.card_number or "",
                _local_day(receipt, program) if capped else None,
                self._now(),
                own_id,
                sold_id,
            )
            before = ledger.balance(
                conn, customer, applied, receipt.at, program, moved=marks.moved, sold=sold_id
            )
            # This till's other open holds reserve their points (the contract §11).
            held_elsewhere = marks.held
            before, held_elsewhere = _with_holds(
                before, held_elsewhere, conn, customer.id, self._now(), own_id, receipt.at, program
            )
            if capped:
                offline_used = marks.offline
        # Shared by every receipt of this snapshot version: built from the cache's mass
        # offers, never from this receipt's list (empty for an UNKNOWN card).
        mass = view.remembered("mass-index", lambda: OfferIndex(view.mass_offers()))
        ctx = PricingContext(
            program=program,
            products=products,
            categories_of=lines_categories,
            customer=customer,
            offers=OfferIndex(personal, also=mass),
            available_points=before.available - held_elsewhere if before else 0,
            coupon_offers=coupons.unlocked(checks),
        )
        # A standalone till caps redemption with the day's offline limit from the start, so
        # the receipt is priced once. With a hub, every redemption asks it (within its
        # deadline) for what the rules allow; a smaller grant, or the offline limit when the
        # hub does not answer, prices the receipt again.
        mode = "ONLINE" if self.hub is not None and self.hub.reachable() else "OFFLINE"
        if offline_used is not None:
            ctx = _with_cap(ctx, max(0, program.offline_redeem_limit_points - offline_used))
        priced = price(receipt, ctx)
        asked_hub = False
        # Online, a commit's applied coupon codes are authorised with its redemption (§13).
        codes = (
            coupons.applied_codes({"coupons": coupons.verdicts(checks, priced.applied_offers)})
            if commit and customer is not None and self.hub is not None
            else []
        )
        if sale is not None and self.hub is not None and customer is not None:
            # §17 after the sale: the caps it was priced with, not the hub's answer now.
            # Online, the hub granted what the sale redeemed when that is less than the
            # rules allowed (else at least what they allowed); offline, the day's limit.
            wanted = priced.redeem_allowed_without_cap
            if sale.get("mode") == "ONLINE" and wanted > 0:
                redeemed = int(sale.get("redeemedPoints") or 0)
                priced = price(receipt, _with_cap(ctx, min(wanted, redeemed), "HUB_GRANT"))
            elif sale.get("mode") != "ONLINE":
                cap = self._offline_remaining(receipt, ident, program, conn, sold_id)
                priced = price(receipt, _with_cap(ctx, cap, "OFFLINE_LIMIT"))
            mode = str(sale.get("mode") or mode)
        elif (
            self.hub is not None
            and customer is not None
            and (priced.redeem_allowed_without_cap > 0 or codes)
        ):
            asked_hub = commit
            cap, mode, used = self._redeem_cap(
                receipt, ident, priced, program, commit, codes, conn, sold_id
            )
            while True:
                if used:  # the hub says another receipt used or holds them: priced without
                    checks = coupons.mark_used(checks, used)
                    ctx = replace(ctx, coupon_offers=coupons.unlocked(checks))
                    priced = price(receipt, ctx)
                final = priced
                if cap < priced.redeem_allowed_without_cap or receipt.explain:  # §17: every cap
                    source = "HUB_GRANT" if mode == "ONLINE" else "OFFLINE_LIMIT"
                    final = price(receipt, _with_cap(ctx, cap, source))
                # Without a used code another code's offer may win a line, and with a
                # smaller grant a points multiplier may come to give something (its line
                # no longer paid in full by points): a code applied now that the hub was
                # not asked about is authorised in its turn, with the others applied now
                # (the receipt's hold at the hub is replaced), so no code is used online
                # that the hub did not hold (§13). Codes it holds that apply no more are
                # let go when the receipt's transaction reaches it.
                again = coupons.applied_codes(
                    {"coupons": coupons.verdicts(checks, final.applied_offers)}
                )
                if not commit or mode != "ONLINE" or set(again) <= set(codes):
                    break
                codes = again
                cap, mode, used = self._redeem_cap(
                    receipt, ident, priced, program, commit, codes, conn, sold_id
                )
            priced = final
        elif self.hub is not None and customer is not None and receipt.explain and mode != "ONLINE":
            # §17: every cap, as a standalone till lists it when nothing is asked: a till
            # whose hub is away prices with the offline limit (nothing to ask the hub)
            cap = self._offline_remaining(receipt, ident, program, conn, sold_id)
            priced = price(receipt, _with_cap(ctx, cap, "OFFLINE_LIMIT"))

        printed: list[Offer] = []
        if commit and customer is not None:
            recent = ledger.printed_within(
                conn, customer.id, receipt.at, program.offer_print_cooldown_days, program.zone
            )
            # only the customer's own offers print (`offers_to_print`): not the mass ones
            own = view.personal_offers(customer.id)
            printed = offers_to_print(customer, own, receipt.at, program, recent.__contains__)

        after = None
        if before is not None:
            activates, expires = _points_times(receipt.at, program)
            after = _balance_after(
                before,
                program,
                receipt.receipt_id,
                receipt.at,
                priced.redeemed_points,
                priced.earned_points,
                activates,
                expires,
                held_elsewhere,  # what the other open holds reserve is not available either
            )
        tier = program.tier(customer.tier).code if customer else None
        verdicts = coupons.verdicts(checks, priced.applied_offers)
        if commit and customer is not None and after is not None:
            birthday = in_birthday_window(
                customer.birthday,
                receipt.at.astimezone(program.zone).date(),
                program.birthday_window_days,
            )
            display = checkout_display(
                customer.first_name,
                priced.earned_points,
                after.available,
                frac(program.birthday_multiplier) if birthday else None,
                _expiring_soon(after, receipt.at, program),
            )
        elif commit and ident.status == "UNKNOWN":  # §8: the points earned after a commit
            display = unknown_card_display(priced.total, priced.earned_points)
        else:
            display = _priced_display(priced, program)
        result = checkout_result(
            receipt, ident, tier, priced, mode, after, printed, verdicts, display
        )
        return _Priced(
            receipt,
            ident,
            priced,
            mode,
            result,
            customer,
            printed,
            applied,
            checks,
            asked_hub,
            _spent_from(after, receipt.receipt_id),
        )

    def _redeem_cap(
        self,
        receipt: Receipt,
        ident: Identification,
        priced: Priced,
        program: Program,
        commit: bool,
        codes: Sequence[str] = (),
        conn: sqlite3.Connection | None = None,
        sold: str | None = None,
    ) -> tuple[int, str, frozenset[str]]:
        """(points the receipt may redeem, mode, coupon codes the hub says are used)."""
        wanted = priced.redeem_allowed_without_cap
        if self.hub is not None and ident.customer is not None:
            try:
                if not commit:
                    # A quote places no hold: ONLINE while the hub answers, else the
                    # offline cap the checkout would get too.
                    if self.hub.reachable():
                        return wanted, "ONLINE", frozenset()
                    raise HubUnavailable("the hub is not answering")
                customer_id = ident.customer.id
                # The hub keeps the hold a minute beyond the till's, which releases it.
                ttl = program.hold_ttl_seconds + HUB_HOLD_MARGIN_S
                self._note_hub_ask(receipt.receipt_id, conn)
                self._tell_offline_limit(program.offline_redeem_limit_points)
                if self._asks.active:
                    self._asks.count += 1
                grant = self.hub.authorise(
                    customer_id,
                    receipt.receipt_id,
                    wanted,
                    receipt.at,
                    hold_ttl_s=ttl,
                    coupon_codes=codes,
                    since=self._first_ask(),
                    # what the hub keeps of a grant past the deadline (review 36)
                    offline_limit=program.offline_redeem_limit_points,
                )
                return grant.points, "ONLINE", grant.used_coupons
            except HubUnavailable:
                pass
        # Offline the till's own rules stand: a code at most once here (§13).
        remaining = self._offline_remaining(receipt, ident, program, conn, sold)
        told = self._asks.told if self._asks.active else None
        if commit and told is not None:
            # An earlier request of this call told the hub a lower limit (its snapshot then:
            # a pull landed before this pricing again in the write transaction), and the
            # hub keeps a late grant only up to it: redeemed past it, another till could be
            # granted the same points (the contract §9, review 37)
            remaining = min(remaining, told)
        return remaining, "OFFLINE", frozenset()

    def _tell_offline_limit(self, limit: int) -> None:
        """Note the offline limit a request of this Hold or Checkout tells the hub (the
        lowest one told: what the hub keeps of a grant it makes past the deadline)."""
        asks = self._asks
        if asks.active:
            asks.told = limit if asks.told is None else min(asks.told, limit)

    @contextlib.contextmanager
    def _one_hub_deadline(self) -> Iterator[None]:
        """The hub requests of one Hold or Checkout (its early pricing, a pricing again in
        the write transaction, a request again for each coupon code that comes to apply
        after the hub said another is used) share one deadline, `hub.redeem_timeout_ms`
        from the first (the contract §9: a sale never waits on the hub longer)."""
        self._asks.since = None
        self._asks.told = None  # the lowest offline limit its requests told the hub
        self._asks.count = 0
        self._asks.unkept = None
        self._asks.active = True
        try:
            yield
        finally:
            self._asks.active = False
            self._asks.since = None
            self._asks.told = None
            self._asks.count = 0
            self._asks.unkept = None

    @contextlib.contextmanager
    def _keep_last_ask(self, receipt_id: str) -> Iterator[None]:
        """Around a Hold's or Checkout's write transaction: when it fails (a commit that
        fails, a Conflict found after asking) having asked the hub inside it, the note of
        that last request went with it, and the ledger kept only an earlier one's (the
        early pricing's). It is written again on its own: an unstored ask's release stays
        owed while a grant may come, `LATE_GRANT_S` from its last request (review 45, ask45:
        counted from the first, the window could close before the last request's grant
        landed). Not on a process dying (a `BaseException` other than an `Exception`: what
        a kill leaves); best effort on a ledger that refuses it (the first note stands)."""
        try:
            yield
        except Exception:
            at = self._asks.unkept
            self._asks.unkept = None
            if at is not None:
                try:
                    with self._lock, self._write() as conn:
                        ledger.note_hub_ask(conn, receipt_id, at, os.getpid())
                except Exception:
                    log.warning(
                        "the note of the last hub request of %s was not kept",
                        receipt_id,
                        exc_info=True,
                    )
            raise
        finally:
            self._asks.unkept = None

    def _first_ask(self) -> float:
        """When this Hold's or Checkout's first hub request was made (now, for the first)."""
        since = self._asks.since
        if since is None:
            since = time.monotonic()
            if self._asks.active:
                self._asks.since = since
        return since

    def _note_hub_ask(self, receipt_id: str, conn: sqlite3.Connection | None) -> None:
        """Before a hold's or checkout's request to the hub: written down (committed) so
        that a till killed before it stores the receipt, or whose commit fails, releases
        what the hub holds for it (`retry_hub_releases`); the receipt's own rows take
        over in its commit. Priced inside the write transaction (`conn` the writer's), the
        note is part of it: an early pricing of the receipt already wrote its own."""
        now = ledger.utc_text(self.clock())
        if conn is None or conn is self._ledger:
            ledger.note_hub_ask(self._ledger, receipt_id, now, os.getpid())
            if self._asks.active and self._ledger.in_transaction:
                self._asks.unkept = now  # gone if the transaction fails: `_keep_last_ask`
            return
        with self._lock:
            # Without its own fsync (0.05 ms, not 0.7-4 ms): it guards against the process
            # dying, whose writes the OS keeps; the sale's commit (FULL) fsyncs it with its
            # own. A power cut that loses it leaves the hub's hold to run out there.
            self._ledger.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._write() as writes:
                    ledger.note_hub_ask(writes, receipt_id, now, os.getpid())
            finally:
                self._ledger.execute("PRAGMA synchronous = FULL")

    def _offline_remaining(
        self,
        receipt: Receipt,
        ident: Identification,
        program: Program,
        conn: sqlite3.Connection | None = None,
        sold: str | None = None,
    ) -> int:
        """What is left of the offline limit for this card on the receipt's store-day
        (`sold`: a committed receipt priced again for its trace, its own use left out)."""
        used = ledger.offline_redeemed(
            self._ledger if conn is None else conn,
            ident.card_number or "",
            _local_day(receipt, program),
            # the open holds' time line (review 36: the stepped clock read while a step
            # made during the hub's request was not followed yet took the card's open
            # offline holds for expired, and the limit was spent again)
            self._now(),
            receipt.receipt_id,
            sold,
        )
        return max(0, program.offline_redeem_limit_points - used)

    def _commit(
        self,
        receipt_id: str,
        request_text: str,
        held: dict[str, Any],
        figures: dict[str, Any],
        fiscal_document: str | None,
        applied: dict[str, int],
        now: datetime,
        ready: _Ready | None = None,
    ) -> tuple[dict[str, Any], CheckoutResult | None]:
        """The held figures become the sale: receipt, points, coupons, journal and outbox
        rows in the caller's transaction. Returns the CONFIRMED result, and, from `ready`,
        its typed form (else None). `ready`: the result, its text and the print job made
        before the transaction, used when the offers to print are still those (none
        printed to the customer meanwhile)."""
        self._sale_in_write = True  # a sale stored if this commits (`_write`)
        conn = self._ledger
        customer_id: str | None = figures["customerId"]
        at = datetime.fromisoformat(figures["at"])
        offers: list[dict[str, Any]] = figures["offers"]
        if offers and customer_id is not None:
            # Picked with the pricing (a Checkout) or at Confirm (`_pick_offers_now`); one
            # printed to the customer since (another receipt) waits.
            zone = _zone_or_none(figures.get("timezone"))
            recent = ledger.printed_within(
                conn, customer_id, at, int(figures["cooldownDays"]), zone
            )
            offers = [o for o in offers if o["id"] not in recent]
        if ready is not None and ready.offer_ids != tuple(o["id"] for o in offers):
            ready = None
        if ready is None or ready.result is None:
            ready, result = None, _confirmed(held, figures, offers, self.device_id)
        else:
            result = dict(ready.result)
        seq = ledger.take_seq(conn, self.device_id, applied.get(self.device_id, 0))
        # Where the sale is in the ledger's numbering: stored with the result, so an
        # idempotent replay answers with it too (a quote or a held receipt has neither).
        result["seq"] = seq
        # Encoded once and stored once, in the receipt's row (its outbox row refers to it).
        result_text = _with_seq(ready.result_text, seq) if ready else _json_text(result)
        ledger.insert_receipt(
            conn,
            ledger.ReceiptRow(
                receipt_id=receipt_id,
                device_id=self.device_id,
                seq=seq,
                at=figures["at"],
                local_day=figures["localDay"],
                card=figures["card"],
                customer_id=customer_id,
                mode=figures["mode"],
                redeemed_points=figures["redeemed"],
                extra_points=figures["extra"],
                request=request_text,
                result=result_text,
                created_at=ledger.utc_text(now),
                activates_at=figures["activatesAt"],
                lines=figures["lines"],
            ),
        )
        delta_available = delta_pending = 0
        if customer_id is not None:
            moves: list[ledger.PointMove] = []
            redeemed, earned = int(figures["redeemed"]), int(figures["earned"])
            if redeemed:
                # One row per batch the redemption takes (its expiry on it), so that a
                # refund once the hub has counted the sale gives them back there (§16).
                parts = figures.get("spentFrom") or []
                if sum(int(points) for points, _ in parts) != redeemed:
                    parts = [[redeemed, None]]
                moves += [ledger.PointMove("spend", -int(p), None, e) for p, e in parts]
                delta_available -= redeemed
            if earned:
                moves.append(
                    ledger.PointMove(
                        "earn", earned, figures["activatesAt"], figures.get("expiresAt")
                    )
                )
                if figures["pending"]:
                    delta_pending += earned
                else:
                    delta_available += earned
            ledger.insert_points(conn, self.device_id, seq, customer_id, receipt_id, moves)
            ledger.insert_print_history(
                conn, customer_id, [o["id"] for o in offers], ledger.utc_text(at), receipt_id
            )
        # Journaled before any coupon is issued: the journal holds the numbers taken, so
        # the coupons' transactions number on from this one (`ledger.take_seq`).
        self._journal(
            seq,
            "CHECKOUT",
            receipt_id,
            at,
            customer_id,
            figures["card"],
            request_text,
            result_text,
            delta_available,
            delta_pending,
            now,
            fiscal_document,
            texts="receipt",  # the receipt's row holds request_text and result_text
        )
        if customer_id is not None and offers:
            codes = self._issue_coupons(
                receipt_id, at, customer_id, figures["card"], offers, applied, now
            )
            payload = ready.payload if ready and not codes else None
            self._enqueue_print(receipt_id, figures, offers, now, codes, payload)
        typed = None
        if ready is not None and ready.priced is not None:
            typed = _confirmed_of(ready.priced, result)
        return result, typed

    def _use_coupons(self, done: _Priced, now: datetime) -> None:
        used = done.result.applied_codes
        if not used or done.customer is None:
            return
        offer_of = {c.code: c.offer_id for c in done.coupon_checks if c.offer_id}
        ledger.use_coupons(
            self._ledger,
            [
                ledger.CouponUse(
                    code,
                    done.receipt.receipt_id,
                    done.customer.id,
                    offer_of.get(code) or "",
                    done.receipt.at.isoformat(),
                    ledger.utc_text(now),
                )
                for code in used
            ],
        )

    def _issue_coupons(
        self,
        receipt_id: str,
        at: datetime,
        customer_id: str,
        card: str,
        offers: list[dict[str, Any]],
        applied: dict[str, int],
        now: datetime,
    ) -> dict[str, str]:
        """A one-time code for each printed offer with `issueCoupon` (§13), valid from `at`
        to the offer's end, usable here at once and sent to the hub as a transaction of its
        own (in the receipt's SQLite transaction). Returns offer id -> code."""
        codes: dict[str, str] = {}
        for offer in offers:
            if not offer.get("issueCoupon"):
                continue
            number = ledger.take_coupon_number(
                self._ledger, self.device_id, applied.get(self.device_id, 0)
            )
            coupon = Coupon(
                code=coupons.issued_code(self.device_id, number),
                offer_id=str(offer["id"]),
                customer_id=customer_id,
                valid_from=at,
                # an offer with no end gives a code with none (valid until it is used)
                valid_to=datetime.fromisoformat(str(offer["validTo"]))
                if offer.get("validTo")
                else None,
            )
            doc = coupon.model_dump(mode="json", by_alias=True, exclude_none=True)
            seq = ledger.take_seq(self._ledger, self.device_id, applied.get(self.device_id, 0))
            ledger.insert_issued_coupon(
                self._ledger, coupon.code, receipt_id, json.dumps(doc), ledger.utc_text(now), seq
            )
            request = {"receiptId": receipt_id, "coupon": doc}
            self._journal(
                seq,
                "COUPON_ISSUED",
                coupon.code,
                at,
                customer_id,
                card,
                json.dumps(request, ensure_ascii=False),
                "{}",
                0,
                0,
                now,
            )
            codes[str(offer["id"])] = coupon.code
        return codes

    def _enqueue_print(
        self,
        receipt_id: str,
        figures: dict[str, Any],
        offers: list[dict[str, Any]],
        now: datetime,
        codes: dict[str, str] | None = None,
        payload: str | None = None,
    ) -> None:
        """The coupon job, in the receipt's transaction (`payload`: its text, made before
        the transaction). An offer that could not be printed (say, a text too long) fails
        at the print worker: it costs the coupon, never the sale."""
        if self.device_kinds.get("printer") == "none":
            # No coupon printer on this till: a job would wait for one forever (the
            # queue's depth growing in `status` and the metrics), and print stale coupons
            # the day one is configured. The offers are still the result's printedOffers
            # (what the contract's pick is) and count for the cooldown.
            return
        # the print queue (its transports, the ESC/POS layout): only for a till that prints
        from tillpoint.printer.queue import rfc3339

        if payload is None:
            payload = self._print_payload(receipt_id, figures, offers, codes)
        ledger.insert_print_job(self._ledger, receipt_id, rfc3339(now), payload)

    def _print_payload(
        self,
        receipt_id: str,
        figures: dict[str, Any],
        offers: list[dict[str, Any]],
        codes: dict[str, str] | None = None,
    ) -> str:
        """The coupon job's payload text. Checked by the print worker when it takes the job
        (`printer.payload.payload_source_for_checkout`), not here: a job that would not
        print fails there, costing the coupon, never the sale."""
        from tillpoint.printer.payload import payload_source_for_checkout

        zone = figures.get("timezone")  # absent from a hold placed by an older release
        return payload_source_for_checkout(
            receipt_id,
            figures["at"],
            figures["firstName"],
            [
                o
                | (
                    {"code": codes[o["id"]], "validFrom": _printed_from(figures["at"], o)}
                    if codes and o["id"] in codes
                    else {}
                )
                for o in offers
            ],
            _zone_or_none(zone),
        )

    def _journal(
        self,
        seq: int,
        kind: str,
        ref_id: str,
        at: datetime,
        customer_id: str | None,
        card: str,
        request: str,
        result: str,
        delta_available: int,
        delta_pending: int,
        now: datetime,
        fiscal_document: str | None = None,
        texts: str | None = None,
    ) -> None:
        """The journal entry and outbox row of transaction `seq`. `texts`: 'receipt' or
        'refund' when `request` and `result` are that row's texts, stored there (in this
        transaction) and not again in the outbox (`ledger.insert_journal`)."""
        payload: dict[str, Any] = {
            "deviceId": self.device_id,
            "seq": seq,
            "kind": kind,
            "at": at.isoformat(),
            "customerId": customer_id or "",
            "card": card,
            "pointsDeltaAvailable": delta_available,
            "pointsDeltaPending": delta_pending,
        }
        if fiscal_document:
            payload["fiscalDocument"] = fiscal_document
        row = ledger.JournalRow(
            self.device_id,
            seq,
            kind,
            ref_id,
            at.isoformat(),
            customer_id,
            card,
            ledger.utc_text(now),
        )
        ledger.insert_journal(self._ledger, row, payload, request, result, texts)

    # ------------------------------------------------------------ refund

    def refund(self, refund: Refund) -> RefundResult:
        # A refund of a receipt held here reads the hold's time (why it is refused): a
        # step of the wall clock is followed first, as by every call that reads holds.
        self._follow_clock_step()
        with self._lock, self._write(), self._view() as view:
            # and one made while it waited for the lock (behind another commit): an hour
            # forward told the cashier "its hold expired" of a hold with its minutes
            # left, as a Confirm's "hold expired" (rev35c)
            self._follow_clock_step_here()
            conn = self._ledger
            stored = ledger.stored_refund(conn, refund.refund_id)
            if stored is not None:
                # A retry returns the stored result; another body under the id is a conflict.
                sent = refund.model_dump(mode="json", by_alias=True)
                if not _same_body(stored.request, sent, Refund):
                    raise Conflict(
                        f"refund {refund.refund_id} is already stored with another body:"
                        " use a new refundId"
                    )
                answer = dict(json.loads(stored.result))
                answer.setdefault("deviceId", stored.device_id)  # stored by an older agent
                answer.setdefault("seq", stored.seq)
                return RefundResult.from_json(answer)
            sale = ledger.sold_receipt(conn, refund.receipt_id)
            if sale is None:
                life = self._life(refund.receipt_id)
                moment = ledger.utc_text(self._now())
                if life is not None and life.state == "HELD" and life.expires_at <= moment:
                    life = replace(life, state="EXPIRED")  # past its time, not swept yet
                raise NotFound(_not_committed(refund.receipt_id, life))
            sold_at = datetime.fromisoformat(sale.at)
            card, customer_id = sale.card, sale.customer_id
            # Fixed at commit (the delay in force then), never today's program.
            activates = datetime.fromisoformat(sale.activates_at)
            if refund.at < sold_at:
                raise InputError(
                    f"refund at {refund.at.isoformat()} is before the sale at {sale.at}"
                )
            lines = ledger.receipt_lines(conn, refund.receipt_id)
            sold = [
                SoldLine(
                    line.sku,
                    Fraction(Decimal(line.qty)),
                    line.redeemed_points,
                    line.earned_points,
                    Fraction(Decimal(line.returned_qty)),
                )
                for line in lines
            ]
            outcome = apply_refund(
                sold,
                [(line.sku, Fraction(line.qty)) for line in refund.lines],
                sale.extra_points,
                refund.receipt_id,
            )
            ledger.set_returned(
                conn,
                refund.receipt_id,
                [
                    (line.idx, decimal_text(new))
                    for line, new in zip(lines, outcome.returned_qty, strict=True)
                ],
            )
            applied = view.applied_through()
            seq = ledger.take_seq(conn, self.device_id, applied.get(self.device_id, 0))
            customer = view.customer(customer_id) if customer_id else None
            delta_available = delta_pending = 0
            if customer_id:
                moves: list[ledger.PointMove] = []
                if outcome.returned_points:
                    spent = ledger.spent_expiry(conn, customer_id, refund.receipt_id)
                    moves.append(ledger.PointMove("spend", outcome.returned_points, None, spent))
                    delta_available += outcome.returned_points
                taken = outcome.taken_back_points
                # The receipt's earned points left, and when they expire.
                pending_left, expires = (
                    ledger.earned_left(conn, refund.receipt_id, customer_id) if taken else (0, None)
                )
                if taken and refund.at < activates:
                    # Taken-back points come off the receipt's own pending points first.
                    from_pending = max(0, min(taken, pending_left))
                    if from_pending:
                        moves.append(
                            ledger.PointMove(
                                "earn", -from_pending, ledger.utc_text(activates), expires
                            )
                        )
                        delta_pending -= from_pending
                        taken -= from_pending
                if taken:
                    # The row names when the sale's points activate and expire (never:
                    # None), for a sale the hub has counted (`expiry.Wallet._take_back`).
                    sale_activates = ledger.utc_text(activates)
                    moves.append(ledger.PointMove("spend", -taken, sale_activates, expires))
                    delta_available -= taken
                ledger.insert_points(
                    conn, self.device_id, seq, customer_id, refund.receipt_id, moves
                )
            program = view.program()
            balance = (
                ledger.balance(conn, customer, applied, refund.at, program) if customer else None
            )
            result = RefundResult(
                refund_id=refund.refund_id,
                receipt_id=refund.receipt_id,
                returned_points=outcome.returned_points,
                taken_back_points=outcome.taken_back_points,
                balance=balance_of(balance) if balance else None,
                negative_balance=bool(balance and balance.available < 0),
                device_id=self.device_id,
                seq=seq,
            )
            request = refund.model_dump(mode="json", by_alias=True)
            request_text = json.dumps(request, ensure_ascii=False)
            result_text = json.dumps(result.to_json(), ensure_ascii=False)
            now = self.clock()
            ledger.insert_refund(
                conn,
                ledger.RefundRow(
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
                customer.id if customer else None,
                card,
                request_text,
                result_text,
                delta_available,
                delta_pending,
                now,
                texts="refund",  # the refund's row holds request_text and result_text
            )
            return result

    # ------------------------------------------------------------ reset

    def reset(self, *, force: bool = False) -> ResetResult:
        """Forget the cache and the ledger, but never the device's numbering (the contract §9).

        Refused while the outbox holds transactions the hub has not acknowledged, unless
        `force`; says how many of them were discarded. The ledger is emptied in place,
        in one transaction, except its `device` table (the next sale continues above the
        last seq this till ever used, so the hub never sees a (deviceId, seq) twice) and
        the coupon uses of committed receipts (history: `ledger.forget_all_but_numbering`).
        Open holds go; what they reserved at the hub is released there, best effort. The
        release of a hold whose grant may still land at the hub (`ledger.grants_may_land`)
        stays owed past the reset, as an unstored ask's (review 46, reset46).
        """
        with self._lock:
            depth = ledger.outbox_depth(self._ledger)
            if depth and not force:
                raise Refused(
                    f"{depth} transaction(s) have not reached the hub yet: reset refused"
                    " (bring the hub back, or add --force to discard them)"
                )
            # on the open holds' time line, as `_grant_may_come` and `_release_unstored`
            now = self._now()
            window = self._unstored_window()
            with self._write() as conn:
                hub_holds = ledger.open_hub_holds(conn)
                # A grant may still land after the release sent below (a Hold priced
                # OFFLINE within the minute: its request held up at a busy hub, or a later
                # request of a Hold that asked twice, whose first grant the release drops):
                # forgotten with the ledger, the release took its first answer as final,
                # and the late grant stayed held at the hub for `holdTtlSeconds` + 60 s.
                # Kept as asks, their releases stay owed for the next process's rounds.
                late = ledger.grants_may_land(
                    conn,
                    ledger.utc_text(now - timedelta(seconds=LATE_GRANT_S)),
                    ledger.utc_text(now - window),
                )
                # the seqs discarded unsent are told to the hub, or it waits for them
                discarded = ledger.outbox_seqs(conn) if depth else []
                ledger.forget_all_but_numbering(conn)
                ledger.keep_owed_releases(conn, late)
                ledger.queue_discarded(conn, discarded, ledger.utc_text(self.clock()))
            self._live.close()
            self._memo.clear()
            # under the lock `remove_replaced_plain_wal` checks and unlinks under: one
            # another process ran between its check and its unlink removed the fresh
            # plain cache's -wal and -shm (review 33); not taken (another holder for
            # 10 s), the reset goes on
            with cache_switch_lock(self.data_dir, CACHE_SWITCH_WAIT_S):
                remove_cache(self.data_dir)  # cache.db and every generation
                self._live = LiveCache(self.data_dir, READER_CACHE_KIB)
                self._cache = self._live.connection()
        released: set[str] = set()
        for rid in hub_holds:  # a hub that did not answer one is not asked for the rest
            done = self._release_at_hub(rid, forgotten=True)
            if done is False:
                break
            # None: a shrink or release of it is on its way (the hold timer's), which
            # releases it when it is back (`_shrink_at_hub`); not "the hub is away" (review
            # 34: the holds after it were left held at the hub to their expiry)
            if done:
                released.add(rid)
        # left to expire at the hub: not released and not owed (the kept ones are sent
        # again by the next process's rounds, the hub reached or not now)
        owed = {rid for rid, _ in late}
        left = sum(1 for rid in hub_holds if rid not in released and rid not in owed)
        until = ""
        if late:
            # the last window's end, told on the wall clock the operator reads
            end = datetime.fromisoformat(max(at for _, at in late)) + window
            until = ledger.utc_text(self.clock() + (end - now))
        return ResetResult(depth, len(released), left, len(late), until)

    # ------------------------------------------------------------ status

    def _cache_info(self) -> cache_mod.CacheInfo:
        """The cache's header for `status` (called with `_lock` held): a full snapshot
        switched in since is picked up; a damaged cache is version 0 (status still answers,
        saying so; healthz: not serving)."""
        self._cache = self._live.connection()
        try:
            return cache_mod.info(self._cache)
        except sqlite3.DatabaseError as exc:
            if not is_damage(str(exc)):
                raise
            self._damaged(exc)
            return cache_mod.CacheInfo(0, None, None, None)

    def status(self) -> TillStatus:
        with self._lock:
            # The cache's version, then the ledger's figures; read again when a pull
            # landed between the two (a full snapshot is switched in, and the pull records
            # its end, without this lock): the version before beside the time of the pull
            # that replaced it was a pair no moment had (review 37, rev37b)
            for _ in range(3):
                info = self._cache_info()
                conn = self._ledger
                with ledger.one_read(conn):  # every ledger figure of one moment
                    jobs = ledger.open_print_jobs(conn)
                    status: dict[str, Any] = {
                        "deviceId": self.device_id,
                        "cacheVersion": info.version,
                        "cacheIssuedAt": info.issued_at or "",
                        "cacheExpiresAt": info.expires_at or "",
                        "lastSeq": ledger.last_seq(conn, self.device_id),
                        "outboxDepth": ledger.outbox_depth(conn),
                        "printQueueDepth": int(jobs),
                    }
                    failed, retrying, last_error = ledger.print_queue_health(conn)
                    status["printerLastError"] = last_error
                    for source in self.status_sources:
                        status.update(source(conn))
                    # a pull's data in the cache before it recorded its end
                    if "lastPullAt" in status:
                        status["lastPullAt"] = max(
                            str(status["lastPullAt"]), ledger.last_pull_at(conn, info.version)
                        )
                if self._cache_info().version == info.version:
                    break
            # With a hub, the mode the till prices in now (what a hold just answered), not
            # the sync loop's last recorded one, which lags it by up to a cycle.
            if self.hub is not None:
                status["mode"] = "ONLINE" if self.hub.reachable() else "OFFLINE"
            status.setdefault("mode", "OFFLINE")
            problem = self._storage_problem
            status["storageError"] = problem[1] if problem else ""
            status["storageErrorAt"] = problem[0] if problem else ""
        live: dict[str, Any] | None = None
        devices = self.devices
        if devices is not None:  # live states when run as a service
            try:
                live = {name: dict(state) for name, state in devices.status().items()}
            except Exception:
                log.warning("device status unavailable", exc_info=True)
        if live is not None and live["printer"].get("last_error"):
            # The running worker's own finding is the newest: a printer unreachable while
            # no job waits (its probe) has no job row to carry the reason.
            status["printerLastError"] = str(live["printer"]["last_error"])
        status.update(device_states(self.device_kinds, live, failed, retrying))
        # the display's reason beside its OFFLINE, as the printer's (it said OFFLINE only)
        display = live.get("display") if live is not None else None
        status["displayLastError"] = str((display or {}).get("last_error") or "")
        # the results the printer/display service did not take since this process started
        with self._device_miss_lock:
            status["deviceHandoffFailures"] = self._device_misses
            status["deviceHandoffLastError"] = self._device_miss_error
        return TillStatus.from_json(status)

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _view(self) -> Iterator[CacheView]:
        """A read of the current cache; called with `_lock` held. A full snapshot switched
        in since the last read (by this or another process) is picked up here."""
        self._cache = self._live.connection()
        try:
            with CacheView.reading(self._cache, self._secret, self._memo) as view:
                yield view
        except sqlite3.DatabaseError as exc:  # the ledger's writes inside: theirs unless damage
            if not is_damage(str(exc)):
                raise
            raise self._damaged(exc) from None

    def _damaged(self, exc: sqlite3.DatabaseError) -> StorageError:
        """A damaged file met by a call (`db.is_damage`), not a bug: UNAVAILABLE in words, shown
        in `status` too, never "internal error". A call cannot tell which of its two files
        SQLite found damaged: the message gives the way out for each."""
        text = str(exc)
        error = StorageError(
            f"a database file of this till is damaged ({text}). The cache is only a copy of"
            f" the hub's data: stop tillpoint, delete {self.data_dir / 'cache'}*.db*, and load"
            " a full snapshot again (`tillpoint snapshot load FILE`, or start it enrolled);"
            f" check the ledger with `sqlite3 {ledger.ledger_path(self.data_dir)}"
            " 'PRAGMA integrity_check'`"
        )
        if self._storage_problem is None or self._storage_problem[1] != error.message:
            log.error("pricing is refused: %s", error.message, extra=SAID_BY_THE_COMMAND)
        self._storage_problem = (ledger.utc_text(self.clock()), error.message)
        return error

    @contextlib.contextmanager
    def _read(self, *, alone: bool = True) -> Iterator[tuple[CacheView, sqlite3.Connection]]:
        """Reads without `_lock`: a cache and a ledger connection of the call's own (from
        the idle ones, or new), each in one read transaction, so every read of the call
        sees one committed state. SQLite's WAL lets them run beside a commit; a full
        snapshot switched in is picked up here. One read at a time (`_one_read`) unless
        not `alone`."""
        with self._one_read if alone else contextlib.nullcontext():
            with self._readers_lock:
                reader = self._idle_readers.pop() if self._idle_readers else None
            if reader is None:
                reads = connect(ledger.ledger_path(self.data_dir), create=False)
                reads.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
                reader = (
                    LiveCache(self.data_dir, READER_CACHE_KIB, fallback=self._live.path),
                    reads,
                )
            live, reads = reader
            try:
                with CacheView.reading(live.connection(), self._secret, self._memo) as view:
                    reads.execute("BEGIN")
                    try:
                        yield view, reads
                    finally:
                        reads.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if not is_damage(str(exc)):
                    raise
                raise self._damaged(exc) from None
            finally:
                with self._readers_lock:
                    keep = len(self._idle_readers) < READERS_KEPT and not reads.in_transaction
                    if keep:
                        self._idle_readers.append(reader)
                if not keep:
                    _close_reader(live, reads)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ledger write transaction; anything raised inside rolls all of it back.

        A ledger that cannot be written (a full disk, a read-only mount, another user's
        files) refuses every sale while quotes still work, and the POS hears only
        UNAVAILABLE: it is logged at ERROR when it starts and shown in `status`
        (`storageError`) and the metrics until a sale is stored again: a transaction
        that commits a receipt's rows (`_commit`: a Checkout, a Confirm). Not any write
        that works: on a full disk a cancel or the hold timer's mark rewrites a row in
        place and commits while every sale, which adds rows, is still refused, and the
        sign cleared then told support the till was well (review 35); nor a Hold's one
        row or a Refund's, which a ledger too full for a sale's still takes, nor a
        retry answered from what is stored that moved the open holds by a clock step
        (review 36)."""
        self._followed_step = None
        self._sale_in_write = False
        try:
            with write_transaction(self._ledger, "ledger") as conn:
                self._line_first(conn)
                yield conn
        except BaseException as exc:
            if self._followed_step is not None:
                # a clock step followed in this transaction was rolled back with it: the
                # next reading sees the step again (`_follow_clock_step_here`)
                self._unfollow(self._followed_step)
                self._followed_step = None
            if isinstance(exc, StorageError):
                if self._storage_problem is None or self._storage_problem[1] != exc.message:
                    log.error("sales are refused: %s", exc.message, extra=SAID_BY_THE_COMMAND)
                self._storage_problem = (ledger.utc_text(self.clock()), exc.message)
            raise
        self._followed_step = None
        self._checkpoints.committed()
        if self._storage_problem is not None and self._sale_in_write:
            self._storage_problem = None
            log.warning("the ledger is written again: sales are stored")


# Idle reader connection pairs kept for the next read (`Agent._read`): about as many as
# reads that overlap on a till; each pair costs its two page caches.
READERS_KEPT = 2
# A reader's page cache, each file (KiB; SQLite's default 2,000): a quote touches a few
# hundred KiB of pages and the rest comes from the OS's cache of the files.
READER_CACHE_KIB = 512
# The writer's ledger page cache (KiB): a commit appends at the right edges of its tables.
WRITER_CACHE_KIB = 1024


def _close_reader(live: LiveCache, reads: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        live.close()
        reads.close()


def device_states(
    kinds: dict[str, str], live: dict[str, Any] | None, failed: int, retrying: int
) -> dict[str, str]:
    """`printerState`, `displayState`, `scannerState`: one meaning in the CLI's `status`, the
    gRPC `Status`, the metrics and the demo (docs/DECISIONS.md, "Device states").

    DISABLED: the device is not configured (`kind = "none"`). The printer: OFFLINE or
    ERROR as the running print worker last found it; else FAILED_JOBS while jobs gave up
    (`tillpoint print retry`), RETRYING while jobs wait for another attempt, OK otherwise
    (UNKNOWN in a process with no print worker). The display and scanner: OK or OFFLINE
    from the running service; UNKNOWN in a process that does not drive them (the CLI:
    ask the service, `grpc Status`).
    """
    out: dict[str, str] = {}
    for name in ("printer", "display", "scanner"):
        live_state = str(live[name]["state"]) if live is not None else None
        if live_state is not None:
            configured = live_state != "DISABLED"
        else:
            configured = kinds.get(name, "none") != "none"
        if not configured:
            state = "DISABLED"
        elif name != "printer":
            state = live_state or "UNKNOWN"
        elif live_state in ("OFFLINE", "ERROR"):
            state = live_state
        else:  # no print worker here (the CLI's own process): not OK, which no one checked
            fine = "OK" if live_state is not None else "UNKNOWN"
            state = "FAILED_JOBS" if failed else "RETRYING" if retrying else fine
        out[f"{name}State"] = state
    return out


# ---------------------------------------------------------------- typed results


def card_of(ident: Identification, tier: str | None) -> Card:
    if ident.customer is None or ident.status != "FOUND":
        return Card(ident.status, reason=ident.reason or None)
    return Card("FOUND", ident.customer.id, tier, ident.customer.first_name)


def balance_of(points: ledger.Points) -> Balance:
    _points_fit(points)
    return Balance(
        points.available, points.pending, tuple(ExpiringBatch(p, e) for p, e in points.expiring)
    )


_BALANCE_HINT = "check the customer's balancePoints and pending in the snapshot"


def _points_fit(points: ledger.Points) -> None:
    _fits("the customer's balance", points.available, _BALANCE_HINT)
    _fits("the customer's pending points", points.pending, _BALANCE_HINT)


def _fits(what: str, value: int, hint: str) -> None:
    """Every figure of an answer is an int64 of the proto (gRPC could not encode it, a
    JSON reader would lose it). A receipt's own figures are checked as it is read; the
    sums with the snapshot's `balancePoints` are only known here: such an answer is
    refused (nothing stored), the other customers' receipts are not."""
    if not fits_int64(value):
        raise InputError(f"{what} ({value} points) does not fit in a signed 64-bit integer: {hint}")


_row = tuple.__new__


def checkout_result(
    receipt: Receipt,
    ident: Identification,
    tier: str | None,
    priced: Priced,
    mode: str,
    balance: ledger.Points | None,
    printed: list[Offer],
    verdicts: Sequence[Mapping[str, str]],
    display: Sequence[str],
) -> CheckoutResult:
    """A priced receipt as the result of a quote (a hold and a commit start from it)."""
    pv = priced.point_value
    _fits(
        "the points earned",
        priced.earned_points,
        "check the tier's accrualPercent and the multipliers in the snapshot",
    )
    return CheckoutResult(
        receipt_id=receipt.receipt_id,
        card=card_of(ident, tier),
        mode=mode,
        # tuple.__new__: the named tuple without its Python-level __new__ (half the cost)
        lines=tuple(
            [
                _row(
                    ResultLine,
                    (
                        line.sku,
                        line.amount,
                        line.discount,
                        line.offer_id,
                        line.redeemed_points * pv,
                        line.earned_points,
                    ),
                )
                for line in priced.lines
            ]
        ),
        total_minor=priced.total,
        discount_minor=priced.discount,
        redeemed_points=priced.redeemed_points,
        payable_minor=priced.payable,
        earned_points=priced.earned_points,
        balance=balance_of(balance) if balance else None,
        held_out=tuple(priced.held_out),
        printed_offers=tuple(o.id for o in printed),
        trace=priced.trace,
        coupons=tuple(CouponVerdict(v["code"], v["status"], v["reason"]) for v in verdicts),
        display=tuple(display),
    )


def _expiring_soon(
    points: ledger.Points, at: datetime, program: Program
) -> tuple[int, date] | None:
    """The first batch that expires within `WARN_DAYS` of `at`: its points and local day.
    The days are the store's, at the same local clock time across a clock change (§5 step
    6, §7 and §16 count days so)."""
    if not points.expiring:
        return None
    count, expires_at = points.expiring[0]
    moment = datetime.fromisoformat(expires_at)
    try:
        soon = days_later(at, WARN_DAYS, program.zone)
    except OverflowError:  # `at` within 14 days of the calendar's end: every batch is soon
        soon = None
    if soon is not None and moment > soon:
        return None
    return count, moment.astimezone(program.zone).date()


def _priced_display(priced: Priced, program: Program) -> list[str]:
    """The display while a basket is priced (a quote, a hold): its total, the discount and
    the points' money paid (§8), and the hint of a receipt discount within reach."""
    return quote_display(
        priced.total,
        priced.discount,
        priced.reach,
        priced.redeemed_points * program.point_value_minor,
    )


def _with_holds(
    before: ledger.Points,
    held: int,
    conn: sqlite3.Connection,
    customer_id: str,
    now: datetime,
    but: str | None,
    at: datetime,
    program: Program,
) -> tuple[ledger.Points, int]:
    """`before` with the spending of this till's other open holds of the customer (`held`
    points, §11) when points expire (§16): each hold's at its own `at`, from the batches
    its Confirm will take them from (a batch that has expired by this receipt's `at` took
    them, not the points left now). Returns the points and what is left to take off at
    `at` (0, or `held` when nothing expires: the figures simply add up)."""
    if not held or before.wallet is None:
        return before, held
    spent = before.after(program, at, *ledger.held_spends(conn, customer_id, now, but))
    return (before, held) if spent is None else (spent, 0)


def _balance_after(
    before: ledger.Points,
    program: Program,
    receipt_id: str,
    at: datetime,
    redeemed: int,
    earned: int,
    activates: datetime,
    expires: datetime | None,
    held: int = 0,
) -> ledger.Points:
    """The balance `before` after a receipt's spending and earning, at its `at`. `held`:
    what this till's other open holds of the customer reserve (§11), spent first, so it
    leaves the batches it would take (§16: soonest-expiring first) as well as the
    available figure: `expiring` never lists points a hold has reserved."""
    moves = []
    if held:  # no receipt id: nothing is remembered to route a refund by
        moves.append(Movement("spend", -held, "", at, False))
    if redeemed:
        moves.append(Movement("spend", -redeemed, receipt_id, at, False))
    if earned:
        moves.append(Movement("earn", earned, receipt_id, at, False, activates, expires))
    pending_now = activates > at
    return before.after(program, at, *moves) or ledger.Points(
        before.available - held - redeemed + (0 if pending_now else earned),
        before.pending + (earned if pending_now else 0),
    )


def _stopping(stop: threading.Event | None) -> bool:
    """Whether `tillpoint run`'s stop asked the hold timer to end (`retry_hub_releases`)."""
    return stop is not None and stop.is_set()


def _running_elsewhere(pid: int | None) -> bool:
    """Whether process `pid` is another process still running (an ask of its own process
    takes turns with its release, `HubTurns`; one of a process gone is nobody's call)."""
    return pid is not None and pid != os.getpid() and process_running(pid)


def _spent_from(after: ledger.Points | None, receipt_id: str) -> list[list[Any]]:
    """What a receipt's redemption takes, batch by batch as the replay took it: [points,
    the batch's expiry as stored (None: it never expires, or a debt)]; empty when nothing
    expires (the caller writes one row)."""
    if after is None or after.wallet is None:
        return []
    parts: list[list[Any]] = []
    for batch, points in after.wallet.taken.get(receipt_id, []):
        expires = getattr(batch, "expires_at", None)
        text = ledger.utc_text(expires) if expires is not None else None
        if parts and parts[-1][1] == text:
            parts[-1][0] += points
        else:
            parts.append([points, text])
    return parts


def _require_snapshot(view: CacheView) -> None:
    """Quote, hold and checkout price nothing against an empty cache: it would be a guess."""
    if view.version == 0:
        raise NoSnapshot(
            "no snapshot loaded: load one (tillpoint snapshot load FILE) or let the till"
            " reach its hub"
        )


def _require_card(ident: Identification) -> Identification:
    """A card a sale or a balance may use: an INVALID one is bad input (§4 "malformed
    input", §12's 400), a BLOCKED one a refusal (§12's 412 "blocked card")."""
    if ident.status == "INVALID":
        raise InvalidCard(f"card not accepted: {ident.reason}")
    if ident.status == "BLOCKED":
        raise CardRefused(f"card refused: {ident.reason}; sell without loyalty")
    return ident


class _Request:
    """A receipt as stored: its text (made before the transaction), and its JSON and the
    digest that tells a retry from a conflict, worked out when first asked for (the
    checkout of a new receiptId needs neither)."""

    __slots__ = ("_data", "_digest", "_sent", "text")

    def __init__(self, text: str, sent: str | None = None) -> None:
        self.text = text  # as stored: a phone in `card` is in its keyed form
        self._sent = text if sent is None else sent  # as sent: the digest's
        self._data: dict[str, Any] | None = None
        self._digest: str | None = None

    @classmethod
    def of(cls, receipt: Receipt, secret: bytes | None = None) -> _Request:
        # pydantic's own JSON of the parsed receipt: what model_dump(mode="json") holds,
        # written in one native call (compact; readers parse it)
        sent = receipt.model_dump_json(by_alias=True, exclude_none=True)
        phone = None if secret is None else phone_at_rest(receipt.card, secret)
        if phone is None:
            return cls(sent)
        kept = receipt.model_copy(update={"card": phone})
        return cls(kept.model_dump_json(by_alias=True, exclude_none=True), sent)

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = dict(json.loads(self._sent))
        return self._data

    def same_as(self, stored: str) -> bool:
        """Whether the request stored under this receiptId (its text: a phone in its keyed
        form since review 30, as sent before) is this body (`_same_body`)."""
        return _same_body(stored, self.data) or (
            self.text is not self._sent and _same_body(stored, json.loads(self.text))
        )

    @property
    def digest(self) -> str:
        if self._digest is None:
            # over the request as kept (a phone in its keyed form): a digest of the body as
            # sent would give a phone back to whoever tries them all (docs/CONTRACT.md §4)
            kept = self.data if self.text is self._sent else dict(json.loads(self.text))
            self._digest = request_digest(kept)
        return self._digest

    def matches(self, digest: str) -> bool:
        """Whether a hold stored under `digest` is this request (a retry): by today's digest
        or, for a hold an earlier release stored, by the digest that release made (over the
        body as sent, the phone as typed, before review 30)."""
        return digest == self.digest or any(
            digest == request_digest(self.data, looked_up=earlier)
            for earlier in (*EARLIER_DIGESTS, _LOOKED_UP)
        )


def phone_at_rest(card: str, secret: bytes) -> str | None:
    """What the till keeps of a scanned text that is a phone's (docs/CONTRACT.md §4): its
    keyed hash, `phone:` + 64 hex digits (HMAC-SHA256 of the canonical +7 phone with the
    till's `phone.key`, as the cache keeps customers' phones), the same for every
    spelling of the phone; None for a text that is no phone (a card number, ...)."""
    phone = phone_key(normalise(card))
    return None if phone is None else "phone:" + phone_index(phone, secret)


# What `request_digest` read as it is looked up, in the digests earlier releases stored:
# before 2026-12-02 nothing (the body as sent), then the card and the codes.
EARLIER_DIGESTS: tuple[tuple[str, ...], ...] = ((), ("card", "coupons"))


_LOOKED_UP = ("card", "coupons", "at")


def request_digest(request: dict[str, Any], *, looked_up: tuple[str, ...] = _LOOKED_UP) -> str:
    """SHA-256 of the canonical JSON of a parsed request: what a receiptId was first
    stored with, to tell a retry (the same body) from a conflict (another body).
    Quantities count by value: "2" and "2.000" are the same, and `explain` asks for a
    trace that changes no figure (the contract §17), so it is not part of the body. The
    card, the coupon codes and `at` count as they are looked up (`_as_looked_up`);
    `looked_up` names which do (`EARLIER_DIGESTS`: as earlier releases counted them)."""
    request = _as_looked_up({k: v for k, v in request.items() if k != "explain"}, looked_up)
    lines = request.get("lines")
    if isinstance(lines, list):
        request["lines"] = [_by_value(line) for line in lines]
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _as_looked_up(request: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The card and the coupon codes as they are looked up (§4: blanks and dashes dropped;
    §13: and upper case): "2770 0000 0001 7" is the card "2770000000017", "sorry-7k2q9"
    the code "SORRY7K2Q9", so a retry spelling them another way is a retry. So is one
    writing `at` in another offset: "12:00:00+03:00" and "09:00:00Z" are one moment, and
    a receipt is priced by its moment (the program's time zone makes the local time)."""
    card, codes, at = (request.get(k) if k in fields else None for k in ("card", "coupons", "at"))
    if isinstance(card, str):
        request["card"] = normalise(card)
    if isinstance(codes, list):
        request["coupons"] = [coupon_code(c) if isinstance(c, str) else c for c in codes]
    if isinstance(at, str):
        with contextlib.suppress(ValueError, OverflowError):  # not a time: refused anyway
            request["at"] = datetime.fromisoformat(at).astimezone(UTC).isoformat()
    return request


def _by_value(line: Any) -> Any:
    """A request line with its quantity as `_qty_text` writes it (the line itself when it
    already is)."""
    if not isinstance(line, dict) or "qty" not in line:
        return line
    qty = _qty_text(line["qty"])
    return line if qty == line["qty"] else {**line, "qty": qty}


_PLAIN_QTY = re.compile(r"(\d{1,15})(?:\.(\d{1,3}))?")


def _qty_text(qty: Any) -> str:
    """A quantity by value, as `decimal_text` writes it: "2.000" -> "2", "0.50" -> "0.5".
    A plain decimal (what a parsed receipt holds) is trimmed as text, without a Fraction."""
    text = str(qty)
    if text.isdigit() and text.isascii() and len(text) <= 15 and text[0] != "0":
        return text  # a whole number as written ("2"): most lines
    plain = _PLAIN_QTY.fullmatch(text)
    if plain is None:
        return decimal_text(Fraction(Decimal(text)))
    whole, decimals = plain.group(1).lstrip("0") or "0", (plain.group(2) or "").rstrip("0")
    return f"{whole}.{decimals}" if decimals else whole


def _same_body(stored: str, sent: dict[str, Any], model: type[Receipt | Refund] = Receipt) -> bool:
    """Whether a request stored under an id (its text, perhaps by an older agent) and the
    one sent now are the same body: a retry, not another request under a used id."""
    return _legacy_digest(json.loads(stored), model) == _legacy_digest(sent, model)


def _legacy_digest(request: dict[str, Any], model: type[Receipt | Refund] = Receipt) -> str:
    """`request_digest` of a request without the optional fields left at their defaults
    (a receipt's `explain` false, no `coupons`, ...): a request stored before a field
    existed and the same request parsed today then compare equal."""
    defaults = {
        field.alias or name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required()
    }
    kept = {
        key: value
        for key, value in request.items()
        if key not in defaults or value != _json_value(defaults[key])
    }
    return request_digest(kept)


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _held_earlier(conn: sqlite3.Connection, receipt_id: str, request: _Request) -> bool:
    """Whether the open hold of `receipt_id`, whose digest is not today's (an earlier
    release held it, `Agent._stored_earlier`), is this request by its stored text."""
    row = ledger.receipt_life(conn, receipt_id)
    return row is not None and bool(row.request) and request.same_as(row.request)


def _not_committed(receipt_id: str, life: ledger.ReceiptLife | None) -> str:
    """Why a refund of a receipt this till never committed is refused (§6), in the words
    of its life here (§11): held and not confirmed yet, cancelled, expired, or unknown."""
    state = life.state if life is not None else None
    if state == "HELD":
        return (
            f"receipt {receipt_id} is held here, not confirmed: nothing to refund"
            " (confirm it, or cancel the hold)"
        )
    if state == "CANCELLED":
        return f"receipt {receipt_id} was cancelled here, never committed: nothing to refund"
    if state == "EXPIRED":
        return f"receipt {receipt_id}: its hold expired here, never committed: nothing to refund"
    return f"receipt {receipt_id} was never committed at this till"


def _conflict(receipt_id: str) -> Conflict:
    return Conflict(
        f"receipt {receipt_id} is already stored with another body: use a new receiptId"
    )


# What a trace explains: a committed receipt priced again for its trace (`Agent.quote`)
# gets it only when pricing it now gives these as committed.
_FIGURES = (
    "lines",
    "totalMinor",
    "discountMinor",
    "redeemedPoints",
    "payableMinor",
    "earnedPoints",
    "heldOut",
)


def _as_quote(committed: dict[str, Any], explain: bool = False) -> dict[str, Any]:
    """A committed result answered to a quote of its receiptId: the same figures, as a
    quote has them (§5: nothing printed; no state, device or seq; the quote's display).
    Its trace only if asked for and kept (`Agent.quote` adds one priced again)."""
    drop = ("state", "deviceId", "seq", "holdExpiresAt", *(() if explain else ("trace",)))
    result = {k: v for k, v in committed.items() if k not in drop}
    result["printedOffers"] = []
    result.setdefault("coupons", [])  # stored by an agent older than coupons
    total, discount = int(result["totalMinor"]), int(result["discountMinor"])
    paid = total - discount - int(result["payableMinor"])  # the points' money
    result["display"] = quote_display(total, discount, None, paid)
    return result


def _cancelled(held: dict[str, Any]) -> dict[str, Any]:
    """What Cancel returns: the held figures, none of which happened; the display says so
    (a POS that shows `display` must not keep the held total up)."""
    result = {k: v for k, v in held.items() if k != "holdExpiresAt"}
    result["state"] = "CANCELLED"
    result["display"] = cancelled_display()
    return result


def _receipt_id(value: Any, what: str) -> str:
    """The receiptId of a Confirm or Cancel (`what`), refused in the words the HTTP door
    uses for the same body (`http_api`), so every door says the same (the contract §10)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what}: receiptId must not be empty")
    if len(value) > MAX_RECEIPT_ID:
        raise InputError(f"{what}: receiptId is too long (at most {MAX_RECEIPT_ID} characters)")
    if not is_utf8_text(value):  # a command line's bytes in another encoding (§10)
        raise InputError(f"{what}: receiptId is not UTF-8 text")
    return value


def _points_times(at: datetime, program: Program) -> tuple[datetime, datetime | None]:
    """When a sale's earned points become spendable and when they expire (None: never)."""
    activates = activation_time(at, program)
    return activates, expiry_time(activates, program.points_lifetime_days, program.zone)


def _points_dates(at: datetime, program: Program) -> dict[str, Any]:
    """`_points_times` as the figures keep them, with the program in force at commit (§5
    step 6, §16): Confirm sets them again. A later refund judges "still pending" and
    "expired" by these, whatever the program says by then."""
    activates, expires = _points_times(at, program)
    return {
        "activatesAt": ledger.utc_text(activates),
        "expiresAt": ledger.utc_text(expires) if expires else None,
        "pending": activates > at,
    }


def _figures(done: _Priced, program: Program) -> dict[str, Any]:
    """What Confirm commits, fixed at Hold: the sale's figures as JSON (no pricing again),
    but for its points' dates, which Confirm sets with the program then (`_points_dates`).
    The card is the one identified, or the scanned digits (blanks and dashes dropped):
    an UNKNOWN number's points go to the hub under it, to be settled when the hub knows
    the card (docs/CONTRACT.md §4), a phone of nobody's included."""
    receipt, priced, customer = done.receipt, done.priced, done.customer
    return {
        "at": receipt.at.isoformat(),
        "localDay": receipt.at.astimezone(program.zone).date().isoformat(),
        "card": done.ident.card_number or normalise(receipt.card),
        "customerId": customer.id if customer else None,
        "firstName": customer.first_name if customer else None,
        "mode": done.mode,
        "redeemed": priced.redeemed_points,
        "earned": priced.earned_points,
        "extra": priced.extra_points,
        **_points_dates(receipt.at, program),
        "lines": [
            [line.sku, str(receipt.lines[i].qty), line.redeemed_points, line.earned_points]
            for i, line in enumerate(priced.lines)
        ],
        "offers": _offers_json(done.offers),
        "spentFrom": done.spent_from,
        "cooldownDays": program.offer_print_cooldown_days,
        # the coupons show the sale's time and the offers' validity in the store's time
        "timezone": program.timezone,
        "display": list(done.result.display or ()),
    }


@functools.cache
def _offers_adapter() -> TypeAdapter[list[Offer]]:
    return TypeAdapter(list[Offer])


def _printed_from(at: str, offer: Mapping[str, Any]) -> str:
    """Where a till-issued coupon's printed validity starts: its code is valid from the
    sale (§13), its offer from `validFrom`, which for an offer that starts within 7 days
    (§7) is later: the paper shows when the coupon gives something."""
    start = offer.get("validFrom")
    if start and datetime.fromisoformat(str(start)) > datetime.fromisoformat(at):
        return str(start)
    return at


def _zone_or_none(name: Any) -> ZoneInfo | None:
    """The store's zone a held sale's figures name (checked when its snapshot loaded);
    None (the times as written) for a hold an older release placed."""
    if not isinstance(name, str):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # pragma: no cover - checked at load
        return None


def _offers_json(offers: list[Offer]) -> list[dict[str, Any]]:
    """Each offer's `model_dump(mode="json", by_alias=True, exclude_none=True)`, in one
    native call for the list (≈ 2.4 × faster for a customer's 5 offers)."""
    dumped: list[dict[str, Any]] = _offers_adapter().dump_python(
        offers, mode="json", by_alias=True, exclude_none=True
    )
    return dumped


def _confirmed(
    held: dict[str, Any], figures: dict[str, Any], offers: list[dict[str, Any]], device_id: str
) -> dict[str, Any]:
    """The CONFIRMED result of the held one, but its seq (known inside the transaction)."""
    result = {k: v for k, v in held.items() if k != "holdExpiresAt"}
    result["printedOffers"] = [o["id"] for o in offers]
    result["display"] = figures["display"]
    result["state"] = "CONFIRMED"
    result["deviceId"] = device_id
    return result


def _json_text(doc: Mapping[str, Any]) -> str:
    """A JSON document's text as the ledger stores a result: compact, non-ASCII as is
    (pydantic-core's native encoder, 3-4 × `json.dumps` for a 50-line result; readers
    parse it, so the spaced texts of older agents read the same)."""
    return pydantic_core.to_json(doc).decode()


def _confirmed_of(priced: CheckoutResult, result: dict[str, Any]) -> CheckoutResult:
    """`CheckoutResult.from_json(result)` for the CONFIRMED `result` made from `priced`
    (`_confirmed` of its held form, and the seq), without reading the JSON back: the
    pricing's own rows, with what `_confirmed` and the seq changed (tests/test_commit_rows.py
    checks every field against `from_json`)."""
    return replace(
        priced,
        printed_offers=tuple(result["printedOffers"]),
        display=tuple(result["display"]),
        state="CONFIRMED",
        hold_expires_at=None,
        device_id=result["deviceId"],
        seq=result["seq"],
        stored=result,
    )


def _with_seq(text: str, seq: int) -> str:
    """`_json_text({**result, "seq": seq})` from `_json_text(result)` (a non-empty object
    without "seq"): the one key known only inside the transaction, appended last."""
    return f'{text[:-1]},"seq":{seq}}}'


_NO_CATEGORIES: frozenset[str] = frozenset()


def _local_day(receipt: Receipt, program: Program) -> str:
    """The receipt's store-day (its offline redemption limit's day)."""
    return receipt.at.astimezone(program.zone).date().isoformat()


def _with_cap(ctx: PricingContext, cap: int, source: str = "OFFLINE_LIMIT") -> PricingContext:
    # the context's fields given by name: `dataclasses.replace` inspects the fields each
    # call (≈ 3 × as long, on every known card that redeems)
    return PricingContext(
        program=ctx.program,
        products=ctx.products,
        categories_of=ctx.categories_of,
        customer=ctx.customer,
        offers=ctx.offers,
        available_points=ctx.available_points,
        redeem_cap=cap,
        redeem_cap_source=source,
        coupon_offers=ctx.coupon_offers,
    )


__all__ = ["Agent", "Conflict", "HubGrant", "Refused", "request_digest", "system_clock"]
