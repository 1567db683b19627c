"""What a long-lived loop keeps between two tracemalloc snapshots, read the same way by
every memory test.

A table rebuilt once in the window (the interpreter's interned-strings dict, ~1.8 MB in a
worker that has run a thousand tests: pathlib's `sys.intern` met its resize in CI) counts
its new copy but not the old one, allocated before tracing began. What a call keeps is
blocks that multiply with the calls, never one block of a quarter megabyte; such blocks are
set aside and named in the failure message.
"""

from __future__ import annotations

import tracemalloc

TABLE_REBUILT = 256 * 1024


def kept_bytes(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot
) -> tuple[int, list[tracemalloc.StatisticDiff]]:
    """(bytes kept, the single large blocks set aside)."""
    diff = after.compare_to(before, "lineno")
    rebuilt = [s for s in diff if s.count_diff <= 1 and s.size_diff >= TABLE_REBUILT]
    return sum(s.size_diff for s in diff if s not in rebuilt), rebuilt
