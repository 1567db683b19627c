"""Review 42, left42: two leftovers of this session's helpers, each checked with the real
parts (real `tillpoint` processes, real SQLite files, a real gRPC hub on loopback).

1. The till's reading of a JSON Lines snapshot had no line length bound: `snapshot load
   FILE` (the parallel build's child processes), `snapshot load -` or a pipe, and a
   signed bundle's JSON Lines payload read each line whole, so one 300 MB line grew the
   process by GBs. `hub import` refuses a line past 64 MiB naming it (polish42); the
   till now does the same (`snapshot_stream.LINE_MAX_BYTES`, the same 64 MiB): "snapshot
   line N: longer than 64 MiB (one row a line: is the file JSON Lines?)", exit 2, the
   cache as it was (CONTRACT §3: bad input leaves the cache unchanged). The real bound
   is used where a child process reads (the file's build); the edge (a line of exactly
   the bound read, one byte more refused) with the bound made 1,000 bytes in this process.
2. `SyncService.stop` waited up to `STOP_WAIT_S` (10 s) for its threads with a hub call
   on its way, and closed the hub link (which cancels the call) only then: a real `run`
   whose hub stored a push and never answered stopped in 5.2 s (10.2-10.4 s with a
   minute's `hub.call_timeout_ms`, the sync thread left running). The link is now
   closed first (0.2-0.3 s); the push stays owed and is taken once, a download resumes,
   and the cancel is no word about the hub (no OFFLINE, no error recorded).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent import cache_build, limits, snapshot_stream
from tillpoint.agent.errors import InputError, SnapshotRefused
from tillpoint.agent.service import Agent

from .conftest import CLI, snapshot

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
MIB64 = 64 << 20
TOO_LONG = "longer than 64 MiB (one row a line: is the file JSON Lines?)"


def jsonl_lines(snap: dict[str, Any]) -> list[bytes]:
    """A snapshot document as JSON Lines: its header, then each section's line and rows."""
    snap = dict(snap)
    rows = {k: snap.pop(k, []) for k in ("categories", "products", "customers", "cards", "offers")}
    lines = [json.dumps({"format": "tillpoint.snapshot/jsonl", **snap}, ensure_ascii=False)]
    for section, items in rows.items():
        lines.append(json.dumps({"section": section}))
        lines += [json.dumps(item, ensure_ascii=False) for item in items]
    return [line.encode() + b"\n" for line in lines]


def product_line(size: int, sku: str = "4609999000017") -> bytes:
    """A product row of exactly `size` bytes before its newline (its name pads it)."""
    head = b'{"sku": "' + sku.encode() + b'", "category": "dairy", "name": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def with_line_in_products(snap: dict[str, Any], line: bytes) -> tuple[list[bytes], int]:
    """The snapshot's lines with `line` (and a newline) added as the products' second
    row; and its line number."""
    lines = jsonl_lines(snap)
    at = lines.index(b'{"section": "products"}\n') + 2
    lines.insert(at, line + b"\n")
    return lines, at + 1


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    return {**clean, "TILLPOINT_DEVICE_ID": "till-1"}


def tillpoint(data: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TILLPOINT, "--data-dir", str(data), *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kw,
    )


