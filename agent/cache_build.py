"""Build a full snapshot's cache generation from a file, in child processes, in parallel.

The agent (`Agent.load_snapshot_file`) starts one *coordinator* process::

    python -m tillpoint.agent.cache_build build --data-dir D --source F --offset O ...

and waits for it with a timeout; a blocking wait releases the GIL, so the agent's gRPC
threads keep answering checkouts. Nothing is forked from the agent (its gRPC threads make
`fork` unsafe): children are new interpreters (`subprocess`).

The coordinator takes the cache's write lock and checks the version (`cache.apply`), maps
the file, finds the section lines (`{"section": ...}`) with a scan for that text, and cuts
each section's byte range into N chunks at line boundaries. N *worker* processes
(`... cache_build work ...`) each validate their chunks exactly as `snapshot_stream` does
and write the rows into a part file (no journal, no secondary indexes); worker 0's part
is the new generation itself. With one worker the coordinator does that work itself.
Then the coordinator merges the other parts (`ATTACH`, `INSERT INTO t SELECT * FROM
part.t`: a key given twice anywhere is refused by the primary key), writes the meta,
creates the indexes, and `cache.apply` fsyncs and switches `cache.db` to it.

Every process of the build runs at nice ≥ 10, so a checkout in the agent's process gets
a core first. Errors keep the file's real line numbers (a worker counts lines from its
chunk; only when it reports an error is the chunk's first line number counted). A child
reports a failure as one JSON line on stderr, `{"error": CLASS, "message": TEXT}`, and
exits 2 for bad data, 1 for anything else; a killed or crashed child is a refusal with
the cache unchanged; part files and the build are deleted on success and on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import mmap
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from . import cache as cache_mod
from . import errors, limits
from .db import BUILDING, open_cache, phone_secret, remove_stale_builds, write_transaction
from .errors import InputError, StorageError, TillpointError, UnreadableFile
from .models import ROW_MODELS, SnapshotHeader
from .snapshot_stream import line_too_long_error

MODULE = "tillpoint.agent.cache_build"
NICE = 10
# Workers: the CPUs, at most this many (the merge and the indexes are one core's work).
MAX_WORKERS = 4
# A section smaller than this is not cut; a worker is started for each whole MIN_CHUNK of
# the payload, at most `workers` (one under twice this is built by the coordinator alone:
# starting a worker costs ≈ 0.3 s of imports).
MIN_CHUNK = 8 << 20
TIMEOUT_S = 1800.0
# Rows copied from a part per statement; the file is flushed between them.
_MERGE_STEP = 50_000
# Tests set this to make one worker kill itself before it starts ("kill:1") or wait a
# minute before it reads ("stall:1"), or the coordinator wait a minute once the parts are
# written ("stall").
FAULT_ENV = "TILLPOINT_BUILD_FAULT"
ORPHAN_POLL_S = 0.5  # how often a child checks that whoever started it is still there
_LINE = re.compile(r"^snapshot line ([0-9]+): ")

# A chunk of the payload: its section at the start (None before the first section line
# or at a section line), and its byte range in the file.
Chunk = tuple[str | None, int, int]


def default_workers() -> int:
    """`TILLPOINT_BUILD_WORKERS` (the `build_workers` setting from the environment) when it
    names a count; else, and for its 0 ("auto", as in the file), one per CPU, at most
    MAX_WORKERS."""
    env = os.environ.get("TILLPOINT_BUILD_WORKERS", "").strip()
    if env and int(env) > 0:
        return int(env)
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def lower_priority() -> None:
    """This process's niceness to at least NICE (never lower than it is)."""
    with contextlib.suppress(OSError):
        now = os.nice(0)
        if now < NICE:
            os.nice(NICE - now)


# ------------------------------------------------------------------ the agent's side


