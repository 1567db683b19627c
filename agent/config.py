"""The agent's configuration: flags, TILLPOINT_* environment variables, one TOML file.

Precedence (highest first): command-line flags, environment (`TILLPOINT_DEVICE_ID`,
`TILLPOINT_DATA_DIR`, `TILLPOINT_HUB__ADDRESS`, ...), the TOML file, the defaults below.
`packaging/tillpoint.example.toml` documents every key.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import os
import re
import socket
import sys
import tomllib
from contextvars import ContextVar
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InputError
from .models import describe
from .paths import default_data_dir

if TYPE_CHECKING:
    from pydantic_settings import SettingsError


class HubSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = ""  # host:port of the hub; empty: a standalone till (always OFFLINE)
    redeem_timeout_ms: int = Field(300, gt=0, le=60_000)
    call_timeout_ms: int = Field(5000, gt=0, le=600_000)
    # finite and sane, 0.1 s to a day: `inf` never polled again, `1e-300` polled in a busy
    # loop, and both passed `config check` (review 38, rev38c); what the release before
    # took (any number past 0, inf too) is taken at the nearest bound, said (review 39)
    poll_interval_s: float = Field(60, gt=0)
    max_snapshot_mib: int = Field(8192, gt=0)  # a bigger snapshot from the hub is refused

    @field_validator("poll_interval_s")
    @classmethod
    def _not_a_busy_loop(cls, value: float) -> float:
        return _bounded_poll_interval(value)

    @field_validator("address")
    @classmethod
    def _utf8(cls, value: str) -> str:
        # a unit's environment in a script's other bytes (surrogate-escaped): it reached
        # the log line and gRPC's target and said "internal error", exit 1 (rev36f)
        from .limits import is_utf8_text

        if not is_utf8_text(value):
            raise ValueError(f"{value!r}: not UTF-8 text")
        problem = hub_address_problem(value, port_required=False) if value else None
        if problem:  # as `hub enroll --address` says it (review 37, rev37d)
            raise ValueError(problem)
        return value


POLL_INTERVAL_BOUNDS = (0.1, 86_400.0)


def _bounded_poll_interval(value: float) -> float:
    """`hub.poll_interval_s` within 0.1 s and a day. A value past them that the release
    before took (any number above 0, `inf` too; review 38's rev38c bounded it) is taken
    as the nearest bound and noted as a loose value (`loose_values`): `run` logs it as a
    WARNING, `config check` refuses it. Refused outright, a file of 0.05 s stopped `run`
    at the upgrade, exit 2, which the unit does not restart: a till that does not start
    is worse than one polling every 0.1 s (review 39, DECISIONS)."""
    low, high = POLL_INTERVAL_BOUNDS
    if low <= value <= high:
        return value
    taken = low if value < low else high
    rule = "0.1 or more (seconds between polls)" if value < low else "at most 86400 (a day)"
    where = env_source("hub", "poll_interval_s") or _env_table_source("hub", "poll_interval_s")
    path = _CONFIG_FILE.get()
    source = f" {path}" if path is not None and not where else ""
    loose = _LOOSE.get()
    if loose is not None:  # a load's (`Settings`): a model built alone is only bounded
        loose.append(
            f"config{source}: hub.poll_interval_s must be {rule}{where}; {_shown(value)} is"
            f" taken as {taken:g}"
        )
    return taken


def _shown(value: float) -> str:
    """A number as written when `:g`'s six digits would round it (86400.0000001 was said
    "86400 is taken as 86400", 0.0999999 "0.1 is taken as 0.1": review 40, rev40c)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _env_table_source(table: str, key: str) -> str:
    """ " (set by TILLPOINT_HUB)" when a table set whole in the environment as JSON holds
    `key` (`TILLPOINT_HUB={"poll_interval_s": 0.05}`): the line blamed the file, which
    did not hold it (review 39, rev39f)."""
    name = f"{_ENV_PREFIX}{table}".upper()
    for variable, text in sorted(os.environ.items()):
        if variable.upper() != name:
            continue
        try:
            found = json.loads(text)
        except ValueError:
            continue
        if isinstance(found, dict) and any(k.lower() == key for k in found):
            return f" (set by {variable})"
    return ""


# gRPC's own target names (its naming document): a scheme, then what its resolver reads;
# "dns:50070" alone stays a host named "dns" and its port, as it was read before.
_GRPC_TARGET = re.compile(r"(?:dns|ipv4|ipv6|unix|unix-abstract|vsock):(?![0-9]+$)")


def hub_address_problem(address: str, *, port_required: bool = True) -> str | None:
    """Why a till cannot dial `address` (`hub.address`, `hub enroll --address`), or None:
    HOST:PORT as every listen address is read (`split_listen`), with a port a till can
    dial. Without a port the till dials gRPC's default (443): a bundle must name its
    port (`port_required`), a configuration may leave it out (a hub behind a front end
    on 443 worked so; DECISIONS, review 37). With an empty port, 0 or one past 65535,
    nothing; a NUL cut the address short (gRPC's C core); each said only that the hub is
    unreachable. Said after the address (`'hub' has no port: ...`).

    A gRPC target name (`dns:///hub.corp:50070`, `ipv4:10.0.0.5:50070`: a scheme gRPC
    resolves) is gRPC's to read: only blanks and control characters are refused in it.
    It worked before this check and was refused by it as a bare IPv6 address, exit 2 at
    a till's upgrade (review 37, rev37g)."""
    if _GRPC_TARGET.match(address):
        if any(c.isspace() or not c.isprintable() for c in address):
            return f"{address!r}: a hub's address has no blanks or control characters"
        return None
    bracketed = address.startswith("[") and address.endswith("]")
    if ":" not in address or bracketed:
        if port_required:
            return f"{address!r} has no port: give HOST:PORT (e.g. {address}:50070)"
        if any(c.isspace() or not c.isprintable() for c in address):
            return f"{address!r}: a host name has no blanks or control characters"
        return None
    try:
        host, port = split_listen(address, dial=True)
    except ValueError as exc:
        return str(exc)
    if ":" in host and not address.startswith("["):
        # "::1" read as host ":" port 1: the till dialled the bare address at gRPC's 443
        return (
            f"{address!r}: an IPv6 address goes in brackets, with the port:"
            " [ADDRESS]:PORT (e.g. [::1]:50070)"
        )
    if any(c.isspace() or not c.isprintable() for c in host):
        return f"{address!r}: a host name has no blanks or control characters"
    if port == 0:
        return (
            f"{address!r}: port 0 is not one a till can dial: give the port"
            " 'hub serve' listens on (50070 by default)"
        )
    return None


