"""Files written whole, for other people and programs: a reader (a person copying an
export, the till's next start, another process) finds the old content or the new, never
a part of the new one.

A file is written under a temporary name beside it (``NAME.tmp``), with its mode from the
start (a secret is never readable by others, not even half written), fsynced, renamed over
``NAME``, and the rename made durable (the directory fsynced). Anything raised on the way,
a full disk included, removes the temporary file and leaves ``NAME`` as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .db import fsync_path

__all__ = ["create_once", "remove_stale_temps", "replacing", "write_whole"]


@contextmanager
def replacing(path: Path, *, mode: int = 0o644, encoding: str | None = None) -> Iterator[IO[Any]]:
    """A file to write `path`'s new content to (text in `encoding`, else bytes); it
    becomes `path` when the block ends without an error (see the module). Buffered:
    every byte given is written, or the write raises (a bare `os.write` may write part
    of what it was given and say so only in its count)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # Always a new file: one a crash left (its mode maybe wider than `mode`), or a link
    # someone put there (in a folder others may write), is removed, never written
    # through; a name taken again meanwhile fails (O_EXCL) instead of being followed.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w" if encoding else "wb", encoding=encoding) as out:
            fd = -1  # the file object closes it
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_whole(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """`data` as the whole of `path` (`replacing`)."""
    with replacing(path, mode=mode) as out:
        out.write(data)


# What `link` says on a file system without hard links: vfat (EPERM: it has no link
# operation), some FUSE and network file systems (EOPNOTSUPP, ENOSYS).
NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# How long a maker waits for another's lock: the other holds it for one rename.
LOCK_WAIT_S = 10.0


def create_once(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """`data` as `path` unless `path` exists: False when another writer (another process
    starting at the same moment) made it first, whose content then stands. Written whole
    under a temporary name of its own (never one another writer shares: `replacing`'s
    `NAME.tmp` would be truncated and linked by both), fsynced, and linked to `path`, which
    never replaces a file there; the link made durable. A reader finds no `path` or all of
    it (review 31: two agents starting on a new data directory could make two phone keys,
    or one of them read the other's half-written key).

    A file system without hard links (vfat, some FUSE: `NO_LINKS`) renames the whole
    file in instead, under an exclusive lock of the directory, taken by every maker there,
    and only if `path` is still missing: still made once, and never seen half written
    (review 32: it failed with a raw PermissionError). Without locks either, an OSError
    saying so."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        # held while it is written: `remove_stale_temps` leaves a file someone writes
        with contextlib.suppress(OSError):  # a file system without locks: the age alone
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if mode != 0o600:  # mkstemp's own; a chmod is EPERM on vfat (its modes are the mount's)
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in NO_LINKS:
                raise
            if not _rename_in_once(tmp, path):
                return False
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return True


# How old a temporary file of `create_once` must be for `remove_stale_temps` to take it
# for a killed writer's, besides being unlocked: its writer locks it just after making it,
# and writes a few bytes; a minute covers the moment between, and an older release's
# writer, which took no lock.
STALE_TEMP_S = 60.0


def remove_stale_temps(
    folder: Path,
    prefix: str,
    suffix: str = "",
    *,
    older_than_s: float = STALE_TEMP_S,
    removed_files: list[tuple[str, int]] | None = None,
) -> int:
    """Remove the temporary files (`prefix`…`suffix` in `folder`) a process left when it
    was killed while it wrote them: `create_once`'s `NAME.XXXXXXXX.tmp` (review 33: a
    SIGKILL between the write and the unlink left a copy of a phone key for good), `hub
    import -`'s copy of standard input. Only those no live process writes (its writer
    holds an exclusive flock on it), older than `older_than_s`, and open in no live
    process /proc shows (a writer of an earlier release takes no lock: `_open_elsewhere`).
    Returns how many, and adds (name, bytes) of each to `removed_files`; never raises (a
    file it cannot open or remove is left)."""
    folder = Path(folder)
    removed = 0
    try:
        names = [
            entry.name
            for entry in os.scandir(folder)
            if entry.name.startswith(prefix)
            and entry.name.endswith(suffix)
            and len(entry.name) > len(prefix) + len(suffix)
        ]
    except OSError:
        return 0
    now = time.time()
    for name in names:
        tmp = folder / name
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            seen = os.fstat(fd)
            if not stat.S_ISREG(seen.st_mode) or now - seen.st_mtime < older_than_s:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is at work
            except OSError:
                pass  # no locks here: the age alone
            if _open_elsewhere(seen, fd):
                continue  # a live writer that takes no lock (a release before review 33)
            now_there = os.lstat(tmp)
            if (now_there.st_dev, now_there.st_ino) == (seen.st_dev, seen.st_ino):
                tmp.unlink()
                removed += 1
                if removed_files is not None:
                    removed_files.append((name, int(seen.st_size)))
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _open_elsewhere(seen: os.stat_result, mine: int) -> bool:
    """Whether a live process (this one through another descriptor than `mine`) has the
    file `seen` open, read from Linux's /proc/PID/fd (review 33, rev33a: a `hub import -`
    of the release before takes no lock on its copy of standard input, and one whose
    input was quiet for a minute, or that read its copy back for minutes, had it removed
    from under it on the age alone). A process /proc does not show (another user's) or no
    /proc: False, the lock and the age decide. Only asked of a file that looks stale."""
    me = str(os.getpid())
    try:
        pids = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            fds = [entry.name for entry in os.scandir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or not ours to read
            continue
        for name in fds:
            if pid == me and name == str(mine):
                continue
            try:
                st = os.stat(f"/proc/{pid}/fd/{name}")  # the open file itself
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (seen.st_dev, seen.st_ino):
                return True
    return False


def _rename_in_once(tmp: Path, path: Path) -> bool:
    """`tmp` renamed to `path` unless `path` exists, under an exclusive flock of their
    directory (a rename replaces a file: without the lock, a second maker's key would
    replace the one the first had read)."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OSError(
                        errno.ETIMEDOUT, f"{path.parent} stayed locked by another maker"
                    ) from None
                time.sleep(0.01)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"the file system has no hard links and no file locks ({exc.strerror})",
                ) from None
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
        return True
    finally:
        os.close(folder)  # the lock with it
