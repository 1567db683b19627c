"""Points that expire (docs/CONTRACT.md §16): a customer's points as batches, pure.

A customer's points are batches: the parts of the snapshot's `balancePoints` that expire
(`expiring`), the rest (never expires), the snapshot's `pending` entries and this till's
own earned points (each spendable from its activation time, and expiring
`pointsLifetimeDays` later at the same local clock time). This till's movements not yet
counted by the hub are replayed in time order, then in commit order (`ledger.balance`;
the hub's order too):

- a sale's spending takes the batches spendable at the sale's `at` that expire soonest
  first (those that never expire last); what no batch covers is a debt that counts at once;
- a debt is paid by the points that become spendable after it (a sale's earned points
  activating, points a refund gives back), as they do, soonest-expiring first, as a
  spend would take them: a debt does not outlive points that expire (a customer 50 in
  debt who earns 100 has 50, and 0 when those expire, not -50);
- a refund's returned points go back to the batches that sale took them from, the last
  taken first (the debt before any batch: what is still owed first, then the batches
  that paid it); a batch already expired stays expired;
- a refund's taken-back points come off the sale's own earned batch (a negative earn
  while it is pending, `service.Agent.refund`), else off the batches as a spend, which
  the sale's batch remembers (`Batch.covered`) when another sale had spent it: points a
  later refund gives back into that batch, while it counts, pay that spend back first.

The available balance at T is what is left of the batches spendable and not expired at
T, less the debt still owed; the pending balance is what is left of those not spendable
yet. A snapshot whose `expiring` parts add up to more than its `balancePoints` (a debt
the hub counted) starts with that debt, paid by those parts.

The hub counts by the same rule (`wallet_of`, from `sync.hub_rules`): it builds these
movements from the transactions it counted, each naming its receipt (the device's and the
receipt's id), so a refund's points go back to its sale's batches there too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

# How many batches `Balance.expiring` lists, and how soon a display warns of the first.
EXPIRING_SHOWN = 3
WARN_DAYS = 14


def utc_text(moment: datetime) -> str:
    """A fixed-width UTC time stamp, so that stored times compare as text (ledger.db)."""
    # isoformat: "%Y-%m-%dT%H:%M:%S.%f" and "+00:00", several times quicker than strftime
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_LAST_MICROSECOND = timedelta(microseconds=999_999)


def last_instant(end: datetime) -> datetime:
    """The last moment an inclusive end counts (an offer's or coupon's `validTo`, a batch's
    `expiresAt`; docs/CONTRACT.md §2): an end written in whole seconds ("23:59:59") holds
    through that second, to 23:59:59.999999, so a sale stamped 23:59:59.5 is inside it;
    an end with a fraction of a second is that moment."""
    return end + _LAST_MICROSECOND if end.microsecond == 0 else end


@dataclass
class Tally:
    """Available and pending points at one moment, by the one rule (the contract §3,
    §5.6): spending counts at once; earned points count from their activation time and
    are pending before. The till's balance, its unsynced movements sent to the hub for
    an online redemption, and a snapshot's `pending` entries all add up through it."""

    at: datetime
    available: int = 0
    pending: int = 0

    def __post_init__(self) -> None:
        self._cutoff = utc_text(self.at)

    def active(self, kind: str, activates_at: datetime | str | None) -> bool:
        """Whether a movement counts as available at `at` (a time as stored text, or a
        datetime); an earned movement without an activation time never does."""
        if kind == "spend":
            return True
        if activates_at is None:
            return False
        if isinstance(activates_at, str):
            return activates_at <= self._cutoff
        return activates_at <= self.at

    def add(self, kind: str, points: int, activates_at: datetime | str | None) -> None:
        if self.active(kind, activates_at):
            self.available += points
        else:
            self.pending += points


