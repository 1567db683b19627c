"""A till and its hub upgraded in place: data directories made by OLDER releases of this
code (tests/fixtures/upgrade/, README.md there says which revision and which commands)
opened by this one. Each holds a till enrolled to a hub that was unreachable while it
sold: a loaded snapshot, checkouts and a refund in a full outbox, an open hold, a
confirmed hold, a cancelled one, points with expiry and a used coupon code (in releases
that had them); and the hub's own directory (keys, SQLite store, published snapshot).

The promises checked: balances read as the old code printed them; retries of the old
requests get the old answers (not a "stored with another body" conflict); the old open
hold confirms; an old receipt refunds; every old receipt and refund reaches the upgraded
hub exactly once, balances there equal to the till's; a second open changes nothing;
data a LATER release migrated is refused with one line and exit 2 (not restarted by the
unit)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.sync.loopback import wait_for

from .test_review58_mut58a import stepped_on_by_a_later_release

HERE = Path(__file__).parent / "fixtures" / "upgrade"
FIXTURES = sorted(f for f in HERE.glob("*.tar.gz") if "postgresql" not in f.name)
OLDEST, NEWEST = FIXTURES[0], FIXTURES[-1]
# the hub's store on PostgreSQL (hub/hub.sql: `pg_dump --inserts` of the old database)
ON_POSTGRESQL = HERE / "2026-12-02-8cee8b6-postgresql.tar.gz"


def _default_run(chosen: list[Path]) -> list[Any]:
    """The fixtures `make test` upgrades (~2.5 s each: an enrolled till's CLI checkout
    probes its hub); the others run in `make test-all`."""
    return [
        pytest.param(f, id=f.name.removesuffix(".tar.gz"))
        if f in chosen
        else pytest.param(f, id=f.name.removesuffix(".tar.gz"), marks=pytest.mark.slow)
        for f in FIXTURES
    ]


TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))


class Old:
    """One fixture unpacked into tmp_path: the till, the hub, the requests the old code
    was sent (work/) and what it answered (expect.json)."""

    def __init__(self, fixture: Path, tmp_path: Path) -> None:
        self.root = tmp_path / fixture.name.removesuffix(".tar.gz")
        with tarfile.open(fixture) as tar:
            tar.extractall(self.root, filter="tar")
        self.till, self.hub, self.work = (self.root / d for d in ("till", "hub", "work"))
        self.expect: dict[str, Any] = json.loads((self.root / "expect.json").read_text())
        self.store = str(self.hub / "hub.db")

    def restore(self, url: str) -> None:
        """The old hub's PostgreSQL database, from its dump, into the empty `url`."""
        import psycopg

        dump = (self.hub / "hub.sql").read_text(encoding="utf-8")
        script = "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(script.encode())
        self.store = url

    def cli(self, *args: str) -> tuple[int, Any, str]:
        """`tillpoint --data-dir TILL ARGS` in this process (this release's code)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--data-dir", str(self.till), *args])
            except SystemExit as exc:
                code = int(exc.code or 0)
        text = out.getvalue()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = text
        return code, doc, err.getvalue()

    def file(self, doc: dict[str, Any]) -> str:
        path = self.work / f"{doc['receiptId']}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        return str(path)

    def hub_cli(self, *args: str) -> tuple[int, Any, str]:
        return self.cli("hub", *args, "--hub-dir", str(self.hub), "--store", self.store)

    def result(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.expect["results"][name]
        return found


def _as_old(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The fields the old answer had (a later release adds some, deviceId and seq)."""
    return {k: new.get(k) for k in old}


def _steps(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT migration_set, name FROM _sqlite_migrations ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def _issued(ledger_db: Path) -> list[str]:
    """The codes the till issued on printed offers (§13), oldest first."""
    conn = sqlite3.connect(ledger_db)
    try:
        return [r[0] for r in conn.execute("SELECT code FROM issued_coupons ORDER BY rowid")]
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def _till_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    monkeypatch.delenv("TILLPOINT_HUB__ADDRESS", raising=False)
    # the enrolled till's CLI checkouts probe its hub (nothing listens): briefly
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "50")


