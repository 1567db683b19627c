"""`HubStore` on PostgreSQL: the hub's production store, shared by several hub servers.

The rules are `hub_rules.HubRules`; this module supplies its primitives (`PgTx`), the
bulk paths (import through ``COPY``, publish in one statement, snapshot rows from a
server-side cursor) and the schema's migrations.

Concurrency (several servers, one database):

- ingest takes a transaction-scoped advisory lock on its device, then on the receipts it
  sells (sorted: an authorisation step of one waits for it; review 48), then on the
  customers of its batch and of the holds it may settle (sorted); authorise takes its receipt's
  (`PgTx.lock_receipt`), then the customer's; a coupon authorisation (`hold_coupons`)
  its receipt's. A (deviceId, seq) is checked and stored under its device's lock, and
  ``UNIQUE (device_id, seq)`` stays the last word; the hold accounting of a customer is
  one transaction at a time, and holds the lock only inside the database (`claim_hold`:
  one call of `hub_claim_hold`, after `live_inputs` read the customer's points in one
  statement).
- a statement that deletes several coupon holds locks them in code order first, and an
  ingest writes its coupon rows in code order (review 47: opposite orders deadlocked).
- an ingest's write transaction runs in pipeline mode; its transactions go in one
  ``INSERT … SELECT FROM unnest`` (`PgTx.flush`).
- publish takes a session advisory lock, then reads and writes in one REPEATABLE READ
  transaction: the cut and every device's progress are of one moment.
- reads (snapshot streams, balances) are REPEATABLE READ, READ ONLY: one consistent state.

Migrations are the numbered entries of `MIGRATIONS`, applied in order, each in its own
transaction under an advisory lock (`tillpoint hub migrate --store URL`); a server opens
only a database whose schema is current.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from tillpoint.agent.db import HUB_STORE_HINT
from tillpoint.agent.errors import ForeignDatabase, LaterRelease, StorageError
from tillpoint.agent.ledger import utc_text

from .hub_import import blocks_of
from .hub_rules import (
    HubTx,
    LiveInputs,
    Superseded,
    Texts,
    canon,
    move_of,
)
from .hub_sql import (
    CLEARED,
    MOVE_ORDER,
    POSTGRES,
    SET_ASIDE_RESOLVED,
    SqlHubStore,
    SqlTx,
    category_cycles,
    pg_array,
    publish_sql,
)
from .hub_store import (
    ImportRefused,
    ImportReport,
    ImportRow,
    Publication,
    RowProblem,
    TxIn,
)

try:
    import psycopg
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError:  # pragma: no cover - the optional extra is not installed
    psycopg = None  # type: ignore[assignment]

# What the store says of a call after its `close` (its pool closed: a thread that outlived
# it, as `hub serve`'s snapshot builder past the stop's wait; review 43, tidy43). SQLite's
# store opens its file again instead (`HubServer`'s stop, then its start).
CLOSED = "the hub database is closed"

# psycopg's and its pool's warnings ("discarding closed connection …") go to the hub's
# log when one is set up (`hub serve`); a one-shot command (`hub import`, `hub publish`)
# has none, and Python printed them on stderr before its one-line error.
logging.getLogger("psycopg").addHandler(logging.NullHandler())
log = logging.getLogger(__name__)

MAX_PROBLEMS = 10
CONNECT_TIMEOUT_S = 10
POOL_TIMEOUT_S = 30.0  # waiting for a free connection of the pool
# How long the pool tries to replace a connection it lost before it gives that slot up
# (psycopg_pool's default, 5 minutes, kept slots retrying long after a PostgreSQL
# restart; a slot given up is made again when a caller needs one).
RECONNECT_TIMEOUT_S = 10.0
LOCK_TIMEOUT_MS = 30_000  # waiting for a row or advisory lock
# A call that has waited this long for a pool connection asks whether the database can
# be reached at all (one connection attempt, its answer shared for PROBE_CACHE_S): when
# it cannot (stopped, restarting, every connection taken), the call fails at once
# (UNAVAILABLE) instead of waiting out POOL_TIMEOUT_S, past every till's deadline, with
# one of the server's gRPC threads held all along. A database that is there but busy
# (the pool's connections all in use, a lock) is waited for as before.
# A caller waits for that attempt's answer no longer than its own time left (the attempt
# goes on in a thread of its own, up to PROBE_CONNECT_S, for the callers after it).
PROBE_AFTER_S = 1.0
PROBE_CONNECT_S = 2  # libpq's smallest connect_timeout
PROBE_CACHE_S = 1.0
# A call with a deadline (a gRPC call's time left, `pinned(wait_s)`) waits for a row or
# advisory lock no longer than that time less a tenth of it, at least LOCK_MARGIN_MS (so
# that the answer, UNAVAILABLE, reaches the till before its own deadline), and at least
# LOCK_FLOOR_MS (0 would be "no limit" to PostgreSQL); set on the connection as the call
# takes it from the pool.
LOCK_MARGIN_MS = 50
LOCK_FLOOR_MS = 50
PUBLISH_LOCK = 7_301_401  # advisory lock keys of the hub (any fixed bigints)
MIGRATE_LOCK = 7_301_402
# One import at a time: each checks the master data it leaves (the cards' owners, the
# category tree), which another import's uncommitted rows would change unseen.
IMPORT_LOCK = 7_301_403
# Held shared by every open store (a connection of its own, for the store's life: `hub
# serve`, and each hub command while it runs); `hub migrate` with steps to apply takes it
# exclusive or refuses (docs/HUB.md: a hub is stopped before its schema changes).
OPEN_LOCK = 7_301_404
# How often an open store checks that its open lock is still held (its connection gone
# with a PostgreSQL restart or `pg_terminate_backend`), and takes it again if not.
OPEN_LOCK_CHECK_S = 30.0
FETCH = 4096  # rows per round trip of a server-side cursor

# The schema, one numbered step each; a step is never edited once released, only added.
# Text columns compare in code point order (COLLATE "C"), as SQLite's and Python's do:
# snapshot rows stream in key order and are merged with sums in that same order.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "hub",
        """
        CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE revisions (
            kind TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
            version INTEGER NOT NULL, doc TEXT,
            PRIMARY KEY (kind, key, version)
        );
        CREATE INDEX revisions_version ON revisions (kind, version);
        CREATE INDEX revisions_card_owner ON revisions (((doc::jsonb) ->> 'customerId'))
            WHERE kind = 'card';
        CREATE TABLE draft (
            kind TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, doc TEXT,
            PRIMARY KEY (kind, key)
        );
        CREATE TABLE publications (
            version INTEGER PRIMARY KEY,
            issued_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            cut BIGINT NOT NULL,
            reason TEXT NOT NULL,
            changed_rows BIGINT NOT NULL
        );
        CREATE TABLE publication_progress (
            version INTEGER NOT NULL, device_id TEXT COLLATE "C" NOT NULL,
            through BIGINT NOT NULL,
            PRIMARY KEY (version, device_id)
        );
        CREATE TABLE transactions (
            ingest_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device_id TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            customer_id TEXT COLLATE "C" NOT NULL,
            card TEXT COLLATE "C" NOT NULL,
            receipt_id TEXT COLLATE "C" NOT NULL,
            ref_id TEXT NOT NULL,
            request_json TEXT NOT NULL,
            result_json TEXT NOT NULL,
            sent_delta_available BIGINT NOT NULL,
            sent_delta_pending BIGINT NOT NULL,
            delta_available BIGINT NOT NULL,
            delta_pending BIGINT NOT NULL,
            pending_activates_at TEXT,
            content_sha256 TEXT NOT NULL,
            ingested_at TEXT NOT NULL,
            UNIQUE (device_id, seq)
        );
        CREATE INDEX transactions_customer ON transactions (customer_id, ingest_id);
        CREATE INDEX transactions_card ON transactions (card) WHERE customer_id = '';
        CREATE INDEX transactions_receipt ON transactions (device_id, receipt_id);
        CREATE TABLE device_progress (
            device_id TEXT COLLATE "C" PRIMARY KEY, contiguous_through BIGINT NOT NULL
        );
        CREATE TABLE set_aside (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, outcome TEXT NOT NULL,
            reason TEXT NOT NULL, content_sha256 TEXT NOT NULL, payload TEXT NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (device_id, seq, content_sha256)
        );
        CREATE TABLE push_batches (
            device_id TEXT NOT NULL, batch_id TEXT NOT NULL, content_sha256 TEXT NOT NULL,
            ack TEXT NOT NULL, created_at TEXT NOT NULL,
            PRIMARY KEY (device_id, batch_id)
        );
        CREATE INDEX push_batches_created ON push_batches (created_at);
        CREATE TABLE holds (
            hold_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            receipt_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            points BIGINT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('ACTIVE', 'SETTLED', 'EXPIRED')),
            UNIQUE (device_id, receipt_id)
        );
        CREATE INDEX holds_customer ON holds (customer_id, state);
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            enrolled_at TEXT NOT NULL,
            revoked_at TEXT
        );
        """,
    ),
    (
        2,
        "fiscal_document",
        "ALTER TABLE transactions ADD COLUMN fiscal_document TEXT NOT NULL DEFAULT ''",
    ),
]
MIGRATIONS.append(
    (
        3,
        "coupon_uses",
        """
        CREATE TABLE coupon_uses (
            code TEXT PRIMARY KEY,
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, receipt_id TEXT NOT NULL,
            customer_id TEXT NOT NULL, at TEXT NOT NULL
        );
        CREATE TABLE coupon_conflicts (
            code TEXT NOT NULL,
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, receipt_id TEXT NOT NULL,
            customer_id TEXT NOT NULL, at TEXT NOT NULL,
            PRIMARY KEY (code, device_id, seq)
        );
        """,
    )
)
MIGRATIONS.append(
    (
        4,
        "coupon_holds",
        """
        CREATE TABLE coupon_holds (
            code TEXT PRIMARY KEY,
            device_id TEXT NOT NULL, receipt_id TEXT NOT NULL, customer_id TEXT NOT NULL,
            created_at TEXT NOT NULL, expires_at TEXT NOT NULL
        );
        CREATE INDEX coupon_holds_receipt ON coupon_holds (device_id, receipt_id);
        CREATE INDEX coupon_holds_expires ON coupon_holds (expires_at);
        """,
    )
)
MIGRATIONS.append(
    (
        5,
        "claim_hold",
        """
        CREATE FUNCTION hub_ledger_mark(p_customer TEXT, p_cards TEXT[]) RETURNS TEXT
        LANGUAGE sql STABLE AS $$
            SELECT (SELECT coalesce(max(version), 0) FROM publications)::text || ':'
                || count(*)::text || ':' || coalesce(max(ingest_id), 0)::text
            FROM transactions
            WHERE customer_id = p_customer OR (customer_id = '' AND card = ANY(p_cards))
        $$;
        CREATE FUNCTION hub_claim_hold(
            p_device TEXT, p_receipt TEXT, p_customer TEXT, p_points BIGINT,
            p_spendable BIGINT, p_cards TEXT[], p_mark TEXT, p_hold_id TEXT,
            p_now TEXT, p_expires TEXT
        ) RETURNS TABLE (granted BIGINT, live_balance BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_held BIGINT;
            v_live BIGINT;
            v_granted BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('customer:' || p_customer, 0));
            IF hub_ledger_mark(p_customer, p_cards) <> p_mark THEN
                RETURN;
            END IF;
            UPDATE holds SET state = 'EXPIRED' WHERE customer_id = p_customer
                AND state = 'ACTIVE' AND expires_at <= p_now;
            SELECT coalesce(sum(h.points), 0) INTO v_held FROM holds h
                WHERE h.customer_id = p_customer AND h.state = 'ACTIVE'
                AND NOT (h.device_id = p_device AND h.receipt_id = p_receipt);
            v_live := p_spendable - v_held;
            v_granted := greatest(0, least(p_points, v_live));
            DELETE FROM holds h WHERE h.device_id = p_device AND h.receipt_id = p_receipt;
            IF v_granted > 0 THEN
                INSERT INTO holds VALUES (p_hold_id, p_device, p_receipt, p_customer,
                    v_granted, p_now, p_expires, 'ACTIVE');
            END IF;
            RETURN QUERY SELECT v_granted, v_live;
        END
        $$;
        """,
    )
)
MIGRATIONS.append(
    (
        6,
        "ledger_mark_plpgsql",
        # The same mark, in plpgsql: a SQL function with a FROM is not inlined, and planned
        # its statement on every call (0.2-0.4 ms, twice an authorisation, once under the
        # customer's lock); plpgsql keeps the plan for the session.
        """
        CREATE OR REPLACE FUNCTION hub_ledger_mark(p_customer TEXT, p_cards TEXT[])
        RETURNS TEXT LANGUAGE plpgsql STABLE AS $$
        BEGIN
            RETURN (SELECT (SELECT coalesce(max(version), 0) FROM publications)::text || ':'
                || count(*)::text || ':' || coalesce(max(ingest_id), 0)::text
            FROM transactions
            WHERE customer_id = p_customer OR (customer_id = '' AND card = ANY(p_cards)));
        END
        $$;
        """,
    )
)
MIGRATIONS.append(
    (
        7,
        "till_coupons",
        # Coupon codes whose draft row a till's transaction wrote (a first use: the code
        # leaves; a till-issued code: it joins): a balance refresh publishes these rows too,
        # so no till waits for an operator's `hub publish` to learn them (§3, §13).
        """
        CREATE TABLE till_coupons (code TEXT COLLATE "C" PRIMARY KEY);
        """,
    )
)
MIGRATIONS.append(
    (
        8,
        "claim_hold_settled",
        # A late AuthorizeRedemption (the till's deadline passed, it committed offline and
        # pushed, and the call reached the lock after the ingest) granted a new ACTIVE hold
        # for a receipt already stored (replacing its SETTLED one): the points were taken
        # twice until it expired. Nothing is granted or written for a committed receipt.
        """
        CREATE OR REPLACE FUNCTION hub_claim_hold(
            p_device TEXT, p_receipt TEXT, p_customer TEXT, p_points BIGINT,
            p_spendable BIGINT, p_cards TEXT[], p_mark TEXT, p_hold_id TEXT,
            p_now TEXT, p_expires TEXT
        ) RETURNS TABLE (granted BIGINT, live_balance BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_held BIGINT;
            v_live BIGINT;
            v_granted BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('customer:' || p_customer, 0));
            IF hub_ledger_mark(p_customer, p_cards) <> p_mark THEN
                RETURN;
            END IF;
            UPDATE holds SET state = 'EXPIRED' WHERE customer_id = p_customer
                AND state = 'ACTIVE' AND expires_at <= p_now;
            SELECT coalesce(sum(h.points), 0) INTO v_held FROM holds h
                WHERE h.customer_id = p_customer AND h.state = 'ACTIVE'
                AND NOT (h.device_id = p_device AND h.receipt_id = p_receipt);
            v_live := p_spendable - v_held;
            IF EXISTS (SELECT 1 FROM transactions t WHERE t.device_id = p_device
                    AND t.receipt_id = p_receipt AND t.kind = 'CHECKOUT')
                OR EXISTS (SELECT 1 FROM holds h WHERE h.device_id = p_device
                    AND h.receipt_id = p_receipt AND h.state = 'SETTLED') THEN
                RETURN QUERY SELECT 0::bigint, v_live;
                RETURN;
            END IF;
            v_granted := greatest(0, least(p_points, v_live));
            DELETE FROM holds h WHERE h.device_id = p_device AND h.receipt_id = p_receipt;
            IF v_granted > 0 THEN
                INSERT INTO holds VALUES (p_hold_id, p_device, p_receipt, p_customer,
                    v_granted, p_now, p_expires, 'ACTIVE');
            END IF;
            RETURN QUERY SELECT v_granted, v_live;
        END
        $$;
        """,
    )
)
MIGRATIONS.append(
    (
        9,
        "hold_at",
        # The time of the receipt a hold is for (review 30): the hub replays an active hold
        # as a spend at that time, so points it takes from a batch that expires before
        # another till's receipt are not taken from that receipt's balance a second time.
        """
        ALTER TABLE holds ADD COLUMN receipt_at TEXT NOT NULL DEFAULT '';
        DROP FUNCTION hub_claim_hold(TEXT, TEXT, TEXT, BIGINT, BIGINT, TEXT[], TEXT, TEXT,
            TEXT, TEXT);
        CREATE FUNCTION hub_claim_hold(
            p_device TEXT, p_receipt TEXT, p_customer TEXT, p_points BIGINT,
            p_spendable BIGINT, p_cards TEXT[], p_mark TEXT, p_hold_id TEXT,
            p_now TEXT, p_expires TEXT, p_at TEXT
        ) RETURNS TABLE (granted BIGINT, live_balance BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_held BIGINT;
            v_live BIGINT;
            v_granted BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('customer:' || p_customer, 0));
            IF hub_ledger_mark(p_customer, p_cards) <> p_mark THEN
                RETURN;
            END IF;
            UPDATE holds SET state = 'EXPIRED' WHERE customer_id = p_customer
                AND state = 'ACTIVE' AND expires_at <= p_now;
            SELECT coalesce(sum(h.points), 0) INTO v_held FROM holds h
                WHERE h.customer_id = p_customer AND h.state = 'ACTIVE'
                AND NOT (h.device_id = p_device AND h.receipt_id = p_receipt);
            v_live := p_spendable - v_held;
            IF EXISTS (SELECT 1 FROM transactions t WHERE t.device_id = p_device
                    AND t.receipt_id = p_receipt AND t.kind = 'CHECKOUT')
                OR EXISTS (SELECT 1 FROM holds h WHERE h.device_id = p_device
                    AND h.receipt_id = p_receipt AND h.state = 'SETTLED') THEN
                RETURN QUERY SELECT 0::bigint, v_live;
                RETURN;
            END IF;
            v_granted := greatest(0, least(p_points, v_live));
            DELETE FROM holds h WHERE h.device_id = p_device AND h.receipt_id = p_receipt;
            IF v_granted > 0 THEN
                INSERT INTO holds VALUES (p_hold_id, p_device, p_receipt, p_customer,
                    v_granted, p_now, p_expires, 'ACTIVE', p_at);
            END IF;
            RETURN QUERY SELECT v_granted, v_live;
        END
        $$;
        """,
    )
)
MIGRATIONS.append(
    (
        10,
        "set_aside_resolved",
        # Review 32 (hub32b): a set-aside entry of a seq taken reads resolved once its
        # sale or refund is stored under the seq the till numbered it again with (SQLite's
        # m006_set_aside_resolved: the same statements).
        SET_ASIDE_RESOLVED,
    )
)
MIGRATIONS.append(
    (
        11,
        "claim_hold_superseded",
        # Review 39 (grant39): a late AuthorizeRedemption (its till's deadline long past,
        # the receipt held again ONLINE since) replaced the newer hold with its own grant,
        # cut to the offline limit: the hub held less than the till redeemed. A call that
        # came (`p_now`, the hub's clock at its arrival) before the receipt's ACTIVE hold
        # or a coupon hold of it was placed writes nothing and answers granted -1
        # (`hub_rules.Superseded`); a committed receipt answers 0 as before.
        """
        CREATE OR REPLACE FUNCTION hub_claim_hold(
            p_device TEXT, p_receipt TEXT, p_customer TEXT, p_points BIGINT,
            p_spendable BIGINT, p_cards TEXT[], p_mark TEXT, p_hold_id TEXT,
            p_now TEXT, p_expires TEXT, p_at TEXT
        ) RETURNS TABLE (granted BIGINT, live_balance BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_held BIGINT;
            v_live BIGINT;
            v_granted BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('customer:' || p_customer, 0));
            IF hub_ledger_mark(p_customer, p_cards) <> p_mark THEN
                RETURN;
            END IF;
            UPDATE holds SET state = 'EXPIRED' WHERE customer_id = p_customer
                AND state = 'ACTIVE' AND expires_at <= p_now;
            SELECT coalesce(sum(h.points), 0) INTO v_held FROM holds h
                WHERE h.customer_id = p_customer AND h.state = 'ACTIVE'
                AND NOT (h.device_id = p_device AND h.receipt_id = p_receipt);
            v_live := p_spendable - v_held;
            IF EXISTS (SELECT 1 FROM transactions t WHERE t.device_id = p_device
                    AND t.receipt_id = p_receipt AND t.kind = 'CHECKOUT')
                OR EXISTS (SELECT 1 FROM holds h WHERE h.device_id = p_device
                    AND h.receipt_id = p_receipt AND h.state = 'SETTLED') THEN
                RETURN QUERY SELECT 0::bigint, v_live;
                RETURN;
            END IF;
            IF EXISTS (SELECT 1 FROM holds h WHERE h.device_id = p_device
                    AND h.receipt_id = p_receipt AND h.state = 'ACTIVE'
                    AND h.created_at > p_now)
                OR EXISTS (SELECT 1 FROM coupon_holds c WHERE c.device_id = p_device
                    AND c.receipt_id = p_receipt AND c.created_at > p_now) THEN
                RETURN QUERY SELECT -1::bigint, v_live;
                RETURN;
            END IF;
            v_granted := greatest(0, least(p_points, v_live));
            DELETE FROM holds h WHERE h.device_id = p_device AND h.receipt_id = p_receipt;
            IF v_granted > 0 THEN
                INSERT INTO holds VALUES (p_hold_id, p_device, p_receipt, p_customer,
                    v_granted, p_now, p_expires, 'ACTIVE', p_at);
            END IF;
            RETURN QUERY SELECT v_granted, v_live;
        END
        $$;
        """,
    )
)
MIGRATIONS.append(
    (
        12,
        "claim_hold_receipt_lock",
        # Review 46 (pgrace46): the claim's `Superseded` check read the receipt's coupon
        # holds under the customer's lock only; a newer call's coupon step (`hold_coupons`,
        # under the receipt's lock) committed between the check and the insert, and this
        # older call then held its points for the receipt. The receipt's lock first (the
        # key of `PgTx.lock_receipt`), then the customer's: the order of every path.
        """
        CREATE OR REPLACE FUNCTION hub_claim_hold(
            p_device TEXT, p_receipt TEXT, p_customer TEXT, p_points BIGINT,
            p_spendable BIGINT, p_cards TEXT[], p_mark TEXT, p_hold_id TEXT,
            p_now TEXT, p_expires TEXT, p_at TEXT
        ) RETURNS TABLE (granted BIGINT, live_balance BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_held BIGINT;
            v_live BIGINT;
            v_granted BIGINT;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('receipt:'
                || length(p_device)::text || ':' || p_device || p_receipt, 0));
            PERFORM pg_advisory_xact_lock(hashtextextended('customer:' || p_customer, 0));
            IF hub_ledger_mark(p_customer, p_cards) <> p_mark THEN
                RETURN;
            END IF;
            UPDATE holds SET state = 'EXPIRED' WHERE customer_id = p_customer
                AND state = 'ACTIVE' AND expires_at <= p_now;
            SELECT coalesce(sum(h.points), 0) INTO v_held FROM holds h
                WHERE h.customer_id = p_customer AND h.state = 'ACTIVE'
                AND NOT (h.device_id = p_device AND h.receipt_id = p_receipt);
            v_live := p_spendable - v_held;
            IF EXISTS (SELECT 1 FROM transactions t WHERE t.device_id = p_device
                    AND t.receipt_id = p_receipt AND t.kind = 'CHECKOUT')
                OR EXISTS (SELECT 1 FROM holds h WHERE h.device_id = p_device
                    AND h.receipt_id = p_receipt AND h.state = 'SETTLED') THEN
                RETURN QUERY SELECT 0::bigint, v_live;
                RETURN;
            END IF;
            IF EXISTS (SELECT 1 FROM holds h WHERE h.device_id = p_device
                    AND h.receipt_id = p_receipt AND h.state = 'ACTIVE'
                    AND h.created_at > p_now)
                OR EXISTS (SELECT 1 FROM coupon_holds c WHERE c.device_id = p_device
                    AND c.receipt_id = p_receipt AND c.created_at > p_now) THEN
                RETURN QUERY SELECT -1::bigint, v_live;
                RETURN;
            END IF;
            v_granted := greatest(0, least(p_points, v_live));
            DELETE FROM holds h WHERE h.device_id = p_device AND h.receipt_id = p_receipt;
            IF v_granted > 0 THEN
                INSERT INTO holds VALUES (p_hold_id, p_device, p_receipt, p_customer,
                    v_granted, p_now, p_expires, 'ACTIVE', p_at);
            END IF;
            RETURN QUERY SELECT v_granted, v_live;
        END
        $$;
        """,
    )
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def is_postgres_url(text: str | None) -> bool:
    return bool(text) and re.match(r"^postgres(ql)?://", str(text)) is not None


def _need_driver() -> None:
    if psycopg is None:
        raise StorageError(
            "the PostgreSQL store needs psycopg: install tillpoint's postgresql extra"
            " (pip install '.[postgresql]' in its source tree)"
        )


def _line(exc: BaseException, url: str = "") -> str:
    """libpq's message on one line (it spans several), without the statement's text
    PostgreSQL quotes after it ("LINE 1: INSERT INTO …", a caret under it); with `url`,
    the store's, its password masked there too: libpq quotes it as written when it cannot
    read it ("invalid percent-encoded token: "Pa%ss"") and the whole URL when its IPv6
    host is not closed (review 58, rev58)."""
    text = " ".join(str(exc).split("\nLINE ", 1)[0].split())
    if not url:
        return text
    text = _redacted(text)
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _passwords(url: str) -> set[str]:
    """The passwords `url` holds where `_redacted` finds them, as written and decoded."""
    found = re.findall(r"://[^:/@]*:([^@]*)@", url) + re.findall(r"[?&]password=([^&]*)", url)
    return {form for text in found if text for form in (text, unquote(text)) if form}


def _redacted(url: str) -> str:
    """`url` with its password masked wherever libpq takes one: the user part's
    (``user:***@``, the user name empty or not) and a ``password=`` parameter's of the
    query (review 58, mut58c: both were said as written)."""
    url = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def migrate(url: str) -> list[int]:
    """Apply the migrations the database lacks, each in its own transaction; the numbers
    applied (none when it was current)."""
    _need_driver()
    applied: list[int] = []
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            # One migrate at a time, for the session: a second (two hubs started together
            # with `migrate_schema`, the demo) waits here for the first and then finds
            # nothing to apply. It read the version beside the first and took the first's
            # exclusive open lock for a serving hub's: refused (review 31, rev31d).
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            _refuse_foreign(conn, url)  # before anything is written
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            found = row.fetchone()
            if found is not None and int(found[0]) > SCHEMA_VERSION:
                raise _later_release(url, int(found[0]))
            if found is not None and int(found[0]) < SCHEMA_VERSION:
                alone = conn.execute("SELECT pg_try_advisory_lock(%s)", (OPEN_LOCK,)).fetchone()
                if alone is None or not alone[0]:
                    raise StorageError(
                        f"cannot migrate the hub database {_redacted(url)}: it is open in a"
                        " hub (`hub serve`, or another hub command): stop every hub on it"
                        " first, then migrate (nothing was applied)"
                    )
            for number, name, sql in MIGRATIONS:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                    done = conn.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = %s", (number,)
                    ).fetchone()
                    if done is not None:
                        continue
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (number, name),
                    )
                    applied.append(number)
    except psycopg.Error as exc:
        raise StorageError(
            f"cannot migrate the hub database {_redacted(url)}: {_line(exc, url)}"
        ) from None
    return applied


def _refuse_foreign(conn: psycopg.Connection[Any], url: str) -> None:
    """ForeignDatabase (exit 2) when `url` is another program's database: tables in its
    schema and no ``schema_migrations`` of tillpoint's (its columns, its first step or
    none yet). A DSN naming such a database got the hub's tables written into it, or was
    said to be a later release's (golang-migrate's ``schema_migrations``), or failed in
    PostgreSQL's words, exit 1 (review 38, rev38c). Asked before anything is written; a
    database shared with tillpoint's own tables is tillpoint's."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() ORDER BY table_name"
        )
    ]
    if not tables:
        return
    if "schema_migrations" in tables:
        columns = {
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'schema_migrations'"
            )
        }
        if {"version", "name", "applied_at"} <= columns:
            first = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE version = 1 AND name = %s)"
                " FROM schema_migrations",
                (MIGRATIONS[0][1],),
            ).fetchone()
            if first is not None and (not first[0] or first[1]):
                return
    shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    raise ForeignDatabase(
        f"the hub database {_redacted(url)} is another program's PostgreSQL database (its"
        f" tables: {shown}), not a tillpoint hub database: it is left as it was;"
        f" {HUB_STORE_HINT}"
    )


