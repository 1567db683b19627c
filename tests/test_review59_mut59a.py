"""Review 59 (mut59a): the rules of the CLI's forward to the running agent
(`agent/forward.py`) and of the typed gRPC client (`agent/client.py`) that no test held,
found by mutation testing (docs/DECISIONS.md, "Review 59 (mut59a)").

The forward is driven in this process (`main`, the suite's `cli` fixture) against a
loopback server that reads each request whole and answers with the bytes a test gives
(`_Scripted`: what a request looks like on the wire, an answer cut or lost, a 421), and
against a real `tillpoint run` stopped with SIGSTOP (an answer lost for real). The client
is driven against real gRPC servers on 127.0.0.1: the agent's own, and a servicer that
fails a given number of times with a given status.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tillpoint.agent import forward
from tillpoint.agent.forward import SERVING

from .conftest import CLI, free_port, receipt, snapshot
from .listeners import close_listener
from .test_cli_forward import running  # noqa: F401 (a fixture: a real `tillpoint run`)

Answer = bytes | None | Callable[[bytes, bytes], bytes | None]
INSTANCE = "a" * 32


def http_answer(status: int, doc: Any = None, *, raw: bytes | None = None) -> bytes:
    """A whole HTTP/1.1 answer: `doc` as JSON (or the bytes `raw`) with its length."""
    body = raw if raw is not None else json.dumps(doc).encode()
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def error_answer(status: int, code: str | None, message: str = "refused here") -> bytes:
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error["code"] = code
    return http_answer(status, {"error": error})


def _read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one request read whole (its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


class _Scripted:
    """A loopback HTTP server named in a data directory's `serving.json`: it reads each
    request whole, records it, and answers the bytes of `answer` (a function of the
    request's head and body, or fixed; None closes without answering)."""

    def __init__(self, data: Path, answer: Answer, **serving: Any) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self._serve, daemon=True).start()
        doc = {"pid": os.getpid(), "host": "127.0.0.1", "port": self.port}
        data.mkdir(parents=True, exist_ok=True)
        (data / SERVING).write_text(
            json.dumps({**doc, "instance": INSTANCE, "token": False, **serving}),
            encoding="utf-8",
        )

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    head, body = _read_request(conn)
                    self.requests.append((head, body))
                    reply = self.answer(head, body) if callable(self.answer) else self.answer
                    if reply is not None:
                        conn.sendall(reply)
                except OSError:
                    pass

    def head_lines(self, n: int = -1) -> list[str]:
        return self.requests[n][0].decode("latin-1").split("\r\n")


Scripted = Callable[..., _Scripted]


@pytest.fixture
def scripted(tmp_path: Path, cli: CLI) -> Iterator[Scripted]:
    """`scripted(answer, **serving)`: a `_Scripted` server named in the `cli` fixture's data
    directory, which holds the suite's snapshot; each started one is closed at the end."""
    assert cli("snapshot", "load", snapshot()).code == 0
    started: list[_Scripted] = []

    def start(answer: Answer, **serving: Any) -> _Scripted:
        server = _Scripted(tmp_path / "data", answer, **serving)
        started.append(server)
        return server

    yield start
    for server in started:
        close_listener(server.sock)


