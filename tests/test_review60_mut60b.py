"""Review 60 (mut60b): the rules of the CLI's forward to the running agent
(`agent/forward.py`) and of the typed gRPC client (`agent/client.py`) that mutation
testing found no test holding, in the functions review 59 (mut59a) left unrun
(docs/DECISIONS.md, "Review 60 (mut60b)").

The forward is driven in this process (`main`, the suite's `cli` fixture) against review
59's scripted loopback server (`scripted`: each request recorded, the answer a test
gives), imported from `tests/test_review59_mut59a.py`; the client against that file's
real gRPC servicer on 127.0.0.1 (`failing`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.client import ClientError
from tillpoint.agent.limits import REQUEST_MAX_BYTES

from .conftest import CLI, Run, grpc_served, receipt
from .test_review59_mut59a import (  # noqa: F401 (the fixtures `scripted`, `failing`, …)
    Scripted,
    _Failing,
    _forwarding,
    failing,
    http_answer,
    scripted,
)


def run_here(*args: str) -> Run:
    """The CLI in this process without `--data-dir` (the environment and the current
    directory decide)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Run(code, out.getvalue(), err.getvalue())


def _no_data_dir_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper() in ("TILLPOINT_DATA_DIR", "TILLPOINT_CONFIG"):
            monkeypatch.delenv(key)


# ---------------------------------------------------------------- forward: where it goes


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_data_directory_is_refused_not_forwarded_to_the_current_one(
    scripted: Scripted,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    blank: str,
) -> None:
    """An empty `TILLPOINT_DATA_DIR` (a script's unset variable) or `data_dir = ""` in
    the file is refused by the configuration (exit 2, nothing run). The forward took it
    for the current directory: a command run from a data directory an agent serves (a
    support engineer's `cd /var/lib/tillpoint`) was sent to that agent, a checkout
    committed there, where the local run refuses it."""
    server = scripted(http_answer(200, {"sent": True}))
    data = tmp_path / "data"
    monkeypatch.chdir(data)
    _no_data_dir_variable(monkeypatch)
    monkeypatch.setenv("TILLPOINT_DATA_DIR", blank)
    r = tmp_path / "r.json"
    r.write_text(json.dumps(receipt("b-1")), encoding="utf-8")
    for args in (("status", "--json"), ("checkout", str(r), "--json")):
        run = run_here(*args)
        assert (run.code, run.out) == (2, ""), (args, run)
        assert run.err == (
            "tillpoint: config: data_dir must not be empty (set by TILLPOINT_DATA_DIR)\n"
        )
    _no_data_dir_variable(monkeypatch)
    conf = tmp_path / "till.toml"
    conf.write_text(f'data_dir = "{blank}"\n', encoding="utf-8")
    for args in (("status", "--json"), ("checkout", str(r), "--json")):
        run = run_here("--config", str(conf), *args)
        assert (run.code, run.out) == (2, ""), (args, run)
        assert run.err.startswith("tillpoint: config: data_dir must not be empty"), run.err
    assert server.requests == []
    # the same directory named: sent
    assert run_here("--data-dir", ".", "status", "--json").out.startswith('{"sent": true}')
    assert len(server.requests) == 1


# ---------------------------------------------------------------- forward: what is sent


def _stdin(monkeypatch: pytest.MonkeyPatch, raw: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))


