"""Review 40 (rev40f): a second look at spec40b's two changes.

- §9, `sync/pull.py`: a refused bundle is remembered by its signature too, so that the
  same payload signed right (the hub's own key put back) is taken. A hub that keeps
  serving the same payload under a *bad* signature that changes at every poll (a broken
  signer, a key regenerated at each start) must not make the till download it again at
  every poll: the signature covers only the manifest (size and SHA-256, both in the
  header), so the till checks a new signature against the header before downloading a
  payload it refused before. The refusal is logged once at ERROR, then at DEBUG; a
  refusal an older release recorded (no `refused_signature`) is checked by the header
  too, and a right signature is still downloaded and taken.
- §10, `agent/cli.py`: `snapshot load` of a file that is not a regular file: a character
  device (`/dev/zero`, `/dev/urandom`) is refused from its first bytes without reading
  it whole; a directory and a socket are one line, exit 2; a closed standard input named
  as `/dev/stdin` is one line, not a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_review40_spec40b import drop_built_snapshots, other_snapshot_key, run_cli

EXE = str(Path(sys.executable).with_name("tillpoint"))


def test_s9_a_bad_signature_that_changes_at_every_poll_is_not_downloaded_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 2 signed by a new wrong key at every hub start (a new signature each
    time, the same payload): downloaded once, then refused from its header without a
    byte of payload, logged at ERROR once; the hub's own key put back: taken."""
    from tillpoint.sync import state as sync_state
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data
    from tillpoint.sync.pull import Puller, cache_version

    from tests.conftest import enrolled_till

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        till = enrolled_till(hub, tmp_path / "till", "till-1")
        pull = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5)
        hub.stop()
        keys = {p.name: p.read_bytes() for p in (hub.root / "keys").glob("snapshot.*")}
        other_snapshot_key(hub.root)
        drop_built_snapshots(hub.root)
        hub.restart()
        assert hub.publish() == 2
        received: list[int] = []
        with caplog.at_level(logging.DEBUG, logger="tillpoint"):
            first = pull.pull(progress=lambda got, total: received.append(got))
            assert first.status == "REFUSED" and "signature" in first.message, first
            assert received, "the first refusal is of a downloaded bundle"
            signatures = set()
            for _ in range(3):
                hub.stop()
                other_snapshot_key(hub.root)  # the same payload, another wrong signature
                drop_built_snapshots(hub.root)
                hub.restart()
                received.clear()
                again = pull.pull(progress=lambda got, total: received.append(got))
                assert again.status == "REFUSED" and again.version == 2, again
                assert "signature" in again.message, again
                assert received == [], "downloaded again for a new bad signature"
                signatures.add(again.signature)
            assert len(signatures) == 3
        said = [
            r
            for r in caplog.records
            if "keeps its current version" in r.getMessage() and r.levelno >= logging.ERROR
        ]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert cache_version(till.data_dir) == 1
        # An older release's record (no refused_signature): checked by its header too.
        conn = sync_state.open_ledger(till.data_dir)
        try:
            sync_state.put(conn, {"refused_signature": None})
        finally:
            conn.close()
        received.clear()
        older = pull.pull(progress=lambda got, total: received.append(got))
        assert older.status == "REFUSED" and received == [], older
        # The hub's own key back: the same payload signed right is downloaded and taken.
        hub.stop()
        for name, blob in keys.items():
            (hub.root / "keys" / name).write_bytes(blob)
        drop_built_snapshots(hub.root)
        hub.restart()
        taken = pull.pull()
        assert taken.status == "APPLIED" and taken.version == 2, taken
        assert cache_version(till.data_dir) == 2
        till.stop()
    finally:
        hub.stop()


def test_s10_a_document_through_a_pipe_without_end_is_refused_at_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`snapshot load FIFO` (or `/dev/stdin`, `-`) fed `{"a":` and then text without end
    (`yes`, a stuck producer): until review 40 (rev40f) the rest was read whole into
    memory, 1.7 GB in 4 s, until the machine ran out. Now a document read from a stream
    is refused once it passes `STREAM_DOCUMENT_MAX_BYTES` (lowered here to 1 MiB), one
    line, exit 2, the cache kept; the writer is left with a broken pipe."""
    import threading

    from tillpoint.agent import cli

    monkeypatch.setattr(cli, "STREAM_DOCUMENT_MAX_BYTES", 1 << 20)
    data = tmp_path / "data"
    fifo = tmp_path / "endless.fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed() -> None:
        try:
            with open(fifo, "wb") as w:
                w.write(b'{"a":\n')
                while not stop.is_set():
                    w.write(b"1\n" * 32768)
        except OSError:
            pass  # the reader went away: a broken pipe

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        result = run_cli(data, "snapshot", "load", str(fifo))
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # a writer still waiting for its reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(30)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "larger than" in lines[0], result.err


@pytest.mark.parametrize("kind", ["directory", "socket", "zero"])
def test_s10_snapshot_load_of_what_is_no_file_is_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    """A directory, a socket, `/dev/zero`: one line, exit 2, as processes; found right
    (pinned: spec40b's new path for non-regular files opens each)."""
    if kind == "directory":
        target = str(tmp_path)
    elif kind == "socket":
        target = str(tmp_path / "s.sock")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(target)
    else:
        target = "/dev/zero"
    run = subprocess.run(
        [EXE, "--data-dir", str(tmp_path / "d"), "snapshot", "load", target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tillpoint: "), run.stderr
    assert "Traceback" not in run.stderr
