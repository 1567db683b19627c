"""Review 37 (rev37c): session 36's hub changes read again with real parts (CONTRACT §3,
§9, §11).

1. A late grant is kept up to the offline limit the till sends with its request (field
   9). A Hold or Checkout is priced before its write transaction and priced again inside
   it when the till's snapshot changed meanwhile (a pull landed): the second pricing made
   no request (the call's one hub deadline was spent by the first) and priced OFFLINE
   with the new snapshot's limit, higher than the one the hub kept the first grant to. The
   hub then let another till take points this receipt redeemed (CONTRACT §9: two tills
   cannot spend the same points).

Found right (tests kept): a real `hub serve` stopped by SIGTERM mid-prune and restarted;
a late grant's figure at Confirm and at Cancel beside another till's ONLINE sales; tills
one below, at and one above the floor through a hub clock stepped ten years forward and
back; a pull cut half way through a version pruned before it asks again.

Real parts: the reference hub on 127.0.0.1 (SQLite, and PostgreSQL in the slow pass),
tills with their hub links, ledgers and caches, real pulls.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data, wait_for
from tillpoint.sync.pull import cache_version

from .conftest import ManualClock
from .test_hub_store import dump
from .test_review36_hub36 import (
    LONG_TTL_S,
    SURE_S,
    a_till,
    anna_redeems_all,
    held_for,
    hub,
    hub_clock,
    late_till,
    pull,
    push,
    sure_till,
)
from .test_review36_rev36e import TTL_S, pruned_state
from .test_review39_flake39 import HeldBack, held_back

__all__ = ["held_back", "hub", "hub_clock"]  # review 36 (hub36)'s and flake39's fixtures

DAY = 86400.0
LOW, HIGH = 200, 600  # the till's snapshot's offline limit before and after its pull


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def raised_limit(
    request: pytest.FixtureRequest, tmp_path: Path, held_back: HeldBack
) -> Iterator[LoopbackHub]:
    """The reference hub: version 1's program lets a till redeem 200 points offline a
    day; version 2's, published by the test, 600. Its AuthorizeRedemption's calls are
    known to `held_back` (each one's deadline: `slow_grants`)."""
    store = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    data = sample_master_data()
    data["program"]["offlineRedeemLimitPoints"] = LOW
    h = LoopbackHub(tmp_path / "hub", data=data, store=store)
    yield h
    h.stop()


# Review 41 (flake41): hub36's `late_till` (its late Hold waits 1 s) and `sure_till` (10 s),
# and the store busy until the call's own deadline at the hub has passed (it was 0.6 s
# against the shipped 300 ms): on a loaded machine the request reached the hub past 300
# ms, the hub rightly placed nothing ("cut" never set), or b's set-up hold was priced
# OFFLINE (`assert ('OFFLINE', 200) == ('ONLINE', 1000)`, seen on
# [postgresql-cancel] under two CPU hogs). a's release after its Cancel gets 10 s too.


def slow_grants(
    hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch, held_back: HeldBack
) -> tuple[threading.Event, threading.Event]:
    """The hub's store grants, then stays busy until the call's deadline at the hub has
    passed while the first event is set; the second is set once the hub cut a late
    grant."""
    granted, shrunk = hub.store.authorise, hub.store.shrink
    slow, cut = threading.Event(), threading.Event()

    def slow_store(*args: Any, **kw: Any) -> Any:
        out = granted(*args, **kw)
        if slow.is_set():
            held_back.past_its_deadline()
        return out

    def shrink(*args: Any, **kw: Any) -> Any:
        try:
            return shrunk(*args, **kw)
        finally:
            cut.set()

    monkeypatch.setattr(hub.store, "authorise", slow_store)
    monkeypatch.setattr(hub.store, "shrink", shrink)
    return slow, cut


@pytest.mark.parametrize("how", ["hold", "checkout"])
def test_a_pull_between_the_early_pricing_and_its_transaction_redeems_no_more_than_the_hub_kept(
    raised_limit: LoopbackHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    held_back: HeldBack,
    how: str,
) -> None:
    """CONTRACT §9, §11: till a holds version 1 (offline limit 200) and sells Anna's 1200
    points. The hub's store is slow: its grant is late, so the hub keeps 200 of it (what
    a said). While a's Hold was priced (OFFLINE, 200), a's pull applied version 2 (600):
    the Hold is priced again in its write transaction, with no time left to ask the hub,
    OFFLINE with the new limit: 600 redeemed where the hub holds 200, and till b, ONLINE,
    was then granted 1000: 1600 of Anna's 1200 points. The receipt now redeems no more
    offline than the limit its own request told the hub."""
    hub = raised_limit
    a = late_till(hub, tmp_path)
    b = sure_till(hub, tmp_path)
    try:
        assert pull(a).version == 1
        program = {**sample_master_data()["program"], "offlineRedeemLimitPoints": HIGH}
        import_doc(hub.store, {"program": program})
        hub.publish()
        assert (pull(b).version, cache_version(a.data_dir)) == (2, 1)

        priced_early = a.agent._price_early
        pulled: list[int] = []

        def then_a_pull(*args: Any, **kw: Any) -> Any:
            early = priced_early(*args, **kw)
            pulled.append(pull(a).version)  # lands before the write transaction
            return early

        monkeypatch.setattr(a.agent, "_price_early", then_a_pull)
        a.agent.on_hub_call_owed(lambda: None)  # no shrink yet: what the hub kept itself
        slow, cut = slow_grants(hub, monkeypatch, held_back)
        slow.set()
        try:
            sold = getattr(a.agent, how)(anna_redeems_all("a-late"))
        finally:
            slow.clear()
        assert pulled == [2] and cache_version(a.data_dir) == 2
        assert sold.mode == "OFFLINE"
        assert cut.wait(10)  # the hub's late call ended
        kept = held_for(hub, "c-1")
        assert kept == LOW  # the limit a's request said
        assert sold.redeemed_points <= kept  # was 600
        other = b.agent.checkout(anna_redeems_all("b-1"))
        assert other.mode == "ONLINE"
        assert sold.redeemed_points + other.redeemed_points <= 1200  # was 1600
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------- 2. a hub stopped mid-prune

VERSIONS = 1000  # five steps of `hub_sql.PRUNE_STEP`, 150 ms apart: a second of pruning


def a_year_of_versions(store: Any, now: datetime) -> int:
    """Versions 1..VERSIONS-1 a minute apart from 100 days before `now`, each changing a
    customer, and one more a day before `now`: the floor of a 30-day retention is
    VERSIONS - 1. Returns it."""
    import_doc(store, sample_master_data())
    start = now - timedelta(days=100)
    store.publish(start, TTL_S)
    for v in range(2, VERSIONS):
        import_doc(store, {"customers": [{"id": "c-9", "firstName": f"Вера {v}"}]})
        store.publish(start + timedelta(minutes=v), TTL_S)
    import_doc(store, {"customers": [{"id": "c-9", "firstName": "Вера"}]})
    store.publish(now - timedelta(days=1), TTL_S)
    return VERSIONS - 1


def serve(
    hub_dir: Path, url: str | None, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """`tillpoint hub serve` of `hub_dir` (shipped retention, 30 days; its store `url`, or
    its own SQLite file), once it listens."""
    port_file = hub_dir / "serve.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillpoint.agent.cli", "hub", "serve", "--hub-dir", str(hub_dir),
         "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         *(["--store", url] if url else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs.append(proc)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def hub_store(kind: str, path: Path, url: str | None) -> Any:
    if kind == "sqlite":
        from tillpoint.sync.hub_sqlite import SqliteHubStore

        return SqliteHubStore(path)
    from tillpoint.sync.hub_postgres import PostgresHubStore

    return PostgresHubStore(url, migrate_schema=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_hub_stopped_by_sigterm_mid_prune_resumes_after_a_restart_to_the_one_prune(
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    """CONTRACT §3 (review 36's delta floor): a real `hub serve` whose store kept 1000
    versions starts its first prune (five write transactions); SIGTERM between two of them
    ends it cleanly (exit 0) with a floor that is a version every later version can be
    rebuilt from (its full snapshot and the latest one exactly as before), nothing below
    it; the restarted hub goes on to the floor, and the store is then exactly what one
    prune of a second, identical store leaves."""
    from tillpoint.agent.cli import main

    now = datetime.now(UTC)
    url = ref_url = None
    if kind == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        url, ref_url = cluster.new_database(), cluster.new_database()
    hub_dir = tmp_path / "hub"
    init = ["hub", "init", "--hub-dir", str(hub_dir), *(["--store", url] if url else [])]
    assert main(init) == 0
    capsys.readouterr()
    store = hub_store(kind, hub_dir / "hub.db", url)
    ref = hub_store(kind, tmp_path / "ref.db", ref_url)
    try:
        target = a_year_of_versions(store, now)
        assert a_year_of_versions(ref, now) == target
        latest = store.latest()
        assert latest is not None
        full = {v: store.snapshot_doc(v, 0) for v in range(200, target + 1, 200)}
        newest = store.snapshot_doc(latest.version, 0)
        assert ref.prune_versions(now - timedelta(days=30)) == target

        hub = serve(hub_dir, url, procs)
        deadline = time.monotonic() + 60
        while store.delta_floor() == 0:  # its first step is committed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
        floor = store.delta_floor()
        assert 0 < floor < target, floor  # stopped between two steps
        assert floor in full
        with store.read_tx() as tx:
            low = tx.execute("SELECT min(version) FROM publications").fetchone()[0]
        assert low == floor
        assert store.snapshot_doc(floor, 0) == full[floor]
        assert store.snapshot_doc(latest.version, 0) == newest
        assert store.snapshot_doc(latest.version, floor)["version"] == latest.version

        hub = serve(hub_dir, url, procs)
        deadline = time.monotonic() + 60
        while store.delta_floor() != target:
            assert hub.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
        assert pruned_state(store) == pruned_state(ref)
        assert store.snapshot_doc(latest.version, 0) == newest
    finally:
        store.close()
        ref.close()


# ---------------------------------------------------------------- 3. a late grant's figure


@pytest.mark.parametrize("end", ["confirm", "cancel"])
def test_a_late_grant_holds_what_the_offline_hold_uses_until_its_confirm_or_cancel(
    raised_limit: LoopbackHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    held_back: HeldBack,
    end: str,
) -> None:
    """CONTRACT §9, §11: till a's Hold of Anna's 1200 points gets a late grant (the hub's
    store slow); a prices it OFFLINE, 200 (its limit), and the hub keeps 200. Till b,
    ONLINE meanwhile, is granted the other 1000 and no more. At a's Confirm (its sale
    pushed) the hub's hold is settled by the transaction, which spent 200 (and earned);
    at a's Cancel the 200 are Anna's again. Either way b is then granted what is left at
    the hub, and Anna's balance never goes below 0."""
    hub = raised_limit
    a = late_till(hub, tmp_path)
    b = sure_till(hub, tmp_path)
    try:
        assert (pull(a).version, pull(b).version) == (1, 1)
        slow, cut = slow_grants(hub, monkeypatch, held_back)
        slow.set()
        try:
            held = a.agent.hold(anna_redeems_all("a-late"))
        finally:
            slow.clear()
        assert (held.state, held.mode, held.redeemed_points) == ("HELD", "OFFLINE", LOW)
        assert cut.wait(10)
        assert held_for(hub, "c-1") == LOW
        a.authoriser.timeout_s = SURE_S  # its Cancel's release
        quoted = b.agent.quote(anna_redeems_all("b-quote"))  # no hold: what b may redeem
        assert quoted.mode == "ONLINE"
        first = b.agent.hold(anna_redeems_all("b-1"))
        assert (first.mode, first.redeemed_points) == ("ONLINE", 1200 - LOW)
        b.agent.cancel("b-1")
        if end == "confirm":
            sold = a.agent.confirm("a-late")
            assert sold.redeemed_points == LOW  # the held figure
            push(a)
            wait_for(lambda: held_for(hub, "c-1") == 0)  # settled by the transaction
        else:
            a.agent.cancel("a-late")
            a.agent.retry_hub_releases()
            wait_for(lambda: held_for(hub, "c-1") == 0)
        left = hub.store.balance("c-1", datetime.now(UTC)).available
        # Confirmed: 200 spent, its earned points added (CONTRACT §6); cancelled: all back
        assert left == (1200 - LOW + sold.earned_points if end == "confirm" else 1200)
        after = b.agent.checkout(anna_redeems_all("b-2"))
        assert after.mode == "ONLINE" and after.redeemed_points == min(1200, left)
        push(b)
        assert hub.store.balance("c-1", datetime.now(UTC)).available >= 0
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------- 4. the floor's edges


def test_tills_below_at_and_above_the_floor_end_as_a_fresh_till_through_a_stepped_clock(
    hub: LoopbackHub, hub_clock: ManualClock, tmp_path: Path
) -> None:
    """CONTRACT §3: versions 1 (50 days ago), 2 (40), 3 (35), 4 (10), 5 (now); the floor
    of a 30-day retention is 3. The till on 2 (one below) gets a full snapshot, the one on
    3 (at it) a delta from 3, the one on 4 (above) a delta from 4. Then the hub's clock is
    stepped ten years forward (the floor rises to the newest version: every till below it
    gets one full snapshot, the one on it nothing) and back (a version issued then, earlier
    than the one before it, brings nothing back, lowers nothing; 40 days on, it is the
    floor). Every till ends with exactly a fresh till's cache."""
    tills = {v: a_till(hub, tmp_path, f"t{v}") for v in (2, 3, 4)}
    try:
        for days, name in ((10, "Вера"), (5, "Ирина"), (25, "Нина"), (10, "Олег")):
            import_doc(hub.store, {"customers": [{"id": "c-9", "firstName": name}]})
            hub_clock.advance(days * DAY)
            version = hub.publish(LONG_TTL_S)
            if version in tills:
                assert pull(tills[version]).version == version
        assert version == 5
        assert hub.server.prune_versions() == 3
        got = {v: pull(t) for v, t in tills.items()}
        assert {v: (r.version, r.base_version) for v, r in got.items()} == {
            2: (5, 0),
            3: (5, 3),
            4: (5, 4),
        }

        def all_fresh(version: int, name: str) -> None:
            fresh = a_till(hub, tmp_path, name)
            try:
                assert pull(fresh).version == version
                for till in tills.values():
                    assert dump(till.data_dir) == dump(fresh.data_dir)
            finally:
                fresh.stop()

        all_fresh(5, "fresh-5")
        hub_clock.advance(3653 * DAY)  # ten years forward
        import_doc(hub.store, {"customers": [{"id": "c-9", "firstName": "Пётр"}]})
        assert hub.publish(LONG_TTL_S) == 6
        assert hub.server.prune_versions() == 5  # the newest issued 30 days before "now"
        assert [pull(t).base_version for t in tills.values()] == [5, 5, 5]
        assert hub.server.prune_versions() == 5
        hub_clock.advance(-3653 * DAY)  # and back
        import_doc(hub.store, {"customers": [{"id": "c-9", "firstName": "Павел"}]})
        assert hub.publish(LONG_TTL_S) == 7
        assert hub.server.prune_versions() == 5  # only ever rises
        assert [pull(t).base_version for t in tills.values()] == [6, 6, 6]
        hub_clock.advance(40 * DAY)  # version 7 (issued before 6) is now 40 days old
        assert hub.server.prune_versions() == 7
        assert hub.store.publication(6) is None
        all_fresh(7, "fresh-7")
    finally:
        for till in tills.values():
            till.stop()


# ---------------------------------------------------------------- 5. a pull racing the prune


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def small_chunks(
    request: pytest.FixtureRequest, tmp_path: Path, hub_clock: ManualClock
) -> Iterator[LoopbackHub]:
    """hub36's hub (30-day retention, version 1 published 50 days ago on `hub_clock`)
    sending snapshots 200 bytes a chunk, so that a pull can be cut half way."""
    store = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0, chunk_size=200)
    h = LoopbackHub(
        tmp_path / "hub",
        config,
        data=sample_master_data(),
        publish=False,
        store=store,
        clock=hub_clock,
    )
    h.publish(LONG_TTL_S)
    yield h
    h.stop()


def test_a_pull_cut_half_way_through_a_version_pruned_before_it_asks_again_takes_a_full_one(
    small_chunks: LoopbackHub, hub_clock: ManualClock, tmp_path: Path
) -> None:
    """CONTRACT §3: till a holds version 1 and is told of version 2; its pull of the delta
    is cut after a chunk (the part kept to resume). Before it asks again, versions 3 (now)
    and 4 (40 days on) are published and the hub prunes to 3: the version a was resuming
    and its base are gone. Its next pull asks for the rest of 2 and gets the full snapshot
    of 4 from its first byte (no bytes of another bundle after its part), and ends with a
    fresh till's cache."""
    hub = small_chunks
    a = a_till(hub, tmp_path, "a")
    try:
        assert pull(a).version == 1
        names = [{"id": f"c-{i}", "firstName": f"Имя {i}"} for i in range(3, 30)]
        import_doc(hub.store, {"customers": names})
        hub_clock.advance(DAY)
        assert hub.publish(LONG_TTL_S) == 2
        sent: list[int] = []

        def cut(where: str) -> None:
            if where == "pull.chunk":
                sent.append(1)
                if len(sent) == 2:
                    raise RuntimeError("connection lost")

        hub.server.servicer.failpoint = cut
        with pytest.raises(grpc.RpcError):
            pull(a)
        hub.server.servicer.failpoint = None
        assert (a.data_dir / "sync" / "pull.part").stat().st_size > 0  # kept to resume
        assert cache_version(a.data_dir) == 1
        import_doc(hub.store, {"customers": [{"id": "c-3", "firstName": "Вера"}]})
        assert hub.publish(LONG_TTL_S) == 3
        hub_clock.advance(40 * DAY)
        assert hub.publish(LONG_TTL_S) == 4
        assert hub.server.prune_versions() == 3
        resumed = list(hub.server.servicer.stats.resumed_pulls)
        got = pull(a)
        assert (got.status, got.version, got.base_version, got.resumed_from) == (
            "APPLIED",
            4,
            0,
            0,
        )
        assert list(hub.server.servicer.stats.resumed_pulls) == resumed  # nothing resumed
        fresh = a_till(hub, tmp_path, "fresh")
        try:
            assert pull(fresh).version == 4
            assert dump(a.data_dir) == dump(fresh.data_dir)
        finally:
            fresh.stop()
    finally:
        a.stop()