def days_later(moment: datetime, days: int, zone: ZoneInfo) -> datetime:
    """`days` after `moment` at the same local clock time in `zone`, as a time that exists.

    A clock time the spring change skips (02:30 in Berlin on its last Sunday of March) is
    the moment it would be on the clock before the change (03:30 after it), and is written
    so: a datetime left at its nominal 02:30 compared as 02:30 with times in the same zone
    (Python compares same-tzinfo datetimes by their wall clock) and made the points that
    became spendable then expire an hour early, unlike at the hub. `moment` is read as the
    instant it is (via UTC), whatever clock time it carries.
    """
    local = moment.astimezone(UTC).astimezone(zone)
    naive = local.replace(tzinfo=None) + timedelta(days=days)
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def expiry_time(active_from: datetime, lifetime_days: int, zone: ZoneInfo) -> datetime | None:
    """`lifetime_days` after `active_from` at the same local clock time; None: never."""
    if lifetime_days <= 0:
        return None
    return days_later(active_from, lifetime_days, zone)


@dataclass
class Batch:
    points: int  # what is left of it
    active_from: datetime | None  # None: spendable already
    expires_at: datetime | None  # None: never expires
    order: int = 0  # ties between equal expiry times: the older batch first
    # What a refund of this batch's sale took back elsewhere (a batch or a debt) because
    # another sale had spent the batch: points given back into the batch while it counts
    # pay that back first, so a sale and the sale that spent its points, both returned,
    # leave the balance where it was, in either order.
    covered: list[tuple[Batch | Debt, int]] = field(default_factory=list)

    def spendable(self, at: datetime) -> bool:
        """Spendable at `at`: active, and not past its expiry. `expiresAt` is the last
        moment the points count, as an offer's `validTo` is (inclusive): the contract's
        "expiresAt": "...T23:59:59+03:00" is spendable through that second (`last_instant`),
        gone at the next."""
        return (self.active_from is None or self.active_from <= at) and (
            self.expires_at is None or at <= last_instant(self.expires_at)
        )

    def pending(self, at: datetime) -> bool:
        return self.active_from is not None and at < self.active_from

    def key(self) -> tuple[bool, datetime | None, int]:
        return (self.expires_at is None, self.expires_at, self.order)


@dataclass(eq=False)
class Debt:
    """What a spend took beyond every batch: still owed (`points`), and what paid it since
    (`paid`: the batches, in the order they did)."""

    points: int
    paid: list[tuple[Batch, int]] = field(default_factory=list)


Taken = list[tuple[Batch | Debt, int]]


class Movement(NamedTuple):
    """One of this till's point rows, as `ledger.balance` reads it, or one of the hub's
    counted transactions. A tuple: the hub makes one or two per counted transaction of
    every customer it publishes, and a frozen dataclass took a quarter longer to replay."""

    kind: str  # "spend" or "earn"
    points: int
    receipt_id: str
    at: datetime  # the business time of the sale or refund that wrote it
    by_refund: bool
    activates_at: datetime | None = None
    expires_at: datetime | None = None


# A sale the snapshot counted, for the refunds of it the snapshot has not: what its spending
# took, batch by batch as it was taken ((points, the batch's expiry; None: never expires or
# a debt)), and how many of those points refunds the snapshot counted gave back already.
Counted = tuple[list[tuple[int, datetime | None]], int]


def wallet_of(
    balance_points: int,
    expiring: Iterable[tuple[int, datetime]],
    pending: Iterable[tuple[int, datetime]],
    moves: Iterable[Movement],
    lifetime_days: int,
    zone: ZoneInfo,
    counted: Mapping[str, Counted] | None = None,
) -> Wallet:
    """A customer's batches: a snapshot's figures (`balancePoints`, its `expiring` parts,
    its `pending` entries), then the movements not counted in them, in order. The one
    replay of the till (`ledger.balance`) and of the hub (`hub_rules`). `counted`: the
    till's sales the snapshot counted that refunds in `moves` give points back for."""
    wallet = Wallet.of(balance_points, expiring, pending, lifetime_days, zone)
    for receipt_id, (parts, given) in (counted or {}).items():
        wallet.counted_sale(receipt_id, parts, given)
    for move in moves:
        wallet.apply(move)
    return wallet


