"""Review 44 (tidy44): the leftovers of sessions 42-43 in the hub and sync code.

What is checked, and why:

1.-2. A `HubServer` object started again after its stop (`LoopbackHub.stop` then
   `.start`, which many tests do to take the hub away and back) serves as a new one
   would, on SQLite and on PostgreSQL: its watcher sees versions another process
   publishes, its snapshot builder builds their full snapshots, its health answers
   SERVING, and a new till's first pull takes the newest version. Before review 44 the
   stop's flags were never reset (the builder's `_stopping`, the watcher's event, the
   notifier's and the health's), and a PostgreSQL store closed by the stop was used again
   (its pool closed): a restarted hub answered, but built and watched nothing.
3. A thread that outlives several closes of a SQLite hub store holds one connection of
   it, not one a close.
4. What a stop's cancel leaves in a till's log and state (nothing), and what a real
   failure leaves (one line, one error), pinned before the `link.closing` checks were
   looked at.
5. `verify_file`'s first-line read: a JSON Lines header longer than the bound is refused
   in the rows' words; a plain JSON document on one long line is read whole.

Real parts throughout: gRPC servers on 127.0.0.1, SQLite files, the suite's PostgreSQL
cluster (skipped with the reason when PostgreSQL is not installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.sync.hub_server import HubConfig
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for

# ---------------------------------------------------------------- 1.-2. a restart


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The hub's store: "" (hub.db in its directory) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture()
def hub(tmp_path: Path, store_url: str) -> Iterator[LoopbackHub]:
    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.05, publish_every_s=0, full_wait_s=5)
    the_hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), store=store_url)
    try:
        yield the_hub
    finally:
        the_hub.stop()


def _health(channel: Any) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service="tillpoint.v1.Hub"), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@pytest.mark.parametrize("restarts", [1, 2])
def test_a_hub_server_started_again_after_its_stop_serves_as_a_new_one(
    hub: LoopbackHub, tmp_path: Path, restarts: int
) -> None:
    server = hub.server
    wait_for(lambda: server.builder.full_ready(1) is not None, timeout=30)
    for _ in range(restarts):
        hub.stop()
        hub.start()
    assert hub.server is server  # the same object (LoopbackHub.start after its stop)
    # a version another process publishes (`tillpoint hub publish`): the hub's watcher
    # sees it and its builder builds its full snapshot for every till
    other = hub.dir.open_store()
    try:
        version = other.publish(datetime.now(UTC), 7 * 86400.0).version
    finally:
        other.close()
    assert version == 2
    wait_for(lambda: getattr(server.notifier.latest, "version", 0) == 2, timeout=30)
    wait_for(lambda: server.builder.full_ready(2) is not None, timeout=30)
    till = hub.till("till-1", tmp_path / "till-1")
    try:
        assert _health(till.link.channel) == "SERVING"
        wait_for(lambda: till.agent.status().cache_version == 2, timeout=30)
    finally:
        till.stop()


# ---------------------------------------------------------------- 3. one connection a thread


def test_a_thread_that_outlives_several_closes_of_a_sqlite_hub_store_holds_one_connection(
    tmp_path: Path,
) -> None:
    """A real thread reads a SQLite hub store, then again after each of three closes made
    by another thread (a `HubServer` stopped and started three times while a long build
    went on): it holds one connection of the store, the newest; the ones it opened before
    each close are closed by its next read (it held one a close until it ended). Each
    connection is asked directly: SQLite keeps a closed connection's descriptors while
    another of the process holds the file (review 43)."""
    import sqlite3
    import threading

    from tillpoint.sync.hub_sqlite import SqliteHubStore

    store = SqliteHubStore(tmp_path / "hub.db")
    closes = 3
    turn = [threading.Event() for _ in range(closes + 1)]
    read = [threading.Event() for _ in range(closes + 1)]
    ended = threading.Event()
    conns: list[sqlite3.Connection] = []

    def builder() -> None:
        for i in range(closes + 1):
            turn[i].wait(30)
            assert store.latest() is None
            conns.append(store._local.held.conn)
            read[i].set()
        ended.wait(30)

    def is_open(conn: sqlite3.Connection) -> bool:
        try:
            conn.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return False
        return True

    thread = threading.Thread(target=builder, name="hub-snapshots")
    thread.start()
    try:
        for i in range(closes + 1):
            if i:
                store.close()
            turn[i].set()
            assert read[i].wait(30)
        assert len({id(conn) for conn in conns}) == closes + 1  # a new one after each close
        assert [is_open(conn) for conn in conns] == [False] * closes + [True]
    finally:
        ended.set()
        thread.join(30)
        store.close()
    assert not thread.is_alive()


def test_a_threads_snapshot_stream_open_across_a_close_reads_to_its_end(tmp_path: Path) -> None:
    """The same thread, halfway through a snapshot stream (one read transaction) when the
    store is closed, asks for a read of another kind and then reads the stream to its
    end: the stream's connection is kept aside, not closed under it, and let go of at
    the thread's next ask once the stream is over."""
    import sqlite3
    import threading

    from tillpoint.sync.hub_sqlite import SqliteHubStore
    from tillpoint.sync.loopback import import_doc

    store = SqliteHubStore(tmp_path / "hub.db")
    import_doc(store, sample_master_data())
    whole = list(store.snapshot_stream(store.publish(datetime.now(UTC), 86400.0).version, 0))
    store.close()
    began, closed = threading.Event(), threading.Event()
    got: list[Any] = []

    def reader() -> None:
        stream = store.snapshot_stream(1, 0)
        first = [next(stream), next(stream)]
        streaming = store._local.held.conn
        began.set()
        closed.wait(30)
        got.append(store.latest())  # a new connection; the stream's is kept aside
        got.append([*first, *stream])
        store.latest()  # the stream over: its connection let go of now
        with pytest.raises(sqlite3.ProgrammingError):
            streaming.execute("SELECT 1")
        got.append(True)

    thread = threading.Thread(target=reader)
    thread.start()
    assert began.wait(30)
    store.close()
    closed.set()
    thread.join(30)
    store.close()
    assert not thread.is_alive()
    assert got[0] is not None and got[0].version == 1
    assert got[1] == whole and got[2] is True


