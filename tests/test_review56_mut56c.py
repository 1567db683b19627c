"""Review 56 (mut56c): mutation testing of the reference hub's server around its service
(`sync/hub_server.py`: `HubConfig`'s ranges, `HubDir`, and `HubServer`'s start, watcher,
balance refresh, version prune and stop; docs/CONTRACT.md §3, §9, §10). Each test here
pins a rule a surviving mutant broke unseen (docs/DECISIONS.md, "Review 56 (mut56c)").
Real parts: hub directories with their keys, real SQLite stores (one throwaway PostgreSQL
database for what is PostgreSQL's own), `HubServer`s on free loopback ports and real mTLS
clients.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import InputError, StorageError, TillpointError
from tillpoint.sync.hub_server import CHUNK_BYTES, MAX_CHUNK, HubConfig, HubDir, HubServer
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.hub_store import Publication, TxIn
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import ManualClock

DAY = 86_400.0
LONG_TTL_S = 400 * DAY  # valid on the tills' real clocks whatever the hub's clock says
ANNA = "2770000000017"  # the sample data's first card (customer c-1)

# ------------------------------------------------------------------ HubConfig's ranges

# the ones that must be above 0, and the ones 0 is a meaning of (docs/HUB.md)
POSITIVE = ("heartbeat_s", "stream_max_s", "hold_ttl_s", "snapshot_ttl_s", "certificate_reminder_s")
AT_LEAST_0 = (
    "publish_every_s",
    "watch_interval_s",
    "full_wait_s",
    "rate_limit_bytes_s",
    "delta_retention_s",
)


def refused(message: str, **given: Any) -> None:
    with pytest.raises(ValueError, match=message):
        HubConfig(**given)


def test_a_hub_config_s_defaults_are_the_ones_hub_serve_documents() -> None:
    """`hub serve` (docs/HUB.md, docs/PROTOCOL.md) and a hub made in code (`HubServer`,
    `LoopbackHub`) both serve with these unless told otherwise: snapshots valid 168 hours,
    deltas from 30 days of versions, 64 workers, the files of 3 full snapshots kept,
    chunks of 256 KiB."""
    config = HubConfig()
    assert config.snapshot_ttl_s == 7 * 86_400 == 168 * 3600
    assert config.delta_retention_s == 30 * 86_400
    assert config.max_workers == 64
    assert config.keep_versions == 3
    assert config.chunk_size == CHUNK_BYTES == 256 * 1024  # session 59; MAX_CHUNK 1 MiB
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.keep_versions = 1  # type: ignore[misc]  # shared by the servicer and builder


def test_a_chunk_size_is_taken_from_1_byte_to_1_mib_and_refused_outside() -> None:
    assert HubConfig(chunk_size=1).chunk_size == 1
    assert HubConfig(chunk_size=MAX_CHUNK).chunk_size == MAX_CHUNK
    for bad in (0, -1, MAX_CHUNK + 1):
        refused(f"chunk_size must be 1..{MAX_CHUNK}", chunk_size=bad)


def test_max_workers_of_1_is_taken_and_0_refused() -> None:
    assert HubConfig(max_workers=1).max_workers == 1
    refused(r"max_workers must be at least 1 \(got 0\)", max_workers=0)


@pytest.mark.parametrize("name", POSITIVE)
def test_a_duration_that_must_be_above_0_refuses_0_and_takes_the_least_above(name: str) -> None:
    assert getattr(HubConfig(**{name: 0.001}), name) == 0.001
    assert getattr(HubConfig(**{name: 1e9}), name) == 1e9
    for bad in (0.0, -0.001, math.inf, math.nan):
        refused(f"{name} must be a finite number above 0 \\(got {bad}\\)", **{name: bad})


@pytest.mark.parametrize("name", AT_LEAST_0)
def test_a_setting_whose_0_means_off_takes_0_and_refuses_below_it(name: str) -> None:
    assert getattr(HubConfig(**{name: 0.0}), name) == 0.0
    assert getattr(HubConfig(**{name: 0.001}), name) == 0.001
    for bad in (-0.001, -1.0, math.inf, math.nan):
        refused(f"{name} must be a finite number at least 0 \\(got {bad}\\)", **{name: bad})


# ------------------------------------------------------------------ HubDir


def test_a_hub_dir_s_store_is_the_environment_s_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$TILLPOINT_HUB_STORE names the store when no --store is given; a given one (even
    "": hub.db in the directory) wins over it; blanks around either are dropped."""
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("TILLPOINT_HUB_STORE", f" {elsewhere} ")
    assert HubDir(tmp_path / "hub").sqlite_path == elsewhere
    assert HubDir(tmp_path / "hub", "").sqlite_path == tmp_path / "hub" / "hub.db"
    given = tmp_path / "given.db"
    assert HubDir(tmp_path / "hub", str(given)).sqlite_path == given
    monkeypatch.delenv("TILLPOINT_HUB_STORE")
    hub = HubDir(tmp_path / "hub")
    assert hub.sqlite_path == hub.db == tmp_path / "hub" / "hub.db"
    assert hub.snapshots == tmp_path / "hub" / "snapshots"
    assert not hub.on_postgres