@dataclass
class Wallet:
    batches: list[Batch] = field(default_factory=list)
    debts: list[Debt] = field(default_factory=list)  # still owed, the oldest first
    # per sale: the (batch or debt, points) its spending took, in order
    taken: dict[str, Taken] = field(default_factory=dict)
    earned: dict[str, Batch] = field(default_factory=dict)
    rest: Batch | None = None
    # debts are paid up to this moment (None: the snapshot's own, at the first movement)
    settled_to: datetime | None = None

    @property
    def debt(self) -> int:
        return sum(d.points for d in self.debts)

    @classmethod
    def of(
        cls,
        balance_points: int,
        expiring: Iterable[tuple[int, datetime]],
        pending: Iterable[tuple[int, datetime]],
        lifetime_days: int,
        zone: ZoneInfo,
    ) -> Wallet:
        wallet = cls()
        rest = balance_points
        for points, expires_at in expiring:
            wallet._add(Batch(points, None, expires_at))
            rest -= points
        if rest < 0:  # the parts that expire hold more than the balance: a debt
            wallet.debts.append(Debt(-rest))
            rest = 0
        wallet.rest = wallet._add(Batch(rest, None, None))
        for points, activates_at in pending:
            wallet._add(Batch(points, activates_at, expiry_time(activates_at, lifetime_days, zone)))
        return wallet

    def counted_sale(
        self, receipt_id: str, parts: Iterable[tuple[int, datetime | None]], given: int
    ) -> None:
        """A sale the snapshot counted: what its spending took, so that points a refund
        gives back go to batches that expire when those did (§16), an expired one staying
        expired, not to the part that never expires. `given`: what counted refunds gave
        back already, the last taken first."""
        assert self.rest is not None
        took: Taken = [
            (self.rest if expires_at is None else self._add(Batch(0, None, expires_at)), points)
            for points, expires_at in parts
            if points > 0
        ]
        while given > 0 and took:
            batch, part = took[-1]
            back = min(given, part)
            given -= back
            if back == part:
                took.pop()
            else:
                took[-1] = (batch, part - back)
        self.taken[receipt_id] = took

    def _add(self, batch: Batch) -> Batch:
        batch.order = len(self.batches)
        self.batches.append(batch)
        return batch

    def apply(self, m: Movement) -> None:
        """One movement; without a receipt nothing is remembered to route a later refund
        by: points given back then join the part that never expires. An earn moves no
        points anyone owes: it does not settle (the hub replays earns not yet active
        first, at their activation time; settling there would skip ahead of the spends
        it replays after them, and the two would count a debt apart)."""
        if m.kind != "earn":
            self.settle(m.at)
        if m.kind == "earn":
            own = self.earned.get(m.receipt_id)
            if m.points < 0 and own is not None:
                own.points += m.points  # taken back while pending: off its own batch
            elif m.points < 0 and m.activates_at is not None:
                # A sale the snapshot counted: its pending points are the snapshot's
                # `pending` entry that activates when they do.
                left = self._off_counted(-m.points, m.activates_at, m.expires_at, pending=True)
                if left:
                    # A snapshot published after they activated counts them active (no
                    # such entry): they come off the batches that expire when they do, as
                    # a take-back after the activation does, then as a spend, never as a
                    # batch below zero (review 50: it said `pendingPoints` -30 and left
                    # the 30 listed in `expiring`).
                    self.settle(m.at)
                    self._take_back(left, m.receipt_id, m.at, (m.expires_at,))
            else:
                batch = self._add(Batch(m.points, m.activates_at, m.expires_at))
                if m.points > 0 and m.receipt_id:
                    self.earned.setdefault(m.receipt_id, batch)
        elif m.points < 0 and not m.by_refund:
            took = self._spend(-m.points, m.at)
            if m.receipt_id:
                self.taken.setdefault(m.receipt_id, []).extend(took)
        elif m.points < 0:
            # A take-back's row names when the sale's earned points activate and expire
            # (rows written before review 26 do not: `activates_at` None).
            sale = (m.expires_at,) if m.activates_at is not None else None
            self._take_back(-m.points, m.receipt_id, m.at, sale)
        else:
            self._give_back(m.points, m.receipt_id, m.at)

    def settle(self, until: datetime) -> None:
        """Pay the debts with the points that became spendable up to `until`, in the order
        they did (ties: soonest expiry first), each while it counted. Spends and refunds
        come in time order and each settles to its `at` first (an earn only adds a batch),
        so a batch that holds points here got them (or became spendable) after the last
        settling: it pays from then. Queries settle a copy (`_settled`)."""
        since = self.settled_to
        if since is not None and until < since:
            return
        self.settled_to = until
        if not self.debts:
            return
        payers = []
        for b in self.batches:
            if b.points <= 0 or (b.active_from is not None and b.active_from > until):
                continue
            start = b.active_from
            if since is not None and (start is None or start < since):
                start = since
            if start is None or b.expires_at is None or start <= last_instant(b.expires_at):
                payers.append((start is not None, start, b.key(), b))
        payers.sort(key=lambda p: p[:3])
        for *_, batch in payers:
            while self.debts and batch.points > 0:
                debt = self.debts[0]
                part = min(debt.points, batch.points)
                debt.points -= part
                batch.points -= part
                debt.paid.append((batch, part))
                if debt.points == 0:
                    self.debts.pop(0)
            if not self.debts:
                return

    def _spend(self, points: int, at: datetime) -> Taken:
        took: Taken = []
        for batch in sorted(
            (b for b in self.batches if b.points > 0 and b.spendable(at)), key=Batch.key
        ):
            if points == 0:
                break
            part = min(points, batch.points)
            batch.points -= part
            points -= part
            took.append((batch, part))
        if points:
            debt = Debt(points)
            self.debts.append(debt)
            took.append((debt, points))
        return took

    def _take_back(
        self,
        points: int,
        receipt_id: str,
        at: datetime,
        sale: tuple[datetime | None] | None = None,
    ) -> None:
        """Points a refund takes back: off the sale's own earned batch while it counts,
        the rest as a spend. A sale the snapshot counted has no batch of its own here:
        its points are in the snapshot's batches that expire when they do (`sale`: the
        expiry of its earned points, None: never, as the refund's row says), and come
        off those first, as the hub takes them off that sale's batch."""
        own = self.earned.get(receipt_id)
        if own is None and sale is not None:
            points = self._off_counted(points, at, sale[0], pending=False)
            # (the part that never expires holds every sale's points: no owner to pay back)
            owner = self._counted_batch(at, sale[0]) if sale[0] is not None else None
        else:
            owner = own if own is not None and own.spendable(at) else None
            if owner is not None and owner.points > 0:
                part = min(points, owner.points)
                owner.points -= part
                points -= part
        if points:
            took = self._spend(points, at)
            if owner is not None:  # spent by another sale, not expired
                owner.covered.extend(took)

    def _counted_batch(self, at: datetime, expires_at: datetime | None) -> Batch | None:
        """The first batch spendable at `at` that expires at `expires_at`."""
        return next(
            (b for b in self.batches if b.expires_at == expires_at and b.spendable(at)), None
        )

    def _off_counted(
        self, points: int, when: datetime, expires_at: datetime | None, *, pending: bool
    ) -> int:
        """Takes up to `points` off the batches that hold a counted sale's points: pending
        ones that activate at `when` (those expiring at `expires_at` first), or ones
        spendable at `when` that expire at `expires_at`. Returns what is left."""
        if pending:
            found = [b for b in self.batches if b.active_from == when and b.points > 0]
            found.sort(key=lambda b: b.expires_at != expires_at)  # stable: the older first
        else:
            found = [
                b
                for b in self.batches
                if b.expires_at == expires_at and b.points > 0 and b.spendable(when)
            ]
        for batch in found:
            part = min(points, batch.points)
            batch.points -= part
            points -= part
            if not points:
                break
        return points

    def _give_back(self, points: int, receipt_id: str, at: datetime) -> None:
        points = self._undo(self.taken.get(receipt_id, []), points, at)
        if points:  # a sale counted before its rows named their batches (`counted_sale`)
            assert self.rest is not None
            self.rest.points += points

    def _undo(self, took: Taken, points: int, at: datetime) -> int:
        """Gives `points` back at `at` along `took` (what was taken: a batch or a debt, and
        how much), the last taken first; returns what is left over. Into a batch that has
        expired they stay expired (the contract §16), whatever it covered. Into a debt:
        what is still owed first, then the batches that paid it, the last first."""
        while points and took:
            batch, part = took[-1]
            back = min(points, part)
            if isinstance(batch, Debt):
                self._repay(batch, back, at)
            else:
                self._into(batch, back, at)
            points -= back
            if back == part:
                took.pop()
            else:
                took[-1] = (batch, part - back)
        return points

    def _into(self, batch: Batch, points: int, at: datetime) -> None:
        if batch.spendable(at):  # what was taken elsewhere as it was short, first
            batch.points += self._undo(batch.covered, points, at)
        else:
            batch.points += points

    def _repay(self, debt: Debt, points: int, at: datetime) -> None:
        owed = min(points, debt.points)
        if owed:
            debt.points -= owed
            points -= owed
            if debt.points == 0:
                self.debts.remove(debt)
        while points and debt.paid:
            batch, part = debt.paid[-1]
            back = min(points, part)
            self._into(batch, back, at)
            points -= back
            if back == part:
                debt.paid.pop()
            else:
                debt.paid[-1] = (batch, part - back)

    def _settled(self, at: datetime) -> Wallet:
        """This wallet with its debts paid up to `at`: a copy when anything is owed, so a
        query never changes what the movements replayed after it give."""
        if not self.debts:
            return self
        wallet = copy.deepcopy(self)
        wallet.settle(at)
        return wallet

    def points_at(self, at: datetime) -> tuple[int, int]:
        """Available and pending at `at`, the debts paid up to it (an earlier time counts
        what the movements replayed settled already, as it counts every movement)."""
        wallet = self._settled(at)
        available = -wallet.debt
        pending = 0
        for b in wallet.batches:
            if b.pending(at):
                pending += b.points
            elif b.spendable(at):
                available += b.points
        return available, pending

    def expiring_at(self, at: datetime, limit: int = EXPIRING_SHOWN) -> list[tuple[int, datetime]]:
        """The next batches that expire and still hold spendable points, soonest first
        (batches expiring at the same moment as one), the debts paid first. A debt still
        owed at `at` (one dated after it, counted at once, that the replay met after these
        batches had expired) is netted off the soonest of them, as a spend takes them, so
        the list never holds more than `points_at` says is available."""
        wallet = self._settled(at)
        owed = wallet.debt
        by_time: dict[datetime, int] = {}
        live = [b for b in wallet.batches if b.expires_at is not None and b.spendable(at)]
        for b in sorted(live, key=lambda b: b.expires_at or at):
            points = b.points
            if owed and points > 0:
                part = min(owed, points)
                owed -= part
                points -= part
            if points > 0 and b.expires_at is not None:
                by_time[b.expires_at] = by_time.get(b.expires_at, 0) + points
        return [(points, moment) for moment, points in sorted(by_time.items())[:limit]]
