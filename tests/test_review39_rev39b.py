"""Review 39 (rev39b): session 38's one-shot CLI changes read again — the answer written
whole (`cli._write_whole`), the cut-off line, the one-shot guard against SIGTERM, SIGINT
and SIGHUP, the one-shot logs (`logs.setup_one_shot`) and GRPC_VERBOSITY — and rev38k's
left suspicions about them (CONTRACT §10, §11). Each test here that names a fault failed
before the fix beside it; the others pin what was tried and found right. Real parts: real
`tillpoint` processes on real SQLite files, real pipes and sockets, real signals.

Tried by hand and found right, not pinned again here (review 38's tests pin most):
a committing answer to a pipe closed at once, after one byte, to `/dev/full`, to a
stdout closed (`>&-`), with stderr the same broken pipe (`2>&1 | head -c 1`: exit 1) or
`/dev/full` too: exit 1 each time, and a retry with the same receiptId answers the sale;
a TCP socket stdout reset by its reader: "the output could not be written: Connection
reset by peer (what the command did stands)", exit 1; SIGPIPE sent at any stage is
ignored (Python's own SIG_IGN), the write's EPIPE says it; a full pipe nobody reads,
then SIGTERM: the committed answer waits for its reader (review 37's decision: only
SIGKILL ends it), and the reader's close then gives the cut-off line, exit 1.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tillpoint.agent import cli

from .conftest import receipt
from .test_review38_rev38b import EXE, _loaded
from .test_review38_rev38f import _big_receipt

# ---------------------------------------- 1. a stdout whose reader stops reading it


def test_a_socket_stdout_its_reader_shut_for_reading_is_the_cut_off_line(tmp_path: Path) -> None:
    """CONTRACT §10 (a stdout whose reader leaves before the end: one line "the output
    was cut off …", exit 1, what the command did stands). A POS whose child's stdout is a
    Unix socket, that reads the start of a large committed answer and then shuts its
    side for reading (Go's `UnixConn.CloseRead`, `shutdown(SHUT_RD)`) without closing
    it: the write failed EPIPE, but a socket its peer shut for reading polls neither
    POLLERR nor POLLHUP, so the broken pipe was judged not stdout's: "tillpoint:
    internal error: BrokenPipeError: [Errno 32] Broken pipe" after a committed sale, as
    if tillpoint had failed. Failed before the fix: the cut-off line, naming a socket;
    the sale stands and its retry answers it."""
    env = _loaded(tmp_path)
    path = _big_receipt(tmp_path, "shut-rd")
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with ours:
        with theirs:
            proc = subprocess.Popen(
                [EXE, "checkout", str(path), "--json"],
                env=env,
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
            )
        ours.settimeout(60)
        assert len(ours.recv(10)) == 10
        ours.shutdown(socket.SHUT_RD)
        err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "tillpoint: the output was cut off: its reader (a socket) closed before the end"
    ), err
    assert err.rstrip("\n").endswith("(what the command did stands)")
    again = subprocess.run(
        [EXE, "checkout", str(path), "--json"], env=env, capture_output=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["receiptId"] == "shut-rd"


def _unread(sock: socket.socket) -> int:
    waiting = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
    return int(waiting[0])


def test_a_non_blocking_socket_stdout_shut_for_reading_while_the_answer_waits_ends_it(
    tmp_path: Path,
) -> None:
    """CONTRACT §10, §11 (a committing one-shot whose reader left: the cut-off line, exit
    1, the sale stands). As above, with the POS's end of the socket non-blocking (Node's
    child stdio) and the answer already waiting for the reader in `poll` (rev38f) when
    the reader shuts its side for reading: poll never wakes for that (Linux marks the
    writer's side SEND_SHUTDOWN, which poll does not report; a write then says EPIPE), so
    the process waited for ever, SIGTERM ignored (the guard), a POS that waits for its
    exit before closing the socket stuck with it. Failed before the fix (the wait
    retries the write each second): the cut-off line, exit 1."""
    env = _loaded(tmp_path)
    path = _big_receipt(tmp_path, "nb-shut-rd")
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)  # the file description the child writes to
    with ours:
        with theirs:
            proc = subprocess.Popen(
                [EXE, "checkout", str(path), "--json"],
                env=env,
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
            )
        try:
            ours.settimeout(60)
            assert len(ours.recv(10)) == 10
            seen, deadline = -1, time.monotonic() + 60
            while _unread(ours) != seen:  # until the buffers are full: it waits in poll
                assert time.monotonic() < deadline and proc.poll() is None
                seen = _unread(ours)
                time.sleep(0.3)
            ours.shutdown(socket.SHUT_RD)
            err = proc.communicate(timeout=30)[1].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "tillpoint: the output was cut off: its reader (a socket) closed before the end"
    ), err


# ---------------------------------------- 2. main(argv) in a caller's process


def test_main_in_a_callers_process_leaves_its_grpc_verbosity_and_streams_as_they_were(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CONTRACT §10. `main(argv)` called in its caller's own process (a test, a bench, a
    program embedding the CLI) leaves that process as it found it, as rev38i made it
    leave PYDANTIC_DISABLE_PLUGINS: it set GRPC_VERBOSITY=ERROR there for good (the
    caller's own `GRPC_VERBOSITY` unset, gRPC's default, turned into a setting its
    children then inherited), and re-encoded the caller's stdout and stderr as UTF-8
    (stderr with backslashreplace) for good. Failed before the fix. The `tillpoint`
    command (`main()`, its process tillpoint's) still sets both (review 38's tests)."""
    for name in [k for k in os.environ if k.upper().startswith("TILLPOINT_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    answer = io.BytesIO()
    out = io.TextIOWrapper(answer, encoding="ascii", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(["config", "check", "--json", "--data-dir", str(tmp_path)]) == 0
    assert "GRPC_VERBOSITY" not in os.environ
    assert (out.encoding, out.errors) == ("ascii", "strict")
    assert (err.encoding, err.errors) == ("latin-1", "strict")
    out.flush()
    assert json.loads(answer.getvalue())["dataDir"] == str(tmp_path)

    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")  # the caller's own setting: kept
    assert cli.main(["config", "check", "--json", "--data-dir", str(tmp_path)]) == 0
    assert os.environ["GRPC_VERBOSITY"] == "DEBUG"


# ---------------------------------------- 3. GRPC_VERBOSITY: which commands serve

_SEEN_AT_EXIT = """\
import atexit, os

def _seen():
    with open(os.environ["REV39B_SEEN"], "w", encoding="utf-8") as f:
        f.write(os.environ.get("GRPC_VERBOSITY", "(unset)"))

atexit.register(_seen)
"""


@pytest.mark.parametrize(
    ("argv", "serves"),
    [
        (["run"], True),
        (["hub", "serve"], True),
        (["demo"], True),
        (["hub", "status"], False),
        (["hub", "import", "f.json"], False),
        (["hub", "enroll", "till-1"], False),
        (["hub", "init"], False),
        (["sync", "now"], False),
        (["checkout", "r.json"], False),
        (["status"], False),
    ],
)
def test_only_the_serving_commands_keep_grpcs_error_lines(argv: list[str], serves: bool) -> None:
    """CONTRACT §10 (a one-shot command's stderr is its own lines; review 38's rev38f
    silenced gRPC's C core for one-shots, GRPC_VERBOSITY=NONE). rev38k's left item,
    decided (DECISIONS, "Review 39 (rev39b)"): every `hub` command kept ERROR, `hub
    import`, `hub enroll`, `hub status` … too, which run once and end like the till's
    one-shots (and import gRPC: its C core's lines would have been theirs). Only the
    commands that serve keep ERROR: `run`, `hub serve`, and `demo` (a hub and tills of
    its own, a story whose gRPC faults are worth seeing). Failed before the fix."""
    args = cli._parse(cli.build_parser(argv), argv)
    assert cli.serves(args) is serves


def test_a_hub_one_shot_runs_with_grpcs_core_silenced(tmp_path: Path) -> None:
    """As above, in a real `tillpoint hub status` process (on a directory with no hub
    yet: refused, exit 2, after the command is known): the GRPC_VERBOSITY it ran with,
    read at its exit, is NONE (it was ERROR)."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_SEEN_AT_EXIT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env.pop("GRPC_VERBOSITY", None)
    env.update(PYTHONPATH=str(tmp_path / "hook"), REV39B_SEEN=str(tmp_path / "seen"))
    done = subprocess.run(
        [EXE, "hub", "status", "--data-dir", str(tmp_path / "hub")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert (tmp_path / "seen").read_text(encoding="utf-8") == "NONE", done.stderr


# ---------------------------------------- 4. a signal at each stage of a committing one-shot

# Sends the process a signal of its own at a named stage of a `tillpoint checkout`: inside
# its ledger transaction (just after the journal row, before the COMMIT), or between the
# commit and the answer (as `emit` is entered, before the one-shot guard starts).
_SIGNAL_AT = """\
import os

stage, signum = os.environ["REV39B_STAGE"], int(os.environ["REV39B_SIGNAL"])
if stage == "in-transaction":
    from tillpoint.agent import service

    journal = service.Agent._journal

    def _journal(self, *args, **kwargs):
        done = journal(self, *args, **kwargs)
        os.kill(os.getpid(), signum)
        return done

    service.Agent._journal = _journal
elif stage == "before-answer":
    from tillpoint.agent import cli

    emit = cli.emit

    def _emit(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return emit(*args, **kwargs)

    cli.emit = _emit
"""


def _stored(data: Path, receipt_id: str) -> tuple[int, int]:
    """The receipt's rows in the ledger and its journal (read-only, beside no writer)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True, timeout=10)
    ) as conn:
        sold = conn.execute("SELECT count(*) FROM receipts WHERE receipt_id = ?", (receipt_id,))
        told = conn.execute("SELECT count(*) FROM journal WHERE ref_id = ?", (receipt_id,))
        return int(sold.fetchone()[0]), int(told.fetchone()[0])


def test_a_signal_before_the_answer_leaves_the_sale_whole_or_not_at_all(tmp_path: Path) -> None:
    """CONTRACT §10 (exit 0 only for a call answered), §11 (a committed sale is never
    undone; a retry under its receiptId answers it). Found right, pinned: a SIGINT inside
    the sale's ledger transaction rolls all of it back (exit 130, nothing on stdout or
    stderr, no row); a SIGTERM or SIGHUP between the commit and the answer kills the
    process (-15, -1: no answer, and the exit code says so), the sale committed whole
    (its receipt and its journal row); the retry answers it, exit 0, stored once. From
    the answer on the guard holds (review 37, 38: review 38's tests)."""
    env = _loaded(tmp_path)
    data = Path(env["TILLPOINT_DATA_DIR"])
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_SIGNAL_AT, encoding="utf-8")
    for stage, signum, code, stored in (
        ("in-transaction", signal.SIGINT, 130, (0, 0)),
        ("before-answer", signal.SIGTERM, -signal.SIGTERM, (1, 1)),
        ("before-answer", signal.SIGHUP, -signal.SIGHUP, (1, 1)),
    ):
        rid = f"{stage}-{signum}"
        path = tmp_path / f"{rid}.json"
        path.write_text(json.dumps(receipt(rid)), encoding="utf-8")
        stopped = subprocess.run(
            [EXE, "checkout", str(path), "--json"],
            env=dict(
                env,
                PYTHONPATH=str(tmp_path / "hook"),
                REV39B_STAGE=stage,
                REV39B_SIGNAL=str(int(signum)),
            ),
            capture_output=True,
            timeout=60,
        )
        assert stopped.returncode == code, (stage, signum, stopped.stderr)
        assert stopped.stdout == b"" and stopped.stderr == b"", (stage, signum, stopped)
        assert _stored(data, rid) == stored, (stage, signum)
    again = subprocess.run(
        [EXE, "checkout", str(tmp_path / f"before-answer-{int(signal.SIGTERM)}.json"), "--json"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 0 and again.stderr == b"", again.stderr
    answer = json.loads(again.stdout)
    assert answer["receiptId"] == f"before-answer-{int(signal.SIGTERM)}"
    assert answer["state"] == "CONFIRMED"
    assert _stored(data, answer["receiptId"]) == (1, 1)