def _later_release(url: str, found: int) -> LaterRelease:
    """A database a later release migrated (a downgrade): `hub migrate` cannot help, and
    this release cannot know what the later steps meant (exit 2, not restarted)."""
    return LaterRelease(
        f"the hub database {_redacted(url)} has schema {found}, past this release's"
        f" {SCHEMA_VERSION}: a later release migrated it; run that release, or restore"
        " the database saved before it was installed"
    )


def schema_version(url: str) -> int:
    _need_driver()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            _refuse_foreign(conn, url)
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
            if exists is None or exists[0] is None:
                return 0
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            found = row.fetchone()
            return 0 if found is None else int(found[0])
    except psycopg.Error as exc:
        raise StorageError(
            f"cannot open the hub database {_redacted(url)}: {_line(exc, url)}"
        ) from None


class PostgresHubStore(SqlHubStore):
    """The hub's store on PostgreSQL; `url` is a libpq URL (postgresql://...)."""

    def __init__(self, url: str, *, migrate_schema: bool = False, pool_size: int = 8) -> None:
        _need_driver()
        self.url = url
        if migrate_schema:
            migrate(url)
        # The open lock before the schema is checked: a migrate that held it exclusive
        # meanwhile has finished, and its schema is the one checked (the check came first
        # until rev31d, and a hub went on over a later release's schema).
        self._open_lock_mutex = threading.Lock()
        self._closing = threading.Event()
        self._open_lock_why: str | None = None  # why the last attempt failed
        self._open_lock = self._hold_open_lock()
        try:
            found = schema_version(url)
            if found > SCHEMA_VERSION:
                raise _later_release(url, found)
            if found != SCHEMA_VERSION:
                raise StorageError(
                    f"the hub database {_redacted(url)} has schema {found}, this hub needs"
                    f" {SCHEMA_VERSION}: run 'tillpoint hub migrate --store URL'"
                )
        except BaseException:
            self._release_open_lock()
            raise
        if self._open_lock is None and self._open_lock_why:
            log.warning("%s", self._open_lock_why)
        self._pinned = threading.local()
        self._probe_lock = threading.Lock()  # held for a few lines, never across the attempt
        self._probed_at = float("-inf")
        self._unreachable: str | None = None  # why the last probe failed
        self._probing: threading.Event | None = None  # set when the attempt under way ends
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=POOL_TIMEOUT_S,
            # A connection is checked as it is handed out: one a PostgreSQL restart or
            # a dropped link killed is replaced, not given to an RPC to fail on.
            # The check also sets the connection's lock_timeout for this checkout (the
            # caller's deadline, `_lock_timeout_ms`): no extra round trip.
            check=self._check_connection,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}",
                "keepalives": 1,
                "keepalives_idle": 30,
            },
            name="tillpoint-hub",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=POOL_TIMEOUT_S)
        except PoolTimeout as exc:
            self._release_open_lock()
            raise StorageError(f"cannot connect to {_redacted(url)}: {_line(exc, url)}") from None
        threading.Thread(target=self._keep_open_lock, name="hub-open-lock", daemon=True).start()

    def _keep_open_lock(self) -> None:
        """The open lock again on a new connection when its own is gone (a PostgreSQL
        restart ends the session and its lock: a `hub migrate` then ran under the serving
        hub until rev31d). Not waiting for a migrate that holds it exclusive meanwhile
        (`pg_try_advisory_lock_shared`): the hub serves on, and says so in its log. The
        mutex is held only to swap the connection, never across a round trip (`close`
        never waits for one)."""
        while not self._closing.wait(OPEN_LOCK_CHECK_S):
            with self._open_lock_mutex:
                conn = self._open_lock
            if conn is not None:
                try:
                    conn.execute("SELECT 1")
                    continue  # held: the session is alive
                except psycopg.Error:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
            again = self._hold_open_lock(wait=False)
            with self._open_lock_mutex:
                if self._closing.is_set():  # closed meanwhile: this one goes too
                    if again is not None:
                        with contextlib.suppress(psycopg.Error):
                            again.close()
                    return
                self._open_lock = again
            if again is not None:
                log.info("the hub database's open lock is held again")

    def _hold_open_lock(self, *, wait: bool = True) -> psycopg.Connection[Any] | None:
        """A connection of the store's own holding OPEN_LOCK shared while the store is
        open, so that `hub migrate` refuses instead of changing the schema under it. Best
        effort: lost with the connection (a PostgreSQL restart), never a reason not to
        serve. At the store's open (`wait`) a failure is logged only once the schema is
        checked: a database that cannot be reached is that check's one-line error."""
        self._open_lock_why = None
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                keepalives=1,
                keepalives_idle=30,  # a dead link found as the pool's are, not in 2 hours
            )
        except psycopg.Error as exc:
            why = _line(exc, self.url)
            self._open_lock_why = f"the hub database's open-lock connection failed: {why}"
            if not wait:  # the database away: its calls say so, this every 30 s would not
                log.info("%s", self._open_lock_why)
            return None
        try:
            if wait:
                conn.execute("SELECT pg_advisory_lock_shared(%s)", (OPEN_LOCK,))
            else:
                got = conn.execute(
                    "SELECT pg_try_advisory_lock_shared(%s)", (OPEN_LOCK,)
                ).fetchone()
                if got is None or not got[0]:
                    log.warning(
                        "the hub database's open lock is held by a `hub migrate`: its"
                        " schema may change under this hub (docs/HUB.md, Migrations)"
                    )
                    conn.close()
                    return None
        except psycopg.Error as exc:
            why = _line(exc, self.url)
            self._open_lock_why = f"the hub database's open lock was not taken: {why}"
            if not wait:
                log.warning("%s", self._open_lock_why)
            conn.close()
            return None
        return conn

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def _conn(self, wait_s: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = getattr(self._pinned, "conn", None)
            if conn is not None:  # the thread's own for now (`pinned`)
                yield conn
                return
            conn = self._checkout(wait_s)
            try:
                with conn:  # commit or roll back; a pool's connection is not closed
                    yield conn
            finally:
                self.pool.putconn(conn)
        except PoolTimeout as exc:
            raise StorageError(f"the hub database is unavailable: {_line(exc, self.url)}") from None
        except PoolClosed:  # used after `close` (a thread that outlived it): not "written"
            raise StorageError(CLOSED) from None
        except psycopg.errors.LockNotAvailable as exc:  # lock_timeout: the call's time, or 30 s
            raise StorageError(
                "the hub database is busy (a lock held by another session outlasted this"
                f" call's time), nothing was stored: {_line(exc)}"
            ) from None
        except psycopg.Error as exc:
            raise StorageError(
                f"the hub database could not be written, nothing was stored: {_line(exc)}"
            ) from None

    def durability_notes(self) -> list[str]:
        """Warnings for settings under which PostgreSQL can lose a commit the hub has
        acknowledged (a till told "stored" never sends it again): said at `hub serve`."""
        notes = []
        with self._conn() as conn:
            for name in ("synchronous_commit", "fsync"):
                found = conn.execute(f"SHOW {name}".encode()).fetchone()
                if found is not None and str(found[0]) == "off":
                    notes.append(
                        f"the hub database runs with {name} = off: a PostgreSQL crash or"
                        " immediate restart can lose transactions the hub acknowledged,"
                        " and the tills will not send them again (docs/HUB.md, PostgreSQL"
                        " settings)"
                    )
        return notes

    def _checkout(self, wait_s: float | None = None) -> psycopg.Connection[Any]:
        """A connection of the pool; StorageError at once when the database cannot be
        reached (see PROBE_AFTER_S), PoolTimeout after POOL_TIMEOUT_S (or `wait_s`, the
        time the caller has left, when shorter) when it is busy. With `wait_s`, the
        connection's lock waits are bounded by that time too (`_lock_timeout_ms`)."""
        wait = POOL_TIMEOUT_S if wait_s is None else max(0.0, min(wait_s, POOL_TIMEOUT_S))
        deadline = time.monotonic() + wait
        self._pinned.deadline = None if wait_s is None else deadline
        try:
            try:
                return self.pool.getconn(timeout=max(0.01, min(PROBE_AFTER_S, wait)))
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise
            why = self._why_unreachable(deadline)
            if why is not None:
                raise StorageError(f"the hub database is unavailable: {why}")
            return self.pool.getconn(timeout=max(0.01, deadline - time.monotonic()))
        finally:
            self._pinned.deadline = None

    def _lock_timeout_ms(self) -> int:
        """The lock_timeout of the connection being checked out: the caller's time left
        less a tenth (at least LOCK_MARGIN_MS), at least LOCK_FLOOR_MS; else
        LOCK_TIMEOUT_MS."""
        deadline: float | None = getattr(self._pinned, "deadline", None)
        if deadline is None:
            return LOCK_TIMEOUT_MS
        left_ms = (deadline - time.monotonic()) * 1000
        bound = int(left_ms - max(LOCK_MARGIN_MS, left_ms / 10))
        return max(LOCK_FLOOR_MS, min(LOCK_TIMEOUT_MS, bound))

    def _check_connection(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out (run in the caller's thread; it
        was `check_connection`'s empty statement): one `SET lock_timeout` for this caller,
        sent as libpq's simple query (as cheap as the empty one; through `execute` with a
        parameter it cost 20-30 µs more of the server's CPU a call)."""
        res = conn.pgconn.exec_(b"SET lock_timeout = %d" % self._lock_timeout_ms())
        if res.status != psycopg.pq.ExecStatus.COMMAND_OK:
            why = str(conn.pgconn.get_error_message())
            raise psycopg.OperationalError(f"the connection failed its check: {why.strip()}")

    def _why_unreachable(self, deadline: float) -> str | None:
        """None when a new connection to the database can be made now (or no answer came
        before `deadline`, the caller's), else why not. One attempt at a time, in a thread
        of its own; its answer shared for PROBE_CACHE_S. A caller waits for it no longer
        than its own deadline: an attempt can take PROBE_CONNECT_S (a link that drops
        packets), and a call with 1.3 s left, its own attempt or behind another call's,
        answered after about 3 s."""
        with self._probe_lock:
            if time.monotonic() - self._probed_at < PROBE_CACHE_S:
                return self._unreachable
            done = self._probing
            if done is None:
                done = self._probing = threading.Event()
                threading.Thread(
                    target=self._probe, args=(done,), name="hub-db-probe", daemon=True
                ).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            return None  # no answer yet: the caller's last short wait for the pool decides
        with self._probe_lock:
            return self._unreachable

    def _probe(self, done: threading.Event) -> None:
        why: str | None = "the connection attempt failed"
        try:
            psycopg.connect(self.url, autocommit=True, connect_timeout=PROBE_CONNECT_S).close()
            why = None
        except psycopg.Error as exc:
            why = _line(exc, self.url)
        finally:  # whatever happened, the waiters get an answer and the next one may try
            with self._probe_lock:
                self._unreachable = why
                self._probed_at = time.monotonic()
                self._probing = None
            done.set()

    @contextmanager
    def pinned(self, wait_s: float | None = None) -> Iterator[None]:
        """The calling thread's statements use one connection of the pool until the
        block ends: an RPC's three or four short statements (the device's record, the
        customer's inputs, the claim; or the device and the ingest) cost one checkout of
        the pool, not one each (a checkout and its return, with other threads waiting
        for connections, were a quarter of an authorisation's CPU in the server).
        `wait_s`: how long the caller can wait for the connection (an RPC's time left:
        a call its till has given up on does not wait on, holding a server thread)."""
        if getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self._conn(wait_s) as conn:
            self._pinned.conn = conn
            try:
                yield
            finally:
                self._pinned.conn = None

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def _single(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        # `device`: every call of every till asks; one statement (autocommit), one round trip.
        return self._conn()

    @contextmanager
    def write_tx(self) -> Iterator[HubTx]:
        # Pipeline mode: the statements whose results the rules do not read (an ingest's
        # inserts, updates and deletes) go out together, not one round trip each; BEGIN
        # goes with the first of them (the pipeline opened first, then the transaction).
        with self._conn() as conn, conn.pipeline() as pipe, conn.transaction():
            tx = PgTx(conn, pipe)
            yield tx
            tx.flush()

    # What `HubRules.live` reads, as one statement (one snapshot, one round trip): the
    # latest version; the customer's and the program's rows there; the cards the
    # customer owns there (of those any revision gave them); the moves over them
    # (`PgTx.live_moves`); the ledger mark (`hub_ledger_mark`).
    _LIVE_INPUTS = (
        "WITH v AS (SELECT coalesce(max(version), 0) AS v FROM publications),"
        " cards AS (SELECT coalesce(array_agg(c.key ORDER BY c.key), '{}') AS a FROM"
        " (SELECT DISTINCT key FROM revisions WHERE kind = 'card'"
        " AND (doc::jsonb) ->> 'customerId' = %(c)s) c, v WHERE (SELECT r.doc::jsonb"
        " ->> 'customerId' FROM revisions r WHERE r.kind = 'card' AND r.key = c.key"
        " AND r.version <= v.v ORDER BY r.version DESC LIMIT 1) = %(c)s),"
        " moves AS (SELECT coalesce(jsonb_agg(jsonb_build_array(a, w, d, s, e, r, k, b, x)"
        f" ORDER BY i), '[]') AS m FROM (SELECT {POSTGRES.moves}, {MOVE_ORDER} AS i"
        " FROM transactions t, cards"
        " WHERE customer_id = %(c)s OR (customer_id = '' AND card = ANY(cards.a))) x)"
        " SELECT v.v, (SELECT r.doc FROM revisions r WHERE r.kind = 'customer'"
        " AND r.key = %(c)s AND r.version <= v.v ORDER BY r.version DESC LIMIT 1),"
        " (SELECT r.doc FROM revisions r WHERE r.kind = 'program' AND r.key = ''"
        " AND r.version <= v.v ORDER BY r.version DESC LIMIT 1),"
        " cards.a, moves.m, hub_ledger_mark(%(c)s, cards.a) FROM v, cards, moves"
    )

    def live_inputs(self, customer_id: str) -> LiveInputs:
        with self._conn() as conn:
            row = conn.execute(self._LIVE_INPUTS, {"c": customer_id}).fetchone()
        assert row is not None
        version, customer, program, cards, moves, mark = row
        if customer is None:
            return LiveInputs(int(version), None, None, [], [], "")
        return LiveInputs(
            int(version),
            str(customer),
            None if program is None else str(program),
            [str(card) for card in cards],
            [move_of(move) for move in moves],
            str(mark),
        )

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
        """`HubRules.claim_hold` in one round trip: one statement, its own transaction,
        the receipt's and the customer's locks held for the function's few statements
        only."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT granted, live_balance FROM hub_claim_hold(%s, %s, %s, %s, %s,"
                " %s::text[], %s, %s, %s, %s, %s)",
                (
                    device_id,
                    receipt_id,
                    customer_id,
                    points,
                    spendable,
                    pg_array(cards),
                    mark,
                    hold_id,
                    now,
                    expires,
                    at,
                ),
            ).fetchone()
        if row is None:
            return None
        granted = int(row[0])
        if granted < 0:  # a hold of the receipt placed after this call came (grant39)
            raise Superseded(
                f"a newer hold of receipt {receipt_id} was placed since this call came"
            )
        return granted, int(row[1]), hold_id if granted > 0 else ""

    @contextmanager
    def read_tx(self) -> Iterator[HubTx]:
        with self._read() as conn:
            yield PgTx(conn)

    @contextmanager
    def build_lock(self, name: str) -> Iterator[None]:
        """A lock held by this process across every server of the database (a session
        advisory lock on a connection of its own) until the block ends."""
        with self._conn() as conn:
            key = conn.execute("SELECT hashtextextended(%s, 0)", (name,)).fetchone()
            assert key is not None
            conn.execute("SET lock_timeout = 0")  # a build may take minutes
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (key[0],))
                try:
                    yield
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key[0],))
            finally:
                conn.execute("RESET lock_timeout")

    def _release_open_lock(self) -> None:
        self._closing.set()
        with self._open_lock_mutex:
            conn, self._open_lock = self._open_lock, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # the session's lock goes with it

    def close(self) -> None:
        self.pool.close()
        self._release_open_lock()

    # ------------------------------------------------------------ master data

    def import_rows(self, rows: Iterable[ImportRow | RowProblem]) -> ImportReport:
        """Bad rows refuse the whole import (as on SQLite). Into an empty draft, rows that
        can be read again (`hub_import.read_file`) go straight into it (`_import_fast`);
        otherwise, or when that finds anything wrong, through a staging table
        (`_import_staged`), which names every problem with its lines."""
        if not isinstance(rows, Iterator):
            report = self._import_fast(rows)
            if report is not None:
                return report
        return self._import_staged(rows)

    def _import_fast(self, rows: Iterable[ImportRow | RowProblem]) -> ImportReport | None:
        """The usual full import, into an empty draft: one COPY straight into the draft
        with its primary key dropped, the key built again after the load (a sort, not
        7M inserts into a B-tree), the counts from the rows as they pass, the cards'
        owners checked in one query. None, with nothing stored, when the draft is not
        empty or busy, or on anything wrong (a bad row, a key twice: the key's build
        fails, a card whose customer is not known): the staged path then reads the rows
        again and names each problem with its lines (a refused import is the rare case)."""
        counts: dict[str, int] = defaultdict(int)
        n = removed = 0
        program: tuple[str, str | None] | None = None  # the last program line counts
        try:
            with self._write() as conn:
                try:  # the draft to ourselves, or the staged path (no waiting here)
                    conn.execute("LOCK TABLE draft IN ACCESS EXCLUSIVE MODE NOWAIT")
                except psycopg.errors.LockNotAvailable:
                    raise _Fallback from None
                alone = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (IMPORT_LOCK,))
                if alone.fetchone() != (True,):
                    raise _Fallback  # another import runs: the staged path waits for it
                if conn.execute("SELECT 1 FROM draft LIMIT 1").fetchone() is not None:
                    raise _Fallback
                conn.execute(  # the key's sort: at least 512 MB (a larger setting stays)
                    "SELECT set_config('maintenance_work_mem', greatest(pg_size_bytes("
                    "current_setting('maintenance_work_mem')), 512 * 1024 * 1024) / 1024"
                    " || 'kB', true)"
                )
                conn.execute("ALTER TABLE draft DROP CONSTRAINT draft_pkey")
                with conn.cursor() as cur, cur.copy("COPY draft (kind, key, doc) FROM STDIN") as cp:
                    # COPY text made where the rows are read (`ImportFile.copy_blocks`),
                    # or here from rows given otherwise
                    made = getattr(rows, "copy_blocks", None)
                    for block in made() if made is not None else blocks_of(rows):
                        if block.problem:
                            raise _Fallback
                        n += block.rows
                        removed += block.removed
                        for kind, count in block.counts.items():
                            counts[kind] += count
                        program = block.program or program
                        cp.write(block.data)
                if program is not None:
                    conn.execute("INSERT INTO draft VALUES ('program', %s, %s)", program)
                try:
                    conn.execute(
                        "ALTER TABLE draft ADD CONSTRAINT draft_pkey PRIMARY KEY (kind, key)"
                    )
                except psycopg.errors.UniqueViolation:
                    raise _Fallback from None  # a key twice
                orphan = conn.execute(
                    "SELECT 1 FROM draft c LEFT JOIN draft d ON d.kind = 'customer'"
                    f" AND d.key = {_OWNER} WHERE c.kind = 'card'"
                    f" AND c.doc IS NOT NULL AND NOT {_owner_known(_OWNER)} LIMIT 1",
                    (_latest_version(conn),),
                ).fetchone()
                if orphan is not None:
                    raise _Fallback
                if counts.get("category") and category_cycles(PgTx(conn)):
                    raise _Fallback
        except _Fallback:
            return None
        return ImportReport(rows=n, by_kind=dict(counts), removed=removed)

    def _import_staged(self, rows: Iterable[ImportRow | RowProblem]) -> ImportReport:
        """Good rows go through COPY into a staging table, checked there in bulk, then
        into the draft in one statement."""
        problems: list[tuple[int, str]] = []  # (row number, message), the first ones
        total_problems = 0
        with self._write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (IMPORT_LOCK,))
            conn.execute(
                'CREATE TEMP TABLE import_stage (n BIGINT NOT NULL, kind TEXT COLLATE "C",'
                ' key TEXT COLLATE "C", where_ TEXT, doc TEXT) ON COMMIT DROP'
            )
            with conn.cursor() as cur:
                with cur.copy("COPY import_stage (n, kind, key, where_, doc) FROM STDIN") as cp:
                    for n, item in enumerate(rows):
                        if isinstance(item, RowProblem):
                            total_problems += 1
                            if len(problems) < MAX_PROBLEMS:
                                problems.append((n, f"{item.where}: {item.message}"))
                            continue
                        cp.write_row(
                            (
                                n,
                                item.kind,
                                item.key,
                                item.where,
                                item.text if item.text is not None else canon(item.doc),
                            )
                        )

                def refuse() -> ImportRefused:
                    dups = conn.execute(
                        "SELECT n, kind, key, where_, first FROM (SELECT n, kind, key, where_,"
                        " first_value(where_) OVER w AS first, row_number() OVER w AS nth"
                        " FROM import_stage WHERE kind != 'program'"
                        " WINDOW w AS (PARTITION BY kind, key ORDER BY n)) s WHERE nth > 1"
                        " ORDER BY n"
                    ).fetchall()
                    for n, kind, key, where, first in dups[:MAX_PROBLEMS]:
                        problems.append(
                            (int(n), f"{where}: {kind} {key!r} appears twice (also at {first})")
                        )
                    problems.sort()
                    total = total_problems + len(dups)
                    return ImportRefused([p for _, p in problems[:MAX_PROBLEMS]], total)

                if total_problems:
                    raise refuse()
                # One statement into the draft, in key order; a key twice in the file makes
                # it fail ("cannot affect row a second time"), and only then are the
                # duplicates looked for, with their lines (a sort and a window less).
                try:
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO draft (kind, key, doc) SELECT kind, key, doc"
                            " FROM import_stage WHERE kind != 'program' ORDER BY kind, key"
                            " ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc"
                        )
                except psycopg.errors.CardinalityViolation:
                    raise refuse() from None
                conn.execute(  # the last program line counts
                    "INSERT INTO draft (kind, key, doc) SELECT kind, key, doc FROM import_stage"
                    " WHERE kind = 'program' ORDER BY n DESC LIMIT 1"
                    " ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc"
                )
                latest = _latest_version(conn)
                # A card's owner parsed once (json, not jsonb: no binary form built), the
                # draft joined (a removal there counts), else the latest revision.
                orphans = conn.execute(
                    "SELECT c.key, c.where_, c.owner FROM (SELECT key, where_,"
                    " doc::json ->> 'customerId' AS owner FROM import_stage"
                    " WHERE kind = 'card' AND doc IS NOT NULL) c LEFT JOIN draft d"
                    " ON d.kind = 'customer' AND d.key = c.owner"
                    f" WHERE NOT {_owner_known('c.owner')} ORDER BY c.key",
                    (latest,),
                ).fetchall()
                if orphans:
                    raise ImportRefused(
                        [
                            f"{where}: card {key} belongs to customer {customer!r},"
                            " who is not known"
                            for key, where, customer in orphans[:MAX_PROBLEMS]
                        ],
                        len(orphans),
                    )
                imported = dict(
                    conn.execute(
                        "SELECT key, where_ FROM import_stage"
                        " WHERE kind = 'category' AND doc IS NOT NULL"
                    ).fetchall()
                )
                cycles = category_cycles(PgTx(conn)) if imported else []
                if cycles:
                    raise ImportRefused(
                        [
                            f"{imported.get(code, 'categories')}: {message}"
                            for code, message in cycles[:MAX_PROBLEMS]
                        ],
                        len(cycles),
                    )
                counts: dict[str, int] = defaultdict(int)
                n = removed = 0
                for kind, present, count in conn.execute(
                    "SELECT kind, doc IS NOT NULL, count(*) FROM import_stage GROUP BY 1, 2"
                ):
                    n += int(count)
                    if present:
                        counts[str(kind)] += int(count)
                    else:
                        removed += int(count)
        return ImportReport(rows=n, by_kind=dict(counts), removed=removed)

    def publish(
        self,
        now: datetime,
        ttl_s: float,
        *,
        include_draft: bool = True,
        reason: str = "publish",
        min_version: int = 0,
    ) -> Publication:
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (PUBLISH_LOCK,))
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    # Before the snapshot (the first query takes it): an ingest writing a
                    # till's coupon row waits for the publication, or the publication waits
                    # for it, instead of both reading, and the publication then failing on,
                    # a row the other changed ("could not serialize access"). Ingests that
                    # write no draft row never wait.
                    conn.execute("LOCK TABLE draft, till_coupons IN SHARE ROW EXCLUSIVE MODE")
                    pub = self._publish(conn, now, ttl_s, include_draft, reason, min_version)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (PUBLISH_LOCK,))
        return pub

    @staticmethod
    def _publish(
        conn: psycopg.Connection[Any],
        now: datetime,
        ttl_s: float,
        include_draft: bool,
        reason: str,
        min_version: int,
    ) -> Publication:
        latest = _latest_version(conn)
        version = max(latest + 1, min_version)
        # A balance refresh publishes only the rows tills' transactions wrote.
        changed = conn.execute(publish_sql(POSTGRES, include_draft), (version, latest)).rowcount
        conn.execute(CLEARED[include_draft])
        conn.execute("DELETE FROM till_coupons")
        cut = _one(conn, "SELECT coalesce(max(ingest_id), 0) FROM transactions")
        expires = now + timedelta(seconds=ttl_s)
        conn.execute(
            "INSERT INTO publications VALUES (%s, %s, %s, %s, %s, %s)",
            (version, utc_text(now), utc_text(expires), cut, reason, changed),
        )
        conn.execute(
            "INSERT INTO publication_progress SELECT %s, device_id, contiguous_through"
            " FROM device_progress",
            (version,),
        )
        return Publication(
            version, now.astimezone(UTC), expires.astimezone(UTC), cut, reason, changed
        )


class PgTx(SqlTx):
    """`HubTx` on an open PostgreSQL transaction (in pipeline mode when `pipe` is given:
    a statement's rowcount is read only after `_count` synced the pipeline): the shared
    primitives (`hub_sql.SqlTx`), with the transactions' inserts buffered, the ledger
    mark of `hub_ledger_mark`, advisory locks and server-side cursors."""

    dialect = POSTGRES
    prune_own_batches_only = True
    _COUNTED = POSTGRES.sql(SqlTx.COUNTED)

    def __init__(self, conn: psycopg.Connection[Any], pipe: Any = None) -> None:
        super().__init__(conn)
        self.pipe = pipe
        self._inserts: list[tuple[Any, ...]] = []  # transactions not sent yet

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection, once the buffered inserts are sent (so that every statement
        sees them, in order)."""
        if self._inserts:
            self.flush()
        conn: psycopg.Connection[Any] = self._raw
        return conn

    def flush(self) -> None:
        """Send the buffered transactions: one INSERT of them all, in their order."""
        rows, self._inserts = self._inserts, []
        if rows:
            self._raw.execute(
                _INSERT_TRANSACTIONS, [pg_array(column) for column in zip(*rows, strict=True)]
            )

    def _count(self, cur: psycopg.Cursor[Any]) -> int:
        if self.pipe is not None:
            self.pipe.sync()
        return int(cur.rowcount)

    def ledger_mark(self, customer_id: str, cards: list[str]) -> str:
        row = self.conn.execute(
            "SELECT hub_ledger_mark(%s, %s::text[])", (customer_id, pg_array(cards))
        ).fetchone()
        assert row is not None
        return str(row[0])

    def texts_as_of(self, kind: str, version: int) -> Texts:
        """Every row of `kind` at `version`, in key order, from a server-side cursor (the
        newest revision of each key: the last of its key in the primary key's order, so
        the rows stream from the index with no sort; `DISTINCT ON … ORDER BY key, version
        DESC` sorted them all first, on disk at chain scale)."""
        with self.conn.cursor(name=f"texts_{kind}") as cur:
            cur.itersize = FETCH
            cur.execute(
                "SELECT key, doc FROM (SELECT key, doc, lead(key) OVER (ORDER BY key, version)"
                " AS next FROM revisions WHERE kind = %s AND version <= %s) s"
                " WHERE next IS DISTINCT FROM key",
                (kind, version),
            )
            for key, doc in cur:
                if doc is not None:
                    yield str(key), str(doc)

    def insert_transaction(self, tx: TxIn, fields: dict[str, Any], content: str, now: str) -> None:
        # Buffered: the batch's transactions go in one statement, when the next statement
        # (or the end of the transaction) needs them.
        self._inserts.append(self.transaction_row(tx, fields, content, now))

    def counted_customer_moves(
        self, pub: Publication, only: set[str] | None
    ) -> Iterable[tuple[Any, ...]]:
        known = ""
        params: list[Any] = [pub.version, pub.cut]
        if only is not None:
            known = " AND t.customer_id = ANY(%s)"
            params.append(sorted(only))
        with self.conn.cursor(name="counted_customers") as cur:
            cur.itersize = FETCH
            cur.execute(
                f"SELECT t.customer_id, {POSTGRES.moves}{self._COUNTED}"
                f" AND t.customer_id != ''{known}"
                f" ORDER BY t.customer_id, {MOVE_ORDER}",
                params,
            )
            yield from cur

    # -- locks

    def lock_device(self, device_id: str) -> None:
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"device:{device_id}",)
        )

    def lock_customers(self, customer_ids: Iterable[str]) -> None:
        # One statement; the locks are taken in the list's order (a function scan of the
        # array yields it in order): the callers' sorted order.
        keys = [f"customer:{customer_id}" for customer_id in customer_ids]
        if keys:
            self.conn.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))"
                " FROM unnest(%s::text[]) AS k",
                (pg_array(keys),),
            )

    def lock_settling(
        self,
        customer_ids: list[str],
        device_id: str,
        keys: list[str],
        receipts: Sequence[str] = (),
    ) -> None:
        # The receipts' locks first (`lock_receipt`'s keys, sorted, one statement): an
        # authorisation step of one of them (a late AuthorizeRedemption of a receipt its
        # till priced OFFLINE, confirmed and pushed) waits for this ingest and then finds
        # it sold, or has committed and its hold is read below and settled. Without them
        # a hold placed for a customer this ingest did not lock, committed after its
        # settle's statement, stayed ACTIVE for the sold receipt until it expired
        # (review 48, pg48). Receipt before customer, as every path takes them.
        if receipts:
            self.conn.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))"
                " FROM unnest(%s::text[]) AS k",
                (pg_array(sorted({_receipt_key(device_id, r) for r in receipts})),),
            )
        # Then one statement, as `lock_customers` (its snapshot taken once the receipts'
        # locks are held): the batch's customers and those of the device's active holds
        # of `keys`, in code point order (Python's sorted, the other callers' order)
        self.conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended('customer:' || c, 0)))"
            " FROM (SELECT c FROM (SELECT unnest(%s::text[]) AS c UNION SELECT customer_id"
            " FROM holds WHERE device_id = %s AND receipt_id = ANY(%s::text[])"
            " AND state = 'ACTIVE') u ORDER BY c COLLATE \"C\") s",
            (pg_array(customer_ids), device_id, pg_array(keys)),
        )

    def lock_receipt(self, device_id: str, receipt_id: str) -> None:
        # the device id's length first: unambiguous across devices (as `RECEIPT_KEY`);
        # `hub_claim_hold` (migration 12) takes the same key
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (_receipt_key(device_id, receipt_id),),
        )

    def lock_devices(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('devices', 0))")


