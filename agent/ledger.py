"""Reads of the till's ledger (ledger.db): balances, sequence numbers, limits, history.

Writes happen in `service.Agent`, inside the one transaction of a commit or refund.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .models import Coupon, Customer


def utc_text(moment: datetime) -> str:
    """A fixed-width UTC time stamp, so that stored times compare as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Points:
    available: int
    pending: int

    def as_json(self) -> dict[str, int]:
        return {"availablePoints": self.available, "pendingPoints": self.pending}


def balance(
    conn: sqlite3.Connection,
    customer: Customer,
    applied_through: Mapping[str, int],
    at: datetime,
) -> Points:
    """The customer's points at `at` (SPEC §3, §5.6).

    The snapshot's `balancePoints`, plus its `pending` entries due by `at`, plus this
    till's own point movements that the snapshot has not counted yet (seq above
    `appliedThrough` of the device that wrote them). Spending counts at once; earned
    points count from their activation time and are pending before.
    """
    available, pending = customer.balance_points, 0
    for entry in customer.pending:
        if entry.activates_at <= at:
            available += entry.points
        else:
            pending += entry.points
    cutoff = utc_text(at)
    for device, seq, kind, points, activates_at in conn.execute(
        "SELECT device_id, seq, kind, points, activates_at FROM points WHERE customer_id = ?",
        (customer.id,),
    ):
        if seq <= applied_through.get(device, 0):
            continue
        if kind == "spend" or activates_at <= cutoff:
            available += points
        else:
            pending += points
    return Points(available, pending)


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


def offline_redeemed(conn: sqlite3.Connection, card: str, local_day: str) -> int:
    """Points this till let the card spend offline on this store-day."""
    row = conn.execute(
        "SELECT coalesce(sum(redeemed_points), 0) FROM receipts"
        " WHERE card = ? AND local_day = ? AND mode = 'OFFLINE'",
        (card, local_day),
    ).fetchone()
    return int(row[0])


def printed_since(conn: sqlite3.Connection, customer_id: str, since: datetime) -> set[str]:
    """Offers printed to the customer after `since` (the print cooldown, SPEC §7)."""
    return {
        str(offer_id)
        for (offer_id,) in conn.execute(
            "SELECT offer_id FROM print_history WHERE customer_id = ? AND printed_at > ?",
            (customer_id, utc_text(since)),
        )
    }


def take_coupon_number(conn: sqlite3.Connection, device_id: str) -> int:
    """The next number of a coupon this till issues: never reused, like `seq`."""
    key = f"last_coupon:{device_id}"
    row = conn.execute("SELECT value FROM device WHERE key = ?", (key,)).fetchone()
    number = (int(row[0]) if row else 0) + 1
    conn.execute("INSERT OR REPLACE INTO device VALUES (?, ?)", (key, str(number)))
    return number


def issued_coupon(conn: sqlite3.Connection, code: str) -> Coupon | None:
    """A coupon this till issued (usable here at once, before any snapshot carries it)."""
    row = conn.execute("SELECT doc FROM issued_coupons WHERE code = ?", (code,)).fetchone()
    return None if row is None else Coupon.model_validate_json(row[0])


def coupon_used(conn: sqlite3.Connection, code: str) -> bool:
    """Whether a commit on this till used the coupon code (SPEC §13)."""
    return conn.execute("SELECT 1 FROM coupon_uses WHERE code = ?", (code,)).fetchone() is not None


def outbox_depth(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
