"""One agent per data directory: an advisory lock held for the life of the process."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from .db import no_space_hint, owner_hint
from .errors import InputError, Refused, StorageError


def flock_within(fd: int, wait_s: float, step_s: float = 0.05) -> bool:
    """Take an exclusive flock on `fd`, trying every `step_s` until `wait_s` has passed
    (flock itself has no timeout); whether it was taken. Closing `fd` releases it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(step_s)


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "tillpoint.lock"
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # Read-only, another user's, not a directory: an administrator's to mend
            # (exit 2, as privileges.py's "cannot read the data directory"; the unit does
            # not restart it). A full disk or an I/O error may pass: exit 1.
            transient = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
            hint = no_space_hint(self.path.parent, exc) or owner_hint(self.path)
            raise (StorageError if transient else InputError)(
                f"cannot use the data directory {self.path.parent}: {exc.strerror or exc}{hint}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Refused(
                f"another tillpoint (pid {holder}) is running on {self.path.parent}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: the same words as the open's
            os.close(fd)
            raise StorageError(
                f"cannot use the data directory {self.path.parent}: {exc.strerror or exc}"
                f"{no_space_hint(self.path.parent, exc)}"
            ) from None
        self._fd = fd
        return self

    def holder(self) -> str | None:
        """The pid of the process holding the lock (a `tillpoint run`, a `reset`), or None,
        read from the kernel's list of locks (/proc/locks) without taking the lock: a
        `run` starting meanwhile must not find it taken (it would exit 2, and its unit
        does not restart it). None too where that list cannot be read."""
        try:
            st = self.path.stat()
            locks = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        try:  # the pid the holder wrote in it: what an inode-only match must agree with
            written = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            written = ""
        return flock_holder(locks, os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, written)

    def unheld(self) -> bool:
        """True only when the kernel's list of locks could be read and no process holds
        this lock (`holder`'s None also means "cannot tell": /proc/locks unreadable)."""
        try:
            self.path.stat()
            Path("/proc/locks").read_bytes()
        except FileNotFoundError:
            return self.path.parent.is_dir() and Path("/proc/locks").is_file()
        except OSError:
            return False
        return self.holder() is None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def flock_holder(
    locks: str, major: int, minor: int, inode: int, written_pid: str = ""
) -> str | None:
    """The pid holding a flock on the file (major:minor:inode) in /proc/locks' text.

    On overlayfs (a till in a container) the kernel lists the underlying file system's
    device, not the one stat() gives: then a flock on a file of that inode is ours only
    when its pid is the one written in the lock file (another file system's file of the
    same inode number would name a stranger)."""
    device = f"{major:02x}:{minor:02x}:{inode}"
    same_inode: list[str] = []
    for line in locks.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2147334 0 EOF" (a waiter's has "->")
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == device:
            return fields[4]
        if fields[5].rsplit(":", 1)[-1] == str(inode):
            same_inode.append(fields[4])
    return written_pid if written_pid and written_pid in same_inode else None