def cache_version(data: Path) -> int:
    done = tillpoint(data, "status", "--json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["cacheVersion"])


def write_lines(path: Path, lines: list[bytes]) -> Path:
    with path.open("wb") as f:
        f.writelines(lines)
    return path


# ------------------------------------------------ 1. the real bound, real processes


@pytest.fixture
def long_row_file(tmp_path: Path) -> tuple[Path, int]:
    """A full snapshot of version 2 whose products' second row is one byte past 64 MiB
    (the file is then large enough for the parallel build's workers); its line number."""
    lines, at = with_line_in_products(snapshot(version=2), product_line(MIB64 + 1))
    return write_lines(tmp_path / "v2.jsonl", lines), at


@pytest.fixture
def till_at_1(tmp_path: Path) -> Path:
    """A till's data directory holding the snapshot of version 1 (JSON Lines, loaded)."""
    data = tmp_path / "data"
    v1 = write_lines(tmp_path / "v1.jsonl", jsonl_lines(snapshot()))
    done = tillpoint(data, "snapshot", "load", str(v1))
    assert done.returncode == 0, done.stderr
    return data


def test_s3_a_file_with_a_line_past_the_bound_is_refused_naming_it(
    till_at_1: Path, long_row_file: tuple[Path, int]
) -> None:
    """`snapshot load FILE` of a regular file (built by child processes, in parallel at
    this size): exit 2, one line naming the line and the bound, the cache at version 1.
    Before, the build's scan carried the line from block to block and a worker read it
    whole (and validated it: the product loaded, a 64 MiB name)."""
    path, at = long_row_file
    done = tillpoint(till_at_1, "snapshot", "load", str(path))
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr == f"tillpoint: snapshot line {at}: {TOO_LONG}\n", done.stderr
    assert cache_version(till_at_1) == 1


def test_s3_a_pipe_with_a_line_past_the_bound_is_refused_naming_it(
    till_at_1: Path, long_row_file: tuple[Path, int]
) -> None:
    """`cat FILE | tillpoint snapshot load -` (the stream, applied row by row as read):
    the same line, exit 2, the cache at version 1 (the apply's transaction rolled back)."""
    path, at = long_row_file
    done = subprocess.run(
        f'cat "{path}" | "{TILLPOINT}" --data-dir "{till_at_1}" snapshot load -',
        shell=True,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr == f"tillpoint: snapshot line {at}: {TOO_LONG}\n", done.stderr
    assert cache_version(till_at_1) == 1


def test_s3_a_line_of_exactly_the_bound_is_read(till_at_1: Path, tmp_path: Path) -> None:
    """The bound's edge at its real size, through a real pipe: a row of 64 MiB and its
    newline is a row like any other (loaded; its name is 64 MiB long)."""
    lines, _ = with_line_in_products(snapshot(version=2), product_line(MIB64))
    path = write_lines(tmp_path / "edge.jsonl", lines)
    with path.open("rb") as f:
        done = tillpoint(till_at_1, "snapshot", "load", "-", stdin=f)
    assert done.returncode == 0, done.stderr
    assert cache_version(till_at_1) == 2


def peak_rss_mib(command: list[str], stdin_path: Path | None = None) -> tuple[int, float]:
    """`command`'s exit code and the largest resident size of any of its processes, MiB
    (measured by a child Python that runs it: its children's high-water mark)."""
    probe = (
        "import resource, subprocess, sys\n"
        "stdin = open(sys.argv[1], 'rb') if sys.argv[1] else None\n"
        "done = subprocess.run(sys.argv[2:], stdin=stdin, capture_output=True)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(stdin_path or ""), *command],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("way", ["file", "stdin"])
def test_s3_a_300_mb_line_costs_no_more_than_the_bound(
    till_at_1: Path, tmp_path: Path, way: str
) -> None:
    """The leftover's case: one 300 MB line (a producer that lost its newlines). Refused,
    and no process of the load grew past ~3 times the bound (the scan's block and carry,
    the pipe's line): before, the build's coordinator held ~620 MB and its worker GBs."""
    lines, _ = with_line_in_products(snapshot(version=2), product_line(300 << 20))
    path = write_lines(tmp_path / "v2.jsonl", lines)
    load = [TILLPOINT, "--data-dir", str(till_at_1), "snapshot", "load"]
    if way == "file":
        code, peak = peak_rss_mib([*load, str(path)])
    else:
        code, peak = peak_rss_mib([*load, "-"], path)
    assert code == 2
    assert peak < 3 * 64 + 120, f"{peak:.0f} MiB"
    assert cache_version(till_at_1) == 1


# ------------------------------------------------ 1. the edge, the bound made 1,000 bytes


EDGE = 1000  # the bound in this process (the test snapshot's longest line: 515 bytes)


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch) -> int:
    """The bound made `EDGE` bytes in this process (the readers look it up as they read)."""
    monkeypatch.setattr(limits, "LINE_MAX_BYTES", EDGE)
    return EDGE


@pytest.mark.parametrize("text", [False, True])
def test_stream_lines_at_the_edge(bound: int, text: bool) -> None:
    """A line of `EDGE` bytes (characters, from a text stream) and its newline is read;
    one byte more is refused by its number, whether or not a newline follows it (a last line
    without one too); a first line already read in part is finished within the bound."""

    def stream(*lines: bytes) -> Any:
        raw = b"".join(lines)
        return io.StringIO(raw.decode()) if text else io.BytesIO(raw)

    def read(*lines: bytes, first: int = 0) -> list[Any]:
        f = stream(*lines)
        head = f.read(first) if first else None
        return list(snapshot_stream.stream_lines(f, head))

    ok = b"x" * EDGE + b"\n"
    long = b"x" * (EDGE + 1)
    assert len(read(ok, ok, b"x" * EDGE)) == 3
    assert len(read(ok, ok, first=10)) == 2
    for lines, at in (((ok, long + b"\n", ok), 2), ((ok, ok, long), 3), ((long + b"\n", ok), 1)):
        for first in (0, 10):
            with pytest.raises(InputError, match=f"^snapshot line {at}: longer than 0 MiB "):
                read(*lines, first=first)


def test_a_delta_from_a_stream_leaves_the_cache_as_it_was(bound: int, tmp_path: Path) -> None:
    """`Agent.load_snapshot_lines` of a stream (a delta read from a file, a signed bundle's
    payload): the line past the bound is refused after the rows before it were applied in
    the apply's transaction, and the cache is as it was (CONTRACT §3)."""
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        before = cache_mod.dump(agent._cache)
        delta = snapshot(version=2, baseVersion=1, offers=[], customers=[], cards=[])
        lines, at = with_line_in_products(delta, product_line(EDGE + 1))
        with pytest.raises(InputError, match=f"^snapshot line {at}: longer than"):
            agent.load_snapshot_lines(io.BytesIO(b"".join(lines)))
        assert cache_mod.dump(agent._cache) == before
        lines[at - 1] = product_line(EDGE) + b"\n"  # the edge: loaded
        assert agent.load_snapshot_lines(io.BytesIO(b"".join(lines))).version == 2
        assert cache_mod.dump(agent._cache) != before
    finally:
        agent.close()


def test_a_header_past_the_bound_is_refused_before_the_build(bound: int, tmp_path: Path) -> None:
    """`Agent.load_snapshot_file` (a regular file) reads the header in its own process:
    one past the bound is refused as line 1 there, before any child process starts."""
    agent = Agent(tmp_path / "data", "till-1")
    try:
        lines = jsonl_lines(snapshot(version=2))
        lines[0] = lines[0][:-2] + b', "pad": "' + b"x" * EDGE + b'"}\n'
        path = write_lines(tmp_path / "v2.jsonl", lines)
        with pytest.raises(InputError, match=r"^snapshot line 1: longer than"):
            agent.load_snapshot_file(path)
        assert agent.status().cache_version == 0
    finally:
        agent.close()


def test_the_builds_scan_numbers_the_line_across_its_blocks(bound: int, tmp_path: Path) -> None:
    """The build's scan for section lines (`cache_build._sections`), read in blocks of 70
    bytes here: a line past the bound is refused with the file's number of it, wherever
    it starts and ends among the blocks, a line of exactly the bound is not."""
    ok = b"y" * EDGE + b"\n"
    for head in (0, 1, 3, 6):
        for long in (b"x" * (EDGE + 1) + b"\n", b"x" * (EDGE + 1), b"x" * 3 * EDGE + b"\n"):
            data = b"a\n" * head + ok + long + ok
            path = tmp_path / "scan"
            path.write_bytes(b"pre\n" + data)
            refused = pytest.raises(InputError, match=rf"^snapshot line {head + 6}: longer")
            with path.open("rb", buffering=0) as fh, refused:
                cache_build._sections(fh, 4, 4 + len(data), block=70, first_line=5)
        path.write_bytes(b"a\n" * head + ok + b'{"section": "x"}\n' + ok)
        with path.open("rb", buffering=0) as fh:
            assert cache_build._sections(fh, 0, path.stat().st_size, block=70) == [
                2 * head + EDGE + 1
            ]


def test_a_builds_worker_refuses_a_line_past_the_bound_by_the_files_number(
    bound: int, tmp_path: Path
) -> None:
    """A worker (`cache_build.work`, run here in this process) given a chunk from the
    middle of a section: its line past the bound is refused with the file's line number
    (a worker counts from its chunk), not read whole."""
    Agent(tmp_path / "data", "till-1").close()  # the data directory and its phone key
    lines, at = with_line_in_products(snapshot(version=2), product_line(EDGE + 1))
    path = write_lines(tmp_path / "v2.jsonl", lines)
    start = sum(map(len, lines[: at - 2]))  # the chunk: from the products' first row
    end = start + len(lines[at - 2]) + len(lines[at - 1]) + len(lines[at])
    with pytest.raises(InputError, match=f"^snapshot line {at}: longer than"):
        cache_build.work(
            tmp_path / "data", path, 0, [("products", start, end)], tmp_path / "part", set()
        )


def _bundle_file(path: Path, lines: list[bytes]) -> Path:
    """A signed bundle (`hub export`'s file) of the payload `lines`, signed by a key of
    its own (a till without a hub checks the declared size and SHA-256 only)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from tillpoint.sync import signing

    payload = b"".join(lines)
    key = ed25519.Ed25519PrivateKey.generate()
    bundle = signing.SignedSnapshot(2, 0, "", "", payload, signing.sign(key, payload))
    path.write_text(json.dumps(bundle.to_file()), encoding="utf-8")
    return path


def test_a_signed_bundles_json_lines_payload_is_bounded(
    bound: int, cli: CLI, tmp_path: Path
) -> None:
    """`snapshot load BUNDLE` at a till without a hub: a payload row past the bound is
    refused naming its line (the payload read as a stream), and a payload header past it
    as the refusal of a bundle ("snapshot refused: snapshot line 1: ..."), exit 2, one
    line, the cache at version 1."""
    assert cli("snapshot", "load", snapshot()).code == 0
    lines, at = with_line_in_products(snapshot(version=2), product_line(EDGE + 1))
    result = cli("snapshot", "load", _bundle_file(tmp_path / "row.json", lines))
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith(f"tillpoint: snapshot line {at}: longer than 0 MiB"), result
    lines = jsonl_lines(snapshot(version=2))
    lines[0] = lines[0][:-2] + b', "pad": "' + b"x" * EDGE + b'"}\n'
    result = cli("snapshot", "load", _bundle_file(tmp_path / "head.json", lines))
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith("tillpoint: snapshot refused: snapshot line 1: longer"), result
    assert cli("status", "--json").json()["cacheVersion"] == 1


def test_a_pulled_payloads_header_past_the_bound_is_refused(bound: int, tmp_path: Path) -> None:
    """A pulled payload on disk (`signing.verify_file`): its JSON Lines header is read
    within the bound and one past it is refused as a bad snapshot, not read whole."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from tillpoint.sync import signing

    lines = jsonl_lines(snapshot(version=2))
    lines[0] = lines[0][:-2] + b', "pad": "' + b"x" * EDGE + b'"}\n'
    path = write_lines(tmp_path / "landed", lines)
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(SnapshotRefused, match=r"^snapshot refused: snapshot line 1: longer"):
        signing.verify_file(
            public_key=key.public_key(),
            path=path,
            signature=signing.sign(key, path.read_bytes()),
            current_version=1,
            now=datetime.now(UTC),
        )


# ------------------------------------------------ 2. `SyncService.stop` and a silent hub
#
# `SyncService.stop` waited up to `STOP_WAIT_S` (10 s) for its threads with the hub call
# on its way still running, and only then closed the hub link, which cancels the call:
# with a hub that took a push and never answered (a hung hub, a link that dropped the
# answer), `tillpoint run`'s stop waited the call's deadline, or all of `STOP_WAIT_S`
# when the call's deadline is longer (`hub.call_timeout_ms`), and then left the sync
# thread and its ledger connection running past the stop (ledger42).


def _run_till(tmp_path: Path, hub: Any, http: int, call_timeout_ms: int) -> subprocess.Popen[str]:
    config = tmp_path / "till.toml"
    config.write_text(
        f'device_id = "till-1"\ndata_dir = "{tmp_path / "till"}"\n'
        f'[hub]\naddress = "{hub.address}"\ncall_timeout_ms = {call_timeout_ms}\n'
        '[server]\nlisten = "127.0.0.1:0"\n[metrics]\nenabled = false\n'
        f'[http]\nlisten = "127.0.0.1:{http}"\n',
        encoding="utf-8",
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    return subprocess.Popen(
        [TILLPOINT, "--config", str(config), "run"],
        env=clean,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_with_a_push_unanswered(tmp_path: Path, call_timeout_ms: int) -> tuple[float, str]:
    """A real `tillpoint run` of an enrolled till sells once; its hub stores the push and
    never answers it; SIGTERM. The stop's time and the run's log (stderr)."""
    import signal
    import threading
    import time

    from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data

    from .conftest import free_port
    from .stopclock import stop_seconds
    from .test_review26_ops26 import _post, _wait_healthy

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    pushed, answer = threading.Event(), threading.Event()

    def silent(where: str) -> None:
        if where == "push.committed":
            pushed.set()
            answer.wait(120)  # took the batch; the answer never comes (in time)

    try:
        enrolled = tillpoint(tmp_path / "till", "status", "--json")  # (makes the directory)
        assert enrolled.returncode == 0, enrolled.stderr
        hub.enroll("till-1", tmp_path / "till")
        hub.server.servicer.failpoint = silent
        http = free_port()
        proc = _run_till(tmp_path, hub, http, call_timeout_ms)
        try:
            _wait_healthy(http, proc)
            deadline = time.monotonic() + 60  # its first pull, then a sale to push
            while cache_version(tmp_path / "till") != 1:
                assert time.monotonic() < deadline, "the till never pulled"
                time.sleep(0.1)
            sold = _post(http, "checkout", receipt("r-1", "2770000000017"))
            assert sold.get("mode") == "ONLINE", sold
            assert pushed.wait(60), "the push never reached the hub"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
            # timed on the run's own clock, its log (the test's, from its SIGTERM to the
            # end, counted the machine's load too; review 45, timing45, as flake44's stops)
            took = stop_seconds(err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert proc.returncode == 0, err[-3000:]
        # the push the hub stored and never answered: still in the outbox, sent again by
        # the next contact and taken by the hub as the duplicate it is (nothing doubled)
        status = json.loads(tillpoint(tmp_path / "till", "status", "--json").stdout)
        assert status["outboxDepth"] == 1, status
        hub.server.servicer.failpoint = None
        answer.set()
        again = tillpoint(tmp_path / "till", "sync", "now", "--json")
        assert again.returncode == 0, again.stderr
        status = json.loads(tillpoint(tmp_path / "till", "status", "--json").stdout)
        assert status["outboxDepth"] == 0, status
        assert len(hub.server.store.transactions("till-1", 0, 100)) == 1
        return took, err
    finally:
        answer.set()
        hub.server.servicer.failpoint = None
        hub.stop()


def test_s12_a_stop_cancels_the_hub_call_on_its_way(tmp_path: Path) -> None:
    """CONTRACT §12's stop with a hub that took a push and never answers, its call's
    deadline a minute (`hub.call_timeout_ms`): the stop closes the hub link at once, the
    call is cancelled, the sync thread ends and the stop closes its connection itself.
    Before, the stop waited all of `STOP_WAIT_S` (10 s; 10.2-10.4 s for the stop) and
    logged that the sync thread was still running. The push stays in the outbox and is
    taken once (nothing lost, nothing doubled); the log says nothing of a cancel."""
    from tillpoint.sync.service import STOP_WAIT_S

    took, err = _stop_with_a_push_unanswered(tmp_path, 60_000)
    assert "still running" not in err, err[-3000:]
    assert '"level": "error"' not in err and "Traceback" not in err, err[-3000:]
    assert "not answering" not in err, err[-3000:]  # a cancel at the stop says nothing of the hub
    assert took < STOP_WAIT_S, f"the stop took {took:.1f} s"


def test_s12_a_stop_mid_download_keeps_what_came_and_the_next_pull_resumes(
    tmp_path: Path,
) -> None:
    """The same stop during a snapshot's download whose hub went quiet mid-file (its
    stream's silence bound a minute): the stream is cancelled at once, the stop closes
    the sync thread's connection itself (the thread has ended), the chunks that came are
    kept, and the next pull resumes after them and applies the snapshot; the cancel is
    recorded as no pull error."""
    import threading
    from dataclasses import replace

    from tillpoint.agent.ledger import open_ledger
    from tillpoint.sync.client import HubLink
    from tillpoint.sync.hub_server import HubConfig
    from tillpoint.sync.loopback import FAST, LoopbackHub
    from tillpoint.sync.pull import Puller, cache_version
    from tillpoint.sync.service import SyncService
    from tillpoint.sync.state import sync_status

    from .test_sync_snapshots import big_master_data

    config = HubConfig(chunk_size=1024, heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=0)
    hub = LoopbackHub(tmp_path / "hub", config, data=big_master_data())
    chunks: list[int] = []
    stalled, answer = threading.Event(), threading.Event()

    def quiet_after_three(where: str) -> None:
        if where == "pull.chunk":
            chunks.append(1)
            if len(chunks) == 4:
                stalled.set()
                answer.wait(120)

    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        hub.server.servicer.failpoint = quiet_after_three
        enrollment = till.link.enrollment
        service = SyncService(
            till.agent,
            HubLink(hub.address, enrollment),
            enrollment,
            replace(FAST, call_timeout_s=60.0),
        )
        service.start()
        assert stalled.wait(60), "the download never began"
        service.stop()
        assert not service._sync_thread_running()
        assert service.pusher._conn is None  # closed by the stop, the thread having ended
        assert cache_version(till.data_dir) == 0
        conn = open_ledger(till.data_dir)
        try:
            assert sync_status(conn)["lastError"] == "", sync_status(conn)
        finally:
            conn.close()
        hub.server.servicer.failpoint = None
        answer.set()
        result = Puller(till.agent, till.link, enrollment, call_timeout_s=5.0).pull()
        assert (result.status, result.resumed_from) == ("APPLIED", 3 * 1024), result
    finally:
        answer.set()
        hub.server.servicer.failpoint = None
        till.stop()
        hub.stop()
