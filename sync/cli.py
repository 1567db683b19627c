"""`tillpoint hub ...` (the reference hub) and `tillpoint sync ...` (the till's side).

Registered by `tillpoint.agent.cli` through `register(subparsers, common_parent)`.
Importing this module also adds the sync loop to `tillpoint run`'s background services.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tillpoint.agent.errors import HubUnavailable, InputError, TillpointError, one_line
from tillpoint.agent.limits import INT64_MAX

if TYPE_CHECKING:  # `tillpoint --help` must not import pydantic (agent/app.py)
    from tillpoint.agent.config import Settings

    from .hub_server import HubDir

EXIT_OK, EXIT_ERROR = 0, 1
# `sync now`'s deadline for the whole command (docs/CONTRACT.md §9): over a link that keeps
# timing out it halved its batch at each timeout, about 8 × hub.call_timeout_ms in all.
SYNC_NOW_TIMEOUT_S = 60.0
SYNC_NOW_TIMEOUT_MAX_S = 86_400.0
Handler = Callable[["Settings", argparse.Namespace], int]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    hub_parent = argparse.ArgumentParser(add_help=False)
    hub_parent.add_argument(
        "--hub-dir",
        type=Path,
        default=None,
        help="the hub's directory (default: $TILLPOINT_HUB_DIR, else <data dir>/hub)",
    )
    hub_parent.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the hub's store: postgresql://... (shared by several hub servers) or a SQLite"
        " file (default: $TILLPOINT_HUB_STORE, else hub.db in the hub's directory)",
    )
    parents = [common, hub_parent]

    hub = sub.add_parser("hub", help="the reference hub: serve, import, publish, enroll")
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="ACTION")
    hub.set_defaults(handler=_needs_action(hub, "serve, import, publish, enroll, ..."))

    p = hub_sub.add_parser("init", parents=parents, help="make the hub's CA and keys")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="a host name or IP the hub is reached at (repeatable)",
    )
    p.add_argument(
        "--renew-server",
        action="store_true",
        help="issue the hub a new server certificate from its CA (before the old one"
        " expires, or after; tills need nothing new)",
    )
    p.set_defaults(handler=_hub_init)

    p = hub_sub.add_parser(
        "migrate", parents=parents, help="bring the store's schema up to date (PostgreSQL)"
    )
    p.set_defaults(handler=_hub_migrate)

    p = hub_sub.add_parser("serve", parents=parents, help="run the hub's gRPC server (mTLS)")
    p.add_argument("--listen", default="0.0.0.0:50070", help="HOST:PORT (default %(default)s)")
    p.add_argument("--port-file", type=Path, help="write the bound port here (for --listen :0)")
    p.add_argument(
        "--publish-every",
        type=float,
        default=300.0,
        metavar="S",
        help="publish a balance refresh at most every S seconds when transactions"
        " came in (0: never; default %(default)s)",
    )
    p.add_argument(
        "--ttl-hours",
        type=float,
        default=168.0,
        help="validity of published snapshots (default %(default)s)",
    )
    p.add_argument(
        "--keep-deltas-days",
        type=float,
        default=30.0,
        metavar="D",
        help="make deltas from the versions of the last D days; older ones are pruned and"
        " a till on one gets a full snapshot (0: keep every version; default %(default)s)",
    )
    p.add_argument(
        "--hold-ttl",
        type=float,
        default=900.0,
        metavar="S",
        help="how long an authorised redemption is held (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=15.0,
        metavar="S",
        help="Subscribe heartbeat (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=64,
        help="server threads; each connected till holds one (default %(default)s)",
    )
    # hub_server.CHUNK_BYTES in KiB (a test holds the two equal)
    p.add_argument("--chunk-kib", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument(
        "--rate-kib",
        type=float,
        default=0.0,
        help="limit each snapshot download to this many KiB/s (default: no limit)",
    )
    p.set_defaults(handler=_hub_serve)

    p = hub_sub.add_parser(
        "import",
        parents=parents,
        help="load master data from a snapshot-shaped JSON or JSON Lines file",
    )
    p.add_argument("file", type=Path, help="the file; - reads standard input")
    p.add_argument(
        "--format",
        choices=("json", "jsonl"),
        help="default: from the file name (standard input: from its first line)",
    )
    p.add_argument("--publish", action="store_true", help="publish a new version afterwards")
    p.add_argument("--ttl-hours", type=float, default=168.0, help=argparse.SUPPRESS)
    p.set_defaults(handler=_hub_import)

    p = hub_sub.add_parser("publish", parents=parents, help="make a new snapshot version")
    p.add_argument(
        "--ttl-hours",
        type=float,
        default=168.0,
        help="how long the version is valid (default %(default)s)",
    )
    p.add_argument(
        "--min-version",
        type=int,
        default=0,
        help="number the version at least this (to move past tills' caches)",
    )
    p.set_defaults(handler=_hub_publish)

    p = hub_sub.add_parser(
        "enroll", parents=parents, help="make a device's identity and its enrolment bundle"
    )
    p.add_argument("device")
    p.add_argument("--address", default="", help="HOST:PORT the till dials (put in the bundle)")
    p.add_argument("--out", type=Path, help="bundle file (default <hub dir>/bundles/DEVICE.json)")
    p.add_argument(
        "--renew",
        action="store_true",
        help="issue an enrolled or revoked device a new certificate (its old one stops working)",
    )
    p.set_defaults(handler=_hub_enroll)

    p = hub_sub.add_parser("revoke", parents=parents, help="refuse a device from now on")
    p.add_argument("device")
    p.set_defaults(handler=_hub_revoke)

    p = hub_sub.add_parser(
        "export",
        parents=parents,
        help="write a device's signed full snapshot (for `snapshot load`)",
    )
    p.add_argument("device")
    p.add_argument("--out", type=Path, help="file (default: standard output)")
    p.set_defaults(handler=_hub_export)

    p = hub_sub.add_parser("balance", parents=parents, help="a customer's live balance")
    p.add_argument("customer")
    p.add_argument("--at", help="RFC 3339 time with offset (default: now)")
    p.set_defaults(handler=_hub_balance)

    p = hub_sub.add_parser(
        "receipts",
        parents=parents,
        help="the transactions of a device the hub has stored (to reconcile with a till)",
    )
    p.add_argument("--device", required=True, help="the till's device id")
    p.add_argument(
        "--since", type=int, default=0, metavar="SEQ", help="only seq above SEQ (default 0)"
    )
    p.add_argument("--receipt", default="", help="only this receipt's sale and refunds")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    p.set_defaults(handler=_hub_receipts)

    p = hub_sub.add_parser(
        "status",
        parents=parents,
        help="the hub at a glance: its snapshot version, devices, conflicts, set-aside",
    )
    p.set_defaults(handler=_hub_status)

    p = hub_sub.add_parser(
        "coupon-conflicts",
        parents=parents,
        help="coupon codes used by two tills while they were offline (the sales stand)",
    )
    p.set_defaults(handler=_hub_coupon_conflicts)

    p = hub_sub.add_parser(
        "set-aside",
        parents=parents,
        help="transactions the hub set aside instead of storing (conflicts, rejected, resent)",
    )
    p.add_argument("--device", default="", help="only this till's (default: every till's)")
    p.set_defaults(handler=_hub_set_aside)

    sync = sub.add_parser("sync", help="the till's sync with its hub")
    sync_sub = sync.add_subparsers(dest="sync_command", metavar="ACTION")
    sync.set_defaults(handler=_needs_action(sync, "now, install, receipts"))

    p = sync_sub.add_parser(
        "now", parents=[common], help="push the outbox and pull the newest snapshot, now"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="S",
        help="wait this long for a sync the service is running (default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=SYNC_NOW_TIMEOUT_S,
        metavar="S",
        help="give up once this many seconds have gone by, what is not sent staying in the"
        " outbox (default %(default)g)",
    )
    p.set_defaults(handler=_sync_now)

    p = sync_sub.add_parser(
        "install", parents=[common], help="install the enrolment bundle from `tillpoint hub enroll`"
    )
    p.add_argument("bundle", help="bundle file")
    p.set_defaults(handler=_sync_install)

    p = sync_sub.add_parser(
        "receipts",
        parents=[common],
        help="ask the hub which of this till's transactions it has stored (ListTransactions)",
    )
    p.add_argument(
        "--since", type=int, default=0, metavar="SEQ", help="only seq above SEQ (default 0)"
    )
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    p.set_defaults(handler=_sync_receipts)


def _needs_action(parser: argparse.ArgumentParser, actions: str) -> Handler:
    def handler(settings: Settings, args: argparse.Namespace) -> int:
        raise InputError(f"{parser.prog} needs an action: {actions}")

    return handler


def _hub_dir(settings: Settings, args: argparse.Namespace) -> Path:
    if args.hub_dir is not None:
        return Path(args.hub_dir)
    env = os.environ.get("TILLPOINT_HUB_DIR")
    return Path(env) if env else settings.data_dir / "hub"


def _hub(settings: Settings, args: argparse.Namespace) -> HubDir:
    """The hub's directory with the store that --store or $TILLPOINT_HUB_STORE names."""
    from .hub_server import HubDir

    hub = HubDir(_hub_dir(settings, args), args.store)  # None: $TILLPOINT_HUB_STORE
    places = [("the hub's directory", hub.root, "--hub-dir or TILLPOINT_HUB_DIR names it")]
    if not hub.on_postgres:
        places.append(("the hub's store", hub.sqlite_path, "--store or TILLPOINT_HUB_STORE"))
    for what, path, named in places:
        try:
            os.fsdecode(os.fsencode(path)).encode("utf-8")
        except UnicodeError:
            # a script's other bytes (Latin-1): SQLite keeps a file's name as UTF-8 text,
            # and `hub init` made keys and half a hub.db there, then said "cannot migrate
            # the database schema: Could not decode to UTF-8 column 'file'", exit 1
            # (review 40, rev40c); the data directory's rule (`check_data_dir`)
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise InputError(
                f"{what} {shown} has a name that is not UTF-8 text: name it in UTF-8 ({named})"
            ) from None
    return hub


