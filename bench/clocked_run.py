"""`tillpoint` with its wall clock read from a file: `python -m bench.clocked_run FILE ARGS...`.

libfaketime (Debian's `faketime`) cannot move a Python till's clock: with the monotonic
clock faked, a thread's timed wait (`threading.Event.wait`, the hold sweeper's round)
never returns; with it left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`), `time.sleep`
fails with EINVAL (libfaketime 0.9.10). So the long-lived till of `bench/soaktime.py`
is this: the real `tillpoint` command line (`run`: its gRPC and HTTP servers, sweeper,
everything) in its own process, the agent's clock (`service.system_clock`, what
`app.build` gives every `Agent`) being the real clock plus the offset in seconds written
in FILE, read at each call. Only the clock the agent prices and holds by moves; the
process's monotonic timers run as ever. The agent's steady clock (`service.steady_clock`,
by which it tells an NTP step of the wall clock from time passing, §11) moves with the
offset: here a move of the clock is time passing, not a step.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path


def main() -> int:
    path = Path(sys.argv[1])

    def offset() -> int:
        return int(path.read_text(encoding="utf-8"))

    def clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=offset())

    from tillpoint.agent import service
    from tillpoint.agent.cli import main as cli

    real_steady = service.steady_clock

    def steady() -> float:
        return real_steady() + offset()

    service.system_clock = clock
    service.steady_clock = steady
    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
