"""The sync client's own tables in the till's ``ledger.db`` and the `status` fields.

Their schema is in `tillpoint.agent.ledger` (the migration set ``tillpoint.sync``), which
owns the file and opens it (`open_ledger`):

- ``sync_state(key, value)``: last pull, last push, last contact, mode, outstanding
  errors (one per area, cleared when that area works again), last refused snapshot, how
  many sales and refunds were numbered again and the last one (`ledger.settle_push`);
- ``sync_set_aside(device_id, seq, payload, outcome, reason, at)``: transactions the hub
  answered CONFLICT or REJECTED. They leave the outbox (so it does not block), stay in
  the journal, and are reported in `status` until someone reviews them.

Only the sync thread writes here, never while a checkout holds the ledger's write lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tillpoint.agent.db import begin_write
from tillpoint.agent.ledger import open_ledger as open_ledger  # the one opener, by its old name
from tillpoint.agent.ledger import utc_text

ERROR_AREAS = ("enrollment", "link", "pull", "push")


def now_text(now: datetime | None = None) -> str:
    return utc_text(now or datetime.now(UTC))


def _has_tables(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_state'"
        ).fetchone()
        is not None
    )


def get(conn: sqlite3.Connection, key: str) -> str | None:
    if not _has_tables(conn):
        return None
    row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def put(conn: sqlite3.Connection, values: dict[str, str | None]) -> None:
    """Set (or, with None, delete) keys in one short write transaction."""
    begin_write(conn)
    try:
        for key, value in values.items():
            if value is None:
                conn.execute("DELETE FROM sync_state WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO sync_state VALUES (?, ?)", (key, value))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def error_value(message: str, now: datetime | None = None) -> str:
    return json.dumps({"message": message, "at": now_text(now)}, ensure_ascii=False)


def set_error(conn: sqlite3.Connection, area: str, message: str | None) -> None:
    put(conn, {f"error:{area}": None if message is None else error_value(message)})


def sync_status(ledger_conn: sqlite3.Connection) -> dict[str, Any]:
    """The sync fields of `tillpoint status` (read only; safe on any ledger connection).

    mode: ONLINE when the sync loop's last exchange with the hub worked (as last
    recorded; lastContactAt says when), OFFLINE otherwise or with no hub.
    lastError: the newest outstanding problem (a failed area clears when it works again;
    the set-aside transactions, which do not, at their newest one's time).
    syncError: the set-aside transactions first, else lastError.
    """
    values: dict[str, str] = {}
    set_aside = 0
    newest_aside = newest_aside_at = ""
    if _has_tables(ledger_conn):
        values = {str(k): str(v) for k, v in ledger_conn.execute("SELECT * FROM sync_state")}
        set_aside = int(ledger_conn.execute("SELECT count(*) FROM sync_set_aside").fetchone()[0])
        row = ledger_conn.execute(
            "SELECT seq, outcome, reason, at FROM sync_set_aside ORDER BY at DESC, seq DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            newest_aside = f"seq {row[0]} {row[1]}" + (f": {row[2]}" if row[2] else "")
            newest_aside_at = str(row[3])
    errors = []
    for area in ERROR_AREAS:
        raw = values.get(f"error:{area}")
        if raw:
            try:
                item = json.loads(raw)
                errors.append((str(item["at"]), str(item["message"])))
            except (ValueError, KeyError, TypeError):  # not an object of both: as it is
                errors.append(("", raw))
    aside_error = (
        f"{set_aside} transaction(s) set aside by the hub (newest: {newest_aside});"
        " see sync_set_aside in ledger.db"
        if set_aside
        else ""
    )
    if set_aside:
        # among the others at its newest row's time: it stays until a person reviews it,
        # and as the last error for good it hid a later outage's cause (review 56)
        errors.append((newest_aside_at, aside_error))
    errors.sort()
    last_error_at, last_error = errors[-1] if errors else ("", "")
    out: dict[str, Any] = {
        "mode": values.get("mode", "OFFLINE"),
        "lastPullAt": values.get("last_pull_at", ""),
        "lastPushAt": values.get("last_push_at", ""),
        "lastError": last_error,
        "lastErrorAt": last_error_at,
        "lastContactAt": values.get("last_contact_at", ""),
        "hubAddress": values.get("hub_address", ""),
        "hubAckedThroughSeq": _count(values.get("acked_through", "0")),
        "setAsideTransactions": set_aside,  # Status field 19, deprecated: = setAside
        # Status fields 40, 41: transactions the hub refused to store are never a success
        "setAside": set_aside,
        "syncError": aside_error or last_error,
        "enrolled": _enrolled(ledger_conn),
        "certificateExpiresAt": _certificate_expires(ledger_conn),
    }
    if values.get("refused"):
        with contextlib.suppress(ValueError):
            out["lastRefusedSnapshot"] = json.loads(values["refused"])
    # Status fields 49, 50: the sales and refunds numbered again (`ledger.renumber`: the
    # hub held their seq with another transaction of this device) and the last one
    out["renumberedTransactions"] = _count(values.get("renumbered", "0"))
    if values.get("renumbered_last"):
        with contextlib.suppress(ValueError):
            out["lastRenumbered"] = json.loads(values["renumbered_last"])
    return out


def _count(value: str) -> int:
    """A recorded count or seq; 0 for one that does not read (a damaged ledger, a hand
    edit): `status` is how support looks at such a till, it must not fail on it."""
    return int(value) if value.isascii() and value.isdigit() else 0


def _enrolled(conn: sqlite3.Connection) -> bool:
    from . import is_enrolled  # the marker alone: `cryptography` is a tenth of a CLI call's start

    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return is_enrolled(Path(file).parent)
    return False


def _certificate_expires(conn: sqlite3.Connection) -> str:
    """When this till's certificate expires (the enrolment marker says it; a marker an
    older release wrote, from the certificate), "" when not enrolled."""
    from . import ENROLLMENT_DIR, ENROLLMENT_FILE

    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            root = Path(file).parent / ENROLLMENT_DIR
            try:
                meta = json.loads((root / ENROLLMENT_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return ""
            if isinstance(meta, dict) and meta.get("certificateExpiresAt"):
                return str(meta["certificateExpiresAt"])
            from .pki import certificate_not_after, certificate_time

            try:
                return certificate_time(certificate_not_after((root / "device.pem").read_bytes()))
            except OSError:
                return ""
    return ""
