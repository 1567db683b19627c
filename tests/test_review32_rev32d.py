"""Review 32 (rev32d): the till and the hub of different releases, after review 32's sync
changes (docs/CONTRACT.md §9, §10, §11; docs/PROTOCOL.md; docs/HUB.md). A chain upgrades
its hub and its tills at different times: a till of the release before (4362ba0, which
sets a seq taken aside for good) against this hub, this till against that hub, each
upgraded in place; and the hub's "resolved" set-aside entries (hub32b) met by rev32a's
refunds numbered again with their sale. Real parts: the hub's store on SQLite and on
PostgreSQL (a throwaway cluster), `tillpoint` processes of both releases.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import import_doc, receipt, sample_master_data, wait_for

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty hub store (the program defaults), SQLite or PostgreSQL."""
    if request.param == "sqlite":
        from tillpoint.sync.hub_sqlite import SqliteHubStore

        made: Any = SqliteHubStore(tmp_path / "hub.db")
    else:
        from tillpoint.sync.hub_postgres import PostgresHubStore

        url = request.getfixturevalue("pg_cluster").new_database()
        made = PostgresHubStore(url, migrate_schema=True)
    import_doc(made, sample_master_data())
    yield made
    made.close()


def tx(seq: int, receipt_id: str, refund_id: str = "") -> TxIn:
    """A sale of till-x (a refund of `receipt_id` when `refund_id` is given)."""
    request: dict[str, Any] = {"receiptId": receipt_id}
    if refund_id:
        request["refundId"] = refund_id
    return TxIn(
        "till-x",
        seq,
        "REFUND" if refund_id else "CHECKOUT",
        NOW.isoformat(),
        "c-1",
        "",
        json.dumps(request),
        json.dumps({"seq": seq}),
        -1 if refund_id else 1,
        0,
        "",
    )


def test_a_refund_numbered_again_with_its_sale_reads_resolved_once_stored(store: Any) -> None:
    """CONTRACT §9 (review 32's decisions: rev32a's refund in its sale's batch, hub32b's
    resolved entries). The hub holds seq 1 of till-x. The clone's r-a (seq 1, taken) and
    its refund f-a (seq 2, free) arrive in one batch: both are answered CONFLICT
    `seqTaken`, both numbered again by the till (3, 4) and stored. Both set-aside entries
    are seqs taken and read resolved, as 3 and 4; the refund's was neither, and stayed to
    be reviewed for ever although it was stored."""
    store.ingest("till-x", "", [tx(1, "r-0")], NOW)
    first = store.ingest("till-x", "", [tx(1, "r-a"), tx(2, "r-a", "f-a")], NOW)
    assert [(r.outcome, r.seq_taken) for r in first.results] == [("CONFLICT", True)] * 2
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert [(rows[s]["seqTaken"], rows[s]["resolved"]) for s in (1, 2)] == [(True, False)] * 2

    again = store.ingest("till-x", "", [tx(3, "r-a"), tx(4, "r-a", "f-a")], NOW)
    assert [r.outcome for r in again.results] == ["STORED", "STORED"]
    rows = {r["seq"]: r for r in store.set_aside_transactions("till-x")}
    assert [(rows[s]["resolved"], rows[s]["storedAsSeq"]) for s in (1, 2)] == [
        (True, 3),
        (True, 4),
    ]


# ------------------------------------------------ two releases as processes (CONTRACT §9)