def test_a_store_url_of_another_scheme_is_refused_and_postgresql_ones_taken(
    tmp_path: Path,
) -> None:
    for url in ("postgresql://u@127.0.0.1:1/db", "postgres://u@127.0.0.1:1/db"):
        assert HubDir(tmp_path, url).on_postgres
    for typo in ("postgressql://u:secret@h/db", "postgresql+psycopg://u:secret@h/db"):
        with pytest.raises(InputError, match="neither a postgresql://") as err:
            HubDir(tmp_path, typo)
        assert "secret" not in str(err.value)
    assert not HubDir(tmp_path, "relative/hub.db").on_postgres


def test_a_sqlite_hub_is_there_once_its_database_is(tmp_path: Path) -> None:
    hub = HubDir(tmp_path / "hub", "")
    assert hub.exists() is False
    with pytest.raises(InputError, match=r"no hub at .*: run 'tillpoint hub init'"):
        hub.require()
    assert hub.init() is True  # the keys made
    assert hub.init() is False  # and never again
    assert hub.exists() is False  # keys alone are no SQLite hub
    hub.open_store().close()
    assert hub.exists() is True
    assert hub.require() is hub


def test_a_postgresql_hub_is_there_once_its_keys_are(tmp_path: Path) -> None:
    """On PostgreSQL the database is shared: a hub directory is a hub once `hub init` (or
    `hub import`) made its keys. No database is reached to say so."""
    hub = HubDir(tmp_path / "hub", "postgresql://nobody@127.0.0.1:1/none")
    assert hub.exists() is False
    with pytest.raises(InputError, match="no hub at"):
        hub.require()
    assert hub.init() is True
    assert hub.exists() is True
    assert hub.require() is hub


def test_a_postgresql_store_is_migrated_only_when_asked(tmp_path: Path, pg_url: str) -> None:
    """`open_store()` (what `hub serve` opens) never changes a schema: an empty database
    is refused with the command that migrates it; `open_store(migrate=True)` (`hub init`,
    `hub migrate`) brings it up to date, and the hub's store is then PostgreSQL's."""
    from tillpoint.sync.hub_postgres import PostgresHubStore

    hub = HubDir(tmp_path / "hub", pg_url)
    with pytest.raises(Exception, match="tillpoint hub migrate"):
        hub.open_store().close()
    store = hub.open_store(migrate=True)
    try:
        assert isinstance(store, PostgresHubStore)
        assert store.latest() is None
    finally:
        store.close()
    again = hub.open_store()
    assert isinstance(again, PostgresHubStore)
    again.close()


# ------------------------------------------------------------------ HubServer


def sale_of(seq: int, at: datetime) -> TxIn:
    """A till's CHECKOUT of 5 points to Anna, as the hub ingests it."""
    return TxIn("till-1", seq, "CHECKOUT", at.isoformat(), "c-1", ANNA,
                json.dumps({"receiptId": f"r-{seq}"}), "{}", 5, 0, "")  # fmt: skip


def ingested(hub: LoopbackHub, seq: int) -> None:
    now = hub.clock()
    hub.store.ingest("till-1", "", [sale_of(seq, now)], now)