# Sent in an HTTP header or gRPC metadata: printable ASCII, no spaces.
Token = Annotated[str, Field(max_length=512, pattern=r"^[!-~]*$")]


def _ipv6(host: str) -> bool:
    """Whether `host` is an IPv6 address (with a zone, "fe80::1%eth0", too)."""
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def split_listen(listen: str, *, dial: bool = False) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port); a ValueError says what is
    wrong. Port 0 asks for a free port. gRPC took a port past 65535 modulo 65536 (99999
    listened on 34463) and the metrics server failed at start: every server's listen is
    read here, so `config check` refuses what `run` would not bind as written. A listen
    that is not UTF-8 text (a unit's environment or a command line in a script's other
    bytes, surrogate-escaped) is refused here too: the token check's message, the
    resolver and the idna codec said "internal error", exit 1 (review 37, rev37d).
    `dial`: an address a till dials (`hub.address`), whose examples are the hub's port and
    no wildcard ("::1" as `hub.address` was shown the HTTP door's `[::1]:8061, [::]:8061`)."""
    example_port = 50070 if dial else 8061
    from .limits import is_utf8_text

    if not is_utf8_text(listen):
        raise ValueError(f"{listen!r}: not UTF-8 text")
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") != host.endswith("]") or host.count("[") + host.count("]") > 2:
        # "[::1:8061", "::1]:8061": HTTP bound them, gRPC could not (rev38c)
        raise ValueError(
            f"{listen!r}: unbalanced brackets: an IPv6 address goes in brackets, with the"
            f" port: [ADDRESS]:PORT (e.g. [::1]:{example_port})"
        )
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"{listen!r}: expected HOST:PORT, for example 127.0.0.1:{example_port}")
    if host == "*":  # no name the system resolves: `run` failed at start (rev38c)
        raise ValueError(
            f"{listen!r}: '*' is not an address: write 0.0.0.0 (every IPv4 address) or"
            " [::] (every address)"
        )
    if host != host.strip() or (":" in host and not _ipv6(host)):
        # "::8061" read as the host ":", "[ ::1]:8061": no name the system resolves,
        # `config check` took them and `run` failed to bind, exit 1 (review 38, rev38g)
        raise ValueError(
            f"{listen!r}: {host!r} is not an address: no blanks, and an IPv6 address goes"
            f" in brackets, with the port: [ADDRESS]:PORT (e.g. [::1]:{example_port}"
            + ("" if dial else f", [::]:{example_port}")
            + ")"
        )
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def listen_addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, Any]]:
    """Each address a listen's host is, as every server of tillpoint binds them (gRPC,
    HTTP, /metrics, the bind probe): an address as it is (`::1`, `127.0.0.1`), a name as
    the system resolves it, IPv4 and IPv6 alike (`localhost` may be both; a name of IPv6
    addresses only, `ip6-localhost`, is bound too: the HTTP interface and /metrics took
    an IPv4 socket for any name, and such a name failed there while gRPC bound it, until
    review 32). (family, socket address) pairs, each once, in the resolver's order.
    OSError: a name that does not resolve, said by `not_resolved`."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[tuple[socket.AddressFamily, Any]] = []
    for family, _, _, _, where in found:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, where) not in out:
            out.append((family, where))
    if not out:
        raise socket.gaierror(socket.EAI_FAMILY, "no IPv4 or IPv6 address")
    return out


def not_resolved(host: str, exc: OSError) -> str:
    """The one line of a listen whose host cannot be used, in plain words: a name that does
    not resolve ("the name till-x.invalid does not resolve (Name or service not known)"),
    else the system's words."""
    if isinstance(exc, socket.gaierror):
        return f"the name {host} does not resolve ({exc.strerror or exc})"
    return exc.strerror or str(exc)


# How many free ports `bind_listeners` tries for port 0 on a name of several addresses
# before it says none binds on all of them.
PICK_TRIES = 32