@pytest.fixture(autouse=True)
def _forwarding(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper() == "TILLPOINT_CLI_LOCAL":
            monkeypatch.delenv(key)


def outbox_here(cli: CLI) -> int:
    """What the data directory's own ledger holds to push (read locally)."""
    depth: int = cli("status", "--json", "--local").json()["outboxDepth"]
    return depth


def _file(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


REFUND = {
    "refundId": "rf-1",
    "receiptId": "c-1",
    "at": "2026-11-23T11:00:00+03:00",
    "lines": [{"sku": "4601234000017", "qty": "1"}],
}


# ---------------------------------------------------------------- forward: what is sent


def test_each_command_is_sent_as_the_agent_reads_it(
    scripted: Scripted, cli: CLI, tmp_path: Path
) -> None:
    """Method, path, the instance id, `Connection: close`, the body's type and exact length
    (none for `status`), and the body: the file's JSON compact (with `--explain`'s flag),
    or the command's words under their JSON names. The answer, a 200 JSON object, is
    printed as `--json` prints a local one."""
    from tillpoint.agent.cli import json_document

    doc = {"receiptId": "x", "n": 1}
    server = scripted(http_answer(200, doc))
    r = _file(tmp_path, "r.json", receipt("s-1"))
    compact = json.dumps(receipt("s-1"), separators=(",", ":")).encode()
    explained = json.dumps({**receipt("s-1"), "explain": True}, separators=(",", ":")).encode()
    cases: list[tuple[tuple[Any, ...], str, bytes | None]] = [
        (("quote", r), "POST /v1/quote", compact),
        (("quote", r, "--explain"), "POST /v1/quote", explained),
        (("checkout", r), "POST /v1/checkout", compact),
        (("hold", r), "POST /v1/hold", compact),
        (("refund", _file(tmp_path, "f.json", REFUND)), "POST /v1/refund", None),
        (("identify", "2770000000017"), "POST /v1/identify", b'{"text": "2770000000017"}'),
        (("balance", "2770000000017"), "POST /v1/balance", b'{"card": "2770000000017"}'),
        (("confirm", "s-1"), "POST /v1/confirm", b'{"receiptId": "s-1"}'),
        (
            ("confirm", "s-1", "--fiscal", "ФД-1"),
            "POST /v1/confirm",
            '{"receiptId": "s-1", "fiscalDocument": "ФД-1"}'.encode(),
        ),
        (("cancel", "s-1"), "POST /v1/cancel", b'{"receiptId": "s-1"}'),
        (("status",), "GET /v1/status", b""),
    ]
    for args, line, body in cases:
        run = cli(*args, "--json")
        assert (run.code, run.out, run.err) == (0, json_document(doc), ""), args
        head = server.head_lines()
        assert head[0] == f"{line} HTTP/1.1", args
        assert f"Host: 127.0.0.1:{server.port}" in head and "Connection: close" in head
        assert f"X-Tillpoint-Instance: {INSTANCE}" in head, args
        sent = server.requests[-1][1]
        if body is None:
            body = json.dumps(REFUND, separators=(",", ":")).encode()
        assert sent == body, args
        if line.startswith("GET"):
            assert not [h for h in head if h.startswith(("Content-", "content-"))], args
        else:
            assert "Content-Type: application/json" in head, args
            assert f"Content-Length: {len(body)}" in head, args
    assert len(server.requests) == len(cases)
    assert outbox_here(cli) == 0  # nothing ran here


def test_texts_the_edge_words_apart_run_here_and_the_rest_is_sent(
    scripted: Scripted, cli: CLI
) -> None:
    """An identify text, a card, a receipt id empty or blank or over 128 characters, a
    fiscal document over 128, `balance --at`: run here (nothing sent); at 128 they are
    sent."""
    server = scripted(error_answer(404, "NOT_FOUND", "sent"))
    at_most, over = "7" * 128, "7" * 129
    here = [
        ("identify", "   "),
        ("identify", over),
        ("balance", over),
        ("balance", "2770000000017", "--at", "2026-11-23T08:00:00Z"),
        ("confirm", "   "),
        ("confirm", over),
        ("confirm", "c-1", "--fiscal", over),
        ("confirm", "c-1", "--fiscal", ""),
        ("cancel", "  "),
        ("cancel", over),
    ]
    for args in here:
        cli(*args)
        assert server.requests == [], args
    sent = [
        ("identify", at_most),
        ("balance", at_most),
        ("confirm", at_most),
        ("confirm", "c-1", "--fiscal", at_most),
        ("cancel", at_most),
    ]
    for n, args in enumerate(sent, 1):
        run = cli(*args)
        assert (run.code, run.err) == (2, "tillpoint: sent\n"), args
        assert len(server.requests) == n, args


# ---------------------------------------------------------------- forward: what is answered


@pytest.mark.parametrize(
    ("answer", "code", "err"),
    [
        (error_answer(400, "INVALID_ARGUMENT", "bad line"), 2, "tillpoint: bad line\n"),
        (error_answer(412, "FAILED_PRECONDITION", "no snapshot"), 2, "tillpoint: no snapshot\n"),
        (error_answer(404, "NOT_FOUND", "not held"), 2, "tillpoint: not held\n"),
        (error_answer(409, "ALREADY_EXISTS", "other body"), 2, "tillpoint: other body\n"),
        (error_answer(503, "UNAVAILABLE", "retry"), 1, "tillpoint: retry\n"),
        (error_answer(500, "INTERNAL", "a bug"), 1, "tillpoint: a bug\n"),
        (error_answer(400, None, "no code"), 1, "tillpoint: no code\n"),
        (http_answer(400, {"error": {"code": "INVALID_ARGUMENT"}}), 2, "tillpoint: \n"),
        (
            http_answer(502, raw=b"<html>bad gateway</html>"),
            1,
            "tillpoint: the running agent answered HTTP 502\n",
        ),
        (http_answer(200, [1, 2]), 1, "tillpoint: the running agent answered HTTP 200\n"),
        (http_answer(200, raw=b"\xff\xfe"), 1, "tillpoint: the running agent answered HTTP 200\n"),
        (
            http_answer(400, {"error": "bad"}),
            1,
            "tillpoint: the running agent answered HTTP 400\n",
        ),
    ],
)
def test_an_answer_is_told_with_the_exit_code_a_local_run_gives(
    scripted: Scripted, cli: CLI, answer: bytes, code: int, err: str
) -> None:
    """The agent's refusals exit 2 (a POS script reads "fix the input"), the rest 1 ("try
    again"), one line `tillpoint: <message>`; an answer that is no error document says
    its HTTP status, exit 1. Nothing is printed on standard output, nothing run here."""
    server = scripted(answer)
    run = cli("checkout", receipt("e-1"), "--json")
    assert (run.code, run.out, run.err) == (code, "", err)
    assert len(server.requests) == 1
    assert outbox_here(cli) == 0


def test_a_misdirected_call_runs_here_once(scripted: Scripted, cli: CLI) -> None:
    """A 421 (another agent's instance id: nothing ran there) runs the call here, once,
    whatever the 421's body says; a checkout is then in this ledger."""
    server = scripted(error_answer(421, "FAILED_PRECONDITION", "another agent's instance id"))
    run = cli("checkout", receipt("m-1"), "--json")
    assert run.code == 0 and run.json()["receiptId"] == "m-1", run.err
    assert len(server.requests) == 1 and outbox_here(cli) == 1
    server.answer = http_answer(421, raw=b"")
    run = cli("hold", receipt("m-2"), "--json")
    assert run.code == 0 and run.json()["state"] == "HELD", run.err
    assert len(server.requests) == 2


LOST = {
    "closed unanswered": None,
    "cut short": b"HTTP/1.1 200 OK\r\ncontent-length: 90\r\n\r\n{}",
    "head cut": b"HTTP/1.1 200 OK\r\ncontent-le",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "chunks cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{}",
}


@pytest.mark.parametrize("lost", list(LOST))
def test_a_commit_whose_answer_is_lost_is_never_run_here(
    scripted: Scripted, cli: CLI, tmp_path: Path, lost: str
) -> None:
    """checkout, hold, confirm, cancel, refund sent whole and answered with nothing whole:
    exit 1 (a POS script reads "try again"), one line naming the id to retry with, nothing
    run here; a quote, identify, balance or status stores nothing and is run here."""
    assert cli("checkout", receipt("c-1"), "--local").code == 0
    assert cli("hold", receipt("h-1"), "--local").code == 0
    server = scripted(LOST[lost])
    for args, again in [
        (("checkout", receipt("l-1")), "receiptId"),
        (("hold", receipt("l-2")), "receiptId"),
        (("confirm", "h-1"), "receiptId"),
        (("cancel", "h-1"), "receiptId"),
        (("refund", _file(tmp_path, "f.json", REFUND)), "refundId"),
    ]:
        run = cli(*args, "--json")
        assert (run.code, run.out) == (1, ""), (args, run.err)
        assert run.err.startswith("tillpoint: the running agent did not answer ("), run.err
        assert run.err.endswith(f"): retry with the same {again}\n"), run.err
        assert run.err.count("\n") == 1, run.err
    assert len(server.requests) == 5
    status = cli("status", "--json", "--local").json()
    assert status["outboxDepth"] == 1  # c-1 alone: none of them ran here
    assert cli("confirm", "h-1", "--json", "--local").json()["state"] == "CONFIRMED"
    for args in [
        ("quote", receipt("q-1")),
        ("identify", "2770000000017"),
        ("balance", "2770000000017"),
        ("status",),
    ]:
        run = cli(*args, "--json")
        assert run.code == 0 and run.err == "", (args, run.err)
    assert len(server.requests) == 9


# ---------------------------------------------------------------- forward: when it is not sent


@pytest.mark.parametrize(
    "serving",
    [
        {"pid": "1"},
        {"pid": 1.0},
        {"port": "PORT"},
        {"host": None},
        {"host": ["127.0.0.1"]},
        {"instance": 7},
        {"instance": None},
        {"token": "yes"},
        {"token": 1},
    ],
    ids=repr,
)
def test_a_serving_file_not_as_run_writes_it_is_not_used(
    scripted: Scripted, cli: CLI, tmp_path: Path, serving: dict[str, Any]
) -> None:
    """A `serving.json` whose pid or port is no integer, whose host or instance is no
    string, or that says a token is needed: the call runs here and nothing is sent (a
    port as text still connects: `socket` takes it)."""
    server = scripted(http_answer(200, {"sent": True}))
    if serving.get("port") == "PORT":
        serving = {"port": str(server.port)}
    doc = json.loads((tmp_path / "data" / SERVING).read_text())
    (tmp_path / "data" / SERVING).write_text(json.dumps({**doc, **serving}), encoding="utf-8")
    run = cli("checkout", receipt("n-1"), "--json")
    assert run.code == 0 and run.json()["receiptId"] == "n-1", run.err
    assert server.requests == [] and outbox_here(cli) == 1


@pytest.mark.parametrize("shape", ["[]", '"serving"', "7", '{"pid": 1}', "\xff"])
def test_a_serving_file_that_is_no_document_of_it_is_not_used(
    scripted: Scripted, cli: CLI, tmp_path: Path, shape: str
) -> None:
    server = scripted(http_answer(200, {"sent": True}))
    (tmp_path / "data" / SERVING).write_bytes(shape.encode("latin-1"))
    run = cli("quote", receipt("n-2"), "--json")
    assert run.code == 0 and run.json()["receiptId"] == "n-2", run.err
    assert server.requests == []


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("", True),
        ("0", True),
        (" False ", True),
        ("NO", True),
        ("off", True),
        ("1", False),
        ("true", False),
        ("Yes", False),
        ("on", False),
        ("local", False),
    ],
)
def test_the_local_variable_is_read_as_a_boolean_under_any_case_of_its_name(
    scripted: Scripted, cli: CLI, monkeypatch: pytest.MonkeyPatch, value: str, sent: bool
) -> None:
    server = scripted(http_answer(200, {"sent": True}))
    monkeypatch.setenv("tillpoint_cli_local", value)
    run = cli("status", "--json")
    assert run.code == 0, run.err
    assert (run.json() == {"sent": True}) is sent
    assert len(server.requests) == int(sent)


