"""Where the other parts plug into the agent, without the agent importing them.

Kept free of imports beyond the standard library: the CLI's plugins register here when
`tillpoint --help` builds its parser, and that must not pull in gRPC, pydantic or the
cache (docs/DECISIONS.md, "Lazy imports"). A part registers a small function that imports
its real work when it is first called.

- `status_providers`: functions of the ledger connection that add fields to `status`
  (the hub sync); `Agent.status` calls them.
- `background_starters`: `(agent, settings) -> stop` functions that `tillpoint run` starts
  with the agent (the hub sync, the printer, display and scanner).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

status_providers: list[Callable[[sqlite3.Connection], dict[str, Any]]] = []
background_starters: list[Callable[[Any, Any], Callable[[], None]]] = []
