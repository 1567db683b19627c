"""Review 38 (rev38j): this session's merged rev38f and rev38h changes read again —
`db.begin_write`'s per-BEGIN busy wait (the lead's hand merge of rev38f's cut and
rev38h's `wait=False`) and `cli._write_whole` (os.write, poll on EAGAIN) to stdouts that
are not a plain pipe (CONTRACT §10, §11). Each test here that names a fault failed before
the fix beside it; the others pin what was tried and found right. Real parts: real SQLite
files, real `tillpoint` processes, real pipes, sockets and a pseudo-terminal.

Read and tried by hand, found right, not pinned again here: a one-shot whose hub's TLS
handshake fails (`sync now`: one line naming the handshake and the mend; `hold`,
`checkout`: OFFLINE with no line, as with GRPC_VERBOSITY=ERROR before rev38f); a
one-shot forwarded to `run` goes over HTTP (GRPC_VERBOSITY plays no part); one-shot
reads (`quote`, `status`, `balance`, `identify`, `config check`) beside another
process's write transaction answer at once; every ledger connection shared by threads
(`Agent._ledger`, the sync's pusher) is used under one lock or one thread, so the
per-BEGIN busy timeout is never another thread's; `tillpoint run`'s hold timer records
the time line under the agent's lock, so only another process's writer (one-shots are
forwarded to `run` while it serves) can make it wait a round.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from tillpoint.agent.db import begin_write, connect, writes_until

from .test_review38_rev38b import EXE, _loaded
from .test_review38_rev38f import _big_receipt, _pipe_held

# ---------------------------------------- 1. begin_write: every combination, the pragma set back


def _busy_ms(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


@pytest.mark.parametrize(
    ("until_s", "wait", "waits_s"),
    [
        (None, True, 0.4),  # no deadline: the connection's own 400 ms
        (None, False, 0.0),  # wait=False: not at all
        (60.0, False, 0.0),  # wait=False beside a deadline still far: not at all
        (-1.0, True, 0.0),  # the deadline passed: not at all
        (60.0, True, 0.4),  # a deadline longer than the connection's own: its own
        (0.15, True, 0.15),  # a deadline shorter: the deadline
    ],
    ids=["no-deadline", "no-wait", "no-wait-deadline-set", "passed", "longer", "shorter"],
)
def test_begin_write_waits_what_each_combination_says_and_sets_the_wait_back(
    tmp_path: Path, until_s: float | None, wait: bool, waits_s: float
) -> None:
    """CONTRACT §10 (`sync now --timeout S`: its ledger writes wait no later than it), §11
    (the time line is not waited for). The lead's hand merge of rev38f's per-BEGIN cut and
    rev38h's `wait=False`, tried against another connection holding the write lock: each
    combination waits what it says, fails "database is locked", and leaves the
    connection's own busy timeout (400 ms here) as it was and no transaction open (found
    right)."""
    path = tmp_path / "x.db"
    holder, other = connect(path), connect(path)
    other.execute("PRAGMA busy_timeout = 400")
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            if until_s is None:
                begin_write(other, wait=wait)
            else:
                with writes_until(time.monotonic() + until_s):
                    begin_write(other, wait=wait)
        waited = time.monotonic() - started
        assert waits_s <= waited + 0.02 and waited < waits_s + 2.0, waited
        assert _busy_ms(other) == 400
        assert not other.in_transaction
        holder.execute("ROLLBACK")
        with writes_until(time.monotonic() - 1):  # free: taken at once whatever is left
            begin_write(other, wait=False)
        assert other.in_transaction and _busy_ms(other) == 400
        other.execute("ROLLBACK")
    finally:
        holder.close()
        other.close()


# ---------------------------------------- 2. _write_whole: stdouts that are not a plain pipe


def _answer_to(env: dict[str, str], path: Path, stdout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EXE, "checkout", str(path), "--json"], env=env, stdout=stdout, stderr=subprocess.PIPE
    )


def _quote(env: dict[str, str], path: Path, stdout: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [EXE, "quote", str(path), "--json"],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )


def test_an_answer_to_a_file_a_socket_and_a_terminal_is_the_pipes_byte_for_byte(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (`--json`: one JSON document on stdout; text otherwise). The answer is
    written with `os.write` on stdout's descriptor since rev38b/rev38f: to a regular file,
    a non-blocking socket (a POS's socketpair, its end set O_NONBLOCK, read late) and a
    pseudo-terminal it is the very bytes a pipe gets (the terminal's own \\r\\n aside),
    exit 0, nothing on stderr (found right)."""
    env = _loaded(tmp_path)
    path = _big_receipt(tmp_path, "q-1")
    piped = subprocess.run(
        [EXE, "quote", str(path), "--json"], env=env, capture_output=True, timeout=60, check=False
    )
    assert piped.returncode == 0 and piped.stderr == b"", piped.stderr
    assert len(piped.stdout) > 65_536  # more than a pipe's buffer, and the socket's below
    with open(tmp_path / "out.json", "wb") as file:
        done = _quote(env, path, file.fileno())
    assert done.returncode == 0 and done.stderr == b""
    assert (tmp_path / "out.json").read_bytes() == piped.stdout

    ours, theirs = socket.socketpair()
    theirs.setblocking(False)  # the file description the child writes to
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with ours:
        with theirs:
            proc = subprocess.Popen(
                [EXE, "quote", str(path), "--json"],
                env=env,
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
            )
        time.sleep(1.0)  # read late: the socket's buffer full, EAGAIN
        got = bytearray()
        ours.settimeout(60)
        while chunk := ours.recv(65536):
            got += chunk
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0 and err == b"", err
    assert bytes(got) == piped.stdout

    main, sub = pty.openpty()
    try:
        proc = subprocess.Popen(
            [EXE, "quote", str(path), "--json"], env=env, stdout=sub, stderr=subprocess.PIPE
        )
        os.close(sub)
        seen = bytearray()
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            seen += chunk
        err = proc.communicate(timeout=60)[1]
    finally:
        os.close(main)
    assert proc.returncode == 0 and err == b"", err
    assert bytes(seen).replace(b"\r\n", b"\n") == piped.stdout