class _PortTaken(Exception):
    """Port 0: the port the first address got is another program's on a later one."""

    def __init__(self, first: socket.socket, exc: OSError) -> None:
        super().__init__(str(exc))
        self.first, self.exc = first, exc


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """TCP sockets bound to each address of `host` (`listen_addresses`) on `port`, not yet
    listening. Port 0: a free port that binds on every address (the port the first
    address got may be another program's on the next: `localhost` as 127.0.0.1 and ::1;
    it was bound as it came, and the HTTP door failed to start while gRPC listened on
    one address, review 34): another is picked, the ports tried held meanwhile so the
    system does not give them again, `PICK_TRIES` at most. OSError (all closed): a name
    that does not resolve, or the first bind that fails; an address of a name of several
    that this machine cannot take (no IPv6 stack, `::1` with IPv6 off: "Cannot assign
    requested address") is left out while another binds, as grpcio leaves it out; an
    address in use never is."""
    addresses = listen_addresses(host, port)
    if port != 0 or len(addresses) == 1:
        return _bind_each(addresses, port)
    tried: list[socket.socket] = []
    try:
        for _ in range(PICK_TRIES):
            try:
                return _bind_each(addresses, 0)
            except _PortTaken as taken:
                tried.append(taken.first)
                last = taken.exc
        raise OSError(
            errno.EADDRINUSE,
            f"no free port binds on every address of {host} ({PICK_TRIES} tried; {last})",
        )
    finally:
        for sock in tried:
            sock.close()


def _bind_each(addresses: list[tuple[socket.AddressFamily, Any]], port: int) -> list[socket.socket]:
    bound: list[socket.socket] = []
    skipped: OSError | None = None
    try:
        for family, where in addresses:
            sock = None
            try:
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and len(addresses) > 1:
                    # `::` beside `0.0.0.0`: each family on its own socket
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and bound:  # the port the first one got
                    where = (where[0], bound[0].getsockname()[1], *where[2:])
                sock.bind(where)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                if port == 0 and bound and exc.errno == errno.EADDRINUSE:
                    first = bound.pop(0)  # held by the caller: the next pick is another port
                    raise _PortTaken(first, exc) from None
                unusable = exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)
                if not unusable or len(addresses) == 1:
                    raise
                skipped = skipped or exc
                continue
            bound.append(sock)
        if not bound:
            raise skipped or OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def pinned_listen(address: str) -> str:
    """`address` with port 0 made the free port `bind_listeners` finds on every address of
    its host when it has several (`localhost`), for grpcio, which binds port 0 address by
    address and leaves out one where the port it got first is another program's (only
    a log line: a POS connecting over ::1 reached that program, review 34). Any other
    address as every server reads it (`listen_text`: gRPC could not read
    "[127.0.0.1]:P" or "::1:P", rev38c), one that cannot be read as it is (the caller's
    bind says why)."""
    try:
        host, port = split_listen(address)
    except ValueError:
        return address
    if port != 0:
        # as every server reads it: gRPC could not read "[127.0.0.1]:P" or "::1:P",
        # which `config check`, HTTP and /metrics take (review 38, rev38c)
        return listen_text(host, port)
    try:
        probes = bind_listeners(host, 0)
    except OSError:
        return listen_text(host, 0)
    picked = int(probes[0].getsockname()[1])
    for probe in probes:
        probe.close()
    if len(probes) == 1:  # one address: grpcio's own pick cannot miss
        return listen_text(host, 0)
    return listen_text(host, picked)


def listen_text(host: str, port: int) -> str:
    """HOST:PORT as a listen is written, an IPv6 host in brackets ("[::1]:8061"): the
    address a "cannot listen on" line names (review 36: "::1:8061" for HTTP)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The kernel's tables of TCP sockets (Linux), and the state of one that listens.
_PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
_TCP_LISTEN = "0A"


def others_listening(address: str, port: int, *, ours: bool = False) -> list[str]:
    """The addresses of `address`'s host where another program listens on `port` (the
    port a gRPC server was just given): "[::1]:50061". Asked once grpcio has bound it,
    since grpcio binds a name address by address and, when one is taken, listens on the
    rest with only a warning of its own: another program that took the port on one of
    them between the probe (`bind_refusal`, `pinned_listen`, which close their sockets
    before grpcio binds) and grpcio's bind, or on an address this machine's resolver does
    not give for the name (grpcio takes `localhost` as 127.0.0.1 and ::1 whatever
    /etc/hosts says), got the POS's calls that came that way (review 35). The host's
    addresses are the resolver's, both loopbacks for `localhost`, and the wildcard of
    each family they are in; for a wildcard listen, every address of both families
    (grpcio binds it dual-stack, and falls back to IPv4 alone when another program holds
    the port on an IPv6 address such as ::1: a POS coming over IPv6 reached that program,
    rev35c). For a listen on an address or a name, a program on another address, or on
    the other family's wildcard (`[::]` IPv6-only beside 127.0.0.1), takes none of the
    agent's connections, and refusing the start for it left a till that never starts
    (rev35b). Read from the kernel's tables and this process's descriptors (Linux), each
    table on its own (no /proc/net/tcp6 on a kernel without IPv6); [] where they cannot
    be read (another system: the probe alone). With `ours` (the caller listens on the
    port now: grpcio bound it), [] too when the tables name none of this process's
    listeners on it: their inodes are not this process's descriptors', and its own
    listener would read as another program's (review 36).

    A scoped address (`[fe80::1%eth0]`, a link-local one) is one address on one
    interface, which grpcio bound itself, all or nothing, port sharing off: a row of that
    address that is not this process's is the same address on another interface (the
    tables carry no interface), not counted with `ours`. It read as another program's
    on the listen's own address and `run` exited 1 (review 39, rev39d)."""
    try:
        host, _ = split_listen(address)
        resolved = listen_addresses(host, port)
        meant = {_unmapped(ipaddress.ip_address(where[0].split("%")[0])) for _, where in resolved}
    except (ValueError, OSError):
        return []
    # grpcio's own bind of a scoped address: another's row of it is another interface's
    elsewhere = {ip for ip in meant if "%" in host and ip.version == 6} if ours else set()
    if host.lower() == "localhost":
        meant |= {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    # an address this host does not have (::1 with IPv6 off on lo) is nobody's to take: it
    # leaves its family out (grpcio leaves it out too, and a POS cannot connect there)
    meant = {ip for ip in meant if ip.is_unspecified or _bindable(ip)}
    both = any(ip.is_unspecified for ip in meant)
    families = {4, 6} if both else {ip.version for ip in meant}
    meant |= {ip for ip in _WILDCARDS if ip.version in families}
    try:
        mine: set[str] = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # a descriptor closed meanwhile
                link = os.readlink(f"/proc/self/fd/{fd}")
                if link.startswith("socket:["):
                    mine.add(link[8:-1])
    except OSError:
        return []
    taken: list[str] = []
    ours_seen = False
    for table in _PROC_TCP:
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)  # the heading
                for row in rows:
                    fields = row.split()
                    if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                        continue
                    hex_address, _, hex_port = fields[1].partition(":")
                    if int(hex_port, 16) != port:
                        continue
                    if fields[9] in mine:
                        ours_seen = True
                        continue
                    ip = _proc_address(hex_address)
                    if ip in elsewhere:
                        continue
                    # a wildcard listen is every address of the host, in both families:
                    # a program on any of them (::1 beside 0.0.0.0, where grpcio's
                    # dual-stack bind then falls back to IPv4 alone) takes its calls
                    if both or ip in meant:
                        taken.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
        except (OSError, ValueError):  # this table: none here (no IPv6), or unreadable
            continue
    # tables that name none of this process's listeners on the port (a sandboxed kernel
    # writes inode 0 where it cannot stat a socket) cannot tell ours from another's: the
    # agent's own listener read as another program's, a till that never starts (review 36)
    return taken if ours_seen or not ours else []


