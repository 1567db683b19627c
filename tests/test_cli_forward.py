"""The CLI forwards its calls to the `tillpoint run` serving its data directory
(agent/forward.py): the same output and exit codes, a fallback, never a commit run twice."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.forward import SERVING

from .conftest import CLI, free_port, receipt, snapshot
from .listeners import close_listener

EXE = Path(sys.executable).parent / "tillpoint"


def _env() -> dict[str, str]:
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-1")
    env.pop("TILLPOINT_CLI_LOCAL", None)
    return env


def _tp(
    data: Path, *args: Any, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "--data-dir", data, *map(str, args)],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=60,
        check=False,
    )


def _write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    """A data dir with a snapshot and a real `tillpoint run` serving it (HTTP on a free port)."""
    data = tmp_path / "data"
    assert _tp(data, "snapshot", "load", _write(tmp_path / "snap.json", snapshot())).returncode == 0
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    env = dict(_env(), TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
    proc = subprocess.Popen(
        [EXE, "--config", conf, "--data-dir", data, "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (data / SERVING).exists():
            assert proc.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never served"
            time.sleep(0.05)
        yield data
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not (data / SERVING).exists()  # withdrawn on the way out


def _in_process(data: Path, *args: str) -> tuple[int, str, list[str]]:
    """Run the CLI in a fresh interpreter; (exit code, stdout, heavy modules it imported)."""
    script = (
        "import sys\n"
        "from tillpoint.agent.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "heavy = ('pydantic', 'sqlite3', 'tillpoint.agent.service')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('HEAVY', ','.join(heavy), file=sys.stderr)\n"
        "raise SystemExit(code)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    heavy = run.stderr.rsplit("HEAVY", 1)[1].strip()
    return run.returncode, run.stdout, [m for m in heavy.split(",") if m]


def _forwarded_spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Wraps agent/forward.py's `forward` (it still runs): one entry a call, True when
    the running agent answered it, False when the CLI ran it locally."""
    from tillpoint.agent import forward

    real = forward.forward
    seen: list[bool] = []

    def spy(args: Any) -> int:
        try:
            code = real(args)
        except forward.NotForwarded:
            seen.append(False)
            raise
        seen.append(True)
        return code

    monkeypatch.setattr(forward, "forward", spy)
    return seen


