"""Differential harness (long21), phase B: `tillpoint run` enrolled with a hub process
(shipped sync defaults), hub snapshots pushed mid-run, a hub outage (SIGKILL, restart)."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import difflong as D

HUB_ONLY = ("version", "baseVersion", "issuedAt", "appliedThrough")


def master(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in HUB_ONLY}


class HubProc:
    def __init__(self, root: Path, port: int, log: Path, enrollment: Any) -> None:
        """`enrollment`: a device's, to ask the hub's health whether it serves."""
        self.root, self.port, self.log = root, port, log
        self.enrollment = enrollment
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    D.EXE,
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
            )
        from bench.hubready import wait_hub_serving

        # ready when the hub says SERVING, not when its port accepts (review 44, flake44)
        if not wait_hub_serving(f"127.0.0.1:{self.port}", self.enrollment, 60, self.proc):
            raise RuntimeError("hub did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def hub_cli(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    done = subprocess.run(
        [D.EXE, "hub", *args, "--hub-dir", str(root)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"hub {args}: {done.stderr}")
    return done.stdout


def fresh_online(copy_dir: Path, call: str, body: Any, via: str) -> tuple[str, Any]:
    """The CLI's --local path in-process: the copy's own hub link (probe), `run`'s rules."""
    from tillpoint.agent.app import agent_with_hub, local_hub
    from tillpoint.agent.config import Settings

    D.clear_module_caches()
    settings = Settings(device_id=D.DEVICE, data_dir=copy_dir)
    hub = local_hub(settings)
    agent = agent_with_hub(settings, hub)
    try:
        return D.answer_of(agent, call, body, via)
    finally:
        agent.close()
        if hub is not None:
            hub.close()


class HubSequence(D.Sequence):
    def __init__(self, *a: Any, hub: HubProc, root: Path, **k: Any) -> None:
        super().__init__(*a, **k)
        self.hub, self.root = hub, root
        self.hub_up = True
        self.master = master(copy.deepcopy(D.SNAPSHOT))
        self.events: list[str] = []

    def status(self) -> dict[str, Any]:
        self.ll.conn.request("GET", "/v1/status")
        resp = self.ll.conn.getresponse()
        return json.loads(resp.read())

    def compare(self, call: str, body: Any, via: str | None = None) -> tuple[str, Any]:
        via = via or ("grpc" if self.rng.random() < 0.25 else "http")
        if self.hub_up and call not in ("quote", "identify", "balance"):
            got = D.long_answer(self.ll, call, body, via)  # online commits: checked at the hub
            self.calls += 1
            self.counts[f"{call}/{via}/{got[0]}/online"] = (
                self.counts.get(f"{call}/{via}/{got[0]}/online", 0) + 1
            )
            return got
        copy_dir = self.work / "copy"
        wall0 = datetime.now(UTC)
        D.copy_state(self.data, copy_dir)
        expiries = D.held_expiries(copy_dir)
        t0 = time.monotonic()
        got = D.long_answer(self.ll, call, body, via)
        want = fresh_online(copy_dir, call, body, via)
        self.calls += 1
        self.counts[f"{call}/{via}/{got[0]}/online"] = (
            self.counts.get(f"{call}/{via}/{got[0]}/online", 0) + 1
        )
        if any(abs(t0 - (h + D.PROGRAM_TTL)) < 1.0 for h in self.held.values()):
            self.skipped += 1
            return got
        if D.expiry_within(expiries, wall0, datetime.now(UTC)):
            self.skipped += 1  # as read from the ledger (`D.held_expiries`, review 46)
            return got
        g, w = D.normal(got), D.normal(want)
        if via == "grpc" and g[0] == w[0] == "error" and g[1][0] == w[1][0] == "INVALID_ARGUMENT":
            self.compared += 1  # the client's proto mapping words its own refusals
            return got
        if (
            g != w
            and g[0] == w[0] == "ok"
            and w[1].get("mode") == "OFFLINE"
            and g[1].get("mode") == "ONLINE"
        ):
            self.skipped += 1  # the fresh probe (300 ms) missed on a loaded machine
            self.counts["fresh probe missed"] = self.counts.get("fresh probe missed", 0) + 1
            return got
        if g != w:
            self.mismatches.append(
                json.dumps(
                    {
                        "call": call,
                        "via": via,
                        "hub_up": self.hub_up,
                        "diff": D.diff(g, w),
                        "body": body,
                    },
                    ensure_ascii=False,
                    default=str,
                )
            )
        else:
            self.compared += 1
        return got

    def publish(self, doc: dict[str, Any]) -> None:
        """The hub gets new master data and publishes; the till pulls it (push + pull)."""
        path = self.work / f"hub-import-{self.counts.get('hub publishes', 0)}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        before = self.status()["cacheVersion"]
        hub_cli(self.root, "import", str(path), "--publish")
        self.counts["hub publishes"] = self.counts.get("hub publishes", 0) + 1
        t0 = time.monotonic()
        while self.status()["cacheVersion"] <= before:
            if time.monotonic() - t0 > 90:
                raise RuntimeError("the till did not pull the published version in 90 s")
            time.sleep(0.05)
        self.events.append(f"published; the till had it after {time.monotonic() - t0:.2f} s")

    def delta(self) -> None:
        if not self.hub_up:
            return  # nothing to publish while the hub is away
        r = self.rng
        doc: dict[str, Any] = {}
        what = r.choice(["offer", "offer", "customer", "remove", "program", "coupon"])
        if what == "offer":
            doc["offers"] = list(
                {o["id"]: o for o in (self.mutate_offer() for _ in range(r.randint(1, 3)))}.values()
            )
        elif what == "customer":
            c = copy.deepcopy(r.choice(D.SNAPSHOT["customers"]))
            c["tier"] = r.choice(["base", "silver", "gold"])
            doc["customers"] = [c]
        elif what == "remove":
            doc["removed"] = {"offers": [r.choice(["m-dairy", "m-bread", "p-a-cheese"])]}
        elif what == "program":
            p = copy.deepcopy(D.PROGRAM)
            p["maxRedeemPercent"] = r.choice([10, 30, 50])
            doc["program"] = p
        else:
            doc["coupons"] = [
                {"code": f"CPN{r.randint(0, 15)}", "offerId": r.choice(["m-cpn", "m-bread"])}
            ]
        self.publish(doc)

    def full(self) -> None:
        self.delta()

    def burst(self) -> None:
        self.delta()  # snapshots reach an enrolled till from its hub only


