"""Review 43 (review43): a second pair of eyes on session 43's start-up and store changes.

1. `tillpoint run` whose gRPC server fails to start (its serving thread not started:
   "can't start new thread", a unit at its TasksMax) stops what it started since
   review 43. gRPC's server had already moved to STARTED, and its stop's event is set
   only by the serving thread that never ran: the cleanup's unbounded `wait()` hung
   the run for good instead of exiting 1 (before review 43 it exited 1). The run must
   end, in one line, its lock let go, no thread of its own left running.
2. `limits.bounded_lines`, one helper for three readers since review 43 (tidy43): its
   lines, their numbering and the refusal's number are those of the three copies it
   replaced, compared on seeded random payloads at a small bound (every edge: a last
   line without newline, CRLF, a line exactly at the bound and one byte past it, a
   payload's end in the middle of a line, empty input, a first line read in part).
3. The SQLite hub store's connections closed by `_Held.__del__` (tidy43): a pool thread
   (`hub serve`'s handlers) that outlives several closes keeps one connection for each
   (never closed under it) and all of them are closed when that thread ends.

Real parts: `tillpoint run` in a process of its own on real sockets and a real data
directory, real threads, real SQLite files. The gRPC failure is injected where the
kernel would refuse a thread (its serving thread's start raises as CPython does then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# ------------------------------------------------------------- 1. gRPC fails to start


# `tillpoint run` in a process of its own whose gRPC serving thread cannot start.
GRPC_START_FAILS = """
import sys, threading
import grpc._server as grpc_server
from tillpoint.agent.cli import main

real_start = threading.Thread.start

def start(self):
    if getattr(self, "_target", None) is grpc_server._serve:
        raise RuntimeError("can't start new thread")
    real_start(self)

threading.Thread.start = start
code = main(sys.argv[1:])
left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
print("threads left:", left, file=sys.stderr)
sys.exit(code)
"""


def test_a_run_whose_grpc_server_fails_to_start_exits_and_stops_what_it_started(
    tmp_path: Path,
) -> None:
    """CONTRACT §10: a `run` whose gRPC server cannot start its serving thread exits 1
    (one line, no traceback) rather than waiting for ever on gRPC's stop, removes
    ``serving.json``, lets go of the data directory's lock, and leaves no thread of
    its own running at its exit."""
    import os
    import subprocess
    import sys

    from tillpoint.agent import forward
    from tillpoint.agent.lock import DataDirLock

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.update(
        TILLPOINT_DEVICE_ID="till-1",
        TILLPOINT_SERVER__LISTEN="127.0.0.1:0",
        TILLPOINT_HTTP__LISTEN="127.0.0.1:0",
        TILLPOINT_METRICS__ENABLED="false",
    )
    data = tmp_path / "data"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", GRPC_START_FAILS, "--data-dir", str(data), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,  # generous for a loaded machine (its exit takes ~2 s); it waited for ever
        )
    except subprocess.TimeoutExpired:
        pytest.fail("run hung after its gRPC server failed to start")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tillpoint:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert any("can't start new thread" in line for line in lines), proc.stderr
    # nothing of the run's own left: gRPC's, HTTP's, the devices', the sweeper's
    assert "threads left: [" in proc.stderr, proc.stderr
    left = proc.stderr.split("threads left: ", 1)[1].splitlines()[0]
    assert not any(name in left for name in ("http", "hold", "print", "display")), left
    assert not (data / forward.SERVING).exists()
    DataDirLock(data).acquire().release()  # the lock let go


# ------------------------------------------------ 2. bounded_lines against its three copies

BOUND = 8  # bytes (characters of a text stream): every edge within a short payload


def _outcome(lines: Any) -> tuple[list[Any], str | None]:
    """The lines an iterator gives, then the words of its refusal (None: none)."""
    got: list[Any] = []
    try:
        for line in lines:
            got.append(line)
    except Exception as exc:  # InputError: its words compared
        return got, str(exc)
    return got, None


def _chunk(read: Any, *args: Any) -> Any:
    """A chunk reader's list as one item, its refusal raised when iterated."""
    yield read(*args)


def _old_stream_lines(stream: Any, first: Any, too_long: Any) -> Any:
    """`snapshot_stream.stream_lines` before review 43 (tidy43), the bound BOUND."""
    limit = BOUND
    readline = stream.readline
    n = 1
    ends = (lambda t: t.endswith(b"\n")) if isinstance(first or b"", bytes) else None
    if ends is None:
        ends = lambda t: t.endswith("\n")  # noqa: E731
    if first is not None:
        if first and not ends(first) and len(first) <= limit:
            first += readline(limit + 1 - len(first))
        if len(first) > limit and not ends(first):
            raise too_long(1)
        if not first:
            return
        yield first
        n = 2
    while line := readline(limit + 1):
        if len(line) > limit and not (
            line.endswith(b"\n") if isinstance(line, bytes) else line.endswith("\n")
        ):
            raise too_long(n)
        yield line
        n += 1


