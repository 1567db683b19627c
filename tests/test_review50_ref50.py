"""Review 50 (ref50): a late refund of a sale whose points a snapshot already shows active.

docs/CONTRACT.md §6 (points taken back come off the receipt's own pending points while
they are pending; returning everything takes back exactly what was earned) and §16
(`expiring` lists the batches that still hold points; available at T is what is left of
the batches at T; its decisions: once a snapshot counts the sale, a refund takes its
points off the snapshot's batch that holds them).

The day (Moscow, no clock change): points activate 3 days after a sale and expire 30 days
later (`pointsLifetimeDays` 30, `activationDelayDays` 3). Boris (c-b, base tier, 3 %)
has 80 points that never expire. On 1.12 at 12:00 he buys for 1000.00: 30 points,
spendable on 4.12 at 12:00, expiring on 3.1 at 12:00. The hub counts the sale and
publishes after 4.12: 110, `expiring` [30 on 3.1]. A refund dated 2.12 (the 30 still
pending at ITS `at`) reaches the till only after that snapshot.

By hand: the refund takes back 30. The snapshot has no pending entry to take them off
(it shows them active), so they come off the batch that expires when the sale's points
do (3.1), as a refund dated after the activation takes them: Boris has 80 at 2.12, at
4.12, on 2.1 and on 4.1, none pending, none listed to expire; the refund's result says
80 available, 0 pending. The hub (which still has the sale's own batch) says the same
at each time, and its next snapshot 80 with nothing to expire. Before this review the
till answered the refund with `pendingPoints: -30` (110 available at its time) and
listed the 30 points to expire on 3.1 until then.

Real parts: an `Agent` on real SQLite files; the reference hub's SQLite store (and
PostgreSQL in one test) counting the till's outbox as its push sends it; one case
through a real `tillpoint run` over HTTP.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.models import Refund
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.loopback import import_doc

from .conftest import receipt
from .test_hub_till_agree import CARD as BORIS
from .test_hub_till_agree import NOW, SKU, WEEK, _master, pushed

EXE = Path(sys.executable).parent / "tillpoint"

SOLD = "2026-12-01T12:00:00+03:00"
PENDING = "2026-12-02T12:00:00+03:00"  # the refund's `at`: the sale's points still pending
ACTIVE = "2026-12-04T12:00:00+03:00"  # the sale's points spendable from this moment
EXPIRES = "2027-01-03T12:00:00+03:00"  # ... and counted through this one
# the times every balance below is asked at: at the refund, just before and at the
# activation, the day before the expiry, the day after
TIMES = [
    PENDING,
    "2026-12-04T11:59:59+03:00",
    ACTIVE,
    "2027-01-02T12:00:00+03:00",
    "2027-01-04T12:00:00+03:00",
]


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Day:
    """A till (an `Agent` on real SQLite files) and the reference hub that counts what its
    push sends; Boris starts with 80 points that never expire."""

    def __init__(self, tmp: Path, hub: Any = None, *, lifetime: int = 30) -> None:
        self.dir = tmp / "till"
        self.hub = hub if hub is not None else SqliteHubStore(tmp / "hub.db")
        import_doc(self.hub, _master(80, [], lifetime, 3))
        self.agent = Agent(self.dir, "till-1")
        self.agent.load_snapshot(self.publish("2026-11-30T12:00:00+03:00"))

    def close(self) -> None:
        self.agent.close()
        self.hub.close()

    def sell(self, rid: str, at: str, qty: str, price: int, redeem: int = 0) -> dict[str, Any]:
        line = {"sku": SKU, "qty": qty, "priceMinor": price}
        body = receipt(rid, card=BORIS, at=at, lines=[line], redeemPoints=redeem)
        return dict(self.agent.checkout(receipt_from_json(body)).to_json())

    def refund(self, fid: str, rid: str, at: str, qty: str) -> dict[str, Any]:
        body = {"refundId": fid, "receiptId": rid, "at": at, "lines": [{"sku": SKU, "qty": qty}]}
        return dict(self.agent.refund(Refund.model_validate(body)).to_json())

    def push(self) -> None:
        self.hub.ingest("till-1", "", pushed(self.dir), NOW)

    def publish(self, at: str) -> dict[str, Any]:
        return dict(self.hub.snapshot_doc(self.hub.publish(t(at), WEEK).version, 0))

    def sync(self, at: str) -> dict[str, Any]:
        """The hub publishes at `at`; the till loads that snapshot. Boris's row."""
        doc = self.publish(at)
        self.agent.load_snapshot(doc)
        return boris_of(doc)

    def publish_row(self, at: str) -> dict[str, Any]:
        return boris_of(self.publish(at))

    def till(self, at: str) -> tuple[int, int, list[tuple[int, str]]]:
        return seen(self.agent.balance(BORIS, t(at)).to_json())

    def there(self, at: str) -> tuple[int, int]:
        live = self.hub.balance("c-b", t(at))
        return (live.available, live.pending)