class Rounds:
    """Counts the watcher's rounds (each one begins with the certificate's look), so that
    a test waits for rounds that have run, never for a time."""

    def __init__(self, server: HubServer) -> None:
        self.count = 0
        self._seen = threading.Condition()
        look = server.certificate.check

        def counted(*args: Any, **kw: Any) -> Any:
            with self._seen:
                self.count += 1
                self._seen.notify_all()
            return look(*args, **kw)

        server.certificate.check = counted  # type: ignore[method-assign]

    def wait(self, more: int = 3) -> None:
        """Until `more` whole rounds have begun and ended after this call."""
        with self._seen:
            goal = self.count + more + 1
            assert self._seen.wait_for(lambda: self.count >= goal, timeout=60), "no rounds"


@pytest.fixture
def hub_clock() -> ManualClock:
    return ManualClock(datetime.now(UTC) - timedelta(days=50))


def manual_hub(root: Path, clock: ManualClock, **config: Any) -> LoopbackHub:
    """The reference hub on `clock` with version 1 published (valid LONG_TTL_S) and a
    fast watcher; `config` over that."""
    settings: dict[str, Any] = {"heartbeat_s": 1.0, "watch_interval_s": 0.02, "publish_every_s": 0}
    hub = LoopbackHub(root, HubConfig(**(settings | config)), clock=clock,
                      data=sample_master_data(), publish=False, start=False)  # fmt: skip
    hub.publish(LONG_TTL_S)
    hub.start()
    return hub


@pytest.fixture
def refreshing_hub(tmp_path: Path, hub_clock: ManualClock) -> Iterator[LoopbackHub]:
    """`manual_hub` that refreshes balances every hour (`hub serve --publish-every 3600`)."""
    hub = manual_hub(tmp_path / "hub", hub_clock, publish_every_s=3600)
    yield hub
    hub.stop()


def test_a_refresh_is_due_exactly_publish_every_after_the_latest_version(
    refreshing_hub: LoopbackHub, hub_clock: ManualClock
) -> None:
    """A sale that came in right after a version waits for the refresh: it is published
    `publish_every_s` after the latest version on the hub's clock, exactly then, and not
    before (a watcher that saw it due at once, or counted the hour back from the
    version, published a version for every sale: a chain's tills pulled one a minute)."""
    hub = refreshing_hub
    rounds = Rounds(hub.server)
    ingested(hub, 1)
    rounds.wait()
    hub_clock.advance(3600 - 0.001)
    rounds.wait()
    assert hub.store.latest().version == 1  # not due yet: the sale waits
    hub_clock.advance(0.001)  # exactly an hour after version 1
    wait_for(lambda: hub.store.latest().version == 2)
    assert hub.store.latest().reason == "balances"


def test_a_refresh_tried_is_not_tried_again_before_publish_every_has_passed(
    refreshing_hub: LoopbackHub, hub_clock: ManualClock
) -> None:
    """Once a round has tried a refresh, the next try waits `publish_every_s` on the
    process's steady clock, whatever the wall clock does: a hub whose clock jumped (or a
    version issued long ago) tried, and published, at every round of its watcher."""
    hub = refreshing_hub
    rounds = Rounds(hub.server)
    hub_clock.advance(3600)
    rounds.wait()  # due, tried: nothing came in, nothing published
    assert hub.store.latest().version == 1
    ingested(hub, 1)
    hub_clock.advance(3 * 3600)
    rounds.wait()
    assert hub.store.latest().version == 1  # the next try is an hour of this process away


