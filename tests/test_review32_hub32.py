"""Review 32 (hub32): the hub's doors under the faults a chain really has (docs/CONTRACT.md
§6, §9, §10; docs/HUB.md). Real parts: `tillpoint hub serve` and `tillpoint run` as
processes killed with SIGKILL, the hub on SQLite and on PostgreSQL (a throwaway cluster),
enrolled tills over mTLS on 127.0.0.1, their SQLite ledgers read as they are.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync import pki
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubDir
from tillpoint.sync.loopback import import_doc, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import Puller

from bench.hubready import wait_hub_serving
from bench.pgfaults import clean_env
from tests.conftest import free_port

EXE = str(Path(sys.executable).with_name("tillpoint"))
CARD = "2770000000017"  # c-1's card in the sample data
MILK = "4601234000017"


# ---------------------------------------------------------------- a hub as a process


class HubProcess:
    """A hub in `root` (SQLite, or the PostgreSQL database `url`) with the sample master
    data published, its tills enrolled (their bundles installed under `work/DEVICE`), and
    `tillpoint hub serve` started and SIGKILLed as a process."""

    def __init__(self, work: Path, url: str | None, devices: list[str]) -> None:
        self.work = work
        self.url = url
        self.dir = HubDir(work / "hub", url)
        self.dir.init()
        store = self.dir.open_store(migrate=True)
        import_doc(store, sample_master_data())
        store.publish(datetime.now(UTC), 7 * 86400.0)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.enrollments: dict[str, pki.Enrollment] = {}
        for device in devices:
            identity = pki.issue_device(self.dir.keys, device)
            store.enroll(device, identity.fingerprint, datetime.now(UTC))
            bundle = pki.make_bundle(self.dir.keys, identity, self.address)
            self.enrollments[device] = pki.install_bundle(work / device, bundle, device)
        store.close()
        self.log = work / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def store_args(self) -> list[str]:
        return ["--hub-dir", str(self.dir.root), *(["--store", self.url] if self.url else [])]

    def serve(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [EXE, "hub", "serve", *self.store_args(), "--listen", self.address],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        self.procs.append(self.proc)
        # ready when the hub says SERVING, not when its port accepts (review 44, flake44)
        if not wait_hub_serving(self.address, next(iter(self.enrollments.values())), 60, self.proc):
            raise RuntimeError("hub did not start: " + self.log.read_text(errors="replace")[-2000:])

    def listening(self) -> bool:
        import socket

        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def open_store(self) -> Any:
        return self.dir.open_store()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_url(request: pytest.FixtureRequest) -> str | None:
    """The hub's store: None (SQLite in the hub's directory) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_cluster").new_database())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def both_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The reference hub with the sample data, in process, on SQLite and on PostgreSQL."""
    from tillpoint.sync.loopback import LoopbackHub

    url = None
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_cluster").new_database())
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), store=url)
    yield hub
    hub.stop()


@pytest.fixture()
def procs() -> Iterator[list[Any]]:
    """Processes and hubs the test started, stopped at its end."""
    started: list[Any] = []
    yield started
    for item in reversed(started):
        if isinstance(item, HubProcess):
            item.stop()
        elif item.poll() is None:
            item.kill()
            item.wait(timeout=10)


