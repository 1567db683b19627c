"""Review 27 (cli27): the command line as a support engineer and a POS script use it
(docs/CONTRACT.md §10): usage errors, help, where a bad setting came from, the text form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import CLI, receipt, snapshot
from .test_cli_forward import SilentAgent, silent_agent  # noqa: F401 (a fixture)


@pytest.mark.parametrize("args", [("snapshot",), ("config",), ("snapshot", "--json")])
def test_a_command_without_its_action_is_a_usage_error_that_changes_nothing(
    cli: CLI, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """docs/CONTRACT.md §10: `tillpoint snapshot` (no `load`) made the data directory, its
    cache, ledger and phone key before it said "snapshot needs an action", and a broken
    configuration was reported instead of the usage."""
    bad = tmp_path / "bad.toml"
    bad.write_text("x =\n", encoding="utf-8")
    run = cli("--config", str(bad), *args)
    assert run.code == 2 and run.out == ""
    assert "needs an action" in run.err or "unrecognized" in run.err, run.err
    assert f"tillpoint {args[0]} --help" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_an_empty_config_flag_is_refused_as_an_empty_data_dir_is(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §10: `--config ""` (a script's unset variable) said "cannot read
    config .: Is a directory"."""
    run = cli("--config", "", "status", "--json")
    assert run.code == 2 and run.out == ""
    assert "--config" in run.err and "must not be empty" in run.err, run.err
    assert not (tmp_path / "data").exists()


def test_a_directory_named_as_the_input_file_is_said_plainly(cli: CLI, tmp_path: Path) -> None:
    """docs/CONTRACT.md §10: "cannot read it ([Errno 21] Is a directory: 'adir')"."""
    folder = tmp_path / "adir"
    folder.mkdir()
    for command in ("quote", "checkout", "hold", "refund"):
        run = cli(command, str(folder), "--json")
        assert run.code == 2 and run.out == ""
        assert run.err == f"tillpoint: {folder}: cannot read it (Is a directory)\n", run.err


@pytest.mark.parametrize("value", ["false", "FALSE", "no", "off", "0", ""])
def test_cli_local_variable_reads_false_as_false(
    cli: CLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    silent_agent: SilentAgent,  # noqa: F811  (the fixture imported above)
) -> None:
    """docs/CONTRACT.md §10: TILLPOINT_CLI_LOCAL=false (or no, off) ran the command in the
    CLI process, as 1 does: an environment boolean is true/false, 1/0, yes/no, on/off."""
    assert cli("snapshot", "load", snapshot()).code == 0
    silent = silent_agent(tmp_path / "data")
    monkeypatch.setenv("TILLPOINT_CLI_LOCAL", value)
    cli("quote", receipt("f-1"), "--json")  # sent to the (silent) agent, then priced here
    assert silent.requests == 1


@pytest.mark.parametrize("value", ["1", "true", "Yes", "on"])
def test_cli_local_variable_true(
    cli: CLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    silent_agent: SilentAgent,  # noqa: F811  (the fixture imported above)
) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    silent = silent_agent(tmp_path / "data")
    monkeypatch.setenv("TILLPOINT_CLI_LOCAL", value)
    assert cli("quote", receipt("t-1"), "--json").code == 0
    assert silent.requests == 0


