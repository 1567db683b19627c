"""Review 32 (rev32c): an adversarial second read of the session's operational and
command-line changes (CONTRACT §10, §12, §17), with real processes: the command line's
words after `--` (compared with the session's start, 4362ba0, over ~8,800 argv forms);
a support engineer's `sqlite3` shell open on a fresh till's plain `cache.db` while the
first full snapshot replaces it (the -wal/-shm removal); `checkout --explain` retried at
the HTTP and gRPC doors after a refund and after the card was blocked."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cli
from tillpoint.agent.service import Agent

from .conftest import REPO, posagent_stub, receipt, snapshot

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))
SNAPSHOT = REPO / "examples" / "snapshot.json"


# ------------------------------------------------ §10: what follows `--` is never an option


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """What `main` makes of `argv` before it opens anything: the namespace, or the exit
    code of a usage error and its stderr (as tests/test_review31_rev31c.py reads it)."""
    monkeypatch.setattr(sys, "argv", ["tillpoint", *argv])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            words = cli._scanned_text_last(argv)
            parser = cli.build_parser(words)
            vars(parser)["argv"] = list(words)
            return cli._parse(parser, words), err.getvalue()
        except SystemExit as exc:
            return exc.code, err.getvalue()


AFTER_DASHES: list[tuple[list[str], str]] = [
    (  # at 4362ba0 refused; review 32's shortened flags took it for --explain
        ["quote", "--", "r.json", "--exp"],
        "tillpoint: unrecognized arguments: --exp (see `tillpoint quote --help`)\n",
    ),
    (
        ["status", "--", "--js"],
        "tillpoint: unrecognized arguments: -- --js (see `tillpoint status --help`)\n",
    ),
    (  # after the command already: no "goes after the command"
        ["confirm", "r1", "--", "--fisc", "F"],
        "tillpoint: unrecognized arguments: --fisc F (see `tillpoint confirm --help`)\n",
    ),
    (
        ["confirm", "r1", "--", "--fiscal", "F"],
        "tillpoint: unrecognized arguments: --fiscal F (see `tillpoint confirm --help`)\n",
    ),
    (
        ["identify", "--", "-x", "--d", "D"],
        "tillpoint: unrecognized arguments: --d D (see `tillpoint identify --help`)\n",
    ),
    (
        ["hold", "-", "--", "--c", "C"],
        "tillpoint: unrecognized arguments: --c C (see `tillpoint hold --help`)\n",
    ),
]


@pytest.mark.parametrize(("argv", "said"), AFTER_DASHES, ids=[" ".join(a) for a, _ in AFTER_DASHES])
def test_a_word_after_double_dash_is_never_taken_or_placed_as_an_option(
    argv: list[str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: `--` ends the options (`tillpoint identify -- -2770000000017-` is the
    documented way to give a dashed text). Review 32's shortened flags before the command
    also took a shortened word written after `--` as a flag when it was left over
    (`tillpoint quote -- r.json --exp` quoted with explain; refused at the session's
    start), and a word there naming an option of the command was said to "go after the
    command", where it already was. Now such a word is an extra word, exit 2, named as
    given."""
    code, err = _parse(argv, monkeypatch)
    assert (code, err) == (2, said)


COMMAND_AS_VALUE: list[tuple[list[str], str]] = [
    (
        ["--at", "balance", "2770000000017"],
        "tillpoint: unrecognized arguments: --at; --at goes after the command:"
        " tillpoint balance ... --at (see `tillpoint balance --help`)\n",
    ),
    (
        ["--exp", "demo"],
        "tillpoint: unrecognized arguments: --exp; --export goes after the command:"
        " tillpoint demo ... --export (see `tillpoint demo --help`)\n",
    ),
    (  # the value given: named with it, as before
        ["--at", "T", "balance", "2770000000017"],
        "tillpoint: unrecognized arguments: --at T; --at goes after the command:"
        " tillpoint balance ... --at (see `tillpoint balance --help`)\n",
    ),
]


