"""Review 52 (mut52c): mutation testing of the command line (agent/cli.py, the contract §10)
and of the one error hierarchy (agent/errors.py, §10-§12). A fault fixed (a usage error's
hint read the words of the caller's process, not the ones `main` was given) and the rules
no test held, pinned: each test here fails on the mutant named in its docstring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CLI, receipt, snapshot
from .test_coupons import COUPONS
from .test_coupons import receipt as coupon_receipt
from .test_coupons import snap as coupon_snapshot

EXE = str(Path(sys.executable).with_name("tillpoint"))
MILK = "4601234000017"
AT = "2026-11-23T10:15:00+03:00"
BORIS = "2770000000024"  # tier base: 3 % accrual, no birthday near the receipts' day


# ------------------------------------------------ a usage error's hint: the words given


def test_a_usage_errors_hint_reads_the_words_main_was_given(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract §10 (review 49's decision: a RECEIPT_ID that starts with a dash is told
    to go after `--`). `_Parser.error` read the hint's words from `sys.argv`: a program
    that runs the CLI in its own process (`main(argv)`: a Python POS, a test) got no hint
    for `confirm -neg`, and a hint naming its own process's words for another command.
    Fails before the fix (the hint missing, then `-- -7x` named)."""
    monkeypatch.setattr(sys, "argv", ["pos.py", "-7x"])  # the caller's own words
    refused = cli("confirm", "-neg")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        "tillpoint: the following arguments are required: RECEIPT_ID; a text that starts"
        " with a dash goes after --: -- -neg (see `tillpoint confirm --help`)\n"
    )
    refused = cli("cancel")
    assert refused.err == (
        "tillpoint: the following arguments are required: RECEIPT_ID"
        " (see `tillpoint cancel --help`)\n"
    )


@pytest.mark.parametrize(
    ("words", "hint"),
    [
        # a shortened option of three characters is still the option (`len(word) > 3`)
        (
            ["confirm", "r1", "--f", "-FD-1"],
            "; a value that starts with a dash is written --f=-FD-1",
        ),
        # the hint names the option the message names, not another word before a dashed
        # one (`len(word) > 2 or ...`: "written hold-7=-x")
        (
            ["confirm", "hold-7", "-x", "--fiscal", "-FD-1"],
            "; a value that starts with a dash is written --fiscal=-FD-1",
        ),
        # a script's `--fiscal $UNSET` after a first --fiscal: no hint of a value that
        # does not start with a dash (`value[:1] == "-" or ...`: "written --fiscal=FD-1")
        (["confirm", "r1", "--fiscal", "FD-1", "--fiscal"], ""),
    ],
)
def test_a_value_that_starts_with_a_dash_is_told_how_to_give_it_only_so(
    cli: CLI, words: list[str], hint: str
) -> None:
    """The contract §10 (review 49, spec49e): "argument --fiscal: expected one argument; a
    value that starts with a dash is written --fiscal=-FD-1"."""
    refused = cli(*words)
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        f"tillpoint: argument --fiscal: expected one argument{hint}"
        " (see `tillpoint confirm --help`)\n"
    )


# ------------------------------------------------------------- the text a person reads


def test_a_refunds_text_says_what_it_gave_and_took_back_and_a_balance_below_zero(
    cli: CLI,
) -> None:
    """`refund FILE` without --json (the contract §6, §10): no test read it. Boris (tier
    base, 3 %, balance set to 0) buys 2 milk at 89,90: 3 % of 179,80 = 5,39 → 5 points;
    one milk back takes 2 (2.5, rounded down): balance 3, no line about zero. Then 10 milk
    (899,00: 26,97 → 26 points, balance 29) and 2 milk paying 29 points (30 % of 179,80
    allows 53), earning 3 % of 150,80 = 4,52 → 4: balance 4. The 10 milk returned take
    their 26 points back: 4 − 26 = −22, "below zero". Fails with either `if` of
    `_human_refund` negated."""
    snap = snapshot()
    snap["customers"][1]["balancePoints"] = 0
    assert cli("snapshot", "load", snap).code == 0
    assert cli("checkout", receipt("r1", card=BORIS), "--json").json()["earnedPoints"] == 5
    half = {"refundId": "f1", "receiptId": "r1", "at": AT, "lines": [{"sku": MILK, "qty": "1"}]}
    run = cli("refund", half)
    assert (run.code, run.err) == (0, "")
    assert run.out == (
        "refund f1 of receipt r1: 0 pts given back, 2 pts taken back\n"
        "balance: 3 pts available, 0 pending\n"
    )
    ten = [{"sku": MILK, "qty": "10", "priceMinor": 8990}]
    assert cli("checkout", receipt("r2", card=BORIS, lines=ten), "--json").code == 0
    paid = cli("checkout", receipt("r3", card=BORIS, redeemPoints=29), "--json").json()
    assert (paid["redeemedPoints"], paid["earnedPoints"]) == (29, 4)
    assert paid["balance"]["availablePoints"] == 4
    whole = {"refundId": "f2", "receiptId": "r2", "at": AT, "lines": [{"sku": MILK, "qty": "10"}]}
    run = cli("refund", whole)
    assert (run.code, run.err) == (0, "")
    assert run.out == (
        "refund f2 of receipt r2: 0 pts given back, 26 pts taken back\n"
        "balance: -22 pts available, 0 pending\n"
        "the balance is now below zero\n"
    )


