"""Review 35 (memo35): a long-lived `tillpoint run` with the SHIPPED settings prices like a
fresh one, through store-days, full snapshots, hub outages and a printer that drops.

Review 32's differential (tests/test_review32_long32.py) drives ONE real `tillpoint run`
process through HTTP, gRPC and the forwarded CLI and compares each answer with a FRESH
process's on a copy of the data directory made just before the call. What it left out,
walked here with the same harness:

- the settings: only what a till must be told is set (the device, the data directory,
  the ports of its gRPC, HTTP and metrics servers, and its coupon printer's address); the
  hub's address is the enrolment's. Every other value is the shipped default
  (packaging/tillpoint.example.toml): the sync's backoffs and deadlines, the 15 s hold
  timer, the printer's retries, probes and timeouts, the metrics server on;
- a real network printer (`printer.virtual.VirtualPrinter`, a raw TCP listener that
  answers ESC/POS status questions) that is switched off, drops connections mid-job and
  comes back while coupons are queued;
- the till's clock (the run's clock file: `bench/difflong_doors.py serve`) crossing the
  store's midnight (the store-day of the offline limit, CONTRACT §5 step 4, the
  activation and expiry of points, §16) and UTC's midnight (03:00 in the store's zone),
  with the hub away or not;
- full snapshots from the hub (a till away while the hub published more versions than
  it keeps deltas for takes the newest full snapshot: a new generation of its cache,
  switched in under the running process);
- the hub stopped and started: after it is back, the till's outbox is drained within the
  shipped settings' promise (docs/ARCHITECTURE.md, "Sync with the hub": the link notices
  the hub within its reconnect backoff of at most 3 s, then every sync backoff is reset
  and retried after a jitter of up to `backoff_base_s`, 0.5 s; the push loop looks at the
  outbox every `push_check_s`, 1 s, and a push has the 5 s call deadline);
- after the walk: the hub holds every sale and refund of the till's journal exactly once,
  each customer's points at the hub are what the till says, the outbox is empty, nothing
  is set aside, and no hold is left ACTIVE at the hub for a receipt the till does not hold.

After every event that is not a call (a delta, a full snapshot, the hub or the printer
going or coming back, the clock crossing midnight) a quote, a balance and an
identification are compared too. Each answer must be the fresh process's, every field
(HTTP: byte for byte; CONTRACT §5, §6, §9, §11, §13, §16), with review 32's exceptions and
no others:

- the first call after an NTP step of the wall clock is not compared (the long-lived
  process follows the step, moving its open holds; a fresh one, with no mark, cannot see
  it): one uncompared quote follows each step;
- `status` is not compared (its sync counters and the devices' live states are what only
  the running service knows);
- the hub's answers to a call (authorise, reachable) are the long-lived process's, played
  back to the fresh one: the hub cannot be asked twice for one hold.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench import difflong as dl

from .conftest import free_port
from .test_review32_long32 import DoorsSequence

# docs/ARCHITECTURE.md, "Sync with the hub" and sync/client.py's HubLink: the link notices
# the hub again within its reconnect backoff (at most 3 s), every sync backoff is reset
# and retried after a jitter of up to 0.5 s, the pusher looks every 1 s, a push has 5 s.
PROMISED_DRAIN_S = 3.0 + 0.5 + 1.0 + 5.0


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


class ShippedRun(dl.LongLived):
    """`tillpoint run` with the shipped settings: only its identity, its data directory,
    the ports it listens on and its printer's address are set."""

    START_S = 60.0

    def __init__(self, work: Path, data: Path, command: list[str], printer_port: int) -> None:
        self.printer_port = printer_port
        super().__init__(work, data, command=command)

    def config(self, extra_config: str) -> str:
        return (
            f'device_id = "{dl.DEVICE}"\n'
            f'data_dir = "{self.data}"\n'
            f'[server]\nlisten = "127.0.0.1:{self.grpc_port}"\n'
            '[http]\nlisten = "127.0.0.1:0"\n'
            f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {self.printer_port}\n'
        )


