"""A small Prometheus text endpoint on localhost, without a dependency.

Checkout latency histogram, calls answered with an error by code, outbox depth,
snapshot version and age, printer and display state, the hub's reachability, the sync's
outstanding error and a ledger that cannot be written. Gauges that live in SQLite are
read when scraped (collectors), so the numbers are never stale and the
checkout path does no extra work.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .config import bind_listeners, listen_text, not_resolved
from .errors import TillpointError

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_text, buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, counts, strict=False):
            running += count
            out.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        running += counts[-1]
        out.append(f'{self.name}_bucket{{le="+Inf"}} {running}')
        out.append(f"{self.name}_sum {total:.6f}")
        out.append(f"{self.name}_count {running}")
        return out


class Counter:
    """A counter by one label's value (Prometheus text format)."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name, self.help, self.label = name, help_text, label
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        with self._lock:
            self._counts[value] = self._counts.get(value, 0) + 1

    def render(self) -> list[str]:
        with self._lock:
            counts = sorted(self._counts.items())
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f'{self.name}{{{self.label}="{value}"}} {n}' for value, n in counts]
        return out


# name -> (help, () -> {labels -> value})
Collector = Callable[[], dict[str, float]]


def sample_text(value: float) -> str:
    """A sample's value as the text format writes it, exactly: a whole number in all its
    digits, any other in the fewest digits that read back as the same float (`repr`),
    `+Inf`, `-Inf`, `NaN`. Until review 55 it was `{value:g}`, six significant digits: a
    till on snapshot version 1234567 said `1.23457e+06` (read as 1234570)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Registry:
    def __init__(self) -> None:
        self.checkout_seconds = Histogram(
            "tillpoint_checkout_seconds", "Checkout latency, commit and fsync included."
        )
        # PosAgent calls answered with an error, gRPC and HTTP alike: a till whose
        # sales fail (UNAVAILABLE: a full disk) is seen here, not as ordinary checkouts.
        self.errors = Counter(
            "tillpoint_call_errors_total",
            "PosAgent calls the agent answered with an error, by code (not those refused"
            " before the call: a wrong token, gRPC's size limit, an unknown path).",
            "code",
        )
        self._gauges: dict[str, tuple[str, Collector]] = {}

    def count_error(self, code: str) -> None:
        self.errors.add(code)

    def gauge(self, name: str, help_text: str, collect: Collector) -> None:
        self._gauges[name] = (help_text, collect)

    def render(self) -> str:
        lines = self.checkout_seconds.render() + self.errors.render()
        for name, (help_text, collect) in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            try:
                values = collect()
            except Exception:  # a scrape must never take the agent down
                values = {}
            for label, value in sorted(values.items()):
                shown = sample_text(value)
                lines.append(f"{name}{{{label}}} {shown}" if label else f"{name} {shown}")
        return "\n".join(lines) + "\n"


class Servers:
    """The /metrics servers of one listen, one for each address of its host (as gRPC and
    the HTTP interface bind them: `config.bind_listeners`), each in its daemon thread."""

    def __init__(self, servers: list[ThreadingHTTPServer]) -> None:
        self.servers = servers

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def serve(registry: Registry, host: str, port: int) -> tuple[Servers, int]:
    """Serve /metrics on host:port in daemon threads; returns the servers and bound port."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 5

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    try:
        socks = bind_listeners(host, port)
    except OSError as exc:  # in use, not an address of this machine, a name unknown
        raise TillpointError(
            f"cannot listen on {listen_text(host, port)} for /metrics: {not_resolved(host, exc)}"
            " (set [metrics] listen, or [metrics] enabled = false)"
        ) from None
    servers = []
    for sock in socks:
        server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket, server.address_family = sock, sock.family
        server.server_address = sock.getsockname()
        server.daemon_threads = True
        server.server_activate()  # listen
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        servers.append(server)
    return Servers(servers), int(socks[0].getsockname()[1])
