"""A free TCP port for a server that a test or a benchmark starts as another process.

The usual way (bind port 0, read the port, close) gives the kernel's next *ephemeral* port:
the range it also hands every outgoing connection, any process's. In a loaded test run
(two workers, thousands of connections a minute) one of those connections took such a port
between the pick and the server's bind, and the server, a `tillpoint run`, exited "Address
already in use" while its test waited 60 s for it (review 42: the CI of session 41 failed
so, once in 4,244 tests). So the ports here lie below the ephemeral range, where no
outgoing connection and no port-0 server ever lands; each pytest-xdist worker takes its own
share of them, and a process never hands out the same port twice in a row.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import socket
from collections.abc import Iterator

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
SPAN = 12_000  # ports below the ephemeral range to pick from
LOWEST = 10_000  # never below: registered services' ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' and port-0 servers' ports."""
    try:
        with open(RANGE_FILE, encoding="ascii") as table:
            low, high = (int(word) for word in table.read().split()[:2])
        return low, high
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


SHARE_ENV = "BENCH_PORT_SHARE"  # "INDEX/COUNT": a benchmark's side-by-side child's share


def worker_share() -> tuple[int, int]:
    """(this pytest-xdist worker's index, the workers' count), or a side-by-side child's of
    `make faults-quick` (`SHARE_ENV`, set by its parent: two children drawing from one
    pool can hand out one port twice, and then one child's `tillpoint run` exits "Address
    already in use" while the other's answers its checkouts); (0, 1) otherwise."""
    share = os.environ.get(SHARE_ENV, "")
    index_text, _, count_text = share.partition("/")
    if index_text.isdigit() and count_text.isdigit() and int(count_text) > 0:
        return int(index_text) % int(count_text), int(count_text)
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if name.startswith("gw") and name[2:].isdigit() and count.isdigit() and int(count) > 0:
        return int(name[2:]) % int(count), int(count)
    return 0, 1


def candidates() -> list[int]:
    """This process's ports, in a random order of its own: below the ephemeral range and
    this worker's share of them; the ephemeral range's top end's neighbours when the range
    starts too low to leave room (then only the fallback, port 0, is sure)."""
    low, high = ephemeral_range()
    if low - LOWEST >= 1_000:
        pool = range(max(LOWEST, low - SPAN), low)
    elif 65_535 - high >= 1_000:
        pool = range(high + 1, 65_536)
    else:
        return []
    index, count = worker_share()
    ports = [port for port in pool if port % count == index]
    random.Random(f"{os.getpid()}-{os.urandom(8).hex()}").shuffle(ports)
    return ports


_cycle: Iterator[int] | None = None
_pid = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now and that no outgoing connection will
    take (for a server started as a process, which binds it a moment later)."""
    global _cycle, _pid
    if _cycle is None or _pid != os.getpid():  # a forked child draws its own
        _cycle, _pid = itertools.cycle(candidates() or [0]), os.getpid()
    for _ in range(200):
        port = next(_cycle)
        if port == 0:  # no room outside the range: the kernel's pick (below)
            break
        if _free_on_loopback(port):
            return port
    with socket.socket() as probe:  # nothing free outside the range: the kernel's pick
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _free_on_loopback(port: int) -> bool:
    """Whether `port` binds on 127.0.0.1 and, where the host has one, on ::1: servers
    given it listen on `localhost:PORT` (both) or `[::1]:PORT` too, and a port another
    program held on ::1 alone was handed out (review 42, review42)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:  # held (a listener, a connection's end, TIME_WAIT): the next
            return False
        try:
            probe6 = socket.socket(socket.AF_INET6)
        except OSError:  # no IPv6 here at all
            return True
        with probe6:
            probe6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe6.bind(("::1", port))
            except OSError as exc:
                # held there; or no ::1 on this host (nothing can hold it then)
                return exc.errno == errno.EADDRNOTAVAIL
        return True