def boris_of(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(next(c for c in doc["customers"] if c["id"] == "c-b"))


def seen(balance: dict[str, Any]) -> tuple[int, int, list[tuple[int, str]]]:
    """(available, pending, [(points, expiresAt)]) of a `balance` document."""
    listed = [(e["points"], t(e["expiresAt"]).isoformat()) for e in balance.get("expiring", [])]
    return (balance["availablePoints"], balance["pendingPoints"], listed)


def row_of(row: dict[str, Any]) -> tuple[int, list[tuple[int, str]]]:
    """(balancePoints, [(points, expiresAt)]) of a snapshot's customer row, in Moscow time."""
    listed = [
        (e["points"], t(e["expiresAt"]).astimezone(t(EXPIRES).tzinfo).isoformat())
        for e in row.get("expiring", [])
    ]
    return (row["balancePoints"], listed)


@pytest.fixture
def day(tmp_path: Path) -> Iterator[Day]:
    d = Day(tmp_path)
    yield d
    d.close()


def counted_after_activation(day: Day, *, qty: str = "1", price: int = 100000) -> None:
    """The sale on 1.12, pushed; the hub publishes on 5.12 (counting it, its points
    active) and the till loads that snapshot: 110, 30 of them expiring on 3.1."""
    sold = day.sell("p-1", SOLD, qty, price)
    assert (sold["earnedPoints"], seen(sold["balance"])) == (30, (80, 30, []))
    day.push()
    row = day.sync("2026-12-05T12:00:00+03:00")
    assert row_of(row) == (110, [(30, EXPIRES)])


def agree(
    day: Day,
    figures: list[tuple[int, int, list[tuple[int, str]]]],
    hub: list[tuple[int, int]] | None = None,
) -> None:
    """The till says `figures` at TIMES; the hub, once it has counted the till's outbox,
    the same available and pending points (or `hub`'s)."""
    assert [day.till(at) for at in TIMES] == figures
    day.push()
    assert [day.there(at) for at in TIMES] == (hub or [f[:2] for f in figures])


# ---------------------------------------------------------------- the case


def test_a_late_refund_takes_back_the_points_a_snapshot_shows_active_off_their_batch(
    day: Day,
) -> None:
    """The day above: 80 at every time, nothing pending, nothing listed; the refund's
    result says so; the hub agrees, and its next snapshot (80, nothing to expire) leaves
    the till's figures as they were. (Before: the result was 110 available, -30 pending,
    30 listed to expire on 3.1, and `balance` listed them until 3.1.)"""
    counted_after_activation(day)
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert (back["returnedPoints"], back["takenBackPoints"]) == (0, 30)
    assert back["balance"] == {"availablePoints": 80, "pendingPoints": 0}
    assert back["negativeBalance"] is False
    agree(day, [(80, 0, [])] * 5)
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])
    assert [day.till(at) for at in TIMES] == [(80, 0, [])] * 5


def test_the_same_where_points_never_expire(tmp_path: Path) -> None:
    """`pointsLifetimeDays` 0: the sale's 30 are in the snapshot's part that never
    expires (110, nothing listed) and come off it: 80 at every time, 0 pending. (Before:
    the till summed its rows, -30 pending until 4.12, the result 110 and -30.)"""
    day = Day(tmp_path, lifetime=0)
    try:
        day.sell("p-1", SOLD, "1", 100000)
        day.push()
        assert row_of(day.sync("2026-12-05T12:00:00+03:00")) == (110, [])
        back = day.refund("p-1-r", "p-1", PENDING, "1")
        assert back["balance"] == {"availablePoints": 80, "pendingPoints": 0}
        agree(day, [(80, 0, [])] * 5)
        assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])
    finally:
        day.close()