def test_a_balance_refresh_comes_at_half_the_latest_versions_validity_and_no_sooner(
    tmp_path: Path, hub_clock: ManualClock
) -> None:
    """With no sale since, a version is renewed once half its validity has passed (so a
    till never holds an expired one): exactly at the half, not a microsecond before."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), publish=False,
                      start=False, clock=hub_clock)  # fmt: skip
    try:
        issued = hub_clock()
        hub.publish(2 * DAY)
        hub_clock.now = issued + timedelta(days=1) - timedelta(microseconds=1)
        assert hub.server.refresh_balances() is None
        hub_clock.now = issued + timedelta(days=1)
        pub = hub.server.refresh_balances()
        assert pub is not None and (pub.version, pub.reason) == (2, "balances")
        assert pub.issued_at == issued + timedelta(days=1)
        assert pub.expires_at == pub.issued_at + timedelta(seconds=hub.config.snapshot_ttl_s)
    finally:
        hub.server.store.close()


def test_a_balance_refresh_publishes_no_row_of_the_operators_draft(
    tmp_path: Path, hub_clock: ManualClock
) -> None:
    """The refresh publishes the tills' sales, never what an operator imported and has
    not published yet (`hub import` without --publish): that waits for `hub publish`."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), publish=False,
                      start=False, clock=hub_clock)  # fmt: skip
    try:
        hub.publish(LONG_TTL_S)
        import_doc(hub.store, {"customers": [{"id": "c-9", "firstName": "Вера"}]})  # a draft
        ingested(hub, 1)
        pub = hub.server.refresh_balances()
        assert pub is not None and pub.version == 2
        assert "c-9" not in json.dumps(hub.store.snapshot_doc(2, 0), ensure_ascii=False)
        assert hub.publish() == 3  # the operator's publish takes it
        assert "c-9" in json.dumps(hub.store.snapshot_doc(3, 2), ensure_ascii=False)
    finally:
        hub.server.store.close()


def test_the_prune_says_the_floor_once_each_time_it_rises(
    tmp_path: Path, hub_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The support engineer reads when the tills of old versions start getting full
    snapshots: "versions before N pruned" once when the floor rises, never again for the
    same floor (the watcher prunes after every new version)."""
    hub = manual_hub(tmp_path / "hub", hub_clock, watch_interval_s=3600)
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    try:
        hub_clock.advance(10 * DAY)
        assert hub.publish(LONG_TTL_S) == 2
        assert hub.server.prune_versions() == 0  # versions 1 and 2 within 30 days
        hub_clock.advance(25 * DAY)
        assert hub.server.prune_versions() == 1  # version 1 issued 35 days ago: the floor
        hub_clock.advance(10 * DAY)  # version 2 now 35 days old: the floor
        assert hub.server.prune_versions() == 2
        assert hub.server.prune_versions() == 2
        said = [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()]
        # the floor's rise to 1 forgot nothing: not said (review 57, mut57a)
        assert said == ["versions before 2 pruned: a till on one gets a full snapshot"]
    finally:
        hub.stop()


def full_file(hub: LoopbackHub, version: int) -> Path:
    return hub.dir.snapshots / f"v{version:010d}-full.snap"


def built(hub: LoopbackHub, version: int) -> bool:
    """Whether the full snapshot of `version` is built whole (its `.json` is written last)."""
    return full_file(hub, version).with_suffix(".json").is_file()


def test_a_hub_builds_its_latest_full_snapshot_at_start_and_after_another_process_publishes(
    tmp_path: Path, hub_clock: ManualClock
) -> None:
    """The first till should not wait for the build: a hub started with a published
    version builds its full snapshot at once (not at the watcher's first round), and a
    version `hub publish` made in another process is told to the subscribed tills and
    built by the watcher's next round."""
    hub = manual_hub(tmp_path / "hub", hub_clock, watch_interval_s=3600)
    try:
        wait_for(lambda: built(hub, 1), timeout=30)
    finally:
        hub.stop()
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.02, publish_every_s=3600)
    hub = LoopbackHub(tmp_path / "hub2", config, clock=hub_clock, data=sample_master_data(),
                      publish=False)  # fmt: skip  # a hub that has published nothing yet
    try:
        rounds = Rounds(hub.server)
        rounds.wait()
        other = hub.dir.open_store()  # what `tillpoint hub publish` opens
        try:
            assert other.publish(hub_clock(), LONG_TTL_S).version == 1
        finally:
            other.close()
        wait_for(lambda: hub.server.notifier.latest is not None
                 and hub.server.notifier.latest.version == 1)  # fmt: skip
        wait_for(lambda: built(hub, 1), timeout=30)
    finally:
        hub.stop()


def test_a_hub_server_serves_from_its_start_to_its_stop_and_as_a_context(tmp_path: Path) -> None:
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    server = hub.server
    assert server.serving is False
    with server as same:
        assert same is server
        assert server.start() > 0 and server.serving is True
    assert server.serving is False  # the context's end stopped it
    assert server.start() > 0 and server.serving is True  # again after its stop
    server.stop(grace=0)
    assert server.serving is False


def test_a_hub_server_stopped_without_a_start_stops_quietly(tmp_path: Path) -> None:
    """A `hub serve` that failed before it served (its port taken, its port file not
    written) is stopped all the same: nothing to stop is no error, and again too."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    hub.server.stop(grace=0)
    hub.server.stop(grace=0)
    assert hub.server.serving is False


def connections_to(url: str) -> int:
    """How many sessions other than this question's are open on `url`'s database."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_store_given_to_a_hub_server_stays_open_and_its_own_is_closed_at_stop(
    tmp_path: Path, pg_url: str
) -> None:
    """A store the caller gave (`HubServer(..., store=)`: several servers of one
    PostgreSQL database in one process) is the caller's: the server's stop leaves it
    open, and serves it again after a start again. A store the server opened itself it
    closes at its stop (PostgreSQL's pool of connections is given back), and opens again,
    once, at a start after it (a start that failed left a pool open for good)."""
    hub_dir = HubDir(tmp_path / "hub", pg_url)
    hub_dir.init()
    given = hub_dir.open_store(migrate=True)
    try:
        import_doc(given, sample_master_data())
        given.publish(datetime.now(UTC), LONG_TTL_S)
        server = HubServer(hub_dir, store=given)
        server.start()
        server.stop(grace=0)
        assert given.latest().version == 1  # still the caller's to use
        server.start()  # and still the one it serves after a start again
        assert server.store is given and server.servicer.store is given
        server.stop(grace=0)
    finally:
        given.close()
    own = HubServer(hub_dir)
    own.start()
    own.stop(grace=0)
    wait_for(lambda: connections_to(pg_url) == 0)  # every one it opened given back
    with pytest.raises(StorageError):  # its pool is closed
        own.store.latest()
    with socket.socket() as taken:  # a start that fails opens nothing it keeps
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(TillpointError, match="the hub cannot listen on"):
            own.start(f"127.0.0.1:{taken.getsockname()[1]}")
    own.start()  # opened again
    try:
        assert own.store.latest().version == 1
    finally:
        own.stop(grace=0)
    wait_for(lambda: connections_to(pg_url) == 0)


