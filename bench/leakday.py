"""What a long-running `tillpoint run` and its hub keep from call to call (review 46, leak46).

`python -m bench.leakday WORK MINUTES [TILLS] [SEED]`: a hub process (`tillpoint hub
serve`, SQLite) and TILLS enrolled `tillpoint run` processes on 127.0.0.1 (the shipped
settings but their ports: metrics on, the hub's 60 s poll, a network printer whose port
refuses connections), then a mixed day against till-1 for MINUTES after a warm-up:
quotes of growing baskets, holds (the program's TTL is 3 s: many expire), confirms,
cancels, checkouts, refunds, balances and identifications over HTTP and gRPC, known and
never-seen cards and phones (each unknown one new), coupons, fresh receipt ids throughout,
snapshot deltas published at the hub (every 45 s, `LEAKDAY_PUBLISH_S`), `/healthz`,
`/v1/status` and `/metrics` read, and two hub outages (SIGKILL, restarted ~40 s later)
while the POS goes on. The other tills sell and push beside it (the hub's per-till state).

Every process runs the real command line (`tillpoint.agent.cli.main`) under
`python -m bench.leakday serve COUNTS ARGS...`: a daemon thread that, when the file
COUNTS.req appears, writes the process's RSS, `sys.getallocatedblocks()` after a
`gc.collect()`, SQLite's `sqlite3_memory_used`, glibc's `mallinfo2` and its arenas
(`malloc_info`'s heaps), a hub store's SQLite connections, its threads, open files by
kind, and its GC-tracked objects by type to COUNTS.N (nothing else changes; no debug
hook in the product); hub.db's size beside each sample, and a last one of the hub after
`malloc_trim(0)` (review 47). `LEAKDAY_HUB_ENV="NAME=VALUE ..."` sets the hub's own
environment (e.g. `MALLOC_ARENA_MAX=16`, glibc's default on two cores). The report
compares the first sample after the hub's last restart with the last: anything growing
with the calls shows as a type whose count climbs and blocks that do not level off.
Results: docs/PERFORMANCE.md, "What a long-running till and its hub keep" and "The
hub's memory over a day"."""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import difflong as D
from bench.difflong_hub import HubProc, hub_cli, master

HERE = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- inside the processes


def _counts_thread(path: Path) -> None:
    req = path.with_suffix(".req")
    n = 0
    while True:
        time.sleep(0.2)
        if not req.exists():
            continue
        with contextlib.suppress(OSError):
            req.unlink()
        trimmed = _trim_if_asked(path)
        gc.collect()
        by_type: collections.Counter[str] = collections.Counter(
            type(o).__qualname__ for o in gc.get_objects()
        )
        rss = 0
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        doc = {
            "rss_kib": rss,
            "sqlite_kib": _sqlite_used() // 1024,
            "malloc": _mallinfo(),
            "blocks": sys.getallocatedblocks(),
            "arenas": _arenas(),
            "sqlite_conns": _sqlite_connections(),
            "trimmed": trimmed,
            "threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd")),
            "fd_kinds": dict(
                collections.Counter(_fd_kind(fd) for fd in os.listdir("/proc/self/fd"))
            ),
            "types": dict(by_type.most_common(400)),
        }
        n += 1
        tmp = path.with_name(f"{path.name}.{n}.tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        tmp.replace(path.with_name(f"{path.name}.{n}"))


def _sqlite_used() -> int:
    """SQLite's own count of the memory it holds (page caches, prepared statements), from
    the library the sqlite3 module is linked to; -1 when it cannot be read."""
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return int(lib.sqlite3_memory_used())
    except (OSError, AttributeError):
        return -1


def _mallinfo() -> dict[str, int]:
    """glibc's heap: bytes in use (`uordblks`), free in the heap (`fordblks`), mmapped."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                "fsmblks", "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"in_use_kib": info.uordblks // 1024, "free_kib": info.fordblks // 1024,
            "mmap_kib": info.hblkhd // 1024}  # fmt: skip


def _arenas() -> int:
    """glibc's malloc arenas in this process (`malloc_info`'s heaps); -1 when unknown."""
    import ctypes
    import tempfile

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.fdopen.restype = ctypes.c_void_p
        libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        with tempfile.TemporaryFile() as f:
            stream = libc.fdopen(os.dup(f.fileno()), b"w")
            libc.malloc_info(0, stream)
            libc.fclose(stream)
            f.seek(0)
            return f.read().count(b"<heap nr=")
    except (OSError, AttributeError):
        return -1


def _sqlite_connections() -> int:
    """The hub store's open SQLite connections (its `_all` list: one a thread that asked)."""
    return sum(len(o._all) for o in gc.get_objects() if type(o).__name__ == "SqliteHubStore")