class StoreDaySequence(DoorsSequence):
    """Review 32's seeded walk through every door, with the shipped settings, a real
    printer, store-days and full snapshots."""

    # (no CLI restarts here: review 32 walks them; a restart would end the backoffs)
    ACTIONS = [a for a in DoorsSequence.ACTIONS if a != "restart"] + [
        "midnight",
        "midnight",
        "full",
        "printer",
        "printer",
        "outage",
    ]

    # review 32's set-up (DoorsSequence.__init__), but the store's evening (midnight comes
    # within the first steps) and the hub on the till's clock: a hub publishes each
    # customer's balance as at its `issuedAt`, which must not be in the till's future (a
    # real hub and till agree on the time within seconds)
    START_AT = "2026-11-23T23:10:00+03:00"
    HUB_ON_TILL_CLOCK = True
    TRACE_ENV = "MEMO35_TRACE"

    def __init__(self, seed: int, work: Path, store: str | None = None) -> None:
        from tillpoint.printer.virtual import VirtualPrinter

        self.printer = VirtualPrinter()
        self.printer.start()
        self.printer_on = True
        self.drains: list[float] = []  # seconds from the hub back to the outbox empty
        self.lost: list[str] = []  # problems that are not one answer's
        self.problems: list[str] = []
        self.backup: dict[str, Any] | None = None  # the hub's master data at its backup
        self.on_postgres = bool(store)
        super().__init__(seed, work, store)

    def start(self) -> None:
        command = [sys.executable, "-m", "bench.difflong_doors", "serve"]
        command += [str(self.clock.path), str(self.record)]
        self.ll = ShippedRun(self.work, self.data, command, self.printer.port)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.ll.http_port, timeout=40)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.printer.stop()

    # ------------------------------------------------------------ what the till holds

    def outbox_depth(self) -> int:
        conn = _ro(self.data / "ledger.db")
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()

    def journal(self) -> list[tuple[str, int, str]]:
        conn = _ro(self.data / "ledger.db")
        try:
            rows = conn.execute("SELECT device_id, seq, ref_id FROM journal").fetchall()
        finally:
            conn.close()
        return sorted((str(d), int(s), str(r)) for d, s, r in rows)

    def till_holds(self) -> set[str]:
        conn = _ro(self.data / "ledger.db")
        try:
            rows = conn.execute("SELECT receipt_id FROM receipt_life WHERE state = 'HELD'")
            return {str(r) for (r,) in rows}
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        """`GET /v1/status` (on a connection of its own): the document, or {"error": …}."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ll.http_port, timeout=40)
        try:
            conn.request("GET", "/v1/status")
            resp = conn.getresponse()
            doc: dict[str, Any] = json.loads(resp.read())
        finally:
            conn.close()
        return doc if resp.status == 200 else {"error": doc}

    def hub_sql(self, sql: str) -> list[tuple[Any, ...]]:
        """A read of the hub's store (SQLite or PostgreSQL) as the hub's code reads it."""
        with self.hub.store._reading() as tx:
            return [tuple(row) for row in tx.execute(sql).fetchall()]

    # ------------------------------------------------------------ the steps

    def do(self, action: str) -> None:
        if action == "midnight":
            self.count("action/midnight")
            self.midnight()
        elif action == "full":
            self.count("action/full")
            if not self.hub_up:
                self.hub_back()
            if self.on_postgres:  # (a PostgreSQL backup is the operator's pg_dump: not here)
                self.do("burst")
            else:
                self.full_from_the_hub()
            self.probe()
        elif action == "printer":
            self.count("action/printer")
            self.printer_event()
            self.probe()
        elif action == "outage":  # sales while the hub is away, then the hub back
            self.count("action/outage")
            super().do("down")
            for _ in range(3):
                super().do(self.rng.choice(["checkout", "hold", "confirm", "refund"]))
            self.hub_back()
        elif action == "burst" and self.on_postgres:
            # (a PostgreSQL hub's store is closed with it: its data change while it serves)
            self.count("action/burst")
            for _ in range(3):
                self.delta()
            self.probe()
        elif action == "up" and not self.hub_up:
            self.count("action/up")
            self.hub_back()
        else:
            super().do(action)
            if action in ("down", "delta", "tick"):
                self.probe()

    def full_from_the_hub(self) -> None:
        """A full snapshot from the hub, switched in under the running process. A hub
        sends a delta to every till whose cache holds a version it published
        (`SnapshotBuilder.choose`), so the hub is restored from a backup (docs/HUB.md,
        "Backups"): the first "full" takes the backup (the hub's database and master
        data), the next stops the hub, puts the backup back and starts it. The restored
        hub numbers its publications from the backup's; once it publishes above the
        till's version, the delta's base is the till's version number with another
        `issuedAt` and the till pulls the full snapshot (docs/PROTOCOL.md,
        "PullSnapshot"), and its outbox pushes again what the hub lost (`sync_sent`)."""
        import copy

        from tillpoint.sync.loopback import wait_for
        from tillpoint.sync.pull import cache_version

        db = self.hub.root / "hub.db"
        backup = self.work / "hub-backup.db"
        if self.backup is None:
            src = sqlite3.connect(db, timeout=10)
            dst = sqlite3.connect(backup)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
            self.backup = copy.deepcopy(self.master)
            self.count("full/backup")
            return
        self.hub.stop()
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        backup.replace(db)
        self.master, self.backup = self.backup, None
        self.hub.restart()
        self.hub_up = True
        generation = self.generation()
        have = cache_version(self.data)
        while self.hub.store.latest().version <= have:
            self.clock.passes(1)
            self.hub.publish()
        wanted = self.hub.store.latest().version
        if not wait_for(lambda: cache_version(self.data) >= wanted, timeout=90):
            self.lost.append(f"the full snapshot of version {wanted} was not taken")
        self.count("full/switched" if self.generation() != generation else "full/not switched")

    def probe(self) -> None:
        """A quote, a balance and an identification after an event that is not a call."""
        r = self.rng
        body = self.bodies[self.pick(self.bodies)] if self.bodies else self.new_body()
        self.compare("quote", {**body, "at": self.at()})
        card = r.choice(dl.CARDS[:6])
        self.compare(
            "balance", {"card": card, "at": self.at()} if r.random() < 0.5 else {"card": card}
        )
        self.compare("identify", {"text": r.choice(dl.CARDS)})

    def passes_to(self, target: datetime) -> None:
        seconds = (target - self.clock()).total_seconds()
        if seconds <= 0:
            return
        self.clock.passes(seconds)
        if seconds >= 60:  # (a delta may have made the TTL 60 s): every hold may be out
            self.closed |= self.held
            self.held = set()

    def midnight(self) -> None:
        """The store's midnight (a new store-day) or UTC's (03:00 in the store), crossed
        with a hold open, OFFLINE redemptions of the day before and, half the time, the
        hub away."""
        r = self.rng
        local = self.clock().astimezone(dl.ZONE)
        if r.random() < 0.7:
            boundary = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            if local.hour < 3 and r.random() < 0.5:
                boundary = local.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            self.count("midnight/store")
        else:
            day = local.astimezone(UTC) + timedelta(days=1)
            boundary = day.replace(hour=0, minute=0, second=0, microsecond=0)
            self.count("midnight/utc")
        if r.random() < 0.5 and self.hub_up:
            super().do("down")
        self.passes_to(boundary - timedelta(seconds=r.choice([2, 20, 90])))
        for action in ("checkout", "hold", "balance"):  # the day before's last sales
            self.count(f"action/{action}")
            super().do(action)
        self.probe()
        self.passes_to(boundary + timedelta(seconds=r.choice([0, 1, 30])))
        self.probe()
        for action in ("confirm", "checkout", "refund"):  # the new day's first ones
            super().do(action)
        if not self.hub_up and r.random() < 0.6:
            self.hub_back()

    def printer_event(self) -> None:
        r = self.rng
        what = r.choice(["off", "on", "drops", "clear"])
        if what == "off" and self.printer_on:
            self.printer.stop()
            self.printer_on = False
        elif what == "drops":
            self.printer.close_after_bytes = r.choice([1, 20, 200])
        elif what == "clear":
            self.printer.close_after_bytes = None
        if what in ("on", "clear") and not self.printer_on:
            self.printer.start()
            self.printer_on = True
        self.count(f"printer/{what}")
        self.counts["printer/documents"] = len(self.printer.documents)

    def hub_back(self) -> None:
        """The hub started again; with sales waiting, the outbox drains within the shipped
        settings' promise (measured from the hub's listening again)."""
        from tillpoint.sync.loopback import wait_for

        if self.hub_up:
            return
        waiting = self.outbox_depth()
        self.hub.restart()
        self.hub_up = True
        began = time.monotonic()
        if waiting:
            drained = wait_for(lambda: self.outbox_depth() == 0, timeout=60, every=0.05)
            took = time.monotonic() - began
            self.drains.append(took)
            self.count("drain/measured")
            if not drained:
                self.lost.append(f"outbox of {waiting} not drained 60 s after the hub was back")
        self.probe()

    # ------------------------------------------------------------ the end

    def backdated(self) -> set[str]:
        """The customers with a sale or refund the hub has not counted in the till's
        snapshot yet, dated before that snapshot's `issuedAt` (the POS sent a receipt of
        days before: the walk's bodies keep their `at`). Its spend is taken off the
        batches the till knows now, the hub's off those of its `at`, which may have
        expired since and which the snapshot no longer lists: the two balances may differ
        until the hub's next publication counts it (docs/CONTRACT.md §5, the balance's
        decision, review 35)."""
        cache = _ro(self.data / "cache.db")
        try:
            issued = dict(cache.execute("SELECT key, value FROM meta"))["issued_at"]
            rows = cache.execute(
                "SELECT seq FROM applied_through WHERE device_id = ?", (dl.DEVICE,)
            )
            counted = int(next(iter(rows), (0,))[0])
        finally:
            cache.close()
        ledger = _ro(self.data / "ledger.db")
        try:
            rows = ledger.execute(
                "SELECT customer_id, at FROM journal WHERE device_id = ? AND seq > ?",
                (dl.DEVICE, counted),
            ).fetchall()
        finally:
            ledger.close()
        issued_at = datetime.fromisoformat(issued)
        return {str(c) for c, t in rows if c and datetime.fromisoformat(t) < issued_at}

    def same_points(self, when: str) -> list[str]:
        bad: list[str] = []
        holders = {c["customerId"]: c["number"] for c in self.master["cards"]
                   if c.get("status", "ACTIVE") == "ACTIVE"}  # fmt: skip
        at = self.clock()
        backdated = self.backdated() if when.startswith("before") else set()
        for cid, card in sorted(holders.items()):
            if cid in backdated:  # CONTRACT §5's balance rule: until the hub counts it
                self.count("points/backdated")
                continue
            hub = self.hub.store.balance(cid, at)
            got = self.ll.http("/v1/balance", {"card": card, "at": at.isoformat()})
            doc = got[1] if got[0] == "ok" else {}
            says = int(doc.get("availablePoints", -1)) + int(doc.get("pendingPoints", 0))
            if got[0] != "ok" or says != hub.available + hub.pending or hub.held:
                bad.append(f"{when}: {cid} ({card}): the till {got}, the hub {hub}")
        return bad

    def settle(self) -> list[str]:
        """After the walk: the hub's figures are the till's."""
        from tillpoint.sync.loopback import wait_for
        from tillpoint.sync.pull import cache_version

        bad = list(self.lost)
        if not self.hub_up:
            self.hub_back()
        if not wait_for(lambda: self.outbox_depth() == 0, timeout=90, every=0.2):
            bad.append(f"outbox not empty: {self.outbox_depth()}")
        status = self.status()  # (a POST of it was a 405 until review 38: never checked)
        if "mode" not in status or status["setAside"] != 0 or status.get("syncError"):
            bad.append(f"set aside or sync error: {json.dumps(status)[:400]}")
        # every sale and refund once at the hub, and only those
        journal = self.journal()
        hub_rows = sorted(
            (str(d), int(s), str(r))
            for d, s, r in self.hub_sql("SELECT device_id, seq, ref_id FROM transactions")
        )
        if hub_rows != journal:
            bad.append(
                f"hub ≠ journal: hub only {sorted(set(hub_rows) - set(journal))[:5]},"
                f" till only {sorted(set(journal) - set(hub_rows))[:5]}"
            )
        twice = [ref for ref, n in Counter(r for _, _, r in hub_rows).items() if n > 1]
        if twice:
            bad.append(f"at the hub twice: {twice[:5]}")
        # no hold left at the hub that the till forgot (the till's releases are sent again
        # by its 15 s timer, and at once when the hub answers again)

        def forgotten() -> list[str]:
            held = self.till_holds()
            return [
                str(rid)
                for (rid,) in self.hub_sql(
                    "SELECT receipt_id FROM holds"
                    f" WHERE state = 'ACTIVE' AND device_id = '{dl.DEVICE}'"
                )
                if str(rid) not in held
            ]

        if not wait_for(lambda: not forgotten(), timeout=45, every=0.2):
            bad.append(f"holds ACTIVE at the hub the till does not hold: {forgotten()[:5]}")
        # each customer's points: the hub's are the till's, before the hub publishes them
        # and after the till pulled that publication
        # (the clock stepped back after the hub published: the till's snapshot gives each
        # balance as at its `issuedAt`, still ahead; a balance asked for an earlier time
        # cannot bring back a batch that expired in between, CONTRACT §3, §5)
        cache = _ro(self.data / "cache.db")
        try:
            issued = dict(cache.execute("SELECT key, value FROM meta"))["issued_at"]
        finally:
            cache.close()
        ahead = (datetime.fromisoformat(issued) - self.clock()).total_seconds()
        if ahead >= 0:
            self.passes_to(self.clock() + timedelta(seconds=ahead + 1))
        bad += self.same_points("before the publish")
        latest = self.hub.publish()
        if not wait_for(lambda: cache_version(self.data) >= latest, timeout=90, every=0.1):
            bad.append(f"the till did not pull version {latest}")
        bad += self.same_points("after the publish")
        return bad


def run_store_days(
    seed: int, steps: int, work: Path, script: tuple[str, ...] = (), store: str | None = None
) -> Any:
    work.mkdir(parents=True, exist_ok=True)
    seq = StoreDaySequence(seed, work, store)
    try:
        for action in script:
            seq.do(action)
        for _ in range(steps):
            seq.step()
        seq.problems = seq.settle()
    finally:
        seq.close()
    return seq


# every kind of event once, in a row (the choices within each are seeded)
SCRIPT35 = tuple(
    " ".join(
        [
            "new hold checkout midnight printer confirm checkout outage hold full",
            "printer checkout delta midnight identify full balance refund cancel step hold",
        ]
    ).split(" ")
)


def _check(seq: Any) -> None:
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert not seq.problems, "\n".join(seq.problems)
    assert all(code == 0 for code in seq.stops), seq.stops
    assert seq.drains and max(seq.drains) <= PROMISED_DRAIN_S, (seq.drains, seq.counts)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_shipped_run_answers_as_a_fresh_process_through_store_days(tmp_path: Path) -> None:
    """CONTRACT §3, §5, §6, §7, §9, §11, §13, §16: the script above, then seeded steps."""
    seq = run_store_days(3500, 30, tmp_path / "work", SCRIPT35)
    _check(seq)
    assert seq.counts.get("midnight/store", 0) >= 1, seq.counts
    assert seq.counts.get("full/switched", 0) == 1, seq.counts
    assert seq.compared >= 50, seq.counts


@pytest.mark.slow
@pytest.mark.timeout(2400)  # several minutes alone; a process a call on a busy machine
@pytest.mark.parametrize("seed", [3501, 3502])
def test_a_shipped_run_answers_as_a_fresh_process_through_a_long_walk(
    tmp_path: Path, seed: int
) -> None:
    """~300 steps: every door, deltas and full snapshots, outages, store-days, a printer
    that drops; CONTRACT §3, §5, §7, §9, §11, §13, §16."""
    seq = run_store_days(seed, 300, tmp_path / "work")
    _check(seq)
    assert seq.counts.get("midnight/store", 0) >= 3, seq.counts


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_shipped_run_with_a_postgresql_hub_answers_as_a_fresh_process(
    tmp_path: Path, pg_url: str
) -> None:
    """The script and a few seeded steps with the hub on PostgreSQL (`hub migrate` first,
    as before a hub starts); the hub's figures read through its store."""
    from tillpoint.sync.hub_postgres import migrate

    migrate(pg_url)
    seq = run_store_days(3503, 20, tmp_path / "work", SCRIPT35, store=pg_url)
    _check(seq)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_after_a_long_outage_the_outbox_drains_within_the_promised_seconds(
    tmp_path: Path,
) -> None:
    """docs/ARCHITECTURE.md, "Sync with the hub": a till drains its outbox seconds after
    an outage, not after a 60 s backoff. The hub is away for 75 s while the till sells
    (its push backoff has grown to its 60 s cap, gRPC's reconnect backoff to its 3 s),
    then starts again: the outbox is empty within the promise, with the shipped settings;
    every answer, and the hub's figures at the end, as ever (CONTRACT §9, §16)."""
    work = tmp_path / "work"
    work.mkdir()
    seq = StoreDaySequence(3504, work)
    try:
        for action in ("new", "checkout", "hold", "confirm"):
            seq.do(action)
        seq.do("down")
        for action in ("checkout", "checkout", "hold", "refund"):
            seq.do(action)
        time.sleep(40.0)
        seq.do("checkout")  # a sale in the middle of the outage: a push fails again
        time.sleep(35.0)
        seq.hub_back()
        seq.problems = seq.settle()
    finally:
        seq.close()
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert not seq.problems, "\n".join(seq.problems)
    assert len(seq.drains) == 1 and seq.drains[0] <= PROMISED_DRAIN_S, seq.drains


if __name__ == "__main__":  # python -m tests.test_review35_memo35 SEED STEPS [script]
    import shutil

    t0 = time.monotonic()
    where = Path("/tmp") / f"memo35-{sys.argv[1]}"
    shutil.rmtree(where, ignore_errors=True)
    script = SCRIPT35 if "script" in sys.argv else ()
    s = run_store_days(int(sys.argv[1]), int(sys.argv[2]), where, script)
    print(f"{s.compared} compared, {len(s.mismatches)} mismatches, {time.monotonic() - t0:.1f} s")
    print(json.dumps(s.counts, sort_keys=True), s.stops, "drains", s.drains)
    for m in s.mismatches[:10]:
        print("MISMATCH", m)
    for p in s.problems:
        print("PROBLEM", p)
