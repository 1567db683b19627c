"""Review 31 (rev31c): a second read of the command line's front door after cli31 —
CONTRACT §10. Every documented invocation form still parses as it did at the session's
start (checked against 140d9d3 over ~50,000 argv forms; the table below keeps the ones a
till, a POS script or a test harness writes); the usage errors the new pre-check or the
narrowed "goes after --" hint say are said of the word that is wrong; numbers JSON allows
read as before; a data directory named in UTF-8 outside ASCII (Cyrillic) is taken from
`--data-dir`, `TILLPOINT_DATA_DIR` and the configuration file alike."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cli
from tillpoint.agent.errors import InputError

from .conftest import receipt as receipt_doc
from .conftest import snapshot

EXE = Path(sys.executable).parent / "tillpoint"
T = "2026-11-24T12:30:00+03:00"


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """What `main` makes of `argv` before it opens anything: the namespace, or the exit
    code of a usage error and its stderr."""
    monkeypatch.setattr(sys, "argv", ["tillpoint", *argv])  # the hint reads sys.argv
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            words = cli._scanned_text_last(argv)
            parser = cli.build_parser(words)
            vars(parser)["argv"] = list(words)
            return cli._parse(parser, words), err.getvalue()
        except SystemExit as exc:
            return exc.code, err.getvalue()


# (argv, what the namespace holds): the forms of README.md, docs/INTEGRATION.md,
# docs/CONTRACT.md and the scenario runner, and values that look like commands or options.
FORMS: list[tuple[list[str], dict[str, Any]]] = [
    (
        ["--data-dir", "D", "balance", "2770000000017", "--at", T, "--json"],
        {"command": "balance", "card": "2770000000017", "at": T, "json": True, "data_dir": "D"},
    ),
    (["balance", "balance", "--at", "balance"], {"card": "balance", "at": "balance"}),
    (["balance", "--at", T, "status"], {"command": "balance", "card": "status", "at": T}),
    (["--data-dir", "balance", "balance", "status"], {"data_dir": "balance", "card": "status"}),
    (["--data-dir", "balance/till", "status", "--json"], {"data_dir": "balance/till"}),
    (["--data-dir=status", "status"], {"command": "status", "data_dir": "status"}),
    (["--config", "confirm", "confirm", "r1"], {"config": "confirm", "receipt_id": "r1"}),
    (["--data", "D", "status"], {"command": "status", "data_dir": "D"}),
    (["--conf", "C", "config", "check"], {"config": "C", "config_command": "check"}),
    (["status", "--data-dir", "D", "--data-dir", "E"], {"data_dir": "E"}),
    (["--data-dir", "Данные/касса", "status"], {"data_dir": "Данные/касса"}),
    (
        ["--json", "--data-dir", "D", "identify", "2770000000017"],
        {"json": True, "text": "2770000000017"},
    ),
    (["--data-dir", "D", "--json", "status"], {"command": "status", "json": True}),
    (["--json", "--local", "status"], {"json": True, "local": True}),
    (["identify", "-277-000-000-0017", "--json"], {"text": "-277-000-000-0017", "json": True}),
    (["identify", "--", "-2770000000017-"], {"text": "-2770000000017-"}),
    (["identify", "+7 916 123-45-67", "--json"], {"text": "+7 916 123-45-67"}),
    (["identify", "balance"], {"command": "identify", "text": "balance"}),
    (["balance", "-2770000000017-", "--at", T], {"card": "-2770000000017-", "at": T}),
    (["scan", "quote"], {"command": "scan", "text": "quote"}),
    (["quote", "checkout", "--explain", "--json"], {"file": "checkout", "explain": True}),
    (["quote", "-", "--json"], {"command": "quote", "file": "-"}),
    (["--json", "--explain", "quote", "r.json"], {"json": True, "explain": True}),
    (["quote", "--exp", "r.json", "--js"], {"explain": True, "json": True, "file": "r.json"}),
    (["quote", "--", "--json"], {"file": "--json", "json": False}),
    (["checkout", "--data-dir", "D", "r.json"], {"file": "r.json", "data_dir": "D"}),
    (["checkout", "r.json", "--data-dir", "D"], {"file": "r.json", "data_dir": "D"}),
    (["hold", "hold", "--explain"], {"command": "hold", "file": "hold", "explain": True}),
    (["refund", "-", "--local"], {"command": "refund", "file": "-", "local": True}),
    (["confirm", "r1", "--fiscal", "confirm", "--json"], {"receipt_id": "r1", "fiscal": "confirm"}),
    (["confirm", "--fiscal", "FD-0001", "r1"], {"receipt_id": "r1", "fiscal": "FD-0001"}),
    (["confirm", "r1", "--fisc", "F", "--fiscal=G"], {"fiscal": "G"}),
    (["confirm", "--", "-r1"], {"receipt_id": "-r1"}),
    (["cancel", "status", "--json"], {"command": "cancel", "receipt_id": "status"}),
    (["snapshot", "load", "snapshot", "--json"], {"snapshot_command": "load", "file": "snapshot"}),
    (["snapshot", "load", "-", "--data-dir", "D"], {"file": "-", "data_dir": "D"}),
    (["--config", "C", "config", "check", "--json"], {"config_command": "check", "json": True}),
    (["reset", "--yes", "--force"], {"command": "reset", "yes": True, "force": True}),
    (["--data-dir", "hub", "hub", "status"], {"command": "hub", "data_dir": "hub"}),
    (["sync", "now", "--timeout", "60"], {"command": "sync"}),
    (["demo", "--export", "X"], {"command": "demo"}),
    (["print", "preview", "result.json", "--offers", "snapshot.json"], {"command": "print"}),
]


@pytest.mark.parametrize(("argv", "held"), FORMS, ids=[" ".join(a) for a, _ in FORMS])
def test_every_documented_form_parses_as_at_the_sessions_start(
    argv: list[str], held: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: the pre-check cli31 put before argparse reads only what precedes the
    command; a value that is a command's name (a card "status", a file "checkout", a data
    directory "balance/till"), `-`, `--` then a dashed text, options between positional
    arguments, shortened options and flags before the command parse as they did."""
    args, err = _parse(argv, monkeypatch)
    assert isinstance(args, argparse.Namespace), err
    got = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    assert {k: got.get(k) for k in held} == held