def test_a_process_that_ends_without_stopping_its_hub_server_still_ends(tmp_path: Path) -> None:
    """The hub's own threads never keep a process alive: a program (or a `hub serve`
    whose main thread failed between the start and the stop) that ends without
    `stop()` exits, rather than hanging on the watcher's endless rounds."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tillpoint.sync.hub_server import HubServer\n"
        "server = HubServer(Path(sys.argv[1]))\n"
        "print(server.start(), flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "hub")],
                          capture_output=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0


def test_a_port_taken_between_the_probe_and_grpcs_bind_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub serve` asks whether its address is free, then grpcio binds it: another program
    that took the port in between (the probe's window: the probe answers "free" here) is
    still a start refused with why, and no hub that says it serves on a port it does not
    hold."""
    from tillpoint.sync import hub_server

    monkeypatch.setattr(hub_server, "bind_refusal", lambda listen: None)  # the window
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(TillpointError) as refused:
                hub.server.start(f"127.0.0.1:{port}")
        assert refused.value.message.startswith(f"the hub cannot listen on 127.0.0.1:{port}: ")
        assert hub.server.serving is False
    finally:
        hub.server.stop(grace=0)


def test_a_port_another_hub_of_this_process_serves_is_refused_in_the_window_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One hub a port: a hub binds its port alone (no port sharing), so that a second
    `HubServer` given the port of a first one (the probe's window again) is refused, and
    the tills of the first never reach the second."""
    from tillpoint.sync import hub_server

    first = LoopbackHub(tmp_path / "first", data=sample_master_data())
    try:
        monkeypatch.setattr(hub_server, "bind_refusal", lambda listen: None)  # the window
        second = LoopbackHub(tmp_path / "second", data=sample_master_data(), start=False)
        try:
            with pytest.raises(TillpointError, match="the hub cannot listen on"):
                second.server.start(first.address)
            assert second.server.serving is False
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_hub_server_refused_for_its_keys_leaves_its_store_closed(
    tmp_path: Path, pg_url: str
) -> None:
    """A hub directory with some of its keys but not all (a restore that missed files) is
    refused with the words of the keys; the store the server opened first is closed
    again: PostgreSQL's connections are given back, not held for the life of the program
    that tried (a SQLite store opens nothing until it is read)."""
    from tillpoint.sync.pki import EnrollmentError

    hub = HubDir(tmp_path / "hub", pg_url)
    hub.open_store(migrate=True).close()
    hub.keys.root.mkdir(parents=True)
    hub.keys.ca_key.write_bytes(b"a key restored alone")
    with pytest.raises(EnrollmentError, match="some of the hub's keys but not all"):
        HubServer(hub)
    wait_for(lambda: connections_to(pg_url) == 0)


class ReadsFailing(SqliteHubStore):
    """The real SQLite store, whose reads of the latest version fail while `failing` is
    set, with SQLite's own error (a disk's I/O error, a lock held past the store's 30 s
    wait: neither can be made on demand here). SQLite's reads pass its errors on as they
    are, where PostgreSQL's name them (StorageError)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing = threading.Event()

    def latest(self) -> Publication | None:
        if self.failing.is_set():
            raise sqlite3.OperationalError("disk I/O error")
        return super().latest()