# ---------------------------------------------------------------- the variants


def test_a_partial_late_refund_then_a_second_one_leave_the_rest_of_the_batch_listed(
    day: Day,
) -> None:
    """Two items of 500.00 (30 points). Returning 1 of 2 on 2.12 takes back floor(30 × 1
    / 2) = 15 off the 3.1 batch: 95 available, 15 listed to expire on 3.1; 80 on 4.1.
    The hub publishes 95, [15 on 3.1]. The second item, returned on 3.12 (still before
    the activation) after that snapshot, takes back the other 15: 80, nothing listed.
    Before 4.12 the hub, which has the sale's own batch, says the 15 left are pending
    (80 and 15); the till reads them from a snapshot that shows them active (95 and 0),
    as it reads the whole sale's 30 before any refund (110 and 0 where the hub says 80
    and 30): a snapshot's `expiring` parts carry no activation time (§3), the known
    difference this review leaves (docs/DECISIONS.md, review 50)."""
    counted_after_activation(day, qty="2", price=50000)
    assert (day.till(PENDING), day.there(PENDING)) == ((110, 0, [(30, EXPIRES)]), (80, 30))
    first = day.refund("p-1-r1", "p-1", PENDING, "1")
    assert first["takenBackPoints"] == 15
    assert seen(first["balance"]) == (95, 0, [(15, EXPIRES)])
    listed = (95, 0, [(15, EXPIRES)])
    agree(
        day,
        [listed, listed, listed, listed, (80, 0, [])],
        [(80, 15), (80, 15), (95, 0), (95, 0), (80, 0)],
    )
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (95, [(15, EXPIRES)])
    second = day.refund("p-1-r2", "p-1", "2026-12-03T12:00:00+03:00", "1")
    assert second["takenBackPoints"] == 15
    assert seen(second["balance"]) == (80, 0, [])
    agree(day, [(80, 0, [])] * 5)
    assert row_of(day.sync("2026-12-07T12:00:00+03:00")) == (80, [])


def test_a_refund_entered_before_a_snapshot_that_counts_only_the_sale(day: Day) -> None:
    """The refund reaches the till on time (before any snapshot counts the sale): off
    the sale's own pending batch, 80 and 0 (as before). The hub then publishes on 5.12
    having counted the sale but not the refund (pushed later): 110, [30 on 3.1]; the
    till replays its refund over it: 80 at every time, nothing listed (before: 110 and
    -30 pending on 2.12, 30 listed until 3.1)."""
    day.sell("p-1", SOLD, "1", 100000)
    day.push()
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert seen(back["balance"]) == (80, 0, [])
    assert row_of(day.sync("2026-12-05T12:00:00+03:00")) == (110, [(30, EXPIRES)])
    agree(day, [(80, 0, [])] * 5)
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])


def test_a_refund_entered_before_the_snapshot_that_counts_both(day: Day) -> None:
    """As before this review: the refund on time, then a snapshot that counts the sale
    and the refund: 80, nothing to expire, on both sides."""
    day.sell("p-1", SOLD, "1", 100000)
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert seen(back["balance"]) == (80, 0, [])
    day.push()
    assert row_of(day.sync("2026-12-05T12:00:00+03:00")) == (80, [])
    agree(day, [(80, 0, [])] * 5)


def test_a_refund_dated_after_the_activation_as_before(day: Day) -> None:
    """A refund dated 5.12 (the points active at its `at`) takes them off the 3.1 batch,
    as before this review: 80, nothing listed, at 5.12 and after; before it, at 2.12 and
    4.12, 80 too (a take-back counts at once, §16's decisions: review 40's reading)."""
    counted_after_activation(day)
    back = day.refund("p-1-r", "p-1", "2026-12-05T13:00:00+03:00", "1")
    assert seen(back["balance"]) == (80, 0, [])
    agree(day, [(80, 0, [])] * 5)
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])