# ---------------------------------------------------------------- 4. a stop's cancel


def _sync_errors(data_dir: Path) -> dict[str, str | None]:
    import sqlite3

    from tillpoint.sync import state

    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return {key: state.get(conn, f"error:{key}") for key in ("pull", "push")}
    finally:
        conn.close()


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    import logging

    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tillpoint.sync" and r.levelno >= logging.INFO
    ]


def test_a_stops_cancel_of_a_pull_on_its_way_is_neither_logged_nor_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`tillpoint run`'s stop closes the link under a pull on its way (CANCELLED): the
    till logs no failed pull (INFO or above), records no `error:pull` or `error:push`,
    and its link still says the hub answers (no failure, still online). Pinned before
    the five `link.closing` checks were looked at (review 44)."""
    import logging

    config = HubConfig(
        heartbeat_s=1.0,
        watch_interval_s=0.05,
        publish_every_s=0,
        chunk_size=128,
        rate_limit_bytes_s=256,  # the snapshot takes seconds: the stop comes in the middle
    )
    hub = LoopbackHub(tmp_path / "hub", config, data=sample_master_data(), store="")
    try:
        caplog.set_level(logging.DEBUG, logger="tillpoint.sync")
        till = hub.till("till-1", tmp_path / "till-1")
        service = till.service
        assert service is not None
        wait_for(lambda: service.puller.part.exists() and service.puller.part.stat().st_size)
        assert till.link.online
        till.stop()  # the service's stop: the link closed under the stream
        assert service.puller.part.exists()  # cut there, to be resumed (not applied)
        assert not [m for m in _said(caplog) if "fail" in m], _said(caplog)
        assert _sync_errors(till.data_dir) == {"pull": None, "push": None}
        assert till.link.closing and till.link.online and till.link.last_failure is None
    finally:
        hub.stop()


def test_a_failed_pull_and_push_are_logged_once_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other side of the same checks: the hub away (not a stop), a pull and a push
    that fail are each logged once at INFO ("pull failed: …", "push failed, will retry:
    …") and recorded (`error:pull`, `error:push`, "pull: …", "push: …"); the link says
    the hub is away."""
    import json
    import logging

    from tillpoint.agent.results import receipt_from_json
    from tillpoint.sync.loopback import receipt

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), store="")
    till = hub.till("till-1", tmp_path / "till-1")
    try:
        wait_for(lambda: till.agent.status().cache_version == 1, timeout=30)
        hub.stop()
        caplog.set_level(logging.DEBUG, logger="tillpoint.sync")
        till.agent.checkout(receipt_from_json(receipt("r-1", "2770000000017")))
        assert till.service is not None
        till.service.trigger_pull()
        wait_for(lambda: all(_sync_errors(till.data_dir).values()), timeout=30)
        errors = {
            k: json.loads(v or "{}")["message"] for k, v in _sync_errors(till.data_dir).items()
        }
        assert errors["pull"].startswith("pull: "), errors
        assert errors["push"].startswith("push: "), errors
        # both lines (the pull records its error before its line is logged, and the
        # OFFLINE warning says "failed to connect" too: review 46, flake46)
        lines = ("pull failed: ", "push failed, will retry: ")
        wait_for(
            lambda: all(any(m.startswith(s) for m in _said(caplog)) for s in lines), timeout=30
        )
        said = [m for m in _said(caplog) if "failed" in m]
        assert len([m for m in said if m.startswith("pull failed: ")]) == 1, said
        assert len([m for m in said if m.startswith("push failed, will retry: ")]) == 1, said
        assert not till.link.online and till.link.last_failure
    finally:
        till.stop()
        hub.stop()


