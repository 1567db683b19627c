"""tillpoint.sync: the till's sync with the central hub, and the reference hub itself.

What other parts use:

- `sync_status(ledger_conn)`: the sync fields of `tillpoint status`;
- `is_enrolled(data_dir)`: the enrolment marker (an enrolled till takes only signed snapshots);
- `load_snapshot_file(agent, doc)`: `tillpoint snapshot load` with the signed/plain rules;
- `refuse_plain_if_enrolled(data_dir)`: the same rule for a plain JSON Lines snapshot;
- `require_device(data_dir, device_id)`: `WrongDevice` for a till enrolled as another device;

`tillpoint run` builds the till's sync (`service.TillSync`) in agent/app.py.

docs/PROTOCOL.md describes the protocol and its guarantees.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tillpoint.agent.errors import InputError

# A certificate this close to its end is reported (the till's log and `/healthz`, `hub
# serve`'s log) so that it is renewed before a till or the hub is cut off.
RENEW_WARNING_DAYS = 30

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
# Names a set of key files being replaced (`pki._write_set`): present, the set is committed.
SET_JOURNAL = ".replacing.json"


def is_enrolled(data_dir: Path) -> bool:
    """The enrolment marker: a till with ``enrollment/enrollment.json`` belongs to a hub.
    A stat, nothing imported: a standalone till's local CLI call asks it every time. An
    install a crash interrupted after its commit point (`pki.SET_JOURNAL`) is enrolled
    too: `pki.load_enrollment` finishes it."""
    root = Path(data_dir) / ENROLLMENT_DIR
    return (root / ENROLLMENT_FILE).is_file() or (root / SET_JOURNAL).is_file()


class WrongDevice(InputError):
    """Enrolled as another device than `device_id`: `run` and every till command but
    `status` are refused (exit 2), where `run` sold standalone under the mistyped id —
    sales its hub would never take, stranded once the id was mended."""


def require_device(data_dir: Path, device_id: str) -> None:
    """WrongDevice when the till is enrolled as another device than `device_id`, whether a
    hub address is set or not. The marker's JSON alone (`pki` and `cryptography` are a
    tenth of a CLI call's start); a damaged marker is `pki.load_enrollment`'s to report.
    A set of key files a crash left committed but not renamed (`SET_JOURNAL`: the marker
    may still be `enrollment.json.next`) is finished first, as `load_enrollment` does."""
    root = Path(data_dir) / ENROLLMENT_DIR
    if (root / SET_JOURNAL).is_file():
        from .pki import finish_set  # rare: only after a crash

        finish_set(root)
    try:
        marker = root / ENROLLMENT_FILE
        enrolled = json.loads(marker.read_text(encoding="utf-8"))["deviceId"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    check_device(str(enrolled), device_id)


def check_device(enrolled: str, device_id: str) -> None:
    """WrongDevice when `enrolled` (the enrolment's device id) is not `device_id`."""
    if enrolled != device_id:
        raise WrongDevice(
            f"the enrolment is for device {enrolled!r} but this till runs as"
            f" {device_id!r}: fix device_id in the configuration"
        )


def sync_status(ledger_conn: sqlite3.Connection) -> dict[str, Any]:
    from .state import sync_status as status

    return status(ledger_conn)


__all__ = [
    "WrongDevice",
    "is_enrolled",
    "load_snapshot_file",
    "refuse_plain_if_enrolled",
    "require_device",
    "sync_status",
]