def test_a_cancelled_holds_codes_read_given_back_and_a_rejected_code_its_reason(
    cli: CLI,
) -> None:
    """§13's verdicts in a result's text (`_human_coupon`): no test read "given back" (a
    cancel gave the hold's codes back) nor an empty code's `""`. Fails with the verdict's
    `if` negated or `given_back` ignored."""
    assert cli("snapshot", "load", coupon_snapshot(coupons=COUPONS)).code == 0
    held = cli("hold", coupon_receipt("h1", "sorry-7k2q9", "NOPE1", "--"))
    assert held.code == 0, held.err
    said = 'coupons: SORRY7K2Q9 applied; NOPE1 rejected (UNKNOWN); "" rejected (UNKNOWN)'
    assert said in held.out.splitlines()
    cancelled = cli("cancel", "h1")
    assert cancelled.code == 0, cancelled.err
    assert "  CANCELLED" in cancelled.out.splitlines()[0]
    said = 'coupons: SORRY7K2Q9 given back; NOPE1 rejected (UNKNOWN); "" rejected (UNKNOWN)'
    assert said in cancelled.out.splitlines()
    sold = cli("checkout", coupon_receipt("c1", "SORRY7K2Q9"))
    assert "coupons: SORRY7K2Q9 applied" in sold.out.splitlines()


def test_config_check_counts_the_other_loose_values_only_when_there_are_some(
    cli: CLI, tmp_path: Path
) -> None:
    """`config check` refuses what `run` takes loosely with the first problem and "(and N
    more problem(s))" (the contract §10). One problem alone was never read whole: with
    `len(loose) >= 1` it said "(and 0 more problem(s))"."""
    one = tmp_path / "one.toml"
    one.write_text('[server]\nmax_workers = "10"\n', encoding="utf-8")
    run = cli("--config", one, "config", "check")
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        f'tillpoint: config {one}: [server] max_workers = "10": an integer is expected,'
        " without quotes\n"
    )
    two = tmp_path / "two.toml"
    two.write_text('[server]\nmax_workers = "10"\n[metrics]\nenabled = 0\n', encoding="utf-8")
    run = cli("--config", two, "config", "check")
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        f'tillpoint: config {two}: [server] max_workers = "10": an integer is expected,'
        " without quotes (and 1 more problem(s))\n"
    )


# ------------------------------------------------------------ `reset` asks on a terminal


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_CLI_LOCAL="1")
    return env