def test_a_snapshot_that_does_not_count_the_sale_yet_as_before(day: Day) -> None:
    """The hub publishes on 5.12 before the sale reaches it (80); the refund dated 2.12
    takes the 30 off the sale's own pending batch: 80, 0 pending, at every time."""
    day.sell("p-1", SOLD, "1", 100000)
    assert row_of(day.sync("2026-12-05T12:00:00+03:00")) == (80, [])
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert seen(back["balance"]) == (80, 0, [])
    agree(day, [(80, 0, [])] * 5)
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])


def test_a_snapshot_that_counts_the_sale_while_pending_as_before(day: Day) -> None:
    """The hub publishes on 2.12 at 00:00, the sale counted and its 30 pending (a
    `pending` entry activating on 4.12): the refund takes them off that entry, as before:
    80, 0 pending, at every time."""
    day.sell("p-1", SOLD, "1", 100000)
    day.push()
    row = day.sync("2026-12-02T00:00:00+03:00")
    entries = [(e["points"], t(e["activatesAt"])) for e in row["pending"]]
    assert (row["balancePoints"], entries) == (80, [(30, t(ACTIVE))])
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert seen(back["balance"]) == (80, 0, [])
    agree(day, [(80, 0, [])] * 5)


def test_a_late_refund_of_a_sale_that_redeemed_and_earned(day: Day) -> None:
    """1.12: 1000.00 redeeming 50 of the 80 (payable 950.00) earns floor(950.00 × 3 %) =
    28, spendable on 4.12: 30 available, 28 pending. The hub publishes on 5.12: 58, [28
    on 3.1]. The refund dated 2.12 gives back 50 (to the part that never expires, where
    they came from) and takes back 28 off the 3.1 batch: 80, nothing pending or listed,
    at every time."""
    sold = day.sell("p-1", SOLD, "1", 100000, redeem=50)
    assert (sold["redeemedPoints"], sold["earnedPoints"]) == (50, 28)
    assert seen(sold["balance"]) == (30, 28, [])
    day.push()
    assert row_of(day.sync("2026-12-05T12:00:00+03:00")) == (58, [(28, EXPIRES)])
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert (back["returnedPoints"], back["takenBackPoints"]) == (50, 28)
    assert seen(back["balance"]) == (80, 0, [])
    agree(day, [(80, 0, [])] * 5)
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])


def test_a_late_refund_after_the_points_were_spent_is_a_debt_that_does_not_expire(
    day: Day,
) -> None:
    """The sale's 30 are spent before the refund arrives: on 5.12 a sale of 100.00
    redeems 100 (the 30 of 3.1 first, soonest-expiring, then 70 of the 80): 10 left,
    none listed, and the hub publishes 10. The refund dated 2.12 takes back 30: nothing
    of the 3.1 batch is left, so 10 off the rest and 20 owed: -20 at every time,
    `negativeBalance` true; the hub says -20 too. (Before: -30 pending until 4.12, and
    from 3.1 the till said 10, its batch below zero gone with the expiry.)"""
    counted_after_activation(day)
    spent = day.sell("q-2", "2026-12-05T13:00:00+03:00", "1", 10000, redeem=100)
    assert (spent["redeemedPoints"], seen(spent["balance"])) == (100, (10, 0, []))
    day.push()
    assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (10, [])
    back = day.refund("p-1-r", "p-1", PENDING, "1")
    assert back["takenBackPoints"] == 30
    assert seen(back["balance"]) == (-20, 0, [])
    assert back["negativeBalance"] is True
    agree(day, [(-20, 0, [])] * 5)
    assert row_of(day.sync("2026-12-07T12:00:00+03:00")) == (-20, [])


def test_the_hub_stores_agree_on_the_late_refund(tmp_path: Path, hub_store_factory: Any) -> None:
    """The case above with each hub store (SQLite, PostgreSQL): the hub's balance at
    every time and its next snapshot say what the till says."""
    day = Day(tmp_path, hub_store_factory())
    try:
        counted_after_activation(day)
        back = day.refund("p-1-r", "p-1", PENDING, "1")
        assert seen(back["balance"]) == (80, 0, [])
        agree(day, [(80, 0, [])] * 5)
        assert row_of(day.sync("2026-12-06T12:00:00+03:00")) == (80, [])
    finally:
        day.agent.close()  # the factory closes its hub store