_WILDCARDS = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))


def _bindable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is an address of this host (a socket binds it, on a port of the
    system's choosing; in use is still this host's)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError as exc:
        return exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    return True


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 address an IPv6 socket takes (::ffff:a.b.c.d) as that IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def half_bound(taken: list[str]) -> str:
    """The reason a gRPC server given a port others listen on (`others_listening`) said."""
    verb = "is" if len(taken) == 1 else "are"
    return f"{' and '.join(taken)} {verb} another program's (Address already in use)"


def release_unserved(server: Any) -> None:
    """Close the listening sockets of a gRPC server that no service was added to yet:
    grpcio closes them only once started (stopped unstarted, it held the port to the
    process's end). Started so, it answers nothing but UNIMPLEMENTED meanwhile."""
    server.start()
    server.stop(None).wait(5)


def _proc_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp* writes it (hex, each 32-bit word in host order; an
    IPv4 address an IPv6 socket took, ::ffff:a.b.c.d, as that IPv4 address)."""
    raw = bytes.fromhex(text)
    words = b"".join(
        int.from_bytes(raw[i : i + 4], sys.byteorder).to_bytes(4, "big")
        for i in range(0, len(raw), 4)
    )
    return _unmapped(ipaddress.ip_address(words))


def bind_refusal(address: str) -> str | None:
    """Why `address` cannot be bound now, in the system's words ("Address already in
    use"), or None when a probe binds it (or it is not HOST:PORT: the caller's own bind
    says why). The gRPC servers ask it before grpcio binds: grpcio's failed bind writes
    its own log line on stderr ("E… add_port.cc:83] Failed to add port …") before the
    agent's one line, on a terminal and in the journal alike."""
    try:
        host, port = split_listen(address)
    except ValueError:
        return None
    try:
        # each address the host is, as grpcio binds them and the HTTP and metrics servers
        # do (`bind_listeners`): a name of IPv6 addresses only too
        probes = bind_listeners(host, port)
    except OSError as exc:
        return not_resolved(host, exc)
    for probe in probes:
        probe.close()
    return None


def bind_problem(address: str) -> str:
    """Why `address` cannot be bound, in the system's words ("Address already in use"),
    as the HTTP and metrics servers say it: grpcio says only that it failed (the agent's
    and the hub's gRPC servers ask this when it does)."""
    try:
        split_listen(address)
    except ValueError as exc:
        return str(exc)
    return bind_refusal(address) or "the address is in use or not valid"


def _listen(value: str) -> str:
    split_listen(value)
    return value


Listen = Annotated[str, AfterValidator(_listen)]


_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+")


def _origin(value: str) -> str:
    """An origin as a browser sends it in `Origin`: scheme and host in lower case, no
    default port (`HTTP://LocalHost:80` is `http://localhost`), so the check's exact
    comparison matches what the page sends."""
    if not _ORIGIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an origin: scheme://host[:port] with no path,"
            " for example http://localhost:3000"
        )
    scheme, _, host = value.partition("://")
    scheme, host = scheme.lower(), host.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host.removesuffix(default)
    return f"{scheme}://{host}"


# A web page's origin: scheme://host[:port], no path; a kiosk shell's own scheme
# (`app://kiosk`) too.
Origin = Annotated[str, Field(max_length=200), AfterValidator(_origin)]


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: Listen = "127.0.0.1:50061"  # the local PosAgent gRPC server
    max_workers: int = Field(8, ge=1, le=64)
    token: Token = ""  # required when listen is not a loopback address

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> ServerSettings:
        problem = token_problem("server", self.listen, self.token)
        if problem:
            raise ValueError(problem)
        return self


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen: Listen = "127.0.0.1:8061"  # the local HTTP/JSON interface (docs/INTEGRATION.md)
    token: Token = ""  # required when listen is not a loopback address
    # Web pages (a kiosk's browser front end) allowed to call, by origin
    # ("http://localhost:3000"); a request from any other page is refused with 403.
    allowed_origins: tuple[Origin, ...] = ()

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> HttpSettings:
        problem = token_problem("http", self.listen, self.token) if self.enabled else None
        if problem:
            raise ValueError(problem)
        return self