def _reset_on_a_terminal(data: Path, answer: bytes, *args: str) -> tuple[int, str, str]:
    """`tillpoint reset ARGS` with stdin and stderr a real pseudo-terminal, answering the
    question with `answer` once it is asked: (exit code, stdout, what the terminal showed)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [EXE, "--data-dir", str(data), "reset", *args],
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        env=_env(),
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 60
    try:
        while b"[y/N] " not in shown and time.monotonic() < deadline:
            chunk = os.read(master, 4096)  # EIO once the process has closed the terminal
            if not chunk:
                break
            shown += chunk
        os.write(master, answer)
        out, _ = proc.communicate(timeout=60)
        while chunk := os.read(master, 4096):
            shown += chunk
    except OSError:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    return proc.returncode, out.decode(), shown.decode().replace("\r\n", "\n")


def test_reset_on_a_terminal_asks_and_takes_only_yes(cli: CLI, tmp_path: Path) -> None:
    """The contract §10 (`reset` asks on a terminal; a script needs --yes): no test had a
    terminal, so none saw the question, its "and discard 1 unsent transaction(s)" with
    --force, "n" cancelling (exit 2, nothing forgotten) nor " YES " taken."""
    data = tmp_path / "data"  # the `cli` fixture's data directory
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("checkout", receipt(), "--json").code == 0
    question = (
        f"Forget the cache and the ledger of till-1 in {data} and discard 1 unsent"
        " transaction(s)? [y/N] "
    )
    code, out, shown = _reset_on_a_terminal(data, b"n\n", "--force")
    assert (code, out) == (2, "")
    assert shown == f"{question}n\ntillpoint: reset cancelled\n"
    assert cli("status", "--json").json()["outboxDepth"] == 1  # nothing forgotten
    code, out, shown = _reset_on_a_terminal(data, b" YES \n", "--force")
    assert code == 0, shown
    assert out == (
        "the till's cache and ledger are empty; numbering continues;"
        " 1 unsent transaction(s) discarded\n"
    )
    assert shown == f"{question} YES \n"


# ------------------------------------- a committed answer stands through the process's exit

# The `tillpoint` command itself (`main()`, its process's own words), with an exit handler
# that marks the interpreter's exit begun and makes it last: the window after `_main`'s end.
EXITING = """
import atexit, os, sys, time
from tillpoint.agent.cli import main

def exiting():
    with open(os.environ["MARK"], "w") as f:
        f.write("exiting")
    time.sleep(2)

atexit.register(exiting)
raise SystemExit(main())
"""


def test_a_sales_process_ignores_a_stop_through_its_exit(cli: CLI, tmp_path: Path) -> None:
    """The contract §10, §11 (`_AfterAnswer`: the `tillpoint` command's exit follows its
    answer, "the signals stay ignored through it, not handed back"). A SIGTERM during
    the interpreter's exit after a committed sale's answer: exit 0 as the answer said.
    With `end`'s `if self.process_ends` negated the default handler came back and the
    process died -15: only review 37's slow test (a hub, a SIGTERM every 20 ms) saw it;
    this is its twin in the default run."""
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = tmp_path / "sale.json"
    sale.write_text(json.dumps(receipt("r-exit")), encoding="utf-8")
    mark = tmp_path / "mark"
    data = str(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-c", EXITING, "--data-dir", data, "checkout", str(sale), "--json"],
        env={**_env(), "MARK": str(mark)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), proc.poll()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert (proc.returncode, err) == (0, b"")
    assert json.loads(out)["state"] == "CONFIRMED"


def test_status_text_is_one_line_a_field_with_yes_no_and_nothing_for_null(cli: CLI) -> None:
    """`status` without --json (the contract §10: "cache version, queue depth, last sync"):
    one `field: value` line per field of the --json document, in its order, a boolean as
    yes/no, a null as nothing, then the note that no `tillpoint run` serves the directory.
    No test read the lines themselves (`_human_status` answering "" passed, and
    `_human_value` with its `None` test negated printed "cacheVersion: ")."""
    assert cli("snapshot", "load", snapshot()).code == 0
    document = cli("status", "--json").json()
    text = cli("status")
    assert (text.code, text.err) == (0, "")
    lines = text.out.splitlines()
    assert [line.split(":", 1)[0] for line in lines[:-1]] == list(document)
    for said in (
        "deviceId: till-1",
        "cacheVersion: 1",
        "cacheIssuedAt: 2026-11-23T03:00:00Z",
        "outboxDepth: 0",
        "mode: OFFLINE",
        "enrolled: no",
        "lastPullAt: ",
        "lastRefusedSnapshot: ",  # null in the document
        "lastRenumbered: ",
    ):
        assert said in lines, said
    assert lines[-1].startswith("agent: not running (no `tillpoint run` serves ")


def test_a_dashed_card_after_a_flag_given_before_the_command_is_the_text(cli: CLI) -> None:
    """The contract §10 (a flag of the command may be given before it) with §4 (dashes
    of any kind are dropped): `tillpoint --json identify -277-000-000-0017` is Anna's card,
    as `identify -277-000-000-0017 --json` is. With `_command_of`'s `and` made `or`, a flag
    before the command hid it: "the following arguments are required: TEXT"."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for words in (
        ["--json", "identify", "-277-000-000-0017"],
        ["identify", "-277-000-000-0017", "--json"],
        # a flag between the command and the text is no option's value (`_scanned_text_last`
        # with its `and`s made `or` took the text for --json's value and left it to argparse)
        ["identify", "--json", "-277-000-000-0017"],
    ):
        run = cli(*words)
        assert (run.code, run.err) == (0, ""), words
        assert run.json()["customerId"] == "c-a"