def _existing_hub(settings: Settings, args: argparse.Namespace) -> HubDir:
    """The hub of --hub-dir, refused (exit 2) unless one was made there: only `hub init`
    and `hub import` make a hub."""
    return _hub(settings, args).require()


def _emit(args: argparse.Namespace, data: dict[str, Any], human: Callable[[Any], str]) -> int:
    from tillpoint.agent.cli import emit

    return emit(args, data, human)


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- hub commands


# A name a server certificate can carry as a DNSName (`sync/pki.py`): ASCII letters,
# digits, '.', '-' and '_', a "*." first if any (a name in another script in its xn-- form).
_CERT_HOST = re.compile(r"(?:\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def _cert_hosts(hosts: list[str]) -> None:
    """`hub init --host`: each an IP address or a host name a certificate can name, checked
    before anything is made. "хаб.local" (or a name in a script's other bytes) was
    "internal error: ValueError: DNSName values should be passed as an A-label string",
    exit 1; "a hub" or "" went into the certificate, where no till could ever match it
    (review 37, rev37d)."""
    import ipaddress

    for host in hosts:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            continue
        if not host.strip():
            raise InputError("hub init: --host must not be empty")
        inner = host.removeprefix("[").removesuffix("]")
        if inner != host:
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(inner)  # as a listen writes it: the address is fine
                raise InputError(
                    f"hub init: --host {host!r}: write the address without brackets"
                    f" (--host {inner})"
                )
        if not _CERT_HOST.fullmatch(host):
            written = ""
            with contextlib.suppress(UnicodeError):  # a name in another script: its xn-- form
                written = host.encode("idna").decode("ascii")
            hint = f": write it as {written}" if _CERT_HOST.fullmatch(written) else ""
            raise InputError(
                f"hub init: --host {host!r} is not a host name or an IP address a"
                f" certificate can name (ASCII letters, digits, '.', '-', '_'){hint}"
            )


def _hub_init(settings: Settings, args: argparse.Namespace) -> int:
    _cert_hosts(args.host)
    hub = _hub(settings, args)
    if args.renew_server:
        if not hub.keys.exists():
            raise InputError(f"no hub keys in {hub.keys.root}: run 'tillpoint hub init' first")
        expires = hub.keys.renew_server(args.host)
        renewed = {
            "hubDir": str(hub.root),
            "serverCertificate": str(hub.keys.server_cert),
            "serverCertificateExpiresAt": expires.isoformat(),
        }
        return _emit(
            args,
            renewed,
            lambda d: (
                f"new server certificate {d['serverCertificate']}, valid until"
                f" {d['serverCertificateExpiresAt']}: restart 'tillpoint hub serve'"
                " (copy server.key and server.pem to every hub server)"
            ),
        )
    # another program's database (or a later release's) refused before any key is made:
    # `keys/` was left beside the refused store (review 38, rev38c). A new SQLite file
    # is made once the keys are (a `hub.db` alone is a hub: `HubDir.exists`).
    store_first = hub.on_postgres or hub.sqlite_path.exists()
    if store_first:
        hub.open_store(migrate=True).close()
    made = hub.init(args.host)
    if not store_first:
        hub.open_store(migrate=True).close()
    data = {"hubDir": str(hub.root), "created": made, "caCertificate": str(hub.keys.ca_cert)}
    return _emit(
        args,
        data,
        lambda d: (
            f"hub keys made in {d['hubDir']}"
            if d["created"]
            else f"hub keys already exist in {d['hubDir']} (unchanged)"
        ),
    )


def _hub_migrate(settings: Settings, args: argparse.Namespace) -> int:
    hub = _hub(settings, args)
    if not hub.on_postgres:
        hub.require().open_store().close()  # a SQLite file migrates itself when opened
        data: dict[str, Any] = {"store": "sqlite", "applied": [], "schemaVersion": None}
    else:
        from .hub_postgres import SCHEMA_VERSION, migrate

        data = {"store": "postgresql", "applied": migrate(hub.store_url)}
        data["schemaVersion"] = SCHEMA_VERSION

    def human(d: dict[str, Any]) -> str:
        if d["store"] == "sqlite":
            return "the SQLite store is up to date (it migrates itself when opened)"
        if not d["applied"]:
            return f"the schema is up to date (version {d['schemaVersion']})"
        steps = ", ".join(str(n) for n in d["applied"])
        return f"applied migration(s) {steps}; schema version {d['schemaVersion']}"

    return _emit(args, data, human)


def _hub_serve(settings: Settings, args: argparse.Namespace) -> int:
    from tillpoint.agent import logs, systemd
    from tillpoint.agent.app import limit_malloc_arenas
    from tillpoint.agent.config import split_listen

    from .hub_import import remove_stale_spools
    from .hub_server import HubConfig, HubServer

    hub = _existing_hub(settings, args)  # refused before anything is set up
    # ":PORT" is any address (IPv4), as the default 0.0.0.0:50070: grpcio refuses an
    # empty host ("host must not be empty"), and the bind probe could not read it either
    if args.listen.startswith(":"):
        args.listen = f"0.0.0.0{args.listen}"
    try:  # a port past 65535 grpc took modulo 65536
        split_listen(args.listen)
    except ValueError as exc:
        raise InputError(f"--listen {exc}") from None
    _ttl_hours(args.ttl_hours)
    _in_range("--hold-ttl", args.hold_ttl, 0, HOLD_TTL_MAX_S, above=True)
    _in_range("--heartbeat", args.heartbeat, 0, HEARTBEAT_MAX_S, above=True)
    _in_range("--publish-every", args.publish_every, 0, PUBLISH_EVERY_MAX_S)
    _in_range("--keep-deltas-days", args.keep_deltas_days, 0, KEEP_DELTAS_MAX_DAYS)
    _in_range("--workers", args.workers, 1, WORKERS_MAX)
    _in_range("--rate-kib", args.rate_kib, 0, 2**40)
    # glibc's arenas as `run` keeps them, before the server starts its threads: with one
    # for each gRPC worker (16) a hub's free heap grew 3.8 -> 39.4 MB in 13 minutes of
    # leakday, with two it stayed 7-11 MB (review 47, hub47); MALLOC_ARENA_MAX wins
    limit_malloc_arenas()
    logs.setup(settings.log.level, settings.log.format)
    remove_stale_spools(hub.root)  # what an import killed by SIGKILL left (review 33)
    try:
        config = HubConfig(
            chunk_size=args.chunk_kib * 1024,
            heartbeat_s=args.heartbeat,
            hold_ttl_s=args.hold_ttl,
            snapshot_ttl_s=args.ttl_hours * 3600,
            publish_every_s=args.publish_every,
            delta_retention_s=args.keep_deltas_days * 86400,
            max_workers=args.workers,
            rate_limit_bytes_s=args.rate_kib * 1024,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.port_file is not None:
        # A file a hub killed before (SIGKILL, power loss) left names its dead port: gone
        # before this one binds, so that a script waiting for the file reads this hub's.
        # A name the system refuses (longer than its file system takes: "internal error:
        # OSError: [Errno 36] File name too long", exit 1, review 59, mut59b) is said
        # before the hub starts, as the file's write is
        try:
            args.port_file.unlink()
        except (FileNotFoundError, IsADirectoryError):
            pass
        except OSError as exc:
            from tillpoint.agent.db import write_refused

            raise write_refused(args.port_file, exc, f"--port-file {args.port_file}") from None
    # SIGTERM is a graceful stop from before the port file says the hub serves: a script
    # that stopped the hub as soon as it read the file ended it at once (exit -15, the
    # file left) when the signal came before the handlers (review 34)
    done = threading.Event()
    systemd.on_signals(done.set, logging.getLogger("tillpoint.hub"))  # SIGHUP: ignored
    server = HubServer(hub, config)  # its store too: --store or $TILLPOINT_HUB_STORE
    port = server.start(args.listen)
    if args.port_file is not None:
        from tillpoint.agent.db import write_refused
        from tillpoint.agent.files import write_whole

        try:
            write_whole(args.port_file, f"{port}\n".encode())
        except OSError as exc:
            # its folder missing, a folder, a full disk: "internal error: FileNotFoundError:
            # … hub.port.tmp", exit 1, named the temporary file (review 40, rev40e); a
            # script waiting for the file would never learn the port, so the hub stops
            server.stop(grace=0)
            raise write_refused(args.port_file, exc, f"--port-file {args.port_file}") from None
    logging.getLogger("tillpoint.hub").info(
        "hub %s listening on %s (port %d)", server.dir.root, args.listen, port
    )
    systemd.wait_for_stop(done)  # a SIGTERM taken by any thread ends it
    server.stop(grace=5)
    if args.port_file is not None:  # no port once stopped (unless another hub wrote it)
        with contextlib.suppress(OSError):
            if args.port_file.read_text(encoding="ascii").strip() == str(port):
                args.port_file.unlink()
    return EXIT_OK


def _hub_import(settings: Settings, args: argparse.Namespace) -> int:
    from tillpoint.agent.cli import standard_input

    from .hub_import import read_file, read_stdin, remove_stale_spools
    from .progress import ProgressBar

    ttl_s = _ttl_hours(args.ttl_hours) * 3600 if args.publish else 0.0  # before importing
    hub = _hub(settings, args)
    remove_stale_spools(hub.root)  # what an import killed by SIGKILL left (review 33)
    if hub.on_postgres:
        hub.init()  # the database is shared: the keys make the hub here (as hub.db does)
    stdin = standard_input() if str(args.file) == "-" else None  # closed: exit 2 first
    with closing(hub.open_store(migrate=True)) as store:
        bar = ProgressBar(f"importing {'standard input' if stdin else args.file.name}")
        try:
            if stdin is not None:
                with read_stdin(stdin, hub.root, args.format, bar) as rows:
                    report = store.import_rows(rows)
            else:
                report = store.import_rows(read_file(args.file, args.format, bar))
        finally:
            bar.close()
        data: dict[str, Any] = {
            "rows": report.rows,
            "byKind": dict(report.by_kind),
            "removed": report.removed,
            "draftRows": store.draft_size(),
        }
        if args.publish:
            pub = store.publish(_now(), ttl_s)
            data["publishedVersion"] = pub.version

    def human(d: dict[str, Any]) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(d["byKind"].items())) or "no rows"
        out = f"imported {kinds}; {d['removed']} removal(s); {d['draftRows']} row(s) to publish"
        if "publishedVersion" in d:
            out += f"; published version {d['publishedVersion']}"
        return out

    return _emit(args, data, human)


# The ranges of the hub's numeric options: NaN, inf or 1e300 hours were "internal error"
# (exit 1), a heartbeat of 0, a negative publish interval or a NaN hold time were taken.
TTL_HOURS_MAX = 10 * 8766.0  # ten years: expiresAt stays a date every till reads
HOLD_TTL_MAX_S = 86400.0  # a day, as a till's hold_ttl_seconds
HEARTBEAT_MAX_S = 3600.0
PUBLISH_EVERY_MAX_S = 7 * 86400.0
KEEP_DELTAS_MAX_DAYS = 36_600.0  # a hundred years, as the program's durations (§3)
WORKERS_MAX = 10_000
VERSION_MAX = 2**31 - 1  # a snapshot version: the stores' INTEGER column


def _in_range(flag: str, value: float, low: float, high: float, *, above: bool = False) -> float:
    """`value` of option `flag` if it is a finite number in [low, high] ((low, high] with
    `above`); else InputError (exit 2, one line)."""
    if not math.isfinite(value) or value > high or value < low or (above and value == low):
        lowest = f"above {_bound(low)}" if above else f"at least {_bound(low)}"
        raise InputError(
            f"{flag} must be a number {lowest} and at most {_bound(high)} (got {value})"
        )
    return value


def _bound(x: float) -> str:
    """A range's end as written: a whole number in full ("at most 2147483647" of
    --min-version, "1099511627776" of --rate-kib: %g said 2.14748e+09, which is no number a
    user can give, review 59, mut59b), else as %g."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _ttl_hours(value: float) -> float:
    return _in_range("--ttl-hours", value, 0, TTL_HOURS_MAX, above=True)


def _hub_publish(settings: Settings, args: argparse.Namespace) -> int:
    ttl_hours = _ttl_hours(args.ttl_hours)
    _in_range("--min-version", args.min_version, 0, VERSION_MAX)
    with closing(_existing_hub(settings, args).open_store()) as store:
        pub = store.publish(_now(), ttl_hours * 3600, min_version=args.min_version)
    data = {
        "version": pub.version,
        "issuedAt": pub.issued_at.isoformat(),
        "expiresAt": pub.expires_at.isoformat(),
        "changedRows": pub.changed_rows,
    }
    return _emit(
        args,
        data,
        lambda d: (
            f"published version {d['version']} ({d['changedRows']} changed rows),"
            f" valid until {d['expiresAt']}"
        ),
    )


def _check_out(path: Path) -> None:
    """An `--out` is a file, written whole (a bundle is written beside it and renamed over
    it): not a folder, a pipe or a device, which the rename replaced with a regular file
    (as root, `--out /dev/null` replaced the machine's /dev/null). A path the system cannot
    even look at (a name longer than its file system takes, a parent it may not search) is
    said so: `exists()` raised it, "internal error: OSError: [Errno 36] File name too long",
    exit 1 (review 59, mut59b)."""
    try:
        if path.exists() and not path.is_file():
            raise InputError(
                f"--out {path}: not a regular file (a folder, a pipe or a device):"
                " give a file's path"
            )
        if not path.parent.is_dir() and path.parent.exists():
            raise InputError(f"--out {path}: {path.parent} is not a folder")
    except OSError as exc:
        raise InputError(f"--out {path}: {exc.strerror or exc}") from None


def _check_hub_address(address: str) -> None:
    """The address a bundle gives its till, checked as the till's `hub.address` is
    (`config.hub_address_problem`): the device was enrolled already when the till found
    it could not dial it (a retry needed --renew)."""
    from tillpoint.agent.config import hub_address_problem

    problem = hub_address_problem(address)
    if problem:
        raise InputError(f"--address {problem}")


def _hub_enroll(settings: Settings, args: argparse.Namespace) -> int:
    from . import pki

    if args.address:
        _check_hub_address(args.address)
    if args.out is not None:
        _check_out(args.out)
    hub = _existing_hub(settings, args)
    hub.init()
    identity = pki.issue_device(hub.keys, args.device)
    bundle = pki.make_bundle(hub.keys, identity, args.address)  # its keys checked first
    out = args.out or hub.root / "bundles" / f"{args.device}.json"
    # enrolled first: a refused device id gets no bundle
    with closing(hub.open_store()) as store:
        known = store.device(identity.device_id)
        if known is not None and not args.renew:
            # a mistyped id would cut a live till off (its certificate replaced) and hand
            # its numbering to another machine
            state = "revoked" if known.revoked_at else "enrolled"
            raise InputError(
                f"device {identity.device_id} is already {state} (since"
                f" {known.revoked_at or known.enrolled_at}): add --renew to issue it a new"
                " certificate (the old one stops working at once)"
            )
        if known is None and args.renew:
            # a mistyped id enrolled a device nobody runs, and the till meant kept its
            # old certificate
            raise InputError(
                f"device {identity.device_id} is not enrolled, so there is nothing to renew:"
                " check the id ('tillpoint hub status' lists the devices), or enroll it"
                " without --renew"
            )
        store.enroll(identity.device_id, identity.fingerprint, _now())
    try:
        pki.write_bundle(out, bundle)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise _unwritten(
            out,
            exc,
            f"device {identity.device_id} is enrolled, but its bundle could not be written to"
            f" {out}",
            f"; issue it again with 'tillpoint hub enroll {identity.device_id} --renew --out FILE'",
        ) from None
    data = {
        "deviceId": identity.device_id,
        "bundle": str(out),
        "fingerprint": identity.fingerprint,
        "certificateExpiresAt": identity.not_after.isoformat(),
        "hubAddress": args.address,
    }
    return _emit(
        args,
        data,
        lambda d: (
            f"device {d['deviceId']} enrolled; bundle {d['bundle']} (secret: copy it to the till"
            f" and run `tillpoint sync install {Path(d['bundle']).name}`)"
        ),
    )


def _hub_revoke(settings: Settings, args: argparse.Namespace) -> int:

    with closing(_existing_hub(settings, args).open_store()) as store:
        if store.device(args.device) is None:
            raise InputError(f"device {args.device} is not enrolled")
        changed = store.revoke(args.device, _now())
    return _emit(
        args,
        {"deviceId": args.device, "revoked": True, "changed": changed},
        lambda d: f"device {d['deviceId']} is revoked",
    )


def _unwritten(path: Path, exc: OSError, what: str, then: str = "") -> TillpointError:
    """`db.write_refused` (an `--out` file: exit 1 when the machine refused it, 2 when
    the path or its mode did)."""
    from tillpoint.agent.db import write_refused

    return write_refused(path, exc, what, then)


def _hub_export(settings: Settings, args: argparse.Namespace) -> int:
    from .hub_server import SnapshotBuilder
    from .signing import write_signed_file

    if args.out is not None:
        _check_out(args.out)
    hub = _existing_hub(settings, args)
    with closing(hub.open_store()) as store:
        known = store.device(args.device)
        if known is None:
            raise InputError(f"device {args.device} is not enrolled: `tillpoint hub enroll` first")
        if known.revoked_at is not None:
            # the hub refuses a revoked till the snapshot (PERMISSION_DENIED); until review
            # 59 (mut59d) `hub export` handed it the same file by hand, customers and all
            raise InputError(
                f"device {args.device} is revoked (since {known.revoked_at}): the hub serves"
                f" it nothing; `tillpoint hub enroll {args.device} --renew` to enrol it again"
            )
        latest = store.latest()
        if latest is None:
            raise InputError("nothing is published yet: `tillpoint hub publish` first")
        # The same file the hub serves to every till (built once per version).
        bundle = SnapshotBuilder(store, hub.keys.signing_key(), hub.snapshots).bundle(
            latest.version, 0
        )
    if args.out is None:
        from tillpoint.agent.cli import Stdout

        write_signed_file(Stdout(), bundle)
        return EXIT_OK
    from tillpoint.agent.files import replacing

    try:  # written whole: a failed export leaves the file it was to replace as it was
        with replacing(args.out, encoding="utf-8") as out:
            write_signed_file(out, bundle)
        # the file's size, what `ls -l` and a copy's check read: it was the signed
        # payload's (`bundle.size`), which the file wraps with its format and signature
        size = args.out.stat().st_size
    except OSError as exc:
        raise _unwritten(args.out, exc, f"cannot write {args.out}") from None
    return _emit(
        args,
        {
            "deviceId": args.device,
            "version": bundle.version,
            "file": str(args.out),
            "bytes": size,
        },
        lambda d: (
            f"signed snapshot {d['version']} for {d['deviceId']} in {d['file']}"
            f" ({d['bytes']} bytes)"
        ),
    )


def _hub_status(settings: Settings, args: argparse.Namespace) -> int:
    """What an operator checks first (the contract §13: a code two tills used offline is a
    conflict "shown in its status"): the published version, what the draft holds, each
    device's acknowledged transactions, and how many conflicts and set-aside transactions
    wait for review (`hub coupon-conflicts`, `hub set-aside` list them)."""
    from . import pki

    hub = _existing_hub(settings, args)
    with closing(hub.open_store()) as store:
        latest = store.latest()
        records = store.devices()
        uploads = store.last_uploads([d.device_id for d in records])
        devices: list[dict[str, Any]] = [
            {
                "deviceId": d.device_id,
                "enrolledAt": d.enrolled_at,
                "revokedAt": d.revoked_at,
                "ackedThroughSeq": store.applied_through(d.device_id),
                # None for a revoked device: no certificate of it works any more
                "certificateExpiresAt": (
                    None
                    if d.revoked_at
                    else pki.certificate_time(_enrolled_until(d.enrolled_at)) or None
                ),
                "lastUploadAt": _upload_time(uploads.get(d.device_id)),
            }
            for d in records
        ]
        holds, held_points = store.holds_outstanding(_now())
        aside = store.set_aside_transactions()
        data = {
            "version": latest.version if latest else 0,
            "issuedAt": latest.issued_at.isoformat() if latest else "",
            "draftRows": store.draft_size(),
            "devices": devices,
            "holdsOutstanding": {"holds": holds, "points": held_points},
            "couponConflicts": len(store.coupon_conflicts()),
            "setAside": len(aside),
            # of them, seqs taken whose sale the till numbered again and the hub stored
            # (review 32): resolved, still listed (two tills may share a device id)
            "setAsideResolved": sum(1 for r in aside if r["resolved"]),
            "serverCertificateExpiresAt": pki.certificate_time(hub.keys.server_not_after()),
        }
    now = _now()

    def ends(x: dict[str, Any]) -> str:
        """ ", certificate expires …" with the renewal from 30 days before, or EXPIRED."""
        if not x["certificateExpiresAt"]:
            return ""
        note = pki.expiry_note(
            datetime.fromisoformat(x["certificateExpiresAt"]),
            now,
            "",
            f"renew: 'tillpoint hub enroll {x['deviceId']} --renew --address HOST:PORT'",
        )
        if note is None:
            return f", certificate expires {x['certificateExpiresAt']}"
        return ", " + note[1].strip().replace("certificate expired", "certificate EXPIRED")

    def human(d: dict[str, Any]) -> str:
        server = d["serverCertificateExpiresAt"]
        lines = [
            f"snapshot version {d['version']}"
            + (f" issued {d['issuedAt']}" if d["issuedAt"] else " (nothing published yet)")
            + f", {d['draftRows']} row(s) waiting to be published",
            *(
                f"{x['deviceId']}: transactions through seq {x['ackedThroughSeq']}"
                + (f", last upload {x['lastUploadAt']}" if x["lastUploadAt"] else ", no upload yet")
                + (f", revoked {x['revokedAt']}" if x["revokedAt"] else ends(x))
                for x in d["devices"]
            ),
            f"{d['holdsOutstanding']['holds']} redemption hold(s) outstanding"
            f" ({d['holdsOutstanding']['points']} points)",
            f"{d['couponConflicts']} coupon conflict(s) (hub coupon-conflicts),"
            f" {d['setAside']} set-aside transaction(s)"
            + (
                f", {d['setAsideResolved']} of them resolved (numbered again by their till"
                " and stored: two tills may share a device id)"
                if d["setAsideResolved"]
                else ""
            )
            + " (hub set-aside)",
        ]
        if server:
            lines.append(f"the hub's server certificate expires {server}")
        return "\n".join(lines)

    return _emit(args, data, human)


def _upload_time(text: str | None) -> str | None:
    """A store's UTC time text as RFC 3339 with a "Z" (None: no upload)."""
    from . import pki

    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return pki.certificate_time(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _enrolled_until(enrolled_at: str) -> datetime | None:
    """When the certificate of a device enrolled at `enrolled_at` ends. The hub keeps no
    copy of a device's certificate (the bundle is the till's secret), only its fingerprint
    and the moment `hub enroll` issued it: every certificate it issues (in every release so
    far) lasts `CERT_DAYS` from that moment, to the second."""
    from .pki import CERT_DAYS

    try:
        moment = datetime.fromisoformat(enrolled_at)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.replace(microsecond=0) + timedelta(days=CERT_DAYS)


def _hub_coupon_conflicts(settings: Settings, args: argparse.Namespace) -> int:
    with closing(_existing_hub(settings, args).open_store()) as store:
        conflicts = store.coupon_conflicts()
    return _emit_rows(
        args,
        "conflicts",
        conflicts,
        "no coupon code was used twice",
        lambda c: (
            f"{c['code']}: used by {c['firstDeviceId']} ({c['firstReceiptId']}) and again by"
            f" {c['deviceId']} ({c['receiptId']}) at {c['at']}"
        ),
    )


def _hub_set_aside(settings: Settings, args: argparse.Namespace) -> int:
    with closing(_existing_hub(settings, args).open_store()) as store:
        rows = store.set_aside_transactions(args.device)
    return _emit_rows(
        args,
        "setAside",
        rows,
        "nothing was set aside",
        lambda r: (
            f"{r['deviceId']} seq {r['seq']}: {r['outcome']} {r['reason']} ({r['receivedAt']})"
            + (
                " — resolved: numbered again by the till, stored as seq"
                f" {r['storedAsSeq']} ({r['resolvedAt']})"
                if r["resolved"]
                else ""
            )
        ),
    )


def _emit_rows(
    args: argparse.Namespace,
    key: str,
    rows: list[dict[str, Any]],
    none: str,
    line: Callable[[dict[str, Any]], str],
) -> int:
    """A list for review: `{key: rows}` with --json, else a line a row (`none` if empty)."""
    return _emit(
        args, {key: rows}, lambda d: "\n".join(line(r) for r in d[key]) if d[key] else none
    )


def _hub_balance(settings: Settings, args: argparse.Namespace) -> int:
    from tillpoint.agent.cli import parse_time

    at = parse_time(args.at) if args.at else _now()
    with closing(_existing_hub(settings, args).open_store()) as store:
        balance = store.balance(args.customer, at)
    data = {
        "customerId": args.customer,
        "availablePoints": balance.available,
        "pendingPoints": balance.pending,
        "heldPoints": balance.held,
    }
    return _emit(
        args,
        data,
        lambda d: (
            f"{d['customerId']}: {d['availablePoints']} pts available,"
            f" {d['pendingPoints']} pending, {d['heldPoints']} held for redemptions in progress"
        ),
    )


def _seq_and_limit(args: argparse.Namespace) -> None:
    """`hub receipts` and `sync receipts`: --since and --limit in [0, 2^63 - 1]. One past it
    was "internal error: OverflowError: Python int too large to convert to SQLite INTEGER"
    (`hub receipts`) or "internal error: ValueError: Value out of range" (`sync receipts`),
    exit 1, a script told to try again (review 59, mut59b)."""
    for flag, value in (("--since", args.since), ("--limit", args.limit)):
        if not 0 <= value <= INT64_MAX:
            raise InputError(f"{flag} must be 0 or more and at most {INT64_MAX} (got {value})")


def _hub_receipts(settings: Settings, args: argparse.Namespace) -> int:
    from .hub_server import list_transactions

    _seq_and_limit(args)
    with closing(_existing_hub(settings, args).open_store()) as store:
        reply = list_transactions(store, args.device, args.since, args.limit, args.receipt)
        enrolled = store.device(args.device) is not None
    if not enrolled and not reply.transactions:
        raise InputError(f"device {args.device} is not enrolled at this hub")
    return _print_transactions(args, reply, args.device)


def _print_transactions(args: argparse.Namespace, reply: Any, device: str) -> int:
    """A ListTransactionsReply: its proto3 JSON (`agent/proto_json`: every field, int64 as
    numbers) with --json, else a line per transaction and a summary."""
    from tillpoint.agent.cli import write_out
    from tillpoint.agent.proto_json import message_json
    from tillpoint.v1 import tillpoint_pb2 as pb

    if args.json:  # ListTransactionsReply in the CLI's one proto3 JSON mapping
        write_out(json.dumps(message_json(reply), ensure_ascii=False) + "\n")
        return EXIT_OK
    lines = [
        f"seq {t.seq}: {pb.TransactionKind.Name(t.kind)} {t.refund_id or t.receipt_id}"
        + (f" of {t.receipt_id}" if t.refund_id else "")
        + f" at {t.at}, {t.customer_id or 'card ' + t.card}:"
        f" {t.points_delta_available:+d} available, {t.points_delta_pending:+d} pending"
        + (f", fiscal document {t.fiscal_document}" if t.fiscal_document else "")
        for t in reply.transactions
    ]
    more = " (more: --since the last seq)" if reply.more else ""
    lines.append(
        f"{len(reply.transactions)} transaction(s) of {device} stored{more};"
        f" all stored through seq {reply.acked_through_seq}"
    )
    write_out("\n".join(lines) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------- sync commands


def _sync_install(settings: Settings, args: argparse.Namespace) -> int:
    from tillpoint.agent.cli import read_json
    from tillpoint.agent.db import write_transaction
    from tillpoint.agent.errors import Refused
    from tillpoint.agent.ledger import (
        forget_acknowledged,
        ledger_path,
        open_ledger,
        outbox_depth,
    )

    from .pki import certificate_time, install_bundle, is_enrolled, load_enrollment

    bundle = read_json(args.bundle)
    _refuse_another_devices_ledger(settings)
    another = is_enrolled(settings.data_dir) and not _same_hub_and_device(
        load_enrollment(settings.data_dir), bundle
    )
    if another:
        conn = open_ledger(settings.data_dir)
        try:
            depth = outbox_depth(conn)
        finally:
            conn.close()
        if depth:
            raise Refused(
                f"{depth} transaction(s) have not reached the current hub yet: re-enrolment"
                " with another hub or as another device refused (let `tillpoint sync now`"
                " drain the outbox first)"
            )
    enrollment = install_bundle(settings.data_dir, bundle, settings.device_id)
    if another and ledger_path(settings.data_dir).exists():
        # the previous hub's acknowledgements are not this hub's (`forget_acknowledged`)
        conn = open_ledger(settings.data_dir)
        try:
            with write_transaction(conn, "ledger") as tx:
                forget_acknowledged(tx)
        finally:
            conn.close()
    running = _agent_running(settings)
    data = {
        "deviceId": enrollment.device_id,
        "hubAddress": enrollment.hub_address,
        "enrolled": True,
        "certificateExpiresAt": certificate_time(enrollment.certificate_expires_at()),
        "restartNeeded": bool(running),
    }
    return _emit(
        args,
        data,
        lambda d: (
            f"enrolled as {d['deviceId']} with hub {d['hubAddress'] or '(set hub.address)'};"
            " this till now accepts only snapshots signed by its hub"
            + (
                f"; {running}: restart it (systemctl restart tillpoint), it keeps"
                " the enrolment it started with until then"
                if d["restartNeeded"]
                else ""
            )
        ),
    )


def _refuse_another_devices_ledger(settings: Settings) -> None:
    """A bundle installed under a `device_id` whose ledger journals another device's sales
    left the till enrolled as the new id and refusing every command under either id (the
    ledger's guard under the new one, the enrolment's under the old one), with no
    command to undo it. It is refused before anything is written, as `run` would refuse
    that id."""
    from tillpoint.agent.errors import InputError
    from tillpoint.agent.ledger import ledger_path, open_ledger, other_device

    if not ledger_path(settings.data_dir).exists():
        return
    conn = open_ledger(settings.data_dir)
    try:
        other = other_device(conn, settings.device_id)
    finally:
        conn.close()
    if other is not None:
        raise InputError(
            f"the ledger of {settings.data_dir} holds the sales of device {other!r}, none of"
            f" {settings.device_id!r}: install a bundle for {other!r} (`tillpoint hub enroll"
            f" {other}`), or give {settings.device_id!r} a data directory of its own"
        )


def _agent_running(settings: Settings) -> str:
    """ "another tillpoint (pid N) is running on DIR" while `tillpoint run` holds the data
    directory (it read its enrolment when it started), else ""."""
    from tillpoint.agent.lock import DataDirLock

    # Asked, not taken: a `run` starting at this moment would find the lock taken and
    # exit 2 ("another tillpoint is running"), which its unit does not restart.
    pid = DataDirLock(settings.data_dir).holder()
    return f"another tillpoint (pid {pid}) is running on {settings.data_dir}" if pid else ""


def _same_hub_and_device(current: Any, bundle: Any) -> bool:
    """A new bundle of the hub this till is enrolled with (its CA), for the same device:
    a certificate renewed, or issued again after a revocation. The outbox belongs to the
    device, not to its certificate: it drains to the same hub with the new one (and could
    not with a revoked one)."""
    if current is None or not isinstance(bundle, dict):
        return False
    from .pki import ca_identity

    try:
        ca = current.ca_cert.read_bytes()
    except OSError:
        return False
    theirs = bundle.get("caCertificate")
    # the same CA however its PEM is written (`ca_identity`): line endings are no new hub
    return bool(
        bundle.get("deviceId") == current.device_id
        and isinstance(theirs, str)
        and ca_identity(theirs.encode()) == ca_identity(ca)
    )


def _sync_now(settings: Settings, args: argparse.Namespace) -> int:
    from tillpoint.agent.db import writes_until

    limit = _in_range("--timeout", args.timeout, 0, SYNC_NOW_TIMEOUT_MAX_S, above=True)
    # a negative or NaN wait was taken as none, a mistyped `--wait -30` silently
    # (review 59, mut59b); --timeout bounds it anyway
    _in_range("--wait", args.wait, 0, SYNC_NOW_TIMEOUT_MAX_S)
    deadline = time.monotonic() + limit
    # its ledger writes too wait for another writer no later than the deadline (they
    # waited SQLite's 5 s busy timeout beside one: review 38, rev38b)
    with writes_until(deadline):
        return _sync_now_by(settings, args, limit, deadline)


def _ledger_problem(exc: BaseException) -> str:
    """What a ledger write that failed says, without the words of its wrapping: "database
    is locked" (another process writing it), "database or disk is full"."""
    from tillpoint.agent.errors import StorageError

    text = exc.message if isinstance(exc, StorageError) else str(exc)
    return one_line(text.rsplit(": ", 1)[-1])


def _sync_now_by(
    settings: Settings, args: argparse.Namespace, limit: float, deadline: float
) -> int:
    import sqlite3

    import grpc
    from tillpoint.agent.app import cli_agent, sync_link
    from tillpoint.agent.db import storage_error
    from tillpoint.agent.errors import StorageError

    from . import state
    from .progress import ProgressBar
    from .pull import FIRST_CHUNK_S, Puller, PullInterrupted
    from .push import OutOfTime, Pusher, timed_out

    def left() -> float:
        return deadline - time.monotonic()

    def gave_up(what: str) -> HubUnavailable:
        """The one line of a command that reached its deadline. A call cut by it says
        nothing of the hub (as an owed release cut so, rev36c): the till is recorded ONLINE
        when the hub answered this command, else left as last recorded. Until review 37
        each cut recorded it OFFLINE, `status` saying so until the next contact, though the
        hub had answered the mark, taken the push (review 37, rev37b)."""
        if link.last_contact is not None:
            # (not waiting: the deadline is reached; a busy ledger leaves it as it was)
            with contextlib.suppress(sqlite3.Error):
                state.put(
                    pusher.conn,
                    {"mode": "ONLINE", "last_contact_at": state.now_text(link.last_contact)},
                )
        # the releases and shrinks left owed too (review 37, left37), on the same line
        owed = ""
        with contextlib.suppress(Exception):  # a ledger read: never the error itself
            owed = _owed_text(agent.owed_hub_calls())
        return HubUnavailable(
            f"sync now gave up at its deadline of {limit:g} s (--timeout) {what}{owed}"
        )

    from .authoriser import HubAuthoriser

    enrollment, link, timings = sync_link(settings)  # `run`'s rules for the hub
    # the agent with the hub's authoriser on the same link: the releases of holds closed
    # while the hub was away are sent once it answers (the contract §11), as `run`'s hold
    # timer sends them
    authoriser = HubAuthoriser(
        link, settings.data_dir, settings.device_id, timings.redeem_timeout_s
    )
    authoriser.deadline = deadline  # no release or shrink given longer than what is left
    try:
        agent = cli_agent(settings, hub=authoriser)
    except BaseException:
        authoriser.close()
        link.close()
        raise
    pusher = Pusher(
        settings.data_dir, settings.device_id, link, call_timeout_s=timings.call_timeout_s
    )
    pusher.deadline = deadline
    # what a ledger write after the pull could not do, and why
    unwritten: list[tuple[str, str]] = []
    try:
        bar = ProgressBar("pushing", unit="rows")
        try:
            pushed = pusher.drain(
                progress=bar, lock_wait_s=max(0.0, min(args.wait, left())), narrow_on_timeout=True
            )
        except OutOfTime as exc:
            raise gave_up(
                f"with the hub not taking the transactions in time (pushed {exc.sent});"
                f" {pusher.pending()} transaction(s) still in the outbox, sent by"
                " `tillpoint run` or the next `sync now`"
            ) from None
        finally:
            bar.close()
        puller = Puller(
            agent,
            link,
            enrollment,
            call_timeout_s=timings.call_timeout_s,
            max_bytes=timings.max_snapshot_bytes,
        )
        for attempt in range(3):
            if left() <= 0:
                raise gave_up(
                    f"before the snapshot was pulled (pushed {pushed}; nothing of the"
                    " snapshot is lost: the next pull resumes it)"
                )
            # no hub call outlives the deadline; the first chunk may come late (a full
            # snapshot being built), but not later than the deadline
            puller.call_timeout_s = min(timings.call_timeout_s, left())
            puller.stream_timeout_s = min(timings.stream_timeout_s, left())
            puller.first_chunk_timeout_s = min(FIRST_CHUNK_S, left())
            bar = ProgressBar("snapshot")
            try:
                result = puller.pull(progress=bar, lock_wait_s=max(0.0, min(args.wait, left())))
                break
            except PullInterrupted:
                if attempt == 2:
                    raise
            except grpc.RpcError as exc:
                if timed_out(exc) and left() <= 0:
                    raise gave_up(
                        f"while pulling the snapshot (pushed {pushed}; what arrived is"
                        " kept, and the next pull resumes it)"
                    ) from None
                raise
            finally:
                bar.close()
        if left() > 0:
            # what `run`'s hold timer does in each round: holds expired by now are closed
            # and released at the hub, and the releases the hub did not get while it was
            # away (a Cancel during an outage) are sent again; until review 35 only `run`
            # sent them, so a till driven by one-shot commands left the hub holding the
            # customer's points from every other till for `holdTtlSeconds` + 60 s. Within
            # --timeout: no call starts past it (those left stay owed for the next one)
            past_deadline = threading.Event()
            timer = threading.Timer(left(), past_deadline.set)
            timer.daemon = True
            timer.start()
            try:
                agent.sweep_holds(past_deadline)
                agent.retry_hub_releases(past_deadline)
            except (StorageError, sqlite3.Error) as exc:
                # the ledger busy (another process writing it past the deadline or the
                # busy timeout) or full: the push and the pull worked, and the answer says
                # so (it said only "the ledger is busy", exit 1: review 38, rev38b); the
                # round is the next `sync now`'s or `tillpoint run`'s, nothing is lost
                unwritten.append(
                    (
                        "the hold timer's round (expired holds closed, the releases and"
                        " shrinks owed to the hub sent) is left for `tillpoint run` or the"
                        " next `sync now`",
                        _ledger_problem(exc),
                    )
                )
            finally:
                timer.cancel()
        aside = list(pusher.set_aside)
        # what the hub has still to take, as `/metrics`'s `tillpoint_hub_calls_owed`
        # counts it (review 37: the releases --timeout left owed were named nowhere)
        owed = agent.owed_hub_calls()
        data = {
            "pushed": pushed - len(aside),
            "setAside": len(aside),
            "setAsideTransactions": state.sync_status(pusher.conn)["setAside"],
            "outboxDepth": pusher.pending(),
            "pull": {
                "status": result.status,
                "version": result.version,
                "baseVersion": result.base_version,
                "bytes": result.size,
                "resumedFrom": result.resumed_from,
                "message": result.message,
            },
            "hubCallsOwed": {call: len(ids) for call, ids in owed.items()},
            "owedReceiptIds": owed,
        }
        try:
            state.put(
                pusher.conn,
                {
                    "mode": "ONLINE" if link.online else "OFFLINE",
                    "last_contact_at": state.now_text(),
                },
            )
        except sqlite3.Error as exc:  # as the round's: `status` says what it said before
            unwritten.append(("the link's state is not recorded", _ledger_problem(exc)))
    except (StorageError, sqlite3.Error) as exc:
        if left() > 0 or "locked" not in _ledger_problem(exc):  # a full disk: its own line
            if isinstance(exc, sqlite3.Error):  # a raw write's (the pull's record): worded
                # as a storage error, with what explains it; it was "internal error:
                # OperationalError: …" (review 38, rev38f)
                raise storage_error(pusher.conn, "the ledger could not be written", exc) from None
            raise
        # another process held the ledger up to the deadline (review 38, rev38b)
        raise gave_up(
            f"with the ledger busy ({_ledger_problem(exc)}: another process is writing it);"
            f" {pusher.pending()} transaction(s) still in the outbox, sent by"
            " `tillpoint run` or the next `sync now`"
        ) from None
    except grpc.RpcError as exc:
        if timed_out(exc) and left() <= 0:
            # the first call (the hub's mark, before the push) given what was left of
            # --timeout: the operator's deadline, not a hub too slow (review 36)
            raise gave_up(
                f"before the hub answered (nothing pushed; {pusher.pending()} transaction(s)"
                " still in the outbox, sent by `tillpoint run` or the next `sync now`)"
            ) from None
        # the hub's line whatever the ledger says (one it may not write, or full: it was
        # "internal error: OperationalError: …", review 38, rev38f): `status` keeps the old
        with contextlib.suppress(sqlite3.Error):
            state.put(pusher.conn, {"mode": "OFFLINE"})
        raise HubUnavailable(link.describe(exc)) from None
    finally:
        pusher.close()
        agent.close()
        authoriser.close()
        link.close()

    def human(d: dict[str, Any]) -> str:
        pull = d["pull"]
        what = {
            "APPLIED": f"snapshot {pull['version']} applied ({pull['bytes']} bytes)",
            "UP_TO_DATE": f"snapshot {pull['version']} is the newest",
            "REFUSED": f"snapshot {pull['version']} REFUSED: {pull['message']}",
        }[pull["status"]]
        pushed = f"pushed {d['pushed']} transaction(s)"
        if d["setAside"]:
            pushed += f", {d['setAside']} SET ASIDE by the hub"
        return f"{pushed}, {d['outboxDepth']} waiting; {what}{_owed_text(d['owedReceiptIds'])}"

    code = _emit(args, data, human)
    if unwritten:  # a warning: what the command was for (the push, the pull) is done
        print(
            one_line(
                f"tillpoint: warning: the ledger could not be written ({unwritten[0][1]}):"
                f" {' and '.join(what for what, _ in unwritten)}"
            ),
            file=sys.stderr,
        )
    failed = False
    if aside:
        # Not stored by the hub: an error, whatever else worked (docs/PROTOCOL.md).
        shown = "; ".join(
            f"seq {seq} {outcome}" + (f" ({reason})" if reason else "")
            for seq, outcome, reason in aside[:3]
        )
        more = f"; and {len(aside) - 3} more" if len(aside) > 3 else ""
        print(
            one_line(
                f"tillpoint: the hub set aside {len(aside)} transaction(s) and did not store"
                f" them: {shown}{more}; they are kept in sync_set_aside in ledger.db"
            ),
            file=sys.stderr,
        )
        failed = True
    elif data["setAsideTransactions"]:
        print(
            f"tillpoint: warning: {data['setAsideTransactions']} transaction(s) set aside"
            " earlier are still unreviewed (see `tillpoint status`)",
            file=sys.stderr,
        )
    if result.status == "REFUSED":
        print(f"tillpoint: {one_line(result.message)}", file=sys.stderr)
        failed = True
    return EXIT_ERROR if failed else code


def _owed_text(owed: dict[str, list[str]]) -> str:
    """`sync now`'s words for the releases and shrinks the hub has still to take (nothing
    when none): at most three receiptIds of each named, then how many more."""

    def named(ids: list[str], what: str) -> str:
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        return f"{len(ids)} {what}(s) ({shown})"

    parts = [named(ids, call) for call, ids in owed.items() if ids]
    if not parts:
        return ""
    return (
        f"; {' and '.join(parts)} still owed to the hub, sent by `tillpoint run` or the"
        " next `sync now`"
    )


def _sync_receipts(settings: Settings, args: argparse.Namespace) -> int:
    """What the hub stored of this till, asked over mTLS page by page (1000 a call), each
    call with the sync's call timeout."""
    import grpc
    from tillpoint.agent.app import sync_link
    from tillpoint.v1 import tillpoint_pb2 as pb

    from .hub_server import MAX_LIST

    _seq_and_limit(args)
    enrollment, link, timings = sync_link(settings)  # `run`'s rules for the hub
    timeout = timings.call_timeout_s
    reply = pb.ListTransactionsReply()
    since = args.since
    try:
        while True:
            want = MAX_LIST
            if args.limit:
                want = min(MAX_LIST, args.limit - len(reply.transactions))
            page = link.stub.ListTransactions(
                pb.ListTransactionsRequest(
                    device_id=enrollment.device_id, since_seq=since, limit=want
                ),
                timeout=timeout,
            )
            reply.transactions.extend(page.transactions)
            reply.acked_through_seq = page.acked_through_seq
            reply.more = page.more
            if not page.more or not page.transactions:
                break
            if args.limit and len(reply.transactions) >= args.limit:
                break
            since = page.transactions[-1].seq
    except grpc.RpcError as exc:
        raise HubUnavailable(link.describe(exc)) from None
    finally:
        link.close()
    return _print_transactions(args, reply, enrollment.device_id)