def _trim_if_asked(path: Path) -> bool:
    """`malloc_trim(0)` before the counts when the file COUNTS.trim is there (then gone)."""
    import ctypes

    ask = path.with_suffix(".trim")
    if not ask.exists():
        return False
    ask.unlink()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return True


def _fd_kind(fd: str) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "gone"
    return target.split(":")[0] if ":" in target else Path(target).name


def serve(argv: list[str]) -> int:
    from tillpoint.agent.cli import main as cli

    threading.Thread(target=_counts_thread, args=(Path(argv[0]),), daemon=True).start()
    return cli(argv[1:])


def counts_of(path: Path, timeout: float = 120) -> dict[str, Any]:
    for old in path.parent.glob(f"{path.name}.*"):  # a restarted process counts from 1 again
        old.unlink()
    have: set[str] = set()
    path.with_suffix(".req").write_text("", encoding="ascii")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [
            p
            for p in path.parent.glob(f"{path.name}.*")
            if p.name not in have and p.suffix not in (".tmp", ".req")
        ]
        if new:
            doc: dict[str, Any] = json.loads(new[0].read_text(encoding="utf-8"))
            return doc
        time.sleep(0.1)
    raise RuntimeError(f"no counts from {path}")


# ---------------------------------------------------------------- the harness


def free_port() -> int:
    from bench.faults import free_port as fp

    return fp()