def test_main_in_a_callers_process_gives_its_stderr_back_as_it_was() -> None:
    """`main(argv)` leaves the caller's process as it found it (its docstring; review 38,
    rev38i): stderr is the caller's own object again, not tillpoint's `ErrorLines` around
    it (with the unwrapping's `if` negated it stayed wrapped, and each call wrapped it
    once more)."""
    import io

    from tillpoint.agent.cli import main

    mine = io.StringIO()
    before = sys.stderr
    sys.stderr = mine
    try:
        assert main(["--data-dir", "", "status"]) == 2  # bad input: one line on stderr
    except SystemExit as exc:  # argparse's usage error
        assert exc.code == 2
    finally:
        after, sys.stderr = sys.stderr, before
    assert after is mine
    assert mine.getvalue().startswith("tillpoint: argument --data-dir: must not be empty")


def test_a_request_of_exactly_4_mib_on_standard_input_is_taken(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract §10 ("a request larger than 4 MiB" is bad input): exactly 4 MiB
    is not larger. A file of exactly 4 MiB was tested, and stdin only at 4 MiB + 1 and at
    4 KiB: `len(raw) >= limit` refused a 4 MiB quote read from a pipe."""
    import io

    from tillpoint.agent.limits import REQUEST_MAX_BYTES

    assert cli("snapshot", "load", snapshot()).code == 0
    raw = json.dumps(receipt("r-pipe")).encode()
    body = raw + b" " * (REQUEST_MAX_BYTES - len(raw))  # blanks: still the one document
    assert len(body) == 4 * 1024 * 1024
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
    run = cli("quote", "-", "--json")
    assert (run.code, run.err) == (0, "")
    assert run.json()["receiptId"] == "r-pipe"


def test_a_shortened_flag_before_the_command_is_taken_though_also_written_after_dashes(
    cli: CLI, tmp_path: Path
) -> None:
    """The contract §10 (review 32, rev32c: a shortened flag left over after `--` is an
    operand, not taken; one given before the command is taken). A word written on both
    sides of `--` is not an operand (`_after_dashes`: "a word also written before it is
    not one of them"): `tillpoint --js quote -- r.json --js` prints the one document.
    With its `and` made `or`, both were operands: "unrecognized arguments: --js --js"."""
    assert cli("snapshot", "load", snapshot()).code == 0
    sale = tmp_path / "r.json"
    sale.write_text(json.dumps(receipt("r-js")), encoding="utf-8")
    run = cli("--js", "quote", "--", sale, "--js")
    assert (run.code, run.err) == (0, "")
    assert run.json()["receiptId"] == "r-js"
    refused = cli("quote", "--", sale, "--js")  # after `--` only: an operand, refused
    assert (refused.code, refused.out) == (2, "")
    assert refused.err.startswith("tillpoint: unrecognized arguments: --js")


def test_a_top_option_left_without_its_value_is_said_so_though_a_flag_follows(
    cli: CLI,
) -> None:
    """The contract §10: "a top option left without its value (`--data-dir $UNSET --at T
    balance CARD`) is 'argument --data-dir: expected one argument' as argparse says it".
    With a flag after it (`--data-dir $UNSET --json --at T balance CARD`) the flag is no
    value either (`_not_a_value`); taken for one (`word[:2] == "-"`), `--at T` was said to
    go after the command, the data directory's missing value unsaid."""
    refused = cli("--data-dir", "--json", "--at", AT, "balance", "2770000000017")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        "tillpoint: argument --data-dir: expected one argument (see `tillpoint --help`)\n"
    )


# --------------------------------------------------------------- one line, at its edge


def test_a_message_of_exactly_the_maximum_is_whole_and_one_more_is_cut_to_both_ends() -> None:
    """agent/errors.py's `one_line` (every edge's message: "one line of at most about
    MESSAGE_MAX characters", 1,000): a message of exactly 1,000 characters is kept whole
    (`>=` cut it); one of 1,001 keeps 480 characters of each end (1000 // 2 − 20) around
    " …[41 characters]… " (1,001 − 960), 979 in all; a megabyte's keeps the same ends."""
    from tillpoint.agent.errors import MESSAGE_MAX, one_line

    assert MESSAGE_MAX == 1000
    exact = "A" + "x" * 998 + "Z"
    assert one_line(exact) == exact
    over = "A" + "x" * 999 + "Z"
    cut = one_line(over)
    assert cut == "A" + "x" * 479 + " …[41 characters]… " + "x" * 479 + "Z"
    assert len(cut) == 979
    huge = "A" + "x" * 999_998 + "Z"
    assert one_line(huge) == "A" + "x" * 479 + " …[999040 characters]… " + "x" * 479 + "Z"


def test_a_top_option_as_the_last_word_is_said_to_have_no_value(cli: CLI) -> None:
    """`tillpoint --data-dir D --config` (a script's `--config $UNSET` with nothing after
    it): argparse's "argument --config: expected one argument", exit 2. With the check of
    the last word off by one (`i - 1 == len(words)`, `i + 0`), the next word was read
    past the end: "internal error: IndexError", exit 1."""
    refused = cli("--config")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        "tillpoint: argument --config: expected one argument (see `tillpoint --help`)\n"
    )


def test_a_command_of_the_cli_itself_builds_its_parser_without_the_other_parts() -> None:
    """`build_parser(argv)`: for a command of agent/cli.py's own (quote, checkout, status
    …) the other parts' commands (`hub`, `sync`, `print`, `demo`: agent/app.py and what it
    imports) are not added, a third of a one-shot's start (docs/PERFORMANCE.md). With
    `argv is not None` made `is None` every call imported them; the behaviour the same."""
    probe = (
        "import sys\n"
        "from tillpoint.agent.cli import build_parser\n"
        "build_parser(['quote', 'r.json', '--json'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tillpoint.agent.app',"
        " 'tillpoint.sync', 'tillpoint.printer'))))\n"
        "build_parser(['hub', 'status'])\n"
        "print('tillpoint.agent.app' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "[]\nTrue\n"


@pytest.mark.parametrize(
    "code",
    [
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "METHOD_NOT_ALLOWED",
        "REQUEST_TIMEOUT",
        "UNSUPPORTED_MEDIA_TYPE",
        "HTTP_VERSION_NOT_SUPPORTED",
        "SOMETHING_NEW",
        "None",
    ],
)
def test_a_forwarded_answer_with_a_code_of_no_class_exits_1(code: str) -> None:
    """`exit_code_of` (the forwarded CLI's exit code from `run`'s HTTP error body,
    agent/forward.py): the codes of the HTTP edge's own refusals, which no error class
    carries (a token `run` does not take, a body it times out, a later release's code, a
    body without one), exit 1 as "the rest" do. With the table's fall-through answering
    0, a refused forwarded call exited 0: a POS script took it for done."""
    from tillpoint.agent.errors import HTTP_STATUS, exit_code_of

    assert exit_code_of(code) == 1
    assert [exit_code_of(c) for c in ("INVALID_ARGUMENT", "FAILED_PRECONDITION")] == [2, 2]
    assert [exit_code_of(c) for c in ("NOT_FOUND", "ALREADY_EXISTS", "UNAVAILABLE")] == [2, 2, 1]
    assert code in HTTP_STATUS or code in ("SOMETHING_NEW", "None")


def test_a_dashed_number_argparse_took_as_a_value_gets_no_dash_hint(cli: CLI) -> None:
    """`_Parser.error`: the "goes after --" hint only for a dashed word argparse left
    unplaced ("only where argparse did not take the word"). `balance CARD --at -5 extra`:
    argparse took -5 as --at's value and left `extra`; the hint for -5 (the `and` made
    `or`: any unrecognized-arguments message) told to write `-- -5`, which was given."""
    refused = cli("balance", "2770000000017", "--at", "-5", "extra")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (
        "tillpoint: unrecognized arguments: extra (see `tillpoint balance --help`)\n"
    )
