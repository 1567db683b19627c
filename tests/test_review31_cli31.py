"""Review 31 (cli31): CONTRACT §10, the command line as a test writer drives it — a real
`tillpoint` process on a real data directory, every command and option in the ways a
script writes them; the forwarded path (a `tillpoint run` serving the directory) answers
with the same bytes, exit codes and stderr as the local one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.forward import SERVING

from .conftest import free_port, snapshot
from .conftest import receipt as receipt_doc

EXE = Path(sys.executable).parent / "tillpoint"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_CLI_LOCAL="1", **extra)
    return env


def _tp(*args: Any, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [EXE, *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env or _env(),
        timeout=60,
        check=False,
    )


def _one_line(err: bytes) -> str:
    text = err.decode("utf-8")
    assert text.startswith("tillpoint: ") and text.endswith("\n") and text.count("\n") == 1
    assert "Traceback" not in text
    return text


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    assert _tp("--data-dir", data, "snapshot", "load", snap).returncode == 0
    return data


@pytest.mark.parametrize(
    ("before", "command", "option"),
    [
        (["--at", "2026-11-24T00:00:00Z"], ["balance", "2770000000017"], "--at"),
        (["--fiscal", "F-1"], ["confirm", "r1"], "--fiscal"),
    ],
)
def test_an_option_with_its_value_before_the_command_is_said_to_go_after_it(
    data: Path, before: list[str], command: list[str], option: str
) -> None:
    """CONTRACT §10: an option with a value given before the command is a usage error,
    exit 2, naming where it goes. `--at=T balance CARD` said so; `--at T balance CARD`
    (the form a script writes) said "invalid choice: '2026-11-24T00:00:00Z' (choose from
    'snapshot', …)", as if the time were a misspelt command."""
    run = _tp("--data-dir", data, *before, *command, "--json")
    assert run.returncode == 2 and run.stdout == b""
    err = _one_line(run.stderr)
    assert "invalid choice" not in err
    assert f"{option} goes after the command: tillpoint {command[0]} ... {option}" in err