def refusing_port() -> int:
    """A port nothing listens on (bound, then closed: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Till(D.LongLived):
    def __init__(self, work: Path, data: Path, device: str, printer_port: int) -> None:
        self.device, self.printer_port = device, printer_port
        self.metrics_port = free_port()
        self.counts = work / f"{device}.counts"
        super().__init__(
            work,
            data,
            command=[sys.executable, "-m", "bench.leakday", "serve", str(self.counts)],
        )

    def config(self, extra_config: str) -> str:
        return (
            f'device_id = "{self.device}"\n'
            f'data_dir = "{self.data}"\n'
            "[server]\n"
            f'listen = "127.0.0.1:{self.grpc_port}"\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
            '[http]\nlisten = "127.0.0.1:0"\n'
            f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {self.printer_port}\n'
        )

    def get(self, path: str, port: int | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.http_port, timeout=40)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


class Hub(HubProc):
    def __init__(self, *a: Any, counts: Path, **k: Any) -> None:
        super().__init__(*a, **k)
        self.counts = counts

    def start(self) -> None:
        import subprocess

        from bench.hubready import wait_hub_serving

        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        # the hub's own settings of the environment, e.g. MALLOC_ARENA_MAX=16 (review 47)
        for pair in os.environ.get("LEAKDAY_HUB_ENV", "").split():
            name, _, value = pair.partition("=")
            env[name] = value
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.leakday",
                    "serve",
                    str(self.counts),
                    "hub",
                    "serve",
                    "--hub-dir",
                    str(self.root),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=HERE,
            )
        if not wait_hub_serving(f"127.0.0.1:{self.port}", self.enrollment, 60, self.proc):
            raise RuntimeError("hub did not start")


def card(rng: random.Random) -> str:
    """A card no snapshot has: a new EAN-13, a new phone or new digits each time."""
    kind = rng.random()
    if kind < 0.4:
        return _ean13(f"27799{rng.randrange(10**7):07d}")
    if kind < 0.7:
        return f"+7916{rng.randrange(10**7):07d}"
    return str(rng.randrange(10**7, 10**9))


def _ean13(stem: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(stem))
    return stem + str((10 - total % 10) % 10)


class Day:
    """The POS's mixed day against one till (HTTP and gRPC), counted."""

    def __init__(self, rng: random.Random, till: Till) -> None:
        self.rng, self.till = rng, till
        self.n = 0
        self.open: dict[str, dict[str, Any]] = {}
        self.held: list[str] = []
        self.sold: list[dict[str, Any]] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def call(self, name: str, body: Any) -> tuple[str, Any]:
        via = "grpc" if self.rng.random() < 0.35 else "http"
        try:
            got = D.long_answer(self.till, name, body, via)
        except Exception as exc:
            got = ("raised", repr(exc)[:200])
        self.counts[f"{name}/{via}/{got[0]}"] += 1
        return got

    def body(self, rid: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.rng
        known = r.random() < 0.6
        b: dict[str, Any] = {
            "receiptId": rid,
            "storeId": "s1",
            "tillId": "t1",
            "at": D.datetime.now(D.ZONE).isoformat(),
            "card": r.choice(D.CARDS[:7]) if known else card(r),
            "lines": lines,
            "redeemPoints": r.choice([0, 0, 10, 50, -1]),
        }
        if r.random() < 0.25:
            b["coupons"] = r.sample([f"CPN{i}" for i in range(12)] + ["NOPE"], 1)
        if r.random() < 0.1:
            b["explain"] = True
        return b

    def basket(self, k: int) -> list[dict[str, Any]]:
        r = self.rng
        picks = r.sample(D.LINES, k)
        # weighed goods: a quantity no line had before, now and then
        out = []
        for s, q, p in picks:
            qty = r.choice(q)
            if "." in qty and r.random() < 0.5:
                qty = f"0.{r.randrange(1, 1000):03d}"
            out.append({"sku": s, "qty": qty, "priceMinor": p})
        return out

    def step(self) -> None:
        r = self.rng
        roll = r.random()
        if roll < 0.22 or not self.open:
            self.n += 1
            rid = f"r-{self.n}-{r.randrange(10**6)}"
            self.open[rid] = self.body(rid, self.basket(1))
            self.call("quote", self.open[rid])
        elif roll < 0.40:
            rid = r.choice(list(self.open))
            b = self.open[rid]
            have = {x["sku"] for x in b["lines"]}
            b["lines"] += [x for x in self.basket(2) if x["sku"] not in have]
            self.call("quote", b)
        elif roll < 0.50:
            rid = r.choice(list(self.open))
            got = self.call("hold", self.open[rid])
            if got[0] == "ok":
                self.held.append(rid)
        elif roll < 0.56 and self.held:
            rid = self.held.pop(r.randrange(len(self.held)))
            body = {"receiptId": rid, "fiscalDocument": f"FD-{rid}"}
            if self.call("confirm", body)[0] == "ok" and rid in self.open:
                self.sold.append(self.open.pop(rid))
        elif roll < 0.60 and self.held:
            rid = self.held.pop(r.randrange(len(self.held)))
            self.call("cancel", {"receiptId": rid})
            self.open.pop(rid, None)
        elif roll < 0.70:
            rid = r.choice(list(self.open))
            if self.call("checkout", self.open[rid])[0] == "ok":
                self.sold.append(self.open.pop(rid))
        elif roll < 0.75 and self.sold:
            b = r.choice(self.sold[-200:])
            pick = r.choice(b["lines"])
            self.call(
                "refund",
                {
                    "refundId": f"f-{b['receiptId']}-{r.randrange(10**6)}",
                    "receiptId": b["receiptId"],
                    "at": D.datetime.now(D.ZONE).isoformat(),
                    "lines": [{"sku": pick["sku"], "qty": pick["qty"]}],
                },
            )
        elif roll < 0.83:
            text = r.choice(D.CARDS) if r.random() < 0.5 else card(r)
            self.call("identify", {"text": text})
        elif roll < 0.90:
            text = r.choice(D.CARDS[:7]) if r.random() < 0.5 else card(r)
            self.call("balance", {"card": text, "at": D.datetime.now(D.ZONE).isoformat()})
        elif roll < 0.93:
            status, _ = self.till.get(r.choice(["/healthz", "/v1/status"]))
            self.counts[f"get/{status}"] += 1
        elif roll < 0.94:
            status, _ = self.till.get("/metrics", self.till.metrics_port)
            self.counts[f"metrics/{status}"] += 1
        elif roll < 0.96:
            self.call("quote", {"receiptId": "", "lines": "nope"})  # refused
        # open receipts left behind (abandoned baskets) are let go, as a POS does
        if len(self.open) > 40:
            for rid in list(self.open)[:10]:
                self.open.pop(rid)
        del self.sold[:-500]


def side_tills(tills: list[Till], stop: threading.Event, seed: int) -> None:
    """The other tills sell beside till-1: their pushes and holds reach the hub."""
    days = [Day(random.Random(seed + i), t) for i, t in enumerate(tills)]
    while not stop.is_set() and days:
        for d in days:
            d.step()
        time.sleep(0.2)


def publisher(root: Path, work: Path, stop: threading.Event, hub_up: threading.Event) -> None:
    """A delta published at the hub now and then (the tills pull it)."""
    rng = random.Random(7)
    n = 0
    while not stop.wait(float(os.environ.get("LEAKDAY_PUBLISH_S", "45"))):
        if not hub_up.is_set():
            continue
        n += 1
        offer = copy.deepcopy(rng.choice(D.OFFERS))
        if "value" in offer and offer["kind"] != "MULTIBUY":
            offer["value"] = str(rng.choice([5, 10, 20])) if "PERCENT" in offer["kind"] else "500"
        path = work / f"delta-{n}.json"
        path.write_text(json.dumps({"offers": [offer]}, ensure_ascii=False), encoding="utf-8")
        try:
            hub_cli(root, "import", str(path), "--publish")
        except RuntimeError as exc:
            print("publish failed:", exc, flush=True)


def main(work: Path, minutes: float, tills_n: int, seed: int) -> int:
    import shutil

    from tillpoint.sync.loopback import LoopbackHub

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    root = work / "hub"
    setup = LoopbackHub(root, data=master(D.SNAPSHOT), start=False)
    port = free_port()
    setup.port = port
    datas = [work / f"till-{i + 1}" for i in range(tills_n)]
    enrollments = [setup.enroll(f"till-{i + 1}", d) for i, d in enumerate(datas)]
    setup.server.store.close()
    hub = Hub(root, port, work / "hub.log", enrollments[0], counts=work / "hub.counts")
    hub.start()
    printer = refusing_port()
    tills = []
    for i, d in enumerate(datas):
        sub = work / f"w{i + 1}"
        sub.mkdir()
        tills.append(Till(sub, d, f"till-{i + 1}", printer))
    main_till = tills[0]
    samples: list[dict[str, Any]] = []
    stop, hub_up = threading.Event(), threading.Event()
    hub_up.set()
    rng = random.Random(seed)
    day = Day(rng, main_till)
    t0 = time.monotonic()
    while json.loads(main_till.get("/v1/status")[1])["cacheVersion"] < 1:
        if time.monotonic() - t0 > 120:
            raise RuntimeError("no first snapshot")
        time.sleep(0.2)
    side = threading.Thread(target=side_tills, args=(tills[1:], stop, seed + 100), daemon=True)
    pub = threading.Thread(target=publisher, args=(root, work, stop, hub_up), daemon=True)
    side.start()
    pub.start()

    def sample(label: str) -> None:
        doc = {
            "label": label,
            "settled": settled,
            "calls": sum(day.counts.values()),
            "t": round(time.monotonic() - t_start, 1),
            "till": counts_of(main_till.counts),
            "hub": counts_of(hub.counts),
            "hub_db_kib": sum(f.stat().st_size for f in root.glob("hub.db*") if f.is_file())
            // 1024,
        }
        samples.append(doc)
        print(json.dumps(dict(sorted(day.counts.items()))), flush=True)
        print(
            f"{label:>10} calls {doc['calls']:6d} t {doc['t']:7.1f}s"
            f"  till rss {doc['till']['rss_kib'] / 1024:6.1f} MiB blocks {doc['till']['blocks']:8d}"
            f" thr {doc['till']['threads']:3d} fds {doc['till']['fds']:3d}"
            f" sql {doc['till']['sqlite_kib'] // 1024} malloc {doc['till']['malloc']}"
            f"  hub rss {doc['hub']['rss_kib'] / 1024:6.1f} MiB blocks {doc['hub']['blocks']:8d}"
            f" sql {doc['hub']['sqlite_kib'] // 1024} malloc {doc['hub']['malloc']}"
            f" thr {doc['hub']['threads']:3d} fds {doc['hub']['fds']:3d}"
            f" arenas {doc['hub'].get('arenas')} conns {doc['hub'].get('sqlite_conns')}"
            f" hub.db {doc['hub_db_kib']} KiB",
            flush=True,
        )

    settled = False
    t_start = time.monotonic()
    warm_s = min(120.0, minutes * 60 / 5)
    try:
        while time.monotonic() - t_start < warm_s:
            day.step()
        sample("warm")
        end = time.monotonic() + minutes * 60
        outages = [time.monotonic() + minutes * 60 * f for f in (0.1, 0.25)]
        next_sample = time.monotonic() + 60
        down_since: float | None = None
        while time.monotonic() < end or down_since is not None:
            day.step()
            now = time.monotonic()
            if outages and now >= outages[0] and down_since is None:
                outages.pop(0)
                hub.kill()
                hub_up.clear()
                down_since = now
                print("hub killed", flush=True)
            if down_since is not None and now - down_since > 40:
                hub.start()
                hub_up.set()
                down_since = None
                print("hub back", flush=True)
                settled = not outages
            if now >= next_sample and down_since is None:
                sample("day")
                next_sample = now + 60
        # let the outbox drain and the holds expire, then the last sample
        t_end = time.monotonic()
        while time.monotonic() - t_end < 60:
            st = json.loads(main_till.get("/v1/status")[1])
            if st["outboxDepth"] == 0:
                break
            time.sleep(0.5)
        time.sleep(5)
        sample("end")
        hub.counts.with_suffix(".trim").write_text("", encoding="ascii")
        sample("trimmed")  # the hub after malloc_trim(0): what glibc gives back
    finally:
        stop.set()
        side.join(30)
        for t in tills:
            t.stop()
        hub.stop()
    (work / "samples.json").write_text(json.dumps(samples), encoding="utf-8")
    print(json.dumps(dict(sorted(day.counts.items()))))
    report(samples)
    return 0


def report(samples: list[dict[str, Any]]) -> None:
    """The first sample after the hub's last restart against the last one (the hub is a
    new process after each outage), and each sample's line."""
    samples = [s for s in samples if s["label"] != "trimmed"]
    settled = [s for s in samples if s.get("settled")] or samples
    first, last = settled[0], settled[-1]
    for who in ("till", "hub"):
        a, b = first[who], last[who]
        print(
            f"{who}: rss {a['rss_kib']} -> {b['rss_kib']} KiB, blocks {a['blocks']} ->"
            f" {b['blocks']}, threads {a['threads']} -> {b['threads']}, fds {a['fds']} ->"
            f" {b['fds']} over {last['calls'] - first['calls']} calls"
        )
        grown = sorted(
            ((b["types"].get(k, 0) - a["types"].get(k, 0), k) for k in b["types"]),
            reverse=True,
        )[:15]
        print(f"  types grown most: {grown}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2:]))
    if sys.argv[1] == "report":
        report(json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")))
        sys.exit(0)
    sys.exit(
        main(
            Path(sys.argv[1]),
            float(sys.argv[2]),
            int(sys.argv[3]) if len(sys.argv) > 3 else 3,
            int(sys.argv[4]) if len(sys.argv) > 4 else 46,
        )
    )