@pytest.mark.parametrize("fixture", _default_run([OLDEST, FIXTURES[len(FIXTURES) // 2], NEWEST]))
def test_a_till_upgraded_in_place_keeps_receipts_holds_and_points(
    fixture: Path, tmp_path: Path
) -> None:
    old = Old(fixture, tmp_path)
    code, status, err = old.cli("status", "--json")
    assert code == 0, err
    before = old.expect["status"]
    for key in ("lastSeq", "outboxDepth", "cacheVersion", "enrolled"):
        assert status[key] == before[key], key
    assert not status["storageError"] and not status.get("setAside"), status
    steps = _steps(old.till / "ledger.db")
    assert len(steps) == len(set(steps))

    # every balance as the old code printed it (expiring batches included)
    for card, printed in old.expect["balances"].items():
        code, now, err = old.cli("balance", card, "--at", old.expect["at"], "--json")
        assert (code, now) == (0, printed), (card, err)

    # retries of what the old code was sent get what it answered
    for rid in ("r1", "r2", "r3", "r5"):
        if rid in old.expect["results"]:
            code, now, err = old.cli("checkout", str(old.work / f"{rid}.json"), "--json")
            assert code == 0, (rid, err)
            assert _as_old(now, old.result(rid)) == old.result(rid), rid
    # ... and another body under an old id is still a conflict, not a retry
    other = json.loads((old.work / "r1.json").read_text())
    other["lines"][0]["qty"] = "3"
    (old.work / "r1-other.json").write_text(json.dumps(other))
    code, _, err = old.cli("checkout", str(old.work / "r1-other.json"), "--json")
    assert code == 2 and "another body" in err, err
    code, now, err = old.cli("refund", str(old.work / "f1.json"), "--json")
    assert code == 0 and _as_old(now, old.result("f1")) == old.result("f1"), err
    code, now, err = old.cli("confirm", "h2", "--fiscal", "FD-000042", "--json")
    assert code == 0 and _as_old(now, old.result("h2c")) == old.result("h2c"), err
    code, now, err = old.cli("hold", str(old.work / "h1.json"), "--json")
    assert (
        code == 0 and now["state"] == "HELD" and now["totalMinor"] == old.result("h1")["totalMinor"]
    ), err
    # a quote of the open hold's own basket: its points counted once, not twice
    code, quoted, err = old.cli("quote", str(old.work / "h1.json"), "--json")
    assert code == 0, err
    assert quoted["balance"]["availablePoints"] == old.result("h1")["balance"]["availablePoints"]
    code, now, err = old.cli("cancel", "h3", "--json")
    assert code == 0 and now["state"] == "CANCELLED", err

    # the old open hold confirms as it was held; an old receipt refunds
    code, confirmed, err = old.cli("confirm", "h1", "--json")
    assert code == 0 and confirmed["state"] == "CONFIRMED", err
    held = old.result("h1")
    assert (confirmed["redeemedPoints"], confirmed["payableMinor"]) == (
        held["redeemedPoints"],
        held["payableMinor"],
    )
    refund = old.work / "f2.json"
    refund.write_text(
        json.dumps(
            {
                "refundId": "f2",
                "receiptId": "r2",
                "at": "2026-11-30T10:00:00+03:00",
                "lines": [{"sku": "4601234000017", "qty": "1"}],
            }
        )
    )
    code, refunded, err = old.cli("refund", str(refund), "--json")
    assert code == 0 and refunded["receiptId"] == "r2", err

    # opened again: no step applied twice, nothing refused
    code, again, err = old.cli("status", "--json")
    assert code == 0 and again["outboxDepth"] == before["outboxDepth"] + 2, err
    assert _steps(old.till / "ledger.db") == _steps(old.till / "ledger.db")
    assert len(_steps(old.till / "ledger.db")) == len(set(_steps(old.till / "ledger.db")))

    # the old print history's cooldown holds; the till's own codes go on from its counter
    old_codes = _issued(old.till / "ledger.db")
    assert len(old_codes) == (1 if "issue" in old.expect["features"] else 0)
    bread = [{"sku": "4601234000024", "qty": "1", "priceMinor": 5490}]
    sale = {"storeId": "s1", "tillId": "t1", "card": "2770000000017", "lines": bread}
    code, soon, err = old.cli(
        "checkout",
        old.file({**sale, "receiptId": "r6", "at": "2026-11-30T10:00:00+03:00"}),
        "--json",
    )
    assert code == 0 and soon["printedOffers"] == [], err  # printed by r2 on 2026-11-28
    if old_codes:
        scanned = {**sale, "receiptId": "r7", "at": "2026-11-30T10:05:00+03:00"}
        code, used, err = old.cli("checkout", old.file({**scanned, "coupons": old_codes}), "--json")
        assert code == 0 and [c["status"] for c in used["coupons"]] == ["APPLIED"], err
    code, later, err = old.cli(
        "checkout",
        old.file({**sale, "receiptId": "r8", "at": "2026-12-10T10:00:00+03:00"}),
        "--json",
    )
    assert code == 0 and later["printedOffers"] == ["o-print-a"], err
    new_codes = _issued(old.till / "ledger.db")
    if old_codes:  # a new code, never one the old code issued
        assert new_codes[: len(old_codes)] == old_codes and len(set(new_codes)) == 2

    # the hub's store: migrated by this release, twice, its tills and snapshot kept
    first = old.hub_cli("status", "--json")
    second = old.hub_cli("status", "--json")
    assert first[0] == second[0] == 0, first[2]
    hub_steps = _steps(Path(old.store))
    assert len(hub_steps) == len(set(hub_steps))


@pytest.mark.parametrize("fixture", _default_run([OLDEST]))
def test_an_upgraded_till_uploads_its_old_outbox_once_to_the_upgraded_hub(
    fixture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tillpoint run` (this release) on the old till, `hub serve` (this release) on the
    old hub's directory: every receipt and refund the old code sold offline reaches the
    hub once, and the hub's balances are the ones the old till printed."""
    _uploads_once(Old(fixture, tmp_path), tmp_path, monkeypatch)


def test_an_upgraded_till_uploads_once_to_an_upgraded_hub_on_postgresql(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's store on PostgreSQL, made by 8cee8b6 (schema 7): `hub migrate` of this
    release applies what is missing once, then as above."""
    from tillpoint.sync.hub_postgres import SCHEMA_VERSION

    old = Old(ON_POSTGRESQL, tmp_path)
    old.restore(pg_url)
    code, doc, err = old.hub_cli("migrate", "--json")
    assert code == 0 and doc["applied"] == list(range(8, SCHEMA_VERSION + 1)), err
    code, doc, err = old.hub_cli("migrate", "--json")
    assert code == 0 and doc["applied"] == [], err
    code, doc, err = old.hub_cli("status", "--json")
    assert code == 0 and [d["deviceId"] for d in doc["devices"]] == ["till-1"], err
    assert doc["version"] == 1
    _uploads_once(old, tmp_path, monkeypatch)


def _pending_print_jobs(ledger_db: Path) -> int:
    conn = sqlite3.connect(ledger_db, timeout=5)
    try:
        return int(
            conn.execute("SELECT count(*) FROM print_jobs WHERE state = 'PENDING'").fetchone()[0]
        )
    finally:
        conn.close()


def renew_expiring_certificates(old: Old, *, force: bool = False) -> bool:
    """The fixtures' server and till certificates were issued for five years (the ones made
    2026-12-03 end 2031-12-02; their CA in 2046): a run after that (or within a day of it)
    renews them first as an operator would, with this release's commands (`hub init
    --renew-server`, `hub enroll --renew`, `sync install` on the old till), so what the
    test proves does not depend on the day it runs (docs/ARCHITECTURE.md, "Tests and the
    calendar"). True when it renewed them."""
    from datetime import UTC, datetime, timedelta

    from tillpoint.sync.pki import certificate_not_after

    soon = datetime.now(UTC) + timedelta(days=1)
    ends = [
        certificate_not_after(pem.read_bytes())
        for pem in (old.hub / "keys" / "server.pem", old.till / "enrollment" / "device.pem")
    ]
    if not force and all(end is not None and end > soon for end in ends):
        return False
    code, _, err = old.hub_cli("init", "--renew-server")
    assert code == 0, err
    bundle = old.work / "till-1-renewed.json"
    code, _, err = old.hub_cli(
        "enroll", "till-1", "--renew", "--address", "127.0.0.1:9", "--out", str(bundle)
    )
    assert code == 0, err
    code, _, err = old.cli("sync", "install", str(bundle))
    assert code == 0, err
    return True


def _uploads_once(
    old: Old, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, renew: bool = False
) -> None:
    renew_expiring_certificates(old, force=renew)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    # coupons the old code queued and never printed (5342b18 queued them with no printer)
    # print once a printer is there
    queued = _pending_print_jobs(old.till / "ledger.db")
    printer = tmp_path / "printer.bin"
    port_file = tmp_path / "hub.port"
    hub_log, run_log = (tmp_path / "hub.log").open("wb"), (tmp_path / "run.log").open("wb")
    serve = ["hub", "serve", "--hub-dir", str(old.hub), "--store", old.store]
    # no balance refresh of its own, whatever the date: the delta below must be 2 (the
    # fixtures' version 1 is published for ten years, to 2036, and was once for 7 days)
    serve += ["--publish-every", "0", "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    hub = subprocess.Popen(
        [TILLPOINT, *serve],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=hub_log,
    )
    till = None
    try:
        port = int(wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 20))
        till_env = {
            **env,
            "TILLPOINT_DEVICE_ID": "till-1",
            "TILLPOINT_DATA_DIR": str(old.till),
            # the old bundle named a port nothing listened on; the hub moved
            "TILLPOINT_HUB__ADDRESS": f"127.0.0.1:{port}",
            "TILLPOINT_SERVER__LISTEN": "127.0.0.1:0",
            "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0",
            "TILLPOINT_METRICS__LISTEN": "127.0.0.1:0",
            "TILLPOINT_PRINTER__KIND": "file",
            "TILLPOINT_PRINTER__DEVICE": str(printer),
        }
        till = subprocess.Popen(
            [TILLPOINT, "run"],
            env=till_env,
            stdout=subprocess.DEVNULL,
            stderr=run_log,
        )

        def drained() -> bool:
            conn = sqlite3.connect(old.till / "ledger.db", timeout=5)
            try:
                return conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
            finally:
                conn.close()

        try:
            wait_for(drained, 30, every=0.1)
            wait_for(lambda: _pending_print_jobs(old.till / "ledger.db") == 0, 30, every=0.1)
        except TimeoutError:
            pytest.fail("outbox not drained: " + (tmp_path / "run.log").read_text()[-2000:])
        till.send_signal(signal.SIGTERM)
        assert till.wait(timeout=20) == 0
        # the upgraded hub publishes a delta, which patches the cache the old code built
        master = json.loads((old.work / "master.json").read_text(encoding="utf-8"))
        master["products"].append({"sku": "4601234000099", "name": "Кефир", "category": "dairy"})
        (old.work / "master2.json").write_text(json.dumps(master), encoding="utf-8")
        assert old.hub_cli("import", str(old.work / "master2.json"), "--publish")[0] == 0
        monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", f"127.0.0.1:{port}")
        code, pulled, err = old.cli("sync", "now", "--json")
        assert code == 0 and pulled["pull"]["status"] == "APPLIED", err
        assert (pulled["pull"]["version"], pulled["pull"]["baseVersion"]) == (2, 1)
        kefir = {"sku": "4601234000099", "qty": "1", "priceMinor": 5000}
        sale = {"storeId": "s1", "tillId": "t1", "card": "2770000000024", "lines": [kefir]}
        code, quoted, err = old.cli(
            "quote", old.file({**sale, "receiptId": "q1", "at": old.expect["at"]}), "--json"
        )
        assert code == 0 and quoted["earnedPoints"] > 0, err  # a product the delta added
    finally:
        for proc in (till, hub):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        hub_log.close()
        run_log.close()
    assert (printer.exists() and b" r2, 28.11.2026" in printer.read_bytes()) == bool(queued)
    code, doc, err = old.hub_cli("receipts", "--device", "till-1", "--json")
    assert code == 0, err
    got = [(t["seq"], t["kind"], t["receiptId"], t["refundId"]) for t in doc["transactions"]]
    sold = [name for name in old.expect["results"] if name[0] == "r" or name == "h2c"]
    assert len(got) == len({seq for seq, *_ in got}) == old.expect["status"]["outboxDepth"]
    assert sorted(r for _, kind, r, _ in got if kind == "CHECKOUT") == sorted(
        "h2" if s == "h2c" else s for s in sold
    )
    assert [f for *_, f in got if f] == ["f1"]
    issued = [r for _, kind, r, _ in got if kind == "COUPON_ISSUED"]  # the code printed on r2
    assert issued == (["r2"] if "issue" in old.expect["features"] else [])
    customers = {"2770000000017": "c-a", "2770000000024": "c-b", "2770000000079": "c-h"}
    for card, customer in customers.items():
        # at the old till's time, not today's: the points it earned on 2026-11-30 have a
        # lifetime of 365 days (pointsLifetimeDays), and from 2027-11-30 on a balance
        # "now" is short of them
        code, live, err = old.hub_cli("balance", customer, "--at", old.expect["at"], "--json")
        assert code == 0, err
        assert live["availablePoints"] == old.expect["balances"][card]["availablePoints"]
    code, status, err = old.cli("status", "--json")
    assert code == 0 and status["outboxDepth"] == 0 and status["setAside"] == 0, err


@pytest.mark.parametrize("which", ["ledger", "hub"])
def test_data_a_later_release_migrated_is_refused_with_exit_2(tmp_path: Path, which: str) -> None:
    """A downgrade: the data directory (or the hub's store) was migrated by a release
    newer than this code. One line naming the unknown step and what to do, exit 2 (a data
    directory problem, which the systemd units do not restart in a loop), files unchanged."""
    old = Old(NEWEST, tmp_path)
    assert old.cli("status", "--json")[0] == 0
    assert old.hub_cli("status", "--json")[0] == 0
    path, migration_set = (
        (old.till / "ledger.db", "tillpoint.ledger")
        if which == "ledger"
        else (Path(old.store), "tillpoint.hub")
    )
    stepped_on_by_a_later_release(path, migration_set)
    before = path.read_bytes()
    calls = (
        [("status", "--json"), ("balance", "2770000000017"), ("confirm", "h1")]
        if which == "ledger"
        else [("hub", "status", "--hub-dir", str(old.hub), "--store", old.store)]
    )
    for call in calls:
        code, _, err = old.cli(*call)
        assert code == 2, (call, err)
        assert err.count("\n") == 1 and "m099_from_a_later_release" in err, err
        assert "another tillpoint release" in err and "restore" in err, err
    assert path.read_bytes() == before


def test_the_fixtures_stay_small() -> None:
    assert len(FIXTURES) >= 5
    assert sum(f.stat().st_size for f in HERE.glob("*.tar.gz")) < 300_000


def test_a_postgresql_store_a_later_release_migrated_is_refused_with_exit_2(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub on PostgreSQL, downgraded: its schema is past this release's. It used to be
    told to run `hub migrate`, which applied nothing and left it refused again."""
    import psycopg
    from tillpoint.sync.hub_postgres import SCHEMA_VERSION, migrate

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    migrate(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, 'from_a_later_release')",
            (SCHEMA_VERSION + 1,),
        )
    old = Old(NEWEST, tmp_path)
    for action in ("status", "migrate", "serve"):
        code, _, err = old.cli("hub", action, "--hub-dir", str(old.hub), "--store", pg_url)
        assert code == 2, (action, err)
        assert err.count("\n") == 1 and "later release" in err and "hub migrate" not in err, err


@pytest.mark.parametrize("config", sorted(HERE.glob("config-*.toml")), ids=lambda p: p.stem)
def test_an_earlier_release_s_configuration_file_is_still_valid(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key an earlier release knew, at its values: a conffile kept across the
    upgrade must not stop the till (exit 2 is not restarted by the unit)."""
    for name in [k for k in os.environ if k.startswith("TILLPOINT_")]:
        monkeypatch.delenv(name)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(config), "config", "check"])
    assert code == 0 and "configuration is valid" in out.getvalue(), err.getvalue()