def hub_rows(root: Path) -> list[tuple[str, int, str]]:
    from bench.faults import hub_ledger

    return hub_ledger(root)


def main(seed: int, steps: int, work: Path, outage_at: int, outage_s: float) -> int:
    import shutil

    from tillpoint.sync.loopback import LoopbackHub

    from bench.faults import free_port

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    root, data = work / "hub", work / "data"
    setup = LoopbackHub(root, data=master(D.SNAPSHOT), start=False)
    port = free_port()
    setup.port = port
    enrollment = setup.enroll(D.DEVICE, data)
    setup.server.store.close()
    hub = HubProc(root, port, work / "hub.log", enrollment)
    hub.start()
    ll = D.LongLived(work, data, extra_config="")
    seq = HubSequence(random.Random(seed), work, data, ll, hub=hub, root=root)
    seq.now_only = os.environ.get("DIFFLONG_NOW") == "1"
    t_start = time.monotonic()
    rc = 0
    try:
        t0 = time.monotonic()
        while seq.status()["cacheVersion"] < 1:
            if time.monotonic() - t0 > 60:
                raise RuntimeError("no first snapshot")
            time.sleep(0.1)
        seq.events.append(f"first snapshot after {time.monotonic() - t0:.1f} s")
        i = -1
        while True:
            i += 1
            if i >= steps and seq.hub_up:
                break
            if i == outage_at:
                hub.kill()
                seq.hub_up = False
                t_kill = time.monotonic()
                # how long `run` says ONLINE after its hub died (no POS call needed for it)
                while seq.status()["mode"] != "OFFLINE" and time.monotonic() - t_kill < 120:
                    time.sleep(0.1)
                seq.events.append(
                    f"hub killed; status OFFLINE after {time.monotonic() - t_kill:.1f} s"
                )
                t_down = time.monotonic()
            if not seq.hub_up and time.monotonic() - t_down >= outage_s:
                hub.start()
                t_back = time.monotonic()
                seq.events.append(f"hub restarted after {t_back - t_kill:.1f} s down")
                drained = online = None
                while time.monotonic() - t_back < 180 and (drained is None or online is None):
                    st = seq.status()
                    if online is None and st["mode"] == "ONLINE":
                        online = time.monotonic() - t_back
                    if drained is None and st["outboxDepth"] == 0:
                        drained = time.monotonic() - t_back
                    time.sleep(0.05)
                seq.events.append(
                    f"after restart: status ONLINE in {online} s,"
                    f" outbox drained in {drained} s (no POS traffic)"
                )
                seq.hub_up = True
            seq.step()
        if not seq.hub_up:
            hub.start()
            seq.hub_up = True
            seq.events.append("hub restarted at the end")
        # the end: everything at the hub exactly once
        t_end = time.monotonic()
        while seq.status()["outboxDepth"] and time.monotonic() - t_end < 120:
            time.sleep(0.1)
        journal = (
            sqlite3.connect(data / "ledger.db")
            .execute("SELECT device_id, seq, ref_id FROM journal")
            .fetchall()
        )
        at_hub = hub_rows(root)
        by_ref = Counter(r[2] for r in at_hub)
        doubled = {k: v for k, v in by_ref.items() if v > 1}
        print(f"journal {len(journal)} rows, hub {len(at_hub)} rows, doubled at the hub: {doubled}")
        # holds: an ACTIVE hold at the hub only for a receipt HELD at the till
        time.sleep(2)
        hub_db = sqlite3.connect(root / "hub.db")
        active = hub_db.execute(
            "SELECT receipt_id, points, expires_at FROM holds WHERE state = 'ACTIVE'"
        ).fetchall()
        cholds = hub_db.execute("SELECT code, receipt_id, expires_at FROM coupon_holds").fetchall()
        life = dict(
            sqlite3.connect(data / "ledger.db")
            .execute("SELECT receipt_id, state FROM receipt_life")
            .fetchall()
        )
        from datetime import UTC, datetime

        for rid, pts, exp in active:
            if life.get(rid) != "HELD" and datetime.fromisoformat(exp) > datetime.now(UTC):
                print(
                    f"HUB HOLD LEFT: {rid} {pts} points, expires {exp}, till says {life.get(rid)}"
                )
                rc = 1
        for code, rid, exp in cholds:
            if life.get(rid) != "HELD" and datetime.fromisoformat(exp) > datetime.now(UTC):
                print(
                    f"HUB COUPON HOLD LEFT: {code} for {rid} expires {exp},"
                    f" till says {life.get(rid)}"
                )
        from tillpoint.sync.hub_server import HubDir

        store = HubDir(root).open_store()
        try:
            now = datetime.now(UTC)
            for card, cust in (
                ("2770000000017", "c-a"),
                ("2770000000024", "c-b"),
                ("2770000000055", "c-d"),
                ("2770000000062", "c-c"),
            ):
                hb = store.balance(cust, now)
                tb = seq.ll.http("/v1/balance", {"card": card, "at": now.isoformat()})
                print(
                    f"balance {cust}: hub available {hb.available} pending {hb.pending}; till {tb}"
                )
        finally:
            store.close()
        if sorted(journal) != sorted(at_hub):
            print("HUB != JOURNAL", set(journal) ^ set(at_hub))
            rc = 1
        if doubled:
            rc = 1
    finally:
        ll.stop()
        hub.stop()
    print(
        f"seed {seed}: {seq.calls} calls, {seq.compared} equal, {seq.skipped} skipped,"
        f" {len(seq.mismatches)} mismatches, {time.monotonic() - t_start:.1f} s"
    )
    for e in seq.events:
        print("EVENT", e)
    print(json.dumps(seq.counts, sort_keys=True))
    for m in seq.mismatches[:10]:
        print("MISMATCH", m)
    return 1 if seq.mismatches else rc


if __name__ == "__main__":
    sys.exit(
        main(
            int(sys.argv[1]),
            int(sys.argv[2]),
            Path(sys.argv[3]),
            int(sys.argv[4]),
            float(sys.argv[5]),
        )
    )