def listen_clash(settings: Settings) -> str | None:
    """Two of the agent's servers (gRPC, HTTP, /metrics; those enabled) configured on one
    port of one address, or None. `run` binds gRPC first and the second then failed at
    start, exit 1, "Address already in use", as if another program held the port, while
    `config check` called the file valid (review 37). Port 0 is a free port each; a name
    is its addresses (`listen_addresses`); a wildcard meets every address of its family,
    `::` every address (a dual-stack socket); a name that does not resolve is said by
    the bind, not here."""
    servers = [("server", settings.server.listen)]
    if settings.http.enabled:
        servers.append(("http", settings.http.listen))
    if settings.metrics.enabled:
        servers.append(("metrics", settings.metrics.listen))
    for i, (first, one) in enumerate(servers):
        for second, other in servers[i + 1 :]:
            port = _shared_port(one, other, dual=first == "server")
            if port:
                return (
                    f"[{first}] listen {one} and [{second}] listen {other}: one port"
                    f" ({port}) for two servers; set another port"
                )
    return None


def _shared_port(one: str, other: str, *, dual: bool = False) -> int:
    """The port two listens would both bind on one address, else 0. `dual`: `one` is the
    gRPC server's, which grpcio binds dual-stack at `0.0.0.0` (as `[::]`: rev37b)."""
    (host1, port), (host2, port2) = split_listen(one), split_listen(other)
    if port == 0 or port != port2:
        return 0
    try:
        first, second = listen_addresses(host1, port), listen_addresses(host2, port)
    except OSError:  # a name that does not resolve: the bind says so
        return 0
    if dual:
        first = [(f, ("::", *w[1:])) if w[0] == "0.0.0.0" else (f, w) for f, w in first]
    for family, where in first:
        for family2, where2 in second:
            if _meet(family, where[0], family2, where2[0]):
                return port
    return 0


def _meet(family: int, address: str, family2: int, address2: str) -> bool:
    """Whether sockets on these two addresses (one port) cannot both be bound."""
    if "::" in (address, address2):  # IPv6's wildcard: both families (dual-stack)
        return True
    if family != family2:
        return False
    wildcard = any(ipaddress.ip_address(a).is_unspecified for a in (address, address2))
    return address == address2 or wildcard


def token_problem(section: str, listen: str, token: str) -> str | None:
    """A server bound beyond loopback answers anyone on the network: a holder of a card
    number could hold, confirm and refund. It needs a token, sent with every call (the
    configuration, `server.build_server` and `http_api.HttpServer` ask the same)."""
    host = listen.rpartition(":")[0].strip("[]")
    if token or is_loopback(host):
        return None
    return (
        f"listen {listen} is not a loopback address: set a token"
        f" ([{section}] token or TILLPOINT_{section.upper()}__TOKEN)"
    )


def bearer_matches(value: bytes, token: bytes) -> bool:
    """An `Authorization` header's (or gRPC metadata's) value against the token: the
    scheme "Bearer" in any case, compared in constant time. Blanks around the value are
    no part of it (RFC 9110 §5.5): h11 drops them from an HTTP header, gRPC's metadata
    keeps them, so `  Bearer tok` was taken over HTTP and refused over gRPC until review
    39 (rev39a)."""
    scheme, _, given = value.strip(b" \t").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only programs on this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cased(case: Any) -> Any:
    """A word read in any case (`TILLPOINT_LOG__LEVEL=debug`): refused, it stopped `run`
    with exit 2, which the unit does not restart, over a log level's case."""
    return BeforeValidator(lambda value: case(value) if isinstance(value, str) else value)


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], _cased(str.upper)] = "INFO"
    # auto: JSON unless on a terminal
    format: Annotated[Literal["auto", "json", "text"], _cased(str.lower)] = "auto"


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen: Listen = "127.0.0.1:9464"  # Prometheus text at http://<listen>/metrics


# The hub's certificate of a device names it in its common name, at most 64 characters
# (X.509's upper bound; a host name, the default id, has at most 64 too).
DEVICE_ID_MAX = 64


def device_id_problem(device_id: str) -> str | None:
    """Why `device_id` cannot name a till, or None. The hub enrols no id with blanks,
    slashes or control characters (it is its certificate's name and a file name of its
    bundle), so the till's configuration refuses them too: a till journalling its sales
    under "till 3" or "a\\nb" could never be enrolled under that id."""
    if not device_id or len(device_id) > DEVICE_ID_MAX:
        return f"a device id has 1 to {DEVICE_ID_MAX} characters"
    if any(c.isspace() or c in "/\\" or not c.isprintable() for c in device_id):
        return "a device id has no blanks, slashes or control characters (the hub enrols no other)"
    return None


