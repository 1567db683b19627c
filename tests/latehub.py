"""An opt-in pytest plugin: every in-process hub answers `AuthorizeRedemption` late.

    .venv/bin/pytest -p tests.latehub [--late-hub-s 0.6] [--late-hub-at before|after] ...

A loaded machine (CI beside other jobs) sometimes keeps a hub's answer longer than the
till's redemption deadline (`sync.loopback.FAST`: the shipped 300 ms). A test whose
outcome needs the hub's answer and does not test the deadline then fails now and then:
a flake. This plugin makes that late answer happen every time, so such tests fail at once
(review 44, flake44; review 45, late45: docs/DECISIONS.md).

Every `HubServicer` this process starts (`LoopbackHub`, a `HubServer` a test builds, on
SQLite or PostgreSQL) waits `--late-hub-s` seconds (0.6 by default: twice FAST's
deadline) in its `AuthorizeRedemption`:

- `before` (the default): before it reads the request, as a hub whose server thread
  was not scheduled in time; the hub sees the till's deadline passed and places nothing
  (DEADLINE_EXCEEDED), unless the till's deadline is longer than the wait.
- `after`: once it has answered (its hold placed), before the answer leaves: a grant
  that comes too late, the till priced OFFLINE meanwhile.

A hub run as its own process (`tillpoint hub serve`) is not touched. The plugin loads
into each xdist worker too (`-p` is handed on). Use it to look for such tests; the suite
is not expected to pass whole under it (the tests of the deadline itself, FAST's late
grants and outages, judge the product against 300 ms on purpose)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import pytest

DEFAULT_S = 0.6
WHERE = ("before", "after")


def install(delay_s: float, where: str = "before") -> Callable[[], None]:
    """Make every `HubServicer.AuthorizeRedemption` wait `delay_s` `where` it is told;
    returns the undo. A server binds its servicer's methods when it starts: hubs started
    after the call answer late, those already serving are not changed."""
    from tillpoint.sync.hub_server import HubServicer

    if where not in WHERE:
        raise ValueError(f"where: one of {WHERE}, not {where!r}")
    original = HubServicer.AuthorizeRedemption

    @functools.wraps(original)
    def late(self: HubServicer, request: Any, context: Any) -> Any:
        if where == "before":
            time.sleep(delay_s)
            return original(self, request, context)
        try:
            return original(self, request, context)
        finally:
            time.sleep(delay_s)

    HubServicer.AuthorizeRedemption = late  # type: ignore[method-assign]

    def undo() -> None:
        HubServicer.AuthorizeRedemption = original  # type: ignore[method-assign]

    return undo


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("latehub", "in-process hubs answer AuthorizeRedemption late")
    group.addoption(
        "--late-hub-s",
        type=float,
        default=DEFAULT_S,
        help=f"how late each answer is, in seconds (default {DEFAULT_S})",
    )
    group.addoption(
        "--late-hub-at",
        choices=WHERE,
        default="before",
        help="wait before the hub reads the call (default) or after it has answered",
    )


def pytest_configure(config: pytest.Config) -> None:
    delay = float(config.getoption("--late-hub-s"))
    if delay < 0:
        raise pytest.UsageError("--late-hub-s must be >= 0")
    where = str(config.getoption("--late-hub-at"))
    config.add_cleanup(install(delay, where))


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"latehub: every in-process AuthorizeRedemption answered "
        f"{config.getoption('--late-hub-s')} s late ({config.getoption('--late-hub-at')})"
    )