# (argv, stderr): usage errors, exit 2, said of the word that is wrong.
ERRORS: list[tuple[list[str], str]] = [
    (  # cli31's case: the option with its value before the command
        ["--at", T, "balance", "2770000000017"],
        f"tillpoint: unrecognized arguments: --at {T}; --at goes after the command:"
        " tillpoint balance ... --at (see `tillpoint balance --help`)\n",
    ),
    (
        ["--data-dir", "D", "--fiscal", "F", "confirm", "r1"],
        "tillpoint: unrecognized arguments: --fiscal F; --fiscal goes after the command:"
        " tillpoint confirm ... --fiscal (see `tillpoint confirm --help`)\n",
    ),
    (  # `--data-dir $UNSET --at T balance CARD`: the data directory has no value
        ["--data-dir", "--at", T, "balance", "2770000000017"],
        "tillpoint: argument --data-dir: expected one argument (see `tillpoint --help`)\n",
    ),
    (
        ["--config", "--fiscal", "F", "confirm", "r1"],
        "tillpoint: argument --config: expected one argument (see `tillpoint --help`)\n",
    ),
    (  # a flag before the command is taken (CONTRACT §10): the extra word is the fault
        ["--json", "status", "extra"],
        "tillpoint: unrecognized arguments: extra (see `tillpoint status --help`)\n",
    ),
    (
        ["--data-dir", "D", "--json", "--explain", "quote", "r.json", "more.json"],
        "tillpoint: unrecognized arguments: more.json (see `tillpoint quote --help`)\n",
    ),
    (  # a scanned dashed text argparse left unplaced keeps its hint
        ["--at=" + T, "balance", "2770000000017", "-5x"],
        f"tillpoint: unrecognized arguments: --at={T} -5x; --at={T} goes after the command:"
        f" tillpoint balance ... --at={T}; a text that starts with a dash goes after --: -- -5x"
        " (see `tillpoint balance --help`)\n",
    ),
    (
        ["--json", "quote", "r.json", "-5x"],
        "tillpoint: unrecognized arguments: -5x; a text that starts with a dash goes after"
        " --: -- -5x (see `tillpoint quote --help`)\n",
    ),
    (
        ["confirm", "-12x"],
        "tillpoint: the following arguments are required: RECEIPT_ID; a text that starts"
        " with a dash goes after --: -- -12x (see `tillpoint confirm --help`)\n",
    ),
]