def test_standard_input_past_4_mib_is_refused_and_at_4_mib_sent_whole(
    scripted: Scripted,  # noqa: F811 (the fixture imported above)
    cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`quote -`: the forward reads standard input as much as `read_json` reads (4 MiB and
    one byte) and puts it back: one byte over 4 MiB is refused as the local run refuses
    it (exit 2, nothing sent); a document of exactly 4 MiB, its last byte its closing
    brace, is sent whole (put back one byte short, its brace was lost: "not valid JSON";
    put back at 4 MiB, the one over was cut to a valid document and sent)."""
    server = scripted(http_answer(200, {"sent": True}))
    doc = json.dumps(receipt("i-1"))
    _stdin(monkeypatch, (doc + " " * (REQUEST_MAX_BYTES + 1 - len(doc))).encode())
    run = cli("quote", "-", "--json")
    assert (run.code, run.out) == (2, ""), run
    assert run.err == "tillpoint: -: the request is larger than 4 MiB (4194304 bytes): refused\n"
    assert server.requests == []
    _stdin(monkeypatch, (" " * (REQUEST_MAX_BYTES - len(doc)) + doc).encode())
    run = cli("quote", "-", "--json")
    assert (run.code, run.out, run.err) == (0, '{"sent": true}\n', ""), run
    assert server.requests[0][1] == json.dumps(receipt("i-1"), separators=(",", ":")).encode()


def test_a_file_is_sent_in_utf_8_not_escaped(
    scripted: Scripted,  # noqa: F811 (the fixture imported above)
    cli: CLI,
) -> None:
    """The body is the file's JSON compact, its text as UTF-8 (a receipt id in Cyrillic is
    2 bytes a letter, not a 6-byte `\\uXXXX` escape: the agent reads the same bytes a
    POS would send, and a document the CLI reads within 4 MiB stays within the edge's)."""
    server = scripted(http_answer(200, {"sent": True}))
    doc = receipt("чек-1")
    assert cli("checkout", doc, "--json").code == 0
    sent = server.requests[0][1]
    assert sent == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    assert "чек-1".encode() in sent


def test_the_serving_agents_pid_is_checked_without_a_signal(
    scripted: Scripted,  # noqa: F811 (the fixture imported above)
    cli: CLI,
    tmp_path: Path,
) -> None:
    """Whether the agent of `serving.json` runs is asked with signal 0, which delivers
    nothing: a process named there that a hang-up would end (a stand-in: `run` logs and
    ignores SIGHUP, so each forwarded call would have written a line in the till's log)
    is still running after the calls, which were sent."""
    import subprocess
    import sys

    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        server = scripted(http_answer(200, {"sent": True}), pid=stand_in.pid)
        for _ in range(2):
            assert cli("status", "--json").out == '{"sent": true}\n'
        assert len(server.requests) == 2
        assert stand_in.poll() is None
    finally:
        stand_in.kill()
        stand_in.wait()


# ---------------------------------------------------------------- the gRPC client


# what grpcio cannot send (a letter beyond ASCII, a NUL, a line end inside); one the agent
# cannot have but gRPC carries (a blank inside, over 512) is sent as before (review 60,
# rev60: an agent without a token takes it; tests/test_review60_rev60.py)
BAD_TOKENS = ["s3crét", "s3\x00cret", "s3\ncret"]
# blanks and line ends around it, a file's newline: no part of it, as the agent reads it
AROUND = ["s3cret\n", "s3cret\r\n", " s3cret", "\ts3cret ", "s3cret"]


def test_a_token_read_from_a_file_is_sent_and_one_no_agent_has_refused(agent: Any) -> None:
    """`PosAgentClient(token=…)`: a token read from a file with its newline (or a letter
    beyond ASCII) failed every call with `ClientError` INTERNAL "Invalid metadata"
    (grpcio's), which a POS reads as "a bug in tillpoint, sell without loyalty"
    (docs/INTEGRATION.md). Blanks and line ends around it are now no part of it, as the
    agent reads the header (`bearer_matches`): the call is answered; a token gRPC cannot
    carry (no agent's either: `config.Token`) is refused when the client is made
    (ValueError with the rule), as its other settings are. The longest token and every
    printable character are taken."""
    import grpc
    from pydantic import TypeAdapter, ValidationError
    from tillpoint.agent.config import Token
    from tillpoint.client import PosAgentClient

    rule = TypeAdapter(Token)
    for bad in BAD_TOKENS:
        with pytest.raises(ValueError, match="printable ASCII"):
            PosAgentClient("127.0.0.1:1", token=bad)
        with pytest.raises(ValidationError):  # the agent's rule: no agent has it
            rule.validate_python(bad)
    printable = "".join(map(chr, range(0x21, 0x7F)))
    for good, sent in [("s3cret", AROUND), (printable, [printable]), ("t" * 512, ["t" * 512])]:
        assert rule.validate_python(good) == good
        with grpc_served(agent, token=good) as port:
            for token in sent:
                with PosAgentClient(f"127.0.0.1:{port}", token=token, timeout=30) as till:
                    assert till.status()["deviceId"] == "till-1", repr(token)
            with PosAgentClient(f"127.0.0.1:{port}", token="", timeout=30) as till:
                with pytest.raises(ClientError) as refused:
                    till.status()
                assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_confirm_sends_its_fiscal_document(failing: Callable[..., _Failing]) -> None:  # noqa: F811
    """`confirm(receipt_id, fiscal_document)`: the document in the request's
    `fiscalDocument` (a confirm without one sends none: review 59's test); the answer is
    the agent's result as JSON, every field present."""
    from tillpoint.client import PosAgentClient
    from tillpoint.v1 import tillpoint_pb2 as pb

    server = failing()
    with PosAgentClient(server.address, timeout=30) as till:
        answer = till.confirm("k-1", "ФД-0001")
        assert answer["receiptId"] == "" and answer["lines"] == []
    method, body, _, _ = server.calls[0]
    sent = pb.ConfirmRequest.FromString(body)
    assert (method, sent.receipt_id, sent.fiscal_document) == ("Confirm", "k-1", "ФД-0001")
    assert sent.HasField("fiscal_document")


def test_a_callers_channel_of_another_kind_is_taken_as_open(
    failing: Callable[..., _Failing],  # noqa: F811 (the fixture imported above)
) -> None:
    """`channel=`: one grpcio cannot be asked its state without connecting (an intercepted
    channel, a POS's logging or tracing) is taken as open, not refused as closed, and its
    calls pass through its interceptor; `close` leaves it to its owner."""
    import grpc
    from tillpoint.client import PosAgentClient

    seen: list[str] = []

    class Logged(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, call: Any, details: Any, request: Any) -> Any:
            seen.append(details.method)
            return call(details, request)

    server = failing()
    with grpc.insecure_channel(server.address) as plain:
        channel = grpc.intercept_channel(plain, Logged())
        with PosAgentClient(server.address, channel=channel, timeout=30) as till:
            assert till.status()["deviceId"] == "till-9"
        with PosAgentClient(server.address, channel=channel, timeout=30) as again:
            assert again.status()["deviceId"] == "till-9"
    assert seen == ["/tillpoint.v1.PosAgent/Status"] * 2


def test_a_request_refused_before_it_is_sent_is_a_first_attempt(
    failing: Callable[..., _Failing],  # noqa: F811 (the fixture imported above)
) -> None:
    """A request the client refuses itself (a field this `tillpoint.v1` lacks, a method it
    lacks) is `ClientError` at its first attempt (`attempts` 1, as a refusal the agent
    gives at once), nothing sent, no retry counted; its message is the first line of
    protobuf's reason after the message's name."""
    import grpc
    from tillpoint.client import PosAgentClient

    server = failing()
    with PosAgentClient(server.address, timeout=30) as till:
        with pytest.raises(ClientError) as bad_json:
            till.call("Status", {"nope": 1})
        assert bad_json.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_json.value.message == (
            'StatusRequest: Message type "tillpoint.v1.StatusRequest" has no field named'
            ' "nope" at "StatusRequest".'
        )
        assert bad_json.value.attempts == 1
        with pytest.raises(ClientError) as missing:
            till.call("Unheard", {})
        assert (missing.value.code, missing.value.attempts) == (grpc.StatusCode.UNIMPLEMENTED, 1)
        assert till.retries == 0 and server.calls == []