def test_forwarded_answers_are_the_local_ones_byte_for_byte(
    running: Path, tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command forwarded to the running agent prints what `--local` prints. The CLI
    runs in this process (`main`, as the entry point calls it) against the real `tillpoint
    run`; the entry point itself, its exit codes and standard input are run as processes
    below."""
    data = running
    monkeypatch.delenv("TILLPOINT_CLI_LOCAL", raising=False)
    forwarded = _forwarded_spy(monkeypatch)
    r = _write(tmp_path / "r.json", receipt("f-1", redeemPoints=100))
    blocked = _write(tmp_path / "b.json", receipt("f-2", card="2770000000031"))
    floats = tmp_path / "f.json"
    floats.write_text('{"receiptId": "x", "lines": [{"priceMinor": 1.5}]}', encoding="utf-8")
    cases: list[tuple[tuple[Any, ...], bool]] = [  # (arguments, answered by the agent)
        (("quote", r, "--json"), True),
        (("quote", r), True),
        (("quote", r, "--explain", "--json"), True),
        (("identify", "+7 916 123-45-67", "--json"), True),
        (("identify", "2770000000031"), True),
        (("balance", "2770000000017", "--json"), True),
        (("balance", "2770000000017"), True),
        (("status", "--json"), True),
        (("quote", blocked, "--json"), True),  # refused: exit 2, one line
        (("quote", floats), False),  # refused before sending: exit 2
        (("quote", tmp_path / "missing.json"), False),
        (("confirm", "never-held"), True),  # NOT_FOUND: exit 2
        (("balance", "2770000000017", "--at", "yesterday"), False),  # worded by the CLI
    ]
    for case, by_agent in cases:
        forwarded.clear()
        fwd = cli(*case)
        assert (True in forwarded) is by_agent, case
        local = cli(*case, "--local")
        assert forwarded.count(True) == by_agent, case  # `--local`: run here
        assert (fwd.code, fwd.out, fwd.err) == (local.code, local.out, local.err), case
        if fwd.code:
            assert fwd.out == "" and len(fwd.err.splitlines()) == 1, case
    # The installed entry point, as a POS runs it: forwarded and local the same bytes and
    # exit codes (an answer, a refusal), and standard input forwarded.
    for case in (("quote", r, "--json"), ("quote", blocked, "--json")):
        fwd, local = _tp(data, *case), _tp(data, *case, "--local")
        assert (fwd.returncode, fwd.stdout, fwd.stderr) == (
            local.returncode,
            local.stdout,
            local.stderr,
        ), case
    assert fwd.returncode == 2 and fwd.stdout == "" and len(fwd.stderr.splitlines()) == 1
    stdin = json.dumps(receipt("f-9"))
    fwd = subprocess.run(
        [EXE, "--data-dir", data, "quote", "-", "--json"],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert fwd.returncode == 0 and json.loads(fwd.stdout)["receiptId"] == "f-9", fwd.stderr
    # The quote was answered by the agent: the CLI imported neither pydantic nor SQLite.
    code, out, heavy = _in_process(data, "quote", str(r), "--json")
    assert code == 0 and json.loads(out)["receiptId"] == "f-1" and heavy == []
    code, _, heavy = _in_process(data, "quote", str(r), "--json", "--local")
    assert code == 0 and "pydantic" in heavy

    # A checkout goes to the agent, once: the local ledger sees it, a replay is the same
    # answer, another body under its id the same refusal as locally.
    first = _tp(data, "checkout", r, "--json")
    assert first.returncode == 0, first.stderr
    forwarded.clear()
    assert cli("checkout", r, "--json").out == first.stdout
    assert cli("status", "--json", "--local").json()["outboxDepth"] == 1
    other = _write(tmp_path / "o.json", receipt("f-1", redeemPoints=0))
    fwd_run, local_run = cli("checkout", other), cli("checkout", other, "--local")
    assert fwd_run.code == local_run.code == 2 and fwd_run.err == local_run.err
    assert forwarded == [True, False, True, False]
    forwarded.clear()
    # Hold, then confirm and cancel by id.
    held = cli("hold", _write(tmp_path / "h.json", receipt("f-3")), "--json")
    assert held.code == 0 and held.json()["state"] == "HELD", held.err
    done = cli("confirm", "f-3", "--fiscal", "FD-1", "--json")
    assert done.code == 0 and done.json()["state"] == "CONFIRMED", done.err
    assert cli("hold", _write(tmp_path / "h4.json", receipt("f-4")), "--json").code == 0
    gone = cli("cancel", "f-4", "--json")
    assert gone.code == 0 and gone.json()["state"] == "CANCELLED", gone.out
    assert forwarded == [True] * 4  # the hold's life: the agent's


def test_another_agents_port_is_not_used(running: Path, tmp_path: Path) -> None:
    """A `serving.json` naming a port where another data directory's agent listens (a stale
    file, a reused port): that agent answers 421 and runs nothing; the CLI runs locally."""
    other = tmp_path / "other"
    assert _tp(other, "snapshot", "load", _write(tmp_path / "s.json", snapshot())).returncode == 0
    stale = json.loads((running / SERVING).read_text())
    _write(other / SERVING, {**stale, "instance": "0" * 32})
    r = _write(tmp_path / "r.json", receipt("s-1"))
    run = _tp(other, "checkout", r, "--json")
    assert run.returncode == 0, run.stderr
    # Committed in `other`'s ledger, not in the running agent's.
    assert json.loads(_tp(other, "status", "--json", "--local").stdout)["outboxDepth"] == 1
    assert json.loads(_tp(running, "status", "--json").stdout)["outboxDepth"] == 0


class _Silent:
    """A loopback server that reads a request and closes without answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                self.requests += 1


SilentAgent = Callable[..., _Silent]


@pytest.fixture
def silent_agent() -> Iterator[SilentAgent]:
    """`silent_agent(data, **serving)`: a `_Silent` server named in `data`'s serving file;
    every one started is closed when the test ends (its accept thread with it)."""
    started: list[_Silent] = []

    def start(data: Path, **extra: Any) -> _Silent:
        silent = _Silent()
        started.append(silent)
        doc = {"pid": os.getpid(), "host": "127.0.0.1", "port": silent.port, "instance": "i" * 32}
        _write(data / SERVING, {**doc, "token": False, **extra})
        return silent

    yield start
    for silent in started:
        close_listener(silent.sock)


def test_a_commit_sent_and_unanswered_is_not_run_again(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_agent: SilentAgent
) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    data = tmp_path / "data"
    silent = silent_agent(data)
    run = cli("checkout", receipt("u-1"), "--json")
    assert run.code == 1 and run.out == "" and "retry with the same receiptId" in run.err
    assert len(run.err.strip().splitlines()) == 1 and silent.requests == 1
    assert cli("status", "--json", "--local").json()["outboxDepth"] == 0  # not run here
    # A quote stores nothing: unanswered, it is priced here.
    quoted = cli("quote", receipt("u-1"), "--json")
    assert quoted.code == 0 and quoted.json()["receiptId"] == "u-1"
    assert silent.requests == 2
    # Read from standard input, sent, unanswered: the local run reads the same bytes.
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(receipt("u-2"))))
    quoted = cli("quote", "-", "--json")
    assert quoted.code == 0 and quoted.json()["receiptId"] == "u-2", quoted.err
    assert silent.requests == 3