class Settings(BaseModel):
    """The settings, read as pydantic-settings' `BaseSettings` read them (it was one up to
    review 38): `Settings(**flags)` takes each setting from the first of the flags, the
    TILLPOINT_* environment (`TILLPOINT_HUB__ADDRESS` for a table's key, a table or a
    list as JSON), the TOML file `load` names, the defaults; tables merged key by key.
    pydantic-settings (and asyncio under it, ~20 % of a one-shot CLI call's start) is
    imported only for an environment this module does not read itself (`_env_values`)."""

    # BaseSettings' model options: defaults validated too (a host name that cannot be a
    # device id is refused), unknown keys refused
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=True)

    # This load's loose values (`loose_values`): its own, not the process's last load's
    _loose: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, **values: Any) -> None:
        loose: list[str] = []
        token = _LOOSE.set(loose)
        try:
            super().__init__(**_settings_values(values))
        finally:
            _LOOSE.reset(token)
        self._loose = loose

    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100)
    data_dir: Path = Field(default_factory=default_data_dir)

    @field_validator("device_id")
    @classmethod
    def _enrollable(cls, value: str) -> str:
        problem = device_id_problem(value)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _some_dir(cls, value: Any) -> Any:
        # an empty TILLPOINT_DATA_DIR (or data_dir = "") is not the current directory
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        if isinstance(value, str) and "\x00" in value:
            # only the TOML file can write one (`\u0000`): "internal error: ValueError:
            # embedded null byte", exit 1, at every command (review 37, rev37d)
            raise ValueError("must not contain a NUL character (no path can hold one)")
        if not isinstance(value, str | Path):  # `data_dir = 5`: not "<class 'pathlib.Path'>"
            raise ValueError(f"must be a string, a directory's path (got {value!r})")
        return value

    build_workers: int = Field(0, ge=0, le=16)  # full-snapshot build processes; 0: auto
    hub: HubSettings = HubSettings()
    server: ServerSettings = ServerSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    printer: dict[str, Any] = Field(default_factory=dict)
    display: dict[str, Any] = Field(default_factory=dict)
    scanner: dict[str, Any] = Field(default_factory=dict)


# The file `load` reads for the Settings built in this context (None: no file).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("tillpoint_config_file", default=None)