# ---------------------------------------------------------------- the POS's view


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith("TILLPOINT_")]:
        monkeypatch.delenv(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    return env | {"TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0"}


def test_a_pos_posting_the_late_refund_to_a_running_till_reads_no_negative_pending(
    tmp_path: Path, bare_env: dict[str, str]
) -> None:
    """The till's data made in this process (the sale, the hub's snapshot of 5.12
    loaded), then a real `tillpoint run` on it: the POS posts the refund dated 2.12 to
    /v1/refund and reads 80 available, 0 pending, nothing to expire (before: `-30`
    pending, 110, 30 "сгорят 03.01"), and /v1/balance on 2.1 says 80 with no warning."""
    day = Day(tmp_path)
    try:
        counted_after_activation(day)
        day.agent.close()
        pos_posts_the_refund(tmp_path, day, bare_env)
        # what the till's push sends makes the hub's next snapshot say the same
        day.push()
        assert row_of(day.publish_row("2026-12-06T12:00:00+03:00")) == (80, [])
    finally:
        day.close()


def pos_posts_the_refund(tmp_path: Path, day: Day, bare_env: dict[str, str]) -> None:
    grpc = socket.socket()
    grpc.bind(("127.0.0.1", 0))
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{grpc.getsockname()[1]}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    grpc.close()
    run = subprocess.Popen(
        [EXE, "--config", conf, "--data-dir", day.dir, "run"],
        env=bare_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        serving = day.dir / "serving.json"
        deadline = time.monotonic() + 60
        while not serving.exists():
            assert run.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)
        port = json.loads(serving.read_text(encoding="utf-8"))["port"]

        def post(path: str, body: Any) -> Any:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                answer = conn.getresponse()
                status, text = answer.status, answer.read().decode()
            finally:
                conn.close()
            assert status == 200, text
            return json.loads(text)

        body = {"refundId": "p-1-r", "receiptId": "p-1", "at": PENDING}
        back = post("/v1/refund", body | {"lines": [{"sku": SKU, "qty": "1"}]})
        assert (back["returnedPoints"], back["takenBackPoints"]) == (0, 30)
        assert back["balance"] == {"availablePoints": 80, "pendingPoints": 0}
        assert back["negativeBalance"] is False
        later = post("/v1/balance", {"card": BORIS, "at": "2027-01-02T12:00:00+03:00"})
        assert later == {"availablePoints": 80, "pendingPoints": 0}
    finally:
        run.terminate()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


# ---------------------------------------------------------------- seeded histories


def late_history(seed: int, tmp: Path) -> str | None:
    """A random history at one till of sales (some redeeming, some pushed at once),
    syncs (the hub counts the outbox and publishes; the till loads it) and refunds of
    parts of the sales dated between the sale and now (late ones included, reaching the
    till after a snapshot that counts their sale's points active), but never before a
    redeeming sale or another refund already made: a refund dated before a spend the
    snapshot counted is replayed after it on the till until the next snapshot (§16's
    decisions), a known difference, not this review's. The first refund whose result has
    `pendingPoints` below zero, or the first moment from the last step on where the till
    and the hub (having counted everything) disagree on available and pending points, or
    the till's `expiring` differs from the hub's snapshot's (its first 3 batches); None
    when they agree. (Before review 50, 5 of the seeds 0–119 failed: 4 a negative
    pending figure, seed 5 from 3.1 on, the till giving back points its batch below zero
    had taken.)"""
    r = random.Random(seed)
    lifetime, delay = r.choice([0, 5, 30]), r.choice([1, 3])
    start = t("2026-11-23T10:00:00+03:00")
    batches = [(r.randint(10, 300), start + timedelta(hours=r.randint(10, 400))) for _ in "ab"]
    hub = SqliteHubStore(tmp / "hub.db")
    agent = Agent(tmp / "till", "till-1")
    try:
        master = _master(r.choice([0, 100, 1000]), batches[: r.randint(0, 2)], lifetime, delay)
        import_doc(hub, master)
        agent.load_snapshot(hub.snapshot_doc(hub.publish(start, WEEK).version, 0))
        now, left, sold_at, steps = start, {}, {}, []
        last_spend = start
        for i in range(r.randint(4, 10)):
            now += timedelta(hours=r.randint(1, 60))
            step = r.choice(["sale", "sale", "refund", "refund", "sync", "sync"])
            if step == "sale":
                line = {"sku": SKU, "qty": "1", "priceMinor": r.randint(100, 300_000)}
                body = receipt(f"r{i}", card=BORIS, at=now.isoformat(), lines=[line])
                body["redeemPoints"] = r.choice([0, 0, 50, 400])
                agent.checkout(receipt_from_json(body))
                left[f"r{i}"], sold_at[f"r{i}"] = 4, now  # quarters left
                if body["redeemPoints"]:
                    last_spend = now
                if r.random() < 0.5:
                    hub.ingest("till-1", "", pushed(tmp / "till"), NOW)
            elif step == "refund" and any(left.values()):
                sold = r.choice([s for s, q in left.items() if q])
                quarters = r.randint(1, left[sold])
                left[sold] -= quarters
                since = max(sold_at[sold], last_spend)
                at = since + timedelta(seconds=r.randint(0, int((now - since).total_seconds())))
                last_spend = at
                body = {"refundId": f"f{i}", "receiptId": sold, "at": at.isoformat()}
                body["lines"] = [{"sku": SKU, "qty": str(quarters / 4)}]
                back = agent.refund(Refund.model_validate(body)).to_json()
                if back["balance"]["pendingPoints"] < 0:
                    return f"seed {seed}: {steps}, a refund answered {back}"
                step += f" of {sold} dated {at:%d.%m %H}"
            elif step == "sync":
                hub.ingest("till-1", "", pushed(tmp / "till"), NOW)
                agent.load_snapshot(hub.snapshot_doc(hub.publish(now, WEEK).version, 0))
            steps.append(f"{step} {now:%d.%m %H}")
        hub.ingest("till-1", "", pushed(tmp / "till"), NOW)
        for hours in (0, 1, 5, 24, 48, 72, 24 * 7, 24 * 20, 24 * 40):
            moment = now + timedelta(hours=hours)
            till = agent.balance(BORIS, moment).to_json()
            there = hub.balance("c-b", moment)
            if (till["availablePoints"], till["pendingPoints"]) != (there.available, there.pending):
                return (
                    f"seed {seed} (L {lifetime}, d {delay}): {steps}, +{hours} h: {till}, {there}"
                )
        doc = hub.snapshot_doc(hub.publish(now, WEEK).version, 0)
        listed = seen(agent.balance(BORIS, now).to_json())[2]
        published = [(p, t(e).isoformat()) for p, e in row_of(boris_of(doc))[1]][:3]
        if listed != published:
            return f"seed {seed} (L {lifetime}, d {delay}): {steps}: {listed} != {published}"
    finally:
        agent.close()
        hub.close()
    return None


def test_the_till_and_the_hub_agree_on_late_refunds_in_seeded_histories(tmp_path: Path) -> None:
    """Four of the seeds that failed before review 50 (~3 s)."""
    found = [d for seed in (5, 17, 53, 106) if (d := late_history(seed, tmp_path / str(seed)))]
    assert not found, "\n".join(found)


# Seeds of 0-499 where the till and the hub disagree for reasons this review leaves
# (docs/DECISIONS.md, review 50: "Left"); each failed the same way before it.
KNOWN = {
    240: "a refund dated before a later sale's points activated, entered after a snapshot"
    " that lists those points: the till takes its spend from them, the hub from the rest",
    350: "a refund dated before its sale's batch expired, entered after a snapshot that"
    " no longer lists the batch: the till takes the points from the rest",
    425: "points given back into a counted sale's batch that a refund the snapshot"
    " counted had found spent: the till has no memory of that spend to pay back",
}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_till_and_the_hub_agree_on_late_refunds_in_many_seeded_histories(
    tmp_path: Path,
) -> None:
    """300 seeds but the known ones (~2–4 minutes on a loaded machine)."""
    seeds = [seed for seed in range(300) if seed not in KNOWN]
    found = [d for seed in seeds if (d := late_history(seed, tmp_path / str(seed)))]
    assert not found, "\n".join(found[:5])


@pytest.mark.slow
@pytest.mark.parametrize("seed", sorted(KNOWN))
def test_the_known_differences_left(seed: int, tmp_path: Path) -> None:
    """Each known seed still disagrees (strict: a change that mends one says so)."""
    found = late_history(seed, tmp_path)
    assert found is not None, f"seed {seed} agrees now: {KNOWN[seed]}"