def test_a_non_blocking_pipe_closed_by_its_reader_while_the_answer_waits_is_one_line(
    tmp_path: Path,
) -> None:
    """CONTRACT §10 (a stdout whose reader leaves: one line "the output was cut off …",
    exit 1, what the command did stands). A sale's answer waiting in `poll` for a
    non-blocking pipe the POS reads nothing of, the POS then gone: poll wakes (POLLERR),
    the next write says EPIPE, one line, exit 1, no trace; the sale is stored (found
    right)."""
    env = _loaded(tmp_path)
    path = _big_receipt(tmp_path, "nb-gone")
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    with os.fdopen(r, "rb") as reader:
        proc = _answer_to(env, path, w)
        os.close(w)
        try:
            _pipe_held(proc, reader)
        finally:
            reader.close()
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith(
        "tillpoint: the output was cut off: its reader (a pipe) closed before the end"
    ), err
    again = subprocess.run(
        [EXE, "checkout", str(path), "--json"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0 and json.loads(again.stdout)["receiptId"] == "nb-gone"


def test_a_stop_while_a_sales_answer_waits_in_poll_leaves_it_whole_exit_0(tmp_path: Path) -> None:
    """CONTRACT §10, §11 (a committing one-shot's exit code stands once its answer is
    being written). A stop arriving while the answer waits in `poll` for a non-blocking
    pipe (PEP 475 retries the poll): the answer arrives whole once the POS reads, exit 0,
    nothing on stderr (found right; SIGINT and SIGHUP take the same guard, rev38f).
    """
    signum = signal.SIGTERM
    env = _loaded(tmp_path)
    path = _big_receipt(tmp_path, "stop-1")
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    with os.fdopen(r, "rb") as reader:
        proc = _answer_to(env, path, w)
        os.close(w)
        try:
            _pipe_held(proc, reader)
            for _ in range(3):
                proc.send_signal(signum)
                time.sleep(0.1)
            out = reader.read()
            err = proc.communicate(timeout=60)[1]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert err == b""
    assert len(json.loads(out)["lines"]) == 400


@pytest.mark.parametrize("command", ["quote", "checkout"])
def test_a_socket_stdout_whose_reader_leaves_is_the_cut_off_line_not_an_internal_error(
    tmp_path: Path, command: str
) -> None:
    """CONTRACT §10 (a stdout whose reader leaves before the end: one line "the output
    was cut off …", exit 1, what the command did stands). A POS whose child's stdout is a
    Unix socket (Node's `child_process` pipes are socketpairs; systemd's
    `StandardOutput=socket`) that reads the start of a large answer and closes: the write
    failed EPIPE, and stdout was judged by the pipe's sign of a gone reader alone
    (POLLERR), which a socket closed by its peer does not give (POLLHUP): "tillpoint:
    internal error: BrokenPipeError: [Errno 32] Broken pipe", as if tillpoint had a bug.
    Failed before the fix: the cut-off line, naming a socket; a sale is stored."""
    env = _loaded(tmp_path)
    path = _big_receipt(tmp_path, f"sock-{command}")
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with ours:
        with theirs:
            proc = subprocess.Popen(
                [EXE, command, str(path), "--json"],
                env=env,
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
            )
        ours.settimeout(60)
        assert len(ours.recv(10)) == 10
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "tillpoint: the output was cut off: its reader (a socket) closed before the end"
    ), err
    assert err.rstrip("\n").endswith("(what the command did stands)")
    if command == "checkout":
        again = subprocess.run(
            [EXE, "checkout", str(path), "--json"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0 and json.loads(again.stdout)["receiptId"] == path.stem