def _old_build_lines(src: Any, start: int, end: int, too_long: Any) -> Any:
    """`cache_build._lines` before review 43 (tidy43), the bound BOUND."""
    bound = BOUND
    src.seek(start)
    pos, n = start, 0
    while pos < end:
        line = src.readline(bound + 1)
        if not line:
            return
        n += 1
        pos += len(line)
        if pos > end:
            line = line[: len(line) - (pos - end)]
        if len(line) > bound and not line.endswith(b"\n"):
            raise too_long(n)
        yield line


def _old_import_lines(stream: Any, number: int, count: int, too_long: Any) -> list[bytes]:
    """`hub_import._bounded_lines` before review 43 (tidy43), the bound BOUND."""
    lines = []
    for i in range(count):
        line = stream.readline(BOUND + 1)
        if len(line) > BOUND and not line.endswith(b"\n"):
            raise too_long(number + i)
        if not line:
            break
        lines.append(line)
    return lines


def _payloads(seed: int, n: int) -> list[bytes]:
    import random

    rnd = random.Random(seed)
    pieces = [b"a", b"bc", b"\n", b"\r\n", b"x" * BOUND, b"y" * (BOUND - 1), b"z" * (BOUND + 1)]
    found = [
        b"",
        b"\n",
        b"a" * BOUND,
        b"a" * BOUND + b"\n",
        b"a" * (BOUND + 1),
        b"\xef\xbb\xbf{}\n",
    ]
    for _ in range(n):
        found.append(b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 8))))
    return found


@pytest.mark.parametrize("seed", [43, 4343])
def test_bounded_lines_read_what_its_three_copies_read(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same lines, the same numbers in the same words, at every edge of the bound, for
    `stream_lines` (bytes and text, a first line read whole or in part), `cache_build`'s
    payload [start, end) (cut in the middle of a line too) and `hub_import`'s chunk."""
    import io
    import random

    from tillpoint.agent import cache_build, limits, snapshot_stream
    from tillpoint.sync import hub_import

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", BOUND)
    monkeypatch.setattr(hub_import, "ROW_MAX_BYTES", BOUND)
    rnd = random.Random(seed)
    stream_words = snapshot_stream.line_too_long_error
    for payload in _payloads(seed, 300):
        text = payload.decode("utf-8")
        for data, wrap in ((payload, io.BytesIO), (text, io.StringIO)):
            for cut in (None, 0, 1, BOUND // 2, BOUND, BOUND + 1, len(data)):
                old_src, new_src = wrap(data), wrap(data)
                first_old = None if cut is None else old_src.readline(cut)
                first_new = None if cut is None else new_src.readline(cut)
                old = _outcome(_old_stream_lines(old_src, first_old, stream_words))
                new = _outcome(snapshot_stream.stream_lines(new_src, first_new))
                assert new == old, (data, cut)
        for _ in range(4):
            start = rnd.randrange(0, len(payload) + 1)
            end = rnd.randrange(start, len(payload) + 1)
            old = _outcome(_old_build_lines(io.BytesIO(payload), start, end, stream_words))
            new = _outcome(cache_build._lines(io.BytesIO(payload), start, end))
            assert new == old, (payload, start, end)
        for count in (1, 2, 3, 100):
            number = rnd.randrange(1, 50)
            old_src, new_src = io.BytesIO(payload), io.BytesIO(payload)
            old = _outcome(
                _chunk(_old_import_lines, old_src, number, count, hub_import._line_too_long)
            )
            new = _outcome(_chunk(hub_import._bounded_lines, new_src, number, count))
            assert new == old, (payload, number, count)
            assert new_src.tell() == old_src.tell()  # the next chunk starts where it did


# ---------------------------------- 3. the SQLite hub store's connections and their threads


def test_a_pool_threads_connections_across_closes_are_closed_when_the_pool_ends(
    tmp_path: Path,
) -> None:
    """`hub serve`'s handlers run in a pool whose threads outlive one call, and a store is
    used again after its close: a pool thread that used the store before each of three
    closes (made by another thread, as `HubServer.stop` makes it) keeps a connection for
    each, never closed under it; all of them are closed when the pool's thread ends,
    and nothing of hub.db is open once the store is closed again."""
    import gc
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tillpoint.sync.hub_sqlite import SqliteHubStore

    path = tmp_path / "hub.db"
    store = SqliteHubStore(path)
    pool = ThreadPoolExecutor(1)
    try:
        for _ in range(3):
            assert pool.submit(store.delta_floor).result(30) == 0
            store.close()  # the pool's thread is alive: its connection is left to it
        assert pool.submit(store.delta_floor).result(30) == 0
        (worker,) = pool._threads
        conns = [conn for owner, conn in store._all if owner is worker]
        assert len(conns) == 1  # the one opened after the last close
    finally:
        pool.shutdown(wait=True)
    assert not worker.is_alive()
    for conn in conns:
        with pytest.raises(Exception, match="closed"):
            conn.execute("SELECT 1")
    store.close()
    gc.collect()
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    assert found == []
