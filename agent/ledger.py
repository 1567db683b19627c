"""Reads of the till's ledger (ledger.db): balances, sequence numbers, limits, history.

Writes happen in `service.Agent`, inside the one transaction of a commit or refund.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .expiry import Movement, Wallet
from .models import Coupon, Customer, Program


def utc_text(moment: datetime) -> str:
    """A fixed-width UTC time stamp, so that stored times compare as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Points:
    available: int
    pending: int
    # The next batches that expire (§16): (points, expiresAt as RFC 3339), soonest first.
    expiring: tuple[tuple[int, str], ...] = ()
    # The batches behind these figures when points expire (None: nothing expires), for a
    # receipt's balance after it (`after`).
    wallet: Wallet | None = field(default=None, compare=False, repr=False)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"availablePoints": self.available, "pendingPoints": self.pending}
        if self.expiring:  # proto3 JSON leaves an empty list out
            out["expiring"] = [{"points": p, "expiresAt": e} for p, e in self.expiring]
        return out

    def after(self, program: Program, at: datetime, *moves: Movement) -> Points | None:
        """These points after `moves` (a receipt's spending and earning), at `at`; None
        when nothing expires (the caller adds the figures up)."""
        if self.wallet is None:
            return None
        for move in moves:
            self.wallet.apply(move)
        return _points(self.wallet, at, program)


def balance(
    conn: sqlite3.Connection,
    customer: Customer,
    applied_through: Mapping[str, int],
    at: datetime,
    program: Program | None = None,
) -> Points:
    """The customer's points at `at` (the contract §3, §5.6, §16).

    The snapshot's `balancePoints`, plus its `pending` entries due by `at`, plus this
    till's own point movements that the snapshot has not counted yet (seq above
    `appliedThrough` of the device that wrote them). Spending counts at once; earned
    points count from their activation time and are pending before. When points expire
    (`program.pointsLifetimeDays`, a customer's `expiring`, an earned batch with an
    expiry), they are counted batch by batch instead (`expiry.Wallet`).
    """
    rows = [
        row
        for row in conn.execute(
            # A row of a refund has the sale's receipt_id and the refund's own seq; the
            # journal gives the transaction's time (a refund being written has none yet:
            # it is at `at`).
            "SELECT p.device_id, p.seq, p.kind, p.points, p.activates_at, p.expires_at,"
            " p.receipt_id, r.seq IS NOT NULL AND r.seq <> p.seq, j.at FROM points p"
            " LEFT JOIN receipts r ON r.receipt_id = p.receipt_id"
            " LEFT JOIN journal j ON j.device_id = p.device_id AND j.seq = p.seq"
            " WHERE p.customer_id = ? ORDER BY p.id",
            (customer.id,),
        )
        if row[1] > applied_through.get(row[0], 0)
    ]
    lifetime = program.points_lifetime_days if program is not None else 0
    if program is not None and (lifetime or customer.expiring or any(r[5] for r in rows)):
        return _points(_wallet(customer, rows, program, at), at, program)
    available, pending = customer.balance_points, 0
    for entry in customer.pending:
        if entry.activates_at <= at:
            available += entry.points
        else:
            pending += entry.points
    cutoff = utc_text(at)
    for _, _, kind, points, activates_at, *_ in rows:
        if kind == "spend" or activates_at <= cutoff:
            available += points
        else:
            pending += points
    return Points(available, pending)


def _wallet(customer: Customer, rows: Sequence[Any], program: Program, at: datetime) -> Wallet:
    wallet = Wallet.of(
        customer.balance_points,
        [(e.points, e.expires_at) for e in customer.expiring],
        [(e.points, e.activates_at) for e in customer.pending],
        program.points_lifetime_days,
        program.zone,
    )
    for _, _, kind, points, activates_at, expires_at, receipt_id, by_refund, tx_at in rows:
        wallet.apply(
            Movement(
                kind,
                int(points),
                str(receipt_id),
                datetime.fromisoformat(tx_at) if tx_at else at,
                bool(by_refund),
                datetime.fromisoformat(activates_at) if activates_at else None,
                datetime.fromisoformat(expires_at) if expires_at else None,
            )
        )
    return wallet


def _points(wallet: Wallet, at: datetime, program: Program) -> Points:
    available, pending = wallet.points_at(at)
    expiring = tuple(
        (points, moment.astimezone(program.zone).isoformat())
        for points, moment in wallet.expiring_at(at)
    )
    return Points(available, pending, expiring, wallet)


def last_seq(conn: sqlite3.Connection, device_id: str) -> int:
    row = conn.execute(
        "SELECT value FROM device WHERE key = ?", (f"last_seq:{device_id}",)
    ).fetchone()
    return 0 if row is None else int(row[0])