@pytest.mark.parametrize("command", [["status", "--json"], ["snapshot", "load", "-"]])
def test_a_data_directory_whose_name_is_not_utf8_is_refused_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """CONTRACT §10: a data directory an operator must mend is exit 2, one line. A name
    that is not UTF-8 (bytes a Latin-1 shell wrote) said "internal error: OperationalError:
    Could not decode to UTF-8 column 'file' …", exit 1, after making the directory and a
    cache in it that no later call could open."""
    data = os.fsencode(tmp_path) + b"/till-\xff"
    run = subprocess.run(
        [os.fsencode(EXE), b"--data-dir", data, *(w.encode() for w in command)],
        input=json.dumps(snapshot()).encode(),
        capture_output=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and run.stdout == b""
    err = _one_line(run.stderr)
    assert "internal error" not in err and "UTF-8" in err
    assert not os.path.exists(data)  # refused before it was made


def test_a_negative_value_an_option_refuses_gets_no_hint_to_put_it_after_dashes(
    tmp_path: Path,
) -> None:
    """CONTRACT §10: a usage error is one line a person understands. `demo --speed -1`
    (an option's value argparse took, then refused as out of range) ended "a text that
    starts with a dash goes after --: -- -1", and `demo --speed -- -1` is no better: the
    hint is for a scanned text argparse took for an option, which still gets it."""
    run = _tp("--data-dir", tmp_path / "data", "demo", "--speed", "-1")
    assert run.returncode == 2 and run.stdout == b""
    err = _one_line(run.stderr)
    assert "a pause from 0 to 60 seconds" in err and "goes after --" not in err
    scanned = _tp("--data-dir", tmp_path / "data", "confirm", "-2770000000017-", "--json")
    assert scanned.returncode == 2
    assert "a text that starts with a dash goes after --: -- -2770000000017-" in (
        _one_line(scanned.stderr)
    )


def test_a_fiscal_document_with_a_control_character_is_refused_naming_the_call(
    data: Path, tmp_path: Path
) -> None:
    """CONTRACT §10/§11: a text confirm refuses names the call and the field, as its
    length is ("confirm: fiscalDocument is too long …"); a line break in it said
    "fiscalDocument: must not contain …", with no call. The hold stays open."""
    held = tmp_path / "h.json"
    held.write_text(json.dumps(receipt_doc("h-1")), encoding="utf-8")
    assert _tp("--data-dir", data, "hold", held, "--json").returncode == 0
    run = _tp("--data-dir", data, "confirm", "h-1", "--fiscal", "FD\n1", "--json")
    assert run.returncode == 2 and run.stdout == b""
    assert _one_line(run.stderr) == (
        "tillpoint: confirm: fiscalDocument must not contain control characters"
        " (a line break, a tab, a NUL, ...)\n"
    )
    done = _tp("--data-dir", data, "confirm", "h-1", "--fiscal", "FD 1", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "CONFIRMED"


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("latin.jsonl", b'{"customer": {"id": "c-\xe9", "balancePoints": 1}}\n', "not UTF-8 text"),
        ("latin.json", b'{"customers": [{"id": "c-\xe9"}]}', "not UTF-8 text"),
        ("comma.jsonl", b'{"customer": {"id": "c-1",}}\n', "at line 1 column 27"),
        ("open.json", b'{"customers": [}', "at line 1 column 16"),
        ("empty.json", b"", "at line 1 column 1"),
    ],
)
def test_hub_import_says_what_is_wrong_with_a_file_that_is_not_json(
    tmp_path: Path, name: str, content: bytes, said: str
) -> None:
    """CONTRACT §10: a one-line message a person understands. `hub import` of a JSON Lines
    file with a Latin-1 byte said "line 1: not valid JSON (utf-8)" (the codec's name), a
    JSON file "('utf-8' codec can't decode byte 0xe9 in position 23: invalid continuation
    byte)", and a syntax error json's "(char 25)"; the agent's reader says "not UTF-8
    text" and "… at line L column C": the hub says the same. Nothing is imported."""
    hub = ["--data-dir", tmp_path / "data", "hub"]
    where = ["--hub-dir", tmp_path / "hub"]
    assert _tp(*hub, "init", *where).returncode == 0
    bad = tmp_path / name
    bad.write_bytes(content)
    run = _tp(*hub, "import", *where, bad, "--json")
    assert run.returncode == 2 and run.stdout == b""
    err = _one_line(run.stderr)
    assert "not valid JSON (" in err and said in err
    assert "codec" not in err and "(char " not in err
    status = _tp(*hub, "status", *where, "--json")
    assert json.loads(status.stdout)["draftRows"] == 0


def test_an_option_given_twice_counts_the_last_time_and_a_long_one_may_be_shortened(
    data: Path,
) -> None:
    """CONTRACT §10 (decided in review 31, the contract being silent): an option given
    twice counts the last time, a flag twice is given, a long option may be shortened
    while it names one option (argparse's reading); `tillpoint` with no command is a usage
    error whose help goes to stderr (exit 2)."""
    card = "2770000000017"
    good, bad = "2026-11-24T00:00:00Z", "yesterday"
    last_good = _tp("--data-dir", data, "balance", card, "--at", bad, "--at", good, "--json")
    assert last_good.returncode == 0 and last_good.stderr == b""
    assert set(json.loads(last_good.stdout)) >= {"availablePoints", "pendingPoints"}
    last_bad = _tp("--data-dir", data, "balance", card, "--at", good, "--at", bad, "--json")
    assert last_bad.returncode == 2 and b'"yesterday"' in last_bad.stderr
    short = _tp("--data-dir", data, "balance", card, "--a", good, "--js", "--json")
    assert short.returncode == 0 and short.stdout == last_good.stdout
    bare = _tp("--data-dir", data)
    assert bare.returncode == 2 and bare.stdout == b"" and bare.stderr.startswith(b"usage:")
    assert b"Traceback" not in bare.stderr


