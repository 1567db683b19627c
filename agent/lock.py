"""One agent per data directory: an advisory lock held for the life of the process."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .db import owner_hint
from .errors import InputError, Refused, StorageError


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
            raise (StorageError if transient else InputError)(
                f"cannot use the data directory {self.path.parent}:"
                f" {exc.strerror or exc}{owner_hint(self.path)}"
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
            ) from None
        self._fd = fd
        return self

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
