"""tillpoint.sync: the till's sync with the central hub, and the reference hub itself.

What other parts use:

- `sync_status(ledger_conn)`: the sync fields of `tillpoint status`;
- `is_enrolled(data_dir)`: the enrolment marker (an enrolled till takes only signed snapshots);
- `load_snapshot_file(agent, doc)`: `tillpoint snapshot load` with the signed/plain rules;
- `refuse_plain_if_enrolled(data_dir)`: the same rule for a plain JSON Lines snapshot;

`tillpoint run` builds the till's sync (`service.TillSync`) in agent/app.py.

docs/PROTOCOL.md describes the protocol and its guarantees.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tillpoint.agent import cache

    from .till import TillAgent


def load_snapshot_file(agent: TillAgent, doc: Any) -> cache.CacheInfo:
    from .snapshot_file import load_snapshot_file as load

    return load(agent, doc)


def refuse_plain_if_enrolled(data_dir: Path) -> None:
    from .snapshot_file import refuse_plain_if_enrolled as refuse

    refuse(data_dir)


# Where an enrolled till keeps its enrolment (`pki.install_bundle` writes it).
ENROLLMENT_DIR = "enrollment"
ENROLLMENT_FILE = "enrollment.json"


def is_enrolled(data_dir: Path) -> bool:
    """The enrolment marker: a till with ``enrollment/enrollment.json`` belongs to a hub.
    A stat, nothing imported: a standalone till's local CLI call asks it every time."""
    return (Path(data_dir) / ENROLLMENT_DIR / ENROLLMENT_FILE).is_file()


def sync_status(ledger_conn: sqlite3.Connection) -> dict[str, Any]:
    from .state import sync_status as status

    return status(ledger_conn)


__all__ = [
    "is_enrolled",
    "load_snapshot_file",
    "refuse_plain_if_enrolled",
    "sync_status",
]