def till_config(work: Path, device: str, address: str) -> Path:
    """A till's configuration with the shipped sync settings (nothing under [hub] but its
    address); its own ports."""
    path = work / f"{device}.toml"
    path.write_text(
        f'device_id = "{device}"\n'
        f'data_dir = "{work / device}"\n'
        f'[hub]\naddress = "{address}"\n'
        '[server]\nlisten = "127.0.0.1:0"\n'
        "[metrics]\nenabled = false\n"
        '[http]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    return path


def start_till(procs: list[Any], work: Path, device: str, address: str) -> None:
    with open(work / f"{device}.log", "ab") as out:
        proc = subprocess.Popen(
            [EXE, "--config", str(till_config(work, device, address)), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    procs.append(proc)


def ledger_rows(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "ledger.db", timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def outbox(data_dir: Path) -> int:
    return int(ledger_rows(data_dir, "SELECT count(*) FROM outbox")[0][0])


def sell_offline(hub: HubProcess, device: str, count: int) -> list[str]:
    """`count` sales (every fifth refunded in part, one redeeming) in `device`'s ledger,
    with no sync running: its outbox holds them all. Returns the ids committed."""
    data_dir = hub.work / device
    enrollment = hub.enrollments[device]
    agent = Agent(data_dir, device)
    link = HubLink(hub.address, enrollment)
    committed: list[str] = []
    try:
        Puller(agent, link, enrollment, call_timeout_s=10).pull()
        for i in range(count):
            rid = f"{device}-{i}"
            agent.checkout(receipt_from_json(receipt(rid, CARD, redeem=1 if i == 0 else 0)))
            committed.append(rid)
            if i % 5 == 4:
                ref = f"{rid}-r"
                agent.refund(
                    refund_from_json(
                        {
                            "refundId": ref,
                            "receiptId": rid,
                            "at": datetime.now(UTC).isoformat(),
                            "lines": [{"sku": MILK, "qty": "1"}],
                        }
                    )
                )
                committed.append(ref)
    finally:
        link.close()
        agent.close()
    return committed


def hub_books(store: Any, device: str) -> list[tuple[str, int, str, str, int, int]]:
    return [
        (e.device_id, e.seq, e.kind, e.ref_id, e.delta_available, e.delta_pending)
        for e in store.ledger(device)
    ]


def till_books(data_dir: Path, device: str) -> list[tuple[str, int, str, str, int, int]]:
    """What the till sent, as the hub should hold it: its journal with the points each
    transaction moved (the acknowledged rows are kept in `sync_sent` as they were sent)."""
    rows = ledger_rows(
        data_dir,
        "SELECT j.device_id, j.seq, j.kind, j.ref_id,"
        " coalesce(json_extract(s.payload, '$.pointsDeltaAvailable'), 0),"
        " coalesce(json_extract(s.payload, '$.pointsDeltaPending'), 0)"
        " FROM journal j LEFT JOIN sync_sent s ON s.device_id = j.device_id AND s.seq = j.seq"
        " WHERE j.device_id = ? ORDER BY j.seq",
        device,
    )
    return [(str(a), int(b), str(c), str(d), int(e), int(f)) for a, b, c, d, e, f in rows]


# ---------------------------------------------------------------- 1. SIGKILL of the hub


@pytest.mark.slow
def test_hub_serve_killed_mid_push_of_hundreds_stores_each_once_and_the_outbox_drains(
    tmp_path: Path, hub_url: str | None, procs: list[Any]
) -> None:
    """CONTRACT §9 (exactly once in effect): a till comes back with 600 sales and their
    refunds in its outbox; `tillpoint hub serve` is SIGKILLed while the till's `run`
    uploads them (batches of 200). After a restart of the hub, the till's outbox drains by
    itself with the shipped settings, and the hub holds every receipt and refund once,
    each with the points the till sent, the device's mark at the last seq: no batch half
    applied, nothing counted twice."""
    device = "till-k"
    hub = HubProcess(tmp_path, hub_url, [device])
    procs.append(hub)
    hub.serve()
    committed = sell_offline(hub, device, 600)
    total = len(committed)
    assert outbox(tmp_path / device) == total

    watch = hub.open_store()
    try:
        start_till(procs, tmp_path, device, hub.address)
        wait_for(lambda: len(watch.ledger(device)) > 0, 60, every=0.005)
        hub.sigkill()  # a push is on its way: 200 stored, the rest still to come
        at_kill = len(watch.ledger(device))
        assert 0 < at_kill < total
        assert outbox(tmp_path / device) >= total - at_kill  # nothing left unacknowledged

        hub.serve()
        wait_for(lambda: outbox(tmp_path / device) == 0, 120, every=0.1)
        books = hub_books(watch, device)
        assert books == till_books(tmp_path / device, device)
        assert sorted(ref for _, _, _, ref, _, _ in books) == sorted(committed)
        assert watch.applied_through(device) == total
        assert watch.set_aside_transactions(device) == []
    finally:
        watch.close()
    log = hub.log.read_text(errors="replace")
    assert "Traceback" not in log


def write_customers(path: Path, count: int) -> None:
    """A JSON Lines import of `count` customers (about 100 bytes a line)."""
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            row = {"id": f"imp-{i:08d}", "firstName": "Мария", "tier": "base"}
            out.write(json.dumps({"customer": {**row, "balancePoints": i % 997}}) + "\n")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_hub_import_killed_midway_changes_nothing_and_the_next_import_goes_through(
    tmp_path: Path, hub_url: str | None, procs: list[Any]
) -> None:
    """docs/HUB.md: `tillpoint hub import` of a file big enough for its reading workers
    (over 16 MiB), SIGKILLed midway while `hub serve` serves: the hub's draft and
    published data are as before (one transaction: nothing half imported), no worker is
    left running, the server goes on answering, and the same import run again goes
    through and publishes."""
    hub = HubProcess(tmp_path, hub_url, ["till-i"])
    procs.append(hub)
    hub.serve()
    big = tmp_path / "customers.jsonl"
    write_customers(big, 220_000)
    assert big.stat().st_size > 16 << 20
    store = hub.open_store()
    try:
        before = (store.draft_size(), store.latest().version)
        with open(tmp_path / "import.log", "ab") as out:
            proc = subprocess.Popen(
                [EXE, "hub", "import", *hub.store_args(), str(big), "--publish"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        procs.append(proc)
        workers: set[int] = set()
        until = time.monotonic() + 2.5  # reading, and writing into the draft
        while time.monotonic() < until:
            workers |= set(children(proc.pid))
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "import.log").read_text()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not any(alive(p) for p in workers), 20, every=0.1)

        assert (store.draft_size(), store.latest().version) == before
        assert hub.listening() and hub.proc is not None and hub.proc.poll() is None

        done = subprocess.run(
            [EXE, "hub", "import", *hub.store_args(), str(big), "--publish"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert store.latest().version == before[1] + 1
        assert store.balance("imp-00000998", datetime.now(UTC)).available == 1
    finally:
        store.close()


# ---------------------------------------------------------------- 2, 3. refunds and tills


def refund_body(refund_id: str, receipt_id: str, qty: str = "1") -> dict[str, Any]:
    return {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": MILK, "qty": qty}],
    }


def push_all(till: Any) -> int:
    from tillpoint.sync.push import Pusher

    pusher = Pusher(till.data_dir, till.device_id, till.link, call_timeout_s=5)
    try:
        return pusher.drain()
    finally:
        pusher.close()


def hub_points(hub: Any, customer: str = "c-1") -> tuple[int, int]:
    found = hub.store.balance(customer, datetime.now(UTC))
    return found.available, found.pending


def till_points(till: Any) -> tuple[int, int]:
    found = till.agent.balance(CARD)
    return found.available_points, found.pending_points


def test_a_refund_at_another_till_is_refused_there_and_leaves_the_hub_as_it_was(
    hub: Any, tmp_path: Path
) -> None:
    """CONTRACT §6: a receipt this till never committed is refused. Anna buys at till A
    (redeeming 10 points) and comes back to till B of the same store with the milk: B
    answers NOT_FOUND "receipt … was never committed at this till" (HTTP 404, exit 2),
    whether A's sale is still in A's outbox or already at the hub, and writes nothing: its
    outbox and journal stay empty, the hub's books hold A's sale alone, Anna's balance at
    the hub is the sale's. The refund is taken at till A, whose push brings the hub to the
    till's own balance."""
    from tillpoint.agent.errors import NotFound

    from tests.conftest import enrolled_till

    till_a = enrolled_till(hub, tmp_path / "a", "till-a")
    till_b = enrolled_till(hub, tmp_path / "b", "till-b")
    try:
        start = hub_points(hub)
        till_a.agent.checkout(receipt_from_json(receipt("a-1", CARD, redeem=10)))
        for queued in (True, False):  # A's sale still queued, then at the hub
            if not queued:
                assert push_all(till_a) == 1
            with pytest.raises(NotFound, match="receipt a-1 was never committed at this till"):
                till_b.agent.refund(refund_from_json(refund_body("b-r1", "a-1")))
            assert outbox(till_b.data_dir) == 0
            assert ledger_rows(till_b.data_dir, "SELECT count(*) FROM journal")[0][0] == 0
        assert [(e.device_id, e.kind, e.ref_id) for e in hub.store.ledger()] == [
            ("till-a", "CHECKOUT", "a-1")
        ]
        after_sale = hub_points(hub)
        assert after_sale == till_points(till_a) and after_sale != start

        done = till_a.agent.refund(refund_from_json(refund_body("a-r1", "a-1", qty="2")))
        assert done.returned_points == 10 and not done.negative_balance
        assert push_all(till_a) == 1
        assert [(e.device_id, e.kind, e.ref_id) for e in hub.store.ledger()] == [
            ("till-a", "CHECKOUT", "a-1"),
            ("till-a", "REFUND", "a-r1"),
        ]
        assert hub_points(hub) == till_points(till_a) == start  # all returned: as before
    finally:
        till_a.stop()
        till_b.stop()


def test_a_refund_that_reaches_the_hub_before_its_sale_is_counted_once_the_sale_is_in(
    hub: Any, tmp_path: Path
) -> None:
    """CONTRACT §6, §9. Anna's sale at till A waits in A's outbox (the hub away) when she
    returns the milk at A: the till refunds it from its own ledger (its answer counts the
    sale it has not sent). When the link comes back the outbox goes in seq order, sale
    first; and should the refund reach the hub alone first (a batch of it only), the hub
    stores it but its contiguous mark for A stays below it until the sale is in, so neither
    a published snapshot nor the live balance counts the refund without its sale; then
    both count once and the hub's balance is the till's."""
    from tillpoint.sync.push import Pusher
    from tillpoint.v1 import tillpoint_pb2 as pb

    from tests.conftest import enrolled_till

    till = enrolled_till(hub, tmp_path / "a", "till-a")
    try:
        start = hub_points(hub)
        sold = till.agent.checkout(receipt_from_json(receipt("q-1", CARD, redeem=10)))
        done = till.agent.refund(refund_from_json(refund_body("q-r1", "q-1")))
        assert (sold.seq, done.seq) == (1, 2)
        assert done.returned_points == 5 and done.balance is not None
        assert (done.balance.available_points, done.balance.pending_points) == till_points(till)
        assert hub_points(hub) == start  # the hub has seen neither

        pusher = Pusher(till.data_dir, till.device_id, till.link, call_timeout_s=5)
        try:
            rows = dict(pusher._batch())
            alone = pb.TransactionBatch(
                device_id="till-a", transactions=[pusher._transaction(2, rows[2])]
            )
            ack = till.link.stub.PushTransactions(alone, timeout=5)
            assert [r.outcome for r in ack.results] == [pb.TX_STORED]
            assert ack.acked_through_seq == 0  # the refund waits for its sale
            assert hub.store.applied_through("till-a") == 0
            assert hub_points(hub) == start  # nor in the live balance other tills spend
            doc = hub.store.snapshot_doc(hub.publish(), 0)
            assert doc.get("appliedThrough", {}).get("till-a", 0) == 0
            anna = next(c for c in doc["customers"] if c["id"] == "c-1")
            assert anna["balancePoints"] == start[0]  # the refund alone is not counted

            assert pusher.drain() == 2  # the sale, and the refund again: DUPLICATE
        finally:
            pusher.close()
        assert hub.store.applied_through("till-a") == 2
        assert [(e.kind, e.ref_id) for e in hub.store.ledger("till-a")] == [
            ("CHECKOUT", "q-1"),
            ("REFUND", "q-r1"),
        ]
        assert hub_points(hub) == till_points(till)
    finally:
        till.stop()


# ---------------------------------------------------------------- 4, 5. one device id, two ledgers


def test_a_wiped_till_that_sells_before_reaching_its_hub_has_its_sales_stored(
    both_hub: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT §9 (a seq is never reused; exactly once in effect). Till W pushed its
    sales 1-3; the hub has not published since. W's disk is wiped and W re-enrolled under
    the same device id; a technician loads the hub's last snapshot from a file (its
    appliedThrough knows none of W's sales) and W sells before it reaches the hub: its
    seqs start at 1 again. The hub, holding other sales under 1 and 2, answered CONFLICT
    and the till set both aside for good: two sales of the customer never counted
    anywhere. Now the hub says the seq is taken (`seqTaken`), the till numbers each such
    sale above the hub's mark and sends it again, and the hub stores it: every sale once."""
    hub = both_hub
    from tests.conftest import enrolled_till

    data_dir = tmp_path / "w"
    till = enrolled_till(hub, data_dir, "till-w")
    for i in (1, 2, 3):
        till.agent.checkout(receipt_from_json(receipt(f"w-{i}", CARD)))
    assert push_all(till) == 3
    till.stop()
    shutil.rmtree(data_dir)

    hub.enroll("till-w", data_dir)  # `hub enroll till-w --renew`, `sync install`
    agent = Agent(data_dir, "till-w")
    try:
        agent.load_snapshot(hub.store.snapshot_doc(1, 0))  # the file the technician had
        bodies = {i: receipt(f"w-{i}", CARD) for i in (4, 5)}
        for i in (4, 5):
            agent.checkout(receipt_from_json(bodies[i]))
    finally:
        agent.close()
    assert [r[0] for r in ledger_rows(data_dir, "SELECT seq FROM journal")] == [1, 2]

    till = hub.till("till-w", data_dir, start=False)
    try:
        with caplog.at_level("WARNING"):
            push_all(till)
            push_all(till)  # what was numbered again, if not sent in the same call
        assert outbox(data_dir) == 0
        assert sorted(e.ref_id for e in hub.store.ledger("till-w")) == [
            "w-1",
            "w-2",
            "w-3",
            "w-4",
            "w-5",
        ]
        status = till.agent.status().to_json()
        assert status["setAside"] == 0 and status["syncError"] == "", status
        assert hub.store.applied_through("till-w") == 5
        assert [r[0] for r in ledger_rows(data_dir, "SELECT seq FROM journal")] == [4, 5]
        # the POS sending the sale again is answered with the seq it goes by now
        assert till.agent.checkout(receipt_from_json(bodies[4])).seq == 4
        hub.publish()  # the till's own snapshot was the old file: the hub's next one
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5).pull()
        assert hub_points(hub) == till_points(till) == (1200 + 5 * 12, 0)
        said = [r.getMessage() for r in caplog.records if r.name == "tillpoint.sync"]
        assert any("numbered again" in m and "seq 1" in m for m in said), said
    finally:
        till.stop()


def test_two_live_tills_under_one_device_id_lose_and_double_nothing_and_say_so(
    both_hub: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CONTRACT §9, a real support case: one disk image cloned onto two tills, both
    running as till-x with the same bundle. Their sales and pushes interleave; each number
    collides with the other's now and then. Every sale of each reaches the hub once (a
    colliding one numbered again above the hub's mark and sent again); a receipt id both
    used (their POS cloned too) is stored once and the other set aside, never doubled;
    and the hub's log says, at each collision, that two tills may be running as till-x."""
    hub = both_hub
    from tillpoint.agent.app import till_agent
    from tillpoint.sync.authoriser import HubAuthoriser
    from tillpoint.sync.loopback import Till

    identity = pki.issue_device(hub.dir.keys, "till-x")
    hub.store.enroll("till-x", identity.fingerprint, datetime.now(UTC))
    bundle = pki.make_bundle(hub.dir.keys, identity, hub.address)
    tills: dict[str, Any] = {}
    try:
        for name in ("a", "b"):
            enrollment = pki.install_bundle(tmp_path / name, bundle, "till-x")
            link = HubLink(hub.address, enrollment)
            authoriser = HubAuthoriser(link, tmp_path / name, "till-x", 0.3)
            agent = till_agent(tmp_path / name, "till-x", hub=authoriser)
            tills[name] = Till("till-x", tmp_path / name, agent, link, None, authoriser)
            Puller(agent, link, enrollment, call_timeout_s=5).pull()

        sold: list[str] = []

        def sell(name: str, n: int) -> None:
            sale = receipt(f"{name}-{n}", CARD)
            sale["tillId"] = name
            tills[name].agent.checkout(receipt_from_json(sale))
            sold.append(f"{name}-{n}")

        with caplog.at_level("WARNING"):
            for n in range(1, 6):  # interleaved: each sells, then each pushes
                sell("a", n)
                sell("b", n)
                if n % 2:
                    push_all(tills["a"])
                push_all(tills["b"])
            same = receipt("pos-1", CARD)  # both POS number their receipts alike
            tills["a"].agent.checkout(receipt_from_json(same))
            same["lines"] = [{"sku": MILK, "qty": "1", "priceMinor": 8990}]
            tills["b"].agent.checkout(receipt_from_json(same))
            for _ in range(3):
                push_all(tills["a"])
                push_all(tills["b"])
        stored = sorted(e.ref_id for e in hub.store.ledger("till-x"))
        assert stored == sorted([*sold, "pos-1"])  # each once
        assert outbox(tmp_path / "a") == outbox(tmp_path / "b") == 0
        aside = [tills[n].agent.status().to_json()["setAside"] for n in ("a", "b")]
        assert sorted(aside) == [0, 1]  # pos-1 of the second: another request, one id
        hub_said = [r.getMessage() for r in caplog.records if r.name == "tillpoint.hub"]
        assert any("two tills may be running as till-x" in m for m in hub_said), hub_said
    finally:
        for till in tills.values():
            till.stop()


# ---------------------------------------------------------------- 6. the largest receipt


def test_the_largest_receipt_reaches_the_hub_and_one_just_over_stops_at_the_till(
    hub: Any, tmp_path: Path
) -> None:
    """CONTRACT §5, §10 (limits: 10,000 lines, 128 characters a text, 4 MiB a request) and
    §9. The largest receipt the limits allow (10,000 lines, ids and half the SKUs 128
    characters, quantities and amounts at their widest: 1.5 MB of request, 3.3 MB of
    transaction) is committed, pushed alone and stored at the hub, and the outbox drains.
    One line more is refused at the till's door with one line (exit 2, HTTP 400,
    INVALID_ARGUMENT), nothing journalled. A push larger than the hub takes in one message
    (16 MiB, only a hand-made client sends one) is refused by gRPC (RESOURCE_EXHAUSTED)
    before the hub reads it; the hub goes on and takes the till's next push."""
    import grpc
    from tillpoint.agent.errors import InputError
    from tillpoint.v1 import tillpoint_pb2 as pb

    from tests.conftest import enrolled_till

    till = enrolled_till(hub, tmp_path / "t", "till-1")
    try:
        lines = [
            {
                "sku": MILK if i % 2 else "9" * 120 + f"{i:08d}",
                "qty": "999.999",
                "priceMinor": 999_999_999,
                "amountMinor": 999_999_999_999,
            }
            for i in range(10_000)
        ]
        big = receipt("b" * 128, CARD, lines=lines)
        big["storeId"], big["tillId"] = "s" * 128, "t" * 128
        over = {**big, "receiptId": "over", "lines": [*lines, lines[0]]}
        with pytest.raises(InputError, match="lines") as refused:
            till.agent.checkout(receipt_from_json(over))
        assert "\n" not in str(refused.value) and refused.value.exit_code == 2
        assert outbox(till.data_dir) == 0

        sold = till.agent.checkout(receipt_from_json(big))
        sizes = ledger_rows(till.data_dir, "SELECT length(request) + length(result) FROM receipts")
        assert sizes[0][0] > 3_000_000
        assert push_all(till) == 1 and outbox(till.data_dir) == 0
        [stored] = hub.store.transactions("till-1")
        assert (stored.receipt_id, stored.seq) == ("b" * 128, sold.seq)
        assert hub.store.applied_through("till-1") == 1

        huge = pb.Transaction(
            device_id="till-1", seq=2, kind=pb.CHECKOUT, request_json="x" * (17 << 20)
        )
        with pytest.raises(grpc.RpcError) as too_big:
            till.link.stub.PushTransactions(
                pb.TransactionBatch(device_id="till-1", transactions=[huge]), timeout=30
            )
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        till.agent.checkout(receipt_from_json(receipt("after", CARD)))
        assert push_all(till) == 1 and hub.store.applied_through("till-1") == 2
    finally:
        till.stop()