REPO = Path(__file__).resolve().parent.parent
OLD_REV = "4362ba0"  # the release before review 32's sync changes (no seq_taken)
NEW = [str(Path(sys.executable).with_name("tillpoint"))]
CARD = "2770000000017"  # c-1's card in the sample data
FOLDERS = ("agent", "sync", "printer", "proto")


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`tillpoint` of the release before (its own code, read from this repository's
    history with `git archive`), run by this interpreter with the same installed
    dependencies (`-S`: this checkout's editable install stays out of its path)."""
    root = tmp_path_factory.mktemp("old32")
    try:
        made = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", OLD_REV, *FOLDERS],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"git is needed to make the release before ({OLD_REV}): {exc}")
    if made.returncode != 0:
        pytest.skip(f"{OLD_REV} is not in this repository's history: {made.stderr[:200]!r}")
    with tarfile.open(fileobj=io.BytesIO(made.stdout)) as tar:
        tar.extractall(root / "src", filter="tar")
    package = root / "site" / "tillpoint"
    package.mkdir(parents=True)
    for name, folder in {
        "agent": "agent",
        "sync": "sync",
        "printer": "printer",
        "v1": "proto/tillpoint/v1",
        "client": "agent/tillpoint_client",
    }.items():
        (package / name).symlink_to(root / "src" / folder)
    deps = sysconfig.get_paths()["purelib"]
    script = root / "tillpoint_old.py"
    script.write_text(
        f"import sys\nsys.path[:0] = [{str(root / 'site')!r}, {deps!r}]\n"
        "from tillpoint.agent.cli import main\nraise SystemExit(main(sys.argv[1:]))\n",
        encoding="utf-8",
    )
    return [sys.executable, "-S", str(script)]


class Chain:
    """A hub directory served by one release's `hub serve` and tills run by either
    release's `tillpoint`, every one a process; the hub's store SQLite (or `store`)."""

    def __init__(self, work: Path, hub_exe: list[str], store: str = "") -> None:
        self.work = work
        self.hub_exe = hub_exe
        self.hub_dir = work / "hub"
        self.store = ["--store", store] if store else []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        self.env["TILLPOINT_DEVICE_ID"] = "till-w"
        self.env["TILLPOINT_HUB__REDEEM_TIMEOUT_MS"] = "3000"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        master = work / "master.json"
        master.write_text(json.dumps(sample_master_data()), encoding="utf-8")
        if store:
            self.hub("migrate", "--json")
        self.hub("init", "--json")
        self.hub("import", str(master), "--json")
        self.hub("publish", "--ttl-hours", "8760", "--json")

    def run(self, exe: list[str], *args: str, ok: bool | int = True) -> tuple[int, Any, str]:
        p = subprocess.run(
            [*exe, *args], capture_output=True, text=True, env=self.env, timeout=90, check=False
        )
        if ok:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        try:
            doc = json.loads(p.stdout)
        except json.JSONDecodeError:
            doc = p.stdout
        return p.returncode, doc, p.stderr

    def hub(self, *args: str, exe: list[str] | None = None, ok: bool = True) -> Any:
        return self.run(
            exe or self.hub_exe,
            "hub",
            *args,
            "--hub-dir",
            str(self.hub_dir),
            *self.store,
            ok=ok,
        )[1]

    def serve(self, exe: list[str] | None = None) -> None:
        """`hub serve` of `exe` (default: the hub's release) on the port it had, if any."""
        port_file = self.work / "hub.port"
        port_file.unlink(missing_ok=True)
        log = (self.work / "hub.log").open("ab")
        serve = [*(exe or self.hub_exe), "hub", "serve", "--hub-dir", str(self.hub_dir)]
        listen = ["--listen", f"127.0.0.1:{self.port}", "--port-file", str(port_file)]
        self.proc = subprocess.Popen(
            [*serve, *self.store, *listen],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        self.port = int(wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def enrol(self, exe: list[str], till: Path, *, renew: bool = False) -> None:
        """`hub enroll till-w` (`--renew`: again) and the till's `sync install` and its
        first `sync now`."""
        bundle = self.work / "bundle.json"
        address = f"127.0.0.1:{self.port}"
        again = ["--renew"] if renew else []
        self.hub("enroll", "till-w", "--address", address, "--out", str(bundle), *again)
        self.till(exe, till, "sync", "install", str(bundle), "--json")
        self.till(exe, till, "sync", "now", "--json")

    def till(self, exe: list[str], till: Path, *args: str, ok: bool = True) -> Any:
        return self.run(exe, "--data-dir", str(till), *args, ok=ok)[1]

    def sell(self, exe: list[str], till: Path, receipt_id: str, redeem: int = 0) -> Any:
        path = self.work / f"{receipt_id}.json"
        path.write_text(json.dumps(receipt(receipt_id, CARD, redeem=redeem)), encoding="utf-8")
        return self.till(exe, till, "checkout", str(path), "--json")

    def refund(self, exe: list[str], till: Path, refund_id: str, receipt_id: str) -> Any:
        path = self.work / f"{refund_id}.json"
        doc = {
            "refundId": refund_id,
            "receiptId": receipt_id,
            "at": datetime.now(UTC).isoformat(),
            "lines": [{"sku": "4601234000017", "qty": "1"}],
        }
        path.write_text(json.dumps(doc), encoding="utf-8")
        return self.till(exe, till, "refund", str(path), "--json")


@pytest.fixture()
def chains() -> Iterator[list[Chain]]:
    made: list[Chain] = []
    yield made
    for chain in made:
        chain.stop()


def releases(old: list[str]) -> dict[str, list[str]]:
    return {"old": old, "new": NEW}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hub_is", "a_is", "b_is"),
    [
        ("new", "old", "old"),
        ("old", "new", "new"),
        ("new", "new", "new"),
        ("new", "old", "new"),  # one clone upgraded, the other not
        ("new", "new", "old"),
    ],
)
def test_two_cloned_tills_of_either_release_against_a_hub_of_the_other(
    hub_is: str,
    a_is: str,
    b_is: str,
    old_release: list[str],
    tmp_path: Path,
    chains: list[Chain],
) -> None:
    """CONTRACT §9 across releases. Till A and its disk's clone B, both `till-w`, each
    sell c-1 a receipt under seq 1 (B refunds one milk of its own as seq 2); A pushes
    first. A hub of this release answers B's two CONFLICT `seqTaken` (the refund: its sale
    is numbered again); a till B of the release before sets both aside for good (neither
    counted anywhere), one of this release numbers them again and both count once. A hub
    of the release before answers CONFLICT alone: the sale is set aside at either till,
    and its refund stored (the behaviour before review 32). Whatever the pair: nothing
    counted twice, the hub's balance of c-1 equals what its ledger holds, the outbox
    drains, and B's status and `sync receipts` answer."""
    exe = releases(old_release)
    hub_exe, a_exe, till_exe = exe[hub_is], exe[a_is], exe[b_is]
    till_is = b_is
    chain = Chain(tmp_path, hub_exe)
    chains.append(chain)
    chain.serve()
    a, b = tmp_path / "a", tmp_path / "b"
    chain.enrol(a_exe, a)
    shutil.copytree(a, b)
    chain.sell(a_exe, a, "a-1")
    chain.sell(till_exe, b, "b-1")
    chain.refund(till_exe, b, "b-1-r", "b-1")
    chain.till(a_exe, a, "sync", "now", "--json")
    code, pushed, said = chain.run(
        till_exe, "--data-dir", str(b), "sync", "now", "--json", ok=False
    )
    chain.till(till_exe, b, "sync", "now", "--json", ok=False)  # what was numbered again

    status = chain.till(till_exe, b, "status", "--json")
    assert status["outboxDepth"] == 0, status
    stored = chain.hub("receipts", "--device", "till-w", "--json")["transactions"]
    got = sorted((t["receiptId"], t["refundId"]) for t in stored)
    aside = {r["seq"]: r for r in chain.hub("set-aside", "--json")["setAside"]}
    if hub_is == "new" and till_is == "new":
        assert code == 0 and pushed["setAside"] == 0, (pushed, said)  # numbered again
        assert got == [("a-1", ""), ("b-1", ""), ("b-1", "b-1-r")]
        assert status["setAside"] == 0 and status["renumberedTransactions"] == 2
        assert [(aside[s]["resolved"], aside[s]["storedAsSeq"]) for s in (1, 2)] == [
            (True, 3),
            (True, 4),
        ]
    elif hub_is == "new":
        assert got == [("a-1", "")]  # neither b-1 nor its refund: never one without the other
        assert code == 1 and status["setAside"] == 2, (pushed, said)
        assert [(aside[s]["seqTaken"], aside[s]["resolved"]) for s in (1, 2)] == [(True, False)] * 2
        # the words the till shows are true of it: it numbers nothing again (CONTRACT §9)
        assert "numbered again at the till (" not in status["syncError"], status["syncError"]
        assert "a till of an earlier release sets both aside" in status["syncError"]
    else:
        assert got == [("a-1", ""), ("b-1", "b-1-r")]  # the release before: the refund alone
        assert code == 1 and status["setAside"] == 1, (pushed, said)
        assert status["renumberedTransactions"] == 0 and status["lastRenumbered"] is None
    # the till asks the hub what it stored (ListTransactions: field 13 unknown to the
    # release before, absent from its hub): the same list at either
    listed = chain.till(till_exe, b, "sync", "receipts", "--json")["transactions"]
    assert sorted((t["receiptId"], t["refundId"]) for t in listed) == got
    # nothing counted twice: the hub's c-1 is its ledger's sum over what it stored
    balance = chain.hub("balance", "c-1", "--json")
    (tmp_path / "fresh").mkdir()
    fresh = Chain(tmp_path / "fresh", NEW)
    opening = fresh.hub("balance", "c-1", "--json")["availablePoints"]
    moved = sum(t["pointsDeltaAvailable"] for t in stored)
    assert balance["availablePoints"] == opening + moved, (balance, opening, stored)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_hub_and_its_tills_upgraded_in_place_keep_set_aside_entries_holds_and_outboxes(
    kind: str, old_release: list[str], tmp_path: Path, chains: list[Chain], request: Any
) -> None:
    """docs/HUB.md, Migrations; CONTRACT §9, §10, §11. A hub of the release before (SQLite,
    or PostgreSQL through that release's `hub migrate`) has set aside the clone's seq 1
    (its reason only: no column said "seq taken" then) and holds the points of c-1 for
    till A's open hold h-1; A's outbox holds a-2 and a-3 (the hub was away). Upgraded:
    on PostgreSQL this release's `hub serve` refuses the schema with one line naming
    `hub migrate` (no traceback), which applies step 10 and those after it; the entry reads as a seq
    taken, unresolved; the hold is still outstanding. A, upgraded too, drains its outbox
    once, confirms h-1 (the hub's hold settled by it) and its status answers the new
    fields (renumberedTransactions 0, lastRenumbered null)."""
    old = old_release
    store = request.getfixturevalue("pg_url") if kind == "postgresql" else ""
    chain = Chain(tmp_path, old, store)
    chains.append(chain)
    chain.serve()
    a, b = tmp_path / "a", tmp_path / "b"
    chain.enrol(old, a)
    shutil.copytree(a, b)
    chain.sell(old, a, "a-1")
    chain.sell(old, b, "b-1")
    chain.till(old, a, "sync", "now", "--json")
    chain.till(old, b, "sync", "now", "--json", ok=False)  # b-1: set aside
    hold = tmp_path / "h-1.json"
    hold.write_text(json.dumps(receipt("h-1", CARD, redeem=300)), encoding="utf-8")
    held = chain.till(old, a, "hold", str(hold), "--json")
    spent = held["redeemedPoints"]
    assert held["state"] == "HELD" and spent > 0, held
    assert chain.hub("status", "--json")["holdsOutstanding"]["points"] == spent
    chain.stop()
    chain.sell(old, a, "a-2")  # the hub away: stays in the outbox
    chain.sell(old, a, "a-3")
    assert chain.till(old, a, "status", "--json")["outboxDepth"] == 2

    if kind == "postgresql":
        port_file = tmp_path / "hub.port"
        port_file.unlink(missing_ok=True)
        listen = ["--listen", "127.0.0.1:0", "--port-file", str(port_file)]
        refused = subprocess.run(
            [*NEW, "hub", "serve", "--hub-dir", str(chain.hub_dir), "--store", store, *listen],
            capture_output=True,
            text=True,
            env=chain.env,
            timeout=60,
            check=False,
        )
        assert refused.returncode in (1, 2), refused.stderr
        assert "hub migrate" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        # step 10 first (review 32's), then every later one to this release's schema
        # (11 and 12 since: the test pinned [10] until review 50's slow run)
        from tillpoint.sync.hub_postgres import SCHEMA_VERSION

        applied = chain.hub("migrate", "--json", exe=NEW)["applied"]
        assert applied == list(range(10, SCHEMA_VERSION + 1)), applied
    chain.hub_exe = NEW
    chain.serve()
    entry = chain.hub("set-aside", "--json")["setAside"][0]
    assert (entry["seq"], entry["seqTaken"], entry["resolved"]) == (1, True, False), entry
    assert chain.hub("status", "--json")["holdsOutstanding"]["points"] == spent

    pushed = chain.till(NEW, a, "sync", "now", "--json")
    assert pushed["pushed"] == 2 and pushed["outboxDepth"] == 0, pushed
    assert chain.till(NEW, a, "sync", "now", "--json")["pushed"] == 0
    confirmed = chain.till(NEW, a, "confirm", "h-1", "--fiscal", "FD-7", "--json")
    assert confirmed["state"] == "CONFIRMED", confirmed
    chain.till(NEW, a, "sync", "now", "--json")
    hub_status = chain.hub("status", "--json")
    assert hub_status["holdsOutstanding"]["points"] == 0, hub_status
    assert (hub_status["setAside"], hub_status["setAsideResolved"]) == (1, 0)
    stored = chain.hub("receipts", "--device", "till-w", "--json")["transactions"]
    assert sorted(t["receiptId"] for t in stored) == ["a-1", "a-2", "a-3", "h-1"]
    assert [t["fiscalDocument"] for t in stored if t["receiptId"] == "h-1"] == ["FD-7"]
    status = chain.till(NEW, a, "status", "--json")
    assert status["outboxDepth"] == 0 and status["setAside"] == 0, status
    assert (status["renumberedTransactions"], status["lastRenumbered"]) == (0, None)


@pytest.mark.parametrize("kind", ["COUPON_ISSUED", "DISCARDED"])
def test_what_a_till_never_numbers_again_is_no_seq_taken(store: Any, kind: str) -> None:
    """CONTRACT §9: only a sale or refund is numbered again. A till-issued coupon under a
    seq the hub holds with another transaction is set aside for a person (two clones
    issue the same codes), and a seq a till discarded (`reset --force`, or the old seq of
    one it numbered again, told again to a hub restored from a backup while its clone's
    transaction holds it there) has nothing to send again: neither is answered or kept as
    a seq taken, which said "the till numbers it again" and left an entry that could never
    read resolved (one to review, as any CONFLICT)."""
    store.ingest("till-x", "", [tx(1, "a-1")], NOW)
    other = TxIn(
        "till-x",
        1,
        kind,
        NOW.isoformat(),
        "",
        "",
        json.dumps({"receiptId": "b-1"}) if kind == "COUPON_ISSUED" else "{}",
        "{}",
        0,
        0,
        "",
    )
    answer = store.ingest("till-x", "", [other], NOW).results[0]
    assert (answer.outcome, answer.seq_taken) == ("CONFLICT", False)
    entry = store.set_aside_transactions("till-x")[0]
    assert (entry["seq"], entry["seqTaken"], entry["resolved"]) == (1, False, False)


@pytest.mark.slow
def test_an_upgraded_till_whose_old_outbox_meets_taken_seqs_numbers_them_again_once(
    tmp_path: Path, chains: list[Chain]
) -> None:
    """CONTRACT §9, §5; tests/fixtures/upgrade. The till the oldest release left (5342b18:
    r1, r2, r3, refund f1 of r1 and h2 in its outbox, seqs 1-5), its ledger restored from
    a backup: the hub holds seqs 1 and 2 of till-1 with other sales (a clone's, no
    points). Upgraded, its `sync now` numbers r1 and r2 again, and f1 after r1 (its
    batch's sale is numbered again); every receipt and refund is stored once, the hub's
    balances are the ones the old code printed, retries of r1 and f1 answer their new
    seqs, and the till's status names what it numbered again."""
    from tillpoint.sync.hub_sqlite import SqliteHubStore

    from tests.test_review23_upgrade23 import OLDEST, Old

    old = Old(OLDEST, tmp_path)
    hub_store = SqliteHubStore(Path(old.store))
    try:
        clone = [
            TxIn(
                "till-1",
                seq,
                "CHECKOUT",
                NOW.isoformat(),
                "",
                "",
                json.dumps({"receiptId": f"x-{seq}"}),
                "{}",
                0,
                0,
                "",
            )
            for seq in (1, 2)
        ]
        assert [r.outcome for r in hub_store.ingest("till-1", "", clone, NOW).results] == [
            "STORED"
        ] * 2
    finally:
        hub_store.close()
    chain = Chain.__new__(Chain)
    chain.work, chain.hub_exe, chain.hub_dir, chain.store = tmp_path, NEW, old.hub, []
    chain.env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    chain.env["TILLPOINT_DEVICE_ID"] = "till-1"
    chain.proc, chain.port = None, 0
    chains.append(chain)
    chain.serve()
    chain.env["TILLPOINT_HUB__ADDRESS"] = f"127.0.0.1:{chain.port}"
    _, pushed, said = chain.run(NEW, "--data-dir", str(old.till), "sync", "now", "--json")
    assert pushed["setAside"] == 0 and pushed["outboxDepth"] == 0, (pushed, said)
    stored = chain.hub("receipts", "--device", "till-1", "--json")["transactions"]
    mine = [(t["seq"], t["receiptId"], t["refundId"]) for t in stored if t["seq"] > 2]
    assert sorted((r, f) for _, r, f in mine) == [
        ("h2", ""),
        ("r1", ""),
        ("r1", "f1"),
        ("r2", ""),
        ("r3", ""),
    ], mine
    seq_of = {f or r: s for s, r, f in mine}
    assert seq_of["r1"] < seq_of["f1"]  # the refund after its sale
    customers = {"2770000000017": "c-a", "2770000000024": "c-b", "2770000000079": "c-h"}
    for card, customer in customers.items():
        live = chain.hub("balance", customer, "--json")
        assert live["availablePoints"] == old.expect["balances"][card]["availablePoints"]
    chain.env.pop("TILLPOINT_HUB__ADDRESS")
    chain.env["TILLPOINT_HUB__REDEEM_TIMEOUT_MS"] = "50"
    again = chain.till(NEW, old.till, "checkout", str(old.work / "r1.json"), "--json")
    assert again["seq"] == seq_of["r1"], again
    refund = chain.till(NEW, old.till, "refund", str(old.work / "f1.json"), "--json")
    assert refund["seq"] == seq_of["f1"], refund
    status = chain.till(NEW, old.till, "status", "--json")
    assert status["renumberedTransactions"] == 3, status
    assert status["outboxDepth"] == 0 and status["setAside"] == 0, status


@pytest.mark.slow
@pytest.mark.parametrize("restored_is", ["old", "new"])
def test_a_hub_restored_from_its_backup_before_the_upgrade_after_a_renumbering(
    restored_is: str, old_release: list[str], tmp_path: Path, chains: list[Chain]
) -> None:
    """CONTRACT §9 (a restored hub; the old seqs of what was numbered again). A hub of
    the release before is backed up and upgraded; clones A and B of this release sell
    (B: b-1 and its refund under seqs A's a-1 and nothing hold) and B numbers both again.
    The upgrade is rolled back (the backup, under the release before) or the hub is
    restored from that backup (this release): the tills send again what it lost, B its
    old seqs as DISCARDED. Every sale and refund is stored once, nothing is left in an
    outbox or set aside at a till, and the hub's balance of c-1 is its ledger's sum."""
    exe = releases(old_release)
    chain = Chain(tmp_path, exe["old"])
    chains.append(chain)
    chain.serve()
    a, b = tmp_path / "a", tmp_path / "b"
    chain.enrol(NEW, a)
    shutil.copytree(a, b)
    chain.stop()
    backup = tmp_path / "backup"
    shutil.copytree(chain.hub_dir, backup)
    chain.hub_exe = NEW
    chain.serve()
    chain.sell(NEW, a, "a-1")
    chain.sell(NEW, b, "b-1")
    chain.refund(NEW, b, "b-1-r", "b-1")
    chain.till(NEW, a, "sync", "now", "--json")
    chain.till(NEW, b, "sync", "now", "--json")
    chain.till(NEW, b, "sync", "now", "--json")
    assert chain.till(NEW, b, "status", "--json")["renumberedTransactions"] == 2
    want = [("a-1", ""), ("b-1", ""), ("b-1", "b-1-r")]

    def stored() -> list[tuple[str, str]]:
        got = chain.hub("receipts", "--device", "till-w", "--json")["transactions"]
        return sorted((t["receiptId"], t["refundId"]) for t in got)

    assert stored() == want
    chain.stop()
    shutil.rmtree(chain.hub_dir)
    shutil.copytree(backup, chain.hub_dir)
    chain.hub_exe = exe[restored_is]
    chain.serve()
    assert stored() == []
    for till in (a, b, a, b):
        chain.till(NEW, till, "sync", "now", "--json")
    assert stored() == want
    for till in (a, b):
        status = chain.till(NEW, till, "status", "--json")
        assert status["outboxDepth"] == 0 and status["setAside"] == 0, status
    balance = chain.hub("balance", "c-1", "--json")["availablePoints"]
    got = chain.hub("receipts", "--device", "till-w", "--json")["transactions"]
    (tmp_path / "fresh").mkdir()
    opening = Chain(tmp_path / "fresh", NEW).hub("balance", "c-1", "--json")["availablePoints"]
    assert balance == opening + sum(t["pointsDeltaAvailable"] for t in got)


@pytest.mark.slow
@pytest.mark.parametrize(("hub_is", "till_is"), [("new", "old"), ("old", "new")])
def test_a_redemption_with_an_unsent_sale_under_a_taken_seq_across_releases(
    hub_is: str, till_is: str, old_release: list[str], tmp_path: Path, chains: list[Chain]
) -> None:
    """CONTRACT §9, §16 (AuthorizeRedemption's unsent movements) across releases. Clone
    B's unsent b-1 (seq 1, points redeemed) is under a seq the hub holds with A's a-1; B
    then redeems again for b-2 with b-1 among its unsent movements. Either pair answers
    (ONLINE, within what c-1 has) and nothing is counted twice; once B has pushed nothing
    stays held at a hub of this release (one of the release before holds b-1's spend for
    its hold's time, as it always did)."""
    exe = releases(old_release)
    till_exe = exe[till_is]
    chain = Chain(tmp_path, exe[hub_is])
    chains.append(chain)
    chain.serve()
    a, b = tmp_path / "a", tmp_path / "b"
    chain.enrol(till_exe, a)
    shutil.copytree(a, b)
    chain.sell(till_exe, a, "a-1")
    chain.till(till_exe, a, "sync", "now", "--json")
    first = chain.sell(till_exe, b, "b-1", redeem=50)
    second = chain.sell(till_exe, b, "b-2", redeem=50)
    assert (first["mode"], second["mode"]) == ("ONLINE", "ONLINE"), (first, second)
    assert second["redeemedPoints"] > 0, second
    chain.till(till_exe, b, "sync", "now", "--json", ok=False)
    chain.till(till_exe, b, "sync", "now", "--json", ok=False)
    hub_status = chain.hub("status", "--json")
    if hub_is == "new":
        assert hub_status["holdsOutstanding"] == {"holds": 0, "points": 0}, hub_status
    else:
        # a hub of the release before lets b-1's own hold run out (its 30 minutes): it
        # took b-1 for received and set it aside without settling it, with a till of
        # either release (docs/HUB.md: upgrade the hub first)
        held = {"holds": 1, "points": first["redeemedPoints"]}
        assert hub_status["holdsOutstanding"] == held, hub_status
    got = chain.hub("receipts", "--device", "till-w", "--json")["transactions"]
    ids = [t["receiptId"] for t in got]
    assert len(ids) == len(set(ids)) and {"a-1", "b-2"} <= set(ids), ids
    balance = chain.hub("balance", "c-1", "--json")["availablePoints"]
    (tmp_path / "fresh").mkdir()
    opening = Chain(tmp_path / "fresh", NEW).hub("balance", "c-1", "--json")["availablePoints"]
    assert balance == opening + sum(t["pointsDeltaAvailable"] for t in got)