def test_a_bad_setting_names_the_variable_or_the_file_it_came_from(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: "config: hub.redeem_timeout_ms Input should be greater than 0"
    sent an engineer to a TOML file that did not say it (the unit's Environment= did)."""
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "0")
    run = cli("status", "--json")
    assert run.code == 2 and run.out == ""
    assert "hub.redeem_timeout_ms" in run.err and "TILLPOINT_HUB__REDEEM_TIMEOUT_MS" in run.err
    monkeypatch.delenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS")
    conf = tmp_path / "till.toml"
    conf.write_text("[hub]\nredeem_timeout_ms = 0\n", encoding="utf-8")
    run = cli("--config", str(conf), "status", "--json")
    assert run.code == 2 and "hub.redeem_timeout_ms" in run.err and str(conf) in run.err
    monkeypatch.setenv("TILLPOINT_SERVER__LISTEN", "10.0.0.1:50061")  # a table's own check
    run = cli("status", "--json")
    assert run.code == 2 and "TILLPOINT_SERVER__LISTEN" in run.err, run.err
    assert len(run.err.strip().splitlines()) == 1


def test_a_data_dir_of_another_type_in_the_file_is_said_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`data_dir = 5` said "Input is not a valid path for <class 'pathlib.Path'>"."""
    from tillpoint.agent.cli import main

    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    monkeypatch.delenv("TILLPOINT_DATA_DIR", raising=False)
    conf = tmp_path / "till.toml"
    conf.write_text("data_dir = 5\n", encoding="utf-8")
    assert main(["--config", str(conf), "status", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "data_dir" in err and "a string" in err, err
    assert "class" not in err


@pytest.mark.parametrize(
    ("args", "helped"),
    [
        (("quote", "a.json", "b.json"), "quote"),
        (("identify", "1", "2"), "identify"),
        (("status", "extra"), "status"),
        (("snapshot", "load", "a", "b"), "snapshot load"),
        (("config", "check", "x"), "config check"),
    ],
)
def test_an_extra_argument_points_at_the_command_s_own_help(
    cli: CLI, args: tuple[str, ...], helped: str
) -> None:
    """`tillpoint quote a.json b.json` said "(see `tillpoint --help`)", whose page lists
    the commands, not what quote takes."""
    run = cli(*args)
    assert run.code == 2 and run.out == ""
    assert "unrecognized arguments" in run.err
    assert f"(see `tillpoint {helped} --help`)" in run.err, run.err


def test_help_names_the_arguments_as_the_contract_does(cli: CLI) -> None:
    """docs/CONTRACT.md §10 writes `identify TEXT`, `balance CARD [--at TIME]`, `confirm
    RECEIPT_ID [--fiscal DOC]`, `quote FILE`."""
    wanted = {
        "identify": ["TEXT"],
        "balance": ["CARD", "--at TIME"],
        "confirm": ["RECEIPT_ID", "--fiscal DOC"],
        "quote": ["FILE"],
        "checkout": ["FILE"],
        "refund": ["FILE"],
        "hold": ["FILE"],
        "cancel": ["RECEIPT_ID"],
    }
    for command, words in wanted.items():
        run = cli(command, "--help")
        assert run.code == 0
        usage = run.out.split("\n\n")[0]
        for word in words:
            assert word in usage, (command, usage)
    snap = cli("snapshot", "load", "--help")
    assert "FILE" in snap.out.split("\n\n")[0]


def test_the_text_balance_shows_the_points_that_expire(cli: CLI) -> None:
    """docs/CONTRACT.md §16: `balance --json` lists `expiring`; the text form, what a
    support engineer reads when a customer asks where their points went, left it out."""
    snap = snapshot()
    snap["customers"][0]["expiring"] = [
        {"points": 300, "expiresAt": "2026-12-31T23:59:59+03:00"},
    ]
    assert cli("snapshot", "load", snap).code == 0
    card = snap["cards"][0]["number"]
    at = "2026-11-23T10:00:00+03:00"
    doc = cli("balance", card, "--at", at, "--json").json()
    assert doc["expiring"] == [{"points": 300, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    text = cli("balance", card, "--at", at)
    assert text.code == 0
    assert "300 expire 2026-12-31T23:59:59+03:00" in text.out, text.out
    assert len(text.out.strip().splitlines()) == 1
    plain = json.loads(json.dumps(doc))
    assert plain["availablePoints"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ("quote", "-", "--json"),
        ("checkout", "-", "--json"),
        ("hold", "-", "--json"),
        ("refund", "-", "--json"),
        ("quote", "-", "--json", "--local"),
        ("snapshot", "load", "-", "--json"),
    ],
)
def test_standard_input_closed_is_bad_input_not_an_internal_error(
    cli: CLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    silent_agent: SilentAgent,  # noqa: F811  (the fixture imported above)
) -> None:
    """docs/CONTRACT.md §10: `tillpoint quote - <&-` (a script or a service with standard
    input closed: Python's sys.stdin is None) said "internal error: AttributeError:
    'NoneType' object has no attribute 'read'", exit 1, forwarded to a running agent too."""
    assert cli("snapshot", "load", snapshot()).code == 0
    silent_agent(tmp_path / "data")  # an agent serves: the forwarded path reads it first
    monkeypatch.setattr("sys.stdin", None)
    run = cli(*args)
    assert run.code == 2 and run.out == ""
    assert run.err == "tillpoint: -: standard input is closed: name the file instead\n", run.err
    (tmp_path / "data" / "serving.json").unlink()
    assert cli("status", "--json").json()["outboxDepth"] == 0


def test_reset_without_yes_and_standard_input_closed_asks_for_yes(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tillpoint reset <&-` said "internal error: AttributeError", exit 1."""
    assert cli("snapshot", "load", snapshot()).code == 0
    monkeypatch.setattr("sys.stdin", None)
    run = cli("reset")
    assert run.code == 2 and "add --yes to confirm" in run.err, run.err
    assert cli("status", "--json").json()["cacheVersion"] == snapshot()["version"]


def _main_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str, stdout: object, stderr: object
) -> int:
    from tillpoint.agent.cli import main

    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    return main(["--data-dir", str(tmp_path / "data"), *args])


@pytest.mark.parametrize("args", [("status", "--json"), ("--version",), ("identify", "1")])
def test_a_closed_standard_output_is_worded_as_a_full_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """docs/CONTRACT.md §10: `tillpoint status --json >&-` (stdout closed: sys.stdout is
    None) said "internal error: AttributeError: 'NoneType' object has no attribute
    'write'"; a full stdout says "the output could not be written"."""
    import io

    err = io.StringIO()
    code = _main_with(monkeypatch, tmp_path, *args, stdout=None, stderr=err)
    assert code == 1
    assert err.getvalue() == (
        "tillpoint: the output could not be written: standard output is closed"
        " (what the command did stands)\n"
    ), err.getvalue()


def test_a_closed_standard_error_keeps_stdout_for_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tillpoint quote missing.json --json 2>&-`: with stderr closed (None), print() wrote
    the error line to stdout, where a script reads the one JSON document."""
    import io

    out = io.StringIO()
    code = _main_with(
        monkeypatch,
        tmp_path,
        "quote",
        str(tmp_path / "missing.json"),
        "--json",
        stdout=out,
        stderr=None,
    )
    assert code == 2 and out.getvalue() == ""


def test_balance_on_a_till_with_no_snapshot_says_so(cli: CLI) -> None:
    """docs/CONTRACT.md §10: on a till with no snapshot loaded, `balance` of the chain's
    card said "card … is not known to this till" (as if the card were wrong); it is still
    refused (exit 2, HTTP 404) and now says why every card is unknown here."""
    card = snapshot()["cards"][0]["number"]
    run = cli("balance", card, "--json")
    assert run.code == 2 and run.out == ""
    shown = "*" * (len(card) - 4) + card[-4:]  # masked as the logs mask it (review 39)
    assert run.err == (
        f"tillpoint: card {shown} is not known to this till: no snapshot is loaded yet"
        " (tillpoint snapshot load FILE, or let the till reach its hub)\n"
    ), run.err
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("balance", card, "--json").code == 0
    assert cli("balance", "2770000000093").err == (
        "tillpoint: card *********0093 is not known to this till\n"
    )


def test_an_option_of_the_command_given_before_it_says_where_it_goes(cli: CLI) -> None:
    """`tillpoint --at=T balance CARD` (the usage line reads `tillpoint [--data-dir DIR] ...
    COMMAND`, and a script writer puts options first) said only "unrecognized arguments:
    --at=T", though balance takes it. (Review 29: a flag such as `--json` or `--local`
    given before the command is now read as after it, tests/test_review29_spec29.py.)"""
    run = cli("--at=2026-11-23T10:15:00+03:00", "balance", "2770000000017")
    assert run.code == 2 and run.out == ""
    assert "goes after the command: tillpoint balance ... --at=" in run.err, run.err
    assert "(see `tillpoint balance --help`)" in run.err
    run = cli("--local", "identify", "1")
    assert run.code == 0 and run.out.startswith("UNKNOWN"), (run.out, run.err)
    run = cli("status", "--frobnicate")
    assert "goes after" not in run.err and "unrecognized arguments: --frobnicate" in run.err


def test_a_found_card_without_a_first_name_reads_cleanly(cli: CLI) -> None:
    """A customer row without `firstName` printed "FOUND  (customer c-1, tier gold)"."""
    snap = snapshot()
    snap["customers"][0].pop("firstName", None)
    assert cli("snapshot", "load", snap).code == 0
    run = cli("identify", snap["cards"][0]["number"])
    assert run.code == 0 and run.out.startswith("FOUND (customer "), run.out