# ---------------------------------------------------------------- 5. verify_file's first line

EDGE = 1000  # the bound made small in this process (the readers look it up as they read)
_EXPIRES = "2036-11-30T00:00:00Z"  # the version's validity (the fixtures' end)


def _verify_file(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from tillpoint.sync import signing

    key = ed25519.Ed25519PrivateKey.generate()
    return signing.verify_file(
        public_key=key.public_key(),
        path=path,
        signature=signing.sign(key, path.read_bytes()),
        current_version=1,
        now=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    ("pad", "refused"),
    [(0, False), (-1, False), (1, True)],
    ids=["header-at-the-bound-with-its-newline", "one-under", "one-past"],
)
def test_a_pulled_payloads_json_lines_header_is_read_within_the_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pad: int, refused: bool
) -> None:
    """`signing.verify_file` (a pulled payload on disk) reads its first line within
    `LINE_MAX_BYTES`: a JSON Lines header of the bound's length (its newline beyond) is
    taken, one byte longer is refused in the rows' words (`limits.line_too_long(1)`,
    "snapshot refused: " before it), before it is read as JSON. Pinned before the read
    was looked at for `limits.bounded_lines` (review 44)."""
    from tillpoint.agent import limits
    from tillpoint.agent.errors import SnapshotRefused

    from .conftest import snapshot
    from .test_review42_left42 import jsonl_lines, write_lines

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", EDGE)
    lines = jsonl_lines(snapshot(version=2, expiresAt=_EXPIRES))
    head = lines[0][:-2] + b', "pad": "'
    lines[0] = head + b"x" * (EDGE - len(head) - 2 + pad) + b'"}\n'
    assert len(lines[0]) == EDGE + 1 + pad  # with its newline
    path = write_lines(tmp_path / "landed", lines)
    if refused:
        with pytest.raises(SnapshotRefused) as caught:
            _verify_file(path)
        assert str(caught.value) == f"snapshot refused: {limits.line_too_long(1)}"
    else:
        assert _verify_file(path).header["version"] == 2


def test_a_pulled_plain_json_document_on_one_line_past_the_bound_is_read_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A payload that is one JSON document (the format before JSON Lines), on one line
    longer than the bound: not a JSON Lines header, so `verify_file` reads it whole and
    takes it, as `verify` does in memory. Why the read is not `limits.bounded_lines`,
    which refuses any line past the bound (review 44)."""
    import json

    from tillpoint.agent import limits

    from .conftest import snapshot

    monkeypatch.setattr(limits, "LINE_MAX_BYTES", EDGE // 2)
    doc = json.dumps(snapshot(version=2, expiresAt=_EXPIRES), ensure_ascii=False).encode()
    assert len(doc) > EDGE and b"\n" not in doc
    path = tmp_path / "landed"
    path.write_bytes(doc)
    verified = _verify_file(path)
    assert verified.header["version"] == 2 and "products" in verified.header
