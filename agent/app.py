"""The composition root: every process tillpoint runs is assembled here, in one place.

- `add_commands`: the commands the other parts bring to the CLI (hub, sync, print, demo);
- `cli_agent`: the `Agent` of a one-shot command (`checkout`, `status`, `snapshot load`...);
- `run`: `tillpoint run`, what runs in a till (below, one screen);
- `reset_hub`: `tillpoint reset`'s hub (`run`'s), to release the open holds' hub holds;
- `sync_link`: `tillpoint sync now`'s hub, by the same rules as `run` (sync/cli.py then
  pushes and pulls once with a `cli_agent`);
- `till_agent`: the one constructor path of a till's `Agent`, which `cli_agent` and the
  loopback tills take too;
- the demo (`tillpoint demo`, agent/demo.py) builds its tills with
  `sync.loopback.LoopbackHub.till` → `till_agent`, wired as `run` wires a till
  (authoriser, sync status and its virtual `printer.service.Devices` in the constructor).

Nothing is registered at import time: a part is running because a line here starts it.
Imports are inside the functions so that `tillpoint --help` stays light (docs/DECISIONS.md,
"Lazy imports").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.pki import Enrollment
    from tillpoint.sync.service import SyncTimings, TillSync

    from .config import Settings
    from .service import Agent, DeviceNotifier, Metrics, RedemptionAuthoriser


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The other parts' commands; each sets `handler(settings, args) -> int`."""
    from tillpoint.printer import cli as printer_cli
    from tillpoint.sync import cli as sync_cli

    from . import demo

    sync_cli.register(sub, common)  # hub ..., sync ...
    printer_cli.register(sub, common)  # print ...
    demo.register(sub, common)  # demo


def device_kinds(settings: Any) -> dict[str, str]:
    """The configured kind of each device (`status` says DISABLED for "none")."""
    kinds = {}
    for name in ("printer", "display", "scanner"):
        table = getattr(settings, name, None) or {}
        kinds[name] = str(table.get("kind", "none"))
    return kinds


def cli_agent(
    settings: Settings,
    *,
    hub: RedemptionAuthoriser | None = None,
    devices: DeviceNotifier | None = None,
    metrics: Metrics | None = None,
) -> Agent:
    """A till's `Agent` as configured: `status` with the hub sync's fields and the
    configured devices' kinds; full snapshots built by `build_workers` processes."""
    return till_agent(
        settings.data_dir,
        settings.device_id,
        hub=hub,
        devices=devices,
        metrics=metrics,
        device_kinds=device_kinds(settings),
        build_workers=settings.build_workers or None,  # 0 (auto): one per CPU, at most 4
    )


def agent_with_hub(settings: Settings, hub: TillSync | None) -> Agent:
    """`cli_agent` with `hub`'s redemption authoriser (None: standalone); the hub's link
    is closed when the agent cannot be opened (a refused ledger, a busy file)."""
    try:
        return cli_agent(settings, hub=hub.authoriser if hub is not None else None)
    except BaseException:
        if hub is not None:
            hub.close()
        raise


def till_agent(
    data_dir: Path,
    device_id: str,
    *,
    clock: Callable[[], datetime] | None = None,
    hub: RedemptionAuthoriser | None = None,
    devices: DeviceNotifier | None = None,
    metrics: Metrics | None = None,
    device_kinds: Mapping[str, str] | None = None,
    build_workers: int | None = None,
) -> Agent:
    """The one constructor path of a till's `Agent` (`run`, the one-shot commands, the
    loopback tills of the demo and the tests): its collaborators given here, `status` with
    the hub sync's fields. Nothing is set on the agent afterwards."""
    from tillpoint.sync.state import sync_status

    from .service import Agent, system_clock

    return Agent(
        data_dir,
        device_id,
        clock=clock or system_clock,
        hub=hub,
        devices=devices,
        metrics=metrics,
        status_sources=(sync_status,),
        device_kinds=device_kinds,
        build_workers=build_workers,
    )


