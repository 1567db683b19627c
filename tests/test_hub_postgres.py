"""The hub on PostgreSQL: migrations, store selection, several servers over one database
(a real throwaway cluster; skipped only where the server cannot be installed)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.errors import StorageError
from tillpoint.sync.hub_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresHubStore, migrate
from tillpoint.sync.loopback import sample_master_data


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip() and "--json" in argv else out
    return code, doc, err


def test_migrations_are_numbered_once_and_applied_once(pg_url: str) -> None:
    numbers = [n for n, _, _ in MIGRATIONS]
    assert numbers == list(range(1, len(numbers) + 1))
    assert migrate(pg_url) == numbers
    assert migrate(pg_url) == []  # each step once, whoever runs it again


def test_a_database_behind_the_schema_is_refused_with_the_command_to_run(pg_url: str) -> None:
    with pytest.raises(StorageError, match="run 'tillpoint hub migrate --store URL'"):
        PostgresHubStore(pg_url)
    store = PostgresHubStore(pg_url, migrate_schema=True)
    store.close()


def test_hub_commands_take_the_store_from_the_flag_or_the_environment(
    pg_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub = ["--hub-dir", str(tmp_path / "hub")]
    code, doc, _ = run(capsys, "hub", "migrate", "--store", pg_url, *hub, "--json")
    assert code == 0 and doc == {
        "store": "postgresql",
        "applied": [n for n, _, _ in MIGRATIONS],
        "schemaVersion": SCHEMA_VERSION,
    }
    code, doc, _ = run(capsys, "hub", "migrate", "--store", pg_url, *hub, "--json")
    assert code == 0 and doc["applied"] == []
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    code, doc, _ = run(
        capsys, "hub", "import", str(catalogue), "--publish", "--store", pg_url, *hub, "--json"
    )
    assert code == 0 and doc["publishedVersion"] == 1
    assert not (tmp_path / "hub" / "hub.db").exists()  # nothing went to SQLite
    monkeypatch.setenv("TILLPOINT_HUB_STORE", pg_url)
    code, doc, _ = run(capsys, "hub", "balance", "c-1", *hub, "--json")
    assert code == 0 and doc["availablePoints"] == 1200
    code, doc, _ = run(capsys, "hub", "publish", *hub, "--json")
    assert code == 0 and doc["version"] == 2


def test_an_unreachable_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.pgcluster import _free_port

    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing"
    code, _, err = run(capsys, "hub", "migrate", "--store", url, "--hub-dir", str(tmp_path))
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("tillpoint: cannot migrate the hub database")
    assert "Traceback" not in err


def test_publish_counts_everything_committed_before_it_and_nothing_after(pg_url: str) -> None:
    """Two stores (two servers) over one database publish one version each, numbered in
    turn; the second sees the first's publication."""
    a = PostgresHubStore(pg_url, migrate_schema=True)
    b = PostgresHubStore(pg_url)
    try:
        from tillpoint.sync.loopback import import_doc

        import_doc(a, sample_master_data())
        now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
        assert a.publish(now, 3600).version == 1
        assert b.publish(now, 3600).version == 2
        assert a.latest() == b.latest()
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- several servers, one database


def _tx(device: str, seq: int, customer: str, available: int) -> Any:
    from tillpoint.sync.hub_store import TxIn

    return TxIn(
        device,
        seq,
        "CHECKOUT",
        "2026-11-30T09:00:00+00:00",
        customer,
        "",
        json.dumps({"receiptId": f"{device}-{seq}"}),
        "{}",
        available,
        0,
        "",
    )


@pytest.fixture
def two_servers(pg_url: str) -> Any:
    """Two stores over one database, as two hub servers hold them, with the sample data."""
    from tillpoint.sync.loopback import import_doc

    a = PostgresHubStore(pg_url, migrate_schema=True, pool_size=16)
    b = PostgresHubStore(pg_url, pool_size=16)
    import_doc(a, sample_master_data())
    a.publish(datetime(2026, 11, 30, 9, 0, tzinfo=UTC), 86400)
    yield a, b
    a.close()
    b.close()


def test_holds_of_one_card_from_two_servers_never_exceed_its_balance(two_servers: Any) -> None:
    """40 tills redeem 100 points each of c-1's 1200 at once, half through each server:
    exactly 1200 are granted, never more, and the holds say the same."""
    from concurrent.futures import ThreadPoolExecutor

    stores = two_servers
    now = datetime.now(UTC)

    def redeem(i: int) -> int:
        store = stores[i % 2]
        got = store.authorise(f"till-{i}", f"r-{i}", "c-1", 100, now, [], now, 900.0)
        return int(got.authorised)

    # eight at a time: they still race for the card's row, and the last of them waits for
    # seven holds, not nineteen (with twenty, a doubled load once had one wait out the
    # lock timeout, 30 s: the contract's "busy, nothing stored", review 55)
    with ThreadPoolExecutor(max_workers=8) as pool:
        granted = list(pool.map(redeem, range(40)))
    assert sum(granted) == 1200 and sorted(set(granted)) == [0, 100]
    assert stores[1].balance("c-1", now).held == 1200


def test_a_batch_pushed_through_both_servers_at_once_is_stored_once(two_servers: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stores = two_servers
    batch = [_tx("till-9", seq, "c-2", 10) for seq in range(1, 51)]
    now = datetime.now(UTC)

    def push(i: int) -> Any:
        return stores[i % 2].ingest("till-9", f"batch-{i}", batch, now)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(push, range(8)))
    stored = sum(a.count("STORED") for a in answers)
    assert stored == 50  # each seq stored by exactly one of the 8 pushes
    assert all(a.acked_through == 50 for a in answers)
    assert all(a.count("STORED") + a.count("DUPLICATE") == 50 for a in answers)
    ledger = stores[0].ledger("till-9")
    assert [e.seq for e in ledger] == list(range(1, 51))
    assert stores[0].balance("c-2", now).available == 300 + 500


def test_a_snapshot_build_lock_is_held_across_servers(two_servers: Any) -> None:
    """The advisory lock of a snapshot file: a second server waits until the first one's
    build ends (then takes the file built), whatever machine it runs on."""
    a, b = two_servers
    order: list[str] = []
    inside = threading.Event()
    leave = threading.Event()

    def first() -> None:
        with a.build_lock("snapshot v1-full"):
            order.append("a in")
            inside.set()
            leave.wait(10)
            order.append("a out")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    got = threading.Event()

    def second() -> None:
        with b.build_lock("snapshot v1-full"):
            order.append("b in")
            got.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    assert not got.wait(0.5)  # b waits while a builds
    with b.build_lock("snapshot v2-full"):  # another file is not held up
        pass
    leave.set()
    assert got.wait(10)
    thread.join(10)
    waiter.join(10)
    assert order == ["a in", "a out", "b in"]


# ---------------------------------------------------------------- the demo on PostgreSQL


def test_the_demo_plays_its_day_with_the_hub_on_postgresql(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tillpoint.agent.demo import _empty_hub_store, play

    _empty_hub_store(pg_url)  # what `demo --hub-store` checks first
    lines: list[str] = []
    assert play(tmp_path, tills=2, out=lines.append, hub_store=pg_url) == 0, "\n".join(lines)
    assert "hub ledger 7 transactions = the tills' journals 7" in "\n".join(lines)
    assert not (tmp_path / "hub" / "hub.db").exists()
    # a database that holds a hub is never a demo's
    code, _, err = run(capsys, "demo", "--hub-store", pg_url)
    assert code == 2 and "already holds a hub" in err