def run(
    data_dir: Path,
    source: Path,
    offset: int,
    length: int,
    now: datetime,
    *,
    workers: int | None = None,
    min_chunk: int = MIN_CHUNK,
    timeout: float = TIMEOUT_S,
) -> cache_mod.CacheInfo:
    """Build and switch in the full snapshot at `source[offset:offset+length]` in a
    coordinator process; wait for it (without the GIL) at most `timeout` seconds.

    Raises the coordinator's own error (InputError, SnapshotRefused: exit 2; StorageError:
    exit 1); a coordinator killed or timed out is a StorageError, its processes killed
    and its files deleted."""
    cmd = [
        sys.executable,
        "-m",
        MODULE,
        "build",
        "--data-dir",
        str(data_dir),
        "--source",
        str(source),
        "--offset",
        str(offset),
        "--length",
        str(length),
        "--now",
        now.isoformat(),
        "--workers",
        str(workers or default_workers()),
        "--min-chunk",
        str(min_chunk),
        "--timeout",
        str(timeout),
        "--parent",
        str(os.getpid()),
    ]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: its workers go with it
        )
    except OSError as exc:
        raise StorageError(f"cannot start the cache build: {exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _cleanup(data_dir)
        raise StorageError(
            f"the cache build took more than {timeout + 30:.0f} s and was stopped;"
            " the cache is unchanged"
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode == 0:
        doc = json.loads(out)
        doc["ignored"] = tuple(doc.get("ignored", ()))
        return cache_mod.CacheInfo(**doc)
    if proc.returncode < 0:
        _kill_group(proc)
        _cleanup(data_dir)
    raise _error_of(proc.returncode, err, "the cache build")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


def _cleanup(data_dir: Path) -> None:
    """The files of a build whose coordinator was killed, if nobody else is building."""
    try:
        conn = open_cache(data_dir)
    except StorageError:
        return
    try:
        conn.execute("PRAGMA busy_timeout = 100")
        with write_transaction(conn, "cache"):
            remove_stale_builds(data_dir)
    except (StorageError, OSError):
        pass  # another apply holds the lock: the next full apply deletes them
    finally:
        conn.close()


def _error_of(code: int, stderr: bytes, who: str) -> TillpointError:
    """The error a child reported (its last JSON line on stderr), or one for its death."""
    for line in reversed(stderr.decode("utf-8", "replace").splitlines()):
        if line.startswith('{"error"'):
            with contextlib.suppress(ValueError, TypeError):
                doc = json.loads(line)
                cls = getattr(errors, str(doc["error"]), None)
                if isinstance(cls, type) and issubclass(cls, TillpointError):
                    return cls(str(doc["message"]))
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return StorageError(f"{who} was killed ({name}); nothing was stored")
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
    return StorageError(f"{who} failed (exit {code}: {tail[0][:300]}); nothing was stored")


# ------------------------------------------------------------------ the coordinator


def build(
    data_dir: Path,
    source: Path,
    offset: int,
    length: int,
    now: datetime,
    workers: int,
    min_chunk: int,
    timeout: float,
) -> cache_mod.CacheInfo:
    """In the coordinator: lock, check, build in parallel, switch (`cache.apply`)."""
    ignored: set[str] = set()  # fields and sections left out, the workers' too
    header, plan = _header_and_plan(source, offset, length, workers, min_chunk, ignored)

    def make(tmp: Path) -> cache_mod.CacheInfo:
        return _make(data_dir, source, offset, plan, tmp, header, now, timeout, ignored)

    return cache_mod.apply(data_dir, header, (), now, phone_secret(data_dir), make).naming(ignored)


def _header_and_plan(
    source: Path, offset: int, length: int, workers: int, min_chunk: int, ignored: set[str]
) -> tuple[SnapshotHeader, list[list[Chunk]]]:
    """The snapshot's header (validated as `snapshot_stream` does) and the workers' chunks."""
    from .snapshot_stream import read_lines

    with open(source, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        end = offset + length
        if end > len(mm) or offset < 0:
            raise InputError("snapshot: the payload lies outside its file")
        # the header read from the file, its line bounded (a mapping's readline has no
        # bound: a 300 MB header line was copied whole; review 42, left42)
        with open(source, "rb") as head, open(source, "rb", buffering=0) as raw:
            header, _ = read_lines(_lines(head, offset, end), ignored)
            body = head.tell()
            marks = _sections(raw, body, end, first_line=_newlines(raw, offset, body) + 1)
        return header, _plan(mm, body, end, marks, workers, min_chunk)
    finally:
        mm.close()


def _plan_of(
    source: Path, offset: int, length: int, workers: int, min_chunk: int
) -> list[list[Chunk]]:
    return _header_and_plan(source, offset, length, workers, min_chunk, set())[1]


def _lines(src: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The lines of src's bytes [start, end) (each with its newline); `end` is at a line's
    end. None is read past `limits.LINE_MAX_BYTES`: a longer one is refused as "snapshot
    line N" counting from `start`'s line as 1 (a worker's error is numbered so, `work`)."""
    src.seek(start)
    return limits.bounded_lines(src.readline, line_too_long_error, size=end - start)


def _sections(
    fh: BinaryIO, start: int, end: int, block: int = 16 << 20, first_line: int = 1
) -> list[int]:
    """Where each section line starts: a line whose text, stripped as `snapshot_stream`
    strips it, starts with `{"section"` (found by a scan for that text, read in 16 MB
    blocks, not mapped: mapped pages would count in this process's RSS; inside a JSON
    string the quotes would be escaped).

    A line longer than `limits.LINE_MAX_BYTES` is refused here, naming it (`first_line`:
    the file's number of the line at `start`), before a worker starts: the scan carried a
    line's bytes from block to block, and a 300 MB line was copied whole at each (and
    then read whole by a worker: ~950 MB; review 42, left42)."""
    bound = limits.LINE_MAX_BYTES
    block = min(block, bound)  # a line inside one block is within the bound
    pattern = b'{"section"'
    marks: list[int] = []
    fh.seek(start)
    pos, carry = start, b""  # carry: the current line's bytes before this block
    number = first_line  # the file's number of carry's line
    while pos < end:
        chunk = fh.read(min(block, end - pos))
        if not chunk:
            break
        ends = chunk.find(b"\n")  # where carry's line ends, if in this block
        if len(carry) + (len(chunk) if ends < 0 else ends) > bound:
            raise line_too_long_error(number)
        number += chunk.count(b"\n")
        data, base = carry + chunk, pos - len(carry)
        at = data.find(pattern)
        while at >= 0:
            if at + len(pattern) > len(carry):  # not already seen in the previous block
                line = data.rfind(b"\n", 0, at) + 1
                before = data[line:at]
                if not before or not before.decode("utf-8", "replace").strip():
                    marks.append(base + line)
            at = data.find(pattern, at + 1)
        pos += len(chunk)
        carry = data[data.rfind(b"\n") + 1 :]
    return marks


def _section_of(mm: mmap.mmap, at: int, end: int) -> str | None:
    """The section a valid section line at `at` starts (None if it is not valid: the
    worker given that line refuses it with its line number)."""
    stop = mm.find(b"\n", at, end)
    try:
        doc = json.loads(mm[at : end if stop < 0 else stop])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    name = doc.get("section") if isinstance(doc, dict) else None
    # one this version does not know too: its rows are left out (`snapshot_stream._rows`)
    return name if isinstance(name, str) and name and len(doc) == 1 else None


def _plan(
    mm: mmap.mmap, body: int, end: int, sections: list[int], workers: int, min_chunk: int
) -> list[list[Chunk]]:
    """The chunks of each worker, in file order: every section cut into `workers` pieces
    at line ends (small ones whole, dealt round-robin). Worker 0's part is the build."""
    workers = max(1, min(workers, (end - body) // max(min_chunk, 1) or 1))
    marks = set(sections)
    bounds = sorted({body, *marks, end})
    plan: list[list[Chunk]] = [[] for _ in range(workers)]
    small = 0
    for s, e in itertools.pairwise(bounds):
        # A chunk that starts at the section line reads it itself; the ones after it
        # start in its section (None for lines before the first section line).
        name = _section_of(mm, s, e) if s in marks else None
        stop = mm.find(b"\n", s, e)
        first_end = e if stop < 0 else stop + 1
        if workers == 1 or e - s < min_chunk:
            plan[small % workers].append((None, s, e))
            small += 1
            continue
        cuts = [s]
        for k in range(1, workers):
            at = max(s + (e - s) * k // workers, first_end)
            nl = mm.find(b"\n", at - 1, e)  # the first line end at or after `at`
            cuts.append(e if nl < 0 else nl + 1)
        cuts.append(e)
        for k in range(workers):
            a, b = cuts[k], cuts[k + 1]
            if a < b:
                plan[k].append((None if a == s else name, a, b))
    return [chunks for chunks in plan if chunks] or [[]]


def _make(
    data_dir: Path,
    source: Path,
    offset: int,
    plan: list[list[Chunk]],
    tmp: Path,
    header: SnapshotHeader,
    now: datetime,
    timeout: float,
    ignored: set[str],
) -> cache_mod.CacheInfo:
    """The generation at `tmp`: the workers' parts (worker 0's is `tmp`), merged."""
    base = tmp.name.removesuffix(BUILDING)
    parts = [tmp, *(tmp.with_name(f"{base}.part{i}{BUILDING}") for i in range(1, len(plan)))]
    try:
        if len(plan) == 1:
            work(data_dir, source, offset, plan[0], tmp, ignored)
        else:
            ignored.update(_run_workers(data_dir, source, offset, plan, parts, timeout))
        if os.environ.get(FAULT_ENV) == "stall":  # tests: kill the coordinator here
            time.sleep(60)
        conn = cache_mod.open_build(tmp)
        settle = cache_mod.Settle(tmp)
        try:
            for part in parts[1:]:
                _merge(conn, part, settle)
            return cache_mod.finish_build(conn, header, now)
        finally:
            conn.close()
            settle.close()
    finally:
        for part in parts[1:]:
            part.unlink(missing_ok=True)


def _merge(conn: sqlite3.Connection, part: Path, settle: cache_mod.Settle) -> None:
    conn.execute("ATTACH DATABASE ? AS part", (str(part),))
    try:
        for table in ROW_MODELS:
            (top,) = conn.execute(f"SELECT coalesce(max(rowid), 0) FROM part.{table}").fetchone()
            for low in range(0, top, _MERGE_STEP):
                try:
                    conn.execute(
                        f"INSERT INTO main.{table} SELECT * FROM part.{table}"
                        " WHERE rowid > ? AND rowid <= ?",
                        (low, low + _MERGE_STEP),
                    )
                except sqlite3.IntegrityError:
                    key = _twice(conn, table, low, low + _MERGE_STEP)
                    raise InputError(
                        f"snapshot: two {table} rows have the same key, {key!r}"
                    ) from None
                settle()
    finally:
        conn.execute("DETACH DATABASE part")


def _twice(conn: sqlite3.Connection, table: str, low: int, high: int) -> str:
    """A key of the attached part's `table` (its rows `low` < rowid <= `high`, the step
    refused) that the main build holds too (a table's first column is its key)."""
    key = conn.execute(f"PRAGMA main.table_info({table})").fetchone()[1]
    row = conn.execute(
        f"SELECT {key} FROM part.{table} WHERE rowid > ? AND rowid <= ?"
        f" AND {key} IN (SELECT {key} FROM main.{table}) ORDER BY rowid LIMIT 1",
        (low, high),
    ).fetchone()
    return "?" if row is None else str(row[0])


def _run_workers(
    data_dir: Path,
    source: Path,
    offset: int,
    plan: list[list[Chunk]],
    parts: list[Path],
    timeout: float,
) -> set[str]:
    """Start a worker a part and wait for them all (at most `timeout` s). A worker that
    dies or fails otherwise than on the data stops the others; on bad data the others
    finish, so the refusal names the first bad line of the file, as one process would.
    Returns what the workers left out (each prints `{"ignored": [...]}` on stdout)."""
    procs = []
    ignored: set[str] = set()
    fault = os.environ.get(FAULT_ENV, "")
    try:
        for i, (chunks, part) in enumerate(zip(plan, parts, strict=True)):
            env = dict(os.environ)
            env.pop(FAULT_ENV, None)
            if fault in (f"kill:{i}", f"stall:{i}"):
                env[FAULT_ENV] = fault.partition(":")[0]
            spec = json.dumps([[c[0], c[1], c[2]] for c in chunks])
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        MODULE,
                        "work",
                        "--data-dir",
                        str(data_dir),
                        "--source",
                        str(source),
                        "--offset",
                        str(offset),
                        "--part",
                        str(part),
                        "--chunks",
                        spec,
                        "--parent",
                        str(os.getpid()),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        deadline = time.monotonic() + timeout
        failures: list[tuple[int, TillpointError]] = []
        for i, proc in enumerate(procs):
            left = deadline - time.monotonic()
            try:
                out, err = proc.communicate(timeout=max(left, 0.01))
            except subprocess.TimeoutExpired:
                raise StorageError(
                    f"the cache build's worker {i} took more than {timeout:.0f} s;"
                    " nothing was stored"
                ) from None
            if proc.returncode != 0:
                failure = _error_of(proc.returncode, err, f"the cache build's worker {i}")
                if not isinstance(failure, InputError):
                    raise failure
                failures.append((_line_of(failure), failure))
            elif out.strip():
                ignored.update(json.loads(out).get("ignored", ()))
        if failures:
            raise min(failures, key=lambda f: f[0])[1]
        return ignored
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)


def _line_of(error: TillpointError) -> int:
    found = _LINE.match(error.message)
    return int(found.group(1)) if found else sys.maxsize


# ------------------------------------------------------------------ a worker


def work(
    data_dir: Path,
    source: Path,
    offset: int,
    chunks: Sequence[Chunk],
    part: Path,
    ignored: set[str],
) -> None:
    """Validate the chunks' rows and write them into `part`, a new file (no indexes);
    the fields and sections left out go into `ignored`.

    The file is read, not mapped: mapped pages would count in this process's RSS for as
    long as it runs (a chain snapshot is ~2 GB); read pages stay in the page cache only."""
    from .snapshot_stream import _rows

    secret = phone_secret(data_dir)
    with open(source, "rb", buffering=1 << 20) as fh:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def rows() -> Iterator[cache_mod.Row]:
            for section, start, end in chunks:
                try:
                    yield from _rows(enumerate(_lines(fh, start, end), start=1), section, ignored)
                except InputError as exc:
                    found = _LINE.match(exc.message)
                    if not found:
                        raise
                    line = _newlines(fh, offset, start) + int(found.group(1))
                    raise type(exc)(f"snapshot line {line}: {exc.message[found.end() :]}") from None

        cache_mod.write_part(part, rows(), secret)


def _newlines(fh: BinaryIO, start: int, end: int) -> int:
    """Lines that end in the file's bytes [start, end), read in 16 MB slices (only for an
    error's line number)."""
    count = 0
    fh.seek(start)
    while start < end:
        block = fh.read(min(16 << 20, end - start))
        if not block:
            break
        count += block.count(b"\n")
        start += len(block)
    return count


# ------------------------------------------------------------------ the command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("build", "work"):
        p = sub.add_parser(role)
        p.add_argument("--data-dir", type=Path, required=True)
        p.add_argument("--source", type=Path, required=True)
        p.add_argument("--offset", type=int, default=0)
        if role == "build":
            p.add_argument("--length", type=int)
            p.add_argument("--now", required=True)
            p.add_argument("--workers", type=int, default=0)
            p.add_argument("--min-chunk", type=int, default=MIN_CHUNK)
            p.add_argument("--timeout", type=float, default=TIMEOUT_S)
        else:
            p.add_argument("--part", type=Path, required=True)
            p.add_argument("--chunks", required=True)
        p.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)
    lower_priority()
    _stop_when_orphaned(args.parent)
    try:
        if args.role == "work":
            if os.environ.get(FAULT_ENV) == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if os.environ.get(FAULT_ENV) == "stall":
                time.sleep(60)
            chunks = [(c[0], int(c[1]), int(c[2])) for c in json.loads(args.chunks)]
            ignored: set[str] = set()
            work(args.data_dir, args.source, args.offset, chunks, args.part, ignored)
            if ignored:
                print(json.dumps({"ignored": sorted(ignored)}))
            return 0
        length = args.length
        if length is None:
            length = args.source.stat().st_size - args.offset
        loaded = build(
            args.data_dir,
            args.source,
            args.offset,
            length,
            datetime.fromisoformat(args.now),
            args.workers or default_workers(),
            args.min_chunk,
            args.timeout,
        )
    except TillpointError as exc:
        _report(exc)
        return exc.exit_code
    except FileNotFoundError as exc:
        _report(UnreadableFile(f"{exc.filename}: no such file"))
        return 2
    except (OSError, sqlite3.Error) as exc:
        # a worker's part (its own file) at the file size limit or on a full disk: said
        # so, as the build's own file is (`cache.build_hint`; review 40, rev40c)
        hint = cache_mod.build_hint(args.part) if args.role == "work" else ""
        _report(StorageError(f"the cache could not be written, nothing was stored: {exc}{hint}"))
        return 1
    print(json.dumps(loaded.__dict__))
    return 0


def _stop_when_orphaned(parent: int) -> None:
    """Stop this child of the build once the process that started it is gone. Under
    systemd the unit's KillMode takes the build with a killed agent; elsewhere (a
    container without an init, a `snapshot load` killed by hand) it would go on alone,
    holding the cache's write lock while the restarted agent's first pull waits. What it
    leaves is removed by the next apply.

    A coordinator that leads its process group (`run` starts it in a session of its own)
    takes the group, its workers with it; any other child (a worker, or a coordinator a
    script started in its own group) stops itself alone, never the group it was given:
    that group is its starter's (review 54). A worker watches its coordinator in turn."""
    parent = parent or os.getppid()
    leads = os.getpgrp() == os.getpid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                if leads:
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(ORPHAN_POLL_S)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _report(exc: TillpointError) -> None:
    print(json.dumps({"error": type(exc).__name__, "message": exc.message}), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