def test_the_watcher_outlives_a_read_its_store_failed_and_tells_the_next_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher tells the tills of the versions `hub publish` makes, refreshes the
    balances and prunes. A read of the SQLite store that failed with SQLite's own error
    ended its thread for good (a traceback on stderr): the hub served on, and until a
    restart no till heard of a new version (they priced with yesterday's offers until
    their 30 s poll, every time), no balance was refreshed, nothing was pruned. Now the
    round is logged as an error and the next round tries again. Failed before the fix."""
    hub_dir = HubDir(tmp_path / "hub", "")
    hub_dir.init()
    store = ReadsFailing(hub_dir.sqlite_path)
    import_doc(store, sample_master_data())
    store.publish(datetime.now(UTC), LONG_TTL_S)
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.02, publish_every_s=0)
    server = HubServer(hub_dir, config, store=store)
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    server.start()
    try:
        store.failing.set()
        wait_for(lambda: "hub watcher: disk I/O error" in caplog.text, timeout=30)
        store.failing.clear()
        other = hub_dir.open_store()  # `tillpoint hub publish`
        try:
            assert other.publish(datetime.now(UTC), LONG_TTL_S).version == 2
        finally:
            other.close()
        wait_for(lambda: server.notifier.latest is not None
                 and server.notifier.latest.version == 2, timeout=30)  # fmt: skip
    finally:
        server.stop(grace=0)
        store.close()


def batch_of_size(size: int) -> pb.TransactionBatch:
    """A push of exactly `size` bytes on the wire, claimed for a device not the caller's."""

    def batch(n: int) -> pb.TransactionBatch:
        tx = pb.Transaction(device_id="till-2", seq=1, kind=pb.CHECKOUT, request_json="x" * n)
        return pb.TransactionBatch(device_id="till-2", transactions=[tx])

    n = size - batch(0).ByteSize()
    while batch(n).ByteSize() > size:  # the length prefixes grow with it
        n -= 1
    assert batch(n).ByteSize() == size
    return batch(n)