@pytest.mark.parametrize(("argv", "said"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_a_usage_error_names_the_word_that_is_wrong(
    argv: list[str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10: a usage error is exit 2 and one line a person understands. After
    cli31's pre-check, `--data-dir --at T balance CARD` (a script's unset variable) said
    "--at goes after the command" where argparse said the data directory had no value; a
    flag before the command (which CONTRACT §10 takes) was blamed for another word ("--json
    extra; --json goes after the command"), and the narrowed hint missed a dashed text
    written just before a ";"."""
    code, err = _parse(argv, monkeypatch)
    assert (code, err) == (2, said)


def test_numbers_json_allows_read_as_before_and_nan_is_not_json() -> None:
    """CONTRACT §10: the NaN change touched only NaN/Infinity: `-0` is 0, a number with an
    exponent (`1e5`, `1E-7`) is refused as before, naming where it is, and NaN is "not
    valid JSON" naming the file."""
    assert cli.parse_json(b'{"a": -0, "b": [0, -1]}', "r.json") == {"a": 0, "b": [0, -1]}
    for text, where in (("1e5", "a"), ("1E-7", "a"), ("-0.0", "a")):
        with pytest.raises(InputError) as exc:
            cli.parse_json(f'{{"a": {text}}}'.encode(), "r.json")
        assert str(exc.value).startswith(f"{where}: the number {text} ")
    with pytest.raises(InputError, match=r"^r\.json: not valid JSON \(NaN is not a JSON number\)$"):
        cli.parse_json(b'{"a": NaN, "b": 1.5}', "r.json")
    with pytest.raises(InputError, match=r"^a: the number 1.5 has a decimal point"):
        cli.parse_json(b'{"a": 1.5, "b": NaN}', "r.json")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_CLI_LOCAL="1", **extra)
    return env


def _tp(*args: Any, env: dict[str, str]) -> Any:
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize("given", ["option", "environment", "config"])
def test_a_cyrillic_data_directory_is_taken_from_each_place_that_names_it(
    tmp_path: Path, given: str
) -> None:
    """CONTRACT §10: the non-UTF-8 refusal (cli31) refuses bytes that are not UTF-8, not
    a name outside ASCII: a till's `Данные кассы` works from `--data-dir`,
    `TILLPOINT_DATA_DIR` or `data_dir` in the configuration file."""
    data = tmp_path / "Данные кассы" / "касса-1"
    snap = tmp_path / "снимок.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    sale = tmp_path / "чек.json"
    sale.write_text(json.dumps(receipt_doc("r-1")), encoding="utf-8")
    env, where = _env(), []
    if given == "option":
        where = ["--data-dir", str(data)]
    elif given == "environment":
        env = _env(TILLPOINT_DATA_DIR=str(data))
    else:
        config = tmp_path / "настройки.toml"
        config.write_text(f'data_dir = "{data}"\n', encoding="utf-8")
        where = ["--config", str(config)]
    loaded = _tp(*where, "snapshot", "load", snap, "--json", env=env)
    assert loaded.returncode == 0, loaded.stderr
    sold = _tp(*where, "checkout", sale, "--json", env=env)
    assert sold.returncode == 0 and sold.stderr == b""
    status = _tp(*where, "status", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["lastSeq"] == 1
    assert (data / "cache.db").is_file()
