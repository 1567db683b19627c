"""Loaded (through PYTHONPATH) by every Python process of a suite run under `faketime`
(tests/test_review33_date33.py): the wall clock moved, the steady clock left real.

libfaketime 0.9.10 (Debian 12) cannot fake the monotonic clock for Python 3.11: its
locks wait with sem_clockwait(CLOCK_MONOTONIC), which libfaketime does not see, so a
faked monotonic deadline waits for decades (libfaketime issue #390). With the monotonic
clock left real (FAKETIME_DONT_FAKE_MONOTONIC=1), `time.sleep` (clock_nanosleep on
CLOCK_MONOTONIC with an absolute deadline) fails with EINVAL instead (issue #426): it
sleeps here with a relative timeout. Nothing of the product or the tests changes."""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _sleep