def test_the_hub_reads_a_push_up_to_16_mib_and_refuses_a_larger_one_unread(
    tmp_path: Path,
) -> None:
    """CONTRACT §10: a push of one receipt of 10,000 lines can be more than gRPC's usual
    4 MiB: the hub reads a message up to 16 MiB (here answered PERMISSION_DENIED: it
    names another device, so nothing is stored), and gRPC refuses a larger one
    (RESOURCE_EXHAUSTED) before the hub reads it."""
    import grpc

    from .test_hub_security import identity, stub

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        me = identity(hub, "till-1", enroll=True)
        s = stub(hub, key=me.key_pem, cert=me.cert_pem)
        for size, code in (
            ((16 << 20) - 1024, grpc.StatusCode.PERMISSION_DENIED),
            ((16 << 20) + 1024, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ):
            with pytest.raises(grpc.RpcError) as err:
                s.PushTransactions(batch_of_size(size), timeout=60)
            assert err.value.code() == code, (size, err.value.details())
    finally:
        hub.stop()


# ------------------------------------------------------------------ SnapshotBuilder


def test_a_full_snapshot_whose_build_failed_is_built_again_by_the_running_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A build that failed (a full disk, the database away for a moment) is logged and
    tried again `RETRY_BUILD_S` later by the same thread; a thread that ended at its first
    failure left every later version to be built by no one, and each till that needed a
    full snapshot was told ABORTED "being built" for good. The failure is made on the
    builder's own `_build` (as test_sync_snapshots holds it): a disk that fills on demand
    is not to be had here."""
    from tillpoint.sync import hub_server

    monkeypatch.setattr(hub_server, "RETRY_BUILD_S", 0.2)
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    builder = hub.server.builder
    real = builder._build
    failures = [StorageError("the disk is full")]

    def failing_once(version: int, base: int) -> Any:
        if failures:
            raise failures.pop()
        return real(version, base)

    builder._build = failing_once  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    hub.start()
    try:
        wait_for(lambda: built(hub, 1), timeout=30)
        assert "building the full snapshot of version 1 failed: the disk is full" in caplog.text
    finally:
        hub.stop()


def test_snapshot_files_deleted_by_hand_are_pruned_quietly_with_their_other_half(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator who deleted half of an old snapshot's files (its `.json`, or its
    `.snap`) by hand: the prune that comes to that version deletes the other half and
    goes on, without an error and without putting the next build off."""
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.02, publish_every_s=0, keep_versions=1)
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data())
    caplog.set_level(logging.INFO, logger="tillpoint.hub")
    try:
        wait_for(lambda: built(hub, 1), timeout=30)
        full_file(hub, 1).with_suffix(".json").unlink()
        import_doc(hub.store, {"customers": [{"id": "c-9", "firstName": "Вера"}]})
        assert hub.publish() == 2
        wait_for(lambda: not full_file(hub, 1).exists(), timeout=30)
        full_file(hub, 2).unlink()
        import_doc(hub.store, {"customers": [{"id": "c-8", "firstName": "Лев"}]})
        assert hub.publish() == 3
        wait_for(lambda: not full_file(hub, 2).with_suffix(".json").exists(), timeout=30)
        wait_for(lambda: built(hub, 3), timeout=30)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        hub.stop()


def test_a_builder_with_nothing_new_asked_waits_without_working(
    tmp_path: Path, hub_clock: ManualClock
) -> None:
    """Once the newest version asked for is built, the builder's thread sleeps until a
    newer one is asked for: the watcher asks for the same version every round, and a
    thread that took "asked for" as "at or above what it built" went round and round
    (a core of the hub's machine spent for nothing, its lock held in turns with the
    pulls')."""
    hub = manual_hub(tmp_path / "hub", hub_clock)
    try:
        builder = hub.server.builder
        wait_for(lambda: built(hub, 1), timeout=30)
        rounds = Rounds(hub.server)
        calls = [0]
        real = builder._prune

        def counted() -> None:
            calls[0] += 1
            real()

        builder._prune = counted  # type: ignore[method-assign]
        rounds.wait()
        before = calls[0]
        rounds.wait(5)  # the watcher asks for version 1 each round
        assert calls[0] == before
    finally:
        hub.stop()


def test_a_hub_whose_snapshot_file_was_deleted_by_hand_starts_and_builds_it_again(
    tmp_path: Path,
) -> None:
    """A `.snap` deleted by hand while its `.json` stayed (a disk cleaned of its largest
    files): at the next start the hub drops the `.json` as well and builds the snapshot
    again, rather than failing to start on the file it was about to delete."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        wait_for(lambda: built(hub, 1), timeout=30)
        hub.stop()
        full_file(hub, 1).unlink()
        hub.restart()
        wait_for(lambda: built(hub, 1), timeout=30)
        assert built(hub, 1) and full_file(hub, 1).is_file()
    finally:
        hub.stop()
