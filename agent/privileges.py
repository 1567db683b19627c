"""Never change the ownership of an installed data directory (README, "Installed till").

`tillpoint status` run as root on a till installed from the package would create
`cache.db`, `ledger.db` and `phone.key` owned by root, and the service (user
`tillpoint`) would then fail with "Permission denied". So a command run as root on a data
directory that exists and belongs to another user first becomes that user (its groups
too: `dialout` and `lp` reach the printer), before it opens anything in the directory;
if that is not possible it refuses with a one-line hint (exit 2).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from .errors import InputError


def check_data_dir(data_dir: Path) -> None:
    """A data directory that is a file, or lies under one (a typo in `--data-dir`), is the
    administrator's to mend: one line, exit 2, which the unit does not restart. `status`,
    `snapshot load` and the other commands said "cannot open …/cache.db: [Errno 17] File
    exists" with exit 1 (`run` alone said it with exit 2). A missing one is made later."""
    hint = "(--data-dir, TILLPOINT_DATA_DIR or data_dir in the configuration names it)"
    try:
        os.fsdecode(os.fsencode(data_dir)).encode("utf-8")
    except UnicodeError:
        # bytes a Latin-1 shell wrote: SQLite keeps the path as UTF-8 text, and the cache
        # made there could not be opened again ("internal error: OperationalError", exit 1)
        shown = os.fsencode(data_dir).decode("utf-8", "backslashreplace")  # ".../till-\xff"
        raise InputError(
            f"the data directory {shown} has a name that is not UTF-8 text: name it in UTF-8 {hint}"
        ) from None
    try:
        info = os.stat(data_dir)
    except NotADirectoryError:
        raise InputError(
            f"the data directory {data_dir} is not a directory: a part of its path is a file {hint}"
        ) from None
    except OSError:
        return  # missing (made when first used), or unreadable: the openers say which
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"the data directory {data_dir} is not a directory but a file {hint}")


def run_as_owner(data_dir: Path) -> None:
    """Become the owner of `data_dir` when running as root and it belongs to someone else."""
    if os.geteuid() != 0:
        return
    try:
        info = os.stat(data_dir)
    except FileNotFoundError:
        return  # a new data directory: root's own, as root asked for it
    except OSError as exc:
        raise InputError(f"cannot read the data directory {data_dir}: {exc.strerror}") from None
    if info.st_uid == 0:
        return
    try:
        user = pwd.getpwuid(info.st_uid)
    except KeyError:
        name, gid = None, info.st_gid
    else:
        name, gid = user.pw_name, user.pw_gid
    try:
        if name is not None:
            os.initgroups(name, gid)
        else:
            os.setgroups([])
        os.setgid(gid)
        os.setuid(info.st_uid)
    except OSError:
        who = name or f"uid {info.st_uid}"
        raise InputError(
            f"{data_dir} belongs to {who}: run the command as that user"
            f" (sudo -u {who} tillpoint ...) so its files keep their owner"
        ) from None
