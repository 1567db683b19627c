"""The agent's sync loop (built by agent/app.py for `tillpoint run`): pull, push, subscribe.

Two threads:

- the *sync* thread pulls a snapshot at start, when the hub announces a newer version,
  and every ``hub.poll_interval_s``; and drains the outbox whenever it has rows (checked
  every `push_check_s`). Each of the two keeps its own exponential backoff with jitter
  after a failure.
- the *subscribe* thread keeps a `Subscribe` stream open; a notification of a version
  newer than the cache wakes the sync thread at once. A stream silent for three
  heartbeats is cancelled and reopened (with backoff).

After an outage the backoffs may have grown to a minute. When the hub answers again
(`HubLink.on_recovery`: any call succeeds after the link was down, or the channel is
READY again), the push, pull and Subscribe backoffs are reset and all three retry at
once, each after a jitter of up to `backoff_base_s` so that a store's tills do not
arrive together.

Checkouts never wait for either: they only use the hub through `HubAuthoriser`, with its
own short deadline.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc
from tillpoint.agent.config import Settings
from tillpoint.agent.errors import InputError, TillpointError
from tillpoint.agent.ledger import open_ledger
from tillpoint.agent.logs import say_once
from tillpoint.v1 import tillpoint_pb2 as pb

from . import check_device, state
from .authoriser import HubAuthoriser
from .backoff import Backoff
from .client import HubLink
from .pki import (
    REMIND_EVERY_S,
    CertificateReminder,
    Enrollment,
    EnrollmentError,
    certificate_not_after,
    certificate_problem,
    expiry_note,
    load_enrollment,
)
from .pull import DEFAULT_MAX_BYTES, Puller, PullInterrupted, SyncBusy, cache_version
from .push import Pusher
from .till import TillAgent

log = logging.getLogger("tillpoint.sync")
CONTACT_EVERY_S = 30.0  # lastContactAt is written at most this often (the ledger is on flash)
# How long `SyncService.stop` waits for its threads (one bound for all of them), once it
# has closed the hub link (which ends the hub call on its way at once): a step that is no
# hub call (the ledger's busy wait, a snapshot's apply).
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class SyncTimings:
    call_timeout_s: float = 5.0  # unary calls (push) and pull stream silence
    redeem_timeout_s: float = 0.3
    poll_interval_s: float = 60.0
    push_check_s: float = 1.0
    stream_timeout_s: float = 600.0  # a whole snapshot download
    subscribe_max_s: float = 330.0  # a Subscribe stream's deadline (the hub ends it first)
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    max_snapshot_bytes: int = DEFAULT_MAX_BYTES  # a bigger snapshot is refused unread
    # A certificate within RENEW_WARNING_DAYS of its end (or past it) is logged at start
    # and again this often while `tillpoint run` runs
    certificate_reminder_s: float = REMIND_EVERY_S

    @classmethod
    def from_settings(cls, settings: Settings) -> SyncTimings:
        hub = settings.hub
        return cls(
            call_timeout_s=hub.call_timeout_ms / 1000,
            redeem_timeout_s=hub.redeem_timeout_ms / 1000,
            poll_interval_s=hub.poll_interval_s,
            max_snapshot_bytes=hub.max_snapshot_mib * 1024 * 1024,
        )


def hub_address(settings: Settings, enrollment: Enrollment | None) -> str:
    """The configured address, else the one in the enrolment bundle."""
    return settings.hub.address or (enrollment.hub_address if enrollment else "")


class SyncService:
    def __init__(
        self,
        agent: TillAgent,
        link: HubLink,
        enrollment: Enrollment,
        timings: SyncTimings,
    ) -> None:
        self.agent = agent
        self.link = link
        self.enrollment = enrollment
        self.timings = timings
        self.puller = Puller(
            agent,
            link,
            enrollment,
            call_timeout_s=timings.call_timeout_s,
            stream_timeout_s=timings.stream_timeout_s,
            max_bytes=timings.max_snapshot_bytes,
        )
        self.pusher = Pusher(
            agent.data_dir, enrollment.device_id, link, call_timeout_s=timings.call_timeout_s
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pull_now = threading.Event()
        self._pull_now.set()  # pull once at start
        # Bumped (under the condition) each time the hub answers again after an outage.
        self._recovery = threading.Condition()
        self._recoveries = 0
        self._rng = random.Random()
        self.pull_backoff = Backoff(timings.backoff_base_s, timings.backoff_cap_s)
        self.push_backoff = Backoff(timings.backoff_base_s, timings.backoff_cap_s)
        self.subscribe_backoff = Backoff(timings.backoff_base_s, timings.backoff_cap_s)
        link.on_recovery(self._hub_answers_again)
        self._threads: list[threading.Thread] = []
        self._subscription: Any = None
        self._announced = 0  # the newest version the hub's last notification named
        self._mode_written: str | None = None
        self._contact_written: datetime | None = None
        # What the last failed pull and push said (`_say`): the same words again are DEBUG.
        self._said: dict[str, str] = {}
        # The last pull that returned (for a look from a debugger or a test): one, not a
        # list of every pull for the life of `tillpoint run` (≈ 1,440 a day at the default
        # poll, ≈ 155 bytes each, kept for good).
        self.last_pull: Any = None
        self.certificate = CertificateReminder(
            self._certificate_note, log, timings.certificate_reminder_s
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        state.put(self.pusher.conn, {"hub_address": self.link.address, "error:enrollment": None})
        self.certificate.check()  # said at start, then again by the sync thread each day
        for name, target in (("sync", self._loop), ("subscribe", self._subscribe)):
            thread = threading.Thread(target=target, name=f"tillpoint-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._recovery:
            self._recovery.notify_all()
        sub = self._subscription
        if sub is not None:
            sub.cancel()
        # The hub calls on their way end now (CANCELLED), not at their deadline: the stop
        # waited up to STOP_WAIT_S for them first, and a thread that outwaited it kept its
        # connection past the stop (review 42, left42). What the hub did not acknowledge
        # stays owed: a push in the outbox (sent again, taken as the duplicate it is if the
        # hub had stored it), a pull's file where it got to (resumed). The recovery
        # listeners go with the link: the hold sweeper, which sends releases on it, is
        # stopped before this (`run`).
        self.link.close()
        deadline = time.monotonic() + STOP_WAIT_S  # one bound for all of them, not each
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._sync_thread_running():
            # Still on a busy ledger or an apply: the pusher's connection is the sync
            # thread's, closed by that thread when it ends (`_loop`). Closed here, it was
            # freed under a statement the thread was running: a segmentation fault
            # (review 42).
            log.warning(
                "stopping: the sync thread is still running after %.0f s; it closes its"
                " ledger connection when it ends",
                STOP_WAIT_S,
            )
        else:
            self._persist_mode()
            self.pusher.close()

    def _sync_thread_running(self) -> bool:
        return any(t.name == "tillpoint-sync" and t.is_alive() for t in self._threads)

    def trigger_pull(self) -> None:
        self._pull_now.set()
        self._wake.set()

    def _certificate_note(self, now: datetime) -> tuple[int, str] | None:
        """What the log says of this till's certificate (`CertificateReminder`): the one
        its link presents, read at start (a renewed bundle installed meanwhile is used
        only after a restart, so the old one still expires, and says so)."""
        pem = self.link.certificate_pem
        hint = self.enrollment.renew_hint()
        problem = certificate_problem(pem, "this till's", hint, now=now)
        if problem:
            return logging.ERROR, problem
        return expiry_note(certificate_not_after(pem), now, "this till's", hint)

    def _hub_answers_again(self) -> None:
        """`HubLink` listener: wake every loop that waits out a backoff (quick, any thread)."""
        with self._recovery:
            self._recoveries += 1
            self._recovery.notify_all()
        self._wake.set()

    def _jitter(self) -> float:
        return self._rng.uniform(0, self.timings.backoff_base_s)

    # ------------------------------------------------------------ the sync thread

    def _loop(self) -> None:
        try:
            self._rounds()
        finally:
            if self._stop.is_set():  # a stop that did not wait this long left them to it
                with contextlib.suppress(Exception):
                    self._persist_mode()
                self.pusher.close()

    def _rounds(self) -> None:
        t = self.timings
        pull_backoff, push_backoff = self.pull_backoff, self.push_backoff
        next_pull = next_push = time.monotonic()
        # The recovery count at each one's last failure: a newer one ends its backoff.
        pull_failed_at = push_failed_at = self._recoveries
        while not self._stop.is_set():
            now = time.monotonic()
            if pull_backoff.failures and self._recoveries != pull_failed_at:
                pull_backoff.reset()  # the hub answers again: no more waiting
                next_pull = min(next_pull, now + self._jitter())
            if push_backoff.failures and self._recoveries != push_failed_at:
                push_backoff.reset()
                next_push = min(next_push, now + self._jitter())
            if self._pull_now.is_set() or now >= next_pull:
                self._pull_now.clear()
                delay = self._guarded("pull", self._pull_once, 1.0)
                if delay is None:
                    pull_backoff.reset()
                    next_pull = time.monotonic() + t.poll_interval_s
                else:
                    pull_failed_at = self._recoveries
                    next_pull = time.monotonic() + pull_backoff.next()
            if self._stop.is_set():  # no call on a closed link (ValueError, not RpcError)
                break
            if time.monotonic() >= next_push:
                if self._guarded("push", self._push_once, False):
                    push_backoff.reset()
                    next_push = time.monotonic() + t.push_check_s
                else:
                    push_failed_at = self._recoveries
                    next_push = time.monotonic() + push_backoff.next()
            self._persist_mode()
            self.certificate.check()  # a look once a day (`certificate_reminder_s`)
            wait = max(0.0, min(next_pull, next_push) - time.monotonic())
            self._wake.wait(timeout=wait)
            self._wake.clear()

    def _guarded(self, area: str, step: Callable[[], Any], failed: Any) -> Any:
        """A pull or push step that never ends the sync thread: anything it did not expect
        (a bug, a damaged file) is logged with its trace, recorded for `status`, and
        backed off like a failure. An exception used to end the thread: no pull or push
        again until `tillpoint run` was restarted, and nothing in `status` said so. The
        trace is logged once; the same error again at each retry (every backoff, up to a
        minute apart, for as long as it lasts) is one DEBUG line, as a refusal is."""
        try:
            return step()
        except Exception as exc:
            if self._stop.is_set() and self.link.closing:
                # the stop closed the link under the step (a call on a closed channel is
                # a ValueError): nothing went wrong
                log.debug("%s ended by the stop: %r", area, exc)
                return failed
            text = f"{area}: unexpected error: {exc!r}"
            if self._said.get(area) != text:
                log.exception("%s failed unexpectedly; will retry", area)
            else:
                log.debug("%s failed unexpectedly again; will retry: %r", area, exc)
            self._said[area] = text
            with contextlib.suppress(Exception):
                state.set_error(self.pusher.conn, area, text)
            return failed

    def _pull_once(self) -> float | None:
        """None on success; otherwise "back off"."""
        try:
            # the hub's mark before the snapshot: a re-imaged till sells as soon as its
            # first snapshot is in, and its first sale must be numbered above what the
            # hub stored of it (§9), even when the hub has not published that yet
            self.pusher.know_mark()
            result = self.puller.pull()
        except grpc.RpcError as exc:
            if not self.link.closing:  # a stop's cancel says nothing
                self._say("pull", f"pull failed: {self.link.last_failure or exc}")
            return 1.0
        except (PullInterrupted, SyncBusy) as exc:
            self._say("pull", f"pull: {exc}")
            return 1.0
        except TillpointError as exc:
            self._say("pull", f"pull: {exc.message}", logging.ERROR)
            state.set_error(self.pusher.conn, "pull", f"pull: {exc.message}")
            return 1.0
        self._said.pop("pull", None)
        self.last_pull = result
        # A bundle refused for what it is (its signature, version, content) is the hub's
        # word until it publishes another, which its notification announces: the next
        # poll asks again. What went wrong on the way is retried with the backoff.
        return None if result.status != "REFUSED" or result.remembered else 1.0

    def _push_once(self) -> bool:
        try:
            self.pusher.know_mark()  # as the pull does: whichever talks to the hub first
            if self.pusher.pending() == 0:
                return True
            self.pusher.drain()
            self._said.pop("push", None)
            return True
        except grpc.RpcError as exc:
            if not self.link.closing:  # a stop's cancel says nothing
                self._say("push", f"push failed, will retry: {self.link.last_failure or exc}")
            return False
        except SyncBusy:
            return False
        except TillpointError as exc:
            self._say("push", f"push: {exc.message}", logging.ERROR)
            state.set_error(self.pusher.conn, "push", f"push: {exc.message}")
            return False

    def _say(self, kind: str, text: str, level: int = logging.INFO) -> None:
        """A failed pull or push, logged at `level` when its words change and at DEBUG when
        a retry fails the same way: during an outage every retry wrote the same INFO line
        (3-4 a minute for as long as it lasted) after the WARNING that the till sells
        OFFLINE, which `_persist_mode` writes once; a pull that failed on the till's side
        (a full disk, a damaged cache) wrote the same ERROR at every retry. `status`
        keeps saying it."""
        self._said[kind] = say_once(log, self._said.get(kind, ""), level, text)

    def _persist_mode(self) -> None:
        mode = "ONLINE" if self.link.online else "OFFLINE"
        values: dict[str, str | None] = {}
        if mode != self._mode_written:
            values["mode"] = mode
            values["error:link"] = (
                None
                if self.link.online or not self.link.last_failure
                else state.error_value(self.link.last_failure)
            )
        contact = self.link.last_contact
        if contact is not None and (
            values
            or self._contact_written is None
            # abs: a wall clock stepped back (NTP) froze the old, future time for the step
            or abs((contact - self._contact_written).total_seconds()) >= CONTACT_EVERY_S
        ):
            values["last_contact_at"] = state.now_text(contact)
        if values:
            try:
                state.put(self.pusher.conn, values)
                if "mode" in values:  # once a change: an outage is a warning, not info lines
                    if mode == "OFFLINE":
                        log.warning(
                            "hub %s is not answering: the till sells OFFLINE (%s)",
                            self.link.address,
                            self.link.last_failure or "no answer yet",
                        )
                    elif self._mode_written is not None:
                        log.info("hub %s answers again: the till is ONLINE", self.link.address)
                self._mode_written = mode
                if "last_contact_at" in values:
                    self._contact_written = contact
            except Exception as exc:  # status bookkeeping must never stop the loop
                log.warning("cannot record the sync state: %s", exc)

    # ------------------------------------------------------------ the subscribe thread

    def _subscribe(self) -> None:
        backoff = self.subscribe_backoff
        while not self._stop.is_set():
            try:
                have = cache_version(self.agent.data_dir)
                call = self.link.stub.Subscribe(
                    pb.SubscribeRequest(device_id=self.enrollment.device_id, have_version=have),
                    timeout=self.timings.subscribe_max_s,
                )
                self._subscription = call
                if self._stop.is_set():
                    # a stop between this loop's check and the line above found no
                    # stream to cancel: this one ran on, heartbeat after heartbeat, until
                    # the stop's wait (`STOP_WAIT_S`) ran out (review 42, review42)
                    self._subscription.cancel()
                silence = _Silence(call, 45.0)
                try:
                    for note in call:
                        self.link.ok()
                        backoff.reset()
                        silence.reset(3 * max(1, note.heartbeat_s))
                        if self._news(note.latest_version):
                            self.trigger_pull()
                        self._wake.set()  # also refreshes the recorded mode
                finally:
                    silence.stop()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if exc.code() not in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    self.link.failed(exc)
                    self._wake.set()
            except TillpointError as exc:
                log.warning("subscribe: %s", exc.message)
            except ValueError:  # a stream opened as the stop closed the link ("closed channel")
                if self._stop.is_set():
                    return
                raise
            finally:
                self._subscription = None
            self._back_off(backoff)

    def _news(self, version: int) -> bool:
        """Whether a notification announces a version to pull at once: above the cache and
        not announced before. Every heartbeat (and each new stream's first message)
        repeats the hub's newest version: taken for news, a version the till refused (a
        snapshot key replaced on the hub) was pulled again, and its refusal logged at
        ERROR, at every heartbeat until the hub published another; a pull that failed is
        retried by its backoff and the polls."""
        news = version != self._announced and version > cache_version(self.agent.data_dir)
        self._announced = version
        return news

    def _back_off(self, backoff: Backoff) -> None:
        """Subscribe's wait before it reopens: its backoff, cut short (after a jitter) when
        the hub answers again to any call made after this stream ended."""
        with self._recovery:
            seen = self._recoveries
            woken = self._recovery.wait_for(
                lambda: self._stop.is_set() or self._recoveries != seen, timeout=backoff.next()
            )
        if woken and not self._stop.is_set():
            backoff.reset()
            self._stop.wait(self._jitter())


class _Silence:
    """Cancels a stream when no message came for `limit` seconds."""

    def __init__(self, call: Any, limit: float) -> None:
        self.call = call
        self.limit = limit
        self.last = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="subscribe-silence").start()

    def reset(self, limit: float) -> None:
        self.limit = limit
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if time.monotonic() - self.last > self.limit:
                self.call.cancel()
                return

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------- a till's hub, for agent/app.py


class OwedCalls(Protocol):
    """The calls a till owes its hub (`tillpoint.agent.service.Agent` is one)."""

    def retry_hub_releases(self, stop: threading.Event | None = None) -> int: ...


class NotSyncing(InputError):
    """A hub is set for this till but it cannot sync with it (not enrolled, or enrolled
    as another device)."""


def check_hub(settings: Settings, enrollment: Enrollment | None) -> str | None:
    """The hub this till syncs with, by the one rule `tillpoint run` and `sync now` share:
    the configured address, else the enrolment's; None when there is none (standalone).
    WrongDevice when the till is enrolled as another device than `device_id` (an address
    or not); NotSyncing when there is an address but the till is not enrolled."""
    if enrollment is not None:  # an enrolled till, a hub address set or not
        check_device(enrollment.device_id, settings.device_id)
    address = hub_address(settings, enrollment)
    if not address:
        return None
    if enrollment is None:
        raise NotSyncing(
            f"hub {address} is configured but this till is not enrolled: run"
            " `tillpoint sync install BUNDLE` with the bundle from `tillpoint hub enroll`"
        )
    return address


@dataclass
class TillSync:
    """A till's link to its hub: built before the `Agent` (it gives the agent its
    redemption authoriser) and started with it (the sync and Subscribe threads)."""

    address: str
    enrollment: Enrollment
    timings: SyncTimings
    link: HubLink
    authoriser: HubAuthoriser

    @classmethod
    def for_till(cls, settings: Settings) -> TillSync | None:
        """`tillpoint run`'s hub, or None (standalone). A till that cannot sync with the
        hub set for it logs why, records it for `status`, and runs standalone; one
        enrolled as another device is refused (`WrongDevice`)."""
        try:
            enrollment = load_enrollment(settings.data_dir)
        except EnrollmentError as exc:
            log.error("%s", exc.message)
            enrollment = None
        try:
            address = check_hub(settings, enrollment)  # WrongDevice goes up: refused
        except NotSyncing as exc:
            log.error("%s", exc.message)
            conn = open_ledger(settings.data_dir)
            try:
                state.put(
                    conn, {"error:enrollment": state.error_value(exc.message), "mode": "OFFLINE"}
                )
            finally:
                conn.close()
            return None
        if address is None or enrollment is None:
            return None
        return cls._linked(settings, address, enrollment)

    @classmethod
    def _linked(cls, settings: Settings, address: str, enrollment: Enrollment) -> TillSync:
        timings = SyncTimings.from_settings(settings)
        link = HubLink(address, enrollment)
        authoriser = HubAuthoriser(
            link, settings.data_dir, settings.device_id, timings.redeem_timeout_s
        )
        return cls(address, enrollment, timings, link, authoriser)

    @classmethod
    def for_one_call(cls, settings: Settings) -> TillSync | None:
        """The hub of one command run in the CLI's own process (no `tillpoint run` serves
        the data directory), by `run`'s rules, so an enrolled till prices as `run` would
        (the contract §5, §9): ONLINE while its hub answers, redemption authorised there.
        Whether the hub answers is asked once, within the redemption deadline. None when
        the till is standalone or cannot sync (`WrongDevice` is refused, as by `run`);
        unlike `for_till` it writes nothing (a quote stores nothing) and says nothing
        (`status` says why a till cannot sync)."""
        try:  # WrongDevice goes up, as from `run`: no sale under an id its hub never takes
            enrollment = load_enrollment(settings.data_dir)
            address = check_hub(settings, enrollment)
        except (EnrollmentError, NotSyncing):
            return None
        if address is None or enrollment is None:
            return None
        sync = cls._linked(settings, address, enrollment)
        sync.link.probe(sync.timings.redeem_timeout_s)
        return sync

    def send_owed(self, agent: OwedCalls, *, shrink_owed: bool = False) -> int:
        """After a one-shot command's answer is written (`tillpoint hold`, `checkout`,
        `confirm`, `cancel`, run in the CLI's own process): the releases the hub did not
        get while it was away (a Cancel during an outage), and the late grants' shrinks,
        as `run`'s hold timer sends them (`retry_hub_releases`). Until review 36 only
        `run` and `sync now` sent them, so a till driven by one-shot commands left the hub
        holding those points from every other till for `holdTtlSeconds` + 60 s (the
        contract §11). Only while the hub answered this command (a hub away costs
        nothing); no call starts past `hub.redeem_timeout_ms` after the answer (those
        left stay owed for the next command), so the process ends at most that and one
        call's deadline after it. What goes wrong is logged, never the command's: its
        answer is given. Answers how many were released. `shrink_owed`: the command's own
        Hold owes the shrink of a grant that came past its deadline (review 38: sent in
        the Hold's call before, ahead of its answer), sent though that deadline marked the
        hub away: the hub answered it, late."""
        if not self.link.online and not shrink_owed:
            return 0
        past_deadline = threading.Event()
        timer = threading.Timer(self.timings.redeem_timeout_s, past_deadline.set)
        timer.daemon = True
        timer.start()
        try:
            return agent.retry_hub_releases(past_deadline)
        except Exception as exc:  # a busy or full ledger: owed still, for the next command
            # one line (a one-shot command's stderr, logging not set up: no traceback)
            why = exc.message if isinstance(exc, TillpointError) else repr(exc)
            log.warning("the releases owed to the hub are left for later: %s", why)
            return 0
        finally:
            timer.cancel()

    def start(self, agent: TillAgent) -> Callable[[], None]:
        """Start syncing `agent` (built with `self.authoriser`); returns the stop."""
        service = SyncService(agent, self.link, self.enrollment, self.timings)
        service.start()
        log.info("syncing with hub %s as %s", self.address, agent.device_id)

        def stop() -> None:
            service.stop()
            self.authoriser.close()

        return stop

    def close(self) -> None:
        """For a process that never started it (`tillpoint reset`): the link's channel."""
        self.authoriser.close()
        self.link.close()