PostgresHubStore.tx_class = PgTx


def _receipt_key(device_id: str, receipt_id: str) -> str:
    """The advisory lock key of a device's receipt (`PgTx.lock_receipt`, `lock_settling`;
    `hub_claim_hold` of migration 12 builds the same text)."""
    return f"receipt:{len(device_id)}:{device_id}{receipt_id}"


_INSERT_TRANSACTIONS = (
    f"INSERT INTO transactions ({SqlTx.TRANSACTION_COLUMNS})"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[],"
    " %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[],"
    " %s::text[])"
)


class _Fallback(Exception):
    """The fast import cannot finish: nothing of it is stored, the staged path runs."""


_OWNER = "c.doc::json ->> 'customerId'"  # a card row's owner (json, not jsonb: no binary form)


def _owner_known(owner: str) -> str:
    """SQL that the customer `owner` (an expression) is known, for both import paths' check
    of the cards' owners: in the draft (`d`, joined on it; a removal there counts), else
    in its newest revision up to the version given as the statement's parameter."""
    return (
        "coalesce(CASE WHEN d.key IS NOT NULL THEN d.doc IS NOT NULL END,"
        " (SELECT r.doc IS NOT NULL FROM revisions r WHERE r.kind = 'customer'"
        f" AND r.key = {owner} AND r.version <= %s ORDER BY r.version DESC LIMIT 1), false)"
    )


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(sql, params or None).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _latest_version(conn: psycopg.Connection[Any]) -> int:
    return PgTx(conn).latest_version()