def run(settings: Settings, config_file: Path | None = None) -> int:
    """`tillpoint run`: lock the data dir, build the till, serve, wait for SIGTERM, stop.
    `config_file`: the file the settings were read from (None: none), for the log.

    systemd (Type=notify) hears READY=1 once the server listens, WATCHDOG=1 while the
    process runs (`systemd.start_watchdog`), STOPPING=1 on SIGTERM; in-flight RPCs get 5 s
    to finish. SIGHUP is ignored (logged).
    """
    import logging
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tillpoint.printer.service import build_devices, greet_on_scan
    from tillpoint.sync.service import TillSync

    from . import ledger, logs, models, systemd
    from .config import listen_clash, listen_text, loose_values, split_listen
    from .errors import DamagedCache, DamagedLedger, Refused
    from .lock import DataDirLock
    from .metrics import Registry, serve
    from .server import build_server, register_gauges, start_hold_sweeper

    log = logging.getLogger("tillpoint.server")
    # A SIGTERM is a graceful stop from here on, before anything is written: while the
    # agent opens its data it is taken when that is done (below), not wherever the
    # default action cut it (review 32: a fresh till stopped then kept a hot
    # `cache.db-journal`, or `phone.key`'s temporary file, beside the data).
    done = threading.Event()
    systemd.on_signals(done.set, log)  # SIGTERM, SIGINT stop; SIGHUP is ignored (logged)
    limit_malloc_arenas()  # before any thread of ours starts
    logs.setup(settings.log.level, settings.log.format)
    for loose in loose_values(settings):  # taken as pydantic reads it; `config check` refuses it
        log.warning("%s (taken for now: 'tillpoint config check' refuses it)", loose)
    clash = listen_clash(settings)  # two servers on one port: `config check`'s line, exit 2
    if clash:
        raise Refused(f"config: {clash}")
    lock = DataDirLock(settings.data_dir).acquire()
    try:
        ledger.require_writable(settings.data_dir)  # a read-only ledger: refused, not 503s
        # The collaborators first, then the agent they serve.
        sync = TillSync.for_till(settings)  # None: standalone (no hub, or cannot sync: logged)
        devices = build_devices(settings)  # printer, display, scanner (kind "none": idle)
        registry = Registry()
        agent = cli_agent(
            settings, hub=sync.authoriser if sync else None, devices=devices, metrics=registry
        )
    except (DamagedCache, DamagedLedger) as exc:  # exit 2: the unit does not restart it
        # in a loop (no restart mends a damaged file)
        raise Refused(exc.message) from None
    greet_on_scan(agent.scan, devices)  # a scan: a coupon for the receipt, or a card
    # a coupon job prints what the snapshot still offers when the printer takes it (§7)
    devices.worker.offers_now = agent.offers_on_paper
    register_gauges(registry, agent)
    register_collector_gauges(registry)
    grpc_workers = ThreadPoolExecutor(settings.server.max_workers)
    server, port, health_servicer = build_server(
        agent, settings.server.listen, token=settings.server.token, workers=grpc_workers
    )
    http_server = None
    if settings.http.enabled:
        from .http_api import HttpServer

        http_server = HttpServer(
            agent,
            settings.http.listen,
            token=settings.http.token,
            max_workers=settings.server.max_workers,
            allowed_origins=settings.http.allowed_origins,
        )
    metrics_server = None
    if settings.metrics.enabled:  # bound before anything starts, as the two servers are
        metrics_server, _ = serve(registry, *split_listen(settings.metrics.listen))
    if done.is_set():  # stopped while the agent opened its data: nothing to serve
        log.info("stopped during start-up: nothing was served")
        server.stop(grace=None)
        if http_server is not None:
            http_server.serve.stop_unstarted()
        if metrics_server is not None:
            metrics_server.shutdown()
        if sync is not None:
            sync.close()
        agent.close()
        lock.release()
        return 0
    # What runs beside the servers. Stopped in two lines side by side: the devices; and
    # the hold sweeper, then sync (the sweeper's releases use the sync's hub link).
    hub_side: list[Callable[[], None]] = []
    if sync is not None:
        hub_side.append(sync.start(agent))  # pull, push, Subscribe threads
    devices.start()  # print worker, display, scanner threads
    # expires holds on time; sends the releases owed as soon as the hub answers again
    hub_side.append(
        start_hold_sweeper(
            agent, on_recovery=sync.link.on_recovery, jitter_s=sync.timings.backoff_base_s
        )
        if sync is not None
        else start_hold_sweeper(agent)
    )
    from . import forward

    forward.withdraw(settings.data_dir)  # a file a dead agent left
    unpublish = None
    if http_server is not None:
        # The CLI forwards its calls to this agent while it serves (agent/forward.py).
        # Written before either server answers: once gRPC (health SERVING from its start)
        # or /healthz answers, a CLI call goes to this agent. Published after /healthz, a
        # POS that waited for it had its next CLI checkout run in a process of its own,
        # without this run's printer (CI, review 43); after gRPC's start, one that waited
        # for gRPC did (review 43, flake43). The HTTP port listens from its bind: a call
        # that reads the file before the interface starts waits in the kernel's backlog.
        unpublish = forward.publish(settings.data_dir, http_server, token=bool(settings.http.token))

    def close_the_rest() -> None:
        """Once the servers are stopped: the calls' handlers, the devices and the hub side,
        /metrics, the agent, the data directory's lock (a stop, or a failed start)."""
        grpc_workers.shutdown(wait=True)
        stop_side_by_side([[devices.stop], list(reversed(hub_side))], log)
        if metrics_server is not None:
            metrics_server.shutdown()
        # the follower of an open health Watch reads the agent: ended (bounded) before
        # the agent is closed under it ("health: readiness unavailable" and a traceback
        # at a stop; review 56, mut56a: `run` only entered the shutdown)
        health_servicer.stop_following()
        agent.close()
        lock.release()

    try:
        server.start()
        if http_server is not None:
            http_server.start()
    except BaseException:
        if unpublish is not None:
            unpublish()  # no file naming a run that does not serve
        # what was started stops, as at a stop (nothing was served: no grace); `run`
        # called in a process that goes on (the tests) left gRPC serving and the threads
        # on an open agent (review 43)
        try:
            # bounded, and grace 0 (calls cancelled at once, as None does) for its wait:
            # a server whose serving thread did not start (gRPC's `start` failed after
            # its stage became STARTED: "can't start new thread") never sets its stop's
            # event, and `stop(grace=None)` waits for it itself, without a bound: the
            # run hung for good (review 43, review43)
            server.stop(grace=0).wait(STOP_GRACE_S)
            if http_server is not None and http_server.serve.thread.ident is not None:
                http_server.stop()
            elif http_server is not None:
                http_server.serve.stop_unstarted()
            close_the_rest()
        except Exception:  # the start's own failure is the one to tell
            log.exception("stopping after a failed start")
        raise
    if http_server is not None:
        # an IPv6 host in brackets, as the "cannot listen" lines name it (review 37)
        log.info("HTTP interface on %s", listen_text(http_server.host, http_server.port))
    from .cli import version_text

    # The journal's first words for support: the release, and the snapshot served.
    served = agent.status().to_json()
    version, issued = served["cacheVersion"], served["cacheIssuedAt"]
    log.info(
        "PosAgent serving on %s:%s (device %s, cache version %s, %s; %s)",
        settings.server.listen.rpartition(":")[0],  # an IPv6 host keeps its brackets
        port,  # the port bound ("127.0.0.1:0" asks for any)
        settings.device_id,
        version,
        f"snapshot version {version} issued {issued}" if version else "no snapshot",
        version_text(),
    )
    # Where this agent's data and settings come from: under the unit the environment's
    # TILLPOINT_DATA_DIR wins over the file's data_dir, and support asked which was used.
    log.info(
        "data directory %s; configuration %s",
        settings.data_dir.absolute(),
        config_file.absolute()
        if config_file is not None
        else "file: none (defaults and TILLPOINT_*)",
    )
    if not version:
        log.warning(
            "no snapshot loaded: quote, hold and checkout are refused until one is"
            " (`tillpoint snapshot load FILE`%s)",
            ", or the hub's first" if sync is not None else "",
        )
    models.build_validators()  # before the collector's freeze: start-up's own objects
    settle_collector()
    systemd.notify("READY=1")
    systemd.start_watchdog(done)
    systemd.wait_for_stop(done)  # a SIGTERM taken by any thread ends it
    # and how long the stop may take: a printer's long `confirm_timeout_s` no longer needs
    # the unit's TimeoutStopSec edited (systemd ≥ 236; it never shortens the unit's own)
    hub_wait_s = sync.timings.redeem_timeout_s if sync is not None else 0.0
    usec = int(stop_time_s(devices.worker.config, hub_wait_s) * 1_000_000)
    systemd.notify(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={usec}")
    if unpublish is not None:
        unpublish()  # new CLI calls run locally from now on
    log.info("stopping: draining in-flight requests")
    health_servicer.enter_graceful_shutdown()
    grpc_stopped = server.stop(grace=5)
    if http_server is not None:
        http_server.stop()  # the same 5 s grace, meanwhile
    grpc_stopped.wait()
    # Past the grace gRPC cancels the calls still running (the POS hears UNAVAILABLE and
    # retries with the same receiptId), but their handlers go on in the pool: a checkout
    # waiting for the hub's answer. They end here, on an open ledger and a live hub link,
    # each stored whole or not at all, before anything they use is stopped; closing the
    # agent under them failed their sale as "the ledger is busy or unavailable" and left
    # at the hub the hold they had just been granted. Their hub and lock waits are bounded.
    close_the_rest()
    log.info("stopped")
    return 0


# The bounds of a graceful stop's parts, seconds (see `run` and `stop_side_by_side`): the
# in-flight calls' grace; the customer display's stop before the print worker's; the
# hold sweeper's hub calls and the sync threads (their hub calls cancelled at once: what
# is no hub call, a busy ledger, an apply); and a margin for closing the files.
STOP_GRACE_S = 5.0
STOP_DISPLAY_S = 2.0
STOP_HUB_SIDE_S = 15.0
STOP_MARGIN_S = 5.0


def stop_time_s(printer: Any, redeem_timeout_s: float = 0.0) -> float:
    """How long `run`'s graceful stop may take with this printer configuration and this
    hub's redemption deadline (`hub.redeem_timeout_ms`; 0: standalone): the calls in
    flight (the grace, or longer: a Hold or Checkout waiting for the hub's answer, after
    a release of its receipt in flight with that deadline plus the hub's 100 ms margin,
    then for the ledger), then the longer of the devices' line (the display, then a
    coupon's confirmation, `printer.queue.stop_wait_s`) and the hub
    side. Told to systemd
    with STOPPING=1 (`EXTEND_TIMEOUT_USEC`): a `confirm_timeout_s` above 17 s ran past
    the unit's TimeoutStopSec (30 s), and systemd killed the agent mid-confirmation, the
    coupon left SENDING and failed at the next start (review 33); the calls' hub wait
    counted as the 5 s grace let a long `redeem_timeout_ms` do the same (rev33a)."""
    from tillpoint.sync.hub_store import SHRINK_MARGIN_S

    from .db import BUSY_TIMEOUT_MS

    calls = STOP_GRACE_S
    if redeem_timeout_s > 0:
        # the release in flight has the hub's margin on top of its deadline (rel33)
        release_s = redeem_timeout_s + SHRINK_MARGIN_S
        calls = max(calls, release_s + redeem_timeout_s + BUSY_TIMEOUT_MS / 1000)
    devices = STOP_DISPLAY_S
    if getattr(printer, "kind", "none") != "none":
        from tillpoint.printer.queue import stop_wait_s

        devices += stop_wait_s(printer)
    return calls + max(devices, STOP_HUB_SIDE_S) + STOP_MARGIN_S


def stop_side_by_side(lines: list[list[Callable[[], None]]], log: Any) -> None:
    """Run each line of stops (in its order) beside the others, and wait for all of them.
    Each stop has its own bound (the print worker waits for a job's confirmation:
    confirm_timeout_s + status_timeout_s + 5 s; the hold sweeper 5 s; the sync threads 10 s,
    their hub calls cancelled first), and one after another they added up past the unit's
    TimeoutStopSec (30 s): systemd then killed the agent with the coupon it was confirming
    left SENDING. Side by side the stop takes the longest line."""
    import threading

    def stop_line(stops: list[Callable[[], None]]) -> None:
        for stop in stops:
            try:
                stop()
            except Exception:
                log.exception("stopping a background part failed")

    threads = [
        threading.Thread(target=stop_line, args=(line,), name=f"tillpoint-stop-{i}", daemon=True)
        for i, line in enumerate(lines)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# glibc's malloc arenas of a serving agent (its default: up to 8 per CPU, one for each
# thread that finds the others' busy). The gRPC and HTTP pools' threads each kept one with
# its own free pieces; two: RSS after 11,000 mixed calls 1.0-1.7 MB lower, the same speed
# (calls are one at a time under the GIL anyway). MALLOC_ARENA_MAX in the environment wins.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def limit_malloc_arenas() -> bool:
    """At most `MALLOC_ARENAS` malloc arenas, before the servers start their threads; False
    where it does not apply (not glibc, or MALLOC_ARENA_MAX set by the operator)."""
    import ctypes
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    return bool(mallopt(_M_ARENA_MAX, MALLOC_ARENAS))


# The young generation's threshold of a serving agent (Python's: 700). Counted as
# allocations less deallocations, it is reached by what is alive at once, not by what a
# call allocates and frees: 700 was reached inside nearly every call (objects of the call
# in flight promoted, then a full collection every ~500 calls to find them dead), 10,000
# only by a 200-line receipt's peak. Calls leave almost no cyclic garbage to wait for it.
YOUNG_THRESHOLD = 10_000


def settle_collector() -> None:
    """The cyclic collector of a serving agent (docs/DECISIONS.md, "The serving agent's
    tail latency"), set once, just before READY:

    - what start-up built (modules, pydantic and protobuf classes, the servers: about
      60,000 objects) leaves the collector's generations (`gc.freeze`): a full collection
      walked all of them, 30-64 ms in one call every ~500 (bench/serving_ab.py), the
      largest pause a POS saw; frozen, 2 ms;
    - the young generation's threshold is `YOUNG_THRESHOLD`: collections become rare (one in
      ~8,000 mixed calls instead of ~2,200), at no measured memory cost (32 objects of
      cyclic garbage in 11,000 calls)."""
    import gc

    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def register_collector_gauges(registry: Any) -> None:
    """The collector's figures on /metrics: objects frozen at start, the thresholds, and
    collections so far by generation."""
    import gc

    registry.gauge(
        "tillpoint_gc_frozen_objects",
        "Objects start-up moved out of the cyclic collector's generations (gc.freeze).",
        lambda: {"": float(gc.get_freeze_count())},
    )
    registry.gauge(
        "tillpoint_gc_threshold",
        "The cyclic collector's thresholds, by generation.",
        lambda: {f'generation="{n}"': float(t) for n, t in enumerate(gc.get_threshold())},
    )
    registry.gauge(
        "tillpoint_gc_collections",
        "Cyclic collections since start, by generation (2: the full, slow ones).",
        lambda: {
            f'generation="{n}"': float(stats["collections"])
            for n, stats in enumerate(gc.get_stats())
        },
    )


def reset_hub(settings: Settings) -> TillSync | None:
    """`tillpoint reset`'s hub, by `run`'s rules, to release what the open holds it forgets
    reserved there; None: standalone, or this till cannot sync (logged)."""
    from tillpoint.sync.service import TillSync

    return TillSync.for_till(settings)


def local_hub(settings: Settings) -> TillSync | None:
    """The hub of a command the CLI runs in its own process (`TillSync.for_one_call`); a
    standalone till (no hub address, no enrolment) imports nothing for it."""
    from tillpoint.sync import is_enrolled

    if not settings.hub.address and not is_enrolled(settings.data_dir):
        return None
    from tillpoint.sync.service import TillSync

    return TillSync.for_one_call(settings)


def sync_link(settings: Settings) -> tuple[Enrollment, HubLink, SyncTimings]:
    """`tillpoint sync now`'s hub, by `run`'s rules (`check_hub`: enrolled, as this
    device); InputError saying what is missing."""
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.pki import load_enrollment
    from tillpoint.sync.service import SyncTimings, check_hub

    from .errors import InputError

    enrollment = load_enrollment(settings.data_dir)
    if enrollment is None:
        raise InputError("this till is not enrolled: `tillpoint sync install BUNDLE` first")
    address = check_hub(settings, enrollment)
    if not address:
        raise InputError("no hub address: set hub.address in the configuration")
    return enrollment, HubLink(address, enrollment), SyncTimings.from_settings(settings)
