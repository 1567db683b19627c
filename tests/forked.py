"""What a child forked by `multiprocessing`'s fork server runs for the crash tests
(tests/test_key_sets.py): kept apart from the test modules so that the fork server
imports only this and the code under test, never pytest or the suite's fixtures."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any


def killed_before(rename: int, work: Callable[..., object], args: tuple[Any, ...]) -> None:
    """Run `work(*args)` and SIGKILL this process just before its `rename`-th os.replace;
    exit 0 when the work ends with fewer renames, 3 when it fails."""
    real, seen = os.replace, [0]

    def replace(src: Any, dst: Any) -> None:
        seen[0] += 1
        if seen[0] == rename:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = replace  # type: ignore[assignment]
    try:
        work(*args)
    except BaseException:
        os._exit(3)
    os._exit(0)
