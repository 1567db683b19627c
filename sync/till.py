"""What the sync client needs of the till it syncs: a Protocol, so that sync/ depends on
the core and the ledger, never on the till application (`tillpoint.agent.service.Agent`
is one; agent/app.py passes it in)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tillpoint.agent.cache import CacheInfo


class TillAgent(Protocol):
    """The till's data directory and identity, its clock, and the three ways to apply a
    snapshot to its cache (one JSON document, JSON Lines, a JSON Lines file)."""

    data_dir: Path
    device_id: str
    clock: Callable[[], datetime]

    def load_snapshot(self, data: Any) -> CacheInfo: ...

    def load_snapshot_lines(self, lines: Iterable[bytes | str]) -> CacheInfo: ...

    def load_snapshot_file(
        self, path: Path, offset: int = 0, length: int | None = None
    ) -> CacheInfo: ...
