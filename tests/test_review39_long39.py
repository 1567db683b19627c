"""Review 39 (long39): a receipt's life across crashes of ONE long-lived `tillpoint run`.

Review 38's walk (tests/test_review38_long38.py `PosSequence`: review 35's shipped `run`
through `bench/difflong_doors.py serve`, only its ports and data directory set, a real hub
that goes away and comes back, every answer compared with a fresh agent's on a copy of
the data directory made just before the call, its hub the long-lived process's answers
played back), with a POS of a few clients (the POS's kept HTTP connection, gRPC, and a
second HTTP connection for the calls cut by a crash) and `run` SIGKILLed at random points
of a receipt's life, then started again on the same data directory:

- between Hold and Confirm (the hub away at the start again, or not); mid-Hold;
  mid-Confirm; mid-Cancel; mid-Checkout; mid-refund (each cut call sent on a client of its
  own, the kill 0-250 ms after); while its outbox is being uploaded to the hub (a kill
  within 0-1.2 s of sales, the push looks every 1 s); while it pulls a version the hub
  just published; while it starts (a `run` killed 0.3-1.1 starts' time in);
- after each start: every hold the POS still has open is HELD in the till's ledger, and
  the call the crash cut is retried with the same ids: a Confirm commits the receipt
  exactly once with the held figures, a Checkout and a refund are in the journal once, a
  Hold is HELD, a Cancel CANCELLED and its hold no longer ACTIVE at the hub; a hold held
  at the hub before a kill and run out after the start is refused at Confirm and released
  at the hub; every hold open ONLINE is still ACTIVE at the hub (no release owed, or of an
  ask the dead run left unstored, took a receipt held again);
- redemptions near the day's offline limit (CONTRACT §5 step 4: 500 points a card a
  store-day) with the hub away, held, killed and confirmed;
- at the end (review 35's `settle`): the hub holds every sale and refund of the till's
  journal once, no hold ACTIVE at the hub for a receipt the till does not hold (each
  hold's reservation released at Cancel or expiry), each customer's points the till's;
  after each outage the till is ONLINE again within the shipped backoff's bound.

Every answer after a start is a fresh agent's for the same call on the same state (the
harnesses' way; the call cut by the kill is not compared: it has no answer). The walk's
length is one parameter: a short seeded walk in `make test` (one kill: a start takes 3-8 s
on a busy machine), the long one slow (every kind of kill, then 150 seeded steps).

Found right (review 39, long39): ~400 kills in twelve walks (60-150 steps each), no answer
unlike a fresh agent's, nothing lost or doubled at the hub, every hold kept or released as
it should be, ONLINE and the outbox drained within 0.1-2.3 s of the hub's return.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import difflong as dl

from .test_review32_long32 import DoorsSequence, _env
from .test_review35_memo35 import PROMISED_DRAIN_S, StoreDaySequence
from .test_review38_long38 import PosSequence

# What a retried Confirm must answer as its Hold did (CONTRACT §11: no pricing again).
# (the doors' one difference: an absent field is null over HTTP, left out over gRPC)
FIGURES = ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor")
FIGURES += ("earnedPoints", "mode", "coupons", "heldOut")
LIMIT = 500  # bench/difflong.py's program: `offlineRedeemLimitPoints`


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _set(doc: Any) -> Any:
    """`doc` without its null fields (gRPC leaves them out)."""
    if isinstance(doc, dict):
        return {k: _set(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_set(v) for v in doc]
    return doc


class CrashSequence(PosSequence):
    """Review 38's shipped run and POS, `run` SIGKILLed at points of a receipt's life."""

    ACTIONS = (
        ["new", "again"]
        + ["hold"] * 3
        + ["confirm"] * 3
        + ["checkout"] * 2
        + ["cancel", "refund", "refund", "identify", "balance", "tick"]
        + ["limit", "limit", "down", "up"]
        + ["kill/held", "kill/confirm", "kill/checkout", "kill/refund", "kill/upload"]
        + ["kill/expire", "kill/cancel", "kill/pull", "kill/hold", "kill/start"]
        + ["outage"]
    )
    TRACE_ENV = "LONG39_TRACE"

    def __init__(self, seed: int, work: Path) -> None:
        self.held_answers: dict[str, dict[str, Any]] = {}  # each open hold's answer
        self.kills: list[str] = []
        self.starts: list[float] = []  # seconds from the kill to the run serving again
        super().__init__(seed, work)

    # ------------------------------------------------------------ the POS's clients

    def compare(self, call: str, body: Any, via: str | None = None) -> tuple[str, Any]:
        if via is None:
            via = "grpc" if self.rng.random() < 0.4 else "http"
        return DoorsSequence.compare(self, call, body, via)

    def long(self, call: str, body: Any, via: str) -> tuple[str, Any]:
        if via == "grpc":
            return dl.long_answer(self.ll, call, body, via)
        return super().long(call, body, via)

    def track(self, rid: str, got: tuple[str, Any]) -> None:
        super().track(rid, got)
        if got[0] == "ok" and got[1].get("state") == "HELD":
            self.held_answers[rid] = got[1]

    # ------------------------------------------------------------ the till's ledger

    def journal_refs(self, ref: str) -> int:
        conn = _ro(self.data / "ledger.db")
        try:
            return int(
                conn.execute("SELECT count(*) FROM journal WHERE ref_id = ?", (ref,)).fetchone()[0]
            )
        finally:
            conn.close()

    def wait_released(self, rid: str, why: str) -> None:
        """The hold of `rid` is no longer ACTIVE at the hub (within 20 s)."""
        from tillpoint.sync.loopback import wait_for

        if not wait_for(lambda: rid not in self.hub_active(), timeout=20, every=0.1):
            self.lost.append(f"{rid} {why}: still ACTIVE at the hub")

    def hub_active(self) -> set[str]:
        """The receipts of this till with a hold ACTIVE at the hub."""
        rows = self.hub_sql(
            f"SELECT receipt_id FROM holds WHERE state = 'ACTIVE' AND device_id = '{dl.DEVICE}'"
        )
        return {str(r) for (r,) in rows}

    def holds_kept_at_hub(self) -> list[str]:
        """Every hold the POS has open that the hub granted points (ONLINE) is still
        ACTIVE at the hub: no release (an owed one, or one of an ask a dead run left
        unstored) took it after the receipt was held again."""
        active = self.hub_active() if self.hub_up else set()
        return [
            f"{rid} held ONLINE with {self.held_answers[rid]['redeemedPoints']} points:"
            " not ACTIVE at the hub"
            for rid in sorted(self.held)
            if self.hub_up
            and self.held_answers.get(rid, {}).get("mode") == "ONLINE"
            and self.held_answers[rid].get("redeemedPoints")
            and rid not in active
        ]

    # ------------------------------------------------------------ the crash

    def cut(self, call: str, body: Any) -> threading.Thread:
        """`call` sent on a client of its own (gRPC or a second HTTP connection), left
        to the kill: its answer, if any, is not looked at."""
        via = self.rng.choice(["http", "grpc"])
        port, grpc_port = self.ll.http_port, self.ll.grpc_port

        def send() -> None:
            from tillpoint.agent.client import PosAgentClient

            try:
                if via == "http":
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                    raw = json.dumps(body, ensure_ascii=False).encode()
                    conn.request("POST", f"/v1/{call}", raw, {"Content-Type": "application/json"})
                    conn.getresponse().read()
                    conn.close()
                else:
                    client = PosAgentClient(f"127.0.0.1:{grpc_port}", timeout=20, attempts=1)
                    try:
                        if call == "confirm":
                            client.confirm(body["receiptId"], "")
                        elif call == "cancel":
                            client.cancel(body["receiptId"])
                        else:
                            getattr(client, call)(body)
                    finally:
                        client.close()
            except Exception:  # the kill's: no answer, or a reset
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        self.count(f"cut/{call}/{via}")
        return sender

    def kill(
        self,
        kind: str,
        sender: threading.Thread | None = None,
        after: float = 0.0,
        in_start: float | None = None,
    ) -> None:
        """SIGKILL `run` `after` seconds from now, and start it again on the same data
        directory (its settings as before); then the open holds are looked at.
        `in_start`: first a `run` killed that many seconds into its start."""
        self.lost += self.holds_kept_at_hub()  # (since the kill before: its start's rounds)
        time.sleep(after)
        self.ll.proc.kill()
        self.ll.proc.wait(30)
        # the dead run's serving.json names its port: the harness waits for the new one
        (self.data / "serving.json").unlink(missing_ok=True)
        if in_start is not None:
            command = [sys.executable, "-m", "bench.difflong_doors", "serve"]
            command += [str(self.work / "clock"), str(self.record)]
            with open(self.work / "run.log", "ab") as out:
                starting = subprocess.Popen(
                    [*command, "--config", str(self.ll.cfg), "run"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_env(),
                )
            time.sleep(in_start)
            starting.kill()
            starting.wait(30)
            self.count(
                f"kill/in-start/{'served' if (self.data / 'serving.json').exists() else 'not'}"
            )
        if sender is not None:
            sender.join(30)
        self.count(f"kill/{kind}/outbox/{'some' if self.outbox_depth() else 'empty'}")
        self.kills.append(kind)
        self.count(f"kill/{kind}")
        began = time.monotonic()
        self.conn.close()
        self.ll.stop()  # (its clients closed; the process is dead already)
        (self.data / "serving.json").unlink(missing_ok=True)
        self.start()
        self.starts.append(time.monotonic() - began)
        lost = sorted(self.held - self.till_holds())
        if lost:
            self.lost.append(f"after a kill ({kind}): holds not HELD any more: {lost}")

    def same_as_held(self, rid: str, got: tuple[str, Any], why: str) -> None:
        """A Confirm's answer: CONFIRMED, with the held figures; the sale journalled once."""
        held = self.held_answers.get(rid)
        if got[0] != "ok" or got[1].get("state") != "CONFIRMED":
            self.lost.append(f"{why}: Confirm of {rid} answered {got}")
            return
        if held is not None:
            differ = [k for k in FIGURES if _set(held.get(k)) != _set(got[1].get(k))]
            if differ:
                self.lost.append(f"{why}: {rid} confirmed with other {differ}: {held} {got[1]}")
        n = self.journal_refs(rid)
        if n != 1:
            self.lost.append(f"{why}: {rid} in the journal {n} times")

    def held_one(self, near_limit: bool = False) -> str | None:
        """A new receipt held (compared); its id, or None when it was not held."""
        rid = self.new_receipt()
        if near_limit:
            self.near_limit(rid)
        got = self.compare("hold", self.bodies[rid])
        self.track(rid, got)
        return rid if rid in self.held else None

    def near_limit(self, rid: str) -> None:
        """A big basket of a card with points, redeeming about what is left of the day's
        offline limit (CONTRACT §5 step 4)."""
        body = self.bodies[rid]
        body["card"] = self.rng.choice(["2770000000017", "2770000000055", "+79161234567"])
        body["at"] = self.clock().astimezone(dl.ZONE).isoformat()
        for line in body["lines"]:
            line["qty"] = "9" if "." not in line["qty"] else line["qty"]
        body["redeemPoints"] = self.rng.choice([LIMIT // 3, LIMIT // 2, LIMIT - 10, LIMIT, -1])

    def confirm_again(self, rid: str, why: str) -> None:
        got = self.compare("confirm", {"receiptId": rid})
        self.held.discard(rid)
        if got[0] == "ok":
            self.committed[rid] = self.bodies[rid]
        else:
            self.closed.add(rid)
        self.same_as_held(rid, got, why)

    # ------------------------------------------------------------ the steps

    def do(self, action: str) -> None:
        r = self.rng
        if action == "kill/held":  # between Hold and Confirm
            rid = self.held_one(near_limit=r.random() < 0.5)
            if self.hub_up and r.random() < 0.3:  # and started again with the hub away
                StoreDaySequence.do(self, "down")
            self.kill("held")
            if rid is not None and r.random() < 0.7:
                self.confirm_again(rid, "held, killed, confirmed")
        elif action == "kill/confirm":  # mid-Confirm, retried with the same receiptId
            rid = self.pick(self.held) if self.held else self.held_one()
            if rid is None:
                return
            sender = self.cut("confirm", {"receiptId": rid})
            self.held.discard(rid)  # (committed or not by the cut call: retried below)
            self.kill("confirm", sender, r.uniform(0.0, 0.25))
            self.count(f"cut/confirm/{'committed' if self.journal_refs(rid) else 'not'}")
            self.confirm_again(rid, "Confirm cut by a kill, retried")
        elif action == "kill/expire":  # held at the hub, killed, run out after the start
            if not self.hub_up:
                self.hub_back()
            rid = self.new_receipt()
            self.bodies[rid].update(card="2770000000017", redeemPoints=100)
            self.track(rid, self.compare("hold", self.bodies[rid]))
            self.kill("expire")
            self.clock.passes(self.TTL + 1)
            self.closed |= self.held
            self.held = set()
            got = self.compare("confirm", {"receiptId": rid})
            if got[0] != "error":
                self.lost.append(f"a hold run out after a kill confirmed: {got}")
            self.wait_released(rid, "run out after a kill")
        elif action == "kill/cancel":  # mid-Cancel (its release at the hub), retried
            if not self.hub_up and r.random() < 0.7:
                self.hub_back()
            rid = self.pick(self.held) if self.held and r.random() < 0.5 else None
            if rid is None:
                rid = self.new_receipt()
                self.bodies[rid].update(card="2770000000055", redeemPoints=100)
                self.track(rid, self.compare("hold", self.bodies[rid]))
                if rid not in self.held:
                    return
            sender = self.cut("cancel", {"receiptId": rid})
            self.held.discard(rid)
            self.closed.add(rid)
            self.kill("cancel", sender, r.uniform(0.0, 0.25))
            got = self.compare("cancel", {"receiptId": rid})
            if got[0] != "ok" or got[1].get("state") != "CANCELLED":
                self.lost.append(f"Cancel of {rid} cut by a kill, retried: {got}")
            if self.hub_up:
                self.wait_released(rid, "cancelled after a kill")
        elif action == "kill/checkout":  # mid-Checkout, retried with the same body
            rid = self.new_receipt()
            sender = self.cut("checkout", self.bodies[rid])
            self.kill("checkout", sender, r.uniform(0.0, 0.25))
            self.count(f"cut/checkout/{'committed' if self.journal_refs(rid) else 'not'}")
            got = self.compare("checkout", self.bodies[rid])
            self.track(rid, got)
            if got[0] == "ok" and self.journal_refs(rid) != 1:
                self.lost.append(f"checkout {rid} cut and retried: journalled not once")
        elif action == "kill/refund" and self.committed:  # mid-refund, retried
            rid = self.pick(self.committed)
            line = r.choice(self.committed[rid]["lines"])
            refund = {
                "refundId": f"k-{rid}-{r.randint(0, 1)}",
                "receiptId": rid,
                "at": self.at(),
                "lines": [{"sku": line["sku"], "qty": line["qty"]}],
            }
            sender = self.cut("refund", refund)
            self.kill("refund", sender, r.uniform(0.0, 0.25))
            done = self.journal_refs(refund["refundId"])
            self.count(f"cut/refund/{'committed' if done else 'not'}")
            got = self.compare("refund", refund)
            if got[0] == "ok" and self.journal_refs(refund["refundId"]) != 1:
                self.lost.append(f"refund {refund['refundId']} cut and retried: not once")
        elif action == "kill/upload":  # during the outbox's upload to the hub
            if not self.hub_up:
                self.hub_back()
            for _ in range(r.randint(1, 3)):
                StoreDaySequence.do(self, "checkout")
            self.kill("upload", None, r.uniform(0.0, 1.2))
        elif action == "kill/hold":  # mid-Hold (the hub asked), retried with the same body
            if not self.hub_up and r.random() < 0.7:
                self.hub_back()
            rid = self.new_receipt()
            self.bodies[rid].update(card=r.choice(["2770000000017", "2770000000055"]))
            self.bodies[rid]["redeemPoints"] = r.choice([50, 200, -1])
            sender = self.cut("hold", self.bodies[rid])
            self.kill("hold", sender, r.uniform(0.0, 0.25))
            self.count(f"cut/hold/{'held' if rid in self.till_holds() else 'not'}")
            got = self.compare("hold", self.bodies[rid])
            self.track(rid, got)
            if got[0] == "ok" and got[1].get("state") != "HELD":
                self.lost.append(f"Hold of {rid} cut by a kill, retried: {got}")
        elif action == "kill/start":  # a run killed while it starts, then started again
            took = self.starts[-1] if self.starts else 5.0  # (how long a start takes here)
            self.kill("start", None, 0.0, in_start=r.uniform(0.3, 1.1) * took)
        elif action == "kill/pull":  # while it pulls a version the hub just published
            if not self.hub_up:
                self.hub_back()
            after = r.uniform(0.0, 1.0)
            failed: list[BaseException] = []

            def published() -> None:  # (the seeded choices first, then the till's pull)
                try:
                    self.delta()
                except BaseException as exc:  # reported below
                    failed.append(exc)

            puller = threading.Thread(target=published, daemon=True)
            puller.start()
            self.kill("pull", None, after)
            puller.join(120)
            if failed or puller.is_alive():
                self.lost.append(f"a version published across a kill not pulled: {failed}")
            self.probe()
        elif action == "limit":  # near the day's offline limit, the hub away
            self.count("action/limit")
            if self.hub_up:
                StoreDaySequence.do(self, "down")
            rid = self.new_receipt()
            self.near_limit(rid)
            got = self.compare(r.choice(["hold", "checkout", "quote"]), self.bodies[rid])
            self.track(rid, got)
        elif action == "up":
            self.count("action/up")
            if not self.hub_up:
                self.hub_back()
                self.online_again()
        elif action == "outage":  # sales while the hub is away, then back (no one-shots)
            self.count("action/outage")
            if self.hub_up:
                StoreDaySequence.do(self, "down")
            for _ in range(2):
                self.do(r.choice(["checkout", "hold", "confirm", "refund", "limit"]))
            self.hub_back()
            self.online_again()
        elif action.startswith("kill/"):
            self.do("checkout")
        else:
            super().do(action)


def walk(seed: int, steps: int, work: Path, script: tuple[str, ...] = ()) -> CrashSequence:
    """`script`, then `steps` seeded steps, then review 35's settle."""
    work.mkdir(parents=True, exist_ok=True)
    seq = CrashSequence(seed, work)
    try:
        for action in script:
            seq.do(action)
        for _ in range(steps):
            seq.step()
        kept = seq.holds_kept_at_hub()
        seq.problems = seq.settle() + kept
    finally:
        seq.close()
    return seq


# every kind of crash once, holds open across them, the offline limit, an outage
SCRIPT39 = (
    "new", "hold", "limit", "kill/held", "kill/confirm", "up", "checkout", "kill/refund",
    "hold", "kill/upload", "kill/checkout", "limit", "kill/expire", "kill/cancel",
    "kill/pull", "kill/hold", "kill/start", "outage",
)  # fmt: skip
# make test's: one kill (a start takes 3-8 s here): a Confirm cut with holds open and the
# hub away, retried after the start; the hub back (ONLINE within the promise), a sale
SHORT39 = ("new", "hold", "limit", "kill/confirm", "up", "checkout")


def _check(seq: CrashSequence) -> None:
    assert not seq.mismatches, "\n".join(seq.mismatches[:3])
    assert not seq.problems, "\n".join(seq.problems)
    assert not seq.dropped, seq.dropped[:5]
    assert all(code == 0 for code in seq.stops), seq.stops
    assert seq.drains and max(seq.drains) <= PROMISED_DRAIN_S, (seq.drains, seq.counts)
    assert seq.counts.get("online/again", 0) >= 1, seq.counts


@pytest.mark.timeout(300)
def test_a_run_killed_mid_confirm_short_seeded(tmp_path: Path) -> None:
    """CONTRACT §5, §9, §11, §13: make test's short walk (one kill, the hub away and back)."""
    seq = walk(3901, 0, tmp_path / "work", SHORT39)
    _check(seq)
    assert seq.kills == ["confirm"], seq.kills


@pytest.mark.slow  # ~10 starts of `run`, ~35 s loaded: CI runs it (`.ci/run`)
def test_a_run_killed_once_at_every_kind_of_point(tmp_path: Path) -> None:
    """CONTRACT §5, §9, §11, §13: the long walk's script alone, every kind of kill once
    (ci39b: CI's twin of the long walk below, which only `make test-all` runs)."""
    seq = walk(3902, 0, tmp_path / "work", SCRIPT39)
    _check(seq)
    assert seq.kills == [a.split("/", 1)[1] for a in SCRIPT39 if a.startswith("kill/")]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 5-10 minutes on a busy machine (a start takes 3-8 s)
def test_a_run_killed_at_random_points_a_long_walk(tmp_path: Path) -> None:
    """CONTRACT §5, §9, §11, §13: every kind of kill once, then 150 seeded steps
    (~50 kills)."""
    seq = walk(3902, 150, tmp_path / "work", SCRIPT39)
    _check(seq)
    assert len(seq.kills) >= 40, seq.kills


if __name__ == "__main__":  # python -m tests.test_review39_long39 SEED STEPS
    import shutil

    t0 = time.monotonic()
    where = Path("/tmp") / f"long39-{sys.argv[1]}"
    shutil.rmtree(where, ignore_errors=True)
    s = walk(
        int(sys.argv[1]), int(sys.argv[2]), where, SHORT39 if "short" in sys.argv else SCRIPT39
    )
    print(f"{s.compared} compared, {len(s.mismatches)} mismatches, {time.monotonic() - t0:.1f} s")
    print(json.dumps(s.counts, sort_keys=True), s.stops, "drains", s.drains)
    print("kills", s.kills, "starts", [round(x, 1) for x in s.starts])
    for m in s.mismatches[:10]:
        print("MISMATCH", m)
    for p in s.problems:
        print("PROBLEM", p)
