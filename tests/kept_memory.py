"""What a long-lived loop keeps between two tracemalloc snapshots, read the same way by
every memory test.

A table rebuilt once in the window (the interpreter's interned-strings dict, ~1.8 MB in a
worker that has run a thousand tests: pathlib's `sys.intern` met its resize in CI) counts
its new copy but not the old one, allocated before tracing began. What a call keeps is
blocks that multiply with the calls, never one block of a quarter megabyte; such blocks are
set aside and named in the failure message.

What fills to a bound (sqlite3's statement caches, the interpreter's free lists of lists
and dicts, where a list of weak references stood) fills in some window, at its own pace
and from wherever the worker left it: the leak tests read two windows one after the other
and keep the smaller (`least_kept`). A leak of every call grows in both.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

TABLE_REBUILT = 256 * 1024


def kept_bytes(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot
) -> tuple[int, list[tracemalloc.StatisticDiff]]:
    """(bytes kept, the single large blocks set aside)."""
    diff = after.compare_to(before, "lineno")
    rebuilt = [s for s in diff if s.count_diff <= 1 and s.size_diff >= TABLE_REBUILT]
    return sum(s.size_diff for s in diff if s not in rebuilt), rebuilt


def settled() -> None:
    """Collect, and drop the dead entries of every sqlite3 connection's list of weak
    references to its cursors: CPython 3.11 appends one at each `execute` and prunes the
    list only every 200th cursor, so a window's kept bytes swung by up to ~16 kB per
    connection (a till has four or more) with where each list stood in its cycle, more than
    a per-call leak of 100 bytes over a short run. Only dead references go, as the prune
    itself drops them; taken before each snapshot, both read the lists pruned."""
    import gc
    import sqlite3
    import weakref

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            for held in gc.get_referents(obj):
                if type(held) is list and held and type(held[0]) is weakref.ReferenceType:
                    held[:] = [ref for ref in held if ref() is not None]
    gc.collect()


@dataclass(frozen=True)
class Kept:
    """One window's reading: bytes kept, the single large blocks set aside, the lines
    that kept most (for the failure message)."""

    grown: int
    rebuilt: list[tracemalloc.StatisticDiff]
    top: list[tracemalloc.StatisticDiff]

    def __str__(self) -> str:
        return f"{self.grown} bytes (rebuilt: {self.rebuilt}; most: {self.top})"


def least_kept(
    run_window: Callable[[int], None], between: Callable[[], None] = settled, windows: int = 2
) -> tuple[Kept, list[Kept]]:
    """Run `run_window(k)` for k in 0..windows-1 with tracing already started, `between()`
    and a snapshot before and after each; (the window that kept least, every window)."""
    between()
    before = tracemalloc.take_snapshot()
    read: list[Kept] = []
    for k in range(windows):
        run_window(k)
        between()
        after = tracemalloc.take_snapshot()
        grown, rebuilt = kept_bytes(before, after)
        read.append(Kept(grown, rebuilt, after.compare_to(before, "lineno")[:5]))
        before = after
    return min(read, key=lambda kept: kept.grown), read