@pytest.mark.parametrize(
    ("argv", "said"), COMMAND_AS_VALUE, ids=[" ".join(a) for a, _ in COMMAND_AS_VALUE]
)
def test_an_option_with_no_value_before_the_command_is_named_without_the_command(
    argv: list[str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: an option with a value given before the command is named with its
    value; when the next word is the command itself (`tillpoint --at balance CARD`), the
    command is no value of it: "unrecognized arguments: --at balance" named the command
    as the wrong word (since rev31c, and for the shortened names of review 32)."""
    code, err = _parse(argv, monkeypatch)
    assert (code, err) == (2, said)


@pytest.mark.parametrize(
    ("argv", "held"),
    [
        (["--js", "status"], {"json": True}),  # review 32: a shortened flag before the command
        (["--json", "quote", "r.json", "--", "--x"], None),  # the extra word is the fault
        (["quote", "--", "--json"], {"file": "--json", "json": False}),
        # a flag's whole name after `--` and the text is taken, as at the session's start
        (
            ["identify", "--", "-2770000000017-", "--json"],
            {"text": "-2770000000017-", "json": True},
        ),
        (["checkout", "--", "r.json", "--explain"], {"file": "r.json", "explain": True}),
        (["status", "--", "--json"], None),  # argparse's own "unrecognized arguments: --"
        (["--json", "--", "status"], None),
    ],
)
def test_flags_before_the_command_are_still_taken_and_dashes_still_end_options(
    argv: list[str], held: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forms around the fix parse as at the session's start (CONTRACT §10): a flag
    before the command is taken; `--` makes a dashed word a text; a flag's whole name
    written after `--` and the text is taken (a script's `identify -- "$TEXT" --json`);
    an extra word after the text is refused."""
    args, err = _parse(argv, monkeypatch)
    if held is None:
        assert args == 2, err
        return
    assert not isinstance(args, int), err
    assert {k: getattr(args, k) for k in held} == held


# ------------------------------- §10: a sqlite3 shell on the plain cache.db it replaces


def _tp(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILLPOINT_")}
    env["TILLPOINT_DEVICE_ID"] = "till-1"
    return subprocess.run(
        [TILLPOINT, "--data-dir", str(data), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


class _Shell:
    """A `sqlite3` shell process on a file, as a support engineer leaves one open."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            ["sqlite3", "-batch", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def ask(self, sql: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{sql}\n.print --end--\n")
        self.proc.stdin.flush()
        lines = []
        while (line := self.proc.stdout.readline()) and line.strip() != "--end--":
            lines.append(line.strip())
        return lines

    def quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(".quit\n")
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


@pytest.mark.slow  # five CLI processes and a shell: ~10 s on a busy machine
@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 shell")
@pytest.mark.parametrize("reading", [True, False], ids=["mid-read", "idle"])
def test_a_sqlite3_shell_open_on_the_plain_cache_db_through_the_first_full_snapshot(
    tmp_path: Path, reading: bool
) -> None:
    """CONTRACT §10 (a till's data directory; docs/DECISIONS.md, the replaced plain
    `cache.db`): the first full snapshot empties the plain file's -wal, switches, and
    removes its `cache.db-wal`/`-shm` once empty, while a support engineer's `sqlite3`
    shell still has that file open, in a read transaction or idle (its -wal not opened
    yet: it makes a new empty pair under the old names). The shell goes on reading the
    file it has; the new generation is whole; the till answers from it; nothing is left
    beside the data once the shell has quit and the next command opened the cache."""
    data = tmp_path / "d"
    assert _tp(data, "status").returncode == 0
    assert not (data / "cache.db").is_symlink()
    shell = _Shell(data / "cache.db")
    try:
        tables = shell.ask("BEGIN; SELECT count(*) FROM sqlite_master;" if reading else "SELECT 1;")
        assert tables and tables[0].isdigit()
        loaded = _tp(data, "snapshot", "load", str(SNAPSHOT))
        assert loaded.returncode == 0, loaded.stderr
        assert (data / "cache.db").is_symlink()
        if reading:
            assert shell.ask("COMMIT;") == []
        assert shell.ask("PRAGMA quick_check;") == ["ok"]
        assert shell.ask("SELECT count(*) > 0 FROM sqlite_master;") == ["1"]
        ident = _tp(data, "identify", "2770000000017", "--json")
        assert ident.returncode == 0 and json.loads(ident.stdout)["status"] == "FOUND"
    finally:
        shell.quit()
    checked = subprocess.run(
        ["sqlite3", str(data / "cache.db"), "PRAGMA integrity_check; SELECT count(*) FROM cards;"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.stdout.split()[0] == "ok" and int(checked.stdout.split()[1]) > 0, checked
    assert _tp(data, "--local", "status").returncode == 0
    assert sorted(p.name for p in data.iterdir() if p.name.startswith("cache.db-")) == []


# ------------------------- §17: checkout --explain retried, at the HTTP and gRPC doors


FIGURES = ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor", "earnedPoints")


def _http(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_checkout_explain_retried_after_a_refund_and_a_block_at_http_and_grpc(
    tmp_path: Path,
) -> None:
    """CONTRACT §17: a `checkout` retried with `explain` answers the committed result as
    stored, with a trace only when pricing the receipt again gives its figures: after a
    refund of the whole receipt (its own points are left out: the sale's trace), and none
    once the card is blocked (pricing refuses it) — the figures and `seq` stay the
    committed ones at both doors."""
    from google.protobuf.json_format import MessageToDict, ParseDict
    from tillpoint.agent.http_api import HttpServer
    from tillpoint.v1 import tillpoint_pb2 as pb

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    http = HttpServer(agent, "127.0.0.1:0")
    http.start()
    try:
        sale = receipt("c1", redeemPoints=300)
        status, first = _http(http.port, "/v1/checkout", sale)
        assert status == 200 and "trace" not in first
        committed = {k: first[k] for k in (*FIGURES, "seq", "state")}
        status, refunded = _http(
            http.port,
            "/v1/refund",
            {
                "refundId": "rf1",
                "receiptId": "c1",
                "at": sale["at"],
                "lines": [{"sku": line["sku"], "qty": line["qty"]} for line in sale["lines"]],
            },
        )
        assert status == 200, refunded

        def both_doors() -> list[dict[str, Any]]:
            _, by_http = _http(http.port, "/v1/checkout", {**sale, "explain": True})
            with posagent_stub(agent) as stub:
                message = ParseDict({**sale, "explain": True}, pb.Receipt())
                by_grpc = MessageToDict(stub.Checkout(message, timeout=10))
            return [by_http, by_grpc]

        http_answer, grpc_answer = both_doors()
        assert {k: http_answer[k] for k in committed} == committed
        assert "trace" in http_answer and "trace" in grpc_answer
        assert int(grpc_answer["redeemedPoints"]) == committed["redeemedPoints"]
        assert int(grpc_answer["seq"]) == committed["seq"]
        blocked = snapshot(version=2)
        blocked["cards"] = [dict(card, status="BLOCKED") for card in blocked["cards"]]
        agent.load_snapshot(blocked)
        http_answer, grpc_answer = both_doors()
        assert {k: http_answer[k] for k in committed} == committed
        assert "trace" not in http_answer and "trace" not in grpc_answer
        assert int(grpc_answer["redeemedPoints"]) == committed["redeemedPoints"]
        assert int(grpc_answer["seq"]) == committed["seq"]
    finally:
        http.stop()
        agent.close()