def test_the_last_of_two_spellings_of_the_data_directory_variable_counts(
    tmp_path: Path,
) -> None:
    """As pydantic-settings reads the environment (rev38i): of `TILLPOINT_DATA_DIR` and
    `tillpoint_data_dir`, the one later in the environment; the variable's absence is
    None, not an empty text; with neither, nor a configuration file, the default."""
    script = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "from tillpoint.agent.forward import _env, data_dir_of\n"
        "print(data_dir_of(SimpleNamespace(data_dir=None, config=None)))\n"
        "print(_env('TILLPOINT_NOT_SET'))\n"
    )
    # none of them, nor a configuration file: the default data directory (root's)
    from tillpoint.agent.paths import default_data_dir

    bare = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    run = subprocess.run(
        [sys.executable, "-c", script], env=bare, capture_output=True, text=True, timeout=60
    )
    assert run.stdout.splitlines() == [str(default_data_dir()), "None"], run.stderr
    # `--config` wins over TILLPOINT_CONFIG, as the configuration's own load has it
    flag, named = tmp_path / "flag.toml", tmp_path / "named.toml"
    flag.write_text(f'data_dir = "{tmp_path / "by-flag"}"\n', encoding="utf-8")
    named.write_text(f'data_dir = "{tmp_path / "by-env"}"\n', encoding="utf-8")
    script = script.replace("config=None", f"config={str(flag)!r}")
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**bare, "TILLPOINT_CONFIG": str(named)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.splitlines() == [str(tmp_path / "by-flag"), "None"], run.stderr
    env = {k: v for k, v in os.environ.items() if k.upper() != "TILLPOINT_DATA_DIR"}
    for first, second in [("TILLPOINT_DATA_DIR", "tillpoint_data_dir")] * 2:
        ordered = {first: str(tmp_path / "one"), second: str(tmp_path / "two")}
        run = subprocess.run(
            [sys.executable, "-c", script],
            env={**env, **ordered},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert run.stdout.splitlines() == [str(tmp_path / "two"), "None"], run.stderr
        first, second = second, first


def test_another_users_agent_is_running() -> None:
    """`process_running` of a process this user may not signal (EPERM) is True: a CLI run
    by another user than `tillpoint run`'s forwards. Here the check runs as `nobody`
    (uid 65534, switched to after the import: `nobody` may not read the venv) on pid 1,
    root's: a process of this suite's user could signal it, so no test saw it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a check as another user")
    script = (
        "import os\n"
        "from tillpoint.agent.forward import process_running\n"
        "os.setuid(65534)\n"
        "print(os.geteuid(), process_running(1), process_running(2**22 + 1))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout.split() == ["65534", "True", "False"], run.stderr


def test_publish_writes_the_file_0600_and_removes_only_its_own(tmp_path: Path) -> None:
    """What `tillpoint run` writes: its pid, host, port, a 32-hex instance id (the same
    the HTTP interface checks), the token flag; mode 0600, no temporary file left; its
    remover leaves a file another agent wrote since; `withdraw` removes any."""
    api = SimpleNamespace(instance=b"")
    http = SimpleNamespace(host="127.0.0.1", port=4321, api=api)
    remove = forward.publish(tmp_path, http, token=True)
    path = tmp_path / SERVING
    doc = json.loads(path.read_text())
    assert doc == {
        "pid": os.getpid(),
        "host": "127.0.0.1",
        "port": 4321,
        "instance": api.instance.decode(),
        "token": True,
    }
    assert len(doc["instance"]) == 32 and int(doc["instance"], 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [SERVING]
    second = forward.publish(tmp_path, http, token=False)
    assert json.loads(path.read_text())["instance"] != doc["instance"]
    remove()  # the first agent's remover: the file is the second's
    assert path.exists()
    second()
    assert not path.exists()
    second()  # twice, or with no file: nothing to say
    forward.publish(tmp_path, http, token=False)
    forward.withdraw(tmp_path)
    assert not path.exists()
    forward.withdraw(tmp_path)
    # a file that cannot be written: the agent serves all the same, and removes nothing
    assert forward.publish(tmp_path / "nowhere", http, token=False)() is None
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- forward: the text output

RESULT = {
    "receiptId": "p-1",
    "card": {"status": "UNKNOWN"},
    "mode": "OFFLINE",
    "lines": [],
    "totalMinor": 0,
    "discountMinor": 0,
    "redeemedPoints": 0,
    "payableMinor": 0,
    "earnedPoints": 0,
    "balance": None,
    "printedOffers": ["o-7"],
    "heldOut": [],
}
QUEUED = "offers queued for printing: o-7"
NOT_PRINTED = "offers picked, not printed (no coupon printer configured): o-7"


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (http_answer(200, {"printerState": "DISABLED"}), NOT_PRINTED),
        (http_answer(200, {"printerState": "READY"}), QUEUED),
        (http_answer(503, {"printerState": "DISABLED"}), QUEUED),  # not a status: unknown
        (http_answer(200, {"printerState": None}), QUEUED),
        (http_answer(200, [1]), QUEUED),
        (None, QUEUED),
    ],
)
def test_whether_the_offers_print_is_the_running_agents_printer(
    scripted: Scripted, cli: CLI, status: bytes | None, says: str
) -> None:
    """A result with offers, as text: its printer's state asked of the agent
    (`GET /v1/status`), "not printed" only when it says DISABLED; nothing asked for
    `--json`, nor for a result without offers."""

    def answer(head: bytes, body: bytes) -> bytes | None:
        return status if head.startswith(b"GET /v1/status ") else http_answer(200, RESULT)

    server = scripted(answer)
    run = cli("checkout", receipt("p-1"))
    assert run.code == 0 and run.out.splitlines()[-1] == says, run.out
    assert [r[0].split(b" ")[1] for r in server.requests] == [b"/v1/checkout", b"/v1/status"]
    assert cli("checkout", receipt("p-1"), "--json").code == 0
    server.answer = http_answer(200, {**RESULT, "printedOffers": []})
    assert cli("checkout", receipt("p-1")).code == 0
    assert len(server.requests) == 4


# ---------------------------------------------------------------- forward: reading an answer


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}", (200, b"{}")),
        (b"HTTP/1.1 404\r\n\r\n{}", (404, b"{}")),  # no reason, no length: to the end
        (b"HTTP/1.1 200 OK\r\nContent-Length:  2 \r\n\r\n{}TRAILING", (200, b"{}")),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", (200, b"")),
        (b"HTTP/1.1 200 OK\r\nX: a:b\r\ncontent-length: 1\r\n\r\n{", (200, b"{")),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\ncontent-length: 1\r\n\r\n"
            b"a;ext=1\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n",
            (200, b"0123456789!"),
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", (200, b"")),
        (  # sizes in hex: "10" is 16 bytes
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10\r\n0123456789abcdef\r\n0\r\n\r\n",
            (200, b"0123456789abcdef"),
        ),
    ],
)
def test_an_answer_is_read_by_its_length_or_its_chunks(
    raw: bytes, parsed: tuple[int, bytes]
) -> None:
    assert forward._parse_response(raw) == parsed


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK",
        b"HTTP/2 200 OK\r\n\r\n{}",
        b"HTTP/1.1\r\n\r\n{}",
        b"HTTP/1.1 2x0 OK\r\n\r\n{}",
        b"ICY 200 OK\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ],
)
def test_an_answer_cut_or_not_http_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        forward._parse_response(raw)


# ---------------------------------------------------------------- forward: a real agent


def test_a_checkout_whose_answer_a_stopped_agent_holds_is_retried_not_run_twice(
    running: Path,  # noqa: F811 (the fixture imported above)
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real `tillpoint run` stopped (SIGSTOP) after the CLI connected: the kernel takes
    the request, no answer comes in the CLI's wait (cut to 3 s here, 40 s as shipped):
    exit 1, "retry with the same receiptId", and the ledger untouched by the CLI. The
    agent continued (SIGCONT), the retry under the same id answers the one checkout,
    counted once. Texts the edge words as the CLI does are forwarded and said the same
    (a fiscal document of 65 characters, past its own limit of 64)."""
    pid = json.loads((running / SERVING).read_text())["pid"]
    monkeypatch.setattr(forward, "ANSWER_TIMEOUT_S", 3.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        lost = cli("checkout", receipt("k-1", redeemPoints=100), "--json")
        assert lost.code == 1 and lost.out == "", lost.err
        assert lost.err == (
            "tillpoint: the running agent did not answer (timed out): "
            "retry with the same receiptId\n"
        )
        assert outbox_here(cli) == 0  # not run here
    finally:
        os.kill(pid, signal.SIGCONT)
    monkeypatch.setattr(forward, "ANSWER_TIMEOUT_S", 40.0)
    again = cli("checkout", receipt("k-1", redeemPoints=100), "--json")
    assert again.code == 0 and again.json()["redeemedPoints"] > 0, again.err
    assert cli("checkout", receipt("k-1", redeemPoints=100), "--json").out == again.out
    status = cli("status", "--json").json()
    assert status["outboxDepth"] == 1 and status["lastSeq"] == 1, status
    balance = cli("balance", "2770000000017", "--json").json()
    assert balance == cli("balance", "2770000000017", "--json", "--local").json()
    held = cli("hold", receipt("k-2"), "--json")
    assert held.code == 0, held.err
    fwd = cli("confirm", "k-2", "--fiscal", "F" * 65)
    local = cli("confirm", "k-2", "--fiscal", "F" * 65, "--local")
    assert fwd == local and fwd.code == 2 and "at most 64" in fwd.err, (fwd, local)


# ---------------------------------------------------------------- the gRPC client


class _Failing:
    """A `PosAgent` servicer on a real gRPC server on loopback: each call is recorded (its
    request's bytes, its metadata, the deadline's time left) and fails with `code` while
    `fails` lasts, then answers (Status: a device id; Confirm, Balance, Cancel, Checkout:
    the empty message)."""

    def __init__(self, code: Any = None, fails: int = 0, details: str = "agent away") -> None:
        import grpc
        from tillpoint.v1 import tillpoint_pb2 as pb
        from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

        self.code, self.fails, self.details = code, fails, details
        self.calls: list[tuple[str, bytes, dict[str, str], float | None]] = []
        servicer = self

        class Servicer(pb_grpc.PosAgentServicer):  # type: ignore[misc]
            def Status(self, request: Any, context: Any) -> Any:
                servicer.seen("Status", request, context)
                return pb.Status(device_id="till-9", last_seq=2**40)

            def Confirm(self, request: Any, context: Any) -> Any:
                servicer.seen("Confirm", request, context)
                return pb.CheckoutResult()

            def Cancel(self, request: Any, context: Any) -> Any:
                servicer.seen("Cancel", request, context)
                return pb.CheckoutResult()

            def Balance(self, request: Any, context: Any) -> Any:
                servicer.seen("Balance", request, context)
                return pb.Balance()

            def Checkout(self, request: Any, context: Any) -> Any:
                servicer.seen("Checkout", request, context)
                return pb.CheckoutResult()

        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_PosAgentServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def seen(self, method: str, request: Any, context: Any) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append((method, request.SerializeToString(), metadata, context.time_remaining()))
        if self.fails > 0:
            self.fails -= 1
            context.abort(self.code, self.details)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def failing() -> Iterator[Callable[..., _Failing]]:
    made: list[_Failing] = []

    def make(*args: Any, **kwargs: Any) -> _Failing:
        made.append(_Failing(*args, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.server.stop(0).wait()


class _Edge:
    """A `random.Random` whose `uniform(a, b)` is always `b` (or always `a`)."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize("code_name", ["UNAVAILABLE", "DEADLINE_EXCEEDED"])
def test_a_retryable_failure_is_sent_again_the_same_after_a_growing_wait(
    failing: Callable[..., _Failing], code_name: str
) -> None:
    """UNAVAILABLE and DEADLINE_EXCEEDED: the same request sent again, at most `attempts`
    in all; the n-th retry waits between half and all of min(cap, backoff × 2ⁿ⁻¹)."""
    import grpc
    from tillpoint.client import PosAgentClient

    code = getattr(grpc.StatusCode, code_name)
    for high, waits in [(True, [0.1, 0.2, 0.3, 0.3]), (False, [0.05, 0.1, 0.15, 0.15])]:
        server = failing(code, fails=4)
        slept: list[float] = []
        with PosAgentClient(
            server.address,
            timeout=30,
            attempts=5,
            backoff=0.1,
            backoff_cap=0.3,
            rng=_Edge(high),  # type: ignore[arg-type]
            sleep=slept.append,
        ) as till:
            assert till.confirm("k-1", "FD-1") == {
                **till.confirm("k-1", "FD-1"),
                "receiptId": "",
            }
            assert slept == pytest.approx(waits) and till.retries == 4
        sent = {body for method, body, _, _ in server.calls}
        assert len(server.calls) == 6 and len(sent) == 1  # one request, sent again whole


@pytest.mark.parametrize(
    "code_name",
    ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "INTERNAL", "RESOURCE_EXHAUSTED"],
)
def test_a_refusal_is_raised_at_once(failing: Callable[..., _Failing], code_name: str) -> None:
    import grpc
    from tillpoint.client import ClientError, PosAgentClient

    server = failing(getattr(grpc.StatusCode, code_name), fails=1, details="no, and why")
    slept: list[float] = []
    with PosAgentClient(server.address, timeout=30, sleep=slept.append) as till:
        with pytest.raises(ClientError) as refused:
            till.status()
        assert (refused.value.code.name, refused.value.message) == (code_name, "no, and why")
        assert refused.value.attempts == 1 and str(refused.value) == f"{code_name}: no, and why"
        assert slept == [] and till.retries == 0 and len(server.calls) == 1
        assert till.status()["deviceId"] == "till-9"  # the next call goes on


def test_the_last_attempt_is_the_last_and_says_how_many(failing: Callable[..., _Failing]) -> None:
    """`attempts` in all (not one more, not one fewer); a failure without details says its
    status' name; `retries` counts over the client's life."""
    import grpc
    from tillpoint.client import ClientError, PosAgentClient

    server = failing(grpc.StatusCode.UNAVAILABLE, fails=100, details="")
    slept: list[float] = []
    with PosAgentClient(server.address, timeout=30, attempts=3, sleep=slept.append) as till:
        for n in (1, 2):
            with pytest.raises(ClientError) as failed:
                till.status()
            assert failed.value.code == grpc.StatusCode.UNAVAILABLE
            assert failed.value.attempts == 3 and failed.value.message == "unavailable"
            assert len(server.calls) == 3 * n and till.retries == 2 * n
        assert len(slept) == 4
    server.fails = 2
    with PosAgentClient(server.address, timeout=30, attempts=3, sleep=slept.append) as till:
        assert till.status()["deviceId"] == "till-9"  # the third attempt answers
    once = failing(grpc.StatusCode.UNAVAILABLE, fails=1)
    with PosAgentClient(once.address, timeout=30, attempts=1, sleep=slept.append) as till:
        with pytest.raises(ClientError) as failed:
            till.status()
        assert failed.value.attempts == 1 and len(once.calls) == 1


def test_every_call_has_its_deadline_and_the_token(failing: Callable[..., _Failing]) -> None:
    """The client's `timeout` on every call, a call's own `timeout` instead when given;
    the token as `authorization: Bearer …`, none without one; the request's fields: an
    optional one left out when not given, int64 answers as ints, every field present."""
    from tillpoint.client import PosAgentClient
    from tillpoint.v1 import tillpoint_pb2 as pb

    server = failing()
    with PosAgentClient(server.address, timeout=30, token="s3cret") as till:
        status = till.status()
        assert status["lastSeq"] == 2**40 and status["outboxDepth"] == 0
        assert status["deviceId"] == "till-9" and status["lastError"] == ""
        till.status(timeout=600)
        till.balance("2770000000017")
        till.balance("2770000000017", at="2026-11-23T08:00:00Z")
        till.confirm("k-1")
        till.cancel("k-1")
    with PosAgentClient(server.address, timeout=30) as till:
        till.status()
    left = [call[3] for call in server.calls]
    assert all(t is not None for t in left)
    assert 10 < left[0] <= 31 and 300 < left[1] <= 601 and 10 < left[-1] <= 31, left
    tokens = [call[2].get("authorization") for call in server.calls]
    assert tokens == ["Bearer s3cret"] * 6 + [None]
    requests = {
        n: (method, body) for n, (method, body, _, _) in enumerate(server.calls) if n in (2, 3, 4)
    }
    assert pb.BalanceRequest.FromString(requests[2][1]) == pb.BalanceRequest(card="2770000000017")
    at = pb.BalanceRequest.FromString(requests[3][1])
    assert at.HasField("at") and at.at == "2026-11-23T08:00:00Z"
    confirm = pb.ConfirmRequest.FromString(requests[4][1])
    assert confirm.receipt_id == "k-1" and not confirm.HasField("fiscal_document")


@pytest.mark.parametrize(
    "settings",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"backoff": 0},
        {"backoff": -0.1},
        {"backoff": 0.5, "backoff_cap": 0.4},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": 10**400},
    ],
    ids=repr,
)
def test_a_client_set_up_wrong_is_refused(settings: dict[str, Any]) -> None:
    from tillpoint.client import PosAgentClient

    with pytest.raises(ValueError):
        PosAgentClient("127.0.0.1:1", **settings)


def test_the_edges_of_the_settings_are_taken(failing: Callable[..., _Failing]) -> None:
    """One attempt, a cap equal to the backoff, a tiny timeout: a client; a call's own
    timeout of 0 or NaN is refused before anything is sent; a method this tillpoint.v1
    lacks is UNIMPLEMENTED, nothing sent."""
    import grpc
    from tillpoint.client import ClientError, PosAgentClient

    server = failing()
    with PosAgentClient(
        server.address, attempts=1, backoff=0.2, backoff_cap=0.2, timeout=1e-3
    ) as till:
        with PosAgentClient(server.address, timeout=30) as other:
            for bad in (0, -1.0, float("nan")):
                with pytest.raises(ValueError):
                    other.status(timeout=bad)
            with pytest.raises(ClientError) as missing:
                other.call("Unheard", {})
            assert missing.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert "PosAgent.Unheard" in missing.value.message
            with pytest.raises(ClientError) as no_method:  # the stub's, not an RPC's
                other.call("__init__", {})
            assert no_method.value.code == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(ClientError) as bad_json:
                other.call("Status", {"nope": 1})
            assert bad_json.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert bad_json.value.message.startswith("StatusRequest: ")
        assert till.attempts == 1 and server.calls == []


def test_the_connection_window_is_the_timeout_in_whole_milliseconds() -> None:
    """`grpc.min_reconnect_backoff_ms`: the client's timeout rounded up to a millisecond,
    at least 100 ms, at most gRPC's largest (2³¹ − 1)."""
    from tillpoint.agent.client import CHANNEL_OPTIONS, channel_options

    def window(seconds: float) -> int:
        options = channel_options(seconds)
        assert options[: len(CHANNEL_OPTIONS)] == CHANNEL_OPTIONS
        assert options[-1][0] == "grpc.min_reconnect_backoff_ms"
        return options[-1][1]

    assert [window(s) for s in (2.0, 0.1234, 0.1, 0.0999, 0.001)] == [2000, 124, 100, 100, 100]
    assert window(10**7) == 2**31 - 1 and window(2**31 / 1000 - 0.001) == 2**31 - 1
    assert window(2_147_483.5) == 2_147_483_500
    assert dict(CHANNEL_OPTIONS) == {
        "grpc.enable_retries": 0,
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }


def test_close_closes_the_clients_own_channel_only(failing: Callable[..., _Failing]) -> None:
    import grpc
    from tillpoint.client import ClientError, PosAgentClient

    server = failing()
    channel = grpc.insecure_channel(server.address)
    try:
        with PosAgentClient(server.address, channel=channel, timeout=30) as till:
            till.status()
        with PosAgentClient(server.address, channel=channel, timeout=30) as again:
            assert again.status()["deviceId"] == "till-9"  # the caller's channel: open
    finally:
        channel.close()
    own = PosAgentClient(server.address, timeout=30)
    own.close()
    with pytest.raises(ClientError) as closed:
        own.status()
    assert closed.value.code == grpc.StatusCode.CANCELLED


def test_a_default_client_waits_out_the_units_restart() -> None:
    """With its defaults a call to an agent that does not listen is tried 8 times and waits
    at least 3.55 s in all (each wait at its shortest): the shipped unit starts a stopped
    agent again after `RestartSec` (2 s), then it starts. Until review 59 the defaults, 4
    attempts, gave up after 0.35-0.7 s of waits: a POS's checkout during a restart
    failed UNAVAILABLE. The waits are recorded, not slept."""
    import grpc
    from tillpoint.client import ClientError, PosAgentClient

    unit = (Path(__file__).parents[1] / "packaging" / "tillpoint.service").read_text()
    restart_s = float(next(ln for ln in unit.splitlines() if ln.startswith("RestartSec="))[11:-1])
    for high, total in [(False, 3.55), (True, 7.1)]:
        slept: list[float] = []
        till = PosAgentClient(
            f"127.0.0.1:{free_port()}",
            rng=_Edge(high),  # type: ignore[arg-type]
            sleep=slept.append,
        )
        with till, pytest.raises(ClientError) as failed:
            till.checkout(receipt("u-1"))
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        assert failed.value.attempts == 8 and till.retries == 7
        assert sum(slept) == pytest.approx(total)
        assert max(slept) == pytest.approx(2.0 if high else 1.0)  # the cap, or half of it
    assert restart_s == 2 and restart_s + 1.5 <= 3.55
