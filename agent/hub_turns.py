"""A receipt's hold at the hub is placed or released one at a time.

The hub keeps one hold a (till, receiptId). Placing it (a hold or checkout asks the hub
for its redemption) and releasing it (the receipt cancelled, its hold expired, or a
release retried once the hub is back) run outside the agent's lock, since each is an
RPC. Without turns, a release decided for an expired hold could reach the hub after the
POS had held the same receiptId again, and drop the new hold: the customer's points would
stand unreserved at the hub while the till still held them.

`HubTurns` orders them: a release starts only when no hold of that receipt is in
progress (else it is left for the next retry), and a hold waits for a release in flight
and for another hold or checkout of the same receiptId in progress. Two calls under one
receiptId at once (a POS retrying over HTTP while its first call is still running, two
clients sending one receipt) each asked the hub, and the later request replaced the hold
the earlier one had just stored: with another body (then answered with a conflict) the
hub held the loser's points and coupon codes for the winner's receipt, so another till
could spend the points the stored receipt will spend. Taking turns, the second call finds
the receipt stored and asks the hub nothing: the stored answer, or the conflict.
A Confirm or a Cancel of a receiptId whose hold is in progress waits for it to end
(`hold_ended`), then answers what it stored.
The turns are taken across the processes of one data directory too (`_AcrossProcesses`,
review 37): a `tillpoint sync now` or a `--local` one-shot command beside `tillpoint run`
sends the releases it reads as owed, and `run` may be holding that receiptId again at that
moment. In-process turns alone, the release read as owed before the new hold was stored
reached the hub after it and dropped it: the till held points the hub no longer held for
the customer. A release now reads the ledger in its turn (`Agent._release_at_hub`).
A release's RPC has its deadline (`hub.redeem_timeout_ms`, at most 60 s), and so has a
hold's request, so the wait ends; past `wait_s` (longer than any deadline) the call is
refused as the hub being unavailable (retry with the same receiptId), never placed beside
a release or another hold still on its way.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import HubUnavailable

log = logging.getLogger(__name__)

# How often a turn another process has is looked at again (`_AcrossProcesses.take`).
ACROSS_POLL_S = 0.005
# In the data directory: the receipts' turns among its processes (`_AcrossProcesses`).
HUB_TURNS_FILE = "hub_turns.lock"


class _AcrossProcesses:
    """A receipt's turn across the processes of one data directory: a POSIX byte-range lock
    (`fcntl.lockf`) on one byte of `hub_turns.lock`, the byte a hash of the receiptId (two
    receipts on one byte only wait for each other). POSIX locks belong to the process, so
    within it the byte is counted (two receipts of one byte, each in its in-process turn)
    and unlocked when the last lets go. Without the file (a read-only data directory) the
    turns are this process's only, as before review 37.

    The file is the one at the path when a turn is taken: deleted (or replaced) while a
    process runs, the next turn opens it again (making it), so the processes started since
    and this one lock one file. Kept open once, `tillpoint run`'s turns stayed on the
    deleted file while the processes started after it locked a new one: two turns of one
    receipt at once, silently, until `run` restarted (review 38). A byte locked on the
    file of before is unlocked there; that file is closed when none is left on it."""

    SPAN = 1 << 40  # bytes a receiptId's hash is spread over

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._fd: int | None = None
        self._file: tuple[int, int] | None = None  # the open file's (st_dev, st_ino)
        # what was at the path when it could not be opened again (not tried at each turn)
        self._tried: tuple[int, int] | bool | None = False
        self._held: dict[int, tuple[int, int]] = {}  # byte: (turns on it, its file's fd)
        # fds of files no longer at the path, bytes locked on them: their (st_dev, st_ino)
        self._gone: dict[int, tuple[int, int]] = {}
        self._mutex = threading.Lock()
        if path is not None:
            self._open(path)

    def _open(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # a read-only directory
                log.info("hub turns in this process only (%s: %s)", path, exc.strerror or exc)
            else:  # a directory, a loop of links there: the race review 37 closed is open
                log.warning(
                    "hub turns in this process only, not across this data directory's"
                    " processes: %s: %s (remove it: the next tillpoint makes the file)",
                    path,
                    exc.strerror or exc,
                )
            return False
        info = os.fstat(fd)
        self._fd, self._file = fd, (info.st_dev, info.st_ino)
        return True

    def _current(self, fd: int) -> int:
        """Under `_mutex`: the fd of the file at the path now; `fd` (the open one) unless
        that file was deleted or replaced since, then the file there (made again)."""
        assert self._path is not None
        try:
            info = os.stat(self._path)
            there: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            there = None
        if there == self._file or there == self._tried:
            return fd
        # A file of before put back at the path (moved aside and back, a link turned back
        # to it) while a turn is held on it: its open fd again, never a second one. POSIX
        # drops all of a process's locks on a file at the close of any fd of it: the first
        # turn's end closed the old fd and with it the byte the later turn had locked on
        # the second (review 38, rev38h).
        was = self._file
        back = next((on for on, file in self._gone.items() if file == there), None)
        if back is not None:
            del self._gone[back]
            self._fd, self._file = back, there
        elif not self._open(self._path):
            # cannot make it again: the turns on the file this process has; tried once
            # (and said why) while the path stays as it is
            self._tried = there
            return fd
        # Opened (or found again): nothing to remember of a failure. Kept, a path found
        # empty once and made again here was taken for one that cannot be opened at its
        # next deletion: the turns stayed on the deleted file while a process started
        # then made a new one (review 38, rev38k)
        self._tried = False
        log.warning("%s was deleted or replaced: turns taken on the file now there", self._path)
        if any(on == fd for _, on in self._held.values()):
            assert was is not None
            self._gone[fd] = was  # closed when its last byte is unlocked (`give`)
        else:
            os.close(fd)
        assert self._fd is not None
        return self._fd

    def _byte(self, receipt_id: str) -> int:
        digest = hashlib.blake2b(receipt_id.encode("utf-8", "surrogatepass"), digest_size=8)
        return int.from_bytes(digest.digest(), "big") % self.SPAN

    def take(self, receipt_id: str, wait_s: float) -> bool:
        """The receipt's turn among processes: waited for up to `wait_s` (0: not at all);
        False when another process keeps it that long."""
        if self._fd is None:
            return True
        byte = self._byte(receipt_id)
        deadline = time.monotonic() + wait_s
        while True:
            with self._mutex:
                if self._fd is None:  # closed
                    return True
                held = self._held.get(byte)
                if held:
                    self._held[byte] = (held[0] + 1, held[1])
                    return True
                fd = self._current(self._fd)
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        log.warning("hub turn of %s in this process only: %s", receipt_id, exc)
                        self._held[byte] = (1, fd)  # unlocking what was never locked is harmless
                        return True
                else:
                    self._held[byte] = (1, fd)
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(ACROSS_POLL_S)

    def give(self, receipt_id: str) -> None:
        if self._fd is None:
            return
        byte = self._byte(receipt_id)
        with self._mutex:
            count, fd = self._held.get(byte, (0, -1))
            if count > 1:
                self._held[byte] = (count - 1, fd)
                return
            if self._held.pop(byte, None) is None:
                return
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)
            if fd in self._gone and all(on != fd for _, on in self._held.values()):
                del self._gone[fd]
                os.close(fd)

    def close(self) -> None:
        with self._mutex:
            for fd in {*self._gone, *([] if self._fd is None else [self._fd])}:
                os.close(fd)  # every lock of this process on the file goes with it
            self._fd = None
            self._gone.clear()
            self._held.clear()


class HubTurns:
    def __init__(
        self,
        wait_s: float = 90.0,
        on_put_off: Callable[[str], object] | None = None,
        across: Path | None = None,
    ) -> None:
        """`on_put_off(receipt_id)`: called when a hold's turn ends after a release of its
        receipt was put off for it (`start_release`), outside any lock: the call may have
        ended without holding the receipt again (it found it cancelled, or failed), and
        then nothing else sends that release before the next retry round. `across`: the
        data directory's lock file, whose turns the processes on it share (a release put
        off for another process's hold is sent at the next round)."""
        self._changed = threading.Condition()
        self._holding: set[str] = set()
        self._releasing: set[str] = set()
        self._put_off: set[str] = set()
        self._on_put_off = on_put_off
        self._wait_s = wait_s
        self._across = _AcrossProcesses(across)

    def close(self) -> None:
        self._across.close()

    @contextmanager
    def holding(self, receipt_id: str) -> Iterator[None]:
        """Around the whole of a hold or checkout: its hub request and its ledger write.
        One at a time for a receiptId, and never beside its release."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: receipt_id not in self._releasing and receipt_id not in self._holding,
                self._wait_s,
            ):
                why = (
                    "the release of its earlier hold has not reached the hub yet"
                    if receipt_id in self._releasing
                    else "another call with this receiptId is still asking the hub"
                )
                raise HubUnavailable(f"receipt {receipt_id}: {why}: retry with the same receiptId")
            self._holding.add(receipt_id)
        taken = False
        try:
            # then among the data directory's processes: another's release of it on its way
            # (`sync now`, a one-shot command beside `run`), or another's hold of it
            taken = self._across.take(receipt_id, self._wait_s)
            if not taken:
                raise HubUnavailable(
                    f"receipt {receipt_id}: another tillpoint process on this data directory"
                    " is still asking the hub about it: retry with the same receiptId"
                )
            yield
        finally:
            if taken:
                self._across.give(receipt_id)
            with self._changed:
                self._holding.discard(receipt_id)
                owed = receipt_id in self._put_off
                self._put_off.discard(receipt_id)
                self._changed.notify_all()
            if owed and self._on_put_off is not None:
                self._on_put_off(receipt_id)

    def busy_holding(self, receipt_id: str) -> bool:
        """Whether a hold or checkout of this receipt is in its turn now (its request to
        the hub on its way, or its grant not yet stored)."""
        with self._changed:
            return receipt_id in self._holding

    def hold_ended(self, receipt_id: str) -> None:
        """Wait until no hold or checkout of `receipt_id` is in progress (a Confirm or a
        Cancel sent while its Hold still asks the hub: a POS that gave up on the Hold).
        Answered before the Hold was stored, it was a 404 "not held", and the hold then
        stored kept the customer's points reserved, at the hub too, until it expired,
        though the POS had cancelled it (review 34); a hold of it in another process on
        this data directory is waited for too (review 37). No turn is kept: a hold that
        starts after this is another call, answered as it comes."""
        with self._changed:
            if not self._changed.wait_for(lambda: receipt_id not in self._holding, self._wait_s):
                raise HubUnavailable(
                    f"receipt {receipt_id}: another call with this receiptId is still asking"
                    " the hub: retry with the same receiptId"
                )
        # and for another process's hold of it (a `tillpoint hold` run locally, a POS that
        # gave up on it sending `tillpoint cancel`): waited for in this process only, the
        # Cancel answered "not held" and the Hold stored after it kept the points reserved
        # here and at the hub (review 37, rev37e). Its turn is given back at once.
        if not self._across.take(receipt_id, self._wait_s):
            raise HubUnavailable(
                f"receipt {receipt_id}: another tillpoint process on this data directory"
                " is still asking the hub about it: retry with the same receiptId"
            )
        self._across.give(receipt_id)

    def start_release(self, receipt_id: str) -> bool:
        """False: a hold of this receipt is in progress (its own request replaces the
        hub's hold; the release is handed to `on_put_off` when its turn ends, for a call
        that did not hold the receipt again), or a release of it is already on its way."""
        with self._changed:
            if receipt_id in self._holding:
                self._put_off.add(receipt_id)  # asked again when that hold's turn ends
                return False
            if receipt_id in self._releasing:
                return False
            # another process's hold or release of it on its way: the next round (not
            # waited for: the caller may hold the agent's lock)
            if not self._across.take(receipt_id, 0.0):
                return False
            self._releasing.add(receipt_id)
            return True

    def end_release(self, receipt_id: str) -> None:
        with self._changed:
            self._releasing.discard(receipt_id)
            self._across.give(receipt_id)
            self._changed.notify_all()