def take_seq(conn: sqlite3.Connection, device_id: str, applied_through: int) -> int:
    """The next sequence number: above the last one used and above what the hub has counted.

    Called inside the commit's transaction, so a rolled-back commit gives its number back
    and a committed one never repeats (a re-imaged till continues above appliedThrough).
    """
    seq = max(last_seq(conn, device_id), applied_through) + 1
    conn.execute("INSERT OR REPLACE INTO device VALUES (?, ?)", (f"last_seq:{device_id}", str(seq)))
    return seq


def offline_redeemed(
    conn: sqlite3.Connection, card: str, local_day: str, now: datetime | None = None
) -> int:
    """Points this till let the card spend offline on this store-day: committed receipts,
    and, given `now`, the offline holds still open then (the contract §11: a hold reserves)."""
    row = conn.execute(
        "SELECT coalesce(sum(redeemed_points), 0) FROM receipts"
        " WHERE card = ? AND local_day = ? AND mode = 'OFFLINE'",
        (card, local_day),
    ).fetchone()
    used = int(row[0])
    if now is not None:
        used += int(
            conn.execute(
                "SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
                " WHERE card = ? AND local_day = ? AND state = 'HELD' AND mode = 'OFFLINE'"
                " AND expires_at > ?",
                (card, local_day, utc_text(now)),
            ).fetchone()[0]
        )
    return used


def held_points(
    conn: sqlite3.Connection, customer_id: str, now: datetime, but: str | None = None
) -> int:
    """Points reserved by this till's open holds of the customer (but receipt `but`)."""
    row = conn.execute(
        "SELECT coalesce(sum(redeemed_points), 0) FROM receipt_life"
        " WHERE state = 'HELD' AND expires_at > ? AND receipt_id IS NOT ?"
        " AND json_extract(figures, '$.customerId') = ?",
        (utc_text(now), but, customer_id),
    ).fetchone()
    return int(row[0])


def printed_since(conn: sqlite3.Connection, customer_id: str, since: datetime) -> set[str]:
    """Offers printed to the customer after `since` (the print cooldown, the contract §7)."""
    return {
        str(offer_id)
        for (offer_id,) in conn.execute(
            "SELECT offer_id FROM print_history WHERE customer_id = ? AND printed_at > ?",
            (customer_id, utc_text(since)),
        )
    }


def take_coupon_number(conn: sqlite3.Connection, device_id: str, applied_through: int = 0) -> int:
    """The next number of a coupon this till issues: never reused, like `seq`.

    A till with no number of its own yet (new, or re-imaged with its ledger lost) starts
    above what the hub counted of it (`appliedThrough`): each code went to the hub in a
    transaction whose seq is at least its number, so none the hub has seen is made again.
    """
    key = f"last_coupon:{device_id}"
    row = conn.execute("SELECT value FROM device WHERE key = ?", (key,)).fetchone()
    number = (int(row[0]) if row else applied_through) + 1
    conn.execute("INSERT OR REPLACE INTO device VALUES (?, ?)", (key, str(number)))
    return number


def issued_coupon(conn: sqlite3.Connection, code: str) -> Coupon | None:
    """A coupon this till issued (usable here at once, before any snapshot carries it)."""
    row = conn.execute("SELECT doc FROM issued_coupons WHERE code = ?", (code,)).fetchone()
    return None if row is None else Coupon.model_validate_json(row[0])


def coupon_used(conn: sqlite3.Connection, code: str, now: datetime | None = None) -> bool:
    """Whether a commit on this till used the coupon code (the contract §13), or an open
    hold reserves it; given `now`, a hold expired by then (not yet swept) reserves nothing."""
    args: tuple[str, ...] = (code,)
    if now is None:
        sql = "SELECT 1 FROM coupon_uses WHERE code = ?"
    else:
        sql = (
            "SELECT 1 FROM coupon_uses u LEFT JOIN receipt_life l ON l.receipt_id = u.receipt_id"
            " WHERE u.code = ? AND NOT (coalesce(l.state, '') = 'HELD' AND l.expires_at <= ?)"
        )
        args = (code, utc_text(now))
    return conn.execute(sql, args).fetchone() is not None


def outbox_depth(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


KEPT_BY_RESET = frozenset({"device", "sqlite_sequence", "_sqlite_migrations"})


def forget_all_but_numbering(conn: sqlite3.Connection) -> None:
    """`tillpoint reset` inside the caller's write transaction: empty every table of the
    ledger except the device's numbering (and the schema's own bookkeeping).

    Before that, each device's last seq is raised to the highest one in its journal, so
    a number is never reused even if the `device` row was behind.
    """
    for device_id, seq in conn.execute(
        "SELECT device_id, max(seq) FROM journal GROUP BY 1"
    ).fetchall():
        if int(seq) > last_seq(conn, str(device_id)):
            conn.execute(
                "INSERT OR REPLACE INTO device VALUES (?, ?)", (f"last_seq:{device_id}", str(seq))
            )
    tables = [
        str(name)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if str(name) not in KEPT_BY_RESET
    ]
    for name in tables:
        conn.execute(f'DELETE FROM "{name}"')
