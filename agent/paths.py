"""Where a till keeps its files when nothing names a place; standard library only, so
the CLI's fast path (forward.py) finds the data directory without the configuration."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/tillpoint")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tillpoint"