# A till's configuration is a few KiB; a file past this is not one (`--config /dev/zero`
# was read until memory ran out).
CONFIG_MAX_BYTES = 1024 * 1024


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file's tables; an unreadable, oversized or malformed file is one line
    (InputError). A leading byte order mark (Windows Notepad writes one) is skipped, as
    in every JSON input."""
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(CONFIG_MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read config {path}: {exc.strerror or exc}") from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise InputError(
            f"config {path}: larger than {CONFIG_MAX_BYTES // (1024 * 1024)} MiB:"
            " not a configuration file"
        )
    try:
        if b"\x00" in raw:
            # UTF-16 or UTF-32 without a byte order mark (a NUL beside each ASCII
            # character; TOML allows none anywhere): tomllib's "Invalid initial character
            # for a key part (at line 1, column 2)" sent the operator to the file's first
            # key (review 40, rev40c), where every other input says "not UTF-8 text"
            at = raw.index(b"\x00")
            if at < 4:
                raise UnicodeDecodeError("utf-8", raw, at, at + 1, "a NUL byte")
            # one NUL in UTF-8 text (zeros a power cut left after the last write, a stray
            # byte): where it is, not "not UTF-8 text", which lost tomllib's line (review
            # 40, rev40e; a UTF-16/32 file of TOML has one in its first four bytes)
            start = raw.rfind(b"\n", 0, at) + 1
            line = raw.count(b"\n", 0, at) + 1
            column = len(raw[start:at].decode("utf-8", "replace")) + 1
            raise InputError(
                f"config {path}: a NUL byte at line {line}, column {column} (TOML allows none)"
            )
        return tomllib.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise InputError(
            f"config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config {path}: {exc}") from None


def _settings_values(flags: dict[str, Any]) -> dict[str, Any]:
    """What `Settings(**flags)` validates, as pydantic-settings built it from its sources
    (highest first: `flags`, the environment, the TOML file of `load`): each source's keys
    named as the fields (case aside), then merged key by key (nested tables too). The file
    is read first (an unreadable or malformed one is one line, its loose values noted in
    `loose_values`), then the environment."""
    path = _CONFIG_FILE.get()
    values = read_config_file(path) if path is not None else {}
    tables = device_models() if any(k in _DEVICE_TABLES for k in values) else None
    loose = _LOOSE.get()
    if loose is not None:
        loose += [f"config {path}: {p}" for p in toml_type_problems(Settings, values, tables)]
    state: dict[str, Any] = {}
    # highest first, each merged under the ones before it, as pydantic-settings did
    # (`state = deep_update(source, state)`): folded the other way, a table given as flags
    # beside a TILLPOINT_HUB of another JSON kind lost the file's keys (review 38, rev38i)
    for source in (_by_field_name(flags), _env_values(), _by_field_name(values)):
        state = _deep_update(source, state)
    return state


def _deep_update(mapping: dict[str, Any], *updates: dict[str, Any]) -> dict[str, Any]:
    """pydantic's private `deep_update`, pydantic-settings' merge of two sources (written
    out here so no private module is imported): later mappings win, tables merge by key."""
    merged = dict(mapping)
    for update in updates:
        for key, value in update.items():
            if isinstance(merged.get(key), dict) and isinstance(value, dict):
                merged[key] = _deep_update(merged[key], value)
            else:
                merged[key] = value
    return merged


def _by_field_name(values: dict[str, Any]) -> dict[str, Any]:
    """pydantic-settings' reading of init values (the flags and the TOML file's tables):
    a top-level key is a field's whatever its case (`Data_Dir`), the first such key wins
    and the others are dropped; any other key stays, to be refused as unknown."""
    named: dict[str, Any] = {}
    left = dict(values)
    for field in Settings.model_fields:
        matched = [key for key in values if key.lower() == field and key in left]
        if matched:
            named[field] = values[matched[0]]
            for key in matched:
                del left[key]
    named.update(left)
    return named


_ENV_PREFIX = "TILLPOINT_"
_DEVICE_TABLES = ("printer", "display", "scanner")


def _env_values() -> dict[str, Any]:
    """The settings the TILLPOINT_* environment sets, as pydantic-settings' environment
    source reads them (`TILLPOINT_DATA_DIR`, `TILLPOINT_HUB__ADDRESS`, ...). The common
    case, upper-case names of settings that are text, numbers or booleans, is read here;
    any other (a table or a list as JSON, a device table's key, a name in lower case)
    goes to pydantic-settings itself, imported then, so its words and its JSON reading
    stay the same (tests/test_review38_perf38.py compares the two readings)."""
    found: dict[str, Any] = {}
    for key, value in os.environ.items():
        if not key.upper().startswith(_ENV_PREFIX):
            continue
        name = key[len(_ENV_PREFIX) :].lower()
        where = _env_scalar(name)
        if where is False:
            continue  # no setting of that name: pydantic-settings ignores it too
        if where is None or key != key.upper():
            return _env_values_by_pydantic_settings()
        table, field = where
        if table:
            found.setdefault(table, {})[field] = value
        else:
            found[field] = value
    return found


def _env_scalar(name: str) -> tuple[str, str] | Literal[False] | None:
    """For `name` (a TILLPOINT_ variable's, prefix off, lower case): (table or "", key)
    when it sets a setting that is not a table or a list; None when pydantic-settings must
    read it; False when it names no setting (ignored)."""
    fields = Settings.model_fields
    if name in fields:
        return ("", name) if _is_scalar(fields[name].annotation) else None
    table, sep, key = name.partition("__")
    if not sep or table not in fields:
        return False
    model = fields[table].annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None  # a device table (a dict): pydantic-settings' reading
    sub = model.model_fields.get(key)
    if sub is None or not _is_scalar(sub.annotation):
        return None  # an unknown key, or a list: pydantic-settings' words
    return (table, key)


def _is_scalar(annotation: Any) -> bool:
    """A setting pydantic-settings reads from the environment as the text itself."""
    if get_origin(annotation) is Annotated:
        return _is_scalar(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    return annotation in (str, int, float, bool, Path)


def _env_values_by_pydantic_settings() -> dict[str, Any]:
    """The environment's settings as pydantic-settings' own source reads them (imported
    here, not at the start of every command)."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        Settings,  # type: ignore[arg-type]  # a BaseModel: the source reads its fields
        case_sensitive=False,
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter="__",
    )
    return source()


# The loose values of the load under way (`Settings.__init__`'s list): the values of the
# configuration not of their setting's TOML type (`toml_type_problems`), a poll interval
# past its bounds (`_bounded_poll_interval`); `config check` refuses them, `run` logs each
# as a WARNING. They were one list of the module, emptied by every load: another
# thread's load in between (a second `main(argv)` of a caller's process) emptied a loose
# file's lines, and its `config check` said "configuration is valid" (review 39, rev39f).
_LOOSE: ContextVar[list[str] | None] = ContextVar("tillpoint_loose_values", default=None)


def loose_values(settings: Settings) -> list[str]:
    """What `settings`' load took loosely (see `toml_type_problems`, `hub.poll_interval_s`),
    one line each: `run` warns of each, `config check` refuses them."""
    return list(settings._loose)


def device_models() -> dict[str, type[BaseModel]]:
    """The models of the `[printer]`, `[display]` and `[scanner]` tables (printer/config.py,
    pydantic alone: no serial or printer code is imported)."""
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig

    return {"printer": PrinterConfig, "display": DisplayConfig, "scanner": ScannerConfig}


# What each kind of setting is written as in TOML, for the messages.
_TOML_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def toml_type_problems(
    model: type[BaseModel],
    values: dict[str, Any],
    tables: dict[str, type[BaseModel]] | None = None,
    where: str = "",
) -> list[str]:
    """The values of the TOML file whose TOML type is not their setting's, one line each
    (`[server] max_workers = "10": an integer is expected, without quotes`).

    The file is typed: a boolean is `true` or `false`, an integer setting takes an integer,
    a number of seconds an integer or a float, a text setting a string. Pydantic's lax
    reading takes `enabled = "yes"` (or 1, or "0" for false), `max_workers = "10"` and
    `= 8.0`, and `build_workers = true` as 1, and `config check` said such a file was
    valid. It now refuses them (exit 2); `run` and every other command still take them
    as pydantic reads them (a file an earlier release took must not stop a till after an
    upgrade) and `run` logs each as a WARNING. The environment is text
    (`TILLPOINT_SERVER__MAX_WORKERS=10`, booleans as true/false, 1/0, yes/no, on/off)
    and is read by pydantic's rules. Unknown keys are left to the models."""
    problems: list[str] = []
    tables = tables or {}
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        if key in tables and isinstance(value, dict):
            problems += toml_type_problems(tables[key], value, None, f"[{key}] ")
            continue
        problem = _type_problem(field.annotation, field.metadata, value)
        if problem is None:
            continue
        if isinstance(problem, list):
            problems += [
                f"{where}[{key}] {p}" if not where else f"{where}{key}.{p}" for p in problem
            ]
            continue
        shown = (
            json.dumps(value, ensure_ascii=False)
            if not isinstance(value, bool)
            else str(value).lower()
        )
        words = (_TOML_TYPES[bool], _TOML_TYPES[int], _TOML_TYPES[float])
        hint = ", without quotes" if isinstance(value, str) and problem in words else ""
        problems.append(f"{where}{key} = {shorten(shown, 40)}: {problem} is expected{hint}")
    return problems


def shorten(text: str, limit: int) -> str:
    """The first `limit` characters and "…" when there are more (a value echoed in a
    message; the HTTP interface's too)."""
    return text[:limit] + "…" if len(text) > limit else text


def _type_problem(annotation: Any, metadata: list[Any], value: Any) -> str | list[str] | None:
    """What `value` (read from TOML) should have been for a setting of `annotation`: the
    words for the message, a list of a table's problems, or None when it is of its type."""
    from pydantic.functional_validators import BeforeValidator

    if any(isinstance(m, BeforeValidator) for m in metadata):
        return None  # the setting reads text itself ("0x04b8" for a USB id)
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *more = get_args(annotation)
        return _type_problem(inner, [*metadata, *more], value)
    if origin in (UnionType, Union):
        members = [a for a in get_args(annotation) if a is not type(None)]
        found = [_type_problem(a, metadata, value) for a in members]
        return None if any(f is None for f in found) else found[0]
    if origin is Literal:
        kinds = {type(a) for a in get_args(annotation)}
        if type(value) in kinds:
            return None  # one of the others: the model's own words say which
        return " or ".join(sorted({_TOML_TYPES.get(k, k.__name__) for k in kinds}))
    if origin in (tuple, list) or annotation in (tuple, list):
        return None if isinstance(value, list) else "a list"
    if origin is dict or annotation is dict:
        return None if isinstance(value, dict) else "a table"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return "a table"
        return toml_type_problems(annotation, value) or None
    if annotation is bool:
        return None if isinstance(value, bool) else _TOML_TYPES[bool]
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else _TOML_TYPES[int]
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else _TOML_TYPES[float]
    if annotation is str or annotation is Path:
        return None if isinstance(value, str) else _TOML_TYPES[str]
    return None


def _is_table_or_list(annotation: Any) -> bool:
    """A setting pydantic-settings reads from the environment as JSON (a table, a list)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_table_or_list(get_args(annotation)[0])
    if origin in (tuple, list, dict, set) or annotation in (tuple, list, dict, set):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _env_problem(exc: SettingsError) -> str:
    """pydantic-settings' `error parsing value for field "http" from source
    "EnvSettingsSource"` names neither the variable nor the fix: a table or a list is JSON
    in the environment (`TILLPOINT_HTTP__ALLOWED_ORIGINS=["http://localhost:3000"]`).
    Named here: the variables of that field whose value is no JSON where JSON is read."""
    found = re.search(r'field "(\w+)"', str(exc))
    field = Settings.model_fields.get(found[1]) if found else None
    if found is None or field is None:
        return str(exc)
    prefix = f"TILLPOINT_{found[1]}".upper()
    inner = field.annotation
    named = []
    for key, value in sorted(os.environ.items()):
        name = key.upper()
        if name == prefix:
            table_or_list = _is_table_or_list(inner)
        elif name.startswith(prefix + "__") and isinstance(inner, type):
            sub = getattr(inner, "model_fields", {}).get(name[len(prefix) + 2 :].lower())
            table_or_list = sub is not None and _is_table_or_list(sub.annotation)
        else:
            continue
        if table_or_list and not _is_json(value):
            named.append(key)
    if not named:
        return str(exc)
    return (
        f"{', '.join(named)}: not JSON; a list or a table set in the environment is JSON,"
        ' such as ["http://localhost:3000"] or {"address": "hub:50070"} (a table\'s keys'
        " can also be set one by one, as TILLPOINT_HUB__ADDRESS)"
    )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def env_source(*loc: str) -> str:
    """ " (set by TILLPOINT_A__B)" when TILLPOINT_* variables set the key `loc` (a table
    and a key), or, for a table alone, any key of it; "" when none does (the file or a
    default): the device tables are checked after `load`, with the same words."""
    name = "TILLPOINT_" + "__".join(loc).upper()
    found = sorted(
        key
        for key in os.environ
        if key.upper() == name or (len(loc) == 1 and key.upper().startswith(name + "__"))
    )
    return f" (set by {', '.join(found)})" if found else ""


def _source_of(exc: ValidationError, config_file: Path | None) -> str:
    """Where the setting `describe` names came from, for the message: the TILLPOINT_*
    variables that set it (or its table), else the file; "" for a flag or a default. A
    bad value set in a unit's `Environment=` was reported as if the TOML file held it."""
    from .models import _one_per_field

    errors = _one_per_field(exc.errors(include_url=False))
    loc = [str(part) for part in errors[0].get("loc", ()) if isinstance(part, str)]
    if not loc:
        return ""
    names = ["TILLPOINT_" + "__".join(loc[: n + 1]).upper() for n in range(len(loc))]
    table = "TILLPOINT_" + "__".join(loc).upper() + "__"
    found = sorted(
        key
        for key in os.environ
        if key.upper() in names or (key.upper().startswith(table) and len(loc) == 1)
    )
    if found and len(loc) == 1 and config_file is not None:  # a table's own check: both
        return f" (set by {', '.join(found)} and {config_file})"
    if found:
        return f" (set by {', '.join(found)})"
    if config_file is not None:
        return f" (in {config_file})"
    return ""


def load(config_file: Path | None = None, **flags: Any) -> Settings:
    """Read and validate the configuration; a problem names the key and what is wrong.

    `flags` are the command-line values (None: not given). Each setting comes from the
    first of flags, environment, `config_file`, defaults that has it.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**given)
    except ValidationError as exc:
        where = _source_of(exc, config_file)
        raise InputError(f"config: {describe(exc)}{where}") from None
    except Exception as exc:
        # an environment variable that is not what it should be: pydantic-settings' error,
        # its module imported only when it read the environment (`_env_values`)
        settings_module = sys.modules.get("pydantic_settings")
        if settings_module is None or not isinstance(exc, settings_module.SettingsError):
            raise
        raise InputError(f"config: {_env_problem(exc)}") from None
    finally:
        _CONFIG_FILE.reset(token)
