"""Review 60 (mut60d): the end of review 59's mutation testing of `sync/cli.py`: the rest
of the till's `sync now` (`_sync_now_by`), `hub import` (`_hub_import`), `hub serve`
(`_hub_serve`), `_needs_action` and `_emit`, which reviews 59b and 59d left unrun.

The rules the surviving mutants showed untested, pinned on real parts: a real hub over
loopback mTLS on a random 127.0.0.1 port whose snapshot stream is cut where a test says
(the hub's own servicer with a chunk hook, as a broken link would cut it: review 51's
`RogueServicer`), real `tillpoint hub serve` processes with their port files and logs,
real SQLite ledgers and hub stores, a throwaway PostgreSQL, `tillpoint.agent.cli.main` as
the CLI runs it (`tests.test_sync_cli.run`). No product fault was found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.v1 import tillpoint_pb2 as pb

from tests.test_review59_mut59b import publications
from tests.test_sync_cli import run
from tests.test_sync_snapshots import RogueServicer, serve_rogue_hub


@pytest.fixture()
def rogue_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    """A served hub of 1 KiB chunks whose servicer may cut its snapshot stream (review
    51's fixture)."""
    yield from serve_rogue_hub(tmp_path / "hub")


def _cut_the_first_streams(hub: LoopbackHub, cuts: int) -> None:
    """The hub's first `cuts` snapshot streams end after their first chunk (a link that
    breaks mid-stream); the next ones are whole."""
    started = [0]

    def hook(i: int, chunk: pb.SnapshotChunk) -> pb.SnapshotChunk | None:
        if i == 0:
            started[0] += 1
        return None if i == 1 and started[0] <= cuts else chunk

    servicer = hub.server.servicer
    assert isinstance(servicer, RogueServicer)
    servicer.chunk_hook = hook


@pytest.mark.parametrize("cuts", [1, 2])
def test_sync_now_retries_a_broken_snapshot_stream_twice_and_resumes_it(
    rogue_hub: LoopbackHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cuts: int,
) -> None:
    """A snapshot stream broken once or twice in one `sync now` is resumed in the same
    command (three tries): the snapshot applied, resumed from what arrived, exit 0."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    till = tmp_path / "till"
    rogue_hub.enroll("till-1", till)
    _cut_the_first_streams(rogue_hub, cuts)
    code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
    assert code == 0, err
    assert doc["pull"]["status"] == "APPLIED", doc
    assert doc["pull"]["resumedFrom"] == cuts * 1024, doc


def test_sync_now_with_the_snapshot_stream_broken_three_times_says_so_and_exits_1(
    rogue_hub: LoopbackHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Broken three times: the third break is the command's one line (where the download
    stands, that the next pull resumes it), exit 1 for a script to retry; the next
    `sync now` resumes at the 3 KiB kept and applies it."""
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    till = tmp_path / "till"
    rogue_hub.enroll("till-1", till)
    _cut_the_first_streams(rogue_hub, 3)
    code, out, err = run(capsys, "sync", "now", "--data-dir", str(till))
    assert (code, out) == (1, ""), err
    assert err.count("\n") == 1, err
    assert err.startswith("tillpoint: the snapshot stream ended at byte 3072 of "), err
    assert err.endswith("; will resume\n"), err
    code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
    assert code == 0, err
    assert (doc["pull"]["status"], doc["pull"]["resumedFrom"]) == ("APPLIED", 3072), doc


def test_sync_now_with_the_hub_failing_mid_stream_says_the_hubs_error_not_its_deadline(
    rogue_hub: LoopbackHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hub's stream failing with an error of its own (here its servicer raising after
    the first chunk: gRPC's UNKNOWN) is the hub's line, exit 1, and the till recorded
    OFFLINE, not "gave up at its deadline" with a minute of --timeout left."""
    from tests.test_review36_rev36c import _recorded_mode

    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    till = tmp_path / "till"
    rogue_hub.enroll("till-1", till)

    def fail(i: int, chunk: pb.SnapshotChunk) -> pb.SnapshotChunk:
        if i == 1:
            raise RuntimeError("the hub's disk failed")
        return chunk

    servicer = rogue_hub.server.servicer
    assert isinstance(servicer, RogueServicer)
    servicer.chunk_hook = fail
    code, out, err = run(capsys, "sync", "now", "--data-dir", str(till))
    assert (code, out) == (1, ""), err
    assert err.count("\n") == 1 and "the hub's disk failed" in err, err
    assert "gave up" not in err and "deadline" not in err, err
    assert _recorded_mode(till) == "OFFLINE"


# ---------------------------------------------------------------- hub import


def test_hub_import_says_each_kind_it_imported_and_no_rows_of_an_empty_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The human line names each kind with its count (sorted), the removals, the draft and,
    with --publish, the version; a file of no rows says "imported no rows"."""
    from tests.test_review59_mut59b import _catalogue

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    h = ("--hub-dir", str(tmp_path / "hub"))
    code, out, err = run(capsys, "hub", "import", str(_catalogue(tmp_path)), *h, "--publish")
    assert (code, err) == (0, ""), err
    assert out == (
        "imported 2 card, 2 category, 2 customer, 3 product, 1 program; 0 removal(s);"
        " 10 row(s) to publish; published version 1\n"
    )
    empty = tmp_path / "empty.json"
    empty.write_text("{}", encoding="utf-8")
    code, out, err = run(capsys, "hub", "import", str(empty), *h)
    assert (code, out, err) == (0, "imported no rows; 0 removal(s); 0 row(s) to publish\n", "")


def test_hub_import_publish_into_a_new_postgresql_database_migrates_it_first(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub import --publish` on a PostgreSQL database no `hub migrate` has touched brings
    its schema up first (as `hub serve` does), imports and publishes version 1."""
    from tests.test_review59_mut59b import _catalogue

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub = ["--store", pg_url, "--hub-dir", str(tmp_path / "hub")]
    code, doc, err = run(
        capsys, "hub", "import", str(_catalogue(tmp_path)), *hub, "--publish", "--json"
    )
    assert code == 0, err
    assert (doc["rows"], doc["publishedVersion"]) == (10, 1), doc


# ---------------------------------------------------------------- hub serve


@contextlib.contextmanager
def _hub_serving(tmp_path: Path, hub_dir: Path, *flags: str) -> Iterator[tuple[int, Path]]:
    """`tillpoint hub serve --listen 127.0.0.1:0 --port-file F FLAGS` as a real process,
    its log in a file: (the port, the log) once F is written, the port already answering;
    then a SIGTERM ends it with exit 0 and F gone. A stale F (a port of a hub killed
    before) is there when it starts."""
    from tillpoint.sync.loopback import wait_for

    port_file, log = tmp_path / "hub.port", tmp_path / "hub.log"
    port_file.write_text("1\n", encoding="ascii")  # a dead hub's
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    argv = ["hub", "serve", "--hub-dir", str(hub_dir), "--listen", "127.0.0.1:0"]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("tillpoint")),
                *argv,
                "--port-file",
                str(port_file),
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        wait_for(lambda: _read_port(port_file) > 1 or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
        port = _read_port(port_file)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # the file is written once the hub listens
        yield port, log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert not port_file.exists()  # no port once stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _read_port(port_file: Path) -> int:
    try:
        return int(port_file.read_text(encoding="ascii") or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_hub_serve_publishes_its_balance_refresh_valid_ttl_hours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub serve --ttl-hours 2 --publish-every 1`: a version past half its validity
    (published for 0.72 s) is refreshed by a version valid 2 hours, not 2 seconds or 0:
    the tills' snapshots would expire under them."""
    from tillpoint.sync.loopback import wait_for

    from tests.test_review59_mut59b import _catalogue

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub_dir = tmp_path / "hub"
    imp = ["hub", "import", str(_catalogue(tmp_path)), "--hub-dir", str(hub_dir)]
    assert run(capsys, *imp, "--publish", "--ttl-hours", "0.0002")[0] == 0
    with _hub_serving(tmp_path, hub_dir, "--ttl-hours", "2", "--publish-every", "1"):
        wait_for(lambda: len(publications(hub_dir)) >= 2, timeout=60)
    versions = publications(hub_dir)
    assert versions[0] == (1, timedelta(seconds=0.72)), versions
    assert versions[1] == (2, timedelta(hours=2)), versions


def test_hub_serve_prunes_the_versions_older_than_keep_deltas_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub serve --keep-deltas-days 1e-5` (0.864 s): the versions before the one newest
    0.864 s ago are pruned (at the start, or once version 3 is published 1.5 s later: its
    log says "versions before N pruned"), not kept for ever as with a retention of 0."""
    import time

    from tillpoint.sync.loopback import wait_for

    from tests.test_review59_mut59b import _catalogue

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub_dir = tmp_path / "hub"
    h = ("--hub-dir", str(hub_dir))
    assert run(capsys, "hub", "import", str(_catalogue(tmp_path)), *h, "--publish")[0] == 0
    assert run(capsys, "hub", "publish", *h)[0] == 0
    with _hub_serving(tmp_path, hub_dir, "--keep-deltas-days", "1e-5") as (_, log):
        time.sleep(1.5)  # version 2 older than the retention: a lower bound, not a verdict
        assert run(capsys, "hub", "publish", *h)[0] == 0
        wait_for(lambda: "pruned" in log.read_text(), timeout=60)
    assert (
        "versions before 2 pruned" in log.read_text()
        or "versions before 3 pruned" in log.read_text()
    )


def test_sync_now_says_why_the_hub_set_a_transaction_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set-aside line gives each transaction's seq, outcome and the hub's reason in
    brackets (what the support engineer acts on), exit 1."""
    from tests.test_review59_mut59b import _hub_with_a_till, _sell_offline
    from tests.test_review59_mut59d import _hub_holds_another_transaction

    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        now = ["sync", "now", "--data-dir", str(till)]
        assert run(capsys, *now)[0] == 0
        _hub_holds_another_transaction(hub, "r-1")
        _sell_offline(till, "r-1")
        code, out, err = run(capsys, *now)
        assert code == 1, err
        assert out.startswith("pushed 0 transaction(s), 1 SET ASIDE by the hub, 0 waiting; ")
        assert err == (
            "tillpoint: the hub set aside 1 transaction(s) and did not store them: seq 1"
            " CONFLICT (receipt r-1 is already stored as seq 101 of till-1 with another"
            " request); they are kept in sync_set_aside in ledger.db\n"
        )
    finally:
        hub.stop()