def test_local_flag_variable_token_and_dead_agents(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_agent: SilentAgent
) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    data = tmp_path / "data"
    silent = silent_agent(data)
    assert cli("checkout", receipt("l-1"), "--local").code == 0
    monkeypatch.setenv("TILLPOINT_CLI_LOCAL", "1")
    assert cli("checkout", receipt("l-2")).code == 0
    monkeypatch.delenv("TILLPOINT_CLI_LOCAL")
    silent_agent(data, token=True)  # an HTTP interface with a token: not used
    assert cli("checkout", receipt("l-3")).code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    silent_agent(data, pid=dead.pid)  # its agent died: a stale file
    assert cli("checkout", receipt("l-4")).code == 0
    (data / SERVING).write_text("{", encoding="utf-8")
    assert cli("checkout", receipt("l-5")).code == 0
    assert silent.requests == 0
    assert cli("status", "--json").json()["outboxDepth"] == 5


def test_the_answer_parser() -> None:
    from tillpoint.agent.forward import _parse_response

    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    assert _parse_response(head + b"content-length: 2\r\n\r\n{}") == (200, b"{}")
    chunked = head + b'Transfer-Encoding: chunked\r\n\r\n2\r\n{"\r\n3\r\na":\r\n0\r\n\r\n'
    assert _parse_response(chunked) == (200, b'{"a":')
    for cut in (head, head + b"content-length: 9\r\n\r\n{}", b"garbage\r\n\r\n"):
        with pytest.raises(ValueError):
            _parse_response(cut)


def test_a_current_schema_opens_without_the_migration_library(cli: CLI, tmp_path: Path) -> None:
    """The local run: a ledger and a cache at the current schema open with one SELECT each;
    `sqlite_utils` is not imported, nor `cryptography` by a quote (the enrolment marker is
    read by `status` only)."""
    assert cli("snapshot", "load", snapshot()).code == 0
    r = _write(tmp_path / "r.json", receipt("m-1"))
    code, out, _ = _in_process(tmp_path / "data", "quote", str(r), "--json", "--local")
    assert code == 0 and json.loads(out)["receiptId"] == "m-1"
    script = (
        "import sys\n"
        "from tillpoint.agent.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'sqlite_utils' not in sys.modules\n"
        "assert 'cryptography' not in sys.modules or sys.argv[3] == 'status'\n"
        "raise SystemExit(code)\n"
    )
    for args in (["quote", str(r), "--json", "--local"], ["status", "--local"]):
        run = subprocess.run(
            [sys.executable, "-c", script, "--data-dir", str(tmp_path / "data"), *args],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr


def test_a_core_command_is_parsed_without_the_other_parts(cli: CLI) -> None:
    """`quote` and `run` are parsed without `demo`, `sync` and `print`'s modules; `--help`
    and their own commands still have them."""
    from tillpoint.agent.cli import _command_of, build_parser

    assert _command_of(["--data-dir", "d", "--config=c", "quote", "r.json"]) == "quote"
    assert _command_of(["--data", "d", "quote"]) is None  # an abbreviation: the full parser
    assert _command_of(["--help"]) is None and _command_of([]) is None
    core = build_parser(["quote", "r.json"])
    full = build_parser()
    commands = {a.dest: a for a in full._subparsers._group_actions}["command"]
    assert {"hub", "sync", "print", "demo"} <= set(commands.choices)
    core_commands = {a.dest: a for a in core._subparsers._group_actions}["command"]
    assert not {"hub", "demo"} & set(core_commands.choices)
    assert build_parser(["hub", "--help"]) is not None
    run = cli("quote", "--help")
    assert run.code == 0 and "--local" in run.out and "--explain" in run.out


def test_reset_is_refused_while_run_serves_the_data_directory(
    running: Path, tmp_path: Path
) -> None:
    """A reset under a running agent would leave it pricing from what it keeps in memory
    (a snapshot of the same version loaded after the reset was priced with the old offers,
    and committed). The data directory's lock says who holds it; nothing is forgotten."""
    assert _tp(running, "checkout", _write(tmp_path / "r.json", receipt("r1"))).returncode == 0
    refused = _tp(running, "reset", "--yes", "--force")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "reset refused: another tillpoint (pid " in refused.stderr
    assert "stop it first" in refused.stderr
    status = json.loads(_tp(running, "status", "--json").stdout)
    assert (status["cacheVersion"], status["lastSeq"], status["outboxDepth"]) == (1, 1, 1)
