"""A `tillpoint run`'s stop, timed on the process's own clock (its log's timestamps).

A test that timed a stop with its own clock (from its SIGTERM to `wait()`) counted the
machine's load on top: the signal's delivery, the process's scheduling, the test's own.
The stop's bound is the product's (`agent.app.stop_time_s`, told to systemd with
STOPPING=1), so it is measured where the product keeps it: from the log's "stopping:
draining in-flight requests" to its "stopped" (review 44, flake44).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

STOPPING = "stopping: draining in-flight requests"
STOPPED = "stopped"


def _entries(text: str) -> list[tuple[datetime, str]]:
    """(time, message) of each line of a `run` log, JSON (the default off a terminal) or
    text ("2026-12-06 04:11:36,123 INFO    name: message")."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                entry = json.loads(line)
                out.append((datetime.fromisoformat(entry["ts"]), str(entry["msg"])))
            except (ValueError, KeyError, TypeError):
                continue
            continue
        head, sep, message = line.partition(": ")
        words = head.split()
        if not sep or len(words) < 2:
            continue
        try:
            at = datetime.strptime(f"{words[0]} {words[1]}", "%Y-%m-%d %H:%M:%S,%f")
        except ValueError:
            continue
        out.append((at, message))
    return out


def stop_seconds(log: Path | str) -> float:
    """Seconds from the stop's start to "stopped", as the process logged them."""
    text = log.read_text(errors="replace") if isinstance(log, Path) else log
    entries = _entries(text)
    # the last stop's start, and the first end after it: an earlier run's "stopped" in
    # the same log is not this stop's end (its time came out negative, under any bound;
    # review 44, review44)
    last = max((n for n, (_, message) in enumerate(entries) if message == STOPPING), default=-1)
    ended = [at for at, message in entries[last + 1 :] if message == STOPPED]
    assert last >= 0 and ended, f"no stop in the log: {text[-2000:]}"
    return (ended[0] - entries[last][0]).total_seconds()