def _ledger(data: Path) -> str:
    """The ledger's content (its SQL dump): equal before and after a refused call."""
    with contextlib.closing(sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True)) as db:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()


@pytest.mark.slow
def test_a_refused_call_reads_the_same_forwarded_and_local(data: Path, tmp_path: Path) -> None:
    """CONTRACT §10: while `tillpoint run` serves the data directory, a call is forwarded
    to it and answered with the same exit code, the same one line on stderr and nothing on
    stdout as the same call run locally (`TILLPOINT_CLI_LOCAL=1`); the ledger is left as
    it was either way. Each way a test writer gives bad input, once each way."""
    files = tmp_path / "in"
    files.mkdir()

    def put(name: str, content: bytes | dict[str, Any]) -> Path:
        path = files / name
        raw = content if isinstance(content, bytes) else json.dumps(content).encode()
        path.write_bytes(raw)
        return path

    good = receipt_doc("r-1")
    cases: list[list[Any]] = [
        ["quote", files / "missing.json", "--json"],
        ["checkout", files, "--json"],
        ["hold", put("empty.json", b""), "--json"],
        ["quote", put("latin.json", b'{"receiptId": "\xe9"}'), "--json"],
        ["checkout", put("extra.json", {**good, "extra": 1}), "--json"],
        ["hold", put("long.json", {**good, "receiptId": "x" * 129}), "--json"],
        ["checkout", put("nolines.json", {**good, "lines": []}), "--json"],
        ["quote", put("array.json", b"[]"), "--json"],
        ["refund", put("refund.json", {"refundId": "f", "receiptId": "nope", "lines": []})],
        ["confirm", "nope", "--fiscal", "F" * 65, "--json"],
        ["confirm", "nope", "--json"],
        ["cancel", "nope", "--json"],
        ["identify", "7" * 129, "--json"],
        ["balance", "123", "--json"],
        ["balance", "2770000000017", "--at", "", "--json"],
        ["--at", "2026-11-24T00:00:00Z", "balance", "2770000000017", "--json"],
        ["quote", put("good.json", good), "--jsn"],
    ]
    local = [_tp("--data-dir", data, *case) for case in cases]
    before = _ledger(data)
    conf = tmp_path / "till.toml"
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    env = _env(TILLPOINT_HTTP__LISTEN="127.0.0.1:0")
    del env["TILLPOINT_CLI_LOCAL"]
    agent = subprocess.Popen(
        [EXE, "--config", conf, "--data-dir", data, "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (data / SERVING).exists():
            assert agent.poll() is None and time.monotonic() < deadline, "run never served"
            time.sleep(0.05)
        shown = _tp("--data-dir", data, "status", env=env).stdout.decode()
        assert "agent: not running" not in shown  # the calls below are forwarded
        for case, alone in zip(cases, local, strict=True):
            served = _tp("--data-dir", data, *case, env=env)
            assert (served.returncode, served.stdout, served.stderr) == (
                alone.returncode,
                alone.stdout,
                alone.stderr,
            ), case
            assert served.returncode == 2 and served.stdout == b"", case
            _one_line(served.stderr)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    assert _ledger(data) == before


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_a_file_is_not_valid_json_naming_the_file(
    data: Path, tmp_path: Path, word: str
) -> None:
    """CONTRACT §10: malformed JSON is exit 2 and a clear message. A `NaN` (Python's reader
    takes it; JSON has no such number) said "NaN is not a valid JSON number", naming
    neither the file nor "not valid JSON" as every other malformed file is said
    ("r.json: not valid JSON (…)")."""
    bad = tmp_path / "r.json"
    bad.write_text(
        json.dumps(receipt_doc("r-nan", redeemPoints=0)).replace(
            '"redeemPoints": 0', f'"redeemPoints": {word}'
        ),
        encoding="utf-8",
    )
    run = _tp("--data-dir", data, "quote", bad, "--json")
    assert run.returncode == 2 and run.stdout == b""
    assert _one_line(run.stderr) == (
        f"tillpoint: {bad}: not valid JSON ({word} is not a JSON number)\n"
    )
